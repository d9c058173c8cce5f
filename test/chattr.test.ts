// chattr / lsattr through the mount (FS_IOC_GETFLAGS/SETFLAGS, FS_IOC_FSGETXATTR/FSSETXATTR):
// setting a flag on a lower file copies it up; immutable and append-only then hold for every
// operation through the mount, on files and on directories, for root as for other users; the
// flags are stored as the kernel stores them (overlay.protattr for immutable and append-only),
// so the kernel reading strata's upper sees them too. Every step runs on both; outputs must match.
import test from 'ava';
import type { LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { runShell, shellBoth, type ShellStep, type User } from './helpers/shell-pair.js';

const USER: User = { uid: 3000, gid: 3000, groups: [3000] };

const LAYER: LayerSpec = [
  { t: 'file', p: 'imm', data: 'immutable\n', mode: 0o666 },
  { t: 'file', p: 'app', data: 'append\n', mode: 0o666 },
  { t: 'file', p: 'plain', data: 'plain\n', mode: 0o666 },
  { t: 'file', p: 'flags', data: 'flags\n', mode: 0o644 },
  { t: 'dir', p: 'idir', mode: 0o777 },
  { t: 'file', p: 'idir/in', data: 'in\n', mode: 0o666 },
  { t: 'dir', p: 'adir', mode: 0o777 },
  { t: 'file', p: 'adir/in', data: 'in\n', mode: 0o666 },
];

/** Runs each command, printing its exit status (errors differ only by the errno text). */
const each = (...cmds: string[]): string => cmds.map((c) => `{ ${c}; } 2>&1 | sed 's/^[^:]*: //'; echo "[\${PIPESTATUS[0]}]"`).join('; ');
const LS = 'lsattr -d';

test.serial('chattr +i / +a: the flags show, copy up, and hold for every operation', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LAYER]);
  const steps: ShellStep[] = [
    { sh: `${LS} imm app plain idir` },
    { sh: 'chattr +i imm && chattr +a app && chattr +i idir && chattr +a adir && chattr +dA flags' },
    { sh: `${LS} imm app plain idir adir flags` },
    // immutable file: nothing changes it, root included. (A user's link(2) is left out: the kernel
    // refuses it in may_linkat before asking the filesystem, strata's directory check comes first.)
    ...[undefined, USER].map((as) => ({
      as,
      sh: each('echo x >> imm', 'echo x > imm', 'truncate -s 0 imm', 'chmod 600 imm', 'touch imm', 'touch -d @1 imm',
        'setfattr -n user.x -v 1 imm', 'rm -f imm', 'mv imm imm2', ...(as ? [] : ['ln imm imm.link']), 'cat imm', 'fallocate -n -l 1 imm'),
    })),
    { sh: each('chown 1:1 imm', 'setfacl -m u:3000:r imm') },
    // append-only file: appends only
    ...[undefined, USER].map((as) => ({
      as,
      sh: each('echo more >> app', 'echo x > app', 'truncate -s 0 app', 'touch app', 'touch -d @1 app',
        'setfattr -n user.x -v 1 app', 'rm -f app', 'mv app app2', ...(as ? [] : ['ln app app.link']), 'fallocate -p -l 1 app', 'cat app'),
    })),
    { sh: each('chmod 600 app') },
    // immutable directory: no new or removed entries, the files in it still change
    ...[undefined, USER].map((as) => ({
      as,
      sh: each('touch idir/new', 'mkdir idir/d', 'rm -f idir/in', 'mv idir/in idir/in2', 'mv plain idir/', 'ln -s x idir/l',
        'echo more >> idir/in', 'cat idir/in', 'ls idir'),
    })),
    // append-only directory: new entries yes, removing or renaming no
    { sh: each('touch adir/new', 'mkdir adir/d', 'rm -f adir/in', 'mv adir/in adir/in2', 'echo more >> adir/in', 'ls adir') },
    { as: USER, sh: each('chattr -i imm', 'chattr +i plain', `${LS} imm`) },
    // lifting the flags makes everything possible again
    { sh: 'chattr -i imm idir && chattr -a app adir && chattr -dA flags' },
    { sh: each('echo x >> imm', 'rm -f app', 'touch idir/new', 'rm adir/in', `${LS} imm idir adir flags`) },
  ];
  const k = shellBoth(c, pair, steps);
  c.ok(k[3]!.includes('Operation not permitted'), `kernel: an immutable file is refused (${k[3]})`);
  finishPair(c, pair);
  c.done();
});

test.serial('FS_IOC_FSGETXATTR / FSSETXATTR: the flags and the project ID as the upper filesystem takes them', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LAYER]);
  // xfs_io is not installed everywhere: python's fcntl.ioctl speaks the struct itself, one open
  // per ioctl (as chattr and lsattr do).
  const fsx = (rel: string, set?: [number, number]): string =>
    `/usr/bin/python3 -c 'import fcntl,os,struct,sys
def io(req, b):
    fd=os.open(sys.argv[1], os.O_RDONLY)
    try: fcntl.ioctl(fd, req, b)
    finally: os.close(fd)
b=bytearray(28); io(0x801c581f, b)
x=list(struct.unpack("5I8x", b))
if len(sys.argv)>2:
    x[0]=int(sys.argv[2]); x[3]=int(sys.argv[3])
    try: io(0x401c5820, bytearray(struct.pack("5I8x", *x)))
    except OSError as e: print("set:", os.strerror(e.errno))
    b=bytearray(28); io(0x801c581f, b)
print("xflags=%#x projid=%d" % struct.unpack("5I8x", b)[0:4:3])' ${rel}${set ? ` ${set[0]} ${set[1]}` : ''}`;
  shellBoth(c, pair, [
    { sh: fsx('plain') },
    { sh: fsx('plain', [0x8, 0]) }, // FS_XFLAG_IMMUTABLE
    { sh: `${each('echo x >> plain')}; ${LS} plain` },
    { sh: fsx('plain', [0x10, 0]) }, // append instead
    { sh: fsx('flags', [0x40, 0]) }, // noatime
    { sh: fsx('flags', [0, 42]) }, // a project ID: as the upper filesystem allows it
    { sh: fsx('plain', [0, 0]) },
  ]);
  finishPair(c, pair);
  c.done();
});

test.serial('immutable and append-only are stored as the kernel stores them (overlay.protattr), and read back from an upper', (t) => {
  const c = new Checks(t);
  // An upper the kernel wrote earlier: its protattr is honoured at once.
  const upper: LayerSpec = [
    { t: 'file', p: 'kimm', data: 'k\n', mode: 0o666, xattrs: { 'trusted.overlay.protattr': 'i' } },
    { t: 'file', p: 'kapp', data: 'k\n', mode: 0o666, xattrs: { 'trusted.overlay.protattr': 'a' } },
  ];
  const pair = setupPair(t, [LAYER], { upper });
  shellBoth(c, pair, [
    { sh: `${LS} kimm kapp; ${each('echo x >> kimm', 'echo x >> kapp', 'rm -f kapp', 'cat kapp')}` },
    { sh: 'chattr +i imm && chattr +a app && chattr +ai plain' },
  ]);
  // The uppers themselves: the xattr, and no real immutable/append flag (the daemon must still link there).
  for (const side of [pair.kernel, pair.strata]) {
    const onDisk = runShell({ ...side, mnt: side.upper }, `for f in imm app plain; do getfattr --only-values -n trusted.overlay.protattr $f; echo; done; ${LS} imm app plain`);
    c.eq(onDisk, 'i\na\nai\n--------------e------- imm\n--------------e------- app\n--------------e------- plain\n', `${side.name}: the upper files`);
  }
  finishPair(c, pair);
  c.done();
});
