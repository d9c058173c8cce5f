// The build context of `strata build`: the files COPY and ADD may take (a directory, minus what
// .dockerignore excludes), their checksum for the build cache, and the copy of sources into a
// container's root, every path resolved inside that root (openat2 RESOLVE_IN_ROOT: a symlink in the
// image, absolute or not, never leads out of it, as it would if the path were walked on the host).

import { createHash } from 'node:crypto';
import { closeSync, fstatSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, realpathSync, writeSync } from 'node:fs';
import { join, posix } from 'node:path';
import * as N from '../../native/index.js';
import { ImageError } from '../types.js';
import { IN_ROOT } from '../inroot.js';

const { C } = N;

/** One .dockerignore rule: a pattern over /-separated relative paths; `!` rules bring paths back. */
interface Rule {
  re: RegExp;
  negate: boolean;
}

/** A Go filepath.Match pattern (plus `**`, any number of directories) as a regular expression. */
function patternToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') {
      if (pattern[i + 1] === '*') {
        // "**/" and "/**": any number of directories (including none)
        i++;
        if (pattern[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else {
          re += '.*';
        }
      } else {
        re += '[^/]*';
      }
    } else if (ch === '?') {
      re += '[^/]';
    } else if (ch === '[') {
      const close = pattern.indexOf(']', i + 1);
      if (close < 0) throw new ImageError(`.dockerignore: bad pattern "${pattern}"`);
      let cls = pattern.slice(i + 1, close);
      if (cls.startsWith('^')) cls = `!${cls.slice(1)}`;
      re += `[${cls.startsWith('!') ? `^${cls.slice(1)}` : cls}]`;
      i = close;
    } else if (ch === '\\' && i + 1 < pattern.length) {
      re += pattern[++i]!.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    } else {
      re += ch.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    }
  }
  return new RegExp(`^${re}$`);
}

/** The cleaned relative form of a path in the context ("a/b"), "" for the root; null if it leaves the context. */
export function cleanRel(p: string): string | null {
  const n = posix.normalize(p.replace(/^\/+/, '') || '.').replace(/\/$/, '');
  if (n === '..' || n.startsWith('../')) return null;
  return n === '.' ? '' : n;
}

export class BuildContext {
  private readonly rules: Rule[];

  /**
   * `inRoot`: the root of an image (COPY --from), where symlinks are followed as a chrooted process
   * follows them (inside the root); else a context directory, where a source path may not go through
   * a symlink at all (Docker sends the context as a tar: its symlinks are entries, not ways out).
   */
  constructor(readonly root: string, ignoreText: string | null, private readonly inRoot = false) {
    this.rules = [];
    for (const line of (ignoreText ?? '').split('\n')) {
      let p = line.trim();
      if (p === '' || p.startsWith('#')) continue;
      const negate = p.startsWith('!');
      if (negate) p = p.slice(1).trim();
      const clean = cleanRel(p);
      if (clean === null || clean === '') continue;
      this.rules.push({ re: patternToRegExp(clean), negate });
    }
  }

  static open(root: string): BuildContext {
    let ignore: string | null = null;
    try {
      ignore = readFileSync(join(root, '.dockerignore'), 'utf8');
    } catch {
      // none
    }
    return new BuildContext(root, ignore);
  }

  /** Whether .dockerignore excludes a path (the last rule matching it or one of its parent directories decides). */
  excluded(rel: string): boolean {
    if (rel === '') return false;
    let out = false;
    const parts = rel.split('/');
    for (const r of this.rules) {
      for (let n = 1; n <= parts.length; n++) {
        if (r.re.test(parts.slice(0, n).join('/'))) {
          out = !r.negate;
          break;
        }
      }
    }
    return out;
  }

  /**
   * The context paths a COPY/ADD source names: the path itself, or for a pattern (* ? [ ]) every
   * path it matches, in order; none excluded by .dockerignore. Refuses paths outside the context.
   */
  resolveSource(src: string): string[] {
    const rel = cleanRel(src);
    if (rel === null) throw new ImageError(`COPY/ADD source "${src}" is outside the build context`);
    if (!/[*?[]/.test(rel)) {
      const real = this.resolveInside(rel, src);
      if (this.excluded(real)) throw new ImageError(`COPY/ADD source "${src}" is excluded by .dockerignore`);
      return [real];
    }
    const re = patternToRegExp(rel);
    const depth = rel.split('/').length;
    const out: string[] = [];
    const walk = (dir: string, d: number): void => {
      let names: string[];
      try {
        names = readdirSync(join(this.root, dir)).sort();
      } catch {
        return;
      }
      for (const name of names) {
        const r = dir === '' ? name : `${dir}/${name}`;
        if (d === depth) {
          if (re.test(r) && !this.excluded(r)) out.push(r);
        } else if (lstatSync(join(this.root, r)).isDirectory()) {
          walk(r, d + 1);
        }
      }
    };
    walk('', 1);
    if (out.length === 0) throw new ImageError(`COPY/ADD source "${src}" matches no file in the build context`);
    return out;
  }

  /**
   * The path `rel` names below the root, with no symlink left in it: resolved by the kernel from a
   * descriptor of the root (openat2), never outside it. The last component is not followed.
   */
  private resolveInside(rel: string, src: string): string {
    const rootFd = N.openat(C.AT_FDCWD, this.root, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    let fd: number;
    try {
      const how = this.inRoot ? C.RESOLVE_IN_ROOT | C.RESOLVE_NO_MAGICLINKS : C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_NO_MAGICLINKS;
      fd = N.openat2(rootFd, rel === '' ? '.' : rel, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC, 0, how);
    } catch (e) {
      if (N.isErrnoError(e, 'ENOENT') || N.isErrnoError(e, 'ENOTDIR')) throw new ImageError(`COPY/ADD source "${src}" not found in the build context`);
      if (N.isErrnoError(e, 'ELOOP') || N.isErrnoError(e, 'EXDEV')) throw new ImageError(`COPY/ADD source "${src}" goes through a symlink of the build context`);
      throw e;
    } finally {
      N.close(rootFd);
    }
    try {
      const real = readlinkSync(`/proc/self/fd/${fd}`);
      const root = realpathSync(this.root);
      if (real === root) return '';
      if (!real.startsWith(`${root}/`)) throw new ImageError(`COPY/ADD source "${src}" is outside the build context`);
      return real.slice(root.length + 1);
    } finally {
      N.close(fd);
    }
  }

  /** Every path below `rel` (itself first), minus excluded ones, in byte order. */
  listTree(rel: string): string[] {
    const out: string[] = [];
    const walk = (r: string): void => {
      out.push(r);
      const st = lstatSync(join(this.root, r));
      if (!st.isDirectory()) return;
      for (const name of readdirSync(join(this.root, r)).sort()) {
        const child = r === '' ? name : `${r}/${name}`;
        if (!this.excluded(child)) walk(child);
      }
    };
    walk(rel);
    return out;
  }
}

/** A checksum of what COPY would copy from these trees (names, types, permission bits, contents, link targets). */
export function sourceChecksum(root: string, rels: readonly string[], list: (rel: string) => string[]): string {
  const h = createHash('sha256');
  for (const top of rels) {
    for (const rel of list(top)) {
      const st = lstatSync(join(root, rel));
      h.update(`${rel}\0${st.mode.toString(8)}\0`);
      if (st.isSymbolicLink()) h.update(readlinkSync(join(root, rel)));
      else if (st.isFile()) h.update(fileDigest(join(root, rel)));
      h.update('\0');
    }
  }
  return h.digest('hex');
}

function fileDigest(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

export interface CopyOwner {
  uid: number;
  gid: number;
  /** --chmod: replaces the permission bits of what is copied. */
  mode?: number;
}

/** Seconds and nanoseconds of atime and mtime. */
function times(path: string): [number, number, number, number] {
  const b = lstatSync(path, { bigint: true });
  const sec = (ns: bigint): number => Number(ns / 1_000_000_000n);
  const nsec = (ns: bigint): number => Number(ns % 1_000_000_000n);
  return [sec(b.atimeNs), nsec(b.atimeNs), sec(b.mtimeNs), nsec(b.mtimeNs)];
}

/** Removes what is at (dirFd, name) unless it is a directory (an existing one is written into). */
function clearSpot(dirFd: number, name: string, forDir: boolean): void {
  const st = new Float64Array(16);
  if (!N.lstatMaybe(dirFd, name, st)) return;
  const isDir = (st[N.ST.mode]! & C.S_IFMT) === C.S_IFDIR;
  if (isDir && forDir) return;
  if (isDir) throw new ImageError(`cannot copy a file over the directory ${name} in the image`);
  N.unlinkat(dirFd, name, 0);
}

/**
 * Copies the context tree at `srcAbs` to (dirFd, name) inside the container: files, directories,
 * symlinks (as links); owner and mode as `owner` says, modification times kept.
 */
export function copyInto(srcAbs: string, dirFd: number, name: string, owner: CopyOwner, listChildren: (abs: string) => string[]): void {
  const st = lstatSync(srcAbs);
  const perm = owner.mode ?? (st.mode & 0o7777);
  const [as, an, ms, mn] = times(srcAbs);
  if (st.isDirectory()) {
    clearSpot(dirFd, name, true);
    try {
      N.mkdirat(dirFd, name, 0o700);
    } catch (e) {
      if (!N.isErrnoError(e, 'EEXIST')) throw e;
    }
    const sub = N.openat2(dirFd, name, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC | C.O_NOFOLLOW, 0, IN_ROOT | C.RESOLVE_NO_SYMLINKS);
    try {
      for (const child of listChildren(srcAbs)) copyInto(join(srcAbs, child), sub, child, owner, listChildren);
    } finally {
      N.close(sub);
    }
    N.fchownat(dirFd, name, owner.uid, owner.gid, C.AT_SYMLINK_NOFOLLOW);
    N.fchmodat(dirFd, name, perm, 0);
    N.utimensat(dirFd, name, as, an, ms, mn, C.AT_SYMLINK_NOFOLLOW);
    return;
  }
  clearSpot(dirFd, name, false);
  if (st.isSymbolicLink()) {
    N.symlinkat(readlinkSync(srcAbs), dirFd, name);
    N.fchownat(dirFd, name, owner.uid, owner.gid, C.AT_SYMLINK_NOFOLLOW);
    N.utimensat(dirFd, name, as, an, ms, mn, C.AT_SYMLINK_NOFOLLOW);
    return;
  }
  if (!st.isFile()) throw new ImageError(`COPY: ${srcAbs} is not a regular file, directory or symlink`);
  const src = openSync(srcAbs, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
  try {
    const dst = N.openat(dirFd, name, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW | C.O_CLOEXEC, 0o600);
    try {
      // (read and write: the context and the container's mount are different filesystems)
      const buf = Buffer.allocUnsafe(Math.min(fstatSync(src).size, 1 << 20) || 1);
      for (;;) {
        const n = readSync(src, buf, 0, buf.length, null);
        if (n === 0) break;
        for (let w = 0; w < n;) w += writeSync(dst, buf, w, n - w);
      }
      N.fchown(dst, owner.uid, owner.gid);
      N.fchmod(dst, perm);
      N.futimens(dst, as, an, ms, mn);
    } finally {
      N.close(dst);
    }
  } finally {
    closeSync(src);
  }
}
