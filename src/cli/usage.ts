// yargs' complaints about the command line, said as strata says them: an unknown option by name
// ("unknown option --bogus"), an extra argument as such.

import { unknownImageOption } from './image.js';

/** The one-line message for a yargs failure `msg` on the command line `argv`. */
export function usageMessage(msg: string, argv: readonly string[]): string {
  // yargs reports a missing argument before an unknown option: name the option first.
  const unknown = argv[0] === 'image' ? unknownImageOption(argv) : null;
  if (unknown) return `unknown option ${unknown}`;
  const m = /^Unknown arguments?: (.*)$/.exec(msg);
  if (!m) return msg;
  const names = m[1]!.split(', ');
  const options = argv.filter((a) => a.startsWith('-') && a !== '-' && a !== '--').map((o) => o.split('=')[0]!);
  const camel = (o: string): string => o.replace(/^-+/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
  const opt = options.find((o) => names.includes(o.replace(/^-+/, '')) || names.includes(camel(o)));
  if (opt) return `unknown option ${opt}`;
  return `unexpected argument${names.length > 1 ? 's' : ''}: ${names.join(' ')}`;
}
