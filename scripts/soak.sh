#!/usr/bin/env bash
# Soak: the random-operations test (test/random-ops.test.ts) over many more seeds than CI runs.
#
#   scripts/soak.sh [FIRST [LAST]]      seeds FIRST..LAST (default 1..200), in batches
#
# Environment: STRATA_OPS (ops per seed, default 500), BATCH (seeds per ava run, default 20),
# STRATA_SHRINK=1 (shrink every failure to a small op list in .cache/random-ops-seed<N>.json),
# NO_BUILD=1 (skip `make build`), KEEP_GOING=0 (stop at the first failing batch), TMPFS=1 (the seeds run
# with each upper on a tmpfs of its own, as random-ops' STRATA_TMPFS_SEEDS), REDIRECT=1 (with
# redirect_dir=on on both sides, as STRATA_REDIRECT_SEEDS), USERXATTR=1 (with userxattr on both sides, as
# STRATA_USERXATTR_SEEDS), METACOPY=1 (with metacopy=on over a kernel-written upper, as STRATA_METACOPY_SEEDS),
# HANDMADE=1 (over an upper made by hand, as STRATA_HANDMADE_SEEDS), IDMAP=1 (with an owner mapping, the kernel
# over idmapped layers, as STRATA_IDMAP_SEEDS).
# Each batch's output goes to .cache/soak/seeds-A-B.log; the failing seeds and their repro
# commands are listed at the end. Exit status: 0 if every seed passed.
set -euo pipefail
cd "$(dirname "$0")/.."

first=${1:-1}
last=${2:-200}
batch=${BATCH:-20}
export STRATA_OPS=${STRATA_OPS:-500}
keep_going=${KEEP_GOING:-1}

if [[ $(id -u) -ne 0 ]]; then echo "soak: needs root (kernel overlay and FUSE mounts)" >&2; exit 2; fi
if [[ ${NO_BUILD:-0} != 1 ]]; then make build >/dev/null; fi

logdir=.cache/soak
mkdir -p "$logdir"
failed=()
start=$(date +%s)
for ((a = first; a <= last; a += batch)); do
  b=$((a + batch - 1 < last ? a + batch - 1 : last))
  log="$logdir/seeds-$a-$b.log"
  printf 'soak: seeds %d-%d (%d ops each) ... ' "$a" "$b" "$STRATA_OPS"
  # a seed of 1000 ops can take minutes: more than ava's default of 5 without a result
  if [[ ${IDMAP:-0} == 1 ]]; then seeds=(STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS="$a-$b")
  elif [[ ${HANDMADE:-0} == 1 ]]; then seeds=(STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS="$a-$b" STRATA_IDMAP_SEEDS=)
  elif [[ ${METACOPY:-0} == 1 ]]; then seeds=(STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS="$a-$b" STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS=)
  elif [[ ${REDIRECT:-0} == 1 ]]; then seeds=(STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS="$a-$b" STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS=)
  elif [[ ${USERXATTR:-0} == 1 ]]; then seeds=(STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS="$a-$b" STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS=)
  elif [[ ${TMPFS:-0} == 1 ]]; then seeds=(STRATA_SEEDS= STRATA_TMPFS_SEEDS="$a-$b" STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS=)
  else seeds=(STRATA_SEEDS="$a-$b" STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS=); fi
  if env "${seeds[@]}" ./node_modules/.bin/ava --timeout=60m dist/test/random-ops.test.js >"$log" 2>&1; then
    echo ok
  else
    bad=$(grep -oE '\[fail\]: seed [0-9]+' "$log" | grep -oE '[0-9]+$' | sort -n | tr '\n' ' ' || true)
    echo "FAILED: ${bad:-see $log}"
    failed+=(${bad:-"$a-$b"})
    if [[ $keep_going == 0 ]]; then break; fi
  fi
done

echo "soak: $((first))..$((last)) in $(($(date +%s) - start)) s, logs in $logdir/"
if ((${#failed[@]})); then
  echo "soak: failing seeds: ${failed[*]}"
  for s in "${failed[@]}"; do
    if [[ ${IDMAP:-0} == 1 ]]; then seeds="STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS=$s"
    elif [[ ${HANDMADE:-0} == 1 ]]; then seeds="STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS=$s STRATA_IDMAP_SEEDS="
    elif [[ ${METACOPY:-0} == 1 ]]; then seeds="STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS=$s STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS="
    elif [[ ${REDIRECT:-0} == 1 ]]; then seeds="STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS=$s STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS="
    elif [[ ${USERXATTR:-0} == 1 ]]; then seeds="STRATA_SEEDS= STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS=$s STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS="
    elif [[ ${TMPFS:-0} == 1 ]]; then seeds="STRATA_SEEDS= STRATA_TMPFS_SEEDS=$s STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS="
    else seeds="STRATA_SEEDS=$s STRATA_TMPFS_SEEDS= STRATA_REDIRECT_SEEDS= STRATA_USERXATTR_SEEDS= STRATA_METACOPY_SEEDS= STRATA_HANDMADE_SEEDS= STRATA_IDMAP_SEEDS="; fi
    echo "  repro: $seeds STRATA_OPS=$STRATA_OPS ./node_modules/.bin/ava --timeout=60m dist/test/random-ops.test.js"
  done
  exit 1
fi
echo "soak: all seeds agree with the kernel"
