// Tools nobody here wrote read strata's images and write images strata reads, compared file by
// file: podman (import, save, load, run, image mount), skopeo copy between docker-archive,
// oci-archive and OCI layout (also gzip-compressed), umoci unpack.

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { compareTrees } from './helpers/compare.js';
import { run, runOk } from './helpers/exec.js';
import { imageOk, layerDirs, PODMAN_RUN, podmanImport, testPodman, twoLayerImage } from './helpers/image-store.js';
import { kernelOverlay } from './helpers/mounts.js';
import { type NodeInfo, snapshot } from './helpers/snapshot.js';
import { tempDir } from './helpers/tmp.js';

const ROOTFS_L0 = '/var/cache/strata/rootfs/l0';

/** ctime cannot be carried; directory sizes depend on how entries were written. */
function ignoreUnportable(p: string, f: keyof NodeInfo, info: NodeInfo): boolean {
  return f === 'ctimeNs' || f === 'blocks' || (info.type === 'dir' && f === 'size') || (p === '.' && f === 'mtimeNs');
}

function inspectId(t: ExecutionContext, store: string, ref: string): { Id: string; RootFS: { Layers: string[] } } {
  return (JSON.parse(imageOk(t, store, ['inspect', ref])) as { Id: string; RootFS: { Layers: string[] } }[])[0]!;
}

function tool(t: ExecutionContext, cmd: string, args: readonly string[]): string {
  const r = run(cmd, args, { timeoutMs: 300_000 });
  if (r.status !== 0) t.fail(`${r.command}: exit ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

test.before(() => {
  for (const cmd of ['podman', 'skopeo', 'umoci']) {
    if (run('sh', ['-c', `command -v ${cmd}`]).status !== 0) throw new Error(`${cmd} is not installed (make system-deps installs it)`);
  }
  if (!fs.existsSync(ROOTFS_L0)) throw new Error(`${ROOTFS_L0} is missing (make rootfs builds it)`);
});

test.serial('podman: import + save -> strata load (same tree as the rootfs); strata save -> podman load, run, image mount; podman oci-archive -> strata', (t) => {
  const base = tempDir(t, 'pi');
  const { podman, ok } = testPodman(t, base);
  const podmanId = podmanImport(ok, base, ROOTFS_L0, 'localhost/deb:l0');
  const pdArchive = path.join(base, 'podman-save.tar');
  ok(['save', '-o', pdArchive, 'localhost/deb:l0']);
  const store = path.join(base, 'store');
  t.regex(imageOk(t, store, ['load', '-i', pdArchive]), /Loaded image: localhost\/deb:l0/);
  const lower = imageOk(t, store, ['lowerdir', 'deb:l0']).trim();
  t.is(compareTrees(t, snapshot(lower), snapshot(ROOTFS_L0), { ignore: ignoreUnportable, label: 'the stored layer vs the rootfs podman imported' }), 0);
  t.is(inspectId(t, store, 'deb:l0').Id, `sha256:${podmanId}`, 'same image ID as podman');

  // strata's save, read by podman: load, run, and the mounted image equals the kernel's mount of the store.
  const saved = path.join(base, 'strata-save.tar');
  imageOk(t, store, ['save', 'deb:l0', '-o', saved]);
  ok(['rmi', '-f', 'localhost/deb:l0']);
  t.regex(ok(['load', '-i', saved]), /localhost\/deb:l0/);
  t.is(ok(['run', '--rm', ...PODMAN_RUN, 'localhost/deb:l0', 'cat', '/etc/debian_version']), fs.readFileSync(path.join(ROOTFS_L0, 'etc/debian_version'), 'utf8'));
  const mnt = ok(['image', 'mount', 'localhost/deb:l0']).trim();
  t.teardown(() => podman(['image', 'unmount', '-f', 'localhost/deb:l0']));
  // Without an upper the kernel wants two lowers: an empty one below.
  const empty = path.join(base, 'empty');
  fs.mkdirSync(empty);
  const kernel = kernelOverlay(t, { lowers: [lower, empty] });
  // podman's read-only image mount puts a 0555 directory of its own under the layers: its root mode is podman's.
  const ignoreRootMode = (p: string, f: keyof NodeInfo, info: NodeInfo): boolean => ignoreUnportable(p, f, info) || (p === '.' && f === 'mode');
  t.is(compareTrees(t, snapshot(mnt), snapshot(kernel), { ignore: ignoreRootMode, label: 'podman image mount vs kernel overlay of image lowerdir' }), 0);

  // podman's OCI archive: the same layer, found in the store (no second copy).
  const pdOci = path.join(base, 'podman-oci.tar');
  ok(['save', '--format', 'oci-archive', '-o', pdOci, 'localhost/deb:l0']);
  const store2 = path.join(base, 'store2');
  imageOk(t, store2, ['load', '-i', pdOci]);
  t.deepEqual(inspectId(t, store2, 'deb:l0').RootFS.Layers, inspectId(t, store, 'deb:l0').RootFS.Layers);
  imageOk(t, store, ['load', '-i', pdOci]);
  t.is(layerDirs(store).length, 1, 'one copy of the layer');
});

test.serial('skopeo copies strata\'s saves between docker-archive, oci-archive and OCI layout (gzip too); strata loads each back identically', async (t) => {
  const { base, archive, store } = await twoLayerImage(t);
  imageOk(t, store, ['load', '-i', archive]);
  const want = inspectId(t, store, 'test/two:1');
  const lowers = imageOk(t, store, ['lowerdir', 'test/two:1']).trim().split(':');
  const sDocker = path.join(base, 's-docker.tar');
  const sOci = path.join(base, 's-oci.tar');
  imageOk(t, store, ['save', 'test/two:1', '-o', sDocker]);
  imageOk(t, store, ['save', 'test/two:1', '-o', sOci, '--format', 'oci-archive']);
  const copies: [string, string, string][] = [
    ['docker-archive -> oci-archive', `docker-archive:${sDocker}`, `oci-archive:${path.join(base, 'k1.tar')}:test/two:1`],
    ['oci-archive -> docker-archive', `oci-archive:${sOci}`, `docker-archive:${path.join(base, 'k2.tar')}:test/two:1`],
    ['oci-archive -> oci layout, gzip', `oci-archive:${sOci}`, `oci:${path.join(base, 'k3')}:test/two:1`],
    ['docker-archive -> oci layout', `docker-archive:${sDocker}`, `oci:${path.join(base, 'k4')}:test/two:1`],
  ];
  for (const [what, from, to] of copies) {
    tool(t, 'skopeo', ['copy', ...(what.includes('gzip') ? ['--dest-compress', '--dest-compress-format', 'gzip'] : []), from, to]);
    const dest = to.split(':')[1]!;
    const fresh = path.join(base, `store-${path.basename(dest)}`);
    imageOk(t, fresh, ['load', '-i', dest]);
    const ref = JSON.parse(imageOk(t, fresh, ['ls', '--json']))[0].id as string;
    const got = inspectId(t, fresh, ref);
    t.deepEqual(got.RootFS.Layers, want.RootFS.Layers, `${what}: same diff IDs`);
    const gotLowers = imageOk(t, fresh, ['lowerdir', ref]).trim().split(':');
    lowers.forEach((l, i) => t.is(compareTrees(t, snapshot(gotLowers[i]!), snapshot(l), { ignore: ignoreUnportable, label: `${what}: layer ${i}` }), 0));
  }
  // The gzip copy's blobs really are gzip, and strata kept them as they came.
  const k3Index = JSON.parse(fs.readFileSync(path.join(base, 'k3', 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const k3Manifest = JSON.parse(fs.readFileSync(path.join(base, 'k3', 'blobs/sha256', k3Index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { mediaType: string }[] };
  t.true(k3Manifest.layers.every((l) => l.mediaType.endsWith('gzip')));
});

test.serial('umoci unpacks strata\'s OCI layout to the tree the kernel shows over `image lowerdir`', async (t) => {
  const { base, archive, store } = await twoLayerImage(t);
  imageOk(t, store, ['load', '-i', archive]);
  const layout = path.join(base, 'layout');
  imageOk(t, store, ['save', 'test/two:1', '-o', layout, '--format', 'oci-dir']);
  const bundle = path.join(base, 'bundle');
  tool(t, 'umoci', ['unpack', '--image', `${layout}:test/two:1`, bundle]);
  const lowers = imageOk(t, store, ['lowerdir', 'test/two:1']).trim().split(':');
  const kernel = kernelOverlay(t, { lowers });
  t.is(compareTrees(t, snapshot(path.join(bundle, 'rootfs')), snapshot(kernel), { ignore: ignoreUnportable, label: 'umoci rootfs vs kernel overlay' }), 0);
  t.false(fs.existsSync(path.join(bundle, 'rootfs', 'big')), 'the whiteout applied');
  t.is(runOk('cat', [path.join(bundle, 'rootfs', 'd', 'new')]), 'new in the top layer\n');
});
