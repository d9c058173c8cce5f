// File handles that outlive the kernel's inode (the kernel's fs/overlayfs/export.c; -o nfs_export=on).
//
// FUSE encodes a file handle as (nodeid, generation). When the kernel no longer holds that inode
// (after FORGET, or after a remount) it asks the daemon for LOOKUP(nodeid, "."), and the answer
// must carry the same nodeid and generation; for a directory it then reconnects the dentry with
// LOOKUP(nodeid, ".."). So with nfs_export=on a nodeid has to name one object for good:
//
// - a node's nodeid is the one recorded for its name when that record is of the same object, else
//   its st_ino, which strata keeps stable across copy-up and remount (origins in the metadata
//   cache); where that number is taken (another name of a lower hard link, a node superseded by a
//   copy-up) or out of range, a random id above 2^52 is used instead;
// - a record per nodeid says where the object was last seen: (parent nodeid, name, st_ino,
//   generation). Renames move it. LOOKUP "." walks the records up to a node the daemon knows,
//   looks the names up again, and answers only if it finds the same st_ino under the same nodeid;
// - the generation is random per object, so a handle of a removed object never opens another one
//   that got its inode number: its record goes away with its last name.
//
// The records live in the LevelDB metadata cache (handles then survive a remount), or in memory
// without one (they survive FORGET only).

import { ROOT_NODEID, type UnionNode } from './node.js';

export interface HandleRecord {
  ino: number;
  gen: number;
  parent: number;
  name: string;
}

/** Where records are kept beyond this mount (the metadata cache). */
export interface HandleStore {
  /** The records loaded at open (filled before the first request is served). */
  readonly handles: Map<number, HandleRecord>;
  putHandle(id: number, r: HandleRecord): void;
  deleteHandle(id: number): void;
}

/** Ids not derived from an inode number: above every st_ino strata shows, below 2^53 (exact in a double). */
const SPARE_BASE = 2 ** 52;
const SPARE_RANGE = 2 ** 47;

const nameKey = (parent: number, name: string): string => `${parent}/${name}`;

export class ExportTable {
  readonly records: Map<number, HandleRecord>;
  /** "parent nodeid/name" -> the nodeid recorded there. Built lazily from the records. */
  private byName: Map<string, number> | null = null;

  constructor(private readonly store: HandleStore | null) {
    this.records = store?.handles ?? new Map();
  }

  private names(): Map<string, number> {
    if (!this.byName) {
      this.byName = new Map();
      for (const [id, r] of this.records) this.byName.set(nameKey(r.parent, r.name), id);
    }
    return this.byName;
  }

  /**
   * The nodeid of a new node for the object with st_ino `ino` found as `name` in `parent`;
   * `taken` says whether a live node has an id.
   */
  idFor(ino: number, taken: (id: number) => boolean, parent?: number, name?: string): number {
    if (parent !== undefined && name !== undefined) {
      const id = this.names().get(nameKey(parent, name));
      if (id !== undefined && this.records.get(id)?.ino === ino && !taken(id)) return id;
    }
    if (Number.isSafeInteger(ino) && ino > ROOT_NODEID && ino < SPARE_BASE && !taken(ino)) return ino;
    for (;;) {
      const id = SPARE_BASE + randomBelow(SPARE_RANGE);
      if (!taken(id) && !this.records.has(id)) return id;
    }
  }

  /** The generation of a new node: its record's when the record is of the same object. */
  generationFor(id: number, ino: number): number {
    const r = this.records.get(id);
    if (r && r.ino === ino) return r.gen;
    return 1 + randomBelow(2 ** 32 - 2);
  }

  /** Records where `node` is now (after a lookup, a create, a rename, a copy-up that changed st_ino). */
  note(node: UnionNode): void {
    const parent = node.parent;
    if (!parent || node.unlinked || node.nodeid === ROOT_NODEID) return;
    const r = this.records.get(node.nodeid);
    if (r && r.ino === node.ino && r.gen === node.generation && r.parent === parent.nodeid && r.name === node.name) return;
    const rec: HandleRecord = { ino: node.ino, gen: node.generation, parent: parent.nodeid, name: node.name };
    const names = this.names();
    if (r && names.get(nameKey(r.parent, r.name)) === node.nodeid) names.delete(nameKey(r.parent, r.name));
    names.set(nameKey(rec.parent, rec.name), node.nodeid);
    this.records.set(node.nodeid, rec);
    this.store?.putHandle(node.nodeid, rec);
  }

  /** The object's last name is gone: its handles go stale. */
  drop(node: UnionNode): void {
    const r = this.records.get(node.nodeid);
    if (!r || r.gen !== node.generation) return;
    const names = this.names();
    if (names.get(nameKey(r.parent, r.name)) === node.nodeid) names.delete(nameKey(r.parent, r.name));
    this.records.delete(node.nodeid);
    this.store?.deleteHandle(node.nodeid);
  }
}

/**
 * A random integer in [0, n). Not node:crypto: its import costs every mount about 9 ms, and these
 * numbers (spare nodeids, generations) only need to differ between objects and mounts, which the
 * records and `taken` check; a handle is never a secret (open_by_handle_at needs CAP_DAC_READ_SEARCH).
 */
function randomBelow(n: number): number {
  return Math.floor(Math.random() * n);
}
