// `image import ROOTFS.tar NAME:TAG`: a one-layer image from a root filesystem tar (plain, gzip or zstd),
// with a fresh config for this machine's platform and one history entry.

import { createReadStream } from 'node:fs';
import { type ImageRecord, normalizeTag, type Store } from './store.js';
import { hostPlatform, type ImageConfig } from './types.js';

export interface ImportOptions {
  /** History comment (`--message`). */
  message?: string;
  /** Run config changes, e.g. Cmd. */
  cmd?: string[];
  onBytes?: (n: number) => void;
}


export async function importRootfs(store: Store, tarPath: string, tag: string, opts: ImportOptions = {}): Promise<ImageRecord> {
  normalizeTag(tag); // a bad tag is refused before the layer is read
  const layer = await store.addLayer(null, createReadStream(tarPath), { ...(opts.onBytes ? { onBytes: opts.onBytes } : {}) });
  const created = new Date().toISOString();
  const config: ImageConfig = {
    created,
    architecture: hostPlatform().architecture,
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], ...(opts.cmd ? { Cmd: opts.cmd } : {}) },
    rootfs: { type: 'layers', diff_ids: [layer.diffId] },
    history: [{ created, created_by: `strata image import ${tarPath}`, ...(opts.message ? { comment: opts.message } : {}) }],
  };
  try {
    return await store.writeImage({ config, layers: [layer], tags: [tag] });
  } catch (e) {
    await store.discardLayers([layer.chainId]);
    throw e;
  }
}
