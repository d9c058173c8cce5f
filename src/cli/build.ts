// `strata build [-t TAG]... [-f FILE] [--build-arg K=V]... [--no-cache] [--target STAGE] [-q] CONTEXT`:
// podman build's and docker build's flags. STEP lines and what RUN commands print go to stdout,
// the image ID last (alone with -q, apart from what RUN commands print).

import type { CommandModule } from 'yargs';
import { type EnsureArgs, RUN_PULL_OPTIONS } from './registry.js';

export const BUILD_OPTIONS = {
  tag: { alias: 't', type: 'string', describe: 'NAME[:TAG] for the image (repeatable)' },
  file: { alias: 'f', type: 'string', describe: 'the Dockerfile (default CONTEXT/Dockerfile)' },
  'build-arg': { type: 'string', describe: 'KEY=VALUE for an ARG (repeatable; KEY alone: the environment\'s value)' },
  cache: { type: 'boolean', default: true, describe: 'take steps from the build cache (--no-cache: run every step)' },
  target: { type: 'string', describe: 'the stage to build (default: the last)' },
  quiet: { alias: 'q', type: 'boolean', default: false, describe: 'print no STEP lines' },
  store: { type: 'string', describe: 'the store directory (default $STRATA_STORE or /var/lib/strata)' },
  pull: RUN_PULL_OPTIONS.pull,
  'tls-verify': RUN_PULL_OPTIONS['tls-verify'],
  creds: RUN_PULL_OPTIONS.creds,
  authfile: RUN_PULL_OPTIONS.authfile,
} as const;

export const buildCommand: CommandModule = {
  command: 'build <context>',
  describe: 'build an image from a Dockerfile, with a build cache (FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, CMD, ...)',
  builder: (y) => y.positional('context', { type: 'string', demandOption: true, describe: 'the build context directory' }).options(BUILD_OPTIONS),
  handler: async (argv) => {
    const a = argv as unknown as EnsureArgs & {
      context: string; tag?: string | string[]; file?: string; buildArg?: string | string[]; cache: boolean; target?: string; quiet: boolean; store?: string;
    };
    try {
      const { storeDir } = await import('../image/store.js');
      const { ImageError } = await import('../image/types.js');
      const { buildImage } = await import('../image/build/builder.js');
      const { ensureImage } = await import('./registry.js');
      const { resolve } = await import('node:path');
      const store = storeDir(a.store);
      const buildArgs: Record<string, string> = {};
      for (const kv of ([] as string[]).concat(a.buildArg ?? [])) {
        const i = kv.indexOf('=');
        if (i === 0) throw new ImageError(`--build-arg takes KEY=VALUE, not "${kv}"`, 2);
        if (i < 0) {
          if (process.env[kv] !== undefined) buildArgs[kv] = process.env[kv]!;
        } else {
          buildArgs[kv.slice(0, i)] = kv.slice(i + 1);
        }
      }
      const { normalizeTag } = await import('../image/store.js');
      const tags = ([] as string[]).concat(a.tag ?? []).map(normalizeTag);
      const r = await buildImage({
        store, context: resolve(a.context), ...(a.file !== undefined ? { dockerfile: resolve(a.file) } : {}), tags, buildArgs,
        noCache: !a.cache, ...(a.target !== undefined ? { target: a.target } : {}),
        log: a.quiet ? () => {} : (line) => process.stdout.write(`${line}\n`),
        ensureImage: (ref) => ensureImage(store, ref, a),
      });
      process.stdout.write(`${r.id}\n`);
      process.exit(0);
    } catch (e) {
      const err = e as { message?: string; exitCode?: number };
      process.stderr.write(`strata: ${(err.message ?? String(e)).split('\n')[0]}\n`);
      process.exit(typeof err.exitCode === 'number' ? err.exitCode : 1);
    }
  },
};
