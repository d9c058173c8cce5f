// strace attached to a running process (a daemon), for tests that check which system calls it makes
// and in what order: what the files alone cannot show.
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { waitFor } from './exec.js';

/** Is `pid` traced (by strace attached to it)? */
function traced(pid: number): boolean {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^TracerPid:\s+(\d+)/m.exec(status)?.[1] ?? '0') !== 0;
}

export interface Strace {
  /** strace attached before the promise resolved (else the test should fail). */
  attached: boolean;
  /** Ends the trace; the lines it wrote, without their thread ids. */
  stop(): Promise<string[]>;
}

/** Traces `syscalls` of every thread of `pid` into `log`; killed at the test's end if not stopped. */
export async function attachStrace(t: ExecutionContext, pid: number, syscalls: readonly string[], log: string): Promise<Strace> {
  const strace = spawn('strace', ['-f', '-qq', '-e', `trace=${syscalls.join(',')}`, '-o', log, '-p', String(pid)], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => strace.on('exit', () => resolve()));
  t.teardown(() => {
    strace.kill('SIGKILL');
  });
  const attached = await waitFor(() => traced(pid));
  return {
    attached,
    async stop() {
      strace.kill('SIGINT');
      await exited;
      return fs.readFileSync(log, 'utf8').split('\n').map((l) => l.replace(/^\d+\s+/, ''));
    },
  };
}
