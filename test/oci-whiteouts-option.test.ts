// -o oci_whiteouts=off: `.wh.` files in the layers are plain data, as the kernel's overlayfs shows
// them (it reads only its own whiteout format), so the kernel is the oracle. examples/layers holds
// OCI whiteouts; with the option they stay visible and hide nothing.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './helpers/exec.js';
import { strataMount } from './helpers/mounts.js';
import { compareWithKernel } from './helpers/oracle.js';
import { examplesDir, strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';

/** A copy of examples/layers (top first), so that mount points are made next to them, not in the checkout. */
function exampleLayers(root: string): string[] {
  return ['patch', 'app', 'base'].map((l) => {
    const dest = path.join(root, l);
    runOk('cp', ['-a', '--', path.join(examplesDir, 'layers', l), dest]);
    return dest;
  });
}

test('oci_whiteouts=off: the example layers show their .wh. files as the kernel does', (t) => {
  const root = tempDir(t, 'ow');
  const lowers = exampleLayers(root);
  const { strata } = compareWithKernel(t, { lowers, strataArgs: ['-o', 'oci_whiteouts=off'] });
  for (const p of ['bin/.wh.old-tool', 'bin/old-tool', 'var/www/.wh..wh..opq', 'usr/share/doc/.wh.legacy', 'usr/share/doc/legacy']) {
    t.true(strata.nodes.has(p), `${p} is visible with oci_whiteouts=off`);
  }
});

test('oci_whiteouts=on (the default) reads them as whiteouts', (t) => {
  const root = tempDir(t, 'ow');
  const lowers = exampleLayers(root);
  for (const args of [[], ['-o', 'oci_whiteouts=on']]) {
    const mnt = strataMount(t, { lowers, extraArgs: args });
    t.false(fs.existsSync(path.join(mnt, 'bin/old-tool')), `${args.join(' ') || 'default'}: the whiteout hides bin/old-tool`);
    t.false(fs.readdirSync(path.join(mnt, 'bin')).some((n) => n.startsWith('.wh.')));
    t.false(fs.existsSync(path.join(mnt, 'bin/.wh.old-tool')));
    runOk(strataBin, ['umount', mnt]);
  }
});

test('oci_whiteouts=on: names made through the mount cannot be OCI whiteouts (EINVAL, as fuse-overlayfs); with off they are plain names', (t) => {
  const root = tempDir(t, 'ow');
  const lowers = exampleLayers(root);
  for (const oci of ['on', 'off']) {
    const upper = fs.mkdtempSync(path.join(root, 'u'));
    const work = fs.mkdtempSync(path.join(root, 'w'));
    const mnt = strataMount(t, { lowers, upper, work, extraArgs: ['-o', `oci_whiteouts=${oci}`] });
    const py = [
      'import os, errno, sys',
      'def r(f):',
      '  try: f(); return "ok"',
      '  except OSError as e: return errno.errorcode[e.errno]',
      'm = sys.argv[1]',
      'print(r(lambda: os.close(os.open(m + "/etc/.wh.hostname", os.O_CREAT | os.O_WRONLY, 0o644))),',
      '  r(lambda: os.mkdir(m + "/.wh.etc")), r(lambda: os.symlink("x", m + "/etc/.wh..wh..opq")),',
      '  r(lambda: os.link(m + "/etc/hostname", m + "/etc/.wh.l")), r(lambda: os.mknod(m + "/etc/.wh.n", 0o10644)),',
      '  r(lambda: os.rename(m + "/etc/hostname", m + "/etc/.wh.moved")))',
    ].join('\n');
    const out = runOk('python3', ['-c', py, mnt]).trim();
    if (oci === 'on') {
      t.is(out, 'EINVAL EINVAL EINVAL EINVAL EINVAL EINVAL');
      t.true(fs.existsSync(path.join(mnt, 'etc/hostname')), 'nothing was hidden');
      t.true(fs.existsSync(path.join(mnt, 'etc')));
      t.deepEqual(fs.readdirSync(upper).filter((n) => n.startsWith('.wh.')), []);
    } else {
      t.is(out, 'ok ok ok ok ok ok');
      t.true(fs.existsSync(path.join(mnt, 'etc/.wh.moved')));
    }
    runOk(strataBin, ['umount', mnt]);
  }
});

test('a cached lower index built with OCI whiteouts read is not reused with oci_whiteouts=off', (t) => {
  const root = tempDir(t, 'ow');
  // Directories merged from four lower layers or more, so that the lower index serves them.
  const extra = ['x', 'y'].map((l) => path.join(root, l));
  for (const l of extra) for (const d of ['bin', 'usr/share/doc', 'var/www']) fs.mkdirSync(path.join(l, d), { recursive: true });
  const lowers = [...exampleLayers(root), ...extra];
  const cache = path.join(root, 'cache');
  const mnt = strataMount(t, { lowers, extraArgs: ['--cache-dir', cache] });
  runOk('find', [mnt]);
  runOk(strataBin, ['umount', mnt]);
  fs.rmdirSync(mnt);
  compareWithKernel(t, { lowers, strataArgs: ['--cache-dir', cache, '-o', 'oci_whiteouts=off'] });
});

test('bad values and a contradiction with --write-format oci are refused', (t) => {
  const root = tempDir(t, 'ow');
  const [top] = exampleLayers(root);
  const mnt = path.join(root, 'm');
  fs.mkdirSync(mnt);
  const r = run(strataBin, ['mount', '-o', `lowerdir=${top},oci_whiteouts=maybe`, mnt]);
  t.is(r.status, 2);
  t.regex(r.stderr, /^strata: oci_whiteouts takes on or off/);
  for (const d of ['u', 'w']) fs.mkdirSync(path.join(root, d));
  const w = run(strataBin, ['mount', '--write-format', 'oci', '-o', `lowerdir=${top},upperdir=${root}/u,workdir=${root}/w,oci_whiteouts=off`, mnt]);
  t.is(w.status, 2);
  t.regex(w.stderr, /write-format oci/);
  t.false(fs.readFileSync('/proc/self/mounts', 'utf8').includes(` ${mnt} `));
});
