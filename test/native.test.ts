import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import v8 from 'node:v8';
import { Worker } from 'node:worker_threads';
import * as N from '../src/native/index.js';

const { C, ST } = N;
const E = C.errno;

/** A fresh temp dir plus an O_PATH fd on it, removed at teardown. */
function tmp(t: ExecutionContext, base = os.tmpdir()): { dir: string; dfd: number } {
  const dir = fs.mkdtempSync(path.join(base, 'strata-native-'));
  const dfd = N.openat(C.AT_FDCWD, dir, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  t.teardown(() => {
    N.close(dfd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, dfd };
}

/** Open a file for the duration of the test. */
function open(t: ExecutionContext, dfd: number, name: string, flags: number, mode = 0o644): number {
  const fd = N.openat(dfd, name, flags | C.O_CLOEXEC, mode);
  t.teardown(() => N.close(fd));
  return fd;
}

function errOf(fn: () => unknown): N.ErrnoError {
  try {
    fn();
  } catch (e) {
    if (N.isErrnoError(e)) return e;
    throw e;
  }
  throw new Error('expected an errno error');
}

function st(dfd: number, name: string, flags = C.AT_SYMLINK_NOFOLLOW): Float64Array {
  const out = N.newStatBuf();
  N.fstatat(dfd, name, flags, out);
  return out;
}

const isRoot = process.getuid?.() === 0;

test('constants are numbers with the expected values', (t) => {
  t.is(C.AT_FDCWD, -100);
  t.is(C.AT_SYMLINK_NOFOLLOW, 0x100);
  t.is(C.AT_EMPTY_PATH, 0x1000);
  t.is(C.O_PATH, 0o10000000);
  t.is(C.O_LARGEFILE, 0o100000);
  t.is(C.O_TMPFILE, 0o20200000);
  t.is(C.RENAME_WHITEOUT, 4);
  t.is(C.S_IFMT, 0o170000);
  t.is(C.DT_DIR, 4);
  t.is(C.SEEK_DATA, 3);
  t.is(C.STATX_BASIC_STATS, 0x7ff);
  t.is(N.STATX_BASIC_STATS, 0x7ff);
  t.is(C.UTIME_OMIT, (1 << 30) - 2);
  t.is(E.ENOENT, 2);
  t.is(E.ENODATA, 61);
  t.is(E.EOPNOTSUPP, E.ENOTSUP);
  for (const [k, v] of Object.entries(C)) {
    if (k !== 'errno') t.is(typeof v, 'number', k);
  }
  t.true(Object.isFrozen(C));
});

test('major / minor / makedev follow glibc encoding', (t) => {
  const ref = (maj: number, min: number): number => {
    const M = BigInt(maj), m = BigInt(min);
    return Number(((M & 0xfffn) << 8n) | ((M & ~0xfffn) << 32n) | (m & 0xffn) | ((m & ~0xffn) << 12n));
  };
  for (const [maj, min] of [[0, 0], [8, 1], [259, 7], [4095, 255], [4096, 256], [0x1234, 0xabcdef], [0x1fffff, 0xffffffff]]) {
    const dev = N.makedev(maj!, min!);
    t.is(dev, ref(maj!, min!), `makedev(${maj}, ${min})`);
    t.is(N.major(dev), maj!);
    t.is(N.minor(dev), min!);
  }
  t.is(N.makedev(8, 1), 2049);
});

test('fstatat / fstat / statx fill the layout', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), 'hello');
  const ref = fs.lstatSync(path.join(dir, 'f'), { bigint: true });
  const a = st(dfd, 'f');
  t.is(a[ST.ino], Number(ref.ino));
  t.is(a[ST.dev], Number(ref.dev));
  t.is(a[ST.mode], Number(ref.mode));
  t.is(a[ST.nlink], 1);
  t.is(a[ST.uid], Number(ref.uid));
  t.is(a[ST.gid], Number(ref.gid));
  t.is(a[ST.size], 5);
  t.is(a[ST.blksize], Number(ref.blksize));
  t.is(a[ST.blocks], Number(ref.blocks));
  t.is(a[ST.mtimeSec] * 1e9 + a[ST.mtimeNsec], Number(ref.mtimeNs));
  t.is(BigInt(a[ST.mtimeSec]) * 1_000_000_000n + BigInt(a[ST.mtimeNsec]), ref.mtimeNs);
  t.is(BigInt(a[ST.ctimeSec]) * 1_000_000_000n + BigInt(a[ST.ctimeNsec]), ref.ctimeNs);

  const fd = open(t, dfd, 'f', C.O_RDONLY);
  const b = N.newStatBuf();
  N.fstat(fd, b);
  t.deepEqual(Array.from(b), Array.from(a));

  const x = N.newStatBuf();
  N.statx(dfd, 'f', C.AT_SYMLINK_NOFOLLOW, N.STATX_BASIC_STATS, x);
  t.deepEqual(Array.from(x), Array.from(a));

  // AT_EMPTY_PATH on an fd (also an O_PATH one)
  const e = N.newStatBuf();
  N.fstatat(dfd, '', C.AT_EMPTY_PATH, e);
  t.is(e[ST.mode]! & C.S_IFMT, C.S_IFDIR);
  N.statx(fd, '', C.AT_EMPTY_PATH, N.STATX_BASIC_STATS, x);
  t.is(x[ST.ino], a[ST.ino]);

  t.throws(() => N.fstat(fd, new Float64Array(4)), { instanceOf: RangeError });
  t.throws(() => N.fstat(fd, new Float32Array(16) as unknown as Float64Array), { instanceOf: TypeError });
});

test('lstatMaybe: false on ENOENT / ENOTDIR, throws otherwise, does not follow', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), '');
  fs.symlinkSync('f', path.join(dir, 'l'));
  fs.symlinkSync('loop', path.join(dir, 'loop'));
  const out = N.newStatBuf();
  t.false(N.lstatMaybe(dfd, 'missing', out));
  t.false(N.lstatMaybe(dfd, 'f/x', out));
  t.true(N.lstatMaybe(dfd, 'l', out));
  t.is(out[ST.mode]! & C.S_IFMT, C.S_IFLNK);
  t.true(N.lstatMaybe(C.AT_FDCWD, path.join(dir, 'f'), out));
  t.is(out[ST.mode]! & C.S_IFMT, C.S_IFREG);
  const e = errOf(() => N.lstatMaybe(dfd, 'loop/x', out));
  t.is(e.code, 'ELOOP');
});

test('errors carry code, errno, syscall, path and a latin1 message', (t) => {
  const { dfd } = tmp(t);
  const name = 'caf\xe9\xff';
  const e = errOf(() => N.fstatat(dfd, name, 0, N.newStatBuf()));
  t.true(e instanceof Error);
  t.is(e.code, 'ENOENT');
  t.is(e.errno, E.ENOENT);
  t.is(e.syscall, 'fstatat');
  t.is(e.path, name);
  t.is(e.message, `ENOENT: fstatat '${name}'`);
  const r = errOf(() => N.renameat2(dfd, 'a', dfd, 'b', 0));
  t.is(r.message, "ENOENT: renameat2 'a' -> 'b'");
  t.is(r.dest, 'b');
  t.is(errOf(() => N.close(-1)).code, 'EBADF');
  // argument validation
  t.throws(() => N.fstatat(dfd, 'a\0b', 0, N.newStatBuf()), { instanceOf: TypeError });
  t.throws(() => N.fstatat(dfd, 1 as unknown as string, 0, N.newStatBuf()), { instanceOf: TypeError });
  t.throws(() => (N.close as unknown as () => void)(), { instanceOf: TypeError });
  t.is(errOf(() => N.lstatMaybe(dfd, 'x'.repeat(5000), N.newStatBuf())).code, 'ENAMETOOLONG');
});

test('openat / close / dup / pread / pwrite', (t) => {
  const { dfd } = tmp(t);
  const fd = open(t, dfd, 'f', C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o600);
  t.true(fd >= 0);
  t.is(errOf(() => N.openat(dfd, 'f', C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o600)).code, 'EEXIST');
  t.is(st(dfd, 'f')[ST.mode]! & 0o777, 0o600);

  const data = Buffer.from('0123456789');
  t.is(N.pwrite(fd, data, 2, 5, 0), 5); // "23456"
  t.is(N.pwrite(fd, data, 0, 2, 2 ** 33), 2); // far offset: 64-bit positions
  t.is(st(dfd, 'f')[ST.size], 2 ** 33 + 2);
  const buf = Buffer.alloc(8);
  t.is(N.pread(fd, buf, 1, 5, 0), 5);
  t.is(buf.subarray(1, 6).toString(), '23456');
  t.is(N.pread(fd, buf, 0, 2, 2 ** 33), 2);
  t.is(buf.subarray(0, 2).toString(), '01');
  t.is(N.pread(fd, buf, 0, 8, 2 ** 34), 0); // EOF
  t.throws(() => N.pread(fd, buf, 4, 5, 0), { instanceOf: RangeError });
  t.throws(() => N.pwrite(fd, buf, -1, 1, 0), { instanceOf: RangeError });

  // dup shares the file offset; a negative position uses it
  const fd2 = N.dup(fd);
  t.teardown(() => N.close(fd2));
  t.not(fd2, fd);
  N.lseek(fd, 1, C.SEEK_SET);
  t.is(N.pread(fd2, buf, 0, 2, -1), 2);
  t.is(buf.subarray(0, 2).toString(), '34');
  t.is(N.lseek(fd, 0, C.SEEK_CUR), 3);

  // dup2 replaces a given descriptor number
  const fd3 = N.dup(fd2);
  t.teardown(() => N.close(fd3));
  t.is(N.dup2(open(t, dfd, 'f', C.O_WRONLY), fd3), fd3);
  t.is(errOf(() => N.pread(fd3, buf, 0, 1, 0)).code, 'EBADF'); // now the write-only file
  t.is(errOf(() => N.dup2(-1, fd3)).code, 'EBADF');

  const wr = open(t, dfd, 'f', C.O_WRONLY);
  const rdErr = errOf(() => N.pread(wr, buf, 0, 1, 0));
  t.is(rdErr.code, 'EBADF');
  t.is(rdErr.syscall, 'pread');
  t.is(errOf(() => N.openat(dfd, 'nope', C.O_RDONLY, 0)).syscall, 'openat');
});

test('openat2 RESOLVE_* restrictions', (t) => {
  const { dir, dfd } = tmp(t);
  fs.mkdirSync(path.join(dir, 'root'));
  fs.writeFileSync(path.join(dir, 'outside'), 'x');
  fs.writeFileSync(path.join(dir, 'root', 'inside'), 'y');
  fs.symlinkSync('../outside', path.join(dir, 'root', 'escape'));
  fs.symlinkSync('inside', path.join(dir, 'root', 'rel'));
  const root = open(t, dfd, 'root', C.O_PATH | C.O_DIRECTORY);

  const ok = N.openat2(root, 'inside', C.O_RDONLY | C.O_CLOEXEC, 0o777, C.RESOLVE_BENEATH);
  N.close(ok);
  const viaLink = N.openat2(root, 'rel', C.O_RDONLY | C.O_CLOEXEC, 0, C.RESOLVE_BENEATH);
  N.close(viaLink);
  t.is(errOf(() => N.openat2(root, '../outside', C.O_RDONLY, 0, C.RESOLVE_BENEATH)).code, 'EXDEV');
  t.is(errOf(() => N.openat2(root, 'escape', C.O_RDONLY, 0, C.RESOLVE_BENEATH)).code, 'EXDEV');
  t.is(errOf(() => N.openat2(root, 'rel', C.O_RDONLY, 0, C.RESOLVE_NO_SYMLINKS)).code, 'ELOOP');
  t.is(errOf(() => N.openat2(root, '/etc/passwd', C.O_RDONLY, 0, C.RESOLVE_BENEATH)).syscall, 'openat2');
  // RESOLVE_IN_ROOT: "../outside" is clamped to the root
  t.is(errOf(() => N.openat2(root, '../outside', C.O_RDONLY, 0, C.RESOLVE_IN_ROOT)).code, 'ENOENT');
  const c = N.openat2(root, 'new', C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_CLOEXEC, 0o640, C.RESOLVE_BENEATH);
  N.close(c);
  t.is(st(root, 'new')[ST.mode]! & 0o777, 0o640 & ~process.umask());
});

test('readlinkat and symlinkat with non-UTF-8 bytes', (t) => {
  const { dir, dfd } = tmp(t);
  const target = 'tar\xff\x80get/' + 'z'.repeat(300);
  const name = 'l\xe9';
  N.symlinkat(target, dfd, name);
  t.is(N.readlinkat(dfd, name), target);
  t.deepEqual(fs.readlinkSync(Buffer.from(path.join(dir, name), 'latin1'), { encoding: 'buffer' }),
    Buffer.from(target, 'latin1'));
  t.is(errOf(() => N.symlinkat('x', dfd, name)).code, 'EEXIST');
  fs.writeFileSync(path.join(dir, 'f'), '');
  t.is(errOf(() => N.readlinkat(dfd, 'f')).code, 'EINVAL');
  // empty path + O_PATH|O_NOFOLLOW fd on the link itself
  const lfd = open(t, dfd, name, C.O_PATH | C.O_NOFOLLOW);
  t.is(N.readlinkat(lfd, ''), target);
});

test('readdir returns names, DT types and inode numbers matching lstat', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'file'), '');
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.symlinkSync('file', path.join(dir, 'link'));
  N.mknodat(dfd, 'fifo', C.S_IFIFO | 0o644, 0);
  N.mknodat(dfd, 'wh', C.S_IFCHR | 0o000, 0);
  const odd = 'n\xff\xfe\x01';
  N.mkdirat(dfd, odd, 0o755);
  for (let i = 0; i < 2000; i++) N.mkdirat(dfd, `sub/d${i}-${'p'.repeat(100)}`, 0o755); // > one getdents buffer
  const ents = N.readdir(dfd);
  const byName = new Map(ents.map((e) => [e[0], e]));
  t.deepEqual([...byName.keys()].sort(), ['fifo', 'file', 'link', odd, 'sub', 'wh'].sort());
  const want: Record<string, number> = { fifo: C.DT_FIFO, file: C.DT_REG, link: C.DT_LNK, sub: C.DT_DIR, wh: C.DT_CHR, [odd]: C.DT_DIR };
  for (const [name, type, ino] of ents) {
    t.is(type, want[name]!, name);
    t.is(ino, st(dfd, name)[ST.ino]!, name);
  }
  const sub = open(t, dfd, 'sub', C.O_RDONLY | C.O_DIRECTORY);
  const subEnts = N.readdir(sub);
  t.is(subEnts.length, 2000);
  t.is(new Set(subEnts.map((e) => e[0])).size, 2000);
  t.is(errOf(() => N.readdir(open(t, dfd, 'file', C.O_PATH))).code, 'ENOTDIR');
});

test('listDir gives the entries as parallel arrays, also for an empty and a huge directory', (t) => {
  const { dir, dfd } = tmp(t);
  const empty = open(t, dfd, (N.mkdirat(dfd, 'empty', 0o755), 'empty'), C.O_PATH | C.O_DIRECTORY);
  const none = N.listDir(empty);
  t.deepEqual(none.names, []);
  t.is(none.types.length, 0);
  t.is(none.inos.length, 0);
  // More than 1 MiB of names (the addon then drops its buffers), and names with any byte but '/' and NUL.
  N.mkdirat(dfd, 'big', 0o755);
  const big = open(t, dfd, 'big', C.O_RDONLY | C.O_DIRECTORY);
  const want = new Map<string, number>();
  for (let i = 0; i < 4500; i++) {
    const name = `${i}-${'\xe9\x01 .'.repeat(60)}`;
    if (i % 3 === 0) N.mkdirat(big, name, 0o755);
    else N.close(N.openat(big, name, C.O_CREAT | C.O_WRONLY | C.O_CLOEXEC, 0o644));
    want.set(name, i % 3 === 0 ? C.DT_DIR : C.DT_REG);
  }
  const small = open(t, dfd, (N.mkdirat(dfd, 'd1', 0o755), 'd1'), C.O_PATH | C.O_DIRECTORY);
  fs.writeFileSync(path.join(dir, 'd1', 'x'), '');
  for (let round = 0; round < 2; round++) {
    const l = N.listDir(big);
    t.is(l.names.length, want.size);
    t.is(l.types.length, want.size);
    t.is(l.inos.length, want.size);
    for (let i = 0; i < l.names.length; i++) {
      t.is(l.types[i], want.get(l.names[i]!)!, l.names[i]);
      if (i % 500 === 0) t.is(l.inos[i], st(big, l.names[i]!)[ST.ino]!);
    }
    const s = N.listDir(small);
    t.deepEqual(s.names, ['x']);
    t.deepEqual([...s.types], [C.DT_REG]);
    t.deepEqual([...s.inos], [st(small, 'x')[ST.ino]!]);
  }
});

test('mkdirat / mknodat / linkat / unlinkat', (t) => {
  const { dfd } = tmp(t);
  N.mkdirat(dfd, 'd', 0o710);
  const d = st(dfd, 'd');
  t.is(d[ST.mode]! & C.S_IFMT, C.S_IFDIR);
  t.is(d[ST.mode]! & 0o777, 0o710 & ~process.umask());
  t.is(errOf(() => N.mkdirat(dfd, 'd', 0o755)).code, 'EEXIST');

  N.mknodat(dfd, 'c00', C.S_IFCHR | 0o600, N.makedev(0, 0));
  const c = st(dfd, 'c00');
  t.is(c[ST.mode]! & C.S_IFMT, C.S_IFCHR);
  t.is(c[ST.rdev], 0);
  N.mknodat(dfd, 'null', C.S_IFCHR | 0o600, N.makedev(1, 3));
  const n = st(dfd, 'null');
  t.is(N.major(n[ST.rdev]!), 1);
  t.is(N.minor(n[ST.rdev]!), 3);
  t.is(n[ST.rdev], fs.statSync('/dev/null').rdev);
  N.mknodat(dfd, 'reg', C.S_IFREG | 0o644, 0);
  t.is(st(dfd, 'reg')[ST.mode]! & C.S_IFMT, C.S_IFREG);

  N.linkat(dfd, 'reg', dfd, 'd/hard', 0);
  t.is(st(dfd, 'reg')[ST.nlink], 2);
  t.is(st(dfd, 'd/hard')[ST.ino], st(dfd, 'reg')[ST.ino]);
  // linkat of an O_PATH fd with AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH)
  if (isRoot) {
    const fd = open(t, dfd, 'reg', C.O_PATH);
    N.linkat(fd, '', dfd, 'viafd', C.AT_EMPTY_PATH);
    t.is(st(dfd, 'reg')[ST.nlink], 3);
  }

  t.is(errOf(() => N.unlinkat(dfd, 'd', 0)).code, 'EISDIR');
  t.is(errOf(() => N.unlinkat(dfd, 'd', C.AT_REMOVEDIR)).code, 'ENOTEMPTY');
  N.unlinkat(dfd, 'd/hard', 0);
  N.unlinkat(dfd, 'd', C.AT_REMOVEDIR);
  t.false(N.lstatMaybe(dfd, 'd', N.newStatBuf()));
});

test('renameat2 NOREPLACE / EXCHANGE / WHITEOUT', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'a'), 'A');
  fs.writeFileSync(path.join(dir, 'b'), 'B');
  fs.mkdirSync(path.join(dir, 'sub'));
  const sub = open(t, dfd, 'sub', C.O_PATH | C.O_DIRECTORY);

  const e = errOf(() => N.renameat2(dfd, 'a', dfd, 'b', C.RENAME_NOREPLACE));
  t.is(e.code, 'EEXIST');
  t.is(e.syscall, 'renameat2');
  N.renameat2(dfd, 'a', dfd, 'b', C.RENAME_EXCHANGE);
  t.is(fs.readFileSync(path.join(dir, 'a'), 'utf8'), 'B');
  t.is(fs.readFileSync(path.join(dir, 'b'), 'utf8'), 'A');
  N.renameat2(dfd, 'a', sub, 'moved', C.RENAME_NOREPLACE);
  t.is(fs.readFileSync(path.join(dir, 'sub', 'moved'), 'utf8'), 'B');
  t.is(errOf(() => N.renameat2(dfd, 'a', dfd, 'c', C.RENAME_EXCHANGE)).code, 'ENOENT');
  N.renameat2(dfd, 'b', dfd, 'c', 0);
  t.is(fs.readFileSync(path.join(dir, 'c'), 'utf8'), 'A');

  if (isRoot) {
    N.renameat2(dfd, 'c', dfd, 'd', C.RENAME_WHITEOUT);
    const w = st(dfd, 'c');
    t.is(w[ST.mode]! & C.S_IFMT, C.S_IFCHR);
    t.is(w[ST.rdev], 0);
    t.is(fs.readFileSync(path.join(dir, 'd'), 'utf8'), 'A');
  }
});

test('fchownat / fchown', (t) => {
  if (!isRoot) return t.pass('needs root');
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), '');
  fs.symlinkSync('f', path.join(dir, 'l'));
  N.fchownat(dfd, 'f', 1234, 5678, 0);
  let s = st(dfd, 'f');
  t.is(s[ST.uid], 1234);
  t.is(s[ST.gid], 5678);
  N.fchownat(dfd, 'f', -1, 42, 0); // -1 keeps the uid
  s = st(dfd, 'f');
  t.is(s[ST.uid], 1234);
  t.is(s[ST.gid], 42);
  N.fchownat(dfd, 'l', 7, 8, C.AT_SYMLINK_NOFOLLOW);
  t.is(st(dfd, 'l')[ST.uid], 7);
  t.is(st(dfd, 'f')[ST.uid], 1234);
  const fd = open(t, dfd, 'f', C.O_RDONLY);
  N.fchown(fd, 99, -1);
  s = st(dfd, 'f');
  t.is(s[ST.uid], 99);
  t.is(s[ST.gid], 42);
  const pfd = open(t, dfd, 'f', C.O_PATH);
  N.fchownat(pfd, '', 5, 6, C.AT_EMPTY_PATH);
  t.is(st(dfd, 'f')[ST.uid], 5);
  t.is(errOf(() => N.fchown(pfd, 1, 1)).code, 'EBADF');
});

test('fchmod / fchmodat (fchmodat2 for AT_SYMLINK_NOFOLLOW)', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), '');
  fs.symlinkSync('f', path.join(dir, 'l'));
  N.fchmodat(dfd, 'f', 0o4751, 0);
  t.is(st(dfd, 'f')[ST.mode]! & 0o7777, 0o4751);
  N.fchmodat(dfd, 'l', 0o600, 0); // follows the link
  t.is(st(dfd, 'f')[ST.mode]! & 0o7777, 0o600);
  const e = errOf(() => N.fchmodat(dfd, 'l', 0o644, C.AT_SYMLINK_NOFOLLOW));
  t.is(e.code, 'EOPNOTSUPP');
  t.is(e.syscall, 'fchmodat2');
  N.fchmodat(dfd, 'f', 0o640, C.AT_SYMLINK_NOFOLLOW);
  t.is(st(dfd, 'f')[ST.mode]! & 0o7777, 0o640);
  const pfd = open(t, dfd, 'f', C.O_PATH);
  N.fchmodat(pfd, '', 0o444, C.AT_EMPTY_PATH);
  t.is(st(dfd, 'f')[ST.mode]! & 0o7777, 0o444);
  const fd = open(t, dfd, 'f', C.O_RDONLY);
  N.fchmod(fd, 0o755);
  t.is(st(dfd, 'f')[ST.mode]! & 0o7777, 0o755);
});

test('utimensat / futimens with nanoseconds, UTIME_OMIT, UTIME_NOW', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), '');
  fs.symlinkSync('f', path.join(dir, 'l'));
  N.utimensat(dfd, 'f', 1000, 123456789, 2000, 987654321, 0);
  let s = st(dfd, 'f');
  t.deepEqual([s[ST.atimeSec], s[ST.atimeNsec], s[ST.mtimeSec], s[ST.mtimeNsec]], [1000, 123456789, 2000, 987654321]);
  N.utimensat(dfd, 'f', 0, C.UTIME_OMIT, 3000, 5, 0);
  s = st(dfd, 'f');
  t.deepEqual([s[ST.atimeSec], s[ST.atimeNsec], s[ST.mtimeSec], s[ST.mtimeNsec]], [1000, 123456789, 3000, 5]);
  // symlink itself
  N.utimensat(dfd, 'l', 11, 1, 22, 2, C.AT_SYMLINK_NOFOLLOW);
  s = st(dfd, 'l');
  t.deepEqual([s[ST.atimeSec], s[ST.mtimeSec], s[ST.mtimeNsec]], [11, 22, 2]);
  t.is(st(dfd, 'f')[ST.mtimeSec], 3000);
  // "" acts on the fd itself: a regular fd and an O_PATH fd
  const pfd = open(t, dfd, 'f', C.O_PATH);
  N.utimensat(pfd, '', 44, 4, 55, 5, C.AT_EMPTY_PATH);
  s = st(dfd, 'f');
  t.deepEqual([s[ST.atimeSec], s[ST.atimeNsec], s[ST.mtimeSec], s[ST.mtimeNsec]], [44, 4, 55, 5]);
  const fd = open(t, dfd, 'f', C.O_RDWR);
  N.utimensat(fd, '', 66, 6, 0, C.UTIME_OMIT, 0);
  s = st(dfd, 'f');
  t.deepEqual([s[ST.atimeSec], s[ST.mtimeSec]], [66, 55]);
  N.futimens(fd, 77, 7, 88, 8);
  s = st(dfd, 'f');
  t.deepEqual([s[ST.atimeSec], s[ST.atimeNsec], s[ST.mtimeSec], s[ST.mtimeNsec]], [77, 7, 88, 8]);
  const before = Date.now() / 1000 - 5;
  N.futimens(fd, 0, C.UTIME_OMIT, 0, C.UTIME_NOW);
  s = st(dfd, 'f');
  t.is(s[ST.atimeSec], 77);
  t.true(s[ST.mtimeSec]! > before);
  t.is(errOf(() => N.utimensat(dfd, 'f', 0, 2e9, 0, 0, 0)).code, 'EINVAL');
});

test('ftruncate / fsync / fdatasync / syncfs / fallocate / lseek SEEK_DATA+SEEK_HOLE', (t) => {
  const { dfd } = tmp(t);
  const fd = open(t, dfd, 'f', C.O_RDWR | C.O_CREAT);
  const bs = 1 << 20;
  N.ftruncate(fd, 4 * bs);
  t.is(st(dfd, 'f')[ST.size], 4 * bs);
  N.pwrite(fd, Buffer.alloc(4096, 1), 0, 4096, bs);
  N.fsync(fd);
  N.fdatasync(fd);
  N.syncfs(fd);
  t.is(N.lseek(fd, 0, C.SEEK_DATA), bs);
  t.is(N.lseek(fd, bs, C.SEEK_HOLE), bs + 4096);
  t.is(N.lseek(fd, 0, C.SEEK_END), 4 * bs);
  const e = errOf(() => N.lseek(fd, 2 * bs, C.SEEK_DATA));
  t.is(e.code, 'ENXIO');
  t.is(e.errno, E.ENXIO);
  t.is(e.syscall, 'lseek');

  // KEEP_SIZE allocates beyond EOF without changing the size
  N.fallocate(fd, C.FALLOC_FL_KEEP_SIZE, 4 * bs, bs);
  let s = st(dfd, 'f');
  t.is(s[ST.size], 4 * bs);
  t.true(s[ST.blocks]! * 512 >= bs + 4096);
  N.fallocate(fd, 0, 0, 8 * bs);
  t.is(st(dfd, 'f')[ST.size], 8 * bs);
  const blocksBefore = st(dfd, 'f')[ST.blocks]!;
  N.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 0, 2 * bs);
  s = st(dfd, 'f');
  t.is(s[ST.size], 8 * bs);
  // The 2 MiB hole frees its data blocks; the filesystem may keep or free a few metadata blocks.
  const freed = (blocksBefore - s[ST.blocks]!) * 512;
  t.true(freed >= 2 * bs - 64 * 1024 && freed <= 2 * bs + 64 * 1024, `freed ${freed} bytes`);
  t.is(N.lseek(fd, 0, C.SEEK_HOLE), 0);
  N.pwrite(fd, Buffer.alloc(16, 9), 0, 16, 3 * bs);
  N.fallocate(fd, C.FALLOC_FL_ZERO_RANGE, 3 * bs, 8);
  const b = Buffer.alloc(16);
  N.pread(fd, b, 0, 16, 3 * bs);
  t.deepEqual([...b], [...Buffer.alloc(8, 0), ...Buffer.alloc(8, 9)]);
  t.is(errOf(() => N.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE, 0, 1)).code, 'EOPNOTSUPP');
  N.ftruncate(fd, 10);
  t.is(st(dfd, 'f')[ST.size], 10);
  t.is(errOf(() => N.ftruncate(fd, -1)).code, 'EINVAL');
});

test('copyFileRange copies; fadvise takes advice; ficlone reflinks or reports an errno error', (t) => {
  const { dfd } = tmp(t);
  const src = open(t, dfd, 'src', C.O_RDWR | C.O_CREAT);
  const dst = open(t, dfd, 'dst', C.O_RDWR | C.O_CREAT);
  const data = Buffer.alloc(200_000);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  N.pwrite(src, data, 0, data.length, 0);
  let done = 0;
  while (done < data.length) {
    const n = N.copyFileRange(src, done, dst, 100 + done, data.length - done, 0);
    t.true(n > 0);
    done += n;
  }
  const back = Buffer.alloc(data.length);
  t.is(N.pread(dst, back, 0, back.length, 100), data.length);
  t.true(back.equals(data));
  t.is(N.copyFileRange(src, data.length, dst, 0, 10, 0), 0); // at EOF
  // null offsets use the fds' positions
  N.lseek(src, 10, C.SEEK_SET);
  N.lseek(dst, 0, C.SEEK_SET);
  t.is(N.copyFileRange(src, null, dst, null, 5, 0), 5);
  t.is(N.lseek(src, 0, C.SEEK_CUR), 15);
  t.is(N.lseek(dst, 0, C.SEEK_CUR), 5);
  t.is(errOf(() => N.copyFileRange(src, 0, dst, 0, 1, 1)).code, 'EINVAL');

  // posix_fadvise returns its error number instead of setting errno: still an errno error here.
  N.fadvise(src, 0, 0, C.POSIX_FADV_WILLNEED);
  N.fadvise(src, 0, 4096, C.POSIX_FADV_DONTNEED);
  const bad = errOf(() => N.fadvise(src, 0, 0, 12345));
  t.is(bad.code, 'EINVAL');
  t.is(bad.syscall, 'posix_fadvise');
  t.is(errOf(() => N.fadvise(-1, 0, 0, C.POSIX_FADV_WILLNEED)).code, 'EBADF');

  const clone = open(t, dfd, 'clone', C.O_RDWR | C.O_CREAT);
  try {
    N.ficlone(clone, src);
    const c = Buffer.alloc(data.length);
    N.pread(clone, c, 0, c.length, 0);
    t.true(c.equals(data));
  } catch (e) {
    t.true(N.isErrnoError(e));
    t.true(['EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOTTY'].includes((e as N.ErrnoError).code), String(e));
    t.is((e as N.ErrnoError).syscall, 'ioctl(FICLONE)');
  }
});

/** The full xattr suite, run once per implementation (xattrat syscalls / /proc fallback). */
function xattrSuite(t: ExecutionContext, dir: string, dfd: number): void {
  fs.writeFileSync(path.join(dir, 'f'), '');
  fs.symlinkSync('f', path.join(dir, 'l'));
  fs.mkdirSync(path.join(dir, 'sub'));
  const v = (s: string): Buffer => Buffer.from(s, 'latin1');

  t.is(N.lgetxattr(dfd, 'f', 'user.missing'), null);
  t.deepEqual(N.llistxattr(dfd, 'f'), []);
  N.lsetxattr(dfd, 'f', 'user.a', v('one'), 0);
  N.lsetxattr(dfd, 'f', 'user.\xe9\xff', v('\x00\xff'), C.XATTR_CREATE);
  N.lsetxattr(dfd, 'f', 'user.empty', Buffer.alloc(0), 0);
  t.deepEqual(N.lgetxattr(dfd, 'f', 'user.a'), v('one'));
  t.deepEqual(N.lgetxattr(dfd, 'f', 'user.\xe9\xff'), v('\x00\xff'));
  t.deepEqual(N.lgetxattr(dfd, 'f', 'user.empty'), Buffer.alloc(0));
  t.deepEqual(N.llistxattr(dfd, 'f').sort(), ['user.a', 'user.empty', 'user.\xe9\xff'].sort());
  t.is(errOf(() => N.lsetxattr(dfd, 'f', 'user.a', v('x'), C.XATTR_CREATE)).code, 'EEXIST');
  t.is(errOf(() => N.lsetxattr(dfd, 'f', 'user.nope', v('x'), C.XATTR_REPLACE)).code, 'ENODATA');
  N.lsetxattr(dfd, 'f', 'user.a', v('two'), C.XATTR_REPLACE);
  t.deepEqual(N.lgetxattr(dfd, 'f', 'user.a'), v('two'));
  N.lremovexattr(dfd, 'f', 'user.a');
  t.is(N.lgetxattr(dfd, 'f', 'user.a'), null);
  const rm = errOf(() => N.lremovexattr(dfd, 'f', 'user.a'));
  t.is(rm.code, 'ENODATA');
  t.is(rm.path, 'f');

  // the symlink's own xattrs (user.* is not allowed on symlinks: trusted.* as root)
  t.is(errOf(() => N.lsetxattr(dfd, 'l', 'user.x', v('1'), 0)).code, 'EPERM');
  if (isRoot) {
    N.lsetxattr(dfd, 'l', 'trusted.link', v('L'), 0);
    t.deepEqual(N.lgetxattr(dfd, 'l', 'trusted.link'), v('L'));
    t.is(N.lgetxattr(dfd, 'f', 'trusted.link'), null);
    t.true(N.llistxattr(dfd, 'l').includes('trusted.link'));
    t.false(N.llistxattr(dfd, 'f').includes('trusted.link'));
    N.lremovexattr(dfd, 'l', 'trusted.link');
    t.is(N.lgetxattr(dfd, 'l', 'trusted.link'), null);
    // an O_PATH|O_NOFOLLOW fd on the link, path ""
    const lfd = open(t, dfd, 'l', C.O_PATH | C.O_NOFOLLOW);
    N.lsetxattr(lfd, '', 'trusted.viafd', v('F'), 0);
    t.deepEqual(N.lgetxattr(dfd, 'l', 'trusted.viafd'), v('F'));
    t.deepEqual(N.lgetxattr(lfd, '', 'trusted.viafd'), v('F'));
    t.true(N.llistxattr(lfd, '').includes('trusted.viafd'));
    N.lremovexattr(lfd, '', 'trusted.viafd');
    t.is(N.lgetxattr(lfd, '', 'trusted.viafd'), null);
  }

  // nested relative path, AT_FDCWD with an absolute path, "" on a directory fd
  N.lsetxattr(dfd, 'sub', 'user.d', v('dir'), 0);
  t.deepEqual(N.lgetxattr(C.AT_FDCWD, path.join(dir, 'sub'), 'user.d'), v('dir'));
  const sub = open(t, dfd, 'sub', C.O_PATH | C.O_DIRECTORY);
  t.deepEqual(N.lgetxattr(sub, '', 'user.d'), v('dir'));
  fs.writeFileSync(path.join(dir, 'sub', 'g'), '');
  N.lsetxattr(dfd, 'sub/g', 'user.g', v('g'), 0);
  t.deepEqual(N.lgetxattr(sub, 'g', 'user.g'), v('g'));
  // "" on a regular (non-O_PATH) fd
  const rfd = open(t, dfd, 'f', C.O_RDONLY);
  t.deepEqual(N.lgetxattr(rfd, '', 'user.empty'), Buffer.alloc(0));

  // errors
  const missing = errOf(() => N.lgetxattr(dfd, 'missing', 'user.a'));
  t.is(missing.code, 'ENOENT');
  t.is(missing.syscall, 'getxattrat');
  t.is(errOf(() => N.llistxattr(dfd, 'missing')).code, 'ENOENT');
  t.is(errOf(() => N.lgetxattr(9999, '', 'user.a')).code, 'EBADF');
  t.is(errOf(() => N.lgetxattr(dfd, 'f', 'user.' + 'n'.repeat(300))).code, 'ERANGE');
  t.is(errOf(() => N.lsetxattr(dfd, 'f', 'bogus.ns', v('1'), 0)).code, 'EOPNOTSUPP');
}

test('l*xattr via getxattrat & co', (t) => {
  const { dir, dfd } = tmp(t);
  xattrSuite(t, dir, dfd);
});

test('l*xattr via the /proc/self/fd fallback', (t) => {
  const { dir, dfd } = tmp(t);
  N._forceXattrFallback(true);
  try {
    xattrSuite(t, dir, dfd);
  } finally {
    N._forceXattrFallback(false);
  }
});

test('xattr values and lists larger than the stack buffer (tmpfs)', (t) => {
  if (!fs.existsSync('/dev/shm')) return t.pass('no /dev/shm');
  const { dir, dfd } = tmp(t, '/dev/shm');
  fs.writeFileSync(path.join(dir, 'f'), '');
  const big = Buffer.alloc(40_000);
  for (let i = 0; i < big.length; i++) big[i] = i & 0xff;
  try {
    N.lsetxattr(dfd, 'f', 'user.big', big, 0);
  } catch (e) {
    return t.pass(`tmpfs user xattrs unsupported: ${String(e)}`);
  }
  const names = Array.from({ length: 120 }, (_, i) => `user.${'k'.repeat(50)}${i}`);
  for (const n of names) N.lsetxattr(dfd, 'f', n, Buffer.from('v'), 0);
  const fd = open(t, dfd, 'f', C.O_RDONLY);
  for (const force of [false, true]) {
    N._forceXattrFallback(force);
    try {
      t.true(N.lgetxattr(dfd, 'f', 'user.big')!.equals(big));
      t.deepEqual(N.llistxattr(dfd, 'f').sort(), [...names, 'user.big'].sort());
    } finally {
      N._forceXattrFallback(false);
    }
  }
  t.true(N.fgetxattr(fd, 'user.big')!.equals(big));
  t.is(N.flistxattr(fd).length, names.length + 1);
});

test('f*xattr on an open fd', (t) => {
  const { dfd } = tmp(t);
  const fd = open(t, dfd, 'f', C.O_RDWR | C.O_CREAT);
  t.is(N.fgetxattr(fd, 'user.x'), null);
  t.deepEqual(N.flistxattr(fd), []);
  N.fsetxattr(fd, 'user.x', Buffer.from([1, 2, 3]), C.XATTR_CREATE);
  t.deepEqual(N.fgetxattr(fd, 'user.x'), Buffer.from([1, 2, 3]));
  t.deepEqual(N.flistxattr(fd), ['user.x']);
  t.deepEqual(N.lgetxattr(dfd, 'f', 'user.x'), Buffer.from([1, 2, 3]));
  t.is(errOf(() => N.fsetxattr(fd, 'user.x', Buffer.from('y'), C.XATTR_CREATE)).code, 'EEXIST');
  N.fremovexattr(fd, 'user.x');
  t.is(N.fgetxattr(fd, 'user.x'), null);
  const e = errOf(() => N.fremovexattr(fd, 'user.x'));
  t.is(e.code, 'ENODATA');
  t.is(e.syscall, 'fremovexattr');
  const pfd = open(t, dfd, 'f', C.O_PATH);
  t.is(errOf(() => N.fgetxattr(pfd, 'user.x')).code, 'EBADF');
});

test('fstatfs', (t) => {
  const { dfd } = tmp(t);
  const s = N.fstatfs(dfd);
  for (const k of ['type', 'bsize', 'blocks', 'bfree', 'bavail', 'files', 'ffree', 'namelen', 'frsize', 'flags'] as const) {
    t.is(typeof s[k], 'number', k);
  }
  t.true(s.bsize > 0);
  t.true(s.blocks >= s.bfree);
  t.is(s.namelen, 255);
  const proc = open(t, C.AT_FDCWD, '/proc', C.O_PATH | C.O_DIRECTORY);
  t.is(N.fstatfs(proc).type, 0x9fa0); // PROC_SUPER_MAGIC
  t.is(errOf(() => N.fstatfs(-1)).code, 'EBADF');
});

test('mount / umount2 of a tmpfs', (t) => {
  if (!isRoot) return t.pass('needs root');
  const { dir, dfd } = tmp(t);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  try {
    N.mount('strata-test', mnt, 'tmpfs', C.MS_NOSUID | C.MS_NODEV, 'size=1m,mode=0711');
  } catch (e) {
    return t.pass(`cannot mount here: ${String(e)}`);
  }
  let mounted = true;
  t.teardown(() => {
    if (mounted) N.umount2(mnt, C.MNT_DETACH);
  });
  const m = open(t, dfd, 'mnt', C.O_PATH | C.O_DIRECTORY);
  const s = N.fstatfs(m);
  t.is(s.type, 0x01021994); // TMPFS_MAGIC
  t.true((s.flags & 0x2) !== 0); // ST_NOSUID
  t.is(st(m, '', C.AT_EMPTY_PATH)[ST.mode]! & 0o777, 0o711);
  t.is(errOf(() => N.umount2(mnt, 0)).code, 'EBUSY'); // our O_PATH fd keeps it busy
  N.umount2(mnt, C.MNT_DETACH);
  mounted = false;
  const e = errOf(() => N.umount2(mnt, 0));
  t.is(e.code, 'EINVAL');
  t.is(e.path, mnt);
  t.is(errOf(() => N.mount(null, path.join(dir, 'nope'), null, C.MS_BIND, null)).code, 'ENOENT');
});

test('openTree clones a mount privately; mountSetattr sets its atime flags; statxBtime', (t) => {
  if (!isRoot) return t.pass('needs root');
  const { dir } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), 'x');
  const m = N.openTree(C.AT_FDCWD, dir, C.OPEN_TREE_CLONE | C.OPEN_TREE_CLOEXEC);
  t.teardown(() => N.close(m));
  // The copy is the same directory, on a mount of its own whose flags can change without touching the original.
  t.is(st(m, '', C.AT_EMPTY_PATH)[ST.ino], fs.statSync(dir).ino);
  N.mountSetattr(m, '', C.AT_EMPTY_PATH, C.MOUNT_ATTR_NOATIME, C.MOUNT_ATTR__ATIME);
  const f = N.openat(m, 'f', C.O_RDONLY | C.O_CLOEXEC, 0);
  t.teardown(() => N.close(f));
  t.true((N.fstatfs(f).flags & 0x400) !== 0, 'ST_NOATIME on the copy');
  t.is(N.fstatfs(open(t, C.AT_FDCWD, dir, C.O_PATH)).flags & 0x400, 0, 'the original mount is left alone');
  t.is(errOf(() => N.mountSetattr(f, '', C.AT_EMPTY_PATH, C.MOUNT_ATTR_NOATIME, C.MOUNT_ATTR__ATIME)).code, 'EINVAL', 'not a mount root');
  t.is(errOf(() => N.openTree(C.AT_FDCWD, path.join(dir, 'nope'), C.OPEN_TREE_CLONE)).code, 'ENOENT');
  const b = N.statxBtime(m, 'f', C.AT_SYMLINK_NOFOLLOW);
  t.true(b === null || (b.length === 2 && Math.abs(b[0] - Date.now() / 1000) < 3600), `btime ${String(b)}`);
});

test('openFuseDevice returns an fd; FUSE ioctls fail cleanly when unmounted', (t) => {
  let fd: number;
  try {
    fd = N.openFuseDevice();
  } catch (e) {
    return t.pass(`no /dev/fuse: ${String(e)}`);
  }
  t.teardown(() => N.close(fd));
  t.true(fd >= 0);
  const s = N.newStatBuf();
  N.fstat(fd, s);
  t.is(s[ST.mode]! & C.S_IFMT, C.S_IFCHR);
  t.is(N.major(s[ST.rdev]!), 10);
  t.is(N.minor(s[ST.rdev]!), 229);
  const fd2 = N.openFuseDevice();
  t.teardown(() => N.close(fd2));
  t.true(N.isErrnoError(errOf(() => N.ioctlClone(fd2, fd))));
  t.true(N.isErrnoError(errOf(() => N.backingOpen(fd, 0))));
  t.true(N.isErrnoError(errOf(() => N.backingClose(fd, 1))));
  t.true(N.isErrnoError(errOf(() => N.writeReply(fd, Buffer.alloc(16)))));
});

test('writeReply: single write, a buffer\'s first bytes, and writev', (t) => {
  const { dir, dfd } = tmp(t);
  const fd = open(t, dfd, 'out', C.O_WRONLY | C.O_CREAT | C.O_APPEND);
  t.is(N.writeReply(fd, Buffer.from('head')), 4);
  t.is(N.writeReply(fd, [Buffer.from('-a'), Buffer.alloc(0), new Uint8Array([0x2d, 0x62])]), 4);
  const many = Array.from({ length: 40 }, (_, i) => Buffer.from(String(i % 10)));
  t.is(N.writeReply(fd, many), 40);
  // a length: the buffer's first bytes only (0 writes nothing)
  t.is(N.writeReply(fd, Buffer.from('+cut-away'), 2), 2);
  t.is(N.writeReply(fd, Buffer.from('never'), 0), 0);
  t.throws(() => N.writeReply(fd, Buffer.from('ab'), 3), { instanceOf: RangeError });
  t.is(fs.readFileSync(path.join(dir, 'out'), 'latin1'), 'head-a-b' + many.join('') + '+c');
  t.throws(() => N.writeReply(fd, ['x' as unknown as Buffer]), { instanceOf: TypeError });
  t.throws(() => N.writeReply(fd, 'x' as unknown as Buffer), { instanceOf: TypeError });
  t.is(errOf(() => N.writeReply(-1, Buffer.alloc(1))).code, 'EBADF');
});

/**
 * Resolve once cond() holds (checked every 5 ms), reject after timeoutMs. (The bound is long, on the
 * monotonic clock: CI once stalled this process for over 5 s while other test files ran, and a step of
 * the wall clock must not end the wait.)
 */
async function until(cond: () => boolean, timeoutMs = 60_000): Promise<void> {
  const start = performance.now();
  while (!cond()) {
    if (performance.now() - start > timeoutMs) throw new Error('timed out waiting for condition');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A FIFO opened for reading (non-blocking) and writing. */
function fifo(t: ExecutionContext): { rfd: number; wfd: number } {
  const { dfd } = tmp(t);
  N.mknodat(dfd, 'p', C.S_IFIFO | 0o600, 0);
  const rfd = N.openat(dfd, 'p', C.O_RDONLY | C.O_NONBLOCK | C.O_CLOEXEC, 0);
  const wfd = N.openat(dfd, 'p', C.O_WRONLY | C.O_CLOEXEC, 0);
  return { rfd, wfd };
}

test('startReader delivers reads, survives a throwing callback, ends on EOF', async (t) => {
  const { rfd, wfd } = fifo(t);
  let wOpen = true;
  t.teardown(() => {
    N.close(rfd);
    if (wOpen) N.close(wfd);
  });
  const buf = Buffer.alloc(64);
  const got: string[] = [];
  let calls = 0;
  const ended = new Promise<Error | null>((resolve) => {
    const h = N.startReader(rfd, buf, (len) => {
      calls++;
      got.push(buf.toString('latin1', 0, len));
      if (calls === 1) throw new Error('deliberate test exception (expected on stderr)');
    }, resolve);
    t.is(typeof h, 'object');
    t.teardown(() => N.stopReader(h));
  });
  N.writeReply(wfd, Buffer.from('first'));
  await until(() => calls === 1);
  N.writeReply(wfd, Buffer.from('second'));
  await until(() => calls === 2);
  t.deepEqual(got, ['first', 'second']);
  N.close(wfd);
  wOpen = false;
  t.is(await ended, null);
  t.is(calls, 2);
});

test('the reader stops spinning after requests whose caller does not come back soon, and probes every 16th time', async (t) => {
  // (the policy of reader_spin_ns: a spin after a batch pays when the next request comes within it)
  const { rfd, wfd } = fifo(t);
  const buf = Buffer.alloc(64);
  let calls = 0;
  const h = N.startReader(rfd, buf, () => calls++, () => {});
  t.teardown(() => {
    N.stopReader(h);
    N.close(rfd);
    N.close(wfd);
  });
  t.deepEqual(N.readerSpins(h), [0, 0, 0]);
  t.throws(() => N.readerSpins({} as N.ReaderHandle), { instanceOf: TypeError });
  // 30 requests, each 20 ms after the last one was served: no spin can catch the next. The gaps
  // start at 0 (a spin of 15 us pays on them); it stops paying once 7 of the last 8 gaps were long.
  for (let i = 1; i <= 30; i++) {
    N.writeReply(wfd, Buffer.from(`r${i}`));
    await until(() => calls === i);
    await new Promise((r) => setTimeout(r, 20));
  }
  const [spins, caught, ms] = N.readerSpins(h);
  t.is(caught, 0);
  t.is(spins, 7 + 1, 'after the first seven batches, only the probe at the 16th batch end not spun after');
  t.true(ms > 0 && ms < 1000);
});

test('stopReader stops delivery and is idempotent (also from inside onRequest)', async (t) => {
  const { rfd, wfd } = fifo(t);
  t.teardown(() => {
    N.close(rfd);
    N.close(wfd);
  });
  const buf = Buffer.alloc(4); // forces several reads per batch
  let calls = 0;
  let endCalls = 0;
  let handle: N.ReaderHandle | null = null;
  const firstCall = new Promise<void>((resolve) => {
    handle = N.startReader(rfd, buf, () => {
      calls++;
      N.stopReader(handle!);
      N.stopReader(handle!);
      resolve();
    }, () => endCalls++);
  });
  N.writeReply(wfd, Buffer.from('0123456789abcdef'));
  await firstCall;
  N.writeReply(wfd, Buffer.from('more'));
  await new Promise((r) => setTimeout(r, 100));
  t.is(calls, 1);
  t.is(endCalls, 0);
  N.stopReader(handle!);

  // a stopped reader leaves the fd usable by a fresh reader
  const rest: string[] = [];
  const h2 = N.startReader(rfd, buf, (len) => rest.push(buf.toString('latin1', 0, len)), () => endCalls++);
  await until(() => rest.join('').length === 16);
  N.stopReader(h2);
  t.is(rest.join(''), '456789abcdefmore');
  t.throws(() => N.stopReader({}), { instanceOf: TypeError });
  t.throws(() => N.startReader(rfd, buf, 1 as unknown as () => void, () => {}), { instanceOf: TypeError });
});

test('a reader reports poll/read errors through onEnd (unmounted /dev/fuse fd)', async (t) => {
  let fd: number;
  try {
    fd = N.openFuseDevice();
  } catch (e) {
    return t.pass(`no /dev/fuse: ${String(e)}`);
  }
  t.teardown(() => N.close(fd));
  let requests = 0;
  const err = await new Promise<Error | null>((resolve) => {
    N.startReader(fd, Buffer.alloc(8192), () => requests++, resolve);
  });
  t.is(requests, 0);
  t.true(N.isErrnoError(err), String(err));
  t.is((err as N.ErrnoError).code, 'EPERM'); // read() on a never-mounted fuse fd
  t.is((err as N.ErrnoError).syscall, 'read');
});

test('a reader ends with onEnd(null) when its FUSE mount goes away; backingOpen/Close', async (t) => {
  if (!isRoot) return t.pass('needs root');
  const { dir, dfd } = tmp(t);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  let fd: number;
  try {
    fd = N.openFuseDevice();
  } catch (e) {
    return t.pass(`no /dev/fuse: ${String(e)}`);
  }
  t.teardown(() => N.close(fd));
  try {
    N.mount('strata-native-test', mnt, 'fuse.strata-native-test', C.MS_NOSUID | C.MS_NODEV,
      `fd=${fd},rootmode=40000,user_id=0,group_id=0`);
  } catch (e) {
    return t.pass(`cannot mount fuse here: ${String(e)}`);
  }
  let mounted = true;
  t.teardown(() => {
    if (mounted) N.umount2(mnt, C.MNT_DETACH);
  });
  const buf = Buffer.alloc(1 << 20);
  const opcodes: number[] = [];
  const FUSE_INIT = 26;
  const FUSE_INIT_EXT = 1 << 30;
  const FUSE_PASSTHROUGH_FLAGS2 = 1 << (37 - 32);
  let passthroughTested = false;
  const end = new Promise<Error | null>((resolve) => {
    N.startReader(fd, buf, (len) => {
      t.true(len >= 40);
      const opcode = buf.readUInt32LE(4);
      const unique = buf.readBigUInt64LE(8);
      opcodes.push(opcode);
      const head = Buffer.alloc(16);
      head.writeBigUInt64LE(unique, 8);
      if (opcode === FUSE_INIT) {
        // fuse_init_in after the 40-byte header: major, minor, max_readahead, flags, flags2
        const kernelMinor = buf.readUInt32LE(44);
        const offersPassthrough = kernelMinor >= 40 && (buf.readUInt32LE(52) & FUSE_INIT_EXT) !== 0 &&
          (buf.readUInt32LE(56) & FUSE_PASSTHROUGH_FLAGS2) !== 0;
        const init = Buffer.alloc(64); // fuse_init_out
        init.writeUInt32LE(7, 0); // major
        init.writeUInt32LE(Math.min(kernelMinor, 40), 4); // minor
        init.writeUInt32LE(offersPassthrough ? FUSE_INIT_EXT : 0, 12); // flags
        init.writeUInt16LE(16, 16); // max_background
        init.writeUInt16LE(12, 18); // congestion_threshold
        init.writeUInt32LE(65536, 20); // max_write
        init.writeUInt32LE(1, 24); // time_gran
        init.writeUInt32LE(offersPassthrough ? FUSE_PASSTHROUGH_FLAGS2 : 0, 32); // flags2
        init.writeUInt32LE(1, 36); // max_stack_depth
        head.writeUInt32LE(16 + init.length, 0);
        t.is(N.writeReply(fd, [head, init]), 80);
        if (offersPassthrough) {
          const file = open(t, dfd, 'backing', C.O_RDWR | C.O_CREAT);
          const id = N.backingOpen(fd, file);
          t.true(id > 0);
          N.backingClose(fd, id);
          t.is(errOf(() => N.backingClose(fd, id)).code, 'ENOENT');
          passthroughTested = true;
        }
        setTimeout(() => {
          N.umount2(mnt, 0); // the kernel sends nothing for a plain fuse umount
          mounted = false;
        }, 10);
      } else {
        head.writeUInt32LE(16, 0);
        head.writeInt32LE(-E.ENOSYS, 4);
        N.writeReply(fd, head);
      }
    }, resolve);
  });
  t.is(await end, null);
  t.is(opcodes[0], FUSE_INIT);
  if (!passthroughTested) t.log('kernel does not offer FUSE_PASSTHROUGH: backingOpen not exercised');
});

test('process helpers: ids, umask, setfsuid/setfsgid, setNofileLimit', (t) => {
  t.is(N.getuid(), process.getuid!());
  t.is(N.getgid(), process.getgid!());
  t.is(N.geteuid(), process.geteuid!());
  const old = N.umask(0o027);
  t.is(N.umask(old), 0o027);

  const max = N.setNofileLimit(Number.MAX_SAFE_INTEGER); // as high as allowed
  t.true(max >= 1024);
  t.is(N.setNofileLimit(512), 512);
  t.is(N.setNofileLimit(max), max);

  if (isRoot) {
    const { dfd } = tmp(t);
    N.fchmodat(dfd, '', 0o777, C.AT_EMPTY_PATH); // the new fsuid has no CAP_DAC_OVERRIDE
    // setfsuid/gid are per-thread: create the file and restore synchronously
    const prevU = N.setfsuid(4321);
    const prevG = N.setfsgid(8765);
    try {
      N.close(N.openat(dfd, 'owned', C.O_WRONLY | C.O_CREAT | C.O_CLOEXEC, 0o644));
    } finally {
      t.is(N.setfsuid(prevU), 4321);
      t.is(N.setfsgid(prevG), 8765);
    }
    const s = st(dfd, 'owned');
    t.is(s[ST.uid], 4321);
    t.is(s[ST.gid], 8765);
  }
});

test('nameToHandleAt / openByHandleAt: a handle opens the same object; AT_EMPTY_PATH for a descriptor', (t) => {
  const { dir, dfd } = tmp(t);
  fs.writeFileSync(path.join(dir, 'f'), 'x');
  fs.mkdirSync(path.join(dir, 'd'));
  fs.symlinkSync('f', path.join(dir, 'l'));
  const byName = N.nameToHandleAt(dfd, 'f', 0);
  t.true(Buffer.isBuffer(byName.handle) && byName.handle.length > 0 && byName.handle.length <= C.MAX_HANDLE_SZ);
  t.true(Number.isInteger(byName.type) && byName.type > 0);
  t.true(Number.isInteger(byName.mountId));
  const fd = open(t, dfd, 'f', C.O_PATH);
  const byFd = N.nameToHandleAt(fd, '', C.AT_EMPTY_PATH);
  t.deepEqual([byFd.type, byFd.handle.toString('hex')], [byName.type, byName.handle.toString('hex')]);
  // Without AT_SYMLINK_FOLLOW a symlink's own handle; with it, its target's.
  t.not(N.nameToHandleAt(dfd, 'l', 0).handle.toString('hex'), byName.handle.toString('hex'));
  t.is(N.nameToHandleAt(dfd, 'l', 0x400 /* AT_SYMLINK_FOLLOW */).handle.toString('hex'), byName.handle.toString('hex'));
  t.is(errOf(() => N.nameToHandleAt(dfd, 'missing', 0)).code, 'ENOENT');
  if (!isRoot) return t.pass('open_by_handle_at needs CAP_DAC_READ_SEARCH');
  // The mount descriptor must be an open one: O_PATH is refused.
  t.is(errOf(() => N.openByHandleAt(dfd, byName.type, byName.handle, C.O_RDONLY)).code, 'EBADF');
  const root = open(t, dfd, '.', C.O_RDONLY | C.O_DIRECTORY);
  for (const name of ['f', 'd']) {
    const h = N.nameToHandleAt(dfd, name, 0);
    const o = N.openByHandleAt(root, h.type, h.handle, C.O_PATH | C.O_CLOEXEC);
    const got = N.newStatBuf();
    N.fstat(o, got);
    N.close(o);
    t.is(got[ST.ino], st(dfd, name)[ST.ino], name);
  }
  // A removed object's handle is stale.
  const gone = N.nameToHandleAt(dfd, 'd', 0);
  fs.rmdirSync(path.join(dir, 'd'));
  t.is(errOf(() => N.openByHandleAt(root, gone.type, gone.handle, C.O_PATH)).code, 'ESTALE');
  t.is(errOf(() => N.openByHandleAt(root, 1, Buffer.alloc(C.MAX_HANDLE_SZ + 1), C.O_PATH)).code, 'EINVAL');
});

test('nameToHandleAt: EOPNOTSUPP where the filesystem cannot encode handles (procfs)', (t) => {
  const proc = N.openat(C.AT_FDCWD, '/proc', C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  t.teardown(() => N.close(proc));
  t.is(errOf(() => N.nameToHandleAt(proc, 'self', 0)).code, 'EOPNOTSUPP');
});

test('fsUuid: the superblock UUID (tmpfs has a random one), null where none is reported, EBADF on O_PATH', (t) => {
  const proc = open(t, C.AT_FDCWD, '/proc', C.O_RDONLY | C.O_DIRECTORY);
  t.is(N.fsUuid(proc), null);
  const { dfd } = tmp(t);
  t.is(errOf(() => N.fsUuid(dfd)).code, 'EBADF');
  if (!isRoot) return t.pass('mounting a tmpfs needs root');
  const a = tmp(t);
  const b = tmp(t);
  N.mount('tmpfs', a.dir, 'tmpfs', 0, 'size=1m');
  t.teardown(() => N.umount2(a.dir, C.MNT_DETACH));
  N.mount('tmpfs', b.dir, 'tmpfs', 0, 'size=1m');
  t.teardown(() => N.umount2(b.dir, C.MNT_DETACH));
  const ua = N.fsUuid(open(t, C.AT_FDCWD, a.dir, C.O_RDONLY | C.O_DIRECTORY));
  const ub = N.fsUuid(open(t, C.AT_FDCWD, b.dir, C.O_RDONLY | C.O_DIRECTORY));
  if (ua === null || ub === null) return t.pass('kernel without FS_IOC_GETFSUUID (Linux < 6.8)');
  t.is(ua.length, 16);
  t.false(ua.equals(Buffer.alloc(16)), 'a tmpfs gets a random UUID');
  t.false(ua.equals(ub), 'two tmpfs mounts differ');
  // The same filesystem answers the same through any descriptor on it.
  fs.mkdirSync(path.join(a.dir, 'sub'));
  t.deepEqual(N.fsUuid(open(t, C.AT_FDCWD, path.join(a.dir, 'sub'), C.O_RDONLY | C.O_DIRECTORY)), ua);
});

test('statxAttributes: immutable and append-only as the filesystem reports them', (t) => {
  if (!isRoot) return t.pass('needs root (chattr +i / +a)');
  const { dir, dfd } = tmp(t);
  for (const f of ['plain', 'imm', 'app']) fs.writeFileSync(path.join(dir, f), 'x');
  fs.mkdirSync(path.join(dir, 'd'));
  fs.symlinkSync('imm', path.join(dir, 'link'));
  const flagged = ['imm', 'app', 'd'].map((f) => path.join(dir, f));
  // runs before tmp()'s removal (teardowns run last registered first): lift the flags, else nothing can remove the files
  t.teardown(() => {
    spawnSync('chattr', ['-i', '-a', ...flagged]);
  });
  for (const [f, flag] of [['imm', '+i'], ['app', '+a'], ['d', '+i']] as const) {
    const r = spawnSync('chattr', [flag, path.join(dir, f)], { encoding: 'utf8' });
    if (r.status !== 0) return t.pass(`chattr not possible here: ${r.stderr}`);
  }
  const attrs = (name: string, flags = C.AT_SYMLINK_NOFOLLOW): number => N.statxAttributes(dfd, name, flags) & 0x30;
  t.is(attrs('plain'), 0);
  t.is(attrs('imm'), 0x10);
  t.is(attrs('app'), 0x20);
  t.is(attrs('d'), 0x10);
  t.is(attrs('link'), 0, 'the link itself');
  t.is(attrs('link', 0), 0x10, 'followed');
  const fd = open(t, dfd, 'imm', C.O_PATH);
  t.is(N.statxAttributes(fd, '', C.AT_EMPTY_PATH) & 0x30, 0x10, 'through a descriptor');
  t.is(errOf(() => N.statxAttributes(dfd, 'nope', 0)).code, 'ENOENT');
});

test.serial('lowMemory collects the garbage and gives the freed heap back', (t) => {
  // Garbage that lives long enough to reach the old generation, then dropped.
  let junk: object[][] = [];
  for (let i = 0; i < 40; i++) junk.push(Array.from({ length: 20_000 }, (_, j) => ({ i, j, s: `x${j}` })));
  const held = v8.getHeapStatistics().used_heap_size;
  junk = [];
  N.lowMemory();
  const after = v8.getHeapStatistics();
  t.true(after.used_heap_size < held - (20 << 20), `used ${held} -> ${after.used_heap_size}`);
  t.true(after.total_heap_size < held, `committed ${after.total_heap_size} after, ${held} used before`);
  t.is(junk.length, 0);
});

test('warmTree reads the tree below a directory, depth first, up to maxDirs directories; symlinks are not followed; the descriptor is taken', async (t) => {
  const { dir, dfd } = tmp(t);
  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-native-out-'));
  t.teardown(() => fs.rmSync(outside, { recursive: true, force: true }));
  for (let i = 0; i < 5; i++) fs.mkdirSync(path.join(outside, `o${i}`));
  for (const d of ['a', 'a/b', 'a/b/c', 'd']) fs.mkdirSync(path.join(dir, 't', d), { recursive: true });
  fs.writeFileSync(path.join(dir, 't', 'a', 'f'), 'x');
  fs.symlinkSync(outside, path.join(dir, 't', 'out'));
  fs.symlinkSync(outside, path.join(dir, 't', 'a', 'out'));
  // (the descriptors given are closed: /proc/self/fd no longer names them, or names something else,
  // as other tests of this file run meanwhile)
  const given: [number, string][] = [];
  const open2 = (name: string, flags: number): number => {
    const fd = N.openat(dfd, name, flags | C.O_CLOEXEC, 0);
    given.push([fd, path.join(dir, name)]);
    return fd;
  };
  const target = (fd: number): string | null => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return null;
    }
  };
  // (an O_PATH descriptor, as the daemon's layer directories are)
  t.is(await N.warmTree(open2('t', C.O_PATH | C.O_DIRECTORY), 100), 5, 't, a, a/b, a/b/c, d: not what the links lead to');
  t.is(await N.warmTree(open2('t', C.O_RDONLY | C.O_DIRECTORY), 3), 3);
  t.is(await N.warmTree(open2('t/a/f', C.O_PATH), 100), 0, 'not a directory: nothing read');
  for (const [fd, p] of given) t.not(target(fd), p, `descriptor ${fd} (${p}) is closed`);
  // Another filesystem mounted inside: not entered (as find -xdev).
  const d = path.join(dir, 't', 'd');
  t.is(spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', d]).status, 0);
  t.teardown(() => void spawnSync('umount', ['-l', d]));
  fs.mkdirSync(path.join(d, 'x', 'y'), { recursive: true });
  t.is(await N.warmTree(N.openat(dfd, 't', C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0), 100), 4, 't, a, a/b, a/b/c');
  t.is(spawnSync('umount', [d]).status, 0);
});

test('readAheadFiles reads ahead the regular files of 1..maxSize bytes after a name, in the listing\'s order, up to maxFiles and maxBytes; the descriptor is taken', async (t) => {
  const { dir, dfd } = tmp(t);
  const d = path.join(dir, 'r');
  fs.mkdirSync(d);
  const outside = path.join(os.tmpdir(), `strata-native-ra-${process.pid}`);
  fs.writeFileSync(outside, 'outside');
  t.teardown(() => fs.rmSync(outside, { force: true }));
  const eligible = new Set<string>();
  for (let i = 0; i < 12; i++) {
    fs.writeFileSync(path.join(d, `f${i}`), 'x'.repeat(16));
    eligible.add(`f${i}`);
  }
  fs.writeFileSync(path.join(d, 'empty'), '');
  fs.writeFileSync(path.join(d, 'big'), 'x'.repeat(2000));
  fs.symlinkSync(outside, path.join(d, 'link'));
  fs.mkdirSync(path.join(d, 'sub'));
  t.is(spawnSync('mkfifo', [path.join(d, 'fifo')]).status, 0);
  // (the listing's order: getdents', as ls -U gives it)
  const order = spawnSync('ls', ['-U', d], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  t.is(order.length, 17);
  const after = (name: string): number => order.slice(order.indexOf(name) + 1).filter((n) => eligible.has(n)).length;
  const fd = (): number => N.openat(dfd, 'r', C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  t.is(await N.readAheadFiles(fd(), '', 100, 1 << 20, 1000), 12, 'not empty, big, the link, the directory, the FIFO');
  for (const name of [order[0]!, order[8]!, order[16]!]) t.is(await N.readAheadFiles(fd(), name, 100, 1 << 20, 1000), after(name), `after ${name}`);
  t.is(await N.readAheadFiles(fd(), 'missing', 100, 1 << 20, 1000), 0, 'a name not listed: nothing');
  t.is(await N.readAheadFiles(fd(), '', 3, 1 << 20, 1000), 3);
  t.is(await N.readAheadFiles(fd(), '', 100, 25, 1000), 2, 'stops once maxBytes are read (16 bytes each)');
  t.is(await N.readAheadFiles(fd(), '', 100, 1 << 20, 2000), 13, 'big is within maxSize');
  const given = fd();
  await N.readAheadFiles(given, '', 1, 1, 1000);
  let target: string | null = null;
  try {
    target = fs.readlinkSync(`/proc/self/fd/${given}`);
  } catch {
    // closed
  }
  t.not(target, d, 'the descriptor given is closed');
});

// openat2 with RESOLVE_IN_ROOT answers EAGAIN when a rename anywhere races with a ".." of the path (the
// kernel cannot prove the walk stayed inside); strata's openat2 tries again. Under a loop of renames, a
// few hundred of two million bare calls got EAGAIN (a container's mount point behind an image symlink
// failed once so during the test suite). The renames come from a worker thread of this process (no
// processes forked), for 0.7 s.
test('openat2 with RESOLVE_IN_ROOT is tried again on EAGAIN while renames race with its ".."', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oa2-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'r', 'a', 'b'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'x1'), '');
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const renamer = new Worker(`
    const { workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const [a, b] = [workerData.dir + '/x1', workerData.dir + '/x2'];
    while (Atomics.load(workerData.stop, 0) === 0) { fs.renameSync(a, b); fs.renameSync(b, a); }
  `, { eval: true, workerData: { dir, stop } });
  const ended = new Promise((resolve) => renamer.once('exit', resolve));
  t.teardown(async () => {
    Atomics.store(stop, 0, 1);
    await ended;
  });
  await new Promise((resolve) => setTimeout(resolve, 100));
  const root = N.openat(N.C.AT_FDCWD, path.join(dir, 'r'), N.C.O_PATH | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0);
  t.teardown(() => N.close(root));
  let calls = 0;
  const failures: string[] = [];
  const start = Date.now();
  while (Date.now() - start < 700) {
    calls++;
    try {
      N.close(N.openat2(root, 'a/b/../b/../../a/b', N.C.O_PATH | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0, N.C.RESOLVE_IN_ROOT));
    } catch (e) {
      failures.push((e as N.ErrnoError).code ?? String(e));
    }
  }
  Atomics.store(stop, 0, 1);
  await ended;
  t.true(calls > 10_000, `${calls} calls`);
  t.deepEqual(failures, [], `${failures.length} failures in ${calls} calls`);
});
