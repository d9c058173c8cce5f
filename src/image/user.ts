// The user a container's command runs as: the image's `User` (or `strata run --user`), resolved
// as Docker and podman resolve it (runc's GetExecUser, moby/sys/user), against the container's
// own /etc/passwd and /etc/group:
//
//   ""            root: uid 0, and gid, home and groups from root's passwd entry if there is one
//   NAME | UID    the passwd entry with that name (or uid): its uid, gid and home, and as
//                 supplementary groups every group of /etc/group that lists the user's name;
//                 a uid without an entry is used as it is, with gid 0 and home "/"
//   USER:GROUP    as above, but the gid is GROUP's (a name in /etc/group, or a number) and there
//                 are no supplementary groups
//
// A name (user or group) that the files do not hold is an error; a number never needs an entry.
// Numbers are never looked up as names. The process gets the gid as a supplementary group too
// (as Docker sets it). The files are read inside the container's root (openat2 RESOLVE_IN_ROOT):
// an /etc/passwd that is a symlink to /etc/shadow reads the container's, never the host's.

import fs from 'node:fs';
import * as N from '../native/index.js';
import { ImageError } from './types.js';

export interface ExecUser {
  uid: number;
  gid: number;
  /** Supplementary groups, the gid first. */
  groups: number[];
  home: string;
}

interface IdArg {
  name: string;
  id: number;
  numeric: boolean;
}

const MAX_ID = 0x7fffffff;

/** A user or group part of a spec: numeric (in range) or a name; null when empty. */
function parseIdArg(s: string, what: 'user' | 'group', spec: string): IdArg | null {
  if (s === '') return null;
  if (/^[+-]?\d+$/.test(s)) {
    const id = Number(s);
    if (!(id >= 0 && id <= MAX_ID)) throw new ImageError(`invalid ${what} in ${JSON.stringify(spec)}: ids must be in the range 0-${MAX_ID}`, 125);
    return { name: s, id, numeric: true };
  }
  return { name: s, id: -1, numeric: false };
}

/** Checks the syntax of a user spec (before anything is created); throws ImageError. */
export function parseUserSpec(spec: string): { user: IdArg | null; group: IdArg | null } {
  const i = spec.indexOf(':');
  const [u, g] = i < 0 ? [spec, ''] : [spec.slice(0, i), spec.slice(i + 1)];
  return { user: parseIdArg(u, 'user', spec), group: parseIdArg(g, 'group', spec) };
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** The lines of a passwd or group file, split into fields (comments and blank lines skipped). */
function records(text: string): string[][] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.split(':'));
}

/** A numeric field as Go's strconv.Atoi in parseLine reads it: 0 when it is not a number. */
function num(s: string | undefined): number {
  return s !== undefined && /^[+-]?\d+$/.test(s) ? Number(s) : 0;
}

export function parsePasswd(text: string): PasswdEntry[] {
  return records(text).map((f) => ({ name: f[0] ?? '', uid: num(f[2]), gid: num(f[3]), home: f[5] ?? '' }));
}

export function parseGroup(text: string): GroupEntry[] {
  return records(text).map((f) => ({ name: f[0] ?? '', gid: num(f[2]), members: (f[3] ?? '').split(',').filter((m) => m !== '') }));
}

/**
 * Resolves a user spec against the text of /etc/passwd and /etc/group (null: the file does not
 * exist). Throws ImageError (exit status 125, as docker run) for a name the files do not hold.
 */
export function resolveUser(spec: string, passwd: string | null, group: string | null): ExecUser {
  const { user: userArg, group: groupArg } = parseUserSpec(spec);
  const out = { uid: 0, gid: 0, sgids: [] as number[], home: '/' };
  const users = passwd === null ? [] : parsePasswd(passwd).filter((u) =>
    userArg === null ? u.uid === out.uid : userArg.numeric ? u.uid === userArg.id : u.name === userArg.name);
  let matchedName = '';
  if (users.length > 0) {
    const u = users[0]!;
    matchedName = u.name;
    out.uid = u.uid;
    out.gid = u.gid;
    out.home = u.home;
  } else if (userArg !== null) {
    if (!userArg.numeric) throw new ImageError(`unable to find user ${userArg.name}: no matching entries in passwd file`, 125);
    out.uid = userArg.id;
  }
  if (groupArg !== null || matchedName !== '') {
    const groups = group === null ? [] : parseGroup(group).filter((g) =>
      groupArg === null ? g.members.includes(matchedName) : groupArg.numeric ? g.gid === groupArg.id : g.name === groupArg.name);
    if (groupArg !== null) {
      if (groups.length > 0) out.gid = groups[0]!.gid;
      else if (groupArg.numeric) out.gid = groupArg.id;
      else throw new ImageError(`unable to find group ${groupArg.name}: no matching entries in group file`, 125);
    } else {
      out.sgids = groups.map((g) => g.gid);
    }
  }
  return { uid: out.uid, gid: out.gid, groups: [...new Set([out.gid, ...out.sgids])], home: out.home };
}

/** A file's text read inside `root` (symlinks resolved as if root were /), or null if absent. */
export function readInRoot(root: string, path: string): string | null {
  const rootFd = N.openat(N.C.AT_FDCWD, root, N.C.O_PATH | N.C.O_DIRECTORY | N.C.O_CLOEXEC, 0);
  let fd: number;
  try {
    fd = N.openat2(rootFd, path, N.C.O_RDONLY | N.C.O_CLOEXEC, 0, N.C.RESOLVE_IN_ROOT | N.C.RESOLVE_NO_MAGICLINKS);
  } catch (e) {
    if (N.isErrnoError(e, 'ENOENT') || N.isErrnoError(e, 'ENOTDIR')) return null;
    throw e;
  } finally {
    N.close(rootFd);
  }
  try {
    const st = N.newStatBuf();
    N.fstat(fd, st);
    if ((st[N.ST.mode]! & N.C.S_IFMT) !== N.C.S_IFREG) return null;
    return fs.readFileSync(fd, 'utf8');
  } finally {
    N.close(fd);
  }
}

/** The user for a spec in the container whose root is `root`, with the groups of --group-add (names or GIDs). */
export function containerUser(root: string, spec: string, groupAdd: readonly string[] = []): ExecUser {
  const group = readInRoot(root, 'etc/group');
  const user = resolveUser(spec, readInRoot(root, 'etc/passwd'), group);
  if (groupAdd.length === 0) return user;
  const known = group === null ? [] : parseGroup(group);
  const extra = groupAdd.map((g) => {
    if (/^[0-9]+$/.test(g)) return Number(g);
    const found = known.find((k) => k.name === g);
    if (!found) throw new ImageError(`unable to find group ${g}: no matching entries in group file`, 125);
    return found.gid;
  });
  return { ...user, groups: [...new Set([...user.groups, ...extra])] };
}
