// `strata run`: a container from an image, its command run with the merged view as its root.
//
// 1. With the store open: resolve the image, create the container record (new upper and work
//    directories in the store). The store is closed again: LevelDB admits one process, and the
//    command may run for hours while other strata commands need the store.
// 2. Mount the image's layers and the upper with strata at the container's merged directory.
// 3. Resolve the user (the image's User or --user) in the container's /etc/passwd and /etc/group
//    (src/image/user.ts): uid, gid, supplementary groups, HOME unless the image's Env sets it.
// 4. Run the command in new mount, PID and UTS namespaces (bin/strata-run-ns, scripts/run-ns.c; a
//    network namespace too with --network none), whose pid 1 mounts /proc, /sys (read-only), a
//    small /dev (tmpfs with the usual nodes, its own devpts), binds the host's resolv.conf and the
//    container's hosts and hostname over the image's, and makes the container's mounts, all inside
//    the new mount namespace (they vanish with it); then becomes bin/strata-run-exec
//    (scripts/run-exec.c), which makes the merged view the namespace's root (pivot_root, the host's
//    mounts detached: the container holds none of them), enters the working directory (made if
//    missing, as podman does), drops the capabilities the container does not get, takes the user's
//    groups, gid and uid, and execs the command with the container's environment.
// 5. Whatever happens (the command fails, is killed, strata run gets SIGINT/SIGTERM), unmount the
//    container, record its exit status (or remove it with --rm), and exit with the command's status.
//    A user that cannot be resolved is refused before anything runs: the container is removed.

import { spawn } from 'node:child_process';
import { Socket } from 'node:net';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as N from '../native/index.js';
import { isPrivateXattr } from '../union/whiteout.js';
import { mountLayers, unmountIfMounted } from './container.js';
import { processAlive } from '../daemon/registry.js';
import { type Store, withStore, type ContainerRecord } from './store.js';
import { ImageError, type ImageConfig } from './types.js';
import { monitorHealth } from './health.js';
import { LogWriter, logPath } from './logs.js';
import { containerUser, parseUserSpec, type ExecUser } from './user.js';
import { mountPointIn } from './inroot.js';
import { createCgroup, oomKilled, removeCgroup } from './cgroups.js';
import { allocateIds, capabilityMask, checkSettings, idMapArg, subordinateRanges, SHM_SIZE_DEFAULT, rlimitArgs, containerMounts, type ContainerSettings, ensureVolume, type MountSpec, settingsOf, volumeDir } from './settings.js';

const osSignals = constants.signals as Record<string, number>;
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface RunOptions {
  store: string;
  image: string;
  /** Command and arguments given after the image name (empty: the image's Cmd). */
  command: string[];
  name?: string;
  rm: boolean;
  /** --user: overrides the image's User (same syntax: user, uid, user:group, uid:gid). */
  user?: string;
  /** --entrypoint: replaces the image's Entrypoint, and drops its Cmd (as docker). */
  entrypoint?: string[];
  /** -e, -w, --hostname, -v, --mount, --tmpfs, --rm (src/image/settings.ts). */
  settings?: ContainerSettings;
  /** -t: the command runs on strata's own terminal (its output is not logged). */
  tty?: boolean;
}

/** The program that enters the container and execs the command (scripts/run-exec.c, built by make). */
const RUN_EXEC = fileURLToPath(new URL('../../../bin/strata-run-exec', import.meta.url));
/** The program that makes the container's namespaces and waits for its pid 1 (scripts/run-ns.c). */
const RUN_NS = fileURLToPath(new URL('../../../bin/strata-run-ns', import.meta.url));

/**
 * The command line to run: Entrypoint + (the given command, else Cmd), as Docker builds it; with
 * `entrypoint` (--entrypoint) that one, and the image's Cmd is not used.
 */
export function containerArgv(config: ImageConfig, command: readonly string[], entrypoint?: readonly string[]): string[] {
  const parts = commandParts(config, command, entrypoint);
  const argv = [...parts.entrypoint, ...parts.cmd];
  if (argv.length === 0) throw new ImageError('no command given and the image has no default command (Cmd or Entrypoint)', 2);
  return argv;
}

/** The Entrypoint and Cmd a container runs with (containerArgv's two halves). */
function commandParts(config: ImageConfig, command: readonly string[], entrypoint?: readonly string[]): { entrypoint: string[]; cmd: string[] } {
  return {
    entrypoint: [...(entrypoint ?? config.config?.Entrypoint ?? [])],
    cmd: command.length > 0 ? [...command] : entrypoint !== undefined ? [] : [...(config.config?.Cmd ?? [])],
  };
}

/**
 * The environment of the command: the image's Env, PATH, HOSTNAME, HOME (the user's home directory
 * from /etc/passwd unless Env sets it) and the host's TERM.
 */
export function containerEnv(config: ImageConfig, hostname: string, home = '/root', over: readonly string[] = []): Record<string, string> {
  const env: Record<string, string> = { PATH: DEFAULT_PATH, HOSTNAME: hostname, HOME: home };
  if (process.env.TERM) env.TERM = process.env.TERM;
  // (then the container's own, from -e and --env-file: they win)
  for (const kv of [...(config.config?.Env ?? []), ...over]) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

/** The host's resolv.conf (resolved), if there is a regular file to give the container. */
function hostResolvConf(): string | null {
  try {
    const p = realpathSync('/etc/resolv.conf');
    return lstatSync(p).isFile() ? p : null;
  } catch {
    return null;
  }
}

/** What we made in the container's /etc for the bind mounts, to take it out again. */
interface EtcStubs {
  /** The files made (empty) to bind over. */
  names: string[];
  /** The upper had no etc/ before: the files' creation copied it up. */
  copiedUpEtc: boolean;
  /** /etc's mode and owner before (a later chmod/chown by the command must not be undone). */
  etc: { mode: number; uid: number; gid: number };
}

/**
 * Prepares /etc/NAME in the merged view for each file to bind there. Returns the names that can be
 * bound (the image has a regular file there, or an empty one was made: `stubs`, removed afterwards
 * with the copy-up of /etc it caused, so a commit does not pick them up). None when there is no /etc,
 * or a symlink that would lead a bind mount elsewhere.
 */
function prepareEtcFiles(merged: string, upper: string, names: readonly string[]): { bindable: string[]; stubs: EtcStubs | null } {
  let etc;
  try {
    // Not through a symlinked /etc: the mount would resolve it on the host.
    etc = lstatSync(join(merged, 'etc'));
    if (!etc.isDirectory()) return { bindable: [], stubs: null };
  } catch {
    return { bindable: [], stubs: null };
  }
  const copiedUpEtc = !existsSync(join(upper, 'etc'));
  const bindable: string[] = [];
  const made: string[] = [];
  for (const name of names) {
    const target = join(merged, 'etc', name);
    try {
      if (lstatSync(target).isFile()) bindable.push(name);
      continue;
    } catch {
      // absent
    }
    try {
      closeSync(openSync(target, 'wx', 0o644));
      bindable.push(name);
      made.push(name);
    } catch {
      // not there, and cannot be made: not bound
    }
  }
  return { bindable, stubs: made.length > 0 ? { names: made, copiedUpEtc, etc: { mode: etc.mode, uid: etc.uid, gid: etc.gid } } : null };
}

/** Takes out what prepareEtcFiles made, unless the command changed it. */
function removeEtcStubs(upper: string, stubs: EtcStubs): void {
  const etc = join(upper, 'etc');
  try {
    for (const name of stubs.names) {
      const f = lstatSync(join(etc, name));
      if (f.isFile() && f.size === 0) rmSync(join(etc, name));
    }
    if (!stubs.copiedUpEtc) return;
    const st = lstatSync(etc);
    const same = st.mode === stubs.etc.mode && st.uid === stubs.etc.uid && st.gid === stubs.etc.gid;
    // The copy-up gave it overlay's own xattrs (overlay.origin): they describe the copy-up, not the
    // directory, and a commit leaves them out; any other xattr is the command's.
    const own = N.llistxattr(N.C.AT_FDCWD, etc).filter((x) => !isPrivateXattr(x));
    if (same && readdirSync(etc).length === 0 && own.length === 0) rmdirSync(etc);
  } catch {
    // the command removed or replaced them: theirs now
  }
}

/**
 * The files bound over the container's /etc, as docker and podman bind them: the host's resolv.conf,
 * and a hosts and a hostname made for the container in its directory (localhost, the host name on
 * 127.0.1.1, --add-host's entries; with the host's network, the host's own entries too).
 */
function etcFiles(rec: ContainerRecord, hostname: string, settings: ContainerSettings): Map<string, string> {
  const files = new Map<string, string>();
  const resolv = hostResolvConf();
  if (settings.dns || settings.dnsSearch || settings.dnsOptions) {
    // --dns, --dns-search, --dns-option: each kind of line the host's resolv.conf has, replaced
    let lines: string[] = [];
    try {
      if (resolv) lines = readFileSync(resolv, 'utf8').split('\n');
    } catch {
      // none
    }
    const drop = [...(settings.dns ? ['nameserver'] : []), ...(settings.dnsSearch ? ['search', 'domain'] : []), ...(settings.dnsOptions ? ['options'] : [])];
    const search = (settings.dnsSearch ?? []).filter((d) => d !== '.');
    const out = [...lines.filter((l) => l.trim() !== '' && !drop.includes(l.trim().split(/\s+/)[0]!)),
      ...(settings.dns ?? []).map((n) => `nameserver ${n}`), ...(search.length > 0 ? [`search ${search.join(' ')}`] : []),
      ...(settings.dnsOptions ? [`options ${settings.dnsOptions.join(' ')}`] : [])];
    writeFileSync(join(rec.dir, 'resolv.conf'), `${out.join('\n')}\n`, { mode: 0o644 });
    files.set('resolv.conf', join(rec.dir, 'resolv.conf'));
  } else if (resolv) {
    files.set('resolv.conf', resolv);
  }
  let hostHosts = '';
  if (settings.network !== 'none') {
    try {
      hostHosts = readFileSync('/etc/hosts', 'utf8');
    } catch {
      // none
    }
  }
  const lines = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback',
    // (the host's loopback lines are ours above; its 127.0.1.1 names the host, not the container)
    ...hostHosts.split('\n').filter((l) => l.trim() !== '' && !l.trim().startsWith('#') && !/^\s*(127\.0\.0\.1|::1|127\.0\.1\.1)\s/.test(l)),
    `127.0.1.1\t${hostname}`, ...(settings.addHosts ?? []).map((h) => `${h.slice(h.indexOf(':') + 1)}\t${h.slice(0, h.indexOf(':'))}`)];
  writeFileSync(join(rec.dir, 'hosts'), `${lines.join('\n')}\n`, { mode: 0o644 });
  writeFileSync(join(rec.dir, 'hostname'), `${hostname}\n`, { mode: 0o644 });
  files.set('hosts', join(rec.dir, 'hosts'));
  files.set('hostname', join(rec.dir, 'hostname'));
  return files;
}

/** How long a command may take to end after strata run was told to stop (docker stop's default). */
const STOP_GRACE_MS = 10_000;
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** The children of a process (from /proc). */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Runs argv in the container's namespaces; resolves with the exit status (128+n for a signal). */
function runInNamespaces(rec: ContainerRecord, argv: string[], env: Record<string, string>, wd: string, etcBinds: readonly string[],
  user: ExecUser, hostname: string, mounts: readonly string[], settings: ContainerSettings, cgroups: readonly string[],
  onStarted?: (unsharePid: number) => void, output?: number | LogWriter): Promise<number> {
  // bin/strata-run-ns (and with it the whole PID namespace) dies with this process, if it is
  // killed: no container is left running without the process that records its end and unmounts it.
  const isolated = settings.network === 'none';
  // What pid 1 mounts before it becomes strata-run-exec (scripts/run-ns.c, STRATA_SETUP): /proc,
  // /sys, /dev, the /etc files, the container's mounts; the container's PATH, on which
  // strata-run-exec searches the command after the chroot.
  const spec = [`root\t${rec.merged}\t${settings.shmSize ?? SHM_SIZE_DEFAULT}`, `host\t${hostname}`, `path\t${env.PATH ?? DEFAULT_PATH}`, ...(isolated ? ['lo'] : []),
    ...etcBinds.map((l) => `etc\t${l}`), ...mounts.map((l) => `mount\t${l}`),
    ...(settings.readOnly ? ['ro'] : [])].join('\n');
  // (a logged command writes into real pipes: once a reader of strata's own output is gone, its next
  // write there gets SIGPIPE, as without strata between; node's stdio pipes are socketpairs)
  const pipes = output instanceof LogWriter ? [N.pipe(), N.pipe()] : null;
  const child = spawn(RUN_NS, [...(isolated ? ['--net'] : []), ...(settings.init ? ['--init'] : []), ...cgroups.flatMap((d) => ['--cgroup', d]), '--',
    RUN_EXEC, '--pivot', '--caps', capabilityMask(settings), ...rlimitArgs(settings),
    ...(settings.userns ? ['--uidmap', idMapArg(settings.userns.uidMap), '--gidmap', idMapArg(settings.userns.gidMap)] : []),
    rec.merged, wd, String(user.uid), String(user.gid), user.groups.join(','), ...argv], {
    stdio: output === undefined ? 'inherit' : typeof output === 'number' ? ['inherit', output, output]
      : [output.echo ? 'inherit' : 'ignore', pipes![0]![1], pipes![1]![1]],
    env: { ...env, STRATA_SETUP: spec },
    // (strata-run-ns stays in the new mount namespace: a working directory of strata's own there
    // would keep the host's mount it lies on alive once the old root is detached)
    cwd: '/',
  });
  // A signal to strata run goes to the command (pid 1 of the namespace: strata-run-ns itself blocks
  // SIGINT and SIGTERM while it waits). Like `docker stop`, a command that has not ended
  // STOP_GRACE_MS later, or at a second signal, is killed: SIGKILL to strata-run-ns, whose death
  // then kills pid 1 and with it the whole PID namespace.
  let killer: NodeJS.Timeout | null = null;
  const forward = (sig: NodeJS.Signals): void => {
    const init = child.pid ? childPids(child.pid)[0] : undefined;
    try {
      if (init) process.kill(init, sig);
    } catch {
      // already gone
    }
    if (killer) {
      child.kill('SIGKILL');
      return;
    }
    killer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  };
  for (const sig of STOP_SIGNALS) process.on(sig, forward);
  if (child.pid !== undefined) onStarted?.(child.pid);
  // (a logged command's output: a record a line in its log, each stream apart, see logs.ts; its status
  // is given once both pipes are read to their end, which is when its namespace is gone)
  const log = output instanceof LogWriter ? output : null;
  let reading = 0;
  let exited: number | null = null;
  let settle = (_status: number): void => {};
  const done = (): void => {
    if (exited === null || reading > 0) return;
    log?.close();
    settle(exited);
  };
  if (log) {
    for (const [i, stream] of [[0, 'stdout'], [1, 'stderr']] as const) {
      const [readFd, writeFd] = pipes![i]!;
      N.close(writeFd);
      const pipe = new Socket({ fd: readFd, readable: true, writable: false });
      reading++;
      pipe.on('data', (c: Buffer) => {
        if (!log.write(stream, c)) pipe.destroy();
      });
      pipe.on('error', () => pipe.destroy());
      pipe.on('close', () => {
        reading--;
        done();
      });
    }
  }
  return new Promise((resolve) => {
    settle = resolve;
    child.on('error', (e) => {
      process.stderr.write(`strata: cannot start ${RUN_NS}: ${e.message}\n`);
      exited = 127;
      done();
    });
    child.on('exit', (code, signal) => {
      for (const sig of STOP_SIGNALS) process.off(sig, forward);
      if (killer) clearTimeout(killer);
      exited = code ?? 128 + (signal ? (osSignals[signal] ?? 0) : 0);
      done();
    });
  });
}

/** `strata run`: returns the exit status to pass on. */
export async function runContainer(opts: RunOptions, open: <T>(fn: (s: Store) => Promise<T>) => Promise<T> = (fn) => withStore(opts.store, fn)): Promise<number> {
  for (const p of [RUN_EXEC, RUN_NS]) if (!existsSync(p)) throw new ImageError(`${p} is missing: run make build`, 125);
  // (one opening of the store for the container and its start: `open` may pull the image first)
  const { rec, claimed } = await open(async (s) => {
    const r = await newContainer(s, opts);
    return { rec: r, claimed: await claimStart(s, r) };
  });
  // (its output logged too, as docker's and podman's, unless it runs on this terminal: -t)
  return startContainer(opts.store, rec, { rm: opts.rm, removeIfRefused: true, claimed, ...(opts.tty ? {} : { log: logPath(rec), echo: true }) });
}

/**
 * `strata create` (and run's first step): a container record for the image, with the command line
 * it will run (Entrypoint + the given command or Cmd) and its user, both checked.
 */
export async function newContainer(s: Store, opts: Omit<RunOptions, 'store' | 'rm'>): Promise<ContainerRecord> {
  // (a missing image: exit status 125, as docker run and podman run give it)
  const image = await s.findImage(opts.image);
  if (!image) throw new ImageError(`no such image: ${opts.image}`, 125);
  const argv = containerArgv(image.config, opts.command, opts.entrypoint);
  const userSpec = opts.user ?? image.config.config?.User ?? '';
  parseUserSpec(userSpec);
  const { usernsAuto, ...given } = checkSettings(opts.settings ?? {});
  const settings: ContainerSettings = { ...given, mounts: containerMounts(given.mounts ?? [], image.config) };
  if (usernsAuto) {
    // (in the store's lock: no other container can take the same ids meanwhile)
    const others = (await s.listContainers()).map((c) => settingsOf(c).userns).filter((u) => u !== undefined);
    const size = usernsAuto.size;
    const uid = allocateIds(subordinateRanges('/etc/subuid', 'containers'), others.flatMap((u) => u.uidMap), size, '/etc/subuid');
    const gid = allocateIds(subordinateRanges('/etc/subgid', 'containers'), others.flatMap((u) => u.gidMap), size, '/etc/subgid');
    settings.userns = { uidMap: [[0, uid, size]], gidMap: [[0, gid, size]], auto: true };
  }
  // (named volumes are made with the container, as docker makes them)
  for (const m of settings.mounts!) if (m.type === 'volume' && !m.anonymous) ensureVolume(s.root, m.source!);
  // (its Entrypoint and Cmd apart, for a commit: docker's and podman's keep them in the new image)
  return s.createContainer({ image, imageRef: opts.image, name: opts.name, command: argv,
    extra: { ...(opts.user !== undefined ? { user: opts.user } : {}), settings, ...commandParts(image.config, opts.command, opts.entrypoint) } });
}

/**
 * The mounts of a container as strata-run-ns reads them (KIND TAB SOURCE TAB TARGET TAB OPTIONS), their mount points made inside its root (mounted
 * at rec.merged), shallowest first; volumes' directories made.
 */
function mountLines(store: string, rec: ContainerRecord, mounts: readonly MountSpec[], made?: string[]): string[] {
  const lines: string[] = [];
  const depth = (t: string): number => t.split('/').length;
  for (const m of [...mounts].sort((a, b) => depth(a.target) - depth(b.target))) {
    let src = '-';
    let file = false;
    if (m.type === 'bind') {
      let st;
      try {
        st = statSync(m.source!);
      } catch (e) {
        throw new ImageError(`the host path ${m.source!} of the mount on ${m.target} cannot be used: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 125);
      }
      file = !st.isDirectory();
      src = m.source!;
    } else if (m.type === 'volume') {
      src = volumeDir(store, rec, m);
      mkdirSync(src, { recursive: true, mode: 0o755 });
    }
    const opts = m.type === 'tmpfs' ? [m.tmpfsOptions ?? '', m.readonly ? 'ro' : ''].filter(Boolean).join(',') : m.readonly ? 'ro' : '';
    lines.push([m.type, src, mountPointIn(rec.merged, m.target, file, made), opts || '-'].join('\t'));
  }
  return lines;
}

export interface StartOptions {
  /** Remove the container when its command ends (run --rm). */
  rm?: boolean;
  /** Remove it if its user cannot be resolved, before anything ran (run: as if it had never been made). */
  removeIfRefused?: boolean;
  /** Called once the command runs (the container is then recorded as running). */
  onRunning?: () => void;
  /** Called with the mounted root before the mounts are made and the command runs (a build's WORKDIR). */
  prepare?: (merged: string) => void;
  /** Gets the mount points the start made in the container (relative to its root, parents first). */
  madeMountPoints?: string[];
  /** What claimStart gave, when the caller had the store open already (run). */
  claimed?: { config: ImageConfig; lowerdirs: string[] };
  /** A descriptor for the command's stdout and stderr (build -q), instead of strata's own. */
  outputFd?: number;
  /** The container's log: its output goes there as records (logs.ts), and with `echo` on to strata's own stdout and stderr too. */
  log?: string;
  echo?: boolean;
  /** false: no health check (a build's RUN). */
  healthcheck?: boolean;
}

/**
 * A start's first step, with the store open: the container's config and layer directories; the
 * container recorded as starting, with this process as its monitor.
 */
export async function claimStart(s: Store, rec: ContainerRecord): Promise<{ config: ImageConfig; lowerdirs: string[] }> {
  // (a build's container carries the config of the step it runs: no image record for it)
  const image = rec.config !== undefined ? { config: rec.config as ImageConfig } : await s.findImage(rec.image);
  if (!image) throw new ImageError(`the image of container ${rec.name} is gone from the store`, 125);
  if (rec.state === 'running' && rec.monitorPid !== undefined && processAlive(rec.monitorPid as number)) {
    throw new ImageError(`container ${rec.name} is already running`, 125);
  }
  await s.updateContainer(rec.id, { state: 'starting', monitorPid: process.pid, stopRequested: false, paused: false });
  return { config: image.config, lowerdirs: rec.layers.map((l) => s.layerDir(l)).reverse() };
}

/**
 * Runs a created or exited container's command in the foreground (`strata run`, `strata start -a`,
 * and the monitor process of a detached `strata start`): mounts it, records it as running (with
 * this process and its namespaces' unshare as monitor), waits for the command, then unmounts and
 * records the exit status. Returns the exit status.
 */
export async function startContainer(store: string, rec: ContainerRecord, opts: StartOptions = {}): Promise<number> {
  if (!existsSync(RUN_EXEC)) throw new ImageError(`${RUN_EXEC} is missing: run make build`, 125);
  const { config, lowerdirs } = opts.claimed ?? await withStore(store, (s) => claimStart(s, rec));
  const userSpec = (rec.user as string | undefined) ?? config.config?.User ?? '';
  const argv = rec.command ?? containerArgv(config, []);
  const settings = settingsOf(rec);
  const hostname = (settings.hostname ?? rec.name).slice(0, 63);
  let status = 125;
  let stubs: EtcStubs | null = null;
  let logFd: number | null = null;
  let cgroups: string[] = [];
  // Nothing ran: the user could not be resolved.
  let refused = false;
  // A stop signal before the command runs (while mounting): do not start it, clean up.
  let stopped = false;
  const early = (): void => {
    stopped = true;
  };
  for (const sig of STOP_SIGNALS) process.on(sig, early);
  try {
    // (a monitor that was killed left its mount behind)
    if (rec.state === 'running' || rec.state === 'starting') await unmountIfMounted(rec.merged);
    // (with --uidmap, the mount shows the container's ids as the host's that its user namespace maps them to)
    mountLayers({ lowerdirs, upper: rec.upper, work: rec.work, mountpoint: rec.merged, ...(settings.userns ? { idMap: settings.userns } : {}) });
    let user: ExecUser;
    try {
      user = containerUser(rec.merged, userSpec, settings.groupAdd);
    } catch (e) {
      refused = true;
      throw e;
    }
    const files = etcFiles(rec, hostname, settings);
    const prepared = prepareEtcFiles(rec.merged, rec.upper, [...files.keys()]);
    stubs = prepared.stubs;
    const etcBinds = prepared.bindable.map((name) => `${files.get(name)!}\t${name}`);
    const wd = settings.workdir ?? (config.config?.WorkingDir || '/');
    opts.prepare?.(rec.merged);
    const mounts = mountLines(store, rec, settings.mounts ?? [], opts.madeMountPoints);
    // (a control group of its own, with --memory, --cpus, --pids-limit, ...; removed at the end)
    cgroups = createCgroup(rec.id, settings.resources);
    for (const sig of STOP_SIGNALS) process.off(sig, early);
    if (stopped) {
      status = 130;
    } else {
      let recorded: Promise<unknown> = Promise.resolve();
      const env = containerEnv(config, hostname, user.home, settings.env);
      // (a build's RUN: its build arguments, in the environment only)
      for (const kv of (rec.env as string[] | undefined) ?? []) {
        const i = kv.indexOf('=');
        if (i > 0 && !(config.config?.Env ?? []).some((e) => e.startsWith(`${kv.slice(0, i)}=`))) env[kv.slice(0, i)] = kv.slice(i + 1);
      }
      const policy = settings.restart;
      let restarts = 0;
      if (opts.log !== undefined) logFd = openSync(opts.log, 'a', 0o640);
      const logWriter = logFd !== null ? new LogWriter(logFd, opts.echo === true) : undefined;
      // (a stop signal to this process ends the restarts too, as a stop does)
      let signalled = false;
      const noted = (): void => void (signalled = true);
      for (const sig of STOP_SIGNALS) process.on(sig, noted);
      try {
        for (;;) {
          let stopHealth = (): void => {};
          status = await runInNamespaces(rec, argv, env, wd, etcBinds, user, hostname, mounts, settings, cgroups, (unsharePid) => {
            recorded = withStore(store, (s) => s.updateContainer(rec.id, { state: 'running', unsharePid, started: new Date().toISOString(), restartCount: restarts }))
              .then(() => {
                // (the health check runs while the command does: HEALTHCHECK, --health-*; none in a build)
                if (opts.healthcheck !== false) stopHealth = monitorHealth(store, config, { ...rec, state: 'running', monitorPid: process.pid, unsharePid });
                return restarts === 0 ? opts.onRunning?.() : undefined;
              }, (e: unknown) => process.stderr.write(`strata: cannot record the container as running: ${(e as Error).message}\n`));
          }, logWriter ?? opts.outputFd);
          await recorded;
          stopHealth();
          // --restart: again, unless it was stopped or killed (strata stop, kill), as docker's policies
          if (!policy || policy.name === 'no' || signalled) break;
          if (policy.name === 'on-failure' && (status === 0 || (policy.max !== undefined && restarts >= policy.max))) break;
          const stopRequested = async (): Promise<boolean> =>
            (await withStore(store, (s) => s.findContainer(rec.id)))?.stopRequested !== false;
          if (await stopRequested()) break;
          restarts++;
          // (docker's back-off: 100 ms, doubled each time)
          await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** (restarts - 1), 10_000)));
          if (signalled || (await stopRequested())) break;
        }
      } finally {
        for (const sig of STOP_SIGNALS) process.off(sig, noted);
      }
    }
  } finally {
    for (const sig of STOP_SIGNALS) process.off(sig, early);
    if (logFd !== null) closeSync(logFd);
    await finishRun(store, rec, status, stubs, (opts.rm ?? false) || (settings.autoRemove ?? false) || (refused && (opts.removeIfRefused ?? false)), cgroups);
  }
  return status;
}

async function finishRun(store: string, rec: ContainerRecord, status: number, stubs: EtcStubs | null, remove: boolean, cgroups: readonly string[]): Promise<void> {
  try {
    await unmountIfMounted(rec.merged);
  } catch (e) {
    process.stderr.write(`strata: cannot unmount ${rec.merged}: ${(e as Error).message}\n`);
  }
  if (stubs) removeEtcStubs(rec.upper, stubs);
  // (docker's State.OOMKilled: the kernel killed a process of the container for want of memory)
  const oom = oomKilled(cgroups);
  await removeCgroup(cgroups);
  await withStore(store, async (s) => {
    if (remove) await s.removeContainer(rec.id, { exitCode: status });
    else await s.updateContainer(rec.id, { state: 'exited', exitCode: status, finished: new Date().toISOString(), monitorPid: undefined, unsharePid: undefined, paused: false, oomKilled: oom });
  });
}
