// The command line: mounting in its three forms (strata mount, the fuse-overlayfs form, the
// mount(8) helper), the ways a mount ends (strata umount, umount, fusermount3 -u, lazy umount,
// SIGTERM) and that each ends the daemon, options, and refusals of bad input that leave nothing
// mounted, running or created.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { diffSnapshots } from './helpers/compare.js';
import { run, runWithPipes, waitFor, type RunResult } from './helpers/exec.js';
import { materializeLayers } from './helpers/layers.js';
import { mountAt, strataUnmount } from './helpers/mounts.js';
import { mountHelper, strataBin } from './helpers/paths.js';
import { holdsDevFuse, isAlive, processesTagged, taggedEnv } from './helpers/processes.js';
import { snapshot } from './helpers/snapshot.js';
import { tempDir, tmpfsDir } from './helpers/tmp.js';

interface Fixture {
  root: string;
  /** top layer */
  a: string;
  /** bottom layer */
  b: string;
  /** an empty directory to mount on */
  mnt: string;
}

function fixture(t: ExecutionContext): Fixture {
  const root = tempDir(t, 'c');
  const [a, b] = materializeLayers(root, [
    [
      { path: 'top', kind: 'file', content: 'top\n' },
      { path: 'shared', kind: 'file', content: 'from a\n' },
      { path: 'sub/x', kind: 'file', content: 'x\n' },
    ],
    [
      { path: 'low', kind: 'file', content: 'low\n' },
      { path: 'shared', kind: 'file', content: 'from b\n' },
    ],
  ]);
  const mnt = path.join(root, 'mnt');
  fs.mkdirSync(mnt);
  return { root, a: a!, b: b!, mnt };
}

/** The merged view of the fixture, as a string that is easy to compare. */
function view(mnt: string): string {
  return `${fs.readdirSync(mnt).sort().join(' ')} | shared=${fs.readFileSync(path.join(mnt, 'shared'), 'utf8').trim()}`;
}
const EXPECTED_VIEW = 'low shared sub top | shared=from a';

/**
 * Prepares a tagged environment for a command that may leave a daemon behind, and registers
 * cleanup: unmount, then SIGKILL for anything still carrying the tag (only our own processes).
 */
function tagged(t: ExecutionContext, mnt: string, extraEnv: NodeJS.ProcessEnv = {}): { tag: string; env: NodeJS.ProcessEnv } {
  const te = taggedEnv(extraEnv);
  t.teardown(() => {
    strataUnmount(mnt);
    for (const p of processesTagged(te.tag)) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
  return te;
}

function daemonsOf(tag: string): number[] {
  return processesTagged(tag)
    .map((p) => p.pid)
    .filter(holdsDevFuse);
}

function stderrLines(r: RunResult): string[] {
  return r.stderr.split('\n').filter((l) => l.trim() !== '');
}

/** Mounts the fixture with `strata mount`, checks it is live and served by a background daemon. */
async function mountFixture(t: ExecutionContext, f: Fixture, args: string[] = []): Promise<{ tag: string; env: NodeJS.ProcessEnv; daemons: number[] }> {
  const { tag, env } = tagged(t, f.mnt);
  const r = await runWithPipes(strataBin, ['mount', ...args, '-o', `lowerdir=${f.a}:${f.b}`, f.mnt], { env });
  t.is(r.status, 0, `${r.command}: ${r.stderr}`);
  t.is(mountAt(f.mnt)?.fstype, 'fuse.strata');
  const daemons = daemonsOf(tag);
  t.is(daemons.length, 1, `one daemon process serves the mount (found ${daemons.length})`);
  return { tag, env, daemons };
}

async function assertDaemonGone(t: ExecutionContext, f: Fixture, tag: string): Promise<void> {
  t.true(await waitFor(() => mountAt(f.mnt) === undefined, 10_000), 'the mount is gone');
  // A daemon exits within a second; on a machine busy with other tests it has taken over 10 s.
  const gone = await waitFor(() => processesTagged(tag).length === 0, 60_000);
  t.true(gone, `processes still running after the unmount: ${processesTagged(tag).map((p) => `${p.pid} ${p.cmdline.join(' ')}`).join('; ')}`);
}

// ---------------------------------------------------------------------------------------------
// Mounting and unmounting

test('strata mount: exit 0 with the mount live, the daemon in the background with its inherited pipes closed', async (t) => {
  const f = fixture(t);
  const { tag, env } = tagged(t, f.mnt);
  const r = await runWithPipes(strataBin, ['mount', '-o', `lowerdir=${f.a}:${f.b}`, f.mnt], { env });
  t.is(r.status, 0, r.stderr);
  t.not(r.pipesClosedAfterMs, null, 'stdout/stderr pipes stay open after the command exited: the daemon must close what it inherited (podman waits for EOF)');
  // live at once, no waiting
  t.is(view(f.mnt), EXPECTED_VIEW);
  const m = mountAt(f.mnt);
  t.is(m?.fstype, 'fuse.strata');
  t.true(m?.options.includes('ro'), `a lowerdir-only mount is read-only: ${m?.options.join(',')}`);
  t.is(daemonsOf(tag).length, 1);
  const u = run(strataBin, ['umount', f.mnt], { env });
  t.is(u.status, 0, u.stderr);
  await assertDaemonGone(t, f, tag);
});

for (const [how, unmount] of [
  ['umount', (mnt: string) => run('umount', [mnt])],
  ['fusermount3 -u', (mnt: string) => run('fusermount3', ['-u', mnt])],
  ['umount -l (lazy)', (mnt: string) => run('umount', ['-l', mnt])],
] as const) {
  test(`${how} ends the daemon`, async (t) => {
    const f = fixture(t);
    const { tag } = await mountFixture(t, f);
    t.is(view(f.mnt), EXPECTED_VIEW);
    const r = unmount(f.mnt);
    t.is(r.status, 0, r.stderr);
    await assertDaemonGone(t, f, tag);
  });
}

test('SIGTERM to the daemon unmounts and it exits', async (t) => {
  const f = fixture(t);
  const { tag, daemons } = await mountFixture(t, f);
  process.kill(daemons[0]!, 'SIGTERM');
  await assertDaemonGone(t, f, tag);
  t.false(isAlive(daemons[0]!));
});

for (const c of [
  { name: 'throws', code: 'throw new Error("injected daemon failure");', expect: /daemon exited before the mount was live \(exit status 1\): Error: injected daemon failure$/ },
  { name: 'is killed', code: 'process.kill(process.pid, "SIGKILL");', expect: /daemon exited before the mount was live \(killed by SIGKILL\)$/ },
]) {
  test(`a daemon that ${c.name} before its mount is live: one line says why, exit 1, nothing mounted or running`, async (t) => {
    const f = fixture(t);
    // Code loaded into every node process of the command; it acts only in the daemon.
    const inject = path.join(f.root, 'inject.mjs');
    fs.writeFileSync(inject, `if (process.argv.includes('__daemon')) { ${c.code} }\n`);
    const { tag, env } = tagged(t, f.mnt, { NODE_OPTIONS: `--import=${inject}` });
    const r = await runWithPipes(strataBin, ['mount', '-o', `lowerdir=${f.a}:${f.b}`, f.mnt], { env });
    t.is(r.status, 1);
    t.deepEqual(stderrLines(r).length, 1, r.stderr);
    t.regex(r.stderr.trim(), c.expect);
    t.is(mountAt(f.mnt), undefined);
    t.true(await waitFor(() => processesTagged(tag).length === 0, 30_000));
  });
}

for (const c of [
  { name: 'throws', code: 'throw new Error("injected failure after the mount");' },
  { name: 'rejects a promise nobody awaits', code: 'void Promise.reject(new Error("injected failure after the mount"));' },
]) {
  test(`a daemon that ${c.name} once its mount is live: the error is in its log and in strata status, strata umount detaches the mount`, async (t) => {
    const f = fixture(t);
    const inject = path.join(f.root, 'inject.mjs');
    // (the flag file starts it: the daemon's first second, when the mount comes up, stays out of it)
    const go = path.join(f.root, 'go');
    fs.writeFileSync(inject, `if (process.argv.includes('__daemon')) { const fs = await import('node:fs');
      const timer = setInterval(() => { if (fs.existsSync(${JSON.stringify(go)})) { clearInterval(timer); ${c.code} } }, 50); }\n`);
    const { tag, env } = tagged(t, f.mnt, { NODE_OPTIONS: `--import=${inject}` });
    const log = path.join(f.root, 'daemon.log');
    const r = await runWithPipes(strataBin, ['mount', '--log-file', log, '-o', `lowerdir=${f.a}:${f.b}`, f.mnt], { env });
    t.is(r.status, 0, r.stderr);
    t.is(view(f.mnt), EXPECTED_VIEW);
    fs.writeFileSync(go, '');
    t.true(await waitFor(() => processesTagged(tag).length === 0, 10_000), 'the daemon ended');
    const line = fs.readFileSync(log, 'utf8').split('\n').find((l) => l.includes('"level":60'));
    t.truthy(line, 'a fatal line in the log');
    t.regex(line ?? '', /"message":"injected failure after the mount".*"msg":"the daemon failed/);
    const status = run(strataBin, ['status', f.mnt]);
    t.is(status.status, 0, status.stderr);
    t.regex(status.stdout, /: daemon failed at \S+: Error: injected failure after the mount \(strata umount clears it\)\n/);
    t.is(run(strataBin, ['umount', f.mnt]).status, 0);
    t.is(mountAt(f.mnt), undefined);
  });
}

// The union core answers some errors with shared frozen error objects; pino's serializer cannot mark
// those, and the request that logged one went unanswered (with a log file, or in the foreground).
test('with a log file, a request answered with EIO is answered and logged', async (t) => {
  const root = tempDir(t, 'c');
  for (const d of ['l/d2/s', 'u', 'w', 'm']) fs.mkdirSync(path.join(root, d), { recursive: true });
  const mnt = path.join(root, 'm');
  const log = path.join(root, 'daemon.log');
  const { env } = tagged(t, mnt);
  const r = await runWithPipes(strataBin, ['mount', '--log-file', log, '-o', `lowerdir=${root}/l,upperdir=${root}/u,workdir=${root}/w`, mnt], { env });
  t.is(r.status, 0, r.stderr);
  // (a removed lower directory whose parent was removed too: a change through its descriptor is EIO, as on the kernel)
  const py = run('python3', ['-c', `
import errno, os, signal, sys
signal.alarm(20)
os.chdir(sys.argv[1])
s = os.open('d2/s', os.O_RDONLY | os.O_DIRECTORY)
os.rmdir('d2/s'); os.rmdir('d2'); os.mkdir('d2')
try:
    os.fchmod(s, 0o700); print('ok')
except OSError as e:
    print(errno.errorcode[e.errno])
`, mnt], { timeoutMs: 30_000 });
  t.is(py.stdout.trim(), 'EIO', py.stderr);
  t.regex(fs.readFileSync(log, 'utf8'), /"code":"EIO".*"op":"SETATTR","msg":"request failed"/);
  t.is(run(strataBin, ['umount', mnt]).status, 0);
});

test('after a lazy umount the daemon serves open files until they are closed, then exits', async (t) => {
  const f = fixture(t);
  const { tag } = await mountFixture(t, f);
  const fd = fs.openSync(path.join(f.mnt, 'shared'), 'r');
  t.is(run('umount', ['-l', f.mnt]).status, 0);
  t.is(mountAt(f.mnt), undefined, 'detached at once');
  const buf = Buffer.alloc(100);
  t.is(buf.subarray(0, fs.readSync(fd, buf, 0, 100, 0)).toString(), 'from a\n', 'the open file still reads');
  t.true(daemonsOf(tag).length === 1, 'the daemon still serves the open file');
  fs.closeSync(fd);
  await assertDaemonGone(t, f, tag);
});

test('after the daemon is killed (SIGKILL), strata umount removes the dead mount and the mountpoint can be used again', async (t) => {
  const f = fixture(t);
  const { tag, daemons } = await mountFixture(t, f);
  process.kill(daemons[0]!, 'SIGKILL');
  t.true(await waitFor(() => processesTagged(tag).length === 0, 30_000));
  // ENOTCONN once the daemon's /dev/fuse is closed; ECONNABORTED if the connection was also aborted
  const dead = t.throws(() => fs.readdirSync(f.mnt)) as NodeJS.ErrnoException | undefined;
  t.true(['ENOTCONN', 'ECONNABORTED'].includes(dead?.code ?? ''), `reading the dead mount: ${dead?.code}`);
  const r = run(strataBin, ['umount', f.mnt]);
  t.is(r.status, 0, r.stderr);
  t.is(mountAt(f.mnt), undefined);
  const again = await mountFixture(t, f);
  t.is(view(f.mnt), EXPECTED_VIEW);
  t.is(run(strataBin, ['umount', f.mnt]).status, 0);
  await assertDaemonGone(t, f, again.tag);
});

test('the fuse-overlayfs form: strata -o lowerdir=... MOUNTPOINT', async (t) => {
  const f = fixture(t);
  const { tag, env } = tagged(t, f.mnt);
  const r = await runWithPipes(strataBin, ['-o', `lowerdir=${f.a}:${f.b}`, f.mnt], { env });
  t.is(r.status, 0, r.stderr);
  t.is(view(f.mnt), EXPECTED_VIEW);
  t.is(mountAt(f.mnt)?.fstype, 'fuse.strata');
  t.is(run('umount', [f.mnt]).status, 0);
  await assertDaemonGone(t, f, tag);
});

test('as podman calls it: from the storage directory, relative symlinked layers, empty option items, pipes', async (t) => {
  const f = fixture(t);
  // overlay/l/SHORTID -> ../ID/diff, passed relative to the working directory
  fs.mkdirSync(path.join(f.root, 'l'));
  fs.symlinkSync(`../${path.basename(f.a)}`, path.join(f.root, 'l', 'AAAAAA'));
  fs.symlinkSync(`../${path.basename(f.b)}`, path.join(f.root, 'l', 'BBBBBB'));
  const { tag, env } = tagged(t, f.mnt);
  const r = await runWithPipes(strataBin, ['-o', 'lowerdir=l/AAAAAA:l/BBBBBB,,', f.mnt], { env, cwd: f.root });
  t.is(r.status, 0, r.stderr);
  t.not(r.pipesClosedAfterMs, null, 'the daemon kept the inherited stderr pipe open');
  t.is(view(f.mnt), EXPECTED_VIEW);
  // the layers were resolved at mount time: moving the links away does not matter
  fs.renameSync(path.join(f.root, 'l'), path.join(f.root, 'l.moved'));
  t.is(view(f.mnt), EXPECTED_VIEW);
  t.is(run('fusermount3', ['-u', f.mnt]).status, 0);
  await assertDaemonGone(t, f, tag);
});

test('generic mount options (rw, dev, suid, noatime) and empty items (a,,b and a trailing comma) are accepted', async (t) => {
  const f = fixture(t);
  for (const opts of [`rw,lowerdir=${f.a}:${f.b},dev,suid,noatime`, `lowerdir=${f.a}:${f.b},,noatime,`, `,lowerdir=${f.a}:${f.b}`]) {
    const { tag, env } = tagged(t, f.mnt);
    const r = run(strataBin, ['mount', '-o', opts, f.mnt], { env });
    t.is(r.status, 0, `-o ${opts}: ${r.stderr}`);
    t.is(view(f.mnt), EXPECTED_VIEW, opts);
    if (opts.includes('noatime')) t.true(mountAt(f.mnt)?.options.includes('noatime'), `noatime reaches the kernel: ${mountAt(f.mnt)?.options.join(',')}`);
    t.is(run(strataBin, ['umount', f.mnt]).status, 0);
    await assertDaemonGone(t, f, tag);
  }
});

test('the mount(8) helper, run as mount(8) runs it: minimal PATH and environment', async (t) => {
  const f = fixture(t);
  t.true(fs.existsSync(mountHelper), `${mountHelper} is built by make build`);
  const { tag } = tagged(t, f.mnt);
  // mount -t fuse.strata strata MNT -o OPTS  →  /sbin/mount.fuse.strata strata MNT -o OPTS
  const r = await runWithPipes(mountHelper, ['strata', f.mnt, '-o', `rw,lowerdir=${f.a}:${f.b},dev,suid`], {
    env: { PATH: '/usr/bin:/bin', STRATA_TEST_TAG: tag },
    cwd: '/',
  });
  t.is(r.status, 0, r.stderr);
  t.not(r.pipesClosedAfterMs, null, 'mount(8) waits for the helper; the daemon must not keep its pipes');
  t.is(mountAt(f.mnt)?.fstype, 'fuse.strata');
  t.is(view(f.mnt), EXPECTED_VIEW);
  t.is(run('umount', [f.mnt]).status, 0);
  await assertDaemonGone(t, f, tag);
});

test('--foreground stays until the mount goes away, then exits 0', async (t) => {
  const f = fixture(t);
  const { env } = tagged(t, f.mnt);
  const child = spawn(strataBin, ['mount', '-f', '-o', `lowerdir=${f.a}:${f.b}`, f.mnt], { env, stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let done = false;
  void exited.then(() => (done = true));
  t.true(await waitFor(() => mountAt(f.mnt) !== undefined || done, 20_000), 'mounted');
  t.false(done, 'the foreground process is still running while mounted');
  t.is(view(f.mnt), EXPECTED_VIEW);
  t.is(run('umount', [f.mnt]).status, 0);
  const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running after 10 s'), 10_000))]);
  t.is(code, 0);
});

test('--passthrough=on|off|auto all serve the same content; --log-file receives the log', async (t) => {
  const f = fixture(t);
  const big = Buffer.alloc(2 * 1024 * 1024 + 3, 'z');
  fs.writeFileSync(path.join(f.b, 'big'), big);
  for (const mode of ['on', 'off', 'auto']) {
    const log = path.join(f.root, `log-${mode}.json`);
    const { tag } = await mountFixture(t, f, [`--passthrough=${mode}`, '--log-level', 'debug', '--log-file', log]);
    t.is(view(f.mnt), `big ${EXPECTED_VIEW}`, mode);
    t.true(fs.readFileSync(path.join(f.mnt, 'big')).equals(big), `--passthrough=${mode}: content of big`);
    t.is(run(strataBin, ['umount', f.mnt]).status, 0);
    await assertDaemonGone(t, f, tag);
    t.true(fs.existsSync(log) && fs.statSync(log).size > 0, `--passthrough=${mode}: ${log} has log lines`);
  }
});

// ---------------------------------------------------------------------------------------------
// Refusals: one clear line on stderr, exit 1 or 2, nothing mounted, no daemon left, nothing
// created or changed anywhere under the test's directory.

interface Refusal {
  name: string;
  /** command-line arguments, given the fixture */
  args: (f: Fixture) => string[];
  /** set up before the attempt (e.g. a first mount), returns paths that must still not exist afterwards */
  prepare?: (t: ExecutionContext, f: Fixture) => Promise<string[]> | string[];
  /** the stderr line must mention one of these */
  mentions?: (f: Fixture) => string[];
  /** exact exit code when the category is clear */
  status?: 1 | 2;
  /** mountpoint to check for a mount that must not appear (default f.mnt) */
  mountpoint?: (f: Fixture) => string;
}

const REFUSALS: Refusal[] = [
  {
    // (the fuse-overlayfs form, strata -o ... MOUNTPOINT, always has -o: a word alone is no mount point)
    name: 'an unknown command',
    args: () => ['frobnicate', 'now'],
    mentions: () => ['unknown command "frobnicate"'],
    status: 2,
  },
  {
    name: 'a lower layer that does not exist',
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.root}/missing`, f.mnt],
    mentions: (f) => [`${f.root}/missing`],
  },
  {
    name: 'a lower layer that is a file',
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.a}/top`, f.mnt],
    mentions: (f) => [`${f.a}/top`],
  },
  {
    name: 'the same layer twice',
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.b}:${f.a}`, f.mnt],
    mentions: (f) => [f.a],
  },
  {
    name: 'the same layer twice, once through a symlink',
    prepare: (_t, f) => {
      fs.symlinkSync(f.b, `${f.root}/alias`);
      return [];
    },
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.root}/alias:${f.b}`, f.mnt],
    mentions: (f) => [f.b, `${f.root}/alias`],
  },
  {
    name: 'an upper directory that is also a lower layer',
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.b},upperdir=${f.b},workdir=${f.root}/work`, f.mnt],
    prepare: (_t, f) => {
      fs.mkdirSync(`${f.root}/work`);
      return [`${f.root}/work/work`];
    },
    mentions: (f) => [f.b],
  },
  {
    name: 'a workdir on another filesystem than the upper (workdir missing: not created)',
    prepare: (t, f) => {
      fs.mkdirSync(`${f.root}/upper`);
      const other = tmpfsDir(t, f.root, 'other');
      return [`${other}/work`];
    },
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.b},upperdir=${f.root}/upper,workdir=${f.root}/other/work`, f.mnt],
    mentions: (f) => [`${f.root}/other/work`, `${f.root}/other`, `${f.root}/upper`],
  },
  {
    name: 'a missing upper directory and workdir (neither created)',
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.b},upperdir=${f.root}/upper,workdir=${f.root}/work`, f.mnt],
    prepare: (_t, f) => [`${f.root}/upper`, `${f.root}/work`],
    mentions: (f) => [`${f.root}/upper`],
  },
  {
    name: 'a mountpoint that does not exist',
    args: (f) => ['mount', '-o', `lowerdir=${f.a}:${f.b}`, `${f.root}/nowhere`],
    prepare: (_t, f) => [`${f.root}/nowhere`],
    mentions: (f) => [`${f.root}/nowhere`],
    mountpoint: (f) => `${f.root}/nowhere`,
  },
  {
    name: 'a mountpoint that is already mounted (the first mount keeps working)',
    prepare: async (t, f) => {
      await mountFixture(t, f);
      return [];
    },
    args: (f) => ['mount', '-o', `lowerdir=${f.b}`, f.mnt],
    mentions: (f) => [f.mnt],
  },
  {
    name: 'no lowerdir option (usage error)',
    args: (f) => ['mount', '-o', 'noatime', f.mnt],
    status: 2,
  },
  {
    name: 'no mount options at all (usage error)',
    args: (f) => ['mount', f.mnt],
    status: 2,
  },
  {
    name: 'an owner mapping that is not triples of ids (usage error)',
    args: (f) => ['-o', `lowerdir=${f.a},uidmapping=0:100000,gidmapping=0:100000:65536`, f.mnt],
    mentions: () => ['uidmapping', '0:100000'],
    status: 2,
  },
  {
    name: 'a squash_to_uid= that is not an id (usage error)',
    args: (f) => ['-o', `lowerdir=${f.a},squash_to_uid=root`, f.mnt],
    mentions: () => ['squash_to_uid', 'root'],
    status: 2,
  },
  {
    name: 'an unknown --passthrough value (usage error)',
    args: (f) => ['mount', '--passthrough=sometimes', '-o', `lowerdir=${f.a}`, f.mnt],
    mentions: () => ['--passthrough', 'sometimes'],
    status: 2,
  },
];

for (const c of REFUSALS) {
  test(`refused: ${c.name}`, async (t) => {
    const f = fixture(t);
    const mustNotExist = (await c.prepare?.(t, f)) ?? [];
    const mnt = c.mountpoint?.(f) ?? f.mnt;
    const mountedBefore = mountAt(mnt);
    const viewBefore = mountedBefore ? view(mnt) : undefined;
    const before = snapshot(f.root);
    const { tag, env } = tagged(t, mnt);
    const r = run(strataBin, c.args(f), { env, timeoutMs: 30_000 });

    t.true(r.status === 1 || r.status === 2, `exit status ${r.status} (signal ${r.signal}), expected 1 or 2`);
    if (c.status) t.is(r.status, c.status, 'exit status');
    const lines = stderrLines(r);
    t.is(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
    const mentions = c.mentions?.(f);
    if (mentions) t.true(mentions.some((m) => r.stderr.includes(m)), `stderr names the culprit (${mentions.join(' or ')}): ${r.stderr.trim()}`);

    t.deepEqual(mountAt(mnt), mountedBefore, 'nothing (new) mounted');
    if (viewBefore) t.is(view(mnt), viewBefore, 'the existing mount still serves');
    t.true(await waitFor(() => processesTagged(tag).length === 0, 30_000), 'no process left running');
    for (const p of mustNotExist) t.false(fs.existsSync(p), `${p} was created`);
    t.deepEqual(diffSnapshots(snapshot(f.root), before).slice(0, 10), [], 'nothing changed under the test directory');
  });
}

test('strata umount of a directory that is not a strata mount fails with one line', (t) => {
  const f = fixture(t);
  const r = run(strataBin, ['umount', f.mnt]);
  t.true(r.status === 1 || r.status === 2, `exit status ${r.status}`);
  t.is(stderrLines(r).length, 1, r.stderr);
});
