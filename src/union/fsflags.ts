// File attribute flags (chattr / lsattr: FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IOC_FSGETXATTR,
// FS_IOC_FSSETXATTR, which the kernel sends as FUSE_IOCTL with the file's handle), as the
// kernel's fs/overlayfs/inode.c keeps them: flags are read from the topmost real object; setting
// them copies the object up first. Immutable and append-only are not set on the upper inode
// (the daemon could no longer link, rename or copy up under it): they go into the
// "overlay.protattr" xattr ("a", "i", "ai"), as the kernel writes it, and the daemon enforces
// them for every operation through the mount, as the VFS does for an inode with S_IMMUTABLE /
// S_APPEND (EPERM). Other flags (noatime, nodump, sync, ...) and the project ID go to the
// upper inode.
//
// Lower objects carry their flags on the lower inode itself (chattr on the lower filesystem): the
// kernel copies S_IMMUTABLE / S_APPEND into the overlay inode (ovl_copyflags), so they hold through
// the mount as for an upper object, and lsattr shows them (the real object's flags). The daemon
// reads them from statx's stx_attributes, once per node, when a check needs them. A copy-up
// carries them over as ovl_copy_fileattr does: immutable and append-only into overlay.protattr of
// the copy, sync and noatime onto the copy's inode; nodump and the rest stay behind.

import { errCode, fsError } from '../fuse/errors.js';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
} from '../fuse/protocol.js';
import * as N from '../native/index.js';
import type { Layer } from './layers.js';
import { atFlags, openObject, type UnionNode } from './node.js';

const { C } = N;

export const FS_IOC_GETFLAGS = 0x80086601;
export const FS_IOC_SETFLAGS = 0x40086602;
export const FS_IOC_FSGETXATTR = 0x801c581f;
export const FS_IOC_FSSETXATTR = 0x401c5820;
const FS_SYNC_FL = 0x08;
const FS_IMMUTABLE_FL = 0x10;
const FS_APPEND_FL = 0x20;
const FS_NOATIME_FL = 0x80;
/** The flags a copy-up puts on the copy's inode (the kernel's OVL_COPY_FS_FLAGS_MASK). */
const COPIED_FLAGS = FS_SYNC_FL | FS_NOATIME_FL;
const STATX_ATTR_IMMUTABLE = 0x10;
const STATX_ATTR_APPEND = 0x20;
const FS_XFLAG_IMMUTABLE = 0x08;
const FS_XFLAG_APPEND = 0x10;
const FSXATTR_SIZE = 28;

const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_COLLAPSE_RANGE = 0x08;
const FALLOC_FL_INSERT_RANGE = 0x20;

/** The request is one of the four file attribute ioctls. */
export function isFileAttrIoctl(cmd: number): boolean {
  return cmd === FS_IOC_GETFLAGS || cmd === FS_IOC_SETFLAGS || cmd === FS_IOC_FSGETXATTR || cmd === FS_IOC_FSSETXATTR;
}

/** Opens the real object for an ioctl (not O_PATH: ioctls need a real open). */
function openForIoctl(node: UnionNode): number {
  const dir = node.isDir ? C.O_DIRECTORY : 0;
  return openObject(node.location(), C.O_RDONLY | C.O_NONBLOCK | C.O_NOFOLLOW | C.O_CLOEXEC | dir);
}

/** "", "a", "i" or "ai" (the order overlay.protattr uses). */
function protString(append: boolean, immutable: boolean): string {
  return `${append ? 'a' : ''}${immutable ? 'i' : ''}`;
}

/** Immutable and append-only of a lower object, as its filesystem reports them to statx. */
function lowerProtection(loc: [number, string]): string {
  const a = N.statxAttributes(loc[0], loc[1], atFlags(loc, C.AT_SYMLINK_NOFOLLOW));
  return protString((a & STATX_ATTR_APPEND) !== 0, (a & STATX_ATTR_IMMUTABLE) !== 0);
}

/**
 * getFlags' ioctl buffer, read before the next call (a Buffer made per call and handed to the addon
 * costs about 1 us more: V8 moves it out of its heap).
 */
const flagsBuf = Buffer.alloc(8);

/** An errno that says the filesystem has no file attribute flags (the kernel ignores them at copy-up). */
function noFlagSupport(e: unknown): boolean {
  const code = errCode(e);
  return code === 'ENOTTY' || code === 'EINVAL' || code === 'EOPNOTSUPP';
}

/**
 * FS_IOC_GETFLAGS of an open file; 0 where the filesystem has none. `anyError`: 0 on any failure
 * (a lower object: the kernel asks only when the inode has flags, so a filesystem that cannot
 * answer must not make the copy-up fail).
 */
function getFlags(fd: number, anyError = false): number {
  const b = flagsBuf;
  try {
    N.ioctlBuf(fd, FS_IOC_GETFLAGS, b);
  } catch (e) {
    if (anyError || noFlagSupport(e)) return 0;
    throw e;
  }
  return b.readUInt32LE(0);
}

/** Where a copy-up's object is while it is built: an open file, or a name in the work directory. */
export type CopyTarget = { fd: number } | { dirfd: number; name: string };

/**
 * The flags of a lower object carried over to its copy (ovl_copy_fileattr): immutable and
 * append-only into `protattrName` of the copy, sync and noatime onto the copy's inode. `srcFd` is
 * the lower file open for reading, if the copy-up has it open anyway.
 */
export function copyFileFlags(src: [number, string], type: number, srcFd: number, to: CopyTarget, protattrName: string): void {
  let flags: number;
  if (type === C.S_IFREG || type === C.S_IFDIR) {
    // Only files and directories are opened for the ioctl (which reads sync and noatime too).
    const fd = srcFd >= 0 ? srcFd : openObject(src, C.O_RDONLY | C.O_NONBLOCK | C.O_NOFOLLOW | C.O_CLOEXEC | (type === C.S_IFDIR ? C.O_DIRECTORY : 0));
    try {
      flags = getFlags(fd, true);
    } finally {
      if (fd !== srcFd) N.close(fd);
    }
  } else {
    const p = lowerProtection(src);
    flags = (p.includes('a') ? FS_APPEND_FL : 0) | (p.includes('i') ? FS_IMMUTABLE_FL : 0);
  }
  const p = protString((flags & FS_APPEND_FL) !== 0, (flags & FS_IMMUTABLE_FL) !== 0);
  if (p !== '') {
    const v = Buffer.from(p, 'latin1');
    try {
      if ('fd' in to) N.fsetxattr(to.fd, protattrName, v, 0);
      else N.lsetxattr(to.dirfd, to.name, protattrName, v, 0);
    } catch (e) {
      // No such xattr on the upper (user.* on a symlink or a device): the kernel goes on without it.
      if (errCode(e) !== 'EPERM') throw e;
    }
  }
  if ((flags & COPIED_FLAGS) === 0 || !(type === C.S_IFREG || type === C.S_IFDIR)) return;
  const fd = 'fd' in to ? to.fd : N.openat(to.dirfd, to.name, C.O_RDONLY | C.O_NONBLOCK | C.O_NOFOLLOW | C.O_CLOEXEC | C.O_DIRECTORY, 0);
  try {
    const now = getFlags(fd);
    const b = Buffer.alloc(8);
    b.writeUInt32LE(((now & ~COPIED_FLAGS) | (flags & COPIED_FLAGS)) >>> 0, 0);
    try {
      N.ioctlBuf(fd, FS_IOC_SETFLAGS, b);
    } catch (e) {
      if (!noFlagSupport(e)) throw e;
    }
  } finally {
    if (!('fd' in to)) N.close(fd);
  }
}

export class FileFlags {
  /**
   * Protection flags ("", "a", "i" or "ai") of nodes, with the layer they were read in: from
   * overlay.protattr for an upper object, from the inode for a lower one (read again once the
   * node is copied up).
   */
  private readonly prot = new WeakMap<UnionNode, { layer: Layer; p: string }>();

  constructor(readonly protattrName: string) {}

  /** The protection flags of `node`'s object. */
  protection(node: UnionNode): string {
    const known = this.prot.get(node);
    if (known?.layer === node.layer) return known.p;
    const loc = node.location();
    const p = node.layer.isUpper ? N.lgetxattr(loc[0], loc[1], this.protattrName)?.toString('latin1') ?? '' : lowerProtection(loc);
    this.prot.set(node, { layer: node.layer, p });
    return p;
  }

  /** A new object carries none (spares the read). */
  created(node: UnionNode): void {
    this.prot.set(node, { layer: node.layer, p: '' });
  }

  // ---- what the VFS refuses for S_IMMUTABLE / S_APPEND inodes --------------------------------

  /** unlink, rmdir, rename of `node`, link to it, its xattrs and ACLs (may_delete, vfs_link, xattr_permission). */
  refuseChange(node: UnionNode): void {
    if (this.protection(node) !== '') throw fsError('EPERM');
  }

  /** A new entry in `dir` (create, mkdir, link, rename into): not in an immutable directory. */
  refuseNewEntry(dir: UnionNode): void {
    if (this.protection(dir).includes('i')) throw fsError('EPERM');
  }

  /** Removing an entry of `dir` (unlink, rmdir, rename out of or over). */
  refuseRemoveEntry(dir: UnionNode): void {
    if (this.protection(dir) !== '') throw fsError('EPERM');
  }

  /** may_open: no writing an immutable file; an append-only one only with O_APPEND, never O_TRUNC. */
  refuseOpen(node: UnionNode, flags: number): void {
    const write = (flags & 3) !== C.O_RDONLY;
    const trunc = (flags & C.O_TRUNC) !== 0;
    if (!write && !trunc) return; // reading is always allowed (spares the read of the flags)
    const p = this.protection(node);
    if (p === '') return;
    if (p.includes('i') && (write || trunc)) throw fsError('EPERM');
    if (p.includes('a') && ((write && (flags & C.O_APPEND) === 0) || trunc)) throw fsError('EPERM');
  }

  /** notify_change and truncate: only touching the times (to now) of an append-only file is allowed. */
  refuseSetattr(node: UnionNode, valid: number): void {
    const p = this.protection(node);
    if (p === '') return;
    const touch = valid & (FATTR_ATIME_NOW | FATTR_MTIME_NOW);
    const setTimes = (valid & FATTR_ATIME && !(valid & FATTR_ATIME_NOW)) || (valid & FATTR_MTIME && !(valid & FATTR_MTIME_NOW));
    if (p.includes('i') && (touch || setTimes || valid & (FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE))) throw fsError('EPERM');
    if (p.includes('a') && (setTimes || valid & (FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE))) throw fsError('EPERM');
  }

  /** vfs_fallocate: no punching, collapsing or inserting in an append-only file. */
  refuseFallocate(node: UnionNode, mode: number): void {
    const p = this.protection(node);
    if (p.includes('i')) throw fsError('EPERM');
    if (p.includes('a') && mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) throw fsError('EPERM');
  }

  // ---- the ioctls ----------------------------------------------------------------------------

  /** FS_IOC_GETFLAGS / FS_IOC_FSGETXATTR: the real object's flags with the protection flags merged in. */
  get(node: UnionNode, cmd: number): Buffer {
    const out = Buffer.alloc(cmd === FS_IOC_GETFLAGS ? 8 : FSXATTR_SIZE);
    const fd = openForIoctl(node);
    try {
      N.ioctlBuf(fd, cmd, out);
    } finally {
      N.close(fd);
    }
    const p = this.protection(node);
    const [a, i] = cmd === FS_IOC_GETFLAGS ? [FS_APPEND_FL, FS_IMMUTABLE_FL] : [FS_XFLAG_APPEND, FS_XFLAG_IMMUTABLE];
    let flags = out.readUInt32LE(0);
    if (p.includes('a')) flags |= a;
    if (p.includes('i')) flags |= i;
    out.writeUInt32LE(flags >>> 0, 0);
    return cmd === FS_IOC_GETFLAGS ? out.subarray(0, 4) : out;
  }

  /** FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR on an upper object: protection into the xattr, the rest to the inode. */
  set(node: UnionNode, cmd: number, input: Buffer): void {
    const [a, i] = cmd === FS_IOC_SETFLAGS ? [FS_APPEND_FL, FS_IMMUTABLE_FL] : [FS_XFLAG_APPEND, FS_XFLAG_IMMUTABLE];
    const arg = Buffer.alloc(cmd === FS_IOC_SETFLAGS ? 8 : FSXATTR_SIZE);
    input.copy(arg, 0, 0, Math.min(input.length, arg.length));
    const flags = arg.readUInt32LE(0);
    const p = protString((flags & a) !== 0, (flags & i) !== 0);
    const [dirfd, name] = node.location();
    if (p !== '') {
      N.lsetxattr(dirfd, name, this.protattrName, Buffer.from(p, 'latin1'), 0);
    } else if (this.protection(node) !== '') {
      N.lremovexattr(dirfd, name, this.protattrName);
    }
    this.prot.set(node, { layer: node.layer, p });
    arg.writeUInt32LE((flags & ~(a | i)) >>> 0, 0);
    const fd = openForIoctl(node);
    try {
      N.ioctlBuf(fd, cmd, arg);
    } finally {
      N.close(fd);
    }
  }
}
