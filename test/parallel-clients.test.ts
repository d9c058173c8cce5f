// Several clients at once: four processes (root twice, and two unprivileged users with their own
// groups and umasks) run seeded random operations on one strata mount at the same time (access ACLs
// and FIFOs among them; every open non-blocking), over the same few names, holding descriptors
// across renames, unlinks and copy-ups (files of 6 MiB are copied up in steps between other
// requests, so changes meet copies in progress). What they do races, so no step can be compared
// with a kernel run; what can: whatever order the daemon served them in, the layers it leaves must
// be a valid overlay of that state. The kernel then mounts the
// same layers and must show exactly the tree strata showed before its unmount: types, modes,
// owners, sizes, contents, link counts, times (files' atime too), xattrs, symlink targets, and the
// same st_ino and d_ino for every name; and so must strata mounting them again. No client may meet
// an error that only a broken daemon gives (ENOSYS, ENOTCONN, EBADF through a descriptor opened for
// that access; EIO or ESTALE from a read or a listing), and no copy in progress may be left in the
// work directory.
//
// STRATA_PARALLEL_SEEDS=1,2 (default) picks the seeds; each runs with the default options,
// metacopy=on and redirect_dir=on.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runWithPipes } from './helpers/exec.js';
import { kernelOverlay, strataMount, strataUnmount, unmountQuietly } from './helpers/mounts.js';
import { PYTHON } from './helpers/python.js';
import { snapshot, type Snapshot } from './helpers/snapshot.js';
import { compareTrees, inodeProblems } from './helpers/compare.js';
import { tempDir } from './helpers/tmp.js';

const WORKERS = 4;
const OPS = 500;

// Builds three lower layers from a seed: directories (some writable by everyone, some sticky),
// files of every size class (6 MiB ones copied up asynchronously), setuid files, symlinks,
// hard links and user xattrs, over a small name space so that the layers overlap.
const LAYERS = String.raw`
import os, random, sys
seed, lowers = int(sys.argv[1]), sys.argv[2:]
r = random.Random(seed)
NAMES = ['a', 'b', 'c', 'd', 'e', 'f']
def rpath():
    return '/'.join(r.choice(NAMES) for _ in range(r.randint(1, 3)))
for i, l in enumerate(lowers):
    os.makedirs(l, exist_ok=True)
    os.chmod(l, 0o777)
    for _ in range(60):
        p = os.path.join(l, rpath())
        try:
            os.makedirs(os.path.dirname(p), mode=0o777, exist_ok=True)
            k = r.random()
            if k < 0.25:
                os.makedirs(p, exist_ok=True)
                os.chmod(p, r.choice([0o777, 0o1777, 0o755, 0o2775]))
            elif k < 0.32:
                os.symlink(r.choice(['a', '../b', 'c/d', '/x']), p)
            elif k < 0.37:
                os.link(os.path.join(l, rpath()), p)
            else:
                with open(p, 'wb') as f:
                    f.write(r.randbytes(r.choice([0, 9, 4096, 70000, 300000, 6 << 20])))
                os.chmod(p, r.choice([0o644, 0o666, 0o600, 0o755, 0o4755, 0o2755]))
                os.chown(p, r.choice([0, 1001, 1003]), r.choice([0, 1001, 100]))
                if r.random() < 0.3:
                    os.setxattr(p, 'user.k', b'layer %d' % i)
        except OSError:
            pass
`;

// One client: argv mnt seed k ops broken-errnos. Prints the errors it met, by name, and the first few
// operations that met one of the broken ones.
const CLIENT = String.raw`
import ctypes, errno, json, os, random, subprocess, sys
mnt, seed, k, nops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
USERS = [None, (1001, 1001, [1001, 100], 0o077), None, (1003, 100, [100], 0o002)]
if USERS[k]:
    uid, gid, groups, umask = USERS[k]
    os.setgroups(groups); os.setgid(gid); os.setuid(uid); os.umask(umask)
libc = ctypes.CDLL(None, use_errno=True)
def renameat2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
r = random.Random(seed * 1000 + k)
NAMES = ['a', 'b', 'c', 'd', 'e', 'f']
def rpath():
    return os.path.join(mnt, '/'.join(r.choice(NAMES) for _ in range(r.randint(1, 3))))
fds = []  # [fd, readable, writable]
errors = {}
odd = []  # the first few ops that met one of BROKEN
BROKEN = sys.argv[5].split(',')
OPS = ['write', 'append', 'truncate', 'unlink', 'rmdir', 'mkdir', 'rename', 'noreplace', 'exchange', 'chmod',
       'chown', 'link', 'symlink', 'setxattr', 'removexattr', 'open', 'open', 'fdwrite', 'fdread', 'fdtruncate',
       'fdchmod', 'fdsync', 'close', 'listdir', 'read', 'utime', 'rmtree', 'mkfifo', 'acl']
for _ in range(nops):
    op, p, q = r.choice(OPS), rpath(), rpath()
    try:
        if op == 'write':
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
            try: os.write(fd, r.randbytes(r.choice([1, 100, 70000])))
            finally: os.close(fd)
        elif op == 'append':
            fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            try: os.write(fd, b'appended')
            finally: os.close(fd)
        elif op == 'truncate': os.truncate(p, r.choice([0, 5, 100000]))
        elif op == 'unlink': os.unlink(p)
        elif op == 'rmdir': os.rmdir(p)
        elif op == 'mkdir': os.mkdir(p, r.choice([0o755, 0o777, 0o1777]))
        elif op == 'rename': os.rename(p, q)
        elif op == 'noreplace': renameat2(p, q, 1)
        elif op == 'exchange': renameat2(p, q, 2)
        elif op == 'chmod': os.chmod(p, r.choice([0o644, 0o600, 0o777, 0o2755, 0o4711]))
        elif op == 'chown': os.chown(p, r.choice([0, 1001, 1003, -1]), r.choice([0, 100, 1001, -1]), follow_symlinks=False)
        elif op == 'link': os.link(p, q)
        elif op == 'symlink': os.symlink(r.choice(['a', '../b', 'c/d']), p)
        elif op == 'setxattr': os.setxattr(p, 'user.k', r.randbytes(4), follow_symlinks=False)
        elif op == 'removexattr': os.removexattr(p, 'user.k', follow_symlinks=False)
        elif op == 'open':
            flags = r.choice([os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_CREAT, os.O_RDONLY | os.O_DIRECTORY]) | os.O_NONBLOCK
            acc = flags & 3
            fds.append([os.open(p, flags, 0o640), acc != os.O_WRONLY and not flags & os.O_DIRECTORY, acc != os.O_RDONLY])
        elif op == 'close':
            if fds: os.close(fds.pop(r.randrange(len(fds)))[0])
        elif op.startswith('fd'):
            fitting = [f for f in fds if (f[1] if op == 'fdread' else f[2] if op in ('fdwrite', 'fdtruncate') else True)]
            if fitting:
                fd = r.choice(fitting)[0]
                if op == 'fdwrite': os.write(fd, b'through a descriptor')
                elif op == 'fdread': os.pread(fd, 200, r.choice([0, 4096, 6 << 20]))
                elif op == 'fdtruncate': os.ftruncate(fd, r.choice([0, 7, 90000]))
                elif op == 'fdchmod': os.fchmod(fd, r.choice([0o600, 0o644, 0o777]))
                elif op == 'fdsync': os.fsync(fd)
        elif op == 'listdir': os.listdir(p)
        elif op == 'mkfifo': os.mkfifo(p, 0o640)
        elif op == 'acl':
            # (an access ACL: the kernel checks it, and it sets the group bits of the mode)
            if subprocess.run(['setfacl', '-m', 'u:%d:rw,g:100:r' % r.choice([1001, 1003]), p], stderr=subprocess.DEVNULL).returncode: raise OSError(errno.EPERM, 'setfacl')
        elif op == 'read':
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            try: os.read(fd, 1 << 24)
            finally: os.close(fd)
        elif op == 'utime': os.utime(p, ns=(r.randrange(1 << 40), r.randrange(1 << 40)), follow_symlinks=False)
        elif op == 'rmtree' and r.random() < 0.15:
            subprocess.run(['rm', '-rf', p], stderr=subprocess.DEVNULL)
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        errors[name] = errors.get(name, 0) + 1
        if (name in BROKEN or (name in ('EIO', 'ESTALE') and op in ('read', 'listdir', 'fdread'))) and len(odd) < 5:
            odd.append([name, op, p[len(mnt):], q[len(mnt):]])
for f in fds: os.close(f[0])
print(json.dumps({'errors': errors, 'odd': odd}))
`;

/**
 * Errors a client meets only when the daemon is broken; and EIO or ESTALE from a read or a listing.
 * (A change can meet them legitimately in a race, as on the kernel: a copy-up of a directory whose
 * parent another client removed meanwhile is EIO, a rename of a name kept for a removed directory ESTALE.)
 */
const BROKEN = ['ENOSYS', 'ENOTCONN', 'EBADF', 'EFAULT'];

const seeds = (process.env.STRATA_PARALLEL_SEEDS ?? '1,2').split(',').map(Number);

/** What the work directory holds but the whiteout it may share (a device): a copy left behind. */
function filesIn(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).filter((e) => !e.isCharacterDevice()).map((e) => e.name);
}

/**
 * st_atime of every regular file below `root`. (Directories are left out: a listing the kernel
 * serves from its cache times nothing, where the kernel's overlay may time it by relatime when the
 * atime and ctime fell in one clock tick. Symlinks too: a link(2) to one moves its ctime, which the
 * kernel's overlay does not see until it reads the inode again (its next follow moves no atime, as
 * strata's, which keeps serving the cached target), where the kernel mounting the layers afresh does.)
 */
function atimes(root: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(root, rel))) {
      const p = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(root, p), { bigint: true });
      if (st.isFile()) out.set(p, st.atimeNs);
      if (st.isDirectory()) walk(p);
    }
  };
  walk('');
  return out;
}

/** Paths whose value (an atime, an st_ino) differs between two maps. */
function mapDiffs(a: Map<string, bigint>, b: Map<string, bigint>): string[] {
  return [...new Set([...a.keys(), ...b.keys()])].filter((p) => a.get(p) !== b.get(p)).map((p) => `${p}: ${a.get(p)} and ${b.get(p)}`);
}

async function runClients(t: ExecutionContext, mnt: string, seed: number): Promise<void> {
  const results = await Promise.all(Array.from({ length: WORKERS }, (_, k) =>
    runWithPipes(PYTHON, ['-c', CLIENT, mnt, String(seed), String(k), String(OPS), BROKEN.join(',')], { timeoutMs: 240_000 })));
  results.forEach((r, k) => {
    t.is(r.status, 0, `client ${k}: ${r.stderr}`);
    const { errors, odd } = JSON.parse(r.stdout) as { errors: Record<string, number>; odd: string[][] };
    t.deepEqual(odd, [], `client ${k} met ${JSON.stringify(errors)}`);
  });
}

for (const seed of seeds) {
  for (const options of [[], ['metacopy=on'], ['redirect_dir=on']]) {
    const title = `seed ${seed}${options.length ? ` (${options.join(',')})` : ''}`;
    test.serial(`${WORKERS} clients at once, then the kernel mounts the layers strata left: ${title}`, async (t) => {
      const dir = tempDir(t, 'par');
      fs.chmodSync(dir, 0o755); // (the unprivileged clients walk through it to the mount)
      const lowers = ['l0', 'l1', 'l2'].map((n) => path.join(dir, n));
      const upper = path.join(dir, 'upper');
      const work = path.join(dir, 'work');
      fs.mkdirSync(upper, 0o777);
      fs.chmodSync(upper, 0o777); // (the merged root: everyone may make names there)
      fs.mkdirSync(work);
      const made = run(PYTHON, ['-c', LAYERS, String(seed), ...lowers]);
      t.is(made.status, 0, made.stderr);
      const mnt = strataMount(t, { lowers, upper, work, options });
      await runClients(t, mnt, seed);
      // (the second look: a first listing may still remove impure marks no longer needed, which moves
      // those directories' ctime, as the kernel's does at its first listing)
      snapshot(mnt);
      const seen: Snapshot = snapshot(mnt);
      const seenAtimes = atimes(mnt);
      const upperSeen = snapshot(upper);
      strataUnmount(mnt);
      t.deepEqual(filesIn(path.join(work, 'work')), [], 'copies left in the work directory');
      const kmnt = kernelOverlay(t, { lowers, upper, work, options });
      const kernel = snapshot(kmnt);
      // (reads of a file whose data is still below, metacopy, leave its atime alone: README)
      const metacopy = (p: string): boolean => Object.keys(upperSeen.nodes.get(p)?.xattrs ?? {}).some((x) => x.endsWith('overlay.metacopy'));
      t.deepEqual(mapDiffs(seenAtimes, atimes(kmnt)).filter((d) => !metacopy(d.split(':')[0]!)), [], 'atime: strata before its unmount vs the kernel');
      compareTrees(t, seen, kernel, { label: `strata before its unmount vs the kernel on the same layers (${title})` });
      t.deepEqual(mapDiffs(seen.inodes, kernel.inodes), [], 'st_ino: strata before its unmount vs the kernel');
      t.deepEqual(inodeProblems(seen), [], 'strata: d_ino and st_ino');
      // strata mounting the same layers again (its metadata cache kept) shows the kernel's view too.
      unmountQuietly(kmnt);
      const again = snapshot(strataMount(t, { lowers, upper, work, options }));
      compareTrees(t, again, kernel, { label: `strata mounting the layers again vs the kernel (${title})` });
      t.deepEqual(mapDiffs(again.inodes, kernel.inodes), [], 'st_ino: strata mounting the layers again vs the kernel');
      t.true(seen.nodes.size >= 5, `only ${seen.nodes.size} entries left: the clients removed nearly everything`);
    });
  }
}
