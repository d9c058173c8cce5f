// Changes to the namespace (the kernel's fs/overlayfs/dir.c): creating objects (over whiteouts),
// unlink and rmdir (leaving whiteouts where a lower layer shows the name), rename (EXDEV for
// lower or merged directories, whiteouts at the old name, opaque directories at the new one)
// and link.

import { errCode, fsError } from '../fuse/errors.js';
import type { RequestContext } from '../fuse/types.js';
import * as N from '../native/index.js';
import { removeWorkEntry, workName, type CopyUp, type UpperDir } from './copy_up.js';
import type { InodeTable } from './inode.js';
import type { Layer } from './layers.js';
import { atFlags, statObject, type UnionNode } from './node.js';
import { checkName, lowerShows } from './namei.js';
import { hasOrigin, markImpure } from './origin.js';
import {
  hasOciWhiteout, isKernelWhiteout, isOciMetaName, isOpaqueDir, OCI_OPAQUE, OCI_WHITEOUT_PREFIX, ociWhiteoutTarget, OPAQUE_XATTR_TRUSTED, OPAQUE_XATTR_USER,
  REDIRECT_XATTR_TRUSTED, REDIRECT_XATTR_USER, redirectOf, WhiteoutMaker,
} from './whiteout.js';

const { C, ST } = N;

export type WriteFormat = 'kernel' | 'oci';

/**
 * Where a new entry goes, as far as the checks before its create know: over a whiteout in the upper;
 * where the upper holds nothing and no lower layer shows the name ('free'); or 'unknown' (an
 * in-place create finds out: EEXIST leads to a look at what holds the name).
 */
export type NewAt = 'whiteout' | 'free' | 'unknown';

export interface DirOptions {
  /** Whiteouts and opaque markers as the kernel writes them, or as OCI layer files. */
  writeFormat: WriteFormat;
  /** Opaque xattr in the user.overlay namespace (overlayfs "userxattr"). */
  userxattr: boolean;
  /**
   * Every directory created in a merged directory is made opaque (the kernel's overlay does so when it
   * does not allow offline changes to the layers: MountParams.newDirsOpaque). Without it, only one made
   * where a whiteout was.
   */
  newDirsOpaque?: boolean;
  /** redirect_dir=on: directories with lower layers are renamed with a redirect (MountParams.redirectDir). */
  redirectDir?: boolean;
  /**
   * metacopy=on, where it writes metadata-only copies (not in a containers-storage layer: see
   * containersStorageLayer in the daemon): a change
   * that needs no data copies a lower regular file up without it (CopyUp.begin).
   */
  metacopy?: boolean;
}

/** What to create: a regular file, directory, symlink or special file. */
export type NewObject =
  | { kind: 'file'; mode: number; flags: number }
  | { kind: 'dir'; mode: number }
  | { kind: 'symlink'; target: string }
  | { kind: 'node'; mode: number; rdev: number };

const st = new Float64Array(16);

/**
 * A name a create, link or rename is to give. Where the layers' `.wh.` files are OCI whiteouts
 * (oci_whiteouts=on), such a name is refused with EINVAL, as fuse-overlayfs refuses it: an object made
 * under it would never show, and would hide the name it whites out in the layers below.
 */
function checkNewName(parent: UnionNode, name: string): void {
  checkName(name);
  if (isOciMetaName(name) && parent.dirLayers?.[0]?.ociWhiteouts !== false) throw fsError('EINVAL');
}

export class DirOps {
  /** Kernel-format whiteouts: links of one whiteout in the work directory, as the kernel makes them. */
  private readonly whiteouts: WhiteoutMaker;
  /**
   * Where nodes were created with no lower layer showing their name (lowers never change, and a
   * directory's lower layers never grow): removing or renaming that name needs no search for a whiteout.
   */
  private readonly freeNames = new WeakMap<UnionNode, { parent: UnionNode; name: string }>();
  /** Who owns what the daemon creates (its fsuid and fsgid are its user and group). */
  private readonly daemonUid = N.geteuid();
  private readonly daemonGid = N.getgid();

  constructor(
    private readonly upper: UpperDir,
    private readonly inodes: InodeTable,
    private readonly copyUp: CopyUp,
    private readonly opts: DirOptions,
    /**
     * Called for a directory changed where no reply tells the kernel (a failing rename's marks): its
     * cached attributes and listing are dropped, so that the next listing reaches the daemon.
     */
    private readonly changedBehind: (node: UnionNode) => void,
  ) {
    this.whiteouts = new WhiteoutMaker(upper.workFd, workName);
  }

  private get up() {
    return this.upper.layer;
  }

  /** Is there a kernel whiteout for `name` in the upper directory of `parent`? */
  private upperWhiteout(parent: UnionNode, name: string): boolean {
    return N.lstatMaybe(parent.dirFd(this.up), name, st) && isKernelWhiteout(st);
  }

  private markOpaque(dirfd: number, name: string): void {
    if (this.opts.writeFormat === 'oci') {
      const fd = N.openat(dirfd, `${name}/${OCI_OPAQUE}`, C.O_CREAT | C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0o644);
      N.close(fd);
    } else {
      N.lsetxattr(dirfd, name, this.opts.userxattr ? OPAQUE_XATTR_USER : OPAQUE_XATTR_TRUSTED, Buffer.from('y'), 0);
    }
  }

  /** The gid and setgid bit a new object gets from its parent (BSD group semantics of a setgid dir). */
  private ownership(ctx: RequestContext, parent: UnionNode): { gid: number; setgid: boolean } {
    N.fstatat(parent.dirFd(this.up), '', C.AT_EMPTY_PATH, st);
    const setgid = (st[ST.mode]! & 0o2000) !== 0;
    return { gid: setgid ? st[ST.gid]! : ctx.gid, setgid };
  }

  /**
   * For a new entry `name` of `parent`, a merged directory with an upper: EEXIST (thrown) when the
   * union shows the name, else where the entry goes; null when the upper holds something there other
   * than a whiteout (the caller looks the name up).
   */
  newEntryAt(parent: UnionNode, name: string): NewAt | null {
    const upperParent = parent.dirFd(this.up);
    if (N.lstatMaybe(upperParent, name, st)) return isKernelWhiteout(st) ? 'whiteout' : null;
    // Nothing in the upper: an OCI whiteout there hides the layers below, else they decide.
    if (parent.dirLayers![0]!.ociWhiteouts && hasOciWhiteout(upperParent, name)) return 'unknown';
    if (lowerShows(parent, name)) throw fsError('EEXIST');
    return 'free';
  }

  /** Was `node` created as parent/name where no lower layer shows that name (its removal then needs no whiteout)? */
  private createdFree(node: UnionNode, parent: UnionNode, name: string): boolean {
    const at = this.freeNames.get(node);
    return at !== undefined && at.parent === parent && at.name === name;
  }

  /**
   * Creates a new object `name` in `parent` owned by the caller, where the union shows nothing.
   * Over a whiteout, it is built in the work directory and renamed over it (a new directory there is
   * opaque and swapped with it), as the kernel's ovl_create_over_whiteout. `at`: what the checks
   * before knew of the name (an in-place create that meets EEXIST looks at what holds the name).
   * Returns the open descriptor for files (else -1), and the new object's stat (valid until the
   * next call).
   */
  create(ctx: RequestContext, parent: UnionNode, name: string, obj: NewObject, at: NewAt = 'unknown'):
  { node: UnionNode; fd: number; st: Float64Array } {
    checkNewName(parent, name);
    this.copyUp.ensure(parent);
    const upperParent = parent.dirFd(this.up);
    const { gid, setgid } = this.ownership(ctx, parent);
    // The owner is set at once unless the create itself gives it: a caller with the daemon's user,
    // and its group or a setgid parent's (checked on the stat below: a filesystem mounted with grpid).
    const chown = ctx.uid !== this.daemonUid || (!setgid && gid !== this.daemonGid);
    let made: { fd: number; type: number } | null = null;
    let free = at === 'free';
    if (at !== 'whiteout') {
      try {
        const opaque = obj.kind === 'dir' && this.opts.newDirsOpaque === true && parent.isMerged;
        made = this.build(ctx, upperParent, name, obj, gid, setgid, chown, opaque);
      } catch (e) {
        // Something holds the name: a whiteout (the kernel's negative entry over it) or a name the
        // union never shows (EEXIST stays the answer).
        if (errCode(e) !== 'EEXIST' || !this.upperWhiteout(parent, name)) throw e;
        free = false;
      }
    }
    if (!made) {
      const work = this.upper.workFd;
      const tmp = workName();
      made = this.build(ctx, work, tmp, obj, gid, setgid, chown, true);
      try {
        if (made.type === C.S_IFDIR) {
          // A directory cannot replace a whiteout: swap them, then drop the whiteout (now in the work dir).
          N.renameat2(work, tmp, upperParent, name, C.RENAME_EXCHANGE);
          tryUnlink(work, tmp, 0);
        } else {
          N.renameat2(work, tmp, upperParent, name, 0);
        }
      } catch (e) {
        if (made.fd >= 0) N.close(made.fd);
        removeWorkEntry(work, tmp);
        throw e;
      }
    }
    const { fd, type } = made;
    N.fstatat(upperParent, name, C.AT_SYMLINK_NOFOLLOW, st);
    if (!chown && (st[ST.uid] !== ctx.uid || st[ST.gid] !== gid)) {
      N.fchownat(upperParent, name, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
      // chown cleared setuid and setgid of a non-directory
      if (obj.kind === 'file' || obj.kind === 'node') N.fchmodat(upperParent, name, obj.mode & 0o7777, 0);
      N.fstatat(upperParent, name, C.AT_SYMLINK_NOFOLLOW, st);
    }
    const node = this.inodes.create(parent, name, type, this.up, type === C.S_IFDIR ? [this.up] : null, st[ST.ino]!, undefined, true);
    if (free) this.freeNames.set(node, { parent, name });
    return { node, fd, st };
  }

  /**
   * Makes the object `tmp` in `dirfd` with the caller's owner and the mode asked (`opaque`: a new
   * directory hides the lower layers). On failure, nothing it made is left behind (an object that was
   * there already is not touched: EEXIST).
   */
  private build(ctx: RequestContext, dirfd: number, tmp: string, obj: NewObject, gid: number, setgid: boolean, chown: boolean, opaque: boolean):
  { fd: number; type: number } {
    let fd = -1;
    let made = false;
    try {
      switch (obj.kind) {
        case 'file':
          fd = N.openat(dirfd, tmp, C.O_CREAT | C.O_EXCL | C.O_RDWR | C.O_NOFOLLOW | C.O_CLOEXEC, 0o600);
          made = true;
          if (chown) N.fchown(fd, ctx.uid, gid);
          N.fchmod(fd, obj.mode & 0o7777);
          return { fd, type: C.S_IFREG };
        case 'dir':
          N.mkdirat(dirfd, tmp, 0o700);
          made = true;
          if (chown) N.fchownat(dirfd, tmp, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
          N.fchmodat(dirfd, tmp, (obj.mode & 0o7777) | (setgid ? 0o2000 : 0), 0);
          // Over a whiteout it must hide the lower directory.
          if (opaque) this.markOpaque(dirfd, tmp);
          return { fd, type: C.S_IFDIR };
        case 'symlink':
          N.symlinkat(obj.target, dirfd, tmp);
          made = true;
          if (chown) N.fchownat(dirfd, tmp, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
          return { fd, type: C.S_IFLNK };
        case 'node': {
          const type = obj.mode & C.S_IFMT;
          N.mknodat(dirfd, tmp, type | 0o600, obj.rdev);
          made = true;
          if (chown) N.fchownat(dirfd, tmp, ctx.uid, gid, C.AT_SYMLINK_NOFOLLOW);
          N.fchmodat(dirfd, tmp, obj.mode & 0o7777, 0);
          return { fd, type };
        }
      }
    } catch (e) {
      if (fd >= 0) N.close(fd);
      if (made) {
        if (dirfd === this.upper.workFd) removeWorkEntry(dirfd, tmp);
        else tryUnlink(dirfd, tmp, obj.kind === 'dir' ? C.AT_REMOVEDIR : 0);
      }
      throw e;
    }
  }

  /** link(2): the source is copied up, then linked in the upper. Returns the node of the new name. */
  link(node: UnionNode, parent: UnionNode, name: string): UnionNode {
    checkNewName(parent, name);
    if (node.isDir) throw fsError('EPERM');
    this.copyUp.ensure(node);
    this.copyUp.ensure(parent);
    // metacopy=on: the new name of a metadata-only copy finds its data through an absolute redirect on
    // the (shared) upper file, as the kernel's ovl_set_link_redirect gives it
    if (node.metacopy && node.parent && !node.unlinked) this.setRedirect(node.parent, node.name, node, false);
    const src = node.location();
    const [srcDir, srcName] = src;
    const linkFlags = atFlags(src, 0);
    const upperParent = parent.dirFd(this.up);
    if (this.upperWhiteout(parent, name)) {
      const tmp = workName();
      N.linkat(srcDir, srcName, this.upper.workFd, tmp, linkFlags);
      try {
        N.renameat2(this.upper.workFd, tmp, upperParent, name, 0);
      } catch (e) {
        removeWorkEntry(this.upper.workFd, tmp);
        throw e;
      }
    } else {
      N.linkat(srcDir, srcName, upperParent, name, linkFlags);
    }
    this.markImpureFor(upperParent, name, node);
    if (node.inoPinned) {
      // A copy without an origin (see setOrigin) keeps its st_ino for the names it knew; as on the
      // kernel, whose new name gets the upper file's inode, the new name is a node of its own, with the
      // copy's own st_ino (hard-linked nodes' attributes are not cached: see UnionFs.attrTimeout).
      N.fstatat(upperParent, name, C.AT_SYMLINK_NOFOLLOW, st);
      return this.inodes.create(parent, name, node.type, this.up, null, st[ST.ino]!, undefined, true, st[ST.nlink]!);
    }
    this.inodes.addAlias(node, parent, name);
    // An O_TMPFILE now has a name (it was linked through its anchor).
    if (this.tmpfiles.delete(node)) node.unlinked = false;
    return node;
  }

  /** Nodes of O_TMPFILE files not linked yet: linkat may name them (other unlinked files not). */
  private readonly tmpfiles = new WeakSet<UnionNode>();

  isUnnamedTmpfile(node: UnionNode): boolean {
    return this.tmpfiles.has(node);
  }

  /**
   * open(O_TMPFILE) in `parent` (FUSE_TMPFILE): an unnamed file in the parent's upper directory,
   * owned by the caller. Its node is anchored on the open file, so that linkat can name it.
   */
  tmpfile(ctx: RequestContext, parent: UnionNode, mode: number): { node: UnionNode; fd: number; st: Float64Array } {
    this.copyUp.ensure(parent);
    const { gid } = this.ownership(ctx, parent);
    const fd = N.openat(parent.dirFd(this.up), '.', C.O_TMPFILE | C.O_RDWR | C.O_CLOEXEC, 0o600);
    let anchor = -1;
    try {
      N.fchown(fd, ctx.uid, gid);
      N.fchmod(fd, mode & 0o7777);
      N.fstat(fd, st);
      anchor = N.dup(fd);
    } catch (e) {
      N.close(fd);
      throw e;
    }
    const node = this.inodes.createUnnamed(parent, C.S_IFREG, this.up, st[ST.ino]!, anchor);
    this.tmpfiles.add(node);
    return { node, fd, st };
  }

  /** An OCI-format whiteout: the file ".wh.<name>" beside the name. */
  private ociWhiteout(upperParent: number, name: string): void {
    N.close(N.openat(upperParent, OCI_WHITEOUT_PREFIX + name, C.O_CREAT | C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0o644));
  }

  /**
   * Removes the name `name` of `node` from `parent`'s upper directory, leaving a whiteout where a
   * lower layer shows the name. `clear`: for a directory, the entries its upper directory holds
   * (whiteouts and OCI markers only: see checkEmpty), which go with it.
   */
  private removeEntry(parent: UnionNode, name: string, node: UnionNode, clear: string[]): void {
    const upperParent = parent.dirFd(this.up);
    const oci = this.opts.writeFormat === 'oci';
    if (!node.layer.isUpper) {
      // The name shows a lower object: the upper holds nothing there (a lookup finds the upper first),
      // and the lower layer still shows it. A whiteout is all it takes.
      try {
        if (oci) this.ociWhiteout(upperParent, name);
        else this.whiteouts.make(upperParent, name);
        return;
      } catch (e) {
        if (errCode(e) !== 'EEXIST') throw e; // something else holds the name: the general way
      }
    }
    // (a lower layer reached through a redirect holds the directory under another name: not this one)
    const needWhiteout = node.dirLayers?.some((l) => !l.isUpper && !node.redirects?.has(l)) ||
      (!this.createdFree(node, parent, name) && lowerShows(parent, name));
    const inUpper = N.lstatMaybe(upperParent, name, st) && !isKernelWhiteout(st);
    const type = st[ST.mode]! & C.S_IFMT;
    if (inUpper && (type === C.S_IFDIR || st[ST.nlink]! <= 1)) this.inodes.forgetOrigin(st[ST.ino]!);
    if (oci) {
      if (needWhiteout) this.ociWhiteout(upperParent, name);
      if (inUpper) this.deleteUpper(upperParent, name, type, clear, false);
    } else if (inUpper) {
      this.deleteUpper(upperParent, name, type, clear, needWhiteout);
    } else if (needWhiteout) {
      this.whiteouts.make(upperParent, name);
    }
  }

  /**
   * Deletes the upper object `name` (of type `type`) in `upperParent`, atomically replaced by a
   * whiteout if `whiteout` (as the kernel's ovl_cleanup_and_whiteout: a link of the shared whiteout
   * renamed over a non-directory, or swapped with a directory that is then deleted in the work dir).
   */
  private deleteUpper(upperParent: number, name: string, type: number, clear: string[], whiteout: boolean): void {
    const work = this.upper.workFd;
    if (type !== C.S_IFDIR && !whiteout) {
      N.unlinkat(upperParent, name, 0);
      return;
    }
    if (type === C.S_IFDIR && !whiteout && clear.length === 0) {
      // Nothing in it: removed where it is.
      try {
        N.unlinkat(upperParent, name, C.AT_REMOVEDIR);
        return;
      } catch (e) {
        const code = errCode(e);
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      }
    }
    const tmp = workName();
    if (whiteout) {
      this.whiteouts.make(work, tmp);
      try {
        N.renameat2(work, tmp, upperParent, name, type === C.S_IFDIR ? C.RENAME_EXCHANGE : 0);
      } catch (e) {
        tryUnlink(work, tmp, 0);
        throw e;
      }
      if (type === C.S_IFDIR) this.deleteWorkDir(tmp, clear);
      return;
    }
    N.renameat2(upperParent, name, work, tmp, 0);
    this.deleteWorkDir(tmp, clear);
  }

  /**
   * Deletes the directory `tmp` of the work dir, which holds just the names `clear` (whiteouts and OCI
   * markers: no stat of each); anything else found in it is deleted as found.
   */
  private deleteWorkDir(tmp: string, clear: string[]): void {
    const work = this.upper.workFd;
    try {
      if (clear.length > 0) {
        const fd = N.openat(work, tmp, C.O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_CLOEXEC, 0);
        try {
          for (const name of clear) N.unlinkat(fd, name, 0);
        } finally {
          N.close(fd);
        }
      }
      N.unlinkat(work, tmp, C.AT_REMOVEDIR);
    } catch {
      removeWorkEntry(work, tmp);
    }
  }

  /** Removes the name `name` of `node` (a hard-linked node has several). */
  unlink(parent: UnionNode, node: UnionNode, name: string): void {
    this.copyUp.ensure(parent);
    node.pinAnchor();
    this.removeEntry(parent, name, node, NO_ENTRIES);
    this.inodes.removeName(node, parent, name);
  }

  /**
   * Merged emptiness (what rmdir and rename over a directory require, the kernel's
   * ovl_check_empty_dir): ENOTEMPTY at the first name the merged listing (readdir.ts) would show.
   * Returns the entries of the directory's upper layer, all whiteouts or OCI markers then, for the
   * removal to clear. A directory entry that d_type and d_ino prove to be a link of the shared
   * whiteout is one without a stat.
   */
  private checkEmpty(dir: UnionNode): string[] {
    const layers = dir.dirLayers!;
    const upperEntries: string[] = [];
    let hidden: Set<string> | null = null;
    for (let i = 0; i < layers.length; i++) {
      const layer = layers[i]!;
      const dirfd = dir.dirFd(layer);
      const { names, types, inos } = N.listDir(dirfd);
      if (names.length === 0) continue;
      const more = i + 1 < layers.length;
      let dev = -1;
      let ociHidden: string[] | null = null;
      for (let k = 0; k < names.length; k++) {
        const name = names[k]!;
        const dtype = types[k]!;
        if (layer.ociWhiteouts && name.startsWith(OCI_WHITEOUT_PREFIX)) {
          if (layer.isUpper) upperEntries.push(name);
          const target = name === OCI_OPAQUE ? undefined : ociWhiteoutTarget(name);
          if (target !== undefined && more) (ociHidden ??= []).push(target);
          continue;
        }
        if (hidden?.has(name)) continue;
        if (dtype !== C.DT_CHR && dtype !== C.DT_UNKNOWN) throw fsError('ENOTEMPTY');
        if (dtype === C.DT_CHR && layer.isUpper) {
          if (dev < 0) {
            N.fstatat(dirfd, '', C.AT_EMPTY_PATH, st);
            dev = st[ST.dev]!;
          }
          if (this.whiteouts.isShared(dev, dtype, inos[k]!)) {
            upperEntries.push(name);
            if (more) (hidden ??= new Set()).add(name);
            continue;
          }
        }
        if (!N.lstatMaybe(dirfd, name, st)) continue; // gone meanwhile
        if (!isKernelWhiteout(st)) throw fsError('ENOTEMPTY');
        if (layer.isUpper) upperEntries.push(name);
        if (more) (hidden ??= new Set()).add(name);
      }
      if (ociHidden) for (const name of ociHidden) (hidden ??= new Set()).add(name);
    }
    return upperEntries;
  }

  rmdir(parent: UnionNode, node: UnionNode, name: string): void {
    const clear = this.checkEmpty(node);
    this.copyUp.ensure(parent);
    node.pinAnchor();
    // The upper directory may still hold whiteouts: they go with it.
    this.removeEntry(parent, name, node, clear);
    this.inodes.removeName(node, parent, name);
    node.closeDirFds();
  }

  /**
   * Everything that can refuse a rename, checked before anything is copied up. Returns what
   * checkEmpty returns for a directory the rename replaces (else nothing).
   */
  checkRename(parent: UnionNode, oldName: string, node: UnionNode, newParent: UnionNode, newName: string, target: UnionNode | null,
    flags: number): string[] {
    // RENAME_WHITEOUT (and any flag but these two) is refused, as by the kernel's ovl_rename.
    if (flags & ~(C.RENAME_EXCHANGE | C.RENAME_NOREPLACE)) throw fsError('EINVAL');
    checkNewName(newParent, newName);
    const exchange = (flags & C.RENAME_EXCHANGE) !== 0;
    if ((flags & C.RENAME_NOREPLACE) && target) throw fsError('EEXIST');
    if (exchange && !target) throw fsError('ENOENT');
    if (target && !exchange) {
      if (node.isDir && !target.isDir) throw fsError('ENOTDIR');
      if (!node.isDir && target.isDir) throw fsError('EISDIR');
    }
    // Without redirect_dir=on, a directory with lower layers cannot be renamed: EXDEV makes mv copy.
    if (!this.redirecting) {
      if (node.isDir && hasLower(node)) throw fsError('EXDEV');
      if (exchange && target!.isDir && hasLower(target!)) throw fsError('EXDEV');
    }
    if (!target || exchange || !target.isDir) return NO_ENTRIES;
    try {
      return this.checkEmpty(target);
    } catch (e) {
      if (errCode(e) === 'ENOTEMPTY') this.markedBeforeFailing(parent, oldName, node, newParent, target);
      throw e;
    }
  }

  /** rename(2) of parent/oldName (the node `node`) to newParent/newName (now `target`, if any). */
  rename(parent: UnionNode, oldName: string, node: UnionNode, newParent: UnionNode, newName: string, target: UnionNode | null, flags: number): void {
    const clear = this.checkRename(parent, oldName, node, newParent, newName, target, flags);
    const exchange = (flags & C.RENAME_EXCHANGE) !== 0;
    this.copyUp.ensure(parent);
    this.copyUp.ensure(newParent);
    this.copyUp.ensure(node);
    if (target && exchange) this.copyUp.ensure(target);
    const from = parent.dirFd(this.up);
    const to = newParent.dirFd(this.up);
    const srcNeedsWhiteout = !exchange && !this.createdFree(node, parent, oldName) && lowerShows(parent, oldName);
    // The object the rename replaces stays reachable through descriptors open on it.
    if (target && !exchange) target.pinAnchor();

    // redirect_dir=on: a directory with lower layers keeps them through a redirect (see redirectFor).
    const samedir = parent === newParent;
    const moved = node.isDir && this.redirecting && hasLower(node) ? this.redirectFor(parent, oldName, node, samedir) : null;
    const swapped = exchange && target!.isDir && this.redirecting && hasLower(target!) ? this.redirectFor(newParent, newName, target!, samedir) : null;
    // metacopy=on: a metadata-only copy (the kernel's) goes on finding its data below through a redirect,
    // as the kernel's ovl_rename gives it one (its data is not copied up for a rename)
    if (node.metacopy) this.setRedirect(parent, oldName, node, samedir);
    if (exchange && target!.metacopy) this.setRedirect(newParent, newName, target!, samedir);

    if (exchange) {
      N.renameat2(from, oldName, to, newName, C.RENAME_EXCHANGE);
      // A directory now standing where a lower layer shows the name must not merge with it.
      // A directory moved into a merged parent is made opaque, as the kernel does: it must not
      // merge with whatever a lower layer shows (or will show) under its new name.
      if (moved) moved();
      else if (node.isDir && newParent.isMerged) this.markOpaque(to, newName);
      if (swapped) swapped();
      else if (target!.isDir && parent.isMerged) this.markOpaque(from, oldName);
      if (parent !== newParent) {
        this.markImpureFor(from, oldName, target);
        this.markImpureFor(to, newName, node);
      }
      this.inodes.exchange(parent, oldName, newParent, newName);
      return;
    }

    // Clear what occupies the destination in the upper: a whiteout, or an (empty) directory
    // that may still hold whiteouts, so the rename below can replace it.
    // The source takes the name, so no whiteout is needed there: a directory over a directory
    // or over a whiteout needs the old entry out of the way first (rename(2) cannot replace them).
    // A non-directory replaces a whiteout or nothing alike: where the union shows nothing at the new
    // name, or a lower object (the upper then holds nothing), what the upper holds does not matter,
    // unless the source leaves a whiteout (see switchWhiteouts).
    const kernelFormat = this.opts.writeFormat !== 'oci';
    let dstUpper = false;
    let dstType = 0;
    let dstIsWhiteout = false;
    if (node.isDir || (target !== null && (target.isDir || target.layer.isUpper)) || (target === null && srcNeedsWhiteout && kernelFormat)) {
      dstUpper = N.lstatMaybe(to, newName, st);
      dstType = st[ST.mode]! & C.S_IFMT;
      dstIsWhiteout = dstUpper && isKernelWhiteout(st);
      if (dstUpper && !dstIsWhiteout && (dstType === C.S_IFDIR || st[ST.nlink]! <= 1)) this.inodes.forgetOrigin(st[ST.ino]!);
    }
    // The source leaves a whiteout where a whiteout holds the new name: the two swap places
    // (RENAME_EXCHANGE), as the kernel's ovl_rename switches them, so the old name gets the whiteout
    // the new one had (a link of the shared one, or one of its own) and no whiteout is made.
    const switchWhiteouts = srcNeedsWhiteout && dstIsWhiteout && kernelFormat;
    if (dstUpper && !switchWhiteouts && (dstType === C.S_IFDIR || (dstIsWhiteout && node.isDir))) {
      const tmp = workName();
      N.renameat2(to, newName, this.upper.workFd, tmp, 0);
      if (dstType === C.S_IFDIR) this.deleteWorkDir(tmp, clear);
      else tryUnlink(this.upper.workFd, tmp, 0);
    }
    if (moved) moved();
    else if (node.isDir && newParent.isMerged) this.markOpaque(from, oldName);
    if (!kernelFormat) {
      const dstLower = lowerShows(newParent, newName);
      N.renameat2(from, oldName, to, newName, 0);
      if (srcNeedsWhiteout) N.close(N.openat(from, OCI_WHITEOUT_PREFIX + oldName, C.O_CREAT | C.O_WRONLY | C.O_NOFOLLOW | C.O_CLOEXEC, 0o644));
      if (dstLower) tryUnlink(to, OCI_WHITEOUT_PREFIX + newName, 0);
    } else {
      // A whiteout left otherwise is RENAME_WHITEOUT's, an inode of its own, as the kernel's (not a link
      // of the shared one, which unlink and rmdir use): the uppers are alike down to the link counts.
      N.renameat2(from, oldName, to, newName, switchWhiteouts ? C.RENAME_EXCHANGE : srcNeedsWhiteout ? C.RENAME_WHITEOUT : 0);
    }
    if (parent !== newParent) this.markImpureFor(to, newName, node);
    if (target) this.inodes.removeName(target, newParent, newName);
    this.inodes.move(node, parent, oldName, newParent, newName);
  }

  /**
   * The kernel's rename of the upper directories that fails with ENOTEMPTY (`target` holds entries in
   * the upper): with RENAME_WHITEOUT where a lower layer shows the old name, as the kernel's, since a
   * filesystem may change the old directory before it fails (ext4 then sets its mtime).
   */
  private failingRename(parent: UnionNode, oldName: string, node: UnionNode, newParent: UnionNode, target: UnionNode): void {
    const whiteout = !this.createdFree(node, parent, oldName) && lowerShows(parent, oldName);
    try {
      N.renameat2(parent.dirFd(this.up), oldName, newParent.dirFd(this.up), target.name, whiteout ? C.RENAME_WHITEOUT : 0);
    } catch {
      return; // (ENOTEMPTY, as checkEmpty found)
    }
    throw new Error(`rename of ${oldName} over a directory with entries succeeded in the upper`);
  }

  /** redirect_dir=on, in the kernel's format (directories with lower layers move with a redirect). */
  private get redirecting(): boolean {
    return this.opts.redirectDir === true && this.opts.writeFormat !== 'oci';
  }

  /**
   * Before a directory with lower layers moves (redirect_dir=on): the redirect its upper copy gets,
   * as the kernel's ovl_set_redirect writes it: none when it has one that still holds (a relative
   * one within the same directory, an absolute one anywhere); within its directory its name; else
   * the absolute path where the layers below hold it, built from the names and upper redirects of
   * it and its ancestors (the kernel's ovl_get_redirect), EXDEV beyond redirect_max (mv then copies).
   * The xattr is written now; the function returned, called once the node has moved, gives the node
   * the place of its copy in each lower layer as an absolute path, reached from the layer's root.
   */
  private redirectFor(parent: UnionNode, name: string, node: UnionNode, samedir: boolean): () => void {
    this.setRedirect(parent, name, node, samedir);
    const places = new Map<Layer, string>();
    for (const layer of node.dirLayers!) if (!layer.isUpper) places.set(layer, lowerPlace(node, layer));
    return () => {
      node.redirects = places;
    };
  }

  /**
   * The redirect the kernel's ovl_set_redirect gives the upper object parent/name before it moves: its
   * name where it stays in its directory, else the absolute path where the layers below hold it (the
   * redirects of its ancestors followed); one it has that still holds is kept.
   */
  private setRedirect(parent: UnionNode, name: string, node: UnionNode, samedir: boolean): void {
    const xattr = this.opts.userxattr ? REDIRECT_XATTR_USER : REDIRECT_XATTR_TRUSTED;
    const own = redirectOf(parent.dirFd(this.up), name, this.up.markerNs);
    // (as the kernel's ovl_need_absolute_redirect: a file whose lower object has other names gets an
    // absolute redirect even within its directory, as its upper names may come to be in other ones)
    let absolute = !samedir;
    if (!absolute && node.metacopy && !node.dataMissing) {
      statObject(node.dataLocation(), st);
      absolute = st[N.ST.nlink]! > 1;
    }
    if (!(own !== null && (!absolute || own.startsWith('/')))) {
      let value = name;
      if (absolute) {
        const parts: string[] = [];
        let n: UnionNode = node;
        let nName = name;
        let r: string | null = own;
        for (;;) {
          if (r?.startsWith('/')) {
            parts.push(r.slice(1));
            break;
          }
          parts.push(r ?? nName);
          const up: UnionNode | null = n.parent;
          if (!up || !up.parent) break;
          nName = up.name;
          r = redirectOf(up.parent.dirFd(this.up), up.name, this.up.markerNs);
          n = up;
        }
        value = '/' + parts.reverse().join('/');
      }
      if (value.length > REDIRECT_MAX) throw fsError('EXDEV'); // (names are latin1: a char per byte)
      N.lsetxattr(parent.dirFd(this.up), name, xattr, Buffer.from(value, 'latin1'), 0);
    }
  }

  /**
   * A directory renamed over `target`, a directory with entries, gets ENOTEMPTY. The kernel checks a
   * target with lower layers first; for one without (upper only, or opaque) the rename of the upper
   * directories fails, after the source was marked opaque for a merged new parent (or, with
   * redirect_dir=on and lower layers, copied up and given its redirect). That mark stays: so here
   * too, for the same upper as the kernel's.
   */
  private markedBeforeFailing(parent: UnionNode, oldName: string, node: UnionNode, newParent: UnionNode, target: UnionNode): void {
    if (this.opts.writeFormat === 'oci' || !node.isDir) return;
    const layers = target.dirLayers!;
    if (layers.length !== 1 || !layers[0]!.isUpper) return;
    if (this.redirecting && hasLower(node)) {
      // (redirect_dir=on: the kernel copied the source up and gave it its redirect, then its rename of
      // the upper directories failed: that attempt too, for what the upper's filesystem does then)
      this.copyUp.ensure(node);
      this.redirectFor(parent, oldName, node, parent === newParent);
      // (and marked the new parent impure, the source having an origin now, as ovl_rename does first)
      if (parent !== newParent && hasOrigin(parent.dirFd(this.up), oldName, this.up.markerNs)) {
        this.copyUp.ensure(newParent);
        // (its ctime moved, and the kernel's next listing of it may drop the mark again: see readdir)
        if (markImpure(newParent.dirFd(this.up), this.opts.userxattr)) this.changedBehind(newParent);
      }
      this.failingRename(parent, oldName, node, newParent, target);
      return;
    }
    if (!node.layer.isUpper || !newParent.isMerged) return;
    const from = parent.dirFd(this.up);
    if (!isOpaqueDir(from, oldName, false, this.up.markerNs)) this.markOpaque(from, oldName);
    this.failingRename(parent, oldName, node, newParent, target);
  }

  /**
   * An object with a copy-up origin moved or linked into a directory (dirfd) makes it impure, as the
   * kernel's rename and link do: readdir there must look its entries up for their d_ino. The kernel
   * goes by the origin its inode holds in memory, also where the upper could not store it (a symlink
   * copied up with userxattr, which user.* attributes cannot be set on): `node` (inoPinned) says so.
   */
  private markImpureFor(dirfd: number, name: string, node: UnionNode | null): void {
    if (this.opts.writeFormat === 'oci') return;
    if (node?.inoPinned || hasOrigin(dirfd, name, this.up.markerNs)) markImpure(dirfd, this.opts.userxattr);
  }
}

const NO_ENTRIES: string[] = [];

/** The kernel's default redirect_max (the overlay module's parameter): longer redirects give EXDEV. */
const REDIRECT_MAX = 256;

function hasLower(node: UnionNode): boolean {
  return node.dirLayers!.some((l) => !l.isUpper);
}

/** Where the directory's copy in lower `layer` is, from that layer's root ("/a/b"), as dirFd finds it. */
function lowerPlace(node: UnionNode, layer: Layer): string {
  if (!node.parent) return '';
  const r = node.redirects?.get(layer);
  if (r?.startsWith('/')) return r;
  return `${lowerPlace(node.parent, layer)}/${r ?? node.name}`;
}

function tryUnlink(dirfd: number, name: string, flags: number): void {
  try {
    N.unlinkat(dirfd, name, flags);
  } catch {
    // nothing to clean
  }
}

