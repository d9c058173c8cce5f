// Writing tar streams as Go's archive/tar (Docker, containerd) writes layer tars: ustar headers,
// with a PAX extended header before an entry when the ustar fields cannot hold it (nanosecond
// times, long or non-ASCII names, xattrs as SCHILY.xattr.*, large ids or sizes).
//
// The blocks are encoded here rather than by tar-stream's packer: PAX records must carry binary
// values (security.capability, file names that are not UTF-8), and tar-stream's packer only
// encodes text records and has no way to emit an extended header of our own. Reading tars
// (untrusted input) is left to tar-stream.
//
// The stream is digested while it is written: the sha256 of the uncompressed tar (the diff ID),
// and, when gzip is asked for, of the compressed bytes (the blob digest).

import { createHash, type Hash } from 'node:crypto';
import { PassThrough, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

export type EntryType = 'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo';

const TYPEFLAG: Record<EntryType | 'pax', string> = {
  file: '0', link: '1', symlink: '2', 'character-device': '3', 'block-device': '4', directory: '5', fifo: '6', pax: 'x',
};

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

/** One PAX record: "<len> <key>=<value>\n", where len counts the whole record in bytes. */
function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.isBuffer(value) ? value : Buffer.from(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function plainAscii(b: Buffer): boolean {
  for (const c of b) if (c < 0x20 || c > 0x7e) return false;
  return true;
}

/** ustar's name and prefix fields for a name, or null when they cannot hold it (then PAX "path"). */
function ustarName(name: Buffer, isDir: boolean): { name: string; prefix: string } | null {
  if (!plainAscii(name)) return null;
  const s = isDir ? `${name.toString('latin1')}/` : name.toString('latin1');
  if (s.length <= USTAR_NAME_MAX) return { name: s, prefix: '' };
  // Split at a "/" so that the prefix holds at most 155 bytes and the rest at most 100.
  for (let i = s.indexOf('/'); i >= 0 && i <= USTAR_PREFIX_MAX; i = s.indexOf('/', i + 1)) {
    if (s.length - i - 1 <= USTAR_NAME_MAX && i > 0 && i < s.length - 1) return { name: s.slice(i + 1), prefix: s.slice(0, i) };
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

/** The PAX records an entry needs (empty when ustar holds everything). */
export function paxRecords(e: TarEntry): Buffer[] {
  const out: Buffer[] = [];
  if (!ustarName(e.name, e.type === 'directory')) out.push(paxRecord('path', e.name));
  if (e.linkname && !fitsUstarLink(e.linkname)) out.push(paxRecord('linkpath', e.linkname));
  if (e.mtimeNsec !== 0 || e.mtimeSec < 0 || e.mtimeSec > USTAR_SIZE_MAX) {
    const sign = e.mtimeSec < 0 ? '-' : '';
    out.push(paxRecord('mtime', `${sign}${Math.abs(e.mtimeSec)}.${String(e.mtimeNsec).padStart(9, '0')}`));
  }
  if (e.uid > USTAR_ID_MAX) out.push(paxRecord('uid', String(e.uid)));
  if (e.gid > USTAR_ID_MAX) out.push(paxRecord('gid', String(e.gid)));
  if (e.size > USTAR_SIZE_MAX) out.push(paxRecord('size', String(e.size)));
  for (const [k, v] of e.xattrs ?? []) out.push(paxRecord(`SCHILY.xattr.${k}`, v));
  return out;
}

/** A number as `digits` octal digits and a NUL; 0 when it does not fit (PAX carries it then). */
function octal(buf: Buffer, offset: number, digits: number, n: number): void {
  const v = n >= 0 && n < 8 ** digits ? Math.floor(n) : 0;
  buf.write(v.toString(8).padStart(digits, '0') + '\0', offset, 'latin1');
}

interface UstarFields {
  name: string;
  prefix: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  linkname: string;
  devmajor: number;
  devminor: number;
}

/** One 512-byte ustar header block. */
function ustarHeader(f: UstarFields): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(f.name, 0, USTAR_NAME_MAX, 'latin1');
  octal(b, 100, 7, f.mode & 0o7777);
  octal(b, 108, 7, f.uid);
  octal(b, 116, 7, f.gid);
  octal(b, 124, 11, f.size);
  octal(b, 136, 11, f.mtime);
  b.write(f.typeflag, 156, 'latin1');
  b.write(f.linkname, 157, USTAR_NAME_MAX, 'latin1');
  b.write('ustar\x0000', 257, 'latin1');
  octal(b, 329, 7, f.devmajor);
  octal(b, 337, 7, f.devminor);
  b.write(f.prefix, 345, USTAR_PREFIX_MAX, 'latin1');
  // The checksum is computed with its own field as eight spaces.
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const c of b) sum += c;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return b;
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
    this.out = new Digesting();
    const stages = opts.gzip ? [this.raw, createGzip(), this.out] : [this.raw, this.out];
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
    const pax = paxRecords(e);
    const base = { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtimeSec, devmajor: e.devmajor ?? 0, devminor: e.devminor ?? 0 };
    if (pax.length > 0) {
      const body = Buffer.concat(pax);
      const name = `PaxHeaders/${placeholder(e.name.subarray(e.name.lastIndexOf(0x2f) + 1))}`.slice(0, USTAR_NAME_MAX);
      await this.write(ustarHeader({ ...base, name, prefix: '', size: body.length, typeflag: TYPEFLAG.pax, linkname: '' }));
      await this.write(Buffer.concat([body, padding(body.length)]));
    }
    const size = e.type === 'file' ? e.size : 0;
    const n = ustarName(e.name, e.type === 'directory') ?? { name: placeholder(e.name), prefix: '' };
    const linkname = e.linkname ? (fitsUstarLink(e.linkname) ? e.linkname.toString('latin1') : placeholder(e.linkname)) : '';
    await this.write(ustarHeader({ ...base, ...n, size, typeflag: TYPEFLAG[e.type], linkname }));
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
    return {
      diffId: this.raw.digest(),
      diffSize: this.raw.bytes,
      digest: this.out.digest(),
      size: this.out.bytes,
      compressed: this.opts.gzip,
    };
  }

  /** Stops early (an error while walking): the destination gets an incomplete stream. */
  abort(err: Error): void {
    this.src.destroy(err);
  }
}
