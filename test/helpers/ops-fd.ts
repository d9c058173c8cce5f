// Descriptor operations for the seeded random-operation test: descriptors of files and
// directories opened by root and by two unprivileged users (own uids, supplementary groups and
// umasks) stay open while the names change under them (rename with and without NOREPLACE and
// EXCHANGE, unlink, rmdir, re-creation, copy-up), and act through the old descriptors: fchmod,
// fchown, futimens, ftruncate, fallocate, fsetxattr/fgetxattr/fremovexattr/flistxattr, fstat,
// read/pread past the end, write with and without O_APPEND, lseek SEEK_DATA/SEEK_HOLE, fsync,
// copy_file_range between two of them, read-only opens through /proc/self/fd, and openat, mkdirat,
// unlinkat, renameat, symlinkat, fstatat relative to directory descriptors.
import { ROOT, USER1, USER2, type FdCmd, type FdUser } from './fd-driver.js';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, type Op } from './ops-runner.js';

export const FD_USERS: readonly FdUser[] = [ROOT, USER1, USER2];

type Rand = () => number;
const int = (r: Rand, n: number): number => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;

const LABELS = ['F0', 'F1', 'F2', 'F3', 'F4', 'F5', 'F6', 'F7'];
// (O_NOATIME: EPERM for a caller who does not own the file; O_PATH: a descriptor most operations refuse
// with EBADF, which fstat, *at calls and a reopen through /proc take)
const FILE_FLAGS = ['O_RDONLY', 'O_WRONLY', 'O_RDWR', 'O_RDWR|O_APPEND', 'O_WRONLY|O_APPEND', 'O_RDWR|O_CREAT', 'O_WRONLY|O_CREAT|O_TRUNC',
  'O_RDWR|O_CREAT|O_EXCL', 'O_RDONLY|O_NOATIME', 'O_PATH', 'O_RDWR|O_SYNC', 'O_WRONLY|O_DSYNC|O_APPEND'];
const FILE_MODES = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o666, 0o1444];
const DIR_MODES = [0o755, 0o700, 0o1777, 0o2775, 0o555];
const SIZES = [0, 1, 10, 100, 4096, 70_000, 1 << 20];
/** (trusted.overlay.* is escaped by the mount: trusted.overlay.overlay.* on the layer object) */
const XATTRS = ['user.x', 'user.y', 'user.fd', 'trusted.overlay.fd'];
const SEEK_SET = 0;
const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** fallocate modes: plain, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE. */
const FALLOC_MODES = [0, 1, 3];

export interface OpenFd {
  who: string;
  dir: boolean;
  /** The path it was opened by (the name may have changed since). */
  path: string;
}

/** The listing the generator draws paths from (see random-ops.test.ts). */
export interface FdListing {
  entries: Array<[string, string]>;
  dirs: string[];
}

function hexOf(r: Rand, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += (32 + int(r, 95)).toString(16);
  return s;
}

export class FdOpGenerator {
  readonly open = new Map<string, OpenFd>();

  constructor(private readonly r: Rand, private readonly newPath: (l: FdListing) => string) {}

  /** Follows the kernel's answer to an op this generator made (which descriptors are open now). */
  observe(op: Op, kernelAnswer: unknown): void {
    if (op[0] !== 'fd') return;
    const [, who, cmd] = op;
    const label = String(cmd[1]);
    if (cmd[0] === 'close') this.open.delete(label);
    const a = kernelAnswer as { r?: { ok?: unknown } };
    if (!a.r || !('ok' in a.r)) return;
    if (cmd[0] === 'open') this.open.set(label, { who, dir: String(cmd[3]).includes('O_DIRECTORY'), path: String(cmd[2]) });
    if (cmd[0] === 'reopen') this.open.set(String(cmd[2]), { ...this.open.get(label)!, who });
    // (a file opened below a directory descriptor: its path is not known, name ops leave it alone)
    if (cmd[0] === 'openat') this.open.set(String(cmd[3]), { who, dir: String(cmd[4]).includes('O_DIRECTORY'), path: '' });
  }

  /** Descriptors still open at the end: close them (the mounts must unmount). */
  closeAll(): Op[] {
    return [...this.open].map(([label, fd]) => ['fd', fd.who, ['close', label]]);
  }

  next(l: FdListing): Op | undefined {
    const r = this.r;
    const labels = [...this.open.keys()];
    if (labels.length === 0 || (labels.length < LABELS.length && r() < 0.12)) return this.openOp(l);
    const label = pick(r, labels);
    const fd = this.open.get(label)!;
    const x = r();
    if (x < 0.3) {
      const op = this.nameOp(l, fd);
      if (op) return op;
    }
    if (x < 0.36) return ['fd', fd.who, ['close', label]];
    return ['fd', fd.who, fd.dir ? this.dirCmd(label, fd) : this.fileCmd(label, fd)];
  }

  private openOp(l: FdListing): Op | undefined {
    const r = this.r;
    const free = LABELS.filter((x) => !this.open.has(x));
    if (free.length === 0) return undefined;
    const label = pick(r, free);
    const who = pick(r, FD_USERS).name;
    // (an open through /proc/self/fd of an open file: read-only, see the README on passthrough and copy-up)
    const files = [...this.open].filter(([, f]) => !f.dir && f.who === who);
    if (files.length && r() < 0.15) return ['fd', who, ['reopen', pick(r, files)[0], label, pick(r, ['O_RDONLY', 'O_RDONLY', 'O_PATH'])]];
    if (r() < 0.25) {
      const dirs = l.entries.filter(([, t]) => t === 'dir');
      if (dirs.length) return ['fd', who, ['open', label, pick(r, dirs)[0], 'O_RDONLY|O_DIRECTORY']];
    }
    const names = l.entries.filter(([, t]) => t === 'file');
    const flags = pick(r, FILE_FLAGS);
    const p = flags.includes('O_CREAT') && (r() < 0.6 || !names.length) ? this.newPath(l) : names.length ? pick(r, names)[0] : undefined;
    // A new name may be an existing symlink: O_CREAT without O_EXCL would open (and O_TRUNC empty) its target, anywhere.
    if (p === undefined || l.entries.some(([q, t]) => q === p && t === 'symlink')) return undefined;
    return ['fd', who, ['open', label, p, flags, pick(r, FILE_MODES)]];
  }

  /**
   * A change of the name an open descriptor was opened by: the object moves away, goes, or is copied up.
   * That name may be a symlink by now, or sit below one, and the layers' symlinks point anywhere
   * ("/", "/tmp/../etc"): undefined when the path leads through a symlink, and no op that follows a
   * symlink at its end (chmod, an open, a mkdir below it) when it is one. A soak once chmodded the
   * host's "/" and made a directory in its /etc that way.
   */
  private nameOp(l: FdListing, fd: OpenFd): Op | undefined {
    const r = this.r;
    const p = fd.path;
    if (p === '') return undefined; // opened below a directory descriptor
    const types = new Map(l.entries);
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) if (types.get(parts.slice(0, i).join('/')) !== 'dir') return undefined;
    const followable = types.get(p) !== 'symlink';
    const x = int(r, 10);
    if (!followable && (x === 6 || x >= 8)) return undefined;
    const other = (): string => (r() < 0.5 && l.entries.length ? pick(r, l.entries)[0] : this.newPath(l));
    switch (x) {
      case 0:
      case 1:
        return fd.dir ? ['rmdir', p] : ['unlink', p];
      case 2:
      case 3: {
        const f = r();
        return f < 0.6 ? ['rename', p, other()] : ['rename', p, other(), f < 0.8 ? RENAME_NOREPLACE : RENAME_EXCHANGE];
      }
      case 4:
        return ['rename', other(), p, r() < 0.3 ? RENAME_EXCHANGE : 0];
      case 5:
        return fd.dir ? ['mkdir', p, pick(r, DIR_MODES)] : ['create', p, pick(r, FILE_MODES), 'again'];
      case 6:
        return ['chmod', p, pick(r, fd.dir ? DIR_MODES : FILE_MODES)];
      case 7:
        return ['setxattr', p, pick(r, XATTRS), 'by name'];
      case 8:
        // a path op by another user, with that user's umask
        return ['fd', pick(r, FD_USERS).name, fd.dir ? ['mkdir', `${p}/sub${int(r, 3)}`, 0o777] : ['rename', p, this.newPath(l)]];
      default:
        return fd.dir ? ['fd', 'root', ['mkdir', `${p}/n${int(r, 3)}`, 0o775]] : ['open', p, 'O_RDWR'];
    }
  }

  private common(label: string, fd: OpenFd): FdCmd | undefined {
    const r = this.r;
    const x = int(r, 10);
    switch (x) {
      case 0:
        return ['fchmod', label, pick(r, fd.dir ? DIR_MODES : FILE_MODES)];
      case 1: {
        const u = FD_USERS.find((u) => u.name === fd.who)!;
        const owners: Array<[number, number]> = u.uid === 0 ? [[0, 0], [1000, 1000], [1234, 2345], [0, 100]] : [[u.uid, u.gid], [-1, pick(r, u.groups)], [0, 0], [u.uid, 4321]];
        return ['fchown', label, ...pick(r, owners)];
      }
      case 2: {
        const t = (): string => (BigInt(1_000_000_000 + int(r, 500_000_000)) * 1_000_000_000n + BigInt(int(r, 1_000_000_000))).toString();
        return r() < 0.3 ? ['futimens', label, null, null] : ['futimens', label, t(), t()];
      }
      case 3:
        return ['fsetxattr', label, pick(r, XATTRS), hexOf(r, 1 + int(r, 12)), pick(r, [0, 1, 2])];
      case 4:
        return ['fgetxattr', label, pick(r, XATTRS)];
      case 5:
        return ['fremovexattr', label, pick(r, XATTRS)];
      case 6:
        return ['flistxattr', label];
      case 7:
        return ['fstat', label];
      case 8:
        return [pick(r, ['fsync', 'fdatasync']), label];
      default:
        return undefined;
    }
  }

  private dirCmd(label: string, fd: OpenFd): FdCmd {
    const r = this.r;
    if (r() < 0.5) return this.common(label, fd) ?? ['getdents', label];
    const names = ['f', 'g', 'sub', 'n0', 'x'];
    const name = (): string => pick(r, names);
    const free = LABELS.filter((x) => !this.open.has(x));
    switch (int(r, 7)) {
      case 0:
        // (O_NOFOLLOW: a name there may be one of the layers' symlinks, which point anywhere)
        if (free.length) return ['openat', label, name(), pick(r, free), pick(r, ['O_RDONLY', 'O_RDWR|O_CREAT', 'O_WRONLY|O_CREAT|O_EXCL', 'O_RDONLY|O_DIRECTORY']) + '|O_NOFOLLOW', pick(r, FILE_MODES)];
        return ['fstatat', label, name()];
      case 1:
        return ['fstatat', label, name()];
      case 2:
        return ['mkdirat', label, name(), pick(r, DIR_MODES)];
      case 3:
        return ['unlinkat', label, name(), r() < 0.3 ? 1 : 0];
      case 4:
        return ['renameat', label, name(), name(), pick(r, [0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])];
      case 5:
        return ['symlinkat', label, name(), pick(r, ['f', '../g', 'nowhere'])];
      default:
        return ['getdents', label];
    }
  }

  private fileCmd(label: string, fd: OpenFd): FdCmd {
    const r = this.r;
    if (r() < 0.45) {
      const c = this.common(label, fd);
      if (c) return c;
    }
    switch (int(r, 9)) {
      case 0:
        return ['ftruncate', label, pick(r, SIZES)];
      case 7: {
        const files = [...this.open].filter(([, f]) => !f.dir && f.who === fd.who).map(([l]) => l);
        return ['copy_file_range', label, pick(r, files), pick(r, [1, 100, 70_000]), pick(r, [0, 10, 5000]), pick(r, [0, 3, 100_000])];
      }
      case 1:
        return ['fallocate', label, pick(r, FALLOC_MODES), pick(r, [0, 10, 4096, 65_536]), pick(r, [1, 100, 4096, 100_000])];
      case 2:
        return ['read', label, pick(r, [1, 100, 5000, 1 << 20])];
      case 3:
        // often past the end
        return ['pread', label, pick(r, [10, 1000, 100_000]), pick(r, [0, 5, 90, 5000, 70_000, 2 << 20])];
      case 4:
        return ['write', label, hexOf(r, 1 + int(r, 80))];
      case 5:
        return ['pwrite', label, hexOf(r, 1 + int(r, 80)), pick(r, [0, 3, 5000, 200_000])];
      case 6:
        return ['lseek', label, pick(r, [0, 1, 4096, 70_000]), pick(r, [SEEK_DATA, SEEK_HOLE, SEEK_DATA, SEEK_HOLE, SEEK_SET, SEEK_END])];
      default:
        return ['fstat', label];
    }
  }
}
