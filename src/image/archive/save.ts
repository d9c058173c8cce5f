// `image save`: stored images into a docker-archive (default), an OCI archive or an OCI layout
// directory. A file is written under a temporary name and renamed when complete, so a save that
// fails or is interrupted leaves no half-written archive under the name asked for.

import { createWriteStream, renameSync, rmSync } from 'node:fs';
import { type ImageRecord, normalizeTag, type Store } from '../store.js';
import { ImageError } from '../types.js';
import { writeDockerArchive } from './docker.js';
import type { ArchiveFormat } from './model.js';
import { writeOciLayout } from './oci.js';
import { type ArchiveSink, dirSink, fsyncPath, tarSink } from './sink.js';

/** The images named by `refs`, each with the tags to write (the tag it was named by, if any). */
export async function imagesToSave(store: Store, refs: readonly string[]): Promise<{ image: ImageRecord; tags: string[] }[]> {
  const out: { image: ImageRecord; tags: string[] }[] = [];
  for (const ref of refs) {
    const image = await store.resolveImage(ref);
    let tag: string | undefined;
    try {
      const t = normalizeTag(ref);
      tag = image.tags.find((x) => x === t || x === `localhost/${t}` || x === `docker.io/library/${t}`);
    } catch {
      tag = undefined;
    }
    const seen = out.find((o) => o.image.id === image.id);
    if (seen) {
      if (tag && !seen.tags.includes(tag)) seen.tags.push(tag);
    } else {
      out.push({ image, tags: tag ? [tag] : [] });
    }
  }
  return out;
}

/** Writes the images named by `refs` to `output` ("-": standard output); `onBytes` counts what is written (progress bars). */
export async function saveImages(store: Store, refs: readonly string[], format: ArchiveFormat, output: string,
  onBytes?: (n: number) => void): Promise<void> {
  const images = await imagesToSave(store, refs);
  if (images.length === 0) throw new ImageError('no image to save', 2);
  if (format === 'oci-dir') {
    await writeOciLayout(store, images, dirSink(output));
    return;
  }
  const write = (sink: ArchiveSink): Promise<void> =>
    format === 'docker-archive' ? writeDockerArchive(store, images, sink) : writeOciLayout(store, images, sink);
  if (output === '-') {
    await write(tarSink(process.stdout, onBytes));
    return;
  }
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    const out = createWriteStream(tmp, { flags: 'wx', mode: 0o644 });
    await write(tarSink(out, onBytes));
    fsyncPath(tmp);
    renameSync(tmp, output);
  } finally {
    rmSync(tmp, { force: true });
  }
}
