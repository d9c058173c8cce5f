// Every chunk of a listing is a READDIRPLUS (no READDIRPLUS_AUTO): a walk that stats what it lists
// takes no LOOKUP per name, however many getdents64 calls the directory needs; and it shows what
// the kernel's overlay shows.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { onKernelAndStrata } from './helpers/mounts.js';
import { runOk } from './helpers/exec.js';
import { tempDir } from './helpers/tmp.js';

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
  const line = fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg?: string; byOp?: Record<string, number> })
    .find((l) => l.msg === 'unmounted');
  t.truthy(line?.byOp, 'the daemon logs its request counts when unmounted');
  t.true((line!.byOp!.READDIRPLUS ?? 0) > 1, JSON.stringify(line!.byOp));
  t.true((line!.byOp!.LOOKUP ?? 0) <= 2, `LOOKUPs during the walk: ${JSON.stringify(line!.byOp)}`);
});
