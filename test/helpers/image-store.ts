// Helpers for the image store tests: run `strata image`, build layer tars and archives by hand
// (GNU tar for real trees, tar-stream for hostile ones), a private podman, and a fingerprint of a
// store's visible state to prove that a refused input changed nothing.

import type { ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tar from 'tar-stream';
import { run, runOk, type RunResult } from './exec.js';
import { strataBin } from './paths.js';
import { tempDir } from './tmp.js';
import { testStore, type TestStore } from './images.js';

/** `strata image ARGS --store STORE`. */
export function image(store: string, args: readonly string[], timeoutMs = 300_000): RunResult {
  return run(strataBin, ['image', ...args, '--store', store], { timeoutMs });
}

/** The same, failing the test on a non-zero exit; returns stdout. */
export function imageOk(t: ExecutionContext, store: string, args: readonly string[]): string {
  const r = image(store, args);
  if (r.status !== 0) t.fail(`strata image ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

export function sha256Hex(data: Buffer | string): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

export function fileSha256(p: string): string {
  return sha256Hex(fs.readFileSync(p));
}

/** A pax tar of a directory's content, owners numeric, with xattrs (as podman's layers are). */
export function tarDir(dir: string, out: string): string {
  runOk('tar', ['--xattrs', "--xattrs-include=*", '--numeric-owner', '--format=pax', '-C', dir, '-cf', out, '.']);
  return out;
}

export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'fifo';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
  /** PAX records, e.g. { 'SCHILY.xattr.user.note': 'v' }. */
  pax?: Record<string, string>;
}

/** A tar (ustar/pax by tar-stream) with exactly these entries, in this order. */
export async function makeTar(entries: readonly TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const e of entries) {
    const data = e.data === undefined ? undefined : Buffer.from(e.data);
    await new Promise<void>((resolve, reject) => {
      const header = { name: e.name, type: e.type ?? 'file', mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
        ...(e.linkname ? { linkname: e.linkname } : {}), ...(e.pax ? { pax: e.pax } : {}), size: data?.length ?? 0 } as const;
      pack.entry(header, data ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export interface ArchiveImage {
  tags: string[];
  /** Layer tar files, bottom first. */
  layers: string[];
  /** Overrides the diff IDs written into the config (for a wrong-digest case). */
  diffIds?: string[];
  /** The config's architecture (default amd64). */
  architecture?: string;
}

/**
 * A docker-archive (as `docker save` writes it) of images made of the given layer tars, written
 * to `out`. Returns the image IDs (config digests).
 */
export function dockerArchive(workDir: string, images: readonly ArchiveImage[], out: string): string[] {
  const stage = fs.mkdtempSync(path.join(workDir, 'da'));
  const manifest = [];
  const ids: string[] = [];
  for (const img of images) {
    const layerNames = img.layers.map((l) => {
      const hex = fileSha256(l);
      fs.copyFileSync(l, path.join(stage, `${hex}.tar`));
      return `${hex}.tar`;
    });
    const config = JSON.stringify({
      architecture: img.architecture ?? 'amd64', os: 'linux', created: '2024-01-01T00:00:00Z', config: { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: img.diffIds ?? img.layers.map((l) => `sha256:${fileSha256(l)}`) },
      history: img.layers.map((l, i) => ({ created: '2024-01-01T00:00:00Z', created_by: `layer ${i} ${path.basename(l)}` })),
    });
    const id = sha256Hex(config);
    fs.writeFileSync(path.join(stage, `${id}.json`), config);
    manifest.push({ Config: `${id}.json`, RepoTags: img.tags, Layers: layerNames });
    ids.push(`sha256:${id}`);
  }
  fs.writeFileSync(path.join(stage, 'manifest.json'), JSON.stringify(manifest));
  runOk('tar', ['-C', stage, '-cf', out, '.']);
  fs.rmSync(stage, { recursive: true, force: true });
  return ids;
}

/** Everything a user or a later command could see of a store: files below it (not LevelDB's own) and its images. */
export function storeState(store: string): string {
  // First, as it may create the store.
  const ls = image(store, ['ls', '--json']);
  const lines: string[] = [];
  const walk = (dir: string, rel: string): void => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents.sort((a, b) => a.name.localeCompare(b.name))) {
      const r = `${rel}/${e.name}`;
      if (r === '/db') continue;
      const st = fs.lstatSync(path.join(dir, e.name));
      lines.push(`${r} ${st.mode.toString(8)} ${e.isFile() ? st.size : ''}`);
      if (e.isDirectory()) walk(path.join(dir, e.name), r);
    }
  };
  walk(store, '');
  return [...lines, `ls: ${ls.status} ${ls.stdout} ${ls.stderr}`].join('\n');
}

/** Layer directories in a store. */
export function layerDirs(store: string): string[] {
  return fs.readdirSync(path.join(store, 'layers')).sort();
}

/** A private podman (its own storage, no registries), as test/podman.test.ts makes them. */
export interface Podman {
  (args: readonly string[], timeoutMs?: number): RunResult;
  root: string;
}

export function privatePodman(base: string): Podman {
  const root = path.join(base, 'podman');
  for (const d of ['root', 'runroot', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.writeFileSync(path.join(root, 'registries.conf'), '');
  fs.writeFileSync(path.join(root, 'storage.conf'), `[storage]\ndriver = "overlay"\ngraphroot = "${root}/root"\nrunroot = "${root}/runroot"\n`);
  const env = { ...process.env, CONTAINERS_STORAGE_CONF: path.join(root, 'storage.conf'), CONTAINERS_REGISTRIES_CONF: path.join(root, 'registries.conf') };
  const common = ['--root', `${root}/root`, '--runroot', `${root}/runroot`, '--tmpdir', `${root}/tmp`, '--runtime', 'runc',
    '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', '--storage-driver', 'overlay'];
  const p = ((args: readonly string[], timeoutMs = 300_000) => run('podman', [...common, ...args], { env, timeoutMs })) as Podman;
  p.root = root;
  return p;
}

/** Ends a private podman: its containers, images and storage. */
export function resetPodman(p: Podman): void {
  p(['rm', '-af', '-t', '0']);
  p(['system', 'reset', '-f']);
}

/** A private podman for one test (reset at its end), and a runner failing the test on a non-zero exit. */
export function testPodman(t: ExecutionContext, base: string): { podman: Podman; ok: (args: readonly string[]) => string } {
  const podman = privatePodman(base);
  t.teardown(() => resetPodman(podman));
  const ok = (args: readonly string[]): string => {
    const r = podman(args);
    if (r.status !== 0) t.fail(`podman ${args.join(' ')}: ${r.status}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  return { podman, ok };
}

/** The test podman's image of a root filesystem directory: `podman import` of its tar, tagged `tag`; returns podman's image ID. */
export function podmanImport(ok: (args: readonly string[]) => string, base: string, rootfs: string, tag: string): string {
  ok(['import', tarDir(rootfs, path.join(base, 'import.tar')), tag]);
  fs.rmSync(path.join(base, 'import.tar'));
  return ok(['image', 'inspect', '--format', '{{.Id}}', tag]).trim();
}

export const PODMAN_RUN = ['--network', 'none', '--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768'];

/** A tree with every kind of file and attribute a layer must keep. */
export function fixtureTree(root: string): void {
  fs.mkdirSync(root);
  const sh = (script: string): void => void runOk('sh', ['-euc', script], { cwd: root });
  sh(`
    mkdir -p d/sub tmp sgid etc
    chmod 1777 tmp; chmod 2755 sgid
    echo data > d/f; ln d/f d/hard; ln -s ../d/f etc/sym; ln -s /nonexistent dangling
    printf '#!/bin/sh\\n' > d/suid; chown 1234:5678 d/suid; chmod 4755 d/suid
    setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= d/suid
    setfattr -n user.note -v 'kept' d/f
    setfattr -n trusted.note -v 'also' d/sub
    mknod cdev c 1 3; mknod bdev b 7 0; mkfifo fifo
    head -c 300000 /dev/urandom > big; chmod 600 big; chown 7:8 big
    touch -h -d '2021-02-03 04:05:06.123456789' etc/sym d/f big
    touch -d '2020-01-01 00:00:00.5' d/sub d sgid tmp etc .
  `);
  fs.writeFileSync(path.join(root, Buffer.concat([Buffer.from('latin1-'), Buffer.from([0xe9, 0xff])]).toString('latin1')), 'odd name\n');
  runOk('touch', ['-d', '2020-01-01 00:00:00.5', root]);
}

export interface Built {
  base: string;
  store: string;
  /** docker-archive with image "test/two:1": the fixture, then a layer with whiteouts. */
  archive: string;
}

/** The fixture as a base layer, and a layer on top that deletes, replaces and makes opaque. */
export async function twoLayerImage(t: ExecutionContext): Promise<Built> {
  const base = tempDir(t, 'im');
  fixtureTree(path.join(base, 'tree'));
  const l0 = tarDir(path.join(base, 'tree'), path.join(base, 'l0.tar'));
  const l1 = path.join(base, 'l1.tar');
  fs.writeFileSync(l1, await makeTar([
    { name: 'd/', type: 'directory' },
    { name: '.wh.big' },
    { name: 'd/.wh..wh..opq' },
    { name: 'd/new', data: 'new in the top layer\n' },
    { name: '.wh.fifo' },
    { name: 'etc/', type: 'directory' },
    { name: 'etc/added', data: 'added\n' },
  ]));
  const archive = path.join(base, 'two.tar');
  dockerArchive(base, [{ tags: ['test/two:1'], layers: [l0, l1] }], archive);
  return { base, store: path.join(base, 'store'), archive };
}


/**
 * The Debian rootfs of `make rootfs` (its bottom layer) as localhost/deb:l0 in a private podman and as
 * deb:l0 in a new strata store below `base`, for tests that compare the two.
 */
export function debianInBoth(t: ExecutionContext, base: string, rootfs = '/var/cache/strata/rootfs/l0'): { podman: Podman; pod: (args: readonly string[]) => string; s: TestStore } {
  if (!fs.existsSync(rootfs)) throw new Error(`${rootfs} is missing (make rootfs builds it)`);
  const { podman, ok: pod } = testPodman(t, base);
  podmanImport(pod, base, rootfs, 'localhost/deb:l0');
  const s = testStore(t, base);
  const tar = path.join(base, 'deb.tar');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', rootfs, '-cf', tar, '.']);
  s.ok(['image', 'import', tar, 'deb:l0']);
  fs.rmSync(tar);
  return { podman, pod, s };
}
