// Changes to the namespace (the kernel's fs/overlayfs/dir.c): creating objects (over whiteouts),
// unlink and rmdir (leaving whiteouts where a lower layer shows the name), rename (EXDEV for
// lower or merged directories, whiteouts at the old name, opaque directories at the new one)
// and link.

import { fsError } from '../fuse/errors.js';
import type { RequestContext } from '../fuse/types.js';
import * as N from '../native/index.js';
import { removeWorkEntry, workName, type CopyUp, type UpperDir } from './copy_up.js';
import type { InodeTable } from './inode.js';
import { atFlags, type UnionNode } from './node.js';
import { checkName, lowerShows } from './namei.js';
import { hasOrigin, markImpure } from './origin.js';
import { mergedListing } from './readdir.js';
import { isKernelWhiteout, OCI_OPAQUE, OCI_WHITEOUT_PREFIX, OPAQUE_XATTR_TRUSTED, OPAQUE_XATTR_USER } from './whiteout.js';

const { C, ST } = N;

export type WriteFormat = 'kernel' | 'oci';

export interface DirOptions {
  /** Whiteouts and opaque markers as the kernel writes them, or as OCI layer files. */
  writeFormat: WriteFormat;
  /** Opaque xattr in the user.overlay namespace (overlayfs "userxattr"). */
  userxattr: boolean;
}

/** What to create: a regular file, directory, symlink or special file. */
export type NewObject =
  | { kind: 'file'; mode: number; flags: number }
  | { kind: 'dir'; mode: number }
  | { kind: 'symlink'; target: string }
  | { kind: 'node'; mode: number; rdev: number };

const st = new Float64Array(16);

export class DirOps {
  constructor(
    private readonly upper: UpperDir,
    private readonly inodes: InodeTable,
    private readonly copyUp: CopyUp,
    private readonly opts: DirOptions,
  ) {}

  private get up() {
    return this.upper.layer;
  }

  /** Is there a kernel whiteout for `name` in the upper directory of `parent`? */
  private upperWhiteout(parent: UnionNode, name: string): boolean {
    return N.lstatMaybe(parent.dirFd(this.up), name, st) && isKernelWhiteout(st);
  }

  private markOpaque(dirfd: number, name: string): void {
    if (this.opts.writeFormat === 'oci') {
      const fd = N.openat(dirfd, `${name}/${OCI_OPAQUE}`, C.O_CREAT | C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0o644);
      N.close(fd);
    } else {
      N.lsetxattr(dirfd, name, this.opts.userxattr ? OPAQUE_XATTR_USER : OPAQUE_XATTR_TRUSTED, Buffer.from('y'), 0);
    }
  }

  /** The gid and setgid bit a new object gets from its parent (BSD group semantics of a setgid dir). */
  private ownership(ctx: RequestContext, parent: UnionNode): { gid: number; setgid: boolean } {
    N.fstatat(parent.dirFd(this.up), '', C.AT_EMPTY_PATH, st);
    const setgid = (st[ST.mode]! & 0o2000) !== 0;
    return { gid: setgid ? st[ST.gid]! : ctx.gid, setgid };
  }

  /**
   * Creates a new object `name` in `parent` owned by the caller. Over a whiteout, it is built in
   * the work directory and swapped in, and a new directory there is opaque. Returns the open
   * descriptor for files (else -1), and the new object's stat (valid until the next call).
   */
  create(ctx: RequestContext, parent: UnionNode, name: string, obj: NewObject): { node: UnionNode; fd: number; st: Float64Array } {
    checkName(name);
    this.copyUp.ensure(parent);
    const upperParent = parent.dirFd(this.up);
    const overWhiteout = this.upperWhiteout(parent, name);
    const { gid, setgid } = this.ownership(ctx, parent);
    // Over a whiteout, build in the work dir; otherwise create in place (already atomic).
    const [dirfd, tmp] = overWhiteout ? [this.upper.workFd, workName()] : [upperParent, name];
    let fd = -1;
    let type: number;
    try {
      switch (obj.kind) {
        case 'file':
          type = C.S_IFREG;
          fd = N.openat(dirfd, tmp, C.O_CREAT | C.O_EXCL | C.O_RDWR | C.O_NOFOLLOW | C.O_CLOEXEC, 0o600);
          N.fchown(fd, ctx.uid, gid);
          N.fchmod(fd, obj.mode & 0o7777);
          break;
        case 'dir': {
          type = C.S_IFDIR;
          N.mkdirat(dirfd, tmp, 0o700);
          N.fchownat(dirfd, tmp, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
          N.fchmodat(dirfd, tmp, (obj.mode & 0o7777) | (setgid ? 0o2000 : 0), 0);
          // Over a whiteout it must hide the lower directory.
          if (overWhiteout) this.markOpaque(dirfd, tmp);
          break;
        }
        case 'symlink':
          type = C.S_IFLNK;
          N.symlinkat(obj.target, dirfd, tmp);
          N.fchownat(dirfd, tmp, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
          break;
        case 'node':
          type = obj.mode & C.S_IFMT;
          N.mknodat(dirfd, tmp, type | 0o600, obj.rdev);
          N.fchownat(dirfd, tmp, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
          N.fchmodat(dirfd, tmp, obj.mode & 0o7777, 0);
          break;
      }
      if (overWhiteout) {
        // Swap the new object with the whiteout, then drop the whiteout (now in the work dir).
        N.renameat2(dirfd, tmp, upperParent, name, C.RENAME_EXCHANGE);
        removeWorkEntry(dirfd, tmp);
      }
    } catch (e) {
      if (fd >= 0) N.close(fd);
      if (overWhiteout) removeWorkEntry(dirfd, tmp);
      else if (obj.kind === 'dir') tryUnlink(upperParent, name, C.AT_REMOVEDIR);
      else tryUnlink(upperParent, name, 0);
      throw e;
    }
    N.fstatat(upperParent, name, C.AT_SYMLINK_NOFOLLOW, st);
    const node = this.inodes.create(parent, name, type!, this.up, type! === C.S_IFDIR ? [this.up] : null, st[ST.ino]!);
    return { node, fd, st };
  }

  /** link(2): the source is copied up, then linked in the upper. */
  link(node: UnionNode, parent: UnionNode, name: string): void {
    checkName(name);
    if (node.isDir) throw fsError('EPERM');
    this.copyUp.ensure(node);
    this.copyUp.ensure(parent);
    const src = node.location();
    const [srcDir, srcName] = src;
    const linkFlags = atFlags(src, 0);
    const upperParent = parent.dirFd(this.up);
    if (this.upperWhiteout(parent, name)) {
      const tmp = workName();
      N.linkat(srcDir, srcName, this.upper.workFd, tmp, linkFlags);
      try {
        N.renameat2(this.upper.workFd, tmp, upperParent, name, 0);
      } catch (e) {
        removeWorkEntry(this.upper.workFd, tmp);
        throw e;
      }
    } else {
      N.linkat(srcDir, srcName, upperParent, name, linkFlags);
    }
    this.markImpureFor(upperParent, name);
    this.inodes.addAlias(node, parent, name);
  }

  /** Removes the upper entry `name` of `parent` (if any), leaving a whiteout when a lower layer shows it. */
  private removeEntry(parent: UnionNode, name: string, isDir: boolean): void {
    const upperParent = parent.dirFd(this.up);
    const needWhiteout = lowerShows(parent, name);
    const inUpper = N.lstatMaybe(upperParent, name, st) && !isKernelWhiteout(st);
    if (inUpper && (isDir || st[ST.nlink]! <= 1)) this.inodes.forgetOrigin(st[ST.ino]!);
    if (this.opts.writeFormat === 'oci') {
      if (needWhiteout) N.close(N.openat(upperParent, OCI_WHITEOUT_PREFIX + name, C.O_CREAT | C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0o644));
      if (inUpper) this.moveToWorkAndDelete(upperParent, name, 0);
      return;
    }
    if (inUpper) {
      this.moveToWorkAndDelete(upperParent, name, needWhiteout ? C.RENAME_WHITEOUT : 0);
    } else if (needWhiteout) {
      N.mknodat(upperParent, name, C.S_IFCHR, 0);
    }
  }

  /** Renames the upper entry into the work dir (leaving a whiteout with RENAME_WHITEOUT) and deletes it there. */
  private moveToWorkAndDelete(upperParent: number, name: string, flags: number): void {
    const tmp = workName();
    N.renameat2(upperParent, name, this.upper.workFd, tmp, flags);
    removeWorkEntry(this.upper.workFd, tmp);
  }

  /** Removes the name `name` of `node` (a hard-linked node has several). */
  unlink(parent: UnionNode, node: UnionNode, name: string): void {
    this.copyUp.ensure(parent);
    node.pinAnchor();
    this.removeEntry(parent, name, false);
    this.inodes.removeName(node, parent, name);
  }

  /** Merged emptiness (what rmdir and rename-over-a-directory require). */
  private checkEmpty(dir: UnionNode): void {
    if (mergedListing(this.inodes, dir).length > 0) throw fsError('ENOTEMPTY');
  }

  rmdir(parent: UnionNode, node: UnionNode, name: string): void {
    this.checkEmpty(node);
    this.copyUp.ensure(parent);
    node.pinAnchor();
    // The upper directory may still hold whiteouts: it goes to the work dir whole.
    this.removeEntry(parent, name, true);
    this.inodes.removeName(node, parent, name);
    node.closeDirFds();
  }

  /** Everything that can refuse a rename, checked before anything is copied up. */
  checkRename(node: UnionNode, newName: string, target: UnionNode | null, flags: number): void {
    checkName(newName);
    const exchange = (flags & C.RENAME_EXCHANGE) !== 0;
    if ((flags & C.RENAME_NOREPLACE) && target) throw fsError('EEXIST');
    if (exchange && !target) throw fsError('ENOENT');
    if (target && !exchange) {
      if (node.isDir && !target.isDir) throw fsError('ENOTDIR');
      if (!node.isDir && target.isDir) throw fsError('EISDIR');
    }
    // Without redirect_dir, a directory with lower layers cannot be renamed: EXDEV makes mv copy.
    if (node.isDir && node.dirLayers!.some((l) => !l.isUpper)) throw fsError('EXDEV');
    if (exchange && target!.isDir && target!.dirLayers!.some((l) => !l.isUpper)) throw fsError('EXDEV');
    if (target && !exchange && target.isDir) this.checkEmpty(target);
  }

  /** rename(2) of parent/oldName (the node `node`) to newParent/newName (now `target`, if any). */
  rename(parent: UnionNode, oldName: string, node: UnionNode, newParent: UnionNode, newName: string, target: UnionNode | null, flags: number): void {
    this.checkRename(node, newName, target, flags);
    const exchange = (flags & C.RENAME_EXCHANGE) !== 0;
    this.copyUp.ensure(parent);
    this.copyUp.ensure(newParent);
    this.copyUp.ensure(node);
    if (target && exchange) this.copyUp.ensure(target);
    const from = parent.dirFd(this.up);
    const to = newParent.dirFd(this.up);
    const srcNeedsWhiteout = !exchange && lowerShows(parent, oldName);
    const dstLower = lowerShows(newParent, newName);
    // The object the rename replaces stays reachable through descriptors open on it.
    if (target && !exchange) target.pinAnchor();

    if (exchange) {
      N.renameat2(from, oldName, to, newName, C.RENAME_EXCHANGE);
      // A directory now standing where a lower layer shows the name must not merge with it.
      // A directory moved into a merged parent is made opaque, as the kernel does: it must not
      // merge with whatever a lower layer shows (or will show) under its new name.
      if (node.isDir && newParent.isMerged) this.markOpaque(to, newName);
      if (target!.isDir && parent.isMerged) this.markOpaque(from, oldName);
      if (parent !== newParent) {
        this.markImpureFor(from, oldName);
        this.markImpureFor(to, newName);
      }
      this.inodes.exchange(parent, oldName, newParent, newName);
      return;
    }

    // Clear what occupies the destination in the upper: a whiteout, or an (empty) directory
    // that may still hold whiteouts, so the rename below can replace it.
    // The source takes the name, so no whiteout is needed there: a directory over a directory
    // or over a whiteout needs the old entry out of the way first (rename(2) cannot replace them).
    const dstUpper = N.lstatMaybe(to, newName, st);
    const dstType = st[ST.mode]! & C.S_IFMT;
    const dstIsWhiteout = dstUpper && isKernelWhiteout(st);
    if (dstUpper && !dstIsWhiteout && (dstType === C.S_IFDIR || st[ST.nlink]! <= 1)) this.inodes.forgetOrigin(st[ST.ino]!);
    if (dstUpper && (dstType === C.S_IFDIR || (dstIsWhiteout && node.isDir))) this.moveToWorkAndDelete(to, newName, 0);
    if (node.isDir && newParent.isMerged) this.markOpaque(from, oldName);
    if (this.opts.writeFormat === 'oci') {
      N.renameat2(from, oldName, to, newName, 0);
      if (srcNeedsWhiteout) N.close(N.openat(from, OCI_WHITEOUT_PREFIX + oldName, C.O_CREAT | C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0o644));
      if (dstLower) tryUnlink(to, OCI_WHITEOUT_PREFIX + newName, 0);
    } else {
      N.renameat2(from, oldName, to, newName, srcNeedsWhiteout ? C.RENAME_WHITEOUT : 0);
    }
    if (parent !== newParent) this.markImpureFor(to, newName);
    if (target) this.inodes.removeName(target, newParent, newName);
    this.inodes.move(node, parent, oldName, newParent, newName);
  }

  /**
   * An object with a copy-up origin moved or linked into a directory (dirfd) makes it impure, as the
   * kernel's rename and link do: readdir there must look its entries up for their d_ino.
   */
  private markImpureFor(dirfd: number, name: string): void {
    if (this.opts.writeFormat !== 'oci' && hasOrigin(dirfd, name)) markImpure(dirfd, this.opts.userxattr);
  }
}

function tryUnlink(dirfd: number, name: string, flags: number): void {
  try {
    N.unlinkat(dirfd, name, flags);
  } catch {
    // nothing to clean
  }
}

