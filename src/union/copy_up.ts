// Copy-up (the kernel's fs/overlayfs/copy_up.c): before the first change to an object that
// lives in a lower layer, copy it into the upper layer, parents first, keeping its mode
// (setuid/setgid/sticky), owner, nanosecond times, xattrs, symlink target and sparse holes.
// The copy is built in the work directory (a regular file as an unnamed O_TMPFILE, linked into
// place; anything else under a temporary name, renamed into place), so a crash leaves either the
// lower version or a complete upper object, never a partial one.

import { errCode, fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';
import type { InodeTable } from './inode.js';
import type { Layer } from './layers.js';
import { openObject, statObject, type UnionNode } from './node.js';
import { markImpure, originXattrFor, setOrigin } from './origin.js';
import { isCopiedXattr, METACOPY_NAMES, METACOPY_XATTR_TRUSTED, type MarkerNs } from './whiteout.js';
import { copyFileFlags } from './fsflags.js';
import { markerFor, verifyData } from './verity.js';

const { C, ST } = N;

/** The upper layer and its work directory: where every change is made. */
export interface UpperDir {
  layer: Layer;
  /** O_PATH descriptor of <workdir>/work, on the upper's filesystem. */
  workFd: number;
  /**
   * No fsync, neither of copy-ups before they are put in place nor for FSYNC and FSYNCDIR: a
   * volatile mount, or an upper held in memory (tmpfs, ramfs: nothing to write, and nothing of it
   * outlives a crash).
   */
  skipFsync: boolean;
  /**
   * Where the kernel's overlay.origin and overlay.impure markers go: trusted.overlay.*, or
   * user.overlay.* (overlayfs "userxattr"); none for an upper in the OCI format.
   */
  markers?: 'trusted' | 'user';
  /** The xattr that holds immutable and append-only of upper objects (overlay.protattr). */
  protattr: string;
  /** Metadata-only copies are made (metacopy=on where it writes them: DirOptions.metacopy). */
  metacopy?: boolean;
}

let tmpCounter = 0;
/** A fresh name in the work directory. */
export function workName(): string {
  return `#strata.${process.pid}.${(tmpCounter++).toString(36)}`;
}

const COPY_CHUNK = 1 << 20;
/** Data copied per step of an asynchronous copy-up; other requests are served between steps. */
const ASYNC_STEP = 16 * COPY_CHUNK;
/** Files with more data than this are copied up asynchronously. */
export const ASYNC_COPY_THRESHOLD = 4 * COPY_CHUNK;

/** Whether the upper's filesystem may share extents (FICLONE); false after it said it cannot. */
let reflinks = true;
/**
 * Source filesystems (st_dev) that FICLONE or copy_file_range refused to copy from into the upper
 * (EXDEV: another filesystem, such as ext4 lowers under a tmpfs upper). Not tried again for them: a
 * refused call costs an exception, more than the copy of a small file.
 */
const noCloneFrom = new Set<number>();
const noRangeCopyFrom = new Set<number>();
/** Source filesystems whose files sendfile refused (EINVAL: no splice from them): read and written instead. */
const noSendfileFrom = new Set<number>();
/**
 * Data extents at least this long go by sendfile where copy_file_range cannot: one copy in the kernel
 * instead of two through a buffer, 18% faster from 1 MiB up (ext4 to a tmpfs), the same from 4 to
 * 64 KiB, a microsecond slower for 100 bytes (the offset to set first).
 */
const SENDFILE_MIN = 64 * 1024;
/**
 * The buffer of copies by read/write, kept from one to the next: a fresh 1 MiB buffer per copy cost
 * more than the copy of a small file (its pages are touched only as far as copies use them).
 */
let copyBuf: Buffer | null = null;

/**
 * The steps of copying the data of `src` (on filesystem `srcDev`) into `dst`: reflink, else
 * copy_file_range over data extents (holes stay holes), else read/write. Yields after each `step` bytes.
 */
function* copySteps(src: number, srcDev: number, dst: number, size: number, step: number, dense = false): Generator<void, void, void> {
  if (size === 0) return;
  if (reflinks && !noCloneFrom.has(srcDev)) {
    try {
      N.ficlone(dst, src);
      return;
    } catch (e) {
      // Not between these files (EXDEV: another filesystem: not from this one again), or never on
      // the upper's filesystem (EOPNOTSUPP, EINVAL: not asked again).
      const code = errCode(e);
      if (code === 'EOPNOTSUPP' || code === 'ENOTTY' || code === 'EINVAL') reflinks = false;
      else if (code === 'EXDEV') noCloneFrom.add(srcDev);
    }
  }
  let pos = 0;
  // A file whose blocks cover its size has no hole to keep: copied as one data extent, as the kernel
  // does from a data offset (its SEEK_DATA finds 0 and it copies whole chunks).
  let sparse = !dense;
  let useCfr = !noRangeCopyFrom.has(srcDev);
  let useSendfile = !noSendfileFrom.has(srcDev);
  /** Where dst's file offset is (sendfile writes there): -1 unknown. */
  let dstPos = -1;
  while (pos < size) {
    let start = pos;
    let end = size;
    if (sparse) {
      try {
        start = N.lseek(src, pos, C.SEEK_DATA);
        end = Math.min(N.lseek(src, start, C.SEEK_HOLE), size);
      } catch (e) {
        if (errCode(e) === 'ENXIO') break; // only a hole remains
        sparse = false;
        start = pos;
        end = size;
      }
    }
    // One data extent, at most `step` bytes of it per turn.
    let off = start;
    while (off < end) {
      const stepEnd = Math.min(end, off + step);
      while (off < stepEnd) {
        let n = 0;
        if (useCfr) {
          try {
            n = N.copyFileRange(src, off, dst, off, Math.min(stepEnd - off, 64 * COPY_CHUNK), 0);
          } catch (e) {
            const code = errCode(e);
            if (code === 'EXDEV' || code === 'EOPNOTSUPP' || code === 'ENOSYS') noRangeCopyFrom.add(srcDev);
            useCfr = false;
            continue;
          }
        } else if (useSendfile && end - off >= SENDFILE_MIN) {
          // Between filesystems that copy_file_range will not join (a lower on ext4, the upper on a
          // tmpfs): the kernel copies from page cache to page cache, as the kernel's overlay does
          // (copy-ups of 1 MiB / 16 MiB / 256 MiB to a tmpfs: 1.26 / 8.3 / 113 ms by read and write,
          // 0.69 / 7.1 / 101 ms so).
          try {
            if (dstPos !== off) dstPos = N.lseek(dst, off, C.SEEK_SET);
            n = N.sendfile(dst, src, off, Math.min(stepEnd - off, 64 * COPY_CHUNK));
            dstPos += n;
          } catch (e) {
            const code = errCode(e);
            if (code === 'EINVAL' || code === 'ENOSYS' || code === 'EOPNOTSUPP') noSendfileFrom.add(srcDev);
            else throw e;
            useSendfile = false;
            continue;
          }
        } else {
          // (the buffer is filled and written out before any yield, so one buffer serves every copy)
          const buf = (copyBuf ??= Buffer.allocUnsafeSlow(COPY_CHUNK));
          n = N.pread(src, buf, 0, Math.min(stepEnd - off, COPY_CHUNK), off);
          let w = 0;
          while (w < n) w += N.pwrite(dst, buf, w, n - w, off + w);
        }
        if (n === 0) {
          // the source is shorter than its stat said
          N.ftruncate(dst, size);
          return;
        }
        off += n;
      }
      if (off < size) yield;
    }
    pos = end;
  }
  // A trailing hole: set the size without writing.
  if (pos < size) N.ftruncate(dst, size);
}

/** Copies the data of `src` into `dst` in one go (`dense`: its stat says it has no holes). */
export function copyData(src: number, srcDev: number, dst: number, size: number, dense = false): void {
  for (const _ of copySteps(src, srcDev, dst, size, Number.MAX_SAFE_INTEGER, dense)) {
    // no pauses
  }
}

/** Does the stat say every byte of the file is allocated (no hole to keep)? */
function isDense(st: N.StatValues): boolean {
  return st[ST.blocks]! * 512 >= st[ST.size]!;
}

/** Copies the data of `src` into `dst`, letting other work run between steps. */
async function copyDataAsync(src: number, srcDev: number, dst: number, size: number): Promise<void> {
  for (const _ of copySteps(src, srcDev, dst, size, ASYNC_STEP)) {
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Copies every xattr of (srcDir, srcName) onto (dstDir, dstName), except the overlay's own markers (in `ns`). */
export function copyXattrs(srcDir: number, srcName: string, dstDir: number, dstName: string, ns: MarkerNs): void {
  copyXattrsWith(srcDir, srcName, ns, (name, v) => N.lsetxattr(dstDir, dstName, name, v, 0));
}

/** As copyXattrs, onto an open file. */
export function copyXattrsToFd(srcDir: number, srcName: string, fd: number, ns: MarkerNs): void {
  copyXattrsWith(srcDir, srcName, ns, (name, v) => N.fsetxattr(fd, name, v, 0));
}

function copyXattrsWith(srcDir: number, srcName: string, ns: MarkerNs, set: (name: string, value: Buffer) => void): void {
  for (const name of N.llistxattr(srcDir, srcName)) {
    if (!isCopiedXattr(name, ns)) continue;
    const v = N.lgetxattr(srcDir, srcName, name);
    if (v === null) continue;
    try {
      set(name, v);
    } catch (e) {
      // security.* may be refused by an LSM; everything else must copy.
      if (!name.startsWith('security.') || name === 'security.capability') throw e;
    }
  }
}

/** Sets owner, mode (after chown, which clears setuid bits), then anything else, then times from a stat. */
export function copyAttrs(dirfd: number, name: string, st: N.StatValues, isLink: boolean, beforeTimes?: () => void): void {
  N.fchownat(dirfd, name, st[ST.uid]!, st[ST.gid]!, C.AT_SYMLINK_NOFOLLOW);
  if (!isLink) N.fchmodat(dirfd, name, st[ST.mode]! & 0o7777, 0);
  beforeTimes?.();
  N.utimensat(dirfd, name, st[ST.atimeSec]!, st[ST.atimeNsec]!, st[ST.mtimeSec]!, st[ST.mtimeNsec]!, C.AT_SYMLINK_NOFOLLOW);
}

/** Restores a directory's atime/mtime (changing its entries moved them). */
export function restoreTimes(dirfd: number, st: N.StatValues): void {
  N.utimensat(dirfd, '', st[ST.atimeSec]!, st[ST.atimeNsec]!, st[ST.mtimeSec]!, st[ST.mtimeNsec]!, C.AT_EMPTY_PATH);
}

/** One object being copied up: built in the work directory (unnamed, or under `tmp`), then put in place. */
interface CopyJob {
  parent: UnionNode;
  node: UnionNode;
  /** The lower object's stat. */
  st: N.StatValues;
  type: number;
  tmp: string;
  /** For a regular file: the new file, and the source when its data is copied (else -1). */
  out: number;
  src: number;
  /** The overlay.origin value for the copy (null: none, as for a lower hard link). */
  origin: Buffer | null;
  /** The copy of a removed directory replaces the empty directory now at its name (see nameGone). */
  replace: boolean;
  /**
   * For a metadata-only copy (metacopy=on), its metacopy marker (see verity.ts markerFor), else null:
   * the copy gets the size and the marker, not the data, which stays in `dataLayer`'s file, open as
   * `dataFd` (O_PATH; -1 where the object already reads its data from below: a metacopy file in a
   * lower layer).
   */
  marker: Buffer | null;
  dataLayer: Layer | null;
  dataFd: number;
}

export class CopyUp {
  private readonly pst = new Float64Array(16);
  private readonly ust = new Float64Array(16);
  /** The source's stat, taken as a copy-up begins (the job keeps a copy). */
  private readonly sst = new Float64Array(16);
  /**
   * Upper directories this mount marked impure (or found marked): not asked again. The mark stays
   * with the directory (nothing removes it while it is mounted); a directory made anew is a new node.
   */
  private readonly impure = new WeakSet<UnionNode>();

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

  /**
   * Makes sure `node` (and its ancestors) exist in the upper layer, in one go. Callers wait for a
   * copy-up already in progress on the node first (`node.copying`).
   */
  ensure(node: UnionNode, opts: { data?: boolean } = {}): void {
    // (as any copy-up of the kernel's, this one too checks a metacopy file's data first)
    verifyData(node);
    // (an upper metacopy file stays one: a rename or a link gives it a redirect, see DirOps)
    if (node.layer === this.upper.layer) return;
    const parent = node.parent;
    if (!parent) return; // the root of the upper always exists
    if (node.copying) throw new Error(`copy-up of "${node.name}" already in progress`);
    if (node.unlinked) {
      this.replaceName(parent, node);
      return;
    }
    this.ensure(parent);
    this.copyNow(this.begin(parent, node, opts.data !== false));
  }

  /**
   * The copy-up of a lower object whose name is gone (changed through a descriptor after an unlink,
   * rmdir or a rename over it). The kernel copies up to the name, which a whiteout or another object
   * now holds: a file's link fails with EEXIST; a directory's rename onto a non-directory fails with
   * ENOTDIR, onto a directory with entries (whiteouts count) with ENOTEMPTY. Onto an empty directory
   * it succeeds: the copy replaces that directory, and the name leads to the removed directory again.
   * strata does the same, and never resurrects a name held by a whiteout, whatever its format.
   */
  private replaceName(parent: UnionNode, node: UnionNode): void {
    const err = this.nameGone(parent, node);
    if (err) {
      // (the kernel's copy-up marks the parent impure before its link or rename fails)
      if (!parent.unlinked) this.prepareParent(parent);
      throw err;
    }
    const job = this.begin(parent, node, false);
    job.replace = true;
    this.finish(job);
  }

  /** Why the copy-up of `node`, whose name is gone, fails (null: an empty directory holds the name). */
  private nameGone(parent: UnionNode, node: UnionNode): Error | null {
    // (the kernel's answers where the parent was removed too)
    if (parent.unlinked) return fsError(node.isDir ? 'EIO' : 'ENOENT');
    if (!node.isDir) return fsError('EEXIST');
    if (parent.layer !== this.upper.layer) return fsError('ENOTDIR');
    let fd: number;
    try {
      fd = N.openat(parent.dirFd(this.upper.layer), node.name, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
    } catch (e) {
      const code = errCode(e);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return fsError('ENOTDIR'); // not a directory there
      throw e;
    }
    try {
      return N.listDir(fd).names.length > 0 ? fsError('ENOTEMPTY') : null;
    } finally {
      N.close(fd);
    }
  }

  /**
   * The copy of removed directory `node` took its old name from `replaced` (the empty directory there,
   * if the kernel knows it). As on the kernel's overlay, whose dentry for the name stays with the
   * replaced directory: that one keeps the name, removed now (st_nlink 0, nothing can be made in it,
   * rmdir ENOENT, rename ESTALE). The kernel's overlay keeps that dentry until memory runs short or
   * caches are dropped, which strata cannot see: strata keeps the name with it (pinned) for the rest
   * of the mount, as the kernel with memory to spare. The removed directory's descriptors reach the copy.
   */
  private replaced(parent: UnionNode, node: UnionNode, replaced: UnionNode | null): void {
    if (replaced) {
      this.inodes.removedInPlace(replaced);
      this.attributesChanged(replaced);
    }
    node.releaseAnchor();
    node.anchor = N.openat(parent.dirFd(this.upper.layer), node.name, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
    this.entriesChanged(parent); // the name's d_ino is the copy's now
  }

  /** Copies the job's data (if any) in one go and puts the copy in place. */
  private copyNow(job: CopyJob): void {
    try {
      if (job.src >= 0) copyData(job.src, job.st[ST.dev]!, job.out, job.st[ST.size]!, isDense(job.st));
    } catch (e) {
      this.abort(job);
      throw e;
    }
    this.finish(job);
  }

  /**
   * As `ensure`, but a regular file with more than ASYNC_COPY_THRESHOLD bytes of data is copied in
   * steps between other requests (see copyThen). `metaOnly`: the change needs no data (chmod, chown,
   * utimes, xattrs, chattr, rename, link): with metacopy=on a metadata-only copy is made, and an upper
   * metacopy file stays one; any other change has the data of an upper metacopy file copied in first.
   */
  ensureAsync(node: UnionNode, opts: { data?: boolean; metaOnly?: boolean } = {}): void | Promise<void> {
    if (node.copying) {
      const again = (): void | Promise<void> => this.ensureAsync(node, opts);
      return node.copying.then(again, again);
    }
    verifyData(node);
    if (node.layer === this.upper.layer) {
      if (node.metacopy && opts.metaOnly !== true) return this.fillData(node);
      return;
    }
    const parent = node.parent;
    if (!parent) return;
    if (node.unlinked) {
      this.replaceName(parent, node);
      return;
    }
    this.ensure(parent);
    const job = this.begin(parent, node, opts.data !== false, opts.metaOnly === true);
    if (job.src < 0) {
      this.finish(job);
      return;
    }
    return this.copyThen(node, job.src, job.st[ST.dev]!, job.out, job.st[ST.size]!, isDense(job.st), () => this.finish(job), () => this.abort(job));
  }

  /**
   * Copies `size` bytes of `src` (on filesystem `srcDev`) into `out`, then runs `done`; `fail` cleans up
   * after an error. Up to ASYNC_COPY_THRESHOLD bytes in one go; more in steps between other requests,
   * the promise kept in `node.copying` until `done` has run, so that every other change to the node
   * waits for it.
   */
  private copyThen(node: UnionNode, src: number, srcDev: number, out: number, size: number, dense: boolean,
    done: () => void, fail: () => void): void | Promise<void> {
    if (size <= ASYNC_COPY_THRESHOLD) {
      try {
        copyData(src, srcDev, out, size, dense);
      } catch (e) {
        fail();
        throw e;
      }
      done();
      return;
    }
    const copying = copyDataAsync(src, srcDev, out, size).then(done, (e: unknown) => {
      fail();
      throw e;
    }).finally(() => {
      node.copying = null;
    });
    node.copying = copying;
    return copying;
  }

  /**
   * The data of an upper metacopy file (the kernel's metacopy=on copy-up left it below) copied into
   * it before a change of its data, as the kernel's ovl_copy_up_meta_inode_data: in place, then synced,
   * then the metacopy marker removed, so that a crash before that leaves the file reading its data from
   * below still. The copy moves its times, as the kernel's does; security.capability (which a write
   * drops) is put back.
   */
  private fillData(node: UnionNode): void | Promise<void> {
    const loc = node.location();
    statObject(loc, this.sst);
    const size = this.sst[ST.size]!;
    const caps = N.lgetxattr(loc[0], loc[1], 'security.capability');
    const out = openObject(loc, C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
    let src = -1;
    const close = (): void => {
      N.close(out);
      if (src >= 0) N.close(src);
    };
    try {
      src = openObject(node.dataLocation(), C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
      N.fstat(src, this.ust);
    } catch (e) {
      close();
      throw e;
    }
    const done = (): void => {
      try {
        if (caps !== null) N.fsetxattr(out, 'security.capability', caps, 0);
        if (!this.upper.skipFsync) N.fsync(out);
        for (const name of METACOPY_NAMES[this.upper.layer.markerNs]) {
          try {
            N.fremovexattr(out, name);
          } catch (e) {
            if (errCode(e) !== 'ENODATA') throw e;
          }
        }
      } finally {
        close();
      }
      node.clearData();
      this.attributesChanged(node);
    };
    return this.copyThen(node, src, this.ust[ST.dev]!, out, size, isDense(this.ust), done, close);
  }

  /** Creates the copy in the work directory (for a regular file: empty, open, with its source open). */
  private begin(parent: UnionNode, node: UnionNode, withData: boolean, meta = false): CopyJob {
    const work = this.upper.workFd;
    const src = node.location();
    const [srcDir, srcName] = src;
    statObject(src, this.sst);
    const st = N.statCopy(this.sst);
    const type = st[ST.mode]! & C.S_IFMT;
    const job: CopyJob = { parent, node, st, type, tmp: workName(), out: -1, src: -1, origin: null, replace: false, marker: null, dataLayer: null, dataFd: -1 };
    try {
      if (this.upper.markers) job.origin = originXattrFor(node.layer, srcDir, srcName, st);
      if (type === C.S_IFREG) {
        // An unnamed file in the work directory: nothing to clean up if anything fails or the daemon
        // dies, and it is linked into place only when complete (the kernel's way too).
        // Made with the object's permission bits (unnamed, it is out of reach meanwhile): then, where
        // it also has the object's owner, neither chown nor chmod is needed (setFileAttrs).
        job.out = N.openat(work, '.', C.O_TMPFILE | C.O_WRONLY | C.O_CLOEXEC, st[ST.mode]! & 0o777);
        job.tmp = '';
        // (verity=require: only of data with fs-verity, whose digest the marker records)
        job.marker = meta && this.writesMetacopy ? markerFor(node, node.dataLocation()) : null;
        if (job.marker !== null) {
          // A change that needs no data (chmod, chown, utimes, xattrs, rename, link), with metacopy=on:
          // the size only, as the kernel's ovl_need_meta_copy_up decides (set first: a later truncate
          // would drop security.capability).
          if (!node.metacopy) {
            job.dataLayer = node.layer;
            job.dataFd = srcName === '' ? N.dup(srcDir) : N.openat(srcDir, srcName, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
          }
          if (st[ST.size]! > 0) N.ftruncate(job.out, st[ST.size]!);
        } else if (withData && st[ST.size]! > 0) {
          // (a metacopy file's data is its data file's)
          job.src = openObject(node.dataLocation(), C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
        }
      } else if (type === C.S_IFDIR) {
        N.mkdirat(work, job.tmp, 0o700);
      } else if (type === C.S_IFLNK) {
        N.symlinkat(N.readlinkat(srcDir, srcName), work, job.tmp);
      } else {
        N.mknodat(work, job.tmp, type | 0o600, st[ST.rdev]!);
      }
    } catch (e) {
      this.abort(job);
      throw e;
    }
    return job;
  }

  private closeFiles(job: CopyJob): void {
    if (job.src >= 0) N.close(job.src);
    if (job.out >= 0) N.close(job.out);
    if (job.dataFd >= 0) N.close(job.dataFd);
    job.src = job.out = job.dataFd = -1;
  }

  /** metacopy=on where it writes, and an upper whose markers the kernel reads: metadata-only copies are made. */
  private get writesMetacopy(): boolean {
    return this.upper.metacopy === true && this.upper.markers === 'trusted';
  }

  private abort(job: CopyJob): void {
    this.closeFiles(job);
    if (job.tmp !== '') removeWorkEntry(this.upper.workFd, job.tmp);
  }

  /**
   * A regular file's copy (unnamed, open): owner, mode, xattrs and times, then one fsync for its data
   * and all of these, before it is linked in. The kernel syncs there too (since 6.11, with metacopy
   * off): on a filesystem that does not persist metadata changes in order, a copy synced before its
   * attributes could show up after a crash with the data but not the owner or mode.
   */
  private setFileAttrs(job: CopyJob): void {
    const { node, st } = job;
    const out = job.out;
    try {
      const src = node.location();
      const [srcDir, srcName] = src;
      // Owner first (chown drops security.capability and setuid bits), then mode, xattrs, flags, times.
      // The new file is empty, with no xattr: where it already has the owner and the mode (its
      // creator's ids, permission bits not narrowed by a umask or a default ACL), neither call
      // would change a thing.
      N.fstat(out, this.ust);
      const chown = this.ust[ST.uid] !== st[ST.uid] || this.ust[ST.gid] !== st[ST.gid];
      if (chown) N.fchown(out, st[ST.uid]!, st[ST.gid]!);
      if (chown || (this.ust[ST.mode]! & 0o7777) !== (st[ST.mode]! & 0o7777)) N.fchmod(out, st[ST.mode]! & 0o7777);
      copyXattrsToFd(srcDir, srcName, out, this.upper.layer.markerNs);
      copyFileFlags(src, C.S_IFREG, node.metacopy ? -1 : job.src, { fd: out }, this.upper.protattr);
      if (job.src >= 0) N.close(job.src);
      job.src = -1;
      if (job.origin) setOrigin((name, v) => N.fsetxattr(out, name, v, 0), job.origin, this.upper.markers === 'user');
      if (job.marker !== null) N.fsetxattr(out, METACOPY_XATTR_TRUSTED, job.marker, 0);
      N.futimens(out, st[ST.atimeSec]!, st[ST.atimeNsec]!, st[ST.mtimeSec]!, st[ST.mtimeNsec]!);
      // (a metadata-only copy is not synced: the kernel syncs only copies with data)
      if (!this.upper.skipFsync && job.marker === null) N.fsync(out);
    } catch (e) {
      this.abort(job);
      throw e;
    }
  }

  /** A regular file: attributes set on the unnamed copy, which is then linked into the upper parent. */
  private finishFile(job: CopyJob): void {
    const { parent, node, st } = job;
    const out = job.out;
    this.setFileAttrs(job); // (its fstat of the copy left the copy's st_ino in `ust`)
    const upperIno = this.ust[ST.ino]!;
    const keepsIno = st[ST.nlink] === 1;
    if (keepsIno) this.inodes.recordOrigin(upperIno, node.ino, job.origin !== null);
    const upperParent = this.prepareParent(parent);
    // (a metadata-only copy's data: the lower file, taken over by the node below)
    const data = job.dataLayer !== null ? { layer: job.dataLayer, fd: job.dataFd } : null;
    try {
      // linkat fails with EEXIST if the name exists: as RENAME_NOREPLACE.
      N.linkat(out, '', upperParent, node.name, C.AT_EMPTY_PATH);
      job.dataFd = -1;
    } catch (e) {
      if (keepsIno) this.inodes.forgetOrigin(upperIno);
      throw e;
    } finally {
      this.closeFiles(job);
    }
    this.linked(parent, node, keepsIno ? null : upperIno, C.S_IFREG, job.marker !== null);
    if (data) node.setData(data.layer, data.fd);
  }

  /** The impure mark of `dir` was removed (see mergedListing): the next copy-up into it sets it again. */
  forgetImpure(dir: UnionNode): void {
    this.impure.delete(dir);
  }

  /**
   * The upper parent's descriptor, its times kept in `pst` (to put back once the copy is linked in),
   * marked impure as the kernel does: it now holds a copied-up entry, whose d_ino readdir must look up.
   */
  private prepareParent(parent: UnionNode): number {
    const upperParent = parent.dirFd(this.upper.layer);
    N.fstatat(upperParent, '', C.AT_EMPTY_PATH, this.pst);
    if (this.upper.markers && !this.impure.has(parent)) {
      markImpure(upperParent, this.upper.markers === 'user');
      this.impure.add(parent);
    }
    return upperParent;
  }

  /**
   * The copy is in place: the parent's times are put back, the kernel told what changed. `newIno`:
   * the copy's own inode number when it does not keep st_ino (a lower hard link), else null.
   */
  private linked(parent: UnionNode, node: UnionNode, newIno: number | null, type: number, meta = false): void {
    const upper = this.upper.layer;
    const upperParent = parent.dirFd(upper);
    // Linking the copy into the parent moved the parent's times: put them back (its ctime moves).
    restoreTimes(upperParent, this.pst);
    this.attributesChanged(parent);
    if (newIno !== null) {
      this.entriesChanged(parent); // its st_ino, so readdir's d_ino, changed
      this.inodes.reidentify(node, this.inodes.inoFor(upper, newIno));
    }
    if (type === C.S_IFDIR) {
      node.setDirLayers([upper, ...node.dirLayers!]);
      this.attributesChanged(node);
    } else {
      node.layer = upper;
      // (a metadata-only copy of a lower metacopy file reads the data that one read)
      if (!meta) node.clearData();
    }
  }

  /** Attributes, then the rename into the upper parent that makes the copy visible. */
  private finish(job: CopyJob): void {
    if (job.type === C.S_IFREG) {
      this.finishFile(job);
      return;
    }
    const { parent, node, st, type, tmp } = job;
    const work = this.upper.workFd;
    // A directory's copy is synced before it is renamed into place, as a file's (see setFileAttrs):
    // opened while its mode is still the 0700 it was made with.
    let syncFd = -1;
    /** The origin went on the copy, or is not needed to keep st_ino (see setOrigin). */
    let originKept = true;
    try {
      if (type === C.S_IFDIR && !this.upper.skipFsync) syncFd = N.openat(work, tmp, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      // The lower location again: a copy in steps must not keep a directory descriptor across turns.
      const src = node.location();
      const [srcDir, srcName] = src;
      // Owner first (chown drops security.capability and setuid bits), then mode, xattrs, flags, times.
      copyAttrs(work, tmp, st, type === C.S_IFLNK, () => {
        copyXattrs(srcDir, srcName, work, tmp, this.upper.layer.markerNs);
        copyFileFlags(src, type, -1, { dirfd: work, name: tmp }, this.upper.protattr);
      });
      if (job.origin) originKept = setOrigin((name, v) => N.lsetxattr(work, tmp, name, v, 0), job.origin, this.upper.markers === 'user');
      if (syncFd >= 0) N.fsync(syncFd);
    } catch (e) {
      this.abort(job);
      throw e;
    } finally {
      if (syncFd >= 0) N.close(syncFd);
    }
    // The copy keeps the object's st_ino: recorded before it becomes visible, so that no crash
    // can show the copy without it. A lower hard link is broken by copy-up (as by the kernel
    // without index=on): the copy gets its own st_ino so the names that stay below do not share it.
    N.fstatat(work, tmp, C.AT_SYMLINK_NOFOLLOW, this.ust);
    const upperIno = this.ust[ST.ino]!;
    const keepsIno = type === C.S_IFDIR || st[ST.nlink] === 1;
    // (a copy without the origin it should carry keeps st_ino while its node lives, as the kernel's inode does)
    if (keepsIno && originKept) this.inodes.recordOrigin(upperIno, node.ino, job.origin !== null);
    const upperParent = this.prepareParent(parent);
    // The directory a replacing copy takes the name from: operations through the kernel's references
    // to it reach it where it goes (removed, as on the kernel, whose dentries for it stay too).
    const replaced = job.replace ? parent.children.get(node.name) ?? null : null;
    if (replaced) {
      replaced.pins++; // (see replaced())
      replaced.pinAnchor();
    }
    try {
      N.renameat2(work, tmp, upperParent, node.name, job.replace ? 0 : C.RENAME_NOREPLACE);
    } catch (e) {
      if (replaced) replaced.pins--;
      if (keepsIno) this.inodes.forgetOrigin(upperIno);
      removeWorkEntry(work, tmp);
      throw e;
    }
    if (job.replace) this.replaced(parent, node, replaced);
    if (keepsIno && !originKept) node.inoPinned = true;
    this.linked(parent, node, keepsIno ? null : upperIno, type);
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
