// Directories the kernel renamed with redirect_dir=on: their upper copy carries trusted.overlay.redirect
// (a name in the same parent, or an absolute path after a move to another directory), and the kernel,
// which follows redirects by default, merges the lower directory they came from. A kernel overlay
// with redirect_dir=on writes such a layer (renames within a directory, into another one, of a renamed
// directory again, of a directory inside a renamed one); then strata and the kernel (default options)
// mount it, as the upper and as a lower layer, and must show the same trees, and take the same changes.
// With redirect_dir=on strata writes them itself: the same renames (rename(2), not mv's copy) give the
// upper the kernel gives, which a fresh kernel mount reads as it reads its own.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './helpers/exec.js';
import { strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';
import { buildLayer, type LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair, unmountStrata, type Pair } from './helpers/ops-pair.js';
import { unmountQuietly } from './helpers/mounts.js';
import { diffSnapshots, snapshot } from './helpers/ops-tree.js';
import { shellBoth, type ShellStep } from './helpers/shell-pair.js';
import * as N from '../src/native/index.js';

const LOWER: LayerSpec = [
  { t: 'dir', p: 'a', mode: 0o755 },
  { t: 'file', p: 'a/f1', data: 'a1\n' },
  { t: 'dir', p: 'a/sub', mode: 0o755 },
  { t: 'file', p: 'a/sub/g', data: 'g\n' },
  { t: 'dir', p: 'c', mode: 0o755 },
  { t: 'file', p: 'c/f', data: 'c\n' },
  { t: 'dir', p: 'p', mode: 0o755 },
  { t: 'dir', p: 'p/q', mode: 0o755 },
  { t: 'file', p: 'p/q/h', data: 'h\n' },
  { t: 'dir', p: 'd', mode: 0o755 },
  { t: 'file', p: 'd/f', data: 'd\n' },
  { t: 'dir', p: 'keep', mode: 0o755 },
  { t: 'file', p: 'keep/k', data: 'k\n' },
];

/** Renames through a kernel overlay with redirect_dir=on (each leaves a redirect on the upper copy). */
const RENAMES = 'mv a b && mkdir x && mv c x/c2 && mv p/q p/r && mv d x/d2 && mv x/d2 e && mv b/sub b/sub2 && echo new > b/added';

/**
 * Lets a kernel overlay with `option` write `upper` over `lowers`: `script` runs in its mount. `check`
 * names an xattr the kernel must have left on a path of the upper, and its value (null: any).
 */
function throughKernel(upper: string, lowers: string[], option: string, script: string, check: [string, string, string | null]): void {
  const gen = fs.mkdtempSync(path.join(path.dirname(upper), 'gen'));
  const mnt = path.join(gen, 'm');
  fs.mkdirSync(path.join(gen, 'w'));
  fs.mkdirSync(mnt);
  const m = run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${gen}/w,${option}`, mnt]);
  if (m.status !== 0) throw new Error(`kernel overlay with ${option}: ${m.stderr.trim()}`);
  try {
    const r = run('sh', ['-c', script], { cwd: mnt });
    if (r.status !== 0) throw new Error(`${script}: ${r.stderr.trim()}`);
  } finally {
    run('umount', [mnt]);
  }
  const [rel, name, value] = check;
  const x = run('getfattr', ['-n', name, '--only-values', path.join(upper, rel)]);
  if (x.status !== 0 || (value !== null && x.stdout !== value)) throw new Error(`the kernel left no ${name} on ${rel} (${x.stderr.trim()})`);
  fs.rmSync(gen, { recursive: true, force: true });
}

/** The upper a kernel overlay with redirect_dir=on writes over `lowers` (RENAMES in its mount). */
function kernelRenames(upper: string, lowers: string[]): void {
  throughKernel(upper, lowers, 'redirect_dir=on', RENAMES, ['x/c2', 'trusted.overlay.redirect', '/c']);
}

/** A lower layer written as the upper of a kernel overlay (by `write`) over a copy of LOWER. */
function kernelLayer(write: (upper: string, lowers: string[]) => void): (dir: string, layerIndex: number) => void {
  return (dir, layerIndex) => {
    const below = fs.mkdtempSync(path.join(path.dirname(dir), 'below'));
    buildLayer(below, LOWER, layerIndex + 1); // (the times of the layer under it in the stack)
    write(dir, [below]);
    fs.rmSync(below, { recursive: true, force: true });
  };
}

const STEPS: ShellStep[] = [
  { sh: 'find . | sort; cat b/f1 b/added b/sub2/g x/c2/f p/r/h e/f keep/k' },
  { sh: 'ls -la b x x/c2 e p/r | awk "{print \\$1, \\$NF}"; ls a c d p/q 2>&1; true' },
  // changes inside the redirected directories: new names, a copy-up, removals (whiteouts), a rename back
  { sh: 'echo more > x/c2/more && chmod 600 e/f && rm b/f1 && rm -r b/sub2 && ls -a b e x/c2; stat -c "%n %a" e/f' },
  { sh: 'rm -r p/r && ls -a p; mkdir p/q && ls -a p/q; rmdir x 2>&1; true' },
  { sh: 'find . | sort' },
];

test.serial('directories the kernel renamed with redirect_dir=on (in the upper): strata follows their redirects as the kernel', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER], { upperFrom: kernelRenames });
  shellBoth(c, pair, STEPS);
  finishPair(c, pair);
  c.done();
});

test.serial('the same with that layer below a fresh upper (a lower layer with redirects), and with three more lower layers', (t) => {
  for (const pad of [0, 3]) {
    const c = new Checks(t);
    const padding: LayerSpec[] = Array.from({ length: pad }, () => [{ t: 'dir', p: 'keep', mode: 0o755 }]);
    const pair = setupPair(t, [kernelLayer(kernelRenames), ...padding, LOWER]);
    shellBoth(c, pair, STEPS);
    finishPair(c, pair);
    c.done();
  }
});

/**
 * Where the kernel cannot list every directory (it refuses the lookups of some entries), finishPair's
 * tree walks cannot run: both mounts go, and the uppers they leave are compared.
 */
function unmountAndCompareUppers(c: Checks, pair: Pair): void {
  unmountStrata(c, pair.strata);
  unmountQuietly(pair.kernel.mnt);
  c.none(diffSnapshots(snapshot(pair.kernel.upper, 'upper'), snapshot(pair.strata.upper, 'upper'), ['kernel', 'strata']), 'upper dirs differ');
}

/** Redirects a layer may carry that lead nowhere good: relative to a sibling, "..", out of the layer, malformed. */
function oddRedirects(upper: string): void {
  const set = (dir: string, value: string): void => {
    fs.mkdirSync(path.join(upper, dir));
    const r = run('setfattr', ['-n', 'trusted.overlay.redirect', '-v', value, path.join(upper, dir)]);
    if (r.status !== 0) throw new Error(`setfattr: ${r.stderr.trim()}`);
  };
  set('sibling', 'keep');
  set('dotdot', '/a/..');
  set('escape', '/../../etc');
  set('relative-dotdot', '..');
  set('double-slash', '/a//sub');
  set('trailing-slash', 'a/');
  set('absent', '/no/such/dir');
}

test.serial('redirects to a sibling, with "..", out of the layer, malformed or to nowhere: as the kernel (EACCES, EINVAL, or nothing below)', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER], { upperFrom: oddRedirects });
  const dirs = ['sibling', 'dotdot', 'escape', 'relative-dotdot', 'double-slash', 'trailing-slash', 'absent'];
  shellBoth(c, pair, dirs.map((d) => ({ sh: `ls -a ${d} 2>&1; stat -c "%n %F" ${d} 2>&1; true` })));
  // (the root's listing is left out: the kernel's stops at the first entry whose lookup fails, strata
  // lists every name, without attributes where the lookup fails)
  shellBoth(c, pair, [{ sh: 'echo x > sibling/new && ls sibling; rm -r absent; stat absent 2>&1; true' }]);
  unmountAndCompareUppers(c, pair);
  c.done();
});

/** A kernel overlay with metacopy=on writes `upper`: metadata-only copy-ups, one of them renamed (a file redirect). */
function kernelMetacopy(upper: string, lowers: string[]): void {
  throughKernel(upper, lowers, 'metacopy=on', 'chmod 600 a/f1 && mv c/f c/g && echo data > keep/new', ['a/f1', 'trusted.overlay.metacopy', null]);
}

const METACOPY_STEPS: ShellStep[] = [
  { sh: 'stat -c "%n %a" a/f1 c/g 2>&1; cat a/f1 c/g 2>&1; cat keep/new a/sub/g d/f; true' },
  { sh: 'rm a/f1 2>&1; echo x >> c/g 2>&1; echo more >> keep/new && cat keep/new; true' },
];

test.serial('files the kernel copied up with metacopy=on are refused with EPERM, as the kernel refuses them without metacopy=on', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER], { upperFrom: kernelMetacopy });
  shellBoth(c, pair, METACOPY_STEPS);
  unmountAndCompareUppers(c, pair);
  c.done();
});

test.serial('the same with those files in a lower layer above three more (lookups through the lower index)', (t) => {
  const c = new Checks(t);
  // (the directories in five lower layers: the index keeps listings of four or more)
  const padding: LayerSpec[] = Array.from({ length: 3 }, () => ['a', 'c', 'keep'].map((p) => ({ t: 'dir' as const, p, mode: 0o755 })));
  const pair = setupPair(t, [kernelLayer(kernelMetacopy), ...padding, LOWER]);
  // (listing the directories builds their lower-index listings: the lookups after it go through them)
  shellBoth(c, pair, [...METACOPY_STEPS, { sh: 'ls a c >/dev/null 2>&1; stat -c "%n %a" a/f1 c/g a/sub 2>&1; cat c/g 2>&1; true' }]);
  unmountAndCompareUppers(c, pair);
  c.done();
});

/** As kernelMetacopy, and more: a file in a subdirectory chowned, one moved to another directory (an absolute redirect). */
function kernelMetacopyMore(upper: string, lowers: string[]): void {
  throughKernel(upper, lowers, 'metacopy=on', 'chmod 600 a/f1 && mv c/f c/g && chown 1000:1000 a/sub/g && mv d/f keep/moved && echo data > keep/new',
    ['keep/moved', 'trusted.overlay.redirect', '/d/f']);
}

/** LOWER and a file above the size that is copied up in steps between other requests (6 MiB). */
const LOWER_BIG: LayerSpec = [...LOWER, { t: 'file', p: 'big', data: 'b'.repeat(6 << 20) }, { t: 'file', p: 'keep/h1', data: 'linked\n' },
  { t: 'link', p: 'keep/h2', to: 'keep/h1' }];

/**
 * Reads, then metadata changes, data changes, renames and links of the metacopy files, then removals;
 * a large file copied up metadata only by each side (by strata too) and then written while a descriptor
 * reads it.
 */
const METACOPY_ON_STEPS: ShellStep[] = [
  { sh: 'chmod 600 big && stat -c "%n %s %a" big && exec 3< big && head -c 5 <&3 && echo tail >> big && head -c 5 <&3 && tail -c 9 big && md5sum big' },
  { sh: 'for f in a/f1 c/g a/sub/g keep/moved keep/new; do stat -c "%n %s %a %u %h" $f; cat $f; done; ls -a a c d keep; true' },
  { sh: 'chmod 640 a/f1 && chown 7:7 c/g && touch -d @1000000000 a/sub/g && stat -c "%n %a %u %Y" a/f1 c/g a/sub/g && cat a/f1 c/g a/sub/g' },
  { sh: 'echo more >> c/g && cat c/g && truncate -s 1 a/sub/g && cat a/sub/g && echo && stat -c "%n %s %a %u" c/g a/sub/g' },
  { sh: 'mv keep/moved keep/moved2 && cat keep/moved2 && ln a/f1 a/f1link && cat a/f1link && stat -c "%n %h" a/f1 a/f1link && mv a/f1 top && cat top && ls a keep' },
  { sh: 'exec 3< keep/moved2; chmod 600 keep/moved2; echo new >> keep/moved2; cat <&3; cat keep/moved2; exec 3<&-; true' },
  { sh: 'rm top a/f1link keep/moved2 && ls -a a keep && cat c/g' },
  // (a lower hard link renamed within its directory gets an absolute redirect, as on the kernel)
  { sh: 'chmod 600 keep/h1 && mv keep/h1 keep/h1b && cat keep/h1b keep/h2 && stat -c "%n %a %h" keep/h1b keep/h2' },
];

test.serial('metacopy=on: the files the kernel copied up metadata only are read and changed as on the kernel (their data below, through redirects)', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER_BIG], { upperFrom: kernelMetacopyMore, options: ['metacopy=on'] });
  shellBoth(c, pair, METACOPY_ON_STEPS);
  finishPair(c, pair);
  c.done();
});

test.serial('metacopy=on: the same with those files in a lower layer, above none and above three more (lookups through the lower index)', (t) => {
  for (const pad of [0, 3]) {
    const c = new Checks(t);
    const padding: LayerSpec[] = Array.from({ length: pad }, () => ['a', 'c', 'keep'].map((p) => ({ t: 'dir' as const, p, mode: 0o755 })));
    const pair = setupPair(t, [kernelLayer(kernelMetacopyMore), ...padding, LOWER_BIG], { options: ['metacopy=on'] });
    shellBoth(c, pair, [{ sh: 'ls a c keep >/dev/null' }, ...METACOPY_ON_STEPS]);
    finishPair(c, pair);
    c.done();
  }
});

test.serial('metacopy=on: a hard-linked metadata-only copy filled while a descriptor reads its data below keeps every name', (t) => {
  // (the fill supersedes the node the reader's passthrough is bound to: the other names must follow it)
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER_BIG], {
    upperFrom: (upper, lowers) => throughKernel(upper, lowers, 'metacopy=on', 'chmod 600 big && ln big keep/big-link', ['big', 'trusted.overlay.metacopy', null]),
    options: ['metacopy=on'],
  });
  shellBoth(c, pair, [
    { sh: 'stat -c "%n %h" keep/big-link big; exec 3< keep/big-link; exec 4<> keep/big-link; exec 4>&-; rm keep/big-link; ls . keep; ' +
      'stat -c "%n %h %s" big; md5sum < big; head -c 5 <&3; exec 3<&-; ls .' },
  ]);
  finishPair(c, pair);
  c.done();
});

test.serial('metacopy=on in a containers-storage layer (diff beside link, under l/): metadata-only copies read, but data copied up whole, for its native diff', (t) => {
  const base = tempDir(t, 'cs');
  const lower = path.join(base, 'l', 'LOWERLINK');
  const layer = path.join(base, 'ID');
  for (const d of [lower, path.join(layer, 'diff'), path.join(layer, 'work'), path.join(layer, 'merged')]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(layer, 'link'), 'ID');
  fs.writeFileSync(path.join(lower, 'f'), 'lower data\n');
  fs.writeFileSync(path.join(lower, 'g'), 'lower g\n');
  // a metadata-only copy of g, as the kernel leaves one (podman switched from the kernel's overlay)
  fs.writeFileSync(path.join(layer, 'diff', 'g'), '');
  fs.truncateSync(path.join(layer, 'diff', 'g'), 8);
  fs.chmodSync(path.join(layer, 'diff', 'g'), 0o600);
  runOk('setfattr', ['-n', 'trusted.overlay.metacopy', '-v', '""', path.join(layer, 'diff', 'g')]);
  const mnt = path.join(layer, 'merged');
  const m = run(strataBin, ['mount', '-o', `lowerdir=${lower},upperdir=${layer}/diff,workdir=${layer}/work,nodev,metacopy=on`, mnt]);
  t.is(m.status, 0, m.stderr);
  try {
    t.is(fs.readFileSync(path.join(mnt, 'g'), 'utf8'), 'lower g\n', 'the metadata-only copy reads its data below');
    fs.chmodSync(path.join(mnt, 'f'), 0o600);
    t.is(fs.readFileSync(path.join(layer, 'diff', 'f'), 'utf8'), 'lower data\n', 'the chmod copied the data up');
    t.is(run('getfattr', ['-n', 'trusted.overlay.metacopy', path.join(layer, 'diff', 'f')]).status, 1, 'no metacopy marker');
  } finally {
    run(strataBin, ['umount', mnt]);
  }
});

test.serial('data-only lower layers (lowerdir=A:B::D, datadir+=D): metacopy files reach their data there by absolute redirects, as on the kernel', (t) => {
  const base = tempDir(t, 'do');
  const [l1, l2, d] = ['l1', 'l2', 'data'].map((n) => path.join(base, n)) as [string, string, string];
  for (const dir of [path.join(l1, 'sub'), l2, path.join(d, 'blob'), path.join(d, 'hidden')]) fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(d, 'blob', 'data1'), 'x'.repeat(5000) + 'end\n');
  fs.writeFileSync(path.join(d, 'blob', 'data2'), 'two\n');
  fs.writeFileSync(path.join(d, 'hidden', 'never'), 'not in the tree\n');
  fs.writeFileSync(path.join(l2, 'reg'), 'regular\n');
  // metacopy files of the top lower layer: data in the data-only layer (absolute redirects), or below in l2
  const meta = (rel: string, size: number, redirect: string | null, mode: number): void => {
    const f = path.join(l1, rel);
    fs.writeFileSync(f, '');
    fs.truncateSync(f, size);
    fs.chmodSync(f, mode);
    runOk('setfattr', ['-n', 'trusted.overlay.metacopy', '-v', '""', f]);
    if (redirect) runOk('setfattr', ['-n', 'trusted.overlay.redirect', '-v', redirect, f]);
  };
  meta('f', 5004, '/blob/data1', 0o600);
  meta('sub/g', 4, '/blob/data2', 0o640);
  meta('reg', 8, null, 0o604);
  meta('nodata', 3, '/blob/none', 0o644);
  const script = [
    'ls -a . sub; stat -c "%n %s %b" nodata; md5sum f; cat sub/g reg; stat -c "%n %s %a" f sub/g reg; cat nodata 2>&1; ls blob hidden 2>&1',
    'chmod 700 f && echo more >> sub/g && cat sub/g && stat -c "%n %s %a" f sub/g && mv f sub/f2 && md5sum sub/f2',
    // (a change that copies up the file whose data is missing: the kernel's lazy lookup fails it first)
    'chmod 600 nodata; touch nodata; ln nodata n2; mv nodata n3; setfattr -n user.a -v 1 nodata; ls; true',
  ];
  for (const opts of [`lowerdir=${l1}:${l2}::${d}`, `lowerdir+=${l1},lowerdir+=${l2},datadir+=${d}`]) {
    const outs: string[][] = [];
    const uppers: string[] = [];
    for (const side of ['kernel', 'strata']) {
      const dir = fs.mkdtempSync(path.join(base, side));
      const [u, w, m] = ['u', 'w', 'm'].map((n) => path.join(dir, n)) as [string, string, string];
      for (const x of [u, w, m]) fs.mkdirSync(x);
      const all = `${opts},upperdir=${u},workdir=${w},metacopy=on`;
      const r = side === 'kernel' ? run('mount', ['-t', 'overlay', 'overlay', '-o', all, m]) : run(strataBin, ['mount', '-o', all, m]);
      t.is(r.status, 0, `${side}: ${r.stderr}`);
      try {
        outs.push(script.map((sh) => { const x = run('sh', ['-c', sh], { cwd: m }); return x.stdout + x.stderr; }));
      } finally {
        if (side === 'kernel') unmountQuietly(m);
        else run(strataBin, ['umount', m]);
      }
      uppers.push(u);
    }
    t.deepEqual(outs[1], outs[0], `${opts}: strata as the kernel`);
    t.regex(outs[0]![0]!, /regular/);
    t.deepEqual(diffSnapshots(snapshot(uppers[0]!, 'upper'), snapshot(uppers[1]!, 'upper')), [], `${opts}: the uppers`);
  }
  // without metacopy=on, refused as by this kernel (EPERM); lowerdir+= after lowerdir= refused
  const m = fs.mkdtempSync(path.join(base, 'm'));
  const r = run(strataBin, ['mount', '-o', `lowerdir=${l1}:${l2}::${d}`, m]);
  t.is(r.status, 0, r.stderr);
  try {
    t.regex(run('cat', [path.join(m, 'f')]).stderr, /Operation not permitted/);
  } finally {
    run(strataBin, ['umount', m]);
  }
  for (const bad of [`lowerdir=${l1},datadir+=${d}`, `lowerdir=${l1}::${d}:${l2}`, `lowerdir=${l1}:::${d}`, `datadir+=${d},lowerdir+=${l1}`]) {
    const x = run(strataBin, ['mount', '-o', bad, m]);
    t.not(x.status, 0, bad);
    t.is(x.stderr.trim().split('\n').length, 1, x.stderr);
    t.not(run('mount', ['-t', 'overlay', 'overlay', '-o', bad, m]).status, 0, `the kernel refuses ${bad} too`);
  }
});

/** A digest (SHA-256 by its algorithm number) in a metacopy marker: this kernel has no fs-verity, so no data file matches it. */
const DIGEST = '0x00240001' + '07'.repeat(32);

/**
 * As kernelMetacopy, for verity=: metadata-only copies the kernel made, then digests written into some
 * of their markers (d*), and one marker with a digest of a version the kernel does not know (bad).
 */
function kernelMetacopyDigests(upper: string, lowers: string[]): void {
  throughKernel(upper, lowers, 'metacopy=on', 'chmod 600 a/f1 c/f d/f keep/k && mv a/sub/g a/sub/d-g', ['a/sub/d-g', 'trusted.overlay.metacopy', null]);
  for (const f of ['c/f', 'a/sub/d-g']) runOk('setfattr', ['-n', 'trusted.overlay.metacopy', '-v', DIGEST, path.join(upper, f)]);
  runOk('setfattr', ['-n', 'trusted.overlay.metacopy', '-v', '0x01240001' + '07'.repeat(32), path.join(upper, 'keep/k')]);
}

/** Every use of the data (reads, opens for write, truncate) and every change that copies up (chmod, chown, utimes, rename, link; xattrs only below the upper). */
const VERITY_STEPS: ShellStep[] = [
  { sh: 'for f in a/f1 c/f a/sub/d-g d/f keep/k; do stat -c "%n %s %a" $f; cat $f; done 2>&1; true' },
  { sh: 'chmod 640 a/f1 c/f 2>&1; chown 7 d/f a/sub/d-g 2>&1; touch -d @5 keep/k 2>&1; setfattr -n user.x -v 1 c/f a/f1 2>&1; stat -c "%n %a %u %Y" a/f1 c/f d/f keep/k a/sub/d-g; true' },
  { sh: 'mv c/f c/f2 2>&1; ln a/sub/d-g a/sub/l 2>&1; ln d/f d/l 2>&1; echo x >> a/f1 2>&1; truncate -s 1 c/f 2>&1; ls a a/sub c d; cat a/f1; true' },
  { sh: 'chmod 600 keep/k2 2>&1; stat -c "%n %s %a" keep/k2; cat keep/k2; true' },
];

test.serial('verity=on and verity=require: the digests of metacopy files are checked before their data is used or copied, as on the kernel', (t) => {
  // (the kernel's verity needs fs-verity in the data's filesystem, which this kernel lacks: where a digest
  // is recorded, no data file matches it and both answer EIO; require refuses metacopy files without
  // one, and makes no metadata-only copies: the chmod of keep/k2 copies its data)
  const lower: LayerSpec = [...LOWER, { t: 'file', p: 'keep/k2', data: 'k2\n' }];
  for (const mode of ['on', 'require']) {
    const c = new Checks(t);
    const pair = setupPair(t, [lower], { upperFrom: kernelMetacopyDigests, options: ['metacopy=on', `verity=${mode}`] });
    shellBoth(c, pair, VERITY_STEPS);
    unmountAndCompareUppers(c, pair);
    c.done();
  }
  // and in a lower layer (the marker read there: the topmost metacopy file of the name)
  const c = new Checks(t);
  const pair = setupPair(t, [kernelLayer(kernelMetacopyDigests), LOWER], { options: ['metacopy=on', 'verity=on'] });
  shellBoth(c, pair, VERITY_STEPS);
  unmountAndCompareUppers(c, pair);
  c.done();
});

/** The overlay's trusted.overlay.* markers of every object under `upper` moved to user.overlay.*. */
function toUserMarkers(upper: string): void {
  for (const rel of ['.', ...(fs.readdirSync(upper, { recursive: true }) as string[])]) {
    const p = path.join(upper, rel);
    for (const name of N.llistxattr(N.C.AT_FDCWD, p)) {
      if (!name.startsWith('trusted.overlay.')) continue;
      const v = N.lgetxattr(N.C.AT_FDCWD, p, name)!;
      N.lsetxattr(N.C.AT_FDCWD, p, `user.${name.slice('trusted.'.length)}`, v, 0);
      N.lremovexattr(N.C.AT_FDCWD, p, name);
    }
  }
}

// (userxattr implies nofollow on the kernel: its redirects, in user.overlay.*, are refused the same way)
for (const option of ['redirect_dir=nofollow', 'userxattr']) {
  test.serial(`with ${option} a redirect fails the lookup with EPERM, as on the kernel`, (t) => {
    const c = new Checks(t);
    const upperFrom = option === 'userxattr' ? (upper: string, lowers: string[]) => { kernelRenames(upper, lowers); toUserMarkers(upper); } : kernelRenames;
    const pair = setupPair(t, [LOWER], { upperFrom, options: [option] });
    const out = shellBoth(c, pair, [
      { sh: 'for d in b e p/r b/sub2 x x/c2 keep; do stat -c "%n %F" $d 2>&1; done; cat keep/k b/added 2>&1; true' },
      { sh: 'echo n > keep/n && ls keep; rm -r b 2>&1; true' },
    ]);
    c.ok(out[0]!.includes('Operation not permitted'), `the kernel refuses a redirect (${out[0]})`);
    unmountAndCompareUppers(c, pair);
    c.done();
  });
}

/** rename(2) of each pair (no copying fallback as mv has): OK or the errno name. */
function renames(pairs: [string, string][]): string {
  const calls = pairs.map(([a, b]) => `r(${JSON.stringify(a)}, ${JSON.stringify(b)})`).join('; ');
  return `python3 -c 'import os, errno\ndef r(a, b):\n  try: os.rename(a, b); print(a, "->", b, "OK")\n  except OSError as e: print(a, "->", b, errno.errorcode[e.errno])\n${calls}'`;
}

const LONG = 'n'.repeat(200);

test.serial('redirect_dir=on: strata renames directories with lower layers as the kernel does (redirects, whiteouts, opaque new parents, redirect_max)', (t) => {
  const c = new Checks(t);
  const lower: LayerSpec = [...LOWER, { t: 'dir', p: LONG, mode: 0o755 }, { t: 'dir', p: `${LONG}/${'m'.repeat(60)}`, mode: 0o755 },
    { t: 'file', p: `${LONG}/${'m'.repeat(60)}/f`, data: 'deep\n' }, { t: 'dir', p: 'op', mode: 0o755 }, { t: 'dir', p: 'op/sealed', mode: 0o755, opaque: true },
    { t: 'dir', p: 'op2', mode: 0o755, opaque: true }, { t: 'dir', p: 'op2/inner', mode: 0o755 }, { t: 'file', p: 'op2/inner/top', data: 'top\n' }];
  // (below: what the opaque directories hide, also from a redirect's path through them)
  const below: LayerSpec = [{ t: 'dir', p: 'op', mode: 0o755 }, { t: 'dir', p: 'op/sealed', mode: 0o755 }, { t: 'file', p: 'op/sealed/under', data: 'hidden\n' },
    { t: 'dir', p: 'op2', mode: 0o755 }, { t: 'dir', p: 'op2/inner', mode: 0o755 }, { t: 'file', p: 'op2/inner/under', data: 'hidden\n' }];
  const pair = setupPair(t, [lower, below], { options: ['redirect_dir=on'] });
  shellBoth(c, pair, [
    // within a directory, into a new (opaque) one, again after a move, a directory inside a moved one,
    // over an empty directory, out of an opaque lower directory's parent; one whose path is too long
    { sh: `mkdir x new && ${renames([['a', 'b'], ['c', 'x/c2'], ['p/q', 'p/r'], ['d', 'x/d2'], ['x/d2', 'e'], ['b/sub', 'b/sub2'], ['keep', 'new'],
      ['op/sealed', 'x/sealed'], ['op2/inner', 'x/inner'], [`${LONG}/${'m'.repeat(60)}`, 'x/deep']])}` },
    { sh: 'echo added > b/added && find . | sort && cat b/f1 b/added b/sub2/g x/c2/f p/r/h e/f new/k; ls -a x/sealed; ls a c p/q d keep op 2>&1; true' },
    { sh: 'getfattr -d -m trusted.overlay.redirect -e text --absolute-names x/c2 b p/r e b/sub2 new 2>&1 | sed "s|$PWD|.|"; true' },
    // changes inside moved directories, and moves of them again
    { sh: `echo more > x/c2/more && chmod 600 e/f && rm b/f1 && rm -r b/sub2 && ${renames([['b', 'x/b'], ['x/c2', 'c'], ['p', 'q']])} && find . | sort` },
  ]);
  // the same after both mounts start again (lookups now follow the redirects on disk)
  pair.kernel.remount();
  pair.strata.remount();
  shellBoth(c, pair, [{ sh: 'find . | sort; cat c/more e/f x/b/added x/sealed/* x/inner/* 2>&1; true' }]);
  finishPair(c, pair);
  c.done();
});

test.serial('redirect_dir=on or metacopy=on with userxattr, metacopy=on with redirect_dir other than on or with nfs_export=on, nfs_export=on with index=off: refused, as by the kernel', (t) => {
  const base = tempDir(t, 'rd');
  for (const d of ['l', 'u', 'w', 'm']) fs.mkdirSync(path.join(base, d));
  for (const [extra, message] of [['userxattr,redirect_dir=on', 'userxattr,redirect_dir=on'], ['userxattr,metacopy=on', 'userxattr,metacopy=on'],
    ['metacopy=on,redirect_dir=nofollow', 'metacopy=on,redirect_dir=nofollow'], ['redirect_dir=follow,metacopy=on', 'metacopy=on,redirect_dir=follow'],
    ['metacopy=on,nfs_export=on', 'nfs_export=on,metacopy=on'], ['index=off,nfs_export=on', 'nfs_export=on,index=off']]) {
    const opts = `lowerdir=${base}/l,upperdir=${base}/u,workdir=${base}/w,${extra}`;
    const r = run(strataBin, ['mount', '-o', opts, path.join(base, 'm')]);
    t.not(r.status, 0, extra);
    t.true(r.stderr.includes(`conflicting options: ${message}`), r.stderr);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    const k = run('mount', ['-t', 'overlay', 'overlay', '-o', opts, path.join(base, 'm')]);
    if (k.status === 0) run('umount', [path.join(base, 'm')]);
    t.not(k.status, 0, `the kernel refuses ${extra} too`);
  }
});

test.serial('option values are taken as the kernel takes them (verity, uuid, index, metacopy, redirect_dir, xino, fsync): anything else is refused with one line', (t) => {
  const base = tempDir(t, 'vy');
  for (const d of ['l', 'l2', 'u', 'w', 'm']) fs.mkdirSync(path.join(base, d));
  const m = path.join(base, 'm');
  const values: Record<string, string[]> = {
    verity: ['off', 'on', 'require', 'yes', ''],
    uuid: ['on', 'off', 'null', 'auto', 'yes'],
    index: ['on', 'off', 'yes', ''],
    metacopy: ['on', 'off', 'yes'],
    redirect_dir: ['on', 'follow', 'nofollow', 'off', 'bogus'],
    xino: ['on', 'off', 'auto', 'bogus'],
    fsync: ['auto', 'strict', 'volatile', 'bogus'],
  };
  for (const [key, vals] of Object.entries(values)) {
    for (const value of vals) {
      const opts = `lowerdir=${base}/l:${base}/l2,upperdir=${base}/u,workdir=${base}/w,${key}${value === '' ? '' : `=${value}`}`;
      // (a fresh work directory for each mount: fsync=volatile leaves the volatile mark, which a next
      // mount refuses until it is removed)
      const freshWork = (): void => {
        fs.rmSync(path.join(base, 'w'), { recursive: true, force: true });
        fs.mkdirSync(path.join(base, 'w'));
      };
      const k = run('mount', ['-t', 'overlay', 'overlay', '-o', opts, m]);
      if (k.status === 0) unmountQuietly(m);
      freshWork();
      const r = run(strataBin, ['mount', '-o', opts, m]);
      if (r.status === 0) run(strataBin, ['umount', m]);
      freshWork();
      t.is(r.status === 0, k.status === 0, `${key}=${value}: strata as the kernel (${r.stderr.trim()})`);
      if (r.status !== 0) {
        t.regex(r.stderr, new RegExp(`bad value for '${key}'`));
        t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
      }
    }
  }
});

test.serial('redirect_dir=on: a rename of a lower directory over a new non-empty one in another directory fails with ENOTEMPTY after the kernel\'s changes: source copied up with its redirect, new parent marked impure', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [LOWER], { options: ['redirect_dir=on'] });
  shellBoth(c, pair, [{ sh: `mkdir keep/data keep/data/y && ${renames([['a', 'keep/data'], ['c', 'p/q']])}` }]);
  // a new parent only in the upper, listed before: the listing after the failure drops the mark again
  // (the kernel's readdir of an impure upper directory whose entries have no origins), as a rename
  // that failed did not make the kernel drop the cached listing
  shellBoth(c, pair, [{ sh: `mkdir n n/d n/d/y && ls n && ${renames([['d', 'n/d']])} && ls n` }]);
  unmountAndCompareUppers(c, pair);
  c.done();
});
