// Progress bars for long commands (load, import, save, commit, export), on a terminal only:
// when stderr is not a TTY (scripts, tests, --json) nothing is drawn.

import type { SingleBar } from 'cli-progress';

export interface Progress {
  /** Adds n units (bytes) done. */
  tick(n: number): void;
  /** Sets the label shown before the bar. */
  label(text: string): void;
  stop(): void;
}

const NONE: Progress = { tick: () => {}, label: () => {}, stop: () => {} };

function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** A bar over `total` bytes on stderr when it is a TTY and `quiet` is false; otherwise does nothing. */
export async function byteProgress(what: string, total: number, quiet = false): Promise<Progress> {
  if (quiet || !process.stderr.isTTY || total <= 0) return NONE;
  const { default: cliProgress } = await import('cli-progress');
  let text = what;
  const bar: SingleBar = new cliProgress.SingleBar({
    stream: process.stderr,
    hideCursor: true,
    clearOnComplete: true,
    format: (options, params) => {
      const width = options.barsize ?? 30;
      const done = Math.round(params.progress * width);
      return `${text} [${'='.repeat(done)}${' '.repeat(width - done)}] ${mib(params.value)} / ${mib(params.total)}`;
    },
  });
  bar.start(total, 0);
  let value = 0;
  return {
    tick: (n) => {
      value += n;
      bar.update(Math.min(value, total));
    },
    label: (t) => {
      text = t;
    },
    stop: () => bar.stop(),
  };
}
