// The union filesystems a benchmark compares: strata (through its own command line, as a user runs
// it), the kernel's overlayfs (what Docker's overlay2 uses) and fuse-overlayfs when installed.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { strataCommand } from '../daemon/command.js';
import { readRecord } from '../daemon/registry.js';
import { mountedPaths } from '../daemon/validate.js';

export type SystemName = 'strata' | 'kernel' | 'fuse-overlayfs';
export const SYSTEM_NAMES: readonly SystemName[] = ['strata', 'kernel', 'fuse-overlayfs'];

export interface Layout {
  /** Lower layers, top first. */
  lowers: string[];
  upper: string;
  work: string;
  mnt: string;
}

export interface System {
  name: SystemName;
  /** null when it can run here, else why not. */
  unavailable(): string | null;
  version(): string;
  mount(l: Layout): void;
  unmount(mnt: string): void;
  /** The process serving the mount (null for the kernel). */
  daemonPid(mnt: string): number | null;
}

/** CPU time (user + system, seconds) a process has used so far, from /proc/PID/stat; NaN when gone. */
export function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** A process's CPU time so far: /proc/PID/stat's (in 10 ms ticks, with threads that ended) and each live thread's in ns. */
export interface CpuSample {
  seconds: number;
  threads: Map<string, number>;
}

export function cpuSample(pid: number): CpuSample {
  const threads = new Map<string, number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        threads.set(tid, Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'latin1').split(' ')[0]));
      } catch {
        // (ended meanwhile: the tick count below has it)
      }
    }
  } catch {
    // gone
  }
  return { seconds: cpuSeconds(pid), threads };
}

/**
 * The CPU time between two samples, in seconds: from the threads' own nanosecond counts
 * (schedstat) when every thread of the first sample is still there, else (a thread ended between
 * them, its time lost to a per-thread count) from /proc/PID/stat's 10 ms ticks. NaN when gone.
 */
export function cpuBetween(a: CpuSample, b: CpuSample): number {
  if (!Number.isFinite(a.seconds) || !Number.isFinite(b.seconds)) return NaN;
  let ns = 0;
  for (const [tid, t0] of a.threads) {
    const t1 = b.threads.get(tid);
    if (t1 === undefined || !Number.isFinite(t0) || !Number.isFinite(t1)) return b.seconds - a.seconds;
    ns += t1 - t0;
  }
  for (const [tid, t1] of b.threads) if (!a.threads.has(tid) && Number.isFinite(t1)) ns += t1;
  return ns / 1e9;
}
/** USER_HZ: 100 on every Linux architecture that strata runs on. */
const CLOCK_TICKS = 100;

/** The live process whose command line starts with `program` and names `mnt`. */
function processServing(program: string, mnt: string): number | null {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, 'latin1').split('\0');
      if (args[0]!.endsWith(program) && args.includes(mnt)) return Number(d);
    } catch {
      // gone
    }
  }
  return null;
}

function sh(cmd: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error.message) : '') };
}

function must(cmd: string, args: string[]): string {
  const r = sh(cmd, args);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.status}`}`);
  return r.stdout;
}

export function isMounted(mnt: string): boolean {
  return mountedPaths().has(mnt);
}

/** umount, else a lazy one; never throws. */
export function forceUnmount(mnt: string): void {
  if (!isMounted(mnt)) return;
  if (sh('umount', [mnt]).status !== 0) sh('umount', ['-l', mnt]);
}

function options(l: Layout): string {
  return `lowerdir=${l.lowers.join(':')},upperdir=${l.upper},workdir=${l.work}`;
}

const strata: System = {
  name: 'strata',
  unavailable: () => null,
  version: () => sh(...strataCommand(['--version'])).stdout.trim(),
  mount: (l) => void must(...strataCommand(['mount', '-o', options(l), l.mnt])),
  unmount: (mnt) => {
    if (isMounted(mnt)) sh(...strataCommand(['umount', mnt]));
    forceUnmount(mnt);
  },
  daemonPid: (mnt) => readRecord(mnt)?.pid ?? null,
};

const kernel: System = {
  name: 'kernel',
  unavailable: () => {
    if (process.getuid?.() !== 0) return 'the kernel overlay needs root';
    const known = (): boolean => /\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'));
    if (!known()) sh('modprobe', ['overlay']);
    return known() ? null : 'the kernel has no overlay filesystem';
  },
  version: () => `overlayfs, Linux ${must('uname', ['-r']).trim()}`,
  mount: (l) => void must('mount', ['-t', 'overlay', 'overlay', '-o', options(l), l.mnt]),
  unmount: forceUnmount,
  daemonPid: () => null,
};

const fuseOverlayfs: System = {
  name: 'fuse-overlayfs',
  unavailable: () => (sh('sh', ['-c', 'command -v fuse-overlayfs']).status === 0 ? null : 'fuse-overlayfs is not installed'),
  version: () => {
    const r = sh('fuse-overlayfs', ['--version']);
    return (r.stdout + r.stderr).split('\n').find((l) => l.startsWith('fuse-overlayfs'))?.trim() ?? 'fuse-overlayfs';
  },
  mount: (l) => void must('fuse-overlayfs', ['-o', options(l), l.mnt]),
  unmount: forceUnmount,
  daemonPid: (mnt) => processServing('fuse-overlayfs', mnt),
};

export const SYSTEMS: Record<SystemName, System> = { strata, kernel, 'fuse-overlayfs': fuseOverlayfs };
