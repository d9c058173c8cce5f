// A directory tree as a tar stream, in two uses:
// - a container's upper directory as an OCI layer (`strata commit`): kernel-format whiteouts
//   (character device 0/0) become `.wh.<name>` files and an opaque directory
//   (trusted.overlay.opaque=y or user.overlay.opaque=y) gets a `.wh..wh..opq` entry, as Docker's
//   overlay2 driver writes its diffs; OCI-format whiteout files already in the upper are kept as
//   they are; overlayfs's private xattrs never go into the tar;
// - a merged view as one flat tar (`strata export`), which has no whiteouts to convert.
//
// Entries keep owner, mode (setuid/setgid/sticky), nanosecond mtime, xattrs (security.capability
// among them), symlinks, devices and FIFOs; objects that share an inode inside the tree become tar
// hard links to the first name written. Sockets cannot be stored in a tar and are left out, as
// Docker does. The walk goes through directory descriptors, one name at a time with O_NOFOLLOW:
// a symlink in the tree is stored, never followed. Entries are written in byte order of their names,
// so the same tree gives the same tar (and diff ID).

import fs from 'node:fs';
import type { Writable } from 'node:stream';
import * as N from '../native/index.js';
import { isKernelWhiteout, isPrivateXattr, OCI_OPAQUE, OPAQUE_XATTR_TRUSTED, OPAQUE_XATTR_USER, OCI_WHITEOUT_PREFIX } from '../union/whiteout.js';
import { TarWriter, type EntryType, type TarDigests, type TarEntry } from './tar_pack.js';

const { C, ST } = N;

export interface PackOptions {
  /** Convert kernel whiteouts and opaque markers to OCI entries (a layer diff); false for a flat export. */
  layer: boolean;
  gzip: boolean;
  /** Called with the number of uncompressed tar bytes as they are written. */
  onBytes?: (n: number) => void;
}

export interface PackStats extends TarDigests {
  entries: number;
}

function typeOf(mode: number): EntryType | null {
  switch (mode & C.S_IFMT) {
    case C.S_IFREG: return 'file';
    case C.S_IFDIR: return 'directory';
    case C.S_IFLNK: return 'symlink';
    case C.S_IFCHR: return 'character-device';
    case C.S_IFBLK: return 'block-device';
    case C.S_IFIFO: return 'fifo';
    default: return null; // sockets
  }
}

function isOpaqueMarker(v: Buffer | null): boolean {
  return v !== null && v.length === 1 && v[0] === 0x79;
}

/**
 * The bytes of `fd` from offset 0, in chunks of at most 1 MiB sized to what is left of `size`
 * (most files are small: one exact buffer each). Read synchronously: the walk is all this process
 * does, and an event-loop round trip per chunk cost more than the read.
 */
function* readFd(fd: number, size: number): Generator<Buffer> {
  let pos = 0;
  while (pos < size) {
    const buf = Buffer.allocUnsafe(Math.min(size - pos, 1 << 20));
    const n = fs.readSync(fd, buf, 0, buf.length, pos);
    if (n === 0) return;
    pos += n;
    yield n === buf.length ? buf : buf.subarray(0, n);
  }
}

class TreePacker {
  private readonly links = new Map<string, Buffer>();
  private readonly st = N.newStatBuf();
  entries = 0;

  constructor(private readonly tar: TarWriter, private readonly opts: PackOptions) {}

  private xattrs(dirfd: number, name: string): [string, Buffer][] {
    const out: [string, Buffer][] = [];
    let names: string[];
    try {
      names = N.llistxattr(dirfd, name);
    } catch (e) {
      if (N.isErrnoError(e, 'ENOTSUP') || N.isErrnoError(e, 'EOPNOTSUPP')) return out;
      throw e;
    }
    for (const k of names.sort()) {
      if (isPrivateXattr(k)) continue;
      const v = N.lgetxattr(dirfd, name, k);
      if (v !== null) out.push([k, v]);
    }
    return out;
  }

  private entry(path: Buffer, type: EntryType, st: Float64Array, extra: Partial<TarEntry> = {}): TarEntry {
    return {
      name: path, type, mode: st[ST.mode]! & 0o7777, uid: st[ST.uid]!, gid: st[ST.gid]!, size: 0,
      mtimeSec: st[ST.mtimeSec]!, mtimeNsec: st[ST.mtimeNsec]!, ...extra,
    };
  }

  /** Writes the directory open at `dirfd` (tar path `prefix`, "" for the root) and everything below. */
  async dir(dirfd: number, prefix: Buffer): Promise<void> {
    const names = N.readdir(dirfd).map((e) => e[0]).filter((n) => n !== '.' && n !== '..').sort();
    const present = new Set(names);
    for (const name of names) {
      const path = prefix.length ? Buffer.concat([prefix, Buffer.from('/'), Buffer.from(name, 'latin1')]) : Buffer.from(name, 'latin1');
      await this.object(dirfd, name, path, present);
    }
  }

  private async object(dirfd: number, name: string, path: Buffer, siblings: Set<string>): Promise<void> {
    const st = this.st;
    N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW, st);
    const mode = st[ST.mode]!;
    const type = typeOf(mode);
    if (type === null) return;
    if (this.opts.layer && isKernelWhiteout(st)) {
      // A whiteout next to an OCI whiteout of the same name (an upper written both ways): one entry.
      if (siblings.has(OCI_WHITEOUT_PREFIX + name)) return;
      const wh = Buffer.concat([path.subarray(0, path.length - Buffer.byteLength(name, 'latin1')), Buffer.from(OCI_WHITEOUT_PREFIX + name, 'latin1')]);
      await this.add(this.entry(wh, 'file', st, { mode: 0o600 }));
      return;
    }
    const xattrs = this.xattrs(dirfd, name);
    if (type === 'directory') {
      const opaque = this.opts.layer && (isOpaqueMarker(N.lgetxattr(dirfd, name, OPAQUE_XATTR_TRUSTED)) || isOpaqueMarker(N.lgetxattr(dirfd, name, OPAQUE_XATTR_USER)));
      const dirEntry = this.entry(path, 'directory', st, { xattrs });
      await this.add(dirEntry);
      const fd = N.openat(dirfd, name, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      try {
        if (opaque && !N.lstatMaybe(fd, OCI_OPAQUE, N.newStatBuf())) {
          await this.add({ ...dirEntry, name: Buffer.concat([path, Buffer.from(`/${OCI_OPAQUE}`)]), type: 'file', mode: 0o600, xattrs: [] });
        }
        await this.dir(fd, path);
      } finally {
        N.close(fd);
      }
      return;
    }
    if (st[ST.nlink]! > 1) {
      const key = `${st[ST.dev]}:${st[ST.ino]}`;
      const first = this.links.get(key);
      if (first) {
        await this.add(this.entry(path, 'link', st, { linkname: first }));
        return;
      }
      this.links.set(key, path);
    }
    switch (type) {
      case 'symlink':
        await this.add(this.entry(path, type, st, { linkname: Buffer.from(N.readlinkat(dirfd, name), 'latin1'), xattrs }));
        return;
      case 'character-device':
      case 'block-device': {
        const rdev = st[ST.rdev]!;
        await this.add(this.entry(path, type, st, { devmajor: N.major(rdev), devminor: N.minor(rdev), xattrs }));
        return;
      }
      case 'fifo':
        await this.add(this.entry(path, type, st, { xattrs }));
        return;
      default: {
        const size = st[ST.size]!;
        const e = this.entry(path, 'file', st, { size, xattrs });
        if (size === 0) {
          await this.add(e);
          return;
        }
        const fd = N.openat(dirfd, name, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
        try {
          await this.add(e, readFd(fd, size));
        } finally {
          N.close(fd);
        }
      }
    }
  }

  private async add(e: TarEntry, data?: Iterable<Buffer>): Promise<void> {
    this.entries++;
    await this.tar.add(e, data);
  }
}

/**
 * Writes the tree at `root` as a tar to `dest` and returns its digests. With `layer`, the tree is an
 * overlay upper directory and becomes an OCI layer diff.
 */
export async function packTree(root: string, dest: Writable, opts: PackOptions): Promise<PackStats> {
  const tar = new TarWriter(dest, { gzip: opts.gzip, onBytes: opts.onBytes });
  const fd = N.openat(C.AT_FDCWD, root, C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  const packer = new TreePacker(tar, opts);
  try {
    await packer.dir(fd, Buffer.alloc(0));
  } catch (e) {
    tar.abort(e as Error);
    throw e;
  } finally {
    N.close(fd);
  }
  return { ...(await tar.finish()), entries: packer.entries };
}

/** The bytes of regular files below `root` (what a tar of it roughly holds): the total of a progress bar. */
export function treeBytes(root: string): number {
  const st = N.newStatBuf();
  let total = 0;
  const walk = (dirfd: number): void => {
    for (const [name, type] of N.readdir(dirfd)) {
      if (name === '.' || name === '..') continue;
      if (type === C.DT_DIR) {
        const fd = N.openat(dirfd, name, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
        try {
          walk(fd);
        } finally {
          N.close(fd);
        }
      } else if (type === C.DT_REG && N.lstatMaybe(dirfd, name, st)) {
        total += st[ST.size]! + 512;
      }
    }
  };
  const fd = N.openat(C.AT_FDCWD, root, C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  try {
    walk(fd);
  } finally {
    N.close(fd);
  }
  return total;
}
