// A container's control group, with its resource limits (docker run's --memory, --memory-swap,
// --cpus, --cpu-shares, --pids-limit) and what `strata stats` reads: a group of its own, `strata/<id>` at the root of the hierarchy (as
// docker's and podman's cgroupfs drivers place theirs: /docker/<id>, /libpod_parent/libpod-<id>).
// Both kinds of hierarchy: cgroup v2 (one unified tree: memory.max, memory.swap.max, cpu.max,
// cpu.weight, pids.max) and v1 (a tree per controller: memory.limit_in_bytes,
// memory.memsw.limit_in_bytes, cpu.cfs_quota_us, cpu.shares, pids.max). strata-run-ns joins the
// group before it makes the container's namespaces (so pid 1 and everything it starts are in it),
// strata-run-exec before an exec's command runs; the monitor removes it when the command has ended,
// after reading whether the kernel killed something there for want of memory (docker's OOMKilled).

import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError } from './types.js';

/** The limits (docker's HostConfig fields; absent: none). */
export interface Resources {
  /** --memory: bytes. */
  memory?: number;
  /** --memory-swap: memory and swap together, bytes; -1 unlimited swap. Docker's default with --memory: twice the memory. */
  memorySwap?: number;
  /** --cpus, in billionths of a CPU (docker's NanoCpus). */
  nanoCpus?: number;
  /** --cpu-shares: a relative weight (1024 by default). */
  cpuShares?: number;
  /** --pids-limit: processes and threads at most. */
  pidsLimit?: number;
}

const ROOT = '/sys/fs/cgroup';
const GROUP = 'strata';
/** cpu.cfs_period_us / cpu.max's period: docker's 100 ms. */
const CPU_PERIOD_US = 100_000;

/** The CFS quota per period of --cpus (NanoCpus). */
function cpuQuotaUs(nanoCpus: number): number {
  return Math.round((nanoCpus / 1e9) * CPU_PERIOD_US);
}

type Hierarchy = { v2: string } | { v1: Map<string, string> };

/**
 * Where the controllers are: the unified tree (v2), or each v1 controller's mount point. (`root`:
 * where the host mounts its cgroup filesystem; another only in tests.)
 */
function hierarchy(root: string): Hierarchy {
  if (existsSync(join(root, 'cgroup.controllers'))) return { v2: root };
  const v1 = new Map<string, string>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const [fstype, , superOpts] = post.split(' ');
    if (fstype !== 'cgroup') continue;
    const mountPoint = pre.split(' ')[4]!;
    for (const opt of (superOpts ?? '').split(',')) if (STATS_CONTROLLERS.includes(opt) && !v1.has(opt)) v1.set(opt, mountPoint);
  }
  return { v1 };
}

/**
 * What `strata stats` reads, in every container's group: memory, CPU time, processes, block I/O
 * (cpuacct: v1's CPU time; io is v2's block I/O controller, blkio v1's).
 */
const STATS_CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids', 'io', 'blkio'];

/** The controllers the limits need. */
function controllers(r: Resources): string[] {
  return [
    ...(r.memory !== undefined || r.memorySwap !== undefined ? ['memory'] : []),
    ...(r.nanoCpus !== undefined || r.cpuShares !== undefined ? ['cpu'] : []),
    ...(r.pidsLimit !== undefined ? ['pids'] : []),
  ];
}

function hasLimits(r: Resources | undefined): r is Resources {
  return r !== undefined && controllers(r).length > 0;
}

function write(dir: string, file: string, value: string): void {
  try {
    writeFileSync(join(dir, file), value);
  } catch (e) {
    throw new ImageError(`cannot set ${file} of the container's control group to ${value}: ${(e as Error).message}`, 125);
  }
}

/** The container's control group directories that exist (one, or one per v1 controller). */
export function cgroupDirs(id: string, root = ROOT): string[] {
  let h: Hierarchy;
  try {
    h = hierarchy(root);
  } catch {
    return [];
  }
  const dirs = 'v2' in h ? [join(h.v2, GROUP, id)] : [...new Set(h.v1.values())].map((m) => join(m, GROUP, id));
  return dirs.filter((d) => existsSync(d));
}

/**
 * Makes the container's control group with its limits (a group is made for every container, as
 * docker does, for `strata stats`); returns the directories to join (their cgroup.procs). A group left
 * by a monitor that was killed is used again. Without limits, a host where groups cannot be made
 * (no controllers, a read-only hierarchy) gives none: the container runs in strata's own.
 */
export function createCgroup(id: string, r: Resources | undefined, root = ROOT): string[] {
  if (!hasLimits(r)) {
    try {
      return makeCgroup(id, {}, root);
    } catch {
      return [];
    }
  }
  return makeCgroup(id, r, root);
}

function makeCgroup(id: string, r: Resources, root: string): string[] {
  const need = controllers(r);
  const h = hierarchy(root);
  if ('v2' in h) {
    const available = readFileSync(join(h.v2, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
    const missing = need.filter((c) => !available.includes(c));
    if (missing.length > 0) throw new ImageError(`this host's control groups have no ${missing.join(', ')} controller: the container's limits cannot be set`, 125);
    // (each level hands the controllers down to the next: those the limits need, and those stats
    // reads where the host lets them be enabled)
    const parent = join(h.v2, GROUP);
    mkdirSync(parent, { recursive: true });
    for (const c of new Set([...need, ...STATS_CONTROLLERS.filter((x) => available.includes(x))])) {
      try {
        for (const level of [h.v2, parent]) write(level, 'cgroup.subtree_control', `+${c}`);
      } catch (e) {
        if (need.includes(c)) throw e;
      }
    }
    const dir = join(parent, id);
    mkdirSync(dir, { recursive: true });
    if (r.memory !== undefined) write(dir, 'memory.max', String(r.memory));
    if (r.memorySwap !== undefined && existsSync(join(dir, 'memory.swap.max'))) {
      write(dir, 'memory.swap.max', r.memorySwap < 0 ? 'max' : String(r.memorySwap - (r.memory ?? 0)));
    }
    if (r.nanoCpus !== undefined) write(dir, 'cpu.max', `${cpuQuotaUs(r.nanoCpus)} ${CPU_PERIOD_US}`);
    // (runc's conversion of shares, 2..262144, to a weight, 1..10000)
    if (r.cpuShares !== undefined) write(dir, 'cpu.weight', String(1 + Math.floor(((r.cpuShares - 2) * 9999) / 262142)));
    if (r.pidsLimit !== undefined) write(dir, 'pids.max', String(r.pidsLimit));
    return [dir];
  }
  for (const c of need) {
    if (!h.v1.has(c)) throw new ImageError(`this host's control groups have no ${c} controller: the container's limits cannot be set`, 125);
  }
  const dirs = new Map<string, string>();
  for (const [c, mount] of h.v1) {
    const dir = join(mount, GROUP, id);
    mkdirSync(dir, { recursive: true });
    dirs.set(c, dir);
  }
  const mem = dirs.get('memory');
  if (mem) {
    if (r.memory !== undefined) write(mem, 'memory.limit_in_bytes', String(r.memory));
    // (memsw exists where the kernel accounts swap; it must not be below the memory limit)
    if (r.memorySwap !== undefined && existsSync(join(mem, 'memory.memsw.limit_in_bytes'))) write(mem, 'memory.memsw.limit_in_bytes', String(r.memorySwap));
  }
  const cpu = dirs.get('cpu');
  if (cpu) {
    if (r.nanoCpus !== undefined) {
      write(cpu, 'cpu.cfs_period_us', String(CPU_PERIOD_US));
      write(cpu, 'cpu.cfs_quota_us', String(cpuQuotaUs(r.nanoCpus)));
    }
    if (r.cpuShares !== undefined) write(cpu, 'cpu.shares', String(r.cpuShares));
  }
  const pids = dirs.get('pids');
  if (pids && r.pidsLimit !== undefined) write(pids, 'pids.max', String(r.pidsLimit));
  return [...new Set(dirs.values())];
}

/**
 * A sample of a container's group: CPU time used (ns), memory in use and its limit (bytes),
 * processes, bytes read from and written to block devices.
 */
export interface CgroupSample {
  cpuNs: number;
  memory: number;
  memoryLimit: number;
  pids: number;
  blockRead: number;
  blockWrite: number;
}

/** A number from a file of the group (undefined: no such file, or "max"). */
function readNumber(dir: string, file: string): number | undefined {
  try {
    const v = readFileSync(join(dir, file), 'utf8').trim();
    return /^\d+$/.test(v) ? Number(v) : undefined;
  } catch {
    return undefined;
  }
}

/** A KEY VALUE line of a stat file of the group. */
function readStat(dir: string, file: string, key: string): number | undefined {
  try {
    const m = new RegExp(`^${key} (\\d+)$`, 'm').exec(readFileSync(join(dir, file), 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Bytes read and written, summed over the devices: v2's io.stat ("MAJ:MIN rbytes=N wbytes=N ..."), or
 * v1's blkio.throttle.io_service_bytes_recursive ("MAJ:MIN Read N", "MAJ:MIN Write N", ...), as docker
 * sums them. Zero where the file is missing (no such controller). (Recent kernels count in v1's file
 * only the I/O that a throttling rule applied to, so without rules it stays at 0, under docker too.)
 */
function blockIo(dir: string, v2: boolean): { blockRead: number; blockWrite: number } {
  try {
    return parseBlockIo(readFileSync(join(dir, v2 ? 'io.stat' : 'blkio.throttle.io_service_bytes_recursive'), 'utf8'), v2);
  } catch {
    return { blockRead: 0, blockWrite: 0 };
  }
}

/** The sums of blockIo, from the text of io.stat (v2) or of blkio.throttle.io_service_bytes_recursive (v1). */
export function parseBlockIo(text: string, v2: boolean): { blockRead: number; blockWrite: number } {
  let blockRead = 0;
  let blockWrite = 0;
  for (const line of text.split('\n')) {
    if (v2) {
      blockRead += Number(/\brbytes=(\d+)/.exec(line)?.[1] ?? 0);
      blockWrite += Number(/\bwbytes=(\d+)/.exec(line)?.[1] ?? 0);
    } else {
      const [, op, bytes] = /^\d+:\d+ (\w+) (\d+)$/.exec(line.trim()) ?? [];
      if (op?.toLowerCase() === 'read') blockRead += Number(bytes);
      else if (op?.toLowerCase() === 'write') blockWrite += Number(bytes);
    }
  }
  return { blockRead, blockWrite };
}

/**
 * What the container's group uses now, or null when it has none. Memory as docker counts it: what
 * the group is charged for, less its inactive file pages (page cache the kernel takes back first).
 */
export function sampleCgroup(id: string, hostMemory: number, root = ROOT): CgroupSample | null {
  let h: Hierarchy;
  try {
    h = hierarchy(root);
  } catch {
    return null;
  }
  const at = (c: string): string => ('v2' in h ? join(h.v2, GROUP, id) : join(h.v1.get(c) ?? '/nonexistent', GROUP, id));
  if (!STATS_CONTROLLERS.some((c) => existsSync(at(c)))) return null;
  const limitOf = (limit: number | undefined): number => (limit !== undefined && limit < hostMemory ? limit : hostMemory);
  if ('v2' in h) {
    const dir = at('');
    return {
      cpuNs: (readStat(dir, 'cpu.stat', 'usage_usec') ?? 0) * 1000,
      memory: Math.max(0, (readNumber(dir, 'memory.current') ?? 0) - (readStat(dir, 'memory.stat', 'inactive_file') ?? 0)),
      memoryLimit: limitOf(readNumber(dir, 'memory.max')),
      pids: readNumber(dir, 'pids.current') ?? 0,
      ...blockIo(dir, true),
    };
  }
  const mem = at('memory');
  return {
    cpuNs: readNumber(at('cpuacct'), 'cpuacct.usage') ?? 0,
    memory: Math.max(0, (readNumber(mem, 'memory.usage_in_bytes') ?? 0) - (readStat(mem, 'memory.stat', 'total_inactive_file') ?? 0)),
    memoryLimit: limitOf(readNumber(mem, 'memory.limit_in_bytes')),
    pids: readNumber(at('pids'), 'pids.current') ?? 0,
    ...blockIo(at('blkio'), false),
  };
}

/** Did the kernel kill a process of the group for want of memory (memory.events or memory.oom_control's oom_kill)? */
export function oomKilled(dirs: readonly string[]): boolean {
  for (const dir of dirs) {
    for (const file of ['memory.events', 'memory.oom_control']) {
      try {
        const m = /^oom_kill (\d+)$/m.exec(readFileSync(join(dir, file), 'utf8'));
        if (m && Number(m[1]) > 0) return true;
      } catch {
        // not this kind of hierarchy, or not this controller
      }
    }
  }
  return false;
}

/** Removes the group once its processes are gone (`tries` 20 ms apart while the last ones exit). */
export async function removeCgroup(dirs: readonly string[], tries = 50): Promise<void> {
  for (const dir of dirs) {
    for (let i = 0; i < tries && existsSync(dir); i++) {
      try {
        rmdirSync(dir);
      } catch {
        if (i + 1 < tries) await new Promise((r) => setTimeout(r, 20));
      }
    }
  }
}
