// The daemon's control socket (RUN_DIR/<pid>.sock, root only): `strata remount` (which mount(8)
// runs for `mount -o remount,...`) asks the daemon of a mount to change the mount's flags. The
// daemon makes the mount(2) call itself, so its own idea of read-only and the kernel's never
// disagree for longer than that call. One JSON line each way. A daemon that starts serving sweeps
// away the sockets of daemons that were killed.

import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { errCode } from '../fuse/errors.js';
import type { VfsFlagParams } from './mount_flags.js';
import { controlPath, RUN_DIR, sweepSockets } from './registry.js';

export interface RemountRequest {
  op: 'remount';
  readOnly: boolean;
  flags: VfsFlagParams;
}

export type ControlReply = { ok: true } | { ok: false; error: string; code?: string };

export interface ControlServer {
  close(): void;
}

/** Serves requests until closed; `handle` throws to refuse (its message and code are sent back). */
export function serveControl(pid: number, handle: (req: RemountRequest) => void): ControlServer {
  const path = controlPath(pid);
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 });
  rmSync(path, { force: true });
  sweepSockets();
  const server = net.createServer((sock) => {
    let text = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      text += d;
      const nl = text.indexOf('\n');
      if (nl < 0) {
        if (text.length > 65536) sock.destroy();
        return;
      }
      let reply: ControlReply;
      try {
        const req = JSON.parse(text.slice(0, nl)) as RemountRequest;
        if (req.op !== 'remount') throw new Error(`unknown request "${String(req.op)}"`);
        handle(req);
        reply = { ok: true };
      } catch (e) {
        const err = e as { message?: string; code?: string };
        reply = { ok: false, error: err.message ?? String(e), code: err.code };
      }
      sock.end(JSON.stringify(reply) + '\n');
    });
    sock.on('error', () => sock.destroy());
  });
  server.listen(path, () => chmodSync(path, 0o600));
  server.unref();
  return {
    close(): void {
      server.close();
      rmSync(path, { force: true });
    },
  };
}

/** How long askDaemon waits for the socket of a daemon whose mount has only just gone live. */
const SOCKET_WAIT_MS = 5_000;

/**
 * Sends one request to the daemon `pid` and waits for its answer. A daemon serves its socket once
 * it is first idle after its mount went live, within 3 s (see runDaemon): a missing or not yet
 * listening socket is retried for a few seconds.
 */
export async function askDaemon(pid: number, req: RemountRequest, timeoutMs = 30_000): Promise<ControlReply> {
  const deadline = Date.now() + SOCKET_WAIT_MS;
  for (;;) {
    try {
      return await askOnce(pid, req, timeoutMs);
    } catch (e) {
      const code = errCode(e);
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() >= deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

function askOnce(pid: number, req: RemountRequest, timeoutMs: number): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(controlPath(pid));
    let text = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('the daemon did not answer'));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      text += d;
    });
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(text) as ControlReply);
      } catch {
        reject(new Error('the daemon gave no answer'));
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
  });
}
