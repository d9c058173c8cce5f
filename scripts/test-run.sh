#!/usr/bin/env bash
# `make test`: ava, with every temporary directory the tests make (os.tmpdir()) below one directory of
# this run. Tests remove what they make in their teardowns, also when they fail; a test file that ava
# kills (its 5-minute timeout) runs no teardown. Whatever such a file left below the run's directory is
# cleaned up here once ava has ended: processes working there (daemons, containers, registries,
# drivers), then mounts (deepest first), then the directory. Arguments go to ava; its status is ours.
set -uo pipefail
cd "$(dirname "$0")/.."

run=$(mktemp -d /tmp/stXXXXXX)
chmod 1777 "$run" # as /tmp: the tests run some steps as other users

# Decodes the octal escapes of /proc/self/mountinfo (\040 for a space ...).
unescape() { printf '%b' "${1//\\/\\0}"; }

cleanup() {
  local pids=() mounts=() p pid m
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [[ $pid == "$$" ]] && continue
    if [[ $(readlink "$p/cwd" 2>/dev/null) == "$run"/* || $(readlink "$p/root" 2>/dev/null) == "$run"/* ]] ||
      tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qF "$run/"; then
      pids+=("$pid")
    fi
  done
  ((${#pids[@]})) && kill -9 "${pids[@]}" 2>/dev/null
  while read -r m; do
    m=$(unescape "$m")
    [[ $m == "$run"/* ]] && mounts+=("$m")
  done < <(awk '{print $5}' /proc/self/mountinfo)
  # deepest first; a FUSE mount whose daemon was killed above detaches lazily like any other
  ((${#mounts[@]})) && printf '%s\n' "${mounts[@]}" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf --one-file-system "$run" 2>/dev/null || rm -rf --one-file-system "$run"
  if ((${#pids[@]} + ${#mounts[@]})); then
    echo "test-run: cleaned up after the tests: ${#pids[@]} processes, ${#mounts[@]} mounts below $run" >&2
  fi
}
trap cleanup EXIT

TMPDIR=$run ./node_modules/.bin/ava "$@"
