// What `strata run` and `create` take besides the image and the command, as docker and podman take
// it: -e/--env-file, -w, --entrypoint, --hostname, -v (bind mounts, named and anonymous volumes),
// --mount, --tmpfs, --rm with -d. The same commands run under podman on the same root filesystem give
// the same output; then what only strata can be asked (mount points that image symlinks point out
// of the root, refusals, volumes of the image's VOLUME, strata volume), with nothing left behind.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, type RunResult, waitFor } from './helpers/exec.js';
import { debianInBoth, PODMAN_RUN } from './helpers/image-store.js';
import { rootfsTar, testStore, type TestStore } from './helpers/images.js';
import { mountsUnder } from './helpers/mounts.js';
import { processesTagged, taggedEnvKilledAtEnd } from './helpers/processes.js';
import { strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';

const ROOTFS_L0 = '/var/cache/strata/rootfs/l0';

function oneLineError(t: ExecutionContext, r: RunResult, status: number, pattern: RegExp): void {
  t.is(r.status, status, r.stderr);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, pattern);
}

/**
 * A store with the busybox test image as base:1, and strata run against it; every process the test
 * starts is tagged and killed at its end (then testStore removes the control groups left).
 */
function busyboxStore(t: ExecutionContext, prefix: string): { base: string; s: TestStore; tag: string; strata: (args: readonly string[]) => RunResult; ok: (args: readonly string[]) => string } {
  const base = tempDir(t, prefix);
  const s = testStore(t, base);
  const { tag, env } = taggedEnvKilledAtEnd(t, { STRATA_STORE: s.dir });
  const strata = (args: readonly string[]): RunResult => run(strataBin, args, { env, timeoutMs: 120_000 });
  const ok = (args: readonly string[]): string => {
    const r = strata(args);
    if (r.status !== 0) t.fail(`strata ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  ok(['image', 'import', rootfsTar(t, base), 'base:1']);
  return { base, s, tag, strata, ok };
}

test('run -e, --env-file, -w, --entrypoint, --hostname, -v, --mount, --tmpfs, --cap-*, --ulimit: what podman run prints for the same', (t) => {
  const base = tempDir(t, 'ro');
  // (-e NAME and a NAME line in an env file take the value of the caller's environment; podman's is copied from ours now)
  process.env.HOSTVAR = 'from the host';
  const { podman, s } = debianInBoth(t, base, ROOTFS_L0);
  const { env } = taggedEnvKilledAtEnd(t, { STRATA_STORE: s.dir, HOSTVAR: 'from the host' });

  const host = path.join(base, 'host');
  fs.mkdirSync(path.join(host, 'dir', 'sub'), { recursive: true });
  fs.writeFileSync(path.join(host, 'dir', 'sub', 'f'), 'in the host dir\n');
  fs.writeFileSync(path.join(host, 'file'), 'a host file\n');
  const envFile = path.join(host, 'env');
  fs.writeFileSync(envFile, '# a comment\nFROMFILE=file value\n\n  INDENTED=x\nOVER=from the file\nHOSTVAR\n');

  const show = 'for v in FOO SPACED FROMFILE INDENTED OVER HOSTVAR NOTSET HOSTNAME PATH HOME; do printf "%s=[%s] " $v "$(printenv $v)"; done; echo; pwd; hostname';
  const cases: { name: string; args: string[]; cmd: string[] }[] = [
    { name: 'env', args: ['-e', 'FOO=bar', '-e', 'SPACED=a  b', '--env-file', envFile, '-e', 'OVER=from -e', '-e', 'NOTSET', '-e', 'PATH=/bin:/usr/bin'], cmd: ['sh', '-c', show] },
    { name: 'workdir', args: ['-w', '/usr/share/doc', '--hostname', 'box-1'], cmd: ['sh', '-c', show] },
    { name: 'entrypoint', args: ['--entrypoint', '/bin/echo'], cmd: ['one', '-n', 'two'] },
    { name: 'entrypoint json', args: ['--entrypoint', '["/bin/sh","-c","echo \\"$0|$1\\"","zero"]'], cmd: ['first'] },
    { name: 'entrypoint none', args: ['--entrypoint', ''], cmd: ['sh', '-c', 'echo plain'] },
    { name: 'binds', args: ['-v', `${host}/dir:/data`, '-v', `${host}/file:/etc/host-file:ro`, '-v', `${host}/dir/sub:/ro:ro`],
      cmd: ['sh', '-c', 'cat /data/sub/f /etc/host-file /ro/f; echo written > /data/new; echo x > /ro/g || echo ro-refused; echo y >> /etc/host-file || echo file-ro-refused; ls /data'] },
    { name: 'mount and tmpfs', args: ['--mount', `type=bind,source=${host}/dir,target=/m,readonly`, '--tmpfs', '/scratch:size=2m,mode=1777',
      '--mount', 'type=tmpfs,target=/t2,tmpfs-size=1048576'],
    cmd: ['sh', '-c', 'cat /m/sub/f; touch /m/x || echo ro-refused; stat -f -c %T /scratch /t2; stat -c %a /scratch; df -k /scratch /t2 | tail -2 | awk "{print \\$2}"; echo a > /scratch/a; cat /scratch/a'] },
    { name: 'named volume, first use', args: ['-v', 'docs:/usr/share/doc/bash'], cmd: ['sh', '-c', 'ls /usr/share/doc/bash | head -5; echo mine > /usr/share/doc/bash/mine'] },
    { name: 'named volume, second use', args: ['-v', 'docs:/elsewhere:ro'], cmd: ['sh', '-c', 'cat /elsewhere/mine; ls /elsewhere | wc -l; touch /elsewhere/z || echo ro-refused'] },
    // (podman's default set is docker's less MKNOD, NET_RAW and AUDIT_WRITE: strata's with those dropped must be podman's)
    { name: 'caps', args: ['--cap-drop', 'MKNOD,NET_RAW', '--cap-drop', 'cap_audit_write'], cmd: ['sh', '-c', 'grep -E "^Cap(Bnd|Eff|Prm)" /proc/self/status'] },
    { name: 'cap-add', args: ['--cap-drop', 'MKNOD,NET_RAW,AUDIT_WRITE', '--cap-add', 'SYS_ADMIN', '--cap-add', 'sys_ptrace'], cmd: ['sh', '-c', 'grep -E "^Cap(Bnd|Eff)" /proc/self/status; mount -t tmpfs t /mnt && echo mounted'] },
    // (podman also gives a non-root user the added capabilities; docker and strata do not)
    { name: 'cap-drop all', args: ['--cap-drop', 'ALL', '--cap-add', 'CHOWN'], cmd: ['sh', '-c', 'grep -E "^Cap(Bnd|Eff)" /proc/self/status'] },
    { name: 'privileged', args: ['--privileged'], cmd: ['sh', '-c', 'grep -E "^Cap(Bnd|Eff)" /proc/self/status; mount -t tmpfs t /mnt && echo mounted'] },
    { name: 'shm-size', args: ['--shm-size', '128m'], cmd: ['sh', '-c', 'df -k /dev/shm | tail -1 | awk "{print \\$2}"; stat -c %a /dev/shm'] },
    { name: 'shm-size bytes', args: ['--shm-size', '1048576'], cmd: ['sh', '-c', 'df -k /dev/shm | tail -1 | awk "{print \\$2}"'] },
    { name: 'network none', args: ['--network', 'none'], cmd: ['sh', '-c', 'ls /sys/class/net; cat /sys/class/net/lo/flags /proc/net/if_inet6 | wc -l'] },
    { name: 'ulimit', args: ['--ulimit', 'nofile=1024:2048', '--ulimit', 'core=-1', '--ulimit', 'nproc=500'],
      cmd: ['sh', '-c', 'grep -E "^Max (open files|core file size|processes) " /proc/self/limits'] },
    { name: 'anonymous volume', args: ['-v', '/usr/share/doc/dash'], cmd: ['sh', '-c', 'ls /usr/share/doc/dash; echo x > /usr/share/doc/dash/new; ls /usr/share/doc/dash | wc -l'] },
  ];
  // (podman: no network; strata's default host name is the container's name, podman's its ID)
  for (const c of cases) {
    const mine = run(strataBin, ['run', '--rm', '--name', 'r1', ...c.args, 'deb:l0', ...c.cmd], { env, timeoutMs: 120_000 });
    const hostname = c.args.includes('--hostname') ? [] : ['--hostname', 'r1'];
    // (PODMAN_RUN has --network none already)
    const podArgs = c.args.join('\0') === '--network\0none' ? [] : c.args;
    const theirs = podman(['run', '--rm', '--name', 'r1', ...PODMAN_RUN, ...hostname, ...podArgs, 'localhost/deb:l0', ...c.cmd], 120_000);
    t.is(theirs.status, 0, `${c.name}: podman: ${theirs.stderr}`);
    t.deepEqual({ status: mine.status, stdout: mine.stdout }, { status: theirs.status, stdout: theirs.stdout }, `${c.name}: ${mine.stderr}`);
  }
  // What the commands wrote went where podman's went: into the host directory, the named volume.
  t.is(fs.readFileSync(path.join(host, 'dir', 'new'), 'utf8'), 'written\n');
  t.is(fs.readFileSync(path.join(host, 'file'), 'utf8'), 'a host file\n');
  t.false(fs.existsSync(path.join(host, 'dir', 'sub', 'g')));
  t.deepEqual(JSON.parse(s.ok(['volume', 'ls', '--json'])).map((v: { name: string }) => v.name), ['docs']);
  t.is(s.ok(['volume', 'inspect', 'docs']).includes(path.join(s.dir, 'volumes', 'docs', '_data')), true);
  t.deepEqual(JSON.parse(s.ok(['container', 'ls', '--json'])), [], '--rm removed every container');
  t.deepEqual(fs.readdirSync(path.join(s.dir, 'containers')), [], 'and its anonymous volume');
  t.deepEqual(mountsUnder(s.dir), []);
});

test('run and create: settings kept by the container (exec, start again), --dns*, --rm with -d, the image\'s VOLUMEs, mount points behind image symlinks, refusals, strata volume', async (t) => {
  const { base, s, tag, strata, ok } = busyboxStore(t, 'ro2');
  const host = path.join(base, 'host');
  fs.mkdirSync(host);
  fs.writeFileSync(path.join(host, 'f'), 'host file\n');
  // --dns, --dns-search, --dns-option: those lines of the container's resolv.conf replaced, the rest the host's
  const resolv = ok(['run', '--rm', '--dns', '192.0.2.53', '--dns', '2001:db8::53', '--dns-search', 'example.com', '--dns-option', 'ndots:2', 'base:1', 'cat', '/etc/resolv.conf']);
  t.deepEqual(resolv.split('\n').filter((l) => /^(nameserver|search|domain|options)\s/.test(l)),
    ['nameserver 192.0.2.53', 'nameserver 2001:db8::53', 'search example.com', 'options ndots:2']);
  const hostServers = (fs.existsSync('/etc/resolv.conf') ? fs.readFileSync('/etc/resolv.conf', 'utf8') : '').split('\n').filter((l) => /^nameserver\s/.test(l));
  t.deepEqual(ok(['run', '--rm', '--dns-option', 'ndots:3', 'base:1', 'cat', '/etc/resolv.conf']).split('\n').filter((l) => /^(nameserver|options)\s/.test(l)),
    [...hostServers, 'options ndots:3'], 'the host\'s name servers kept');
  t.regex(strata(['run', '--rm', '--dns', 'nope', 'base:1', 'true']).stderr, /^strata: --dns nope: expected an IP address\n$/);

  // A missing -w directory is made, as docker makes it (podman refuses it), owned by the user.
  t.is(ok(['run', '--rm', '-u', '1000:1000', '-w', '/var/made/here', 'base:1', 'sh', '-c', 'pwd; stat -c %u:%g:%a /var/made/here /var/made']),
    '/var/made/here\n1000:1000:755\n0:0:755\n');

  // create keeps its settings: start -a, then exec into a background start, see them.
  ok(['create', '--name', 'kept', '-e', 'K=v1', '-w', '/data', '--hostname', 'kh', '-v', `${host}:/h`, '--tmpfs', '/t', 'base:1',
    'sh', '-c', 'echo "$K $PWD $HOSTNAME"; cat /h/f; touch /t/x; sleep 60']);
  ok(['start', 'kept']);
  t.true(await waitFor(() => strata(['exec', 'kept', 'sh', '-c', 'test -e /t/x']).status === 0, 10_000));
  t.is(ok(['exec', 'kept', 'sh', '-c', 'echo "$K $PWD $HOSTNAME $(cat /proc/sys/kernel/hostname)"; cat /h/f']), 'v1 /data kh kh\nhost file\n');
  t.is(ok(['exec', '-e', 'K=v2', '-w', '/', 'kept', 'sh', '-c', 'echo "$K $PWD"']), 'v2 /\n');
  ok(['stop', '-t', '0', 'kept']);
  t.is(ok(['logs', 'kept']), 'v1 /data kh\nhost file\n');
  t.deepEqual(ok(['diff', 'kept']).trim().split('\n').sort(), ['A /h', 'A /t'], 'mount points only: the tmpfs and the bind hold the writes');
  ok(['rm', 'kept']);

  // --read-only: the root, not the mounts (as docker; podman adds tmpfs mounts of its own); --network none kept for exec.
  t.is(ok(['run', '--rm', '--read-only', '--tmpfs', '/tmp', '-v', `${host}:/h`, 'base:1', 'sh', '-c',
    'touch /x 2>/dev/null || echo ro-root; touch /tmp/y && echo tmp; echo v > /h/rw && echo host']), 'ro-root\ntmp\nhost\n');
  t.is(fs.readFileSync(path.join(host, 'rw'), 'utf8'), 'v\n');
  fs.rmSync(path.join(host, 'rw'));
  ok(['run', '-d', '--name', 'isolated', '--network', 'none', 'base:1', 'sleep', '60']);
  t.is(ok(['exec', 'isolated', 'ls', '/sys/class/net']), 'lo\n');
  t.true(fs.readdirSync('/sys/class/net').length > 1, 'the host has more than a loopback');
  ok(['rm', '-f', 'isolated']);

  // /etc/hostname and /etc/hosts made for the container and bound over the image's (or over empty
  // files made for the purpose, taken out again): the container's upper has none of them.
  ok(['run', '--name', 'named', '--hostname', 'box', '--add-host', 'db:10.0.0.5', '--add-host', 'v6=fd00::1', 'base:1', 'sh', '-c',
    'cat /etc/hostname; grep -E "^(127.0.1.1|10.0.0.5|fd00::1|127.0.0.1)\\s" /etc/hosts; grep -c . /etc/resolv.conf > /dev/null && echo resolv']);
  const seen = 'box\n127.0.0.1\tlocalhost\n127.0.1.1\tbox\n10.0.0.5\tdb\nfd00::1\tv6\nresolv\n';
  t.is(ok(['logs', 'named']), seen, 'a foreground run is logged too');
  t.is(ok(['start', '-a', 'named']), seen);
  t.is(ok(['diff', 'named']), '', 'nothing of the binds in the upper');
  t.is(ok(['run', '--rm', '--network', 'none', 'base:1', 'sh', '-c', 'grep -c . /etc/hosts']), '3\n', 'no network: none of the host\'s entries');
  ok(['rm', 'named']);

  // --rm with -d: gone when its command ends, or when it is stopped.
  ok(['run', '-d', '--rm', '--name', 'quick', 'base:1', 'true']);
  t.true(await waitFor(() => !ok(['ps', '-a']).includes('quick'), 10_000), 'removed once it ended');
  ok(['run', '-d', '--rm', '--name', 'slow', 'base:1', 'sleep', '60']);
  t.regex(ok(['ps']), /slow .*running/);
  ok(['stop', '-t', '0', 'slow']);
  t.notRegex(ok(['ps', '-a']), /slow/);

  // The image's VOLUMEs: anonymous volumes filled from the image, kept across starts of the container,
  // not in its diff nor in a commit, gone with it.
  const ctx = path.join(base, 'ctx');
  fs.mkdirSync(ctx);
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), 'FROM base:1\nRUN mkdir /vol && echo seed > /vol/seed\nVOLUME /vol\n');
  ok(['build', '-q', '-t', 'withvol:1', ctx]);
  ok(['run', '--name', 'v', 'withvol:1', 'sh', '-c', 'cat /vol/seed; echo more > /vol/more; echo top > /top']);
  t.is(ok(['start', '-a', 'v']), 'seed\n', 'started again: the same volume');
  t.is(ok(['run', '--name', 'v2', 'withvol:1', 'sh', '-c', 'ls /vol']), 'seed\n', 'a new container: a new volume');
  const vdir = (n: string): string[] => {
    const id = (JSON.parse(ok(['container', 'ls', '--json'])) as { id: string; name: string }[]).find((c) => c.name === n)!.id;
    const vols = path.join(s.dir, 'containers', id, 'volumes');
    return fs.readdirSync(vols).map((v) => fs.readdirSync(path.join(vols, v)).sort().join(','));
  };
  t.deepEqual(vdir('v'), ['more,seed']);
  t.deepEqual(ok(['diff', 'v']).trim().split('\n'), ['A /top']);
  ok(['commit', 'v', 'committed:1']);
  t.is(ok(['run', '--rm', '-v', `${host}:/vol`, 'committed:1', 'sh', '-c', 'cat /top; ls /vol']), 'top\nf\n', 'a given mount replaces the image\'s volume');
  t.is(ok(['run', '--rm', 'committed:1', 'ls', '/vol']), 'seed\n', 'the commit has the image\'s /vol, not the volume\'s files');
  ok(['rm', 'v', 'v2']);
  t.deepEqual(fs.readdirSync(path.join(s.dir, 'containers')), []);

  // Mount points are resolved inside the root: image symlinks to host paths (absolute or by ../) lead
  // into the container's root, never to the host.
  const outside = path.join(base, 'outside');
  fs.mkdirSync(outside);
  ok(['run', '--name', 'ln', 'base:1', 'sh', '-c',
    `mkdir -p ${outside} && ln -s ${outside} /abs && ln -s ../../../../../../../..${outside} /data/rel && ln -s ${outside}/file /absfile`]);
  ok(['commit', 'ln', 'links:1']);
  ok(['rm', 'ln']);
  t.is(ok(['run', '--rm', '-v', `${host}:/abs/in`, '-v', `${host}/f:/absfile`, '--tmpfs', '/data/rel/tmp', 'links:1', 'sh', '-c',
    `cat ${outside}/in/f ${outside}/file; ls ${outside} | sort | tr '\\n' ' '`]), 'host file\nhost file\nfile in tmp ');
  t.deepEqual(fs.readdirSync(outside), [], 'nothing made on the host');

  // Refusals: one line, status 125, nothing made.
  const refuse = (args: string[], pattern: RegExp): void => oneLineError(t, strata(['run', '--rm', ...args, 'base:1', 'true']), 125, pattern);
  refuse(['-v', './rel:/x'], /-v \.\/rel:\/x: a host path must be absolute/);
  refuse(['-v', `${base}/nothere:/x`], /cannot be used: ENOENT/);
  refuse(['-v', `${host}:rel`], /must be absolute/);
  refuse(['-v', `${host}:/x:bogus`], /unsupported option "bogus"/);
  refuse(['-v', 'a:/b:ro:z'], /expected SOURCE:DESTINATION/);
  refuse(['-v', `${host}:/`], /cannot mount over the container's root/);
  refuse(['-v', `${host}:/x`, '--tmpfs', '/x/'], /two mounts on \/x/);
  refuse(['--mount', 'type=overlay,target=/x'], /unsupported type "overlay"/);
  refuse(['--mount', 'type=bind,target=/x'], /absolute source=/);
  refuse(['--mount', 'type=tmpfs,target=/x,bogus=1'], /unsupported field "bogus"/);
  refuse(['--tmpfs', '/x:exec;reboot'], /unsupported tmpfs option/);
  refuse(['-w', 'rel'], /must be an absolute path/);
  refuse(['--hostname', 'no spaces'], /invalid host name/);
  refuse(['--entrypoint', '["sh", 1]'], /not a JSON array of strings/);
  refuse(['--env-file', `${base}/nothere`], /--env-file .*ENOENT/);
  refuse(['-e', '=x'], /invalid variable name/);
  refuse(['--network', 'bridge'], /on the host's network \(host\) or on none/);
  refuse(['--cap-add', 'SYS_NOPE'], /--cap-add SYS_NOPE: unknown capability/);
  refuse(['--add-host', 'db'], /--add-host db: expected NAME:IP/);
  refuse(['--add-host', 'db:300.1.1.1'], /expected NAME:IP/);
  refuse(['--shm-size', '64x'], /--shm-size 64x: expected a size in bytes/);
  refuse(['--shm-size', '-1'], /--shm-size -1: expected a size/);
  // /dev/shm's size is kept by the container (start again) and shown as docker shows it
  const shm = ok(['create', '--shm-size', '3m', 'base:1', 'sh', '-c', 'df -k /dev/shm | tail -1']).trim();
  t.regex(ok(['start', '-a', shm]), /\s3072\s/);
  t.is(ok(['inspect', '--format', '{{.HostConfig.ShmSize}}', shm]).trim(), '3145728');
  ok(['rm', shm]);
  // without --shm-size, docker's 64 MiB (podman 4.3 makes it 64000 KiB)
  const plain = ok(['create', 'base:1', 'sh', '-c', 'df -k /dev/shm | tail -1']).trim();
  t.regex(ok(['start', '-a', plain]), /\s65536\s/);
  t.is(ok(['inspect', '--format', '{{.HostConfig.ShmSize}}', plain]).trim(), '67108864');
  ok(['rm', plain]);
  // docker's default set (moby oci/caps/defaults.go): 14 capabilities, not SYS_ADMIN
  t.is(ok(['run', '--rm', 'base:1', 'sh', '-c', 'grep CapBnd /proc/self/status']), 'CapBnd:\t00000000a80425fb\n');
  t.is(ok(['run', '--rm', '-u', '1000', '--cap-add', 'SYS_ADMIN', 'base:1', 'sh', '-c', 'grep CapEff /proc/self/status']), 'CapEff:\t0000000000000000\n');
  const id = ok(['run', '-d', '--cap-drop', 'ALL', 'base:1', 'sleep', '60']).trim();
  t.is(ok(['exec', id, 'sh', '-c', 'grep CapBnd /proc/self/status']), 'CapBnd:\t0000000000000000\n', 'exec: the container\'s set');
  t.not(ok(['exec', '--privileged', id, 'sh', '-c', 'grep CapBnd /proc/self/status']), 'CapBnd:\t0000000000000000\n');
  ok(['rm', '-f', id]);
  // a mount point the image makes impossible (a file where a directory must be): refused at start, the --rm container removed
  oneLineError(t, strata(['run', '--rm', '-v', `${host}:/bin/busybox/x`, 'base:1', 'true']), 125, /cannot make the mount point \/bin\/busybox\/x/);
  t.deepEqual(JSON.parse(ok(['container', 'ls', '--json'])), []);

  // strata volume: named volumes, refused while a container uses one.
  ok(['create', '--name', 'user', '-v', 'data:/data', 'base:1', 'true']);
  t.is(ok(['volume', 'create', 'spare']), 'spare\n');
  t.is(ok(['volume', 'ls', '-q']), 'data\nspare\n');
  oneLineError(t, strata(['volume', 'rm', 'data']), 1, /volume data is in use by container user/);
  t.is(ok(['volume', 'prune']), 'spare\n');
  t.is(ok(['volume', 'rm', '-f', 'data']), 'data\n');
  oneLineError(t, strata(['volume', 'rm', 'data']), 1, /no such volume: data/);
  ok(['rm', 'user']);

  t.true(await waitFor(() => processesTagged(tag).length === 0, 10_000), 'no monitor or container process left');
  t.deepEqual(mountsUnder(s.dir), []);
});

test('--memory, --memory-swap, --cpus, --cpu-shares, --pids-limit: a control group of the container\'s own (exec joins it), limits the kernel enforces, OOMKilled; docker\'s refusals', async (t) => {
  const { s, tag, strata, ok } = busyboxStore(t, 'cg');
  const inspect = (name: string): Record<string, any> => (JSON.parse(ok(['inspect', name])) as Record<string, any>[])[0]!;

  // Over its memory limit the command is killed (137), and inspect says why; under a larger one the same runs.
  const grow = 'x=a; i=0; while [ $i -lt 26 ]; do x="$x$x"; i=$((i+1)); done; echo ${#x}';
  const killed = strata(['run', '--name', 'small', '--memory', '32m', 'base:1', 'sh', '-c', grow]);
  t.is(killed.status, 137, killed.stderr);
  t.is(inspect('small').State.OOMKilled, true);
  t.deepEqual([inspect('small').HostConfig.Memory, inspect('small').HostConfig.MemorySwap], [32 * 2 ** 20, 64 * 2 ** 20], 'swap: twice the memory, as docker sets it');
  const roomy = strata(['run', '--name', 'roomy', '-m', '512m', '--memory-swap', '-1', 'base:1', 'sh', '-c', grow]);
  t.is(roomy.stdout, `${2 ** 26}\n`, roomy.stderr);
  t.is(inspect('roomy').State.OOMKilled, false);

  // Processes: fork fails past the limit.
  const forks = 'i=0; while [ $i -lt 12 ]; do sleep 1 & i=$((i+1)); done; wait; echo forked';
  const limited = strata(['run', '--rm', '--pids-limit', '6', 'base:1', 'sh', '-c', forks]);
  t.regex(limited.stderr, /can't fork/);
  const free = strata(['run', '--rm', '--pids-limit', '-1', 'base:1', 'sh', '-c', forks]);
  t.is(free.stdout, 'forked\n', free.stderr);
  t.notRegex(free.stderr, /fork/);

  // A running container: its pid 1 and what exec starts are in its group, which has the limits.
  const id = ok(['create', '--name', 'lim', '--cpus', '0.5', '--cpu-shares', '512', '--memory', '64m', '--pids-limit', '50', 'base:1', 'sh', '-c', 'sleep 60']).trim();
  ok(['start', 'lim']);
  const host = inspect('lim');
  t.like(host.HostConfig, { NanoCpus: 5e8, CpuShares: 512, Memory: 64 * 2 ** 20, MemorySwap: 128 * 2 ** 20, PidsLimit: 50 });
  // (the memory, cpu and pids lines of v1 hierarchies; on a v2-only host, the unified one)
  const v2 = fs.existsSync('/sys/fs/cgroup/cgroup.controllers');
  const groups = (text: string): string[] => text.trim().split('\n').map((l) => l.split(':'))
    .filter(([n, ctrl]) => (v2 ? n === '0' : ctrl!.split(',').some((c) => ['memory', 'cpu', 'pids'].includes(c))))
    .map((f) => f.slice(1).join(':')).sort();
  const ofInit = groups(fs.readFileSync(`/proc/${host.State.Pid}/cgroup`, 'utf8'));
  t.true(ofInit.length > 0 && ofInit.every((l) => l.endsWith(`/strata/${id}`)), ofInit.join(' | '));
  t.deepEqual(groups(ok(['exec', 'lim', 'cat', '/proc/self/cgroup'])), ofInit, 'exec joins the container\'s group');
  const read = (controller: string, file: string): string =>
    fs.readFileSync(v2 ? `/sys/fs/cgroup/strata/${id}/${file}` : `/sys/fs/cgroup/${controller}/strata/${id}/${file}`, 'utf8').trim();
  if (v2) {
    t.deepEqual([read('', 'cpu.max'), read('', 'memory.max'), read('', 'pids.max'), read('', 'cpu.weight')], ['50000 100000', String(64 * 2 ** 20), '50', '20']);
  } else {
    t.deepEqual([read('cpu', 'cpu.cfs_quota_us'), read('cpu', 'cpu.cfs_period_us'), read('cpu', 'cpu.shares'), read('memory', 'memory.limit_in_bytes'),
      read('pids', 'pids.max')], ['50000', '100000', '512', String(64 * 2 ** 20), '50']);
  }
  ok(['stop', '-t', '1', 'lim']);
  const left = ['memory', 'cpu', 'pids', ''].map((c) => path.join('/sys/fs/cgroup', c, 'strata', id)).filter((d) => fs.existsSync(d));
  t.deepEqual(left, [], 'the group is removed when the command ends');

  // docker's refusals, one line each, nothing created
  for (const [args, pattern] of [
    [['--memory', '1k'], /minimum memory limit is 6MB/],
    [['--memory-swap', '100m'], /--memory-swap needs --memory/],
    [['--memory', '100m', '--memory-swap', '50m'], /below the memory limit/],
    [['--cpus', '9999'], /range of CPUs is from 0.01/],
    [['--cpus', 'lots'], /expected a number of CPUs/],
    [['--pids-limit', 'x'], /expected a whole number/],
  ] as const) {
    const r = strata(['run', '--rm', ...args, 'base:1', 'true']);
    t.is(r.status, 125, r.stderr);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, pattern);
  }
  ok(['container', 'rm', '-f', 'small', 'roomy', 'lim']);
  t.true(await waitFor(() => processesTagged(tag).length === 0, 10_000));
  t.deepEqual(mountsUnder(s.dir), []);
});
