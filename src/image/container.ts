// Containers and mounts of store layers: mounting an image's layers (plus an upper) with strata,
// unmounting, and finding what a command names, a container or a mounted directory, with its
// upper and its layers.

import { spawnSync } from 'node:child_process';
import { realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { strataCommand } from '../daemon/command.js';
import { readRecord } from '../daemon/registry.js';
import { unmountStrata } from '../daemon/unmount.js';
import { mountedPaths } from '../daemon/validate.js';
import type { ContainerRecord, ImageRecord, Store } from './store.js';
import type { IdRange } from './settings.js';
import { digestHex, ImageError } from './types.js';
import { errCode } from '../fuse/errors.js';

/** Escapes a path for a value of -o (commas always; colons too inside lowerdir=). */
function escapeOption(p: string, colon: boolean): string {
  const s = p.replace(/\\/g, '\\\\').replace(/,/g, '\\,');
  return colon ? s.replace(/:/g, '\\:') : s;
}

export interface MountSpec {
  /** Top first. */
  lowerdirs: string[];
  upper?: string;
  work?: string;
  mountpoint: string;
  /** An owner mapping (a container with --uidmap): [container, host, count] ranges. */
  idMap?: { uidMap: readonly IdRange[]; gidMap: readonly IdRange[] };
}

/** The -o value of a mount of these layers. */
export function mountOptionString(spec: Omit<MountSpec, 'mountpoint'>): string {
  const o = [`lowerdir=${spec.lowerdirs.map((d) => escapeOption(d, true)).join(':')}`];
  if (spec.upper) o.push(`upperdir=${escapeOption(spec.upper, false)}`, `workdir=${escapeOption(spec.work!, false)}`);
  if (spec.idMap) {
    o.push(`uidmapping=${spec.idMap.uidMap.map((r) => r.join(':')).join(':')}`, `gidmapping=${spec.idMap.gidMap.map((r) => r.join(':')).join(':')}`);
  }
  return o.join(',');
}

/** Mounts with `strata mount` (a daemon in the background); throws with strata's own message. */
export function mountLayers(spec: MountSpec): void {
  const [program, args] = strataCommand(['mount', '-o', mountOptionString(spec), spec.mountpoint]);
  const r = spawnSync(program, args, {
    stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 120_000,
  });
  if (r.status !== 0) {
    const why = (r.stderr ?? '').trim().split('\n').pop()?.replace(/^strata: /, '') ?? `exit status ${r.status}`;
    throw new ImageError(`cannot mount ${spec.mountpoint}: ${why}`);
  }
}

/** Unmounts a strata mount if it is mounted (the daemon exits); never throws for "not mounted". */
export async function unmountIfMounted(mountpoint: string): Promise<void> {
  if (!mountedPaths().has(mountpoint)) return;
  try {
    await unmountStrata(mountpoint);
  } catch (e) {
    if (errCode(e) !== 'ENOTMOUNTED') throw e;
  }
}

/** What `commit` and `export` work on. */
export interface Target {
  /** The writable layer (null: a read-only mount). */
  upper: string | null;
  /** The layers below it, top first. */
  lowerdirs: string[];
  /** Chain IDs of those layers, bottom first, when all of them are store layers. */
  chain: string[] | null;
  container: ContainerRecord | null;
  /** A live mount showing the merged view, if there is one. */
  mountpoint: string | null;
  /** The command that made the changes (for the history), when known. */
  command: string[] | null;
}

/** Chain IDs (bottom first) of store layer directories given top first, or null if one is not a store layer. */
export function chainOfLayerDirs(store: Store, lowerdirs: readonly string[]): string[] | null {
  const layersRoot = realpathSync(join(store.root, 'layers'));
  const chain: string[] = [];
  for (const d of [...lowerdirs].reverse()) {
    let real: string;
    try {
      real = realpathSync(d);
    } catch {
      return null;
    }
    const m = real.startsWith(layersRoot + '/') ? /^([0-9a-f]{64})\/diff$/.exec(real.slice(layersRoot.length + 1)) : null;
    if (!m) return null;
    chain.push(`sha256:${m[1]}`);
  }
  return chain;
}

/** The image whose layers are exactly `chain`. */
export async function imageWithChain(store: Store, chain: readonly string[]): Promise<ImageRecord | undefined> {
  const key = JSON.stringify(chain);
  return (await store.listImages()).find((i) => JSON.stringify(i.layers) === key);
}

/** A container (name or ID) or a strata mount with an upper (its mount point). */
export async function resolveTarget(store: Store, ref: string): Promise<Target> {
  let container: ContainerRecord | null = null;
  try {
    container = await store.getContainer(ref);
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
  }
  if (container) {
    return {
      upper: container.upper, lowerdirs: store.lowerDirs(container), chain: container.layers, container,
      mountpoint: mountedPaths().has(container.merged) ? container.merged : null, command: container.command ?? null,
    };
  }
  let mnt: string;
  try {
    mnt = realpathSync(ref);
    statSync(mnt);
  } catch {
    throw new ImageError(`no such container or mount: ${ref}`);
  }
  const rec = readRecord(mnt);
  if (!rec || !mountedPaths().has(mnt)) throw new ImageError(`no such container, and ${ref} is not a strata mount`);
  return { upper: rec.upperdir, lowerdirs: rec.lowerdirs, chain: chainOfLayerDirs(store, rec.lowerdirs), container: null, mountpoint: mnt, command: null };
}

/** Lower directories for `strata mount --image`, checked to exist. */
export async function imageLowerdirs(store: Store, ref: string): Promise<string[]> {
  const image = await store.resolveImage(ref);
  const dirs = store.lowerDirs(image);
  for (const [i, d] of dirs.entries()) {
    try {
      statSync(d);
    } catch {
      throw new ImageError(`layer ${image.layers[image.layers.length - 1 - i]} of ${ref} is missing from the store (${digestHex(image.id).slice(0, 12)})`);
    }
  }
  return dirs;
}
