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
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_need_root bench "it drops the page cache, makes a loop device and mounts"

bench_args 17 "$@"
# --fs picks the helper; the rest goes to it.
helper=bench.py
want_fs=""
rest=()
for a in "${args[@]}"; do
    if [ "$want_fs" = next ]; then
        want_fs="$a"
        continue
    fi
    case "$a" in
        --fs) want_fs=next ;;
        --fs=*) want_fs="${a#--fs=}" ;;
        *) rest+=("$a") ;;
    esac
done
args=("${rest[@]}")
case "$want_fs" in
    ""|ext2) ;;
    ffs) helper=ffs.py ;;
    *) echo "bench: --fs: ext2 or ffs, not '$want_fs'" >&2; exit 1 ;;
esac

[ $build -eq 1 ] && bench_build bench

work="$out/work"
[ "$helper" = ffs.py ] && work="$out/work-ffs"
mkdir -p "$work"
bench_run_helper bench "$work/state" "$repo/bench/$helper" --work "$work" --state "$work/state" --out "$out" \
    --bin "${RUMPFS_MOUNT_BIN:-$target/release/rumpfs-mount}" "${args[@]}"
