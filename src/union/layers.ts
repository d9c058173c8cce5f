// The layer stack: the upper (if any) and the lower directories, each opened once as an O_PATH
// directory descriptor. Everything below works relative to these descriptors, one name at a time
// with O_NOFOLLOW, so a symlink inside a layer can never lead the daemon outside it.
//
// It also owns inode numbering (the kernel's "xino" idea): when all layers share one filesystem
// the real st_ino is unique already; otherwise the layer's filesystem index goes into the high bits.

import * as N from '../native/index.js';

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
}

const XINO_SHIFT = 2 ** 44;

export class LayerStack {
  readonly layers: Layer[];
  readonly upper: Layer | null;
  readonly lowers: Layer[];
  /** True when every layer is on one filesystem: real inode numbers are used as they are. */
  readonly sameFs: boolean;

  private constructor(layers: Layer[]) {
    this.layers = layers;
    this.upper = layers[0]?.isUpper ? layers[0] : null;
    this.lowers = layers.filter((l) => !l.isUpper);
    this.sameFs = new Set(layers.map((l) => l.dev)).size === 1;
  }

  /** Opens the layer roots. Paths must already be resolved (realpath) and validated. */
  static open(upper: string | null, lowers: string[], opts: { ociWhiteouts: boolean } = { ociWhiteouts: true }): LayerStack {
    const paths = upper ? [upper, ...lowers] : lowers;
    const devs: number[] = [];
    const st = new Float64Array(16);
    const layers: Layer[] = [];
    try {
      paths.forEach((path, index) => {
        const fd = N.openat(C.AT_FDCWD, path, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
        layers.push({ index, path, fd, dev: 0, ino: 0, isUpper: false, fsIndex: 0, ociWhiteouts: opts.ociWhiteouts });
        N.fstat(fd, st);
        const dev = st[N.ST.dev]!;
        if (!devs.includes(dev)) devs.push(dev);
        layers[index] = { index, path, fd, dev, ino: st[N.ST.ino]!, isUpper: upper !== null && index === 0, fsIndex: devs.indexOf(dev),
          ociWhiteouts: opts.ociWhiteouts };
      });
    } catch (e) {
      for (const l of layers) N.close(l.fd);
      throw e;
    }
    return new LayerStack(layers);
  }

  close(): void {
    for (const l of this.layers) N.close(l.fd);
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
