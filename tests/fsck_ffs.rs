//! rumpfs-fsck on FFS: Debian `makefs -t ffs` images (UFS1 and UFS2, both byte orders)
//! corrupted at known fields (a link count, a bitmap bit, a summary count, a block claimed
//! twice, an indirect block claimed twice, a directory record length, a pointer past the
//! end of the file system): `-fn` finds each (exit 4) and writes nothing, `-fy` repairs it
//! (exit 1), a re-check is clean (exit 0), and Sleuth Kit reads the repaired UFS1 trees.
//! Blocks claimed twice are cloned: both claimants keep their bytes (compared on the image
//! for both versions, and with `icat` against the source and the corrupted image on UFS1).
//! Clean makefs images of every
//! version, byte order and block size are clean; so are the shared FreeBSD images; fuzzed
//! images never crash or hang the checker.
//!
//! The corruption offsets come from the test's own reading of the superblock and of inode
//! and directory records (inode numbers from a kernel mount of the image).

use rumpfs_tests::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vfs_faction::hypercall::NoPlatform;
use vfs_faction::memdev::MemDisk;
use vfs_faction::{BootConfig, Cred, Faction, Kernel, MountOptions, MountSource};

fn ours(args: &[&str], img: &Path) -> Out {
    let mut c = Command::new(fsck_bin());
    c.env_remove("RUST_LOG").args(args).arg(img);
    run_timeout(&mut c, Duration::from_secs(60))
}

fn code(o: &Out) -> i32 {
    o.code().unwrap_or_else(|| panic!("{} died by a signal\n{}\n{}", o.what, o.stdout, o.stderr))
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

// ---------------------------------------------------------------------------------------
// The test's own view of the layout

/// Geometry from the superblock, read with plain byte reads.
#[derive(Clone, Copy, Debug)]
struct Geo {
    be: bool,
    ufs2: bool,
    fsize: u64,
    frag: u64,
    ipg: u64,
    ncg: u64,
    fpg: u64,
    iblkno: u64,
    cblkno: u64,
    inopb: u64,
    cgoffset: u64,
    cgmask: u64,
    size: u64,
}

fn rd(img: &[u8], at: usize, n: usize, be: bool) -> u64 {
    let mut v = 0u64;
    for k in 0..n {
        let b = u64::from(img[at + if be { k } else { n - 1 - k }]);
        v = v << 8 | b;
    }
    v
}

fn wr(img: &mut [u8], at: usize, n: usize, be: bool, v: u64) {
    for k in 0..n {
        let shift = 8 * if be { n - 1 - k } else { k };
        img[at + k] = (v >> shift) as u8;
    }
}

fn geo(img: &[u8]) -> Geo {
    for at in [65536usize, 8192] {
        for be in [false, true] {
            let magic = rd(img, at + 1372, 4, be);
            let ufs2 = magic == 0x19540119;
            if ufs2 || magic == 0x011954 {
                let f = |o: usize| rd(img, at + o, 4, be);
                let size = if ufs2 || img[at + 211] & 0x80 != 0 { rd(img, at + 1080, 8, be) } else { f(36) };
                return Geo {
                    be,
                    ufs2,
                    fsize: f(52),
                    frag: f(56),
                    ipg: f(184),
                    ncg: f(44),
                    fpg: f(188),
                    iblkno: f(16),
                    cblkno: f(12),
                    inopb: f(120),
                    cgoffset: if ufs2 { 0 } else { f(24) },
                    cgmask: if ufs2 { u64::from(u32::MAX) } else { f(28) },
                    size,
                };
            }
        }
    }
    panic!("no FFS superblock");
}

impl Geo {
    fn cgstart(&self, c: u64) -> u64 {
        c * self.fpg + self.cgoffset * (c & !self.cgmask & 0xffff_ffff)
    }
    /// Byte offset of inode `ino`.
    fn inode(&self, ino: u64) -> usize {
        let (c, i) = (ino / self.ipg, ino % self.ipg);
        let isz = if self.ufs2 { 256 } else { 128 };
        ((self.cgstart(c) + self.iblkno + (i / self.inopb) * self.frag) * self.fsize + (i % self.inopb) * isz) as usize
    }
    /// Byte offset of group `c`'s header.
    fn cg(&self, c: u64) -> usize {
        ((self.cgstart(c) + self.cblkno) * self.fsize) as usize
    }
    fn db0_at(&self, ino: u64) -> (usize, usize) {
        if self.ufs2 {
            (self.inode(ino) + 112, 8)
        } else {
            (self.inode(ino) + 40, 4)
        }
    }
    /// `di_ib[0]`: the single indirect block.
    fn ib0_at(&self, ino: u64) -> (usize, usize) {
        let (at, n) = self.db0_at(ino);
        (at + 12 * n, n)
    }
    fn db0(&self, img: &[u8], ino: u64) -> u64 {
        let (at, n) = self.db0_at(ino);
        rd(img, at, n, self.be)
    }
    fn set_db0(&self, img: &mut [u8], ino: u64, v: u64) {
        let (at, n) = self.db0_at(ino);
        wr(img, at, n, self.be, v)
    }
}

/// Inode numbers of `paths`, from a kernel mount of the image.
fn inos(img: &[u8], paths: &[&str]) -> Vec<u64> {
    let k = Kernel::boot(BootConfig {
        hyper: Arc::new(NoPlatform),
        factions: vec![Faction::Vfs, Faction::Dev],
        components: fs_drivers::all_components()
            .into_iter()
            .filter(|c| c.factions().iter().all(|f| matches!(f, Faction::Vfs | Faction::Dev)))
            .collect(),
        cache_bytes: 4 << 20,
    })
    .expect("boot");
    let dev = Arc::new(MemDisk::from_bytes(img.to_vec()).read_only());
    let m = k.mount(None, MountSource::Block(dev), "t.img", &MountOptions { read_only: true, ..Default::default() }).expect("mount");
    let cred = Cred::root();
    paths
        .iter()
        .map(|p| {
            let mut ino = m.root();
            for part in p.split('/') {
                ino = m.lookup(&cred, ino, part.as_bytes()).unwrap_or_else(|e| panic!("{p}: {e:?}")).ino;
            }
            ino.0
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Corruptions

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Corrupt {
    LinkCount,
    BitmapBit,
    SummaryCount,
    BlockTwice,
    IndirectTwice,
    RecordLength,
    PastTheEnd,
}

const ALL: [Corrupt; 7] = [
    Corrupt::LinkCount,
    Corrupt::BitmapBit,
    Corrupt::SummaryCount,
    Corrupt::BlockTwice,
    Corrupt::IndirectTwice,
    Corrupt::RecordLength,
    Corrupt::PastTheEnd,
];

const HELLO: &str = "files/hello.txt";
const A: &str = "files/b1k-indirect";
const B: &str = "files/b1k-268blocks";
const C: &str = "files/b4k-12blocks";
const D: &str = "files/b1k-double-indirect";

/// Applies `what`; returns the paths whose entries or contents the repair may change.
fn corrupt(img: &mut [u8], what: Corrupt) -> Vec<&'static str> {
    let g = geo(img);
    let i = inos(img, &[HELLO, A, B, C, D, "bigdir"]);
    let (hello, a, b, c, d, bigdir) = (i[0], i[1], i[2], i[3], i[4], i[5]);
    match what {
        Corrupt::LinkCount => {
            let at = g.inode(hello) + 2;
            let n = rd(img, at, 2, g.be);
            wr(img, at, 2, g.be, n + 3);
            vec![]
        }
        Corrupt::BitmapBit => {
            // Mark a block of D free in its group's fragment map.
            let f = g.db0(img, d);
            let c = f / g.fpg;
            let cg = g.cg(c);
            let freeoff = rd(img, cg + 96, 4, g.be) as usize;
            let rel = (f - c * g.fpg) as usize;
            img[cg + freeoff + rel / 8] |= 1 << (rel % 8);
            vec![]
        }
        Corrupt::SummaryCount => {
            let at = g.cg(0) + 24 + 8; // cg_cs.cs_nifree
            let n = rd(img, at, 4, g.be);
            wr(img, at, 4, g.be, n + 7);
            vec![]
        }
        Corrupt::BlockTwice => {
            // B's first block becomes A's: repaired by giving B its own copy (as e2fsck
            // clones), so A keeps its content and B keeps what it reads now.
            let fa = g.db0(img, a);
            g.set_db0(img, b, fa);
            vec![B]
        }
        Corrupt::IndirectTwice => {
            // D's single indirect block becomes A's (and with it every block under it): D
            // gets a copy of the indirect block and of each data block it names.
            let (at, n) = g.ib0_at(a);
            let ia = rd(img, at, n, g.be);
            let (at, n) = g.ib0_at(d);
            wr(img, at, n, g.be, ia);
            vec![D]
        }
        Corrupt::RecordLength => {
            // The third record of bigdir's first chunk runs past the chunk.
            let blk = (g.db0(img, bigdir) * g.fsize) as usize;
            let r0 = rd(img, blk + 4, 2, g.be) as usize;
            let r1 = rd(img, blk + r0 + 4, 2, g.be) as usize;
            wr(img, blk + r0 + r1 + 4, 2, g.be, 1000);
            vec!["bigdir"]
        }
        Corrupt::PastTheEnd => {
            g.set_db0(img, c, g.size + 100);
            vec![C]
        }
    }
}

/// Base images: (version, order) with 8 KiB blocks and 1 KiB fragments.
fn base(dir: &Path, version: u32, order: &str) -> PathBuf {
    let img = dir.join(format!("ufs{version}-{order}.img"));
    makefs(&img, &ffs_tree().root, &format!("version={version},bsize=8192,fsize=1024"), order);
    img
}

/// `fls -r -p`: paths of live entries.
fn tsk_paths(img: &Path) -> Vec<(String, u64)> {
    let out = run_ok(tool("fls").args(["-r", "-p"]).arg(img));
    out.stdout
        .lines()
        .filter_map(|l| {
            let (head, path) = l.split_once(":\t")?;
            if head.contains('*') || path.starts_with("$OrphanFiles") {
                return None;
            }
            let ino = head.rsplit(' ').next()?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()?;
            Some((path.to_string(), ino))
        })
        .collect()
}

fn corruption_case(version: u32, order: &str) {
    let dir = tempdir();
    let orig = base(dir.path(), version, order);
    let clean = ours(&["-fn"], &orig);
    assert_eq!(code(&clean), 0, "fresh makefs image:\n{}{}", clean.stdout, clean.stderr);
    let bytes = std::fs::read(&orig).unwrap();
    let src = &ffs_tree().root;
    let mut failures = Vec::new();
    for what in ALL {
        let img = dir.path().join(format!("{what:?}.img"));
        let mut b = bytes.clone();
        let touched = corrupt(&mut b, what);
        std::fs::write(&img, &b).unwrap();
        let before = sha(&b);
        let corrupted = dir.path().join(format!("{what:?}-before.img"));
        if matches!(what, Corrupt::BlockTwice | Corrupt::IndirectTwice) {
            std::fs::write(&corrupted, &b).unwrap();
        }
        let n = ours(&["-fn"], &img);
        let label = format!("UFS{version} {order} {what:?}");
        if code(&n) != 4 {
            failures.push(format!("{label}: -fn exit {} (want 4)\n{}{}", code(&n), n.stdout, n.stderr));
            continue;
        }
        assert_eq!(sha(&std::fs::read(&img).unwrap()), before, "{label}: -n wrote to the image");
        let y = ours(&["-fy"], &img);
        if code(&y) != 1 {
            failures.push(format!("{label}: -fy exit {} (want 1)\n{}{}", code(&y), y.stdout, y.stderr));
            continue;
        }
        let again = ours(&["-fn"], &img);
        if code(&again) != 0 {
            failures.push(format!("{label}: re-check exit {} (want 0)\nrepair:\n{}\nre-check:\n{}{}", code(&again), y.stdout, again.stdout, again.stderr));
            continue;
        }
        if what == Corrupt::BlockTwice {
            // Both claimants keep their bytes: the one pass 1 met first keeps the block where
            // it was, the other gets a copy of it elsewhere.
            let g = geo(&b);
            let ab = inos(&b, &[A, B]);
            let rep = std::fs::read(&img).unwrap();
            let fa = g.db0(&b, ab[0]);
            let (na, nb) = (g.db0(&rep, ab[0]), g.db0(&rep, ab[1]));
            let bsize = g.fsize * g.frag;
            assert_ne!(na, nb, "{label}: A and B still share a block\n{}", y.stdout);
            assert!(na == fa || nb == fa, "{label}: neither kept the shared block\n{}", y.stdout);
            assert!(y.stdout.contains("clone"), "{label}: no clone reported\n{}", y.stdout);
            for (ino, now) in [(ab[0], na), (ab[1], nb)] {
                let size = rd(&rep, g.inode(ino) + if g.ufs2 { 16 } else { 8 }, 8, g.be);
                let len = (size.min(bsize).div_ceil(g.fsize) * g.fsize) as usize;
                let (was, now) = ((fa * g.fsize) as usize, (now * g.fsize) as usize);
                assert_eq!(sha(&rep[now..now + len]), sha(&b[was..was + len]), "{label}: inode {ino}: first block differs from the shared one");
            }
        }
        if what == Corrupt::IndirectTwice {
            let g = geo(&b);
            let ad = inos(&b, &[A, D]);
            let rep = std::fs::read(&img).unwrap();
            let ib = |img: &[u8], ino| {
                let (at, n) = g.ib0_at(ino);
                rd(img, at, n, g.be)
            };
            assert_ne!(ib(&rep, ad[0]), ib(&rep, ad[1]), "{label}: A and D still share an indirect block\n{}", y.stdout);
            assert!(y.stdout.contains("clone"), "{label}: no clone reported\n{}", y.stdout);
        }
        // Without -f, a repaired image is marked clean.
        let p = ours(&["-n"], &img);
        assert_eq!(code(&p), 0, "{label}: -n after repair\n{}", p.stdout);
        assert!(p.stdout.contains("clean"), "{label}: not marked clean after repair: {}", p.stdout);
        if version == 1 {
            // Sleuth Kit reads the repaired tree: every file it lists that the corruption did
            // not touch has its source's content.
            let listed = tsk_paths(&img);
            assert!(listed.len() > 3000, "{label}: fls lists {} entries", listed.len());
            let mut checked = 0;
            for (path, ino) in &listed {
                if touched.iter().any(|t| path.starts_with(t)) || !path.starts_with("files/") {
                    continue;
                }
                let host = src.join(path);
                let Ok(m) = std::fs::symlink_metadata(&host) else { continue };
                if !m.is_file() {
                    continue;
                }
                let raw = Command::new(find_tool("icat").unwrap()).arg(&img).arg(ino.to_string()).output().unwrap();
                assert!(raw.status.success(), "{label}: icat {path}");
                assert_eq!(sha(&raw.stdout), sha(&std::fs::read(&host).unwrap()), "{label}: {path} (icat)");
                checked += 1;
            }
            assert!(checked >= 10, "{label}: only {checked} files compared");
            if matches!(what, Corrupt::BlockTwice | Corrupt::IndirectTwice) {
                // icat: A is compared with its source above; the other claimant reads as it
                // did before the repair.
                let other = if what == Corrupt::BlockTwice { B } else { D };
                let b_ino = listed.iter().find(|(p, _)| p == other).map(|x| x.1).expect("claimant listed");
                let icat = |i: &Path| Command::new(find_tool("icat").unwrap()).arg(i).arg(b_ino.to_string()).output().unwrap();
                let (was, now) = (icat(&corrupted), icat(&img));
                assert!(was.status.success() && now.status.success(), "{label}: icat B");
                assert_eq!(sha(&now.stdout), sha(&was.stdout), "{label}: B's content changed (icat)");
                assert!(listed.iter().any(|(p, _)| p == A), "{label}: A not listed");
            }
            if what == Corrupt::RecordLength {
                assert!(listed.iter().any(|(p, _)| p.starts_with("lost+found/#")), "{label}: nothing in lost+found\n{}", y.stdout);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn corruptions_ufs1_le() {
    corruption_case(1, "le");
}

#[test]
fn corruptions_ufs1_be() {
    corruption_case(1, "be");
}

#[test]
fn corruptions_ufs2_le() {
    corruption_case(2, "le");
}

#[test]
fn corruptions_ufs2_be() {
    corruption_case(2, "be");
}

/// Preen fixes counts and link counts; it leaves a bad pointer alone (exit 4), which `-y`
/// then clears.
#[test]
fn preen_fixes_what_is_safe_only() {
    let dir = tempdir();
    let orig = base(dir.path(), 2, "le");
    let bytes = std::fs::read(&orig).unwrap();
    for (what, want) in [(Corrupt::LinkCount, 1), (Corrupt::SummaryCount, 1), (Corrupt::BitmapBit, 1), (Corrupt::PastTheEnd, 4)] {
        let img = dir.path().join("p.img");
        let mut b = bytes.clone();
        corrupt(&mut b, what);
        std::fs::write(&img, &b).unwrap();
        let p = ours(&["-fp"], &img);
        assert_eq!(code(&p), want, "{what:?}: -fp\n{}{}", p.stdout, p.stderr);
        let y = ours(&["-fy"], &img);
        assert_eq!(code(&y), if want == 1 { 0 } else { 1 }, "{what:?}: -fy after -p\n{}", y.stdout);
        let n = ours(&["-fn"], &img);
        assert_eq!(code(&n), 0, "{what:?}: re-check\n{}", n.stdout);
    }
}

// ---------------------------------------------------------------------------------------
// Clean images

#[test]
fn clean_makefs_images_of_every_kind() {
    let dir = tempdir();
    let mut failures = Vec::new();
    for (v, order, bsize, fsize) in [
        (1, "le", 4096, 512),
        (1, "be", 16384, 2048),
        (1, "le", 65536, 8192),
        (2, "be", 4096, 4096),
        (2, "le", 32768, 4096),
        (2, "be", 65536, 8192),
    ] {
        let img = dir.path().join("c.img");
        makefs(&img, &ffs_tree().root, &format!("version={v},bsize={bsize},fsize={fsize}"), order);
        let f = ours(&["-fn"], &img);
        if code(&f) != 0 {
            failures.push(format!("UFS{v} {order} {bsize}/{fsize}: exit {}\n{}{}", code(&f), f.stdout, f.stderr));
        }
        // makefs marks its images clean: skipped without -f.
        let n = ours(&["-n"], &img);
        assert_eq!(code(&n), 0);
        assert!(n.stdout.contains("clean"), "{}", n.stdout);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shared_freebsd_images_are_clean() {
    let Some(dir) = test_images_dir() else {
        eprintln!("no shared test images; skipped");
        return;
    };
    let tmp = tempdir();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("freebsd") || !name.ends_with(".img.zst") {
            continue;
        }
        // A copy: the originals are never written.
        let img = unzstd(&p, tmp.path());
        for args in [&["-fn"][..], &["-fy"][..]] {
            let o = ours(args, &img);
            assert_eq!(code(&o), 0, "{name} {args:?}:\n{}{}", o.stdout, o.stderr);
        }
        n += 1;
    }
    assert!(n >= 3, "found {n} FreeBSD images");
}

// ---------------------------------------------------------------------------------------
// Fuzzing

#[test]
fn fuzzed_metadata_never_crashes_or_hangs() {
    let dir = tempdir();
    let mut rng = Rng::new(0xf5c);
    let mut summary = Vec::new();
    for (v, order) in [(1, "le"), (2, "be")] {
        let orig = base(dir.path(), v, order);
        let bytes = std::fs::read(&orig).unwrap();
        let g = geo(&bytes);
        let i = inos(&bytes, &["bigdir", "files"]);
        let dirblk = |ino: u64| (g.db0(&bytes, ino) * g.fsize) as usize;
        let mut clean_after = 0;
        const ROUNDS: usize = 14;
        for round in 0..ROUNDS {
            let mut b = bytes.clone();
            // Fields every one of which the checker holds against the rest: cylinder group
            // header fields and maps, inode modes, link counts and block pointers, directory
            // record headers.
            let ptr = if g.ufs2 { 112 } else { 40 };
            let spots: Vec<(usize, usize)> = match round % 4 {
                0 => {
                    let cg = g.cg(rng.next_u64() % g.ncg);
                    vec![(cg + 4, 4), (cg + 12, 4), (cg + 20, 4), (cg + 24, 16), (cg + 52, 28), (cg + 92, 16)]
                }
                1 => (2..10).flat_map(|k| [(g.inode(k), 4), (g.inode(k) + ptr, 8)]).collect(),
                2 => {
                    let blk = dirblk(i[(rng.next_u64() % 2) as usize]);
                    vec![(blk, 8), (blk + 12, 8), (blk + 24, 8)]
                }
                _ => {
                    let cg = g.cg(0);
                    let iused = rd(&bytes, cg + 92, 4, g.be) as usize;
                    let free = rd(&bytes, cg + 96, 4, g.be) as usize;
                    vec![(cg + iused, (g.ipg as usize / 8).min(64)), (cg + free, 256)]
                }
            };
            for _ in 0..(2 + rng.next_u64() % 6) {
                let (at0, len) = spots[(rng.next_u64() as usize) % spots.len()];
                let at = at0 + rng.next_u64() as usize % len;
                assert!(at < b.len(), "round {round}: spot {at0} (+{len}) is outside the image; {g:?}");
                b[at] = rng.next_u64() as u8;
            }
            let img = dir.path().join("fuzz.img");
            std::fs::write(&img, &b).unwrap();
            let label = format!("UFS{v} {order} round {round}");
            let n = ours(&["-fn"], &img);
            let c = code(&n);
            assert!(c == 4 || c == 8 || (c == 0 && b == bytes), "{label}: -fn exit {c}\n{}{}", n.stdout, n.stderr);
            let y = ours(&["-fy"], &img);
            let cy = code(&y);
            assert!((0..16).contains(&cy) && cy & 2 == 0, "{label}: -fy exit {cy}\n{}{}", y.stdout, y.stderr);
            let again = ours(&["-fn"], &img);
            let ca = code(&again);
            assert!(matches!(ca, 0 | 4 | 8), "{label}: re-check exit {ca}\n{}{}", again.stdout, again.stderr);
            if ca == 0 {
                clean_after += 1;
            }
        }
        summary.push(format!("UFS{v} {order}: {clean_after}/{ROUNDS} clean after one -fy"));
    }
    eprintln!("{}", summary.join("\n"));
}
