// Each layer is reached through a private, detached copy of its mount (the kernel's overlay does
// the same with clone_private_mount), whose atime flags are the union's own: the lowers never get
// atime updates (the kernel opens lower files O_NOATIME), and the upper follows the strata
// mount's noatime / relatime / strictatime / nodiratime whatever the flags of the mount the upper
// directory lives on. Reads the kernel serves by passthrough go to files opened here, so atime is
// then kept by the upper filesystem under these flags, as the kernel's overlay keeps it.
// The upper and the work directory share one private mount (a copy-up links or renames from one
// into the other, which the kernel refuses across mounts), cloned at their closest common directory.

import { dirname, relative } from 'node:path';
import * as N from '../native/index.js';
import type { AtimeMode } from './params.js';
import { errCode } from '../fuse/errors.js';

const { C, ST } = N;

export interface AtimePolicy {
  atime: AtimeMode;
  nodiratime: boolean;
}

/** Lower layers: never an atime update. */
export const LOWER_ATIME: AtimePolicy = { atime: 'noatime', nodiratime: true };

function attrOf(p: AtimePolicy): number {
  const a = p.atime === 'noatime' ? C.MOUNT_ATTR_NOATIME : p.atime === 'strictatime' ? C.MOUNT_ATTR_STRICTATIME : C.MOUNT_ATTR_RELATIME;
  return a | (p.nodiratime ? C.MOUNT_ATTR_NODIRATIME : 0);
}

/** A detached copy of the mount at `root` (its root descriptor), private to the daemon. */
export interface PrivateMount {
  readonly fd: number;
  readonly root: string;
}

/** Sets the atime flags of a private mount. */
export function setAtime(m: PrivateMount, p: AtimePolicy): void {
  N.mountSetattr(m.fd, '', C.AT_EMPTY_PATH, attrOf(p), C.MOUNT_ATTR__ATIME | C.MOUNT_ATTR_NODIRATIME);
}

/** Clones the mount at `root` with `policy`; null when the kernel does not allow it (no CAP_SYS_ADMIN, a locked mount). */
export function clonePrivate(root: string, policy: AtimePolicy): PrivateMount | null {
  let fd: number;
  try {
    fd = N.openTree(C.AT_FDCWD, root, C.OPEN_TREE_CLONE | C.OPEN_TREE_CLOEXEC);
  } catch (e) {
    const code = errCode(e);
    if (code === 'EPERM' || code === 'ENOSYS' || code === 'EINVAL') return null;
    throw e;
  }
  const m = { fd, root };
  try {
    setAtime(m, policy);
  } catch {
    // A mount whose flags cannot change here (locked in a user namespace): use the directory's own.
    N.close(fd);
    return null;
  }
  return m;
}

const st1 = new Float64Array(16);
const st2 = new Float64Array(16);

/**
 * An O_PATH descriptor of directory `path` (at or below `m.root`) on the private mount; null when
 * the name there is another directory (a mount in between hides it in the copy).
 */
export function openOnPrivate(m: PrivateMount, path: string): number | null {
  const rel = relative(m.root, path);
  const fd = rel === '' ? N.dup(m.fd) : N.openat(m.fd, rel, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
  N.fstat(fd, st1);
  N.fstatat(C.AT_FDCWD, path, 0, st2);
  if (st1[ST.dev] === st2[ST.dev] && st1[ST.ino] === st2[ST.ino]) return fd;
  N.close(fd);
  return null;
}

/** The closest directory that holds all of `paths` (resolved absolute paths). */
export function commonDir(paths: string[]): string {
  let dir = paths[0]!;
  while (!paths.every((p) => p === dir || p.startsWith(dir === '/' ? '/' : dir + '/'))) dir = dirname(dir);
  return dir;
}
