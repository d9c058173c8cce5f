// `strata cache stats|verify|clear`: reading a metadata cache outside a mount.

import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Level } from 'level';
import * as N from '../native/index.js';
import { InodeTable, type UnionNode } from './inode.js';
import { LayerStack } from './layers.js';
import { LOWER_ATIME } from './layer_mount.js';
import { LowerIndex, type LowerEntry } from './lower_index.js';
import { lookupLayers } from './namei.js';
import { JOURNAL, readRecords, SNAPSHOT } from './origin_file.js';

const { C } = N;

export interface CacheStats {
  entries: { origins: number; listings: number; other: number };
  bytes: number;
  lastMount: Record<string, unknown> | null;
  hitRate: number | null;
  layers: { path: string; upper: boolean }[];
}

function duBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const st = statSync(join(dir, name));
    total += st.isDirectory() ? duBytes(join(dir, name)) : st.size;
  }
  return total;
}

/**
 * The cache's LevelDB; null for a cache that has only its origin files (its mounts all ended before
 * the daemon was first idle, which is when LevelDB is made). Neither: ENOENT.
 */
async function openExisting(dir: string): Promise<Level<string, string> | null> {
  if (!existsSync(join(dir, 'CURRENT'))) {
    if (existsSync(join(dir, SNAPSHOT)) || existsSync(join(dir, JOURNAL))) return null;
    statSync(join(dir, 'CURRENT')); // ENOENT: no cache there
  }
  const db = new Level<string, string>(dir, { createIfMissing: false });
  try {
    await db.open();
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    if (/lock/i.test(String(cause?.message ?? ''))) throw new Error(`the cache "${dir}" is in use by a mounted strata`);
    throw e;
  }
  return db;
}

export async function cacheStats(dir: string): Promise<CacheStats> {
  const db = await openExisting(dir);
  if (!db) {
    const { records } = readRecords(dir);
    return { entries: { origins: records.size, listings: 0, other: 0 }, bytes: duBytes(dir), lastMount: null, hitRate: null, layers: [] };
  }
  try {
    // (a cache of an older strata keeps its origins in LevelDB until its next mount)
    const { records, snapshot } = readRecords(dir);
    const entries = { origins: snapshot ? records.size : 0, listings: 0, other: 0 };
    for await (const key of db.keys()) {
      if (key.startsWith('origin:')) entries.origins += snapshot ? 0 : 1;
      else if (key.startsWith('lower:')) entries.listings++;
      else entries.other++;
    }
    const statsJson = await db.get('meta:stats');
    const lastMount = statsJson ? (JSON.parse(statsJson) as Record<string, unknown>) : null;
    const hits = Number(lastMount?.hits ?? 0);
    const misses = Number(lastMount?.misses ?? 0);
    const layersJson = await db.get('meta:layers');
    const layers = layersJson ? (JSON.parse(layersJson) as { path: string; upper: boolean }[]).map((l) => ({ path: l.path, upper: l.upper })) : [];
    return { entries, bytes: duBytes(dir), lastMount, hitRate: hits + misses > 0 ? hits / (hits + misses) : null, layers };
  } finally {
    await db.close();
  }
}

export async function clearCache(dir: string): Promise<void> {
  const db = await openExisting(dir);
  if (db) {
    try {
      await db.clear();
    } finally {
      await db.close();
    }
  }
  for (const f of [SNAPSHOT, JOURNAL]) rmSync(join(dir, f), { force: true });
}

/** Walks from the root to the directory `key` ("/a/b") through the layers, without any cache. */
function walk(inodes: InodeTable, key: string): UnionNode | null {
  let node = inodes.root;
  for (const name of key.split('/').filter((x) => x.length > 0)) {
    const hit = lookupLayers(node, name);
    if (!hit || !hit.dirLayers) return null;
    node = inodes.fromHit(node, name, hit);
  }
  return node;
}

function canonical(entries: Iterable<[string, LowerEntry]>): string {
  return JSON.stringify([...entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
}

/** Rescans the layers and lists every cache entry that disagrees with them. */
export async function verifyCache(dir: string): Promise<string[]> {
  const db = await openExisting(dir);
  // Only inode records: there are no listings to check, and no record of the layers to check them against.
  if (!db) return [];
  const problems: string[] = [];
  try {
    const layersJson = await db.get('meta:layers');
    if (!layersJson) {
      // A daemon killed while it opened LevelDB (the first time it went idle) leaves it without the
      // record, and a later mount that ends before it is idle never opens it: nothing to check then.
      // Listings or file handles without the layers they describe are a fault, though.
      const stray: string[] = [];
      for await (const key of db.keys()) if (key.startsWith('lower:') || key.startsWith('handle:')) stray.push(key);
      return stray.length ? [`no layer record, yet ${stray.length} entries made for some layers (${stray[0]}, ...)`] : [];
    }
    const layers = JSON.parse(layersJson) as { path: string; upper: boolean; oci?: false; ns?: 'user' }[];
    const upper = layers.find((l) => l.upper)?.path ?? null;
    // (read as the mount that wrote them read its layers)
    const opts = { atime: LOWER_ATIME, workdir: null, ociWhiteouts: !layers.some((l) => l.oci === false), userxattr: layers.some((l) => l.ns === 'user') };
    const stack = LayerStack.open(upper, layers.filter((l) => !l.upper).map((l) => l.path), opts);
    // A listing describes the lower layers at its path: checked against them alone. (What the upper
    // does there does not make it wrong: a directory removed through the mount, a whiteout now, leaves
    // its listing unused, and right again if the whiteout goes.)
    const lowerOnly = LayerStack.open(null, layers.filter((l) => !l.upper).map((l) => l.path), opts);
    try {
      const inodes = new InodeTable(lowerOnly);
      const fresh = new LowerIndex(lowerOnly, null);
      for await (const [key, value] of db.iterator({ gte: 'lower:', lt: 'lower:\xff' })) {
        const path = key.slice('lower:'.length);
        const node = walk(inodes, path);
        if (!node || fresh.lowerFrom(node) < 0) {
          problems.push(`${path}: the cache lists a lower directory that the layers do not merge`);
          continue;
        }
        // (its layer numbers count the upper, which the lower-only stack has not)
        const off = upper !== null ? 1 : 0;
        const stored = canonical((JSON.parse(value) as [string, LowerEntry][]).map(([n, e]): [string, LowerEntry] =>
          [n, { ...e, l: e.l - off, d: e.d ? e.d.map((i) => i - off) : null }]));
        if (stored !== canonical(fresh.build(node))) problems.push(`${path}: the cached lower listing differs from the layers`);
      }
      if (stack.upper) {
        const upperInos = new Set<number>();
        const st = new Float64Array(16);
        const scan = (fd: number): void => {
          for (const [name, type, ino] of N.readdir(fd)) {
            upperInos.add(ino);
            if (type === C.DT_DIR && N.lstatMaybe(fd, name, st)) {
              const sub = N.openat(fd, name, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
              try {
                scan(sub);
              } finally {
                N.close(sub);
              }
            }
          }
        };
        scan(stack.upper.fd);
        const prefix = `origin:${stack.upper.dev}.${stack.upper.ino}:`;
        const { records, snapshot } = readRecords(dir);
        const keys: string[] = [...records.keys()].filter((k) => k.startsWith(prefix));
        if (!snapshot) for await (const key of db.keys({ gte: prefix, lt: prefix + '\xff' })) keys.push(key);
        for (const key of keys) {
          const ino = Number(key.slice(prefix.length));
          if (!upperInos.has(ino)) problems.push(`inode ${ino}: the cache keeps a number for an upper object that does not exist`);
        }
      }
    } finally {
      stack.close();
      lowerOnly.close();
    }
  } finally {
    await db.close();
  }
  return problems;
}
