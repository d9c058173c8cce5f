// Union nodes (the kernel's struct ovl_inode): one UnionNode per object the kernel knows, by nodeid.
//
// A node records where its visible object lives: the topmost layer holding it and, for a
// directory, the stack of layer directories merged into it (top first, ended by an opaque
// directory, a whiteout or a non-directory). Names belong to lookup and to directory operations:
// a node reached by name is addressed as (parent's directory descriptor in its layer, name), but
// once its name can no longer reach it (unlinked, or replaced by another object) the node keeps an
// anchor, a descriptor of the object itself, and every operation on the node goes through that.

import * as N from '../native/index.js';
import type { FileHandle } from './file.js';
import type { DirEntry } from './readdir.js';
import type { Layer } from './layers.js';

const { C } = N;

export const ROOT_NODEID = 1;

export class UnionNode {
  /** Kernel lookup count. */
  lookups = 0;
  /** Nodes in `children` (they keep this node alive: their layer objects are reached through it). */
  childCount = 0;
  /** Open file or directory handles on this node. */
  openCount = 0;
  /** See `children` (made on first use: most nodes are not directories). */
  private kids: Map<string, UnionNode> | null = null;
  /** Descriptors of this directory in each layer of `dirLayers` (O_PATH), opened on demand. */
  private dirFds: number[] | null = null;
  /** Set when the name was removed while the object is still open or known (st_ino is then kept as it is). */
  unlinked = false;
  /** Further names of an upper hard link made through the mount (the primary is parent/name). */
  aliases: [UnionNode, string][] | null = null;
  /**
   * For a directory: the names each of its lower layer directories holds, as the first full
   * listing read them (lower layers do not change). A lookup skips the layers that do not hold a
   * name instead of asking each one, as the kernel's negative dentries spare it the same work.
   */
  lowerNames: Map<Layer, Set<string>> | null = null;
  /** For a directory: listings being read, by generation (see UnionFs.readdir). */
  listings: Map<number, DirEntry[]> | null = null;
  /** A copy-up of this object in progress (its data is copied in chunks between other requests). */
  copying: Promise<void> | null = null;
  /**
   * A descriptor of the object itself (O_PATH, or the open copy of an unnamed copy-up), pinned when
   * its name stops reaching it: before an unlink, rmdir or rename takes the name away from an object
   * the kernel still references. -1 while the name is enough.
   */
  anchor = -1;
  /**
   * Set when a copy-up gave this node's name a new node because opens of this one are bound to the
   * lower file by passthrough (the kernel binds every open of an inode to one backing file): those
   * opens keep reading the lower file, and every other operation on this node acts on the successor.
   */
  successor: UnionNode | null = null;
  /** Superseded nodes that forward to this one (they keep it in the table). */
  pins = 0;
  /** The open file handles of this node (null until its first open). */
  handles: Set<FileHandle> | null = null;
  /** FUSE generation (with nfs_export=on, see export.ts; 0 otherwise). Fixed for the node's life. */
  generation = 0;

  constructor(
    readonly nodeid: number,
    /** st_ino last shown for this object (unchanged by copy-up, except of a lower hard link). */
    public ino: number,
    public parent: UnionNode | null,
    public name: string,
    /** S_IFMT bits of the object. */
    readonly type: number,
    /** The topmost layer holding the object. */
    public layer: Layer,
    /** For directories: the layers merged into it, top first. */
    public dirLayers: Layer[] | null,
  ) {}

  /** Children the kernel currently knows, by name. Changes made through the mount keep it exact. */
  get children(): Map<string, UnionNode> {
    return (this.kids ??= new Map());
  }

  get isDir(): boolean {
    return this.type === C.S_IFDIR;
  }

  /** A directory with more than one layer below the mount point (st_nlink is then 1, as in the kernel). */
  get isMerged(): boolean {
    return this.dirLayers !== null && this.dirLayers.length > 1;
  }

  /**
   * (dirfd, name) addressing this node's visible object for *at() system calls: the anchor with an
   * empty name (AT_EMPTY_PATH) once the name no longer reaches the object, else its name in its
   * parent's layer directory.
   */
  location(): [number, string] {
    if (this.anchor >= 0) return [this.anchor, ''];
    if (!this.parent) return [this.layer.fd, ''];
    return [this.parent.dirFd(this.layer), this.name];
  }

  /** The node whose object operations on this one reach (itself unless superseded by a copy-up). */
  get live(): UnionNode {
    let n: UnionNode = this;
    while (n.successor) n = n.successor;
    return n;
  }

  /**
   * Pins a descriptor of the object before its name is taken away (unlink, rmdir, rename over it), if
   * the kernel still references the node or it is open: later operations through descriptors reach
   * it there. A directory pins its descriptor in its topmost layer.
   */
  pinAnchor(): void {
    if (this.anchor >= 0 || !this.parent) return;
    if (this.lookups === 0 && this.openCount === 0 && this.pins === 0) return;
    if (this.dirLayers) {
      this.anchor = N.dup(this.dirFd(this.layer));
      return;
    }
    this.anchor = N.openat(this.parent.dirFd(this.layer), this.name, C.O_PATH | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
  }

  /** O_PATH descriptor of this directory in `layer` (which must be one of dirLayers). */
  dirFd(layer: Layer): number {
    const layers = this.dirLayers;
    if (!layers) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    const i = layers.indexOf(layer);
    if (i < 0) throw new Error(`layer ${layer.index} is not part of directory ${this.name}`);
    if (!this.parent) return layer.fd;
    if (!this.dirFds) this.dirFds = new Array<number>(layers.length).fill(-1);
    let fd = this.dirFds[i]!;
    if (fd < 0) {
      fd = N.openat(this.parent.dirFd(layer), this.name, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      this.dirFds[i] = fd;
    }
    return fd;
  }

  /** Replaces the directory's layer stack (after copy-up or when it becomes opaque). */
  setDirLayers(layers: Layer[]): void {
    this.closeDirFds();
    this.dirLayers = layers;
    this.layer = layers[0]!;
  }

  /** Closes the directory descriptors (they are reopened on demand). */
  closeDirFds(): void {
    if (this.dirFds) {
      for (const fd of this.dirFds) if (fd >= 0) N.close(fd);
      this.dirFds = null;
    }
  }

  /** Closes every descriptor the node holds (it is dropped). */
  closeFds(): void {
    this.closeDirFds();
    if (this.anchor >= 0) {
      N.close(this.anchor);
      this.anchor = -1;
    }
  }
}

/** AT_EMPTY_PATH where a location is a descriptor of the object itself (an empty name). */
export function atFlags(loc: [number, string], flags: number): number {
  return loc[1] === '' ? flags | C.AT_EMPTY_PATH : flags;
}

/**
 * Opens the object at a location: by name in its directory, or through the /proc link of its
 * descriptor (how an O_PATH descriptor is reopened for I/O; O_NOFOLLOW would refuse the link).
 */
export function openObject(loc: [number, string], flags: number): number {
  const [dirfd, name] = loc;
  if (name === '') return N.openat(C.AT_FDCWD, `/proc/self/fd/${dirfd}`, flags & ~C.O_NOFOLLOW, 0);
  return N.openat(dirfd, name, flags, 0);
}

/** lstat of the object at a location. */
export function statObject(loc: [number, string], st: Float64Array): void {
  N.fstatat(loc[0], loc[1], atFlags(loc, C.AT_SYMLINK_NOFOLLOW), st);
}

/** chmod of the object at a location (fchmodat refuses an empty name; the /proc link reaches it). */
export function chmodObject(loc: [number, string], mode: number): void {
  if (loc[1] === '') N.fchmodat(C.AT_FDCWD, `/proc/self/fd/${loc[0]}`, mode, 0);
  else N.fchmodat(loc[0], loc[1], mode, 0);
}
