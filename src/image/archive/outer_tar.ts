// The outer tar of an image archive (docker save, OCI archive), taken apart into a flat directory:
// each regular file is stored under a name with no slash (its archive path, encoded), so no entry
// name can place a file anywhere else, and symlinks (docker save links repeated layers) become
// aliases of the file they name inside the archive. Blobs named by digest (blobs/sha256/<hex>)
// are verified while they are written.

import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fstatSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { posix, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { ImageError } from '../types.js';

/** Files of an archive by their path inside it. */
export interface ArchiveFiles {
  has(path: string): boolean;
  read(path: string): Buffer;
  open(path: string): Readable;
  size(path: string): number;
  names(): string[];
}

function clean(name: string): string {
  return posix.normalize(name.replace(/^\.?\/+/, '')).replace(/\/+$/, '');
}

const BLOB_RE = /^blobs\/sha256\/([0-9a-f]{64})$/;

/**
 * Extracts the tar `input` into `dir` (created); returns its files. The copies are temporary (the
 * caller removes `dir`), so they are not synced.
 */
export async function extractArchive(input: Readable, dir: string, onBytes?: (n: number) => void): Promise<ArchiveFiles> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files = new Map<string, string>();
  const links = new Map<string, string>();
  let seq = 0;
  const extract = tar.extract();
  extract.on('entry', (h, stream, next) => {
    const name = clean(h.name);
    if (h.type === 'symlink' || h.type === 'link') {
      const target = h.type === 'link' ? clean(h.linkname ?? '') : clean(posix.join(posix.dirname(name), h.linkname ?? ''));
      links.set(name, target);
      stream.resume();
      next();
      return;
    }
    if (h.type !== 'file' && h.type !== 'contiguous-file') {
      stream.resume();
      next();
      return;
    }
    const local = join(dir, `f${seq++}`);
    const fd = openSync(local, 'wx', 0o600);
    const m = BLOB_RE.exec(name);
    const hash = m ? createHash('sha256') : null;
    stream.on('data', (chunk: unknown) => {
      const b = chunk as Buffer;
      hash?.update(b);
      onBytes?.(b.length);
      for (let off = 0; off < b.length;) off += writeSync(fd, b, off, b.length - off);
    });
    stream.on('error', (e: Error) => {
      closeSync(fd);
      next(e);
    });
    stream.on('end', () => {
      closeSync(fd);
      const got = hash?.digest('hex');
      if (m && m[1] !== got) {
        next(new ImageError(`digest mismatch: ${name} holds sha256:${got}`));
        return;
      }
      files.set(name, local);
      next();
    });
  });
  try {
    await pipeline(input, extract);
  } catch (e) {
    const msg = (e as Error).message;
    if (msg === 'Unexpected end of data') throw new ImageError('truncated archive: it ends in the middle of an entry');
    if (msg.startsWith('Invalid tar header')) throw new ImageError('not an image archive (not a tar)');
    throw e;
  }
  const resolve = (path: string): string | undefined => {
    let p = clean(path);
    for (let i = 0; i < 16 && !files.has(p) && links.has(p); i++) p = links.get(p)!;
    return files.get(p);
  };
  const must = (path: string): string => {
    const f = resolve(path);
    if (!f) throw new ImageError(`the archive has no file ${JSON.stringify(path)}`);
    return f;
  };
  return {
    has: (p) => resolve(p) !== undefined,
    read: (p) => readAll(must(p)),
    open: (p) => createReadStream(must(p)),
    size: (p) => statSync(must(p)).size,
    names: () => [...files.keys(), ...links.keys()],
  };
}

interface TarHeaders {
  decode(buf: Buffer, filenameEncoding: string, allowUnknownFormat: boolean): { name: string; size: number; type: string; linkname: string | null } | null;
  decodePax(buf: Buffer): Record<string, string>;
  decodeLongPath(buf: Buffer, encoding: string): string;
}

/**
 * The files of the archive file `path`, read in place: one pass over its headers (tar-stream's
 * header decoder, checksums checked) records where each file's bytes are, and nothing is copied.
 * `read` verifies a blob named by its digest (blobs/sha256/<hex>); `open` streams the bytes as they
 * are, for callers that verify them (a layer's digest and diff ID are checked while it is unpacked).
 */
export function indexArchive(path: string): ArchiveFiles {
  const require = createRequire(import.meta.url);
  const headers = require(require.resolve('tar-stream').replace(/index\.js$/, 'headers.js')) as TarHeaders;
  const fd = openSync(path, 'r');
  const files = new Map<string, { offset: number; size: number }>();
  const links = new Map<string, string>();
  try {
    const total = fstatSync(fd).size;
    const block = Buffer.alloc(512);
    const readAt = (buf: Buffer, pos: number): void => {
      let got = 0;
      while (got < buf.length) {
        const n = readSync(fd, buf, got, buf.length - got, pos + got);
        if (n === 0) throw new ImageError('truncated archive: it ends in the middle of an entry');
        got += n;
      }
    };
    let pos = 0;
    let longName: string | null = null;
    let longLink: string | null = null;
    let pax: Record<string, string> | null = null;
    let paxGlobal: Record<string, string> = {};
    while (pos + 512 <= total) {
      readAt(block, pos);
      let h;
      try {
        h = headers.decode(block, 'utf-8', false);
      } catch {
        throw new ImageError('not an image archive (not a tar)');
      }
      pos += 512;
      if (h === null) continue; // a zero block: the end-of-archive marker (or padding)
      let size = h.size;
      if (pos + size > total) throw new ImageError('truncated archive: it ends in the middle of an entry');
      if (h.type === 'gnu-long-path' || h.type === 'gnu-long-link-path' || h.type === 'pax-header' || h.type === 'pax-global-header') {
        if (size > 1 << 20) throw new ImageError('not an image archive (a tar header record over 1 MiB)');
        const data = Buffer.alloc(size);
        readAt(data, pos);
        if (h.type === 'gnu-long-path') longName = headers.decodeLongPath(data, 'utf-8');
        else if (h.type === 'gnu-long-link-path') longLink = headers.decodeLongPath(data, 'utf-8');
        else if (h.type === 'pax-header') pax = headers.decodePax(data);
        else paxGlobal = { ...paxGlobal, ...headers.decodePax(data) };
        pos += Math.ceil(size / 512) * 512;
        continue;
      }
      const p = { ...paxGlobal, ...(pax ?? {}) };
      const rawName = p.path ?? longName ?? h.name;
      const rawLink = p.linkpath ?? longLink ?? h.linkname ?? '';
      if (p.size !== undefined) {
        size = parseInt(p.size, 10);
        if (!(size >= 0) || pos + size > total) throw new ImageError('truncated archive: it ends in the middle of an entry');
      }
      longName = longLink = pax = null;
      const name = clean(rawName);
      if (h.type === 'symlink' || h.type === 'link') {
        links.set(name, h.type === 'link' ? clean(rawLink) : clean(posix.join(posix.dirname(name), rawLink)));
      } else if (h.type === 'file' || h.type === 'contiguous-file') {
        files.set(name, { offset: pos, size });
        links.delete(name);
      }
      pos += Math.ceil(size / 512) * 512;
    }
    if (pos < total && pos + 512 > total) throw new ImageError('truncated archive: it ends in the middle of an entry');
  } finally {
    closeSync(fd);
  }
  const resolve = (p0: string): { offset: number; size: number } | undefined => {
    let p = clean(p0);
    for (let i = 0; i < 16 && !files.has(p) && links.has(p); i++) p = links.get(p)!;
    return files.get(p);
  };
  const must = (p: string): { offset: number; size: number } => {
    const f = resolve(p);
    if (!f) throw new ImageError(`the archive has no file ${JSON.stringify(p)}`);
    return f;
  };
  return {
    has: (p) => resolve(p) !== undefined,
    read: (p) => {
      const f = must(p);
      if (f.size > 64 << 20) throw new ImageError(`${p}: too large for a JSON document`);
      const data = Buffer.alloc(f.size);
      const rfd = openSync(path, 'r');
      try {
        for (let got = 0; got < f.size;) {
          const n = readSync(rfd, data, got, f.size - got, f.offset + got);
          if (n === 0) throw new ImageError(`${path}: the archive changed while it was read`);
          got += n;
        }
      } finally {
        closeSync(rfd);
      }
      const m = BLOB_RE.exec(clean(p));
      const got = createHash('sha256').update(data).digest('hex');
      if (m && m[1] !== got) throw new ImageError(`digest mismatch: ${clean(p)} holds sha256:${got}`);
      return data;
    },
    open: (p) => {
      const f = must(p);
      // An empty range: createReadStream's `end` is inclusive.
      return f.size === 0 ? Readable.from([]) :
        createReadStream(path, { start: f.offset, end: f.offset + f.size - 1, highWaterMark: 1 << 20 });
    },
    size: (p) => must(p).size,
    names: () => [...files.keys(), ...links.keys()],
  };
}

/** The same interface over an OCI layout directory, paths checked to stay inside it. */
export function directoryFiles(root: string): ArchiveFiles {
  const local = (p: string): string => {
    const c = clean(p);
    if (c.startsWith('..') || posix.isAbsolute(c)) throw new ImageError(`path outside the layout: ${JSON.stringify(p)}`);
    return join(root, c);
  };
  const isFile = (p: string): boolean => statSync(local(p), { throwIfNoEntry: false })?.isFile() ?? false;
  const must = (p: string): string => {
    if (!isFile(p)) throw new ImageError(`the layout has no file ${JSON.stringify(p)}`);
    return local(p);
  };
  return {
    has: isFile,
    read: (p) => readAll(must(p)),
    open: (p) => createReadStream(must(p)),
    size: (p) => statSync(must(p)).size,
    names: () => [],
  };
}

/** A JSON document of the archive (manifests, configs, indexes are small). */
function readAll(path: string): Buffer {
  if (statSync(path).size > 64 << 20) throw new ImageError(`${path}: too large for a JSON document`);
  return readFileSync(path);
}
