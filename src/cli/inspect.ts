// `strata inspect` (docker inspect: containers and images), `strata container inspect`, and the
// subset of Go templates that `--format` takes here: `{{.Path.To.Field}}` and `{{json .Path}}`
// (a field that is an object or array prints as JSON, strings as they are), with any text between.

import type { Argv, CommandModule } from 'yargs';
import type { ContainerRecord, Store } from '../image/store.js';
import { guarded, out, storeDirOf, storeOption } from './options.js';

/** docker inspect's view of a container: state, config, mounts, the overlay directories. */
export async function containerView(store: Store, rec: ContainerRecord): Promise<Record<string, unknown>> {
  const [{ isActive, containerInit }, { containerLabels, settingsOf, volumeDir, SHM_SIZE_DEFAULT }] = await Promise.all([import('../image/lifecycle.js'), import('../image/settings.js')]);
  const settings = settingsOf(rec);
  const image = await store.findImage(rec.image);
  const cfg = image?.config.config ?? {};
  const running = rec.state === 'running' && isActive(rec);
  const env = [...(cfg.Env ?? []), ...(settings.env ?? [])];
  return {
    Id: rec.id,
    Name: rec.name,
    Created: rec.created,
    Path: rec.command?.[0] ?? '',
    Args: rec.command?.slice(1) ?? [],
    State: {
      Status: running ? (rec.paused === true ? 'paused' : 'running') : rec.state === 'starting' && isActive(rec) ? 'starting' : rec.state === 'created' ? 'created' : 'exited',
      Running: running,
      Paused: running && rec.paused === true,
      Pid: running ? containerInit(rec) ?? 0 : 0,
      ExitCode: rec.exitCode ?? 0,
      OOMKilled: !running && rec.oomKilled === true,
      StartedAt: rec.started ?? '',
      FinishedAt: rec.finished ?? '',
      ...(rec.health !== undefined ? { Health: rec.health } : {}),
    },
    Image: rec.image,
    ImageName: rec.imageRef,
    Config: {
      Hostname: settings.hostname ?? rec.name.slice(0, 63),
      User: (rec.user as string | undefined) ?? cfg.User ?? '',
      Env: env,
      Cmd: rec.command ?? [],
      WorkingDir: settings.workdir ?? cfg.WorkingDir ?? '',
      StopSignal: settings.stopSignal ?? cfg.StopSignal ?? '',
      ...(settings.stopTimeout !== undefined ? { StopTimeout: settings.stopTimeout } : {}),
      Labels: containerLabels(image?.config, settings),
      // (the image's, with run's --health-* over it)
      ...(cfg.Healthcheck !== undefined || settings.healthcheck !== undefined
        ? { Healthcheck: { ...((cfg.Healthcheck as object | undefined) ?? {}), ...(settings.healthcheck ?? {}) } } : {}),
    },
    RestartCount: (rec.restartCount as number | undefined) ?? 0,
    HostConfig: {
      AutoRemove: settings.autoRemove ?? false, NetworkMode: settings.network ?? 'host', ReadonlyRootfs: settings.readOnly ?? false,
      RestartPolicy: { Name: settings.restart?.name ?? 'no', MaximumRetryCount: settings.restart?.max ?? 0 },
      Privileged: settings.privileged ?? false, CapAdd: settings.capAdd ?? null, CapDrop: settings.capDrop ?? null, Init: settings.init ?? false,
      ShmSize: settings.shmSize ?? SHM_SIZE_DEFAULT,
      // (docker's: 0 where there is no limit)
      Memory: settings.resources?.memory ?? 0, MemorySwap: settings.resources?.memorySwap ?? 0,
      NanoCpus: settings.resources?.nanoCpus ?? 0, CpuShares: settings.resources?.cpuShares ?? 0,
      PidsLimit: settings.resources?.pidsLimit ?? 0,
      // (podman's: "private" and the ranges with --uidmap, else the host's)
      UsernsMode: settings.userns ? (settings.userns.auto ? 'auto' : 'private') : '',
      IDMappings: settings.userns ? { UidMap: settings.userns.uidMap.map((r) => r.join(':')), GidMap: settings.userns.gidMap.map((r) => r.join(':')) } : {},
    },
    Mounts: (settings.mounts ?? []).map((m) => ({
      Type: m.type,
      ...(m.type === 'volume' ? { Name: m.source } : {}),
      Source: m.type === 'bind' ? m.source : m.type === 'volume' ? volumeDir(store.root, rec, m) : '',
      Destination: m.target,
      RW: !m.readonly,
    })),
    GraphDriver: {
      Name: 'strata',
      Data: { LowerDir: rec.layers.map((l) => store.layerDir(l)).reverse().join(':'), UpperDir: rec.upper, WorkDir: rec.work, MergedDir: rec.merged },
    },
    LogPath: (await import('../image/lifecycle.js')).logPath(rec),
  };
}

/** Applies a --format template to one object (see the header). */
export function applyFormat(format: string, value: unknown): string {
  return format.replace(/\{\{\s*(json\s+)?(\.[A-Za-z0-9_.]*)\s*\}\}/g, (_m, json: string | undefined, path: string) => {
    let v: unknown = value;
    for (const part of path.split('.').filter(Boolean)) {
      v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[part] : undefined;
    }
    if (json) return JSON.stringify(v ?? null);
    if (v === undefined || v === null) return '<no value>';
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
  }).replace(/\\n/g, '\n').replace(/\\t/g, '\t');
}

export function checkFormat(format: string): void {
  const rest = format.replace(/\{\{\s*(json\s+)?(\.[A-Za-z0-9_.]*)\s*\}\}/g, '');
  if (rest.includes('{{') || rest.includes('}}')) {
    throw Object.assign(new Error(`--format ${format}: only {{.Field.Path}} and {{json .Field}} are supported`), { exitCode: 125 });
  }
}

interface InspectArgs {
  store?: string;
  names: string[];
  type?: string;
  format?: string;
}

/** Containers, then images, by each name; prints a JSON array, or each object through --format. */
export async function inspect(args: InspectArgs, only?: 'container' | 'image'): Promise<void> {
  if (args.format !== undefined) checkFormat(args.format);
  const [{ withStore }, { ImageError }, { inspectView }] = await Promise.all([import('../image/store.js'), import('../image/types.js'), import('./image.js')]);
  const type = only ?? args.type;
  if (type !== undefined && type !== 'container' && type !== 'image') throw new ImageError(`--type takes container or image, not "${type}"`, 125);
  const views = await withStore(await storeDirOf(args), async (s) => {
    const list: Record<string, unknown>[] = [];
    const containers = type === 'image' ? [] : await s.listContainers();
    for (const n of args.names) {
      const rec = containers.find((c) => c.name === n || c.id === n) ?? (/^[0-9a-f]{3,64}$/.test(n) ? onlyOne(containers.filter((c) => c.id.startsWith(n))) : undefined);
      if (rec) {
        list.push(await containerView(s, rec));
        continue;
      }
      const img = type === 'container' ? null : await s.findImage(n);
      if (!img) throw new ImageError(`no such ${type ?? 'object'}: ${n}`);
      list.push(inspectView(s, img));
    }
    return list;
  });
  if (args.format !== undefined) out(views.map((v) => applyFormat(args.format!, v)).join('\n'));
  else out(JSON.stringify(views, null, 2));
}

function onlyOne<T>(xs: T[]): T | undefined {
  return xs.length === 1 ? xs[0] : undefined;
}

export const INSPECT_OPTIONS = {
  type: { type: 'string', describe: 'container or image (default: a container of that name, else an image)' },
  format: { alias: 'f', type: 'string', describe: 'a template per object: {{.State.Pid}}, {{json .Config.Env}}, text between' },
  store: storeOption,
} as const;

export const inspectCommand: CommandModule = {
  command: 'inspect <names..>',
  describe: 'print containers and images as JSON (docker inspect); --format for fields',
  builder: (y: Argv) => y.positional('names', { type: 'string', array: true, demandOption: true }).options(INSPECT_OPTIONS),
  handler: guarded(async (a) => {
    await inspect(a as unknown as InspectArgs);
    process.exit(0);
  }),
};
