// The LevelDB metadata cache (per mount, by default <workdir>/strata-cache).
//
// What it keeps so far: inode identity across remounts. A copied-up object keeps the st_ino it
// had in the lower layer; the mapping "upper inode number -> st_ino" is kept here, so a remount
// shows the same numbers. Writes are batched off the request path: a crash loses at most cached
// knowledge. The cache records the identity of the layers it describes; when they differ (another
// upper, a recreated directory), the stale part is dropped with one log line. A cache that cannot
// be opened is set aside and rebuilt, never trusted and never fatal.

import { chmodSync, closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Level } from 'level';
import type { Layer, LayerStack } from './layers.js';
import type { HandleRecord, HandleStore } from './export.js';

const ORIGIN = 'origin:';
const HANDLE = 'handle:';
const LOWER = 'lower:';
const STATS_KEY = 'meta:stats';
const LAYERS_KEY = 'meta:layers';

type Db = Level<string, string>;

/** Where copied-up objects keep their st_ino; the inode table reads and updates it. */
export interface OriginStore {
  /** `journal`: false when the copy carries overlay.origin, which gives the same st_ino after a crash. */
  set(layer: Layer, realIno: number, ino: number, journal?: boolean): void;
  delete(layer: Layer, realIno: number): void;
}

/**
 * Origins are kept per layer directory (its device and root inode), not per mount: they stay
 * valid when the stack changes, e.g. when an upper is reused as a lower with the same cache.
 */
function originPrefix(layer: { dev: number; ino: number }): string {
  return `${ORIGIN}${layer.dev}.${layer.ino}:`;
}

/**
 * Inode origins are identity, not just cached knowledge: each one is also appended to a small
 * journal with a synchronous write before the copy-up is answered, so a daemon killed before
 * LevelDB got the batch loses none. The journal is replayed into LevelDB at the next open.
 */
const JOURNAL = 'origins.journal';

function replayJournal(path: string): { type: 'put' | 'del'; key: string; value?: string }[] {
  let text: string;
  try {
    // Only a regular file of ours: never through a symlink, never blocking on a FIFO.
    const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      if (!fstatSync(fd).isFile()) return [];
      text = readFileSync(fd, 'latin1');
    } finally {
      closeSync(fd);
    }
  } catch {
    return [];
  }
  const ops: { type: 'put' | 'del'; key: string; value?: string }[] = [];
  for (const line of text.split('\n')) {
    const [op, key, value] = line.split(' ');
    if (op === 'P' && key && value) ops.push({ type: 'put', key, value });
    else if (op === 'D' && key) ops.push({ type: 'del', key });
    // a torn last line (killed mid-write) is ignored
  }
  return ops;
}

/** A value may be computed when the batch is written (a listing's JSON: not on the request path). */
type Op = { type: 'put' | 'del'; key: string; value?: string | (() => string) };

/** How long a lazy write may wait for others, and how many may wait. */
const LAZY_FLUSH_MS = 100;
const LAZY_FLUSH_OPS = 512;

/**
 * Opened in the background (importing and opening LevelDB costs more than the rest of a mount):
 * `start` returns at once, `ready` resolves when the database is open and the origins are loaded.
 * The FUSE session serves no request before that (see FuseSession.mount), so nothing reads an
 * origin too early; listing reads wait for it, writes are queued.
 */
export class MetadataCache implements OriginStore, HandleStore {
  private pending: Op[] = [];
  private flushing: Promise<void> | null = null;
  /** The flush to come: right after this turn, on a timer (lazy writes only), or none. */
  private scheduled: 'now' | NodeJS.Timeout | null = null;
  private db: Db | null = null;
  private journalFd = -1;
  /** Journal lines written before the journal was open (none while requests wait for ready). */
  private journalBacklog = '';
  /** The background open has finished (or failed). */
  private settled = false;
  /** Origins loaded at open (the inode table holds this map from the start). */
  readonly origins = new Map<string, number>();
  /** File handle records (nfs_export=on), loaded at open when asked for; see export.ts. */
  readonly handles = new Map<number, HandleRecord>();
  readonly ready: Promise<void>;
  private readonly journalPath: string;

  private constructor(private readonly dir: string, stack: LayerStack, private readonly logger: Logger, private readonly withHandles: boolean) {
    this.journalPath = join(dir, JOURNAL);
    this.ready = this.open(stack).catch((err: unknown) => {
      // Not fatal: the mount runs without a cache (inode numbers of copied-up files then come
      // from the upper, as with --no-cache).
      logger.error({ err, dir }, 'metadata cache cannot be opened: running without it');
      this.db = null;
      this.settled = true;
      this.journalBacklog = '';
    });
  }

  static start(dir: string, stack: LayerStack, logger: Logger, opts: { handles?: boolean } = {}): MetadataCache {
    // The cache belongs to root alone: a directory others could write into would let them plant
    // entries or symlinks that the root daemon then follows.
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== process.getuid!()) {
      const aside = `${dir}.untrusted-${Date.now()}`;
      logger.warn({ dir, aside }, 'metadata cache not a directory owned by the daemon: set aside and rebuilt');
      renameSync(dir, aside);
      mkdirSync(dir, { mode: 0o700 });
    } else if ((st.mode & 0o077) !== 0) {
      chmodSync(dir, 0o700);
    }
    return new MetadataCache(dir, stack, logger, opts.handles === true);
  }

  private async open(stack: LayerStack): Promise<void> {
    const { dir, logger } = this;
    const { Level } = await import('level');
    let db: Db;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      db = new Level<string, string>(dir);
      await db.open();
    } catch (err) {
      const aside = `${dir}.broken-${Date.now()}`;
      logger.warn({ err, dir, aside }, 'metadata cache unreadable: set aside and rebuilt');
      try {
        renameSync(dir, aside);
      } catch {
        rmSync(dir, { recursive: true, force: true });
      }
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      db = new Level<string, string>(dir);
      await db.open();
    }
    // The layers it describes; a lower's root change time is part of it (a layer rebuilt in place).
    // Listings built with oci_whiteouts=off differ (`.wh.` files are names then): that is part of it too.
    const identity = JSON.stringify(stack.layers.map((l) => ({ path: l.path, dev: l.dev, ino: l.ino, upper: l.isUpper,
      ctime: l.isUpper ? undefined : statSync(l.path).ctimeMs, ...(l.ociWhiteouts ? {} : { oci: false }) })));
    const origins = this.origins;
    const journalPath = this.journalPath;
    try {
      const replay = replayJournal(journalPath);
      if (replay.length > 0) {
        await db.batch(replay.map((o) => (o.type === 'put' ? { type: 'put' as const, key: o.key, value: o.value! } : { type: 'del' as const, key: o.key })));
        logger.info({ entries: replay.length }, 'metadata cache: replayed the inode journal of an interrupted mount');
      }
      const recorded = await db.get(LAYERS_KEY);
      if (recorded !== undefined && recorded !== identity) {
        logger.info({ dir }, 'metadata cache describes other layers: its lower listings are dropped and rebuilt');
        await db.clear({ gte: LOWER, lt: LOWER + '\xff' });
        // file handles name objects of those layers
        await db.clear({ gte: HANDLE, lt: HANDLE + '\xff' });
        await db.del(STATS_KEY);
      }
      for (const layer of stack.layers) {
        const prefix = originPrefix(layer);
        for await (const [key, value] of db.iterator({ gte: prefix, lt: prefix + '\xff' })) {
          const realIno = Number(key.slice(prefix.length));
          const ino = Number(value);
          if (Number.isFinite(realIno) && Number.isFinite(ino)) origins.set(`${layer.index}:${realIno}`, ino);
        }
      }
      if (this.withHandles) {
        for await (const [key, value] of db.iterator({ gte: HANDLE, lt: HANDLE + '\xff' })) {
          const r = parseHandle(value);
          const id = Number(key.slice(HANDLE.length));
          if (r && Number.isSafeInteger(id)) this.handles.set(id, r);
        }
      }
      await db.put(LAYERS_KEY, identity);
    } catch (err) {
      logger.warn({ err, dir }, 'metadata cache unreadable: cleared');
      origins.clear();
      this.handles.clear();
      await db.clear();
      await db.put(LAYERS_KEY, identity);
    }
    // Replayed above: start it empty. Never through a symlink, never readable by others.
    rmSync(journalPath, { force: true });
    this.journalFd = openSync(journalPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    this.db = db;
    this.settled = true;
    if (this.journalBacklog) {
      this.journal(this.journalBacklog);
      this.journalBacklog = '';
    }
    if (this.pending.length > 0) void this.flush();
  }

  /** The stored listing of a lower directory (see lower_index.ts). */
  async getListing(dirKey: string): Promise<string | undefined> {
    await this.ready;
    return this.db?.get(LOWER + dirKey);
  }

  putListing(dirKey: string, json: () => string): void {
    // (a listing can always be built again: it may wait for others to share its batch)
    this.queue({ type: 'put', key: LOWER + dirKey, value: json }, true);
  }

  deleteListing(dirKey: string): void {
    this.queue({ type: 'del', key: LOWER + dirKey });
  }

  /** Counters of the mount, kept for `strata cache stats`. */
  putStats(stats: object): void {
    this.queue({ type: 'put', key: STATS_KEY, value: JSON.stringify({ ...stats, at: new Date().toISOString() }) });
  }

  putHandle(id: number, r: HandleRecord): void {
    this.queue({ type: 'put', key: HANDLE + id, value: `${r.ino} ${r.gen} ${r.parent} ${r.name}` });
  }

  deleteHandle(id: number): void {
    this.queue({ type: 'del', key: HANDLE + id });
  }

  set(layer: Layer, realIno: number, ino: number, journal = true): void {
    const key = originPrefix(layer) + realIno;
    if (journal) this.journal(`P ${key} ${ino}\n`);
    // Without a journal line the copy's overlay.origin xattr holds the same knowledge: the record
    // may wait for others to share its batch (a loop of copy-ups then writes one batch, not one each).
    this.queue({ type: 'put', key, value: String(ino) }, !journal);
  }

  delete(layer: Layer, realIno: number): void {
    const key = originPrefix(layer) + realIno;
    this.journal(`D ${key}\n`);
    this.queue({ type: 'del', key });
  }

  private journal(line: string): void {
    if (this.journalFd < 0) {
      if (!this.settled) this.journalBacklog += line;
      return;
    }
    try {
      writeSync(this.journalFd, line);
    } catch (err) {
      this.logger.warn({ err }, 'inode journal write failed');
    }
  }

  /**
   * Queues a write: written with the others queued, right after the current turn, or within
   * LAZY_FLUSH_MS when `lazy` (nothing is lost if it never is) and nothing else is pending.
   */
  private queue(op: Op, lazy = false): void {
    this.pending.push(op);
    if (this.scheduled === 'now') return;
    if (!lazy || this.pending.length >= LAZY_FLUSH_OPS) {
      if (this.scheduled) clearTimeout(this.scheduled);
      this.scheduled = 'now';
      setImmediate(() => {
        this.scheduled = null;
        void this.flush();
      });
    } else if (!this.scheduled) {
      this.scheduled = setTimeout(() => {
        this.scheduled = null;
        void this.flush();
      }, LAZY_FLUSH_MS);
    }
  }

  /** Writes what is queued (one batch). */
  async flush(): Promise<void> {
    await this.ready;
    while (this.flushing) await this.flushing;
    const db = this.db;
    if (this.pending.length === 0 || !db) return;
    const ops = this.pending;
    this.pending = [];
    this.flushing = db
      .batch(ops.map((o) => (o.type === 'put'
        ? { type: 'put' as const, key: o.key, value: typeof o.value === 'function' ? o.value() : o.value! }
        : { type: 'del' as const, key: o.key })))
      .catch((err: unknown) => this.logger.warn({ err }, 'metadata cache write failed (cached knowledge only)'))
      .finally(() => {
        this.flushing = null;
      });
    await this.flushing;
  }

  async close(): Promise<void> {
    if (this.scheduled && this.scheduled !== 'now') clearTimeout(this.scheduled);
    this.scheduled = null;
    await this.flush();
    await this.db?.close();
    // Everything is in LevelDB now: the journal is not needed.
    if (this.journalFd >= 0) {
      closeSync(this.journalFd);
      this.journalFd = -1;
      rmSync(this.journalPath, { force: true });
    }
  }
}

/** "ino gen parent name" (the name last: it may hold spaces). */
function parseHandle(v: string): HandleRecord | null {
  const m = /^(\d+) (\d+) (\d+) ([^]+)$/.exec(v);
  if (!m) return null;
  const r = { ino: Number(m[1]), gen: Number(m[2]), parent: Number(m[3]), name: m[4]! };
  return Number.isSafeInteger(r.ino) && Number.isSafeInteger(r.parent) ? r : null;
}
