// Descriptor steps on one side of a differential pair (the kernel's overlay or strata): one
// long-lived driver per user (fd-driver.ts), answers reduced to what must agree between the two
// sides: stat results with inode numbers as labels in order of first sight and times made during
// the test as "new".
import type { Side } from './ops-pair.js';
import { FdDriver, ROOT, type FdAnswer, type FdCmd, type FdUser } from './fd-driver.js';
import { normTime } from './ops-tree.js';

/** One step: a driver command, run by `who` (a user name of the side; root by default). */
export interface FdStep {
  who?: string;
  cmd: FdCmd;
  /** What the kernel must answer: proves the scenario does what it says (not compared with strata). */
  expect?: unknown;
}

const TYPES: Record<number, string> = { 0o100000: 'file', 0o040000: 'dir', 0o120000: 'symlink', 0o010000: 'fifo', 0o020000: 'chr' };

interface RawStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: string;
  mtime: string;
}

function isStat(v: unknown): v is RawStat {
  return typeof v === 'object' && v !== null && 'mode' in v && 'ino' in v;
}

/** Commands that act through a descriptor label (cmd[1]), and open, which makes one. */
const FD_COMMANDS = new Set(['open', 'fstat', 'fchmod', 'fchown', 'futimens', 'ftruncate', 'fallocate', 'fsetxattr', 'fgetxattr',
  'fremovexattr', 'flistxattr', 'read', 'pread', 'write', 'pwrite', 'lseek', 'fsync', 'fdatasync', 'getdents', 'copy_file_range']);

export class FdSide {
  private readonly drivers = new Map<string, FdDriver>();
  private labels = new Map<string, string>();
  /** Raw st_ino of each open descriptor when it was opened. */
  private readonly openIno = new Map<string, string>();

  /** `label` names inode numbers (default: labels of this side, in order of first sight). */
  constructor(readonly side: Side, users: readonly FdUser[] = [ROOT], private readonly label?: (ino: bigint) => string) {
    for (const u of users) this.drivers.set(u.name, new FdDriver(side.mnt, u));
  }

  get name(): string {
    return this.side.name;
  }

  driver(who = 'root'): FdDriver {
    const d = this.drivers.get(who);
    if (!d) throw new Error(`no fd driver for user ${who}`);
    return d;
  }

  /** Inode number labels restart (a number freed by one object may come back for another). */
  resetLabels(): void {
    this.labels = new Map();
  }

  inoLabel(ino: string): string {
    if (this.label) return this.label(BigInt(ino));
    let l = this.labels.get(ino);
    if (!l) this.labels.set(ino, (l = `ino${this.labels.size + 1}`));
    return l;
  }

  /** The raw answer of one step. */
  raw(step: FdStep): FdAnswer {
    return this.driver(step.who).call(step.cmd);
  }

  /** One step, its answer normalised for comparison. */
  run(step: FdStep): unknown {
    return this.norm(this.raw(step));
  }

  /**
   * One command of a random sequence: its answer, then (while the descriptor it names is open)
   * fstat through that descriptor and whether st_ino is still the one it had when opened.
   */
  fdOp(who: string, cmd: FdStep['cmd']): unknown {
    const d = this.driver(who);
    const a = d.call(cmd);
    const label = typeof cmd[1] === 'string' ? cmd[1] : '';
    if (cmd[0] === 'close') this.openIno.delete(label);
    if (!FD_COMMANDS.has(cmd[0]) || ('err' in a && cmd[0] === 'open')) return this.norm(a);
    const st = d.call(['fstat', label]);
    if (cmd[0] === 'open' && 'ok' in st && isStat(st.ok)) this.openIno.set(label, st.ok.ino);
    const sameIno = 'ok' in st && isStat(st.ok) ? st.ok.ino === this.openIno.get(label) : undefined;
    return { r: this.norm(a), fstat: this.norm(st), sameIno };
  }

  norm(a: FdAnswer): unknown {
    if ('err' in a) return a;
    return isStat(a.ok) ? { ok: this.stat(a.ok) } : a;
  }

  stat(s: RawStat): Record<string, unknown> {
    const type = TYPES[s.mode & 0o170000] ?? `mode${(s.mode & 0o170000).toString(8)}`;
    const r: Record<string, unknown> = {
      type,
      perm: (s.mode & 0o7777).toString(8),
      uid: s.uid,
      gid: s.gid,
      nlink: s.nlink,
      ino: this.inoLabel(s.ino),
      mtime: normTime(BigInt(s.mtime)),
    };
    if (type !== 'dir') r.size = s.size;
    return r;
  }

  /** Ends every driver (closing its descriptors, killing what it started). Never throws. */
  close(): void {
    for (const d of this.drivers.values()) d.close();
  }
}
