// Shell scenarios on a differential pair: each step is a bash script run in the kernel overlay's
// mount point and then in strata's, as root or as a non-root user with supplementary groups
// (setpriv), and what it prints (stdout, stderr, exit status) must be the same on both.
import { run } from './exec.js';
import type { Checks } from './ops-checks.js';
import type { Pair, Side } from './ops-pair.js';

/** A non-root caller: uid, gid and supplementary groups. */
export interface User {
  uid: number;
  gid: number;
  groups: number[];
}

export interface ShellStep {
  sh: string;
  as?: User;
}

/** Runs `script` with bash in the side's mount point; the mount path in the output reads as `.`. */
export function runShell(side: Side, script: string, as?: User): string {
  const argv = ['bash', '-c', script];
  const cmd = as
    ? ['setpriv', `--reuid=${as.uid}`, `--regid=${as.gid}`, as.groups.length ? `--groups=${as.groups.join(',')}` : '--clear-groups', ...argv]
    : argv;
  const r = run(cmd[0]!, cmd.slice(1), { cwd: side.mnt, env: { ...process.env, LC_ALL: 'C' } });
  const out = `${r.stdout}${r.stderr}`.split(side.mnt).join('.');
  return r.status === 0 ? out : `${out}[exit ${r.status ?? r.signal}]`;
}

/** Runs every step on both sides; records one failure listing the steps whose output differs. Returns the kernel's outputs. */
export function shellBoth(c: Checks, pair: Pair, steps: readonly ShellStep[]): string[] {
  const kernel: string[] = [];
  const diffs: string[] = [];
  steps.forEach((step, i) => {
    const k = runShell(pair.kernel, step.sh, step.as);
    const s = runShell(pair.strata, step.sh, step.as);
    kernel.push(k);
    if (k !== s) {
      const who = step.as ? ` (as ${step.as.uid}:${step.as.gid} groups ${step.as.groups.join(',') || '-'})` : '';
      diffs.push(`step ${i}${who}: ${step.sh}\n      kernel: ${JSON.stringify(k)}\n      ${pair.strata.name}: ${JSON.stringify(s)}`);
    }
  });
  c.none(diffs, `shell step outputs differ from the kernel's (of ${steps.length} steps)`);
  return kernel;
}
