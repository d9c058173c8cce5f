// The write path, measured against the kernel: every scenario runs the same steps on a kernel
// overlay and on strata over identical copies of the same lower layers, compares each step's
// result (value or errno), then the merged trees, the upper dirs (kernel format), the lowers
// (untouched), and finally mounts strata's upper with the kernel's overlayfs.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import type { LayerSpec } from './helpers/ops-layers.js';
import { run } from './helpers/exec.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, runBoth, setupPair, type LowerSource, type Pair, type PairOptions } from './helpers/ops-pair.js';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, type Op, type Result } from './helpers/ops-runner.js';
import * as N from '../src/native/index.js';

const CAP = '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=';

/** Top lower layer. */
const TOP: LayerSpec = [
  { t: 'dir', p: 'dm' },
  { t: 'file', p: 'dm/b', data: 'b from top\n' },
  { t: 'file', p: 'dm/c', data: 'c from top\n' },
  { t: 'file', p: 'shadow', data: 'top shadow\n' },
  { t: 'dir', p: 'wdir', mode: 0o751, uid: 1234, gid: 2345 },
  { t: 'file', p: 'wdir/w', data: 'w\n' },
  { t: 'whiteout', p: 'gone' },
  { t: 'dir', p: 'odir', opaque: true },
  { t: 'file', p: 'odir/new', data: 'new\n' },
];

/** Bottom lower layer. */
const BOTTOM: LayerSpec = [
  { t: 'file', p: 'f', data: 'lower f\n' },
  { t: 'file', p: 'ro', data: 'root only\n', mode: 0o644 },
  { t: 'file', p: 'suid', data: '#!/bin/true\n', mode: 0o4755, uid: 1234, gid: 2345 },
  { t: 'file', p: 'sgid', data: '#!/bin/true\n', mode: 0o2755, uid: 1234, gid: 2345 },
  { t: 'dir', p: 'sgdir', mode: 0o2775, gid: 2345 },
  { t: 'file', p: 'sgdir/x', data: 'x\n', gid: 2345 },
  { t: 'dir', p: 'sticky', mode: 0o1777 },
  { t: 'file', p: 'sticky/mine', data: 'mine\n', uid: 1000, gid: 1000, mode: 0o644 },
  { t: 'file', p: 'sticky/other', data: 'other\n', uid: 1234, gid: 2345, mode: 0o666 },
  { t: 'file', p: 'owned', data: 'owned\n', mode: 0o640, uid: 1234, gid: 2345 },
  { t: 'file', p: 'cap', data: 'cap\n', mode: 0o755, xattrs: { 'security.capability': CAP, 'user.foo': 'bar', 'trusted.t': 'tv' } },
  { t: 'symlink', p: 'sym', target: 'f', uid: 1234, gid: 2345 },
  { t: 'fifo', p: 'fifo', mode: 0o644 },
  { t: 'file', p: 'hl1', data: 'shared\n' },
  { t: 'link', p: 'hl2', to: 'hl1' },
  { t: 'dir', p: 'd', mode: 0o750, uid: 1234, gid: 2345, xattrs: { 'user.dirx': 'dx' } },
  { t: 'dir', p: 'd/sub', mode: 0o700, uid: 1234, gid: 2345 },
  { t: 'file', p: 'd/sub/deep', data: 'deep\n', uid: 1234, gid: 2345 },
  { t: 'file', p: 'd/sub/deep2', data: 'deep2\n' },
  { t: 'dir', p: 'dm' },
  { t: 'file', p: 'dm/a', data: 'a bottom\n' },
  { t: 'file', p: 'dm/b', data: 'b bottom\n' },
  { t: 'file', p: 'shadow', data: 'bottom shadow\n' },
  { t: 'file', p: 'gone', data: 'gone\n' },
  { t: 'dir', p: 'odir' },
  { t: 'file', p: 'odir/old', data: 'old\n' },
  { t: 'dir', p: 'full' },
  { t: 'file', p: 'full/x', data: 'x\n' },
  { t: 'file', p: 'full/y', data: 'y\n' },
  { t: 'dir', p: 'ld' },
  { t: 'file', p: 'ld/x', data: 'x\n' },
  { t: 'dir', p: 'rodir', mode: 0o755 },
  { t: 'dir', p: 't1777', mode: 0o1777 },
];

const LAYERS = [TOP, BOTTOM];

interface Scenario {
  layers?: readonly LowerSource[];
  pair?: PairOptions;
  steps: Op[];
  /** Assertions on the kernel's results and on the pair before the common comparisons. */
  check?: (c: Checks, pair: Pair, kernel: Result[]) => void;
  exclude?: string[];
}

/** Serial: a scenario's mounts and temp dirs go away (teardown) before the next one starts. */
function scenario(title: string, sc: Scenario): void {
  test.serial(title, (t) => {
    const c = new Checks(t);
    const pair = setupPair(t, sc.layers ?? LAYERS, sc.pair);
    const klog = runBoth(c, pair, sc.steps);
    sc.check?.(c, pair, klog);
    finishPair(c, pair, { exclude: sc.exclude });
    c.done();
  });
}

/** lstat in both uppers (undefined when absent). */
function inUppers(pair: Pair, rel: string): { kernel?: fs.Stats; strata?: fs.Stats } {
  const st = (p: string): fs.Stats | undefined => fs.lstatSync(p, { throwIfNoEntry: false });
  return { kernel: st(path.join(pair.kernel.upper, rel)), strata: st(path.join(pair.strata.upper, rel)) };
}

/** Asserts that `rel` was (or was not) copied up, on both sides. */
function assertCopiedUp(c: Checks, pair: Pair, rel: string, expected = true): void {
  const u = inUppers(pair, rel);
  c.eq(u.kernel !== undefined, expected, `kernel: ${rel} ${expected ? 'not ' : ''}in the upper`);
  c.eq(u.strata !== undefined, expected, `strata: ${rel} ${expected ? 'not ' : ''}in the upper`);
}

const ok = 'ok';

// ---- copy-up triggers -------------------------------------------------------------------------

const triggers: Array<[string, string, Op[]]> = [
  ['open for write', 'f', [['open', 'f', 'O_WRONLY']]],
  ['write', 'f', [['write', 'f', 3, 'XYZ'], ['read', 'f']]],
  ['O_TRUNC open without a write', 'f', [['open', 'f', 'O_WRONLY|O_TRUNC'], ['read', 'f']]],
  ['O_RDONLY|O_TRUNC open', 'f', [['open', 'f', 'O_RDONLY|O_TRUNC'], ['read', 'f']]],
  ['truncate', 'f', [['truncate', 'f', 3], ['read', 'f']]],
  ['chmod', 'f', [['chmod', 'f', 0o600]]],
  ['chown', 'owned', [['lchown', 'owned', 1000, 1000], ['stat', 'owned']]],
  ['utimes with nanoseconds', 'f', [['utimens', 'f', '1234567890123456789', '1111111111222222222'], ['stat', 'f', { atime: true }]]],
  ['setxattr user.*', 'f', [['setxattr', 'f', 'user.new', 'v'], ['getxattr', 'f', 'user.new'], ['listxattr', 'f']]],
  ['removexattr', 'cap', [['removexattr', 'cap', 'user.foo'], ['listxattr', 'cap'], ['getxattr', 'cap', 'user.foo']]],
  ['link (the source)', 'f', [['link', 'f', 'f.link'], ['stat', 'f.link']]],
  ['rename', 'f', [['rename', 'f', 'f.moved'], ['stat', 'f.moved'], ['read', 'f.moved']]],
];

for (const [name, target, ops] of triggers) {
  scenario(`copy-up trigger: ${name}`, {
    steps: [['stat', target, { atime: true }], ...ops, ['stat', target, { atime: true }], ['stat', '.']],
    check: (c, pair) => {
      // the object itself, or for rename/link its new name, lives in the upper now
      const upperName = name === 'rename' ? 'f.moved' : target;
      assertCopiedUp(c, pair, upperName);
    },
  });
}

// truncate(2) asks the upper filesystem for the size alone, as the kernel's overlay does: whether the
// times move is that filesystem's call. tmpfs keeps them when a file without data stays at its size and
// moves them otherwise; ext4 moves them whenever the file does not shrink. (strata used ftruncate, which
// always moves them.)
for (const upperOnTmpfs of [true, false]) {
  scenario(`truncate to the same size or another, the upper on ${upperOnTmpfs ? 'a tmpfs' : 'the lowers\' filesystem'}: times as on the kernel`, {
    layers: [[{ t: 'file', p: 'empty', data: '' }, { t: 'file', p: 'five', data: '12345' }, { t: 'file', p: 'other', data: '12345' },
      { t: 'file', p: 'zeroed', data: '123' }, { t: 'file', p: 'fempty', data: '' }]],
    pair: { upperOnTmpfs },
    steps: [
      ['stat', 'empty'], ['truncate', 'empty', 0], ['stat', 'empty'],
      ['truncate', 'five', 5], ['stat', 'five'],
      ['truncate', 'other', 2], ['stat', 'other'],
      ['truncate', 'empty', 0], ['stat', 'empty'],
      ['truncate', 'zeroed', 0], ['stat', 'zeroed'], // (strata copies it up without its data)
    ],
    check: (c, pair, k) => {
      const mtime = (r: Result): unknown => (r as { mtime?: unknown }).mtime;
      if (upperOnTmpfs) c.eq(mtime(k[2]!), mtime(k[0]!), 'kernel on tmpfs: an empty file truncated to 0 keeps its mtime');
      c.eq(mtime(k[6]!), 'new', 'kernel: a truncate that changes the size moves mtime');
      c.eq(mtime(k[10]!), 'new', 'kernel: a file with data truncated to 0 moves mtime');
      // ftruncate moves the times even where the size stays (FUSE leaves that to the daemon)
      for (const side of [pair.kernel, pair.strata]) {
        const fd = fs.openSync(path.join(side.mnt, 'fempty'), 'r+');
        try {
          fs.ftruncateSync(fd, 0);
          c.eq(fs.fstatSync(fd).mtimeMs > Date.now() - 60_000, true, `${side.name}: ftruncate of an empty file to 0 moves mtime`);
        } finally {
          fs.closeSync(fd);
        }
      }
    },
  });
}

// With index, metacopy, redirect_dir or xino on, the kernel's overlay allows no offline changes to the
// layers and makes every directory it creates in a merged directory opaque; strata accepts the options
// (without their features) and writes the same upper.
for (const options of [['xino=on'], ['index=on'], ['xino=on', 'xino=off'], ['xino=auto'], ['redirect_dir=follow'], []]) {
  scenario(`mkdir in a merged directory and in the root, options [${options.join(',')}]: opaque or not as on the kernel`, {
    pair: { options },
    steps: [['mkdir', 'dm/new', 0o755], ['mkdir', 'top', 0o755], ['mkdir', 'd/sub/new2', 0o700], ['readdir', 'dm']],
    check: (c, pair) => {
      const opaque = (p: string): string => run('getfattr', ['-n', 'trusted.overlay.opaque', '--only-values', '--absolute-names', p]).stdout;
      const want = options.at(-1)?.endsWith('=on') ? 'y' : '';
      for (const side of [pair.kernel, pair.strata]) {
        c.eq(opaque(path.join(side.upper, 'dm/new')), want, `${side.name}: dm/new opaque`);
        c.eq(opaque(path.join(side.upper, 'top')), want, `${side.name}: a new directory in the root (merged too)`);
      }
    },
  });
}

scenario('no copy-up: read-only open, reads, removing a missing xattr, a FIFO opened for write with O_NONBLOCK', {
  steps: [
    ['open', 'f', 'O_RDONLY'],
    ['read', 'f'],
    ['read', 'd/sub/deep'],
    ['readdir', 'dm'],
    ['getxattr', 'cap', 'user.foo'],
    ['removexattr', 'f', 'user.none'],
    ['removexattr', 'd/sub/deep', 'user.none'],
    ['open', 'fifo', 'O_RDWR|O_NONBLOCK'],
    ['open', 'fifo', 'O_WRONLY|O_NONBLOCK'],
    ['open', 'fifo', 'O_RDONLY|O_NONBLOCK'],
    ['stat', 'fifo'],
    ['stat', 'f', { atime: true }],
  ],
  check: (c, pair, k) => {
    c.eq(k[8], { err: 'ENXIO' }, 'kernel: a FIFO without reader opened O_WRONLY|O_NONBLOCK');
    c.eq(k[5], { err: 'ENODATA' }, 'kernel: removing a missing xattr');
    c.eq(fs.readdirSync(pair.kernel.upper), [], 'kernel upper stays empty');
    c.eq(fs.readdirSync(pair.strata.upper), [], 'strata upper stays empty');
  },
});

// ---- what copy-up preserves ---------------------------------------------------------------------

scenario('copy-up preserves setuid/setgid/sticky, owner, ns times and xattrs incl. security.capability', {
  steps: [
    ['open', 'suid', 'O_WRONLY'],
    ['open', 'sgid', 'O_WRONLY'],
    ['open', 'owned', 'O_WRONLY'],
    ['open', 'cap', 'O_WRONLY'],
    ['open', 'sticky/mine', 'O_WRONLY'],
    ['stat', 'suid', { atime: true }],
    ['stat', 'sgid', { atime: true }],
    ['stat', 'owned', { atime: true }],
    ['stat', 'cap', { atime: true }],
    ['stat', 'sticky', { atime: true }],
    ['stat', 'sticky/mine', { atime: true }],
    ['getxattr', 'cap', 'security.capability'],
    ['getxattr', 'cap', 'trusted.t'],
    ['listxattr', 'cap'],
  ],
  check: (c, pair, k) => {
    c.like(k[5] as object, { perm: '4755', uid: 1234, gid: 2345 }, 'kernel keeps setuid and owner');
    c.ok((k[5] as { mtime: string }).mtime !== 'new', 'kernel keeps the mtime');
    for (const side of [pair.kernel, pair.strata]) {
      const st = fs.lstatSync(path.join(side.upper, 'suid'));
      c.eq(st.mode & 0o7777, 0o4755, `${side.name}: upper suid mode`);
      c.eq(fs.lstatSync(path.join(side.upper, 'sticky')).mode & 0o7777, 0o1777, `${side.name}: upper sticky dir mode`);
    }
  },
});

scenario('the mount root: chmod, chown, times and xattrs of "." (container runtimes chown the root)', {
  steps: [
    ['lchown', '.', 0, 0],
    ['chmod', '.', 0o750],
    ['lchown', '.', 1234, 2345],
    ['utimens', '.', '1600000000500000000', '1600000001250000000'],
    ['setxattr', '.', 'user.root', 'v'],
    ['getxattr', '.', 'user.root'],
    ['stat', '.'],
    ['removexattr', '.', 'user.root'],
    ['chmod', '.', 0o755],
    ['stat', '.'],
  ],
});

scenario('files created in a copied-up setgid dir take its group', {
  steps: [
    ['open', 'sgdir/x', 'O_WRONLY'],
    ['stat', 'sgdir'],
    ['create', 'sgdir/new', 0o644, 'n'],
    ['mkdir', 'sgdir/sub', 0o755],
    ['stat', 'sgdir/new'],
    ['stat', 'sgdir/sub'],
  ],
  check: (c, _p, k) => {
    c.like(k[4] as object, { gid: 2345 }, 'kernel: new file inherits the setgid group');
    c.like(k[5] as object, { gid: 2345, perm: '2755' }, 'kernel: new dir inherits group and setgid');
  },
});

scenario('copy-up of a symlink keeps owner, times and target', {
  steps: [
    ['stat', 'sym', { atime: true }],
    ['rename', 'sym', 'sym2'],
    ['stat', 'sym2', { atime: true }],
    ['readlink', 'sym2'],
    ['link', 'sym2', 'sym3'],
    ['stat', 'sym3', { atime: true }],
    ['read', 'sym3'],
  ],
  check: (c, pair, k) => {
    c.like(k[2] as object, { type: 'symlink', uid: 1234, gid: 2345 }, 'kernel keeps the symlink owner');
    const u = inUppers(pair, 'sym2');
    c.eq(u.strata?.uid, 1234, 'strata upper symlink owner');
  },
});

scenario('copy-up of a 100 MiB sparse file keeps the holes', {
  layers: [[{ t: 'file', p: 'big', data: 'D'.repeat(4096), sparse: { size: 100 << 20, at: 50 << 20 } }]],
  steps: [
    ['stat', 'big'],
    ['open', 'big', 'O_WRONLY'],
    ['stat', 'big'],
    ['pread', 'big', (50 << 20) - 2, 6],
    ['pread', 'big', 4096, 4],
  ],
  check: (c, pair) => {
    for (const side of [pair.kernel, pair.strata]) {
      const st = fs.statSync(path.join(side.upper, 'big'));
      c.eq(st.size, 100 << 20, `${side.name}: upper size`);
      c.ok(st.blocks * 512 < 8 << 20, `${side.name}: upper allocates ${st.blocks * 512} bytes for 4 KiB of data`);
    }
  },
});

scenario('copy-up creates parents with the lower metadata and restores parent times', {
  steps: [
    ['stat', 'd', { atime: true }],
    ['stat', 'd/sub', { atime: true }],
    ['write', 'd/sub/deep', 0, 'D'],
    ['stat', 'd', { atime: true }],
    ['stat', 'd/sub', { atime: true }],
    ['stat', 'd/sub/deep'],
    ['listxattr', 'd'],
    ['chmod', 'wdir/w', 0o600],
    ['stat', 'wdir', { atime: true }],
  ],
  check: (c, pair, k) => {
    const times = (r: Result): unknown => ({ ...(r as object), nlink: undefined }); // merged dirs read nlink 1
    c.eq(times(k[4]), times(k[1]), 'kernel: the parent looks unchanged after copy-up (but for nlink)');
    const st = inUppers(pair, 'd');
    c.eq(st.strata && st.strata.mode & 0o7777, 0o750, 'strata: upper parent mode');
    c.eq(st.strata?.uid, 1234, 'strata: upper parent owner');
  },
});

scenario('copy-up of a FIFO stays a FIFO (chmod, chown)', {
  steps: [
    ['chmod', 'fifo', 0o600],
    ['stat', 'fifo'],
    ['lchown', 'fifo', 1000, 1000],
    ['stat', 'fifo'],
    ['open', 'fifo', 'O_RDWR|O_NONBLOCK'],
  ],
  check: (c, pair) => {
    c.ok(inUppers(pair, 'fifo').strata?.isFIFO() === true, 'strata: the upper copy is a FIFO');
  },
});

scenario('hard links in a lower stay separate on copy-up', {
  steps: [
    ['readdir', '.'], // listed before the copy-up: readdir's d_ino must follow the new st_ino
    ['stat', 'hl1'],
    ['stat', 'hl2'],
    ['write', 'hl1', 0, 'NEW'],
    ['read', 'hl1'],
    ['read', 'hl2'],
    ['stat', 'hl1'],
    ['stat', 'hl2'],
    ['write', 'hl2', 0, 'TWO'],
    ['read', 'hl1'],
    ['read', 'hl2'],
    ['stat', 'hl2'],
  ],
  check: (c, _p, k) => {
    c.eq(k[5], 'shared\n', 'kernel: the other name keeps the old data');
  },
});

// ---- removing and creating -----------------------------------------------------------------------

scenario('unlink of lower, upper and merged names: whiteouts only where needed', {
  steps: [
    ['unlink', 'f'],
    ['create', 'new', 0o644, 'n'],
    ['unlink', 'new'],
    ['unlink', 'dm/a'],
    ['unlink', 'dm/b'],
    ['unlink', 'gone'],
    ['unlink', 'odir/old'],
    ['unlink', 'hl1'],
    ['stat', 'hl2'],
    ['unlink', 'd'],
    ['stat', 'f'],
    ['stat', 'new'],
    ['stat', 'dm/a'],
    ['stat', 'dm/b'],
    ['readdir', 'dm'],
    ['readdir', '.'],
  ],
  check: (c, pair) => {
    for (const side of [pair.kernel, pair.strata]) {
      const st = fs.lstatSync(path.join(side.upper, 'f'));
      c.ok(st.isCharacterDevice() && st.rdev === 0, `${side.name}: whiteout for a lower name`);
      c.ok(!fs.existsSync(path.join(side.upper, 'new')), `${side.name}: no whiteout for an upper-only name`);
    }
  },
});

scenario('rmdir decides ENOTEMPTY on the merged view', {
  steps: [
    ['rmdir', 'full'],
    ['unlink', 'full/x'],
    ['rmdir', 'full'],
    ['unlink', 'full/y'],
    ['readdir', 'full'],
    ['rmdir', 'full'],
    ['stat', 'full'],
    ['rmdir', 'odir'],
    ['unlink', 'odir/new'],
    ['rmdir', 'odir'],
    ['rmdir', 'dm'],
    ['mkdir', 'e', 0o755],
    ['rmdir', 'e'],
    ['rmdir', 'f'],
    ['rmdir', 'gone'],
    ['readdir', '.'],
  ],
  check: (c, _p, k) => {
    c.eq(k[0], { err: 'ENOTEMPTY' }, 'kernel: rmdir of a dir with lower entries');
    c.eq(k[5], ok, 'kernel: rmdir once the merged view is empty');
  },
});

scenario('rm -rf d; mkdir d gives an empty opaque dir and old names stay gone', {
  steps: [
    ['unlink', 'd/sub/deep'],
    ['unlink', 'd/sub/deep2'],
    ['rmdir', 'd/sub'],
    ['rmdir', 'd'],
    ['mkdir', 'd', 0o755],
    ['readdir', 'd'],
    ['stat', 'd/sub'],
    ['stat', 'd/sub/deep'],
    ['stat', 'd'],
    ['listxattr', 'd'],
    ['unlink', 'dm/a'],
    ['unlink', 'dm/b'],
    ['unlink', 'dm/c'],
    ['rmdir', 'dm'],
    ['mkdir', 'dm', 0o700],
    ['readdir', 'dm'],
    ['stat', 'dm/a'],
    ['stat', 'dm/b'],
    ['create', 'dm/a', 0o644, 'fresh'],
    ['read', 'dm/a'],
    ['readdir', 'dm'],
  ],
  check: (c, pair, k) => {
    c.eq(k[6], { err: 'ENOENT' }, 'kernel: stat d/sub after rm -rf d; mkdir d');
    for (const side of [pair.kernel, pair.strata]) {
      c.eq(fs.readdirSync(path.join(side.upper, 'd')), [], `${side.name}: upper d is empty`);
    }
  },
});

scenario('creating a file, symlink or dir over a whiteout', {
  steps: [
    ['unlink', 'f'],
    ['create', 'f', 0o600, 'new f'],
    ['read', 'f'],
    ['stat', 'f'],
    ['unlink', 'shadow'],
    ['symlink', 'somewhere', 'shadow'],
    ['readlink', 'shadow'],
    ['stat', 'shadow'],
    ['create', 'gone', 0o644, 'back'],
    ['read', 'gone'],
    ['unlink', 'ro'],
    ['mkdir', 'ro', 0o755],
    ['readdir', 'ro'],
    ['listxattr', 'ro'],
    ['rmdir', 'ld'],
    ['unlink', 'ld/x'],
    ['rmdir', 'ld'],
    ['mkfifo', 'ld', 0o644],
    ['stat', 'ld'],
  ],
});

// ---- rename -------------------------------------------------------------------------------------

scenario('rename of lower and merged dirs is EXDEV, of a pure-upper dir works', {
  steps: [
    ['rename', 'ld', 'ld2'],
    ['rename', 'dm', 'dm2'],
    ['rename', 'odir', 'odir2'],
    ['rename', 'd/sub', 'sub2'],
    ['chmod', 'wdir', 0o700],
    ['rename', 'wdir', 'wdir2'],
    ['rename', 'ld', 'full'],
    ['mkdir', 'pu', 0o755],
    ['create', 'pu/x', 0o644, 'x'],
    ['rename', 'pu', 'pu2'],
    ['readdir', 'pu2'],
    ['stat', 'pu'],
    ['rename', 'f', 'pu2/f'],
    ['rename', 'dm/a', 'pu2/a'],
    ['read', 'pu2/a'],
    ['readdir', 'dm'],
    ['mkdir', 'pu3', 0o755],
    ['rename', 'pu3', 'pu2/pu3'],
    ['rename', 'pu2', 'dm/pu2'],
    ['readdir', 'dm/pu2'],
    ['readdir', '.'],
  ],
  check: (c, _p, k) => {
    c.eq(k[0], { err: 'EXDEV' }, 'kernel: rename of a lower dir');
    c.eq(k[1], { err: 'EXDEV' }, 'kernel: rename of a merged dir');
    c.eq(k[9], ok, 'kernel: rename of a pure-upper dir');
  },
});

scenario('renaming an upper dir that hides lower content leaves a whiteout', {
  steps: [
    ['unlink', 'd/sub/deep'],
    ['unlink', 'd/sub/deep2'],
    ['rmdir', 'd/sub'],
    ['rmdir', 'd'],
    ['mkdir', 'd', 0o755],
    ['create', 'd/n', 0o644, 'n'],
    ['rename', 'd', 'dnew'],
    ['stat', 'd'],
    ['readdir', 'dnew'],
    ['unlink', 'f'],
    ['mkdir', 'f', 0o755],
    ['rename', 'f', 'f9'],
    ['stat', 'f'],
    ['read', 'f'],
    ['unlink', 'shadow'],
    ['mkdir', 'pu', 0o755],
    ['rename', 'pu', 'shadow'],
    ['readdir', 'shadow'],
    ['rename', 'shadow', 'pu'],
    ['stat', 'shadow'],
    ['readdir', '.'],
  ],
  check: (c, _p, k) => {
    c.eq(k[7], { err: 'ENOENT' }, 'kernel: the lower d does not come back');
    c.eq(k[12], { err: 'ENOENT' }, 'kernel: the lower f does not come back');
  },
});

scenario('rename over existing targets: files over lower files, dirs over emptied merged dirs', {
  steps: [
    ['rename', 'f', 'shadow'],
    ['read', 'shadow'],
    ['stat', 'f'],
    ['rename', 'dm/a', 'dm/b'],
    ['read', 'dm/b'],
    ['readdir', 'dm'],
    ['mkdir', 'pu', 0o755],
    ['create', 'pu/inside', 0o644, 'in'],
    ['rename', 'pu', 'full'],
    ['unlink', 'full/x'],
    ['rename', 'pu', 'full'],
    ['unlink', 'full/y'],
    ['readdir', 'full'],
    ['rename', 'pu', 'full'],
    ['readdir', 'full'],
    ['stat', 'full/x'],
    ['stat', 'full/y'],
    ['listxattr', 'full'],
    ['rename', 'ro', 'full'],
    ['rename', 'full', 'ro'],
    ['mkdir', 'e', 0o755],
    ['rename', 'e', 'ld'],
    ['rename', 'ld', 'e'],
    ['rename', 'e', 'full/inside'],
    ['rename', 'sym', 'hl1'],
    ['readlink', 'hl1'],
    ['stat', 'hl2'],
    ['readdir', '.'],
  ],
  check: (c, pair, k) => {
    c.eq(k[8], { err: 'ENOTEMPTY' }, 'kernel: rename onto a merged dir with lower entries');
    c.eq(k[13], ok, 'kernel: rename onto a merged dir whose lower entries are all whited out');
    c.eq(k[14], ['inside'], 'kernel: the renamed dir shows only its own entries');
    c.eq(k[15], { err: 'ENOENT' }, 'kernel: the lower entries stay hidden');
  },
});

scenario('a directory renamed onto one with entries: ENOTEMPTY, and the opaque mark the kernel leaves behind', {
  steps: [
    // targets without lower layers: the kernel marks the source opaque (merged new parent), then fails
    ['mkdir', 'a', 0o755],
    ['mkdir', 'b', 0o755],
    ['create', 'b/x', 0o644, 'x'],
    ['rename', 'a', 'b'],
    ['mkdir', 'b/sub', 0o755],
    ['mkdir', 'b/sub2', 0o755],
    ['create', 'b/sub2/y', 0o644, 'y'],
    ['rename', 'b/sub', 'b/sub2'],
    ['unlink', 'd/sub/deep'],
    ['unlink', 'd/sub/deep2'],
    ['rmdir', 'd/sub'],
    ['rmdir', 'd'],
    ['mkdir', 'd', 0o755],
    ['create', 'd/z', 0o644, 'z'],
    ['rename', 'b', 'd'],
    // a target with lower entries: refused before anything is marked
    ['mkdir', 'c', 0o755],
    ['rename', 'c', 'full'],
    ['listxattr', 'a'],
    ['listxattr', 'b/sub'],
    ['listxattr', 'c'],
  ],
  check: (c, pair, k) => {
    for (const i of [3, 7, 14, 16]) c.eq(k[i], { err: 'ENOTEMPTY' }, `kernel: step ${i} answers ENOTEMPTY`);
    // (the upper comparison leaves out markers on directories no lower layer has: compared here)
    const opaque = (upper: string, rel: string): string | undefined => N.lgetxattr(N.C.AT_FDCWD, path.join(upper, rel), 'trusted.overlay.opaque')?.toString();
    const marks = (upper: string): Array<string | undefined> => ['a', 'b', 'b/sub', 'c', 'd'].map((rel) => opaque(upper, rel));
    c.eq(marks(pair.kernel.upper), ['y', 'y', undefined, undefined, 'y'], 'kernel: which sources it marked');
    c.eq(marks(pair.strata.upper), marks(pair.kernel.upper), 'strata: the same opaque markers as the kernel');
  },
});

scenario('RENAME_NOREPLACE and RENAME_EXCHANGE', {
  steps: [
    ['rename', 'f', 'shadow', RENAME_NOREPLACE],
    ['rename', 'f', 'dm/b', RENAME_NOREPLACE],
    ['create', 'u1', 0o644, 'u1'],
    ['rename', 'u1', 'f', RENAME_NOREPLACE],
    ['rename', 'u1', 'gone', RENAME_NOREPLACE],
    ['read', 'gone'],
    ['rename', 'gone', 'fresh', RENAME_NOREPLACE],
    ['rename', 'f', 'shadow', RENAME_EXCHANGE],
    ['read', 'f'],
    ['read', 'shadow'],
    ['create', 'u2', 0o600, 'u2'],
    ['rename', 'u2', 'f', RENAME_EXCHANGE],
    ['read', 'u2'],
    ['read', 'f'],
    ['rename', 'u2', 'nonexistent', RENAME_EXCHANGE],
    ['rename', 'u2', 'odir/old', RENAME_EXCHANGE],
    ['rename', 'ld', 'f', RENAME_EXCHANGE],
    ['rename', 'f', 'ld', RENAME_EXCHANGE],
    ['mkdir', 'pu', 0o755],
    ['rename', 'pu', 'f', RENAME_EXCHANGE],
    ['stat', 'f'],
    ['listxattr', 'f'],
    ['readdir', 'f'],
    ['rename', 'f', 'dm/a', RENAME_EXCHANGE],
    ['readdir', 'dm/a'],
    ['rename', 'u2', 'fresh', RENAME_NOREPLACE | RENAME_EXCHANGE],
    ['readdir', '.'],
  ],
  check: (c, _p, k) => {
    c.eq(k[0], { err: 'EEXIST' }, 'kernel: RENAME_NOREPLACE onto a lower file');
    c.eq(k[4], ok, 'kernel: RENAME_NOREPLACE onto a whited-out name');
    c.eq(k[7], ok, 'kernel: RENAME_EXCHANGE of two lower files');
    c.eq(k[8], 'top shadow\n', 'kernel: exchanged contents');
  },
});

// ---- links, inode numbers, open files -------------------------------------------------------------

scenario('link of a lower file: st_nlink 2 at once on both names, same st_ino', {
  steps: [
    ['link', 'f', 'f2'],
    ['stat', 'f'],
    ['stat', 'f2'],
    ['link', 'hl1', 'hl3'],
    ['stat', 'hl1'],
    ['stat', 'hl2'],
    ['stat', 'hl3'],
    ['link', 'dm/a', 'dm/a2'],
    ['stat', 'dm/a2'],
    ['link', 'fifo', 'fifo2'],
    ['stat', 'fifo2'],
    ['link', 'sym', 'sym.l'],
    ['stat', 'sym.l'],
    ['link', 'd', 'd.l'],
    ['unlink', 'f'],
    ['stat', 'f2'],
  ],
  check: (c, _p, k) => {
    c.like(k[1] as object, { nlink: 2 }, 'kernel: nlink 2 at once');
    c.eq((k[1] as { ino: string }).ino, (k[2] as { ino: string }).ino, 'kernel: same st_ino');
  },
});

scenario('hard links made through the mount: unlink and rename act on the name given', {
  steps: [
    ['create', 'p', 0o644, 'data'],
    ['link', 'p', 'q'],
    ['rename', 'q', 'r'],
    ['readdir', '.'],
    ['stat', 'p'],
    ['stat', 'r'],
    ['unlink', 'r'],
    ['readdir', '.'],
    ['link', 'p', 's'],
    ['unlink', 'p'],
    ['readdir', '.'],
    ['read', 's'],
    ['link', 'f', 'dm/f2'],
    ['rename', 'dm/f2', 'ld/f3'],
    ['unlink', 'f'],
    ['read', 'ld/f3'],
    ['stat', 'ld/f3'],
    ['readdir', 'dm'],
    ['readdir', 'ld'],
  ],
  check: (c, _p, k) => {
    c.eq(k[3], ['d', 'dm', 'f', 'fifo', 'full', 'hl1', 'hl2', 'ld', 'odir', 'owned', 'p', 'r', 'ro', 'rodir', 'shadow', 'sgdir', 'sgid',
      'sticky', 'suid', 'sym', 't1777', 'wdir', 'cap'].sort(), 'kernel: rename q r leaves p and r');
  },
});

scenario('a copied-up object keeps its st_ino', {
  steps: [
    ['stat', 'f'],
    ['stat', 'd/sub/deep'],
    ['stat', 'wdir'],
    ['stat', 'dm'],
    ['stat', 'sym'],
    ['chmod', 'f', 0o600],
    ['write', 'd/sub/deep', 0, 'x'],
    ['chmod', 'wdir', 0o700],
    ['create', 'dm/new', 0o644, ''],
    ['lchown', 'sym', 1, 1],
    ['stat', 'f'],
    ['stat', 'd/sub/deep'],
    ['stat', 'wdir'],
    ['stat', 'dm'],
    ['stat', 'sym'],
  ],
  check: (c, _p, k) => {
    for (let i = 0; i < 5; i++) c.eq((k[i] as { ino: string }).ino, (k[i + 10] as { ino: string }).ino, `kernel: ino of step ${i}`);
  },
});

scenario('open-then-unlink: fstat nlink as on the kernel, data still readable', {
  steps: [
    ['create', 'u', 0o644, 'upper data'],
    ['openUnlink', 'u'],
    ['write', 'dm/a', 0, 'A'],
    ['openUnlink', 'dm/a'],
    ['readdir', 'dm'],
  ],
  check: (c, pair, k) => {
    c.eq(k[1], { nlink: 0, size: 10, data: 'upper data' }, 'kernel: upper file');
    // A file still in a lower layer: the kernel's fstat shows the lower inode's nlink (1, or 2 for a
    // lower hard link: the lower file itself is not removed), and so does strata.
    for (const [name, data, nlink] of [['f', 'lower f\n', 1], ['hl1', 'shared\n', 2]] as const) {
      const kr = pair.kernel.runner.run(['openUnlink', name]);
      const sr = pair.strata.runner.run(['openUnlink', name]);
      c.eq(kr, { nlink, size: data.length, data }, `kernel: open-unlinked lower ${name}`);
      c.eq(sr, kr, `strata: open-unlinked lower ${name}`);
    }
    c.eq(pair.kernel.runner.run(['stat', 'hl2']), pair.strata.runner.run(['stat', 'hl2']), 'hl2 after unlinking hl1');
  },
});

// ---- permissions ---------------------------------------------------------------------------------

const U: [number, number] = [1000, 1000];
scenario('a non-root user gets EACCES exactly where the kernel gives it', {
  steps: [
    ['as', ...U, ['write', 'ro', 0, 'x']],
    ['as', ...U, ['open', 'ro', 'O_RDONLY']],
    ['as', ...U, ['truncate', 'ro', 0]],
    ['as', ...U, ['chmod', 'ro', 0o777]],
    ['as', ...U, ['setxattr', 'ro', 'user.x', '1']],
    ['as', ...U, ['create', 'rodir/n', 0o644, 'x']],
    ['as', ...U, ['mkdir', 'rodir/n', 0o755]],
    ['as', ...U, ['unlink', 'f']],
    ['as', ...U, ['read', 'd/sub/deep']],
    ['as', ...U, ['stat', 'd/sub']],
    ['as', ...U, ['create', 't1777/mine', 0o644, 'mine']],
    ['as', ...U, ['mkdir', 't1777/md', 0o755]],
    ['as', ...U, ['create', 't1777/md/f', 0o600, 'f']],
    ['as', ...U, ['symlink', 'tgt', 't1777/sl']],
    ['as', ...U, ['mkfifo', 't1777/ff', 0o600]],
    ['as', ...U, ['rename', 't1777/mine', 't1777/mine2']],
    ['stat', 't1777/mine2'],
    ['stat', 't1777/md'],
    ['stat', 't1777/md/f'],
    ['stat', 't1777/sl'],
    ['as', ...U, ['write', 'sticky/mine', 0, 'M']],
    ['as', ...U, ['read', 'sticky/mine']],
    ['as', ...U, ['unlink', 'sticky/other']],
    ['as', ...U, ['rename', 'sticky/other', 'sticky/o2']],
    ['as', ...U, ['lchown', 'sticky/mine', 0, 0]],
    ['as', ...U, ['chmod', 'sticky/mine', 0o600]],
    ['as', ...U, ['unlink', 'sticky/mine']],
    ['as', 1234, 2345, ['write', 'owned', 0, 'O']],
    ['as', 1234, 2345, ['read', 'owned']],
    ['as', ...U, ['read', 'owned']],
    ['readdir', 'sticky'],
  ],
  check: (c, pair, k) => {
    c.eq(k[0], { err: 'EACCES' }, 'kernel: write to a root 0644 file');
    c.eq(k[5], { err: 'EACCES' }, 'kernel: create in a root 0755 dir');
    c.eq(k[10], ok, 'kernel: create in a 1777 dir');
    for (const side of [pair.kernel, pair.strata]) {
      const st = fs.lstatSync(path.join(side.upper, 't1777/mine2'), { throwIfNoEntry: false });
      c.eq(st?.uid, 1000, `${side.name}: the user's file is owned by the user in the upper`);
      c.eq(st?.gid, 1000, `${side.name}: ... and its group`);
    }
  },
});

// ---- durability, names -------------------------------------------------------------------------------

scenario('fsync reaches the upper file', {
  steps: [
    ['fsync', 'f', 'synced'],
    ['fsync', 'newfile', 'fresh'],
    ['read', 'f'],
  ],
  check: (c, pair) => {
    // read the uppers directly while both are still mounted
    c.eq(fs.readFileSync(path.join(pair.kernel.upper, 'f'), 'utf8'), 'syncedf\n', 'kernel upper after fsync');
    c.eq(fs.readFileSync(path.join(pair.strata.upper, 'f'), 'utf8'), 'syncedf\n', 'strata upper after fsync');
    c.eq(fs.readFileSync(path.join(pair.strata.upper, 'newfile'), 'utf8'), 'fresh', 'strata upper: new file after fsync');
  },
});

const N255 = 'n'.repeat(255);
const N256 = 'n'.repeat(256);
scenario('a 255-byte name is creatable, 256 bytes give ENAMETOOLONG', {
  steps: [
    ['create', N255, 0o644, 'long'],
    ['stat', N255],
    ['read', N255],
    ['create', N256, 0o644, 'x'],
    ['mkdir', N256, 0o755],
    ['stat', N256],
    ['unlink', N256],
    ['symlink', 'f', N256],
    ['link', 'f', N256],
    ['rename', 'f', N256],
    ['rename', N255, `dm/${N255}`],
    ['mkdir', `${N255.slice(1)}d`, 0o755],
    ['readdir', 'dm'],
  ],
  check: (c, _p, k) => {
    c.eq(k[0], ok, 'kernel: 255-byte name');
    c.eq(k[3], { err: 'ENAMETOOLONG' }, 'kernel: 256-byte name');
  },
});
