// Clearing setuid and setgid when a file changes (the kernel's setattr_should_drop_suidgid and
// file_remove_privs): write, truncate, fallocate and chown by a caller without CAP_FSETID drop
// setuid, and setgid when the file is group-executable or the caller is not in the file's group.
// The daemon changes the upper file with its own credentials (root keeps both bits), so it applies
// the rule for the caller itself: the kernel asks for it with FUSE_HANDLE_KILLPRIV_V2 (WRITE,
// SETATTR and OPEN flags) and never for FALLOCATE. security.capability needs nothing here: the
// upper filesystem drops it on any write, truncate or chown, whoever does it.

import fs from 'node:fs';
import type { RequestContext } from '../fuse/types.js';
import { FATTR_FH, FATTR_KILL_SUIDGID, FATTR_LOCKOWNER } from '../fuse/protocol.js';
import * as N from '../native/index.js';
import { chmodObject, statObject } from './node.js';

const { ST } = N;

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const S_IXGRP = 0o010;
const CAP_FSETID = 4;
const CAP_SYS_ADMIN = 21;

/** What the kernel knows of a caller beyond the request header: supplementary groups, CAP_FSETID, CAP_SYS_ADMIN. */
export interface CallerCreds {
  groups: number[];
  fsetid: boolean;
  sysAdmin: boolean;
}

/** Reads the caller's groups and effective capabilities from /proc (the request names its thread). */
export function callerCreds(ctx: RequestContext): CallerCreds {
  try {
    const status = fs.readFileSync(`/proc/${ctx.pid}/status`, 'latin1');
    const shown = /^Groups:\s*(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/).filter(Boolean).map(Number) ?? [];
    const ids = ctx.ids;
    const groups = ids ? shown.map((g) => ids.gidIn(g)) : shown;
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    const caps = capEff === undefined ? 0 : parseInt(capEff.slice(-8), 16);
    return { groups, fsetid: (caps & (1 << CAP_FSETID)) !== 0, sysAdmin: (caps & (1 << CAP_SYS_ADMIN)) !== 0 };
  } catch {
    // The caller is gone (or in another pid namespace): judge by the header alone.
    return { groups: [], fsetid: ctx.uid === 0, sysAdmin: ctx.uid === 0 };
  }
}

/** in_group_p: the caller's fsgid or one of its supplementary groups. */
export function callerInGroup(ctx: RequestContext, gid: number, creds?: CallerCreds): boolean {
  if (ctx.gid === gid) return true;
  return (creds ?? callerCreds(ctx)).groups.includes(gid);
}

/** The S_ISUID / S_ISGID bits a change of the file by `ctx` drops from `mode` (file group `gid`). */
export function privBitsToDrop(ctx: RequestContext, mode: number, gid: number): number {
  if ((mode & (S_ISUID | S_ISGID)) === 0 || (mode & N.C.S_IFMT) !== N.C.S_IFREG) return 0;
  const creds = callerCreds(ctx);
  if (creds.fsetid) return 0;
  let drop = mode & S_ISUID;
  if (mode & S_ISGID && (mode & S_IXGRP || !callerInGroup(ctx, gid, creds))) drop |= S_ISGID;
  return drop;
}

const st = N.newStatBuf();

/** Applies the rule to the open file `fd` (changed by `ctx`); true when the mode changed. */
export function killSuidSgid(ctx: RequestContext, fd: number): boolean {
  N.fstat(fd, st);
  const mode = st[ST.mode]!;
  const drop = privBitsToDrop(ctx, mode, st[ST.gid]!);
  if (drop === 0) return false;
  N.fchmod(fd, mode & 0o7777 & ~drop);
  return true;
}

/** As killSuidSgid, for a file at a location (no open descriptor at hand). */
export function killSuidSgidAt(ctx: RequestContext, loc: [number, string]): boolean {
  statObject(loc, st);
  const mode = st[ST.mode]!;
  const drop = privBitsToDrop(ctx, mode, st[ST.gid]!);
  if (drop === 0) return false;
  chmodObject(loc, mode & 0o7777 & ~drop);
  return true;
}

/**
 * Whether a SETATTR asks for the rule: FATTR_KILL_SUIDGID (truncate, chown), or no attribute at
 * all, which is what file_remove_privs sends before a passthrough write or a copy_file_range
 * into the file (the kernel leaves the mode change to the daemon under HANDLE_KILLPRIV_V2).
 */
export function setattrKillsPrivs(valid: number): boolean {
  return (valid & FATTR_KILL_SUIDGID) !== 0 || (valid & ~(FATTR_FH | FATTR_LOCKOWNER)) === 0;
}

/** Clears S_ISGID of the object at `loc`: a setfacl by a caller outside the file's group (FUSE_SETXATTR_ACL_KILL_SGID). */
export function dropSgidAt(loc: [number, string]): void {
  statObject(loc, st);
  const mode = st[ST.mode]!;
  if (mode & S_ISGID) chmodObject(loc, mode & 0o7777 & ~S_ISGID);
}
