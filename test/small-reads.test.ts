// Small lower files (<= 64 KiB) opened read-only are served by the daemon, which puts their data into the
// kernel's page cache at the first open (FUSE_NOTIFY_STORE): reading them, by read(2) or by mmap, sends
// no READ, and shows the bytes the kernel's overlay shows, at every size around the page and the limit.
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { daemonLogLines, onKernelAndStrata } from './helpers/mounts.js';
import { runOk } from './helpers/exec.js';
import { tempDir } from './helpers/tmp.js';

const SIZES = [0, 1, 100, 4095, 4096, 4097, 8192, 65535, 65536, 65537, 200_000];

test('small lower files are read from the page cache the daemon filled: no READ, the kernel\'s bytes by read and by mmap', (t) => {
  const root = tempDir(t, 'sr');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(path.join(lower, 'd'), { recursive: true });
  for (const size of SIZES) {
    for (let k = 0; k < 3; k++) fs.writeFileSync(path.join(lower, 'd', `f${size}-${k}`), crypto.randomBytes(size));
  }
  // a sparse small file: its hole reads as zeros
  const fd = fs.openSync(path.join(lower, 'd', 'sparse'), 'w');
  fs.writeSync(fd, Buffer.from('end'), 0, 3, 30_000);
  fs.closeSync(fd);
  // Each file read twice by cat (a second open finds the stored pages), then by mmap in another process
  // while a descriptor of it stays open.
  const script = `
import mmap, os, hashlib, sys
out = []
for n in sorted(os.listdir('d')):
    p = os.path.join('d', n)
    a = open(p, 'rb').read()
    b = open(p, 'rb').read()
    keep = os.open(p, os.O_RDONLY)
    if a:
        with open(p, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            c = m[:]
    else:
        c = a
    os.close(keep)
    out.append('%s %d %s %s %s' % (n, len(a), hashlib.sha256(a).hexdigest()[:16], a == b, a == c))
print('\\n'.join(out))
`;
  const log = path.join(root, 'strata.log');
  const results = onKernelAndStrata(t, root, [lower], ['--log-file', log, '--log-level', 'info'],
    (mnt) => runOk('python3', ['-c', script], { cwd: mnt }));
  t.is(results.strata, results.kernel);
  t.false(results.strata.includes('False'), results.strata);
  const line = daemonLogLines(log).find((l) => l.msg === 'unmounted');
  t.truthy(line?.byOp, 'the daemon logs its request counts when unmounted');
  const files = SIZES.length * 3 + 1;
  t.true((line!.byOp!.OPEN ?? 0) >= 3 * files, JSON.stringify(line!.byOp));
  // The files over 64 KiB are read by passthrough: no READ either.
  t.is(line!.byOp!.READ ?? 0, 0, `READs: ${JSON.stringify(line!.byOp)}`);
});

// The data of a small lower file that is not in the lower filesystem's page cache is read by the daemon
// at the open too (it was opened by passthrough, and such a read-only open kept reading the lower file
// after a copy-up: what it read depended on the page cache). Caches dropped before each open.
test('a read-only descriptor of a small lower file, opened cold, reads what a copy-up wrote, as on the kernel', (t) => {
  const root = tempDir(t, 'cold');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(lower);
  for (const size of [1, 100, 4096, 65536]) fs.writeFileSync(path.join(lower, `f${size}`), crypto.randomBytes(size));
  const script = `
import os, hashlib
out = []
for n in sorted(os.listdir('.')):
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as d: d.write('3')
    r = os.open(n, os.O_RDONLY)
    with open(n, 'ab') as w: w.write(b'appended')
    data = os.pread(r, 1 << 20, 0)
    os.close(r)
    out.append('%s %d %s' % (n, len(data), hashlib.sha256(data).hexdigest()[:16]))
print('\\n'.join(out))
`;
  const results = onKernelAndStrata(t, root, [lower], [], (mnt) => runOk('python3', ['-c', script], { cwd: mnt }));
  t.is(results.strata, results.kernel);
  t.regex(results.kernel, /^f1 9 /m, 'the kernel reads the copy');
});

// README, "what differs": a small lower file is served by the daemon, so a read-only mapping of it made
// before a copy-up shows what is written to the copy afterwards; the kernel's overlay keeps such a
// mapping on the lower file. (A program opened for exec stays on passthrough and keeps its lower file.)
test('a mapping of a small lower file made before its copy-up: strata shows the copy, the kernel the lower file', (t) => {
  const root = tempDir(t, 'srm');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(lower);
  fs.writeFileSync(path.join(lower, 'f'), 'old-data\n');
  const script = `
import mmap, os
fd = os.open('f', os.O_RDONLY)
m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
before = m[:3]
w = os.open('f', os.O_WRONLY)
os.write(w, b'NEW')
os.close(w)
print(before.decode(), m[:3].decode(), os.pread(fd, 3, 0).decode(), open('f', 'rb').read(3).decode())
`;
  const r = onKernelAndStrata(t, root, [lower], [], (mnt) => runOk('python3', ['-c', script], { cwd: mnt }).trim());
  // (mapping before, mapping after, read through the old descriptor, a new open)
  t.is(r.kernel, 'old old NEW NEW');
  t.is(r.strata, 'old NEW NEW NEW');
  t.is(fs.readFileSync(path.join(lower, 'f'), 'utf8'), 'old-data\n', 'the lower file is untouched');
});

// An O_DIRECT open of a small lower file goes by passthrough, not through the daemon's page-cache fill:
// the lower filesystem judges it, as on the kernel's overlay (ext4: EINVAL for a buffer, offset or size
// out of its alignment). Served by the daemon, every such read succeeded.
test('O_DIRECT reads of small lower files follow the lower filesystem\'s alignment rules, as on the kernel', (t) => {
  const root = tempDir(t, 'srd');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(lower);
  for (const size of [1, 100, 4096, 8192, 65536, 200_000]) fs.writeFileSync(path.join(lower, `f${size}`), crypto.randomBytes(size));
  const script = `
import errno, hashlib, mmap, os
def attempt(f):
    try:
        return str(f())
    except OSError as e:
        return errno.errorcode[e.errno]
out = []
for n in sorted(os.listdir('.'), key=lambda n: int(n[1:])):
    buf = mmap.mmap(-1, 4096)
    def direct(f):
        fd = os.open(n, os.O_RDONLY | os.O_DIRECT)
        try:
            return f(fd)
        finally:
            os.close(fd)
    unaligned = attempt(lambda: direct(lambda fd: len(os.pread(fd, 10, 0))))
    offset = attempt(lambda: direct(lambda fd: os.preadv(fd, [buf], 1)))
    fresh = mmap.mmap(-1, 4096)
    aligned = attempt(lambda: direct(lambda fd: '%d:%s' % (os.preadv(fd, [fresh], 0), hashlib.sha256(fresh[:]).hexdigest()[:12])))
    plain = hashlib.sha256(open(n, 'rb').read()[:4096].ljust(4096, b'\\0')).hexdigest()[:12]
    out.append('%s %s %s %s %s' % (n, unaligned, offset, aligned, plain))
print('\\n'.join(out))
`;
  const r = onKernelAndStrata(t, root, [lower], [], (mnt) => runOk('python3', ['-c', script], { cwd: mnt }).trim());
  t.is(r.strata, r.kernel);
  // The layers here are on a filesystem with direct I/O alignment rules (ext4): an unaligned read fails,
  // an aligned one reads the file's bytes.
  const first = r.kernel.split('\n')[0]!.split(' ');
  t.is(first[1], 'EINVAL', r.kernel);
  t.true(r.kernel.split('\n').every((l) => l.split(' ')[3]!.endsWith(`:${l.split(' ')[4]}`)), r.kernel);
});
