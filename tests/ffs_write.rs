//! The ffs write path, judged from outside: after every workload an independent checker in
//! this file (it parses the image itself: superblock, cylinder groups, inodes, indirect
//! blocks, directories) recomputes what is in use and requires the fragment, inode and
//! cluster maps, `cg_frsum`, every `cg_cs`, the summary area and `fs_cstotal`, link counts
//! and `di_blocks` to match exactly; a remount shows every byte as written (compared with
//! the same operations on tmpfs, or with the source tree); Sleuth Kit reads the UFS1 images
//! we wrote and agrees with us. Where `rumpfs-fsck` is built next to the `rumpfs-mount` under
//! test, its `-fn` must call every image clean too.
//!
//! Images come from Debian's makefs: UFS1 and UFS2, both byte orders, a few block sizes.

use rumpfs_tests::*;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vfs_faction::hypercall::NoPlatform;
use vfs_faction::memdev::MemDisk;
use vfs_faction::{BootConfig, Cred, Errno, Faction, FileType, Ino, Kernel, MountOptions, MountSource, OpenFlags, RenameMode};

/// A makefs layout: UFS version, byte order, block and fragment size.
#[derive(Clone, Copy, Debug)]
struct Kind {
    name: &'static str,
    version: u32,
    order: &'static str,
    bsize: u32,
    fsize: u32,
}

const UFS1_LE_8K: Kind = Kind { name: "ufs1-le-8k", version: 1, order: "le", bsize: 8192, fsize: 1024 };
const UFS1_BE_4K: Kind = Kind { name: "ufs1-be-4k", version: 1, order: "be", bsize: 4096, fsize: 512 };
const UFS2_LE_32K: Kind = Kind { name: "ufs2-le-32k", version: 2, order: "le", bsize: 32768, fsize: 4096 };
const UFS2_BE_16K: Kind = Kind { name: "ufs2-be-16k", version: 2, order: "be", bsize: 16384, fsize: 2048 };

fn makefs(img: &Path, src: &Path, k: Kind, size: &str, extra: &str) {
    let opts = format!("version={},bsize={},fsize={}{extra}", k.version, k.bsize, k.fsize);
    let out = run(tool("makefs").args(["-t", "ffs", "-B", k.order, "-o", &opts, "-s", size, "-f", "4000"]).arg(img).arg(src));
    assert!(out.ok(), "makefs -o {opts}: {}\n{}", out.stdout, out.stderr);
}

/// An image of an empty file system.
fn empty_image(dir: &Path, k: Kind, size: &str, extra: &str) -> PathBuf {
    let src = dir.join(format!("empty-{}", k.name));
    fs::create_dir_all(&src).unwrap();
    let img = dir.join(format!("{}.img", k.name));
    makefs(&img, &src, k, size, extra);
    img
}

// ---------------------------------------------------------------------------------------------
// The independent checker

struct Sb {
    big: bool,
    ufs2: bool,
    raw: Vec<u8>,
    fsize: u64,
    frag: u64,
    ncg: u64,
    ipg: u64,
    fpg: u64,
    sblkno: u64,
    iblkno: u64,
    dblkno: u64,
    cblkno: u64,
    cgoffset: u64,
    cgmask: u64,
    size: u64,
    csaddr: u64,
    cssize: u64,
    cgsize: u64,
    inopb: u64,
    nindir: u64,
    contigsumsize: u64,
    maxsymlinklen: u64,
}

impl Sb {
    fn u16(&self, b: &[u8], at: usize) -> u64 {
        let a = [b[at], b[at + 1]];
        u64::from(if self.big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) })
    }
    fn u32(&self, b: &[u8], at: usize) -> u64 {
        let a: [u8; 4] = b[at..at + 4].try_into().unwrap();
        u64::from(if self.big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
    }
    fn i32(&self, b: &[u8], at: usize) -> i64 {
        self.u32(b, at) as u32 as i32 as i64
    }
    fn u64(&self, b: &[u8], at: usize) -> u64 {
        let a: [u8; 8] = b[at..at + 8].try_into().unwrap();
        if self.big {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
    fn cgbase(&self, c: u64) -> u64 {
        c * self.fpg
    }
    fn cgstart(&self, c: u64) -> u64 {
        if self.ufs2 {
            self.cgbase(c)
        } else {
            self.cgbase(c) + self.cgoffset * (c & !self.cgmask)
        }
    }
}

fn read_sb(img: &[u8]) -> Sb {
    for loc in [65536usize, 8192] {
        for big in [false, true] {
            let raw = img[loc..loc + 1376].to_vec();
            let mut sb = Sb {
                big,
                ufs2: false,
                raw,
                fsize: 0,
                frag: 0,
                ncg: 0,
                ipg: 0,
                fpg: 0,
                sblkno: 0,
                iblkno: 0,
                dblkno: 0,
                cblkno: 0,
                cgoffset: 0,
                cgmask: 0,
                size: 0,
                csaddr: 0,
                cssize: 0,
                cgsize: 0,
                inopb: 0,
                nindir: 0,
                contigsumsize: 0,
                maxsymlinklen: 0,
            };
            let magic = sb.u32(&sb.raw, 1372);
            if magic != 0x19540119 && magic != 0x011954 {
                continue;
            }
            let r = sb.raw.clone();
            sb.ufs2 = magic == 0x19540119;
            sb.fsize = sb.u32(&r, 52);
            sb.frag = sb.u32(&r, 56);
            sb.ncg = sb.u32(&r, 44);
            sb.ipg = sb.u32(&r, 184);
            sb.fpg = sb.u32(&r, 188);
            sb.sblkno = sb.u32(&r, 8);
            sb.cblkno = sb.u32(&r, 12);
            sb.iblkno = sb.u32(&r, 16);
            sb.dblkno = sb.u32(&r, 20);
            sb.cgoffset = sb.u32(&r, 24);
            sb.cgmask = sb.u32(&r, 28);
            sb.size = sb.u64(&r, 1080);
            sb.csaddr = sb.u64(&r, 1096);
            sb.cssize = sb.u32(&r, 156);
            sb.cgsize = sb.u32(&r, 160);
            sb.inopb = sb.u32(&r, 120);
            sb.nindir = sb.u32(&r, 116);
            sb.contigsumsize = sb.u32(&r, 1316);
            sb.maxsymlinklen = sb.u32(&r, 1320);
            return sb;
        }
    }
    panic!("no FFS superblock");
}

fn bit(b: &[u8], i: u64) -> bool {
    b[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// Recomputes everything the maps and summaries say from the inodes and directories and
/// returns every disagreement (empty: consistent). Also checks that the file system is
/// marked clean.
fn check_image(img: &Path) -> Vec<String> {
    let d = fs::read(img).unwrap();
    let sb = read_sb(&d);
    let mut bad = Vec::new();
    let fs = sb.fsize;
    let isz: u64 = if sb.ufs2 { 256 } else { 128 };
    let ninodes = sb.ncg * sb.ipg;
    let frag_at = |f: u64| &d[(f * fs) as usize..((f + 1) * fs) as usize];
    // Fragment owners.
    let mut owner: HashMap<u64, u64> = HashMap::new();
    let mut claim = |f: u64, n: u64, ino: u64, bad: &mut Vec<String>| {
        for k in 0..n {
            if let Some(o) = owner.insert(f + k, ino) {
                bad.push(format!("fragment {} claimed by inode {o} and inode {ino}", f + k));
            }
        }
    };
    let cs_frags = sb.cssize.div_ceil(fs);
    for c in 0..sb.ncg {
        // Group metadata runs from the superblock copy to the first data fragment (in group 0
        // from the start, boot area included, and on over the summary area).
        let lo = if c == 0 { 0 } else { sb.cgstart(c) + sb.sblkno };
        let hi = sb.cgstart(c) + sb.dblkno + if c == 0 { cs_frags } else { 0 };
        claim(lo, hi - lo, 0, &mut bad);
    }
    let inode_raw = |ino: u64| -> &[u8] {
        let c = ino / sb.ipg;
        let i = ino % sb.ipg;
        let f = sb.cgstart(c) + sb.iblkno + (i / sb.inopb) * sb.frag;
        let at = (f * fs + (i % sb.inopb) * isz) as usize;
        &d[at..at + isz as usize]
    };
    let mut used_inodes: HashMap<u64, (u16, u64)> = HashMap::new(); // mode, nlink
    let mut dir_data: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut ndirs = vec![0i64; sb.ncg as usize];
    let bsz = fs * sb.frag;
    for ino in 2..ninodes {
        let c = ino / sb.ipg;
        // UFS2: inodes past cg_initediblk are not initialised.
        let cgraw = frag_at(sb.cgstart(c) + sb.cblkno);
        if sb.ufs2 && ino % sb.ipg >= sb.u32(cgraw, 120) {
            continue;
        }
        let r = inode_raw(ino);
        let mode = sb.u16(r, 0) as u16;
        if mode == 0 {
            continue;
        }
        let nlink = sb.u16(r, 2);
        used_inodes.insert(ino, (mode, nlink));
        let kind = mode & 0o170000;
        if kind == 0o040000 {
            ndirs[c as usize] += 1;
        }
        let (size, blocks) = if sb.ufs2 { (sb.u64(r, 16), sb.u64(r, 24)) } else { (sb.u64(r, 8), sb.u32(r, 104)) };
        let ptr = |i: usize, base: usize| if sb.ufs2 { sb.u64(r, base + 8 * i) } else { sb.u32(r, base + 4 * i) };
        let (db_at, ib_at) = if sb.ufs2 { (112, 208) } else { (40, 88) };
        let has_blocks = match kind {
            0o100000 | 0o040000 => true,
            0o120000 => size >= sb.maxsymlinklen,
            _ => false,
        };
        if !has_blocks {
            if blocks != 0 {
                bad.push(format!("inode {ino}: {blocks} blocks without a block map"));
            }
            continue;
        }
        let mut units = 0u64;
        let mut data: Vec<(u64, u64, u64)> = Vec::new(); // lbn, addr, nfrags
        let nblocks = size.div_ceil(bsz);
        for i in 0..12usize {
            let p = ptr(i, db_at);
            if p == 0 {
                continue;
            }
            let lbn = i as u64;
            if lbn >= nblocks {
                bad.push(format!("inode {ino}: direct block {lbn} at {p} past the size {size}"));
                continue;
            }
            let n = if size >= (lbn + 1) * bsz { sb.frag } else { (size - lbn * bsz).div_ceil(fs) };
            if p % sb.frag + n > sb.frag {
                bad.push(format!("inode {ino}: block {lbn} at {p} ({n} fragments) crosses a block"));
            }
            claim(p, n, ino, &mut bad);
            units += n * fs / 512;
            data.push((lbn, p, n));
        }
        // Indirect trees.
        fn walk(sb: &Sb, d: &[u8], blk: u64, level: u32, base: u64, ino: u64, out: &mut Vec<(u64, u64, u64)>, ind: &mut Vec<u64>) {
            ind.push(blk);
            let span = sb.nindir.pow(level);
            let ps = if sb.ufs2 { 8 } else { 4 };
            let start = (blk * sb.fsize) as usize;
            for i in 0..sb.nindir {
                let at = start + (i * ps) as usize;
                let p = if sb.ufs2 { sb.u64(d, at) } else { sb.u32(d, at) };
                if p == 0 {
                    continue;
                }
                if level == 0 {
                    out.push((base + i, p, sb.frag));
                } else {
                    walk(sb, d, p, level - 1, base + i * span, ino, out, ind);
                }
            }
        }
        let mut base = 12u64;
        for level in 0..3u32 {
            let p = ptr(level as usize, ib_at);
            let span = sb.nindir.pow(level + 1);
            if p != 0 {
                let mut ind = Vec::new();
                let mut more = Vec::new();
                walk(&sb, &d, p, level, base, ino, &mut more, &mut ind);
                for b in ind {
                    claim(b, sb.frag, ino, &mut bad);
                    units += bsz / 512;
                }
                for (lbn, a, n) in more {
                    if lbn >= nblocks {
                        bad.push(format!("inode {ino}: block {lbn} at {a} past the size {size}"));
                    }
                    claim(a, n, ino, &mut bad);
                    units += n * fs / 512;
                    data.push((lbn, a, n));
                }
            }
            base += span;
        }
        if units != blocks {
            bad.push(format!("inode {ino}: di_blocks {blocks}, its blocks make {units}"));
        }
        if kind == 0o040000 {
            let mut bytes = vec![0u8; size as usize];
            for (lbn, a, n) in data {
                let off = (lbn * bsz) as usize;
                let len = ((n * fs) as usize).min(bytes.len().saturating_sub(off));
                bytes[off..off + len].copy_from_slice(&d[(a * fs) as usize..(a * fs) as usize + len]);
            }
            dir_data.insert(ino, bytes);
        }
    }
    // Directories: entries point at used inodes; count links.
    let mut links: HashMap<u64, u64> = HashMap::new();
    for (&ino, bytes) in &dir_data {
        let mut seen_dot = false;
        let mut seen_dotdot = false;
        for (ci, chunk) in bytes.chunks(512).enumerate() {
            let mut pos = 0usize;
            while pos < 512 {
                let e = sb.u32(chunk, pos);
                let reclen = sb.u16(chunk, pos + 4) as usize;
                let namlen = chunk[pos + 7] as usize;
                if reclen < 8 || pos + reclen > 512 || reclen % 4 != 0 {
                    bad.push(format!("directory {ino}: chunk {ci}: record at {pos} has length {reclen}"));
                    break;
                }
                if e != 0 {
                    let name = &chunk[pos + 8..pos + 8 + namlen];
                    if (8 + namlen + 4) & !3 > reclen {
                        bad.push(format!("directory {ino}: record {:?} too short", String::from_utf8_lossy(name)));
                    }
                    match used_inodes.get(&e) {
                        None => bad.push(format!("directory {ino}: entry {:?} names free inode {e}", String::from_utf8_lossy(name))),
                        Some(&(mode, _)) => {
                            let dt = chunk[pos + 6];
                            let want = ((mode & 0o170000) >> 12) as u8;
                            if dt != want {
                                bad.push(format!("directory {ino}: entry {:?} has d_type {dt}, inode {e} is type {want}", String::from_utf8_lossy(name)));
                            }
                        }
                    }
                    if name == b"." {
                        seen_dot = true;
                        if e != ino {
                            bad.push(format!("directory {ino}: . is {e}"));
                        }
                    }
                    if name == b".." {
                        seen_dotdot = true;
                    }
                    *links.entry(e).or_default() += 1;
                }
                pos += reclen;
            }
        }
        if !seen_dot || !seen_dotdot {
            bad.push(format!("directory {ino}: . or .. missing"));
        }
    }
    for (&ino, &(_, nlink)) in &used_inodes {
        let l = links.get(&ino).copied().unwrap_or(0);
        if nlink == 0 {
            bad.push(format!("inode {ino}: in use with no links (an orphan)"));
        }
        if l != nlink {
            bad.push(format!("inode {ino}: link count {nlink}, {l} directory entries"));
        }
    }
    // Cylinder groups.
    let mut total = [0i64; 4];
    let csarea: Vec<u8> = d[(sb.csaddr * fs) as usize..(sb.csaddr * fs + sb.cssize) as usize].to_vec();
    for c in 0..sb.ncg {
        let at = ((sb.cgstart(c) + sb.cblkno) * fs) as usize;
        let cg = &d[at..at + sb.cgsize as usize];
        let ndblk = sb.u32(cg, 20);
        let iused = sb.u32(cg, 92) as usize;
        let free = sb.u32(cg, 96) as usize;
        let mut cs = [0i64; 4]; // ndir nbfree nifree nffree
        cs[0] = ndirs[c as usize];
        let mut frsum = vec![0i64; sb.frag as usize];
        let nblk = ndblk / sb.frag;
        let mut blkfree = vec![false; nblk as usize];
        for b in 0..nblk {
            let mut map = 0u32;
            for k in 0..sb.frag {
                let f = b * sb.frag + k;
                let is_free = bit(&cg[free..], f);
                let want_free = !owner.contains_key(&(sb.cgbase(c) + f));
                if is_free != want_free {
                    bad.push(format!("cg {c}: fragment {} is {} in the map", sb.cgbase(c) + f, if is_free { "free" } else { "used" }));
                }
                if is_free {
                    map |= 1 << k;
                }
            }
            if map == (1u32 << sb.frag) - 1 {
                cs[1] += 1;
                blkfree[b as usize] = true;
            } else {
                cs[3] += i64::from(map.count_ones());
                let mut run = 0;
                for k in 0..=sb.frag {
                    if k < sb.frag && map & (1 << k) != 0 {
                        run += 1;
                    } else {
                        if run > 0 {
                            frsum[run] += 1;
                        }
                        run = 0;
                    }
                }
            }
        }
        for i in 0..sb.ipg {
            let ino = c * sb.ipg + i;
            let used = bit(&cg[iused..], i);
            let want = ino < 2 || used_inodes.contains_key(&ino);
            if used != want {
                bad.push(format!("cg {c}: inode {ino} is {} in the map", if used { "used" } else { "free" }));
            }
            if !used {
                cs[2] += 1;
            }
        }
        for k in 1..sb.frag as usize {
            let have = sb.i32(cg, 52 + 4 * k);
            if have != frsum[k] {
                bad.push(format!("cg {c}: cg_frsum[{k}] {have}, the map has {}", frsum[k]));
            }
        }
        if sb.contigsumsize > 0 {
            let coff = sb.u32(cg, 108) as usize;
            let soff = sb.u32(cg, 104) as usize;
            let mut sums = vec![0i64; sb.contigsumsize as usize + 1];
            let mut run = 0u64;
            for b in 0..=nblk {
                let f = b < nblk && blkfree[b as usize];
                if b < nblk && bit(&cg[coff..], b) != f {
                    bad.push(format!("cg {c}: cluster map bit {b} is {}", !f));
                }
                if f {
                    run += 1;
                } else {
                    if run > 0 {
                        sums[run.min(sb.contigsumsize) as usize] += 1;
                    }
                    run = 0;
                }
            }
            for (k, want) in sums.iter().enumerate().skip(1) {
                let have = sb.i32(cg, soff + 4 * k);
                if have != *want {
                    bad.push(format!("cg {c}: cluster summary [{k}] {have}, the map has {want}"));
                }
            }
        }
        let have = [sb.i32(cg, 24), sb.i32(cg, 28), sb.i32(cg, 32), sb.i32(cg, 36)];
        if have != cs {
            bad.push(format!("cg {c}: cg_cs (ndir, nbfree, nifree, nffree) {have:?}, counted {cs:?}"));
        }
        let o = (c * 16) as usize;
        let area = [sb.i32(&csarea, o), sb.i32(&csarea, o + 4), sb.i32(&csarea, o + 8), sb.i32(&csarea, o + 12)];
        if area != cs {
            bad.push(format!("summary area for cg {c}: {area:?}, counted {cs:?}"));
        }
        for k in 0..4 {
            total[k] += cs[k];
        }
    }
    let r = &sb.raw;
    let t = [sb.u64(r, 1008) as i64, sb.u64(r, 1016) as i64, sb.u64(r, 1024) as i64, sb.u64(r, 1032) as i64];
    if t != total {
        bad.push(format!("fs_cstotal {t:?}, counted {total:?}"));
    }
    if !sb.ufs2 {
        let old = [sb.i32(r, 192), sb.i32(r, 196), sb.i32(r, 200), sb.i32(r, 204)];
        if old != total {
            bad.push(format!("fs_old_cstotal {old:?}, counted {total:?}"));
        }
    }
    if r[209] == 0 {
        bad.push("fs_clean is 0 after unmount".into());
    }
    bad
}

/// The checker is a judge only if it sees damage: a fragment-map bit, a total and a link
/// count changed by hand must each be reported.
#[test]
fn the_checker_sees_damage() {
    let d = tempdir();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/file"), vec![7u8; 30_000]).unwrap();
    let img = d.path().join("c.img");
    makefs(&img, &src, UFS2_LE_32K, "16m", "");
    assert_consistent(&img, "makefs's own image");
    let orig = fs::read(&img).unwrap();
    let sb = read_sb(&orig);
    let loc = if sb.u32(&orig[65536..], 1372) == 0x19540119 { 65536 } else { 8192 };
    let cg_at = ((sb.cgstart(0) + sb.cblkno) * sb.fsize) as usize;
    let freeoff = sb.u32(&orig[cg_at..], 96) as usize;
    for (what, at, xor) in [
        ("a fragment map bit", cg_at + freeoff + (sb.size / 2 / 8) as usize, 0x10u8),
        ("fs_cstotal.cs_nffree", loc + 1032, 1),
        ("a cg_cs count", cg_at + 24 + 8, 1),
    ] {
        let mut bad = orig.clone();
        bad[at] ^= xor;
        let p = d.path().join("bad.img");
        fs::write(&p, &bad).unwrap();
        assert!(!check_image(&p).is_empty(), "the checker missed damage to {what}");
    }
}

/// Our own checker (`rumpfs-fsck`, next to the `rumpfs-mount` under test), when it is built.
fn fsck_bin() -> Option<PathBuf> {
    let mount = std::env::var_os("RUMPFS_MOUNT_BIN").map(PathBuf::from).or_else(|| {
        let exe = std::env::current_exe().ok()?;
        exe.ancestors().skip(1).find(|d| matches!(d.file_name().and_then(|n| n.to_str()), Some("release" | "debug"))).map(|d| d.join("rumpfs-mount"))
    })?;
    let f = mount.with_file_name("rumpfs-fsck");
    f.is_file().then_some(f)
}

fn assert_consistent(img: &Path, what: &str) {
    if let Some(f) = fsck_bin() {
        let out = run(Command::new(f).arg("-fn").arg(img));
        assert!(out.code() == Some(0), "{what}: rumpfs-fsck -fn {} exited {:?}:\n{}\n{}", img.display(), out.code(), out.stdout, out.stderr);
    }
    let bad = check_image(img);
    assert!(bad.is_empty(), "{what}: {} inconsistencies in {}:\n  {}", bad.len(), img.display(), bad.iter().take(40).cloned().collect::<Vec<_>>().join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Through the kernel, on a RAM disk

fn kernel() -> Arc<Kernel> {
    Kernel::boot(BootConfig {
        hyper: Arc::new(NoPlatform),
        factions: vec![Faction::Vfs, Faction::Dev],
        components: fs_drivers::all_components()
            .into_iter()
            .filter(|c| c.factions().iter().all(|f| matches!(f, Faction::Vfs | Faction::Dev)))
            .collect(),
        cache_bytes: 4 << 20,
    })
    .expect("boot")
}

fn kread(m: &vfs_faction::Mount, ino: Ino) -> Vec<u8> {
    let vn = m.open(&Cred::root(), ino, OpenFlags { read: true, ..Default::default() }).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = m.read(&vn, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    m.release(vn);
    out
}

/// Every operation through the kernel on each kind of image: files growing fragment by
/// fragment, across the direct blocks into single and double indirect blocks and back,
/// holes, directories, links, symlinks short and long, devices, renames of every form,
/// removal; then the checker and a remount.
fn kernel_ops(k: Kind) {
    let d = tempdir();
    let img = empty_image(d.path(), k, "24m", "");
    let mem = Arc::new(MemDisk::from_bytes(fs::read(&img).unwrap()));
    let root = Cred::root();
    let mut rng = Rng::new(u64::from(k.bsize) + u64::from(k.version));
    let mut expect: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    {
        let kern = kernel();
        let m = kern.mount(None, MountSource::Block(mem.clone()), "w.img", &MountOptions::default()).unwrap();
        assert!(!m.read_only(), "{}: mounted read-only", k.name);
        let r = m.root();
        let dir = m.mknod(&root, r, b"dir", FileType::Directory, 0o755, 0).unwrap().ino;
        let sub = m.mknod(&root, dir, b"sub", FileType::Directory, 0o700, 0).unwrap().ino;
        // A file grown in small appends (fragment extension and moves), then big ones.
        let f = m.mknod(&root, dir, b"grow", FileType::Regular, 0o644, 0).unwrap().ino;
        let vn = m.open(&root, f, OpenFlags { read: true, write: true, truncate: false }).unwrap();
        let mut content = Vec::new();
        for step in 0..60 {
            let len = if step < 40 { 1 + rng.below(u64::from(k.fsize) * 2) } else { rng.below(u64::from(k.bsize) * 40) } as usize;
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            m.write(&root, &vn, content.len() as u64, &data).unwrap();
            content.extend_from_slice(&data);
        }
        // Overwrite in the middle, a hole past the end, shrink, grow.
        let mut data = vec![0xAB; 5000];
        rng.fill(&mut data[..100]);
        m.write(&root, &vn, 3000, &data).unwrap();
        content[3000..8000].copy_from_slice(&data);
        let hole_at = content.len() as u64 + 3 * u64::from(k.bsize) + 17;
        m.write(&root, &vn, hole_at, b"after the hole").unwrap();
        content.resize(hole_at as usize, 0);
        content.extend_from_slice(b"after the hole");
        m.release(vn);
        assert_eq!(kread(&m, f), content, "{}: grown file", k.name);
        for sz in [content.len() as u64 / 3, 12 * u64::from(k.bsize) + 5, 700, 0, 100_000, 5] {
            m.setattr(&root, f, None, None, None, Some(sz), None, None, false).unwrap();
            content.resize(sz as usize, 0);
            assert_eq!(kread(&m, f), content, "{}: after truncating to {sz}", k.name);
        }
        expect.insert("dir/grow".into(), content.clone());
        // A sparse file: data far into the double indirect range, nothing between.
        let sp = m.mknod(&root, r, b"sparse", FileType::Regular, 0o600, 0).unwrap().ino;
        let vn = m.open(&root, sp, OpenFlags { read: true, write: true, truncate: false }).unwrap();
        let far = (12 + u64::from(k.bsize) / 4 + 10) * u64::from(k.bsize) + 3;
        m.write(&root, &vn, far, b"far away").unwrap();
        m.write(&root, &vn, 1, b"near").unwrap();
        m.release(vn);
        let a = m.lookup(&root, r, b"sparse").unwrap();
        assert_eq!(a.size, far + 8);
        assert!(a.blocks * 512 <= 6 * u64::from(k.bsize), "{}: sparse file holds {} units", k.name, a.blocks);
        m.forget(a.ino, 1);
        let mut sc = vec![0u8; (far + 8) as usize];
        sc[1..5].copy_from_slice(b"near");
        sc[far as usize..].copy_from_slice(b"far away");
        expect.insert("sparse".into(), sc);
        // Many entries in one directory (new chunks and blocks), then half removed.
        for i in 0..300 {
            let name = format!("entry-with-a-longish-name-{i:04}");
            let a = m.mknod(&root, sub, name.as_bytes(), FileType::Regular, 0o644, 0).unwrap();
            m.forget(a.ino, 1);
        }
        for i in (0..300).step_by(2) {
            m.unlink(&root, sub, format!("entry-with-a-longish-name-{i:04}").as_bytes()).unwrap();
        }
        for i in 0..300 {
            if i % 2 == 1 {
                expect.insert(format!("dir/sub/entry-with-a-longish-name-{i:04}"), Vec::new());
            }
        }
        // Links, symlinks, devices, fifos, sockets.
        m.link(&root, f, r, b"hardlink").map(|a| m.forget(a.ino, 1)).unwrap();
        expect.insert("hardlink".into(), content.clone());
        let short = m.symlink(&root, r, b"short", b"dir/grow").unwrap();
        m.forget(short.ino, 1);
        let long_target = "x/".repeat(300);
        let long = m.symlink(&root, r, b"long", long_target.as_bytes()).unwrap();
        m.forget(long.ino, 1);
        assert_eq!(m.readlink(short.ino).unwrap(), b"dir/grow");
        assert_eq!(m.readlink(long.ino).unwrap(), long_target.as_bytes());
        for (name, kind, rdev) in [
            (&b"chr"[..], FileType::CharDevice, (1 << 8) | 3),
            (b"blk", FileType::BlockDevice, (259 << 8) | 70000 % 256 | ((70000 & !0xff) << 12)),
            (b"fifo", FileType::Fifo, 0),
            (b"sock", FileType::Socket, 0),
        ] {
            let a = m.mknod(&root, r, name, kind, 0o640, rdev).unwrap();
            assert_eq!((a.kind, a.rdev), (kind, rdev));
            m.forget(a.ino, 1);
        }
        // Renames: plain, over a file, across directories (a directory: .. fixed), exchange,
        // no-replace.
        let a = m.mknod(&root, r, b"a", FileType::Regular, 0o644, 0).unwrap();
        m.forget(a.ino, 1);
        let b = m.mknod(&root, r, b"b", FileType::Regular, 0o644, 0).unwrap();
        m.forget(b.ino, 1);
        m.rename(&root, r, b"a", r, b"b", RenameMode::Replace).unwrap();
        assert_eq!(m.rename(&root, r, b"b", r, b"hardlink", RenameMode::NoReplace).err(), Some(Errno::EEXIST));
        m.rename(&root, dir, b"sub", r, b"moved", RenameMode::Replace).unwrap();
        let moved = m.lookup(&root, r, b"moved").unwrap();
        assert_eq!(m.lookup(&root, moved.ino, b"..").unwrap().ino, r);
        m.forget(moved.ino, 2);
        m.rename(&root, r, b"moved", dir, b"b-dir", RenameMode::Replace).unwrap();
        m.rename(&root, r, b"b", dir, b"b-dir", RenameMode::Exchange).unwrap();
        // Now /b is the directory and /dir/b-dir the file.
        let bd = m.lookup(&root, r, b"b").unwrap();
        assert_eq!(bd.kind, FileType::Directory);
        assert_eq!(m.lookup(&root, bd.ino, b"..").unwrap().ino, r);
        m.forget(bd.ino, 2);
        let old: Vec<(String, Vec<u8>)> = expect.iter().filter(|(p, _)| p.starts_with("dir/sub/")).map(|(p, c)| (p.clone(), c.clone())).collect();
        for (p, c) in old {
            expect.remove(&p);
            expect.insert(p.replace("dir/sub/", "b/"), c);
        }
        expect.insert("dir/b-dir".into(), Vec::new());
        assert_eq!(m.rmdir(&root, r, b"dir").err(), Some(Errno::ENOTEMPTY));
        let e = m.mknod(&root, r, b"empty", FileType::Directory, 0o755, 0).unwrap();
        m.forget(e.ino, 1);
        m.rmdir(&root, r, b"empty").unwrap();
        m.unmount().unwrap();
    }
    let out = d.path().join("out.img");
    fs::write(&out, mem.contents()).unwrap();
    assert_consistent(&out, &format!("{}: after the kernel operations", k.name));
    let kern = kernel();
    let ro = MountOptions { read_only: true, ..Default::default() };
    let m = kern.mount(None, MountSource::Block(Arc::new(MemDisk::from_bytes(mem.contents()))), "r.img", &ro).unwrap();
    for (p, want) in &expect {
        let a = m.namei(&Cred::root(), p.as_bytes(), true).unwrap_or_else(|e| panic!("{}: {p}: {e:?}", k.name));
        assert!(kread(&m, a.ino) == *want, "{}: {p} differs after the remount", k.name);
    }
    assert_eq!(m.readlink(m.namei(&Cred::root(), b"/long", false).unwrap().ino).unwrap(), "x/".repeat(300).as_bytes());
    assert_eq!(m.namei(&Cred::root(), b"/chr", false).unwrap().rdev, (1 << 8) | 3);
}

/// Writes and truncates at random offsets, one file at a time, checked against a model after
/// every step (finds the first step that goes wrong).
fn kernel_model(k: Kind, seed: u64) {
    let d = tempdir();
    let img = empty_image(d.path(), k, "24m", "");
    let mem = Arc::new(MemDisk::from_bytes(fs::read(&img).unwrap()));
    let root = Cred::root();
    let mut rng = Rng::new(seed);
    let kern = kernel();
    let m = kern.mount(None, MountSource::Block(mem.clone()), "w.img", &MountOptions::default()).unwrap();
    let mut model: Vec<Vec<u8>> = vec![Vec::new(); 4];
    let mut inos = Vec::new();
    for i in 0..4 {
        inos.push(m.mknod(&root, m.root(), format!("f{i}").as_bytes(), FileType::Regular, 0o644, 0).unwrap().ino);
    }
    let bs = u64::from(k.bsize);
    let mut log = Vec::new();
    for step in 0..600 {
        let i = rng.below(4) as usize;
        let ino = inos[i];
        let near = [0, u64::from(k.fsize), bs, 12 * bs, 14 * bs];
        let off = near[rng.below(5) as usize] + rng.below(3 * bs) - rng.below(2).min(near[0]);
        if rng.below(4) == 0 {
            let sz = off;
            log.push(format!("step {step}: f{i} truncate {sz}"));
            m.setattr(&root, ino, None, None, None, Some(sz), None, None, false).unwrap();
            model[i].resize(sz as usize, 0);
        } else {
            let lim = if rng.below(3) == 0 { 4 * bs } else { 3000 };
            let mut data = vec![0u8; 1 + rng.below(lim) as usize];
            rng.fill(&mut data);
            log.push(format!("step {step}: f{i} write {off}+{}", data.len()));
            let vn = m.open(&root, ino, OpenFlags { read: true, write: true, truncate: false }).unwrap();
            m.write(&root, &vn, off, &data).unwrap();
            m.release(vn);
            let end = off as usize + data.len();
            if model[i].len() < end {
                model[i].resize(end, 0);
            }
            model[i][off as usize..end].copy_from_slice(&data);
        }
        let got = kread(&m, ino);
        if got != model[i] {
            let first = got.iter().zip(&model[i]).position(|(a, b)| a != b);
            panic!("{}: f{i} differs after\n{}\n(len {} vs {}, first difference at {first:?})", k.name, log[log.len().saturating_sub(8)..].join("\n"), got.len(), model[i].len());
        }
    }
    m.unmount().unwrap();
    let out = d.path().join("out.img");
    fs::write(&out, mem.contents()).unwrap();
    assert_consistent(&out, &format!("{}: after the model run", k.name));
}

#[test]
fn kernel_model_runs() {
    for (k, seed) in [(UFS1_BE_4K, 1), (UFS1_LE_8K, 2), (UFS2_BE_16K, 3), (UFS2_LE_32K, 4)] {
        kernel_model(k, seed);
    }
}

/// The real FreeBSD images (UFS2 with superblock, cylinder-group and inode check hashes; one
/// big-endian with soft updates): written through the kernel, then read back by our reader
/// (which verifies every check hash it meets) and judged by the checker.
#[test]
fn freebsd_images_with_check_hashes() {
    let Some(dir) = test_images_dir() else { return };
    for name in [
        "freebsd-newfs-ufs2-nosoftdep-le-64m-empty.fuse-ufs-git-2e632eb.img",
        "freebsd-powerpc64-newfs-ufs2-softdep-be-64m.fuse-ufs-git-a980a44.img",
        "freebsd-powerpc64-newfs-ufs2-softdep-be-16m-largedirs.fuse-ufs-git-5962539.img",
    ] {
        let out = Command::new("zstd").arg("-dc").arg(dir.join(format!("{name}.zst"))).output().unwrap();
        assert!(out.status.success());
        let mem = Arc::new(MemDisk::from_bytes(out.stdout));
        let root = Cred::root();
        let mut want: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let kern = kernel();
            let m = kern.mount(None, MountSource::Block(mem.clone()), name, &MountOptions::default()).unwrap();
            assert!(!m.read_only(), "{name}: read-only");
            let d = m.mknod(&root, m.root(), b"written", FileType::Directory, 0o755, 0).unwrap().ino;
            let mut rng = Rng::new(11);
            for (i, len) in [0usize, 1, 700, 5000, 40_000, 500_000, 3_000_000].into_iter().enumerate() {
                let fname = format!("file{i}");
                let a = m.mknod(&root, d, fname.as_bytes(), FileType::Regular, 0o644, 0).unwrap();
                let vn = m.open(&root, a.ino, OpenFlags { read: true, write: true, truncate: false }).unwrap();
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                for (k, chunk) in data.chunks(65536).enumerate() {
                    m.write(&root, &vn, (k * 65536) as u64, chunk).unwrap();
                }
                m.release(vn);
                m.forget(a.ino, 1);
                want.push((format!("/written/{fname}"), data));
            }
            for i in 0..200 {
                let a = m.mknod(&root, d, format!("many-{i}").as_bytes(), FileType::Regular, 0o600, 0).unwrap();
                m.forget(a.ino, 1);
            }
            let s = m.symlink(&root, d, b"link", b"file1").unwrap();
            m.forget(s.ino, 1);
            m.unlink(&root, d, b"file4").unwrap();
            want.retain(|(p, _)| p != "/written/file4");
            m.unmount().unwrap();
        }
        let kern = kernel();
        let ro = MountOptions { read_only: true, ..Default::default() };
        let m = kern.mount(None, MountSource::Block(Arc::new(MemDisk::from_bytes(mem.contents()))), name, &ro).unwrap();
        for (p, data) in &want {
            let a = m.namei(&Cred::root(), p.as_bytes(), true).unwrap_or_else(|e| panic!("{name}: {p}: {e:?}"));
            assert!(kread(&m, a.ino) == *data, "{name}: {p} differs");
        }
        for i in 0..200 {
            m.namei(&Cred::root(), format!("/written/many-{i}").as_bytes(), false).unwrap();
        }
        let tmp = tempdir();
        let img = tmp.path().join("fb.img");
        fs::write(&img, mem.contents()).unwrap();
        assert_consistent(&img, name);
    }
}

#[test]
fn kernel_ops_ufs1_le_8k() {
    kernel_ops(UFS1_LE_8K);
}
#[test]
fn kernel_ops_ufs1_be_4k() {
    kernel_ops(UFS1_BE_4K);
}
#[test]
fn kernel_ops_ufs2_le_32k() {
    kernel_ops(UFS2_LE_32K);
}
#[test]
fn kernel_ops_ufs2_be_16k() {
    kernel_ops(UFS2_BE_16K);
}


// ---------------------------------------------------------------------------------------------
// Through FUSE, with the real rumpfs-mount

fn setup() {
    require_tools(&["makefs", "fusermount3", "cp"]);
}

fn rw() -> MountSpec {
    MountSpec::opts("rw")
}

/// (free fragments, total fragments, free inodes) from statvfs.
fn statvfs(p: &Path) -> (u64, u64, u64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter; valid path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0);
    (s.f_bfree, s.f_blocks, s.f_ffree)
}

/// The free counts the image's superblock totals give: (free fragments, free inodes).
fn sb_free(img: &Path) -> (u64, u64) {
    let d = fs::read(img).unwrap();
    let sb = read_sb(&d);
    let r = &sb.raw;
    (sb.u64(r, 1016) * sb.frag + sb.u64(r, 1032), sb.u64(r, 1024))
}

/// `fls -r -p` of the image: path -> inode.
fn tsk_listing(img: &Path) -> BTreeMap<String, u64> {
    let out = run_ok(tool("fls").args(["-r", "-p"]).arg(img));
    let mut map = BTreeMap::new();
    for line in out.stdout.lines() {
        let Some((head, path)) = line.split_once(":\t") else { continue };
        if head.contains('*') || path.starts_with("$OrphanFiles") {
            continue;
        }
        let ino: u64 = head.rsplit(' ').next().unwrap().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
        map.insert(path.to_string(), ino);
    }
    map
}

/// Sleuth Kit reads the image we wrote: the same names and inode numbers as the mount, and
/// the same bytes (`icat`) for every regular file.
fn sleuthkit_agrees(img: &Path, what: &str) {
    require_tools(&["fls", "icat"]);
    let theirs = tsk_listing(img);
    let m = Mounted::with(img, MountSpec::ro(""));
    let mut ours = BTreeMap::new();
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, (u64, bool, PathBuf)>) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let md = fs::symlink_metadata(root.join(&r)).unwrap();
            use std::os::unix::fs::MetadataExt;
            out.insert(r.to_str().unwrap().to_string(), (md.ino(), md.is_file(), root.join(&r)));
            if md.is_dir() {
                walk(root, &r, out);
            }
        }
    }
    walk(&m.mnt, Path::new(""), &mut ours);
    let on: Vec<&String> = ours.keys().collect();
    let tn: Vec<&String> = theirs.keys().collect();
    assert_eq!(on, tn, "{what}: names, ours vs Sleuth Kit");
    let mut checked = 0;
    for (path, (ino, is_file, full)) in &ours {
        assert_eq!(theirs[path], *ino, "{what}: {path}: inode number");
        if *is_file && checked < 400 {
            checked += 1;
            let raw = Command::new(find_tool("icat").unwrap()).arg(img).arg(ino.to_string()).output().unwrap();
            assert!(raw.status.success(), "{what}: icat {ino}");
            let mine = fs::read(full).unwrap();
            assert!(raw.stdout == mine, "{what}: {path}: icat gives {} bytes that differ from ours ({} bytes)", raw.stdout.len(), mine.len());
        }
    }
    m.unmount();
}

/// cp -a of a generated tree into a fresh image; the checker, a remount compared with the
/// source, Sleuth Kit for UFS1; then everything removed again.
fn unpack(k: Kind) {
    setup();
    let d = tempdir();
    let src = d.path().join("src");
    let spec = TreeSpec { seed: 0xff5_0001, full: true, big_dir_entries: 1500, sparse_5g: false, wide_times: k.version == 2 };
    make_tree(&src, spec, k.name);
    let img = empty_image(d.path(), k, "160m", "");
    let (free0, _, ifree0) = {
        let m = Mounted::with(&img, MountSpec::ro(""));
        let s = statvfs(&m.mnt);
        m.unmount();
        s
    };
    {
        let m = Mounted::with(&img, rw());
        let out = run(tool("cp").arg("-a").arg(format!("{}/.", src.display())).arg(&m.mnt));
        assert!(out.ok(), "{}: cp -a into the mount: {}", k.name, out.stderr);
        m.unmount();
    }
    assert_consistent(&img, &format!("{}: after cp -a", k.name));
    let opts = CompareOpts { xattrs: false, lost_found: false, ..CompareOpts::default() };
    {
        let m = Mounted::with(&img, MountSpec::ro(""));
        assert_trees_equal(&src, &m.mnt, &opts);
        m.unmount();
    }
    if k.version == 1 {
        sleuthkit_agrees(&img, &format!("{}: after cp -a", k.name));
    }
    {
        let m = Mounted::with(&img, rw());
        for e in fs::read_dir(&m.mnt).unwrap() {
            let p = e.unwrap().path();
            let out = run(tool("rm").arg("-rf").arg(&p));
            assert!(out.ok(), "rm -rf {}: {}", p.display(), out.stderr);
        }
        m.unmount();
    }
    assert_consistent(&img, &format!("{}: after rm -rf", k.name));
    let m = Mounted::with(&img, MountSpec::ro(""));
    let (free, _, ifree) = statvfs(&m.mnt);
    let root_blocks = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&m.mnt).unwrap().blocks() * 512 / u64::from(k.fsize)
    };
    m.unmount();
    assert_eq!(ifree, ifree0, "{}: free inodes after removing everything", k.name);
    // Everything comes back but what the root directory grew by.
    assert!(free + root_blocks >= free0 && free <= free0, "{}: free fragments {free} (+{root_blocks} in the root), before {free0}", k.name);
}

#[test]
fn unpack_ufs1_le_8k() {
    unpack(UFS1_LE_8K);
}
#[test]
fn unpack_ufs2_be_32k() {
    unpack(Kind { name: "ufs2-be-32k", version: 2, order: "be", bsize: 32768, fsize: 4096 });
}

fn errno_of<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// One random operation, done on both trees; the outcomes must agree.
fn random_op(rng: &mut Rng, roots: [&Path; 2], own: &str, shared: &str) -> Result<(), String> {
    let f = |r: &mut Rng| format!("{own}/f{}", r.below(24));
    let dname = |r: &mut Rng| format!("{own}/d{}", r.below(4));
    let op = rng.below(100);
    let a = f(rng);
    let b = if rng.below(3) == 0 { format!("{}/g{}", dname(rng), rng.below(6)) } else { f(rng) };
    let off = rng.below(300_000);
    let big = rng.below(4) == 0;
    let len = 1 + rng.below(if big { 200_000 } else { 9000 }) as usize;
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    let size = rng.below(400_000);
    let target: String = (0..1 + rng.below(150)).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let sh = format!("{shared}/{}", own.replace('/', "_") + &rng.below(8).to_string());
    let mut results = Vec::new();
    for root in roots {
        let p = |s: &str| root.join(s);
        let r: io::Result<()> = match op {
            0..=34 => OpenOptions::new().create(true).write(true).truncate(false).open(p(&a)).and_then(|fh| fh.write_all_at(&data, off)),
            35..=44 => OpenOptions::new().write(true).open(p(&a)).and_then(|fh| fh.set_len(size)),
            45..=54 => fs::rename(p(&a), p(&b)),
            55..=63 => fs::remove_file(p(&a)),
            64..=68 => fs::hard_link(p(&a), p(&b)),
            69..=73 => std::os::unix::fs::symlink(&target, p(&b)),
            74..=78 => OpenOptions::new().create(true).append(true).open(p(&a)).and_then(|mut fh| io::Write::write_all(&mut fh, &data[..len.min(700)])),
            79..=83 => fs::create_dir(p(&dname(&mut Rng::new(off)))),
            84..=86 => fs::remove_dir(p(&dname(&mut Rng::new(off)))),
            87..=89 => fs::rename(p(&dname(&mut Rng::new(off))), p(&dname(&mut Rng::new(size)))),
            90..=95 => fs::write(p(&sh), &data[..len.min(3000)]),
            _ => fs::remove_file(p(&sh)),
        };
        results.push(r);
    }
    if errno_of(&results[0]) != errno_of(&results[1]) {
        return Err(format!("op {op} on {a} / {b}: mount {:?}, tmpfs {:?}", results[0], results[1]));
    }
    Ok(())
}

/// Sets atime and mtime of everything below `root` to fixed values.
fn pin_times(root: &Path) {
    fn walk(p: &Path) {
        let md = fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path());
            }
        }
        let ts = [libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 5 }, libc::timespec { tv_sec: 1_234_567_890, tv_nsec: 123_456_789 }];
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path and a two-element timespec array.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        assert_eq!(rc, 0, "utimensat {}: {}", p.display(), io::Error::last_os_error());
    }
    walk(root);
}

/// Seeded random creates, writes, truncates, renames, links and removals from four threads,
/// mirrored on tmpfs; after a remount both trees compare equal byte for byte.
fn random_mix(k: Kind, seed: u64) {
    setup();
    let d = tempdir();
    let img = empty_image(d.path(), k, "128m", "");
    let reference = tempfile::Builder::new().prefix("rumpfs-ref-").tempdir_in("/dev/shm").unwrap();
    let m = Mounted::with(&img, rw());
    let failures = mirrored_random_ops([m.mnt.as_path(), reference.path()], 4, 500, seed, random_op);
    assert!(failures.is_empty(), "{}: outcomes differ from tmpfs:\n  {}", k.name, failures.join("\n  "));
    pin_times(&m.mnt);
    pin_times(reference.path());
    m.unmount();
    assert_consistent(&img, &format!("{}: after random operations", k.name));
    let opts = CompareOpts { xattrs: false, lost_found: false, sparse_threshold: u64::MAX, ..CompareOpts::default() };
    let m = Mounted::with(&img, MountSpec::ro(""));
    assert_trees_equal(reference.path(), &m.mnt, &opts);
    m.unmount();
    if k.version == 1 {
        sleuthkit_agrees(&img, &format!("{}: after random operations", k.name));
    }
}

#[test]
fn random_mix_ufs1_be_4k() {
    random_mix(UFS1_BE_4K, 1);
}
#[test]
fn random_mix_ufs1_le_8k() {
    random_mix(UFS1_LE_8K, 2);
}
#[test]
fn random_mix_ufs2_le_32k() {
    random_mix(UFS2_LE_32K, 3);
}
#[test]
fn random_mix_ufs2_be_16k() {
    random_mix(UFS2_BE_16K, 4);
}

/// Files of random sizes until ENOSPC, then empty files until the inodes run out, then half
/// of it all removed: the checker, and statfs against the superblock totals.
fn fill_and_delete_half(k: Kind) {
    setup();
    let d = tempdir();
    let img = empty_image(d.path(), k, "24m", "");
    let m = Mounted::with(&img, rw());
    let mut rng = Rng::new(99);
    let mut files = Vec::new();
    let mut full = false;
    for i in 0.. {
        let p = m.path(&format!("d{}/f{i}", i % 7));
        let _ = fs::create_dir(p.parent().unwrap());
        let mut data = vec![0u8; 1 + rng.below(1 << 20) as usize];
        rng.fill(&mut data);
        match fs::write(&p, &data) {
            Ok(()) => files.push(p),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{}: write {}: {e}", k.name, p.display());
                full = true;
                let _ = fs::remove_file(&p);
                break;
            }
        }
    }
    assert!(full);
    // Small files use the fragments left.
    for i in 0.. {
        let p = m.path(&format!("e/f{i}"));
        let _ = fs::create_dir(m.path("e"));
        let r = File::create(&p).and_then(|f| f.write_all_at(b"x", 0));
        match r {
            Ok(()) => files.push(p),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{}: create {}: {e}", k.name, p.display());
                let _ = fs::remove_file(&p);
                break;
            }
        }
    }
    let (bfree, _, ffree) = statvfs(&m.mnt);
    assert!(bfree < 64 || ffree == 0, "{}: not full: {bfree} free fragments, {ffree} inodes", k.name);
    for (i, p) in files.iter().enumerate() {
        if i % 2 == 0 {
            fs::remove_file(p).unwrap();
        }
    }
    let rels: Vec<PathBuf> = files.iter().map(|p| p.strip_prefix(&m.mnt).unwrap().to_path_buf()).collect();
    m.unmount();
    assert_consistent(&img, &format!("{}: after filling and deleting half", k.name));
    let m = Mounted::with(&img, MountSpec::ro(""));
    let (bfree, _, ffree) = statvfs(&m.mnt);
    for (i, p) in rels.iter().enumerate() {
        if i % 2 == 1 {
            assert!(fs::metadata(m.mnt.join(p)).is_ok(), "{}: {} is gone", k.name, p.display());
        }
    }
    m.unmount();
    assert_eq!((bfree, ffree), sb_free(&img), "{}: statfs against the superblock totals", k.name);
}

#[test]
fn fill_ufs1_le_8k() {
    fill_and_delete_half(UFS1_LE_8K);
}
#[test]
fn fill_ufs2_be_16k() {
    fill_and_delete_half(UFS2_BE_16K);
}

/// A 6 GiB sparse file (double and triple indirect blocks on 4k/8k blocks): data at a few
/// offsets, holes stay holes, then truncated down and removed.
#[test]
fn large_sparse_file() {
    setup();
    for k in [UFS2_LE_32K, UFS1_LE_8K] {
        let d = tempdir();
        let img = empty_image(d.path(), k, "64m", "");
        let regions: [(u64, usize); 5] = [(0, 5000), (1 << 30, 70_000), ((4 << 30) + 3, 100), ((6 << 30) - 10, 10), (12 * 8192 + 1, 9000)];
        let mut rng = Rng::new(6);
        let datas: Vec<Vec<u8>> = regions.iter().map(|&(_, n)| {
            let mut v = vec![0u8; n];
            rng.fill(&mut v);
            v
        }).collect();
        {
            let m = Mounted::with(&img, rw());
            let f = File::create(m.path("sparse")).unwrap();
            for ((off, _), data) in regions.iter().zip(&datas) {
                f.write_all_at(data, *off).unwrap();
            }
            f.sync_all().unwrap();
            use std::os::unix::fs::MetadataExt;
            let md = f.metadata().unwrap();
            assert_eq!(md.len(), 6 << 30);
            assert!(md.blocks() * 512 < 4 << 20, "{}: a sparse file holds {} bytes", k.name, md.blocks() * 512);
            drop(f);
            m.unmount();
        }
        assert_consistent(&img, &format!("{}: sparse file", k.name));
        {
            let m = Mounted::with(&img, rw());
            let f = File::open(m.path("sparse")).unwrap();
            for ((off, n), data) in regions.iter().zip(&datas) {
                let mut buf = vec![0u8; *n + 64];
                let got = f.read_at(&mut buf, *off).unwrap();
                assert!(got >= (*n).min(64), "{}", k.name);
                assert!(buf[..*n] == data[..], "{}: region at {off}", k.name);
            }
            let mut buf = vec![1u8; 4096];
            f.read_at(&mut buf, 2 << 30).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "{}: a hole reads as zeros", k.name);
            drop(f);
            OpenOptions::new().write(true).open(m.path("sparse")).unwrap().set_len((1 << 30) + 5).unwrap();
            m.unmount();
        }
        assert_consistent(&img, &format!("{}: sparse file truncated", k.name));
        {
            let m = Mounted::with(&img, rw());
            fs::remove_file(m.path("sparse")).unwrap();
            m.unmount();
        }
        assert_consistent(&img, &format!("{}: sparse file removed", k.name));
    }
}

/// The state a BSD system sees: not clean while mounted read-write, clean after; soft
/// updates flags cleared while mounted and restored; a journaled image that is not clean is
/// refused read-write.
#[test]
fn clean_flag_and_soft_updates() {
    setup();
    let d = tempdir();
    let k = UFS2_LE_32K;
    let img = empty_image(d.path(), k, "16m", "");
    let sb_loc = {
        let data = fs::read(&img).unwrap();
        let sb = read_sb(&data);
        let _ = sb;
        if u32::from_le_bytes(data[65536 + 1372..65536 + 1376].try_into().unwrap()) == 0x19540119 { 65536u64 } else { 8192 }
    };
    let set_flags = |flags: u32, clean: u8| {
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&flags.to_le_bytes(), sb_loc + 1312).unwrap();
        f.write_all_at(&[clean], sb_loc + 209).unwrap();
    };
    let get = || {
        let data = fs::read(&img).unwrap();
        let at = sb_loc as usize;
        (u32::from_le_bytes(data[at + 1312..at + 1316].try_into().unwrap()), data[at + 209])
    };
    set_flags(0x02, 1); // FS_DOSOFTDEP, clean
    {
        let m = Mounted::with(&img, rw());
        assert_eq!(get(), (0, 0), "soft updates cleared and not clean while mounted");
        fs::write(m.path("f"), b"data").unwrap();
        m.unmount();
    }
    assert_eq!(get(), (0x02, 1), "flags and clean state restored at unmount");
    assert_consistent(&img, "soft updates image");
    set_flags(0x08 | 0x02, 0); // FS_SUJ, not clean
    let out = Mounted::try_with(&img, rw()).err().expect("a dirty journaled image mounts read-write");
    assert!(out.stderr.contains("journal") || out.stderr.contains("not clean"), "{}", out.stderr);
    let m = Mounted::with(&img, MountSpec::ro(""));
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    m.unmount();
    set_flags(0x02, 1);
    let _ = Errno::EIO;
}
