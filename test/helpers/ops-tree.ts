// Tree snapshots for differential tests: the merged view of two mounts, two upper directories
// (in the kernel's on-disk format) and lower layers before/after, each reduced to what must be
// equal. Times made during a test differ between the two runs, so they read "new"; fixture times
// (years ago) and anything copied from them must match to the nanosecond.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { RECENT_NS } from './ops-layers.js';
import { errnoName, xop } from './ops-xop.js';

export type Kind = 'file' | 'dir' | 'symlink' | 'fifo' | 'chr' | 'blk' | 'sock' | 'whiteout';

export interface NodeInfo {
  type: Kind;
  /** Permission bits including setuid/setgid/sticky. */
  perm: string;
  uid: number;
  gid: number;
  nlink?: number;
  size?: number;
  sha?: string;
  target?: string;
  rdev?: string;
  mtime?: string;
  ctime?: string;
  /** Identity: the first path (in walk order) with the same st_ino, or the raw number for lowers. */
  ino?: string;
  xattrs: Record<string, string>;
}

export type Snapshot = Record<string, NodeInfo>;

/**
 * Kernel-internal overlay xattrs that only the kernel's index=on writes (nlink caches, index entries'
 * upper). The impure mark and protattr are compared: strata sets and removes them where the kernel
 * does. So is an origin, by
 * whether there is one and whether it is empty (its file handle names each side's own lower copy),
 * and the upper root's uuid by whether there is one (random).
 */
const KERNEL_INTERNAL = /^(trusted|user)\.overlay\.(nlink|upper)$/;
const ORIGIN = /^(trusted|user)\.overlay\.(origin|uuid)$/;

export type SnapshotMode =
  /** A mounted union: dir nlink and sizes included, times normalised. */
  | 'merged'
  /**
   * An upper dir: link counts and directory sizes included (a tmpfs's count entries, whiteouts too);
   * whiteouts as any object, so which of them share an inode (unlink's and rmdir's are links of the one
   * the mount shares, a rename's has its own) is compared; origins by presence, times normalised.
   */
  | 'upper'
  /** A lower layer, to prove it unchanged: everything exact, ctime and inode numbers included. */
  | 'lower';

export function kindOf(st: fs.BigIntStats): Kind {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return st.rdev === 0n ? 'whiteout' : 'chr';
  if (st.isBlockDevice()) return 'blk';
  return 'sock';
}

/** "new" for a time made during the test, else the exact nanoseconds. */
export function normTime(ns: bigint): string {
  return ns >= RECENT_NS ? 'new' : ns.toString();
}

function hashFile(p: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(p, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex').slice(0, 16);
}

/** Walks `root` (not following symlinks), sorted, parents before children. */
export function walk(root: string): string[] {
  const out: string[] = [''];
  const rec = (rel: string): void => {
    let names: string[];
    try {
      names = fs.readdirSync(path.join(root, rel)).sort();
    } catch {
      return; // snapshot() records the error for this directory
    }
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      out.push(r);
      let isDir = false;
      try {
        isDir = fs.lstatSync(path.join(root, r)).isDirectory();
      } catch {
        // recorded by snapshot()
      }
      if (isDir) rec(r);
    }
  };
  rec('');
  return out;
}

export interface SnapshotOptions {
  /** Relative paths (and everything below) to leave out. */
  exclude?: readonly string[];
}

export function snapshot(root: string, mode: SnapshotMode, opts: SnapshotOptions = {}): Snapshot {
  const excluded = (r: string): boolean => (opts.exclude ?? []).some((e) => r === e || r.startsWith(e + '/'));
  const rels = walk(root).filter((r) => !excluded(r));
  const full = rels.map((r) => path.join(root, r));
  const xres = xop(full.map((p) => ['xattrs', p]));
  const snap: Snapshot = {};
  const firstByIno = new Map<bigint, string>();
  rels.forEach((rel, i) => {
    const p = full[i]!;
    const name = rel === '' ? '.' : rel;
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(p, { bigint: true });
    } catch (e) {
      // A name readdir lists but lookup cannot find: the kernel lists the whiteouts of a directory
      // only one layer has; the shared snapshot (compare.ts) reports such phantoms on strata's side.
      if (errCode(e) === 'ENOENT') return;
      snap[name] = { type: `lstat error ${errCode(e)}` as Kind, perm: '', uid: -1, gid: -1, xattrs: {} };
      return;
    }
    const type = kindOf(st);
    if (type === 'dir') {
      try {
        fs.readdirSync(p);
      } catch (e) {
        snap[name + '/'] = { type: `readdir error ${errCode(e)}` as Kind, perm: '', uid: -1, gid: -1, xattrs: {} };
      }
    }
    const info: NodeInfo = {
      type,
      perm: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      xattrs: {},
    };
    info.nlink = Number(st.nlink);
    info.size = Number(st.size);
    if (type === 'file') {
      try {
        info.sha = hashFile(p);
      } catch (e) {
        info.sha = `read error ${errCode(e)}`;
      }
    }
    if (type === 'symlink') {
      try {
        info.target = fs.readlinkSync(p);
      } catch (e) {
        info.target = `readlink error ${errCode(e)}`;
      }
    }
    if (type === 'chr' || type === 'blk') info.rdev = st.rdev.toString();
    if (mode === 'lower') {
      info.mtime = st.mtimeNs.toString();
      info.ctime = st.ctimeNs.toString();
      info.ino = st.ino.toString();
    } else {
      info.mtime = normTime(st.mtimeNs);
      const first = firstByIno.get(st.ino);
      if (first === undefined) firstByIno.set(st.ino, name);
      info.ino = first ?? name;
    }
    const xr = xres[i]!;
    if ('err' in xr) {
      info.xattrs['<listxattr>'] = xr.err;
    } else {
      for (const kv of xr.ok) {
        const [k, v] = kv.split(':') as [string, string];
        const key = Buffer.from(k, 'hex').toString('utf8');
        if (mode === 'upper' && KERNEL_INTERNAL.test(key)) continue;
        if (mode === 'upper' && ORIGIN.test(key) && !v.startsWith('ERR')) info.xattrs[key] = v === '' ? '(empty)' : '(a value)';
        else info.xattrs[key] = v.startsWith('ERR') ? v : printable(Buffer.from(v, 'hex'));
      }
      // listxattr order is the filesystem's business
      info.xattrs = Object.fromEntries(Object.entries(info.xattrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    }
    snap[name] = info;
  });
  return snap;
}

function errCode(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return typeof err.errno === 'number' ? errnoName(-err.errno) : String(err.code ?? e);
}

/** Text values as text, others as 0x-hex. */
function printable(b: Buffer): string {
  return /^[\x20-\x7e]*$/.test(b.toString('latin1')) ? b.toString('latin1') : '0x' + b.toString('hex');
}

export interface Difference {
  path: string;
  /** Only the fields that differ; `missing` when the entry is absent on that side. */
  [side: string]: unknown;
}

/** Entries that differ between two snapshots, with only the differing fields, labelled by side. */
export function diffSnapshots(a: Snapshot, b: Snapshot, names: [string, string] = ['kernel', 'strata']): Difference[] {
  const out: Difference[] = [];
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  for (const k of keys) {
    const x = a[k];
    const y = b[k];
    if (!x || !y) {
      out.push({ path: k, [names[0]]: x ?? 'missing', [names[1]]: y ?? 'missing' });
      continue;
    }
    const dx: Record<string, unknown> = {};
    const dy: Record<string, unknown> = {};
    for (const f of new Set([...Object.keys(x), ...Object.keys(y)]) as Set<keyof NodeInfo>) {
      if (JSON.stringify(x[f]) !== JSON.stringify(y[f])) {
        dx[f] = x[f];
        dy[f] = y[f];
      }
    }
    if (Object.keys(dx).length) out.push({ path: k, [names[0]]: dx, [names[1]]: dy });
  }
  return out;
}
