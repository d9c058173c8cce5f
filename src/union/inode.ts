// Union inodes (the kernel's fs/overlayfs/inode.c): the table that maps nodeids to nodes, exact
// lookup counts, st_ino assignment, and the attributes of the merged object (getattr, setattr).

import type { ExportTable } from './export.js';
import { fsError } from '../fuse/errors.js';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
} from '../fuse/protocol.js';
import type { Attr, SetattrRequest } from '../fuse/types.js';
import * as N from '../native/index.js';
import type { OriginStore } from './cache.js';
import type { FileHandle } from './file.js';
import type { IdMap } from './idmap.js';
import { atFlags, chmodObject, openObject, ROOT_NODEID, UnionNode } from './node.js';
import type { Layer, LayerStack } from './layers.js';
import type { LayerHit } from './namei.js';
import { originIno, readOrigin } from './origin.js';

export { ROOT_NODEID, UnionNode };

const { C, ST } = N;

/** Entries of InodeTable.upperOrigins (a daemon that creates millions of files does not keep them all). */
const UPPER_ORIGINS_MAX = 65536;

/**
 * Nodes by nodeid, where the table hands nodeids out itself: an array indexed by nodeid, each freed
 * nodeid given out again (as libfuse's and go-fuse's servers do; the kernel sends FORGET only once
 * it holds the inode no more), so that the array is as long as the most nodes held at once. A Map
 * of 100k nodes took 3.5 MiB, this array 0.8 MiB.
 */
class DenseNodes {
  private readonly slots: (UnionNode | undefined)[] = [undefined];
  private readonly freed: number[] = [];
  size = 0;

  get(id: number): UnionNode | undefined {
    return this.slots[id];
  }

  has(id: number): boolean {
    return this.slots[id] !== undefined;
  }

  set(id: number, node: UnionNode): void {
    if (this.slots[id] === undefined) this.size++;
    this.slots[id] = node;
  }

  delete(id: number): void {
    if (this.slots[id] === undefined) return;
    this.slots[id] = undefined;
    this.size--;
    this.freed.push(id);
  }

  /** A nodeid no node has (its slot is taken even before the node is set). */
  newId(): number {
    const id = this.freed.pop();
    if (id !== undefined) return id;
    this.slots.push(undefined);
    return this.slots.length - 1;
  }
}

export class InodeTable {
  readonly root: UnionNode;
  /** By nodeid: dense while this table names nodes, a Map when the export table does (nfs_export). */
  private nodes: DenseNodes | Map<number, UnionNode> = new DenseNodes();
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
   * Only what reading the xattr again would give: emptied when it reaches UPPER_ORIGINS_MAX.
   */
  private readonly upperOrigins = new Map<number, number | null>();
  /** Nodes of upper non-directories with more than one name, by st_ino (see linkedNode). */
  private readonly links = new Map<number, UnionNode>();
  /** nfs_export=on: nodeids that name one object for good, and where each was last seen (export.ts). */
  exports: ExportTable | null = null;
  /**
   * Called when a node whose st_ino was pinned (inoPinned: a copy without the origin that would keep
   * it) is dropped while its name still leads to it: from now on the name shows the copy's own st_ino,
   * as on the kernel's overlay once it evicts the inode, so the d_ino its parent lists changes too.
   */
  onPinnedDrop: ((parent: UnionNode) => void) | null = null;
  /** The mount's owner mapping (uidmapping= ...): attributes show owners through it. */
  ids: IdMap | null = null;
  private readonly taken = (id: number): boolean => this.nodes.has(id);

  /** Nodeids come from `table` from now on (nfs_export=on; called before the first lookup). */
  useExports(table: ExportTable): void {
    const nodes = new Map<number, UnionNode>();
    nodes.set(ROOT_NODEID, this.root);
    this.nodes = nodes;
    this.exports = table;
  }

  constructor(readonly stack: LayerStack, private readonly originStore: OriginStore | null = null, origins?: Map<string, number>) {
    this.origins = origins ?? new Map();
    const top = stack.layers[0]!;
    N.fstat(top.fd, this.st);
    this.root = new UnionNode(ROOT_NODEID, stack.inoOf(top, this.st[ST.ino]!), null, '', C.S_IFDIR, top, [...stack.layers]);
    this.root.lookups = 1;
    const dense = this.nodes as DenseNodes;
    if (dense.newId() !== ROOT_NODEID) throw new Error('the root must be nodeid 1');
    dense.set(ROOT_NODEID, this.root);
  }

  get size(): number {
    return this.nodes.size;
  }

  /** The node with this nodeid, if the daemon holds it. */
  find(nodeid: number): UnionNode | undefined {
    return this.nodes.get(nodeid);
  }

  /** A nodeid for a new node of the object with st_ino `ino` (`want`: the one a file handle names). */
  private newId(ino: number, want?: number, parent?: UnionNode, name?: string): number {
    if (want !== undefined) return want;
    return this.exports ? this.exports.idFor(ino, this.taken, parent?.nodeid, name) : (this.nodes as DenseNodes).newId();
  }

  /** A new node's generation (its record's, if any, when nodeids name objects for good), and its record. */
  private born(node: UnionNode): void {
    const x = this.exports;
    if (!x) return;
    node.generation = x.generationFor(node.nodeid, node.ino);
    x.note(node);
  }

  get(nodeid: number): UnionNode {
    const n = this.nodes.get(nodeid);
    if (!n) throw Object.assign(new Error(`unknown nodeid ${nodeid}`), { code: 'ESTALE' });
    return n;
  }

  /** The node for a lookup's result (see create), with the places a redirect gave its layers. */
  fromHit(parent: UnionNode, name: string, hit: LayerHit, want?: number): UnionNode {
    const type = hit.st[N.ST.mode]! & C.S_IFMT;
    let node: UnionNode;
    try {
      node = this.create(parent, name, type, hit.layer, hit.dirLayers, hit.st[N.ST.ino]!, want, false, hit.st[N.ST.nlink]!);
    } catch (e) {
      if (hit.data && hit.data.fd >= 0) N.close(hit.data.fd);
      throw e;
    }
    if (hit.redirects) node.redirects = hit.redirects;
    // (a node found again keeps the data it has)
    if (hit.data && !node.metacopy && node.layer === hit.layer) node.setData(hit.data.layer, hit.data.fd);
    else if (hit.data && hit.data.fd >= 0) N.close(hit.data.fd);
    return node;
  }

  /**
   * The node for `name` in `parent`, created for a fresh lookup result. `made`: the daemon has just
   * made the object in the upper, so it carries no overlay.origin to read.
   */
  create(parent: UnionNode, name: string, type: number, layer: Layer, dirLayers: Layer[] | null, realIno: number, want?: number, made = false,
    nlink = 1): UnionNode {
    let ino: number;
    if (!layer.isUpper) ino = this.stack.inoOf(layer, realIno);
    else if (made) {
      this.noteUpperOrigin(realIno, null);
      ino = this.inoFor(layer, realIno);
    } else {
      // (the locator is only ever asked for an upper object: no closure for a lower one)
      ino = this.inoFor(layer, realIno, () => [parent.dirFd(layer), name]);
    }
    // (not for a file handle's nodeid: the handle names the node it was made for)
    const upperFile = layer.isUpper && type !== C.S_IFDIR && want === undefined;
    const known = upperFile ? this.linkedNode(ino, type, layer, realIno) : null;
    if (known?.unlinked) {
      // its other names are gone, this one leads to it still (a descriptor holds it)
      known.unlinked = false;
      known.releaseAnchor();
      this.attach(parent, name, known);
      return known;
    }
    if (known && nlink > 1) {
      this.addAlias(known, parent, name);
      return known;
    }
    const linked = upperFile && nlink > 1;
    const node = new UnionNode(this.newId(ino, want, parent, name), ino, parent, name, type, layer, dirLayers);
    this.born(node);
    this.attach(parent, name, node);
    this.nodes.set(node.nodeid, node);
    if (linked) this.links.set(ino, node);
    return node;
  }

  /**
   * The node of the upper object with st_ino `ino` that had several names, if the table holds one:
   * every name of a hard-linked upper object leads to one node (one inode for the kernel, as the
   * kernel's overlay hashes its inodes by the upper inode), also for names looked up after a FORGET
   * or a remount, and after the names the node knew were removed while a descriptor held it.
   */
  private linkedNode(ino: number, type: number, layer: Layer, realIno: number): UnionNode | null {
    const n = this.links.get(ino);
    if (!n) return null;
    // (distinct objects never show one st_ino: a node still named, of that type, in the upper, is the
    // object; one whose names are all gone, only if its descriptor still reaches that inode)
    let same = this.nodes.get(n.nodeid) === n && !n.successor && n.layer === layer && n.type === type;
    if (same && n.unlinked) {
      const [dirfd, name] = n.location();
      try {
        N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW | C.AT_EMPTY_PATH, this.st);
        same = this.st[ST.ino] === realIno && this.st[ST.nlink]! > 0;
      } catch {
        same = false;
      }
    }
    if (!same) {
      this.links.delete(ino);
      return null;
    }
    return n;
  }

  /** A node for an object without a name (an O_TMPFILE), reached through its descriptor `anchor`. */
  createUnnamed(parent: UnionNode, type: number, layer: Layer, realIno: number, anchor: number): UnionNode {
    const ino = this.stack.inoOf(layer, realIno);
    const node = new UnionNode(this.newId(ino), ino, parent, '', type, layer, null);
    node.anchor = anchor;
    node.unlinked = true;
    this.born(node); // (no record: an unnamed object has no handle to find again)
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
        this.noteUpperOrigin(realIno, ino);
      }
      if (ino !== null) return ino;
    }
    return this.stack.inoOf(layer, realIno);
  }

  /** Has the upper object with inode number `realIno` been seen with an origin that decodes (no read)? */
  knowsOrigin(realIno: number): boolean {
    return (this.upperOrigins.get(realIno) ?? null) !== null;
  }

  /** The upper object with inode number `realIno` was given an origin: its st_ino is read again. */
  originWritten(realIno: number): void {
    this.upperOrigins.delete(realIno);
  }

  private noteUpperOrigin(realIno: number, ino: number | null): void {
    if (this.upperOrigins.size >= UPPER_ORIGINS_MAX) this.upperOrigins.clear();
    this.upperOrigins.set(realIno, ino);
  }

  /**
   * A copy-up keeps the object's st_ino: remember it for the upper copy. `hasOriginXattr`: the copy
   * carries overlay.origin, which gives the same st_ino after a crash (no journal line needed).
   */
  recordOrigin(upperIno: number, ino: number, hasOriginXattr = false): void {
    const upper = this.stack.upper!;
    if (upperIno === ino) return;
    this.origins.set(`${upper.index}:${upperIno}`, ino);
    this.originStore?.set(upper, upperIno, ino, !hasOriginXattr);
  }

  /** The object now shows st_ino `ino` (a lower hard link copied up gets its own). */
  reidentify(node: UnionNode, ino: number): void {
    if (node.ino === ino) return;
    node.ino = ino;
    this.exports?.note(node);
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
    this.exports?.note(node);
  }

  /**
   * `node`'s object was removed behind the kernel's back, which keeps its name: the name stays with
   * the node (operations on it reach the removed object; name changes refuse it) while it is
   * referenced (CopyUp.replaced pins it for the rest of the mount).
   */
  removedInPlace(node: UnionNode): void {
    node.unlinked = true;
    this.exports?.drop(node);
  }

  /**
   * Gives the name of `node` a new node for the same object, with the same st_ino, after a copy-up:
   * `node` keeps its open handles (bound to the lower file) and forwards everything else to the new
   * node, which the name leads to from now on, as do the other names of a hard-linked one (an upper
   * metacopy file's data filled in while a passthrough descriptor reads it below).
   */
  supersede(node: UnionNode): UnionNode {
    const parent = node.parent!;
    const next = new UnionNode(this.newId(node.ino), node.ino, parent, node.name, node.type, node.layer, node.dirLayers);
    this.nodes.set(next.nodeid, next);
    this.born(next);
    node.successor = next;
    next.pins++;
    // The name leads to the new node (counted once as a child, whether the old node still held it or not).
    if (parent.children.get(node.name) !== node) parent.childCount++;
    parent.children.set(node.name, next);
    const aliases = node.aliases;
    if (aliases) {
      node.aliases = null;
      const kept = aliases.filter(([p, name]) => p.children.get(name) === node);
      for (const [p, name] of kept) p.children.set(name, next);
      if (kept.length > 0) next.aliases = kept;
    }
    if (this.links.get(node.ino) === node) this.links.set(node.ino, next);
    return next;
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

  /** One more name for `node` (link(2) through the mount, or a lookup of another name): the kernel sees one inode. */
  addAlias(node: UnionNode, parent: UnionNode, name: string): void {
    const old = parent.children.get(name);
    parent.children.set(name, node);
    if (old) this.maybeDrop(old);
    else parent.childCount++;
    (node.aliases ??= []).push([parent, name]);
    if (node.layer.isUpper && !node.isDir) this.links.set(node.ino, node);
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
        this.exports?.note(node);
      } else {
        node.unlinked = true;
        this.exports?.drop(node);
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
      if (!newName.startsWith('\0')) this.exports?.note(node);
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
    while (n && n !== this.root && n.lookups === 0 && n.childCount === 0 && n.openCount === 0 && n.pins === 0) {
      // (only if it is still the node there: a dropped node's nodeid may name a new node by now)
      if (this.nodes.get(n.nodeid) === n) this.nodes.delete(n.nodeid);
      if (this.links.get(n.ino) === n) this.links.delete(n.ino);
      n.closeFds();
      const successor = n.successor;
      if (successor) {
        n.successor = null;
        successor.pins--;
        this.maybeDrop(successor);
      }
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
        if (n.inoPinned && !n.unlinked) this.onPinnedDrop?.(parent);
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
  attrFrom(node: UnionNode, st: N.StatValues): Attr {
    const layer = node.layer;
    const ino = node.unlinked || !node.parent || node.inoPinned ? node.ino
      : layer.isUpper ? this.inoFor(layer, st[ST.ino]!, () => node.location()) : this.stack.inoOf(layer, st[ST.ino]!);
    if (node.ino !== ino) {
      node.ino = ino;
      this.exports?.note(node);
    }
    const a = attrOf(node, st, ino);
    if (this.ids !== null) {
      a.uid = this.ids.uidOut(a.uid);
      a.gid = this.ids.gidOut(a.gid);
    }
    // (a metacopy file's blocks are those of its data, as the kernel's ovl_getattr reports them)
    if (node.dataMissing) {
      // (the kernel's guess before its lazy lookup of data in a data-only layer)
      const bs = a.blksize || 4096;
      a.blocks = (Math.ceil(a.size / bs) * bs) / 512;
    } else if (node.metacopy) {
      a.blocks = node.dataBlocks(this.st); // (`st` was read into `a` already)
    }
    return a;
  }
}

function attrOf(node: UnionNode, st: N.StatValues, ino: number): Attr {
  let nlink = st[ST.nlink]!;
  // An unlinked node shows its object's own count, as the kernel: 0 for an upper file, the lower
  // file's count for one whose name was removed over a lower layer (the lower file stays).
  if (node.isMerged) nlink = 1;
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

/**
 * setattr of the node's (upper) object: owner, mode, size, times. The object is reached by its
 * name or its anchor, never by a name looked up again; a truncate through an open handle (FATTR_FH)
 * acts on that handle's descriptor when it is the upper file open for writing.
 */
export function setAttributes(node: UnionNode, req: SetattrRequest, handle: FileHandle | null): void {
  const v = req.valid;
  const loc = node.location();
  const [dirfd, name] = loc;
  if (v & (FATTR_UID | FATTR_GID)) {
    N.fchownat(dirfd, name, v & FATTR_UID ? req.uid : -1, v & FATTR_GID ? req.gid : -1, atFlags(loc, C.AT_SYMLINK_NOFOLLOW));
  }
  if (v & FATTR_MODE) {
    if (node.type === C.S_IFLNK) throw fsError('EOPNOTSUPP');
    chmodObject(loc, req.mode & 0o7777);
  }
  if (v & FATTR_SIZE) {
    if (node.type === C.S_IFDIR) throw fsError('EISDIR');
    // A caller's ftruncate (FATTR_FH) moves the times whatever the size was: the kernel leaves that to
    // the daemon (FUSE sends no FATTR_MTIME with it), so ftruncate it is. A truncate(2) by name asks the
    // upper file for the size alone, as the kernel's overlay does: whether its times move is the upper
    // filesystem's call (tmpfs keeps them when an empty file stays empty; ext4 moves them).
    const truncate = handle ? N.ftruncate : N.truncateFile;
    if (handle && handle.writable && !handle.onLower && handle.node.live === node) {
      truncate(handle.fd, req.size);
    } else {
      const fd = openObject(loc, C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC);
      try {
        truncate(fd, req.size);
      } finally {
        N.close(fd);
      }
    }
  }
  if (v & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) {
    const aNs = v & FATTR_ATIME_NOW ? C.UTIME_NOW : v & FATTR_ATIME ? req.atimeNsec : C.UTIME_OMIT;
    const mNs = v & FATTR_MTIME_NOW ? C.UTIME_NOW : v & FATTR_MTIME ? req.mtimeNsec : C.UTIME_OMIT;
    N.utimensat(dirfd, name, req.atimeSec, aNs, req.mtimeSec, mNs, atFlags(loc, C.AT_SYMLINK_NOFOLLOW));
  }
}
