// POSIX ACLs as the kernel overlay has them: access ACLs enforced, default ACLs inherited by new
// files and directories (the mode masked by the ACL instead of the umask), setgid directories
// with default ACLs, setfacl changing the mode bits (and setgid by a caller outside the group),
// chmod rewriting the ACL, ACLs copied up with their file. Every step runs on a kernel overlay
// and on strata, as root and as users with supplementary groups; outputs must match.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './helpers/exec.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { shellBoth, type ShellStep, type User } from './helpers/shell-pair.js';

const U3000: User = { uid: 3000, gid: 3000, groups: [3000] };
const U3001: User = { uid: 3001, gid: 3001, groups: [3001, 2345] };
const OWNER_IN: User = { uid: 1234, gid: 1234, groups: [1234, 2345] };
const OWNER_OUT: User = { uid: 1234, gid: 1234, groups: [1234] };

/** A lower layer with ACLs on directories and files (built with setfacl, as a user would). */
function aclLayer(dir: string): void {
  const mk = (rel: string, mode: number, uid = 0, gid = 0, data?: string): string => {
    const p = path.join(dir, rel);
    if (data === undefined) fs.mkdirSync(p);
    else fs.writeFileSync(p, data);
    fs.chownSync(p, uid, gid);
    fs.chmodSync(p, mode);
    return p;
  };
  const setfacl = (...args: string[]): void => void runOk('setfacl', args);
  setfacl('-d', '-m', 'u::r,g::r,o::-', mk('dro', 0o777));
  setfacl('-d', '-m', 'u::rwx,g::rwx,o::rx,u:3000:rwx,m::rwx', mk('dnamed', 0o777));
  setfacl('-d', '-m', 'u::rwx,g::rwx,o::-', mk('dsg', 0o2777, 0, 2345));
  setfacl('-m', 'u:3000:rwx', mk('dacc', 0o750));
  mk('dacc/victim', 0o644, 0, 0, 'v\n');
  setfacl('-m', 'u:3000:rw,g:2345:r', mk('facc', 0o640, 0, 0, 'secret\n'));
  setfacl('-m', 'u:3000:r', mk('fcopy', 0o640, 0, 0, 'copy me\n'));
  mk('fmode', 0o2755, 1234, 2345, 'm\n');
  mk('fmode2', 0o2755, 1234, 2345, 'm\n');
  mk('dplain', 0o777);
}

const ACL = (p: string): string => `getfacl -np ${p} 2>&1`;
const STAT = (p: string): string => `stat -c '%A %a %u:%g %n' ${p}`;

test.serial('default ACLs are inherited by new files and directories, with the modes the kernel gives', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [aclLayer]);
  const steps: ShellStep[] = [
    { sh: `umask 022; touch dro/f; mkdir dro/sub; mkfifo dro/p; ln -s x dro/l; ${STAT('dro/*')}; ${ACL('dro/f')}; ${ACL('dro/sub')}` },
    { sh: `umask 077; echo x > dnamed/f; mkdir dnamed/sub; ${STAT('dnamed/*')}; ${ACL('dnamed/f')}; ${ACL('dnamed/sub')}` },
    { as: U3000, sh: `umask 022; touch dnamed/mine; mkdir dnamed/minedir; ${STAT('dnamed/mine*')}; ${ACL('dnamed/mine')}` },
    { as: U3001, sh: `umask 002; mkdir dsg/sub; touch dsg/f; ${STAT('dsg/*')}; ${ACL('dsg/sub')}; ${ACL('dsg/f')}` },
    { sh: `mkdir dsg/rootsub; ${STAT('dsg/rootsub')}; ${ACL('dsg/rootsub')}` },
    { sh: `mkdir dsg/sub/deeper; touch dsg/sub/deeper/f; ${STAT('dsg/sub/deeper dsg/sub/deeper/f')}; ${ACL('dsg/sub/deeper/f')}` },
    // No default ACL: the umask applies (the kernel leaves it to the daemon with POSIX ACLs).
    { sh: `umask 027; touch dplain/f; mkdir dplain/d; mkfifo dplain/p; ${STAT('dplain/*')}` },
    { as: U3000, sh: `umask 0; touch dplain/u0; umask 077; mkdir dplain/u77; ${STAT('dplain/u*')}` },
    // A default ACL set through the mount (the directory is copied up) and removed again.
    { sh: `setfacl -d -m u::rw,g::-,o::- dplain && touch dplain/after && ${STAT('dplain/after')} && setfacl -k dplain && touch dplain/after2 && ${STAT('dplain/after2')}` },
    // Over a whiteout: the new object is built in the work directory, the ACL must still be the parent's.
    { sh: `rm dro/f && rmdir dro/sub && touch dro/f && mkdir dro/sub && ${STAT('dro/f dro/sub')}; ${ACL('dro/sub')}` },
  ];
  const k = shellBoth(c, pair, steps);
  c.ok(k[0]!.includes('-r--r----- 440 0:0 dro/f'), `kernel: a file under u::r,g::r,o::- is r--r----- (${k[0]})`);
  c.ok(k[3]!.includes('drwxrws--- 2770 3001:2345 dsg/sub'), `kernel: setgid kept and group bits from the ACL (${k[3]})`);
  finishPair(c, pair);
  c.done();
});

test.serial('access ACLs are enforced, before and after copy-up; unlink in a directory shared by ACL', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [aclLayer]);
  const steps: ShellStep[] = [
    { as: U3000, sh: 'cat facc; echo more >> facc; cat facc' },
    { as: U3001, sh: 'cat facc; echo no >> facc; cat facc' },
    { as: { uid: 3002, gid: 3002, groups: [] }, sh: 'cat facc' },
    { as: U3000, sh: 'touch dacc/new && rm dacc/new && rm -f dacc/victim; ls dacc' },
    { as: U3001, sh: 'ls dacc; touch dacc/no' },
    { sh: `chmod 600 facc; ${ACL('facc')}; ${STAT('facc')}` },
    { as: U3000, sh: 'cat facc' },
    { sh: `chmod 660 facc; ${ACL('facc')}` },
    { as: U3000, sh: 'cat facc' },
    { sh: `setfacl -x u:3000 facc; ${ACL('facc')}` },
    { as: U3000, sh: 'cat facc' },
    { sh: `setfacl -m u:3001:r facc; ${ACL('facc')}` },
    { as: U3001, sh: 'cat facc' },
    // copy-up keeps the ACL
    { sh: `touch fcopy; ${ACL('fcopy')}; ${STAT('fcopy')}` },
    { as: U3000, sh: 'cat fcopy' },
    { sh: `setfacl -b fcopy; ${ACL('fcopy')}` },
    { as: U3000, sh: 'cat fcopy' },
  ];
  const k = shellBoth(c, pair, steps);
  c.ok(k[0]!.includes('secret') && k[0]!.includes('more'), `kernel: the named user reads and writes (${k[0]})`);
  c.ok(k[2]!.includes('Permission denied'), `kernel: others are refused (${k[2]})`);
  finishPair(c, pair);
  c.done();
});

test.serial('setfacl of the owner entries changes the mode bits, with the setgid rule', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [aclLayer]);
  const steps: ShellStep[] = [
    { as: OWNER_IN, sh: `setfacl -m u::rwx,g::rwx,o::rwx fmode; ${STAT('fmode')}; ${ACL('fmode')}` },
    { as: OWNER_OUT, sh: `setfacl -m u::rwx,g::rwx,o::rwx fmode2; ${STAT('fmode2')}` },
    { as: OWNER_IN, sh: `setfacl -m u:3000:r fmode; ${STAT('fmode')}; ${ACL('fmode')}` },
    { as: OWNER_IN, sh: `chmod 2700 fmode; ${STAT('fmode')}; ${ACL('fmode')}` },
    { as: U3000, sh: 'setfacl -m u::r fmode' },
  ];
  const k = shellBoth(c, pair, steps);
  c.ok(k[0]!.includes('-rwxrwsrwx 2777'), `kernel: setgid kept for a member (${k[0]})`);
  c.ok(k[1]!.includes('-rwxrwxrwx 777'), `kernel: setgid cleared for a non-member (${k[1]})`);
  finishPair(c, pair);
  c.done();
});
