// Crash tests: a strata daemon started with a tag in its environment (so that it can be found and
// SIGKILLed), and a child process that starts several changes at once on the mount.
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { run, waitFor, type RunResult } from './exec.js';
import { mountAt, strataUnmount } from './mounts.js';
import { strataBin } from './paths.js';
import { holdsDevFuse, isAlive, processesTagged, taggedEnv } from './processes.js';
import { PYTHON } from './python.js';

export interface TaggedMount {
  result: RunResult;
  tag: string;
  /** The daemon (the tagged process holding /dev/fuse), when the mount succeeded. */
  pid: number | undefined;
}

/** Kills (SIGKILL) every live process that carries `tag`: only processes this test started. */
export function killTagged(tag: string): void {
  for (const p of processesTagged(tag)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * `bin/strata mount [extraArgs] -o OPTS MNT` with a tagged environment. Never throws: the caller
 * asserts on the result. Teardown unmounts MNT and kills whatever carries the tag.
 */
export function mountTagged(t: ExecutionContext, mnt: string, opts: string, extraArgs: readonly string[] = []): TaggedMount {
  const { tag, env } = taggedEnv();
  t.teardown(() => {
    strataUnmount(mnt);
    killTagged(tag);
  });
  const result = run(strataBin, ['mount', ...extraArgs, '-o', opts, mnt], { env, timeoutMs: 30_000 });
  const daemons = processesTagged(tag).filter((p) => holdsDevFuse(p.pid));
  return { result, tag, pid: daemons.length === 1 ? daemons[0]!.pid : undefined };
}

/** SIGKILLs the daemon and waits until it is gone. */
export async function killDaemon(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
  return waitFor(() => !isAlive(pid), 10_000, 10);
}

/** Is something mounted at `mnt`? */
export function isMounted(mnt: string): boolean {
  return mountAt(mnt) !== undefined;
}

export type ChangeOp =
  /** open O_WRONLY|O_APPEND, write one byte 'X' */
  | { op: 'append'; path: string }
  | { op: 'chmod'; path: string; mode: number }
  /** utimensat with atime = mtime = ns */
  | { op: 'utime'; path: string; ns: string };

/** Forks one process per change, all at once; exit code 0 or the errno (>= 255: something else). */
const CHANGES = String.raw`
import json, os, sys
ops = json.loads(sys.argv[1])
sys.stdout.write('started\n'); sys.stdout.flush()
pids = []
for op in ops:
    pid = os.fork()
    if pid == 0:
        try:
            k, p = op['op'], op['path']
            if k == 'append':
                fd = os.open(p, os.O_WRONLY | os.O_APPEND)
                try:
                    if os.write(fd, b'X') != 1: os._exit(253)
                finally:
                    os.close(fd)
            elif k == 'chmod':
                os.chmod(p, op['mode'])
            elif k == 'utime':
                os.utime(p, ns=(int(op['ns']), int(op['ns'])), follow_symlinks=False)
            else:
                os._exit(252)
            os._exit(0)
        except OSError as e:
            os._exit(e.errno if 0 < e.errno < 252 else 254)
        except BaseException:
            os._exit(255)
    pids.append(pid)
res = []
for pid in pids:
    _, st = os.waitpid(pid, 0)
    res.append(os.waitstatus_to_exitcode(st))
sys.stdout.write(json.dumps(res) + '\n')
`;

export interface ChangesRun {
  /** Resolves once the child said it is about to fork (the changes start now). */
  started: Promise<boolean>;
  /** Per op: 0 for success, else errno (or >= 252), or null if the child did not report. */
  done: Promise<(number | null)[]>;
}

/** Starts the changes in a child process group; teardown kills the group if it is still there. */
export function startChanges(t: ExecutionContext, ops: readonly ChangeOp[]): ChangesRun {
  const child = spawn(PYTHON, ['-c', CHANGES, JSON.stringify(ops)], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const pgid = child.pid!;
  let exited = false;
  t.teardown(() => {
    if (exited) return;
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // gone
    }
  });
  let out = '';
  let err = '';
  let onStarted: (v: boolean) => void = () => {};
  const started = new Promise<boolean>((resolve) => (onStarted = resolve));
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (out.includes('started\n')) onStarted(true);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = new Promise<(number | null)[]>((resolve) => {
    const timer = setTimeout(() => {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // gone
      }
    }, 30_000);
    child.on('close', () => {
      exited = true;
      clearTimeout(timer);
      onStarted(false);
      const line = out.split('\n').filter(Boolean).at(-1) ?? '';
      try {
        const res = JSON.parse(line) as number[];
        if (Array.isArray(res) && res.length === ops.length) return resolve(res);
      } catch {
        // fall through
      }
      if (err) process.stderr.write(`changes child: ${err}\n`);
      resolve(ops.map(() => null));
    });
  });
  return { started, done };
}
