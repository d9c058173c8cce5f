// Small lower files (<= 64 KiB) opened read-only are served by the daemon, which puts their data into the
// kernel's page cache at the first open (FUSE_NOTIFY_STORE): reading them, by read(2) or by mmap, sends
// no READ, and shows the bytes the kernel's overlay shows, at every size around the page and the limit.
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { onKernelAndStrata } from './helpers/mounts.js';
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
  const line = fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg?: string; byOp?: Record<string, number> })
    .find((l) => l.msg === 'unmounted');
  t.truthy(line?.byOp, 'the daemon logs its request counts when unmounted');
  const files = SIZES.length * 3 + 1;
  t.true((line!.byOp!.OPEN ?? 0) >= 3 * files, JSON.stringify(line!.byOp));
  // The files over 64 KiB are read by passthrough: no READ either.
  t.is(line!.byOp!.READ ?? 0, 0, `READs: ${JSON.stringify(line!.byOp)}`);
});
