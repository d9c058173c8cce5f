// Read-only behaviour of strata, compared with the kernel's overlayfs mounting the same layers.
// Each comparison checks every entry (type, mode, owner, size, link count, device numbers,
// content hash, symlink text, xattrs, mtime in ns), every directory listing with d_type, the
// lookup of every name found in any layer, inode numbers, and that no layer was changed.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { diffSnapshots, sharedInodes } from './helpers/compare.js';
import { run, runOk, runWithPipes, sleep } from './helpers/exec.js';
import { bigDirectory, deepStack, randomLayers, rng } from './helpers/generators.js';
import { materializeLayers, toFormat, type Layer } from './helpers/layers.js';
import { kernelOverlay, strataMount, strataUnmount, underTest, unmountQuietly } from './helpers/mounts.js';
import { ociToKernel } from './helpers/oci.js';
import { compareWithKernel, lookup } from './helpers/oracle.js';
import { examplesDir } from './helpers/paths.js';
import { AT, SEEK, python } from './helpers/python.js';
import { dropMachineCaches, holdPageCacheLock } from './helpers/page-cache.js';
import { snapshot } from './helpers/snapshot.js';
import { tempDir, tmpfsDir } from './helpers/tmp.js';

const hex = (s: string | Buffer): string => Buffer.from(s).toString('hex');
type AtResult = string | string[] | { errno: string } | { mode: number; size: number; mtime_ns: string; uid: number };
/** Runs *at() operations relative to `root` (paths may exceed PATH_MAX from '/'). */
function at(root: string, ops: (string | number)[][]): AtResult[] {
  return python<AtResult[]>(AT, { root, ops });
}

// ---------------------------------------------------------------------------------------------
// Layers written by hand, one concern each.

/** Kernel-format layers exercising whiteouts, opaque directories and type changes. Top first. */
const KERNEL_FORMAT: Layer[] = [
  [
    { path: 'etc/removed', kind: 'whiteout' },
    { path: 'dirgone', kind: 'whiteout' },
    { path: 'opq', kind: 'opaque', mode: 0o750 },
    { path: 'opq/top-only', kind: 'file', content: 'top\n' },
    { path: 'notopq', kind: 'dir', xattrs: { 'trusted.overlay.opaque': 'x' } },
    { path: 'notopq/top', kind: 'file', content: 'top\n' },
    { path: 'nothing-below', kind: 'whiteout' },
    { path: 'replaced-dir', kind: 'file', content: 'was a directory below\n' },
    { path: 'replaced-file/inside', kind: 'file', content: 'was a file below\n' },
    { path: 'realdev', kind: 'chardev', rdev: [1, 3] },
    { path: 'dev-0-1', kind: 'chardev', rdev: [0, 1] },
    { path: 'merged/gone', kind: 'whiteout' },
    { path: 'merged/top', kind: 'file', content: 'top\n' },
    { path: 'merged', kind: 'dir', mode: 0o711, uid: 1000, gid: 1000 },
    { path: 'solo/y', kind: 'file', content: 'only layer with solo/\n' },
    { path: 'solo/x', kind: 'whiteout' },
    // an opaque directory over one below, holding a whiteout of a name below (the kernel lists it: a phantom)
    { path: 'opqwh', kind: 'opaque' },
    { path: 'opqwh/x', kind: 'whiteout' },
    { path: 'opqwh/keep', kind: 'file', content: 'keep\n' },
    { path: 'wh-over-wh', kind: 'file', content: 'back again\n' },
    { path: 'opq2/top', kind: 'file', content: 'top\n' },
    { path: 'shadowed', kind: 'file', content: 'top version\n', mode: 0o600 },
  ],
  [
    { path: 'opq/mid', kind: 'file', content: 'hidden by opaque above\n' },
    { path: 'opqwh/x', kind: 'file', content: 'hidden twice\n' },
    { path: 'dirgone/a', kind: 'file', content: 'a\n' },
    { path: 'merged/mid', kind: 'file', content: 'mid\n' },
    { path: 'merged/gone', kind: 'file', content: 'whited out above\n' },
    { path: 'notopq/mid', kind: 'file', content: 'mid\n' },
    { path: 'wh-over-wh', kind: 'whiteout' },
    { path: 'opq2', kind: 'opaque' },
    { path: 'opq2/mid', kind: 'file', content: 'mid\n' },
    { path: 'replaced-dir/sub/file', kind: 'file', content: 'x\n' },
    { path: 'shadowed', kind: 'file', content: 'middle version, longer\n' },
    // the kernel ignores an opaque marker on a layer's root: the layers below still show
    { path: '', kind: 'opaque' },
  ],
  [
    { path: 'etc/removed', kind: 'file', content: 'removed\n' },
    { path: 'etc/kept', kind: 'file', content: 'kept\n', mode: 0o640, uid: 0, gid: 42 },
    { path: 'dirgone/b', kind: 'file', content: 'b\n' },
    { path: 'opq/low', kind: 'file', content: 'low\n' },
    { path: 'notopq/low', kind: 'file', content: 'low\n' },
    { path: 'merged/low', kind: 'file', content: 'low\n' },
    { path: 'replaced-file', kind: 'file', content: 'a file\n' },
    { path: 'wh-over-wh', kind: 'file', content: 'bottom\n' },
    { path: 'opq2/low', kind: 'file', content: 'low\n' },
    { path: 'replaced-dir/lowfile', kind: 'file', content: 'low\n' },
    { path: 'shadowed', kind: 'file', content: 'bottom\n' },
  ],
];

/** OCI-only situations: a `.wh.` file next to the name it hides in its own layer, opaque markers with siblings. */
const OCI_ONLY: Layer[] = [
  [
    { path: 'samelayer', kind: 'ociWhiteout' },
    { path: 'samelayer', kind: 'file', content: 'the whiteout in my layer hides only what is below\n' },
    { path: 'samedir', kind: 'ociWhiteout' },
    { path: 'samedir/new', kind: 'file', content: 'new\n' },
    { path: 'oopq', kind: 'ociOpaque' },
    { path: 'oopq/keep', kind: 'file', content: 'sibling of the opaque marker\n' },
    { path: 'oopq/sub', kind: 'ociWhiteout' },
    { path: 'nested/deeper/gone', kind: 'ociWhiteout' },
    { path: 'nested/deeper/here', kind: 'file', content: 'here\n' },
    { path: 'lowdir', kind: 'ociWhiteout' },
  ],
  [
    { path: 'samelayer', kind: 'file', content: 'hidden\n' },
    { path: 'samedir/old', kind: 'file', content: 'hidden: samedir was whited out above\n' },
    { path: 'oopq/lower', kind: 'file', content: 'hidden by the opaque marker\n' },
    { path: 'oopq/sub/x', kind: 'file', content: 'x\n' },
    { path: 'nested/deeper/gone', kind: 'file', content: 'gone\n' },
    { path: 'nested/deeper/stays', kind: 'file', content: 'stays\n' },
    { path: 'lowdir/a/b', kind: 'file', content: 'b\n' },
    { path: '.wh.lowerself', kind: 'file', content: '' },
    { path: 'lowerself', kind: 'file', content: 'a .wh. file never hides its own layer\n' },
  ],
];

function compareLayers(t: ExecutionContext, layers: Layer[], extra: { strataArgs?: string[] } = {}): void {
  const root = tempDir(t);
  compareWithKernel(t, { lowers: materializeLayers(root, layers), ...extra });
}

function compareOciLayers(t: ExecutionContext, layers: Layer[]): void {
  const root = tempDir(t);
  const oci = materializeLayers(path.join(root, 'o'), layers);
  const kernel = ociToKernel(oci, path.join(root, 'k'));
  compareWithKernel(t, { lowers: oci, kernelLowers: kernel });
}

// ---------------------------------------------------------------------------------------------
// The oracle itself: OCI layers converted by ociToKernel must give the kernel the same view as
// the same layers written in kernel format. If this fails, the OCI comparisons mean nothing.

test('oracle: kernel overlay of ociToKernel(OCI layers) equals kernel overlay of kernel-format layers', (t) => {
  for (const [name, layers] of [
    ['hand-written', KERNEL_FORMAT],
    ['random seed 11', randomLayers(11)],
  ] as const) {
    const root = tempDir(t);
    const kdirs = materializeLayers(path.join(root, 'k'), layers);
    const converted = ociToKernel(materializeLayers(path.join(root, 'o'), toFormat(layers, 'oci')), path.join(root, 'c'));
    const a = snapshot(kernelOverlay(t, { lowers: converted }));
    const b = snapshot(kernelOverlay(t, { lowers: kdirs }));
    const diffs = diffSnapshots(a, b, { allowPhantoms: true, ignore: ['ctimeNs'] });
    t.deepEqual(diffs.slice(0, 20), [], `${name}: ${diffs.length} differences`);
    t.true(b.nodes.size > 10, `${name}: the kernel view has only ${b.nodes.size} entries`);
  }
});

// ---------------------------------------------------------------------------------------------

test('kernel-format whiteouts, opaque directories and type changes', (t) => {
  const { strata } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), KERNEL_FORMAT) });
  // The comparison above is the test; these pin down the rules in case both sides were wrong.
  t.deepEqual(strata.listings.get('opq'), ['top-only file']);
  t.deepEqual(strata.listings.get('notopq'), ['low file', 'mid file', 'top file']);
  t.deepEqual(strata.listings.get('solo'), ['y file'], 'a whiteout is never listed, even in a directory of one layer');
  t.deepEqual(strata.listings.get('opqwh'), ['keep file'], 'nor in an opaque directory (where the kernel lists it, and lookup finds nothing)');
  t.false(strata.nodes.has('etc/removed'));
  t.is(strata.nodes.get('realdev')?.rdev, '1:3');
});

test('OCI-format whiteouts and opaque directories', (t) => {
  compareOciLayers(t, toFormat(KERNEL_FORMAT, 'oci'));
});

test('OCI .wh. files hide only the layers below their own; opaque markers do not hide their siblings', (t) => {
  const root = tempDir(t);
  const oci = materializeLayers(path.join(root, 'o'), OCI_ONLY);
  const kernel = ociToKernel(oci, path.join(root, 'k'));
  const { strata } = compareWithKernel(t, { lowers: oci, kernelLowers: kernel });
  t.is(strata.nodes.get('samelayer')?.sha256, crypto.createHash('sha256').update('the whiteout in my layer hides only what is below\n').digest('hex'));
  t.deepEqual(strata.listings.get('samedir'), ['new file']);
  t.deepEqual(strata.listings.get('oopq'), ['keep file']);
  t.is(strata.nodes.get('lowerself')?.type, 'file');
  t.false([...strata.nodes.keys()].some((p) => path.basename(p).startsWith('.wh.')), 'no .wh. file is visible');
});

/**
 * The layers with `n` layers added below, holding every directory any of them names (with a file
 * of their own): each merged directory then has four or more lower layers, so its names come from
 * the lower index (lower_index.ts), which reads each layer's listing once instead of searching by name.
 */
function overFillers(layers: Layer[], n = 3): Layer[] {
  const dirs = new Set<string>(['']);
  for (const e of layers.flat()) {
    for (let p = path.posix.dirname(e.path); p !== '.' && p !== ''; p = path.posix.dirname(p)) dirs.add(p);
    if (e.kind === 'dir' || e.kind === 'opaque' || e.kind === 'ociOpaque') dirs.add(e.path);
  }
  const fillers: Layer[] = Array.from({ length: n }, (_, k) =>
    [...dirs].map((d) => ({ path: d === '' ? `filler${k}` : `${d}/filler${k}`, kind: 'file' as const, content: `filler ${k}\n` })));
  return [...layers, ...fillers];
}

test('the lower index (4+ lower layers per directory) applies the same rules: kernel format', (t) => {
  const { strata } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), overFillers(KERNEL_FORMAT)) });
  t.deepEqual(strata.listings.get('opq'), ['top-only file']);
  t.deepEqual(strata.listings.get('merged'), ['filler0 file', 'filler1 file', 'filler2 file', 'low file', 'mid file', 'top file']);
});

test('the lower index applies the same rules: OCI format', (t) => {
  compareOciLayers(t, overFillers(toFormat(KERNEL_FORMAT, 'oci')));
  const root = tempDir(t);
  const oci = materializeLayers(path.join(root, 'o'), overFillers(OCI_ONLY));
  const { strata } = compareWithKernel(t, { lowers: oci, kernelLowers: ociToKernel(oci, path.join(root, 'k')) });
  t.deepEqual(strata.listings.get('samedir'), ['new file']);
  t.deepEqual(strata.listings.get('nested/deeper'), ['filler0 file', 'filler1 file', 'filler2 file', 'here file', 'stays file'], 'gone is whited out');
});

test('symlinks are served as links, never followed inside the layers', (t) => {
  const longTarget = 'seg/'.repeat(1000) + 'end'; // 4003 bytes
  const layers: Layer[] = [
    [
      { path: 'passwd', kind: 'symlink', target: '/etc/passwd', uid: 1000, gid: 1000, mtime: 1_234_567_890n * 1_000_000_000n + 5n },
      { path: 'root', kind: 'symlink', target: '/' },
      { path: 'escape', kind: 'symlink', target: '../../../../../../etc/shadow' },
      { path: 'dangling', kind: 'symlink', target: 'does/not/exist' },
      { path: 'long', kind: 'symlink', target: longTarget },
      { path: 'spaces', kind: 'symlink', target: 'a b\tc' },
      { path: 'was-dir', kind: 'symlink', target: '/etc' },
      { path: 'etc-in-layer', kind: 'symlink', target: '/etc' },
      { path: 'sub/rel', kind: 'symlink', target: '../data/file' },
    ],
    [
      { path: 'was-dir/inside', kind: 'file', content: 'hidden behind a symlink in the layer above\n' },
      { path: 'data/file', kind: 'file', content: 'data\n' },
      { path: 'was-link', kind: 'symlink', target: '/etc' },
      { path: 'etc/passwd', kind: 'file', content: 'not the host passwd\n' },
    ],
    [{ path: 'was-link/x', kind: 'file', content: 'below a symlink: hidden\n' }],
  ];
  const { strata } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), layers) });
  t.is(strata.nodes.get('passwd')?.type, 'symlink');
  t.is(strata.nodes.get('passwd')?.target, '/etc/passwd');
  t.is(strata.nodes.get('passwd')?.size, String('/etc/passwd'.length));
  t.is(strata.nodes.get('long')?.target, longTarget);
  t.is(strata.nodes.get('was-dir')?.type, 'symlink');
  t.false(strata.nodes.has('was-dir/inside'));
});

test('names and symlink targets that are not UTF-8 (Latin-1 bytes, broken sequences)', (t) => {
  const layers: Layer[] = [
    [
      { path: 'names/caf\\xe9', kind: 'file', content: 'latin-1 e acute\n' },
      { path: 'names/\\xff\\xfe/inside', kind: 'file', content: 'in a directory named ff fe\n' },
      { path: 'names/utf8-é', kind: 'file', content: 'valid UTF-8\n' },
      { path: 'names/\\xc3', kind: 'symlink', target: 'target-\\xff\\x80' },
      { path: 'names/gone-\\xe9', kind: 'whiteout' },
      { path: 'names/dir-\\xe9', kind: 'opaque' },
      { path: 'names/dir-\\xe9/top', kind: 'file', content: '' },
      { path: `names/${'\\xe9'.repeat(255)}`, kind: 'file', content: '255 bytes of 0xe9\n' },
    ],
    [
      { path: 'names/gone-\\xe9', kind: 'file', content: 'whited out\n' },
      { path: 'names/dir-\\xe9/low', kind: 'file', content: 'hidden by opaque\n' },
      { path: 'names/low-\\x80\\x81', kind: 'file', content: 'low\n' },
    ],
  ];
  const { strata } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), layers) });
  t.deepEqual(strata.listings.get('names'), [
    'caf\\xe9 file',
    'dir-\\xe9 dir',
    'low-\\x80\\x81 file',
    '\\xc3 symlink',
    `${'\\xe9'.repeat(255)} file`,
    'utf8-é file',
    '\\xff\\xfe dir',
  ].sort());
  t.is(strata.nodes.get('names/\\xc3')?.target, 'target-\\xff\\x80');
  t.deepEqual(strata.listings.get('names/dir-\\xe9'), ['top file']);
});

test('hardlinks, FIFOs, sockets, devices, special modes and owners', (t) => {
  const layers: Layer[] = [
    [
      { path: 'links/one', kind: 'file', content: 'shared inode\n', mode: 0o640, uid: 1000, gid: 100 },
      { path: 'links/two', kind: 'hardlink', linkTo: 'links/one' },
      { path: 'links/three', kind: 'hardlink', linkTo: 'links/one' },
      { path: 'fifo', kind: 'fifo', mode: 0o620, uid: 12, gid: 34 },
      { path: 'sock', kind: 'socket' },
      { path: 'null', kind: 'chardev', rdev: [1, 3], mode: 0o666 },
      { path: 'bigdev', kind: 'chardev', rdev: [4095, 1048575] },
      { path: 'suid', kind: 'file', content: '#!/bin/sh\n', mode: 0o4755 },
      { path: 'sgid', kind: 'file', content: '', mode: 0o2711, gid: 50 },
      { path: 'sticky', kind: 'dir', mode: 0o1777 },
      { path: 'sgid-dir', kind: 'dir', mode: 0o2775, uid: 4294967294, gid: 65534 },
      { path: 'no-perm', kind: 'file', content: 'mode 000\n', mode: 0 },
      { path: 'fifo-link', kind: 'hardlink', linkTo: 'fifo' },
    ],
    [
      { path: 'half/b', kind: 'whiteout' },
      { path: 'lower-links/x', kind: 'file', content: 'x\n' },
      { path: 'lower-links/y', kind: 'hardlink', linkTo: 'lower-links/x' },
    ],
  ];
  // half/b is a hardlink of half/a in the bottom layer, whited out in the middle one
  layers.push([
    { path: 'half/a', kind: 'file', content: 'linked, the other name whited out above\n' },
    { path: 'half/b', kind: 'hardlink', linkTo: 'half/a' },
  ]);
  const { strata, kernel } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), layers) });
  t.is(strata.nodes.get('links/one')?.nlink, 3);
  t.is(strata.nodes.get('half/a')?.nlink, kernel.nodes.get('half/a')?.nlink);
  t.deepEqual(sharedInodes(strata), sharedInodes(kernel));
  t.true(sharedInodes(strata).some((g) => g.join() === 'links/one,links/three,links/two'), 'hardlinks of one layer share st_ino');
  t.is(strata.nodes.get('fifo')?.type, 'fifo');
  t.is(strata.nodes.get('sock')?.type, 'socket');
  t.is(strata.nodes.get('bigdev')?.rdev, '4095:1048575');
  t.is(strata.nodes.get('suid')?.mode, 0o4755);
});

test('xattrs: user.* and trusted.* shown, trusted.overlay.* hidden from list and get', (t) => {
  const big = Buffer.alloc(3000, 0xab);
  const layers: Layer[] = [
    [
      { path: 'f', kind: 'file', content: 'f\n', xattrs: { 'user.one': '1', 'user.empty': '', 'user.big': big, 'trusted.other': 't', 'trusted.overlay.private': 'p', 'trusted.overlay.origin': 'o' } },
      { path: 'd', kind: 'dir', xattrs: { 'user.dir': 'top', 'trusted.overlay.opaque': 'y' } },
      { path: 'd/in', kind: 'file', content: '' },
      { path: 'merged', kind: 'dir', xattrs: { 'user.from': 'top' } },
      { path: 'merged/top', kind: 'file', content: '' },
      { path: 'nox', kind: 'file', content: '' },
      { path: 'bin', kind: 'file', content: '', xattrs: { 'user.binary': Buffer.from([0, 1, 2, 255, 0]) } },
    ],
    [
      { path: 'merged', kind: 'dir', xattrs: { 'user.from': 'bottom', 'user.only-bottom': 'b' } },
      { path: 'merged/low', kind: 'file', content: '' },
      { path: 'f', kind: 'file', content: 'lower f\n', xattrs: { 'user.lower': 'l' } },
    ],
  ];
  const root = tempDir(t);
  const lowers = materializeLayers(root, layers);
  const { strata } = compareWithKernel(t, { lowers });
  t.deepEqual(Object.keys(strata.nodes.get('f')!.xattrs), ['trusted.other', 'user.big', 'user.empty', 'user.one']);
  t.deepEqual(strata.nodes.get('merged')!.xattrs, { 'user.from': hex('top') }, 'a merged directory has the xattrs of its top layer only');

  // getxattr of hidden and absent names, through both mounts
  const ops = [
    ['getxattr', hex('f'), 'trusted.overlay.private'],
    ['getxattr', hex('d'), 'trusted.overlay.opaque'],
    ['getxattr', hex('f'), 'user.absent'],
    ['getxattr', hex('f'), 'user.big'],
    ['getxattr', hex('bin'), 'user.binary'],
    ['listxattr', hex('nox')],
    ['listxattr', hex('d')],
  ];
  const k = at(kernelOverlay(t, { lowers }), ops);
  const s = at(strataMount(t, { lowers }), ops);
  t.deepEqual(s, k);
  t.deepEqual(k[0], { errno: 'ENODATA' });
});

test('a stack of 45 layers, with paths long enough that lowerdir= exceeds a page', (t) => {
  const names = Array.from({ length: 45 }, (_, i) => `layer-${String(i).padStart(2, '0')}-${'n'.repeat(100)}`);
  const lowers = materializeLayers(tempDir(t, 'L'), deepStack(45), names);
  t.true(lowers.join(':').length > 4096, 'the option string exceeds a page');
  const { strata } = compareWithKernel(t, { lowers });
  t.is(strata.listings.get('common')!.length, 45 - 10 + 1, 'common/ merges all 45 layers');
  t.is(strata.nodes.get('common/shared')?.mode, 0o644, 'common/shared comes from the top layer (44, even)');
  t.deepEqual(strata.listings.get('opq'), ['f40 file', 'g41 file', 'g42 file', 'g43 file', 'g44 file'], 'opq/ is opaque from layer 40 up');
});

test('a directory of 10k entries spread over four layers', (t) => {
  const { strata } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), bigDirectory()) });
  t.is(strata.listings.get('big')!.length, 10_050);
});

for (const seed of [1, 2, 3]) {
  test(`seeded random layers, kernel format, seed ${seed}`, (t) => {
    compareLayers(t, randomLayers(seed));
  });
}
for (const seed of [4, 5]) {
  test(`seeded random layers, OCI format, seed ${seed}`, (t) => {
    compareOciLayers(t, toFormat(randomLayers(seed), 'oci'));
  });
}

test('an upper directory is read like a layer: its whiteouts and opaque directories apply', (t) => {
  const root = tempDir(t);
  const [upper, ...lowers] = materializeLayers(root, [
    [
      { path: 'gone', kind: 'whiteout' },
      { path: 'opq', kind: 'opaque' },
      { path: 'opq/new', kind: 'file', content: 'new\n' },
      { path: 'merged/up', kind: 'file', content: 'up\n' },
      { path: 'changed', kind: 'file', content: 'copied up and changed\n', mode: 0o600 },
    ],
    [
      { path: 'gone', kind: 'file', content: 'gone\n' },
      { path: 'opq/old', kind: 'file', content: 'old\n' },
      { path: 'merged/low', kind: 'file', content: 'low\n' },
      { path: 'changed', kind: 'file', content: 'original\n' },
    ],
    [{ path: 'merged/lowest', kind: 'file', content: 'lowest\n' }],
  ]);
  compareWithKernel(t, { lowers, upper });
});

test('layer paths given as symlinks (podman l/ links) and relative to the working directory', (t) => {
  const root = tempDir(t);
  const dirs = materializeLayers(root, randomLayers(21, { layers: 3 }), ['diffA', 'diffB', 'diffC']);
  fs.mkdirSync(path.join(root, 'l'));
  const links = dirs.map((d, i) => {
    const l = path.join(root, 'l', `L${i}`);
    fs.symlinkSync(`../${path.basename(d)}`, l);
    return l;
  });
  compareWithKernel(t, { lowers: links, kernelLowers: dirs });
});

test('user.overlay.* markers (oracle: the kernel with userxattr)', (t) => {
  const layers: Layer[] = [
    [
      { path: 'opq', kind: 'dir', xattrs: { 'user.overlay.opaque': 'y' } },
      { path: 'opq/top', kind: 'file', content: '' },
      { path: 'f', kind: 'file', content: '', xattrs: { 'user.overlay.whatever': '1', 'user.shown': '1' } },
      { path: 'notopq', kind: 'dir', xattrs: { 'user.overlay.opaque': 'x' } },
      { path: 'gone', kind: 'whiteout' },
    ],
    [
      { path: 'opq/low', kind: 'file', content: '' },
      { path: 'notopq/low', kind: 'file', content: '' },
      { path: 'gone', kind: 'file', content: '' },
    ],
  ];
  // strata reads them on any mount (semantics.md, rule 4), the kernel with userxattr only; and strata with it.
  const lowers = materializeLayers(tempDir(t), layers);
  for (const strataArgs of [[], ['-o', 'userxattr']]) {
    const { strata } = compareWithKernel(t, { lowers, kernelOptions: ['userxattr'], strataArgs });
    t.deepEqual(strata.listings.get('opq'), ['top file']);
    t.deepEqual(Object.keys(strata.nodes.get('f')!.xattrs), ['user.shown']);
  }
});

test('trusted.overlay.* markers on a userxattr mount are plain attributes, as on the kernel', (t) => {
  const layers: Layer[] = [
    [
      { path: 'opq', kind: 'dir', xattrs: { 'trusted.overlay.opaque': 'y' } },
      { path: 'opq/top', kind: 'file', content: '' },
      { path: 'xw', kind: 'dir', xattrs: { 'trusted.overlay.opaque': 'x' } },
      { path: 'xw/hidden', kind: 'file', content: '', xattrs: { 'trusted.overlay.whiteout': '' } },
      { path: 'meta', kind: 'file', content: 'm', xattrs: { 'trusted.overlay.metacopy': '' } },
    ],
    [
      { path: 'opq/low', kind: 'file', content: '' },
      { path: 'xw/hidden', kind: 'file', content: 'below' },
    ],
  ];
  const { strata } = compareWithKernel(t, { lowers: materializeLayers(tempDir(t), layers), kernelOptions: ['userxattr'], strataArgs: ['-o', 'userxattr'] });
  t.deepEqual(strata.listings.get('opq'), ['low file', 'top file'], 'not opaque');
  t.deepEqual(Object.keys(strata.nodes.get('opq')!.xattrs), ['trusted.overlay.opaque'], 'shown as a plain trusted.* attribute to root');
  t.true(strata.nodes.has('meta'), 'no metacopy refusal');
});

test('the examples/ layers merge as examples/README.md describes', (t) => {
  const root = tempDir(t);
  const oci = ['patch', 'app', 'base'].map((l) => {
    runOk('cp', ['-a', '--', path.join(examplesDir, 'layers', l), path.join(root, l)]);
    return path.join(root, l);
  });
  const { strata } = compareWithKernel(t, { lowers: oci, kernelLowers: ociToKernel(oci, path.join(root, 'k')) });
  const files = [...strata.nodes].filter(([, i]) => i.type === 'file').map(([p]) => p).sort();
  t.deepEqual(files, [
    'bin/app',
    'bin/hello',
    'etc/app.conf',
    'etc/app.d/defaults.conf',
    'etc/hostname',
    'etc/motd',
    'etc/os-release',
    'usr/share/doc/app/README',
    'usr/share/doc/base/CHANGES',
    'usr/share/doc/base/README',
    'var/www/index.html',
  ]);
  const patched = fs.readFileSync(path.join(examplesDir, 'layers/patch/etc/app.conf'));
  t.is(strata.nodes.get('etc/app.conf')?.sha256, crypto.createHash('sha256').update(patched).digest('hex'), 'the patch layer wins');
});

// ---------------------------------------------------------------------------------------------
// Identity and listing

test('st_ino is unique, equals d_ino, and survives cache eviction and remounts', async (t) => {
  const root = tempDir(t);
  const lowers = materializeLayers(root, randomLayers(7));
  const inos = (mnt: string): Map<string, bigint> => snapshot(mnt, { noContent: true }).inodes;
  const results: Record<string, string[]> = {};
  for (const [name, mount] of [
    ['kernel', () => kernelOverlay(t, { lowers })],
    [underTest().name, () => strataMount(t, { lowers })],
  ] as const) {
    const mnt = mount();
    const first = inos(mnt);
    await dropMachineCaches(2);
    const evicted = inos(mnt);
    if (name === 'kernel') unmountQuietly(mnt);
    else strataUnmount(mnt);
    const again = inos(mount());
    const changed = (m: Map<string, bigint>): string[] => [...first].filter(([p, i]) => m.get(p) !== i).map(([p, i]) => `${p} ${i}→${m.get(p)}`);
    results[name] = [...changed(evicted).map((x) => `after drop_caches: ${x}`), ...changed(again).map((x) => `after remount: ${x}`)].slice(0, 10);
    t.true(first.size > 20);
  }
  t.deepEqual(results.kernel, [], 'the kernel oracle itself keeps st_ino');
  t.deepEqual(results[underTest().name], []);
  // uniqueness and d_ino == st_ino are checked in every comparison; once more on this tree:
  const s = snapshot(strataMount(t, { lowers }), { noContent: true });
  t.deepEqual(
    [...s.dinos].filter(([p, d]) => s.inodes.get(p) !== d).map(([p]) => p),
    [],
    'd_ino equals st_ino',
  );
  t.is(new Set(s.inodes.values()).size, s.inodes.size - sharedInodes(s).reduce((n, g) => n + g.length - 1, 0));
});

interface SeekResult {
  first: [number, string][];
  probes: [number, string[]][];
  again: [number, string][];
}

test('readdir offsets are stable: seekdir to a telldir position resumes there; rewinddir restarts', (t) => {
  const root = tempDir(t);
  const lowers = materializeLayers(root, bigDirectory());
  const dirs = ['big', '.'];
  for (const [name, mnt] of [
    ['kernel', kernelOverlay(t, { lowers })],
    [underTest().name, strataMount(t, { lowers })],
  ] as const) {
    for (const dir of dirs) {
      const listing = python<SeekResult>(SEEK, { indices: [], count: 0 }, [path.join(mnt, dir)]);
      const n = listing.first.length;
      const indices = [0, 1, 2, 100, 1000, Math.floor(n / 2), n - 6, n - 1].filter((i) => i >= 0 && i < n);
      const r = python<SeekResult>(SEEK, { indices, count: 5 }, [path.join(mnt, dir)]);
      const names = r.first.map(([, h]) => h);
      const wrong = r.probes.filter(([i, got]) => JSON.stringify(got) !== JSON.stringify(names.slice(i, i + 5)));
      t.deepEqual(
        wrong.map(([i, got]) => `${name} ${dir}: after seekdir to entry ${i}: ${got.map((h) => Buffer.from(h, 'hex').toString()).join(',')}`),
        [],
      );
      t.deepEqual(r.again.map(([, h]) => h), names, `${name} ${dir}: rewinddir gives the same listing again`);
      t.is(new Set(names).size, names.length, `${name} ${dir}: no name twice`);
      if (dir === 'big') t.is(names.length, 10_050 + 2, `${name}: big/ has 10050 entries plus . and ..`);
    }
  }
});

// ---------------------------------------------------------------------------------------------

test('statfs reports the top lower layer filesystem, or the upper one when there is an upper', async (t) => {
  const root = tempDir(t);
  const fast = tmpfsDir(t, root, 't');
  const [top] = materializeLayers(fast, [[{ path: 'a', kind: 'file', content: 'top on tmpfs\n' }]]);
  const [low] = materializeLayers(root, [[{ path: 'b', kind: 'file', content: 'bottom on ext4\n' }]], ['low']);
  const lowers = [top!, low!];
  // %s block size, %S fundamental block size, %b total blocks, %f free, %c inodes, %d free inodes, %l max name length
  const statfs = (p: string): string => runOk('stat', ['-f', '-c', '%s %S %b %f %c %d %l', p]).trim();
  const fsType = (p: string): string => runOk('stat', ['-f', '-c', '%t', p]).trim();
  const kmnt = kernelOverlay(t, { lowers });
  const smnt = strataMount(t, { lowers });
  t.is(statfs(kmnt), statfs(top!), 'the kernel oracle reports the top layer');
  t.not(statfs(low!), statfs(top!), 'the two layers are on filesystems that differ');
  t.is(statfs(smnt), statfs(top!));
  t.is(fsType(smnt), '65735546', 'f_type of a FUSE mount is FUSE_SUPER_MAGIC (the kernel sets it)');

  // with an upper directory (on a third filesystem), the upper's filesystem is reported
  const up = tmpfsDir(t, root, 'u', 32);
  fs.mkdirSync(path.join(up, 'upper'));
  fs.mkdirSync(path.join(up, 'ku'));
  for (const w of ['w', 'kw']) fs.mkdirSync(path.join(up, w));
  const kup = kernelOverlay(t, { lowers, upper: path.join(up, 'ku'), work: path.join(up, 'kw') });
  const sup = strataMount(t, { lowers, upper: path.join(up, 'upper'), work: path.join(up, 'w') });
  t.is(statfs(kup), statfs(up), 'the kernel oracle reports the upper');
  // The daemon writes its metadata cache to that filesystem (in the work directory) after the mount
  // is live: compare with readings of the upper taken just before and after that agree.
  let before = '';
  let seen = '';
  for (let i = 0; i < 50; i++) {
    before = statfs(up);
    seen = statfs(sup);
    if (statfs(up) === before) break;
    await sleep(100);
  }
  t.is(seen, before, 'strata with an upper reports the upper filesystem');
});

test('ENAMETOOLONG for 256-byte names; 255-byte names and 4095-byte paths work as in the kernel', (t) => {
  const root = tempDir(t);
  const n255 = 'a'.repeat(255);
  const n256 = 'a'.repeat(256);
  const lowers = materializeLayers(root, [
    [
      { path: n255, kind: 'file', content: 'a 255-byte name\n' },
      { path: 'sub/top', kind: 'file', content: '' },
      { path: `${'d'.repeat(250)}/${'d'.repeat(250)}/top`, kind: 'file', content: 'merges the first two levels\n' },
    ],
    [{ path: 'sub/low', kind: 'file', content: '' }],
  ]);
  // 16 directories of 250 bytes + a file of 79: a 4095-byte path below the mount root, in the bottom layer.
  const deepDir = Array.from({ length: 16 }, () => 'd'.repeat(250)).join('/');
  const deepFile = `${deepDir}/${'f'.repeat(4095 - deepDir.length - 1)}`;
  t.is(Buffer.byteLength(deepFile), 4095);
  t.deepEqual(at(lowers[1]!, [['mkdirs', hex(deepDir)], ['writefile', hex(deepFile), hex('at the bottom of a 4095-byte path\n')]]), ['ok', 'ok']);
  const ops = [
    ['lstat', hex(n256)],
    ['lstat', hex(`sub/${n256}`)],
    ['lstat', hex(`${n256}/x`)],
    ['open', hex(n256), fs.constants.O_RDONLY],
    ['getxattr', hex(n256), 'user.x'],
    ['read', hex(n255)],
    ['lstat', hex(deepFile)],
    ['read', hex(deepFile)],
    ['lstat', hex(deepFile + 'x')],
    ['lstat', hex(deepDir)],
  ];
  const k = at(kernelOverlay(t, { lowers }), ops);
  const s = at(strataMount(t, { lowers }), ops);
  t.deepEqual(k.slice(0, 5), Array(5).fill({ errno: 'ENAMETOOLONG' }), 'the kernel oracle says ENAMETOOLONG');
  t.is(k[5], hex('a 255-byte name\n'));
  t.is(k[7], hex('at the bottom of a 4095-byte path\n'));
  for (let i = 0; i < ops.length; i++) t.deepEqual(s[i], k[i], `${ops[i]![0]} #${i}`);
});

test('every kind of write on a lowerdir-only mount fails with EROFS, as in the kernel', (t) => {
  const root = tempDir(t);
  const lowers = materializeLayers(root, [
    [
      { path: 'file', kind: 'file', content: 'content\n' },
      { path: 'dir/inner', kind: 'file', content: '' },
      { path: 'empty', kind: 'dir' },
      { path: 'fifo', kind: 'fifo' },
    ],
    [{ path: 'dir/low', kind: 'file', content: '' }],
  ]);
  const before = lowers.map((l) => snapshot(l));
  const attempt = (mnt: string): Record<string, string> => {
    const p = (rel: string): string => path.join(mnt, rel);
    const node: Record<string, () => unknown> = {
      'create': () => fs.writeFileSync(p('new'), 'x'),
      'open O_WRONLY': () => fs.closeSync(fs.openSync(p('file'), 'r+')),
      'open O_WRONLY|O_TRUNC': () => fs.closeSync(fs.openSync(p('file'), fs.constants.O_WRONLY | fs.constants.O_TRUNC)),
      'open O_RDONLY|O_TRUNC': () => fs.closeSync(fs.openSync(p('file'), fs.constants.O_RDONLY | fs.constants.O_TRUNC)),
      'append': () => fs.appendFileSync(p('dir/low'), 'x'),
      'truncate': () => fs.truncateSync(p('file'), 1),
      'mkdir': () => fs.mkdirSync(p('newdir')),
      'rmdir': () => fs.rmdirSync(p('empty')),
      'unlink': () => fs.unlinkSync(p('dir/low')),
      'rename': () => fs.renameSync(p('file'), p('file2')),
      'rename dir': () => fs.renameSync(p('dir'), p('dir2')),
      'symlink': () => fs.symlinkSync('t', p('link')),
      'link': () => fs.linkSync(p('file'), p('hard')),
      'chmod': () => fs.chmodSync(p('file'), 0o600),
      'chown': () => fs.chownSync(p('file'), 1, 1),
      'utimes': () => fs.utimesSync(p('file'), 1, 1),
    };
    const out: Record<string, string> = {};
    for (const [name, f] of Object.entries(node)) {
      try {
        f();
        out[name] = 'succeeded';
      } catch (e) {
        out[name] = (e as NodeJS.ErrnoException).code ?? String(e);
      }
    }
    const py = at(mnt, [
      ['setxattr', hex('file'), 'user.x', hex('1')],
      ['removexattr', hex('file'), 'user.x'],
      ['mknod', hex('dev'), fs.constants.S_IFCHR | 0o644, 1, 3],
      ['mkfifo', hex('newfifo')],
      ['open', hex('fifo'), fs.constants.O_WRONLY | fs.constants.O_NONBLOCK],
    ]);
    ['setxattr', 'removexattr', 'mknod', 'mkfifo', 'open FIFO for writing'].forEach((name, i) => {
      const r = py[i];
      out[name] = typeof r === 'object' && r !== null && 'errno' in r ? r.errno : String(r);
    });
    return out;
  };
  const k = attempt(kernelOverlay(t, { lowers }));
  const s = attempt(strataMount(t, { lowers }));
  t.deepEqual(s, k);
  t.true(Object.entries(k).filter(([n]) => n !== 'open FIFO for writing').every(([, e]) => e === 'EROFS'), `kernel: ${JSON.stringify(k)}`);
  lowers.forEach((l, i) => t.deepEqual(diffSnapshots(snapshot(l), before[i]!), [], `layer ${i} unchanged`));
});

test('file contents read identically, including large, sparse and empty files at random offsets', (t) => {
  const root = tempDir(t);
  const r = rng(99);
  const big = Buffer.alloc(3 * 1024 * 1024 + 12345);
  for (let i = 0; i < big.length; i++) big[i] = Math.floor(r() * 256);
  const lowers = materializeLayers(root, [[{ path: 'big', kind: 'file', content: big }, { path: 'empty', kind: 'file', content: '' }], [{ path: 'big', kind: 'file', content: 'hidden' }]]);
  // sparse: 8 MiB hole then data
  const sparse = path.join(lowers[1]!, 'sparse');
  fs.writeFileSync(sparse, '');
  fs.truncateSync(sparse, 8 * 1024 * 1024);
  fs.appendFileSync(sparse, 'tail after the hole\n');
  const expectedSparse = fs.readFileSync(sparse);
  const reads: [string, number, number][] = [];
  for (let i = 0; i < 60; i++) {
    const [name, size] = i % 2 ? ['big', big.length] : ['sparse', expectedSparse.length];
    const len = [1, 4096, 4097, 131072, 1 << 20, 1_500_000][i % 6]!;
    reads.push([name, Math.floor(r() * size), len]);
  }
  reads.push(['big', big.length - 10, 100], ['big', big.length + 10, 10], ['empty', 0, 10]);
  const expected = { big, sparse: expectedSparse, empty: Buffer.alloc(0) } as Record<string, Buffer>;
  const mnts = [kernelOverlay(t, { lowers }), strataMount(t, { lowers })];
  const mismatches: string[] = [];
  for (const mnt of mnts) {
    const fds = Object.fromEntries(Object.keys(expected).map((n) => [n, fs.openSync(path.join(mnt, n), 'r')]));
    for (const [name, pos, len] of reads) {
      const buf = Buffer.alloc(len);
      const n = fs.readSync(fds[name]!, buf, 0, len, pos);
      const want = expected[name]!.subarray(pos, pos + len);
      if (!buf.subarray(0, n).equals(want)) mismatches.push(`${mnt === mnts[0] ? 'kernel' : underTest().name}: pread(${name}, ${len} at ${pos}) returned ${n} bytes that differ`);
    }
    Object.values(fds).forEach((fd) => fs.closeSync(fd));
    if (!fs.readFileSync(path.join(mnt, 'big')).equals(big)) mismatches.push(`${mnt}: whole-file read of big differs`);
  }
  t.deepEqual(mismatches, []);
});

test('parallel readers while the kernel keeps evicting its caches read what the kernel reads', async (t) => {
  const root = tempDir(t);
  const lowers = materializeLayers(root, [...bigDirectory(), ...randomLayers(31, { layers: 2 })]);
  // sha256 of every regular file, 8 readers at a time, in a stable order
  const script = 'find . -type f -print0 | xargs -0 -P 8 -n 100 sha256sum | sort -k2';
  const sums = async (mnt: string, evict: boolean): Promise<string> => {
    // (not while a test of another file needs its reads to stay cached: see holdPageCacheLock)
    const release = evict ? await holdPageCacheLock('shared') : () => {};
    const timer = evict ? setInterval(() => fs.writeFileSync('/proc/sys/vm/drop_caches', '3'), 100) : undefined;
    try {
      const r = await runWithPipes('bash', ['-c', script], { cwd: mnt, timeoutMs: 120_000 });
      t.is(r.status, 0, r.stderr);
      return r.stdout;
    } finally {
      clearInterval(timer);
      release();
    }
  };
  const expected = await sums(kernelOverlay(t, { lowers }), false);
  const got = await sums(strataMount(t, { lowers, extraArgs: ['--passthrough=off'] }), true);
  const lines = (s: string): string[] => s.split('\n').filter(Boolean);
  t.true(lines(expected).length > 10_000);
  const e = new Set(lines(expected));
  t.deepEqual(lines(got).filter((l) => !e.has(l)).slice(0, 10), [], 'files whose content differs');
  t.is(lines(got).length, lines(expected).length);
});

test('lookup and readdir agree on names that only a layer knows about', (t) => {
  // Probing every name from the layers is part of each comparison; these names are special.
  const root = tempDir(t);
  const lowers = materializeLayers(root, KERNEL_FORMAT);
  const names = ['.wh.etc', '.wh..wh..opq', 'etc/.wh.removed', 'opq/mid', 'opq/low', 'dirgone/a', 'solo/x', 'merged/gone', 'etc/removed/x', 'replaced-dir/sub', 'replaced-dir/lowfile'];
  const k = kernelOverlay(t, { lowers });
  const s = strataMount(t, { lowers });
  const got = Object.fromEntries(names.map((n) => [n, lookup(s, n)]));
  const want = Object.fromEntries(names.map((n) => [n, lookup(k, n)]));
  t.deepEqual(got, want);
  t.is(want['opq/mid'], 'ENOENT');
  t.is(want['replaced-dir/sub'], 'ENOTDIR');
  t.is(run('ls', ['-la', s]).status, 0);
});
