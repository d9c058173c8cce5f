// Writing tar streams as Go's archive/tar (Docker, containerd) writes layer tars: ustar headers,
// with a PAX extended header before an entry when the ustar fields cannot hold it (nanosecond
// times, long or non-ASCII names, xattrs as SCHILY.xattr.*, large ids or sizes).
//
// The blocks are encoded here rather than by tar-stream's packer: PAX records must carry binary
// values (security.capability, file names that are not UTF-8), and tar-stream's packer only
// encodes text records and has no way to emit an extended header of our own. Reading tars
// (untrusted input) is left to tar-stream.
//
// TarWriter (layers, `strata commit`) digests the stream while it is written: the sha256 of the
// uncompressed tar (the diff ID), and, when gzip is asked for, of the compressed bytes (the blob
// digest). FdTarWriter (`strata export`) writes to a file descriptor with no digests, its file data
// copied by the kernel where it can.

import { createHash, type Hash } from 'node:crypto';
import { PassThrough, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import fs from 'node:fs';
import * as N from '../native/index.js';

export type EntryType = 'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo';

const TYPEFLAG: Record<EntryType | 'pax', string> = {
  file: '0', link: '1', symlink: '2', 'character-device': '3', 'block-device': '4', directory: '5', fifo: '6', pax: 'x',
};
const TYPEFLAG_BYTE = Object.fromEntries(Object.entries(TYPEFLAG).map(([k, v]) => [k, v.charCodeAt(0)])) as Record<EntryType | 'pax', number>;
const PAX_TYPEFLAG = TYPEFLAG_BYTE.pax;

/** One tar entry. Names and link targets are raw bytes (as the filesystem holds them). */
export interface TarEntry {
  name: Buffer;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  linkname?: Buffer;
  devmajor?: number;
  devminor?: number;
  xattrs?: [string, Buffer][];
}

/** ustar numeric fields: 7 octal digits for ids, 11 for size and mtime. */
const USTAR_ID_MAX = 0o7777777;
const USTAR_SIZE_MAX = 0o77777777777;
const USTAR_NAME_MAX = 100;
const USTAR_PREFIX_MAX = 155;
const BLOCK = 512;
/** Bytes gathered before a write to the stream: fewer, larger writes downstream. */
const COALESCE_BYTES = 256 * 1024;

function plainAscii(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

/**
 * Where ustar's name and prefix fields split a name (with "/" appended for a directory): -1 when
 * the name field holds it all, the index of the "/" between prefix and name, or null when ustar
 * cannot hold it (then PAX "path").
 */
function ustarSplit(name: Buffer, isDir: boolean): number | null {
  if (!plainAscii(name)) return null;
  const len = name.length + (isDir ? 1 : 0);
  if (len <= USTAR_NAME_MAX) return -1;
  // Split at a "/" so that the prefix holds at most 155 bytes and the rest at most 100.
  for (let i = name.indexOf(0x2f); i >= 0 && i <= USTAR_PREFIX_MAX; i = name.indexOf(0x2f, i + 1)) {
    if (len - i - 1 <= USTAR_NAME_MAX && i > 0 && i < len - 1) return i;
  }
  return null;
}

function fitsUstarLink(link: Buffer): boolean {
  return plainAscii(link) && link.length <= USTAR_NAME_MAX;
}

/** A printable stand-in for a name that only the PAX header carries in full. */
function placeholder(b: Buffer): string {
  const s = b.toString('latin1').replace(/[^\x20-\x7e]/g, '_').replace(/\//g, '_');
  return s.slice(-99) || '_';
}

function decimalLength(n: number): number {
  return String(n).length;
}

/** Writes one PAX record "<len> <key>=<value>\n" (len counts the whole record) at `off`; returns its length. */
function putPaxRecord(dst: Buffer, off: number, key: string, value: Buffer | string): number {
  const valueLen = typeof value === 'string' ? Buffer.byteLength(value, 'latin1') : value.length;
  const body = 1 + key.length + 1 + valueLen + 1;
  let len = body + 1;
  while (decimalLength(len) + body !== len) len = decimalLength(len) + body;
  let p = off + dst.write(`${len} ${key}=`, off, 'latin1');
  p += typeof value === 'string' ? dst.write(value, p, 'latin1') : value.copy(dst, p);
  dst[p++] = 0x0a;
  return p - off;
}

/** A number as `digits` octal digits and a NUL at `off`; 0 when it does not fit (PAX carries it then). */
function putOctal(dst: Buffer, off: number, digits: number, n: number): void {
  let v = n >= 0 && n < 8 ** digits ? Math.floor(n) : 0;
  let i = off + digits - 1;
  // Above 2^31 the bit operations would wrap: divide until they can take over.
  for (; v >= 0x80000000; i--) {
    dst[i] = 0x30 + (v % 8);
    v = Math.floor(v / 8);
  }
  for (; i >= off; i--) {
    dst[i] = 0x30 + (v & 7);
    v >>>= 3;
  }
  dst[off + digits] = 0;
}

const USTAR_MAGIC = Buffer.from('ustar\x0000', 'latin1');
const ZERO_BLOCK = Buffer.alloc(BLOCK);

/**
 * Writes the numeric fields, type, magic and checksum of a ustar header block at `off`; the name,
 * prefix and link name must be in place already, and the rest of the block zero.
 */
function finishUstarHeader(b: Buffer, off: number, e: TarEntry, size: number, typeflag: number): void {
  putOctal(b, off + 100, 7, e.mode & 0o7777);
  putOctal(b, off + 108, 7, e.uid);
  putOctal(b, off + 116, 7, e.gid);
  putOctal(b, off + 124, 11, size);
  putOctal(b, off + 136, 11, e.mtimeSec);
  b[off + 156] = typeflag;
  USTAR_MAGIC.copy(b, off + 257);
  putOctal(b, off + 329, 7, e.devmajor ?? 0);
  putOctal(b, off + 337, 7, e.devminor ?? 0);
  // The checksum is computed with its own field as eight spaces.
  b.fill(0x20, off + 148, off + 156);
  let sum = 0;
  for (let i = off, end = off + BLOCK; i < end; i++) sum += b[i]!;
  putOctal(b, off + 148, 6, sum);
  b[off + 155] = 0x20;
}

/** An upper bound of the bytes headerInto() writes for `e`. */
export function headerBound(e: TarEntry): number {
  let n = 3 * BLOCK + 2 * e.name.length + 2 * (e.linkname?.length ?? 0) + 256;
  for (const [k, v] of e.xattrs ?? []) n += k.length + v.length + 32;
  return n;
}

/**
 * Writes the header blocks of an entry at `off` of `dst` (which has headerBound(e) bytes there): a
 * PAX extended header with its records when ustar cannot hold everything (long or non-ASCII names,
 * nanosecond times, large ids or sizes, xattrs as SCHILY.xattr.*), then the ustar header. Returns
 * the bytes written. (The file's data, padded to 512 bytes, follows them.)
 */
export function headerInto(e: TarEntry, dst: Buffer, off: number): number {
  const isDir = e.type === 'directory';
  const split = ustarSplit(e.name, isDir);
  const linkFits = !e.linkname || fitsUstarLink(e.linkname);
  let p = off;
  // The PAX records go after a header block left free for them.
  let q = off + BLOCK;
  if (split === null) q += putPaxRecord(dst, q, 'path', e.name);
  if (!linkFits) q += putPaxRecord(dst, q, 'linkpath', e.linkname!);
  if (e.mtimeNsec !== 0 || e.mtimeSec < 0 || e.mtimeSec > USTAR_SIZE_MAX) {
    const sign = e.mtimeSec < 0 ? '-' : '';
    q += putPaxRecord(dst, q, 'mtime', `${sign}${Math.abs(e.mtimeSec)}.${String(e.mtimeNsec).padStart(9, '0')}`);
  }
  if (e.uid > USTAR_ID_MAX) q += putPaxRecord(dst, q, 'uid', String(e.uid));
  if (e.gid > USTAR_ID_MAX) q += putPaxRecord(dst, q, 'gid', String(e.gid));
  if (e.size > USTAR_SIZE_MAX) q += putPaxRecord(dst, q, 'size', String(e.size));
  if (e.xattrs) for (const [k, v] of e.xattrs) q += putPaxRecord(dst, q, `SCHILY.xattr.${k}`, v);
  const body = q - off - BLOCK;
  if (body > 0) {
    ZERO_BLOCK.copy(dst, off);
    const name = `PaxHeaders/${placeholder(e.name.subarray(e.name.lastIndexOf(0x2f) + 1))}`.slice(0, USTAR_NAME_MAX);
    dst.write(name, off, USTAR_NAME_MAX, 'latin1');
    finishUstarHeader(dst, off, e, body, PAX_TYPEFLAG);
    const pad = (BLOCK - (body % BLOCK)) % BLOCK;
    dst.fill(0, q, q + pad);
    p = q + pad;
  }
  ZERO_BLOCK.copy(dst, p);
  if (split === null) {
    dst.write(placeholder(e.name), p, USTAR_NAME_MAX, 'latin1');
  } else if (split < 0) {
    e.name.copy(dst, p);
    if (isDir) dst[p + e.name.length] = 0x2f;
  } else {
    e.name.copy(dst, p, split + 1);
    if (isDir) dst[p + e.name.length - split - 1] = 0x2f;
    e.name.copy(dst, p + 345, 0, split);
  }
  if (e.linkname) {
    if (linkFits) e.linkname.copy(dst, p + 157);
    else dst.write(placeholder(e.linkname), p + 157, USTAR_NAME_MAX, 'latin1');
  }
  finishUstarHeader(dst, p, e, e.type === 'file' ? e.size : 0, TYPEFLAG_BYTE[e.type]);
  return p + BLOCK - off;
}

/** The header blocks of an entry (see headerInto) as a buffer of their own. */
export function headerBlocks(e: TarEntry): Buffer {
  const b = Buffer.allocUnsafe(headerBound(e));
  return b.subarray(0, headerInto(e, b, 0));
}

function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** Counts and hashes what flows through. */
class Digesting extends Transform {
  readonly hash: Hash = createHash('sha256');
  bytes = 0;
  constructor(private readonly onBytes?: (n: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.onBytes?.(chunk.length);
    cb(null, chunk);
  }

  digest(): string {
    return `sha256:${this.hash.digest('hex')}`;
  }
}

export interface TarDigests {
  /** sha256 of the uncompressed tar. */
  diffId: string;
  /** Bytes of the uncompressed tar. */
  diffSize: number;
  /** sha256 of what was written to `out` (the diff ID when not compressed). */
  digest: string;
  /** Bytes written to `out`. */
  size: number;
  compressed: boolean;
}

/** Writes entries into a tar stream that goes (optionally gzipped) to an output stream. */
export class TarWriter {
  private readonly src = new PassThrough({ highWaterMark: 1 << 20 });
  private readonly raw: Digesting;
  private readonly out: Digesting;
  private readonly done: Promise<void>;
  private failed: Error | null = null;

  constructor(dest: Writable, private readonly opts: { gzip: boolean; onBytes?: (n: number) => void }) {
    this.raw = new Digesting(opts.onBytes);
    // Uncompressed, what goes out is the tar itself: one hash serves as both digests.
    this.out = opts.gzip ? new Digesting() : this.raw;
    const stages = opts.gzip ? [this.raw, createGzip(), this.out] : [this.raw];
    this.done = (pipeline as (...s: unknown[]) => Promise<void>)(this.src, ...stages, dest);
    // Reported by write() and finish(); a rejection before then must not go unhandled.
    this.done.catch((e: unknown) => {
      this.failed = e as Error;
    });
  }

  /** Small pieces (headers, small files, padding) gathered into one chunk for the stream. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  private async write(b: Buffer): Promise<void> {
    if (this.failed) throw this.failed;
    if (b.length === 0) return;
    if (b.length >= COALESCE_BYTES) {
      // Large enough on its own: no copy.
      await this.flush();
      this.pending.push(b);
      this.pendingBytes = b.length;
      await this.flush();
      return;
    }
    this.pending.push(b);
    this.pendingBytes += b.length;
    if (this.pendingBytes >= COALESCE_BYTES) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const chunk = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    if (!this.src.write(chunk)) {
      await new Promise<void>((resolve) => {
        const go = (): void => {
          this.src.off('drain', go);
          this.src.off('close', go);
          resolve();
        };
        this.src.on('drain', go);
        this.src.on('close', go);
      });
    }
    if (this.failed) throw this.failed;
  }

  /** Adds an entry; for a regular file, `data` yields its bytes (exactly `entry.size` are stored). */
  async add(e: TarEntry, data?: Iterable<Buffer> | AsyncIterable<Buffer>): Promise<void> {
    await this.write(headerBlocks(e));
    const size = e.type === 'file' ? e.size : 0;
    if (size === 0) return;
    let left = size;
    const take = async (chunk: Buffer): Promise<boolean> => {
      const part = chunk.length > left ? chunk.subarray(0, left) : chunk;
      left -= part.length;
      await this.write(part);
      return left > 0;
    };
    if (data && Symbol.iterator in data) {
      for (const chunk of data) if (!(await take(chunk))) break;
    } else if (data) {
      for await (const chunk of data) if (!(await take(chunk))) break;
    }
    // A file that shrank while it was read is padded with zeros: the header already gave its size.
    while (left > 0) {
      const z = Buffer.alloc(Math.min(left, 1 << 20));
      left -= z.length;
      await this.write(z);
    }
    await this.write(padding(size));
  }

  /** Ends the tar (two zero blocks) and waits until everything reached the destination. */
  async finish(): Promise<TarDigests> {
    await this.write(Buffer.alloc(2 * BLOCK));
    await this.flush();
    this.src.end();
    await this.done;
    const diffId = this.raw.digest();
    return {
      diffId,
      diffSize: this.raw.bytes,
      digest: this.out === this.raw ? diffId : this.out.digest(),
      size: this.out.bytes,
      compressed: this.opts.gzip,
    };
  }

  /** Stops early (an error while walking): the destination gets an incomplete stream. */
  abort(err: Error): void {
    this.src.destroy(err);
  }
}

/** A regular file's data for an entry: `size` bytes from offset 0 of `fd`. */
export interface FileData {
  fd: number;
  size: number;
}

/** Files up to this size are read into the output buffer; larger ones are copied by the kernel. */
const COPY_RANGE_MIN = 128 * 1024;
const FD_BUFFER = 1 << 20;

/**
 * Writes a tar synchronously to a file descriptor, with no digests (`strata export`): headers and
 * small files are gathered in one buffer and written in large pieces; a large file's data goes
 * from its descriptor to the output by copy_file_range(2), never through this process, when the
 * output is a regular file (read and written otherwise, e.g. to a pipe).
 */
export class FdTarWriter {
  private readonly buf = Buffer.allocUnsafe(FD_BUFFER);
  private len = 0;
  /** Bytes of the tar so far. */
  bytes = 0;
  private copyRange: boolean;

  constructor(private readonly fd: number, private readonly onBytes?: (n: number) => void) {
    const st = N.newStatBuf();
    N.fstat(fd, st);
    this.copyRange = (st[N.ST.mode]! & N.C.S_IFMT) === N.C.S_IFREG;
  }

  add(e: TarEntry, file?: FileData): void {
    const bound = headerBound(e);
    if (bound > FD_BUFFER) {
      this.put(headerBlocks(e));
    } else {
      if (this.len + bound > FD_BUFFER) this.flush();
      this.len += headerInto(e, this.buf, this.len);
    }
    const size = e.type === 'file' ? e.size : 0;
    if (size === 0) return;
    if (size > COPY_RANGE_MIN && this.copyRange) this.copyFile(file, size);
    else this.readFile(file, 0, size);
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad > 0) this.zeros(pad);
  }

  /** Ends the tar (two zero blocks) and writes out what is buffered. */
  finish(): number {
    this.zeros(2 * BLOCK);
    this.flush();
    return this.bytes;
  }

  private put(b: Buffer): void {
    if (this.len + b.length > FD_BUFFER) this.flush();
    if (b.length > FD_BUFFER) {
      this.writeOut(b, b.length);
      return;
    }
    b.copy(this.buf, this.len);
    this.len += b.length;
  }

  private zeros(n: number): void {
    while (n > 0) {
      if (this.len === FD_BUFFER) this.flush();
      const k = Math.min(n, FD_BUFFER - this.len);
      this.buf.fill(0, this.len, this.len + k);
      this.len += k;
      n -= k;
    }
  }

  /** Bytes [from, size) of the file through the buffer; a file that shrank meanwhile is padded with zeros. */
  private readFile(file: FileData | undefined, from: number, size: number): void {
    let pos = from;
    while (pos < size && file) {
      if (this.len === FD_BUFFER) this.flush();
      const n = N.pread(file.fd, this.buf, this.len, Math.min(size - pos, FD_BUFFER - this.len), pos);
      if (n === 0) break;
      this.len += n;
      pos += n;
    }
    if (pos < size) this.zeros(size - pos);
  }

  /** `size` bytes of the file from its descriptor to the output, by the kernel. */
  private copyFile(file: FileData | undefined, size: number): void {
    this.flush();
    let pos = 0;
    while (pos < size && file) {
      let n: number;
      try {
        n = N.copyFileRange(file.fd, pos, this.fd, null, size - pos, 0);
      } catch (e) {
        // Filesystems that cannot copy between these files, an O_APPEND output: read and write instead.
        if (!['EXDEV', 'EINVAL', 'EOPNOTSUPP', 'ENOSYS', 'EBADF'].some((c) => N.isErrnoError(e, c))) throw e;
        this.copyRange = false;
        this.readFile(file, pos, size);
        return;
      }
      if (n === 0) break;
      pos += n;
      this.bytes += n;
      this.onBytes?.(n);
    }
    if (pos < size) this.zeros(size - pos);
  }

  private flush(): void {
    if (this.len === 0) return;
    this.writeOut(this.buf, this.len);
    this.len = 0;
  }

  private writeOut(b: Buffer, n: number): void {
    let off = 0;
    while (off < n) {
      try {
        off += fs.writeSync(this.fd, b, off, n - off);
      } catch (e) {
        // A non-blocking pipe that is full: wait a moment for its reader.
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        Atomics.wait(SLEEP, 0, 0, 2);
      }
    }
    this.bytes += n;
    this.onBytes?.(n);
  }
}

const SLEEP = new Int32Array(new SharedArrayBuffer(4));
