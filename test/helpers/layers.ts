// Declarative layers: a layer is a list of entries, materialized into a directory with exact
// modes, owners, xattrs and nanosecond mtimes, in either whiteout format.
import fs from 'node:fs';
import path from 'node:path';
import * as N from '../../src/native/index.js';
import { absBytes, bytesOf, pyPath } from './names.js';
import { OPS, python } from './python.js';

export type EntryKind =
  | 'file'
  | 'dir'
  | 'symlink'
  | 'fifo'
  | 'socket'
  | 'chardev'
  | 'hardlink'
  /** kernel format: character device 0/0 named like the hidden entry */
  | 'whiteout'
  /** OCI format: empty file `.wh.NAME` next to where NAME would be */
  | 'ociWhiteout'
  /** kernel format: directory with trusted.overlay.opaque=y */
  | 'opaque'
  /** OCI format: directory holding an empty `.wh..wh..opq` file */
  | 'ociOpaque';

export interface Entry {
  /**
   * Relative to the layer root, '/'-separated. Parents are created as needed (0755). A name
   * that is not UTF-8 is written with \xNN escapes (see names.ts).
   */
  path: string;
  kind: EntryKind;
  content?: string | Buffer;
  /** Permission bits including setuid/setgid/sticky (not for symlinks). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds (number) or nanoseconds (bigint) since the epoch; default: per-layer constant. */
  mtime?: number | bigint;
  xattrs?: Record<string, string | Buffer>;
  /** symlink target (\xNN escapes as in path) */
  target?: string;
  /** hardlink: path (in the same layer) of the existing entry to link to */
  linkTo?: string;
  /** chardev: [major, minor] (default 1/3) */
  rdev?: [number, number];
}

export type Layer = Entry[];

export const OCI_WHITEOUT_PREFIX = '.wh.';
export const OCI_OPAQUE_NAME = '.wh..wh..opq';
export const OPAQUE_XATTR = 'trusted.overlay.opaque';

/** Default mtime of everything in layer `i`: distinct per layer, with a nanosecond part. */
export function defaultMtimeNs(layerIndex: number): bigint {
  return 1_600_000_000_000_000_000n + BigInt(layerIndex) * 86_400_000_000_000n + 123_456_789n;
}

function toNs(m: number | bigint): bigint {
  return typeof m === 'bigint' ? m : BigInt(Math.round(m * 1e9));
}

function isDirKind(k: EntryKind): boolean {
  return k === 'dir' || k === 'opaque' || k === 'ociOpaque';
}

type Op = (string | number)[];

/**
 * Creates `entries` under `dir` (which may already exist). Mtimes are set last, deepest first,
 * for every entry, every implicit parent and the layer root.
 */
export function materializeLayer(dir: string, entries: Layer, layerIndex = 0): void {
  const plan = new LayerPlan(dir, entries, layerIndex);
  python<boolean>(OPS, plan.specialOps);
  plan.create();
  python<boolean>(OPS, plan.metaOps);
}

/**
 * Materializing one layer in three phases, so that many layers share two Python runs: special
 * files (FIFOs, sockets, devices, whiteouts) first so hardlinks may point at them, then files,
 * directories and links from Node, then owners, modes, xattrs and times.
 */
class LayerPlan {
  readonly specialOps: Op[] = [];
  readonly metaOps: Op[] = [];
  private readonly kinds = new Map<string, EntryKind>();
  private readonly mtimes: Map<string, bigint>;
  private readonly stamp: bigint;

  constructor(
    private readonly dir: string,
    private readonly entries: Layer,
    layerIndex: number,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    this.stamp = defaultMtimeNs(layerIndex);
    this.mtimes = new Map([['', this.stamp]]);
    for (const e of entries) {
      const mode = e.mode ?? 0o644;
      const p = pyPath(this.abs(e.path));
      if (e.kind === 'fifo') this.specialOps.push(['mkfifo', p, mode]);
      else if (e.kind === 'socket') this.specialOps.push(['socket', p]);
      else if (e.kind === 'chardev') this.specialOps.push(['mknod', p, fs.constants.S_IFCHR | mode, ...(e.rdev ?? [1, 3])]);
      else if (e.kind === 'whiteout') this.specialOps.push(['mknod', p, fs.constants.S_IFCHR | (e.mode ?? 0), 0, 0]);
      else continue;
      this.ensureParents(e.path);
    }
  }

  private abs(rel: string): Buffer {
    return absBytes(this.dir, rel);
  }

  private ensureParents(rel: string): void {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      const k = this.kinds.get(p);
      if (k === undefined) {
        fs.mkdirSync(this.abs(p), { recursive: true });
        this.kinds.set(p, 'dir');
        this.mtimes.set(p, this.stamp);
        this.metaOps.push(['chmod', pyPath(this.abs(p)), 0o755]);
      } else if (!isDirKind(k)) {
        throw new Error(`layer entry ${rel}: parent ${p} is a ${k}`);
      }
    }
  }

  create(): void {
    const { stamp, kinds, mtimes, metaOps } = this;
    for (const e of this.entries) {
      const rel = e.path.replace(/^\/+|\/+$/g, '');
      if (rel === '' && !isDirKind(e.kind)) throw new Error('only a directory kind may describe the layer root');
      const key = e.kind === 'ociWhiteout' ? ociWhiteoutPath(rel) : rel;
      if (rel !== '' && kinds.has(key) && !(isDirKind(e.kind) && kinds.get(key) === 'dir')) {
        throw new Error(`layer entry ${key} declared twice`);
      }
      if (rel !== '') this.ensureParents(rel);
      const p = this.abs(rel);
      const metaPath = pyPath(this.abs(key)); // what mode/owner/xattrs/mtime apply to
      switch (e.kind) {
        case 'file':
          fs.writeFileSync(p, e.content ?? '');
          break;
        case 'dir':
        case 'opaque':
        case 'ociOpaque':
          fs.mkdirSync(p, { recursive: true });
          if (e.kind === 'opaque') metaOps.push(['setxattr', metaPath, OPAQUE_XATTR, Buffer.from('y').toString('hex')]);
          if (e.kind === 'ociOpaque') {
            const marker = rel === '' ? OCI_OPAQUE_NAME : `${rel}/${OCI_OPAQUE_NAME}`;
            fs.writeFileSync(this.abs(marker), '');
            metaOps.push(['chmod', pyPath(this.abs(marker)), 0o644]);
            mtimes.set(marker, e.mtime === undefined ? stamp : toNs(e.mtime));
          }
          break;
        case 'symlink':
          if (e.target === undefined) throw new Error(`symlink ${rel} needs a target`);
          fs.symlinkSync(bytesOf(e.target), p);
          break;
        case 'hardlink':
          if (e.linkTo === undefined) throw new Error(`hardlink ${rel} needs linkTo`);
          fs.linkSync(this.abs(e.linkTo), p);
          break;
        case 'ociWhiteout':
          fs.writeFileSync(this.abs(key), '');
          break;
        case 'fifo':
        case 'socket':
        case 'chardev':
        case 'whiteout':
          break; // created in the first phase
      }
      kinds.set(key, e.kind);
      if (e.uid !== undefined || e.gid !== undefined) metaOps.push(['lchown', metaPath, e.uid ?? -1, e.gid ?? -1]);
      // chmod after chown: chown clears setuid/setgid
      if (e.kind !== 'symlink' && e.kind !== 'hardlink') {
        const defMode = isDirKind(e.kind) ? 0o755 : e.kind === 'whiteout' ? 0 : 0o644;
        metaOps.push(['chmod', metaPath, e.mode ?? defMode]);
      } else if (e.kind === 'hardlink' && e.mode !== undefined) {
        metaOps.push(['chmod', metaPath, e.mode]);
      }
      for (const [name, value] of Object.entries(e.xattrs ?? {})) {
        metaOps.push(['setxattr', metaPath, name, Buffer.from(value).toString('hex')]);
      }
      if (e.kind !== 'hardlink' || e.mtime !== undefined) {
        mtimes.set(key, e.mtime === undefined ? stamp : toNs(e.mtime));
      }
    }
    // Deepest first, so creating children no longer disturbs a parent's time.
    const byDepth = [...mtimes.entries()].sort((a, b) => depth(b[0]) - depth(a[0]));
    for (const [rel, ns] of byDepth) metaOps.push(['utime', pyPath(this.abs(rel)), ns.toString(), ns.toString()]);
  }
}

/** `a/b` -> `a/.wh.b` */
export function ociWhiteoutPath(rel: string): string {
  const slash = rel.lastIndexOf('/');
  return rel.slice(0, slash + 1) + OCI_WHITEOUT_PREFIX + rel.slice(slash + 1);
}

function depth(rel: string): number {
  return rel === '' ? 0 : rel.split('/').length;
}

/**
 * Materializes layers (given top first, as in lowerdir=) as `root/0`, `root/1`, ... with 0 the
 * top layer, and returns their paths in the same order.
 */
export function materializeLayers(root: string, layers: readonly Layer[], names?: readonly string[]): string[] {
  // Default times grow towards the top layer, so the winner of a merge is visible in its mtime.
  const dirs = layers.map((_, i) => path.join(root, names?.[i] ?? String(i)));
  const plans = layers.map((entries, i) => new LayerPlan(dirs[i]!, entries, layers.length - i));
  python<boolean>(OPS, plans.flatMap((p) => p.specialOps));
  for (const p of plans) p.create();
  python<boolean>(OPS, plans.flatMap((p) => p.metaOps));
  // Written back before any mount looks: ext4 counts a file's delayed-allocation blocks in st_blocks
  // apart from i_blocks, and a stat racing with their writeback can see 0 (a cached stat on one
  // side, a later one on the other: a difference neither overlay made).
  const fd = fs.openSync(root, 'r');
  try {
    N.syncfs(fd);
  } finally {
    fs.closeSync(fd);
  }
  return dirs;
}

/** The same layers with every whiteout and opaque marker written in the other format. */
export function toFormat(layers: readonly Layer[], format: 'kernel' | 'oci'): Layer[] {
  const map: Partial<Record<EntryKind, EntryKind>> =
    format === 'oci' ? { whiteout: 'ociWhiteout', opaque: 'ociOpaque' } : { ociWhiteout: 'whiteout', ociOpaque: 'opaque' };
  const whiteout = (k: EntryKind): boolean => k === 'whiteout' || k === 'ociWhiteout';
  // a whiteout's own mode means nothing and differs between the formats (0 vs 0644)
  return layers.map((l) => l.map((e) => ({ ...e, kind: map[e.kind] ?? e.kind, ...(whiteout(e.kind) ? { mode: undefined } : {}) })));
}
