// `strata commit CONTAINER|MNT NAME:TAG`: the upper's changes become a new layer on top of the
// image the container (or mount) was made from. The upper is written as an OCI layer tar
// (changes.ts) straight into the store's addLayer, which stores the blob, verifies and unpacks
// it into a layer of its own; the new image's chain is the parent's chain plus that layer, so
// the parent's layers are shared, not copied. Nothing is recorded unless every step succeeded.

import { PassThrough } from 'node:stream';
import { packTree, treeBytes } from './changes.js';
import { imageWithChain, resolveTarget } from './container.js';
import { containerLabels, settingsOf } from './settings.js';
import type { ContainerRecord, ImageRecord, LayerRecord, Store } from './store.js';
import { type ImageConfig, ImageError } from './types.js';

/** What a progress bar offers (src/cli/progress.ts); the image code draws nothing itself. */
export interface Progress {
  tick(n: number): void;
  stop(): void;
}

export interface CommitOptions {
  message?: string;
  author?: string;
  /** --change: config instructions (CMD, ENV, ...) applied to the new image's config. */
  changes?: string[];
  /** A progress display over `total` bytes (the upper's file sizes), ticked as the layer tar is written. */
  progress?: (total: number) => Promise<Progress>;
}

export interface CommitResult {
  image: ImageRecord;
  layer: LayerRecord;
  parent: ImageRecord;
}

/**
 * What a container ran with, for its commit's config, as docker and podman keep it: the environment
 * (the image's, then -e), Entrypoint and Cmd (as the container had them), the working directory,
 * user and labels given to it.
 */
function containerRunConfig(config: ImageConfig, rec: ContainerRecord): NonNullable<ImageConfig['config']> {
  const settings = settingsOf(rec);
  const env = [...(config.config?.Env ?? [])];
  for (const kv of settings.env ?? []) {
    const i = env.findIndex((e) => e.split('=')[0] === kv.split('=')[0]);
    if (i >= 0) env[i] = kv;
    else env.push(kv);
  }
  const entrypoint = rec.entrypoint as string[] | undefined;
  const cmd = rec.cmd as string[] | undefined;
  return {
    ...(env.length > 0 ? { Env: env } : {}),
    ...(entrypoint !== undefined ? { Entrypoint: entrypoint.length > 0 ? entrypoint : null } : {}),
    ...(cmd !== undefined ? { Cmd: cmd.length > 0 ? cmd : null } : {}),
    ...(settings.workdir !== undefined ? { WorkingDir: settings.workdir } : {}),
    ...(typeof rec.user === 'string' ? { User: rec.user } : {}),
    ...(settings.stopSignal !== undefined ? { StopSignal: settings.stopSignal } : {}),
    ...(settings.labels !== undefined ? { Labels: containerLabels(config, settings) } : {}),
  };
}

/** Docker's form of a history entry's created_by for a run command: "/bin/sh -c ..." stays as is. */
function createdBy(command: string[] | null): string {
  return command ? command.join(' ') : 'strata commit';
}

export async function commitChanges(store: Store, ref: string, tag: string, opts: CommitOptions = {}): Promise<CommitResult> {
  const target = await resolveTarget(store, ref);
  if (!target.upper) throw new ImageError(`${ref} is a read-only mount: it has no changes to commit`);
  if (!target.chain) throw new ImageError(`${ref} is not a mount of store layers: its lower directories are not an image's layers`);
  let parent: ImageRecord | undefined;
  if (target.container) parent = await store.findImage(target.container.image);
  parent ??= await imageWithChain(store, target.chain);
  if (!parent || JSON.stringify(parent.layers) !== JSON.stringify(target.chain)) {
    throw new ImageError(`the image ${target.container?.imageRef ?? ''} that ${ref} was made from is no longer in the store`.replace('  ', ' '));
  }
  let runConfig = target.container ? containerRunConfig(parent.config, target.container) : undefined;
  if (opts.changes && opts.changes.length > 0) {
    const { applyConfigChanges } = await import('./build/builder.js');
    runConfig = await applyConfigChanges({ ...parent.config, config: { ...(parent.config.config ?? {}), ...runConfig } }, opts.changes);
  }
  const bar = opts.progress ? await opts.progress(treeBytes(target.upper)) : null;
  const pipe = new PassThrough({ highWaterMark: 1 << 20 });
  const packing = packTree(target.upper, pipe, { layer: true, gzip: false, onBytes: bar ? (n) => bar.tick(n) : undefined });
  let layer: LayerRecord;
  try {
    [layer] = await Promise.all([
      store.addLayer(parent.layers.at(-1) ?? null, pipe).catch((e: unknown) => {
        pipe.destroy(e as Error);
        throw e;
      }),
      packing,
    ]);
  } catch (e) {
    pipe.destroy();
    throw e;
  } finally {
    bar?.stop();
  }
  const packed = await packing;
  if (packed.diffId !== layer.diffId) throw new ImageError(`the store read another layer (${layer.diffId}) than was written (${packed.diffId})`);
  const image = await store.writeChildImage({
    parent,
    layer,
    history: {
      created_by: createdBy(target.command),
      ...(opts.message ? { comment: opts.message } : {}),
      ...(opts.author ? { author: opts.author } : {}),
    },
    author: opts.author,
    ...(runConfig ? { runConfig } : {}),
    tags: [tag],
  });
  return { image, layer, parent };
}
