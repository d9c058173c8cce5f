// An overlay upper directory as an OCI layer tar (src/image/changes.ts), read back by GNU tar and by
// the store: whiteouts and opaque directories in OCI form, PAX for nanosecond mtimes, long names and
// xattrs (security.capability kept, overlay's private xattrs left out), hard links, devices, FIFOs;
// the digests are those of the bytes written; the store unpacks the tar into the same tree.
import test from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { packTree } from '../src/image/changes.js';
import { compareTrees } from './helpers/compare.js';
import { runOk } from './helpers/exec.js';
import { testStore } from './helpers/images.js';
import { snapshot } from './helpers/snapshot.js';
import { tempDir } from './helpers/tmp.js';

const LONG = 'n'.repeat(120);

/** An upper directory as the kernel (or strata) writes one. */
function makeUpper(dir: string): void {
  fs.mkdirSync(path.join(dir, 'etc/opq/sub'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'etc/conf'), 'changed\n');
  runOk('mknod', ['-m', '000', path.join(dir, 'etc/gone'), 'c', '0', '0']); // mode 0, as the kernel makes them
  runOk('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(dir, 'etc/opq')]);
  fs.writeFileSync(path.join(dir, 'etc/opq/sub/new'), 'in an opaque dir\n');
  runOk('setfattr', ['-n', 'trusted.overlay.origin', '-v', '0x00', path.join(dir, 'etc/conf')]);
  runOk('setfattr', ['-n', 'user.kept', '-v', 'yes', path.join(dir, 'etc/conf')]);
  fs.writeFileSync(path.join(dir, 'ping'), 'binary');
  runOk('setfattr', ['-n', 'security.capability', '-v', '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=', path.join(dir, 'ping')]);
  fs.linkSync(path.join(dir, 'ping'), path.join(dir, 'etc/ping-link'));
  fs.symlinkSync('/etc/conf', path.join(dir, 'abs-link'));
  runOk('mkfifo', [path.join(dir, 'fifo')]);
  runOk('mknod', [path.join(dir, 'tty0'), 'c', '4', '0']);
  fs.mkdirSync(path.join(dir, LONG, LONG), { recursive: true });
  fs.writeFileSync(path.join(dir, LONG, LONG, 'deep'), 'long path\n');
  fs.writeFileSync(path.join(dir, 'suid'), '#!/bin/sh\n');
  fs.chownSync(path.join(dir, 'suid'), 1000, 3000000); // before the chmod: chown clears setuid
  fs.chmodSync(path.join(dir, 'suid'), 0o4750);
  runOk('touch', ['-h', '-d', '2022-03-04 05:06:07.987654321', path.join(dir, 'etc/conf'), path.join(dir, 'abs-link')]);
}

test('an upper as an OCI layer: GNU tar reads what the layer must hold', async (t) => {
  const base = tempDir(t, 'ch');
  const upper = path.join(base, 'upper');
  makeUpper(upper);
  const file = path.join(base, 'layer.tar');
  const stats = await packTree(upper, fs.createWriteStream(file), { layer: true, gzip: false });
  const bytes = fs.readFileSync(file);
  t.is(stats.diffId, `sha256:${createHash('sha256').update(bytes).digest('hex')}`);
  t.is(stats.diffSize, bytes.length);

  const listing = runOk('tar', ['-tf', file]).trim().split('\n').sort();
  t.true(listing.includes('etc/.wh.gone'), 'a kernel whiteout becomes .wh.gone');
  t.false(listing.includes('etc/gone'));
  t.true(listing.includes('etc/opq/.wh..wh..opq'), 'an opaque directory gets .wh..wh..opq');
  t.true(listing.includes(`${LONG}/${LONG}/deep`));

  const out = path.join(base, 'x');
  fs.mkdirSync(out);
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', file, '-C', out]);
  const st = fs.lstatSync(path.join(out, 'etc/conf'), { bigint: true });
  t.is(st.mtimeNs, fs.lstatSync(path.join(upper, 'etc/conf'), { bigint: true }).mtimeNs, 'mtime to the nanosecond');
  t.is(st.mtimeNs % 1_000_000_000n, 987_654_321n);
  t.is(fs.lstatSync(path.join(out, 'abs-link'), { bigint: true }).mtimeNs, fs.lstatSync(path.join(upper, 'abs-link'), { bigint: true }).mtimeNs);
  const xattrs = runOk('getfattr', ['-d', '-m', '-', '--absolute-names', path.join(out, 'etc/conf')]);
  t.regex(xattrs, /user\.kept="yes"/);
  t.notRegex(xattrs, /trusted\.overlay/);
  t.regex(runOk('getfattr', ['-n', 'security.capability', '-e', 'base64', '--absolute-names', path.join(out, 'ping')]), /0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=/);
  t.is(fs.statSync(path.join(out, 'ping')).ino, fs.statSync(path.join(out, 'etc/ping-link')).ino, 'hard link kept');
  t.is(fs.readlinkSync(path.join(out, 'abs-link')), '/etc/conf');
  t.true(fs.statSync(path.join(out, 'fifo')).isFIFO());
  const tty = fs.statSync(path.join(out, 'tty0'));
  t.true(tty.isCharacterDevice());
  t.is(tty.rdev, fs.statSync(path.join(upper, 'tty0')).rdev);
  const suid = fs.statSync(path.join(out, 'suid'));
  t.is(suid.mode & 0o7777, 0o4750);
  t.deepEqual([suid.uid, suid.gid], [1000, 3000000], 'a gid over ustar\'s 7 octal digits goes through PAX');
  t.is(fs.readFileSync(path.join(out, LONG, LONG, 'deep'), 'utf8'), 'long path\n');
});

test('the same upper gives the same tar (entries in name order); the store unpacks it into the same tree', async (t) => {
  const base = tempDir(t, 'ch');
  const upper = path.join(base, 'upper');
  makeUpper(upper);
  const [a, b] = [path.join(base, 'a.tar'), path.join(base, 'b.tar')];
  const sa = await packTree(upper, fs.createWriteStream(a), { layer: true, gzip: true });
  const sb = await packTree(upper, fs.createWriteStream(b), { layer: true, gzip: false });
  t.is(sa.diffId, sb.diffId, 'the diff ID does not depend on compression');
  t.not(sa.digest, sa.diffId);
  t.is(sa.digest, `sha256:${createHash('sha256').update(fs.readFileSync(a)).digest('hex')}`);
  const s = testStore(t, base);
  s.ok(['image', 'import', a, 'layer:1']);
  const [lower] = s.ok(['image', 'lowerdir', 'layer:1']).trim().split(':');
  // The store's layer is in the kernel's format again: char 0/0 whiteouts, the opaque xattr.
  compareTrees(t, snapshot(lower!), snapshot(upper), {
    label: 'unpacked layer vs the upper it came from',
    ignore: (p, f) => f === 'ctimeNs' || (p === '.' && f === 'mtimeNs') || (f === 'xattrs' && p === 'etc/conf'),
  });
  const conf = runOk('getfattr', ['-d', '-m', '-', '--absolute-names', path.join(lower!, 'etc/conf')]);
  t.regex(conf, /user\.kept="yes"/);
  t.notRegex(conf, /trusted\.overlay\.origin/);
});

test('a metadata-only copy (overlay metacopy) in an upper is refused with a one-line error, not stored as zeros', async (t) => {
  const dir = tempDir(t, 'mc');
  const upper = path.join(dir, 'upper');
  fs.mkdirSync(upper);
  fs.writeFileSync(path.join(upper, 'plain'), 'data\n');
  fs.writeFileSync(path.join(upper, 'meta'), '');
  fs.truncateSync(path.join(upper, 'meta'), 4096);
  runOk('setfattr', ['-n', 'trusted.overlay.metacopy', '-v', '""', path.join(upper, 'meta')]);
  const e = await t.throwsAsync(packTree(upper, fs.createWriteStream(path.join(dir, 'l.tar')), { layer: true, gzip: false }));
  t.regex(e!.message, /^meta: a metadata-only copy \(overlay metacopy\)/);
  t.false(e!.message.includes('\n'));
});
