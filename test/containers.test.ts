// Three "containers" from one image: three strata mounts over the same lower layers, each with its
// own upper, written concurrently by several processes each. Every container must end exactly as a
// kernel overlay of the same layers given the same work, the uppers must hold only their own
// changes, and the shared lower layers must be untouched (content, mode, owner, times, inode, xattrs).
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run, runWithPipes } from './helpers/exec.js';
import { compareTrees } from './helpers/compare.js';
import { materializeLayers, type Layer } from './helpers/layers.js';
import { kernelOverlay, strataMount } from './helpers/mounts.js';
import { strataBin } from './helpers/paths.js';
import { PYTHON } from './helpers/python.js';
import { snapshot, type Snapshot } from './helpers/snapshot.js';
import { tempDir } from './helpers/tmp.js';

/** The image: a base layer and a layer above it with a whiteout, an opaque dir and a hard link. */
function image(): Layer[] {
  const base: Layer = [];
  const top: Layer = [
    { path: 'etc/app.conf', kind: 'file', content: 'mode=top\n' },
    { path: 'old', kind: 'whiteout' },
    { path: 'cache', kind: 'opaque' },
    { path: 'cache/fresh', kind: 'file', content: 'fresh\n' },
    { path: 'bin/tool', kind: 'file', content: '#!/bin/sh\necho tool\n', mode: 0o755, xattrs: { 'user.origin': 'top' } },
    { path: 'bin/tool-link', kind: 'hardlink', linkTo: 'bin/tool' },
  ];
  for (const part of ['a', 'b']) {
    for (let d = 0; d < 6; d++) {
      for (let f = 0; f < 25; f++) {
        base.push({ path: `${part}/d${d}/f${f}`, kind: 'file', content: `${part} ${d} ${f}\n`.repeat(1 + f), mode: f % 5 === 0 ? 0o600 : 0o644 });
      }
    }
    base.push({ path: `${part}/big`, kind: 'file', content: crypto.createHash('sha256').update(part).digest().toString('hex').repeat(40000) });
  }
  base.push({ path: 'etc/app.conf', kind: 'file', content: 'mode=base\n' });
  base.push({ path: 'old', kind: 'file', content: 'whited out above\n' });
  base.push({ path: 'cache/stale', kind: 'file', content: 'hidden by the opaque dir above\n' });
  return [top, base];
}

// One worker: many changes under its own part of the tree (/a or /b), so that the end state does
// not depend on how the workers interleave; both workers of a container run at the same time.
const WORKER = String.raw`
import os, random, shutil, sys, tarfile, io
root, part, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = random.Random(seed)
p = lambda *xs: os.path.join(root, part, *xs)
for i in range(400):
    d, f = r.randrange(6), r.randrange(25)
    op = r.randrange(8)
    name = p('d%d' % d, 'f%d' % f)
    try:
        if op == 0:
            with open(name, 'a') as fh: fh.write('append %d\n' % i)
        elif op == 1:
            os.rename(name, p('d%d' % d, 'r%d-%d' % (f, i)))
        elif op == 2:
            os.unlink(name)
        elif op == 3:
            os.chmod(name, 0o640)
        elif op == 4:
            with open(p('d%d' % d, 'new%d' % i), 'w') as fh: fh.write('new %d\n' % i)
        elif op == 5:
            os.setxattr(name, 'user.k', b'v%d' % i)
        elif op == 6:
            os.utime(name, (1600000000 + i, 1600000000 + i))
        else:
            os.link(name, p('d%d' % d, 'l%d-%d' % (f, i)))
    except FileNotFoundError:
        pass
    except FileExistsError:
        pass
with open(p('big'), 'r+b') as fh:
    fh.seek(1000); fh.write(b'changed in the middle')
shutil.rmtree(p('d5'))
os.mkdir(p('d5'))
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode='w') as tf:
    for j in range(30):
        data = (b'untarred %d\n' % j) * (j + 1)
        ti = tarfile.TarInfo('untar/sub%d/file%d' % (j % 3, j)); ti.size = len(data); ti.mtime = 1500000000 + j
        tf.addfile(ti, io.BytesIO(data))
buf.seek(0)
with tarfile.open(fileobj=buf) as tf: tf.extractall(p('d5'))
`;

/** Everything about every entry of a layer, including ctime and inode: any write would show. */
function layerState(dir: string): string {
  const out: string[] = [];
  const walk = (rel: string): void => {
    const full = path.join(dir, rel);
    const st = fs.lstatSync(full, { bigint: true });
    let extra = '';
    if (st.isFile()) extra = crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex');
    const xattrs = run('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', full]).stdout.split('\n').slice(1).join(',');
    out.push([rel, st.mode, st.uid, st.gid, st.size, st.mtimeNs, st.ctimeNs, st.ino, st.nlink, extra, xattrs].join(' '));
    if (st.isDirectory()) for (const name of fs.readdirSync(full).sort()) walk(path.join(rel, name));
  };
  walk('.');
  return out.join('\n');
}

/** Private trusted.overlay.* bookkeeping is left out (the kernel's uuid stamp; origins are compared in origin.test.ts). */
function publicXattrs(snap: Snapshot): Snapshot {
  for (const info of snap.nodes.values()) {
    info.xattrs = Object.fromEntries(Object.entries(info.xattrs).filter(([n]) => !n.startsWith('trusted.overlay.') || n === 'trusted.overlay.opaque'));
  }
  return snap;
}

const RUN_STARTED_NS = BigInt(Date.now() - 60_000) * 1_000_000n;

async function work(mnt: string, container: number): Promise<void> {
  const results = await Promise.all(['a', 'b'].map((part, i) =>
    runWithPipes(PYTHON, ['-c', WORKER, mnt, part, String(container * 10 + i)], { timeoutMs: 180_000 })));
  for (const r of results) if (r.status !== 0) throw new Error(`${r.command}: ${r.status}: ${r.stderr}`);
}

test('three containers from one image, written concurrently, end as on the kernel and leave the image untouched', async (t) => {
  const root = tempDir(t, 'ctr');
  const lowers = materializeLayers(root, image(), ['top', 'base']);
  const before = lowers.map(layerState);
  const strata: { mnt: string; upper: string }[] = [];
  for (let c = 0; c < 3; c++) {
    const upper = path.join(root, `s${c}-u`);
    const work = path.join(root, `s${c}-w`);
    fs.mkdirSync(upper);
    fs.mkdirSync(work);
    strata.push({ mnt: strataMount(t, { lowers, upper, work, mountpoint: fs.mkdtempSync(path.join(root, `s${c}-m`)) }), upper });
  }
  // Three daemons, all listed by strata status.
  const status = JSON.parse(run(strataBin, ['status', '--json']).stdout) as { mountpoint: string; pid: number }[];
  const ours = status.filter((s) => strata.some((x) => x.mnt === s.mountpoint));
  t.is(ours.length, 3);
  t.is(new Set(ours.map((s) => s.pid)).size, 3, 'one daemon per mount');

  // All six workers at once, two per container.
  await Promise.all(strata.map((s, c) => work(s.mnt, c)));

  for (let c = 0; c < 3; c++) {
    const upper = path.join(root, `k${c}-u`);
    const workDir = path.join(root, `k${c}-w`);
    fs.mkdirSync(upper);
    fs.mkdirSync(workDir);
    const kmnt = kernelOverlay(t, { lowers, upper, work: workDir, mountpoint: fs.mkdtempSync(path.join(root, `k${c}-m`)) });
    await work(kmnt, c);
    // Times set by the clock (writes now) differ between the runs; times the work sets or keeps
    // (utime, tar, the layers' own) must be equal.
    const clockTime = (info: { mtimeNs: string }): boolean => BigInt(info.mtimeNs) > RUN_STARTED_NS;
    const ignore = (_p: string, field: string, info: { type: string; mtimeNs: string }): boolean =>
      field === 'ctimeNs' || field === 'blocks' || (field === 'mtimeNs' && clockTime(info)) || (info.type === 'dir' && field === 'size');
    compareTrees(t, snapshot(strata[c]!.mnt), snapshot(kmnt), { ignore, label: `container ${c}: strata vs kernel` });
    // The kernel makes its whiteouts hard links of one shared whiteout inode: their st_nlink counts them.
    const whiteout = (info: { type: string; rdev?: string }): boolean => info.type === 'chardev' && info.rdev === '0:0';
    compareTrees(t, publicXattrs(snapshot(strata[c]!.upper)), publicXattrs(snapshot(upper)), {
      ignore: (p, f, info) => ignore(p, f, info) || (f === 'nlink' && whiteout(info)), label: `container ${c}: uppers` });
  }
  // The containers differ from each other (their own changes only).
  const views = strata.map((s) => fs.readdirSync(path.join(s.mnt, 'a', 'd0')).sort().join(' '));
  t.not(views[0], views[1]);
  t.not(views[1], views[2]);
  t.deepEqual(lowers.map(layerState), before, 'the lower layers are untouched');
});
