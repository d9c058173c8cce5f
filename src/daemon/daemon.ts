// The daemon: opens the layers, mounts the union through a FUSE session, serves until the
// mount goes away (umount, `strata umount`, SIGTERM/SIGINT), then exits cleanly.

import { existsSync, mkdirSync, rmSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { FuseSession, type PassthroughMode } from '../fuse/session.js';
import * as N from '../native/index.js';
import { MetadataCache } from '../union/cache.js';
import { LayerStack } from '../union/layers.js';
import { hasIdMapping, type MountParams } from '../union/params.js';
import { IdMap } from '../union/idmap.js';
import { commonDir, identityUserns, onIdmappedMount } from '../union/layer_mount.js';
import { UnionFs } from '../union/super.js';
import type { WriteFormat } from '../union/dir.js';
import { inside, resolveExisting, SetupError, type ResolvedLayout } from './validate.js';
import { rootOrigin, stampUuid, useNullUuids } from '../union/origin.js';
import { FUSE_SUBTYPE, mountFlags, type VfsFlagParams } from './mount_flags.js';
import { DaemonLogger } from './log.js';
import { errCode } from '../fuse/errors.js';

export interface DaemonOptions {
  passthrough: PassthroughMode;
  logLevel: string;
  logFile: string | null;
  /** Where the CLI writes the daemon's pid once the mount is live (for service managers). */
  pidFile: string | null;
  /** Seconds the kernel caches names and attributes. */
  cacheTimeout: number;
  /** Whiteouts as char 0/0 devices (the kernel's) or OCI ".wh." files. */
  writeFormat: WriteFormat;
  /** Mount even when a volatile mount left its marker (the upper may be incomplete). */
  force: boolean;
  /** Use the LevelDB metadata cache (with an upper layer). */
  cache: boolean;
  /** Where it lives (default: <workdir>/strata-cache). */
  cacheDir: string | null;
}

export interface DaemonConfig {
  layout: ResolvedLayout;
  params: MountParams;
  options: DaemonOptions;
}

export function makeLogger(options: DaemonOptions): DaemonLogger {
  return new DaemonLogger(options);
}

/**
 * Where copy-ups are staged: <workdir>/work (the kernel's place too), emptied at mount. A volatile
 * mount leaves work/incompat/volatile behind, as the kernel does; the next mount refuses it
 * unless forced, because the upper may have lost writes.
 */
function prepareWorkDir(workdir: string, volatile: boolean, force: boolean): string {
  const work = join(workdir, 'work');
  const marker = join(work, 'incompat', 'volatile');
  if (existsSync(marker) && !force) {
    throw new SetupError(`the upper was last mounted volatile and may be incomplete (${marker}); check it, then mount with --force`);
  }
  mkdirSync(work, { recursive: true, mode: 0o700 });
  for (const name of readdirSync(work)) rmSync(join(work, name), { recursive: true, force: true });
  if (volatile) mkdirSync(marker, { recursive: true, mode: 0o700 });
  return work;
}

/** How long an unmount waits for requests in progress before the daemon stops serving. */
const STOP_GRACE_MS = 30_000;

export interface RunningMount {
  session: FuseSession;
  fs: UnionFs;
  logger: Logger;
  /** Resolves when the mount is gone and everything is closed. */
  done: Promise<void>;
  /** Unmounts (lazily if busy); the session then ends. */
  unmount(): void;
  /** `mount -o remount,...`: new flags for the mount (read-only makes every change answer EROFS). */
  remount(readOnly: boolean, flags: VfsFlagParams): void;
  /** Called once the daemon is first idle after the mount went live: opens the cache's LevelDB. */
  live(): void;
}

/** Flushes the upper layer's filesystem (at unmount, and when a remount makes the mount read-only). */
function syncUpper(stack: LayerStack, logger: Logger): void {
  if (!stack.upper) return;
  try {
    // The layer's own descriptor is O_PATH, which syncfs refuses.
    const fd = N.openat(stack.upper.fd, '.', N.C.O_RDONLY | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0);
    try {
      N.syncfs(fd);
    } finally {
      N.close(fd);
    }
  } catch (e) {
    logger.warn({ err: e }, 'syncfs of the upper layer failed');
  }
}

/**
 * Is `upper` a layer of containers-storage's overlay driver (podman, buildah, CRI-O): a `diff`
 * directory beside the layer's `link` file, under a driver home with its `l` directory of links? With
 * a mount program that driver reads uppers as plain trees (its native diff takes no metadata-only copy
 * into account: fuse-overlayfs never writes one), though it passes on its `mountopt`, whose default on
 * Fedora is "nodev,metacopy=on". There strata reads metadata-only copies but writes whole ones.
 */
export function containersStorageLayer(upper: string | null): boolean {
  if (upper === null || basename(upper) !== 'diff') return false;
  const layer = dirname(upper);
  return existsSync(join(layer, 'link')) && existsSync(join(dirname(layer), 'l'));
}

export async function startMount(config: DaemonConfig, log: DaemonLogger): Promise<RunningMount> {
  const { layout, params, options } = config;
  const logger = log.asLogger();
  N.setNofileLimit(1 << 20);
  const work = layout.workdir ? prepareWorkDir(layout.workdir, params.volatile, options.force) : null;
  // (with an owner mapping, layers on idmapped mounts are read with the ids they store: see clonePrivate)
  const layerPaths = [...(layout.upperdir ? [work ? commonDir([layout.upperdir, work]) : layout.upperdir] : []), ...layout.lowerdirs, ...layout.datadirs];
  const storedIds = hasIdMapping(params.ids) && layerPaths.some(onIdmappedMount) ? await identityUserns() : null;
  let stack: LayerStack;
  try {
    stack = LayerStack.open(layout.upperdir, layout.lowerdirs, {
      atime: params, workdir: work, ociWhiteouts: params.ociWhiteouts, noFollowRedirects: params.noFollowRedirects, userxattr: params.userxattr, metacopy: params.metacopy, verity: params.verity,
      dataDirs: layout.datadirs, storedIds,
    });
  } finally {
    if (storedIds !== null) N.close(storedIds);
  }
  // (uuid=off needs one filesystem, as the kernel's: elsewhere it falls back to null)
  if (params.uuid === 'off' && stack.sameFs) useNullUuids(stack);
  if (params.index && work && options.writeFormat !== 'oci' && rootOrigin(stack, params.userxattr) === 'other') {
    stack.close();
    throw new SetupError('index=on: the upper root\'s overlay.origin names another lower layer than the first one given (the kernel refuses this mount too: "failed to verify upper root origin")');
  }
  if ((params.uuid === 'auto' || params.uuid === 'on') && work && options.writeFormat !== 'oci') stampUuid(stack, params.userxattr, params.uuid);
  const workFd = work ? stack.openBesideUpper(work) : -1;
  let cacheDir = options.cacheDir ?? (layout.workdir ? join(layout.workdir, 'strata-cache') : null);
  // A cache the mount would cover (the mount point at or above the work directory, as the kernel allows)
  // would be reached through the mount itself once it is live: the mount goes without one.
  if (cacheDir !== null && inside(resolveExisting(cacheDir), layout.mountpoint)) {
    logger.info({ cacheDir, mountpoint: layout.mountpoint }, 'the metadata cache would lie inside the mount point: mounting without it');
    cacheDir = null;
  }
  // The inode origins are read now; LevelDB opens in the background later (see live(); requests
  // wait for it only when identity is still there: see MetadataCache.identityReady).
  const cache = options.cache && cacheDir ? MetadataCache.start(cacheDir, stack, logger, { handles: params.nfsExport }) : null;
  const readOnly = params.readOnly || layout.upperdir === null;
  let session: FuseSession | null = null;
  const ids = hasIdMapping(params.ids) ? new IdMap(params.ids) : null;
  const fs = new UnionFs(stack, {
    readOnly,
    cacheTimeout: options.cacheTimeout,
    passthrough: options.passthrough !== 'off',
    logger,
    backings: {
      open: (fd) => session!.backings.open(fd),
      close: (id) => session?.backings.close(id),
    },
    invalidateAttributes: (nodeid) => session?.invalidateAttributes(nodeid),
    invalidateListing: (nodeid) => session?.invalidateListing(nodeid),
    invalidateLinkTarget: (nodeid) => session?.invalidateLinkTarget(nodeid),
    storeData: (nodeid, offset, data) => session?.storeData(nodeid, offset, data) ?? false,
    cache,
    lowerIndex: options.cache,
    upper: work ? {
      workFd, volatile: params.volatile, writeFormat: options.writeFormat, userxattr: params.userxattr, newDirsOpaque: params.newDirsOpaque,
      redirectDir: params.redirectDir, metacopy: params.metacopy && !containersStorageLayer(layout.upperdir),
    } : null,
    nfsExport: params.nfsExport,
    ids,
  });
  const flags = mountFlags(params, readOnly);
  session = new FuseSession(fs, layout.mountpoint, {
    passthrough: options.passthrough,
    mountOptions: N.getuid() === 0 ? ['allow_other', 'default_permissions'] : ['default_permissions'],
    mountFlags: flags,
    source: params.fsname ?? 'strata',
    subtype: FUSE_SUBTYPE,
    logger,
    posixAcl: true,
    exportSupport: params.nfsExport,
    callerIds: ids,
  });
  try {
    await session.mount(cache?.identityReady);
  } catch (e) {
    stack.close();
    if (workFd >= 0) N.close(workFd);
    await cache?.close();
    throw e;
  }
  const s = session;
  logger.info({ mountpoint: layout.mountpoint, lowerdirs: layout.lowerdirs, upperdir: layout.upperdir,
    readOnly, passthrough: s.passthrough }, 'mounted');
  let unmounting = false;
  const unmount = (): void => {
    if (unmounting) return;
    unmounting = true;
    // umount2 of a fuse (not fuseblk) mount does not wait for the daemon, so it is safe to call
    // from the thread that serves requests. A busy mount is detached lazily.
    try {
      N.umount2(layout.mountpoint, 0);
    } catch (e) {
      const code = errCode(e);
      if (code === 'EBUSY') {
        try {
          N.umount2(layout.mountpoint, N.C.MNT_DETACH);
        } catch (e2) {
          logger.error({ err: e2 }, 'lazy unmount failed');
        }
      } else if (code !== 'EINVAL' && code !== 'ENOENT') {
        logger.error({ err: e }, 'unmount failed');
      }
    }
    // Requests already being worked on (a copy-up in steps) are finished and answered first; a
    // lazily detached mount may keep the connection open, so the session is then ended here.
    void s.idle(STOP_GRACE_MS).then(() => s.stop());
  };
  const done = s.ended.then(async (err) => {
    if (err) logger.error({ err }, 'session ended with an error');
    // The kernel may end the session (umount) while a request is still being worked on: let it
    // finish, so a copy-up completes (its reply has nowhere to go) before the layers are closed.
    await s.idle(STOP_GRACE_MS);
    // (a read-ahead of a cold tree would keep the process for as long as its walk takes)
    N.warmCancel();
    if (!params.volatile) syncUpper(stack, logger);
    const cacheStats = fs.cacheStats();
    if (cacheStats) logger.info({ cache: cacheStats }, 'metadata cache');
    if (cache && cacheStats) cache.putStats(cacheStats);
    await cache?.close();
    stack.close();
    if (workFd >= 0) N.close(workFd);
    const st = s.stats;
    logger.info({ mountpoint: layout.mountpoint, requests: st.requests, errors: st.errors, byOp: s.requestsByOp(), readAhead: fs.readAheads, fileReadAhead: fs.fileReadAheads, spins: s.spins() }, 'unmounted');
  });
  const remount = (ro: boolean, vfs: VfsFlagParams): void => {
    // As the kernel's ovl_reconfigure: read-write needs a writable upper layer.
    if (!ro && !work) throw Object.assign(new Error('cannot remount read-write: the mount has no upper layer'), { code: 'EROFS' });
    const newFlags = N.C.MS_REMOUNT | mountFlags(vfs, ro);
    const before = fs.opts.readOnly;
    // Going read-write, the daemon accepts changes before the kernel lets them through; going
    // read-only, the kernel stops them first (it refuses with EBUSY while a file is open for writing).
    if (!ro) fs.opts.readOnly = false;
    try {
      N.mount(null, layout.mountpoint, null, newFlags, null);
    } catch (e) {
      fs.opts.readOnly = before;
      logger.info({ mountpoint: layout.mountpoint, readOnly: ro, flags: vfs, code: (e as { code?: string }).code }, 'remount refused by the kernel');
      throw e;
    }
    fs.opts.readOnly = ro;
    stack.setUpperAtime(vfs);
    if (ro && !before && !params.volatile) syncUpper(stack, logger);
    logger.info({ mountpoint: layout.mountpoint, readOnly: ro, flags: vfs }, 'remounted');
  };
  return { session: s, fs, logger, done, unmount, remount, live: () => cache?.begin() };
}
