'use strict';
// The command's entry (bin/strata runs `node dist/src/bundle/load.cjs ARGS...`): it runs the
// bundled CLI, dist/src/bundle/strata.cjs, with V8's code cache beside it.
//
// A function's first call costs a compile (parse and bytecode), then runs in the interpreter:
// right after a mount, the first lookups, listings and copy-ups paid that on every path they took.
// The code cache holds the bytecode of the functions compiled when it was made, so a later process
// skips those compiles. A daemon writes it when it is first idle if there is no usable one; every
// process (a daemon, `strata run`, `strata status`, ...) writes it at its exit if its own came out
// larger. A process that started from the cache holds the cache's functions as well as those it
// compiled, so the cache grows towards all the code the commands use. V8 refuses a cache made for
// another V8, and the loader one made for another bundle file; the command then runs as without one.
// make build starts without one.
// bin/strata hands NODE_EXTRA_CA_CERTS over as STRATA_NODE_EXTRA_CA_CERTS (node would build its
// certificate store at start-up for it, 70-90 ms): back under its name, for the processes strata
// starts. This process's default TLS context does not have those certificates; the registry client
// adds them to its own (src/registry/trust.ts).
if (process.env.STRATA_NODE_EXTRA_CA_CERTS !== undefined) {
  process.env.NODE_EXTRA_CA_CERTS = process.env.STRATA_NODE_EXTRA_CA_CERTS;
  delete process.env.STRATA_NODE_EXTRA_CA_CERTS;
}
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const Module = require('node:module');

// The threads node started before any of our code runs: V8's helpers (a daemon lowers their
// priority, see lowerHelperThreads in src/cli/mount.ts). The thread pool does not exist yet.
try {
  globalThis.__strataStartThreads = fs.readdirSync('/proc/self/task').map(Number);
} catch {
  // no /proc: nothing is lowered
}

const file = path.join(__dirname, 'strata.cjs');
const cacheFile = `${file}.v8cache`;
// Bytecode that has not run for a while is normally dropped by the garbage collector: kept, the
// cache written at exit still holds the mount's start-up code. bin/strata passes its flags to node
// (loading node:v8 to set them costs 2-4 ms); V8 accepts a cache only under the flags it was made
// with, so a process started otherwise sets them too (the semi-space size then only for the key:
// the heap is already made).
const FLAGS = ['--no-flush-bytecode', '--max-semi-space-size=2', '--max-inlined-bytecode-size-cumulative=300', '--no-parallel-scavenge'];
for (const flag of FLAGS) if (!process.execArgv.includes(flag)) require('node:v8').setFlagsFromString(flag);

const fd = fs.openSync(file, 'r');
const st = fs.fstatSync(fd);
let source = fs.readFileSync(fd, 'utf8');
fs.closeSync(fd);
// (a "#!" line is no JavaScript inside the module wrapper; same length, so V8's source check holds)
if (source.startsWith('#!')) source = `//${source.slice(2)}`;
// V8 checks only the source's length: the cache starts with a line naming the bundle file it was
// made for (inode, size, modification time), and one for another file is not given to V8.
const key = Buffer.from(`strata ${st.ino} ${st.size} ${st.mtimeMs}\n`);
let cachedData;
try {
  const stored = fs.readFileSync(cacheFile);
  if (stored.length > key.length && stored.subarray(0, key.length).equals(key)) cachedData = stored.subarray(key.length);
} catch {
  // none yet
}
const script = new vm.Script(Module.wrap(source), { filename: file, cachedData });
const accepted = cachedData !== undefined && !script.cachedDataRejected;
// (for the tests: what became of the cache)
if (process.env.STRATA_DEBUG_CODE_CACHE) process.stderr.write(`strata code cache: ${cachedData === undefined ? 'none' : accepted ? 'accepted' : 'refused'}\n`);
/** A usable cache is there: V8 took it, or this process wrote one. */
let usable = accepted;
/**
 * `atExit` false: called by the daemon when it is first idle (src/cli/mount.ts), written if there is
 * no usable cache; true: at the exit of any process, written if larger than the one there. Never
 * fails the caller.
 */
const writeCodeCache = (atExit) => {
  if (usable && !atExit) return;
  try {
    const data = script.createCachedData();
    let size = 0;
    try {
      size = fs.statSync(cacheFile).size;
    } catch {
      // none
    }
    if (usable && key.length + data.length <= size) return;
    const tmp = `${cacheFile}.${process.pid}`;
    fs.writeFileSync(tmp, Buffer.concat([key, data]), { mode: 0o644 });
    fs.renameSync(tmp, cacheFile);
    usable = true;
  } catch {
    // a read-only install: every start compiles, as without a cache
  }
};

globalThis.__strataWriteCodeCache = writeCodeCache;
process.on('exit', () => writeCodeCache(true));

// The ES-module-only packages (the bench's chart renderer) are imported from here: a script run
// through vm cannot import() without an experimental flag.
globalThis.__strataImport = (specifier) => import(specifier);

const mod = { exports: {}, filename: file, id: file, loaded: false };
script.runInThisContext()(mod.exports, Module.createRequire(file), mod, file, path.dirname(file));
