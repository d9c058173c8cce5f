// `strata build`: an image from a Dockerfile and a context directory, step by step, with a build
// cache.
//
// Each stage starts from its FROM image (or scratch) and carries a config (the base's, changed by
// ENV, WORKDIR, USER, CMD ...) and a chain of layers. Instructions that change only the config add a
// history entry with empty_layer. RUN runs the command in a container of the current chain and
// config (as `strata run` does: mount, namespaces, chroot, the config's user, working directory and
// environment plus the build arguments), and its upper becomes a new layer (as `strata commit`
// makes one). COPY and ADD mount such a container and write the sources into it, every path
// resolved inside its root (context.ts), so directories the image has keep their attributes; its
// upper becomes the layer. Containers and mounts of a step are removed when it ends, whatever
// happens; only the final image of the target stage is recorded (with the tags of -t).
//
// The cache: each step has a key, the hash of the previous step's key and the instruction (with the
// build arguments a RUN sees, and the checksum of the sources of a COPY or ADD); the base's key is its
// image ID. A layer step records key -> the layer's chain ID and the time it was built; a later build
// with the same key takes that layer if the store still has it, without running anything. The layers
// a build made or took are leased in the store until it ends: `image prune` meanwhile keeps them. Config
// steps are recomputed (they are cheap), with the time of the step before them, so a build whose
// every step is cached gives the same image ID again.

import { createHash } from 'node:crypto';
import { chmodSync, closeSync, createWriteStream, existsSync, lstatSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join, posix } from 'node:path';
import { PassThrough } from 'node:stream';
import * as N from '../../native/index.js';
import { packTree } from '../changes.js';
import { mountLayers, unmountIfMounted } from '../container.js';
import { startContainer } from '../run.js';
import { type ImageRecord, type LayerRecord, type Store, withStore } from '../store.js';
import { type HistoryEntry, hostPlatform, type ImageConfig, ImageError } from '../types.js';
import { containerUser } from '../user.js';
import { BuildContext, copyInto, sourceChecksum } from './context.js';
import { ensureDir, isDirIn, removeMountPoints } from '../inroot.js';
import { type ContainerSettings, durationNs, type MountSpec } from '../settings.js';
import { type BuildSecret, type FromRoot, mountFrom, runMounts } from './run_mounts.js';
import { expand, type Instruction, keyValues, parseDockerfile, words } from './dockerfile.js';

export interface BuildOptions {
  store: string;
  /** The context directory. */
  context: string;
  /** The Dockerfile (default CONTEXT/Dockerfile). */
  dockerfile?: string;
  tags: string[];
  buildArgs: Record<string, string>;
  noCache?: boolean;
  /** The stage to build (default: the last). */
  target?: string;
  /** A line per step (Docker's "STEP n/m: ..."). */
  log?: (line: string) => void;
  /** -q: what RUN prints is kept aside, and shown (on stderr) only when the step fails. */
  quiet?: boolean;
  /** Pulls an image the store lacks (FROM). */
  ensureImage?: (ref: string) => Promise<void>;
  /** --secret: what RUN --mount=type=secret mounts. */
  secrets?: BuildSecret[];
  /** --label: labels of the final image (over the Dockerfile's). */
  labels?: Record<string, string>;
}

export interface BuildResult {
  id: string;
  /** Steps taken from the cache, and run. */
  cached: number;
  built: number;
}

interface Stage {
  name: string | null;
  config: ImageConfig;
  /** Chain IDs, bottom first. */
  layers: string[];
  key: string;
  /** When the last layer step of this stage (or its base) was made. */
  created: string;
  /** ARG names declared in the stage, with their values. */
  args: Map<string, string>;
  /** The global ARGs (before the first FROM): a stage's `ARG NAME` without a default takes their value. */
  globals?: Map<string, string>;
  shell: string[];
  /** CMD set in this stage (an ENTRYPOINT then keeps it; else it drops the base's). */
  cmdSet?: boolean;
}

const SCRATCH_CONFIG = (): ImageConfig => ({
  architecture: hostPlatform().architecture, os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] }, history: [],
});

const DEFAULT_SHELL = ['/bin/sh', '-c'];

function sha(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** The variables an instruction's words see: the stage's ARGs, then its ENV (ENV wins, as in Docker). */
function varsOf(stage: Stage): Map<string, string> {
  const vars = new Map(stage.args);
  for (const kv of stage.config.config?.Env ?? []) {
    const i = kv.indexOf('=');
    if (i > 0) vars.set(kv.slice(0, i), kv.slice(i + 1));
  }
  return vars;
}

function setEnv(config: ImageConfig, key: string, value: string): void {
  const env = (config.config ??= {}).Env ?? [];
  const i = env.findIndex((e) => e.startsWith(`${key}=`));
  if (i >= 0) env[i] = `${key}=${value}`;
  else env.push(`${key}=${value}`);
  config.config.Env = env;
}

interface StageRange {
  from: Instruction;
  body: Instruction[];
  name: string | null;
}

/**
 * The stages stage `last` needs: itself and, transitively, the earlier stages its FROM, COPY --from
 * and RUN --mount from= name (by name or number; variables expanded with the global ARGs and the
 * stage's ARGs). A reference whose variables leave it empty keeps every earlier stage.
 */
function neededStages(ranges: readonly StageRange[], last: number, globalArgs: ReadonlyMap<string, string>, buildArgs: Record<string, string>,
  esc: string): Set<number> {
  const stageOf = (ref: string, before: number): number | null => {
    for (let j = before - 1; j >= 0; j--) if (ranges[j]!.name === ref.toLowerCase()) return j;
    return /^[0-9]+$/.test(ref) && Number(ref) < before ? Number(ref) : null;
  };
  const refsOf = (idx: number): number[] => {
    const r = ranges[idx]!;
    const out: number[] = [];
    const add = (ref: string): void => {
      if (ref.trim() === '') {
        for (let j = 0; j < idx; j++) out.push(j);
        return;
      }
      const j = stageOf(ref, idx);
      if (j !== null) out.push(j);
    };
    add(expand(/^(\S+)/.exec(r.from.rest)![1]!, globalArgs, esc));
    const vars = new Map<string, string>();
    for (const ins of r.body) {
      if (ins.cmd === 'ARG') {
        for (const [k, v] of keyValues(ins.rest, vars, esc, false)) vars.set(k, buildArgs[k] ?? (ins.rest.includes('=') ? v : globalArgs.get(k) ?? ''));
      } else if ((ins.cmd === 'COPY' || ins.cmd === 'ADD') && ins.flags.from !== undefined) {
        add(expand(ins.flags.from, vars, esc));
      } else if (ins.cmd === 'RUN') {
        for (const [f, v] of ins.flagList) {
          const m = f === 'mount' ? /(?:^|,)from=([^,]*)/.exec(v) : null;
          if (m) add(expand(m[1]!, vars, esc));
        }
      }
    }
    return out;
  };
  const needed = new Set<number>();
  const todo = [last];
  while (todo.length > 0) {
    const idx = todo.pop()!;
    if (needed.has(idx)) continue;
    needed.add(idx);
    todo.push(...refsOf(idx));
  }
  return needed;
}

/** The exec form as given, or the shell form run by the stage's SHELL. */
function commandOf(ins: Instruction, shell: string[]): string[] {
  return ins.json ?? [...shell, ins.rest];
}

export async function buildImage(opts: BuildOptions): Promise<BuildResult> {
  inUse.clear();
  try {
    return await buildStages(opts);
  } finally {
    inUse.clear();
    await withStore(opts.store, (s) => s.dropLease(process.pid)).catch(() => {});
  }
}

/** The layers this build made or took from the cache: leased (store.setLease) until the build ends. */
const inUse = new Set<string>();

async function lease(opts: BuildOptions, chain: string): Promise<void> {
  inUse.add(chain);
  await withStore(opts.store, (s) => s.setLease(process.pid, [...inUse]));
}

async function buildStages(opts: BuildOptions): Promise<BuildResult> {
  const log = opts.log ?? ((): void => {});
  const dockerfile = opts.dockerfile ?? join(opts.context, 'Dockerfile');
  let text: string;
  try {
    text = readFileSync(dockerfile, 'utf8');
  } catch (e) {
    throw new ImageError(`cannot read the Dockerfile ${dockerfile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!lstatSync(opts.context, { throwIfNoEntry: false })?.isDirectory()) throw new ImageError(`the build context ${opts.context} is not a directory`);
  const df = parseDockerfile(text);
  const esc = df.escape;
  if (df.instructions.length === 0) throw new ImageError(`${dockerfile} has no instructions`);
  const ctx = BuildContext.open(opts.context);

  // Global ARGs (before the first FROM) are seen by FROM lines only.
  const globalArgs = new Map<string, string>();
  let i = 0;
  for (; i < df.instructions.length && df.instructions[i]!.cmd === 'ARG'; i++) {
    for (const [k, v] of keyValues(df.instructions[i]!.rest, globalArgs, esc, false)) {
      globalArgs.set(k, opts.buildArgs[k] ?? (df.instructions[i]!.rest.includes('=') ? v : ''));
    }
  }
  if (i >= df.instructions.length || df.instructions[i]!.cmd !== 'FROM') throw new ImageError('the Dockerfile must begin with FROM (after ARGs)');
  // Stages: instruction ranges.
  const ranges: StageRange[] = [];
  for (; i < df.instructions.length; i++) {
    const ins = df.instructions[i]!;
    if (ins.cmd === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?\s*$/i.exec(ins.rest);
      if (!m) throw new ImageError(`Dockerfile line ${ins.line}: FROM takes IMAGE [AS NAME]`);
      ranges.push({ from: ins, body: [], name: m[2]?.toLowerCase() ?? null });
    } else {
      ranges.at(-1)!.body.push(ins);
    }
  }
  let last = ranges.length - 1;
  if (opts.target !== undefined) {
    last = ranges.findIndex((r) => r.name === opts.target!.toLowerCase());
    if (last < 0) throw new ImageError(`no stage named "${opts.target}" in the Dockerfile`);
  }
  // Only the stages the target needs are built, as BuildKit and buildah do.
  const needed = neededStages(ranges, last, globalArgs, opts.buildArgs, esc);
  const total = ranges.reduce((n, r, idx) => n + (needed.has(idx) ? 1 + r.body.length : 0), 0);
  let step = 0;
  let cached = 0;
  let built = 0;
  /** Built stages by their position in the Dockerfile. */
  const done: (Stage | undefined)[] = [];
  const stageByName = (name: string): Stage | undefined => {
    const byName = done.find((s) => s !== undefined && s.name === name.toLowerCase());
    if (byName) return byName;
    return /^[0-9]+$/.test(name) ? done[Number(name)] : undefined;
  };

  for (const [idx, range] of ranges.entries()) {
    if (!needed.has(idx)) continue;
    const fromRef = expand(/^(\S+)/.exec(range.from.rest)![1]!, globalArgs, esc);
    log(`STEP ${++step}/${total}: FROM ${fromRef}${range.name ? ` AS ${range.name}` : ''}`);
    let stage: Stage;
    const prior = stageByName(fromRef);
    if (fromRef === 'scratch') {
      stage = { name: range.name, config: SCRATCH_CONFIG(), layers: [], key: 'scratch', created: new Date(0).toISOString(), args: new Map(), shell: DEFAULT_SHELL };
    } else if (prior) {
      stage = { ...clone({ config: prior.config, layers: prior.layers, key: prior.key, created: prior.created }), name: range.name, args: new Map(), shell: [...prior.shell] };
    } else {
      await opts.ensureImage?.(fromRef);
      const base = await withStore(opts.store, (s) => s.resolveImage(fromRef));
      stage = {
        name: range.name, config: clone(base.config), layers: [...base.layers], key: base.id,
        created: base.config.created ?? new Date(0).toISOString(), args: new Map(),
        shell: Array.isArray(base.config.config?.Shell) && (base.config.config.Shell as string[]).length > 0 ? [...(base.config.config.Shell as string[])] : DEFAULT_SHELL,
      };
    }
    stage.globals = globalArgs;
    // The base image's ONBUILD triggers run first, as instructions of this stage; the new image has none.
    const triggers = ((stage.config.config?.OnBuild as string[] | null | undefined) ?? []).filter((x) => typeof x === 'string');
    if (stage.config.config?.OnBuild !== undefined) delete stage.config.config.OnBuild;
    if (triggers.length > 0) log(`--> Executing ${triggers.length} build trigger${triggers.length === 1 ? '' : 's'}`);
    for (const trigger of triggers) {
      const [ins, more] = parseDockerfile(trigger).instructions;
      if (!ins || more || ['FROM', 'ONBUILD', 'MAINTAINER'].includes(ins.cmd)) throw new ImageError(`the base image's ONBUILD trigger "${trigger.slice(0, 100)}" is not one instruction that ONBUILD may hold`);
      log(`--> ${ins.original}`);
      const r = await runStep(opts, ctx, esc, stage, ins, stageByName, log);
      if (r === 'cached') cached++;
      else if (r === 'built') built++;
    }
    for (const ins of range.body) {
      log(`STEP ${++step}/${total}: ${ins.original}`);
      const r = await runStep(opts, ctx, esc, stage, ins, stageByName, log);
      if (r === 'cached') cached++;
      else if (r === 'built') built++;
    }
    done[idx] = stage;
  }

  const final = done[last]!;
  const config = final.config;
  if (opts.labels && Object.keys(opts.labels).length > 0) {
    const cfg = (config.config ??= {});
    cfg.Labels = { ...((cfg.Labels as Record<string, string> | undefined) ?? {}), ...opts.labels };
  }
  config.created = final.created;
  const image = await withStore(opts.store, async (s) => {
    const layers: LayerRecord[] = [];
    for (const c of final.layers) {
      const l = await s.layer(c);
      if (!l) throw new ImageError(`layer ${c} vanished from the store during the build`);
      layers.push(l);
    }
    config.rootfs = { type: 'layers', diff_ids: layers.map((l) => l.diffId) };
    return s.writeImage({ config, layers, tags: opts.tags });
  });
  log(`COMMIT ${opts.tags.join(', ') || image.id}`);
  return { id: image.id, cached, built };
}

/** The instructions `commit --change` takes (docker's, and STOPSIGNAL). */
const CHANGE_INSTRUCTIONS = new Set(['CMD', 'ENTRYPOINT', 'ENV', 'EXPOSE', 'LABEL', 'ONBUILD', 'USER', 'VOLUME', 'WORKDIR', 'STOPSIGNAL']);

/**
 * `commit --change`: Dockerfile instructions that change only the config, applied in order to
 * `config` (an image's config with the container's settings); returns the new run config.
 */
export async function applyConfigChanges(config: ImageConfig, changes: readonly string[]): Promise<NonNullable<ImageConfig['config']>> {
  const stage: Stage = {
    // (as docker's commit: an ENTRYPOINT change drops the Cmd unless a CMD change came first)
    name: null, config: clone(config), layers: [], key: '', created: config.created ?? '', args: new Map(), shell: DEFAULT_SHELL,
  };
  for (const change of changes) {
    const { instructions, escape } = parseDockerfile(change);
    for (const ins of instructions) {
      if (!CHANGE_INSTRUCTIONS.has(ins.cmd)) throw new ImageError(`--change "${change}": ${ins.cmd} is not one of ${[...CHANGE_INSTRUCTIONS].join(', ')}`, 125);
      await runStep({} as BuildOptions, {} as BuildContext, escape, stage, ins, () => undefined, () => {});
    }
  }
  return stage.config.config ?? {};
}

function history(stage: Stage, ins: Instruction, empty: boolean): void {
  const h: HistoryEntry = { created: stage.created, created_by: ins.original, comment: 'strata build' };
  if (empty) h.empty_layer = true;
  (stage.config.history ??= []).push(h);
}

/** One instruction; returns whether it took a cached layer, built one, or only changed the config. */
async function runStep(opts: BuildOptions, ctx: BuildContext, esc: string, stage: Stage, ins: Instruction,
  stageByName: (n: string) => Stage | undefined, log: (l: string) => void): Promise<'cached' | 'built' | 'config'> {
  const cfg = (stage.config.config ??= {});
  const vars = varsOf(stage);
  const configStep = (): 'config' => {
    // (the config as it came out: the values variables gave it, not only the instruction's text)
    stage.key = sha(`${stage.key}\n${ins.original}\n${JSON.stringify(stage.config.config ?? {})}\n${stage.shell.join('\0')}`);
    history(stage, ins, true);
    return 'config';
  };
  switch (ins.cmd) {
    case 'ENV':
      for (const [k, v] of keyValues(ins.rest, vars, esc, true)) setEnv(stage.config, k, v);
      return configStep();
    case 'ARG': {
      for (const [k, v] of keyValues(ins.rest, vars, esc, false)) {
        const hasDefault = new RegExp(`(^|\\s)${k}=`).test(ins.rest);
        stage.args.set(k, opts.buildArgs[k] ?? (hasDefault ? v : stage.globals?.get(k) ?? ''));
      }
      stage.key = sha(`${stage.key}\n${ins.original}`);
      return 'config';
    }
    case 'LABEL': {
      const labels = (cfg.Labels ??= {}) as Record<string, string>;
      for (const [k, v] of keyValues(ins.rest, vars, esc, false)) labels[k] = v;
      return configStep();
    }
    case 'MAINTAINER':
      stage.config.author = ins.rest;
      return configStep();
    case 'WORKDIR': {
      const dir = expand(ins.rest, vars, esc);
      cfg.WorkingDir = posix.normalize(posix.isAbsolute(dir) ? dir : posix.join(cfg.WorkingDir || '/', dir));
      return configStep();
    }
    case 'USER':
      cfg.User = expand(ins.rest, vars, esc);
      return configStep();
    case 'CMD':
      cfg.Cmd = commandOf(ins, stage.shell);
      stage.cmdSet = true;
      return configStep();
    case 'ENTRYPOINT':
      cfg.Entrypoint = commandOf(ins, stage.shell);
      // (as Docker: a new ENTRYPOINT drops the base's CMD)
      if (!stage.cmdSet) cfg.Cmd = null;
      return configStep();
    case 'EXPOSE': {
      const ports = (cfg.ExposedPorts ??= {}) as Record<string, object>;
      for (const p of words(ins.rest, vars, esc)) ports[p.includes('/') ? p : `${p}/tcp`] = {};
      return configStep();
    }
    case 'VOLUME': {
      const vols = (cfg.Volumes ??= {}) as Record<string, object>;
      for (const v of ins.json ?? words(ins.rest, vars, esc)) vols[v] = {};
      return configStep();
    }
    case 'STOPSIGNAL':
      cfg.StopSignal = expand(ins.rest, vars, esc);
      return configStep();
    case 'SHELL':
      if (!ins.json || ins.json.length === 0) throw new ImageError(`Dockerfile line ${ins.line}: SHELL takes a JSON array`);
      stage.shell = ins.json;
      cfg.Shell = ins.json;
      return configStep();
    case 'ONBUILD': {
      const trigger = /^(\S+)/.exec(ins.rest)?.[1]?.toUpperCase() ?? '';
      if (['FROM', 'ONBUILD', 'MAINTAINER', ''].includes(trigger)) throw new ImageError(`Dockerfile line ${ins.line}: ${trigger || 'nothing'} is not allowed as an ONBUILD trigger`);
      ((cfg.OnBuild ??= []) as string[]).push(ins.rest);
      return configStep();
    }
    case 'HEALTHCHECK': {
      // Docker's config.Healthcheck: Test ["NONE"], ["CMD", ...] or ["CMD-SHELL", "..."], durations in ns.
      if (/^NONE$/i.test(ins.rest.trim())) {
        cfg.Healthcheck = { Test: ['NONE'] };
        return configStep();
      }
      const m = /^CMD\s+([\s\S]+)$/i.exec(ins.rest.trim());
      if (!m) throw new ImageError(`Dockerfile line ${ins.line}: HEALTHCHECK takes [OPTIONS] CMD command, or NONE`);
      const body = m[1]!.trim();
      let test: string[];
      try {
        const j = body.startsWith('[') ? (JSON.parse(body) as unknown) : null;
        test = Array.isArray(j) && j.every((x) => typeof x === 'string') ? ['CMD', ...(j as string[])] : ['CMD-SHELL', body];
      } catch {
        test = ['CMD-SHELL', body];
      }
      const hc: Record<string, unknown> = { Test: test };
      const names: Record<string, string> = { interval: 'Interval', timeout: 'Timeout', 'start-period': 'StartPeriod', 'start-interval': 'StartInterval' };
      for (const [flag, value] of Object.entries(ins.flags)) {
        if (flag === 'retries') {
          if (!/^[0-9]+$/.test(value)) throw new ImageError(`Dockerfile line ${ins.line}: --retries takes a number`);
          hc.Retries = Number(value);
        } else if (names[flag]) {
          hc[names[flag]!] = durationNs(value, `Dockerfile line ${ins.line}`, 1);
        } else {
          throw new ImageError(`Dockerfile line ${ins.line}: HEALTHCHECK --${flag} is not supported`);
        }
      }
      cfg.Healthcheck = hc;
      return configStep();
    }
    case 'RUN': {
      if (stage.layers.length === 0) throw new ImageError(`Dockerfile line ${ins.line}: RUN in an empty image (FROM scratch, nothing copied yet): there is nothing to run`);
      for (const [f] of ins.flagList) if (f !== 'mount' && f !== 'network') throw new ImageError(`Dockerfile line ${ins.line}: RUN --${f} is not supported`);
      const net = ins.flagList.filter(([f]) => f === 'network').map(([, v]) => v).at(-1);
      if (net !== undefined && !['default', 'host', 'none'].includes(net)) throw new ImageError(`Dockerfile line ${ins.line}: RUN --network takes default, host or none`);
      const workdir = cfg.WorkingDir || '/';
      const mounts = await runMounts(ins.flagList.filter(([f]) => f === 'mount').map(([, v]) => expand(v, vars, esc)), {
        store: opts.store, ctx, secrets: opts.secrets ?? [], workdir, line: ins.line, source: (from) => sourceOf(opts, from, stageByName),
      });
      // RUN <<EOF whose document starts with #!: BuildKit runs it as a program, at /dev/pipes/EOF.
      const doc = ins.heredocs?.length === 1 && ins.json === null && ins.rest === ins.heredocs[0]!.body.slice(0, -1) && ins.rest.startsWith('#!')
        ? ins.heredocs[0]! : null;
      const pipes = doc ? mkdtempSync(join(tmpdir(), 'strata-pipes-')) : null;
      try {
        let runIns = ins;
        const runMountList = [...mounts.mounts];
        if (doc && pipes) {
          writeFileSync(join(pipes, doc.name), doc.body, { mode: 0o755 });
          chmodSync(join(pipes, doc.name), 0o755);
          runMountList.push({ type: 'bind', source: pipes, target: '/dev/pipes', readonly: true });
          runIns = { ...ins, json: [`/dev/pipes/${doc.name}`] };
        }
        return await layerStep(opts, stage, runIns, runKey(stage, ins, mounts.key), log, (rec) => runInBuild(opts, stage, runIns, rec, runMountList, net === 'none'));
      } finally {
        await mounts.cleanup();
        if (pipes) rmSync(pipes, { recursive: true, force: true });
      }
    }
    case 'COPY':
    case 'ADD':
      return copyStep(opts, ctx, esc, stage, ins, vars, stageByName, log);
    default:
      throw new ImageError(`Dockerfile line ${ins.line}: ${ins.cmd} is not supported`);
  }
}

/** A RUN's key: the instruction, the build arguments it sees, and what its bind mounts show. */
function runKey(stage: Stage, ins: Instruction, mountKey: string): string {
  const args = [...stage.args].map(([k, v]) => `${k}=${v}`).sort().join('\n');
  return sha(`${stage.key}\n${ins.original}\n${args}${mountKey === '' ? '' : `\n${mountKey}`}`);
}

/** The layers of a stage or image named by --from / from= (an image is pulled if the store lacks it). */
async function sourceOf(opts: BuildOptions, from: string, stageByName: (n: string) => Stage | undefined): Promise<{ layers: string[]; key: string }> {
  const s = stageByName(from);
  if (s) return { layers: s.layers, key: s.key };
  await opts.ensureImage?.(from);
  const img = await withStore(opts.store, (st) => st.resolveImage(from));
  return { layers: img.layers, key: img.id };
}

/** A step's working directory, made (root's, 0755) if the image lacks it, as buildah makes WORKDIR's. */
function makeWorkdir(merged: string, workdir: string): void {
  const rootFd = N.openat(N.C.AT_FDCWD, merged, N.C.O_PATH | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0);
  try {
    N.close(ensureDir(rootFd, workdir.replace(/^\/+/, '')));
  } finally {
    N.close(rootFd);
  }
}

interface BuildContainer {
  id: string;
  upper: string;
  merged: string;
  work: string;
}

/**
 * A layer step: from the cache, else in a fresh container of the current chain and config, whose
 * upper becomes the layer. The container goes whatever happens.
 */
async function layerStep(opts: BuildOptions, stage: Stage, ins: Instruction, key: string, log: (l: string) => void,
  work: (rec: BuildContainer) => Promise<void>): Promise<'cached' | 'built'> {
  const cacheKey = `buildcache:${key}`;
  if (!opts.noCache) {
    const hit = await withStore(opts.store, async (s) => {
      const entry = await s.getMeta<{ chain: string; created: string }>(cacheKey);
      if (!entry) return null;
      const layer = await s.layer(entry.chain);
      if (!layer || layer.parent !== (stage.layers.at(-1) ?? null) || !existsSync(s.layerDir(entry.chain))) return null;
      return entry;
    });
    if (hit) {
      await lease(opts, hit.chain);
      log('--> Using cache');
      stage.layers.push(hit.chain);
      stage.created = hit.created;
      stage.key = key;
      history(stage, ins, false);
      return 'cached';
    }
  }
  const created = new Date().toISOString();
  const rec = await withStore(opts.store, async (s) => {
    const pseudo = { id: `sha256:${sha(JSON.stringify(stage.config))}`, layers: stage.layers, tags: [] } as unknown as ImageRecord;
    const c = await s.createContainer({ image: pseudo, imageRef: 'strata-build', command: ins.json ?? [...stage.shell, ins.rest] });
    return s.updateContainer(c.id, { config: stage.config, build: true });
  });
  try {
    await work(rec);
    const layer = await withStore(opts.store, async (s) => {
      const pipe = new PassThrough({ highWaterMark: 1 << 20 });
      const packing = packTree(rec.upper, pipe, { layer: true, gzip: false });
      const [l] = await Promise.all([s.addLayer(stage.layers.at(-1) ?? null, pipe).catch((e: unknown) => {
        pipe.destroy(e as Error);
        throw e;
      }), packing]);
      await s.putMeta(cacheKey, { chain: l.chainId, created });
      await s.setLease(process.pid, [...inUse, l.chainId]);
      return l;
    });
    inUse.add(layer.chainId);
    stage.layers.push(layer.chainId);
    stage.created = created;
    stage.key = key;
    history(stage, ins, false);
    return 'built';
  } finally {
    await unmountIfMounted(rec.merged).catch(() => {});
    await withStore(opts.store, (s) => s.removeContainer(rec.id)).catch(() => {});
  }
}

/** RUN: the command in the container, as strata run runs it, with the build arguments in its environment. */
async function runInBuild(opts: BuildOptions, stage: Stage, ins: Instruction, rec: BuildContainer, mounts: MountSpec[], isolated: boolean): Promise<void> {
  const env = [...stage.args].map(([k, v]) => `${k}=${v}`);
  const settings: ContainerSettings = { mounts, ...(isolated ? { network: 'none' as const } : {}) };
  const full = await withStore(opts.store, (s) => s.updateContainer(rec.id, { env, settings }));
  const made: string[] = [];
  const workdir = stage.config.config?.WorkingDir || '/';
  let status: number;
  // (-q: the step's output in a file that goes with it, shown when it fails)
  const outputDir = opts.quiet ? mkdtempSync(join(tmpdir(), 'strata-run-')) : null;
  const outputFd = outputDir ? openSync(join(outputDir, 'output'), 'w+', 0o600) : undefined;
  try {
    try {
      status = await startContainer(opts.store, full, { prepare: (merged) => makeWorkdir(merged, workdir), madeMountPoints: made, healthcheck: false, ...(outputFd !== undefined ? { outputFd } : {}) });
    } finally {
      // (unmounted by now: the mount points go from the upper, which becomes the layer)
      removeMountPoints(rec.upper, made);
    }
    if (status !== 0 && outputDir) {
      const text = readFileSync(join(outputDir, 'output'));
      process.stderr.write(text.subarray(Math.max(0, text.length - 64 * 1024)));
    }
  } finally {
    if (outputFd !== undefined) closeSync(outputFd);
    if (outputDir) rmSync(outputDir, { recursive: true, force: true });
  }
  if (status !== 0) throw new ImageError(`${ins.original.slice(0, 200)}: the command returned a non-zero code: ${status}`);
}

/** COPY and ADD (local sources; ADD also unpacks local tar archives). */
async function copyStep(opts: BuildOptions, ctx: BuildContext, esc: string, stage: Stage, ins: Instruction, vars: Map<string, string>,
  stageByName: (n: string) => Stage | undefined, log: (l: string) => void): Promise<'cached' | 'built'> {
  for (const f of Object.keys(ins.flags)) {
    if (f !== 'chown' && f !== 'chmod' && f !== 'from') throw new ImageError(`Dockerfile line ${ins.line}: ${ins.cmd} --${f} is not supported`);
  }
  const list = ins.json ? ins.json.map((w) => expand(w, vars, esc)) : words(ins.rest, vars, esc);
  if (list.length < 2) throw new ImageError(`Dockerfile line ${ins.line}: ${ins.cmd} takes at least one source and a destination`);
  const dest = list.at(-1)!;
  const srcs = list.slice(0, -1);
  const isUrl = (s: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(s);
  const urls = srcs.filter(isUrl);
  if (urls.length > 0 && ins.cmd === 'COPY') throw new ImageError(`Dockerfile line ${ins.line}: COPY takes no URL (ADD does)`);
  if (urls.length > 0 && urls.length < srcs.length) throw new ImageError(`Dockerfile line ${ins.line}: ADD of URLs and local files in one instruction is not supported`);
  if (urls.some((u) => !/^https?:\/\//i.test(u))) throw new ImageError(`Dockerfile line ${ins.line}: ADD takes http and https URLs only`);
  const from = ins.flags.from !== undefined ? expand(ins.flags.from, vars, esc) : undefined;
  if (from !== undefined && ins.cmd === 'ADD') throw new ImageError(`Dockerfile line ${ins.line}: ADD --from is not supported`);
  const docs = ins.heredocs ?? [];
  if (docs.length > 0 && (srcs.some((s) => !s.startsWith('<<')) || from !== undefined)) {
    throw new ImageError(`Dockerfile line ${ins.line}: ${ins.cmd} of here-documents together with other sources is not supported`);
  }
  const chmod = ins.flags.chmod !== undefined ? parseInt(ins.flags.chmod, 8) : undefined;
  if (chmod !== undefined && (!/^[0-7]{3,4}$/.test(ins.flags.chmod!) || Number.isNaN(chmod))) throw new ImageError(`Dockerfile line ${ins.line}: --chmod takes octal permission bits`);
  const workdir = stage.config.config?.WorkingDir || '/';
  // (cleaned as Docker cleans it, before anything is resolved in the image)
  const destAbs = posix.normalize(posix.isAbsolute(dest) ? dest : posix.join(workdir, dest));

  // Where the sources are: the context, or the root of another stage (or image) mounted read-only.
  let fromRoot: FromRoot | null = null;
  if (from !== undefined) {
    const { layers, key } = await sourceOf(opts, from, stageByName);
    fromRoot = await mountFrom(opts.store, layers, key);
  } else if (urls.length > 0) {
    // (downloaded on every build, as Docker does; the key is what came)
    fromRoot = await downloadUrls(urls, dest.endsWith('/') || urls.length > 1, ins.line);
  } else if (docs.length > 0) {
    fromRoot = heredocFiles(docs, vars, esc, ins.line);
  }
  const downloaded = (fromRoot as (FromRoot & { names?: string[] }) | null)?.names;
  try {
    const root = fromRoot?.root ?? ctx.root;
    const srcCtx = fromRoot ? new BuildContext(root, null, true) : ctx;
    const rels = downloaded ?? srcs.flatMap((s) => srcCtx.resolveSource(fromRoot ? s.replace(/^\/+/, '') : s));
    const checksum = sourceChecksum(root, rels, (r) => srcCtx.listTree(r));
    // (with the words as variables made them: the same text may name other sources or another destination)
    const key = sha(`${stage.key}\n${ins.original}\n${JSON.stringify(list)}\n${expand(ins.flags.chown ?? '', vars, esc)}\n${fromRoot?.key ?? ''}\n${checksum}`);
    return await layerStep(opts, stage, ins, key, log, async (rec) => {
      const lowerdirs = await withStore(opts.store, async (st) => stage.layers.map((l) => st.layerDir(l)).reverse());
      if (lowerdirs.length === 0) {
        // scratch: an empty lower layer
        lowerdirs.push(join(rec.upper, '..', 'empty'));
        N.mkdirat(N.C.AT_FDCWD, lowerdirs[0]!, 0o755);
      }
      mountLayers({ lowerdirs, upper: rec.upper, work: rec.work, mountpoint: rec.merged });
      makeWorkdir(rec.merged, workdir);
      const rootFd = N.openat(N.C.AT_FDCWD, rec.merged, N.C.O_PATH | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0);
      try {
        const owner = ins.flags.chown !== undefined ? chownOf(rec.merged, expand(ins.flags.chown, vars, esc)) : { uid: 0, gid: 0 };
        const spec = { ...owner, ...(chmod !== undefined ? { mode: chmod } : {}) };
        const rel = destAbs.replace(/^\/+/, '');
        const single = rels.length === 1 && !lstatSync(join(root, rels[0]!)).isDirectory();
        const intoDir = dest.endsWith('/') || rels.length > 1 || !single || isDirIn(rootFd, rel);
        if (!single && rels.length > 1 && !dest.endsWith('/')) {
          throw new ImageError(`Dockerfile line ${ins.line}: with several sources the destination must be a directory (end it with /)`);
        }
        const listChildren = (abs: string): string[] => readdirSync(abs).sort().filter((n) => {
          const r = posix.relative(root, abs);
          return !srcCtx.excluded(r === '' ? n : `${r}/${n}`);
        });
        for (const r of rels) {
          const abs = join(root, r);
          const st = lstatSync(abs);
          // (a download or a here-document is not unpacked)
          const kind = ins.cmd === 'ADD' && !downloaded && st.isFile() ? archiveKind(abs) : null;
          if (kind) {
            await addArchive(abs, kind, rec.merged, rel);
            continue;
          }
          if (st.isDirectory()) {
            // a directory's contents go into the destination directory
            const dfd = ensureDir(rootFd, rel);
            try {
              for (const child of listChildren(abs)) copyInto(join(abs, child), dfd, child, spec, listChildren);
            } finally {
              N.close(dfd);
            }
          } else {
            const [dirRel, name] = intoDir ? [rel, posix.basename(r)] : [posix.dirname(rel), posix.basename(rel)];
            const dfd = ensureDir(rootFd, dirRel);
            try {
              copyInto(abs, dfd, name, spec, listChildren);
            } finally {
              N.close(dfd);
            }
          }
        }
      } finally {
        N.close(rootFd);
        await unmountIfMounted(rec.merged);
      }
    });
  } finally {
    await fromRoot?.cleanup();
  }
}

/**
 * COPY's (and ADD's) here-documents, as the files BuildKit makes of them: named after the document,
 * mode 0664 (--chmod applies on top), its lines with variables expanded unless the name was quoted.
 */
function heredocFiles(docs: NonNullable<Instruction['heredocs']>, vars: Map<string, string>, esc: string, line: number): FromRoot & { names: string[] } {
  const dir = mkdtempSync(join(tmpdir(), 'strata-heredoc-'));
  const names: string[] = [];
  try {
    for (const d of docs) {
      if (names.includes(d.name)) throw new ImageError(`Dockerfile line ${line}: two here-documents named ${d.name}`);
      const file = join(dir, d.name);
      writeFileSync(file, d.expand ? expand(d.body, vars, esc) : d.body, { mode: 0o664 });
      chmodSync(file, 0o664);
      names.push(d.name);
    }
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return { root: dir, key: '', names, cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * ADD's URLs, downloaded into a temporary directory as the files ADD copies: each named after the
 * last component of its URL's path, mode 0600 and modified at the Last-Modified time the server
 * gives (else at the epoch), as buildah makes them.
 */
async function downloadUrls(urls: readonly string[], named: boolean, line: number): Promise<FromRoot & { names: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-add-'));
  const cleanup = async (): Promise<void> => rmSync(dir, { recursive: true, force: true });
  const names: string[] = [];
  try {
    for (const url of urls) {
      const u = new URL(url);
      const base = decodeURIComponent(posix.basename(u.pathname));
      if (base === '' || base === '.' || base === '..' || base.includes('\0')) {
        if (named) throw new ImageError(`Dockerfile line ${line}: cannot tell a file name from ${url}: give the destination's file name`);
      }
      const name = base === '' || base === '.' || base === '..' ? 'download' : base;
      if (existsSync(join(dir, name))) throw new ImageError(`Dockerfile line ${line}: two URLs give the file name ${name}`);
      let res: Response;
      try {
        res = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(600_000) });
      } catch (e) {
        throw new ImageError(`Dockerfile line ${line}: cannot download ${url}: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`);
      }
      if (!res.ok || !res.body) throw new ImageError(`Dockerfile line ${line}: cannot download ${url}: HTTP ${res.status}`);
      const file = join(dir, name);
      await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), createWriteStream(file, { mode: 0o600 }));
      chmodSync(file, 0o600);
      // (no Last-Modified: the epoch, as buildah sets it)
      const modified = Date.parse(res.headers.get('last-modified') ?? '');
      const t = Number.isNaN(modified) ? 0 : modified / 1000;
      utimesSync(file, t, t);
      names.push(name);
    }
    return { root: dir, key: '', cleanup, names };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** --chown=USER[:GROUP], names looked up in the container's /etc/passwd and /etc/group. */
function chownOf(root: string, spec: string): { uid: number; gid: number } {
  const u = containerUser(root, spec);
  return { uid: u.uid, gid: u.gid };
}

/** What ADD unpacks: a gzip stream (taken for a tar) or a tar (ustar magic); null for any other file. */
function archiveKind(path: string): 'gzip' | 'tar' | null {
  const head = Buffer.alloc(512);
  const fd = N.openat(N.C.AT_FDCWD, path, N.C.O_RDONLY | N.C.O_CLOEXEC, 0);
  let n = 0;
  try {
    n = N.pread(fd, head, 0, 512, 0);
  } finally {
    N.close(fd);
  }
  if (n >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  return n >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar' ? 'tar' : null;
}

/**
 * ADD of a local tar (plain or gzip): unpacked into the destination inside the container by the
 * store's layer unpacker, every entry resolved beneath the destination without following symlinks
 * (neither the archive's nor the image's lead out); owners, modes and times as the archive has them.
 */
async function addArchive(archive: string, kind: 'gzip' | 'tar', merged: string, rel: string): Promise<void> {
  const { LayerUnpacker } = await import('../unpack.js');
  const { createReadStream } = await import('node:fs');
  const { createGunzip } = await import('node:zlib');
  const { pipeline } = await import('node:stream/promises');
  const rootFd = N.openat(N.C.AT_FDCWD, merged, N.C.O_PATH | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0);
  let dfd: number;
  try {
    dfd = ensureDir(rootFd, rel);
  } finally {
    N.close(rootFd);
  }
  try {
    const unpacker = new LayerUnpacker(dfd);
    try {
      const input = createReadStream(archive);
      if (kind === 'gzip') await pipeline(input, createGunzip({ chunkSize: 256 << 10 }), unpacker.sink);
      else await pipeline(input, unpacker.sink);
      unpacker.finish();
    } finally {
      unpacker.release();
    }
  } catch (e) {
    throw e instanceof ImageError ? e : new ImageError(`ADD: cannot unpack ${archive}: ${(e as Error).message}`);
  } finally {
    N.close(dfd);
  }
}
