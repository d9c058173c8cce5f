// File attribute flags (chattr / lsattr: FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IOC_FSGETXATTR,
// FS_IOC_FSSETXATTR, which the kernel sends as FUSE_IOCTL with the file's handle), as the
// kernel's fs/overlayfs/inode.c keeps them: flags are read from the topmost real object; setting
// them copies the object up first. Immutable and append-only are not set on the upper inode
// (the daemon could no longer link, rename or copy up under it): they go into the
// "overlay.protattr" xattr ("a", "i", "ai"), as the kernel writes it, and the daemon enforces
// them for every operation through the mount, as the VFS does for an inode with S_IMMUTABLE /
// S_APPEND (EPERM). Other flags (noatime, nodump, sync, ...) and the project ID go to the
// upper inode.

import { fsError } from '../fuse/errors.js';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
} from '../fuse/protocol.js';
import * as N from '../native/index.js';
import { openObject, type UnionNode } from './node.js';

const { C } = N;

export const FS_IOC_GETFLAGS = 0x80086601;
export const FS_IOC_SETFLAGS = 0x40086602;
export const FS_IOC_FSGETXATTR = 0x801c581f;
export const FS_IOC_FSSETXATTR = 0x401c5820;
const FS_IMMUTABLE_FL = 0x10;
const FS_APPEND_FL = 0x20;
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

export class FileFlags {
  /** Protection flags of upper objects as read or written: "", "a", "i" or "ai". */
  private readonly prot = new WeakMap<UnionNode, string>();

  constructor(private readonly protattrName: string) {}

  /** The protection flags of `node` (only the upper carries them). */
  protection(node: UnionNode): string {
    if (!node.layer.isUpper) return '';
    let p = this.prot.get(node);
    if (p === undefined) {
      const [dirfd, name] = node.location();
      p = N.lgetxattr(dirfd, name, this.protattrName)?.toString('latin1') ?? '';
      this.prot.set(node, p);
    }
    return p;
  }

  /** A new object carries none (spares the read). */
  created(node: UnionNode): void {
    this.prot.set(node, '');
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
    const p = this.protection(node);
    if (p === '') return;
    const write = (flags & 3) !== C.O_RDONLY;
    const trunc = (flags & C.O_TRUNC) !== 0;
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
    const p = `${flags & a ? 'a' : ''}${flags & i ? 'i' : ''}`;
    const [dirfd, name] = node.location();
    if (p !== '') {
      N.lsetxattr(dirfd, name, this.protattrName, Buffer.from(p, 'latin1'), 0);
    } else if (this.protection(node) !== '') {
      N.lremovexattr(dirfd, name, this.protattrName);
    }
    this.prot.set(node, p);
    arg.writeUInt32LE((flags & ~(a | i)) >>> 0, 0);
    const fd = openForIoctl(node);
    try {
      N.ioctlBuf(fd, cmd, arg);
    } finally {
      N.close(fd);
    }
  }
}
