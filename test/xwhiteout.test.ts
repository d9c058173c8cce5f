// Xattr whiteouts (Linux 6.7+, as mkcomposefs writes them): in a lower layer, a directory marked
// trusted.overlay.opaque=x is not opaque but holds whiteouts that are empty regular files carrying
// trusted.overlay.whiteout. They hide the name below, are never listed nor found, and count as
// nothing for rmdir; a file of the same shape with data, or without the xattr, is a plain file.
// Against the kernel, with two lower layers and with five (the lower index builds the listing then).
import test from 'ava';
import type { LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { shellBoth, type ShellStep } from './helpers/shell-pair.js';

const XW = { 'trusted.overlay.whiteout': 'y' };

/** The top lower layer: whiteouts in xattr form, in directories marked "x". */
const TOP: LayerSpec = [
  { t: 'dir', p: 'd', mode: 0o755, xattrs: { 'trusted.overlay.opaque': 'x' } },
  { t: 'file', p: 'd/gone', data: '', xattrs: XW },
  { t: 'file', p: 'd/gone-empty-value', data: '', xattrs: { 'trusted.overlay.whiteout': '' } },
  { t: 'file', p: 'd/subgone', data: '', xattrs: XW },
  { t: 'file', p: 'd/nothing-below', data: '', xattrs: XW },
  { t: 'file', p: 'd/has-data', data: 'data\n', xattrs: XW },
  { t: 'file', p: 'd/plain-empty', data: '' },
  { t: 'file', p: 'd/top', data: 'top\n' },
  { t: 'dir', p: 'd/nested', mode: 0o755, xattrs: { 'trusted.overlay.opaque': 'x' } },
  { t: 'file', p: 'd/nested/deep', data: '', xattrs: XW },
  { t: 'dir', p: 'rm', mode: 0o755, xattrs: { 'trusted.overlay.opaque': 'x' } },
  { t: 'file', p: 'rm/a', data: '', xattrs: XW },
  { t: 'file', p: 'rm/b', data: 'b\n' },
];

/** The bottom layer: what the whiteouts hide, and what stays. */
const BOTTOM: LayerSpec = [
  { t: 'file', p: 'd/gone', data: 'hidden\n' },
  { t: 'file', p: 'd/gone-empty-value', data: 'hidden\n' },
  { t: 'dir', p: 'd/subgone', mode: 0o755 },
  { t: 'file', p: 'd/subgone/inside', data: 'hidden\n' },
  { t: 'file', p: 'd/has-data', data: 'below\n' },
  { t: 'file', p: 'd/below', data: 'below\n' },
  { t: 'dir', p: 'd/nested', mode: 0o755 },
  { t: 'file', p: 'd/nested/deep', data: 'hidden\n' },
  { t: 'file', p: 'd/nested/stays', data: 'stays\n' },
  { t: 'dir', p: 'rm', mode: 0o755 },
  { t: 'file', p: 'rm/a', data: 'hidden\n' },
];

/** Layers between the two that only repeat the directories (the merge goes on through them). */
const MIDDLE: LayerSpec = [{ t: 'dir', p: 'd', mode: 0o755 }, { t: 'dir', p: 'd/nested', mode: 0o755 }, { t: 'dir', p: 'rm', mode: 0o755 }];

const STEPS: ShellStep[] = [
  { sh: 'ls -a d d/nested; ls d/subgone 2>&1; stat -c "%n %F %s" d/gone d/gone-empty-value d/subgone d/nothing-below 2>&1; true' },
  { sh: 'cat d/has-data d/top d/below d/nested/stays; stat -c "%n %F %s" d/plain-empty d/has-data' },
  { sh: 'find d | sort; ls -l d | tail -n +2 | awk "{print \\$1, \\$NF}"' },
  // a name hidden by an xattr whiteout can be made again: a file, a directory (empty: what was below stays hidden)
  { sh: 'echo new > d/gone && cat d/gone; mkdir d/subgone && ls -a d/subgone; ls d' },
  // removing what the whiteouts leave: rmdir counts only what shows
  { sh: 'rm rm/b && rmdir rm && ls -a; ls rm 2>&1; true' },
  { sh: 'rm d/top d/below && ls d; rm -r d/nested && ls d' },
];

for (const [what, layers] of [
  ['two lower layers', [TOP, BOTTOM]],
  ['five lower layers (listings from the lower index)', [TOP, MIDDLE, MIDDLE, MIDDLE, BOTTOM]],
] as const) {
  test.serial(`xattr whiteouts in directories marked opaque=x hide names below, as on the kernel: ${what}`, (t) => {
    const c = new Checks(t);
    const pair = setupPair(t, layers);
    shellBoth(c, pair, STEPS);
    finishPair(c, pair);
    c.done();
  });
}
