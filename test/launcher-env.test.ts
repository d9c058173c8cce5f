// bin/strata and NODE_EXTRA_CA_CERTS: node would build its certificate store as it starts (70-90 ms
// of every command here), so the launcher hands the variable over under another name and the
// loader puts it back for the processes strata starts.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { run, waitFor } from './helpers/exec.js';
import { mountAt, strataUnmount } from './helpers/mounts.js';
import { repoRoot, strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';
import { readRecord } from '../src/daemon/registry.js';

const loader = path.join(repoRoot, 'dist', 'src', 'bundle', 'load.cjs');

/** The environment a process was started with. */
function startEnv(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const kv of fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')) {
    const eq = kv.indexOf('=');
    if (eq > 0) out.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  return out;
}

test('node is not started with NODE_EXTRA_CA_CERTS: no command pays for loading certificates', (t) => {
  // Node warns on its stderr when it cannot load the file it names: so it did try.
  const missing = path.join(tempDir(t, 'ca'), 'missing.pem');
  const direct = run(process.execPath, ['-e', '0'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: missing } });
  t.regex(direct.stderr, /extra certs/, 'node itself loads them (so the check below can fail)');
  const r = run(strataBin, ['--version'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: missing } });
  t.is(r.status, 0, r.stderr);
  t.notRegex(r.stderr, /extra certs/);
});

test('a background mount\'s daemon starts without NODE_EXTRA_CA_CERTS and mounts', (t) => {
  const dir = tempDir(t, 'caenv');
  for (const d of ['l', 'u', 'w', 'm']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(path.join(dir, 'l', 'f'), 'f\n');
  const mnt = path.join(dir, 'm');
  t.teardown(() => strataUnmount(mnt));
  const certs = path.join(dir, 'certs.pem');
  const r = run(strataBin, ['mount', '-o', `lowerdir=${dir}/l,upperdir=${dir}/u,workdir=${dir}/w`, mnt], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: certs }, timeoutMs: 30_000,
  });
  t.is(r.status, 0, r.stderr);
  t.is(r.stderr, '');
  t.is(mountAt(mnt)?.fstype, 'fuse.strata');
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'f\n');
  const env = startEnv(readRecord(mnt)!.pid);
  t.false(env.has('NODE_EXTRA_CA_CERTS'));
  t.is(env.get('STRATA_NODE_EXTRA_CA_CERTS'), certs);
});

test('the loader puts NODE_EXTRA_CA_CERTS back for the processes strata starts', (t) => {
  // A preloaded module reports process.env as the command leaves it (after the loader ran).
  const dir = tempDir(t, 'caload');
  const probe = path.join(dir, 'probe.cjs');
  fs.writeFileSync(probe, `process.on('exit', () => process.stderr.write('PROBE ' + JSON.stringify([
    process.env.NODE_EXTRA_CA_CERTS ?? null, process.env.STRATA_NODE_EXTRA_CA_CERTS ?? null]) + '\\n'));\n`);
  const env: NodeJS.ProcessEnv = { ...process.env, STRATA_NODE_EXTRA_CA_CERTS: '/some/certs.pem' };
  delete env.NODE_EXTRA_CA_CERTS;
  const r = run(process.execPath, ['--require', probe, loader, '--version'], { env });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(/^PROBE (.*)$/m.exec(r.stderr)![1]!), ['/some/certs.pem', null]);
  // Without the handed-over name, nothing is set.
  delete env.STRATA_NODE_EXTRA_CA_CERTS;
  const plain = run(process.execPath, ['--require', probe, loader, '--version'], { env });
  t.deepEqual(JSON.parse(/^PROBE (.*)$/m.exec(plain.stderr)![1]!), [null, null]);
});

/** A process's descriptor table size (slots), and the hard limit of open files of this one. */
const fdSize = (pid: number): number => Number(/^FDSize:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
const hardNofile = (): number => Number(/^Max open files\s+\S+\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'))![1]);

test('a mount\'s daemon starts with its descriptor table grown: filling it never waits for an RCU grace period', async (t) => {
  // (node's threads share the table: each doubling as descriptors are opened waited 7-16 ms, the daemon
  // answering nothing; the launcher grows it before node starts, to 65536 slots or the hard limit)
  const want = Math.min(65536, hardNofile());
  const dir = tempDir(t, 'fdt');
  for (const d of ['l', 'u', 'w', 'm']) fs.mkdirSync(path.join(dir, d));
  const mnt = path.join(dir, 'm');
  t.teardown(() => strataUnmount(mnt));
  const opts = `lowerdir=${dir}/l,upperdir=${dir}/u,workdir=${dir}/w`;
  const r = run(strataBin, ['mount', '-o', opts, mnt], { timeoutMs: 30_000 });
  t.is(r.status, 0, r.stderr);
  const pid = readRecord(mnt)!.pid;
  t.true(fdSize(pid) >= want, `background daemon: FDSize ${fdSize(pid)}, want ${want} or more`);
  t.true(fdSize(pid) < 4 * 65536, 'not beyond what was asked');
  strataUnmount(mnt);
  // the same for a mount in the foreground, whose command becomes the daemon
  const fg = spawn(strataBin, ['mount', '-f', '-o', opts, mnt], { stdio: 'ignore' });
  t.teardown(() => fg.kill('SIGKILL'));
  t.true(await waitFor(() => mountAt(mnt)?.fstype === 'fuse.strata', 30_000), 'the foreground mount went live');
  t.true(fdSize(fg.pid!) >= want, `foreground daemon: FDSize ${fdSize(fg.pid!)}, want ${want} or more`);
  strataUnmount(mnt);
  await waitFor(() => fg.exitCode !== null, 10_000);
});
