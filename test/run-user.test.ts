// strata run as the image's User, or as --user/-u: uid, gid, supplementary groups and HOME from the
// container's /etc/passwd and /etc/group, as podman gives them for the same image (podman import
// --change USER=...,WORKDIR=...,ENV=..., saved and loaded into strata); the image's WorkingDir
// (made when missing, owned by the user, as podman makes it) and Env; an unknown user or group is
// one line, exit 125, and no container left; the files are read inside the container's root.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk, waitFor } from './helpers/exec.js';
import { PODMAN_RUN, type Podman, privatePodman, resetPodman, tarDir } from './helpers/image-store.js';
import { buildRootfs, testStore, type TestStore } from './helpers/images.js';
import { mountsUnder } from './helpers/mounts.js';
import { tempDir } from './helpers/tmp.js';

const PASSWD = `root:x:0:0:root:/root:/bin/sh
alice:x:1000:1001:Alice:/home/alice:/bin/sh
bob:x:1002:1002::/home/bob:/bin/sh
`;
const GROUP = `root:x:0:
wheel:x:10:root,alice
staff:x:50:alice,bob
alicegrp:x:1001:
bob:x:1002:
devs:x:2000:alice
`;

/** What the command prints: ids (groups sorted), HOME and FOO, the working directory and its owners. */
const PROBE = 'id -u; id -g; echo $(id -G | tr " " "\\n" | sort -n); echo "HOME=$HOME FOO=$FOO"; pwd; stat -c "%u:%g %a" /srv/work /srv/work/deep';

function rootfs(root: string): void {
  buildRootfs(root);
  for (const a of ['id', 'tr', 'sort']) fs.symlinkSync('busybox', path.join(root, 'bin', a));
  fs.writeFileSync(path.join(root, 'etc/passwd'), PASSWD);
  fs.writeFileSync(path.join(root, 'etc/group'), GROUP);
  fs.mkdirSync(path.join(root, 'home/alice'), { recursive: true });
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
}

interface Fixture {
  s: TestStore;
  podman: Podman;
}

/** The image localhost/users:1 (User alice, WorkingDir /srv/work/deep, Env FOO=bar) in podman and in a strata store. */
function fixture(t: ExecutionContext): Fixture {
  const base = tempDir(t, 'ru');
  rootfs(path.join(base, 'rootfs'));
  const podman = privatePodman(base);
  t.teardown(() => resetPodman(podman));
  const ok = (args: readonly string[]): string => {
    const r = podman(args);
    if (r.status !== 0) throw new Error(`podman ${args.join(' ')}: ${r.status}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  ok(['import', '--change', 'USER=alice', '--change', 'WORKDIR=/srv/work/deep', '--change', 'ENV FOO=bar',
    tarDir(path.join(base, 'rootfs'), path.join(base, 'rootfs.tar')), 'localhost/users:1']);
  const archive = path.join(base, 'users.tar');
  ok(['save', '-o', archive, 'localhost/users:1']);
  const s = testStore(t, base);
  s.ok(['image', 'load', '-i', archive]);
  const config = (JSON.parse(s.ok(['image', 'inspect', 'users:1'])) as { Config: { User: string; WorkingDir: string } }[])[0]!.Config;
  t.is(config.User, 'alice');
  t.is(config.WorkingDir, '/srv/work/deep');
  return { s, podman };
}

test.before(() => {
  if (run('sh', ['-c', 'command -v podman']).status !== 0) throw new Error('podman is not installed (make system-deps installs it)');
});

test('the image\'s User and --user/-u give the ids, groups, HOME and working directory podman gives', (t) => {
  const { s, podman } = fixture(t);
  const mine = (spec: string | null): string => s.ok(['run', '--rm', ...(spec === null ? [] : ['--user', spec]), 'users:1', 'sh', '-c', PROBE]);
  // What we expect, written out: the image's User (alice, in 4 groups by /etc/group), and an
  // explicit group (no supplementary groups).
  t.is(mine(null), '1000\n1001\n10 50 1001 2000\nHOME=/home/alice FOO=bar\n/srv/work/deep\n0:0 755\n1000:1001 755\n');
  t.is(mine('bob:staff'), '1002\n50\n50\nHOME=/home/bob FOO=bar\n/srv/work/deep\n0:0 755\n1002:50 755\n');
  // A uid without a passwd entry: gid 0, HOME /.
  t.is(mine('4242'), '4242\n0\n0\nHOME=/ FOO=bar\n/srv/work/deep\n0:0 755\n4242:0 755\n');
  for (const spec of [null, '0', 'root', 'alice', '1000', '1000:1000', 'alice:staff', 'bob', '1002', '4242', '4242:50', 'root:devs', ':50', 'bob:2000']) {
    const theirs = podman(['run', '--rm', ...PODMAN_RUN, ...(spec === null ? [] : ['--user', spec]), 'localhost/users:1', 'sh', '-c', PROBE]);
    t.is(theirs.status, 0, `podman --user ${String(spec)}: ${theirs.stderr}`);
    // One difference, kept on purpose: for a uid that /etc/passwd lacks, podman writes an entry
    // into the container's /etc/passwd with the working directory as its home, and HOME follows;
    // strata, like Docker, changes no file and sets HOME=/.
    const expected = spec?.startsWith('4242') ? theirs.stdout.replace('HOME=/srv/work/deep ', 'HOME=/ ') : theirs.stdout;
    t.is(mine(spec), expected, `--user ${String(spec)}`);
  }
  // --group-add: more supplementary groups, by name or GID, as podman adds them
  for (const args of [['--group-add', 'devs'], ['--user', 'bob', '--group-add', '4000', '--group-add', 'staff'], ['--user', '4242:50', '--group-add', 'devs,3000']]) {
    const theirs = podman(['run', '--rm', ...PODMAN_RUN, ...args, 'localhost/users:1', 'id', '-G']);
    t.is(theirs.status, 0, theirs.stderr);
    t.is(s.ok(['run', '--rm', ...args, 'users:1', 'id', '-G']).split(' ').map(Number).sort().join(' '),
      theirs.stdout.split(' ').map(Number).sort().join(' '), args.join(' '));
  }
  // -u is --user; the last one given counts; after the image name, -u is the command's.
  t.is(s.ok(['run', '--rm', '-u', 'bob', 'users:1', 'id', '-u']), '1002\n');
  t.is(s.ok(['run', '--rm', '-u', 'bob', '--user', '4242:50', 'users:1', 'id', '-u']), '4242\n');
  t.is(s.ok(['run', '--rm', 'users:1', 'id', '-u']), '1000\n');
  // Files the user makes are theirs, in the container's upper.
  s.ok(['run', '--name', 'w', '-u', 'bob', 'users:1', 'sh', '-c', 'echo x > /tmp/by-bob']);
  const rec = (JSON.parse(s.ok(['container', 'ls', '--json'])) as { upper: string }[])[0]!;
  const st = fs.lstatSync(path.join(rec.upper, 'tmp/by-bob'));
  t.deepEqual([st.uid, st.gid], [1002, 1002]);
  t.deepEqual(mountsUnder(s.dir), []);
});

/** Is the process there and not a zombie? */
function running(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0] !== 'Z';
  } catch {
    return false;
  }
}

/** A process's real, effective, saved and filesystem uids, as the host sees them. */
function hostUids(pid: number): string {
  return /^Uid:\s+(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!.split(/\s+/).join(' ');
}

test('--uidmap/--gidmap: a user namespace of its own, as podman\'s: the same ids and owners inside, the host\'s mapped ids outside, the container\'s ids stored; exec joins it; stop ends it', async (t) => {
  const { s, podman } = fixture(t);
  const map = ['--uidmap', '0:100000:65536', '--gidmap', '0:200000:65536'];
  // Inside, everything as without the namespace (the working directory made by alice, in it)
  t.is(s.ok(['run', '--rm', ...map, 'users:1', 'sh', '-c', PROBE]), s.ok(['run', '--rm', 'users:1', 'sh', '-c', PROBE]));
  const maps = 'cat /proc/self/uid_map /proc/self/gid_map | tr -s " " | sed "s/^ //"';
  t.is(s.ok(['run', '--rm', ...map, 'users:1', 'sh', '-c', maps]), '0 100000 65536\n0 200000 65536\n');
  // podman makes the same namespace for the same flags
  const theirs = podman(['run', '--rm', ...PODMAN_RUN, ...map, 'localhost/users:1', 'sh', '-c', maps]);
  t.is(theirs.status, 0, theirs.stderr);
  t.is(theirs.stdout, '0 100000 65536\n0 200000 65536\n');
  // A running one: its processes are the host's 100000+ ids; a host directory the host's root owns is out of
  // its root's reach; exec enters the namespace; what it makes is stored with the container's ids.
  const vol = tempDir(t, 'vol');
  fs.chmodSync(vol, 0o755);
  s.ok(['run', '-d', '--name', 'm', ...map, '-u', '0', '-v', `${vol}:/vol`, 'users:1', 'sh', '-c', 'touch /tmp/by-run; exec sleep 1000']);
  const pid = (JSON.parse(s.ok(['inspect', 'm'])) as { State: { Pid: number }; HostConfig: { UsernsMode: string; IDMappings: unknown } }[])[0]!;
  t.is(hostUids(pid.State.Pid), '100000 100000 100000 100000');
  t.deepEqual([pid.HostConfig.UsernsMode, pid.HostConfig.IDMappings], ['private', { UidMap: ['0:100000:65536'], GidMap: ['0:200000:65536'] }]);
  const inside = s.strata(['exec', 'm', 'sh', '-c', `${maps}; id -u; touch /tmp/by-exec; touch /vol/x`]);
  t.is(inside.stdout, '0 100000 65536\n0 200000 65536\n0\n');
  t.regex(inside.stderr, /\/vol\/x: Permission denied/);
  t.false(fs.existsSync(path.join(vol, 'x')));
  t.is(s.ok(['exec', '-u', 'alice', 'm', 'id', '-u']), '1000\n');
  const rec = (JSON.parse(s.ok(['container', 'ls', '--json'])) as { name: string; upper: string }[]).find((c) => c.name === 'm')!;
  for (const f of ['tmp/by-run', 'tmp/by-exec']) {
    const st = fs.lstatSync(path.join(rec.upper, f));
    t.deepEqual([st.uid, st.gid], [0, 0], f);
  }
  // cp while it runs: into it, what the host's root copies is the container's root's (with -a, the source's
  // ids as the container's ids); out of it with -a, the container's ids, as from its stopped layers
  fs.writeFileSync(path.join(vol, 'run-in'), 'r');
  fs.chownSync(path.join(vol, 'run-in'), 1234, 1235);
  s.ok(['cp', path.join(vol, 'run-in'), 'm:/tmp/run-in']);
  s.ok(['cp', '-a', path.join(vol, 'run-in'), 'm:/tmp/run-in-a']);
  t.is(s.ok(['exec', 'm', 'stat', '-c', '%u:%g %n', '/tmp/run-in', '/tmp/run-in-a']), '0:0 /tmp/run-in\n1234:1235 /tmp/run-in-a\n');
  for (const [f, ids] of [['tmp/run-in', [0, 0]], ['tmp/run-in-a', [1234, 1235]]] as const) {
    const st = fs.lstatSync(path.join(rec.upper, f));
    t.deepEqual([st.uid, st.gid], ids, `${f} as the upper stores it`);
  }
  s.ok(['exec', '-u', 'alice', 'm', 'touch', '/tmp/by-alice']);
  const out = tempDir(t, 'cp-out');
  s.ok(['cp', '-a', 'm:/tmp/by-alice', path.join(out, 'a')]);
  s.ok(['cp', 'm:/tmp/by-alice', path.join(out, 'b')]);
  t.deepEqual(['a', 'b'].map((n) => `${fs.lstatSync(path.join(out, n)).uid}:${fs.lstatSync(path.join(out, n)).gid}`), ['1000:1001', '0:0']); // (alice: 1000:1001)
  // an id the container's map leaves out has no owner there: one line
  fs.chownSync(path.join(vol, 'run-in'), 70000, 70000);
  const unmapped = s.strata(['cp', '-a', path.join(vol, 'run-in'), 'm:/tmp/run-in-b']);
  t.is(unmapped.status, 125, unmapped.stderr);
  t.regex(unmapped.stderr, /^strata: uid 70000 is not mapped into the user namespace of m \(its --uidmap\)\n$/);
  t.is(s.strata(['exec', 'm', 'sh', '-c', '[ -e /tmp/run-in-b ]']).status, 1, 'nothing copied');
  s.ok(['stop', '-t', '1', 'm']);
  t.regex(s.ok(['ps', '-a', '--filter', 'name=m']), /Exited \(137\)/);
  // (the SIGKILL that ends pid 1 comes as strata-run-ns dies, which is when stop has its status)
  t.true(await waitFor(() => !running(pid.State.Pid), 30_000), 'no process of it is left');
  // stopped: its layers are copied to and from as they store them
  fs.writeFileSync(path.join(vol, 'in'), 'x');
  s.ok(['cp', path.join(vol, 'in'), 'm:/tmp/in']);
  t.deepEqual([fs.lstatSync(path.join(rec.upper, 'tmp/in')).uid, fs.lstatSync(path.join(rec.upper, 'tmp/in')).gid], [0, 0]);
  s.ok(['commit', 'm', 'users:mapped']);
  t.is(s.ok(['run', '--rm', '-u', '0', 'users:mapped', 'stat', '-c', '%u:%g %n', '/tmp/by-run', '/tmp/by-exec', '/tmp/in']), '0:0 /tmp/by-run\n0:0 /tmp/by-exec\n0:0 /tmp/in\n');
  // maps that leave the container's root out, or overlap, are refused in one line
  for (const [bad, why] of [[['--uidmap', '1:100000:10'], /the container's root \(0\) must be mapped/], [['--uidmap', '0:100000:10', '--uidmap', '5:300000:10'], /overlap/],
    [['--gidmap', '0:1:0'], /expected CONTAINER:HOST:COUNT/]] as const) {
    const r = s.strata(['run', '--rm', ...bad, 'users:1', 'true']);
    t.is(r.status, 125, r.stderr);
    t.regex(r.stderr, why);
    t.is(r.stderr.trim().split('\n').length, 1);
  }
  t.deepEqual(mountsUnder(s.dir), []);
});

test('--userns=auto: ranges of /etc/subuid\'s and /etc/subgid\'s "containers" that no other container of the store has, as podman takes them', (t) => {
  const { s } = fixture(t);
  // (the host's files stay as they are: the commands run in a mount namespace where test files cover them)
  const dir = tempDir(t, 'sub');
  fs.writeFileSync(path.join(dir, 'subuid'), 'someone:100000:65536\ncontainers:300000:200000\n');
  fs.writeFileSync(path.join(dir, 'subgid'), 'containers:600000:200000\n');
  const script = `set -e
mount --bind ${dir}/subuid /etc/subuid; mount --bind ${dir}/subgid /etc/subgid
strata() { "$STRATA" "$@"; }
maps() { strata exec "$1" cat /proc/self/uid_map /proc/self/gid_map | tr -s ' ' | sed 's/^ //'; }
strata run -d --name a1 --userns=auto users:1 sleep 1000 >/dev/null
strata run -d --name a2 --userns=auto:size=3000 users:1 sleep 1000 >/dev/null
maps a1; maps a2
strata inspect --format '{{.HostConfig.UsernsMode}}' a1
strata rm -f a1 >/dev/null
echo "after rm:"; strata run --rm --userns=auto:size=100000 users:1 cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'
strata run --rm --userns=auto:size=150000 users:1 true 2>&1 || echo "exit $?"
strata run --rm -u 0 --userns=auto users:1 sh -c 'touch /tmp/x; stat -c "%u:%g" /tmp/x'
strata rm -f a2 >/dev/null
`;
  const env = { ...s.env, STRATA: path.resolve('bin/strata') };
  const r = run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { env, timeoutMs: 240_000 });
  t.is(r.status, 0, r.stderr);
  // (alice, the image's user, is 1000, in the group 2000: inside both)
  t.is(r.stdout, '0 300000 65536\n0 600000 65536\n0 365536 3000\n0 665536 3000\nauto\n' +
    // (a1's ids free again: a block that does not fit there goes after a2's)
    'after rm:\n0 368536 100000\n' +
    'strata: --userns=auto: no 150000 free ids left in the ranges of "containers" in /etc/subuid\nexit 125\n' +
    '0:0\n');
  // without ranges for "containers": one line
  const none = run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount --bind /dev/null /etc/subuid; "$STRATA" run --rm --userns=auto users:1 true`], { env });
  t.is(none.status, 125);
  t.regex(none.stderr, /^strata: --userns=auto: no ranges for the user "containers" in \/etc\/subuid \(add a line such as containers:\d+:\d+\)\n$/);
  const bad = s.strata(['run', '--rm', '--userns', 'keep-id', 'users:1', 'true']);
  t.is(bad.status, 125);
  t.regex(bad.stderr, /^strata: --userns keep-id: strata takes host, or auto\[:size=N\]/);
  t.is(s.strata(['run', '--rm', '--userns=auto', '--uidmap', '0:1:1', 'users:1', 'true']).status, 125);
  t.deepEqual(mountsUnder(s.dir), []);
});

test('stop ends a container whose command runs as another user: its change of ids no longer keeps pid 1 alive after strata-run-ns', async (t) => {
  // (the parent-death signal that takes pid 1 along is cleared when a process changes its ids)
  const { s } = fixture(t);
  for (const user of ['bob', '0']) {
    s.ok(['run', '-d', '--name', `u${user}`, '-u', user, 'users:1', 'sleep', '1000']);
    const pid = (JSON.parse(s.ok(['inspect', `u${user}`])) as { State: { Pid: number } }[])[0]!.State.Pid;
    s.ok(['stop', '-t', '1', `u${user}`]);
    t.regex(s.ok(['ps', '-a', '--filter', `name=u${user}`]), /Exited \(137\)/, user);
    t.true(await waitFor(() => !running(pid), 30_000), `no process of the container of ${user} is left`);
  }
  t.deepEqual(mountsUnder(s.dir), []);
});

test('an unknown user or group: one line, exit 125, no container left, as podman refuses it', (t) => {
  const { s, podman } = fixture(t);
  for (const [spec, message] of [['nobody', 'unable to find user nobody: no matching entries in passwd file'],
    ['alice:nogroup', 'unable to find group nogroup: no matching entries in group file']] as const) {
    const r = s.strata(['run', '--name', 'x', '--user', spec, 'users:1', 'true']);
    t.is(r.status, 125, spec);
    t.is(r.stderr, `strata: ${message}\n`);
    t.is(r.stdout, '');
    const theirs = podman(['run', '--rm', ...PODMAN_RUN, '--user', spec, 'localhost/users:1', 'true']);
    t.not(theirs.status, 0);
    t.true(theirs.stderr.includes(message), theirs.stderr);
  }
  const noGroup = s.strata(['run', '--name', 'x', '--group-add', 'nogroup', 'users:1', 'true']);
  t.deepEqual([noGroup.status, noGroup.stderr], [125, 'strata: unable to find group nogroup: no matching entries in group file\n']);
  const bad = s.strata(['run', '--user', '99999999999', 'users:1', 'true']);
  t.is(bad.status, 125);
  t.is(bad.stderr, 'strata: invalid user in "99999999999": ids must be in the range 0-2147483647\n');
  t.deepEqual(JSON.parse(s.ok(['container', 'ls', '--json'])), []);
  t.deepEqual(fs.readdirSync(path.join(s.dir, 'containers')), []);
  t.deepEqual(mountsUnder(s.dir), []);
});

test('/etc/passwd is read inside the container: an absolute symlink resolves in its root; no User: root, HOME /root', (t) => {
  const base = tempDir(t, 'rp');
  const root = path.join(base, 'rootfs');
  rootfs(root);
  // The host has no /etc/passwd.strata-test: only a lookup inside the container finds carol.
  fs.renameSync(path.join(root, 'etc/passwd'), path.join(root, 'etc/passwd.strata-test'));
  // (A comment and a blank line are skipped, as by runc; podman's working-directory code trips on them.)
  fs.appendFileSync(path.join(root, 'etc/passwd.strata-test'), '# a comment, and a blank line\n\ncarol:x:3000:3000::/home/carol:/bin/sh\n');
  fs.symlinkSync('/etc/passwd.strata-test', path.join(root, 'etc/passwd'));
  t.false(fs.existsSync('/etc/passwd.strata-test'));
  const tar = path.join(base, 'rootfs.tar');
  runOk('tar', ['--numeric-owner', '-C', root, '-cf', tar, '.']);
  const s = testStore(t, base);
  s.ok(['image', 'import', tar, 'plain:1']);
  t.is(s.ok(['run', '--rm', '-u', 'carol', 'plain:1', 'sh', '-c', 'id -u; id -g; echo $HOME; pwd']), '3000\n3000\n/home/carol\n/\n');
  t.is(s.ok(['run', '--rm', 'plain:1', 'sh', '-c', 'echo $(id -u) $(id -G) $HOME']), '0 0 10 /root\n');
});
