// The LevelDB metadata cache: st_ino of copied-up objects survives a remount; without the
// cache it does not (so the test can fail); a cache of other layers or a corrupt one is rebuilt.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { strataMount, strataUnmount } from './helpers/mounts.js';
import { tempDir } from './helpers/tmp.js';

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
  // The upper files have other inode numbers: the cache is what keeps them.
  t.notDeepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.upper, n)).ino), before);
});

test('--no-cache: st_ino of copied-up files changes at the next mount (what the cache prevents)', (t) => {
  const s = setup(t);
  const { before } = copyUp(mount(t, s, ['--no-cache']));
  strataUnmount(s.mountpoint);
  t.false(fs.existsSync(path.join(s.work, 'strata-cache')));
  mount(t, s, ['--no-cache']);
  t.notDeepEqual(['f', 'd/g'].map((n) => fs.statSync(path.join(s.mountpoint, n)).ino), before);
});

test('a corrupt cache is set aside and rebuilt; the mount works', (t) => {
  const s = setup(t);
  copyUp(mount(t, s));
  strataUnmount(s.mountpoint);
  const cache = path.join(s.work, 'strata-cache');
  for (const name of fs.readdirSync(cache)) fs.writeFileSync(path.join(cache, name), 'garbage '.repeat(100));
  const mnt = mount(t, s);
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'lower file\n');
  t.is(fs.readFileSync(path.join(mnt, 'd', 'g'), 'utf8'), 'another\nmore\n');
  // It works again from here on: a new copy-up is remembered across the next remount.
  fs.writeFileSync(path.join(s.lower, 'h'), 'h\n');
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
