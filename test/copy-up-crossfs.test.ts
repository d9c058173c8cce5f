// Copy-up into an upper on another filesystem than the lower (a tmpfs upper over a lower on the
// temporary directory's filesystem, as in the bench's tmpfs runs). FICLONE and copy_file_range cannot
// copy across filesystems, so the data goes by sendfile (data extents of 64 KiB or more: one copy in
// the kernel) or is read and written: every byte arrives, holes stay holes, and the refused calls are
// not made again for that lower filesystem (each refusal cost an exception, more than the copy of a
// small file). The daemon's system calls are read with strace.
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { attachStrace } from './helpers/strace.js';
import { strataMount, strataUnmount } from './helpers/mounts.js';
import { tempDir, tmpfsDir } from './helpers/tmp.js';
import { readRecord } from '../src/daemon/registry.js';

const KiB = 1024;
const MiB = 1024 * KiB;

test.serial('copy-up from a lower on another filesystem: all data, holes kept, FICLONE and copy_file_range tried once, sendfile for large extents', async (t) => {
  const dir = tempDir(t, 'cux');
  const L = path.join(dir, 'l');
  fs.mkdirSync(L);
  const upperFs = tmpfsDir(t, dir, 'ufs', 64);
  const [U, W] = [path.join(upperFs, 'u'), path.join(upperFs, 'w')];
  fs.mkdirSync(U);
  fs.mkdirSync(W);
  t.not(fs.statSync(L).dev, fs.statSync(U).dev, 'the lower and the upper are on different filesystems');

  const sizes: Record<string, number> = { empty: 0, one: 1, small: 4095, edge: 64 * KiB, edge1: 64 * KiB + 1, big: 2 * MiB + 3 };
  for (const [name, size] of Object.entries(sizes)) fs.writeFileSync(path.join(L, name), crypto.randomBytes(size));
  // 3 MiB with data in its first 4 KiB and its last 3 bytes only.
  const sparse = path.join(L, 'sparse');
  fs.writeFileSync(sparse, crypto.randomBytes(4 * KiB));
  const fd = fs.openSync(sparse, 'r+');
  fs.writeSync(fd, Buffer.from('end'), 0, 3, 3 * MiB - 3);
  fs.closeSync(fd);
  const names = [...Object.keys(sizes), 'sparse'];

  const mnt = strataMount(t, { lowers: [L], upper: U, work: W });
  const pid = readRecord(mnt)!.pid;
  const strace = await attachStrace(t, pid, ['ioctl', 'copy_file_range', 'sendfile'], path.join(dir, 'strace.out'));
  t.true(strace.attached, 'strace attached');

  for (const name of names) fs.chmodSync(path.join(mnt, name), 0o600); // a copy-up each, with the data
  for (const name of names) {
    t.true(fs.readFileSync(path.join(U, name)).equals(fs.readFileSync(path.join(L, name))), `${name}: same bytes in the upper`);
    t.is(fs.statSync(path.join(U, name)).mode & 0o777, 0o600, `${name}: mode`);
  }
  const copied = fs.statSync(path.join(U, 'sparse'));
  t.is(copied.size, 3 * MiB);
  t.true(copied.blocks * 512 < MiB, `the hole stayed a hole (${copied.blocks} blocks)`);

  const lines = await strace.stop();
  strataUnmount(mnt);
  const clones = lines.filter((l) => /ioctl\(\d+, .*FICLONE/.test(l));
  const ranges = lines.filter((l) => /copy_file_range\(/.test(l));
  t.is(clones.length, 1, `FICLONE calls:\n${clones.join('\n')}`);
  t.is(ranges.length, 1, `copy_file_range calls:\n${ranges.join('\n')}`);
  // edge, edge1 and big whole, each in one call (the sparse file's extents and the small files are read and written)
  const sent = lines.filter((l) => /sendfile\(/.test(l)).map((l) => Number(/\) = (\d+)/.exec(l)?.[1]));
  t.deepEqual(sent.sort((a, b) => a - b), [64 * KiB, 64 * KiB + 1, 2 * MiB + 3], `sendfile calls:\n${lines.filter((l) => /sendfile/.test(l)).join('\n')}`);
});
