// RUN --mount of a build (BuildKit's syntax, as podman build takes it), made with the mounts of
// `strata run` (src/image/settings.ts):
//   type=bind    a path of the context (default) or of another stage or image (from=), read-only
//                unless rw (then a copy, whose changes are dropped); the context's .dockerignore applies
//   type=cache   a directory kept between builds in STORE/build-mounts/ (id=, else the target), mode=,
//                uid=, gid= when it is made
//   type=tmpfs   an empty tmpfs (size=)
//   type=secret  a --secret of the build (id=, required=), as a read-only file, default
//                /run/secrets/ID, mode= (0400), uid=, gid=
// None of them is in the step's layer: their mount points, when the step made them, are taken out of
// it again. The step's cache key covers what a bind shows (checksum, or the stage's key); caches and
// secrets are not in it, as with Docker.

import { createHash } from 'node:crypto';
import { chownSync, chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import * as N from '../../native/index.js';
import { mountLayers, unmountIfMounted } from '../container.js';
import { IN_ROOT } from '../inroot.js';
import { type MountSpec, mountFields } from '../settings.js';
import { withStore } from '../store.js';
import { ImageError } from '../types.js';
import { BuildContext, copyInto, sourceChecksum } from './context.js';

const { C } = N;

/** A build's --secret: id=ID,src=FILE (or type=file), or id=ID,env=VAR (type=env). */
export interface BuildSecret {
  id: string;
  file?: string;
  env?: string;
}

export function parseSecretFlag(spec: string): BuildSecret {
  const kv = new Map<string, string>();
  for (const field of spec.split(',')) {
    const i = field.indexOf('=');
    if (i < 0) throw new ImageError(`--secret ${spec}: expected id=ID,src=FILE or id=ID,env=VAR`, 2);
    kv.set(field.slice(0, i), field.slice(i + 1));
  }
  const id = kv.get('id');
  const src = kv.get('src') ?? kv.get('source');
  const env = kv.get('env');
  const type = kv.get('type');
  if (!id || !/^[A-Za-z0-9_.-]+$/.test(id)) throw new ImageError(`--secret ${spec}: give id= (letters, digits, _ . -)`, 2);
  for (const k of kv.keys()) if (!['id', 'src', 'source', 'env', 'type'].includes(k)) throw new ImageError(`--secret ${spec}: unsupported field "${k}"`, 2);
  if (type === 'env' || (env !== undefined && src === undefined)) {
    const v = env ?? src ?? id;
    return { id, env: v };
  }
  if (type !== undefined && type !== 'file') throw new ImageError(`--secret ${spec}: type is file or env`, 2);
  const file = src ?? id;
  try {
    if (!statSync(file).isFile()) throw new Error('not a file');
  } catch (e) {
    throw new ImageError(`--secret ${spec}: ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 2);
  }
  return { id, file };
}

/** A stage or image's root mounted read-only (COPY --from, RUN --mount from=). */
export interface FromRoot {
  root: string;
  /** What its content is known by (the stage's key, the image's ID). */
  key: string;
  cleanup: () => Promise<void>;
}

export async function mountFrom(store: string, layers: readonly string[], key: string): Promise<FromRoot> {
  const dirs = await withStore(store, async (st) => layers.map((l) => st.layerDir(l)).reverse());
  // (not in the store's tmp/, which every open of the store empties)
  const mnt = mkdtempSync(join(tmpdir(), 'strata-from-'));
  if (dirs.length > 0) mountLayers({ lowerdirs: dirs, mountpoint: mnt });
  return {
    root: mnt, key,
    cleanup: async () => {
      await unmountIfMounted(mnt).catch(() => {});
      rmSync(mnt, { recursive: true, force: true });
    },
  };
}

export interface RunMounts {
  mounts: MountSpec[];
  /** For the step's cache key. */
  key: string;
  cleanup: () => Promise<void>;
}

export interface RunMountEnv {
  store: string;
  ctx: BuildContext;
  secrets: readonly BuildSecret[];
  /** The layers and key of a stage or image named by from= (pulled if need be). */
  source: (from: string) => Promise<{ layers: string[]; key: string }>;
  /** The stage's working directory (relative targets). */
  workdir: string;
  line: number;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** The mounts of a RUN's --mount flags (`values` already expanded). */
export async function runMounts(values: readonly string[], env: RunMountEnv): Promise<RunMounts> {
  const mounts: MountSpec[] = [];
  const keys: string[] = [];
  const cleanups: (() => Promise<void>)[] = [];
  const bad = (v: string, why: string): never => {
    throw new ImageError(`Dockerfile line ${env.line}: --mount=${v}: ${why}`);
  };
  const cleanup = async (): Promise<void> => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  };
  try {
    for (const value of values) {
      const kv = mountFields(value, (k) => bad(value, `"${k}" given twice`));
      const type = kv.get('type') ?? 'bind';
      const allowed: Record<string, string[]> = {
        bind: ['type', 'target', 'source', 'from', 'readonly', 'rw'],
        cache: ['type', 'target', 'id', 'sharing', 'mode', 'uid', 'gid', 'readonly'],
        tmpfs: ['type', 'target', 'size'],
        secret: ['type', 'target', 'id', 'required', 'mode', 'uid', 'gid'],
      };
      if (!allowed[type]) bad(value, `type ${type} is not supported (bind, cache, tmpfs, secret)`);
      for (const k of kv.keys()) if (!allowed[type]!.includes(k)) bad(value, `"${k}" is not supported with type=${type}`);
      const flag = (k: string): boolean => {
        const v = kv.get(k);
        if (v === undefined) return false;
        if (v === 'true' || v === '1') return true;
        if (v === 'false' || v === '0') return false;
        return bad(value, `${k} takes true or false`);
      };
      const num = (k: string, dflt: number, base = 10): number => {
        const v = kv.get(k);
        if (v === undefined) return dflt;
        if (!(base === 8 ? /^[0-7]{1,4}$/ : /^[0-9]+$/).test(v)) bad(value, `${k} takes a ${base === 8 ? 'mode in octal' : 'number'}`);
        return parseInt(v, base);
      };
      let target = kv.get('target');
      if (type === 'secret') {
        const id = kv.get('id') ?? (target ? posix.basename(target) : undefined);
        if (!id) bad(value, 'give id= or target=');
        target ??= `/run/secrets/${id}`;
        const secret = env.secrets.find((s) => s.id === id);
        const data = secret?.file !== undefined ? null : secret?.env !== undefined ? process.env[secret.env] : undefined;
        if (!secret || (secret.env !== undefined && data === undefined)) {
          if (flag('required')) bad(value, `no --secret id=${id!} was given`);
          continue;
        }
        // a copy with the mode and owner asked for, read-only in the container
        const dir = mkdtempSync(join(tmpdir(), 'strata-secret-'));
        cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
        chmodSync(dir, 0o700);
        const file = join(dir, 'secret');
        writeFileSync(file, secret.file !== undefined ? readFileSync(secret.file) : data!, { mode: 0o600 });
        chownSync(file, num('uid', 0), num('gid', 0));
        chmodSync(file, num('mode', 0o400, 8));
        mounts.push({ type: 'bind', source: file, target: absTarget(target!, env.workdir), readonly: true });
        continue;
      }
      if (target === undefined || target === '') bad(value, 'give target=');
      const abs = absTarget(target!, env.workdir);
      if (type === 'tmpfs') {
        const size = kv.get('size');
        if (size !== undefined && !/^[0-9]+[kmgKMG]?$/.test(size)) bad(value, 'size takes bytes (k, m, g)');
        mounts.push({ type: 'tmpfs', target: abs, readonly: false, ...(size !== undefined ? { tmpfsOptions: `size=${size}` } : {}) });
      } else if (type === 'cache') {
        const id = kv.get('id') ?? abs;
        const [uid, gid, mode] = [num('uid', 0), num('gid', 0), num('mode', 0o755, 8)];
        const dir = join(env.store, 'build-mounts', sha(id));
        mkdirSync(join(env.store, 'build-mounts'), { recursive: true, mode: 0o700 });
        let made = true;
        try {
          mkdirSync(dir, { mode: 0o700 });
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
          made = false;
        }
        // (mode, uid and gid apply when the cache is made, as BuildKit's)
        if (made) {
          chownSync(dir, uid, gid);
          chmodSync(dir, mode);
        }
        mounts.push({ type: 'bind', source: dir, target: abs, readonly: flag('readonly') });
      } else {
        // bind: the context, or a stage's or image's root
        const rw = flag('rw');
        if (kv.has('readonly') && rw) bad(value, 'readonly and rw together');
        const source = kv.get('source') ?? '/';
        const from = kv.get('from');
        if (from !== undefined) {
          if (rw) bad(value, 'rw with from= is not supported');
          const { layers, key } = await env.source(from);
          const fr = await mountFrom(env.store, layers, key);
          cleanups.push(fr.cleanup);
          mounts.push({ type: 'bind', source: resolveIn(fr.root, source, value, env.line), target: abs, readonly: true });
          keys.push(`bind ${abs} from ${key}:${source}`);
        } else {
          const rel = contextPath(env.ctx, source, value, env.line);
          const checksum = sourceChecksum(env.ctx.root, [rel], (r) => env.ctx.listTree(r));
          keys.push(`bind ${abs} ${rw ? 'rw' : 'ro'} ${checksum}`);
          // A copy of what the context holds there, minus what .dockerignore excludes (as BuildKit
          // sends it); the container's changes to it (rw) are dropped with it.
          const dir = mkdtempSync(join(tmpdir(), 'strata-bind-'));
          cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
          const dfd = N.openat(C.AT_FDCWD, dir, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
          const listChildren = (absPath: string): string[] => {
            const r = posix.relative(env.ctx.root, absPath);
            return readdirSync(absPath).sort().filter((n) => !env.ctx.excluded(r === '' ? n : `${r}/${n}`));
          };
          try {
            copyInto(join(env.ctx.root, rel), dfd, 'src', { uid: 0, gid: 0 }, listChildren);
          } finally {
            N.close(dfd);
          }
          mounts.push({ type: 'bind', source: join(dir, 'src'), target: abs, readonly: !rw });
        }
      }
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { mounts, key: keys.join('\n'), cleanup };
}

function absTarget(target: string, workdir: string): string {
  return posix.normalize(posix.isAbsolute(target) ? target : posix.join(workdir, target)).replace(/(.)\/$/, '$1');
}

/** A context path for a bind: resolved beneath the context without following any symlink (as COPY's sources). */
function contextPath(ctx: BuildContext, source: string, value: string, line: number): string {
  try {
    const [rel] = ctx.resolveSource(source === '/' ? '.' : source);
    return rel!;
  } catch (e) {
    throw new ImageError(`Dockerfile line ${line}: --mount=${value}: ${(e as Error).message.replace(/^COPY\/ADD source/, 'source')}`);
  }
}

/** A path inside a stage's root, symlinks followed inside it; its host path. */
function resolveIn(root: string, source: string, value: string, line: number): string {
  const rootFd = N.openat(C.AT_FDCWD, root, C.O_PATH | C.O_DIRECTORY | C.O_CLOEXEC, 0);
  let fd = -1;
  try {
    const rel = posix.normalize(`/${source}`).slice(1);
    fd = N.openat2(rootFd, rel === '' ? '.' : rel, C.O_PATH | C.O_CLOEXEC, 0, IN_ROOT);
    return N.readlinkat(C.AT_FDCWD, `/proc/self/fd/${fd}`);
  } catch (e) {
    throw new ImageError(`Dockerfile line ${line}: --mount=${value}: source ${source}: ${(e as Error).message}`);
  } finally {
    if (fd >= 0) N.close(fd);
    N.close(rootFd);
  }
}
