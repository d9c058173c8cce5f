#!/bin/bash
# Builds a layered Debian root filesystem (as root), for the rootfs tests and benchmarks:
#   l0  debootstrap --variant=minbase bookworm
#   l1  a few packages installed with apt-get in a chroot on a kernel overlay of l0
#   l2  on a kernel overlay of l1:l0: /usr/share/doc emptied (one whiteout per entry), /usr/share/man
#       removed and recreated (an opaque directory), configs edited (copy-ups: /etc/hostname,
#       /etc/skel/.bashrc), one removed (a whiteout: /etc/motd) and one added
# Layers are kept in OUT (default $STRATA_ROOTFS_DIR, else /var/cache/strata/rootfs: outside the
# clone, so CI runs on the same machine reuse them) and reused while their recipe is unchanged:
# OUT/lN.recipe holds a hash of what built lN (and the layers below); a changed recipe rebuilds
# that layer and those above it. Each layer is built in lN.tmp and renamed into place, so an
# interrupted build is never taken for a finished one. --force rebuilds everything.
# Prints the lowerdir string (top first) on its last line: OUT/l2:OUT/l1:OUT/l0
#
# Environment: MIRROR (default http://deb.debian.org/debian), SUITE (bookworm),
# PACKAGES (default "python3 procps less").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${STRATA_ROOTFS_DIR:-/var/cache/strata/rootfs}
FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: $0 [--force] [OUT]"; exit 0 ;;
    -*) echo "build-rootfs: unknown option $arg" >&2; exit 2 ;;
    *) OUT=$(realpath -m "$arg") ;;
  esac
done
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
PACKAGES=${PACKAGES:-python3 procps less}

[ "$(id -u)" = 0 ] || { echo "build-rootfs: must run as root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  echo "build-rootfs: installing debootstrap" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap) >/dev/null
fi
modprobe overlay 2>/dev/null || true

L2_SCRIPT='rm -rf /usr/share/doc/* && rm -rf /usr/share/man && mkdir /usr/share/man &&
echo strata-rootfs > /etc/hostname &&
sed -i "s/^#force_color_prompt=yes/force_color_prompt=yes/" /etc/skel/.bashrc &&
rm /etc/motd &&
printf "APT::Install-Recommends \"false\";\n" > /etc/apt/apt.conf.d/99strata-no-recommends'

# What builds each layer, including the layers below it: a change rebuilds it and those above.
recipe0=$(printf 'l0 %s %s minbase' "$SUITE" "$MIRROR" | sha256sum | cut -c1-16)
recipe1=$(printf '%s l1 %s' "$recipe0" "$PACKAGES" | sha256sum | cut -c1-16)
recipe2=$(printf '%s l2 %s' "$recipe1" "$L2_SCRIPT" | sha256sum | cut -c1-16)
recipes=("$recipe0" "$recipe1" "$recipe2")

mkdir -p "$OUT"
stale=$FORCE
for i in 0 1 2; do
  if [ "$stale" = 1 ] || [ ! -d "$OUT/l$i" ] || [ "$(cat "$OUT/l$i.recipe" 2>/dev/null)" != "${recipes[i]}" ]; then
    stale=1
    rm -rf --one-file-system "$OUT/l$i" "$OUT/l$i.recipe"
  fi
done
MNT=$OUT/mnt
MOUNTED=()
cleanup() {
  local i
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null || true; done
  MOUNTED=()
  rm -rf --one-file-system "$OUT"/work "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# mount_overlay UPPER LOWERS: kernel overlay at $MNT, with /proc, /dev and resolv.conf for a chroot.
mount_overlay() {
  rm -rf --one-file-system "$OUT"/work
  mkdir -p "$OUT"/work "$MNT" "$1"
  mount -t overlay overlay -o "lowerdir=$2,upperdir=$1,workdir=$OUT/work" "$MNT"; MOUNTED+=("$MNT")
  mount -t proc proc "$MNT"/proc; MOUNTED+=("$MNT/proc")
  mount --rbind /dev "$MNT"/dev; mount --make-rslave "$MNT"/dev; MOUNTED+=("$MNT/dev")
  if [ -f /etc/resolv.conf ]; then
    [ -e "$MNT"/etc/resolv.conf ] || touch "$MNT"/etc/resolv.conf
    mount --bind /etc/resolv.conf "$MNT"/etc/resolv.conf; MOUNTED+=("$MNT/etc/resolv.conf")
  fi
}
unmount_overlay() {
  umount -R "$MNT"/dev 2>/dev/null || umount -l "$MNT"/dev
  cleanup
}

if [ ! -d "$OUT"/l0 ]; then
  echo "build-rootfs: l0: debootstrap --variant=minbase $SUITE from $MIRROR" >&2
  rm -rf --one-file-system "$OUT"/l0.tmp
  if ! debootstrap --variant=minbase "$SUITE" "$OUT"/l0.tmp "$MIRROR" > "$OUT"/debootstrap.log 2>&1; then
    echo "build-rootfs: debootstrap failed (is $MIRROR reachable?); last lines of $OUT/debootstrap.log:" >&2
    tail -5 "$OUT"/debootstrap.log >&2
    exit 1
  fi
  # as in an image: no downloaded packages, no resolver of this machine
  rm -f "$OUT"/l0.tmp/etc/resolv.conf "$OUT"/l0.tmp/var/cache/apt/archives/*.deb
  mv "$OUT"/l0.tmp "$OUT"/l0
  echo "$recipe0" > "$OUT"/l0.recipe
fi

if [ ! -d "$OUT"/l1 ]; then
  echo "build-rootfs: l1: apt-get install $PACKAGES" >&2
  rm -rf --one-file-system "$OUT"/l1.tmp
  mount_overlay "$OUT"/l1.tmp "$OUT"/l0
  chroot "$MNT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES && apt-get clean && rm -rf /var/lib/apt/lists/*" \
    > "$OUT"/l1.log 2>&1 || { echo "build-rootfs: apt-get in the chroot failed; see $OUT/l1.log" >&2; exit 1; }
  unmount_overlay
  mv "$OUT"/l1.tmp "$OUT"/l1
  echo "$recipe1" > "$OUT"/l1.recipe
fi

if [ ! -d "$OUT"/l2 ]; then
  echo "build-rootfs: l2: remove /usr/share/doc/* and /usr/share/man, edit configs" >&2
  rm -rf --one-file-system "$OUT"/l2.tmp
  mount_overlay "$OUT"/l2.tmp "$OUT/l1:$OUT/l0"
  chroot "$MNT" /bin/sh -c "$L2_SCRIPT"
  unmount_overlay
  mv "$OUT"/l2.tmp "$OUT"/l2
  echo "$recipe2" > "$OUT"/l2.recipe
fi

for l in l0 l1 l2; do
  echo "build-rootfs: $l: $(find "$OUT/$l" | wc -l) entries, $(find "$OUT/$l" -type c -exec stat -c '%t:%T' {} + 2>/dev/null | grep -c '^0:0$' || true) whiteouts, $(du -sh "$OUT/$l" | cut -f1)" >&2
done
echo "$OUT/l2:$OUT/l1:$OUT/l0"
