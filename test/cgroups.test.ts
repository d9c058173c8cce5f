// The cgroup v2 side of src/image/cgroups.ts, against a directory laid out as a v2 hierarchy (this
// machine's controllers are all on v1 hierarchies, where run-options.test.ts and lifecycle.test.ts
// check limits and stats through the kernel): which files get which values, and how a sample reads
// them back. The values follow the kernel's cgroup-v2.rst and runc's conversions.

import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupDirs, createCgroup, oomKilled, parseBlockIo, sampleCgroup } from '../src/image/cgroups.js';
import { tempDir } from './helpers/tmp.js';

const MiB = 2 ** 20;

test('v2: the limits in memory.max, memory.swap.max, cpu.max, cpu.weight, pids.max; the controllers handed down; a sample as docker counts it', (t) => {
  const root = tempDir(t, 'cg2');
  fs.writeFileSync(path.join(root, 'cgroup.controllers'), 'cpuset cpu io memory hugetlb pids rdma misc\n');
  const id = 'c'.repeat(64);
  const dir = path.join(root, 'strata', id);
  // (the kernel makes a group's interface files with it; here the one that is looked for before it is written)
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'memory.swap.max'), 'max\n');
  const seen: string[] = [];
  const dirs = createCgroup(id, { memory: 64 * MiB, memorySwap: 96 * MiB, nanoCpus: 1.5e9, cpuShares: 512, pidsLimit: 50 }, root);
  t.deepEqual(dirs, [dir]);
  t.deepEqual(cgroupDirs(id, root), [dir]);
  const read = (f: string): string => fs.readFileSync(path.join(dir, f), 'utf8');
  seen.push(read('memory.max'), read('memory.swap.max'), read('cpu.max'), read('cpu.weight'), read('pids.max'));
  t.deepEqual(seen, [String(64 * MiB), String(32 * MiB), '150000 100000', '20', '50'], 'swap.max is the swap alone: memory-swap less memory');
  // (each write to cgroup.subtree_control enables one controller; a file keeps the last: io, the last one handed down)
  t.is(fs.readFileSync(path.join(root, 'strata', 'cgroup.subtree_control'), 'utf8'), '+io');
  createCgroup(id, { memory: 64 * MiB, memorySwap: -1 }, root);
  t.is(read('memory.swap.max'), 'max');

  // A sample: memory.current less inactive_file; the limit, or the host's memory where there is none; usage_usec in ns.
  fs.writeFileSync(path.join(dir, 'memory.current'), `${40 * MiB}\n`);
  fs.writeFileSync(path.join(dir, 'memory.stat'), `anon ${30 * MiB}\nfile ${10 * MiB}\ninactive_file ${8 * MiB}\nactive_file ${2 * MiB}\n`);
  fs.writeFileSync(path.join(dir, 'cpu.stat'), 'usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n');
  fs.writeFileSync(path.join(dir, 'pids.current'), '3\n');
  t.deepEqual(sampleCgroup(id, 24 * 1024 * MiB, root), { cpuNs: 1234567000, memory: 32 * MiB, memoryLimit: 64 * MiB, pids: 3, blockRead: 0, blockWrite: 0 },
    'no io.stat: no block I/O');
  // block I/O: rbytes and wbytes summed over the devices
  fs.writeFileSync(path.join(dir, 'io.stat'), '8:0 rbytes=4096 wbytes=1048576 rios=1 wios=8 dbytes=0 dios=0\n254:0 rbytes=8192 wbytes=0 rios=2 wios=0 dbytes=0 dios=0\n');
  t.like(sampleCgroup(id, 24 * 1024 * MiB, root), { blockRead: 12288, blockWrite: 1048576 });
  fs.writeFileSync(path.join(dir, 'memory.max'), 'max\n');
  t.is(sampleCgroup(id, 24 * 1024 * MiB, root)!.memoryLimit, 24 * 1024 * MiB);
  t.is(sampleCgroup('d'.repeat(64), 1, root), null, 'a container without a group');

  t.false(oomKilled([dir]));
  fs.writeFileSync(path.join(dir, 'memory.events'), 'low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n');
  t.true(oomKilled([dir]));
});

test('v2: a limit whose controller the host lacks is refused with one line; without limits, no group and no error', (t) => {
  const root = tempDir(t, 'cg2');
  fs.writeFileSync(path.join(root, 'cgroup.controllers'), 'cpu io\n');
  const id = 'e'.repeat(64);
  t.throws(() => createCgroup(id, { pidsLimit: 5 }, root), { message: /no pids controller/ });
  // (a file where the group's directory would go: nothing can be made)
  fs.writeFileSync(path.join(root, 'strata'), '');
  t.deepEqual(createCgroup(id, undefined, root), []);
});

test('v1: block I/O from blkio.throttle.io_service_bytes_recursive, Read and Write summed over the devices', (t) => {
  const text = '8:0 Read 4096\n8:0 Write 1048576\n8:0 Sync 4096\n8:0 Async 1048576\n8:0 Discard 0\n8:0 Total 1052672\n' +
    '254:0 Read 8192\n254:0 Write 512\n254:0 Total 8704\nTotal 1061376\n';
  t.deepEqual(parseBlockIo(text, false), { blockRead: 12288, blockWrite: 1049088 });
  t.deepEqual(parseBlockIo('Total 0\n', false), { blockRead: 0, blockWrite: 0 });
});
