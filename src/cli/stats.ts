// `strata stats [CONTAINER...]`: what running containers use, as `docker stats` shows it: CPU % (of
// one CPU, over the last interval), memory in use against its limit (the container's --memory, else
// the host's memory), processes; read from each container's control group (src/image/cgroups.ts).
// It refreshes every second until interrupted; --no-stream prints one table (two samples, a second
// apart, as docker needs them for CPU %). --format takes docker's fields: {{.Container}} {{.ID}}
// {{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.MemPerc}} {{.NetIO}} {{.BlockIO}} {{.PIDs}}, with an
// optional "table " prefix for a header. NET I/O is 0B / 0B, as docker shows it for containers on the
// host's network or none (it counts a container's own interfaces). BLOCK I/O is what the kernel
// charged the group for reads and writes of block devices, as docker shows it: the I/O a container's
// processes issue themselves (reads and writes of files that the mount passes through to the upper and
// lower files, O_DIRECT), not what the mount's daemon does for them (copy-ups, small files it serves)
// nor, on a v1 hierarchy, the writeback of their page cache.

import type { Argv, CommandModule } from 'yargs';
import type { CgroupSample } from '../image/cgroups.js';
import { applyFormat } from './inspect.js';
import { columns, guarded, out, storeDirOf, storeOption } from './options.js';

export const STATS_OPTIONS = {
  store: storeOption,
  all: { alias: 'a', type: 'boolean', default: false, describe: 'all containers (default: the running ones)' },
  stream: { type: 'boolean', default: true, describe: 'refresh every second (--no-stream: print one table and end)' },
  trunc: { type: 'boolean', default: true, describe: 'IDs of 12 digits (--no-trunc: whole)' },
  format: { type: 'string', describe: 'a template per container: {{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.MemPerc}} {{.PIDs}} ...; "table TEMPLATE" adds a header' },
} as const;

interface StatsArgs {
  store?: string;
  containers?: string[];
  all: boolean;
  stream: boolean;
  trunc: boolean;
  format?: string;
}

/** docker's fields of a row. */
interface Row {
  Container: string;
  ID: string;
  Name: string;
  CPUPerc: string;
  MemUsage: string;
  MemPerc: string;
  NetIO: string;
  BlockIO: string;
  PIDs: string;
}

const HEADERS: Record<keyof Row, string> = {
  Container: 'CONTAINER', ID: 'CONTAINER ID', Name: 'NAME', CPUPerc: 'CPU %', MemUsage: 'MEM USAGE / LIMIT', MemPerc: 'MEM %',
  NetIO: 'NET I/O', BlockIO: 'BLOCK I/O', PIDs: 'PIDS',
};
const DEFAULT_FORMAT = 'table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}';
const FIELD = /\{\{\s*\.([A-Za-z]+)\s*\}\}/g;

/** go-units' BytesSize: 4 significant digits and a binary unit ("1.234MiB", "64MiB"). */
export function bytesSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${Number(n.toPrecision(4))}${units[i]}`;
}

export const statsCommand: CommandModule = {
  command: 'stats [containers..]',
  describe: 'what running containers use (CPU %, memory, processes), as docker stats; every second until interrupted, or once (--no-stream)',
  builder: (y: Argv) => y.positional('containers', { type: 'string', array: true }).options(STATS_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StatsArgs;
    const [{ withStore }, { isActive }, { sampleCgroup }, { ImageError }, os, { humanSize }] = await Promise.all([import('../image/store.js'),
      import('../image/lifecycle.js'), import('../image/cgroups.js'), import('../image/types.js'), import('node:os'), import('./image.js')]);
    const format = args.format ?? DEFAULT_FORMAT;
    const unknownField = [...format.matchAll(FIELD)].map((m) => m[1]!).find((f) => !(f in HEADERS));
    if (unknownField !== undefined) throw new ImageError(`--format: no field .${unknownField} (${Object.keys(HEADERS).map((k) => `.${k}`).join(' ')})`, 125);
    const store = await storeDirOf(args);
    const named = args.containers ?? [];
    // The containers (named ones must exist; without names, the running ones, or all with -a).
    const pick = (): Promise<{ id: string; name: string; running: boolean }[]> => withStore(store, async (s) => {
      const recs = named.length > 0 ? await Promise.all(named.map((n) => s.getContainer(n))) : await s.listContainers();
      return recs.map((r) => ({ id: r.id, name: r.name, running: (r.state === 'running' || r.state === 'starting') && isActive(r) }))
        .filter((r) => named.length > 0 || args.all || r.running);
    });
    const hostMemory = os.totalmem();
    const cpus = os.availableParallelism();
    let previous = new Map<string, { cpuNs: number; at: bigint }>();
    const sample = (list: { id: string }[]): Map<string, (CgroupSample & { at: bigint }) | null> =>
      new Map(list.map((c) => {
        const s = sampleCgroup(c.id, hostMemory);
        return [c.id, s ? { ...s, at: process.hrtime.bigint() } : null];
      }));
    const table = (list: { id: string; name: string; running: boolean }[], now: ReturnType<typeof sample>): string => {
      const rows: Row[] = list.map((c) => {
        const s = c.running ? now.get(c.id) : null;
        const before = previous.get(c.id);
        // (CPU time over wall time, in % of one CPU: 200% is two CPUs busy, as docker counts it)
        const cpu = s && before && s.at > before.at ? Math.min(100 * cpus, (100 * (s.cpuNs - before.cpuNs)) / Number(s.at - before.at)) : 0;
        return {
          Container: args.trunc ? c.name : c.id, ID: args.trunc ? c.id.slice(0, 12) : c.id, Name: c.name,
          CPUPerc: s ? `${Math.max(0, cpu).toFixed(2)}%` : '--',
          MemUsage: s ? `${bytesSize(s.memory)} / ${bytesSize(s.memoryLimit)}` : '-- / --',
          MemPerc: s ? `${((100 * s.memory) / s.memoryLimit).toFixed(2)}%` : '--',
          // (docker counts a container's own interfaces: with the host's network or none there are none)
          NetIO: s ? '0B / 0B' : '--', BlockIO: s ? `${humanSize(s.blockRead)} / ${humanSize(s.blockWrite)}` : '--',
          PIDs: s ? String(s.pids) : '--',
        };
      });
      if (!format.startsWith('table')) return rows.map((r) => applyFormat(format, r)).join('\n');
      const body = format.replace(/^table\s*/, '');
      return columns([HEADERS, ...rows].map((r) => applyFormat(body, r).split('\t')));
    };
    let list = await pick();
    previous = new Map([...sample(list)].flatMap(([id, s]) => (s ? [[id, s] as const] : [])));
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const now = sample(list);
      const text = table(list, now);
      if (!args.stream) {
        if (text.length > 0) out(text);
        process.exit(0);
      }
      // (the screen cleared and the table at its top, as docker's)
      process.stdout.write(`\x1b[2J\x1b[H${text}\n`);
      previous = new Map([...now].flatMap(([id, s]) => (s ? [[id, s] as const] : [])));
      if (named.length === 0) list = await pick();
    }
  }),
};
