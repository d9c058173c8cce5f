// Directory changes made the kernel's way and checked against it: whiteouts as links of one shared
// whiteout (ovl_whiteout), rmdir's emptiness check and the clearing of the whiteouts a removed
// directory holds (ovl_check_empty_dir, ovl_cleanup_whiteouts), creates over whiteouts, renames over
// emptied directories; and the fallbacks of the shared whiteout (another filesystem, a lost one).

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import * as N from '../src/native/index.js';
import { isKernelWhiteout, WhiteoutMaker } from '../src/union/whiteout.js';
import { compareTrees } from './helpers/compare.js';
import { sideBySide } from './helpers/mounts.js';
import { snapshot } from './helpers/snapshot.js';
import { ext4Disk, tempDir, tmpfsDir } from './helpers/tmp.js';

const { C, ST } = N;

function makeLower(root: string): void {
  const w = (rel: string, data = `${rel}\n`): void => {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), data);
  };
  for (let i = 0; i < 6; i++) w(`d/f${i}`);
  w('g/x');
  w('g/y');
  w('h/a');
  w('p/q/file');
  w('c/keep');
  w('c/gone');
  w('e/f');
  w('m/old');
  for (const n of ['a', 'b', 'c', 'd']) w(`r/${n}`);
  w('sg/w');
  w('sg/v');
}

/** What the upper holds before the mount: a whiteout of its own (as an older mount left it) and a real device. */
function makeUpper(root: string): void {
  fs.mkdirSync(path.join(root, 'g'));
  N.mknodat(C.AT_FDCWD, path.join(root, 'g', 'x'), C.S_IFCHR, 0);
  fs.mkdirSync(path.join(root, 'h'));
  N.mknodat(C.AT_FDCWD, path.join(root, 'h', 'null'), C.S_IFCHR | 0o600, N.makedev(1, 3));
}

/** The same changes through either mount; the errors each step met. */
function change(m: string): string[] {
  const errors: string[] = [];
  const step = (what: string, f: () => void): void => {
    try {
      f();
      errors.push(`${what}: ok`);
    } catch (e) {
      errors.push(`${what}: ${(e as { code?: string }).code}`);
    }
  };
  const p = (rel: string): string => path.join(m, rel);
  for (let i = 0; i < 6; i++) step(`rm d/f${i}`, () => fs.rmSync(p(`d/f${i}`)));
  step('rm e/f after a copy-up', () => {
    fs.appendFileSync(p('e/f'), 'more\n');
    fs.rmSync(p('e/f'));
  });
  step('create d/f0 over its whiteout', () => fs.writeFileSync(p('d/f0'), 'new\n'));
  step('mkdir d/f1 over its whiteout', () => fs.mkdirSync(p('d/f1')));
  step('symlink d/f2 over its whiteout', () => fs.symlinkSync('target', p('d/f2')));
  step('mkdir d/new', () => fs.mkdirSync(p('d/new')));
  step('mkdir d/f0 (exists)', () => fs.mkdirSync(p('d/f0')));
  step('create d/new (exists)', () => fs.writeFileSync(p('d/new'), 'x', { flag: 'wx' }));
  step('rmdir d (not empty)', () => fs.rmdirSync(p('d')));
  step('rmdir d/f1 (opaque, empty)', () => fs.rmdirSync(p('d/f1')));
  step('rmdir d/new', () => fs.rmdirSync(p('d/new')));
  step('create and rm d/tmp, create d/r1 and rename it to d/r2', () => {
    fs.writeFileSync(p('d/tmp'), 'tmp\n');
    fs.rmSync(p('d/tmp'));
    fs.writeFileSync(p('d/r1'), 'r\n');
    fs.renameSync(p('d/r1'), p('d/r2'));
    fs.rmSync(p('d/r2'));
  });
  step('create m/new in a lower directory, rename m/old over it, rm it', () => {
    fs.writeFileSync(p('m/new'), 'new\n');
    fs.renameSync(p('m/old'), p('m/new'));
    fs.rmSync(p('m/new'));
  });
  step('rm r/b, rename r/a over its whiteout', () => {
    fs.rmSync(p('r/b'));
    fs.renameSync(p('r/a'), p('r/b'));
  });
  step('rename r/c to a new name and back, r/d to a new name', () => {
    fs.renameSync(p('r/c'), p('r/z'));
    fs.renameSync(p('r/z'), p('r/c'));
    fs.renameSync(p('r/d'), p('r/y'));
  });
  step('in a setgid directory of group 123: create and mkdir over whiteouts and where nothing was', () => {
    fs.chownSync(p('sg'), 0, 123);
    fs.chmodSync(p('sg'), 0o2775);
    fs.rmSync(p('sg/w'));
    fs.rmSync(p('sg/v'));
    fs.writeFileSync(p('sg/w'), 'w\n', { mode: 0o2755 });
    fs.mkdirSync(p('sg/v'), 0o755);
    fs.writeFileSync(p('sg/n'), 'n\n');
    fs.mkdirSync(p('sg/nd'));
    fs.symlinkSync('w', p('sg/l'));
  });
  step('rm d/f0 d/f2', () => {
    fs.rmSync(p('d/f0'));
    fs.rmSync(p('d/f2'));
  });
  step('rmdir d (only whiteouts left)', () => fs.rmdirSync(p('d')));
  step('rm g/y', () => fs.rmSync(p('g/y')));
  step('rmdir g (a whiteout of an older mount and a new one)', () => fs.rmdirSync(p('g')));
  step('rm h/a', () => fs.rmSync(p('h/a')));
  step('rmdir h (a real device stays)', () => fs.rmdirSync(p('h')));
  step('rm p/q/file', () => fs.rmSync(p('p/q/file')));
  step('mkdir s', () => fs.mkdirSync(p('s')));
  step('rename s over the emptied p/q', () => fs.renameSync(p('s'), p('p/q')));
  step('rm c/gone', () => fs.rmSync(p('c/gone')));
  step('mkdir t/u', () => fs.mkdirSync(p('t/u'), { recursive: true }));
  step('rename t over the emptied c (not empty: keep)', () => fs.renameSync(p('t'), p('c')));
  step('rm c/keep', () => fs.rmSync(p('c/keep')));
  step('rename t over the emptied c', () => fs.renameSync(p('t'), p('c')));
  step('rmdir c/u', () => fs.rmdirSync(p('c/u')));
  step('rmdir c', () => fs.rmdirSync(p('c')));
  return errors;
}

/** st_ino of the kernel-format whiteouts below `root`, and their link counts. */
function whiteouts(root: string): { ino: bigint; nlink: bigint; rel: string }[] {
  const out: { ino: bigint; nlink: bigint; rel: string }[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const st = fs.lstatSync(path.join(root, r), { bigint: true });
      if (e.isCharacterDevice() && st.rdev === 0n) out.push({ ino: st.ino, nlink: st.nlink, rel: r });
      if (e.isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}

test('whiteouts, rmdir, creates and renames over whiteouts: the view and the errors of the kernel; whiteouts share an inode, or not, as the kernel\'s', (t) => {
  const { strata: ms, kernel: mkk, strataDirs, kernelDirs } = sideBySide(t, tempDir(t, 'dops'), makeLower, { fillUpper: makeUpper });
  const [us, uk] = [strataDirs.upper, kernelDirs.upper];
  const es = change(ms);
  const ek = change(mkk);
  t.deepEqual(es, ek);
  compareTrees(t, snapshot(ms), snapshot(mkk), { ignore: ['mtimeNs', 'ctimeNs', 'blocks'], label: 'strata vs kernel' });
  // Whiteouts made by unlink and rmdir (not the one the upper came with, nor a rename's) are links of one inode.
  for (const [label, root] of [['strata', us], ['kernel', uk]] as const) {
    const made = whiteouts(root).filter((w) => w.rel !== 'g/x' && w.rel !== 'm/old' && !w.rel.startsWith('r/'));
    t.true(made.length >= 3, `${label}: ${JSON.stringify(made.map((w) => w.rel))}`);
    t.is(new Set(made.map((w) => w.ino)).size, 1, `${label}: whiteouts of several inodes: ${made.map((w) => `${w.rel}:${w.ino}`).join(' ')}`);
    t.true(made.every((w) => w.nlink > 1n), label);
  }
  // A rename's whiteout (RENAME_WHITEOUT) has an inode of its own, as the kernel's: the link counts of
  // every whiteout are the kernel's.
  const links = (root: string): string[] => whiteouts(root).map((w) => `${w.rel} ${w.nlink}`).sort();
  t.deepEqual(links(us), links(uk));
  t.true(links(uk).includes('r/d 1'), links(uk).join(', '));
});

test('the shared whiteout: another filesystem falls back to mknod; a lost one is made again; d_ino proves only its own links', (t) => {
  const dir = tempDir(t, 'dopw');
  const work = path.join(dir, 'work');
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(work);
  fs.mkdirSync(upper);
  const other = tmpfsDir(t, dir, 'other', 4);
  const workFd = N.openat(C.AT_FDCWD, work, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  const upperFd = N.openat(C.AT_FDCWD, upper, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  const otherFd = N.openat(C.AT_FDCWD, other, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  let n = 0;
  const maker = new WhiteoutMaker(workFd, () => `#t${n++}`);
  t.teardown(() => {
    maker.close();
    for (const fd of [workFd, upperFd, otherFd]) N.close(fd);
  });
  const st = new Float64Array(16);
  const statOf = (dirfd: number, name: string): Float64Array => {
    N.fstatat(dirfd, name, C.AT_SYMLINK_NOFOLLOW | (name === '' ? C.AT_EMPTY_PATH : 0), st);
    return st.slice();
  };

  maker.make(upperFd, 'a');
  maker.make(upperFd, 'b');
  const a = statOf(upperFd, 'a');
  t.true(isKernelWhiteout(a));
  t.is(a[ST.ino], statOf(upperFd, 'b')[ST.ino]);
  t.is(a[ST.nlink], 3); // a, b and the shared one in the work directory
  t.is(a[ST.mode]! & 0o7777, 0);
  t.deepEqual(fs.readdirSync(work), ['#t0']);
  t.throws(() => maker.make(upperFd, 'a'), { code: 'EEXIST' });

  // d_ino and d_type prove a link of the shared whiteout; a device of its own is not one.
  N.mknodat(upperFd, 'own', C.S_IFCHR, 0);
  const dev = statOf(upperFd, '')[ST.dev]!;
  const entries = new Map(N.readdir(upperFd).map(([name, type, ino]) => [name, [type, ino] as const]));
  for (const name of ['a', 'b']) t.true(maker.isShared(dev, ...entries.get(name)!), name);
  t.false(maker.isShared(dev, ...entries.get('own')!));
  t.false(maker.isShared(dev + 1, ...entries.get('a')!));
  t.false(maker.isShared(dev, C.DT_REG, entries.get('a')![1]));

  // The shared whiteout removed behind its back: a new one is made, the old links stay whiteouts.
  fs.rmSync(path.join(work, '#t0'));
  maker.make(upperFd, 'c');
  t.true(isKernelWhiteout(statOf(upperFd, 'c')));
  t.not(statOf(upperFd, 'c')[ST.ino], a[ST.ino]);
  t.deepEqual(fs.readdirSync(work).sort(), ['#t1']);

  // On another filesystem no link can be made: a whiteout of its own, and none shared from then on.
  maker.make(otherFd, 'd');
  t.true(isKernelWhiteout(statOf(otherFd, 'd')));
  t.is(statOf(otherFd, 'd')[ST.nlink], 1);
  maker.make(upperFd, 'e');
  t.true(isKernelWhiteout(statOf(upperFd, 'e')));
  t.is(statOf(upperFd, 'e')[ST.nlink], 1);
  t.deepEqual(fs.readdirSync(work), []);
});

test('the shared whiteout at the link limit is handed out itself and a new one started, as on the kernel', (t) => {
  const dir = tempDir(t, 'dopl');
  // ext4: 65000 links at most (a filesystem of its own: the machine's may differ)
  const { disk } = ext4Disk(t, dir);
  const sides = sideBySide(t, disk, (l) => {
    for (const n of ['x0', 'x1', 'x2', 'x3']) fs.writeFileSync(path.join(l, n), `${n}\n`);
  });
  const look = (m: string, dirs: { upper: string; work: string }, fill: string): Record<string, unknown> => {
    /** The whiteouts in the work directory (the kernel's and strata's: WORKDIR/work). */
    const work = path.join(dirs.work, 'work');
    const at = (name: string): ReturnType<typeof whiteouts>[number] | undefined => whiteouts(dirs.upper).find((w) => w.rel === name);
    fs.rmSync(path.join(m, 'x0'));
    const shared = whiteouts(work);
    t.is(shared.length, 1, `${m}: ${shared.map((w) => w.rel).join(' ')}`);
    // Links of the shared whiteout up to the limit, from outside the mount (on the same filesystem).
    fs.mkdirSync(fill);
    let links = 0;
    for (;;) {
      try {
        fs.linkSync(path.join(work, shared[0]!.rel), path.join(fill, `l${links}`));
        links++;
      } catch (e) {
        t.is((e as { code?: string }).code, 'EMLINK');
        break;
      }
    }
    fs.rmSync(path.join(m, 'x1'));
    const [x0, x1] = [at('x0')!, at('x1')];
    const workAfterX1 = whiteouts(work).length;
    fs.rmSync(path.join(m, 'x2'));
    fs.rmSync(path.join(m, 'x3'));
    const [x2, x3] = [at('x2')!, at('x3')!];
    return {
      links: links + 2, // and the first whiteout's, and the work directory's
      x1: { whiteout: x1 !== undefined, sameInode: x1?.ino === x0.ino, nlink: Number(x1?.nlink) },
      workAfterX1,
      x2x3: { sameInode: x2.ino === x3.ino, newInode: x2.ino !== x0.ino, nlink: Number(x2.nlink) },
      workAfter: whiteouts(work).length,
      listing: fs.readdirSync(m).sort(),
    };
  };
  const kernel = look(sides.kernel, sides.kernelDirs, path.join(disk, 'fill-k'));
  const strata = look(sides.strata, sides.strataDirs, path.join(disk, 'fill-s'));
  t.deepEqual(strata, kernel);
  // What the kernel does (ovl_whiteout): at EMLINK its shared whiteout becomes the new whiteout (the
  // work directory's link moves to x1), and the next whiteouts share a new one.
  t.like(kernel, { links: 65000, x1: { whiteout: true, sameInode: true, nlink: 65000 }, workAfterX1: 0, x2x3: { sameInode: true, newInode: true, nlink: 3 }, workAfter: 1 });
  t.deepEqual(kernel.listing, []);
});
