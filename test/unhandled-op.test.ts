// A request the daemon has no handler for is answered ENOSYS at once, and the kernel then falls back
// on its own: poll(2) of a file the daemon serves sends FUSE_POLL, which strata does not implement;
// the kernel answers the default mask from then on (as the kernel's overlay does for a regular
// file), and the mount goes on serving. Without an answer the poll would wait forever.
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { daemonLogLines, mountSide, strataUnmount } from './helpers/mounts.js';
import { tempDir } from './helpers/tmp.js';

/**
 * Runs python `script` in `cwd`. A FUSE request the daemon read and never answers keeps its caller
 * waiting even for SIGKILL: after `ms` the mount's FUSE connection is aborted, which frees it.
 */
function python(cwd: string, script: string, ms: number): Promise<{ out: string; aborted: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script], { cwd, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let aborted = false;
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      aborted = true;
      const dev = fs.statSync(cwd).dev;
      const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00); // the FUSE connection's number
      try {
        fs.writeFileSync(`/sys/fs/fuse/connections/${minor}/abort`, '1');
      } catch {
        child.kill('SIGKILL');
      }
    }, ms);
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(timer);
      resolve({ out, aborted });
    });
  });
}

test('FUSE_POLL, which strata does not handle, gets ENOSYS: poll answers the default mask, as on the kernel overlay', async (t) => {
  const root = tempDir(t, 'unhandled');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(lower);
  fs.writeFileSync(path.join(lower, 'small'), 'served by the daemon (a small file opened read-only)\n');
  fs.writeFileSync(path.join(lower, 'other'), 'still served afterwards\n');
  // poll(2) twice (the second time the kernel knows not to ask), then a read of another file
  const script = `
import os, select
fd = os.open('small', os.O_RDONLY)
masks = []
for _ in range(2):
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLOUT | select.POLLPRI)
    masks.append(p.poll(5000))
os.close(fd)
print([[m for _, m in r] for r in masks], open('other').read().strip())
`;
  const log = path.join(root, 'strata.log');
  const results: Record<string, string> = {};
  for (const name of ['kernel', 'strata'] as const) {
    const mnt = mountSide(t, root, name, [lower], ['--log-file', log, '--log-level', 'info']);
    const r = await python(mnt, script, 20_000);
    t.false(r.aborted, `${name}: poll got no answer`);
    results[name] = r.out;
    if (name === 'strata' && !r.aborted) strataUnmount(mnt);
  }
  t.is(results.strata, results.kernel);
  t.regex(results.strata!, /still served afterwards/);
  const line = daemonLogLines(log).find((l) => l.msg === 'unmounted');
  // the request did reach the daemon, once: the kernel stopped asking after the ENOSYS
  t.is(line?.byOp?.POLL, 1, JSON.stringify(line?.byOp));
});
