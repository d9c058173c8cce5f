// setxattr(XATTR_REPLACE) from several processes at once on one file (issue 13 item 7: "briefly
// sees ENOENT; the replace must be atomic"). Each process replaces user.k over and over, mixed with
// getxattr, listxattr and opens, as root and as a user, on: a file made through the mount (upper),
// small lower files (the first replace copies them up while the others arrive), a large lower file
// (copied up in steps between other requests, so replaces, reads of the xattr and opens arrive while
// the copy is in progress) held open for reading the whole time (with passthrough its copy-up gives
// the name a new node), and lower directories. No process may see an error or a value nobody wrote,
// on strata as on the kernel's overlay. The iterations are bounded and nothing depends on timing:
// a regression guard (the race did not reproduce on this version).
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run } from './helpers/exec.js';
import { Checks } from './helpers/ops-checks.js';
import { buildLayer, type LayerSpec } from './helpers/ops-layers.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { PYTHON } from './helpers/python.js';
import { runShell, type User } from './helpers/shell-pair.js';

/** A caller who owns none of the files (they are mode 0666, the directory 0777). */
const USER: User = { uid: 3000, gid: 3000, groups: [3000] };

const PROCS = 4;
const ITERATIONS = 400;
/** More than one 16 MiB step of the asynchronous copy-up (copy_up.ts ASYNC_STEP). */
const BIG_BYTES = 40 << 20;

const SMALL = ['s0', 's1', 's2', 's3', 's4', 's5'];
/** Lower files only the user's pass touches (their copy-ups race under that user). */
const USER_SMALL = ['q0', 'q1', 'q2'];
const LAYER: LayerSpec = [
  ...[...SMALL, ...USER_SMALL].map((p) => ({ t: 'file' as const, p, data: `${p}\n`, mode: 0o666, xattrs: { 'user.k': 'init' } })),
  { t: 'file', p: 'held', data: 'held\n', mode: 0o666, xattrs: { 'user.k': 'init' } },
  { t: 'dir', p: 'dir', mode: 0o777, xattrs: { 'user.k': 'init' } },
  { t: 'file', p: 'dir/in', data: 'in\n', mode: 0o666, xattrs: { 'user.k': 'init' } },
  { t: 'dir', p: 'qdir', mode: 0o777, xattrs: { 'user.k': 'init' } },
];

/** The layer, plus a large file of real data (holes would be skipped by the copy) with user.k. */
function lower(dir: string, layerIndex: number): void {
  buildLayer(dir, LAYER, layerIndex);
  const fd = fs.openSync(path.join(dir, 'big'), 'w', 0o666);
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < BIG_BYTES / block.length; i++) {
    crypto.createHash('sha512').update(String(i)).digest().copy(block, 0);
    fs.writeSync(fd, block);
  }
  fs.closeSync(fd);
  fs.chmodSync(path.join(dir, 'big'), 0o666);
  const r = run('setfattr', ['-n', 'user.k', '-v', 'init', path.join(dir, 'big')]);
  if (r.status !== 0) throw new Error(`setfattr: ${r.stderr.trim()}`);
}

// For each target in turn: PROCS processes start together (they wait on a pipe the parent then
// closes) and each runs ITERATIONS operations on it: replace (twice as often), get, list, and an
// open for reading. Targets named "+path" are opened for reading by the parent first and stay open
// until the end. Prints, per target, the errors and malformed values seen, then sets user.k to
// "done" everywhere (so that the final trees compare).
const HAMMER = String.raw`
import errno, json, os, re, sys
procs, n = int(sys.argv[1]), int(sys.argv[2])
targets = [t.lstrip('+') for t in sys.argv[3:]]
held = [os.open(t[1:], os.O_RDONLY) for t in sys.argv[3:] if t.startswith('+')]
good = re.compile(rb'^(init|done|p[0-9]+-[0-9]+)$')
report = {}
for t in targets:
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    kids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:
            os.close(go_w); os.close(res_r)
            os.read(go_r, 1)
            seen = {}
            def bad(what): seen[what] = seen.get(what, 0) + 1
            for i in range(n):
                op = (i + p) % 5
                try:
                    if op < 2:
                        os.setxattr(t, 'user.k', b'p%d-%d' % (p, i), os.XATTR_REPLACE)
                    elif op == 2:
                        v = os.getxattr(t, 'user.k')
                        if not good.match(v): bad('getxattr value %r' % v)
                    elif op == 3:
                        if 'user.k' not in os.listxattr(t): bad('listxattr without user.k')
                    else:
                        os.close(os.open(t, os.O_RDONLY))
                except OSError as e:
                    bad('%s: %s' % (['setxattr', 'setxattr', 'getxattr', 'listxattr', 'open'][op], errno.errorcode.get(e.errno, e.errno)))
            os.write(res_w, (json.dumps(seen) + '\n').encode())
            os._exit(0)
        kids.append(pid)
    os.close(go_r); os.close(res_w)
    os.close(go_w)
    for pid in kids: os.waitpid(pid, 0)
    data = b''
    while True:
        chunk = os.read(res_r, 65536)
        if not chunk: break
        data += chunk
    os.close(res_r)
    total = {}
    for line in data.decode().splitlines():
        for k, v in json.loads(line).items(): total[k] = total.get(k, 0) + v
    report[t] = {'processes reporting': len(data.decode().splitlines()), 'problems': total}
for t in targets:
    os.setxattr(t, 'user.k', b'done', os.XATTR_REPLACE)
for fd in held: os.close(fd)
print(json.dumps(report, sort_keys=True))
`;

test.serial('concurrent setxattr(XATTR_REPLACE) with getxattr, listxattr and opens: no error, no torn value, during copy-up too', (t) => {
  const c = new Checks(t);
  const pair = setupPair(t, [lower]);
  const passes: [User | undefined, string[]][] = [
    [undefined, ['up', ...SMALL, '+held', '+big', 'dir', 'dir/in']],
    [USER, ['up', ...USER_SMALL, 'qdir', '+held', 'big', 'dir/in']],
  ];
  for (const side of [pair.kernel, pair.strata]) {
    c.eq(runShell(side, 'echo up > up && chmod 666 up && setfattr -n user.k -v init up'), '', `${side.name}: the upper file`);
    // root, then a user (lower files of its own, and the copies root made)
    for (const [as, targets] of passes) {
      const expected = Object.fromEntries(targets.map((x) => [x.replace('+', ''), { 'processes reporting': PROCS, problems: {} }]));
      const argv = [PYTHON, '-c', HAMMER, String(PROCS), String(ITERATIONS), ...targets];
      const cmd = as ? ['setpriv', `--reuid=${as.uid}`, `--regid=${as.gid}`, `--groups=${as.groups.join(',')}`, ...argv] : argv;
      const who = `${side.name}${as ? ` as ${as.uid}` : ''}`;
      const r = run(cmd[0]!, cmd.slice(1), { cwd: side.mnt, timeoutMs: 300_000 });
      c.eq(r.status, 0, `${who}: the hammer ran (${r.stderr.trim().split('\n').slice(-3).join(' | ')})`);
      let report: unknown = r.stdout;
      try {
        report = JSON.parse(r.stdout);
      } catch {
        // shown as text
      }
      c.eq(report, expected, `${who}: errors and malformed values seen by ${PROCS} processes x ${ITERATIONS} operations per target`);
    }
  }
  finishPair(c, pair);
  c.done();
});
