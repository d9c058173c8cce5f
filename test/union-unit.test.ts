// The union core driven without a mount: UnionFs called as the FUSE session would call it, on
// temporary layers. Fast checks that operations on a node reach its object after its name changed
// (open, then unlink / rename over / re-create the name), as the kernel's overlay does.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { FATTR_FH, FATTR_MODE, FATTR_SIZE, FATTR_UID, FATTR_GID, FOPEN_KEEP_CACHE, FOPEN_PASSTHROUGH } from '../src/fuse/protocol.js';
import type { BackingRegistry, EntryReply, RequestContext, SetattrRequest } from '../src/fuse/types.js';
import * as N from '../src/native/index.js';
import { LayerStack } from '../src/union/layers.js';
import { LOWER_ATIME } from '../src/union/layer_mount.js';
import { FMODE_EXEC, SMALL_READ_ONLY } from '../src/union/file.js';
import { UnionFs } from '../src/union/super.js';
import { ROOT_NODEID } from '../src/union/node.js';
import { dropCachedPages } from './helpers/page-cache.js';
import { tempDir } from './helpers/tmp.js';

const { C } = N;
const ctx: RequestContext = { unique: 1, uid: 0, gid: 0, pid: process.pid };

interface Setup {
  fs: UnionFs;
  upper: string;
  lower: string;
}

function setup(t: ExecutionContext, lowerFiles: Record<string, string> = {}, backings?: BackingRegistry,
  storeData?: (nodeid: number, offset: number, data: Uint8Array) => boolean): Setup {
  const root = tempDir(t, 'uu');
  const lower = path.join(root, 'lower');
  const upper = path.join(root, 'upper');
  const work = path.join(root, 'work');
  for (const d of [lower, upper, path.join(work, 'work')]) fs.mkdirSync(d, { recursive: true });
  for (const [name, data] of Object.entries(lowerFiles)) {
    fs.mkdirSync(path.dirname(path.join(lower, name)), { recursive: true });
    fs.writeFileSync(path.join(lower, name), data);
  }
  // The upper and the work directory are reached through one private mount (see layer_mount.ts).
  const stack = LayerStack.open(upper, [lower], { atime: LOWER_ATIME, workdir: work, ociWhiteouts: true });
  const workFd = stack.openBesideUpper(path.join(work, 'work'));
  const union = new UnionFs(stack, {
    readOnly: false, cacheTimeout: 1, passthrough: backings !== undefined, logger: pino({ level: 'silent' }),
    backings: backings ?? { open: () => { throw new Error('no passthrough here'); }, close: () => {} },
    cache: null, lowerIndex: false, invalidateAttributes: () => {}, invalidateListing: () => {}, storeData,
    upper: { workFd, volatile: true, writeFormat: 'kernel', userxattr: false },
  });
  if (backings) union.init({ minor: 45, passthrough: true });
  t.teardown(() => {
    N.close(workFd);
    stack.close();
  });
  return { fs: union, upper, lower };
}

function setattr(valid: number, fields: Partial<SetattrRequest>): SetattrRequest {
  return { valid, fh: 0, size: 0, atimeSec: 0, atimeNsec: 0, mtimeSec: 0, mtimeNsec: 0, mode: 0, uid: 0, gid: 0, ...fields };
}

async function errno(f: () => unknown): Promise<string> {
  try {
    await f();
    return 'ok';
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
}

test('fchmod and ftruncate of an open, unlinked file reach it, not the name', async (t) => {
  const { fs: u, upper } = setup(t);
  const c = await u.create(ctx, ROOT_NODEID, 'f', 0o644, C.O_RDWR);
  const node = c.entry.nodeid;
  await u.unlink(ctx, ROOT_NODEID, 'f');
  const again = await u.create(ctx, ROOT_NODEID, 'f', 0o600, C.O_RDWR);
  t.not(again.entry.nodeid, node);
  const r = await u.setattr(ctx, node, setattr(FATTR_MODE, { mode: 0o1444 }));
  t.is(r.attr.mode & 0o7777, 0o1444);
  t.is(r.attr.nlink, 0);
  await u.setattr(ctx, node, setattr(FATTR_SIZE | FATTR_FH, { size: 12345, fh: c.open.fh }));
  t.is((await u.getattr(ctx, node, undefined)).attr.size, 12345);
  // The new file kept its own mode and size.
  const st = fs.statSync(path.join(upper, 'f'));
  t.is(st.mode & 0o7777, 0o600);
  t.is(st.size, 0);
  u.release(ctx, node, c.open.fh);
  u.release(ctx, again.entry.nodeid, again.open.fh);
});

test('xattrs of an open, unlinked file: ENODATA on replace, EEXIST on create, as the kernel', async (t) => {
  const { fs: u } = setup(t);
  const c = await u.create(ctx, ROOT_NODEID, 'x', 0o644, C.O_RDWR);
  const node = c.entry.nodeid;
  await u.setxattr(ctx, node, 'user.k0', Buffer.from('a'), 0);
  await u.unlink(ctx, ROOT_NODEID, 'x');
  t.is(await errno(() => u.setxattr(ctx, node, 'user.k1', Buffer.from('v'), 2 /* XATTR_REPLACE */)), 'ENODATA');
  t.is(await errno(() => u.setxattr(ctx, node, 'user.k0', Buffer.from('v'), 1 /* XATTR_CREATE */)), 'EEXIST');
  t.deepEqual(u.getxattr(ctx, node, 'user.k0'), Buffer.from('a'));
  // None: null (the session answers ENODATA).
  t.is(u.getxattr(ctx, node, 'user.k1'), null);
  t.deepEqual(u.listxattr(ctx, node).names, ['user.k0']);
  u.release(ctx, node, c.open.fh);
});

test('getxattr of an overlay-private name answers null (ENODATA) though the upper copy carries it', async (t) => {
  const { fs: u, upper } = setup(t, { f: 'lower' });
  const f = (await u.lookup(ctx, ROOT_NODEID, 'f')).nodeid;
  await u.setattr(ctx, f, setattr(FATTR_MODE, { mode: 0o600 })); // a copy-up, which records the origin
  t.truthy(N.lgetxattr(N.C.AT_FDCWD, path.join(upper, 'f'), 'trusted.overlay.origin')?.length, 'the copy has an origin');
  t.is(u.getxattr(ctx, f, 'trusted.overlay.origin'), null);
  t.is(u.getxattr(ctx, f, 'user.none'), null);
});

test('a rename over an open file leaves its changes on it; the new file at the name is untouched', async (t) => {
  const { fs: u, upper } = setup(t);
  const a = await u.create(ctx, ROOT_NODEID, 'a', 0o644, C.O_RDWR);
  u.write(ctx, a.entry.nodeid, a.open.fh, 0, Buffer.from('aaaa'));
  const b = await u.create(ctx, ROOT_NODEID, 'b', 0o644, C.O_RDWR);
  u.write(ctx, b.entry.nodeid, b.open.fh, 0, Buffer.from('bbbbbbbb'));
  await u.rename(ctx, ROOT_NODEID, 'b', ROOT_NODEID, 'a', 0);
  await u.setattr(ctx, a.entry.nodeid, setattr(FATTR_SIZE | FATTR_FH, { size: 0, fh: a.open.fh }));
  await u.setattr(ctx, a.entry.nodeid, setattr(FATTR_UID | FATTR_GID, { uid: 123, gid: 456 }));
  const st = fs.statSync(path.join(upper, 'a'));
  t.is(fs.readFileSync(path.join(upper, 'a'), 'utf8'), 'bbbbbbbb');
  t.is(st.uid, 0);
  const old = (await u.getattr(ctx, a.entry.nodeid, undefined)).attr;
  t.is(old.size, 0);
  t.is(old.uid, 123);
  u.release(ctx, a.entry.nodeid, a.open.fh);
  u.release(ctx, b.entry.nodeid, b.open.fh);
});

test('copy-up of an open, unlinked lower file answers EEXIST (the kernel copies up to the name) and resurrects nothing', async (t) => {
  const { fs: u, upper } = setup(t, { 'd/f': 'lower data' });
  const d = await u.lookup(ctx, ROOT_NODEID, 'd');
  const f = await u.lookup(ctx, d.nodeid, 'f');
  const o = await u.open(ctx, f.nodeid, C.O_RDONLY);
  await u.unlink(ctx, d.nodeid, 'f');
  t.is(await errno(() => u.setattr(ctx, f.nodeid, setattr(FATTR_MODE, { mode: 0o600 }))), 'EEXIST');
  // Still readable through the handle, and the name stays deleted (a whiteout in the upper).
  t.is(u.read(ctx, f.nodeid, o.fh, 0, 64).toString(), 'lower data');
  t.true(fs.lstatSync(path.join(upper, 'd', 'f')).isCharacterDevice());
  t.is((await u.lookup(ctx, d.nodeid, 'f')).nodeid, 0);
  u.release(ctx, f.nodeid, o.fh);
});

test('a copy-up keeps mode, setuid/setgid/sticky, owner, times and data, whatever the daemon\'s umask and ids', async (t) => {
  const cases: [string, number, number, number][] = [
    ['none', 0o000, 0, 0], ['root', 0o644, 0, 0], ['suid', 0o4755, 0, 0], ['sgid', 0o2750, 0, 1000],
    ['user', 0o640, 1000, 1000], ['all', 0o6777, 1000, 0], ['sticky', 0o1644, 0, 1000], ['group', 0o664, 0, 1000],
  ];
  const files: Record<string, string> = {};
  for (const [name] of cases) files[name] = `data of ${name}`;
  const { fs: u, lower, upper } = setup(t, files);
  for (const [name, mode, uid, gid] of cases) {
    fs.chownSync(path.join(lower, name), uid, gid);
    fs.chmodSync(path.join(lower, name), mode);
    fs.utimesSync(path.join(lower, name), new Date(1_500_000_000_123), new Date(1_400_000_000_456));
  }
  const old = process.umask(0o077); // a umask would narrow a mode given at creation
  try {
    for (const [name] of cases) {
      const before = fs.lstatSync(path.join(lower, name), { bigint: true });
      const node = (await u.lookup(ctx, ROOT_NODEID, name)).nodeid;
      const o = await u.open(ctx, node, C.O_WRONLY); // copied up with its data
      await u.release(ctx, node, o.fh);
      const after = fs.lstatSync(path.join(upper, name), { bigint: true });
      const got = [after.mode, after.uid, after.gid, after.mtimeNs, after.atimeNs, after.size];
      t.deepEqual(got, [before.mode, before.uid, before.gid, before.mtimeNs, before.atimeNs, before.size], name);
      t.is(fs.readFileSync(path.join(upper, name), 'latin1'), files[name], name);
    }
  } finally {
    process.umask(old);
  }
});

test('a listing gives a node the kernel holds by name only (nodeid 0); one it does not hold, or a new one, with its attributes', async (t) => {
  const { fs: u } = setup(t, { 'd/held': 'h', 'd/forgotten': 'f', 'd/fresh': 'n' });
  const d = (await u.lookup(ctx, ROOT_NODEID, 'd')).nodeid;
  const list = (): Map<string, EntryReply | null> => {
    const got = new Map<string, EntryReply | null>();
    u.readdir(ctx, d, 0, 0, {
      fits: () => true,
      add: () => true,
      addPlus: (name, entry) => {
        got.set(name, entry);
        return true;
      },
    }, true);
    return got;
  };
  const held = (await u.lookup(ctx, d, 'held')).nodeid;
  const forgotten = (await u.lookup(ctx, d, 'forgotten')).nodeid;
  u.forget(forgotten, 1);
  const before = list();
  t.is(before.get('held'), null, 'held: the kernel keeps its attributes');
  t.is(before.get('fresh')?.attr.size, 1, 'new to the daemon: with attributes');
  t.not(before.get('forgotten') ?? null, null, 'forgotten by the kernel: with attributes');
  // every name listed with attributes is now held by the kernel too: a second listing names them only
  t.deepEqual([...list().values()].slice(2), [null, null, null]);
  u.forget(held, 1);
});

test('link of an unlinked file is ENOENT', async (t) => {
  const { fs: u } = setup(t);
  const c = await u.create(ctx, ROOT_NODEID, 'l', 0o644, C.O_RDWR);
  await u.unlink(ctx, ROOT_NODEID, 'l');
  t.is(await errno(() => u.link(ctx, c.entry.nodeid, ROOT_NODEID, 'l2')), 'ENOENT');
  u.release(ctx, c.entry.nodeid, c.open.fh);
});

test.serial('a passthrough backing is registered with the first open\'s own descriptor and shared; the daemon holds no other', async (t) => {
  const registered: number[] = [];
  const closed: number[] = [];
  const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
  // (more than SMALL_READ_ONLY: a smaller lower file opened read-only is served by the daemon)
  const { fs: u } = setup(t, { f: 'x'.repeat(SMALL_READ_ONLY + 1) }, {
    open: (fd) => {
      registered.push(fd);
      return 7;
    },
    close: (id) => void closed.push(id),
  });
  const node = (await u.lookup(ctx, ROOT_NODEID, 'f')).nodeid;
  const before = openFds();
  const a = await u.open(ctx, node, C.O_RDONLY);
  const b = await u.open(ctx, node, C.O_RDONLY);
  t.is(a.backingId, 7);
  t.is(b.backingId, 7);
  t.deepEqual(registered, [u.handles.file(a.fh).fd]);
  // one descriptor per open, none for the backing (the kernel holds the file itself)
  t.is(openFds(), before + 2);
  await u.release(ctx, node, a.fh);
  t.deepEqual(closed, []);
  await u.release(ctx, node, b.fh);
  t.deepEqual(closed, [7]);
  t.is(openFds(), before);
});

test.serial('a small lower file opened read-only is served by the daemon with its page cache kept; an inode never mixes the two kinds of open', async (t) => {
  let next = 10;
  const live = new Set<number>();
  const { fs: u, upper } = setup(t, { small: 'small data', big: 'b'.repeat(SMALL_READ_ONLY + 1), edge: 'e'.repeat(SMALL_READ_ONLY) }, {
    open: () => {
      live.add(next);
      return next++;
    },
    close: (id) => void live.delete(id),
  });
  const look = async (name: string): Promise<number> => (await u.lookup(ctx, ROOT_NODEID, name)).nodeid;
  const passthrough = (o: { openFlags: number; backingId?: number }): boolean =>
    (o.openFlags & FOPEN_PASSTHROUGH) !== 0 && o.backingId !== undefined;
  const small = await look('small');
  const r1 = await u.open(ctx, small, C.O_RDONLY);
  t.false(passthrough(r1));
  t.truthy(r1.openFlags & FOPEN_KEEP_CACHE, 'a lower file never changes: its pages are kept');
  t.is(u.read(ctx, small, r1.fh, 0, 64).toString(), 'small data');
  // 64 KiB exactly is still small; one byte more is not.
  const edge = await u.open(ctx, await look('edge'), C.O_RDONLY);
  t.false(passthrough(edge));
  const big = await u.open(ctx, await look('big'), C.O_RDONLY);
  t.true(passthrough(big));
  // A write open while the daemon serves the inode: copied up, and served by the daemon too (a
  // passthrough open now would fail in the kernel with EIO); the read-only open reads the copy.
  const w = await u.open(ctx, small, C.O_WRONLY);
  t.false(passthrough(w));
  t.is(w.openFlags & FOPEN_KEEP_CACHE, 0, 'an upper file while passthrough is on: pages dropped at open');
  u.write(ctx, small, w.fh, 0, Buffer.from('SMALL'));
  t.is(u.read(ctx, small, r1.fh, 0, 64).toString(), 'SMALL data');
  t.true(fs.statSync(path.join(upper, 'small')).isFile());
  await u.release(ctx, small, r1.fh);
  await u.release(ctx, small, w.fh);
  // With no open left, the upper file is opened by passthrough again, read-only too.
  const r2 = await u.open(ctx, small, C.O_RDONLY);
  t.true(passthrough(r2));
  // ... and a read-only open of it meanwhile shares that backing.
  const r3 = await u.open(ctx, small, C.O_RDONLY);
  t.is(r3.backingId, r2.backingId);
  for (const [n, o] of [[small, r2], [small, r3]] as const) await u.release(ctx, n, o.fh);
  await u.release(ctx, await look('big'), big.fh);
  await u.release(ctx, await look('edge'), edge.fh);
  t.is(live.size, 0, 'every backing closed');
});

test.serial('the first open of a small lower file puts its data into the kernel\'s page cache, once, while no other open exists', async (t) => {
  const stored: Array<[number, number, string]> = [];
  let accept = true;
  const { fs: u } = setup(t, { small: 'small data', empty: '', edge: 'e'.repeat(SMALL_READ_ONLY), big: 'b'.repeat(SMALL_READ_ONLY + 1) },
    { open: () => 5, close: () => {} },
    (nodeid, offset, data) => {
      if (accept) stored.push([nodeid, offset, Buffer.from(data).toString('latin1')]);
      return accept;
    });
  const look = async (name: string): Promise<number> => (await u.lookup(ctx, ROOT_NODEID, name)).nodeid;
  const small = await look('small');
  // refused by the kernel (it no longer knows the inode): tried again at the next first open
  accept = false;
  const r0 = await u.open(ctx, small, C.O_RDONLY);
  accept = true;
  // an open while another one exists (a READ of that one may be waiting): never stored
  const r1 = await u.open(ctx, small, C.O_RDONLY);
  t.deepEqual(stored, []);
  await u.release(ctx, small, r0.fh);
  await u.release(ctx, small, r1.fh);
  const r2 = await u.open(ctx, small, C.O_RDONLY);
  t.deepEqual(stored, [[small, 0, 'small data']]);
  await u.release(ctx, small, r2.fh);
  // once stored, not again
  const r3 = await u.open(ctx, small, C.O_RDONLY);
  await u.release(ctx, small, r3.fh);
  t.is(stored.length, 1);
  // 64 KiB exactly is stored whole; an empty file, a bigger one (passthrough) and writes are not
  const edge = await look('edge');
  const e = await u.open(ctx, edge, C.O_RDONLY);
  t.is(stored.length, 2);
  t.deepEqual(stored[1], [edge, 0, 'e'.repeat(SMALL_READ_ONLY)]);
  for (const name of ['empty', 'big']) {
    const n = await look(name);
    await u.release(ctx, n, (await u.open(ctx, n, C.O_RDONLY)).fh);
  }
  const w = await u.open(ctx, edge, C.O_RDWR);
  for (const [n, o] of [[edge, e], [edge, w]] as const) await u.release(ctx, n, o.fh);
  t.is(stored.length, 2);
});

test.serial('a small lower file whose data is not in the page cache is read from the disk at the open and served by the daemon, as one that is (a passthrough open would keep the lower file after a copy-up)', async (t) => {
  const stored: number[] = [];
  const { fs: u, lower } = setup(t, { cold: 'cold data'.repeat(100) }, { open: () => 9, close: () => {} }, (nodeid) => {
    stored.push(nodeid);
    return true;
  });
  dropCachedPages(path.join(lower, 'cold'));
  const node = (await u.lookup(ctx, ROOT_NODEID, 'cold')).nodeid;
  const o1 = await u.open(ctx, node, C.O_RDONLY);
  t.is(o1.backingId, undefined, 'not cached: served by the daemon, its data read and stored');
  t.deepEqual(stored, [node]);
  await u.release(ctx, node, o1.fh);
  const o2 = await u.open(ctx, node, C.O_RDONLY);
  t.is(o2.backingId, undefined, 'stored before: served by the daemon');
  t.deepEqual(stored, [node], 'not stored again');
  await u.release(ctx, node, o2.fh);
});

test.serial('an open while the daemon serves a node is served by the daemon too, whatever the page cache holds (the kernel refuses mixing)', async (t) => {
  const { fs: u, lower } = setup(t, { f: 'data'.repeat(100) }, { open: () => 4, close: () => {} }, () => false);
  const node = (await u.lookup(ctx, ROOT_NODEID, 'f')).nodeid;
  const o1 = await u.open(ctx, node, C.O_RDONLY);
  t.is(o1.backingId, undefined, 'cached data: the daemon serves it (its store refused)');
  dropCachedPages(path.join(lower, 'f'));
  const o2 = await u.open(ctx, node, C.O_RDONLY);
  t.is(o2.backingId, undefined, 'not by passthrough beside a daemon-served open');
  await u.release(ctx, node, o1.fh);
  await u.release(ctx, node, o2.fh);
  const o3 = await u.open(ctx, node, C.O_RDONLY);
  t.is(o3.backingId, undefined, 'alone and not cached: the daemon too (its data read at the open)');
  await u.release(ctx, node, o3.fh);
  const x = await u.open(ctx, node, C.O_RDONLY | C.O_DIRECT);
  t.is(x.backingId, 4, 'O_DIRECT, alone: passthrough');
  await u.release(ctx, node, x.fh);
});

test.serial('a small lower program opened for exec is opened by passthrough: a copy-up then leaves the running program on the lower file', async (t) => {
  const { fs: u } = setup(t, { prog: '#!/bin/sh\necho lower\n' }, { open: () => 6, close: () => {} }, () => true);
  const node = (await u.lookup(ctx, ROOT_NODEID, 'prog')).nodeid;
  const x = await u.open(ctx, node, C.O_RDONLY | FMODE_EXEC);
  t.is(x.backingId, 6);
  // its copy-up gives the name a new node; the running program's open stays on the lower file
  t.is(await errno(() => u.open(ctx, node, C.O_WRONLY)), 'ESTALE');
  const copy = (await u.lookup(ctx, ROOT_NODEID, 'prog')).nodeid;
  t.not(copy, node);
  await u.release(ctx, node, x.fh);
});

test('readInto reads into the caller\'s buffer at its offset (the READ reply buffer); read still returns a buffer', async (t) => {
  const { fs: u } = setup(t, { f: '0123456789' });
  const node = (await u.lookup(ctx, ROOT_NODEID, 'f')).nodeid;
  const o = await u.open(ctx, node, C.O_RDONLY);
  const out = Buffer.alloc(64, 0xee);
  t.is(u.readInto(ctx, node, o.fh, 3, 20, out, 16), 7);
  t.is(out.toString('latin1', 16, 23), '3456789');
  t.is(out[15], 0xee);
  t.is(out[23], 0xee);
  t.is(u.read(ctx, node, o.fh, 8, 4).toString(), '89');
  await u.release(ctx, node, o.fh);
});

test('a nodeid the kernel forgot is given out again, and then names only the new object', async (t) => {
  const { fs: u } = setup(t, { a: 'aaa', b: 'bbbbbb', 'd/c': 'c' });
  const a = u.lookup(ctx, ROOT_NODEID, 'a') as Awaited<ReturnType<UnionFs['lookup']>>;
  const d = u.lookup(ctx, ROOT_NODEID, 'd') as Awaited<ReturnType<UnionFs['lookup']>>;
  t.not(a.nodeid, d.nodeid);
  // A second lookup of a known name keeps its nodeid: only a forget down to 0 frees it.
  t.is((u.lookup(ctx, ROOT_NODEID, 'a') as typeof a).nodeid, a.nodeid);
  u.forget(a.nodeid, 1);
  t.is(u.getattr(ctx, a.nodeid, undefined).attr.size, 3, 'still held: one lookup is left');
  u.forget(a.nodeid, 1);
  t.is(await errno(() => u.getattr(ctx, a.nodeid, undefined)), 'ESTALE');
  const b = u.lookup(ctx, ROOT_NODEID, 'b') as typeof a;
  t.is(b.nodeid, a.nodeid, 'the freed nodeid is reused');
  t.is(u.getattr(ctx, b.nodeid, undefined).attr.size, 6);
  // The name whose node was dropped gets a fresh node, not the one that now has its old nodeid.
  const a2 = u.lookup(ctx, ROOT_NODEID, 'a') as typeof a;
  t.not(a2.nodeid, b.nodeid);
  t.is(u.getattr(ctx, a2.nodeid, undefined).attr.size, 3);
  // A directory is dropped only once its children are: then its nodeid is free too.
  const c = u.lookup(ctx, d.nodeid, 'c') as typeof a;
  u.forget(d.nodeid, 1);
  t.is(u.getattr(ctx, d.nodeid, undefined).attr.mode & C.S_IFMT, C.S_IFDIR, 'a child keeps its directory');
  u.forget(c.nodeid, 1);
  t.is(await errno(() => u.getattr(ctx, d.nodeid, undefined)), 'ESTALE');
  const again = [u.lookup(ctx, ROOT_NODEID, 'd') as typeof a, u.lookup(ctx, ROOT_NODEID, 'b') as typeof a];
  t.true([c.nodeid, d.nodeid].includes(again[0].nodeid));
  t.is(again[1].nodeid, b.nodeid);
});
