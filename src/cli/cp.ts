// `strata cp [-a] [-L] SRC DEST`: docker cp; one of SRC and DEST is CONTAINER:PATH (src/image/cp.ts).
// A running container is paused for the copy; one that is not is mounted for it. (Owners in a running
// container with a user namespace of its own: see the handler.)

import type { Argv, CommandModule } from 'yargs';
import { guarded, storeDirOf, storeOption } from './options.js';

export const CP_OPTIONS = {
  archive: { alias: 'a', type: 'boolean', default: false, describe: 'keep the owners (uid:gid) of the source; else root\'s' },
  'follow-link': { alias: 'L', type: 'boolean', default: false, describe: 'copy what SRC points to when it is a symlink' },
  store: storeOption,
} as const;

/** "NAME:PATH" → [NAME, PATH]; a path (absolute, ./..., or with a / before any colon) → null. */
function containerSide(arg: string): [string, string] | null {
  const i = arg.indexOf(':');
  if (i <= 0 || arg.slice(0, i).includes('/')) return null;
  return [arg.slice(0, i), arg.slice(i + 1) || '/'];
}

export const cpCommand: CommandModule = {
  command: 'cp <src> <dest>',
  describe: 'copy files between a container and the host (docker cp): CONTAINER:PATH on one side',
  builder: (y: Argv) => y.positional('src', { type: 'string', demandOption: true }).positional('dest', { type: 'string', demandOption: true }).options(CP_OPTIONS),
  handler: guarded(async (a) => {
    const args = a as unknown as { src: string; dest: string; archive: boolean; followLink: boolean; store?: string };
    const [{ withStore }, { ImageError }, { copyPaths }, { isActive, whilePaused }, { mountLayers, unmountIfMounted }, { resolve }, { mapId, settingsOf }] = await Promise.all([
      import('../image/store.js'), import('../image/types.js'), import('../image/cp.js'), import('../image/lifecycle.js'), import('../image/container.js'), import('node:path'),
      import('../image/settings.js')]);
    const from = containerSide(args.src);
    const to = containerSide(args.dest);
    if ((from === null) === (to === null)) throw new ImageError('give CONTAINER:PATH as the source or as the destination (not both, not neither)', 125);
    if (args.src === '-' || args.dest === '-') throw new ImageError('cp to or from a tar stream ("-") is not supported', 125);
    const [name, inside] = (from ?? to)!;
    const store = await storeDirOf(args);
    const { rec, lowerdirs } = await withStore(store, async (s) => {
      const r = await s.getContainer(name);
      return { rec: r, lowerdirs: r.layers.map((l) => s.layerDir(l)).reverse() };
    });
    // A running container with a user namespace of its own (--uidmap, --userns=auto) has its root
    // mounted with its owner mapping: the mount shows (and takes) the host's ids its ids map to. A copy
    // into it gets the ids the container would give it (its root's, or with -a the source's as the
    // container's ids), shown as the host's; one out of it with -a gets the container's ids back, as from
    // a stopped container's layers.
    const userns = rec.state === 'running' && isActive(rec) ? settingsOf(rec).userns : undefined;
    const into = to !== null;
    const mapOwner = userns && (into || args.archive)
      ? (o: { uid: number; gid: number }) => ({ uid: mapId(userns.uidMap, o.uid, into, 'uid', rec.name), gid: mapId(userns.gidMap, o.gid, into, 'gid', rec.name) })
      : undefined;
    const copy = (): void => {
      const c = { root: rec.merged, path: inside };
      // (resolved, keeping what the trailing characters say: "SRC/." its contents, "DEST/" a directory)
      const hostArg = from ? args.dest : args.src;
      const suffix = from ? (hostArg.endsWith('/') ? '/' : '') : (/\/\.$/.test(hostArg) ? '/.' : '');
      const h = { root: null, path: resolve(hostArg) + (resolve(hostArg) === '/' ? suffix.slice(1) : suffix) };
      copyPaths(from ? c : h, from ? h : c, { archive: args.archive, followLink: args.followLink, mapOwner });
    };
    if (rec.state === 'running' && isActive(rec)) {
      await whilePaused(rec, copy);
    } else {
      mountLayers({ lowerdirs, upper: rec.upper, work: rec.work, mountpoint: rec.merged });
      try {
        copy();
      } finally {
        await unmountIfMounted(rec.merged);
      }
    }
    process.exit(0);
  }),
};
