// Health checks, as Docker runs them. The test is the image's HEALTHCHECK (config.Healthcheck), with
// run's or create's --health-* over it field by field; --no-healthcheck or HEALTHCHECK NONE turn it
// off. While the command runs, its monitor (the strata process that started it) runs the test in the
// container, as `strata exec` would, every Interval (every StartInterval within the StartPeriod until
// a test passes), and records the result with the container as Docker's State.Health:
//   - exit status 0: healthy, the failing streak back to 0;
//   - anything else, or no end within Timeout (its process group killed; exit code -1): a failure,
//     which counts towards Retries unless the container is still "starting" within its StartPeriod;
//     Retries failures in a row: unhealthy;
//   - the last 5 results are kept (start, end, exit code, the first 4096 bytes of output).
// A restart begins again at "starting".

import type { ChildProcess } from 'node:child_process';
import { spawnInContainer } from './lifecycle.js';
import { type HealthConfig, settingsOf } from './settings.js';
import { type ContainerRecord, withStore } from './store.js';
import type { ImageConfig } from './types.js';

export interface HealthResult {
  Start: string;
  End: string;
  ExitCode: number;
  Output: string;
}

export interface HealthState {
  Status: 'starting' | 'healthy' | 'unhealthy';
  FailingStreak: number;
  Log: HealthResult[];
}

/** Docker's defaults (0 in the config means the default). */
const DEFAULTS = { Interval: 30e9, Timeout: 30e9, StartPeriod: 0, StartInterval: 5e9, Retries: 3 };
const MAX_OUTPUT = 4096;
const KEEP_RESULTS = 5;

type Check = Required<Omit<HealthConfig, 'Test'>> & { argv: string[] };

/** The check a container runs: the image's, with its own settings over it; null: none. */
export function healthCheckOf(config: ImageConfig, rec: ContainerRecord): Check | null {
  const image = (config.config?.Healthcheck ?? {}) as HealthConfig;
  const h: HealthConfig = { ...image, ...(settingsOf(rec).healthcheck ?? {}) };
  const test = h.Test;
  if (!Array.isArray(test) || test.length === 0 || test[0] === 'NONE') return null;
  let argv: string[];
  if (test[0] === 'CMD') argv = test.slice(1);
  else if (test[0] === 'CMD-SHELL') argv = [...(Array.isArray(config.config?.Shell) && config.config.Shell.length > 0 ? config.config.Shell as string[] : ['/bin/sh', '-c']), test.slice(1).join(' ')];
  else return null;
  if (argv.length === 0) return null;
  const or = (v: number | undefined, d: number): number => (typeof v === 'number' && v > 0 ? v : d);
  return {
    argv, Interval: or(h.Interval, DEFAULTS.Interval), Timeout: or(h.Timeout, DEFAULTS.Timeout), StartPeriod: or(h.StartPeriod, DEFAULTS.StartPeriod),
    StartInterval: or(h.StartInterval, DEFAULTS.StartInterval), Retries: or(h.Retries, DEFAULTS.Retries),
  };
}

/**
 * Runs the container's health check while its command runs (`rec` carries the running command's
 * unsharePid); returns the function that stops it (when the command has ended).
 */
export function monitorHealth(store: string, config: ImageConfig, rec: ContainerRecord): () => void {
  const check = healthCheckOf(config, rec);
  if (!check) return () => {};
  const started = Date.now();
  const state: HealthState = { Status: 'starting', FailingStreak: 0, Log: [] };
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;
  let running: ChildProcess | null = null;
  let saving = Promise.resolve();
  const save = (): void => {
    const copy = JSON.parse(JSON.stringify(state)) as HealthState;
    saving = saving.then(() => withStore(store, async (s) => {
      if (await s.findContainer(rec.id)) await s.updateContainer(rec.id, { health: copy });
    })).catch(() => {});
  };
  const schedule = (): void => {
    if (stopped) return;
    const inStart = state.Status === 'starting' && Date.now() - started < check.StartPeriod / 1e6;
    timer = setTimeout(() => void probe(), (inStart ? check.StartInterval : check.Interval) / 1e6);
  };
  const probe = async (): Promise<void> => {
    const start = new Date();
    const result = await runProbe(config, rec, check, (c) => (running = c));
    running = null;
    if (stopped) return;
    const end = new Date();
    state.Log = [...state.Log, { Start: start.toISOString(), End: end.toISOString(), ExitCode: result.code, Output: result.output }].slice(-KEEP_RESULTS);
    if (result.code === 0) {
      state.Status = 'healthy';
      state.FailingStreak = 0;
    } else if (!(state.Status === 'starting' && start.getTime() - started < check.StartPeriod / 1e6)) {
      state.FailingStreak++;
      if (state.FailingStreak >= check.Retries) state.Status = 'unhealthy';
    }
    save();
    schedule();
  };
  save();
  schedule();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    killGroup(running);
  };
}

function killGroup(child: ChildProcess | null): void {
  if (!child?.pid) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // gone
  }
}

/** One run of the test: its exit status (-1: it did not end in time) and output. */
function runProbe(config: ImageConfig, rec: ContainerRecord, check: Check, started: (c: ChildProcess) => void): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      // (a process group of its own: a test that does not end in time goes with everything it started)
      child = spawnInContainer(config, rec, check.argv, {}, ['ignore', 'pipe', 'pipe'], true);
    } catch (e) {
      resolve({ code: -1, output: (e as Error).message });
      return;
    }
    started(child);
    const chunks: Buffer[] = [];
    let size = 0;
    const take = (b: Buffer): void => {
      if (size < MAX_OUTPUT) chunks.push(b.subarray(0, MAX_OUTPUT - size));
      size += b.length;
    };
    child.stdout!.on('data', take);
    child.stderr!.on('data', take);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, check.Timeout / 1e6);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, output: e.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) resolve({ code: -1, output: `Health check exceeded timeout (${check.Timeout / 1e9}s)` });
      else resolve({ code: code ?? (signal ? -1 : 0), output: Buffer.concat(chunks).toString('utf8') });
    });
  });
}
