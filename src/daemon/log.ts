// The daemon's logger: pino, loaded once the mount is live (loading it costs more than the rest of
// a mount). Lines logged before that wait in memory with their time and are written, in order,
// when it is loaded; a daemon that fails to mount loads it before it exits.

import { constants, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { UsageError } from '../union/params.js';

const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };
type Method = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

export function checkLevel(level: string): void {
  if (!Object.hasOwn(LEVELS, level)) throw new UsageError(`--log-level takes ${Object.keys(LEVELS).join(', ')} (not "${level}")`);
}

export interface LogOptions {
  logLevel: string;
  /** JSON lines go to this file (default: stderr). */
  logFile: string | null;
}

interface Destination {
  reopen(): void;
}

export class DaemonLogger {
  private real: Logger | null = null;
  private destination: Destination | null = null;
  private pending: { method: Method; time: number; args: unknown[] }[] = [];
  private loading: Promise<void> | null = null;
  /** The time of the line being replayed (pino's timestamp reads it). */
  private replayTime: number | null = null;
  private threshold: number;
  /** The log file, opened already (see openFileNow), or -1. */
  private fileFd = -1;

  constructor(private readonly options: LogOptions) {
    checkLevel(options.logLevel);
    this.threshold = LEVELS[options.logLevel]!;
  }

  isLevelEnabled(level: string): boolean {
    return (LEVELS[level] ?? Infinity) >= this.threshold;
  }

  trace(...args: unknown[]): void {
    this.log('trace', args);
  }
  debug(...args: unknown[]): void {
    this.log('debug', args);
  }
  info(...args: unknown[]): void {
    this.log('info', args);
  }
  warn(...args: unknown[]): void {
    this.log('warn', args);
  }
  error(...args: unknown[]): void {
    this.log('error', args);
  }
  fatal(...args: unknown[]): void {
    this.log('fatal', args);
  }

  /**
   * Never throws: a line that cannot be written is lost, not the request that logged it. pino's error
   * serializer marks the error it is given, which the shared frozen errors of the request path
   * (fsError) refuse: those are logged as a plain copy.
   */
  private log(method: Method, args: unknown[]): void {
    if (!this.real && LEVELS[method]! < this.threshold) return;
    const first = args[0] as { err?: unknown } | null;
    if (first && typeof first === 'object' && first.err && typeof first.err === 'object' && !Object.isExtensible(first.err)) {
      args = [{ ...first, err: plainError(first.err) }, ...args.slice(1)];
    }
    if (!this.real) {
      this.pending.push({ method, time: Date.now(), args });
      return;
    }
    try {
      (this.real[method] as (...a: unknown[]) => void).apply(this.real, args);
    } catch {
      // (see above)
    }
  }

  /** Loads pino and writes what waited. */
  ready(): Promise<void> {
    this.loading ??= (async () => {
      const { default: pino } = await import('pino');
      const o = this.options;
      const destination = this.fileFd >= 0 ? pino.destination({ fd: this.fileFd, sync: true })
        : o.logFile ? pino.destination({ dest: o.logFile, sync: true, mkdir: true }) : pino.destination(2);
      this.destination = destination;
      const real = pino({
        level: o.logLevel,
        base: { pid: process.pid },
        timestamp: () => `,"time":${this.replayTime ?? Date.now()}`,
      }, destination);
      for (const p of this.pending) {
        this.replayTime = p.time;
        (real[p.method] as (...a: unknown[]) => void).apply(real, p.args);
      }
      this.replayTime = null;
      this.pending = [];
      this.real = real;
    })();
    return this.loading;
  }

  /** Lines go nowhere (stderr is /dev/null and there is no log file): pino is never loaded. */
  discard(): Promise<void> {
    this.pending = [];
    this.threshold = Infinity;
    return Promise.resolve();
  }

  /**
   * Opens the log file now rather than when pino loads: a file the mount will cover (under its mount
   * point) is then written through this descriptor, not by its name through the mount, whose
   * requests this same thread serves. Such a file is not reopened on SIGHUP.
   */
  openFileNow(): void {
    const file = this.options.logFile;
    if (!file || this.fileFd >= 0) return;
    mkdirSync(dirname(file), { recursive: true });
    this.fileFd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND, 0o644);
  }

  /** SIGHUP: reopen the log file (after logrotate moved it). */
  reopen(): void {
    if (this.fileFd >= 0) {
      this.warn({ logFile: this.options.logFile }, 'SIGHUP: the log file lies under the mount point: not reopened');
      return;
    }
    this.destination?.reopen();
  }

  flush(): void {
    this.real?.flush();
  }

  /**
   * As the pino Logger type that the session and the union core take: they use only the level
   * methods and isLevelEnabled, which this class has.
   */
  asLogger(): Logger {
    return this as unknown as Logger;
  }
}

/** A copy of a frozen error that pino can mark: same class name, message, stack and own properties. */
function plainError(err: object): Error {
  const e = err as { name?: unknown; message?: unknown; stack?: unknown };
  const copy = Object.assign(new Error(String(e.message ?? '')), err);
  Object.defineProperty(copy, 'name', { value: err.constructor?.name ?? 'Error' });
  copy.stack = typeof e.stack === 'string' ? e.stack : copy.stack;
  return copy;
}
