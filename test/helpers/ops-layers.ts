// Deterministic layer builder for the write-path tests: the same spec built twice gives two
// trees equal in everything but inode numbers and ctimes (one for the kernel overlay, one for
// strata). Every entry gets a fixed, distinct atime/mtime with nanoseconds, years in the past,
// so that a preserved time is told apart from "now".
import fs from 'node:fs';
import path from 'node:path';
import { xop, type XCmd } from './ops-xop.js';

export type Entry =
  | { t: 'file'; p: string; data?: string; mode?: number; uid?: number; gid?: number; xattrs?: Record<string, string>;
      /** A sparse file of this size; `data` is written at `at`. */ sparse?: { size: number; at: number } }
  | { t: 'dir'; p: string; mode?: number; uid?: number; gid?: number; xattrs?: Record<string, string>; opaque?: boolean }
  | { t: 'symlink'; p: string; target: string; uid?: number; gid?: number }
  | { t: 'fifo'; p: string; mode?: number; uid?: number; gid?: number }
  | { t: 'whiteout'; p: string }
  /** A hard link to an earlier entry of the same layer. */
  | { t: 'link'; p: string; to: string };

export type LayerSpec = readonly Entry[];

/** 2001-09-09T01:46:40Z plus the entry's index: old enough to be told from anything made by a test. */
export const FIXTURE_EPOCH = 1_000_000_000n;
/**
 * Times at or after this (an hour before the test process started) count as "made during the
 * test" when snapshots normalise times; fixtures (here and in generators.ts) are years older.
 */
export const RECENT_NS = BigInt(Date.now() - 3_600_000) * 1_000_000n;

/** setfattr-style value: "0x..." hex, "0s..." base64, else the UTF-8 text. */
export function xattrValue(v: string): Buffer {
  if (v.startsWith('0x')) return Buffer.from(v.slice(2), 'hex');
  if (v.startsWith('0s')) return Buffer.from(v.slice(2), 'base64');
  return Buffer.from(v, 'utf8');
}

function fixtureTime(layerIndex: number, i: number): { a: [bigint, number]; m: [bigint, number] } {
  const sec = FIXTURE_EPOCH + BigInt(layerIndex * 100_000 + i * 10);
  return { a: [sec - 5000n, 111_111_111 + i], m: [sec, 123_456_789 - i] };
}

/**
 * Builds `spec` into `dir` (which must exist). Missing parents are created 0755 root:root.
 * `layerIndex` only varies the fixed times between layers.
 */
export function buildLayer(dir: string, spec: LayerSpec, layerIndex = 0): void {
  const cmds: XCmd[] = [];
  const made: string[] = [''];
  const ensureParents = (rel: string): void => {
    const parts = rel.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (!fs.existsSync(path.join(dir, p))) {
        fs.mkdirSync(path.join(dir, p), { mode: 0o755 });
        made.push(p);
      }
    }
  };
  for (const e of spec) {
    const full = path.join(dir, e.p);
    ensureParents(e.p);
    switch (e.t) {
      case 'file': {
        const fd = fs.openSync(full, 'wx', 0o644);
        if (e.sparse) {
          fs.ftruncateSync(fd, e.sparse.size);
          fs.writeSync(fd, e.data ?? '', e.sparse.at);
        } else {
          fs.writeSync(fd, e.data ?? '');
        }
        fs.closeSync(fd);
        break;
      }
      case 'dir':
        fs.mkdirSync(full, { mode: 0o755 });
        if (e.opaque) cmds.push(['setxattr', full, 'trusted.overlay.opaque', 'y', 0]);
        break;
      case 'symlink':
        fs.symlinkSync(e.target, full);
        break;
      case 'fifo':
        cmds.push(['mknod', full, 0o010000 | (e.mode ?? 0o644), 0, 0]);
        break;
      case 'whiteout':
        cmds.push(['mknod', full, 0o020000, 0, 0]);
        break;
      case 'link':
        fs.linkSync(path.join(dir, e.to), full);
        break;
    }
    if (e.t !== 'link') made.push(e.p);
  }
  // Nodes made by mknod must exist before owners, modes and xattrs are set on them.
  flush(cmds);
  for (const e of spec) {
    const full = path.join(dir, e.p);
    if ('xattrs' in e && e.xattrs) {
      for (const [k, v] of Object.entries(e.xattrs)) cmds.push(['setxattr', full, k, xattrValue(v), 0]);
    }
    const own = e as { uid?: number; gid?: number };
    if (own.uid !== undefined || own.gid !== undefined) cmds.push(['lchown', full, own.uid ?? 0, own.gid ?? 0]);
    // chmod after chown: chown clears setuid/setgid.
    if ((e.t === 'file' || e.t === 'dir' || e.t === 'fifo') && e.mode !== undefined) cmds.push(['chmod', full, e.mode]);
  }
  flush(cmds);
  // Times last, deepest first, so that creating children does not move a parent's mtime.
  const order = made.map((p, i) => ({ p, i })).sort((a, b) => b.p.split('/').length - a.p.split('/').length || b.i - a.i);
  for (const { p, i } of order) {
    const tm = fixtureTime(layerIndex, i);
    cmds.push(['utimens', path.join(dir, p), tm.a[0], tm.a[1], tm.m[0], tm.m[1]]);
  }
  flush(cmds);
}

function flush(cmds: XCmd[]): void {
  const res = xop(cmds);
  res.forEach((r, i) => {
    if ('err' in r) throw new Error(`layer builder: ${cmds[i]![0]} ${String(cmds[i]![1])}: ${r.err}`);
  });
  cmds.length = 0;
}
