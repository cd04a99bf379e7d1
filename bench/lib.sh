# Shared by bench/run.sh, bench/nfs.sh and bench/fsck.sh (sourced, not run): the set-up every
# benchmark needs, and the safety net that undoes what a Python helper made if it did not
# undo it itself (Ctrl-C, a crash).
#
# The helper records what it makes in "$state", one line each, before making it:
#   mount MOUNTPOINT           a mount (FUSE or loop)
#   pid PID ARG                a process it started; ARG is one argument of its command line,
#                              checked before the process is signalled (pids are reused)
#   loop DEVICE BACKING-FILE   a loop device

set -euo pipefail
# HOME may be unset under some CI runners; rustup and cargo live under it.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="$repo/bench/out"

# bench_args LAST ARGS...: takes --no-build (build=0) and -h/--help (prints the script's
# header comment, lines 2 to LAST); the other arguments are left, in order, in `args`.
build=1
args=()
bench_args() {
    local last=$1 a
    shift
    for a in "$@"; do
        case "$a" in
            --no-build) build=0 ;;
            -h|--help) sed -n "2,${last}p" "$0"; exit 0 ;;
            *) args+=("$a") ;;
        esac
    done
}

# bench_need_root NAME WHY: exits unless root.
bench_need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$1: run as root ($2)" >&2
        exit 1
    fi
}

# bench_build NAME [cargo args...]: the release build of rumpfs-mount (and what else is asked).
bench_build() {
    local name=$1
    shift
    echo "$name: cargo build --release -p rumpfs-mount $* (in $target)" >&2
    cargo build --release -p rumpfs-mount "$@"
}

bench_name=bench
state=""
pypid=""

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$pypid" ] && kill -0 "$pypid" 2>/dev/null; then
        kill -TERM "$pypid" 2>/dev/null || true
        wait "$pypid" 2>/dev/null || true
    fi
    if [ -n "$state" ] && [ -f "$state" ]; then
        # Mounts first (a FUSE server exits by itself once unmounted) ...
        while read -r what a _; do
            if [ "$what" = mount ] && mountpoint -q "$a" 2>/dev/null; then
                echo "$bench_name: cleanup: unmounting $a" >&2
                umount "$a" 2>/dev/null || fusermount3 -u "$a" 2>/dev/null ||
                    umount -l "$a" 2>/dev/null || true
            fi
        done <"$state"
        sleep 0.5
        # ... then the processes still running, in reverse order of start, each only while
        # that pid still has the argument recorded for it: TERM, then KILL after 10 s ...
        tac "$state" | while read -r what a b; do
            if [ "$what" = pid ] && [ -r "/proc/$a/cmdline" ] &&
                tr '\0' '\n' <"/proc/$a/cmdline" 2>/dev/null | grep -qxF "$b"; then
                echo "$bench_name: cleanup: stopping $a ($b)" >&2
                kill -TERM "$a" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$a" 2>/dev/null || break; sleep 0.2; done
                if tr '\0' '\n' <"/proc/$a/cmdline" 2>/dev/null | grep -qxF "$b"; then
                    kill -KILL "$a" 2>/dev/null || true
                fi
            fi
        done
        # ... then loop devices still backed by our file.
        while read -r what a b; do
            if [ "$what" = loop ]; then
                back=$(losetup --list --noheadings --output BACK-FILE "$a" 2>/dev/null || true)
                case "$back" in
                    "$b"*) echo "$bench_name: cleanup: detaching $a" >&2
                           losetup --detach "$a" 2>/dev/null || true ;;
                esac
            fi
        done <"$state"
    fi
    exit $rc
}

# bench_run_helper NAME STATE-FILE HELPER ARGS...: runs the Python helper with the safety net
# armed (an empty STATE-FILE: nothing to undo) and exits with its status.
bench_run_helper() {
    bench_name=$1
    state=$2
    shift 2
    if [ -n "$state" ]; then
        mkdir -p "$(dirname "$state")"
        : >"$state"
    fi
    trap bench_cleanup EXIT
    trap 'exit 130' INT HUP
    trap 'exit 143' TERM
    python3 "$@" &
    pypid=$!
    wait "$pypid"
}
