// File names that are not UTF-8 (latin1 bytes, 0xff) through the whole image path, byte for byte:
// layer tars written by Python's tarfile (raw bytes in GNU headers and GNU long names; PAX path and
// linkpath records with hdrcharset=BINARY), loaded; the store's layers, a strata mount and the
// kernel's overlay of the store show the same bytes; a container makes such names, and `strata
// commit`, `strata image save` and `strata export` write them back unchanged (read with Python's
// tarfile as bytes); the saved image loads into an empty store with the same names.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { dockerArchive, fileSha256 } from './helpers/image-store.js';
import { rootfsTar, testStore } from './helpers/images.js';
import { kernelOverlay, mountsUnder, strataUnmount } from './helpers/mounts.js';
import { python } from './helpers/python.js';
import { tempDir } from './helpers/tmp.js';

const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');
/** Names as latin1 strings (one char per byte) in the tests, hex on the way to and from Python. */
const lat = (h: string): string => Buffer.from(h, 'hex').toString('latin1');

interface Entry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'link';
  data?: string;
  link?: string;
}

/** Writes a tar with Python's tarfile: names are raw bytes (surrogateescape), GNU or PAX format. */
const MAKE_TAR = String.raw`
import io, json, sys, tarfile
spec = json.load(sys.stdin)
fmt = tarfile.GNU_FORMAT if spec['format'] == 'gnu' else tarfile.PAX_FORMAT
def s(h): return bytes.fromhex(h).decode('utf-8', 'surrogateescape')
types = {'file': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE, 'symlink': tarfile.SYMTYPE, 'link': tarfile.LNKTYPE}
with tarfile.open(spec['out'], 'w', format=fmt, encoding='utf-8', errors='surrogateescape') as t:
    for e in spec['entries']:
        ti = tarfile.TarInfo(s(e['name']))
        ti.type = types[e['type']]
        ti.mode = 0o755 if e['type'] == 'dir' else 0o644
        ti.mtime = 1600000000
        if 'link' in e: ti.linkname = s(e['link'])
        data = e.get('data', '').encode()
        if e['type'] == 'file': ti.size = len(data)
        t.addfile(ti, io.BytesIO(data) if e['type'] == 'file' else None)
print('null')
`;

/** The entries of a tar (or of a member of a tar): [name, type, link target], names as bytes in hex. */
const TAR_NAMES = String.raw`
import io, json, sys, tarfile
spec = json.load(sys.stdin)
def b(s): return s.encode('utf-8', 'surrogateescape')
f = open(spec['file'], 'rb')
if spec.get('member'):
    outer = tarfile.open(fileobj=f)
    f = io.BytesIO(outer.extractfile(spec['member']).read())
out = []
with tarfile.open(fileobj=f, encoding='utf-8', errors='surrogateescape') as t:
    for m in t:
        n = b(m.name)
        while n.startswith(b'./'): n = n[2:]
        n = n.rstrip(b'/')
        if n in (b'', b'.'): continue
        kind = 'dir' if m.isdir() else 'symlink' if m.issym() else 'link' if m.islnk() else 'file' if m.isreg() else 'other'
        out.append([n.hex(), kind, b(m.linkname).hex() if (m.issym() or m.islnk()) else ''])
print(json.dumps(sorted(out)))
`;

/** A tree's names as bytes (hex), with each one's kind and symlink target. */
const TREE = String.raw`
import json, os, stat, sys
root = json.load(sys.stdin)['root'].encode()
out = []
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(d, n)
        st = os.lstat(p)
        kind = 'dir' if stat.S_ISDIR(st.st_mode) else 'symlink' if stat.S_ISLNK(st.st_mode) else 'file' if stat.S_ISREG(st.st_mode) else 'other'
        out.append([os.path.relpath(p, root).hex(), kind, os.readlink(p).hex() if kind == 'symlink' else ''])
print(json.dumps(sorted(out)))
`;

type Row = [string, string, string];

function makeTar(out: string, format: 'gnu' | 'pax', entries: Entry[]): string {
  python(MAKE_TAR, { out, format, entries: entries.map((e) => ({ ...e, name: hex(e.name), ...(e.link !== undefined ? { link: hex(e.link) } : {}) })) });
  return out;
}

/** Rows sorted by name (byte order: latin1 strings compare as their bytes). */
function sorted(rows: Row[]): Row[] {
  return [...rows].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Rows as readable [name, kind, link] with latin1 names, sorted. */
function decoded(rows: Row[]): Row[] {
  return sorted(rows.map(([n, k, l]): Row => [lat(n), k, lat(l)]));
}

function tree(root: string): Row[] {
  return decoded(python<Row[]>(TREE, { root }));
}

function tarNames(file: string, member?: string): Row[] {
  return decoded(python<Row[]>(TAR_NAMES, { file, member }));
}

const D = 'odd-\xe9';
const LONG = `long-${'\xe9'.repeat(150)}`;
const DEEP = `${'d\xff'.repeat(60)}-x`;
const LONG_TARGET = '\xfe'.repeat(120);

test('names that are not UTF-8: load, store, mount, kernel, run + commit, save, export, all byte for byte', (t) => {
  const base = tempDir(t, 'nu');
  // Layer 1: raw bytes in GNU headers, a GNU long name, a hard link and a symlink to such names.
  const l1 = makeTar(path.join(base, 'l1.tar'), 'gnu', [
    { name: D, type: 'dir' },
    { name: `${D}/caf\xe9`, type: 'file', data: 'latin1\n' },
    { name: `${D}/\xff\xfe`, type: 'file', data: 'ff fe\n' },
    { name: `${D}/hard-\xe9`, type: 'link', link: `${D}/caf\xe9` },
    { name: `${D}/link-\xe9`, type: 'symlink', link: 'caf\xe9' },
    { name: `${D}/${LONG}`, type: 'file', data: 'long\n' },
    { name: `${D}/gone-\xff`, type: 'file', data: 'gone\n' },
    { name: `${D}/opq-\xfe`, type: 'dir' },
    { name: `${D}/opq-\xfe/old-\xe9`, type: 'file', data: 'old\n' },
  ]);
  // Layer 2: PAX path and linkpath records (hdrcharset=BINARY); a whiteout and an opaque directory.
  const l2 = makeTar(path.join(base, 'l2.tar'), 'pax', [
    { name: `${D}/.wh.gone-\xff`, type: 'file' },
    { name: `${D}/opq-\xfe`, type: 'dir' },
    { name: `${D}/opq-\xfe/.wh..wh..opq`, type: 'file' },
    { name: `${D}/opq-\xfe/new-\xff`, type: 'file', data: 'new\n' },
    { name: `${D}/${DEEP}`, type: 'file', data: 'deep\n' },
    { name: 'pax-\x80\x81', type: 'symlink', link: LONG_TARGET },
  ]);
  t.true(fs.readFileSync(l2).includes('hdrcharset=BINARY'), 'Python wrote PAX records with raw bytes');
  const archive = path.join(base, 'odd.tar');
  dockerArchive(base, [{ tags: ['odd:1'], layers: [rootfsTar(t, base), l1, l2] }], archive);
  const s = testStore(t, base);
  s.ok(['image', 'load', '-i', archive]);

  const expectedOdd: Row[] = sorted([
    [D, 'dir', ''],
    [`${D}/${DEEP}`, 'file', ''],
    [`${D}/${LONG}`, 'file', ''],
    [`${D}/caf\xe9`, 'file', ''],
    [`${D}/hard-\xe9`, 'file', ''],
    [`${D}/link-\xe9`, 'symlink', 'caf\xe9'],
    [`${D}/opq-\xfe`, 'dir', ''],
    [`${D}/opq-\xfe/new-\xff`, 'file', ''],
    [`${D}/\xff\xfe`, 'file', ''],
    ['pax-\x80\x81', 'symlink', LONG_TARGET],
  ]);
  const odd = (rows: Row[]): Row[] => rows.filter(([n]) => n.startsWith(D) || n.startsWith('pax-'));
  const lowers = s.ok(['image', 'lowerdir', 'odd:1']).trim().split(':');
  // The store's top layers: the names as the tars gave them, whiteouts as the kernel's.
  t.deepEqual(tree(lowers[1]!).map((r) => r[0]), [D, `${D}/${LONG}`, `${D}/caf\xe9`, `${D}/gone-\xff`, `${D}/hard-\xe9`, `${D}/link-\xe9`,
    `${D}/opq-\xfe`, `${D}/opq-\xfe/old-\xe9`, `${D}/\xff\xfe`].sort());
  const ino = (p: string): number => fs.lstatSync(Buffer.from(path.join(lowers[1]!, p), 'latin1')).ino;
  t.is(ino(`${D}/hard-\xe9`), ino(`${D}/caf\xe9`), 'the hard link is one inode');
  t.deepEqual(tree(lowers[0]!), sorted([[D, 'dir', ''], [`${D}/${DEEP}`, 'file', ''], [`${D}/gone-\xff`, 'other', ''],
    [`${D}/opq-\xfe`, 'dir', ''], [`${D}/opq-\xfe/new-\xff`, 'file', ''], ['pax-\x80\x81', 'symlink', LONG_TARGET]]));
  // A strata mount of the image and the kernel's overlay of the same layers.
  const m = fs.mkdtempSync(path.join(base, 'm'));
  s.ok(['mount', '--image', 'odd:1', m]);
  try {
    t.deepEqual(odd(tree(m)), expectedOdd);
    t.is(fs.readFileSync(Buffer.from(`${m}/${D}/link-\xe9`, 'latin1'), 'utf8'), 'latin1\n');
  } finally {
    strataUnmount(m);
  }
  const kernel = kernelOverlay(t, { lowers, mountpoint: fs.mkdtempSync(path.join(base, 'k')) });
  t.deepEqual(odd(tree(kernel)), expectedOdd);

  // A container makes, links and deletes such names; commit writes exactly these entries.
  s.ok(['run', '--name', 'c', 'odd:1', 'sh', '-c',
    'echo made > "$(printf "made-\\377\\200")"; mkdir "$(printf "d-\\351")"; ln -s "$(printf "t-\\376")" "$(printf "d-\\351/s-\\376")"; '
    + 'rm "$(printf "odd-\\351/caf\\351")"; echo x > "$(printf "odd-\\351/\\377\\376")"']);
  s.ok(['commit', 'c', 'odd:2']);
  const saved = path.join(base, 'saved.tar');
  s.ok(['image', 'save', 'odd:2', '-o', saved]);
  const manifest = JSON.parse(python<string>(String.raw`
import json, sys, tarfile
print(json.dumps(tarfile.open(json.load(sys.stdin)['f']).extractfile('manifest.json').read().decode()))`, { f: saved })) as { Layers: string[] }[];
  const layers = manifest[0]!.Layers;
  t.is(layers.length, 4);
  t.deepEqual(tarNames(saved, layers[3]), sorted([
    ['d-\xe9', 'dir', ''],
    ['d-\xe9/s-\xfe', 'symlink', 't-\xfe'],
    ['made-\xff\x80', 'file', ''],
    [D, 'dir', ''],
    [`${D}/.wh.caf\xe9`, 'file', ''],
    [`${D}/\xff\xfe`, 'file', ''],
  ]));
  // The loaded layers come back as they were loaded: the same bytes.
  for (const [i, l] of [l1, l2].entries()) {
    const inSaved = python<string>(String.raw`
import hashlib, json, sys, tarfile
a = json.load(sys.stdin)
print(json.dumps(hashlib.sha256(tarfile.open(a['f']).extractfile(a['m']).read()).hexdigest()))`, { f: saved, m: layers[i + 1] });
    t.is(inSaved, fileSha256(l), `layer ${i + 1} saved byte for byte`);
  }

  // export: the flattened view, against the kernel's overlay of the container's layers.
  const exported = path.join(base, 'export.tar');
  s.ok(['export', 'c', '-o', exported]);
  const upper = (JSON.parse(s.ok(['container', 'ls', '--json'])) as { upper: string }[])[0]!.upper;
  const k2 = kernelOverlay(t, { lowers: [upper, ...lowers], mountpoint: fs.mkdtempSync(path.join(base, 'k')) });
  // A hard link whose first name is gone is a plain file in both; otherwise tar writes a link.
  const flat = tarNames(exported).map(([n, k, l]): Row => (k === 'link' ? [n, 'file', ''] : [n, k, l]));
  t.deepEqual(flat, tree(k2));
  t.true(flat.some(([n]) => n === 'made-\xff\x80'));
  t.true(flat.some(([n]) => n === `${D}/${LONG}`));

  // The saved image in an empty store: the same names in the merged view.
  const other = testStore(t, fs.mkdtempSync(path.join(base, 'o')));
  other.ok(['image', 'load', '-i', saved]);
  const m2 = fs.mkdtempSync(path.join(base, 'm'));
  other.ok(['mount', '--image', 'odd:2', m2]);
  try {
    t.deepEqual(tree(m2), tree(k2));
  } finally {
    strataUnmount(m2);
  }
  t.deepEqual(mountsUnder(s.dir), []);
});
