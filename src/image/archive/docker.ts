// docker-archive: what `docker save` and `podman save` write. manifest.json lists, per image, the
// config file (named by its digest: the image ID), the tags and the layer tars bottom first; the
// config's rootfs.diff_ids are the layers' sha256s, checked while each layer is unpacked.

import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import type { ImageRecord, Store } from '../store.js';
import { digestHex, type ImageConfig, ImageError, isGzipMediaType, sha256Digest } from '../types.js';
import { isZstdMediaType, ZstdDecompress } from '../zstd.js';
import type { SourceImage } from './model.js';
import type { ArchiveFiles } from './outer_tar.js';
import type { ArchiveSink } from './sink.js';

interface DockerManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** Whether the files look like a docker-archive. */
export function isDockerArchive(files: ArchiveFiles): boolean {
  return files.has('manifest.json');
}

export function parseJson<T>(data: Buffer, what: string): T {
  try {
    return JSON.parse(data.toString('utf8')) as T;
  } catch {
    throw new ImageError(`${what} is not valid JSON`);
  }
}

/** The images of a docker-archive; every file it names must be there. */
export function readDockerArchive(files: ArchiveFiles): SourceImage[] {
  const entries = parseJson<DockerManifestEntry[]>(files.read('manifest.json'), 'manifest.json');
  if (!Array.isArray(entries)) throw new ImageError('manifest.json is not a list of images');
  return entries.map((e) => {
    if (typeof e.Config !== 'string' || !Array.isArray(e.Layers)) throw new ImageError('manifest.json: an entry lacks Config or Layers');
    for (const p of [e.Config, ...e.Layers]) {
      if (!files.has(p)) throw new ImageError(`manifest.json names a missing file: ${p}`);
    }
    const configBytes = files.read(e.Config);
    const id = sha256Digest(configBytes);
    // The config is named by its digest (<hex>.json, or blobs/sha256/<hex> in newer saves).
    const named = /([0-9a-f]{64})(\.json)?$/.exec(e.Config)?.[1];
    if (named && `sha256:${named}` !== id) throw new ImageError(`digest mismatch: config ${e.Config} hashes to ${id}`);
    const config = parseJson<ImageConfig>(configBytes, e.Config);
    const diffIds = config.rootfs?.diff_ids;
    if (!Array.isArray(diffIds) || diffIds.length !== e.Layers.length) {
      throw new ImageError(`config ${e.Config}: rootfs.diff_ids does not list one diff ID per layer`);
    }
    diffIds.forEach((d) => digestHex(d));
    return {
      tags: e.RepoTags ?? [],
      configBytes,
      config,
      // A layer named by its digest (blobs/sha256/<hex>, newer saves) must hash to it; the store
      // checks that while it unpacks the layer.
      layers: e.Layers.map((path, i) => {
        const named = /^(?:\.?\/)*blobs\/sha256\/([0-9a-f]{64})$/.exec(path)?.[1];
        return { diffId: diffIds[i]!, ...(named ? { digest: `sha256:${named}` } : {}), open: () => files.open(path) };
      }),
    };
  });
}

/**
 * Writes stored images as a docker-archive: <config-hex>.json, <diff-hex>.tar (uncompressed, as
 * docker save does; a layer shared by several images is written once) and manifest.json.
 */
export async function writeDockerArchive(store: Store, images: readonly { image: ImageRecord; tags: string[] }[],
  sink: ArchiveSink): Promise<void> {
  const manifest: DockerManifestEntry[] = [];
  const written = new Set<string>();
  for (const { image, tags } of images) {
    const configName = `${digestHex(image.id)}.json`;
    if (!written.has(configName)) {
      await sink.addFile(configName, store.readBlob(image.id));
      written.add(configName);
    }
    const layers: string[] = [];
    for (const chain of image.layers) {
      const l = await store.layer(chain);
      if (!l) throw new ImageError(`layer ${chain} of ${image.id} is missing from the store`);
      const name = `${digestHex(l.diffId)}.tar`;
      layers.push(name);
      if (written.has(name)) continue;
      written.add(name);
      const blob = createReadStream(store.blobPath(l.digest));
      // (a docker archive holds its layers as plain tars)
      const tar = isGzipMediaType(l.mediaType) ? blob.pipe(createGunzip({ chunkSize: 256 << 10 }))
        : isZstdMediaType(l.mediaType) ? blob.pipe(new ZstdDecompress()) : blob;
      await sink.addStream(name, l.diffSize, tar);
    }
    manifest.push({ Config: configName, RepoTags: tags, Layers: layers });
  }
  await sink.addFile('manifest.json', Buffer.from(JSON.stringify(manifest)));
  await sink.finish();
}
