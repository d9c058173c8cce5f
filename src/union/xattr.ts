// Extended attributes of merged objects (the kernel's fs/overlayfs/xattrs.c). Overlay-private
// names (trusted.overlay.*, user.overlay.*) are neither shown nor settable. Each call acts on the
// node's object (by name, or through its anchor once the name is gone); changes are made on the
// upper copy, after a copy-up.

import { fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';
import type { UnionNode } from './node.js';
import { isPrivateXattr } from './whiteout.js';

/** The value, or null where the object has no such attribute (ENODATA). */
export function getXattr(node: UnionNode, name: string): Buffer | null {
  if (isPrivateXattr(name)) return null;
  const [dirfd, fname] = node.location();
  return N.lgetxattr(dirfd, fname, name);
}

export function listXattrs(node: UnionNode): string[] {
  const [dirfd, fname] = node.location();
  return N.llistxattr(dirfd, fname).filter((n) => !isPrivateXattr(n));
}

/** Refuses the overlay's own names before anything is copied up. */
export function checkSettable(name: string): void {
  if (isPrivateXattr(name)) throw fsError('EPERM');
}

/** Removing an attribute the object does not have changes nothing: no copy-up (as the kernel). */
export function checkRemovable(node: UnionNode, name: string): void {
  const [dirfd, fname] = node.location();
  if (N.lgetxattr(dirfd, fname, name) === null) throw fsError('ENODATA');
}

/** setxattr on the node's (upper) object. */
export function setXattr(node: UnionNode, name: string, value: Buffer, flags: number): void {
  const [dirfd, fname] = node.location();
  N.lsetxattr(dirfd, fname, name, value, flags);
}

/** removexattr on the node's (upper) object. */
export function removeXattr(node: UnionNode, name: string): void {
  const [dirfd, fname] = node.location();
  N.lremovexattr(dirfd, fname, name);
}
