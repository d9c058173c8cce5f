// A tar file as a comparable map: name → type, mode, owner, size, content hash, link target,
// mtime (seconds), device numbers and xattrs. Names lose "./" and trailing "/"; a hard link gets
// its target's content hash and the group of names sharing it, since tools pick different first
// names for a group.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { extract } from 'tar-stream';

export interface TarInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  sha256?: string;
  linkname?: string;
  mtime: number;
  dev?: string;
  xattrs: Record<string, string>;
  /** For hard-linked files: all names of the group, sorted. */
  links?: string[];
}

function clean(name: string): string {
  return name.replace(/^\.\//, '').replace(/\/$/, '');
}

export async function tarEntries(file: string): Promise<Map<string, TarInfo>> {
  const out = new Map<string, TarInfo>();
  const links: [string, string][] = [];
  const ex = extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const hash = createHash('sha256');
      stream.on('data', (d: unknown) => hash.update(d as Buffer));
      stream.on('end', () => {
        const name = clean(h.name);
        const pax = (h.pax ?? {}) as Record<string, string>;
        const xattrs: Record<string, string> = {};
        for (const [k, v] of Object.entries(pax)) if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice(13)] = Buffer.from(v, 'latin1').toString('hex');
        if (name !== '' && name !== '.') {
          const info: TarInfo = { type: h.type ?? 'file', mode: h.mode ?? 0, uid: h.uid ?? 0, gid: h.gid ?? 0, size: h.size ?? 0,
            mtime: Math.floor((h.mtime?.getTime() ?? 0) / 1000), xattrs };
          if (h.type === 'file') info.sha256 = hash.digest('hex');
          if (h.type === 'symlink') info.linkname = h.linkname ?? '';
          if (h.type === 'character-device' || h.type === 'block-device') info.dev = `${h.devmajor}:${h.devminor}`;
          if (h.type === 'link') links.push([name, clean(h.linkname ?? '')]);
          out.set(name, info);
        }
        next();
      });
      stream.resume();
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  fs.createReadStream(file).pipe(ex);
  await done;
  // Hard links: the entry takes its target's description; every member lists the group.
  const groups = new Map<string, string[]>();
  for (const [name, target] of links) {
    const t = out.get(target);
    if (!t) continue;
    out.set(name, { ...t, xattrs: t.xattrs });
    const g = groups.get(target) ?? [target];
    g.push(name);
    groups.set(target, g);
  }
  for (const g of groups.values()) {
    g.sort();
    for (const n of g) out.set(n, { ...out.get(n)!, links: g });
  }
  return out;
}

/** Human-readable differences between two tar maps (first `limit`). */
export function diffTarEntries(actual: Map<string, TarInfo>, expected: Map<string, TarInfo>, limit = 20): string[] {
  const diffs: string[] = [];
  for (const name of [...new Set([...actual.keys(), ...expected.keys()])].sort()) {
    const a = actual.get(name);
    const e = expected.get(name);
    if (!a) diffs.push(`${name}: missing`);
    else if (!e) diffs.push(`${name}: unexpected ${a.type}`);
    else if (JSON.stringify(a) !== JSON.stringify(e)) diffs.push(`${name}: ${JSON.stringify(a)}, expected ${JSON.stringify(e)}`);
    if (diffs.length >= limit) break;
  }
  return diffs;
}
