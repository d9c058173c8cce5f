// Lookup through layers (the kernel's fs/overlayfs/namei.c).
//
// A name is searched in each layer directory merged into its parent, top first:
// - a whiteout (char 0/0) ends the search: the name does not exist below it;
// - a non-directory wins if nothing was found above it, and ends the search;
// - a directory joins the merge; an opaque directory ends it;
// - an OCI ".wh.<name>" in a layer hides <name> in the layers below that layer only (unless the
//   mount reads `.wh.` files as plain data: oci_whiteouts=off).

import { errCode, fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';
import type { Layer } from './layers.js';
import type { UnionNode } from './inode.js';
import { openBeneath } from './node.js';
import { checkMetacopyMarker } from './verity.js';
import { dirMarkers, hasOciWhiteout, hasXwhiteoutXattr, isKernelWhiteout, isMetacopy, isOciMetaName, isXattrWhiteout, OCI_WHITEOUT_PREFIX, redirectOf } from './whiteout.js';

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
  /** For a directory reached below a redirect: where each of those layers holds it (see UnionNode.redirects). */
  redirects?: Map<Layer, string>;
  /** For a metacopy file (metacopy=on): the layer below holding its data, and an O_PATH descriptor of that file. */
  data?: { layer: Layer; fd: number };
}

export function checkName(name: string): void {
  if (name.length > NAME_MAX) throw fsError('ENAMETOOLONG');
}

/** Does a layer below the upper show `name` in `parent`? (Then removing it needs a whiteout.) */
export function lowerShows(parent: UnionNode, name: string): boolean {
  const layers = parent.dirLayers!;
  const from = layers[0]!.isUpper ? 1 : 0;
  if (from >= layers.length) return false;
  const hit = lookupLayers(parent, name, from);
  if (hit?.data && hit.data.fd >= 0) N.close(hit.data.fd); // (a metacopy file's data: not wanted here)
  return hit !== null;
}

/**
 * Finds `name` in the layers of directory `parent`. Returns null when no layer shows it
 * (absent, whited out, or an OCI meta name, which is never visible).
 */
export function lookupLayers(parent: UnionNode, name: string, from = 0): LayerHit | null {
  return searchLayers(parent, name, from, parent.dirLayers?.length ?? 0).hit;
}

/**
 * Calls `fn` with where the directory `name` that a lookup in `parent` found (`hit`) is in `layer`,
 * one of hit.dirLayers: a directory descriptor and a name in it (as UnionNode.dirFd opens it,
 * following the hit's redirects), before any node exists for it.
 */
export function atLayerPart<T>(parent: UnionNode, name: string, hit: LayerHit, layer: Layer, fn: (dirfd: number, name: string) => T): T {
  const r = hit.redirects?.get(layer);
  if (!r?.startsWith('/')) return fn(parent.dirFd(layer), r ?? name);
  const fd = openBeneath(layer.fd, r.slice(1));
  try {
    return fn(fd, '');
  } finally {
    N.close(fd);
  }
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
  // (made once: a name made in the loop would be built and hashed again for each of 40 layers)
  const ociName = oci ? OCI_WHITEOUT_PREFIX + name : '';
  for (let i = from; i < to; i++) {
    const layer = layers[i]!;
    // A lower layer whose listing is known and holds neither the name nor its OCI whiteout: nothing to ask.
    const known = parent.lowerNames?.get(layer);
    if (known && !known.has(name) && (!oci || !known.has(ociName))) continue;
    const dirfd = parent.dirFd(layer);
    if ((!known || known.has(name)) && N.lstatMaybe(dirfd, name, st)) {
      if (isKernelWhiteout(st)) return { hit, stopped: true };
      const type = st[ST.mode]! & C.S_IFMT;
      const isDir = type === C.S_IFDIR;
      // (one listxattr serves an empty lower file's whiteout check and the metacopy check below)
      let xnames: string[] | undefined;
      if (type === C.S_IFREG && !layer.isUpper && st[ST.size] === 0 && hasXwhiteoutXattr((xnames = N.llistxattr(dirfd, name)), layer.markerNs)) {
        return { hit, stopped: true };
      }
      if (!hit) {
        if (type === C.S_IFREG && mayBeMetacopy(layer) && isMetacopy(dirfd, name, xnames, layer.markerNs)) {
          return { hit: metacopyHit(parent, layer, dirfd, name, st), stopped: true };
        }
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
        const m = dirMarkers(dirfd, name, oci, layer.markerNs);
        if (m.opaque === 'y') return { hit, stopped: true };
        if (m.opaque === 'x' && !layer.isUpper) layer.xwhiteouts = true;
        if (m.redirect !== null) {
          if (oci && hasOciWhiteout(dirfd, name)) return { hit, stopped: true };
          return { hit: followRedirect(parent, hit, layer, m.redirect, oci), stopped: true };
        }
      } else if (!layer.last && isDir && !layer.noFollowRedirects) {
        // The directory's own last layer, with layers below in the stack: only an absolute redirect
        // can lead further down (the kernel, which follows redirects, reads it in every layer but the last).
        const r = redirectOf(dirfd, name, layer.markerNs);
        if (r !== null) return { hit: followRedirect(parent, hit!, layer, r, oci), stopped: true };
      }
    }
    if (oci && i + 1 < layers.length && (!known || known.has(ociName)) && hasOciWhiteout(dirfd, name)) return { hit, stopped: true };
  }
  return { hit, stopped: false };
}

/**
 * The hit for a metacopy file: its metadata here, its data found below (see findData). Refused with
 * EPERM without metacopy=on, as the kernel refuses it ("refusing to follow metacopy origin").
 */
export function metacopyHit(parent: UnionNode, layer: Layer, dirfd: number, name: string, st: Float64Array): LayerHit {
  // (data-only layers too are reached only with metacopy=on, as on this kernel (6.18))
  if (!layer.metacopy) throw fsError('EPERM');
  checkMetacopyMarker(dirfd, name, layer.markerNs);
  // (the stat first: findData's probes reuse the buffer it may be)
  const own = N.statCopy(st);
  return { layer, st: own, dirLayers: null, data: findData(parent, layer, dirfd, name) };
}

/**
 * Can a regular file of this layer be a metacopy file (is there a layer below for its data)? Not in
 * the bottom layer, unless data-only layers are below it; never in a data-only layer.
 */
export function mayBeMetacopy(layer: Layer): boolean {
  return !layer.last || layer.dataLayers !== undefined;
}

/**
 * Where the data of the metacopy file `name` (in `parent`'s copy in `at`, open as `dirfd`) is, as the
 * kernel's ovl_lookup goes on below a metacopy file: the same name in the parent's layers below, or
 * where its redirect leads (a name in the parent, or an absolute path from each lower layer's root,
 * walked as for a directory); a metacopy file found there leads further down (its own redirect too);
 * the first regular file that is not one holds the data; an absolute path goes on into the data-only
 * layers. A whiteout, anything but a regular file, or nothing at all below: "metacopy with no lower
 * data found", EIO (but see the end for data-only layers).
 */
function findData(parent: UnionNode, at: Layer, dirfd: number, name: string): { layer: Layer; fd: number } {
  const oci = parent.dirLayers![0]?.ociWhiteouts ?? true;
  const st = probe;
  let cur = name;
  let redirect = redirectOf(dirfd, name, at.markerNs);
  let layers = parent.dirLayers!;
  /** The layer searched last (the loop goes on below it). */
  let k = layers.indexOf(at);
  const follow = (r: string | null, from: Layer): void => {
    if (r === null) return;
    checkRedirect(r);
    if (r.startsWith('/')) {
      // (an absolute path leads into the data-only layers too, after the lower ones)
      if (!cur.startsWith('/')) layers = [...stackLayers(parent), ...(at.dataLayers ?? [])];
      cur = r;
      k = layers.indexOf(from);
    } else {
      cur = cur.startsWith('/') ? cur.slice(0, cur.lastIndexOf('/') + 1) + r : r;
    }
  };
  follow(redirect, at);
  for (k++; k < layers.length; k++) {
    const layer = layers[k]!;
    const place = placeIn(parent, layer, cur, oci);
    cur = place.name;
    const { dir, leaf, stop: stopAfter } = place;
    if (dir < 0) {
      if (stopAfter) break;
      continue;
    }
    try {
      if (!N.lstatMaybe(dir, leaf, st)) {
        if ((oci && hasOciWhiteout(dir, leaf)) || stopAfter) break;
        continue;
      }
      if (isKernelWhiteout(st) || isXattrWhiteout(dir, leaf, st, layer.markerNs) || (st[ST.mode]! & C.S_IFMT) !== C.S_IFREG) break;
      if (mayBeMetacopy(layer) && isMetacopy(dir, leaf, undefined, layer.markerNs)) {
        checkMetacopyMarker(dir, leaf, layer.markerNs);
        if (stopAfter) break;
        redirect = redirectOf(dir, leaf, layer.markerNs);
        follow(redirect, layer);
        continue;
      }
      return { layer, fd: N.openat(dir, leaf, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC, 0) };
    } finally {
      if (place.own) N.close(dir);
    }
  }
  // Searched to the end of the data-only layers by an absolute path: the kernel looks there only when
  // the data is read (a lazy lookup), so the file shows, and opening it fails (ENOENT). Stopped before,
  // or never reaching them: EIO at once.
  if (k >= layers.length && cur.startsWith('/') && at.dataLayers !== undefined) return { layer: at.dataLayers[0]!, fd: -1 };
  throw fsError('EIO');
}

/**
 * Where a search that follows redirects looks for `cur` (a name in `parent`, or an absolute path from
 * the layer's root, walked by walkAbsolute) in `layer`: the directory (dir; -1 where the layer has
 * none, `own` when the caller closes it), the name in it, the path for the layers below (name), and
 * whether the walk ended the search below this layer (stop).
 */
function placeIn(parent: UnionNode, layer: Layer, cur: string, oci: boolean): { dir: number; own: boolean; leaf: string; name: string; stop: boolean } {
  if (!cur.startsWith('/')) return { dir: parent.dirFd(layer), own: false, leaf: cur, name: cur, stop: false };
  const w = walkAbsolute(layer, cur, oci);
  return { dir: w.fd, own: w.fd >= 0, leaf: cur.slice(cur.lastIndexOf('/') + 1), name: w.name, stop: w.stop };
}

/**
 * The kernel's redirect syntax (ovl_get_redirect_xattr): a name without "/", or an absolute path
 * without empty components. Anything else is an invalid redirect: EINVAL for the lookup, as there.
 */
function checkRedirect(r: string): void {
  const parts = r.startsWith('/') ? r.slice(1).split('/') : [r];
  const ok = r.startsWith('/') ? r.length > 1 && !parts.some((c) => c === '') : r !== '' && !r.includes('/');
  if (!ok || r.includes('\0')) throw fsError('EINVAL');
  // (the kernel's lookup_one refuses these names: EACCES)
  if (parts.some((c) => c === '.' || c === '..')) throw fsError('EACCES');
}

/** The layers of the whole stack, top first (the root directory is in every layer). */
function stackLayers(node: UnionNode): Layer[] {
  let n = node;
  while (n.parent) n = n.parent;
  return n.dirLayers!;
}

/**
 * The directories of an absolute redirect's path in `layer`, one at a time as the kernel's
 * ovl_lookup_layer walks them: a missing one leaves the layer out (fd -1); a whiteout or a
 * non-directory ends the lookup there and in every layer below (stop); an opaque one ends it in the
 * layers below only; a redirect on one replaces the path for the layers below (name). The caller
 * closes fd.
 */
function walkAbsolute(layer: Layer, path: string, oci: boolean): { fd: number; stop: boolean; name: string } {
  const comps = path.slice(1).split('/');
  const leaf = comps.pop()!;
  const st = probe;
  let name = path;
  let stop = false;
  let fd = N.dup(layer.fd);
  for (let j = 0; j < comps.length; j++) {
    const c = comps[j]!;
    let gone = !N.lstatMaybe(fd, c, st);
    const ends = gone ? oci && hasOciWhiteout(fd, c)
      : isKernelWhiteout(st) || isXattrWhiteout(fd, c, st, layer.markerNs) || (st[ST.mode]! & C.S_IFMT) !== C.S_IFDIR;
    if (!gone && !ends && !layer.last) {
      const m = dirMarkers(fd, c, oci, layer.markerNs);
      if (m.opaque === 'y') {
        stop = true;
      } else if (m.redirect !== null) {
        checkRedirect(m.redirect);
        // (the rest of the path after this directory: the same at the end of the name however its start changed)
        const post = `/${[...comps.slice(j + 1), leaf].join('/')}`;
        const at = name.length - post.length - c.length;
        name = m.redirect.startsWith('/') ? m.redirect + post : name.slice(0, at) + m.redirect + post;
      }
    }
    let next = -1;
    if (!gone && !ends) {
      try {
        next = openBeneath(fd, c);
      } catch (e) {
        // (another filesystem mounted there, or gone meanwhile: nothing in this layer)
        const code = errCode(e);
        if (code !== 'ENOENT' && code !== 'ENOTDIR' && code !== 'ELOOP' && code !== 'EXDEV') {
          N.close(fd);
          throw e;
        }
        gone = true;
      }
    }
    N.close(fd);
    if (gone || ends) return { fd: -1, stop: stop || ends, name };
    fd = next;
  }
  return { fd, stop, name };
}

/**
 * The rest of a lookup below a directory whose copy in `at` carries a redirect (the kernel renamed
 * it with redirect_dir=on; ovl_check_redirect): the layers below hold it under the redirect's name in
 * the parent's copies, or, for an absolute redirect, at that path from each lower layer's root (then
 * in every lower layer below, as the kernel goes on from its root). Whiteouts, non-directories and
 * opaque markers end it as in searchLayers; a redirect found further down replaces the name (a
 * relative one the last component of an absolute path). `hit` gets the layers and their places.
 */
function followRedirect(parent: UnionNode, hit: LayerHit, at: Layer, redirect: string, oci: boolean): LayerHit {
  // (redirect_dir=nofollow: "refusing to follow redirect", as the kernel)
  if (at.noFollowRedirects) throw fsError('EPERM');
  checkRedirect(redirect);
  const st = probe;
  const redirects = (hit.redirects ??= new Map());
  let cur = redirect;
  let layers = cur.startsWith('/') ? stackLayers(parent) : parent.dirLayers!;
  let k = layers.indexOf(at) + 1;
  for (; k < layers.length; k++) {
    const layer = layers[k]!;
    const abs = cur.startsWith('/');
    /** The path walked in this layer (cur may change for the layers below). */
    const walked = cur;
    const at = placeIn(parent, layer, cur, oci);
    cur = at.name;
    const { dir: dirfd, leaf, stop: stopAfter } = at;
    const tmp = at.own ? dirfd : -1;
    if (dirfd < 0) {
      if (stopAfter) return hit;
      continue;
    }
    try {
      const lastHere = k + 1 === layers.length;
      if (!N.lstatMaybe(dirfd, leaf, st)) {
        if (oci && !lastHere && hasOciWhiteout(dirfd, leaf)) return hit;
        if (stopAfter) return hit;
        continue;
      }
      if (isKernelWhiteout(st) || isXattrWhiteout(dirfd, leaf, st, layer.markerNs)) return hit;
      // Below a directory, only directories merge.
      if ((st[ST.mode]! & C.S_IFMT) !== C.S_IFDIR) return hit;
      hit.dirLayers!.push(layer);
      redirects.set(layer, walked);
      if (layer.last || stopAfter) return hit;
      let next: string | null;
      if (!lastHere) {
        const m = dirMarkers(dirfd, leaf, oci, layer.markerNs);
        if (m.opaque === 'y') return hit;
        if (m.opaque === 'x') layer.xwhiteouts = true;
        if (oci && hasOciWhiteout(dirfd, leaf)) return hit;
        next = m.redirect;
      } else {
        // (the parent's last layer: only an absolute redirect leads further down)
        next = redirectOf(dirfd, leaf, layer.markerNs);
        if (next === null || !next.startsWith('/')) return hit;
      }
      if (next !== null) {
        checkRedirect(next);
        if (next.startsWith('/')) {
          cur = next;
          if (!abs) {
            layers = stackLayers(parent);
            k = layers.indexOf(layer);
          }
        } else {
          cur = abs ? cur.slice(0, cur.lastIndexOf('/') + 1) + next : next;
        }
      }
    } finally {
      if (tmp >= 0) N.close(tmp);
    }
  }
  return hit;
}
