// The metadata cache: st_ino of copied-up objects survives a remount (from the origin files,
// read at mount) and a killed daemon (from their journal); a cache of an older strata keeps its
// numbers; a cache of other layers or a corrupt one is rebuilt.

import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { Level } from 'level';
import path from 'node:path';
import { kernelOverlay, strataMount, strataUnmount } from './helpers/mounts.js';
import { killDaemon } from './helpers/crash-daemon.js';
import { waitFor } from './helpers/exec.js';
import { strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';
import * as N from '../src/native/index.js';
import { processAlive, readRecord } from '../src/daemon/registry.js';

interface Setup {
  lower: string;
  upper: string;
  work: string;
  mountpoint: string;
}

function setup(t: Parameters<typeof tempDir>[0]): Setup {
  const dir = tempDir(t, 'cache');
  const s = { lower: path.join(dir, 'l'), upper: path.join(dir, 'u'), work: path.join(dir, 'w'), mountpoint: path.join(dir, 'm') };
  for (const d of Object.values(s)) fs.mkdirSync(d);
  fs.writeFileSync(path.join(s.lower, 'f'), 'lower file\n');
  fs.mkdirSync(path.join(s.lower, 'd'));
  fs.writeFileSync(path.join(s.lower, 'd', 'g'), 'another\n');
  return s;
}

function mount(t: Parameters<typeof tempDir>[0], s: Setup, extraArgs: string[] = []): string {
  return strataMount(t, { lowers: [s.lower], upper: s.upper, work: s.work, mountpoint: s.mountpoint, extraArgs });
}

/** The record lines ("P key st_ino") of an origin file of the cache. */
function originLines(file: string): string[] {
  return fs.readFileSync(file, 'latin1').split('\n').filter((l) => l.startsWith('P '));
}

/** The record lines of the snapshot (if any) and the journal. */
function allOriginLines(dir: string): string[] {
  return ['origins', 'origins.journal'].flatMap((n) => (fs.existsSync(path.join(dir, n)) ? originLines(path.join(dir, n)) : []));
}

/** The pid of the daemon serving `mnt` (from its record: quicker than `strata status`, no request to the mount). */
function daemonPid(mnt: string): number {
  return readRecord(mnt)!.pid;
}

/** Copies up f and d/g through the mount and returns their st_ino before and after. */
function copyUp(mnt: string): { before: number[]; after: number[] } {
  const names = ['f', 'd/g'].map((n) => path.join(mnt, n));
  const before = names.map((n) => fs.statSync(n).ino);
  fs.chmodSync(names[0]!, 0o600);
  fs.appendFileSync(names[1]!, 'more\n');
  const after = names.map((n) => fs.statSync(n).ino);
  return { before, after };
}

test('st_ino of copied-up files is kept across a remount', (t) => {
  const s = setup(t);
  const { before, after } = copyUp(mount(t, s));
  t.deepEqual(after, before, 'copy-up keeps st_ino');
  strataUnmount(s.mountpoint);
  t.true(fs.existsSync(path.join(s.work, 'strata-cache')), 'the cache lives in the work directory');
  mount(t, s);
  t.deepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino), before);
  // The upper files have other inode numbers: the cache (or, without it, overlay.origin) keeps them.
  t.notDeepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.upper, n)).ino), before);
});

test('--no-cache: st_ino of copied-up files is kept at the next mount by their overlay.origin alone, as on the kernel', (t) => {
  const s = setup(t);
  const { before } = copyUp(mount(t, s, ['--no-cache']));
  strataUnmount(s.mountpoint);
  t.false(fs.existsSync(path.join(s.work, 'strata-cache')));
  for (const n of ['f', 'd/g']) t.truthy(N.lgetxattr(N.C.AT_FDCWD, path.join(s.upper, n), 'trusted.overlay.origin')?.length, n);
  mount(t, s, ['--no-cache']);
  t.deepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino), before);
});

test('a corrupt cache is set aside and rebuilt; the mount works', (t) => {
  const s = setup(t);
  copyUp(mount(t, s));
  strataUnmount(s.mountpoint);
  const cache = path.join(s.work, 'strata-cache');
  for (const name of fs.readdirSync(cache)) fs.writeFileSync(path.join(cache, name), 'garbage '.repeat(100));
  fs.writeFileSync(path.join(s.lower, 'h'), 'h\n'); // (layers change only between mounts)
  const mnt = mount(t, s);
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'lower file\n');
  t.is(fs.readFileSync(path.join(mnt, 'd', 'g'), 'utf8'), 'another\nmore\n');
  // It works again from here on: a new copy-up is remembered across the next remount.
  const ino = fs.statSync(path.join(mnt, 'h')).ino;
  fs.chmodSync(path.join(mnt, 'h'), 0o600);
  strataUnmount(s.mountpoint);
  mount(t, s);
  t.is(fs.statSync(path.join(s.mountpoint, 'h')).ino, ino);
});

test('a cache recorded for another upper is dropped', (t) => {
  const s = setup(t);
  const { before } = copyUp(mount(t, s));
  strataUnmount(s.mountpoint);
  // A new upper directory (same path, another inode) with the same files: the old numbers must not apply.
  const moved = s.upper + '.old';
  fs.renameSync(s.upper, moved);
  fs.cpSync(moved, s.upper, { recursive: true, preserveTimestamps: true });
  mount(t, s);
  const now = ['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino);
  t.deepEqual(now, ['f', 'd/g'].map((n) => fs.statSync(path.join(s.upper, n)).ino));
  t.notDeepEqual(now, before);
});

// ---- the lower-directory index ---------------------------------------------------------------


function cacheCli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(strataBin, ['cache', ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Five lowers sharing directories (the index serves directories of 4+ lower layers), with a whiteout and an opaque directory near the top. */
function deepSetup(t: Parameters<typeof tempDir>[0]): Setup & { lowers: string[] } {
  const dir = tempDir(t, 'idx');
  const lowers = ['l1', 'l2', 'l3', 'l4', 'l5'].map((l) => path.join(dir, l));
  const s = { lower: lowers[0]!, lowers, upper: path.join(dir, 'u'), work: path.join(dir, 'w'), mountpoint: path.join(dir, 'm') };
  for (const d of [...lowers, s.upper, s.work, s.mountpoint]) fs.mkdirSync(d);
  lowers.forEach((l, i) => {
    fs.mkdirSync(path.join(l, 'd', 'sub'), { recursive: true });
    fs.mkdirSync(path.join(l, 'o'));
    fs.writeFileSync(path.join(l, 'd', `f${i}`), `layer ${i}\n`);
    fs.writeFileSync(path.join(l, 'd', 'sub', `x${i}`), `x ${i}\n`);
    fs.writeFileSync(path.join(l, 'o', `o${i}`), `o ${i}\n`);
  });
  execFileSync('mknod', [path.join(lowers[0]!, 'd', 'f2'), 'c', '0', '0']); // whiteout of l3's d/f2
  execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(lowers[1]!, 'o')]); // hides l3's o
  return s;
}

function deepMount(t: Parameters<typeof tempDir>[0], s: Setup & { lowers: string[] }, extraArgs: string[] = []): string {
  return strataMount(t, { lowers: s.lowers, upper: s.upper, work: s.work, mountpoint: s.mountpoint, extraArgs });
}

function tree(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const p = path.join(rel, e.name);
      const st = fs.lstatSync(path.join(root, p));
      out.push(`${p} ${st.mode.toString(8)} ${st.ino} ${e.isFile() ? fs.readFileSync(path.join(root, p), 'utf8').trim() : ''}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk('');
  return out.sort();
}

test('lower listings are kept in the cache: a remount reads them instead of searching the layers', async (t) => {
  const s = deepSetup(t);
  const first = tree(deepMount(t, s));
  // (listings reach LevelDB once it is open: when the daemon is first idle)
  t.true(await waitFor(() => fs.existsSync(path.join(s.work, 'strata-cache', 'CURRENT'))));
  strataUnmount(s.mountpoint);
  let stats = JSON.parse(cacheCli(['stats', '--workdir', s.work, '--json']).stdout) as { entries: { listings: number }; lastMount: Record<string, number> };
  t.true(stats.entries.listings >= 2, 'listings of the merged directories are stored');
  t.true(stats.lastMount.builds! >= 2);
  const second = tree(deepMount(t, s));
  t.deepEqual(second, first, 'the view through the cache is the same');
  t.false(second.some((l) => l.startsWith('d/f2 ')), 'the whiteout still hides d/f2');
  t.false(second.some((l) => l.startsWith('o/o2 ')), 'the opaque directory still hides o/o2');
  strataUnmount(s.mountpoint);
  stats = JSON.parse(cacheCli(['stats', '--workdir', s.work, '--json']).stdout) as typeof stats;
  t.true(stats.lastMount.loads! >= 2, 'the second mount read listings from LevelDB');
  t.is(stats.lastMount.builds, 0, 'and built none');
  t.is(cacheCli(['verify', '--workdir', s.work]).status, 0);
});

test('a layer changed between mounts: the cache is dropped and the new content shows', (t) => {
  const s = deepSetup(t);
  tree(deepMount(t, s));
  strataUnmount(s.mountpoint);
  // Rebuild the middle layer in place (as an image tool would): new root, new content.
  fs.rmSync(s.lowers[1]!, { recursive: true });
  fs.mkdirSync(path.join(s.lowers[1]!, 'd'), { recursive: true });
  fs.writeFileSync(path.join(s.lowers[1]!, 'd', 'new'), 'new\n');
  const view = tree(deepMount(t, s));
  t.true(view.some((l) => l.startsWith('d/new ')));
  t.false(view.some((l) => l.startsWith('d/f1 ')));
  t.true(view.some((l) => l.startsWith('o/o2 ')), 'without the opaque o in l2, l3 shows through');
});

test('strata cache verify reports a planted wrong entry; clear empties the cache', async (t) => {
  const s = deepSetup(t);
  tree(deepMount(t, s));
  const dir = path.join(s.work, 'strata-cache');
  // (listings reach LevelDB once it is open: when the daemon is first idle)
  t.true(await waitFor(() => fs.existsSync(path.join(dir, 'CURRENT'))));
  // A listed directory removed through the mount (a whiteout now): its listing still describes the lower
  // layers there, unused; not a disagreement.
  fs.rmSync(path.join(s.mountpoint, 'd', 'sub'), { recursive: true });
  strataUnmount(s.mountpoint);
  const held = new Level<string, string>(dir);
  await held.open();
  t.not(await held.get('lower:/d/sub'), undefined, 'the listing of d/sub reached LevelDB');
  await held.close();
  const removed = cacheCli(['verify', '--cache-dir', dir]);
  t.is(removed.status, 0, removed.stdout + removed.stderr);
  const db = new Level<string, string>(dir);
  await db.open();
  const listing = JSON.parse((await db.get('lower:/d'))!) as [string, { l: number; m: number; i: number; d: number[] | null }][];
  listing.push(['planted', { l: 1, m: 0o100000, i: 12345, d: null }]);
  await db.put('lower:/d', JSON.stringify(listing));
  await db.close();
  const r = cacheCli(['verify', '--cache-dir', dir]);
  t.is(r.status, 1);
  t.regex(r.stdout, /\/d: the cached lower listing differs/);
  // A LevelDB without the record of its layers (a daemon killed while it opened it) holds nothing
  // to check, unless it has listings: those are reported.
  await db.open();
  await db.del('meta:layers');
  await db.close();
  const noRecord = cacheCli(['verify', '--cache-dir', dir]);
  t.is(noRecord.status, 1);
  t.regex(noRecord.stdout, /no layer record, yet \d+ entries/);
  await db.open();
  await db.clear({ gte: 'lower:', lt: 'lower:\xff' });
  await db.close();
  const empty = cacheCli(['verify', '--cache-dir', dir]);
  t.is(empty.status, 0, empty.stdout + empty.stderr);
  t.is(cacheCli(['clear', '--cache-dir', dir]).status, 0);
  const after = JSON.parse(cacheCli(['stats', '--cache-dir', dir, '--json']).stdout) as { entries: { listings: number; origins: number; other: number } };
  t.deepEqual(after.entries, { listings: 0, origins: 0, other: 0 });
  t.is(cacheCli(['stats', '--cache-dir', path.join(s.work, 'nothing')]).status, 1);
});

test('a cache of an older strata (origins in LevelDB): its inode numbers are kept and move to the origin files', async (t) => {
  const s = setup(t);
  const { before } = copyUp(mount(t, s));
  strataUnmount(s.mountpoint);
  const dir = path.join(s.work, 'strata-cache');
  const snapshot = path.join(dir, 'origins');
  const lines = allOriginLines(dir);
  t.is(lines.length, 3, 'one record per copied-up object: f, d/g and its directory d');
  // The old layout: the records as LevelDB entries, no origin files.
  const db = new Level<string, string>(dir);
  await db.open();
  for (const l of lines) await db.put(l.split(' ')[1]!, l.split(' ')[2]!);
  await db.close();
  fs.rmSync(snapshot, { force: true });
  fs.rmSync(path.join(dir, 'origins.journal'), { force: true });
  // Only the records can give the old numbers now: the copies lose their overlay.origin.
  for (const n of ['f', 'd/g']) N.lremovexattr(N.C.AT_FDCWD, path.join(s.upper, n), 'trusted.overlay.origin');
  mount(t, s);
  t.deepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino), before);
  strataUnmount(s.mountpoint);
  t.deepEqual(originLines(snapshot).sort(), lines.sort());
  const db2 = new Level<string, string>(dir);
  await db2.open();
  t.deepEqual(await db2.keys({ gte: 'origin:', lt: 'origin:\xff' }).all(), [], 'the records left LevelDB');
  await db2.close();
  // And from the files alone the next mount shows them too.
  mount(t, s);
  t.deepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino), before);
});

test('the inode journal of a killed daemon is read at the next mount, and folded into the snapshot', async (t) => {
  const s = setup(t);
  // Copies written in the OCI format carry no overlay.origin: each copy-up adds a journal line.
  const { before } = copyUp(mount(t, s, ['--write-format', 'oci']));
  const dir = path.join(s.work, 'strata-cache');
  t.is(originLines(path.join(dir, 'origins.journal')).length, 3);
  const status = JSON.parse(execFileSync(strataBin, ['status', '--json', s.mountpoint], { encoding: 'utf8' })) as { pid: number }[];
  t.true(await killDaemon(status[0]!.pid));
  strataUnmount(s.mountpoint);
  mount(t, s, ['--write-format', 'oci']);
  t.deepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino), before);
  // (once the daemon is idle: LevelDB is opened then, and the snapshot written first)
  t.true(await waitFor(() => fs.existsSync(path.join(dir, 'origins')) && originLines(path.join(dir, 'origins')).length === 3),
    'the journal went into the snapshot');
  t.is(fs.readFileSync(path.join(dir, 'origins.journal'), 'latin1'), '', 'and the journal starts again empty');
});

test('st_ino stays across remounts after copy-up then rename and link', (t) => {
  const s = setup(t);
  const mnt = mount(t, s);
  const ino = fs.statSync(path.join(mnt, 'f')).ino;
  fs.renameSync(path.join(mnt, 'f'), path.join(mnt, 'renamed'));
  fs.linkSync(path.join(mnt, 'renamed'), path.join(mnt, 'd', 'linked'));
  t.is(fs.statSync(path.join(mnt, 'renamed')).ino, ino);
  t.is(fs.statSync(path.join(mnt, 'd', 'linked')).ino, ino);
  strataUnmount(s.mountpoint);
  mount(t, s);
  t.is(fs.statSync(path.join(s.mountpoint, 'renamed')).ino, ino);
  t.is(fs.statSync(path.join(s.mountpoint, 'd', 'linked')).ino, ino);
  t.is(fs.statSync(path.join(s.mountpoint, 'd', 'linked')).nlink, 2);
});

test('an upper reused as a lower (same --cache-dir): its copied-up files show their own numbers, as on the kernel', (t) => {
  const s = setup(t);
  const cacheDir = path.join(path.dirname(s.upper), 'shared-cache');
  const mnt = strataMount(t, { lowers: [s.lower], upper: s.upper, work: s.work, mountpoint: s.mountpoint, extraArgs: ['--cache-dir', cacheDir] });
  const ino = fs.statSync(path.join(mnt, 'd', 'g')).ino;
  fs.appendFileSync(path.join(mnt, 'd', 'g'), 'changed\n');
  strataUnmount(s.mountpoint);
  t.not(fs.statSync(path.join(s.upper, 'd', 'g')).ino, ino, 'the upper copy has an inode number of its own');
  // The old upper becomes the top lower of a new stack with a fresh upper.
  const up2 = path.join(path.dirname(s.upper), 'u2');
  const work2 = path.join(path.dirname(s.upper), 'w2');
  fs.mkdirSync(up2);
  fs.mkdirSync(work2);
  const mnt2 = strataMount(t, { lowers: [s.upper, s.lower], upper: up2, work: work2, mountpoint: s.mountpoint, extraArgs: ['--cache-dir', cacheDir] });
  t.is(fs.readFileSync(path.join(mnt2, 'd', 'g'), 'utf8'), 'another\nchanged\n');
  // The kernel shows a lower object's real inode number (ovl_getattr reads no origin for lowers).
  const own = fs.statSync(path.join(s.upper, 'd', 'g')).ino;
  t.is(fs.statSync(path.join(mnt2, 'd', 'g')).ino, own);
  strataUnmount(s.mountpoint);
  const kw = path.join(path.dirname(s.upper), 'kw');
  fs.mkdirSync(kw);
  const kmnt = kernelOverlay(t, { lowers: [s.upper, s.lower], upper: up2, work: kw });
  t.is(fs.statSync(path.join(kmnt, 'd', 'g')).ino, own, 'the kernel on the same stack');
});

test('the cache is root-only: mode 0700, and symlinks planted as its journal or snapshot are not followed', async (t) => {
  const s = setup(t);
  copyUp(mount(t, s));
  strataUnmount(s.mountpoint);
  const cache = path.join(s.work, 'strata-cache');
  t.is(fs.statSync(cache).mode & 0o777, 0o700);
  // Someone made the directory writable and planted a symlink where the journal goes.
  fs.chmodSync(cache, 0o777);
  const victim = path.join(path.dirname(s.work), 'victim');
  fs.writeFileSync(victim, 'precious\n', { mode: 0o600 });
  for (const name of ['origins.journal', 'origins', 'origins.tmp']) {
    fs.rmSync(path.join(cache, name), { force: true });
    fs.symlinkSync(victim, path.join(cache, name));
  }
  const r = spawnSync(strataBin, ['mount', '-o', `lowerdir=${s.lower},upperdir=${s.upper},workdir=${s.work}`, s.mountpoint], { encoding: 'utf8' });
  t.teardown(() => strataUnmount(s.mountpoint));
  t.is(fs.readFileSync(victim, 'utf8'), 'precious\n', 'the symlink target was not touched');
  t.is(r.status, 0, r.stderr);
  fs.chmodSync(path.join(s.mountpoint, 'd', 'g'), 0o600);
  // (the snapshot is written when the daemon is first idle)
  t.true(await waitFor(() => !fs.lstatSync(path.join(cache, 'origins')).isSymbolicLink()), 'the snapshot replaced the planted link');
  strataUnmount(s.mountpoint);
  t.is(fs.readFileSync(victim, 'utf8'), 'precious\n', 'nor by the journal written at unmount');
  t.false(fs.lstatSync(path.join(cache, 'origins.journal')).isSymbolicLink());
  t.is(fs.statSync(cache).mode & 0o777, 0o700, 'the mode is put back');
});

for (const idle of [false, true]) {
  test(`after umount(8) the daemon creates nothing in the cache directory (${idle ? 'once idle' : 'never idle'}), as podman removes it at once`, async (t) => {
    const s = setup(t);
    const mnt = mount(t, s);
    const dir = path.join(s.work, 'strata-cache');
    const pid = daemonPid(mnt);
    // (idle: LevelDB is open and holds a listing and counters to write)
    if (idle) t.true(await waitFor(() => fs.existsSync(path.join(dir, 'CURRENT'))), 'LevelDB opened once idle');
    copyUp(mnt);
    fs.readdirSync(path.join(mnt, 'd'));
    execFileSync('umount', [mnt]);
    const atUnmount = fs.readdirSync(dir).sort();
    t.true(await waitFor(() => !processAlive(pid)), 'the daemon exits');
    t.deepEqual(fs.readdirSync(dir).sort(), atUnmount);
    if (!idle) {
      t.false(atUnmount.includes('CURRENT'), 'LevelDB never opened');
      // A cache of origin files alone: strata cache reads it.
      const stats = JSON.parse(cacheCli(['stats', '--cache-dir', dir, '--json']).stdout) as { entries: { origins: number; listings: number } };
      t.deepEqual([stats.entries.origins, stats.entries.listings], [3, 0]);
      const verify = cacheCli(['verify', '--cache-dir', dir]);
      t.is(verify.status, 0, verify.stderr);
    }
    // Nothing was lost: the copies keep their st_ino at the next mount, and their records are in the files.
    t.is(allOriginLines(dir).length, 3);
    const again = mount(t, s);
    t.deepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(again, n)).ino), ['f', 'd/g'].map((n) => fs.statSync(path.join(s.lower, n)).ino));
  });
}
