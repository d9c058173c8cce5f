// Each layer is reached through a private, detached copy of its mount (the kernel's overlay does
// the same with clone_private_mount), whose atime flags are the union's own: the lowers never get
// atime updates (the kernel opens lower files O_NOATIME), and the upper follows the strata
// mount's noatime / relatime / strictatime / nodiratime whatever the flags of the mount the upper
// directory lives on. Reads the kernel serves by passthrough go to files opened here, so atime is
// then kept by the upper filesystem under these flags, as the kernel's overlay keeps it.
// The upper and the work directory share one private mount (a copy-up links or renames from one
// into the other, which the kernel refuses across mounts), cloned at their closest common directory.

import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
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

/**
 * Clones the mount at `root` with `policy`; null when the kernel does not allow it (no CAP_SYS_ADMIN, a
 * locked mount). With `storedIds` (a user namespace whose mapping is the identity, see identityUserns),
 * a mount that is idmapped is cloned without its idmapping: the daemon then sees the ids the layer
 * stores. So it must, when it maps owners itself (uidmapping=): podman 4 (containers/storage before
 * 1.47) both idmaps the lower layers it gives its mount program and passes the mapping to it, which
 * would shift every lower owner twice.
 */
export function clonePrivate(root: string, policy: AtimePolicy, storedIds: number | null = null): PrivateMount | null {
  let fd: number;
  if (storedIds !== null && onIdmappedMount(root)) {
    try {
      fd = N.openTreeAttr(C.AT_FDCWD, root, C.OPEN_TREE_CLONE | C.OPEN_TREE_CLOEXEC, C.MOUNT_ATTR_IDMAP | attrOf(policy),
        C.MOUNT_ATTR__ATIME | C.MOUNT_ATTR_NODIRATIME, storedIds);
    } catch (e) {
      throw new Error(`${root} is on an idmapped mount, and its stored owners cannot be read with the owner mapping given (open_tree_attr, Linux 6.15: ${errCode(e) ?? String(e)})`);
    }
    return { fd, root };
  }
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

/** Whether `path` is on an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP): its options in /proc/self/mountinfo. */
export function onIdmappedMount(path: string): boolean {
  const fd = N.openat(C.AT_FDCWD, path, C.O_PATH | C.O_CLOEXEC, 0);
  let mntId: string | undefined;
  try {
    mntId = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'))?.[1];
  } finally {
    N.close(fd);
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'latin1').split('\n')) {
    const f = line.split(' ');
    if (f[0] === mntId) return (f[5] ?? '').split(',').includes('idmapped');
  }
  return false;
}

/**
 * A descriptor of a new user namespace whose uid and gid maps are the identity (0 0 4294967295), for
 * clonePrivate: an idmapping through it shows the ids a filesystem stores. Made by a child process
 * (`unshare --user`; a process with threads cannot unshare itself), ended once the namespace is open.
 */
export async function identityUserns(): Promise<number> {
  const child = spawn('unshare', ['--user', '--', 'sh', '-c', 'echo; read x'], { stdio: ['pipe', 'pipe', 'ignore'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`unshare --user exited with ${code}`)));
      child.stdout!.once('data', () => resolve());
    });
    const pid = child.pid!;
    for (const map of ['uid_map', 'gid_map']) writeFileSync(`/proc/${pid}/${map}`, '0 0 4294967295\n');
    return N.openat(C.AT_FDCWD, `/proc/${pid}/ns/user`, C.O_RDONLY | C.O_CLOEXEC, 0);
  } finally {
    child.stdin!.end();
    child.kill();
  }
}

/** The closest directory that holds all of `paths` (resolved absolute paths). */
export function commonDir(paths: string[]): string {
  let dir = paths[0]!;
  while (!paths.every((p) => p === dir || p.startsWith(dir === '/' ? '/' : dir + '/'))) dir = dirname(dir);
  return dir;
}
