// What the machine itself does to a benchmark's numbers: CPU time the hypervisor takes from this
// VM (steal), what a fresh page of memory costs (on a VM that hands its free memory back to the
// host, every page a process touches first may wait for the host), and a DAMON scheme that pages
// out memory nobody touched for a while (the page cache of the layers with it, so that a "warm"
// row may read from disk).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** CPU time of all CPUs since boot, in USER_HZ ticks: the total, and what the host took (steal). */
export interface HostTicks {
  total: number;
  steal: number;
}

/** Parses the first line of /proc/stat ("cpu  user nice system idle iowait irq softirq steal guest guest_nice"). */
export function parseProcStat(text: string): HostTicks | null {
  const line = text.split('\n', 1)[0] ?? '';
  const f = line.trim().split(/\s+/);
  if (f[0] !== 'cpu' || f.length < 9) return null;
  const v = f.slice(1, 9).map(Number);
  if (v.some((x) => !Number.isFinite(x))) return null;
  // (guest time is counted in user time already)
  return { total: v.reduce((a, b) => a + b, 0), steal: v[7]! };
}

export function hostTicks(): HostTicks | null {
  try {
    return parseProcStat(readFileSync('/proc/stat', 'latin1'));
  } catch {
    return null;
  }
}

/**
 * Microseconds to fault in one fresh page of anonymous memory (32 MiB touched page by page): under
 * 1 us on bare metal; on this project's VM type 3-5 us, and more when the host is short of memory.
 * Every process start and every heap growth pays it.
 */
export function pageFaultMicros(): number {
  const pages = 8192;
  const t0 = process.hrtime.bigint();
  const b = Buffer.allocUnsafeSlow(pages * 4096);
  for (let i = 0; i < b.length; i += 4096) b[i] = 1;
  return Number(process.hrtime.bigint() - t0) / 1e3 / pages;
}

const read = (p: string): string | null => {
  try {
    return readFileSync(p, 'latin1').trim();
  } catch {
    return null;
  }
};

const entries = (p: string): string[] => {
  try {
    return readdirSync(p).filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
};

/**
 * The DAMON schemes running here that page memory out, described in one line each (e.g. "pageout of
 * memory (nearly) untouched for 60 s or more"); empty when there is none. `root`: the DAMON sysfs
 * directory.
 */
export function damonPageout(root = '/sys/kernel/mm/damon/admin'): string[] {
  const out: string[] = [];
  for (const k of entries(join(root, 'kdamonds'))) {
    const kd = join(root, 'kdamonds', k);
    if (read(join(kd, 'state')) !== 'on') continue;
    for (const c of entries(join(kd, 'contexts'))) {
      const ctx = join(kd, 'contexts', c);
      const aggrUs = Number(read(join(ctx, 'monitoring_attrs', 'intervals', 'aggr_us')));
      for (const s of entries(join(ctx, 'schemes'))) {
        const scheme = join(ctx, 'schemes', s);
        if (read(join(scheme, 'action')) !== 'pageout') continue;
        const minAge = Number(read(join(scheme, 'access_pattern', 'age', 'min')));
        const idle = Number.isFinite(aggrUs) && Number.isFinite(minAge) ? (aggrUs * minAge) / 1e6 : NaN;
        out.push(Number.isFinite(idle) ? `pageout of memory (nearly) untouched for ${idle} s or more` : 'pageout of (nearly) untouched memory');
      }
    }
  }
  return out;
}

/** What decides the cost of waking a thread that waits for a FUSE reply (see wakeupNote). */
export interface WakeupTuning {
  /** The cpuidle driver ("haltpoll" on KVM guests), or null. */
  idleDriver: string | null;
  /** haltpoll's guest_halt_poll_ns: how long an idle vCPU polls before it halts (0: it halts at once). */
  haltPollNs: number | null;
  /**
   * The FUSE module's `wake_here` (a parameter of this machine kind's kernel, not of upstream Linux): Y
   * wakes the caller waiting for a reply on the CPU that wrote the reply. null where the kernel has no such parameter.
   */
  fuseWakeHere: boolean | null;
  /** The FUSE module's enable_uring. */
  fuseUring: boolean | null;
}

const yes = (v: string | null): boolean | null => (v === null ? null : v === 'Y' || v === '1');

/** The wakeup settings of this machine; `sys`: the sysfs root. */
export function wakeupTuning(sys = '/sys'): WakeupTuning {
  const ns = read(join(sys, 'module/haltpoll/parameters/guest_halt_poll_ns'));
  return {
    idleDriver: read(join(sys, 'devices/system/cpu/cpuidle/current_driver')),
    haltPollNs: ns === null || !Number.isFinite(Number(ns)) ? null : Number(ns),
    fuseWakeHere: yes(read(join(sys, 'module/fuse/parameters/wake_here'))),
    fuseUring: yes(read(join(sys, 'module/fuse/parameters/enable_uring'))),
  };
}

/** One sentence on the settings that move every FUSE row (the kernel's overlay makes no round trip). */
export function wakeupNote(w: Partial<WakeupTuning> | undefined): string {
  if (!w) return '';
  const parts: string[] = [];
  if (w.idleDriver === 'haltpoll' && w.haltPollNs !== null && w.haltPollNs !== undefined) {
    parts.push(w.haltPollNs === 0 ? 'idle vCPUs halt at once (haltpoll, guest_halt_poll_ns 0)' : `idle vCPUs poll ${w.haltPollNs} ns before they halt (haltpoll)`);
  }
  if (w.fuseWakeHere === true || w.fuseWakeHere === false) {
    parts.push(`the FUSE module's wake_here is ${w.fuseWakeHere ? 'Y (a reply wakes its caller on the replying CPU)' : 'N (a reply wakes its caller where the scheduler puts it)'}`);
  }
  return parts.length ? `Wakeups: ${parts.join('; ')}; both move every FUSE row, strata's and fuse-overlayfs's alike.` : '';
}
