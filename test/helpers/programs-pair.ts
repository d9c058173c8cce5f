// Real programs on a union mount, measured against the kernel: one lower tree built twice
// (identical contents, owners, modes, xattrs and nanosecond times), a fresh upper for each side.
// The program runs under the kernel's overlayfs, then under strata, both mounted in turn at the
// same path (so that absolute paths a program writes into its files are the same); then the
// kernel mounts strata's upper at that path again. Exit codes, output, merged trees, lookups of
// every lower name, the two uppers and the untouched lowers are compared.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { compareTrees, assertUniqueInodes, type Field } from './compare.js';
import { run, type RunResult } from './exec.js';
import { materializeLayer, type Layer } from './layers.js';
import { kernelOverlay, mountAt, strataMount, strataUnmount, underTest, unmountQuietly } from './mounts.js';
import { layerPaths, lookup } from './oracle.js';
import { snapshot, type NodeInfo, type Snapshot } from './snapshot.js';
import { tempDir } from './tmp.js';

export interface Side {
  lower: string;
  upper: string;
  work: string;
}

export interface ProgramsPair {
  base: string;
  /** The one mount point both sides use in turn. */
  mnt: string;
  kernel: Side;
  strata: Side;
  /** Environment for the programs: fixed HOME, locale, time zone, git identities and dates. */
  env: NodeJS.ProcessEnv;
}

/** Builds `layer` twice (`prepare` then runs on each copy) and a shared mount point. */
export function setupPrograms(t: ExecutionContext, layer: Layer, prepare?: (lower: string) => void): ProgramsPair {
  const base = tempDir(t, 'p');
  fs.chmodSync(base, 0o755);
  const side = (name: string): Side => {
    const dir = path.join(base, name);
    const s = { lower: path.join(dir, 'l'), upper: path.join(dir, 'u'), work: path.join(dir, 'w') };
    fs.mkdirSync(dir);
    materializeLayer(s.lower, layer, 1);
    prepare?.(s.lower);
    fs.mkdirSync(s.upper);
    fs.mkdirSync(s.work);
    return s;
  };
  const home = path.join(base, 'home');
  fs.mkdirSync(home);
  const mnt = path.join(base, 'm');
  fs.mkdirSync(mnt);
  const date = '2021-02-03T04:05:06Z';
  const env: NodeJS.ProcessEnv = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    LC_ALL: 'C',
    TZ: 'UTC',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_AUTHOR_NAME: 'Strata Test',
    GIT_AUTHOR_EMAIL: 'test@strata.invalid',
    GIT_AUTHOR_DATE: date,
    GIT_COMMITTER_NAME: 'Strata Test',
    GIT_COMMITTER_EMAIL: 'test@strata.invalid',
    GIT_COMMITTER_DATE: date,
    // reproducible .pyc files (checked-hash, no source mtime inside)
    SOURCE_DATE_EPOCH: '1600000000',
    // the lower project belongs to another user
    GIT_CONFIG_COUNT: '1',
    GIT_CONFIG_KEY_0: 'safe.directory',
    GIT_CONFIG_VALUE_0: '*',
  };
  return { base, mnt, kernel: side('k'), strata: side('s'), env };
}

export interface ProgramRun {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface SideResult {
  run: ProgramRun;
  merged: Snapshot;
  /** lstat outcome of every name of the lower (and the extra probes) */
  lookups: Record<string, string>;
}

export interface PairResult {
  kernel: SideResult;
  strata: SideResult;
  /** The kernel's overlayfs over strata's upper, at the same mount point. */
  kernelOnStrataUpper: Snapshot;
}

export interface ProgramOptions {
  /** Extra names (relative to the mount) whose lookup must agree. */
  probes?: readonly string[];
  /** Per path, fields that legitimately differ between the two runs (e.g. git's index holds st_ino). */
  differs?: Record<string, readonly Field[]>;
  timeoutMs?: number;
}

/**
 * Appended to every script: how many names find sees (it trusts directory link counts for its
 * leaf optimization) and how many distinct inodes the non-directories have (du, tar and cp -a
 * take equal st_ino for hard links).
 */
const POSTLUDE = `
echo "names: $(find . | wc -l), non-directory inodes: $(find . ! -type d -printf '%i\\n' | sort -u | wc -l)"`;

function runScript(pair: ProgramsPair, script: string, timeoutMs: number): ProgramRun {
  const r: RunResult = run('bash', ['-c', `set -e -o pipefail\n${script}\n${POSTLUDE}`], { cwd: pair.mnt, env: pair.env, timeoutMs });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function lookups(root: string, names: readonly string[]): Record<string, string> {
  return Object.fromEntries(names.map((n) => [n, lookup(root, n)]));
}

/** Runs `script` (bash, cwd = the mount) on the kernel's overlay, then on strata; see the file comment. */
export function runOnBoth(t: ExecutionContext, pair: ProgramsPair, script: string, opts: ProgramOptions = {}): PairResult {
  const timeoutMs = opts.timeoutMs ?? 180_000;
  const probes = [...new Set([...layerPaths([pair.kernel.lower]), ...(opts.probes ?? [])])];
  const { mnt } = pair;

  kernelOverlay(t, { lowers: [pair.kernel.lower], upper: pair.kernel.upper, work: pair.kernel.work, mountpoint: mnt });
  const kernel: SideResult = { run: runScript(pair, script, timeoutMs), merged: snapshot(mnt), lookups: lookups(mnt, probes) };
  unmountQuietly(mnt);
  if (mountAt(mnt)) throw new Error(`the kernel overlay at ${mnt} did not go away`);

  strataMount(t, { lowers: [pair.strata.lower], upper: pair.strata.upper, work: pair.strata.work, mountpoint: mnt });
  const strata: SideResult = { run: runScript(pair, script, timeoutMs), merged: snapshot(mnt), lookups: lookups(mnt, probes) };
  strataUnmount(mnt);
  t.is(mountAt(mnt), undefined, `${underTest().name} still mounted at ${mnt} after unmounting`);

  const xwork = path.join(pair.base, 'xw');
  fs.mkdirSync(xwork);
  kernelOverlay(t, { lowers: [pair.strata.lower], upper: pair.strata.upper, work: xwork, mountpoint: mnt });
  const kernelOnStrataUpper = snapshot(mnt);
  unmountQuietly(mnt);
  return { kernel, strata, kernelOnStrataUpper };
}

/** Times at or after this were made by the test run, not by the layer builder. */
export function recentNs(startMs: number): bigint {
  return BigInt(startMs - 2_000) * 1_000_000n;
}

/**
 * What may differ between two runs of the same program on different mounts: ctime always; mtime
 * where the expected side made it during the run (the actual side must then be recent too,
 * checked by checkRecent); a directory's size and block count (the upper filesystem's business);
 * the fields listed per path in `differs`.
 */
export type IgnoreFn = (path: string, field: Field, info: NodeInfo) => boolean;

export function runIgnore(since: bigint, differs: Record<string, readonly Field[]> = {}): IgnoreFn {
  return (p: string, f: Field, info: NodeInfo) => {
    if (f === 'ctimeNs') return true;
    if (f === 'mtimeNs' && BigInt(info.mtimeNs) >= since) return true;
    if ((f === 'size' || f === 'blocks') && info.type === 'dir') return true;
    return differs[p]?.includes(f) ?? false;
  };
}

export function isWhiteout(n: NodeInfo): boolean {
  return n.type === 'chardev' && n.rdev === '0:0';
}

/** Where the expected tree has a time made during the run, the actual one must have one too. */
export function checkRecent(t: ExecutionContext, actual: Snapshot, expected: Snapshot, since: bigint, label: string): void {
  const bad: string[] = [];
  for (const [p, e] of expected.nodes) {
    const a = actual.nodes.get(p);
    if (a && BigInt(e.mtimeNs) >= since && BigInt(a.mtimeNs) < since) bad.push(`${p}: mtime ${a.mtimeNs} is old, expected a time of the run`);
  }
  t.deepEqual(bad.slice(0, 20), [], `${label}: times set during the run (${bad.length} differ)`);
}

/** The same snapshot without overlay-private xattrs other than the opaque marker (the kernel adds origin, impure, uuid). */
export function withoutPrivateXattrs(s: Snapshot): Snapshot {
  const nodes = new Map<string, NodeInfo>();
  const keep = (name: string): boolean => !/^(trusted|user)\.overlay\./.test(name) || /^(trusted|user)\.overlay\.opaque$/.test(name);
  for (const [p, n] of s.nodes) nodes.set(p, { ...n, xattrs: Object.fromEntries(Object.entries(n.xattrs).filter(([k]) => keep(k))) });
  return { ...s, nodes };
}

/**
 * The standard comparison of one program run: exit status and output, merged trees, inode
 * groups, lookups, the kernel on strata's upper, the uppers, the lowers untouched. `lowerBefore`
 * are snapshots of the two lowers taken before runOnBoth.
 */
export function compareRuns(
  t: ExecutionContext,
  pair: ProgramsPair,
  res: PairResult,
  since: bigint,
  lowerBefore: { kernel: Snapshot; strata: Snapshot },
  opts: ProgramOptions = {},
): void {
  const name = underTest().name;
  const { kernel: k, strata: s } = res;
  t.is(k.run.status, 0, `the program failed on the kernel's overlay (so the scenario proves nothing):\n${k.run.stderr}`);
  t.deepEqual(s.run, k.run, `${name}: exit status and output differ from the kernel's`);

  const ignore = runIgnore(since, opts.differs);
  compareTrees(t, s.merged, k.merged, { label: `${name} vs kernel overlayfs, merged`, ignore });
  checkRecent(t, s.merged, k.merged, since, `${name} vs kernel overlayfs`);
  assertUniqueInodes(t, s.merged, k.merged);

  const diffs = Object.keys(k.lookups).filter((p) => k.lookups[p] !== s.lookups[p]).map((p) => `${p}: ${s.lookups[p]}, kernel ${k.lookups[p]}`);
  t.deepEqual(diffs.slice(0, 20), [], `lookups of the lower's names differ (${diffs.length} of ${Object.keys(k.lookups).length})`);

  // The very same files, read by the kernel: only inode numbers may differ (not compared here),
  // and directories' ctime and blocks, since the kernel writes trusted.overlay.* xattrs on them
  // (uuid on the root at mount, impure on merged directories).
  compareTrees(t, res.kernelOnStrataUpper, s.merged, {
    label: `kernel overlayfs on ${name}'s upper vs ${name}`,
    ignore: (_p, f, info) => info.type === 'dir' && (f === 'ctimeNs' || f === 'blocks'),
  });

  // In the uppers, a whiteout's owner and link count mean nothing: the kernel links all its
  // whiteouts to one inode made in the work dir (root-owned), strata makes each one.
  const uk = withoutPrivateXattrs(snapshot(pair.kernel.upper));
  const us = withoutPrivateXattrs(snapshot(pair.strata.upper));
  compareTrees(t, us, uk, {
    label: `${name}'s upper vs the kernel's upper`,
    ignore: (p, f, info) => (isWhiteout(info) && (f === 'nlink' || f === 'uid' || f === 'gid')) || ignore(p, f, info),
  });

  compareTrees(t, snapshot(pair.kernel.lower), lowerBefore.kernel, { label: 'kernel side lower after the run' });
  compareTrees(t, snapshot(pair.strata.lower), lowerBefore.strata, { label: `${name} side lower after the run` });
}

/** Runs the script on both and compares everything; returns the results for extra checks. */
export function programOnBoth(t: ExecutionContext, pair: ProgramsPair, script: string, opts: ProgramOptions = {}): PairResult {
  const since = recentNs(Date.now());
  const lowerBefore = { kernel: snapshot(pair.kernel.lower), strata: snapshot(pair.strata.lower) };
  const res = runOnBoth(t, pair, script, opts);
  compareRuns(t, pair, res, since, lowerBefore, opts);
  return res;
}
