// chattr / lsattr through the mount (FS_IOC_GETFLAGS/SETFLAGS, FS_IOC_FSGETXATTR/FSSETXATTR):
// setting a flag on a lower file copies it up; immutable and append-only then hold for every
// operation through the mount, on files and on directories, for root as for other users; the
// flags are stored as the kernel stores them (overlay.protattr for immutable and append-only),
// so the kernel reading strata's upper sees them too. Flags that lower files carry on their own
// filesystem (chattr on the lower before mounting) show, hold and are copied up as on the kernel.
// Every step runs on both; outputs must match.
import test, { type ExecutionContext } from 'ava';
import path from 'node:path';
import { run } from './helpers/exec.js';
import { buildLayer, type LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair, type LowerSource } from './helpers/ops-pair.js';
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

/** Lower layers whose files carry chattr flags on the lower filesystem itself (top first). */
const FLAGGED: LayerSpec[] = [
  [
    ...['imm', 'app', 'both', 'plain', 'noat', 'nodump', 'sync', 'imm2', 'pimm'].map((p) => ({ t: 'file' as const, p, data: `${p}\n`, mode: 0o666 })),
    { t: 'file', p: 'ro644', data: 'ro\n', mode: 0o644 },
    { t: 'dir', p: 'idir', mode: 0o777 },
    { t: 'file', p: 'idir/in', data: 'in\n', mode: 0o666 },
    { t: 'dir', p: 'adir', mode: 0o777 },
    { t: 'file', p: 'adir/in', data: 'in\n', mode: 0o666 },
    { t: 'dir', p: 'ndir', mode: 0o777 },
    { t: 'dir', p: 'sub', mode: 0o777 },
    { t: 'file', p: 'sub/simm', data: 's\n', mode: 0o666 },
    { t: 'dir', p: 'mtop', mode: 0o777 },
    { t: 'dir', p: 'mbottom', mode: 0o777 },
    // a directory anyone may change: removing and renaming are refused by the flags alone
    { t: 'dir', p: 'pub', mode: 0o777 },
    { t: 'file', p: 'pub/imm', data: 'i\n', mode: 0o666 },
    { t: 'file', p: 'pub/app', data: 'a\n', mode: 0o666 },
  ],
  [
    { t: 'dir', p: 'mtop', mode: 0o777 },
    { t: 'file', p: 'mtop/below', data: 'b\n', mode: 0o666 },
    { t: 'dir', p: 'mbottom', mode: 0o777 },
  ],
];
/** chattr flags per layer (index as in FLAGGED): path -> flags. */
const LOWER_FLAGS: Record<string, string>[] = [
  {
    imm: 'i', app: 'a', both: 'ia', noat: 'A', nodump: 'd', sync: 'S', imm2: 'i', pimm: 'iA', ro644: 'i',
    idir: 'i', adir: 'a', ndir: 'A', 'sub/simm': 'i', mtop: 'i', 'pub/imm': 'i', 'pub/app': 'a',
  },
  { mbottom: 'i' },
];

/**
 * Builds a layer and sets chattr flags on its objects; the immutable and append-only flags are
 * lifted again when the test ends, whatever happens (else nothing could remove the files).
 */
function flaggedLower(t: ExecutionContext, spec: LayerSpec, flags: Record<string, string>): LowerSource {
  return (dir, layerIndex) => {
    buildLayer(dir, spec, layerIndex);
    const paths = Object.keys(flags).map((p) => path.join(dir, p));
    t.teardown(() => {
      run('chattr', ['-i', '-a', '--', ...paths]);
    });
    for (const [p, f] of Object.entries(flags)) {
      const r = run('chattr', [`+${f}`, '--', path.join(dir, p)]);
      if (r.status !== 0) throw new Error(`chattr +${f} ${p}: ${r.stderr.trim()}`);
    }
  };
}

test.serial('flags set on lower files by the lower filesystem: shown, enforced, carried over by copy-up', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, FLAGGED.map((spec, i) => flaggedLower(t, spec, LOWER_FLAGS[i]!)));
  const lsAll = `${LS} imm app both plain noat nodump sync pimm ro644 idir adir ndir sub sub/simm mtop mbottom`;
  // A user's link(2) of an immutable file and a user's write to a file or directory its mode does
  // not let them write are left out: the kernel refuses those in may_linkat / inode_permission
  // (EPERM) before asking the filesystem, the FUSE kernel answers EACCES from the mode first (README).
  const steps: ShellStep[] = [
    { sh: lsAll },
    ...[USER, undefined].map((as) => ({
      as,
      sh: each('echo x >> imm', 'echo x > imm', 'truncate -s 0 imm', 'chmod 600 imm', 'touch imm', 'touch -d @1 imm',
        'setfattr -n user.x -v 1 imm', 'setfattr -x user.x imm', 'rm -f imm', 'mv imm imm.2', ...(as ? [] : ['ln imm imm.link', 'chown 1:1 imm']),
        'cat imm', 'fallocate -n -l 1 imm',
        'echo x > app', 'truncate -s 0 app', 'chmod 600 app', 'touch -d @1 app', 'setfattr -n user.x -v 1 app', 'rm -f app',
        'mv app app.2', ...(as ? [] : ['ln app app.link']), 'fallocate -p -l 1 app',
        'echo x >> both', 'touch both', 'rm -f both',
        'touch idir/new', 'mkdir idir/d', 'rm -f idir/in', 'mv idir/in idir/in2', 'ln -s x idir/l', 'mv plain idir/',
        'touch idir', 'chmod 700 idir', 'mv idir idir.2', 'rmdir adir', 'mv adir adir.2',
        'rm -f adir/in', 'mv adir/in adir/in2', 'echo x >> sub/simm', 'rm sub/simm', 'touch mtop/new', 'rm -f mtop/below', 'ls mtop',
        'rm -f pub/imm', 'mv pub/imm pub/x', 'rm -f pub/app', 'mv pub/app pub/y', 'echo x >> pub/imm', 'echo x >> pub/app', 'ls pub'),
    })),
    { as: USER, sh: each('chattr -i imm', 'chattr +i plain', 'chattr -a app', `${LS} imm app plain`) },
    { sh: each('echo x >> ro644', 'cat ro644') },
    // what is allowed: appending, touching to now, and changes inside the directories that copy them up
    ...[USER, undefined].map((as) => ({
      as,
      sh: each('echo more >> app', 'touch app', 'cat app', 'echo more >> idir/in', 'cat idir/in', 'ls idir',
        'touch adir/new', 'mkdir -p adir/d', 'echo more >> adir/in', 'ls adir', 'touch mbottom/new', 'touch ndir/new'),
    })),
    // copy-up of noatime, nodump and sync files: which flags the copy keeps
    { sh: each('for f in noat nodump sync; do echo x >> $f; done', `${LS} noat nodump sync`) },
    // chattr on a flagged lower file copies it up with its flags, then changes them
    { sh: each('chattr +d both', `${LS} both`, 'echo y >> both', 'chattr -i imm', `${LS} imm`, 'echo y >> imm', 'cat imm',
      'chattr -a adir', 'rm adir/in', 'chattr -ai both', 'rm both', 'chattr +i sync', `${LS} sync`, 'echo z >> sync',
      'chattr -i sub/simm', 'rm sub/simm', 'chattr -i idir', 'touch idir/x', 'chattr -i mtop', 'rm mtop/below',
      'chattr +d pimm', `${LS} pimm`, 'chattr -i pimm', `${LS} pimm`) },
    { sh: lsAll.replace(' sub/simm', '').replace(' both', '') },
  ];
  const k = shellBoth(c, pair, steps);
  c.ok(k[1]!.includes('Operation not permitted'), `kernel: an immutable lower file is refused (${k[1]})`);
  c.ok(k[0]!.includes('----ia--------e------- both'), `kernel: lsattr shows the lower flags (${k[0]})`);
  // The uppers: protattr written by the copy-ups, the flags of the upper inodes.
  const onDisk = (side: typeof pair.kernel): string => runShell({ ...side, mnt: side.upper },
    `for f in $(find . -mindepth 1 | sort); do printf '%s %s ' "$f" "$(getfattr --only-values -n trusted.overlay.protattr "$f" 2>/dev/null)"; ` +
    `[ -f "$f" ] || [ -d "$f" ] && lsattr -d "$f" | cut -d' ' -f1 || echo; done`);
  const ku = onDisk(pair.kernel);
  c.eq(onDisk(pair.strata), ku, 'the uppers: overlay.protattr and inode flags');
  c.ok(/\.\/app a /.test(ku) && /\.\/noat +-------A/.test(ku), `kernel: the copies keep the flags (${ku})`);
  finishPair(c, pair);
  c.done();
});
