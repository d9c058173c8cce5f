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
export function ensureDir(rootFd: number, rel: string, made?: string[]): number {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  const rootPath = made ? hostPath(rootFd) : '';
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
        // (where it really is: the path may go through symlinks of the image)
        if (made) made.push(posix.join(hostPath(parent).slice(rootPath.length + 1), part));
      } finally {
        N.close(parent);
      }
    }
    prefix = next;
  }
  return open(prefix);
}

/** The path of what a descriptor refers to. */
function hostPath(fd: number): string {
  return N.readlinkat(C.AT_FDCWD, `/proc/self/fd/${fd}`);
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
 * `made` gets the paths (relative to the root) of what was made, parents first.
 */
export function mountPointIn(root: string, target: string, file: boolean, made?: string[]): string {
  const rel = posix.normalize(`/${target}`).slice(1).replace(/\/$/, '');
  if (rel === '' || rel === '.') throw new ImageError(`cannot mount over the container's root: ${target}`, 125);
  const rootFd = N.openat(C.AT_FDCWD, root, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  let fd = -1;
  try {
    if (!file) {
      fd = ensureDir(rootFd, rel, made);
    } else {
      try {
        fd = N.openat2(rootFd, rel, C.O_PATH | C.O_CLOEXEC, 0, IN_ROOT);
      } catch (e) {
        if (!N.isErrnoError(e, 'ENOENT')) throw e;
        N.close(ensureDir(rootFd, posix.dirname(rel), made));
        // (from the root: a symlink to a missing file is followed inside it, the file made there)
        const f = N.openat2(rootFd, rel, C.O_CREAT | C.O_WRONLY | C.O_CLOEXEC, 0o644, IN_ROOT);
        try {
          if (made) made.push(hostPath(f).slice(hostPath(rootFd).length + 1));
        } finally {
          N.close(f);
        }
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

/**
 * Takes the mount points a start made (mountPointIn's `made`, paths without symlinks) out of an
 * upper directory again, deepest first, where they are still empty: a build step's mounts leave no
 * trace in its layer. Each parent is opened beneath the upper without following any symlink.
 */
export function removeMountPoints(upper: string, made: readonly string[]): void {
  const upperFd = N.openat(C.AT_FDCWD, upper, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  const st = new Float64Array(16);
  try {
    for (const rel of [...made].reverse()) {
      const dir = posix.dirname(rel);
      let pfd: number;
      try {
        pfd = N.openat2(upperFd, dir, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0, C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_NO_MAGICLINKS);
      } catch {
        continue;
      }
      try {
        const name = posix.basename(rel);
        if (!N.lstatMaybe(pfd, name, st)) continue;
        const type = st[N.ST.mode]! & C.S_IFMT;
        if (type === C.S_IFDIR) N.unlinkat(pfd, name, C.AT_REMOVEDIR);
        else if (type === C.S_IFREG && st[N.ST.size] === 0) N.unlinkat(pfd, name, 0);
      } catch {
        // not empty: the command put something there; it stays
      } finally {
        N.close(pfd);
      }
    }
  } finally {
    N.close(upperFd);
  }
}
