// The daemon's control socket (src/daemon/control.ts): a daemon serves it only after its mount is
// live, so a `mount -o remount` issued at once must wait for the socket rather than fail.
import test from 'ava';
import fs from 'node:fs';
import { askDaemon, serveControl, type RemountRequest } from '../src/daemon/control.js';
import { controlPath } from '../src/daemon/registry.js';

/** A pid no process has (above the kernel's pid_max limit of 2^22): its socket is ours alone. */
function unusedPid(): number {
  return 5_000_000 + Math.floor(Math.random() * 1_000_000);
}

const REQ: RemountRequest = { op: 'remount', readOnly: true, flags: { nodev: false, nosuid: false, noexec: false, atime: 'relatime', nodiratime: false } };

test('askDaemon waits for a socket that comes up after the request was made', async (t) => {
  const pid = unusedPid();
  const seen: RemountRequest[] = [];
  let server: { close(): void } | null = null;
  const timer = setTimeout(() => {
    server = serveControl(pid, (req) => void seen.push(req));
  }, 300);
  t.teardown(() => {
    clearTimeout(timer);
    server?.close();
  });
  const reply = await askDaemon(pid, REQ);
  t.deepEqual(reply, { ok: true });
  t.is(seen.length, 1);
  t.true(seen[0]!.readOnly);
});

test('askDaemon gives up on a daemon whose socket never comes, and passes on its refusal; stale sockets are swept', async (t) => {
  const pid = unusedPid();
  const err = await t.throwsAsync(askDaemon(pid, REQ));
  t.is((err as NodeJS.ErrnoException).code, 'ENOENT');
  // A daemon killed before it could close its socket: the next daemon to serve one removes it.
  const dead = unusedPid();
  fs.writeFileSync(controlPath(dead), '');
  t.teardown(() => fs.rmSync(controlPath(dead), { force: true }));
  const server = serveControl(pid, () => {
    throw Object.assign(new Error('cannot remount read-write: the mount has no upper layer'), { code: 'EROFS' });
  });
  t.teardown(() => server.close());
  t.false(fs.existsSync(controlPath(dead)), 'the socket of a daemon that is gone was left behind');
  t.deepEqual(await askDaemon(pid, REQ), { ok: false, error: 'cannot remount read-write: the mount has no upper layer', code: 'EROFS' });
});
