#!/usr/bin/env bash
# The main job on a built-in sample: set up the machine, build rumpfs-mount, make a small ext4
# image with the real mke2fs, mount it through FUSE with rumpfs-mount, show the tree, unmount.
#
#   ./scripts/demo.sh
#
# Works as root and as an ordinary user (sudo is used only to install Debian packages, and
# only when some are missing). Everything it makes lives in one temporary directory that is
# unmounted and removed on every exit path.
set -euo pipefail
# HOME may be unset under some CI runners; rustup and cargo live under it.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# mke2fs, sfdisk, sgdisk live in /usr/sbin, which is not on an ordinary user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"
cd "$repo"

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "setting up the machine (Debian packages, Rust)"
scripts/setup-debian.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

step "building rumpfs-mount (release)"
run cargo build --release -p rumpfs-mount
bin="$repo/target/release/rumpfs-mount"

work=$(mktemp -d "${TMPDIR:-/tmp}/rumpfs-demo.XXXXXX")
mnt="$work/mnt"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if mountpoint -q "$mnt" 2>/dev/null; then
        fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null ||
            fusermount3 -uz "$mnt" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "making a sample tree in $work/tree"
tree="$work/tree"
mkdir -p "$tree"/{etc,home/alice,usr/bin,usr/share/doc/rumpfs,var/log,var/empty,srv/data}
cat >"$tree/etc/motd" <<'EOF'
Welcome to rumpfs.

This file was read from an ext4 image by a file system driver running in a
user-space kernel, served to you through FUSE: no loop device, no kernel ext4.
EOF
echo "rumpfs-demo" >"$tree/etc/hostname"
printf 'alice:x:1000:1000:Alice:/home/alice:/bin/sh\n' >"$tree/etc/passwd"
printf 'remember the milk\n' >"$tree/home/alice/notes.txt"
cp README.md "$tree/usr/share/doc/rumpfs/README.md" 2>/dev/null || echo "rumpfs" >"$tree/usr/share/doc/rumpfs/README.md"
printf '#!/bin/sh\necho hello from rumpfs\n' >"$tree/usr/bin/hello"
chmod 755 "$tree/usr/bin/hello"
ln "$tree/usr/bin/hello" "$tree/usr/bin/hello-again"          # a hard link
ln -s usr/bin "$tree/bin"                                      # a short (fast) symlink
ln -s ../usr/share/doc/rumpfs/README.md "$tree/etc/a-symlink-whose-target-is-longer-than-sixty-bytes-so-it-lives-in-a-block"
ln -s ../../usr/share/doc/rumpfs/README.md "$tree/srv/data/readme"
head -c 3000000 /dev/urandom >"$tree/srv/data/random.bin"      # a few MB: extent-mapped
truncate -s 64M "$tree/srv/data/sparse.img"                    # a sparse file (a hole)
printf 'tail\n' >>"$tree/srv/data/sparse.img"
mkfifo "$tree/var/log/fifo"
: >"$tree/var/log/empty.log"
chmod 700 "$tree/home/alice"
setfattr -n user.comment -v "an extended attribute" "$tree/etc/motd" 2>/dev/null || true
touch -d '2001-09-09 01:46:40.123456789' "$tree/etc/hostname"

step "making an ext4 image from it with mke2fs -d"
img="$work/sample.img"
run mke2fs -q -F -t ext4 -L rumpfs-demo -d "$tree" "$img" 32M
mkdir "$mnt"

step "mounting it with rumpfs-mount"
run "$bin" "$img" "$mnt"
grep -F " $mnt " /proc/mounts || true

step "the tree"
run ls -lR "$mnt"
step "a file"
run cat "$mnt/etc/motd"
if command -v getfattr >/dev/null 2>&1; then
    getfattr -d "$mnt/etc/motd" 2>/dev/null || true
fi
step "free space"
run df -h "$mnt"

step "checking every byte against the source tree"
# diff cannot compare fifos by content: check that one by type. lost+found is mke2fs's own.
if diff -r --no-dereference -x lost+found -x fifo "$tree" "$mnt" && [ -p "$mnt/var/log/fifo" ]; then
    echo "identical: every file, symlink, fifo and directory matches the source tree"
else
    echo "demo: the mounted tree differs from the source tree (see above)" >&2
    exit 1
fi

step "unmounting"
run fusermount3 -u "$mnt"
for _ in $(seq 50); do mountpoint -q "$mnt" || break; sleep 0.1; done
if mountpoint -q "$mnt"; then
    echo "demo: $mnt is still mounted" >&2
    exit 1
fi
echo "unmounted; done."
