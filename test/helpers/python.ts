// Small Python 3 programs run through `python3 -c`, for the syscalls Node does not expose
// (mknod, mkfifo, sockets, xattrs, utimensat with nanoseconds, raw readdir/telldir/seekdir,
// *at() calls relative to a directory descriptor). Data goes in and out as JSON; file names
// travel hex-encoded so that no byte is lost to an encoding.
import fs from 'node:fs';
import { run } from './exec.js';

/** The system interpreter starts in ~20 ms; a version-manager shim on PATH can take 100+ ms. */
export const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Runs a Python program with JSON on stdin and parses the JSON it prints. */
export function python<T>(program: string, input: unknown, args: string[] = []): T {
  const r = run(PYTHON, ['-c', program, ...args], { input: JSON.stringify(input), timeoutMs: 120_000 });
  if (r.status !== 0) {
    throw new Error(`python3 helper failed (status ${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  }
  return JSON.parse(r.stdout) as T;
}

const PRELUDE = String.raw`
import ctypes, errno, json, os, socket, stat, sys
def hx(b): return b.hex()
def unhx(s): return bytes.fromhex(s)
def err_name(e): return errno.errorcode.get(e.errno, str(e.errno))
`;

/** libc's opendir/readdir/telldir/seekdir/rewinddir/closedir through ctypes, as libc. */
export const DIRS = PRELUDE + String.raw`
libc = ctypes.CDLL(None, use_errno=True)
class Dirent(ctypes.Structure):
    _fields_ = [('d_ino', ctypes.c_uint64), ('d_off', ctypes.c_int64), ('d_reclen', ctypes.c_ushort),
                ('d_type', ctypes.c_ubyte), ('d_name', ctypes.c_char * 256)]
libc.opendir.restype = ctypes.c_void_p; libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(Dirent); libc.readdir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long; libc.telldir.argtypes = [ctypes.c_void_p]
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.rewinddir.argtypes = [ctypes.c_void_p]; libc.closedir.argtypes = [ctypes.c_void_p]
`;

/**
 * Batch of operations; each op is [name, path, ...args], path either a string or 'hex:' and the
 * bytes in hex; stops at the first failure.
 */
export const OPS = PRELUDE + String.raw`
ops = json.load(sys.stdin)
for op in ops:
    kind = op[0]
    p = unhx(op[1][4:]) if op[1].startswith('hex:') else op[1].encode('utf-8', 'surrogateescape')
    try:
        if kind == 'mknod':
            os.mknod(p, op[2], os.makedev(op[3], op[4]))
        elif kind == 'mkfifo':
            os.mkfifo(p, op[2])
        elif kind == 'socket':
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(p); s.close()
        elif kind == 'lchown':
            os.lchown(p, op[2], op[3])
        elif kind == 'chmod':
            os.chmod(p, op[2])
        elif kind == 'setxattr':
            os.setxattr(p, op[2], unhx(op[3]), follow_symlinks=False)
        elif kind == 'utime':
            os.utime(p, ns=(int(op[2]), int(op[3])), follow_symlinks=False)
        elif kind == 'rm':
            os.unlink(p)
        elif kind == 'symlink':
            os.symlink(unhx(op[2]), p)
        else:
            raise ValueError('unknown op ' + kind)
    except OSError as e:
        sys.stderr.write('%s %r: %s\n' % (kind, p, e)); sys.exit(1)
print('true')
`;

/**
 * Walks a tree with raw libc readdir (no stat fallback for d_type) and lstat.
 * Output: [[dirRelHex, error|null, [[nameHex, d_ino, d_type, st_ino|errno-name]...]]...]
 */
export const WALK = DIRS + String.raw`
root = sys.argv[1].encode()
out = []
stack = [b'']
while stack:
    rel = stack.pop()
    full = root + (b'/' + rel if rel else b'')
    d = libc.opendir(full)
    if not d:
        out.append([hx(rel), errno.errorcode.get(ctypes.get_errno(), '?'), []]); continue
    ents = []
    while True:
        ctypes.set_errno(0)
        e = libc.readdir(d)
        if not e:
            if ctypes.get_errno():
                ents.append(['', 0, 0, 'READDIR_' + errno.errorcode.get(ctypes.get_errno(), '?')])
            break
        name = e.contents.d_name
        if name in (b'.', b'..'): continue
        child = rel + b'/' + name if rel else name
        try:
            st = os.lstat(root + b'/' + child); ino = str(st.st_ino)
            if stat.S_ISDIR(st.st_mode): stack.append(child)
        except OSError as ex:
            ino = err_name(ex)
        ents.append([hx(name), str(e.contents.d_ino), e.contents.d_type, ino])
    libc.closedir(d)
    out.append([hx(rel), None, ents])
print(json.dumps(out))
`;

/**
 * Reads a directory recording telldir() before each readdir(), then for each requested index
 * seekdir()s there and reads up to 'count' names; finally rewinddir() and reads everything again.
 */
export const SEEK = DIRS + String.raw`
req = json.load(sys.stdin)
d = libc.opendir(sys.argv[1].encode())
if not d: raise SystemExit('opendir failed: ' + errno.errorcode.get(ctypes.get_errno(), '?'))
def read_all():
    res = []
    while True:
        pos = libc.telldir(d)
        e = libc.readdir(d)
        if not e: return res
        res.append([pos, hx(e.contents.d_name)])
def read_n(n):
    res = []
    for _ in range(n):
        e = libc.readdir(d)
        if not e: break
        res.append(hx(e.contents.d_name))
    return res
first = read_all()
probes = []
for i in req['indices']:
    libc.seekdir(d, first[i][0])
    probes.append([i, read_n(req['count'])])
libc.rewinddir(d)
again = read_all()
libc.closedir(d)
print(json.dumps({'first': first, 'probes': probes, 'again': again}))
`;

/**
 * Path-relative operations on a directory descriptor, so that paths longer than PATH_MAX
 * from '/' can be used. Input: {root, ops: [[op, relPathHex, ...]]}; output: one result per op.
 */
export const AT = PRELUDE + String.raw`
req = json.load(sys.stdin)
fd = os.open(req['root'], os.O_RDONLY | os.O_DIRECTORY)
os.fchdir(fd)  # xattr calls take no dir_fd: resolve relative paths from here
out = []
for op in req['ops']:
    kind, rel = op[0], unhx(op[1])
    try:
        if kind == 'mkdirs':
            # create every component of rel, one mkdirat at a time
            cur = os.dup(fd)
            for comp in rel.split(b'/'):
                try: os.mkdir(comp, 0o755, dir_fd=cur)
                except FileExistsError: pass
                nxt = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur); os.close(cur); cur = nxt
            os.close(cur); out.append('ok')
        elif kind == 'writefile':
            f = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
            os.write(f, unhx(op[2])); os.close(f); out.append('ok')
        elif kind == 'lstat':
            st = os.stat(rel, dir_fd=fd, follow_symlinks=False)
            out.append({'mode': st.st_mode, 'size': st.st_size, 'mtime_ns': str(st.st_mtime_ns), 'uid': st.st_uid})
        elif kind == 'read':
            f = os.open(rel, os.O_RDONLY, dir_fd=fd)
            data = b''
            while True:
                c = os.read(f, 1 << 20)
                if not c: break
                data += c
            os.close(f); out.append(hx(data))
        elif kind == 'getxattr':
            out.append(hx(os.getxattr(rel, op[2], follow_symlinks=False)))
        elif kind == 'listxattr':
            out.append(sorted(os.listxattr(rel, follow_symlinks=False)))
        elif kind == 'setxattr':
            os.setxattr(rel, op[2], unhx(op[3]), follow_symlinks=False); out.append('ok')
        elif kind == 'removexattr':
            os.removexattr(rel, op[2], follow_symlinks=False); out.append('ok')
        elif kind == 'mknod':
            os.mknod(rel, op[2], os.makedev(op[3], op[4]), dir_fd=fd); out.append('ok')
        elif kind == 'mkfifo':
            os.mkfifo(rel, 0o644, dir_fd=fd); out.append('ok')
        elif kind == 'open':
            f = os.open(rel, op[2], 0o644, dir_fd=fd); os.close(f); out.append('ok')
        elif kind == 'symlink':
            os.symlink(unhx(op[2]), rel, dir_fd=fd); out.append('ok')
        elif kind == 'readlink':
            out.append(hx(os.readlink(rel, dir_fd=fd)))
        else:
            raise ValueError('unknown op ' + kind)
    except OSError as e:
        out.append({'errno': err_name(e)})
os.close(fd)
print(json.dumps(out))
`;
