// Creation time (statx STATX_BTIME through FUSE_STATX): the layer object's own, as the kernel's
// overlay reports the real inode's. Null when the layer filesystem keeps none.

import * as N from '../native/index.js';
import type { UnionNode } from './inode.js';

const { C } = N;

/** Of the open layer file `fd` when there is one (an unlinked file), else of the node's layer object. */
export function creationTime(node: UnionNode, fd: number | null): { sec: number; nsec: number } | null {
  let t: [number, number] | null;
  if (fd !== null) {
    t = N.statxBtime(fd, '', C.AT_EMPTY_PATH);
  } else {
    const [dirfd, name] = node.location();
    t = N.statxBtime(dirfd, name, C.AT_SYMLINK_NOFOLLOW | C.AT_EMPTY_PATH);
  }
  return t ? { sec: t[0], nsec: t[1] } : null;
}
