// A small record per live mount under /run/strata, so `strata umount` and `strata status` can
// find the daemon of a mount point.

import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const RUN_DIR = process.env.STRATA_RUN_DIR ?? '/run/strata';

export interface MountRecord {
  pid: number;
  mountpoint: string;
  lowerdirs: string[];
  upperdir: string | null;
  workdir: string | null;
  started: string;
  logFile: string | null;
  /** Refreshed every few seconds by the daemon. */
  requests?: number;
  errors?: number;
  /** Requests by opcode name. */
  byOp?: Record<string, number>;
  updated?: string;
  /** Set by a daemon that an error ended (see mountCommand). */
  failed?: { at: string; error: string };
}

function recordPath(mountpoint: string): string {
  return join(RUN_DIR, Buffer.from(mountpoint).toString('base64url') + '.json');
}

export function writeRecord(rec: MountRecord): void {
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 });
  writeFileSync(recordPath(rec.mountpoint), JSON.stringify(rec));
}

/** The control socket of the daemon `pid` (see control.ts). */
export function controlPath(pid: number): string {
  return join(RUN_DIR, `${pid}.sock`);
}

/** Removes the mount's record, and the socket of its daemon when that daemon is gone (killed). */
export function removeRecord(mountpoint: string, pid: number): void {
  const rec = readRecord(mountpoint);
  if (rec && rec.pid === pid) rmSync(recordPath(mountpoint), { force: true });
  if (pid !== process.pid && !processAlive(pid)) rmSync(controlPath(pid), { force: true });
}

/** Removes the sockets that daemons killed before they could close them left behind. */
export function sweepSockets(): void {
  let names: string[];
  try {
    names = readdirSync(RUN_DIR);
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^(\d+)\.sock$/.exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && !processAlive(pid)) rmSync(join(RUN_DIR, n), { force: true });
  }
}

export function readRecord(mountpoint: string): MountRecord | null {
  try {
    return JSON.parse(readFileSync(recordPath(mountpoint), 'utf8')) as MountRecord;
  } catch {
    return null;
  }
}

export function allRecords(): MountRecord[] {
  let names: string[] = [];
  try {
    names = readdirSync(RUN_DIR);
  } catch {
    return [];
  }
  const out: MountRecord[] = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    try {
      out.push(JSON.parse(readFileSync(join(RUN_DIR, n), 'utf8')) as MountRecord);
    } catch {
      // a record being written or removed
    }
  }
  return out;
}

/** Resident memory of a process (VmRSS, bytes); NaN when it is gone. */
export function residentBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Is the process running? (A zombie waiting to be reaped by its new parent counts as gone.) */
export function processAlive(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return false;
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}
