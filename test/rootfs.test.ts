// A layered Debian root filesystem, as users run one: scripts/build-rootfs.sh builds l0 (debootstrap
// minbase bookworm), l1 (packages installed with apt) and l2 (deletions, an opaque directory, edited
// and removed configs), cached outside the clone. strata mounts l2:l1:l0 with a fresh upper, and so
// does the kernel's overlayfs with its own; the same commands run in a chroot of each and their
// outputs must agree: a shell, dpkg -l / --verify, python, useradd, setuid/setgid programs, device
// nodes, a non-root user's EACCES, a local package through dpkg, sqlite's WAL, mappings and locks;
// the uppers must then hold the same objects. Then apt-get installs a package from the Debian archive on strata,
// and the kernel, mounting strata's upper over the same layers, must show the same installed tree.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run, type RunResult } from './helpers/exec.js';
import { mountAt, unmountQuietly } from './helpers/mounts.js';
import { repoRoot, strataBin } from './helpers/paths.js';
import { removeTree } from './helpers/tmp.js';
import { snapshot } from './helpers/snapshot.js';
import { diffSnapshots } from './helpers/compare.js';

interface Side {
  name: 'strata' | 'kernel';
  mnt: string;
  upper: string;
  work: string;
}

let root = '';
let lowers: string[] = [];
const sides: Side[] = [];

/** Mounts one side, with /proc and a resolv.conf (copied in, as a container runtime does) for apt. */
function mountSide(s: Side): void {
  const opts = `lowerdir=${lowers.join(':')},upperdir=${s.upper},workdir=${s.work}`;
  const r = s.name === 'strata' ? run(strataBin, ['mount', '-o', opts, s.mnt], { timeoutMs: 60_000 })
    : run('mount', ['-t', 'overlay', 'overlay', '-o', opts, s.mnt]);
  if (r.status !== 0) throw new Error(`${s.name} mount failed: ${r.stderr.trim()}`);
  const p = run('mount', ['-t', 'proc', 'proc', path.join(s.mnt, 'proc')]);
  if (p.status !== 0) throw new Error(`mounting /proc in ${s.mnt}: ${p.stderr.trim()}`);
}

function unmountSide(s: Side): void {
  unmountQuietly(path.join(s.mnt, 'proc'));
  if (s.name === 'strata' && mountAt(s.mnt)) run(strataBin, ['umount', s.mnt], { timeoutMs: 30_000 });
  unmountQuietly(s.mnt);
}

/** Runs `script` with /bin/sh in a chroot of the side (as `user` when given), with a clean environment. */
function inChroot(s: Side, script: string, user?: string, timeoutMs = 120_000): RunResult {
  const args = [...(user ? [`--userspec=${user}`] : []), s.mnt, '/usr/bin/env', '-i',
    'PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', 'LANG=C', 'DEBIAN_FRONTEND=noninteractive', '/bin/sh', '-c', script];
  return run('chroot', args, { timeoutMs });
}

/** Runs the script on both sides; they must agree on status, stdout and stderr. Returns strata's result. */
function same(t: import('ava').ExecutionContext, script: string, user?: string): RunResult {
  const [s, k] = sides.map((side) => inChroot(side, script, user));
  t.is(s!.status, k!.status, `exit status of: ${script}\nstrata stderr: ${s!.stderr}\nkernel stderr: ${k!.stderr}`);
  t.is(s!.stdout, k!.stdout, `stdout of: ${script}`);
  t.is(s!.stderr, k!.stderr, `stderr of: ${script}`);
  return s!;
}

test.before((t) => {
  t.timeout(45 * 60_000); // the first build on a fresh machine: debootstrap, then apt in a chroot
  const b = run('bash', [path.join(repoRoot, 'scripts', 'build-rootfs.sh')], { timeoutMs: 40 * 60_000 });
  if (b.status !== 0) throw new Error(`building the Debian rootfs failed:\n${b.stderr.trim().split('\n').slice(-8).join('\n')}`);
  lowers = b.stdout.trim().split('\n').at(-1)!.split(':');
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'rfs'));
  for (const name of ['strata', 'kernel'] as const) {
    const s: Side = { name, mnt: path.join(root, name), upper: path.join(root, `${name}-upper`), work: path.join(root, `${name}-work`) };
    for (const d of [s.mnt, s.upper, s.work]) fs.mkdirSync(d);
    sides.push(s);
    mountSide(s);
    fs.copyFileSync('/etc/resolv.conf', path.join(s.mnt, 'etc', 'resolv.conf'));
  }
});

test.after.always(() => {
  for (const s of sides) unmountSide(s);
  if (root) removeTree(root);
});

test.serial('a shell runs and sees the top layer', (t) => {
  const r = same(t, 'echo "hello from $(cat /etc/hostname)"; test -e /etc/motd || echo "motd removed"; ls /usr/share/man | wc -l; ls /usr/share/doc | wc -l');
  t.is(r.stdout, 'hello from strata-rootfs\nmotd removed\n0\n0\n');
});

test.serial('dpkg -l and dpkg --verify agree with the kernel', (t) => {
  const l = same(t, 'dpkg -l');
  t.regex(l.stdout, /^ii {2}python3 /m);
  t.regex(l.stdout, /^ii {2}passwd /m);
  same(t, 'dpkg --verify; echo "status $?"');
});

test.serial('python runs', (t) => {
  const r = same(t, `python3 -c 'import hashlib, json, os, sys; print(json.dumps({"v": sys.version_info[:2], "sha": hashlib.sha256(b"strata").hexdigest()[:8], "cwd": os.getcwd()}))'`);
  t.regex(r.stdout, /"v": \[3, 11\]/);
});

test.serial('useradd works; the changed files are copied up', (t) => {
  const r = same(t, 'useradd -m -s /bin/sh -u 1500 alice && id alice && ls -ld /home/alice | cut -d" " -f1,3,4 && grep alice /etc/passwd /etc/group && grep -c "^alice:" /etc/shadow');
  t.regex(r.stdout, /uid=1500\(alice\)/);
  for (const f of ['etc/passwd', 'etc/shadow', 'etc/group', 'etc/gshadow', 'home/alice']) {
    t.true(fs.existsSync(path.join(sides[0]!.upper, f)), `${f} is in strata's upper`);
  }
});

test.serial('setuid and setgid programs keep their bits through copy-up and work for a non-root user', (t) => {
  same(t, 'stat -c "%a %U:%G" /usr/bin/passwd /usr/bin/chage');
  // utimes copies them up; the bits must survive (chown would clear them, on the kernel too).
  const r = same(t, 'touch /usr/bin/passwd /usr/bin/chage && stat -c "%a %U:%G" /usr/bin/passwd /usr/bin/chage');
  t.is(r.stdout, '4755 root:root\n2755 root:shadow\n');
  const up = fs.statSync(path.join(sides[0]!.upper, 'usr/bin/passwd'));
  t.is(up.mode & 0o7777, 0o4755, 'the copy in the upper is setuid');
  // chage -l reads /etc/shadow through its setgid shadow group: it works only if the bit is honoured.
  const c = same(t, 'chage -l nobody | head -2', 'nobody:nogroup');
  t.regex(c.stdout, /Last password change/);
});

test.serial('device nodes: /dev/null from the image, and a new node made with mknod', (t) => {
  const r = same(t, 'echo discarded > /dev/null && head -c 4 /dev/zero | od -An -tx1 && mknod -m 666 /dev/strata-null c 1 3 && ' +
    'echo also-discarded > /dev/strata-null && cat /dev/strata-null | wc -c && stat -c "%F %t:%T %a" /dev/strata-null');
  t.is(r.stdout, ' 00 00 00 00\n0\ncharacter special file 1:3 666\n');
});

test.serial('a non-root user gets EACCES on root-owned files exactly as on the kernel', (t) => {
  const r = same(t, 'cat /etc/shadow; echo "shadow $?"; touch /root/x; echo "root dir $?"; ls /root; echo "ls $?"; ' +
    'echo hi > /etc/newfile; echo "etc $?"; echo hi >> /etc/passwd; echo "passwd $?"; mkdir /usr/x; echo "usr $?"; ' +
    'echo mine > /tmp/mine && cat /tmp/mine', 'nobody:nogroup');
  t.regex(r.stderr, /Permission denied/);
  t.regex(r.stdout, /shadow 1\n/);
  t.regex(r.stdout, /mine\n$/);
});

/**
 * A package built in the chroot (conffile, five files), for dpkg's own writes: database, diversions,
 * alternatives. (Its timestamps fixed: the compressed members of a .deb built a second later can have
 * another size, and the uppers are compared.)
 */
const LOCAL_PACKAGE = String.raw`
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/strata-t /tmp/pkg/etc
printf 'Package: strata-t\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n' > /tmp/pkg/DEBIAN/control
echo conf > /tmp/pkg/etc/strata-t.conf; echo /etc/strata-t.conf > /tmp/pkg/DEBIAN/conffiles
for i in 1 2 3 4 5; do echo $i > /tmp/pkg/usr/share/strata-t/f$i; done
SOURCE_DATE_EPOCH=1600000000 dpkg-deb --root-owner-group -b /tmp/pkg /tmp/t.deb >/dev/null; echo "built $?"
dpkg -i /tmp/t.deb >/dev/null; echo "installed $?"; dpkg -s strata-t | grep Status; dpkg -L strata-t | wc -l
echo changed >> /etc/strata-t.conf
dpkg -r strata-t >/dev/null; echo "removed $?"; dpkg -s strata-t | grep Status; cat /etc/strata-t.conf
dpkg -P strata-t >/dev/null 2>&1; echo "purged $?"; ls /usr/share/strata-t /etc/strata-t.conf 2>&1 | sed 's/.*: //'
dpkg-divert --local --rename --add /usr/bin/tac >/dev/null 2>&1; ls /usr/bin/tac*
dpkg-divert --local --rename --remove /usr/bin/tac >/dev/null; ls /usr/bin/tac*
update-alternatives --install /usr/bin/strata-pager strata-pager /usr/bin/tail 40 >/dev/null; readlink -f /usr/bin/strata-pager
update-alternatives --remove-all strata-pager; ls /usr/bin/strata-pager 2>&1 | sed 's/.*: //'
`;

test.serial('a local package: dpkg -i, -r and -P, dpkg-divert and update-alternatives agree with the kernel', (t) => {
  const r = same(t, LOCAL_PACKAGE);
  t.is(r.stdout, 'built 0\ninstalled 0\nStatus: install ok installed\n11\nremoved 0\nStatus: deinstall ok config-files\nconf\nchanged\n' +
    'purged 0\nNo such file or directory\nNo such file or directory\n/usr/bin/tac.distrib\n/usr/bin/tac\n/usr/bin/tail\nNo such file or directory\n');
});

/** sqlite's WAL (a shared mapping of its -shm file, fcntl locks), a shared writable mapping of a lower file, locks across a copy-up. */
const DATABASES_AND_LOCKS = String.raw`
import fcntl, mmap, os, sqlite3, struct
c = sqlite3.connect('/var/t.db'); print(c.execute('pragma journal_mode=wal').fetchone())
c.execute('create table t(a integer primary key, b text)')
for i in range(50):
    with c: c.executemany('insert into t(b) values (?)', [('x%d' % j,) for j in range(20)])
print(c.execute('select count(*), sum(length(b)) from t').fetchone(), sorted(n for n in os.listdir('/var') if n.startswith('t.db')))
c.execute('pragma wal_checkpoint(truncate)'); c.close()
print(sorted(n for n in os.listdir('/var') if n.startswith('t.db')), os.path.getsize('/var/t.db'))
fd = os.open('/etc/debian_version', os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:1] = b'Z'; m.flush(); m.close(); os.close(fd)
print(open('/etc/debian_version').read().strip()[:1])
a = os.open('/etc/group', os.O_RDONLY); fcntl.flock(a, fcntl.LOCK_EX)
b = os.open('/etc/group', os.O_RDWR)
try: fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB); print('flock: taken twice')
except OSError as e: print('flock', e.errno)
o = os.open('/etc/passwd', os.O_RDWR)
fcntl.fcntl(o, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))
try: fcntl.fcntl(os.open('/etc/passwd', os.O_RDWR), 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); print('ofd: taken twice')
except OSError as e: print('ofd', e.errno)
`;

test.serial('sqlite in WAL mode, a shared writable mapping of a lower file and locks across a copy-up agree with the kernel', (t) => {
  const r = same(t, `python3 - <<'EOF'\n${DATABASES_AND_LOCKS}EOF`);
  t.is(r.stdout, "('wal',)\n(1000, 2500) ['t.db', 't.db-shm', 't.db-wal']\n['t.db'] 20480\nZ\nflock 11\nofd 11\n");
});

test.serial('the uppers hold the same objects after the commands above', (t) => {
  // Names, types, modes, owners, link counts and sizes (not a directory's: the upper filesystem's business).
  const list = (upper: string): string => run('find', ['.', '-printf', '%p %y %m %U:%G %n %s\\n'], { cwd: upper }).stdout
    .split('\n').map((l) => (/^\S+ d /.test(l) ? l.replace(/ \d+$/, '') : l)).sort().join('\n');
  const strata = list(sides[0]!.upper);
  t.regex(strata, /^\.\/var\/t\.db f 644 0:0 1 20480$/m);
  t.regex(strata, /^\.\/etc\/debian_version f /m);
  t.is(strata, list(sides[1]!.upper));
});

test.serial('apt-get installs a package from the Debian archive; the kernel, mounting the upper, shows the same installed tree', (t) => {
  t.timeout(30 * 60_000); // the download, on a slow day
  const strata = sides[0]!;
  const apt = inChroot(strata, 'apt-get update -qq && apt-get install -y -qq file && file --version | head -1 && file /bin/sh', undefined, 15 * 60_000);
  t.is(apt.status, 0, `apt-get in the chroot failed:\n${apt.stdout.slice(-2000)}\n${apt.stderr.slice(-2000)}`);
  t.regex(apt.stdout, /ELF 64-bit|symbolic link/);
  const before = inChroot(strata, 'dpkg -l; dpkg -L file libmagic1 | sort; grep alice /etc/passwd');
  t.is(before.status, 0, before.stderr);
  // Trees are compared without /proc (unmounted first: a walk must not enter it).
  unmountQuietly(path.join(strata.mnt, 'proc'));
  const view = snapshot(strata.mnt);
  // Unmount strata; the kernel mounts strata's upper over the same layers.
  unmountSide(strata);
  const kernel: Side = { name: 'kernel', mnt: strata.mnt, upper: strata.upper, work: path.join(root, 'strata-work-k') };
  fs.mkdirSync(kernel.work);
  mountSide(kernel);
  sides[0] = kernel; // unmounted in after.always
  const after = inChroot(kernel, 'dpkg -l; dpkg -L file libmagic1 | sort; grep alice /etc/passwd');
  t.is(after.status, 0, after.stderr);
  t.is(after.stdout, before.stdout);
  t.regex(inChroot(kernel, 'file /bin/sh').stdout, /ELF 64-bit|symbolic link/);
  unmountQuietly(path.join(kernel.mnt, 'proc'));
  // The whole tree, every file's content included. /proc is a mount; atime and ctime are not kept
  // by a remount through another implementation; a directory's size and blocks are the upper
  // filesystem's business (the kernel adds xattrs, strata does not), and so are a regular file's
  // blocks across a remount: ext4 allocates delayed blocks at writeback, between the two views.
  const diffs = diffSnapshots(snapshot(kernel.mnt), view, {
    skipPaths: ['proc'],
    ignore: (_p, field, info) => field === 'ctimeNs' || field === 'blocks' || (info.type === 'dir' && field === 'size'),
    label: 'kernel over strata\'s upper vs strata',
  });
  t.deepEqual(diffs, []);
});
