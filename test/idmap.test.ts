// Owner mapping (-o uidmapping=, gidmapping=, squash_to_*; fuse-overlayfs's options, which
// containers/storage passes to a mount program for `podman run --uidmap`). The oracle is the
// kernel's overlay over idmapped layers (mount_setattr MOUNT_ATTR_IDMAP on the lower layer and on the
// upper and work directories' parent), which shows the layers' owners shifted the same way and stores
// callers' ids shifted back. Callers are host users inside the mapping: a privileged one (the
// container's root, uid 100000 with every capability) and unprivileged ones.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run } from './helpers/exec.js';
import { idmapMount } from './helpers/idmap-mount.js';
import { strataMount } from './helpers/mounts.js';
import { PYTHON } from './helpers/python.js';
import { tempDir } from './helpers/tmp.js';
import { IdMap } from '../src/union/idmap.js';
import { parseMountOptions, UsageError } from '../src/union/params.js';

const MAP = '0:100000:65536';

// Python: mounts a kernel overlay as uid and gid UID keeping every capability (the container's root
// as the host sees it): the overlay's creator must be inside the mapping of its idmapped upper.
const MOUNT_AS = String.raw`
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid = int(sys.argv[1])
libc.prctl(28, 1 << 2, 0, 0, 0)  # PR_SET_SECUREBITS: SECBIT_NO_SETUID_FIXUP (capabilities stay)
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
if libc.mount(b'overlay', sys.argv[2].encode(), b'overlay', 0, sys.argv[3].encode()) != 0:
    e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
`;

function must(r: ReturnType<typeof run>): string {
  if (r.status !== 0) throw new Error(`${r.command}: ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The lower layer: owners inside and outside the mapping, a setgid and a sticky directory, ACLs. */
function makeLower(dir: string): void {
  const sh = [
    'mkdir -p d e acl/def deep/a/b',
    'echo data > f; echo hi > e/h; echo five > e/five; echo deep > deep/a/b/c; echo far > far; echo acl > acl/file',
    'chown 5:6 e/h; chown 5:5 e/five; chown 7:7 d; chmod 2775 d; chmod 1777 e; chown 70000:70000 far; chown -R 3:4 deep',
    'setfacl -m u:5:rw,g:6:r acl/file; setfacl -d -m u:9:rwx,g:8:rx acl/def',
  ].join('\n');
  must(run('bash', ['-e', '-c', sh], { cwd: dir }));
}

interface Caller {
  name: string;
  argv: (script: string) => string[];
}
/** setpriv's capability list: all of this process's (the bounding set may lack some, as in some containers). */
function allCaps(): string {
  const prm = BigInt('0x' + (/^CapPrm:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'latin1'))?.[1] ?? '0'));
  const names = must(run('setpriv', ['--list-caps'])).split('\n').filter(Boolean);
  return ['+all', ...names.filter((_, i) => ((prm >> BigInt(i)) & 1n) === 0n).map((n) => `-${n}`)].join(',');
}
const ROOT_IN_MAP: Caller = {
  name: 'mapped root',
  argv: (s) => ['setpriv', '--reuid=100000', '--regid=100000', '--clear-groups', `--inh-caps=${allCaps()}`, `--ambient-caps=${allCaps()}`, 'bash', '-c', s],
};
const user = (uid: number, gid: number, groups: number[] = []): Caller => ({
  name: `${uid}:${gid}`,
  argv: (s) => ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, groups.length ? `--groups=${groups.join(',')}` : '--clear-groups', 'bash', '-c', s],
});

const STEPS: [Caller, string][] = [
  [ROOT_IN_MAP, 'echo a > new1; mkdir dir1; ln -s target sl1; mkfifo ff1; mkdir d/sub; echo in > d/sub/f'],
  [ROOT_IN_MAP, 'chown 100005:100007 new1; chown -h 100001:100002 sl1; chgrp 100007 ff1; chown 100003 dir1; chown 165000:165001 f'],
  [ROOT_IN_MAP, 'chmod 4755 new1; chmod 2711 dir1; touch -h -d @1000000000 sl1'],
  [ROOT_IN_MAP, 'setfacl -m u:100005:rw,g:100007:r new1; getfacl -n new1 acl/file'],
  [ROOT_IN_MAP, 'echo inherit > acl/def/new; mkdir acl/def/sub; getfacl -n acl/def/new acl/def/sub'],
  [ROOT_IN_MAP, 'chown 100009 acl/file; getfacl -n acl/file; chmod 640 e/h; chown 100006:100005 e/five'],
  [user(100005, 100005), 'echo more >> e/h; echo mine > e/u5; mkdir e/d5; stat -c "%u:%g %a %n" e/u5 e/d5 e/h'],
  [user(101000, 101000, [100007]), 'echo c > d/g1000; mkdir d/s1000; stat -c "%u:%g %a %n" d/g1000 d/s1000; rm -f e/u5; echo $?'],
  [user(101000, 101000), 'echo x >> new1; cat new1; chmod 600 new1; chown 101000 d/g1000 2>&1; rm d/g1000'],
  [user(100005, 100005), 'echo w >> new1; stat -c "%a" new1; rm e/u5; mv e/five e/moved'],
  [ROOT_IN_MAP, 'cp -a e ecopy; mv deep moved; rm -rf moved/a/b; ln new1 hard1; stat -c "%u:%g %h %n" hard1'],
];

function runSteps(mnt: string): string[] {
  return STEPS.map(([who, sh]) => {
    const argv = who.argv(sh);
    const r = run(argv[0]!, argv.slice(1), { cwd: mnt, env: { ...process.env, LC_ALL: 'C' } });
    return `[${who.name}] ${sh}\n${(r.stdout + r.stderr).split(mnt).join('.')}exit ${r.status}`;
  });
}

/** Owners, modes and types of a tree, and its ACLs (numeric ids), names relative to `dir`. */
function treeOf(dir: string): string {
  const list = must(run('find', ['.', '-printf', '%U:%G %m %y %p\n'], { cwd: dir })).split('\n').filter(Boolean).sort();
  const acls = run('bash', ['-c', 'find . ! -type l -print0 | sort -z | xargs -0 getfacl -n -P'], { cwd: dir }).stdout;
  return `${list.join('\n')}\n${acls}`;
}

test.serial('uidmapping= and gidmapping=: owners, creates, chown, setgid, sticky and ACLs as on the kernel\'s overlay over idmapped layers', (t) => {
  const dir = tempDir(t, 'idm');
  const lower = path.join(dir, 'lower');
  fs.mkdirSync(lower);
  makeLower(lower);
  // the kernel: the lower and the upper's parent idmapped; the overlay's creator must be inside the mapping
  const kroot = path.join(dir, 'kroot');
  for (const d of ['upper', 'work']) fs.mkdirSync(path.join(kroot, d), { recursive: true });
  idmapMount(t, lower, path.join(dir, 'klower'), MAP);
  idmapMount(t, kroot, path.join(dir, 'kidm'), MAP);
  const kmnt = path.join(dir, 'k');
  fs.mkdirSync(kmnt);
  must(run(PYTHON, ['-c', MOUNT_AS, '100000', kmnt,
    `lowerdir=${dir}/klower,upperdir=${dir}/kidm/upper,workdir=${dir}/kidm/work`]));
  t.teardown(() => run('umount', ['-l', kmnt]));
  // strata: the same lower directory, as it is, and the mapping as options
  for (const d of ['upper', 'work']) fs.mkdirSync(path.join(dir, 's', d), { recursive: true });
  const smnt = strataMount(t, { lowers: [lower], upper: path.join(dir, 's', 'upper'), work: path.join(dir, 's', 'work'),
    options: [`uidmapping=${MAP}`, `gidmapping=:${MAP}`] });

  t.is(treeOf(smnt), treeOf(kmnt), 'the merged trees before any change');
  const k = runSteps(kmnt);
  const s = runSteps(smnt);
  for (let i = 0; i < STEPS.length; i++) t.is(s[i], k[i], `step ${i}`);
  t.is(treeOf(smnt), treeOf(kmnt), 'the merged trees after the changes');
  t.is(treeOf(path.join(dir, 's', 'upper')), treeOf(path.join(kroot, 'upper')), 'the uppers hold the same owners (the layers\' ids)');
  t.is(must(run('stat', ['-c', '%u:%g', path.join(dir, 's', 'upper', 'new1')])).trim(), '5:7', 'a chown to 100005:100007 is stored as 5:7');
});

test.serial('a lower layer on an idmapped mount is read with the ids it stores when a mapping is given (podman 4 passes both)', (t) => {
  const dir = tempDir(t, 'idm');
  const lower = path.join(dir, 'lower');
  fs.mkdirSync(lower);
  makeLower(lower);
  idmapMount(t, lower, path.join(dir, 'idmapped'), MAP);
  for (const m of ['a', 'b', 'c']) fs.mkdirSync(path.join(dir, m));
  const opts = [`uidmapping=${MAP}`, `gidmapping=${MAP}`];
  const plain = strataMount(t, { lowers: [lower], options: opts, mountpoint: path.join(dir, 'a') });
  const viaIdmap = strataMount(t, { lowers: [path.join(dir, 'idmapped')], options: opts, mountpoint: path.join(dir, 'b') });
  const view = treeOf(plain);
  t.true(view.includes('100005:100006 644 f ./e/h') && view.includes('65534:65534 644 f ./far'), 'the mapping shifts stored owners; an unmapped one shows as the overflow id');
  t.is(treeOf(viaIdmap), view, 'the same owners through the idmapped mount as through the directory');
  // without a mapping, an idmapped layer is shown as its mount shows it (as the kernel's overlay does)
  const noMap = strataMount(t, { lowers: [path.join(dir, 'idmapped')], mountpoint: path.join(dir, 'c') });
  t.true(treeOf(noMap).includes('100005:100006 644 f ./e/h'));
});

test.serial('squash_to_uid= and squash_to_gid= show one owner; what callers create keeps their ids', (t) => {
  const dir = tempDir(t, 'idm');
  const lower = path.join(dir, 'lower');
  fs.mkdirSync(lower);
  makeLower(lower);
  for (const d of ['upper', 'work', 'm', 'r']) fs.mkdirSync(path.join(dir, d));
  const mnt = strataMount(t, { lowers: [lower], upper: path.join(dir, 'upper'), work: path.join(dir, 'work'),
    options: ['squash_to_uid=1000', 'squash_to_gid=1001'], mountpoint: path.join(dir, 'm') });
  const owners = new Set(must(run('find', ['.', '-printf', '%U:%G\n'], { cwd: mnt })).split('\n').filter(Boolean));
  t.deepEqual([...owners], ['1000:1001']);
  must(run('setpriv', ['--reuid=1000', '--regid=1001', '--clear-groups', 'bash', '-c', 'echo x > e/new'], { cwd: mnt }));
  t.is(must(run('stat', ['-c', '%u:%g', path.join(dir, 'upper', 'e', 'new')])).trim(), '1000:1001');
  must(run('chown', ['4242:4343', path.join(mnt, 'f')]));
  t.is(must(run('stat', ['-c', '%u:%g', path.join(dir, 'upper', 'f')])).trim(), '4242:4343', 'a chown stores the ids given');
  t.is(must(run('stat', ['-c', '%u:%g', path.join(mnt, 'f')])).trim(), '1000:1001', 'and the mount still shows the squashed owner');
  // squash_to_root
  const root = strataMount(t, { lowers: [lower], options: ['squash_to_root'], mountpoint: path.join(dir, 'r') });
  t.deepEqual([...new Set(must(run('find', ['.', '-printf', '%U:%G\n'], { cwd: root })).split('\n').filter(Boolean))], ['0:0']);
});

test('the mapping options as fuse-overlayfs reads them: triples, a leading colon, repeated options adding ranges; the lookups both ways', (t) => {
  const p = parseMountOptions(['lowerdir=/a,uidmapping=:0:100000:1:1:200001:10,uidmapping=500:0:1', 'gidmapping=0:100000:65536,squash_to_gid=7']);
  t.deepEqual(p.ids.uids, [{ stored: 0, shown: 100000, count: 1 }, { stored: 1, shown: 200001, count: 10 }, { stored: 500, shown: 0, count: 1 }]);
  const m = new IdMap(p.ids);
  const overflow = Number(fs.readFileSync('/proc/sys/kernel/overflowuid', 'latin1'));
  t.deepEqual([0, 1, 10, 11, 500].map((id) => m.uidOut(id)), [100000, 200001, 200010, overflow, 0]);
  t.deepEqual([100000, 200005, 0, 5].map((id) => m.uidIn(id)), [0, 5, 500, overflow]);
  t.is(m.gidOut(3), 7, 'squash_to_gid shows one group');
  t.is(m.gidIn(100003), 3, 'and what is written is still mapped back');
  t.is(new IdMap(parseMountOptions(['lowerdir=/a,squash_to_root']).ids).uidOut(1234), 0);
  t.is(new IdMap(parseMountOptions(['lowerdir=/a,squash_to_root']).ids).uidIn(1234), 1234, 'no mapping: what is written keeps the caller\'s id');
  for (const bad of ['uidmapping=0:1', 'uidmapping=0:1:0', 'uidmapping=a:1:2', 'gidmapping=4294967295:0:2', 'squash_to_uid=-1']) {
    t.throws(() => parseMountOptions([`lowerdir=/a,${bad}`]), { instanceOf: UsageError }, bad);
  }
});
