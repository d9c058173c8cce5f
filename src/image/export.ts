// `strata export CONTAINER|MNT -o FILE`: the merged view flattened into one tar (docker export).
// A mounted directory (a running container, a strata mount) is read through its mount, as it is.
// A container that is not mounted is not mounted for the export: its upper and its image's layers
// are merged here by the union core's rules (see packMerged in changes.ts), which is what a mount
// of them would show, without a daemon and a FUSE round trip per entry. The tar is written to a
// temporary file next to FILE and renamed into place once complete, so an interrupted export
// leaves no half-written FILE.

import { closeSync, openSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { packMerged, treeBytes, type FlatTarStats } from './changes.js';
import type { Progress } from './commit.js';
import { resolveTarget } from './container.js';
import { withStore } from './store.js';
import { ImageError } from './types.js';

export interface ExportOptions {
  store: string;
  ref: string;
  /** A file path, or "-" for standard output. */
  output: string;
  /** A progress display over `total` bytes, ticked as the tar is written (only asked for on a terminal). */
  progress?: (total: number) => Promise<Progress>;
}

/** Writes the tar of the merged view of `roots` (top first) to `out`, with a progress bar if asked. */
async function writeTar(roots: string[], out: number, progress: ExportOptions['progress']): Promise<FlatTarStats> {
  const bar = progress ? await progress(roots.length === 1 ? treeBytes(roots[0]!) : roots.map(treeBytes).reduce((a, b) => a + b, 0)) : null;
  try {
    return packMerged(roots, out, bar ? (n) => bar.tick(n) : undefined);
  } finally {
    bar?.stop();
  }
}

export async function exportView(opts: ExportOptions): Promise<FlatTarStats> {
  let dest: string | null = null;
  if (opts.output !== '-') {
    dest = resolve(opts.output);
    if (!statSync(dirname(dest), { throwIfNoEntry: false })?.isDirectory()) throw new ImageError(`cannot write ${opts.output}: ${dirname(dest)} is not a directory`);
  }
  const target = await withStore(opts.store, (s) => resolveTarget(s, opts.ref));
  // Not mounted: a container (only containers have no live mount), which always has an upper.
  const roots = target.mountpoint ? [target.mountpoint] : [target.upper!, ...target.lowerdirs];
  if (dest === null) return writeTar(roots, 1, opts.progress);
  const tmp = join(dirname(dest), `.${basename(dest)}.strata-${process.pid}`);
  try {
    const fd = openSync(tmp, 'wx', 0o644);
    let stats: FlatTarStats;
    try {
      stats = await writeTar(roots, fd, opts.progress);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, dest);
    return stats;
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
