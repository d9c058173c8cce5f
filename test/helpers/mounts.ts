// Mount table inspection and the two mounts every comparison needs: the kernel's overlayfs
// (the oracle) and strata. Each mount helper registers its own unmount in t.teardown.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from './exec.js';
import { strataBin } from './paths.js';

export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
  options: string[];
}

/** /proc/self/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function readMounts(): MountEntry[] {
  return fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [source, target, fstype, options] = line.split(' ');
      return {
        source: unescapeMountField(source!),
        target: unescapeMountField(target!),
        fstype: fstype!,
        options: options!.split(','),
      };
    });
}

/** Mount entries whose target is `dir` or lies below it, in mount-table order. */
export function mountsUnder(dir: string): string[] {
  const root = path.resolve(dir);
  return readMounts()
    .map((m) => m.target)
    .filter((target) => target === root || target.startsWith(root + '/'));
}

/** The last (topmost) mount at exactly `target`, if any. */
export function mountAt(target: string): MountEntry | undefined {
  const p = path.resolve(target);
  return readMounts()
    .filter((m) => m.target === p)
    .at(-1);
}

/** umount, then a lazy umount as last resort. Never throws. */
export function unmountQuietly(target: string): void {
  if (!mountAt(target)) return;
  // (busy for a moment, as when another process walks through it: a few tries before a lazy unmount,
  // which would keep the superblock, and with index=on the upper "in use", while anything holds it)
  for (let i = 0; i < 10; i++) {
    if (run('umount', [target], { timeoutMs: 20_000 }).status === 0 && !mountAt(target)) return;
    if (!mountAt(target)) return;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
  }
  run('umount', ['-l', target], { timeoutMs: 20_000 });
}

/** Fresh empty directory next to the layers, used as a mountpoint. */
function newMountpoint(parent: string, name: string): string {
  let p = path.join(parent, name);
  for (let i = 1; fs.existsSync(p); i++) p = path.join(parent, `${name}${i}`);
  fs.mkdirSync(p);
  return p;
}

export interface OverlaySpec {
  /** Lower layers, top first (as in lowerdir=). */
  lowers: readonly string[];
  upper?: string;
  work?: string;
  /** Where to mount; default: a new directory next to the first lower. */
  mountpoint?: string;
  /** Extra -o options, e.g. 'userxattr'. */
  options?: readonly string[];
}

/** Options must not contain separators that would need escaping. */
function checkLayerPath(p: string): void {
  if (/[,:\\\s]/.test(p)) throw new Error(`layer path needs escaping, use a simpler one: ${p}`);
}

/**
 * Kernel mount options for `upper` over layers on `lower`'s filesystem: where they are two filesystems,
 * xino=on, so that the kernel maps their inode numbers into one space as strata always does.
 */
export function crossFsOptions(upper: string, lower: string): string[] | undefined {
  return fs.statSync(upper).dev !== fs.statSync(lower).dev ? ['xino=on'] : undefined;
}

/** Mounts the kernel's overlayfs over the layers and returns the mountpoint. */
export function kernelOverlay(t: ExecutionContext, spec: OverlaySpec): string {
  const all = [...spec.lowers, ...(spec.upper ? [spec.upper] : []), ...(spec.work ? [spec.work] : [])];
  all.forEach(checkLayerPath);
  const mnt = spec.mountpoint ?? newMountpoint(path.dirname(spec.lowers[0]!), 'k');
  // Mount data is limited to one page: if the paths do not fit, mount through short symlinks
  // (the kernel resolves each layer path once, at mount time).
  let lowers = spec.lowers;
  let opts = mkOptions(lowers, spec);
  if (opts.length > 3500) {
    const short = fs.mkdtempSync(path.join(os.tmpdir(), 'o'));
    t.teardown(() => fs.rmSync(short, { recursive: true, force: true }));
    lowers = spec.lowers.map((l, i) => {
      fs.symlinkSync(path.resolve(l), path.join(short, String(i)));
      return path.join(short, String(i));
    });
    opts = mkOptions(lowers, spec);
  }
  let r = run('mount', ['-t', 'overlay', 'overlay', '-o', opts, mnt]);
  // An upper or work directory "in use" (index=on, nfs_export=on) by an overlay unmounted a moment
  // ago: its superblock goes once whatever briefly held that mount lets go (the full suite's other
  // processes, or a lazy unmount's users). Up to 20 s for that, then the failure. (mount(8) words
  // the EBUSY as "already mounted or mount point busy", or as "overlay already mounted on" whatever
  // overlay it finds in the mount table, another test's.)
  for (let i = 0; i < 80 && r.status !== 0 && /already mounted|mount point busy/.test(r.stderr); i++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 250);
    r = run('mount', ['-t', 'overlay', 'overlay', '-o', opts, mnt]);
  }
  if (r.status !== 0) throw new Error(`kernel overlay mount failed: ${r.command}: ${r.stderr.trim()}`);
  t.teardown(() => unmountQuietly(mnt));
  return mnt;
}

function mkOptions(lowers: readonly string[], spec: OverlaySpec): string {
  const o = [`lowerdir=${lowers.join(':')}`];
  if (spec.upper) o.push(`upperdir=${spec.upper}`);
  if (spec.work) o.push(`workdir=${spec.work}`);
  o.push(...(spec.options ?? []));
  return o.join(',');
}

export interface StrataSpec extends OverlaySpec {
  /** Extra command-line arguments for `strata mount`, e.g. ['--passthrough=off']. */
  extraArgs?: readonly string[];
}

/**
 * The program under test. STRATA_TEST_PEER=fuse-overlayfs runs the same tests against the peer
 * implementation instead (a development aid to check that the tests catch its known bugs);
 * STRATA_TEST_PEER=kernel against a second kernel overlay (to check a test is deterministic).
 */
export function underTest(): { name: string; fstype: string; command(spec: StrataSpec, opts: string, mnt: string): [string, string[]] } {
  if (process.env.STRATA_TEST_PEER === 'kernel') {
    // the oracle against itself: proves a differential test deterministic (no false differences)
    return { name: 'kernel2', fstype: 'overlay', command: (_s, o, m) => ['mount', ['-t', 'overlay', 'overlay', '-o', o, m]] };
  }
  if (process.env.STRATA_TEST_PEER === 'fuse-overlayfs') {
    return { name: 'fuse-overlayfs', fstype: 'fuse.fuse-overlayfs', command: (_s, o, m) => ['fuse-overlayfs', ['-o', o, m]] };
  }
  return {
    name: 'strata',
    fstype: 'fuse.strata',
    command: (s, o, m) => [strataBin, ['mount', ...(s.extraArgs ?? []), '-o', o, m]],
  };
}

/** Mounts strata over the layers with `bin/strata mount` and returns the mountpoint. */
export function strataMount(t: ExecutionContext, spec: StrataSpec): string {
  [...spec.lowers, ...(spec.upper ? [spec.upper] : []), ...(spec.work ? [spec.work] : [])].forEach(checkLayerPath);
  const mnt = spec.mountpoint ?? newMountpoint(path.dirname(spec.lowers[0]!), 'm');
  const prog = underTest();
  // strata logs to a file of its own unless the test gives one: the daemon's logging then runs as in
  // production (with none and no terminal it logs nothing, and an error its logger threw went unseen)
  let logDir: string | undefined;
  if (prog.name === 'strata' && !spec.extraArgs?.includes('--log-file')) {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'slog'));
    spec = { ...spec, extraArgs: [...(spec.extraArgs ?? []), '--log-file', path.join(logDir, 'daemon.log')] };
  }
  const [cmd, args] = prog.command(spec, mkOptions(spec.lowers, spec), mnt);
  const r = run(cmd, args, { timeoutMs: 30_000 });
  t.teardown(() => {
    strataUnmount(mnt);
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });
  if (r.status !== 0) throw new Error(`${prog.name} mount failed: ${r.command}: status ${r.status}: ${r.stderr.trim()}`);
  const m = mountAt(mnt);
  if (!m || m.fstype !== prog.fstype) {
    throw new Error(`${r.command} exited 0 but ${mnt} is ${m ? `a ${m.fstype} mount` : 'not mounted'}`);
  }
  return mnt;
}

/** A line of strata's JSON log (a line that is not JSON comes back as an error line holding it). */
export interface DaemonLogLine {
  level: number;
  msg?: string;
  err?: { message?: string; stack?: string };
  byOp?: Record<string, number>;
}

/** The lines of strata's log file `file`. */
export function daemonLogLines(file: string): DaemonLogLine[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => {
    try {
      return JSON.parse(l) as DaemonLogLine;
    } catch {
      return { level: 50, msg: l };
    }
  });
}

/** `strata umount`, then plain umount, then a lazy one. Never throws. */
export function strataUnmount(mnt: string): void {
  if (!mountAt(mnt)) return;
  if (underTest().name === 'strata') run(strataBin, ['umount', mnt], { timeoutMs: 20_000 });
  unmountQuietly(mnt);
}

/** A writable strata mount and a kernel overlay of the same content, each over its own copies. */
export interface SideBySide {
  /** Mountpoints. */
  strata: string;
  kernel: string;
  /** Each side's lower, upper and work directories. */
  strataDirs: { lower: string; upper: string; work: string };
  kernelDirs: { lower: string; upper: string; work: string };
}

/**
 * Makes a lower, an upper and a work directory per side under `dir`, fills each lower with
 * `fillLower` (and each upper with `fillUpper`), then mounts strata (with `strataArgs`) on one side
 * and the kernel's overlayfs on the other.
 */
export function sideBySide(t: ExecutionContext, dir: string, fillLower: (lower: string) => void,
  opts: { fillUpper?: (upper: string) => void; strataArgs?: readonly string[] } = {}): SideBySide {
  const side = (s: 's' | 'k'): { lower: string; upper: string; work: string } => {
    const [lower, upper, work] = ['l', 'u', 'w'].map((n) => {
      const p = path.join(dir, n + s);
      fs.mkdirSync(p);
      return p;
    }) as [string, string, string];
    fillLower(lower);
    opts.fillUpper?.(upper);
    return { lower, upper, work };
  };
  const strataDirs = side('s');
  const kernelDirs = side('k');
  const strata = strataMount(t, {
    lowers: [strataDirs.lower], upper: strataDirs.upper, work: strataDirs.work,
    mountpoint: newMountpoint(dir, 'ms'), extraArgs: opts.strataArgs,
  });
  const kernel = kernelOverlay(t, { lowers: [kernelDirs.lower], upper: kernelDirs.upper, work: kernelDirs.work, mountpoint: newMountpoint(dir, 'mk') });
  return { strata, kernel, strataDirs, kernelDirs };
}

/**
 * Mounts `lowers` once on the kernel's overlay and once on strata (each with a fresh upper and work
 * directory under `root`), runs `look` on each mount, and returns both answers; strata is unmounted
 * after its look (its log, with `--log-file` among `strataArgs`, then holds the request counts).
 */
export function onKernelAndStrata(t: ExecutionContext, root: string, lowers: string[], strataArgs: string[],
  look: (mnt: string) => string): { kernel: string; strata: string } {
  const out: Record<string, string> = {};
  for (const name of ['kernel', 'strata'] as const) {
    const mnt = mountSide(t, root, name, lowers, strataArgs);
    out[name] = look(mnt);
    if (name === 'strata') strataUnmount(mnt);
  }
  return { kernel: out.kernel!, strata: out.strata! };
}

/**
 * One side of onKernelAndStrata: the kernel's overlay or strata (with `strataArgs`) over `lowers`, with
 * an upper, a work directory and a mountpoint of its own under `root`. Returns the mountpoint.
 */
export function mountSide(t: ExecutionContext, root: string, name: 'kernel' | 'strata', lowers: string[], strataArgs: readonly string[] = []): string {
  const upper = path.join(root, `${name}-u`);
  const work = path.join(root, `${name}-w`);
  fs.mkdirSync(upper);
  fs.mkdirSync(work);
  const mountpoint = fs.mkdtempSync(path.join(root, `${name}-m`));
  return name === 'kernel'
    ? kernelOverlay(t, { lowers, upper, work, mountpoint })
    : strataMount(t, { lowers, upper, work, mountpoint, extraArgs: strataArgs });
}
