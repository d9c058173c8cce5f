// make bench-images: strata's image commands against podman's on the same image, in the same run.
// The image is the Debian rootfs of `make rootfs` (flattened through a kernel overlay), imported and
// saved by podman (docker-archive). Each run, on fresh stores:
//   load    strata image load -i IMG.tar          podman load -i IMG.tar
//   commit  of a container that wrote 100 MiB     strata commit C T / podman commit C T
//   save    strata image save T -o F              podman save -o F T
//   export  strata export C -o F                  podman export -o F C
//   push    strata push IMG REG/s/bench:1          podman push IMG REG/p/bench:1   (a new registry each run)
//   pull    strata pull REG/seed/bench:1           podman pull REG/seed/bench:1    (into empty stores)
//   build   strata build --no-cache CTX            podman build --no-cache CTX     (RUN writing 50 MiB, COPY of a
//           500-file context, ENV/WORKDIR/CMD; the input image as base)
// push and pull go to a registry the bench starts on 127.0.0.1 (docker-registry, storage under --tmp);
// the pulled image is podman's push of the input image (gzip layers), made once before the runs.
// Medians and min–max of --runs N (default 3), and the ratio strata/podman per step. --steps picks
// the rows (e.g. --steps export): the others are then done untimed where a row needs them (the
// container for commit and export, the commit for save) or skipped.
// Usage: node dist/scripts/bench-images.js [--runs N] [--steps load,run,commit,save,export,push,pull,build] [--tmp DIR] [--rootfs L2:L1:L0] [--out DIR]
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const STRATA = path.join(ROOT, 'bin', 'strata');
const STEPS = ['load', 'run', 'commit', 'save', 'export', 'push', 'pull', 'build'] as const;
type Step = (typeof STEPS)[number];

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const runs = Number(arg('runs', '3'));
const tmpBase = arg('tmp', '/var/tmp');
const outDir = arg('out', 'bench-results');
const rootfs = arg('rootfs', '/var/cache/strata/rootfs/l2:/var/cache/strata/rootfs/l1:/var/cache/strata/rootfs/l0');
const steps = arg('steps', STEPS.join(',')).split(',') as Step[];
for (const st of steps) if (!STEPS.includes(st)) throw new Error(`--steps: no step "${st}" (${STEPS.join(', ')})`);
const want = (st: Step): boolean => steps.includes(st);

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): void {
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 3_600_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: status ${r.status}: ${(r.stderr ?? '').trim().slice(-1000)}`);
}

/** Seconds a command takes (the page cache is dropped before, so each side starts cold). */
function timed(cmd: string, args: string[], env?: NodeJS.ProcessEnv): number {
  spawnSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  const t0 = process.hrtime.bigint();
  sh(cmd, args, env);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

interface Podman {
  env: NodeJS.ProcessEnv;
  args: string[];
}

function podmanIn(root: string): Podman {
  for (const d of ['graph', 'run', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.writeFileSync(path.join(root, 'registries.conf'), '');
  fs.writeFileSync(path.join(root, 'storage.conf'), `[storage]\ndriver = "overlay"\ngraphroot = "${root}/graph"\nrunroot = "${root}/run"\n`);
  return {
    env: { ...process.env, CONTAINERS_STORAGE_CONF: path.join(root, 'storage.conf'), CONTAINERS_REGISTRIES_CONF: path.join(root, 'registries.conf') },
    args: ['--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', '--tmpdir', path.join(root, 'tmp')],
  };
}

function podman(p: Podman, args: string[]): void {
  sh('podman', [...p.args, ...args], p.env);
}

/** `podman system reset`, whose failure (it sometimes cannot empty its own --tmpdir) cleanup() makes up for. */
function podmanReset(p: Podman): void {
  spawnSync('podman', [...p.args, 'system', 'reset', '-f'], { env: p.env, stdio: 'ignore', timeout: 600_000 });
}

function podmanTimed(p: Podman, args: string[]): number {
  return timed('podman', [...p.args, ...args], p.env);
}

const WRITE_100M = 'head -c 104857600 /dev/urandom > /var/tmp/big && sync';
const LIMITS = ['--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768', '--network', 'none'];

/** docker-registry on a free 127.0.0.1 port, storing under `dir`; its address and process. */
async function startRegistry(dir: string): Promise<{ host: string; proc: ChildProcess }> {
  const port = await new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  fs.mkdirSync(dir, { recursive: true });
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(config, `version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\n` +
    `http:\n  addr: 127.0.0.1:${port}\n`);
  const proc = spawn('docker-registry', ['serve', config], { stdio: 'ignore' });
  for (let i = 0; i < 200; i++) {
    if (spawnSync('curl', ['-sf', '-o', '/dev/null', `http://127.0.0.1:${port}/v2/`]).status === 0) return { host: `127.0.0.1:${port}`, proc };
    await new Promise((r) => setTimeout(r, 50));
  }
  proc.kill();
  throw new Error('docker-registry did not start');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function cleanup(dir: string): void {
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(dir + '/')).reverse();
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  spawnSync('rm', ['-rf', '--one-file-system', dir]);
}

async function main(): Promise<void> {
  const base = fs.mkdtempSync(path.join(tmpBase, 'bench-images-'));
  let registry: { host: string; proc: ChildProcess } | null = null;
  process.on('SIGINT', () => {
    cleanup(base);
    process.exit(130);
  });
  const results: Record<'strata' | 'podman', Record<Step, number[]>> = {
    strata: { load: [], run: [], commit: [], save: [], export: [], push: [], pull: [], build: [] },
    podman: { load: [], run: [], commit: [], save: [], export: [], push: [], pull: [], build: [] },
  };
  try {
    // The input image, once.
    const kmnt = path.join(base, 'k');
    fs.mkdirSync(kmnt);
    sh('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${rootfs}`, kmnt]);
    const rootfsTar = path.join(base, 'rootfs.tar');
    try {
      sh('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', kmnt, '-cf', rootfsTar, '.']);
    } finally {
      sh('umount', [kmnt]);
    }
    const seed = podmanIn(path.join(base, 'seed'));
    podman(seed, ['import', '-q', rootfsTar, 'localhost/bench:base']);
    const image = path.join(base, 'image.tar');
    podman(seed, ['save', '-o', image, 'localhost/bench:base']);
    if (want('push') || want('pull')) {
      registry = await startRegistry(path.join(base, 'registry'));
      podman(seed, ['push', '-q', '--tls-verify=false', 'localhost/bench:base', `${registry.host}/seed/bench:1`]);
    }
    podmanReset(seed);
    fs.rmSync(rootfsTar);
    // The build's context: a Dockerfile and 500 small files.
    const buildCtx = path.join(base, 'build-ctx');
    fs.mkdirSync(path.join(buildCtx, 'files'), { recursive: true });
    for (let i = 0; i < 500; i++) fs.writeFileSync(path.join(buildCtx, 'files', `f${i}`), `file ${i}\n`.repeat(50));
    fs.writeFileSync(path.join(buildCtx, 'Dockerfile'), 'FROM localhost/bench:base\nENV APP=/srv/app\nWORKDIR /srv/app\n' +
      'RUN head -c 52428800 /dev/urandom > /srv/big && sync\nCOPY files/ /srv/app/files/\nCMD ["ls", "/srv/app"]\n');
    const mib = fs.statSync(image).size / 2 ** 20;
    process.stderr.write(`image: ${mib.toFixed(0)} MiB docker-archive; ${runs} runs\n`);

    for (let r = 0; r < runs; r++) {
      const dir = path.join(base, `run${r}`);
      fs.mkdirSync(dir);
      // strata
      /** Runs a step, timed when it is one of --steps. */
      const step = (st: Step, side: 'strata' | 'podman', fn: (timedRun: boolean) => number | void): void => {
        const t = fn(want(st));
        if (want(st)) results[side][st].push(t as number);
      };
      const needContainer = want('commit') || want('save') || want('export');
      const needCommit = want('commit') || want('save');
      const env = { ...process.env, STRATA_STORE: path.join(dir, 'store') };
      const strata = (timedRun: boolean, args: string[]): number | void => (timedRun ? timed(STRATA, args, env) : sh(STRATA, args, env));
      step('load', 'strata', (tr) => strata(tr, ['image', 'load', '-q', '-i', image]));
      // run: a container's whole life for a command that does nothing (create, mount, namespaces, unmount, rm)
      if (want('run')) step('run', 'strata', () => timed(STRATA, ['run', '--rm', 'localhost/bench:base', 'true'], env));
      if (needContainer) sh(STRATA, ['run', '--name', 'c', 'localhost/bench:base', 'sh', '-c', WRITE_100M], env);
      if (needCommit) step('commit', 'strata', (tr) => strata(tr, ['commit', 'c', 'localhost/bench:c']));
      if (want('save')) step('save', 'strata', (tr) => strata(tr, ['image', 'save', 'localhost/bench:c', '-o', path.join(dir, 's-save.tar')]));
      if (want('export')) step('export', 'strata', (tr) => strata(tr, ['export', 'c', '-o', path.join(dir, 's-export.tar')]));
      // podman
      const p = podmanIn(path.join(dir, 'podman'));
      const pod = (timedRun: boolean, args: string[]): number | void => (timedRun ? podmanTimed(p, args) : podman(p, args));
      step('load', 'podman', (tr) => pod(tr, ['load', '-q', '-i', image]));
      if (want('run')) step('run', 'podman', () => podmanTimed(p, ['run', '--rm', ...LIMITS, 'localhost/bench:base', 'true']));
      if (needContainer) podman(p, ['run', '--name', 'c', ...LIMITS, 'localhost/bench:base', 'sh', '-c', WRITE_100M]);
      if (needCommit) step('commit', 'podman', (tr) => pod(tr, ['commit', '-q', 'c', 'localhost/bench:c']));
      if (want('save')) step('save', 'podman', (tr) => pod(tr, ['save', '-o', path.join(dir, 'p-save.tar'), 'localhost/bench:c']));
      if (want('export')) step('export', 'podman', (tr) => pod(tr, ['export', '-o', path.join(dir, 'p-export.tar'), 'c']));
      if (want('push')) {
        // A registry of its own for each run: neither side knows of blobs there (podman keeps a cache
        // of where it saw blobs, and mounts them from there instead of sending them).
        const fresh = await startRegistry(path.join(dir, 'push-registry'));
        try {
          step('push', 'strata', () => timed(STRATA, ['push', '-q', 'localhost/bench:base', `${fresh.host}/s/bench:1`], env));
          step('push', 'podman', () => podmanTimed(p, ['push', '-q', '--tls-verify=false', 'localhost/bench:base', `${fresh.host}/p/bench:1`]));
        } finally {
          fresh.proc.kill();
        }
      }
      if (want('pull')) {
        const pullEnv = { ...process.env, STRATA_STORE: path.join(dir, 'pull-store') };
        step('pull', 'strata', () => timed(STRATA, ['pull', '-q', `${registry!.host}/seed/bench:1`], pullEnv));
        const pp = podmanIn(path.join(dir, 'podman-pull'));
        step('pull', 'podman', () => podmanTimed(pp, ['pull', '-q', '--tls-verify=false', `${registry!.host}/seed/bench:1`]));
        podmanReset(pp);
      }
      if (want('build')) {
        step('build', 'strata', () => timed(STRATA, ['build', '-q', '--no-cache', '-t', 'localhost/bench:built', buildCtx], env));
        step('build', 'podman', () => podmanTimed(p, ['build', '-q', '--no-cache', ...LIMITS, '-t', 'localhost/bench:built', buildCtx]));
      }
      podman(p, ['rm', '-af']);
      podmanReset(p);
      cleanup(dir);
      process.stderr.write(`run ${r + 1}/${runs}: ${steps.map((st) => `${st} ${results.strata[st][r]!.toFixed(2)} s vs ${results.podman[st][r]!.toFixed(2)} s`).join(', ')}\n`);
    }
  } finally {
    registry?.proc.kill();
    cleanup(base);
  }
  const fmt = (xs: number[]): string => `${median(xs).toFixed(2)} s (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
  const lines = ['| step | strata | podman | strata / podman |', '|---|---|---|---|'];
  for (const step of steps) {
    const s = results.strata[step];
    const p = results.podman[step];
    lines.push(`| ${step} | ${fmt(s)} | ${fmt(p)} | ${(median(s) / median(p)).toFixed(2)}× |`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'bench-images.json'), JSON.stringify({ runs, results }, null, 2));
}

await main();
