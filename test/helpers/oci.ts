// OCI layers (`.wh.NAME` whiteouts, `.wh..wh..opq` opaque markers) converted to the kernel's
// format, so that a kernel overlay mount can serve as the oracle for OCI layers too.
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './exec.js';
import { OCI_OPAQUE_NAME, OCI_WHITEOUT_PREFIX, OPAQUE_XATTR } from './layers.js';
import { absBytes, keyOf, pyPath } from './names.js';
import { OPS, python } from './python.js';

/**
 * Copies each OCI layer (`cp -a`) to `destRoot/<i>` and rewrites it in kernel format:
 * - `.wh..wh..opq` in D → D gets trusted.overlay.opaque=y;
 * - `.wh.X` with no X in the same layer → character device 0/0 named X;
 * - `.wh.X` next to a directory X of the same layer → X becomes opaque (the whiteout removes
 *   the lower X, the layer's own X starts afresh); next to a non-directory X → dropped (X hides
 *   the lower X by itself);
 * - other `.wh..wh.*` meta files (aufs) are removed.
 * Directory mtimes are restored afterwards, so the copies differ from the originals only in format.
 */
export function ociToKernel(layers: readonly string[], destRoot: string): string[] {
  fs.mkdirSync(destRoot, { recursive: true });
  return layers.map((src, i) => {
    const dest = path.join(destRoot, String(i));
    runOk('cp', ['-a', '--', src, dest]);
    const ops: (string | number)[][] = [];
    const touchedDirs = new Set<string>();
    const join = (dir: string, name: string): string => (dir === '' ? name : `${dir}/${name}`);
    walkDirs(dest, (dir, names) => {
      const present = new Set(names);
      for (const name of names) {
        if (!name.startsWith(OCI_WHITEOUT_PREFIX)) continue;
        ops.push(['rm', pyPath(absBytes(dest, join(dir, name)))]);
        touchedDirs.add(dir);
        if (name === OCI_OPAQUE_NAME) {
          ops.push(['setxattr', pyPath(absBytes(dest, dir)), OPAQUE_XATTR, Buffer.from('y').toString('hex')]);
          continue;
        }
        if (name.startsWith(OCI_WHITEOUT_PREFIX + OCI_WHITEOUT_PREFIX)) continue;
        const hidden = join(dir, name.slice(OCI_WHITEOUT_PREFIX.length));
        if (!present.has(name.slice(OCI_WHITEOUT_PREFIX.length))) {
          ops.push(['mknod', pyPath(absBytes(dest, hidden)), fs.constants.S_IFCHR, 0, 0]);
        } else if (fs.lstatSync(absBytes(dest, hidden)).isDirectory()) {
          ops.push(['setxattr', pyPath(absBytes(dest, hidden)), OPAQUE_XATTR, Buffer.from('y').toString('hex')]);
        }
      }
    });
    for (const dir of touchedDirs) {
      const st = fs.lstatSync(absBytes(src, dir), { bigint: true });
      ops.push(['utime', pyPath(absBytes(dest, dir)), st.atimeNs.toString(), st.mtimeNs.toString()]);
    }
    if (ops.length) python<boolean>(OPS, ops);
    return dest;
  });
}

/**
 * Calls `visit(dir, names)` for `root` and every directory below it (symlinks not followed);
 * `dir` is relative ('' for the root), and it and the names are keys (see names.ts).
 */
export function walkDirs(root: string, visit: (dir: string, names: string[]) => void): void {
  const stack = [''];
  while (stack.length) {
    const dir = stack.pop()!;
    const ents = fs.readdirSync(absBytes(root, dir), { withFileTypes: true, encoding: 'buffer' });
    const names = ents.map((e) => keyOf(e.name));
    visit(dir, names);
    ents.forEach((e, i) => {
      if (e.isDirectory()) stack.push(dir === '' ? names[i]! : `${dir}/${names[i]}`);
    });
  }
}
