// The union filesystem (the kernel's fs/overlayfs/super.c): ties the layer stack, the inode
// table and the open handles together and answers the FUSE FileSystem interface. Each rule
// lives in the module named after it: lookup in namei.ts, listings in readdir.ts, whiteouts in
// whiteout.ts, copy-up in copy_up.ts, namespace changes in dir.ts, attributes in inode.ts.

import type { Logger } from 'pino';
import { fsError } from '../fuse/errors.js';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
  FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FOPEN_PASSTHROUGH,
} from '../fuse/protocol.js';
import type {
  Attr, AttrReply, CreateReply, DirSink, EntryReply, FileSystem, InitInfo, OpenReply, RequestContext, SetattrRequest,
  StatfsReply, StatxReply,
} from '../fuse/types.js';
import * as N from '../native/index.js';
import type { MetadataCache } from './cache.js';
import { CopyUp, type UpperDir } from './copy_up.js';
import { DirOps, type DirOptions, type NewObject } from './dir.js';
import { HandleTable, type FileHandle } from './file.js';
import { InodeTable, type UnionNode } from './inode.js';
import type { LayerStack } from './layers.js';
import { checkName, lookupLayers, NAME_MAX } from './namei.js';
import { mergedListing, type DirEntry } from './readdir.js';
import { isPrivateXattr } from './whiteout.js';
import { LowerIndex } from './lower_index.js';
import { ListingStore, SPAN as LISTING_SPAN } from './listing_store.js';
import { creationTime } from './btime.js';

const { C, ST } = N;

export interface UnionOptions {
  /** No upper layer, or mounted read-only: every change answers EROFS. */
  readOnly: boolean;
  /** Seconds the kernel may cache names and attributes. */
  cacheTimeout: number;
  /** Allow passthrough when the kernel negotiated it. */
  passthrough: boolean;
  logger: Logger;
  /** The /dev/fuse descriptor (for passthrough backing ids); -1 until mounted. */
  deviceFd: () => number;
  /** The LevelDB metadata cache (inode identity across remounts, lower listings), if enabled. */
  cache: MetadataCache | null;
  /** Index lower directories (kept in the cache when there is one, else in memory for this mount). */
  lowerIndex: boolean;
  /** Tells the kernel an inode's attributes changed behind its back (a copied-up directory). */
  invalidateAttributes: (nodeid: number) => void;
  /** Tells the kernel a directory's listing changed behind its back (after the current reply). */
  invalidateContents: (nodeid: number) => void;
  /** The work directory and write rules, when there is an upper layer. */
  upper: (DirOptions & { workFd: number; volatile: boolean }) | null;
}

interface Writable {
  upper: UpperDir;
  copyUp: CopyUp;
  dirs: DirOps;
}

/** How long an open waits for the passthrough opens of a copied-up file's lower version to close. */
const RELEASE_WAIT_MS = 2000;

export class UnionFs implements FileSystem {
  readonly inodes: InodeTable;
  readonly handles = new HandleTable();
  /** The listings directory readers are in (see readdir). */
  readonly listings = new ListingStore();
  private passthrough = false;
  private readonly st = new Float64Array(16);

  private readonly writable: Writable | null;
  /** The lower-directory index of the metadata cache. */
  readonly index: LowerIndex | null;

  constructor(readonly stack: LayerStack, readonly opts: UnionOptions) {
    this.inodes = new InodeTable(stack, opts.cache, opts.cache?.origins);
    this.index = opts.lowerIndex ? new LowerIndex(stack, opts.cache) : null;
    if (stack.upper && opts.upper) {
      const upper: UpperDir = { layer: stack.upper, workFd: opts.upper.workFd, volatile: opts.upper.volatile };
      const copyUp = new CopyUp(upper, this.inodes, (node) => opts.invalidateAttributes(node.nodeid),
        (dir) => opts.invalidateContents(dir.nodeid));
      this.writable = { upper, copyUp, dirs: new DirOps(upper, this.inodes, copyUp, opts.upper) };
    } else {
      this.writable = null;
    }
  }

  init(info: InitInfo): void {
    this.passthrough = this.opts.passthrough && info.passthrough;
  }

  get usesPassthrough(): boolean {
    return this.passthrough;
  }

  // ---- names ---------------------------------------------------------------------------------

  private entry(node: UnionNode, attr = this.inodes.attr(node)): EntryReply {
    this.inodes.ref(node);
    const t = this.opts.cacheTimeout;
    return { nodeid: node.nodeid, generation: 0, entryTimeout: t, attrTimeout: this.attrTimeout(attr), attr };
  }

  /**
   * How long the kernel may keep these attributes. Hard-linked files found under several names
   * may be separate kernel inodes: they are not cached, so a change through one name shows
   * through the others at once.
   */
  private attrTimeout(attr: Attr): number {
    if (attr.nlink > 1 && (attr.mode & C.S_IFMT) !== C.S_IFDIR) return 0;
    return this.opts.cacheTimeout;
  }

  private negativeEntry(): EntryReply {
    const t = this.opts.cacheTimeout;
    return { nodeid: 0, generation: 0, entryTimeout: t, attrTimeout: 0, attr: ZERO_ATTR };
  }

  /** The child node `name` of `parent`, looked up through the layers if not known yet. */
  child(parent: UnionNode, name: string): [UnionNode, Float64Array | null] | null {
    const known = parent.children.get(name);
    if (known) return [known, null];
    let hit = this.index ? this.index.lookup(parent, name) : undefined;
    if (hit === undefined) hit = lookupLayers(parent, name);
    if (!hit) return null;
    const type = hit.st[ST.mode]! & C.S_IFMT;
    const node = this.inodes.create(parent, name, type, hit.layer, hit.dirLayers, hit.st[ST.ino]!);
    return [node, hit.st];
  }

  private dirNode(nodeid: number): UnionNode {
    const node = this.inodes.get(nodeid);
    if (!node.isDir) throw fsError('ENOTDIR');
    return node;
  }

  lookup(_ctx: RequestContext, parent: number, name: string): EntryReply | Promise<EntryReply> {
    checkName(name);
    const p = this.dirNode(parent);
    // First lookup in a deep directory since the mount: read its lower listing from LevelDB first.
    if (this.index?.wantsLoad(p) && !p.children.has(name)) return this.index.load(p).then(() => this.lookupIn(p, name));
    return this.lookupIn(p, name);
  }

  private lookupIn(p: UnionNode, name: string): EntryReply {
    const found = this.child(p, name);
    if (!found) return this.negativeEntry();
    const [node, st] = found;
    return this.entry(node, st ? this.inodes.attrFrom(node, st) : undefined);
  }

  forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  // ---- attributes ----------------------------------------------------------------------------

  getattr(_ctx: RequestContext, nodeid: number, fh: number | undefined): AttrReply {
    const node = this.inodes.get(nodeid);
    let attr;
    const handle = fh !== undefined ? this.handles.file(fh) : null;
    if (handle || node.unlinked) {
      const h = handle ?? [...this.handles.filesOf(node)][0];
      if (!h) throw fsError('ENOENT');
      N.fstat(h.fd, this.st);
      attr = this.inodes.attrFrom(node, this.st);
    } else {
      attr = this.inodes.attr(node);
    }
    return { attr, attrTimeout: this.attrTimeout(attr) };
  }

  statx(ctx: RequestContext, nodeid: number, fh: number | undefined): StatxReply {
    const node = this.inodes.get(nodeid);
    const fd = fh !== undefined ? this.handles.file(fh).fd : node.unlinked ? ([...this.handles.filesOf(node)][0]?.fd ?? null) : null;
    return { ...this.getattr(ctx, nodeid, fh), btime: creationTime(node, fd) };
  }

  readlink(_ctx: RequestContext, nodeid: number): string {
    const node = this.inodes.get(nodeid);
    if (node.type !== C.S_IFLNK) throw fsError('EINVAL');
    const [dirfd, name] = node.location();
    return N.readlinkat(dirfd, name);
  }

  statfs(): StatfsReply {
    const s = N.fstatfs(this.stack.layers[0]!.fd);
    return { blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, bsize: s.bsize,
      namelen: NAME_MAX, frsize: s.frsize };
  }

  access(): void {
    // Permissions are checked by the kernel on the merged modes (default_permissions).
  }

  // ---- xattrs --------------------------------------------------------------------------------

  getxattr(_ctx: RequestContext, nodeid: number, name: string): Buffer {
    if (isPrivateXattr(name)) throw fsError('ENODATA');
    const [dirfd, fname] = this.inodes.get(nodeid).location();
    const v = N.lgetxattr(dirfd, fname, name);
    if (v === null) throw fsError('ENODATA');
    return v;
  }

  listxattr(_ctx: RequestContext, nodeid: number): string[] {
    const [dirfd, fname] = this.inodes.get(nodeid).location();
    return N.llistxattr(dirfd, fname).filter((n) => !isPrivateXattr(n));
  }

  // ---- files ---------------------------------------------------------------------------------

  open(_ctx: RequestContext, nodeid: number, flags: number): OpenReply | Promise<OpenReply> {
    const node = this.inodes.get(nodeid);
    const truncate = (flags & C.O_TRUNC) !== 0;
    if ((flags & 3) !== C.O_RDONLY || truncate) {
      // Open for write or with O_TRUNC: copy up first (without the data when it is truncated anyway).
      return this.afterCopyUp(node, !truncate, () => this.openFile(node, flags));
    }
    return this.openFile(node, flags);
  }

  private openFile(node: UnionNode, flags: number): OpenReply | Promise<OpenReply> {
    const truncate = (flags & C.O_TRUNC) !== 0;
    let fd: number;
    if (node.layer.isUpper && node.type === C.S_IFREG) {
      fd = this.openUpperFile(node, truncate ? C.O_TRUNC : 0);
    } else {
      const [dirfd, name] = node.location();
      fd = N.openat(dirfd, name, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
    }
    return this.openReply(node, fd, flags);
  }

  /**
   * Registers an open layer file and decides how the kernel does its I/O. The kernel binds all the
   * opens of an inode to one passthrough backing at a time (an open with another backing, or
   * without one, fails with EIO). After a copy-up, opens that read the lower file by passthrough
   * may still be open: a new open waits for them to close (readers usually hold a file briefly),
   * and gives up with ETXTBSY after RELEASE_WAIT_MS.
   */
  private openReply(node: UnionNode, fd: number, flags: number): OpenReply | Promise<OpenReply> {
    const existing = this.passthrough && node.type === C.S_IFREG ? this.handles.backings.get(node) : undefined;
    if (existing && existing.layer !== node.layer) {
      return this.handles.released(existing, RELEASE_WAIT_MS).then((released) => {
        if (!released) {
          N.close(fd);
          this.opts.logger.warn({ file: node.name }, 'open refused with ETXTBSY: the lower file is still open by passthrough since its copy-up');
          throw fsError('ETXTBSY');
        }
        return this.openReply(node, fd, flags);
      });
    }
    return this.openReplyNow(node, fd, flags);
  }

  private openReplyNow(node: UnionNode, fd: number, flags: number): OpenReply {
    const h: FileHandle = { kind: 'file', node, fd, flags, backing: null, onLower: !node.layer.isUpper };
    let openFlags = FOPEN_KEEP_CACHE;
    let backingId: number | undefined;
    if (this.passthrough && node.type === C.S_IFREG) {
      try {
        h.backing = this.handles.backingFor(this.opts.deviceFd(), node, fd);
        openFlags = FOPEN_PASSTHROUGH;
        backingId = h.backing.id;
      } catch (err) {
        this.opts.logger.debug({ err }, 'passthrough backing refused; serving I/O through the daemon');
      }
    }
    const fh = this.handles.add(h);
    // Writes reach the layer file at once (no writeback cache): close needs no FLUSH round trip.
    return { fh, openFlags: openFlags | FOPEN_NOFLUSH, backingId };
  }

  read(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, size: number): Buffer {
    const h = this.handles.file(fh);
    const buf = Buffer.allocUnsafe(size);
    const n = N.pread(h.fd, buf, 0, size, offset);
    return n === size ? buf : buf.subarray(0, n);
  }

  flush(): void {}

  release(_ctx: RequestContext, _nodeid: number, fh: number): void {
    const h = this.handles.remove(fh);
    if (!h || h.kind !== 'file') return;
    try {
      if (h.backing) this.handles.releaseBacking(this.opts.deviceFd(), h.node, h.backing);
    } finally {
      N.close(h.fd);
      this.inodes.maybeDrop(h.node);
    }
  }

  lseek(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, whence: number): number {
    return N.lseek(this.handles.file(fh).fd, offset, whence);
  }

  // ---- directories ---------------------------------------------------------------------------

  /**
   * Directories need no open handle: ENOSYS makes the kernel open them without asking (and cache
   * their listings, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR), which spares two round trips per directory
   * read. The listing a reader sees stays stable through the offsets it was given (see readdir).
   */
  opendir(): never {
    throw fsError('ENOSYS');
  }

  /** Listing a deep directory: its lower listing may be read from LevelDB first. */
  readdirPrepare(_ctx: RequestContext, nodeid: number): void | Promise<void> {
    const node = this.dirNode(nodeid);
    if (this.index?.wantsLoad(node)) return this.index.load(node);
  }

  /**
   * A listing is taken when a reader starts (offset 0) and kept under a generation number that the
   * offsets it hands out carry (offset = generation * 2^24 + position), so a reader continues in
   * the listing it started, whatever changes and other readers come meanwhile, and a telldir
   * offset stays valid after the end is reached (see listing_store.ts).
   */
  readdir(_ctx: RequestContext, nodeid: number, _fh: number, offset: number, sink: DirSink, plus: boolean): void {
    const dir = this.dirNode(nodeid);
    let gen = Math.floor(offset / LISTING_SPAN);
    const start = offset % LISTING_SPAN;
    let entries = offset === 0 ? undefined : this.listings.get(nodeid, gen);
    if (!entries) {
      // A fresh reader, or one whose listing is gone (then it goes on by position in a new one).
      const parent = dir.parent ?? dir;
      entries = [{ name: '.', type: C.DT_DIR, ino: dir.ino }, { name: '..', type: C.DT_DIR, ino: parent.ino }, ...this.listing(dir)];
      gen = this.listings.add(nodeid, entries);
    }
    const base = gen * LISTING_SPAN;
    for (let i = start; i < entries.length; i++) {
      const e: DirEntry = entries[i]!;
      if (!plus) {
        if (!sink.add(e.name, e.ino, e.type, base + i + 1)) break;
        continue;
      }
      if (i < 2) {
        if (!sink.addPlus(e.name, null, e.ino, e.type, base + i + 1)) break;
        continue;
      }
      if (!sink.fits(e.name)) break;
      const found = this.child(dir, e.name);
      // Removed since the listing was taken: still listed (as the kernel's cached listing does), without attributes.
      const entry = found ? this.entry(found[0], found[1] ? this.inodes.attrFrom(found[0], found[1]) : undefined) : null;
      sink.addPlus(e.name, entry, found ? found[0].ino : e.ino, e.type, base + i + 1);
    }
  }

  /** The merged listing, with the lower part from the index when it applies. */
  private listing(dir: UnionNode): DirEntry[] {
    const from = this.index ? this.index.lowerFrom(dir) : -1;
    if (from < 0) return mergedListing(this.inodes, dir);
    return mergedListing(this.inodes, dir, { from, listing: this.index!.listing(dir) });
  }

  /** Counters for the cache's record of this mount. */
  cacheStats(): object | null {
    return this.index ? { ...this.index.stats } : null;
  }

  /** Never called: opendir hands out no handles. */
  releasedir(): void {}

  // ---- changes (the writable upper) ----------------------------------------------------------

  /** The write machinery, or EROFS on a read-only mount. */
  private get w(): Writable {
    if (!this.writable || this.opts.readOnly) throw fsError('EROFS');
    return this.writable;
  }

  /**
   * Copies `node` up (if needed), re-points open handles that read the lower file, then runs `then`.
   * A large file is copied in steps between other requests: the result is then a promise.
   */
  private afterCopyUp<T>(node: UnionNode, data: boolean, then: () => T | Promise<T>): T | Promise<T> {
    const w = this.w;
    if (node.layer.isUpper && !node.copying) return then();
    const copied = w.copyUp.ensureAsync(node, { data });
    if (copied) {
      return copied.then(() => {
        this.reopenHandles(node);
        return then();
      });
    }
    this.reopenHandles(node);
    return then();
  }

  /** Copies `node` up if needed; a promise while a large file is copied. */
  private copyUpNode(node: UnionNode): void | Promise<void> {
    return this.afterCopyUp<void>(node, true, () => undefined);
  }

  /** After a copy-up: handles the daemon serves from the lower file now use the upper one. */
  private reopenHandles(node: UnionNode): void {
    if (node.type !== C.S_IFREG) return;
    for (const h of this.handles.filesOf(node)) {
      // A backing handle: the kernel reads the lower file directly, and it is kept as it is.
      if (h.backing || !h.onLower) continue;
      const fd = this.openUpperFile(node, 0);
      N.close(h.fd);
      h.fd = fd;
      h.onLower = false;
    }
  }

  /** Runs `then` once no copy-up is in progress on any of `nodes` (changes to a node wait for it). */
  private afterCopies<T>(nodes: (UnionNode | null)[], then: () => T | Promise<T>): T | Promise<T> {
    const busy = nodes.filter((n): n is UnionNode => n !== null && n.copying !== null).map((n) => n.copying!.catch(() => undefined));
    if (busy.length === 0) return then();
    return Promise.all(busy).then(() => this.afterCopies(nodes, then));
  }

  /** Opens the upper file of `node` read-write (the daemon serves any access mode through it). */
  private openUpperFile(node: UnionNode, extra: number): number {
    const [dirfd, name] = node.location();
    try {
      return N.openat(dirfd, name, C.O_RDWR | C.O_NOFOLLOW | C.O_CLOEXEC | extra, 0);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== 'EACCES' && code !== 'EPERM' && code !== 'ETXTBSY') throw e;
      return N.openat(dirfd, name, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC | extra, 0);
    }
  }

  setattr(ctx: RequestContext, nodeid: number, req: SetattrRequest): AttrReply | Promise<AttrReply> {
    const node = this.inodes.get(nodeid);
    const truncatingToZero = (req.valid & FATTR_SIZE) !== 0 && req.size === 0;
    return this.afterCopyUp(node, !truncatingToZero, () => this.setattrUpper(ctx, node, req));
  }

  private setattrUpper(ctx: RequestContext, node: UnionNode, req: SetattrRequest): AttrReply {
    const v = req.valid;
    const [dirfd, name] = node.location();
    const handle = (v & FATTR_FH) !== 0 ? this.handles.file(req.fh) : null;
    // The mount root is the upper layer's root itself: no name, only its descriptor.
    const isRoot = name === '';
    if (v & (FATTR_UID | FATTR_GID)) {
      N.fchownat(dirfd, name, v & FATTR_UID ? req.uid : -1, v & FATTR_GID ? req.gid : -1,
        C.AT_SYMLINK_NOFOLLOW | (isRoot ? C.AT_EMPTY_PATH : 0));
    }
    if (v & FATTR_MODE) {
      if (node.type === C.S_IFLNK) throw fsError('EOPNOTSUPP');
      // fchmodat takes no empty name; the descriptor's /proc link reaches the directory itself.
      if (isRoot) N.fchmodat(C.AT_FDCWD, `/proc/self/fd/${dirfd}`, req.mode & 0o7777, 0);
      else N.fchmodat(dirfd, name, req.mode & 0o7777, 0);
    }
    if (v & FATTR_SIZE) {
      if (node.type === C.S_IFDIR) throw fsError('EISDIR');
      if (handle && !handle.backing) {
        N.ftruncate(handle.fd, req.size);
      } else {
        const fd = N.openat(dirfd, name, C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
        try {
          N.ftruncate(fd, req.size);
        } finally {
          N.close(fd);
        }
      }
    }
    if (v & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) {
      const aNs = v & FATTR_ATIME_NOW ? C.UTIME_NOW : v & FATTR_ATIME ? req.atimeNsec : C.UTIME_OMIT;
      const mNs = v & FATTR_MTIME_NOW ? C.UTIME_NOW : v & FATTR_MTIME ? req.mtimeNsec : C.UTIME_OMIT;
      N.utimensat(dirfd, name, req.atimeSec, aNs, req.mtimeSec, mNs, C.AT_SYMLINK_NOFOLLOW | (name === '' ? C.AT_EMPTY_PATH : 0));
    }
    return this.getattr(ctx, node.nodeid, handle ? req.fh : undefined);
  }

  private newEntry(ctx: RequestContext, parent: number, name: string, obj: NewObject): EntryReply {
    const w = this.w;
    const p = this.dirNode(parent);
    checkName(name);
    if (this.child(p, name)) throw fsError('EEXIST');
    const { node, st } = w.dirs.create(ctx, p, name, obj);
    return this.entry(node, this.inodes.attrFrom(node, st));
  }

  symlink(ctx: RequestContext, parent: number, name: string, target: string): EntryReply {
    return this.newEntry(ctx, parent, name, { kind: 'symlink', target });
  }

  mknod(ctx: RequestContext, parent: number, name: string, mode: number, rdev: number): EntryReply {
    if ((mode & C.S_IFMT) === C.S_IFREG || (mode & C.S_IFMT) === 0) {
      const r = this.create(ctx, parent, name, mode & 0o7777, C.O_WRONLY);
      this.release(ctx, r.entry.nodeid, r.open.fh);
      return r.entry;
    }
    return this.newEntry(ctx, parent, name, { kind: 'node', mode, rdev });
  }

  mkdir(ctx: RequestContext, parent: number, name: string, mode: number): EntryReply {
    return this.newEntry(ctx, parent, name, { kind: 'dir', mode });
  }

  create(ctx: RequestContext, parent: number, name: string, mode: number, flags: number): CreateReply {
    const w = this.w;
    const p = this.dirNode(parent);
    checkName(name);
    if (this.child(p, name)) throw fsError('EEXIST');
    const { node, fd, st } = w.dirs.create(ctx, p, name, { kind: 'file', mode, flags });
    const entry = this.entry(node, this.inodes.attrFrom(node, st));
    return { entry, open: this.openReplyNow(node, fd, flags) };
  }

  tmpfile(ctx: RequestContext, parent: number, mode: number, flags: number): CreateReply {
    const { node, fd, st } = this.w.dirs.tmpfile(ctx, this.dirNode(parent), mode);
    return { entry: this.entry(node, this.inodes.attrFrom(node, st)), open: this.openReplyNow(node, fd, flags) };
  }

  private existing(parent: UnionNode, name: string): UnionNode {
    checkName(name);
    const found = this.child(parent, name);
    if (!found) throw fsError('ENOENT');
    return found[0];
  }

  unlink(_ctx: RequestContext, parent: number, name: string): void | Promise<void> {
    const w = this.w;
    const p = this.dirNode(parent);
    const node = this.existing(p, name);
    if (node.isDir) throw fsError('EISDIR');
    if (node.copying) return this.afterCopies<void>([node], () => this.unlink(_ctx, parent, name));
    w.dirs.unlink(p, node, name);
  }

  rmdir(_ctx: RequestContext, parent: number, name: string): void {
    const w = this.w;
    const p = this.dirNode(parent);
    const node = this.existing(p, name);
    if (!node.isDir) throw fsError('ENOTDIR');
    w.dirs.rmdir(p, node, name);
  }

  rename(ctx: RequestContext, parent: number, name: string, newParent: number, newName: string, flags: number): void | Promise<void> {
    const w = this.w;
    const p = this.dirNode(parent);
    const np = this.dirNode(newParent);
    const node = this.existing(p, name);
    checkName(newName);
    const target = this.child(np, newName)?.[0] ?? null;
    if (target === node) return;
    // Names are looked up again once copy-ups in progress are done: they may have changed meanwhile.
    if (node.copying || target?.copying) return this.afterCopies<void>([node, target], () => this.rename(ctx, parent, name, newParent, newName, flags));
    w.dirs.checkRename(node, newName, target, flags);
    const exchangeFile = target && (flags & C.RENAME_EXCHANGE) && target.type === C.S_IFREG ? target : null;
    for (const n of [node.type === C.S_IFREG ? node : null, exchangeFile]) {
      if (!n || n.layer.isUpper) continue;
      const copied = this.copyUpNode(n);
      if (copied) return copied.then(() => this.rename(ctx, parent, name, newParent, newName, flags));
    }
    w.dirs.rename(p, name, node, np, newName, target, flags);
  }

  link(ctx: RequestContext, nodeid: number, newParent: number, newName: string): EntryReply | Promise<EntryReply> {
    const w = this.w;
    const node = this.inodes.get(nodeid);
    const p = this.dirNode(newParent);
    checkName(newName);
    if (this.child(p, newName)) throw fsError('EEXIST');
    if (node.copying || (node.type === C.S_IFREG && !node.layer.isUpper)) {
      const copied = this.copyUpNode(node);
      // The new name is checked again: it may have been taken while the copy ran.
      if (copied) return copied.then(() => this.link(ctx, nodeid, newParent, newName));
    }
    // An O_TMPFILE gets its first name through the descriptor it was opened with.
    const open = node.unlinked ? [...this.handles.filesOf(node)][0] : undefined;
    if (open) w.dirs.linkOpen(open.fd, node, p, newName);
    else w.dirs.link(node, p, newName);
    return this.entry(node);
  }

  write(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, data: Buffer): number {
    const h = this.handles.file(fh);
    let done = 0;
    while (done < data.length) done += N.pwrite(h.fd, data, done, data.length - done, offset + done);
    return done;
  }

  fsync(_ctx: RequestContext, _nodeid: number, fh: number, datasync: boolean): void {
    if (this.writable?.upper.volatile) return;
    const h = this.handles.file(fh);
    if (datasync) N.fdatasync(h.fd);
    else N.fsync(h.fd);
  }

  fsyncdir(_ctx: RequestContext, nodeid: number): void {
    const node = this.inodes.get(nodeid);
    if (!node.layer.isUpper || this.writable?.upper.volatile) return;
    const fd = N.openat(node.dirFd(node.layer), '.', C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC, 0);
    try {
      N.fsync(fd);
    } finally {
      N.close(fd);
    }
  }

  setxattr(_ctx: RequestContext, nodeid: number, name: string, value: Buffer, flags: number): void | Promise<void> {
    if (isPrivateXattr(name)) throw fsError('EPERM');
    const node = this.inodes.get(nodeid);
    return this.afterCopyUp(node, true, () => {
      const [dirfd, fname] = node.location();
      N.lsetxattr(dirfd, fname, name, value, flags);
    });
  }

  removexattr(_ctx: RequestContext, nodeid: number, name: string): void | Promise<void> {
    if (isPrivateXattr(name)) throw fsError('EPERM');
    const node = this.inodes.get(nodeid);
    if (!node.layer.isUpper) {
      // Removing what is not there changes nothing: no copy-up (as the kernel).
      const [dirfd, fname] = node.location();
      if (N.lgetxattr(dirfd, fname, name) === null) throw fsError('ENODATA');
    }
    return this.afterCopyUp(node, true, () => {
      const [dirfd, fname] = node.location();
      N.lremovexattr(dirfd, fname, name);
    });
  }

  fallocate(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, length: number, mode: number): void {
    N.fallocate(this.handles.file(fh).fd, mode, offset, length);
  }

  copyFileRange(_ctx: RequestContext, _nodeIn: number, fhIn: number, offIn: number, _nodeOut: number, fhOut: number,
    offOut: number, len: number, flags: number): number {
    return N.copyFileRange(this.handles.file(fhIn).fd, offIn, this.handles.file(fhOut).fd, offOut, len, flags);
  }

  destroy(): void {}
}

const ZERO_ATTR = {
  ino: 0, size: 0, blocks: 0, atimeSec: 0, atimeNsec: 0, mtimeSec: 0, mtimeNsec: 0, ctimeSec: 0, ctimeNsec: 0,
  mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
};
