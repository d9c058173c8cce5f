// Copy-up of a large file runs in steps between other requests: the daemon keeps answering other
// clients while it copies, changes to the file being copied wait for the copy, and an unmount
// (SIGTERM) lets a copy in progress finish before the daemon exits.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run, runWithPipes, waitFor } from './helpers/exec.js';
import { daemonLogLines, kernelOverlay, mountAt, strataMount, strataUnmount } from './helpers/mounts.js';
import { PYTHON } from './helpers/python.js';
import { tempDir } from './helpers/tmp.js';
import { sha256File, snapshot, type Snapshot } from './helpers/snapshot.js';
import { compareTrees } from './helpers/compare.js';

const BIG_MIB = 384;

/** A lower layer with one big file of real (non-sparse, non-repeating) data and a few small files. */
function makeLower(dir: string): string {
  const lower = path.join(dir, 'lower');
  fs.mkdirSync(path.join(lower, 'small'), { recursive: true });
  const fd = fs.openSync(path.join(lower, 'big'), 'w', 0o644);
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < BIG_MIB; i++) {
    crypto.createHash('sha512').update(String(i)).digest().copy(block, 0);
    block.writeUInt32LE(i, 64);
    fs.writeSync(fd, block);
  }
  fs.closeSync(fd);
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(lower, 'small', String(i)), `small ${i}\n`);
  return lower;
}

/** Private trusted.overlay.* bookkeeping is left out (the kernel's uuid stamp; origins are compared in origin.test.ts). */
function withoutPrivateXattrs(snap: Snapshot): Snapshot {
  for (const info of snap.nodes.values()) {
    info.xattrs = Object.fromEntries(Object.entries(info.xattrs).filter(([n]) => !n.startsWith('trusted.overlay.')));
  }
  return snap;
}


function layout(t: ExecutionContext): { dir: string; lower: string; upper: string; work: string } {
  const dir = tempDir(t, 'cua');
  const lower = makeLower(dir);
  const upper = path.join(dir, 'upper');
  const work = path.join(dir, 'work');
  fs.mkdirSync(upper);
  fs.mkdirSync(work);
  return { dir, lower, upper, work };
}

// One thread opens and reads small files in a loop (every open is a request to the daemon; the
// kernel caches no opens) while the main thread opens the big file for writing, which copies it
// up. Prints how many small-file opens completed while that open was in progress.
const OPENS_DURING_COPY = String.raw`
import os, sys, threading, json
mnt = sys.argv[1]
count = 0
stop = False
def loop():
    global count
    i = 0
    while not stop:
        with open(os.path.join(mnt, 'small', str(i % 8)), 'rb') as f:
            f.read()
        count += 1
        i += 1
th = threading.Thread(target=loop)
th.start()
while count < 20:
    pass
before = count
fd = os.open(os.path.join(mnt, 'big'), os.O_WRONLY)
during = count - before
os.pwrite(fd, b'W', 5)
os.close(fd)
stop = True
th.join()
print(json.dumps({'during': during}))
`;

test.serial('the daemon answers other requests while it copies a large file up', async (t) => {
  const { lower, upper, work } = layout(t);
  const mnt = strataMount(t, { lowers: [lower], upper, work });
  const r = run(PYTHON, ['-c', OPENS_DURING_COPY, mnt], { timeoutMs: 120_000 });
  t.is(r.status, 0, r.stderr);
  const { during } = JSON.parse(r.stdout) as { during: number };
  t.log(`${during} small-file opens completed during the copy-up of ${BIG_MIB} MiB`);
  // A daemon that copies in one go answers none (at most the one already in flight).
  t.true(during >= 5, `only ${during} other requests were answered while the copy-up ran`);
  // The copy is complete and carries the write.
  const expected = fs.readFileSync(path.join(lower, 'big')).subarray(0, 16);
  expected[5] = 'W'.charCodeAt(0);
  const fd = fs.openSync(path.join(upper, 'big'), 'r');
  const head = Buffer.alloc(16);
  fs.readSync(fd, head, 0, 16, 0);
  fs.closeSync(fd);
  t.deepEqual(head, expected);
  t.is(fs.statSync(path.join(upper, 'big')).size, BIG_MIB << 20);
  t.deepEqual(fs.readdirSync(path.join(work, 'work')), []);
});

// Changes that commute, started at once from separate processes against the file being copied up:
// whatever order they are served in, the result must equal the kernel's.
const CONCURRENT_CHANGES = [
  ['sh', '-c', 'printf appended >> "$0/big"'],
  ['chmod', '0640', 'big'],
  ['setfattr', '-n', 'user.strata', '-v', 'kept', 'big'],
  ['ln', 'big', 'big-link'],
  ['touch', '-m', '-d', '@1700000000', 'small/3'],
  ['sh', '-c', 'cat "$0/big" > /dev/null'],
] as const;

async function concurrentChanges(mnt: string): Promise<void> {
  const results = await Promise.all(CONCURRENT_CHANGES.map(([cmd, ...args]) => {
    const argv = cmd === 'sh' ? [args[0], args[1], mnt] : args.map((a) => (a === 'big' || a === 'big-link' || a.startsWith('small/') ? path.join(mnt, a) : a));
    return runWithPipes(cmd, argv as string[], { timeoutMs: 120_000 });
  }));
  for (const r of results) if (r.status !== 0) throw new Error(`${r.command}: ${r.status}: ${r.stderr}`);
}

test.serial('changes to a file wait for its copy-up in progress, and end as on the kernel', async (t) => {
  const { dir, lower, upper, work } = layout(t);
  const mnt = strataMount(t, { lowers: [lower], upper, work });
  const kUpper = path.join(dir, 'kupper');
  const kWork = path.join(dir, 'kwork');
  fs.mkdirSync(kUpper);
  fs.mkdirSync(kWork);
  const kmnt = kernelOverlay(t, { lowers: [lower], upper: kUpper, work: kWork });
  await concurrentChanges(mnt);
  await concurrentChanges(kmnt);
  const ignoreTimes = (p: string, field: string): boolean => field === 'ctimeNs' || field === 'blocks' || (field === 'mtimeNs' && (p === '.' || p === 'big' || p === 'big-link'));
  compareTrees(t, snapshot(mnt), snapshot(kmnt), { ignore: ignoreTimes, label: 'strata vs kernel' });
  compareTrees(t, withoutPrivateXattrs(snapshot(upper)), withoutPrivateXattrs(snapshot(kUpper)), { ignore: ignoreTimes, label: 'uppers' });
  t.is(sha256File(path.join(mnt, 'big')), sha256File(path.join(kmnt, 'big')));
  t.deepEqual(fs.readdirSync(path.join(work, 'work')), []);
});

test.serial('SIGTERM during a large copy-up: the copy completes, the daemon unmounts and exits 0', async (t) => {
  const { dir, lower, upper, work } = layout(t);
  const log = path.join(dir, 'daemon.log');
  const mnt = strataMount(t, { lowers: [lower], upper, work, extraArgs: ['--log-file', log] });
  const pid = Number(run('sh', ['-c', `pgrep -f "__daemon ${mnt}$"`]).stdout.trim().split('\n')[0]);
  t.true(pid > 0, 'daemon pid');
  // The writer opens the big file for writing (a copy-up) and appends once the open returns.
  const writer = runWithPipes(PYTHON, ['-c', String.raw`
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
print('opened', flush=True)
try:
    os.write(fd, b'tail')
    os.close(fd)
    print('written')
except OSError as e:
    print('write failed', e.errno)
`, path.join(mnt, 'big')], { timeoutMs: 120_000 });
  // Signal once the copy is under way: the daemon holds its unnamed file in the work directory open.
  // It reaches the work directory through a private mount of the directory holding upper and work,
  // so the link names the file from that mount's root.
  const inWork = '/' + path.basename(work) + '/work/';
  const copying = (): boolean => {
    try {
      return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
        try {
          return fs.readlinkSync(`/proc/${pid}/fd/${fd}`).includes(inWork);
        } catch {
          return false;
        }
      });
    } catch {
      return false;
    }
  };
  const started = await waitFor(copying, 30_000, 5);
  if (!started) t.fail(`the copy-up did not start: ${JSON.stringify(await writer)}; work: ${fs.readdirSync(path.join(work, 'work')).join(' ')}`);
  process.kill(pid, 'SIGTERM');
  const w = await writer;
  t.true(await waitFor(() => !fs.existsSync(`/proc/${pid}`) || fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] === 'Z', 60_000),
    'the daemon exited');
  t.is(mountAt(mnt), undefined, 'nothing is mounted');
  // The open was answered after the copy finished (the daemon did not stop half-way).
  t.regex(w.stdout, /^opened/, `writer: ${w.stdout} ${w.stderr}`);
  const st = fs.statSync(path.join(upper, 'big'));
  t.true(st.size === BIG_MIB << 20 || st.size === (BIG_MIB << 20) + 4, `upper copy has ${st.size} bytes`);
  t.is(sha256File(path.join(upper, 'big')).length, 64);
  const lowerHead = fs.readFileSync(path.join(lower, 'big')).subarray(0, BIG_MIB << 20);
  const upperData = fs.readFileSync(path.join(upper, 'big')).subarray(0, BIG_MIB << 20);
  t.true(lowerHead.equals(upperData), 'the upper copy holds the lower data');
  // The daemon stopped cleanly: nothing in its log at warning level or above (a failed syncfs would be).
  const problems = daemonLogLines(log).filter((l) => l.level >= 40);
  t.deepEqual(problems, []);
  t.true(fs.readFileSync(log, 'utf8').includes('"msg":"unmounted"'));
  // The next mount finds a clean work directory and the copied file.
  const mnt2 = strataMount(t, { lowers: [lower], upper, work, mountpoint: mnt });
  t.is(fs.statSync(path.join(mnt2, 'big')).size, st.size);
  t.deepEqual(fs.readdirSync(path.join(work, 'work')).filter((n) => n !== 'incompat'), []);
  strataUnmount(mnt2);
});

// The kernel binds all opens of an inode to one passthrough backing: after a copy-up, an open must
// wait until the opens that read the lower file by passthrough are closed (a reader usually holds
// a file briefly). Before this waited, such an open failed with EIO.
test.serial('an open for writing after a copy-up works at once while a reader holds the lower file open', async (t) => {
  const { lower, upper, work } = layout(t);
  const mnt = strataMount(t, { lowers: [lower], upper, work });
  const f = path.join(mnt, 'small', '3');
  const reader = spawn(PYTHON, ['-c', String.raw`
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.read(fd, 100).decode(), end='', flush=True)
sys.stdin.read(1)  # holds the lower file open until the append is done
os.close(fd)
`, f], { stdio: ['pipe', 'pipe', 'inherit'] });
  let read = '';
  reader.stdout.on('data', (d: Buffer) => (read += d.toString()));
  const readerDone = new Promise<number | null>((resolve) => reader.on('exit', resolve));
  // Once the reader has the file open and has read it: chmod copies it up, then an append opens it again.
  t.true(await waitFor(() => read.length > 0, 10_000, 5), 'the reader opened the file');
  t.is(run('chmod', ['0640', f]).status, 0);
  const append = run('sh', ['-c', `printf appended >> ${f}`], { timeoutMs: 30_000 });
  t.is(append.status, 0, append.stderr);
  reader.stdin.end('x');
  t.is(await readerDone, 0);
  t.is(read, 'small 3\n', 'the reader read the lower file');
  t.is(fs.readFileSync(f, 'utf8'), 'small 3\nappended');
  t.is(fs.readFileSync(path.join(upper, 'small', '3'), 'utf8'), 'small 3\nappended');
  t.is(fs.statSync(f).mode & 0o7777, 0o640);
});
