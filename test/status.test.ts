// strata status: live mounts with their daemon, layers and counters; gone after unmount.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { strataMount, strataUnmount } from './helpers/mounts.js';
import { strataBin } from './helpers/paths.js';
import { tempDir } from './helpers/tmp.js';


interface Row { mountpoint: string; pid: number; alive: boolean; mounted: boolean; lowerdirs: string[]; requests?: number; residentBytes?: number }

function status(args: string[] = []): { status: number | null; rows: Row[]; stderr: string } {
  const r = spawnSync(strataBin, ['status', ...args, '--json'], { encoding: 'utf8' });
  return { status: r.status, rows: r.status === 0 ? (JSON.parse(r.stdout) as Row[]) : [], stderr: r.stderr };
}

test('strata status lists a mount while it is live, with its daemon and counters, and not after', async (t) => {
  const dir = tempDir(t, 'status');
  const lower = path.join(dir, 'l');
  fs.mkdirSync(lower);
  fs.writeFileSync(path.join(lower, 'f'), 'x');
  fs.mkdirSync(path.join(dir, 'm'));
  const mnt = strataMount(t, { lowers: [lower], mountpoint: path.join(dir, 'm') });
  fs.readFileSync(path.join(mnt, 'f'));
  await new Promise((r) => setTimeout(r, 2500)); // the daemon refreshes its counters every 2 s
  const live = status([mnt]);
  t.is(live.status, 0);
  t.is(live.rows.length, 1);
  const row = live.rows[0]!;
  t.is(row.mountpoint, mnt);
  t.true(row.alive && row.mounted);
  t.deepEqual(row.lowerdirs, [lower]);
  t.true((row.requests ?? 0) > 0);
  // The daemon's resident memory, as /proc says (a Node process takes tens of MiB).
  t.true(row.residentBytes! > 10 * 2 ** 20 && row.residentBytes! < 2 ** 30, String(row.residentBytes));
  const text = spawnSync(strataBin, ['status', mnt], { encoding: 'utf8' }).stdout;
  t.regex(text, new RegExp(`pid ${row.pid}, up \\d+s, \\d+\\.\\d MiB resident, \\d+ requests`));
  t.true(status().rows.some((r) => r.mountpoint === mnt));
  strataUnmount(mnt);
  t.false(status().rows.some((r) => r.mountpoint === mnt));
  const gone = status([mnt]);
  t.is(gone.status, 1);
  t.regex(gone.stderr, /not a strata mount/);
});
