// The copy-up origin (the kernel's fs/overlayfs: ovl_encode_real_fh and ovl_set_origin_fh in
// copy_up.c, ovl_check_origin_fh and ovl_decode_real_fh in namei.c, ovl_set_impure in util.c).
//
// On copy-up the kernel writes overlay.origin on the upper copy (trusted.overlay.origin, or
// user.overlay.origin with userxattr): the lower object's file handle with the lower filesystem's
// UUID, as struct ovl_fb
//   u8 version (0), u8 magic (0xfb), u8 len (21 + fid bytes), u8 flags, u8 type (FILEID_*),
//   u8 uuid[16] (the lower superblock's s_uuid), fid[] (exportfs' non-connectable handle)
// It does so for directories and for non-directories with one link (a lower hard link is broken by
// copy-up and gets none); an empty value means "copied up, origin unknown" (the lower filesystem
// cannot encode handles). The parent of the copy is marked overlay.impure=y, so that readdir there
// looks the entries up for their d_ino.
//
// The kernel then shows the origin's st_ino for the upper object (ovl_getattr): always for a merged
// directory, and for a non-directory when the origin has one link. That is what keeps st_ino across
// copy-up and across remounts, and what `readOrigin` gives back to strata.

import { closeSync, openSync, readSync } from 'node:fs';
import os from 'node:os';
import * as N from '../native/index.js';
import type { Layer, LayerStack } from './layers.js';

const { C, ST } = N;

export const ORIGIN_XATTR_TRUSTED = 'trusted.overlay.origin';
export const ORIGIN_XATTR_USER = 'user.overlay.origin';
export const IMPURE_XATTR_TRUSTED = 'trusted.overlay.impure';
export const IMPURE_XATTR_USER = 'user.overlay.impure';
const UUID_XATTR_TRUSTED = 'trusted.overlay.uuid';
const UUID_XATTR_USER = 'user.overlay.uuid';

const OVL_FH_VERSION = 0;
const OVL_FH_MAGIC = 0xfb;
/** sizeof(struct ovl_fb) without the fid. */
const FB_HEADER = 21;
const FLAG_BIG_ENDIAN = 1;
const FLAG_ANY_ENDIAN = 2;
const FLAG_PATH_UPPER = 4;
const FLAG_ALL = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
/** The fid is in CPU byte order: the flag says which. */
const FLAG_CPU_ENDIAN = os.endianness() === 'BE' ? FLAG_BIG_ENDIAN : 0;
const NULL_UUID = Buffer.alloc(16);

/** The xattr names for a mount with or without userxattr. */
export function originXattrName(userxattr: boolean): string {
  return userxattr ? ORIGIN_XATTR_USER : ORIGIN_XATTR_TRUSTED;
}

export function impureXattrName(userxattr: boolean): string {
  return userxattr ? IMPURE_XATTR_USER : IMPURE_XATTR_TRUSTED;
}

/** A decoded ovl_fb. */
export interface OriginHandle {
  flags: number;
  type: number;
  uuid: Buffer;
  fid: Buffer;
}

/** The ovl_fb bytes for a lower object's handle on a filesystem with UUID `uuid`. */
export function encodeOrigin(uuid: Buffer, type: number, fid: Buffer): Buffer {
  // (every byte is set below; allocUnsafe takes a slice of Node's pool, which the addon reads
  // without V8 first moving a small on-heap buffer out of its heap)
  const fb = Buffer.allocUnsafe(FB_HEADER + fid.length);
  fb[0] = OVL_FH_VERSION;
  fb[1] = OVL_FH_MAGIC;
  fb[2] = fb.length;
  fb[3] = FLAG_CPU_ENDIAN;
  fb[4] = type;
  fb.fill(0, 5, FB_HEADER); // (a shorter UUID is padded with zeros)
  uuid.copy(fb, 5, 0, 16);
  fid.copy(fb, FB_HEADER);
  return fb;
}

/**
 * Parses an origin xattr value as the kernel does (ovl_check_fb_len): null for "origin unknown"
 * (empty, a newer version, unknown flags, the other byte order) and for an invalid value.
 */
export function decodeOrigin(v: Buffer): OriginHandle | null {
  if (v.length < FB_HEADER || v[1] !== OVL_FH_MAGIC) return null;
  const len = v[2]!;
  if (len < FB_HEADER || len > v.length) return null;
  const flags = v[3]!;
  if (v[0]! > OVL_FH_VERSION || (flags & ~FLAG_ALL) !== 0) return null;
  if ((flags & FLAG_ANY_ENDIAN) === 0 && (flags & FLAG_BIG_ENDIAN) !== FLAG_CPU_ENDIAN) return null;
  return { flags, type: v[4]!, uuid: v.subarray(5, FB_HEADER), fid: v.subarray(FB_HEADER, len) };
}

/** Runs `fn` with an open (not O_PATH) descriptor of a layer's root: ioctls and handle decoding need one. */
function withRootFd<T>(layer: Layer, fn: (fd: number) => T): T {
  const fd = N.openat(layer.fd, '.', C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  try {
    return fn(fd);
  } finally {
    N.close(fd);
  }
}

const uuids = new WeakMap<Layer, Buffer>();

/** The s_uuid of a layer's filesystem (all zeros when it has none, as for this kernel's ext4 without one). */
export function layerUuid(layer: Layer): Buffer {
  let u = uuids.get(layer);
  if (!u) {
    u = withRootFd(layer, (fd) => N.fsUuid(fd)) ?? NULL_UUID;
    if (u.length !== 16) u = Buffer.concat([u, NULL_UUID]).subarray(0, 16);
    uuids.set(layer, u);
  }
  return u;
}

const st = new Float64Array(16);

/**
 * The overlay.origin value the kernel writes on the upper copy of the lower object (dirfd, name) of
 * `layer` (name "" for dirfd itself): its handle, or an empty value when its filesystem cannot
 * encode handles. null when the kernel writes none: a non-directory with more than one link.
 * `known`: the object's stat when the caller just took it.
 */
export function originXattrFor(layer: Layer, dirfd: number, name = '', known?: N.StatValues): Buffer | null {
  let s: N.StatValues;
  if (known) {
    s = known;
  } else {
    N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW | C.AT_EMPTY_PATH, st);
    s = st;
  }
  if ((s[ST.mode]! & C.S_IFMT) !== C.S_IFDIR && s[ST.nlink]! > 1) return null;
  let h: N.FileHandle;
  try {
    h = N.nameToHandleAt(dirfd, name, name === '' ? C.AT_EMPTY_PATH : 0);
  } catch (e) {
    const code = (e as N.ErrnoError).code;
    if (code === 'EOPNOTSUPP' || code === 'ENOTSUP') return Buffer.alloc(0);
    throw e;
  }
  return encodeOrigin(layerUuid(layer), h.type, h.handle);
}

function isNoXattrs(e: unknown): boolean {
  const code = (e as N.ErrnoError).code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP';
}

/**
 * Sets the origin value on an upper object being built. As the kernel, ignores an upper without
 * xattrs, and "user." refused on symlinks and devices (EPERM). False for the latter: the kernel's
 * copy then has no origin, and shows its own st_ino once its inode is evicted (a remount).
 */
export function setOrigin(set: (name: string, v: Buffer) => void, value: Buffer, userxattr: boolean): boolean {
  try {
    set(originXattrName(userxattr), value);
    return true;
  } catch (e) {
    if (isNoXattrs(e)) return true;
    // user.* on a symlink or a device is EPERM: the kernel's copy has no origin either
    if ((e as N.ErrnoError).code === 'EPERM' && userxattr) return false;
    throw e;
  }
}

/** Marks an upper directory impure (it holds copied-up entries) unless it is already; true if this set the mark. */
export function markImpure(dirfd: number, userxattr: boolean): boolean {
  const name = impureXattrName(userxattr);
  try {
    const v = N.lgetxattr(dirfd, '', name);
    if (v !== null && v.length === 1 && v[0] === 0x79) return false;
    N.lsetxattr(dirfd, '', name, Buffer.from('y'), 0);
    return true;
  } catch (e) {
    if (!isNoXattrs(e)) throw e;
    return false;
  }
}

/**
 * Does the upper directory (upperDir, name) lack an overlay.origin in the mount's own namespace (the
 * only one the kernel's ovl_check_origin_xattr reads)? An empty value is an origin ("unknown"). An
 * upper without xattrs lacks nothing.
 */
export function lacksOrigin(upperDir: number, name: string, userxattr: boolean): boolean {
  try {
    return N.lgetxattr(upperDir, name, originXattrName(userxattr)) === null;
  } catch (e) {
    if (isNoXattrs(e)) return false;
    throw e;
  }
}

/**
 * The kernel's ovl_fix_origin, for the upper part (upperDir, name) of a merged directory that
 * lacks an origin (see lacksOrigin), whose topmost lower part is (lowerDir, lowerName) in `lower`:
 * an upper directory made by hand or by another tool has none, and the kernel's first lookup of it
 * writes its lower part's there, then marks the upper parent impure (a later readdir there looks
 * its entries up for their d_ino). Says what it changed: `origin` (the directory's ctime moved),
 * `impure` (the parent's did).
 */
export function fixOrigin(upperDir: number, name: string, lower: Layer, lowerDir: number, lowerName: string,
  userxattr: boolean): { origin: boolean; impure: boolean } {
  const value = originXattrFor(lower, lowerDir, lowerName);
  if (value === null) return { origin: false, impure: false }; // (a directory always has one)
  try {
    N.lsetxattr(upperDir, name, originXattrName(userxattr), value, 0);
  } catch (e) {
    // (an upper that cannot take it: the directory shows as it did)
    if (isNoXattrs(e) || (e as N.ErrnoError).code === 'EROFS') return { origin: false, impure: false };
    throw e;
  }
  return { origin: true, impure: markImpure(upperDir, userxattr) };
}

/**
 * uuid=off (layers on one filesystem): the kernel writes origins with a null UUID and decodes only
 * those (ovl_origin_uuid); so does strata from now on, for this stack's layers.
 */
export function useNullUuids(stack: LayerStack): void {
  for (const layer of [...stack.layers, ...stack.dataLayers]) uuids.set(layer, NULL_UUID);
}

/** 16 random bytes as a version 4 UUID (as uuid_gen). (Not node:crypto: its import costs a mount about 9 ms.) */
function randomUuid(): Buffer {
  const b = Buffer.alloc(16);
  const fd = openSync('/dev/urandom', 'r');
  try {
    readSync(fd, b, 0, 16, null);
  } finally {
    closeSync(fd);
  }
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return b;
}

/**
 * uuid=auto (the default) or on: at mount the kernel gives the upper root an overlay.uuid of its own (16
 * random bytes, its instance's UUID) where it has none, but for uuid=auto on an upper whose root is
 * marked impure already (an overlay mounted before uuids existed): ovl_init_uuid_xattr. On a read-only
 * mount too. Nothing where it has one, needs none or cannot take it.
 */
export function stampUuid(stack: LayerStack, userxattr: boolean, mode: 'auto' | 'on'): void {
  const upper = stack.upper;
  if (!upper) return;
  const name = userxattr ? UUID_XATTR_USER : UUID_XATTR_TRUSTED;
  try {
    if (N.lgetxattr(upper.fd, '', name) !== null) return;
    if (mode === 'auto' && N.lgetxattr(upper.fd, '', impureXattrName(userxattr)) !== null) return;
    N.lsetxattr(upper.fd, '', name, randomUuid(), 0);
  } catch (e) {
    if (isNoXattrs(e) || (e as N.ErrnoError).code === 'EROFS') return;
    throw e;
  }
}

/**
 * index=on: at mount the kernel records the root of the first lower layer as the upper root's origin
 * (ovl_verify_origin with set, from ovl_get_indexdir), and refuses the mount where the upper root's
 * origin names anything else. 'written', 'same', 'other', or 'none' where the lower filesystem cannot
 * encode handles or the upper takes no xattrs (the kernel then turns index off).
 */
export function rootOrigin(stack: LayerStack, userxattr: boolean): 'written' | 'same' | 'other' | 'none' {
  const upper = stack.upper;
  const lower = stack.lowers[0];
  if (!upper || !lower) return 'none';
  const want = originXattrFor(lower, lower.fd, '');
  if (want === null || want.length === 0) return 'none';
  const name = originXattrName(userxattr);
  try {
    const have = N.lgetxattr(upper.fd, '', name);
    if (have !== null) return have.equals(want) ? 'same' : 'other';
    N.lsetxattr(upper.fd, '', name, want, 0);
    return 'written';
  } catch (e) {
    if (isNoXattrs(e)) return 'none';
    throw e;
  }
}

/**
 * Removes the impure mark of upper directory `dirfd` (in the mount's own namespace), as the kernel's
 * readdir does where the mark is no longer needed (ovl_cache_get_impure). False if it had none there.
 */
export function clearImpure(dirfd: number, ns: 'both' | 'user'): boolean {
  try {
    N.lremovexattr(dirfd, '', impureXattrName(ns === 'user'));
    return true;
  } catch (e) {
    if (isNoXattrs(e) || (e as N.ErrnoError).code === 'ENODATA') return false;
    throw e;
  }
}

/** Is the upper directory `dirfd` marked impure (in `ns`: both namespaces, trusted first, or user.* alone)? */
export function isImpureDir(dirfd: number, ns: 'both' | 'user'): boolean {
  try {
    const v = (ns === 'user' ? null : N.lgetxattr(dirfd, '', IMPURE_XATTR_TRUSTED)) ?? N.lgetxattr(dirfd, '', IMPURE_XATTR_USER);
    return v !== null && v.length === 1 && v[0] === 0x79;
  } catch (e) {
    if (isNoXattrs(e)) return false;
    throw e;
  }
}

/** The origin xattr of (dirfd, name) in `ns` (both: trusted first); null without one or without xattrs. */
function originValue(dirfd: number, name: string, ns: 'both' | 'user'): Buffer | null {
  try {
    return (ns === 'user' ? null : N.lgetxattr(dirfd, name, ORIGIN_XATTR_TRUSTED)) ?? N.lgetxattr(dirfd, name, ORIGIN_XATTR_USER);
  } catch (e) {
    if (isNoXattrs(e)) return null;
    throw e;
  }
}

/** Does the upper object (dirfd, name) carry a (known) origin? */
export function hasOrigin(dirfd: number, name: string, ns: 'both' | 'user'): boolean {
  const v = originValue(dirfd, name, ns);
  return v !== null && v.length > 0;
}

/** The lower object an origin names. */
export interface Origin {
  /** The first lower layer on the origin's filesystem (as the kernel picks it). */
  layer: Layer;
  /** Its real inode number, link count and S_IFMT bits. */
  ino: number;
  nlink: number;
  type: number;
}

/**
 * Lower layers whose filesystem UUID cannot tell them apart (ovl_lower_uuid_ok): a lower
 * filesystem other than the upper's that shares its UUID with another filesystem holding a lower
 * layer. The kernel does not decode origins on them.
 */
function ambiguousUuid(stack: LayerStack, layer: Layer): boolean {
  if (!stack.upper || layer.dev === stack.upper.dev) return false;
  const u = layerUuid(layer);
  return stack.lowers.some((l) => l.dev !== layer.dev && layerUuid(l).equals(u));
}

/**
 * Reads the origin of the upper object (dirfd, name) (name "" for dirfd itself) and finds the lower
 * object it names, as the kernel's lookup does: the first lower layer whose filesystem has the
 * handle's UUID and can open the handle. null when there is no origin, it is unknown or stale, or
 * it names an object of another type. Both xattr namespaces are read (trusted first).
 */
export function readOrigin(stack: LayerStack, dirfd: number, name = ''): Origin | null {
  const v = originValue(dirfd, name, stack.layers[0]?.markerNs ?? 'both');
  if (v === null || v.length === 0) return null;
  const fh = decodeOrigin(v);
  if (!fh) return null;
  const tried = new Set<number>();
  for (const layer of stack.lowers) {
    if (tried.has(layer.dev)) continue;
    tried.add(layer.dev);
    if (ambiguousUuid(stack, layer) || !layerUuid(layer).equals(fh.uuid)) continue;
    const found = decodeOn(layer, fh);
    if (!found) continue;
    N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW | C.AT_EMPTY_PATH, st);
    if ((st[ST.mode]! & C.S_IFMT) !== found.type) return null;
    return found;
  }
  return null;
}

/** Opens the handle on the layer's filesystem; null when it is stale or cannot be decoded there. */
function decodeOn(layer: Layer, fh: OriginHandle): Origin | null {
  let fd: number;
  try {
    fd = withRootFd(layer, (root) => N.openByHandleAt(root, fh.type, fh.fid, C.O_PATH | C.O_CLOEXEC));
  } catch {
    return null;
  }
  try {
    const s = new Float64Array(16);
    N.fstat(fd, s);
    return { layer, ino: s[ST.ino]!, nlink: s[ST.nlink]!, type: s[ST.mode]! & C.S_IFMT };
  } finally {
    N.close(fd);
  }
}

/**
 * The st_ino the kernel shows for an upper object with this origin (ovl_getattr): the origin's for
 * a directory, and for a non-directory whose origin has one link; null otherwise (the upper's own).
 */
export function originIno(stack: LayerStack, o: Origin): number | null {
  if (o.type !== C.S_IFDIR && o.nlink !== 1) return null;
  return stack.inoOf(o.layer, o.ino);
}
