// mount(8) runs /sbin/mount.fuse.strata (put there by `make install`) for fuse.strata mounts and
// remounts; without an install, a test links this checkout's helper there for its duration.
// Test files run in parallel processes: each user leaves a mark in USERS, and the link is taken
// away (and what was there before put back) only by the last live user. Both steps hold LOCK, so a
// user arriving while the last one leaves cannot find the link there and then lose it.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { sleepMs } from './fifo-channel.js';
import { mountHelper } from './paths.js';

const TARGET = '/sbin/mount.fuse.strata';
const USERS = '/run/strata-test-helper';
const LOCK = '/run/strata-test-helper.lock';

/** Runs `fn` holding LOCK (a directory: mkdir is atomic); a lock older than 10 s is a dead holder's. */
function locked(fn: () => void): void {
  for (;;) {
    try {
      fs.mkdirSync(LOCK);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      try {
        if (Date.now() - fs.statSync(LOCK).mtimeMs > 10_000) fs.rmdirSync(LOCK);
      } catch {
        // released meanwhile
      }
      sleepMs(5);
    }
  }
  try {
    fn();
  } finally {
    fs.rmdirSync(LOCK);
  }
}

function liveUsers(): string[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(USERS);
  } catch {
    return [];
  }
  return names.filter((n) => {
    if (!/^\d+\./.test(n)) return false;
    const pid = Number(n.split('.')[0]);
    if (fs.existsSync(`/proc/${pid}`)) return true;
    fs.rmSync(path.join(USERS, n), { force: true });
    return false;
  });
}

export function installHelper(t: ExecutionContext): void {
  const mark = path.join(USERS, `${process.pid}.${Math.random().toString(36).slice(2)}`);
  locked(() => {
    let current: string | null = null;
    try {
      current = fs.readlinkSync(TARGET);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EINVAL') throw new Error(`${TARGET} is not a link: leaving it alone`);
    }
    fs.mkdirSync(USERS, { recursive: true });
    const others = liveUsers();
    // The first user records what was there (a `make install`, or nothing) to put it back at the end.
    const previousFile = path.join(USERS, 'previous.json');
    if (others.length === 0) fs.writeFileSync(previousFile, JSON.stringify(current));
    fs.writeFileSync(mark, '');
    if (current !== mountHelper) {
      fs.rmSync(TARGET, { force: true });
      fs.symlinkSync(mountHelper, TARGET);
    }
  });
  t.teardown(() => locked(() => {
    fs.rmSync(mark, { force: true });
    if (liveUsers().length > 0) return;
    let previous: string | null = null;
    try {
      previous = JSON.parse(fs.readFileSync(path.join(USERS, 'previous.json'), 'utf8')) as string | null;
    } catch {
      // nothing recorded
    }
    fs.rmSync(TARGET, { force: true });
    if (previous) fs.symlinkSync(previous, TARGET);
    fs.rmSync(USERS, { recursive: true, force: true });
  }));
}
