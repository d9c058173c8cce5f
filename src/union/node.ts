// Union nodes (the kernel's struct ovl_inode): one UnionNode per object the kernel knows, by nodeid.
//
// A node records where its visible object lives: the topmost layer holding it and, for a
// directory, the stack of layer directories merged into it (top first, ended by an opaque
// directory, a whiteout or a non-directory). Names belong to lookup and to directory operations:
// a node reached by name is addressed as (parent's directory descriptor in its layer, name), but
// once its name can no longer reach it (unlinked, or replaced by another object) the node keeps an
// anchor, a descriptor of the object itself, and every operation on the node goes through that.

import { fsError } from '../fuse/errors.js';
import * as N from '../native/index.js';
import type { FileHandle } from './file.js';
import type { Layer } from './layers.js';

const { C } = N;

export const ROOT_NODEID = 1;

/**
 * The fields most nodes never set (most nodes are files nobody opened, renamed or unlinked), kept
 * apart so that a node costs about half the memory: a walk of 100k files keeps 100k nodes.
 */
class NodeRare {
  dirLayers: Layer[] | null = null;
  childCount = 0;
  /** See UnionNode.children. */
  kids: Map<string, UnionNode> | null = null;
  /** Descriptors of the directory in each layer of dirLayers (O_PATH), opened on demand. */
  dirFds: number[] | null = null;
  unlinked = false;
  aliases: [UnionNode, string][] | null = null;
  lowerNames: Map<Layer, Set<string>> | null = null;
  redirects: Map<Layer, string> | null = null;
  copying: Promise<void> | null = null;
  anchor = -1;
  successor: UnionNode | null = null;
  pins = 0;
  handles: Set<FileHandle> | null = null;
  generation = 0;
  stored = false;
  warmedAt = 0;
  inoPinned = false;
  /** A metacopy file's data: the layer below that holds it, and an O_PATH descriptor of it. */
  dataLayer: Layer | null = null;
  dataFd = -1;
  /** st_blocks of the data file, once asked (a lower file: it does not change). */
  dataBlocks = -1;
  /** The data file passed the checks of verity= (see verifyData). */
  dataVerified = false;
}

export class UnionNode {
  /** Kernel lookup count. */
  lookups = 0;
  /** Open file or directory handles on this node. */
  openCount = 0;
  /** The rarely set fields, made when one is first set to other than its default. */
  private rare: NodeRare | null = null;

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
    dirLayers: Layer[] | null,
  ) {
    if (dirLayers !== null) this.r().dirLayers = dirLayers;
  }

  private r(): NodeRare {
    return (this.rare ??= new NodeRare());
  }

  /** For directories: the layers merged into it, top first (null for anything else). */
  get dirLayers(): Layer[] | null {
    return this.rare === null ? null : this.rare.dirLayers;
  }
  set dirLayers(v: Layer[] | null) {
    if (this.rare !== null || v !== null) this.r().dirLayers = v;
  }

  /** Nodes in `children` (they keep this node alive: their layer objects are reached through it). */
  get childCount(): number {
    return this.rare === null ? 0 : this.rare.childCount;
  }
  set childCount(v: number) {
    if (this.rare !== null || v !== 0) this.r().childCount = v;
  }

  /** Set when the name was removed while the object is still open or known (st_ino is then kept as it is). */
  get unlinked(): boolean {
    return this.rare === null ? false : this.rare.unlinked;
  }
  set unlinked(v: boolean) {
    if (this.rare !== null || v) this.r().unlinked = v;
  }

  /**
   * st_ino stays `ino` while this node lives, whatever its layer object says: a copy-up that could not
   * give the copy an origin (see setOrigin) keeps it so, as the kernel's inode, until the kernel forgets it.
   */
  get inoPinned(): boolean {
    return this.rare === null ? false : this.rare.inoPinned;
  }
  set inoPinned(v: boolean) {
    if (this.rare !== null || v) this.r().inoPinned = v;
  }

  /** When the tree below this directory was last read ahead (ms; Infinity while it is; see UnionFs.readAhead). */
  get warmedAt(): number {
    return this.rare === null ? 0 : this.rare.warmedAt;
  }
  set warmedAt(v: number) {
    if (this.rare !== null || v !== 0) this.r().warmedAt = v;
  }

  /** Further names of an upper hard link made through the mount (the primary is parent/name). */
  get aliases(): [UnionNode, string][] | null {
    return this.rare === null ? null : this.rare.aliases;
  }
  set aliases(v: [UnionNode, string][] | null) {
    if (this.rare !== null || v !== null) this.r().aliases = v;
  }

  /**
   * For a directory: the names each of its lower layer directories holds, as the first full
   * listing read them (lower layers do not change). A lookup skips the layers that do not hold a
   * name instead of asking each one, as the kernel's negative dentries spare it the same work.
   */
  get lowerNames(): Map<Layer, Set<string>> | null {
    return this.rare === null ? null : this.rare.lowerNames;
  }
  set lowerNames(v: Map<Layer, Set<string>> | null) {
    if (this.rare !== null || v !== null) this.r().lowerNames = v;
  }

  /**
   * For a directory the kernel renamed with redirect_dir=on: where its copy in a layer below the
   * redirect is, by layer: a name in the parent's copy ("a"), or a path from the layer's root ("/x/a").
   * Layers not in the map hold it under its own name in the parent's copy.
   */
  get redirects(): Map<Layer, string> | null {
    return this.rare === null ? null : this.rare.redirects;
  }
  set redirects(v: Map<Layer, string> | null) {
    if (this.rare !== null || v !== null) this.r().redirects = v;
  }

  /** A copy-up of this object in progress (its data is copied in chunks between other requests). */
  get copying(): Promise<void> | null {
    return this.rare === null ? null : this.rare.copying;
  }
  set copying(v: Promise<void> | null) {
    if (this.rare !== null || v !== null) this.r().copying = v;
  }

  /**
   * A descriptor of the object itself (O_PATH, or the open copy of an unnamed copy-up), pinned when
   * its name stops reaching it: before an unlink, rmdir or rename takes the name away from an object
   * the kernel still references. -1 while the name is enough.
   */
  get anchor(): number {
    return this.rare === null ? -1 : this.rare.anchor;
  }
  set anchor(v: number) {
    if (this.rare !== null || v !== -1) this.r().anchor = v;
  }

  /**
   * Set when a copy-up gave this node's name a new node because opens of this one are bound to the
   * lower file by passthrough (the kernel binds every open of an inode to one backing file): those
   * opens keep reading the lower file, and every other operation on this node acts on the successor.
   */
  get successor(): UnionNode | null {
    return this.rare === null ? null : this.rare.successor;
  }
  set successor(v: UnionNode | null) {
    if (this.rare !== null || v !== null) this.r().successor = v;
  }

  /** Superseded nodes that forward to this one (they keep it in the table). */
  get pins(): number {
    return this.rare === null ? 0 : this.rare.pins;
  }
  set pins(v: number) {
    if (this.rare !== null || v !== 0) this.r().pins = v;
  }

  /** The open file handles of this node (null until its first open). */
  get handles(): Set<FileHandle> | null {
    return this.rare === null ? null : this.rare.handles;
  }
  set handles(v: Set<FileHandle> | null) {
    if (this.rare !== null || v !== null) this.r().handles = v;
  }

  /** The daemon put the (small, lower) file's data into the kernel's page cache of this inode at an open (or it has none). */
  get dataStored(): boolean {
    return this.rare !== null && this.rare.stored;
  }
  set dataStored(v: boolean) {
    if (this.rare !== null || v) this.r().stored = v;
  }

  /** FUSE generation (with nfs_export=on, see export.ts; 0 otherwise). Fixed for the node's life. */
  get generation(): number {
    return this.rare === null ? 0 : this.rare.generation;
  }
  set generation(v: number) {
    if (this.rare !== null || v !== 0) this.r().generation = v;
  }

  /** Children the kernel currently knows, by name. Changes made through the mount keep it exact. */
  get children(): Map<string, UnionNode> {
    return (this.r().kids ??= new Map());
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

  /**
   * A metacopy file (the kernel's metacopy=on copy-up: metadata in `layer`, data left below): true
   * while its data is read from the layer below (setData), until a copy-up fills it in (clearData).
   */
  get metacopy(): boolean {
    return this.rare !== null && this.rare.dataLayer !== null;
  }

  /** The layer whose file holds the data: `layer`, or for a metacopy file the one below. */
  get dataLayer(): Layer {
    return this.rare?.dataLayer ?? this.layer;
  }

  /** Where the data is read: location(), or for a metacopy file its data file's descriptor. */
  dataLocation(): [number, string] {
    const rare = this.rare;
    if (rare === null || rare.dataLayer === null) return this.location();
    // (data a data-only layer should hold and does not: the kernel's lazy lookup fails the same way)
    if (rare.dataFd < 0) throw fsError('ENOENT');
    return [rare.dataFd, ''];
  }

  /** st_blocks of a metacopy file's data file (stat once: a lower file does not change). */
  dataBlocks(st: Float64Array): number {
    const rare = this.rare!;
    if (rare.dataBlocks < 0) {
      statObject(this.dataLocation(), st);
      rare.dataBlocks = st[N.ST.blocks]!;
    }
    return rare.dataBlocks;
  }

  /** The data file passed the checks of verity= (verity.ts verifyData); reset when the data moves. */
  get dataVerified(): boolean {
    return this.rare?.dataVerified === true;
  }

  set dataVerified(v: boolean) {
    this.r().dataVerified = v;
  }

  /** A metacopy file whose data its absolute redirect should find in a data-only layer, and does not. */
  get dataMissing(): boolean {
    return this.rare !== null && this.rare.dataLayer !== null && this.rare.dataFd < 0;
  }

  /**
   * Makes the node a metacopy file whose data is the file open (O_PATH) as `fd` in `layer`; takes `fd`
   * (-1: missing from the data-only layer `layer`, see dataMissing).
   */
  setData(layer: Layer, fd: number): void {
    this.clearData();
    const rare = this.r();
    rare.dataLayer = layer;
    rare.dataFd = fd;
    rare.dataBlocks = -1;
    rare.dataVerified = false;
  }

  /** The data is the node's own again (copied up, or the node replaced). */
  clearData(): void {
    const rare = this.rare;
    if (rare === null || rare.dataLayer === null) return;
    if (rare.dataFd >= 0) N.close(rare.dataFd);
    rare.dataFd = -1;
    rare.dataLayer = null;
    rare.dataVerified = false;
  }

  /** O_PATH descriptor of this directory in `layer` (which must be one of dirLayers). */
  dirFd(layer: Layer): number {
    const layers = this.dirLayers;
    if (!layers) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    const i = layers.indexOf(layer);
    if (i < 0) throw new Error(`layer ${layer.index} is not part of directory ${this.name}`);
    if (!this.parent) return layer.fd;
    // (a removed directory's topmost layer: its name may lead to another object now)
    if (i === 0 && this.anchor >= 0) return this.anchor;
    const rare = this.r();
    const fds = (rare.dirFds ??= new Array<number>(layers.length).fill(-1));
    let fd = fds[i]!;
    if (fd < 0) {
      const r = rare.redirects?.get(layer);
      fd = r?.startsWith('/') ? openBeneath(layer.fd, r.slice(1))
        : N.openat(this.parent.dirFd(layer), r ?? this.name, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
      fds[i] = fd;
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
    const fds = this.rare?.dirFds;
    if (fds) {
      for (const fd of fds) if (fd >= 0) N.close(fd);
      this.rare!.dirFds = null;
    }
  }

  /** Closes every descriptor the node holds (it is dropped). */
  closeFds(): void {
    this.closeDirFds();
    this.releaseAnchor();
    this.clearData();
  }

  /** Closes the anchor (the name reaches the object again, or the node is dropped). */
  releaseAnchor(): void {
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

/**
 * An O_PATH descriptor of the directory at `path` (relative) under the layer root `root`, never
 * leaving the layer (no symlinks, no "..", no other mount): how a redirect's path is followed.
 */
export function openBeneath(root: number, path: string): number {
  if (path === '') return N.dup(root);
  return N.openat2(root, path, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0,
    C.RESOLVE_BENEATH | C.RESOLVE_NO_SYMLINKS | C.RESOLVE_NO_MAGICLINKS | C.RESOLVE_NO_XDEV);
}
