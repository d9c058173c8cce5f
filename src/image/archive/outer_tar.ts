// The outer tar of an image archive (docker save, OCI archive), taken apart into a flat directory:
// each regular file is stored under a name with no slash (its archive path, encoded), so no entry
// name can place a file anywhere else, and symlinks (docker save links repeated layers) become
// aliases of the file they name inside the archive. Blobs named by digest (blobs/sha256/<hex>)
// are verified while they are written.

import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fsyncSync, mkdirSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { posix, join } from 'node:path';
import type { Readable } from 'node:stream';
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

/** Extracts the tar `input` into `dir` (created); returns its files. */
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
    const hash = createHash('sha256');
    stream.on('data', (chunk: unknown) => {
      const b = chunk as Buffer;
      hash.update(b);
      onBytes?.(b.length);
      for (let off = 0; off < b.length;) off += writeSync(fd, b, off, b.length - off);
    });
    stream.on('error', (e: Error) => {
      closeSync(fd);
      next(e);
    });
    stream.on('end', () => {
      fsyncSync(fd);
      closeSync(fd);
      const m = BLOB_RE.exec(name);
      const got = hash.digest('hex');
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
