// Idmapped bind mounts (mount_setattr MOUNT_ATTR_IDMAP), the kernel's side of the owner-mapping
// tests, as util-linux's X-mount.idmap= makes them (this machine's mount(8) is older): a child in a
// new user namespace whose uid and gid maps are one line, open_tree(OPEN_TREE_CLONE) of the source,
// the idmapping set on the clone, move_mount onto the target.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import { run } from './exec.js';
import { unmountQuietly } from './mounts.js';
import { PYTHON } from './python.js';

const IDMAP_MOUNT = String.raw`
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def chk(r):
    if r < 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    return r
src, dst, line = sys.argv[1:4]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w); chk(libc.unshare(0x10000000)); os.read(r, 1); os._exit(0)
os.close(r)
while os.readlink('/proc/%d/ns/user' % pid) == os.readlink('/proc/self/ns/user'): time.sleep(0.001)
for f in ('uid_map', 'gid_map'):
    with open('/proc/%d/%s' % (pid, f), 'w') as fh: fh.write(line + '\n')
ns = os.open('/proc/%d/ns/user' % pid, os.O_RDONLY)
os.write(w, b'x'); os.waitpid(pid, 0)
fd = chk(libc.syscall(428, -100, src.encode(), 1 | 0o2000000))  # open_tree(OPEN_TREE_CLONE)
attr = struct.pack('QQQQ', 0x00100000, 0, 0, ns)                  # MOUNT_ATTR_IDMAP
chk(libc.syscall(442, fd, b'', 0x1000, attr, len(attr)))          # mount_setattr(AT_EMPTY_PATH)
chk(libc.syscall(429, fd, b'', -100, dst.encode(), 4))            # move_mount(F_EMPTY_PATH)
`;

/**
 * Bind-mounts `src` at `dst` (made if missing) idmapped by STORED:SHOWN:COUNT (ids STORED.. on disk show
 * as SHOWN..), unmounted when the test ends.
 */
export function idmapMount(t: ExecutionContext, src: string, dst: string, map: string): void {
  fs.mkdirSync(dst, { recursive: true });
  const r = run(PYTHON, ['-c', IDMAP_MOUNT, src, dst, map.split(':').join(' ')]);
  if (r.status !== 0) throw new Error(`idmapped mount of ${src} at ${dst}: ${r.stderr.trim()}`);
  t.teardown(() => unmountQuietly(dst));
}
