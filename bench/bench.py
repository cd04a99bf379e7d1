#!/usr/bin/env python3
"""rumpfs read-path benchmark: one fresh ext2 image, mounted three ways, measured interleaved.

Run it through bench/run.sh (which builds the release binary and cleans up after a crash);
see bench/README.md for what each figure means. Python 3 standard library only.

Mounts (all read-only, the same image file):
  kernel   Linux ext2 driver on a read-only loop device this script creates (losetup -r)
  fuse2fs  Debian's fuse2fs (libext2fs through FUSE), -o ro
  rumpfs   target/release/rumpfs-mount -o ro

Workloads, per mount, per run; mounts interleaved (the order rotates from run to run):
  cold_seq   sequential read of the big file; page cache dropped and file system remounted
             first (so a FUSE server's own cache is cold too)              MB/s  (higher better)
  warm_seq   the same file read again right after, nothing dropped       MB/s  (higher better)
  rand4k     random 4 KiB reads with O_DIRECT on aligned buffers, queue depth 1, a fixed
             seeded list of offsets; image file warm in the host page cache IOPS (higher better)
  find       cold `find MNT | wc -l` of the whole tree                   s     (lower better)
  ls_lR      cold `ls -lR MNT > /dev/null`                                 s     (lower better)
"""

import argparse
import datetime
import hashlib
import json
import mmap
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

KINDS = ["kernel", "fuse2fs", "rumpfs"]
MiB = 1 << 20

# name, label, unit, higher_is_better
WORKLOADS = [
    ("cold_seq", "cold sequential read", "MB/s", True),
    ("warm_seq", "warm re-read", "MB/s", True),
    ("rand4k", "random 4k O_DIRECT read", "IOPS", True),
    ("find", "cold find | wc -l", "s", False),
    ("ls_lR", "cold ls -lR", "s", False),
]

# The targets, as ratios of rumpfs to the other mount: (workload, other, op, bound).
# For MB/s and IOPS the ratio must be >= bound; for seconds it must be <= bound.
TARGETS = {
    "cold_seq": [("fuse2fs", ">=", 1.0), ("kernel", ">=", 0.9)],
    "warm_seq": [("fuse2fs", ">=", 1.0)],
    "rand4k": [("fuse2fs", ">=", 1.2)],
    "find": [("fuse2fs", "<=", 0.4)],
    "ls_lR": [("fuse2fs", "<=", 0.4)],
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    """A signal: stop, clean up, exit."""


class MountFailed(Exception):
    """One mount did not come up: recorded as a missing figure, the run goes on."""


def on_signal(signum, _frame):
    raise Abort(f"signal {signum}")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def git_commit():
    """The commit measured: its short id, with "+dirty" when tracked files differ from it."""
    commit = run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                 text=True).stdout.strip() or "?"
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], check=False,
                capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, stdin=subprocess.DEVNULL, **kw)


# ------------------------------------------------------------------------------------------
# The image

def make_image(work, size_mib, nfiles, seed, keep_src=False):
    """Make the source tree and the ext2 image from it with mke2fs -d; return its facts.
    keep_src: leave the tree in WORK/src (for another image of it, e.g. bench/ffs.py's)."""
    src = os.path.join(work, "src")
    img = os.path.join(work, "bench.img")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)

    # The big file: random data, so no layer can compress or dedupe it.
    big = os.path.join(src, "big.bin")
    sha = hashlib.sha256()
    with open(big, "wb") as f:
        left = size_mib * MiB
        while left:
            chunk = os.urandom(min(left, 8 * MiB))
            sha.update(chunk)
            f.write(chunk)
            left -= len(chunk)

    # The tree: tree/aN/dNN/fNNN, ~100 files a directory, small seeded-random sizes.
    rng = random.Random(seed)
    ndirs = max(1, (nfiles + 99) // 100)
    ntop = max(1, (ndirs + 9) // 10)
    data_bytes = 0
    made = 0
    dirs = 1  # tree/
    for d in range(ndirs):
        top = os.path.join(src, "tree", f"a{d // 10}")
        if d % 10 == 0:
            os.makedirs(top, exist_ok=True)
            dirs += 1
        sub = os.path.join(top, f"d{d % 10:02}")
        os.makedirs(sub)
        dirs += 1
        for i in range(min(100, nfiles - made)):
            r = rng.random()
            if r < 0.70:
                n = rng.randrange(0, 4097)
            elif r < 0.95:
                n = rng.randrange(4097, 16385)
            else:
                n = rng.randrange(16385, 65537)
            with open(os.path.join(sub, f"f{i:03}"), "wb") as f:
                f.write(rng.randbytes(n))
            data_bytes += -(-n // 4096) * 4096
            made += 1
    assert ntop >= 1
    # root, lost+found, big.bin, the directories, the files
    entries = 1 + 1 + 1 + dirs + made

    blocks = size_mib * MiB + data_bytes + (dirs + 64) * 4096
    size_k = int(blocks * 1.15) // 1024 + 32 * 1024
    if os.path.exists(img):
        os.unlink(img)
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-m", "0", "-L", "rumpfs-bench",
         "-d", src, img, f"{size_k}k"])
    if not keep_src:
        shutil.rmtree(src)
    return {
        "image": img,
        "image_bytes": os.path.getsize(img),
        "big_path": "big.bin",
        "big_bytes": size_mib * MiB,
        "big_sha256": sha.hexdigest(),
        "files": made,
        "dirs": dirs,
        "find_entries": entries,
    }


# ------------------------------------------------------------------------------------------
# Mounting

class Mounter:
    """Mounts the image the three ways; remembers everything it made in a state file that
    bench/run.sh reads to clean up should this process die."""

    def __init__(self, work, state, img, rumpfs_bin, rumpfs_opts):
        self.work = work
        self.state = state
        self.img = img
        self.rumpfs_bin = rumpfs_bin
        self.rumpfs_opts = rumpfs_opts
        self.loop = None
        self.kinds = KINDS  # the mount points cleanup_all looks at
        self.current = None  # (kind, mnt, pid)
        self.peak = {}  # kind -> list of (workload group, VmHWM kB)

    def note(self, line):
        with open(self.state, "a") as f:
            f.write(line + "\n")

    def mnt(self, kind):
        return os.path.join(self.work, f"mnt-{kind}")

    def setup_loop(self):
        out = run(["losetup", "--find", "--show", "--read-only", self.img],
                  capture_output=True, text=True).stdout.strip()
        self.loop = out
        self.note(f"loop {out} {self.img}")
        log(f"loop device {out} (read-only) for the kernel mount")

    def teardown_loop(self):
        if self.loop:
            back = run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE", self.loop],
                       check=False, capture_output=True, text=True).stdout.strip()
            if back == self.img or back.startswith(self.img):
                run(["losetup", "--detach", self.loop], check=False)
            self.loop = None

    def server_pid(self, mnt):
        """The FUSE server serving mnt: the process whose argv holds the mountpoint."""
        want = mnt.encode()
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if want in argv:
                return int(d)
        return None

    def alive(self, pid, mnt):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("State:") and "Z" in line.split()[1]:
                        return False
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return mnt.encode() in f.read().split(b"\0")
        except OSError:
            return False

    def vmhwm_kb(self, pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def mount(self, kind):
        """Drop every cache, then mount kind fresh. Returns the mountpoint."""
        self.umount()
        mnt = self.mnt(kind)
        os.makedirs(mnt, exist_ok=True)
        if os.path.ismount(mnt):
            raise MountFailed(f"{mnt} is still mounted")
        drop_caches()
        self.note(f"mount {mnt}")
        cmd = self.command(kind, mnt)
        try:
            p = run(cmd, check=False, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise MountFailed(f"{kind}: `{shlex.join(cmd)}` did not return in 60 s")
        if p.returncode != 0:
            raise MountFailed(f"{kind}: `{shlex.join(cmd)}` exited {p.returncode}: "
                        f"{(p.stderr or p.stdout).strip()}")
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline:
                raise MountFailed(f"{kind}: {mnt} not mounted 15 s after `{shlex.join(cmd)}`")
            time.sleep(0.02)
        pid = None
        if kind != "kernel":
            pid = self.server_pid(mnt)
            if pid is not None:
                self.note(f"pid {pid} {mnt}")
        self.current = (kind, mnt, pid)
        return mnt

    def command(self, kind, mnt):
        """The command that mounts kind on mnt (a subclass adds kinds)."""
        if kind == "kernel":
            return ["mount", "-t", "ext2", "-o", "ro", self.loop, mnt]
        if kind == "fuse2fs":
            return ["fuse2fs", "-o", "ro", self.img, mnt]
        return [self.rumpfs_bin, "-o", ",".join(["ro"] + self.rumpfs_opts), self.img, mnt]

    def record_peak(self, group):
        if self.current and self.current[2] is not None:
            kb = self.vmhwm_kb(self.current[2])
            if kb is not None:
                self.peak.setdefault(self.current[0], []).append((group, kb))

    def umount(self):
        if not self.current:
            return
        kind, mnt, pid = self.current
        self.current = None
        self.unmount_path(mnt, pid)

    def unmount_path(self, mnt, pid=None):
        if os.path.ismount(mnt):
            p = run(["umount", mnt], check=False, capture_output=True, text=True)
            if p.returncode != 0 and os.path.ismount(mnt):
                run(["fusermount3", "-u", mnt], check=False, capture_output=True)
            if os.path.ismount(mnt):
                log(f"{mnt}: busy, detaching lazily")
                run(["umount", "-l", mnt], check=False)
        if pid is not None:
            # The server exits once the kernel tells it the file system is gone.
            deadline = time.monotonic() + 20
            while self.alive(pid, mnt) and time.monotonic() < deadline:
                time.sleep(0.02)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not self.alive(pid, mnt):
                    break
                log(f"server {pid} for {mnt} did not exit after unmount; sending {sig.name}")
                os.kill(pid, sig)
                time.sleep(2)

    def cleanup_all(self):
        try:
            self.umount()
        finally:
            for kind in self.kinds:
                m = self.mnt(kind)
                if os.path.ismount(m):
                    self.unmount_path(m, self.server_pid(m))
            self.teardown_loop()


# ------------------------------------------------------------------------------------------
# Workloads

def seq_read(path, bufsize=MiB):
    buf = bytearray(bufsize)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    return total, time.perf_counter() - t0


def sha256_of(path):
    h = hashlib.sha256()
    buf = bytearray(MiB)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return h.hexdigest()


def rand_offsets(size, count, seed):
    rng = random.Random(seed)
    nblocks = size // 4096
    return [rng.randrange(nblocks) * 4096 for _ in range(count)]


def rand_read(path, offsets):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        t0 = time.perf_counter()
        for off in offsets:
            n = os.preadv(fd, [buf], off)
            if n != 4096:
                raise OSError(f"short O_DIRECT read at {off}: {n} bytes")
        return len(offsets) / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def warm_host_cache(path):
    """Read the image file itself so the backing store is in the host page cache."""
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def timed_shell(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return time.perf_counter() - t0, p


# ------------------------------------------------------------------------------------------
# Report

def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "s":
        return f"{v:.3f}"
    if unit == "IOPS":
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def report(results, facts, meta, peaks, checks, kinds):
    med = {}
    for w, _label, _unit, _hb in WORKLOADS:
        for k in kinds:
            vals = [v for v in results[k][w] if v is not None]
            med[(k, w)] = statistics.median(vals) if vals else None

    def ratio(w, other):
        a, b = med.get((("rumpfs"), w)), med.get((other, w))
        if a is None or b is None or b == 0:
            return None
        return a / b

    lines = []
    big_mib = facts["big_bytes"] // MiB
    lines.append(f"rumpfs read-path benchmark, {meta['date']}, commit {meta['commit']}")
    lines.append(f"image: ext2, 4 KiB blocks, {facts['image_bytes'] / MiB:.0f} MiB; "
                 f"big file {big_mib} MiB random; tree {facts['files']} files in "
                 f"{facts['dirs']} dirs; {meta['runs']} run(s), medians; mounts interleaved")
    lines.append(f"host: Linux {meta['kernel']}, {meta['cpus']} CPUs; load average at start "
                 f"{' '.join(meta['load_start'])}, at end {' '.join(meta.get('load_end', ['?']))}")
    lines.append("")
    head = (f"{'workload':<34}{'kernel':>10}{'fuse2fs':>10}{'rumpfs':>10}"
            f"{'r/fuse2fs':>11}{'r/kernel':>10}  {'target':<30}{'result':>6}")
    lines.append(head)
    lines.append("-" * len(head))
    verdicts = {}
    for w, label, unit, _hb in WORKLOADS:
        if w in ("cold_seq", "warm_seq"):
            label = f"{label} {big_mib} MiB ({unit})"
        else:
            label = f"{label} ({unit})"
        rf, rk = ratio(w, "fuse2fs"), ratio(w, "kernel")
        tparts, ok = [], True
        for other, op, bound in TARGETS[w]:
            r = rf if other == "fuse2fs" else rk
            tparts.append(f"{op}{bound:.1f}x {other}")
            if r is None:
                ok = None if ok is not False else False
            elif (op == ">=" and r < bound) or (op == "<=" and r > bound):
                ok = False
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        verdicts[w] = verdict
        rfs = "n/a" if rf is None else f"{rf:.2f}x"
        rks = "n/a" if rk is None else f"{rk:.2f}x"
        lines.append(f"{label:<34}{fmt(med.get(('kernel', w)), unit):>10}"
                     f"{fmt(med.get(('fuse2fs', w)), unit):>10}"
                     f"{fmt(med.get(('rumpfs', w)), unit):>10}"
                     f"{rfs:>11}{rks:>10}  {', '.join(tparts):<30}{verdict:>6}")
    if "rumpfs" in kinds and "fuse2fs" in kinds and meta["runs"] > 1:
        lines.append("")
        lines.append("rumpfs/fuse2fs within each run (min, median, max), to show the noise:")
        for w, label, _unit, _hb in WORKLOADS:
            per = [a / b for a, b in zip(results["rumpfs"][w], results["fuse2fs"][w]) if a and b]
            if per:
                lines.append(f"  {label:<32}{min(per):6.2f}x {statistics.median(per):6.2f}x "
                             f"{max(per):6.2f}x")
    lines.append("")
    for k in kinds:
        if k == "kernel" or k not in peaks:
            continue
        vals = peaks[k]
        top = max(kb for _g, kb in vals)
        by = ", ".join(f"{g} {kb / 1024:.1f}" for g, kb in vals[:3])
        lines.append(f"peak RSS (VmHWM) of the {k} server: max {top / 1024:.1f} MiB over "
                     f"{len(vals)} mounts (first: {by} MiB)")
    if "rumpfs" in peaks:
        lines.append(f"  rumpfs-mount: {meta['rumpfs_bin']}; options: {meta['rumpfs_opts'] or '(defaults)'}; "
                     f"the big file read through it is {big_mib} MiB")
    lines.append("")
    for c in checks:
        lines.append(f"check: {c}")
    return "\n".join(lines), med, verdicts


# ------------------------------------------------------------------------------------------

def arg_parser(doc, binary="rumpfs-mount", runs=5, quick="", state=True):
    """The options every benchmark helper takes (the shell wrapper passes the first ones):
    --work, [--state], --out, --bin, --runs, --quick, --size-mib, --files."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--work", required=True)
    if state:
        ap.add_argument("--state", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", required=True, help=f"{binary} binary")
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {quick}, 1 run")
    ap.add_argument("--size-mib", type=int, default=None)
    ap.add_argument("--files", type=int, default=None)
    return ap


def main():
    ap = arg_parser(__doc__, quick="64 MiB file, 2,000 files, 2,000 random reads")
    ap.add_argument("--rand-count", type=int, default=None)
    ap.add_argument("--mounts", default=",".join(KINDS),
                    help="comma-separated subset of kernel,fuse2fs,rumpfs")
    ap.add_argument("--rumpfs-opts", default="",
                    help="extra -o options for rumpfs-mount, e.g. cache=256M,vcpus=2")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--keep-image", action="store_true")
    a = ap.parse_args()

    if a.quick:
        runs = 1 if "--runs" not in sys.argv else a.runs
        size_mib, nfiles, rcount = 64, 2000, 2000
    else:
        runs, size_mib, nfiles, rcount = a.runs, 512, 8000, 20000
    size_mib = a.size_mib or size_mib
    nfiles = a.files or nfiles
    rcount = a.rand_count or rcount
    kinds = [k for k in KINDS if k in a.mounts.split(",")]
    unknown = set(a.mounts.split(",")) - set(KINDS)
    if unknown or not kinds:
        ap.error(f"--mounts: unknown {sorted(unknown)}")
    rumpfs_opts = [o for o in a.rumpfs_opts.split(",") if o]

    if os.geteuid() != 0:
        sys.exit("bench: run as root (drop_caches, loop devices, kernel mounts)")
    for tool in ("mke2fs", "losetup", "mount", "umount", "fuse2fs", "fusermount3", "find", "ls"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found; run scripts/setup-debian.sh")
    if "rumpfs" in kinds and not os.access(a.bin, os.X_OK):
        sys.exit(f"bench: {a.bin} not found; build it (bench/run.sh does)")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    work = os.path.abspath(a.work)

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_start": open("/proc/loadavg").read().split()[:3],
        "runs": runs,
        "rumpfs_opts": ",".join(rumpfs_opts),
        "rumpfs_bin": os.path.abspath(a.bin),
        "mounts": kinds,
        "quick": a.quick,
    }

    m = None
    try:
        # A crashed earlier run may have left mounts behind in our own work dir.
        for kind in KINDS:
            mp = os.path.join(work, f"mnt-{kind}")
            if os.path.ismount(mp):
                log(f"unmounting leftover {mp}")
                run(["umount", "-l", mp], check=False)

        log(f"making the image: {size_mib} MiB random file + {nfiles} small files (mke2fs -d)")
        t0 = time.monotonic()
        facts = make_image(work, size_mib, nfiles, a.seed)
        log(f"image {facts['image']} ({facts['image_bytes'] // MiB} MiB) made in "
            f"{time.monotonic() - t0:.1f} s")
        m = Mounter(work, a.state, facts["image"], os.path.abspath(a.bin), rumpfs_opts)
        if "kernel" in kinds:
            m.setup_loop()

        results = {k: {w[0]: [] for w in WORKLOADS} for k in kinds}
        counts = {k: [] for k in kinds}
        errors = []
        offsets = rand_offsets(facts["big_bytes"], rcount, a.seed)

        def attempt(kind, w, fn):
            try:
                v = fn()
            except Abort:
                raise
            except Exception as e:  # a failing mount is a result, not the end of the run
                errors.append(f"{kind} {w}: {e}")
                log(f"{kind} {w}: FAILED: {e}")
                v = None
            results[kind][w].append(v)
            return v

        for r in range(runs):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            log(f"run {r + 1}/{runs}, order {' '.join(order)}")
            for kind in order:
                try:
                    mnt = m.mount(kind)
                except MountFailed as e:
                    errors.append(str(e))
                    log(str(e))
                    for w in ("cold_seq", "warm_seq", "rand4k"):
                        results[kind][w].append(None)
                    continue
                big = os.path.join(mnt, facts["big_path"])

                def seq():
                    n, t = seq_read(big)
                    if n != facts["big_bytes"]:
                        raise OSError(f"read {n} bytes, expected {facts['big_bytes']}")
                    return n / t / 1e6

                v1 = attempt(kind, "cold_seq", seq)
                v2 = attempt(kind, "warm_seq", seq)
                warm_host_cache(facts["image"])
                v3 = attempt(kind, "rand4k", lambda: rand_read(big, offsets))
                m.record_peak("seq+rand")
                m.umount()
                log(f"  {kind:8} cold {fmt(v1, 'MB/s')} MB/s, warm {fmt(v2, 'MB/s')} MB/s, "
                    f"rand4k {fmt(v3, 'IOPS')} IOPS")
            for w, cmd in (("find", "find {} | wc -l"), ("ls_lR", "ls -lR {} > /dev/null")):
                for kind in order:
                    try:
                        mnt = m.mount(kind)
                    except MountFailed as e:
                        errors.append(str(e))
                        log(str(e))
                        results[kind][w].append(None)
                        continue

                    def tree(w=w, cmd=cmd, mnt=mnt, kind=kind):
                        t, p = timed_shell(cmd.format(shlex.quote(mnt)))
                        if p.returncode != 0:
                            raise OSError(f"exit {p.returncode}: {p.stderr.strip()[:300]}")
                        if w == "find":
                            counts[kind].append(int(p.stdout.strip()))
                        return t

                    v = attempt(kind, w, tree)
                    m.record_peak(w)
                    m.umount()
                    log(f"  {kind:8} {w} {fmt(v, 's')} s")

        # Correctness, outside the timings: the same bytes and the same listing everywhere.
        checks = []
        listings = {}
        for kind in kinds:
            try:
                mnt = m.mount(kind)
                h = sha256_of(os.path.join(mnt, facts["big_path"]))
                same = h == facts["big_sha256"]
                checks.append(f"{kind}: sha256 of the big file "
                              f"{'matches' if same else 'DIFFERS from'} the source")
                p = run(["ls", "-lR", "--time-style=full-iso", "."], cwd=mnt, check=False,
                        capture_output=True, text=True)
                listings[kind] = p.stdout
                with open(os.path.join(a.out, f"ls-lR.{kind}.txt"), "w") as f:
                    f.write(p.stdout)
                m.umount()
            except (MountFailed, OSError) as e:
                m.umount()
                checks.append(f"{kind}: could not mount for the checks: {e}")
        for kind in kinds:
            c = counts[kind]
            if c:
                ok = all(x == facts["find_entries"] for x in c)
                checks.append(f"{kind}: find saw {c[0]} entries"
                              f"{'' if ok else ' (varied: ' + str(sorted(set(c))) + ')'}; "
                              f"the image holds {facts['find_entries']}")
        if "kernel" in listings:
            for kind in kinds:
                if kind == "kernel" or kind not in listings:
                    continue
                a_lines = listings["kernel"].splitlines()
                b_lines = listings[kind].splitlines()
                diff = sum(1 for x, y in zip(a_lines, b_lines) if x != y) + abs(
                    len(a_lines) - len(b_lines))
                checks.append(f"{kind}: ls -lR --time-style=full-iso "
                              + ("identical to the kernel's" if diff == 0 else
                                 f"differs from the kernel's in {diff} lines "
                                 f"(bench/out/ls-lR.*.txt)"))
        for e in errors:
            checks.append(f"error: {e}")

        meta["load_end"] = open("/proc/loadavg").read().split()[:3]
        text, med, verdicts = report(results, facts, meta, m.peak, checks, kinds)
        print(text, flush=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        tag = "quick" if a.quick else "full"
        with open(os.path.join(a.out, f"results-{stamp}-{tag}.txt"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(a.out, "latest.txt"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(a.out, f"results-{stamp}-{tag}.json"), "w") as f:
            json.dump({
                "meta": meta,
                "image": facts,
                "raw": results,
                "medians": {f"{k}/{w}": v for (k, w), v in med.items()},
                "verdicts": verdicts,
                "peak_vmhwm_kb": m.peak,
                "find_counts": counts,
                "checks": checks,
            }, f, indent=1)
        log(f"results in {a.out}/results-{stamp}-{tag}.txt and .json")
        return 1 if errors else 0
    except Abort as e:
        log(f"stopped: {e}")
        return 130
    finally:
        if m is not None:
            m.cleanup_all()
        if not a.keep_image:
            img = os.path.join(work, "bench.img")
            if os.path.exists(img):
                os.unlink(img)
            shutil.rmtree(os.path.join(work, "src"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
