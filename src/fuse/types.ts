// The interface between the FUSE protocol layer and a filesystem implementation.
// The protocol layer (session.ts) decodes requests, calls these methods and encodes the
// results; it knows nothing of layers. Methods may return a value or a Promise; errors are
// thrown (see errors.ts). Names and paths are latin1 strings: one char per byte.

export interface RequestContext {
  readonly unique: number;
  /** The caller's fsuid and fsgid, as the filesystem stores owners (see CallerIds). */
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** The mount's owner mapping, when it has one (the caller's supplementary groups need it too). */
  readonly ids?: CallerIds;
}

/**
 * A mount's owner mapping, from the ids callers have (the request header's, /proc's) to the ids the
 * filesystem stores (fuse-overlayfs's uidmapping=, gidmapping=).
 */
export interface CallerIds {
  uidIn(id: number): number;
  gidIn(id: number): number;
}

export interface Attr {
  ino: number;
  size: number;
  blocks: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Device number in the kernel's new_encode_dev form (low 32 bits of a glibc dev_t). */
  rdev: number;
  blksize: number;
}

export interface AttrReply {
  attr: Attr;
  /** Seconds the kernel may cache the attributes. */
  attrTimeout: number;
}

export interface StatxReply extends AttrReply {
  /** Creation time, when the filesystem keeps one. */
  btime: { sec: number; nsec: number } | null;
}

export interface EntryReply extends AttrReply {
  /** 0 means a cached negative entry (the name does not exist). */
  nodeid: number;
  generation: number;
  /** Seconds the kernel may cache the name. */
  entryTimeout: number;
}

export interface OpenReply {
  fh: number;
  /** FOPEN_* flags. */
  openFlags: number;
  /** Backing id from FUSE_DEV_IOC_BACKING_OPEN when openFlags has FOPEN_PASSTHROUGH. */
  backingId?: number;
}

export interface CreateReply {
  entry: EntryReply;
  open: OpenReply;
}

export interface StatfsReply {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

export interface SetattrRequest {
  /** FATTR_* bits saying which fields are set. */
  valid: number;
  fh: number;
  size: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  mode: number;
  uid: number;
  gid: number;
}

/** Filled by readdir; add* return false when the reply buffer is full. */
export interface DirSink {
  /** Would an entry with this name still fit? (check before taking a lookup reference) */
  fits(name: string): boolean;
  add(name: string, ino: number, type: number, nextOffset: number): boolean;
  addPlus(name: string, entry: EntryReply | null, ino: number, type: number, nextOffset: number): boolean;
}

/**
 * Passthrough backing files, registered with the kernel on /dev/fuse (FUSE_DEV_IOC_BACKING_OPEN/CLOSE);
 * the id goes into an OPEN or CREATE reply with FOPEN_PASSTHROUGH.
 */
export interface BackingRegistry {
  open(fd: number): number;
  close(id: number): void;
}

export interface InitInfo {
  /** The kernel's protocol minor version. */
  minor: number;
  /** Whether passthrough was negotiated (backing ids may be used). */
  passthrough: boolean;
  /** FUSE_POSIX_ACL was negotiated: the kernel enforces ACLs and leaves the umask to the daemon. */
  posixAcl?: boolean;
}

type R<T> = T | Promise<T>;

export interface FileSystem {
  init?(info: InitInfo): void;
  destroy?(): void;
  lookup(ctx: RequestContext, parent: number, name: string): R<EntryReply>;
  forget(nodeid: number, nlookup: number): void;
  getattr(ctx: RequestContext, nodeid: number, fh: number | undefined): R<AttrReply>;
  setattr(ctx: RequestContext, nodeid: number, req: SetattrRequest): R<AttrReply>;
  /** FUSE_STATX (7.39): getattr plus the creation time; without it the kernel reports no btime. */
  statx?(ctx: RequestContext, nodeid: number, fh: number | undefined): R<StatxReply>;
  readlink(ctx: RequestContext, nodeid: number): R<string>;
  symlink(ctx: RequestContext, parent: number, name: string, target: string): R<EntryReply>;
  mknod(ctx: RequestContext, parent: number, name: string, mode: number, rdev: number, umask: number): R<EntryReply>;
  mkdir(ctx: RequestContext, parent: number, name: string, mode: number, umask: number): R<EntryReply>;
  unlink(ctx: RequestContext, parent: number, name: string): R<void>;
  rmdir(ctx: RequestContext, parent: number, name: string): R<void>;
  rename(ctx: RequestContext, parent: number, name: string, newParent: number, newName: string, flags: number): R<void>;
  link(ctx: RequestContext, nodeid: number, newParent: number, newName: string): R<EntryReply>;
  /** `killSuidgid`: an O_TRUNC open by a caller without CAP_FSETID (FUSE_OPEN_KILL_SUIDGID). */
  open(ctx: RequestContext, nodeid: number, flags: number, killSuidgid?: boolean): R<OpenReply>;
  create(ctx: RequestContext, parent: number, name: string, mode: number, flags: number, umask: number): R<CreateReply>;
  /** open(O_TMPFILE) in directory `parent` (FUSE_TMPFILE, 7.37): an open file without a name. */
  tmpfile?(ctx: RequestContext, parent: number, mode: number, flags: number, umask: number): R<CreateReply>;
  /** Returns the data read (may be shorter than size at end of file). */
  read(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number): R<Buffer>;
  /**
   * Optional, synchronous: reads up to `size` bytes into `out` at `outOffset` (the reply buffer) and
   * returns how many were read. Used instead of `read` when present.
   */
  readInto?(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number, out: Buffer, outOffset: number): number;
  /** `data` is a view of the request buffer: valid only until the synchronous part returns. */
  write(ctx: RequestContext, nodeid: number, fh: number, offset: number, data: Buffer, writeFlags: number): R<number>;
  flush(ctx: RequestContext, nodeid: number, fh: number): R<void>;
  release(ctx: RequestContext, nodeid: number, fh: number, flags: number): R<void>;
  fsync(ctx: RequestContext, nodeid: number, fh: number, datasync: boolean): R<void>;
  /**
   * May throw ENOSYS: the kernel then opens directories without asking (and never sends OPENDIR or
   * RELEASEDIR again on this connection); readdir gets fh 0.
   */
  opendir(ctx: RequestContext, nodeid: number, flags: number): R<OpenReply>;
  /** Work a readdir needs done first that may wait (the sink itself is filled synchronously). */
  readdirPrepare?(ctx: RequestContext, nodeid: number): void | Promise<void>;
  /** Fills `sink` synchronously (it writes into the shared reply buffer). */
  readdir(ctx: RequestContext, nodeid: number, fh: number, offset: number, sink: DirSink, plus: boolean): void;
  releasedir(ctx: RequestContext, nodeid: number, fh: number): R<void>;
  fsyncdir(ctx: RequestContext, nodeid: number, fh: number, datasync: boolean): R<void>;
  statfs(ctx: RequestContext, nodeid: number): R<StatfsReply>;
  /** `setxattrFlags`: FUSE_SETXATTR_ACL_KILL_SGID and such (with FUSE_SETXATTR_EXT). */
  setxattr(ctx: RequestContext, nodeid: number, name: string, value: Buffer, flags: number, setxattrFlags?: number): R<void>;
  /**
   * The whole value, or null for none (answered ENODATA: the kernel asks for security.capability before
   * a file's first write and at every chown, and nearly every file has none); the protocol layer
   * answers size probes and ERANGE.
   */
  getxattr(ctx: RequestContext, nodeid: number, name: string): R<Buffer | null>;
  listxattr(ctx: RequestContext, nodeid: number): R<XattrList>;
  removexattr(ctx: RequestContext, nodeid: number, name: string): R<void>;
  access(ctx: RequestContext, nodeid: number, mask: number): R<void>;
  fallocate(ctx: RequestContext, nodeid: number, fh: number, offset: number, length: number, mode: number): R<void>;
  /**
   * FUSE_IOCTL (the kernel sends the file attribute ioctls, FS_IOC_GETFLAGS & co, for chattr and
   * lsattr): the output bytes (at most `outSize`). Without it, every ioctl answers ENOTTY.
   */
  ioctl?(ctx: RequestContext, nodeid: number, fh: number, cmd: number, input: Buffer, outSize: number): R<Buffer>;
  lseek(ctx: RequestContext, nodeid: number, fh: number, offset: number, whence: number): R<number>;
  copyFileRange(ctx: RequestContext, nodeIn: number, fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number, flags: number): R<number>;
}

/** The names LISTXATTR answers, and the size a size probe (size 0) is answered with. */
export interface XattrList {
  names: string[];
  /**
   * Bytes of the list a probe is told, at least that of `names` (the kernel's overlay answers a probe
   * with the size of the layer object's own list, private names included, and a buffer smaller than
   * that with ERANGE).
   */
  size: number;
}
