// Dropping a file's clean pages from the page cache, and checking that they are gone. One
// posix_fadvise(POSIX_FADV_DONTNEED) may leave a page that someone else holds at that moment (the
// drop_caches loop of another test file, a DAMON scan of the host): it is repeated until fincore(1)
// counts no resident byte.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as N from '../../src/native/index.js';
import { run } from './exec.js';
import { sleepMs } from './fifo-channel.js';

const { C } = N;

/** Bytes of `file` in the page cache (fincore(1), which looks without reading). */
export function cachedBytes(file: string): number {
  const r = run('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]);
  const n = Number(r.stdout.trim());
  if (r.status !== 0 || !Number.isInteger(n)) throw new Error(`fincore ${file}: ${r.stderr.trim() || r.stdout.trim()}`);
  return n;
}

/** Writes back and drops every page of `file`; throws if some stay after many tries. */
export function dropCachedPages(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
    for (let attempt = 0; attempt < 100; attempt++) {
      N.fadvise(fd, 0, 0, C.POSIX_FADV_DONTNEED);
      if (cachedBytes(file) === 0) return;
      sleepMs(10);
    }
  } finally {
    fs.closeSync(fd);
  }
  throw new Error(`${file}: its pages stay in the page cache after 100 POSIX_FADV_DONTNEED`);
}

/** The lock's file: this module's own, always there (nothing to make or remove). */
const LOCK = fileURLToPath(import.meta.url);

/**
 * Holds a lock that test files running at once share over the page cache, until the returned function
 * is called (or this process ends): "shared" by a test that drops every cache of the machine
 * (drop_caches) while it runs, "exclusive" by one that needs what it read to stay cached meanwhile.
 * flock(1) holds it in a child that waits on its standard input.
 */
export async function holdPageCacheLock(mode: 'shared' | 'exclusive'): Promise<() => void> {
  const child = spawn('flock', [mode === 'shared' ? '-s' : '-x', LOCK, 'sh', '-c', 'echo held; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve());
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`flock ${LOCK} ended (${code}) before holding the lock`)));
  });
  return () => {
    child.stdin.end();
  };
}

/**
 * Drops of the machine's caches are made one at a time (a lock of their own, the helpers' directory):
 * a drop_caches that runs beside another returns as soon as it has walked the caches, while objects
 * the other one took off them are still being freed, so a FUSE inode's FORGET could reach a daemon
 * after the caller's next request.
 */
export const DROP_LOCK = path.dirname(LOCK);

/**
 * Drops the machine's caches (`level` as /proc/sys/vm/drop_caches takes it) while holding the lock
 * shared (not while a test of another file needs its reads to stay cached: see holdPageCacheLock), and
 * no other drop runs (DROP_LOCK). flock(1) holds the locks while a shell writes drop_caches.
 */
export function dropMachineCachesSync(level: 1 | 2 | 3): void {
  const r = run('flock', ['-s', LOCK, 'flock', '-x', DROP_LOCK, 'sh', '-c', `echo ${level} > /proc/sys/vm/drop_caches`]);
  if (r.status !== 0) throw new Error(`drop_caches ${level}: ${r.stderr.trim()}`);
}

/** As dropMachineCachesSync, for the async tests that call it. */
export async function dropMachineCaches(level: 1 | 2 | 3): Promise<void> {
  dropMachineCachesSync(level);
}
