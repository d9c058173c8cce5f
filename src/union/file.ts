// Open files (the kernel's fs/overlayfs/file.c): handles, I/O through the daemon, and passthrough
// backing ids (the kernel then reads and writes the layer file itself).
//
// A handle holds a descriptor of the object it was opened on, so everything done through it reaches
// that object whatever happens to its name. A handle opened on a lower file is re-pointed to the
// upper copy after a copy-up, unless the kernel reads the lower file through a passthrough backing:
// every open of one FUSE inode shares one backing, so such a node keeps its lower backing and its
// name is given a new node for the upper copy (see UnionFs.afterCopied).

import { errCode, fsError } from '../fuse/errors.js';
import { FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FOPEN_PASSTHROUGH } from '../fuse/protocol.js';
import type { BackingRegistry, OpenReply } from '../fuse/types.js';
import * as N from '../native/index.js';
import type { Layer } from './layers.js';
import { openObject, type UnionNode } from './node.js';

const { C } = N;

export interface FileHandle {
  readonly kind: 'file';
  node: UnionNode;
  /** Descriptor of the layer file (read-only on a lower, read-write once on the upper). */
  fd: number;
  flags: number;
  /** Set when this open uses the node's passthrough backing. */
  backing: Backing | null;
  /** `fd` is the lower file (re-pointed to the upper one after a copy-up unless `backing`). */
  onLower: boolean;
  /** `fd` was opened for writing (it can be truncated). */
  writable: boolean;
}

export type Handle = FileHandle;

/**
 * A passthrough backing registered with the kernel; every open of one inode must share it. The
 * kernel holds its own reference to the file from FUSE_DEV_IOC_BACKING_OPEN until the id is closed,
 * so the daemon keeps no descriptor for it.
 */
export interface Backing {
  id: number;
  /** The layer of the file it was made from (a copy-up makes it stale for new opens). */
  layer: Layer;
  refs: number;
}

export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  private next = 1;
  /** Per node: the passthrough backing its opens share. */
  readonly backings = new Map<UnionNode, Backing>();

  constructor(private readonly registry: BackingRegistry) {}

  add(h: Handle): number {
    const fh = this.next++;
    this.handles.set(fh, h);
    h.node.openCount++;
    (h.node.handles ??= new Set()).add(h);
    return fh;
  }

  file(fh: number): FileHandle {
    const h = this.handles.get(fh);
    if (!h || h.kind !== 'file') throw Object.assign(new Error(`bad file handle ${fh}`), { code: 'EBADF' });
    return h;
  }

  /** Removes a handle; the caller closes what it holds. */
  remove(fh: number): Handle | undefined {
    const h = this.handles.get(fh);
    if (h) {
      this.handles.delete(fh);
      h.node.openCount--;
      const set = h.node.handles;
      if (set && set.delete(h) && set.size === 0) h.node.handles = null;
    }
    return h;
  }

  get size(): number {
    return this.handles.size;
  }

  /** Is `node` bound to a passthrough backing of a lower file (opens the kernel reads the lower file for)? */
  boundToLower(node: UnionNode): boolean {
    const b = this.backings.get(node);
    // (a metadata-only copy still reads the lower file: its backing stays right)
    return b !== undefined && !b.layer.isUpper && b.layer !== node.dataLayer;
  }

  /** Registers (or shares) the node's passthrough backing for `fd` (which stays the caller's). */
  backingFor(node: UnionNode, fd: number): Backing {
    let b = this.backings.get(node);
    if (!b) {
      b = { id: this.registry.open(fd), layer: node.dataLayer, refs: 0 };
      this.backings.set(node, b);
    }
    b.refs++;
    return b;
  }

  releaseBacking(node: UnionNode, b: Backing): void {
    if (--b.refs > 0) return;
    if (this.backings.get(node) === b) this.backings.delete(node);
    this.registry.close(b.id);
  }
}

/** How files are opened: the handle table, and passthrough when the kernel negotiated it. */
export interface FileEnv {
  handles: HandleTable;
  passthrough: boolean;
  /** Reports a passthrough backing the kernel refused (I/O then goes through the daemon). */
  onBackingRefused: (err: unknown) => void;
  /** Puts a file's data into the kernel's page cache of its inode (see fillPageCache). */
  storeData?: (nodeid: number, offset: number, data: Uint8Array) => boolean;
  /** Told of a small lower file whose data came from the disk at its open (see UnionFs.readAheadFiles). */
  coldRead?: (node: UnionNode) => void;
}

/**
 * Opens the upper file of `node` read-write (the daemon serves any access mode through it), or
 * read-only when the upper filesystem refuses writing (an immutable file, ETXTBSY).
 */
export function openUpperFile(node: UnionNode, extra: number): { fd: number; writable: boolean } {
  const loc = node.location();
  try {
    return { fd: openObject(loc, C.O_RDWR | C.O_NOFOLLOW | C.O_CLOEXEC | extra), writable: true };
  } catch (e) {
    const code = errCode(e);
    if (code !== 'EACCES' && code !== 'EPERM' && code !== 'ETXTBSY') throw e;
    return { fd: openObject(loc, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC | extra), writable: false };
  }
}

/**
 * Opens `node` for the kernel. An upper regular file is opened read-write; anything else is read
 * from its layer. The open is answered with a passthrough backing where possible. A node that a
 * copy-up superseded answers ESTALE: the kernel then looks the name up again and opens the new node.
 */
export function openFile(env: FileEnv, node: UnionNode, flags: number): OpenReply {
  if (node.successor) return openSuperseded(env, node, flags);
  let fd: number;
  let writable = false;
  if (node.layer.isUpper && node.type === C.S_IFREG && !node.metacopy) {
    ({ fd, writable } = openUpperFile(node, flags & C.O_TRUNC));
  } else {
    // (a metacopy file is read from its data below: a change copies the data up first)
    fd = openObject(node.dataLocation(), C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
  }
  return openReply(env, node, fd, flags, writable);
}

/**
 * An open of a node a copy-up superseded while the kernel read it by passthrough from the lower file.
 * A name leads to the new node (the kernel looks it up again after ESTALE), but an open through
 * /proc/PID/fd/N of one of the old opens reaches the old FUSE inode with no lookup to retry. Read-only,
 * it is served as the old opens are: by passthrough from the same lower file (every open of the inode
 * must share that backing). For writing, or once no old open holds that backing, ESTALE.
 */
function openSuperseded(env: FileEnv, node: UnionNode, flags: number): OpenReply {
  const b = env.handles.backings.get(node);
  const readOnly = (flags & 3) === C.O_RDONLY && (flags & C.O_TRUNC) === 0;
  let old: FileHandle | undefined;
  if (b && env.passthrough && readOnly) for (const h of node.handles ?? []) if (h.backing === b) old = h;
  if (!b || !old) throw fsError('ESTALE');
  const fd = N.dup(old.fd);
  const h: FileHandle = { kind: 'file', node, fd, flags, backing: env.handles.backingFor(node, fd), onLower: old.onLower, writable: false };
  return { fh: env.handles.add(h), openFlags: FOPEN_PASSTHROUGH | FOPEN_NOFLUSH, backingId: b.id };
}

/**
 * Lower files up to this size opened read-only are read through the daemon rather than by
 * passthrough when nothing else holds the inode open by passthrough. A passthrough open costs the
 * kernel a second open of the layer file (FUSE_DEV_IOC_BACKING_OPEN) and its close. A lower file's
 * data never changes: at its first open the daemon puts it into the FUSE inode's page cache, where
 * it stays (FOPEN_KEEP_CACHE), so reading it takes no request at all (see fillPageCache).
 */
export const SMALL_READ_ONLY = 64 * 1024;

/**
 * The open flag of an exec (the kernel's __FMODE_EXEC, passed in FUSE_OPEN's flags). A program's file
 * is opened by passthrough whatever its size: a copy-up then leaves the running program on the lower
 * file (see UnionFs.afterCopied), where writes to the copy through a daemon-served open would reach the
 * pages it runs from.
 */
export const FMODE_EXEC = 0x20;

/** The data of a small file on its way into the kernel's page cache. */
const storeBuf = Buffer.allocUnsafeSlow(SMALL_READ_ONLY);

/** Does the node have opens the daemon serves (the kernel's cached I/O mode for its inode)? */
function hasDaemonOpens(node: UnionNode): boolean {
  for (const h of node.handles ?? []) if (h.backing === null) return true;
  return false;
}

const openStat = new Float64Array(N.ST_LENGTH);

/** The size of the regular file open at `fd` if it is at most SMALL_READ_ONLY bytes, else -1. */
function smallSize(fd: number): number {
  try {
    N.fstat(fd, openStat);
  } catch {
    return -1; // (the open goes on as for any file; its descriptor stays the caller's)
  }
  const size = openStat[N.ST.size]!;
  return size <= SMALL_READ_ONLY ? size : -1;
}

/**
 * Should this open be served by passthrough? The kernel puts an inode in one I/O mode while it has
 * opens: cached (served by the daemon) or passthrough (one backing file); an open answered in the
 * other mode fails with EIO. So the node's current opens decide. With none, passthrough, except for
 * a small lower file opened read-only, not for exec nor O_DIRECT, whose data the kernel's page cache
 * of the inode holds or is given now (fillPageCache). An O_DIRECT open goes by passthrough, whose
 * backing file the kernel opens with the caller's flags: the layer's filesystem then judges it
 * (EINVAL where it has no direct I/O, or for a buffer, offset or size out of its alignment), as it does
 * on the kernel's overlay; the daemon's reads would accept any.
 */
function wantsPassthrough(env: FileEnv, node: UnionNode, fd: number, flags: number): boolean {
  if (node.type !== C.S_IFREG) return false;
  if (env.handles.backings.has(node)) return env.passthrough;
  if (hasDaemonOpens(node)) return false;
  const lowerRead = !node.dataLayer.isUpper && (flags & 3) === C.O_RDONLY && (flags & (FMODE_EXEC | C.O_DIRECT)) === 0;
  if (lowerRead && fillPageCache(env, node, fd)) return false;
  return env.passthrough;
}

/**
 * At the first open of a small lower file, while the node has no other open, the daemon puts the
 * file's data into the kernel's page cache of the inode before the open is answered
 * (FUSE_NOTIFY_STORE): reads then find it there, with no READ round trip (nor the attribute refresh
 * that a READ's atime change costs the next stat), and FOPEN_KEEP_CACHE keeps it for later opens,
 * which need not look at the file again (a lower file never changes). The kernel locks the pages it
 * fills: safe only while no open of the inode can be waiting for a READ, hence only with no other
 * open. Data not in the lower filesystem's page cache is read from the disk here, on this thread (a
 * small file: one read); it was read by passthrough instead, but then an open's view after a copy-up
 * depended on the page cache (see above). True when the daemon is to serve the open (a small file,
 * its data stored now or before); pages the kernel drops later are read again by READ.
 */
function fillPageCache(env: FileEnv, node: UnionNode, fd: number): boolean {
  if (node.dataStored) return true;
  const size = smallSize(fd);
  if (size < 0) return false;
  if (size === 0) {
    node.dataStored = true; // nothing to store
    return true;
  }
  let n: number;
  try {
    // (from the disk if the lower filesystem's page cache lacks it: an open the daemon serves follows a
    // copy-up of the file, as the kernel's overlay re-points its opens; one by passthrough would keep
    // reading the lower file, so whether the file happened to be cached would decide what a reader sees
    // after a copy-up)
    const inblock = N.threadInblock();
    n = N.pread(fd, storeBuf, 0, size, 0);
    if (N.threadInblock() !== inblock) env.coldRead?.(node);
  } catch {
    return false; // an error reading the layer: the kernel meets it by passthrough, or at its READ
  }
  if (n !== size) return false;
  if (env.storeData?.(node.nodeid, 0, storeBuf.subarray(0, n)) === true) node.dataStored = true;
  return true;
}

/** Registers an open layer file and decides how the kernel does its I/O. */
export function openReply(env: FileEnv, node: UnionNode, fd: number, flags: number, writable: boolean): OpenReply {
  const h: FileHandle = { kind: 'file', node, fd, flags, backing: null, onLower: !node.dataLayer.isUpper, writable };
  // The page cache of the inode is kept from one open to the next when every write to the file
  // reaches it: without passthrough, or for a lower file (which nothing writes). An upper file
  // served by the daemon while passthrough is on (its backing refused) may have been written by
  // passthrough since: the kernel drops its pages at this open.
  let openFlags = !env.passthrough || !node.dataLayer.isUpper ? FOPEN_KEEP_CACHE : 0;
  let backingId: number | undefined;
  if (wantsPassthrough(env, node, fd, flags)) {
    const existing = env.handles.backings.get(node);
    // Every open of an inode shares its backing: one of another layer cannot serve this open.
    if (existing && existing.layer !== node.dataLayer) {
      N.close(fd);
      throw fsError('ESTALE');
    }
    try {
      h.backing = env.handles.backingFor(node, fd);
      openFlags = FOPEN_PASSTHROUGH;
      backingId = h.backing.id;
    } catch (err) {
      env.onBackingRefused(err);
    }
  }
  const fh = env.handles.add(h);
  // Writes reach the layer file at once (no writeback cache): close needs no FLUSH round trip.
  return { fh, openFlags: openFlags | FOPEN_NOFLUSH, backingId };
}

/** After a copy-up: handles the daemon serves from the lower file now use the upper one. */
export function reopenHandles(node: UnionNode): void {
  for (const h of node.handles ?? []) {
    // A backing handle: the kernel reads the lower file directly, and it is kept as it is.
    // (a metadata-only copy's data is still the lower file's: not before its data is copied up)
    if (h.backing || !h.onLower || node.live.metacopy) continue;
    const { fd, writable } = openUpperFile(node.live, 0);
    N.close(h.fd);
    h.fd = fd;
    h.writable = writable;
    h.onLower = false;
  }
}
