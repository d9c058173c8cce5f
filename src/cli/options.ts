// Options several commands share.

/** docker's -i and -t: the command gets strata's own standard input and terminal anyway. */
export const TERMINAL_OPTIONS = {
  interactive: { alias: 'i', type: 'boolean', default: false, describe: 'accepted for docker compatibility: the command always gets strata\'s stdin' },
  tty: { alias: 't', type: 'boolean', default: false, describe: 'accepted for docker compatibility: the command runs on strata\'s own terminal' },
} as const;
