// Lookup through layers (the kernel's fs/overlayfs/namei.c).
//
// A name is searched in each layer directory merged into its parent, top first:
// - a whiteout (char 0/0) ends the search: the name does not exist below it;
// - a non-directory wins if nothing was found above it, and ends the search;
// - a directory joins the merge; an opaque directory ends it;
// - an OCI ".wh.<name>" in a layer hides <name> in the layers below that layer only (unless the
//   mount reads `.wh.` files as plain data: oci_whiteouts=off).

import { fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';
import type { Layer } from './layers.js';
import type { UnionNode } from './inode.js';
import { hasOciWhiteout, isKernelWhiteout, isOciMetaName, isXattrWhiteout, OCI_WHITEOUT_PREFIX, opaqueState } from './whiteout.js';

const { C, ST } = N;

/** The longest name any layer accepts (what overlayfs reports as its namelen). */
export const NAME_MAX = 255;

export interface LayerHit {
  /** The topmost layer holding the name. */
  layer: Layer;
  /** Its stat (mode, ino, ...). */
  st: N.StatValues;
  /** For a directory: the layers merged into it, top first. */
  dirLayers: Layer[] | null;
}

export function checkName(name: string): void {
  if (name.length > NAME_MAX) throw fsError('ENAMETOOLONG');
}

/** Does a layer below the upper show `name` in `parent`? (Then removing it needs a whiteout.) */
export function lowerShows(parent: UnionNode, name: string): boolean {
  const layers = parent.dirLayers!;
  const from = layers[0]!.isUpper ? 1 : 0;
  return from < layers.length && lookupLayers(parent, name, from) !== null;
}

/**
 * Finds `name` in the layers of directory `parent`. Returns null when no layer shows it
 * (absent, whited out, or an OCI meta name, which is never visible).
 */
export function lookupLayers(parent: UnionNode, name: string, from = 0): LayerHit | null {
  return searchLayers(parent, name, from, parent.dirLayers?.length ?? 0).hit;
}

/** The stat buffer of searchLayers' probes (a miss allocates nothing). */
const probe = new Float64Array(16);

/**
 * The search of lookupLayers over the layers [from, to) of `parent`; `stopped` says whether
 * something in that range ends the search (a whiteout, a non-directory, an opaque directory, an
 * OCI whiteout), so that the layers from `to` on do not matter.
 */
export function searchLayers(parent: UnionNode, name: string, from: number, to: number): { hit: LayerHit | null; stopped: boolean } {
  const layers = parent.dirLayers;
  if (!layers) throw fsError('ENOTDIR');
  const oci = layers[0]?.ociWhiteouts ?? true;
  if (oci && isOciMetaName(name)) return { hit: null, stopped: true };
  let hit: LayerHit | null = null;
  const st = probe;
  for (let i = from; i < to; i++) {
    const layer = layers[i]!;
    // A lower layer whose listing is known and holds neither the name nor its OCI whiteout: nothing to ask.
    const known = parent.lowerNames?.get(layer);
    if (known && !known.has(name) && !known.has(OCI_WHITEOUT_PREFIX + name)) continue;
    const dirfd = parent.dirFd(layer);
    if ((!known || known.has(name)) && N.lstatMaybe(dirfd, name, st)) {
      if (isKernelWhiteout(st) || (!layer.isUpper && isXattrWhiteout(dirfd, name, st))) return { hit, stopped: true };
      const isDir = (st[ST.mode]! & C.S_IFMT) === C.S_IFDIR;
      if (!hit) {
        // (the hit keeps its own copy of the stat: the probe buffer is reused)
        hit = { layer, st: N.statCopy(st), dirLayers: isDir ? [layer] : null };
        if (!isDir) return { hit, stopped: true };
      } else {
        // Below a directory, only directories merge; anything else ends the merge.
        if (!isDir) return { hit, stopped: true };
        hit.dirLayers!.push(layer);
      }
      // Opaque: the layers below are hidden. Only worth asking when there is a layer below (as the
      // kernel, which reads no marker in the last layer either).
      if (i + 1 < layers.length) {
        const marker = opaqueState(dirfd, name, oci);
        if (marker === 'y') return { hit, stopped: true };
        if (marker === 'x' && !layer.isUpper) layer.xwhiteouts = true;
      }
    }
    if (oci && i + 1 < layers.length && (!known || known.has(OCI_WHITEOUT_PREFIX + name)) && hasOciWhiteout(dirfd, name)) return { hit, stopped: true };
  }
  return { hit, stopped: false };
}
