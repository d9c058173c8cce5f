#!/bin/bash
# Builds a layered Debian root filesystem for `bench-cache --rootfs` (as root):
#   l0  debootstrap --variant=minbase bookworm
#   l1  a few packages installed with apt-get in a chroot on a kernel overlay of l0
#   l2  /usr/share/doc emptied (one whiteout per entry) and /usr/share/man removed and recreated
#       (an opaque directory), on a kernel overlay of l1:l0
# Layers are kept in OUT (default .cache/rootfs, gitignored) and reused; --force rebuilds them.
# Prints the lowerdir string (top first) on its last line: OUT/l2:OUT/l1:OUT/l0
#
# Environment: MIRROR (default http://deb.debian.org/debian), SUITE (bookworm),
# PACKAGES (default "python3 procps less").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/.cache/rootfs
FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: $0 [--force] [OUT]"; exit 0 ;;
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

mkdir -p "$OUT"
[ $FORCE = 1 ] && rm -rf --one-file-system "$OUT"/l0 "$OUT"/l1 "$OUT"/l2
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
fi

if [ ! -d "$OUT"/l2 ]; then
  echo "build-rootfs: l2: remove /usr/share/doc/* and /usr/share/man" >&2
  rm -rf --one-file-system "$OUT"/l2.tmp
  mount_overlay "$OUT"/l2.tmp "$OUT/l1:$OUT/l0"
  chroot "$MNT" /bin/sh -c 'rm -rf /usr/share/doc/* && rm -rf /usr/share/man && mkdir /usr/share/man'
  unmount_overlay
  mv "$OUT"/l2.tmp "$OUT"/l2
fi

for l in l0 l1 l2; do
  echo "build-rootfs: $l: $(find "$OUT/$l" | wc -l) entries, $(find "$OUT/$l" -type c -exec stat -c '%t:%T' {} + 2>/dev/null | grep -c '^0:0$' || true) whiteouts, $(du -sh "$OUT/$l" | cut -f1)" >&2
done
echo "$OUT/l2:$OUT/l1:$OUT/l0"
