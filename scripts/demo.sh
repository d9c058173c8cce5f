#!/usr/bin/env bash
# Mounts examples/layers (patch over app over base) with strata, shows each layer and the merged
# tree, and unmounts. Needs root and a finished `make build`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA="$ROOT/bin/strata"
LAYERS="$ROOT/examples/layers"

if [[ ! -x "$STRATA" ]]; then
  echo "demo: $STRATA not found; run 'make build' first" >&2
  exit 1
fi

WORK=$(mktemp -d /tmp/strata-demo.XXXXXX)
MNT="$WORK/merged"
mkdir -p "$MNT" "$WORK/upper" "$WORK/work"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if grep -q " $MNT " /proc/self/mounts 2>/dev/null; then
    "$STRATA" umount "$MNT" 2>/dev/null || umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  fi
  rm -rf --one-file-system "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

heading() { printf '\n=== %s ===\n' "$*"; }

# One line per entry: type letter (f file, d directory, l symlink, ...) and path, sorted.
show_tree() {
  (cd "$1" && find . -mindepth 1 -printf '%y  %P\n' | sort -k2)
}

for layer in base app patch; do
  heading "layer $layer ($LAYERS/$layer)"
  show_tree "$LAYERS/$layer"
done

heading "mounting lowerdir=patch:app:base, upperdir and workdir in $WORK"
"$STRATA" mount -o "lowerdir=$LAYERS/patch:$LAYERS/app:$LAYERS/base,upperdir=$WORK/upper,workdir=$WORK/work" "$MNT"
grep " $MNT " /proc/self/mounts

heading "merged view ($MNT)"
show_tree "$MNT"

heading "etc/app.conf: base has log_level=info, patch wins"
cat "$MNT/etc/app.conf"

heading "var/www: app's opaque directory replaced base's"
ls -la "$MNT/var/www"

heading "what was whited out"
for p in bin/old-tool usr/share/doc/legacy var/www/old.html; do
  if [[ -e "$MNT/$p" ]]; then echo "$p: still visible (unexpected)"; else echo "$p: gone"; fi
done

heading "unmounting"
"$STRATA" umount "$MNT"
echo "done"
