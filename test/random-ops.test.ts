// Seeded random operations, strata against the kernel: random lower layers (files, dirs, symlinks,
// hardlinks, FIFOs, xattrs, whiteouts, opaque dirs) are built twice, a kernel overlay and strata
// are mounted over the copies, and N random operations chosen from the kernel's current merged
// listing run on both. Each step's result (value or errno) and a look at the paths it touched
// must agree; the first mismatch stops the run and prints the seed, the ops so far and a
// one-line repro. Then the merged trees, the uppers and the lowers are compared, and the kernel
// mounts strata's upper.
//
// 40% of the ops act through descriptors (helpers/ops-fd.ts): files and directories opened by
// root and by two unprivileged users (other uids, supplementary groups, umasks) stay open in one
// long-lived process per user and side while their names are renamed, unlinked, re-created or
// copied up, and fchmod/fchown/futimens/ftruncate/fallocate/f*xattr/read/write/lseek/fsync act
// through the old descriptors; each answer comes with fstat through the descriptor. One designed
// difference is accepted, and only where it applies (lowerReads): under passthrough a read-only
// descriptor of a lower file keeps reading the lower data after the file is copied up (the README's
// passthrough note), checked byte for byte against that data.
//
// One seed in four has three files of 5 MiB at the bottom: changes to them copy them up in steps between
// requests (the asynchronous copy-up), the rest of the run going on through the other names.
//
// 1% of the ops remount both sides (after closing every descriptor), and 1% make the kernel forget
// every dentry and inode that nothing holds (drop_caches): strata gets FORGETs while descriptors stay
// open, and objects are looked up afresh; the merged trees, with their st_ino, are compared after each.
//
// STRATA_SEEDS=1-4 (default) or 7,9,20-30 picks the seeds; STRATA_OPS=300 (default) the ops per
// seed. `make soak` (scripts/soak.sh) runs 200 seeds x 1000 ops. A failing seed writes its ops to
// .cache/random-ops-seed<N>.json, and STRATA_REPLAY=<that file> runs exactly those ops; with
// STRATA_SHRINK=1 the list is first shrunk by replaying ever smaller subsets on fresh mounts
// until the failure (a step mismatch, or the final comparisons) would go away. ava stops a test
// file that gives no result for 5 minutes (killing it, mounts left behind): for long seeds or
// shrinking, add --timeout=60m (make soak does).
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { randomLayers, rng } from './helpers/generators.js';
import { materializeLayer, type Layer } from './helpers/layers.js';
import { Checks } from './helpers/ops-checks.js';
import { daemonTrouble, finishPair, setupPair, type LowerSource, type Pair, type PairOptions, type Side } from './helpers/ops-pair.js';
import { strataUnmount } from './helpers/mounts.js';
import { run as runCmd } from './helpers/exec.js';
import { repoRoot } from './helpers/paths.js';
import { removeTree } from './helpers/tmp.js';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, showOp, type Op, type Runner } from './helpers/ops-runner.js';
import { kindOf, walk } from './helpers/ops-tree.js';
import { xop, type XCmd, type XResult } from './helpers/ops-xop.js';
import { FdSide } from './helpers/fd-side.js';
import { FD_USERS, FdOpGenerator } from './helpers/ops-fd.js';
import { compareUpperRemounts } from './helpers/upper-remount.js';
import { dropMachineCachesSync } from './helpers/page-cache.js';

function parseSeeds(spec: string): number[] {
  const out: number[] = [];
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`STRATA_SEEDS: cannot read "${part}" (use e.g. 1-4 or 3,7,10-12)`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    for (let s = a; s <= b; s++) out.push(s);
  }
  return out;
}

const SEEDS = parseSeeds(process.env.STRATA_SEEDS ?? '1-4');
/** Seeds run with the uppers on a tmpfs (see the end of this file). */
const TMPFS_SEEDS = parseSeeds(process.env.STRATA_TMPFS_SEEDS ?? '5-6');
/** Seeds run with redirect_dir=on on both sides: directories with lower layers are renamed with redirects. */
const REDIRECT_SEEDS = parseSeeds(process.env.STRATA_REDIRECT_SEEDS ?? '7-8');
/**
 * Seeds run with userxattr on both sides: the markers are read and written in user.overlay.*, and the
 * layers' trusted.overlay.* markers (the kernel's default format, which the generated layers use) are
 * plain attributes, ignored by the merge. (Seed 9 links a symlink copied up without an origin: README,
 * "Inode numbers".)
 */
const USERXATTR_SEEDS = parseSeeds(process.env.STRATA_USERXATTR_SEEDS ?? '9');
/**
 * Seeds run with metacopy=on on both sides, over an upper that a kernel overlay with metacopy=on wrote
 * first (metadata-only copies of lower files, some renamed or linked: their data below, found through
 * redirects): strata reads those files and fills in their data before a change, as the kernel does.
 * The uppers then hold the same tree in two forms (the kernel keeps making metadata-only copies):
 * they are compared through fresh kernel mounts only.
 */
const METACOPY_SEEDS = parseSeeds(process.env.STRATA_METACOPY_SEEDS ?? '10');
/**
 * Seeds run over an upper made by hand (see handMadeUpper): directories over lower ones without an
 * overlay.origin, which the kernel's first lookup of each gives one (ovl_fix_origin).
 */
const HANDMADE_SEEDS = parseSeeds(process.env.STRATA_HANDMADE_SEEDS ?? '11');
/**
 * Seeds run with an owner mapping: the layers' ids stored 100000 up, strata mounting them with
 * uidmapping=/gidmapping=100000:0:65536, the kernel's overlay over an idmapped mount of them (see
 * PairOptions.idmapShift). Callers, owners and ACL entries are those of the other seeds.
 */
const IDMAP_SEEDS = parseSeeds(process.env.STRATA_IDMAP_SEEDS ?? '12');
const OPS = Number(process.env.STRATA_OPS ?? 300);
if (!Number.isInteger(OPS) || OPS < 1) throw new Error(`STRATA_OPS must be a positive integer, not ${process.env.STRATA_OPS}`);

type Rand = () => number;
const int = (r: Rand, n: number): number => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;

const FILE_MODES = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o000, 0o444, 0o666];
const DIR_MODES = [0o755, 0o700, 0o1777, 0o2775, 0o555, 0o777];
const OWNERS: [number, number][] = [[0, 0], [1000, 1000], [1234, 2345], [0, 1000]];
const POOL = ['a', 'b', 'c', 'x', 'y', 'z'];
const USER: [number, number] = [1000, 1000];
/** xattr names of setxattr/removexattr (trusted.overlay.* is escaped by the mount: trusted.overlay.overlay.* below). */
const XATTR_NAMES = ['user.x', 'user.y', 'trusted.overlay.x'];

/** An ACL in its xattr form ("0x" hex): entries of tag (1 user::, 2 user:id, 4 group::, 8 group:id, 16 mask, 32 other), perms, id. */
function acl(...entries: [number, number, number?][]): string {
  const b = Buffer.alloc(4 + 8 * entries.length);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i);
    b.writeUInt16LE(perm, 6 + 8 * i);
    b.writeUInt32LE(id ?? 0xffffffff, 8 + 8 * i);
  });
  return '0x' + b.toString('hex');
}
const ACCESS_ACLS = [
  acl([1, 7], [2, 6, 1000], [4, 5], [16, 7], [32, 0]),
  acl([1, 6], [4, 4], [8, 6, 1000], [16, 6], [32, 4]),
  acl([1, 7], [4, 7], [32, 5]), // the mode bits only
];
const DEFAULT_ACLS = [
  acl([1, 7], [2, 7, 1000], [4, 5], [16, 7], [32, 0]),
  acl([1, 6], [4, 4], [32, 0]),
];

interface Listing {
  /** Every path of the merged view but the root, with its lstat type. */
  entries: Array<[string, string]>;
  /** '' (the root) and every directory. */
  dirs: string[];
}

function list(root: string): Listing {
  const entries: Array<[string, string]> = [];
  for (const rel of walk(root)) {
    if (rel === '') continue;
    const st = fs.lstatSync(path.join(root, rel), { throwIfNoEntry: false });
    if (!st) continue; // listed by readdir but not found by lookup: the step comparison reports it
    const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFIFO() ? 'fifo' : st.isFile() ? 'file' : 'other';
    entries.push([rel, type]);
  }
  return { entries, dirs: ['', ...entries.filter(([, t]) => t === 'dir').map(([p]) => p)] };
}

/** The basenames used anywhere in the layers (including whited-out and hidden ones), to make collisions likely. */
function layerNames(layers: readonly Layer[]): string[] {
  return [...new Set(layers.flat().map((e) => e.path.split('/').at(-1)!))].sort();
}

/** The share of ops that open descriptors, act through them or change the names they were opened by. */
const FD_SHARE = 0.4;

/** The share of ops that unmount and mount both sides again (after closing every descriptor). */
const REMOUNT_SHARE = 0.01;

/** The share of ops after which the kernel forgets what nobody holds (drop_caches, see dropStep). */
const FORGET_SHARE = 0.01;

class OpGenerator {
  readonly fd: FdOpGenerator;
  /** Ops decided together (the closes before a remount), handed out one by one. */
  private queued: Op[] = [];
  constructor(private readonly r: Rand, private readonly names: readonly string[]) {
    this.fd = new FdOpGenerator(r, (l) => this.newPath(l));
  }

  private name(): string {
    return this.r() < 0.55 && this.names.length ? pick(this.r, this.names) : pick(this.r, POOL);
  }

  private newPath(l: Listing): string {
    const d = pick(this.r, l.dirs);
    return d === '' ? this.name() : `${d}/${this.name()}`;
  }

  /** Any existing path (not the root). */
  private any(l: Listing): string | undefined {
    return l.entries.length ? pick(this.r, l.entries)[0] : undefined;
  }

  /** A path whose use follows symlinks: never a symlink (targets may point outside the mount), never a FIFO (open would block). */
  private plain(l: Listing, types = ['file', 'dir']): string | undefined {
    const xs = l.entries.filter(([, t]) => types.includes(t));
    return xs.length ? pick(this.r, xs)[0] : undefined;
  }

  private existingOrNew(l: Listing): string {
    return this.r() < 0.5 ? (this.any(l) ?? this.newPath(l)) : this.newPath(l);
  }

  private data(): string {
    const n = 1 + int(this.r, this.r() < 0.1 ? 5000 : 60);
    let s = '';
    for (let i = 0; i < n; i++) s += String.fromCharCode(32 + int(this.r, 95));
    return s;
  }

  private time(): string {
    return (BigInt(1_000_000_000 + int(this.r, 500_000_000)) * 1_000_000_000n + BigInt(int(this.r, 1_000_000_000))).toString();
  }

  next(l: Listing): Op {
    const r = this.r;
    if (this.queued.length) return this.queued.shift()!;
    if (r() < REMOUNT_SHARE) {
      // every descriptor closed first (the mounts must be able to go)
      this.queued = [...this.fd.closeAll(), ['remount']];
      return this.queued.shift()!;
    }
    if (r() < FORGET_SHARE) return ['dropCaches'];
    if (r() < FD_SHARE) {
      const op = this.fd.next(l);
      if (op) return op;
    }
    for (;;) {
      const op = this.candidate(l);
      if (!op) continue;
      // Now and then as an unprivileged user, for the permission checks.
      if (r() < 0.12 && ['create', 'write', 'mkdir', 'unlink', 'rmdir', 'rename', 'link', 'symlink', 'chmod', 'truncate', 'tmpfile'].includes(op[0])) {
        return ['as', ...USER, op];
      }
      return op;
    }
  }

  private candidate(l: Listing): Op | undefined {
    const r = this.r;
    const x = int(r, 100);
    if (x < 10) return ['create', this.newPath(l), pick(r, FILE_MODES), this.data()];
    if (x < 20) {
      const p = this.plain(l);
      return p === undefined ? undefined : ['write', p, r() < 0.3 ? int(r, 200_000) : int(r, 100), this.data()];
    }
    if (x < 25) {
      const p = this.plain(l);
      return p === undefined ? undefined : ['truncate', p, pick(r, [0, 1, 10, 4096, 70_000])];
    }
    if (x < 27) {
      const p = this.plain(l);
      return p === undefined ? undefined : ['open', p, pick(r, ['O_WRONLY|O_TRUNC', 'O_RDWR', 'O_RDONLY'])];
    }
    if (x < 32) {
      const p = this.plain(l, ['file', 'dir', 'fifo']);
      return p === undefined ? undefined : ['chmod', p, pick(r, l.dirs.includes(p) ? DIR_MODES : FILE_MODES)];
    }
    if (x < 36) {
      const p = this.any(l);
      return p === undefined ? undefined : ['lchown', p, ...pick(r, OWNERS)];
    }
    if (x < 40) {
      const p = this.any(l);
      return p === undefined ? undefined : ['utimens', p, this.time(), this.time()];
    }
    if (x < 44) {
      const p = this.any(l);
      return p === undefined ? undefined : ['setxattr', p, pick(r, XATTR_NAMES), this.data().slice(0, 20)];
    }
    if (x < 46) {
      const p = this.any(l);
      return p === undefined ? undefined : ['removexattr', p, pick(r, XATTR_NAMES)];
    }
    if (x < 54) return ['mkdir', this.newPath(l), pick(r, DIR_MODES)];
    if (x < 60) {
      const p = r() < 0.8 ? this.plain(l, ['dir']) : this.any(l);
      return p === undefined ? undefined : ['rmdir', p];
    }
    if (x < 68) {
      const p = this.any(l);
      return p === undefined ? undefined : ['unlink', p];
    }
    if (x < 82) {
      // rename files and dirs, onto new names and over existing targets
      const dirsOnly = r() < 0.3;
      const src = dirsOnly ? this.plain(l, ['dir']) : this.any(l);
      if (src === undefined) return undefined;
      const dst = this.existingOrNew(l);
      const f = r();
      return f < 0.8 ? ['rename', src, dst] : ['rename', src, dst, f < 0.9 ? RENAME_NOREPLACE : RENAME_EXCHANGE];
    }
    if (x < 88) {
      const p = this.any(l);
      return p === undefined ? undefined : ['link', p, this.existingOrNew(l)];
    }
    if (x < 92) return ['symlink', pick(r, [this.name(), `${this.name()}/${this.name()}`, 'nowhere']), this.newPath(l)];
    if (x < 93) return ['mkfifo', this.newPath(l), pick(r, [0o644, 0o600])];
    if (x < 95) {
      // ACLs (access on anything, default on directories) and chattr flags
      const p = this.plain(l);
      if (p === undefined) return undefined;
      const y = r();
      if (y < 0.4) return ['setxattr', p, 'system.posix_acl_access', pick(r, ACCESS_ACLS)];
      if (y < 0.55) return l.dirs.includes(p) ? ['setxattr', p, 'system.posix_acl_default', pick(r, DEFAULT_ACLS)] : undefined;
      if (y < 0.6) return ['removexattr', p, pick(r, ['system.posix_acl_access', 'system.posix_acl_default'])];
      // Not +i/+a: the kernel refuses rmdir of a file (ENOTDIR) and unlink of a directory (EISDIR)
      // before asking a FUSE filesystem, where the kernel's overlay says EPERM first (README).
      return ['chattr', p, pick(r, ['+A', '-A', '+d', '-d'])];
    }
    if (x < 96) {
      // the modes FUSE passes on: allocate, keep-size, punch-hole (with keep-size), zero-range
      const p = this.plain(l);
      return p === undefined ? undefined : ['fallocate', p, pick(r, [0, 1, 3, 0x10, 0x11]), int(r, 70_000), 1 + int(r, 70_000)];
    }
    if (x < 97) return ['tmpfile', pick(r, l.dirs), pick(r, FILE_MODES), this.newPath(l), this.data()];
    if (x < 98) return ['seekdir', pick(r, l.dirs), int(r, 1000)];
    const p = this.plain(l, ['file']);
    return p === undefined ? undefined : ['fsync', p, this.data()];
  }
}

/** The paths an op names (for the look after it). */
function pathsOf(op: Op): string[] {
  switch (op[0]) {
    case 'as':
      return pathsOf(op[3]);
    case 'rename':
    case 'link':
      return [op[1], op[2]];
    case 'symlink':
      return [op[2]];
    case 'tmpfile':
      return [op[3]];
    case 'fd': {
      const c = op[2];
      if (c[0] === 'open') return [String(c[2])];
      if (c[0] === 'rename') return [String(c[1]), String(c[2])];
      return ['mkdir', 'unlink', 'rmdir', 'chmod', 'setxattr'].includes(c[0]) ? [String(c[1])] : [];
    }
    default:
      return [op[1] as string];
  }
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

/**
 * What the paths an op names and their parents look like, as the runner sees them: lstat, data
 * hash, xattrs, and the parent's listing (one xop run for the xattrs and raw dirents).
 */
function look(runner: Runner, op: Op, isKernel: boolean): unknown {
  const paths = pathsOf(op);
  const stats = paths.map((p) => runner.run(['stat', p]) as { type?: string; err?: string });
  const parents = paths.map((p) => parentOf(p));
  const pstats = parents.map((d) => runner.run(['stat', d]) as { type?: string });
  const cmds: XCmd[] = [];
  const xattrAt = paths.map((p, i) => (stats[i]!.type !== undefined && stats[i]!.type !== 'symlink' ? cmds.push(['xattrs', runner.p(p)]) - 1 : -1));
  const direntsAt = parents.map((d, i) => (pstats[i]!.type === 'dir' ? cmds.push(['dirents', runner.p(d)]) - 1 : -1));
  const res = xop(cmds);
  const out: Record<string, unknown> = {};
  paths.forEach((p, i) => {
    const st = stats[i]!;
    const o: Record<string, unknown> = { st };
    if (st.type === 'file') o.sha = crypto.createHash('sha256').update(fs.readFileSync(runner.p(p))).digest('hex').slice(0, 12);
    if (st.err) o.xattrs = st; // as listxattr would fail
    else if (xattrAt[i]! >= 0) o.xattrs = xattrNames(res[xattrAt[i]!]!);
    o.parent = direntsAt[i]! >= 0 ? { st: pstats[i], ...listDir(runner, parents[i]!, res[direntsAt[i]!]!, isKernel) } : pstats[i];
    out[p] = o;
  });
  return out;
}

function xattrNames(r: XResult): unknown {
  return 'err' in r ? { err: r.err } : r.ok.map((kv) => Buffer.from(kv.split(':')[0]!, 'hex').toString()).sort();
}

const DT: Record<number, string> = { 1: 'fifo', 2: 'chr', 4: 'dir', 6: 'blk', 8: 'file', 10: 'symlink', 12: 'sock' };

/**
 * A directory's listing from raw dirents, each name checked against lstat: d_ino must equal
 * st_ino and d_type the type (rule 16-17); problems are reported on strata's side. Names that
 * lookup cannot find are left out on the kernel's side: the kernel lists the whiteouts of a
 * directory that only one layer has (its readdir passes through), where rule 3 says a whiteout
 * never shows; on strata's side they are reported as `phantoms`.
 */
function listDir(runner: Runner, dir: string, r: XResult, isKernel: boolean): Record<string, unknown> {
  if ('err' in r) return { names: { err: r.err } };
  const names: string[] = [];
  const problems: string[] = [];
  for (const ent of r.ok) {
    if (ent.startsWith('ERR')) {
      problems.push(`readdir ${ent}`);
      continue;
    }
    const [hex, dino, dtype] = ent.split(':') as [string, string, string];
    const name = Buffer.from(hex, 'hex').toString();
    let st: fs.BigIntStats | undefined;
    try {
      st = fs.lstatSync(runner.p(dir ? `${dir}/${name}` : name), { bigint: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') names.push(name);
      else problems.push(`phantom ${name}`);
      continue;
    }
    names.push(name);
    if (BigInt(dino) !== st.ino) problems.push(`${name}: d_ino ${dino}, st_ino ${st.ino}`);
    const t = kindOf(st) === 'whiteout' ? 'chr' : kindOf(st);
    if ((DT[Number(dtype)] ?? `dtype${dtype}`) !== t) problems.push(`${name}: d_type ${DT[Number(dtype)] ?? dtype}, lstat ${t}`);
  }
  names.sort();
  return isKernel || problems.length === 0 ? { names } : { names, problems };
}

/**
 * One step on one side: a look before, the op, a look after. Inode numbers are labelled per
 * step (a freed number may come back for a new object), so the labels say "same object as
 * before the op" (copy-up and rename keep st_ino) and "same object as the other name".
 */
function step(runner: Runner, side: Side, fds: FdSide, op: Op, isKernel: boolean): Record<string, unknown> {
  const outside = leavesMount(runner.root, op);
  if (outside) throw new Error(`refused to run ${JSON.stringify(op)}: ${outside} (a generator bug: the layers' symlinks point outside the mount)`);
  runner.resetLabels();
  const before = look(runner, op, isKernel);
  const result = op[0] === 'fd' ? fds.fdOp(op[1], op[2]) : runner.run(op);
  return { result, before, after: look(runner, op, isKernel), upper: upperNames(side.upper) };
}

/** The op itself, without an "as user" around it. */
function unwrapAs(op: Op): Op {
  return op[0] === 'as' ? op[3] : op;
}

/** Ops that follow a symlink at the end of their path. */
const FOLLOWS_LAST = new Set(['chmod', 'write', 'truncate', 'open', 'fallocate', 'fsync', 'chattr']);

/**
 * Why `op` would act outside the mount at `root`, or null. The layers hold symlinks to "/", "/etc/passwd"
 * and "/tmp/../etc": an op through one would change the host (a soak once chmodded "/"). Checked on
 * each side before the op runs, so that a generator bug fails the test instead.
 */
function leavesMount(root: string, op: Op): string | null {
  const inner = unwrapAs(op);
  let follows = FOLLOWS_LAST.has(inner[0]);
  if (inner[0] === 'fd' && inner[2][0] === 'open') follows = !String(inner[2][3]).includes('O_EXCL');
  for (const q of pathsOf(op)) {
    let dir: string;
    try {
      dir = fs.realpathSync(path.join(root, parentOf(q)));
    } catch {
      continue; // no such directory: the op fails inside
    }
    if (dir !== root && !dir.startsWith(`${root}/`)) return `${q} is in ${dir}`;
    let st: fs.Stats | undefined;
    try {
      st = fs.lstatSync(path.join(root, q), { throwIfNoEntry: false });
    } catch {
      continue; // the parent is not a directory: the op fails inside
    }
    if (follows && st?.isSymbolicLink()) return `${q} is a symlink it would follow`;
  }
  return null;
}

/** The names in an upper dir with their types: what was copied up, whited out or made opaque so far. */
function upperNames(upper: string): string[] {
  const rels = walk(upper).slice(1);
  const types = rels.map((rel) => {
    const st = fs.lstatSync(path.join(upper, rel));
    return st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFIFO() ? 'fifo' : st.isCharacterDevice() ? `chr${st.rdev}` : 'file';
  });
  // (opaque markers on every directory, also where no lower layer has one: the kernel's upper has them there too)
  const dirs = rels.filter((_rel, i) => types[i] === 'dir');
  const opaque = new Map(xop(dirs.map((d) => ['getxattr', path.join(upper, d), 'trusted.overlay.opaque'])).map((r, i) => [dirs[i], r]));
  // (and redirects, which redirect_dir=on writes on renamed directories)
  const redirect = new Map(xop(dirs.map((d) => ['getxattr', path.join(upper, d), 'trusted.overlay.redirect'])).map((r, i) => [dirs[i], r]));
  return rels.map((rel, i) => {
    const o = opaque.get(rel);
    const r = redirect.get(rel);
    return `${rel} ${types[i]}${o && 'ok' in o ? ` opaque=${Buffer.from(o.ok[0] ?? '', 'hex').toString()}` : ''}` +
      `${r && 'ok' in r ? ` redirect=${Buffer.from(r.ok[0] ?? '', 'hex').toString('latin1')}` : ''}`;
  });
}

interface Mismatch {
  index: number;
  kernel: unknown;
  strata: unknown;
}

/** Both sides of a run: the mounts and a descriptor driver per user on each. */
interface Run {
  pair: Pair;
  /** The descriptor drivers (new ones after a remount). */
  k: FdSide;
  s: FdSide;
  /** Read-only descriptors opened on a lower file ("who label"): see lowerReads. */
  lowerRO: Map<string, LowerRead>;
}

/**
 * A descriptor opened read-only on a file of a lower layer, with the file's data then. Under
 * passthrough such a descriptor keeps reading the lower file after a copy-up (README: the kernel
 * binds a FUSE open to one backing file; the issue asks for this), where the kernel's overlay
 * re-points read() to the upper copy. `pos`: its file offset on strata's side.
 */
interface LowerRead {
  data: Buffer;
  pos: number;
}

type FdData = { len: number; sha: string; head: string };
function fdData(b: Buffer): FdData {
  return { len: b.length, sha: crypto.createHash('sha256').update(b).digest('hex').slice(0, 12), head: b.subarray(0, 24).toString('latin1') };
}

/**
 * The one divergence strata keeps by design (see LowerRead): a read through such a descriptor
 * that differs from the kernel's is accepted when it returns exactly the lower file's data, and
 * the kernel's answer stands in for it. Everything else about the step is still compared.
 */
function lowerReads(run: Run, op: Op, kernel: Record<string, unknown>, strata: Record<string, unknown>): void {
  if (op[0] !== 'fd') return;
  const [, who, cmd] = op as ['fd', string, [string, ...unknown[]]];
  const key = `${who} ${String(cmd[1])}`;
  const kr = kernel.result as { r?: { ok?: unknown } } | undefined;
  const sr = strata.result as { r?: { ok?: unknown } } | undefined;
  if (cmd[0] === 'open' || cmd[0] === 'close') {
    run.lowerRO.delete(key);
    if (cmd[0] !== 'open' || cmd[3] !== 'O_RDONLY' || !sr?.r?.ok) return;
    const rel = String(cmd[2]);
    const st = fs.lstatSync(path.join(run.pair.kernel.mnt, rel), { throwIfNoEntry: false });
    const inUpper = fs.lstatSync(path.join(run.pair.strata.upper, rel), { throwIfNoEntry: false }) !== undefined;
    if (st?.isFile() && !inUpper) run.lowerRO.set(key, { data: fs.readFileSync(path.join(run.pair.kernel.mnt, rel)), pos: 0 });
    return;
  }
  const lr = run.lowerRO.get(key);
  if (!lr) return;
  if (cmd[0] === 'lseek') {
    // SEEK_DATA/SEEK_HOLE seek in the copy, as on the kernel (strata answers them from it); SEEK_END is
    // the kernel's own, from the size of the FUSE inode the descriptor was opened on (the lower file's):
    // strata's own offset counts
    const to = sr?.r?.ok;
    lr.pos = typeof to === 'number' ? to : lr.pos;
    if (cmd[3] === 2 && JSON.stringify(kr?.r) !== JSON.stringify(sr?.r) && typeof to === 'number' && to <= lr.data.length) sr!.r = kr!.r;
    return;
  }
  if (cmd[0] !== 'read' && cmd[0] !== 'pread') return;
  const len = Number(cmd[2]);
  const off = cmd[0] === 'pread' ? Number(cmd[3]) : lr.pos;
  const got = sr?.r?.ok as FdData | undefined;
  if (cmd[0] === 'read' && got && typeof got.len === 'number') lr.pos += got.len;
  if (JSON.stringify(kr?.r) === JSON.stringify(sr?.r) || Number.isNaN(off) || !got) return;
  if (JSON.stringify(fdData(lr.data.subarray(off, off + len))) === JSON.stringify(got)) sr!.r = kr!.r;
}

/**
 * The kernel lists a whiteout inside an opaque lower directory that merges with nothing (it reads
 * such a directory as it is), though lookup of the name gives ENOENT; strata leaves it out
 * (../shared/docs/semantics.md, rule 3). The look at a step already drops such phantom names from
 * the kernel's listings; seekdir's entry count is accepted when it differs by exactly them, and a
 * listing through a descriptor (getdents, which marks the names it cannot look up) drops them from
 * the kernel's side only: strata must list none.
 */
function phantomWhiteouts(run: Run, op: Op, kernel: Record<string, unknown>, strata: Record<string, unknown>): void {
  if (op[0] === 'fd' && op[2][0] === 'getdents') {
    const r = (kernel.result as { r?: { ok?: unknown } } | undefined)?.r;
    if (r && Array.isArray(r.ok)) r.ok = r.ok.filter((n) => !String(n).endsWith(' (no lookup)'));
    return;
  }
  const inner = unwrapAs(op);
  if (inner[0] !== 'seekdir') return;
  const kr = kernel.result;
  const sr = strata.result;
  if (!Array.isArray(kr) || !Array.isArray(sr) || JSON.stringify(kr) === JSON.stringify(sr)) return;
  const dir = path.join(run.pair.kernel.mnt, String(inner[1]));
  let phantoms = 0;
  try {
    for (const name of fs.readdirSync(dir)) if (!fs.lstatSync(path.join(dir, name), { throwIfNoEntry: false })) phantoms++;
  } catch {
    return;
  }
  if (phantoms > 0 && Number(kr[0]) - phantoms === Number(sr[0]) && kr[1] === sr[1]) strata.result = kr;
}

function fdSide(x: Side): FdSide {
  return new FdSide(x, FD_USERS, (ino) => x.runner.inoLabel(ino));
}

function setupRun(t: ExecutionContext, layers: readonly Layer[], po: PairOptions): Run {
  const pair = setupPair(t, lowerSources(layers), po);
  const run: Run = { pair, k: fdSide(pair.kernel), s: fdSide(pair.strata), lowerRO: new Map() };
  t.teardown(() => closeDrivers(run));
  return run;
}

/**
 * Every path of the merged tree with its type, inode label, permission bits and link count. A name
 * the kernel lists but cannot look up is one of its phantom whiteouts (see phantomWhiteouts): left
 * out of the kernel's record; strata must never list such a name.
 */
function treeIds(x: Side, kernel: boolean): string[] {
  const ids: string[] = [];
  for (const rel of walk(x.mnt).slice(1)) {
    const st = fs.lstatSync(path.join(x.mnt, rel), { bigint: true, throwIfNoEntry: false });
    if (st) ids.push(`${rel} ${kindOf(st)} ${x.runner.inoLabel(st.ino)} ${(Number(st.mode) & 0o7777).toString(8)} ${st.nlink}`);
    else if (!kernel) ids.push(`${rel} (gone)`);
  }
  return ids;
}

/**
 * ['remount'] on both sides (the generator closed every descriptor before): the merged tree before and
 * after, with inode labels shared by both walks, so that an object whose st_ino changed shows.
 */
function remountStep(run: Run): Record<string, unknown>[] {
  closeDrivers(run);
  const records = [run.pair.kernel, run.pair.strata].map((x) => {
    const kernel = x === run.pair.kernel;
    x.runner.resetLabels();
    const before = treeIds(x, kernel);
    x.remount();
    return { result: 'remounted', before, after: treeIds(x, kernel), upper: upperNames(x.upper) };
  });
  run.k = fdSide(run.pair.kernel);
  run.s = fdSide(run.pair.strata);
  run.lowerRO.clear();
  return records;
}

/**
 * ['dropCaches']: the kernel forgets the dentries and inodes of both mounts that no descriptor holds
 * (strata gets FORGETs, the kernel's overlay drops its inodes); then the merged trees are walked, with
 * the inode labels of the run so far, so that an object whose st_ino changed where the other side's
 * did not shows (as after a remount, but with descriptors still open).
 */
function dropStep(run: Run): Record<string, unknown>[] {
  dropMachineCachesSync(2);
  return [run.pair.kernel, run.pair.strata].map((x) => ({ result: 'dropped', after: treeIds(x, x === run.pair.kernel) }));
}

/** Is descriptor `label` of user `who` open on a directory (asked through fstat, which changes nothing)? */
function isDirFd(side: FdSide, who: string, label: string): boolean {
  const a = side.driver(who).call(['fstat', label]);
  const st = 'ok' in a ? (a.ok as { mode?: number }) : undefined;
  return typeof st?.mode === 'number' && (st.mode & 0o170000) === 0o040000;
}

/** Ends the descriptor drivers (before unmounting: they hold files open). */
function closeDrivers(run: Run): void {
  run.k.close();
  run.s.close();
}

/** One step on both sides: the kernel's record, and the mismatch if strata's differs. */
function runStep(run: Run, op: Op, index: number): { kernel: Record<string, unknown>; mismatch?: Mismatch } {
  // copy_file_range from a descriptor that passthrough keeps on the lower file: the kernel bounds it by
  // the size it last saw through that descriptor (README), and the destination would then differ for
  // good. Both sides run an fstat of the source instead.
  if (op[0] === 'fd' && op[2][0] === 'copy_file_range' && run.lowerRO.has(`${op[1]} ${String(op[2][1])}`)) op = ['fd', op[1], ['fstat', op[2][1]]];
  // lseek of a directory with SEEK_END, SEEK_DATA or SEEK_HOLE: the FUSE module answers it from the
  // directory's size without asking strata, where the kernel's overlay refuses it on a merged directory
  // (README, "Impossible through FUSE"). (A descriptor opened without O_DIRECTORY may be a directory's.)
  // Both sides run an fstat instead.
  if (op[0] === 'fd' && op[2][0] === 'lseek' && [2, 3, 4].includes(Number(op[2][3])) && isDirFd(run.k, op[1], String(op[2][1]))) {
    op = ['fd', op[1], ['fstat', op[2][1]]];
  }
  if (op[0] === 'remount' || op[0] === 'dropCaches') {
    const [k, s] = (op[0] === 'remount' ? remountStep(run) : dropStep(run)) as [Record<string, unknown>, Record<string, unknown>];
    return { kernel: k, mismatch: JSON.stringify(k) === JSON.stringify(s) ? undefined : { index, kernel: k, strata: s } };
  }
  let kernel = step(run.pair.kernel.runner, run.pair.kernel, run.k, op, true);
  // copy_file_range between a file whose real file is on one filesystem and one on another (a lower
  // file and an upper one on a tmpfs): the kernel's overlay refuses it (EXDEV, from the real files),
  // which no FUSE mount can answer (the FUSE module copies by splice when the daemon refuses: README,
  // "Impossible through FUSE"). The refusal changed nothing: both sides run an fstat of the source instead.
  if (op[0] === 'fd' && op[2][0] === 'copy_file_range' && (kernel.result as { r?: { err?: string } }).r?.err === 'EXDEV') {
    op = ['fd', op[1], ['fstat', op[2][1]]];
    kernel = step(run.pair.kernel.runner, run.pair.kernel, run.k, op, true);
  }
  const strata = step(run.pair.strata.runner, run.pair.strata, run.s, op, false);
  lowerReads(run, op, kernel, strata);
  phantomWhiteouts(run, op, kernel, strata);
  return { kernel, mismatch: JSON.stringify(kernel) === JSON.stringify(strata) ? undefined : { index, kernel, strata } };
}

/**
 * The final comparisons (finishPair), then the kernel over strata's upper against the kernel over
 * its own (st_ino from the same layer objects, readdir d_ino = st_ino: issue 10, case 8).
 */
function finishRun(c: Checks, pair: Pair): void {
  finishPair(c, pair);
  compareUpperRemounts(c, pair.kernel, pair.strata, path.join(pair.base, 'r'), pair.strata.name, pair.options);
}

function lowerSources(layers: readonly Layer[]): LowerSource[] {
  return layers.map((layer) => (dir: string, i: number) => materializeLayer(dir, layer, i));
}

/** Files of more than 4 MiB are copied up in steps between requests (ASYNC_COPY_THRESHOLD): one seed in four has three at the bottom. */
const BIG_FILE_BYTES = (5 << 20) + 4321;

function seedLayers(seed: number): Layer[] {
  const layers = randomLayers(seed, { layers: 2 + (seed % 3), opsPerLayer: 14 });
  if (seed % 4 === 1) {
    for (const [k, name] of ['big', 'big2', 'bigdir/big3'].entries()) {
      const content = Buffer.alloc(BIG_FILE_BYTES + k);
      for (let i = 0; i < content.length; i++) content[i] = 33 + ((i * 7 + seed + k) % 90);
      layers.at(-1)!.push({ path: name, kind: 'file', content, mode: 0o644, xattrs: { 'user.big': 'kept' } });
    }
  }
  return layers;
}

/**
 * Replays `ops` on a fresh pair: the first step mismatch, or with `final`, the failures of the
 * final comparisons (finishPair) as a mismatch at the last step. Unmounts and removes everything.
 */
function trial(t: ExecutionContext, layers: readonly Layer[], ops: readonly Op[], final: boolean, po: PairOptions): Mismatch | undefined {
  const run = setupRun(t, layers, po);
  const { pair } = run;
  try {
    for (let i = 0; i < ops.length; i++) {
      // (a subset may put a FIFO where the whole run had a file, which an open by this process would
      // wait on, or a symlink out of the mount where an op follows one: such a subset is no repro)
      if (opensFifo(pair.kernel.mnt, ops[i]!) || leavesMount(pair.kernel.mnt, ops[i]!) || leavesMount(pair.strata.mnt, ops[i]!)) return undefined;
      const m = runStep(run, ops[i]!, i).mismatch;
      if (m) return m;
    }
    if (!final) return undefined;
    const c = new Checks(t); // records only: this trial asserts nothing
    closeDrivers(run);
    finishRun(c, pair);
    return c.failures.length ? { index: ops.length - 1, kernel: 'final comparisons pass', strata: c.failures } : undefined;
  } finally {
    closeDrivers(run);
    strataUnmount(pair.strata.mnt);
    removeTree(pair.base);
  }
}

/** Ops this process runs itself (not through a driver, whose calls time out) that would open a FIFO. */
function opensFifo(root: string, op: Op): boolean {
  if (!['read', 'pread', 'open', 'write', 'fsync', 'openUnlink'].includes(op[0])) return false;
  try {
    return fs.statSync(path.join(root, op[1] as string)).isFIFO();
  } catch {
    return false;
  }
}

/** Greedy delta debugging: drops chunks of ops as long as the failure stays (see trial), after cutting a failure of the final comparisons to its shortest failing prefix. */
function shrink(t: ExecutionContext, layers: readonly Layer[], ops: Op[], final: boolean, budgetMs: number, po: PairOptions): { ops: Op[]; trials: number } {
  const end = Date.now() + budgetMs;
  let cur = ops;
  let trials = 1;
  // Only subsets that fail the same way are kept: a subset may fail otherwise (a descriptor's command
  // left on another kind of object, or a check that the original run passed), which is no repro of it.
  const first = trial(t, layers, cur, final, po);
  if (!first) return { ops: cur, trials };
  const want = failureKind(cur, first);
  const sameFailure = (cand: readonly Op[], m: Mismatch | undefined): m is Mismatch => m !== undefined && failureKind(cand, m) === want;
  if (final) {
    // A failure the final comparisons find may come from an early op: first the shortest failing
    // prefix, by bisection (cheaper than dropping chunks of a long run one trial at a time).
    let lo = 0;
    while (cur.length - lo > 1 && Date.now() < end) {
      const mid = (lo + cur.length) >> 1;
      trials++;
      const cand = cur.slice(0, mid);
      const m = trial(t, layers, cand, true, po);
      if (sameFailure(cand, m)) cur = cand.slice(0, m.index + 1);
      else lo = mid;
    }
  }
  for (let chunk = Math.max(1, Math.floor(cur.length / 2)); chunk >= 1 && Date.now() < end; chunk = Math.floor(chunk / 2)) {
    for (let at = 0; at < cur.length && Date.now() < end; ) {
      const cand = [...cur.slice(0, at), ...cur.slice(at + chunk)];
      trials++;
      const m = cand.length ? trial(t, layers, cand, final, po) : undefined;
      if (sameFailure(cand, m)) cur = cand.slice(0, m.index + 1);
      else at += chunk;
    }
    if (chunk === 1) break;
  }
  return { ops: cur, trials };
}

/**
 * What kind of failure a trial of `ops` met: at a step, the kind of op there (a descriptor's command,
 * an op run as a user); in the final comparisons, the headlines of the checks that failed.
 */
function failureKind(ops: readonly Op[], m: Mismatch): string {
  if (m.kernel === 'final comparisons pass' && Array.isArray(m.strata)) {
    return `final: ${(m.strata as unknown[]).map((f) => String(f).split('\n')[0]!.replace(/\s*\(\d+\):?$/, '')).sort().join('; ')}`;
  }
  const op = ops[m.index];
  if (!op) return 'step';
  const inner = op[0] === 'fd' ? `fd:${String(op[2][0])}` : op[0] === 'as' ? `as:${op[3][0]}` : op[0];
  return `step: ${inner}`;
}

/** Writes the ops of a failing seed for STRATA_REPLAY (shrunk first with STRATA_SHRINK=1); returns the note to print. */
function saveFailure(t: ExecutionContext, seed: number, layers: readonly Layer[], ops: Op[], final: boolean, po: PairOptions): string {
  const replayed = process.env.STRATA_REPLAY ? `STRATA_REPLAY=${process.env.STRATA_REPLAY} ` : '';
  let note = `    repro: ${replayed}${reproCommand(seed, ops.length, po)}`;
  const file = path.join(repoRoot, `.cache/random-ops-seed${seed}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  let saved = ops;
  if (process.env.STRATA_SHRINK) {
    const small = shrink(t, layers, ops, final, Number(process.env.STRATA_SHRINK_MS ?? 300_000), po);
    t.log(`seed ${seed}: shrunk to ${small.ops.length} ops in ${small.trials} trials:\n${listing(small.ops)}`);
    saved = small.ops;
  }
  fs.writeFileSync(file, JSON.stringify(saved, null, 1) + '\n');
  note += `\n    ${process.env.STRATA_SHRINK ? 'shrunk' : 'these ops'}: STRATA_REPLAY=${file} ${reproCommand(seed, saved.length, po)}`;
  return note;
}

/** The parts of step record `a` that differ from `b` (upper listings as the names only one side has). */
function stepDiff(a: unknown, b: unknown): Record<string, unknown> {
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(x)) {
    if (JSON.stringify(x[k]) === JSON.stringify(y[k])) continue;
    if (k === 'upper') {
      const other = new Set(y[k] as string[]);
      out['upper, only here'] = (x[k] as string[]).filter((n) => !other.has(n));
    } else if (k === 'before' || k === 'after') {
      const xs = x[k] as Record<string, unknown>;
      const ys = y[k] as Record<string, unknown>;
      out[k] = Object.fromEntries(Object.keys(xs).filter((p) => JSON.stringify(xs[p]) !== JSON.stringify(ys[p])).map((p) => [p, xs[p]]));
    } else {
      out[k] = x[k];
    }
  }
  return out;
}

function reproCommand(seed: number, ops: number, po: PairOptions): string {
  const peer = process.env.STRATA_TEST_PEER ? `STRATA_TEST_PEER=${process.env.STRATA_TEST_PEER} ` : '';
  const only = (v: string): string => ['STRATA_SEEDS', 'STRATA_TMPFS_SEEDS', 'STRATA_REDIRECT_SEEDS', 'STRATA_USERXATTR_SEEDS', 'STRATA_METACOPY_SEEDS',
    'STRATA_HANDMADE_SEEDS', 'STRATA_IDMAP_SEEDS'].map((k) => `${k}=${k === v ? seed : ''}`).join(' ');
  const seeds = po.idmapShift !== undefined ? only('STRATA_IDMAP_SEEDS') : po.options?.includes('metacopy=on') ? only('STRATA_METACOPY_SEEDS') : po.upperFrom ? only('STRATA_HANDMADE_SEEDS')
    : po.options?.includes('redirect_dir=on') ? only('STRATA_REDIRECT_SEEDS') : po.options?.includes('userxattr') ? only('STRATA_USERXATTR_SEEDS')
    : po.upperOnTmpfs ? only('STRATA_TMPFS_SEEDS') : only('STRATA_SEEDS');
  return `make build && ${peer}${seeds} STRATA_OPS=${ops} npx ava --timeout=60m dist/test/random-ops.test.js`;
}

function listing(ops: readonly Op[]): string {
  return ops.map((o, j) => `  ${String(j).padStart(4)} ${showOp(o)}`).join('\n');
}

function runSeed(t: ExecutionContext, seed: number, nOps: number, po: PairOptions = {}): void {
  const layers = seedLayers(seed);
  const c = new Checks(t);
  const run = setupRun(t, layers, po);
  const { pair } = run;
  const replay = process.env.STRATA_REPLAY ? (JSON.parse(fs.readFileSync(process.env.STRATA_REPLAY, 'utf8')) as Op[]) : undefined;
  const gen = new OpGenerator(rng(seed ^ 0x5eed5eed), layerNames(layers));
  const handMade = po.upperFrom !== undefined && !po.options?.includes('metacopy=on');
  const done: Op[] = [];
  const total = replay?.length ?? nOps;
  let closing: Op[] | undefined;
  for (let i = 0; i < total || (!replay && (closing ??= gen.fd.closeAll()).length); i++) {
    const op = replay ? replay[i]! : i < total ? gen.next(list(pair.kernel.mnt)) : closing!.shift()!;
    // (over an upper made by hand a lookup may change it, as the walk above did the kernel's: the same walk here)
    if (handMade && !replay && i < total) list(pair.strata.mnt);
    done.push(op);
    const { kernel, mismatch: m } = runStep(run, op, i);
    gen.fd.observe(op, kernel.result);
    if (!m) continue;
    t.log(`seed ${seed}: ops up to the first mismatch:\n${listing(done)}`);
    closeDrivers(run);
    strataUnmount(pair.strata.mnt);
    logTrouble(t, seed, pair);
    const note = saveFailure(t, seed, layers, done, false, po);
    c.eq(stepDiff(m.strata, m.kernel), stepDiff(m.kernel, m.strata),
      `seed ${seed}, step ${i}: ${showOp(op)}: ${pair.strata.name} (actual) differs from the kernel (expected)\n${note}`);
    c.done();
    return;
  }
  t.log(`seed ${seed}: ${done.length} steps agree; ops by kind: ${summary(done)}`);
  closeDrivers(run);
  finishRun(c, pair);
  if (c.failures.length) {
    logTrouble(t, seed, pair);
    c.t.log(`seed ${seed}: the final comparisons failed\n${saveFailure(t, seed, layers, done, true, po)}`);
  }
  c.done();
}

/** Shows, with a failure, the warnings and errors strata's daemon logged (a daemon that failed says why there). */
function logTrouble(t: ExecutionContext, seed: number, pair: Pair): void {
  const trouble = daemonTrouble(pair);
  if (trouble) t.log(`seed ${seed}: the daemon logged:\n${trouble}`);
}

function summary(ops: readonly Op[]): string {
  const n = new Map<string, number>();
  for (const op of ops) {
    const k = op[0] === 'as' ? `as:${op[3][0]}` : op[0] === 'fd' ? `fd:${op[2][0]}` : op[0];
    n.set(k, (n.get(k) ?? 0) + 1);
  }
  return [...n].sort().map(([k, v]) => `${k} ${v}`).join(', ');
}

// Serial: each seed's mounts and temp dirs go away (teardown) before the next seed starts.
for (const seed of SEEDS) {
  test.serial(`seed ${seed}: ${OPS} random operations agree with the kernel`, (t) => runSeed(t, seed, OPS));
}
// The same with each side's upper and work directory on a tmpfs of its own, over lowers on the temp
// directory's filesystem: copy-ups cross filesystems (no reflink, no copy_file_range). The kernel maps
// inode numbers of two filesystems into one space only with xino=on, which its mounts then get (strata
// always does: README, "Inode numbers").
for (const seed of TMPFS_SEEDS) {
  test.serial(`seed ${seed}, uppers on a tmpfs: ${OPS} random operations agree with the kernel`,
    (t) => runSeed(t, seed, OPS, { upperOnTmpfs: true }));
}
// The same with redirect_dir=on on both sides: renames of directories with lower layers succeed with a
// redirect instead of EXDEV, and the uppers must agree, xattrs included.
for (const seed of REDIRECT_SEEDS) {
  test.serial(`seed ${seed}, redirect_dir=on: ${OPS} random operations agree with the kernel`,
    (t) => runSeed(t, seed, OPS, { options: ['redirect_dir=on'] }));
}
// The same with userxattr on both sides (see USERXATTR_SEEDS).
for (const seed of USERXATTR_SEEDS) {
  test.serial(`seed ${seed}, userxattr: ${OPS} random operations agree with the kernel`,
    (t) => runSeed(t, seed, OPS, { options: ['userxattr'] }));
}
// The same with metacopy=on on both sides, over a kernel-written upper of metadata-only copies (see METACOPY_SEEDS).
for (const seed of METACOPY_SEEDS) {
  test.serial(`seed ${seed}, metacopy=on over the kernel's metadata-only copies: ${OPS} random operations agree with the kernel`,
    (t) => runSeed(t, seed, OPS, { options: ['metacopy=on'], upperFrom: kernelMetacopies(seed) }));
}

// The same with an owner mapping (see IDMAP_SEEDS).
for (const seed of IDMAP_SEEDS) {
  test.serial(`seed ${seed}, uidmapping= (the kernel over idmapped layers): ${OPS} random operations agree with the kernel`,
    (t) => runSeed(t, seed, OPS, { idmapShift: 100000 }));
}

// The same over an upper made by hand (see HANDMADE_SEEDS).
for (const seed of HANDMADE_SEEDS) {
  test.serial(`seed ${seed}, over an upper made by hand: ${OPS} random operations agree with the kernel`,
    (t) => runSeed(t, seed, OPS, { upperFrom: handMadeUpper(seed) }));
}

/**
 * An upper as a tool other than an overlay makes one: about half the directories the lowers hold, made
 * again in the upper with mkdir (no overlay.origin; their parents too), some with a new file, chosen by
 * `seed` (the same for both sides' copies).
 */
function handMadeUpper(seed: number): (upper: string, lowers: string[]) => void {
  return (upper, lowers) => {
    const r = rng(seed * 104729 + 3);
    const dirs = new Set<string>();
    for (const lower of lowers) for (const p of walk(lower).slice(1)) if (fs.lstatSync(path.join(lower, p)).isDirectory()) dirs.add(p);
    let n = 0;
    for (const d of [...dirs].sort()) {
      if (r() < 0.5) continue;
      try {
        fs.mkdirSync(path.join(upper, d), { recursive: true, mode: 0o755 });
        if (r() < 0.3) fs.writeFileSync(path.join(upper, d, `hm-${n++}`), 'hand made\n');
      } catch {
        // (a name a non-directory holds in the upper already)
      }
    }
  };
}

/**
 * Writes an upper through a kernel overlay with metacopy=on: chmod, chown, utimes (metadata-only copies
 * of lower files), renames within and across directories (redirects), and hard links of some of them,
 * chosen by `seed` among the merged tree's regular files (the same choices for both sides' copies).
 */
function kernelMetacopies(seed: number): (upper: string, lowers: string[]) => void {
  return (upper, lowers) => {
    const gen = fs.mkdtempSync(path.join(path.dirname(upper), 'mc'));
    const mnt = path.join(gen, 'm');
    fs.mkdirSync(path.join(gen, 'w'));
    fs.mkdirSync(mnt);
    const m = runCmd('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${gen}/w,metacopy=on`, mnt]);
    if (m.status !== 0) throw new Error(`kernel overlay with metacopy=on: ${m.stderr.trim()}`);
    try {
      const r = rng(seed * 7919 + 1);
      // (names the kernel lists but cannot look up, its phantom whiteouts, are left out)
      const kinds = walk(mnt).slice(1).map((p) => [p, fs.lstatSync(path.join(mnt, p), { throwIfNoEntry: false })] as const);
      const files = kinds.filter(([, st]) => st?.isFile()).map(([p]) => p).sort();
      const dirs = ['', ...kinds.filter(([, st]) => st?.isDirectory()).map(([p]) => p).sort()];
      let n = 0;
      for (const f of files) {
        const x = r();
        if (x > 0.6) continue;
        const p = path.join(mnt, f);
        try {
          fs.chmodSync(p, [0o600, 0o640, 0o755, 0o4755, 0o444][Math.floor(r() * 5)]!);
          if (x < 0.3) fs.chownSync(p, 1000 + Math.floor(r() * 3), 1000);
          if (x < 0.2) fs.utimesSync(p, 1_000_000 + n, 2_000_000 + n);
          if (x < 0.15) fs.renameSync(p, path.join(mnt, dirs[Math.floor(r() * dirs.length)]!, `mc-moved-${n}`));
          else if (x < 0.25) fs.linkSync(p, path.join(mnt, path.dirname(f), `mc-link-${n}`));
        } catch {
          // (whatever the kernel refuses here, it refuses on both sides' copies alike)
        }
        n++;
      }
    } finally {
      runCmd('umount', [mnt]);
    }
    fs.rmSync(gen, { recursive: true, force: true });
  };
}
