// Union inodes: one UnionNode per object the kernel knows (its nodeid), the table that maps
// nodeids to nodes, exact lookup counts, st_ino assignment and getattr of the merged object.
//
// A node records where its visible object lives: the topmost layer holding it and, for a
// directory, the stack of layer directories merged into it (top first, ended by an opaque
// directory, a whiteout or a non-directory). Layer objects are reached as (parent's directory
// descriptor in that layer, name), never by path strings.

import type { Attr } from '../fuse/types.js';
import * as N from '../native/index.js';
import type { OriginStore } from './cache.js';
import type { DirEntry } from './readdir.js';
import type { Layer, LayerStack } from './layers.js';
import { originIno, readOrigin } from './origin.js';

const { C, ST } = N;

export const ROOT_NODEID = 1;

export class UnionNode {
  /** Kernel lookup count. */
  lookups = 0;
  /** Nodes in `children` (they keep this node alive: their layer objects are reached through it). */
  childCount = 0;
  /** Open file or directory handles on this node. */
  openCount = 0;
  /** Children the kernel currently knows, by name. Changes made through the mount keep it exact. */
  readonly children = new Map<string, UnionNode>();
  /** Descriptors of this directory in each layer of `dirLayers` (O_PATH), opened on demand. */
  private dirFds: number[] | null = null;
  /** Set when the object was removed while still open or known (st_nlink then reads 0). */
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

  get isDir(): boolean {
    return this.type === C.S_IFDIR;
  }

  /** A directory with more than one layer below the mount point (st_nlink is then 1, as in the kernel). */
  get isMerged(): boolean {
    return this.dirLayers !== null && this.dirLayers.length > 1;
  }

  /** (dirfd, name) addressing this node's visible object for *at() system calls. */
  location(): [number, string] {
    if (!this.parent) return [this.layer.fd, ''];
    return [this.parent.dirFd(this.layer), this.name];
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
    this.closeFds();
    this.dirLayers = layers;
    this.layer = layers[0]!;
  }

  /** Closes the directory descriptors (they are reopened on demand). */
  closeFds(): void {
    if (this.dirFds) {
      for (const fd of this.dirFds) if (fd >= 0) N.close(fd);
      this.dirFds = null;
    }
  }
}

export class InodeTable {
  readonly root: UnionNode;
  private readonly nodes = new Map<number, UnionNode>();
  private nextId = ROOT_NODEID + 1;
  private readonly st = new Float64Array(16);
  /**
   * st_ino kept by copied-up objects: "layer index:real inode number" -> the st_ino shown before
   * copy-up. Recorded and read for the upper only: once an upper is reused as a lower, the kernel
   * shows its objects' own inode numbers, and so does strata.
   */
  private readonly origins: Map<string, number>;
  /**
   * Upper objects without such a record, by real inode number: the st_ino their overlay.origin
   * xattr gives (written by the kernel, or by strata without the cache), or null for their own.
   */
  private readonly upperOrigins = new Map<number, number | null>();

  constructor(readonly stack: LayerStack, private readonly originStore: OriginStore | null = null, origins?: Map<string, number>) {
    this.origins = origins ?? new Map();
    const top = stack.layers[0]!;
    N.fstat(top.fd, this.st);
    this.root = new UnionNode(ROOT_NODEID, stack.inoOf(top, this.st[ST.ino]!), null, '', C.S_IFDIR, top, [...stack.layers]);
    this.root.lookups = 1;
    this.nodes.set(ROOT_NODEID, this.root);
  }

  get size(): number {
    return this.nodes.size;
  }

  get(nodeid: number): UnionNode {
    const n = this.nodes.get(nodeid);
    if (!n) throw Object.assign(new Error(`unknown nodeid ${nodeid}`), { code: 'ESTALE' });
    return n;
  }

  /** The node for `name` in `parent`, created for a fresh lookup result. */
  create(parent: UnionNode, name: string, type: number, layer: Layer, dirLayers: Layer[] | null, realIno: number): UnionNode {
    const ino = this.inoFor(layer, realIno, () => [parent.dirFd(layer), name]);
    const node = new UnionNode(this.nextId++, ino, parent, name, type, layer, dirLayers);
    this.attach(parent, name, node);
    this.nodes.set(node.nodeid, node);
    return node;
  }

  /**
   * The st_ino shown for the object with real inode `realIno` in `layer`. `at` locates it: an
   * upper object without a record keeps the st_ino of its origin, as on the kernel (see origin.ts).
   */
  inoFor(layer: Layer, realIno: number, at?: () => [number, string]): number {
    if (layer.isUpper && this.origins.size > 0) {
      const origin = this.origins.get(`${layer.index}:${realIno}`);
      if (origin !== undefined) return origin;
    }
    if (at && layer.isUpper) {
      let ino = this.upperOrigins.get(realIno);
      if (ino === undefined) {
        const [dirfd, name] = at();
        const o = readOrigin(this.stack, dirfd, name);
        ino = o ? originIno(this.stack, o) : null;
        this.upperOrigins.set(realIno, ino);
      }
      if (ino !== null) return ino;
    }
    return this.stack.inoOf(layer, realIno);
  }

  /** A copy-up keeps the object's st_ino: remember it for the upper copy. */
  recordOrigin(upperIno: number, ino: number): void {
    const upper = this.stack.upper!;
    if (upperIno === ino) return;
    this.origins.set(`${upper.index}:${upperIno}`, ino);
    this.originStore?.set(upper, upperIno, ino);
  }

  /** The upper object with this inode number is gone (its number may be reused). */
  forgetOrigin(upperIno: number): void {
    const upper = this.stack.upper!;
    this.upperOrigins.delete(upperIno);
    if (this.origins.delete(`${upper.index}:${upperIno}`)) this.originStore?.delete(upper, upperIno);
  }

  /** Makes `node` the child `name` of `parent` (replacing any other node there). */
  attach(parent: UnionNode, name: string, node: UnionNode): void {
    const old = parent.children.get(name);
    if (old === node) return;
    node.parent = parent;
    node.name = name;
    parent.children.set(name, node);
    if (old) this.maybeDrop(old);
    else parent.childCount++;
  }

  /** Takes `node` out of its parent's children (it stays reachable by nodeid while referenced). */
  detach(node: UnionNode): void {
    const parent = node.parent;
    if (!parent || parent.children.get(node.name) !== node) return;
    parent.children.delete(node.name);
    parent.childCount--;
    // The node keeps its parent pointer so its layer object stays addressable while open.
    this.maybeDrop(parent);
  }

  /** One more name for `node` (link(2) through the mount): the kernel sees one inode. */
  addAlias(node: UnionNode, parent: UnionNode, name: string): void {
    const old = parent.children.get(name);
    parent.children.set(name, node);
    if (old) this.maybeDrop(old);
    else parent.childCount++;
    (node.aliases ??= []).push([parent, name]);
  }

  /** The name parent/name of `node` is gone (unlink, rmdir, or replaced by a rename). */
  removeName(node: UnionNode, parent: UnionNode, name: string): void {
    if (parent.children.get(name) === node) {
      parent.children.delete(name);
      parent.childCount--;
    }
    if (node.parent === parent && node.name === name) {
      const next = node.aliases?.shift();
      if (next) {
        node.parent = next[0];
        node.name = next[1];
      } else {
        node.unlinked = true;
      }
    } else if (node.aliases) {
      node.aliases = node.aliases.filter(([p, n]) => p !== parent || n !== name);
    }
    if (node.aliases?.length === 0) node.aliases = null;
    this.maybeDrop(node);
    this.maybeDrop(parent);
  }

  /** rename(2) of a known node. */
  move(node: UnionNode, oldParent: UnionNode, oldName: string, newParent: UnionNode, newName: string): void {
    if (oldParent.children.get(oldName) === node) {
      oldParent.children.delete(oldName);
      oldParent.childCount--;
    }
    const old = newParent.children.get(newName);
    newParent.children.set(newName, node);
    if (old && old !== node) this.maybeDrop(old);
    else if (!old) newParent.childCount++;
    if (node.parent === oldParent && node.name === oldName) {
      node.parent = newParent;
      node.name = newName;
    } else if (node.aliases) {
      for (const a of node.aliases) if (a[0] === oldParent && a[1] === oldName) [a[0], a[1]] = [newParent, newName];
    }
    this.maybeDrop(oldParent);
  }

  /** rename(2) with RENAME_EXCHANGE: the two names swap objects. */
  exchange(p1: UnionNode, n1: string, p2: UnionNode, n2: string): void {
    const a = p1.children.get(n1);
    const b = p2.children.get(n2);
    if (a) this.move(a, p1, n1, p2, `\0swap`);
    if (b) this.move(b, p2, n2, p1, n1);
    if (a) this.move(a, p2, `\0swap`, p2, n2);
  }

  /** Counts one more kernel reference (a successful LOOKUP/CREATE/... reply). */
  ref(node: UnionNode): void {
    node.lookups++;
  }

  forget(nodeid: number, n: number): void {
    const node = this.nodes.get(nodeid);
    if (!node || node === this.root) return;
    node.lookups = Math.max(0, node.lookups - n);
    this.maybeDrop(node);
  }

  /** Drops a node nobody references any more, then its parent if that was the last reason to keep it. */
  maybeDrop(node: UnionNode): void {
    let n: UnionNode | null = node;
    while (n && n !== this.root && n.lookups === 0 && n.childCount === 0 && n.openCount === 0) {
      this.nodes.delete(n.nodeid);
      n.closeFds();
      // Other names of a hard-linked node must not hand out the dropped node again.
      if (n.aliases) {
        const aliases: [UnionNode, string][] = n.aliases;
        n.aliases = null;
        for (const [p, name] of aliases as [UnionNode, string][]) {
          if (p.children.get(name) !== n) continue;
          p.children.delete(name);
          p.childCount--;
          this.maybeDrop(p);
        }
      }
      const parent: UnionNode | null = n.parent;
      if (parent && parent.children.get(n.name) === n) {
        parent.children.delete(n.name);
        parent.childCount--;
        n = parent;
      } else {
        n = null;
      }
    }
  }

  /** Attributes of the merged object, read from its topmost layer. */
  attr(node: UnionNode, st: Float64Array = this.st): Attr {
    const [dirfd, name] = node.location();
    N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW | C.AT_EMPTY_PATH, st);
    return this.attrFrom(node, st);
  }

  /** Builds the merged attributes from a layer object's stat. */
  attrFrom(node: UnionNode, st: Float64Array): Attr {
    const ino = node.unlinked || !node.parent ? node.ino : this.inoFor(node.layer, st[ST.ino]!, () => node.location());
    node.ino = ino;
    return attrOf(node, st, ino);
  }
}

function attrOf(node: UnionNode, st: Float64Array, ino: number): Attr {
  let nlink = st[ST.nlink]!;
  if (node.isMerged) nlink = 1;
  else if (node.unlinked) nlink = 0;
  return {
    ino,
    size: st[ST.size]!,
    blocks: st[ST.blocks]!,
    atimeSec: st[ST.atimeSec]!,
    atimeNsec: st[ST.atimeNsec]!,
    mtimeSec: st[ST.mtimeSec]!,
    mtimeNsec: st[ST.mtimeNsec]!,
    ctimeSec: st[ST.ctimeSec]!,
    ctimeNsec: st[ST.ctimeNsec]!,
    mode: st[ST.mode]!,
    nlink,
    uid: st[ST.uid]!,
    gid: st[ST.gid]!,
    rdev: st[ST.rdev]! % 4294967296,
    blksize: st[ST.blksize]!,
  };
}
