// The inode origins of the metadata cache, in two plain files of the cache directory:
// - `origins`, a snapshot: one "P <key> <st_ino>" line per record, replaced atomically;
// - `origins.journal`: the records added ("P") and removed ("D") since that snapshot, appended
//   with a synchronous write before the copy-up that made one is answered (or, for a copy that
//   carries overlay.origin, at unmount). A mount folds it into a new snapshot when it opens LevelDB.
// Both are read with one system call each when a mount starts: st_ino of copied-up objects is
// known before the first request, without waiting for LevelDB (whose import alone costs about
// 20 ms), which keeps only what can be rebuilt (listings, counters, file handle records).

import { closeSync, constants, fstatSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export const SNAPSHOT = 'origins';
export const JOURNAL = 'origins.journal';

/** Key -> st_ino (as text), for every layer directory the cache has seen. */
export type OriginRecords = Map<string, string>;

/**
 * Applies the lines of `path` to `records`. Only a regular file of ours is read: never through a
 * symlink, never blocking on a FIFO. Returns the length of its text, or -1 when there is no such file.
 */
export function applyLines(path: string, records: OriginRecords): number {
  let text: string;
  try {
    const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      if (!fstatSync(fd).isFile()) return -1;
      text = readFileSync(fd, 'latin1');
    } finally {
      closeSync(fd);
    }
  } catch {
    return -1;
  }
  for (const line of text.split('\n')) {
    const [op, key, value] = line.split(' ');
    if (op === 'P' && key && value) records.set(key, value);
    else if (op === 'D' && key) records.delete(key);
    // anything else (a torn last line, garbage) is skipped
  }
  return text.length;
}

/** The records of a cache directory (snapshot, then journal): whether there was a snapshot, whether the journal held lines. */
export function readRecords(dir: string): { records: OriginRecords; snapshot: boolean; journal: boolean } {
  const records: OriginRecords = new Map();
  const snapshot = applyLines(join(dir, SNAPSHOT), records) >= 0;
  const journal = applyLines(join(dir, JOURNAL), records) > 0;
  return { records, snapshot, journal };
}

/**
 * Replaces the snapshot with `records`: written beside it (a new file: whatever had that name, a
 * planted symlink included, is removed, never followed), flushed, renamed over it.
 */
export function writeSnapshot(dir: string, records: OriginRecords): void {
  const tmp = join(dir, `${SNAPSHOT}.tmp`);
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    let text = '';
    for (const [key, value] of records) text += `P ${key} ${value}\n`;
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, SNAPSHOT));
  const dfd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}
