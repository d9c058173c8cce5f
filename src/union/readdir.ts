// Merged directory listings (the kernel's fs/overlayfs/readdir.c).
//
// The layers of a directory are listed top first; a name shows once, from the topmost layer
// that has it; whiteouts (char 0/0, and OCI ".wh.<name>" for the layers below) hide names;
// OCI meta files never show. A listing is taken once per open handle (at offset 0), so offsets
// stay stable while it is read, and a rewind takes a fresh one.

import * as N from '../native/index.js';
import type { InodeTable, UnionNode } from './inode.js';
import type { Layer } from './layers.js';
import type { LowerListing } from './lower_index.js';
import { clearImpure, isImpureDir } from './origin.js';
import { isKernelWhiteout, isXattrWhiteout, ociWhiteoutTarget, OCI_OPAQUE, xwhiteoutsIn } from './whiteout.js';

const { C } = N;

export interface DirEntry {
  name: string;
  /** DT_* type. */
  type: number;
  /** st_ino the mount shows for it. */
  ino: number;
}

const st = new Float64Array(16);

function dtFromMode(mode: number): number {
  return (mode & C.S_IFMT) >> 12;
}

/** Lower layer directories whose listing the disk had to serve (see listLowerDir). */
export const lowerListings = { cold: 0 };

/** N.listDir of a lower layer's directory, counting those read from the disk (UnionFs.readAhead follows them). */
export function listLowerDir(dirfd: number): N.DirListing {
  const before = N.threadInblock();
  const listing = N.listDir(dirfd);
  if (N.threadInblock() !== before) lowerListings.cold++;
  return listing;
}

/**
 * Keeps the names of a lower layer directory for lookups (see UnionNode.lowerNames), in a directory
 * merged from several layers. A directory in one layer only is searched in that layer alone, one
 * lstat per name: a set of its names would save no more than that, and a walk of 100k files in
 * such directories would keep 2 MiB of sets.
 */
function rememberNames(dir: UnionNode, layer: Layer, names: string[]): void {
  if (dir.dirLayers!.length < 2) return;
  dir.lowerNames ??= new Map();
  if (!dir.lowerNames.has(layer)) dir.lowerNames.set(layer, new Set(names));
}

/**
 * The merged listing of directory `dir`, without "." and "..". With `lower`, the layers from
 * position `lower.from` on are not read: their merged listing comes from the lower index.
 * `impureCleared` is told when the listing removed the directory's impure mark (see dropImpure).
 * `lookedUp` gives the st_ino of an upper directory entry of an impure merged directory by a lookup.
 */
export function mergedListing(inodes: InodeTable, dir: UnionNode, lower?: { from: number; listing: LowerListing },
  impureCleared?: (dir: UnionNode) => void, lookedUp?: (dir: UnionNode, name: string) => number | null): DirEntry[] {
  const layers = lower ? dir.dirLayers!.slice(0, lower.from) : dir.dirLayers!;
  const out: DirEntry[] = [];
  const seen = new Set<string>();
  // Names hidden from the layers still to be read.
  const hidden = new Set<string>();
  for (const layer of layers) {
    const dirfd = dir.dirFd(layer);
    const ociHidden: string[] = [];
    const { names, types, inos } = layer.isUpper ? N.listDir(dirfd) : listLowerDir(dirfd);
    if (!layer.isUpper) rememberNames(dir, layer, names);
    // As the kernel, entries' origins are looked at only in an impure upper directory (one that copy-up,
    // rename or link put an object with an origin in): elsewhere d_ino is the real inode number.
    const withOrigins = layer.isUpper && isImpureDir(dirfd, layer.markerNs);
    // (there the kernel looks each entry up: a directory merged with a lower one gets its origin then)
    const lookUpDirs = withOrigins && lookedUp !== undefined && dir.dirLayers!.length > 1;
    // (whether an entry's d_ino is not its real inode number: one that keeps the mark needed)
    let remapped = false;
    const xw = xwhiteoutsIn(dir, layer, dirfd);
    for (let k = 0; k < names.length; k++) {
      const name = names[k]!;
      if (layer.ociWhiteouts && name.startsWith('.wh.')) {
        if (name !== OCI_OPAQUE) {
          const target = ociWhiteoutTarget(name);
          if (target !== undefined) ociHidden.push(target);
        }
        continue;
      }
      if (seen.has(name) || hidden.has(name)) continue;
      let type = types[k]!;
      let statted = false;
      if (type === C.DT_CHR || type === C.DT_UNKNOWN) {
        if (!N.lstatMaybe(dirfd, name, st)) continue;
        if (isKernelWhiteout(st)) {
          hidden.add(name);
          continue;
        }
        type = dtFromMode(st[N.ST.mode]!);
        statted = true;
      }
      if (xw && type === C.DT_REG && (statted || N.lstatMaybe(dirfd, name, st)) && isXattrWhiteout(dirfd, name, st, layer.markerNs)) {
        hidden.add(name);
        continue;
      }
      seen.add(name);
      // (a copy whose st_ino its node pins, having no origin on disk to keep it: a symlink or FIFO copied
      // up with userxattr; the kernel's lookup of the name gives the inode it holds, with that st_ino)
      const known = withOrigins ? dir.children.get(name) : undefined;
      const ino = (known?.inoPinned && known.layer === layer ? known.ino : null)
        ?? (lookUpDirs && type === C.DT_DIR ? lookedUp(dir, name) : null)
        ?? inodes.inoFor(layer, inos[k]!, withOrigins ? () => [dirfd, name] : undefined);
      if (withOrigins && ino !== inodes.stack.inoOf(layer, inos[k]!)) remapped = true;
      out.push({ name, type, ino });
    }
    // (only in a directory that is not merged)
    if (withOrigins && !remapped && dir.dirLayers!.length === 1 && impureCleared) dropImpure(dir, layer, dirfd, impureCleared);
    for (const name of ociHidden) hidden.add(name);
  }
  if (lower) {
    const all = inodes.stack.layers;
    for (const [name, e] of lower.listing) {
      if (seen.has(name) || hidden.has(name)) continue;
      out.push({ name, type: e.m >> 12, ino: inodes.inoFor(all[e.l]!, e.i) });
    }
  }
  return out;
}

/**
 * An impure upper directory that is not merged, none of whose entries has a d_ino other than its
 * real inode number any more (the copied-up ones were removed or moved away): its mark goes, as the
 * kernel's readdir removes it then (ovl_cache_get_impure), which moves the directory's ctime. The
 * kernel does so where every layer shares one filesystem, and with xino bits (layers on several,
 * whose upper objects keep their real numbers): strata numbers inodes that way wherever the layers
 * are on several filesystems (LayerStack.inoOf).
 */
function dropImpure(dir: UnionNode, layer: Layer, dirfd: number, cleared: (dir: UnionNode) => void): void {
  if (!clearImpure(dirfd, layer.markerNs)) return;
  // The kernel's overlay times the listing after it removed the mark (atime after the new ctime):
  // a second read of the directory lets the upper filesystem apply the atime options to it again.
  N.listDir(dirfd);
  cleared(dir);
}
