// `strata umount`: ends a mount whatever state its daemon is in.
// - daemon running and answering: umount(2), lazily if busy; the daemon then exits;
// - daemon gone (killed): abort the FUSE connection, detach the mount;
// - daemon hung (not answering within a timeout): abort the connection (blocked callers get
//   ENOTCONN), kill the daemon, detach the mount.

import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import * as N from '../native/index.js';
import { processAlive, readRecord, removeRecord } from './registry.js';
import { FUSE_SUBTYPE } from './mount_flags.js';
import { mountinfo, type MountinfoEntry } from './validate.js';
import { errCode } from '../fuse/errors.js';

const FUSECTL = '/sys/fs/fuse/connections';
/** The type mountinfo gives strata's mounts. */
const STRATA_FSTYPE = `fuse.${FUSE_SUBTYPE}`;

/** The topmost mount at `mountpoint` (its device and type), or null. */
function mountEntry(mountpoint: string): MountinfoEntry | null {
  return mountinfo().filter((m) => m.mountpoint === mountpoint).pop() ?? null;
}

/** Does the daemon answer within `ms`? statfs is never cached by the kernel: it always reaches the daemon. */
function answers(mountpoint: string, ms: number): boolean {
  const r = spawnSync('stat', ['-f', '-c', '%b', '--', mountpoint], { timeout: ms, killSignal: 'SIGKILL', stdio: 'ignore' });
  return r.status === 0;
}

/** Aborts the FUSE connection of the mount (its device minor names it in fusectl). */
function abortConnection(dev: string): boolean {
  if (!existsSync(FUSECTL + '/')) return false;
  try {
    if (!existsSync(`${FUSECTL}/${dev.split(':')[1]}`)) N.mount('fusectl', FUSECTL, 'fusectl', 0, null);
  } catch {
    // already mounted, or not possible here
  }
  const abort = `${FUSECTL}/${dev.split(':')[1]}/abort`;
  try {
    writeFileSync(abort, '1');
    return true;
  } catch {
    return false;
  }
}

function detach(mountpoint: string): void {
  N.umount2(mountpoint, N.C.MNT_DETACH);
}

/** Unmounts; returns what was done, in one line. Throws when it is not a mount or cannot be undone. */
export async function unmountStrata(mountpoint: string): Promise<string> {
  const entry = mountEntry(mountpoint);
  const rec = readRecord(mountpoint);
  if (!entry) {
    if (rec && !processAlive(rec.pid)) removeRecord(mountpoint, rec.pid);
    throw Object.assign(new Error(`"${mountpoint}" is not mounted`), { code: 'ENOTMOUNTED' });
  }
  // Another filesystem's mount (a kernel overlay, a mount stacked over strata's) is not strata's to end.
  if (entry.fstype !== STRATA_FSTYPE) {
    throw Object.assign(new Error(`"${mountpoint}" is not a strata mount (${entry.fstype} is mounted there): unmount it with umount(8)`), { code: 'ENOTSTRATA' });
  }
  const alive = rec !== null && processAlive(rec.pid);
  if (!alive || !answers(mountpoint, 3000)) {
    const aborted = abortConnection(entry.dev);
    if (alive) process.kill(rec!.pid, 'SIGKILL');
    detach(mountpoint);
    if (rec) removeRecord(mountpoint, rec.pid);
    const what = alive ? 'the daemon did not answer: killed it' : 'the daemon was gone';
    return `${what}, ${aborted ? 'aborted the FUSE connection and ' : ''}detached the mount`;
  }
  let how = 'unmounted';
  try {
    N.umount2(mountpoint, 0);
  } catch (e) {
    if (errCode(e) !== 'EBUSY') throw e;
    detach(mountpoint);
    how = 'busy: detached lazily (the daemon exits when the last user is gone)';
  }
  if (how === 'unmounted') {
    // (a daemon exits within a few ms of its unmount: look often at first, then every 50 ms, 5 s in all)
    for (let i = 0; i < 140 && processAlive(rec!.pid); i++) await sleep(i < 50 ? 2 : 50);
    if (processAlive(rec!.pid)) {
      process.kill(rec!.pid, 'SIGTERM');
      how += '; the daemon had to be stopped with SIGTERM';
    }
  }
  return how;
}
