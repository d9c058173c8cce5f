// `strata bench`: its statistics, its argument checks, the reproducibility of the layers it
// generates, a smoke run of the real command (tiny sizes, one run) checking every file it writes,
// and Ctrl-C leaving no mount and no temp directory behind.
import test from 'ava';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run, waitFor } from './helpers/exec.js';
import { readMounts } from './helpers/mounts.js';
import { strataBin } from './helpers/paths.js';
import { tempDir, tmpfsDir } from './helpers/tmp.js';
import { formatRatio, formatSeconds, formatSize, median, ratio, summarize } from '../src/bench/stats.js';
import { generateDeepStack, generateImage, QUICK } from '../src/bench/gen.js';
import { WORKLOAD_NAMES } from '../src/bench/workloads.js';
import { hostLine, stealShares, type Results } from '../src/bench/report.js';
import { damonPageout, hostTicks, pageFaultMicros, parseProcStat, wakeupNote, wakeupTuning } from '../src/bench/host.js';
import { cpuBetween, cpuSample } from '../src/bench/systems.js';

test('statistics: medians, spreads, ratios, formats', (t) => {
  t.is(median([3, 1, 2]), 2);
  t.is(median([4, 1, 3, 2]), 2.5);
  t.true(Number.isNaN(median([])));
  t.deepEqual(summarize([0.3, 0.1, 0.2]), { median: 0.2, min: 0.1, max: 0.3, n: 3 });
  t.is(ratio(3, 1.5), 2);
  t.true(Number.isNaN(ratio(1, 0)));
  t.true(Number.isNaN(ratio(NaN, 1)));
  t.is(formatSeconds(1.234), '1.23 s');
  t.is(formatSeconds(0.0456), '45.6 ms');
  t.is(formatSeconds(0.000789), '789 µs');
  t.is(formatRatio(2.345), '2.35×');
  t.is(formatRatio(NaN), '-');
  t.is(formatSize(4096), '4 KiB');
  t.is(formatSize(1 << 30), '1 GiB');
});

test('daemon CPU: the threads\' schedstat nanoseconds, or /proc/PID/stat\'s ticks where a thread ended between the samples', (t) => {
  const at = (seconds: number, threads: [string, number][]) => ({ seconds, threads: new Map(threads) });
  // every thread still there (and one new): the nanosecond counts, not the ticks
  t.is(cpuBetween(at(1, [['1', 5e6], ['2', 1e6]]), at(1.01, [['1', 7.5e6], ['2', 1.5e6], ['3', 2e6]])), 0.005);
  // a thread ended between them: its time is only in the ticks
  t.is(cpuBetween(at(1, [['1', 5e6], ['2', 1e6]]), at(1.02, [['1', 6e6]])), 1.02 - 1);
  // the process gone
  t.true(Number.isNaN(cpuBetween(at(1, [['1', 5e6]]), at(NaN, []))));
  // this process: its own thread among them, and the time spent between two samples counted
  const a = cpuSample(process.pid);
  t.true(a.threads.has(String(process.pid)));
  // (20 ms of this process's CPU, however long a loaded machine takes to give them)
  const used0 = process.cpuUsage();
  while (process.cpuUsage(used0).user + process.cpuUsage(used0).system < 20_000) { /* spin */ }
  t.true(cpuBetween(a, cpuSample(process.pid)) >= 0.019);
});

/** Every entry of a tree: path, type, mode, size, content hash, rdev, xattrs (not times). */
function treeDigest(root: string): string {
  const h = crypto.createHash('sha256');
  const walk = (rel: string): void => {
    const full = path.join(root, rel);
    const st = fs.lstatSync(full);
    h.update(`${rel} ${st.mode} ${st.size} ${st.rdev}\n`);
    if (st.isFile()) h.update(fs.readFileSync(full));
    if (st.isDirectory()) {
      h.update(run('getfattr', ['-d', '-m', 'trusted.overlay', '--absolute-names', full]).stdout.split('\n').slice(1).join());
      for (const n of fs.readdirSync(full).sort()) walk(path.join(rel, n));
    }
  };
  walk('.');
  return h.digest('hex');
}

test('the generated layers are the same for the same seed, different for another', (t) => {
  const dir = tempDir(t, 'bgen');
  const a = generateImage(path.join(dir, 'a'), QUICK, 7);
  const b = generateImage(path.join(dir, 'b'), QUICK, 7);
  const c = generateImage(path.join(dir, 'c'), QUICK, 8);
  const digest = (layers: string[]): string => layers.map(treeDigest).join(' ');
  t.is(digest(a), digest(b));
  t.not(digest(a), digest(c));
  t.is(generateDeepStack(path.join(dir, 'd'), QUICK, 7).length, QUICK.deepLayers);
  // The image has what the workloads name: whiteouts, an opaque directory, the copy-up files.
  t.true(fs.lstatSync(path.join(a[0]!, 'tree', 'd01')).isCharacterDevice(), 'a directory whiteout in the top layer');
  t.is(run('getfattr', ['-n', 'trusted.overlay.opaque', '--only-values', path.join(a[1]!, 'tree', 'd00')]).stdout, 'y');
  for (const size of QUICK.copyUpSizes) t.is(fs.statSync(path.join(a[2]!, 'cu', String(size))).size, size);
});

for (const c of [
  { args: ['--systems', 'strata,zfs'], says: /unknown system "zfs"/ },
  { args: ['--workloads', 'walk-cold,nope'], says: /unknown workload "nope"/ },
  { args: ['--runs', '0'], says: /--runs takes a positive whole number/ },
  { args: ['--lowerdir', '/nonexistent/layer'], says: /--lowerdir: "\/nonexistent\/layer" is not a directory/ },
  { args: ['--workloads', 'chroot-dpkg'], says: /no workload applies/ },
  { args: ['--upper-tmp', '/nonexistent/up'], says: /--upper-tmp: "\/nonexistent\/up" is not a directory/ },
]) {
  test(`bench refuses ${c.args.join(' ')} with one line and exit 2`, (t) => {
    const r = run(strataBin, ['bench', '--quick', ...c.args, '--out', '/nonexistent-out']);
    t.is(r.status, 2, r.stderr);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, c.says);
    t.false(fs.existsSync('/nonexistent-out'));
  });
}

test.serial('smoke run: every workload, tiny sizes, one run; results.json, report.md and the charts', (t) => {
  const dir = tempDir(t, 'bsm');
  const out = path.join(dir, 'out');
  const r = run(strataBin, ['bench', '--quick', '--out', out, '--tmp', dir], { timeoutMs: 240_000 });
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  const res = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as Results;
  const systems = res.systems.map((s) => s.name);
  t.true(systems.includes('strata') && systems.includes('kernel'));
  const haveFo = run('sh', ['-c', 'command -v fuse-overlayfs']).status === 0;
  t.is(systems.includes('fuse-overlayfs'), haveFo, 'fuse-overlayfs is measured exactly when installed');
  if (!haveFo) t.true(res.skipped.some((s) => s.what === 'fuse-overlayfs'), 'and the report says it is missing');
  t.deepEqual(res.failures, []);
  // Every workload that applies without a rootfs has a sample per system.
  for (const w of WORKLOAD_NAMES.filter((n) => !n.startsWith('chroot-'))) {
    for (const s of systems) t.true(res.samples.some((x) => x.workload === w && x.system === s && x.seconds > 0), `${w} on ${s}`);
  }
  t.deepEqual([...new Set(res.samples.filter((x) => x.workload === 'copy-up').map((x) => x.point))].sort((a, b) => a! - b!), QUICK.copyUpSizes);
  t.true(typeof res.machine.kernel === 'string' && typeof res.machine.cpus === 'number');
  // The host's share of the CPU time is counted around every measurement (not the mount rows).
  const timed = res.samples.filter((x) => !x.workload.startsWith('mount'));
  t.true(timed.length > 0 && timed.every((x) => x.hostTicks! >= 0 && x.stealTicks! >= 0 && x.stealTicks! <= x.hostTicks!), 'steal and total ticks');
  t.true(Array.isArray(res.machine.damon));
  t.deepEqual(res.machine.wakeups, wakeupTuning(), 'the wakeup settings recorded');
  for (const k of ['pageFaultUsStart', 'pageFaultUsEnd'] as const) t.true(typeof res.machine[k] === 'number' && (res.machine[k] as number) > 0, k);
  // The daemons' memory after the walk of the wide layer (not the kernel's: it has no daemon).
  for (const s of systems) {
    const mem = res.samples.filter((x) => x.workload === 'walk-memory' && x.system === s);
    if (s === 'kernel') t.true(mem.every((x) => x.daemonRss === undefined), 'no memory for the kernel');
    else t.true(mem.length > 0 && mem.every((x) => x.daemonRss! > 1 << 20 && x.daemonRssIdle! > 1 << 20), `memory of ${s}: ${JSON.stringify(mem)}`);
  }
  const md = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
  t.regex(md, /\| workload \| strata median/);
  t.regex(md, /The host took [\d.]+% of the CPU time during the measurements/);
  t.regex(md, /copy-up latency, 4 KiB/);
  t.regex(md, /\| walk of the wide layer \| [\d.]+ MiB \| [\d.]+ MiB \|/);
  for (const chart of ['copy-up', 'ratios']) {
    t.regex(fs.readFileSync(path.join(out, `${chart}.svg`), 'utf8'), /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"[\s\S]*<\/svg>$/);
    t.deepEqual([...fs.readFileSync(path.join(out, `${chart}.png`)).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    t.regex(md, new RegExp(`\\]\\(${chart}\\.svg\\)`));
  }
  // It cleaned up after itself.
  t.deepEqual(readMounts().filter((m) => m.target.startsWith(dir + '/')).map((m) => m.target), []);
  t.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('stb')), []);
});

test.serial('--upper-tmp: uppers and work directories on another filesystem (a tmpfs under ext4 lowers), removed after', (t) => {
  const dir = tempDir(t, 'bup');
  const upper = tmpfsDir(t, dir, 'ufs', 64);
  const out = path.join(dir, 'out');
  const r = run(strataBin, ['bench', '--quick', '--workloads', 'copy-up,chmod-meta', '--out', out, '--tmp', dir, '--upper-tmp', upper], { timeoutMs: 120_000 });
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  const res = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as Results;
  t.deepEqual(res.failures, []);
  t.is(res.machine.upperFs, 'tmpfs');
  t.true(res.samples.some((x) => x.workload === 'chmod-meta' && x.system === 'strata' && x.seconds > 0));
  t.regex(fs.readFileSync(path.join(out, 'report.md'), 'utf8'), new RegExp(`uppers and work directories on tmpfs \\(${upper}\\)`));
  t.deepEqual(fs.readdirSync(upper), [], 'nothing left on the upper filesystem');
  t.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('stb')), []);
});

test.serial('Ctrl-C: the bench unmounts everything, removes its temp directory and exits 130', async (t) => {
  const dir = tempDir(t, 'bint');
  const child = spawn(strataBin, ['bench', '--quick', '--out', path.join(dir, 'out'), '--tmp', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  // Interrupt once a mount of its own is up.
  const mounted = await waitFor(() => readMounts().some((m) => m.target.startsWith(dir + '/')), 120_000, 20);
  t.true(mounted, `the bench mounted something: ${output}`);
  child.kill('SIGINT');
  t.is(await exited, 130, output);
  t.deepEqual(readMounts().filter((m) => m.target.startsWith(dir + '/')).map((m) => m.target), []);
  t.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('stb')), [], 'the temp directory is gone');
  t.false(fs.existsSync(path.join(dir, 'out', 'results.json')), 'no results from an interrupted run');
});

test('host facts: /proc/stat parsed, DAMON pageout schemes found, steal shares per workload', (t) => {
  t.deepEqual(parseProcStat('cpu  100 5 50 1000 10 1 2 30 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n'), { total: 1198, steal: 30 });
  t.is(parseProcStat('intr 1 2 3\n'), null);
  t.is(parseProcStat('cpu  1 2 x 4 5 6 7 8\n'), null);
  const f = pageFaultMicros();
  t.true(f > 0 && f < 1e4, `a page fault: ${f} us`);
  const live = hostTicks();
  t.true(live !== null && live.total > 0 && live.steal >= 0 && live.steal <= live.total);

  const root = tempDir(t, 'damon');
  const put = (p: string, v: string): void => {
    fs.mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
    fs.writeFileSync(path.join(root, p), `${v}\n`);
  };
  t.deepEqual(damonPageout(root), [], 'no kdamonds');
  put('kdamonds/nr_kdamonds', '2');
  put('kdamonds/0/state', 'on');
  put('kdamonds/0/contexts/0/monitoring_attrs/intervals/aggr_us', '5000000');
  put('kdamonds/0/contexts/0/schemes/0/action', 'pageout');
  put('kdamonds/0/contexts/0/schemes/0/access_pattern/age/min', '12');
  put('kdamonds/0/contexts/0/schemes/1/action', 'stat');
  put('kdamonds/1/state', 'off');
  put('kdamonds/1/contexts/0/schemes/0/action', 'pageout');
  t.deepEqual(damonPageout(root), ['pageout of memory (nearly) untouched for 60 s or more']);

  const sample = (workload: string, system: 'strata' | 'kernel', run: number, hostTicks: number, stealTicks: number, point?: number) =>
    ({ workload, system, run, seconds: 1, hostTicks, stealTicks, ...(point === undefined ? {} : { point }) });
  const res = {
    workloads: [{ name: 'a', title: 'a', what: '', series: false }, { name: 'cu', title: 'cu', what: '', series: true }, { name: 'm', title: 'm', what: '', series: false }],
    samples: [sample('a', 'strata', 1, 100, 10), sample('a', 'kernel', 1, 100, 0),
      // a series: both points come from one measurement, counted once
      sample('cu', 'strata', 1, 50, 25, 4096), sample('cu', 'strata', 1, 50, 25, 65536),
      { workload: 'm', system: 'strata', run: 1, seconds: 1 }],
    machine: { damon: ['pageout of memory (nearly) untouched for 60 s or more'], pageFaultUsStart: 3.5, pageFaultUsEnd: 12.25 },
  } as unknown as Results;
  t.deepEqual(stealShares(res), [{ workload: 'a', share: 0.05 }, { workload: 'cu', share: 0.5 }]);
  t.is(hostLine(res), 'The host took 27.5% of the CPU time during the measurements (steal, mean over the workloads; most during cu 50.0%, a 5.0%). ' +
    'A fresh page of memory took 3.5 µs to fault in at the start and 12.25 µs at the end (a process start touches thousands). DAMON runs here (pageout of memory (nearly) untouched for 60 s or more): page cache left alone that long may be read from disk again.');
});

test('host facts: how callers are woken (haltpoll, the FUSE module\'s wake_here) read from sysfs and told in the report', (t) => {
  const sys = tempDir(t, 'sys');
  const put = (p: string, v: string): void => {
    fs.mkdirSync(path.dirname(path.join(sys, p)), { recursive: true });
    fs.writeFileSync(path.join(sys, p), `${v}\n`);
  };
  const none = wakeupTuning(sys);
  t.deepEqual(none, { idleDriver: null, haltPollNs: null, fuseWakeHere: null, fuseUring: null }, 'nothing there');
  t.is(wakeupNote(none), '');
  t.is(wakeupNote(undefined), '', 'results of an older strata');
  put('devices/system/cpu/cpuidle/current_driver', 'haltpoll');
  put('module/haltpoll/parameters/guest_halt_poll_ns', '0');
  put('module/fuse/parameters/wake_here', 'N');
  put('module/fuse/parameters/enable_uring', 'Y');
  const w = wakeupTuning(sys);
  t.deepEqual(w, { idleDriver: 'haltpoll', haltPollNs: 0, fuseWakeHere: false, fuseUring: true });
  t.is(wakeupNote(w), "Wakeups: idle vCPUs halt at once (haltpoll, guest_halt_poll_ns 0); the FUSE module's wake_here is N " +
    "(a reply wakes its caller where the scheduler puts it); both move every FUSE row, strata's and fuse-overlayfs's alike.");
  put('module/haltpoll/parameters/guest_halt_poll_ns', '200000');
  put('module/fuse/parameters/wake_here', 'Y');
  t.regex(wakeupNote(wakeupTuning(sys)), /poll 200000 ns before they halt.*wake_here is Y \(a reply wakes its caller on the replying CPU\)/);
  const res = { workloads: [], samples: [], machine: { wakeups: w } } as unknown as Results;
  t.true(hostLine(res).startsWith('Wakeups: idle vCPUs halt at once'), 'in the report\'s host line');
  // this machine: whatever it has, the live reading is well-formed
  const live = wakeupTuning();
  t.true(live.fuseWakeHere === null || typeof live.fuseWakeHere === 'boolean');
  t.true(live.haltPollNs === null || Number.isInteger(live.haltPollNs));
});
