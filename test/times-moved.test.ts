// Which of ctime and mtime each operation moves, on the object and on its directories, seen by lstat
// right after it: against the kernel. (Not atime: the lower files' atimes depend on when the test's own
// snapshots of the layers read them, and the README lists where strata's atimes differ.) A copy-up
// gives the copy a ctime of its own; an operation whose reply carries no attributes (an OPEN for
// writing) must make the kernel drop the lower file's attributes it holds.
import test from 'ava';
import { Checks } from './helpers/ops-checks.js';
import type { LayerSpec } from './helpers/ops-layers.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { python } from './helpers/python.js';

const LOWER: LayerSpec = [
  { t: 'dir', p: 'd' },
  { t: 'file', p: 'd/w', data: 'lower w\n' },
  { t: 'file', p: 'd/a', data: 'lower a\n' },
  { t: 'file', p: 'd/rw', data: 'lower rw\n' },
  { t: 'file', p: 'd/z', data: 'lower z\n' },
  { t: 'file', p: 'd/big', data: 'b'.repeat(100_000) },
  { t: 'file', p: 'd/m', data: 'lower m\n', mode: 0o644 },
  { t: 'file', p: 'd/o', data: 'lower o\n', mode: 0o644 },
  { t: 'file', p: 'd/t', data: 'lower t\n' },
  { t: 'file', p: 'd/x', data: 'lower x\n' },
  { t: 'dir', p: 'e' },
  { t: 'file', p: 'e/f', data: 'lower f\n' },
  { t: 'dir', p: 'f' },
  { t: 'file', p: 'f/k', data: 'lower k\n' },
  { t: 'dir', p: 'g' },
  { t: 'file', p: 'g/i', data: 'lower i\n' },
];

/** Each step: a name, the code (run in the mount), and the paths whose times are compared. */
const SCRIPT = String.raw`
import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class TS(ctypes.Structure): _fields_ = [('s', ctypes.c_long), ('ns', ctypes.c_long)]
OMIT = (1 << 30) - 2
def omit(p):
    if libc.utimensat(-100, p.encode(), (TS * 2)(TS(0, OMIT), TS(0, OMIT)), 0x100) < 0: raise OSError(ctypes.get_errno(), p)
def opened(p, flags, data=None):
    fd = os.open(p, flags)
    if data is not None: os.write(fd, data)
    os.close(fd)
def chown_same(p): os.chown(p, -1, -1)
os.chdir(sys.argv[1])
STEPS = [
    ('open O_WRONLY, write nothing', lambda: opened('d/w', os.O_WRONLY, b''), ['d/w', 'd']),
    ('open O_WRONLY|O_APPEND', lambda: opened('d/a', os.O_WRONLY | os.O_APPEND), ['d/a', 'd']),
    ('open O_RDWR', lambda: opened('d/rw', os.O_RDWR), ['d/rw']),
    ('open O_WRONLY, a large file', lambda: opened('d/big', os.O_WRONLY), ['d/big']),
    ('open O_WRONLY|O_TRUNC', lambda: opened('d/t', os.O_WRONLY | os.O_TRUNC), ['d/t']),
    ('chmod to the same mode', lambda: os.chmod('d/m', 0o644), ['d/m', 'd']),
    ('chown -1 -1', lambda: chown_same('d/o'), ['d/o']),
    ('utimensat OMIT OMIT', lambda: omit('d/x'), ['d/x']),
    ('utimensat OMIT OMIT on the copy', lambda: omit('d/w'), ['d/w']),
    ('open O_WRONLY of the copy', lambda: opened('d/w', os.O_WRONLY), ['d/w', 'd']),
    ('setxattr', lambda: os.setxattr('d/z', 'user.k', b'v'), ['d/z']),
    ('removexattr of a missing name', lambda: os.removexattr('e/f', 'user.none'), ['e/f', 'e']),
    ('rename within the directory', lambda: os.rename('e/f', 'e/g'), ['e/f', 'e/g', 'e']),
    ('link', lambda: os.link('e/g', 'e/h'), ['e/g', 'e']),
    ('unlink of one of two names', lambda: os.unlink('e/h'), ['e/g', 'e']),
    ('rename to another directory', lambda: os.rename('d/z', 'e/z'), ['d', 'e', 'e/z']),
    ('rename over a lower file', lambda: os.rename('e/z', 'd/x'), ['d', 'e', 'd/x']),
    ('mkdir in a lower directory', lambda: os.mkdir('f/new'), ['f', 'f/k']),
    ('symlink', lambda: os.symlink('k', 'f/ln'), ['f', 'f/k']),
    ('mknod of a fifo', lambda: os.mkfifo('f/p'), ['f']),
    ('rmdir', lambda: os.rmdir('f/new'), ['f']),
    ('chown of a lower directory', lambda: os.chown('g', 1000, 1000), ['g', '.']),
    ('write through a new descriptor', lambda: opened('f/k', os.O_WRONLY, b'new'), ['f/k', 'f']),
    ('truncate by name', lambda: os.truncate('f/k', 1), ['f/k', 'f']),
]
def times(paths):
    out = {}
    for p in paths:
        try:
            s = os.lstat(p); out[p] = (s.st_ctime_ns, s.st_mtime_ns)
        except OSError as e:
            out[p] = errno.errorcode[e.errno]
    return out
def moved(a, b):
    def one(x, y):
        if isinstance(y, str): return y
        if isinstance(x, str): return 'made'
        return ''.join(c if u != v else '-' for c, u, v in zip('cm', x, y))
    return {p: one(a[p], b[p]) for p in b}
res = []
for name, fn, paths in STEPS:
    before = times(paths)
    time.sleep(0.02)
    try:
        fn(); r = 'ok'
    except OSError as e:
        r = errno.errorcode[e.errno]
    now = times(paths)
    res.append([name, r, moved(before, now)])
print(json.dumps(res))
`;

test('which of ctime and mtime each operation moves, on the object and its directories, as on the kernel (copy-ups by OPEN included)', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER]);
  const seen = {
    kernel: python<unknown>(SCRIPT, null, [pair.kernel.mnt]),
    strata: python<unknown>(SCRIPT, null, [pair.strata.mnt]),
  };
  c.eq(seen.strata, seen.kernel, 'times moved by each step');
  finishPair(c, pair);
  c.done();
});
