#!/usr/bin/env bash
# Set up the machine and run the whole test suite:
#
#   ./scripts/test.sh
#
# Installs what is missing (scripts/setup-debian.sh), builds every binary in release mode,
# then runs `cargo test --release --workspace --no-fail-fast`. The end-to-end tests mount
# real FUSE file systems with target/release/rumpfs-mount (RUMPFS_MOUNT_BIN). Extra arguments
# go to `cargo test` (e.g. ./scripts/test.sh -- --nocapture). Exits non-zero when anything
# fails; the last lines are cargo's own test summary.
set -euo pipefail
# HOME may be unset under some CI runners; rustup and cargo live under it.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# mke2fs, sfdisk, sgdisk live in /usr/sbin, which is not on an ordinary user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"
cd "$repo"

scripts/setup-debian.sh </dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "test: cargo build --release --workspace --bins"
cargo build --release --workspace --bins

export RUMPFS_MOUNT_BIN="$repo/target/release/rumpfs-mount"
# The tests find the shared reference images at ../shared/test-images themselves.

# --no-fail-fast: one failing test binary does not hide the results of the others.
echo "test: cargo test --release --workspace --no-fail-fast $*"
exec cargo test --release --workspace --no-fail-fast "$@" </dev/null
