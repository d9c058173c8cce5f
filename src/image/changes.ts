// A directory tree as a tar stream, in two uses:
// - a container's upper directory as an OCI layer (`strata commit`): kernel-format whiteouts
//   (character device 0/0) become `.wh.<name>` files and an opaque directory
//   (trusted.overlay.opaque=y or user.overlay.opaque=y) gets a `.wh..wh..opq` entry, as Docker's
//   overlay2 driver writes its diffs; OCI-format whiteout files already in the upper are kept as
//   they are; overlayfs's private xattrs never go into the tar;
// - a merged view as one flat tar (`strata export`), which has no whiteouts to convert: either a
//   mounted view read as a plain tree, or the layers themselves (an upper over lower layers, as a
//   container that is not running), merged here by the union core's rules (src/union/namei.ts,
//   readdir.ts): the topmost layer holding a name gives its object; a whiteout (char 0/0, or an
//   OCI `.wh.<name>` for the layers below its own) hides it; directories merge down to the first
//   opaque one. No mount, no FUSE round trip per entry.
//
// Entries keep owner, mode (setuid/setgid/sticky), nanosecond mtime, xattrs (security.capability
// among them), symlinks, devices and FIFOs; objects that share an inode inside the tree become tar
// hard links to the first name written. Sockets cannot be stored in a tar and are left out, as
// Docker does. The walk goes through directory descriptors, one name at a time with O_NOFOLLOW:
// a symlink in the tree is stored, never followed. Entries are written in byte order of their names,
// so the same tree gives the same tar (and diff ID).

import fs from 'node:fs';
import type { Writable } from 'node:stream';
import * as N from '../native/index.js';
import { isKernelWhiteout, isOpaqueDir, isPrivateXattr, METACOPY_XATTR_TRUSTED, METACOPY_XATTR_USER, OCI_OPAQUE, OPAQUE_XATTR_TRUSTED, OPAQUE_XATTR_USER, OCI_WHITEOUT_PREFIX, ociWhiteoutTarget } from '../union/whiteout.js';
import { FdTarWriter, TarWriter, type EntryType, type FileData, type TarDigests, type TarEntry } from './tar_pack.js';
import { ImageError } from './types.js';

const { C, ST } = N;

export interface PackOptions {
  /** Convert kernel whiteouts and opaque markers to OCI entries (a layer diff); false for a flat export. */
  layer: boolean;
  gzip: boolean;
  /** Called with the number of uncompressed tar bytes as they are written. */
  onBytes?: (n: number) => void;
}

export interface PackStats extends TarDigests {
  entries: number;
}

function typeOf(mode: number): EntryType | null {
  switch (mode & C.S_IFMT) {
    case C.S_IFREG: return 'file';
    case C.S_IFDIR: return 'directory';
    case C.S_IFLNK: return 'symlink';
    case C.S_IFCHR: return 'character-device';
    case C.S_IFBLK: return 'block-device';
    case C.S_IFIFO: return 'fifo';
    default: return null; // sockets
  }
}

function isOpaqueMarker(v: Buffer | null): boolean {
  return v !== null && v.length === 1 && v[0] === 0x79;
}

/**
 * The bytes of `fd` from offset 0, in chunks of at most 1 MiB sized to what is left of `size`
 * (most files are small: one exact buffer each). Read synchronously: the walk is all this process
 * does, and an event-loop round trip per chunk cost more than the read.
 */
function* readFd(fd: number, size: number): Generator<Buffer> {
  let pos = 0;
  while (pos < size) {
    const buf = Buffer.allocUnsafe(Math.min(size - pos, 1 << 20));
    const n = fs.readSync(fd, buf, 0, buf.length, pos);
    if (n === 0) return;
    pos += n;
    yield n === buf.length ? buf : buf.subarray(0, n);
  }
}

/**
 * One tar entry of the walk; a regular file with data comes with a descriptor open on it, which
 * the consumer closes once the data is written.
 */
export interface WalkItem {
  e: TarEntry;
  file?: FileData;
}

/** One name of a merged directory: the layer that shows it and, for a directory, the layers merged into it. */
interface MergedName {
  /** Index (in the parent's layer list) of the topmost layer holding the name. */
  top: number;
  /** For a directory: indexes of the parent's layers whose directory of this name merges into it, top first. */
  dirLayers: number[] | null;
}

const scratchSt = new Float64Array(16);

/** The DT_* type of `name` in `dirfd` from readdir's hint, asking lstat when the hint cannot tell; null for a whiteout or a vanished name. */
function entryKind(dirfd: number, name: string, dtype: number): number | null {
  if (dtype !== C.DT_CHR && dtype !== C.DT_UNKNOWN) return dtype;
  if (!N.lstatMaybe(dirfd, name, scratchSt)) return null;
  if (isKernelWhiteout(scratchSt)) return null;
  return (scratchSt[ST.mode]! & C.S_IFMT) >> 12;
}

/**
 * The merged listing of a directory present in `fds` (its directory in each layer, top first),
 * as a strata mount with default options (OCI whiteouts read) shows it: mergedListing() of
 * src/union/readdir.ts for the names, searchLayers() of src/union/namei.ts for where each comes
 * from and, for directories, which layers merge below (whiteouts and opaque directories stop it).
 */
export function mergedNames(fds: readonly number[]): Map<string, MergedName> {
  const listings = fds.map((fd) => {
    const m = new Map<string, number>();
    for (const [name, dtype] of N.readdir(fd)) if (name !== '.' && name !== '..') m.set(name, dtype);
    return m;
  });
  const out = new Map<string, MergedName>();
  const hidden = new Set<string>();
  listings.forEach((listing, i) => {
    const ociHidden: string[] = [];
    for (const [name, dtype] of listing) {
      if (name.startsWith(OCI_WHITEOUT_PREFIX)) {
        const target = ociWhiteoutTarget(name);
        if (target !== undefined) ociHidden.push(target);
        continue;
      }
      if (out.has(name) || hidden.has(name)) continue;
      const kind = entryKind(fds[i]!, name, dtype);
      if (kind === null) {
        hidden.add(name);
        continue;
      }
      out.set(name, { top: i, dirLayers: kind === C.DT_DIR ? [i] : null });
    }
    for (const name of ociHidden) hidden.add(name);
  });
  // Which layers merge into each directory (namei's search below the topmost hit).
  const last = fds.length - 1;
  for (const [name, m] of out) {
    if (!m.dirLayers) continue;
    for (let i = m.top; i <= last; i++) {
      if (i > m.top && listings[i]!.has(name)) {
        const kind = entryKind(fds[i]!, name, listings[i]!.get(name)!);
        if (kind !== C.DT_DIR) break; // a whiteout or a non-directory ends the merge
        m.dirLayers.push(i);
      }
      if (i === last) break;
      if (listings[i]!.has(name) && isOpaqueDir(fds[i]!, name)) break;
      if (listings[i]!.has(OCI_WHITEOUT_PREFIX + name)) break;
    }
  }
  return out;
}

/**
 * Walks a tree (or a merged view) in tar order, yielding its entries: names in byte order,
 * directories before their content, hard links to the first name written.
 */
class TreeWalker {
  private readonly links = new Map<string, Buffer>();
  private readonly st = N.newStatBuf();
  entries = 0;

  constructor(private readonly opts: { layer: boolean }) {}

  /**
   * The xattrs of `name` that go into the tar (overlayfs's private ones left out). A regular file's
   * metadata-only copy (overlay metacopy) is refused: its data is in a layer below, which the tar would
   * not have, so it would be stored as a file of zeros.
   */
  private xattrs(dirfd: number, name: string, path: Buffer, regular: boolean): [string, Buffer][] {
    const out: [string, Buffer][] = [];
    let names: string[];
    try {
      names = N.llistxattr(dirfd, name);
    } catch (e) {
      if (N.isErrnoError(e, 'ENOTSUP') || N.isErrnoError(e, 'EOPNOTSUPP')) return out;
      throw e;
    }
    for (const k of names.sort()) {
      if (regular && (k === METACOPY_XATTR_TRUSTED || k === METACOPY_XATTR_USER)) {
        throw new ImageError(`${path.toString('latin1')}: a metadata-only copy (overlay metacopy): its data is in a lower layer; copy its data up first (open it for writing)`);
      }
      if (isPrivateXattr(k)) continue;
      const v = N.lgetxattr(dirfd, name, k);
      if (v !== null) out.push([k, v]);
    }
    return out;
  }

  private entry(path: Buffer, type: EntryType, st: Float64Array, extra: Partial<TarEntry> = {}): TarEntry {
    this.entries++;
    return {
      name: path, type, mode: st[ST.mode]! & 0o7777, uid: st[ST.uid]!, gid: st[ST.gid]!, size: 0,
      mtimeSec: st[ST.mtimeSec]!, mtimeNsec: st[ST.mtimeNsec]!, ...extra,
    };
  }

  /** The directory open at `dirfd` (tar path `prefix`, "" for the root) and everything below. */
  *dir(dirfd: number, prefix: Buffer): Generator<WalkItem> {
    const names = N.readdir(dirfd).map((e) => e[0]).filter((n) => n !== '.' && n !== '..').sort();
    const present = new Set(names);
    for (const name of names) yield* this.object(dirfd, name, childPath(prefix, name), present, null);
  }

  /** A merged directory (its directory in each layer, top first) and everything below. */
  *mergedDir(fds: readonly number[], prefix: Buffer): Generator<WalkItem> {
    const merged = mergedNames(fds);
    for (const name of [...merged.keys()].sort()) {
      const m = merged.get(name)!;
      yield* this.object(fds[m.top]!, name, childPath(prefix, name), null, m.dirLayers?.map((i) => fds[i]!) ?? null);
    }
  }

  /**
   * One object: `name` in `dirfd`. `siblings` (a plain tree) are the names next to it; `layers`
   * (a merged view, directories only) the parent's directories in the layers that merge into it.
   */
  private *object(dirfd: number, name: string, path: Buffer, siblings: Set<string> | null, layers: number[] | null): Generator<WalkItem> {
    const st = this.st;
    N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW, st);
    const mode = st[ST.mode]!;
    const type = typeOf(mode);
    if (type === null) return;
    if (this.opts.layer && isKernelWhiteout(st)) {
      // A whiteout next to an OCI whiteout of the same name (an upper written both ways): one entry.
      if (siblings?.has(OCI_WHITEOUT_PREFIX + name)) return;
      const wh = Buffer.concat([path.subarray(0, path.length - Buffer.byteLength(name, 'latin1')), Buffer.from(OCI_WHITEOUT_PREFIX + name, 'latin1')]);
      yield { e: this.entry(wh, 'file', st, { mode: 0o600 }) };
      return;
    }
    const xattrs = this.xattrs(dirfd, name, path, type === 'file');
    if (type === 'directory') {
      const opaque = this.opts.layer && (isOpaqueMarker(N.lgetxattr(dirfd, name, OPAQUE_XATTR_TRUSTED)) || isOpaqueMarker(N.lgetxattr(dirfd, name, OPAQUE_XATTR_USER)));
      const dirEntry = this.entry(path, 'directory', st, { xattrs });
      yield { e: dirEntry };
      if (layers) {
        const fds: number[] = [];
        try {
          for (const parent of layers) fds.push(N.openat(parent, name, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0));
          yield* this.mergedDir(fds, path);
        } finally {
          for (const fd of fds) N.close(fd);
        }
        return;
      }
      const fd = N.openat(dirfd, name, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      try {
        if (opaque && !N.lstatMaybe(fd, OCI_OPAQUE, N.newStatBuf())) {
          yield { e: this.entry(Buffer.concat([path, Buffer.from(`/${OCI_OPAQUE}`)]), 'file', st, { mode: 0o600 }) };
        }
        yield* this.dir(fd, path);
      } finally {
        N.close(fd);
      }
      return;
    }
    if (st[ST.nlink]! > 1) {
      const key = `${st[ST.dev]}:${st[ST.ino]}`;
      const first = this.links.get(key);
      if (first) {
        yield { e: this.entry(path, 'link', st, { linkname: first }) };
        return;
      }
      this.links.set(key, path);
    }
    switch (type) {
      case 'symlink':
        yield { e: this.entry(path, type, st, { linkname: Buffer.from(N.readlinkat(dirfd, name), 'latin1'), xattrs }) };
        return;
      case 'character-device':
      case 'block-device': {
        const rdev = st[ST.rdev]!;
        yield { e: this.entry(path, type, st, { devmajor: N.major(rdev), devminor: N.minor(rdev), xattrs }) };
        return;
      }
      case 'fifo':
        yield { e: this.entry(path, type, st, { xattrs }) };
        return;
      default: {
        const size = st[ST.size]!;
        const e = this.entry(path, 'file', st, { size, xattrs });
        if (size === 0) {
          yield { e };
          return;
        }
        yield { e, file: { fd: N.openat(dirfd, name, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0), size } };
      }
    }
  }
}

function childPath(prefix: Buffer, name: string): Buffer {
  return prefix.length ? Buffer.concat([prefix, Buffer.from('/'), Buffer.from(name, 'latin1')]) : Buffer.from(name, 'latin1');
}

/**
 * Writes the tree at `root` as a tar to `dest` and returns its digests. With `layer`, the tree is an
 * overlay upper directory and becomes an OCI layer diff.
 */
export async function packTree(root: string, dest: Writable, opts: PackOptions): Promise<PackStats> {
  const tar = new TarWriter(dest, { gzip: opts.gzip, onBytes: opts.onBytes });
  const fd = N.openat(C.AT_FDCWD, root, C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  const walker = new TreeWalker(opts);
  try {
    for (const { e, file } of walker.dir(fd, Buffer.alloc(0))) {
      try {
        await tar.add(e, file ? readFd(file.fd, file.size) : undefined);
      } finally {
        if (file) N.close(file.fd);
      }
    }
  } catch (e) {
    tar.abort(e as Error);
    throw e;
  } finally {
    N.close(fd);
  }
  return { ...(await tar.finish()), entries: walker.entries };
}

export interface FlatTarStats {
  entries: number;
  /** Bytes of the tar. */
  size: number;
}

/** How far the writer reads ahead of itself: entries, and bytes of file data asked for. */
const AHEAD_ENTRIES = 128;
const AHEAD_BYTES = 64 << 20;
/** How much of each file is asked for ahead (the start of a large one: the kernel reads on as it is copied). */
const PREFETCH_PER_FILE = 2 << 20;

/**
 * Writes the merged view of `roots` (top first; one root: a plain tree, e.g. a mount point) as one
 * flat tar to the file descriptor `out`, synchronously and without digests (`strata export`).
 * The walk runs up to AHEAD_ENTRIES entries ahead of the writer, and asks the kernel to read each
 * file it opens (POSIX_FADV_WILLNEED): files are read from disk in parallel, in the background,
 * while the writer copies the earlier ones.
 */
export function packMerged(roots: readonly string[], out: number, onBytes?: (n: number) => void): FlatTarStats {
  const tar = new FdTarWriter(out, onBytes);
  const walker = new TreeWalker({ layer: false });
  const fds: number[] = [];
  const queue: WalkItem[] = [];
  let walk: Generator<WalkItem> | null = null;
  try {
    for (const root of roots) fds.push(N.openat(C.AT_FDCWD, Buffer.from(root).toString('latin1'), C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0));
    walk = fds.length === 1 ? walker.dir(fds[0]!, Buffer.alloc(0)) : walker.mergedDir(fds, Buffer.alloc(0));
    let ahead = 0;
    let done = false;
    for (;;) {
      while (!done && queue.length < AHEAD_ENTRIES && ahead < AHEAD_BYTES) {
        const r = walk.next();
        if (r.done) {
          done = true;
          break;
        }
        const { file } = r.value;
        if (file) {
          // The start of each file: a large one is read on by the kernel's readahead as it is copied.
          N.fadvise(file.fd, 0, Math.min(file.size, PREFETCH_PER_FILE), C.POSIX_FADV_WILLNEED);
          ahead += file.size;
        }
        queue.push(r.value);
      }
      const item = queue.shift();
      if (!item) break;
      try {
        tar.add(item.e, item.file);
      } finally {
        if (item.file) {
          N.close(item.file.fd);
          ahead -= item.file.size;
        }
      }
    }
  } finally {
    for (const item of queue) if (item.file) N.close(item.file.fd);
    walk?.return(undefined);
    for (const fd of fds) N.close(fd);
  }
  return { entries: walker.entries, size: tar.finish() };
}

/** The bytes of regular files below `root` (what a tar of it roughly holds): the total of a progress bar. */
export function treeBytes(root: string): number {
  const st = N.newStatBuf();
  let total = 0;
  const walk = (dirfd: number): void => {
    for (const [name, type] of N.readdir(dirfd)) {
      if (name === '.' || name === '..') continue;
      if (type === C.DT_DIR) {
        const fd = N.openat(dirfd, name, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
        try {
          walk(fd);
        } finally {
          N.close(fd);
        }
      } else if (type === C.DT_REG && N.lstatMaybe(dirfd, name, st)) {
        total += st[ST.size]! + 512;
      }
    }
  };
  const fd = N.openat(C.AT_FDCWD, root, C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  try {
    walk(fd);
  } finally {
    N.close(fd);
  }
  return total;
}
