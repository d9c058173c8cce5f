#!/bin/bash
# Interleaved A/B of two strata builds on one command: each run mounts LAYERS afresh with build A,
# then with build B (the order alternates from run to run), runs COMMAND with $M set to the
# mountpoint, unmounts, and records the command's wall time and the daemon's CPU time during it
# (perf stat's task-clock when perf is there, else /proc/PID/stat in 10 ms ticks). Prints the
# medians. On a noisy VM (see BENCHMARKS.md: steal, page faults, DAMON) a difference smaller than
# the spread of either side is not a difference.
#
#   scripts/ab.sh [-n RUNS] A_STRATA B_STRATA LAYERS COMMAND
#   scripts/ab.sh -n 20 /work/wt/base/bin/strata bin/strata /l2:/l1:/l0 'find $M/usr > /dev/null'
set -euo pipefail

runs=10
if [ "${1:-}" = -n ]; then runs=$2; shift 2; fi
if [ $# -ne 4 ]; then
  echo "usage: scripts/ab.sh [-n RUNS] A_STRATA B_STRATA LAYERS COMMAND" >&2
  exit 2
fi
a=$1 b=$2 layers=$3 cmd=$4
for bin in "$a" "$b"; do [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable strata" >&2; exit 2; }; done

tmp=$(mktemp -d /tmp/strata-ab.XXXXXX)
mnt=
cleanup() {
  if [ -n "$mnt" ] && grep -q " $mnt " /proc/mounts; then umount -l "$mnt" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

have_perf=0
perf stat -e task-clock -o /dev/null true 2>/dev/null && have_perf=1

# one_run BIN: prints "wall_ms cpu_ms"
one_run() {
  local bin=$1 w pid pf t0 t1 c0 c1 cpu
  w=$(mktemp -d "$tmp/run.XXXXXX")
  mkdir "$w/u" "$w/w" "$w/m"
  mnt=$w/m
  "$bin" mount -o "lowerdir=$layers,upperdir=$w/u,workdir=$w/w" "$w/m" --pid-file "$w/pid" > /dev/null
  pid=$(cat "$w/pid")
  if [ $have_perf = 1 ]; then
    perf stat -e task-clock -x, -p "$pid" -o "$w/perf" &
    pf=$!
    sleep 0.2
  else
    c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  fi
  t0=$(date +%s%N)
  M=$w/m bash -c "$cmd" > /dev/null
  t1=$(date +%s%N)
  if [ $have_perf = 1 ]; then
    kill -INT "$pf"
    wait "$pf" 2>/dev/null || true
    cpu=$(grep task-clock "$w/perf" | cut -d, -f1)
  else
    c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    cpu=$(( (c1 - c0) * 10 ))
  fi
  "$bin" umount "$w/m" > /dev/null
  mnt=
  rm -rf "$w"
  echo "$(( (t1 - t0) / 1000 )) $cpu" | awk '{printf "%.3f %.3f\n", $1 / 1000, $2}'
}

for i in $(seq "$runs"); do
  if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for which in $order; do
    if [ "$which" = A ]; then bin=$a; else bin=$b; fi
    echo "$which $(one_run "$bin")" >> "$tmp/results"
  done
done

python3 - "$tmp/results" "$a" "$b" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    k, wall, cpu = line.split()
    rows.setdefault(k, []).append((float(wall), float(cpu)))
for k, name in (('A', sys.argv[2]), ('B', sys.argv[3])):
    v = rows[k]
    walls = sorted(x[0] for x in v)
    cpus = sorted(x[1] for x in v)
    print(f'{k} {name}: wall {statistics.median(walls):.1f} ms ({walls[0]:.1f}-{walls[-1]:.1f}), '
          f'daemon CPU {statistics.median(cpus):.1f} ms ({cpus[0]:.1f}-{cpus[-1]:.1f}), {len(v)} runs')
EOF
