// A snapshot of a tree as seen through lstat/readdir/getxattr, for comparing a strata mount
// with the kernel's overlay of the same layers (or a layer with itself, before and after).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run } from './exec.js';
import { absBytes, keyOf } from './names.js';
import { WALK, python } from './python.js';

export type NodeType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev';

export interface NodeInfo {
  type: NodeType;
  /** Permission bits including setuid/setgid/sticky. */
  mode: number;
  uid: number;
  gid: number;
  size: string;
  /** Link count, non-directories only (overlayfs reports 1 for merged directories). */
  nlink?: number;
  /** 'major:minor', devices only */
  rdev?: string;
  /** sha256 of the content, regular files only */
  sha256?: string;
  /** symlinks only (a key, see names.ts) */
  target?: string;
  /** name → hex value, sorted by name */
  xattrs: Record<string, string>;
  mtimeNs: string;
  /** Only comparable when both sides read the very same files (not copies). */
  ctimeNs: string;
  /** st_blocks (512-byte units): holes, and what du shows */
  blocks: string;
}

export interface Snapshot {
  root: string;
  /** '.' for the root, 'a/b' below it (keys: see names.ts for names that are not UTF-8) */
  nodes: Map<string, NodeInfo>;
  /** directory → sorted 'name type' lines from raw readdir (d_type spelled out) */
  listings: Map<string, string[]>;
  /** path → st_ino (lstat) */
  inodes: Map<string, bigint>;
  /** path → d_ino from its parent's readdir */
  dinos: Map<string, bigint>;
  /** st_dev of every path, deduplicated */
  devs: Set<bigint>;
  /** readdir returned the name but lstat failed: 'path: ERRNO' */
  phantoms: string[];
  /** directories that could not be read: 'path: ERRNO' */
  errors: string[];
}

const DT_NAMES: Record<number, string> = { 0: 'unknown', 1: 'fifo', 2: 'chardev', 4: 'dir', 6: 'blockdev', 8: 'file', 10: 'symlink', 12: 'socket', 14: 'whiteout' };

export function typeOf(st: fs.BigIntStats | fs.Stats): NodeType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  return 'blockdev';
}

export function sha256File(p: fs.PathLike): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(p, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function major(dev: bigint): bigint {
  return ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
}
function minor(dev: bigint): bigint {
  return (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
}

/** Parses `getfattr -R -d -m - -e hex --absolute-names` output: path key → {name: hex}. */
function readAllXattrs(root: string): Map<string, Record<string, string>> {
  const r = run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root], { timeoutMs: 120_000, binary: true });
  const out = new Map<string, Record<string, string>>();
  const prefix = Buffer.from(path.join(root, '/'));
  let cur: Record<string, string> | undefined;
  for (const line of splitLines(r.stdoutBytes!)) {
    const header = Buffer.from('# file: ');
    if (line.subarray(0, header.length).equals(header)) {
      const abs = unescapeGetfattr(line.subarray(header.length));
      const rel = abs.equals(Buffer.from(root)) ? '.' : keyOf(abs.subarray(prefix.length));
      cur = {};
      out.set(rel, cur);
    } else if (line.length && cur) {
      const text = line.toString('latin1');
      const eq = text.indexOf('=');
      const name = eq < 0 ? text : text.slice(0, eq);
      cur[name] = eq < 0 ? '' : text.slice(eq + 1).replace(/^0x/, '');
    }
  }
  return out;
}

function splitLines(b: Buffer): Buffer[] {
  const lines: Buffer[] = [];
  for (let start = 0; start < b.length; ) {
    let nl = b.indexOf(0x0a, start);
    if (nl < 0) nl = b.length;
    lines.push(b.subarray(start, nl));
    start = nl + 1;
  }
  return lines;
}

/** getfattr writes unprintable bytes and backslashes of file names as a backslash and 3 octal digits. */
function unescapeGetfattr(raw: Buffer): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const octal = raw[i] === 0x5c ? raw.subarray(i + 1, i + 4).toString('latin1') : '';
    if (/^[0-7]{3}$/.test(octal)) {
      bytes.push(parseInt(octal, 8));
      i += 3;
    } else {
      bytes.push(raw[i]!);
    }
  }
  return Buffer.from(bytes);
}

export interface SnapshotOptions {
  /** Skip hashing file contents (faster for trees whose contents are compared otherwise). */
  noContent?: boolean;
}

/** Walks `root` without following symlinks; see Snapshot. */
export function snapshot(root: string, opts: SnapshotOptions = {}): Snapshot {
  const snap: Snapshot = {
    root,
    nodes: new Map(),
    listings: new Map(),
    inodes: new Map(),
    dinos: new Map(),
    devs: new Set(),
    phantoms: [],
    errors: [],
  };
  const walked = python<[string, string | null, [string, string, number, string][]][]>(WALK, null, [root]);
  const xattrs = readAllXattrs(root);
  const paths = ['.'];
  for (const [dirHex, err, ents] of walked) {
    const dir = dirHex === '' ? '.' : keyOf(Buffer.from(dirHex, 'hex'));
    if (err) {
      snap.errors.push(`${dir}: ${err}`);
      continue;
    }
    const lines: string[] = [];
    for (const [nameHex, dino, dtype, stIno] of ents) {
      if (stIno.startsWith('READDIR_')) {
        snap.errors.push(`${dir}: readdir ${stIno.slice(8)}`);
        continue;
      }
      const name = keyOf(Buffer.from(nameHex, 'hex'));
      const rel = dir === '.' ? name : `${dir}/${name}`;
      if (!/^\d+$/.test(stIno)) {
        snap.phantoms.push(`${rel}: ${stIno}`);
        continue;
      }
      lines.push(`${name} ${DT_NAMES[dtype] ?? `dtype${dtype}`}`);
      snap.dinos.set(rel, BigInt(dino));
      paths.push(rel);
    }
    snap.listings.set(dir, lines.sort());
  }
  for (const rel of paths) {
    const abs = absBytes(root, rel);
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(abs, { bigint: true });
    } catch (e) {
      snap.errors.push(`${rel}: lstat ${(e as NodeJS.ErrnoException).code}`);
      continue;
    }
    const type = typeOf(st);
    const info: NodeInfo = {
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: st.size.toString(),
      xattrs: Object.fromEntries(Object.entries(xattrs.get(rel) ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
      mtimeNs: st.mtimeNs.toString(),
      ctimeNs: st.ctimeNs.toString(),
      blocks: st.blocks.toString(),
    };
    if (type !== 'dir') info.nlink = Number(st.nlink);
    if (type === 'chardev' || type === 'blockdev') info.rdev = `${major(st.rdev)}:${minor(st.rdev)}`;
    if (type === 'symlink') info.target = keyOf(fs.readlinkSync(abs, 'buffer'));
    if (type === 'file' && !opts.noContent) {
      try {
        info.sha256 = sha256File(abs);
      } catch (e) {
        info.sha256 = `read error ${(e as NodeJS.ErrnoException).code}`;
      }
    }
    snap.nodes.set(rel, info);
    snap.inodes.set(rel, st.ino);
    snap.devs.add(st.dev);
  }
  return snap;
}
