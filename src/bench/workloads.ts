// What `strata bench` measures. Each workload runs on a fresh mount (fresh upper and work
// directories) of the layers it names; `measure` returns seconds (or, for a series, seconds per
// point). Commands are run as a user would run them; where a program's own start-up would hide
// the cost, a small python3 loop times the system calls from inside.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Sizes } from './gen.js';
import { treeDirs } from './gen.js';

/**
 * Which layers a workload mounts: the generated image (its files by name), any layers (the image,
 * or those given with --lowerdir), the generated deep stack, the generated wide layer, or the
 * Debian rootfs (--rootfs).
 */
export type LayerSet = 'image' | 'any' | 'deep' | 'wide' | 'rootfs';

export interface Context {
  mnt: string;
  sizes: Sizes;
  /** The tarball for the untar workload. */
  tarball: string;
  /** Lower layers of the mounted set, top first. */
  lowers: string[];
  /** The layers are the generated image (not --lowerdir). */
  generated: boolean;
}

export interface Workload {
  name: string;
  title: string;
  /** What exactly is timed, for the report. */
  what: string;
  layers: LayerSet;
  /** A series (copy-up latency by file size): measure returns one value per point. */
  series?: boolean;
  /** The mount itself is the measurement. */
  isMount?: boolean;
  /**
   * The daemon's resident memory is part of the result: read from /proc/PID/status right after the
   * measurement and again after Sizes.settleMs without requests.
   */
  memory?: boolean;
  setup?(c: Context): void;
  measure(c: Context): number | Record<string, number>;
}

export function dropCaches(): void {
  spawnSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

function run(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, maxBuffer: 64 << 20, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 3).join(' ')}...: ${(r.stderr || '').trim().split('\n').slice(-3).join(' ') || `exit ${r.status}`}`);
  return r.stdout;
}

/**
 * Reads the lower files under `dir` (in every lower layer, not through the mount), so that a copy-up
 * then times the copy, not the disk: the machine may have paged their data out meanwhile (DAMON, see
 * host.ts), and the layers' files were written long before the run.
 */
function readLowers(c: Context, dir: string): void {
  run('sh', ['-c', 'for d; do [ -d "$d" ] && find "$d" -type f -exec cat {} + > /dev/null; done; true', 'sh', ...c.lowers.map((l) => join(l, dir))]);
}

/** Times a whole command (its start-up included, the same for every system). */
function timed(cmd: string, args: string[]): number {
  const t0 = process.hrtime.bigint();
  run(cmd, args);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Runs a python3 program that prints the seconds (or a JSON object of them) it measured itself. */
function py<T>(program: string, ...args: string[]): T {
  return JSON.parse(run('python3', ['-c', `import os, sys, time, json\n${program}`, ...args]).trim()) as T;
}

export const WORKLOADS: Workload[] = [
  {
    name: 'mount',
    title: 'mount',
    what: 'the mount command, until it returns with the mount live (strata: `strata mount`, which waits for the mount to answer)',
    layers: 'any',
    isMount: true,
    measure: () => NaN, // timed by the runner around the mount
  },
  {
    name: 'mount-deep',
    title: 'mount of the deep stack',
    what: 'the mount command, as above, with the 40 layers of the deep stack',
    layers: 'deep',
    isMount: true,
    measure: () => NaN, // timed by the runner around the mount
  },
  {
    name: 'walk-cold',
    title: 'cold walk',
    what: '`find MNT -printf ...` (an lstat of every entry) right after the mount, page cache dropped',
    layers: 'any',
    setup: () => dropCaches(),
    measure: (c) => timed('find', [c.mnt, '-printf', '%s %m\\n']),
  },
  {
    name: 'walk-warm',
    title: 'warm walk',
    what: 'the same `find` again, after a first walk on the same mount',
    layers: 'any',
    setup: (c) => void run('find', [c.mnt, '-printf', '%s %m\\n']),
    measure: (c) => timed('find', [c.mnt, '-printf', '%s %m\\n']),
  },
  {
    name: 'walk-memory',
    title: 'walk of the wide layer',
    what: '`find MNT -printf ...` of the wide layer (100k empty files, 1000 per directory; 2000 with --quick) right after the mount; the daemon\'s ' +
      'resident memory (VmRSS) is read right after the walk and again after some seconds without requests',
    layers: 'wide',
    memory: true,
    measure: (c) => timed('find', [c.mnt, '-printf', '%s %m\n']),
  },
  {
    name: 'read-all',
    title: 'read every file',
    what: '`find MNT/tree -type f -exec cat {} +` (open, read, close of every small file; all of MNT for --lowerdir), page cache dropped',
    layers: 'any',
    setup: () => dropCaches(),
    measure: (c) => timed('sh', ['-c', `find '${c.generated ? join(c.mnt, 'tree') : c.mnt}' -type f -exec cat {} + > /dev/null`]),
  },
  {
    name: 'seq-read',
    title: 'sequential read',
    what: 'read(2) of the big lower file in 1 MiB blocks, page cache dropped',
    layers: 'image',
    setup: () => dropCaches(),
    measure: (c) => py<number>(`
f = os.open(sys.argv[1], os.O_RDONLY); t = time.perf_counter()
while os.read(f, 1 << 20): pass
print(time.perf_counter() - t)`, join(c.mnt, 'seq', 'big')),
  },
  {
    name: 'copy-up',
    title: 'copy-up latency',
    what: 'first write to a lower file: open(O_WRONLY) + write of 1 byte + close, one file per size (its lower data read beforehand, ' +
      'so the copy, not the disk, is timed; its directory and one other file copied up beforehand, so the first size pays neither ' +
      'for the directory nor for a first copy-up after the mount)',
    layers: 'image',
    series: true,
    setup: (c) => void run('sh', ['-c', `cat '${c.mnt}'/cu/* > /dev/null && touch '${c.mnt}/cu/.parent-copied-up' && echo >> '${c.mnt}/meta/m0000'`]),
    measure: (c) => py<Record<string, number>>(`
out = {}
for size in sys.argv[2:]:
    p = os.path.join(sys.argv[1], 'cu', size); t = time.perf_counter()
    f = os.open(p, os.O_WRONLY); os.write(f, b'x'); os.close(f)
    out[size] = time.perf_counter() - t
print(json.dumps(out))`, c.mnt, ...c.sizes.copyUpSizes.map(String)),
  },
  {
    name: 'chmod-meta',
    title: 'metadata-only copy-up',
    what: 'chmod of every file in meta/ (lower files: each chmod copies one up; their data read beforehand from the layers)',
    layers: 'image',
    setup: (c) => readLowers(c, 'meta'),
    measure: (c) => py<number>(`
d = os.path.join(sys.argv[1], 'meta'); names = sorted(os.listdir(d)); t = time.perf_counter()
for n in names: os.chmod(os.path.join(d, n), 0o600)
print(time.perf_counter() - t)`, c.mnt),
  },
  {
    name: 'create-fsync',
    title: 'create + write + fsync',
    what: 'create, write 4 KiB, fsync and close each of many new small files',
    layers: 'any',
    measure: (c) => py<number>(`
d = os.path.join(sys.argv[1], 'new'); os.mkdir(d); data = b'x' * 4096; t = time.perf_counter()
for i in range(int(sys.argv[2])):
    f = os.open(os.path.join(d, 'n%d' % i), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(f, data); os.fsync(f); os.close(f)
print(time.perf_counter() - t)`, c.mnt, String(c.sizes.createFiles)),
  },
  {
    name: 'delete-tree',
    title: 'delete a lower tree',
    what: '`rm -rf MNT/del` (every name gets a whiteout)',
    layers: 'image',
    measure: (c) => timed('rm', ['-rf', join(c.mnt, 'del')]),
  },
  {
    name: 'rename-storm',
    title: 'rename storm',
    what: 'rename of every lower file in ren/ to a new name and back (copy-ups, whiteouts, creates over whiteouts; their data read ' +
      'beforehand from the layers)',
    layers: 'image',
    setup: (c) => readLowers(c, 'ren'),
    measure: (c) => py<number>(`
d = os.path.join(sys.argv[1], 'ren'); names = sorted(os.listdir(d)); t = time.perf_counter()
for n in names: os.rename(os.path.join(d, n), os.path.join(d, 'x' + n))
for n in names: os.rename(os.path.join(d, 'x' + n), os.path.join(d, n))
print(time.perf_counter() - t)`, c.mnt),
  },
  {
    name: 'deep-stat',
    title: 'stat at the bottom of a deep stack',
    what: 'first stat of each target file, found only in the bottom layer of the deep stack, right after the mount',
    layers: 'deep',
    measure: (c) => py<number>(`
d = os.path.join(sys.argv[1], 'deep'); t = time.perf_counter()
for i in range(int(sys.argv[2])): os.stat(os.path.join(d, 'target%04d' % i))
print(time.perf_counter() - t)`, c.mnt, String(c.sizes.deepTargets)),
  },
  {
    name: 'deep-readdir',
    title: 'first readdir at the bottom of a deep stack',
    what: 'the first listing (os.listdir) of the directory merged from all layers of the deep stack, right after the mount',
    layers: 'deep',
    measure: (c) => py<number>(`
d = os.path.join(sys.argv[1], 'deep'); t = time.perf_counter()
n = len(os.listdir(d))
print(time.perf_counter() - t)`, c.mnt),
  },
  {
    name: 'seq-write',
    title: 'sequential write',
    what: 'write(2) of a new file as big as the sequential-read file in 1 MiB blocks, then fsync',
    layers: 'any',
    measure: (c) => py<number>(`
f = os.open(os.path.join(sys.argv[1], 'seq-write'), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644); b = b'w' * (1 << 20)
t = time.perf_counter()
for i in range(int(sys.argv[2]) >> 20): os.write(f, b)
os.fsync(f); os.close(f)
print(time.perf_counter() - t)`, c.mnt, String(c.sizes.seqBytes)),
  },
  {
    name: 'untar',
    title: 'untar',
    what: '`tar -xf` of a tarball of many small files into the mount',
    layers: 'any',
    setup: (c) => void run('mkdir', [join(c.mnt, 'untar')]),
    measure: (c) => timed('tar', ['-xf', c.tarball, '-C', join(c.mnt, 'untar')]),
  },
  {
    name: 'chroot-dpkg',
    title: 'dpkg -l in a chroot',
    what: '`chroot MNT dpkg -l` right after the mount (needs --rootfs)',
    layers: 'rootfs',
    measure: (c) => timed('chroot', [c.mnt, '/usr/bin/dpkg', '-l']),
  },
  {
    name: 'chroot-python',
    title: 'python start-up in a chroot',
    what: '`chroot MNT python3 -c "import json, email, http.client"` right after the mount (needs --rootfs)',
    layers: 'rootfs',
    measure: (c) => timed('chroot', [c.mnt, '/usr/bin/python3', '-c', 'import json, email, http.client']),
  },
];

export const WORKLOAD_NAMES = WORKLOADS.map((w) => w.name);

/** What the generated layers hold, for the report. */
export function describeImage(s: Sizes): string {
  return `${s.smallFiles} small files in ${treeDirs(s)} directories, copy-up files of ${s.copyUpSizes.length} sizes, ` +
    `a ${s.seqBytes >> 20} MiB file, ${s.metaFiles} + ${s.deleteFiles} + ${s.renameFiles} more files in three layers; ` +
    `a ${s.deepLayers}-layer stack with ${s.deepTargets} files at its bottom; a tarball of ${s.tarFiles} files; ` +
    `a layer of ${s.wideFiles} empty files`;
}
