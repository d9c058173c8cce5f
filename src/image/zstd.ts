// zstd-compressed layers (OCI's `tar+zstd`: `skopeo copy --dest-compress-format zstd`, podman's
// `--compression-format zstd` and zstd:chunked). Node 20's zlib has no zstd, so the zstd program
// decompresses them, as a stream between the blob and the tar reader.

import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { Duplex } from 'node:stream';
import type { Readable, Writable } from 'node:stream';
import { ImageError } from './types.js';

/** A zstd frame's magic number (RFC 8878), little-endian at the start of the blob. */
export function isZstd(first: Buffer): boolean {
  return first.length >= 4 && first.readUInt32LE(0) === 0xfd2fb528;
}

export function isZstdMediaType(mediaType: string): boolean {
  return mediaType.endsWith('+zstd');
}

/**
 * A stream that decompresses zstd (`zstd -d -c`): what is written is the compressed blob, what is read
 * the tar. Its end comes only once the program has exited 0; a failure is an ImageError with the
 * program's own words (a missing program: how to install it).
 */
export class ZstdDecompress extends Duplex {
  private readonly child: ChildProcessByStdio<Writable, Readable, Readable>;
  private stderr = '';

  constructor() {
    super();
    this.child = spawn('zstd', ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const { child } = this;
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      if (this.stderr.length < 4096) this.stderr += s;
    });
    child.stdout.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) child.stdout.pause();
    });
    // (an early exit breaks the pipe: the exit status says why, below)
    child.stdin.on('error', () => undefined);
    child.on('error', (e: NodeJS.ErrnoException) => {
      this.destroy(e.code === 'ENOENT' ? new ImageError('a zstd-compressed layer: reading it needs the zstd program (apt-get install zstd)') : e);
    });
    child.on('close', (code, signal) => {
      if (this.destroyed) return;
      if (code === 0) this.push(null);
      else {
        const said = this.stderr.trim().split('\n').pop()?.replace(/^\/\*stdin\*\\\s*:\s*/, '');
        this.destroy(new ImageError(`zstd-compressed layer: ${said || `zstd ended with ${code ?? signal}`}`));
      }
    });
  }

  override _read(): void {
    this.child.stdout.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.child.stdin.destroyed) {
      cb();
      return;
    }
    this.child.stdin.write(chunk, () => cb());
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.child.stdin.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    cb(err);
  }
}
