#!/usr/bin/env bash
# Set up a Debian 12 (bookworm) machine to build, test and benchmark rumpfs.
#
# Idempotent: when every package is already installed it does no apt work at all, so it is
# cheap to run before every build (scripts/demo.sh and scripts/test.sh do). Runs as root, or as
# an ordinary user with sudo (sudo is used for apt only; Rust is installed for the user who
# runs this). Never prompts: safe with no standard input (CI).
#
#   scripts/setup-debian.sh            install what is missing
#   scripts/setup-debian.sh --check    only report what is missing (exit 1 if anything is)
set -euo pipefail
# HOME may be unset under some CI runners; rustup and cargo live under it.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

# What the project needs, by Debian 12 package name.
PACKAGES=(
    # build
    build-essential pkg-config curl ca-certificates git
    # FUSE: fusermount3 (setuid, for ordinary users) and the headers, should a crate want them
    fuse3 libfuse3-dev
    # making and checking reference images; oracles in the tests
    e2fsprogs fuse2fs makefs sleuthkit fdisk gdisk zstd attr
    # mount/umount/losetup/mountpoint, ps/pgrep, python3 for the benchmark helper, man pages
    util-linux mount procps python3 man-db groff-base
    # NFS (later issues): a real NFS server for end-to-end tests and a client tool
    nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils
)
RUST_MIN=1.85

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup-debian.sh: unknown argument '$1'" >&2; exit 1 ;;
esac

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=(__no_sudo__)
fi

# --- Debian packages ------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [ "${status:0:2}" = "ii" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all ${#PACKAGES[@]} installed"
elif [ $check_only -eq 1 ]; then
    say "missing Debian packages: ${missing[*]}"
else
    if [ "${SUDO[0]:-}" = "__no_sudo__" ]; then
        echo "setup: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: this script is for Debian 12 (apt-get not found); install by hand: ${missing[*]}" >&2
        exit 1
    fi
    say "installing: ${missing[*]}"
    # Packages such as rpcbind and nfs-ganesha would start their daemons on install; we only
    # want the programs (the tests start their own servers). Deny service starts for the
    # duration of the install unless the machine already has a policy, and put it back.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# temporary, from rumpfs scripts/setup-debian.sh\nexit 101\n' |
            "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    remove_policy() {
        if [ $added_policy -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    }
    trap remove_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null
    remove_policy
    trap - EXIT
    say "Debian packages installed"
fi

# --- Rust -----------------------------------------------------------------------------------
# rustup installs into ~/.cargo; a shell that has not re-read its profile will not have it on
# PATH yet.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

version_ge() { # version_ge A B: A >= B (dotted numbers)
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

cargo_version=""
if command -v cargo >/dev/null 2>&1; then
    cargo_version=$(cargo --version 2>/dev/null | awk '{print $2}' | cut -d- -f1)
fi

if [ -n "$cargo_version" ] && version_ge "$cargo_version" "$RUST_MIN"; then
    say "Rust: cargo $cargo_version (>= $RUST_MIN)"
elif [ $check_only -eq 1 ]; then
    say "Rust: cargo ${cargo_version:-missing}, need >= $RUST_MIN"
    missing+=(rust)
else
    if [ -x "$HOME/.cargo/bin/rustup" ]; then
        say "Rust: cargo ${cargo_version:-missing} is older than $RUST_MIN; updating with rustup"
        "$HOME/.cargo/bin/rustup" update stable </dev/null
        "$HOME/.cargo/bin/rustup" default stable </dev/null
    else
        say "Rust: cargo ${cargo_version:-missing}; installing the stable toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --default-toolchain stable </dev/null
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
    say "Rust: $(cargo --version)"
    echo "setup: open a new shell, or run: . \"\$HOME/.cargo/env\"  (to have cargo on PATH)"
fi

if [ $check_only -eq 1 ] && [ ${#missing[@]} -gt 0 ]; then
    exit 1
fi
exit 0
