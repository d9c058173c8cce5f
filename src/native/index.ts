/**
 * Typed front for the strata_native addon (native-bindings/strata_native.c).
 *
 * Conventions:
 *  - every path, file name and xattr name is a latin1 string (one JS char per
 *    byte, both directions), so non-UTF-8 names round-trip losslessly; use
 *    `Buffer.from(s, 'latin1')` / `buf.toString('latin1')` to convert;
 *  - every call is a synchronous syscall on the calling thread (EINTR is
 *    retried internally), except the /dev/fuse reader which uses uv_poll;
 *  - failures throw an {@link ErrnoError}: message "ENOENT: lstat 'name'",
 *    plus `code`, `errno` (positive) and `syscall` (and `path` / `dest`).
 *  - dirfd arguments accept `C.AT_FDCWD`.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Error thrown by every wrapper on syscall failure. */
export interface ErrnoError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
  dest?: string;
}

/** Opaque handle returned by {@link startReader}. */
export type ReaderHandle = object;

/** Result of {@link fstatfs}. */
export interface StatFs {
  type: number;
  bsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namelen: number;
  frsize: number;
  flags: number;
}

/** Result of {@link nameToHandleAt}: what the kernel's exportfs encodes for an object. */
export interface FileHandle {
  /** The handle type (FILEID_*, e.g. 1 = FILEID_INO32_GEN). */
  type: number;
  /** The opaque handle bytes (struct file_handle's f_handle). */
  handle: Buffer;
  /** The mount the handle was taken through. */
  mountId: number;
}

/** One directory entry from {@link readdir}: name (latin1), DT_* type, inode number. */
export type DirEntry = [name: string, type: number, ino: number];

const CONSTANT_NAMES = [
  'AT_FDCWD', 'AT_SYMLINK_NOFOLLOW', 'AT_REMOVEDIR', 'AT_EMPTY_PATH', 'AT_SYMLINK_FOLLOW',
  'O_RDONLY', 'O_WRONLY', 'O_RDWR', 'O_CREAT', 'O_EXCL', 'O_TRUNC', 'O_APPEND',
  'O_NONBLOCK', 'O_DIRECTORY', 'O_NOFOLLOW', 'O_CLOEXEC', 'O_PATH', 'O_NOATIME',
  'O_TMPFILE', 'O_DSYNC', 'O_SYNC', 'O_DIRECT', 'O_LARGEFILE',
  'RESOLVE_BENEATH', 'RESOLVE_NO_MAGICLINKS', 'RESOLVE_NO_SYMLINKS', 'RESOLVE_NO_XDEV',
  'RESOLVE_IN_ROOT',
  'RENAME_NOREPLACE', 'RENAME_EXCHANGE', 'RENAME_WHITEOUT',
  'POSIX_FADV_WILLNEED', 'POSIX_FADV_SEQUENTIAL', 'POSIX_FADV_DONTNEED',
  'UTIME_NOW', 'UTIME_OMIT',
  'S_IFMT', 'S_IFREG', 'S_IFDIR', 'S_IFLNK', 'S_IFCHR', 'S_IFBLK', 'S_IFIFO', 'S_IFSOCK',
  'XATTR_CREATE', 'XATTR_REPLACE',
  'SEEK_SET', 'SEEK_CUR', 'SEEK_END', 'SEEK_DATA', 'SEEK_HOLE',
  'FALLOC_FL_KEEP_SIZE', 'FALLOC_FL_PUNCH_HOLE', 'FALLOC_FL_ZERO_RANGE',
  'MS_RDONLY', 'MS_NOSUID', 'MS_NODEV', 'MS_NOEXEC', 'MS_NOATIME', 'MS_BIND',
  'MS_REMOUNT', 'MS_RELATIME', 'MS_STRICTATIME', 'MS_NODIRATIME',
  'OPEN_TREE_CLONE', 'OPEN_TREE_CLOEXEC', 'MOUNT_ATTR__ATIME', 'MOUNT_ATTR_RELATIME', 'MOUNT_ATTR_NOATIME',
  'MOUNT_ATTR_STRICTATIME', 'MOUNT_ATTR_NODIRATIME', 'MOUNT_ATTR_IDMAP',
  'MNT_DETACH', 'MNT_FORCE', 'UMOUNT_NOFOLLOW',
  'DT_UNKNOWN', 'DT_FIFO', 'DT_CHR', 'DT_DIR', 'DT_BLK', 'DT_REG', 'DT_LNK', 'DT_SOCK',
  'STATX_BASIC_STATS', 'MAX_HANDLE_SZ',
] as const;

const ERRNO_NAMES = [
  'ENOENT', 'EEXIST', 'ENOTDIR', 'EISDIR', 'ENOTEMPTY', 'EXDEV', 'EPERM', 'EACCES',
  'EINVAL', 'ENOSYS', 'EIO', 'ENODATA', 'ERANGE', 'ENAMETOOLONG', 'EROFS', 'ELOOP',
  'EBADF', 'ENOTSUP', 'EOPNOTSUPP', 'EAGAIN', 'EINTR', 'ENODEV', 'EMLINK', 'ENOSPC',
  'EFBIG', 'ENXIO', 'ESPIPE', 'EOVERFLOW', 'ETXTBSY', 'EBUSY', 'E2BIG', 'EFAULT',
  'EMFILE', 'ENFILE', 'ESTALE', 'ENOTTY', 'ECONNREFUSED',
] as const;

export type ConstantName = (typeof CONSTANT_NAMES)[number];
export type ErrnoName = (typeof ERRNO_NAMES)[number];
export type Constants = Readonly<Record<ConstantName, number>> & {
  readonly errno: Readonly<Record<ErrnoName, number>>;
};

interface NativeBinding {
  fstatat(dirfd: number, path: string, flags: number, out: Float64Array): void;
  fstat(fd: number, out: Float64Array): void;
  statx(dirfd: number, path: string, flags: number, mask: number, out: Float64Array): void;
  lstatMaybe(dirfd: number, path: string, out: Float64Array): boolean;
  openat(dirfd: number, path: string, flags: number, mode: number): number;
  openat2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number;
  close(fd: number): void;
  dup(fd: number): number;
  pipe(): [readFd: number, writeFd: number];
  dup2(oldfd: number, newfd: number): number;
  readlinkat(dirfd: number, path: string): string;
  readdir(dirfd: number): [names: string, types: Uint8Array, inos: Float64Array];
  warmTree(fd: number, maxDirs: number): Promise<number>;
  readAheadFiles(fd: number, after: string, maxFiles: number, maxBytes: number, maxSize: number): Promise<number>;
  threadInblock(): number;
  warmCancel(): void;
  mkdirat(dirfd: number, path: string, mode: number): void;
  mknodat(dirfd: number, path: string, mode: number, dev: number): void;
  symlinkat(target: string, dirfd: number, path: string): void;
  linkat(olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number): void;
  unlinkat(dirfd: number, path: string, flags: number): void;
  renameat2(olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number): void;
  fchownat(dirfd: number, path: string, uid: number, gid: number, flags: number): void;
  fchown(fd: number, uid: number, gid: number): void;
  fchmod(fd: number, mode: number): void;
  fchmodat(dirfd: number, path: string, mode: number, flags: number): void;
  utimensat(dirfd: number, path: string, atimeSec: number, atimeNsec: number,
    mtimeSec: number, mtimeNsec: number, flags: number): void;
  futimens(fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  ftruncate(fd: number, len: number): void;
  truncateFile(fd: number, len: number): void;
  fsync(fd: number): void;
  lowMemory(): void;
  fdatasync(fd: number): void;
  syncfs(fd: number): void;
  fallocate(fd: number, mode: number, offset: number, len: number): void;
  lseek(fd: number, offset: number, whence: number): number;
  pread(fd: number, buf: Uint8Array, bufOffset: number, length: number, position: number): number;
  pwrite(fd: number, buf: Uint8Array, bufOffset: number, length: number, position: number): number;
  fadvise(fd: number, offset: number, len: number, advice: number): void;
  copyFileRange(fdIn: number, offIn: number | null, fdOut: number, offOut: number | null,
    len: number, flags: number): number;
  sendfile(fdOut: number, fdIn: number, offIn: number, len: number): number;
  ficlone(destFd: number, srcFd: number): void;
  ioctlBuf(fd: number, request: number, buf: Buffer): number;
  lgetxattr(dirfd: number, path: string, name: string): Buffer | null;
  lsetxattr(dirfd: number, path: string, name: string, value: Uint8Array, flags: number): void;
  llistxattr(dirfd: number, path: string): string[];
  lremovexattr(dirfd: number, path: string, name: string): void;
  fgetxattr(fd: number, name: string): Buffer | null;
  fsetxattr(fd: number, name: string, value: Uint8Array, flags: number): void;
  flistxattr(fd: number): string[];
  fremovexattr(fd: number, name: string): void;
  _forceXattrFallback(on: boolean): void;
  fstatfs(fd: number): StatFs;
  nameToHandleAt(dirfd: number, path: string, flags: number): FileHandle;
  openByHandleAt(mountFd: number, type: number, handle: Uint8Array, flags: number): number;
  fsUuid(fd: number): Buffer | null;
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void;
  umount2(target: string, flags: number): void;
  openTree(dirfd: number, path: string, flags: number): number;
  statxBtime(dirfd: number, path: string, flags: number): [number, number] | null;
  statxAttributes(dirfd: number, path: string, flags: number): number;
  mountSetattr(dirfd: number, path: string, flags: number, attrSet: number, attrClr: number): void;
  openTreeAttr(dirfd: number, path: string, flags: number, attrSet: number, attrClr: number, usernsFd: number): number;
  openFuseDevice(): number;
  ioctlClone(newFd: number, oldFd: number): void;
  backingOpen(devFd: number, fd: number): number;
  backingClose(devFd: number, id: number): void;
  writeReply(fd: number, bufs: readonly Uint8Array[] | Uint8Array, length?: number): number;
  startReader(fd: number, buf: Buffer, onRequest: (len: number) => void,
    onEnd: (err: Error | null) => void): ReaderHandle;
  stopReader(handle: ReaderHandle): void;
  readerSpins(handle: ReaderHandle): [number, number, number];
  setNofileLimit(n: number): number;
  getuid(): number;
  getgid(): number;
  geteuid(): number;
  umask(mask: number): number;
  setfsuid(uid: number): number;
  setfsgid(gid: number): number;
  constants: Record<string, unknown> & { errno: Record<string, unknown> };
}

/** Walk up from this module until a directory containing native-bindings/ is found. */
function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'native-bindings', 'binding.gyp'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) {
      throw new Error(`strata: cannot locate native-bindings/ above ${fileURLToPath(import.meta.url)}`);
    }
    dir = parent;
  }
}

/** Absolute path of the compiled addon. */
export const addonPath = join(findRepoRoot(), 'native-bindings', 'build', 'Release', 'strata_native.node');

const native = createRequire(import.meta.url)(addonPath) as NativeBinding;

/** Copy the listed numeric constants, failing loudly on a stale addon build. */
function pick<K extends string>(src: Record<string, unknown>, names: readonly K[], what: string): Readonly<Record<K, number>> {
  const out = {} as Record<K, number>;
  for (const n of names) {
    const v = src[n];
    if (typeof v !== 'number') throw new Error(`strata_native: missing ${what} ${n} (stale build?)`);
    out[n] = v;
  }
  return Object.freeze(out);
}

/** Kernel / libc constants. `O_LARGEFILE` is the kernel bit (0o100000), not glibc's 0. */
export const C: Constants = Object.freeze({
  ...pick(native.constants, CONSTANT_NAMES, 'constant'),
  errno: pick(native.constants.errno, ERRNO_NAMES, 'errno'),
});

/** `statx` mask covering the fields of the stat layout. */
export const STATX_BASIC_STATS: number = C.STATX_BASIC_STATS;

/** Slot indices of the Float64Array filled by the stat functions (length >= ST_LENGTH). */
export const ST = Object.freeze({
  dev: 0, ino: 1, mode: 2, nlink: 3, uid: 4, gid: 5, rdev: 6, size: 7, blksize: 8, blocks: 9,
  atimeSec: 10, atimeNsec: 11, mtimeSec: 12, mtimeNsec: 13, ctimeSec: 14, ctimeNsec: 15,
} as const);
export const ST_LENGTH = 16;

/** Allocate a stat output array. */
export function newStatBuf(): Float64Array {
  return new Float64Array(ST_LENGTH);
}

/** Stat values to read (a stat buffer, or a copy made by {@link statCopy}). */
export type StatValues = ArrayLike<number>;

/**
 * A copy of a stat buffer to keep, as a plain array: a Float64Array of 16 values lives outside
 * V8's heap, and making one (new or by slice()) cost 1.5-2.5 us against 0.1-0.2 us for an array,
 * on every lookup that found something.
 */
export function statCopy(st: Float64Array): number[] {
  const out = new Array<number>(ST_LENGTH);
  for (let i = 0; i < ST_LENGTH; i++) out[i] = st[i]!;
  return out;
}

const TWO32 = 0x1_0000_0000;

/** glibc `major()` of a raw dev_t (given as a number, exact up to 2^53). */
export function major(dev: number): number {
  const lo = dev >>> 0;
  const hi = Math.floor(dev / TWO32) >>> 0;
  return (((lo >>> 8) & 0xfff) | (hi & 0xfffff000)) >>> 0;
}

/** glibc `minor()` of a raw dev_t. */
export function minor(dev: number): number {
  const lo = dev >>> 0;
  const hi = Math.floor(dev / TWO32) >>> 0;
  return ((lo & 0xff) | (((lo >>> 12) | (hi << 20)) & 0xffffff00)) >>> 0;
}

/** glibc `makedev()`: exact while the result stays below 2^53 (major < 2^21). */
export function makedev(maj: number, min: number): number {
  const lo = (((maj & 0xfff) << 8) | (min & 0xff) | ((min & 0xfff00) << 12)) >>> 0;
  const hi = ((maj & 0xfffff000) | ((min >>> 20) & 0xfff)) >>> 0;
  return hi * TWO32 + lo;
}

// --- stat ---------------------------------------------------------------
/** fstatat(2) into `out` (see {@link ST}); flags e.g. AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH. */
export const fstatat: (dirfd: number, path: string, flags: number, out: Float64Array) => void = native.fstatat;
export const fstat: (fd: number, out: Float64Array) => void = native.fstat;
/** statx(2) into the same layout as {@link fstatat}. */
export const statx: (dirfd: number, path: string, flags: number, mask: number, out: Float64Array) => void =
  native.statx;
/** statx(2) creation time [seconds, nanoseconds], or null when the filesystem keeps none. */
export const statxBtime: (dirfd: number, path: string, flags: number) => [number, number] | null = native.statxBtime;
/**
 * statx(2) stx_attributes as far as the filesystem reports them (stx_attributes_mask), low 32 bits:
 * STATX_ATTR_IMMUTABLE 0x10, STATX_ATTR_APPEND 0x20, STATX_ATTR_NODUMP 0x40, ...
 */
export const statxAttributes: (dirfd: number, path: string, flags: number) => number = native.statxAttributes;
/** lstat relative to dirfd; false (instead of throwing) on ENOENT / ENOTDIR. */
export const lstatMaybe: (dirfd: number, path: string, out: Float64Array) => boolean = native.lstatMaybe;

// --- open / directories / links --------------------------------------------
export const openat: (dirfd: number, path: string, flags: number, mode: number) => number = native.openat;
/** How often openat2 is tried when it keeps answering EAGAIN (each race is a rename elsewhere: rare). */
const OPENAT2_TRIES = 100;
/**
 * openat2(2); `mode` is ignored unless flags contain O_CREAT or O_TMPFILE. With RESOLVE_IN_ROOT or
 * RESOLVE_BENEATH the kernel answers EAGAIN when a rename or mount anywhere on the machine raced with a
 * ".." of the path (it cannot then prove the walk stayed inside): tried again, as openat2(2) advises.
 */
export function openat2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number {
  for (let tries = 1; ; tries++) {
    try {
      return native.openat2(dirfd, path, flags, mode, resolve);
    } catch (e) {
      if ((e as ErrnoError).code !== 'EAGAIN' || tries >= OPENAT2_TRIES) throw e;
    }
  }
}
export const close: (fd: number) => void = native.close;
/** dup(2) with O_CLOEXEC on the new fd. */
export const dup: (fd: number) => number = native.dup;
/**
 * Read-ahead of a directory tree, on the thread pool: the tree below the directory `fd` is walked
 * depth first (each directory read, its entries lstat'ed) until `maxDirs` directories are read, so
 * that a walk finds their blocks and inodes cached. Takes `fd` (closes it; O_PATH will do).
 * Resolves with the number of directories read.
 */
export const warmTree: (fd: number, maxDirs: number) => Promise<number> = native.warmTree;
/**
 * Starts, on the thread pool, the disk reads (readahead(2)) of the regular files of 1 to `maxSize` bytes
 * of the directory `fd` that follow the entry `after` in its listing order (all for ""), until `maxFiles`
 * files or `maxBytes` bytes. Takes `fd` (closes it). Resolves with the number of files read ahead.
 */
export const readAheadFiles: (fd: number, after: string, maxFiles: number, maxBytes: number, maxSize: number) => Promise<number> =
  native.readAheadFiles;
/** Stops the read-aheads under way (and any started later) at their next directory: the process is ending. */
export const warmCancel: () => void = native.warmCancel;
/** Blocks the calling thread has had read from a disk (RUSAGE_THREAD's ru_inblock): what caches served does not count. */
export const threadInblock: () => number = native.threadInblock;
/** pipe2(2) with O_CLOEXEC on both ends: [read end, write end]. */
export const pipe: () => [readFd: number, writeFd: number] = native.pipe;
/** dup2(2): makes `newfd` a copy of `oldfd`. */
export const dup2: (oldfd: number, newfd: number) => number = native.dup2;
export const readlinkat: (dirfd: number, path: string) => string = native.readlinkat;
/** A directory's entries in three parallel arrays (see {@link listDir}). */
export interface DirListing {
  /** Names (latin1). */
  names: string[];
  /** DT_* types. */
  types: Uint8Array;
  /** Inode numbers. */
  inos: Float64Array;
}

/**
 * All entries of the directory dirfd (may be an O_PATH fd), without "." and "..", as parallel
 * arrays: the addon hands them over in one string and two typed arrays, where an array per entry
 * cost more than the system calls (2-3 us per entry).
 */
export function listDir(dirfd: number): DirListing {
  const [joined, types, inos] = native.readdir(dirfd);
  const names = joined.split('/');
  names.pop(); // (each name ends with '/')
  return { names, types, inos };
}

/** All entries of the directory dirfd (may be an O_PATH fd), without "." and "..", one tuple each. */
export function readdir(dirfd: number): DirEntry[] {
  const { names, types, inos } = listDir(dirfd);
  return names.map((name, i) => [name, types[i]!, inos[i]!]);
}
export const mkdirat: (dirfd: number, path: string, mode: number) => void = native.mkdirat;
/** mknodat(2); `dev` is a raw dev_t (see {@link makedev}). */
export const mknodat: (dirfd: number, path: string, mode: number, dev: number) => void = native.mknodat;
export const symlinkat: (target: string, dirfd: number, path: string) => void = native.symlinkat;
export const linkat: (olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number) => void =
  native.linkat;
export const unlinkat: (dirfd: number, path: string, flags: number) => void = native.unlinkat;
export const renameat2: (olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number) => void =
  native.renameat2;

// --- ownership / mode / times ---------------------------------------------
/** uid / gid -1 leaves that id unchanged. */
export const fchownat: (dirfd: number, path: string, uid: number, gid: number, flags: number) => void =
  native.fchownat;
export const fchown: (fd: number, uid: number, gid: number) => void = native.fchown;
export const fchmod: (fd: number, mode: number) => void = native.fchmod;
/** Non-zero flags use fchmodat2(2) (EOPNOTSUPP for a symlink with AT_SYMLINK_NOFOLLOW). */
export const fchmodat: (dirfd: number, path: string, mode: number, flags: number) => void = native.fchmodat;
/** Nsec may be C.UTIME_NOW / C.UTIME_OMIT; path "" acts on dirfd itself (O_PATH fds included). */
export const utimensat: (dirfd: number, path: string, atimeSec: number, atimeNsec: number,
  mtimeSec: number, mtimeNsec: number, flags: number) => void = native.utimensat;
export const futimens: (fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number,
  mtimeNsec: number) => void = native.futimens;

// --- file data ------------------------------------------------------------
export const ftruncate: (fd: number, len: number) => void = native.ftruncate;
/** truncate(2) of the file open as `fd` (by /proc/self/fd): unlike ftruncate, the size alone is asked to change. */
export const truncateFile: (fd: number, len: number) => void = native.truncateFile;
export const fsync: (fd: number) => void = native.fsync;
/** A full garbage collection that gives the freed memory back to the system (V8's LowMemoryNotification). */
export const lowMemory: () => void = native.lowMemory;
export const fdatasync: (fd: number) => void = native.fdatasync;
export const syncfs: (fd: number) => void = native.syncfs;
export const fallocate: (fd: number, mode: number, offset: number, len: number) => void = native.fallocate;
/** lseek(2); SEEK_DATA / SEEK_HOLE past the data throw ENXIO. */
export const lseek: (fd: number, offset: number, whence: number) => number = native.lseek;
/** pread(2) into buf[bufOffset, bufOffset+length); a negative position uses the file offset. */
export const pread: (fd: number, buf: Uint8Array, bufOffset: number, length: number, position: number) => number =
  native.pread;
/** pwrite(2) from buf[bufOffset, bufOffset+length); a negative position uses the file offset. */
export const pwrite: (fd: number, buf: Uint8Array, bufOffset: number, length: number, position: number) => number =
  native.pwrite;
/** copy_file_range(2); a null offset uses (and advances) that fd's file offset. */
export const copyFileRange: (fdIn: number, offIn: number | null, fdOut: number, offOut: number | null,
  len: number, flags: number) => number = native.copyFileRange;
/** sendfile(2) from fdIn at offIn (its offset untouched) to fdOut at fdOut's file offset (advanced): bytes copied. */
export const sendfile: (fdOut: number, fdIn: number, offIn: number, len: number) => number = native.sendfile;
/** posix_fadvise(2), e.g. POSIX_FADV_WILLNEED: start reading [offset, offset+len) into the page cache (len 0: to the end). */
export const fadvise: (fd: number, offset: number, len: number, advice: number) => void = native.fadvise;
/** ioctl(destFd, FICLONE, srcFd): reflink the whole file. */
export const ficlone: (destFd: number, srcFd: number) => void = native.ficlone;
/** ioctl(fd, request, buf) for requests that take a pointer (buf is read and written); the request's size must fit. */
export const ioctlBuf: (fd: number, request: number, buf: Buffer) => number = native.ioctlBuf;

// --- extended attributes ---------------------------------------------------
/**
 * Xattrs of `path` inside dirfd without following a final symlink (path "" =
 * dirfd itself). Uses getxattrat & co (Linux 6.13+), falling back to
 * l*xattr on /proc/self/fd/<dirfd>/<path>.
 * Returns null when the attribute does not exist (ENODATA).
 */
export const lgetxattr: (dirfd: number, path: string, name: string) => Buffer | null = native.lgetxattr;
export const lsetxattr: (dirfd: number, path: string, name: string, value: Uint8Array, flags: number) => void =
  native.lsetxattr;
export const llistxattr: (dirfd: number, path: string) => string[] = native.llistxattr;
export const lremovexattr: (dirfd: number, path: string, name: string) => void = native.lremovexattr;
/** fgetxattr(2); null on ENODATA. Not usable on O_PATH fds (EBADF): use lgetxattr(fd, "", name). */
export const fgetxattr: (fd: number, name: string) => Buffer | null = native.fgetxattr;
export const fsetxattr: (fd: number, name: string, value: Uint8Array, flags: number) => void = native.fsetxattr;
export const flistxattr: (fd: number) => string[] = native.flistxattr;
export const fremovexattr: (fd: number, name: string) => void = native.fremovexattr;
/** Test hook: force (true) or stop forcing (false) the /proc/self/fd xattr fallback. */
export const _forceXattrFallback: (on: boolean) => void = native._forceXattrFallback;

// --- filesystems / mounts --------------------------------------------------
export const fstatfs: (fd: number) => StatFs = native.fstatfs;
/** mount(2); null source / fstype / data are passed as NULL. */
export const mount: (source: string | null, target: string, fstype: string | null, flags: number,
  data: string | null) => void = native.mount;
export const umount2: (target: string, flags: number) => void = native.umount2;
/** open_tree(2): with OPEN_TREE_CLONE, an O_PATH fd of a detached copy of the mount at path (CAP_SYS_ADMIN). */
export const openTree: (dirfd: number, path: string, flags: number) => number = native.openTree;
/** mount_setattr(2) of the mount whose root `path` (or dirfd with AT_EMPTY_PATH) is: MOUNT_ATTR_* set and cleared. */
/**
 * open_tree_attr(2) (Linux 6.15): a detached copy of the mount at path with MOUNT_ATTR_* set and
 * cleared; MOUNT_ATTR_IDMAP in attrSet gives it the idmapping of user namespace `usernsFd`, replacing
 * one the mount has.
 */
export const openTreeAttr: (dirfd: number, path: string, flags: number, attrSet: number, attrClr: number, usernsFd: number) => number =
  native.openTreeAttr;
export const mountSetattr: (dirfd: number, path: string, flags: number, attrSet: number, attrClr: number) => void =
  native.mountSetattr;
/**
 * name_to_handle_at(2) with flags (AT_EMPTY_PATH for the object of `dirfd` itself,
 * AT_SYMLINK_FOLLOW): the non-connectable file handle of an object. EOPNOTSUPP when its
 * filesystem cannot encode handles.
 */
export const nameToHandleAt: (dirfd: number, path: string, flags: number) => FileHandle = native.nameToHandleAt;
/**
 * open_by_handle_at(2): opens the object a handle names on the filesystem of `mountFd` (any
 * open descriptor on it; not O_PATH: EBADF). Needs CAP_DAC_READ_SEARCH; ESTALE when the object is gone.
 */
export const openByHandleAt: (mountFd: number, type: number, handle: Uint8Array, flags: number) => number =
  native.openByHandleAt;
/**
 * The UUID of the filesystem holding the open (not O_PATH) descriptor `fd`, as the kernel keeps it
 * in its superblock (ioctl FS_IOC_GETFSUUID, Linux 6.8+); null when the filesystem reports none
 * (ENOTTY: its UUID is all zeros, or the kernel is older).
 */
export const fsUuid: (fd: number) => Buffer | null = native.fsUuid;

// --- /dev/fuse ---------------------------------------------------------------
/** open("/dev/fuse", O_RDWR | O_CLOEXEC) */
export const openFuseDevice: () => number = native.openFuseDevice;
/** FUSE_DEV_IOC_CLONE: attach newFd (a fresh /dev/fuse fd) to oldFd's connection. */
export const ioctlClone: (newFd: number, oldFd: number) => void = native.ioctlClone;
/** FUSE_DEV_IOC_BACKING_OPEN: register fd for passthrough; returns the backing id. */
export const backingOpen: (devFd: number, fd: number) => number = native.backingOpen;
/** FUSE_DEV_IOC_BACKING_CLOSE */
export const backingClose: (devFd: number, id: number) => void = native.backingClose;
/** One write(2) / writev(2) of the reply; ENOENT means the request was interrupted. */
export const writeReply: (fd: number, bufs: readonly Uint8Array[] | Uint8Array, length?: number) => number = native.writeReply;
/**
 * Poll fd (made O_NONBLOCK) on the main loop; each request read into `buf`
 * (reused) is passed as onRequest(len), synchronously, up to 64 per wakeup.
 * Exceptions from the callbacks are printed to stderr. onEnd(null) on
 * unmount (ENODEV), onEnd(err) on other read errors; no calls after that.
 */
export const startReader: (fd: number, buf: Buffer, onRequest: (len: number) => void,
  onEnd: (err: Error | null) => void) => ReaderHandle = native.startReader;
/** Stop a reader (idempotent; safe from inside its callbacks). onEnd is not called. */
export const stopReader: (handle: ReaderHandle) => void = native.stopReader;
/** The reader's spins after batches of requests: [spins, spins that caught a request, milliseconds spun]. */
export const readerSpins: (handle: ReaderHandle) => [number, number, number] = native.readerSpins;

// --- process -----------------------------------------------------------------
/** Raise RLIMIT_NOFILE (hard too when root) towards n; returns the soft limit set. */
export const setNofileLimit: (n: number) => number = native.setNofileLimit;
export const getuid: () => number = native.getuid;
export const getgid: () => number = native.getgid;
export const geteuid: () => number = native.geteuid;
/** umask(2); returns the previous mask. */
export const umask: (mask: number) => number = native.umask;
/** setfsuid(2) for the calling (JS) thread; returns the previous fsuid. */
export const setfsuid: (uid: number) => number = native.setfsuid;
/** setfsgid(2) for the calling (JS) thread; returns the previous fsgid. */
export const setfsgid: (gid: number) => number = native.setfsgid;

/** Type guard for errors thrown by this module. */
export function isErrnoError(e: unknown, code?: ErrnoName | string): e is ErrnoError {
  return e instanceof Error && typeof (e as Partial<ErrnoError>).errno === 'number' &&
    typeof (e as Partial<ErrnoError>).code === 'string' && (code === undefined || (e as ErrnoError).code === code);
}
