// The union filesystem (the kernel's fs/overlayfs/super.c): ties the layer stack, the inode
// table and the open handles together and answers the FUSE FileSystem interface. Each rule
// lives in the module named after it: lookup in namei.ts, listings in readdir.ts, whiteouts in
// whiteout.ts, copy-up in copy_up.ts, namespace changes in dir.ts, attributes in inode.ts.

import type { Logger } from 'pino';
import { fsError } from '../fuse/errors.js';
import { FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_PASSTHROUGH } from '../fuse/protocol.js';
import type {
  AttrReply, CreateReply, DirSink, EntryReply, FileSystem, InitInfo, OpenReply, RequestContext, SetattrRequest,
  StatfsReply,
} from '../fuse/types.js';
import * as N from '../native/index.js';
import { HandleTable, type FileHandle } from './file.js';
import { attrFrom, InodeTable, type UnionNode } from './inode.js';
import type { LayerStack } from './layers.js';
import { checkName, lookupLayers, NAME_MAX } from './namei.js';
import { mergedListing, type DirEntry } from './readdir.js';
import { isPrivateXattr } from './whiteout.js';

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
}

export class UnionFs implements FileSystem {
  readonly inodes: InodeTable;
  readonly handles = new HandleTable();
  private passthrough = false;
  private readonly st = new Float64Array(16);

  constructor(readonly stack: LayerStack, readonly opts: UnionOptions) {
    this.inodes = new InodeTable(stack);
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
    return { nodeid: node.nodeid, generation: 0, entryTimeout: t, attrTimeout: t, attr };
  }

  private negativeEntry(): EntryReply {
    const t = this.opts.cacheTimeout;
    return { nodeid: 0, generation: 0, entryTimeout: t, attrTimeout: 0, attr: ZERO_ATTR };
  }

  /** The child node `name` of `parent`, looked up through the layers if not known yet. */
  child(parent: UnionNode, name: string): [UnionNode, Float64Array | null] | null {
    const known = parent.children.get(name);
    if (known) return [known, null];
    const hit = lookupLayers(parent, name);
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

  lookup(_ctx: RequestContext, parent: number, name: string): EntryReply {
    checkName(name);
    const found = this.child(this.dirNode(parent), name);
    if (!found) return this.negativeEntry();
    const [node, st] = found;
    return this.entry(node, st ? attrFrom(node, st) : undefined);
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
      const h = handle ?? this.handles.filesOf(node)[Symbol.iterator]().next().value as FileHandle | undefined;
      if (!h) throw fsError('ENOENT');
      N.fstat(h.fd, this.st);
      attr = attrFrom(node, this.st);
    } else {
      attr = this.inodes.attr(node);
    }
    return { attr, attrTimeout: this.opts.cacheTimeout };
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

  open(_ctx: RequestContext, nodeid: number, flags: number): OpenReply {
    const node = this.inodes.get(nodeid);
    const wantsWrite = (flags & 3) !== C.O_RDONLY || (flags & C.O_TRUNC) !== 0;
    if (wantsWrite) this.refuseIfReadOnly();
    const [dirfd, name] = node.location();
    const fd = N.openat(dirfd, name, C.O_RDONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
    return this.openReply(node, fd, flags);
  }

  /** Registers an open layer file and decides how the kernel does its I/O. */
  private openReply(node: UnionNode, fd: number, flags: number): OpenReply {
    const h: FileHandle = { kind: 'file', node, fd, flags, backing: null };
    let openFlags = FOPEN_KEEP_CACHE;
    let backingId: number | undefined;
    if (this.passthrough && node.type === C.S_IFREG) {
      const existing = this.handles.backings.get(node);
      if (!existing || existing.layer === node.layer) {
        try {
          h.backing = this.handles.backingFor(this.opts.deviceFd(), node, fd);
          openFlags = FOPEN_PASSTHROUGH;
          backingId = h.backing.id;
        } catch (err) {
          this.opts.logger.debug({ err }, 'passthrough backing refused; serving I/O through the daemon');
        }
      } else {
        // The kernel holds a backing on the lower file from before copy-up; until it is released,
        // this open goes through the daemon uncached so it cannot conflict with it.
        openFlags = FOPEN_DIRECT_IO;
      }
    }
    const fh = this.handles.add(h);
    return { fh, openFlags, backingId };
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

  opendir(_ctx: RequestContext, nodeid: number): OpenReply {
    const node = this.dirNode(nodeid);
    const fh = this.handles.add({ kind: 'dir', node, entries: null });
    return { fh, openFlags: FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR };
  }

  readdir(_ctx: RequestContext, _nodeid: number, fh: number, offset: number, sink: DirSink, plus: boolean): void {
    const h = this.handles.dir(fh);
    const dir = h.node;
    if (offset === 0 || !h.entries) {
      const parent = dir.parent ?? dir;
      h.entries = [{ name: '.', type: C.DT_DIR, ino: dir.ino }, { name: '..', type: C.DT_DIR, ino: parent.ino },
        ...mergedListing(this.stack, dir)];
    }
    const entries = h.entries;
    for (let i = offset; i < entries.length; i++) {
      const e: DirEntry = entries[i]!;
      if (!plus) {
        if (!sink.add(e.name, e.ino, e.type, i + 1)) break;
        continue;
      }
      if (i < 2) {
        if (!sink.addPlus(e.name, null, e.ino, e.type, i + 1)) break;
        continue;
      }
      if (!sink.fits(e.name)) break;
      const found = this.child(dir, e.name);
      if (!found) continue; // removed since the listing was taken
      const [node, st] = found;
      const entry = this.entry(node, st ? attrFrom(node, st) : undefined);
      sink.addPlus(e.name, entry, node.ino, e.type, i + 1);
    }
  }

  releasedir(_ctx: RequestContext, _nodeid: number, fh: number): void {
    const h = this.handles.remove(fh);
    if (h) this.inodes.maybeDrop(h.node);
  }

  fsyncdir(): void {}

  // ---- changes (the writable upper) ----------------------------------------------------------

  protected refuseIfReadOnly(): void {
    if (this.opts.readOnly) throw fsError('EROFS');
  }

  setattr(_ctx: RequestContext, _nodeid: number, _req: SetattrRequest): AttrReply {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  symlink(): EntryReply {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  mknod(): EntryReply {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  mkdir(): EntryReply {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  unlink(): void {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  rmdir(): void {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  rename(): void {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  link(): EntryReply {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  create(): CreateReply {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  write(): number {
    throw fsError('EBADF');
  }
  fsync(): void {}
  setxattr(): void {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  removexattr(): void {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  fallocate(): void {
    this.refuseIfReadOnly();
    throw fsError('EROFS');
  }
  copyFileRange(): number {
    throw fsError('ENOSYS');
  }

  /** Closes every descriptor (after the session ended). */
  destroy(): void {}
}

const ZERO_ATTR = {
  ino: 0, size: 0, blocks: 0, atimeSec: 0, atimeNsec: 0, mtimeSec: 0, mtimeNsec: 0, ctimeSec: 0, ctimeNsec: 0,
  mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
};
