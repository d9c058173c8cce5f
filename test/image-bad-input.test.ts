// Hostile and broken input to `strata image load` / `import`: each is refused with one line on
// stderr and a non-zero exit, the store looks exactly as before (files and image list), and
// nothing outside the store changed (a sentinel directory that the tricks aim at).

import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { runOk } from './helpers/exec.js';
import { dockerArchive, image, imageOk, makeTar, storeState, type TarEntry } from './helpers/image-store.js';
import { snapshot } from './helpers/snapshot.js';
import { compareTrees } from './helpers/compare.js';
import { tempDir } from './helpers/tmp.js';

interface Env {
  base: string;
  store: string;
  /** Where the tricks try to write; must stay as it is. */
  outside: string;
}

/** A store that already holds one image (so "as it was" is not just "empty"), and a sentinel dir. */
async function setup(t: ExecutionContext): Promise<Env> {
  const base = tempDir(t, 'bad');
  const store = path.join(base, 'store');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  const good = path.join(base, 'good.tar');
  fs.writeFileSync(good, await makeTar([{ name: 'etc/', type: 'directory' }, { name: 'etc/hostname', data: 'good\n' }]));
  imageOk(t, store, ['import', good, 'good:1']);
  return { base, store, outside };
}

/** Runs the command, expects a refusal whose message matches, and checks that nothing changed. */
function refused(t: ExecutionContext, env: Env, args: string[], message: RegExp): void {
  const before = storeState(env.store);
  const outsideBefore = snapshot(env.outside);
  const r = image(env.store, args);
  t.not(r.status, 0, `exit status of ${args.join(' ')}`);
  t.is(r.stderr.split('\n').filter(Boolean).length, 1, `one line: ${r.stderr}`);
  t.regex(r.stderr, /^strata: /);
  t.regex(r.stderr, message);
  t.is(r.stdout, '');
  t.is(storeState(env.store), before, 'the store is as it was');
  t.is(compareTrees(t, snapshot(env.outside), outsideBefore, { label: 'outside the store' }), 0);
}

async function layerFile(env: Env, name: string, entries: readonly TarEntry[]): Promise<string> {
  const p = path.join(env.base, name);
  fs.writeFileSync(p, await makeTar(entries));
  return p;
}

/** A layer tar imported, and the same layer inside a docker-archive loaded: both refused. */
async function refusedLayer(t: ExecutionContext, entries: readonly TarEntry[], message: RegExp): Promise<void> {
  const env = await setup(t);
  const layer = await layerFile(env, 'layer.tar', entries);
  refused(t, env, ['import', layer, 'evil:1'], message);
  const archive = path.join(env.base, 'evil-archive.tar');
  dockerArchive(env.base, [{ tags: ['evil:2'], layers: [layer] }], archive);
  refused(t, env, ['load', '-i', archive], message);
}

test('a ../ path is refused', async (t) => {
  const env0 = await setup(t);
  const rel = path.relative(path.join(env0.store, 'tmp', 'x', 'diff'), path.join(env0.outside, 'passwd'));
  await refusedLayer(t, [{ name: 'a/', type: 'directory' }, { name: `a/../../${rel}`, data: 'pwned\n' }], /leads outside the layer/);
  await refusedLayer(t, [{ name: '../escape', data: 'pwned\n' }], /leads outside the layer/);
});

test('an absolute path is refused', async (t) => {
  const env0 = await setup(t);
  await refusedLayer(t, [{ name: path.join(env0.outside, 'passwd'), data: 'pwned\n' }], /leads outside the layer/);
});

test('a symlink, then a write through it (a -> /etc-like dir, then a/passwd), is refused', async (t) => {
  const env0 = await setup(t);
  await refusedLayer(t, [{ name: 'a', type: 'symlink', linkname: env0.outside }, { name: 'a/passwd', data: 'pwned\n' }], /goes through a symlink/);
  await refusedLayer(t, [{ name: 'b', type: 'symlink', linkname: '../../../../../../..' + env0.outside }, { name: 'b/new', data: 'x\n' }], /goes through a symlink/);
});

test('a hard link to a path outside the layer is refused', async (t) => {
  const env0 = await setup(t);
  await refusedLayer(t, [{ name: 'h', type: 'link', linkname: path.join(env0.outside, 'passwd') }], /hard link target leads outside the layer/);
  await refusedLayer(t, [{ name: 'h', type: 'link', linkname: '../../../../../../../../..' + path.join(env0.outside, 'passwd') }], /hard link target leads outside the layer/);
});

test('a name over NAME_MAX is refused', async (t) => {
  await refusedLayer(t, [{ name: `d/${'n'.repeat(256)}`, data: 'x\n' }], /name longer than NAME_MAX/);
});

test('a truncated tar and a truncated gzip are refused', async (t) => {
  const env = await setup(t);
  const entries: TarEntry[] = [{ name: 'f1', data: Buffer.alloc(50_000, 7) }, { name: 'f2', data: Buffer.alloc(50_000, 8) }];
  const whole = await makeTar(entries);
  const cutTar = path.join(env.base, 'cut.tar');
  fs.writeFileSync(cutTar, whole.subarray(0, 70_000));
  refused(t, env, ['import', cutTar, 'cut:1'], /truncated tar/);
  // Cut exactly after the first entry: every header is whole, the end-of-archive marker is missing.
  const atEntry = path.join(env.base, 'at-entry.tar');
  fs.writeFileSync(atEntry, whole.subarray(0, 512 + 50_176));
  refused(t, env, ['import', atEntry, 'cut:2'], /truncated tar/);
  const gz = gzipSync(whole);
  const cutGz = path.join(env.base, 'cut.tar.gz');
  fs.writeFileSync(cutGz, gz.subarray(0, Math.floor(gz.length / 2)));
  refused(t, env, ['import', cutGz, 'cut:3'], /truncated gzip/);
  // The same in an archive: a docker-archive whose outer tar is cut.
  const archive = path.join(env.base, 'a.tar');
  const good = path.join(env.base, 'l.tar');
  fs.writeFileSync(good, whole);
  dockerArchive(env.base, [{ tags: ['cut:4'], layers: [good] }], archive);
  const cutArchive = path.join(env.base, 'a-cut.tar');
  fs.writeFileSync(cutArchive, fs.readFileSync(archive).subarray(0, 60_000));
  refused(t, env, ['load', '-i', cutArchive], /truncated archive|missing file|has no file/);
});

test('a wrong digest anywhere is refused: layer diff ID, config name, OCI blob', async (t) => {
  const env = await setup(t);
  const l = await layerFile(env, 'l.tar', [{ name: 'f', data: 'content\n' }]);
  const wrongDiff = path.join(env.base, 'wrong-diff.tar');
  dockerArchive(env.base, [{ tags: ['w:1'], layers: [l], diffIds: [`sha256:${'0'.repeat(64)}`] }], wrongDiff);
  refused(t, env, ['load', '-i', wrongDiff], /layer diff ID mismatch/);

  // A config whose name (the image ID) is not its digest.
  const good = path.join(env.base, 'good-archive.tar');
  const [id] = dockerArchive(env.base, [{ tags: ['w:2'], layers: [l] }], good);
  const dir = path.join(env.base, 'unpacked');
  fs.mkdirSync(dir);
  runOk('tar', ['-C', dir, '-xf', good]);
  const cfg = path.join(dir, `${id!.slice(7)}.json`);
  fs.writeFileSync(cfg, fs.readFileSync(cfg, 'utf8').replace('amd64', 'arm64'));
  refused(t, env, ['load', '-i', dir], /digest mismatch: config/);

  // OCI: a blob whose content is not what its name says.
  imageOk(t, env.store, ['save', 'good:1', '--format', 'oci-dir', '-o', path.join(env.base, 'oci')]);
  const before = storeState(env.store);
  const oci = path.join(env.base, 'oci');
  const index = JSON.parse(fs.readFileSync(path.join(oci, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const manifest = JSON.parse(fs.readFileSync(path.join(oci, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  const blob = path.join(oci, 'blobs/sha256', manifest.layers[0]!.digest.slice(7));
  const data = fs.readFileSync(blob);
  data[1024] = data[1024]! ^ 1; // the first byte of etc/hostname's content: the tar still parses
  fs.writeFileSync(blob, data);
  // good:1 is stored with that very layer: load into a fresh store, where the blob must be read.
  const fresh: Env = { ...env, store: path.join(env.base, 'fresh') };
  refused(t, fresh, ['load', '-i', oci], /layer digest mismatch/);
  t.is(storeState(env.store), before);
});

test('a manifest that names a missing blob is refused', async (t) => {
  const env = await setup(t);
  const oci = path.join(env.base, 'oci');
  imageOk(t, env.store, ['save', 'good:1', '--format', 'oci-dir', '-o', oci]);
  const index = JSON.parse(fs.readFileSync(path.join(oci, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const manifest = JSON.parse(fs.readFileSync(path.join(oci, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  fs.rmSync(path.join(oci, 'blobs/sha256', manifest.layers[0]!.digest.slice(7)));
  refused(t, { ...env, store: path.join(env.base, 'fresh') }, ['load', '-i', oci], /names a missing blob/);
  // docker-archive: manifest.json names a layer file that is not there.
  const l = await layerFile(env, 'l.tar', [{ name: 'f', data: 'x\n' }]);
  const archive = path.join(env.base, 'd.tar');
  dockerArchive(env.base, [{ tags: ['m:1'], layers: [l] }], archive);
  const dir = path.join(env.base, 'unpacked');
  fs.mkdirSync(dir);
  runOk('tar', ['-C', dir, '-xf', archive]);
  for (const f of fs.readdirSync(dir)) if (f.endsWith('.tar')) fs.rmSync(path.join(dir, f));
  refused(t, env, ['load', '-i', dir], /names a missing file/);
});

test('a duplicate or conflicting tag in an archive, and a malformed one, are refused', async (t) => {
  const env = await setup(t);
  const l1 = await layerFile(env, 'l1.tar', [{ name: 'f', data: 'one\n' }]);
  const l2 = await layerFile(env, 'l2.tar', [{ name: 'f', data: 'two\n' }]);
  const conflict = path.join(env.base, 'conflict.tar');
  dockerArchive(env.base, [{ tags: ['dup:1'], layers: [l1] }, { tags: ['dup:1'], layers: [l2] }], conflict);
  refused(t, env, ['load', '-i', conflict], /conflicting tag dup:1/);
  const malformed = path.join(env.base, 'malformed.tar');
  dockerArchive(env.base, [{ tags: ['UPPER/case:1'], layers: [l1] }], malformed);
  refused(t, env, ['load', '-i', malformed], /invalid reference format/);
});

test('not an archive at all, and a missing file, are one line', async (t) => {
  const env = await setup(t);
  const junk = path.join(env.base, 'junk');
  fs.writeFileSync(junk, 'this is not a tar\n'.repeat(100));
  refused(t, env, ['load', '-i', junk], /not an image archive/);
  refused(t, env, ['load', '-i', path.join(env.base, 'nothere.tar')], /no such file/);
  refused(t, env, ['import', junk, 'junk:1'], /not a tar/);
});

test('an archive file read in place: a layer named by a digest it does not hash to is refused (docker-archive, OCI archive)', async (t) => {
  const env = await setup(t);
  const l = await layerFile(env, 'l.tar', [{ name: 'f', data: 'content\n' }]);
  const data = fs.readFileSync(l);
  const named = createHash('sha256').update(data).digest('hex');
  data[512] = data[512]! ^ 1; // the first byte of f's content: the tar still parses
  // docker-archive (newer docker save layout): the layer at blobs/sha256/<hex>, and the config's
  // diff ID is the sha256 of the bytes there, so only the name can tell.
  const stage = path.join(env.base, 'stage');
  fs.mkdirSync(path.join(stage, 'blobs/sha256'), { recursive: true });
  fs.writeFileSync(path.join(stage, 'blobs/sha256', named), data);
  const config = JSON.stringify({
    architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(data).digest('hex')}`] },
  });
  const id = createHash('sha256').update(config).digest('hex');
  fs.writeFileSync(path.join(stage, 'blobs/sha256', id), config);
  fs.writeFileSync(path.join(stage, 'manifest.json'), JSON.stringify([{ Config: `blobs/sha256/${id}`, RepoTags: ['w:3'], Layers: [`blobs/sha256/${named}`] }]));
  const archive = path.join(env.base, 'blob-named.tar');
  runOk('tar', ['-C', stage, '-cf', archive, '.']);
  refused(t, env, ['load', '-i', archive], /layer digest mismatch/);

  // OCI archive: a layer blob whose content is not what its name says.
  const oci = path.join(env.base, 'oci');
  imageOk(t, env.store, ['save', 'good:1', '--format', 'oci-dir', '-o', oci]);
  const index = JSON.parse(fs.readFileSync(path.join(oci, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const manifest = JSON.parse(fs.readFileSync(path.join(oci, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  const blob = path.join(oci, 'blobs/sha256', manifest.layers[0]!.digest.slice(7));
  const bytes = fs.readFileSync(blob);
  bytes[1024] = bytes[1024]! ^ 1;
  fs.writeFileSync(blob, bytes);
  const ociTar = path.join(env.base, 'oci.tar');
  runOk('tar', ['-C', oci, '-cf', ociTar, '.']);
  refused(t, { ...env, store: path.join(env.base, 'fresh') }, ['load', '-i', ociTar], /digest mismatch/);
});
