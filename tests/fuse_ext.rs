//! End to end through FUSE: a generated tree -> real mke2fs images (ext2 1k/4k, ext3, ext4,
//! ext2 with 128-byte inodes) -> `rumpfs-mount` -> what the mount shows must equal the tree.
//!
//! One test body, many file systems (STYLE.md): each body below runs once per image kind.
//! Images are built once per test binary and shared (read-only mounts never change them).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rumpfs_tests::*;

const TOOLS: &[&str] = &["mke2fs", "debugfs", "e2fsck", "dumpe2fs", "fusermount3", "find", "stat", "umount"];

macro_rules! for_each_fs {
    ($body:ident) => {
        mod $body {
            use super::*;
            #[test]
            fn ext2_1k() {
                super::$body(FsKind::Ext2_1k)
            }
            #[test]
            fn ext2_4k() {
                super::$body(FsKind::Ext2_4k)
            }
            #[test]
            fn ext3_2k() {
                super::$body(FsKind::Ext3)
            }
            #[test]
            fn ext4() {
                super::$body(FsKind::Ext4)
            }
            #[test]
            fn ext2_inode128() {
                super::$body(FsKind::Ext2Inode128)
            }
        }
    };
}

fn setup(kind: FsKind) -> (&'static Image, &'static SourceTree) {
    require_tools(TOOLS);
    let img = shared_image(kind);
    (img, shared_tree(kind.wide_inodes()))
}

/// The whole tree through FUSE equals its source: names, types, modes, owners, sizes, mtimes,
/// nlink, rdev, symlink targets, content, xattrs, hard links.
fn tree_equals_source(kind: FsKind) {
    let (img, tree) = setup(kind);
    let m = Mounted::new(&img.path);
    let e = m.entry().unwrap();
    assert!(e.fstype.starts_with("fuse"), "fstype {}", e.fstype);
    assert_eq!(Path::new(&e.source), img.path, "/proc/mounts source");
    let t = Instant::now();
    m.deadline(Duration::from_secs(600), || assert_trees_equal(&tree.root, &m.mnt, &CompareOpts::for_kind(kind)));
    eprintln!("{}: compared the tree in {:?}", kind.name(), t.elapsed());
}
for_each_fs!(tree_equals_source);

/// Real tools agree: `find -printf` over the mount prints what it prints over the source.
fn find_output_matches(kind: FsKind) {
    let (img, tree) = setup(kind);
    let m = Mounted::new(&img.path);
    let fmt = "%P\t%y\t%m\t%U\t%G\t%n\t%T@\t%l\t%s\n";
    let list = |root: &Path| -> Vec<String> {
        let out = run_ok(tool("find").arg(root).arg("-printf").arg(fmt));
        let mut lines: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("lost+found"))
            .filter(|l| !l.starts_with('\t')) // the root itself
            .map(|l| {
                // directory sizes depend on the host file system of the source
                let mut f: Vec<&str> = l.split('\t').collect();
                if f[1] == "d" {
                    f[8] = "-";
                }
                f.join("\t")
            })
            .collect();
        lines.sort();
        lines
    };
    let (want, have) = (list(&tree.root), m.deadline(Duration::from_secs(300), || list(&m.mnt)));
    let missing: Vec<&String> = want.iter().filter(|l| !have.contains(l)).take(30).collect();
    let extra: Vec<&String> = have.iter().filter(|l| !want.contains(l)).take(30).collect();
    assert!(missing.is_empty() && extra.is_empty(), "find output differs\nonly in source:\n{missing:#?}\nonly on mount:\n{extra:#?}");
    // ls -lR and cat work on the mount.
    let ls = run_ok(tool("ls").arg("-lR").arg(&m.mnt));
    assert!(ls.stdout.contains("hello.txt"), "ls -lR output lacks hello.txt");
    let cat = run_ok(tool("cat").arg(m.path("files/hello.txt")));
    assert_eq!(cat.stdout, "hello, world\n");
}
for_each_fs!(find_output_matches);

/// statvfs (and `stat -f`) report the superblock's counts, as the kernel's driver does.
fn statvfs_matches_dumpe2fs(kind: FsKind) {
    let (img, _) = setup(kind);
    let h = dumpe2fs_h(&img.path);
    let num = |k: &str| -> u64 { h.get(k).unwrap_or_else(|| panic!("dumpe2fs -h lacks {k}")).parse().unwrap() };
    let (bs, free, reserved, blocks) = (num("Block size"), num("Free blocks"), num("Reserved block count"), num("Block count"));
    let (inodes, free_inodes) = (num("Inode count"), num("Free inodes"));
    let m = Mounted::new(&img.path);
    let c = std::ffi::CString::new(m.mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs with a valid path and an out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs: {}", std::io::Error::last_os_error());
    let fr = st.f_frsize as u64;
    let mut bad = Vec::new();
    if st.f_bfree as u64 * fr != free * bs {
        bad.push(format!("free bytes {} x {fr}, want {free} x {bs}", st.f_bfree));
    }
    // ext4 keeps back 2% of an extent-mapped file system, at most 4096 blocks, beyond the
    // reserved blocks (ext4_calculate_resv_clusters).
    let extents = h.get("Filesystem features").is_some_and(|f| f.split_whitespace().any(|x| x == "extent"));
    let kept = if extents { (blocks / 50).min(4096) } else { 0 };
    if st.f_bavail as u64 * fr != free.saturating_sub(reserved + kept) * bs {
        bad.push(format!("available bytes {} x {fr}, want ({free} - {reserved} - {kept}) x {bs}", st.f_bavail));
    }
    if st.f_blocks as u64 * fr > blocks * bs || st.f_blocks == 0 {
        bad.push(format!("total {} x {fr}, want at most {blocks} x {bs}", st.f_blocks));
    }
    if st.f_files as u64 != inodes {
        bad.push(format!("f_files {}, want {inodes}", st.f_files));
    }
    if st.f_ffree as u64 != free_inodes {
        bad.push(format!("f_ffree {}, want {free_inodes}", st.f_ffree));
    }
    if st.f_namemax != 255 {
        bad.push(format!("f_namemax {}, want 255", st.f_namemax));
    }
    // stat -f prints the same.
    let fields = ["-f", "-c", "%S %b %f %a %c %d"];
    let out = run_ok(tool("stat").args(fields).arg(&m.mnt)).stdout;
    let f: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    if f != [fr, st.f_blocks as u64, st.f_bfree as u64, st.f_bavail as u64, st.f_files as u64, st.f_ffree as u64] {
        bad.push(format!("stat -f: {out:?}"));
    }
    // And df shows what it shows on the kernel's own mount (the driver `mount -o loop`
    // picks: ext2 for ext2, ext4 for ext3/ext4), metadata overhead and reservations included.
    if let Some(k) = LoopMount::new(&img.path, &["-o", "loop,ro"]) {
        let theirs = run_ok(tool("stat").args(fields).arg(&k.0)).stdout;
        if theirs != out {
            bad.push(format!("stat -f (size total free avail inodes ifree): ours {:?}, the kernel's {theirs:?}", out.trim()));
        }
    }
    assert!(bad.is_empty(), "{}: {}", kind.name(), bad.join("; "));
}
for_each_fs!(statvfs_matches_dumpe2fs);

/// Read-only (`-o ro`): every kind of write fails with EROFS, /proc/mounts says ro, and the
/// server opened the image read-only.
fn read_only_mount(kind: FsKind) {
    let (img, _) = setup(kind);
    let m = Mounted::new(&img.path);
    let e = m.entry().unwrap();
    assert!(e.options.split(',').any(|o| o == "ro"), "/proc/mounts options {} lack ro", e.options);
    let p = |r: &str| m.path(r);
    let erofs = libc::EROFS;
    expect_errno(File::create(p("new-file")), erofs, "create");
    expect_errno(fs::OpenOptions::new().write(true).open(p("files/hello.txt")), erofs, "open for writing");
    expect_errno(fs::OpenOptions::new().append(true).open(p("files/hello.txt")), erofs, "open for appending");
    expect_errno(fs::create_dir(p("new-dir")), erofs, "mkdir");
    expect_errno(fs::remove_file(p("files/hello.txt")), erofs, "unlink");
    expect_errno(fs::remove_dir(p("times")), erofs, "rmdir");
    expect_errno(fs::rename(p("files/hello.txt"), p("files/renamed")), erofs, "rename");
    expect_errno(std::os::unix::fs::symlink("x", p("new-link")), erofs, "symlink");
    expect_errno(fs::hard_link(p("files/hello.txt"), p("new-hard")), erofs, "link");
    expect_errno(fs::set_permissions(p("files/hello.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o600)), erofs, "chmod");
    expect_errno(std::os::unix::fs::chown(p("files/hello.txt"), Some(1), Some(1)), erofs, "chown");
    let c = |s: &Path| std::ffi::CString::new(s.as_os_str().as_encoded_bytes()).unwrap();
    let ret = |rc: i32| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: valid paths and arguments.
    expect_errno(ret(unsafe { libc::truncate(c(&p("files/hello.txt")).as_ptr(), 0) }), erofs, "truncate");
    expect_errno(ret(unsafe { libc::utimes(c(&p("files/hello.txt")).as_ptr(), std::ptr::null()) }), erofs, "utimes");
    let name = std::ffi::CString::new("user.new").unwrap();
    expect_errno(
        ret(unsafe { libc::setxattr(c(&p("files/hello.txt")).as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) }),
        erofs,
        "setxattr",
    );
    expect_errno(ret(unsafe { libc::removexattr(c(&p("xattr/small")).as_ptr(), c(Path::new("user.a")).as_ptr()) }), erofs, "removexattr");
    expect_errno(ret(unsafe { libc::mknod(c(&p("new-fifo")).as_ptr(), libc::S_IFIFO | 0o644, 0) }), erofs, "mknod");
    // Reading still works.
    assert_eq!(fs::read(p("files/hello.txt")).unwrap(), b"hello, world\n");
    // The image is open read-only in the server.
    assert!(!m.pids.is_empty(), "cannot find the server process of {}", m.mnt.display());
    let canon = fs::canonicalize(&img.path).unwrap();
    let mut seen = 0;
    for &pid in &m.pids {
        for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            if fs::read_link(fd.path()).ok().as_deref() == Some(canon.as_path()) {
                seen += 1;
                let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap();
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map(|f| u32::from_str_radix(f.trim(), 8).unwrap()).unwrap();
                assert_eq!(flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32, "image fd {} opened with flags {flags:o}", fd.path().display());
            }
        }
    }
    assert!(seen > 0, "the server does not hold {} open", canon.display());
}
for_each_fs!(read_only_mount);

/// The big directory (htree, or linear for ext2-4k): every entry listed, lookups of present
/// names succeed and lookups of absent names are ENOENT.
fn big_directory_lookups(kind: FsKind) {
    let (img, tree) = setup(kind);
    let m = Mounted::new(&img.path);
    let names = |d: &Path| -> std::collections::BTreeSet<std::ffi::OsString> { fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect() };
    let (want, have) = (names(&tree.root.join("bigdir")), m.deadline(Duration::from_secs(120), || names(&m.path("bigdir"))));
    assert_eq!(have.len(), want.len(), "{} entries listed, want {}", have.len(), want.len());
    assert!(have == want, "bigdir listing differs");
    let mut rng = Rng::new(99);
    let v: Vec<&std::ffi::OsString> = want.iter().collect();
    for _ in 0..300 {
        let n = v[rng.below(v.len() as u64) as usize];
        let md = fs::symlink_metadata(m.path("bigdir").join(n)).unwrap_or_else(|e| panic!("lookup {n:?}: {e}"));
        assert!(md.is_file());
    }
    for i in 0..300 {
        let absent = match i % 3 {
            0 => format!("entry-{:05}", 10_000 + i),
            1 => format!("entry-{:05}x", i),
            _ => format!("Entry-{:05}", i),
        };
        expect_errno(fs::symlink_metadata(m.path("bigdir").join(&absent)), libc::ENOENT, &format!("lookup of absent {absent}"));
    }
    // A name of 255 bytes is found, one of 256 is ENAMETOOLONG (the kernel's check).
    assert!(fs::symlink_metadata(m.path(&format!("names/{}", "L".repeat(255)))).is_ok());
    expect_errno(fs::symlink_metadata(m.path(&format!("names/{}", "L".repeat(256)))), libc::ENAMETOOLONG, "256-byte name");
}
for_each_fs!(big_directory_lookups);

/// Reads the whole 5 GiB sparse file through FUSE: the data regions match and every hole is
/// zeros. Prints the throughput.
fn sparse_file_full_read(kind: FsKind) {
    let (img, tree) = setup(kind);
    let m = Mounted::new(&img.path);
    let src = File::open(tree.root.join("sparse/5g")).unwrap();
    let mut f = File::open(m.path("sparse/5g")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), SPARSE_SIZE);
    let t = Instant::now();
    let mut buf = vec![0u8; 4 << 20];
    let mut want = vec![0u8; 4 << 20];
    let mut off = 0u64;
    let mut bad = Vec::new();
    m.deadline(Duration::from_secs(600), || loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                bad.push(format!("read at {off}: {e}"));
                break;
            }
        };
        let in_data = SPARSE_REGIONS.iter().any(|&(s, l)| s < off + n as u64 && off < s + l);
        if in_data {
            src.read_exact_at(&mut want[..n], off).unwrap();
            if want[..n] != buf[..n] {
                bad.push(format!("data differs in [{off}, +{n})"));
            }
        } else if buf[..n].iter().any(|&b| b != 0) {
            bad.push(format!("hole not zero in [{off}, +{n})"));
        }
        if bad.len() > 10 {
            break;
        }
        off += n as u64;
    });
    assert!(bad.is_empty(), "{}: {bad:?}", kind.name());
    assert_eq!(off, SPARSE_SIZE, "read {off} bytes");
    let secs = t.elapsed().as_secs_f64();
    eprintln!("{}: read 5 GiB sparse in {secs:.1}s ({:.0} MiB/s)", kind.name(), 5120.0 / secs);
}
#[test]
fn sparse_file_full_read_ext2_1k() {
    sparse_file_full_read(FsKind::Ext2_1k)
}
#[test]
fn sparse_file_full_read_ext4() {
    sparse_file_full_read(FsKind::Ext4)
}

// ---------------------------------------------------------------------------------------------
// The shared real images (made by other systems)
// ---------------------------------------------------------------------------------------------

/// Mounts one image of ../shared/test-images and compares it with debugfs's view and, where
/// there is one, the manifest.
fn shared_real_image(stem: &str) {
    require_tools(&["zstd", "debugfs", "fusermount3"]);
    let Some(dir) = test_images_dir() else { return };
    let zst = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(stem) && p.extension() == Some(OsStr::new("zst")))
        .unwrap_or_else(|| panic!("no {stem}*.zst in {}", dir.display()));
    let tmp = tempdir();
    let img = unzstd(&zst, tmp.path());
    let m = Mounted::new(&img);
    let mut diffs = m.deadline(Duration::from_secs(120), || compare_with_debugfs(&img, &m.mnt));
    let manifest = dir.join("manifests").join(format!("{}.txt", img.file_name().unwrap().to_string_lossy()));
    if manifest.is_file() {
        // The manifests' nlink is wrong where files are hard links (linux-2001's
        // /dir3.100entries: 100 names of inode 13, "Links: 100" in debugfs, nlink=1 in the
        // manifest), so link counts are checked against debugfs instead.
        let strip = |l: &str| l.split(" nlink=").next().unwrap().to_string();
        let want: String = fs::read_to_string(&manifest).unwrap().lines().map(|l| strip(l) + "\n").collect();
        match m.deadline(Duration::from_secs(120), || manifest_of(&m.mnt)) {
            Ok(have) => {
                diffs.extend(manifest_diff(&want, &have.iter().map(|l| strip(l)).collect::<Vec<_>>()));
                let files: Vec<String> =
                    have.iter().filter(|l| l.starts_with("f ")).map(|l| l.split(' ').nth(2).unwrap().to_string()).collect();
                let links = debugfs_links(&img, &files);
                for f in &files {
                    let n = fs::symlink_metadata(m.path(f.trim_start_matches('/'))).map(|md| md.nlink()).ok();
                    if n != links.get(f).copied() {
                        diffs.push(format!("{f}: nlink {n:?} on the mount, {:?} in debugfs", links.get(f)));
                    }
                }
            }
            Err(e) => diffs.push(e),
        }
    }
    assert!(diffs.is_empty(), "{}:\n  {}", img.display(), diffs.join("\n  "));
}

#[test]
fn shared_image_lde_rev0_100k() {
    shared_real_image("linux-2001-mke2fs-ext2-rev0-100k")
}
#[test]
fn shared_image_rev0_8193_blocks() {
    shared_real_image("linux-1995-mke2fs-ext2-rev0-8193blk")
}
#[test]
fn shared_image_8k_blocks() {
    shared_real_image("linux-2002-mke2fs-ext2-8k-blocksize")
}
#[test]
fn shared_image_hurd() {
    shared_real_image("creatoros-hurd-ext2-rev1-100k")
}

/// The debugfs oracle agrees with the generated images too (directory sizes, root).
fn debugfs_view_matches(kind: FsKind) {
    let (img, _) = setup(kind);
    let m = Mounted::new(&img.path);
    let diffs = m.deadline(Duration::from_secs(600), || compare_with_debugfs(&img.path, &m.mnt));
    assert!(diffs.is_empty(), "{}: {} differences:\n  {}", kind.name(), diffs.len(), diffs.iter().take(100).cloned().collect::<Vec<_>>().join("\n  "));
}
#[test]
fn debugfs_view_matches_ext4() {
    debugfs_view_matches(FsKind::Ext4)
}
#[test]
fn debugfs_view_matches_ext2_inode128() {
    debugfs_view_matches(FsKind::Ext2Inode128)
}
