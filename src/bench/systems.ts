// The union filesystems a benchmark compares: strata (through its own command line, as a user runs
// it), the kernel's overlayfs (what Docker's overlay2 uses) and fuse-overlayfs when installed.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
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
}

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

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
  version: () => sh(process.execPath, [CLI, '--version']).stdout.trim(),
  mount: (l) => void must(process.execPath, [CLI, 'mount', '-o', options(l), l.mnt]),
  unmount: (mnt) => {
    if (isMounted(mnt)) sh(process.execPath, [CLI, 'umount', mnt]);
    forceUnmount(mnt);
  },
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
};

export const SYSTEMS: Record<SystemName, System> = { strata, kernel, 'fuse-overlayfs': fuseOverlayfs };
