// The op runner: performs one operation on a tree (a kernel overlay or a strata mount) and
// returns what a program would observe: a value, "ok", or the errno code. Ops are plain JSON
// tuples so that a failing sequence can be printed and replayed.
import fs from 'node:fs';
import path from 'node:path';
import { normTime, kindOf } from './ops-tree.js';
import { xattrValue } from './ops-layers.js';
import { errnoName, xop, type XCmd, type XResult } from './ops-xop.js';
import { run } from './exec.js';

const STRERROR_CODES: Record<string, string> = {
  'Operation not permitted': 'EPERM', 'No such file or directory': 'ENOENT', 'Permission denied': 'EACCES',
  'Inappropriate ioctl for device': 'ENOTTY', 'Operation not supported': 'EOPNOTSUPP', 'Not a directory': 'ENOTDIR',
  'Text file busy': 'ETXTBSY', 'Read-only file system': 'EROFS',
};
import type { FdCmd } from './fd-driver.js';

const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NONBLOCK, O_NOFOLLOW, O_DIRECTORY } = fs.constants;
const FLAG_BITS: Record<string, number> = {
  O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NONBLOCK, O_NOFOLLOW, O_DIRECTORY,
};
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;

export function openFlags(s: string): number {
  return s.split('|').reduce((acc, f) => {
    const v = FLAG_BITS[f];
    if (v === undefined) throw new Error(`unknown open flag ${f}`);
    return acc | v;
  }, 0);
}

export interface StatOpts {
  atime?: boolean;
  /** Report st_blocks*512 rounded up to MiB (for sparse-file checks). */
  blocks?: boolean;
}

/** Times are decimal nanosecond strings (bigint-safe in JSON). */
export type Op =
  | ['stat', string, StatOpts?]
  | ['read', string]
  /** Reads `len` bytes at `off`. */
  | ['pread', string, number, number]
  | ['readdir', string]
  | ['readlink', string]
  | ['open', string, string]
  /** Opens without O_CREAT and writes `data` at `offset`. */
  | ['write', string, number, string]
  /** O_CREAT|O_EXCL|O_WRONLY with `mode`, then writes `data`. */
  | ['create', string, number, string]
  | ['truncate', string, number]
  | ['chmod', string, number]
  | ['lchown', string, number, number]
  | ['utimens', string, string, string]
  | ['setxattr', string, string, string]
  | ['removexattr', string, string]
  | ['getxattr', string, string]
  | ['listxattr', string]
  | ['mkdir', string, number]
  | ['rmdir', string]
  | ['unlink', string]
  | ['rename', string, string, number?]
  | ['link', string, string]
  | ['symlink', string, string]
  | ['mkfifo', string, number]
  /** Opens for writing, writes, fsyncs, closes. */
  | ['fsync', string, string]
  /** Opens read-only, unlinks, then fstat (nlink, size) and reads through the descriptor. */
  | ['openUnlink', string]
  /** fallocate(2) with `mode` (FALLOC_FL_* bits) at offset, length. */
  | ['fallocate', string, number, number, number]
  /** open(O_TMPFILE) in a directory with `mode`, write `data`, linkat it to a new path. */
  | ['tmpfile', string, number, string, string]
  /** Reads a directory, seekdir back to entry k (mod the count), reads on: [entries, resumed exactly]. */
  | ['seekdir', string, number]
  /** chattr with one change ("+i", "-a", "+A", ...), as root. */
  | ['chattr', string, string]
  /** One op run as uid/gid (supplementary groups cleared), through the xop helper. */
  | ['as', number, number, Op]
  /** A command of the descriptor driver of one user (fd-driver.ts), run through an FdSide. */
  | ['fd', string, FdCmd]
  /** Unmount, then mount the same layers again (random-ops: every descriptor closed first). */
  | ['remount']
  /**
   * The kernel forgets the dentries and inodes nobody holds (drop_caches 2; on both sides at once):
   * objects are looked up afresh, while those that descriptors hold stay.
   */
  | ['dropCaches'];

export type Result = unknown;

/** Per-tree state: inode numbers are reported as labels in order of first sight. */
export class Runner {
  private labels = new Map<bigint, string>();
  constructor(readonly root: string) {}

  p(rel: string): string {
    return rel === '' || rel === '.' ? this.root : path.join(this.root, rel);
  }

  /** Forgets the labels given so far (inode numbers are reused once an object is gone). */
  resetLabels(): void {
    this.labels.clear();
  }

  inoLabel(ino: bigint): string {
    // (Node's bigint stat reads st_ino as signed: numbers from 2^63 on, as the kernel's xino gives lower
    // objects, come back negative, and from the descriptor driver as unsigned strings)
    ino = BigInt.asUintN(64, ino);
    let l = this.labels.get(ino);
    if (!l) this.labels.set(ino, (l = `ino${this.labels.size + 1}`));
    return l;
  }

  statOf(st: fs.BigIntStats, opts: StatOpts = {}): Record<string, unknown> {
    const type = kindOf(st);
    const r: Record<string, unknown> = {
      type,
      perm: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      nlink: Number(st.nlink),
      ino: this.inoLabel(st.ino),
      mtime: normTime(st.mtimeNs),
    };
    r.size = Number(st.size);
    if (type === 'chr' || type === 'blk') r.rdev = st.rdev.toString();
    if (opts.atime) r.atime = normTime(st.atimeNs);
    if (opts.blocks) r.allocatedMiB = Math.ceil(Number(st.blocks * 512n) / (1 << 20));
    return r;
  }

  run(op: Op): Result {
    try {
      return this.exec(op);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      // Node leaves some codes unnamed ("Unknown system error -116"): name them from the number.
      if (typeof err.errno === 'number' && err.syscall) return { err: errnoName(-err.errno) };
      if (typeof err.code === 'string' && /^E[A-Z0-9]+$/.test(err.code)) return { err: err.code };
      throw e;
    }
  }

  private x(cmd: XCmd, as?: [number, number]): XResult {
    return xop([cmd], as ? { as } : {})[0]!;
  }

  private xres(r: XResult): Result {
    return 'err' in r ? { err: r.err } : r.ok.length ? r.ok : 'ok';
  }

  private exec(op: Op): Result {
    const P = (rel: string): string => this.p(rel);
    switch (op[0]) {
      case 'stat':
        return this.statOf(fs.lstatSync(P(op[1]), { bigint: true }), op[2]);
      case 'read':
        return fs.readFileSync(P(op[1]), 'latin1');
      case 'pread': {
        const fd = fs.openSync(P(op[1]), 'r');
        try {
          const b = Buffer.alloc(op[3]);
          const n = fs.readSync(fd, b, 0, op[3], op[2]);
          return b.subarray(0, n).toString('latin1');
        } finally {
          fs.closeSync(fd);
        }
      }
      case 'readdir':
        return fs.readdirSync(P(op[1])).sort();
      case 'readlink':
        return fs.readlinkSync(P(op[1]));
      case 'open':
        fs.closeSync(fs.openSync(P(op[1]), openFlags(op[2]), 0o644));
        return 'ok';
      case 'write': {
        const fd = fs.openSync(P(op[1]), O_WRONLY);
        try {
          fs.writeSync(fd, Buffer.from(op[3], 'latin1'), 0, op[3].length, op[2]);
        } finally {
          fs.closeSync(fd);
        }
        return 'ok';
      }
      case 'create': {
        const fd = fs.openSync(P(op[1]), O_CREAT | O_EXCL | O_WRONLY, op[2]);
        try {
          fs.writeSync(fd, Buffer.from(op[3], 'latin1'));
        } finally {
          fs.closeSync(fd);
        }
        return 'ok';
      }
      case 'truncate':
        // truncate(2) itself: Node's truncateSync opens the file (and would block on a FIFO)
        return this.xres(this.x(['truncate', P(op[1]), op[2]]));
      case 'chmod':
        fs.chmodSync(P(op[1]), op[2]);
        return 'ok';
      case 'lchown':
        fs.lchownSync(P(op[1]), op[2], op[3]);
        return 'ok';
      case 'utimens': {
        const a = BigInt(op[2]);
        const m = BigInt(op[3]);
        const G = 1_000_000_000n;
        return this.xres(this.x(['utimens', P(op[1]), a / G, a % G, m / G, m % G]));
      }
      case 'setxattr':
        return this.xres(this.x(['setxattr', P(op[1]), op[2], xattrValue(op[3]), 0]));
      case 'removexattr':
        return this.xres(this.x(['removexattr', P(op[1]), op[2]]));
      case 'getxattr': {
        const r = this.x(['getxattr', P(op[1]), op[2]]);
        return 'err' in r ? { err: r.err } : '0x' + (r.ok[0] ?? '');
      }
      case 'listxattr': {
        const r = this.x(['xattrs', P(op[1])]);
        return 'err' in r ? { err: r.err } : r.ok.map((kv) => Buffer.from(kv.split(':')[0]!, 'hex').toString()).sort();
      }
      case 'mkdir':
        fs.mkdirSync(P(op[1]), op[2]);
        return 'ok';
      case 'rmdir':
        fs.rmdirSync(P(op[1]));
        return 'ok';
      case 'unlink':
        fs.unlinkSync(P(op[1]));
        return 'ok';
      case 'rename':
        if (op[3]) return this.xres(this.x(['rename2', P(op[1]), P(op[2]), op[3]]));
        fs.renameSync(P(op[1]), P(op[2]));
        return 'ok';
      case 'link':
        fs.linkSync(P(op[1]), P(op[2]));
        return 'ok';
      case 'symlink':
        fs.symlinkSync(op[1], P(op[2]));
        return 'ok';
      case 'mkfifo':
        return this.xres(this.x(['mknod', P(op[1]), 0o010000 | op[2], 0, 0]));
      case 'fsync': {
        const fd = fs.openSync(P(op[1]), O_WRONLY | O_CREAT, 0o644);
        try {
          fs.writeSync(fd, Buffer.from(op[2], 'latin1'));
          fs.fsyncSync(fd);
          fs.fdatasyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
        return 'ok';
      }
      case 'openUnlink': {
        const r = this.x(['openunlink', P(op[1])]);
        if ('err' in r) return { err: r.err };
        const [nlink, size, data] = r.ok;
        return { nlink: Number(nlink), size: Number(size), data: Buffer.from(data ?? '', 'hex').toString('latin1') };
      }
      case 'fallocate':
        return this.xres(this.x(['fallocate', P(op[1]), op[2], op[3], op[4]]));
      case 'tmpfile':
        return this.xres(this.x(['tmpfile', P(op[1]), op[2], P(op[3]), Buffer.from(op[4], 'latin1')]));
      case 'seekdir':
        return this.xres(this.x(['seekdir', P(op[1]), op[2]]));
      case 'chattr': {
        const r = run('chattr', [op[2], P(op[1])]);
        if (r.status === 0) return 'ok';
        // chattr prints strerror: the errno name back from the text ("chattr: <strerror> while setting
        // flags on <path>" when the filesystem refuses, "... while trying to stat <path>" for a missing
        // one, else "<path>: <strerror>"), never the path (each side's mount point is in it)
        const line = r.stderr.trim().split('\n').pop() ?? '';
        const text = /: (.+?) while (?:setting flags on|reading flags on|trying to stat) /.exec(line)?.[1] ?? line.split(': ').pop() ?? '';
        return { err: STRERROR_CODES[text] ?? text };
      }
      case 'as':
        return this.asUser(op[1], op[2], op[3]);
      case 'fd':
        throw new Error('descriptor ops run through an FdSide (fd-side.ts), not the Runner');
    }
  }

  /** The subset of ops the xop helper can run as another user. */
  private asUser(uid: number, gid: number, op: Op): Result {
    const P = (rel: string): string => this.p(rel);
    const as: [number, number] = [uid, gid];
    let cmd: XCmd;
    switch (op[0]) {
      case 'stat': {
        const r = this.x(['stat', P(op[1])], as);
        if ('err' in r) return { err: r.err };
        return { uid: Number(r.ok[1]), gid: Number(r.ok[2]), perm: (Number(r.ok[0]) & 0o7777).toString(8) };
      }
      case 'read': {
        const r = this.x(['read', P(op[1])], as);
        return 'err' in r ? { err: r.err } : Buffer.from(r.ok[0] ?? '', 'hex').toString('latin1');
      }
      case 'open': cmd = ['open', P(op[1]), openFlags(op[2]), 0o644]; break;
      case 'write': cmd = ['write', P(op[1]), O_WRONLY, op[2], Buffer.from(op[3], 'latin1')]; break;
      case 'create': cmd = ['create', P(op[1]), op[2], Buffer.from(op[3], 'latin1')]; break;
      case 'truncate': cmd = ['truncate', P(op[1]), op[2]]; break;
      case 'chmod': cmd = ['chmod', P(op[1]), op[2]]; break;
      case 'lchown': cmd = ['lchown', P(op[1]), op[2], op[3]]; break;
      case 'setxattr': cmd = ['setxattr', P(op[1]), op[2], xattrValue(op[3]), 0]; break;
      case 'mkdir': cmd = ['mkdir', P(op[1]), op[2]]; break;
      case 'rmdir': cmd = ['rmdir', P(op[1])]; break;
      case 'unlink': cmd = ['unlink', P(op[1])]; break;
      case 'rename': cmd = ['rename2', P(op[1]), P(op[2]), op[3] ?? 0]; break;
      case 'link': cmd = ['link', P(op[1]), P(op[2])]; break;
      case 'symlink': cmd = ['symlink', op[1], P(op[2])]; break;
      case 'mkfifo': cmd = ['mknod', P(op[1]), 0o010000 | op[2], 0, 0]; break;
      case 'fallocate': cmd = ['fallocate', P(op[1]), op[2], op[3], op[4]]; break;
      case 'tmpfile': cmd = ['tmpfile', P(op[1]), op[2], P(op[3]), Buffer.from(op[4], 'latin1')]; break;
      default:
        throw new Error(`op ${op[0]} cannot run as another user`);
    }
    return this.xres(this.x(cmd, as));
  }
}

/** Compact one-line form of an op for logs and repro listings. */
export function showOp(op: Op): string {
  return JSON.stringify(op);
}
