#!/usr/bin/env bash
# rumpfs NFS benchmark (issue 5): one nfs-ganesha export on 127.0.0.1; sequential read and
# write of a 1 GiB file and a find + stat walk of a 20,000-file tree, through rumpfs-mount
# versus libnfs's nfs-cp / nfs-ls -R; interleaved, medians. Run as root. See bench/README.md.
#
#   bench/nfs.sh                 full: 1 GiB file, 20,000-file tree, 4 runs
#   bench/nfs.sh --quick         smoke test: 64 MiB file, 2,000 files, 1 run
#   bench/nfs.sh --runs 5        more runs
#   bench/nfs.sh --no-build      use the rumpfs-mount binary as it is
#   bench/nfs.sh --rumpfs-opts rsize=1048576   extra -o options for rumpfs-mount
#   RUMPFS_MOUNT_BIN=/path/to/rumpfs-mount bench/nfs.sh --no-build   another binary
#
# Results: bench/out/nfs-latest.txt, bench/out/nfs-results-*.{txt,json}. The FUSE mount,
# ganesha and (if this started it) rpcbind are stopped by their pids on every exit path,
# including Ctrl-C and a crash of the helper.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_need_root bench/nfs "it starts ganesha and rpcbind, drops the page cache, mounts"

bench_args 15 "$@"

[ $build -eq 1 ] && bench_build bench/nfs

# One NFS server per portmapper: the test binaries (tests/nfs_server.rs) hold an exclusive flock
# on this file while their ganesha runs, and so do we, from before ganesha and rpcbind start
# until they have been stopped (fd 9 stays open in this shell, which outlives the helper and
# runs the cleanup; the helper's children do not inherit it).
lock=/tmp/rumpfs-nfs-server.lock
exec 9>>"$lock"
chmod 666 "$lock" 2>/dev/null || true
if ! flock -n 9; then
    echo "bench/nfs: waiting for $lock (an NFS test run or another benchmark holds port 2049)" >&2
    flock 9
fi

work="$out/work-nfs"
bench_run_helper bench/nfs "$out/nfs-state" "$repo/bench/nfs.py" --work "$work" --state "$out/nfs-state" --out "$out" \
    --bin "${RUMPFS_MOUNT_BIN:-$target/release/rumpfs-mount}" "${args[@]}"
