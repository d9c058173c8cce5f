// Running commands: synchronous runs with output captured through files (so a daemon that keeps
// an inherited descriptor open cannot make the caller hang), and an asynchronous variant that
// also reports whether the child's stdio pipes were closed.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface RunResult {
  command: string;
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** with RunOptions.binary */
  stdoutBytes?: Buffer;
}

export interface RunOptions {
  input?: string;
  /** Also return stdout as bytes (stdoutBytes). */
  binary?: boolean;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

let captureDir: string | undefined;
function captureFile(tag: string): string {
  if (captureDir === undefined) {
    captureDir = fs.mkdtempSync(path.join(os.tmpdir(), 'run-'));
    const dir = captureDir;
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return path.join(captureDir, `${process.pid}-${tag}-${Math.random().toString(36).slice(2)}`);
}

export function describeCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** Runs a command to completion; stdout/stderr go through files, never pipes. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const outPath = captureFile('out');
  const errPath = captureFile('err');
  const out = fs.openSync(outPath, 'w+');
  const err = fs.openSync(errPath, 'w+');
  try {
    const r = spawnSync(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      input: opts.input,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', out, err],
      timeout: opts.timeoutMs ?? 60_000,
      killSignal: 'SIGKILL',
    });
    const stdoutBytes = fs.readFileSync(outPath);
    let stderr = fs.readFileSync(errPath, 'utf8');
    if (r.error) stderr += `\n[spawn error: ${r.error.message}]`;
    return {
      command: describeCommand(cmd, args),
      status: r.status,
      signal: r.signal,
      stdout: stdoutBytes.toString('utf8'),
      stderr,
      ...(opts.binary ? { stdoutBytes } : {}),
    };
  } finally {
    fs.closeSync(out);
    fs.closeSync(err);
    fs.rmSync(outPath, { force: true });
    fs.rmSync(errPath, { force: true });
  }
}

/** Like run(), but throws with the command's stderr unless it exits 0. */
export function runOk(cmd: string, args: readonly string[], opts: RunOptions = {}): string {
  const r = run(cmd, args, opts);
  if (r.status !== 0) {
    throw new Error(`${r.command} failed (status ${r.status}, signal ${r.signal}): ${r.stderr.trim()}`);
  }
  return r.stdout;
}

export interface AsyncRunResult extends RunResult {
  /** Milliseconds from exit until both stdout and stderr pipes reached EOF, or null if they did not within the grace period. */
  pipesClosedAfterMs: number | null;
}

/**
 * Spawns with pipes (as podman does) and resolves once the process has exited and either its
 * pipes closed or `pipeGraceMs` passed after the exit.
 */
export function runWithPipes(
  cmd: string,
  args: readonly string[],
  opts: RunOptions & { pipeGraceMs?: number } = {},
): Promise<AsyncRunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let open = 2;
    let exitedAt: number | undefined;
    let status: number | null = null;
    let signal: NodeJS.Signals | null = null;
    let done = false;
    let grace: NodeJS.Timeout | undefined;
    const timeout = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timeout);
      clearTimeout(grace);
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({
        command: describeCommand(cmd, args),
        status,
        signal,
        stdout,
        stderr,
        pipesClosedAfterMs: closed && exitedAt !== undefined ? Date.now() - exitedAt : null,
      });
    };
    const onEnd = (): void => {
      open -= 1;
      if (open === 0 && exitedAt !== undefined) finish(true);
    };
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d)).on('end', onEnd);
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d)).on('end', onEnd);
    child.on('error', (e) => {
      stderr += `\n[spawn error: ${e.message}]`;
    });
    child.on('exit', (code, sig) => {
      status = code;
      signal = sig;
      exitedAt = Date.now();
      if (open === 0) finish(true);
      else grace = setTimeout(() => finish(false), opts.pipeGraceMs ?? 3_000);
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` until it returns true or `timeoutMs` passes; returns the last result. */
export async function waitFor(check: () => boolean, timeoutMs = 10_000, stepMs = 50): Promise<boolean> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    if (check()) return true;
    if (performance.now() > end) return false;
    await sleep(stepMs);
  }
}
