#!/usr/bin/env node
// The strata command line: mount (in the background by default), umount, and the
// fuse-overlayfs / mount(8) argument forms.

import { spawn } from 'node:child_process';
import { readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { DaemonConfig, DaemonOptions } from '../daemon/daemon.js';
import { allRecords, processAlive, readRecord, removeRecord, writeRecord } from '../daemon/registry.js';
import { mountedPaths, validateLayout } from '../daemon/validate.js';
import * as N from '../native/index.js';
import { parseMountOptions, UsageError, type MountParams } from '../union/params.js';
import { askDaemon, serveControl } from '../daemon/control.js';
import { join, resolve } from 'node:path';
import { unmountStrata } from '../daemon/unmount.js';
import { imageCommand } from './image.js';
import { commitCommand, containerCommand, exportCommand, imageMountArgs, imageMountOptions, runCommand, splitRunArgv, unknownOption } from './container.js';
import { usageMessage } from './usage.js';

// Modules that only some commands need (yargs, pino, level and the union core) are imported when
// used: each costs tens of milliseconds at start-up, paid twice by a mount (command, then daemon).

const CONFIG_ENV = 'STRATA_DAEMON_CONFIG';

function fail(message: string, code: number): never {
  process.stderr.write(`strata: ${message}\n`);
  process.exit(code);
}

function exitCodeOf(e: unknown): number {
  return e instanceof UsageError ? 2 : 1;
}

function describe(e: unknown): string {
  const err = e as { code?: string; syscall?: string; message?: string };
  if (err.code === 'EPERM' && err.syscall === 'mount') return 'mount(2) was refused: strata must run as root (or with CAP_SYS_ADMIN)';
  if (err.code === 'ENOENT' && err.syscall === 'open') return 'cannot open /dev/fuse: is the fuse module loaded?';
  return err.message ?? String(e);
}

interface MountArgs {
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

function buildConfig(args: MountArgs, params: MountParams): DaemonConfig {
  params.fsname ??= args.source ?? null;
  const layout = validateLayout(params, args.mountpoint);
  if (!['auto', 'on', 'off'].includes(args.passthrough)) throw new UsageError('--passthrough takes auto, on or off');
  if (!['kernel', 'oci'].includes(args.writeFormat)) throw new UsageError('--write-format takes kernel or oci');
  if (args.writeFormat === 'oci' && !params.ociWhiteouts) throw new UsageError('--write-format oci writes .wh. whiteouts that oci_whiteouts=off would not read back');
  const options: DaemonOptions = {
    passthrough: args.passthrough as DaemonOptions['passthrough'],
    logLevel: args.logLevel,
    logFile: args.logFile ?? null,
    pidFile: args.pidFile ? resolve(args.pidFile) : null,
    cacheTimeout: 86400,
    writeFormat: args.writeFormat as DaemonOptions['writeFormat'],
    force: args.force,
    cache: args.cache,
    cacheDir: args.cacheDir ?? null,
  };
  return { layout, params, options };
}

/** Runs the daemon in this process; `notify` reports readiness to a waiting parent. */
async function runDaemon(config: DaemonConfig, notify: ((msg: string) => void) | null): Promise<never> {
  const { makeLogger, reopenLog, startMount } = await import('../daemon/daemon.js');
  const logger = makeLogger(config.options);
  let m;
  try {
    m = await startMount(config, logger);
  } catch (e) {
    logger.error({ err: e }, 'mount failed');
    const msg = describe(e);
    if (notify) notify(`error ${msg}`);
    else process.stderr.write(`strata: ${msg}\n`);
    process.exit(1);
  }
  const mountpoint = config.layout.mountpoint;
  const record = { pid: process.pid, mountpoint, lowerdirs: config.layout.lowerdirs, upperdir: config.layout.upperdir,
    workdir: config.layout.workdir, started: new Date().toISOString(), logFile: config.options.logFile };
  writeRecord(record);
  const control = serveControl(process.pid, (req) => m.remount(req.readOnly, req.flags));
  // Written before the parent returns, as a service manager expects of a forking service.
  const pidFile = config.options.pidFile;
  if (pidFile) writeFileSync(pidFile, `${process.pid}\n`);
  // Request counts for `strata status`, refreshed off the request path.
  const refresh = setInterval(() => {
    const { requests, errors } = m.session.stats;
    writeRecord({ ...record, requests, errors, updated: new Date().toISOString() });
  }, 2000);
  refresh.unref();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      logger.info({ signal: sig }, 'unmounting on signal');
      m.unmount();
    });
  }
  process.on('SIGHUP', reopenLog);
  if (notify) {
    notify('ok');
    // The parent stops reading our stderr once the mount is live: from now on it goes nowhere
    // (logs go to --log-file when one is given).
    const devNull = N.openat(N.C.AT_FDCWD, '/dev/null', N.C.O_WRONLY | N.C.O_CLOEXEC, 0);
    N.dup2(devNull, 1);
    N.dup2(devNull, 2);
    N.close(devNull);
  }
  await m.done;
  clearInterval(refresh);
  control.close();
  removeRecord(mountpoint, process.pid);
  if (pidFile) rmSync(pidFile, { force: true });
  logger.flush?.();
  process.exit(0);
}

/** Starts the daemon as a detached child and waits until its mount is live. */
async function mountInBackground(config: DaemonConfig): Promise<never> {
  const script = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, [script, '__daemon', config.layout.mountpoint], {
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
  const message = await new Promise<string>((resolve) => {
    pipe.on('data', (d: string) => {
      text += d;
      if (text.includes('\n')) resolve(text.split('\n')[0]!);
    });
    pipe.on('end', () => resolve(text.split('\n')[0] ?? ''));
    child.on('exit', (code, signal) => {
      exit = signal ? `killed by ${signal}` : `exit status ${code}`;
      setTimeout(() => resolve(text.split('\n')[0] ?? ''), 50);
    });
  });
  if (message !== 'ok') {
    if (message.startsWith('error ')) fail(message.slice(6), 1);
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

/** The most telling line of a crashed daemon's stderr: the error message, not the stack. */
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

async function mountCommand(args: MountArgs): Promise<never> {
  let config: DaemonConfig;
  try {
    const params = parseMountOptions(([] as string[]).concat(args.o ?? []));
    if (params.remount) return await remountCommand(args.mountpoint, params);
    config = buildConfig(args, params);
  } catch (e) {
    fail(describe(e), exitCodeOf(e));
  }
  if (args.foreground) return runDaemon(config, null);
  return mountInBackground(config);
}

/** `mount -o remount,ro|rw,...`: the daemon of the mount applies the new flags. */
async function remountCommand(mountpointArg: string, params: MountParams): Promise<never> {
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

function statusCommand(mountpointArg: string | undefined, json: boolean): never {
  const mounted = mountedPaths();
  let records = allRecords();
  if (mountpointArg) {
    let mp = mountpointArg;
    try {
      mp = realpathSync(mountpointArg);
    } catch {
      // a dead mount cannot be resolved: use the path as given
    }
    records = records.filter((r) => r.mountpoint === mp);
    if (records.length === 0) fail(`"${mountpointArg}" is not a strata mount`, 1);
  }
  // Records of daemons that died after their mount went away are stale: drop them.
  records = records.filter((r) => {
    if (processAlive(r.pid) || mounted.has(r.mountpoint)) return true;
    removeRecord(r.mountpoint, r.pid);
    return false;
  });
  const rows = records.map((r) => ({
    ...r,
    alive: processAlive(r.pid),
    mounted: mounted.has(r.mountpoint),
    uptimeSeconds: Math.round((Date.now() - Date.parse(r.started)) / 1000),
  }));
  if (json) {
    process.stdout.write(JSON.stringify(rows) + '\n');
  } else if (rows.length === 0) {
    process.stdout.write('no strata mounts\n');
  } else {
    for (const r of rows) {
      const state = r.alive && r.mounted ? 'running' : r.mounted ? 'daemon gone (strata umount clears it)' : 'not mounted';
      process.stdout.write([
        `${r.mountpoint}: ${state}`,
        `  pid ${r.pid}, up ${r.uptimeSeconds}s, ${r.requests ?? 0} requests (${r.errors ?? 0} answered with an error)`,
        `  lower: ${r.lowerdirs.join(':')}`,
        ...(r.upperdir ? [`  upper: ${r.upperdir}  work: ${r.workdir}`] : []),
      ].join('\n') + '\n');
    }
  }
  process.exit(0);
}

async function umountCommand(mountpointArg: string): Promise<never> {
  let mountpoint: string;
  try {
    mountpoint = realpathSync(mountpointArg);
  } catch {
    mountpoint = resolve(mountpointArg); // a dead FUSE mount cannot be resolved (ENOTCONN)
  }
  try {
    const how = await unmountStrata(mountpoint);
    process.stdout.write(`strata: ${mountpointArg}: ${how}\n`);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOTMOUNTED') fail(`"${mountpointArg}" is not mounted`, 1);
    fail(`cannot unmount "${mountpointArg}": ${describe(e)}`, 1);
  }
  process.exit(0);
}

async function benchCommand(a: { lowerdir?: string; rootfs?: string; systems?: string; workloads?: string; runs?: number;
  out?: string; tmp?: string; quick?: boolean; seed?: number }): Promise<never> {
  const { benchOptions, runBench, BenchUsageError } = await import('../bench/runner.js');
  try {
    process.exit(await runBench(benchOptions(a)));
  } catch (e) {
    fail(`bench: ${describe(e)}`, e instanceof BenchUsageError ? 2 : 1);
  }
}

async function cacheCommand(action: 'stats' | 'verify' | 'clear', dir: string | undefined, json: boolean): Promise<never> {
  if (!dir) fail('give --cache-dir DIR or --workdir W', 2);
  const { cacheStats, clearCache, verifyCache } = await import('../union/cache_check.js');
  try {
    if (action === 'clear') {
      await clearCache(dir);
      process.stdout.write(`cleared ${dir}\n`);
    } else if (action === 'verify') {
      const problems = await verifyCache(dir);
      if (json) process.stdout.write(JSON.stringify({ problems }) + '\n');
      else for (const p of problems) process.stdout.write(p + '\n');
      if (problems.length > 0) {
        process.stderr.write(`strata: ${problems.length} cache entr${problems.length === 1 ? 'y disagrees' : 'ies disagree'} with the layers\n`);
        process.exit(1);
      }
      if (!json) process.stdout.write('the cache agrees with the layers\n');
    } else {
      const s = await cacheStats(dir);
      if (json) {
        process.stdout.write(JSON.stringify(s) + '\n');
      } else {
        const last = s.lastMount;
        process.stdout.write([
          `cache:      ${dir} (${(s.bytes / 1024).toFixed(0)} KiB)`,
          `entries:    ${s.entries.listings} lower listings, ${s.entries.origins} inode numbers, ${s.entries.other} other`,
          `layers:     ${s.layers.map((l) => (l.upper ? `upper ${l.path}` : l.path)).join(', ')}`,
          last ? `last mount: ${String(last.at)}: ${String(last.hits)} lookups from the index, ${String(last.misses)} without, ` +
            `hit rate ${s.hitRate === null ? '-' : (100 * s.hitRate).toFixed(1) + '%'}; ${String(last.loads)} listings read, ` +
            `${String(last.builds)} built, ${String(last.stale)} found stale` : 'last mount: none recorded',
        ].join('\n') + '\n');
      }
    }
  } catch (e) {
    const code = (e as { code?: string }).code;
    fail(code === 'ENOENT' ? `no cache at "${dir}"` : describe(e), 1);
  }
  process.exit(0);
}

const mountOptions = {
  o: { type: 'string', requiresArg: true, describe: 'mount options: lowerdir=A:B:C,upperdir=U,workdir=W,...' },
  foreground: { alias: 'f', type: 'boolean', default: false, describe: 'stay in the foreground' },
  passthrough: { type: 'string', default: 'auto', describe: 'kernel passthrough for file I/O: auto, on or off' },
  'log-level': { type: 'string', default: 'info', describe: 'trace, debug, info, warn, error' },
  'log-file': { type: 'string', describe: 'write JSON logs to this file (default: stderr)' },
  'pid-file': { type: 'string', describe: 'write the daemon\'s pid to this file once the mount is live (removed at exit)' },
  'write-format': { type: 'string', default: 'kernel', describe: 'whiteouts in the upper: kernel (char 0/0) or oci (.wh. files)' },
  force: { type: 'boolean', default: false, describe: 'mount an upper that a volatile mount left behind' },
  cache: { type: 'boolean', default: true, describe: 'keep inode numbers in a LevelDB cache (--no-cache: without it)' },
  'cache-dir': { type: 'string', describe: 'where the cache lives (default: WORKDIR/strata-cache)' },
} as const;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '__daemon') {
    const config = JSON.parse(process.env[CONFIG_ENV] ?? '{}') as DaemonConfig;
    delete process.env[CONFIG_ENV];
    const out = createWriteStreamForFd3();
    await runDaemon(config, (msg) => {
      out(msg + '\n');
    });
    return;
  }
  const unknown = unknownOption(argv, { mount: { ...mountOptions, ...imageMountOptions } });
  if (unknown) fail(`unknown option ${unknown}`, 2);
  // `strata run IMAGE CMD...`: CMD is the container's, options and all.
  const { head, command } = splitRunArgv(argv);
  const { default: yargs } = await import('yargs');
  await yargs(head)
    .scriptName('strata')
    .usage('$0 <command> [options]')
    .command('mount <mountpoint>', 'mount a union of layers', (y) => y.positional('mountpoint', { type: 'string', demandOption: true }).options(mountOptions)
      .options(imageMountOptions),
    async (a) => mountCommand(await imageMountArgs(a as unknown as MountArgs)))
    .command(['umount <mountpoint>', 'unmount <mountpoint>'], 'unmount and stop the daemon', (y) => y.positional('mountpoint', { type: 'string', demandOption: true }),
      (a) => umountCommand(a.mountpoint as string))
    .command('status [mountpoint]', 'list strata mounts: pid, layers, uptime, requests', (y) =>
      y.positional('mountpoint', { type: 'string' }).option('json', { type: 'boolean', default: false }),
    (a) => statusCommand(a.mountpoint, a.json))
    .command('cache <action>', 'inspect the metadata cache of a mount: stats, verify or clear', (y) =>
      y.positional('action', { choices: ['stats', 'verify', 'clear'] as const, demandOption: true })
        .option('cache-dir', { type: 'string', describe: 'the cache directory (WORKDIR/strata-cache by default)' })
        .option('workdir', { type: 'string', describe: 'the work directory of the mount whose cache to use' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
    (a) => cacheCommand(a.action as 'stats' | 'verify' | 'clear', a.cacheDir ?? (a.workdir ? join(a.workdir, 'strata-cache') : undefined), a.json))
    .command('bench', 'measure copy-on-write and more against the kernel\'s overlayfs and fuse-overlayfs', (y) => y
      .option('lowerdir', { type: 'string', describe: 'lower layers to use (A:B:C, top first) instead of generated ones' })
      .option('rootfs', { type: 'string', describe: 'a layered root filesystem (A:B:C) for the chroot workloads' })
      .option('systems', { type: 'string', describe: 'strata,kernel,fuse-overlayfs (default: all; those missing are left out)' })
      .option('workloads', { type: 'string', describe: 'comma-separated workload names (default: all that apply)' })
      .option('runs', { type: 'number', describe: 'runs per workload and system (default 3; 1 with --quick)' })
      .option('out', { type: 'string', describe: 'where results.json, report.md and the charts go (default ./bench-results)' })
      .option('tmp', { type: 'string', describe: 'where layers and mounts are made (default /var/tmp)' })
      .option('quick', { type: 'boolean', default: false, describe: 'tiny sizes: a smoke run' })
      .option('seed', { type: 'number', describe: 'seed of the generated layers (default 1)' }),
    (a) => benchCommand(a))
    .command(imageCommand)
    .command(runCommand(() => command))
    .command(commitCommand)
    .command(exportCommand)
    .command(containerCommand)
    .command('$0 [source] <mountpoint>', 'fuse-overlayfs form: strata -o lowerdir=...,upperdir=...,workdir=... MOUNTPOINT', (y) =>
      y.positional('source', { type: 'string' }).positional('mountpoint', { type: 'string', demandOption: true }).options(mountOptions),
    // yargs fills the demanded positional first: with two arguments they arrive swapped.
    (a) => mountCommand({ ...(a as unknown as MountArgs), ...(a.source !== undefined ? { source: a.mountpoint, mountpoint: a.source } : {}) }))
    .strict()
    .help()
    .version(packageVersion())
    .fail((msg, err) => {
      if (err) fail(describe(err), exitCodeOf(err));
      fail(usageMessage(msg, argv), 2);
    })
    .parseAsync();
}

/** `strata --version` (podman asks its mount program for one). */
function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8')) as { version: string };
    return `strata version ${pkg.version}`;
  } catch {
    return 'strata version unknown';
  }
}

function createWriteStreamForFd3(): (s: string) => void {
  let open = true;
  return (s: string) => {
    if (!open) return;
    try {
      N.writeReply(3, Buffer.from(s));
    } catch {
      // the parent went away
    }
    if (s.startsWith('ok') || s.startsWith('error')) {
      N.close(3);
      open = false;
    }
  };
}

main().catch((e: unknown) => fail(describe(e), exitCodeOf(e)));
