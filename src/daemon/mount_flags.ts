// The mount(2) flags of a strata mount, from its -o options: the same flags the kernel's overlay
// gets from mount(8) (read-only, nodev, nosuid, noexec, and the atime policy). A remount passes
// the whole set again: MS_REMOUNT replaces the flags of the mount.

import * as N from '../native/index.js';
import type { MountParams } from '../union/params.js';

/** The FUSE subtype strata mounts with: mountinfo shows its mounts as type fuse.strata. */
export const FUSE_SUBTYPE = 'strata';

export type VfsFlagParams = Pick<MountParams, 'nodev' | 'nosuid' | 'noexec' | 'atime' | 'nodiratime'>;

export function mountFlags(p: VfsFlagParams, readOnly: boolean): number {
  const C = N.C;
  let flags = 0;
  if (readOnly) flags |= C.MS_RDONLY;
  if (p.nodev) flags |= C.MS_NODEV;
  if (p.nosuid) flags |= C.MS_NOSUID;
  if (p.noexec) flags |= C.MS_NOEXEC;
  if (p.nodiratime) flags |= C.MS_NODIRATIME;
  if (p.atime === 'noatime') flags |= C.MS_NOATIME;
  else if (p.atime === 'strictatime') flags |= C.MS_STRICTATIME;
  else flags |= C.MS_RELATIME;
  return flags;
}
