// Readable comparisons of snapshots: the first differences, one per line, instead of a deepEqual dump.
import type { ExecutionContext } from 'ava';
import type { NodeInfo, Snapshot } from './snapshot.js';

export type Field = keyof NodeInfo;

export interface CompareOptions {
  /** Fields not to compare, everywhere; or a predicate (path, field) → ignore. */
  ignore?: readonly Field[] | ((path: string, field: Field, info: NodeInfo) => boolean);
  /** Paths (relative, '.' for the root) left out entirely, with whatever lies below them. */
  skipPaths?: readonly string[];
  /** How many differences to print (default 20). */
  limit?: number;
  /** Accept names that readdir lists but lookup cannot find (the kernel does this for whiteouts in single-layer directories). */
  allowPhantoms?: boolean;
  /** Label for the message, e.g. 'strata vs kernel'. */
  label?: string;
}

const FIELDS: Field[] = ['type', 'mode', 'uid', 'gid', 'size', 'nlink', 'rdev', 'sha256', 'target', 'xattrs', 'mtimeNs', 'ctimeNs', 'blocks'];

function show(v: unknown): string {
  if (v === undefined) return '(none)';
  if (typeof v === 'number') return Number.isInteger(v) && v > 7 ? `${v} (0o${v.toString(8)})` : String(v);
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s.length > 120 ? s.slice(0, 117) + '...' : s;
}

/** Every difference between two snapshots, as human-readable lines. */
export function diffSnapshots(actual: Snapshot, expected: Snapshot, opts: CompareOptions = {}): string[] {
  const diffs: string[] = [];
  const skip = (p: string): boolean => (opts.skipPaths ?? []).some((s) => p === s || p.startsWith(s + '/'));
  const ignored = (p: string, f: Field, info: NodeInfo): boolean =>
    typeof opts.ignore === 'function' ? opts.ignore(p, f, info) : (opts.ignore ?? []).includes(f);

  const all = [...new Set([...expected.nodes.keys(), ...actual.nodes.keys()])].sort();
  for (const p of all) {
    if (skip(p)) continue;
    const a = actual.nodes.get(p);
    const e = expected.nodes.get(p);
    if (!a) {
      diffs.push(`${p}: missing (expected ${e!.type})`);
      continue;
    }
    if (!e) {
      diffs.push(`${p}: unexpected ${a.type}`);
      continue;
    }
    for (const f of FIELDS) {
      if (ignored(p, f, e)) continue;
      const av = a[f];
      const ev = e[f];
      if (JSON.stringify(av) !== JSON.stringify(ev)) diffs.push(`${p}: ${f} is ${show(av)}, expected ${show(ev)}`);
    }
  }
  const dirs = [...new Set([...expected.listings.keys(), ...actual.listings.keys()])].sort();
  for (const d of dirs) {
    if (skip(d)) continue;
    const a = new Set(actual.listings.get(d) ?? []);
    const e = new Set(expected.listings.get(d) ?? []);
    const extra = [...a].filter((x) => !e.has(x));
    const missing = [...e].filter((x) => !a.has(x));
    if (extra.length || missing.length) {
      const fmt = (xs: string[]): string => xs.slice(0, 5).join(', ') + (xs.length > 5 ? `, ... (${xs.length})` : '');
      diffs.push(`readdir ${d}:${extra.length ? ` unexpected [${fmt(extra)}]` : ''}${missing.length ? ` missing [${fmt(missing)}]` : ''}`);
    }
  }
  if (!opts.allowPhantoms) for (const x of actual.phantoms) diffs.push(`readdir lists a name lookup cannot find: ${x}`);
  for (const x of actual.errors) diffs.push(`error: ${x}`);
  for (const x of expected.errors) diffs.push(`error in expected tree: ${x}`);
  return diffs;
}

/**
 * Passes if the snapshots agree; otherwise fails with the first differences, one per line.
 * Returns the number of differences.
 */
export function compareTrees(t: ExecutionContext, actual: Snapshot, expected: Snapshot, opts: CompareOptions = {}): number {
  const diffs = diffSnapshots(actual, expected, opts);
  const label = opts.label ?? `${actual.root} vs ${expected.root}`;
  if (diffs.length === 0) {
    t.pass(`${label}: ${expected.nodes.size} entries identical`);
  } else {
    const limit = opts.limit ?? 20;
    t.fail(
      `${label}: ${diffs.length} difference(s) over ${expected.nodes.size} expected entries:\n  ` +
        diffs.slice(0, limit).join('\n  ') +
        (diffs.length > limit ? `\n  ... and ${diffs.length - limit} more` : ''),
    );
  }
  return diffs.length;
}

/** Paths grouped by st_ino; only groups of two or more. */
export function sharedInodes(snap: Snapshot): string[][] {
  const byIno = new Map<bigint, string[]>();
  for (const [p, ino] of snap.inodes) byIno.set(ino, [...(byIno.get(ino) ?? []), p]);
  return [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort();
}

/** Paths whose readdir d_ino is not their st_ino. */
export function dinoDiffers(snap: Snapshot): Set<string> {
  return new Set([...snap.dinos].filter(([p, dino]) => snap.inodes.get(p) !== undefined && snap.inodes.get(p) !== dino).map(([p]) => p));
}

/**
 * Problems with inode numbers: shared st_ino between things that cannot be hardlinks, d_ino ≠ st_ino
 * (but for the paths of `dinoAsExpected`), several st_dev.
 */
export function inodeProblems(snap: Snapshot, dinoAsExpected: ReadonlySet<string> = new Set()): string[] {
  const problems: string[] = [];
  for (const group of sharedInodes(snap)) {
    const infos = group.map((p) => snap.nodes.get(p)!);
    const first = infos[0]!;
    const hardlinks = infos.every(
      (i) => i.type !== 'dir' && i.type === first.type && (i.nlink ?? 0) >= 2 && i.sha256 === first.sha256 && i.mode === first.mode,
    );
    if (!hardlinks) problems.push(`st_ino ${snap.inodes.get(group[0]!)} shared by ${group.join(', ')}`);
  }
  for (const [p, dino] of snap.dinos) {
    const ino = snap.inodes.get(p);
    if (ino !== undefined && ino !== dino && !dinoAsExpected.has(p)) problems.push(`${p}: readdir d_ino ${dino} but lstat st_ino ${ino}`);
  }
  if (snap.devs.size !== 1) problems.push(`${snap.devs.size} different st_dev values`);
  return problems;
}

/**
 * Distinct objects have distinct st_ino (hardlinks inside a layer may share one), readdir's d_ino
 * equals st_ino, and one st_dev. With `expected` (the kernel's view), the hardlink groups must also be
 * the same, and a d_ino the kernel's readdir also gives other than st_ino is no problem (a merged
 * directory made by hand in an upper is listed with its upper inode until its first lookup).
 */
export function assertUniqueInodes(t: ExecutionContext, snap: Snapshot, expected?: Snapshot): void {
  const problems = inodeProblems(snap, expected ? dinoDiffers(expected) : undefined);
  if (expected) {
    const a = JSON.stringify(sharedInodes(snap));
    const e = JSON.stringify(sharedInodes(expected));
    if (a !== e) problems.push(`paths sharing an inode: ${a}, expected ${e}`);
  }
  if (problems.length === 0) t.pass(`${snap.inodes.size} inode numbers consistent`);
  else t.fail(`inode numbers in ${snap.root}:\n  ${problems.slice(0, 20).join('\n  ')}${problems.length > 20 ? `\n  ... and ${problems.length - 20} more` : ''}`);
}
