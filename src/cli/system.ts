// `strata system df` and `strata system prune`: docker's summary of what the store holds, and its
// clean-up of everything nothing uses (stopped containers, unused images, build cache; volumes with
// --volumes).

import type { Argv, CommandModule } from 'yargs';
import { columns, guarded, out, storeDirOf, storeOption } from './options.js';

interface Args {
  store?: string;
}

export const systemCommand: CommandModule = {
  command: 'system',
  describe: 'what the store holds (df) and its clean-up (prune)',
  handler: () => {},
  builder: (y: Argv) => y
    .option('store', storeOption)
    .command('df', 'images, containers, volumes and build cache: how many, their size, what is in use', (c) => c,
      guarded(async (a) => {
        const [{ withStore, dirBytes }, { isActive }, S, { humanSize }, { join }] = await Promise.all([
          import('../image/store.js'), import('../image/lifecycle.js'), import('../image/settings.js'), import('./image.js'), import('node:path')]);
        const rows = await withStore(await storeDirOf(a as Args), async (s) => {
          const images = await s.listImages();
          const containers = await s.listContainers();
          const used = new Set(containers.map((c) => c.image));
          const layerBytes = dirBytes(join(s.root, 'layers'));
          const volumes = S.listVolumes(s.root);
          const volumeUsers = volumes.filter((v) => S.volumeUsers(containers, v.name).length > 0);
          return [
            ['Images', images.length, images.filter((i) => used.has(i.id)).length, layerBytes],
            ['Containers', containers.length, containers.filter((c) => isActive(c)).length, containers.reduce((n, c) => n + dirBytes(c.upper), 0)],
            ['Local Volumes', volumes.length, volumeUsers.length, volumes.reduce((n, v) => n + dirBytes(v.mountpoint), 0)],
            ['Build Cache', 0, 0, dirBytes(join(s.root, 'build-mounts'))],
          ] as [string, number, number, number][];
        });
        const table = [['TYPE', 'TOTAL', 'ACTIVE', 'SIZE'], ...rows.map(([t, n, act, b]) => [t, String(n), String(act), humanSize(b, 4)])];
        out(columns(table));
        process.exit(0);
      }))
    .command('prune', 'remove stopped containers, images no container uses (-a: tagged ones too), build cache mounts; --volumes: unused volumes', (c) => c
      .option('all', { alias: 'a', type: 'boolean', default: false, describe: 'tagged images too' })
      .option('volumes', { type: 'boolean', default: false, describe: 'named volumes no container uses too' })
      .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'accepted for docker compatibility (strata does not ask)' }),
    guarded(async (a) => {
      const args = a as unknown as Args & { all: boolean; volumes: boolean };
      const [{ withStore }, { isActive }, S, { humanSize }, { rmSync }, { join }] = await Promise.all([
        import('../image/store.js'), import('../image/lifecycle.js'), import('../image/settings.js'), import('./image.js'), import('node:fs'), import('node:path')]);
      await withStore(await storeDirOf(args), async (s) => {
        for (const c of await s.listContainers()) {
          if (isActive(c)) continue;
          try {
            out(`Deleted container: ${(await s.removeContainer(c.id)).id}`);
          } catch (e) {
            process.stderr.write(`strata: ${(e as Error).message}\n`);
          }
        }
        if (args.volumes) {
          const containers = await s.listContainers();
          for (const v of S.listVolumes(s.root)) {
            if (S.volumeUsers(containers, v.name).length > 0) continue;
            S.removeVolume(s.root, v.name);
            out(`Deleted volume: ${v.name}`);
          }
        }
        const r = await s.prune({ all: args.all });
        for (const i of r.images) out(`Deleted image: ${i}`);
        for (const l of r.layers) out(`Deleted layer: ${l}`);
        // (RUN --mount=type=cache directories; the layer cache goes with the layers it names)
        rmSync(join(s.root, 'build-mounts'), { recursive: true, force: true });
        out(`Total reclaimed space: ${humanSize(r.bytes, 4)}`);
      });
      process.exit(0);
    }))
    .demandCommand(1, 'give a subcommand: df or prune'),
};
