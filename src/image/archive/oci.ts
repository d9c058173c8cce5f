// OCI image layout (a directory) and OCI archive (the same in a tar): oci-layout, index.json and
// content-addressed blobs. Every blob read is checked against the digest and size that name it.

import { createReadStream } from 'node:fs';
import type { ImageRecord, Store } from '../store.js';
import { type Descriptor, digestHex, hostPlatform, type ImageConfig, ImageError, type Index, type Manifest, MEDIA, sha256Digest } from '../types.js';
import { parseJson } from './docker.js';
import type { SourceImage } from './model.js';
import type { ArchiveFiles } from './outer_tar.js';
import type { ArchiveSink } from './sink.js';

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';

export function isOciLayout(files: ArchiveFiles): boolean {
  return files.has('oci-layout') && files.has('index.json');
}

function blobPath(d: Descriptor): string {
  return `blobs/sha256/${digestHex(d.digest)}`;
}

/** A small blob (index, manifest, config), verified against its descriptor. */
function readBlob(files: ArchiveFiles, d: Descriptor, what: string): Buffer {
  const path = blobPath(d);
  if (!files.has(path)) throw new ImageError(`the ${what} names a missing blob: ${d.digest}`);
  const data = files.read(path);
  const got = sha256Digest(data);
  if (got !== d.digest) throw new ImageError(`digest mismatch: blob ${d.digest} hashes to ${got}`);
  if (typeof d.size === 'number' && d.size !== data.length) throw new ImageError(`size mismatch: blob ${d.digest} has ${data.length} bytes, not ${d.size}`);
  return data;
}

/** The reference an index entry names: a full "name:tag" as given, a bare ref.name as its tag. */
function tagOf(d: Descriptor): string[] {
  const full = d.annotations?.[CONTAINERD_NAME];
  if (full) return [full];
  const ref = d.annotations?.[REF_NAME];
  if (!ref) return [];
  return [ref.includes(':') || ref.includes('/') ? ref : `${ref}:latest`];
}

/** The images of an OCI layout: one per manifest reachable from index.json (nested indexes: this platform's). */
export function readOciLayout(files: ArchiveFiles): SourceImage[] {
  const index = parseJson<Index>(files.read('index.json'), 'index.json');
  if (!Array.isArray(index.manifests)) throw new ImageError('index.json has no manifests');
  const out: SourceImage[] = [];
  const visit = (d: Descriptor, tags: string[], depth: number): void => {
    if (d.mediaType === MEDIA.ociIndex || d.mediaType === MEDIA.dockerManifestList) {
      if (depth > 4) throw new ImageError('image indexes nested too deep');
      const nested = parseJson<Index>(readBlob(files, d, 'index'), d.digest);
      const host = hostPlatform();
      const pick = nested.manifests.filter((m) => !m.platform || (m.platform.os === host.os && m.platform.architecture === host.architecture));
      for (const m of pick.slice(0, 1)) visit(m, tags, depth + 1);
      return;
    }
    const manifestBytes = readBlob(files, d, 'index');
    const manifest = parseJson<Manifest>(manifestBytes, d.digest);
    if (!manifest.config || !Array.isArray(manifest.layers)) throw new ImageError(`manifest ${d.digest} lacks a config or layers`);
    const configBytes = readBlob(files, manifest.config, 'manifest');
    const config = parseJson<ImageConfig>(configBytes, manifest.config.digest);
    const diffIds = config.rootfs?.diff_ids;
    if (!Array.isArray(diffIds) || diffIds.length !== manifest.layers.length) {
      throw new ImageError(`config ${manifest.config.digest}: rootfs.diff_ids does not list one diff ID per layer`);
    }
    for (const l of manifest.layers) {
      if (!files.has(blobPath(l))) throw new ImageError(`the manifest names a missing blob: ${l.digest}`);
    }
    out.push({
      tags,
      configBytes,
      config,
      manifestBytes,
      layers: manifest.layers.map((l, i) => ({
        diffId: diffIds[i]!, digest: l.digest, size: l.size, mediaType: l.mediaType, open: () => files.open(blobPath(l)),
      })),
    });
  };
  for (const d of index.manifests) visit(d, tagOf(d), 0);
  // Several index entries for one manifest (one per tag) are one image with several tags.
  const byConfig = new Map<string, SourceImage>();
  for (const img of out) {
    const key = sha256Digest(img.configBytes);
    const seen = byConfig.get(key);
    if (seen) seen.tags.push(...img.tags.filter((t) => !seen.tags.includes(t)));
    else byConfig.set(key, img);
  }
  return [...byConfig.values()];
}

/** Docker's media types and OCI's for the same things (a schema 2 manifest's config and layers). */
const TO_OCI: Record<string, string> = {
  [MEDIA.dockerConfig]: MEDIA.ociConfig,
  [MEDIA.dockerLayer]: MEDIA.ociLayer,
  [MEDIA.dockerLayerGzip]: MEDIA.ociLayerGzip,
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
};

/**
 * The manifest as an OCI one. A Docker schema 2 manifest (an image pulled from a registry as Docker
 * pushed it) is rewritten with OCI media types, as skopeo and podman write OCI layouts: the same
 * config and layer blobs, a new manifest digest. An OCI manifest stays as it is (its digest kept).
 */
function asOciManifest(bytes: Buffer, digest: string): { bytes: Buffer; digest: string } {
  const m = parseJson<Manifest>(bytes, digest);
  if (m.mediaType !== MEDIA.dockerManifest && m.config?.mediaType !== MEDIA.dockerConfig) return { bytes, digest };
  const oci: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: { ...m.config, mediaType: MEDIA.ociConfig },
    layers: m.layers.map((l) => ({ ...l, mediaType: TO_OCI[l.mediaType] ?? l.mediaType })),
    ...(m.annotations ? { annotations: m.annotations } : {}),
  };
  const out = Buffer.from(JSON.stringify(oci));
  return { bytes: out, digest: sha256Digest(out) };
}

/**
 * Writes stored images as an OCI layout (to a tar or a directory): the blobs as stored (so every
 * digest is the one loaded; a Docker manifest becomes an OCI one, see asOciManifest), one index.json
 * entry per tag naming it in org.opencontainers.image.ref.name.
 */
export async function writeOciLayout(store: Store, images: readonly { image: ImageRecord; tags: string[] }[],
  sink: ArchiveSink): Promise<void> {
  await sink.addFile('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
  const written = new Set<string>();
  const index: Index = { schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [] };
  for (const { image, tags } of images) {
    const stored = store.readBlob(image.manifestDigest);
    const { bytes: manifestBytes, digest: manifestDigest } = asOciManifest(stored, image.manifestDigest);
    const manifest = parseJson<Manifest>(manifestBytes, manifestDigest);
    for (const d of [...manifest.layers, manifest.config]) {
      if (written.has(d.digest)) continue;
      written.add(d.digest);
      await sink.addStream(blobPath(d), d.size, createReadStream(store.blobPath(d.digest)));
    }
    if (!written.has(manifestDigest)) {
      written.add(manifestDigest);
      await sink.addFile(blobPath({ digest: manifestDigest, mediaType: '', size: 0 }), manifestBytes);
    }
    const desc: Descriptor = { mediaType: MEDIA.ociManifest, digest: manifestDigest, size: manifestBytes.length };
    if (tags.length === 0) index.manifests.push(desc);
    for (const t of tags) index.manifests.push({ ...desc, annotations: { [CONTAINERD_NAME]: t, [REF_NAME]: t } });
  }
  await sink.addFile('index.json', Buffer.from(JSON.stringify(index)));
  await sink.finish();
}
