// Read-ahead of a lower tree: a listing the disk had to serve starts a read of the tree below it on
// the thread pool (src/union/super.ts, readAhead). It changes what is cached, never what is seen.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk, waitFor } from './helpers/exec.js';
import { kernelOverlay, strataMount, strataUnmount } from './helpers/mounts.js';
import { dropCachedPages, holdPageCacheLock } from './helpers/page-cache.js';
import { ext4Disk, tempDir } from './helpers/tmp.js';

/** `find` of a tree as lines (path, type, size, mode, link target), sorted. */
function listing(root: string): string[] {
  const r = run('find', [root, '-printf', '%P %y %s %m %l\n']);
  return r.stdout.split('\n').filter(Boolean).sort();
}

/**
 * Mounts the loop disk again read-only with nothing of it cached (the loop device's pages and the image
 * file's dropped), holding the page-cache lock exclusively (no other test file drops the machine's caches
 * meanwhile); returns its release.
 */
async function remountCold(t: ExecutionContext, img: string, disk: string): Promise<() => void> {
  const release = await holdPageCacheLock('exclusive');
  t.teardown(release);
  runOk('umount', [disk]);
  dropCachedPages(img);
  runOk('mount', ['-o', 'loop,ro', img, disk]);
  return release;
}

test('a walk of a lower layer the disk holds reads the tree ahead (once), and shows what the kernel shows', async (t) => {
  const dir = tempDir(t, 'ra');
  const { img, disk } = ext4Disk(t, dir);
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
  const release = await remountCold(t, img, disk);

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

test('a reader of a directory\'s small lower files one after the other gets the next ones read ahead, and reads what the kernel reads', async (t) => {
  const dir = tempDir(t, 'raf');
  const { img, disk } = ext4Disk(t, dir);
  // 200 small files of distinct contents, and beside them what is not read ahead: empty files, files
  // above 64 KiB, a FIFO (an open of it for reading would wait for a writer), symlinks to files.
  const lower = path.join(disk, 'lower');
  const s = path.join(lower, 's');
  fs.mkdirSync(s, { recursive: true });
  let eligible = 0;
  for (let i = 0; i < 240; i++) {
    const name = path.join(s, `f${i}`);
    if (i % 40 === 7) fs.writeFileSync(name, '');
    else if (i % 40 === 13) fs.writeFileSync(name, Buffer.alloc(70_000, i));
    else if (i % 40 === 21) runOk('mkfifo', [name]);
    else if (i % 40 === 33) fs.symlinkSync('f0', name);
    else {
      fs.writeFileSync(name, `file ${i} `.repeat(1 + (i % 50)));
      eligible++;
    }
  }
  const release = await remountCold(t, img, disk);

  const log = path.join(dir, 'strata.log');
  const mnt = path.join(dir, 'm');
  fs.mkdirSync(mnt);
  strataMount(t, { lowers: [lower], mountpoint: mnt, extraArgs: ['--log-file', log] });
  // (in the listing's order, as find gives them; not the FIFO)
  const read = (root: string): string => runOk('sh', ['-c', `find '${root}/s' -type f -exec sha256sum {} + | sed 's|${root}||'`]);
  const seen = read(mnt);
  strataUnmount(mnt);
  t.true(await waitFor(() => fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes('"unmounted"'), 20_000));
  const line = fs.readFileSync(log, 'utf8').split('\n').find((l) => l.includes('"unmounted"'))!;
  const { jobs, files } = (JSON.parse(line) as { fileReadAhead: { jobs: number; files: number } }).fileReadAhead;
  // The first two files came from the disk, then batches of at most 64 files: all but those the
  // reader reached before a batch did.
  t.true(jobs >= 3, `${jobs} read-aheads`);
  t.true(files > eligible - 3 * jobs && files <= eligible, `${files} files read ahead of ${eligible}`);
  release();
  fs.mkdirSync(path.join(dir, 'k'));
  const top = path.join(dir, 'top');
  fs.mkdirSync(top);
  // (the kernel's overlay needs two layers without an upper)
  const k = kernelOverlay(t, { lowers: [top, lower], mountpoint: path.join(dir, 'k') });
  t.is(seen, read(k));
  t.is(seen.split('\n').filter(Boolean).length, 240 - 6 - 6);
});
