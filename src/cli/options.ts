// What the command modules share: common options, output, and the one-line failure of a command.

export const storeOption = { type: 'string', describe: 'the store directory (default $STRATA_STORE or /var/lib/strata)' } as const;

/** docker's -i and -t: the command gets strata's own standard input anyway; -t gives it strata's terminal too. */
export const TERMINAL_OPTIONS = {
  interactive: { alias: 'i', type: 'boolean', default: false, describe: 'accepted for docker compatibility: the command always gets strata\'s stdin' },
  tty: { alias: 't', type: 'boolean', default: false, describe: 'the command runs on strata\'s own terminal (its output is then not logged); '
    + 'without it, its stdout and stderr are pipes through strata, into the container\'s log too, as docker\'s' },
} as const;

/** What `run` and `create` take besides the image and the command (src/image/settings.ts). */
export const CONTAINER_CONFIG_OPTIONS = {
  rm: { type: 'boolean', default: false, describe: 'remove the container when its command ends (with -d too)' },
  env: { alias: 'e', type: 'string', describe: 'KEY=VALUE in the command\'s environment, over the image\'s (repeatable; KEY alone: the host\'s value)' },
  'env-file': { type: 'string', describe: 'a file of KEY=VALUE lines for the environment (repeatable; # comments)' },
  workdir: { alias: 'w', type: 'string', describe: 'the working directory in the container, instead of the image\'s WorkingDir (made if missing)' },
  entrypoint: { type: 'string', describe: 'instead of the image\'s Entrypoint (drops its Cmd): a program, a JSON array, or "" for none' },
  hostname: { type: 'string', describe: 'the container\'s host name (default: its name)' },
  volume: { alias: 'v', type: 'string', describe: 'HOST-PATH:PATH[:ro], NAME:PATH[:ro] (a named volume) or PATH (an anonymous one); repeatable' },
  mount: { type: 'string', describe: 'type=bind|volume|tmpfs,source=...,target=...[,readonly] (repeatable)' },
  tmpfs: { type: 'string', describe: 'PATH[:OPTIONS]: a tmpfs there (size=, mode=, ...; repeatable)' },
  network: { alias: 'net', type: 'string', describe: 'host (the default: the host\'s network) or none (only a loopback of its own)' },
  'read-only': { type: 'boolean', default: false, describe: 'mount the container\'s root read-only for the command (volumes and tmpfs stay writable)' },
  privileged: { type: 'boolean', default: false, describe: 'every capability (default: docker\'s set of 14)' },
  'cap-add': { type: 'string', describe: 'a capability to add to the default set (CAP_X or X; ALL; repeatable, or comma-separated)' },
  publish: { alias: 'p', type: 'string', describe: 'accepted, with a warning: containers use the host\'s network, so their ports are the host\'s' },
  restart: { type: 'string', describe: 'no (default), always, unless-stopped, on-failure[:N]: its monitor starts the command again when it ends (not after stop or kill)' },
  'add-host': { type: 'string', describe: 'NAME:IP for the container\'s /etc/hosts (repeatable)' },
  'cap-drop': { type: 'string', describe: 'a capability to drop from the default set (ALL: every one; repeatable, or comma-separated)' },
  'health-cmd': { type: 'string', describe: 'the health check, run by /bin/sh -c in the container (over the image\'s HEALTHCHECK)' },
  'health-interval': { type: 'string', describe: 'time between health checks (Go duration: 30s, 1m30s; default 30s)' },
  'health-timeout': { type: 'string', describe: 'a health check that runs longer fails (default 30s)' },
  'health-retries': { type: 'string', describe: 'failures in a row that make the container unhealthy (default 3)' },
  'health-start-period': { type: 'string', describe: 'time after the start in which failures do not count (default 0s)' },
  'health-start-interval': { type: 'string', describe: 'time between health checks in the start period (default 5s)' },
  dns: { type: 'string', describe: 'a name server for the container\'s resolv.conf, instead of the host\'s (repeatable)' },
  'dns-search': { type: 'string', describe: 'a search domain instead of the host\'s ("." for none; repeatable)' },
  'dns-option': { type: 'string', describe: 'a resolv.conf option instead of the host\'s (ndots:2, ...; repeatable)' },
  init: { type: 'boolean', default: false, describe: 'pid 1 is a small init (signals passed on, orphans reaped), the command its child' },
  ulimit: { type: 'string', describe: 'NAME=SOFT[:HARD]: a resource limit of the command (nofile, nproc, core, stack, ...; -1: unlimited; repeatable)' },
  'shm-size': { type: 'string', describe: 'the size of the container\'s /dev/shm (bytes, or with a unit: 128m, 1g; default 64m)' },
  memory: { alias: 'm', type: 'string', describe: 'a memory limit (bytes, or with a unit: 512m, 1g; at least 6m): past it, the kernel reclaims, then kills (exit 137, OOMKilled)' },
  'memory-swap': { type: 'string', describe: 'memory and swap together (-1: unlimited swap; default twice --memory)' },
  cpus: { type: 'string', describe: 'CPUs the container may use in all (1.5: one and a half; a CFS quota)' },
  'cpu-shares': { type: 'string', describe: 'a relative CPU weight against other groups (default 1024)' },
  'pids-limit': { type: 'string', describe: 'processes and threads at most (-1: no limit)' },
  'group-add': { type: 'string', describe: 'a supplementary group for the command (a name in the container\'s /etc/group, or a GID; repeatable)' },
  uidmap: { type: 'string', describe: 'CONTAINER:HOST:COUNT: run in a user namespace with these container uids on these host uids (repeatable; podman\'s)' },
  gidmap: { type: 'string', describe: 'CONTAINER:HOST:COUNT for the gids (default: as --uidmap; repeatable)' },
  userns: { type: 'string', describe: 'host (the default), or auto[:size=N]: a user namespace with ids of /etc/subuid\'s "containers" no other container has' },
  'stop-signal': { type: 'string', describe: 'the signal stop sends first (over the image\'s STOPSIGNAL; default SIGTERM)' },
  'stop-timeout': { type: 'string', describe: 'seconds stop waits before SIGKILL when not given -t (default 10)' },
  label: { alias: 'l', type: 'string', describe: 'KEY=VALUE (or KEY) among the container\'s labels, over the image\'s (repeatable)' },
  'label-file': { type: 'string', describe: 'a file of KEY=VALUE label lines (repeatable; # comments)' },
  healthcheck: { type: 'boolean', default: true, describe: 'run the health check (--no-healthcheck: none, whatever the image says)' },
} as const;

type Many = string | string[] | undefined;
export interface ContainerConfigArgs {
  rm?: boolean;
  env?: Many;
  envFile?: Many;
  workdir?: Many;
  entrypoint?: Many;
  hostname?: Many;
  volume?: Many;
  mount?: Many;
  tmpfs?: Many;
  network?: Many;
  readOnly?: boolean;
  privileged?: boolean;
  capAdd?: Many;
  capDrop?: Many;
  addHost?: Many;
  publish?: Many;
  restart?: Many;
  label?: Many;
  labelFile?: Many;
  stopSignal?: Many;
  stopTimeout?: Many;
  groupAdd?: Many;
  uidmap?: Many;
  gidmap?: Many;
  userns?: Many;
  shmSize?: Many;
  memory?: Many;
  memorySwap?: Many;
  cpus?: Many;
  cpuShares?: Many;
  pidsLimit?: Many;
  ulimit?: Many;
  init?: boolean;
  dns?: Many;
  dnsSearch?: Many;
  dnsOption?: Many;
  healthCmd?: Many;
  healthInterval?: Many;
  healthTimeout?: Many;
  healthRetries?: Many;
  healthStartPeriod?: Many;
  healthStartInterval?: Many;
  healthcheck?: boolean;
}

/** --filter KEY=VALUE flags (docker's ps and images), each [KEY, VALUE]; a KEY not in `keys` is refused. */
export async function parseFilterFlags(v: Many, keys: readonly string[]): Promise<[string, string][]> {
  const { ImageError } = await import('../image/types.js');
  return many(v).map((f) => {
    const i = f.indexOf('=');
    if (i <= 0 || !keys.includes(f.slice(0, i))) {
      throw new ImageError(`--filter ${f}: expected ${keys.slice(0, -1).map((k) => `${k}=`).join(', ')} or ${keys.at(-1)}=`, 125);
    }
    return [f.slice(0, i), f.slice(i + 1)];
  });
}

/** A repeatable option's values; a single-valued one's last (given twice, the last counts, as with docker). */
export const many = (v: Many): string[] => ([] as string[]).concat(v ?? []);
export const last = (v: Many): string | undefined => (Array.isArray(v) ? v.at(-1) : v);

/** The settings and entrypoint of a new container from CONTAINER_CONFIG_OPTIONS (checked). */
export async function containerConfigOf(a: ContainerConfigArgs): Promise<{ settings: import('../image/settings.js').ContainerSettings; entrypoint?: string[] }> {
  const S = await import('../image/settings.js');
  const mounts = [...many(a.volume).map(S.parseVolumeFlag), ...many(a.mount).map(S.parseMountFlag), ...many(a.tmpfs).map(S.parseTmpfsFlag)];
  const env = S.parseEnvFlags(many(a.env), many(a.envFile));
  const workdir = last(a.workdir);
  const hostname = last(a.hostname);
  const entry = last(a.entrypoint);
  const network = last(a.network);
  const caps = (v: Many, flag: string): string[] => many(v).flatMap((x) => x.split(',')).filter(Boolean).map((x) => S.parseCap(x, flag));
  const capAdd = caps(a.capAdd, '--cap-add');
  const capDrop = caps(a.capDrop, '--cap-drop');
  const addHosts = many(a.addHost).map(S.parseAddHost);
  const restartFlag = last(a.restart);
  const restart = restartFlag !== undefined ? S.parseRestart(restartFlag) : undefined;
  const healthcheck = S.parseHealthFlags({ cmd: last(a.healthCmd), interval: last(a.healthInterval), timeout: last(a.healthTimeout),
    retries: last(a.healthRetries), startPeriod: last(a.healthStartPeriod), startInterval: last(a.healthStartInterval), none: a.healthcheck === false ? true : undefined });
  const labels = S.parseLabelFlags(many(a.label), many(a.labelFile));
  const userns = S.parseIdMaps(many(a.uidmap), many(a.gidmap));
  const usernsFlag = last(a.userns);
  const usernsAuto = usernsFlag !== undefined ? S.parseUsernsFlag(usernsFlag) : null;
  if (usernsAuto && userns) throw new (await import('../image/types.js')).ImageError('--userns=auto and --uidmap/--gidmap do not go together', 125);
  const stopSignalFlag = last(a.stopSignal);
  const stopSignal = stopSignalFlag !== undefined ? (await import('../image/lifecycle.js')).normalizeSignal(stopSignalFlag) : undefined;
  const shmSizeFlag = last(a.shmSize);
  const shmSize = shmSizeFlag !== undefined ? S.parseShmSize(shmSizeFlag) : undefined;
  const resources = S.parseResources({ memory: last(a.memory), memorySwap: last(a.memorySwap), cpus: last(a.cpus), cpuShares: last(a.cpuShares),
    pidsLimit: last(a.pidsLimit) }, (await import('node:os')).availableParallelism());
  const stopTimeoutFlag = last(a.stopTimeout);
  if (stopTimeoutFlag !== undefined && !/^[0-9]+$/.test(stopTimeoutFlag)) {
    throw new (await import('../image/types.js')).ImageError(`--stop-timeout ${stopTimeoutFlag}: expected whole seconds`, 125);
  }
  if (restart && restart.name !== 'no' && a.rm) throw new (await import('../image/types.js')).ImageError('--restart and --rm do not go together', 125);
  if (many(a.publish).length > 0) {
    // (as podman with --network host: nothing to publish)
    if (network === 'none') throw new (await import('../image/types.js')).ImageError('-p needs a network: not with --network none', 125);
    process.stderr.write('strata: WARNING: -p is ignored: containers use the host\'s network, a port the command listens on is the host\'s\n');
  }
  return {
    settings: {
      ...(env.length > 0 ? { env } : {}), ...(workdir !== undefined ? { workdir } : {}), ...(hostname !== undefined ? { hostname } : {}),
      ...(mounts.length > 0 ? { mounts } : {}), ...(a.rm ? { autoRemove: true } : {}),
      ...(network !== undefined && S.parseNetwork(network) === 'none' ? { network: 'none' as const } : {}), ...(a.readOnly ? { readOnly: true } : {}),
      ...(a.privileged ? { privileged: true } : {}), ...(capAdd.length > 0 ? { capAdd } : {}), ...(capDrop.length > 0 ? { capDrop } : {}),
      ...(addHosts.length > 0 ? { addHosts } : {}), ...(restart && restart.name !== 'no' ? { restart } : {}),
      ...(healthcheck ? { healthcheck } : {}), ...(Object.keys(labels).length > 0 ? { labels } : {}),
      ...(a.init ? { init: true } : {}),
      ...(many(a.dns).length > 0 ? { dns: many(a.dns).map(S.parseDns) } : {}),
      ...(many(a.dnsSearch).length > 0 ? { dnsSearch: many(a.dnsSearch) } : {}),
      ...(many(a.dnsOption).length > 0 ? { dnsOptions: many(a.dnsOption) } : {}),
      ...(many(a.ulimit).length > 0 ? { ulimits: many(a.ulimit).map(S.parseUlimit) } : {}),
      ...(many(a.groupAdd).length > 0 ? { groupAdd: many(a.groupAdd).flatMap((g) => g.split(',')).filter(Boolean) } : {}),
      ...(shmSize !== undefined ? { shmSize } : {}), ...(resources ? { resources } : {}), ...(userns ? { userns } : {}),
      ...(usernsAuto ? { usernsAuto } : {}),
      ...(stopSignal !== undefined ? { stopSignal } : {}), ...(stopTimeoutFlag !== undefined ? { stopTimeout: Number(stopTimeoutFlag) } : {}),
    },
    ...(entry !== undefined ? { entrypoint: S.parseEntrypoint(entry) } : {}),
  };
}

/** Rows as docker's tables: each column as wide as its widest cell, three spaces between columns. */
export function columns(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd()).join('\n');
}

export function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** Ends the process with the error's first line on stderr, and its exitCode (ImageError's), else 1. */
export function failWith(e: unknown): never {
  const err = e as { message?: string; exitCode?: unknown };
  process.stderr.write(`strata: ${(err.message ?? String(e)).split('\n')[0]}\n`);
  process.exit(typeof err.exitCode === 'number' ? err.exitCode : 1);
}

/** A command handler whose errors end the process with one line (failWith). */
export function guarded<A>(fn: (a: A) => Promise<void>): (a: A) => Promise<void> {
  return async (a: A) => {
    try {
      await fn(a);
    } catch (e) {
      failWith(e);
    }
  };
}

/** The store directory of a command: --store, else $STRATA_STORE, else /var/lib/strata. */
export async function storeDirOf(a: { store?: string }): Promise<string> {
  return (await import('../image/store.js')).storeDir(a.store);
}
