// The container commands: `strata run`, `strata commit`, `strata export`, `strata container ls|rm`.
// Docker's verbs and flags. As with `docker run`, strata's options end at the image name: what
// follows is the container's command line, options included (`strata run IMG sh -c 'echo hi'`),
// so `run` is split before yargs sees it. The store and the container code are imported when a
// command runs.

import type { Argv, CommandModule } from 'yargs';
import { ago } from './image.js';
import { columns, CONTAINER_CONFIG_OPTIONS, type ContainerConfigArgs, containerConfigOf, guarded, last, out, parseFilterFlags, storeDirOf, storeOption, TERMINAL_OPTIONS } from './options.js';
import { type EnsureArgs, RUN_PULL_OPTIONS } from './registry.js';
import { byteProgress } from './progress.js';

interface StoreArgs {
  store?: string;
  json?: boolean;
}


interface OptionDef {
  type: 'string' | 'boolean';
  alias?: string;
  describe?: string;
  default?: unknown;
  demandOption?: boolean;
}
export type Options = Readonly<Record<string, OptionDef>>;

const RUN_OPTIONS = {
  name: { type: 'string', describe: 'the container\'s name (default: the first 12 digits of its ID)' },
  ...CONTAINER_CONFIG_OPTIONS,
  detach: { alias: 'd', type: 'boolean', default: false, describe: 'start it in the background and print its ID (strata start: output to its log)' },
  ...TERMINAL_OPTIONS,
  user: { alias: 'u', type: 'string', describe: 'run as this user instead of the image\'s User: name, uid, name:group or uid:gid (names from the container\'s /etc/passwd and /etc/group)' },
  store: storeOption,
  ...RUN_PULL_OPTIONS,
} as const;
const COMMIT_OPTIONS = {
  message: { alias: 'm', type: 'string', describe: 'commit message (the history entry\'s comment)' },
  author: { alias: 'a', type: 'string', describe: 'author (e.g. "Name <mail>")' },
  change: { alias: 'c', type: 'string', describe: 'a Dockerfile instruction for the new config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL (repeatable)' },
  pause: { alias: 'p', type: 'boolean', default: true, describe: 'pause a running container during the commit (--pause=false: do not)' },
  store: storeOption,
} as const;
const EXPORT_OPTIONS = {
  output: { alias: 'o', type: 'string', demandOption: true, describe: 'the tar file to write ("-": standard output)' },
  store: storeOption,
} as const;
const CONTAINER_OPTIONS = {
  store: storeOption,
  json: { type: 'boolean', default: false, describe: 'print JSON' },
  force: { alias: 'f', type: 'boolean', default: false, describe: 'unmount a mounted container first' },
  running: { type: 'boolean', default: false, describe: 'only the running containers (what `strata ps` lists without -a)' },
  quiet: { alias: 'q', type: 'boolean', default: false, describe: 'only the IDs (12 digits)' },
  format: { type: 'string', describe: 'a line per container: {{.ID}} {{.Names}} {{.Image}} {{.Command}} {{.CreatedAt}} {{.Status}} {{.State}}' },
  filter: { type: 'string', describe: 'status=created|running|exited, name=TEXT, ancestor=IMAGE, id=PREFIX, health=starting|healthy|unhealthy|none, label=KEY[=VALUE] (repeatable: one key ORs, labels and keys AND)' },
  last: { alias: 'n', type: 'string', describe: 'only the N last created containers (all states)' },
  latest: { alias: 'l', type: 'boolean', default: false, describe: 'only the last created container (all states)' },
  trunc: { type: 'boolean', default: true, describe: 'IDs of 12 digits, commands of 30 characters (--no-trunc: whole)' },
  size: { alias: 's', type: 'boolean', default: false, describe: 'a SIZE column: the bytes the container\'s upper uses, as system df counts them (and with its image\'s: virtual)' },
} as const;

/** The options of each command that unknownOption() checks (others: see main.ts). */
const COMMAND_OPTIONS: Record<string, Options> = { run: RUN_OPTIONS, commit: COMMIT_OPTIONS, export: EXPORT_OPTIONS, container: CONTAINER_OPTIONS };

/**
 * The first option in `args` (before "--") that `options` does not define, as written ("--bogus",
 * "-x"). With `stopAtFirstWord`, the scan ends at the first argument that is not an option.
 */
export function firstUnknownOption(args: readonly string[], options: Options, stopAtFirstWord = false): string | null {
  const known = new Set(['help', 'h']);
  const takesValue = new Set<string>();
  for (const [k, d] of Object.entries(options)) {
    for (const n of d.alias ? [k, d.alias] : [k]) {
      known.add(n);
      if (d.type === 'string') takesValue.add(n);
    }
  }
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') break;
    if (!a.startsWith('-') || a === '-') {
      if (stopAtFirstWord) break;
      continue;
    }
    const long = a.startsWith('--');
    const name = a.replace(/^-+/, '').split('=')[0]!;
    for (const n of long ? [name] : [...name]) {
      if (!known.has(n) && !(long && n.startsWith('no-') && known.has(n.slice(3)))) return long ? `--${n}` : `-${n}`;
    }
    if (!a.includes('=') && takesValue.has(long ? name : name.slice(-1))) i++;
  }
  return null;
}

/**
 * The first unknown option on a command line of the container commands, or of the commands given
 * in `more` (name → its options), or null. yargs would report a missing argument first when the
 * unknown option swallowed it (`strata commit --bogus C T`).
 */
export function unknownOption(argv: readonly string[], more: Record<string, Options> = {}, commandAfter: readonly string[] = []): string | null {
  const cmd = argv[0] ?? '';
  const options = COMMAND_OPTIONS[cmd] ?? more[cmd];
  if (!options) return null;
  return firstUnknownOption(argv.slice(1), options, cmd === 'run' || commandAfter.includes(cmd));
}

/**
 * `strata run [OPTIONS] IMAGE [COMMAND [ARG...]]`: the part for yargs (up to the image) and the
 * container's command line (everything after the image, untouched).
 */
export function splitRunArgv(argv: readonly string[], more: Record<string, Options> = {}): { head: string[]; command: string[] } {
  const options = argv[0] === 'run' ? (RUN_OPTIONS as Options) : more[argv[0] ?? ''];
  if (!options) return { head: [...argv], command: [] };
  const takesValue = new Set(Object.entries(options).filter(([, d]) => d.type === 'string').flatMap(([k, d]) => (d.alias ? [k, d.alias] : [k])));
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return { head: [...argv.slice(0, i), ...argv.slice(i + 1, i + 2)], command: argv.slice(i + 2) };
    if (a.startsWith('-') && a !== '-') {
      if (!a.includes('=') && takesValue.has(a.replace(/^-+/, ''))) i++;
      continue;
    }
    return { head: argv.slice(0, i + 1), command: argv.slice(i + 1) };
  }
  return { head: [...argv], command: [] };
}

/** `strata run`, with the container's command line split off beforehand (splitRunArgv). */
export function runCommand(containerArgs: () => string[]): CommandModule {
  return {
    command: 'run <image>',
    describe: 'run a command in a new container of an image (chroot + namespaces); strata\'s options end at the image name',
    builder: (y: Argv) => y
      .positional('image', { type: 'string', demandOption: true, describe: 'NAME:TAG or image ID; then the command and its arguments' })
      .options(RUN_OPTIONS),
    handler: guarded(async (a) => {
      const args = a as unknown as StoreArgs & EnsureArgs & ContainerConfigArgs & { image: string; name?: string; rm: boolean; detach: boolean; tty?: boolean; user?: string | string[] };
      // Given twice: the last one counts (as with docker run).
      const user = last(args.user);
      // (checked before anything is pulled or made)
      const config = await containerConfigOf(args);
      const store = await storeDirOf(args);
      const { ensureImage } = await import('./registry.js');
      const spec = { image: args.image, command: containerArgs(), name: args.name, user, ...config };
      if (args.detach) {
        const [{ newContainer }, { startDetached }] = await Promise.all([import('../image/run.js'), import('./lifecycle.js')]);
        const rec = await ensureImage(store, args.image, args, (s) => newContainer(s, spec));
        await startDetached(store, rec.id);
        out(rec.id);
        process.exit(0);
      }
      const { runContainer } = await import('../image/run.js');
      const status = await runContainer({ store, ...spec, rm: args.rm, tty: args.tty === true }, (fn) => ensureImage(store, args.image, args, fn));
      process.exit(status);
    }),
  };
}

export const commitCommand: CommandModule = {
  command: 'commit <container> <tag>',
  describe: 'make a new image of a container\'s (or a mount\'s) changes on top of its image',
  builder: (y: Argv) => y
    .positional('container', { type: 'string', demandOption: true, describe: 'container name or ID, or the mount point of a strata mount --image' })
    .positional('tag', { type: 'string', demandOption: true, describe: 'NAME:TAG of the new image' })
    .options(COMMIT_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { container: string; tag: string; message?: string; author?: string; change?: string | string[]; pause: boolean };
    const [{ withStore }, { commitChanges }, { whilePaused, isActive }] = await Promise.all([
      import('../image/store.js'), import('../image/commit.js'), import('../image/lifecycle.js')]);
    const store = await storeDirOf(args);
    const commit = (): Promise<Awaited<ReturnType<typeof commitChanges>>> => withStore(store, (s) => commitChanges(s, args.container, args.tag, {
      message: args.message, author: args.author, changes: ([] as string[]).concat(args.change ?? []),
      progress: process.stderr.isTTY ? (total) => byteProgress('commit', total) : undefined,
    }));
    // A running container is paused (as docker and podman pause it), so that its layer is one moment's.
    const rec = await withStore(store, (s) => s.findContainer(args.container));
    const r = args.pause && rec && rec.state === 'running' && isActive(rec) ? await whilePaused(rec, commit) : await commit();
    out(r.image.id);
    process.exit(0);
  }),
};

type ExportArgs = StoreArgs & { container: string; output: string };

const exportHandler = guarded(async (args: ExportArgs) => {
  if (args.output === '-' && process.stdout.isTTY) throw new Error('refusing to write a tar to a terminal: give -o FILE');
  const { exportView } = await import('../image/export.js');
  // The bar's total costs a walk of the whole view: only on a terminal, where a bar is drawn.
  const progress = process.stderr.isTTY ? (total: number) => byteProgress('export', total) : undefined;
  await exportView({ store: await storeDirOf(args), ref: args.container, output: args.output, progress });
  process.exit(0);
});

export const exportCommand: CommandModule = {
  command: 'export <container>',
  describe: 'write the merged view of a container or mount as one tar (docker export)',
  builder: (y: Argv) => y
    .positional('container', { type: 'string', demandOption: true, describe: 'container name or ID, or a strata mount point' })
    .options(EXPORT_OPTIONS),
  handler: (a) => exportHandler(a as unknown as ExportArgs),
};

/**
 * `strata export` in its plain spellings (one container, -o/--output FILE, --store DIR, each once;
 * `--opt=value` too) without yargs, whose loading is a good part of a short export's time; anything
 * else (help, a missing or unknown option, more arguments) goes to the full parser. Returns
 * whether it handled the command.
 */
export async function plainExport(argv: readonly string[]): Promise<boolean> {
  if (argv[0] !== 'export') return false;
  const args: Partial<ExportArgs> = {};
  const positional: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const [flag, inline] = a.startsWith('--') && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    const key = flag === '-o' || flag === '--output' ? 'output' : flag === '--store' ? 'store' : null;
    if (key) {
      const value = inline ?? argv[++i];
      if (value === undefined || args[key] !== undefined) return false;
      args[key] = value;
    } else if (a.startsWith('-') && a !== '-') {
      return false;
    } else {
      positional.push(a);
    }
  }
  if (positional.length !== 1 || args.output === undefined) return false;
  await exportHandler({ ...args, container: positional[0]!, output: args.output });
  return true;
}

export const containerCommand: CommandModule = {
  command: 'container',
  describe: 'list and remove containers',
  handler: () => {},
  builder: (y: Argv) => y
    .option('store', storeOption)
    .command(['ls', 'list', 'ps'], 'list containers', (c) => c.option('json', CONTAINER_OPTIONS.json).option('running', CONTAINER_OPTIONS.running)
      .option('quiet', CONTAINER_OPTIONS.quiet).option('format', CONTAINER_OPTIONS.format).option('filter', CONTAINER_OPTIONS.filter)
      .option('last', CONTAINER_OPTIONS.last).option('latest', CONTAINER_OPTIONS.latest).option('trunc', CONTAINER_OPTIONS.trunc)
      .option('size', CONTAINER_OPTIONS.size),
    guarded(async (a) => {
      const args = a as unknown as StoreArgs & { running: boolean; quiet: boolean; format?: string; filter?: string | string[]; last?: string; latest: boolean;
        trunc: boolean; size: boolean };
      const [{ dirBytes, withStore }, { isActive }, { applyFormat, checkFormat }, { ImageError }, { containerLabels, labelMatches, settingsOf }] = await Promise.all([
        import('../image/store.js'), import('../image/lifecycle.js'), import('./inspect.js'), import('../image/types.js'), import('../image/settings.js')]);
      if (args.format !== undefined) checkFormat(args.format);
      const filters = new Map<string, string[]>();
      for (const [key, value] of await parseFilterFlags(args.filter, ['status', 'name', 'ancestor', 'id', 'health', 'label'])) {
        filters.set(key, [...(filters.get(key) ?? []), value]);
      }
      if (args.last !== undefined && !/^[0-9]+$/.test(String(args.last))) throw new ImageError(`--last ${args.last}: expected a number`, 125);
      const { list, images, imageRecords } = await withStore(await storeDirOf(args), async (s) => {
        const all = await s.listContainers();
        const refs = new Map<string, string | undefined>();
        for (const r of filters.get('ancestor') ?? []) refs.set(r, (await s.findImage(r))?.id);
        const records = args.size || filters.has('label') ? await s.listImages() : [];
        return { list: all, images: refs, imageRecords: new Map(records.map((i) => [i.id, i])) };
      });
      const stateOf = (c: (typeof list)[number]): string => (isActive(c) ? (c.paused === true ? 'paused' : 'running') : c.state === 'created' ? 'created' : 'exited');
      // (values of one key OR, but labels AND, as docker's filters)
      const keep = (c: (typeof list)[number]): boolean => [...filters].every(([key, values]) => values[key === 'label' ? 'every' : 'some']((v) => {
        if (key === 'status') return stateOf(c) === v;
        if (key === 'name') return c.name.includes(v);
        if (key === 'id') return c.id.startsWith(v);
        if (key === 'health') return ((c.health as { Status?: string } | undefined)?.Status ?? 'none') === v;
        if (key === 'label') return labelMatches(containerLabels(imageRecords.get(c.image)?.config, settingsOf(c)), v);
        return images.get(v) === c.image || c.imageRef === v;
      }));
      let shown = list.filter((c) => (!args.running || isActive(c)) && keep(c));
      shown.sort((x, y2) => x.created.localeCompare(y2.created));
      // (-n, -l: the last created, of every state: ps passes no --running with them)
      const lastN = args.latest ? 1 : args.last !== undefined ? Number(args.last) : undefined;
      if (lastN !== undefined) shown = lastN === 0 ? [] : shown.slice(-lastN);
      const idOf = (c: (typeof list)[number]): string => (args.trunc ? c.id.slice(0, 12) : c.id);
      const statusOf = (c: (typeof list)[number]): string => {
        const gone = (c.state === 'running' || c.state === 'starting') && !isActive(c);
        const health = (c.health as { Status?: string } | undefined)?.Status;
        const running = c.paused === true ? 'running (paused)' : c.state === 'running' && health !== undefined
          ? `running (${health === 'starting' ? 'health: starting' : health})` : (c.state ?? 'created');
        return c.state === 'exited' ? `Exited (${String(c.exitCode)})` : gone ? 'Exited (its monitor is gone)' : running;
      };
      if (args.json) {
        out(JSON.stringify(shown, null, 2));
      } else if (args.quiet) {
        if (shown.length > 0) out(shown.map(idOf).join('\n'));
      } else if (args.format !== undefined) {
        if (shown.length > 0) {
          out(shown.map((c) => applyFormat(args.format!, {
            ID: idOf(c), Names: c.name, Image: c.imageRef, Command: JSON.stringify((c.command ?? []).join(' ')),
            CreatedAt: c.created, Status: statusOf(c), State: stateOf(c),
          })).join('\n'));
        }
      } else {
        const rows = [['CONTAINER ID', 'NAME', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS', ...(args.size ? ['SIZE'] : [])]];
        const { humanSize } = await import('./image.js');
        for (const c of shown) {
          const cmd = (c.command ?? []).join(' ');
          // (as system df counts a container's upper)
          const upper = args.size ? dirBytes(c.upper) : 0;
          rows.push([idOf(c), c.name, c.imageRef, JSON.stringify(cmd.length > 30 && args.trunc ? `${cmd.slice(0, 29)}…` : cmd), ago(c.created), statusOf(c),
            ...(args.size ? [`${humanSize(upper)} (virtual ${humanSize(upper + (imageRecords.get(c.image)?.size ?? 0))})`] : [])]);
        }
        out(columns(rows));
      }
      process.exit(0);
    }))
    .command('rm <containers..>', 'remove containers (their upper layers); --force stops a running one (SIGKILL) and unmounts a mounted one first', (c) => c
      .positional('containers', { type: 'string', array: true, demandOption: true })
      .option('force', CONTAINER_OPTIONS.force),
    guarded(async (a) => {
      const args = a as unknown as StoreArgs & { containers: string[]; force: boolean };
      const [{ withStore }, { unmountIfMounted }, { isActive, stopContainer }, { ImageError }] = await Promise.all([
        import('../image/store.js'), import('../image/container.js'), import('../image/lifecycle.js'), import('../image/types.js')]);
      const store = await storeDirOf(args);
      for (const ref of args.containers) {
        const rec = await withStore(store, (s) => s.getContainer(ref));
        if (isActive(rec)) {
          if (!args.force) throw new ImageError(`container ${rec.name} is running: stop it first, or rm -f`);
          await withStore(store, (s) => s.updateContainer(rec.id, { stopRequested: true }));
          // (the store is closed meanwhile: the monitor records the end)
          await stopContainer(rec, 'SIGKILL', 0);
        }
        await withStore(store, async (s) => {
          if (args.force) await unmountIfMounted(rec.merged);
          out((await s.removeContainer(rec.id)).name);
        });
      }
      process.exit(0);
    }))
    .command('inspect <names..>', 'print containers as JSON (docker inspect); --format for fields', (c) => c
      .positional('names', { type: 'string', array: true, demandOption: true })
      .option('format', { alias: 'f', type: 'string', describe: 'a template per container: {{.State.Pid}}, {{json .Mounts}}' }),
    guarded(async (a) => {
      await (await import('./inspect.js')).inspect(a as unknown as { names: string[]; format?: string; store?: string }, 'container');
      process.exit(0);
    }))
    .command('prune', 'remove every container that is not running', (c) => c,
      guarded(async (a) => {
        const args = a as unknown as StoreArgs;
        const [{ withStore }, { isActive }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js')]);
        await withStore(await storeDirOf(args), async (s) => {
          for (const c of await s.listContainers()) {
            // (a mounted one, e.g. by strata mount --image of its dirs, is refused by the store; it stays)
            if (isActive(c)) continue;
            try {
              out((await s.removeContainer(c.id)).id);
            } catch (e) {
              process.stderr.write(`strata: ${(e as Error).message}\n`);
            }
          }
        });
        process.exit(0);
      }))
    .demandCommand(1, 'give a subcommand: ls, rm, inspect or prune'),
};

/** `strata mount --image NAME:TAG [--upper U --work W] MNT`: the options it adds to `mount`. */
export const imageMountOptions = {
  image: { type: 'string', describe: 'mount the layers of this image from the store (instead of -o lowerdir=)' },
  upper: { type: 'string', describe: 'with --image: the upper directory (default: read-only)' },
  work: { type: 'string', describe: 'with --image: the work directory (with --upper)' },
  store: storeOption,
} as const;

/** With --image: the mount's arguments with lowerdir= (and upperdir=, workdir=) from the store. */
export async function imageMountArgs<T extends { o?: string | string[]; image?: string; upper?: string; work?: string; store?: string }>(a: T): Promise<T> {
  const o = ([] as string[]).concat(a.o ?? []);
  if (!a.image) {
    if (a.upper || a.work) fail('--upper and --work go with --image (else: -o upperdir=,workdir=)');
    return a;
  }
  if (o.some((x) => /(^|,)(lowerdir|upperdir|workdir)\+?=/.test(x))) fail('--image gives the layers: leave lowerdir=, upperdir= and workdir= out of -o');
  if (!a.upper !== !a.work) fail('--upper and --work go together: give both or neither');
  const [{ withStore }, { imageLowerdirs, mountOptionString }] = await Promise.all([import('../image/store.js'), import('../image/container.js')]);
  let lowerdirs: string[];
  try {
    lowerdirs = await withStore(await storeDirOf(a), (s) => imageLowerdirs(s, a.image!));
  } catch (e) {
    fail((e as Error).message, 1);
  }
  return { ...a, o: [mountOptionString({ lowerdirs, upper: a.upper, work: a.work }), ...o] };
}

function fail(message: string, code = 2): never {
  process.stderr.write(`strata: ${message}\n`);
  process.exit(code);
}
