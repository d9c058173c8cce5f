import { constants } from 'node:os';

const errnos = constants.errno as Record<string, number>;

/**
 * An error carrying the errno the kernel should see. It is an answer, not a fault: it carries no
 * stack trace (capturing one cost more than the rest of a request that ends in ENOENT or ENODATA).
 */
export class FsError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(code: keyof typeof constants.errno, message?: string) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message ?? code);
    Error.stackTraceLimit = limit;
    this.code = code;
    this.errno = errnos[code] ?? errnos.EIO!;
  }
}

/** One frozen FsError per errno, thrown for every answer with that errno and no message of its own. */
const shared = new Map<string, FsError>();

/**
 * The error for an errno answer. Without a message it is a shared frozen instance: an ENOENT or
 * ENODATA is answered thousands of times a second, and building an Error each time cost about a
 * microsecond of the request.
 */
export function fsError(code: keyof typeof constants.errno, message?: string): FsError {
  if (message !== undefined) return new FsError(code, message);
  let e = shared.get(code);
  if (e === undefined) {
    e = Object.freeze(new FsError(code));
    shared.set(code, e);
  }
  return e;
}

/**
 * The positive errno for anything thrown by a handler: our FsError, a native-binding error
 * ({code, errno > 0}) or a Node fs error ({code, errno < 0}). Anything else is EIO.
 */
export function errnoOf(err: unknown): number {
  if (err && typeof err === 'object') {
    const e = err as { code?: unknown; errno?: unknown };
    if (typeof e.code === 'string' && e.code in errnos) return errnos[e.code]!;
    if (typeof e.errno === 'number' && e.errno !== 0) return Math.abs(e.errno);
  }
  return errnos.EIO!;
}

/** The `code` of a thrown error (a native-binding or Node error: 'EEXIST', ...), if it has one. */
export function errCode(e: unknown): string | undefined {
  return (e as { code?: string } | null)?.code;
}

/** True when the error is one a filesystem answers routinely (not worth an error log line). */
export function isExpectedErrno(errno: number): boolean {
  return errno !== errnos.EIO;
}
