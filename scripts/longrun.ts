#!/usr/bin/env node
// longrun: does the daemon's memory or its count of open descriptors grow over a long run?
//
//   node dist/scripts/longrun.js [--clients 4] [--ops 25000] [--rounds 10] [--files 2000] [--seed 1] [--tmp DIR] [--json]
//
// Mounts strata over a generated two-layer lower with a fresh upper, then runs --rounds rounds; in
// each, --clients processes in parallel do --ops/--rounds random operations each (create, write,
// append to lower files (copy-up), read, stat, readdir, rename, link, unlink, mkdir, rmdir, chmod,
// setxattr, symlink, truncate, open-and-hold-then-close). After each round it samples the daemon's
// VmRSS and open descriptors, then asks the kernel to forget its cached dentries and inodes
// (echo 2 > /proc/sys/vm/drop_caches, which sends FORGET for every inode it drops) and samples again:
// what the daemon keeps once the kernel forgets is what would leak.
//
// Prints one line per round and a verdict: growth of RSS and descriptors from the first round to
// the last (after forgetting). Exit 0 whatever the numbers (this measures; it does not judge
// timing); exit 1 if a client or the mount failed. Needs root and `make build`.

import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mountedPaths } from '../src/daemon/validate.js';

const STRATA = resolve(dirname(fileURLToPath(import.meta.url)), '../../bin/strata');

interface Options {
  clients: number;
  ops: number;
  rounds: number;
  files: number;
  seed: number;
  tmp: string;
  json: boolean;
}

function usage(code: number): never {
  (code ? process.stderr : process.stdout).write(
    'usage: node dist/scripts/longrun.js [--clients 4] [--ops 25000] [--rounds 10] [--files 2000] [--seed 1] [--tmp DIR] [--json]\n' +
      '  --clients N  client processes working in parallel (default 4)\n' +
      '  --ops N      operations per client over the whole run (default 25000)\n' +
      '  --rounds N   samples of the daemon taken between rounds (default 10)\n' +
      '  --files N    files in the generated lower layers (default 2000)\n' +
      '  --tmp DIR    where the temp directory is made (default /tmp)\n' +
      '  --json       print the samples as JSON\n',
  );
  process.exit(code);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { clients: 4, ops: 25000, rounds: 10, files: 2000, seed: 1, tmp: '/tmp', json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) {
        process.stderr.write(`longrun: ${a} takes a positive integer\n`);
        process.exit(2);
      }
      return v;
    };
    if (a === '--clients') o.clients = num();
    else if (a === '--ops') o.ops = num();
    else if (a === '--rounds') o.rounds = num();
    else if (a === '--files') o.files = num();
    else if (a === '--seed') o.seed = num();
    else if (a === '--tmp') o.tmp = argv[++i] ?? usage(2);
    else if (a === '--json') o.json = true;
    else if (a === '-h' || a === '--help') usage(0);
    else {
      process.stderr.write(`longrun: unknown argument ${a}\n`);
      usage(2);
    }
  }
  return o;
}

// ---------------------------------------------------------------- the client workload (python)

const CLIENT = String.raw`
import os, sys, random, errno
mnt, me, nops, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
own = os.path.join(mnt, 'clients', me)
os.makedirs(own, exist_ok=True)
lower = [os.path.join(mnt, 'l', d, f) for d, fs in ((d, os.listdir(os.path.join(mnt, 'l', d))) for d in os.listdir(os.path.join(mnt, 'l'))) for f in fs]
held = []
counts = {}
def name():
    return os.path.join(own, 'd%d' % r.randrange(8), 'f%d' % r.randrange(64))
for d in range(8):
    os.makedirs(os.path.join(own, 'd%d' % d), exist_ok=True)
errs = 0
for i in range(nops):
    op = r.choice(['create', 'create', 'write', 'read', 'read', 'stat', 'stat', 'readdir', 'rename', 'link', 'unlink', 'unlink',
                   'mkdir', 'rmdir', 'chmod', 'xattr', 'symlink', 'truncate', 'hold', 'lower-read', 'lower-append', 'lower-stat'])
    counts[op] = counts.get(op, 0) + 1
    try:
        if op == 'create':
            with open(name(), 'wb') as f: f.write(os.urandom(r.randrange(1, 4096)))
        elif op == 'write':
            fd = os.open(name(), os.O_WRONLY | os.O_CREAT, 0o644); os.pwrite(fd, b'x' * 100, r.randrange(8192)); os.close(fd)
        elif op == 'read':
            with open(name(), 'rb') as f: f.read()
        elif op == 'stat':
            os.lstat(name())
        elif op == 'readdir':
            os.listdir(os.path.join(own, 'd%d' % r.randrange(8)))
        elif op == 'rename':
            os.rename(name(), name())
        elif op == 'link':
            os.link(name(), name())
        elif op == 'unlink':
            os.unlink(name())
        elif op == 'mkdir':
            os.mkdir(name())
        elif op == 'rmdir':
            os.rmdir(name())
        elif op == 'chmod':
            os.chmod(name(), 0o600 | r.randrange(0o100))
        elif op == 'xattr':
            os.setxattr(name(), 'user.k%d' % r.randrange(4), b'v' * r.randrange(1, 64))
        elif op == 'symlink':
            os.symlink('target-%d' % i, name())
        elif op == 'truncate':
            os.truncate(name(), r.randrange(4096))
        elif op == 'hold':
            if len(held) < 16 and r.random() < 0.6:
                held.append(os.open(name(), os.O_RDONLY))
            elif held:
                os.close(held.pop(r.randrange(len(held))))
        elif op == 'lower-read':
            with open(r.choice(lower), 'rb') as f: f.read()
        elif op == 'lower-append':
            with open(r.choice(lower), 'ab') as f: f.write(b'%s %d\n' % (me.encode(), i))
        elif op == 'lower-stat':
            os.stat(r.choice(lower))
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR, errno.EPERM, errno.ELOOP, errno.EINVAL):
            print('client %s: %s: %s' % (me, op, e), file=sys.stderr); sys.exit(1)
        errs += 1
for fd in held: os.close(fd)
print(sum(counts.values()), errs)
`;

// ---------------------------------------------------------------- helpers

function must(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || `status ${r.status}`}`);
  return r.stdout;
}

function isMounted(mp: string): boolean {
  return mountedPaths().has(mp);
}

function daemonPid(mp: string): number {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (argv.includes('__daemon') && argv.includes(mp)) return Number(d);
    } catch {
      // gone
    }
  }
  throw new Error(`no daemon serves ${mp}`);
}

interface Sample {
  round: number;
  ops: number;
  rssMiB: number;
  fds: number;
  /** After the kernel forgot its cached inodes. */
  rssAfterForgetMiB: number;
  fdsAfterForget: number;
  seconds: number;
}

function rssMiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m);
  return m ? Number(m[1]) / 1024 : NaN;
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The daemon's descriptors once it has finished starting: it opens its metadata cache's LevelDB
 * and its control socket once it is first idle after the mount (250 ms without a request), so the
 * count is read when it has not changed for 1 s (at most 8 s).
 */
async function settledFdCount(pid: number): Promise<number> {
  let n = fdCount(pid);
  for (let stable = 0, waited = 0; stable < 1000 && waited < 8000; waited += 50) {
    await sleep(50);
    const m = fdCount(pid);
    stable = m === n ? stable + 50 : 0;
    n = m;
  }
  return n;
}

function runClient(mnt: string, me: string, ops: number, seed: number): Promise<{ ops: number }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('python3', ['-c', CLIENT, mnt, me, String(ops), String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => {
      if (code === 0) resolvePromise({ ops: Number(out.trim().split(' ')[0]) });
      else reject(new Error(`client ${me} failed (${code}): ${err.trim()}`));
    });
  });
}

/** Two lower layers: /l/dNN/fNNN files of 1-16 KiB, half of them shadowed by the upper lower. */
function makeLowers(root: string, files: number): string[] {
  const l0 = join(root, 'l0');
  const l1 = join(root, 'l1');
  for (let i = 0; i < files; i++) {
    const dir = `l/d${String(i % 40).padStart(2, '0')}`;
    const layer = i % 2 === 0 ? l0 : l1;
    mkdirSync(join(layer, dir), { recursive: true });
    writeFileSync(join(layer, dir, `f${i}`), Buffer.alloc(1024 * (1 + (i % 16)), i % 251));
  }
  return [l1, l0];
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('longrun: must run as root (mount, drop_caches)\n');
    process.exit(1);
  }
  const root = mkdtempSync(join(o.tmp, 'lr'));
  const mnt = join(root, 'm');
  let failed = false;
  const cleanup = (): void => {
    if (isMounted(mnt)) spawnSync(STRATA, ['umount', mnt]);
    if (isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
    rmSync(root, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    const lowers = makeLowers(root, o.files);
    for (const d of ['u', 'w', 'm']) mkdirSync(join(root, d));
    must(STRATA, ['mount', ...(process.env.STRATA_LONGRUN_LOG ? ['--log-file', process.env.STRATA_LONGRUN_LOG] : []), '-o', `lowerdir=${lowers.join(':')},upperdir=${join(root, 'u')},workdir=${join(root, 'w')}`, mnt]);
    const pid = daemonPid(mnt);
    const base = { fds: await settledFdCount(pid), rssMiB: rssMiB(pid) };
    process.stdout.write(`longrun: ${o.clients} clients x ${o.ops} operations in ${o.rounds} rounds over ${o.files} lower files; daemon ${pid}\n`);
    process.stdout.write(`after mount: RSS ${base.rssMiB.toFixed(1)} MiB, ${base.fds} fds\n`);
    process.stdout.write('round   ops total   RSS MiB   fds   | after forget: RSS MiB   fds   seconds\n');
    const samples: Sample[] = [];
    let total = 0;
    const perRound = Math.ceil(o.ops / o.rounds);
    for (let round = 1; round <= o.rounds; round++) {
      const t0 = process.hrtime.bigint();
      const done = await Promise.all(Array.from({ length: o.clients }, (_, c) => runClient(mnt, `c${c}`, perRound, o.seed * 1000 + round * 10 + c)));
      total += done.reduce((a, d) => a + d.ops, 0);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const rss = rssMiB(pid);
      const fds = fdCount(pid);
      spawnSync('sync');
      writeFileSync('/proc/sys/vm/drop_caches', '2');
      await sleep(500); // FORGETs arrive in batches after the reclaim
      const s: Sample = { round, ops: total, rssMiB: rss, fds, rssAfterForgetMiB: rssMiB(pid), fdsAfterForget: fdCount(pid), seconds };
      samples.push(s);
      process.stdout.write(`${String(round).padStart(5)} ${String(total).padStart(11)} ${rss.toFixed(1).padStart(9)} ${String(fds).padStart(5)}   | ` +
        `${s.rssAfterForgetMiB.toFixed(1).padStart(21)} ${String(s.fdsAfterForget).padStart(5)} ${seconds.toFixed(1).padStart(9)}\n`);
    }
    const first = samples[0]!;
    const last = samples.at(-1)!;
    const half = samples[Math.floor(samples.length / 2)]!;
    process.stdout.write(
      `RSS after forget: ${first.rssAfterForgetMiB.toFixed(1)} MiB after round 1, ${half.rssAfterForgetMiB.toFixed(1)} at round ${half.round}, ` +
        `${last.rssAfterForgetMiB.toFixed(1)} at round ${last.round} (${(last.rssAfterForgetMiB - half.rssAfterForgetMiB >= 0 ? '+' : '')}${(last.rssAfterForgetMiB - half.rssAfterForgetMiB).toFixed(1)} MiB over the second half)\n` +
        `fds after forget: ${first.fdsAfterForget} after round 1, ${last.fdsAfterForget} at round ${last.round} (${base.fds} after mount)\n` +
        `${total} operations in ${samples.reduce((a, s) => a + s.seconds, 0).toFixed(1)} s\n`,
    );
    if (o.json) process.stdout.write(JSON.stringify({ options: o, base, samples }) + '\n');
  } catch (e) {
    failed = true;
    process.stderr.write(`longrun: ${(e as Error).message}\n`);
  } finally {
    cleanup();
  }
  process.exit(failed ? 1 : 0);
}

void main();
