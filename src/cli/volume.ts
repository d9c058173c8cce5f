// `strata volume create|ls|inspect|rm|prune`: the named volumes of the store (STORE/volumes/NAME/_data),
// which `run -v NAME:PATH` and `--mount type=volume,source=NAME` mount. Anonymous volumes live in
// their container's directory and go with it.

import type { Argv, CommandModule } from 'yargs';
import { guarded, out, storeDirOf, storeOption } from './options.js';

interface Args {
  store?: string;
  json?: boolean;
}

export const volumeCommand: CommandModule = {
  command: 'volume',
  describe: 'create, list, inspect and remove named volumes',
  handler: () => {},
  builder: (y: Argv) => y
    .option('store', storeOption)
    .command('create <name>', 'make a named volume (no error if it exists)', (c) => c.positional('name', { type: 'string', demandOption: true }),
      guarded(async (a) => {
        const args = a as unknown as Args & { name: string };
        const [{ withStore }, S] = await Promise.all([import('../image/store.js'), import('../image/settings.js')]);
        out((await withStore(await storeDirOf(args), async (s) => S.ensureVolume(s.root, args.name))).name);
        process.exit(0);
      }))
    .command(['ls', 'list'], 'list the named volumes', (c) => c.option('json', { type: 'boolean', default: false, describe: 'print JSON' })
      .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'names only' }),
    guarded(async (a) => {
      const args = a as unknown as Args & { quiet: boolean };
      const [{ withStore }, S] = await Promise.all([import('../image/store.js'), import('../image/settings.js')]);
      const vols = await withStore(await storeDirOf(args), async (s) => S.listVolumes(s.root));
      if (args.json) out(JSON.stringify(vols, null, 2));
      else if (args.quiet) { if (vols.length > 0) out(vols.map((v) => v.name).join('\n')); }
      else out(['DRIVER    VOLUME NAME', ...vols.map((v) => `local     ${v.name}`)].join('\n'));
      process.exit(0);
    }))
    .command('inspect <names..>', 'print the volumes as JSON (Name, Mountpoint, CreatedAt)', (c) => c.positional('names', { type: 'string', array: true, demandOption: true }),
      guarded(async (a) => {
        const args = a as unknown as Args & { names: string[] };
        const [{ withStore }, S, { ImageError }] = await Promise.all([import('../image/store.js'), import('../image/settings.js'), import('../image/types.js')]);
        const infos = await withStore(await storeDirOf(args), async (s) => args.names.map((n) => {
          const v = S.volumeInfo(s.root, n);
          if (!v) throw new ImageError(`no such volume: ${n}`);
          return { Name: v.name, Driver: 'local', Mountpoint: v.mountpoint, CreatedAt: v.created, Scope: 'local' };
        }));
        out(JSON.stringify(infos, null, 2));
        process.exit(0);
      }))
    .command(['rm <names..>', 'remove <names..>'], 'remove named volumes and their files (refused while a container uses one, unless --force)', (c) => c
      .positional('names', { type: 'string', array: true, demandOption: true })
      .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'also a volume that stopped containers use (never a running one\'s)' }),
    guarded(async (a) => {
      const args = a as unknown as Args & { names: string[]; force: boolean };
      const [{ withStore }, S, { isActive }, { ImageError }] = await Promise.all([
        import('../image/store.js'), import('../image/settings.js'), import('../image/lifecycle.js'), import('../image/types.js')]);
      await withStore(await storeDirOf(args), async (s) => {
        const containers = await s.listContainers();
        for (const n of args.names) {
          if (S.volumeInfo(s.root, n) === null) throw new ImageError(`no such volume: ${n}`);
          const users = S.volumeUsers(containers, n);
          const running = users.find((c) => isActive(c));
          if (running) throw new ImageError(`volume ${n} is in use by the running container ${running.name}`);
          if (users.length > 0 && !args.force) throw new ImageError(`volume ${n} is in use by container ${users[0]!.name}: remove it first, or rm -f`);
          S.removeVolume(s.root, n);
          out(n);
        }
      });
      process.exit(0);
    }))
    .command('prune', 'remove the named volumes no container uses', (c) => c,
      guarded(async (a) => {
        const args = a as unknown as Args;
        const [{ withStore }, S] = await Promise.all([import('../image/store.js'), import('../image/settings.js')]);
        await withStore(await storeDirOf(args), async (s) => {
          const containers = await s.listContainers();
          for (const v of S.listVolumes(s.root)) {
            if (S.volumeUsers(containers, v.name).length > 0) continue;
            S.removeVolume(s.root, v.name);
            out(v.name);
          }
        });
        process.exit(0);
      }))
    .demandCommand(1, 'give a subcommand: create, ls, inspect, rm or prune'),
};
