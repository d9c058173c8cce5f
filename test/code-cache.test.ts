// The bundled command's code cache (scripts/load.cjs): a daemon writes one V8 accepts for the
// bundle; a cache made for another bundle file, or garbage, is not used and costs nothing but the
// compile; every command leaves one (or a larger one) at its exit.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import Module from 'node:module';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { waitFor } from './helpers/exec.js';
import { strataMount, strataUnmount } from './helpers/mounts.js';
import { repoRoot } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';

const bundleDir = path.join(repoRoot, 'dist', 'src', 'bundle');
const bundle = path.join(bundleDir, 'strata.cjs');

/** The V8 flags the loader runs under (V8 accepts a cache only under the flags it was made with). */
const loaderFlags = JSON.parse(/^const FLAGS = (\[[^\]]*\]);$/m.exec(fs.readFileSync(path.join(bundleDir, 'load.cjs'), 'utf8'))![1]!.replace(/'/g, '"')) as string[];

/** Does V8 accept `cache` for the bundle, compiled as the loader compiles it? */
function accepted(cache: Buffer): boolean {
  for (const flag of loaderFlags) v8.setFlagsFromString(flag);
  let source = fs.readFileSync(bundle, 'utf8');
  if (source.startsWith('#!')) source = `//${source.slice(2)}`;
  return !new vm.Script(Module.wrap(source), { filename: bundle, cachedData: cache }).cachedDataRejected;
}

// bin/strata (scripts/launcher.c) starts node with its flags, the loader sets them when node runs it
// directly: the two lists must be the same, or a cache one made would be refused by the other.
test.serial('bin/strata runs node (a daemon too) under the flags the loader sets, in the same order', (t) => {
  const dir = tempDir(t, 'codeflags');
  for (const d of ['l', 'u', 'w', 'm']) fs.mkdirSync(path.join(dir, d));
  const pidFile = path.join(dir, 'pid');
  strataMount(t, { lowers: [path.join(dir, 'l')], upper: path.join(dir, 'u'), work: path.join(dir, 'w'), mountpoint: path.join(dir, 'm'), extraArgs: ['--pid-file', pidFile] });
  const argv = fs.readFileSync(`/proc/${fs.readFileSync(pidFile, 'utf8').trim()}/cmdline`, 'utf8').split('\0');
  t.deepEqual(argv.slice(1, argv.indexOf('--')), loaderFlags);
  t.true(loaderFlags.length >= 4, loaderFlags.join(' '));
});

test.serial('a daemon leaves a code cache that V8 accepts for the bundle', async (t) => {
  const dir = tempDir(t, 'codecache');
  for (const d of ['l', 'u', 'w', 'm']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(path.join(dir, 'l', 'f'), 'f\n');
  const mnt = strataMount(t, { lowers: [path.join(dir, 'l')], upper: path.join(dir, 'u'), work: path.join(dir, 'w'), mountpoint: path.join(dir, 'm') });
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'f\n');
  // (written when the daemon is first idle, if the one there is not usable; other tests' daemons may write it too)
  const cacheFile = `${bundle}.v8cache`;
  // (its first line names the bundle file it was made for)
  const st = fs.statSync(bundle);
  const key = `strata ${st.ino} ${st.size} ${st.mtimeMs}\n`;
  const usable = (): boolean => {
    const stored = fs.readFileSync(cacheFile);
    return stored.subarray(0, key.length).toString('latin1') === key && accepted(stored.subarray(key.length));
  };
  t.true(await waitFor(() => fs.existsSync(cacheFile) && usable()), 'an accepted cache is there');
  strataUnmount(mnt);
  t.false(accepted(Buffer.from('not a code cache '.repeat(64))), 'garbage is refused (so the check above can fail)');
});

test.serial('a cache made for another bundle file or garbage is not used and changes nothing but the compile; a command leaves one for the next', (t) => {
  const run = (dir: string): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--no-flush-bytecode', path.join(dir, 'load.cjs'), '--version'],
    { encoding: 'utf8', env: { ...process.env, STRATA_DEBUG_CODE_CACHE: '1' } });
  // The real one, left by the test above (or grown since by other commands): used.
  const real = run(bundleDir);
  t.is(real.status, 0, String(real.stderr));
  t.is(real.stderr, 'strata code cache: accepted\n');
  // A copy of the bundle and its loader at the same depth (native-bindings/ and node_modules/ are
  // found above it as from the real one).
  const copy = fs.mkdtempSync(path.join(repoRoot, 'dist', 'src', 'bundle-test-'));
  t.teardown(() => fs.rmSync(copy, { recursive: true, force: true }));
  for (const f of ['load.cjs', 'strata.cjs']) fs.copyFileSync(path.join(bundleDir, f), path.join(copy, f));
  const cacheFile = path.join(copy, 'strata.cjs.v8cache');
  const plain = run(copy);
  t.is(plain.status, 0, String(plain.stderr));
  t.regex(String(plain.stdout), /^strata version /);
  t.is(plain.stderr, 'strata code cache: none\n');
  t.true(fs.existsSync(cacheFile), 'the command left a cache at its exit');
  const again = run(copy);
  t.is(again.stderr, 'strata code cache: accepted\n', 'and the next one used it');
  t.is(again.stdout, plain.stdout);
  // Garbage, and the real cache, made for the other file (same content and length: V8 alone would take it).
  for (const stored of [Buffer.from('garbage '.repeat(1000)), fs.readFileSync(path.join(bundleDir, 'strata.cjs.v8cache'))]) {
    fs.writeFileSync(cacheFile, stored);
    const r = run(copy);
    t.is(r.status, 0, String(r.stderr));
    t.is(r.stdout, plain.stdout);
    t.is(r.stderr, 'strata code cache: none\n');
    t.not(Buffer.compare(fs.readFileSync(cacheFile), stored), 0, 'replaced by one of its own');
  }
});
