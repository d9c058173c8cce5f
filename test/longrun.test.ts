// A long run keeps the daemon's open descriptors flat: scripts/longrun.ts (the measuring script;
// `make longrun` runs it at full length) drives several clients in parallel through rounds of
// random operations; once the kernel forgets its cached inodes after each round, the daemon must
// be back to the descriptors it had after mounting. Memory is reported by the script, not judged
// here (it is noisy on a shared machine).
import test from 'ava';
import path from 'node:path';
import { run } from './helpers/exec.js';
import { repoRoot } from './helpers/paths.js';

interface Sample { round: number; ops: number; fds: number; fdsAfterForget: number; rssAfterForgetMiB: number }

test('descriptors stay flat over rounds of parallel random operations', (t) => {
  const script = path.join(repoRoot, 'dist', 'scripts', 'longrun.js');
  const r = run(process.execPath, [script, '--clients', '3', '--ops', '6000', '--rounds', '4', '--files', '600', '--json'], { timeoutMs: 240_000 });
  t.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.log(lines.slice(0, -1).join('\n'));
  const { base, samples } = JSON.parse(lines.at(-1)!) as { base: { fds: number }; samples: Sample[] };
  t.is(samples.length, 4);
  t.is(samples.at(-1)!.ops, 3 * 6000);
  // While the kernel holds inodes the daemon holds their directories open; it must not keep more.
  t.true(samples.some((s) => s.fds > base.fds), 'the workload made the daemon open descriptors');
  for (const s of samples) t.is(s.fdsAfterForget, base.fds, `round ${s.round}: ${s.fdsAfterForget} descriptors after the kernel forgot, ${base.fds} after mount`);
});
