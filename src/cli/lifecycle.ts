// `strata create`, `start`, `stop`, `exec`, `diff`, `logs`: docker's and podman's verbs and flags.
// As with `run`, strata's options end at the image (create) or container (exec) name: what follows
// is the command line, options included. The engine is src/image/run.ts and lifecycle.ts.

import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CONTAINER_CONFIG_OPTIONS, type ContainerConfigArgs, containerConfigOf, guarded, last, out, storeDirOf, storeOption, TERMINAL_OPTIONS } from './options.js';
import { type EnsureArgs, RUN_PULL_OPTIONS } from './registry.js';


export const CREATE_OPTIONS = {
  name: { type: 'string', describe: 'the container\'s name (default: the first 12 digits of its ID)' },
  ...CONTAINER_CONFIG_OPTIONS,
  user: { alias: 'u', type: 'string', describe: 'run as this user instead of the image\'s User (name, uid, name:group or uid:gid)' },
  store: storeOption,
  ...RUN_PULL_OPTIONS,
  ...TERMINAL_OPTIONS,
} as const;
export const START_OPTIONS = {
  attach: { alias: 'a', type: 'boolean', default: false, describe: 'run in the foreground: its output here, its exit status passed on' },
  // (a background start's monitor: the command's output goes to the container's log, as records)
  'log-to': { type: 'string', hidden: true },
  store: storeOption,
} as const;
export const STOP_OPTIONS = {
  time: { alias: 't', type: 'string', describe: 'seconds to wait for the command to end before killing it (default: the container\'s --stop-timeout, else 10)' },
  store: storeOption,
} as const;
export const EXEC_OPTIONS = {
  user: { alias: 'u', type: 'string', describe: 'run as this user (default: the container\'s)' },
  workdir: { alias: 'w', type: 'string', describe: 'working directory inside the container (default: the image\'s WorkingDir)' },
  env: { alias: 'e', type: 'string', describe: 'KEY=VALUE added to the environment (repeatable; KEY alone: the host\'s value)' },
  privileged: { type: 'boolean', default: false, describe: 'every capability (default: the container\'s set)' },
  detach: { alias: 'd', type: 'boolean', default: false, describe: 'in the background (its output dropped)' },
  store: storeOption,
  ...TERMINAL_OPTIONS,
} as const;
export const DIFF_OPTIONS = {
  json: { type: 'boolean', default: false, describe: 'print JSON' },
  store: storeOption,
} as const;
export const LOGS_OPTIONS = {
  follow: { alias: 'f', type: 'boolean', default: false, describe: 'keep printing what it writes until the container stops' },
  tail: { alias: 'n', type: 'string', describe: 'only the last N lines ("all": every line)' },
  timestamps: { alias: 't', type: 'boolean', default: false, describe: 'each line after the time it was written (RFC 3339, nanoseconds)' },
  since: { type: 'string', describe: 'only lines written since then (2006-01-02T15:04:05Z, Unix seconds, or a duration before now: 10m)' },
  until: { type: 'string', describe: 'only lines written before then (as --since)' },
  store: storeOption,
} as const;
export const KILL_OPTIONS = {
  signal: { alias: 's', type: 'string', describe: 'the signal (name or number; default SIGKILL)' },
  store: storeOption,
} as const;
export const WAIT_OPTIONS = { store: storeOption } as const;
export const RESTART_OPTIONS = STOP_OPTIONS;

interface StoreArgs {
  store?: string;
}

export function createCommand(containerArgs: () => string[]): CommandModule {
  return {
    command: 'create <image>',
    describe: 'create a container of an image without starting it (prints its ID); strata\'s options end at the image name',
    builder: (y: Argv) => y.positional('image', { type: 'string', demandOption: true }).options(CREATE_OPTIONS),
    handler: guarded(async (a) => {
      const args = a as unknown as StoreArgs & EnsureArgs & ContainerConfigArgs & { image: string; name?: string; user?: string | string[] };
      const config = await containerConfigOf(args);
      const store = await storeDirOf(args);
      const [{ ensureImage }, { newContainer }] = await Promise.all([import('./registry.js'), import('../image/run.js')]);
      const rec = await ensureImage(store, args.image, args, (s) => newContainer(s, { image: args.image, command: containerArgs(), name: args.name, user: last(args.user), ...config }));
      out(rec.id);
      process.exit(0);
    }),
  };
}

/**
 * Starts a container in the background: a detached `strata start -a` (its monitor, in a session of
 * its own, output to the container's log), then waits until it is recorded as running (or already
 * ended). Returns the container's name.
 */
export async function startDetached(store: string, ref: string): Promise<string> {
  const [{ withStore }, { isActive, logPath, monitorLogPath, readLog }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js')]);
  const { ImageError } = await import('../image/types.js');
  const rec = await withStore(store, (s) => s.getContainer(ref));
  if (isActive(rec)) return rec.name; // as docker start: already running is fine
  // (the monitor's own messages go to a file of their own; the command's output, to the log)
  const monitorLog = openSync(monitorLogPath(rec), 'w', 0o640);
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, 'start', '--attach', '--log-to', logPath(rec), '--store', store, rec.id], {
    detached: true, stdio: ['ignore', monitorLog, monitorLog], cwd: '/',
  });
  closeSync(monitorLog);
  let exited = false;
  child.once('exit', () => void (exited = true));
  child.unref();
  for (let i = 0; i < 1500; i++) {
    await sleep(20);
    // (a --rm container whose command ended already is gone)
    const now = await withStore(store, (s) => s.findContainer(rec.id));
    if (now === undefined) return rec.name;
    const ours = now.monitorPid === child.pid;
    if ((now.state === 'running' && ours) || (now.state === 'exited' && now.finished !== rec.finished)) return rec.name;
    if (exited && !(now.state === 'running' && ours)) {
      const tail = readLog(now, monitorLogPath).toString('utf8').trim().split('\n').filter((l) => l.startsWith('strata: ')).at(-1);
      throw new ImageError(tail ? tail.slice('strata: '.length) : `container ${rec.name} did not start`, 125);
    }
  }
  throw new ImageError(`container ${rec.name} did not start within 30 s`, 125);
}

export const startCommand: CommandModule = {
  command: 'start <containers..>',
  describe: 'start created or stopped containers in the background (-a: one, in the foreground)',
  builder: (y: Argv) => y.positional('containers', { type: 'string', array: true, demandOption: true }).options(START_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { containers: string[]; attach: boolean; logTo?: string };
    const store = await storeDirOf(args);
    if (args.attach) {
      const { ImageError } = await import('../image/types.js');
      if (args.containers.length !== 1) throw new ImageError('start --attach takes one container', 125);
      const [{ withStore }, { startContainer }, { logPath }] = await Promise.all([import('../image/store.js'), import('../image/run.js'), import('../image/lifecycle.js')]);
      const rec = await withStore(store, (s) => s.getContainer(args.containers[0]!));
      // (in the foreground its output is also logged, as docker's and podman's; the background monitor's only logged)
      process.exit(await startContainer(store, rec, args.logTo !== undefined ? { log: args.logTo } : { log: logPath(rec), echo: true }));
    }
    for (const ref of args.containers) out(await startDetached(store, ref));
    process.exit(0);
  }),
};

/**
 * stop and restart: each container's stop signal (its image's StopSignal, else SIGTERM), SIGKILL
 * after -t seconds; then `then` (restart: start it again); prints what `then` returns (its name).
 */
async function stopEach(a: unknown, then: (store: string, rec: { id: string; name: string }) => Promise<string>): Promise<void> {
  const args = a as StoreArgs & { containers: string[]; time?: string };
  const { ImageError } = await import('../image/types.js');
  const given = args.time === undefined ? undefined : Number(args.time);
  if (given !== undefined && (!Number.isFinite(given) || given < 0)) throw new ImageError(`-t takes seconds, not "${args.time}"`, 125);
  const [{ withStore }, { stopContainer }, { settingsOf }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js'),
    import('../image/settings.js')]);
  const store = await storeDirOf(args);
  for (const ref of args.containers) {
    const { rec, signal } = await withStore(store, async (s) => {
      // (so that its monitor does not start it again: --restart)
      const r = await s.updateContainer((await s.getContainer(ref)).id, { stopRequested: true });
      return { rec: r, signal: settingsOf(r).stopSignal ?? (await s.findImage(r.image))?.config.config?.StopSignal };
    });
    // (-t, else the container's --stop-timeout, else 10 s)
    await stopContainer(rec, signal, given ?? settingsOf(rec).stopTimeout ?? 10);
    out(await then(store, rec));
  }
  process.exit(0);
}

export const stopCommand: CommandModule = {
  command: 'stop <containers..>',
  describe: 'stop running containers: their stop signal (StopSignal, else SIGTERM), SIGKILL after -t seconds',
  builder: (y: Argv) => y.positional('containers', { type: 'string', array: true, demandOption: true }).options(STOP_OPTIONS),
  handler: guarded((a) => stopEach(a, async (_store, rec) => rec.name)),
};

export function execCommand(containerArgs: () => string[]): CommandModule {
  return {
    command: 'exec <container>',
    describe: 'run a command in a running container; strata\'s options end at the container name',
    builder: (y: Argv) => y.positional('container', { type: 'string', demandOption: true }).options(EXEC_OPTIONS),
    handler: guarded(async (a) => {
      const args = a as unknown as StoreArgs & { container: string; user?: string | string[]; workdir?: string | string[]; env?: string | string[]; privileged: boolean; detach: boolean };
      const [{ withStore }, { execInContainer }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js')]);
      const store = await storeDirOf(args);
      const { ImageError } = await import('../image/types.js');
      // (the store is closed while the command runs)
      const { rec, config } = await withStore(store, async (s) => {
        const r = await s.getContainer(args.container);
        const image = await s.findImage(r.image);
        if (!image) throw new ImageError(`the image of container ${r.name} is gone from the store`, 125);
        return { rec: r, config: image.config };
      });
      const opts = {
        ...(last(args.user) !== undefined ? { user: last(args.user)! } : {}),
        ...(last(args.workdir) !== undefined ? { workdir: last(args.workdir)! } : {}),
        env: ([] as string[]).concat(args.env ?? []),
        privileged: args.privileged,
        detach: args.detach,
      };
      process.exit(await execInContainer(config, rec, containerArgs(), opts));
    }),
  };
}

export const diffCommand: CommandModule = {
  command: 'diff <container>',
  describe: 'list the files a container added (A), changed (C) and deleted (D) against its image',
  builder: (y: Argv) => y.positional('container', { type: 'string', demandOption: true }).options(DIFF_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { container: string; json: boolean };
    const [{ withStore }, { containerChanges }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js')]);
    const changes = await withStore(await storeDirOf(args), async (s) => {
      const rec = await s.getContainer(args.container);
      return containerChanges(rec.upper, rec.layers.map((l) => s.layerDir(l)).reverse());
    });
    if (args.json) out(JSON.stringify(changes, null, 2));
    else if (changes.length > 0) out(changes.map((c) => `${c.kind} ${c.path}`).join('\n'));
    process.exit(0);
  }),
};

export const logsCommand: CommandModule = {
  command: 'logs <container>',
  describe: 'print the output of a container started in the background (its stdout here on stdout, its stderr on stderr)',
  builder: (y: Argv) => y.positional('container', { type: 'string', demandOption: true }).options(LOGS_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { container: string; follow: boolean; tail?: string; timestamps: boolean; since?: string; until?: string };
    const [{ withStore }, { readLog, isActive, logPath }, { ImageError }, L] = await Promise.all([
      import('../image/store.js'), import('../image/lifecycle.js'), import('../image/types.js'), import('../image/logs.js')]);
    const tail = args.tail === undefined || args.tail === 'all' ? null : Number(args.tail);
    if (tail !== null && (!Number.isInteger(tail) || tail < 0)) throw new ImageError(`--tail takes a number of lines or "all", not "${args.tail}"`, 125);
    const since = args.since !== undefined ? L.parseLogTime(args.since, '--since') : null;
    const until = args.until !== undefined ? L.parseLogTime(args.until, '--until') : null;
    const store = await storeDirOf(args);
    const rec = await withStore(store, (s) => s.getContainer(args.container));
    // (a line of a log from before the record format has no time: --since and --until keep it)
    const wanted = (l: import('../image/logs.js').LogLine): boolean => l.time === '' ||
      ((since === null || L.lineTimeNs(l.time) >= since) && (until === null || L.lineTimeNs(l.time) < until));
    const print = (lines: import('../image/logs.js').LogLine[]): void => {
      for (const l of lines) {
        if (!wanted(l)) continue;
        const data = args.timestamps ? Buffer.concat([Buffer.from(`${l.time || '-'} `), l.data]) : l.data;
        if (!L.writeAll(l.stream === 'stderr' ? 2 : 1, data)) process.exit(0); // (the reader is gone: as docker logs | head)
      }
    };
    const parser = new L.LogParser();
    const text = readLog(rec);
    let lines = parser.feed(text);
    if (!args.follow || !isActive(rec)) lines = [...lines, ...parser.end()];
    const shown = lines.filter(wanted);
    print(tail === null ? shown : tail === 0 ? [] : shown.slice(-tail));
    if (args.follow && isActive(rec)) {
      // what the log gains, until the container is no longer running (then what came last)
      const { openSync: open, readSync, fstatSync } = await import('node:fs');
      let fd: number;
      try {
        fd = open(logPath(rec), 'r');
      } catch {
        process.exit(0);
      }
      let pos = text.length;
      const buf = Buffer.alloc(1 << 16);
      const drain = (): void => {
        while (fstatSync(fd).size > pos) {
          const n = readSync(fd, buf, 0, buf.length, pos);
          if (n <= 0) break;
          print(parser.feed(Buffer.from(buf.subarray(0, n))));
          pos += n;
        }
      };
      // (woken by inotify when the log grows; the container runs as long as its monitor does, which
      // is checked at least every second without opening the store)
      const { watch } = await import('node:fs');
      let wake: (() => void) | null = null;
      const watcher = watch(logPath(rec), () => wake?.());
      watcher.on('error', () => wake?.());
      for (;;) {
        drain();
        if (!isActive(rec)) break;
        if (until !== null && BigInt(Date.now()) * 1_000_000n >= until) break;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 1000);
          wake = (): void => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = null;
      }
      watcher.close();
      drain();
      print(parser.end());
    }
    process.exit(0);
  }),
};

/** pause and unpause: SIGSTOP or SIGCONT to every process of running containers. */
function pauseCommand(verb: 'pause' | 'unpause'): CommandModule {
  return {
    command: `${verb} <containers..>`,
    describe: verb === 'pause' ? 'stop every process of running containers (SIGSTOP) until unpause' : 'let a paused container\'s processes go on (SIGCONT)',
    builder: (y: Argv) => y.positional('containers', { type: 'string', array: true, demandOption: true }).options(WAIT_OPTIONS),
    handler: guarded(async (a) => {
      const args = a as unknown as StoreArgs & { containers: string[] };
      const [{ withStore }, { signalAll }, { ImageError }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js'), import('../image/types.js')]);
      const store = await storeDirOf(args);
      for (const ref of args.containers) {
        await withStore(store, async (s) => {
          const rec = await s.getContainer(ref);
          if (verb === 'pause' && rec.paused === true) throw new ImageError(`container ${rec.name} is already paused`);
          if (verb === 'unpause' && rec.paused !== true) throw new ImageError(`container ${rec.name} is not paused`);
          signalAll(rec, verb === 'pause' ? 'SIGSTOP' : 'SIGCONT');
          await s.updateContainer(rec.id, { paused: verb === 'pause' });
          out(rec.name);
        });
      }
      process.exit(0);
    }),
  };
}
export const pauseCommands = [pauseCommand('pause'), pauseCommand('unpause')];

export const renameCommand: CommandModule = {
  command: 'rename <container> <name>',
  describe: 'give a container another name',
  builder: (y: Argv) => y.positional('container', { type: 'string', demandOption: true }).positional('name', { type: 'string', demandOption: true })
    .options(WAIT_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { container: string; name: string };
    const { withStore } = await import('../image/store.js');
    await withStore(await storeDirOf(args), (s) => s.renameContainer(args.container, args.name));
    process.exit(0);
  }),
};

/** `strata top CONTAINER [ps options]`: what follows the container is ps's (split off beforehand: splitRunArgv). */
export const topCommand = (psOptions: () => string[]): CommandModule => ({
  command: 'top <container>',
  describe: 'the processes of a running container, as ps shows them (default ps -ef); ps\'s options follow the container',
  builder: (y: Argv) => y.positional('container', { type: 'string', demandOption: true }).options(WAIT_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { container: string };
    const [{ withStore }, { containerInit, namespacePids }, { spawnSync }, { ImageError }] = await Promise.all([import('../image/store.js'),
      import('../image/lifecycle.js'), import('node:child_process'), import('../image/types.js')]);
    const rec = await withStore(await storeDirOf(args), (s) => s.getContainer(args.container));
    const init = containerInit(rec);
    if (init === null) throw new ImageError(`container ${rec.name} is not running`, 1);
    const pids = new Set(namespacePids(init));
    // As docker top: the host's ps with those options, its lines kept for the container's processes.
    const given = psOptions();
    const psArgs = given.length > 0 ? given : ['-ef'];
    const ps = spawnSync('ps', psArgs, { encoding: 'utf8' });
    if (ps.status !== 0) throw new ImageError(`ps ${psArgs.join(' ')}: ${(ps.stderr ?? '').trim() || `exit ${ps.status}`}`, 1);
    const [header, ...lines] = ps.stdout.split('\n').filter((l) => l.length > 0);
    const col = (header ?? '').trim().split(/\s+/).indexOf('PID');
    if (col < 0) throw new ImageError(`ps ${psArgs.join(' ')} shows no PID column`, 1);
    out([header!, ...lines.filter((l) => pids.has(Number(l.trim().split(/\s+/)[col])))].join('\n'));
    process.exit(0);
  }),
});

export const killCommand: CommandModule = {
  command: 'kill <containers..>',
  describe: 'send a signal to running containers\' pid 1 (SIGKILL by default)',
  builder: (y: Argv) => y.positional('containers', { type: 'string', array: true, demandOption: true }).options(KILL_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { containers: string[]; signal?: string | string[] };
    const [{ withStore }, { containerInit, isActive, killContainer, killSignal }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js')]);
    const store = await storeDirOf(args);
    const signal = last(args.signal);
    const sig = killSignal(signal);
    for (const ref of args.containers) {
      // (a kill is a stop for --restart, as with docker)
      const rec = await withStore(store, async (s) => s.updateContainer((await s.getContainer(ref)).id, { stopRequested: true }));
      // Between two runs of --restart (no pid 1, its monitor waiting to start the command again), the
      // default SIGKILL ends it all the same: the monitor sees the stop and does not start it again.
      if (!(sig === 'SIGKILL' && rec.state === 'running' && isActive(rec) && containerInit(rec) === null)) {
        killContainer(rec, signal);
      }
      out(rec.name);
    }
    process.exit(0);
  }),
};

export const waitCommand: CommandModule = {
  command: 'wait <containers..>',
  describe: 'wait until containers have stopped; print their exit statuses',
  builder: (y: Argv) => y.positional('containers', { type: 'string', array: true, demandOption: true }).options(WAIT_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as StoreArgs & { containers: string[] };
    const [{ withStore }, { waitForExit }] = await Promise.all([import('../image/store.js'), import('../image/lifecycle.js')]);
    const store = await storeDirOf(args);
    for (const ref of args.containers) {
      const id = (await withStore(store, (s) => s.getContainer(ref))).id;
      const status = await waitForExit(() => withStore(store, async (s) => {
        const rec = (await s.findContainer(id)) ?? null;
        return rec ? { rec } : { rec, removedExit: await s.removedExitCode(id) };
      }), ref);
      out(String(status));
    }
    process.exit(0);
  }),
};

export const restartCommand: CommandModule = {
  command: 'restart <containers..>',
  describe: 'stop containers (if running) and start them again in the background',
  builder: (y: Argv) => y.positional('containers', { type: 'string', array: true, demandOption: true }).options(RESTART_OPTIONS),
  handler: guarded((a) => stopEach(a, (store, rec) => startDetached(store, rec.id))),
};
