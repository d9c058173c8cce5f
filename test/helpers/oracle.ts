// The central comparison: the same layers mounted by the kernel's overlayfs and by strata,
// compared entry by entry (attributes, contents, xattrs, listings, lookups of every name any
// layer holds), inode numbers checked, and the layers checked unchanged afterwards.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './exec.js';
import { assertUniqueInodes, compareTrees, inodeProblems, type CompareOptions } from './compare.js';
import { OCI_WHITEOUT_PREFIX } from './layers.js';
import { absBytes } from './names.js';
import { kernelOverlay, strataMount, strataUnmount, underTest, unmountQuietly } from './mounts.js';
import { walkDirs } from './oci.js';
import { snapshot, typeOf, type Snapshot } from './snapshot.js';

export interface UnionSpec {
  /** Layers for strata, top first. */
  lowers: readonly string[];
  /** Layers for the kernel when they differ (OCI layers converted by ociToKernel). */
  kernelLowers?: readonly string[];
  /** Optional upper directory (given to strata as is; the kernel gets a copy). */
  upper?: string;
  strataArgs?: readonly string[];
  kernelOptions?: readonly string[];
  compare?: CompareOptions;
  /** Extra relative paths whose lookup result must agree. */
  probes?: readonly string[];
}

export interface UnionResult {
  strata: Snapshot;
  kernel: Snapshot;
}

/** Outcome of lstat of `rel` (a key, see names.ts): the type, or the error code. */
export function lookup(root: string, rel: string): string {
  try {
    return typeOf(fs.lstatSync(absBytes(root, rel)));
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

/** Every relative path present in any of the layers, plus the names OCI whiteouts refer to. */
export function layerPaths(layers: readonly string[]): string[] {
  const out = new Set<string>();
  for (const layer of layers) {
    walkDirs(layer, (rel, names) => {
      for (const n of names) {
        out.add(rel ? `${rel}/${n}` : n);
        if (n.startsWith(OCI_WHITEOUT_PREFIX)) {
          const hidden = n.slice(OCI_WHITEOUT_PREFIX.length);
          out.add(rel ? `${rel}/${hidden}` : hidden);
        }
      }
    });
  }
  return [...out].sort();
}

/**
 * Mounts both, compares them, checks inode numbers and lookups, unmounts both and checks that
 * no layer changed. Each part is its own assertion, so one report shows every kind of failure.
 */
export function compareWithKernel(t: ExecutionContext, spec: UnionSpec): UnionResult {
  const layersToWatch = [...spec.lowers, ...(spec.kernelLowers ?? []), ...(spec.upper ? [spec.upper] : [])];
  const before = layersToWatch.map((l) => snapshot(l));

  let kernelUpper: string | undefined;
  let kernelWork: string | undefined;
  let strataWork: string | undefined;
  if (spec.upper) {
    const base = path.dirname(spec.upper);
    kernelUpper = path.join(base, 'ku');
    runOk('cp', ['-a', '--', spec.upper, kernelUpper]);
    kernelWork = fresh(path.join(base, 'kw'));
    strataWork = fresh(path.join(base, 'sw'));
  }
  const kmnt = kernelOverlay(t, { lowers: spec.kernelLowers ?? spec.lowers, upper: kernelUpper, work: kernelWork, options: spec.kernelOptions });
  const smnt = strataMount(t, { lowers: spec.lowers, upper: spec.upper, work: strataWork, extraArgs: spec.strataArgs });

  const kernel = snapshot(kmnt);
  const strata = snapshot(smnt);
  const kernelInodes = inodeProblems(kernel);
  if (kernelInodes.length) t.log(`note: the kernel oracle itself has inode oddities: ${kernelInodes.slice(0, 5).join('; ')}`);

  // ctime cannot be set: it is comparable only when the kernel reads the very same files.
  const real = (ls: readonly string[]): string => ls.map((l) => fs.realpathSync(l)).join(':');
  const sameFiles = !spec.upper && real(spec.lowers) === real(spec.kernelLowers ?? spec.lowers);
  compareTrees(t, strata, kernel, {
    label: `${underTest().name} vs kernel overlayfs`,
    ...(sameFiles ? {} : { ignore: ['ctimeNs'] }),
    ...spec.compare,
  });
  assertUniqueInodes(t, strata, kernel);

  const probes = [...new Set([...layerPaths(spec.lowers), ...(spec.upper ? layerPaths([spec.upper]) : []), ...(spec.probes ?? [])])];
  const lookupDiffs: string[] = [];
  for (const p of probes) {
    const k = lookup(kmnt, p);
    const s = lookup(smnt, p);
    if (k !== s) lookupDiffs.push(`${p}: ${s}, kernel ${k}`);
  }
  t.deepEqual(lookupDiffs.slice(0, 20), [], `lookups of ${probes.length} names from the layers differ (${lookupDiffs.length} in all)`);

  strataUnmount(smnt);
  unmountQuietly(kmnt);
  const after = layersToWatch.map((l) => snapshot(l));
  before.forEach((b, i) => {
    const layer = layersToWatch[i]!;
    // (an upper may change by lookups alone, as the kernel's own copy of it did: an origin on a merged
    // directory made by hand, see README; those lower layers are the same files, so are the handles)
    if (layer === spec.upper) {
      const kernelLeft = snapshot(kernelUpper!);
      // (the upper root's overlay.uuid: random, but there on both or on neither)
      for (const snap of [kernelLeft, after[i]!]) {
        for (const node of snap.nodes.values()) if (node.xattrs['trusted.overlay.uuid'] !== undefined) node.xattrs['trusted.overlay.uuid'] = '(16 bytes)';
      }
      compareTrees(t, after[i]!, kernelLeft, { label: `upper ${layer} after unmounting, as the kernel left its copy`, ignore: ['ctimeNs'] });
    } else {
      compareTrees(t, after[i]!, b, { label: `layer ${layer} after unmounting` });
    }
  });
  return { strata, kernel };
}

function fresh(p: string): string {
  fs.mkdirSync(p);
  return p;
}
