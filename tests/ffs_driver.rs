//! The ffs driver (UFS1 and UFS2, both byte orders) driven through the kernel, and through
//! the real `rumpfs-mount` binary.
//!
//! Oracles: the source trees that Debian's `makefs -t ffs` built the images from (bytes,
//! modes, owners, times, links, symlink targets, device numbers), the manifests of the real
//! FreeBSD images in ../shared/test-images, and Sleuth Kit (`fls`, `istat`, `icat`) as an
//! independent reader of UFS1 images. Damaged images must give mount errors or EIO on the
//! damaged file, never a panic or a hang, and the rest of the tree stays readable.

use rumpfs_tests as t;
use t::{ffs_tree, makefs};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vfs_faction::hypercall::NoPlatform;
use vfs_faction::memdev::MemDisk;
use vfs_faction::{
    BootConfig, Cred, Errno, Faction, FileType, Ino, Kernel, Mount, MountError, MountOptions, MountSource,
    OpenFlags,
};
use rumpfs_tests::{vfs_list_dir, vfs_read_all};

// ---------------------------------------------------------------------------------------
// Kernel, devices, walks

fn kernel() -> Arc<Kernel> {
    Kernel::boot(BootConfig {
        hyper: Arc::new(NoPlatform),
        factions: vec![Faction::Vfs, Faction::Dev],
        // The block-device components (the NFS client needs the net faction).
        components: fs_drivers::all_components()
            .into_iter()
            .filter(|c| c.factions().iter().all(|f| matches!(f, Faction::Vfs | Faction::Dev)))
            .collect(),
        cache_bytes: 16 << 20,
    })
    .expect("boot")
}

fn mount_bytes_with(bytes: Vec<u8>, opts: &MountOptions) -> Result<Arc<Mount>, MountError> {
    let k = kernel();
    k.mount(None, MountSource::Block(Arc::new(MemDisk::from_bytes(bytes).read_only())), "test.img", opts)
}

fn mount_bytes(bytes: Vec<u8>) -> Result<Arc<Mount>, MountError> {
    mount_bytes_with(bytes, &MountOptions { read_only: true, ..Default::default() })
}

fn mount_img(img: &Path) -> Arc<Mount> {
    let m = mount_bytes(std::fs::read(img).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    assert_eq!(m.fstype(), "ffs");
    m
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Lines in the format of ../shared/test-images/manifests, from a walk through the kernel.
fn manifest(m: &Mount) -> Vec<String> {
    fn walk(m: &Mount, dir: Ino, prefix: &str, out: &mut Vec<String>) {
        for (name, ino, kind) in vfs_list_dir(m, dir).unwrap() {
            if name == b"." || name == b".." {
                continue;
            }
            let path = format!("{prefix}/{}", String::from_utf8(name.clone()).unwrap());
            let a = m.lookup(&Cred::root(), dir, &name).unwrap();
            assert_eq!(a.ino, ino, "{path}: lookup and readdir disagree");
            assert_eq!(a.kind, kind, "{path}: d_type and inode disagree");
            match kind {
                FileType::Directory => {
                    out.push(format!("d 0o{:o} {path}/", a.perm));
                    walk(m, ino, &path, out);
                }
                FileType::Regular if a.size > 64 << 20 => {
                    // As the manifests do: no hash of huge sparse files; read their ends.
                    let vn = m.open(&Cred::root(), ino, OpenFlags { read: true, ..Default::default() }).unwrap();
                    let mut buf = vec![0u8; 1 << 20];
                    m.read(&vn, 0, &mut buf).unwrap();
                    assert_eq!(m.read(&vn, a.size - 1000, &mut buf).unwrap(), 1000);
                    m.release(vn);
                    out.push(format!("f 0o{:o} {path} size={} sha256=(not computed: large/sparse)", a.perm, a.size));
                }
                FileType::Regular => {
                    let data = vfs_read_all(m, ino, 64 << 10).unwrap();
                    out.push(format!("f 0o{:o} {path} size={} sha256={}", a.perm, a.size, sha(&data)));
                }
                FileType::Symlink => {
                    let target = m.readlink(ino).unwrap();
                    out.push(format!("l 0o{:o} {path} -> {}", a.perm, String::from_utf8_lossy(&target)));
                }
                k => out.push(format!("{k:?} 0o{:o} {path}", a.perm)),
            }
            m.forget(ino, 1);
        }
    }
    let mut out = Vec::new();
    walk(m, m.root(), "", &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// The real FreeBSD images

fn shared_image(name: &str) -> Option<Vec<u8>> {
    let dir = t::test_images_dir()?;
    let out = Command::new("zstd").arg("-d").arg("-c").arg(dir.join(format!("{name}.zst"))).output().unwrap();
    assert!(out.status.success(), "zstd -d {name}");
    Some(out.stdout)
}

fn shared_manifest(name: &str) -> Option<String> {
    let dir = t::test_images_dir()?;
    std::fs::read_to_string(dir.join("manifests").join(format!("{name}.txt"))).ok()
}

fn assert_manifest(name: &str, got: &[String], want: &str) {
    let want: Vec<String> = {
        let mut v: Vec<String> = want.lines().map(|l| l.trim_end().to_string()).filter(|l| !l.is_empty()).collect();
        v.sort();
        v
    };
    if got != want {
        let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(20).collect();
        let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).take(20).collect();
        panic!("{name}: tree differs from the manifest\nmissing: {missing:#?}\nextra: {extra:#?}");
    }
}

const LE_EMPTY: &str = "freebsd-newfs-ufs2-nosoftdep-le-64m-empty.fuse-ufs-git-2e632eb.img";
const BE_LARGEDIRS: &str = "freebsd-powerpc64-newfs-ufs2-softdep-be-16m-largedirs.fuse-ufs-git-5962539.img";
const BE_64M: &str = "freebsd-powerpc64-newfs-ufs2-softdep-be-64m.fuse-ufs-git-a980a44.img";

#[test]
fn freebsd_ufs2_le_with_check_hashes_matches_its_manifest() {
    let (Some(bytes), Some(want)) = (shared_image(LE_EMPTY), shared_manifest(LE_EMPTY)) else { return };
    let m = mount_bytes(bytes).unwrap();
    assert_eq!(m.fstype(), "ffs");
    assert_manifest(LE_EMPTY, &manifest(&m), &want);
    let s = m.statfs().unwrap();
    assert!(s.blocks > 0 && s.bfree > 0 && s.bfree <= s.blocks && s.ffree > 0, "{s:?}");
}

#[test]
fn freebsd_ufs2_be_2049_subdirectories_match_the_manifest() {
    let (Some(bytes), Some(want)) = (shared_image(BE_LARGEDIRS), shared_manifest(BE_LARGEDIRS)) else { return };
    let m = mount_bytes(bytes).unwrap();
    let got = manifest(&m);
    assert!(got.iter().filter(|l| l.starts_with("d 0o755 /large/")).count() >= 2049);
    assert_manifest(BE_LARGEDIRS, &got, &want);
    // Birth times and nanoseconds are UFS2's.
    let large = m.lookup(&Cred::root(), m.root(), b"large").unwrap();
    assert!(large.crtime.is_some());
    assert_eq!(large.nlink, 2049 + 2);
}

#[test]
fn freebsd_ufs2_be_files_and_symlinks() {
    let Some(bytes) = shared_image(BE_64M) else { return };
    let m = mount_bytes(bytes).unwrap();
    let c = Cred::root();
    let file1 = m.namei(&c, b"/file1", true).unwrap();
    assert_eq!(vfs_read_all(&m, file1.ino, 4096).unwrap(), b"This is a simple file.\n");
    let file2 = m.namei(&c, b"/dir1/dir2/dir3/file2", true).unwrap();
    assert_eq!(vfs_read_all(&m, file2.ino, 4096).unwrap(), b"Hello World\n");
    let file3 = m.namei(&c, b"/file3", true).unwrap();
    let want: Vec<u8> = (0..65536u32).flat_map(|i| format!("{i:015x}\n").into_bytes()).collect();
    assert_eq!(file3.size, 1 << 20);
    assert!(vfs_read_all(&m, file3.ino, 100_000).unwrap() == want, "file3 content");
    let link1 = m.namei(&c, b"/link1", false).unwrap();
    assert_eq!(m.readlink(link1.ino).unwrap(), b"dir1/dir2/dir3/file2");
    assert_eq!(m.namei(&c, b"/link1", true).unwrap().ino, file2.ino);
    let long = m.namei(&c, b"/long-link", false).unwrap();
    assert_eq!(m.readlink(long.ino).unwrap(), ("./".repeat(200) + "/file1").as_bytes());
    assert_eq!(m.namei(&c, b"/long-link", true).unwrap().ino, file1.ino);
}

// ---------------------------------------------------------------------------------------
// Images from Debian's makefs, compared with their source trees

/// What the walks compare of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: FileType,
    perm: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    nlink: u32,
    mtime: (i64, u32),
    content: Option<String>,
    target: Option<Vec<u8>>,
    rdev: u32,
    ino: u64,
}

fn kind_of(m: &std::fs::Metadata) -> FileType {
    let ft = m.file_type();
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_fifo() {
        FileType::Fifo
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else if ft.is_socket() {
        FileType::Socket
    } else {
        FileType::Regular
    }
}

fn host_walk(root: &Path) -> BTreeMap<String, Node> {
    fn rec(root: &Path, rel: &Path, out: &mut BTreeMap<String, Node>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let kind = kind_of(&m);
            if kind == FileType::Socket {
                continue; // makefs leaves sockets out of its images
            }
            out.insert(
                r.to_str().unwrap().to_string(),
                Node {
                    kind,
                    perm: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: matches!(kind, FileType::Regular | FileType::Symlink).then_some(m.len()),
                    nlink: m.nlink() as u32,
                    mtime: (m.mtime(), m.mtime_nsec() as u32),
                    content: (kind == FileType::Regular).then(|| t::sha256_file(&p).unwrap()),
                    target: (kind == FileType::Symlink).then(|| std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                    rdev: if matches!(kind, FileType::CharDevice | FileType::BlockDevice) { m.rdev() as u32 } else { 0 },
                    ino: m.ino(),
                },
            );
            if kind == FileType::Directory {
                rec(root, &r, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(root, Path::new(""), &mut out);
    out
}

fn image_walk(m: &Mount) -> BTreeMap<String, Node> {
    fn rec(m: &Mount, dir: Ino, prefix: &str, out: &mut BTreeMap<String, Node>) {
        let cred = Cred::root();
        let entries = vfs_list_dir(m, dir).unwrap();
        let dots = entries.iter().filter(|e| e.0 == b"." || e.0 == b"..").count();
        assert_eq!(dots, 2, "{prefix}: . and ..");
        for (name, ino, kind) in entries {
            if name == b"." || name == b".." {
                continue;
            }
            let name = String::from_utf8(name).unwrap();
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let a = m.lookup(&cred, dir, name.as_bytes()).unwrap();
            assert_eq!(a.ino, ino, "{rel}: lookup and readdir disagree");
            assert_eq!(a.kind, kind, "{rel}: d_type and inode type disagree");
            let content = (kind == FileType::Regular).then(|| sha(&vfs_read_all(m, ino, 200 << 10).unwrap()));
            let target = (kind == FileType::Symlink).then(|| m.readlink(ino).unwrap());
            out.insert(
                rel.clone(),
                Node {
                    kind,
                    perm: a.perm,
                    uid: a.uid,
                    gid: a.gid,
                    size: matches!(kind, FileType::Regular | FileType::Symlink).then_some(a.size),
                    nlink: a.nlink,
                    mtime: (a.mtime.sec, a.mtime.nsec),
                    content,
                    target,
                    rdev: a.rdev,
                    ino: ino.0,
                },
            );
            m.forget(ino, 1);
            if kind == FileType::Directory {
                rec(m, ino, &rel, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(m, m.root(), "", &mut out);
    out
}

/// Compares an image with its source tree. `ufs1`: 32-bit seconds (times outside are not
/// compared).
fn compare(src: &Path, m: &Mount, ufs1: bool) {
    let want = host_walk(src);
    let got = image_walk(m);
    let only_src: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(20).collect();
    let only_img: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(20).collect();
    assert!(only_src.is_empty() && only_img.is_empty(), "names differ: only in the source {only_src:?}; only in the image {only_img:?}");
    let mut by_src: BTreeMap<u64, u64> = BTreeMap::new();
    let mut diffs = Vec::new();
    for (path, w) in &want {
        let mut g = got[path].clone();
        if let Some(prev) = by_src.insert(w.ino, g.ino) {
            if prev != g.ino {
                diffs.push(format!("{path}: hard link lost"));
            }
        }
        let mut w = w.clone();
        w.ino = 0;
        g.ino = 0;
        if ufs1 && i32::try_from(w.mtime.0).is_err() {
            w.mtime = g.mtime;
        }
        // Debian's makefs stores whole seconds (the Linux stat has no st_mtimensec it knows).
        w.mtime.1 = 0;
        if w.kind == FileType::Directory {
            // makefs counts a directory's links itself: 2 + subdirectories, as the source.
            w.mtime = g.mtime; // directories get new times as makefs fills them
        }
        if w != g {
            diffs.push(format!("{path}:\n  source {w:?}\n  image  {g:?}"));
        }
    }
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.iter().take(30).cloned().collect::<Vec<_>>().join("\n"));
}

fn makefs_case(version: u32, order: &str, bsize: u32, fsize: u32) {
    let tree = ffs_tree();
    let dir = t::tempdir();
    let img = dir.path().join("ffs.img");
    makefs(&img, &tree.root, &format!("version={version},bsize={bsize},fsize={fsize}"), order);
    let m = mount_img(&img);
    compare(&tree.root, &m, version == 1);
    let s = m.statfs().unwrap();
    assert_eq!(s.bsize, fsize);
    assert!(s.bfree > 0 && s.bfree < s.blocks && s.ffree > 0 && s.files > s.ffree, "{s:?}");
}

// Both versions, both byte orders, every block size, fragments from 1/8 to 1/1 of a block.
#[test]
fn makefs_ufs1_le_4k_512() {
    makefs_case(1, "le", 4096, 512);
}
#[test]
fn makefs_ufs1_be_8k_1k() {
    makefs_case(1, "be", 8192, 1024);
}
#[test]
fn makefs_ufs1_le_16k_2k() {
    makefs_case(1, "le", 16384, 2048);
}
#[test]
fn makefs_ufs1_be_32k_4k() {
    makefs_case(1, "be", 32768, 4096);
}
#[test]
fn makefs_ufs1_le_64k_16k() {
    makefs_case(1, "le", 65536, 16384);
}
#[test]
fn makefs_ufs2_be_4k_4k() {
    makefs_case(2, "be", 4096, 4096);
}
#[test]
fn makefs_ufs2_le_8k_1k() {
    makefs_case(2, "le", 8192, 1024);
}
#[test]
fn makefs_ufs2_be_16k_8k() {
    makefs_case(2, "be", 16384, 8192);
}
#[test]
fn makefs_ufs2_le_32k_4k() {
    makefs_case(2, "le", 32768, 4096);
}
#[test]
fn makefs_ufs2_be_64k_8k() {
    makefs_case(2, "be", 65536, 8192);
}

// ---------------------------------------------------------------------------------------
// Sleuth Kit as an independent reader (UFS1: it cannot open Debian's UFS2 at 8192)

/// `fls -r -p`: path -> (type letter, inode number).
fn tsk_listing(img: &Path) -> BTreeMap<String, (char, u64)> {
    let out = t::run_ok(t::tool("fls").args(["-r", "-p"]).arg(img));
    let mut map = BTreeMap::new();
    for line in out.stdout.lines() {
        // "r/r 5:\tfiles/hello.txt"; deleted entries carry a '*'; $OrphanFiles is virtual.
        let Some((head, path)) = line.split_once(":\t") else { continue };
        if head.contains('*') || path.starts_with("$OrphanFiles") {
            continue;
        }
        let kind = head.chars().nth(2).unwrap();
        let ino: u64 = head.rsplit(' ').next().unwrap().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
        map.insert(path.to_string(), (kind, ino));
    }
    map
}

fn tsk_field<'a>(istat: &'a str, name: &str) -> &'a str {
    istat.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("{name} in istat:\n{istat}"))
}

fn sleuthkit_case(order: &str) {
    t::require_tools(&["fls", "icat", "istat"]);
    let tree = ffs_tree();
    let dir = t::tempdir();
    let img = dir.path().join("ufs1.img");
    makefs(&img, &tree.root, "version=1,bsize=8192,fsize=1024", order);
    let m = mount_img(&img);
    let ours = image_walk(&m);
    let theirs = tsk_listing(&img);
    let ours_names: Vec<&String> = ours.keys().collect();
    let their_names: Vec<&String> = theirs.keys().collect();
    assert_eq!(ours_names, their_names, "names: ours vs Sleuth Kit");
    for (path, n) in &ours {
        let (kind, ino) = theirs[path];
        assert_eq!(ino, n.ino, "{path}: inode number");
        let want_kind = match n.kind {
            FileType::Regular => 'r',
            FileType::Directory => 'd',
            FileType::Symlink => 'l',
            FileType::CharDevice => 'c',
            FileType::BlockDevice => 'b',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
        };
        assert_eq!(kind, want_kind, "{path}: type");
        if path.starts_with("bigdir/") && n.size == Some(0) {
            continue;
        }
        // istat fails on device inodes after printing their attributes (it takes the device
        // number in di_db[0] for a block address): use what it printed.
        let istat = t::run(t::tool("istat").arg(&img).arg(ino.to_string())).stdout;
        let ids = tsk_field(&istat, "uid / gid:");
        assert_eq!(ids, format!("{} / {}", n.uid, n.gid), "{path}: owner");
        assert_eq!(tsk_field(&istat, "num of links:"), n.nlink.to_string(), "{path}: links");
        if let Some(size) = n.size {
            assert_eq!(tsk_field(&istat, "size:"), size.to_string(), "{path}: size");
        }
        if n.kind == FileType::Regular {
            let data = t::run_ok(t::tool("icat").arg(&img).arg(ino.to_string())).stdout;
            let _ = data; // icat output as text is lossy; hash the raw bytes instead
            let raw = Command::new(t::find_tool("icat").unwrap()).arg(&img).arg(ino.to_string()).output().unwrap();
            assert!(raw.status.success());
            assert_eq!(Some(sha(&raw.stdout)), n.content, "{path}: content (icat)");
        }
    }
}

#[test]
fn sleuthkit_agrees_on_ufs1_le() {
    sleuthkit_case("le");
}

#[test]
fn sleuthkit_agrees_on_ufs1_be() {
    sleuthkit_case("be");
}

// ---------------------------------------------------------------------------------------
// BSD disklabels (fdisk's BSD-label commands) and GPT partitions of the BSD types

/// A 40 MiB disk: MBR slice 1 of type 0xA5 (FreeBSD) at sector 2048, 32 MiB, holding a BSD
/// disklabel made by fdisk with partitions a (sector 2064, 12 MiB) and e (after a, 12 MiB),
/// both 4.2BSD. Returns the byte offsets of a and e.
fn fdisk_bsd_disk(disk: &Path) -> (u64, u64) {
    std::fs::File::create(disk).unwrap().set_len(40 << 20).unwrap();
    let (a, e) = (2064u64, 2064 + 24576 + 16);
    let script = format!(
        "o\nn\np\n1\n2048\n+32M\nt\na5\nb\ny\nn\na\n{a}\n+12M\nn\ne\n{e}\n+12M\nt\na\n7\nt\ne\n7\nw\nr\nw\n"
    );
    let mut c = Command::new(t::find_tool("fdisk").expect("fdisk"));
    c.arg(disk).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "fdisk: {}", String::from_utf8_lossy(&out.stdout));
    let list = t::run_ok(t::tool("fdisk").arg("-l").arg(disk)).stdout;
    assert!(list.contains("FreeBSD"), "{list}");
    (a * 512, e * 512)
}

fn dd_into(img: &Path, disk: &Path, at: u64) {
    t::run_ok(t::tool("dd").arg(format!("if={}", img.display())).arg(format!("of={}", disk.display())).args([
        "bs=1M",
        "conv=notrunc",
        "oflag=seek_bytes",
        "status=none",
    ])
    .arg(format!("seek={at}")));
}

/// A small source tree and its makefs image (12 MiB).
fn small_ffs(dir: &Path, label: &str, opts: &str, order: &str) -> (PathBuf, PathBuf) {
    let src = dir.join(format!("src-{label}"));
    t::make_tree(&src, t::TreeSpec::SMALL, label);
    let img = dir.join(format!("{label}.img"));
    let out = t::run(t::tool("makefs").args(["-t", "ffs", "-B", order, "-o", opts, "-s", "12m"]).arg(&img).arg(&src));
    assert!(out.ok(), "makefs: {}", out.stderr);
    (src, img)
}

fn kernel_select(disk: &Path, part: Option<&str>) -> Result<(Arc<Mount>, Option<images::Partition>), String> {
    let k = kernel();
    let dev = images::open_image(disk, vfs_faction::OpenMode::ReadOnly).map_err(|e| e.to_string())?;
    let probe = |d: &dyn vfs_faction::BlockDevice| k.probe(d).map(|(_, t)| t);
    let (dev, p) = images::select(dev, part, &probe).map_err(|e| e.to_string())?;
    let m = k
        .mount(None, MountSource::Block(dev), "disk", &MountOptions { read_only: true, ..Default::default() })
        .map_err(|e| e.to_string())?;
    Ok((m, p))
}

fn marker(m: &Mount) -> Vec<u8> {
    let a = m.namei(&Cred::root(), b"/marker", true).unwrap();
    vfs_read_all(m, a.ino, 4096).unwrap()
}

#[test]
fn fdisk_bsd_label_partitions_by_letter() {
    let dir = t::tempdir();
    let disk = dir.path().join("disk.img");
    let (a, e) = fdisk_bsd_disk(&disk);
    let (_, img_a) = small_ffs(dir.path(), "part-a", "version=1,bsize=8192,fsize=1024", "le");
    let (src_e, img_e) = small_ffs(dir.path(), "part-e", "version=2,bsize=16384,fsize=2048", "be");
    dd_into(&img_a, &disk, a);
    dd_into(&img_e, &disk, e);

    let dev = images::open_image(&disk, vfs_faction::OpenMode::ReadOnly).unwrap();
    let table = images::read_table(&*dev).unwrap();
    let lettered: Vec<(char, u64)> = table.partitions.iter().filter_map(|p| Some((p.letter?, p.start))).collect();
    assert_eq!(lettered, vec![('a', a), ('e', e)], "{:?}", table.partitions);
    assert!(table.partitions.iter().any(|p| p.index == 1 && p.holds_label()));

    let (m, p) = kernel_select(&disk, Some("e")).unwrap();
    assert_eq!(p.unwrap().letter, Some('e'));
    assert_eq!(marker(&m), b"tree part-e\n");
    compare(&src_e, &m, false);
    let (m, _) = kernel_select(&disk, Some("1a")).unwrap();
    assert_eq!(marker(&m), b"tree part-a\n");
    // Two file systems: probing must ask which one.
    let err = kernel_select(&disk, None).err().unwrap();
    assert!(err.contains("several partitions") && err.contains("1a") && err.contains("1e"), "{err}");
    // The slice itself holds the label, not a file system.
    let err = kernel_select(&disk, Some("1")).err().unwrap();
    assert!(err.contains("BSD disklabel"), "{err}");
    let err = kernel_select(&disk, Some("f")).err().unwrap();
    assert!(err.contains("no partition f"), "{err}");
    // With only one FFS in the label, it is found without asking.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&vec![0u8; 300 << 10], e).unwrap();
    }
    let (m, p) = kernel_select(&disk, None).unwrap();
    assert_eq!(p.unwrap().letter, Some('a'));
    assert_eq!(marker(&m), b"tree part-a\n");
}

#[test]
fn gpt_freebsd_ufs_and_netbsd_ffs_partitions() {
    let dir = t::tempdir();
    let disk = dir.path().join("gpt.img");
    let (_, img1) = small_ffs(dir.path(), "freebsd-ufs", "version=2,bsize=32768,fsize=4096", "le");
    let (_, img2) = small_ffs(dir.path(), "netbsd-ffs", "version=1,bsize=16384,fsize=2048", "be");
    std::fs::File::create(&disk).unwrap().set_len(40 << 20).unwrap();
    t::run_ok(t::tool("sgdisk").args(["-o", "--new=1:2048:+13M", "--typecode=1:a503", "--new=2:0:+13M", "--typecode=2:a902"]).arg(&disk));
    let dev = images::open_image(&disk, vfs_faction::OpenMode::ReadOnly).unwrap();
    let parts = images::partitions(&*dev).unwrap();
    assert_eq!(parts[0].kind, "FreeBSD UFS");
    assert_eq!(parts[1].kind, "NetBSD FFS");
    dd_into(&img1, &disk, parts[0].start);
    dd_into(&img2, &disk, parts[1].start);
    let (m, _) = kernel_select(&disk, Some("1")).unwrap();
    assert_eq!(marker(&m), b"tree freebsd-ufs\n");
    let (m, _) = kernel_select(&disk, Some("2")).unwrap();
    assert_eq!(marker(&m), b"tree netbsd-ffs\n");
}

// ---------------------------------------------------------------------------------------
// Damaged images: EIO on the damaged object (and a log line), the rest readable

/// Geometry of a little-endian UFS1 image (superblock at 8192), read by the test itself.
struct Geo {
    fsize: u64,
    frag: u64,
    ipg: u64,
    fpg: u64,
    iblkno: u64,
    cblkno: u64,
    inopb: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn geo(img: &[u8]) -> Geo {
    let sb = &img[8192..8192 + 1376];
    assert_eq!(le32(sb, 1372), 0x011954);
    Geo {
        fsize: u64::from(le32(sb, 52)),
        frag: u64::from(le32(sb, 56)),
        ipg: u64::from(le32(sb, 184)),
        fpg: u64::from(le32(sb, 188)),
        iblkno: u64::from(le32(sb, 16)),
        cblkno: u64::from(le32(sb, 12)),
        inopb: u64::from(le32(sb, 120)),
    }
}

impl Geo {
    /// Byte offset of UFS1 inode `ino`.
    fn inode(&self, ino: u64) -> usize {
        let cg = ino / self.ipg;
        let i = ino % self.ipg;
        ((cg * self.fpg + self.iblkno + (i / self.inopb) * self.frag) * self.fsize + (i % self.inopb) * 128) as usize
    }
}

fn put32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn damaged_images_give_eio_and_the_rest_stays_readable() {
    let tree = ffs_tree();
    let dir = t::tempdir();
    let img_path = dir.path().join("bad.img");
    makefs(&img_path, &tree.root, "version=1,bsize=8192,fsize=1024", "le");
    let orig = std::fs::read(&img_path).unwrap();
    let g = geo(&orig);
    let m = mount_bytes(orig.clone()).unwrap();
    let c = Cred::root();
    let ino_of = |p: &str| m.namei(&c, p.as_bytes(), false).unwrap().ino.0;
    let hello = ino_of("/files/hello.txt");
    let big = ino_of("/files/b1k-double-indirect-big");
    let deep = ino_of("/deep/d1");
    let late = image_walk(&m).into_iter().filter(|(p, _)| p.starts_with("bigdir/")).map(|(_, n)| n.ino).max().unwrap();
    let late_path = format!("/bigdir/{}", {
        let w = image_walk(&m);
        w.into_iter().find(|(_, n)| n.ino == late).unwrap().0.trim_start_matches("bigdir/").to_string()
    });
    let check_rest = |m: &Mount| {
        let a = m.namei(&c, b"/files/hello.txt", true).unwrap();
        assert_eq!(vfs_read_all(m, a.ino, 4096).unwrap(), b"hello, world\n");
        let a = m.namei(&c, b"/marker", true).unwrap();
        assert_eq!(vfs_read_all(m, a.ino, 4096).unwrap(), b"tree ffs\n");
    };

    // A block pointer beyond the end of the file system.
    let mut img = orig.clone();
    put32(&mut img, g.inode(big) + 40 + 4 * 3, 0x7fff_fff0);
    let m = mount_bytes(img).unwrap();
    assert_eq!(vfs_read_all(&m, Ino(big), 65536).err(), Some(Errno::EIO));
    check_rest(&m);

    // An indirect block that points at itself.
    let mut img = orig.clone();
    let ib0 = le32(&img, g.inode(big) + 88);
    assert_ne!(ib0, 0);
    put32(&mut img, (u64::from(ib0) * g.fsize) as usize, ib0);
    let m = mount_bytes(img).unwrap();
    assert_eq!(vfs_read_all(&m, Ino(big), 65536).err(), Some(Errno::EIO));
    check_rest(&m);

    // A directory record whose length runs past its 512-byte chunk.
    let mut img = orig.clone();
    let d0 = u64::from(le32(&img, g.inode(deep) + 40));
    let chunk = (d0 * g.fsize) as usize;
    img[chunk + 12 + 4..chunk + 12 + 6].copy_from_slice(&1000u16.to_le_bytes());
    let m = mount_bytes(img).unwrap();
    assert_eq!(vfs_list_dir(&m, Ino(deep)).err(), Some(Errno::EIO));
    assert_eq!(m.lookup(&c, Ino(deep), b"d2").err(), Some(Errno::EIO));
    check_rest(&m);

    // A cylinder group with a bad magic number: its inodes fail, the others do not.
    let mut img = orig.clone();
    let cg = late / g.ipg;
    put32(&mut img, ((cg * g.fpg + g.cblkno) * g.fsize) as usize + 4, 0xdead);
    if cg == 0 {
        // Everything lives in group 0, the root too: the mount fails cleanly.
        assert!(mount_bytes(img).is_err());
    } else {
        let m = mount_bytes(img).unwrap();
        assert_eq!(m.namei(&c, late_path.as_bytes(), false).err(), Some(Errno::EIO));
        check_rest(&m);
    }

    // An inode whose size is beyond what its block map can hold.
    let mut img = orig.clone();
    img[g.inode(hello) + 8..g.inode(hello) + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let m = mount_bytes(img).unwrap();
    assert_eq!(m.namei(&c, b"/files/hello.txt", false).err(), Some(Errno::EIO));

    // A zeroed superblock, a truncated image, random bytes: mount errors, never a panic.
    let mut img = orig.clone();
    img[8192..8192 + 1376].fill(0);
    assert!(mount_bytes(img).is_err());
    let mut img = orig.clone();
    put32(&mut img, 8192 + 48, 3000); // fs_bsize not a power of two
    let e = mount_bytes(img).err().unwrap();
    assert!(e.message.contains("block size"), "{e}");
    let e = mount_bytes(orig[..orig.len() / 2].to_vec()).err().unwrap();
    assert!(e.message.contains("truncated"), "{e}");
    let mut rng = t::Rng::new(5);
    for _ in 0..20 {
        let mut img = orig.clone();
        // Random damage in the first groups' metadata; whatever mounts must not panic.
        for _ in 0..200 {
            let at = 8192 + rng.below(400_000) as usize;
            img[at] = rng.next_u64() as u8;
        }
        if let Ok(m) = mount_bytes(img) {
            fn walk(m: &Mount, dir: Ino, depth: u32) {
                if depth > 12 {
                    return;
                }
                let Ok(entries) = vfs_list_dir(m, dir) else { return };
                for (name, ino, kind) in entries {
                    if name == b"." || name == b".." {
                        continue;
                    }
                    if kind == FileType::Directory {
                        walk(m, ino, depth + 1);
                    } else if kind == FileType::Regular {
                        // A damaged size may make a file terabytes long: read its start.
                        if let Ok(vn) = m.open(&Cred::root(), ino, OpenFlags { read: true, ..Default::default() }) {
                            let mut buf = vec![0u8; 1 << 20];
                            let _ = m.read(&vn, 0, &mut buf);
                            m.release(vn);
                        }
                    } else if kind == FileType::Symlink {
                        let _ = m.readlink(ino);
                    }
                }
            }
            walk(&m, m.root(), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Through FUSE, with the real rumpfs-mount

fn fuse_compare_opts() -> t::CompareOpts {
    // makefs keeps whole seconds, no xattrs, and makes no lost+found.
    t::CompareOpts { ns_times: false, xattrs: false, lost_found: false, ..Default::default() }
}

#[test]
fn fuse_mount_of_a_ufs2_big_endian_image() {
    let dir = t::tempdir();
    let (src, img) = small_ffs(dir.path(), "fuse-ufs2", "version=2,bsize=32768,fsize=4096", "be");
    let m = t::Mounted::with(&img, t::MountSpec::opts("ro"));
    assert_eq!(m.entry().map(|e| e.fstype).as_deref(), Some("fuse.rumpfs-mount"));
    m.deadline(std::time::Duration::from_secs(120), || t::assert_trees_equal(&src, &m.mnt, &fuse_compare_opts()));
    m.unmount();
}

#[test]
fn fuse_mount_of_a_disklabel_partition_by_letter() {
    let dir = t::tempdir();
    let disk = dir.path().join("disk.img");
    let (a, e) = fdisk_bsd_disk(&disk);
    // UFS1 in a, UFS2 in e (the tree has times past 2038, which UFS1 cannot hold).
    let (_, img_a) = small_ffs(dir.path(), "fuse-a", "version=1,bsize=8192,fsize=1024", "le");
    let (src_e, img_e) = small_ffs(dir.path(), "fuse-e", "version=2,bsize=16384,fsize=2048", "le");
    dd_into(&img_a, &disk, a);
    dd_into(&img_e, &disk, e);
    let m = t::Mounted::with(&disk, t::MountSpec::opts("ro,partition=e"));
    m.deadline(std::time::Duration::from_secs(120), || t::assert_trees_equal(&src_e, &m.mnt, &fuse_compare_opts()));
    m.unmount();
}
