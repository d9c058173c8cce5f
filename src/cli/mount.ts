// `strata mount` (and the fuse-overlayfs form `strata -o OPTS MOUNTPOINT`): from the command line
// to a live mount served by a daemon in the background, in as little time as possible.
//
// One Node.js process does the work. bin/strata (scripts/launcher.c) forks it as
// `node main.js ARGS... __daemon MOUNTPOINT` with a status pipe on fd 3 and waits for one line:
//   ok MNT        the mount is live; the launcher stats MNT (as a check, and so the kernel caches
//                 the root's attributes) and exits 0; the daemon serves on;
//   error MSG     it failed before the mount was live (the exit status says 1 or 2);
//   pass          not a background mount after all: the launcher passes the output through.
// No line at all means the daemon died: the launcher explains it from the daemon's stderr. When
// the command is run without the launcher (`node dist/src/cli/main.js mount ...`), this module
// plays the launcher's part itself with a second process.
//
// Only what mounting needs is loaded before the mount is live: no yargs (the arguments are
// parsed here; anything unusual goes to the full parser in main.ts), no pino (log lines wait in
// memory), no LevelDB (the metadata cache opens while the first requests wait).

import { setPriority } from 'node:os';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import type { DaemonConfig, DaemonOptions } from '../daemon/daemon.js';
import * as N from '../native/index.js';
import { parseMountOptions, UsageError, type MountParams } from '../union/params.js';

export interface MountArgs {
  mountpoint: string;
  /** The fuse-overlayfs / mount(8) form's first argument: the mount's source name. */
  source?: string;
  o?: string | string[];
  foreground: boolean;
  passthrough: string;
  logLevel: string;
  logFile?: string;
  pidFile?: string;
  writeFormat: string;
  force: boolean;
  cache: boolean;
  cacheDir?: string;
}

/** The status pipe of a daemon started by the launcher (or by mountInBackground). */
const STATUS_FD = 3;
/** The configuration mountInBackground hands to its daemon (already checked). */
const CONFIG_ENV = 'STRATA_DAEMON_CONFIG';

export function fail(message: string, code: number): never {
  process.stderr.write(`strata: ${message}\n`);
  process.exit(code);
}

export function exitCodeOf(e: unknown): number {
  return e instanceof UsageError ? 2 : 1;
}

export function describe(e: unknown): string {
  const err = e as { code?: string; syscall?: string; message?: string };
  if (err.code === 'EPERM' && err.syscall === 'mount') return 'mount(2) was refused: strata must run as root (or with CAP_SYS_ADMIN)';
  if (err.code === 'ENOENT' && err.syscall === 'open') return 'cannot open /dev/fuse: is the fuse module loaded?';
  return err.message ?? String(e);
}

// ---- the arguments of the two mount forms, without yargs ----------------------------------------

const VALUE_OPTIONS: Record<string, keyof MountArgs> = {
  passthrough: 'passthrough', 'log-level': 'logLevel', logLevel: 'logLevel', 'log-file': 'logFile', logFile: 'logFile',
  'pid-file': 'pidFile', pidFile: 'pidFile', 'write-format': 'writeFormat', writeFormat: 'writeFormat',
  'cache-dir': 'cacheDir', cacheDir: 'cacheDir',
};
const BOOLEAN_OPTIONS: Record<string, 'foreground' | 'force' | 'cache'> = { foreground: 'foreground', force: 'force', cache: 'cache' };
/** The other commands (main.ts): never a mount's source or mount point here. */
// (every verb, as scripts/launcher.c lists them: `strata top C -o pid,args` is not a mount of C)
const COMMANDS = new Set(['mount', 'umount', 'unmount', 'status', 'cache', 'bench', 'image', 'run', 'commit', 'export', 'container', 'help', 'pull',
  'push', 'login', 'logout', 'create', 'start', 'stop', 'exec', 'diff', 'logs', 'build', 'ps', 'rm', 'images', 'rmi', 'volume', 'inspect', 'kill',
  'wait', 'restart', 'cp', 'save', 'load', 'tag', 'history', 'import', 'system', 'pause', 'unpause', 'rename', 'top', 'stats']);

/**
 * The arguments of `mount MOUNTPOINT [options]` or `[SOURCE] MOUNTPOINT -o ... [options]` in
 * their plain spellings; null for anything else (help, other commands, unusual spellings), which
 * the full parser in main.ts then handles with its messages.
 */
export function parseMountArgv(argv: readonly string[]): MountArgs | null {
  const args: MountArgs = { mountpoint: '', foreground: false, passthrough: 'auto', logLevel: 'info', writeFormat: 'kernel', force: false, cache: true };
  const o: string[] = [];
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-o' || a === '--o') {
      const v = argv[++i];
      if (v === undefined || v.startsWith('-')) return null;
      o.push(v);
    } else if (a === '-f') {
      args.foreground = true;
    } else if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      if (name === 'no-cache' && eq < 0) {
        args.cache = false;
      } else if (BOOLEAN_OPTIONS[name] && eq < 0) {
        args[BOOLEAN_OPTIONS[name]] = true;
      } else if (VALUE_OPTIONS[name]) {
        const v = eq < 0 ? argv[++i] : a.slice(eq + 1);
        if (v === undefined || (eq < 0 && v.startsWith('-')) || v === '') return null;
        (args as unknown as Record<string, string>)[VALUE_OPTIONS[name]] = v;
      } else {
        return null;
      }
    } else if (a.startsWith('-')) {
      return null;
    } else {
      positional.push(a);
    }
  }
  let mountpoint: string | undefined;
  if (positional[0] === 'mount') {
    if (positional.length !== 2) return null;
    mountpoint = positional[1];
  } else {
    // The fuse-overlayfs form always has -o.
    if (o.length === 0 || positional.length < 1 || positional.length > 2 || COMMANDS.has(positional[0]!)) return null;
    mountpoint = positional.at(-1);
  }
  if (!mountpoint) return null;
  args.mountpoint = mountpoint;
  if (positional[0] !== 'mount' && positional.length === 2) args.source = positional[0];
  if (o.length > 0) args.o = o.length === 1 ? o[0] : o;
  return args;
}

function mountParams(args: MountArgs): MountParams {
  return parseMountOptions(([] as string[]).concat(args.o ?? []));
}

async function buildConfig(args: MountArgs, params: MountParams): Promise<DaemonConfig> {
  const { validateLayout } = await import('../daemon/validate.js');
  params.fsname ??= args.source ?? null;
  const layout = validateLayout(params, args.mountpoint);
  if (!['auto', 'on', 'off'].includes(args.passthrough)) throw new UsageError('--passthrough takes auto, on or off');
  if (!['kernel', 'oci'].includes(args.writeFormat)) throw new UsageError('--write-format takes kernel or oci');
  if (args.writeFormat === 'oci' && !params.ociWhiteouts) throw new UsageError('--write-format oci writes .wh. whiteouts that oci_whiteouts=off would not read back');
  const { checkLevel } = await import('../daemon/log.js');
  checkLevel(args.logLevel);
  const { resolve } = await import('node:path');
  const options: DaemonOptions = {
    passthrough: args.passthrough as DaemonOptions['passthrough'],
    logLevel: args.logLevel,
    logFile: args.logFile ? resolve(args.logFile) : null,
    pidFile: args.pidFile ? resolve(args.pidFile) : null,
    cacheTimeout: 86400,
    writeFormat: args.writeFormat as DaemonOptions['writeFormat'],
    force: args.force,
    cache: args.cache,
    cacheDir: args.cacheDir ? resolve(args.cacheDir) : null,
  };
  return { layout, params, options };
}

/** Runs the daemon in this process; `notify` reports to the waiting launcher. */
async function runDaemon(config: DaemonConfig, notify: ((msg: string) => void) | null): Promise<never> {
  // A background daemon leaves the directory it was started in (as libfuse's fuse_daemonize): its
  // working directory would keep the filesystem there busy, an `umount` of it refused, for as long
  // as the mount lives. (Every path of the configuration is absolute.)
  if (notify) process.chdir('/');
  lowerHelperThreads();
  const { makeLogger, startMount } = await import('../daemon/daemon.js');
  const logger = makeLogger(config.options);
  let m;
  // The pid file is opened before the mount, which may cover it (a mount over its own lower
  // directory): written by name once the mount is live, it would be written through the mount
  // itself, by the thread that serves it.
  const pidFile = config.options.pidFile;
  let pidFd = -1;
  try {
    if (pidFile) pidFd = openSync(pidFile, 'w', 0o644);
    // (so is a log file under the mount point, which pino, loaded once the mount is live, would open by name)
    const { inside, resolveExisting } = await import('../daemon/validate.js');
    if (config.options.logFile !== null && inside(resolveExisting(config.options.logFile), config.layout.mountpoint)) logger.openFileNow();
    m = await startMount(config, logger);
  } catch (e) {
    if (pidFd >= 0) {
      closeSync(pidFd);
      rmSync(pidFile!, { force: true });
    }
    logger.error({ err: e }, 'mount failed');
    await logger.ready();
    const msg = describe(e);
    if (notify) notify(`error ${msg}`);
    else process.stderr.write(`strata: ${msg}\n`);
    process.exit(1);
  }
  const { removeRecord, writeRecord } = await import('../daemon/registry.js');
  const mountpoint = config.layout.mountpoint;
  const record = { pid: process.pid, mountpoint, lowerdirs: config.layout.lowerdirs, upperdir: config.layout.upperdir,
    workdir: config.layout.workdir, started: new Date().toISOString(), logFile: config.options.logFile };
  writeRecord(record);
  // Written before the launcher returns, as a service manager expects of a forking service.
  if (pidFd >= 0) {
    writeSync(pidFd, `${process.pid}\n`);
    closeSync(pidFd);
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      logger.info({ signal: sig }, 'unmounting on signal');
      m.unmount();
    });
  }
  process.on('SIGHUP', () => logger.reopen());
  // An error nothing caught (outside the requests, which answer theirs) ends the daemon, as node would,
  // but not silently: stderr is /dev/null by now, so the error goes into the mount's record, where
  // `strata status` shows it, and into the log.
  let failing = false;
  const failed = (err: unknown): void => {
    if (failing) process.exit(70);
    failing = true;
    const text = err instanceof Error ? (err.stack ?? String(err)) : String(err);
    try {
      writeRecord({ ...record, failed: { at: new Date().toISOString(), error: text.slice(0, 4000) } });
    } catch {
      // (the record is for status only)
    }
    logger.fatal({ err }, 'the daemon failed: its mount is left without it (strata umount detaches it)');
    setTimeout(() => process.exit(70), 2000).unref();
    void logger.ready().finally(() => process.exit(70));
  };
  process.on('uncaughtException', failed);
  process.on('unhandledRejection', failed);
  if (notify) {
    notify(`ok ${mountpoint}`);
    // The launcher stops reading our output once the mount is live: from now on it goes nowhere
    // (logs go to --log-file when one is given).
    const devNull = N.openat(N.C.AT_FDCWD, '/dev/null', N.C.O_RDWR | N.C.O_CLOEXEC, 0);
    N.dup2(devNull, 0);
    N.dup2(devNull, 1);
    N.dup2(devNull, 2);
    N.close(devNull);
  }
  // What the mount did not need to start waits until the daemon is first idle (no request for
  // 250 ms, at most 3 s), so that neither the mount nor the first programs on it wait for it: the
  // metadata cache's LevelDB (bundled, importing it takes about 10 ms of this thread; a lookup that
  // wants a stored listing opens it at once), and the control socket for `mount -o remount,...` (see
  // remountCommand, which waits for it; node:net takes about 5 ms to load). The logger is
  // loaded now, unless its lines would go to the /dev/null that stderr now is. The registry's request
  // counts for `strata status` are refreshed off the request path.
  let ended = false;
  let control = null as { close(): void } | null;
  void whenIdle(m.session.stats).then(async () => {
    if (ended) return;
    m.live();
    writeCodeCache();
    // Each step takes a few milliseconds of this thread (the snapshot of the inode origins, loading
    // LevelDB, loading node:net): a turn of the event loop between them lets requests that came in
    // meanwhile be answered first.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const { serveControl } = await import('../daemon/control.js');
    if (!ended) control = serveControl(process.pid, (req) => m.remount(req.readOnly, req.flags));
  });
  // (a log file, or the terminal of a foreground mount, gets its lines at once)
  const logged = notify && !config.options.logFile ? logger.discard() : logger.ready();
  const collect = idleCollector();
  const refresh = setInterval(() => {
    if (failing) return;
    const { requests, errors } = m.session.stats;
    writeRecord({ ...record, requests, errors, byOp: m.session.requestsByOp(), updated: new Date().toISOString() });
    collect(requests);
  }, 2000);
  refresh.unref();
  await m.done;
  // (what waited for idleness and has not started never will: the process exits below)
  ended = true;
  await logged;
  clearInterval(refresh);
  control?.close();
  removeRecord(mountpoint, process.pid);
  if (pidFile) rmSync(pidFile, { force: true });
  logger.flush();
  process.exit(0);
}

/**
 * V8's helper threads (its optimising compiler, the garbage collector's helpers: the threads node
 * started before our code ran, listed by load.cjs; none without the loader) run at the lowest
 * priority, nice 19. On two CPUs a compile of the request path's functions otherwise holds the CPU
 * that the program waiting for a reply, or the daemon's own thread, is woken on: `perf sched` showed
 * a 2.2 ms stat at the bottom of a deep stack, its caller runnable behind a compile job. Fresh
 * mounts, 10 interleaved runs against the build before, medians (tmpfs upper): untar 710 -> 608 ms,
 * first stats at the bottom of 40 layers 23.7 -> 18.7 ms; python's start-up and `dpkg -l` in a chroot
 * unchanged within the noise. The daemon's thread and the thread pool (made later, by the daemon's
 * thread: nice 0) keep their priority.
 */
function lowerHelperThreads(): void {
  for (const tid of (globalThis as { __strataStartThreads?: number[] }).__strataStartThreads ?? []) {
    if (tid === process.pid) continue;
    try {
      setPriority(tid, 19);
    } catch {
      // gone, or not allowed: it keeps its priority
    }
  }
}

/**
 * Asks the loader of the bundled command (scripts/load.cjs) to write V8's code cache when there is
 * none usable (it also writes one at every exit when it came out larger). A daemon run from the
 * modules (tests that import them, node dist/src/cli/main.js) has no loader.
 */
function writeCodeCache(): void {
  (globalThis as { __strataWriteCodeCache?: (atExit: boolean) => void }).__strataWriteCodeCache?.(false);
}

/** Growth of the resident memory since the last collection that makes an idle daemon collect. */
const COLLECT_GROWTH = 16 << 20;

/**
 * Gives back, once the daemon is idle, the memory a burst of requests left: called every 2 s with
 * the request count, it runs a full garbage collection that returns the freed pages (N.lowMemory)
 * when no request came since the last call and the resident memory grew by COLLECT_GROWTH since
 * the last collection. V8's own memory reducer does the same 8 s or more after a burst, and not
 * always: a walk of 100k files left 93 MiB resident, 80 MiB after the collection. It takes 20-70 ms
 * of this thread, while nothing asks for it.
 */
export function idleCollector(collect: () => void = N.lowMemory, resident: () => number = process.memoryUsage.rss): (requests: number) => void {
  let seen = -1;
  let base = resident();
  return (requests) => {
    const idle = requests === seen;
    seen = requests;
    const rss = resident();
    if (idle && rss - base >= COLLECT_GROWTH) {
      collect();
      base = resident();
    } else if (rss < base) {
      base = rss;
    }
  };
}

/** How long without a request counts as idle, and the longest wait for it. */
const IDLE_MS = 250;
const IDLE_WAIT_MAX_MS = 3000;

/** Resolves once no request came for IDLE_MS, or after IDLE_WAIT_MAX_MS at the latest. */
function whenIdle(stats: { requests: number }): Promise<void> {
  const start = Date.now();
  return new Promise((resolve) => {
    let seen = stats.requests;
    const check = (): void => {
      if (stats.requests === seen || Date.now() - start >= IDLE_WAIT_MAX_MS) return resolve();
      seen = stats.requests;
      setTimeout(check, IDLE_MS);
    };
    setTimeout(check, IDLE_MS);
  });
}

/** Writes one status line to the launcher (once: the pipe is closed after ok or error). */
function statusWriter(): (s: string) => void {
  let open = true;
  return (s: string) => {
    if (!open) return;
    try {
      N.writeReply(STATUS_FD, Buffer.from(s + '\n'));
    } catch {
      // the launcher went away
    }
    N.close(STATUS_FD);
    open = false;
  };
}

/**
 * `node main.js ARGS... __daemon MOUNTPOINT`: a background mount run by the launcher (or, with the
 * checked configuration in the environment, by mountInBackground). Returns false (after
 * telling the launcher "pass") when the arguments are not a plain background mount.
 */
export async function daemonMain(argv: readonly string[]): Promise<boolean> {
  const notify = statusWriter();
  const given = process.env[CONFIG_ENV];
  if (given !== undefined) {
    delete process.env[CONFIG_ENV];
    return runDaemon(JSON.parse(given) as DaemonConfig, notify);
  }
  const args = parseMountArgv(argv);
  if (!args || args.foreground) {
    notify('pass');
    return false;
  }
  let config: DaemonConfig;
  try {
    const params = mountParams(args);
    // A remount starts no daemon: the command asks the mount's daemon in the foreground.
    if (params.remount) {
      notify('pass');
      return false;
    }
    config = await buildConfig(args, params);
  } catch (e) {
    notify(`error ${describe(e)}`);
    process.exit(exitCodeOf(e));
  }
  return runDaemon(config, notify);
}

/** `strata mount` once its arguments are known. */
export async function mountCommand(args: MountArgs): Promise<never> {
  let config: DaemonConfig;
  try {
    const params = mountParams(args);
    if (params.remount) return await remountCommand(args.mountpoint, params);
    config = await buildConfig(args, params);
  } catch (e) {
    fail(describe(e), exitCodeOf(e));
  }
  if (args.foreground) return runDaemon(config, null);
  return mountInBackground(config);
}

/** `mount -o remount,ro|rw,...`: the daemon of the mount applies the new flags. */
async function remountCommand(mountpointArg: string, params: MountParams): Promise<never> {
  const { realpathSync } = await import('node:fs');
  const { processAlive, readRecord } = await import('../daemon/registry.js');
  const { mountedPaths } = await import('../daemon/validate.js');
  const { askDaemon } = await import('../daemon/control.js');
  let mountpoint: string;
  try {
    mountpoint = realpathSync(mountpointArg);
  } catch {
    fail(`cannot remount "${mountpointArg}": it does not exist`, 1);
  }
  const rec = readRecord(mountpoint);
  if (!rec || !processAlive(rec.pid) || !mountedPaths().has(mountpoint)) fail(`cannot remount "${mountpointArg}": not a running strata mount`, 1);
  const { nodev, nosuid, noexec, atime, nodiratime } = params;
  let reply;
  try {
    reply = await askDaemon(rec.pid, { op: 'remount', readOnly: params.readOnly, flags: { nodev, nosuid, noexec, atime, nodiratime } });
  } catch (e) {
    fail(`cannot remount "${mountpointArg}": ${describe(e)}`, 1);
  }
  if (!reply.ok) fail(`cannot remount "${mountpointArg}": ${reply.error}`, 1);
  process.exit(0);
}

/** Without the launcher: starts the daemon as a detached child and waits until its mount is live. */
async function mountInBackground(config: DaemonConfig): Promise<never> {
  const { spawn } = await import('node:child_process');
  const { statSync } = await import('node:fs');
  // (the script this process runs: the modules' main.js, or the bundle's loader)
  const script = process.argv[1]!;
  const child = spawn(process.execPath, [...process.execArgv, script, '__daemon', config.layout.mountpoint], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: { ...process.env, [CONFIG_ENV]: JSON.stringify(config) },
  });
  // What the daemon says on stderr before it is ready, to explain a crash (kept short).
  let stderr = '';
  const errPipe = child.stderr!;
  errPipe.setEncoding('utf8');
  errPipe.on('data', (d: string) => {
    if (stderr.length < 65536) stderr += d;
  });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let text = '';
  pipe.setEncoding?.('utf8');
  let exit: string | null = null;
  let exitCode: number | null = null;
  const message = await new Promise<string>((resolve) => {
    pipe.on('data', (d: string) => {
      text += d;
      if (text.includes('\n')) resolve(text.split('\n')[0]!);
    });
    pipe.on('end', () => resolve(text.split('\n')[0] ?? ''));
    child.on('exit', (code, signal) => {
      exit = signal ? `killed by ${signal}` : `exit status ${code}`;
      exitCode = code;
      setTimeout(() => resolve(text.split('\n')[0] ?? ''), 50);
    });
  });
  if (message !== 'ok' && !message.startsWith('ok ')) {
    if (message.startsWith('error ')) {
      if (exitCode === null) await new Promise((r) => child.once('exit', r));
      fail(message.slice(6), exitCode ?? child.exitCode ?? 1);
    }
    // No reason given: the daemon crashed. Its last words on stderr say why.
    await new Promise((r) => setTimeout(r, 50));
    const why = lastErrorLine(stderr);
    fail(`the daemon exited before the mount was live (${exit ?? 'no reply'})${why ? `: ${why}` : ''}`, 1);
  }
  errPipe.destroy();
  // The mount answers: one request through the kernel to be sure.
  statSync(config.layout.mountpoint);
  child.unref();
  (pipe as unknown as { destroy(): void }).destroy();
  process.exit(0);
}

/** The most telling line of a crashed daemon's stderr: the error message, not the stack (as scripts/launcher.c). */
function lastErrorLine(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  for (const l of lines) {
    if (l.startsWith('{')) {
      try {
        const j = JSON.parse(l) as { level?: number; msg?: string; err?: { message?: string } };
        if ((j.level ?? 0) >= 50) return [j.msg, j.err?.message].filter(Boolean).join(': ');
      } catch {
        // not a log line
      }
    }
  }
  const errLine = lines.find((l) => /^[A-Za-z]*Error\b|^Error:|^\w+Error:/.test(l));
  return (errLine ?? lines.at(-1) ?? '').slice(0, 500);
}
