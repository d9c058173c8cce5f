// Finding the daemon that serves a mountpoint, without relying on any status command: a live
// (non-zombie) process whose command line mentions the mountpoint.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupDirs, removeCgroup } from '../../src/image/cgroups.js';

export interface ProcessInfo {
  pid: number;
  cmdline: string[];
  state: string;
}

export function processInfo(pid: number): ProcessInfo | undefined {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
    return { pid, cmdline, state };
  } catch {
    return undefined;
  }
}

/** A process is gone once /proc no longer has it or it is a zombie waiting to be reaped. */
export function isAlive(pid: number): boolean {
  const p = processInfo(pid);
  return p !== undefined && p.state !== 'Z' && p.state !== 'X';
}

/** Live processes (other than this one) with an argument equal to the mountpoint. */
export function processesServing(mountpoint: string): ProcessInfo[] {
  const target = path.resolve(mountpoint);
  const out: ProcessInfo[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    const p = processInfo(Number(d));
    if (!p || p.state === 'Z' || p.state === 'X') continue;
    if (p.cmdline.some((a) => a === target || a === mountpoint)) out.push(p);
  }
  return out;
}

/** Environment variable the tests put on commands they start, to find the processes later. */
export const TAG_VARIABLE = 'STRATA_TEST_TAG';

/** A fresh tag and an environment carrying it (children inherit it unless they scrub their environment). */
export function taggedEnv(extra: NodeJS.ProcessEnv = {}): { tag: string; env: NodeJS.ProcessEnv } {
  const tag = `t${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
  return { tag, env: { ...process.env, ...extra, [TAG_VARIABLE]: tag } };
}

/**
 * taggedEnv, with every process that carries the tag killed (SIGKILL) when the test ends: what a
 * test started in the background cannot outlive it, even when it fails half way. With a store
 * (STRATA_STORE), the control groups of its containers go too: a container's monitor removes its
 * group when the container ends, but not when it is killed here, before `strata rm` ran.
 */
export function taggedEnvKilledAtEnd(t: ExecutionContext, extra: NodeJS.ProcessEnv = {}): { tag: string; env: NodeJS.ProcessEnv } {
  const tagged = taggedEnv(extra);
  t.teardown(async () => {
    for (const p of processesTagged(tagged.tag)) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    const store = extra.STRATA_STORE;
    if (!store) return;
    let ids: string[] = [];
    try {
      ids = fs.readdirSync(path.join(store, 'containers')).filter((d) => /^[0-9a-f]{64}$/.test(d));
    } catch {
      return; // no container was made
    }
    // (the killed processes leave their groups as they exit: removeCgroup waits for that)
    for (const id of ids) await removeCgroup(cgroupDirs(id));
  });
  return tagged;
}

/** Live processes whose initial environment carries `tag` (see taggedEnv). */
export function processesTagged(tag: string): ProcessInfo[] {
  const needle = Buffer.from(`${TAG_VARIABLE}=${tag}\0`);
  const out: ProcessInfo[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    let environ: Buffer;
    try {
      environ = fs.readFileSync(`/proc/${d}/environ`);
    } catch {
      continue;
    }
    if (!environ.includes(needle)) continue;
    const p = processInfo(Number(d));
    if (p && p.state !== 'Z' && p.state !== 'X') out.push(p);
  }
  return out;
}

/** Does the process hold /dev/fuse open (a FUSE daemon)? */
export function holdsDevFuse(pid: number): boolean {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/fuse';
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}
