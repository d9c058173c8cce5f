// The daemon's threads: V8's helpers (the threads node starts before any of strata's code) run at
// nice 19, the daemon's own thread and the thread pool it starts later at the priority it was given
// (src/cli/mount.ts, lowerHelperThreads).

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from './helpers/exec.js';
import { strataMount } from './helpers/mounts.js';
import { tempDir } from './helpers/tmp.js';

/** Each thread's nice value (field 19 of its stat; the fields after the command's closing parenthesis start at 3). */
function niceByThread(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`).map(Number)) {
    try {
      const fields = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(')').at(-1)!.trim().split(' ');
      out.set(tid, Number(fields[19 - 3]));
    } catch {
      // ended meanwhile
    }
  }
  return out;
}

test('V8\'s helper threads run at nice 19; the daemon\'s thread and its thread pool keep their priority', async (t) => {
  const dir = tempDir(t, 'thr');
  const lower = path.join(dir, 'l');
  fs.mkdirSync(lower);
  fs.writeFileSync(path.join(lower, 'f'), 'lower\n');
  for (const d of ['u', 'w', 'm']) fs.mkdirSync(path.join(dir, d));
  const pidFile = path.join(dir, 'pid');
  const mnt = strataMount(t, { lowers: [lower], upper: path.join(dir, 'u'), work: path.join(dir, 'w'), mountpoint: path.join(dir, 'm'), extraArgs: ['--pid-file', pidFile] });
  const pid = Number(fs.readFileSync(pidFile, 'utf8'));
  const atStart = niceByThread(pid);
  t.is(atStart.get(pid), 0, 'the daemon\'s own thread');
  const helpers = [...atStart].filter(([tid]) => tid !== pid);
  t.true(helpers.length >= 4, `V8's workers at least: ${JSON.stringify(helpers)}`);
  t.deepEqual(helpers.filter(([, nice]) => nice !== 19), [], 'every thread node started is lowered');
  // Once idle, the daemon opens its LevelDB on the thread pool: threads made by the daemon's thread.
  t.true(await waitFor(() => niceByThread(pid).size > atStart.size, 10_000), 'the thread pool starts');
  const later = [...niceByThread(pid)].filter(([tid]) => !atStart.has(tid));
  t.deepEqual(later.filter(([, nice]) => nice !== 0), [], `the thread pool at nice 0: ${JSON.stringify(later)}`);
  t.is(fs.readFileSync(path.join(mnt, 'f'), 'utf8'), 'lower\n');
});
