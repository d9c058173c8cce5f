// Finding the daemon that serves a mountpoint, without relying on any status command: a live
// (non-zombie) process whose command line mentions the mountpoint.
import fs from 'node:fs';
import path from 'node:path';

export interface ProcessInfo {
  pid: number;
  cmdline: string[];
  state: string;
}

export function processInfo(pid: number): ProcessInfo | undefined {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
    return { pid, cmdline, state };
  } catch {
    return undefined;
  }
}

/** A process is gone once /proc no longer has it or it is a zombie waiting to be reaped. */
export function isAlive(pid: number): boolean {
  const p = processInfo(pid);
  return p !== undefined && p.state !== 'Z' && p.state !== 'X';
}

/** Live processes (other than this one) with an argument equal to the mountpoint. */
export function processesServing(mountpoint: string): ProcessInfo[] {
  const target = path.resolve(mountpoint);
  const out: ProcessInfo[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    const p = processInfo(Number(d));
    if (!p || p.state === 'Z' || p.state === 'X') continue;
    if (p.cmdline.some((a) => a === target || a === mountpoint)) out.push(p);
  }
  return out;
}
