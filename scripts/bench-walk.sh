#!/usr/bin/env bash
# First find+stat walk of a deep stack after a fresh mount with the page cache dropped:
# strata without its cache, strata on a cold cache (first mount), strata on a warm cache
# (remount), and the kernel overlay, medians of N runs; plus the daemon's peak memory.
# Usage: scripts/bench-walk.sh [RUNS=5] [LAYERS=40] [DIRS=20] [FILES=20]   (as root, after make build)
set -euo pipefail
runs=${1:-5} layers=${2:-40} dirs=${3:-20} files=${4:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
strata="$root/bin/strata"
B=$(mktemp -d /tmp/bw.XXXXXX) # short paths: the kernel takes at most a page of mount options
cleanup() { for m in "$B/m"; do mountpoint -q "$m" && { "$strata" umount "$m" >/dev/null 2>&1 || umount -l "$m"; }; done; rm -rf "$B"; }
trap cleanup EXIT INT TERM
cd "$B"
/usr/bin/python3 - "$layers" "$dirs" "$files" <<'PY'
import os, sys
layers, dirs, files = map(int, sys.argv[1:])
for l in range(layers):
    for d in range(dirs):
        p = f'l{l:02d}/d{d}'
        os.makedirs(p)
        for f in range(files):
            with open(f'{p}/f{l}_{f}', 'w') as fh: fh.write('x')
PY
mkdir m
L=$(ls -d l* | sort | paste -sd:)
walk() { sync; echo 3 > /proc/sys/vm/drop_caches; local t0 t1; t0=$(date +%s.%N); find m -printf '%i %s\n' > /dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'; }
fresh() { rm -rf u w; mkdir u w; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -a nocache cold warm kernel hwm
for ((r = 0; r < runs; r++)); do
  fresh; "$strata" mount -o "lowerdir=$L,upperdir=$B/u,workdir=$B/w" m --no-cache; nocache+=("$(walk)"); "$strata" umount m >/dev/null
  fresh; "$strata" mount -o "lowerdir=$L,upperdir=$B/u,workdir=$B/w" m; cold+=("$(walk)"); "$strata" umount m >/dev/null
  "$strata" mount -o "lowerdir=$L,upperdir=$B/u,workdir=$B/w" m; warm+=("$(walk)")
  hwm+=("$(awk '/VmHWM/ {print $2}' "/proc/$(pgrep -f "__daemon $B/m\$")/status")"); "$strata" umount m >/dev/null
  fresh; mount -t overlay overlay -o "lowerdir=$L,upperdir=$B/u,workdir=$B/w" m; kernel+=("$(walk)"); umount m
done
k=$(printf '%s\n' "${kernel[@]}" | median)
row() { local m; m=$(printf '%s\n' "${@:2}" | median); printf '%-34s %8.3f s  %5.2fx the kernel   (runs: %s)\n' "$1" "$m" "$(awk -v a="$m" -v b="$k" 'BEGIN {print a / b}')" "$(echo "${@:2}" | tr ' ' ',')"; }
echo "first find+stat walk after mount, page cache dropped: $layers layers x $dirs dirs x $files files ($((layers * dirs * files)) files), median of $runs"
row "kernel overlayfs" "${kernel[@]}"
row "strata --no-cache" "${nocache[@]}"
row "strata, cold cache (first mount)" "${cold[@]}"
row "strata, warm cache (remount)" "${warm[@]}"
echo "strata daemon peak RSS (VmHWM) after the walk: $(printf '%s\n' "${hwm[@]}" | median) kB"
