// When a copy-up syncs: as the kernel's overlay since 6.11 (metacopy off), a regular file's copy is
// synced after its owner, mode, xattrs and times are set and before it is linked in, and a
// directory's copy is synced before it is renamed into place. The daemon's system calls are read
// with strace: the ordering cannot be seen from the files without cutting the power.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { attachStrace } from './helpers/strace.js';
import { strataMount, strataUnmount } from './helpers/mounts.js';
import { tempDir, tmpfsDir } from './helpers/tmp.js';
import { readRecord } from '../src/daemon/registry.js';

test.serial('a copy-up is synced after its attributes and before it becomes visible, files and directories', async (t) => {
  const dir = tempDir(t, 'cusync');
  const [L, U, W, M] = ['l', 'u', 'w', 'm'].map((d) => path.join(dir, d)) as [string, string, string, string];
  for (const d of [L, U, W, M]) fs.mkdirSync(d);
  fs.writeFileSync(path.join(L, 'f'), 'data\n');
  fs.chownSync(path.join(L, 'f'), 1000, 1000);
  fs.mkdirSync(path.join(L, 'd'));
  fs.writeFileSync(path.join(L, 'd', 'g'), 'g\n');
  const mnt = strataMount(t, { lowers: [L], upper: U, work: W, mountpoint: M });
  const pid = readRecord(mnt)!.pid;

  const strace = await attachStrace(t, pid, ['openat', 'fsync', 'fchown', 'fchmod', 'fchownat', 'fchmodat', 'utimensat', 'linkat', 'renameat2'],
    path.join(dir, 'strace.out'));
  t.true(strace.attached, 'strace attached');

  fs.chmodSync(path.join(mnt, 'f'), 0o600); // a regular file's copy-up
  fs.chmodSync(path.join(mnt, 'd'), 0o750); // a directory's
  t.is(fs.readFileSync(path.join(U, 'f'), 'utf8'), 'data\n');
  t.is(fs.statSync(path.join(U, 'd')).mode & 0o7777, 0o750);
  const lines = await strace.stop();
  strataUnmount(mnt);

  const at = (re: RegExp, from = 0, to = lines.length): number => {
    for (let i = from; i < to; i++) if (re.test(lines[i]!)) return i;
    return -1;
  };

  // The file: linkat(fd, "", parent, "f", AT_EMPTY_PATH) after fchown, futimens and fsync of that fd, in that order.
  const link = at(/^linkat\(\d+, "", \d+, "f", AT_EMPTY_PATH\)/);
  t.true(link >= 0, `no linkat of f:\n${lines.join('\n')}`);
  const fd = /^linkat\((\d+),/.exec(lines[link]!)![1]!;
  let chown = -1, times = -1, sync = -1;
  for (let i = 0; i < link; i++) {
    if (lines[i]!.startsWith(`fchown(${fd}, 1000, 1000)`)) chown = i;
    if (lines[i]!.startsWith(`utimensat(${fd}, NULL,`)) times = i;
    if (lines[i]!.startsWith(`fsync(${fd})`)) sync = i;
  }
  t.true(chown >= 0 && times >= 0 && sync >= 0, `fchown ${chown}, futimens ${times}, fsync ${sync} before the link:\n${lines.join('\n')}`);
  t.true(chown < times && times < sync, `fchown ${chown}, futimens ${times}, fsync ${sync}: the sync must come last`);

  // The directory: renameat2(work, tmp, parent, "d", RENAME_NOREPLACE) after an fsync of tmp, opened in work.
  const rename = at(/^renameat2\(\d+, "[^"]+", \d+, "d", RENAME_NOREPLACE\)/);
  t.true(rename >= 0, `no rename of d into place:\n${lines.join('\n')}`);
  const [, work, tmp] = /^renameat2\((\d+), "([^"]+)"/.exec(lines[rename]!)!;
  const open = at(new RegExp(`^openat\\(${work}, "${tmp!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}", O_RDONLY\\|O_NOFOLLOW\\|O_CLOEXEC\\|O_DIRECTORY\\) = (\\d+)`), 0, rename);
  t.true(open >= 0, `the directory's copy was not opened before its rename:\n${lines.join('\n')}`);
  const dfd = /= (\d+)$/.exec(lines[open]!)![1]!;
  const dsync = at(new RegExp(`^fsync\\(${dfd}\\)`), open, rename);
  t.true(dsync >= 0, `no fsync of the directory's copy before its rename:\n${lines.join('\n')}`);
  // ...and after its times, the last of its attributes
  const dtimes = at(new RegExp(`^utimensat\\(${work}, "${tmp!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`), open, rename);
  t.true(dtimes >= 0 && dtimes < dsync, `the directory's times at ${dtimes}, its fsync at ${dsync}:\n${lines.join('\n')}`);
});

/** fsync(2) of a file written through the mount, and a chmod of a lower file (a copy-up), traced in the daemon. */
async function traceSyncs(t: ExecutionContext, dir: string, upperParent: string): Promise<string[]> {
  const L = path.join(dir, 'l');
  fs.mkdirSync(L);
  fs.writeFileSync(path.join(L, 'f'), 'data\n');
  const [U, W] = ['u', 'w'].map((d) => path.join(upperParent, d)) as [string, string];
  for (const d of [U, W]) fs.mkdirSync(d);
  const M = path.join(dir, 'm');
  fs.mkdirSync(M);
  const mnt = strataMount(t, { lowers: [L], upper: U, work: W, mountpoint: M });
  const strace = await attachStrace(t, readRecord(mnt)!.pid, ['fsync', 'fdatasync', 'linkat'], path.join(dir, 'strace.out'));
  t.true(strace.attached, 'strace attached');
  const fd = fs.openSync(path.join(mnt, 'new'), 'w');
  fs.writeSync(fd, 'new data\n');
  fs.fsyncSync(fd);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
  fs.chmodSync(path.join(mnt, 'f'), 0o600);
  const lines = await strace.stop();
  strataUnmount(mnt);
  t.is(fs.readFileSync(path.join(U, 'new'), 'utf8'), 'new data\n');
  t.true(lines.some((l) => /^linkat\(\d+, "", \d+, "f", AT_EMPTY_PATH\)/.test(l)), `the copy-up was traced:\n${lines.join('\n')}`);
  return lines.filter((l) => /^f(data)?sync\(/.test(l));
}

test.serial('fsync reaches the upper file on a disk; on an upper held in memory (tmpfs) neither it nor a copy-up calls fsync', async (t) => {
  const disk = tempDir(t, 'fsdisk');
  const onDisk = await traceSyncs(t, disk, disk);
  t.true(onDisk.some((l) => l.startsWith('fsync(')) && onDisk.some((l) => l.startsWith('fdatasync(')), `on ext4: ${onDisk.join(', ')}`);
  t.true(onDisk.length >= 3, `fsync, fdatasync and the copy-up's fsync: ${onDisk.join(', ')}`);
  const mem = tempDir(t, 'fsmem');
  t.deepEqual(await traceSyncs(t, mem, tmpfsDir(t, mem)), [], 'nothing to write on a tmpfs');
});
