// Temporary directories that are removed after the test, even when it fails. Anything still
// mounted below a directory is detached first, and removal never crosses into another filesystem.
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run, runOk } from './exec.js';
import { mountsUnder, unmountQuietly } from './mounts.js';

/**
 * Creates a directory under os.tmpdir() named `${prefix}XXXXXX` and registers its removal.
 * Keep prefixes short: paths of 40+ layers must fit in one page of mount options.
 */
export function tempDir(t: ExecutionContext, prefix = 's'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => removeTree(dir));
  return dir;
}

/** Detaches every mount at or below `dir` (deepest first), then deletes `dir`. */
export function removeTree(dir: string): void {
  for (const m of mountsUnder(dir).reverse()) unmountQuietly(m);
  // rm copes with paths longer than PATH_MAX and stays on one filesystem.
  run('rm', ['-rf', '--one-file-system', '--', dir]);
}

/** Mounts a small tmpfs (a second filesystem) at a new directory below `parent`. */
export function tmpfsDir(t: ExecutionContext, parent: string, name = 'tmpfs', sizeMiB = 64): string {
  const dir = path.join(parent, name);
  fs.mkdirSync(dir);
  const r = run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=755`, 'tmpfs', dir]);
  if (r.status !== 0) throw new Error(`cannot mount tmpfs at ${dir}: ${r.stderr.trim()}`);
  t.teardown(() => unmountQuietly(dir));
  return dir;
}

/** A fresh ext4 filesystem in an image file under `dir`, loop-mounted at dir/disk (unmounted after the test). */
export function ext4Disk(t: ExecutionContext, dir: string, sizeMiB = 64): { img: string; disk: string } {
  const img = path.join(dir, 'img');
  const disk = path.join(dir, 'disk');
  fs.mkdirSync(disk);
  runOk('truncate', ['-s', `${sizeMiB}M`, img]);
  runOk('mkfs.ext4', ['-q', '-F', img]);
  runOk('mount', ['-o', 'loop', img, disk]);
  t.teardown(() => void run('umount', ['-l', disk]));
  return { img, disk };
}
