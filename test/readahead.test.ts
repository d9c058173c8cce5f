// Read-ahead of a lower tree: a listing the disk had to serve starts a read of the tree below it on
// the thread pool (src/union/super.ts, readAhead). It changes what is cached, never what is seen.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk, waitFor } from './helpers/exec.js';
import { kernelOverlay, strataMount, strataUnmount } from './helpers/mounts.js';
import { dropCachedPages, holdPageCacheLock } from './helpers/page-cache.js';
import { tempDir } from './helpers/tmp.js';

/** `find` of a tree as lines (path, type, size, mode, link target), sorted. */
function listing(root: string): string[] {
  const r = run('find', [root, '-printf', '%P %y %s %m %l\n']);
  return r.stdout.split('\n').filter(Boolean).sort();
}

test('a walk of a lower layer the disk holds reads the tree ahead (once), and shows what the kernel shows', async (t) => {
  const dir = tempDir(t, 'ra');
  const img = path.join(dir, 'img');
  const disk = path.join(dir, 'disk');
  fs.mkdirSync(disk);
  runOk('truncate', ['-s', '64M', img]);
  runOk('mkfs.ext4', ['-q', '-F', img]);
  runOk('mount', ['-o', 'loop', img, disk]);
  t.teardown(() => void run('umount', ['-l', disk]));
  // The layer: a root of 3000 files (its listing is several directory blocks), 20 directories two
  // deep, a whiteout's neighbour, links that lead out of the layer.
  const lower = path.join(disk, 'lower');
  fs.mkdirSync(lower);
  for (let i = 0; i < 3000; i++) fs.writeFileSync(path.join(lower, `f${i}`), i % 7 === 0 ? 'x'.repeat(i) : '');
  for (let i = 0; i < 20; i++) {
    fs.mkdirSync(path.join(lower, `d${i}`, 's'), { recursive: true });
    fs.writeFileSync(path.join(lower, `d${i}`, 's', 'leaf'), `leaf ${i}\n`);
  }
  fs.symlinkSync('/', path.join(lower, 'd0', 'root-link'));
  fs.symlinkSync('../../..', path.join(lower, 'd1', 's', 'up'));
  const top = path.join(dir, 'top');
  fs.mkdirSync(path.join(top, 'd3'), { recursive: true });
  fs.writeFileSync(path.join(top, 'd3', 'new'), 'top\n');
  // Mounted again with nothing of it cached: the loop device's pages and the image file's dropped.
  // (No other test file drops the machine's caches from here on: the second mount must find the
  // first one's reads cached.)
  const release = await holdPageCacheLock('exclusive');
  t.teardown(release);
  runOk('umount', [disk]);
  dropCachedPages(img);
  runOk('mount', ['-o', 'loop,ro', img, disk]);

  const log = path.join(dir, 'strata.log');
  const newDir = (name: string): string => {
    fs.mkdirSync(path.join(dir, name));
    return path.join(dir, name);
  };
  const spec = { lowers: [top, lower], upper: path.join(dir, 'u'), work: path.join(dir, 'w') };
  for (const d of [spec.upper, spec.work]) fs.mkdirSync(d);
  const mnt = strataMount(t, { ...spec, mountpoint: newDir('m'), extraArgs: ['--log-file', log] });
  const seen = listing(mnt);
  // Once the walk's listings are cached, a second mount's first listing comes from memory: no read-ahead.
  const mnt2 = strataMount(t, { lowers: [top, lower], mountpoint: newDir('m2'), extraArgs: ['--log-file', `${log}2`] });
  t.deepEqual(listing(mnt2), seen);
  release();
  const k = kernelOverlay(t, { lowers: [top, lower], mountpoint: newDir('k') });
  t.deepEqual(seen, listing(k), 'the same tree as the kernel\'s overlay');
  t.is(seen.length, 1 + 3000 + 20 * 3 + 2 + 1);

  const readAhead = async (file: string, m: string): Promise<{ trees: number; dirs: number }> => {
    strataUnmount(m);
    t.true(await waitFor(() => fs.existsSync(file) && fs.readFileSync(file, 'utf8').includes('"unmounted"'), 20_000));
    const line = fs.readFileSync(file, 'utf8').split('\n').find((l) => l.includes('"unmounted"'))!;
    return (JSON.parse(line) as { readAhead: { trees: number; dirs: number } }).readAhead;
  };
  // The root's listing came from the disk: each lower layer's tree was read ahead once (the disk's:
  // its root, d0..d19 and their s, 41 directories, not what the links lead to; the top's: 2).
  t.deepEqual(await readAhead(log, mnt), { trees: 2, dirs: 43 });
  t.deepEqual(await readAhead(`${log}2`, mnt2), { trees: 0, dirs: 0 });
});
