// A long-lived process that holds file descriptors across steps: open files and directories stay
// open while other steps rename, unlink, re-create or copy up their names, and later steps act on
// the old descriptors (fchmod, ftruncate, fsetxattr, pread ...). One driver per side and per user:
// a small Python 3 program that drops to its uid/gids/umask, then reads JSON commands line by line
// and answers one JSON line each ({"ok": value} or {"err": "ENOENT"}).
//
// The test talks to it synchronously through two FIFOs (fifo-channel.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FifoChannel, sleepMs } from './fifo-channel.js';
import { isAlive } from './processes.js';
import { PYTHON } from './python.js';

/** Who runs a driver: ids, supplementary groups and umask. */
export interface FdUser {
  name: string;
  uid: number;
  gid: number;
  groups: number[];
  umask: number;
}

export const ROOT: FdUser = { name: 'root', uid: 0, gid: 0, groups: [0], umask: 0o022 };
/** Two unprivileged users with different primary and supplementary groups and umasks. */
export const USER1: FdUser = { name: 'u1', uid: 1000, gid: 1000, groups: [1000, 2345], umask: 0o077 };
export const USER2: FdUser = { name: 'u2', uid: 1234, gid: 2345, groups: [2345, 100], umask: 0o002 };

/** A command: its name, then arguments (see DRIVER below). */
export type FdCmd = [string, ...Array<string | number | null>];
export type FdAnswer = { ok: unknown } | { err: string };

const DRIVER = String.raw`
import ctypes, errno, hashlib, json, os, signal, subprocess, sys
cmd_path, res_path, root, user = sys.argv[1:5]
cin = open(cmd_path, 'rb')
res = os.open(res_path, os.O_WRONLY)
u = json.loads(user)
if u['uid'] != 0 or u['gid'] != 0:
    os.setgroups(u['groups']); os.setgid(u['gid']); os.setuid(u['uid'])
os.umask(u['umask'])
os.chdir(root)
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD = -100
FLAGS = {k: getattr(os, k) for k in ['O_RDONLY', 'O_WRONLY', 'O_RDWR', 'O_CREAT', 'O_EXCL', 'O_TRUNC', 'O_APPEND',
                                     'O_DIRECTORY', 'O_NOFOLLOW', 'O_NONBLOCK', 'O_NOATIME', 'O_PATH', 'O_SYNC', 'O_DSYNC']}
fds = {}
procs = {}
class Timeout(Exception): pass
def on_alarm(sig, frame): raise Timeout()
signal.signal(signal.SIGALRM, on_alarm)

def flags(s): 
    v = 0
    for f in s.split('|'): v |= FLAGS[f]
    return v
def chk(r):
    if r < 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    return r
def st(s):
    return {'mode': s.st_mode, 'uid': s.st_uid, 'gid': s.st_gid, 'size': s.st_size, 'nlink': s.st_nlink,
            'ino': str(s.st_ino), 'mtime': str(s.st_mtime_ns), 'atime': str(s.st_atime_ns), 'blocks': s.st_blocks}
def data(b): return {'len': len(b), 'sha': hashlib.sha256(b).hexdigest()[:12], 'head': b[:24].decode('latin1')}
def ns(t): return None if t is None else int(t)

def one(c):
    k = c[0]
    if k == 'open':
        fds[c[1]] = os.open(c[2], flags(c[3]), c[4] if len(c) > 4 else 0o644); return 'ok'
    if k == 'close':
        fd = fds.pop(c[1], None)
        if fd is None: raise OSError(errno.EBADF, 'no such label')
        os.close(fd); return 'ok'
    if k == 'reopen':
        # an open through /proc/self/fd/N of an open descriptor (no name is looked up)
        src = fds.get(c[1])
        if src is None: raise OSError(errno.EBADF, 'no such label')
        fds[c[2]] = os.open('/proc/self/fd/%d' % src, flags(c[3])); return 'ok'
    if k == 'spawn':
        procs[c[1]] = subprocess.Popen(c[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); return 'ok'
    if k == 'kill':
        p = procs.pop(c[1]); p.kill(); p.wait(); return 'ok'
    if k == 'exec':
        r = subprocess.run(c[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        return {'status': r.returncode, 'out': data(r.stdout)['sha'], 'err': r.stderr.decode('latin1')[-200:]}
    if k in ('unlink', 'rmdir', 'mkdir', 'rename', 'link', 'symlink', 'chmod', 'truncate', 'utime', 'stat', 'setxattr',
             'getxattr', 'listxattr', 'readfile', 'mkfifo', 'chown'):
        return path_op(k, c)
    fd = fds.get(c[1])
    if fd is None: raise OSError(errno.EBADF, 'no such label')
    if k == 'fstat': return st(os.fstat(fd))
    if k == 'fchmod': os.fchmod(fd, c[2]); return 'ok'
    if k == 'fchown': os.fchown(fd, c[2], c[3]); return 'ok'
    if k == 'futimens': os.utime(fd, ns=(ns(c[2]), ns(c[3]))) if c[2] is not None else os.utime(fd); return 'ok'
    if k == 'ftruncate': os.ftruncate(fd, c[2]); return 'ok'
    if k == 'fallocate': chk(libc.fallocate(fd, c[2], c[3], c[4])); return 'ok'
    if k == 'fsetxattr': os.setxattr(fd, c[2], bytes.fromhex(c[3]), c[4]); return 'ok'
    if k == 'fgetxattr': return os.getxattr(fd, c[2]).hex()
    if k == 'fremovexattr': os.removexattr(fd, c[2]); return 'ok'
    if k == 'flistxattr': return sorted(os.listxattr(fd))
    if k == 'read': return data(os.read(fd, c[2]))
    if k == 'pread': return data(os.pread(fd, c[2], c[3]))
    if k == 'write': return os.write(fd, bytes.fromhex(c[2]))
    if k == 'pwrite': return os.pwrite(fd, bytes.fromhex(c[2]), c[3])
    if k == 'lseek': return os.lseek(fd, c[2], c[3])
    if k == 'fsync': os.fsync(fd); return 'ok'
    if k == 'fdatasync': os.fdatasync(fd); return 'ok'
    if k == 'getdents':
        # (a name the directory lists but a lookup in it cannot find is marked: the kernel's phantom
        # whiteouts, see random-ops' phantomWhiteouts)
        out = []
        for n in sorted(os.listdir(fd)):
            try: os.stat(n, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError: n += ' (no lookup)'
            except OSError: pass
            out.append(n)
        return out
    # names relative to a directory descriptor (its directory may have moved or gone since)
    if k == 'openat':
        fds[c[3]] = os.open(c[2], flags(c[4]), c[5], dir_fd=fd); return 'ok'
    if k == 'fstatat': return st(os.stat(c[2], dir_fd=fd, follow_symlinks=False))
    if k == 'mkdirat': os.mkdir(c[2], c[3], dir_fd=fd); return 'ok'
    if k == 'unlinkat': os.rmdir(c[2], dir_fd=fd) if c[3] else os.unlink(c[2], dir_fd=fd); return 'ok'
    if k == 'renameat': chk(libc.renameat2(fd, c[2].encode(), fd, c[3].encode(), c[4])); return 'ok'
    if k == 'symlinkat': os.symlink(c[3], c[2], dir_fd=fd); return 'ok'
    if k == 'copy_file_range':
        dst = fds.get(c[2])
        if dst is None: raise OSError(errno.EBADF, 'no such label')
        return os.copy_file_range(fd, dst, c[3], c[4], c[5])
    raise ValueError('unknown command ' + k)

def path_op(k, c):
    p = c[1]
    if k == 'unlink': os.unlink(p)
    elif k == 'rmdir': os.rmdir(p)
    elif k == 'mkdir': os.mkdir(p, c[2])
    elif k == 'mkfifo': os.mkfifo(p, c[2])
    elif k == 'rename': chk(libc.renameat2(AT_FDCWD, p.encode(), AT_FDCWD, c[2].encode(), c[3] if len(c) > 3 else 0))
    elif k == 'link': os.link(p, c[2])
    elif k == 'symlink': os.symlink(p, c[2])
    elif k == 'chmod': os.chmod(p, c[2])
    elif k == 'chown': os.chown(p, c[2], c[3], follow_symlinks=False)
    elif k == 'truncate': os.truncate(p, c[2])
    elif k == 'utime': os.utime(p, ns=(ns(c[2]), ns(c[3])), follow_symlinks=False) if len(c) > 2 else os.utime(p)
    elif k == 'stat': return st(os.lstat(p))
    elif k == 'setxattr': os.setxattr(p, c[2], bytes.fromhex(c[3]), c[4], follow_symlinks=False)
    elif k == 'getxattr': return os.getxattr(p, c[2], follow_symlinks=False).hex()
    elif k == 'listxattr': return sorted(os.listxattr(p, follow_symlinks=False))
    elif k == 'readfile':
        with open(p, 'rb') as f: return data(f.read())
    return 'ok'

for line in cin:
    c = json.loads(line)
    if c[0] == 'quit': break
    signal.alarm(30)
    try:
        out = {'ok': one(c)}
    except Timeout:
        out = {'err': 'TIMEOUT'}
    except OSError as e:
        out = {'err': errno.errorcode.get(e.errno, str(e.errno))}
    except subprocess.TimeoutExpired:
        out = {'err': 'TIMEOUT'}
    finally:
        signal.alarm(0)
    b = (json.dumps(out) + '\n').encode()
    while b:
        b = b[os.write(res, b):]
for fd in fds.values():
    try: os.close(fd)
    except OSError: pass
for p in procs.values():
    p.kill(); p.wait()
`;

/** One driver process, rooted at a directory (relative paths in commands resolve from there). */
export class FdDriver {
  private readonly channel: FifoChannel;
  private readonly child: ChildProcess;
  private readonly errFile: string;
  private closed = false;

  constructor(readonly root: string, readonly user: FdUser = ROOT) {
    this.channel = new FifoChannel('fdd-');
    this.errFile = path.join(this.channel.dir, 'stderr');
    const err = fs.openSync(this.errFile, 'w');
    const { cmdPath, resPath } = this.channel;
    this.child = spawn(PYTHON, ['-c', DRIVER, cmdPath, resPath, root, JSON.stringify(user)], { stdio: ['ignore', 'ignore', err], cwd: '/' });
    fs.closeSync(err);
  }

  /** Runs one command and returns its answer; throws if the driver died or stays silent for `timeoutMs`. */
  call(cmd: FdCmd, timeoutMs = 60_000): FdAnswer {
    if (this.closed) throw new Error('fd driver already closed');
    this.channel.send(JSON.stringify(cmd) + '\n');
    const line = this.channel.readLine(
      timeoutMs,
      () => this.child.pid !== undefined && isAlive(this.child.pid),
      () => new Error(`fd driver (${this.user.name}) died: ${this.stderr()}`),
      () => new Error(`fd driver (${this.user.name}) did not answer ${JSON.stringify(cmd)} within ${timeoutMs} ms`),
    );
    return JSON.parse(line) as FdAnswer;
  }

  stderr(): string {
    try {
      return fs.readFileSync(this.errFile, 'utf8').trim().split('\n').slice(-5).join(' | ');
    } catch {
      return '';
    }
  }

  /** Closes every descriptor it holds, kills the processes it started, and ends. Never throws. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.channel.send('["quit"]\n');
    } catch {
      // the driver is gone already
    }
    const pid = this.child.pid;
    const end = Date.now() + 10_000;
    while (pid !== undefined && isAlive(pid) && Date.now() < end) sleepMs(5);
    if (pid !== undefined && isAlive(pid)) this.child.kill('SIGKILL');
    while (pid !== undefined && isAlive(pid) && Date.now() < end + 5_000) sleepMs(5);
    this.channel.close();
  }
}
