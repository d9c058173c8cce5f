// Reads ava's verbose output and prints the plain closing line CI counts:
// "N passed, N failed" (", N skipped" when there are skips). Failed counts every test that did not
// pass: failures, timeouts and uncaught errors as ava reports them; a run that printed no summary
// (a crash before the tests ran) counts as 0 passed, 1 failed.
import { readFileSync } from 'node:fs';

const text = readFileSync(process.argv[2] ?? '/dev/stdin', 'utf8').replace(/\x1b\[[0-9;]*m/g, '');
const count = (re) => {
  const m = text.match(re);
  return m ? Number(m[1]) : 0;
};
// ava prints "N tests passed" only when nothing failed; otherwise count the verbose reporter's ticks.
const ticks = (text.match(/^\s*✔ (?!\[expected fail\])/gm) ?? []).length;
const passed = count(/^\s*(\d+) tests? passed/m) || ticks;
let failed = count(/^\s*(\d+) tests? failed/m) + count(/^\s*(\d+) hooks? failed/m) + count(/^\s*(\d+) unhandled rejections?/m)
  + count(/^\s*(\d+) uncaught exceptions?/m) + count(/^\s*(\d+) tests? remained pending/m);
const skipped = count(/^\s*(\d+) tests? skipped/m) + count(/^\s*(\d+) known failures?/m) + count(/^\s*(\d+) tests? todo/m);
if (passed + failed + skipped === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
