// A descriptor scenario run side by side: the same steps on a kernel overlay mount and on strata
// (same layers, separate uppers), each side driven by long-lived processes that keep their
// descriptors open across steps. Every step's answer (value, errno, fstat through the fd) must
// agree; the kernel must give the answers the scenario states (so the scenario proves what it
// claims); then the merged trees, the uppers and the lowers are compared (finishPair).
import type { ExecutionContext } from 'ava';
import { Checks } from './ops-checks.js';
import { finishPair, setupPair, type LowerSource, type Pair, type PairOptions } from './ops-pair.js';
import { FdSide, type FdStep } from './fd-side.js';
import { ROOT, type FdUser } from './fd-driver.js';
import { isDeepStrictEqual } from 'node:util';

export interface FdScenario {
  lowers: readonly LowerSource[];
  steps: ReadonlyArray<FdStep | FdStep['cmd']>;
  users?: readonly FdUser[];
  pair?: PairOptions;
  /** Replaces finishPair (e.g. for an upper in another format); both sides are still mounted, drivers closed. */
  finish?: (c: Checks, pair: Pair) => void;
}

export interface FdStepLog {
  step: number;
  cmd: string;
  kernel: unknown;
  strata: unknown;
}

/** A kernel answer other than the one the scenario states. */
export interface FdUnexpected {
  step: number;
  cmd: string;
  kernel: unknown;
  stated: unknown;
}

/** Runs the steps on both sides; returns the mismatching steps and the kernel answers that broke an `expect`. */
export function runFdSteps(k: FdSide, s: FdSide, steps: FdScenario['steps']): { mismatches: FdStepLog[]; unexpected: FdUnexpected[] } {
  const mismatches: FdStepLog[] = [];
  const unexpected: FdUnexpected[] = [];
  steps.forEach((raw, i) => {
    const st: FdStep = Array.isArray(raw) ? { cmd: raw } : (raw as FdStep);
    const rk = k.run(st);
    const rs = s.run(st);
    const cmd = `${st.who ? `${st.who}: ` : ''}${JSON.stringify(st.cmd)}`;
    if (!isDeepStrictEqual(rk, rs)) mismatches.push({ step: i, cmd, kernel: rk, strata: rs });
    if (st.expect !== undefined && !isDeepStrictEqual(rk, st.expect)) unexpected.push({ step: i, cmd, kernel: rk, stated: st.expect });
  });
  return { mismatches, unexpected };
}

export function fdScenario(t: ExecutionContext, sc: FdScenario): void {
  const c = new Checks(t);
  const pair = setupPair(t, sc.lowers, sc.pair);
  const k = new FdSide(pair.kernel, sc.users ?? [ROOT]);
  const s = new FdSide(pair.strata, sc.users ?? [ROOT]);
  t.teardown(() => {
    k.close();
    s.close();
  });
  const { mismatches, unexpected } = runFdSteps(k, s, sc.steps);
  c.none(unexpected, 'the kernel does not answer as this scenario states (the scenario is wrong)');
  c.none(mismatches, `step answers differ from the kernel's (of ${sc.steps.length} steps)`);
  k.close();
  s.close();
  (sc.finish ?? finishPair)(c, pair);
  c.done();
}
