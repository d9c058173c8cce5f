// Mount-level POSIX behaviour, each scenario run with the same steps on the kernel's overlayfs
// and on strata (mounted and remounted through mount(8) and the mount.fuse.strata helper):
// remount ro/rw and flags, the mount's source name, renameat2(RENAME_WHITEOUT), file handles.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run } from './helpers/exec.js';
import { installHelper } from './helpers/mount-helper.js';
import { kernelOverlay, mountAt, strataMount, strataUnmount, unmountQuietly } from './helpers/mounts.js';
import { Checks } from './helpers/ops-checks.js';
import { runBoth, setupPair } from './helpers/ops-pair.js';
import { strataBin } from './helpers/paths.js';
import { DIRS, PYTHON, python } from './helpers/python.js';
import { tempDir } from './helpers/tmp.js';

/** What a program sees: 'ok' or the errno code. */
function attempt(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

/** The per-mount flags of the mount at `mnt` (mountinfo's sixth field), without the atime default. */
function mountFlags(mnt: string): string {
  const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === mnt).at(-1);
  return line ? line.split(' ')[5]! : 'not mounted';
}

/** Why remounts were refused (logged by the test, to tell an expected refusal from a broken one). */
const refusals: string[] = [];
/**
 * After each remount: the mount's whole mountinfo line (per-mount and superblock options) and
 * statvfs's read-only bit, logged when the scenario's sides differ (a rare EROFS on strata's side
 * once followed a remount that mountinfo showed read-write).
 */
const trail: string[] = [];

/** statvfs's read-only bit (a mount of lower layers only is read-only in its superblock, not its flags). */
function statvfsReadOnly(mnt: string): boolean {
  return python<boolean>('import os, sys, json; print(json.dumps(bool(os.statvfs(sys.argv[1]).f_flag & os.ST_RDONLY)))', null, [mnt]);
}

function remount(mnt: string, opts: string): string {
  // (a remount read-only syncs the upper layer's filesystem first, on both sides: beside the rest of the
  // suite writing to the same disk that took over 30 s once, and mount(8) was killed while the helper it
  // had started went on and made the mount read-only after the step that expected a refusal)
  const r = run('mount', ['-o', `remount,${opts}`, mnt], { timeoutMs: 180_000 });
  if (r.status !== 0) refusals.push(`remount,${opts} of ${mnt}: ${r.stderr.trim()}`);
  const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === mnt).at(-1);
  const ro = statvfsReadOnly(mnt);
  trail.push(`remount,${opts} -> ${r.status}; statvfs ro ${ro}; ${line ?? 'not mounted'}`);
  return r.status === 0 ? 'ok' : 'refused';
}

/** Sets an atime older than mtime (relatime updates it at the next read), reads: was it updated? */
function readUpdatesAtime(file: string): boolean {
  fs.utimesSync(file, 1_500_000_000, 1_600_000_000);
  fs.readFileSync(file);
  return fs.statSync(file).atimeMs !== 1_500_000_000_000;
}

/** Writes, remounts read-only and back, as a program and an administrator would; returns what they saw. */
function remountScenario(mnt: string): unknown[] {
  const p = (rel: string): string => path.join(mnt, rel);
  const changes = (): Record<string, string> => ({
    create: attempt(() => fs.writeFileSync(p(`new${Math.random()}`), 'x')),
    writeLower: attempt(() => fs.appendFileSync(p('lower'), 'more')),
    mkdir: attempt(() => fs.mkdirSync(p('dir'))),
    rmdir: attempt(() => fs.rmdirSync(p('dir'))),
    chmod: attempt(() => fs.chmodSync(p('lower2'), 0o600)),
    unlink: attempt(() => fs.unlinkSync(p('gone'))),
    read: attempt(() => fs.readFileSync(p('lower2'))),
  });
  const log: unknown[] = [];
  fs.writeFileSync(p('gone'), 'g');
  log.push(['rw', mountFlags(mnt), changes()]);
  fs.writeFileSync(p('gone'), 'g');
  log.push(['remount,ro', remount(mnt, 'ro'), mountFlags(mnt)]);
  log.push(['ro', changes()]);
  log.push(['remount,rw', remount(mnt, 'rw'), mountFlags(mnt)]);
  log.push(['rw again', changes()]);
  // A file open for writing keeps the mount read-write (the kernel answers EBUSY).
  const fd = fs.openSync(p('lower'), 'r+');
  log.push(['remount,ro while a file is open for writing', remount(mnt, 'ro'), mountFlags(mnt)]);
  fs.closeSync(fd);
  log.push(['remount,nosuid,nodev,noexec,noatime', remount(mnt, 'nosuid,nodev,noexec,noatime'), mountFlags(mnt), readUpdatesAtime(p('lower'))]);
  log.push(['remount,suid,dev,exec,strictatime,nodiratime', remount(mnt, 'suid,dev,exec,strictatime,nodiratime'), mountFlags(mnt)]);
  log.push(['remount,relatime,diratime,ro', remount(mnt, 'relatime,diratime,ro'), mountFlags(mnt), changes()]);
  log.push(['remount,rw', remount(mnt, 'rw'), readUpdatesAtime(p('lower'))]);
  // The overlay's own options and unknown ones are ignored by a remount, malformed or not (as the kernel's)
  log.push(['remount,bogus,redirect_dir=on,xino=bogus,lowerdir=/nonexistent,noexec', remount(mnt, 'bogus,redirect_dir=on,xino=bogus,lowerdir=/nonexistent,noexec'), mountFlags(mnt), changes()]);
  return log;
}

function lowerLayer(dir: string): void {
  fs.writeFileSync(path.join(dir, 'lower'), 'l');
  fs.writeFileSync(path.join(dir, 'lower2'), 'l2');
}

test('mount -o remount,ro and remount,rw through mount(8): EROFS while read-only, flags as the kernel', (t) => {
  installHelper(t);
  const log = path.join(tempDir(t, 'rlog'), 'daemon.log');
  const pair = setupPair(t, [lowerLayer], { strataArgs: ['--log-file', log] });
  const k = remountScenario(pair.kernel.mnt);
  const s = remountScenario(pair.strata.mnt);
  for (const r of refusals) t.log(r);
  if (JSON.stringify(s) !== JSON.stringify(k)) {
    for (const l of trail) t.log(l);
    t.log(fs.readFileSync(log, 'utf8').split('\n').filter((l) => /remount|error|warn/i.test(l)).join('\n'));
  }
  t.deepEqual(s, k);
  // The scenario does what it claims: writes were refused while read-only, and allowed after.
  t.is((k[2] as [string, Record<string, string>])[1].create, 'EROFS');
  t.is((k[4] as [string, Record<string, string>])[1].create, 'ok');
  t.is(fs.readFileSync(path.join(pair.strata.upper, 'lower'), 'utf8'), fs.readFileSync(path.join(pair.kernel.upper, 'lower'), 'utf8'));
});

test('remount,rw of a mount without an upper layer is refused, as the kernel refuses it', (t) => {
  installHelper(t);
  const base = tempDir(t, 'rr');
  const lower = path.join(base, 'l');
  fs.mkdirSync(lower);
  lowerLayer(lower);
  // The kernel's mount of lower layers only is read-only in its superblock (statvfs ST_RDONLY), not in its mount flags.
  const seen = (mnt: string): unknown[] => [statvfsReadOnly(mnt), remount(mnt, 'rw'), statvfsReadOnly(mnt),
    attempt(() => fs.writeFileSync(path.join(mnt, 'x'), 'x')), remount(mnt, 'ro,noexec'), statvfsReadOnly(mnt), mountFlags(mnt).includes('noexec')];
  const k = seen(kernelOverlay(t, { lowers: [lower, mkLower(base)] }));
  const s = seen(strataMount(t, { lowers: [lower, mkLower(base)] }));
  t.deepEqual(s, k);
  t.is(k[1], 'refused');
});

/** A second lower layer (the kernel needs two lowers for a mount without an upper). */
function mkLower(base: string): string {
  const d = path.join(base, `l${Math.random().toString(36).slice(2, 8)}`);
  fs.mkdirSync(d);
  return d;
}

/** Lowers, upper and work directories for a mount through mount(8). */
function layersFor(t: ExecutionContext, prefix: string): { opts: string; mnt: string } {
  const base = tempDir(t, prefix);
  for (const d of ['l', 'u', 'w', 'm']) fs.mkdirSync(path.join(base, d));
  lowerLayer(path.join(base, 'l'));
  return { opts: `lowerdir=${base}/l,upperdir=${base}/u,workdir=${base}/w`, mnt: path.join(base, 'm') };
}

/** Mounts with mount(8) under `source`, then looks the mount up by that name as the tools do. */
function sourceScenario(t: ExecutionContext, type: string, source: string, extra = '', shownAs = source): unknown {
  const { opts, mnt } = layersFor(t, 'src');
  t.teardown(() => (type === 'overlay' ? unmountQuietly(mnt) : strataUnmount(mnt)));
  const r = run('mount', ['-t', type, source, mnt, '-o', opts + extra], { timeoutMs: 30_000 });
  if (r.status !== 0) return `mount failed: ${r.stderr}`;
  const shown = mountAt(mnt)?.source ?? null;
  const found = run('findmnt', ['-n', '-o', 'TARGET', '-S', shownAs]).stdout.trim();
  const df = run('df', ['--output=source', mnt]).stdout.trim().split('\n').at(-1);
  const umount = run('umount', [shownAs], { timeoutMs: 30_000 }).status;
  return { source: shown, findmnt: found === mnt, df, umount, mountedAfter: mountAt(mnt) !== undefined };
}

test('the mount source given to mount(8) shows in mountinfo: findmnt -S, df and umount NAME find it', (t) => {
  installHelper(t);
  const name = `strata-src-${process.pid}`;
  const k = sourceScenario(t, 'overlay', `${name}-k`);
  const s = sourceScenario(t, 'fuse.strata', `${name}-s`);
  t.deepEqual(s, { ...(k as object), source: `${name}-s`, df: `${name}-s` });
  t.deepEqual(k, { source: `${name}-k`, findmnt: true, df: `${name}-k`, umount: 0, mountedAfter: false });
  // -o fsname= names it too (and wins over the source argument); commas survive.
  const f = sourceScenario(t, 'fuse.strata', `${name}-arg`, `,fsname=${name}\\,fs`, `${name},fs`);
  t.like(f as object, { source: `${name},fs`, findmnt: true, umount: 0, mountedAfter: false });
});

test('without a source the mount is named strata; the fuse-overlayfs form takes one', (t) => {
  const { opts, mnt } = layersFor(t, 'src');
  strataMount(t, { lowers: opts.split(',')[0]!.slice('lowerdir='.length).split(':'), mountpoint: mnt });
  t.is(mountAt(mnt)?.source, 'strata');
  strataUnmount(mnt);
  const r = run(strataBin, [`strata-form-${process.pid}`, mnt, '-o', opts], { timeoutMs: 30_000 });
  t.teardown(() => strataUnmount(mnt));
  t.is(r.status, 0, r.stderr);
  t.is(mountAt(mnt)?.source, `strata-form-${process.pid}`);
});

const RENAME_WHITEOUT = 4;

test('renameat2(RENAME_WHITEOUT) is refused with EINVAL as by the kernel, for root and for another user', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [[{ t: 'file', p: 'lower', mode: 0o666, data: 'l' }, { t: 'dir', p: 'pub', mode: 0o777 }]]);
  const k = runBoth(c, pair, [
    ['create', 'up', 0o644, 'u'],
    ['rename', 'up', 'up2', RENAME_WHITEOUT],
    ['rename', 'lower', 'lower2', RENAME_WHITEOUT],
    ['rename', 'lower', 'up', RENAME_WHITEOUT | 1],
    ['as', 1000, 1000, ['create', 'pub/mine', 0o644, 'm']],
    ['as', 1000, 1000, ['rename', 'pub/mine', 'pub/mine2', RENAME_WHITEOUT]],
    ['readdir', ''],
    ['readdir', 'pub'],
  ]);
  c.ok(JSON.stringify(k[1]) === '{"err":"EINVAL"}', `the kernel refuses with EINVAL: ${JSON.stringify(k[1])}`);
  c.ok(JSON.stringify(k[5]) === '{"err":"EINVAL"}', `also for a user without CAP_MKNOD: ${JSON.stringify(k[5])}`);
  c.done();
});

const HANDLES = String.raw`
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
class FH(ctypes.Structure):
    _fields_ = [('handle_bytes', ctypes.c_uint), ('handle_type', ctypes.c_int), ('f_handle', ctypes.c_ubyte * 128)]
AT_HANDLE_FID = 0x200
out = {}
for name in sys.argv[1:]:
    for flags, what in ((0, 'handle'), (AT_HANDLE_FID, 'fid')):
        fh = FH(); fh.handle_bytes = 128; mnt_id = ctypes.c_int()
        r = libc.name_to_handle_at(-100, name.encode(), ctypes.byref(fh), ctypes.byref(mnt_id), flags)
        out[name.rsplit('/', 1)[-1] + ' ' + what] = errno.errorcode.get(ctypes.get_errno(), '?') if r < 0 else 'ok'
print(json.dumps(out))
`;

test('name_to_handle_at is refused (EOPNOTSUPP) as on the kernel overlay without nfs_export; fanotify ids work', (t) => {
  const pair = setupPair(t, [[{ t: 'file', p: 'lower', data: 'l' }, { t: 'dir', p: 'd' }]]);
  const probe = (mnt: string): Record<string, string> => {
    fs.writeFileSync(path.join(mnt, 'upper'), 'u');
    return python(HANDLES, null, ['lower', 'd', 'upper'].map((n) => path.join(mnt, n)));
  };
  const k = probe(pair.kernel.mnt);
  t.deepEqual(probe(pair.strata.mnt), k);
  t.is(k['lower handle'], 'ENOTSUP'); // EOPNOTSUPP: the same number on Linux
  t.is(k['lower fid'], 'ok');
});

const DAY_NS = 86_400_000_000_000n;

/**
 * Reads, executes and lists files and directories of the upper and lower layers, recording the
 * atime each shows afterwards (recent times as "new"; "same" when a second access left it alone).
 */
function atimeScenario(mnt: string, now: bigint): unknown[] {
  const p = (rel: string): string => path.join(mnt, rel);
  const atime = (rel: string): bigint => fs.statSync(p(rel), { bigint: true }).atimeNs;
  const show = (ns: bigint): string => (ns >= now - DAY_NS / 24n ? 'new' : String(ns));
  const old = (rel: string): void => {
    // atime older than mtime: relatime updates it at the next access
    fs.utimesSync(p(rel), Number((now - 3n * DAY_NS) / 1_000_000n) / 1000, Number((now - 2n * DAY_NS) / 1_000_000n) / 1000);
  };
  // utimes sets ctime from the fine-grained clock, an access sets atime from the coarse one (a
  // jiffy behind at most): until the coarse clock passes that ctime, relatime finds atime <= ctime
  // and updates again at the second access, on the kernel as on strata. Waiting makes it exact.
  const settle = (): void => void Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
  const log: unknown[] = [];
  const access = (what: string, rel: string, f: () => void): void => {
    f();
    const first = atime(rel);
    // The second access comes a few jiffies later, so that an update (strictatime) shows.
    settle();
    f();
    log.push([what, show(first), atime(rel) === first ? 'same' : 'changed']);
  };
  fs.writeFileSync(p('uf'), 'upper file');
  fs.copyFileSync('/bin/true', p('ubin'));
  fs.chmodSync(p('ubin'), 0o755);
  fs.mkdirSync(p('ud'));
  fs.writeFileSync(p('ud/x'), 'x');
  for (const rel of ['uf', 'ubin', 'ud', 'lf', 'ld']) if (rel.startsWith('u')) old(rel);
  settle();
  access('read upper file', 'uf', () => fs.readFileSync(p('uf')));
  access('read lower file', 'lf', () => fs.readFileSync(p('lf')));
  access('exec upper file', 'ubin', () => run(p('ubin'), []));
  access('list upper dir', 'ud', () => fs.readdirSync(p('ud')));
  access('list lower dir', 'ld', () => fs.readdirSync(p('ld')));
  access('list root', '', () => fs.readdirSync(mnt));
  // A chmod or chown moves only a directory's ctime: relatime updates its atime at the next listing,
  // which the kernel's cache of the listing (its entries did not change) must not keep from the daemon.
  for (const [what, change] of [['chmod', () => fs.chmodSync(p('ud'), 0o750)], ['chown', () => fs.chownSync(p('ud'), 1000, 1000)]] as const) {
    const before = atime('ud');
    settle();
    change();
    settle();
    fs.readdirSync(p('ud'));
    log.push([`list upper dir after a ${what}`, atime('ud') === before ? 'same' : 'changed']);
  }
  // The same after a rename of the directory, and after a copy-up into it (whose link moves its ctime;
  // its mtime is put back).
  for (const [what, from, to, change] of [['rename', 'ud', 'ud2', () => fs.renameSync(p('ud'), p('ud2'))], ['copy-up into it', 'ld', 'ld', () => fs.chmodSync(p('ld/y'), 0o600)]] as const) {
    fs.readdirSync(p(from));
    const before = atime(from);
    settle();
    change();
    settle();
    fs.readdirSync(p(to));
    log.push([`list dir after a ${what}`, atime(to) === before ? 'same' : 'changed']);
  }
  fs.renameSync(p('ud2'), p('ud'));
  // After a write (mtime newer than atime) relatime updates at the next read, also by another user.
  fs.appendFileSync(p('uf'), 'more');
  settle();
  access('read after a write, as another user', 'uf', () => run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'cat', p('uf')]));
  old('uf');
  settle();
  access('read after utimes with O_NOATIME', 'uf', () => {
    const fd = fs.openSync(p('uf'), fs.constants.O_RDONLY | fs.constants.O_NOATIME);
    fs.readSync(fd, Buffer.alloc(4), 0, 4, 0);
    fs.closeSync(fd);
  });
  // A symlink's target, once read, is kept by the kernel's FUSE cache: a change of the link (its ctime
  // moved) must drop it, for the next follow moves its atime on the kernel's overlay (relatime).
  fs.symlinkSync('uf', p('ul'));
  settle();
  const latime = (rel: string): bigint => fs.lstatSync(p(rel), { bigint: true }).atimeNs;
  const changes: [string, string, () => void][] = [
    ['chown', 'ul', () => fs.lchownSync(p('ul'), 1000, 1000)],
    ['utimes', 'ul', () => fs.lutimesSync(p('ul'), 1_500_000_000, 1_600_000_000)],
    ['rename', 'ul2', () => fs.renameSync(p('ul'), p('ul2'))],
    ['copy-up by chown', 'ls', () => fs.lchownSync(p('ls'), 1000, 1000)],
  ];
  for (const [what, rel, change] of changes) {
    const before = rel === 'ul2' ? latime('ul') : latime(rel);
    fs.readFileSync(p(rel === 'ul2' ? 'ul' : rel)); // (followed once before the change: its target cached)
    settle();
    const followed = rel === 'ul2' ? latime('ul') : latime(rel);
    change();
    settle();
    fs.readFileSync(p(rel));
    log.push([`follow symlink after a ${what}`, followed === before ? 'same' : 'changed', latime(rel) === followed ? 'same' : 'changed']);
  }
  return log;
}

for (const option of ['relatime', 'noatime', 'strictatime', 'nodiratime']) {
  test(`atime with -o ${option}: reads, exec and listings update it as on the kernel overlay`, (t) => {
    const layer = [{ t: 'file', p: 'lf', data: 'lower', mode: 0o644 }, { t: 'dir', p: 'ld' }, { t: 'file', p: 'ld/y', data: 'y' },
      { t: 'symlink', p: 'ls', target: 'lf' }] as const;
    const pair = setupPair(t, [layer], { options: option === 'relatime' ? [] : [option] });
    const now = BigInt(Date.now()) * 1_000_000n;
    // Lower atimes older than their mtimes, set in the layers themselves: a read would update them.
    for (const side of [pair.kernel, pair.strata]) for (const rel of ['lf', 'ld']) fs.utimesSync(path.join(side.lowers[0]!, rel), 1_500_000_000, 1_600_000_000);
    const k = atimeScenario(pair.kernel.mnt, now);
    const s = atimeScenario(pair.strata.mnt, now);
    if (option === 'strictatime') {
      // A second listing is served from the kernel's cache of the directory, which strata does not
      // see: under strictatime the kernel overlay updates the atime again, strata does not (README).
      for (const row of [k, s]) for (const r of row as string[][]) if (r[0]!.startsWith('list ')) r[2] = 'second listing: not compared';
      // So is a symlink's follow while the kernel keeps its target (before each change: README).
      for (const row of [k, s]) for (const r of row as string[][]) if (r[0]!.startsWith('follow symlink')) r[1] = 'follow of a kept target: not compared';
    }
    t.deepEqual(s, k);
    if (option === 'relatime') {
      t.deepEqual(k[0], ['read upper file', 'new', 'same'], 'the scenario sees relatime at work');
      t.deepEqual(k[6], ['list upper dir after a chmod', 'changed'], 'the kernel lists after a chmod with relatime');
      t.deepEqual(k.slice(8, 10), [['list dir after a rename', 'changed'], ['list dir after a copy-up into it', 'changed']], 'the kernel lists after a rename and a copy-up with relatime');
      t.deepEqual(k.slice(-4).map((r) => (r as string[])[2]), ['changed', 'changed', 'changed', 'changed'], 'the kernel follows symlinks after changes with relatime');
    }
    if (option === 'noatime') t.not((k[0] as string[])[1], 'new', 'noatime: no update');
  });
}

// telldir positions taken while reading a merged directory stay valid while names are removed
// and added and after the end was reached: seekdir back resumes the listing the reader started.
const SEEKDIR = DIRS + String.raw`
d = sys.argv[1]
dp = libc.opendir(d.encode())
def read(n=None):
    out = []
    while n is None or len(out) < n:
        ctypes.set_errno(0)
        e = libc.readdir(dp)
        if not e:
            if ctypes.get_errno(): raise OSError(ctypes.get_errno(), 'readdir')
            break
        out.append(e.contents.d_name.decode())
    return out
pos, first = [], []
for _ in range(300):
    pos.append(libc.telldir(dp)); first += read(1)
def change(k):
    for i in range(k, 2000, 40): os.unlink(os.path.join(d, 'lower-entry-with-a-long-name-%04d' % i))
    for i in range(25): open(os.path.join(d, 'new-%d-%02d' % (k, i)), 'w').close()
change(0)
libc.seekdir(dp, pos[100]); rest = read()
snapshot = first[:100] + rest
libc.seekdir(dp, pos[10]); b = read(20)
change(1)
libc.seekdir(dp, pos[250]); c = read()
libc.seekdir(dp, pos[299]); e = read(3)
libc.rewinddir(dp); again = read()
libc.closedir(dp)
print(json.dumps({
  'snapshot': len(snapshot), 'unique': len(set(snapshot)) == len(snapshot), 'first300': snapshot[:300] == first,
  'seek10': b == snapshot[10:30], 'seek250 after more changes': c == snapshot[250:], 'seek299': e == snapshot[299:302],
  'rewind': sorted(again) == sorted(['.', '..'] + os.listdir(d)), 'after rewind': len(again),
}))
`;

test('seekdir to telldir offsets of a merged directory resumes its listing while names come and go, as the kernel', (t) => {
  const names = Array.from({ length: 2000 }, (_, i) => `lower-entry-with-a-long-name-${String(i).padStart(4, '0')}`);
  const pair = setupPair(t, [(dir) => {
    fs.mkdirSync(path.join(dir, 'd'));
    for (const n of names) fs.writeFileSync(path.join(dir, 'd', n), '');
  }]);
  const probe = (mnt: string): Record<string, unknown> => {
    fs.writeFileSync(path.join(mnt, 'd', 'upper-entry'), 'u'); // a merged directory with an upper part
    return python(SEEKDIR, null, [path.join(mnt, 'd')]);
  };
  const k = probe(pair.kernel.mnt);
  t.deepEqual(probe(pair.strata.mnt), k);
  t.like(k, { snapshot: 2003, unique: true, seek10: true, 'seek250 after more changes': true, rewind: true });
});

test('statx reports the creation time (STATX_BTIME) of the layer object, as the kernel overlay', (t) => {
  const pair = setupPair(t, [[{ t: 'file', p: 'lower', data: 'l' }, { t: 'file', p: 'copied', data: 'c' }, { t: 'dir', p: 'dir' }]]);
  const btime = (p: string): string => run('stat', ['-c', '%w', p]).stdout.trim();
  const probe = (side: typeof pair.kernel): Record<string, unknown> => {
    const m = (rel: string): string => path.join(side.mnt, rel);
    fs.writeFileSync(m('new'), 'n');
    fs.appendFileSync(m('copied'), 'more');
    const out: Record<string, unknown> = {};
    for (const [rel, layer] of [['lower', side.lowers[0]!], ['dir', side.lowers[0]!], ['new', side.upper], ['copied', side.upper]] as const) {
      const shown = btime(m(rel));
      out[rel] = { known: shown !== '-', sameAsLayer: shown === btime(path.join(layer, rel)) };
    }
    return out;
  };
  const k = probe(pair.kernel);
  t.deepEqual(probe(pair.strata), k);
  t.deepEqual(k.new, { known: true, sameAsLayer: true });
});

const FALLOCATE = String.raw`
import ctypes, errno, hashlib, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
modes = {'plain': 0, 'keep-size': 1, 'punch-hole': 3, 'zero-range': 0x10, 'zero-range keep-size': 0x11,
         'collapse-range': 0x08, 'insert-range': 0x20, 'unshare-range': 0x40}
out = {}
for path in sys.argv[1:]:
    for name, mode in modes.items():
        with open(path, 'wb') as f: f.write(bytes(range(256)) * 4096)  # 1 MiB
        fd = os.open(path, os.O_RDWR)
        r = libc.fallocate(fd, mode, 65536, 131072)
        res = errno.errorcode.get(ctypes.get_errno(), '?') if r < 0 else 'ok'
        os.fsync(fd); os.close(fd)
        st = os.stat(path)
        data = open(path, 'rb').read()
        out[os.path.basename(path) + ' ' + name] = [res, st.st_size, st.st_blocks * 512 // 4096, hashlib.sha256(data).hexdigest()[:16]]
print(json.dumps(out))
`;

/** FUSE's fallocate takes only these modes (fs/fuse/file.c); the kernel refuses the others with EOPNOTSUPP. */
const THROUGH_FUSE = ['plain', 'keep-size', 'punch-hole', 'zero-range', 'zero-range keep-size'];

test('fallocate modes: allocate, keep-size, punch-hole and zero-range as on the kernel; collapse and insert refused by FUSE', (t) => {
  const pair = setupPair(t, [[{ t: 'file', p: 'lower', data: 'l', mode: 0o666 }]]);
  const probe = (mnt: string): Record<string, [string, number, number, string]> => {
    fs.writeFileSync(path.join(mnt, 'upper'), '');
    return python(FALLOCATE, null, [path.join(mnt, 'upper'), path.join(mnt, 'lower')]);
  };
  const k = probe(pair.kernel.mnt);
  const s = probe(pair.strata.mnt);
  for (const [key, kr] of Object.entries(k)) {
    const mode = key.slice(key.indexOf(' ') + 1);
    if (THROUGH_FUSE.includes(mode) || kr[0] !== 'ok') t.deepEqual(s[key], kr, key);
    else t.is(s[key]![0], 'ENOTSUP', `${key}: the kernel does it, FUSE cannot (README)`);
  }
  t.is(k['upper punch-hole']![0], 'ok');
  t.is(k['upper collapse-range']![0], 'ok', 'the kernel overlay collapses ranges on ext4');
});

test('timestamps at the edges of the upper filesystem range read back as on the kernel overlay', (t) => {
  const pair = setupPair(t, [[{ t: 'file', p: 'lower', data: 'l' }]]);
  const G = 1_000_000_000n;
  const times = [0n, -1n, 2n ** 31n, 2n ** 32n * G + 5n, 16725225600n * G + 999_999_999n, -(10n ** 10n) * G, 2n ** 34n * G, (2n ** 34n + 2n ** 33n) * G, 2n ** 62n];
  const probe = (mnt: string): unknown[] => times.map((ns) => {
    const p = path.join(mnt, 'lower');
    const r = python<string>(String.raw`
import json, os, sys
try:
    os.utime(sys.argv[1], ns=(int(sys.argv[2]), int(sys.argv[2])), follow_symlinks=False)
    st = os.stat(sys.argv[1], follow_symlinks=False)
    print(json.dumps('%d %d' % (st.st_mtime_ns, st.st_atime_ns)))
except OSError as e:
    print(json.dumps(e.strerror))`, null, [p, ns.toString()]);
    return [ns.toString(), r];
  });
  t.deepEqual(probe(pair.strata.mnt), probe(pair.kernel.mnt));
});

test('FIEMAP maps extents on the kernel overlay; through FUSE it never reaches the daemon (EOPNOTSUPP, README)', (t) => {
  const pair = setupPair(t, [[{ t: 'file', p: 'lower', data: 'x'.repeat(100_000) }]]);
  const fiemap = (mnt: string): string => python<string>(String.raw`
import errno, fcntl, json, struct, sys
buf = bytearray(struct.pack('=QQLLLL', 0, 2**64 - 1, 0, 0, 0, 0))
try:
    with open(sys.argv[1], 'rb') as f: fcntl.ioctl(f, 0xC020660B, buf)  # FS_IOC_FIEMAP, count only
    print(json.dumps('%d extents' % struct.unpack('=QQLLLL', buf)[3]))
except OSError as e:
    print(json.dumps(errno.errorcode[e.errno]))`, null, [path.join(mnt, 'lower')]);
  t.regex(fiemap(pair.kernel.mnt), /^[1-9]\d* extents$/);
  t.is(fiemap(pair.strata.mnt), 'ENOTSUP');
});

const TMPFILE = String.raw`
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def probe(label, d, flags=0, name='linked'):
    try:
        fd = os.open(d, os.O_TMPFILE | os.O_RDWR | flags, 0o640)
    except OSError as e:
        out[label] = errno.errorcode[e.errno]; return
    os.write(fd, b'tmpdata')
    st = os.fstat(fd)
    r = {'nlink': st.st_nlink, 'mode': oct(st.st_mode), 'uid': st.st_uid, 'size': st.st_size}
    dst = os.path.join(d, name)
    if libc.linkat(-100, b'/proc/self/fd/%d' % fd, -100, dst.encode(), 0x400) < 0:  # AT_SYMLINK_FOLLOW
        r['link'] = errno.errorcode[ctypes.get_errno()]
    else:
        st2, st3 = os.stat(dst), os.fstat(fd)
        r['link'] = [st2.st_nlink, oct(st2.st_mode), st2.st_uid, st2.st_size, st2.st_ino == st3.st_ino, st3.st_nlink, open(dst).read()]
    os.close(fd)
    out[label] = r
d = sys.argv[1]
probe('in the root', d)
probe('in a lower directory', os.path.join(d, 'ld'))
probe('O_EXCL cannot be linked', d, os.O_EXCL, 'excl')
probe('in a shared directory', os.path.join(d, 'pub'), 0, 'mine-%d' % os.getuid())
probe('over an existing name', d, 0, 'linked')
print(json.dumps(out))
`;

test('O_TMPFILE through the mount, then linkat of the result (FUSE_TMPFILE), as root and as another user', (t) => {
  const pair = setupPair(t, [[{ t: 'dir', p: 'ld' }, { t: 'file', p: 'ld/a', data: 'a' }, { t: 'dir', p: 'pub', mode: 0o777 }]]);
  const probe = (side: typeof pair.kernel): unknown => {
    const asRoot = python<unknown>(TMPFILE, null, [side.mnt]);
    const r = run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', PYTHON, '-c', TMPFILE, side.mnt]);
    const upper = ['linked', 'ld/linked', 'pub/mine-0', 'pub/mine-1000', 'excl'].map((n) => fs.existsSync(path.join(side.upper, n)));
    return { asRoot, asUser: r.status === 0 ? JSON.parse(r.stdout) as unknown : r.stderr, upper };
  };
  const k = probe(pair.kernel);
  t.deepEqual(probe(pair.strata), k);
  t.like(k as object, { upper: [true, true, true, true, false] });
});

/**
 * Mount points the kernel's overlay takes that cover layers: the lower layer itself (an overlay that makes
 * a directory writable in place), a directory inside the lower layer, the upper directory, and a directory
 * holding every layer and the work directory (strata then mounts without its metadata cache). Each is
 * mounted on the kernel and on strata, used, unmounted; what was seen and the uppers are compared. The work
 * directory as the mount point too, as the kernel takes it.
 */
test('a mount point that is a layer, lies inside one or holds them: mounted and used as on the kernel', (t) => {
  const scenario = `
import json, os, sys
m = sys.argv[1]
out = {'ls': sorted(os.listdir(m)), 'a': open(os.path.join(m, 'a')).read()}
with open(os.path.join(m, 'a'), 'a') as f: f.write('more')
os.mkdir(os.path.join(m, 'made'))
open(os.path.join(m, 'made', 'f'), 'w').write('new')
os.unlink(os.path.join(m, 'gone'))
out['sub'] = sorted(os.listdir(os.path.join(m, 'sub')))
out['after'] = sorted(os.listdir(m))
print(json.dumps(out))
`;
  // (with a pid file and a log file under the mount point, which strata opens before the mount covers them)
  const underMount = (b: string): string[] => ['--pid-file', `${b}/strata.pid`, '--log-file', `${b}/strata.log`];
  // (the same through a symlink to the mount point: strata resolves the names before it mounts)
  const throughLink = (b: string): string[] => {
    fs.symlinkSync(`${b}/w`, `${b}/lnk`);
    return ['--cache-dir', `${b}/lnk/cache`, '--log-file', `${b}/lnk/strata.log`];
  };
  const cases: Array<[string, (b: string) => string, ((b: string) => string[])?, string?]> = [
    ['the lower layer', (b) => `${b}/l1`],
    ['inside the lower layer', (b) => `${b}/l1/sub`],
    ['the upper directory', (b) => `${b}/u`],
    // (strata's metadata cache, in the work directory by default, is left out: reached through the mount it
    // would land in the union)
    ['the work directory', (b) => `${b}/w`],
    ['above every layer and the work directory', (b) => b, underMount],
    ['the work directory, with the cache and log named through a symlink to it', (b) => `${b}/w`, throughLink, 'w/strata.log'],
  ];
  for (const [what, mountpointOf, strataArgsOf, logAt = 'strata.log'] of cases) {
    const seen: Record<string, unknown> = {};
    const uppers: Record<string, string> = {};
    for (const side of ['kernel', 'strata'] as const) {
      const b = tempDir(t, 'mp');
      for (const d of ['l1/sub', 'l2', 'u', 'w']) fs.mkdirSync(path.join(b, d), { recursive: true });
      fs.writeFileSync(path.join(b, 'l1', 'a'), 'lower a');
      fs.writeFileSync(path.join(b, 'l1', 'gone'), 'g');
      fs.writeFileSync(path.join(b, 'l2', 'b'), 'lower b');
      const spec = { lowers: [`${b}/l1`, `${b}/l2`], upper: `${b}/u`, work: `${b}/w`, mountpoint: mountpointOf(b) };
      const mnt = side === 'kernel' ? kernelOverlay(t, spec) : strataMount(t, { ...spec, extraArgs: strataArgsOf?.(b) });
      seen[side] = python<unknown>(scenario, null, [mnt]);
      // Once the mount is idle (250 ms without requests) strata opens its metadata cache: a second look after
      // that (a cache reached through the mount hung the daemon there).
      run('sleep', ['0.8']);
      const again = run('ls', [mnt], { timeoutMs: 10_000 });
      t.is(again.status, 0, `${what}: ${side}: listed again once idle (${again.stderr.trim()})`);
      if (side === 'kernel') unmountQuietly(mnt);
      else strataUnmount(mnt);
      t.is(mountAt(mnt), undefined, `${what}: ${side} unmounted`);
      uppers[side] = run('sh', ['-c', `cd ${b}/u && find . -printf '%p %y %s\\n' | sort && cat a made/f`]).stdout;
      t.is(fs.readFileSync(path.join(b, 'l1', 'a'), 'utf8'), 'lower a', `${what}: ${side}: the lower layer is untouched`);
      if (side === 'strata' && strataArgsOf) {
        t.regex(fs.readFileSync(path.join(b, logAt), 'utf8'), /"msg":"mounted"/, `${what}: the daemon's log under the mount point`);
        t.false(fs.existsSync(path.join(b, 'strata.pid')), `${what}: the pid file is removed at exit`);
      }
    }
    t.deepEqual(seen.strata, seen.kernel, what);
    t.is(uppers.strata, uppers.kernel, `${what}: the uppers`);
  }
});
