// Injected into the CommonJS bundle (see the Makefile's ts target): import.meta.url of the ES
// modules it was built from becomes the bundle's own URL (the bundle sits at the depth of
// dist/src/<dir>/, so paths relative to it lead where they led from the modules).
export const import_meta_url = require('node:url').pathToFileURL(__filename).href;
