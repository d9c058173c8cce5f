// A private image store per test and a small image to run: examples/layers/base plus a static
// busybox as /bin/sh, with the objects a layer must keep (hard links, a symlink, a FIFO, a device,
// setuid, xattrs incl. security.capability, nanosecond mtimes).
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupDirs } from '../../src/image/cgroups.js';
import { run, runOk, type RunResult } from './exec.js';
import { examplesDir, strataBin } from './paths.js';
import { tempDir } from './tmp.js';

export interface TestStore {
  dir: string;
  env: NodeJS.ProcessEnv;
  /** Runs bin/strata with STRATA_STORE set to this store. */
  strata: (args: readonly string[], timeoutMs?: number) => RunResult;
  /** Like strata(), failing with its stderr unless it exits 0; returns stdout. */
  ok: (args: readonly string[], timeoutMs?: number) => string;
}

/** A fresh store below a temp dir; at teardown, mounts below it are detached by tempDir's removal. */
export function testStore(t: ExecutionContext, base = tempDir(t, 'st')): TestStore {
  const dir = path.join(base, 'store');
  // (run before the store goes: containers a failing test left running are removed, with their
  // monitors, which would write into the store again when their command ends, after the test's
  // directory is gone; then the control groups of containers whose monitor did not get to remove them)
  t.teardown(() => {
    const ids = fs.existsSync(path.join(dir, 'containers')) ? fs.readdirSync(path.join(dir, 'containers')) : [];
    if (ids.length > 0) run(strataBin, ['rm', '-f', '--store', dir, ...ids], { timeoutMs: 120_000 });
    for (const d of ids.flatMap((id) => cgroupDirs(id))) {
      try {
        fs.rmdirSync(d);
      } catch {
        // still in use: a test's process the kill missed
      }
    }
  });
  const env = { ...process.env, STRATA_STORE: dir };
  const strata = (args: readonly string[], timeoutMs = 300_000): RunResult => run(strataBin, args, { env, timeoutMs });
  const ok = (args: readonly string[], timeoutMs?: number): string => {
    const r = strata(args, timeoutMs);
    if (r.status !== 0) throw new Error(`${r.command}: status ${r.status}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  return { dir, env, strata, ok };
}

export const BUSYBOX = '/bin/busybox';

/** Writes the rootfs described above into `root`. */
export function buildRootfs(root: string): void {
  runOk('cp', ['-a', '--', path.join(examplesDir, 'layers', 'base'), root]);
  for (const d of ['proc', 'sys', 'dev', 'tmp', 'data']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'cat', 'ls', 'echo', 'rm', 'mkdir', 'touch', 'chmod', 'ln', 'stat', 'sha256sum', 'sleep', 'true', 'false', 'kill', 'mknod', 'setfattr', 'cp', 'find']) {
    fs.symlinkSync('busybox', path.join(root, 'bin', a));
  }
  fs.writeFileSync(path.join(root, 'data/a'), 'shared inode\n');
  fs.linkSync(path.join(root, 'data/a'), path.join(root, 'data/a-link'));
  fs.symlinkSync('../etc/motd', path.join(root, 'data/motd-link'));
  runOk('mkfifo', [path.join(root, 'data/fifo')]);
  runOk('mknod', [path.join(root, 'data/null'), 'c', '1', '3']);
  fs.writeFileSync(path.join(root, 'data/suid'), '#!/bin/sh\n');
  fs.chmodSync(path.join(root, 'data/suid'), 0o4755);
  fs.chownSync(path.join(root, 'data/a'), 1234, 5678);
  runOk('setfattr', ['-n', 'user.note', '-v', 'kept', path.join(root, 'data/a')]);
  runOk('setfattr', ['-n', 'security.capability', '-v', '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=', path.join(root, 'data/suid')]);
  runOk('touch', ['-h', '-d', '2021-02-03 04:05:06.123456789', path.join(root, 'data/a'), path.join(root, 'data/motd-link')]);
}

/** A tar of the rootfs (GNU tar, xattrs kept), ready for `strata image import`. */
export function rootfsTar(t: ExecutionContext, base: string): string {
  const root = path.join(base, 'rootfs');
  buildRootfs(root);
  const tar = path.join(base, 'rootfs.tar');
  runOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', root, '-cf', tar, '.']);
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  return tar;
}
