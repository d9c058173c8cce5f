// Paths inside a container's root, resolved as a process chrooted there would resolve them:
// openat2(RESOLVE_IN_ROOT), so a symlink of the image (absolute or relative) or ".." never leads to
// the host. Used by build (COPY/ADD destinations) and run (mount points of volumes and binds).

import { posix } from 'node:path';
import * as N from '../native/index.js';
import { ImageError } from './types.js';

const { C } = N;

export const IN_ROOT = C.RESOLVE_IN_ROOT | C.RESOLVE_NO_MAGICLINKS;

/**
 * A directory inside the container root (made, with its missing parents, root-owned 0755). Each
 * prefix of the path is resolved from the root in one openat2 (RESOLVE_IN_ROOT), as a chrooted
 * process would resolve it: symlinks of the image, absolute or relative, and "..", stay inside.
 */
export function ensureDir(rootFd: number, rel: string): number {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  const open = (p: string): number => N.openat2(rootFd, p === '' ? '.' : p, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, IN_ROOT);
  let prefix = '';
  for (const part of parts) {
    const next = prefix === '' ? part : `${prefix}/${part}`;
    try {
      N.close(open(next));
    } catch (e) {
      if (!N.isErrnoError(e, 'ENOENT')) throw new ImageError(`cannot use /${rel} in the image: ${(e as Error).message}`);
      const parent = open(prefix);
      try {
        N.mkdirat(parent, part, 0o755);
      } finally {
        N.close(parent);
      }
    }
    prefix = next;
  }
  return open(prefix);
}

/** Whether `rel` inside the container root is a directory (symlinks followed inside the root). */
export function isDirIn(rootFd: number, rel: string): boolean {
  try {
    N.close(N.openat2(rootFd, rel === '' ? '.' : rel, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, IN_ROOT));
    return true;
  } catch {
    return false;
  }
}

/**
 * The host path of a mount point inside the container root at `root` (absolute `target` as the
 * container sees it): a directory, or with `file` a file, made if missing (parents root-owned 0755,
 * a new file empty and 0644). Symlinks on the way are followed inside the root, so the path returned
 * is always below `root` and has no symlink in it (mount(8) may then walk it on the host).
 */
export function mountPointIn(root: string, target: string, file: boolean): string {
  const rel = posix.normalize(`/${target}`).slice(1).replace(/\/$/, '');
  if (rel === '' || rel === '.') throw new ImageError(`cannot mount over the container's root: ${target}`, 125);
  const rootFd = N.openat(C.AT_FDCWD, root, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  let fd = -1;
  try {
    if (!file) {
      fd = ensureDir(rootFd, rel);
    } else {
      try {
        fd = N.openat2(rootFd, rel, C.O_PATH | C.O_CLOEXEC, 0, IN_ROOT);
      } catch (e) {
        if (!N.isErrnoError(e, 'ENOENT')) throw e;
        N.close(ensureDir(rootFd, posix.dirname(rel)));
        // (from the root: a symlink to a missing file is followed inside it, the file made there)
        N.close(N.openat2(rootFd, rel, C.O_CREAT | C.O_WRONLY | C.O_CLOEXEC, 0o644, IN_ROOT));
        fd = N.openat2(rootFd, rel, C.O_PATH | C.O_CLOEXEC, 0, IN_ROOT);
      }
    }
    const host = N.readlinkat(C.AT_FDCWD, `/proc/self/fd/${fd}`);
    if (!host.startsWith(`${root}/`)) throw new ImageError(`cannot mount on ${target}: it is the container's root`, 125);
    return host;
  } catch (e) {
    if (e instanceof ImageError && e.exitCode === 125) throw e;
    throw new ImageError(`cannot make the mount point ${target} in the container: ${(e as Error).message.replace(/^cannot use \S+ in the image: /, '')}`, 125);
  } finally {
    if (fd >= 0) N.close(fd);
    N.close(rootFd);
  }
}
