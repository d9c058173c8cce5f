// The layer stack: the upper (if any) and the lower directories, each opened once as an O_PATH
// directory descriptor. Everything below works relative to these descriptors, one name at a time
// with O_NOFOLLOW, so a symlink inside a layer can never lead the daemon outside it.
//
// It also owns inode numbering (the kernel's "xino" idea): when all layers share one filesystem
// the real st_ino is unique already; otherwise the layer's filesystem index goes into the high bits.

import * as N from '../native/index.js';
import type { VerityMode } from './params.js';
import { clonePrivate, commonDir, LOWER_ATIME, openOnPrivate, setAtime, type AtimePolicy, type PrivateMount } from './layer_mount.js';

const { C } = N;

export interface Layer {
  /** 0 = the upper when there is one, then the lowers top first. */
  readonly index: number;
  readonly path: string;
  /** O_PATH directory descriptor of the layer root. */
  readonly fd: number;
  readonly dev: number;
  readonly ino: number;
  readonly isUpper: boolean;
  /** Index of this layer's filesystem among the distinct filesystems of the stack. */
  readonly fsIndex: number;
  /** Whether `.wh.` files in it are read as OCI whiteouts (mount option oci_whiteouts, on by default). */
  readonly ociWhiteouts: boolean;
  /**
   * A directory marked as holding xattr whiteouts (opaque "x") was seen in this lower layer: listings
   * of its directories look for them (as the kernel's per-layer has_xwhiteouts). Set by lookups.
   */
  xwhiteouts?: boolean;
  /** The bottom layer of the stack (no redirect is read there: nothing is below it). */
  last?: boolean;
  /** redirect_dir=nofollow: a redirect in this stack fails the lookup with EPERM (the kernel's way). */
  readonly noFollowRedirects?: boolean;
  /** metacopy=on: a metacopy file in this stack is read, its data found below (else EPERM, as the kernel). */
  readonly metacopy?: boolean;
  /** verity=on or require (see MountParams.verity); absent for off. */
  readonly verity?: Exclude<VerityMode, 'off'>;
  /**
   * The stack's data-only lower layers (below every lower one; lowerdir=...::D, datadir+=D): on a
   * lower layer, where a metacopy file's absolute redirect may lead for its data. Empty for none.
   */
  dataLayers?: Layer[];
  /**
   * Where its overlay markers (opaque, redirect, metacopy, xattr whiteouts, origin, impure) are read:
   * on a mount with userxattr user.overlay.* only, as the kernel; else trusted.overlay.* and
   * user.overlay.* both (the project's rules: semantics.md 4-5; the kernel reads trusted.overlay.* only).
   */
  readonly markerNs: 'both' | 'user';
}

const XINO_SHIFT = 2 ** 44;

export class LayerStack {
  readonly layers: Layer[];
  readonly upper: Layer | null;
  readonly lowers: Layer[];
  /** Data-only lower layers (see Layer.dataLayers), not in `layers`. */
  readonly dataLayers: Layer[];
  /** True when every layer is on one filesystem: real inode numbers are used as they are. */
  readonly sameFs: boolean;

  /** The private mount the upper (and the work directory) are reached through, if any. */
  private upperMount: PrivateMount | null = null;
  /** Private mounts to release at close (their descriptors). */
  private readonly mountFds: number[] = [];

  private constructor(layers: Layer[], dataLayers: Layer[]) {
    this.layers = layers;
    this.dataLayers = dataLayers;
    this.upper = layers[0]?.isUpper ? layers[0] : null;
    this.lowers = layers.filter((l) => !l.isUpper);
    this.sameFs = new Set([...layers, ...dataLayers].map((l) => l.dev)).size === 1;
  }

  /**
   * Opens the layer roots on private mounts (see layer_mount.ts), the upper with the mount's atime
   * policy and on one mount with `workdir`. Paths must already be resolved (realpath) and validated.
   */
  static open(upper: string | null, lowers: string[],
    opts: { atime: AtimePolicy; workdir: string | null; ociWhiteouts: boolean; noFollowRedirects?: boolean; userxattr?: boolean; metacopy?: boolean;
      verity?: VerityMode; dataDirs?: string[]; storedIds?: number | null } = { atime: LOWER_ATIME, workdir: null, ociWhiteouts: true }): LayerStack {
    const regular = (upper ? 1 : 0) + lowers.length;
    const paths = [...(upper ? [upper] : []), ...lowers, ...(opts.dataDirs ?? [])];
    const markerNs = opts.userxattr === true ? 'user' : 'both';
    const devs: number[] = [];
    const st = new Float64Array(16);
    const layers: Layer[] = [];
    const mountFds: number[] = [];
    let upperMount: PrivateMount | null = null;
    const openRoot = (path: string, isUpper: boolean): number => {
      const m = clonePrivate(isUpper && opts.workdir ? commonDir([path, opts.workdir]) : path, isUpper ? opts.atime : LOWER_ATIME, opts.storedIds ?? null);
      const fd = m ? openOnPrivate(m, path) : null;
      if (m && fd !== null) {
        mountFds.push(m.fd);
        if (isUpper) upperMount = m;
        return fd;
      }
      if (m) N.close(m.fd);
      return N.openat(C.AT_FDCWD, path, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    };
    try {
      paths.forEach((path, index) => {
        const isUpper = upper !== null && index === 0;
        const fd = openRoot(path, isUpper);
        layers.push({ index, path, fd, dev: 0, ino: 0, isUpper: false, fsIndex: 0, ociWhiteouts: opts.ociWhiteouts, markerNs });
        N.fstat(fd, st);
        const dev = st[N.ST.dev]!;
        if (!devs.includes(dev)) devs.push(dev);
        layers[index] = { index, path, fd, dev, ino: st[N.ST.ino]!, isUpper, fsIndex: devs.indexOf(dev), ociWhiteouts: opts.ociWhiteouts,
          noFollowRedirects: opts.noFollowRedirects === true, metacopy: opts.metacopy === true, markerNs,
          ...(opts.verity !== undefined && opts.verity !== 'off' ? { verity: opts.verity } : {}) };
      });
    } catch (e) {
      for (const l of layers) N.close(l.fd);
      for (const fd of mountFds) N.close(fd);
      throw e;
    }
    const data = layers.splice(regular);
    if (layers.length > 0) layers[layers.length - 1]!.last = true;
    // (no marker is read in a data-only layer: only the data of files is taken from there)
    for (const l of data) l.last = true;
    if (data.length > 0) for (const l of layers) l.dataLayers = data;
    const stack = new LayerStack(layers, data);
    stack.upperMount = upperMount;
    stack.mountFds.push(...mountFds);
    return stack;
  }

  /** An O_PATH descriptor of a directory on the upper's filesystem (the work directory), on the upper's mount. */
  openBesideUpper(path: string): number {
    const fd = this.upperMount ? openOnPrivate(this.upperMount, path) : null;
    return fd ?? N.openat(C.AT_FDCWD, path, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  }

  /** A remount's new atime flags for the upper. */
  setUpperAtime(p: AtimePolicy): void {
    if (this.upperMount) setAtime(this.upperMount, p);
  }

  close(): void {
    for (const l of [...this.layers, ...this.dataLayers]) N.close(l.fd);
    for (const fd of this.mountFds.splice(0)) N.close(fd);
  }

  /** The st_ino the mount shows for an object whose real inode number is `ino` in `layer`. */
  inoOf(layer: Layer, ino: number): number {
    if (this.sameFs) return ino;
    if (ino < XINO_SHIFT) return layer.fsIndex * XINO_SHIFT + ino;
    // Very large inode numbers: fold them into the layer's range (collisions are then possible,
    // as with the kernel's xino overflow).
    return layer.fsIndex * XINO_SHIFT + (ino % XINO_SHIFT);
  }
}
