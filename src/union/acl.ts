// POSIX ACLs (the kernel's fs/posix_acl.c, as FUSE_POSIX_ACL leaves them to the daemon). The
// kernel enforces access ACLs itself and reads them with GETXATTR of system.posix_acl_access; a
// new object in a directory with a default ACL must get the inherited ACL and the mode it masks,
// which the daemon computes here (posix_acl_create) and writes on the upper object. The upper
// filesystem keeps mode and ACL in step on chmod and setfacl itself. ACLs are xattrs, so copy-up
// copies them. Answers come from a per-inode cache: with FUSE_POSIX_ACL the kernel asks again
// after each change of a directory (one GETXATTR per unlink by a caller who does not own it).

import { errCode, fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';

export const ACL_ACCESS = 'system.posix_acl_access';
export const ACL_DEFAULT = 'system.posix_acl_default';

const ACL_XATTR_VERSION = 2;
const ACL_USER_OBJ = 0x01;
const ACL_USER = 0x02;
const ACL_GROUP_OBJ = 0x04;
const ACL_GROUP = 0x08;
const ACL_MASK = 0x10;
const ACL_OTHER = 0x20;
const HEADER = 4;
const ENTRY = 8;

export function isAclName(name: string): boolean {
  return name === ACL_ACCESS || name === ACL_DEFAULT;
}

/**
 * A copy of an ACL (xattr form) with the ids of its named-user and named-group entries mapped (an
 * owner mapping, see idmap.ts); a malformed one is returned as it is, for the caller to judge.
 */
export function mapAclIds(acl: Buffer, uid: (id: number) => number, gid: (id: number) => number): Buffer {
  if (acl.length < HEADER || (acl.length - HEADER) % ENTRY !== 0 || acl.readUInt32LE(0) !== ACL_XATTR_VERSION) return acl;
  const out = Buffer.from(acl);
  for (let o = HEADER; o < out.length; o += ENTRY) {
    const tag = out.readUInt16LE(o);
    if (tag === ACL_USER) out.writeUInt32LE(uid(out.readUInt32LE(o + 4)), o + 4);
    else if (tag === ACL_GROUP) out.writeUInt32LE(gid(out.readUInt32LE(o + 4)), o + 4);
  }
  return out;
}

/**
 * posix_acl_create_masq: the ACL a new object inherits from its directory's default ACL `def`
 * (xattr form) under the mode it was created with. Returns the object's mode bits and its access
 * ACL, or null when the ACL says no more than the mode.
 */
export function inheritAcl(def: Buffer, mode: number): { mode: number; access: Buffer | null } {
  if (def.length < HEADER || (def.length - HEADER) % ENTRY !== 0 || def.readUInt32LE(0) !== ACL_XATTR_VERSION) throw fsError('EIO');
  const acl = Buffer.from(def);
  let m = mode & 0o777;
  let notEquiv = false;
  let groupObj = -1;
  let maskObj = -1;
  for (let o = HEADER; o < acl.length; o += ENTRY) {
    const tag = acl.readUInt16LE(o);
    const perm = acl.readUInt16LE(o + 2);
    switch (tag) {
      case ACL_USER_OBJ: {
        const p = perm & (m >> 6);
        acl.writeUInt16LE(p, o + 2);
        m &= (p << 6) | ~0o700;
        break;
      }
      case ACL_USER:
      case ACL_GROUP:
        notEquiv = true;
        break;
      case ACL_GROUP_OBJ:
        groupObj = o;
        break;
      case ACL_OTHER: {
        const p = perm & m & 7;
        acl.writeUInt16LE(p, o + 2);
        m &= p | ~0o7;
        break;
      }
      case ACL_MASK:
        maskObj = o;
        notEquiv = true;
        break;
      default:
        throw fsError('EIO');
    }
  }
  const g = maskObj >= 0 ? maskObj : groupObj;
  if (g < 0) throw fsError('EIO');
  const p = acl.readUInt16LE(g + 2) & ((m >> 3) & 7);
  acl.writeUInt16LE(p, g + 2);
  m &= (p << 3) | ~0o70;
  return { mode: (mode & ~0o777) | (m & 0o777), access: notEquiv ? acl : null };
}

/** An ACL read from a layer: null when absent (or when the layer's filesystem has no ACLs). */
export function readAcl(dirfd: number, name: string, which: string): Buffer | null {
  try {
    return N.lgetxattr(dirfd, name, which);
  } catch (e) {
    const code = errCode(e);
    // A lower filesystem without ACLs: the kernel must see "no ACL", not an error to refuse access with.
    if (code === 'EOPNOTSUPP' || code === 'ENOTSUP') return null;
    throw e;
  }
}

interface Cached {
  access?: Buffer | null;
  default?: Buffer | null;
}

/** Most inodes whose ACLs are kept in memory. */
const MAX_CACHED = 65536;

/**
 * ACLs by st_ino (hard links share them). Entries go when an ACL or the mode of that inode
 * changes through the mount, and when a new object or a copy-up may have reused the number.
 */
export class AclCache {
  private readonly byIno = new Map<number, Cached>();

  get(ino: number, which: string, read: () => Buffer | null): Buffer | null {
    let c = this.byIno.get(ino);
    const key = which === ACL_ACCESS ? 'access' : 'default';
    const known = c?.[key];
    if (known !== undefined) return known;
    const v = read();
    if (!c) {
      if (this.byIno.size >= MAX_CACHED) this.byIno.delete(this.byIno.keys().next().value!);
      c = {};
      this.byIno.set(ino, c);
    }
    c[key] = v;
    return v;
  }

  /** Records what a new object was given (no read needed later). */
  set(ino: number, access: Buffer | null, def: Buffer | null): void {
    this.byIno.set(ino, { access, default: def });
  }

  forget(ino: number): void {
    this.byIno.delete(ino);
  }
}

/** What a new object gets: its mode bits, and the ACLs to write on it (null: none). */
export interface NewAcl {
  mode: number;
  access: Buffer | null;
  default: Buffer | null;
}

/**
 * posix_acl_create: a new object of `type` created with `mode` in a directory whose default ACL
 * is `parentDefault`. Without one, the caller's umask applies; with one, the umask is ignored and
 * the ACL masks the mode (and a directory inherits the default ACL itself).
 */
export function newObjectAcl(parentDefault: Buffer | null, type: number, mode: number, umask: number): NewAcl {
  if (!parentDefault || type === N.C.S_IFLNK) return { mode: mode & ~umask, access: null, default: null };
  const { mode: m, access } = inheritAcl(parentDefault, mode);
  return { mode: m, access, default: type === N.C.S_IFDIR ? parentDefault : null };
}

/** Writes the ACLs of a new object (after its mode: setting an access ACL sets the mode bits too). */
export function writeNewAcl(dirfd: number, name: string, acl: NewAcl): void {
  if (acl.access) N.lsetxattr(dirfd, name, ACL_ACCESS, acl.access, 0);
  if (acl.default) N.lsetxattr(dirfd, name, ACL_DEFAULT, acl.default, 0);
}
