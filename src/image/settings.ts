// What `strata run` and `strata create` take besides the image and the command, as docker and
// podman take it: environment (-e, --env-file), working directory (-w), entrypoint, hostname,
// auto-removal (--rm), and mounts: bind mounts of host paths, volumes (named ones in the store's
// volumes/, anonymous ones in the container's own directory) and tmpfs (-v, --mount, --tmpfs).
// Parsed and checked when the container is created; recorded with it; applied at each start
// (run.ts: mount points resolved inside the container root, mounts made in its mount namespace).

import { randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, posix } from 'node:path';
import type { Resources } from './cgroups.js';
import type { ContainerRecord } from './store.js';
import { ImageError, type ImageConfig } from './types.js';

export interface MountSpec {
  type: 'bind' | 'volume' | 'tmpfs';
  /** bind: the host path; volume: its name (absent in the CLI's spec of an anonymous volume). */
  source?: string;
  /** Absolute, as the container sees it. */
  target: string;
  readonly: boolean;
  /** An anonymous volume: it lives and goes with its container. */
  anonymous?: boolean;
  /** tmpfs: size= and mode= (validated). */
  tmpfsOptions?: string;
}

/** The settings recorded with a container (ContainerRecord.settings). */
export interface ContainerSettings {
  /** KEY=VALUE over the image's Env (-e, --env-file). */
  env?: string[];
  workdir?: string;
  hostname?: string;
  mounts?: MountSpec[];
  /** --rm: removed when its command ends (also when started in the background). */
  autoRemove?: boolean;
  /** --network: the host's (default), or none (a namespace of its own with only a loopback). */
  network?: 'host' | 'none';
  /** --read-only: the root file system is mounted read-only for the command (mounts keep theirs). */
  readOnly?: boolean;
  /** --privileged: every capability; else docker's default set with --cap-add and --cap-drop. */
  privileged?: boolean;
  capAdd?: string[];
  capDrop?: string[];
  /** --add-host: NAME:IP lines for the container's /etc/hosts. */
  addHosts?: string[];
  /** --restart: started again by its monitor when its command ends (not after a stop or kill). */
  restart?: RestartPolicy;
  /** --health-* and --no-healthcheck: over the image's Healthcheck, field by field (src/image/health.ts). */
  healthcheck?: HealthConfig;
  /** --label, --label-file: the container's labels, over the image's. */
  labels?: Record<string, string>;
  /** --dns, --dns-search, --dns-option: the container's resolv.conf has these instead of the host's of each kind. */
  dns?: string[];
  dnsSearch?: string[];
  dnsOptions?: string[];
  /** --init: pid 1 is a small init that passes signals on and reaps orphans; the command its child. */
  init?: boolean;
  /** --ulimit NAME=SOFT[:HARD]: resource limits of the command (-1: unlimited). */
  ulimits?: { name: string; soft: number; hard: number }[];
  /** --group-add: more supplementary groups (names in the container's /etc/group, or GIDs). */
  groupAdd?: string[];
  /**
   * --uidmap, --gidmap: the command runs in a user namespace of its own with these maps
   * ([container, host, count] ranges), its root mounted with the same owner mapping.
   */
  userns?: { uidMap: IdRange[]; gidMap: IdRange[]; auto?: boolean };
  /** --userns=auto[:size=N], until the container is made (then `userns`, with ranges of its own: allocateUserns). */
  usernsAuto?: { size: number };
  /** --stop-signal (over the image's StopSignal) and --stop-timeout (seconds; stop's default -t). */
  stopSignal?: string;
  stopTimeout?: number;
  /** --shm-size: bytes of the container's /dev/shm (default SHM_SIZE_DEFAULT). */
  shmSize?: number;
  /** --memory, --memory-swap, --cpus, --cpu-shares, --pids-limit: the container's control group (cgroups.ts). */
  resources?: Resources;
}

/** The size of a container's /dev/shm without --shm-size: docker's and podman's 64 MiB. */
export const SHM_SIZE_DEFAULT = 64 * 1024 * 1024;

/**
 * --shm-size as docker reads it (go-units' RAMInBytes): a number of bytes, or with a unit k, m, g, t
 * or p (powers of 1024; an "i" and a "b" may follow, "512MiB", "1gb"). Docker's 0 means its default.
 */
export function parseShmSize(v: string): number {
  const n = ramInBytes('--shm-size', v);
  return n === 0 ? SHM_SIZE_DEFAULT : n;
}

/** go-units' RAMInBytes (see parseShmSize), for `flag`. */
function ramInBytes(flag: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$/.exec(v);
  if (!m) bad(`${flag} ${v}: expected a size in bytes, or with a unit (64m, 1g)`);
  const n = Math.floor(Number(m[1]) * 1024 ** (m[2] ? 'kmgtp'.indexOf(m[2].toLowerCase()) + 1 : 0));
  if (!Number.isSafeInteger(n)) bad(`${flag} ${v}: too large`);
  return n;
}

/**
 * --memory, --memory-swap, --cpus, --cpu-shares and --pids-limit, checked as docker checks them: a
 * memory limit of 6 MiB at least; a swap limit (memory and swap together; -1: unlimited) only with
 * a memory limit and not below it, twice the memory when not given; from 0.01 CPUs to as many as
 * the host has; shares of 2 or more; a process limit above 0 (0 or -1: none).
 */
export function parseResources(f: { memory?: string; memorySwap?: string; cpus?: string; cpuShares?: string; pidsLimit?: string }, hostCpus: number): Resources | undefined {
  const r: Resources = {};
  if (f.memory !== undefined) {
    const memory = ramInBytes('--memory', f.memory);
    if (memory > 0) {
      if (memory < 6 * 1024 * 1024) bad(`--memory ${f.memory}: the minimum memory limit is 6MB`);
      r.memory = memory;
    }
  }
  if (f.memorySwap !== undefined) {
    const swap = f.memorySwap === '-1' ? -1 : ramInBytes('--memory-swap', f.memorySwap);
    if (r.memory === undefined && swap !== 0) bad('--memory-swap needs --memory: set the memory limit too');
    if (swap > 0 && swap < r.memory!) bad(`--memory-swap ${f.memorySwap}: below the memory limit (it is memory and swap together)`);
    if (swap !== 0) r.memorySwap = swap;
  }
  if (r.memory !== undefined && r.memorySwap === undefined) r.memorySwap = 2 * r.memory;
  if (f.cpus !== undefined) {
    const cpus = Number(f.cpus);
    if (!/^\d*\.?\d+$/.test(f.cpus) || !Number.isFinite(cpus)) bad(`--cpus ${f.cpus}: expected a number of CPUs (1.5)`);
    if (cpus > 0) {
      if (cpus < 0.01 || cpus > hostCpus) bad(`--cpus ${f.cpus}: the range of CPUs is from 0.01 to ${hostCpus.toFixed(2)}, as there are only ${hostCpus} CPUs available`);
      r.nanoCpus = Math.round(cpus * 1e9);
    }
  }
  if (f.cpuShares !== undefined) {
    if (!/^\d+$/.test(f.cpuShares)) bad(`--cpu-shares ${f.cpuShares}: expected a whole number`);
    const shares = Number(f.cpuShares);
    if (shares > 0) r.cpuShares = Math.min(262144, Math.max(2, shares));
  }
  if (f.pidsLimit !== undefined) {
    if (!/^-?\d+$/.test(f.pidsLimit)) bad(`--pids-limit ${f.pidsLimit}: expected a whole number (-1: no limit)`);
    if (Number(f.pidsLimit) > 0) r.pidsLimit = Number(f.pidsLimit);
  }
  return Object.keys(r).length > 0 ? r : undefined;
}

/** Docker's config.Healthcheck: Test (["NONE"], ["CMD", ...] or ["CMD-SHELL", "..."]), durations in ns. */
export interface HealthConfig {
  Test?: string[];
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  StartInterval?: number;
  Retries?: number;
}

/** A Go duration ("30s", "1m30s", "500ms", "1h") in nanoseconds; `what` names it in the error. */
export function durationNs(v: string, what: string, exitCode = 125): number {
  const units: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };
  const parts = [...v.matchAll(/([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== v) throw new ImageError(`${what}: bad duration "${v}"`, exitCode);
  return Math.round(parts.reduce((n, p) => n + Number(p[1]) * units[p[2]!]!, 0));
}

/** run's and create's --health-cmd, --health-interval ... and --no-healthcheck, as docker takes them. */
export function parseHealthFlags(f: { cmd?: string; interval?: string; timeout?: string; startPeriod?: string; startInterval?: string; retries?: string;
  none?: boolean }): HealthConfig | undefined {
  const h: HealthConfig = {};
  if (f.none) {
    if (Object.entries(f).some(([k, v]) => k !== 'none' && v !== undefined)) bad('--no-healthcheck conflicts with --health-* options');
    return { Test: ['NONE'] };
  }
  if (f.cmd !== undefined) h.Test = ['CMD-SHELL', f.cmd];
  const durations: [keyof HealthConfig, string | undefined, string][] = [['Interval', f.interval, '--health-interval'], ['Timeout', f.timeout, '--health-timeout'],
    ['StartPeriod', f.startPeriod, '--health-start-period'], ['StartInterval', f.startInterval, '--health-start-interval']];
  for (const [key, v, flag] of durations) if (v !== undefined) (h as Record<string, unknown>)[key] = durationNs(v, flag);
  if (f.retries !== undefined) {
    if (!/^[0-9]+$/.test(f.retries)) bad(`--health-retries ${f.retries}: expected a number`);
    h.Retries = Number(f.retries);
  }
  return Object.keys(h).length > 0 ? h : undefined;
}

export interface RestartPolicy {
  name: 'no' | 'always' | 'on-failure' | 'unless-stopped';
  /** on-failure:N: at most N restarts. */
  max?: number;
}

/** --restart no|always|unless-stopped|on-failure[:N]. */
export function parseRestart(value: string): RestartPolicy {
  const m = /^(no|always|unless-stopped|on-failure)(?::([0-9]+))?$/.exec(value);
  if (!m || (m[2] !== undefined && m[1] !== 'on-failure')) bad(`--restart ${value}: expected no, always, unless-stopped or on-failure[:N]`);
  return { name: m![1] as RestartPolicy['name'], ...(m![2] !== undefined ? { max: Number(m![2]) } : {}) };
}

/** --add-host NAME:IP (IPv4 or IPv6; NAME=IP too, as docker 25 takes it). */
export function parseAddHost(value: string): string {
  const m = /^([A-Za-z0-9][A-Za-z0-9.-]*)[:=](.+)$/.exec(value);
  if (!m || isIP(m[2]!.replace(/^\[|\]$/g, '')) === 0) bad(`--add-host ${value}: expected NAME:IP`);
  return `${m![1]}:${m![2]!.replace(/^\[|\]$/g, '')}`;
}

/** Capability numbers (linux/capability.h). */
const CAPS: readonly string[] = ['CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER', 'SYS_MODULE', 'SYS_RAWIO',
  'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD',
  'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP', 'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ',
  'PERFMON', 'BPF', 'CHECKPOINT_RESTORE'];

/** What docker gives a container (moby's oci/caps/defaults.go). */
const DEFAULT_CAPS = ['CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'MKNOD', 'NET_RAW', 'SETGID', 'SETUID', 'SETFCAP', 'SETPCAP',
  'NET_BIND_SERVICE', 'SYS_CHROOT', 'KILL', 'AUDIT_WRITE'];

/** A capability name as docker takes it (CAP_X or X, any case; ALL), normalized; refused if unknown. */
export function parseCap(name: string, flag: string): string {
  const n = name.toUpperCase().replace(/^CAP_/, '');
  if (n !== 'ALL' && !CAPS.includes(n)) bad(`${flag} ${name}: unknown capability`);
  return n;
}

/** The bounding set a container's command gets, as a mask for strata-run-exec --caps (hexadecimal). */
export function capabilityMask(settings: ContainerSettings): string {
  if (settings.privileged) return 'ffffffffffffffff';
  const adds = settings.capAdd ?? [];
  const drops = settings.capDrop ?? [];
  // (as docker: --cap-add ALL, then the drops; --cap-drop ALL, then the adds; else the default, less the drops, plus the adds)
  let keep: Set<string>;
  if (adds.includes('ALL')) {
    keep = new Set(CAPS);
    for (const d of drops) keep.delete(d);
  } else {
    keep = new Set(drops.includes('ALL') ? [] : DEFAULT_CAPS);
    for (const d of drops) keep.delete(d);
    for (const a of adds) keep.add(a);
  }
  let mask = 0n;
  for (const c of keep) mask |= 1n << BigInt(CAPS.indexOf(c));
  return mask.toString(16);
}

/** The settings of a container record (none for older records). */
export function settingsOf(rec: ContainerRecord): ContainerSettings {
  return (rec.settings as ContainerSettings | undefined) ?? {};
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

function bad(message: string): never {
  throw new ImageError(message, 125);
}

function checkTarget(target: string, what: string): string {
  if (!target.startsWith('/')) bad(`${what}: the path in the container must be absolute: "${target}"`);
  if (/[\n\t\0]/.test(target)) bad(`${what}: the path in the container has a tab or newline`);
  const t = posix.normalize(target).replace(/(.)\/$/, '$1');
  if (t === '/') bad(`${what}: cannot mount over the container's root`);
  return t;
}

function checkSource(source: string, what: string): string {
  if (/[\n\t\0]/.test(source)) bad(`${what}: the host path has a tab or newline`);
  try {
    statSync(source);
  } catch (e) {
    bad(`${what}: the host path ${source} cannot be used: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return posix.normalize(source);
}

/** `-v SRC:DST[:OPTS]`, `-v NAME:DST[:OPTS]`, `-v DST` (anonymous volume). OPTS: ro, rw, z, Z. */
export function parseVolumeFlag(spec: string): MountSpec {
  const what = `-v ${spec}`;
  const parts = spec.split(':');
  if (parts.length > 3 || parts.some((p) => p === '')) bad(`${what}: expected SOURCE:DESTINATION[:OPTIONS] or DESTINATION`);
  let readonly = false;
  if (parts.length === 3) {
    for (const o of parts[2]!.split(',')) {
      if (o === 'ro') readonly = true;
      else if (o === 'rw') readonly = false;
      else if (o !== 'z' && o !== 'Z') bad(`${what}: unsupported option "${o}" (ro, rw, z, Z)`);
    }
  }
  if (parts.length === 1) return { type: 'volume', target: checkTarget(parts[0]!, what), readonly: false, anonymous: true };
  const [src, dst] = [parts[0]!, parts[1]!];
  if (src.startsWith('/')) return { type: 'bind', source: checkSource(src, what), target: checkTarget(dst, what), readonly };
  if (src.startsWith('.')) bad(`${what}: a host path must be absolute`);
  if (!NAME_RE.test(src)) bad(`${what}: "${src}" is neither an absolute host path nor a volume name`);
  return { type: 'volume', source: src, target: checkTarget(dst, what), readonly };
}

/** `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,tmpfs-size=N][,tmpfs-mode=M]`. */
export function parseMountFlag(spec: string): MountSpec {
  const what = `--mount ${spec}`;
  const kv = mountFields(spec, (k) => bad(`${what}: "${k}" given twice`));
  for (const key of kv.keys()) {
    if (!['type', 'source', 'target', 'readonly', 'tmpfs-size', 'tmpfs-mode'].includes(key)) bad(`${what}: unsupported field "${key}"`);
  }
  const type = kv.get('type') ?? 'volume';
  if (type !== 'bind' && type !== 'volume' && type !== 'tmpfs') bad(`${what}: unsupported type "${type}" (bind, volume, tmpfs)`);
  const target = kv.get('target');
  if (target === undefined) bad(`${what}: give target=`);
  const ro = kv.get('readonly');
  if (ro !== undefined && !['', 'true', 'false', '1', '0'].includes(ro)) bad(`${what}: readonly takes true or false`);
  const readonly = ro !== undefined && ro !== 'false' && ro !== '0';
  const source = kv.get('source');
  if (type !== 'tmpfs' && (kv.has('tmpfs-size') || kv.has('tmpfs-mode'))) bad(`${what}: tmpfs- fields go with type=tmpfs`);
  if (type === 'tmpfs') {
    if (source !== undefined) bad(`${what}: a tmpfs has no source`);
    const opts = [kv.has('tmpfs-size') ? `size=${kv.get('tmpfs-size')}` : '', kv.has('tmpfs-mode') ? `mode=${kv.get('tmpfs-mode')}` : ''].filter(Boolean).join(',');
    return { type, target: checkTarget(target, what), readonly, tmpfsOptions: checkTmpfsOptions(opts, what) };
  }
  if (type === 'bind') {
    if (source === undefined || !source.startsWith('/')) bad(`${what}: a bind mount takes an absolute source=`);
    return { type, source: checkSource(source, what), target: checkTarget(target, what), readonly };
  }
  if (source === undefined || source === '') return { type, target: checkTarget(target, what), readonly, anonymous: true };
  if (!NAME_RE.test(source)) bad(`${what}: invalid volume name "${source}"`);
  return { type, source, target: checkTarget(target, what), readonly };
}

/**
 * The KEY[=VALUE] fields of a --mount value (run's, and build's RUN --mount), with docker's other
 * names for some keys (src, dst, destination, ro, readwrite); a bare KEY is "true".
 */
export function mountFields(spec: string, twice: (key: string) => never): Map<string, string> {
  const aliases: Record<string, string> = { src: 'source', destination: 'target', dst: 'target', ro: 'readonly', readwrite: 'rw' };
  const kv = new Map<string, string>();
  for (const field of spec.split(',')) {
    const i = field.indexOf('=');
    const [k, v] = i < 0 ? [field, 'true'] : [field.slice(0, i), field.slice(i + 1)];
    const key = aliases[k] ?? k;
    if (kv.has(key)) twice(k);
    kv.set(key, v);
  }
  return kv;
}

function checkTmpfsOptions(opts: string, what: string): string {
  for (const o of opts === '' ? [] : opts.split(',')) {
    if (/^size=\d+[kmg%]?$/i.test(o) || /^mode=[0-7]{3,4}$/.test(o) || /^nr_inodes=\d+[kmg]?$/i.test(o)) continue;
    if (['ro', 'rw', 'noexec', 'exec', 'nosuid', 'suid', 'nodev', 'dev'].includes(o)) continue;
    bad(`${what}: unsupported tmpfs option "${o}" (size=, mode=, nr_inodes=, ro, noexec, nosuid, nodev)`);
  }
  return opts;
}

/** `--tmpfs DST[:OPTIONS]`. */
export function parseTmpfsFlag(spec: string): MountSpec {
  const what = `--tmpfs ${spec}`;
  const i = spec.indexOf(':');
  const [dst, opts] = i < 0 ? [spec, ''] : [spec.slice(0, i), spec.slice(i + 1)];
  const o = checkTmpfsOptions(opts, what).split(',').filter(Boolean);
  return { type: 'tmpfs', target: checkTarget(dst, what), readonly: o.includes('ro'), tmpfsOptions: o.filter((x) => x !== 'ro' && x !== 'rw').join(',') };
}

/** --dns IP: an IPv4 or IPv6 address. */
export function parseDns(value: string): string {
  if (isIP(value) === 0) bad(`--dns ${value}: expected an IP address`);
  return value;
}

/** docker's --ulimit names and their RLIMIT_ numbers (Linux). */
const RLIMITS: Record<string, number> = {
  cpu: 0, fsize: 1, data: 2, stack: 3, core: 4, rss: 5, nproc: 6, nofile: 7, memlock: 8, as: 9, locks: 10, sigpending: 11, msgqueue: 12,
  nice: 13, rtprio: 14, rttime: 15,
};

/** --ulimit NAME=SOFT[:HARD] (HARD defaults to SOFT; -1: unlimited), as docker run takes it. */
export function parseUlimit(spec: string): { name: string; soft: number; hard: number } {
  const m = /^([a-z]+)=(-1|[0-9]+)(?::(-1|[0-9]+))?$/.exec(spec);
  if (!m || RLIMITS[m[1]!] === undefined) bad(`--ulimit ${spec}: expected NAME=SOFT[:HARD] with NAME one of ${Object.keys(RLIMITS).join(', ')}`);
  const soft = Number(m![2]);
  const hard = m![3] !== undefined ? Number(m![3]) : soft;
  if (hard !== -1 && (soft === -1 || soft > hard)) bad(`--ulimit ${spec}: the soft limit is above the hard one`);
  return { name: m![1]!, soft, hard };
}

/** strata-run-exec's --rlimit arguments for the container's --ulimit settings. */
export function rlimitArgs(settings: ContainerSettings): string[] {
  return (settings.ulimits ?? []).flatMap((u) => ['--rlimit', `${RLIMITS[u.name]}:${u.soft}:${u.hard}`]);
}

/** The entries of an --env-file or --label-file: its lines without leading blanks, but for empty and # comment lines. */
function fileEntries(file: string, flag: string): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    bad(`${flag} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return text.split('\n').map((line) => line.replace(/\r$/, '').replace(/^\s+/, '')).filter((l) => l !== '' && !l.startsWith('#'));
}

/** A container's labels: its image's, with its own (--label) over them. */
export function containerLabels(imageConfig: ImageConfig | undefined, settings: ContainerSettings): Record<string, string> {
  return { ...((imageConfig?.config?.Labels as Record<string, string> | null | undefined) ?? {}), ...(settings.labels ?? {}) };
}

/** docker's label filter (ps, images --filter label=): KEY is there, or KEY=VALUE is. */
export function labelMatches(labels: Record<string, string>, filter: string): boolean {
  const eq = filter.indexOf('=');
  return eq < 0 ? filter in labels : labels[filter.slice(0, eq)] === filter.slice(eq + 1);
}

/** run's and create's --label KEY[=VALUE] and --label-file FILE (KEY=VALUE lines, # comments), as docker takes them. */
export function parseLabelFlags(values: readonly string[], files: readonly string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  const take = (entry: string, where: string): void => {
    const i = entry.indexOf('=');
    const key = i < 0 ? entry : entry.slice(0, i);
    if (key === '' || /[\s\0]/.test(key)) bad(`${where}: invalid label "${entry}"`);
    labels[key] = i < 0 ? '' : entry.slice(i + 1);
  };
  for (const f of files) for (const l of fileEntries(f, '--label-file')) take(l.trimEnd(), `--label-file ${f}`);
  for (const v of values) take(v, `--label ${v}`);
  return labels;
}

/**
 * The environment given on the command line: `--env-file` files first, then each `-e` (as docker:
 * later ones win). `KEY=VALUE`, or `KEY` alone for the host's value (left out when the host has none).
 * In a file: one per line, blank lines and lines starting with # ignored.
 */
export function parseEnvFlags(values: readonly string[], files: readonly string[]): string[] {
  const envs: string[] = [];
  const take = (entry: string, where: string): void => {
    const i = entry.indexOf('=');
    const key = i < 0 ? entry : entry.slice(0, i);
    if (key === '' || /[\s\0]/.test(key)) bad(`${where}: invalid variable name in "${entry}"`);
    if (i >= 0) envs.push(entry);
    else if (process.env[key] !== undefined) envs.push(`${key}=${process.env[key]}`);
  };
  for (const f of files) for (const l of fileEntries(f, '--env-file')) take(l, `--env-file ${f}`);
  for (const v of values) take(v, `-e ${v}`);
  return envs;
}

/** --entrypoint: a JSON array (podman's form), else one program; "" clears the image's. */
export function parseEntrypoint(value: string): string[] {
  if (value.startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch {
      bad(`--entrypoint ${value}: not a JSON array of strings`);
    }
    if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === 'string')) bad(`--entrypoint ${value}: not a JSON array of strings`);
    return parsed as string[];
  }
  return value === '' ? [] : [value];
}

/** --network: host (also docker's "default" and "bridge" spelled as host: strata has no bridge) or none. */
export function parseNetwork(value: string): 'host' | 'none' {
  if (value === 'host' || value === 'none') return value;
  bad(`--network ${value}: strata runs containers on the host's network (host) or on none`);
}

/** Checks -w and --hostname; the settings with names given to anonymous volumes. */
export function checkSettings(settings: ContainerSettings): ContainerSettings {
  if (settings.workdir !== undefined && !settings.workdir.startsWith('/')) bad(`-w ${settings.workdir}: the working directory must be an absolute path`);
  if (settings.hostname !== undefined && !/^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$/.test(settings.hostname)) bad(`--hostname ${settings.hostname}: invalid host name`);
  const mounts = settings.mounts ?? [];
  const seen = new Set<string>();
  for (const m of mounts) {
    if (seen.has(m.target)) bad(`two mounts on ${m.target}`);
    seen.add(m.target);
  }
  return settings;
}

/**
 * The mounts a new container gets: those given, then an anonymous volume for each of the image's
 * `Volumes` that no given mount covers (as docker and podman make them). Anonymous volumes get a
 * name here (their directory is the container's volumes/NAME).
 */
export function containerMounts(given: readonly MountSpec[], config: ImageConfig): MountSpec[] {
  const mounts = [...given];
  for (const v of Object.keys(config.config?.Volumes ?? {})) {
    if (!v.startsWith('/')) continue;
    const target = posix.normalize(v).replace(/(.)\/$/, '$1');
    if (target === '/' || mounts.some((m) => m.target === target)) continue;
    mounts.push({ type: 'volume', target, readonly: false, anonymous: true });
  }
  return mounts.map((m) => (m.anonymous && m.source === undefined ? { ...m, source: randomBytes(16).toString('hex') } : m));
}

/** Where a volume's files are: named ones in STORE/volumes/NAME/_data, anonymous ones in the container's dir. */
export function volumeDir(store: string, rec: Pick<ContainerRecord, 'dir'>, m: MountSpec): string {
  return m.anonymous ? join(rec.dir, 'volumes', m.source!) : join(store, 'volumes', m.source!, '_data');
}

// ---- named volumes (strata volume ...) -----------------------------------------------------

export interface VolumeInfo {
  name: string;
  mountpoint: string;
  created: string;
}

export function volumesRoot(store: string): string {
  return join(store, 'volumes');
}

/** Makes a named volume if it does not exist; returns it. */
export function ensureVolume(store: string, name: string): VolumeInfo {
  if (!NAME_RE.test(name)) bad(`invalid volume name "${name}"`);
  const data = join(volumesRoot(store), name, '_data');
  mkdirSync(data, { recursive: true, mode: 0o755 });
  return volumeInfo(store, name)!;
}

export function volumeInfo(store: string, name: string): VolumeInfo | null {
  if (!NAME_RE.test(name)) return null;
  const data = join(volumesRoot(store), name, '_data');
  try {
    const st = lstatSync(data);
    if (!st.isDirectory()) return null;
    return { name, mountpoint: data, created: st.birthtime.toISOString() };
  } catch {
    return null;
  }
}

export function listVolumes(store: string): VolumeInfo[] {
  let names: string[];
  try {
    names = readdirSync(volumesRoot(store));
  } catch {
    return [];
  }
  return names.sort().map((n) => volumeInfo(store, n)).filter((v): v is VolumeInfo => v !== null);
}

/** The containers that use the named volume. */
export function volumeUsers(containers: readonly ContainerRecord[], name: string): ContainerRecord[] {
  return containers.filter((c) => (settingsOf(c).mounts ?? []).some((m) => m.type === 'volume' && !m.anonymous && m.source === name));
}

export function removeVolume(store: string, name: string): void {
  if (volumeInfo(store, name) === null) throw new ImageError(`no such volume: ${name}`);
  rmSync(join(volumesRoot(store), name), { recursive: true, force: true });
}

/** [first container id, first host id, how many]. */
export type IdRange = [number, number, number];

/**
 * An id through a container's map: a container id to the host's (`toHost`), or back. An id the map
 * leaves out has no owner to give: one line.
 */
export function mapId(ranges: readonly IdRange[], id: number, toHost: boolean, kind: 'uid' | 'gid', container: string): number {
  for (const [inside, host, count] of ranges) {
    const [from, to] = toHost ? [inside, host] : [host, inside];
    if (id >= from && id < from + count) return to + (id - from);
  }
  throw new ImageError(`${kind} ${id} is not mapped ${toHost ? 'into' : 'out of'} the user namespace of ${container} (its --${kind}map)`, 125);
}

/** The ranges of --uidmap / --gidmap flags (CONTAINER:HOST:COUNT each); either alone serves for both. */
export function parseIdMaps(uid: readonly string[], gid: readonly string[]): { uidMap: IdRange[]; gidMap: IdRange[] } | undefined {
  if (uid.length === 0 && gid.length === 0) return undefined;
  const parse = (flag: string, values: readonly string[]): IdRange[] => {
    const out: IdRange[] = [];
    for (const v of values.flatMap((x) => x.split(',')).filter(Boolean)) {
      const m = /^([0-9]+):([0-9]+):([0-9]+)$/.exec(v);
      const r = m ? ([Number(m[1]), Number(m[2]), Number(m[3])] as IdRange) : null;
      if (!r || r[2] === 0 || r[0] + r[2] > 2 ** 32 - 1 || r[1] + r[2] > 2 ** 32 - 1) {
        throw new ImageError(`${flag} ${v}: expected CONTAINER:HOST:COUNT (ids, a count above 0)`, 125);
      }
      for (const o of out) {
        if (r[0] < o[0] + o[2] && o[0] < r[0] + r[2]) throw new ImageError(`${flag} ${v}: its container ids overlap another range`, 125);
        if (r[1] < o[1] + o[2] && o[1] < r[1] + r[2]) throw new ImageError(`${flag} ${v}: its host ids overlap another range`, 125);
      }
      out.push(r);
    }
    // (the namespace's root: strata-run-exec becomes it before it changes to the command's user)
    if (!out.some((o) => o[0] === 0)) throw new ImageError(`${flag}: the container's root (0) must be mapped`, 125);
    return out;
  };
  const uidMap = parse('--uidmap', uid.length > 0 ? uid : gid);
  const gidMap = parse('--gidmap', gid.length > 0 ? gid : uid);
  return { uidMap, gidMap };
}

/** Ranges as strata-run-exec's --uidmap takes them, and as the mount's uidmapping= (CONTAINER:HOST:COUNT,...). */
export function idMapArg(ranges: readonly IdRange[]): string {
  return ranges.map((r) => r.join(':')).join(',');
}

/** --userns: host (the default: none of its own), or auto[:size=N] (podman's: ranges of /etc/subuid's "containers" no other container has). */
export function parseUsernsFlag(v: string): { size: number } | null {
  if (v === '' || v === 'host') return null;
  const m = /^auto(?::size=([0-9]+))?$/.exec(v);
  if (!m) throw new ImageError(`--userns ${v}: strata takes host, or auto[:size=N] (ranges of "containers" in /etc/subuid and /etc/subgid)`, 125);
  const size = m[1] === undefined ? AUTO_USERNS_SIZE : Number(m[1]);
  if (size < 1 || size > 2 ** 32 - 2) throw new ImageError(`--userns ${v}: a size from 1 up`, 125);
  return { size };
}

/** The size of an automatic user namespace, without size= (ids 0-65535, as a container image uses them). */
export const AUTO_USERNS_SIZE = 65536;

/** The subordinate ranges of /etc/subuid or /etc/subgid for `user` ([first, count]). */
export function subordinateRanges(file: string, user: string): [number, number][] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: [number, number][] = [];
  for (const line of text.split('\n')) {
    const [name, start, count] = line.trim().split(':');
    if (name === user && /^[0-9]+$/.test(start ?? '') && /^[0-9]+$/.test(count ?? '')) out.push([Number(start), Number(count)]);
  }
  return out;
}

/**
 * Host ids for an automatic user namespace of `size` ids: the first block of the subordinate ranges
 * that no range of `taken` overlaps (podman's --userns=auto, which takes them from the user
 * "containers" too).
 */
export function allocateIds(subordinate: readonly [number, number][], taken: readonly IdRange[], size: number, what: string): number {
  const used = taken.map((r) => [r[1], r[1] + r[2]] as const).sort((a, b) => a[0] - b[0]);
  for (const [first, count] of subordinate) {
    let at = first;
    for (const [a, b] of used) {
      if (b <= at) continue;
      if (a >= at + size) break;
      at = b;
    }
    if (at + size <= first + count) return at;
  }
  if (subordinate.length === 0) throw new ImageError(`--userns=auto: no ranges for the user "containers" in ${what} (add a line such as containers:2147483647:2147483648)`, 125);
  throw new ImageError(`--userns=auto: no ${size} free ids left in the ranges of "containers" in ${what}`, 125);
}
