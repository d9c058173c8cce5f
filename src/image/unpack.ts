// Unpacking a layer tar into a directory in the kernel's overlay format, streaming (tar-stream).
//
// Security boundary: every entry's parent directory is resolved inside the layer root with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV), and the entry is then made
// relative to that directory descriptor by its last component only. So `../x`, `/etc/x`, a
// symlink followed by a write through it (`a -> /etc`, then `a/passwd`) and a hard link to a
// path outside are refused by the kernel, not by string checks.
//
// Whiteouts: `.wh.NAME` becomes a character device 0/0 named NAME, `.wh..wh..opq` sets
// trusted.overlay.opaque=y on its directory. Owners, modes (setuid/setgid/sticky), nanosecond
// times (PAX mtime/atime), xattrs (PAX SCHILY.xattr.*), hard links, symlinks, devices and FIFOs are
// kept; directory times are set after everything inside them.

import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import tar from 'tar-stream';
import * as N from '../native/index.js';
import { ImageError } from './types.js';

const { C } = N;
const RESOLVE = C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV;
const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';
const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';

// tar-stream decodes PAX records as UTF-8, which mangles binary values (security.capability) and
// names that are not UTF-8. Decode them as latin1 instead: one char per byte, the addon's
// convention for names and the only lossless one.
{
  const require = createRequire(import.meta.url);
  const headers = require(require.resolve('tar-stream').replace(/index\.js$/, 'headers.js')) as { decodePax: (b: Buffer) => Record<string, string> };
  headers.decodePax = (buf: Buffer): Record<string, string> => {
    const out: Record<string, string> = {};
    let rest = buf;
    while (rest.length > 0) {
      const sp = rest.indexOf(0x20);
      const len = sp > 0 ? parseInt(rest.subarray(0, sp).toString('latin1'), 10) : NaN;
      if (!(len > sp + 1) || len > rest.length) break;
      const rec = rest.subarray(sp + 1, len - 1);
      const eq = rec.indexOf(0x3d);
      if (eq < 0) break;
      out[rec.subarray(0, eq).toString('latin1')] = rec.subarray(eq + 1).toString('latin1');
      rest = rest.subarray(len);
    }
    return out;
  };
}

export type TarHeader = Omit<tar.Header, 'pax'> & { pax?: Record<string, string> };

interface Times {
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
}

/** "1700000000.123456789" (PAX) -> seconds and nanoseconds. */
function paxTime(v: string | undefined): [number, number] | null {
  if (!v || !/^-?\d+(\.\d+)?$/.test(v)) return null;
  const [s, frac = ''] = v.split('.');
  return [Number(s), Number((frac + '000000000').slice(0, 9))];
}

function entryTimes(h: TarHeader): Times {
  const m = paxTime(h.pax?.mtime) ?? [Math.floor((h.mtime?.getTime() ?? 0) / 1000), 0];
  const a = paxTime(h.pax?.atime) ?? m;
  return { atimeSec: a[0], atimeNsec: a[1], mtimeSec: m[0], mtimeNsec: m[1] };
}

/** xattrs of an entry from PAX SCHILY.xattr.* (values as bytes) and LIBARCHIVE.xattr.* (base64). */
function entryXattrs(h: TarHeader): [string, Buffer][] {
  const out: [string, Buffer][] = [];
  for (const [k, v] of Object.entries(h.pax ?? {}) as [string, string][]) {
    if (k.startsWith('SCHILY.xattr.')) out.push([k.slice(13), Buffer.from(v, 'latin1')]);
    else if (k.startsWith('LIBARCHIVE.xattr.')) out.push([decodeURIComponent(k.slice(17)), Buffer.from(v, 'base64')]);
  }
  // Overlay's own attributes describe the union, not the file: a layer does not get to set them.
  return out.filter(([name]) => !name.startsWith(OVERLAY_XATTR_PREFIX));
}

function owner(h: TarHeader): [number, number] {
  const uid = h.pax?.uid !== undefined ? Number(h.pax.uid) : h.uid ?? 0;
  const gid = h.pax?.gid !== undefined ? Number(h.pax.gid) : h.gid ?? 0;
  return [uid, gid];
}

/** Splits an entry name into its parent path (relative to the root) and last component. */
function splitName(raw: string): { parent: string; base: string } {
  let name = raw;
  while (name.length > 1 && name.endsWith('/')) name = name.slice(0, -1);
  while (name.startsWith('./')) name = name.slice(2);
  const i = name.lastIndexOf('/');
  if (i < 0) return { parent: '.', base: name };
  return { parent: name.slice(0, i) || '/', base: name.slice(i + 1) };
}

/** One line saying why an entry was refused, from the errno the kernel gave. */
function entryError(name: string, e: unknown, what = 'path'): ImageError {
  const shown = JSON.stringify(Buffer.from(name, 'latin1').toString('utf8')).slice(0, 200);
  if (N.isErrnoError(e)) {
    switch (e.code) {
      case 'EXDEV': return new ImageError(`layer entry ${shown}: ${what} leads outside the layer`);
      case 'ELOOP': return new ImageError(`layer entry ${shown}: ${what} goes through a symlink`);
      case 'ENAMETOOLONG': return new ImageError(`layer entry ${shown}: name longer than NAME_MAX (255 bytes)`);
      case 'ENOTDIR': return new ImageError(`layer entry ${shown}: ${what} goes through a non-directory`);
      default: return new ImageError(`layer entry ${shown}: ${e.message}`);
    }
  }
  return e instanceof ImageError ? e : new ImageError(`layer entry ${shown}: ${(e as Error).message}`);
}

/** Removes `base` in `dirFd`, a directory with everything below it included. */
function removeAt(dirFd: number, base: string): void {
  try {
    N.unlinkat(dirFd, base, 0);
    return;
  } catch (e) {
    if (!N.isErrnoError(e, 'EISDIR') && !N.isErrnoError(e, 'EPERM')) throw e;
  }
  const fd = N.openat2(dirFd, base, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0, RESOLVE);
  try {
    for (const [name] of N.readdir(fd)) removeAt(fd, name);
  } finally {
    N.close(fd);
  }
  N.unlinkat(dirFd, base, C.AT_REMOVEDIR);
}

/**
 * Unpacks a layer tar into the directory `rootFd` (an O_PATH descriptor of an empty directory).
 * Write the tar to `sink`; when it has finished, call `finish()` (sets directory times).
 */
export class LayerUnpacker {
  readonly sink: Writable;
  private readonly dirTimes = new Map<string, Times>();
  entries = 0;
  /** Xattrs the filesystem refused (EPERM, ENOTSUP) and that were left out. */
  skippedXattrs = 0;

  constructor(private readonly rootFd: number) {
    const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
    extract.on('entry', (raw, stream, next) => {
      const header = raw as TarHeader;
      this.entry(header, stream as unknown as NodeJS.ReadableStream).then(() => next(), (e: unknown) => {
        stream.resume();
        next(e as Error);
      });
    });
    this.sink = extract as unknown as Writable;
  }

  /** Sets the times of every directory the tar named, now that nothing more goes into them. */
  finish(): void {
    this.release();
    for (const [path, t] of [...this.dirTimes].reverse()) {
      const fd = this.resolve(path, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC);
      try {
        N.utimensat(fd, '', t.atimeSec, t.atimeNsec, t.mtimeSec, t.mtimeNsec, C.AT_EMPTY_PATH);
      } finally {
        N.close(fd);
      }
    }
  }

  private resolve(path: string, flags: number): number {
    return N.openat2(this.rootFd, path, flags, 0, RESOLVE);
  }

  /**
   * The last parent directory opened, kept open for the next entries (a tar lists a directory's
   * entries together). Dropped whenever anything is removed, since a removal can make the same
   * path name another directory.
   */
  private parentPath: string | null = null;
  private parentFd = -1;
  /** Parents the cache forgot while an entry still used them: closed when that entry is done. */
  private readonly pendingClose: number[] = [];
  /** clear()'s stat buffer (one per unpacker: a new Float64Array per entry costs 1.5-2.5 us). */
  private readonly st = N.newStatBuf();

  private dropParent(): void {
    if (this.parentFd >= 0) N.close(this.parentFd);
    this.parentFd = -1;
    this.parentPath = null;
  }

  /** Closes the descriptors the unpacker holds (finish() does too); for a failed unpack. */
  release(): void {
    this.dropParent();
    for (const fd of this.pendingClose.splice(0)) N.close(fd);
  }

  /** The parent directory of an entry (cached: not to be closed by the caller). */
  private parentOf(parent: string): number {
    if (this.parentPath !== parent) {
      this.dropParent();
      this.parentFd = this.openParent(parent);
      this.parentPath = parent;
    }
    return this.parentFd;
  }

  /** The parent directory of an entry, created (0755, root) when the tar did not name it first. */
  private openParent(parent: string): number {
    const flags = C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC;
    try {
      return this.resolve(parent, flags);
    } catch (e) {
      if (!N.isErrnoError(e, 'ENOENT')) throw e;
    }
    let fd = this.resolve('.', flags);
    try {
      for (const comp of parent.split('/')) {
        if (comp === '' || comp === '.') continue;
        let next: number;
        try {
          next = N.openat2(fd, comp, flags, 0, RESOLVE);
        } catch (e) {
          if (!N.isErrnoError(e, 'ENOENT')) throw e;
          N.mkdirat(fd, comp, 0o755);
          next = N.openat2(fd, comp, flags, 0, RESOLVE);
        }
        N.close(fd);
        fd = next;
      }
      return fd;
    } catch (e) {
      N.close(fd);
      throw e;
    }
  }

  private async entry(h: TarHeader, stream: NodeJS.ReadableStream): Promise<void> {
    this.entries++;
    const { parent, base } = splitName(h.name);
    if (base === '..' || (base === '' && parent !== '.')) throw new ImageError(`layer entry ${JSON.stringify(h.name)}: invalid name`);
    if (base === '.' || base === '' || base === '/') {
      // The layer root itself.
      if (h.type === 'directory') this.setAttrs(this.rootFd, '', h, true);
      stream.resume();
      return;
    }
    let dirFd: number;
    try {
      dirFd = this.parentOf(parent);
    } catch (e) {
      throw entryError(h.name, e);
    }
    try {
      await this.create(dirFd, parent, base, h, stream);
    } catch (e) {
      this.dropParent();
      throw entryError(h.name, e, h.type === 'link' ? 'hard link target' : 'path');
    } finally {
      for (const fd of this.pendingClose.splice(0)) N.close(fd);
    }
  }

  private async create(dirFd: number, parent: string, base: string, h: TarHeader, stream: NodeJS.ReadableStream): Promise<void> {
    if (base.startsWith(WHITEOUT_PREFIX)) {
      stream.resume();
      if (base === OPAQUE) {
        N.lsetxattr(dirFd, '', 'trusted.overlay.opaque', Buffer.from('y'), 0);
      } else if (!base.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) {
        const target = base.slice(WHITEOUT_PREFIX.length);
        if (target === '' || target === '.' || target === '..') throw new ImageError('invalid whiteout name');
        this.clear(dirFd, target, false);
        N.mknodat(dirFd, target, C.S_IFCHR, 0);
        // The whiteout takes the .wh. entry's owner and times, so that unpacking is reproducible.
        this.setAttrs(dirFd, target, { ...h, mode: 0, type: 'character-device' } as TarHeader, false);
      }
      return;
    }
    const path = parent === '.' ? base : `${parent}/${base}`;
    switch (h.type) {
      case 'file':
      case 'contiguous-file': {
        const flags = C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW | C.O_CLOEXEC;
        let fd: number;
        try {
          fd = N.openat(dirFd, base, flags, 0o600);
        } catch (e) {
          // A later entry replaces an earlier one of the same name.
          if (!N.isErrnoError(e, 'EEXIST')) throw e;
          this.clear(dirFd, base, false);
          fd = N.openat(dirFd, base, flags, 0o600);
        }
        try {
          let pos = 0;
          for await (const chunk of stream as AsyncIterable<Buffer>) {
            for (let off = 0; off < chunk.length;) {
              const n = N.pwrite(fd, chunk, off, chunk.length - off, pos);
              off += n;
              pos += n;
            }
          }
          this.setAttrs(fd, '', h, false, true);
        } finally {
          N.close(fd);
        }
        return;
      }
      case 'directory': {
        stream.resume();
        try {
          N.mkdirat(dirFd, base, 0o700);
        } catch (e) {
          if (!N.isErrnoError(e, 'EEXIST')) throw e;
          if (!this.clear(dirFd, base, true)) N.mkdirat(dirFd, base, 0o700);
        }
        this.setAttrs(dirFd, base, h, true);
        this.dirTimes.set(path, entryTimes(h));
        return;
      }
      case 'symlink':
        stream.resume();
        this.clear(dirFd, base, false);
        N.symlinkat(h.linkname ?? '', dirFd, base);
        this.setAttrs(dirFd, base, h, false);
        return;
      case 'link': {
        stream.resume();
        const target = h.linkname ?? '';
        const src = this.resolve(target, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC);
        try {
          this.clear(dirFd, base, false);
          N.linkat(src, '', dirFd, base, C.AT_EMPTY_PATH);
        } finally {
          N.close(src);
        }
        return;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        stream.resume();
        this.clear(dirFd, base, false);
        const kind = h.type === 'fifo' ? C.S_IFIFO : h.type === 'block-device' ? C.S_IFBLK : C.S_IFCHR;
        N.mknodat(dirFd, base, kind | 0o600, h.type === 'fifo' ? 0 : N.makedev(h.devmajor ?? 0, h.devminor ?? 0));
        this.setAttrs(dirFd, base, h, false);
        return;
      }
      default:
        // Other kinds (sockets cannot be archived; unknown vendor types) carry nothing to unpack.
        stream.resume();
    }
  }

  /**
   * Makes room for `base`: a later entry replaces an earlier one of the same name (as tar does),
   * except that a directory stays a directory. Returns whether a directory was kept.
   */
  private clear(dirFd: number, base: string, wantDir: boolean): boolean {
    const st = this.st;
    if (!N.lstatMaybe(dirFd, base, st)) return false;
    const isDir = (st[N.ST.mode]! & C.S_IFMT) === C.S_IFDIR;
    if (isDir && wantDir) return true;
    // dirFd stays open for this entry (the cache only forgets it); the next entry resolves again.
    if (dirFd === this.parentFd) {
      this.parentFd = -1;
      this.parentPath = null;
      this.pendingClose.push(dirFd);
    }
    removeAt(dirFd, base);
    return false;
  }

  /**
   * Owner, xattrs, mode and times of an entry, in the order that keeps them all: chown first
   * (it clears setuid bits and capabilities), then xattrs, then mode, then times. `fd` with path
   * "" is the object itself (an open file or the root); otherwise `path` inside directory `fd`.
   */
  private setAttrs(fd: number, path: string, h: TarHeader, isDir: boolean, isOpenFile = false): void {
    const [uid, gid] = owner(h);
    const symlink = h.type === 'symlink';
    if (isOpenFile) N.fchown(fd, uid, gid);
    else N.fchownat(fd, path, uid, gid, path === '' ? C.AT_EMPTY_PATH : C.AT_SYMLINK_NOFOLLOW);
    for (const [name, value] of entryXattrs(h)) {
      try {
        if (isOpenFile) N.fsetxattr(fd, name, value, 0);
        else N.lsetxattr(fd, path, name, value, 0);
      } catch (e) {
        // As Docker: an attribute this filesystem cannot hold (user.* on a symlink, a namespace it
        // does not support) is left out rather than failing the layer.
        if (!N.isErrnoError(e, 'EPERM') && !N.isErrnoError(e, 'ENOTSUP') && !N.isErrnoError(e, 'EOPNOTSUPP')) throw e;
        this.skippedXattrs++;
      }
    }
    if (!symlink) {
      const mode = (h.mode ?? (isDir ? 0o755 : 0o644)) & 0o7777;
      if (isOpenFile) N.fchmod(fd, mode);
      else if (path === '') N.fchmodat(fd, '', mode, C.AT_EMPTY_PATH);
      else N.fchmodat(fd, path, mode, 0);
    }
    if (!isDir) {
      const t = entryTimes(h);
      if (isOpenFile) N.futimens(fd, t.atimeSec, t.atimeNsec, t.mtimeSec, t.mtimeNsec);
      else N.utimensat(fd, path, t.atimeSec, t.atimeNsec, t.mtimeSec, t.mtimeNsec, C.AT_SYMLINK_NOFOLLOW);
    } else if (path === '') {
      this.dirTimes.set('.', entryTimes(h));
    }
  }
}
