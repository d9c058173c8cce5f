// An upper file with several names is one inode for the kernel, as on the kernel's overlay (which
// hashes its inodes by the upper inode): also for names looked up afresh, after a remount or after
// the kernel forgot them. Otherwise a change through one name (chown, a write through a descriptor)
// leaves the other name's cached attributes and pages behind.
import test from 'ava';
import { runOk } from './helpers/exec.js';
import { setupPair } from './helpers/ops-pair.js';
import { dropMachineCaches } from './helpers/page-cache.js';

const MAKE = `
import os
with open('a', 'w') as f: f.write('x' * 70000)  # (more than 64 KiB: opened by passthrough)
os.link('a', 'b')
os.mkdir('d')
os.link('a', 'd/c')
`;

// A descriptor opened through one name; the other names but one removed, so that the last has one
// link; a listing then gives the kernel that name's attributes (with one link, cached), and the
// change through the descriptor must show through that name at once.
const CHANGE = `
import os
fd = os.open('b', os.O_RDWR | os.O_APPEND)
os.unlink('b')
os.unlink('d/c')
names = sorted(os.listdir('.'))
def show(tag):
    st = os.stat('a')
    return '%s uid=%d size=%d nlink=%d' % (tag, st.st_uid, st.st_size, st.st_nlink)
lines = [str(names), show('one name')]
os.fchown(fd, 1000, 1000)
os.write(fd, b'more')
lines.append(show('after'))
lines.append(repr(open('a').read()[-6:]))
os.close(fd)
print('\\n'.join(lines))
`;

for (const how of ['remount', 'drop_caches'] as const) {
  test.serial(`hard links of an upper file stay one inode after ${how === 'remount' ? 'a remount' : 'the kernel forgets them'}: a change through one name shows through the others`, async (t) => {
    const pair = setupPair(t, [[{ t: 'file', p: 'lowerfile', data: 'l\n' }]]);
    const out: Record<string, string> = {};
    for (const side of [pair.kernel, pair.strata]) {
      runOk('python3', ['-c', MAKE], { cwd: side.mnt });
      if (how === 'remount') side.remount();
      else await dropMachineCaches(2);
      out[side.name] = runOk('python3', ['-c', CHANGE], { cwd: side.mnt });
    }
    t.regex(out.kernel!, /after uid=1000 size=70004/);
    t.is(out.strata, out.kernel);
  });
}
