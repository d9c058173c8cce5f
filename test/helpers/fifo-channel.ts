// A synchronous line channel to a long-lived child process through two FIFOs (Node has no blocking
// read on a child's pipe): commands go in through one opened read-write (never blocks, never
// SIGPIPE), answers come back through one read without blocking, polled with short sleeps (from
// 10 µs, doubling up to 2 ms) while the child lives. Used by the descriptor drivers (fd-driver.ts)
// and the xop helper processes (ops-xop.ts).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runOk } from './exec.js';

const sleeper = new Int32Array(new SharedArrayBuffer(4));
/** Sleeps the thread (a poll interval while waiting for a process). */
export function sleepMs(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

export class FifoChannel {
  /** A private directory holding the two FIFOs (and whatever else the user puts there). */
  readonly dir: string;
  readonly cmdPath: string;
  readonly resPath: string;
  private readonly cmdFd: number;
  private readonly resFd: number;
  private readonly buf = Buffer.alloc(1 << 16);
  private pending = '';

  constructor(prefix: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    this.cmdPath = path.join(this.dir, 'cmd');
    this.resPath = path.join(this.dir, 'res');
    runOk('mkfifo', ['-m', '0600', this.cmdPath, this.resPath]);
    // Opened before the child: read-write never blocks, and a non-blocking reader lets the child's open for writing return.
    this.cmdFd = fs.openSync(this.cmdPath, fs.constants.O_RDWR);
    this.resFd = fs.openSync(this.resPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  }

  /** Descriptors for a child's stdin and stdout (neither open blocks: each FIFO's other end is open); close them once it started. */
  childStdio(): [number, number] {
    return [fs.openSync(this.cmdPath, fs.constants.O_RDONLY), fs.openSync(this.resPath, fs.constants.O_WRONLY)];
  }

  send(text: string): void {
    fs.writeSync(this.cmdFd, text);
  }

  /**
   * The next answer line. Throws `ended()` when `alive` says the child is gone and `late()` after
   * `timeoutMs`. (A read of 0 bytes only says that no writer has the FIFO open yet or any more.)
   */
  readLine(timeoutMs: number, alive: () => boolean, ended: () => Error, late: () => Error): string {
    const end = Date.now() + timeoutMs;
    let wait = 0.01;
    for (;;) {
      const nl = this.pending.indexOf('\n');
      if (nl >= 0) {
        const line = this.pending.slice(0, nl);
        this.pending = this.pending.slice(nl + 1);
        return line;
      }
      let n = 0;
      try {
        n = fs.readSync(this.resFd, this.buf, 0, this.buf.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      }
      if (n > 0) {
        this.pending += this.buf.subarray(0, n).toString('latin1');
        wait = 0.01;
        continue;
      }
      if (!alive()) throw ended();
      if (Date.now() > end) throw late();
      sleepMs(wait);
      wait = Math.min(wait * 2, 2);
    }
  }

  /** Closes both ends and removes the directory. Never throws. */
  close(): void {
    for (const fd of [this.cmdFd, this.resFd]) {
      try {
        fs.closeSync(fd);
      } catch {
        // closed already
      }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
