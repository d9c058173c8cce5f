// Containers: strata run (exit status, --rm, options after the image, cleanup), commit (a new
// layer on top, parent layers shared), export (the flattened view equals a tar of the kernel's
// overlay of the same layers), mount --image, and the round trip load → run → write → commit →
// save → load into an empty store → the mount shows the same tree.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { compareTrees } from './helpers/compare.js';
import { spawn, spawnSync } from 'node:child_process';
import { runOk, sleep } from './helpers/exec.js';
import { strataBin } from './helpers/paths.js';
import { dockerArchive, makeTar } from './helpers/image-store.js';
import { rootfsTar, testStore, type TestStore } from './helpers/images.js';
import { kernelOverlay, mountsUnder, strataUnmount } from './helpers/mounts.js';
import { processesTagged, taggedEnv } from './helpers/processes.js';
import { snapshot } from './helpers/snapshot.js';
import { diffTarEntries, tarEntries } from './helpers/tar-entries.js';
import { tempDir } from './helpers/tmp.js';

/** A store with the test image imported as base:1. */
function storeWithImage(t: Parameters<typeof testStore>[0]): { s: TestStore; base: string } {
  const base = tempDir(t, 'ct');
  const s = testStore(t, base);
  s.ok(['image', 'import', rootfsTar(t, base), 'base:1']);
  return { s, base };
}

function layerDirs(s: TestStore): string[] {
  return fs.readdirSync(path.join(s.dir, 'layers')).sort();
}

/** Nothing of the store is mounted and no daemon serves it. */
function assertClean(t: Parameters<typeof testStore>[0], s: TestStore, tag?: string): void {
  t.deepEqual(mountsUnder(s.dir), [], 'nothing left mounted below the store');
  if (tag) t.deepEqual(processesTagged(tag).map((p) => p.cmdline.join(' ')), [], 'no process of the run left');
}

test('run passes the exit status on, options after the image belong to the command, the container is kept', (t) => {
  const { s } = storeWithImage(t);
  const { tag, env } = taggedEnv({ STRATA_STORE: s.dir });
  const r = s.strata(['run', '--name', 'c1', 'base:1', 'sh', '-c', 'echo hi from $(hostname) pid $$; cat /etc/motd; exit 7']);
  t.is(r.status, 7, r.stderr);
  t.regex(r.stdout, /^hi from c1 pid 1\nWelcome/);
  const ls = JSON.parse(s.ok(['container', 'ls', '--json'])) as { name: string; exitCode: number; state: string; upper: string }[];
  t.deepEqual(ls.map((c) => [c.name, c.state, c.exitCode]), [['c1', 'exited', 7]]);
  // The command changed nothing: the resolv.conf made for the bind mount, and the copy-up of /etc
  // it caused (overlay.origin xattr and all), are gone from the upper.
  t.deepEqual(fs.readdirSync(ls[0]!.upper), []);
  // The command sees /proc of its own PID namespace, /sys, a /dev with the usual nodes, resolv.conf.
  const seen = s.ok(['run', '--rm', 'base:1', 'sh', '-c', 'ls /proc | grep -c "^[0-9]"; test -r /sys/kernel/uevent_seqnum && echo sys; ls /dev; test -f /etc/resolv.conf && echo resolv']);
  const lines = seen.trim().split('\n');
  t.true(Number(lines[0]) <= 3, `few processes visible: ${lines[0]}`);
  t.true(lines.includes('sys'));
  for (const d of ['null', 'zero', 'urandom', 'tty', 'ptmx', 'pts', 'shm']) t.true(lines.includes(d), `/dev/${d}`);
  t.true(lines.includes('resolv'));
  void env;
  assertClean(t, s, tag);
});

test('--rm removes the container; a failing or killed command still unmounts; a missing command is refused', (t) => {
  const { s } = storeWithImage(t);
  t.is(s.strata(['run', '--rm', 'base:1', 'false']).status, 1);
  t.is(s.strata(['run', '--rm', 'base:1', 'sh', '-c', 'sh -c "kill -9 \\$\\$"; exit $?']).status, 137);
  const missing = s.strata(['run', '--rm', 'base:1', '/no/such/program']);
  t.not(missing.status, 0);
  t.deepEqual(JSON.parse(s.ok(['container', 'ls', '--json'])), []);
  t.deepEqual(fs.readdirSync(path.join(s.dir, 'containers')), []);
  const noCmd = s.strata(['run', 'base:1']);
  t.is(noCmd.status, 2);
  t.regex(noCmd.stderr, /^strata: no command given/);
  assertClean(t, s);
});

/** Starts `strata run` with `command`, waits until the container is mounted, sends SIGTERM, returns the exit. */
async function terminate(t: Parameters<typeof testStore>[0], s: TestStore, name: string, command: string[]): Promise<number | null> {
  const child = spawn(strataBin, ['run', '--name', name, 'base:1', ...command], { env: s.env, stdio: 'ignore' });
  const merged = await (async () => {
    for (let i = 0; i < 600; i++) {
      const m = mountsUnder(path.join(s.dir, 'containers'));
      if (m.length > 0) return m;
      await sleep(100);
    }
    return [];
  })();
  t.true(merged.length > 0, 'the container got mounted');
  await sleep(1000);
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  child.kill('SIGTERM');
  return exited;
}

test('strata run told to stop (SIGTERM): the command gets it, or is killed 10 s later; unmounted, status passed on', async (t) => {
  const { s } = storeWithImage(t);
  // A command that handles SIGTERM ends with its own status.
  t.is(await terminate(t, s, 'k1', ['sh', '-c', 'trap "exit 143" TERM; sleep 600 & wait']), 143);
  // pid 1 without a handler ignores SIGTERM: killed after the grace period.
  t.is(await terminate(t, s, 'k2', ['sleep', '600']), 137);
  const ls = JSON.parse(s.ok(['container', 'ls', '--json'])) as { name: string; exitCode: number }[];
  t.deepEqual(ls.map((c) => [c.name, c.exitCode]).sort(), [['k1', 143], ['k2', 137]]);
  assertClean(t, s);
});

test('unknown options are named, for run, commit, export, container, mount', (t) => {
  const { s } = storeWithImage(t);
  for (const args of [['run', '--bogus', 'base:1', 'true'], ['commit', '--bogus', 'c', 'x:1'], ['export', 'c', '--bogus', '-o', 'f'],
    ['container', 'ls', '--bogus'], ['container', 'rm', '--bogus', 'c'], ['mount', '--image', 'base:1', '--bogus', '/mnt']]) {
    const r = s.strata(args);
    t.is(r.status, 2, args.join(' '));
    t.is(r.stderr, 'strata: unknown option --bogus\n', args.join(' '));
  }
  // After the image name, an option is the command's.
  t.is(s.ok(['run', '--rm', 'base:1', 'echo', '--bogus']), '--bogus\n');
});

test('commit: the upper becomes one new layer on top, with whiteouts; the parent layers are shared; run the new image', (t) => {
  const { s } = storeWithImage(t);
  const before = layerDirs(s);
  const parentLayer = path.join(s.dir, 'layers', before[0]!, 'diff');
  const parentSnap = snapshot(parentLayer);
  s.ok(['run', '--name', 'w', 'base:1', 'sh', '-c',
    'echo new > /etc/new.conf; rm /bin/hello; rm -r /usr/share/doc/legacy; mkdir /usr/share/doc/legacy; echo again > /usr/share/doc/legacy/x; chmod 600 /data/a']);
  const id = s.ok(['commit', '-m', 'changed things', '-a', 'Tester <t@example.org>', 'w', 'base:2']).trim();
  t.regex(id, /^sha256:[0-9a-f]{64}$/);
  const after = layerDirs(s);
  t.is(after.length, before.length + 1, 'one new layer directory');
  t.true(before.every((d) => after.includes(d)));
  compareTrees(t, snapshot(parentLayer), parentSnap, { label: 'the parent layer is untouched' });
  const inspect = JSON.parse(s.ok(['image', 'inspect', 'base:2'])) as { RootFS: { Layers: string[] }; Author?: string }[];
  t.is(inspect[0]!.RootFS.Layers.length, 2);
  const history = s.ok(['image', 'history', 'base:2']);
  t.regex(history.split('\n')[1]!, /changed things/);
  // The new image shows the changes (deletions included), and so does the kernel over the store's layers.
  const out = s.ok(['run', '--rm', 'base:2', 'sh', '-c', 'cat /etc/new.conf; ls /bin/hello 2>&1; ls /usr/share/doc/legacy; stat -c %a /data/a']);
  t.deepEqual(out.trim().split('\n').map((l) => l.replace(/^ls: /, '')), ['new', '/bin/hello: No such file or directory', 'x', '600']);
  const kmnt = kernelOverlay(t, { lowers: s.ok(['image', 'lowerdir', 'base:2']).trim().split(':'), mountpoint: fs.mkdtempSync(path.join(path.dirname(s.dir), 'k')) });
  t.false(fs.existsSync(path.join(kmnt, 'bin/hello')));
  t.deepEqual(fs.readdirSync(path.join(kmnt, 'usr/share/doc/legacy')), ['x']);
  assertClean(t, s);
});

test('export equals a tar of the kernel overlay of the same layers', async (t) => {
  const { s, base } = storeWithImage(t);
  s.ok(['run', '--name', 'e', 'base:1', 'sh', '-c',
    'echo changed > /etc/motd; rm /data/a-link; rm -r /var/www; mkdir /var/www; echo x > /var/www/new; ln /data/suid /data/suid2; mknod /data/zero c 1 5']);
  const exported = path.join(base, 'export.tar');
  s.ok(['export', 'e', '-o', exported]);
  const rec = (JSON.parse(s.ok(['container', 'ls', '--json'])) as { upper: string }[])[0]!;
  const lowers = [rec.upper, ...s.ok(['image', 'lowerdir', 'base:1']).trim().split(':')];
  const kmnt = kernelOverlay(t, { lowers, mountpoint: fs.mkdtempSync(path.join(base, 'k')) });
  const ktar = path.join(base, 'kernel.tar');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', kmnt, '-cf', ktar, '.']);
  const [mine, kernel] = await Promise.all([tarEntries(exported), tarEntries(ktar)]);
  t.deepEqual(diffTarEntries(mine, kernel), []);
  t.true(mine.size > 30);
  t.is(mine.get('etc/motd')!.sha256, kernel.get('etc/motd')!.sha256);
  t.deepEqual(mine.get('data/suid2')!.links, ['data/suid', 'data/suid2']);
  t.false(mine.has('data/a-link'));
  // A running mount is exported as it is; an unmounted container was mounted and unmounted again.
  assertClean(t, s);
});

test('export of a container that is not mounted (its layers merged directly) is byte for byte the export of a strata mount of them', async (t) => {
  const base = tempDir(t, 'ex');
  // A layer over the base with whiteouts and an opaque directory (kernel format once stored).
  const l1 = path.join(base, 'l1.tar');
  fs.writeFileSync(l1, await makeTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/.wh.hostname' },
    { name: 'etc/l1.conf', data: 'from l1\n' },
    { name: 'var/', type: 'directory' },
    { name: 'var/www/', type: 'directory' },
    { name: 'var/www/.wh..wh..opq' },
    { name: 'var/www/l1-only', data: 'l1\n' },
  ]));
  const archive = path.join(base, 'img.tar');
  dockerArchive(base, [{ tags: ['two:1'], layers: [rootfsTar(t, base), l1] }], archive);
  const s = testStore(t, base);
  s.ok(['image', 'load', '-i', archive]);
  s.ok(['run', '--name', 'e', 'two:1', 'sh', '-c', [
    'rm /etc/motd /var/www/l1-only', 'rm -r /usr/share/doc/legacy', 'mkdir /usr/share/doc/legacy', 'echo x > /usr/share/doc/legacy/new',
    'echo changed > /data/a', 'echo new > /etc/new.conf', 'ln /etc/new.conf /etc/new-link', 'mkdir -p /srv/x', 'echo f > /srv/x/f',
    'mknod /data/zero c 1 5', 'chmod 600 /data/suid', 'head -c 300000 /bin/busybox > /srv/big',
  ].join('; ')]);
  const direct = path.join(base, 'direct.tar');
  s.ok(['export', 'e', '-o', direct]);
  t.deepEqual(mountsUnder(s.dir), [], 'nothing was mounted for it');
  const rec = (JSON.parse(s.ok(['container', 'ls', '--json'])) as { upper: string }[])[0]!;
  const lowers = [rec.upper, ...s.ok(['image', 'lowerdir', 'two:1']).trim().split(':')];
  const m = fs.mkdtempSync(path.join(base, 'm'));
  s.ok(['mount', '-o', `lowerdir=${lowers.join(':')}`, m]);
  const mounted = path.join(base, 'mounted.tar');
  try {
    s.ok(['export', m, '-o', mounted]);
  } finally {
    strataUnmount(m);
  }
  t.true(fs.readFileSync(direct).equals(fs.readFileSync(mounted)), 'the same bytes');
  // And what they hold: the kernel's overlay of the same layers.
  const kmnt = kernelOverlay(t, { lowers, mountpoint: fs.mkdtempSync(path.join(base, 'k')) });
  const ktar = path.join(base, 'kernel.tar');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', kmnt, '-cf', ktar, '.']);
  const [mine, kernel] = await Promise.all([tarEntries(direct), tarEntries(ktar)]);
  t.deepEqual(diffTarEntries(mine, kernel), []);
  for (const gone of ['etc/motd', 'etc/hostname', 'var/www/old.html', 'var/www/l1-only', 'usr/share/doc/legacy/NOTES']) t.false(mine.has(gone), gone);
  t.deepEqual(mine.get('etc/new-link')!.links, ['etc/new-link', 'etc/new.conf']);
  t.is(mine.get('data/a')!.xattrs['user.note'], Buffer.from('kept').toString('hex'), 'xattrs of a copied-up file');
  t.is(mine.get('srv/big')!.size, 300000);
  // Standard output: the same tar.
  const r = spawnSync(strataBin, ['export', 'e', '-o', '-'], { env: s.env, maxBuffer: 1 << 30 });
  t.is(r.status, 0);
  t.true(r.stdout.equals(fs.readFileSync(direct)), '-o - writes the same bytes');
  assertClean(t, s);
});

test('round trip: load → run → write → commit → save → load into an empty store → mount shows the same tree', (t) => {
  const { s, base } = storeWithImage(t);
  s.ok(['run', '--name', 'rt', 'base:1', 'sh', '-c', 'mkdir -p /srv/app; echo data > /srv/app/file; ln -s file /srv/app/link; rm /etc/app.conf']);
  s.ok(['commit', 'rt', 'app:1']);
  const archive = path.join(base, 'app.tar');
  s.ok(['image', 'save', 'app:1', '-o', archive]);
  const other = testStore(t, fs.mkdtempSync(path.join(base, 'o')));
  other.ok(['image', 'load', '-i', archive]);
  const m1 = fs.mkdtempSync(path.join(base, 'm'));
  const m2 = fs.mkdtempSync(path.join(base, 'm'));
  s.ok(['mount', '--image', 'app:1', m1]);
  other.ok(['mount', '--image', 'app:1', m2]);
  try {
    // The layer roots are not in the layer tars (as in Docker's): their mtime is the unpack's.
    compareTrees(t, snapshot(m2), snapshot(m1), { label: 'loaded copy vs original', ignore: (p, f) => f === 'ctimeNs' || (p === '.' && f === 'mtimeNs') });
    t.is(fs.readFileSync(path.join(m2, 'srv/app/file'), 'utf8'), 'data\n');
    t.false(fs.existsSync(path.join(m2, 'etc/app.conf')));
  } finally {
    strataUnmount(m1);
    strataUnmount(m2);
  }
  assertClean(t, s);
  assertClean(t, other);
});

test('mount --image with an upper of your choice, then commit the mount point', (t) => {
  const { s, base } = storeWithImage(t);
  const [u, w, m] = ['u', 'w', 'm'].map((d) => {
    fs.mkdirSync(path.join(base, d));
    return path.join(base, d);
  }) as [string, string, string];
  s.ok(['mount', '--image', 'base:1', '--upper', u, '--work', w, m]);
  try {
    fs.writeFileSync(path.join(m, 'etc/added'), 'through the mount\n');
    fs.rmSync(path.join(m, 'etc/motd'));
    t.true(fs.lstatSync(path.join(u, 'etc/motd')).isCharacterDevice(), 'a kernel-format whiteout in the upper');
    // The mounted image cannot be removed while the mount is live.
    const rm = s.strata(['image', 'rm', 'base:1']);
    t.is(rm.status, 1);
    t.is(rm.stderr, `strata: image base:1 is in use by the mount at ${m} (use --force)\n`);
    s.ok(['commit', m, 'mnt:1']);
  } finally {
    strataUnmount(m);
  }
  t.is(s.ok(['run', '--rm', 'mnt:1', 'cat', '/etc/added']), 'through the mount\n');
  t.is(s.strata(['run', '--rm', 'mnt:1', 'cat', '/etc/motd']).status, 1);
  const bad = s.strata(['mount', '--image', 'base:1', '--upper', u, m]);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--upper and --work go together/);
  assertClean(t, s);
});
