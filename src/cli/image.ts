// `strata image ...`: load, import, ls, tag, inspect, history, save, rm, prune, lowerdir.
// Docker's verbs and flags; `--json` for scripts; one line on stderr and a non-zero exit on error.
// The store and the archive code are imported when a command runs (strata mount does not pay them).

import { createRequire } from 'node:module';
import type { Argv, CommandModule } from 'yargs';
import type { Logger } from 'pino';
import type { ImageRecord, Store } from '../image/store.js';
import type { ArchiveFormat } from '../image/archive/model.js';
import { ImageError } from '../image/types.js';
import { columns, out, parseFilterFlags, storeOption } from './options.js';
import { byteProgress } from './progress.js';

export interface CommonArgs {
  store?: string;
  json: boolean;
  logLevel: string;
}


export function printJson(v: unknown): void {
  out(JSON.stringify(v, null, 2));
}

/**
 * Docker's sizes: decimal units, three significant digits as `docker images`, `ps --size`, `history`
 * and `stats` print them (go-units' HumanSizeWithPrecision(n, 3)); four for `system df` and the total a
 * prune reclaimed (HumanSize).
 */
export function humanSize(n: number, precision = 3): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let v = n;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${formatG(v, precision)}${units[u]}`;
}

/**
 * A number as Go's `%.{precision}g` prints it (docker's sizes: "1MB", "77.8MB", "1.23kB", and
 * its "1e+03kB" for 999,999 bytes): the shortest of fixed and exponent notation, trailing zeros dropped.
 */
export function formatG(v: number, precision: number): string {
  if (v === 0 || !Number.isFinite(v)) return String(v);
  const [mantissa, exp] = v.toExponential(precision - 1).split('e') as [string, string];
  const e = Number(exp);
  const trim = (s: string): string => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (e < -4 || e >= precision) return `${trim(mantissa)}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  return trim(v.toFixed(Math.max(0, precision - 1 - e)));
}

/** "5 minutes ago", as docker prints times. */
export function ago(iso: string | undefined): string {
  if (!iso) return 'N/A';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  const steps: [number, string][] = [[60, 'second'], [60, 'minute'], [24, 'hour'], [7, 'day'], [4.35, 'week'], [12, 'month'], [Infinity, 'year']];
  let v = s;
  for (const [size, name] of steps) {
    if (v < size) {
      const r = Math.floor(v);
      return r <= 1 && name === 'second' ? 'Less than a second ago' : `${r} ${name}${r === 1 ? '' : 's'} ago`;
    }
    v /= size;
  }
  return iso;
}

interface ListArgs {
  reference?: string;
  filter?: string | string[];
}

interface ImageRow {
  image: ImageRecord;
  repository: string;
  tag: string;
  digest: string;
}

/** docker's reference patterns: * and ? within a path component, the tag optional. */
function referenceMatches(pattern: string, repository: string, tag: string): boolean {
  const re = (p: string): RegExp => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
  const colon = pattern.lastIndexOf(':');
  const [repo, t] = colon > pattern.lastIndexOf('/') ? [pattern.slice(0, colon), pattern.slice(colon + 1)] : [pattern, null];
  return re(repo).test(repository) && (t === null || re(t).test(tag));
}

/** The rows of `images ls`: one per tag (<none> for an untagged image), filtered as docker filters them. */
async function imageRows(store: Store, images: readonly ImageRecord[], a: ListArgs): Promise<ImageRow[]> {
  const filters = await parseFilterFlags(a.filter, ['dangling', 'reference', 'label', 'before', 'since']);
  for (const [key, value] of filters) {
    if (key === 'dangling' && !['true', 'false'].includes(value)) throw new ImageError(`--filter ${key}=${value}: dangling takes true or false`, 125);
  }
  if (a.reference !== undefined) filters.push(['reference', a.reference]);
  const { labelMatches } = await import('../image/settings.js');
  const created = async (ref: string): Promise<string> => (await store.resolveImage(ref)).config.created ?? '';
  const bounds: [string, string][] = [];
  for (const [k, v] of filters) if (k === 'before' || k === 'since') bounds.push([k, await created(v)]);
  const rows: ImageRow[] = [];
  for (const image of images) {
    const when = image.config.created ?? '';
    if (bounds.some(([k, t]) => (k === 'before' ? !(when < t) : !(when > t)))) continue;
    const labels = (image.config.config?.Labels as Record<string, string> | null | undefined) ?? {};
    const labelled = filters.filter(([k]) => k === 'label').every(([, v]) => labelMatches(labels, v));
    const dangling = filters.find(([k]) => k === 'dangling')?.[1];
    if (!labelled || (dangling === 'true' && image.tags.length > 0) || (dangling === 'false' && image.tags.length === 0)) continue;
    const refs = image.tags.length > 0 ? image.tags : ['<none>:<none>'];
    for (const t of refs) {
      const colon = t.lastIndexOf(':');
      const [repository, tag] = [t.slice(0, colon), t.slice(colon + 1)];
      const patterns = filters.filter(([k]) => k === 'reference');
      if (patterns.length > 0 && (image.tags.length === 0 || !patterns.some(([, p]) => referenceMatches(p, repository, tag)))) continue;
      const digest = (image.repoDigests ?? []).find((r) => r.slice(0, r.lastIndexOf('@')) === repository)?.split('@')[1] ?? '<none>';
      rows.push({ image, repository, tag, digest });
    }
  }
  return rows;
}

function shortId(id: string): string {
  return id.slice(7, 19);
}

const QUIET_LEVELS = new Set(['warn', 'error', 'fatal', 'silent']);

async function logger(a: CommonArgs): Promise<Logger> {
  // The image commands log only info and below: at the default level (warn) pino, whose loading
  // costs tens of milliseconds at start-up, is loaded only if something logs a warning or worse.
  if (QUIET_LEVELS.has(a.logLevel)) {
    let real: Logger | null = null;
    const load = (): Logger => {
      if (!real) {
        const { pino } = createRequire(import.meta.url)('pino') as typeof import('pino');
        real = pino({ level: a.logLevel, base: { pid: process.pid } }, pino.destination(2));
      }
      return real;
    };
    const none = (): void => {};
    return {
      level: a.logLevel, trace: none, debug: none, info: none,
      warn: (...args: unknown[]) => (load().warn as (...x: unknown[]) => void)(...args),
      error: (...args: unknown[]) => (load().error as (...x: unknown[]) => void)(...args),
      fatal: (...args: unknown[]) => (load().fatal as (...x: unknown[]) => void)(...args),
    } as unknown as Logger;
  }
  const { pino } = await import('pino');
  return pino({ level: a.logLevel, base: { pid: process.pid } }, pino.destination(2));
}

/** Opens the store for one command, closes it, and turns failures into one line and an exit code. */
export async function withImageStore(a: CommonArgs, fn: (s: Store, log: Logger) => Promise<void>): Promise<void> {
  const { Store, storeDir } = await import('../image/store.js');
  const log = await logger(a);
  let store: Store | undefined;
  let failure: unknown = null;
  try {
    store = await Store.open(storeDir(a.store), {
      onWait: () => {
        if (process.stderr.isTTY) process.stderr.write('strata: waiting for the store (another strata command is using it)\n');
        log.info('waiting for the store lock');
      },
    });
    await fn(store, log);
  } catch (e) {
    failure = e;
  }
  await store?.close().catch(() => {});
  if (failure !== null) {
    log.debug({ err: failure }, 'image command failed');
    const err = failure as { message?: string; exitCode?: number };
    process.stderr.write(`strata: ${(err.message ?? String(failure)).split('\n')[0]}\n`);
    process.exit(typeof err.exitCode === 'number' ? err.exitCode : 1);
  }
}

export function inspectView(store: Store, img: ImageRecord): Record<string, unknown> {
  const c = img.config;
  return {
    Id: img.id,
    RepoTags: img.tags,
    RepoDigests: img.repoDigests ?? [],
    Created: c.created ?? null,
    Author: c.author ?? '',
    Architecture: c.architecture,
    Os: c.os,
    Config: c.config ?? {},
    RootFS: { Type: 'layers', Layers: c.rootfs.diff_ids },
    Size: img.size,
    GraphDriver: { Name: 'overlay', Data: { LowerDir: store.lowerdir(img) } },
    Metadata: { Stored: img.stored, ManifestDigest: img.manifestDigest },
  };
}

async function historyRows(store: Store, img: ImageRecord): Promise<{ id: string; created: string; createdBy: string; size: number; comment: string }[]> {
  const layers = await Promise.all(img.layers.map(async (c) => store.layer(c)));
  const entries = img.config.history ?? [];
  const rows = [];
  let li = 0;
  for (const h of entries) {
    const size = h.empty_layer ? 0 : layers[li++]?.diffSize ?? 0;
    rows.push({ id: '<missing>', created: h.created ?? '', createdBy: h.created_by ?? '', size, comment: h.comment ?? '' });
  }
  if (rows.length > 0) rows[rows.length - 1]!.id = img.id;
  return rows.reverse();
}

const common = {
  store: storeOption,
  json: { type: 'boolean', default: false, describe: 'print JSON' },
  'log-level': { type: 'string', default: 'warn', describe: 'trace, debug, info, warn, error (JSON logs on stderr)' },
} as const;

const FORMATS = ['docker-archive', 'oci-archive', 'oci-dir'] as const;

/** Every option of each verb with its aliases (yargs checks missing arguments before unknown options). */
const VERB_OPTIONS: Record<string, readonly string[]> = {
  load: ['input', 'i', 'quiet', 'q'], import: ['message', 'm'], ls: ['quiet', 'q'], list: ['quiet', 'q'], tag: [], inspect: [],
  history: ['trunc'], save: ['output', 'o', 'format'], rm: ['force', 'f'], remove: ['force', 'f'],
  prune: ['all', 'a', 'force', 'f'], lowerdir: [],
};
const COMMON_OPTIONS = ['store', 'json', 'log-level', 'logLevel', 'help', 'h', 'version'];

/** The first option on an `image` command line that its verb does not have, as written ("--bogus"). */
export function unknownImageOption(argv: readonly string[]): string | null {
  const verb = argv.slice(1).find((a) => !a.startsWith('-'));
  const known = new Set([...COMMON_OPTIONS, ...(verb ? VERB_OPTIONS[verb] ?? [] : [])]);
  for (const a of argv.slice(1)) {
    if (a === '--') break;
    if (!a.startsWith('-') || a === '-') continue;
    const name = a.replace(/^-+/, '').split('=')[0]!;
    const names = a.startsWith('--') ? [name] : [...name];
    for (const n of names) {
      if (!known.has(n) && !(n.startsWith('no-') && known.has(n.slice(3)))) return a.startsWith('--') ? `--${n}` : `-${n}`;
    }
  }
  return null;
}

interface LoadArgs extends CommonArgs {
  input: string;
  quiet: boolean;
}

function loadHandler(a: LoadArgs): Promise<void> {
  return withImageStore(a, async (store, log) => {
    const { loadImages } = await import('../image/archive/load.js');
    const { statSync } = await import('node:fs');
    const input = a.input;
    if (input === '-' && process.stdin.isTTY) throw new ImageError('give the archive with -i FILE, or on standard input (not a terminal)', 2);
    const size = statSync(input, { throwIfNoEntry: false })?.isFile() ? statSync(input).size : 0;
    const bar = await byteProgress('reading', size, a.quiet || a.json);
    const r = await loadImages(store, input, {
      onBytes: bar.tick,
      onLayer: (i, n, diffId, stored) => {
        bar.label(`layer ${i + 1}/${n}`);
        log.info({ diffId, stored }, stored ? 'layer already stored' : 'unpacking layer');
      },
    }).finally(() => bar.stop());
    if (a.json) return void printJson({ format: r.format, images: r.images.map((i, n) => ({ id: i.id, tags: r.loadedTags[n] })) });
    r.images.forEach((i, n) => {
      const tags = r.loadedTags[n] ?? [];
      if (tags.length === 0) out(`Loaded image ID: ${i.id}`);
      for (const t of tags) out(`Loaded image: ${t}`);
    });
  });
}

/**
 * `strata image load` in its plain spellings (-i/--input FILE, -q/--quiet, --json, --store DIR,
 * --log-level L, each once; `--opt=value` too) without yargs, whose loading is a good part of a
 * load's start-up; anything else (help, an unknown option, an argument) goes to the full parser.
 * Returns whether it handled the command.
 */
export async function plainLoad(argv: readonly string[]): Promise<boolean> {
  if (argv[0] !== 'image' || argv[1] !== 'load') return false;
  const a: LoadArgs = { input: '-', quiet: false, json: false, logLevel: 'warn' };
  const seen = new Set<string>();
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const [flag, inline] = arg.startsWith('--') && eq > 0 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg, undefined];
    const key = ({ '-i': 'input', '--input': 'input', '--store': 'store', '--log-level': 'logLevel', '-q': 'quiet', '--quiet': 'quiet',
      '--json': 'json' } as const)[flag];
    if (key === undefined || seen.has(key)) return false;
    seen.add(key);
    if (key === 'quiet' || key === 'json') {
      if (inline !== undefined) return false;
      a[key] = true;
    } else {
      const value = inline ?? argv[++i];
      if (value === undefined || (inline === undefined && value.startsWith('-') && value !== '-')) return false;
      a[key] = value;
    }
  }
  await loadHandler(a);
  return true;
}

/** `strata image <verb>`, for yargs' .command(). */
export const imageCommand: CommandModule = {
  command: 'image',
  describe: 'load, save and manage images in the layer store',
  handler: () => {},
  builder: (y: Argv) => imageVerbs(y),
};

function imageVerbs(y: Argv): Argv {
  return y
    .options(common)
    .command('load', 'load a docker-archive, an OCI archive or an OCI layout directory', (c) => c
      .option('input', { alias: 'i', type: 'string', default: '-', describe: 'the archive file or OCI layout directory (default: standard input)' })
      .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'print only the loaded references' }),
    (a) => loadHandler(a as unknown as LoadArgs))
    .command('import <file> <reference>', 'make a one-layer image from a root filesystem tar (plain, gzip or zstd)', (c) => c
      .positional('file', { type: 'string', demandOption: true })
      .positional('reference', { type: 'string', demandOption: true, describe: 'NAME[:TAG]' })
      .option('message', { alias: 'm', type: 'string', describe: 'comment of the history entry' }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const { importRootfs } = await import('../image/import.js');
      const { statSync } = await import('node:fs');
      const bar = await byteProgress('importing', statSync(a.file).size, a.json);
      const img = await importRootfs(store, a.file, a.reference, { ...(a.message ? { message: a.message } : {}), onBytes: bar.tick })
        .finally(() => bar.stop());
      if (a.json) printJson({ id: img.id, tags: img.tags });
      else out(img.id);
    }))
    .command(['ls [reference]', 'list [reference]'], 'list images (REFERENCE: only those of that repository or NAME:TAG; * matches within a path component)', (c) => c
      .positional('reference', { type: 'string' })
      .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'print image IDs only' })
      .option('filter', { alias: 'f', type: 'string', describe: 'dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, since=IMAGE (repeatable)' })
      .option('format', { type: 'string', describe: 'a line per row: {{.ID}} {{.Repository}} {{.Tag}} {{.Digest}} {{.CreatedAt}} {{.CreatedSince}} {{.Size}}' })
      .option('digests', { type: 'boolean', default: false, describe: 'a DIGEST column (the manifest digest an image was pulled or pushed with)' })
      .option('trunc', { type: 'boolean', default: true, describe: 'IDs of 12 digits (--no-trunc: whole)' }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const images = (await store.listImages()).sort((x, y) => (y.config.created ?? '').localeCompare(x.config.created ?? ''));
      if (a.json) {
        return printJson(images.map((i) => ({ id: i.id, tags: i.tags, created: i.config.created ?? null, size: i.size, layers: i.layers.length })));
      }
      const rows = await imageRows(store, images, a as unknown as ListArgs);
      const idOf = (i: ImageRecord): string => (a.trunc ? shortId(i.id) : i.id);
      if (a.quiet) return void [...new Set(rows.map((r) => idOf(r.image)))].forEach((id) => out(id));
      if (a.format !== undefined) {
        const { applyFormat, checkFormat } = await import('./inspect.js');
        checkFormat(a.format);
        for (const r of rows) {
          out(applyFormat(a.format, {
            ID: idOf(r.image), Repository: r.repository, Tag: r.tag, Digest: r.digest, CreatedAt: r.image.config.created ?? '',
            CreatedSince: ago(r.image.config.created), Size: humanSize(r.image.size),
          }));
        }
        return;
      }
      const head = ['REPOSITORY', 'TAG', ...(a.digests ? ['DIGEST'] : []), 'IMAGE ID', 'CREATED', 'SIZE'];
      out(columns([head, ...rows.map((r) => [r.repository, r.tag, ...(a.digests ? [r.digest] : []), idOf(r.image), ago(r.image.config.created), humanSize(r.image.size)])]));
    }))
    .command('tag <source> <target>', 'give an image another NAME:TAG', (c) => c
      .positional('source', { type: 'string', demandOption: true })
      .positional('target', { type: 'string', demandOption: true }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      await store.tag(await store.resolveImage(a.source), a.target);
    }))
    .command('inspect <names..>', 'print the images\' configs and layers as JSON (RootFS.Layers: the diff IDs)', (c) => c
      .positional('names', { type: 'string', array: true, demandOption: true }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const images = [];
      for (const n of a.names as string[]) images.push(inspectView(store, await store.resolveImage(n)));
      printJson(images);
    }))
    .command('history <name>', 'one line per history entry, newest first: created, created by, size, comment', (c) => c
      .positional('name', { type: 'string', demandOption: true })
      .option('trunc', { type: 'boolean', default: true, describe: 'shorten the CREATED BY column (--no-trunc: do not)' }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const rows = await historyRows(store, await store.resolveImage(a.name));
      if (a.json) return void printJson(rows);
      const trunc = (s: string): string => (!a.trunc || s.length <= 45 ? s : `${s.slice(0, 44)}…`);
      out(columns([['IMAGE', 'CREATED', 'CREATED BY', 'SIZE', 'COMMENT'],
        ...rows.map((r) => [r.id === '<missing>' ? r.id : shortId(r.id), ago(r.created), trunc(r.createdBy), humanSize(r.size), r.comment])]));
    }))
    .command('save <names..>', 'write images to an archive (docker-archive by default)', (c) => c
      .positional('names', { type: 'string', array: true, demandOption: true })
      .option('output', { alias: 'o', type: 'string', default: '-', describe: 'the archive file (a directory for oci-dir); default: standard output' })
      .option('format', { type: 'string', choices: FORMATS, default: 'docker-archive' as const }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const { saveImages } = await import('../image/archive/save.js');
      if (a.output === '-' && (process.stdout.isTTY || a.format === 'oci-dir')) {
        throw new ImageError(a.format === 'oci-dir' ? 'oci-dir needs -o DIR' : 'give -o FILE, or send standard output to a file or a pipe', 2);
      }
      let total = 0;
      for (const n of a.names as string[]) total += (await store.resolveImage(n)).size;
      const bar = await byteProgress('saving', total, a.json || a.output === '-');
      await saveImages(store, a.names as string[], a.format as ArchiveFormat, a.output, bar.tick).finally(() => bar.stop());
    }))
    .command(['rm <names..>', 'remove <names..>'], 'untag and delete images (refused while a container uses one, unless --force)', (c) => c
      .positional('names', { type: 'string', array: true, demandOption: true })
      .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'delete even if a container uses it' }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const results = [];
      for (const n of a.names as string[]) results.push(await store.removeImage(n, { force: a.force }));
      if (a.json) return void printJson(results);
      for (const r of results) {
        for (const t of r.untagged) out(`Untagged: ${t}`);
        for (const d of r.deleted) out(`Deleted: ${d}`);
      }
    }))
    .command('prune', 'delete untagged images no container uses and every unreferenced layer', (c) => c
      .option('all', { alias: 'a', type: 'boolean', default: false, describe: 'tagged images too (those no container uses and no mount shows)' })
      .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'accepted for docker compatibility (strata does not ask)' }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const r = await store.prune({ all: a.all as boolean });
      if (a.json) return void printJson(r);
      for (const i of r.images) out(`Deleted image: ${i}`);
      for (const l of r.layers) out(`Deleted layer: ${l}`);
      out(`Total reclaimed space: ${humanSize(r.bytes, 4)}`);
    }))
    .command('lowerdir <name>', 'print the image\'s layers as an overlay lowerdir= value (top first)', (c) => c
      .positional('name', { type: 'string', demandOption: true }),
    (a) => withImageStore(a as CommonArgs, async (store) => {
      const img = await store.resolveImage(a.name);
      if (a.json) printJson({ id: img.id, lowerdir: store.lowerDirs(img) });
      else out(store.lowerdir(img));
    }))
    .demandCommand(1, 'give an image command: load, import, ls, tag, inspect, history, save, rm, prune, lowerdir');
}
