//! The ffs driver (UFS1 and UFS2, both byte orders) driven through the kernel, and through
//! the real `rumpfs-mount` binary.
//!
//! Oracles: the source trees that Debian's `makefs -t ffs` built the images from (bytes,
//! modes, owners, times, links, symlink targets, device numbers), the manifests of the real
//! FreeBSD images in ../shared/test-images, and Sleuth Kit (`fls`, `istat`, `icat`) as an
//! independent reader of UFS1 images. Damaged images must give mount errors or EIO on the
//! damaged file, never a panic or a hang, and the rest of the tree stays readable.

use rumpfs_tests as t;
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
    BootConfig, Cred, Errno, Faction, FileType, Ino, KResult, Kernel, Mount, MountError, MountOptions, MountSource,
    OpenFlags,
};

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

fn read_all(m: &Mount, ino: Ino, chunk: usize) -> KResult<Vec<u8>> {
    let vn = m.open(&Cred::root(), ino, OpenFlags { read: true, ..Default::default() })?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    let r = loop {
        match m.read(&vn, out.len() as u64, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    m.release(vn);
    r.map(|()| out)
}

/// All entries of a directory, read a few at a time through cookies.
fn list_dir(m: &Mount, ino: Ino) -> KResult<Vec<(Vec<u8>, Ino, FileType)>> {
    let vn = m.opendir(&Cred::root(), ino)?;
    let mut out = Vec::new();
    let mut cookie = 0;
    let r = loop {
        let mut got = 0;
        let r = m.readdir(&vn, cookie, &mut |e| {
            if got == 7 {
                return false;
            }
            got += 1;
            out.push((e.name.to_vec(), e.ino, e.kind));
            cookie = e.next;
            true
        });
        if let Err(e) = r {
            break Err(e);
        }
        if got < 7 {
            break Ok(());
        }
    };
    m.release(vn);
    r.map(|()| out)
}

/// Lines in the format of ../shared/test-images/manifests, from a walk through the kernel.
fn manifest(m: &Mount) -> Vec<String> {
    fn walk(m: &Mount, dir: Ino, prefix: &str, out: &mut Vec<String>) {
        for (name, ino, kind) in list_dir(m, dir).unwrap() {
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
                    let data = read_all(m, ino, 64 << 10).unwrap();
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
    assert_eq!(read_all(&m, file1.ino, 4096).unwrap(), b"This is a simple file.\n");
    let file2 = m.namei(&c, b"/dir1/dir2/dir3/file2", true).unwrap();
    assert_eq!(read_all(&m, file2.ino, 4096).unwrap(), b"Hello World\n");
    let file3 = m.namei(&c, b"/file3", true).unwrap();
    let want: Vec<u8> = (0..65536u32).flat_map(|i| format!("{i:015x}\n").into_bytes()).collect();
    assert_eq!(file3.size, 1 << 20);
    assert!(read_all(&m, file3.ino, 100_000).unwrap() == want, "file3 content");
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
        let entries = list_dir(m, dir).unwrap();
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
            let content = (kind == FileType::Regular).then(|| sha(&read_all(m, ino, 200 << 10).unwrap()));
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

/// A source tree for makefs: every kind of file, boundary sizes, a big directory.
fn ffs_tree() -> &'static t::SourceTree {
    static TREE: std::sync::OnceLock<t::SourceTree> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let root = t::shared_subdir("ffs-src").join("tree");
        let spec = t::TreeSpec { seed: 0xff5, full: true, big_dir_entries: 3000, sparse_5g: false, wide_times: true };
        let tree = t::make_tree(&root, spec, "ffs");
        // Sizes at the FFS block-map boundaries for 4k..64k blocks (direct, single, double).
        let mut rng = t::Rng::new(99);
        let ffs = root.join("ffs-sizes");
        std::fs::create_dir(&ffs).unwrap();
        for (name, size) in [
            ("frag-tail-1", 4096 * 3 + 1),
            ("b4k-direct-end", 12 * 4096),
            ("b4k-single", 12 * 4096 + 1),
            ("b4k-double", (12 + 512) * 4096 + 3),
            ("b8k-double", (12 + 1024) * 8192 + 100),
            ("b64k-direct-plus", 12 * 65536 + 77),
        ] {
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            std::fs::write(ffs.join(name), data).unwrap();
        }
        t::set_mtime(&ffs, 1_200_000_000, 0);
        tree
    })
}

fn makefs(img: &Path, src: &Path, opts: &str, order: &str) {
    let out = t::run(t::tool("makefs").args(["-t", "ffs", "-B", order, "-o", opts, "-s", "64m", "-f", "20%"]).arg(img).arg(src));
    assert!(out.ok(), "makefs -o {opts}: {}\n{}", out.stdout, out.stderr);
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
