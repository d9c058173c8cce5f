// Crash tests: a fast look at a tree (lstat + xattrs of every entry, sha256 only of the files asked
// for), and the lower layer of large random files the crash loop copies up.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { OPS, python } from './python.js';

export interface Entry {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev' | 'error';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: string;
  ctimeNs: string;
  ino: string;
  nlink: number;
  /** 'major:minor' for devices */
  rdev?: string;
  /** name → hex value */
  xattrs: Record<string, string>;
  sha256?: string;
  /** for type 'error': the errno name of what failed */
  error?: string;
}

const INSPECT = String.raw`
import errno, hashlib, json, os, stat, sys
req = json.load(sys.stdin)
root = req['root']; want = set(req['hash']); hash_all = req['hashAll']
out = {}
def kind(m):
    for f, n in ((stat.S_ISREG, 'file'), (stat.S_ISDIR, 'dir'), (stat.S_ISLNK, 'symlink'), (stat.S_ISFIFO, 'fifo'),
                 (stat.S_ISSOCK, 'socket'), (stat.S_ISCHR, 'chardev'), (stat.S_ISBLK, 'blockdev')):
        if f(m): return n
def err(e): return {'type': 'error', 'error': errno.errorcode.get(e.errno, str(e.errno))}
stack = ['']
while stack:
    rel = stack.pop()
    full = os.path.join(root, rel) if rel else root
    key = rel or '.'
    try:
        st = os.lstat(full)
    except OSError as e:
        out[key] = err(e); continue
    e = {'type': kind(st.st_mode), 'mode': stat.S_IMODE(st.st_mode), 'uid': st.st_uid, 'gid': st.st_gid,
         'size': st.st_size, 'mtimeNs': str(st.st_mtime_ns), 'ctimeNs': str(st.st_ctime_ns), 'ino': str(st.st_ino),
         'nlink': st.st_nlink, 'xattrs': {}}
    if e['type'] in ('chardev', 'blockdev'): e['rdev'] = '%d:%d' % (os.major(st.st_rdev), os.minor(st.st_rdev))
    try:
        for n in sorted(os.listxattr(full, follow_symlinks=False)):
            e['xattrs'][n] = os.getxattr(full, n, follow_symlinks=False).hex()
    except OSError as x:
        e['xattrError'] = errno.errorcode.get(x.errno, str(x.errno))
    if e['type'] == 'file' and (hash_all or key in want):
        h = hashlib.sha256()
        try:
            with open(full, 'rb', buffering=0) as f:
                while True:
                    b = f.read(1 << 22)
                    if not b: break
                    h.update(b)
            e['sha256'] = h.hexdigest()
        except OSError as x:
            e['sha256'] = 'read error ' + errno.errorcode.get(x.errno, str(x.errno))
    out[key] = e
    if e['type'] == 'dir':
        try:
            for n in os.listdir(full): stack.append(os.path.join(rel, n) if rel else n)
        except OSError as x:
            out[key] = err(x)
print(json.dumps(out))
`;

/** Every entry below `root` ('.' is the root), hashing the regular files in `hash` (or all). */
export function inspect(root: string, hash: Iterable<string> | 'all' = []): Map<string, Entry> {
  const req = { root, hash: hash === 'all' ? [] : [...hash], hashAll: hash === 'all' };
  return new Map(Object.entries(python<Record<string, Entry>>(INSPECT, req)));
}

/** xattrs without the overlay-private ones (the kernel adds trusted.overlay.* to uppers it mounts). */
export function publicXattrs(x: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(x).filter(([n]) => !n.startsWith('trusted.overlay.') && !n.startsWith('user.overlay.')));
}

export interface LowerFile {
  rel: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: Record<string, string>;
  /** sha256 of the content as generated */
  sha256: string;
  /** sha256 state of the content, not finalized: copy() it to extend */
  hash: crypto.Hash;
  /** st_ino in the lower layer */
  ino: string;
}

export interface LowerDir {
  rel: string;
  mode: number;
  uid: number;
  gid: number;
  xattrs: Record<string, string>;
}

export interface BigLower {
  root: string;
  files: LowerFile[];
  dirs: LowerDir[];
}

const hex = (s: string): string => Buffer.from(s).toString('hex');

/**
 * A lower layer of `sizesMiB.length` files of random data (no holes), spread over nested
 * directories with their own modes, owners and xattrs; every file has an owner, a mode (some
 * setuid), a nanosecond mtime and a user.* xattr, so that an incomplete copy is visible.
 */
export function buildBigLower(root: string, sizesMiB: readonly number[]): BigLower {
  const dirs: LowerDir[] = [
    { rel: 'd1', mode: 0o750, uid: 1234, gid: 2345, xattrs: { 'user.dir': hex('d1') } },
    { rel: 'd1/d2', mode: 0o711, uid: 4321, gid: 5432, xattrs: { 'user.dir': hex('d1/d2') } },
    { rel: 'd3', mode: 0o2775, uid: 0, gid: 2345, xattrs: {} },
  ];
  const places = ['', 'd1', 'd1/d2', 'd3'];
  const modes = [0o640, 0o755, 0o4755, 0o600];
  const owners: [number, number][] = [[1234, 2345], [0, 0], [1000, 1000], [4321, 100]];
  fs.mkdirSync(root, { recursive: true });
  for (const d of dirs) fs.mkdirSync(path.join(root, d.rel), { recursive: true });
  const files: LowerFile[] = [];
  const ops: (string | number)[][] = [];
  const chunk = Buffer.allocUnsafe(8 << 20);
  sizesMiB.forEach((mib, i) => {
    const rel = path.join(places[i % places.length]!, `f${String(i).padStart(2, '0')}`);
    const abs = path.join(root, rel);
    const hash = crypto.createHash('sha256');
    const fd = fs.openSync(abs, 'w');
    try {
      for (let left = mib << 20; left > 0; ) {
        const n = Math.min(left, chunk.length);
        crypto.randomFillSync(chunk, 0, n);
        fs.writeSync(fd, chunk, 0, n);
        hash.update(chunk.subarray(0, n));
        left -= n;
      }
    } finally {
      fs.closeSync(fd);
    }
    const [uid, gid] = owners[i % owners.length]!;
    const mode = modes[i % modes.length]!;
    const mtimeNs = 1_600_000_000_000_000_000n + BigInt(i) * 1_000_000_007n + 123_456_789n;
    const xattrs = { 'user.crash': hex(rel) };
    ops.push(['lchown', abs, uid, gid], ['chmod', abs, mode], ['setxattr', abs, 'user.crash', xattrs['user.crash']]);
    ops.push(['utime', abs, mtimeNs.toString(), mtimeNs.toString()]);
    files.push({ rel, size: mib << 20, mode, uid, gid, mtimeNs, xattrs, sha256: hash.copy().digest('hex'), hash, ino: '' });
  });
  for (const d of [...dirs].reverse()) {
    const abs = path.join(root, d.rel);
    ops.push(['lchown', abs, d.uid, d.gid], ['chmod', abs, d.mode]);
    for (const [n, v] of Object.entries(d.xattrs)) ops.push(['setxattr', abs, n, v]);
    ops.push(['utime', abs, '1500000000000000000', '1500000000000000000']);
  }
  python<boolean>(OPS, ops);
  for (const f of files) f.ino = String(fs.lstatSync(path.join(root, f.rel), { bigint: true }).ino);
  return { root, files, dirs };
}
