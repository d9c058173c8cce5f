// The union filesystem (the kernel's fs/overlayfs/super.c): ties the layer stack, the inode
// table and the open handles together and answers the FUSE FileSystem interface. Each rule
// lives in the module named after it: lookup in namei.ts, listings in readdir.ts, whiteouts in
// whiteout.ts, copy-up in copy_up.ts, namespace changes in dir.ts, attributes in inode.ts.

import type { Logger } from 'pino';
import { errCode, fsError } from '../fuse/errors.js';
import { FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FUSE_SETXATTR_ACL_KILL_SGID, FUSE_WRITE_KILL_SUIDGID, FATTR_UID } from '../fuse/protocol.js';
import type {
  Attr, AttrReply, BackingRegistry, CreateReply, DirSink, EntryReply, FileSystem, InitInfo, OpenReply, RequestContext, SetattrRequest,
  StatfsReply, StatxReply, XattrList,
} from '../fuse/types.js';
import * as N from '../native/index.js';
import type { MetadataCache } from './cache.js';
import { CopyUp, type UpperDir } from './copy_up.js';
import { DirOps, type DirOptions, type NewAt, type NewObject } from './dir.js';
import { HandleTable, openFile, openReply, reopenHandles, SMALL_READ_ONLY, type FileEnv, type FileHandle } from './file.js';
import { InodeTable, setAttributes, type UnionNode } from './inode.js';
import { openObject } from './node.js';
import type { Layer, LayerStack } from './layers.js';
import { atLayerPart, checkName, lookupLayers, NAME_MAX, type LayerHit } from './namei.js';
import { fixOrigin, lacksOrigin } from './origin.js';
import { lowerListings, mergedListing, type DirEntry } from './readdir.js';
import { checkRemovable, getXattr, listXattrs, OverlayXattrs, removeXattr, setXattr, settableName } from './xattr.js';
import { LowerIndex } from './lower_index.js';
import { ExportTable } from './export.js';
import { ListingStore, SPAN as LISTING_SPAN } from './listing_store.js';
import { creationTime } from './btime.js';
import { dropSgidAt, killSuidSgid, killSuidSgidAt, setattrKillsPrivs } from './killpriv.js';
import { FileFlags, FS_IOC_FSGETXATTR, FS_IOC_GETFLAGS, isFileAttrIoctl } from './fsflags.js';
import { AclCache, ACL_DEFAULT, isAclName, mapAclIds, newObjectAcl, readAcl, writeNewAcl, type NewAcl } from './acl.js';
import type { IdMap } from './idmap.js';
import { verifyData } from './verity.js';

const { C, ST } = N;

/**
 * What a change through afterCopyUp needs of a copy-up: the data (writes, truncates); only the
 * metadata (chmod, chown, utimes, chattr, rename, link: with metacopy=on a metadata-only copy, and an
 * upper metacopy file stays one, see CopyUp.ensureAsync); or, for xattrs, a copy-up only of what is not
 * upper yet, as the kernel's ovl_xattr_set (every other change, as every copy-up of the kernel's, has
 * a metacopy file's data checked even where it is upper: verifyData).
 */
type Change = 'data' | 'metadata' | 'xattr';

export interface UnionOptions {
  /** No upper layer, or mounted read-only: every change answers EROFS. */
  readOnly: boolean;
  /** Seconds the kernel may cache names and attributes. */
  cacheTimeout: number;
  /** Allow passthrough when the kernel negotiated it. */
  passthrough: boolean;
  logger: Logger;
  /** Passthrough backing files of the FUSE connection. */
  backings: BackingRegistry;
  /** The LevelDB metadata cache (inode identity across remounts, lower listings), if enabled. */
  cache: MetadataCache | null;
  /** Index lower directories (kept in the cache when there is one, else in memory for this mount). */
  lowerIndex: boolean;
  /** Tells the kernel an inode's attributes changed behind its back (a copied-up directory). */
  invalidateAttributes: (nodeid: number) => void;
  /** Tells the kernel a directory's listing changed behind its back (before the current reply). */
  invalidateListing: (nodeid: number) => void;
  /** The kernel's cached target of a symlink is dropped (see FuseSession.invalidateLinkTarget); resolves when done. */
  invalidateLinkTarget?: (nodeid: number) => Promise<void> | undefined;
  /**
   * Puts a regular file's data into the kernel's page cache of its inode (FUSE_NOTIFY_STORE); false
   * where it could not. Absent: never.
   */
  storeData?: (nodeid: number, offset: number, data: Uint8Array) => boolean;
  /** The work directory and write rules, when there is an upper layer. */
  upper: (DirOptions & { workFd: number; volatile: boolean }) | null;
  /** nfs_export=on: nodeids that file handles can name after FORGET and remount (export.ts). */
  nfsExport?: boolean;
  /**
   * uidmapping=, gidmapping=, squash_to_*: owners shown shifted from the layers' (idmap.ts). The
   * requests' ids come mapped already (SessionOptions.callerIds); attributes, chown and ACLs here.
   */
  ids?: IdMap | null;
}

interface Writable {
  upper: UpperDir;
  copyUp: CopyUp;
  dirs: DirOps;
}

/** Is the filesystem of `fd` held in memory (tmpfs, ramfs), where fsync has nothing to write? */
function inMemory(fd: number): boolean {
  const type = N.fstatfs(fd).type;
  return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
}
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;
/** Directories a read-ahead of a tree reads at most (see readAhead). */
const WARM_DIRS = 4096;
/** A tree read ahead is not read ahead again for this long. */
const WARM_AGAIN_MS = 30_000;
/** Read-aheads at a time (of the thread pool's 4 threads). */
const WARM_JOBS = 2;
/** Files, and bytes, one read-ahead of a directory's small files reads at most (see readAheadFiles). */
const FILES_AHEAD = 64;
const FILES_AHEAD_BYTES = 2 << 20;
/**
 * Milliseconds of a monotonic clock. (Not `performance.now()`: the first use of Node's `performance`
 * global loads perf_hooks, 6 ms of the thread that serves requests, in the middle of a listing.)
 */
function monotonicMs(): number {
  const [s, ns] = process.hrtime();
  return s * 1e3 + ns / 1e6;
}

export class UnionFs implements FileSystem {
  readonly inodes: InodeTable;
  readonly handles: HandleTable;
  /** The listings directory readers are in (see readdir). */
  readonly listings = new ListingStore();
  /** Read-aheads under way (see readAhead). */
  private warming = 0;
  /** Trees read ahead (one per lower layer), and the directories they read. */
  readonly readAheads = { trees: 0, dirs: 0 };
  /** Read-aheads of a directory's small files (see readAheadFiles), and the files they read. */
  readonly fileReadAheads = { jobs: 0, files: 0 };
  /** Where the last small lower file read from the disk at its open was: its directory and layer. */
  private coldDir: UnionNode | null = null;
  private coldLayer: Layer | null = null;
  /** A read-ahead of small files is under way. */
  private readingFiles = false;
  private passthrough = false;
  /** FUSE_POSIX_ACL: the kernel enforces ACLs; new objects inherit default ACLs here. */
  private posixAcl = false;
  readonly acls = new AclCache();
  /** chattr flags; immutable and append-only are kept in overlay.protattr and enforced here. */
  readonly fsflags: FileFlags;
  /**
   * Files open read-write by passthrough, with their count of such opens. A shared mapping of one
   * writes the layer file without the daemon or the kernel's FUSE inode knowing: while it may
   * exist, their attributes are not cached (stat after msync shows the new mtime and ctime). An
   * O_WRONLY open cannot be mapped, and the kernel drops the attributes after each write(2) itself.
   */
  private readonly passthroughWriters = new Map<UnionNode, number>();

  private readonly writable: Writable | null;
  private readonly fileEnv: FileEnv;
  /** The lower-directory index of the metadata cache. */
  readonly index: LowerIndex | null;
  /** The overlay's own xattr namespace and its escaping. */
  private readonly xattrNames: OverlayXattrs;

  constructor(readonly stack: LayerStack, readonly opts: UnionOptions) {
    this.inodes = new InodeTable(stack, opts.cache, opts.cache?.origins);
    this.inodes.ids = opts.ids ?? null;
    if (opts.nfsExport) this.inodes.useExports(new ExportTable(opts.cache));
    // (the kernel's listing of that parent, cached with the pinned d_ino, is dropped: a parent the
    // kernel no longer holds has no cached listing)
    this.inodes.onPinnedDrop = (parent) => {
      if (parent.lookups > 0 || parent === this.inodes.root) opts.invalidateListing(parent.nodeid);
    };
    // (the mount's own namespace: userxattr applies to a mount without an upper too, as the kernel's)
    const userxattr = stack.layers[0]?.markerNs === 'user';
    this.fsflags = new FileFlags(userxattr ? 'user.overlay.protattr' : 'trusted.overlay.protattr');
    this.xattrNames = new OverlayXattrs(userxattr);
    this.index = opts.lowerIndex ? new LowerIndex(stack, opts.cache) : null;
    this.handles = new HandleTable(opts.backings);
    this.fileEnv = {
      handles: this.handles, passthrough: false, storeData: opts.storeData, coldRead: (node) => this.readAheadFiles(node),
      onBackingRefused: (err) => opts.logger.debug({ err }, 'passthrough backing refused; serving I/O through the daemon'),
    };
    if (stack.upper && opts.upper) {
      const markers = opts.upper.writeFormat === 'oci' ? undefined : opts.upper.userxattr ? 'user' : 'trusted';
      const upper: UpperDir = {
        layer: stack.upper, workFd: opts.upper.workFd, skipFsync: opts.upper.volatile || inMemory(stack.upper.fd), markers,
        protattr: this.fsflags.protattrName, metacopy: opts.upper.metacopy === true,
      };
      const copyUp = new CopyUp(upper, this.inodes, (node) => this.changedBehind(node), (dir) => opts.invalidateListing(dir.nodeid));
      this.writable = { upper, copyUp, dirs: new DirOps(upper, this.inodes, copyUp, opts.upper, (node) => this.changedBehind(node)) };
    } else {
      this.writable = null;
    }
  }

  init(info: InitInfo): void {
    this.passthrough = this.opts.passthrough && info.passthrough;
    this.fileEnv.passthrough = this.passthrough;
    this.posixAcl = info.posixAcl === true;
  }

  get usesPassthrough(): boolean {
    return this.passthrough;
  }

  // ---- names ---------------------------------------------------------------------------------

  private entry(node: UnionNode, attr = this.inodes.attr(node)): EntryReply {
    this.inodes.ref(node);
    const t = this.opts.cacheTimeout;
    return { nodeid: node.nodeid, generation: node.generation, entryTimeout: t, attrTimeout: this.attrTimeout(attr, node), attr };
  }

  /**
   * How long the kernel may keep these attributes. Hard-linked files found under several names
   * may be separate kernel inodes (a lower file's names; a node a file handle named; an upper file's
   * names are one node, see InodeTable.linkedNode): they are not cached, so a change through one
   * name shows through the others at once.
   */
  private attrTimeout(attr: Attr, node: UnionNode): number {
    if (attr.nlink > 1 && (attr.mode & C.S_IFMT) !== C.S_IFDIR) return 0;
    // A superseded node's object changes through its successor, a FUSE inode the kernel does not link to it.
    if (node.successor) return 0;
    if (this.passthroughWriters.has(node)) return 0;
    return this.opts.cacheTimeout;
  }

  private negativeEntry(): EntryReply {
    const t = this.opts.cacheTimeout;
    return { nodeid: 0, generation: 0, entryTimeout: t, attrTimeout: 0, attr: ZERO_ATTR };
  }

  /**
   * The child node `name` of `parent`, looked up through the layers if not known yet (a new node
   * gets the nodeid `want` when a file handle names it).
   */
  child(parent: UnionNode, name: string, want?: number, listing = false): [UnionNode, N.StatValues | null] | null {
    const known = parent.children.get(name);
    if (known) return [known, null];
    let hit = this.index ? this.index.lookup(parent, name) : undefined;
    if (hit === undefined) hit = lookupLayers(parent, name);
    if (!hit) return null;
    if (this.lacksOrigin(parent, name, hit)) {
      // (a plain listing does not look its entries up on the kernel's overlay: the lookup comes later)
      if (listing) return null;
      this.fixDirOrigin(parent, name, hit);
    }
    return [this.inodes.fromHit(parent, name, hit, want), hit.st];
  }

  /**
   * Is `hit` a merged directory whose upper part has no overlay.origin (see fixDirOrigin)?
   * Not asked with nfs_export=on: the kernel, which then verifies such origins against its index,
   * shows the upper part's st_ino for a directory it did not index, and strata keeps no index.
   */
  private lacksOrigin(parent: UnionNode, name: string, hit: LayerHit): boolean {
    const markers = this.writable?.upper.markers;
    if (!markers || this.opts.nfsExport || !hit.layer.isUpper || hit.dirLayers === null || hit.dirLayers.length < 2) return false;
    // (an origin read before, by an earlier lookup or a listing, is not read again)
    if (this.inodes.knowsOrigin(hit.st[N.ST.ino]!)) return false;
    return lacksOrigin(parent.dirFd(hit.layer), name, markers === 'user');
  }

  /**
   * The kernel's lookup gives such a directory its topmost lower part's origin (ovl_fix_origin, also
   * on a read-only mount): its st_ino is then that part's. Both changes move a ctime: the
   * directory's is read again for the reply, the parent's is told to the kernel.
   */
  private fixDirOrigin(parent: UnionNode, name: string, hit: LayerHit): void {
    const userxattr = this.writable!.upper.markers === 'user';
    const upperDir = parent.dirFd(hit.layer);
    const lower = hit.dirLayers![1]!;
    const done = atLayerPart(parent, name, hit, lower, (dirfd, lowerName) => fixOrigin(upperDir, name, lower, dirfd, lowerName, userxattr));
    if (done.origin) {
      this.inodes.originWritten(hit.st[N.ST.ino]!);
      const st = new Float64Array(16);
      N.fstatat(upperDir, name, C.AT_SYMLINK_NOFOLLOW, st);
      hit.st = st;
    }
    if (done.impure && (parent.lookups > 0 || parent === this.inodes.root)) this.changedBehind(parent);
  }

  private dirNode(nodeid: number): UnionNode {
    const node = this.inodes.get(nodeid);
    if (!node.isDir) throw fsError('ENOTDIR');
    return node;
  }

  lookup(_ctx: RequestContext, parent: number, name: string): EntryReply | Promise<EntryReply> {
    // Only the kernel's file handle code asks for "." and ".." (FUSE_EXPORT_SUPPORT, nfs_export=on).
    if (this.inodes.exports && (name === '.' || name === '..')) return this.handleLookup(parent, name);
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

  /**
   * LOOKUP(nodeid, ".") for a file handle whose inode the kernel no longer holds, and
   * LOOKUP(nodeid, "..") to reconnect a directory found that way (see export.ts). The reply is
   * built in the same turn as the node is found: a FORGET read in between could drop it.
   */
  private handleLookup(nodeid: number, name: '.' | '..'): EntryReply | Promise<EntryReply> {
    if (name === '..') {
      const node = this.inodes.get(nodeid);
      if (!node.isDir) throw fsError('ENOTDIR');
      if (node === this.inodes.root) return this.entry(node);
      if (!node.parent || node.unlinked) throw fsError('ESTALE');
      return this.entry(node.parent);
    }
    const found = this.resolveHandle(nodeid, 0);
    if (found instanceof Promise) return found.then(() => this.handleLookup(nodeid, name));
    if (!found) throw fsError('ESTALE');
    return this.entry(found);
  }

  /**
   * The node a file handle's nodeid names, found again through its record's names; null if gone,
   * or a promise to wait for (a lower listing being loaded) before trying again.
   */
  private resolveHandle(id: number, depth: number): UnionNode | null | Promise<void> {
    const live = this.inodes.find(id);
    if (live) return live;
    const rec = this.inodes.exports!.records.get(id);
    if (!rec || depth > 4096) return null;
    const parent = this.resolveHandle(rec.parent, depth + 1);
    if (parent === null || parent instanceof Promise) return parent;
    if (!parent.isDir || parent.unlinked) return null;
    if (this.index?.wantsLoad(parent) && !parent.children.has(rec.name)) return this.index.load(parent);
    let found: [UnionNode, N.StatValues | null] | null;
    try {
      found = this.child(parent, rec.name, id);
    } catch (e) {
      // the name cannot be looked up any more (EACCES, ENOTDIR, ...): the handle is stale
      if (typeof (e as { code?: unknown }).code !== 'string') throw e;
      found = null;
    }
    if (!found) {
      this.inodes.maybeDrop(parent);
      return null;
    }
    const [node, st] = found;
    if (node.nodeid !== id || node.ino !== rec.ino) {
      // another object has the name now (or the same one under another nodeid): the handle is stale
      if (st) this.inodes.maybeDrop(node);
      return null;
    }
    return node;
  }

  forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  // ---- attributes ----------------------------------------------------------------------------

  /** Attributes of the node's object (through its anchor once the name is gone); `fh` adds nothing. */
  getattr(_ctx: RequestContext, nodeid: number, _fh: number | undefined): AttrReply {
    const node = this.inodes.get(nodeid);
    const attr = this.inodes.attr(node.live);
    return { attr, attrTimeout: this.attrTimeout(attr, node) };
  }

  statx(ctx: RequestContext, nodeid: number, fh: number | undefined): StatxReply {
    const node = this.inodes.get(nodeid).live;
    return { ...this.getattr(ctx, nodeid, fh), btime: creationTime(node, fh !== undefined && !node.metacopy ? this.handles.file(fh).fd : null) };
  }

  readlink(_ctx: RequestContext, nodeid: number): string {
    const node = this.inodes.get(nodeid).live;
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

  getxattr(_ctx: RequestContext, nodeid: number, name: string): Buffer | null {
    const node = this.inodes.get(nodeid).live;
    if (!isAclName(name)) return getXattr(this.xattrNames, node, name);
    const [dirfd, fname] = node.location();
    const acl = this.acls.get(node.ino, name, () => readAcl(dirfd, fname, name));
    const ids = this.opts.ids;
    return acl && ids ? mapAclIds(acl, (id) => ids.uidOut(id), (id) => ids.gidOut(id)) : acl;
  }

  listxattr(ctx: RequestContext, nodeid: number): XattrList {
    return listXattrs(this.xattrNames, this.inodes.get(nodeid).live, ctx);
  }

  // ---- files ---------------------------------------------------------------------------------

  private get files(): FileEnv {
    return this.fileEnv;
  }

  open(ctx: RequestContext, nodeid: number, flags: number, killSuidgid = false): OpenReply | Promise<OpenReply> {
    const node = this.inodes.get(nodeid);
    // A node a copy-up superseded: the kernel looks the name up again (ESTALE) and opens the new one,
    // or, through /proc/PID/fd/N, reaches it with nothing to look up (see openSuperseded).
    if (node.successor) return this.opened(openFile(this.files, node, flags), null);
    this.fsflags.refuseOpen(node, flags);
    // (then a metacopy file's data: found, and with verity= checked, as the kernel's ovl_open does
    // after the VFS's checks of the flags)
    verifyData(node);
    const truncate = (flags & C.O_TRUNC) !== 0;
    if ((flags & 3) !== C.O_RDONLY || truncate) {
      // Open for write or with O_TRUNC: copy up first (without the data when it is truncated anyway). The
      // copy has a ctime of its own (st_blocks too), and an OPEN reply carries no attributes: the kernel
      // is told to drop the lower file's that it holds (an O_TRUNC open drops them itself).
      const copies = !truncate && (!node.live.layer.isUpper || node.live.metacopy);
      return this.afterCopyUp(node, !truncate, () => {
        const reply = this.opened(openFile(this.files, node, flags), killSuidgid && truncate ? ctx : null);
        if (copies && node.lookups > 0) this.opts.invalidateAttributes(node.nodeid);
        return reply;
      });
    }
    return this.opened(openFile(this.files, node, flags), null);
  }

  /**
   * After an open: an O_TRUNC open by a caller without CAP_FSETID clears setuid/setgid
   * (FUSE_OPEN_KILL_SUIDGID), and a passthrough open read-write stops attribute caching.
   */
  private opened(reply: OpenReply, killFor: RequestContext | null): OpenReply {
    const h = this.handles.file(reply.fh);
    if (killFor && killSuidSgid(killFor, h.fd)) this.opts.invalidateAttributes(h.node.nodeid);
    if (h.backing && (h.flags & 3) === C.O_RDWR) this.writerOpened(h.node);
    return reply;
  }

  /** A passthrough open read-write: the kernel drops the attributes it holds (see passthroughWriters). */
  private writerOpened(node: UnionNode): void {
    this.passthroughWriters.set(node, (this.passthroughWriters.get(node) ?? 0) + 1);
    // A node being created has no kernel reference yet: its entry reply carries timeout 0 itself.
    if (node.lookups > 0) this.opts.invalidateAttributes(node.nodeid);
  }

  private writerClosed(node: UnionNode): void {
    const n = (this.passthroughWriters.get(node) ?? 1) - 1;
    if (n > 0) this.passthroughWriters.set(node, n);
    else this.passthroughWriters.delete(node);
  }

  read(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number): Buffer {
    const buf = Buffer.allocUnsafe(size);
    const n = this.readInto(ctx, nodeid, fh, offset, size, buf, 0);
    return n === size ? buf : buf.subarray(0, n);
  }

  /** A read the daemon serves (no passthrough), into the reply buffer. */
  readInto(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, size: number, out: Buffer, outOffset: number): number {
    return N.pread(this.handles.file(fh).fd, out, outOffset, size, offset);
  }

  flush(): void {}

  release(_ctx: RequestContext, _nodeid: number, fh: number): void {
    const h = this.handles.remove(fh);
    if (!h || h.kind !== 'file') return;
    try {
      if (h.backing && (h.flags & 3) === C.O_RDWR) this.writerClosed(h.node);
      if (h.backing) this.handles.releaseBacking(h.node, h.backing);
    } finally {
      N.close(h.fd);
      this.inodes.maybeDrop(h.node);
    }
  }

  /**
   * SEEK_DATA and SEEK_HOLE (the kernel answers the others). An open that passthrough keeps on the lower
   * file after a copy-up (its node has a successor) still reads the lower data, but seeks in the copy,
   * as the kernel's overlay does: its descriptor follows the copy-up.
   */
  lseek(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, whence: number): number {
    const h = this.handles.file(fh);
    const fd = currentDataFd(h);
    try {
      return N.lseek(fd, offset, whence);
    } finally {
      if (fd !== h.fd) N.close(fd);
    }
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
      const cold = lowerListings.cold;
      entries = [{ name: '.', type: C.DT_DIR, ino: dir.ino }, { name: '..', type: C.DT_DIR, ino: parent.ino }, ...this.listing(dir)];
      gen = this.listings.add(nodeid, entries);
      if (lowerListings.cold !== cold) this.readAhead(dir);
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
      let found: ReturnType<UnionFs['child']>;
      try {
        found = this.child(dir, e.name, undefined, true);
      } catch (err) {
        // A name whose lookup fails (a layer's redirect the kernel would refuse too): listed, as getdents
        // lists it on the kernel's overlay, without attributes; a lookup of it then gets the error.
        if (errCode(err) === undefined) throw err;
        found = null;
      }
      // Removed since the listing was taken: still listed (as the kernel's cached listing does), without
      // attributes; so is a directory whose lookup would change it (see child).
      let entry: EntryReply | null = null;
      if (found) {
        const [node, st] = found;
        if (st) entry = this.entry(node, this.inodes.attrFrom(node, st));
        else if (!this.kernelHolds(node)) entry = this.entry(node);
      }
      sink.addPlus(e.name, entry, found ? found[0].ino : e.ino, e.type, base + i + 1);
    }
  }

  /**
   * Does the kernel hold this known node with attributes it keeps? A listing then gives its name
   * without them (a plus entry with nodeid 0, which the kernel leaves alone): they would cost a stat
   * of the layer object, a lookup reference and its FORGET, to tell the kernel what it has, since
   * every change strata makes behind its back is notified. A second listing from offset 0 (`rm -rf`
   * reads each directory twice, `ls -l` again, a walk of the same tree) then costs no stat per entry.
   * Attributes the kernel would not keep (see attrTimeout) are never worth sending again.
   */
  private kernelHolds(node: UnionNode): boolean {
    return node.lookups > 0 && !node.successor && !node.unlinked;
  }

  /**
   * A walk of a tree the disk holds waits for each directory's blocks and its entries' inodes in
   * turn, while the daemon's own work per entry waits for nothing. A listing that came from the
   * disk starts a read-ahead of the tree below it on the thread pool (each lower layer's: they do
   * not change), in the order a walk takes, which overlaps the two: the walk then finds what it
   * needs cached. Not again below a tree read ahead in the last WARM_AGAIN_MS. Nothing is kept but
   * the kernel's caches.
   */
  private readAhead(dir: UnionNode): void {
    const now = monotonicMs();
    for (let n: UnionNode | null = dir; n; n = n.parent) if (n.warmedAt !== 0 && now - n.warmedAt < WARM_AGAIN_MS) return;
    let jobs = 0;
    const done = (dirs: number): void => {
      this.warming--;
      this.readAheads.dirs += Math.max(0, dirs);
      if (--jobs === 0) dir.warmedAt = monotonicMs();
    };
    // (bottom layer first: a base image's holds most of a tree; the thread pool's other users keep threads)
    const layers = dir.dirLayers!;
    for (let i = layers.length - 1; i >= 0 && this.warming < WARM_JOBS; i--) {
      const layer = layers[i]!;
      if (layer.isUpper) continue;
      let fd: number;
      try {
        fd = N.dup(dir.dirFd(layer));
      } catch {
        continue;
      }
      jobs++;
      this.warming++;
      this.readAheads.trees++;
      N.warmTree(fd, WARM_DIRS).then(done, () => done(0));
    }
    if (jobs > 0) dir.warmedAt = Infinity;
  }

  /**
   * A reader that opens a directory's small lower files one after the other (`cat *`, `tar c`, `cp -r`,
   * `grep -r`, in the listing's order) waits for the disk at each open, since the daemon reads such a
   * file's data then (see fillPageCache). When two in a row came from the disk, both in one layer's
   * directory, the files that follow the second in that directory's listing order are read ahead on
   * the thread pool (at most FILES_AHEAD files, FILES_AHEAD_BYTES bytes), so the next opens find them
   * cached; a later open still read from the disk starts the next batch. One at a time. Nothing is kept
   * but the lower filesystem's page cache.
   */
  private readAheadFiles(node: UnionNode): void {
    const dir = node.parent;
    const layer = node.layer;
    const sequel = dir !== null && this.coldDir === dir && this.coldLayer === layer;
    this.coldDir = dir;
    this.coldLayer = layer;
    if (!sequel || this.readingFiles || layer.isUpper || node.dataLayer !== layer) return;
    let fd: number;
    try {
      fd = N.dup(dir.dirFd(layer));
    } catch {
      return;
    }
    this.readingFiles = true;
    this.fileReadAheads.jobs++;
    const done = (files: number): void => {
      this.readingFiles = false;
      this.fileReadAheads.files += Math.max(0, files);
    };
    N.readAheadFiles(fd, node.name, FILES_AHEAD, FILES_AHEAD_BYTES, SMALL_READ_ONLY).then(done, () => done(0));
  }

  /** A listing removed a directory's impure mark: a later copy-up into it marks it again; its ctime moved. */
  private readonly impureCleared = (dir: UnionNode): void => {
    this.writable!.copyUp.forgetImpure(dir);
    if (dir.lookups > 0 || dir === this.inodes.root) this.opts.invalidateAttributes(dir.nodeid);
  };

  /**
   * The st_ino of `dir`'s entry `name`, looked up as the kernel's readdir of an impure merged
   * directory looks up its upper directories (which fixes their origins, see child). As there, a
   * lookup's error (a redirect refused) fails the listing.
   */
  private readonly lookedUp = (dir: UnionNode, name: string): number | null => this.child(dir, name)?.[0].ino ?? null;

  /** The merged listing, with the lower part from the index when it applies. */
  private listing(dir: UnionNode): DirEntry[] {
    const from = this.index ? this.index.lowerFrom(dir) : -1;
    const lookedUp = this.writable?.upper.markers && !this.opts.nfsExport ? this.lookedUp : undefined;
    // (an impure mark no longer needed is removed only where changes may be made, as the kernel's)
    if (from < 0) return mergedListing(this.inodes, dir, undefined, this.writable && !this.opts.readOnly ? this.impureCleared : undefined, lookedUp);
    return mergedListing(this.inodes, dir, { from, listing: this.index!.listing(dir) }, undefined, lookedUp);
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
   * Copies `node` up (if needed), then runs `then` on the node that now holds the object (see
   * afterCopied). A large file is copied in steps between other requests: the result is then a promise.
   * `change` says what the change needs (see Change).
   */
  private afterCopyUp<T>(node: UnionNode, data: boolean, then: (live: UnionNode) => T | Promise<T>, change: Change = 'data'): T | Promise<T> {
    const w = this.w;
    const n = node.live;
    const metaOnly = change !== 'data';
    if (n.layer.isUpper && !n.copying && (metaOnly || !n.metacopy)) {
      if (change !== 'xattr') verifyData(n);
      return this.through(node, n, then);
    }
    const copied = w.copyUp.ensureAsync(n, { data, metaOnly });
    if (copied) {
      return copied.then(() => {
        this.afterCopied(n);
        return this.through(node, n.live, then);
      });
    }
    this.afterCopied(n);
    return this.through(node, n.live, then);
  }

  /**
   * Runs a change on `live` for a request that came for `node`. A change that came through a
   * superseded node leaves the attributes the kernel caches for the successor stale: they are dropped.
   */
  private through<T>(node: UnionNode, live: UnionNode, then: (live: UnionNode) => T): T {
    const r = then(live);
    if (node !== live) this.opts.invalidateAttributes(live.nodeid);
    return r;
  }

  /** A write through a handle of a superseded node changed its successor's size and times. */
  private changedThrough(h: FileHandle): void {
    if (h.node.successor) this.opts.invalidateAttributes(h.node.live.nodeid);
  }

  /**
   * After a copy-up of `node`: handles the daemon serves from the lower file use the upper one. Opens
   * the kernel reads by passthrough stay bound to the lower file, and every open of one FUSE inode
   * must share its backing: the name then gets a new node (same st_ino) for the upper copy, and the
   * old node forwards everything else to it. The kernel is not told to drop its entry for the name
   * (FUSE_NOTIFY_INVAL_ENTRY takes the directory's lock, which a request waiting on this single-threaded
   * daemon may hold): an open of the old node answers ESTALE, and the kernel then looks the name up
   * again; lookups, readdirplus and name operations already lead to the new node.
   */
  private afterCopied(node: UnionNode): void {
    if (node.type !== C.S_IFREG || !node.layer.isUpper) return;
    if (!node.unlinked && node.parent && !node.successor && this.handles.boundToLower(node)) {
      this.inodes.supersede(node);
      this.opts.invalidateAttributes(node.nodeid);
    }
    reopenHandles(node);
  }

  /** Copies `node` up if needed; a promise while a large file is copied. */
  private copyUpNode(node: UnionNode): void | Promise<void> {
    // (for a rename or a link: with metacopy=on a metadata-only copy, as the kernel's)
    return this.afterCopyUp<void>(node, true, () => undefined, 'metadata');
  }

  /** Runs `then` once no copy-up is in progress on any of `nodes` (changes to a node wait for it). */
  private afterCopies<T>(nodes: (UnionNode | null)[], then: () => T | Promise<T>): T | Promise<T> {
    const busy = nodes.filter((n): n is UnionNode => n !== null && n.copying !== null).map((n) => n.copying!.catch(() => undefined));
    if (busy.length === 0) return then();
    return Promise.all(busy).then(() => this.afterCopies(nodes, then));
  }

  setattr(ctx: RequestContext, nodeid: number, req: SetattrRequest): AttrReply | Promise<AttrReply> {
    const ids = this.opts.ids;
    if (ids && req.valid & (FATTR_UID | FATTR_GID)) req = { ...req, uid: ids.uidIn(req.uid), gid: ids.gidIn(req.gid) };
    const node = this.inodes.get(nodeid);
    this.fsflags.refuseSetattr(node.live, req.valid);
    const truncatingToZero = (req.valid & FATTR_SIZE) !== 0 && req.size === 0;
    const handle = (req.valid & FATTR_FH) !== 0 ? this.handles.file(req.fh) : null;
    // A lower file truncated to zero is copied up without its data: its copy is empty already, and the
    // upper filesystem would see no change of size. The kernel's overlay copies the data and truncates
    // it, so the times move whatever the upper filesystem (tmpfs keeps them for an empty file's
    // truncate). Through a descriptor, ftruncate moves them anyway (setAttributes).
    const emptied = truncatingToZero && !handle && !node.live.layer.isUpper && (req.valid & (FATTR_MTIME | FATTR_MTIME_NOW)) === 0 &&
      this.inodes.attr(node.live).size > 0;
    return this.afterLinkDrop(this.afterCopyUp(node, !truncatingToZero, (live) => {
      if (live.type === C.S_IFREG && setattrKillsPrivs(req.valid)) killSuidSgidAt(ctx, live.location());
      setAttributes(live, emptied ? { ...req, valid: req.valid | FATTR_MTIME_NOW } : req, handle);
      if (req.valid & FATTR_MODE) this.acls.forget(live.ino); // chmod rewrites the ACL's owner, mask and other entries
      this.ctimeMoved(live);
      const attr = this.inodes.attr(live);
      return { attr, attrTimeout: this.attrTimeout(attr, node) };
    }, (req.valid & FATTR_SIZE) === 0 ? 'metadata' : 'data'));
  }

  /**
   * A change that moved the ctime of `node` and left its entries alone (attributes, xattrs, flags, a
   * rename of it). A directory's next listing, and a symlink's next follow, must reach the daemon:
   * that read moves atime where the atime options say (relatime: atime not after ctime), as the
   * kernel's overlay does at every listing and follow, and the kernel's cache of the listing (kept
   * while the directory's entries do not change) or of the target would serve it without a word.
   */
  private ctimeMoved(node: UnionNode): void {
    if (node.isDir) this.opts.invalidateListing(node.nodeid);
    else if (node.type === C.S_IFLNK && node.lookups > 0) this.linkDrop = this.opts.invalidateLinkTarget?.(node.nodeid) ?? null;
  }

  /** A symlink's cached target being dropped by this request (see ctimeMoved), or null. */
  private linkDrop: Promise<void> | null = null;

  /**
   * The reply of a request that changed a symlink waits until the kernel dropped its cached target:
   * a follow the caller makes next then reaches the daemon. (A symlink is changed in the turn its
   * request arrives: it is never copied up in steps.)
   */
  private afterLinkDrop<T>(r: T | Promise<T>): T | Promise<T> {
    const drop = this.linkDrop;
    if (drop === null) return r;
    this.linkDrop = null;
    return drop.then(() => r);
  }

  /**
   * The attributes of `node` changed where no reply tells the kernel (a copy-up, chattr): they are
   * dropped, and a directory's cached listing with them (see ctimeMoved).
   */
  private changedBehind(node: UnionNode): void {
    if (node.isDir) this.opts.invalidateListing(node.nodeid);
    else this.opts.invalidateAttributes(node.nodeid);
  }

  /**
   * A new entry `name` of `p` must be a name the union does not show (else EEXIST): says where it goes
   * (see NewAt). A directory only in the upper shows just what that holds: an in-place create answers
   * EEXIST for anything there, so it is not looked up. An immutable directory's EPERM comes after EEXIST.
   */
  private newName(w: Writable, p: UnionNode, name: string): NewAt {
    checkName(name);
    if (p.children.has(name)) throw fsError('EEXIST');
    const layers = p.dirLayers!;
    let at: NewAt = 'unknown';
    if (layers.length === 1 && layers[0]!.isUpper) {
      if (this.fsflags.protection(p).includes('i') && this.child(p, name)) throw fsError('EEXIST');
    } else if (!layers[0]!.isUpper) {
      if (this.child(p, name)) throw fsError('EEXIST');
      at = 'free'; // the lower layers do not show it, and the parent's upper copy is made empty
    } else if (this.index !== null && this.index.lowerFrom(p) >= 0) {
      if (this.child(p, name)) throw fsError('EEXIST');
    } else {
      const found = w.dirs.newEntryAt(p, name);
      if (found === null && this.child(p, name)) throw fsError('EEXIST');
      at = found ?? 'unknown';
    }
    this.fsflags.refuseNewEntry(p);
    return at;
  }

  private newEntry(ctx: RequestContext, parent: number, name: string, obj: NewObject, umask = 0): EntryReply {
    const w = this.w;
    const p = this.dirNode(parent);
    const over = this.newName(w, p, name);
    const acl = this.newAcl(p, obj, umask);
    const { node, st } = w.dirs.create(ctx, p, name, obj, over);
    this.fsflags.created(node);
    this.setNewAcl(node, acl);
    return this.entry(node, this.inodes.attrFrom(node, st));
  }

  /** The mode (umask or default ACL applied) and ACLs of a new object; sets obj.mode. */
  private newAcl(p: UnionNode, obj: NewObject, umask: number): NewAcl | null {
    if (!this.posixAcl || obj.kind === 'symlink') return null;
    const [dirfd, name] = p.location();
    const def = this.acls.get(p.ino, ACL_DEFAULT, () => readAcl(dirfd, name, ACL_DEFAULT));
    const acl = newObjectAcl(def, obj.kind === 'dir' ? C.S_IFDIR : C.S_IFREG, obj.mode, umask);
    obj.mode = acl.mode;
    return acl;
  }

  private setNewAcl(node: UnionNode, acl: NewAcl | null): void {
    if (!acl) return;
    const [dirfd, name] = node.location();
    writeNewAcl(dirfd, name, acl);
    this.acls.set(node.ino, acl.access, acl.default);
  }

  symlink(ctx: RequestContext, parent: number, name: string, target: string): EntryReply {
    return this.newEntry(ctx, parent, name, { kind: 'symlink', target });
  }

  mknod(ctx: RequestContext, parent: number, name: string, mode: number, rdev: number, umask = 0): EntryReply {
    // A whiteout's shape is not made through the mount (ovl_mknod): it would hide the name at once.
    if ((mode & C.S_IFMT) === C.S_IFCHR && rdev === 0) throw fsError('EPERM');
    if ((mode & C.S_IFMT) === C.S_IFREG || (mode & C.S_IFMT) === 0) {
      const r = this.create(ctx, parent, name, mode & 0o7777, C.O_WRONLY, umask);
      this.release(ctx, r.entry.nodeid, r.open.fh);
      return r.entry;
    }
    return this.newEntry(ctx, parent, name, { kind: 'node', mode, rdev }, umask);
  }

  mkdir(ctx: RequestContext, parent: number, name: string, mode: number, umask = 0): EntryReply {
    return this.newEntry(ctx, parent, name, { kind: 'dir', mode }, umask);
  }

  create(ctx: RequestContext, parent: number, name: string, mode: number, flags: number, umask = 0): CreateReply {
    const w = this.w;
    const p = this.dirNode(parent);
    const over = this.newName(w, p, name);
    const obj: NewObject = { kind: 'file', mode, flags };
    const acl = this.newAcl(p, obj, umask);
    const { node, fd, st } = w.dirs.create(ctx, p, name, obj, over);
    this.fsflags.created(node);
    this.setNewAcl(node, acl);
    const attr = this.inodes.attrFrom(node, st);
    // The open first: a passthrough writer's entry is not cached.
    const open = this.opened(openReply(this.files, node, fd, flags, true), null);
    return { entry: this.entry(node, attr), open };
  }

  /** open(O_TMPFILE): as create, without a name (linkat gives it one through the anchored node). */
  tmpfile(ctx: RequestContext, parent: number, mode: number, flags: number, umask = 0): CreateReply {
    const w = this.w;
    const p = this.dirNode(parent);
    this.fsflags.refuseNewEntry(p);
    const obj: NewObject = { kind: 'file', mode, flags };
    const acl = this.newAcl(p, obj, umask);
    const { node, fd, st } = w.dirs.tmpfile(ctx, p, obj.mode);
    this.fsflags.created(node);
    this.setNewAcl(node, acl);
    const attr = this.inodes.attrFrom(node, st);
    const open = this.opened(openReply(this.files, node, fd, flags, true), null);
    return { entry: this.entry(node, attr), open };
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
    this.fsflags.refuseRemoveEntry(p);
    this.fsflags.refuseChange(node);
    if (node.copying) return this.afterCopies<void>([node], () => this.unlink(_ctx, parent, name));
    w.dirs.unlink(p, node, name);
    this.acls.forget(node.ino); // its inode number may be reused
  }

  rmdir(_ctx: RequestContext, parent: number, name: string): void {
    const w = this.w;
    const p = this.dirNode(parent);
    const node = this.existing(p, name);
    if (!node.isDir) throw fsError('ENOTDIR');
    if (node.unlinked) throw fsError('ENOENT'); // removed behind the kernel's back (see CopyUp.replaced)
    this.fsflags.refuseRemoveEntry(p);
    this.fsflags.refuseChange(node);
    w.dirs.rmdir(p, node, name);
    this.acls.forget(node.ino);
  }

  rename(ctx: RequestContext, parent: number, name: string, newParent: number, newName: string, flags: number): void | Promise<void> {
    return this.afterLinkDrop(this.renameKnowing(ctx, parent, name, newParent, newName, flags, undefined));
  }

  /**
   * rename, with the target already looked up in this turn (`known`, null: no target) or not
   * (undefined). After a copy-up made at once, only the source is looked up again: a copy-up gives
   * no other name an object (the directories it makes in the upper existed in the union already), so
   * a target it did not copy is still what it was; a missing one costs a probe of every layer.
   */
  private renameKnowing(ctx: RequestContext, parent: number, name: string, newParent: number, newName: string, flags: number,
    known: UnionNode | null | undefined): void | Promise<void> {
    const w = this.w;
    const p = this.dirNode(parent);
    const np = this.dirNode(newParent);
    const node = this.existing(p, name);
    checkName(newName);
    const target = known !== undefined ? known : this.child(np, newName)?.[0] ?? null;
    if (target === node) return;
    if (node.unlinked || target?.unlinked) throw fsError('ESTALE'); // a name the kernel keeps for a removed object
    this.fsflags.refuseRemoveEntry(p);
    this.fsflags.refuseChange(node);
    if (target) {
      this.fsflags.refuseRemoveEntry(np);
      this.fsflags.refuseChange(target);
    } else {
      this.fsflags.refuseNewEntry(np);
    }
    // Names are looked up again once copy-ups in progress are done: they may have changed meanwhile.
    if (node.copying || target?.copying) return this.afterCopies<void>([node, target], () => this.rename(ctx, parent, name, newParent, newName, flags));
    try {
      w.dirs.checkRename(p, name, node, np, newName, target, flags);
    } catch (e) {
      // A rename over a directory with entries changes the upper before it fails, as the kernel's does
      // (DirOps.markedBeforeFailing): the attributes the kernel keeps of those directories are stale.
      if (errCode(e) === 'ENOTEMPTY') for (const n of [p, np, node]) if (n.lookups > 0 || n === this.inodes.root) this.opts.invalidateAttributes(n.nodeid);
      throw e;
    }
    const exchangeFile = target && (flags & C.RENAME_EXCHANGE) && target.type === C.S_IFREG ? target : null;
    for (const n of [node.type === C.S_IFREG ? node : null, exchangeFile]) {
      if (!n || n.layer.isUpper) continue;
      // Names are looked up again after the copy: it may have given a name a new node.
      const copied = this.copyUpNode(n);
      if (copied) return copied.then(() => this.rename(ctx, parent, name, newParent, newName, flags));
      return this.renameKnowing(ctx, parent, name, newParent, newName, flags, n === target ? undefined : target);
    }
    w.dirs.rename(p, name, node, np, newName, target, flags);
    // (a directory moved: its ctime moved, and with RENAME_EXCHANGE the other one's)
    this.ctimeMoved(node);
    if (target && flags & C.RENAME_EXCHANGE) this.ctimeMoved(target);
    if (target) this.acls.forget(target.ino);
  }

  link(ctx: RequestContext, nodeid: number, newParent: number, newName: string): EntryReply | Promise<EntryReply> {
    const w = this.w;
    const node = this.inodes.get(nodeid).live;
    const p = this.dirNode(newParent);
    checkName(newName);
    // An unlinked file cannot get a name again (the kernel refuses before asking, as for nlink 0).
    if (node.unlinked && !w.dirs.isUnnamedTmpfile(node)) throw fsError('ENOENT');
    if (this.child(p, newName)) throw fsError('EEXIST');
    this.fsflags.refuseNewEntry(p);
    this.fsflags.refuseChange(node);
    if (node.copying || (node.type === C.S_IFREG && !node.layer.isUpper)) {
      const copied = this.copyUpNode(node);
      // The new name is checked again: it may have been taken while the copy ran.
      if (copied) return copied.then(() => this.link(ctx, nodeid, newParent, newName));
    }
    const live = node.live;
    const named = w.dirs.link(live, p, newName);
    // A new node for the name (see DirOps.link): the kernel updates only the inode of the reply, so the
    // source's cached attributes (st_nlink) are dropped.
    if (named !== live) this.opts.invalidateAttributes(live.nodeid);
    return this.entry(named);
  }

  write(ctx: RequestContext, nodeid: number, fh: number, offset: number, data: Buffer, writeFlags = 0): number {
    const h = this.handles.file(fh);
    if (writeFlags & FUSE_WRITE_KILL_SUIDGID && killSuidSgid(ctx, h.fd)) this.opts.invalidateAttributes(nodeid);
    let done = 0;
    while (done < data.length) done += N.pwrite(h.fd, data, done, data.length - done, offset + done);
    this.changedThrough(h);
    return done;
  }

  fsync(_ctx: RequestContext, _nodeid: number, fh: number, datasync: boolean): void {
    if (this.writable?.upper.skipFsync) return;
    const h = this.handles.file(fh);
    if (datasync) N.fdatasync(h.fd);
    else N.fsync(h.fd);
  }

  fsyncdir(_ctx: RequestContext, nodeid: number): void {
    const node = this.inodes.get(nodeid);
    if (!node.layer.isUpper || this.writable?.upper.skipFsync) return;
    // Through its anchor once the directory was removed or its name taken.
    const fd = openObject(node.location(), C.O_RDONLY | C.O_DIRECTORY | C.O_CLOEXEC);
    try {
      N.fsync(fd);
    } finally {
      N.close(fd);
    }
  }

  setxattr(_ctx: RequestContext, nodeid: number, name: string, value: Buffer, flags: number, setxattrFlags = 0): void | Promise<void> {
    const real = settableName(this.xattrNames, name);
    const node = this.inodes.get(nodeid);
    this.fsflags.refuseChange(node.live);
    const ids = this.opts.ids;
    if (ids && isAclName(name)) value = mapAclIds(value, (id) => ids.uidIn(id), (id) => ids.gidIn(id));
    return this.afterLinkDrop(this.afterCopyUp(node, true, (live) => {
      setXattr(live, real, value, flags);
      this.ctimeMoved(live);
      if (!isAclName(name)) return;
      // The upper filesystem set the mode bits from the ACL (keeping setgid: the daemon may).
      this.acls.forget(live.ino);
      if (setxattrFlags & FUSE_SETXATTR_ACL_KILL_SGID) dropSgidAt(live.location());
    }, 'xattr'));
  }

  removexattr(_ctx: RequestContext, nodeid: number, name: string): void | Promise<void> {
    const real = settableName(this.xattrNames, name);
    const node = this.inodes.get(nodeid).live;
    this.fsflags.refuseChange(node);
    if (!node.layer.isUpper) checkRemovable(node, real);
    return this.afterLinkDrop(this.afterCopyUp(node, true, (live) => {
      removeXattr(live, real);
      this.ctimeMoved(live);
      if (isAclName(name)) this.acls.forget(live.ino);
    }, 'xattr'));
  }

  fallocate(ctx: RequestContext, nodeid: number, fh: number, offset: number, length: number, mode: number): void {
    const h = this.handles.file(fh);
    this.fsflags.refuseFallocate(h.node, mode);
    // The kernel clears nothing before FALLOCATE (overlayfs does, for every mode): the daemon does.
    if (killSuidSgid(ctx, h.fd)) this.opts.invalidateAttributes(nodeid);
    N.fallocate(h.fd, mode, offset, length);
    this.changedThrough(h);
  }

  /** chattr / lsattr: the file attribute ioctls; setting flags copies the object up. */
  ioctl(_ctx: RequestContext, nodeid: number, _fh: number, cmd: number, input: Buffer): Buffer | Promise<Buffer> {
    if (!isFileAttrIoctl(cmd)) throw fsError('ENOTTY');
    const node = this.inodes.get(nodeid);
    if (cmd === FS_IOC_GETFLAGS || cmd === FS_IOC_FSGETXATTR) return this.fsflags.get(node.live, cmd);
    return this.afterCopyUp(node, true, (live) => {
      this.fsflags.set(live, cmd, input);
      this.changedBehind(live); // its ctime
      return Buffer.alloc(0);
    }, 'metadata');
  }

  copyFileRange(_ctx: RequestContext, _nodeIn: number, fhIn: number, offIn: number, _nodeOut: number, fhOut: number,
    offOut: number, len: number, flags: number): number {
    const out = this.handles.file(fhOut);
    const src = this.handles.file(fhIn);
    const fd = currentDataFd(src);
    try {
      const n = N.copyFileRange(fd, offIn, out.fd, offOut, len, flags);
      this.changedThrough(out);
      return n;
    } finally {
      if (fd !== src.fd) N.close(fd);
    }
  }

  destroy(): void {}
}

/**
 * A descriptor of the data `h` reads as the kernel's overlay would: its own, or (to be closed by the
 * caller) one of the copy, when passthrough keeps the open on the lower file after a copy-up (its node
 * has a successor). For what the daemon serves (lseek, copy_file_range); passthrough reads stay below.
 */
function currentDataFd(h: FileHandle): number {
  return h.node.successor ? openObject(h.node.live.dataLocation(), C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC) : h.fd;
}

const ZERO_ATTR = {
  ino: 0, size: 0, blocks: 0, atimeSec: 0, atimeNsec: 0, mtimeSec: 0, mtimeNsec: 0, ctimeSec: 0, ctimeNsec: 0,
  mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
};
