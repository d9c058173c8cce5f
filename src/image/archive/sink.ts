// Where a writer puts an archive's files: a tar stream (docker-archive, oci-archive) or a
// directory (oci-dir). Files are written whole before the next starts; blobs stream.

import { closeSync, createWriteStream, fsyncSync, mkdirSync, openSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';

export interface ArchiveSink {
  addFile(name: string, data: Buffer): Promise<void>;
  /** A file of exactly `size` bytes read from `data`. */
  addStream(name: string, size: number, data: Readable): Promise<void>;
  /** Everything written: ends the tar (and waits for it to be flushed) or syncs the directory. */
  finish(): Promise<void>;
}

const EPOCH = new Date(0);

/** fsync(2) of a file by its path (its data reaches the disk before it is renamed into place). */
export function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A tar written to `out`: entries owned by root, mode 0644, time 0, so saves are reproducible. */
export function tarSink(out: Writable, onBytes?: (n: number) => void): ArchiveSink {
  const pack = tar.pack();
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onBytes?.(chunk.length);
      cb(null, chunk);
    },
  });
  const done = pipeline(pack, count, out);
  const dirs = new Set<string>();
  const ensureDirs = (name: string): void => {
    const parts = name.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (dirs.has(d)) continue;
      dirs.add(d);
      pack.entry({ name: `${d}/`, type: 'directory', mode: 0o755, mtime: EPOCH, uid: 0, gid: 0 });
    }
  };
  return {
    addFile: async (name, data) => {
      ensureDirs(name);
      await new Promise<void>((resolve, reject) => {
        pack.entry({ name, size: data.length, mode: 0o644, mtime: EPOCH, uid: 0, gid: 0 }, data, (e) => (e ? reject(e) : resolve()));
      });
    },
    addStream: async (name, size, data) => {
      ensureDirs(name);
      const entry = pack.entry({ name, size, mode: 0o644, mtime: EPOCH, uid: 0, gid: 0 });
      await pipeline(data, entry as unknown as Writable);
    },
    finish: async () => {
      pack.finalize();
      await done;
    },
  };
}

/** Files under `root` (created), each written to a temp name, synced and renamed. */
export function dirSink(root: string): ArchiveSink {
  const place = (name: string): { tmp: string; final: string } => {
    const final = join(root, name);
    mkdirSync(dirname(final), { recursive: true });
    return { tmp: `${final}.tmp-${process.pid}`, final };
  };
  return {
    addFile: async (name, data) => {
      const { tmp, final } = place(name);
      writeFileSync(tmp, data);
      renameSync(tmp, final);
    },
    addStream: async (name, _size, data) => {
      const { tmp, final } = place(name);
      await pipeline(data, createWriteStream(tmp));
      fsyncPath(tmp);
      renameSync(tmp, final);
    },
    finish: async () => {},
  };
}
