// Clearing setuid, setgid and security.capability (the kernel's file_remove_privs and chown
// rules): write, truncate, O_TRUNC, fallocate in every mode, chown and chmod, by the owner, by a
// member of the file's group, by someone else and by root, on lower files (copied up by the
// change) and on upper ones. Each step runs on a kernel overlay and on strata; outputs must match.
import test from 'ava';
import type { LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { shellBoth, type ShellStep, type User } from './helpers/shell-pair.js';

const CAP = '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=';
const OTHER: User = { uid: 3000, gid: 3000, groups: [3000] };
const MEMBER: User = { uid: 3001, gid: 3001, groups: [3001, 2345] };
const ROOT: User | undefined = undefined;
const USERS: [string, User | undefined][] = [['other', OTHER], ['member', MEMBER], ['root', ROOT]];
const MODES = [0o4777, 0o2777, 0o2666, 0o6777, 0o6766];

/** The ways of changing a file's data, as shell commands on $f. */
const WRITES: [string, string][] = [
  ['write', 'printf x | dd of="$f" conv=notrunc status=none'],
  ['append', 'printf x >> "$f"'],
  ['truncate', 'truncate -s 3 "$f"'],
  ['otrunc', ': > "$f"'],
  ['falloc', 'fallocate -l 8192 "$f"'],
  ['keepsize', 'fallocate -n -o 0 -l 8192 "$f"'],
  ['punch', 'fallocate -p -o 0 -l 4096 "$f"'],
  ['zero', 'fallocate -z -o 0 -l 4096 "$f"'],
];

const name = (op: string, who: string, mode: number): string => `${op}-${who}-${mode.toString(8)}`;

function files(prefix: string): LayerSpec {
  const spec = [];
  for (const [op] of WRITES) {
    for (const [who] of USERS) {
      for (const mode of MODES) spec.push({ t: 'file' as const, p: `${prefix}${name(op, who, mode)}`, data: 'data\n', mode, uid: 1234, gid: 2345 });
    }
  }
  spec.push({ t: 'file' as const, p: `${prefix}cap-other`, data: 'c\n', mode: 0o777, xattrs: { 'security.capability': CAP } });
  spec.push({ t: 'file' as const, p: `${prefix}cap-root`, data: 'c\n', mode: 0o777, xattrs: { 'security.capability': CAP } });
  spec.push({ t: 'file' as const, p: `${prefix}cap-falloc`, data: 'c\n', mode: 0o777, xattrs: { 'security.capability': CAP } });
  return spec;
}

const STAT = 'stat -c "%a %u:%g %n"';

function writeSteps(dir: string): ShellStep[] {
  const steps: ShellStep[] = [];
  for (const [op, cmd] of WRITES) {
    for (const [who, as] of USERS) {
      const names = MODES.map((m) => `${dir}${name(op, who, m)}`).join(' ');
      steps.push({ as, sh: `for f in ${names}; do ${cmd} && ${STAT} "$f"; done` });
    }
  }
  steps.push({ as: OTHER, sh: `f=${dir}cap-other; printf x >> $f; getfattr -d -m - --absolute-names $f | sort; ${STAT} $f` });
  steps.push({ sh: `f=${dir}cap-root; printf x >> $f; getfattr -d -m - --absolute-names $f | sort; ${STAT} $f` });
  steps.push({ as: OTHER, sh: `f=${dir}cap-falloc; fallocate -n -l 4096 $f; getfattr -d -m - --absolute-names $f | sort; ${STAT} $f` });
  return steps;
}

const VARIANTS: [string, 'lower' | 'upper', string[]][] = [
  ['lower files', 'lower', []],
  ['upper files', 'upper', []],
  ['lower files, --passthrough off', 'lower', ['--passthrough', 'off']],
];
for (const [title, where, strataArgs] of VARIANTS) {
  test.serial(`write, truncate and every fallocate mode clear setuid/setgid/capability as the kernel (${title})`, (t) => {
    const c = new Checks(t);
    const pair = where === 'lower' ? setupPair(t, [files('')], { strataArgs }) : setupPair(t, [[]], { upper: files(''), strataArgs });
    const k = shellBoth(c, pair, writeSteps(''));
    // The steps do what they claim: the kernel clears setgid (no group-exec) for a non-member only.
    c.ok(k[4 * 3]!.includes('666 1234:2345 falloc-other-2666'), `kernel: fallocate by a non-member clears setgid: ${k[12]}`);
    c.ok(k[4 * 3 + 1]!.includes('2666 1234:2345 falloc-member-2666'), `kernel: fallocate by a member keeps it: ${k[13]}`);
    finishPair(c, pair);
    c.done();
  });
}

test.serial('chown and chgrp clear setuid/setgid and the capability; chmod by a non-member of the group clears setgid', (t) => {
  const c = new Checks(t);
  const OWNER_IN: User = { uid: 1234, gid: 1234, groups: [1234, 2345, 3000] };
  const OWNER_OUT: User = { uid: 1234, gid: 1234, groups: [1234, 3000] };
  const layer: LayerSpec = [
    ...MODES.map((m) => ({ t: 'file' as const, p: `chown-${m.toString(8)}`, data: 'x\n', mode: m, uid: 1234, gid: 2345 })),
    ...MODES.map((m) => ({ t: 'file' as const, p: `same-${m.toString(8)}`, data: 'x\n', mode: m, uid: 1234, gid: 2345 })),
    ...MODES.map((m) => ({ t: 'file' as const, p: `chgrp-in-${m.toString(8)}`, data: 'x\n', mode: m, uid: 1234, gid: 2345 })),
    ...MODES.map((m) => ({ t: 'file' as const, p: `chgrp-out-${m.toString(8)}`, data: 'x\n', mode: m, uid: 1234, gid: 2345 })),
    { t: 'file', p: 'capchown', data: 'x\n', mode: 0o755, xattrs: { 'security.capability': CAP } },
    { t: 'file', p: 'chmod-in', data: 'x\n', mode: 0o755, uid: 1234, gid: 2345 },
    { t: 'file', p: 'chmod-out', data: 'x\n', mode: 0o755, uid: 1234, gid: 2345 },
    { t: 'dir', p: 'dchmod-out', mode: 0o755, uid: 1234, gid: 2345 },
    { t: 'dir', p: 'dchown', mode: 0o6777, uid: 1234, gid: 2345 },
  ];
  const pair = setupPair(t, [layer]);
  shellBoth(c, pair, [
    { sh: `for f in chown-*; do chown 1500:2345 $f; ${STAT} $f; done` },
    { sh: `for f in same-*; do chown 1234 $f; ${STAT} $f; done` },
    { as: OWNER_IN, sh: `for f in chgrp-in-*; do chgrp 3000 $f; ${STAT} $f; done` },
    { as: OWNER_OUT, sh: `for f in chgrp-out-*; do chgrp 3000 $f; ${STAT} $f; done` },
    { sh: `chown 1500 capchown; getfattr -d -m - --absolute-names capchown; ${STAT} capchown` },
    { as: OWNER_IN, sh: `chmod 2755 chmod-in; ${STAT} chmod-in` },
    { as: OWNER_OUT, sh: `chmod 2755 chmod-out; ${STAT} chmod-out` },
    { as: OWNER_OUT, sh: `chmod 2755 dchmod-out; ${STAT} dchmod-out` },
    { sh: `chown 1500 dchown; ${STAT} dchown` },
  ]);
  finishPair(c, pair);
  c.done();
});
