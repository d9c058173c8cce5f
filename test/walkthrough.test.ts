// The classic walk-through, end to end, with podman as the tool nobody here wrote:
//  1. podman imports a Debian rootfs (the cached /var/cache/strata/rootfs layers, flattened through
//     a kernel overlay) and `podman save`s it (docker-archive);
//  2. strata image load;
//  3. strata run it and apt-get install a package (hello) from deb.debian.org;
//  4. strata commit it as a new tag;
//  5. strata run the new tag: the package is there;
//  6. strata image history shows the new layer on top;
//  7. strata image save; podman load reads it and runs the package.
// podman's state is private to the test (storage.conf with its own graphroot and runroot).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk, type RunResult } from './helpers/exec.js';
import { testStore } from './helpers/images.js';
import { kernelOverlay, mountsUnder, unmountQuietly } from './helpers/mounts.js';
import { tempDir } from './helpers/tmp.js';

const ROOTFS = process.env.STRATA_ROOTFS_DIR ?? '/var/cache/strata/rootfs';
const PODMAN_RUN = ['--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
const LIMITS = ['--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768', '--network', 'none'];

/** podman with its whole state below `root`. */
function privatePodman(root: string): (args: string[], timeoutMs?: number) => RunResult {
  for (const d of ['graph', 'run', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.writeFileSync(path.join(root, 'registries.conf'), '');
  fs.writeFileSync(path.join(root, 'storage.conf'), `[storage]\ndriver = "overlay"\ngraphroot = "${root}/graph"\nrunroot = "${root}/run"\n`);
  const env = { ...process.env, CONTAINERS_STORAGE_CONF: path.join(root, 'storage.conf'), CONTAINERS_REGISTRIES_CONF: path.join(root, 'registries.conf') };
  return (args, timeoutMs = 600_000) => run('podman', [...PODMAN_RUN, '--tmpdir', `${root}/tmp`, ...args], { env, timeoutMs });
}

test('walk-through: podman save → strata load → run apt-get install → commit → run → history → save → podman load and run', (t) => {
  t.timeout(45 * 60_000);
  for (const l of ['l0', 'l1', 'l2']) {
    if (!fs.existsSync(path.join(ROOTFS, l))) throw new Error(`${ROOTFS}/${l} is missing: run make rootfs`);
  }
  const base = tempDir(t, 'wk');
  const podmanRoot = path.join(base, 'podman');
  const podman = privatePodman(podmanRoot);
  t.teardown(() => {
    podman(['rm', '-af', '-t', '0']);
    podman(['system', 'reset', '-f']);
    for (const m of mountsUnder(podmanRoot).reverse()) unmountQuietly(m);
  });
  const pod = (args: string[]): string => {
    const r = podman(args);
    if (r.status !== 0) throw new Error(`podman ${args.join(' ')}: status ${r.status}: ${r.stderr.trim()}`);
    return r.stdout;
  };

  // 1. The Debian image, as podman makes and saves it.
  const kmnt = kernelOverlay(t, { lowers: ['l2', 'l1', 'l0'].map((l) => path.join(ROOTFS, l)), mountpoint: fs.mkdtempSync(path.join(base, 'k')) });
  const rootfsTar = path.join(base, 'rootfs.tar');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', kmnt, '-cf', rootfsTar, '.'], { timeoutMs: 600_000 });
  unmountQuietly(kmnt);
  pod(['import', '-q', '--change', 'CMD ["/bin/bash"]', rootfsTar, 'localhost/debian-strata:12']);
  const saved = path.join(base, 'podman-save.tar');
  pod(['save', '-o', saved, 'localhost/debian-strata:12']);
  fs.rmSync(rootfsTar);

  // 2. strata loads it.
  const s = testStore(t, base);
  t.regex(s.ok(['image', 'load', '-i', saved]), /debian-strata:12/);

  // 3. A container installs a package from the Debian archive.
  const install = s.strata(['run', '--name', 'inst', 'localhost/debian-strata:12', 'sh', '-c',
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hello && rm -rf /var/lib/apt/lists/*'], 20 * 60_000);
  t.is(install.status, 0, `apt-get in the container failed:\n${install.stdout.slice(-2000)}\n${install.stderr.slice(-2000)}`);
  t.is(s.strata(['run', '--rm', 'localhost/debian-strata:12', 'sh', '-c', 'command -v hello']).status, 127, 'the base image has no hello');

  // 4. Commit as a new tag.
  s.ok(['commit', '-m', 'apt-get install hello', 'inst', 'localhost/debian-strata:hello']);

  // 5. The new tag has the package.
  t.is(s.ok(['run', '--rm', 'localhost/debian-strata:hello', 'hello']), 'Hello, world!\n');
  t.regex(s.ok(['run', '--rm', 'localhost/debian-strata:hello', 'dpkg-query', '-W', '-f', '${Status}', 'hello']), /install ok installed/);

  // 6. The history shows the new layer on top.
  const history = s.ok(['image', 'history', 'localhost/debian-strata:hello']).trim().split('\n');
  t.is(history.length, 3, history.join('\n'));
  t.regex(history[1]!, /sh -c apt-get update.*apt-get install hello$/);
  const inspect = JSON.parse(s.ok(['image', 'inspect', 'localhost/debian-strata:hello'])) as { RootFS: { Layers: string[] } }[];
  t.is(inspect[0]!.RootFS.Layers.length, 2);

  // 7. strata saves it; podman loads it and runs the package.
  const out = path.join(base, 'strata-save.tar');
  s.ok(['image', 'save', 'localhost/debian-strata:hello', '-o', out]);
  pod(['rmi', '-af']);
  const loaded = pod(['load', '-i', out]);
  t.regex(loaded, /debian-strata:hello/);
  t.is(pod(['run', '--rm', ...LIMITS, 'localhost/debian-strata:hello', 'hello']), 'Hello, world!\n');
  t.deepEqual(mountsUnder(s.dir), [], 'nothing of the store left mounted');
});
