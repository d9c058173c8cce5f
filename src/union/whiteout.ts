// Whiteouts and opaque directories, in both formats we read:
// - the kernel's: a whiteout is a character device 0/0; an opaque directory carries the xattr
//   trusted.overlay.opaque (or user.overlay.opaque) = "y". The value "x" is not opaque: it marks a
//   directory that holds xattr whiteouts (Linux 6.7+, made by tools such as mkcomposefs, never by
//   overlayfs itself): in a lower layer, an empty regular file with the xattr
//   trusted.overlay.whiteout (or user.overlay.whiteout) is a whiteout too.
// - OCI image layers: a file ".wh.<name>" hides <name> in the layers below (never in its own
//   layer); a file ".wh..wh..opq" makes its directory opaque.
// And the private xattr namespaces that the merged view never shows.

import { errCode } from '../fuse/errors.js';
import * as N from '../native/index.js';
import type { Layer } from './layers.js';

const { C } = N;

export const OCI_WHITEOUT_PREFIX = '.wh.';
export const OCI_OPAQUE = '.wh..wh..opq';
export const OPAQUE_XATTR_TRUSTED = 'trusted.overlay.opaque';
export const OPAQUE_XATTR_USER = 'user.overlay.opaque';
export const REDIRECT_XATTR_TRUSTED = 'trusted.overlay.redirect';
export const REDIRECT_XATTR_USER = 'user.overlay.redirect';
export const XWHITEOUT_XATTR_TRUSTED = 'trusted.overlay.whiteout';
export const XWHITEOUT_XATTR_USER = 'user.overlay.whiteout';

/**
 * Where a layer's overlay markers are read: both namespaces, trusted.overlay.* first (a mount without
 * userxattr, as the project's rules say, and the image code, which reads uppers written either way);
 * user.overlay.* alone (a mount with userxattr, as the kernel's ovl_xattr); trusted.overlay.* alone.
 */
export type MarkerNs = 'trusted' | 'user' | 'both';

/** A marker's xattr names for each MarkerNs, trusted first: made once, as lookups ask for every name. */
type MarkerNames = Readonly<Record<MarkerNs, readonly string[]>>;
function markerNames(trusted: string, user: string): MarkerNames {
  return { trusted: [trusted], user: [user], both: [trusted, user] };
}

/** Does the list of an object's xattr names hold one of `wanted`? */
function holdsAny(names: readonly string[], wanted: readonly string[]): boolean {
  for (const x of wanted) if (names.includes(x)) return true;
  return false;
}

const OPAQUE_NAMES = markerNames(OPAQUE_XATTR_TRUSTED, OPAQUE_XATTR_USER);
const REDIRECT_NAMES = markerNames(REDIRECT_XATTR_TRUSTED, REDIRECT_XATTR_USER);
const XWHITEOUT_NAMES = markerNames(XWHITEOUT_XATTR_TRUSTED, XWHITEOUT_XATTR_USER);

/** A kernel-format whiteout: a character device with device number 0/0. */
export function isKernelWhiteout(st: Float64Array): boolean {
  return (st[N.ST.mode]! & C.S_IFMT) === C.S_IFCHR && st[N.ST.rdev] === 0;
}

/** Names of the OCI format that never appear in the merged view. */
export function isOciMetaName(name: string): boolean {
  return name.startsWith(OCI_WHITEOUT_PREFIX);
}

/** For ".wh.foo" the hidden name "foo"; undefined for the opaque marker and ordinary names. */
export function ociWhiteoutTarget(name: string): string | undefined {
  if (!name.startsWith(OCI_WHITEOUT_PREFIX) || name === OCI_OPAQUE) return undefined;
  const target = name.slice(OCI_WHITEOUT_PREFIX.length);
  return target.length > 0 ? target : undefined;
}

const scratch = new Float64Array(16);

/** Does `dirfd` hold an OCI whiteout for `name` (hiding it in the layers below)? */
export function hasOciWhiteout(dirfd: number, name: string): boolean {
  if (name.length + OCI_WHITEOUT_PREFIX.length > 255) return false;
  return N.lstatMaybe(dirfd, OCI_WHITEOUT_PREFIX + name, scratch);
}

/** The one-byte value of an opaque xattr (the kernel's ovl_get_dir_xattr_val): "y", "x", or null. */
function markerValue(v: Buffer | null): 'y' | 'x' | null {
  if (v === null || v.length !== 1) return null;
  return v[0] === 0x79 ? 'y' : v[0] === 0x78 ? 'x' : null;
}

/**
 * The opaque marker of the directory `name` inside `dirfd` ("" for `dirfd` itself): "y" when it is
 * opaque (hiding the layers below it), "x" when it holds xattr whiteouts, else null. Reads both xattr
 * namespaces and, with `oci`, the OCI marker file.
 */
export function opaqueState(dirfd: number, name: string, oci = true, ns: MarkerNs = 'both'): 'y' | 'x' | null {
  return dirMarkers(dirfd, name, oci, ns).opaque;
}

/** What a directory's xattrs say about the layers below it (see dirMarkers). */
export interface DirMarkers {
  /** "y": opaque; "x": holds xattr whiteouts; null: neither. */
  opaque: 'y' | 'x' | null;
  /** overlay.redirect (latin1, as names are): where the layers below hold this directory; null: none. */
  redirect: string | null;
}

/**
 * The markers of the directory `name` inside `dirfd`, as a lookup reads them: the opaque marker as
 * opaqueState (the xattr in `ns`, then the OCI marker file) and the redirect the kernel writes when
 * it renames a merged directory with redirect_dir=on. One listxattr, then only the values present.
 */
export function dirMarkers(dirfd: number, name: string, oci = true, ns: MarkerNs = 'both'): DirMarkers {
  let opaque: 'y' | 'x' | null = null;
  let redirect: string | null = null;
  const names = N.llistxattr(dirfd, name);
  if (names.length > 0) {
    for (const x of OPAQUE_NAMES[ns]) {
      if (!names.includes(x)) continue;
      const v = markerValue(N.lgetxattr(dirfd, name, x));
      if (v === 'y') return { opaque: 'y', redirect: null };
      opaque ??= v;
    }
    for (const x of REDIRECT_NAMES[ns]) {
      if (!names.includes(x)) continue;
      const v = N.lgetxattr(dirfd, name, x);
      if (v !== null) {
        redirect = v.toString('latin1');
        break;
      }
    }
  }
  if (oci && N.lstatMaybe(dirfd, name === '' ? OCI_OPAQUE : `${name}/${OCI_OPAQUE}`, scratch)) return { opaque: 'y', redirect: null };
  return { opaque, redirect };
}

export const METACOPY_XATTR_TRUSTED = 'trusted.overlay.metacopy';
export const METACOPY_XATTR_USER = 'user.overlay.metacopy';
export const METACOPY_NAMES = markerNames(METACOPY_XATTR_TRUSTED, METACOPY_XATTR_USER);

/**
 * Is the regular file `name` inside `dirfd` a metacopy (the kernel's metacopy=on copy-up: the
 * attributes only, its data left in a layer below)? One listxattr.
 */
export function isMetacopy(dirfd: number, name: string, names = N.llistxattr(dirfd, name), ns: MarkerNs = 'both'): boolean {
  return names.length > 0 && holdsAny(names, METACOPY_NAMES[ns]);
}

/** The redirect of the directory `name` inside `dirfd` alone (see dirMarkers), or null. */
export function redirectOf(dirfd: number, name: string, ns: MarkerNs = 'both'): string | null {
  const names = N.llistxattr(dirfd, name);
  for (const x of REDIRECT_NAMES[ns]) {
    if (!names.includes(x)) continue;
    const v = N.lgetxattr(dirfd, name, x);
    if (v !== null) return v.toString('latin1');
  }
  return null;
}

/** Is the directory `name` inside `dirfd` opaque (see opaqueState)? */
export function isOpaqueDir(dirfd: number, name: string, oci = true, ns: MarkerNs = 'both'): boolean {
  return opaqueState(dirfd, name, oci, ns) === 'y';
}

/**
 * Does the listing of `dir`'s copy in `layer` (open as `dirfd`) look for xattr whiteouts? Where the
 * copy is marked "x", in a lower layer where lookups have met such a marker (the kernel's
 * has_xwhiteouts: layers without one cost nothing), and not at the root (the kernel marks no root).
 */
export function xwhiteoutsIn(dir: { parent: unknown }, layer: Layer, dirfd: number): boolean {
  return layer.xwhiteouts === true && !layer.isUpper && dir.parent !== null && opaqueState(dirfd, '', false, layer.markerNs) === 'x';
}

/**
 * Is the object at (dirfd, name), whose stat is `st`, an xattr whiteout: an empty regular file with
 * overlay.whiteout (in `ns`)? As the kernel's lookup (ovl_path_is_whiteout), whatever its
 * directory's marker; readdir looks for them only in directories marked "x".
 */
export function isXattrWhiteout(dirfd: number, name: string, st: Float64Array, ns: MarkerNs = 'both'): boolean {
  if ((st[N.ST.mode]! & C.S_IFMT) !== C.S_IFREG || st[N.ST.size] !== 0) return false;
  return hasXwhiteoutXattr(N.llistxattr(dirfd, name), ns);
}

/** Do these xattr names hold overlay.whiteout (in `ns`)? */
export function hasXwhiteoutXattr(names: string[], ns: MarkerNs = 'both'): boolean {
  return names.length > 0 && holdsAny(names, XWHITEOUT_NAMES[ns]);
}

/**
 * Makes kernel-format whiteouts as the kernel does (ovl_whiteout, Linux 5.8 and later): every
 * whiteout is a hard link of one whiteout kept in the work directory, not a device node of its own.
 * A link only adds a directory entry where mknod allocates an inode (2.5-5x the time on ext4 with
 * cold caches). The kernel's whiteouts look the same in the upper (char 0/0, mode 0, owned by the
 * mounter, st_nlink > 1); the shared one stays in the work directory, which the next mount empties.
 * When the filesystem cannot link it (no hard links), each whiteout is made with mknod, as the
 * kernel then does (no_shared_whiteout). At the filesystem's link limit (EMLINK) the shared whiteout
 * itself is renamed into place and the next whiteout starts a new one, as the kernel hands its shared
 * whiteout out then: the link counts stay the kernel's.
 */
export class WhiteoutMaker {
  private name: string | null = null;
  /** O_PATH descriptor of the shared whiteout: its inode (and so its number) cannot go away while held. */
  private pin = -1;
  /** st_dev and st_ino of the shared whiteout, while there is one (else -1). */
  private dev = -1;
  private ino = -1;
  private sharing = true;
  private readonly st = new Float64Array(16);

  constructor(private readonly workFd: number, private readonly tempName: () => string) {}

  /** Creates the whiteout `name` in `dirfd`; EEXIST (thrown) if the name is taken. */
  make(dirfd: number, name: string): void {
    for (let attempt = 0; this.sharing && attempt < 2; attempt++) {
      if (this.name === null && !this.start()) break;
      try {
        N.linkat(this.workFd, this.name!, dirfd, name, 0);
        return;
      } catch (e) {
        const code = errCode(e);
        if (code === 'EEXIST') throw e;
        if (code === 'EMLINK') {
          if (this.handOut(dirfd, name)) return;
          continue;
        }
        // The shared whiteout is gone (ENOENT may also mean that `dirfd` was removed: the second
        // attempt, then mknod, answer that): start a new one.
        if (code === 'ENOENT') {
          this.retire();
          continue;
        }
        // Hard links refused by the filesystem: whiteouts of their own from now on.
        if (code === 'EPERM' || code === 'EXDEV' || code === 'EOPNOTSUPP' || code === 'ENOTSUP') this.stop();
        break;
      }
    }
    N.mknodat(dirfd, name, C.S_IFCHR, 0);
  }

  /**
   * Is the directory entry with d_type `dtype` and d_ino `ino`, in a directory on device `dev`, a
   * link of the shared whiteout (so a whiteout, with no stat needed)?
   */
  isShared(dev: number, dtype: number, ino: number): boolean {
    return this.ino >= 0 && dtype === C.DT_CHR && ino === this.ino && dev === this.dev;
  }

  /** Closes the descriptor of the shared whiteout (its links and the work entry stay). */
  close(): void {
    if (this.pin >= 0) N.close(this.pin);
    this.pin = this.dev = this.ino = -1;
    this.name = null;
  }

  private start(): boolean {
    const name = this.tempName();
    try {
      N.mknodat(this.workFd, name, C.S_IFCHR, 0);
    } catch {
      this.stop();
      return false;
    }
    try {
      this.pin = N.openat(this.workFd, name, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      N.fstat(this.pin, this.st);
    } catch {
      if (this.pin >= 0) N.close(this.pin);
      this.pin = -1;
      try {
        N.unlinkat(this.workFd, name, 0);
      } catch {
        // the work directory is emptied at the next mount
      }
      this.stop();
      return false;
    }
    this.name = name;
    this.dev = this.st[N.ST.dev]!;
    this.ino = this.st[N.ST.ino]!;
    return true;
  }

  /**
   * The shared whiteout has as many links as its filesystem allows: it becomes the whiteout `name` in
   * `dirfd` itself (false if it could not be moved: then it is dropped, and the caller starts anew).
   */
  private handOut(dirfd: number, name: string): boolean {
    try {
      N.renameat2(this.workFd, this.name!, dirfd, name, C.RENAME_NOREPLACE);
    } catch (e) {
      if (errCode(e) === 'EEXIST') throw e;
      this.retire();
      return false;
    }
    this.close();
    return true;
  }

  /** Stops using the current shared whiteout (its links in the upper stay whiteouts). */
  private retire(): void {
    const name = this.name;
    this.close();
    if (name === null) return;
    try {
      N.unlinkat(this.workFd, name, 0);
    } catch {
      // gone already
    }
  }

  private stop(): void {
    this.retire();
    this.sharing = false;
  }
}

/**
 * Private xattrs of overlayfs: never shown, never settable through the mount (see xattr.ts for escaped
 * names). In `ns`: both namespaces (a mount without userxattr, and the image code), or user.overlay.*
 * alone (with userxattr: as the kernel's ovl_is_private_xattr, trusted.overlay.* is a plain attribute).
 */
export function isPrivateXattr(name: string, ns: MarkerNs = 'both'): boolean {
  return (ns !== 'user' && name.startsWith('trusted.overlay.')) || (ns !== 'trusted' && name.startsWith('user.overlay.'));
}

/**
 * Does copy-up carry this xattr of the lower object? Everything but the overlay's own markers (in `ns`,
 * as isPrivateXattr): names escaped for a nested overlay ("trusted.overlay.overlay.X", set through a
 * mount as "trusted.overlay.X") are the user's, and the kernel copies them up too.
 */
export function isCopiedXattr(name: string, ns: MarkerNs = 'both'): boolean {
  return !isPrivateXattr(name, ns) || name.startsWith('trusted.overlay.overlay.') || name.startsWith('user.overlay.overlay.');
}
