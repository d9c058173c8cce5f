// Open files and directories (the kernel's fs/overlayfs/file.c): handles, reads through the
// daemon, and passthrough backing ids (the kernel then reads the layer file itself).

import type { UnionNode } from './inode.js';
import type { Layer } from './layers.js';
import * as N from '../native/index.js';

export interface FileHandle {
  readonly kind: 'file';
  node: UnionNode;
  /** Descriptor of the layer file (read-only on a lower, read-write once on the upper). */
  fd: number;
  flags: number;
  /** Set when this open uses the node's passthrough backing. */
  backing: Backing | null;
  /** `fd` is the lower file (re-pointed to the upper one after a copy-up unless `backing`). */
  onLower: boolean;
}

export type Handle = FileHandle;

/** A passthrough backing registered with the kernel; every open of one inode must share it. */
export interface Backing {
  id: number;
  fd: number;
  /** The layer of the file it was made from (a copy-up makes it stale for new opens). */
  layer: Layer;
  refs: number;
  /** Called when the last open using it is released. */
  waiters?: (() => void)[];
}

export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  private next = 1;
  /** Per node: the passthrough backing its opens share. */
  readonly backings = new Map<UnionNode, Backing>();

  add(h: Handle): number {
    const fh = this.next++;
    this.handles.set(fh, h);
    h.node.openCount++;
    return fh;
  }

  file(fh: number): FileHandle {
    const h = this.handles.get(fh);
    if (!h || h.kind !== 'file') throw Object.assign(new Error(`bad file handle ${fh}`), { code: 'EBADF' });
    return h;
  }

  /** Removes a handle; the caller closes what it holds. */
  remove(fh: number): Handle | undefined {
    const h = this.handles.get(fh);
    if (h) {
      this.handles.delete(fh);
      h.node.openCount--;
    }
    return h;
  }

  /** Every open file handle of a node (to re-point them after copy-up). */
  *filesOf(node: UnionNode): Iterable<FileHandle> {
    for (const h of this.handles.values()) if (h.kind === 'file' && h.node === node) yield h;
  }

  get size(): number {
    return this.handles.size;
  }

  /** Registers (or shares) the node's passthrough backing for `fd`. */
  backingFor(devFd: number, node: UnionNode, fd: number): Backing {
    let b = this.backings.get(node);
    if (!b) {
      const own = N.dup(fd);
      try {
        b = { id: N.backingOpen(devFd, own), fd: own, layer: node.layer, refs: 0 };
      } catch (e) {
        N.close(own);
        throw e;
      }
      this.backings.set(node, b);
    }
    b.refs++;
    return b;
  }

  /** Resolves true once no open uses `b` any more, false after `ms`. */
  released(b: Backing, ms: number): Promise<boolean> {
    if (b.refs <= 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      (b.waiters ??= []).push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  releaseBacking(devFd: number, node: UnionNode, b: Backing): void {
    if (--b.refs > 0) return;
    for (const w of b.waiters?.splice(0) ?? []) w();
    if (this.backings.get(node) === b) this.backings.delete(node);
    try {
      if (devFd >= 0) N.backingClose(devFd, b.id);
    } finally {
      N.close(b.fd);
    }
  }
}
