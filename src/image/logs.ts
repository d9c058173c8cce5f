// A background container's log: what its command writes to stdout and stderr, a record a line, in
// the format of podman's k8s-file driver (CRI's log format):
//
//   2026-12-06T01:20:00.123456789Z stdout F a whole line
//   2026-12-06T01:20:00.223456789Z stderr P the start of a line, the rest in the next record of stderr
//
// so that `strata logs` can give each stream back on its own descriptor, put the time before each
// line (-t) and keep to a time range (--since, --until), as docker and podman logs do. A log written
// before this format (raw bytes) reads as stdout lines without times.

import { readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { durationNs } from './settings.js';
import { ImageError } from './types.js';

/** The log of a container's command (stdout and stderr, a record a line). */
export function logPath(rec: { dir: string }): string {
  return join(rec.dir, 'log');
}

/** What the monitor of a detached container said itself (its errors: why a start failed). */
export function monitorLogPath(rec: { dir: string }): string {
  return join(rec.dir, 'monitor.log');
}

/** A log's bytes: `path` of logPath or monitorLogPath (empty if the container never ran with one). */
export function readLog(rec: { dir: string }, path: (rec: { dir: string }) => string = logPath): Buffer {
  try {
    return readFileSync(path(rec));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0);
    throw e;
  }
}

export type Stream = 'stdout' | 'stderr';

export interface LogLine {
  /** RFC 3339 with nanoseconds, UTC; '' for a line of a raw log. */
  time: string;
  stream: Stream;
  /** The line's bytes with its newline, if it had one (the last line may not). */
  data: Buffer;
}

const NL = Buffer.from('\n');

/** A partial line is written as a record of its own once this much waits, or after PARTIAL_MS. */
const PARTIAL_BYTES = 16 * 1024;
const PARTIAL_MS = 200;

/** The wall clock in nanoseconds, as RFC 3339 (Date has milliseconds; the monotonic clock adds the rest). */
class NanoClock {
  private readonly wall0 = BigInt(Date.now()) * 1_000_000n;
  private readonly mono0 = process.hrtime.bigint();

  now(): string {
    const ns = this.wall0 + (process.hrtime.bigint() - this.mono0);
    const iso = new Date(Number(ns / 1_000_000n)).toISOString();
    return `${iso.slice(0, 19)}.${String(ns % 1_000_000_000n).padStart(9, '0')}Z`;
  }
}

/** Writes the records of a command's output to the log's descriptor (appended). */
export class LogWriter {
  private readonly clock = new NanoClock();
  private readonly pending: Record<Stream, Buffer[]> = { stdout: [], stderr: [] };
  private readonly timers: Record<Stream, NodeJS.Timeout | null> = { stdout: null, stderr: null };

  /** `echo`: the output also goes on to this process's stdout and stderr (a foreground run). */
  constructor(private readonly fd: number, readonly echo = false) {}

  /**
   * Output of the command on `stream`: its whole lines written as records in one write. False when
   * it could not be passed on (echo) because the reader of this process's stdout or stderr is gone:
   * the caller then closes that pipe, and the command's next write there fails (SIGPIPE), as if it
   * had written to that reader itself (`strata run IMAGE yes | head -1` ends).
   */
  write(stream: Stream, chunk: Buffer): boolean {
    const passed = !this.echo || writeAll(stream === 'stdout' ? 1 : 2, chunk);
    let start = 0;
    const out: Buffer[] = [];
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      const parts = this.pending[stream];
      parts.push(chunk.subarray(start, nl));
      if (parts.length === 1) this.recordInto(out, stream, 'F', parts[0]!);
      else this.recordInto(out, stream, 'F', Buffer.concat(parts));
      parts.length = 0;
      start = nl + 1;
    }
    if (out.length > 0) this.put(Buffer.concat(out));
    if (start < chunk.length) {
      const parts = this.pending[stream];
      parts.push(Buffer.from(chunk.subarray(start)));
      if (parts.reduce((n, b) => n + b.length, 0) >= PARTIAL_BYTES) this.flush(stream);
      else this.timers[stream] ??= setTimeout(() => this.flush(stream), PARTIAL_MS);
    }
    return passed;
  }

  /** What waits of a line without its newline, as a partial record (at the end of the stream too). */
  flush(stream: Stream): void {
    const timer = this.timers[stream];
    if (timer) clearTimeout(timer);
    this.timers[stream] = null;
    const parts = this.pending[stream];
    if (parts.length === 0) return;
    this.record(stream, 'P', Buffer.concat(parts));
    parts.length = 0;
  }

  close(): void {
    this.flush('stdout');
    this.flush('stderr');
  }

  private record(stream: Stream, tag: 'F' | 'P', data: Buffer): void {
    const out: Buffer[] = [];
    this.recordInto(out, stream, tag, data);
    this.put(Buffer.concat(out));
  }

  private recordInto(out: Buffer[], stream: Stream, tag: 'F' | 'P', data: Buffer): void {
    out.push(Buffer.from(`${this.clock.now()} ${stream} ${tag} `), data, NL);
  }

  private put(bytes: Buffer): void {
    for (let off = 0; off < bytes.length;) off += writeSync(this.fd, bytes, off);
  }
}

/**
 * Writes all of `data` to descriptor `fd` (a pipe or a terminal may take it in parts, or not at
 * once); false if it cannot take more: the reader of a pipe is gone (EPIPE), or the descriptor is
 * closed or fails (EBADF, EIO).
 */
export function writeAll(fd: number, data: Buffer): boolean {
  for (let off = 0; off < data.length;) {
    try {
      off += writeSync(fd, data, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') return false;
      // A non-blocking pipe that is full: its reader is slow. Waits a millisecond rather than
      // spinning on the CPU the reader needs.
      Atomics.wait(pause, 0, 0, 1);
    }
  }
  return true;
}
const pause = new Int32Array(new SharedArrayBuffer(4));

const RECORD = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (stdout|stderr) ([FP]) /;

/**
 * Reads a log as it is written: the lines of its records, joined where a line was written in
 * parts; raw lines (a log from before the record format) as stdout.
 */
export class LogParser {
  private rest = Buffer.alloc(0);
  private readonly open: Partial<Record<Stream, LogLine>> = {};

  /** The lines that the bytes complete (a record is read once its newline is there). */
  feed(chunk: Buffer): LogLine[] {
    const text = this.rest.length > 0 ? Buffer.concat([this.rest, chunk]) : chunk;
    const lines: LogLine[] = [];
    let pos = 0;
    for (let nl = text.indexOf(0x0a); nl >= 0; nl = text.indexOf(0x0a, pos)) {
      this.line(text.subarray(pos, nl), lines);
      pos = nl + 1;
    }
    this.rest = Buffer.from(text.subarray(pos));
    return lines;
  }

  /** At the end of the log: a last line without its newline, and lines left partial. */
  end(): LogLine[] {
    const lines: LogLine[] = [];
    if (this.rest.length > 0) {
      const raw = !RECORD.test(this.rest.subarray(0, 64).toString('latin1'));
      this.line(this.rest, lines, raw);
      this.rest = Buffer.alloc(0);
    }
    for (const s of ['stdout', 'stderr'] as const) {
      if (this.open[s]) lines.push(this.open[s]!);
      delete this.open[s];
    }
    return lines;
  }

  private line(text: Buffer, lines: LogLine[], noNewline = false): void {
    const m = RECORD.exec(text.subarray(0, 64).toString('latin1'));
    if (!m) {
      lines.push({ time: '', stream: 'stdout', data: noNewline ? Buffer.from(text) : Buffer.concat([text, NL]) });
      return;
    }
    const stream = m[2] as Stream;
    const data = text.subarray(m[0].length);
    const partial = this.open[stream];
    if (m[3] === 'P') {
      if (partial) partial.data = Buffer.concat([partial.data, data]);
      else this.open[stream] = { time: m[1]!, stream, data: Buffer.from(data) };
      return;
    }
    lines.push({ time: partial?.time ?? m[1]!, stream, data: Buffer.concat(partial ? [partial.data, data, NL] : [data, NL]) });
    delete this.open[stream];
  }
}

/**
 * --since and --until as docker takes them: an RFC 3339 time (date, date and time, with or without
 * a zone: local time without one), Unix seconds (with a fraction), or a Go duration before now
 * ("10m", "1h30m"). Returns nanoseconds since the epoch, as a bigint.
 */
export function parseLogTime(v: string, flag: string, nowMs = Date.now()): bigint {
  if (/^\d+(\.\d{1,9})?$/.test(v)) {
    const [s, f = ''] = v.split('.');
    return BigInt(s!) * 1_000_000_000n + BigInt(f.padEnd(9, '0'));
  }
  if (/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(v)) return BigInt(nowMs) * 1_000_000n - BigInt(durationNs(v, flag));
  const m = /^(\d{4}-\d\d-\d\d)(?:[T ](\d\d:\d\d(?::\d\d(?:\.(\d{1,9}))?)?))?(Z|[+-]\d\d:?\d\d)?$/.exec(v);
  if (m) {
    const time = m[2] ?? '00:00:00';
    const base = `${m[1]}T${time.length === 5 ? `${time}:00` : time.replace(/\.\d+$/, '')}${m[4] ? (m[4] === 'Z' ? 'Z' : m[4].replace(/^([+-]\d\d)(\d\d)$/, '$1:$2')) : ''}`;
    const ms = Date.parse(base);
    if (!Number.isNaN(ms)) return BigInt(ms) * 1_000_000n + BigInt((m[3] ?? '').padEnd(9, '0'));
  }
  throw new ImageError(`${flag} ${v}: expected a time (2006-01-02T15:04:05Z, Unix seconds) or a duration before now (10m, 1h)`, 125);
}

/** A record's time in nanoseconds since the epoch. */
export function lineTimeNs(time: string): bigint {
  const m = /^(.*?)(?:\.(\d+))?Z$/.exec(time)!;
  return BigInt(Date.parse(`${m[1]}Z`)) * 1_000_000n + BigInt((m[2] ?? '').padEnd(9, '0').slice(0, 9));
}
