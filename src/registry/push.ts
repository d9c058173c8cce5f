// `strata push`: an image of the store to a registry, as it is stored: the same layer blobs,
// config and manifest bytes, so the registry's digest is the store's manifest digest (a pull gives
// back the same image ID and manifest). Blobs the repository has already are not sent again, nor
// those another repository of the registry holds as far as the store knows (mounted from there); the
// manifest goes last, so the tag never names an image whose blobs are missing.

import { createReadStream, statSync } from 'node:fs';
import type { ImageRecord, Store } from '../image/store.js';
import { type Descriptor, ImageError, type Manifest, MEDIA } from '../image/types.js';
import { type ClientOptions, RegistryClient } from './client.js';
import { formatReference, parseReference, type Reference, repoName } from './reference.js';

export interface PushProgress {
  onStatus?: (line: string) => void;
  onBytes?: (n: number) => void;
  onPlan?: (bytes: number) => void;
}

export interface PushResult {
  reference: string;
  digest: string;
  size: number;
  /** Blobs sent, those the repository had, and those linked from another repository of the registry. */
  uploaded: number;
  skipped: number;
  mounted: number;
}

/**
 * Pushes the image `source` (a store reference or ID) to `destination` (default: `source` itself).
 * The store is open (`open`) only to read what is to be sent, and to record the push: its layers are
 * leased meanwhile (a prune keeps them and their blobs), its config and manifest are held in memory,
 * and the uploads run with the store closed, so other strata commands run meanwhile.
 */
export async function pushImage(open: <T>(fn: (s: Store) => Promise<T>) => Promise<T>, source: string, destination: string | undefined,
  opts: ClientOptions = {}, progress: PushProgress = {}): Promise<PushResult> {
  const dest = parseReference(destination ?? source);
  if (dest.digest !== undefined) throw new ImageError(`push to a tag, not a digest: ${destination ?? source}`, 2);
  const status = progress.onStatus ?? ((): void => {});
  const { image, manifestBytes, configBytes, holders, paths } = await open(async (store) => {
    const img = await store.resolveImage(source);
    const mBytes = store.readBlob(img.manifestDigest);
    const m = JSON.parse(mBytes.toString('utf8')) as Manifest;
    for (const b of [...m.layers, m.config]) {
      if (!store.hasBlob(b.digest)) throw new ImageError(`the store lacks blob ${b.digest} of ${source} (run image prune? load the image again)`);
    }
    // Repositories of the same registry that hold a blob: those images of the store were pulled from or
    // pushed to (their RepoDigests). Such blobs are mounted from there, not sent.
    const held = new Map<string, string>();
    for (const other of await store.listImages()) {
      for (const rd of other.repoDigests ?? []) {
        const repo = rd.slice(0, rd.lastIndexOf('@'));
        if (!repo.startsWith(`${dest.registry}/`) || repo === repoName(dest) || !store.hasBlob(other.manifestDigest)) continue;
        const om = JSON.parse(store.readBlob(other.manifestDigest).toString('utf8')) as Manifest;
        for (const b of [...om.layers, om.config]) if (!held.has(b.digest)) held.set(b.digest, repo.slice(dest.registry.length + 1));
      }
    }
    await store.setLease(process.pid, img.layers, 'push');
    return {
      image: img, manifestBytes: mBytes, configBytes: store.readBlob(m.config.digest), holders: held,
      paths: new Map(m.layers.map((b) => [b.digest, store.blobPath(b.digest)])),
    };
  });
  try {
    return await upload(open, image, dest, manifestBytes, configBytes, holders, paths, opts, progress, status);
  } finally {
    await open((store) => store.dropLease(process.pid, 'push')).catch(() => {});
  }
}

async function upload(open: <T>(fn: (s: Store) => Promise<T>) => Promise<T>, image: ImageRecord, dest: Reference, manifestBytes: Buffer,
  configBytes: Buffer, holders: Map<string, string>, paths: Map<string, string>, opts: ClientOptions, progress: PushProgress,
  status: (line: string) => void): Promise<PushResult> {
  const manifest = JSON.parse(manifestBytes.toString('utf8')) as Manifest;
  const mediaType = manifest.mediaType ?? (manifest.config.mediaType === MEDIA.dockerConfig ? MEDIA.dockerManifest : MEDIA.ociManifest);
  const blobs: Descriptor[] = [...manifest.layers, manifest.config];
  const client = new RegistryClient(dest, 'pull,push', opts);
  status(`Pushing ${formatReference(dest)}...`);
  progress.onPlan?.(blobs.reduce((n, b) => n + b.size, 0));
  let uploaded = 0;
  let skipped = 0;
  let mounted = 0;
  const seen = new Set<string>();
  for (const b of blobs) {
    if (seen.has(b.digest)) continue;
    seen.add(b.digest);
    const short = b.digest.slice(7, 19);
    if (await client.hasBlob(b.digest)) {
      status(`Blob ${short} already in the registry`);
      progress.onBytes?.(b.size);
      skipped++;
      continue;
    }
    const from = holders.get(b.digest);
    if (from !== undefined && (await client.mountBlob(b.digest, from))) {
      status(`Blob ${short} mounted from ${from}`);
      progress.onBytes?.(b.size);
      mounted++;
      continue;
    }
    const path = paths.get(b.digest);
    const size = path === undefined ? configBytes.length : statSync(path).size;
    if (size !== b.size) throw new ImageError(`blob ${b.digest} in the store is ${size} bytes, the manifest says ${b.size}`);
    status(`Copying blob ${short} (${size} bytes)`);
    if (path === undefined) {
      // (the config, read while the store was open)
      await client.putBlob(b.digest, configBytes);
      progress.onBytes?.(size);
    } else {
      await client.putBlob(b.digest, {
        length: size,
        open: () => {
          const s = createReadStream(path, { highWaterMark: 1 << 20 });
          if (progress.onBytes) s.on('data', (c) => progress.onBytes!((c as Buffer).length));
          return s;
        },
      });
    }
    uploaded++;
  }
  status('Writing manifest');
  const given = await client.putManifest(dest.tag!, manifestBytes, mediaType);
  if (given !== undefined && given !== image.manifestDigest) {
    throw new ImageError(`the registry stored the manifest as ${given}, not ${image.manifestDigest}`);
  }
  // (the image may have gone from the store meanwhile: the push stands)
  await open((store) => store.addRepoDigest(image.id, `${repoName(dest)}@${image.manifestDigest}`)).catch(() => {});
  return { reference: formatReference(dest), digest: image.manifestDigest, size: manifestBytes.length, uploaded, skipped, mounted };
}
