// The image store: content-addressed layers unpacked once, image and container records.
//
// Layout of a store directory (default /var/lib/strata, `--store DIR`, env STRATA_STORE):
//   db/                          LevelDB: image, tag, layer and container records (JSON values)
//   layers/<chain-hex>/diff      a layer unpacked in the kernel's overlay format (char 0/0 whiteouts,
//                                trusted.overlay.opaque=y), usable as an overlay lowerdir as it is
//   blobs/sha256/<hex>           configs, manifests and layer blobs exactly as loaded or built, so
//                                that a save gives back the same digests (containerd's content store)
//   containers/<id>/{upper,work,merged}
//   tmp/                         ingest files and layers being unpacked; emptied at every open
//   downloads/PID-X/             a pull's blobs while the store is closed; removed by an open once PID is gone
//
// Atomicity: a layer is unpacked into tmp/, synced and renamed into layers/ (a directory there is
// always complete); a blob is written to tmp/, verified, synced and renamed into blobs/. Records
// go into LevelDB in one batch once the files they name are in place, so an interrupted load
// leaves at most unreferenced files that `image prune` removes and a later load reuses.
//
// Concurrency: LevelDB admits one process. A Store holds the database from open() to close();
// open() waits (up to 10 minutes) while another strata command holds it, so two loads of the same
// image run one after the other and the second finds every layer there. Commands that wait on
// something long (a container running) must close the store first and reopen it afterwards:
//
//     const img = await withStore(dir, (s) => s.resolveImage('debian:12'));
//
// Reference counts: each layer record counts the images and containers whose chain includes it.
// `removeImage` refuses an image a container uses (unless force) and deletes the layers no longer
// referenced; `prune` deletes untagged unused images and every unreferenced layer.

import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import type { Level } from 'level';
import { allRecords, processAlive } from '../daemon/registry.js';
import { cgroupDirs, removeCgroup } from './cgroups.js';
import {
  chainId, digestHex, type HistoryEntry, type ImageConfig, ImageError, type Manifest, MEDIA, sha256Digest,
} from './types.js';

export const DEFAULT_STORE = '/var/lib/strata';

/** The store directory, absolute: --store, else $STRATA_STORE, else /var/lib/strata. */
export function storeDir(option?: string): string {
  return resolve(option ?? process.env.STRATA_STORE ?? DEFAULT_STORE);
}

/** A layer in the store. Digests are "sha256:<hex>". */
export interface LayerRecord {
  /** Chain ID: identifies the layer together with everything below it; names its directory. */
  chainId: string;
  /** sha256 of the uncompressed layer tar. */
  diffId: string;
  /** Chain ID of the layer below, null for a base layer. */
  parent: string | null;
  /** Digest of the blob as stored (compressed or not): what a manifest names. */
  digest: string;
  /** Media type of that blob. */
  mediaType: string;
  /** Size of the blob in bytes. */
  size: number;
  /** Size of the uncompressed tar in bytes. */
  diffSize: number;
  /** Images and containers whose chain includes this layer. */
  refs: number;
  created: string;
}

/** An image: a config (its digest is the image ID), a manifest, a chain of layers, tags. */
export interface ImageRecord {
  /** Image ID: the config digest. */
  id: string;
  /** "name:tag" references, e.g. "debian:12", "localhost/app:latest". */
  tags: string[];
  config: ImageConfig;
  manifest: Manifest;
  manifestDigest: string;
  /** Chain IDs, bottom first. */
  layers: string[];
  /** Sum of the layers' uncompressed sizes. */
  size: number;
  /** When the image entered this store. */
  stored: string;
  /**
   * "registry/repository@sha256:..." for each repository the image was pulled from or pushed to:
   * the digest of the manifest (or index) there, as Docker's RepoDigests.
   */
  repoDigests?: string[];
}

/** A container: an image's layers plus a writable upper, each in <store>/containers/<id>. */
export interface ContainerRecord {
  /** 64 hex digits. */
  id: string;
  name: string;
  /** Image ID the container was made from, and the reference the user gave. */
  image: string;
  imageRef: string;
  /** The image's chain IDs, bottom first (kept: a forced `image rm` leaves the container usable). */
  layers: string[];
  created: string;
  dir: string;
  upper: string;
  work: string;
  merged: string;
  /** Free for the container commands (command line, state, exit status ...). */
  command?: string[];
  state?: string;
  exitCode?: number | null;
  [key: string]: unknown;
}

export interface AddLayerOptions {
  /** Media type of the blob; default: detected (gzip, zstd or plain tar). */
  mediaType?: string;
  /** Expected blob digest / diff ID / blob size: checked while streaming, a mismatch is refused. */
  expectDigest?: string;
  expectDiffId?: string;
  expectSize?: number;
  /** Called with each chunk's length as the blob is read (progress bars). */
  onBytes?: (n: number) => void;
  /**
   * The input is this file in the store's tmp/, already checked against `expectDigest` and
   * `expectSize` (a pull's download): it is not hashed or copied again, but renamed into blobs/.
   */
  verifiedBlobFile?: string;
}

export interface WriteImageSpec {
  /** The complete config; rootfs.diff_ids must be the layers' diff IDs in order. */
  config: ImageConfig;
  /** Exact bytes of the config when loaded from an archive (keeps its digest); default: JSON of config. */
  configBytes?: Buffer;
  /** The layers bottom first (records from addLayer / layer()). */
  layers: LayerRecord[];
  /** Manifest bytes when loaded from an OCI archive (kept as they are); default: an OCI manifest is built. */
  manifestBytes?: Buffer;
  /** References to point at the image; a tag held by another image moves (as in Docker). */
  tags: string[];
}

export interface ChildImageSpec {
  parent: ImageRecord;
  /** The new top layer (from addLayer on top of parent's chain). */
  layer: LayerRecord;
  history: HistoryEntry;
  /** Changes to the run config (Cmd, Env ...) merged over the parent's. */
  runConfig?: Partial<ImageConfig['config']>;
  author?: string;
  tags: string[];
}

export interface RemoveResult {
  untagged: string[];
  deleted: string[];
  layers: string[];
}

export interface PruneResult {
  images: string[];
  layers: string[];
  bytes: number;
}

type Db = Level<string, unknown>;
type BatchOp = { type: 'put'; key: string; value: unknown } | { type: 'del'; key: string };

const K = {
  image: (id: string) => `image:${digestHex(id)}`,
  tag: (ref: string) => `tag:${ref}`,
  layer: (id: string) => `layer:${digestHex(id)}`,
  container: (id: string) => `container:${id}`,
  containerName: (name: string) => `cname:${name}`,
  /** The exit status of a container removed as its command ended (--rm), for a `wait` that polls. */
  removedExit: (id: string) => `rmexit:${id}`,
};

/** How long a removed container's exit status is kept for the waits that saw it run. */
const REMOVED_EXIT_KEEP_MS = 10 * 60_000;

const TAG_RE = /^[a-z0-9][a-z0-9._\-/]*(:[0-9]+)?(\/[a-z0-9._\-]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/**
 * Normalises a user's reference to "name:tag" (":latest" added when no tag is given), or throws on
 * a malformed one. Digest references (name@sha256:...) are not tags and are refused here.
 */
export function normalizeTag(ref: string): string {
  const lastSlash = ref.lastIndexOf('/');
  const full = ref.slice(lastSlash + 1).includes(':') ? ref : `${ref}:latest`;
  if (!TAG_RE.test(full) || full.includes('@')) throw new ImageError(`invalid reference format: "${ref}"`, 2);
  return full;
}

function now(): string {
  return new Date().toISOString();
}

/** Opens LevelDB, waiting while another process holds its lock. */
async function openDb(path: string, waitMs: number, onWait?: () => void): Promise<Db> {
  const { Level } = await import('level');
  const deadline = Date.now() + waitMs;
  let waited = false;
  for (;;) {
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    try {
      await db.open();
      return db;
    } catch (e) {
      const cause = (e as { cause?: { code?: string } }).cause;
      if (cause?.code !== 'LEVEL_LOCKED' || Date.now() > deadline) {
        if (cause?.code === 'LEVEL_LOCKED') throw new ImageError(`the store ${path} is in use by another strata command`);
        throw e;
      }
      if (!waited) onWait?.();
      waited = true;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function leaseKey(pid: number, kind: string): string {
  return kind === '' ? `lease:${pid}` : `lease:${pid}:${kind}`;
}

export class Store {
  private constructor(readonly root: string, private readonly db: Db) {}

  /**
   * Opens (creating if needed) the store at `root`. Waits up to `waitMs` (10 min) for another
   * strata command to close it (calling `onWait` once if it has to). Removes what an interrupted
   * command left in tmp/.
   */
  static async open(root: string, opts: { waitMs?: number; onWait?: () => void } = {}): Promise<Store> {
    for (const d of ['layers', 'blobs/sha256', 'containers', 'tmp', 'downloads']) mkdirSync(join(root, d), { recursive: true, mode: 0o700 });
    const db = await openDb(join(root, 'db'), opts.waitMs ?? 600_000, opts.onWait);
    // We hold the lock: anything in tmp/ belongs to a command that died.
    for (const e of readdirSync(join(root, 'tmp'))) rmSync(join(root, 'tmp', e), { recursive: true, force: true });
    // downloads/ is used with the store closed (a pull's blobs): only what a gone process left goes.
    for (const e of readdirSync(join(root, 'downloads'))) {
      if (!processAlive(parseInt(e, 10))) rmSync(join(root, 'downloads', e), { recursive: true, force: true });
    }
    return new Store(root, db);
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  // --- paths ----------------------------------------------------------------------------------

  /** The unpacked directory of a layer (an overlay lowerdir). */
  layerDir(chain: string): string {
    return join(this.root, 'layers', digestHex(chain), 'diff');
  }

  blobPath(digest: string): string {
    return join(this.root, 'blobs', 'sha256', digestHex(digest));
  }

  /**
   * A fresh private path in tmp/, for use while this Store is open only: the next open() removes
   * everything in tmp/ (after a close, another command may open the store).
   */
  tempPath(what: string): string {
    return join(this.root, 'tmp', `${what}-${process.pid}-${randomBytes(6).toString('hex')}`);
  }

  /** The image's layer directories, top first: the order of overlay's lowerdir=. */
  lowerDirs(image: ImageRecord | ContainerRecord): string[] {
    return image.layers.map((l) => this.layerDir(l)).reverse();
  }

  /** The lowerdir= option value for the image's layers ("A:B:C", top first). */
  lowerdir(image: ImageRecord | ContainerRecord): string {
    return this.lowerDirs(image).map((d) => d.replace(/\\/g, '\\\\').replace(/:/g, '\\:')).join(':');
  }

  // --- layers ---------------------------------------------------------------------------------

  async layer(chain: string): Promise<LayerRecord | undefined> {
    return (await this.db.get(K.layer(chain))) as LayerRecord | undefined;
  }

  async listLayers(): Promise<LayerRecord[]> {
    const out: LayerRecord[] = [];
    for await (const v of this.db.values({ gt: 'layer:', lt: 'layer;' })) out.push(v as LayerRecord);
    return out;
  }

  /**
   * Adds a layer from a tar stream (plain, gzip or zstd) on top of the chain `parent` (null: a base
   * layer). The blob is stored, the tar unpacked into a temp dir, synced and renamed into place;
   * if that chain is already there, the existing copy is kept and returned. Digests given in
   * `opts` are verified while streaming. Refuses unsafe entries (see unpack.ts).
   */
  async addLayer(parent: string | null, input: Readable, opts: AddLayerOptions = {}): Promise<LayerRecord> {
    if (parent !== null && !(await this.layer(parent))) throw new ImageError(`parent layer ${parent} is not in the store`);
    const known = opts.expectDiffId ? await this.layer(chainId(parent, opts.expectDiffId)) : undefined;
    // Imported here: the tar reader is not needed by the commands that only read the store.
    const { ingestLayer } = await import('./layer_ingest.js');
    const r = await ingestLayer(this, parent, input, opts, known !== undefined && this.hasBlob(known.digest));
    const chain = chainId(parent, r.diffId);
    const existing = await this.layer(chain);
    const record: LayerRecord = {
      chainId: chain, diffId: r.diffId, parent, digest: r.digest, mediaType: r.mediaType, size: r.size,
      diffSize: r.diffSize, refs: existing?.refs ?? 0, created: existing?.created ?? now(),
    };
    if (existing && existing.digest !== r.digest && this.hasBlob(existing.digest)) {
      // Same content, another compression: keep the record (and blob) we have, not a second blob.
      if (!(await this.blobInUse(r.digest))) this.removeBlobs([r.digest]);
      return existing;
    }
    await this.db.put(K.layer(chain), record);
    return record;
  }

  hasBlob(digest: string): boolean {
    try {
      return statSync(this.blobPath(digest)).isFile();
    } catch {
      return false;
    }
  }

  /** Stores bytes as a blob (temp file, fsync, rename); returns its digest. */
  putBlob(data: Buffer): string {
    const digest = sha256Digest(data);
    if (this.hasBlob(digest)) return digest;
    const tmp = this.tempPath('blob');
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeFileSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.blobPath(digest));
    return digest;
  }

  readBlob(digest: string): Buffer {
    return readFileSync(this.blobPath(digest));
  }

  // --- images ---------------------------------------------------------------------------------

  async listImages(): Promise<ImageRecord[]> {
    const out: ImageRecord[] = [];
    for await (const v of this.db.values({ gt: 'image:', lt: 'image;' })) out.push(v as ImageRecord);
    return out;
  }

  /**
   * Finds an image by "name:tag" (":latest" implied; also tried with "localhost/" and
   * "docker.io/library/" in front, as podman names them) or by a unique prefix of its ID (with or
   * without "sha256:"). Throws an ImageError naming the reference otherwise.
   */
  async resolveImage(ref: string): Promise<ImageRecord> {
    const found = await this.findImage(ref);
    if (!found) throw new ImageError(`no such image: ${ref}`);
    return found;
  }

  async findImage(ref: string): Promise<ImageRecord | undefined> {
    const hex = ref.startsWith('sha256:') ? ref.slice(7) : ref;
    if (/^[0-9a-f]{4,64}$/.test(hex)) {
      const matches: ImageRecord[] = [];
      for await (const v of this.db.values({ gte: `image:${hex}`, lt: `image:${hex}~` })) matches.push(v as ImageRecord);
      if (matches.length > 1) throw new ImageError(`ambiguous image ID prefix: ${ref}`);
      if (matches.length === 1) return matches[0];
    }
    const at = ref.indexOf('@sha256:');
    if (at > 0) {
      // NAME[:TAG]@DIGEST: an image pulled or pushed as that (the tag is not looked at, as in Docker).
      let name = ref.slice(0, at);
      if (name.lastIndexOf(':') > name.lastIndexOf('/')) name = name.slice(0, name.lastIndexOf(':'));
      const wanted = [name, `localhost/${name}`, `docker.io/library/${name}`, `docker.io/${name}`].map((n) => `${n}${ref.slice(at)}`);
      for (const image of await this.listImages()) {
        if (image.repoDigests?.some((r) => wanted.includes(r))) return image;
      }
      return undefined;
    }
    let tag: string;
    try {
      tag = normalizeTag(ref);
    } catch {
      return undefined;
    }
    for (const candidate of [tag, `localhost/${tag}`, `docker.io/library/${tag}`, `docker.io/${tag}`]) {
      const id = (await this.db.get(K.tag(candidate))) as string | undefined;
      if (id) return (await this.db.get(K.image(id))) as ImageRecord;
    }
    return undefined;
  }

  /**
   * Records an image whose layers are all in the store: writes the config and manifest blobs,
   * the image record, its tags (moved from other images if they had them) and the layers'
   * reference counts, in one batch. Writing an image that exists only adds the tags.
   */
  async writeImage(spec: WriteImageSpec): Promise<ImageRecord> {
    const tags = spec.tags.map(normalizeTag);
    const diffIds = spec.layers.map((l) => l.diffId);
    if (JSON.stringify(spec.config.rootfs?.diff_ids ?? []) !== JSON.stringify(diffIds)) {
      throw new ImageError('the config\'s rootfs.diff_ids do not match the image\'s layers');
    }
    for (let i = 0; i < spec.layers.length; i++) {
      if (spec.layers[i]!.parent !== (i === 0 ? null : spec.layers[i - 1]!.chainId)) throw new ImageError('the layers do not form a chain');
    }
    const configBytes = spec.configBytes ?? Buffer.from(JSON.stringify(spec.config));
    const id = this.putBlob(configBytes);
    const manifestBytes = spec.manifestBytes ?? Buffer.from(JSON.stringify(buildManifest(id, configBytes.length, spec.layers)));
    const manifestDigest = this.putBlob(manifestBytes);
    const ops: BatchOp[] = [];
    let image = (await this.db.get(K.image(id))) as ImageRecord | undefined;
    if (!image) {
      image = {
        id, tags: [], config: spec.config, manifest: JSON.parse(manifestBytes.toString('utf8')) as Manifest, manifestDigest,
        layers: spec.layers.map((l) => l.chainId), size: spec.layers.reduce((n, l) => n + l.diffSize, 0), stored: now(),
      };
      ops.push(...(await this.refOps(image.layers, +1)));
    }
    ops.push(...(await this.tagOps(image, tags)));
    ops.push({ type: 'put', key: K.image(id), value: image });
    await this.db.batch(ops);
    return image;
  }

  /**
   * The image made by adding `layer` on top of `parent` (`strata commit`): the parent's config
   * with the new diff ID, history entry and run-config changes; the parent's layers are shared.
   */
  async writeChildImage(spec: ChildImageSpec): Promise<ImageRecord> {
    const parentLayers = await Promise.all(spec.parent.layers.map(async (c) => this.mustLayer(c)));
    if (spec.layer.parent !== (spec.parent.layers.at(-1) ?? null)) throw new ImageError('the new layer is not on top of the parent image');
    const created = spec.history.created ?? now();
    const base = spec.parent.config;
    const config: ImageConfig = {
      ...base,
      created,
      ...(spec.author ? { author: spec.author } : {}),
      config: { ...(base.config ?? {}), ...(spec.runConfig ?? {}) },
      rootfs: { type: 'layers', diff_ids: [...base.rootfs.diff_ids, spec.layer.diffId] },
      history: [...(base.history ?? []), { ...spec.history, created }],
    };
    return this.writeImage({ config, layers: [...parentLayers, spec.layer], tags: spec.tags });
  }

  /**
   * Records that the image is `repo@digest` in a registry (a pull or a push): replaces what was
   * recorded for that repository.
   */
  async addRepoDigest(id: string, repoDigest: string): Promise<ImageRecord> {
    const image = (await this.db.get(K.image(id))) as ImageRecord | undefined;
    if (!image) throw new ImageError(`no such image: ${id}`);
    const repo = repoDigest.slice(0, repoDigest.lastIndexOf('@'));
    image.repoDigests = [...(image.repoDigests ?? []).filter((r) => r.slice(0, r.lastIndexOf('@')) !== repo), repoDigest];
    await this.db.put(K.image(id), image);
    return image;
  }

  /** A small record of another part of strata (the build cache: "buildcache:<key>"). */
  async getMeta<T>(key: string): Promise<T | undefined> {
    if (!key.startsWith('buildcache:')) throw new Error(`not a meta key: ${key}`);
    return (await this.db.get(key)) as T | undefined;
  }

  async putMeta(key: string, value: unknown): Promise<void> {
    if (!key.startsWith('buildcache:')) throw new Error(`not a meta key: ${key}`);
    await this.db.put(key, value);
  }

  /** Points `tag` at the image (moving it from another image if needed). */
  async tag(image: ImageRecord, tag: string): Promise<void> {
    const ops = await this.tagOps(image, [normalizeTag(tag)]);
    ops.push({ type: 'put', key: K.image(image.id), value: image });
    await this.db.batch(ops);
  }

  /**
   * `image rm REF`: a tag of an image with other tags is only untagged; otherwise the image is
   * deleted (refused while a container uses it, unless `force`) with the layers nobody else uses.
   */
  async removeImage(ref: string, opts: { force?: boolean } = {}): Promise<RemoveResult> {
    const image = await this.resolveImage(ref);
    const result: RemoveResult = { untagged: [], deleted: [], layers: [] };
    let tag: string | undefined;
    try {
      tag = normalizeTag(ref);
    } catch {
      tag = undefined;
    }
    const byTag = image.tags.find((t) => t === tag || t === `localhost/${tag}` || t === `docker.io/library/${tag}`);
    if (byTag && image.tags.length > 1) {
      image.tags = image.tags.filter((t) => t !== byTag);
      await this.db.batch([{ type: 'del', key: K.tag(byTag) }, { type: 'put', key: K.image(image.id), value: image }]);
      result.untagged.push(byTag);
      return result;
    }
    if (!byTag && image.tags.length > 1 && !opts.force) {
      throw new ImageError(`image ${ref} has several tags (${image.tags.join(', ')}): remove them one by one, or use --force`);
    }
    const users = (await this.listContainers()).filter((c) => c.image === image.id);
    if (users.length > 0 && !opts.force) {
      throw new ImageError(`image ${ref} is in use by container ${users.map((c) => c.name).join(', ')} (use --force)`);
    }
    // `strata mount --image` mounts: a live strata mount whose top lower layer is this image's.
    const top = this.lowerDirs(image)[0];
    const mounts = allRecords().filter((r) => r.lowerdirs[0] === top && processAlive(r.pid));
    if (mounts.length > 0 && !opts.force) {
      throw new ImageError(`image ${ref} is in use by the mount at ${mounts.map((r) => r.mountpoint).join(', ')} (use --force)`);
    }
    const ops: BatchOp[] = image.tags.map((t): BatchOp => ({ type: 'del', key: K.tag(t) }));
    ops.push({ type: 'del', key: K.image(image.id) }, ...(await this.refOps(image.layers, -1)));
    await this.db.batch(ops);
    result.untagged.push(...image.tags);
    result.deleted.push(image.id);
    this.removeBlobs([image.id, image.manifestDigest]);
    result.layers = await this.deleteUnreferencedLayers(image.layers);
    return result;
  }

  /**
   * Deletes untagged images no container uses (`all`: tagged ones too, as docker image prune -a,
   * except those a live mount shows), then every layer no image or container references.
   */
  async prune(opts: { all?: boolean } = {}): Promise<PruneResult> {
    const containers = await this.listContainers();
    const images: string[] = [];
    const layers: string[] = [];
    const before = dirBytes(join(this.root, 'layers'));
    for (const img of await this.listImages()) {
      if ((img.tags.length === 0 || opts.all) && !containers.some((c) => c.image === img.id)) {
        let r: RemoveResult;
        try {
          for (const t of img.tags.slice(1)) await this.removeImage(t);
          r = await this.removeImage(img.id);
        } catch (e) {
          // (a strata mount --image shows it: kept)
          if (e instanceof ImageError && /in use/.test(e.message)) continue;
          throw e;
        }
        images.push(...r.deleted);
        layers.push(...r.layers);
      }
    }
    layers.push(...(await this.deleteUnreferencedLayers((await this.listLayers()).map((l) => l.chainId))));
    // Directories without a record: a load interrupted between rename and record.
    const known = new Set((await this.listLayers()).map((l) => digestHex(l.chainId)));
    for (const hex of readdirSync(join(this.root, 'layers'))) {
      if (!known.has(hex)) {
        rmSync(join(this.root, 'layers', hex), { recursive: true, force: true });
        layers.push(`sha256:${hex}`);
      }
    }
    return { images, layers, bytes: Math.max(0, before - dirBytes(join(this.root, 'layers'))) };
  }

  // --- containers -----------------------------------------------------------------------------

  /**
   * Creates a container record for `image` with empty upper, work and merged directories under
   * <store>/containers/<id>. The name defaults to the first 12 hex digits of the ID; a name
   * in use is refused.
   */
  async createContainer(spec: { image: ImageRecord; imageRef?: string; name?: string; command?: string[]; extra?: Record<string, unknown> }): Promise<ContainerRecord> {
    const id = randomBytes(32).toString('hex');
    const name = spec.name ?? id.slice(0, 12);
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(name)) throw new ImageError(`invalid container name "${name}"`, 2);
    if (await this.db.get(K.containerName(name))) throw new ImageError(`the container name "${name}" is already in use`);
    const dir = join(this.root, 'containers', id);
    const rec: ContainerRecord = {
      id, name, image: spec.image.id, imageRef: spec.imageRef ?? spec.image.tags[0] ?? spec.image.id,
      layers: [...spec.image.layers], created: now(), dir,
      upper: join(dir, 'upper'), work: join(dir, 'work'), merged: join(dir, 'merged'),
      ...(spec.command ? { command: spec.command } : {}), state: 'created', exitCode: null, ...spec.extra,
    };
    for (const d of [rec.upper, rec.work, rec.merged]) mkdirSync(d, { recursive: true, mode: 0o755 });
    await this.db.batch([
      { type: 'put', key: K.container(id), value: rec },
      { type: 'put', key: K.containerName(name), value: id },
      ...(await this.refOps(rec.layers, +1)),
    ]);
    return rec;
  }

  /** A container by name, full ID or unique ID prefix. */
  async getContainer(ref: string): Promise<ContainerRecord> {
    const rec = await this.findContainer(ref);
    if (!rec) throw new ImageError(`no such container: ${ref}`);
    return rec;
  }

  /** A container by name, full ID or unique ID prefix; undefined when there is none (gone, or never made). */
  async findContainer(ref: string): Promise<ContainerRecord | undefined> {
    const byName = (await this.db.get(K.containerName(ref))) as string | undefined;
    if (byName) return (await this.db.get(K.container(byName))) as ContainerRecord;
    if (/^[0-9a-f]{1,64}$/.test(ref)) {
      const matches: ContainerRecord[] = [];
      for await (const v of this.db.values({ gte: `container:${ref}`, lt: `container:${ref}~` })) matches.push(v as ContainerRecord);
      if (matches.length > 1) throw new ImageError(`ambiguous container ID prefix: ${ref}`);
      return matches[0];
    }
    return undefined;
  }

  async listContainers(): Promise<ContainerRecord[]> {
    const out: ContainerRecord[] = [];
    for await (const v of this.db.values({ gt: 'container:', lt: 'container;' })) out.push(v as ContainerRecord);
    return out;
  }

  /** Merges `patch` into a container's record (state, exit code ...); id, name and layers are kept. */
  /** `strata rename`: a new name for a container (refused if in use or invalid). */
  async renameContainer(ref: string, name: string): Promise<ContainerRecord> {
    const rec = await this.getContainer(ref);
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(name)) throw new ImageError(`invalid container name "${name}"`, 2);
    if (await this.db.get(K.containerName(name))) throw new ImageError(`the container name "${name}" is already in use`);
    const next = { ...rec, name };
    await this.db.batch([
      { type: 'del', key: K.containerName(rec.name) },
      { type: 'put', key: K.containerName(name), value: rec.id },
      { type: 'put', key: K.container(rec.id), value: next },
    ]);
    return next;
  }

  async updateContainer(id: string, patch: Partial<ContainerRecord>): Promise<ContainerRecord> {
    const rec = await this.getContainer(id);
    const next = { ...rec, ...patch, id: rec.id, name: rec.name, layers: rec.layers, dir: rec.dir };
    await this.db.put(K.container(rec.id), next);
    return next;
  }

  /**
   * Deletes a container's record and directory and releases its layers. The caller unmounts it
   * first; a container with anything still mounted below its directory is refused.
   */
  async removeContainer(ref: string, exited?: { exitCode: number }): Promise<ContainerRecord> {
    const rec = await this.getContainer(ref);
    const mounts = mountsBelow(rec.dir);
    if (mounts.length > 0) throw new ImageError(`container ${rec.name} is still mounted at ${mounts[0]}`);
    const stale: string[] = [];
    if (exited) {
      for await (const [key, v] of this.db.iterator({ gt: 'rmexit:', lt: 'rmexit;' })) {
        if (Date.now() - Date.parse((v as { at: string }).at) > REMOVED_EXIT_KEEP_MS) stale.push(key);
      }
    }
    await this.db.batch([
      { type: 'del', key: K.container(rec.id) },
      { type: 'del', key: K.containerName(rec.name) },
      ...(exited ? [{ type: 'put' as const, key: K.removedExit(rec.id), value: { exitCode: exited.exitCode, at: now() } }] : []),
      ...stale.map((key) => ({ type: 'del' as const, key })),
      ...(await this.refOps(rec.layers, -1)),
    ]);
    rmSync(rec.dir, { recursive: true, force: true });
    // (a control group its monitor did not remove: the monitor was killed; one try, it may still be busy)
    await removeCgroup(cgroupDirs(rec.id), 1);
    await this.deleteUnreferencedLayers(rec.layers);
    return rec;
  }

  /** The exit status of container `id` if it was removed as its command ended (--rm), in the last minutes. */
  async removedExitCode(id: string): Promise<number | undefined> {
    const v = (await this.db.get(K.removedExit(id))) as { exitCode: number } | undefined;
    return v?.exitCode;
  }

  /** Deletes those of `chains` that nothing references (layers a failed load added). */
  async discardLayers(chains: readonly string[]): Promise<string[]> {
    return this.deleteUnreferencedLayers(chains);
  }

  // --- internals ------------------------------------------------------------------------------

  private async mustLayer(chain: string): Promise<LayerRecord> {
    const l = await this.layer(chain);
    if (!l) throw new ImageError(`layer ${chain} is missing from the store`);
    return l;
  }

  /** Batch operations adding `delta` to the reference count of each layer. */
  private async refOps(chains: readonly string[], delta: number): Promise<BatchOp[]> {
    const ops: BatchOp[] = [];
    for (const c of chains) {
      const l = await this.mustLayer(c);
      ops.push({ type: 'put', key: K.layer(c), value: { ...l, refs: Math.max(0, l.refs + delta) } });
    }
    return ops;
  }

  /** Batch operations pointing `tags` at `image` (which is updated in place), moving them if needed. */
  private async tagOps(image: ImageRecord, tags: readonly string[]): Promise<BatchOp[]> {
    const ops: BatchOp[] = [];
    for (const t of tags) {
      const holder = (await this.db.get(K.tag(t))) as string | undefined;
      if (holder && holder !== image.id) {
        const other = (await this.db.get(K.image(holder))) as ImageRecord | undefined;
        if (other) ops.push({ type: 'put', key: K.image(other.id), value: { ...other, tags: other.tags.filter((x) => x !== t) } });
      }
      ops.push({ type: 'put', key: K.tag(t), value: image.id });
      if (!image.tags.includes(t)) image.tags.push(t);
    }
    return ops;
  }

  /**
   * Keeps layers that a running process uses without an image or container record (a build between
   * its steps, a pull that found them stored): they are not deleted while `pid` lives. Replaces that
   * process's previous lease of the same `kind` (a build that pulls its base image holds two).
   */
  async setLease(pid: number, chains: readonly string[], kind = ''): Promise<void> {
    await this.db.put(leaseKey(pid, kind), { pid, chains: [...chains] });
  }

  async dropLease(pid: number, kind = ''): Promise<void> {
    await this.db.del(leaseKey(pid, kind));
  }

  /** Chains leased by live processes (the leases of dead ones are dropped). */
  private async leasedChains(): Promise<Set<string>> {
    const out = new Set<string>();
    for await (const [key, v] of this.db.iterator({ gt: 'lease:', lt: 'lease;' })) {
      const lease = v as { pid: number; chains: string[] };
      if (processAlive(lease.pid)) for (const c of lease.chains) out.add(c);
      else await this.db.del(key);
    }
    return out;
  }

  /** Deletes those of `chains` (and their blobs) whose reference count is 0 and no lease holds; returns their IDs. */
  private async deleteUnreferencedLayers(chains: readonly string[]): Promise<string[]> {
    const gone: string[] = [];
    const leased = await this.leasedChains();
    for (const c of [...chains].reverse()) {
      const l = await this.layer(c);
      if (!l || l.refs > 0 || leased.has(c)) continue;
      // A layer that another layer sits on stays while that one exists.
      let hasChild = false;
      for await (const v of this.db.values({ gt: 'layer:', lt: 'layer;' })) {
        if ((v as LayerRecord).parent === c) { hasChild = true; break; }
      }
      if (hasChild) continue;
      await this.db.del(K.layer(c));
      const dir = join(this.root, 'layers', digestHex(c));
      // Renamed away first, so a crash leaves no half-deleted layer under layers/.
      const doomed = this.tempPath('rm');
      renameSync(dir, doomed);
      rmSync(doomed, { recursive: true, force: true });
      if (!(await this.blobInUse(l.digest))) this.removeBlobs([l.digest]);
      gone.push(c);
    }
    return gone;
  }

  private async blobInUse(digest: string): Promise<boolean> {
    for await (const v of this.db.values({ gt: 'layer:', lt: 'layer;' })) if ((v as LayerRecord).digest === digest) return true;
    return false;
  }

  private removeBlobs(digests: readonly string[]): void {
    for (const d of digests) rmSync(this.blobPath(d), { force: true });
  }
}

/** Runs `fn` with the store open and closes it afterwards, whatever happens. */
/**
 * A private directory in STORE/downloads/ for a pull's blobs while the store is closed (named after
 * this process: an open of the store removes those of processes that are gone).
 */
export function downloadDir(root: string): string {
  const d = join(root, 'downloads', `${process.pid}-${randomBytes(6).toString('hex')}`);
  mkdirSync(d, { recursive: true, mode: 0o700 });
  return d;
}

export async function withStore<T>(root: string, fn: (s: Store) => Promise<T>): Promise<T> {
  const s = await Store.open(root);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

/** The OCI manifest of an image whose blobs are in the store. */
export function buildManifest(configDigest: string, configSize: number, layers: readonly LayerRecord[]): Manifest {
  return {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: configSize },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  };
}

function mountsBelow(dir: string): string[] {
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const mp = line.split(' ')[4]?.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp && (mp === dir || mp.startsWith(dir + '/'))) out.push(mp);
  }
  return out;
}

/** Bytes used below a directory (st_blocks), without following symlinks or crossing mounts. */
export function dirBytes(dir: string): number {
  let total = 0;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (e.isDirectory()) walk(p);
      else if (st) total += st.blocks * 512;
    }
  };
  try {
    walk(dir);
  } catch {
    // a racing removal: the figure is only informative
  }
  return total;
}
