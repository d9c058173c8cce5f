// `strata bench`: generates (or takes) layers, mounts them with each system on a fresh upper and
// work directory per run, runs each workload, and writes what it measured. Every mount and temp
// directory it makes is removed at the end, also on Ctrl-C (SIGINT/SIGTERM: exit 130).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { FULL, QUICK, generateDeepStack, generateImage, generateTarSource, generateWide, type Sizes } from './gen.js';
import { charts, cpuTable, formatTable, hostLine, markdown, memoryTable, summaries, table, type Results } from './report.js';
import { residentBytes } from '../daemon/registry.js';
import { damonPageout, hostTicks, pageFaultMicros, wakeupTuning } from './host.js';
import { cpuBetween, cpuSample, forceUnmount, SYSTEM_NAMES, SYSTEMS, type System, type SystemName } from './systems.js';
import { describeImage, WORKLOAD_NAMES, WORKLOADS, type Context, type Workload } from './workloads.js';

export class BenchUsageError extends Error {}

export interface BenchOptions {
  lowerdir: string[] | null;
  rootfs: string[] | null;
  systems: SystemName[];
  workloads: string[];
  runs: number;
  out: string;
  tmp: string;
  quick: boolean;
  seed: number;
  /** Where each run's upper and work directories go, when not in `tmp` (e.g. a tmpfs under ext4 lowers). */
  upperTmp: string | null;
}

/** Checks and completes options given as strings (the command line). */
export function benchOptions(a: {
  lowerdir?: string; rootfs?: string; systems?: string; workloads?: string; runs?: number; out?: string; tmp?: string; quick?: boolean; seed?: number;
  upperTmp?: string;
}): BenchOptions {
  const list = (s: string | undefined): string[] | null => (s === undefined ? null : s.split(',').map((x) => x.trim()).filter(Boolean));
  const systems = (list(a.systems) ?? [...SYSTEM_NAMES]) as SystemName[];
  for (const s of systems) if (!SYSTEM_NAMES.includes(s)) throw new BenchUsageError(`unknown system "${s}" (choose from ${SYSTEM_NAMES.join(', ')})`);
  if (systems.length === 0) throw new BenchUsageError('--systems lists no system');
  const workloads = list(a.workloads) ?? [...WORKLOAD_NAMES];
  for (const w of workloads) if (!WORKLOAD_NAMES.includes(w)) throw new BenchUsageError(`unknown workload "${w}" (choose from ${WORKLOAD_NAMES.join(', ')})`);
  const runs = a.runs ?? (a.quick ? 1 : 3);
  if (!Number.isInteger(runs) || runs < 1) throw new BenchUsageError('--runs takes a positive whole number');
  const dirs = (s: string | undefined, what: string): string[] | null => {
    if (s === undefined) return null;
    const ds = s.split(':').filter(Boolean).map((d) => resolve(d));
    if (ds.length === 0) throw new BenchUsageError(`${what} names no directory`);
    for (const d of ds) {
      let isDir = false;
      try {
        isDir = statSync(d).isDirectory();
      } catch {
        // missing
      }
      if (!isDir) throw new BenchUsageError(`${what}: "${d}" is not a directory`);
    }
    return ds;
  };
  return {
    lowerdir: dirs(a.lowerdir, '--lowerdir'),
    rootfs: dirs(a.rootfs, '--rootfs'),
    systems,
    workloads,
    runs,
    out: resolve(a.out ?? 'bench-results'),
    tmp: resolve(a.tmp ?? '/var/tmp'),
    quick: a.quick ?? false,
    seed: a.seed ?? 1,
    upperTmp: a.upperTmp === undefined ? null : dirs(a.upperTmp, '--upper-tmp')![0]!,
  };
}

/** The type of the filesystem holding `dir` (df -T). */
function fsType(dir: string): string {
  return spawnSync('df', ['-T', dir], { encoding: 'utf8' }).stdout.trim().split('\n')[1]?.split(/\s+/)[1] ?? '?';
}

function machine(tmp: string, upperTmp: string | null): Record<string, unknown> {
  const df = fsType(tmp);
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? '?',
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    tmpFs: df,
    upperFs: upperTmp === null ? df : fsType(upperTmp),
    loadStart: os.loadavg().map((x) => x.toFixed(2)).join(' '),
    damon: damonPageout(),
    wakeups: wakeupTuning(),
    pageFaultUsStart: Number(pageFaultMicros().toFixed(2)),
  };
}

/**
 * The daemon's resident memory right after a measurement, and again once it has had `settleMs`
 * without requests (what it keeps, after what it gives back when idle).
 */
function settledMemory(pid: number, settleMs: number): { daemonRss?: number; daemonRssIdle?: number } {
  const busy = residentBytes(pid);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, settleMs);
  const idle = residentBytes(pid);
  return { ...(Number.isFinite(busy) ? { daemonRss: busy } : {}), ...(Number.isFinite(idle) ? { daemonRssIdle: idle } : {}) };
}

export async function runBench(o: BenchOptions, log: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  if (process.getuid?.() !== 0) throw new BenchUsageError('strata bench needs root (mounts, dropping the page cache)');
  const sizes: Sizes = o.quick ? QUICK : FULL;
  const tty = process.stdout.isTTY === true;
  const skipped: Results['skipped'] = [];
  const systems: System[] = [];
  for (const name of o.systems) {
    const why = SYSTEMS[name].unavailable();
    if (why) {
      skipped.push({ what: name, why });
      log(`strata bench: ${name} left out: ${why}\n`);
    } else systems.push(SYSTEMS[name]);
  }
  if (systems.length === 0) throw new Error('none of the systems can run here');
  const workloads = WORKLOADS.filter((w) => o.workloads.includes(w.name)).filter((w) => {
    const why = w.layers === 'rootfs' && !o.rootfs ? 'needs --rootfs'
      : w.layers === 'image' && o.lowerdir ? 'needs the generated layers (not --lowerdir)' : null;
    if (why && o.workloads.length < WORKLOAD_NAMES.length) skipped.push({ what: w.name, why });
    return why === null;
  });
  if (workloads.length === 0) throw new BenchUsageError('no workload applies to these layers');

  mkdirSync(o.tmp, { recursive: true });
  const root = mkdtempSync(join(o.tmp, 'stb'));
  const upperRoot = o.upperTmp === null ? root : mkdtempSync(join(o.upperTmp, 'stbu'));
  const mounted = new Set<{ sys: System; mnt: string }>();
  let cleaned = false;
  const cleanup = (): void => {
    if (cleaned) return;
    cleaned = true;
    for (const m of mounted) {
      try {
        m.sys.unmount(m.mnt);
      } catch {
        forceUnmount(m.mnt);
      }
    }
    mounted.clear();
    spawnSync('rm', ['-rf', '--one-file-system', root]);
    if (upperRoot !== root) spawnSync('rm', ['-rf', '--one-file-system', upperRoot]);
  };
  let interrupted = false;
  const onSignal = (): void => {
    interrupted = true;
    if (tty) log('\n');
    log('strata bench: interrupted; unmounting and removing the temp directory\n');
    cleanup();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const results: Results = {
    version: 1,
    started: new Date().toISOString(),
    finished: '',
    machine: machine(o.tmp, o.upperTmp),
    options: { ...o, sizes },
    systems: systems.map((s) => ({ name: s.name, version: s.version() })),
    skipped,
    layers: '',
    workloads: workloads.map((w) => ({ name: w.name, title: w.title, what: w.what, series: w.series === true })),
    samples: [],
    failures: [],
    interrupted: false,
  };
  try {
    log(`strata bench: generating layers in ${root} ...\n`);
    const image = o.lowerdir ?? generateImage(join(root, 'img'), sizes, o.seed);
    const deep = generateDeepStack(join(root, 'deep'), sizes, o.seed);
    const wide = workloads.some((w) => w.layers === 'wide') ? generateWide(join(root, 'wide'), sizes) : [];
    generateTarSource(join(root, 'tarsrc'), sizes, o.seed);
    const tarball = join(root, 'src.tar');
    spawnSync('tar', ['-cf', tarball, '-C', join(root, 'tarsrc'), '.']);
    results.layers = o.lowerdir ? `--lowerdir ${o.lowerdir.join(':')}` : `generated (seed ${o.seed}): ${describeImage(sizes)}`;
    if (o.rootfs) results.layers += `; --rootfs ${o.rootfs.join(':')}`;
    await new Promise((r) => setImmediate(r)); // a Ctrl-C during the generation is handled here
    const lowersOf = (w: Workload): string[] => (w.layers === 'deep' ? deep : w.layers === 'wide' ? wide : w.layers === 'rootfs' ? o.rootfs! : image);

    const total = workloads.length * o.runs * systems.length;
    let done = 0;
    for (const w of workloads) {
      for (let run = 1; run <= o.runs; run++) {
        // Rotate the order of the systems from run to run, so none always goes first.
        const order = systems.map((_, i) => systems[(i + run - 1) % systems.length]!);
        for (const sys of order) {
          done++;
          const status = `[${done}/${total}] ${w.name} · ${sys.name} · run ${run}/${o.runs}`;
          if (tty) log(`\r\x1b[K${status}`);
          const dir = join(root, 'run');
          const upDir = join(upperRoot, 'run');
          const l = { lowers: lowersOf(w), upper: join(upDir, 'upper'), work: join(upDir, 'work'), mnt: join(dir, 'mnt') };
          for (const d of [l.upper, l.work, l.mnt]) mkdirSync(d, { recursive: true });
          const entry = { sys, mnt: l.mnt };
          try {
            const t0 = process.hrtime.bigint();
            mounted.add(entry);
            sys.mount(l);
            const mountSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
            const ctx: Context = { mnt: l.mnt, sizes, tarball, lowers: l.lowers, generated: !o.lowerdir };
            if (w.isMount) {
              results.samples.push({ workload: w.name, system: sys.name, run, seconds: mountSeconds });
            } else {
              w.setup?.(ctx);
              const pid = sys.daemonPid(l.mnt);
              const cpu0 = pid === null ? null : cpuSample(pid);
              const host0 = hostTicks();
              const v = w.measure(ctx);
              const host1 = hostTicks();
              const host = host0 && host1 ? { hostTicks: host1.total - host0.total, stealTicks: host1.steal - host0.steal } : {};
              const cpu = pid === null || cpu0 === null ? undefined : cpuBetween(cpu0, cpuSample(pid));
              const daemonCpu = cpu !== undefined && Number.isFinite(cpu) ? cpu : undefined;
              const memory = w.memory && pid !== null ? settledMemory(pid, sizes.settleMs) : {};
              if (typeof v === 'number') results.samples.push({ workload: w.name, system: sys.name, run, seconds: v, daemonCpu, ...memory, ...host });
              else for (const [point, seconds] of Object.entries(v)) results.samples.push({ workload: w.name, system: sys.name, run, point: Number(point), seconds, ...host });
            }
          } catch (e) {
            results.failures.push({ workload: w.name, system: sys.name, run, error: (e as Error).message.split('\n')[0]!.slice(0, 300) });
            if (!tty) log(`${status}: failed: ${(e as Error).message.split('\n')[0]}\n`);
          } finally {
            sys.unmount(l.mnt);
            mounted.delete(entry);
            rmSync(dir, { recursive: true, force: true });
            if (upDir !== dir) rmSync(upDir, { recursive: true, force: true });
          }
          if (!tty && done % Math.max(1, Math.round(total / 10)) === 0) log(`${status}\n`);
          // The steps are synchronous: let a pending Ctrl-C (SIGINT/SIGTERM) be handled between them.
          await new Promise((r) => setImmediate(r));
        }
      }
    }
    if (tty) log('\r\x1b[K');
  } finally {
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  results.interrupted = interrupted;
  results.finished = new Date().toISOString();
  results.machine.loadEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ');
  results.machine.pageFaultUsEnd = Number(pageFaultMicros().toFixed(2));

  mkdirSync(o.out, { recursive: true });
  const rows = summaries(results, workloads);
  writeFileSync(join(o.out, 'results.json'), JSON.stringify(results, null, 1) + '\n');
  const made = await charts(o.out, rows);
  writeFileSync(join(o.out, 'report.md'), markdown(results, rows, workloads, made));
  log(formatTable(table(rows, results.systems.map((s) => s.name))) + '\n');
  const cpu = cpuTable(results, rows);
  if (cpu.length) log('\n' + formatTable(cpu) + '\n');
  const memory = memoryTable(results, rows);
  if (memory.length) log('\n' + formatTable(memory) + '\n');
  const host = hostLine(results);
  if (host) log(`\n${host}\n`);
  for (const f of results.failures) log(`failed: ${f.workload} on ${f.system} (run ${f.run}): ${f.error}\n`);
  log(`strata bench: results.json, report.md and ${made.map((c) => `${c}.svg/.png`).join(', ')} in ${o.out}\n`);
  return results.failures.length > 0 ? 1 : 0;
}
