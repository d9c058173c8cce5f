// mount(8) runs /sbin/mount.fuse.strata (put there by `make install`) for fuse.strata mounts and
// remounts; without an install, a test links this checkout's helper there for its duration.
// Test files run in parallel processes: each user leaves a mark in USERS, and the link is taken
// away (and what was there before put back) only by the last live user.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { mountHelper } from './paths.js';

const TARGET = '/sbin/mount.fuse.strata';
const USERS = '/run/strata-test-helper';

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
  let current: string | null = null;
  try {
    current = fs.readlinkSync(TARGET);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') throw new Error(`${TARGET} is not a link: leaving it alone`);
  }
  fs.mkdirSync(USERS, { recursive: true });
  const mark = path.join(USERS, `${process.pid}.${Math.random().toString(36).slice(2)}`);
  const others = liveUsers();
  // The first user records what was there (a `make install`, or nothing) to put it back at the end.
  const previousFile = path.join(USERS, 'previous.json');
  if (others.length === 0) fs.writeFileSync(previousFile, JSON.stringify(current));
  fs.writeFileSync(mark, '');
  if (current !== mountHelper) {
    fs.rmSync(TARGET, { force: true });
    fs.symlinkSync(mountHelper, TARGET);
  }
  t.teardown(() => {
    fs.rmSync(mark, { force: true });
    if (liveUsers().length > 0) return;
    let previous: string | null = null;
    try {
      previous = JSON.parse(fs.readFileSync(previousFile, 'utf8')) as string | null;
    } catch {
      // nothing recorded
    }
    fs.rmSync(TARGET, { force: true });
    if (previous) fs.symlinkSync(previous, TARGET);
    fs.rmSync(USERS, { recursive: true, force: true });
  });
}
