// The FUSE session: owns /dev/fuse, the mount(2) call, the INIT handshake, the request loop,
// request decoding and reply encoding. It dispatches decoded requests to a FileSystem and knows
// nothing about what that filesystem is.

import { close as closeAsync, write as writeAsync } from 'node:fs';
import type { Logger } from 'pino';
import * as N from '../native/index.js';
import { errCode, errnoOf, isExpectedErrno } from './errors.js';
import {
  ATTR_OUT_SIZE, DIRENT_BASE, DIRENTPLUS_BASE, ENTRY_OUT_SIZE, FOPEN_PASSTHROUGH, FUSE_FSYNC_FDATASYNC, FUSE_OPEN_KILL_SUIDGID,
  FUSE_GETATTR_FH, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, GETXATTR_OUT_SIZE, INIT_OUT_SIZE,
  FUSE_NOTIFY_INVAL_INODE, FUSE_NOTIFY_STORE, IN_HEADER_SIZE, InitFlag, LSEEK_OUT_SIZE, OPEN_OUT_SIZE, OUT_HEADER_SIZE, Op, STATFS_OUT_SIZE,
  STATX_BASIC_STATS, STATX_BTIME, STATX_OUT_SIZE, WRITE_OUT_SIZE, IOCTL_OUT_SIZE, opName,
} from './protocol.js';
import type {
  AttrReply, BackingRegistry, CallerIds, CreateReply, DirSink, EntryReply, FileSystem, OpenReply, RequestContext, SetattrRequest, StatfsReply,
  StatxReply,
} from './types.js';

export const MAX_WRITE = 1 << 20;
const MAX_PAGES = MAX_WRITE / 4096;
const BUFFER_SIZE = MAX_WRITE + 4096 + 4096;
const TWO32 = 4294967296;

const errno = N.C.errno;

export type PassthroughMode = 'auto' | 'on' | 'off';

export interface SessionOptions {
  passthrough: PassthroughMode;
  /** mount(2) data options beyond fd/rootmode/user_id/group_id (e.g. allow_other,default_permissions). */
  mountOptions: string[];
  /** Mount flags (MS_*). */
  mountFlags: number;
  /** What /proc/mounts shows as the source, and the subtype: type becomes fuse.<subtype>. */
  source: string;
  subtype: string;
  logger: Logger;
  /** Ask for FUSE_POSIX_ACL (the kernel enforces ACLs read through GETXATTR). */
  posixAcl?: boolean;
  /** FUSE_EXPORT_SUPPORT: file handles the daemon resolves with LOOKUP "." and ".." (nfs_export=on). */
  exportSupport?: boolean;
  /** An owner mapping: each request's uid and gid are given to the filesystem as it stores them. */
  callerIds?: CallerIds | null;
}

export interface SessionStats {
  requests: number;
  errors: number;
  /** Requests by opcode (index); opcodes beyond the table are counted at index 0. */
  byOp: Float64Array;
}

const OPCODE_SLOTS = 128;

/** A request's handler (a FuseSession method): the body is at p..end of the input buffer. */
type OpHandler = (this: FuseSession, ctx: RequestContext, nodeid: number, p: number, end: number) => void;
/** The handlers by opcode (set in FuseSession's static block); an opcode without one is answered ENOSYS. */
const OPS: (OpHandler | undefined)[] = new Array<OpHandler | undefined>(OPCODE_SLOTS).fill(undefined);

function u64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO32;
}
function i64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readInt32LE(off + 4) * TWO32;
}
function putU64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / TWO32) >>> 0, off + 4);
}
function putI64(buf: Buffer, off: number, v: number): void {
  const hi = Math.floor(v / TWO32);
  buf.writeUInt32LE((v - hi * TWO32) >>> 0, off);
  buf.writeInt32LE(hi | 0, off + 4);
}
function cstr(buf: Buffer, start: number, end: number): [string, number] {
  let nul = buf.indexOf(0, start);
  if (nul < 0 || nul > end) nul = end;
  return [buf.toString('latin1', start, nul), nul + 1];
}
/** The NUL-terminated name at `start` (the single name of LOOKUP, UNLINK, ...). */
function cname(buf: Buffer, start: number, end: number): string {
  let nul = buf.indexOf(0, start);
  if (nul < 0 || nul > end) nul = end;
  return buf.toString('latin1', start, nul);
}
/** The out header of a notification: its whole length, the code where a reply has its error, unique 0. */
function notifyHeader(buf: Buffer, code: number, length: number): void {
  buf.writeUInt32LE(length, 0);
  buf.writeInt32LE(code, 4);
  putU64(buf, 8, 0);
}
function align8(n: number): number {
  return (n + 7) & ~7;
}

// Replies are encoded through a 32-bit view of the reply buffer: every field of the structures
// below sits at a multiple of 4 bytes from the start of the buffer (headers and records are 8-byte
// aligned), and FUSE uses the host's byte order. A typed-array store is one instruction once
// optimised, where Buffer.writeUInt32LE checks its range and offset on every call.

/** Stores an unsigned 64-bit value (a safe integer) at word index `w`. */
function setU64(w32: Uint32Array, w: number, v: number): void {
  w32[w] = v >>> 0;
  w32[w + 1] = (v / TWO32) >>> 0;
}
/** Stores a signed 64-bit value (a safe integer) at word index `w`. */
function setI64(w32: Uint32Array, w: number, v: number): void {
  const hi = Math.floor(v / TWO32);
  w32[w] = (v - hi * TWO32) >>> 0;
  w32[w + 1] = hi >>> 0;
}

/** struct fuse_attr at word index `w`. */
function encodeAttr(w32: Uint32Array, w: number, a: AttrReply['attr']): void {
  setU64(w32, w, a.ino);
  setU64(w32, w + 2, a.size);
  setU64(w32, w + 4, a.blocks);
  setI64(w32, w + 6, a.atimeSec);
  setI64(w32, w + 8, a.mtimeSec);
  setI64(w32, w + 10, a.ctimeSec);
  w32[w + 12] = a.atimeNsec;
  w32[w + 13] = a.mtimeNsec;
  w32[w + 14] = a.ctimeNsec;
  w32[w + 15] = a.mode;
  w32[w + 16] = a.nlink;
  w32[w + 17] = a.uid;
  w32[w + 18] = a.gid;
  w32[w + 19] = a.rdev;
  w32[w + 20] = a.blksize;
  w32[w + 21] = 0;
}

/** A timeout in seconds as (whole seconds, nanoseconds) at word indexes `ws` (64-bit) and `wn`. */
function setTimeout64(w32: Uint32Array, ws: number, wn: number, t: number): void {
  const s = Math.floor(t);
  setU64(w32, ws, s);
  w32[wn] = Math.floor((t - s) * 1e9);
}

/** struct fuse_entry_out at word index `w`. */
function encodeEntry(w32: Uint32Array, w: number, e: EntryReply): void {
  setU64(w32, w, e.nodeid);
  setU64(w32, w + 2, e.generation);
  setTimeout64(w32, w + 4, w + 8, e.entryTimeout);
  setTimeout64(w32, w + 6, w + 9, e.attrTimeout);
  encodeAttr(w32, w + 10, e.attr);
}

/** Packs dirent / direntplus records into the reply buffer (one per session, reset per request). */
class DirBuffer implements DirSink {
  pos = 0;
  end = 0;
  /** Nodeids given a lookup reference by this reply (dropped again if it cannot be sent). */
  readonly nodeids: number[] = [];
  constructor(readonly buf: Buffer, private readonly w32: Uint32Array) {}
  reset(start: number, size: number): this {
    this.pos = start;
    this.end = start + size;
    this.nodeids.length = 0;
    return this;
  }
  fits(name: string): boolean {
    return this.pos + align8(DIRENTPLUS_BASE + name.length) <= this.end;
  }
  add(name: string, ino: number, type: number, nextOffset: number): boolean {
    const len = align8(DIRENT_BASE + name.length);
    if (this.pos + len > this.end) return false;
    this.writeDirent(this.pos, name, ino, type, nextOffset, len);
    this.pos += len;
    return true;
  }
  addPlus(name: string, entry: EntryReply | null, ino: number, type: number, nextOffset: number): boolean {
    const len = align8(DIRENTPLUS_BASE + name.length);
    if (this.pos + len > this.end) return false;
    if (entry) {
      encodeEntry(this.w32, this.pos >> 2, entry);
      if (entry.nodeid !== 0) this.nodeids.push(entry.nodeid);
    } else {
      this.w32.fill(0, this.pos >> 2, (this.pos + ENTRY_OUT_SIZE) >> 2);
    }
    this.writeDirent(this.pos + ENTRY_OUT_SIZE, name, ino, type, nextOffset, len - ENTRY_OUT_SIZE);
    this.pos += len;
    return true;
  }
  private writeDirent(o: number, name: string, ino: number, type: number, off: number, len: number): void {
    const w32 = this.w32;
    const w = o >> 2;
    setU64(w32, w, ino);
    setU64(w32, w + 2, off);
    w32[w + 4] = name.length;
    w32[w + 5] = type;
    // Names are latin1 strings (one char per byte): copied byte by byte, then 0-7 bytes of padding.
    const b = this.buf;
    const n = name.length;
    let p = o + DIRENT_BASE;
    for (let i = 0; i < n; i++) b[p++] = name.charCodeAt(i);
    const stop = o + len;
    while (p < stop) b[p++] = 0;
  }
}

export class FuseSession {
  readonly stats: SessionStats = { requests: 0, errors: 0, byOp: new Float64Array(OPCODE_SLOTS) };
  passthrough = false;
  /** SETXATTR requests carry the extended header (FUSE_SETXATTR_EXT). */
  private setxattrExt = false;
  private devFd = -1;
  private reader: object | null = null;
  private readonly inBuf = Buffer.allocUnsafe(BUFFER_SIZE);
  /** The reply buffer, and a 32-bit view of it for encoding (see setU64). */
  private readonly outBuf = Buffer.from(new ArrayBuffer(BUFFER_SIZE));
  private readonly out32 = new Uint32Array(this.outBuf.buffer, this.outBuf.byteOffset, BUFFER_SIZE >> 2);
  /** The reply header, as a view of its own (sendData's first piece). */
  private readonly outHead = this.outBuf.subarray(0, OUT_HEADER_SIZE);
  private readonly dirBuf = new DirBuffer(this.outBuf, this.out32);
  private readonly trace: boolean;
  /** The mount's owner mapping (SessionOptions.callerIds), or null. */
  private readonly callerIds: CallerIds | null;
  private readyResolve!: () => void;
  private readyReject!: (e: Error) => void;
  /** Resolves after the INIT handshake. */
  readonly ready: Promise<void>;
  private endResolve!: (err: Error | null) => void;
  /** Resolves when the kernel ends the session (unmount, abort) or stop() is called. */
  readonly ended: Promise<Error | null>;
  private initialized = false;

  constructor(private readonly fs: FileSystem, readonly mountpoint: string, private readonly opts: SessionOptions) {
    this.trace = opts.logger.isLevelEnabled('trace');
    this.callerIds = opts.callerIds ?? null;
    this.ready = new Promise((res, rej) => {
      this.readyResolve = res;
      this.readyReject = rej;
    });
    this.ended = new Promise((res) => {
      this.endResolve = res;
    });
  }

  /**
   * The reader's spins after batches of requests (see reader_spin_ns in the addon), as it stopped:
   * how many, how many caught the next request, and the milliseconds they took. For the log.
   */
  spins(): { spins: number; caught: number; ms: number } | null {
    if (!this.reader) return this.stoppedSpins;
    const [spins, caught, ms] = N.readerSpins(this.reader);
    return { spins, caught, ms: Math.round(ms) };
  }
  private stoppedSpins: { spins: number; caught: number; ms: number } | null = null;

  /** Request counts by opcode name (for logs and `strata status`). */
  requestsByOp(): Record<string, number> {
    const out: Record<string, number> = {};
    this.stats.byOp.forEach((n, op) => {
      if (n > 0) out[op === 0 ? 'OTHER' : opName(op)] = n;
    });
    return out;
  }

  get deviceFd(): number {
    return this.devFd;
  }

  /** Requests that arrived after INIT while the filesystem was not ready yet (see mount). */
  private held: Buffer[] | null = null;

  /**
   * Opens /dev/fuse, mounts, and starts serving. Resolves once INIT is answered: the mount is then
   * live. Requests after INIT wait (in memory, in order) until `ready` resolves, so what the
   * filesystem needs only for answering (a database) can be opened after the mount is live.
   */
  async mount(ready?: Promise<void>): Promise<void> {
    if (ready) {
      this.held = [];
      void ready.then(() => this.releaseHeld(), () => this.releaseHeld());
    }
    this.devFd = N.openFuseDevice();
    const data = [`fd=${this.devFd}`, 'rootmode=40000', `user_id=${N.getuid()}`, `group_id=${N.getgid()}`,
      ...this.opts.mountOptions].join(',');
    try {
      N.mount(this.opts.source, this.mountpoint, `fuse.${this.opts.subtype}`, this.opts.mountFlags, data);
    } catch (e) {
      N.close(this.devFd);
      this.devFd = -1;
      throw e;
    }
    this.reader = N.startReader(this.devFd, this.inBuf, (len) => this.onRequest(len), (err) => this.onEnd(err));
    await this.ready;
  }

  /** Stops reading and closes the device (the kernel then fails pending requests with ENOTCONN). */
  stop(): void {
    if (this.reader) {
      this.stoppedSpins = this.spins();
      N.stopReader(this.reader);
      this.reader = null;
    }
    if (this.devFd >= 0) {
      N.close(this.devFd);
      this.devFd = -1;
    }
    this.endResolve(null);
  }

  private onEnd(err: Error | null): void {
    if (this.reader) this.stoppedSpins = this.spins();
    this.reader = null;
    // After an unmount the device may report an error on poll instead of ENODEV on read.
    if (err && this.initialized && ['EBADF', 'ENODEV', 'ECONNABORTED'].includes(errCode(err) ?? '')) err = null;
    if (err) this.opts.logger.error({ err }, 'fuse device read failed');
    if (!this.initialized) this.readyReject(err ?? new Error('the kernel ended the session before INIT'));
    if (this.devFd >= 0) {
      N.close(this.devFd);
      this.devFd = -1;
    }
    this.endResolve(err);
  }

  // ---- passthrough backings -----------------------------------------------------------------

  /** The registry of passthrough backing files on this connection. */
  readonly backings: BackingRegistry = {
    open: (fd) => N.backingOpen(this.devFd, fd),
    close: (id) => {
      if (this.devFd >= 0) N.backingClose(this.devFd, id);
    },
  };

  // ---- notifications -------------------------------------------------------------------------

  private readonly notifyBuf = Buffer.alloc(OUT_HEADER_SIZE + 24);

  /**
   * Tells the kernel that the attributes of `nodeid` changed behind its back (FUSE_NOTIFY_INVAL_INODE
   * with a negative offset: attributes only, no page-cache work, so no inode lock is taken and it is
   * safe from inside a request handler).
   */
  invalidateAttributes(nodeid: number): void {
    this.invalidateInode(nodeid, -1);
  }

  /**
   * Attributes and the kernel's readdir cache of a directory. Sent at once, before the current
   * request is answered: a program that sees the answer and lists the directory must get the new
   * listing (a deferred notice lost that race under load). The kernel locks the cache's pages only
   * while it copies entries in or out, never while it waits for the daemon, so this cannot wait on
   * a request the daemon has yet to answer (a regular file's pages can be locked across a READ:
   * never invalidate those from inside a request).
   */
  invalidateListing(nodeid: number): void {
    this.invalidateInode(nodeid, 0);
  }

  /**
   * Drops the kernel's cached target of symlink `nodeid` (FUSE_CACHE_SYMLINKS keeps it in the page
   * cache), so that its next follow asks the daemon, whose read of the layer's link moves that link's
   * atime where the atime options say, as every follow does on the kernel's overlay. The kernel locks
   * that page while a READLINK of it waits for the daemon: the notice is written from the thread
   * pool, never from this thread, which must stay free to answer that READLINK. (Through a descriptor
   * of its own: the session may close the device meanwhile, and its number be reused.) Resolves when
   * the kernel has dropped it (or could not).
   */
  invalidateLinkTarget(nodeid: number): Promise<void> {
    if (this.devFd < 0 || !this.initialized) return Promise.resolve();
    const b = Buffer.alloc(OUT_HEADER_SIZE + 24);
    notifyHeader(b, FUSE_NOTIFY_INVAL_INODE, b.length);
    putU64(b, OUT_HEADER_SIZE, nodeid);
    putI64(b, OUT_HEADER_SIZE + 8, 0);
    putI64(b, OUT_HEADER_SIZE + 16, 0);
    let fd: number;
    try {
      fd = N.dup(this.devFd);
    } catch (e) {
      this.opts.logger.warn({ err: e, nodeid }, 'symlink invalidation failed');
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      writeAsync(fd, b, (err) => {
        closeAsync(fd, () => {});
        // ENOENT: the kernel no longer knows the inode; ENODEV: unmounted meanwhile.
        const code = err ? errCode(err) : undefined;
        if (err && code !== 'ENOENT' && code !== 'ENODEV') this.opts.logger.warn({ err, nodeid }, 'symlink invalidation failed');
        resolve();
      });
    });
  }

  private invalidateInode(nodeid: number, offset: number): void {
    if (this.devFd < 0 || !this.initialized) return;
    const b = this.notifyBuf;
    notifyHeader(b, FUSE_NOTIFY_INVAL_INODE, b.length);
    putU64(b, OUT_HEADER_SIZE, nodeid);
    putI64(b, OUT_HEADER_SIZE + 8, offset);
    putI64(b, OUT_HEADER_SIZE + 16, 0);
    try {
      N.writeReply(this.devFd, b);
    } catch (e) {
      // ENOENT: the kernel no longer knows the inode; nothing to invalidate.
      if (errCode(e) !== 'ENOENT') this.opts.logger.warn({ err: e, nodeid }, 'attribute invalidation failed');
    }
  }

  private readonly storeHead = Buffer.alloc(OUT_HEADER_SIZE + 24);

  /**
   * Puts `data` into the kernel's page cache of regular file `nodeid` at `offset` (FUSE_NOTIFY_STORE),
   * so that reading it takes no READ. The kernel locks each page it fills: only call this for a file
   * no open of which can be waiting for a READ the daemon has yet to answer. False if it was not stored.
   */
  storeData(nodeid: number, offset: number, data: Uint8Array): boolean {
    if (this.devFd < 0 || !this.initialized) return false;
    const b = this.storeHead;
    notifyHeader(b, FUSE_NOTIFY_STORE, b.length + data.length);
    putU64(b, OUT_HEADER_SIZE, nodeid);
    putU64(b, OUT_HEADER_SIZE + 8, offset);
    b.writeUInt32LE(data.length, OUT_HEADER_SIZE + 16);
    b.writeUInt32LE(0, OUT_HEADER_SIZE + 20);
    try {
      N.writeReply(this.devFd, [b, data]);
      return true;
    } catch (e) {
      // ENOENT: the kernel no longer knows the inode.
      if (errCode(e) !== 'ENOENT') this.opts.logger.warn({ err: e, nodeid }, 'page cache store failed');
      return false;
    }
  }

  // ---- replies -------------------------------------------------------------------------------

  private send(unique: number, error: number, bodyLen: number): boolean {
    const w32 = this.out32;
    w32[0] = OUT_HEADER_SIZE + bodyLen;
    w32[1] = -error;
    setU64(w32, 2, unique);
    try {
      N.writeReply(this.devFd, this.outBuf, OUT_HEADER_SIZE + bodyLen);
      return true;
    } catch (e) {
      this.replyFailed(unique, e);
      return false;
    }
  }

  private sendData(unique: number, data: Buffer): void {
    const b = this.outBuf;
    b.writeUInt32LE(OUT_HEADER_SIZE + data.length, 0);
    b.writeInt32LE(0, 4);
    putU64(b, 8, unique);
    try {
      N.writeReply(this.devFd, [this.outHead, data]);
    } catch (e) {
      this.replyFailed(unique, e);
    }
  }

  private replyFailed(unique: number, e: unknown): void {
    // ENOENT: the request was interrupted and the kernel no longer waits for it.
    if (errCode(e) !== 'ENOENT' && this.devFd >= 0) {
      this.opts.logger.error({ err: e, unique }, 'fuse reply failed');
    }
  }

  private replyError(unique: number, errnoValue: number): void {
    this.send(unique, errnoValue, 0);
  }

  private replyOk(unique: number): void {
    this.send(unique, 0, 0);
  }

  private replyEntry(unique: number, e: EntryReply): void {
    encodeEntry(this.out32, OUT_HEADER_SIZE >> 2, e);
    if (!this.send(unique, 0, ENTRY_OUT_SIZE) && e.nodeid !== 0) this.fs.forget(e.nodeid, 1);
  }

  private replyAttr(unique: number, a: AttrReply): void {
    const w32 = this.out32;
    const w = OUT_HEADER_SIZE >> 2;
    setTimeout64(w32, w, w + 2, a.attrTimeout);
    w32[w + 3] = 0;
    encodeAttr(w32, w + 4, a.attr);
    this.send(unique, 0, ATTR_OUT_SIZE);
  }

  /** fuse_statx_out: the attributes as struct fuse_statx, with the creation time when known. */
  private replyStatx(unique: number, r: StatxReply): void {
    const b = this.outBuf;
    const o = OUT_HEADER_SIZE;
    const a = r.attr;
    b.fill(0, o, o + STATX_OUT_SIZE);
    setTimeout64(this.out32, o >> 2, (o >> 2) + 2, r.attrTimeout);
    const x = o + 32;
    b.writeUInt32LE(STATX_BASIC_STATS | (r.btime ? STATX_BTIME : 0), x);
    b.writeUInt32LE(a.blksize >>> 0, x + 4);
    b.writeUInt32LE(a.nlink >>> 0, x + 16);
    b.writeUInt32LE(a.uid >>> 0, x + 20);
    b.writeUInt32LE(a.gid >>> 0, x + 24);
    b.writeUInt16LE(a.mode & 0xffff, x + 28);
    putU64(b, x + 32, a.ino);
    putU64(b, x + 40, a.size);
    putU64(b, x + 48, a.blocks);
    const time = (off: number, sec: number, nsec: number): void => {
      putI64(b, x + off, sec);
      b.writeUInt32LE(nsec >>> 0, x + off + 8);
    };
    time(64, a.atimeSec, a.atimeNsec);
    if (r.btime) time(80, r.btime.sec, r.btime.nsec);
    time(96, a.ctimeSec, a.ctimeNsec);
    time(112, a.mtimeSec, a.mtimeNsec);
    // rdev in the kernel's new_encode_dev form: major in bits 8-19, minor in bits 0-7 and 20-31
    b.writeUInt32LE((a.rdev >>> 8) & 0xfff, x + 128);
    b.writeUInt32LE(((a.rdev & 0xff) | ((a.rdev >>> 12) & 0xfff00)) >>> 0, x + 132);
    this.send(unique, 0, STATX_OUT_SIZE);
  }

  private encodeOpen(o: number, r: OpenReply): void {
    const w32 = this.out32;
    const w = o >> 2;
    setU64(w32, w, r.fh);
    w32[w + 2] = r.openFlags;
    w32[w + 3] = (r.openFlags & FOPEN_PASSTHROUGH) !== 0 ? (r.backingId ?? 0) : 0;
  }

  /** Answers an OPEN; a reply the kernel no longer waits for releases the handle again. */
  private replyOpen(ctx: RequestContext, nodeid: number, flags: number, r: OpenReply): void {
    this.encodeOpen(OUT_HEADER_SIZE, r);
    if (!this.send(ctx.unique, 0, OPEN_OUT_SIZE)) void this.fs.release(ctx, nodeid, r.fh, flags);
  }

  /** Answers an OPENDIR; a reply the kernel no longer waits for releases the handle again. */
  private replyOpendir(ctx: RequestContext, nodeid: number, r: OpenReply): void {
    this.encodeOpen(OUT_HEADER_SIZE, r);
    if (!this.send(ctx.unique, 0, OPEN_OUT_SIZE)) void this.fs.releasedir(ctx, nodeid, r.fh);
  }

  /** Answers a CREATE or TMPFILE; a reply the kernel no longer waits for releases the file again. */
  private replyCreate(ctx: RequestContext, r: CreateReply, flags: number): void {
    encodeEntry(this.out32, OUT_HEADER_SIZE >> 2, r.entry);
    this.encodeOpen(OUT_HEADER_SIZE + ENTRY_OUT_SIZE, r.open);
    if (!this.send(ctx.unique, 0, ENTRY_OUT_SIZE + OPEN_OUT_SIZE)) {
      void this.fs.release(ctx, r.entry.nodeid, r.open.fh, flags);
      if (r.entry.nodeid !== 0) this.fs.forget(r.entry.nodeid, 1);
    }
  }

  /** fuse_ioctl_out (result 0, no retry) and the output bytes. */
  private replyIoctl(unique: number, data: Buffer): void {
    const b = this.outBuf;
    b.fill(0, OUT_HEADER_SIZE, OUT_HEADER_SIZE + IOCTL_OUT_SIZE);
    data.copy(b, OUT_HEADER_SIZE + IOCTL_OUT_SIZE);
    this.send(unique, 0, IOCTL_OUT_SIZE + data.length);
  }

  private replyStatfs(unique: number, s: StatfsReply): void {
    const b = this.outBuf;
    const o = OUT_HEADER_SIZE;
    putU64(b, o, s.blocks);
    putU64(b, o + 8, s.bfree);
    putU64(b, o + 16, s.bavail);
    putU64(b, o + 24, s.files);
    putU64(b, o + 32, s.ffree);
    b.writeUInt32LE(s.bsize >>> 0, o + 40);
    b.writeUInt32LE(s.namelen >>> 0, o + 44);
    b.writeUInt32LE(s.frsize >>> 0, o + 48);
    b.fill(0, o + 52, o + STATFS_OUT_SIZE);
    this.send(unique, 0, STATFS_OUT_SIZE);
  }

  private replyU32(unique: number, v: number, size: number): void {
    this.outBuf.writeUInt32LE(v >>> 0, OUT_HEADER_SIZE);
    this.outBuf.writeUInt32LE(0, OUT_HEADER_SIZE + 4);
    this.send(unique, 0, size);
  }

  /** Answers an xattr get/list: ENODATA for no value (null), a size probe (size 0), ERANGE when too small, or the bytes. */
  /**
   * Answers a GETXATTR or LISTXATTR of `size` bytes: a probe (size 0) with `probe`, a buffer smaller than
   * that with ERANGE, else the value.
   */
  private replyXattr(unique: number, value: Buffer | null, size: number, probe = value?.length ?? 0): void {
    if (value === null) {
      this.stats.errors++;
      this.replyError(unique, errno.ENODATA);
    } else if (size === 0) this.replyU32(unique, probe, GETXATTR_OUT_SIZE);
    else if (probe > size) this.replyError(unique, errno.ERANGE);
    else this.sendData(unique, value);
  }

  // ---- requests ------------------------------------------------------------------------------

  private releaseHeld(): void {
    const held = this.held ?? [];
    this.held = null;
    for (const req of held) {
      req.copy(this.inBuf);
      this.onRequest(req.length);
    }
  }

  private onRequest(len: number): void {
    const b = this.inBuf;
    if (this.held !== null && this.initialized) {
      this.held.push(Buffer.from(b.subarray(0, len)));
      return;
    }
    const opcode = b.readUInt32LE(4);
    const unique = u64(b, 8);
    const nodeid = u64(b, 16);
    const ids = this.callerIds;
    const ctx: RequestContext = ids === null ? { unique, uid: b.readUInt32LE(24), gid: b.readUInt32LE(28), pid: b.readUInt32LE(32) }
      : { unique, uid: ids.uidIn(b.readUInt32LE(24)), gid: ids.gidIn(b.readUInt32LE(28)), pid: b.readUInt32LE(32), ids };
    const extlen = b.readUInt16LE(36) * 8;
    const end = len - extlen;
    this.stats.requests++;
    this.stats.byOp[opcode < OPCODE_SLOTS ? opcode : 0]!++;
    if (this.trace) this.opts.logger.trace({ op: opName(opcode), unique, nodeid, uid: ctx.uid, pid: ctx.pid }, 'request');
    const handler = opcode < OPCODE_SLOTS ? OPS[opcode] : undefined;
    try {
      if (handler === undefined) this.replyError(unique, errno.ENOSYS);
      else handler.call(this, ctx, nodeid, IN_HEADER_SIZE, end);
    } catch (err) {
      this.fail(opcode, unique, err);
    }
  }

  /** Answers a request with the errno of `err`, then logs it (the answer goes out whatever the log does). */
  private fail(opcode: number, unique: number, err: unknown): void {
    const e = errnoOf(err);
    this.stats.errors++;
    this.replyError(unique, e);
    if (!isExpectedErrno(e)) this.opts.logger.error({ err, op: opName(opcode) }, 'request failed');
    else if (this.trace) this.opts.logger.trace({ op: opName(opcode), errno: e }, 'request error');
  }

  /** Requests whose handler returned a promise that has not settled yet. */
  private pending = 0;
  private idleWaiters: (() => void)[] = [];

  /** Resolves once no request is being worked on (or after `timeoutMs`). */
  idle(timeoutMs: number): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Runs a handler result through to a reply, whether it is a value or a promise. */
  private settle<T>(opcode: number, unique: number, r: T | Promise<T>, ok: (v: T) => void): void {
    if (r instanceof Promise) this.later(opcode, unique, r, ok);
    else ok(r);
  }

  /**
   * Replies once a handler's promise settles. The hot requests (LOOKUP, GETATTR, OPEN, READ, FLUSH,
   * RELEASE, READDIR) call this only for a promise and reply at once otherwise: no closure per request.
   */
  private later<T>(opcode: number, unique: number, r: Promise<T>, ok: (v: T) => void): void {
    this.pending++;
    r.then(ok, (err) => this.fail(opcode, unique, err))
      .catch((err) => this.fail(opcode, unique, err))
      .finally(() => {
        if (--this.pending === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
  }

  /**
   * The requests' handlers, one small method per opcode (the table OPS, filled below, maps opcodes to
   * them). Each decodes its request's body at `p`..`end` of the input buffer, calls the filesystem and
   * replies: at once for a value, or when a promise settles. V8 optimizes a function after it has run
   * for a while in proportion to its size: one switch over every opcode ran interpreted through whole
   * benchmarks (a create of 5000 files never tiered it up); small handlers are optimized early.
   */
  private opLookup(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    this.entryReply(Op.LOOKUP, ctx.unique, this.fs.lookup(ctx, nodeid, cname(this.inBuf, p, end)));
  }

  private opForget(_ctx: RequestContext, nodeid: number, p: number): void {
    this.fs.forget(nodeid, u64(this.inBuf, p));
  }

  private opBatchForget(_ctx: RequestContext, _nodeid: number, p: number, end: number): void {
    const b = this.inBuf;
    const count = b.readUInt32LE(p);
    for (let i = 0, o = p + 8; i < count && o + 16 <= end; i++, o += 16) this.fs.forget(u64(b, o), u64(b, o + 8));
  }

  private opGetattr(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const fh = (b.readUInt32LE(p) & FUSE_GETATTR_FH) !== 0 ? u64(b, p + 8) : undefined;
    this.attrReply(Op.GETATTR, ctx.unique, this.fs.getattr(ctx, nodeid, fh));
  }

  private opOpen(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const flags = b.readUInt32LE(p);
    const killSuidgid = (b.readUInt32LE(p + 4) & FUSE_OPEN_KILL_SUIDGID) !== 0;
    const r = this.fs.open(ctx, nodeid, flags, killSuidgid);
    if (r instanceof Promise) return this.later(Op.OPEN, ctx.unique, r, (o) => this.replyOpen(ctx, nodeid, flags, o));
    this.replyOpen(ctx, nodeid, flags, r);
  }

  private opRead(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const fh = u64(b, p);
    const offset = u64(b, p + 8);
    const size = b.readUInt32LE(p + 16);
    const fs = this.fs;
    // Read straight into the reply buffer after the header: one write, no buffer per READ.
    if (fs.readInto && size <= BUFFER_SIZE - OUT_HEADER_SIZE) {
      this.send(ctx.unique, 0, fs.readInto(ctx, nodeid, fh, offset, size, this.outBuf, OUT_HEADER_SIZE));
      return;
    }
    const u = ctx.unique;
    this.settle(Op.READ, u, fs.read(ctx, nodeid, fh, offset, size), (data) => this.sendData(u, data));
  }

  private opRelease(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    this.okReply(Op.RELEASE, ctx.unique, this.fs.release(ctx, nodeid, u64(b, p), b.readUInt32LE(p + 8)));
  }

  private opFlush(ctx: RequestContext, nodeid: number, p: number): void {
    this.okReply(Op.FLUSH, ctx.unique, this.fs.flush(ctx, nodeid, u64(this.inBuf, p)));
  }

  private opReaddir(ctx: RequestContext, nodeid: number, p: number): void {
    this.readdir(ctx, nodeid, p, false);
  }

  private opReaddirplus(ctx: RequestContext, nodeid: number, p: number): void {
    this.readdir(ctx, nodeid, p, true);
  }

  private readdir(ctx: RequestContext, nodeid: number, p: number, plus: boolean): void {
    const b = this.inBuf;
    const fh = u64(b, p);
    const offset = u64(b, p + 8);
    const size = Math.min(b.readUInt32LE(p + 16), BUFFER_SIZE - OUT_HEADER_SIZE);
    const prepared = this.fs.readdirPrepare?.(ctx, nodeid);
    if (prepared instanceof Promise) {
      const op = plus ? Op.READDIRPLUS : Op.READDIR;
      return this.later(op, ctx.unique, prepared.then(() => this.fillDir(ctx, nodeid, fh, offset, size, plus)), () => undefined);
    }
    this.fillDir(ctx, nodeid, fh, offset, size, plus);
  }

  private opInit(ctx: RequestContext, _nodeid: number, p: number): void {
    this.init(ctx.unique, p);
  }

  private opStatx(ctx: RequestContext, nodeid: number, p: number): void {
    const u = ctx.unique;
    const fs = this.fs;
    if (!fs.statx) return this.replyError(u, errno.ENOSYS);
    const b = this.inBuf;
    const fh = (b.readUInt32LE(p) & FUSE_GETATTR_FH) !== 0 ? u64(b, p + 8) : undefined;
    this.settle(Op.STATX, u, fs.statx(ctx, nodeid, fh), (r) => this.replyStatx(u, r));
  }

  private opSetattr(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const req: SetattrRequest = {
      valid: b.readUInt32LE(p),
      fh: u64(b, p + 8),
      size: u64(b, p + 16),
      atimeSec: i64(b, p + 32),
      mtimeSec: i64(b, p + 40),
      atimeNsec: b.readUInt32LE(p + 56),
      mtimeNsec: b.readUInt32LE(p + 60),
      mode: b.readUInt32LE(p + 68),
      uid: b.readUInt32LE(p + 76),
      gid: b.readUInt32LE(p + 80),
    };
    this.attrReply(Op.SETATTR, ctx.unique, this.fs.setattr(ctx, nodeid, req));
  }

  private opReadlink(ctx: RequestContext, nodeid: number): void {
    const u = ctx.unique;
    this.settle(Op.READLINK, u, this.fs.readlink(ctx, nodeid), (t) => this.sendData(u, Buffer.from(t, 'latin1')));
  }

  private opSymlink(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const [name, next] = cstr(this.inBuf, p, end);
    const [target] = cstr(this.inBuf, next, end);
    this.entryReply(Op.SYMLINK, ctx.unique, this.fs.symlink(ctx, nodeid, name, target));
  }

  private opMknod(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const b = this.inBuf;
    const [name] = cstr(b, p + 16, end);
    const r = this.fs.mknod(ctx, nodeid, name, b.readUInt32LE(p), b.readUInt32LE(p + 4), b.readUInt32LE(p + 8));
    this.entryReply(Op.MKNOD, ctx.unique, r);
  }

  private opMkdir(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const b = this.inBuf;
    const [name] = cstr(b, p + 8, end);
    this.entryReply(Op.MKDIR, ctx.unique, this.fs.mkdir(ctx, nodeid, name, b.readUInt32LE(p), b.readUInt32LE(p + 4)));
  }

  private opUnlink(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    this.okReply(Op.UNLINK, ctx.unique, this.fs.unlink(ctx, nodeid, cname(this.inBuf, p, end)));
  }

  private opRmdir(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    this.okReply(Op.RMDIR, ctx.unique, this.fs.rmdir(ctx, nodeid, cname(this.inBuf, p, end)));
  }

  private opRename(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    this.rename(Op.RENAME, ctx, nodeid, u64(this.inBuf, p), 0, p + 8, end);
  }

  private opRename2(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    this.rename(Op.RENAME2, ctx, nodeid, u64(this.inBuf, p), this.inBuf.readUInt32LE(p + 8), p + 16, end);
  }

  private rename(op: Op, ctx: RequestContext, nodeid: number, newDir: number, flags: number, p: number, end: number): void {
    const [name, next] = cstr(this.inBuf, p, end);
    const [newName] = cstr(this.inBuf, next, end);
    this.okReply(op, ctx.unique, this.fs.rename(ctx, nodeid, name, newDir, newName, flags));
  }

  private opLink(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const [newName] = cstr(this.inBuf, p + 8, end);
    this.entryReply(Op.LINK, ctx.unique, this.fs.link(ctx, u64(this.inBuf, p), nodeid, newName));
  }

  private opCreate(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const b = this.inBuf;
    const flags = b.readUInt32LE(p);
    const [name] = cstr(b, p + 16, end);
    const r = this.fs.create(ctx, nodeid, name, b.readUInt32LE(p + 4), flags, b.readUInt32LE(p + 8));
    if (r instanceof Promise) return this.later(Op.CREATE, ctx.unique, r, (c) => this.replyCreate(ctx, c, flags));
    this.replyCreate(ctx, r, flags);
  }

  private opTmpfile(ctx: RequestContext, nodeid: number, p: number): void {
    const fs = this.fs;
    // Without a tmpfile method, ENOSYS: the kernel then answers O_TMPFILE with EOPNOTSUPP.
    if (!fs.tmpfile) return this.replyError(ctx.unique, errno.ENOSYS);
    const b = this.inBuf;
    const flags = b.readUInt32LE(p);
    const r = fs.tmpfile(ctx, nodeid, b.readUInt32LE(p + 4), flags, b.readUInt32LE(p + 8));
    this.settle(Op.TMPFILE, ctx.unique, r, (c) => this.replyCreate(ctx, c, flags));
  }

  private opWrite(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const size = b.readUInt32LE(p + 16);
    const data = b.subarray(p + 40, p + 40 + size);
    const r = this.fs.write(ctx, nodeid, u64(b, p), u64(b, p + 8), data, b.readUInt32LE(p + 20));
    const u = ctx.unique;
    if (r instanceof Promise) return this.later(Op.WRITE, u, r, (n) => this.replyU32(u, n, WRITE_OUT_SIZE));
    this.replyU32(u, r, WRITE_OUT_SIZE);
  }

  private opStatfs(ctx: RequestContext, nodeid: number): void {
    const u = ctx.unique;
    this.settle(Op.STATFS, u, this.fs.statfs(ctx, nodeid), (s) => this.replyStatfs(u, s));
  }

  private opFsync(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const datasync = (b.readUInt32LE(p + 8) & FUSE_FSYNC_FDATASYNC) !== 0;
    this.okReply(Op.FSYNC, ctx.unique, this.fs.fsync(ctx, nodeid, u64(b, p), datasync));
  }

  private opFsyncdir(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const datasync = (b.readUInt32LE(p + 8) & FUSE_FSYNC_FDATASYNC) !== 0;
    this.okReply(Op.FSYNCDIR, ctx.unique, this.fs.fsyncdir(ctx, nodeid, u64(b, p), datasync));
  }

  private opSetxattr(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    // With FUSE_SETXATTR_EXT the header has setxattr_flags (16 bytes), else the 8-byte compat one.
    const b = this.inBuf;
    const size = b.readUInt32LE(p);
    const flags = b.readUInt32LE(p + 4);
    const setxattrFlags = this.setxattrExt ? b.readUInt32LE(p + 8) : 0;
    const [name, next] = cstr(b, p + (this.setxattrExt ? 16 : 8), end);
    const value = Buffer.from(b.subarray(next, next + size));
    this.okReply(Op.SETXATTR, ctx.unique, this.fs.setxattr(ctx, nodeid, name, value, flags, setxattrFlags));
  }

  private opGetxattr(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const b = this.inBuf;
    const size = b.readUInt32LE(p);
    const [name] = cstr(b, p + 8, end);
    const r = this.fs.getxattr(ctx, nodeid, name);
    const u = ctx.unique;
    if (r instanceof Promise) return this.later(Op.GETXATTR, u, r, (v) => this.replyXattr(u, v, size));
    this.replyXattr(u, r, size);
  }

  private opListxattr(ctx: RequestContext, nodeid: number, p: number): void {
    const size = this.inBuf.readUInt32LE(p);
    const u = ctx.unique;
    this.settle(Op.LISTXATTR, u, this.fs.listxattr(ctx, nodeid), (list) => {
      const value = Buffer.from(list.names.map((n) => n + '\0').join(''), 'latin1');
      this.replyXattr(u, value, size, Math.max(list.size, value.length));
    });
  }

  private opRemovexattr(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const [name] = cstr(this.inBuf, p, end);
    this.okReply(Op.REMOVEXATTR, ctx.unique, this.fs.removexattr(ctx, nodeid, name));
  }

  private opOpendir(ctx: RequestContext, nodeid: number, p: number): void {
    const r = this.fs.opendir(ctx, nodeid, this.inBuf.readUInt32LE(p));
    this.settle(Op.OPENDIR, ctx.unique, r, (o) => this.replyOpendir(ctx, nodeid, o));
  }

  private opReleasedir(ctx: RequestContext, nodeid: number, p: number): void {
    this.okReply(Op.RELEASEDIR, ctx.unique, this.fs.releasedir(ctx, nodeid, u64(this.inBuf, p)));
  }

  private opAccess(ctx: RequestContext, nodeid: number, p: number): void {
    this.okReply(Op.ACCESS, ctx.unique, this.fs.access(ctx, nodeid, this.inBuf.readUInt32LE(p)));
  }

  private opInterrupt(): void {
    // Every handler answers promptly; an interrupted request still gets its reply.
  }

  private opDestroy(ctx: RequestContext): void {
    this.replyOk(ctx.unique);
    this.fs.destroy?.();
  }

  private opFallocate(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const r = this.fs.fallocate(ctx, nodeid, u64(b, p), u64(b, p + 8), u64(b, p + 16), b.readUInt32LE(p + 24));
    this.okReply(Op.FALLOCATE, ctx.unique, r);
  }

  private opIoctl(ctx: RequestContext, nodeid: number, p: number, end: number): void {
    const u = ctx.unique;
    const fs = this.fs;
    if (!fs.ioctl) return this.replyError(u, errno.ENOTTY);
    // fuse_ioctl_in: fh, flags, cmd, arg, in_size, out_size; then in_size bytes of input.
    const b = this.inBuf;
    const inSize = b.readUInt32LE(p + 24);
    const input = Buffer.from(b.subarray(p + 32, Math.min(end, p + 32 + inSize)));
    const outSize = b.readUInt32LE(p + 28);
    this.settle(Op.IOCTL, u, fs.ioctl(ctx, nodeid, u64(b, p), b.readUInt32LE(p + 12), input, outSize),
      (out) => this.replyIoctl(u, out.subarray(0, outSize)));
  }

  private opLseek(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const u = ctx.unique;
    this.settle(Op.LSEEK, u, this.fs.lseek(ctx, nodeid, u64(b, p), i64(b, p + 8), b.readUInt32LE(p + 16)), (off) => {
      putU64(this.outBuf, OUT_HEADER_SIZE, off);
      this.send(u, 0, LSEEK_OUT_SIZE);
    });
  }

  private opCopyFileRange(ctx: RequestContext, nodeid: number, p: number): void {
    const b = this.inBuf;
    const u = ctx.unique;
    const r = this.fs.copyFileRange(ctx, nodeid, u64(b, p), u64(b, p + 8), u64(b, p + 16), u64(b, p + 24), u64(b, p + 32),
      u64(b, p + 40), u64(b, p + 48));
    this.settle(Op.COPY_FILE_RANGE, u, r, (n) => this.replyU32(u, n, WRITE_OUT_SIZE));
  }

  // Replies now for a value, later for a promise, for the many handlers that answer OK, an entry or
  // attributes. The promise's closure is made in a function of its own: a function that makes a
  // closure over its variables allocates their context at every call (the few handlers with other
  // replies keep their closure inline, in the promise's branch, and pay that).
  private okReply(op: Op, u: number, r: void | Promise<void>): void {
    if (r instanceof Promise) return this.okLater(op, u, r);
    this.replyOk(u);
  }

  private okLater(op: Op, u: number, r: Promise<void>): void {
    this.later(op, u, r, () => this.replyOk(u));
  }

  private entryReply(op: Op, u: number, r: EntryReply | Promise<EntryReply>): void {
    if (r instanceof Promise) return this.entryLater(op, u, r);
    this.replyEntry(u, r);
  }

  private entryLater(op: Op, u: number, r: Promise<EntryReply>): void {
    this.later(op, u, r, (e) => this.replyEntry(u, e));
  }

  private attrReply(op: Op, u: number, r: AttrReply | Promise<AttrReply>): void {
    if (r instanceof Promise) return this.attrLater(op, u, r);
    this.replyAttr(u, r);
  }

  private attrLater(op: Op, u: number, r: Promise<AttrReply>): void {
    this.later(op, u, r, (a) => this.replyAttr(u, a));
  }

  static {
    const s = FuseSession.prototype;
    const table: [Op, OpHandler][] = [
      [Op.LOOKUP, s.opLookup], [Op.FORGET, s.opForget], [Op.BATCH_FORGET, s.opBatchForget], [Op.GETATTR, s.opGetattr],
      [Op.OPEN, s.opOpen], [Op.READ, s.opRead], [Op.RELEASE, s.opRelease], [Op.FLUSH, s.opFlush],
      [Op.READDIR, s.opReaddir], [Op.READDIRPLUS, s.opReaddirplus], [Op.INIT, s.opInit], [Op.STATX, s.opStatx],
      [Op.SETATTR, s.opSetattr], [Op.READLINK, s.opReadlink], [Op.SYMLINK, s.opSymlink], [Op.MKNOD, s.opMknod],
      [Op.MKDIR, s.opMkdir], [Op.UNLINK, s.opUnlink], [Op.RMDIR, s.opRmdir], [Op.RENAME, s.opRename],
      [Op.RENAME2, s.opRename2], [Op.LINK, s.opLink], [Op.CREATE, s.opCreate], [Op.TMPFILE, s.opTmpfile],
      [Op.WRITE, s.opWrite], [Op.STATFS, s.opStatfs], [Op.FSYNC, s.opFsync], [Op.FSYNCDIR, s.opFsyncdir],
      [Op.SETXATTR, s.opSetxattr], [Op.GETXATTR, s.opGetxattr], [Op.LISTXATTR, s.opListxattr],
      [Op.REMOVEXATTR, s.opRemovexattr], [Op.OPENDIR, s.opOpendir], [Op.RELEASEDIR, s.opReleasedir],
      [Op.ACCESS, s.opAccess], [Op.INTERRUPT, s.opInterrupt], [Op.DESTROY, s.opDestroy], [Op.FALLOCATE, s.opFallocate],
      [Op.IOCTL, s.opIoctl], [Op.LSEEK, s.opLseek], [Op.COPY_FILE_RANGE, s.opCopyFileRange],
    ];
    for (const [op, h] of table) OPS[op] = h;
  }

  /** Fills and sends a READDIR(PLUS) reply in one synchronous step (the sink is the shared reply buffer). */
  private fillDir(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number, plus: boolean): void {
    const sink = this.dirBuf.reset(OUT_HEADER_SIZE, size);
    this.fs.readdir(ctx, nodeid, fh, offset, sink, plus);
    if (!this.send(ctx.unique, 0, sink.pos - OUT_HEADER_SIZE)) for (const id of sink.nodeids) this.fs.forget(id, 1);
  }

  private init(unique: number, p: number): void {
    const b = this.inBuf;
    const major = b.readUInt32LE(p);
    const minor = b.readUInt32LE(p + 4);
    const maxReadahead = b.readUInt32LE(p + 8);
    let kflags = b.readUInt32LE(p + 12);
    if (kflags & InitFlag.INIT_EXT) kflags += b.readUInt32LE(p + 16) * TWO32;
    const has = (f: number) => Math.floor(kflags / f) % 2 === 1;
    if (major !== FUSE_KERNEL_VERSION || minor < 31) {
      this.opts.logger.error({ major, minor }, 'unsupported FUSE protocol version');
      this.replyError(unique, errno.EIO);
      this.readyReject(new Error(`kernel FUSE protocol ${major}.${minor} is too old (need 7.31+)`));
      return;
    }
    // No file handles (name_to_handle_at answers EOPNOTSUPP), as the kernel's overlay without
    // nfs_export: FUSE_NO_EXPORT_SUPPORT leaves the kernel able to encode fanotify ids only.
    // With it, FUSE_EXPORT_SUPPORT: handles are resolved by the daemon's LOOKUP "." and "..".
    const exportFlag = this.opts.exportSupport ? InitFlag.EXPORT_SUPPORT : InitFlag.NO_EXPORT_SUPPORT;
    // READDIRPLUS for every chunk of a listing, not READDIRPLUS_AUTO: with AUTO only the chunk at
    // offset 0 is "plus", and a walk that stats what it lists (find, ls -l, rm -rf) then costs one
    // LOOKUP round trip per name of every further chunk (1856 of them in a walk of 11k names).
    const wanted = [InitFlag.ASYNC_READ, InitFlag.ATOMIC_O_TRUNC, exportFlag, InitFlag.BIG_WRITES,
      InitFlag.DO_READDIRPLUS, InitFlag.PARALLEL_DIROPS, InitFlag.MAX_PAGES,
      InitFlag.CACHE_SYMLINKS, InitFlag.ASYNC_DIO, InitFlag.INIT_EXT, InitFlag.DIRECT_IO_ALLOW_MMAP,
      InitFlag.HANDLE_KILLPRIV_V2, InitFlag.SETXATTR_EXT];
    // POSIX ACLs enforced by the kernel; it then leaves the umask to the daemon (DONT_MASK).
    if (this.opts.posixAcl) wanted.push(InitFlag.POSIX_ACL, InitFlag.DONT_MASK);
    const wantPassthrough = this.opts.passthrough !== 'off' && minor >= 40;
    if (wantPassthrough) wanted.push(InitFlag.PASSTHROUGH);
    let flags = 0;
    for (const f of wanted) if (has(f)) flags += f;
    this.passthrough = wantPassthrough && has(InitFlag.PASSTHROUGH);
    this.setxattrExt = has(InitFlag.SETXATTR_EXT);
    if (this.opts.passthrough === 'on' && !this.passthrough) {
      this.opts.logger.warn({ minor }, 'passthrough requested but the kernel does not offer it; serving reads through the daemon');
    }
    const o = OUT_HEADER_SIZE;
    const out = this.outBuf;
    out.fill(0, o, o + INIT_OUT_SIZE);
    out.writeUInt32LE(FUSE_KERNEL_VERSION, o);
    out.writeUInt32LE(Math.min(minor, FUSE_KERNEL_MINOR_VERSION), o + 4);
    out.writeUInt32LE(maxReadahead, o + 8);
    out.writeUInt32LE(flags % TWO32 >>> 0, o + 12);
    out.writeUInt16LE(64, o + 16); // max_background
    out.writeUInt16LE(48, o + 18); // congestion_threshold
    out.writeUInt32LE(MAX_WRITE, o + 20);
    out.writeUInt32LE(1, o + 24); // time_gran: nanoseconds
    out.writeUInt16LE(MAX_PAGES, o + 28);
    out.writeUInt32LE(Math.floor(flags / TWO32), o + 32);
    out.writeUInt32LE(this.passthrough ? 1 : 0, o + 36); // max_stack_depth
    this.send(unique, 0, INIT_OUT_SIZE);
    this.initialized = true;
    this.fs.init?.({ minor, passthrough: this.passthrough, posixAcl: this.opts.posixAcl === true && has(InitFlag.POSIX_ACL) });
    this.opts.logger.debug({ minor, passthrough: this.passthrough }, 'FUSE session initialised');
    this.readyResolve();
  }
}
