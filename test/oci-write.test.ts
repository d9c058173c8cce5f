// --write-format oci: the upper gets OCI whiteouts (.wh.NAME) and opaque markers (.wh..wh..opq)
// instead of char 0/0 devices and xattrs; the merged view is the same as the kernel's, and the
// upper converted back to the kernel's format mounts under the kernel with the same view.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { compareTrees } from './helpers/compare.js';
import { kernelOverlay, sideBySide, strataMount, strataUnmount } from './helpers/mounts.js';
import { ociToKernel } from './helpers/oci.js';
import { snapshot } from './helpers/snapshot.js';
import { tempDir } from './helpers/tmp.js';

function makeLower(root: string): void {
  fs.mkdirSync(path.join(root, 'd', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(root, 'd', 'keep'), 'keep\n');
  fs.writeFileSync(path.join(root, 'd', 'gone'), 'gone\n');
  fs.writeFileSync(path.join(root, 'd', 'sub', 'deep'), 'deep\n');
  fs.mkdirSync(path.join(root, 'tree', 'a'), { recursive: true });
  fs.writeFileSync(path.join(root, 'tree', 'a', 'x'), 'x\n');
  fs.writeFileSync(path.join(root, 'file'), 'file\n');
}

/** The same changes through any mount. */
function change(m: string): void {
  fs.rmSync(path.join(m, 'd', 'gone'));
  fs.rmSync(path.join(m, 'tree'), { recursive: true });
  fs.mkdirSync(path.join(m, 'tree'));
  fs.writeFileSync(path.join(m, 'tree', 'new'), 'new\n');
  fs.rmSync(path.join(m, 'file'));
  fs.writeFileSync(path.join(m, 'file'), 'recreated\n');
  fs.renameSync(path.join(m, 'd', 'keep'), path.join(m, 'kept'));
}

// Times of directories touched by the changes differ between the two runs.
const ignore = ['mtimeNs', 'ctimeNs', 'blocks', 'nlink'] as const;

test('--write-format oci writes .wh. files; the view matches the kernel, and so does the converted upper', (t) => {
  const dir = tempDir(t, 'ociw');
  const { strata: ms, kernel: mkk, strataDirs, kernelDirs } = sideBySide(t, dir, makeLower, { strataArgs: ['--write-format', 'oci'] });
  const [ls, us, lk] = [strataDirs.lower, strataDirs.upper, kernelDirs.lower];
  const mk = (n: string): string => {
    const p = path.join(dir, n);
    fs.mkdirSync(p);
    return p;
  };
  change(ms);
  change(mkk);
  compareTrees(t, snapshot(ms), snapshot(mkk), { ignore: [...ignore], label: 'strata (oci upper) vs kernel' });

  // The upper holds OCI markers only: no char devices, no overlay xattrs.
  t.true(fs.existsSync(path.join(us, 'd', '.wh.gone')));
  t.true(fs.existsSync(path.join(us, 'd', '.wh.keep')));
  t.true(fs.existsSync(path.join(us, '.wh.tree')) || fs.existsSync(path.join(us, 'tree', '.wh..wh..opq')));
  const walk = (p: string): void => {
    for (const e of fs.readdirSync(p, { withFileTypes: true })) {
      const full = path.join(p, e.name);
      t.false(e.isCharacterDevice(), `no char device whiteout: ${full}`);
      if (e.isDirectory()) walk(full);
    }
  };
  walk(us);

  // Remounted by strata, the OCI upper reads the same.
  strataUnmount(ms);
  const again = strataMount(t, { lowers: [us, ls], mountpoint: mk('again') });
  compareTrees(t, snapshot(again), snapshot(mkk), { ignore: [...ignore], label: 'strata over the oci upper as a lower vs kernel' });

  // Converted to the kernel's format, the kernel shows the same view.
  const [converted] = ociToKernel([us], path.join(dir, 'conv'));
  const kconv = kernelOverlay(t, { lowers: [converted!, lk], mountpoint: mk('kconv') });
  compareTrees(t, snapshot(kconv), snapshot(mkk), { ignore: [...ignore], label: 'kernel over the converted oci upper vs kernel' });
});
