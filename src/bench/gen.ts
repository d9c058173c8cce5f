// The layers `strata bench` generates when it is given none: reproducible from a seed.
//
// The image (three layers, top first, the kernel's whiteout format):
//   l2 (base)  tree/dNN/fNNNN   small files with data (read-all, walks)
//              cu/SIZE          one file per copy-up size, real data (copy-up latency)
//              seq/big          the sequential-read file
//              meta/mNNNN       files for metadata-only copy-up (chmod)
//              del/dNN/fNNNN    a tree to delete (whiteouts)
//              ren/rNNNN        files to rename
//   l1         overrides of some tree files, whiteouts of others, an opaque directory
//   l0 (top)   a whiteout of a whole directory, a few new files
// The wide layer: 100k empty files in directories of 1000 (the daemon's memory after a walk).
// The deep stack: 40 layers with a directory `deep` in each, filler files in every layer, the
// target files only in the bottom one (a lookup searches all 40).
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as N from '../native/index.js';

export interface Sizes {
  /** Small files in the image's tree. */
  smallFiles: number;
  /** Sizes of the copy-up files, bytes. */
  copyUpSizes: number[];
  /** Size of the sequential-read file. */
  seqBytes: number;
  /** Files chmod-ed (metadata-only copy-up). */
  metaFiles: number;
  /** Files in the tree deleted at once. */
  deleteFiles: number;
  /** Files renamed in the rename storm. */
  renameFiles: number;
  /** Files created, written and fsynced. */
  createFiles: number;
  /** Layers of the deep stack, and target files at its bottom. */
  deepLayers: number;
  deepTargets: number;
  /** Files in the tarball untarred into the mount. */
  tarFiles: number;
  /** Empty files (1000 per directory) of the wide layer walked for the daemon's memory. */
  wideFiles: number;
  /** How long a memory workload waits without requests before it reads the daemon's memory again. */
  settleMs: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export const FULL: Sizes = {
  smallFiles: 5000,
  copyUpSizes: [4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB, GiB],
  seqBytes: GiB,
  metaFiles: 1000,
  deleteFiles: 5000,
  renameFiles: 2000,
  createFiles: 10000,
  deepLayers: 40,
  deepTargets: 200,
  tarFiles: 2000,
  wideFiles: 100_000,
  settleMs: 6000,
};

/** For a smoke run: every workload, tiny. */
export const QUICK: Sizes = {
  smallFiles: 200,
  copyUpSizes: [4 * KiB, 64 * KiB, MiB],
  seqBytes: 8 * MiB,
  metaFiles: 50,
  deleteFiles: 100,
  renameFiles: 50,
  createFiles: 100,
  deepLayers: 8,
  deepTargets: 10,
  tarFiles: 50,
  wideFiles: 2000,
  settleMs: 1000,
};

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Seeded bytes: a 1 MiB block that file contents are cut from. */
function block(rnd: () => number): Buffer {
  const b = Buffer.alloc(MiB);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  return b;
}

function writeFile(path: string, data: Buffer | string): void {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, 'w', 0o644);
  try {
    if (typeof data === 'string') writeSync(fd, data);
    else writeSync(fd, data);
  } finally {
    closeSync(fd);
  }
}

/** A file of `size` bytes of real data: the block, with each MiB stamped with its index. */
function writeBig(path: string, size: number, data: Buffer): void {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, 'w', 0o644);
  try {
    const chunk = Buffer.from(data);
    for (let off = 0, i = 0; off < size; off += MiB, i++) {
      chunk.writeUInt32LE(i, 0);
      writeSync(fd, chunk, 0, Math.min(MiB, size - off), off);
    }
  } finally {
    closeSync(fd);
  }
}

function whiteout(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  N.mknodat(N.C.AT_FDCWD, path, N.C.S_IFCHR | 0o600, 0);
}

function opaque(dir: string): void {
  mkdirSync(dir, { recursive: true });
  N.lsetxattr(N.C.AT_FDCWD, dir, 'trusted.overlay.opaque', Buffer.from('y'), 0);
}

export const treeDirs = (s: Sizes): number => Math.max(4, Math.round(s.smallFiles / 50));
export const pad = (n: number, w = 4): string => String(n).padStart(w, '0');

/** The image: returns its layer directories, top first. */
export function generateImage(root: string, s: Sizes, seed: number): string[] {
  const rnd = mulberry32(seed);
  const data = block(rnd);
  const [l0, l1, l2] = ['l0', 'l1', 'l2'].map((n) => join(root, n)) as [string, string, string];
  const dirs = treeDirs(s);
  const slice = (size: number): Buffer => {
    const off = Math.floor(rnd() * (data.length - size));
    return data.subarray(off, off + size);
  };
  for (let i = 0; i < s.smallFiles; i++) {
    const rel = `tree/d${pad(i % dirs, 2)}/f${pad(i)}`;
    writeFile(join(l2, rel), slice(Math.floor(rnd() * 16 * KiB)));
    const r = rnd();
    // (not in d00, which l1 makes opaque: the kernel lists whiteouts in a directory only one layer shows)
    if (i % dirs === 0) continue;
    if (r < 0.05) writeFile(join(l1, rel), slice(Math.floor(rnd() * 16 * KiB))); // overridden above
    else if (r < 0.08) whiteout(join(l1, rel)); // deleted above
  }
  for (const size of s.copyUpSizes) writeBig(join(l2, 'cu', String(size)), size, data);
  writeBig(join(l2, 'seq', 'big'), s.seqBytes, data);
  for (let i = 0; i < s.metaFiles; i++) writeFile(join(l2, 'meta', `m${pad(i)}`), slice(100));
  for (let i = 0; i < s.deleteFiles; i++) writeFile(join(l2, 'del', `d${pad(i % 20, 2)}`, `f${pad(i)}`), slice(512));
  for (let i = 0; i < s.renameFiles; i++) writeFile(join(l2, 'ren', `r${pad(i)}`), slice(256));
  // l1: an opaque directory over a tree directory, with one file of its own
  opaque(join(l1, 'tree', 'd00'));
  writeFile(join(l1, 'tree', 'd00', 'only-this'), 'the opaque directory hides the rest\n');
  // l0: a whole directory removed, a few new files
  whiteout(join(l0, 'tree', 'd01'));
  for (let i = 0; i < 10; i++) writeFile(join(l0, 'etc', `conf${i}`), `setting=${i}\n`);
  return [l0, l1, l2];
}

/** The deep stack: returns its layer directories, top first. */
export function generateDeepStack(root: string, s: Sizes, seed: number): string[] {
  const rnd = mulberry32(seed + 1);
  const layers = Array.from({ length: s.deepLayers }, (_, i) => join(root, `k${pad(i, 2)}`));
  layers.forEach((l, i) => {
    for (let f = 0; f < 20; f++) writeFile(join(l, 'deep', `layer${pad(i, 2)}-${f}`), `filler ${Math.floor(rnd() * 1e9)}\n`);
  });
  for (let i = 0; i < s.deepTargets; i++) writeFile(join(layers.at(-1)!, 'deep', `target${pad(i)}`), `target ${i}\n`);
  return layers;
}

/** The wide layer: empty files, 1000 per directory (the daemon's memory after a walk of them all). */
export function generateWide(root: string, s: Sizes): string[] {
  for (let d = 0; d * 1000 < s.wideFiles; d++) {
    const dir = join(root, 'wide', `d${pad(d, 3)}`);
    mkdirSync(dir, { recursive: true });
    for (let f = d * 1000; f < Math.min(s.wideFiles, (d + 1) * 1000); f++) closeSync(openSync(join(dir, `f${pad(f, 6)}`), 'w', 0o644));
  }
  return [root];
}

/** A tree to tar up for the untar workload. */
export function generateTarSource(dir: string, s: Sizes, seed: number): void {
  const rnd = mulberry32(seed + 2);
  const data = block(rnd);
  for (let i = 0; i < s.tarFiles; i++) {
    const size = Math.floor(rnd() * 32 * KiB);
    const off = Math.floor(rnd() * (data.length - size));
    writeFile(join(dir, `pkg${pad(i % 10, 2)}`, `sub${pad(i % 7, 1)}`, `file${pad(i)}`), data.subarray(off, off + size));
  }
}
