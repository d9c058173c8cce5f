// The strata command line of this installation, for the parts that run strata as a user does (the
// bench, containers' mounts).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../../bin/strata', import.meta.url));
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/**
 * `strata ARGS...` as [program, argv]: bin/strata, which `make build` makes (one process for a
 * background mount, the bundle with its code cache), else node on the compiled CLI.
 */
export function strataCommand(args: string[]): [string, string[]] {
  return existsSync(BIN) ? [BIN, args] : [process.execPath, [CLI, ...args]];
}
