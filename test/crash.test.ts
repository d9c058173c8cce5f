// Crash safety of copy-up: the daemon is SIGKILLed at random moments while it copies large lower
// files up; after `strata umount` clears the dead mount, the upper must hold only complete files
// (the lower version, or the lower version plus the finished change), the kernel's overlayfs must
// mount that upper and read the same, the lowers must be untouched, and the next strata mount must
// work and empty the work directory. The same with metacopy=on: chmod and utimes make metadata-only
// copies, appends fill them in place (data, sync, then the marker removed). Also: a volatile mount's marker and --force.
//
// CRASH_SEED=n reruns one sequence of delays and changes; CRASH_ITERATIONS=n changes the loop length.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, sleep, waitFor } from './helpers/exec.js';
import { rng } from './helpers/generators.js';
import { materializeLayer } from './helpers/layers.js';
import { kernelOverlay, unmountQuietly } from './helpers/mounts.js';
import { strataBin } from './helpers/paths.js';
import { isAlive, processesTagged } from './helpers/processes.js';
import { tempDir } from './helpers/tmp.js';
import { isMounted, killDaemon, mountTagged, startChanges, type ChangeOp } from './helpers/crash-daemon.js';
import { buildBigLower, inspect, publicXattrs, type BigLower, type Entry } from './helpers/crash-inspect.js';
import type crypto from 'node:crypto';

const ITERATIONS = Number(process.env.CRASH_ITERATIONS ?? 15);
const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
/** 16 files, 1.3 GiB: a copy-up with fsync takes 60-200 ms here, so 0-300 ms delays land inside them. */
const SIZES_MIB = Array.from({ length: 16 }, (_, i) => [48, 64, 96, 128, 80][i % 5]!);
const MAX_DELAY_MS = 300;

/** What the merged view must show for one file (the model), and where it lives. */
interface FileState {
  rel: string;
  lowerIno: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: Record<string, string>;
  /** running sha256 of the current content (never finalized) */
  hash: crypto.Hash;
  /** the upper copy as last seen (st_ino, st_ctime), once there is one */
  upper?: { ino: string; ctimeNs: string };
  /** that copy is a metadata-only one (metacopy=on): its data is still the lower file's */
  meta?: boolean;
}

const METACOPY = 'trusted.overlay.metacopy';

const digest = (h: crypto.Hash, extra = ''): string => h.copy().update(extra).digest('hex');
const short = (s: string | undefined): string => (s ? s.slice(0, 12) : '(none)');
const oct = (m: number): string => `0o${m.toString(8)}`;

function shuffle<T>(r: () => number, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

/** lstat of every entry of the lower: anything that writes to it changes ctime at least. */
function statTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string): void => {
    const st = fs.lstatSync(path.join(root, rel), { bigint: true });
    out.set(rel || '.', [st.ino, st.size, st.mode, st.uid, st.gid, st.mtimeNs, st.ctimeNs, st.nlink].join(' '));
    if (st.isDirectory()) for (const n of fs.readdirSync(path.join(root, rel)).sort()) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  return out;
}

/**
 * A merged view (strata's or the kernel's) against the model: the same names, and for every file
 * the size, mode, owner, mtime, xattrs and the content where it was hashed. With `inodes`, a file
 * whose st_ino is not the lower's (strata keeps it across copy-up and remounts) is noted there,
 * once per file: that is reported apart, so the loop goes on testing the data.
 */
function checkMerged(
  label: string,
  view: Map<string, Entry>,
  lower: BigLower,
  files: Map<string, FileState>,
  inodes?: Map<string, string>,
): string[] {
  const problems: string[] = [];
  const expected = new Set(['.', ...lower.dirs.map((d) => d.rel), ...files.keys()]);
  for (const k of view.keys()) if (!expected.has(k)) problems.push(`${label}: unexpected entry ${k} (${view.get(k)!.type})`);
  for (const d of lower.dirs) {
    const e = view.get(d.rel);
    if (!e) problems.push(`${label}: directory ${d.rel} missing`);
    else if (e.type !== 'dir' || e.mode !== d.mode || e.uid !== d.uid || e.gid !== d.gid || JSON.stringify(e.xattrs) !== JSON.stringify(d.xattrs)) {
      problems.push(`${label}: directory ${d.rel} is ${e.type} ${oct(e.mode)} ${e.uid}:${e.gid} ${JSON.stringify(e.xattrs)}, expected dir ${oct(d.mode)} ${d.uid}:${d.gid} ${JSON.stringify(d.xattrs)}`);
    }
  }
  for (const f of files.values()) {
    const e = view.get(f.rel);
    if (!e) {
      problems.push(`${label}: ${f.rel} missing`);
      continue;
    }
    const want = { type: 'file', size: f.size, mode: oct(f.mode), owner: `${f.uid}:${f.gid}`, mtimeNs: String(f.mtimeNs), xattrs: JSON.stringify(f.xattrs) };
    const got = { type: e.type, size: e.size, mode: oct(e.mode), owner: `${e.uid}:${e.gid}`, mtimeNs: e.mtimeNs, xattrs: JSON.stringify(e.xattrs) };
    for (const k of Object.keys(want) as (keyof typeof want)[]) {
      if (want[k] !== got[k]) problems.push(`${label}: ${f.rel}: ${k} is ${got[k]}, expected ${want[k]}`);
    }
    if (e.sha256 !== undefined && e.sha256 !== digest(f.hash)) {
      problems.push(`${label}: ${f.rel}: content sha256 ${short(e.sha256)}, expected ${short(digest(f.hash))}`);
    }
    if (inodes && e.ino !== f.lowerIno && !inodes.has(f.rel)) {
      inodes.set(f.rel, `${label}: ${f.rel}: st_ino ${e.ino}, expected the lower's ${f.lowerIno}${f.upper ? ` (copied up, upper st_ino ${f.upper.ino})` : ''}`);
    }
  }
  return problems;
}

interface Outcome {
  rel: string;
  op: ChangeOp;
  /** 0, errno, or null */
  exit: number | null;
  /** the file was only in the lower before: the change needed a copy-up */
  fresh: boolean;
  /** what the upper showed afterwards: no copy, the previous version, the previous version changed */
  result: 'lower' | 'unchanged' | 'changed' | 'bad';
}

/**
 * The upper after a crash: only directories of the lower (with their attributes) and complete
 * files. A file that was asked to change is either exactly as before or exactly as before plus
 * the change; a change whose process saw success must be there; files nobody touched are as
 * they were (same st_ino and st_ctime); no file that was in the upper disappears.
 */
function checkUpper(
  upper: string,
  mnt: string,
  lower: BigLower,
  files: Map<string, FileState>,
  changes: readonly ChangeOp[],
  exits: readonly (number | null)[],
): { problems: string[]; outcomes: Outcome[] } {
  const problems: string[] = [];
  const outcomes: Outcome[] = [];
  const byRel = new Map(changes.map((c, i) => [path.relative(mnt, c.path), i]));
  const view = inspect(upper, [...byRel.keys()]);
  // (a metadata-only copy, metacopy=on, reads its data from the lower file, which no change touches: a
  // data copy in place keeps the marker until the data is complete and synced)
  const lowerSha = new Map(lower.files.map((f) => [f.rel, f.sha256]));
  for (const [k, e] of view) if (e.type === 'file' && METACOPY in e.xattrs && e.sha256 !== undefined) e.sha256 = lowerSha.get(k) ?? 'no lower data';
  const dirs = new Map(lower.dirs.map((d) => [d.rel, d]));
  for (const [k, e] of view) {
    if (k === '.') continue;
    const d = dirs.get(k);
    if (d) {
      if (e.type !== 'dir' || e.mode !== d.mode || e.uid !== d.uid || e.gid !== d.gid || JSON.stringify(publicXattrs(e.xattrs)) !== JSON.stringify(d.xattrs)) {
        problems.push(`upper: directory ${k} is ${e.type} ${oct(e.mode)} ${e.uid}:${e.gid} ${JSON.stringify(e.xattrs)}, expected ${oct(d.mode)} ${d.uid}:${d.gid} ${JSON.stringify(d.xattrs)} (incomplete directory copy-up)`);
      }
    } else if (!files.has(k)) {
      problems.push(`upper: unexpected entry ${k} (${e.type}${e.type === 'file' ? `, ${e.size} bytes` : ''})`);
    }
  }
  for (const f of files.values()) {
    const e = view.get(f.rel);
    const i = byRel.get(f.rel);
    const op = i === undefined ? undefined : changes[i]!;
    const exit = i === undefined ? null : exits[i]!;
    const record = (result: Outcome['result']): void => {
      if (op) outcomes.push({ rel: f.rel, op, exit, fresh: !f.upper, result });
    };
    if (!e) {
      if (f.upper) problems.push(`upper: ${f.rel} was in the upper and is gone`);
      if (op && exit === 0) problems.push(`upper: ${op.op} of ${f.rel} reported success, but the upper has no copy`);
      record('lower');
      continue;
    }
    if (e.type !== 'file') {
      problems.push(`upper: ${f.rel} is a ${e.type}`);
      record('bad');
      continue;
    }
    const desc = `${e.size} bytes sha256 ${short(e.sha256)} mode ${oct(e.mode)} owner ${e.uid}:${e.gid} mtime ${e.mtimeNs} xattrs ${JSON.stringify(publicXattrs(e.xattrs))}`;
    if (e.uid !== f.uid || e.gid !== f.gid || JSON.stringify(publicXattrs(e.xattrs)) !== JSON.stringify(f.xattrs)) {
      problems.push(`upper: ${f.rel}: ${desc}; expected owner ${f.uid}:${f.gid} xattrs ${JSON.stringify(f.xattrs)} (incomplete copy-up)`);
      record('bad');
      continue;
    }
    if (!op) {
      if (!f.upper) problems.push(`upper: ${f.rel} was copied up although nothing changed it: ${desc}`);
      else if (e.ino !== f.upper.ino || e.ctimeNs !== f.upper.ctimeNs) problems.push(`upper: ${f.rel} was modified although nothing changed it: ${desc}`);
      continue;
    }
    const same = e.size === f.size && e.sha256 === digest(f.hash);
    // (a metadata-only copy's data copied in place before the append moves its mtime, as the kernel's
    // ovl_copy_up_meta_inode_data does: a kill after that leaves the content as it was, mtime moved)
    const filling = op.op === 'append' && f.meta === true;
    const unchanged = same && e.mode === f.mode && (e.mtimeNs === String(f.mtimeNs) || filling);
    let changed = false;
    if (op.op === 'append') changed = e.size === f.size + 1 && e.sha256 === digest(f.hash, 'X') && e.mode === f.mode;
    else if (op.op === 'chmod') changed = same && e.mode === op.mode && e.mtimeNs === String(f.mtimeNs);
    else changed = same && e.mode === f.mode && e.mtimeNs === op.ns;
    if (changed) {
      if (op.op === 'append') {
        f.hash.update('X');
        f.size += 1;
        f.mtimeNs = BigInt(e.mtimeNs);
      } else if (op.op === 'chmod') {
        f.mode = op.mode;
      } else {
        f.mtimeNs = BigInt(op.ns);
      }
      record('changed');
    } else if (unchanged) {
      if (exit === 0) problems.push(`upper: ${op.op} of ${f.rel} reported success, but the upper copy is unchanged: ${desc}`);
      f.mtimeNs = BigInt(e.mtimeNs);
      record('unchanged');
    } else {
      const want = `${f.size} bytes sha256 ${short(digest(f.hash))} mode ${oct(f.mode)} mtime ${f.mtimeNs}`;
      problems.push(`upper: ${f.rel} is neither the previous version (${want}) nor that plus the ${op.op}: ${desc}`);
      record('bad');
      continue;
    }
    f.upper = { ino: e.ino, ctimeNs: e.ctimeNs };
    f.meta = METACOPY in e.xattrs;
  }
  return { problems, outcomes };
}

/**
 * Changes of two files still in the lower and one already copied up. With metacopy=on that one is a
 * metadata-only copy where there is one, appended to: its data is copied in place while the kill comes.
 */
function pickChanges(r: () => number, mnt: string, files: Map<string, FileState>, iteration: number, metacopy: boolean): ChangeOp[] {
  const all = [...files.values()];
  const fresh = shuffle(r, all.filter((f) => !f.upper)).slice(0, 2);
  const metaCopies = all.filter((f) => f.meta);
  const fill = metacopy && metaCopies.length > 0;
  const copied = shuffle(r, fill ? metaCopies : all.filter((f) => f.upper)).slice(0, 1);
  const ops = [...fresh, ...copied].map((f): ChangeOp => {
    const p = path.join(mnt, f.rel);
    const x = r();
    if (x < 0.5 || (fill && f.meta)) return { op: 'append', path: p };
    if (x < 0.75) {
      const modes = [0o600, 0o604, 0o640, 0o700, 0o2750].filter((m) => m !== f.mode);
      return { op: 'chmod', path: p, mode: modes[Math.floor(r() * modes.length)]! };
    }
    return { op: 'utime', path: p, ns: String(1_400_000_000_000_000_000n + BigInt(iteration) * 1_000_003n + BigInt(Math.floor(r() * 1e6))) };
  });
  return shuffle(r, ops);
}

/**
 * The crash loop: `iterations` rounds of changes and a SIGKILL, each followed by the checks of the
 * upper, a kernel mount of it, and a strata mount. `metacopy`: every mount (strata's and the kernel's)
 * with metacopy=on, so that chmod and utimes make metadata-only copies and appends fill them in place.
 */
async function crashLoop(t: ExecutionContext, iterations: number, metacopy: boolean): Promise<void> {
  t.timeout(600_000);
  t.log(`seed ${SEED} (CRASH_SEED=${SEED} repeats it), ${iterations} iterations${metacopy ? ', metacopy=on' : ''}`);
  const r = rng(SEED);
  const base = tempDir(t, 'c');
  const [L, U, W, M, K] = ['L', 'U', 'W', 'M', 'K'].map((n) => path.join(base, n)) as [string, string, string, string, string];
  for (const d of [U, W, M, K]) fs.mkdirSync(d);
  const started = Date.now();
  const lower = buildBigLower(L, SIZES_MIB);
  t.log(`lower: ${lower.files.length} files, ${SIZES_MIB.reduce((a, b) => a + b, 0)} MiB, built in ${Date.now() - started} ms`);
  const lowerStat = statTree(L);
  const files = new Map<string, FileState>(
    lower.files.map((f) => [f.rel, { rel: f.rel, lowerIno: f.ino, size: f.size, mode: f.mode, uid: f.uid, gid: f.gid, mtimeNs: f.mtimeNs, xattrs: f.xattrs, hash: f.hash.copy() }]),
  );
  const opts = `lowerdir=${L},upperdir=${U},workdir=${W}${metacopy ? ',metacopy=on' : ''}`;
  const kernelOptions = metacopy ? ['metacopy=on'] : [];
  const work = path.join(W, 'work');
  const log: string[] = [];
  /** file → first st_ino change seen through strata */
  const inodes = new Map<string, string>();
  let leftovers = 0;
  /** copy-ups cut short by the kill (the change on a lower-only file did not report success) */
  let interrupted = 0;
  /** copy-ups that reached the upper */
  let completed = 0;
  let hashNext = new Set<string>();
  /** metacopy=on: metadata-only copies seen in the upper, and fills of them cut short by a kill */
  let metaCopies = 0;
  let fillsCut = 0;
  /**
   * The longest delay before the kill: MAX_DELAY_MS at first, shorter after a kill that came when every
   * change had finished, longer after one that cut changes short. On a machine whose disk syncs fast
   * the copy-ups take less than the delays assumed, and kills that all land after them test little.
   */
  let span = MAX_DELAY_MS;

  for (let i = 0; i <= iterations; i++) {
    const last = i === iterations;
    const problems: string[] = [];
    // The crash's own leftovers, plus planted ones (a file and a tree) so that cleaning is always tested.
    if (fs.existsSync(work)) {
      leftovers += fs.readdirSync(work).length;
      fs.writeFileSync(path.join(work, '#strata.1.planted'), 'stale');
      fs.mkdirSync(path.join(work, '#strata.1.planted-dir/sub'), { recursive: true });
      fs.writeFileSync(path.join(work, '#strata.1.planted-dir/sub/x'), 'stale');
    }
    // Every other mount without passthrough: then the daemon writes the data too.
    const passthrough = i % 2 === 0 ? 'auto' : 'off';
    const m = mountTagged(t, M, opts, [`--passthrough=${passthrough}`]);
    if (m.result.status !== 0 || m.pid === undefined) {
      t.fail(`iteration ${i}: mount of the upper left by the crash failed: status ${m.result.status}, daemon ${m.pid}: ${m.result.stderr.trim()}`);
      break;
    }
    const workLeft = fs.readdirSync(work);
    if (workLeft.length) problems.push(`W/work not emptied at mount: ${workLeft.join(', ')}`);
    const after = i === 0 ? 'strata' : `strata after crash #${i - 1}`;
    problems.push(...checkMerged(after, inspect(M, last ? 'all' : hashNext), lower, files, inodes));
    if (problems.length) {
      t.fail(`${after} (seed ${SEED}): ${log.at(-1) ?? ''}\n  ${problems.slice(0, 30).join('\n  ')}`);
      break;
    }

    if (last) {
      const um = run(strataBin, ['umount', M], { timeoutMs: 30_000 });
      if (um.status !== 0 || isMounted(M)) problems.push(`clean strata umount: status ${um.status}, still mounted: ${isMounted(M)}: ${um.stderr.trim()}`);
      kernelOverlay(t, { lowers: [L], upper: U, work: fs.mkdtempSync(path.join(base, 'kw')), mountpoint: K, options: kernelOptions });
      problems.push(...checkMerged('kernel on the final upper', inspect(K, 'all'), lower, files));
      unmountQuietly(K);
      // The metadata cache (LevelDB and its inode journal) went through every crash too.
      const verify = run(strataBin, ['cache', 'verify', '--workdir', W], { timeoutMs: 60_000 });
      if (verify.status !== 0) problems.push(`strata cache verify after the crashes: status ${verify.status}: ${(verify.stdout + verify.stderr).trim()}`);
      const lowerNow = inspect(L, 'all');
      for (const f of lower.files) {
        const e = lowerNow.get(f.rel);
        if (e?.sha256 !== f.sha256) problems.push(`lower ${f.rel}: sha256 ${short(e?.sha256)}, generated ${short(f.sha256)}`);
      }
      t.deepEqual(problems, [], 'final mount: strata and the kernel read the model; the cache verifies; lower contents as generated');
      break;
    }

    // Start changes on two files still in the lower and one already copied up, then kill.
    const wasMeta = new Set([...files.values()].filter((f) => f.meta).map((f) => f.rel));
    const changes = pickChanges(r, M, files, i, metacopy);
    const delay = Math.floor(r() * (span + 1));
    const child = startChanges(t, changes);
    if (!(await child.started)) problems.push('the process making the changes did not start');
    let finished = false;
    void child.done.then(() => (finished = true));
    await sleep(delay);
    span = finished ? Math.max(20, Math.round(span * 0.7)) : Math.min(MAX_DELAY_MS, Math.round(span * 1.3));
    const killed = await killDaemon(m.pid);
    if (!killed) problems.push(`daemon ${m.pid} still alive 10 s after SIGKILL`);
    const exits = await child.done;

    // strata umount must clear the dead mount.
    const um = run(strataBin, ['umount', M], { timeoutMs: 30_000 });
    if (um.status !== 0) problems.push(`strata umount of the dead mount: status ${um.status}: ${um.stderr.trim()}`);
    if (isMounted(M)) {
      problems.push('still mounted after strata umount');
      unmountQuietly(M);
    }
    const alive = processesTagged(m.tag).filter((p) => isAlive(p.pid));
    if (alive.length) problems.push(`processes of this mount still alive: ${alive.map((p) => p.pid).join(', ')}`);

    // The upper: only complete files.
    const { problems: up, outcomes } = checkUpper(U, M, lower, files, changes, exits);
    problems.push(...up);
    metaCopies += outcomes.filter((o) => !wasMeta.has(o.rel) && files.get(o.rel)!.meta).length;
    fillsCut += outcomes.filter((o) => wasMeta.has(o.rel) && o.op.op === 'append' && o.exit !== 0).length;
    hashNext = new Set(changes.map((c) => path.relative(M, c.path)));
    interrupted += outcomes.filter((o) => o.fresh && o.exit !== 0).length;
    completed += outcomes.filter((o) => o.fresh && o.result !== 'lower').length;

    // The kernel mounts that upper (fresh work dir) and reads the same.
    if (problems.length === 0) {
      try {
        kernelOverlay(t, { lowers: [L], upper: U, work: fs.mkdtempSync(path.join(base, 'kw')), mountpoint: K, options: kernelOptions });
        problems.push(...checkMerged('kernel on the upper', inspect(K, hashNext), lower, files));
      } catch (e) {
        problems.push(`the kernel cannot mount the upper: ${(e as Error).message}`);
      } finally {
        unmountQuietly(K);
      }
    }

    // The lower is untouched.
    const nowStat = statTree(L);
    for (const [k, v] of lowerStat) if (nowStat.get(k) !== v) problems.push(`lower ${k} changed: ${nowStat.get(k) ?? 'gone'} (was ${v})`);
    for (const k of nowStat.keys()) if (!lowerStat.has(k)) problems.push(`lower has a new entry ${k}`);

    const line = `crash #${i} (passthrough ${passthrough}): kill after ${delay} ms: ` + outcomes.map((o) => `${o.op.op} ${o.fresh ? 'lower ' : ''}${o.rel} → ${o.exit === 0 ? 'ok' : `exit ${o.exit}`}, upper ${o.result}`).join('; ');
    log.push(line);
    t.log(line);
    if (problems.length) {
      t.fail(`${line} (seed ${SEED})\n  ${problems.slice(0, 30).join('\n  ')}\nbefore:\n${log.slice(-4, -1).join('\n')}`);
      break;
    }
  }
  t.log(`crashes left ${leftovers} work entries (cleaned at the next mount); ${completed} copy-ups reached the upper, ${interrupted} were cut short; ${Date.now() - started} ms`);
  if (metacopy) {
    t.log(`metacopy=on: ${metaCopies} metadata-only copies made, ${fillsCut} fills of one cut short by the kill`);
    t.true(metaCopies > 0, 'no metadata-only copy was made: the variant tested nothing of its own');
  }
  // The loop is only a test if the kills landed both before and after changes completed.
  t.true(interrupted > 0, 'no kill cut a copy-up short: the delays never hit one');
  t.true(completed > 0, 'no copy-up completed before a kill');
  // Kept apart from the data checks above: a copied-up file keeps its st_ino across remounts
  // (README: the metadata cache), also when the daemon was killed right after the copy-up.
  t.deepEqual([...inodes.values()], [], 'st_ino of copied-up files changed across a crash and remount');
}

test.serial('copy-up leaves no partial file when the daemon is SIGKILLed at random moments', async (t) => {
  await crashLoop(t, ITERATIONS, false);
});

test.serial('with metacopy=on too: metadata-only copies, and their data copied in place, are never seen half made', async (t) => {
  await crashLoop(t, Math.ceil(ITERATIONS / 2) + 2, true);
});

/** A small lower, its upper and work dir, a mount point and a spare one for the kernel. */
function smallStack(t: ExecutionContext): { base: string; L: string; U: string; W: string; M: string; K: string; opts: string } {
  const base = tempDir(t, 'v');
  const [L, U, W, M, K] = ['L', 'U', 'W', 'M', 'K'].map((n) => path.join(base, n)) as [string, string, string, string, string];
  materializeLayer(L, [
    { path: 'a', kind: 'file', content: 'lower a\n' },
    { path: 'd', kind: 'dir' },
    { path: 'd/b', kind: 'file', content: 'lower b\n' },
  ]);
  for (const d of [U, W, M, K]) fs.mkdirSync(d);
  return { base, L, U, W, M, K, opts: `lowerdir=${L},upperdir=${U},workdir=${W}` };
}

test.serial('volatile leaves work/incompat/volatile; the next mount refuses until --force', async (t) => {
  const { L, U, W, M, K, opts } = smallStack(t);
  const marker = path.join(W, 'work', 'incompat', 'volatile');

  const v = mountTagged(t, M, `${opts},volatile`);
  t.is(v.result.status, 0, `volatile mount: ${v.result.stderr}`);
  t.true(fs.statSync(marker, { throwIfNoEntry: false })?.isDirectory() ?? false, `${marker} is not a directory while mounted volatile`);
  fs.writeFileSync(path.join(M, 'a'), 'changed a\n');
  let um = run(strataBin, ['umount', M]);
  t.is(um.status, 0, `strata umount: ${um.stderr}`);
  t.false(isMounted(M));
  t.true(fs.existsSync(marker), 'a clean unmount removed the volatile marker');

  const refused = mountTagged(t, M, opts);
  t.is(refused.result.status, 1, `mount after a volatile one: status ${refused.result.status}: ${refused.result.stderr}`);
  const lines = refused.result.stderr.trimEnd().split('\n');
  t.is(lines.length, 1, `stderr is not one line:\n${refused.result.stderr}`);
  t.regex(lines[0] ?? '', /volatile/, 'the refusal does not say why');
  t.false(isMounted(M), 'mounted although it refused');
  t.true(await waitFor(() => processesTagged(refused.tag).length === 0, 30_000), 'a process of the refused mount is still running');
  t.true(fs.existsSync(marker), 'the refused mount removed the marker');

  // The kernel reads the same marker and refuses too.
  const k = run('mount', ['-t', 'overlay', 'overlay', '-o', opts, K]);
  if (isMounted(K)) t.teardown(() => unmountQuietly(K));
  t.not(k.status, 0, 'the kernel mounted a work dir with strata’s volatile marker');
  unmountQuietly(K);

  const forced = mountTagged(t, M, opts, ['--force']);
  t.is(forced.result.status, 0, `--force: ${forced.result.stderr}`);
  t.is(fs.readFileSync(path.join(M, 'a'), 'utf8'), 'changed a\n', 'the write of the volatile mount is not visible');
  t.deepEqual(fs.readdirSync(path.join(W, 'work')), [], 'the forced (not volatile) mount left W/work non-empty');
  um = run(strataBin, ['umount', M]);
  t.is(um.status, 0, `strata umount: ${um.stderr}`);
  const again = mountTagged(t, M, opts);
  t.is(again.result.status, 0, `a plain mount after the forced one: ${again.result.stderr}`);
  um = run(strataBin, ['umount', M]);
  t.is(um.status, 0);

  // A volatile mount that crashes: the marker stays, the dead mount is cleared, --force recovers.
  const v2 = mountTagged(t, M, `${opts},volatile`);
  t.is(v2.result.status, 0, `volatile mount: ${v2.result.stderr}`);
  fs.writeFileSync(path.join(M, 'd', 'b'), 'changed b\n');
  t.truthy(v2.pid, 'daemon not found');
  t.true(await killDaemon(v2.pid!), 'daemon survived SIGKILL');
  um = run(strataBin, ['umount', M]);
  t.is(um.status, 0, `strata umount of the dead volatile mount: ${um.stderr}`);
  t.false(isMounted(M));
  t.true(fs.existsSync(marker), 'the volatile marker is gone after a crash');
  const refused2 = mountTagged(t, M, opts);
  t.is(refused2.result.status, 1, `mount after a crashed volatile one: ${refused2.result.stderr}`);
  t.is(refused2.result.stderr.trimEnd().split('\n').length, 1, `stderr is not one line:\n${refused2.result.stderr}`);
  t.false(isMounted(M));
  const forced2 = mountTagged(t, M, opts, ['--force']);
  t.is(forced2.result.status, 0, `--force after the crash: ${forced2.result.stderr}`);
  t.is(fs.readFileSync(path.join(M, 'd', 'b'), 'utf8'), 'changed b\n');
  t.is(fs.readFileSync(path.join(M, 'a'), 'utf8'), 'changed a\n');
  um = run(strataBin, ['umount', M]);
  t.is(um.status, 0);
  t.is(fs.readFileSync(path.join(L, 'a'), 'utf8'), 'lower a\n', 'the lower changed');
  t.is(fs.readFileSync(path.join(U, 'd', 'b'), 'utf8'), 'changed b\n');
});

test.serial('a kernel volatile marker makes strata refuse too', (t) => {
  const { M, K, W, opts } = smallStack(t);
  const k = run('mount', ['-t', 'overlay', 'overlay', '-o', `${opts},volatile`, K]);
  t.teardown(() => unmountQuietly(K));
  t.is(k.status, 0, `kernel volatile mount: ${k.stderr}`);
  fs.writeFileSync(path.join(K, 'new'), 'x');
  unmountQuietly(K);
  t.true(fs.existsSync(path.join(W, 'work', 'incompat', 'volatile')), 'the kernel left no marker');
  const refused = mountTagged(t, M, opts);
  t.is(refused.result.status, 1, `strata mounted over the kernel's volatile marker: ${refused.result.stderr}`);
  t.is(refused.result.stderr.trimEnd().split('\n').length, 1, `stderr is not one line:\n${refused.result.stderr}`);
  t.false(isMounted(M));
  const forced = mountTagged(t, M, opts, ['--force']);
  t.is(forced.result.status, 0, `--force: ${forced.result.stderr}`);
  t.is(fs.readFileSync(path.join(M, 'new'), 'utf8'), 'x');
  t.is(run(strataBin, ['umount', M]).status, 0);
});
