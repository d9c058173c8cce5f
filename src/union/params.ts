// Mount options (the kernel's fs/overlayfs/params.c), in the forms that overlayfs,
// fuse-overlayfs and mount(8) use: "-o lowerdir=A:B,upperdir=U,workdir=W,..." possibly repeated,
// with "\:" and "\," escapes, empty items, and generic mount options that we accept.

export type AtimeMode = 'relatime' | 'noatime' | 'strictatime';

export class UsageError extends Error {
  readonly exitCode = 2;
}

export interface IdRange {
  /** First id as the layers store it. */
  stored: number;
  /** First id as the mount shows it. */
  shown: number;
  count: number;
}

/** The owner mapping options of one mount, as parsed (see parseRanges). */
export interface IdMapOptions {
  uids: IdRange[];
  gids: IdRange[];
  /** squash_to_root: every object shows as owned by 0:0 (squash_to_uid= and squash_to_gid= come first). */
  squashRoot: boolean;
  squashUid: number | null;
  squashGid: number | null;
}

export function hasIdMapping(o: IdMapOptions): boolean {
  return o.uids.length > 0 || o.gids.length > 0 || o.squashRoot || o.squashUid !== null || o.squashGid !== null;
}

const MAX_ID = 0xffffffff;

/** Parses a uidmapping= or gidmapping= value ("0:100000:65536" or ":0:1000:1:1:100000:65536"). */
export function parseRanges(key: string, value: string): IdRange[] {
  const parts = value.split(':').filter((s) => s !== '');
  const bad = (why: string): UsageError => new UsageError(`bad value for '${key}': "${value}" (${why})`);
  if (parts.length === 0 || parts.length % 3 !== 0) throw bad('triples STORED:SHOWN:COUNT joined by colons');
  const nums = parts.map((s) => {
    if (!/^\d+$/.test(s) || Number(s) > MAX_ID) throw bad(`"${s}" is not an id`);
    return Number(s);
  });
  const out: IdRange[] = [];
  for (let i = 0; i < nums.length; i += 3) {
    const [stored, shown, count] = [nums[i]!, nums[i + 1]!, nums[i + 2]!];
    if (count === 0 || stored + count - 1 > MAX_ID || shown + count - 1 > MAX_ID) throw bad(`the range ${stored}:${shown}:${count} is empty or too long`);
    out.push({ stored, shown, count });
  }
  return out;
}

/** A squash_to_uid= or squash_to_gid= value. */
export function parseId(key: string, value: string): number {
  if (!/^\d+$/.test(value) || Number(value) > MAX_ID) throw new UsageError(`bad value for '${key}': "${value}" (an id)`);
  return Number(value);
}

export interface MountParams {
  lowerdirs: string[];
  /**
   * Data-only lower layers (lowerdir=...::D, datadir+=D), below the lower ones: never seen in the merged
   * tree; they hold the data of metacopy files that reach them by an absolute redirect.
   */
  datadirs: string[];
  upperdir: string | null;
  workdir: string | null;
  readOnly: boolean;
  /** Use user.overlay.* instead of trusted.overlay.* for what we write. */
  userxattr: boolean;
  /** Read `.wh.` files as OCI whiteouts (default); off: they are ordinary files. */
  ociWhiteouts: boolean;
  /** Skip fsync (overlayfs "volatile", fuse-overlayfs "fsync=0"). */
  volatile: boolean;
  /** File handles (name_to_handle_at/open_by_handle_at, NFS export) that survive FORGET and remount. */
  nfsExport: boolean;
  /** index=on: only its mark on the upper root is made (see rootOrigin); strata keeps no inode index. */
  index: boolean;
  /**
   * uuid=: auto (default) and on stamp a new upper's root with overlay.uuid (see stampUuid); off
   * writes origins with a null filesystem UUID (one filesystem only, else as null); null does neither.
   */
  uuid: 'auto' | 'on' | 'null' | 'off';
  nodev: boolean;
  nosuid: boolean;
  noexec: boolean;
  /** When reads update atime (relatime by default, as mount(8) and the kernel do). */
  atime: AtimeMode;
  /** Directories never get atime updates. */
  nodiratime: boolean;
  /** The mount's source, as /proc/self/mountinfo shows it (mount(8)'s first argument or -o fsname=). */
  fsname: string | null;
  /** `-o remount`: change the flags of an existing mount (mount(8) passes it to the helper). */
  remount: boolean;
  /** Options accepted for compatibility but without effect here. */
  ignored: string[];
  /** uidmapping=, gidmapping=, squash_to_*: owners shown shifted from the layers' (see idmap.ts). */
  ids: IdMapOptions;
  /**
   * index, metacopy, redirect_dir or xino is on: strata implements none of them, but with any of them
   * the kernel's overlay stops allowing changes to the layers while unmounted, and then marks every
   * directory it creates in a merged directory opaque. strata does the same (see DirOptions).
   */
  newDirsOpaque: boolean;
  /** redirect_dir=nofollow: a redirect found in a layer fails the lookup (EPERM) instead of being followed. */
  noFollowRedirects: boolean;
  /**
   * redirect_dir=on: a directory with lower layers is renamed as the kernel renames it, its upper copy
   * carrying trusted.overlay.redirect (where the layers below hold it), instead of EXDEV.
   */
  redirectDir: boolean;
  /**
   * metacopy=on: regular files the kernel copied up metadata only (trusted.overlay.metacopy, their
   * data left in a layer below) are read, their data found below as the kernel finds it; without
   * it a lookup meeting one fails with EPERM, as on the kernel. strata writes them too, where the
   * kernel's copy-up would (see CopyUp).
   */
  metacopy: boolean;
  /**
   * verity=on|require: the fs-verity digest a metacopy file records for its data is checked before the
   * data is used (open, copy-up), as the kernel's; with require a metacopy file without one is refused
   * (EIO) and metadata-only copies are made only of data with fs-verity. 'off' (the default): digests
   * are neither checked nor written.
   */
  verity: VerityMode;
}

export type VerityMode = 'off' | 'on' | 'require';

/**
 * lowerdir=A:B::C::D as the kernel reads it: lower layers top first, then after a double colon the
 * data-only layers (each after a double colon; a normal layer below a data-only one is refused).
 */
function splitLowerdir(value: string): [string[], string[]] {
  const items = splitEscaped(value, ':');
  const first = items.indexOf('');
  const lowers = first < 0 ? items : items.slice(0, first);
  // (what follows the first "::": "", D1, "", D2, ...)
  const rest = first < 0 ? [] : items.slice(first);
  const data: string[] = [];
  for (let i = 0; i < rest.length; i += 2) {
    if (rest[i] !== '') throw new UsageError(`lowerdir: a normal lower layer below a data-only one (after "::"): "${value}"`);
    const d = rest[i + 1];
    if (d === undefined || d === '') throw new UsageError(`lowerdir has an empty layer: "${value}"`);
    data.push(d);
  }
  if (lowers.length === 0) throw new UsageError(`lowerdir has an empty layer: "${value}"`);
  return [lowers, data];
}

/** Splits on unescaped `sep`, removing the escaping backslashes. */
export function splitEscaped(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\\' && i + 1 < s.length) {
      cur += s[++i];
    } else if (c === sep) {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out;
}

/** Splits an -o string on commas that are neither escaped nor inside double quotes (context="a,b"). */
function splitOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\\' && i + 1 < s.length) {
      cur += c + s[++i];
    } else if (c === '"') {
      quoted = !quoted;
      cur += c;
    } else if (c === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out.filter((x) => x.length > 0);
}

const GENERIC_FLAGS = new Set(['lazytime', 'nolazytime', 'async', 'sync', 'dirsync', 'auto', 'noauto', 'user', 'nouser', 'users', 'defaults', '_netdev',
  'nofail', 'silent', 'loud', 'allow_other', 'allow_root', 'default_permissions', 'suppress_dev', 'nonempty',
  'noacl', 'acl', 'posix_acl', 'fast_ino', 'plugins', 'static_nlink', 'debug', 'threaded']);
/** The values the kernel's overlay takes for these options (anything else: "bad value", the mount refused). */
const FEATURE_VALUES: Record<string, readonly string[]> = {
  index: ['on', 'off'],
  metacopy: ['on', 'off'],
  redirect_dir: ['on', 'follow', 'nofollow', 'off'],
  xino: ['on', 'off', 'auto'],
};
const FSYNC_VALUES = ['auto', 'strict', 'volatile', '0', '1'];
const IGNORED_KEYS = new Set(['context', 'fscontext', 'defcontext', 'rootcontext',
  'max_idle_threads', 'timeout', 'noxattrs', 'xattr_permissions', 'x-systemd.requires',
  'x-systemd.automount', 'comment', 'source', 'subtype', 'max_read', 'blksize',
  // FUSE's own mount data, which mount(8) passes back on a remount
  'user_id', 'group_id', 'rootmode', 'fd']);

/**
 * Parses -o option strings; a later option overrides an earlier one (ro,...,rw is read-write), as
 * mount(8) merges them. With `remount` in them the layers may be left out: only flags change.
 */
export function parseMountOptions(optionStrings: string[]): MountParams {
  const p: MountParams = {
    lowerdirs: [], datadirs: [], upperdir: null, workdir: null, readOnly: false, userxattr: false, ociWhiteouts: true, volatile: false, nfsExport: false, index: false, uuid: 'auto', redirectDir: false, metacopy: false, verity: 'off',
    nodev: false, nosuid: false, noexec: false, atime: 'relatime', nodiratime: false, fsname: null, remount: false, ignored: [],
    ids: { uids: [], gids: [], squashRoot: false, squashUid: null, squashGid: null }, newDirsOpaque: false, noFollowRedirects: false,
  };
  /** The last value of each of index, metacopy, redirect_dir and xino. */
  const features = new Map<string, string>();
  let lowerdirGiven = false;
  const items = optionStrings.flatMap(splitOptions);
  const apply = (item: string): void => {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? '' : item.slice(eq + 1);
    switch (key) {
      case 'lowerdir': {
        if (value === '') throw new UsageError('lowerdir= needs at least one directory');
        [p.lowerdirs, p.datadirs] = splitLowerdir(value);
        lowerdirGiven = true;
        break;
      }
      case 'lowerdir+':
        // (as the kernel: "lowerdir+ and datadir+ cannot follow lowerdir")
        if (lowerdirGiven) throw new UsageError('lowerdir+= and datadir+= cannot follow lowerdir=');
        if (p.datadirs.length > 0) throw new UsageError('lowerdir+= after datadir+=: a normal lower layer cannot be below a data-only one');
        p.lowerdirs.push(splitEscaped(value, ',').join(','));
        break;
      case 'datadir+':
        if (lowerdirGiven) throw new UsageError('lowerdir+= and datadir+= cannot follow lowerdir=');
        if (value === '') throw new UsageError('datadir+= needs a directory');
        if (p.lowerdirs.length === 0) throw new UsageError('datadir+= before any lower layer: data-only layers go below the lower ones');
        p.datadirs.push(splitEscaped(value, ',').join(','));
        break;
      case 'upperdir':
        p.upperdir = splitEscaped(value, ',').join(',');
        break;
      case 'workdir':
        p.workdir = splitEscaped(value, ',').join(',');
        break;
      case 'ro':
      case 'rw':
        p.readOnly = key === 'ro';
        break;
      case 'remount':
        p.remount = true;
        break;
      case 'fsname':
        if (value === '') throw new UsageError('fsname= needs a name');
        p.fsname = splitEscaped(value, ',').join(',');
        break;
      case 'userxattr':
        p.userxattr = true;
        break;
      case 'volatile':
        p.volatile = true;
        break;
      case 'oci_whiteouts':
        if (value !== 'on' && value !== 'off') throw new UsageError(`oci_whiteouts takes on or off, not "${value}"`);
        p.ociWhiteouts = value === 'on';
        break;
      case 'nfs_export':
        if (value !== 'on' && value !== 'off') throw new UsageError(`nfs_export takes on or off, not "${value}"`);
        p.nfsExport = value === 'on';
        break;
      case 'fsync':
        // the kernel's auto, strict and volatile (volatile as the option of that name), and
        // fuse-overlayfs's 0 (no fsync, as volatile) and 1
        if (!FSYNC_VALUES.includes(value)) throw new UsageError(`bad value for 'fsync': "${value}" (${FSYNC_VALUES.join(', ')})`);
        if (value === '0' || value === 'volatile') p.volatile = true;
        break;
      case 'nodev':
      case 'nosuid':
      case 'noexec':
        p[key] = true;
        break;
      case 'dev':
      case 'suid':
      case 'exec':
        p[`no${key}`] = false;
        break;
      case 'noatime':
      case 'relatime':
      case 'strictatime':
        p.atime = key;
        break;
      case 'atime':
        // mount(8)'s "atime" clears noatime; the kernel's default, relatime, stays
        if (p.atime === 'noatime') p.atime = 'relatime';
        break;
      case 'nodiratime':
      case 'diratime':
        p.nodiratime = key === 'nodiratime';
        break;
      case 'uidmapping':
      case 'gidmapping':
        // (repeated, the ranges add up: some callers pass one triple an option)
        if (key === 'uidmapping') p.ids.uids.push(...parseRanges(key, value));
        else p.ids.gids.push(...parseRanges(key, value));
        break;
      case 'squash_to_uid':
        p.ids.squashUid = parseId(key, value);
        break;
      case 'squash_to_gid':
        p.ids.squashGid = parseId(key, value);
        break;
      case 'squash_to_root':
        // (squash_to_uid= and squash_to_gid= take precedence, whatever their order)
        p.ids.squashRoot = true;
        break;
      case 'uuid':
        if (value !== 'auto' && value !== 'on' && value !== 'null' && value !== 'off') throw new UsageError(`bad value for 'uuid': "${value}" (auto, on, null or off)`);
        p.uuid = value;
        break;
      case 'verity':
        if (value !== 'off' && value !== 'on' && value !== 'require') throw new UsageError(`bad value for 'verity': "${value}" (off, on or require)`);
        p.verity = value;
        break;
      case 'index':
      case 'metacopy':
      case 'redirect_dir':
      case 'xino':
        if (!FEATURE_VALUES[key]!.includes(value)) throw new UsageError(`bad value for '${key}': "${value}" (${FEATURE_VALUES[key]!.join(', ')})`);
        features.set(key, value);
        if (key !== 'redirect_dir' && key !== 'metacopy') p.ignored.push(item);
        break;
      default:
        if (GENERIC_FLAGS.has(key) || IGNORED_KEYS.has(key) || key.startsWith('x-')) p.ignored.push(item);
        else throw new UsageError(`unknown mount option "${item}"`);
    }
  };
  // A remount changes the mount's flags only. The kernel's overlay ignores every other option given to a
  // remount, malformed or not (ovl_parse_param, for mount(2)'s remount): so does strata.
  if (items.includes('remount')) {
    for (const item of items) {
      try {
        apply(item);
      } catch (e) {
        if (!(e instanceof UsageError)) throw e;
        p.ignored.push(item);
      }
    }
    return p;
  }
  for (const item of items) apply(item);
  // (the kernel's ovl_allow_offline_changes: redirect_dir=follow or nofollow and xino=auto still allow them)
  p.newDirsOpaque = [...features.values()].includes('on');
  // (userxattr implies nofollow, as the kernel's ovl_fs_params_verify: a redirect then fails its lookup)
  p.noFollowRedirects = features.get('redirect_dir') === 'nofollow' || p.userxattr;
  p.redirectDir = features.get('redirect_dir') === 'on';
  p.index = features.get('index') === 'on' || p.nfsExport; // (nfs_export=on turns index on, as the kernel's)
  // (as the kernel's ovl_fs_params_verify: unprivileged overlays neither write nor follow redirects)
  if (p.userxattr && features.has('redirect_dir') && features.get('redirect_dir') !== 'nofollow') {
    throw new UsageError(`conflicting options: userxattr,redirect_dir=${features.get('redirect_dir')}`);
  }
  // (and metacopy=on needs redirect_dir=on, which it turns on unless redirect_dir= says otherwise)
  p.metacopy = features.get('metacopy') === 'on';
  if (p.metacopy && p.userxattr) throw new UsageError('conflicting options: userxattr,metacopy=on');
  if (p.metacopy && features.has('redirect_dir') && !p.redirectDir) {
    throw new UsageError(`conflicting options: metacopy=on,redirect_dir=${features.get('redirect_dir')}`);
  }
  if (p.metacopy && p.nfsExport) throw new UsageError('conflicting options: nfs_export=on,metacopy=on');
  // (the kernel's nfs_export needs its inode index; strata's needs none, but refuses what the kernel refuses)
  if (p.nfsExport && features.get('index') === 'off') throw new UsageError('conflicting options: nfs_export=on,index=off');
  if (p.metacopy) p.redirectDir = true;
  if (p.lowerdirs.length === 0) throw new UsageError('missing lowerdir= (at least one lower directory is needed)');
  if ((p.upperdir === null) !== (p.workdir === null)) {
    throw new UsageError('upperdir= and workdir= go together: give both or neither');
  }
  return p;
}
