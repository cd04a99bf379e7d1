#!/usr/bin/env bash
# rumpfs-fsck benchmark: rumpfs-fsck -fn against e2fsck -fn on a 1 GiB ext4 image holding
# 100,000 files (mke2fs -d), and rumpfs-fsck -fn on a makefs UFS2 image of the same tree;
# cold and warm, interleaved, medians of wall time and peak RSS. Run as root (drop_caches).
# See bench/README.md.
#
#   bench/fsck.sh                 full: 1 GiB, 100,000 files, 5 runs
#   bench/fsck.sh --quick         smoke test: 256 MiB, 10,000 files, 1 run
#   bench/fsck.sh --runs 9        more runs
#   bench/fsck.sh --keep-image    keep the images in bench/out/work (and reuse them next time)
#   bench/fsck.sh --no-build      use target/release/rumpfs-fsck as it is
#   RUMPFS_FSCK_BIN=/path/to/rumpfs-fsck bench/fsck.sh --no-build   another binary
#
# Results: bench/out/latest-fsck.txt, bench/out/fsck-results-*.{txt,json}. It mounts nothing;
# the images are removed at the end unless --keep-image.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_need_root bench "it drops the page cache"

bench_args 15 "$@"

[ $build -eq 1 ] && bench_build bench --bins

mkdir -p "$out/work"
exec python3 "$repo/bench/fsck.py" --work "$out/work" --out "$out" \
    --bin "${RUMPFS_FSCK_BIN:-$target/release/rumpfs-fsck}" "${args[@]}"
