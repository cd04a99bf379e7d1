#!/usr/bin/env python3
"""rumpfs FFS read-path benchmark: bench.py's workloads on an FFS image beside ext2.

Run it through `bench/run.sh --fs ffs` (which builds the release binary and cleans up after a
crash); see bench/README.md. Python 3 standard library only; reuses bench.py's helpers.

One generated tree (bench.py's: a big random file and a tree of small files), two images of it:
  ext2  `mke2fs -t ext2 -b 4096 -d SRC` (bench.py's image)
  ffs   Debian `makefs -t ffs -o version=2,bsize=32768,fsize=4096 SRC` (UFS2, 32k/4k)

Mounts (all read-only), interleaved, the order rotating from run to run:
  kernel   the Linux ext2 driver on a read-only loop device of the ext2 image
  rumpfs   rumpfs-mount -o ro on the ext2 image
  ffs      rumpfs-mount -o ro on the FFS image

Workloads and units as in bench.py (cold_seq, warm_seq, rand4k, find, ls_lR). Target
(issue 4): FFS within 1.2x of our own ext2 on every workload (ffs/rumpfs >= 1/1.2 for MB/s and
IOPS, <= 1.2 for seconds).
"""

import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (MiB, WORKLOADS, Abort, git_commit, Mounter, MountFailed, arg_parser, fmt, log, make_image,  # noqa: E402
                   on_signal, rand_offsets, rand_read, run, seq_read, sha256_of, timed_shell,
                   warm_host_cache)

KINDS = ["kernel", "rumpfs", "ffs"]
BOUND = 1.2  # ffs may be at most this much slower than rumpfs on ext2


class FfsMounter(Mounter):
    """bench.py's Mounter, plus the kind `ffs`: rumpfs-mount on the FFS image."""

    def __init__(self, work, state, img, ffs_img, rumpfs_bin, rumpfs_opts):
        super().__init__(work, state, img, rumpfs_bin, rumpfs_opts)
        self.ffs_img = ffs_img
        self.kinds = KINDS

    def command(self, kind, mnt):
        if kind == "ffs":
            return [self.rumpfs_bin, "-o", ",".join(["ro"] + self.rumpfs_opts), self.ffs_img, mnt]
        return super().command(kind, mnt)

    def image_of(self, kind):
        return self.ffs_img if kind == "ffs" else self.img


def make_ffs(work, facts):
    """The FFS image of the same tree (bench.py's make_image kept WORK/src)."""
    src = os.path.join(work, "src")
    img = os.path.join(work, "bench-ffs.img")
    if os.path.exists(img):
        os.unlink(img)
    size = int(facts["image_bytes"] * 1.1) // MiB + 64
    run(["makefs", "-t", "ffs", "-B", "le", "-o", "version=2,bsize=32768,fsize=4096",
         "-s", f"{size}m", img, src], capture_output=True)
    return img


def tree_facts(root):
    """(relative path, type, size of files, mode, mtime) of everything below root except
    lost+found: what two images of one tree must agree on."""
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel == ".":
            dirs[:] = [x for x in dirs if x != "lost+found"]
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(d, name))
            isdir = name in dirs
            out.append((os.path.normpath(os.path.join(rel, name)), "d" if isdir else "f",
                        0 if isdir else st.st_size, st.st_mode, st.st_mtime_ns))
    return sorted(out)


def report(results, facts, meta, peaks, checks, kinds):
    med = {}
    for w, _label, _unit, _hb in WORKLOADS:
        for k in kinds:
            vals = [v for v in results[k][w] if v is not None]
            med[(k, w)] = statistics.median(vals) if vals else None

    def ratio(a, b, w):
        x, y = med.get((a, w)), med.get((b, w))
        return None if x is None or y in (None, 0) else x / y

    big_mib = facts["big_bytes"] // MiB
    lines = [
        f"rumpfs FFS read-path benchmark, {meta['date']}, commit {meta['commit']}",
        f"images: ext2 4 KiB blocks ({facts['image_bytes'] / MiB:.0f} MiB) and FFS UFS2 32k/4k "
        f"({facts['ffs_bytes'] / MiB:.0f} MiB, makefs) of one tree: big file {big_mib} MiB random; "
        f"{facts['files']} files in {facts['dirs']} dirs; {meta['runs']} run(s), medians; "
        f"mounts interleaved",
        f"host: Linux {meta['kernel']}, {meta['cpus']} CPUs; load average at start "
        f"{' '.join(meta['load_start'])}, at end {' '.join(meta.get('load_end', ['?']))}",
        "",
    ]
    head = (f"{'workload':<34}{'kernel':>10}{'rumpfs':>10}{'ffs':>10}"
            f"{'ffs/rumpfs':>12}{'ffs/kernel':>12}  {'target':<22}{'result':>6}")
    lines += [head, "-" * len(head)]
    verdicts = {}
    for w, label, unit, higher in WORKLOADS:
        label = f"{label} {big_mib} MiB ({unit})" if w in ("cold_seq", "warm_seq") else f"{label} ({unit})"
        rr, rk = ratio("ffs", "rumpfs", w), ratio("ffs", "kernel", w)
        if higher:
            target, ok = f">={1 / BOUND:.2f}x rumpfs", None if rr is None else rr >= 1 / BOUND
        else:
            target, ok = f"<={BOUND:.1f}x rumpfs", None if rr is None else rr <= BOUND
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        verdicts[w] = verdict
        lines.append(f"{label:<34}{fmt(med.get(('kernel', w)), unit):>10}"
                     f"{fmt(med.get(('rumpfs', w)), unit):>10}{fmt(med.get(('ffs', w)), unit):>10}"
                     f"{'n/a' if rr is None else f'{rr:.2f}x':>12}{'n/a' if rk is None else f'{rk:.2f}x':>12}"
                     f"  {target:<22}{verdict:>6}")
    if meta["runs"] > 1:
        lines += ["", "ffs/rumpfs within each run (min, median, max), to show the noise:"]
        for w, label, _unit, _hb in WORKLOADS:
            per = [a / b for a, b in zip(results["ffs"][w], results["rumpfs"][w]) if a and b]
            if per:
                lines.append(f"  {label:<32}{min(per):6.2f}x {statistics.median(per):6.2f}x {max(per):6.2f}x")
    lines.append("")
    for k in kinds:
        if k in peaks:
            top = max(kb for _g, kb in peaks[k])
            lines.append(f"peak RSS (VmHWM) of the {k} server: max {top / 1024:.1f} MiB over {len(peaks[k])} mounts")
    lines.append(f"  rumpfs-mount: {meta['rumpfs_bin']}; options: {meta['rumpfs_opts'] or '(defaults)'}")
    lines.append("")
    lines += [f"check: {c}" for c in checks]
    return "\n".join(lines), med, verdicts


def main():
    ap = arg_parser(__doc__, quick="64 MiB file, 2,000 files, 2,000 random reads")
    ap.add_argument("--rand-count", type=int, default=None)
    ap.add_argument("--rumpfs-opts", default="", help="extra -o options for rumpfs-mount")
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
    kinds = KINDS
    rumpfs_opts = [o for o in a.rumpfs_opts.split(",") if o]

    if os.geteuid() != 0:
        sys.exit("bench: run as root (drop_caches, loop devices, kernel mounts)")
    for tool in ("mke2fs", "makefs", "losetup", "mount", "umount", "fusermount3", "find", "ls"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found; run scripts/setup-debian.sh")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"bench: {a.bin} not found; build it (bench/run.sh does)")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
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
    facts = None
    try:
        for kind in kinds:
            mp = os.path.join(work, f"mnt-{kind}")
            if os.path.ismount(mp):
                log(f"unmounting leftover {mp}")
                run(["umount", "-l", mp], check=False)

        log(f"making the images: {size_mib} MiB random file + {nfiles} small files "
            f"(mke2fs -d, makefs -t ffs)")
        t0 = time.monotonic()
        facts = make_image(work, size_mib, nfiles, a.seed, keep_src=True)
        ffs_img = make_ffs(work, facts)
        facts["ffs_image"] = ffs_img
        facts["ffs_bytes"] = os.path.getsize(ffs_img)
        shutil.rmtree(os.path.join(work, "src"))
        log(f"images made in {time.monotonic() - t0:.1f} s")
        # The FFS image has no lost+found.
        entries = {"kernel": facts["find_entries"], "rumpfs": facts["find_entries"],
                   "ffs": facts["find_entries"] - 1}

        m = FfsMounter(work, a.state, facts["image"], ffs_img, os.path.abspath(a.bin), rumpfs_opts)
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
                warm_host_cache(m.image_of(kind))
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

        # Correctness, outside the timings.
        checks = []
        seen = {}
        for kind in kinds:
            try:
                mnt = m.mount(kind)
                same = sha256_of(os.path.join(mnt, facts["big_path"])) == facts["big_sha256"]
                checks.append(f"{kind}: sha256 of the big file {'matches' if same else 'DIFFERS from'} the source")
                seen[kind] = tree_facts(mnt)
                m.umount()
            except (MountFailed, OSError) as e:
                m.umount()
                checks.append(f"{kind}: could not mount for the checks: {e}")
        for kind in kinds:
            c = counts[kind]
            if c:
                ok = all(x == entries[kind] for x in c)
                checks.append(f"{kind}: find saw {c[0]} entries"
                              f"{'' if ok else ' (varied: ' + str(sorted(set(c))) + ')'}; "
                              f"the image holds {entries[kind]}")
        if "kernel" in seen:
            for kind in ("rumpfs", "ffs"):
                if kind in seen:
                    diff = len(set(seen[kind]) ^ set(seen["kernel"]))
                    checks.append(f"{kind}: names, types, file sizes, modes and mtimes (ns) "
                                  + ("identical to the kernel's ext2" if diff == 0 else
                                     f"differ from the kernel's ext2 in {diff} entries"))
        for e in errors:
            checks.append(f"error: {e}")

        meta["load_end"] = open("/proc/loadavg").read().split()[:3]
        text, med, verdicts = report(results, facts, meta, m.peak, checks, kinds)
        print(text, flush=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        tag = "quick" if a.quick else "full"
        for name in (f"ffs-results-{stamp}-{tag}.txt", "latest-ffs.txt"):
            with open(os.path.join(a.out, name), "w") as f:
                f.write(text + "\n")
        with open(os.path.join(a.out, f"ffs-results-{stamp}-{tag}.json"), "w") as f:
            json.dump({"meta": meta, "image": facts, "raw": results,
                       "medians": {f"{k}/{w}": v for (k, w), v in med.items()},
                       "verdicts": verdicts, "peak_vmhwm_kb": m.peak, "find_counts": counts,
                       "checks": checks}, f, indent=1)
        log(f"results in {a.out}/ffs-results-{stamp}-{tag}.txt and .json")
        return 1 if errors else 0
    except Abort as e:
        log(f"stopped: {e}")
        return 130
    finally:
        if m is not None:
            m.cleanup_all()
        if not a.keep_image:
            for name in ("bench.img", "bench-ffs.img"):
                p = os.path.join(work, name)
                if os.path.exists(p):
                    os.unlink(p)
        shutil.rmtree(os.path.join(work, "src"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
