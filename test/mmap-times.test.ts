// Writes through a shared mapping update mtime and ctime, seen by stat after msync, after munmap
// and close, and when the descriptor was closed before the mapping was written, on the kernel
// overlay and on strata (with passthrough, where the kernel writes the layer file directly, and
// without). Outputs are booleans: "the time moved", so runs on two mounts compare.
import test from 'ava';
import type { LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { shellBoth } from './helpers/shell-pair.js';

const LAYER: LayerSpec = [
  { t: 'file', p: 'lower-a', data: 'x'.repeat(8192) },
  { t: 'file', p: 'lower-b', data: 'x'.repeat(8192) },
  { t: 'file', p: 'lower-c', data: 'x'.repeat(8192) },
];

const MMAP = String.raw`import mmap, os, sys, time
p, how = sys.argv[1], sys.argv[2]
def st(): s = os.stat(p); return (s.st_mtime_ns, s.st_ctime_ns)
fd = os.open(p, os.O_RDWR)
before = st()
time.sleep(0.05)
m = mmap.mmap(fd, 8192)
if how == "close-first":
    os.close(fd)
m[100:105] = b"hello"
out = []
if how == "msync":
    m.flush()
    now = st(); out.append("msync mtime %s ctime %s" % (now[0] > before[0], now[1] > before[1]))
m.close()
if how != "close-first":
    os.close(fd)
now = st(); out.append("closed mtime %s ctime %s" % (now[0] > before[0], now[1] > before[1]))
print("; ".join(out))`;

const WRITE_ONLY = `/usr/bin/python3 -c 'import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR); m = mmap.mmap(fd, 8192); m[0:3] = b"abc"; m.close(); os.close(fd)'`;

for (const [title, strataArgs] of [['passthrough', []], ['--passthrough off', ['--passthrough', 'off']]] as const) {
  test.serial(`mmap writes move mtime and ctime (${title})`, (t) => {
    const c = new Checks(t);
    const pair = setupPair(t, [LAYER], { strataArgs: [...strataArgs] });
    const run = (f: string, how: string): string => `/usr/bin/python3 -c '${MMAP}' ${f} ${how}`;
    const k = shellBoth(c, pair, [
      // a fresh upper file, with old times
      { sh: 'head -c 8192 /dev/zero > up && touch -d @1000000 up' },
      { sh: run('up', 'msync') },
      { sh: run('up', 'munmap') },
      { sh: run('up', 'close-first') },
      // lower files: the open for write copies them up first
      { sh: run('lower-a', 'msync') },
      { sh: run('lower-b', 'munmap') },
      { sh: run('lower-c', 'close-first') },
      // the times looked at before another process opens and writes the mapping (xfstests generic/080)
      { sh: `a=$(stat -c '%y %z' up); sleep 0.05; ${WRITE_ONLY} up; b=$(stat -c '%y %z' up); [ "$a" != "$b" ] && echo moved` },
      { sh: 'cat up lower-a | tr -d "\\0x" ' },
    ]);
    c.eq(k[1], 'msync mtime True ctime True; closed mtime True ctime True\n', 'kernel: the times move');
    finishPair(c, pair);
    c.done();
  });
}
