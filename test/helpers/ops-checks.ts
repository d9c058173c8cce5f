// Soft assertions: a differential test reports every kind of difference in one run (step results,
// merged trees, uppers, lowers, the kernel reading strata's upper) instead of stopping at the first.
import type { ExecutionContext } from 'ava';
import { inspect, isDeepStrictEqual } from 'node:util';

export class Checks {
  readonly failures: string[] = [];
  private passed = 0;
  constructor(readonly t: ExecutionContext) {}

  /** Records a failure unless `actual` deep-equals `expected`. */
  eq(actual: unknown, expected: unknown, message: string): boolean {
    if (isDeepStrictEqual(actual, expected)) {
      this.passed++;
      return true;
    }
    this.failures.push(`${message}\n    actual:   ${show(actual)}\n    expected: ${show(expected)}`);
    return false;
  }

  /** Like eq, for the fields of `expected` only. */
  like(actual: unknown, expected: Record<string, unknown>, message: string): boolean {
    const a = actual as Record<string, unknown> | null;
    const picked = typeof a === 'object' && a !== null ? Object.fromEntries(Object.keys(expected).map((k) => [k, a[k]])) : a;
    return this.eq(picked, expected, message);
  }

  ok(cond: boolean, message: string): boolean {
    if (cond) {
      this.passed++;
      return true;
    }
    this.failures.push(message);
    return false;
  }

  /** Records a failure for a non-empty list of differences. */
  none(diffs: readonly unknown[], message: string, limit = 25): boolean {
    if (diffs.length === 0) {
      this.passed++;
      return true;
    }
    const shown = diffs.slice(0, limit).map((d) => `    ${typeof d === 'string' ? d : show(d)}`);
    if (diffs.length > limit) shown.push(`    ... and ${diffs.length - limit} more`);
    this.failures.push(`${message} (${diffs.length}):\n${shown.join('\n')}`);
    return false;
  }

  /** Ends the test: passes, or fails listing every recorded failure. */
  done(): void {
    if (this.failures.length === 0) {
      this.t.pass(`${this.passed} checks passed`);
      return;
    }
    this.t.fail(`${this.failures.length} check(s) failed:\n\n${this.failures.map((f, i) => `${i + 1}. ${f}`).join('\n\n')}`);
  }
}

function show(v: unknown): string {
  return inspect(v, { depth: 6, breakLength: 160, maxStringLength: 300, compact: 4 }).replace(/\n/g, '\n    ');
}
