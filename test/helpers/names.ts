// File names are bytes. Tests name paths with strings ("keys"): a name that is valid UTF-8 is
// itself; any other name has each byte >= 0x80 written as \xNN (its ASCII bytes stay). Keys of
// several components join them with '/'. (A valid name that literally contains `\xNN` would be
// misread; test data avoids backslashes.)
import path from 'node:path';

/** Key of one name or of a '/'-separated path given as bytes. */
export function keyOf(bytes: Buffer): string {
  const s = bytes.toString('utf8');
  if (Buffer.from(s, 'utf8').equals(bytes)) return s;
  // escape per component, so that valid components stay readable
  const parts: string[] = [];
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i === bytes.length || bytes[i] === 0x2f) {
      const comp = bytes.subarray(start, i);
      const cs = comp.toString('utf8');
      if (Buffer.from(cs, 'utf8').equals(comp)) parts.push(cs);
      else parts.push([...comp].map((b) => (b >= 0x80 ? `\\x${b.toString(16).padStart(2, '0')}` : String.fromCharCode(b))).join(''));
      start = i + 1;
    }
  }
  return parts.join('/');
}

/** The bytes a key stands for. */
export function bytesOf(key: string): Buffer {
  if (!/\\x[0-9a-f]{2}/.test(key)) return Buffer.from(key, 'utf8');
  const out: Buffer[] = [];
  for (let i = 0; i < key.length; ) {
    const m = /^\\x([0-9a-f]{2})/.exec(key.slice(i, i + 4));
    if (m) {
      out.push(Buffer.from([parseInt(m[1]!, 16)]));
      i += 4;
    } else {
      const cp = key.codePointAt(i)!;
      const ch = String.fromCodePoint(cp);
      out.push(Buffer.from(ch, 'utf8'));
      i += ch.length;
    }
  }
  return Buffer.concat(out);
}

/** `root/rel` as bytes, for fs calls; rel '' or '.' is the root itself. */
export function absBytes(root: string, rel: string): Buffer {
  if (rel === '' || rel === '.') return Buffer.from(root);
  return Buffer.concat([Buffer.from(path.join(root, '/')), bytesOf(rel)]);
}

/** For the Python helpers: a path they must use byte for byte. */
export function pyPath(p: Buffer | string): string {
  return 'hex:' + Buffer.from(p).toString('hex');
}
