// The metadata cache (per mount, by default <workdir>/strata-cache).
//
// What it keeps: inode identity across remounts, and the listings of deep lower directories. A
// copied-up object keeps the st_ino it had in the lower layer; the mapping "upper inode number ->
// st_ino" is identity, kept in two plain files read when the mount starts (origin_file.ts). What
// can be rebuilt (listings, counters, file handle records) lives in LevelDB, opened in the
// background; its writes are batched off the request path, so a crash loses at most cached
// knowledge. The cache records the identity of the layers it describes; when they differ (another
// upper, a recreated directory), the stale part is dropped with one log line. A cache that cannot
// be opened is set aside and rebuilt, never trusted and never fatal.

import { chmodSync, closeSync, constants, existsSync, fstatSync, ftruncateSync, lstatSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Level } from 'level';
import * as N from '../native/index.js';
import type { Layer, LayerStack } from './layers.js';
import type { HandleRecord, HandleStore } from './export.js';
import { applyLines, JOURNAL, readRecords, writeSnapshot, type OriginRecords } from './origin_file.js';

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
 * A lower layer's root change time in ms, as fs.Stats's ctimeMs gives it, through the layer's own
 * descriptor: its path may be under the mount by now (a mount over its own lower layer).
 */
function rootCtimeMs(layer: Layer): number {
  const st = new Float64Array(N.ST_LENGTH);
  N.fstat(layer.fd, st);
  return st[N.ST.ctimeSec]! * 1e3 + st[N.ST.ctimeNsec]! / 1e6;
}

/** A value may be computed when the batch is written (a listing's JSON: not on the request path). */
type Op = { type: 'put' | 'del'; key: string; value?: string | (() => string) };

/** How long a lazy write may wait for others, and how many may wait. */
const LAZY_FLUSH_MS = 100;
const LAZY_FLUSH_OPS = 512;

/**
 * LevelDB's write buffer and block cache, which stay in the daemon's memory for the mount's life:
 * 1 MiB each instead of 4 and 8. Records are read once per directory and mount, so the block cache
 * has little to keep; a smaller write buffer makes more, smaller tables, written in the background.
 */
const LEVEL_OPTIONS = { writeBufferSize: 1 << 20, cacheSize: 1 << 20 };

/**
 * `start` reads the inode origins (synchronously: a mount needs them before its first answer);
 * LevelDB is opened in the background after `begin`, and `ready` resolves when it is open.
 * Requests wait only for `identityReady`, set when identity still has to come from LevelDB: a
 * cache written before the origins had files of their own (read once, then moved to them), or
 * file handle records (nfs_export=on). Listing reads wait for LevelDB; writes are queued.
 */
export class MetadataCache implements OriginStore, HandleStore {
  private pending: Op[] = [];
  private flushing: Promise<void> | null = null;
  /** The flush to come: right after this turn, on a timer (lazy writes only), or none. */
  private scheduled: 'now' | NodeJS.Timeout | null = null;
  private db: Db | null = null;
  private journalFd = -1;
  /** Journal lines written before the journal was open (none while requests wait for identityReady). */
  private journalBacklog = '';
  /** The background open has finished (or failed). */
  private settled = false;
  /** Every origin record, of all layer directories the cache has seen (what the snapshot holds). */
  private records: OriginRecords = new Map();
  /**
   * Records that are in no file yet (their copies carry overlay.origin, which gives the same st_ino
   * after a crash): appended to the journal at unmount unless a snapshot took them in before.
   */
  private readonly unjournaled = new Set<string>();
  /** The snapshot is missing or a journal holds lines: a new snapshot is written when LevelDB is opened. */
  private compactAtOpen: boolean;
  private begun = false;
  /** The mount has ended: nothing new is created in the directory any more (see close). */
  private closed = false;
  /** The origins are still in LevelDB (a cache of an older strata): moved to the files at open. */
  private readonly legacy: boolean;
  /** ... and they were (or, that failing, the records of its journal went to a snapshot). */
  private moved = false;
  /** Origins of this mount's layers (the inode table holds this map from the start). */
  readonly origins = new Map<string, number>();
  /** File handle records (nfs_export=on), loaded at open when asked for; see export.ts. */
  readonly handles = new Map<number, HandleRecord>();
  readonly ready: Promise<void>;
  /** What requests must wait for before their first answer, if anything. */
  readonly identityReady: Promise<void> | undefined;
  /**
   * Whether LevelDB may hold listings: it was there when the mount started (a fresh cache has none
   * to read, and lookups then never wait for it).
   */
  readonly mayHoldListings: boolean;
  private readonly journalPath: string;

  private constructor(private readonly dir: string, private readonly stack: LayerStack, private readonly logger: Logger, private readonly withHandles: boolean) {
    this.journalPath = join(dir, JOURNAL);
    const { records, snapshot, journal } = readRecords(dir);
    this.mayHoldListings = existsSync(join(dir, 'CURRENT'));
    this.legacy = !snapshot && this.mayHoldListings;
    this.compactAtOpen = !snapshot || journal;
    if (!this.legacy) {
      this.records = records;
      this.fillOrigins();
      try {
        this.openJournal();
      } catch (err) {
        // Not fatal: the records read stay in use; new ones are kept for this mount only.
        logger.error({ err, dir }, 'inode origin journal cannot be written: running without it');
        this.journalFd = -1;
      }
    }
    this.ready = new Promise<void>((resolve) => {
      this.begin = () => {
        if (this.begun || this.closed) return;
        this.begun = true;
        resolve();
      };
    }).then(() => this.open()).catch((err: unknown) => {
      // Not fatal: the mount runs without LevelDB (inode numbers of copied-up files then come from
      // the origin files, or from the upper as with --no-cache when those were in LevelDB).
      logger.error({ err, dir }, 'metadata cache cannot be opened: running without it');
      this.db = null;
      this.settled = true;
      this.journalBacklog = '';
    });
    this.identityReady = this.legacy || withHandles ? this.ready : undefined;
    if (this.identityReady) this.begin();
  }

  /**
   * Starts opening LevelDB: at once when requests wait for it; else when the daemon is first idle
   * after the mount went live (importing LevelDB takes about 10 ms of the JavaScript thread, which
   * neither the mount nor its first users should wait for), or when a listing is asked for.
   * Writes queue until then; a mount that ends first never opens it (see close).
   */
  begin: () => void = () => {};

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

  /** this.origins from the records of this mount's layers. */
  private fillOrigins(): void {
    const byPrefix = new Map(this.stack.layers.map((l) => [originPrefix(l), l.index]));
    for (const [key, value] of this.records) {
      const cut = key.lastIndexOf(':') + 1;
      const index = byPrefix.get(key.slice(0, cut));
      if (index === undefined) continue;
      const realIno = Number(key.slice(cut));
      const ino = Number(value);
      if (Number.isFinite(realIno) && Number.isFinite(ino)) this.origins.set(`${index}:${realIno}`, ino);
    }
  }

  /**
   * Opens the journal to append to it: the one there if it is a plain file of ours with one link
   * (its lines were read at start), else a new one.
   */
  private openJournal(): void {
    try {
      const fd = openSync(this.journalPath, constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      const st = fstatSync(fd);
      if (st.isFile() && st.nlink === 1 && st.uid === process.getuid!()) {
        this.journalFd = fd;
        return;
      }
      closeSync(fd);
    } catch {
      // none, or not one to write to (a symlink): a new one
    }
    this.startJournal(false);
  }

  /**
   * Starts an empty journal; `compact`: the records in memory go into a new snapshot first (they
   * hold what no snapshot has yet: a killed mount's journal, a legacy cache's records, or a cache
   * directory just set aside).
   */
  private startJournal(compact: boolean): void {
    if (compact) this.writeSnapshot();
    // Never through a symlink, never readable by others.
    rmSync(this.journalPath, { force: true });
    this.journalFd = openSync(this.journalPath, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  }

  /** Every record to a new snapshot: the journal's lines and the unjournaled records are then in it. */
  private writeSnapshot(): void {
    writeSnapshot(this.dir, this.records);
    this.unjournaled.clear();
    this.compactAtOpen = false;
  }

  /**
   * The snapshot takes in the journal, which starts again empty (a crash in between leaves lines
   * the snapshot already has: read again, they change nothing). A fresh cache gets its snapshot
   * before LevelDB's files: a cache with those and no snapshot is one of an older strata.
   */
  private compact(): void {
    if (!this.compactAtOpen || this.legacy) return;
    try {
      this.writeSnapshot();
      if (this.journalFd >= 0) ftruncateSync(this.journalFd, 0);
    } catch (err) {
      this.logger.warn({ err }, 'inode origin snapshot not written: the journal is kept');
    }
  }

  private async open(): Promise<void> {
    const { dir, logger, stack } = this;
    this.compact();
    // (a turn of the event loop first: a request that came meanwhile is answered before the import)
    await new Promise((resolve) => setImmediate(resolve));
    const { Level } = await import('level');
    let db: Db;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      db = new Level<string, string>(dir, LEVEL_OPTIONS);
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
      // The origins go on in the new directory (the journal went aside with the old one).
      if (this.journalFd >= 0) {
        closeSync(this.journalFd);
        this.journalFd = -1;
        this.startJournal(true);
      }
      db = new Level<string, string>(dir, LEVEL_OPTIONS);
      await db.open();
    }
    // The layers it describes; a lower's root change time is part of it (a layer rebuilt in place).
    // Listings built with oci_whiteouts=off differ (`.wh.` files are names then), and so do those built with
    // userxattr (markers read in user.overlay.*): both are part of it too.
    const identity = JSON.stringify(stack.layers.map((l) => ({ path: l.path, dev: l.dev, ino: l.ino, upper: l.isUpper,
      ctime: l.isUpper ? undefined : rootCtimeMs(l), ...(l.ociWhiteouts ? {} : { oci: false }),
      ...(l.markerNs === 'user' ? { ns: 'user' } : {}) })));
    try {
      if (this.legacy) await this.moveLegacyOrigins(db);
      const recorded = await db.get(LAYERS_KEY);
      if (recorded !== undefined && recorded !== identity) {
        logger.info({ dir }, 'metadata cache describes other layers: its lower listings are dropped and rebuilt');
        await db.clear({ gte: LOWER, lt: LOWER + '\xff' });
        // file handle records name objects of those layers
        await db.clear({ gte: HANDLE, lt: HANDLE + '\xff' });
        await db.del(STATS_KEY);
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
      this.handles.clear();
      await db.clear();
      await db.put(LAYERS_KEY, identity);
    }
    // Moving the origins failed: what the journal holds is kept, the rest is lost (as with --no-cache).
    if (this.legacy && !this.moved) this.adopt(new Map());
    this.db = db;
    this.settled = true;
    if (this.journalBacklog) {
      this.journal(this.journalBacklog);
      this.journalBacklog = '';
    }
    if (this.pending.length > 0) void this.flush();
  }

  /**
   * A cache written by an older strata: its origins, and the journal lines of a mount killed before
   * they reached LevelDB, go to the origin files, and out of LevelDB.
   */
  private async moveLegacyOrigins(db: Db): Promise<void> {
    const records: OriginRecords = new Map();
    for await (const [key, value] of db.iterator({ gte: ORIGIN, lt: ORIGIN + '\xff' })) records.set(key, value);
    this.adopt(records);
    await db.clear({ gte: ORIGIN, lt: ORIGIN + '\xff' });
    this.logger.info({ dir: this.dir, origins: records.size }, 'metadata cache: inode origins moved to their own files');
  }

  /** A legacy cache's records (with its journal's lines on top) become the origin files' content. */
  private adopt(records: OriginRecords): void {
    applyLines(this.journalPath, records);
    this.records = records;
    this.fillOrigins();
    this.startJournal(true);
    this.moved = true;
  }

  /** The stored listing of a lower directory (see lower_index.ts); opens LevelDB if not yet begun. */
  async getListing(dirKey: string): Promise<string | undefined> {
    this.begin();
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
    this.records.set(key, String(ino));
    // Without a journal line the copy's overlay.origin xattr holds the same knowledge: the record
    // waits for the next snapshot, or the journal at unmount.
    if (journal) {
      this.unjournaled.delete(key);
      this.journal(`P ${key} ${ino}\n`);
    } else {
      this.unjournaled.add(key);
    }
  }

  delete(layer: Layer, realIno: number): void {
    const key = originPrefix(layer) + realIno;
    if (!this.records.delete(key)) return;
    this.unjournaled.delete(key);
    this.journal(`D ${key}\n`);
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

  /**
   * Once the mount has ended, whoever unmounted it may be removing its directories already (podman
   * removes a build container's work directory right after its umount2): nothing new is created in
   * the cache directory from here on. LevelDB, if it was opened, gets what is queued (appended to
   * its log); if it was not, nothing queued is worth creating it for (listings are rebuilt, the
   * counters are this mount's). The records not yet in any file are appended to the journal, open
   * since the start; the snapshot takes them in when the next mount opens LevelDB.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.scheduled && this.scheduled !== 'now') clearTimeout(this.scheduled);
    this.scheduled = null;
    if (this.begun) {
      await this.flush();
      await this.db?.close();
    }
    this.pending = [];
    if (this.journalFd >= 0) {
      let lines = '';
      for (const key of this.unjournaled) {
        const value = this.records.get(key);
        if (value !== undefined) lines += `P ${key} ${value}\n`;
      }
      this.unjournaled.clear();
      if (lines) this.journal(lines);
      closeSync(this.journalFd);
      this.journalFd = -1;
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
