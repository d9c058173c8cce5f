'use strict';
// The command's entry (bin/strata runs `node dist/src/bundle/load.cjs ARGS...`): it runs the
// bundled CLI, dist/src/bundle/strata.cjs, with V8's code cache beside it.
//
// A function's first call costs a compile (parse and bytecode), then runs in the interpreter:
// right after a mount, the first lookups, listings and copy-ups paid that on every path they took.
// The code cache holds the bytecode of the functions compiled when it was made, so a later process
// skips those compiles. Only a daemon writes it (a short command's cache would lack the daemon's
// code): when it is first idle if there is no usable cache, and at its exit if its own cache came
// out larger. A process that started from the cache holds the cache's functions as well as those it
// compiled, so the cache grows towards all the code that daemons use. V8 refuses a cache made for
// another source or another V8; the command then runs as without one. make build starts without one.
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const Module = require('node:module');

const file = path.join(__dirname, 'strata.cjs');
const cacheFile = `${file}.v8cache`;
// Bytecode that has not run for a while is normally dropped by the garbage collector: kept, the
// cache written at exit still holds the mount's start-up code. bin/strata passes the flag to node
// (loading node:v8 to set it costs 2-4 ms); V8 accepts a cache only under the flags it was made with.
if (!process.execArgv.includes('--no-flush-bytecode')) require('node:v8').setFlagsFromString('--no-flush-bytecode');

let source = fs.readFileSync(file, 'utf8');
// (a "#!" line is no JavaScript inside the module wrapper; same length, so V8's source check holds)
if (source.startsWith('#!')) source = `//${source.slice(2)}`;
let cachedData;
try {
  cachedData = fs.readFileSync(cacheFile);
} catch {
  // none yet
}
const script = new vm.Script(Module.wrap(source), { filename: file, cachedData });
const accepted = cachedData !== undefined && !script.cachedDataRejected;
/**
 * Called by the daemon (src/cli/mount.ts): `atExit` false when it is first idle (written if there is
 * no usable cache), true at its exit (written if larger than the one there). Never fails the caller.
 */
globalThis.__strataWriteCodeCache = (atExit) => {
  if (accepted && !atExit) return;
  try {
    const data = script.createCachedData();
    let size = 0;
    try {
      size = fs.statSync(cacheFile).size;
    } catch {
      // none
    }
    if (accepted && data.length <= size) return;
    const tmp = `${cacheFile}.${process.pid}`;
    fs.writeFileSync(tmp, data, { mode: 0o644 });
    fs.renameSync(tmp, cacheFile);
  } catch {
    // a read-only install: every start compiles, as without a cache
  }
};

// The ES-module-only packages (the bench's chart renderer) are imported from here: a script run
// through vm cannot import() without an experimental flag.
globalThis.__strataImport = (specifier) => import(specifier);

const mod = { exports: {}, filename: file, id: file, loaded: false };
script.runInThisContext()(mod.exports, Module.createRequire(file), mod, file, path.dirname(file));
