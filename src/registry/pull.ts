// `strata pull`: an image from a registry into the store, all or nothing.
//
// The manifest is asked for in the four media types Docker and podman push (OCI and Docker, image
// and index); from an index the entry of the wanted platform is taken (the host's by default).
// Every document and blob is checked against its digest: the manifest against the reference's
// digest (or the registry's Docker-Content-Digest), the config and each layer against the
// manifest, each layer's tar against the config's diff ID. Layers whose chain the store holds with
// the same blob are not downloaded. The rest are downloaded into tmp/ (three at a time), each
// checked against its digest before anything of it is unpacked; each then goes through the store's
// layer ingest (diff ID checked, unpacked in tmp/, renamed into place) while later ones download. A failure removes the layers
// this pull added, and the image is recorded only once every layer is in place.

import { createHash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { storeImages } from '../image/archive/load.js';
import type { SourceImage, SourceLayer } from '../image/archive/model.js';
import { downloadDir, type ImageRecord, type Store } from '../image/store.js';
import {
  chainId, type Descriptor, hostPlatform, type ImageConfig, ImageError, type Index, type Manifest, MEDIA, type Platform, sha256Digest,
} from '../image/types.js';
import { type ClientOptions, RegistryClient } from './client.js';
import { formatReference, parseReference, repoName, type Reference } from './reference.js';

export interface PullProgress {
  /** One line of what is happening (podman's style: on stderr). */
  onStatus?: (line: string) => void;
  /** Bytes of layer blobs received. */
  onBytes?: (n: number) => void;
  /** The layers to download and their total size, once known. */
  onPlan?: (layers: number, bytes: number) => void;
}

export interface PullOptions extends ClientOptions {
  platform?: Platform;
}

export interface PullResult {
  image: ImageRecord;
  reference: string;
  /** Digest of what the reference named (an index or a manifest). */
  digest: string;
  /** Layers downloaded, and those the store already held. */
  downloaded: number;
  reused: number;
}

const MANIFEST_TYPES = [MEDIA.ociManifest, MEDIA.dockerManifest];
const INDEX_TYPES = [MEDIA.ociIndex, MEDIA.dockerManifestList];
const CONFIG_TYPES = new Set<string>([MEDIA.ociConfig, MEDIA.dockerConfig]);
const LAYER_TYPES = new Set<string>([
  MEDIA.ociLayer, MEDIA.ociLayerGzip, MEDIA.ociLayerZstd, MEDIA.dockerLayer, MEDIA.dockerLayerGzip,
  'application/vnd.oci.image.layer.nondistributable.v1.tar', 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
]);
const MAX_CONFIG = 8 << 20;

/** Parses "os/arch[/variant]" (--platform). */
export function parsePlatform(value: string): Platform {
  const parts = value.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9._-]+$/.test(p))) {
    throw new ImageError(`--platform takes OS/ARCH[/VARIANT] (e.g. linux/amd64, linux/arm/v7), not "${value}"`, 2);
  }
  return { os: parts[0]!, architecture: parts[1]!, ...(parts[2] ? { variant: parts[2] } : {}) };
}

function platformName(p: { os?: string; architecture?: string; variant?: string } | undefined): string {
  return p ? [p.os ?? '?', p.architecture ?? '?', p.variant].filter(Boolean).join('/') : 'no platform';
}

function parseJson<T>(bytes: Buffer, what: string): T {
  try {
    return JSON.parse(bytes.toString('utf8')) as T;
  } catch {
    throw new ImageError(`the registry's ${what} is not valid JSON`);
  }
}

/** A document's media type: the response's Content-Type when it names one we know, else its own field. */
function documentType(bytes: Buffer, contentType: string): string {
  if (MANIFEST_TYPES.includes(contentType as typeof MANIFEST_TYPES[number]) || INDEX_TYPES.includes(contentType as typeof INDEX_TYPES[number])) return contentType;
  const doc = parseJson<{ mediaType?: string; schemaVersion?: number; manifests?: unknown; config?: unknown }>(bytes, 'manifest');
  if (doc.schemaVersion === 1 || contentType.includes('manifest.v1')) {
    throw new ImageError('the registry has this image only as a schema 1 manifest (deprecated by Docker), which strata does not read');
  }
  if (doc.mediaType) return doc.mediaType;
  if (Array.isArray(doc.manifests)) return MEDIA.ociIndex;
  if (doc.config) return MEDIA.ociManifest;
  return contentType || 'unknown';
}

function checkDescriptor(d: Descriptor | undefined, what: string): Descriptor {
  if (!d || typeof d.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d.digest) || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new ImageError(`the manifest's ${what} is not a valid sha256 descriptor`);
  }
  return d;
}

/** Picks the index entry for a platform: an exact variant first, then one without a variant. */
function pickPlatform(index: Index, want: Platform): Descriptor {
  const images = index.manifests.filter((m) => MANIFEST_TYPES.includes(m.mediaType as typeof MANIFEST_TYPES[number]) || m.mediaType === undefined);
  const matches = images.filter((m) => m.platform?.os === want.os && m.platform.architecture === want.architecture);
  const exact = matches.find((m) => (m.platform?.variant ?? '') === (want.variant ?? ''));
  const loose = matches.find((m) => !m.platform?.variant || !want.variant);
  const chosen = exact ?? loose ?? (want.variant === undefined ? matches[0] : undefined);
  if (!chosen) {
    const has = [...new Set(images.map((m) => platformName(m.platform)))].join(', ') || 'nothing';
    throw new ImageError(`no image for ${platformName(want)} in the index (it has: ${has}); choose one with --platform`);
  }
  return chosen;
}

/** Layer blobs downloaded at once (as Docker's default). */
const PARALLEL_DOWNLOADS = 3;

/**
 * Streams a blob from the registry into `sink`, checking on the way that it is no longer than its
 * descriptor says, and at the end its size and digest (`what` names it in messages).
 */
async function fetchBlob(client: RegistryClient, d: Descriptor, what: string, sink: (chunk: Buffer) => void,
  abort?: { aborted: boolean }): Promise<void> {
  const res = await client.getBlob(d.digest);
  const hash = createHash('sha256');
  let n = 0;
  for await (const c of res as AsyncIterable<Buffer>) {
    if (abort?.aborted) {
      res.destroy();
      throw new ImageError('pull stopped');
    }
    n += c.length;
    if (n > d.size) {
      res.destroy();
      throw new ImageError(`the ${what} ${d.digest.slice(7, 19)} is longer than its descriptor says (${d.size} bytes)`);
    }
    hash.update(c);
    sink(c);
  }
  if (n !== d.size) throw new ImageError(`the ${what} ${d.digest.slice(7, 19)} ended after ${n} of ${d.size} bytes`);
  const got = `sha256:${hash.digest('hex')}`;
  if (got !== d.digest) throw new ImageError(`${what} digest mismatch: expected ${d.digest}, got ${got}`);
}

/**
 * Downloads a layer blob into `file`, checked (fetchBlob): nothing is unpacked from bytes that did
 * not come out as the manifest says. (No fsync: the ingest's syncfs of the store's filesystem covers
 * the file before it is renamed into blobs/.)
 */
async function download(client: RegistryClient, d: Descriptor, file: string, onBytes: ((n: number) => void) | undefined,
  abort: { aborted: boolean }): Promise<void> {
  const fd = openSync(file, 'wx', 0o600);
  try {
    await fetchBlob(client, d, 'layer', (c) => {
      for (let off = 0; off < c.length;) off += writeSync(fd, c, off, c.length - off);
      onBytes?.(c.length);
    }, abort);
  } finally {
    closeSync(fd);
  }
}

/** A function that runs tasks at most `n` at a time, in the order given. */
function limiter(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const queue: (() => void)[] = [];
  const next = (): void => {
    if (running >= n) return;
    const start = queue.shift();
    if (start) start();
  };
  return <T>(task: () => Promise<T>): Promise<T> => new Promise<T>((resolve, reject) => {
    queue.push(() => {
      running++;
      task().then(resolve, reject).finally(() => {
        running--;
        next();
      });
    });
    next();
  });
}

async function readBlob(client: RegistryClient, d: Descriptor, limit: number, what: string): Promise<Buffer> {
  if (d.size > limit) throw new ImageError(`the ${what} is ${d.size} bytes, more than strata reads (${limit})`);
  const chunks: Buffer[] = [];
  await fetchBlob(client, d, what, (c) => chunks.push(c));
  return Buffer.concat(chunks);
}

/** Resolves a reference to an image manifest (through an index if it names one). */
async function resolveManifest(client: RegistryClient, ref: Reference, platform: Platform, status: (s: string) => void):
  Promise<{ manifest: Manifest; manifestBytes: Buffer; topDigest: string; manifestDigest: string }> {
  const accept = [...MANIFEST_TYPES, ...INDEX_TYPES];
  const wanted = ref.digest ?? ref.tag!;
  const top = await client.getManifest(wanted, accept);
  const topDigest = sha256Digest(top.bytes);
  if (ref.digest !== undefined && topDigest !== ref.digest) throw new ImageError(`manifest digest mismatch: asked for ${ref.digest}, got ${topDigest}`);
  if (ref.digest === undefined && top.digest !== undefined && top.digest !== topDigest) {
    throw new ImageError(`manifest digest mismatch: the registry says ${top.digest}, the bytes hash to ${topDigest}`);
  }
  let bytes = top.bytes;
  let type = documentType(bytes, top.mediaType);
  let manifestDigest = topDigest;
  if (INDEX_TYPES.includes(type as typeof INDEX_TYPES[number])) {
    const index = parseJson<Index>(bytes, 'index');
    if (!Array.isArray(index.manifests)) throw new ImageError('the registry\'s index has no manifests list');
    const chosen = checkDescriptor(pickPlatform(index, platform), 'index entry');
    status(`Resolved ${platformName(platform)} in the index: ${chosen.digest}`);
    const m = await client.getManifest(chosen.digest, MANIFEST_TYPES);
    manifestDigest = sha256Digest(m.bytes);
    if (manifestDigest !== chosen.digest) throw new ImageError(`manifest digest mismatch: the index names ${chosen.digest}, got ${manifestDigest}`);
    if (m.bytes.length !== chosen.size) throw new ImageError(`manifest size mismatch: the index says ${chosen.size}, got ${m.bytes.length}`);
    bytes = m.bytes;
    type = documentType(bytes, m.mediaType);
  }
  if (!MANIFEST_TYPES.includes(type as typeof MANIFEST_TYPES[number])) throw new ImageError(`not an image manifest: ${type}`);
  const manifest = parseJson<Manifest>(bytes, 'manifest');
  if (manifest.schemaVersion !== 2 || !Array.isArray(manifest.layers)) throw new ImageError('the registry\'s manifest is not a schema 2 image manifest');
  return { manifest, manifestBytes: bytes, topDigest, manifestDigest };
}

/**
 * How a pull reaches the store: its directory, and a way to open it for a moment. The store is open
 * only to see which layers it has, and at the end to take the downloaded blobs in: other strata
 * commands are not held up by the downloads.
 */
export interface StoreAccess {
  root: string;
  open: <T>(fn: (s: Store) => Promise<T>) => Promise<T>;
}

/** Pulls `reference` into the store. */
export async function pullImage(at: StoreAccess, reference: string, opts: PullOptions = {}, progress: PullProgress = {}): Promise<PullResult> {
  const ref = parseReference(reference);
  const status = progress.onStatus ?? ((): void => {});
  const platform = opts.platform ?? hostPlatform();
  const client = new RegistryClient(ref, 'pull', opts);
  status(`Trying to pull ${formatReference(ref)}...`);
  const { manifest, manifestBytes, topDigest } = await resolveManifest(client, ref, platform, status);

  const configDesc = checkDescriptor(manifest.config, 'config');
  if (configDesc.mediaType !== undefined && !CONFIG_TYPES.has(configDesc.mediaType)) {
    throw new ImageError(`not a container image: the config's media type is ${configDesc.mediaType}`);
  }
  const layerDescs = manifest.layers.map((l, i) => checkDescriptor(l, `layer ${i + 1}`));
  for (const l of layerDescs) {
    if (l.mediaType !== undefined && !LAYER_TYPES.has(l.mediaType)) throw new ImageError(`unsupported layer media type ${l.mediaType}`);
  }
  const configBytes = await readBlob(client, configDesc, MAX_CONFIG, 'config');
  const config = parseJson<ImageConfig>(configBytes, 'image config');
  const diffIds = config.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== layerDescs.length) {
    throw new ImageError(`the config names ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff IDs for ${layerDescs.length} layers`);
  }
  if (config.os !== platform.os || config.architecture !== platform.architecture) {
    status(`WARNING: the image is for ${platformName({ os: config.os, architecture: config.architecture, variant: config.variant as string | undefined })}, not ${platformName(platform)}`);
  }

  // What is to be downloaded (for the plan and the status lines). The layers the store has are leased
  // until the pull ends: an `image prune` during the downloads keeps them and their blobs.
  const stored = await at.open(async (store) => {
    const have: boolean[] = [];
    const chains: string[] = [];
    let parent: string | null = null;
    for (const [i, l] of layerDescs.entries()) {
      const chain = chainId(parent, diffIds[i]!);
      const layer = await store.layer(chain);
      have.push(layer !== undefined && layer.digest === l.digest && store.hasBlob(l.digest));
      if (have[i]) chains.push(chain);
      parent = chain;
    }
    if (chains.length > 0) await store.setLease(process.pid, chains, 'pull');
    return have;
  });
  const toFetch = layerDescs.reduce((n, l, i) => n + (stored[i] ? 0 : l.size), 0);
  progress.onPlan?.(layerDescs.length, toFetch);

  // The blobs to fetch, into the store's downloads/ (verified there) with the store closed, three at
  // a time; then, with the store open again, the layers are unpacked bottom first and the blobs
  // renamed into blobs/ (the store's all-or-nothing ingest).
  const temp = downloadDir(at.root);
  const fileOf = (l: Descriptor): string => join(temp, l.digest.slice(7));
  const abort = { aborted: false };
  const downloads = new Map<string, Promise<void>>();
  let image: ImageRecord | undefined;
  let recorded: ImageRecord | undefined;
  try {
    for (const [i, l] of layerDescs.entries()) if (stored[i]) status(`Layer already stored ${l.digest.slice(7, 19)}`);
    const limit = limiter(PARALLEL_DOWNLOADS);
    for (const [i, l] of layerDescs.entries()) {
      if (stored[i] || downloads.has(l.digest)) continue;
      const p = limit(async () => {
        if (abort.aborted) throw new ImageError('pull stopped');
        status(`Copying blob ${l.digest.slice(7, 19)} (${l.size} bytes)`);
        await download(client, l, fileOf(l), progress.onBytes, abort);
      });
      p.catch(() => {}); // (awaited through `ready`, or when the pull ends)
      downloads.set(l.digest, p);
    }
    const tags = ref.tag !== undefined ? [`${repoName(ref)}:${ref.tag}`] : [];
    const layers: SourceLayer[] = layerDescs.map((l, i) => {
      // A blob the image has once is renamed into blobs/ by its ingest; one it has several times (an
      // empty layer, often) is read from tmp/ each time, or from blobs/ once an ingest kept it there.
      const once = layerDescs.filter((x) => x.digest === l.digest).length === 1;
      return {
        diffId: diffIds[i]!, digest: l.digest, size: l.size, ...(l.mediaType !== undefined ? { mediaType: l.mediaType } : {}), trustStored: true,
        ...(!stored[i] && once ? { verifiedFile: fileOf(l) } : {}),
        ready: () => downloads.get(l.digest) ?? Promise.resolve(),
        open: () => createReadStream(existsSync(fileOf(l)) ? fileOf(l) : join(at.root, 'blobs', 'sha256', l.digest.slice(7)), { highWaterMark: 1 << 20 }),
      };
    });
    // (every download first: one that fails leaves the store untouched)
    await Promise.all(downloads.values());
    const source: SourceImage = { tags, configBytes, config, manifestBytes, layers };
    [image, recorded] = await at.open(async (store) => {
      const [img] = await storeImages(store, [source]);
      return [img, await store.addRepoDigest(img!.id, `${repoName(ref)}@${topDigest}`)] as const;
    });
  } finally {
    abort.aborted = true;
    await Promise.allSettled(downloads.values());
    rmSync(temp, { recursive: true, force: true });
    if (stored.some(Boolean)) await at.open((store) => store.dropLease(process.pid, 'pull')).catch(() => {});
  }
  status(`Stored image ${image!.id}`);
  const reused = stored.filter(Boolean).length;
  return { image: recorded!, reference: formatReference(ref), digest: topDigest, downloaded: stored.length - reused, reused };
}
