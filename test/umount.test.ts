// strata umount when the daemon is hung: the connection is aborted (blocked callers get an
// error instead of waiting forever), the daemon is killed and the mount goes away.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from './helpers/exec.js';
import { mountAt, strataMount } from './helpers/mounts.js';
import { strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';


function daemonPid(mnt: string): number {
  const r = spawnSync('pgrep', ['-f', `__daemon ${mnt}$`], { encoding: 'utf8' });
  const pids = r.stdout.trim().split('\n').filter((x) => x.length > 0).map(Number);
  if (pids.length !== 1) throw new Error(`expected one daemon for ${mnt}, found ${pids.length}`);
  return pids[0]!;
}

test('strata umount of a mount whose daemon hangs aborts the connection and kills the daemon', async (t) => {
  const dir = tempDir(t, 'hung');
  const lower = path.join(dir, 'l');
  fs.mkdirSync(lower);
  fs.writeFileSync(path.join(lower, 'f'), 'data\n');
  fs.mkdirSync(path.join(dir, 'm'));
  const mnt = strataMount(t, { lowers: [lower], mountpoint: path.join(dir, 'm') });
  const pid = daemonPid(mnt);
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  });
  process.kill(pid, 'SIGSTOP');
  // A reader now blocks in the kernel, waiting for the daemon.
  const reader = spawn('cat', [path.join(mnt, 'f')], { stdio: ['ignore', 'pipe', 'pipe'] });
  const readerDone = new Promise<number | null>((res) => reader.on('exit', (code) => res(code)));
  await new Promise((r) => setTimeout(r, 300));
  t.is(reader.exitCode, null, 'the reader is blocked while the daemon is stopped');
  const u = spawnSync(strataBin, ['umount', mnt], { encoding: 'utf8', timeout: 30_000 });
  t.is(u.status, 0, u.stderr);
  t.regex(u.stdout, /did not answer.*aborted the FUSE connection/);
  t.is(mountAt(mnt), undefined);
  const code = await Promise.race([readerDone, new Promise((r) => setTimeout(() => r('still blocked'), 30_000))]);
  t.not(code, 'still blocked', 'the blocked reader was released');
  t.not(code, 0, 'with an error');
});

test('a background daemon leaves the directory it was started in: the filesystem there can be unmounted; relative paths still work', async (t) => {
  const dir = tempDir(t, 'cwd');
  const elsewhere = path.join(dir, 'elsewhere');
  for (const d of ['l', 'u', 'w', 'm', 'elsewhere']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(path.join(dir, 'l', 'f'), 'data\n');
  // strata started from inside a tmpfs, with every path relative to it
  const r0 = spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', elsewhere]);
  t.is(r0.status, 0);
  t.teardown(() => void spawnSync('umount', ['-l', elsewhere]));
  const m = path.join(dir, 'm');
  const r = spawnSync(strataBin, ['mount', '-o', 'lowerdir=../l,upperdir=../u,workdir=../w', '--log-file', '../daemon.log', '--cache-dir', '../cache', '--pid-file', '../daemon.pid', '../m'],
    { cwd: elsewhere, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.teardown(() => void spawnSync(strataBin, ['umount', m]));
  t.is(fs.readFileSync(path.join(m, 'f'), 'utf8'), 'data\n');
  const pid = Number(fs.readFileSync(path.join(dir, 'daemon.pid'), 'utf8'));
  t.is(fs.readlinkSync(`/proc/${pid}/cwd`), '/');
  t.true(fs.existsSync(path.join(dir, 'daemon.log')), 'the log file is where it was named, relative to where strata started');
  t.true(fs.existsSync(path.join(dir, 'cache')), 'so is the cache directory');
  // The tmpfs is not busy: it unmounts (not lazily) while the mount serves on.
  const u = spawnSync('umount', [elsewhere], { encoding: 'utf8' });
  t.is(u.status, 0, u.stderr);
  fs.writeFileSync(path.join(m, 'g'), 'new\n');
  t.is(fs.readFileSync(path.join(dir, 'u', 'g'), 'utf8'), 'new\n');
  // Reopened on SIGHUP (as logrotate asks), the log is the same file: where it was named, not below /.
  process.kill(pid, 'SIGHUP');
  t.is(spawnSync(strataBin, ['umount', m]).status, 0);
  t.true(await waitFor(() => fs.readFileSync(path.join(dir, 'daemon.log'), 'utf8').includes('"unmounted"'), 10_000), 'the unmount logged in the reopened log');
});

test('strata umount leaves other filesystems\' mounts alone: a kernel overlay, and a tmpfs mounted over a strata mount', (t) => {
  const dir = tempDir(t, 'other');
  for (const d of ['l', 'l2', 'u', 'w', 'k', 'm']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(path.join(dir, 'l', 'f'), 'data\n');
  const k = path.join(dir, 'k');
  t.is(spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${dir}/l:${dir}/l2`, k]).status, 0);
  t.teardown(() => void spawnSync('umount', ['-l', k]));
  const r = spawnSync(strataBin, ['umount', k], { encoding: 'utf8' });
  t.is(r.status, 1);
  t.regex(r.stderr, /is not a strata mount \(overlay is mounted there\)/);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.is(mountAt(k)?.fstype, 'overlay', 'the kernel overlay is still mounted');
  // a tmpfs stacked over a strata mount: strata umount does not take the tmpfs off
  const m = strataMount(t, { lowers: [path.join(dir, 'l')], mountpoint: path.join(dir, 'm') });
  t.is(spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', m]).status, 0);
  t.teardown(() => void spawnSync('umount', ['-l', m]));
  const r2 = spawnSync(strataBin, ['umount', m], { encoding: 'utf8' });
  t.is(r2.status, 1, r2.stderr);
  t.is(mountAt(m)?.fstype, 'tmpfs');
  t.is(spawnSync('umount', [m]).status, 0);
  t.is(mountAt(m)?.fstype, 'fuse.strata', 'the strata mount below it');
  t.is(spawnSync(strataBin, ['umount', m]).status, 0);
});
