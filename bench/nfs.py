#!/usr/bin/env python3
"""rumpfs NFS benchmark (issue 5): one nfs-ganesha export on 127.0.0.1, the same workloads
through rumpfs-mount and through libnfs's command-line tools, interleaved, medians.

Run it through bench/nfs.sh (which builds the release binary and cleans up after a crash);
see bench/README.md. Python 3 standard library only; the helpers come from bench.py.

Workloads, per run; the two clients alternate and the order rotates from run to run:
  read   sequential read of a 1 GiB random file on the export
           rumpfs:  fresh mount, 1 MiB read(2)s of MNT/big, written to a tmpfs file
           libnfs:  nfs-cp nfs://127.0.0.1/EXPORT/big /dev/shm/FILE               MB/s
           (nfs-cp refuses /dev/null as a target, so both copy into tmpfs)
  write  sequential write of a 1 GiB file to the export
           rumpfs:  fresh mount, 1 MiB write(2)s from a local file, fsync, close
           libnfs:  nfs-cp LOCAL nfs://127.0.0.1/EXPORT/w-libnfs                   MB/s
  walk   a tree of 20,000 files in 200 directories, every file stat'ed
           rumpfs:  fresh mount, find MNT/tree -printf '%s\n' > /dev/null           s
                    (find stats each file itself, one process, as ls -lR or du would)
           libnfs:  nfs-ls -R nfs://127.0.0.1/EXPORT/tree > /dev/null
  walk-exec  the same with find MNT/tree -exec stat --format=%s {} +, for information
           (no target): it also times starting stat once per few hundred paths, about
           37 times at a short mount path and 109 at the benchmark's; nfs-ls -R again
Before every read and write the server's file (or the local source) is made warm in the
host page cache, so both clients measure the NFS path, not the disk; every rumpfs
measurement starts from a fresh mount, so the kernel's FUSE page cache and dentries are cold.
"""

import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from bench import MiB, Abort, Mounter, arg_parser, drop_caches, git_commit, fmt, log, on_signal, run, timed_shell

NFS_PORT, MNT_PORT = 2049, 20048
CLIENTS = ["rumpfs", "libnfs"]
# name, label, unit, higher_is_better
WORKLOADS = [
    ("read", "sequential read", "MB/s", True),
    ("write", "sequential write", "MB/s", True),
    ("walk", "find + stat walk", "s", False),
    ("walk-exec", "find -exec stat walk", "s", False),
]
# rumpfs / libnfs: >= bound for MB/s, <= bound for seconds.
TARGETS = {"read": (">=", 1.0), "write": (">=", 1.0), "walk": ("<=", 1.0), "walk-exec": None}
LIBNFS_HOW = {"read": "nfs-cp URL /dev/shm/F", "write": "nfs-cp LOCAL URL", "walk": "nfs-ls -R URL",
              "walk-exec": "nfs-ls -R URL"}
RUMPFS_HOW = {"read": "read(2) 1 MiB -> tmpfs", "write": "write(2) 1 MiB+fsync", "walk": "find -printf %s",
              "walk-exec": "find -exec stat {} +"}


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(pred, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


class Servers:
    """rpcbind (only if none runs) and ganesha, both started here and stopped by pid."""

    def __init__(self, mounter, work, export):
        self.m = mounter
        self.work = work
        self.export = export
        self.procs = []  # (Popen, argv element that identifies it)

    def start_rpcbind(self):
        if port_open(111):
            log("rpcbind already runs; using it")
            return
        exe = shutil.which("rpcbind")
        p = subprocess.Popen([exe, "-f", "-w"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.m.note(f"pid {p.pid} {exe}")
        self.procs.append((p, exe))
        if not wait_until(lambda: port_open(111), 10):
            raise OSError("rpcbind did not listen on port 111")

    def start_ganesha(self):
        if port_open(NFS_PORT):
            raise OSError(f"port {NFS_PORT} is taken (another NFS server, a test run?)")
        conf = os.path.join(self.work, "ganesha.conf")
        with open(conf, "w") as f:
            f.write(
                f"NFS_CORE_PARAM {{ Bind_addr = 127.0.0.1; NFS_Port = {NFS_PORT}; MNT_Port = {MNT_PORT}; "
                "Protocols = 3; Enable_UDP = false; Enable_NLM = false; Enable_RQUOTA = false; }\n"
                "NFSV4 { Graceless = true; }\n"
                f"EXPORT {{ Export_Id = 1; Path = {self.export}; Pseudo = {self.export}; Protocols = 3; "
                "Transports = TCP; Access_Type = RW; Squash = No_Root_Squash; SecType = sys; "
                "PrivilegedPort = false; Attr_Expiration_Time = 0; FSAL { Name = VFS; } }\n")
        cmd = [shutil.which("ganesha.nfsd"), "-F", "-f", conf, "-L", os.path.join(self.work, "ganesha.log"),
               "-p", os.path.join(self.work, "ganesha.pid")]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.m.note(f"pid {p.pid} {conf}")
        self.procs.append((p, conf))
        if not wait_until(lambda: p.poll() is not None or (port_open(NFS_PORT) and port_open(MNT_PORT)), 15) \
                or p.poll() is not None:
            raise OSError(f"ganesha did not come up; see {self.work}/ganesha.log")
        log(f"ganesha (pid {p.pid}) exports {self.export} on 127.0.0.1")

    def stop(self):
        for p, _ in reversed(self.procs):  # ganesha first, then rpcbind
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []


def remove_written(path):
    """Removes the file an earlier write run left on the export, its blocks freed now: ganesha
    keeps files open in its descriptor cache, so a plain unlink would leave a gigabyte to be
    freed whenever ganesha closes it, maybe in the middle of a later measurement."""
    if os.path.exists(path):
        os.truncate(path, 0)
        os.unlink(path)


def make_file(path, size_mib, seed):
    """size_mib MiB of data, every MiB different (cheap to make; NFS does not compress)."""
    block = hashlib.sha512(str(seed).encode()).digest() * (MiB // 64)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size_mib):
            b = i.to_bytes(8, "little") + block[8:]
            f.write(b)
            h.update(b)
    return h.hexdigest()


def make_tree(root, nfiles, per_dir=100):
    for i in range(nfiles):
        d = os.path.join(root, f"d{i // per_dir:03d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(b"x" * (i % 2000))


def warm(path):
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def main():
    # Runs: even, so that each client goes first equally often: the first write of a run was
    # seen at half the speed of the second, whichever client made it.
    ap = arg_parser(__doc__, runs=4, quick="64 MiB, 2,000 files")
    ap.add_argument("--rumpfs-opts", default="", help="extra -o options for rumpfs-mount")
    a = ap.parse_args()
    runs, size_mib, nfiles = (1, 64, 2000) if a.quick else (a.runs, 1024, 20000)
    if a.quick and "--runs" in sys.argv:
        runs = a.runs
    size_mib = a.size_mib or size_mib
    nfiles = a.files or nfiles
    ropts = [o for o in a.rumpfs_opts.split(",") if o]

    if os.geteuid() != 0:
        sys.exit("bench/nfs.py: run as root (ganesha, rpcbind, drop_caches)")
    for tool in ("ganesha.nfsd", "rpcbind", "nfs-cp", "nfs-ls", "fusermount3", "find", "stat"):
        if not shutil.which(tool):
            sys.exit(f"bench/nfs.py: {tool} not found (nfs-ganesha-vfs, rpcbind, libnfs-utils, fuse3)")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"bench/nfs.py: {a.bin} not found; build it (bench/nfs.sh does)")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.makedirs(a.out, exist_ok=True)
    export = os.path.join(work, "export")
    os.makedirs(export)
    os.chmod(export, 0o777)
    local = os.path.join(work, "local")
    os.makedirs(local)
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    url = f"nfs://127.0.0.1{export}"
    sink = f"/dev/shm/rumpfs-bench-nfs-{os.getpid()}"
    source = f"127.0.0.1:{export}"

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(), "kernel": platform.release(),
        "cpus": os.cpu_count(), "load_start": open("/proc/loadavg").read().split()[:3],
        "runs": runs, "size_mib": size_mib, "files": nfiles, "rumpfs_bin": os.path.abspath(a.bin),
        "rumpfs_opts": ",".join(ropts),
    }
    m = Mounter(work, a.state, None, os.path.abspath(a.bin), ropts)
    srv = Servers(m, work, export)
    results = {c: {w[0]: [] for w in WORKLOADS} for c in CLIENTS}
    errors, checks = [], []
    try:
        log(f"making {size_mib} MiB files and a {nfiles}-file tree")
        big = os.path.join(export, "big")
        src = os.path.join(local, "src")
        big_sha = make_file(big, size_mib, 1)
        src_sha = make_file(src, size_mib, 2)
        make_tree(os.path.join(export, "tree"), nfiles)
        srv.start_rpcbind()
        srv.start_ganesha()

        def mount():
            m.umount()
            drop_caches()
            m.note(f"mount {mnt}")
            cmd = [a.bin, "-o", ",".join(["rw"] + ropts), source, mnt]
            p = run(cmd, check=False, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise OSError(f"`{shlex.join(cmd)}` exited {p.returncode}: {p.stderr.strip()}")
            if not wait_until(lambda: os.path.ismount(mnt), 15):
                raise OSError(f"{mnt} not mounted")
            pid = m.server_pid(mnt)
            if pid is not None:
                m.note(f"pid {pid} {mnt}")
            m.current = ("rumpfs", mnt, pid)

        def r_read():
            mount()  # drops the caches
            warm(big)
            buf = bytearray(MiB)
            n, t0 = 0, time.perf_counter()
            with open(os.path.join(mnt, "big"), "rb", buffering=0) as f, open(sink, "wb", buffering=0) as out:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    out.write(memoryview(buf)[:k])
                    n += k
            t = time.perf_counter() - t0
            os.unlink(sink)
            m.record_peak("read")
            m.umount()
            if n != size_mib * MiB:
                raise OSError(f"read {n} bytes")
            return n / t / 1e6

        def r_write():
            dst = os.path.join(mnt, "w-rumpfs")
            remove_written(os.path.join(export, "w-rumpfs"))
            mount()
            warm(src)
            buf = bytearray(MiB)
            t0 = time.perf_counter()
            with open(src, "rb", buffering=0) as fi:
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    while True:
                        k = fi.readinto(buf)
                        if not k:
                            break
                        os.write(fd, memoryview(buf)[:k])
                    os.fsync(fd)
                finally:
                    os.close(fd)
            t = time.perf_counter() - t0
            m.record_peak("write")
            m.umount()
            return size_mib * MiB / t / 1e6

        def r_walk(how="-printf '%s\\n'"):
            mount()
            t, p = timed_shell(f"find {shlex.quote(mnt)}/tree {how} > /dev/null")
            m.record_peak("walk")
            m.umount()
            if p.returncode != 0:
                raise OSError(f"find exited {p.returncode}: {p.stderr.strip()[:300]}")
            return t

        def l_read():
            drop_caches()
            warm(big)
            t, p = timed_shell(f"nfs-cp {shlex.quote(url)}/big {shlex.quote(sink)}")
            n = os.path.getsize(sink) if os.path.exists(sink) else 0
            if os.path.exists(sink):
                os.unlink(sink)
            if p.returncode != 0:
                raise OSError(f"nfs-cp exited {p.returncode}: {(p.stderr or p.stdout).strip()[:300]}")
            if n != size_mib * MiB:
                raise OSError(f"nfs-cp copied {n} bytes")
            return size_mib * MiB / t / 1e6

        def l_write():
            remove_written(os.path.join(export, "w-libnfs"))
            drop_caches()
            warm(src)
            t, p = timed_shell(f"nfs-cp {shlex.quote(src)} {shlex.quote(url)}/w-libnfs")
            if p.returncode != 0:
                raise OSError(f"nfs-cp exited {p.returncode}: {(p.stderr or p.stdout).strip()[:300]}")
            return size_mib * MiB / t / 1e6

        def l_walk():
            drop_caches()
            t, p = timed_shell(f"nfs-ls -R {shlex.quote(url)}/tree > /dev/null")
            if p.returncode != 0:
                raise OSError(f"nfs-ls exited {p.returncode}: {(p.stderr or p.stdout).strip()[:300]}")
            return t

        fns = {("rumpfs", "read"): r_read, ("rumpfs", "write"): r_write, ("rumpfs", "walk"): r_walk,
               ("rumpfs", "walk-exec"): lambda: r_walk("-exec stat --format=%s {} +"),
               ("libnfs", "read"): l_read, ("libnfs", "write"): l_write, ("libnfs", "walk"): l_walk,
               ("libnfs", "walk-exec"): l_walk}
        for r in range(runs):
            order = CLIENTS[r % 2:] + CLIENTS[:r % 2]
            log(f"run {r + 1}/{runs}, order {' '.join(order)}")
            for w, _label, unit, _hb in WORKLOADS:
                for c in order:
                    try:
                        v = fns[(c, w)]()
                    except Abort:
                        raise
                    except Exception as e:  # a failure is a result, not the end of the run
                        m.umount()
                        errors.append(f"{c} {w}: {e}")
                        log(f"{c} {w}: FAILED: {e}")
                        v = None
                    results[c][w].append(v)
                    log(f"  {c:7} {w:6} {fmt(v, unit)} {unit}")

        # Correctness, outside the timings.
        for name, want in (("w-rumpfs", src_sha), ("w-libnfs", src_sha)):
            p = os.path.join(export, name)
            ok = os.path.exists(p) and sha256_of(p) == want
            checks.append(f"{name} on the export {'matches' if ok else 'DIFFERS from'} the local source")
        mount()
        ok = sha256_of(os.path.join(mnt, "big")) == big_sha
        n = run(["find", os.path.join(mnt, "tree"), "-type", "f"], capture_output=True, text=True).stdout.count("\n")
        m.umount()
        checks.append(f"rumpfs: the big file read through the mount {'matches' if ok else 'DIFFERS'}")
        checks.append(f"rumpfs: find saw {n} files; the tree holds {nfiles}")
        p = run(["nfs-ls", "-R", url + "/tree"], capture_output=True, text=True, check=False)
        checks.append(f"libnfs: nfs-ls -R printed {p.stdout.count(chr(10))} lines")
        for e in errors:
            checks.append(f"error: {e}")
    except Abort as e:
        log(f"stopped: {e}")
        return 130
    finally:
        try:
            m.umount()
            if os.path.ismount(mnt):
                m.unmount_path(mnt, m.server_pid(mnt))
        finally:
            srv.stop()
            for d in (export, local):
                shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(sink):
                os.unlink(sink)

    meta["load_end"] = open("/proc/loadavg").read().split()[:3]
    med = {}
    for c in CLIENTS:
        for w, *_ in WORKLOADS:
            vals = [v for v in results[c][w] if v is not None]
            med[(c, w)] = statistics.median(vals) if vals else None

    def by_position(w):
        """rumpfs/libnfs compared like with like: the runs alternate which client goes first,
        and the first of a workload can run at half the speed of the second whoever makes it
        (the write does here), so that a median over all runs falls between the two groups.
        Returns the ratio of the medians over the runs where each client went first, the same
        where each went second, and their geometric mean; None without both kinds of run."""
        r, lb = results["rumpfs"][w], results["libnfs"][w]
        groups = ([v for i, v in enumerate(r) if v and i % 2 == 0], [v for i, v in enumerate(lb) if v and i % 2 == 1],
                  [v for i, v in enumerate(r) if v and i % 2 == 1], [v for i, v in enumerate(lb) if v and i % 2 == 0])
        if not all(groups):
            return None
        first = statistics.median(groups[0]) / statistics.median(groups[1])
        second = statistics.median(groups[2]) / statistics.median(groups[3])
        return first, second, (first * second) ** 0.5

    lines = [f"rumpfs NFS benchmark, {meta['date']}, commit {meta['commit']}",
             f"one nfs-ganesha (VFS FSAL) export on 127.0.0.1, NFSv3 over TCP; file {size_mib} MiB, "
             f"tree {nfiles} files in {nfiles // 100} dirs; {runs} run(s), medians; clients interleaved, "
             "each first in every other run; ratio: each client's median when first against the "
             "other's when first, the same when second, geometric mean of the two",
             f"host: Linux {meta['kernel']}, {meta['cpus']} CPUs; load average at start "
             f"{' '.join(meta['load_start'])}, at end {' '.join(meta['load_end'])}", ""]
    head = (f"{'workload':<26}{'rumpfs':>10}{'libnfs':>10}{'ratio':>8}  {'target':<22}{'result':>6}"
            f"   libnfs tool / rumpfs how")
    lines += [head, "-" * len(head)]
    verdicts, positions = {}, {}
    for w, label, unit, _hb in WORKLOADS:
        a_, b_ = med[("rumpfs", w)], med[("libnfs", w)]
        positions[w] = by_position(w)
        ratio = positions[w][2] if positions[w] else (a_ / b_ if a_ and b_ else None)
        if TARGETS[w] is None:
            verdict, target = "info", "none (information)"
        else:
            op, bound = TARGETS[w]
            if ratio is None:
                verdict = "n/a"
            else:
                verdict = "PASS" if (ratio >= bound if op == ">=" else ratio <= bound) else "MISS"
            target = f"{'>=' if op == '>=' else '<='}{bound:.1f}x libnfs" + (" (time)" if unit == "s" else "")
        verdicts[w] = verdict
        lines.append(f"{label + ' (' + unit + ')':<26}{fmt(a_, unit):>10}{fmt(b_, unit):>10}"
                     f"{'n/a' if ratio is None else f'{ratio:.2f}x':>8}  {target:<22}{verdict:>6}"
                     f"   {LIBNFS_HOW[w]} / {RUMPFS_HOW[w]}")
    if any(positions.values()):
        lines += ["", "rumpfs/libnfs: both first, both second; the plain ratio of the medians over all runs:"]
        for w, label, _u, _hb in WORKLOADS:
            a_, b_ = med[("rumpfs", w)], med[("libnfs", w)]
            if positions[w] and a_ and b_:
                f1, f2, _g = positions[w]
                lines.append(f"  {label:<24}{f1:6.2f}x {f2:6.2f}x   {a_ / b_:6.2f}x")
    if runs > 1:
        lines += ["", "rumpfs/libnfs within each run (min, median, max):"]
        for w, label, _u, _hb in WORKLOADS:
            per = [x / y for x, y in zip(results["rumpfs"][w], results["libnfs"][w]) if x and y]
            if per:
                lines.append(f"  {label:<24}{min(per):6.2f}x {statistics.median(per):6.2f}x {max(per):6.2f}x")
    if "rumpfs" in m.peak:
        top = max(kb for _g, kb in m.peak["rumpfs"])
        lines.append(f"\npeak RSS (VmHWM) of rumpfs-mount: max {top / 1024:.1f} MiB over {len(m.peak['rumpfs'])} mounts")
    lines.append(f"rumpfs-mount: {meta['rumpfs_bin']}; options: {meta['rumpfs_opts'] or '(defaults)'}")
    lines.append("")
    lines += [f"check: {c}" for c in checks]
    text = "\n".join(lines)
    print(text, flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = "quick" if a.quick else "full"
    for name in (f"nfs-results-{stamp}-{tag}.txt", "nfs-latest.txt"):
        with open(os.path.join(a.out, name), "w") as f:
            f.write(text + "\n")
    with open(os.path.join(a.out, f"nfs-results-{stamp}-{tag}.json"), "w") as f:
        json.dump({"meta": meta, "raw": results, "verdicts": verdicts, "checks": checks,
                   "position_ratios": positions,
                   "medians": {f"{c}/{w}": v for (c, w), v in med.items()},
                   "peak_vmhwm_kb": m.peak}, f, indent=1)
    log(f"results in {a.out}/nfs-results-{stamp}-{tag}.txt and .json")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
