#!/usr/bin/env node
// bench-cache: what the LevelDB metadata cache buys on a cold walk of a deep stack.
//
//   node dist/scripts/bench-cache.js [--runs N] [--layers 40] [--files N] [--seed S] [--rootfs L2:L1:L0]
//                                    [--tmp DIR] [--no-fuse-overlayfs]
//
// For each stack (a generated, seeded stack of --layers layers; and a layered root filesystem when
// --rootfs gives its lower directories, top first), each run mounts every variant with a fresh
// upper/work pair, drops the page cache (echo 3 > /proc/sys/vm/drop_caches) and times
// `find MNT -printf ...` (an lstat of every entry), then the same walk again on the same mount:
//   strata --no-cache        no index: every lookup searches the layers
//   strata, cold cache       fresh cache directory (WORKDIR/strata-cache): listings built during the walk
//   strata, warm cache       remount of the cold case's upper/work after its walk: listings read back
//   kernel overlay           mount -t overlay, the same upper/work arrangement
//   fuse-overlayfs           when installed
// Medians over the runs with the spread (min-max), ratios to the kernel, the daemons' VmRSS/VmHWM
// after the walks, and what strata's index did (from `strata cache stats`). The walks' outputs are
// compared with the kernel's (type, size of non-directories, path) as a sanity check.
//
// Needs root and `make build`. Everything lives under a short temp directory (/tmp/bcXXXXXX: 40
// lowerdir= paths must fit the kernel's one-page mount options); it is unmounted and removed at
// the end, on Ctrl-C and on errors. Not a test: nothing here fails on slowness.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mulberry32 } from '../src/bench/gen.js';

const STRATA = resolve(dirname(fileURLToPath(import.meta.url)), '../../bin/strata');

// ---------------------------------------------------------------- arguments

interface Options {
  runs: number;
  layers: number;
  files: number;
  seed: number;
  rootfs: string[] | null;
  tmp: string;
  fuseOverlayfs: boolean;
}

function usage(code: number): never {
  (code ? process.stderr : process.stdout).write(
    'usage: node dist/scripts/bench-cache.js [--runs N] [--layers 40] [--files N] [--seed S] [--rootfs L2:L1:L0]\n' +
      '         [--tmp DIR] [--no-fuse-overlayfs]\n' +
      '  --runs N        runs per variant (default 5); medians and min-max are printed\n' +
      '  --layers N      layers of the generated stack (default 40; 0: no generated stack, only --rootfs)\n' +
      '  --files N       files spread over them (default 20000)\n' +
      '  --seed S        seed of the generated stack (default 1)\n' +
      '  --rootfs A:B:C  also a stack of these lower directories (top first), e.g. from scripts/build-rootfs.sh\n' +
      '  --tmp DIR       where the short temp directory is made (default /tmp; keep it short). On tmpfs\n' +
      '                  (/dev/shm) drop_caches drops nothing of the layers: the walks measure CPU only\n' +
      '  --no-fuse-overlayfs  leave fuse-overlayfs out (it is measured when installed)\n',
  );
  process.exit(code);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { runs: 5, layers: 40, files: 20000, seed: 1, rootfs: null, tmp: '/tmp', fuseOverlayfs: true };
  const int = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      process.stderr.write(`bench-cache: ${name} takes an integer >= ${min}\n`);
      usage(2);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    switch (flag) {
      case '--runs': o.runs = int(flag, value(), 1); break;
      case '--layers': o.layers = int(flag, value(), 0); break;
      case '--files': o.files = int(flag, value(), 1); break;
      case '--seed': o.seed = int(flag, value(), 0); break;
      case '--rootfs': o.rootfs = (value() ?? '').split(':').filter(Boolean).map((p) => resolve(p)); break;
      case '--tmp': o.tmp = resolve(value() ?? '/tmp'); break;
      case '--no-fuse-overlayfs': o.fuseOverlayfs = false; break;
      case '-h': case '--help': usage(0);
      default:
        process.stderr.write(`bench-cache: unknown argument ${a}\n`);
        usage(2);
    }
  }
  if (o.layers === 1) {
    process.stderr.write('bench-cache: --layers takes 0 (none) or 2 or more\n');
    usage(2);
  }
  if (o.layers === 0 && !o.rootfs) {
    process.stderr.write('bench-cache: --layers 0 leaves nothing to measure without --rootfs\n');
    usage(2);
  }
  if (o.rootfs) {
    if (o.rootfs.length === 0) usage(2);
    for (const d of o.rootfs) {
      if (!existsSync(d) || !statSync(d).isDirectory()) {
        process.stderr.write(`bench-cache: --rootfs: ${d} is not a directory\n`);
        process.exit(2);
      }
    }
  }
  return o;
}

// ---------------------------------------------------------------- processes, mounts, cleanup

let ROOT = ''; // the temp directory; everything mounted lies under it
let cleanedUp = false;

function sh(cmd: string, args: string[], input?: string): { code: number; out: string; err: string } {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', maxBuffer: 1 << 30 });
  return { code: r.status ?? (r.error ? 127 : 128), out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}

function must(cmd: string, args: string[], input?: string): string {
  const r = sh(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code}: ${r.err.trim().split('\n').slice(-3).join(' / ')}`);
  return r.out;
}

/** Async child (so Ctrl-C is handled while it runs). */
function run(cmd: string, args: string[]): Promise<{ code: number; out: string; err: string; seconds: number }> {
  return new Promise((resolveRun, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      resolveRun({ code: code ?? (signal ? 128 : 1), out: Buffer.concat(out).toString('utf8'), err: Buffer.concat(err).toString('utf8'), seconds });
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mounts at or under `dir` (mount point, fs type), in mount order. */
function mountsUnder(dir: string): { mp: string; fstype: string }[] {
  const found: { mp: string; fstype: string }[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'latin1').split('\n')) {
    const f = line.split(' ');
    if (f.length < 10) continue;
    const mp = unescapeMountinfo(f[4]!);
    if (mp === dir || mp.startsWith(dir + '/')) found.push({ mp, fstype: f[f.indexOf('-') + 1] ?? '' });
  }
  return found;
}

function isMounted(mp: string): boolean {
  return mountsUnder(mp).some((m) => m.mp === mp);
}

/** The pid of the process whose command line ends with `tail` (e.g. ['__daemon', mnt]). */
function pidByCmdline(tail: string[], argv0?: RegExp): number | null {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (argv[argv.length - 1] === '') argv.pop();
    if (argv.length < tail.length) continue;
    if (argv0 && !argv0.test(argv[0]!)) continue;
    if (tail.every((t, i) => argv[argv.length - tail.length + i] === t)) return Number(name);
  }
  return null;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return !/^\d+ \(.*\) Z/.test(stat); // a zombie has exited
  } catch {
    return false;
  }
}

async function waitGone(pid: number | null, ms: number): Promise<boolean> {
  if (pid === null) return true;
  for (let t = 0; t < ms && alive(pid); t += 25) await sleep(25);
  return !alive(pid);
}

/** Synchronous, for signal handlers and exit: unmount everything under ROOT, then remove it. */
function cleanup(): void {
  if (cleanedUp || !ROOT) return;
  cleanedUp = true;
  for (let pass = 0; pass < 4; pass++) {
    const mounts = mountsUnder(ROOT).reverse();
    if (mounts.length === 0) break;
    for (const { mp, fstype } of mounts) {
      if (fstype === 'fuse.strata' && existsSync(STRATA)) sh(STRATA, ['umount', mp]);
      if (isMounted(mp) && sh('umount', [mp]).code !== 0) sh('umount', ['-l', mp]);
    }
    sleepSync(300); // a daemon started by an interrupted mount command may mount just now
  }
  const left = mountsUnder(ROOT);
  if (left.length > 0) {
    process.stderr.write(`bench-cache: still mounted, ${ROOT} left in place: ${left.map((m) => m.mp).join(' ')}\n`);
    return;
  }
  sh('rm', ['-rf', '--one-file-system', ROOT]);
}

// ---------------------------------------------------------------- the generated stack


interface GenDir {
  path: string; // '' for the root, else 'd3/d17'
  depth: number;
  parent: GenDir | null;
  layers: Set<number>; // layer indices (0 = top) holding this directory
}

interface GenStats {
  dirs: number;
  files: number;
  overrides: number;
  symlinks: number;
  whiteouts: number;
  dirWhiteouts: number;
  opaque: number;
  layerEntries: number;
}

/**
 * A seeded stack: directories present in many layers (each in ~60% of them), files mostly at the
 * bottom of their directory's layers (so a lookup searches deep), some overridden higher up, some
 * symlinks, whiteouts of files and of whole directories, opaque directories. Kernel formats
 * (char 0/0, trusted.overlay.opaque=y), so the kernel's overlay reads the same stack.
 */
function generateStack(root: string, nLayers: number, nFiles: number, seed: number): { lowers: string[]; stats: GenStats } {
  const rnd = mulberry32(seed);
  const pick = <T>(a: T[]): T => a[Math.floor(rnd() * a.length)]!;
  const lowers = Array.from({ length: nLayers }, (_, i) => join(root, 'l' + String(i).padStart(2, '0')));
  // what each layer holds at each relative path: d(ir), f(ile), s(ymlink), w(hiteout)
  const entries = lowers.map(() => new Map<string, 'd' | 'f' | 's' | 'w'>());
  const stats: GenStats = { dirs: 0, files: 0, overrides: 0, symlinks: 0, whiteouts: 0, dirWhiteouts: 0, opaque: 0, layerEntries: 0 };

  const top: GenDir = { path: '', depth: 0, parent: null, layers: new Set(lowers.map((_, i) => i)) };
  const dirs: GenDir[] = [top];
  const nDirs = Math.max(8, Math.round(nFiles / 30));
  const addLayer = (d: GenDir, l: number): void => {
    for (let x: GenDir | null = d; x && !x.layers.has(l); x = x.parent) x.layers.add(l);
  };
  for (let i = 0; i < nDirs; i++) {
    const candidates = dirs.filter((d) => d.depth < 5);
    const parent = rnd() < 0.3 ? top : pick(candidates);
    const d: GenDir = { path: (parent.path ? parent.path + '/' : '') + 'd' + i, depth: parent.depth + 1, parent, layers: new Set() };
    for (let l = 0; l < nLayers; l++) if (rnd() < 0.6) addLayer(d, l);
    if (d.layers.size === 0) addLayer(d, Math.floor(rnd() * nLayers));
    dirs.push(d);
  }
  stats.dirs = nDirs;
  const sorted = (d: GenDir): number[] => [...d.layers].sort((a, b) => a - b);

  const files: { dir: GenDir; name: string; layer: number }[] = [];
  const sizes = new Map<string, number>(); // layer:path -> size
  for (let i = 0; i < nFiles; i++) {
    const dir = pick(dirs.slice(1).concat(top)); // every directory, the root too
    const ls = sorted(dir);
    const layer = rnd() < 0.5 ? ls[ls.length - 1]! : pick(ls); // half of them at the bottom
    const name = 'f' + i;
    const rel = (dir.path ? dir.path + '/' : '') + name;
    entries[layer]!.set(rel, 'f');
    sizes.set(`${layer}:${rel}`, Math.floor(rnd() * 16384));
    files.push({ dir, name, layer });
    stats.files++;
    const above = ls.filter((l) => l < layer);
    if (above.length > 0 && rnd() < 0.1) {
      const l = pick(above);
      entries[l]!.set(rel, 'f');
      sizes.set(`${l}:${rel}`, Math.floor(rnd() * 16384));
      stats.overrides++;
    }
    if (rnd() < 0.03) {
      const l = pick(ls);
      const srel = (dir.path ? dir.path + '/' : '') + 's' + i;
      entries[l]!.set(srel, 's');
      stats.symlinks++;
    }
  }
  // file whiteouts: a layer above the file's hides it
  for (let i = 0; i < Math.round(nFiles * 0.03); i++) {
    const f = pick(files);
    if (f.layer === 0) continue;
    const rel = (f.dir.path ? f.dir.path + '/' : '') + f.name;
    const above = sorted(f.dir).filter((l) => l < f.layer);
    const l = above.length > 0 && rnd() < 0.8 ? pick(above) : Math.floor(rnd() * f.layer);
    if (entries[l]!.has(rel)) continue;
    addLayer(f.dir, l);
    entries[l]!.set(rel, 'w');
    stats.whiteouts++;
  }
  // directory whiteouts: a layer of the parent, above some of the directory's, without it
  for (let i = 0; i < Math.round(nDirs * 0.02); i++) {
    const d = pick(dirs.slice(1));
    const bottom = Math.max(...d.layers);
    const cands = sorted(d.parent!).filter((l) => l < bottom && !d.layers.has(l));
    if (cands.length === 0) continue;
    const l = pick(cands);
    if (entries[l]!.has(d.path)) continue;
    entries[l]!.set(d.path, 'w');
    stats.dirWhiteouts++;
  }
  // opaque directories: in one of its layers above its bottom one
  const opaque: string[] = [];
  for (let i = 0; i < Math.round(nDirs * 0.03); i++) {
    const d = pick(dirs.slice(1));
    const ls = sorted(d);
    if (ls.length < 3) continue;
    const l = ls[Math.floor(rnd() * (ls.length - 1))]!;
    const p = join(lowers[l]!, d.path);
    if (!opaque.includes(p)) opaque.push(p);
  }
  stats.opaque = opaque.length;

  // write it out
  for (let l = 0; l < nLayers; l++) {
    mkdirSync(lowers[l]!, { recursive: true });
    for (const d of dirs) if (d.layers.has(l)) mkdirSync(join(lowers[l]!, d.path), { recursive: true });
  }
  let script = '';
  for (let l = 0; l < nLayers; l++) {
    for (const [rel, kind] of entries[l]!) {
      const p = join(lowers[l]!, rel);
      stats.layerEntries++;
      if (kind === 'f') {
        writeFileSync(p, '');
        truncateSync(p, sizes.get(`${l}:${rel}`)!); // sparse: sizes, not data
      } else if (kind === 's') {
        symlinkSync('f' + Math.floor(rnd() * nFiles), p);
      } else if (kind === 'w') {
        script += `mknod '${p}' c 0 0\n`;
      }
    }
  }
  for (const p of opaque) script += `setfattr -n trusted.overlay.opaque -v y '${p}'\n`;
  must('sh', ['-e'], script);
  return { lowers, stats };
}

// ---------------------------------------------------------------- one measured mount

type Variant = 'nocache' | 'cold' | 'warm' | 'kernel' | 'fuse-overlayfs';
const LABEL: Record<Variant, string> = {
  nocache: 'strata --no-cache',
  cold: 'strata, cold cache',
  warm: 'strata, warm cache',
  kernel: 'kernel overlay',
  'fuse-overlayfs': 'fuse-overlayfs',
};

interface Sample {
  mountSeconds: number;
  walk1: number;
  walk2: number;
  entries: number;
  rssKiB: number | null;
  hwmKiB: number | null;
  listing: string[]; // "type size path" of the first walk, sorted (sizes of directories left out)
  inodes: Map<string, string>; // path -> st_ino
  index: Record<string, unknown> | null; // strata cache stats of this mount
  cacheKiB: number | null;
}

function dropCaches(): void {
  must('sync', []);
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

function memory(pid: number | null): { rss: number | null; hwm: number | null } {
  if (pid === null) return { rss: null, hwm: null };
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'latin1');
    const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
    return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
  } catch {
    return { rss: null, hwm: null };
  }
}

async function walk(mnt: string): Promise<{ seconds: number; out: string }> {
  const r = await run('find', [mnt, '-printf', '%y\t%i\t%s\t%P\n']);
  if (r.code !== 0) throw new Error(`find ${mnt}: exit ${r.code}: ${r.err.trim().split('\n').slice(0, 3).join(' / ')}`);
  return { seconds: r.seconds, out: r.out };
}

async function measure(variant: Variant, lowers: string[], mnt: string, upper: string, work: string): Promise<Sample> {
  mkdirSync(mnt, { recursive: true });
  mkdirSync(upper, { recursive: true });
  mkdirSync(work, { recursive: true });
  const opts = `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}`;
  const strata = variant === 'nocache' || variant === 'cold' || variant === 'warm';
  const mountCmd: [string, string[]] = strata
    ? [STRATA, ['mount', '-o', opts, ...(variant === 'nocache' ? ['--no-cache'] : []), mnt]]
    : variant === 'kernel'
      ? ['mount', ['-t', 'overlay', 'overlay', '-o', opts, mnt]]
      : ['fuse-overlayfs', ['-o', opts, mnt]];
  const m = await run(...mountCmd);
  if (m.code !== 0) throw new Error(`${LABEL[variant]}: mount failed (exit ${m.code}): ${m.err.trim()}`);
  const pid = strata ? pidByCmdline(['__daemon', mnt]) : variant === 'fuse-overlayfs' ? pidByCmdline([mnt], /fuse-overlayfs/) : null;
  try {
    dropCaches();
    const w1 = await walk(mnt);
    const w2 = await walk(mnt);
    const mem = memory(pid);
    const lines = w1.out.split('\n').filter(Boolean);
    const inodes = new Map<string, string>();
    const listing = lines.map((l) => {
      const [type, ino, size, path] = l.split('\t') as [string, string, string, string];
      inodes.set(path, ino);
      return `${type} ${type === 'd' ? '-' : size} ${path}`;
    }).sort();
    return { mountSeconds: m.seconds, walk1: w1.seconds, walk2: w2.seconds, entries: lines.length, rssKiB: mem.rss, hwmKiB: mem.hwm,
      listing, inodes, index: null, cacheKiB: null };
  } finally {
    if (strata) {
      const u = await run(STRATA, ['umount', mnt]);
      if (u.code !== 0) throw new Error(`strata umount ${mnt}: ${u.err.trim()}`);
    } else {
      const u = await run('umount', [mnt]);
      if (u.code !== 0) throw new Error(`umount ${mnt}: ${u.err.trim()}`);
    }
    // the next mount of the same cache needs the LevelDB lock: wait for the daemon to exit
    if (!(await waitGone(pid, 10000))) throw new Error(`${LABEL[variant]}: daemon ${pid} still running 10 s after unmount`);
  }
}

async function cacheStats(work: string): Promise<{ index: Record<string, unknown> | null; kib: number | null }> {
  const r = await run(STRATA, ['cache', 'stats', '--workdir', work, '--json']);
  if (r.code !== 0) return { index: null, kib: null };
  try {
    const s = JSON.parse(r.out) as { lastMount: Record<string, unknown> | null; bytes: number };
    return { index: s.lastMount, kib: s.bytes / 1024 };
  } catch {
    return { index: null, kib: null };
  }
}

// ---------------------------------------------------------------- statistics and the table

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

function secs(s: number): string {
  if (s >= 10) return s.toFixed(1) + ' s';
  if (s >= 1) return s.toFixed(2) + ' s';
  if (s >= 0.1) return (s * 1000).toFixed(0) + ' ms';
  if (s >= 0.01) return (s * 1000).toFixed(1) + ' ms';
  return (s * 1000).toFixed(2) + ' ms';
}

function spread(xs: number[]): string {
  return `${secs(median(xs))} (${secs(Math.min(...xs))}-${secs(Math.max(...xs))})`;
}

function mib(kib: number[]): string {
  const v = kib.filter((x) => Number.isFinite(x));
  return v.length ? (median(v) / 1024).toFixed(0) : '-';
}

function table(header: string[], rows: string[][], right: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : Number(v ?? NaN);
}

function report(title: string, samples: Map<Variant, Sample[]>, runs: number): void {
  const kernel = samples.get('kernel');
  const k1 = kernel ? median(kernel.map((s) => s.walk1)) : NaN;
  const k2 = kernel ? median(kernel.map((s) => s.walk2)) : NaN;
  const ratio = (v: number, k: number) => (Number.isFinite(k) && k > 0 ? (v / k).toFixed(1) + 'x' : '-');
  const rows: string[][] = [];
  for (const [variant, ss] of samples) {
    const w1 = ss.map((s) => s.walk1);
    const w2 = ss.map((s) => s.walk2);
    rows.push([
      LABEL[variant],
      spread(w1),
      ratio(median(w1), k1),
      spread(w2),
      ratio(median(w2), k2),
      secs(median(ss.map((s) => s.mountSeconds))),
      variant === 'kernel' ? '-' : `${mib(ss.map((s) => s.rssKiB ?? NaN))} / ${mib(ss.map((s) => s.hwmKiB ?? NaN))}`,
    ]);
  }
  const entries = kernel?.[0]?.entries ?? [...samples.values()][0]?.[0]?.entries ?? 0;
  const load = readFileSync('/proc/loadavg', 'latin1').split(' ').slice(0, 3).join(' ');
  process.stdout.write(`\n${title}\n${entries} entries in the merged tree; medians of ${runs} run${runs === 1 ? '' : 's'} (min-max); ` +
    `load average now ${load}\n\n`);
  process.stdout.write(table(
    ['', 'first walk, cold', 'vs kernel', 'second walk', 'vs kernel', 'mount', 'RSS / HWM MiB'],
    rows,
    [false, true, true, true, true, true, true],
  ) + '\n');
  // what strata's index did, from `strata cache stats` of each cached mount
  for (const v of ['cold', 'warm'] as const) {
    const ss = samples.get(v)?.filter((s) => s.index);
    if (!ss || ss.length === 0) continue;
    const f = (k: string) => median(ss.map((s) => num(s.index![k])));
    const kib = ss.map((s) => s.cacheKiB ?? NaN).filter(Number.isFinite);
    process.stdout.write(`  ${LABEL[v]}: index hits ${f('hits')}, misses ${f('misses')}; listings built ${f('builds')}, read from LevelDB ${f('loads')}, ` +
      `stale ${f('stale')}${kib.length ? `; cache ${median(kib).toFixed(0)} KiB on disk` : ''}\n`);
  }
  // sanity: the same tree as the kernel's
  if (kernel) {
    const ref = kernel[0]!;
    for (const [variant, ss] of samples) {
      if (variant === 'kernel') continue;
      const s = ss[0]!;
      const a = new Set(ref.listing);
      const b = new Set(s.listing);
      const missing = ref.listing.filter((l) => !b.has(l));
      const extra = s.listing.filter((l) => !a.has(l));
      if (missing.length || extra.length) {
        process.stdout.write(`  ! ${LABEL[variant]} shows another tree than the kernel: ${missing.length} entries missing, ${extra.length} extra` +
          ` (e.g. ${[...missing.slice(0, 2).map((l) => '-' + l), ...extra.slice(0, 2).map((l) => '+' + l)].join(', ')})\n`);
      }
      const inoDiff: string[] = [];
      // the root is left out: it shows the upper's root, a fresh directory for every mount here
      for (const [p, ino] of s.inodes) if (p && ref.inodes.has(p) && ref.inodes.get(p) !== ino) inoDiff.push(`/${p} ${ino} vs ${ref.inodes.get(p)!}`);
      if (inoDiff.length > 0) {
        process.stdout.write(`  (${LABEL[variant]}: st_ino differs from the kernel's for ${inoDiff.length} of ${s.inodes.size} entries below the root, ` +
          `e.g. ${inoDiff.slice(0, 2).join(', ')})\n`);
      }
    }
  }
}

// ---------------------------------------------------------------- main

async function benchStack(title: string, lowers: string[], o: Options, haveFuseOverlayfs: boolean): Promise<void> {
  const samples = new Map<Variant, Sample[]>();
  const order: Variant[] = ['nocache', 'cold', 'warm', 'kernel', ...(haveFuseOverlayfs ? ['fuse-overlayfs' as const] : [])];
  for (const v of order) samples.set(v, []);
  // units of one run; the order rotates from run to run so no variant always follows another
  const units: Variant[][] = [['nocache'], ['cold', 'warm'], ['kernel'], ...(haveFuseOverlayfs ? [['fuse-overlayfs' as Variant]] : [])];
  const mnt = join(ROOT, 'm');
  for (let r = 0; r < o.runs; r++) {
    process.stderr.write(`  run ${r + 1}/${o.runs}:`);
    for (let k = 0; k < units.length; k++) {
      const unit = units[(k + r) % units.length]!;
      const tag = unit[0] === 'fuse-overlayfs' ? 'f' : unit[0]![0]!;
      const upper = join(ROOT, 'u' + tag);
      const work = join(ROOT, 'w' + tag);
      sh('rm', ['-rf', '--one-file-system', upper, work]); // a fresh pair for every run
      for (const v of unit) {
        process.stderr.write(` ${v}`);
        const s = await measure(v, lowers, mnt, upper, work);
        if (v === 'cold' || v === 'warm') {
          const c = await cacheStats(work);
          s.index = c.index;
          s.cacheKiB = c.kib;
        }
        samples.get(v)!.push(s);
      }
      sh('rm', ['-rf', '--one-file-system', upper, work]);
    }
    process.stderr.write('\n');
  }
  report(title, samples, o.runs);
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench-cache: must run as root (mount, drop_caches)\n');
    process.exit(1);
  }
  if (!existsSync(STRATA)) {
    process.stderr.write(`bench-cache: ${STRATA} is missing: run make build\n`);
    process.exit(1);
  }
  const haveFuseOverlayfs = o.fuseOverlayfs && sh('sh', ['-c', 'command -v fuse-overlayfs']).code === 0;
  sh('modprobe', ['overlay']);
  sh('modprobe', ['fuse']);

  mkdirSync(o.tmp, { recursive: true });
  ROOT = mkdtempSync(join(o.tmp, 'bc'));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench-cache: ${sig}: unmounting and removing ${ROOT}\n`);
      cleanup();
      process.exit(130);
    });
  }
  process.on('exit', cleanup);

  const kernelRelease = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  const cpus = readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length;
  const fsType = sh('stat', ['-f', '-c', '%T', ROOT]).out.trim();
  process.stdout.write(`bench-cache: Linux ${kernelRelease}, ${cpus} CPUs, node ${process.version}, temp ${ROOT} (${fsType}), load average ${readFileSync('/proc/loadavg', 'latin1').split(' ').slice(0, 3).join(' ')}` +
    `${haveFuseOverlayfs ? ', ' + (sh('fuse-overlayfs', ['--version']).out.split('\n').find((l) => l.startsWith('fuse-overlayfs')) ?? 'fuse-overlayfs') : ', no fuse-overlayfs'}\n` +
    'first walk: find -printf after mount + drop_caches; second walk: the same again on that mount; RSS/HWM of the daemon after both\n');

  if (o.layers > 0) {
    const t0 = Date.now();
    const gen = generateStack(join(ROOT), o.layers, o.files, o.seed);
    const g = gen.stats;
    process.stderr.write(`generated ${o.layers} layers in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    await benchStack(
      `== generated stack: ${o.layers} layers (seed ${o.seed}): ${g.files} files (${g.overrides} overridden higher up), ${g.symlinks} symlinks, ` +
        `${g.dirs} dirs in ~60% of the layers each, ${g.whiteouts} file and ${g.dirWhiteouts} dir whiteouts, ${g.opaque} opaque dirs; ` +
        `${g.layerEntries} entries over the layers`,
      gen.lowers, o, haveFuseOverlayfs);
  }

  if (o.rootfs) {
    await benchStack(`== rootfs: ${o.rootfs.join(':')}`, o.rootfs, o, haveFuseOverlayfs);
  }
}

main().then(
  () => {
    cleanup();
    process.exit(0);
  },
  (e: unknown) => {
    process.stderr.write(`\nbench-cache: ${(e as Error).message ?? String(e)}\n`);
    cleanup();
    process.exit(1);
  },
);
