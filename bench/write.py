#!/usr/bin/env python3
"""rumpfs write-path benchmark: the same workloads on a fresh ext2 image mounted read-write
three ways (the kernel's ext2 on a loop device, fuse2fs, rumpfs-mount), interleaved, medians.

Workloads (issue 3):
  seq_write   a 512 MiB file in 1 MiB writes, then fsync          MB/s
  create      10,000 files of 4 KiB in 100 directories             s
  untar       unpack a tarball of 8,000 files (about 60 MB)        s
  rm_rf       rm -rf of the unpacked tree                          s

Every measurement starts from a fresh copy of an empty image, so allocation starts equal.
Run as root through bench/run.sh --write (which builds and cleans up), or directly:
  bench/write.py --bin target/release/rumpfs-mount [--quick] [--runs N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

from bench import MiB, drop_caches, log, run  # the read-path harness's helpers

KINDS = ["kernel", "fuse2fs", "rumpfs"]
WORKLOADS = [
    ("seq_write", "512 MiB sequential write + fsync", "MB/s", True),
    ("create", "10,000 x 4 KiB files in 100 dirs", "s", False),
    ("untar", "untar 8,000 files", "s", False),
    ("rm_rf", "rm -rf of them", "s", False),
]
TARGETS = {
    "seq_write": [("fuse2fs", ">=", 1.2)],
    "create": [("fuse2fs", "<=", 1 / 1.8)],
    "untar": [("fuse2fs", "<=", 0.6)],
    "rm_rf": [("fuse2fs", "<=", 0.6)],
}


def make_tarball(work, nfiles, seed):
    """A tarball of nfiles files (sizes like a source tree, about 7.5 KB on average)."""
    import random
    rnd = random.Random(seed)
    src = os.path.join(work, "tsrc")
    shutil.rmtree(src, ignore_errors=True)
    for i in range(nfiles):
        d = os.path.join(src, f"d{i % 80:02d}", f"s{i % 7}")
        os.makedirs(d, exist_ok=True)
        size = int(rnd.expovariate(1 / 7500))
        with open(os.path.join(d, f"f{i:05d}.c"), "wb") as f:
            f.write(rnd.randbytes(size))
    tb = os.path.join(work, "tree.tar")
    with tarfile.open(tb, "w") as t:
        t.add(src, arcname="tree")
    shutil.rmtree(src)
    return tb


class Mount:
    def __init__(self, kind, img, mnt, binary, ropts=""):
        self.kind, self.img, self.mnt = kind, img, mnt
        os.makedirs(mnt, exist_ok=True)
        if kind == "kernel":
            cmd = ["mount", "-t", "ext2", "-o", "loop", img, mnt]
        elif kind == "fuse2fs":
            cmd = ["fuse2fs", img, mnt]
        else:
            cmd = [binary] + (["-o", ropts] if ropts else []) + [img, mnt]
        p = run(cmd, check=False, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise OSError(f"{kind}: {' '.join(cmd)}: {p.stderr.strip()}")
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline:
                raise OSError(f"{kind}: not mounted")
            time.sleep(0.02)

    def close(self):
        for _ in range(100):
            if not os.path.ismount(self.mnt):
                break
            p = run(["umount", self.mnt], check=False, capture_output=True)
            if p.returncode != 0:
                time.sleep(0.1)
        if os.path.ismount(self.mnt):
            run(["umount", "-l", self.mnt], check=False)
        time.sleep(0.2)


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def w_seq(mnt, size_mib):
    buf = os.urandom(MiB)
    p = os.path.join(mnt, "big")

    def go():
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(size_mib):
            os.write(fd, buf)
        os.fsync(fd)
        os.close(fd)
    return size_mib * MiB / timed(go) / 1e6


def w_create(mnt, nfiles):
    data = os.urandom(4096)

    def go():
        for d in range(100):
            os.mkdir(os.path.join(mnt, f"c{d:02d}"))
        for i in range(nfiles):
            with open(os.path.join(mnt, f"c{i % 100:02d}", f"f{i:05d}"), "wb") as f:
                f.write(data)
    return timed(go)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", default=os.path.join(os.path.dirname(__file__), "out", "work-write"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="64 MiB, 2,000 files, 1 run")
    ap.add_argument("--mounts", default=",".join(KINDS))
    ap.add_argument("--rumpfs-opts", default="", help="extra -o options for rumpfs-mount (e.g. spin=0)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/write.py: run as root")
    size_mib, nfiles, ntar, runs = (64, 2000, 2000, 1) if a.quick else (512, 10000, 8000, a.runs)
    kinds = [k for k in KINDS if k in a.mounts.split(",")]
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    empty = os.path.join(work, "empty.img")
    img = os.path.join(work, "bench.img")
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", empty, "2G"])
    tb = make_tarball(work, ntar, 7)
    log(f"tarball {tb}: {os.path.getsize(tb) // MiB} MiB")
    res = {k: {w[0]: [] for w in WORKLOADS} for k in kinds}
    mnt = os.path.join(work, "mnt")
    try:
        for r in range(runs):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for kind in order:
                for w in ("seq_write", "create", "untar"):
                    shutil.copyfile(empty, img)
                    drop_caches()
                    m = Mount(kind, img, mnt, os.path.abspath(a.bin), a.rumpfs_opts)
                    try:
                        if w == "seq_write":
                            v = w_seq(mnt, size_mib)
                        elif w == "create":
                            v = w_create(mnt, nfiles)
                        else:
                            v = timed(lambda: run(["tar", "-xf", tb, "-C", mnt]))
                            res[kind]["untar"].append(v)
                            w, v = "rm_rf", timed(lambda: run(["rm", "-rf", os.path.join(mnt, "tree")]))
                    finally:
                        m.close()
                    res[kind][w].append(v)
                    fsck = run(["e2fsck", "-fn", img], check=False, capture_output=True)
                    if fsck.returncode != 0:
                        log(f"{kind} {w}: e2fsck -fn exited {fsck.returncode}")
                log(f"run {r + 1} {kind}: " + ", ".join(f"{w} {res[kind][w][-1]:.2f}" for w, *_ in WORKLOADS))
    finally:
        if os.path.ismount(mnt):
            run(["umount", "-l", mnt], check=False)
        for f in (img, empty, tb):
            if os.path.exists(f):
                os.unlink(f)
    med = {(k, w): statistics.median(res[k][w]) for k in kinds for w, *_ in WORKLOADS if res[k][w]}
    lines = [f"write path, {runs} run(s), medians; load {open('/proc/loadavg').read().split()[:3]}"
             + (f"; rumpfs-mount -o {a.rumpfs_opts}" if a.rumpfs_opts else "")]
    lines.append(f"{'workload':36}" + "".join(f"{k:>12}" for k in kinds) + "   rumpfs/fuse2fs  rumpfs/kernel")
    for w, label, unit, _hb in WORKLOADS:
        row = f"{label + ' (' + unit + ')':36}" + "".join(f"{med.get((k, w), float('nan')):12.2f}" for k in kinds)
        for other in ("fuse2fs", "kernel"):
            if ("rumpfs", w) in med and (other, w) in med:
                row += f"   {med[('rumpfs', w)] / med[(other, w)]:8.2f}x"
        for other, op, bound in TARGETS.get(w, []):
            if ("rumpfs", w) in med and (other, w) in med:
                ratio = med[("rumpfs", w)] / med[(other, w)]
                ok = ratio >= bound if op == ">=" else ratio <= bound
                row += f"   [target {op} {bound:.2f}: {'met' if ok else 'MISSED'}]"
        lines.append(row)
    text = "\n".join(lines)
    print(text)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "latest-write.txt"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
