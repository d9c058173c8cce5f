// Bundles the compiled CLI (dist/src/cli/main.js) into one CommonJS file, dist/src/bundle/strata.cjs,
// which scripts/load.cjs runs with V8's code cache (see the Makefile's ts target).
//
// classic-level (LevelDB) is bundled with the rest: required from node_modules it is some thirty
// modules, 26-39 ms of the daemon's JavaScript thread when the metadata cache opens (the daemon's
// first idle moment, where a request that comes then waits for it); bundled, about 11 ms, less with
// the code cache. Only its native part stays outside: `./binding` loads the addon through
// node-gyp-build relative to its own directory, so it is required from the installed package.
import { build } from 'esbuild';

/** Packages left out of the bundle: the arguments (the Makefile's BUNDLE_EXTERNAL). */
const external = process.argv.slice(2);

/** classic-level's `require('./binding')` stays a require of the installed package's binding.js. */
const classicLevelBinding = {
  name: 'classic-level-binding',
  setup(b) {
    b.onResolve({ filter: /^\.\/binding(\.js)?$/ }, (args) =>
      /[/\\]node_modules[/\\]classic-level[/\\]/.test(args.importer) ? { path: 'classic-level/binding.js', external: true } : undefined);
  },
};

/** `string-width` (yargs, cliui) is scripts/string-width-lite.js: see there. */
const stringWidthLite = {
  name: 'string-width-lite',
  setup(b) {
    b.onResolve({ filter: /^string-width$/ }, () => ({ path: new URL('./string-width-lite.js', import.meta.url).pathname }));
  },
};

await build({
  entryPoints: ['dist/src/cli/main.js'],
  bundle: true,
  format: 'cjs',
  platform: 'node',
  external,
  // External dynamic imports become require(); import.meta.url becomes the bundle's URL.
  supported: { 'dynamic-import': false },
  inject: ['scripts/import-meta-url.js'],
  define: { 'import.meta.url': 'import_meta_url' },
  outfile: 'dist/src/bundle/strata.cjs',
  logLevel: 'warning',
  plugins: [classicLevelBinding, stringWidthLite],
});
