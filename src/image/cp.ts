// `strata cp`: files between a container and the host, with docker cp's rules.
//
//   SRC is a file:      DEST missing → a file of that name (its directory must exist; "DEST/" refused);
//                       DEST a directory → DEST/NAME; DEST a file → replaced
//   SRC is a directory: DEST missing → made as a copy of SRC (its parent must exist);
//                       DEST a directory → DEST/NAME, or with "SRC/." SRC's contents into DEST;
//                       DEST a file → refused
//
// The container's side is its merged view (mounted for the copy when the container is not running),
// every path resolved inside the container's root (openat2 RESOLVE_IN_ROOT: an image symlink, even
// to an absolute host path, leads inside it). What is copied keeps modes and times; owners are root's
// (files into a container, as docker gives them the container's root; files out, the invoking user,
// root here), or the source's with -a. A symlink is copied as a link; -L follows SRC itself if it is one.

import { lstatSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join, posix } from 'node:path';
import * as N from '../native/index.js';
import { copyInto } from './build/context.js';
import { IN_ROOT } from './inroot.js';
import { ImageError } from './types.js';

const { C } = N;

export interface CpEnd {
  /** The container's mounted root, or null for the host. */
  root: string | null;
  path: string;
}

export interface CpOptions {
  archive?: boolean;
  followLink?: boolean;
  /**
   * The owner each copy gets, from the one it would get (the source's with `archive`, else root's): the
   * ids a running container's mapped mount shows for them (see cli/cp.ts).
   */
  mapOwner?: (o: { uid: number; gid: number }) => { uid: number; gid: number };
}

const bad = (msg: string): never => {
  throw new ImageError(msg);
};

/** An O_PATH descriptor of `path` on its side (the last component followed only with `follow`), or null if missing. */
function openEnd(end: CpEnd, path: string, follow: boolean): number | null {
  const flags = C.O_PATH | C.O_CLOEXEC | (follow ? 0 : C.O_NOFOLLOW);
  try {
    if (end.root === null) return N.openat(C.AT_FDCWD, path, flags, 0);
    const rootFd = N.openat(C.AT_FDCWD, end.root, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    try {
      const rel = posix.normalize(`/${path}`).slice(1);
      return N.openat2(rootFd, rel === '' ? '.' : rel, flags, 0, IN_ROOT);
    } finally {
      N.close(rootFd);
    }
  } catch (e) {
    if (N.isErrnoError(e, 'ENOENT')) return null;
    if (N.isErrnoError(e, 'ENOTDIR')) bad(`${describe(end, path)}: not a directory on the way`);
    throw e;
  }
}

function describe(end: CpEnd, path: string): string {
  return end.root === null ? path : `container:${path}`;
}

/** The real path of a descriptor's object. */
function realPath(fd: number): string {
  return N.readlinkat(C.AT_FDCWD, `/proc/self/fd/${fd}`);
}

/** Copies SRC to DEST (one side in a container, see the header). */
export function copyPaths(src: CpEnd, dest: CpEnd, opts: CpOptions = {}): void {
  const contentsOnly = /\/\.$/.test(src.path);
  const srcFd = openEnd(src, src.path, opts.followLink ?? false) ?? bad(`${describe(src, src.path)}: no such file or directory`);
  let srcReal: string;
  try {
    srcReal = realPath(srcFd);
  } finally {
    N.close(srcFd);
  }
  const st = lstatSync(srcReal);
  if (!st.isDirectory() && !st.isFile() && !st.isSymbolicLink()) bad(`${describe(src, src.path)}: not a file, directory or symlink`);
  const map = opts.mapOwner ?? ((o) => o);
  const ownerOf = (p: string): { uid: number; gid: number } => {
    if (!opts.archive) return map({ uid: 0, gid: 0 });
    const s = lstatSync(p);
    return map({ uid: s.uid, gid: s.gid });
  };
  // With a map, every owner is found before anything is copied (an id the map has none for is said
  // while nothing is written yet), and kept for the copy.
  const owners = new Map<string, { uid: number; gid: number }>();
  const owner = (p: string): { uid: number; gid: number } => owners.get(p) ?? ownerOf(p);
  if (opts.mapOwner) walkOwners(srcReal, (p) => owners.set(p, ownerOf(p)), contentsOnly);
  const destFd = openEnd(dest, dest.path, true);
  const intoDir = destFd !== null && (() => {
    try {
      return statSync(realPath(destFd)).isDirectory();
    } finally {
      N.close(destFd);
    }
  })();
  let dirFd: number;
  let name: string;
  if (destFd !== null && intoDir) {
    dirFd = openEnd(dest, dest.path, true)!;
    name = basename(srcReal);
  } else {
    if (destFd !== null && st.isDirectory()) bad(`cannot copy a directory to the file ${describe(dest, dest.path)}`);
    if (destFd === null && !st.isDirectory() && /\/$/.test(dest.path)) bad(`${describe(dest, dest.path)}: no such directory`);
    const parent = dirname(posix.normalize(dest.path.replace(/\/+$/, '')) || '/');
    dirFd = openEnd(dest, parent, true) ?? bad(`${describe(dest, parent)}: no such directory`);
    name = basename(dest.path.replace(/\/+$/, ''));
    if (name === '' || name === '.' || name === '..') bad(`${describe(dest, dest.path)}: not a name to copy to`);
  }
  try {
    const dirReal = realPath(dirFd);
    if (!statSync(dirReal).isDirectory()) bad(`${describe(dest, dest.path)}: not a directory`);
    const target = N.openat(C.AT_FDCWD, dirReal, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    const list = (abs: string): string[] => readdirSync(abs).sort();
    try {
      if (st.isDirectory() && contentsOnly && intoDir) {
        for (const child of list(srcReal)) copyTree(join(srcReal, child), target, child, owner, list);
      } else {
        copyTree(srcReal, target, name, owner, list);
      }
    } finally {
      N.close(target);
    }
  } finally {
    N.close(dirFd);
  }
}

/** Calls `visit` for every object of the tree at `abs` (its root too, unless only its contents are copied). */
function walkOwners(abs: string, visit: (p: string) => unknown, contentsOnly: boolean): void {
  if (!contentsOnly) visit(abs);
  if (!lstatSync(abs).isDirectory()) return;
  for (const child of readdirSync(abs)) walkOwners(join(abs, child), visit, false);
}

/** copyInto with each object's owner from `owner` (the source's with -a). */
function copyTree(abs: string, dirFd: number, name: string, owner: (p: string) => { uid: number; gid: number }, list: (abs: string) => string[]): void {
  const own = owner(abs);
  if (!lstatSync(abs).isDirectory()) {
    copyInto(abs, dirFd, name, own, list);
    return;
  }
  // a directory: itself without children first, then each child with its own owner
  copyInto(abs, dirFd, name, own, () => []);
  const sub = N.openat2(dirFd, name, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC | C.O_NOFOLLOW, 0, C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS);
  try {
    for (const child of list(abs)) copyTree(join(abs, child), sub, child, owner, list);
  } finally {
    N.close(sub);
  }
  // (the children's writes moved the directory's times: again as the source's)
  const s = lstatSync(abs, { bigint: true });
  const sec = (ns: bigint): number => Number(ns / 1_000_000_000n);
  const nsec = (ns: bigint): number => Number(ns % 1_000_000_000n);
  N.utimensat(dirFd, name, sec(s.atimeNs), nsec(s.atimeNs), sec(s.mtimeNs), nsec(s.mtimeNs), C.AT_SYMLINK_NOFOLLOW);
}
