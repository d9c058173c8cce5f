// The container life cycle around `strata run`'s engine (run.ts): stop, exec, diff, logs.
//
// A started container has a monitor: the process that mounted it and waits for its command (a
// `strata start -a` or `strata run` in the foreground, or the detached `start -a` that `strata start`
// leaves behind, writing the command's output to the container's log). The record names the monitor
// and the bin/strata-run-ns whose child is pid 1 of the container's namespaces (`unsharePid`):
//   stop  sends the stop signal (the image's StopSignal, else SIGTERM) to that pid 1, and SIGKILL to
//         strata-run-ns after the grace period (its death ends the whole PID namespace); the
//         monitor records the exit status and unmounts;
//   exec  enters pid 1's PID, UTS and network namespaces (nsenter) and runs bin/strata-run-exec
//         there: its mount namespace (whose root is the merged view), working directory, groups,
//         gid, uid, then the command;
//   diff  walks the upper against the image's layers, as podman diff reports a container's changes.

import { type ChildProcess, spawn, type StdioOptions } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { constants } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { processAlive } from '../daemon/registry.js';
import * as N from '../native/index.js';
import { isKernelWhiteout, isOpaqueDir, OCI_OPAQUE, OCI_WHITEOUT_PREFIX } from '../union/whiteout.js';
import { childPids, containerEnv } from './run.js';
import { cgroupDirs } from './cgroups.js';
import type { ContainerRecord } from './store.js';
import { type ImageConfig, ImageError } from './types.js';
import { capabilityMask, rlimitArgs, settingsOf } from './settings.js';
import { containerUser, parseUserSpec } from './user.js';

const { C, ST } = N;
const RUN_EXEC = fileURLToPath(new URL('../../../bin/strata-run-exec', import.meta.url));
const osSignals = constants.signals as Record<string, number>;

export { logPath, monitorLogPath, readLog } from './logs.js';

/** Pid 1 of a container's namespaces (the child of its strata-run-ns), once there is one. */
function initOf(rec: ContainerRecord): number | null {
  return typeof rec.unsharePid === 'number' ? childPids(rec.unsharePid)[0] ?? null : null;
}

/** Pid 1 of a running container's namespaces, or null if it is not running. */
export function containerInit(rec: ContainerRecord): number | null {
  return rec.state === 'running' && isActive(rec) ? initOf(rec) : null;
}

/** Whether the container has a live monitor (starting or running). */
export function isActive(rec: ContainerRecord): boolean {
  return (rec.state === 'running' || rec.state === 'starting') && typeof rec.monitorPid === 'number' && processAlive(rec.monitorPid);
}

/**
 * Stops a running container: its stop signal to pid 1, SIGKILL after `graceSeconds`; waits until
 * the monitor has recorded the end. A container that is not running is left as it is.
 */
export async function stopContainer(rec: ContainerRecord, stopSignal: string | undefined, graceSeconds: number): Promise<void> {
  if (!isActive(rec)) return;
  const monitor = rec.monitorPid as number;
  // A container still starting gets its pid 1 soon; a stop before it exists goes to the monitor, which ends the start.
  let init = initOf(rec);
  for (let i = 0; init === null && rec.state === 'starting' && i < 100 && processAlive(monitor); i++) {
    await sleep(20);
    init = initOf(rec);
  }
  const sig = normalizeSignal(stopSignal);
  // (a paused container goes on, to get its stop signal)
  if (rec.paused === true && init !== null) signalAll(rec, 'SIGCONT');
  try {
    process.kill(init ?? monitor, sig);
  } catch {
    // gone already
  }
  const deadline = Date.now() + graceSeconds * 1000;
  while (processAlive(monitor) && Date.now() < deadline) await sleep(20);
  if (processAlive(monitor)) {
    try {
      if (typeof rec.unsharePid === 'number') process.kill(rec.unsharePid, 'SIGKILL');
      else process.kill(monitor, 'SIGKILL');
    } catch {
      // gone
    }
    const hard = Date.now() + 30_000;
    while (processAlive(monitor) && Date.now() < hard) await sleep(20);
  }
}

/** kill's signal: SIGKILL unless one is given. */
export function killSignal(signal: string | undefined): NodeJS.Signals {
  return signal === undefined || signal === '' ? 'SIGKILL' : normalizeSignal(signal);
}

/** `strata kill`: a signal (SIGKILL by default, as docker kill) to a running container's pid 1. */
export function killContainer(rec: ContainerRecord, signal: string | undefined): void {
  const sig = killSignal(signal);
  const init = containerInit(rec);
  if (init === null) throw new ImageError(`container ${rec.name} is not running`);
  // (a paused one gets its signal when it goes on)
  if (rec.paused === true && sig !== 'SIGKILL') signalAll(rec, 'SIGCONT');
  try {
    // SIGKILL to the namespaces' strata-run-ns, whose death takes the whole PID namespace (137)
    if (sig === 'SIGKILL' && typeof rec.unsharePid === 'number') process.kill(rec.unsharePid, sig);
    else process.kill(init, sig);
  } catch {
    // it ended meanwhile
  }
}

/**
 * `strata wait`: until the container's command has ended (a created one: until it has run); its
 * exit status. `load` reads the record again (null once the container is gone: a --rm one).
 */
export async function waitForExit(load: () => Promise<{ rec: ContainerRecord | null; removedExit?: number }>, name: string): Promise<number> {
  let last: ContainerRecord | null = null;
  for (;;) {
    const { rec, removedExit } = await load();
    if (rec === null) {
      // removed as it ended (--rm): the status it left; else removed running (rm -f): killed
      if (last !== null) return removedExit ?? 137;
      throw new ImageError(`no such container: ${name}`);
    }
    last = rec;
    if (rec.state === 'exited') return (rec.exitCode as number | null) ?? 0;
    if ((rec.state === 'running' || rec.state === 'starting') && !isActive(rec)) return 137;
    await sleep(100);
  }
}

/** The processes of a running container's PID namespace (pid 1's and its descendants'). */
export function namespacePids(init: number): number[] {
  const ns = (pid: number): string | null => {
    try {
      return N.readlinkat(C.AT_FDCWD, `/proc/${pid}/ns/pid`);
    } catch {
      return null;
    }
  };
  const mine = ns(init);
  return readdirSync('/proc').filter((d) => /^[0-9]+$/.test(d)).map(Number).filter((p) => ns(p) === mine);
}

/** `strata pause` and `unpause`: SIGSTOP or SIGCONT to every process of a running container. */
export function signalAll(rec: ContainerRecord, sig: 'SIGSTOP' | 'SIGCONT'): void {
  const init = containerInit(rec);
  if (init === null) throw new ImageError(`container ${rec.name} is not running`);
  for (const p of namespacePids(init)) {
    try {
      process.kill(p, sig);
    } catch {
      // gone
    }
  }
}

/**
 * Stops every process of a running container (SIGSTOP to each process of its PID namespace, until
 * each is stopped) while `fn` runs, then continues them: what `strata cp` reads and writes in its
 * root cannot be swapped for a symlink meanwhile (docker pauses a container for its cp too).
 */
export async function whilePaused<T>(rec: ContainerRecord, fn: () => Promise<T> | T): Promise<T> {
  const init = containerInit(rec);
  // (a paused container stays as it is)
  if (init === null || rec.paused === true) return fn();
  const members = (): number[] => namespacePids(init);
  const state = (pid: number): string => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
      return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    } catch {
      return 'X';
    }
  };
  const stopped = new Set<number>();
  try {
    // (again until no process is left running: a fork may have come meanwhile)
    for (let round = 0; round < 50; round++) {
      const running = members().filter((p) => !'TtXZ'.includes(state(p)));
      if (running.length === 0) break;
      for (const p of running) {
        try {
          process.kill(p, 'SIGSTOP');
          stopped.add(p);
        } catch {
          // gone
        }
      }
      await sleep(5);
    }
    return await fn();
  } finally {
    for (const p of stopped) {
      try {
        process.kill(p, 'SIGCONT');
      } catch {
        // gone
      }
    }
  }
}

/** "SIGTERM", "TERM", "15" → a signal name Node knows; SIGTERM by default. */
export function normalizeSignal(s: string | undefined): NodeJS.Signals {
  if (s === undefined || s === '') return 'SIGTERM';
  if (/^[0-9]+$/.test(s)) {
    const name = Object.entries(osSignals).find(([, n]) => n === Number(s))?.[0];
    if (name) return name as NodeJS.Signals;
  } else {
    const name = s.toUpperCase().startsWith('SIG') ? s.toUpperCase() : `SIG${s.toUpperCase()}`;
    if (name in osSignals) return name as NodeJS.Signals;
  }
  throw new ImageError(`unknown signal "${s}"`, 125);
}

export interface ExecOptions {
  user?: string;
  workdir?: string;
  env?: string[];
  /** --privileged: every capability (else the container's set). */
  privileged?: boolean;
  /** -d: in the background, its output dropped; returns 0 once it is started. */
  detach?: boolean;
}

/** Runs argv inside a running container (its image's config: `config`); resolves with its exit status. */
export async function execInContainer(config: ImageConfig, rec: ContainerRecord, argv: readonly string[], opts: ExecOptions = {}): Promise<number> {
  const child = spawnInContainer(config, rec, argv, opts, opts.detach ? 'ignore' : 'inherit', opts.detach === true);
  if (opts.detach) child.unref();
  return new Promise((resolve) => {
    if (opts.detach) child.once('spawn', () => resolve(0));
    child.on('error', (e) => {
      process.stderr.write(`strata: cannot start nsenter: ${e.message}\n`);
      resolve(125);
    });
    child.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? (osSignals[signal] ?? 0) : 0)));
  });
}

/**
 * argv started in a running container's namespaces and root, as its user (or exec's -u), in its
 * environment and working directory, with its capabilities: what exec and health checks run.
 */
export function spawnInContainer(config: ImageConfig, rec: ContainerRecord, argv: readonly string[], opts: ExecOptions,
  stdio: StdioOptions, detached: boolean): ChildProcess {
  if (argv.length === 0) throw new ImageError('give the command to run in the container', 125);
  const init = containerInit(rec);
  if (init === null) throw new ImageError(`container ${rec.name} is not running`, 125);
  const userSpec = opts.user ?? (rec.user as string | undefined) ?? config.config?.User ?? '';
  parseUserSpec(userSpec);
  const user = containerUser(rec.merged, userSpec, settingsOf(rec).groupAdd);
  const settings = settingsOf(rec);
  // (the container's environment, -e of run or create included, then exec's own -e)
  const env = containerEnv(config, (settings.hostname ?? rec.name).slice(0, 63), user.home, settings.env);
  for (const kv of opts.env ?? []) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
    else if (process.env[kv] !== undefined) env[kv] = process.env[kv]!;
  }
  const wd = opts.workdir ?? settings.workdir ?? (config.config?.WorkingDir || '/');
  if (!existsSync(RUN_EXEC)) throw new ImageError(`${RUN_EXEC} is missing: run make build`, 125);
  // The host's nsenter runs with the host's PATH; strata-run-exec looks the command up on the container's.
  // (--net: the container's network namespace, its own or the host's)
  // strata-run-exec joins the mount namespace itself (--enter): once nsenter is in it, the host's
  // programs are out of reach (the container's root is that namespace's root).
  return spawn('nsenter', ['--target', String(init), '--pid', '--uts', '--net', '--',
    RUN_EXEC, '--enter', String(init), ...cgroupDirs(rec.id).flatMap((d) => ['--cgroup', d]), '--caps', opts.privileged ? capabilityMask({ privileged: true }) : capabilityMask(settings), ...rlimitArgs(settings), rec.merged, wd,
    String(user.uid), String(user.gid), user.groups.join(','), ...argv], { stdio, env, detached });
}

export interface Change {
  kind: 'A' | 'C' | 'D';
  path: string;
}

const st = new Float64Array(16);

/** Whether `rel` (no leading slash) exists in the merged view of `layers` (top first; the kernel's format). */
function inLayers(layers: readonly string[], rel: string): boolean {
  const parts = rel.split('/');
  let active = [...layers];
  let prefix = '';
  for (const [i, part] of parts.entries()) {
    const next: string[] = [];
    for (const layer of active) {
      const dir = join(layer, prefix);
      if (!N.lstatMaybe(C.AT_FDCWD, join(dir, part), st)) {
        if (N.lstatMaybe(C.AT_FDCWD, join(dir, `${OCI_WHITEOUT_PREFIX}${part}`), st)) break;
        continue;
      }
      if (isKernelWhiteout(st)) break;
      if (i === parts.length - 1) return true;
      if ((st[ST.mode]! & C.S_IFMT) !== C.S_IFDIR) break;
      next.push(layer);
      if (isOpaqueDir(C.AT_FDCWD, join(dir, part))) break;
    }
    if (next.length === 0) return false;
    active = next;
    prefix = prefix === '' ? part : `${prefix}/${part}`;
  }
  return true;
}

/**
 * The container's changes against its image, as podman diff reports them: a whiteout is "D"; a
 * directory made opaque (rm -rf d; mkdir d) is "D" and what it now holds "A"; any other object in
 * the upper is "C" when the image has that path, else "A". Sorted by path.
 */
export function containerChanges(upper: string, layerDirs: readonly string[]): Change[] {
  const out: Change[] = [];
  // (an explicit stack: no recursion limit, one directory descriptor at a time)
  const stack: { rel: string; opaque: boolean }[] = [{ rel: '', opaque: false }];
  while (stack.length > 0) {
    const { rel, opaque } = stack.pop()!;
    const fd = N.openat(C.AT_FDCWD, join(upper, rel), C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    let names: string[];
    try {
      names = N.readdir(fd).map(([n]) => n).filter((n) => n !== '.' && n !== '..');
    } finally {
      N.close(fd);
    }
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      if (name === OCI_OPAQUE) continue;
      if (name.startsWith(OCI_WHITEOUT_PREFIX)) {
        out.push({ kind: 'D', path: `/${rel === '' ? '' : `${rel}/`}${name.slice(OCI_WHITEOUT_PREFIX.length)}` });
        continue;
      }
      if (!N.lstatMaybe(C.AT_FDCWD, join(upper, childRel), st)) continue;
      if (isKernelWhiteout(st)) {
        out.push({ kind: 'D', path: `/${childRel}` });
        continue;
      }
      const isDir = (st[ST.mode]! & C.S_IFMT) === C.S_IFDIR;
      if (isDir && !opaque && isOpaqueDir(C.AT_FDCWD, join(upper, childRel))) {
        if (inLayers(layerDirs, childRel)) out.push({ kind: 'D', path: `/${childRel}` });
        else out.push({ kind: 'A', path: `/${childRel}` });
        stack.push({ rel: childRel, opaque: true });
        continue;
      }
      out.push({ kind: !opaque && inLayers(layerDirs, childRel) ? 'C' : 'A', path: `/${childRel}` });
      if (isDir) stack.push({ rel: childRel, opaque });
    }
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
