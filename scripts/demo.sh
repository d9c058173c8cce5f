#!/usr/bin/env bash
# Mounts examples/layers (patch over app over base) with strata, shows each layer and the merged
# tree, writes through the mount (copy-up, whiteout) and shows the upper; then makes an image of the
# example layers in a private store, runs a command in a container of it, commits the container as
# a new image and shows its history. Needs root and a finished `make build`; the container part
# needs a static busybox (/bin/busybox from busybox-static: installed with apt-get if missing).
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
# A private image store: nothing of the demo lands in /var/lib/strata.
export STRATA_STORE="$WORK/store"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # Whatever is still mounted below the demo directory (deepest first).
  awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    "$STRATA" umount "$m" >/dev/null 2>&1 || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
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

heading "writing through the mount"
echo '+ echo "log_level=trace" >> etc/app.conf   (a lower file: copied up first)'
echo "log_level=trace" >> "$MNT/etc/app.conf"
echo '+ rm bin/hello                              (a lower file: a whiteout hides it)'
rm "$MNT/bin/hello"
echo '+ echo new > srv/new.txt                    (a new file: only in the upper)'
mkdir "$MNT/srv" && echo new > "$MNT/srv/new.txt"

heading "the upper directory ($WORK/upper) now holds the changes"
(cd "$WORK/upper" && find . -mindepth 1 -printf '%M  %P\n' | sort -k2)
echo
echo "bin/hello is a character device 0/0 (the kernel's whiteout format):"
ls -l "$WORK/upper/bin/hello"
echo "the lower layers are untouched: patch/etc/app.conf is still"
sed 's/^/  /' "$LAYERS/patch/etc/app.conf"

heading "unmounting"
"$STRATA" umount "$MNT"

# --- images and containers -------------------------------------------------------------------
if [[ ! -x /bin/busybox ]] || ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
  if command -v apt-get >/dev/null; then
    echo "installing busybox-static (a shell for the container)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static) >/dev/null
  fi
fi
if [[ ! -x /bin/busybox ]]; then
  echo "no static /bin/busybox: skipping the container part of the demo"
  exit 0
fi

heading "an image of the example layers (plus busybox as /bin/sh), in the store $STRATA_STORE"
RO="$WORK/ro"
mkdir -p "$RO" "$WORK/extra/bin"
cp /bin/busybox "$WORK/extra/bin/busybox"
ln -s busybox "$WORK/extra/bin/sh"; ln -s busybox "$WORK/extra/bin/cat"
echo "+ strata mount -o lowerdir=extra:patch:app:base $RO; strata export $RO -o example.tar"
"$STRATA" mount -o "lowerdir=$WORK/extra:$LAYERS/patch:$LAYERS/app:$LAYERS/base" "$RO"
"$STRATA" export "$RO" -o "$WORK/example.tar"
"$STRATA" umount "$RO" >/dev/null
echo "+ strata image import example.tar example:1"
"$STRATA" image import "$WORK/example.tar" example:1
"$STRATA" image ls

heading "strata run --name demo example:1 sh -c '...'"
"$STRATA" run --name demo example:1 sh -c 'echo "in the container: $(cat /etc/hostname), pid $$"; /bin/app; cat /etc/app.conf; echo "changed in the container" > /etc/motd'
echo "(exit status $?)"
"$STRATA" container ls

heading "strata commit -m 'a new motd' demo example:2"
"$STRATA" commit -m 'a new motd' -a 'strata demo' demo example:2
echo
"$STRATA" image history example:2

heading "strata run --rm example:2 cat /etc/motd"
"$STRATA" run --rm example:2 cat /etc/motd

echo
echo "done"
