// Copy-up (the kernel's fs/overlayfs/copy_up.c): before the first change to an object that
// lives in a lower layer, copy it into the upper layer, parents first, keeping its mode
// (setuid/setgid/sticky), owner, nanosecond times, xattrs, symlink target and sparse holes.
// The copy is built in the work directory and renamed into place, so a crash leaves either the
// lower version or a complete upper object, never a partial one.

import * as N from '../native/index.js';
import type { InodeTable, UnionNode } from './inode.js';
import type { Layer } from './layers.js';
import { isPrivateXattr } from './whiteout.js';

const { C, ST } = N;

/** The upper layer and its work directory: where every change is made. */
export interface UpperDir {
  layer: Layer;
  /** O_PATH descriptor of <workdir>/work, on the upper's filesystem. */
  workFd: number;
  /** Writes skip fsync (volatile mounts). */
  volatile: boolean;
}

let tmpCounter = 0;
/** A fresh name in the work directory. */
export function workName(): string {
  return `#strata.${process.pid}.${(tmpCounter++).toString(36)}`;
}

const COPY_CHUNK = 1 << 20;

/** Copies the data of `src` into `dst`: reflink, else copy_file_range over data extents, else read/write. */
export function copyData(src: number, dst: number, size: number): void {
  if (size === 0) return;
  try {
    N.ficlone(dst, src);
    return;
  } catch {
    // not supported between these files: fall through
  }
  let pos = 0;
  let sparse = true;
  while (pos < size) {
    let start = pos;
    let end = size;
    if (sparse) {
      try {
        start = N.lseek(src, pos, C.SEEK_DATA);
        end = Math.min(N.lseek(src, start, C.SEEK_HOLE), size);
      } catch (e) {
        if ((e as { code?: string }).code === 'ENXIO') break; // only a hole remains
        sparse = false;
        start = pos;
        end = size;
      }
    }
    copyRange(src, dst, start, end);
    pos = end;
  }
  // A trailing hole: set the size without writing.
  N.ftruncate(dst, size);
}

function copyRange(src: number, dst: number, start: number, end: number): void {
  let off = start;
  let useCfr = true;
  let buf: Buffer | null = null;
  while (off < end) {
    const len = Math.min(end - off, 64 * COPY_CHUNK);
    let n = 0;
    if (useCfr) {
      try {
        n = N.copyFileRange(src, off, dst, off, len, 0);
      } catch {
        useCfr = false;
        continue;
      }
    } else {
      buf ??= Buffer.allocUnsafe(COPY_CHUNK);
      const want = Math.min(end - off, COPY_CHUNK);
      n = N.pread(src, buf, 0, want, off);
      let w = 0;
      while (w < n) w += N.pwrite(dst, buf, w, n - w, off + w);
    }
    if (n === 0) break; // the source is shorter than its stat said
    off += n;
  }
}

/** Copies every xattr of (srcDir, srcName) onto (dstDir, dstName), except overlay-private ones. */
export function copyXattrs(srcDir: number, srcName: string, dstDir: number, dstName: string): void {
  for (const name of N.llistxattr(srcDir, srcName)) {
    if (isPrivateXattr(name)) continue;
    const v = N.lgetxattr(srcDir, srcName, name);
    if (v === null) continue;
    try {
      N.lsetxattr(dstDir, dstName, name, v, 0);
    } catch (e) {
      // security.* may be refused by an LSM; everything else must copy.
      if (!name.startsWith('security.') || name === 'security.capability') throw e;
    }
  }
}

/** Sets owner, mode (after chown, which clears setuid bits), then anything else, then times from a stat. */
export function copyAttrs(dirfd: number, name: string, st: Float64Array, isLink: boolean, beforeTimes?: () => void): void {
  N.fchownat(dirfd, name, st[ST.uid]!, st[ST.gid]!, C.AT_SYMLINK_NOFOLLOW);
  if (!isLink) N.fchmodat(dirfd, name, st[ST.mode]! & 0o7777, 0);
  beforeTimes?.();
  N.utimensat(dirfd, name, st[ST.atimeSec]!, st[ST.atimeNsec]!, st[ST.mtimeSec]!, st[ST.mtimeNsec]!, C.AT_SYMLINK_NOFOLLOW);
}

/** Restores a directory's atime/mtime (changing its entries moved them). */
export function restoreTimes(dirfd: number, st: Float64Array): void {
  N.utimensat(dirfd, '', st[ST.atimeSec]!, st[ST.atimeNsec]!, st[ST.mtimeSec]!, st[ST.mtimeNsec]!, C.AT_EMPTY_PATH);
}

export class CopyUp {
  private readonly st = new Float64Array(16);
  private readonly pst = new Float64Array(16);
  private readonly ust = new Float64Array(16);
  private lowerNlink = 1;

  constructor(
    private readonly upper: UpperDir,
    private readonly inodes: InodeTable,
    /**
     * Called for objects whose attributes a copy-up changed behind the kernel's back: a copied-up
     * directory (merged now: st_nlink 1) and the parent the copy was linked into (its ctime).
     */
    private readonly attributesChanged: (node: UnionNode) => void,
    /** Called when a directory's entries changed in what readdir reports (a d_ino). */
    private readonly entriesChanged: (dir: UnionNode) => void,
  ) {}

  /** Makes sure `node` (and its ancestors) exist in the upper layer. */
  ensure(node: UnionNode, opts: { data?: boolean } = {}): void {
    if (node.layer === this.upper.layer) return;
    const parent = node.parent;
    if (!parent) return; // the root of the upper always exists
    this.ensure(parent);
    this.copyOne(parent, node, opts.data !== false);
  }

  private copyOne(parent: UnionNode, node: UnionNode, withData: boolean): void {
    const upper = this.upper.layer;
    const work = this.upper.workFd;
    const [srcDir, srcName] = node.location();
    const st = this.st;
    N.fstatat(srcDir, srcName, C.AT_SYMLINK_NOFOLLOW, st);
    const type = st[ST.mode]! & C.S_IFMT;
    this.lowerNlink = st[ST.nlink]!;
    const upperParent = parent.dirFd(upper);
    N.fstatat(upperParent, '', C.AT_EMPTY_PATH, this.pst);
    const tmp = workName();
    try {
      if (type === C.S_IFREG) {
        const out = N.openat(work, tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_CLOEXEC, 0o600);
        try {
          if (withData && st[ST.size]! > 0) {
            const src = N.openat(srcDir, srcName, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
            try {
              copyData(src, out, st[ST.size]!);
            } finally {
              N.close(src);
            }
          }
          if (!this.upper.volatile) N.fsync(out);
        } finally {
          N.close(out);
        }
      } else if (type === C.S_IFDIR) {
        N.mkdirat(work, tmp, 0o700);
      } else if (type === C.S_IFLNK) {
        N.symlinkat(N.readlinkat(srcDir, srcName), work, tmp);
      } else {
        N.mknodat(work, tmp, type | 0o600, st[ST.rdev]!);
      }
      // Owner first (chown drops security.capability and setuid bits), then mode, xattrs, times.
      copyAttrs(work, tmp, st, type === C.S_IFLNK, () => copyXattrs(srcDir, srcName, work, tmp));
    } catch (e) {
      removeWorkEntry(work, tmp);
      throw e;
    }
    // The copy keeps the object's st_ino: recorded before it becomes visible, so that no crash
    // can show the copy without it. A lower hard link is broken by copy-up (as by the kernel
    // without index=on): the copy gets its own st_ino so the names that stay below do not share it.
    N.fstatat(work, tmp, C.AT_SYMLINK_NOFOLLOW, this.ust);
    const upperIno = this.ust[ST.ino]!;
    const keepsIno = type === C.S_IFDIR || this.lowerNlink === 1;
    if (keepsIno) this.inodes.recordOrigin(upperIno, node.ino);
    try {
      N.renameat2(work, tmp, upperParent, node.name, C.RENAME_NOREPLACE);
    } catch (e) {
      if (keepsIno) this.inodes.forgetOrigin(upperIno);
      removeWorkEntry(work, tmp);
      throw e;
    }
    // Linking the copy into the parent moved the parent's times: put them back (its ctime moves).
    restoreTimes(upperParent, this.pst);
    this.attributesChanged(parent);
    if (!keepsIno) this.entriesChanged(parent); // its st_ino, so readdir's d_ino, changed
    if (type === C.S_IFDIR) {
      node.setDirLayers([upper, ...node.dirLayers!]);
      this.attributesChanged(node);
    } else {
      node.layer = upper;
    }
  }
}

/** Removes a work-directory entry of any type (a directory recursively), ignoring errors. */
export function removeWorkEntry(work: number, name: string): void {
  const st = new Float64Array(16);
  if (!N.lstatMaybe(work, name, st)) return;
  try {
    if ((st[ST.mode]! & C.S_IFMT) === C.S_IFDIR) {
      const fd = N.openat(work, name, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      try {
        for (const [child] of N.readdir(fd)) removeWorkEntry(fd, child);
      } finally {
        N.close(fd);
      }
      N.unlinkat(work, name, C.AT_REMOVEDIR);
    } else {
      N.unlinkat(work, name, 0);
    }
  } catch {
    // best effort: the work directory is emptied at the next mount anyway
  }
}
