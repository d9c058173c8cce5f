// The image store: a layer keeps everything a tar can say about a file; OCI whiteouts become the
// kernel's, so the kernel's overlay mounts `strata image lowerdir` and shows what strata shows;
// load -> save -> load gives the same image; shared layers are stored once and freed only when
// unused; concurrent and interrupted loads leave one copy and nothing half-made.

import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { formatG, humanSize } from '../src/cli/image.js';
import { Store } from '../src/image/store.js';
import { compareTrees } from './helpers/compare.js';
import { runOk, runWithPipes, waitFor } from './helpers/exec.js';
import { dockerArchive, image, imageOk, layerDirs, makeTar, tarDir, twoLayerImage } from './helpers/image-store.js';
import { kernelOverlay, strataMount } from './helpers/mounts.js';
import { strataBin } from './helpers/paths.js';
import { type NodeInfo, snapshot } from './helpers/snapshot.js';
import { tempDir } from './helpers/tmp.js';

/** ctime cannot be set; a directory's size and blocks depend on how its entries were written. */
const sameFile = { ignore: (_p: string, f: keyof NodeInfo, info: NodeInfo) => f === 'ctimeNs' || f === 'blocks' || (info.type === 'dir' && f === 'size') };

test('a layer keeps owners, modes, ns times, xattrs (security.capability), hard links, symlinks, devices, FIFOs, odd names', async (t) => {
  const { base, store } = await twoLayerImage(t);
  imageOk(t, store, ['import', path.join(base, 'l0.tar'), 'fixture:1']);
  const lower = imageOk(t, store, ['lowerdir', 'fixture:1']).trim();
  t.is(lower.split(':').length, 1);
  t.is(compareTrees(t, snapshot(lower), snapshot(path.join(base, 'tree')), { ...sameFile, label: 'layer vs the tree that was tarred' }), 0);
  t.deepEqual(fs.readdirSync(path.join(store, 'tmp')), [], 'nothing left in tmp/');
});

test('OCI whiteouts become char 0/0 and trusted.overlay.opaque; the kernel mounts `image lowerdir` and shows what strata shows', async (t) => {
  const { archive, store } = await twoLayerImage(t);
  t.regex(imageOk(t, store, ['load', '-i', archive]), /Loaded image: test\/two:1/);
  const lowers = imageOk(t, store, ['lowerdir', 'test/two:1']).trim().split(':');
  t.is(lowers.length, 2);
  const top = lowers[0]!;
  const wh = fs.lstatSync(path.join(top, 'big'));
  t.true(wh.isCharacterDevice() && wh.rdev === 0, '.wh.big is a whiteout device');
  t.true(fs.lstatSync(path.join(top, 'fifo')).isCharacterDevice());
  t.is(runOk('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', path.join(top, 'd')]), 'y');
  t.false(fs.readdirSync(top, { recursive: true }).some((n) => String(n).includes('.wh.')), 'no .wh. names left');

  const kernel = kernelOverlay(t, { lowers });
  const strata = strataMount(t, { lowers });
  const k = snapshot(kernel);
  t.is(compareTrees(t, snapshot(strata), k, { ignore: ['ctimeNs'], label: 'strata vs kernel over the store\'s layers' }), 0);
  t.false(fs.existsSync(path.join(kernel, 'd/f')), 'd is opaque: the lower\'s entries are hidden');
  t.false(fs.existsSync(path.join(kernel, 'big')), 'the whiteout hides the name');
  t.true(fs.existsSync(path.join(kernel, 'd/new')));
  t.false(fs.existsSync(path.join(kernel, 'fifo')));
  t.is(fs.readFileSync(path.join(kernel, 'etc/added'), 'utf8'), 'added\n');
  t.true(fs.lstatSync(path.join(kernel, 'etc/sym')).isSymbolicLink(), 'etc merges with the lower');
});

for (const format of ['docker-archive', 'oci-archive', 'oci-dir'] as const) {
  test(`load -> save (${format}) -> load into an empty store: same image ID, same layers, same tree`, async (t) => {
    const { archive, store, base } = await twoLayerImage(t);
    imageOk(t, store, ['load', '-i', archive]);
    const saved = path.join(base, `saved-${format}`);
    imageOk(t, store, ['save', 'test/two:1', '-o', saved, '--format', format]);
    const store2 = path.join(base, 'store2');
    t.regex(imageOk(t, store2, ['load', '-i', saved]), /Loaded image: test\/two:1/);
    const [a, b] = [store, store2].map((s) => JSON.parse(imageOk(t, s, ['inspect', 'test/two:1'])) as { Id: string; RootFS: { Layers: string[] } }[]);
    t.is(b![0]!.Id, a![0]!.Id);
    t.deepEqual(b![0]!.RootFS.Layers, a![0]!.RootFS.Layers);
    const l1 = imageOk(t, store, ['lowerdir', 'test/two:1']).trim().split(':');
    const l2 = imageOk(t, store2, ['lowerdir', 'test/two:1']).trim().split(':');
    // A layer's root has the time of its unpacking unless the tar names "./" (the top one does not).
    const ignore = (p: string, f: keyof NodeInfo, info: NodeInfo): boolean => sameFile.ignore(p, f, info) || (p === '.' && f === 'mtimeNs');
    l1.forEach((dir, i) => t.is(compareTrees(t, snapshot(l2[i]!), snapshot(dir), { ignore, label: `layer ${i}` }), 0));
    t.deepEqual(layerDirs(store2), layerDirs(store));
    t.false(fs.readdirSync(base).some((n) => n.includes('.tmp-')), 'no temporary save file left');
  });
}

/** Three images on one base layer: a/b/c each add their own top layer. */
async function sharedBase(t: ExecutionContext): Promise<{ base: string; store: string; archives: string[] }> {
  const base = tempDir(t, 'sh');
  const l0 = path.join(base, 'base.tar');
  fs.writeFileSync(l0, await makeTar([{ name: 'etc/', type: 'directory' }, { name: 'etc/os', data: 'base\n' }, { name: 'big', data: Buffer.alloc(200_000, 1) }]));
  const archives = ['a', 'b', 'c'].map((n) => {
    const top = path.join(base, `${n}.tar`);
    return { n, top };
  });
  for (const { n, top } of archives) fs.writeFileSync(top, await makeTar([{ name: `${n}-file`, data: `${n}\n` }]));
  return {
    base,
    store: path.join(base, 'store'),
    archives: archives.map(({ n, top }) => {
      const out = path.join(base, `${n}-image.tar`);
      // c takes b's tag: loading it leaves b untagged (as docker load does).
      dockerArchive(base, [{ tags: [n === 'c' ? 'shared/b:1' : `shared/${n}:1`], layers: [l0, top] }], out);
      return out;
    }),
  };
}

test('shared layers: two images on one base store it once; rm of one keeps it; prune frees only what is unused', async (t) => {
  const { store, archives } = await sharedBase(t);
  imageOk(t, store, ['load', '-i', archives[0]!]);
  // The second from standard input, as `docker load < FILE`.
  t.regex(runOk('sh', ['-c', `"$0" image load --store "$1" < "$2"`, strataBin, store, archives[1]!]), /Loaded image: shared\/b:1/);
  t.is(layerDirs(store).length, 3, 'base + two tops');
  // save to standard output, load from standard input: `strata image save X | strata image load`.
  const piped = path.join(path.dirname(store), 'piped');
  t.regex(runOk('sh', ['-c', `"$0" image save shared/a:1 --store "$1" | "$0" image load --store "$2"`, strataBin, store, piped]), /Loaded image: shared\/a:1/);
  t.deepEqual(layerDirs(piped), layerDirs(store).filter((d) => fs.existsSync(path.join(piped, 'layers', d))));
  t.is(layerDirs(piped).length, 2);
  const baseDir = imageOk(t, store, ['lowerdir', 'shared/a:1']).trim().split(':')[1]!;
  t.is(imageOk(t, store, ['lowerdir', 'shared/b:1']).trim().split(':')[1], baseDir, 'both images use the same base directory');

  // An image with two tags: removing it by ID is refused; by one tag, only that tag goes.
  imageOk(t, store, ['tag', 'shared/a:1', 'shared/a:extra']);
  const aId = (JSON.parse(imageOk(t, store, ['inspect', 'shared/a:1'])) as { Id: string }[])[0]!.Id;
  const byId = image(store, ['rm', aId.slice(7, 19)]);
  t.is(byId.status, 1);
  t.regex(byId.stderr, /has several tags \(shared\/a:1, shared\/a:extra\)/);
  t.is(imageOk(t, store, ['rm', 'shared/a:extra']), 'Untagged: shared/a:extra\n');
  t.is(layerDirs(store).length, 3);
  t.regex(imageOk(t, store, ['rm', 'shared/a:1']), /Untagged: shared\/a:1\nDeleted: sha256:/);
  t.is(layerDirs(store).length, 2, 'a\'s top layer went, the base stays');
  t.true(fs.existsSync(baseDir));
  const pruned = JSON.parse(imageOk(t, store, ['prune', '--json'])) as { images: string[]; layers: string[] };
  t.deepEqual(pruned, { ...pruned, images: [], layers: [] }, 'nothing unused');

  imageOk(t, store, ['load', '-i', archives[2]!]);
  const images = JSON.parse(imageOk(t, store, ['ls', '--json'])) as { tags: string[] }[];
  t.deepEqual(images.map((i) => i.tags).sort(), [[], ['shared/b:1']], 'c took b\'s tag; b is untagged');
  t.is(layerDirs(store).length, 3);
  const r = JSON.parse(imageOk(t, store, ['prune', '--json'])) as { images: string[]; layers: string[]; bytes: number };
  t.is(r.images.length, 1, 'the untagged image');
  t.is(r.layers.length, 1, 'its own top layer only');
  t.true(r.bytes > 0);
  t.is(layerDirs(store).length, 2);
  t.true(fs.existsSync(baseDir), 'the base, still used by c, stays');
  t.regex(imageOk(t, store, ['ls']), /shared\/b\s+1/);
});

test('image rm is refused while a container uses the image, unless --force; the container keeps its layers', async (t) => {
  const { store, archives } = await sharedBase(t);
  imageOk(t, store, ['load', '-i', archives[0]!]);
  const s = await Store.open(store);
  let id: string;
  try {
    id = (await s.createContainer({ image: await s.resolveImage('shared/a:1'), name: 'c1' })).id;
  } finally {
    await s.close();
  }
  const refused = image(store, ['rm', 'shared/a:1']);
  t.is(refused.status, 1);
  t.is(refused.stderr, 'strata: image shared/a:1 is in use by container c1 (use --force)\n');
  t.is(layerDirs(store).length, 2);
  imageOk(t, store, ['rm', '--force', 'shared/a:1']);
  t.is(imageOk(t, store, ['ls', '-q']), '');
  t.is(layerDirs(store).length, 2, 'the container still holds both layers');
  t.deepEqual(JSON.parse(imageOk(t, store, ['prune', '--json'])).layers, []);
  const s2 = await Store.open(store);
  try {
    await s2.removeContainer(id);
  } finally {
    await s2.close();
  }
  t.is(layerDirs(store).length, 0, 'released with the container');
});

test('two loads of the same archive at once: both succeed, one copy of each layer', async (t) => {
  const { store, archives } = await sharedBase(t);
  const both = await Promise.all([0, 1].map(() => runWithPipes(strataBin, ['image', 'load', '-i', archives[0]!, '--store', store], { timeoutMs: 120_000 })));
  for (const r of both) t.is(r.status, 0, r.stderr);
  t.is(layerDirs(store).length, 2);
  t.deepEqual(fs.readdirSync(path.join(store, 'tmp')), []);
  t.is((JSON.parse(imageOk(t, store, ['ls', '--json'])) as unknown[]).length, 1);
});

// Serial: the other tests' synchronous work would stall this one's polling while the unpack runs.
test.serial('a load killed while unpacking leaves no image and no layer; the next load works and clears what was left', async (t) => {
  const base = tempDir(t, 'kl');
  const big = path.join(base, 'big.tar');
  // Many files, so that the unpack takes long enough to be caught in the middle.
  const tree = path.join(base, 'tree');
  fs.mkdirSync(tree);
  for (let i = 0; i < 100; i++) {
    fs.mkdirSync(path.join(tree, `d${i}`));
    for (let j = 0; j < 200; j++) fs.writeFileSync(path.join(tree, `d${i}`, `f${j}`), Buffer.alloc(1000, i + j));
  }
  tarDir(tree, big);
  const archive = path.join(base, 'img.tar');
  dockerArchive(base, [{ tags: ['killed:1'], layers: [big] }], archive);
  const store = path.join(base, 'store');
  const child = spawn(strataBin, ['image', 'load', '-i', archive, '--store', store], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let exitedEarly = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code, sig) => {
    exitedEarly = `exit ${code} ${sig}`;
    resolve(code);
  }));
  t.teardown(() => child.kill('SIGKILL'));
  const caught = await waitFor(() => {
    try {
      return fs.readdirSync(path.join(store, 'tmp')).some((n) => n.startsWith('layer-') &&
        fs.readdirSync(path.join(store, 'tmp', n, 'diff')).length > 1);
    } catch {
      return false;
    }
  }, 60_000, 5);
  t.true(caught, `the load was caught unpacking (${exitedEarly}) ${stderr} ${fs.existsSync(path.join(store, 'tmp')) ? fs.readdirSync(path.join(store, 'tmp')).join(' ') : ''}`);
  child.kill('SIGKILL');
  t.is(await exited, null, 'killed');
  t.deepEqual(layerDirs(store), [], 'no layer directory became visible');
  t.is(imageOk(t, store, ['ls', '-q']), '');
  t.regex(imageOk(t, store, ['load', '-i', archive]), /Loaded image: killed:1/);
  t.deepEqual(fs.readdirSync(path.join(store, 'tmp')), [], 'the killed load\'s temp files are gone');
  t.is(layerDirs(store).length, 1);
});

test('an xattr the filesystem cannot hold (user.* on a symlink) is left out, as Docker does; the others are kept', async (t) => {
  const base = tempDir(t, 'xa');
  const layer = path.join(base, 'l.tar');
  fs.writeFileSync(layer, await makeTar([
    { name: 'f', data: 'x\n', pax: { 'SCHILY.xattr.user.note': 'kept' } },
    { name: 'link', type: 'symlink', linkname: 'f', pax: { 'SCHILY.xattr.user.note': 'not on a symlink' } },
  ]));
  const store = path.join(base, 'store');
  imageOk(t, store, ['import', layer, 'xattrs:1']);
  const dir = imageOk(t, store, ['lowerdir', 'xattrs:1']).trim();
  t.is(runOk('getfattr', ['--only-values', '-n', 'user.note', path.join(dir, 'f')]), 'kept');
  t.true(fs.lstatSync(path.join(dir, 'link')).isSymbolicLink());
});

test('image commands refuse unknown options by name; bad references and missing images are one line', (t) => {
  const store = path.join(tempDir(t, 'op'), 'store');
  for (const args of [['load', '--bogus'], ['ls', '--bogus'], ['tag', '--bogus'], ['save', 'x', '-o', 'y', '--bogus=1']]) {
    const r = image(store, args);
    t.is(r.status, 2, args.join(' '));
    t.is(r.stderr, 'strata: unknown option --bogus\n');
  }
  const missing = image(store, ['inspect', 'nothere:1']);
  t.is(missing.status, 1);
  t.is(missing.stderr, 'strata: no such image: nothere:1\n');
  const bad = image(store, ['import', '/dev/null', 'Bad:Tag:x']);
  t.is(bad.status, 2);
  t.is(bad.stderr, 'strata: invalid reference format: "Bad:Tag:x"\n');
});

test('images: REFERENCE and --filter (dangling, reference, label, before, since), --format, --digests, --no-trunc; -q once per image', async (t) => {
  const built = await twoLayerImage(t);
  const store = built.store;
  imageOk(t, store, ['load', '-i', built.archive]);
  // (--store before the image: what follows it is the container's command)
  const strata = (args: readonly string[]): string => runOk(strataBin, [args[0]!, '--store', store, ...args.slice(1)]);
  imageOk(t, store, ['tag', 'test/two:1', 'test/two:2']);
  imageOk(t, store, ['tag', 'test/two:1', 'other/x:1']);
  const two = (JSON.parse(imageOk(t, store, ['inspect', 'test/two:1'])) as { Id: string }[])[0]!.Id;
  // two commits under one tag: the first becomes dangling; the second carries a label
  strata(['create', '--name', 'c', 'test/two:1', '/none']);
  strata(['commit', 'c', 'made:1']);
  const first = (JSON.parse(imageOk(t, store, ['inspect', 'made:1'])) as { Id: string }[])[0]!.Id;
  strata(['commit', '--change', 'LABEL tier=db', 'c', 'made:1']);
  const second = (JSON.parse(imageOk(t, store, ['inspect', 'made:1'])) as { Id: string }[])[0]!.Id;
  t.not(first, second);
  const fmt = (args: readonly string[]): string[] => imageOk(t, store, ['ls', ...args, '--format', '{{.Repository}}:{{.Tag}}']).split('\n').filter(Boolean).sort();
  t.deepEqual(fmt(['test/two']), ['test/two:1', 'test/two:2']);
  t.deepEqual(fmt(['test/two:2']), ['test/two:2']);
  t.deepEqual(fmt(['--filter', 'reference=*/x']), ['other/x:1']);
  t.deepEqual(fmt(['--filter', 'label=tier=db']), ['made:1']);
  t.deepEqual(fmt(['--filter', 'label=tier=web']), []);
  t.deepEqual(fmt(['-f', 'dangling=true']), ['<none>:<none>']);
  t.deepEqual(fmt(['--filter', 'since=test/two:1']), ['<none>:<none>', 'made:1'].sort());
  t.deepEqual(fmt(['--filter', 'before=made:1']), ['<none>:<none>', 'other/x:1', 'test/two:1', 'test/two:2'].sort());
  t.deepEqual(imageOk(t, store, ['ls', '-q', 'test/two']).split('\n').filter(Boolean), [two.slice(7, 19)], 'one ID for two tags');
  t.deepEqual(imageOk(t, store, ['ls', '-q', '--no-trunc', '-f', 'dangling=true']).split('\n').filter(Boolean), [first]);
  t.regex(imageOk(t, store, ['ls', '--digests', 'made']).split('\n')[0]!, /^REPOSITORY +TAG +DIGEST +IMAGE ID +CREATED +SIZE$/);
  const bad = image(store, ['ls', '-f', 'color=x']);
  t.is(bad.status, 125);
  t.regex(bad.stderr, /--filter color=x: expected dangling=/);
  strata(['rm', 'c']);
});

test('sizes print as docker prints them (Go\'s %.3g of decimal units; %.4g in system df and a prune\'s total)', (t) => {
  const cases: [number, string][] = [
    [0, '0B'], [5, '5B'], [999, '999B'], [1000, '1kB'], [1234, '1.23kB'], [1_000_000, '1MB'], [77_800_000, '77.8MB'],
    [123_456_789, '123MB'], [999_999, '1e+03kB'], [1.5e9, '1.5GB'], [2e12, '2TB'],
  ];
  for (const [n, s] of cases) t.is(humanSize(n), s, String(n));
  // system df and a prune's total: four digits (go-units' HumanSize)
  t.is(humanSize(1_234_567_890, 4), '1.235GB');
  t.is(humanSize(77_800_000, 4), '77.8MB');
  t.is(humanSize(0, 4), '0B');
  t.is(formatG(0.0001234, 3), '0.000123');
  t.is(formatG(0.00001234, 3), '1.23e-05');
  t.is(formatG(100, 3), '100');
});
