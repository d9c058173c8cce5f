// A differential pair: the same layers built twice, one copy under a kernel overlay (the oracle),
// one under strata, each with a fresh upper and work dir. Steps run on both and their results are
// compared step by step; `finishPair` then compares the merged trees, the two uppers, proves the
// lowers untouched and mounts strata's upper with the kernel's overlayfs (the on-disk format).
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { crossFsOptions, daemonLogLines, kernelOverlay, mountAt, strataMount, strataUnmount, underTest, unmountQuietly } from './mounts.js';
import { tempDir, tmpfsDir } from './tmp.js';
import { run } from './exec.js';
import { strataBin } from './paths.js';
import { PYTHON } from './python.js';
import { idmapMount } from './idmap-mount.js';
import { buildLayer, type LayerSpec } from './ops-layers.js';
import { Runner, showOp, type Op, type Result } from './ops-runner.js';
import { diffSnapshots, snapshot, type Snapshot } from './ops-tree.js';
import { RECENT_NS } from './ops-layers.js';
import { diffSnapshots as compareDiff, dinoDiffers, inodeProblems, sharedInodes } from './compare.js';
import type { Checks } from './ops-checks.js';
import { snapshot as fullSnapshot } from './snapshot.js';

export interface Side {
  name: string;
  base: string;
  /** Top first. */
  lowers: string[];
  upper: string;
  work: string;
  mnt: string;
  runner: Runner;
  lowerBefore: Snapshot[];
  /** Unmounts this side and mounts the same layers, upper and work directory at the same place again. */
  remount(): void;
  /** strata's log file (strata only). */
  log?: string;
}

export interface Pair {
  base: string;
  kernel: Side;
  strata: Side;
  /** The mount options both sides were given (the kernel's remounts of the uppers get them too). */
  options?: string[];
  /** PairOptions.idmapShift, when given. */
  idmapShift?: number;
}

export interface PairOptions {
  /** Pre-populated upper layer (kernel format), built into both uppers before mounting. */
  upper?: LayerSpec;
  /** Fills each side's (empty) upper before mounting, given that side's lowers (e.g. a kernel overlay writes it). */
  upperFrom?: (upper: string, lowers: string[]) => void;
  /** Extra mount options for both (e.g. none by default). */
  options?: string[];
  /** Extra command-line arguments for strata only (e.g. ['--write-format', 'oci']). */
  strataArgs?: string[];
  /**
   * Each side's upper and work directories on a tmpfs of their own, the lowers staying on the temp
   * directory's filesystem (copy-ups then cross filesystems, as under a container's tmpfs upper).
   * Default: the environment's STRATA_UPPER_TMPFS=1.
   */
  upperOnTmpfs?: boolean;
  /**
   * Owner mapping: every id the layers hold is stored shifted up by `shift` (owners and ACL entries,
   * after the layers are built), strata mounts them with uidmapping= and gidmapping= that shift them back
   * down (STORED:SHOWN:COUNT = shift:0:65536), and the kernel's overlay reads them through an idmapped
   * mount of the side's directory with the same mapping (its creator, root, maps to `shift`).
   */
  idmapShift?: number;
}

/** Python: shifts every owner and ACL id below `dir` (the root included) up by `shift`, modes kept. */
const SHIFT_IDS = String.raw`
import os, stat, struct, sys
top, shift = sys.argv[1], int(sys.argv[2])
def acl(v):
    out = bytearray(v)
    for o in range(4, len(v) - 7, 8):
        tag, = struct.unpack_from('<H', v, o)
        if tag in (2, 8): struct.pack_into('<I', out, o + 4, struct.unpack_from('<I', v, o + 4)[0] + shift)
    return bytes(out)
seen = set()
def one(p):
    st = os.lstat(p)
    if (st.st_dev, st.st_ino) in seen: return  # (a hard link's other name)
    seen.add((st.st_dev, st.st_ino))
    os.lchown(p, st.st_uid + shift, st.st_gid + shift)
    if stat.S_ISLNK(st.st_mode): return
    os.chmod(p, stat.S_IMODE(st.st_mode))  # (chown cleared setuid and setgid)
    for n in ('system.posix_acl_access', 'system.posix_acl_default'):
        try: v = os.getxattr(p, n, follow_symlinks=False)
        except OSError: continue
        os.setxattr(p, n, acl(v), follow_symlinks=False)
one(top)
for d, dirs, files in os.walk(top):
    for n in dirs + files: one(os.path.join(d, n))
`;


function mkdir(p: string): string {
  fs.mkdirSync(p, { mode: 0o755 });
  fs.chmodSync(p, 0o755);
  return p;
}

/** A lower layer: a spec for ops-layers, or a function that fills the (empty) layer directory. */
export type LowerSource = LayerSpec | ((dir: string, layerIndex: number) => void);

function upperOnTmpfs(opts: PairOptions): boolean {
  return opts.upperOnTmpfs ?? process.env.STRATA_UPPER_TMPFS === '1';
}

function buildSide(t: ExecutionContext, base: string, name: string, layers: readonly LowerSource[], opts: PairOptions): Omit<Side, 'mnt' | 'runner' | 'remount'> {
  const dir = mkdir(path.join(base, name));
  const lowers = layers.map((spec, i) => {
    const l = mkdir(path.join(dir, `l${i}`));
    if (typeof spec === 'function') spec(l, i + 1);
    else buildLayer(l, spec, i + 1);
    return l;
  });
  const upperFs = upperOnTmpfs(opts) ? tmpfsDir(t, dir, 'ufs', 1024) : dir;
  const upper = mkdir(path.join(upperFs, 'u'));
  if (opts.upper) buildLayer(upper, opts.upper, 0);
  if (opts.upperFrom) opts.upperFrom(upper, lowers);
  const work = mkdir(path.join(upperFs, 'w'));
  mkdir(path.join(dir, 'm'));
  if (opts.idmapShift !== undefined) {
    for (const d of [...lowers, upper, work]) {
      const r = run(PYTHON, ['-c', SHIFT_IDS, d, String(opts.idmapShift)]);
      if (r.status !== 0) throw new Error(`shifting the owners of ${d}: ${r.stderr.trim()}`);
    }
  }
  return { name, base: dir, lowers, upper, work, lowerBefore: lowers.map((l) => snapshot(l, 'lower')) };
}

/** Builds `layers` (top first) twice and mounts the kernel overlay and strata over them. */
export function setupPair(t: ExecutionContext, layers: readonly LowerSource[], opts: PairOptions = {}): Pair {
  const base = tempDir(t, 'w');
  fs.chmodSync(base, 0o755); // unprivileged test users must reach the mounts
  const k = buildSide(t, base, 'k', layers, opts);
  const s = buildSide(t, base, 's', layers, opts);
  // Layers on two filesystems: the kernel maps inode numbers into one space only with xino (strata
  // always does, README "Inode numbers").
  const xino = crossFsOptions(k.upper, k.lowers[0]!);
  const options = xino ? [...(opts.options ?? []), ...xino] : opts.options;
  let kspec = { lowers: k.lowers, upper: k.upper, work: k.work, mountpoint: path.join(k.base, 'm'), options };
  let soptions = options;
  if (opts.idmapShift !== undefined) {
    if (upperOnTmpfs(opts)) throw new Error('idmapShift: the side\'s directory is idmapped as one mount, an upper on a tmpfs of its own is not');
    // the kernel: its side's directory (lowers, upper, work) through one idmapped mount
    const idm = path.join(base, 'k-idm');
    idmapMount(t, k.base, idm, `${opts.idmapShift}:0:65536`);
    const through = (p: string): string => path.join(idm, path.relative(k.base, p));
    kspec = { ...kspec, lowers: k.lowers.map(through), upper: through(k.upper), work: through(k.work) };
    const m = `${opts.idmapShift}:0:65536`;
    soptions = [...(options ?? []), `uidmapping=${m}`, `gidmapping=${m}`];
  }
  // (strata's log beside its layers: errors and warnings in it are shown with a failure, see daemonTrouble)
  const given = opts.strataArgs?.indexOf('--log-file') ?? -1;
  const log = underTest().name !== 'strata' ? undefined : given >= 0 ? opts.strataArgs![given + 1] : path.join(s.base, 'daemon.log');
  const extraArgs = log && given < 0 ? ['--log-file', log, ...(opts.strataArgs ?? [])] : opts.strataArgs;
  const sspec = { lowers: s.lowers, upper: s.upper, work: s.work, mountpoint: path.join(s.base, 'm'), options: soptions, extraArgs };
  const kmnt = kernelOverlay(t, kspec);
  const smnt = strataMount(t, sspec);
  // (no lazy unmount here: a second mount of the same upper and work directory must not meet the first)
  const remountKernel = (): void => {
    const r = run('umount', [kmnt], { timeoutMs: 20_000 });
    if (r.status !== 0 || mountAt(kmnt)) throw new Error(`remount: ${r.command} failed: ${r.stderr.trim()}`);
    kernelOverlay(t, kspec);
  };
  const remountStrata = (): void => {
    const r = underTest().name === 'strata' ? run(strataBin, ['umount', smnt], { timeoutMs: 20_000 }) : run('umount', [smnt], { timeoutMs: 20_000 });
    if (r.status !== 0 || mountAt(smnt)) throw new Error(`remount: ${r.command} failed: ${r.stderr.trim()}`);
    strataMount(t, sspec);
  };
  return {
    base,
    options: opts.options,
    idmapShift: opts.idmapShift,
    kernel: { ...k, name: 'kernel', mnt: kmnt, runner: new Runner(kmnt), remount: remountKernel },
    strata: { ...s, name: underTest().name, mnt: smnt, runner: new Runner(smnt), remount: remountStrata, log },
  };
}

/** The errors and warnings strata's daemon logged (a daemon that failed says why there), or ''. */
export function daemonTrouble(pair: Pair): string {
  const file = pair.strata.log;
  if (!file || !fs.existsSync(file)) return '';
  return daemonLogLines(file).filter((j) => j.level >= 40)
    .map((j) => `${j.level >= 50 ? 'error' : 'warn'}: ${j.msg ?? ''}${j.err ? `\n${j.err.stack ?? j.err.message ?? ''}` : ''}`).join('\n');
}

export interface StepLog {
  step: number;
  op: string;
  kernel: Result;
  /** Keyed by the name of the program under test (strata, or the peer). */
  [underTest: string]: Result;
}

/**
 * Runs each op on the kernel side, then on strata; records a failure listing every step whose
 * results differ, and returns the kernel's results (for checks that the scenario does what it claims).
 */
export function runBoth(c: Checks, pair: Pair, ops: readonly Op[]): Result[] {
  const logK: Result[] = [];
  const mismatches: StepLog[] = [];
  ops.forEach((op, step) => {
    const k = pair.kernel.runner.run(op);
    const s = pair.strata.runner.run(op);
    logK.push(k);
    if (JSON.stringify(k) !== JSON.stringify(s)) mismatches.push({ step, op: showOp(op), kernel: k, [pair.strata.name]: s });
  });
  c.none(mismatches, `step results differ from the kernel's (of ${ops.length} steps)`);
  return logK;
}

/** Unmounts strata and checks that the mount is gone. */
export function unmountStrata(c: Checks, side: Side): void {
  strataUnmount(side.mnt);
  c.ok(mountAt(side.mnt) === undefined, `${side.name} still mounted at ${side.mnt} after unmounting`);
}

const COMPARED_FIELDS = new Set<string>(['type', 'mode', 'uid', 'gid', 'size', 'nlink', 'rdev', 'sha256', 'target', 'xattrs', 'mtimeNs']);

export interface FinishOptions {
  /** Paths to leave out of the tree comparisons. */
  exclude?: string[];
}

/**
 * The common end of every differential test: merged trees equal (attributes, contents, xattrs,
 * readdir with d_type, inode numbers), uppers equal (kernel format), lowers untouched, and the
 * kernel mounting strata's upper sees the kernel's own merged tree.
 */
export function finishPair(c: Checks, pair: Pair, opts: FinishOptions = {}): void {
  const { kernel: k, strata: s } = pair;
  const mk = snapshot(k.mnt, 'merged', opts);
  const ms = snapshot(s.mnt, 'merged', opts);
  c.none(diffSnapshots(mk, ms, ['kernel', s.name]), 'merged trees differ');
  // The shared snapshot adds raw readdir listings with d_type, d_ino = st_ino and inode uniqueness.
  const fk = fullSnapshot(k.mnt);
  const fs_ = fullSnapshot(s.mnt);
  c.none(
    compareDiff(fs_, fk, {
      skipPaths: opts.exclude,
      ignore: (_p, f, info) => {
        // times made during the test differ between the runs (ctime always); block counts are the
        // upper filesystem's business (directory sizes are compared: the merged view shows the
        // upper's or the lower's, as the kernel's overlay)
        if (f === 'mtimeNs') return BigInt(info.mtimeNs) >= RECENT_NS;
        return !COMPARED_FIELDS.has(f);
      },
    }),
    `${s.name} vs kernel: readdir listings (d_type), attributes`,
  );
  c.none(inodeProblems(fs_, dinoDiffers(fk)), `${s.name}: inode numbers (distinct objects, d_ino = st_ino where the kernel's is, one st_dev)`);
  c.eq(sharedInodes(fs_), sharedInodes(fk), `${s.name}: paths sharing an inode number, as on the kernel`);

  unmountStrata(c, s);
  unmountQuietly(k.mnt);

  // (with an owner mapping the kernel makes its whiteouts as its creator, root, whose stored id is the
  // shift; strata makes them as the daemon, root stored as 0 (README, "Owner mapping"): not compared)
  if (pair.idmapShift !== undefined) for (const side of [k, s]) ownWhiteoutsByRoot(side.upper);
  const uk = snapshot(k.upper, 'upper', opts);
  const us = snapshot(s.upper, 'upper', opts);
  c.none(diffSnapshots(uk, us, ['kernel', s.name]), 'upper dirs differ');

  for (const side of [k, s]) {
    side.lowers.forEach((l, i) => {
      c.none(diffSnapshots(side.lowerBefore[i]!, snapshot(l, 'lower'), ['before', 'after']), `${side.name}: lower layer ${i} changed`);
    });
  }

  // strata's upper read by the kernel: proves the on-disk format. Compared with the kernel's own upper
  // mounted again, not with its live mount, whose cached dentries may show what no fresh mount of
  // either upper does (a directory replaced under one: see CopyUp.replaced).
  const mkx = kernelRemount(c, pair, k, 'kx', opts);
  const mx = kernelRemount(c, pair, s, 'x', opts);
  c.none(diffSnapshots(mkx, mx, ['kernel', `kernel on ${s.name}'s upper`]), `the kernel reads ${s.name}'s upper differently`);
  if (diffSnapshots(mk, mkx, ['live', 'again']).length > 0) c.t.log('the kernel\'s live merged tree differs from a fresh mount of its upper');
}

function ownWhiteoutsByRoot(dir: string): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) ownWhiteoutsByRoot(p);
    else if (e.isCharacterDevice() && fs.lstatSync(p).rdev === 0) fs.lchownSync(p, 0, 0);
  }
}

/** The merged tree of a fresh kernel overlay mount of `side`'s layers and upper. */
function kernelRemount(c: Checks, pair: Pair, side: Side, name: string, opts: FinishOptions): Snapshot {
  const xdir = mkdir(path.join(pair.base, name));
  // (the work directory on the upper's filesystem, which may be a tmpfs of its own: upperOnTmpfs)
  const xwork = mkdir(path.join(path.dirname(side.upper), `${name}w`));
  const xmnt = mkdir(path.join(xdir, 'm'));
  try {
    const options = [...(pair.options ?? []), ...(crossFsOptions(side.upper, side.lowers[0]!) ?? [])];
    kernelOverlay(c.t, { lowers: side.lowers, upper: side.upper, work: xwork, mountpoint: xmnt, options });
    return snapshot(xmnt, 'merged', opts);
  } finally {
    unmountQuietly(xmnt);
  }
}
