// What the command modules share: common options, output, and the one-line failure of a command.

export const storeOption = { type: 'string', describe: 'the store directory (default $STRATA_STORE or /var/lib/strata)' } as const;

/** docker's -i and -t: the command gets strata's own standard input and terminal anyway. */
export const TERMINAL_OPTIONS = {
  interactive: { alias: 'i', type: 'boolean', default: false, describe: 'accepted for docker compatibility: the command always gets strata\'s stdin' },
  tty: { alias: 't', type: 'boolean', default: false, describe: 'accepted for docker compatibility: the command runs on strata\'s own terminal' },
} as const;

export function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** Ends the process with the error's first line on stderr, and its exitCode (ImageError's), else 1. */
export function failWith(e: unknown): never {
  const err = e as { message?: string; exitCode?: unknown };
  process.stderr.write(`strata: ${(err.message ?? String(e)).split('\n')[0]}\n`);
  process.exit(typeof err.exitCode === 'number' ? err.exitCode : 1);
}

/** A command handler whose errors end the process with one line (failWith). */
export function guarded<A>(fn: (a: A) => Promise<void>): (a: A) => Promise<void> {
  return async (a: A) => {
    try {
      await fn(a);
    } catch (e) {
      failWith(e);
    }
  };
}

/** The store directory of a command: --store, else $STRATA_STORE, else /var/lib/strata. */
export async function storeDirOf(a: { store?: string }): Promise<string> {
  return (await import('../image/store.js')).storeDir(a.store);
}
