// Layer generators: a seeded random multi-layer tree, a deep stack of 40+ layers and a directory
// of 10k entries spread over layers. All produce kernel-format layers (top first); use
// toFormat(layers, 'oci') for the same content with OCI whiteouts.
import type { Entry, Layer } from './layers.js';

/** mulberry32: small, fast, good enough for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

type Rand = () => number;
const int = (r: Rand, n: number): number => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;

const NAMES = ['a', 'b', 'c', 'etc', 'usr', 'lib', 'share', 'doc', 'bin', 'data', 'conf', 'x y', 'ünï', '.hidden', 'file.txt', 'README', 'n'.repeat(200), '-dash', 'UPPER', '#hash'];
const FILE_MODES = [0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o640, 0o000];
const DIR_MODES = [0o755, 0o755, 0o700, 0o1777, 0o2775, 0o750, 0o555];
const OWNERS: [number, number][] = [[0, 0], [0, 0], [1000, 1000], [65534, 65534], [0, 100]];
const LINK_TARGETS = ['/etc/passwd', '../x', 'a/b/c', '/', 'nonexistent', '.', 'file.txt', '/tmp/../etc', 't'.repeat(1000) + '/end', 'sp ace'];

function content(r: Rand): Buffer {
  const len = r() < 0.05 ? 100_000 + int(r, 50_000) : int(r, 3000);
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = r() < 0.9 ? 32 + int(r, 95) : int(r, 256);
  return b;
}

function randomTime(r: Rand): bigint | undefined {
  return r() < 0.3 ? 1_000_000_000n * BigInt(1_000_000_000 + int(r, 700_000_000)) + BigInt(int(r, 1_000_000_000)) : undefined;
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}
function isUnder(p: string, dir: string): boolean {
  return dir === '' || p.startsWith(dir + '/');
}

/**
 * A seeded random stack of `layers` kernel-format layers (top first): files with content, nested
 * directories, replacements of files by directories and back, symlinks (absolute, relative,
 * dangling), hardlinks, FIFOs, user.* xattrs, whiteouts and opaque directories over what the
 * layers below created.
 */
export function randomLayers(seed: number, opts: { layers?: number; opsPerLayer?: number } = {}): Layer[] {
  const r = rng(seed);
  const nLayers = opts.layers ?? 5;
  const view = new Map<string, 'dir' | 'nondir'>(); // what the layers so far show (approximately)
  const bottomUp: Layer[] = [];
  const viewSet = (p: string, k: 'dir' | 'nondir'): void => {
    if (k === 'nondir' || view.get(p) === 'nondir') for (const q of [...view.keys()]) if (isUnder(q, p)) view.delete(q);
    for (let a = parentOf(p); a !== ''; a = parentOf(a)) if (view.get(a) !== 'dir') view.set(a, 'dir');
    view.set(p, k);
  };
  const viewRemove = (p: string): void => {
    for (const q of [...view.keys()]) if (q === p || isUnder(q, p)) view.delete(q);
  };

  for (let li = 0; li < nLayers; li++) {
    const layer: Entry[] = [];
    const taken = new Map<string, 'dir' | 'nondir'>(); // paths this layer declares (incl. implicit parents)
    const canPlace = (p: string, dir: boolean): boolean => {
      if (taken.has(p)) return false;
      for (let a = parentOf(p); a !== ''; a = parentOf(a)) if (taken.get(a) === 'nondir') return false;
      if (!dir) for (const q of taken.keys()) if (isUnder(q, p)) return false;
      return true;
    };
    const add = (e: Entry, dir: boolean): boolean => {
      if (!canPlace(e.path, dir)) return false;
      for (let a = parentOf(e.path); a !== ''; a = parentOf(a)) taken.set(a, 'dir');
      taken.set(e.path, dir ? 'dir' : 'nondir');
      layer.push(e);
      return true;
    };
    const dirs = (): string[] => ['', ...[...view].filter(([, k]) => k === 'dir').map(([p]) => p)];
    const existing = (): string[] => [...view.keys()];
    const newName = (): string => pick(r, NAMES) + (r() < 0.6 ? String(int(r, 50)) : '');
    const child = (d: string): string => (d === '' ? newName() : `${d}/${newName()}`);
    const owner = (): Partial<Entry> => {
      const [uid, gid] = pick(r, OWNERS);
      return uid === 0 && gid === 0 ? {} : { uid, gid };
    };
    const effects: [string, 'dir' | 'nondir' | 'gone' | 'opaque'][] = [];
    const nOps = (opts.opsPerLayer ?? 25) + int(r, 10);

    for (let i = 0; i < nOps; i++) {
      const x = r();
      if (x < 0.3 || li === 0) {
        const p = r() < 0.25 ? `${child(pick(r, dirs()))}/${newName()}` : child(pick(r, dirs()));
        if (add({ path: p, kind: 'file', content: content(r), mode: pick(r, FILE_MODES), mtime: randomTime(r), ...owner() }, false)) effects.push([p, 'nondir']);
      } else if (x < 0.4) {
        const d = child(pick(r, dirs()));
        if (add({ path: d, kind: 'dir', mode: pick(r, DIR_MODES), mtime: randomTime(r), ...owner() }, true)) {
          effects.push([d, 'dir']);
          for (let k = int(r, 3); k > 0; k--) {
            const f = child(d);
            if (add({ path: f, kind: 'file', content: content(r) }, false)) effects.push([f, 'nondir']);
          }
        }
      } else if (x < 0.52) {
        const files = [...view].filter(([, k]) => k === 'nondir').map(([p]) => p);
        if (files.length) {
          const p = pick(r, files);
          if (add({ path: p, kind: 'file', content: content(r), mode: pick(r, FILE_MODES), ...owner() }, false)) effects.push([p, 'nondir']);
        }
      } else if (x < 0.64) {
        const all = existing();
        if (all.length) {
          const p = pick(r, all);
          if (add({ path: p, kind: 'whiteout' }, false)) effects.push([p, 'gone']);
        }
      } else if (x < 0.72) {
        const ds = dirs().filter((d) => d !== '');
        if (ds.length) {
          const d = pick(r, ds);
          if (add({ path: d, kind: 'opaque', mode: pick(r, DIR_MODES), ...owner() }, true)) {
            effects.push([d, 'opaque']);
            for (let k = int(r, 3); k > 0; k--) {
              const f = child(d);
              if (add({ path: f, kind: 'file', content: content(r) }, false)) effects.push([f, 'nondir']);
            }
          }
        }
      } else if (x < 0.77) {
        // replace a directory by a file, or a file by a directory with something in it
        const all = existing();
        if (all.length) {
          const p = pick(r, all);
          if (view.get(p) === 'dir') {
            if (add({ path: p, kind: r() < 0.5 ? 'file' : 'symlink', content: content(r), target: pick(r, LINK_TARGETS) }, false)) effects.push([p, 'nondir']);
          } else if (add({ path: p, kind: 'dir' }, true)) {
            effects.push([p, 'dir']);
            const f = child(p);
            if (add({ path: f, kind: 'file', content: content(r) }, false)) effects.push([f, 'nondir']);
          }
        }
      } else if (x < 0.84) {
        const p = child(pick(r, dirs()));
        if (add({ path: p, kind: 'symlink', target: pick(r, LINK_TARGETS), mtime: randomTime(r), ...owner() }, false)) effects.push([p, 'nondir']);
      } else if (x < 0.88) {
        const d = pick(r, dirs());
        const p = child(d);
        const q = child(d);
        if (add({ path: p, kind: 'file', content: content(r), mode: pick(r, FILE_MODES) }, false)) {
          effects.push([p, 'nondir']);
          if (add({ path: q, kind: 'hardlink', linkTo: p }, false)) effects.push([q, 'nondir']);
        }
      } else if (x < 0.91) {
        const p = child(pick(r, dirs()));
        if (add({ path: p, kind: 'fifo', mode: pick(r, [0o644, 0o600, 0o666]) }, false)) effects.push([p, 'nondir']);
      } else if (x < 0.96) {
        const isDir = r() < 0.4;
        const p = child(pick(r, dirs()));
        const xattrs: Record<string, Buffer> = {};
        for (let k = 1 + int(r, 3); k > 0; k--) xattrs[`user.${newName().replace(/\W/g, '_')}`] = content(r).subarray(0, int(r, 200));
        if (add({ path: p, kind: isDir ? 'dir' : 'file', content: isDir ? undefined : content(r), xattrs }, isDir)) effects.push([p, isDir ? 'dir' : 'nondir']);
      } else {
        // a directory that exists below, declared again with other attributes (merges)
        const ds = dirs().filter((d) => d !== '');
        if (ds.length) {
          const d = pick(r, ds);
          if (add({ path: d, kind: 'dir', mode: pick(r, DIR_MODES), mtime: randomTime(r), ...owner() }, true)) effects.push([d, 'dir']);
        }
      }
    }
    // The view after this layer: opaque and whiteouts first (they act on the layers below).
    for (const [p, k] of effects) if (k === 'gone' || k === 'opaque') viewRemove(p);
    for (const [p, k] of effects) if (k !== 'gone') viewSet(p, k === 'opaque' ? 'dir' : k);
    bottomUp.push(layer);
  }
  return bottomUp.reverse();
}

/**
 * `n` layers (top first), each adding files to a directory merged across all of them, a file
 * overwritten by every layer, whiteouts of files and whole directories of lower layers, periodic
 * opaque directories, a name alternating between file and directory, and symlinks.
 */
export function deepStack(n = 45): Layer[] {
  const bottomUp: Layer[] = [];
  for (let k = 0; k < n; k++) {
    const l: Entry[] = [
      { path: `common/f${k}`, kind: 'file', content: `layer ${k}\n` },
      { path: 'common/shared', kind: 'file', content: `shared, from layer ${k}\n`, mode: k % 2 ? 0o600 : 0o644 },
      { path: `l${k}/a`, kind: 'file', content: `l${k}/a\n` },
      { path: `l${k}/b`, kind: 'file', content: `l${k}/b\n` },
      { path: `l${k}/sub/c`, kind: 'file', content: `l${k}/sub/c\n` },
    ];
    if (k >= 2) l.push({ path: `l${k - 2}/a`, kind: 'whiteout' });
    if (k % 7 === 3) l.push({ path: `l${k - 3}`, kind: 'whiteout' });
    if (k >= 4 && k % 4 === 1) l.push({ path: `common/f${k - 4}`, kind: 'whiteout' });
    if (k > 0 && k % 5 === 0) l.push({ path: 'opq', kind: 'opaque' }, { path: `opq/f${k}`, kind: 'file', content: `opq ${k}\n` });
    else l.push({ path: `opq/g${k}`, kind: 'file', content: `opq g ${k}\n` });
    if (k % 2 === 0) l.push({ path: 'flip', kind: 'file', content: `flip file ${k}\n` });
    else l.push({ path: `flip/in${k}`, kind: 'file', content: `in ${k}\n` });
    if (k % 10 === 0) l.push({ path: `links/s${k}`, kind: 'symlink', target: `../common/f${k}` });
    bottomUp.push(l);
  }
  return bottomUp.reverse();
}

/**
 * Four layers (top first) that together show about 10k entries in `big/`: thousands of files per
 * layer with names of varying length, whiteouts of 500 names in two layers, files overwritten
 * from above, and subdirectories.
 */
export function bigDirectory(): Layer[] {
  const name = (p: string, i: number): string => `big/${p}${String(i).padStart(5, '0')}${'x'.repeat(i % 37)}`;
  const files = (p: string, from: number, to: number, tag: string): Entry[] => {
    const out: Entry[] = [];
    for (let i = from; i < to; i++) out.push({ path: name(p, i), kind: 'file', content: `${tag} ${i}\n` });
    return out;
  };
  const whiteouts = (p: string, from: number, to: number): Entry[] => {
    const out: Entry[] = [];
    for (let i = from; i < to; i++) out.push({ path: name(p, i), kind: 'whiteout' });
    return out;
  };
  const l3 = files('f', 0, 4500, 'bottom');
  const l2 = [...files('f', 4500, 7500, 'second'), ...whiteouts('f', 0, 500)];
  const l1 = [...files('g', 0, 2500, 'third'), ...files('f', 4500, 4700, 'third overwrites')];
  for (let i = 0; i < 50; i++) l1.push({ path: `big/d${String(i).padStart(3, '0')}/inner`, kind: 'file', content: `d${i}\n` });
  const l0 = [...files('h', 0, 1000, 'top'), ...whiteouts('f', 7000, 7500)];
  return [l0, l1, l2, l3];
}
