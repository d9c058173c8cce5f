#!/usr/bin/env node
// The strata command line: mount (in the background by default), umount, and the
// fuse-overlayfs / mount(8) argument forms.

import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { allRecords, processAlive, removeRecord, residentBytes } from '../daemon/registry.js';
import { mountedPaths } from '../daemon/validate.js';
import { describe, exitCodeOf, fail, mountCommand, parseMountArgv, daemonMain, type MountArgs } from './mount.js';
import { errCode } from '../fuse/errors.js';

// Modules that only some commands need (yargs, pino, level and the union core) are imported when
// used: each costs tens of milliseconds at start-up. A mount in its plain spellings needs none of
// yargs (see mount.ts).

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
  const rows = records.map((r) => {
    const alive = processAlive(r.pid);
    return {
      ...r,
      alive,
      mounted: mounted.has(r.mountpoint),
      uptimeSeconds: Math.round((Date.now() - Date.parse(r.started)) / 1000),
      residentBytes: alive ? residentBytes(r.pid) : undefined,
    };
  });
  if (json) {
    process.stdout.write(JSON.stringify(rows) + '\n');
  } else if (rows.length === 0) {
    process.stdout.write('no strata mounts\n');
  } else {
    for (const r of rows) {
      const gone = r.failed ? `daemon failed at ${r.failed.at}: ${r.failed.error.split('\n')[0]}` : 'daemon gone';
      const state = r.alive && r.mounted ? 'running' : r.mounted ? `${gone} (strata umount clears it)` : 'not mounted';
      process.stdout.write([
        `${r.mountpoint}: ${state}`,
        `  pid ${r.pid}, up ${r.uptimeSeconds}s, ${r.residentBytes ? `${(r.residentBytes / 2 ** 20).toFixed(1)} MiB resident, ` : ''}` +
          `${r.requests ?? 0} requests (${r.errors ?? 0} answered with an error)`,
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
  const { unmountStrata } = await import('../daemon/unmount.js');
  try {
    const how = await unmountStrata(mountpoint);
    process.stdout.write(`strata: ${mountpointArg}: ${how}\n`);
  } catch (e) {
    if (errCode(e) === 'ENOTMOUNTED') fail(`"${mountpointArg}" is not mounted`, 1);
    fail(`cannot unmount "${mountpointArg}": ${describe(e)}`, 1);
  }
  process.exit(0);
}

async function benchCommand(a: { lowerdir?: string; rootfs?: string; systems?: string; workloads?: string; runs?: number;
  out?: string; tmp?: string; upperTmp?: string; quick?: boolean; seed?: number }): Promise<never> {
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
    const code = errCode(e);
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

/**
 * docker's short verbs: `ps [-a]`, `rm`, `images`, `rmi`, `save`, `load`, `tag`, `history`, `import`,
 * as the commands they stand for.
 */
function dockerAliases(argv: string[]): string[] {
  const [verb, ...rest] = argv;
  switch (verb) {
    case 'ps': {
      // docker ps: the running containers; -a: all of them (also in a group of short flags: -aq); -n N,
      // -l (the last created): of all states too
      const isAll = (a: string): boolean => a === '--all' || /^-[a-zA-Z]*a[a-zA-Z]*$/.test(a);
      const all = rest.some(isAll) || rest.some((a) => /^(-n|--last|--latest)(=.*)?$|^-[a-zA-Z]*l[a-zA-Z]*$/.test(a));
      const others = rest.filter((a) => a !== '--all').map((a) => (isAll(a) ? a.replace('a', '') : a)).filter((a) => a !== '-');
      return ['container', 'ls', ...(all ? [] : ['--running']), ...others];
    }
    case 'rm': return ['container', 'rm', ...rest];
    case 'images': return ['image', 'ls', ...rest];
    case 'rmi': return ['image', 'rm', ...rest];
    case 'save': case 'load': case 'tag': case 'history': case 'import': return ['image', verb, ...rest];
    default: return argv;
  }
}

async function main(): Promise<void> {
  let argv = dockerAliases(process.argv.slice(2));
  // A daemon's command line ends with `__daemon MOUNTPOINT` (see scripts/launcher.c).
  if (argv.at(-2) === '__daemon') {
    argv = argv.slice(0, -2);
    // Returns only when this is not a plain background mount after all: the launcher then passes
    // our output through, and the full parser below takes the arguments.
    await daemonMain(argv);
  } else {
    const args = parseMountArgv(argv);
    if (args) return void (await mountCommand(args));
    // `strata export C -o F` needs none of yargs either.
    if (argv[0] === 'export' && (await (await import('./container.js')).plainExport(argv))) return;
    // Nor does `strata image load -i F`.
    if (argv[0] === 'image' && argv[1] === 'load' && (await (await import('./image.js')).plainLoad(argv))) return;
  }
  const { imageCommand } = await import('./image.js');
  const { commitCommand, containerCommand, exportCommand, imageMountArgs, imageMountOptions, runCommand, splitRunArgv, unknownOption } =
    await import('./container.js');
  const { usageMessage } = await import('./usage.js');
  const { LOGIN_OPTIONS, LOGOUT_OPTIONS, PULL_OPTIONS, PUSH_OPTIONS, loginCommand, logoutCommand, pullCommand, pushCommand } = await import('./registry.js');
  const L = await import('./lifecycle.js');
  const { BUILD_OPTIONS, buildCommand } = await import('./build.js');
  const { volumeCommand } = await import('./volume.js');
  const { INSPECT_OPTIONS, inspectCommand } = await import('./inspect.js');
  const { CP_OPTIONS, cpCommand } = await import('./cp.js');
  const { systemCommand } = await import('./system.js');
  const { STATS_OPTIONS, statsCommand } = await import('./stats.js');
  const withCommand = { create: L.CREATE_OPTIONS, exec: L.EXEC_OPTIONS, top: L.WAIT_OPTIONS };
  const unknown = unknownOption(argv, {
    mount: { ...mountOptions, ...imageMountOptions }, pull: PULL_OPTIONS, push: PUSH_OPTIONS, login: LOGIN_OPTIONS, logout: LOGOUT_OPTIONS,
    ...withCommand, start: L.START_OPTIONS, stop: L.STOP_OPTIONS, diff: L.DIFF_OPTIONS, logs: L.LOGS_OPTIONS, build: BUILD_OPTIONS,
    kill: L.KILL_OPTIONS, wait: L.WAIT_OPTIONS, pause: L.WAIT_OPTIONS, unpause: L.WAIT_OPTIONS, rename: L.WAIT_OPTIONS, restart: L.RESTART_OPTIONS, inspect: INSPECT_OPTIONS, cp: CP_OPTIONS,
    stats: STATS_OPTIONS,
  }, Object.keys(withCommand));
  if (unknown) fail(`unknown option ${unknown}`, 2);
  // `strata run IMAGE CMD...` (create IMAGE CMD..., exec CONTAINER CMD...): CMD is the container's, options and all.
  const { head, command } = splitRunArgv(argv, withCommand);
  const { default: yargs } = await import('yargs');
  const parser = yargs(head);
  // yargs renders a command's whole help text as its handler starts, in case the handler asks for it
  // later (cacheHelpMessage): 30-60 ms of text layout for a command with many options, which
  // strata's handlers never use (a failure prints its own one line). Rendered on demand instead.
  const usage = (parser as unknown as { getInternalMethods?: () => { getUsageInstance: () => { cacheHelpMessage?: () => void } } })
    .getInternalMethods?.().getUsageInstance();
  if (usage?.cacheHelpMessage) usage.cacheHelpMessage = (): void => {};
  await parser
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
      .option('upper-tmp', { type: 'string', describe: 'where the upper and work directories are made instead (e.g. a tmpfs; default --tmp)' })
      .option('quick', { type: 'boolean', default: false, describe: 'tiny sizes: a smoke run' })
      .option('seed', { type: 'number', describe: 'seed of the generated layers (default 1)' }),
    (a) => benchCommand(a))
    .command(imageCommand)
    .command(runCommand(() => command))
    .command(commitCommand)
    .command(exportCommand)
    .command(containerCommand)
    .command(buildCommand)
    .command(L.createCommand(() => command))
    .command(L.startCommand)
    .command(L.stopCommand)
    .command(L.execCommand(() => command))
    .command(L.diffCommand)
    .command(L.logsCommand)
    .command(pullCommand)
    .command(pushCommand)
    .command(loginCommand)
    .command(logoutCommand)
    .command(volumeCommand)
    .command(inspectCommand)
    .command(cpCommand)
    .command(systemCommand)
    .command(L.killCommand)
    .command(L.waitCommand)
    .command(L.restartCommand)
    .command(L.pauseCommands[0]!)
    .command(L.pauseCommands[1]!)
    .command(L.renameCommand)
    .command(L.topCommand(() => command))
    .command(statsCommand)
    .command('$0 [source] <mountpoint>', 'fuse-overlayfs form: strata -o lowerdir=...,upperdir=...,workdir=... MOUNTPOINT', (y) =>
      y.positional('source', { type: 'string' }).positional('mountpoint', { type: 'string', demandOption: true }).options(mountOptions),
    // yargs fills the demanded positional first: with two arguments they arrive swapped.
    (a) => {
      // The form always has -o: a word without it is a command strata does not know, not a mount point.
      if (a.o === undefined) fail(`unknown command "${String(a.mountpoint)}" (strata --help lists them)`, 2);
      return mountCommand({ ...(a as unknown as MountArgs), ...(a.source !== undefined ? { source: a.mountpoint, mountpoint: a.source } : {}) });
    })
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

main().catch((e: unknown) => fail(describe(e), exitCodeOf(e)));
