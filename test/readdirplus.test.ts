// Every chunk of a listing is a READDIRPLUS (no READDIRPLUS_AUTO): a walk that stats what it lists
// takes no LOOKUP per name, however many getdents64 calls the directory needs; and it shows what
// the kernel's overlay shows.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { daemonLogLines, onKernelAndStrata } from './helpers/mounts.js';
import { runOk } from './helpers/exec.js';
import { tempDir, tmpfsDir } from './helpers/tmp.js';

test('a walk of a directory of many getdents64 chunks sends no LOOKUP per name and shows what the kernel shows', (t) => {
  const root = tempDir(t, 'rdp');
  const lower = path.join(root, 'lower');
  fs.mkdirSync(path.join(lower, 'big'), { recursive: true });
  // 1500 names: several 32 KiB getdents64 buffers of direntplus records (152 bytes and up each)
  for (let i = 0; i < 1500; i++) fs.writeFileSync(path.join(lower, 'big', `file-${String(i).padStart(4, '0')}`), 'x'.repeat(i % 7));
  const walk = (mnt: string): string =>
    runOk('find', ['.', '-printf', '%p %s %m %n %U %G %T@ %y\n'], { cwd: mnt }).split('\n').sort().join('\n');
  const log = path.join(root, 'strata.log');
  // (the root's own times come from each system's fresh upper directory)
  const results = onKernelAndStrata(t, root, [lower], ['--log-file', log, '--log-level', 'info'],
    (mnt) => walk(mnt).split('\n').filter((l) => !l.startsWith('. ')).join('\n'));
  t.is(results.strata, results.kernel);
  const line = daemonLogLines(log).find((l) => l.msg === 'unmounted');
  t.truthy(line?.byOp, 'the daemon logs its request counts when unmounted');
  t.true((line!.byOp!.READDIRPLUS ?? 0) > 1, JSON.stringify(line!.byOp));
  t.true((line!.byOp!.LOOKUP ?? 0) <= 2, `LOOKUPs during the walk: ${JSON.stringify(line!.byOp)}`);
});

test('a second listing of names the kernel holds (given without attributes) still shows what the kernel shows after changes', (t) => {
  const root = tempDir(t, 'rdp');
  const lower = path.join(root, 'lower');
  for (const d of ['big', 'big/sub']) fs.mkdirSync(path.join(lower, d), { recursive: true });
  for (let i = 0; i < 400; i++) fs.writeFileSync(path.join(lower, 'big', `f${String(i).padStart(3, '0')}`), 'y'.repeat(i % 11));
  for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(lower, 'big', 'sub', `s${i}`), 'sub');
  const walk = (mnt: string, times: boolean): string =>
    runOk('find', ['.', '-printf', `%p %s %m %n %U %G %y${times ? ' %T@' : ''}\n`], { cwd: mnt }).split('\n')
      .filter((l) => l !== '' && !l.startsWith('. ')).sort().join('\n');
  const log = path.join(root, 'strata.log');
  // uppers on a tmpfs: a directory's size there counts its entries, so copy-ups into it show
  const results = onKernelAndStrata(t, tmpfsDir(t, root), [lower], ['--log-file', log, '--log-level', 'info'], (mnt) => {
    const big = path.join(mnt, 'big');
    const first = walk(mnt, true);
    const again = walk(mnt, true); // every name is held by the kernel now
    fs.chmodSync(path.join(big, 'f001'), 0o600); // a copy-up (the parent's size and ctime move)
    fs.appendFileSync(path.join(big, 'f002'), 'more');
    fs.truncateSync(path.join(big, 'f003'), 1);
    fs.readFileSync(path.join(big, 'f004'));
    fs.linkSync(path.join(big, 'f005'), path.join(big, 'hard'));
    fs.renameSync(path.join(big, 'f006'), path.join(big, 'sub', 'moved'));
    fs.unlinkSync(path.join(big, 'f007'));
    fs.rmSync(path.join(big, 'sub', 's0'));
    fs.mkdirSync(path.join(big, 'newdir'), 0o751);
    fs.symlinkSync('f010', path.join(big, 'ln'));
    fs.chownSync(path.join(big, 'sub'), 1000, 1000); // a directory copied up
    const after = walk(mnt, false);
    fs.rmSync(path.join(big, 'sub'), { recursive: true });
    return [first, again, after, walk(mnt, false)].join('\n--\n');
  });
  t.is(results.strata, results.kernel);
});
