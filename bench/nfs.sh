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
set -euo pipefail
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/nfs: run as root (it starts ganesha and rpcbind, drops the page cache, mounts)" >&2
    exit 1
fi

build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
done

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ $build -eq 1 ]; then
    echo "bench/nfs: cargo build --release -p rumpfs-mount (in $target)" >&2
    cargo build --release -p rumpfs-mount
fi

out="$repo/bench/out"
work="$out/work-nfs"
state="$out/nfs-state"
mkdir -p "$out"
: >"$state"

pypid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$pypid" ] && kill -0 "$pypid" 2>/dev/null; then
        kill -TERM "$pypid" 2>/dev/null || true
        wait "$pypid" 2>/dev/null || true
    fi
    # Safety net: undo what the helper recorded and did not undo itself: the mount first, then
    # the processes in reverse order of start (rumpfs-mount, ganesha, rpcbind), each only if
    # that pid still runs with the argument recorded for it (our mountpoint, our config file,
    # the rpcbind we started).
    if [ -f "$state" ]; then
        while read -r what a _; do
            if [ "$what" = mount ] && mountpoint -q "$a" 2>/dev/null; then
                echo "bench/nfs: cleanup: unmounting $a" >&2
                umount "$a" 2>/dev/null || fusermount3 -u "$a" 2>/dev/null ||
                    umount -l "$a" 2>/dev/null || true
            fi
        done <"$state"
        sleep 0.5
        tac "$state" | while read -r what a b; do
            if [ "$what" = pid ] && [ -r "/proc/$a/cmdline" ] &&
                tr '\0' '\n' <"/proc/$a/cmdline" 2>/dev/null | grep -qxF "$b"; then
                echo "bench/nfs: cleanup: stopping $a ($b)" >&2
                kill -TERM "$a" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$a" 2>/dev/null || break; sleep 0.2; done
                if tr '\0' '\n' <"/proc/$a/cmdline" 2>/dev/null | grep -qxF "$b"; then
                    kill -KILL "$a" 2>/dev/null || true
                fi
            fi
        done
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT HUP
trap 'exit 143' TERM

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

python3 "$repo/bench/nfs.py" --work "$work" --state "$state" --out "$out" \
    --bin "${RUMPFS_MOUNT_BIN:-$target/release/rumpfs-mount}" "${args[@]}" &
pypid=$!
wait "$pypid"
