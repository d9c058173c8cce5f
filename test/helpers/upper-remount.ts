// The kernel mounting an upper that strata wrote, against the kernel mounting its own upper (same
// steps, same lowers): the two views must agree in everything the kernel derives from the upper's
// xattrs (trusted.overlay.origin, impure), that is which real object each st_ino comes from, and in
// each view every readdir d_ino must equal lstat's st_ino. Inode numbers are compared as the
// layer object they belong to ("l0:d/f", "upper:x"), since the two sides have their own copies of
// the layers (on one filesystem, where the kernel's overlay reports real inode numbers).
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { crossFsOptions, kernelOverlay, unmountQuietly } from './mounts.js';
import { python, WALK } from './python.js';
import type { Checks } from './ops-checks.js';

export interface LayerStack {
  /** Top first. */
  lowers: readonly string[];
  upper: string;
  /** Names for the layers in labels (default l0.. for lowers top first, and "upper"). */
  names?: readonly string[];
}

type WalkOut = Array<[string, string | null, Array<[string, string, number, string]>]>;

/** Real inode number -> "layer:path" (the first path in sorted order for hard links). */
export function layerInodes(stack: LayerStack): Map<string, string> {
  const layers = [...stack.lowers, stack.upper];
  const names = stack.names ?? [...stack.lowers.map((_, i) => `l${i}`), 'upper'];
  const out = new Map<string, string>();
  layers.forEach((root, i) => {
    const stack2 = [''];
    const found: Array<[string, string]> = [];
    while (stack2.length) {
      const rel = stack2.pop()!;
      for (const name of fs.readdirSync(path.join(root, rel))) {
        const child = rel ? `${rel}/${name}` : name;
        const st = fs.lstatSync(path.join(root, child), { bigint: true });
        found.push([st.ino.toString(), child]);
        if (st.isDirectory()) stack2.push(child);
      }
    }
    found.push([fs.lstatSync(root, { bigint: true }).ino.toString(), '']);
    found.sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    for (const [ino, rel] of found) if (!out.has(ino)) out.set(ino, `${names[i]}:${rel}`);
  });
  return out;
}

export interface InodeView {
  /** path -> the layer object its st_ino is ("other" for none, an errno name when lstat failed). */
  objects: Record<string, string>;
  /** Entries whose readdir d_ino is not their st_ino. */
  dinoProblems: string[];
}

/** Walks a mounted view with raw readdir and lstat and names each st_ino by `inodes`. */
export function inodeView(mnt: string, inodes: Map<string, string>): InodeView {
  const walked = python<WalkOut>(WALK, null, [mnt]);
  const objects: Record<string, string> = {};
  const dinoProblems: string[] = [];
  for (const [dirHex, err, ents] of walked) {
    const dir = Buffer.from(dirHex, 'hex').toString();
    if (err) {
      objects[dir] = `readdir ${err}`;
      continue;
    }
    for (const [nameHex, dino, , stino] of ents) {
      const name = Buffer.from(nameHex, 'hex').toString();
      const rel = dir ? `${dir}/${name}` : name;
      objects[rel] = inodes.get(stino) ?? (/^\d+$/.test(stino) ? 'other' : stino);
      // (a name listed that lookup cannot find is the kernel's phantom whiteout, in an opaque lower
      // directory that merges with nothing: its objects entry, ENOENT, is compared instead)
      if (dino !== stino && stino !== 'ENOENT') dinoProblems.push(`${rel}: d_ino ${dino}, st_ino ${stino} (${objects[rel]})`);
    }
  }
  return { objects, dinoProblems };
}

/**
 * Mounts `stack` with the kernel's overlay (a fresh work dir under `scratch`, the mount options
 * `extra` as well: those the upper was written with), returns its inode view, unmounts.
 */
export function kernelInodeView(t: ExecutionContext, stack: LayerStack, scratch: string, inodes = layerInodes(stack), extra: readonly string[] = []): InodeView {
  fs.mkdirSync(scratch, { recursive: true });
  // The work directory goes on the upper's filesystem (a tmpfs of its own with upperOnTmpfs, ops-pair.ts).
  const cross = crossFsOptions(stack.upper, stack.lowers[0]!);
  const options = cross || extra.length ? [...extra, ...(cross ?? [])] : undefined;
  const work = fs.mkdtempSync(cross ? path.join(path.dirname(stack.upper), 'rw') : path.join(scratch, 'w'));
  const mnt = fs.mkdtempSync(path.join(scratch, 'm'));
  try {
    kernelOverlay(t, { lowers: stack.lowers, upper: stack.upper, work, mountpoint: mnt, options });
    return inodeView(mnt, inodes);
  } finally {
    unmountQuietly(mnt);
  }
}

/**
 * Case 8 of issue 10: the kernel over strata's upper against the kernel over its own upper (both
 * unmounted by their writers already): same layer object behind every st_ino, d_ino = st_ino.
 */
export function compareUpperRemounts(c: Checks, kernel: LayerStack, strata: LayerStack, scratch: string, who = 'strata', options: readonly string[] = []): void {
  const k = kernelInodeView(c.t, kernel, path.join(scratch, 'k'), undefined, options);
  const s = kernelInodeView(c.t, strata, path.join(scratch, 's'), undefined, options);
  c.none(k.dinoProblems, "the kernel over its own upper: readdir d_ino differs from st_ino (the oracle itself)");
  c.none(s.dinoProblems, `the kernel over ${who}'s upper: readdir d_ino differs from st_ino`);
  const diffs = [...new Set([...Object.keys(k.objects), ...Object.keys(s.objects)])]
    .sort()
    .filter((p) => k.objects[p] !== s.objects[p])
    .map((p) => `${p}: st_ino is ${s.objects[p] ?? 'missing'}, over the kernel's own upper ${k.objects[p] ?? 'missing'}`);
  c.none(diffs, `the kernel over ${who}'s upper: st_ino from other layer objects than over its own upper`);
}
