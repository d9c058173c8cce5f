// The ways a system runs strata, as the README gives them: the systemd unit in contrib/systemd
// (its commands run as systemd runs them: ExecStartPre, ExecStart of a forking service with a
// PIDFile, ExecReload, ExecStop) and the /etc/fstab line in contrib/fstab.example, mounted by
// mount(8) through the mount.fuse.strata helper.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, waitFor } from './helpers/exec.js';
import { materializeLayers } from './helpers/layers.js';
import { mountAt, strataUnmount } from './helpers/mounts.js';
import { installHelper } from './helpers/mount-helper.js';
import { repoRoot, strataBin } from './helpers/paths.js';
import { isAlive, processesServing } from './helpers/processes.js';
import { tempDir } from './helpers/tmp.js';

const UNIT = path.join(repoRoot, 'contrib', 'systemd', 'strata-rootfs.service');
const FSTAB = path.join(repoRoot, 'contrib', 'fstab.example');
const README = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');

/** Three small layers at DIR/layers/l{0,1,2} and DIR/rootfs/{upper,work,merged}, like the README's. */
function site(t: ExecutionContext): { root: string; rewrite: (s: string) => string } {
  const root = tempDir(t, 'svc');
  fs.mkdirSync(path.join(root, 'layers'));
  materializeLayers(path.join(root, 'layers'), [
    [{ path: 'etc/hostname', kind: 'file', content: 'top\n' }],
    [{ path: 'bin/tool', kind: 'file', content: '#!/bin/sh\n', mode: 0o755 }],
    [{ path: 'etc/hostname', kind: 'file', content: 'base\n' }, { path: 'etc/passwd', kind: 'file', content: 'root:x:0:0::/root:/bin/sh\n' }],
  ], ['l2', 'l1', 'l0']);
  for (const d of ['upper', 'work', 'merged']) fs.mkdirSync(path.join(root, 'rootfs', d), { recursive: true });
  t.teardown(() => strataUnmount(path.join(root, 'rootfs', 'merged')));
  const rewrite = (s: string): string => s
    .replaceAll('/usr/local/bin/strata', strataBin)
    .replaceAll('/srv/', `${root}/`)
    .replaceAll('/run/strata-rootfs.pid', `${root}/strata.pid`)
    .replaceAll('/var/log/strata/', `${root}/log/`);
  return { root, rewrite };
}

/** Splits a command line as systemd does for these simple lines (no quoting used in the unit). */
function argv(line: string): string[] {
  return line.trim().split(/\s+/);
}

test('the systemd unit: start, reload and stop, run as systemd runs them', async (t) => {
  const unit = fs.readFileSync(UNIT, 'utf8');
  const { root, rewrite } = site(t);
  const key = (k: string): string => {
    const m = unit.match(new RegExp(`^${k}=(.*)$`, 'm'));
    if (!m) throw new Error(`${k}= missing from the unit`);
    return rewrite(m[1]!);
  };
  t.is(key('Type'), 'forking');
  const pidFile = key('PIDFile');
  const merged = path.join(root, 'rootfs', 'merged');

  // ExecStartPre=-...: may fail when there is nothing to clear (the "-").
  const pre = key('ExecStartPre');
  t.true(pre.startsWith('-'));
  run(argv(pre.slice(1))[0]!, argv(pre.slice(1)).slice(1));
  const start = argv(key('ExecStart'));
  const r = run(start[0]!, start.slice(1), { timeoutMs: 30_000 });
  t.is(r.status, 0, r.stderr);
  // A forking service is started when ExecStart returns: the mount answers and the PIDFile names the daemon.
  t.is(mountAt(merged)?.fstype, 'fuse.strata');
  t.is(fs.readFileSync(path.join(merged, 'etc', 'hostname'), 'utf8'), 'top\n');
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  t.true(isAlive(pid), 'the PIDFile names a live process');
  t.deepEqual(processesServing(merged).map((p) => p.pid), [pid], 'it is the daemon');
  fs.writeFileSync(path.join(merged, 'etc', 'hostname'), 'changed\n');

  // ExecReload: SIGHUP reopens the log file (after logrotate moved it away).
  const logFile = path.join(root, 'log', 'rootfs.log');
  t.true(fs.existsSync(logFile));
  fs.renameSync(logFile, logFile + '.1');
  const reload = argv(key('ExecReload').replace('$MAINPID', String(pid)));
  t.is(run(reload[0]!, reload.slice(1)).status, 0);
  t.true(await waitFor(() => fs.existsSync(logFile), 30_000), 'the log file is reopened');

  const stop = argv(key('ExecStop'));
  const s = run(stop[0]!, stop.slice(1), { timeoutMs: 30_000 });
  t.is(s.status, 0, s.stderr);
  t.is(mountAt(merged), undefined);
  t.true(await waitFor(() => !isAlive(pid), 10_000), 'the daemon exits');
  t.false(fs.existsSync(pidFile), 'the PIDFile is removed');
  t.is(fs.readFileSync(path.join(root, 'rootfs', 'upper', 'etc', 'hostname'), 'utf8'), 'changed\n');

  // After a crash (SIGKILL), ExecStartPre clears the dead mount so a restart works.
  t.is(run(start[0]!, start.slice(1), { timeoutMs: 30_000 }).status, 0);
  const pid2 = Number(fs.readFileSync(pidFile, 'utf8').trim());
  process.kill(pid2, 'SIGKILL');
  t.true(await waitFor(() => !isAlive(pid2), 30_000));
  t.not(run(start[0]!, start.slice(1), { timeoutMs: 30_000 }).status, 0, 'a dead mount is in the way');
  t.is(run(argv(pre.slice(1))[0]!, argv(pre.slice(1)).slice(1), { timeoutMs: 30_000 }).status, 0);
  const again = run(start[0]!, start.slice(1), { timeoutMs: 30_000 });
  t.is(again.status, 0, again.stderr);
  t.is(fs.readFileSync(path.join(merged, 'etc', 'hostname'), 'utf8'), 'changed\n');
  t.is(run(stop[0]!, stop.slice(1), { timeoutMs: 30_000 }).status, 0);
});

test('the /etc/fstab line: mount(8) mounts it through the helper, umount ends it', async (t) => {
  const line = fs.readFileSync(FSTAB, 'utf8').split('\n').find((l) => l.trim() !== '' && !l.startsWith('#'))!;
  t.true(README.includes(line.replace(/\s+/g, ' ').trim()) || README.includes(line.trim()), 'the README shows the same line');
  const { root, rewrite } = site(t);
  installHelper(t);
  const fstab = path.join(root, 'fstab');
  fs.writeFileSync(fstab, rewrite(line) + '\n');
  const merged = path.join(root, 'rootfs', 'merged');
  // As at boot: mount -a over that fstab (mount(8) calls the helper with a minimal environment).
  const r = run('mount', ['--fstab', fstab, '-a'], { timeoutMs: 30_000, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  t.is(r.status, 0, r.stderr);
  t.is(mountAt(merged)?.fstype, 'fuse.strata');
  t.is(fs.readFileSync(path.join(merged, 'etc', 'hostname'), 'utf8'), 'top\n');
  t.is(fs.readFileSync(path.join(merged, 'etc', 'passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
  fs.writeFileSync(path.join(merged, 'new'), 'x');
  t.is(fs.readFileSync(path.join(root, 'rootfs', 'upper', 'new'), 'utf8'), 'x');
  // Also by mountpoint alone, as `mount /srv/rootfs/merged` does with the line in /etc/fstab.
  t.is(run('umount', [merged]).status, 0);
  t.true(await waitFor(() => processesServing(merged).length === 0, 10_000), 'the daemon exits');
  const byPath = run('mount', ['--fstab', fstab, merged], { timeoutMs: 30_000 });
  t.is(byPath.status, 0, byPath.stderr);
  t.is(fs.readFileSync(path.join(merged, 'new'), 'utf8'), 'x');
  t.is(run('umount', [merged]).status, 0);
  t.true(await waitFor(() => processesServing(merged).length === 0, 10_000), 'the daemon exits');
});
