// `strata build [-t TAG]... [-f FILE] [--build-arg K=V]... [--no-cache] [--target STAGE] [-q] CONTEXT`:
// podman build's and docker build's flags. STEP lines and what RUN commands print go to stdout,
// the image ID last (alone with -q, apart from what RUN commands print).

import type { CommandModule } from 'yargs';
import { guarded, out, storeDirOf, storeOption } from './options.js';
import { type EnsureArgs, RUN_PULL_OPTIONS } from './registry.js';

export const BUILD_OPTIONS = {
  tag: { alias: 't', type: 'string', describe: 'NAME[:TAG] for the image (repeatable)' },
  file: { alias: 'f', type: 'string', describe: 'the Dockerfile (default CONTEXT/Dockerfile)' },
  'build-arg': { type: 'string', describe: 'KEY=VALUE for an ARG (repeatable; KEY alone: the environment\'s value)' },
  cache: { type: 'boolean', default: true, describe: 'take steps from the build cache (--no-cache: run every step)' },
  target: { type: 'string', describe: 'the stage to build (default: the last)' },
  quiet: { alias: 'q', type: 'boolean', default: false, describe: 'print only the image ID: no STEP lines, and what RUN prints only when it fails (on stderr)' },
  label: { type: 'string', describe: 'KEY=VALUE for the image\'s labels (repeatable)' },
  iidfile: { type: 'string', describe: 'write the image ID to this file' },
  secret: { type: 'string', describe: 'id=ID,src=FILE or id=ID,env=VAR: what RUN --mount=type=secret,id=ID mounts (repeatable)' },
  store: storeOption,
  pull: RUN_PULL_OPTIONS.pull,
  'tls-verify': RUN_PULL_OPTIONS['tls-verify'],
  'cert-dir': RUN_PULL_OPTIONS['cert-dir'],
  creds: RUN_PULL_OPTIONS.creds,
  authfile: RUN_PULL_OPTIONS.authfile,
} as const;

export const buildCommand: CommandModule = {
  command: 'build <context>',
  describe: 'build an image from a Dockerfile, with a build cache (FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ...)',
  builder: (y) => y.positional('context', { type: 'string', demandOption: true, describe: 'the build context directory' }).options(BUILD_OPTIONS),
  handler: guarded(async (argv) => {
    const a = argv as unknown as EnsureArgs & {
      context: string; tag?: string | string[]; file?: string; buildArg?: string | string[]; cache: boolean; target?: string; quiet: boolean; store?: string;
      secret?: string | string[]; label?: string | string[]; iidfile?: string;
    };

    const { parseSecretFlag } = await import('../image/build/run_mounts.js');
    const secrets = ([] as string[]).concat(a.secret ?? []).map(parseSecretFlag);
    const [{ normalizeTag }, { ImageError }, { buildImage }, { ensureImage }, { resolve }] = await Promise.all([
      import('../image/store.js'), import('../image/types.js'), import('../image/build/builder.js'), import('./registry.js'), import('node:path')]);
    const labels: Record<string, string> = {};
    for (const kv of ([] as string[]).concat(a.label ?? [])) {
      const i = kv.indexOf('=');
      if (i <= 0) throw new ImageError(`--label takes KEY=VALUE, not "${kv}"`, 2);
      labels[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const store = await storeDirOf(a);
    const buildArgs: Record<string, string> = {};
    for (const kv of ([] as string[]).concat(a.buildArg ?? [])) {
      const i = kv.indexOf('=');
      if (i === 0) throw new ImageError(`--build-arg takes KEY=VALUE, not "${kv}"`, 2);
      if (i > 0) buildArgs[kv.slice(0, i)] = kv.slice(i + 1);
      else if (process.env[kv] !== undefined) buildArgs[kv] = process.env[kv]!;
    }
    const r = await buildImage({
      store, context: resolve(a.context), ...(a.file !== undefined ? { dockerfile: resolve(a.file) } : {}),
      tags: ([] as string[]).concat(a.tag ?? []).map(normalizeTag), buildArgs,
      noCache: !a.cache, ...(a.target !== undefined ? { target: a.target } : {}),
      log: a.quiet ? () => {} : out,
      quiet: a.quiet,
      ensureImage: (ref) => ensureImage(store, ref, a),
      secrets,
      labels,
    });
    if (a.iidfile !== undefined) (await import('node:fs')).writeFileSync(a.iidfile, r.id);
    out(r.id);
    process.exit(0);
  }),
};
