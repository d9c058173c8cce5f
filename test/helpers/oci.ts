// OCI layers (`.wh.NAME` whiteouts, `.wh..wh..opq` opaque markers) converted to the kernel's
// format, so that a kernel overlay mount can serve as the oracle for OCI layers too.
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './exec.js';
import { OCI_OPAQUE_NAME, OCI_WHITEOUT_PREFIX, OPAQUE_XATTR } from './layers.js';
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
    walkDirs(dest, (dir, names) => {
      const present = new Set(names);
      for (const name of names) {
        if (!name.startsWith(OCI_WHITEOUT_PREFIX)) continue;
        const meta = path.join(dir, name);
        ops.push(['rm', meta]);
        touchedDirs.add(dir);
        if (name === OCI_OPAQUE_NAME) {
          ops.push(['setxattr', dir, OPAQUE_XATTR, Buffer.from('y').toString('hex')]);
          continue;
        }
        if (name.startsWith(OCI_WHITEOUT_PREFIX + OCI_WHITEOUT_PREFIX)) continue;
        const hidden = name.slice(OCI_WHITEOUT_PREFIX.length);
        const target = path.join(dir, hidden);
        if (!present.has(hidden)) {
          ops.push(['mknod', target, fs.constants.S_IFCHR, 0, 0]);
        } else if (fs.lstatSync(target).isDirectory()) {
          ops.push(['setxattr', target, OPAQUE_XATTR, Buffer.from('y').toString('hex')]);
        }
      }
    });
    for (const dir of touchedDirs) {
      const rel = path.relative(dest, dir);
      const st = fs.lstatSync(rel === '' ? src : path.join(src, rel), { bigint: true });
      ops.push(['utime', dir, st.atimeNs.toString(), st.mtimeNs.toString()]);
    }
    if (ops.length) python<boolean>(OPS, ops);
    return dest;
  });
}

/** Calls `visit(dir, names)` for `root` and every directory below it (symlinks not followed). */
export function walkDirs(root: string, visit: (dir: string, names: string[]) => void): void {
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    const ents = fs.readdirSync(dir, { withFileTypes: true });
    visit(dir, ents.map((e) => e.name));
    for (const e of ents) if (e.isDirectory()) stack.push(path.join(dir, e.name));
  }
}
