// -o nfs_export=on: file handles (name_to_handle_at / open_by_handle_at, what nfsd uses) that keep
// working after the kernel forgot the inode (drop_caches), after a copy-up, after renames of the
// file and of its directories, and after a remount; and that go stale when the object is removed
// or replaced. Each scenario runs with the same steps on the kernel's overlay (index=on,
// nfs_export=on) and on strata, and what each handle opens (or the errno) is compared: the path
// the kernel reconnects it to, the data, and whether st_ino is the one the name shows.
// Serial: drop_caches is global, and the kernel's index=on refuses an upper it believes in use.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { kernelOverlay, strataMount, strataUnmount, unmountQuietly } from './helpers/mounts.js';
import { setupPair, type Pair, type Side } from './helpers/ops-pair.js';
import { python } from './helpers/python.js';
import { DROP_LOCK, holdPageCacheLock } from './helpers/page-cache.js';

/**
 * Runs handle commands in one process, in order; prints one answer per command:
 *   ["save", path, key]   name_to_handle_at(path) kept under key
 *   ["open", mnt, key, name]  open_by_handle_at: for a directory the path the kernel reconnected it
 *                         to (relative to mnt) and its entries; for a file its first bytes (a
 *                         file's dentry stays disconnected); whether st_ino is the one name shows
 *   ["drop"]              syncfs + drop_caches: the kernel forgets unused inodes (FUSE FORGET)
 * Handles are kept in a JSON file (argv[1]) between runs, so they outlive a remount.
 */
const FH = String.raw`
import ctypes, errno, fcntl, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class FH(ctypes.Structure):
    _fields_ = [('handle_bytes', ctypes.c_uint), ('handle_type', ctypes.c_int), ('f_handle', ctypes.c_ubyte * 128)]
store = sys.argv[1]
handles = json.load(open(store)) if os.path.exists(store) else {}
out = []
for cmd in json.loads(sys.argv[2]):
    if cmd[0] == 'save':
        fh = FH(); fh.handle_bytes = 128; mnt_id = ctypes.c_int()
        if libc.name_to_handle_at(-100, cmd[1].encode(), ctypes.byref(fh), ctypes.byref(mnt_id), 0) < 0:
            out.append(errno.errorcode.get(ctypes.get_errno(), '?')); continue
        handles[cmd[2]] = [fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]).hex()]
        out.append('saved')
    elif cmd[0] == 'open':
        typ, data = handles[cmd[2]]
        b = bytes.fromhex(data)
        fh = FH(); fh.handle_bytes = len(b); fh.handle_type = typ
        ctypes.memmove(fh.f_handle, b, len(b))
        mfd = os.open(cmd[1], os.O_RDONLY | os.O_DIRECTORY)
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
        e = ctypes.get_errno()
        os.close(mfd)
        if fd < 0:
            out.append(errno.errorcode.get(e, '?')); continue
        st = os.fstat(fd)
        r = {}
        if os.path.isdir('/proc/self/fd/%d' % fd):
            where = os.readlink('/proc/self/fd/%d' % fd)
            r['path'] = os.path.relpath(where, cmd[1]) if where.startswith(cmd[1]) else 'outside:' + where
            r['entries'] = sorted(os.listdir('/proc/self/fd/%d' % fd))
        else:
            r['data'] = os.read(fd, 64).decode('latin1')
        try:
            r['sameIno'] = os.lstat(os.path.join(cmd[1], cmd[3])).st_ino == st.st_ino
        except OSError as x:
            r['sameIno'] = errno.errorcode.get(x.errno, '?')
        os.close(fd)
        out.append(r)
    elif cmd[0] == 'drop':
        fd = os.open(cmd[1], os.O_RDONLY)
        libc.syncfs(fd); os.close(fd)
        lk = os.open(sys.argv[3], os.O_RDONLY)  # no other drop at once (page-cache.ts DROP_LOCK)
        fcntl.flock(lk, fcntl.LOCK_EX)
        with open('/proc/sys/vm/drop_caches', 'w') as f: f.write('2')
        os.close(lk)
        out.append('dropped')
json.dump(handles, open(store, 'w'))
print(json.dumps(out))
`;

type Cmd = [string, ...string[]];

const OPTIONS = ['index=on', 'nfs_export=on'];

// The "drop" steps drop the machine's caches: not while a test of another file needs its reads to stay
// cached (see holdPageCacheLock), so this file holds the lock shared while it runs.
let releaseCacheLock = (): void => {};
test.before(async () => {
  releaseCacheLock = await holdPageCacheLock('shared');
});
test.after.always(() => releaseCacheLock());

function handles(side: Side, cmds: readonly Cmd[]): unknown[] {
  const abs = cmds.map((c): Cmd => (c[0] === 'save' ? ['save', path.join(side.mnt, c[1]!), c[2]!] : c[0] === 'open' ? ['open', side.mnt, c[1]!, c[2] ?? ''] : ['drop', side.mnt]));
  return python(FH, null, [path.join(side.base, 'handles.json'), JSON.stringify(abs), DROP_LOCK]) as unknown[];
}

/** Runs the steps on both sides: handle commands, or a function given the mount point. */
type Step = { fh: Cmd[] } | { fs: (mnt: string) => void } | { remount: true };

function remount(t: ExecutionContext, side: Side, kernel: boolean): void {
  const spec = { lowers: side.lowers, upper: side.upper, work: side.work, mountpoint: side.mnt, options: OPTIONS };
  if (kernel) {
    unmountQuietly(side.mnt);
    kernelOverlay(t, spec);
  } else {
    strataUnmount(side.mnt);
    strataMount(t, spec);
  }
}

function scenario(t: ExecutionContext, pair: Pair, steps: readonly Step[]): { k: unknown[]; s: unknown[] } {
  const out = { k: [] as unknown[], s: [] as unknown[] };
  for (const [side, acc, kernel] of [[pair.kernel, out.k, true], [pair.strata, out.s, false]] as const) {
    for (const st of steps) {
      if ('fh' in st) acc.push(handles(side, st.fh));
      else if ('fs' in st) st.fs(side.mnt);
      else remount(t, side, kernel);
    }
  }
  return out;
}

const LAYERS = [[
  { t: 'dir' as const, p: 'd' },
  { t: 'file' as const, p: 'd/f', data: 'lower data' },
  { t: 'dir' as const, p: 'd/sub' },
  { t: 'file' as const, p: 'd/sub/g', data: 'deep' },
  { t: 'file' as const, p: 'top', data: 'top file' },
]];

test.serial('handles of lower files and directories open after FORGET, after copy-up and after a remount', (t) => {
  const pair = setupPair(t, LAYERS, { options: OPTIONS });
  const { k, s } = scenario(t, pair, [
    { fh: [['save', 'd/f', 'f'], ['save', 'd/sub', 'sub'], ['save', 'd/sub/g', 'g'], ['save', '', 'root'], ['drop'],
      ['open', 'f', 'd/f'], ['open', 'sub', 'd/sub'], ['open', 'g', 'd/sub/g'], ['open', 'root', '']] },
    { fs: (m) => fs.appendFileSync(path.join(m, 'd/f'), ' appended') },
    { fs: (m) => fs.chmodSync(path.join(m, 'd/sub'), 0o700) },
    { fh: [['drop'], ['open', 'f', 'd/f'], ['open', 'sub', 'd/sub'], ['open', 'g', 'd/sub/g']] },
    { remount: true },
    { fh: [['open', 'f', 'd/f'], ['open', 'sub', 'd/sub'], ['open', 'g', 'd/sub/g'], ['drop'], ['open', 'g', 'd/sub/g'], ['open', 'f', 'd/f']] },
  ]);
  t.deepEqual(s, k);
  // the kernel proves the scenario: everything opened, with the copied-up data after the append
  t.deepEqual((k[0] as unknown[]).slice(5), [
    { data: 'lower data', sameIno: true },
    { path: 'd/sub', entries: ['g'], sameIno: true },
    { data: 'deep', sameIno: true },
    { path: '.', entries: ['d', 'top'], sameIno: true },
  ]);
  t.deepEqual((k[2] as unknown[])[0], { data: 'lower data appended', sameIno: true });
});

test.serial('handles follow renames of the file and of its directories; removed or replaced objects go stale', (t) => {
  const pair = setupPair(t, LAYERS, { options: OPTIONS });
  const { k, s } = scenario(t, pair, [
    {
      fs: (m) => {
        fs.mkdirSync(path.join(m, 'new/deeper'), { recursive: true });
        fs.writeFileSync(path.join(m, 'new/deeper/x'), 'x data');
        fs.writeFileSync(path.join(m, 'new/gone'), 'gone');
        fs.writeFileSync(path.join(m, 'new/victim'), 'victim');
        fs.writeFileSync(path.join(m, 'new/other'), 'other');
      },
    },
    { fh: [['save', 'new/deeper/x', 'x'], ['save', 'new/deeper', 'deeper'], ['save', 'new/gone', 'gone'], ['save', 'new/victim', 'victim'],
      ['save', 'top', 'top'], ['save', 'd/f', 'f']] },
    {
      fs: (m) => {
        fs.renameSync(path.join(m, 'new/deeper/x'), path.join(m, 'new/deeper/x2'));
        fs.renameSync(path.join(m, 'new/deeper'), path.join(m, 'new/moved'));
        fs.renameSync(path.join(m, 'new'), path.join(m, 'renamed'));
        fs.unlinkSync(path.join(m, 'renamed/gone'));
        fs.renameSync(path.join(m, 'renamed/other'), path.join(m, 'renamed/victim'));
        fs.renameSync(path.join(m, 'top'), path.join(m, 'renamed/top-moved')); // a lower file: copied up and moved
        fs.unlinkSync(path.join(m, 'd/f')); // a lower file: whited out
      },
    },
    { fh: [['drop'], ['open', 'x', 'renamed/moved/x2'], ['open', 'deeper', 'renamed/moved'], ['open', 'gone', 'renamed/gone'],
      ['open', 'victim', 'renamed/victim'], ['open', 'top', 'renamed/top-moved'], ['open', 'f', 'd/f']] },
    { remount: true },
    { fh: [['open', 'x', 'renamed/moved/x2'], ['open', 'deeper', 'renamed/moved'], ['open', 'victim', 'renamed/victim'],
      ['open', 'top', 'renamed/top-moved'], ['open', 'f', 'd/f']] },
  ]);
  t.deepEqual(s, k);
  t.deepEqual((k[1] as unknown[]).slice(1, 4), [
    { data: 'x data', sameIno: true },
    { path: 'renamed/moved', entries: ['x2'], sameIno: true },
    'ESTALE',
  ]);
});

test.serial('handles of each name of a lower hard link, and of files in a directory listed in full, survive FORGET and a remount', (t) => {
  const layers = [[
    { t: 'dir' as const, p: 'h' },
    { t: 'file' as const, p: 'h/a', data: 'linked' },
    { t: 'link' as const, p: 'h/b', to: 'h/a' },
    ...Array.from({ length: 40 }, (_, i) => ({ t: 'file' as const, p: `big/f${i}`, data: `n${i}` })),
  ]];
  const pair = setupPair(t, layers, { options: OPTIONS });
  const { k, s } = scenario(t, pair, [
    { fs: (m) => fs.readdirSync(path.join(m, 'big')) },
    { fh: [['save', 'h/a', 'a'], ['save', 'h/b', 'b'], ['save', 'big/f7', 'f7'], ['save', 'big/f39', 'f39'], ['drop'],
      ['open', 'b', 'h/b'], ['open', 'a', 'h/a'], ['open', 'f39', 'big/f39'], ['open', 'f7', 'big/f7'], ['drop'],
      ['open', 'a', 'h/a'], ['open', 'b', 'h/b']] },
    { fs: (m) => fs.renameSync(path.join(m, 'h/b'), path.join(m, 'h/b2')) },
    { remount: true },
    { fh: [['open', 'b', 'h/b2'], ['open', 'a', 'h/a'], ['open', 'f7', 'big/f7']] },
  ]);
  t.deepEqual(s, k);
  t.deepEqual(k.at(-1), [{ data: 'linked', sameIno: true }, { data: 'linked', sameIno: true }, { data: 'n7', sameIno: true }]);
});

test.serial('without nfs_export, handles are refused as on the kernel (EOPNOTSUPP)', (t) => {
  const pair = setupPair(t, LAYERS);
  const k = handles(pair.kernel, [['save', 'd/f', 'f']]);
  t.deepEqual(handles(pair.strata, [['save', 'd/f', 'f']]), k);
  t.deepEqual(k, ['ENOTSUP']); // EOPNOTSUPP: the same number on Linux
});
