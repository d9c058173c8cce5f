// Real programs on the mount: git, tar, cp -a, sed -i, python3 -m venv, mv of lower directories
// (the EXDEV fallback), rm -rf and recreate. Each runs on the kernel's overlayfs and on strata over
// identical lowers with fresh uppers; exit codes, output, merged trees, lookups, the uppers and the
// kernel's view of strata's upper are compared (see helpers/programs-pair.ts).
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './helpers/exec.js';
import type { Layer } from './helpers/layers.js';
import { OPS, PYTHON, python } from './helpers/python.js';
import { programOnBoth, setupPrograms, type ProgramsPair } from './helpers/programs-pair.js';

const T0 = 1_500_000_000_123_456_789n;
const LONG = 'n'.repeat(200);

/** One lower tree for every scenario: a project, config files, Python sources, a tree of every file type. */
const LOWER: Layer = [
  { path: 'proj', kind: 'dir', mode: 0o755, uid: 1000, gid: 1000 },
  { path: 'proj/README.md', kind: 'file', content: '# proj\n', uid: 1000, gid: 1000 },
  { path: 'proj/.gitignore', kind: 'file', content: '*.o\n', uid: 1000, gid: 1000 },
  { path: 'proj/obj.o', kind: 'file', content: 'ignored\n' },
  { path: 'proj/src/main.c', kind: 'file', content: 'int main(void) { return 0; }\n', uid: 1000, gid: 1000 },
  { path: 'proj/src/util.h', kind: 'file', content: '#pragma once\n' },
  { path: 'proj/scripts/build.sh', kind: 'file', content: '#!/bin/sh\ncc src/main.c\n', mode: 0o755 },
  { path: 'proj/link', kind: 'symlink', target: 'src/main.c' },
  { path: 'proj/hl-a', kind: 'file', content: 'linked\n' },
  { path: 'proj/hl-b', kind: 'hardlink', linkTo: 'proj/hl-a' },
  { path: 'proj/shared', kind: 'dir', mode: 0o2775, gid: 2345 },
  { path: 'proj/shared/notes', kind: 'file', content: 'notes\n', gid: 2345, mtime: T0 },
  { path: 'proj/pipe', kind: 'fifo', mode: 0o600 },

  { path: 'etc', kind: 'dir', mode: 0o755 },
  { path: 'etc/app.conf', kind: 'file', content: 'name=app\nport=80\nmode=prod\n', mode: 0o640, uid: 1234, gid: 2345, xattrs: { 'user.conf': 'app' } },
  { path: 'etc/other.conf', kind: 'file', content: 'a=1\n' },
  { path: 'etc/conf.d/10-x.conf', kind: 'file', content: 'x=1\n' },
  { path: 'etc/link.conf', kind: 'symlink', target: 'app.conf' },

  { path: 'src/pkg/__init__.py', kind: 'file', content: '' },
  { path: 'src/pkg/mod.py', kind: 'file', content: 'VALUE = 42\n' },
  { path: 'src/pkg/sub/__init__.py', kind: 'file', content: 'from ..mod import VALUE\n' },
  { path: 'src/pkg/sub/deep.py', kind: 'file', content: 'def f():\n    return 7\n' },
  { path: 'src/tool.py', kind: 'file', content: 'import pkg.sub\nprint(pkg.sub.VALUE)\n', mode: 0o755 },

  { path: 'tree', kind: 'dir', mode: 0o2775, gid: 2345, xattrs: { 'user.tree': 't' } },
  { path: 'tree/a', kind: 'file', content: 'a\n', uid: 1000, gid: 1000, xattrs: { 'user.a': '1' }, mtime: T0 },
  { path: 'tree/b', kind: 'symlink', target: 'a', uid: 1000, gid: 1000 },
  { path: 'tree/abs', kind: 'symlink', target: '/etc/passwd' },
  { path: 'tree/hl1', kind: 'file', content: 'hard\n', mode: 0o600 },
  { path: 'tree/hl2', kind: 'hardlink', linkTo: 'tree/hl1' },
  { path: 'tree/fifo', kind: 'fifo', mode: 0o640, uid: 1234 },
  { path: 'tree/sub/deep/file', kind: 'file', content: 'deep\n' },
  { path: 'tree/sub/x', kind: 'file', content: 'x\n' },
  { path: 'tree/empty', kind: 'dir', mode: 0o700 },
  { path: 'tree/suid', kind: 'file', content: '#!/bin/true\n', mode: 0o4755, uid: 1234, gid: 2345 },
  { path: `tree/${LONG}`, kind: 'file', content: 'long name\n' },
  { path: 'tree/sparse', kind: 'file', content: '' },

  { path: 'data', kind: 'dir', mode: 0o750, uid: 1234, gid: 2345, xattrs: { 'user.data': 'd' } },
  { path: 'data/x', kind: 'file', content: 'x\n', uid: 1234 },
  { path: 'data/y/z', kind: 'file', content: 'z\n' },
  { path: 'data/y/w', kind: 'file', content: 'w\n', mode: 0o600 },
  { path: 'data/link', kind: 'symlink', target: 'x' },
  { path: 'data/fifo', kind: 'fifo' },
  { path: 'data/h1', kind: 'file', content: 'h\n' },
  { path: 'data/y/h2', kind: 'hardlink', linkTo: 'data/h1' },

  { path: 'big', kind: 'dir' },
  ...Array.from({ length: 40 }, (_, i): Layer[number] => ({ path: `big/f${String(i).padStart(2, '0')}`, kind: 'file', content: `${i}\n` })),
  { path: 'big/sub/old', kind: 'file', content: 'old\n' },
  { path: 'big/sub/deeper/o2', kind: 'file', content: 'o2\n' },
];

/** tree/sparse: 8 MiB with data only at 4 MiB, then the layer time again. */
function makeSparse(lower: string): void {
  const p = path.join(lower, 'tree/sparse');
  const st = fs.statSync(p, { bigint: true });
  const fd = fs.openSync(p, 'r+');
  fs.writeSync(fd, Buffer.from('data in the middle\n'), 0, 19, 4 << 20);
  fs.ftruncateSync(fd, 8 << 20);
  fs.closeSync(fd);
  python<boolean>(OPS, [['utime', p, st.atimeNs.toString(), st.mtimeNs.toString()]]);
}

function setup(t: ExecutionContext): ProgramsPair {
  return setupPrograms(t, LOWER, makeSparse);
}

test.serial('git init, add -A and commit in a lower project', (t) => {
  const pair = setup(t);
  const res = programOnBoth(
    t,
    pair,
    `cd proj
git init -q -b main
git add -A
git commit -q -m x
git log --format='%H %T'
git ls-files --stage
git status --porcelain
git fsck --strict --no-progress 2>&1
git count-objects
git mv src/util.h src/util2.h
git rm -q scripts/build.sh
echo 'int x;' >> src/main.c
chmod 0600 README.md
git commit -q -am y
git log --format='%H %T'
git status --porcelain --ignored
git diff --stat HEAD~1`,
    // the index records st_ino, st_dev and st_ctime of every file
    { differs: { 'proj/.git/index': ['sha256'] } },
  );
  t.regex(res.kernel.run.stdout, /^[0-9a-f]{40} [0-9a-f]{40}\n/, 'git log did not print a commit');
  t.regex(res.kernel.run.stdout, /120000 [0-9a-f]{40} 0\tlink\n/, 'the symlink is not in the commit');
});

/** A tarball of everything tar stores: hardlinks, symlinks, FIFOs, long names and paths, owners, xattrs, holes. */
function makeTarball(base: string): string {
  const src = path.join(base, 'tarsrc');
  const deep = ['d'.repeat(60), 'e'.repeat(60), 'f'.repeat(60), 'g'.repeat(60), 'h'.repeat(60)].join('/');
  const name255 = 'L'.repeat(255);
  fs.mkdirSync(path.join(src, 'x', deep), { recursive: true });
  fs.mkdirSync(path.join(src, 'etc'));
  fs.mkdirSync(path.join(src, 'tree', 'sub'), { recursive: true });
  fs.mkdirSync(path.join(src, 'data', 'y'), { recursive: true });
  const w = (rel: string, data: string): void => fs.writeFileSync(path.join(src, rel), data);
  w('etc/app.conf', 'name=tarred\n'); // replaces a lower file
  w('etc/link.conf', 'was a symlink\n'); // replaces a lower symlink
  w('x/h1', 'hard from tar\n');
  fs.linkSync(path.join(src, 'x/h1'), path.join(src, 'x/h2'));
  fs.linkSync(path.join(src, 'x/h1'), path.join(src, 'data/y/z')); // over a lower file, linked to a new one
  w(`x/${name255}`, '255\n');
  fs.linkSync(path.join(src, `x/${name255}`), path.join(src, 'x/hl-long'));
  w(`x/${deep}/${'p'.repeat(100)}`, 'deep path\n');
  fs.symlinkSync('h1', path.join(src, 'x/sym'));
  fs.symlinkSync('t'.repeat(200), path.join(src, 'x/longtarget'));
  fs.symlinkSync('/nowhere', path.join(src, 'x/dangling'));
  w('tree/a', 'a from tar\n'); // replaces a lower file that has xattrs
  w('tree/sub/new', 'new\n');
  const fd = fs.openSync(path.join(src, 'x/sparse'), 'w');
  fs.writeSync(fd, 'end\n', 16 << 20);
  fs.closeSync(fd);
  const p = (rel: string): string => path.join(src, rel);
  python<boolean>(OPS, [
    ['mkfifo', p('x/fifo'), 0o620],
    ['lchown', p('x/h1'), 1234, 2345],
    ['chmod', p('x/h1'), 0o4750],
    ['setxattr', p('x/h1'), 'user.tar', Buffer.from('yes').toString('hex')],
    ['lchown', p('x/sym'), 1000, 1000],
    ['chmod', p('etc'), 0o711], // an existing lower directory gets a new mode
    ['chmod', p('tree/sub'), 0o700],
    ['lchown', p('tree/sub'), 1000, 1000],
  ]);
  runOk('bash', ['-c', `find ${src} -depth -exec touch -h -d @1400000000.5 {} +`]);
  const tarball = path.join(base, 't.tar');
  runOk('tar', ['--xattrs', '--xattrs-include=user.*', '--sparse', '-C', src, '-cf', tarball, 'etc', 'x', 'tree', 'data']);
  return tarball;
}

test.serial('tar x of hardlinks, symlinks, FIFOs and long names into the mount', (t) => {
  const pair = setup(t);
  const tarball = makeTarball(pair.base);
  // Extract, extract again over what the first run made, then archive the whole merged view with
  // fixed times (no --sparse: its member names carry tar's pid): that archive shows hard links
  // (st_ino), owners, modes, xattrs, symlink targets, contents; and tar checks that no directory's
  // ctime moves while it reads it.
  const res = programOnBoth(
    t,
    pair,
    `tar --xattrs --xattrs-include='user.*' -xpf ${tarball}
tar --xattrs --xattrs-include='user.*' -xpf ${tarball}
tar --sort=name --mtime=1970-01-01 --numeric-owner --xattrs --xattrs-include='user.*' --pax-option=delete=atime,delete=ctime -cf ../merged.tar .
sha256sum < ../merged.tar
tar -tvf ../merged.tar | grep ' link to ' | sort`,
  );
  const m = res.strata.merged.nodes;
  t.is(m.get('x/h1')?.nlink, 3, 'x/h1 is not linked to x/h2 and data/y/z');
  t.is(m.get('data/y/z')?.sha256, m.get('x/h1')?.sha256, 'data/y/z is not the tar hardlink');
  t.is(m.get('tree/a')?.xattrs['user.a'], undefined, "tree/a kept the replaced lower file's xattr");
});

test.serial('cp -a of a lower tree to a new name', (t) => {
  const pair = setup(t);
  // Also over existing lower files: cp -a tree/. data/ overwrites data's files in place (O_TRUNC).
  const res = programOnBoth(t, pair, 'cp -a tree tree-copy\ncp -a data proj/data-copy\ncp -a tree/. data/\ncp -a big/f00 big/f01\nls -la tree-copy | wc -l');
  const m = res.strata.merged.nodes;
  t.is(m.get('tree-copy/hl2')?.nlink, 2, 'cp -a did not keep the hard link (st_ino of lower hard links)');
  t.is(m.get('tree-copy/sparse')?.blocks, m.get('tree/sparse')?.blocks, 'the copy of the sparse file is not sparse');
});

test.serial('sed -i on lower config files', (t) => {
  const pair = setup(t);
  const res = programOnBoth(
    t,
    pair,
    `sed -i 's/^port=.*/port=8080/' etc/app.conf
sed -i -e '$a b=2' etc/other.conf
sed -i --follow-symlinks 's/^mode=.*/mode=dev/' etc/link.conf
sed -i 's/x/y/' etc/conf.d/10-x.conf
cat etc/app.conf etc/other.conf etc/conf.d/10-x.conf
ls -l etc | cut -c1-10`,
  );
  t.is(res.strata.merged.nodes.get('etc/app.conf')?.mode, 0o640);
  t.is(res.strata.merged.nodes.get('etc/link.conf')?.type, 'symlink');
});

test.serial('python3 -m venv, compileall of a lower package, run it', (t) => {
  const pair = setup(t);
  const py = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : PYTHON;
  const res = programOnBoth(
    t,
    pair,
    `${py} -m venv venv
venv/bin/python -m compileall -q src
cd src && ../venv/bin/python tool.py && ../venv/bin/python -m pip --version | cut -d' ' -f1
find . -name '*.pyc' | sort`,
    { timeoutMs: 300_000 },
  );
  t.regex(res.kernel.run.stdout, /^42\npip\n/, 'the venv does not work on the kernel overlay');
  t.true(res.kernel.merged.nodes.size > 500, `the venv has only ${res.kernel.merged.nodes.size} entries: pip missing?`);
});

test.serial('mv of lower directories (EXDEV: copy and delete) and of files', (t) => {
  const pair = setup(t);
  const res = programOnBoth(
    t,
    pair,
    `mv data data-moved
mv tree/sub proj/sub-moved
mv etc/app.conf etc/app.conf.bak
mv big/sub big/sub2
mkdir newdir && mv newdir newdir2
mv tree/hl1 hl1-moved
ls data-moved data-moved/y proj/sub-moved`,
    { probes: ['data', 'data/x', 'tree/sub', 'etc/app.conf', 'big/sub', 'newdir', 'tree/hl1'] },
  );
  const m = res.strata.merged.nodes;
  t.is(m.get('data-moved')?.mode, 0o750, 'mv did not keep the directory mode');
  t.is(m.get('data-moved/y/h2')?.nlink, 2, 'mv did not keep the hard link inside the moved tree');
});

test.serial('rm -rf of a lower tree, then recreate it', (t) => {
  const pair = setup(t);
  const res = programOnBoth(
    t,
    pair,
    `rm -rf big tree/sub proj
mkdir -p big/sub tree/sub
echo new > big/sub/new
echo x > tree/sub/x
mkdir proj
ls -A big big/sub tree/sub proj`,
    { probes: ['big/f00', 'big/sub/old', 'big/sub/deeper', 'tree/sub/deep', 'proj/README.md'] },
  );
  t.is(res.kernel.lookups['big/sub/old'], 'ENOENT');
  t.is(res.strata.lookups['big/sub/old'], 'ENOENT', 'a removed lower file is found again below the recreated directory');
});
