// A directory reader keeps the listing it started while the directory changes and other readers
// start, as with the kernel's overlayfs: strata opens directories without a handle, so the
// listing a reader is in is named by the offsets it was given (see UnionFs.readdir).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { kernelOverlay, strataMount } from './helpers/mounts.js';
import { PYTHON } from './helpers/python.js';
import { run } from './helpers/exec.js';
import { tempDir } from './helpers/tmp.js';

// Reader 1 takes one small getdents64 chunk; then names are removed and added through the mount
// and reader 2 lists the whole directory; then reader 1 reads on to the end.
const READERS = String.raw`
import ctypes, json, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_getdents64 = 217
def chunk(fd, size):
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(SYS_getdents64, fd, buf, size)
    if n < 0: raise OSError(ctypes.get_errno(), 'getdents64')
    names, pos = [], 0
    while pos < n:
        reclen = struct.unpack_from('<H', buf.raw, pos + 16)[0]
        names.append(buf.raw[pos + 19:pos + reclen].split(b'\0', 1)[0].decode())
        pos += reclen
    return names
d = sys.argv[1]
fd1 = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
first = chunk(fd1, 1024)
for i in range(150, 170): os.unlink(os.path.join(d, 'lower-file-with-a-longer-name-%03d' % i))
for i in range(20): open(os.path.join(d, 'new-file-%03d' % i), 'w').close()
second = sorted(os.listdir(d))
rest = []
while True:
    names = chunk(fd1, 1024)
    if not names: break
    rest += names
os.close(fd1)
print(json.dumps({'first': len(first), 'reader1': first + rest, 'reader2': second}))
`;

test('a reader keeps its listing while the directory changes and another reader starts', (t) => {
  const root = tempDir(t, 'rds');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(path.join(lower, 'd'), { recursive: true });
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(lower, 'd', `lower-file-with-a-longer-name-${String(i).padStart(3, '0')}`), '');
  const results: Record<string, { first: number; reader1: string[]; reader2: string[] }> = {};
  for (const [name, mountFn] of [['kernel', kernelOverlay], ['strata', strataMount]] as const) {
    const upper = path.join(root, `${name}-u`);
    const work = path.join(root, `${name}-w`);
    fs.mkdirSync(upper);
    fs.mkdirSync(work);
    const mnt = mountFn(t, { lowers: [lower], upper, work, mountpoint: fs.mkdtempSync(path.join(root, `${name}-m`)) });
    const r = run(PYTHON, ['-c', READERS, path.join(mnt, 'd')]);
    t.is(r.status, 0, r.stderr);
    results[name] = JSON.parse(r.stdout) as { first: number; reader1: string[]; reader2: string[] };
  }
  const k = results.kernel!;
  const s = results.strata!;
  t.true(s.first > 2 && s.first < 100, `the first chunk holds part of the listing (${s.first} names)`);
  // Every name unchanged during the read appears exactly once to reader 1.
  const unchanged = Array.from({ length: 200 }, (_, i) => `lower-file-with-a-longer-name-${String(i).padStart(3, '0')}`)
    .filter((n, i) => i < 150 || i >= 170);
  for (const [label, r] of [['kernel', k], ['strata', s]] as const) {
    const counts = new Map<string, number>();
    for (const n of r.reader1) counts.set(n, (counts.get(n) ?? 0) + 1);
    const wrong = unchanged.filter((n) => counts.get(n) !== 1);
    t.deepEqual(wrong, [], `${label}: unchanged names seen other than once by reader 1`);
  }
  // The same listings as the kernel's: reader 1 its snapshot, reader 2 the new state.
  t.deepEqual([...s.reader1].sort(), [...k.reader1].sort());
  t.deepEqual(s.reader2, k.reader2);
});
