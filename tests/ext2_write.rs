//! The ext2fs write path, judged by real tools: after every workload the real `e2fsck -fn`
//! must call the image clean, a remount must show exactly what was written (compared with
//! the same operations on tmpfs, or with the source tree), and the Linux kernel's own driver
//! must see the same tree on a loop device where the machine allows it. Crash tests run on
//! the in-memory hypercalls: the kernel is stopped at random points, `e2fsck -fy` repairs the
//! rest, and every fsync'ed file is intact.
//!
//! Workloads run on ext2 (1k and 4k blocks), ext3 and ext4 with metadata_csum (4k and 1k).

use rumpfs_tests::*;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfs_faction::hypercall::NoPlatform;
use vfs_faction::memdev::{Faults, MemDisk};
use vfs_faction::{BootConfig, Cred, Errno, Faction, FileType, Ino, Kernel, MountOptions, MountSource, OpenFlags, RenameMode};

/// (name, mke2fs arguments, image size).
#[derive(Clone, Copy)]
struct Kind {
    name: &'static str,
    args: &'static [&'static str],
    size: &'static str,
}

const EXT2_1K: Kind = Kind { name: "ext2-1k", args: &["-t", "ext2", "-b", "1024", "-I", "256"], size: "384M" };
const EXT2_4K: Kind = Kind { name: "ext2-4k", args: &["-t", "ext2", "-b", "4096", "-I", "256"], size: "512M" };
const EXT3_4K: Kind = Kind { name: "ext3-4k", args: &["-t", "ext3", "-b", "4096", "-I", "256"], size: "512M" };
const EXT4_4K: Kind = Kind { name: "ext4-4k", args: &["-t", "ext4", "-b", "4096"], size: "1G" };
const EXT4_1K: Kind = Kind { name: "ext4-1k", args: &["-t", "ext4", "-b", "1024"], size: "384M" };

/// A read-write FUSE mount (the default of rumpfs-mount).
fn mount_rw(img: &Path) -> Mounted {
    Mounted::with(img, MountSpec::default())
}

/// Unmounts, retrying while the kernel still says busy (closes are finished asynchronously by
/// FUSE; on a loaded machine the first fusermount3 -u can come too early).
fn unmount(m: Mounted) {
    for _ in 0..50 {
        if run(tool("fusermount3").arg("-u").arg(&m.mnt)).ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    m.unmount();
}

fn setup() {
    require_tools(&["mke2fs", "e2fsck", "dumpe2fs", "fusermount3", "cp"]);
}

fn image(dir: &Path, k: Kind, extra: &[&str], size: Option<&str>) -> PathBuf {
    let img = dir.join(format!("{}.img", k.name));
    let mut args: Vec<&str> = k.args.to_vec();
    args.extend_from_slice(extra);
    mke2fs(&img, &args, None, size.unwrap_or(k.size));
    img
}

/// `e2fsck -fn` must exit 0.
fn fsck_clean(img: &Path, what: &str) {
    let out = run(tool("e2fsck").arg("-fn").arg(img));
    assert!(out.code() == Some(0), "{what}: e2fsck -fn {} exited {:?}:\n{}\n{}", img.display(), out.code(), out.stdout, out.stderr);
}

fn dumpe2fs_counts(img: &Path) -> (u64, u64) {
    let h = dumpe2fs_h(img);
    let n = |k: &str| h.get(k).unwrap_or_else(|| panic!("dumpe2fs: no {k}")).trim().parse::<u64>().unwrap();
    (n("Free blocks"), n("Free inodes"))
}

/// Sets atime and mtime of every entry below `root` (not following symlinks) to fixed values,
/// so trees written at different times compare equal.
fn pin_times(root: &Path) {
    fn walk(p: &Path) {
        let md = fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path());
            }
        }
        let ts = [libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 5 }, libc::timespec { tv_sec: 1_234_567_890, tv_nsec: 123_456_789 }];
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path and a two-element timespec array.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        assert_eq!(rc, 0, "utimensat {}: {}", p.display(), io::Error::last_os_error());
    }
    walk(root);
}

fn kernel_sees(img: &Path, reference: &Path, opts: &CompareOpts) {
    if let Some(l) = LoopMount::new(img, &["-t", "ext4", "-o", "loop,ro,noload"]) {
        let d = compare_trees(reference, &l.0, opts);
        assert!(d.is_empty(), "the kernel's ext4 driver sees a different tree in {}:\n  {}", img.display(), d.join("\n  "));
    }
}

// ---------------------------------------------------------------------------------------------
// Unpacking a source tree

fn unpack(k: Kind) {
    setup();
    let d = tempdir();
    let src = d.path().join("src");
    let spec = TreeSpec { seed: 0xe2_0001, full: true, big_dir_entries: 2500, sparse_5g: false, wide_times: true };
    make_tree(&src, spec, k.name);
    let img = image(d.path(), k, &[], None);
    let t0 = Instant::now();
    {
        let m = mount_rw(&img);
        let out = run(tool("cp").arg("-a").arg(format!("{}/.", src.display())).arg(&m.mnt));
        assert!(out.ok(), "cp -a into the mount: {}", out.stderr);
        unmount(m);
    }
    eprintln!("{}: cp -a of the source tree took {:?}", k.name, t0.elapsed());
    fsck_clean(&img, &format!("{}: after cp -a", k.name));
    let opts = CompareOpts::default();
    {
        let m = Mounted::with(&img, MountSpec::opts("ro"));
        assert_trees_equal(&src, &m.mnt, &opts);
        unmount(m);
    }
    kernel_sees(&img, &src, &opts);
    // And remove it all again: every block and inode comes back.
    let (fb0, fi0) = {
        let fresh = image(&d.path().join("x").tap_mkdir(), k, &[], None);
        dumpe2fs_counts(&fresh)
    };
    {
        let m = mount_rw(&img);
        for e in fs::read_dir(&m.mnt).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "lost+found" {
                let out = run(tool("rm").arg("-rf").arg(&p));
                assert!(out.ok(), "rm -rf {}: {}", p.display(), out.stderr);
            }
        }
        unmount(m);
    }
    fsck_clean(&img, &format!("{}: after rm -rf", k.name));
    let (fb, fi) = dumpe2fs_counts(&img);
    assert_eq!(fi, fi0, "{}: free inodes after removing everything", k.name);
    // Every block comes back but those the root directory grew by (directories keep theirs).
    let m = Mounted::with(&img, MountSpec::opts("ro"));
    let root_md = fs::metadata(&m.mnt).unwrap();
    let grown = root_md.size() / root_md.blksize() - 1;
    unmount(m);
    assert_eq!(fb + grown, fb0, "{}: free blocks after removing everything", k.name);
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn unpack_ext2_1k() {
    unpack(EXT2_1K);
}
#[test]
fn unpack_ext2_4k() {
    unpack(EXT2_4K);
}
#[test]
fn unpack_ext3_4k() {
    unpack(EXT3_4K);
}
#[test]
fn unpack_ext4_4k() {
    unpack(EXT4_4K);
}
#[test]
fn unpack_ext4_1k() {
    unpack(EXT4_1K);
}

// ---------------------------------------------------------------------------------------------
// Random operations from several threads, mirrored on tmpfs

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
    let xname = format!("user.k{}", rng.below(5));
    let mut xval = vec![0u8; rng.below(300) as usize];
    rng.fill(&mut xval);
    let target: String = (0..1 + rng.below(150)).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let sh = format!("{shared}/{}", own.replace('/', "_") + &rng.below(8).to_string());
    let mut results = Vec::new();
    for root in roots {
        let p = |s: &str| root.join(s);
        let r: io::Result<()> = match op {
            0..=29 => OpenOptions::new().create(true).write(true).truncate(false).open(p(&a)).and_then(|fh| fh.write_all_at(&data, off)),
            30..=37 => OpenOptions::new().write(true).open(p(&a)).and_then(|fh| fh.set_len(size)),
            38..=47 => fs::rename(p(&a), p(&b)),
            48..=55 => fs::remove_file(p(&a)),
            56..=60 => fs::hard_link(p(&a), p(&b)),
            61..=65 => std::os::unix::fs::symlink(&target, p(&b)),
            66..=73 => xattr_set(&p(&a), &xname, &xval),
            74..=77 => xattr_remove(&p(&a), &xname),
            78..=82 => fs::create_dir(p(&dname(&mut Rng::new(off)))),
            83..=85 => fs::remove_dir(p(&dname(&mut Rng::new(off)))),
            86..=88 => fs::rename(p(&dname(&mut Rng::new(off))), p(&dname(&mut Rng::new(size)))),
            89..=94 => fs::write(p(&sh), &data[..len.min(3000)]),
            _ => fs::remove_file(p(&sh)),
        };
        results.push(r);
    }
    if errno_of(&results[0]) != errno_of(&results[1]) {
        return Err(format!("op {op} on {a} / {b}: mount {:?}, tmpfs {:?}", results[0], results[1]));
    }
    Ok(())
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) -> io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn xattr_remove(p: &Path, name: &str) -> io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn random_mix(k: Kind, seed: u64) {
    setup();
    let d = tempdir();
    let img = image(d.path(), k, &[], Some("256M"));
    let reference = tempfile::Builder::new().prefix("rumpfs-ref-").tempdir_in("/dev/shm").unwrap();
    let m = mount_rw(&img);
    let failures = mirrored_random_ops([m.mnt.as_path(), reference.path()], 4, 700, seed, random_op);
    assert!(failures.is_empty(), "{}: outcomes differ from tmpfs:\n  {}", k.name, failures.join("\n  "));
    pin_times(&m.mnt);
    pin_times(reference.path());
    unmount(m);
    if let Some(keep) = std::env::var_os("EXT2W_KEEP") {
        let _ = fs::copy(&img, Path::new(&keep).join(format!("random-{}.img", k.name)));
        let _ = run(tool("cp").arg("-a").arg(reference.path()).arg(Path::new(&keep).join(format!("random-{}.ref", k.name))));
    }
    fsck_clean(&img, &format!("{}: after random operations", k.name));
    let opts = CompareOpts { sparse_threshold: u64::MAX, ..CompareOpts::default() };
    let m = Mounted::with(&img, MountSpec::opts("ro"));
    assert_trees_equal(reference.path(), &m.mnt, &opts);
    unmount(m);
    kernel_sees(&img, reference.path(), &opts);
}

#[test]
fn random_mix_ext2_1k() {
    random_mix(EXT2_1K, 1);
}
#[test]
fn random_mix_ext2_4k() {
    random_mix(EXT2_4K, 2);
}
#[test]
fn random_mix_ext3_4k() {
    random_mix(EXT3_4K, 3);
}
#[test]
fn random_mix_ext4_4k() {
    random_mix(EXT4_4K, 4);
}
#[test]
fn random_mix_ext4_1k() {
    random_mix(EXT4_1K, 5);
}

// ---------------------------------------------------------------------------------------------
// Filling the file system

fn fill_and_delete_half(k: Kind) {
    setup();
    let d = tempdir();
    let img = image(d.path(), k, &["-N", "2048"], Some("48M"));
    let m = mount_rw(&img);
    let mut rng = Rng::new(99);
    let mut files = Vec::new();
    // The directory for the inode phase is made while there is room for it.
    fs::create_dir(m.path("e")).unwrap();
    // Blocks first, in files of random sizes, until ENOSPC.
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
    // Then inodes, until those run out too (or the blocks for directory entries).
    for i in 0.. {
        let p = m.path(&format!("e/f{i}"));
        match File::create(&p) {
            Ok(_) => files.push(p),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{}: create {}: {e}", k.name, p.display());
                break;
            }
        }
    }
    let st = statvfs(&m.mnt);
    assert!(st.0 < 64 || st.2 == 0, "{}: not full: {st:?}", k.name);
    for (i, p) in files.iter().enumerate() {
        if i % 2 == 0 {
            fs::remove_file(p).unwrap();
        }
    }
    let (bfree, _, ffree) = statvfs(&m.mnt);
    let _ = (bfree, ffree);
    unmount(m);
    fsck_clean(&img, &format!("{}: after filling and deleting half", k.name));
    // (Files unlinked are freed when the FUSE kernel forgets them, so compare after a remount.)
    let m = Mounted::with(&img, MountSpec::opts("ro"));
    let (bfree, _, ffree) = statvfs(&m.mnt);
    unmount(m);
    let (fb, fi) = dumpe2fs_counts(&img);
    assert_eq!((bfree, ffree), (fb, fi), "{}: statfs counts against dumpe2fs", k.name);
}

/// (free blocks, total blocks, free inodes) from statvfs.
fn statvfs(p: &Path) -> (u64, u64, u64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter; valid path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0);
    (s.f_bfree, s.f_blocks, s.f_ffree)
}

#[test]
fn fill_ext2_1k() {
    fill_and_delete_half(EXT2_1K);
}
#[test]
fn fill_ext4_4k() {
    fill_and_delete_half(EXT4_4K);
}
#[test]
fn fill_ext3_4k() {
    fill_and_delete_half(EXT3_4K);
}

// ---------------------------------------------------------------------------------------------
// 70,000 subdirectories in one directory

fn many_subdirs(k: Kind) {
    setup();
    let d = tempdir();
    let img = image(d.path(), k, &["-N", "90000"], Some("1G"));
    const N: usize = 70_000;
    let t0 = Instant::now();
    {
        let m = mount_rw(&img);
        let big = m.path("big");
        fs::create_dir(&big).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let big = &big;
                s.spawn(move || {
                    for i in (t..N).step_by(4) {
                        fs::create_dir(big.join(format!("sub{i:05}"))).unwrap();
                    }
                });
            }
        });
        let md = fs::metadata(&big).unwrap();
        assert_eq!(md.nlink(), 1, "{}: a directory with {N} subdirectories shows nlink 1 (dir_nlink)", k.name);
        assert!(fs::metadata(big.join("sub69999")).unwrap().is_dir());
        unmount(m);
    }
    eprintln!("{}: {N} mkdirs took {:?}", k.name, t0.elapsed());
    fsck_clean(&img, &format!("{}: {N} subdirectories", k.name));
    {
        let m = mount_rw(&img);
        let big = m.path("big");
        assert_eq!(fs::read_dir(&big).unwrap().count(), N);
        // Below 65,000 again: the count becomes exact.
        for i in 0..10_000 {
            fs::remove_dir(big.join(format!("sub{i:05}"))).unwrap();
        }
        assert_eq!(fs::metadata(&big).unwrap().nlink(), (N - 10_000 + 2) as u64);
        unmount(m);
    }
    fsck_clean(&img, &format!("{}: after removing 10,000 of them", k.name));
}

#[test]
fn subdirs_70000_ext4() {
    many_subdirs(EXT4_4K);
}
#[test]
fn subdirs_70000_ext2() {
    many_subdirs(EXT2_4K);
}

// ---------------------------------------------------------------------------------------------
// A 5 GiB sparse file written at scattered offsets

fn sparse_5g(k: Kind) {
    setup();
    let d = tempdir();
    let img = image(d.path(), k, &[], Some("256M"));
    let reference = tempfile::Builder::new().prefix("rumpfs-ref-").tempdir_in("/dev/shm").unwrap();
    let mut rng = Rng::new(5);
    let m = mount_rw(&img);
    let size = 5 * GIB;
    let paths = [m.path("sparse"), reference.path().join("sparse")];
    let files: Vec<File> = paths.iter().map(|p| OpenOptions::new().create(true).write(true).truncate(true).open(p).unwrap()).collect();
    let mut offsets: Vec<u64> = (0..60).map(|_| rng.below(size - (1 << 20))).collect();
    offsets.extend([0, 4 * GIB - 100, 4 * GIB, size - 70_000, 12 * 1024, 268 * 1024, 64 * MIB + 3]);
    for off in offsets {
        let mut data = vec![0u8; 1 + rng.below(70_000) as usize];
        rng.fill(&mut data);
        for f in &files {
            f.write_all_at(&data, off).unwrap();
        }
    }
    for f in &files {
        f.set_len(size).unwrap();
        f.sync_all().unwrap();
    }
    drop(files);
    let used = fs::metadata(&paths[0]).unwrap().blocks() * 512;
    assert!(used < 64 * MIB, "{}: the sparse file uses {used} bytes: holes were filled", k.name);
    pin_times(&m.mnt);
    pin_times(reference.path());
    unmount(m);
    fsck_clean(&img, &format!("{}: 5 GiB sparse file", k.name));
    let opts = CompareOpts { sparse_threshold: 256 * MIB, ..CompareOpts::default() };
    let m = Mounted::with(&img, MountSpec::opts("ro"));
    assert_trees_equal(reference.path(), &m.mnt, &opts);
    // Every byte of the written regions and of the holes between them.
    let a = File::open(m.path("sparse")).unwrap();
    let b = File::open(reference.path().join("sparse")).unwrap();
    let mut off = 0u64;
    let chunk = 16 << 20;
    let mut x = vec![0u8; chunk];
    let mut y = vec![0u8; chunk];
    while off < size {
        let n = (size - off).min(chunk as u64) as usize;
        a.read_exact_at(&mut x[..n], off).unwrap();
        b.read_exact_at(&mut y[..n], off).unwrap();
        assert!(x[..n] == y[..n], "{}: bytes differ in [{off}, +{n})", k.name);
        off += n as u64;
    }
    drop(a);
    unmount(m);
    kernel_sees(&img, reference.path(), &opts);
}

#[test]
fn sparse_5g_ext4() {
    sparse_5g(EXT4_4K);
}
#[test]
fn sparse_5g_ext2_1k() {
    sparse_5g(EXT2_1K);
}
#[test]
fn sparse_5g_ext3() {
    sparse_5g(EXT3_4K);
}

// ---------------------------------------------------------------------------------------------
// POSIX details through FUSE

#[test]
fn posix_details() {
    setup();
    let d = tempdir();
    let img = image(d.path(), EXT4_4K, &[], Some("64M"));
    let m = mount_rw(&img);
    let long = "n".repeat(256);
    expect_errno(File::create(m.path(&long)), libc::ENAMETOOLONG, "create with a 256-byte name");
    fs::write(m.path(&"n".repeat(255)), b"x").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    expect_errno(fs::remove_dir(m.path("d")), libc::ENOTEMPTY, "rmdir of a non-empty directory");
    expect_errno(fs::create_dir(m.path("d")), libc::EEXIST, "mkdir over a directory");
    expect_errno(fs::rename(m.path("d"), m.path("d/f/x")), libc::ENOTDIR, "rename below a file");
    fs::create_dir(m.path("d/sub")).unwrap();
    expect_errno(fs::rename(m.path("d"), m.path("d/sub/x")), libc::EINVAL, "rename into itself");
    // rename over an empty directory and across directories (".." fixed).
    fs::create_dir(m.path("e")).unwrap();
    fs::rename(m.path("d/sub"), m.path("e")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    fs::create_dir(m.path("e/deep")).unwrap();
    fs::rename(m.path("e/deep"), m.path("d/deep")).unwrap();
    assert_eq!(fs::metadata(m.path("d/deep/..")).unwrap().ino(), fs::metadata(m.path("d")).unwrap().ino());
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);
    // O_APPEND.
    {
        let mut f = OpenOptions::new().append(true).open(m.path("d/f")).unwrap();
        io::Write::write_all(&mut f, b"yz").unwrap();
    }
    assert_eq!(fs::read(m.path("d/f")).unwrap(), b"xyz");
    // Exchange and noreplace (renameat2).
    fs::write(m.path("a1"), b"one").unwrap();
    fs::write(m.path("a2"), b"two").unwrap();
    renameat2(&m.path("a1"), &m.path("a2"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("a1")).unwrap(), b"two");
    expect_errno(renameat2(&m.path("a1"), &m.path("a2"), libc::RENAME_NOREPLACE), libc::EEXIST, "RENAME_NOREPLACE");
    // Unlinked while open: still readable and writable, freed on close.
    let (free0, _, _) = statvfs(&m.mnt);
    {
        let f = OpenOptions::new().create(true).read(true).write(true).open(m.path("tmp")).unwrap();
        f.write_all_at(&vec![7u8; 1 << 20], 0).unwrap();
        fs::remove_file(m.path("tmp")).unwrap();
        let mut b = vec![0u8; 10];
        f.read_exact_at(&mut b, 1000).unwrap();
        assert_eq!(b, vec![7u8; 10]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (free1, _, _) = statvfs(&m.mnt);
    assert!(free1 + 2 >= free0, "blocks of an unlinked file came back after close: {free0} -> {free1}");
    // fallocate: mode 0 and punching a hole.
    {
        let f = OpenOptions::new().create(true).read(true).write(true).open(m.path("fa")).unwrap();
        f.write_all_at(&vec![1u8; 100_000], 0).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: valid descriptor.
        assert_eq!(unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 5000, 50_000) }, 0);
        // SAFETY: valid descriptor.
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 300_000) }, 0);
        let mut b = vec![0u8; 100_000];
        f.read_exact_at(&mut b, 0).unwrap();
        assert!(b[..5000].iter().all(|&x| x == 1) && b[5000..55_000].iter().all(|&x| x == 0) && b[55_000..].iter().all(|&x| x == 1));
        assert_eq!(f.metadata().unwrap().len(), 300_000);
    }
    // utimens with nanoseconds.
    set_mtime(&m.path("fa"), 1_500_000_000, 987_654_321);
    let md = fs::metadata(m.path("fa")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 987_654_321));
    unmount(m);
    fsck_clean(&img, "posix details");
}

/// The privilege drops of write(2), truncate(2) and chown(2) (setuid, setgid when the group
/// may execute, security.capability), done the same way on the mount and on the host's own
/// file system: the kernel's behaviour there is the oracle. rumpfs-mount tells FUSE it drops
/// these itself (FUSE_HANDLE_KILLPRIV_V2), so nothing of this comes from the kernel's FUSE
/// client any more.
fn privilege_drops(root: &Path) -> Vec<String> {
    // A version-2 file capability (CAP_NET_BIND_SERVICE permitted).
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    let names = ["w1000", "wroot", "wcap", "t1000", "troot", "cown", "cgrp", "capown", "sgid-nox", "dir"];
    for n in names {
        let p = root.join(n);
        if n == "dir" {
            fs::create_dir(&p).unwrap();
        } else {
            fs::write(&p, b"data").unwrap();
        }
        lchown(&p, 1000, 1000);
        chmod(&p, if n == "sgid-nox" { 0o2766 } else { 0o6777 });
    }
    lsetxattr(&root.join("wcap"), "security.capability", &cap);
    lsetxattr(&root.join("capown"), "security.capability", &cap);
    let user = |cmd: &str, rel: &str| {
        let out = as_user(1001, 1001, "sh", &[OsStr::new("-c"), OsStr::new(cmd), OsStr::new("sh"), root.join(rel).as_os_str()]);
        assert!(out.ok(), "{cmd} {rel} as uid 1001: {}", out.stderr);
    };
    user("echo more >> \"$1\"", "w1000");
    user("echo more >> \"$1\"", "sgid-nox");
    fs::OpenOptions::new().append(true).open(root.join("wroot")).unwrap().write_all_at(b"x", 4).unwrap();
    fs::OpenOptions::new().append(true).open(root.join("wcap")).unwrap().write_all_at(b"x", 4).unwrap();
    user("truncate -s 1 \"$1\"", "t1000");
    fs::OpenOptions::new().write(true).open(root.join("troot")).unwrap().set_len(1).unwrap();
    lchown(&root.join("cown"), 1001, 1000);
    lchown(&root.join("cgrp"), 1000, 1001);
    lchown(&root.join("capown"), 1001, 1001);
    lchown(&root.join("dir"), 1001, 1001);
    names.iter().map(|n| privileges_of(root, n)).collect()
}

/// One line per file: mode, owner, whether it keeps a file capability, size.
fn privileges_of(root: &Path, name: &str) -> String {
    let p = root.join(name);
    let md = fs::symlink_metadata(&p).unwrap();
    let caps = xattrs(&p).unwrap().contains_key(&b"security.capability"[..]);
    let size = if md.is_dir() { 0 } else { md.len() };
    format!("{name}: mode {:o} owner {}:{} capability {caps} size {size}", md.mode(), md.uid(), md.gid())
}

#[test]
fn setuid_setgid_and_capabilities_dropped_as_the_kernel_does() {
    setup();
    require_tools(&["setpriv", "sh", "truncate"]);
    let d = tempdir();
    let host = d.path().join("host");
    fs::create_dir(&host).unwrap();
    chmod(&host, 0o777);
    let img = image(d.path(), EXT4_4K, &[], Some("64M"));
    // allow_other: uid 1001 writes and truncates through the mount too.
    let m = Mounted::with(&img, MountSpec::opts("allow_other"));
    chmod(&m.mnt, 0o777);
    let want = privilege_drops(&host);
    let got = privilege_drops(&m.mnt);
    assert_eq!(got, want, "the mount (left) and the host's kernel (right) disagree");
    unmount(m);
    fsck_clean(&img, "privilege drops");
    // What reached the image, read back by a fresh mount.
    let m = mount_rw(&img);
    let again: Vec<String> = want.iter().map(|line| privileges_of(&m.mnt, line.split(':').next().unwrap())).collect();
    assert_eq!(again, want, "after a remount");
    unmount(m);
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes()).unwrap();
    let cb = CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The superblock says "not clean" while mounted read-write and clean again after, with the
/// mount counted; a feature we cannot write makes the mount read-only with a warning, or is
/// refused with -o rw.
#[test]
fn clean_state_and_unwritable_features() {
    setup();
    let d = tempdir();
    let img = image(d.path(), EXT4_4K, &[], Some("64M"));
    let before = dumpe2fs_h(&img);
    let m = mount_rw(&img);
    fs::write(m.path("x"), b"x").unwrap();
    let during = dumpe2fs_h(&img);
    assert_eq!(during.get("Filesystem state").map(|s| s.trim()), Some("not clean"));
    unmount(m);
    let after = dumpe2fs_h(&img);
    assert_eq!(after.get("Filesystem state").map(|s| s.trim()), Some("clean"));
    let count = |h: &std::collections::HashMap<String, String>| h["Mount count"].trim().parse::<u32>().unwrap();
    assert_eq!(count(&after), count(&before) + 1);
    // quota cannot be written.
    let q = d.path().join("quota.img");
    mke2fs(&q, &["-t", "ext4", "-O", "quota"], None, "64M");
    let none = d.path().join("none");
    fs::create_dir(&none).unwrap();
    let args: [&std::ffi::OsStr; 4] = [q.as_os_str(), none.as_os_str(), "-o".as_ref(), "rw".as_ref()];
    let out = run_cli(&args, None);
    assert!(!out.ok() && out.stderr.contains("quota"), "rw mount of a quota image: {:?}: {}", out.code(), out.stderr);
    let m = mount_rw(&q);
    assert!(m.out.stderr.contains("read-only") && m.out.stderr.contains("quota"), "no warning: {}", m.out.stderr);
    expect_errno(fs::write(m.path("x"), b"x"), libc::EROFS, "write to a read-only mount");
    unmount(m);
}

// ---------------------------------------------------------------------------------------------
// Crash tests on the in-memory hypercalls

fn kernel() -> Arc<Kernel> {
    Kernel::boot(BootConfig {
        hyper: Arc::new(NoPlatform),
        factions: vec![Faction::Vfs, Faction::Dev],
        components: fs_drivers::all_components().into_iter().filter(|c| c.name() == "ext2fs").collect(),
        cache_bytes: 4 << 20,
    })
    .expect("boot")
}

fn mkimg_bytes(dir: &Path, k: Kind, size: &str) -> Vec<u8> {
    let img = image(dir, k, &[], Some(size));
    fs::read(img).unwrap()
}

/// e2fsck -fy then -fn on `bytes`; returns the repaired image.
fn repair(dir: &Path, bytes: &[u8], what: &str) -> Vec<u8> {
    let p = dir.join("crash.img");
    fs::write(&p, bytes).unwrap();
    let out = run(tool("e2fsck").arg("-fy").arg(&p));
    assert!(matches!(out.code(), Some(0..=3)), "{what}: e2fsck -fy exited {:?}:\n{}", out.code(), out.stdout);
    fsck_clean(&p, &format!("{what}: after e2fsck -fy"));
    fs::read(&p).unwrap()
}

fn crash(k: Kind, seed: u64) {
    setup();
    let d = tempdir();
    let pristine = mkimg_bytes(d.path(), k, "32M");
    let root = Cred::root();
    let mut rng = Rng::new(seed);
    for round in 0..4 {
        let mem = Arc::new(MemDisk::from_bytes(pristine.clone()));
        let kern = kernel();
        let mnt = kern.mount(None, MountSource::Block(mem.clone()), "crash.img", &MountOptions::default()).unwrap();
        assert!(!mnt.read_only());
        let stop = 20 + rng.below(200);
        // name -> content as of its last fsync (None: changed since).
        let mut synced: std::collections::BTreeMap<String, Option<Vec<u8>>> = Default::default();
        let dir = mnt.mknod(&root, mnt.root(), b"dir", FileType::Directory, 0o755, 0).unwrap().ino;
        let mut snapshot = None;
        for op in 0..400u64 {
            if op == stop {
                snapshot = Some(mem.contents());
                break;
            }
            let name = format!("f{}", rng.below(40));
            let parent = if rng.below(2) == 0 { mnt.root() } else { dir };
            let key = format!("{}/{name}", parent.0);
            match rng.below(10) {
                0..=5 => {
                    let ino = match mnt.lookup(&root, parent, name.as_bytes()) {
                        Ok(a) => {
                            mnt.forget(a.ino, 1);
                            a.ino
                        }
                        Err(_) => mnt.mknod(&root, parent, name.as_bytes(), FileType::Regular, 0o644, 0).map(|a| {
                            mnt.forget(a.ino, 1);
                            a.ino
                        }).unwrap(),
                    };
                    let vn = mnt.open(&root, ino, OpenFlags { read: true, write: true, truncate: false }).unwrap();
                    let mut data = vec![0u8; 1 + rng.below(40_000) as usize];
                    rng.fill(&mut data);
                    mnt.setattr(&root, ino, None, None, None, Some(0), None, None, true).unwrap();
                    mnt.write(&root, &vn, 0, &data).unwrap();
                    if rng.below(3) == 0 {
                        mnt.fsync(&vn, false).unwrap();
                        synced.insert(key, Some(data));
                    } else {
                        synced.insert(key, None);
                    }
                    mnt.release(vn);
                }
                6 | 7 => {
                    let _ = mnt.unlink(&root, parent, name.as_bytes());
                    synced.remove(&key);
                }
                _ => {
                    let to = format!("r{}", rng.below(40));
                    if mnt.rename(&root, parent, name.as_bytes(), parent, to.as_bytes(), RenameMode::Replace).is_ok() {
                        synced.remove(&key);
                        synced.remove(&format!("{}/{to}", parent.0));
                    }
                }
            }
        }
        let snap = snapshot.unwrap_or_else(|| mem.contents());
        // The crash: only what reached the disk by then counts (the unmount that dropping the
        // mount does writes to the RAM disk, not to the snapshot).
        drop(mnt);
        drop(kern);
        let fixed = repair(d.path(), &snap, &format!("{} round {round} (stopped after {stop} ops)", k.name));
        let kern = kernel();
        let ro = MountOptions { read_only: true, ..Default::default() };
        let mnt = kern.mount(None, MountSource::Block(Arc::new(MemDisk::from_bytes(fixed))), "fixed.img", &ro).unwrap();
        for (key, content) in &synced {
            let Some(want) = content else { continue };
            let (p, name) = key.split_once('/').unwrap();
            let parent = Ino(p.parse().unwrap());
            let a = mnt.lookup(&root, parent, name.as_bytes()).unwrap_or_else(|e| panic!("{}: fsync'ed {key} is gone after the crash: {e:?}", k.name));
            let vn = mnt.open(&root, a.ino, OpenFlags { read: true, write: false, truncate: false }).unwrap();
            let mut got = vec![0u8; want.len() + 10];
            let n = mnt.read(&vn, 0, &mut got).unwrap();
            assert_eq!(&got[..n], &want[..], "{}: fsync'ed {key} differs after the crash", k.name);
            mnt.release(vn);
        }
    }
}

#[test]
fn crash_ext2_1k() {
    crash(EXT2_1K, 11);
}
#[test]
fn crash_ext4_4k() {
    crash(EXT4_4K, 12);
}
#[test]
fn crash_ext3_4k() {
    crash(EXT3_4K, 13);
}

/// Lost writes (the device says yes and stores nothing): e2fsck -fy repairs whatever results.
#[test]
fn lost_writes_are_repaired() {
    setup();
    let d = tempdir();
    for k in [EXT2_4K, EXT4_4K] {
        let pristine = mkimg_bytes(d.path(), k, "32M");
        let mem = Arc::new(MemDisk::from_bytes(pristine).with_faults(Faults { seed: 7, lost_writes: 300, ..Default::default() }));
        let kern = kernel();
        let mnt = kern.mount(None, MountSource::Block(mem.clone()), "lossy.img", &MountOptions::default()).unwrap();
        let root = Cred::root();
        let mut rng = Rng::new(3);
        for i in 0..300 {
            let name = format!("f{}", rng.below(60));
            let a = match mnt.mknod(&root, mnt.root(), name.as_bytes(), FileType::Regular, 0o644, 0) {
                Ok(a) => a,
                Err(Errno::EEXIST) => {
                    let _ = mnt.unlink(&root, mnt.root(), name.as_bytes());
                    continue;
                }
                Err(e) => panic!("{e:?}"),
            };
            let vn = mnt.open(&root, a.ino, OpenFlags { read: false, write: true, truncate: false }).unwrap();
            let mut data = vec![0u8; rng.below(30_000) as usize];
            rng.fill(&mut data);
            let _ = mnt.write(&root, &vn, 0, &data);
            if i % 25 == 0 {
                let _ = mnt.fsync(&vn, false);
            }
            mnt.release(vn);
            mnt.forget(a.ino, 1);
        }
        let _ = mnt.unmount();
        drop(mnt);
        drop(kern);
        repair(d.path(), &mem.contents(), &format!("{}: lost writes", k.name));
    }
}
