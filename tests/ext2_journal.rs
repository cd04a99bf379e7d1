//! Journal replay at mount: images made by mke2fs, with transactions left in the journal by
//! debugfs's journal commands (committed ones, a revoke, an uncommitted one, a block that
//! needs escaping), mounted read-write by the kernel driver on the in-memory hypercalls.
//! Then `e2fsck -fn` must be clean, and every block the replay touched must be
//! byte-identical to what `e2fsck -fy` (which replays too) makes of a second copy.
//! A corrupt journal must refuse the mount cleanly and leave the image untouched.

use rumpfs_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfs_faction::hypercall::NoPlatform;
use vfs_faction::memdev::MemDisk;
use vfs_faction::{BootConfig, Errno, Faction, Kernel, MountError, MountOptions, MountSource};

fn kernel() -> Arc<Kernel> {
    Kernel::boot(BootConfig {
        hyper: Arc::new(NoPlatform),
        factions: vec![Faction::Vfs, Faction::Dev],
        components: fs_drivers::all_components().into_iter().filter(|c| c.name() == "ext2fs").collect(),
        cache_bytes: 16 << 20,
    })
    .expect("boot")
}

/// Mounts `bytes` (read-write unless `ro`), unmounts, and answers the disk's contents.
fn mount_cycle(bytes: Vec<u8>, ro: bool) -> Result<(Vec<String>, Vec<u8>), MountError> {
    let k = kernel();
    let disk = Arc::new(MemDisk::from_bytes(bytes));
    let m = k.mount(None, MountSource::Block(disk.clone()), "journal.img", &MountOptions { read_only: ro, ..Default::default() })?;
    let warnings = m.warnings().to_vec();
    m.unmount().expect("unmount");
    drop(m);
    Ok((warnings, disk.contents()))
}

fn blocks_of(img: &Path, path: &str) -> Vec<u64> {
    debugfs_req(img, &format!("blocks {path}")).split_whitespace().filter_map(|w| w.parse().ok()).collect()
}

fn block_size(img: &Path) -> usize {
    dumpe2fs_h(img).get("Block size").unwrap().trim().parse().unwrap()
}

fn block(bytes: &[u8], bs: usize, b: u64) -> &[u8] {
    &bytes[b as usize * bs..(b as usize + 1) * bs]
}

fn fsck_clean(img: &Path, what: &str) {
    let out = run(tool("e2fsck").arg("-fn").arg(img));
    assert!(out.code() == Some(0), "{what}: e2fsck -fn exited {:?}:\n{}\n{}", out.code(), out.stdout, out.stderr);
}

/// A journalled image with four transactions in its log:
/// 1. A0 (whose new contents start with the journal magic: escaped) and A1, committed;
/// 2. a revoke of A1, committed (A1 keeps its old contents);
/// 3. A2 and B0, committed;
/// 4. A3, not committed (never replayed).
struct Scenario {
    img: PathBuf,
    bs: usize,
    a: Vec<u64>,
    b: Vec<u64>,
    /// New contents of A0, A2, B0.
    new_a0: Vec<u8>,
    new_a2: Vec<u8>,
    new_b0: Vec<u8>,
    /// The image as debugfs left it.
    orig: Vec<u8>,
}

fn scenario(dir: &Path, name: &str, mkfs: &[&str], jo: &str) -> Scenario {
    let src = dir.join(format!("{name}-src"));
    fs::create_dir_all(&src).unwrap();
    let mut rng = Rng::new(0x1234 ^ name.len() as u64);
    let mut a = vec![0u8; 16384];
    rng.fill(&mut a);
    fs::write(src.join("a.bin"), &a).unwrap();
    fs::write(src.join("b.txt"), "world\n".repeat(800)).unwrap();
    fs::create_dir(src.join("d")).unwrap();
    fs::write(src.join("d/c.txt"), "c\n").unwrap();
    let img = dir.join(format!("{name}.img"));
    mke2fs(&img, mkfs, Some(&src), "32M");
    let bs = block_size(&img);
    let ab = blocks_of(&img, "/a.bin");
    let bb = blocks_of(&img, "/b.txt");
    assert!(ab.len() >= 4 && !bb.is_empty(), "{ab:?} {bb:?}");
    let mut rnd = |n: usize| {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    };
    let mut new_a0 = rnd(bs);
    new_a0[..4].copy_from_slice(&0xC03B_3998u32.to_be_bytes());
    let new_a1 = rnd(bs);
    let new_a2 = rnd(bs);
    let new_b0 = rnd(bs);
    let new_a3 = rnd(bs);
    let f = |n: &str, parts: &[&[u8]]| {
        let p = dir.join(format!("{name}-{n}"));
        fs::write(&p, parts.concat()).unwrap();
        p.display().to_string()
    };
    let t1 = f("t1", &[&new_a0, &new_a1]);
    let t3 = f("t3", &[&new_a2, &new_b0]);
    let t4 = f("t4", &[&new_a3]);
    let cmds = format!(
        "jo {jo}\njw -b {},{} {t1}\njw -r {}\njw -b {},{} {t3}\njw -b {} -c {t4}\njc\n",
        ab[0], ab[1], ab[1], ab[2], bb[0], ab[3]
    );
    debugfs(&img, true, &cmds);
    let h = dumpe2fs_h(&img);
    assert!(h.get("Filesystem features").unwrap().contains("needs_recovery"), "{h:?}");
    let log = run(tool("debugfs").arg("-R").arg("logdump").arg(&img)).stdout;
    assert!(log.contains("Found expected sequence 3, type 2 (commit block)"), "{log}");
    let orig = fs::read(&img).unwrap();
    Scenario { img, bs, a: ab, b: bb, new_a0, new_a2, new_b0, orig }
}

/// Moves the log so that it wraps around the end of the journal: the block at log position
/// `first + i` goes to `first + (i + maxlen - first - 8) % (maxlen - first)`, and `s_start`
/// follows (the journal superblock checksum is made right when there is one).
fn rotate_log(s: &mut Scenario) {
    let bs = s.bs;
    let img = s.img.clone();
    let jb = |l: usize| -> usize { debugfs_req(&img, &format!("bmap <8> {l}")).trim().parse().unwrap() };
    let sb0 = jb(0) * bs;
    let be = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let (maxlen, first, start) = (be(&s.orig, sb0 + 0x10), be(&s.orig, sb0 + 0x14), be(&s.orig, sb0 + 0x1C));
    assert!(maxlen > 64 && first == 1 && start == 1, "{maxlen} {first} {start}");
    let len = maxlen - first;
    let pos = |l: usize| first + (l - first + len - 8) % len;
    let mut out = s.orig.clone();
    for l in first..first + 16 {
        let (from, to) = (jb(l) * bs, jb(pos(l)) * bs);
        out[to..to + bs].copy_from_slice(&s.orig[from..from + bs]);
    }
    out[sb0 + 0x1C..sb0 + 0x20].copy_from_slice(&(pos(start) as u32).to_be_bytes());
    if be(&out, sb0 + 0x28) & 0x18 != 0 {
        let mut t = out[sb0..sb0 + 1024].to_vec();
        t[0xFC..0x100].fill(0);
        let c = fs_drivers::ext2fs::csum::raw(!0, &t);
        out[sb0 + 0xFC..sb0 + 0x100].copy_from_slice(&c.to_be_bytes());
    }
    s.orig = out;
    fs::write(&s.img, &s.orig).unwrap();
    let log = run(tool("debugfs").arg("-R").arg("logdump").arg(&s.img)).stdout;
    assert!(log.contains("Found expected sequence 3, type 2 (commit block) at block 2\n"), "{log}");
}

fn replay_matches_e2fsck(name: &str, mkfs: &[&str], jo: &str) {
    replay_matches_e2fsck_in(name, mkfs, jo, false)
}

fn replay_matches_e2fsck_in(name: &str, mkfs: &[&str], jo: &str, wrap: bool) {
    require_tools(&["mke2fs", "e2fsck", "dumpe2fs", "debugfs"]);
    let d = tempdir();
    let mut s = scenario(d.path(), name, mkfs, jo);
    if wrap {
        rotate_log(&mut s);
    }
    // Read-only: refused, nothing written.
    let e = mount_cycle(s.orig.clone(), true).err().expect("a read-only mount must refuse to skip the replay");
    assert!(e.message.contains("mount read-write to replay it"), "{e}");
    // Read-write: replayed.
    let (warnings, ours) = mount_cycle(s.orig.clone(), false).unwrap_or_else(|e| panic!("{name}: mount: {e}"));
    assert!(warnings.iter().any(|w| w.contains("journal replayed: 3 committed")), "{warnings:?}");
    let ours_img = d.path().join(format!("{name}-ours.img"));
    fs::write(&ours_img, &ours).unwrap();
    fsck_clean(&ours_img, name);
    let h = dumpe2fs_h(&ours_img);
    assert!(!h.get("Filesystem features").unwrap().contains("needs_recovery"), "{h:?}");
    assert_eq!(h.get("Journal start").map(|s| s.trim()), Some("0"));
    // What the replay should have done.
    let bs = s.bs;
    let orig = |b| block(&s.orig, bs, b);
    assert_eq!(block(&ours, bs, s.a[0]), &s.new_a0[..], "{name}: A0 (escaped) not replayed");
    assert_eq!(block(&ours, bs, s.a[1]), orig(s.a[1]), "{name}: A1 was revoked");
    assert_eq!(block(&ours, bs, s.a[2]), &s.new_a2[..], "{name}: A2 not replayed");
    assert_eq!(block(&ours, bs, s.b[0]), &s.new_b0[..], "{name}: B0 not replayed");
    assert_eq!(block(&ours, bs, s.a[3]), orig(s.a[3]), "{name}: A3 was not committed");
    // The same as e2fsck's replay, block for block (file data and the journal superblock).
    let theirs_img = d.path().join(format!("{name}-e2fsck.img"));
    fs::write(&theirs_img, &s.orig).unwrap();
    let out = run(tool("e2fsck").arg("-fy").arg(&theirs_img));
    assert!(matches!(out.code(), Some(0 | 1)), "e2fsck -fy: {:?}\n{}{}", out.code(), out.stdout, out.stderr);
    let theirs = fs::read(&theirs_img).unwrap();
    for &b in s.a.iter().chain(&s.b) {
        assert!(block(&ours, bs, b) == block(&theirs, bs, b), "{name}: block {b} differs from e2fsck's replay");
    }
    let jsb: u64 = debugfs_req(&ours_img, "bmap <8> 0").trim().parse().unwrap();
    assert_eq!(&block(&ours, bs, jsb)[..1024], &block(&theirs, bs, jsb)[..1024], "{name}: journal superblock");
    for f in ["/a.bin", "/b.txt", "/d/c.txt"] {
        assert_eq!(debugfs_req(&ours_img, &format!("cat {f}")), debugfs_req(&theirs_img, &format!("cat {f}")), "{name}: {f}");
    }
    // And it mounts again, with nothing left to replay.
    let (warnings, again) = mount_cycle(ours, false).unwrap();
    assert!(!warnings.iter().any(|w| w.contains("journal")), "{warnings:?}");
    fs::write(&ours_img, &again).unwrap();
    fsck_clean(&ours_img, name);
}

#[test]
fn ext4_4k_csum_v3() {
    replay_matches_e2fsck("ext4-4k-v3", &["-t", "ext4", "-b", "4096"], "-c -v 3");
}

#[test]
fn ext4_1k_csum_v2() {
    replay_matches_e2fsck("ext4-1k-v2", &["-t", "ext4", "-b", "1024"], "-c -v 2");
}

#[test]
fn ext4_no_csum_64bit_tags() {
    replay_matches_e2fsck("ext4-plain", &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"], "");
}

/// The log wraps around the end of the journal between the two data blocks of transaction 3.
#[test]
fn ext4_log_wraps_around() {
    replay_matches_e2fsck_in("ext4-wrap", &["-t", "ext4", "-b", "4096"], "-c -v 3", true);
}

#[test]
fn ext3_log_wraps_around() {
    replay_matches_e2fsck_in("ext3-wrap", &["-t", "ext3", "-b", "1024", "-I", "256"], "", true);
}

#[test]
fn ext3_32bit_tags() {
    replay_matches_e2fsck("ext3-1k", &["-t", "ext3", "-b", "1024", "-I", "256"], "");
}

/// Corrupt journals refuse the mount with a message, and the image is left as it was.
#[test]
fn corrupt_journal_refuses_the_mount() {
    require_tools(&["mke2fs", "e2fsck", "dumpe2fs", "debugfs"]);
    let d = tempdir();
    let s = scenario(d.path(), "corrupt", &["-t", "ext4", "-b", "4096"], "-c -v 3");
    let bs = s.bs;
    let jblk = |l: u64| -> usize {
        let p: u64 = debugfs_req(&s.img, &format!("bmap <8> {l}")).trim().parse().unwrap();
        p as usize * bs
    };
    let refused = |bytes: Vec<u8>, needle: &str| {
        let k = kernel();
        let disk = Arc::new(MemDisk::from_bytes(bytes.clone()));
        let e = k
            .mount(None, MountSource::Block(disk.clone()), "journal.img", &MountOptions::default())
            .err()
            .unwrap_or_else(|| panic!("a journal with {needle} mounted"));
        assert!(e.message.contains("journal") && e.message.contains(needle), "{needle}: {e}");
        assert_eq!(e.errno, Errno::EUCLEAN, "{e}");
        assert!(disk.contents() == bytes, "{needle}: the image was changed");
    };
    // A logged data block of transaction 1 (journal block 2) damaged: its tag checksum fails.
    let mut b = s.orig.clone();
    b[jblk(2) + 100] ^= 0xFF;
    refused(b, "fails its checksum");
    // The journal superblock damaged: its checksum fails.
    let mut b = s.orig.clone();
    b[jblk(0) + 0x10] ^= 0x40;
    refused(b, "checksum mismatch");
    // An impossible log length (checksum made right).
    let mut b = s.orig.clone();
    let o = jblk(0);
    b[o + 0x10..o + 0x14].copy_from_slice(&0x4000_0000u32.to_be_bytes());
    let c = fs_drivers::ext2fs::csum::raw(!0, &{
        let mut t = b[o..o + 1024].to_vec();
        t[0xFC..0x100].fill(0);
        t
    });
    b[o + 0xFC..o + 0x100].copy_from_slice(&c.to_be_bytes());
    refused(b, "geometry");
    // A revoke block with an impossible record count (checksum made right): transaction 2
    // starts at journal block 5 (descriptor 1, 2 data, commit 4).
    let mut b = s.orig.clone();
    let o = jblk(5);
    assert_eq!(&b[o..o + 4], &0xC03B_3998u32.to_be_bytes());
    assert_eq!(u32::from_be_bytes(b[o + 4..o + 8].try_into().unwrap()), 5, "not a revoke block");
    b[o + 12..o + 16].copy_from_slice(&0x10_0000u32.to_be_bytes());
    let seed = fs_drivers::ext2fs::csum::raw(!0, &b[jblk(0) + 0x30..jblk(0) + 0x40]);
    let c = fs_drivers::ext2fs::csum::raw(seed, &{
        let mut t = b[o..o + bs].to_vec();
        t[bs - 4..].fill(0);
        t
    });
    b[o + bs - 4..o + bs].copy_from_slice(&c.to_be_bytes());
    refused(b, "revoke block");
    // A torn commit of transaction 3 (journal block 10) is the end of the log: transactions 1
    // and 2 are replayed, 3 is not.
    let mut b = s.orig.clone();
    b[jblk(10) + 0x30] ^= 0xFF; // commit time, under the commit checksum
    let (w, ours) = mount_cycle(b, false).unwrap();
    assert!(w.iter().any(|w| w.contains("journal replayed: 2 committed")), "{w:?}");
    assert_eq!(block(&ours, bs, s.a[0]), &s.new_a0[..]);
    assert_eq!(block(&ours, bs, s.a[2]), block(&s.orig, bs, s.a[2]));
    let img = d.path().join("torn.img");
    fs::write(&img, &ours).unwrap();
    fsck_clean(&img, "torn commit");
    // An external journal: refused with a message.
    let mut b = s.orig.clone();
    b[1024 + 0xE0..1024 + 0xE4].fill(0);
    b[1024 + 0xD0] = 1;
    let c = fs_drivers::ext2fs::csum::raw(!0, &b[1024..1024 + 0x3FC]);
    b[1024 + 0x3FC..1024 + 0x400].copy_from_slice(&c.to_le_bytes());
    let e = mount_cycle(b, false).err().expect("external journal mounted");
    assert!(e.message.contains("external"), "{e}");
}

/// An image as a crash of the kernel's ext3/ext4 leaves it with files still on the orphan
/// list, made with debugfs: `gone1` and `gone2` unlinked while open (no name, link count 0,
/// chained from the superblock through their dtime), `kept` still linked (a truncate cut
/// short). Mounting read-write must free the first two and keep the third, as the kernel
/// does; `e2fsck -fn` is then clean, and the free counts equal the kernel's after it mounts a
/// copy.
fn orphans_are_cleaned_at_mount(name: &str, mkfs: &[&str]) {
    require_tools(&["mke2fs", "e2fsck", "dumpe2fs", "debugfs"]);
    let dir = tempdir();
    let img = dir.path().join(format!("{name}.img"));
    run_ok(tool("mke2fs").args(["-q", "-F"]).args(mkfs).arg(&img).arg("8M"));
    let src = dir.path().join("data");
    fs::write(&src, (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let mut cmds = String::new();
    for f in ["gone1", "gone2", "kept"] {
        cmds.push_str(&format!("write {} {f}\n", src.display()));
    }
    debugfs(&img, true, &cmds);
    let ino = |f: &str| -> u32 { debugfs_req(&img, &format!("stat {f}")).split_whitespace().nth(1).unwrap().parse().unwrap() };
    let (g1, g2, k) = (ino("gone1"), ino("gone2"), ino("kept"));
    debugfs(
        &img,
        true,
        &format!(
            "unlink gone1\nunlink gone2\nsif <{g1}> links_count 0\nsif <{g2}> links_count 0\n\
             sif <{g1}> dtime {g2}\nsif <{g2}> dtime {k}\nssv last_orphan {g1}\n"
        ),
    );
    let free = |img: &Path| {
        let h = dumpe2fs_h(img);
        (h["Free blocks"].trim().to_string(), h["Free inodes"].trim().to_string())
    };
    let before = free(&img);
    let out = run(tool("e2fsck").arg("-fn").arg(&img));
    assert_ne!(out.code(), Some(0), "{name}: the orphan list made no work for e2fsck:\n{}", out.stdout);

    // Through rumpfs-mount (the host's clock dates the deletions; the in-memory platform's
    // stands at the epoch, and a dtime of 0 means "not deleted" to e2fsck).
    let ours = dir.path().join("ours.img");
    fs::copy(&img, &ours).unwrap();
    let m = Mounted::with(&ours, MountSpec::opts("rw"));
    assert!(fs::read(m.path("kept")).unwrap() == fs::read(&src).unwrap(), "{name}: the linked orphan lost data");
    m.unmount();
    fsck_clean(&ours, name);
    let last_orphan = dumpe2fs_h(&ours).get("First orphan inode").cloned();
    assert_eq!(last_orphan, None, "{name}: the orphan list is still there");
    let after = free(&ours);
    assert_ne!(after, before, "{name}: nothing was freed");

    // The kernel's driver, on a copy: the same counts.
    let theirs = dir.path().join("theirs.img");
    fs::copy(&img, &theirs).unwrap();
    if let Some(l) = LoopMount::new(&theirs, &["-t", "ext4", "-o", "loop"]) {
        drop(l);
        assert_eq!(after, free(&theirs), "{name}: free blocks and inodes after the kernel's cleanup");
        fsck_clean(&theirs, &format!("{name}, the kernel's cleanup"));
    }
}

#[test]
fn ext4_orphans_are_cleaned_at_mount() {
    orphans_are_cleaned_at_mount("ext4-orphans", &["-t", "ext4"]);
}

#[test]
fn ext3_1k_orphans_are_cleaned_at_mount() {
    orphans_are_cleaned_at_mount("ext3-orphans", &["-t", "ext3", "-b", "1024"]);
}
