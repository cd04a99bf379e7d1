#!/usr/bin/env python3
"""rumpfs-fsck benchmark: rumpfs-fsck -fn against e2fsck -fn on one ext4 image, and
rumpfs-fsck -fn on an FFS (UFS2) image of the same tree, runs interleaved, medians reported.

Run it through bench/fsck.sh (which builds the release binary); see bench/README.md.
Python 3 standard library only; reuses bench.py's helpers.

Images (made once per invocation from one generated tree; --keep-image keeps them):
  ext4  `mke2fs -t ext4 -d SRC`, 1 GiB, 100,000 files (tree/aN/dNN/fNNN, 100 a directory)
  ffs   Debian `makefs -t ffs -o version=2 SRC`, 1 GiB, the same tree

Checks, per run, interleaved (the order rotates from run to run), each under
`/usr/bin/time -f '%e %M'` (wall seconds, peak RSS KiB):
  cold   page cache dropped first (sync; echo 3 > /proc/sys/vm/drop_caches)
  warm   the same check again right after, nothing dropped

Targets (issue 6): rumpfs-fsck on ext4 at most 1.0x e2fsck's time, peak memory at most 1.5x
e2fsck's. There is no fsck_ffs for Linux: the FFS figures are rumpfs-fsck's own, shown
against the ext4 e2fsck anchor.
"""

import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no bench/__pycache__ from importing bench.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Abort, MiB, arg_parser, drop_caches, git_commit, log, on_signal, run  # noqa: E402

# name, command builder (bin, image) -> argv, image kind
CHECKERS = [
    ("e2fsck/ext4", lambda b, imgs: ["e2fsck", "-fn", imgs["ext4"]]),
    ("rumpfs/ext4", lambda b, imgs: [b, "-fn", imgs["ext4"]]),
    ("rumpfs/ffs", lambda b, imgs: [b, "-fn", imgs["ffs"]]),
]
MODES = ["cold", "warm"]
TIME_BOUND = 1.0
MEM_BOUND = 1.5


def make_tree(src, nfiles, seed):
    """tree/aN/dNN/fNNN, 100 files a directory, 10 directories an aN; seeded sizes, mostly
    small (60% up to 2 KiB, 35% up to 8 KiB, 5% up to 32 KiB), so 100,000 files fit 1 GiB."""
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    rng = random.Random(seed)
    ndirs = (nfiles + 99) // 100
    made = dirs = data = 0
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
            n = rng.randrange(0, 2049) if r < 0.60 else (
                rng.randrange(2049, 8193) if r < 0.95 else rng.randrange(8193, 32769))
            with open(os.path.join(sub, f"f{i:03}"), "wb") as f:
                f.write(rng.randbytes(n))
            made += 1
            data += n
    return {"files": made, "dirs": dirs + 1, "data_bytes": data}


def make_images(work, size_mib, nfiles, seed):
    src = os.path.join(work, "src")
    ext4 = os.path.join(work, "fsck-ext4.img")
    ffs = os.path.join(work, "fsck-ffs.img")
    facts = make_tree(src, nfiles, seed)
    for p in (ext4, ffs):
        if os.path.exists(p):
            os.unlink(p)
    # One inode per 8 KiB, so 100,000 files fit (mke2fs's default is one per 16 KiB).
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-i", "8192", "-m", "0",
         "-L", "fsck-bench", "-d", src, ext4, f"{size_mib}M"])
    run(["makefs", "-t", "ffs", "-o", "version=2", "-f", str(nfiles // 5),
         "-s", f"{size_mib * MiB}", ffs, src], capture_output=True)
    shutil.rmtree(src)
    facts.update({"ext4": ext4, "ffs": ffs,
                  "ext4_bytes": os.path.getsize(ext4), "ffs_bytes": os.path.getsize(ffs)})
    return facts


def timed(argv):
    """(wall s, peak RSS KiB, exit status, output) of argv under /usr/bin/time -f '%e %M'
    (the wall time is taken around it here, to the millisecond)."""
    r, w = os.pipe()
    try:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", f"/dev/fd/{w}"] + argv,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           pass_fds=(w,))
        wall = time.perf_counter() - t0  # finer than time(1)'s %e (hundredths)
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        line = f.read().strip().splitlines()[-1]
    rss = line.split()[1]
    return wall, int(rss), p.returncode, p.stdout + p.stderr


def report(res, facts, meta):
    med = {k: {m: {"s": None, "kib": None} for m in MODES} for k, _ in CHECKERS}
    for k, _ in CHECKERS:
        for m in MODES:
            rows = res[k][m]
            if rows:
                med[k][m]["s"] = statistics.median(r[0] for r in rows)
                med[k][m]["kib"] = statistics.median(r[1] for r in rows)
    L = []
    L.append(f"rumpfs-fsck benchmark, {meta['date']}, commit {meta['commit']}")
    L.append(f"tree: {facts['files']} files in {facts['dirs']} dirs, "
             f"{facts['data_bytes'] / MiB:.0f} MiB of data; ext4 image "
             f"{facts['ext4_bytes'] / MiB:.0f} MiB (mke2fs -d), FFS UFS2 image "
             f"{facts['ffs_bytes'] / MiB:.0f} MiB (makefs); {meta['runs']} run(s), medians, "
             f"interleaved")
    L.append(f"host: Linux {meta['kernel']}, {meta['cpus']} CPUs; load average at start "
             f"{' '.join(meta['load_start'])}, at end {' '.join(meta.get('load_end', ['?']))}")
    L.append("")
    head = (f"{'check':<22}{'mode':<6}{'wall s':>8}{'peak MiB':>10}{'t/e2fsck':>10}"
            f"{'m/e2fsck':>10}  {'target':<30}{'result':>6}")
    L.append(head)
    L.append("-" * len(head))
    verdicts = {}
    for m in MODES:
        base = med["e2fsck/ext4"][m]
        for k, _ in CHECKERS:
            v = med[k][m]
            rt = v["s"] / base["s"] if v["s"] and base["s"] else None
            rm = v["kib"] / base["kib"] if v["kib"] and base["kib"] else None
            target, verdict = "", ""
            if k == "rumpfs/ext4":
                target = f"t<={TIME_BOUND:.1f}x, m<={MEM_BOUND:.1f}x"
                if rt is None or rm is None:
                    verdict = "n/a"
                else:
                    verdict = "PASS" if rt <= TIME_BOUND and rm <= MEM_BOUND else "MISS"
                    if verdict == "MISS":
                        miss = [w for w, ok in (("time", rt <= TIME_BOUND),
                                                 ("mem", rm <= MEM_BOUND)) if not ok]
                        verdict += f" ({'+'.join(miss)})"
                verdicts[m] = verdict
            elif k == "rumpfs/ffs":
                target = "(no fsck_ffs; vs ext4 anchor)"
            ws = "n/a" if v["s"] is None else f"{v['s']:.3f}"
            ms = "n/a" if v["kib"] is None else f"{v['kib'] / 1024:.1f}"
            L.append(f"{k:<22}{m:<6}{ws:>8}{ms:>10}"
                     f"{'' if k.startswith('e2fsck') or rt is None else f'{rt:.2f}x':>10}"
                     f"{'' if k.startswith('e2fsck') or rm is None else f'{rm:.2f}x':>10}"
                     f"  {target:<30}{verdict:>6}")
    L.append("")
    for n in meta.get("notes", []):
        L.append(f"note: {n}")
    for k, _ in CHECKERS:
        for m in MODES:
            rows = res[k][m]
            if rows:
                L.append(f"  {k} {m}: wall " + " ".join(f"{r[0]:.2f}" for r in rows)
                         + "; MiB " + " ".join(f"{r[1] / 1024:.0f}" for r in rows)
                         + "; exit " + " ".join(str(r[2]) for r in rows))
    return "\n".join(L), med, verdicts


def main():
    ap = arg_parser(__doc__, binary="rumpfs-fsck", quick="256 MiB, 10,000 files", state=False)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--keep-image", action="store_true",
                    help="keep the images, and reuse kept ones of the same size and count")
    a = ap.parse_args()
    runs, size_mib, nfiles = (1, 256, 10000) if a.quick else (a.runs, 1024, 100000)
    if a.quick and "--runs" in sys.argv:
        runs = a.runs
    size_mib = a.size_mib or size_mib
    nfiles = a.files or nfiles

    if os.geteuid() != 0:
        sys.exit("bench: run as root (it drops the page cache)")
    for tool in ("mke2fs", "e2fsck", "makefs"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found; run scripts/setup-debian.sh")
    if not os.access("/usr/bin/time", os.X_OK):
        sys.exit("bench: /usr/bin/time not found (apt-get install time)")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"bench: {a.bin} not found; build it (bench/fsck.sh does)")
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_start": open("/proc/loadavg").read().split()[:3],
        "runs": runs,
        "bin": os.path.abspath(a.bin),
    }
    facts_path = os.path.join(work, "fsck-facts.json")
    facts = None
    try:
        if a.keep_image and os.path.exists(facts_path):
            f = json.load(open(facts_path))
            if (f.get("size_mib"), f.get("nfiles"), f.get("seed")) == (size_mib, nfiles, a.seed) \
                    and all(os.path.exists(f[k]) for k in ("ext4", "ffs")):
                facts = f
                log(f"reusing the kept images in {work}")
        if facts is None:
            log(f"making the images: {size_mib} MiB, {nfiles} files (mke2fs -d, makefs)")
            t0 = time.monotonic()
            facts = make_images(work, size_mib, nfiles, a.seed)
            facts.update({"size_mib": size_mib, "nfiles": nfiles, "seed": a.seed})
            json.dump(facts, open(facts_path, "w"))
            log(f"images made in {time.monotonic() - t0:.1f} s")
        imgs = {"ext4": facts["ext4"], "ffs": facts["ffs"]}
        # The ext4 image must be clean to both checkers, or the comparison means nothing.
        # The FFS image is timed whatever it holds; what the check finds is in the report
        # (Debian's makefs has been seen to leave a zeroed UFS2 inode that a directory names).
        notes = []
        for k, mk in CHECKERS:
            _w, _m, rc, out = timed(mk(a.bin, imgs))
            if rc != 0 and k != "rumpfs/ffs":
                sys.exit(f"bench: {k}: exit {rc} on the fresh image:\n{out[-2000:]}")
            if rc != 0:
                lines = out.strip().splitlines()
                notes.append(f"{k}: exit {rc} on the fresh makefs image ({len(lines) - 1} "
                             f"finding(s)); first: {lines[0] if lines else '?'}; "
                             f"last: {lines[-1] if lines else '?'}")
                log(notes[-1])
        meta["notes"] = notes
        res = {k: {m: [] for m in MODES} for k, _ in CHECKERS}
        for r in range(runs):
            order = CHECKERS[r % len(CHECKERS):] + CHECKERS[:r % len(CHECKERS)]
            for k, mk in order:
                drop_caches()
                res[k]["cold"].append(timed(mk(a.bin, imgs)))
                res[k]["warm"].append(timed(mk(a.bin, imgs)))
                log(f"run {r + 1}/{runs} {k}: cold {res[k]['cold'][-1][0]:.2f} s "
                    f"{res[k]['cold'][-1][1] / 1024:.0f} MiB, warm {res[k]['warm'][-1][0]:.2f} s "
                    f"{res[k]['warm'][-1][1] / 1024:.0f} MiB")
        meta["load_end"] = open("/proc/loadavg").read().split()[:3]
        text, med, verdicts = report(res, facts, meta)
        print(text)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        tag = "quick" if a.quick else "full"
        with open(os.path.join(a.out, f"fsck-results-{stamp}-{tag}.txt"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(a.out, f"fsck-results-{stamp}-{tag}.json"), "w") as f:
            json.dump({"meta": meta, "facts": facts, "medians": med, "verdicts": verdicts,
                       "raw": {k: {m: [r[:3] for r in v] for m, v in d.items()}
                               for k, d in res.items()}}, f, indent=1)
        with open(os.path.join(a.out, "latest-fsck.txt"), "w") as f:
            f.write(text + "\n")
    except Abort as e:
        log(f"stopped: {e}")
        return 130
    finally:
        if not a.keep_image and facts:
            for k in ("ext4", "ffs"):
                if os.path.exists(facts[k]):
                    os.unlink(facts[k])
        shutil.rmtree(os.path.join(work, "src"), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
