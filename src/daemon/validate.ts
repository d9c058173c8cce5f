// Checks made before anything is created or mounted (the kernel's ovl_get_layers and friends):
// every layer is an existing directory, no layer is given twice, the work directory shares the
// upper's filesystem and subtree rules.

import { realpathSync, statSync, readFileSync, type Stats } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { UsageError, type MountParams } from '../union/params.js';

export class SetupError extends Error {
  readonly exitCode = 1;
}

export interface ResolvedLayout {
  mountpoint: string;
  lowerdirs: string[];
  /** Data-only lower layers (MountParams.datadirs), resolved. */
  datadirs: string[];
  upperdir: string | null;
  workdir: string | null;
}

function resolveDir(what: string, path: string): [string, Stats] {
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    throw new UsageError(`${what} "${path}" does not exist`);
  }
  const st = statSync(real);
  if (!st.isDirectory()) throw new UsageError(`${what} "${path}" is not a directory`);
  return [real, st];
}

/** Is path `child` the path `parent` or below it (both absolute, resolved)? */
export function inside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith('/') ? parent : parent + '/');
}

/**
 * `path` made absolute with its symlinks resolved as far as it exists; the part that does not exist
 * yet follows as given. (A file the daemon would create through a symlink into its own mount point must
 * be seen to lie inside it.)
 */
export function resolveExisting(path: string): string {
  let head = resolve(path);
  const rest: string[] = [];
  for (;;) {
    try {
      return join(realpathSync(head), ...rest);
    } catch {
      const up = dirname(head);
      if (up === head) return resolve(path);
      rest.unshift(basename(head));
      head = up;
    }
  }
}

/** Decodes the octal escapes of /proc/self/mountinfo fields. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export interface MountinfoEntry {
  mountpoint: string;
  /** "major:minor" of the mounted filesystem. */
  dev: string;
  fstype: string;
}

/** Every mount of this namespace, in mount order (from /proc/self/mountinfo). */
export function mountinfo(): MountinfoEntry[] {
  const out: MountinfoEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'latin1').split('\n')) {
    const f = line.split(' ');
    if (f.length < 10) continue;
    out.push({ mountpoint: unescapeMountinfo(f[4]!), dev: f[2]!, fstype: f[f.indexOf('-') + 1] ?? '' });
  }
  return out;
}

/** Mount points currently mounted. */
export function mountedPaths(): Set<string> {
  return new Set(mountinfo().map((m) => m.mountpoint));
}

export function validateLayout(params: MountParams, mountpointArg: string): ResolvedLayout {
  const [mountpoint] = resolveDir('mount point', mountpointArg);
  const lowers = params.lowerdirs.map((d) => resolveDir('lower directory', d));
  const datas = params.datadirs.map((d) => resolveDir('data-only lower directory', d));
  const upper = params.upperdir ? resolveDir('upper directory', params.upperdir) : null;
  const work = params.workdir ? resolveDir('work directory', params.workdir) : null;

  const layers: [string, string, Stats][] = lowers.map(([p, st], i) => [`lower directory ${i + 1} "${params.lowerdirs[i]}"`, p, st]);
  if (upper) layers.unshift([`upper directory "${params.upperdir}"`, upper[0], upper[1]]);
  layers.push(...datas.map(([p, st], i): [string, string, Stats] => [`data-only lower directory ${i + 1} "${params.datadirs[i]}"`, p, st]));

  for (let i = 0; i < layers.length; i++) {
    for (let j = i + 1; j < layers.length; j++) {
      const [na, pa, sa] = layers[i]!;
      const [nb, pb, sb] = layers[j]!;
      if (pa === pb || (sa.dev === sb.dev && sa.ino === sb.ino)) throw new UsageError(`${na} and ${nb} are the same directory`);
    }
  }
  // The mount point may be a layer, lie inside one or hold one, as on the kernel's overlay (an overlay
  // over its own lower directory makes it writable in place): the daemon reaches every layer through
  // descriptors and private mounts taken before the mount covers them (see startMount).
  if (upper && work) {
    if (upper[1].dev !== work[1].dev) {
      throw new UsageError(`work directory "${params.workdir}" is on another filesystem than upper directory "${params.upperdir}"`);
    }
    if (inside(work[0], upper[0]) || inside(upper[0], work[0])) {
      throw new UsageError('the work directory and the upper directory must be separate subtrees');
    }
    for (const [name, path] of layers.slice(1)) {
      if (inside(work[0], path)) throw new UsageError(`the work directory is inside ${name}`);
    }
  }
  if (mountedPaths().has(mountpoint)) throw new SetupError(`"${mountpointArg}" is already a mount point`);
  return { mountpoint, lowerdirs: lowers.map(([p]) => p), datadirs: datas.map(([p]) => p), upperdir: upper?.[0] ?? null, workdir: work?.[0] ?? null };
}
