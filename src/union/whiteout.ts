// Whiteouts and opaque directories, in both formats we read:
// - the kernel's: a whiteout is a character device 0/0; an opaque directory carries the xattr
//   trusted.overlay.opaque (or user.overlay.opaque) = "y". The value "x" is not opaque.
// - OCI image layers: a file ".wh.<name>" hides <name> in the layers below (never in its own
//   layer); a file ".wh..wh..opq" makes its directory opaque.
// And the private xattr namespaces that the merged view never shows.

import * as N from '../native/index.js';

const { C } = N;

export const OCI_WHITEOUT_PREFIX = '.wh.';
export const OCI_OPAQUE = '.wh..wh..opq';
export const OPAQUE_XATTR_TRUSTED = 'trusted.overlay.opaque';
export const OPAQUE_XATTR_USER = 'user.overlay.opaque';

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

function opaqueValue(v: Buffer | null): boolean {
  return v !== null && v.length === 1 && v[0] === 0x79; // "y"
}

/**
 * Is the directory `name` inside `dirfd` opaque (hiding the layers below it)? Reads both xattr
 * namespaces and, with `oci`, the OCI marker file. `name` may be "" for `dirfd` itself.
 */
export function isOpaqueDir(dirfd: number, name: string, oci = true): boolean {
  if (opaqueValue(N.lgetxattr(dirfd, name, OPAQUE_XATTR_TRUSTED))) return true;
  if (opaqueValue(N.lgetxattr(dirfd, name, OPAQUE_XATTR_USER))) return true;
  return oci && N.lstatMaybe(dirfd, name === '' ? OCI_OPAQUE : `${name}/${OCI_OPAQUE}`, scratch);
}

/** Private xattrs of overlayfs: never shown, never settable through the mount. */
export function isPrivateXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
}
