// The overlay's own xattr names through the mount (Linux 6.7+ xattrs.c), against the kernel: a
// trusted.overlay.X set, read, listed or removed through the mount is trusted.overlay.overlay.X on the
// layer object (how an overlay nested in a container keeps its markers), lower objects' escaped names
// are shown unescaped and copied up, an escaped name longer than an xattr name may be is EOPNOTSUPP,
// and the overlay's real markers stay hidden. Also: trusted.* is listed only to callers with
// CAP_SYS_ADMIN (a user, and root without it), and mknod of a whiteout's shape (char 0/0) is EPERM.
import test from 'ava';
import type { LayerSpec } from './helpers/ops-layers.js';
import { Checks } from './helpers/ops-checks.js';
import { finishPair, setupPair } from './helpers/ops-pair.js';
import { shellBoth, type ShellStep, type User } from './helpers/shell-pair.js';

const USER: User = { uid: 3000, gid: 3000, groups: [3000] };

/** The layers (top first) for an own namespace `ns` ("trusted" or "user"). */
function layers(ns: string): LayerSpec[] {
  // With userxattr, trusted.overlay.* is a plain attribute, as on the kernel (no marker is read there).
  // (Without it, strata reads markers in user.overlay.* too and keeps that namespace private: README.)
  const other: LayerSpec = ns !== 'user' ? [] : [
    { t: 'file', p: 'other', data: 'o\n', mode: 0o644, xattrs: { 'trusted.overlay.low': 'O', 'trusted.overlay.opaque': 'y' } },
    { t: 'file', p: 'plain2', data: 'p\n', mode: 0o644 },
    { t: 'file', p: 'odir/below', data: 'b\n', mode: 0o644 },
  ];
  const lower: LayerSpec = [
    ...other,
    { t: 'file', p: 'up', data: 'u\n', mode: 0o644 },
    { t: 'file', p: 'esc', data: 'e\n', mode: 0o644, xattrs: { [`${ns}.overlay.overlay.low`]: 'L', 'user.plain': 'P' } },
    { t: 'file', p: 'esc2', data: 'e\n', mode: 0o644, xattrs: { [`${ns}.overlay.overlay.low`]: 'L2' } },
    { t: 'file', p: 'plain', data: 'p\n', mode: 0o644 },
    { t: 'file', p: 'trusted', data: 't\n', mode: 0o644, xattrs: { 'trusted.t1': 'T', 'user.u1': 'U' } },
    { t: 'dir', p: 'dir', mode: 0o755 },
    { t: 'file', p: 'dir/below', data: 'b\n', mode: 0o644 },
    { t: 'dir', p: 'marked', mode: 0o755, xattrs: { [`${ns}.overlay.overlay.opaque`]: 'y' } },
    { t: 'file', p: 'marked/in', data: 'i\n', mode: 0o644 },
  ];
  const otherTop: LayerSpec = ns !== 'user' ? [] : [
    { t: 'dir', p: 'odir', mode: 0o755, xattrs: { 'trusted.overlay.opaque': 'y' } }, { t: 'file', p: 'odir/top', data: 't\n', mode: 0o644 }];
  return [[{ t: 'dir', p: 'marked', mode: 0o755 }, { t: 'file', p: 'marked/top', data: 't\n', mode: 0o644 }, ...otherTop], lower];
}

/** Every xattr the mount lists, with values, sorted (the order of listxattr is the filesystem's). */
const DUMP = 'd() { getfattr -d -m - --absolute-names "$@" | sort; }; d';
const LONG = 'a'.repeat(231);
/** llistxattr(2) of each argument: a size probe, then buffers of 1 byte, the probed size less one, and the probed size. */
const PROBE_LIST = [
  'import ctypes, os, sys',
  'c = ctypes.CDLL(None, use_errno=True)',
  'def l(p, n):',
  '  b = ctypes.create_string_buffer(max(n, 1)); r = c.llistxattr(p.encode(), b if n else None, n)',
  '  return os.strerror(ctypes.get_errno()) if r < 0 else sorted(b.raw[:r].split(bytes(1))) if n else r',
  'for p in sys.argv[1:]:',
  '  n = l(p, 0); print(p, n, *[l(p, k) for k in sorted({1, max(n - 1, 1), max(n, 1)})] if isinstance(n, int) else [])',
].join('\n');
/** root without CAP_SYS_ADMIN (as in a container). */
const NO_SYS_ADMIN = 'setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin';

function steps(ns: string): ShellStep[] {
  const own = `${ns}.overlay`;
  // (the escaped name must fit in 255 bytes: "<ns>.overlay.overlay." + the rest)
  const long = LONG.slice(0, 255 - `${own}.overlay.`.length);
  const tooLong = `${long}a`;
  return [
    // set, read, list, set a name that is itself escaped, remove: on a lower file (the first change copies it up)
    { sh: `setfattr -n ${own}.foo -v v1 up; getfattr -n ${own}.foo --absolute-names up; ${DUMP} up` },
    { sh: `setfattr -n ${own}.overlay.bar -v v2 up; ${DUMP} up; getfattr -n ${own}.overlay.overlay.bar up 2>&1; true` },
    { sh: `setfattr -x ${own}.foo up; ${DUMP} up; getfattr -n ${own}.foo up 2>&1; true` },
    // removing a name the lower object does not have: ENODATA, and no copy-up
    { sh: `setfattr -x ${own}.nope plain 2>&1; true` },
    // a lower object's escaped names, before and after its copy-up
    { sh: `${DUMP} esc; getfattr -n ${own}.low --absolute-names esc` },
    { sh: `chmod 600 esc; ${DUMP} esc; printf x >> esc2; ${DUMP} esc2` },
    // the real markers are never shown nor settable: an opaque name set through the mount is escaped,
    // so the directory stays merged (and one escaped in a layer does not make it opaque either)
    { sh: `setfattr -n ${own}.opaque -v y dir; ls dir; getfattr -n ${own}.opaque --absolute-names dir; ls marked` },
    { sh: `mkdir fresh; ${DUMP} fresh; ls -a fresh` },
    // the escaped name at and beyond the xattr name limit
    { sh: `setfattr -n ${own}.${long} -v x plain && echo set; getfattr -n ${own}.${long} --only-values plain; echo` },
    { sh: `setfattr -n ${own}.${tooLong} -v x plain 2>&1; getfattr -n ${own}.${tooLong} plain 2>&1; true` },
    // trusted.* names: listed to root with CAP_SYS_ADMIN only
    { sh: `${DUMP} trusted` },
    { as: USER, sh: `${DUMP} trusted; getfattr -n trusted.t1 trusted 2>&1; true` },
    { sh: `${NO_SYS_ADMIN} getfattr -d -m - --absolute-names trusted | sort; ${NO_SYS_ADMIN} getfattr -n trusted.t1 trusted 2>&1; true` },
    { as: USER, sh: `${DUMP} esc up; true` },
    // with userxattr, trusted.overlay.*: shown, set, removed and copied up as plain attributes; its
    // opaque marker does not hide the layers below
    ...(ns !== 'user' ? [] : [
      { sh: `${DUMP} other; getfattr -n trusted.overlay.low --only-values other; echo; chmod 600 other; ${DUMP} other` },
      { sh: `setfattr -n trusted.overlay.set -v s plain2; ${DUMP} plain2; setfattr -x trusted.overlay.set plain2; ${DUMP} plain2` },
      { sh: `setfattr -n trusted.overlay.opaque -v y dir; ls dir; ls odir; ${DUMP} odir` },
    ]),
    // listxattr's size probe (size 0) is answered with the size of the layer object's own list, markers
    // and escapes included; a buffer smaller than that gets ERANGE (ovl_listxattr)
    { sh: `python3 -c '${PROBE_LIST}' up esc esc2 trusted plain dir marked fresh` },
    { as: USER, sh: `python3 -c '${PROBE_LIST}' up esc trusted plain` },
    // a whiteout's shape is not made through the mount; other devices are
    { sh: 'mknod wh c 0 0 2>&1; ls -a | grep -c "^wh$"; mknod null c 1 3 && stat -c "%F %t:%T" null' },
  ];
}

for (const ns of ['trusted', 'user']) {
  const options = ns === 'user' ? ['userxattr'] : [];
  test.serial(`${ns}.overlay.* names escaped as the kernel does${ns === 'user' ? ' (userxattr)' : ''}; trusted.* listed to CAP_SYS_ADMIN only; no char 0/0 through the mount`, (t) => {
    const c = new Checks(t);
    const pair = setupPair(t, layers(ns), { options });
    shellBoth(c, pair, steps(ns));
    finishPair(c, pair);
    c.done();
  });
}
