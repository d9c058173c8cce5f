// Where the things under test live, seen from dist/test/helpers/.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const strataBin = path.join(repoRoot, 'bin', 'strata');
/** The mount(8) helper; `make install` copies it to /sbin/mount.fuse.strata. */
export const mountHelper = path.join(repoRoot, 'bin', 'mount.fuse.strata');
export const examplesDir = path.join(repoRoot, 'examples');
