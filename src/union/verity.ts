/**
 * fs-verity digests of metacopy files (verity=on|require), as the kernel's overlay keeps them
 * (fs/overlayfs/util.c ovl_validate_verity, ovl_get_verity_digest; copy_up.c ovl_need_meta_copy_up).
 *
 * A metacopy marker is empty, or a header of 4 bytes (version 0, its own length, flags, the digest's
 * algorithm) followed by the fs-verity digest of the data file. With verity=on a digest, where there is
 * one, must be the data file's before its data is used (an open, any copy-up): else EIO; with
 * verity=require every metacopy file must have one. A metadata-only copy records the digest of its
 * data where that has fs-verity (on and require), and under require is made only then.
 */
import { errCode, fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';
import { METACOPY_NAMES, type MarkerNs } from './whiteout.js';
import { openObject, type UnionNode } from './node.js';

const { C } = N;
const EMPTY = Buffer.alloc(0);

/** The header: version, length, flags, digest algorithm (struct ovl_metacopy). */
const HEADER = 4;
/** The largest digest fs-verity makes (SHA-512). */
const MAX_DIGEST = 64;
/** FS_IOC_MEASURE_VERITY: _IOWR('f', 134, struct fsverity_digest { u16 algorithm; u16 size; u8 digest[] }). */
const FS_IOC_MEASURE_VERITY = 0xc0046686;

/** The metacopy marker's value (the first of the mount's names present), or null for none. */
function metacopyValue(dirfd: number, name: string, ns: MarkerNs): Buffer | null {
  for (const x of METACOPY_NAMES[ns]) {
    const v = N.lgetxattr(dirfd, name, x);
    if (v !== null) return v;
  }
  return null;
}

/**
 * A lookup's check of a metacopy marker (ovl_check_metacopy_xattr): one shorter than its header but
 * not empty is refused (EIO).
 */
export function checkMetacopyMarker(dirfd: number, name: string, ns: MarkerNs): void {
  const v = metacopyValue(dirfd, name, ns);
  if (v !== null && v.length > 0 && v.length < HEADER) throw fsError('EIO');
}

/** The fs-verity digest of the open file `fd`, or null where it has none (or its filesystem none). */
function measureVerity(fd: number): { algorithm: number; digest: Buffer } | null {
  const b = Buffer.alloc(HEADER + MAX_DIGEST);
  b.writeUInt16LE(MAX_DIGEST, 2);
  try {
    N.ioctlBuf(fd, FS_IOC_MEASURE_VERITY, b);
  } catch (e) {
    const code = errCode(e);
    if (code === 'ENODATA' || code === 'ENOTTY' || code === 'EOPNOTSUPP' || code === 'EINVAL') return null;
    throw e;
  }
  return { algorithm: b.readUInt16LE(0), digest: Buffer.from(b.subarray(HEADER, HEADER + b.readUInt16LE(2))) };
}

/** The fs-verity digest of the file at `loc`, or null (see measureVerity). */
function measureAt(loc: [number, string]): { algorithm: number; digest: Buffer } | null {
  const fd = openObject(loc, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
  try {
    return measureVerity(fd);
  } finally {
    N.close(fd);
  }
}

/**
 * Before the data of `node` is used (an open) or it is copied up (any change), as the kernel's
 * ovl_verify_lowerdata: a metacopy file whose data a data-only layer should hold and does not fails
 * with ENOENT (the lazy lookup); with verity=on|require its digest is checked (see the top). Checked
 * once per node while its data stays below.
 */
export function verifyData(node: UnionNode): void {
  if (!node.metacopy) return;
  if (node.dataMissing) throw fsError('ENOENT');
  const mode = node.layer.verity;
  if (mode === undefined || node.dataVerified) return;
  const [dirfd, name] = node.location();
  const marker = metacopyValue(dirfd, name, node.layer.markerNs);
  if (marker !== null && marker.length > HEADER + MAX_DIGEST) throw fsError('ERANGE');
  const withDigest = marker !== null && marker.length > HEADER;
  if (withDigest && (marker[0] !== 0 || marker[1] !== marker.length)) throw fsError('EIO');
  const algorithm = withDigest ? marker[3]! : 0;
  if (algorithm === 0) {
    if (mode === 'require') throw fsError('EIO');
  } else {
    const have = measureAt(node.dataLocation());
    if (have === null || have.algorithm !== algorithm || !have.digest.equals(marker!.subarray(HEADER))) throw fsError('EIO');
  }
  node.dataVerified = true;
}

/**
 * The marker of a metadata-only copy of `node`, whose data is at `data` (ovl_get_verity_digest): empty,
 * or with verity=on|require and data with fs-verity, the header and its digest. null under
 * verity=require for data without fs-verity: the copy must take the data (ovl_need_meta_copy_up).
 */
export function markerFor(node: UnionNode, data: [number, string]): Buffer | null {
  const mode = node.layer.verity;
  if (mode === undefined) return EMPTY;
  const have = measureAt(data);
  if (have === null) return mode === 'require' ? null : EMPTY;
  const b = Buffer.alloc(HEADER + have.digest.length);
  b[1] = b.length;
  b[3] = have.algorithm;
  have.digest.copy(b, HEADER);
  return b;
}
