// Extended attributes of merged objects (the kernel's fs/overlayfs/xattrs.c). Each call acts on the
// node's object (by name, or through its anchor once the name is gone); changes are made on the
// upper copy, after a copy-up.
//
// The overlay's own namespace (trusted.overlay.*, or user.overlay.* with userxattr) is escaped as on
// Linux 6.7 and later, so that an overlay can live inside another (a container running podman on a
// strata mount): "trusted.overlay.X" set through the mount is "trusted.overlay.overlay.X" on the
// layer object, and such escaped names are shown unescaped; the unescaped private names (opaque,
// origin, impure, ...) are never shown. The other overlay namespace: on a mount without userxattr,
// user.overlay.* stays out of reach (strata reads markers there too, as the project's rules say:
// a value set there would change the merge; the kernel passes it through as a plain attribute); with
// userxattr, trusted.overlay.* is a plain attribute, as on the kernel (strata reads no marker there).

import { fsError } from '../fuse/errors.js';
import type { RequestContext, XattrList } from '../fuse/types.js';
import * as N from '../native/index.js';
import { callerCreds } from './killpriv.js';
import type { UnionNode } from './node.js';
import { isPrivateXattr } from './whiteout.js';

/** What the kernel adds after the own prefix to escape a name (OVL_XATTR_ESCAPE_PREFIX). */
const ESCAPE = 'overlay.';
/** XATTR_NAME_MAX. */
const NAME_MAX = 255;

/** The names of one mount's overlay xattrs: which namespace is its own, how names are escaped. */
export class OverlayXattrs {
  /** "trusted.overlay." or "user.overlay.". */
  readonly own: string;
  /** The own prefix followed by the escape: names under it are the user's, escaped. */
  readonly escaped: string;
  /** Where the private names are: both namespaces (a mount without userxattr), or user.overlay.* alone. */
  private readonly ns: 'both' | 'user';

  constructor(userxattr: boolean) {
    this.ns = userxattr ? 'user' : 'both';
    this.own = userxattr ? 'user.overlay.' : 'trusted.overlay.';
    this.escaped = this.own + ESCAPE;
  }

  /**
   * The name on the layer object for `name` as used through the mount: the own namespace escaped
   * (EOPNOTSUPP when that is longer than an xattr name may be), null for a private name of the other
   * namespace (see above); any other name as it is.
   */
  real(name: string): string | null {
    if (name.startsWith(this.own)) {
      const real = this.escaped + name.slice(this.own.length);
      if (Buffer.byteLength(real) > NAME_MAX) throw fsError('EOPNOTSUPP');
      return real;
    }
    return isPrivateXattr(name, this.ns) ? null : name;
  }

  /** The name `real` (on a layer object) shows through the mount: unescaped, or null (private: never shown). */
  shown(real: string): string | null {
    if (real.startsWith(this.escaped)) return this.own + real.slice(this.escaped.length);
    return isPrivateXattr(real, this.ns) ? null : real;
  }
}

/** The value, or null where the object has no such attribute (ENODATA). */
export function getXattr(names: OverlayXattrs, node: UnionNode, name: string): Buffer | null {
  const real = names.real(name);
  if (real === null) return null;
  const [dirfd, fname] = node.location();
  return N.lgetxattr(dirfd, fname, real);
}

/** The names as the mount shows them: trusted.* only to callers with CAP_SYS_ADMIN (ovl_can_list). */
export function listXattrs(names: OverlayXattrs, node: UnionNode, ctx: RequestContext): XattrList {
  const [dirfd, fname] = node.location();
  const shown: string[] = [];
  let trusted = false;
  // (a size probe is told the size of the layer object's own list, as by the kernel's ovl_listxattr)
  let size = 0;
  for (const real of N.llistxattr(dirfd, fname)) {
    size += Buffer.byteLength(real, 'latin1') + 1;
    const name = names.shown(real);
    if (name === null) continue;
    shown.push(name);
    if (name.startsWith('trusted.')) trusted = true;
  }
  if (!trusted || callerCreds(ctx).sysAdmin) return { names: shown, size };
  return { names: shown.filter((n) => !n.startsWith('trusted.')), size };
}

/** The name to set or remove on the layer object; a private name of the other namespace is refused before any copy-up. */
export function settableName(names: OverlayXattrs, name: string): string {
  const real = names.real(name);
  if (real === null) throw fsError('EPERM');
  return real;
}

/** Removing an attribute the object does not have changes nothing: no copy-up (as the kernel). */
export function checkRemovable(node: UnionNode, real: string): void {
  const [dirfd, fname] = node.location();
  if (N.lgetxattr(dirfd, fname, real) === null) throw fsError('ENODATA');
}

/** setxattr on the node's (upper) object. */
export function setXattr(node: UnionNode, real: string, value: Buffer, flags: number): void {
  const [dirfd, fname] = node.location();
  N.lsetxattr(dirfd, fname, real, value, flags);
}

/** removexattr on the node's (upper) object. */
export function removeXattr(node: UnionNode, real: string): void {
  const [dirfd, fname] = node.location();
  N.lremovexattr(dirfd, fname, real);
}
