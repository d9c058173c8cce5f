// `image load`: an archive or layout into the store, all or nothing. Everything that can be
// checked before a layer is written is (manifests, configs, every blob named, tags); layers are
// then verified while they stream, and a failure removes the layers this load added.

import { createReadStream, statSync } from 'node:fs';
import { rmSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { type ImageRecord, type LayerRecord, normalizeTag, type Store } from '../store.js';
import { chainId, ImageError, sha256Digest } from '../types.js';
import { isDockerArchive, readDockerArchive } from './docker.js';
import type { ArchiveFormat, SourceImage } from './model.js';
import { isOciLayout, readOciLayout } from './oci.js';
import { type ArchiveFiles, directoryFiles, extractArchive, indexArchive } from './outer_tar.js';

export interface LoadProgress {
  /** Bytes of the input read so far (for a bar over the input's size). */
  onBytes?: (n: number) => void;
  /** Called once per layer as it starts: index, count, diff ID, whether it was already stored. */
  onLayer?: (i: number, n: number, diffId: string, stored: boolean) => void;
  /** Whether onBytes counts the layers' bytes as they are read (false when it counted the input already). */
  layerBytes?: boolean;
}

export interface LoadResult {
  format: ArchiveFormat;
  images: ImageRecord[];
  /** Per image (same order): the tags this archive gave it. */
  loadedTags: string[][];
}

function readImages(files: ArchiveFiles, isDir: boolean): { format: ArchiveFormat; images: SourceImage[] } {
  if (isDockerArchive(files)) return { format: 'docker-archive', images: readDockerArchive(files) };
  if (isOciLayout(files)) return { format: isDir ? 'oci-dir' : 'oci-archive', images: readOciLayout(files) };
  throw new ImageError('not a docker-archive, OCI archive or OCI layout (no manifest.json, no oci-layout and index.json)');
}

/** Refuses an archive that gives one tag to two different images, or a malformed tag. */
function checkTags(images: readonly SourceImage[]): void {
  const owner = new Map<string, string>();
  for (const img of images) {
    const id = sha256Digest(img.configBytes);
    img.tags = img.tags.map(normalizeTag);
    for (const t of img.tags) {
      const prev = owner.get(t);
      if (prev && prev !== id) throw new ImageError(`conflicting tag ${t}: the archive gives it to ${prev.slice(7, 19)} and ${id.slice(7, 19)}`);
      owner.set(t, id);
    }
  }
}

/** Loads `path` (an archive file, "-" for standard input, or an OCI layout or unpacked docker-archive directory). */
export async function loadImages(store: Store, path: string, progress: LoadProgress = {}): Promise<LoadResult> {
  const st = path === '-' ? null : statSync(path, { throwIfNoEntry: false });
  if (st === undefined) throw new ImageError(`${path}: no such file or directory`);
  const isDir = st?.isDirectory() ?? false;
  const temp = store.tempPath('load');
  try {
    // An archive file is read in place; standard input is copied out first (it cannot seek).
    const inPlace = st?.isFile() ?? false;
    const files = isDir ? directoryFiles(path) : inPlace ? indexArchive(path) :
      await extractArchive(path === '-' ? process.stdin : createReadStream(path), temp, progress.onBytes);
    const { format, images } = readImages(files, isDir);
    if (images.length === 0) throw new ImageError(`${path}: the archive holds no image`);
    checkTags(images);
    return { format, images: await storeImages(store, images, inPlace ? progress : { ...progress, layerBytes: false }), loadedTags: images.map((i) => i.tags) };
  } finally {
    rmSync(temp, { recursive: true, force: true });
  }
}

/** Puts source images into the store; on failure, removes the layers it added. */
export async function storeImages(store: Store, images: readonly SourceImage[], progress: LoadProgress = {}): Promise<ImageRecord[]> {
  const added: string[] = [];
  try {
    const chains: LayerRecord[][] = [];
    for (const img of images) {
      const layers: LayerRecord[] = [];
      let parent: string | null = null;
      for (const [i, l] of img.layers.entries()) {
        const before = await store.layer(chainId(parent, l.diffId));
        progress.onLayer?.(i, img.layers.length, l.diffId, before !== undefined);
        if (before && l.trustStored && before.digest === l.digest && store.hasBlob(before.digest)) {
          layers.push(before);
          parent = before.chainId;
          continue;
        }
        await l.ready?.();
        const rec: LayerRecord = await store.addLayer(parent, l.open() as Readable, {
          expectDiffId: l.diffId, expectDigest: l.digest, expectSize: l.size, mediaType: l.mediaType,
          ...(l.verifiedFile !== undefined ? { verifiedBlobFile: l.verifiedFile } : {}),
          ...(progress.onBytes && progress.layerBytes !== false ? { onBytes: progress.onBytes } : {}),
        });
        if (!before) added.push(rec.chainId);
        layers.push(rec);
        parent = rec.chainId;
      }
      chains.push(layers);
    }
    // Records only once every layer of every image is in place.
    const out: ImageRecord[] = [];
    for (const [n, img] of images.entries()) {
      const layers = chains[n]!;
      // The archive's manifest is kept only if it names the blobs we hold (a layer stored
      // earlier with another compression keeps its blob; the manifest is then rebuilt).
      const keep = img.manifestBytes !== undefined && img.layers.every((l, i) => l.digest === layers[i]!.digest);
      out.push(await store.writeImage({
        config: img.config, configBytes: img.configBytes, layers, tags: img.tags,
        ...(keep ? { manifestBytes: img.manifestBytes } : {}),
      }));
    }
    return out;
  } catch (e) {
    await store.discardLayers(added);
    throw e;
  }
}
