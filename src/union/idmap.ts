// Owner mapping for user namespaces, as fuse-overlayfs takes it (-o uidmapping=, gidmapping=,
// squash_to_root, squash_to_uid=, squash_to_gid=) and as containers/storage passes it to a mount
// program for `podman run --uidmap` or `--userns=auto`: the layers keep the container's ids (0 for
// its root), the mount shows them shifted to the host's (100000 for that root with
// uidmapping=0:100000:65536), and what callers create or chown is written back in the layers' ids.
// The same view as the kernel's overlay over idmapped layers (mount_setattr MOUNT_ATTR_IDMAP).
//
// A mapping is a list of triples STORED:SHOWN:COUNT joined by colons (a leading colon, as podman 4
// writes it, is allowed). An id outside every triple shows as the overflow id
// (/proc/sys/kernel/overflowuid, 65534), as the kernel shows an unmapped id; a caller's id outside
// them is written as the overflow id, as fuse-overlayfs writes it (the kernel's idmapped mounts
// refuse the creation instead, with EOVERFLOW). squash_to_* shows every object as owned by one id;
// what is written keeps the caller's id (mapped back when a mapping is given too).

import fs from 'node:fs';
import type { IdMapOptions, IdRange } from './params.js';

function overflowId(file: string): number {
  try {
    const v = Number(fs.readFileSync(file, 'latin1').trim());
    return Number.isInteger(v) && v >= 0 ? v : 65534;
  } catch {
    return 65534;
  }
}

function lookUp(ranges: IdRange[], id: number, from: 'stored' | 'shown', to: 'stored' | 'shown', overflow: number): number {
  if (ranges.length === 0) return id;
  for (const r of ranges) {
    const off = id - r[from];
    if (off >= 0 && off < r.count) return r[to] + off;
  }
  return overflow;
}

/** One mount's owner mapping: ids as the layers store them (stored) and as callers see them (shown). */
export class IdMap {
  private readonly overflowUid = overflowId('/proc/sys/kernel/overflowuid');
  private readonly overflowGid = overflowId('/proc/sys/kernel/overflowgid');

  constructor(readonly options: IdMapOptions) {}

  /** The uid a stored owner shows as. */
  uidOut(id: number): number {
    const o = this.options;
    return o.squashUid ?? (o.squashRoot ? 0 : null) ?? lookUp(o.uids, id, 'stored', 'shown', this.overflowUid);
  }

  gidOut(id: number): number {
    const o = this.options;
    return o.squashGid ?? (o.squashRoot ? 0 : null) ?? lookUp(o.gids, id, 'stored', 'shown', this.overflowGid);
  }

  /** The uid stored for a caller's (or a chown's) uid. */
  uidIn(id: number): number {
    return lookUp(this.options.uids, id, 'shown', 'stored', this.overflowUid);
  }

  gidIn(id: number): number {
    return lookUp(this.options.gids, id, 'shown', 'stored', this.overflowGid);
  }
}
