// What `strata bench` writes: the terminal table, results.json (every sample), report.md, and two
// charts (SVG and PNG) drawn with Vega-Lite: copy-up latency against file size on log axes, one
// line per system, and each system's ratio to the kernel per workload.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatRatio, formatSeconds, formatSize, ratio, summarize, type Summary } from './stats.js';
import type { SystemName } from './systems.js';
import type { Sizes } from './gen.js';
import type { Workload } from './workloads.js';
import { wakeupNote, type WakeupTuning } from './host.js';

export interface Sample {
  workload: string;
  system: SystemName;
  run: number;
  /** For a series: the point (copy-up: file size in bytes). */
  point?: number;
  seconds: number;
  /** CPU time the daemon used during the measurement (FUSE systems; not for the mount rows). */
  daemonCpu?: number;
  /** Memory workloads: the daemon's VmRSS (bytes) right after the measurement, and after a while idle. */
  daemonRss?: number;
  daemonRssIdle?: number;
  /**
   * CPU time of all CPUs that passed during the measurement (USER_HZ ticks), and how much of it the
   * hypervisor took (steal). A series' points share their measurement's counts.
   */
  hostTicks?: number;
  stealTicks?: number;
}

export interface Failure {
  workload: string;
  system: SystemName;
  run: number;
  error: string;
}

export interface Results {
  version: 1;
  started: string;
  finished: string;
  machine: Record<string, unknown>;
  options: Record<string, unknown>;
  systems: { name: SystemName; version: string }[];
  skipped: { what: string; why: string }[];
  layers: string;
  workloads: { name: string; title: string; what: string; series: boolean }[];
  samples: Sample[];
  failures: Failure[];
  interrupted: boolean;
}

export interface Row {
  workload: Workload;
  point?: number;
  bySystem: Map<SystemName, Summary>;
}

/** Medians and spreads per workload (and per point of a series) per system. */
export function summaries(r: Results, workloads: Workload[]): Row[] {
  const rows: Row[] = [];
  for (const w of workloads) {
    const samples = r.samples.filter((s) => s.workload === w.name);
    if (samples.length === 0) continue;
    const points = w.series ? [...new Set(samples.map((s) => s.point!))].sort((a, b) => a - b) : [undefined];
    for (const point of points) {
      const bySystem = new Map<SystemName, Summary>();
      for (const sys of r.systems) {
        const xs = samples.filter((s) => s.system === sys.name && s.point === point).map((s) => s.seconds);
        if (xs.length > 0) bySystem.set(sys.name, summarize(xs));
      }
      rows.push({ workload: w, point, bySystem });
    }
  }
  return rows;
}

function label(row: Row): string {
  return row.point === undefined ? row.workload.title : `${row.workload.title}, ${formatSize(row.point)}`;
}

function cell(s: Summary | undefined): string {
  if (!s) return '-';
  return s.n > 1 ? `${formatSeconds(s.median)} (${formatSeconds(s.min)}–${formatSeconds(s.max)})` : formatSeconds(s.median);
}

/** The table: one row per workload (and copy-up size), per system the median (min–max) and its ratio to the kernel. */
export function table(rows: Row[], systems: SystemName[]): string[][] {
  const others = systems.filter((s) => s !== 'kernel');
  const header = ['workload', ...systems.map((s) => `${s} median (min–max)`), ...(systems.includes('kernel') ? others.map((s) => `${s} / kernel`) : [])];
  const body = rows.map((row) => {
    const k = row.bySystem.get('kernel')?.median ?? NaN;
    return [label(row), ...systems.map((s) => cell(row.bySystem.get(s))),
      ...(systems.includes('kernel') ? others.map((s) => formatRatio(ratio(row.bySystem.get(s)?.median ?? NaN, k))) : [])];
  });
  return [header, ...body];
}

/** Daemon CPU time per workload (FUSE systems): medians, and strata's over fuse-overlayfs's. */
export function cpuTable(r: Results, rows: Row[]): string[][] {
  const daemons = r.systems.map((s) => s.name).filter((s) => r.samples.some((x) => x.system === s && x.daemonCpu !== undefined));
  if (daemons.length === 0) return [];
  const both = daemons.includes('strata') && daemons.includes('fuse-overlayfs');
  const header = ['workload', ...daemons.map((s) => `${s} daemon CPU`), ...(both ? ['strata / fuse-overlayfs'] : [])];
  const body: string[][] = [];
  for (const row of rows) {
    if (row.point !== undefined) continue;
    const med = (sys: SystemName): number => {
      const xs = r.samples.filter((x) => x.workload === row.workload.name && x.system === sys && x.daemonCpu !== undefined).map((x) => x.daemonCpu!);
      return xs.length ? summarize(xs).median : NaN;
    };
    const cpus = daemons.map(med);
    if (cpus.every((c) => Number.isNaN(c))) continue;
    body.push([label(row), ...cpus.map((c) => (Number.isNaN(c) ? '-' : formatSeconds(c))),
      ...(both ? [formatRatio(ratio(med('strata'), med('fuse-overlayfs')))] : [])]);
  }
  return body.length ? [header, ...body] : [];
}

/** Daemon resident memory for the memory workloads (FUSE systems): medians after the measurement and idle. */
export function memoryTable(r: Results, rows: Row[]): string[][] {
  const daemons = r.systems.map((s) => s.name).filter((s) => r.samples.some((x) => x.system === s && x.daemonRss !== undefined));
  if (daemons.length === 0) return [];
  const both = daemons.includes('strata') && daemons.includes('fuse-overlayfs');
  const header = ['workload', ...daemons.flatMap((s) => [`${s} RSS after`, `${s} RSS idle`]), ...(both ? ['strata / fuse-overlayfs (idle)'] : [])];
  const body: string[][] = [];
  for (const row of rows) {
    const med = (sys: SystemName, key: 'daemonRss' | 'daemonRssIdle'): number => {
      const xs = r.samples.filter((x) => x.workload === row.workload.name && x.system === sys && x[key] !== undefined).map((x) => x[key]!);
      return xs.length ? summarize(xs).median : NaN;
    };
    if (daemons.every((d) => Number.isNaN(med(d, 'daemonRss')))) continue;
    const mib = (b: number): string => (Number.isNaN(b) ? '-' : `${(b / 2 ** 20).toFixed(1)} MiB`);
    body.push([label(row), ...daemons.flatMap((d) => [mib(med(d, 'daemonRss')), mib(med(d, 'daemonRssIdle'))]),
      ...(both ? [formatRatio(ratio(med('strata', 'daemonRssIdle'), med('fuse-overlayfs', 'daemonRssIdle')))] : [])]);
  }
  return body.length ? [header, ...body] : [];
}

/** CPU time the host took (steal), per workload over all its measurements, as a share of the time that passed. */
export function stealShares(r: Results): { workload: string; share: number }[] {
  const out: { workload: string; share: number }[] = [];
  for (const w of r.workloads) {
    const seen = new Set<string>();
    let total = 0;
    let steal = 0;
    for (const s of r.samples) {
      if (s.workload !== w.name || s.hostTicks === undefined || s.stealTicks === undefined) continue;
      const key = `${s.system}/${s.run}`; // (a series' points are one measurement)
      if (seen.has(key)) continue;
      seen.add(key);
      total += s.hostTicks;
      steal += s.stealTicks;
    }
    if (total > 0) out.push({ workload: w.name, share: steal / total });
  }
  return out;
}

/** One line on what the machine did to the numbers: the host's steal, DAMON paging out, how callers are woken. */
export function hostLine(r: Results): string {
  const shares = stealShares(r);
  const parts: string[] = [];
  if (shares.length) {
    const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
    const worst = [...shares].sort((a, b) => b.share - a.share).filter((s) => s.share >= 0.02).slice(0, 5);
    parts.push(`The host took ${pct(shares.reduce((a, s) => a + s.share, 0) / shares.length)} of the CPU time during the measurements ` +
      `(steal, mean over the workloads${worst.length ? `; most during ${worst.map((s) => `${s.workload} ${pct(s.share)}`).join(', ')}` : ''}).`);
  }
  const { pageFaultUsStart: f0, pageFaultUsEnd: f1 } = r.machine;
  if (typeof f0 === 'number' && typeof f1 === 'number') {
    parts.push(`A fresh page of memory took ${f0} µs to fault in at the start and ${f1} µs at the end (a process start touches thousands).`);
  }
  const damon = r.machine.damon;
  if (Array.isArray(damon) && damon.length) {
    parts.push(`DAMON runs here (${damon.join('; ')}): page cache left alone that long may be read from disk again.`);
  }
  const wake = wakeupNote(r.machine.wakeups as Partial<WakeupTuning> | undefined);
  if (wake) parts.push(wake);
  return parts.join(' ');
}

export function formatTable(t: string[][]): string {
  const widths = t[0]!.map((_, i) => Math.max(...t.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(t[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...t.slice(1).map(line)].join('\n');
}

function markdownTable(t: string[][]): string {
  const esc = (c: string): string => c.replace(/\|/g, '\\|');
  return [`| ${t[0]!.map(esc).join(' | ')} |`, `|${t[0]!.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`,
    ...t.slice(1).map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
}

export function markdown(r: Results, rows: Row[], workloads: Workload[], charts: string[]): string {
  const systems = r.systems.map((s) => s.name);
  const m = r.machine;
  const host = hostLine(r);
  return [
    '# strata bench',
    '',
    `${r.started} – ${r.finished}${r.interrupted ? ' (interrupted: partial results)' : ''}`,
    '',
    `Machine: ${String(m.cpus)} × ${String(m.cpuModel)}, ${String(m.memGiB)} GiB, Linux ${String(m.kernel)}, Node ${String(m.node)}; ` +
      `load average ${String(m.loadStart)} at the start, ${String(m.loadEnd)} at the end. Layers and runs on ${String(m.tmpFs)} (${String(r.options.tmp)})` +
        (r.options.upperTmp ? `, uppers and work directories on ${String(m.upperFs)} (${String(r.options.upperTmp)}).` : '.'),
    '',
    ...(host ? [host, ''] : []),
    `Systems: ${r.systems.map((s) => `${s.name} (${s.version})`).join(', ')}.` +
      (r.skipped.length ? ` Left out: ${r.skipped.map((s) => `${s.what}: ${s.why}`).join('; ')}.` : ''),
    '',
    `Layers: ${r.layers}. ${String(r.options.runs)} run(s) per workload and system, each on a fresh upper and work directory ` +
      'on the same filesystem; medians with min–max; ratios are medians over the kernel\'s median (below 1: faster than the kernel).',
    '',
    markdownTable(table(rows, systems)),
    '',
    ...(cpuTable(r, rows).length ? ["CPU time of the daemon during each measurement (its threads' schedstat, in ns; /proc/PID/stat's 10 ms ticks where a thread ended meanwhile), medians:", '',
      markdownTable(cpuTable(r, rows)), ''] : []),
    ...(memoryTable(r, rows).length ? [`Resident memory of the daemon (VmRSS), right after the measurement and after ${(r.options.sizes as Sizes).settleMs / 1000} s without requests, medians:`, '',
      markdownTable(memoryTable(r, rows)), ''] : []),
    ...charts.map((c) => `![${c}](${c}.svg)`),
    '',
    '## What each workload times',
    '',
    ...workloads.filter((w) => rows.some((row) => row.workload === w)).map((w) => `- **${w.title}** (\`${w.name}\`): ${w.what}.`),
    ...(r.failures.length ? ['', '## Failures', '', ...r.failures.map((f) => `- ${f.workload} on ${f.system}, run ${f.run}: ${f.error}`)] : []),
    '',
  ].join('\n');
}

/**
 * import() of a package that is an ES module only: through the bundled command's loader when it runs
 * (scripts/load.cjs: the bundle itself cannot import()), else directly.
 */
function importEsm<T>(specifier: string, direct: () => Promise<T>): Promise<T> {
  const viaLoader = (globalThis as { __strataImport?: (s: string) => Promise<unknown> }).__strataImport;
  return viaLoader ? (viaLoader(specifier) as Promise<T>) : direct();
}

/** Renders a Vega-Lite spec to SVG and PNG files `name.svg`, `name.png` in `dir`. */
async function render(dir: string, name: string, spec: object): Promise<void> {
  const vega = await importEsm('vega', () => import('vega'));
  const vl = await importEsm('vega-lite', () => import('vega-lite'));
  const { Resvg } = await import('@resvg/resvg-js');
  const view = new vega.View(vega.parse(vl.compile(spec as never).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  writeFileSync(join(dir, `${name}.svg`), svg);
  writeFileSync(join(dir, `${name}.png`), new Resvg(svg, { background: 'white', fitTo: { mode: 'zoom', value: 2 } }).render().asPng());
}

/** Draws the charts that have data; returns their names. */
export async function charts(dir: string, rows: Row[]): Promise<string[]> {
  const made: string[] = [];
  const series = rows.filter((r) => r.point !== undefined);
  if (series.length > 0) {
    const values = series.flatMap((r) => [...r.bySystem].map(([system, s]) => ({ system, bytes: r.point!, ms: s.median * 1e3 })));
    await render(dir, 'copy-up', {
      $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
      title: 'Copy-up latency: first write to a lower file (median)',
      width: 560, height: 320, data: { values },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'bytes', type: 'quantitative', title: 'file size (bytes)', scale: { type: 'log' } },
        y: { field: 'ms', type: 'quantitative', title: 'milliseconds', scale: { type: 'log' } },
        color: { field: 'system', type: 'nominal' },
      },
    });
    made.push('copy-up');
  }
  const ratios = rows.flatMap((r) => {
    const k = r.bySystem.get('kernel')?.median;
    if (!k) return [];
    return [...r.bySystem].filter(([s]) => s !== 'kernel').map(([system, s]) => ({ workload: label(r), system, ratio: ratio(s.median, k) }))
      .filter((v) => Number.isFinite(v.ratio));
  });
  if (ratios.length > 0) {
    await render(dir, 'ratios', {
      $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
      title: 'Time relative to the kernel\'s overlayfs (median; 1 = as fast, log scale)',
      width: 560, data: { values: ratios },
      layer: [
        {
          mark: 'bar',
          // Bars grow from 1 (as fast as the kernel): right is slower, left faster.
          encoding: {
            y: { field: 'workload', type: 'nominal', title: null, sort: null, axis: { labelLimit: 320 } },
            yOffset: { field: 'system' },
            x: { field: 'ratio', type: 'quantitative', title: 'time / kernel time', scale: { type: 'log' } },
            x2: { datum: 1 },
            color: { field: 'system', type: 'nominal' },
          },
        },
        { mark: { type: 'rule', color: 'black' }, encoding: { x: { datum: 1 } } },
      ],
    });
    made.push('ratios');
  }
  return made;
}
