// The directory listings readers are in (the kernel's overlay keeps a merged listing per open
// directory for as long as it is open). strata opens directories without a handle (OPENDIR
// answers ENOSYS), so it cannot know when a reader closes its directory: a listing is taken when
// a reader starts (offset 0) and named by the offsets handed out (generation * 2^24 + position).
// It stays after the reader reaches the end, so that telldir offsets stay valid (seekdir back,
// read on) while the directory changes, until the store's budget makes it the oldest to go: at
// most PER_DIR listings per directory and BUDGET entries in all, least recently read first.

import type { DirEntry } from './readdir.js';

/** Offsets: generation * SPAN + position (up to 16M entries in one directory). */
export const SPAN = 2 ** 24;
/** Listings kept per directory (readers that started last). */
const PER_DIR = 8;
/** Entries kept in all listings together (about 70 bytes each: a walk must not keep every listing it read). */
const BUDGET = 1 << 14;

interface Listing {
  dir: number;
  entries: DirEntry[];
}

export class ListingStore {
  /** By generation, least recently used first. */
  private readonly byGen = new Map<number, Listing>();
  private readonly perDir = new Map<number, number[]>();
  private total = 0;
  private generation = 0;

  /** The listing generation `gen` of directory `dir`, if still kept (marks it recently used). */
  get(dir: number, gen: number): DirEntry[] | undefined {
    const l = this.byGen.get(gen);
    if (!l || l.dir !== dir) return undefined;
    this.byGen.delete(gen);
    this.byGen.set(gen, l);
    return l.entries;
  }

  /** Keeps a new listing of `dir`; returns its generation. */
  add(dir: number, entries: DirEntry[]): number {
    // Generations stay below 2^29, so offsets stay exact doubles (< 2^53).
    this.generation = (this.generation % (2 ** 29 - 1)) + 1;
    const gen = this.generation;
    this.drop(gen);
    this.byGen.set(gen, { dir, entries });
    this.total += entries.length;
    const gens = this.perDir.get(dir) ?? [];
    gens.push(gen);
    this.perDir.set(dir, gens);
    if (gens.length > PER_DIR) this.drop(gens[0]!);
    while (this.total > BUDGET && this.byGen.size > 1) this.drop(this.byGen.keys().next().value!);
    return gen;
  }

  private drop(gen: number): void {
    const l = this.byGen.get(gen);
    if (!l) return;
    this.byGen.delete(gen);
    this.total -= l.entries.length;
    const gens = this.perDir.get(l.dir)!;
    gens.splice(gens.indexOf(gen), 1);
    if (gens.length === 0) this.perDir.delete(l.dir);
  }

  /** Entries kept (for tests and stats). */
  get size(): number {
    return this.total;
  }
}
