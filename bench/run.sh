#!/usr/bin/env bash
# rumpfs read-path benchmark: the same fresh ext2 image mounted read-only three ways (Linux
# kernel ext2 on a loop device, fuse2fs, rumpfs-mount), runs interleaved, medians reported.
# Run as root. See bench/README.md.
#
#   bench/run.sh                 full: 512 MiB file, 8,000-file tree, 5 runs
#   bench/run.sh --quick         smoke test: 64 MiB file, 2,000 files, 1 run
#   bench/run.sh --runs 9        more runs
#   bench/run.sh --no-build      use target/release/rumpfs-mount as it is
#   bench/run.sh --mounts kernel,fuse2fs      a subset of the three
#   bench/run.sh --rumpfs-opts cache=256M     extra -o options for rumpfs-mount
#   bench/run.sh --fs ffs        FFS (UFS2, 32k/4k, makefs) beside ext2 through rumpfs-mount and
#                                the kernel's ext2: bench/ffs.py (results: latest-ffs.txt)
#   RUMPFS_MOUNT_BIN=/path/to/rumpfs-mount bench/run.sh --no-build   another binary
#
# Results: bench/out/latest.txt, bench/out/results-*.{txt,json}. Every mount, server and loop
# device it makes is undone on every exit path, including Ctrl-C and a crash of the helper.
set -euo pipefail
# HOME may be unset under some CI runners; rustup and cargo live under it.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: run as root (it drops the page cache, makes a loop device and mounts)" >&2
    exit 1
fi

build=1
helper=bench.py
want_fs=""
args=()
for a in "$@"; do
    if [ "$want_fs" = next ]; then
        want_fs="$a"
        continue
    fi
    case "$a" in
        --no-build) build=0 ;;
        --fs) want_fs=next ;;
        --fs=*) want_fs="${a#--fs=}" ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
done
case "$want_fs" in
    ""|ext2) ;;
    ffs) helper=ffs.py ;;
    *) echo "bench: --fs: ext2 or ffs, not '$want_fs'" >&2; exit 1 ;;
esac

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if [ $build -eq 1 ]; then
    echo "bench: cargo build --release -p rumpfs-mount" >&2
    cargo build --release -p rumpfs-mount
fi

out="$repo/bench/out"
work="$out/work"
[ "$helper" = ffs.py ] && work="$out/work-ffs"
state="$work/state"
mkdir -p "$work"
: >"$state"

pypid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$pypid" ] && kill -0 "$pypid" 2>/dev/null; then
        kill -TERM "$pypid" 2>/dev/null || true
        wait "$pypid" 2>/dev/null || true
    fi
    # Safety net: undo whatever the helper recorded and did not undo itself: unmount first,
    # then the servers that are still up, then the loop device.
    if [ -f "$state" ]; then
        while read -r what a _; do
            if [ "$what" = mount ] && mountpoint -q "$a" 2>/dev/null; then
                echo "bench: cleanup: unmounting $a" >&2
                umount "$a" 2>/dev/null || fusermount3 -u "$a" 2>/dev/null ||
                    umount -l "$a" 2>/dev/null || true
            fi
        done <"$state"
        sleep 0.5  # a FUSE server exits by itself once unmounted
        while read -r what a b; do
            # only if that pid is still the server for our mountpoint
            if [ "$what" = pid ] && [ -r "/proc/$a/cmdline" ] &&
                tr '\0' '\n' <"/proc/$a/cmdline" 2>/dev/null | grep -qxF "$b"; then
                echo "bench: cleanup: stopping server $a" >&2
                kill -TERM "$a" 2>/dev/null || true
            fi
        done <"$state"
        while read -r what a b; do
            if [ "$what" = loop ]; then
                back=$(losetup --list --noheadings --output BACK-FILE "$a" 2>/dev/null || true)
                case "$back" in
                    "$b"*) echo "bench: cleanup: detaching $a" >&2
                           losetup --detach "$a" 2>/dev/null || true ;;
                esac
            fi
        done <"$state"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT HUP
trap 'exit 143' TERM

python3 "$repo/bench/$helper" --work "$work" --state "$state" --out "$out" \
    --bin "${RUMPFS_MOUNT_BIN:-$repo/target/release/rumpfs-mount}" "${args[@]}" &
pypid=$!
wait "$pypid"
