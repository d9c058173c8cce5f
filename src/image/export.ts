// `strata export CONTAINER|MNT -o FILE`: the merged view flattened into one tar (docker export).
// A mounted directory is read as it is; a container that is not mounted is mounted read-only
// for the export (its upper as the top lower layer) at a private mount point, and unmounted
// afterwards. The tar is written to a temporary file next to FILE and renamed into place once
// complete, so an interrupted export leaves no half-written FILE.

import { createWriteStream, mkdtempSync, renameSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { packTree, treeBytes, type PackStats } from './changes.js';
import type { Progress } from './commit.js';
import { mountLayers, resolveTarget, unmountIfMounted } from './container.js';
import { withStore } from './store.js';
import { ImageError } from './types.js';

export interface ExportOptions {
  store: string;
  ref: string;
  /** A file path, or "-" for standard output. */
  output: string;
  /** A progress display over `total` bytes, ticked as the tar is written. */
  progress?: (total: number) => Promise<Progress>;
}

/** Writes the tar of a merged view; the destination is created only when it is complete. */
async function writeTar(root: string, output: string, progress: ExportOptions['progress']): Promise<PackStats> {
  const bar = progress ? await progress(treeBytes(root)) : null;
  try {
    return await writeTarTo(root, output, bar ? (n) => bar.tick(n) : undefined);
  } finally {
    bar?.stop();
  }
}

async function writeTarTo(root: string, output: string, onBytes?: (n: number) => void): Promise<PackStats> {
  if (output === '-') return packTree(root, process.stdout as Writable, { layer: false, gzip: false, onBytes });
  const dest = resolve(output);
  const tmp = join(dirname(dest), `.${basename(dest)}.strata-${process.pid}`);
  try {
    const stats = await packTree(root, createWriteStream(tmp, { flags: 'wx', mode: 0o644, flush: true }), { layer: false, gzip: false, onBytes });
    renameSync(tmp, dest);
    return stats;
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

export async function exportView(opts: ExportOptions): Promise<PackStats> {
  if (opts.output !== '-') {
    const dir = dirname(resolve(opts.output));
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new ImageError(`cannot write ${opts.output}: ${dir} is not a directory`);
  }
  const target = await withStore(opts.store, (s) => resolveTarget(s, opts.ref));
  if (target.mountpoint) return writeTar(target.mountpoint, opts.output, opts.progress);
  // Not mounted: a container (only containers have no live mount), which always has an upper.
  const upper = target.upper!;
  const mnt = mkdtempSync(join(dirname(upper), 'export-'));
  try {
    mountLayers({ lowerdirs: [upper, ...target.lowerdirs], mountpoint: mnt });
    return await writeTar(mnt, opts.output, opts.progress);
  } finally {
    await unmountIfMounted(mnt);
    rmdirSync(mnt);
  }
}
