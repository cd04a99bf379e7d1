//! One test body, every file system (NetBSD's `ATF_TC_FSAPPLY`, tests/fs/common/h_fsmacros.h).
//!
//! The table is the [`Fs`] rows named in the `fsapply!` invocation: where each file system
//! lives ([`Store`]: a disk image made from the seed tree, or the export of a real NFS server
//! seeded with it), which checker judges it, and what the file system can and cannot keep (its
//! capabilities). Every body named there runs on every row: a fresh image (or export) mounted
//! read-write through FUSE with the real `rumpfs-mount`, the body, an unmount, and then the
//! checker must call it clean: `e2fsck -fn` for ext2/ext4, `rumpfs-fsck -fn` for FFS, and for
//! NFS an independent oracle, the host itself: the tree the body left, as the mount showed it
//! just before the unmount (names, types, modes, owners, sizes, link counts, mtimes, symlink
//! targets, sha256 of every file, which names are hard links of each other), must be exactly
//! what `std::fs` on the server's export directory reads after the unmount, so every byte
//! really reached the server. (Reading every file moves atimes on the server; the checker puts
//! them back through the mount, and reads the export with O_NOATIME.) A body that needs to see
//! what reached the disk (or the server) remounts ([`Env::remount`]), which runs the checker
//! in between too.
//!
//! Where file systems legitimately differ (FFS and NFSv3 keep no extended attributes, ext2
//! with 1 KiB blocks keeps no symlink longer than 1023 bytes, only mkfs makes a lost+found,
//! ganesha does not set a symlink's times) the difference is a column of the table and the body asserts the documented behaviour for
//! that row: nothing is skipped. A body that fails on a row because of a bug in our driver is
//! `#[ignore]`d on that row only, naming the bug ([`known_bug!`]).
//!
//! The NFS row runs against nfs-ganesha on 127.0.0.1:2049 (tests/nfs_server.rs), one server
//! per machine: each NFS test holds the server's lock (a mutex and an flock shared with
//! tests/nfs.rs and bench/nfs.sh) from before its export is made until after its checker ran,
//! so NFS tests of parallel threads simply wait their turn. The body's time limit starts only
//! once the server is up and mounted, so waiting for the lock never counts against it.
//!
//! Test names are `BODY::FS`, so `cargo test --test generic ffs_ufs2` runs every body on one
//! file system and `cargo test --test generic rename::` one body on all.

#[path = "nfs_server.rs"]
#[allow(dead_code)]
mod nfs_server;

use nfs_server::NfsServer;
use rumpfs_tests::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The table

/// Which checker judges an image after every body.
#[derive(Clone, Copy, Debug)]
enum Checker {
    /// The real `e2fsck -fn`.
    E2fsck,
    /// Our `rumpfs-fsck -fn` (next to the `rumpfs-mount` under test).
    RumpfsFsck,
}

/// Where a row's file system lives.
#[derive(Clone, Copy, Debug)]
enum Store {
    /// A disk image that `make` builds at `img` from the tree at `src`; `checker` judges it.
    Image { make: fn(img: &Path, src: &Path), checker: Checker },
    /// The export directory of a real nfs-ganesha ([`NfsServer`]), seeded with a copy of the
    /// tree; judged by comparing the mount's last view with the export as the host reads it.
    Nfs,
}

/// One file system setup and what it can keep.
#[derive(Clone, Copy, Debug)]
struct Fs {
    name: &'static str,
    store: Store,
    /// `user.*` extended attributes are stored; if not, setting one fails with EOPNOTSUPP,
    /// listing shows none and reading one gives ENODATA.
    xattrs: bool,
    /// Times keep nanoseconds (else they read back with 0 ns).
    ns_times: bool,
    /// The longest symlink target; one byte more is ENAMETOOLONG.
    symlink_max: usize,
    /// The image's root holds a lost+found made by its mkfs.
    lost_found: bool,
    /// utimensat(2) on a symlink sets the symlink's own times; if not, it succeeds and leaves
    /// them as they were.
    symlink_times: bool,
}

fn make_ext2_1k(img: &Path, src: &Path) {
    mke2fs(img, FsKind::Ext2_1k.mkfs_args(), Some(src), "48M");
}

fn make_ext4(img: &Path, src: &Path) {
    // Explicit block and inode size: mke2fs's "small" type would pick 1 KiB blocks and 128-byte
    // inodes for an image this size.
    mke2fs(img, &["-t", "ext4", "-b", "4096", "-I", "256"], Some(src), "96M");
}

fn make_ufs1_le(img: &Path, src: &Path) {
    makefs_sized(img, src, "version=1,bsize=8192,fsize=1024", "le", "64m", "4000");
}

fn make_ufs2_be(img: &Path, src: &Path) {
    makefs_sized(img, src, "version=2,bsize=32768,fsize=4096", "be", "64m", "4000");
}

const EXT2_1K: Fs = Fs {
    name: "ext2-1k",
    store: Store::Image { make: make_ext2_1k, checker: Checker::E2fsck },
    xattrs: true,
    ns_times: true,
    symlink_max: 1023,
    lost_found: true,
    symlink_times: true,
};
const EXT4: Fs = Fs {
    name: "ext4",
    store: Store::Image { make: make_ext4, checker: Checker::E2fsck },
    xattrs: true,
    ns_times: true,
    symlink_max: 4095,
    lost_found: true,
    symlink_times: true,
};
const FFS_UFS1_LE: Fs = Fs {
    name: "ffs-ufs1-le-8k",
    store: Store::Image { make: make_ufs1_le, checker: Checker::RumpfsFsck },
    xattrs: false,
    ns_times: true,
    symlink_max: 4095,
    lost_found: false,
    symlink_times: true,
};
const FFS_UFS2_BE: Fs = Fs {
    name: "ffs-ufs2-be-32k",
    store: Store::Image { make: make_ufs2_be, checker: Checker::RumpfsFsck },
    xattrs: false,
    ns_times: true,
    symlink_max: 4095,
    lost_found: false,
    symlink_times: true,
};
/// NFSv3 against ganesha's VFS FSAL: NFSv3 has no extended attributes; nfstime3 carries
/// nanoseconds; the server's file system (the host's) keeps symlinks of up to 4095 bytes
/// (PATH_MAX less the NUL, which is also what symlink(2) lets through); the export starts
/// without a lost+found; and ganesha's VFS FSAL answers a SETATTR of times on a symlink with
/// NFS3_OK without setting them ("Setting time on symlinks is illegal", FSAL_VFS/file.c), so
/// a symlink keeps the times the server gave it.
const NFS3_GANESHA: Fs = Fs {
    name: "nfs3-ganesha",
    store: Store::Nfs,
    xattrs: false,
    ns_times: true,
    symlink_max: 4095,
    lost_found: false,
    symlink_times: false,
};

// ---------------------------------------------------------------------------------------------
// Running a body on one file system

/// A fresh image of one file system (or a fresh NFS export), mounted read-write.
struct Env {
    fs: Fs,
    /// What `rumpfs-mount` mounts: the image, or `127.0.0.1:/export/path`.
    source: PathBuf,
    /// Declared before `server`: on a panic the mount goes before the server does.
    mounted: Option<Mounted>,
    /// The NFS server of an NFS row, running (and holding the one-server lock) for the test's
    /// whole life.
    server: Option<NfsServer>,
    /// NFS: the tree as the mount showed it just before the last unmount, for the checker.
    last_view: Option<Snapshot>,
    /// The FUSE connection of the current mount, for the watchdog.
    conn: Arc<AtomicU32>,
    _dir: TempDir,
}

/// The longest a body may take on one file system.
const BODY_LIMIT: Duration = Duration::from_secs(120);

impl Env {
    fn root(&self) -> &Path {
        &self.mounted.as_ref().expect("mounted").mnt
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn mount(&mut self) {
        self.mounted = Some(Mounted::with(&self.source, MountSpec::opts("rw")));
        self.publish_conn();
    }

    /// Unmounts; for NFS, first records what the mount shows, for the checker.
    fn unmount(&mut self) {
        if self.server.is_some() {
            self.last_view = Some(snapshot(self.root(), Side::Mount));
        }
        self.mounted.take().expect("mounted").unmount();
    }

    /// Unmounts, runs the checker, mounts read-write again: what the body sees next came from
    /// the disk (or the server).
    fn remount(&mut self) {
        self.unmount();
        self.check("at a remount");
        self.mount();
    }

    fn publish_conn(&self) {
        let c = self.mounted.as_ref().and_then(|m| m.conn).unwrap_or(u32::MAX);
        self.conn.store(c, Ordering::SeqCst);
    }

    fn check(&self, when: &str) {
        let checker = match self.fs.store {
            Store::Image { checker, .. } => checker,
            Store::Nfs => return self.check_export(when),
        };
        let out = match checker {
            Checker::E2fsck => run(tool("e2fsck").arg("-fn").arg(&self.source)),
            Checker::RumpfsFsck => run(std::process::Command::new(fsck_bin()).arg("-fn").arg(&self.source)),
        };
        assert!(
            out.code() == Some(0),
            "{} {when}: {:?} -fn {} exited {:?}:\n{}\n{}",
            self.fs.name,
            checker,
            self.source.display(),
            out.code(),
            out.stdout,
            out.stderr
        );
    }

    /// The NFS checker: the export directory, read by the host after the unmount, is exactly
    /// what the mount showed before it.
    fn check_export(&self, when: &str) {
        let Some(seen) = &self.last_view else {
            return; // as made: nothing went through the mount yet
        };
        let srv = self.server.as_ref().expect("the NFS row's server");
        let on_server = snapshot(srv.export_dir(), Side::Host);
        let diffs = seen.diff(&on_server);
        assert!(
            diffs.is_empty(),
            "{} {when}: the export {} as the host reads it differs from what the mount showed before the unmount:\n  {}",
            self.fs.name,
            srv.export_dir().display(),
            diffs.join("\n  ")
        );
    }
}

/// One entry of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    /// Files and symlinks only (a directory's size is the server's business).
    size: Option<u64>,
    nlink: u64,
    mtime: (i64, i64),
    /// sha256 of a file, the target of a symlink.
    content: Option<String>,
}

/// A tree read through `lstat`, `readlink` and `read`: every entry's [`Node`] by relative path
/// (the root is ""), and the sets of paths that share an inode (hard links).
struct Snapshot {
    nodes: BTreeMap<PathBuf, Node>,
    links: std::collections::BTreeSet<std::collections::BTreeSet<PathBuf>>,
}

/// Which side a [`snapshot`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Through the mount, in the middle of a body: every file is read, and a read moves the
    /// atime on the server (its relatime rules), which the body may still look at; so each
    /// file's atime is put back as it was (its ctime moves).
    Mount,
    /// The export directory, straight from the host: files are read with O_NOATIME.
    Host,
}

/// sha256 of a file read with O_NOATIME (the caller owns it or is root).
fn sha256_noatime(p: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(hex(&h.finalize()))
}

fn snapshot(root: &Path, side: Side) -> Snapshot {
    fn walk(
        root: &Path,
        side: Side,
        rel: &Path,
        nodes: &mut BTreeMap<PathBuf, Node>,
        inodes: &mut BTreeMap<u64, std::collections::BTreeSet<PathBuf>>,
    ) {
        let p = root.join(rel);
        let md = lstat(&p);
        let t = md.file_type();
        let kind = if t.is_dir() {
            "dir"
        } else if t.is_file() {
            "file"
        } else if t.is_symlink() {
            "symlink"
        } else {
            "other"
        };
        let content = match kind {
            "file" => {
                let h = sha256_noatime(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                if side == Side::Mount {
                    let ts = [
                        libc::timespec { tv_sec: md.atime(), tv_nsec: md.atime_nsec() },
                        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
                    ];
                    // SAFETY: a valid path and a two-element timespec array.
                    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
                    assert_eq!(rc, 0, "putting back the atime of {}: {}", p.display(), io::Error::last_os_error());
                }
                Some(h)
            }
            "symlink" => Some(fs::read_link(&p).unwrap_or_else(|e| panic!("readlink {}: {e}", p.display())).to_string_lossy().into_owned()),
            _ => None,
        };
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            owner: (md.uid(), md.gid()),
            size: (kind != "dir").then_some(md.len()),
            nlink: md.nlink(),
            mtime: (md.mtime(), md.mtime_nsec()),
            content,
        };
        nodes.insert(rel.to_path_buf(), node);
        if kind == "dir" {
            let mut names: Vec<_> = fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())).map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                walk(root, side, &rel.join(n), nodes, inodes);
            }
        } else {
            inodes.entry(md.ino()).or_default().insert(rel.to_path_buf());
        }
    }
    let (mut nodes, mut inodes) = (BTreeMap::new(), BTreeMap::new());
    walk(root, side, Path::new(""), &mut nodes, &mut inodes);
    Snapshot { nodes, links: inodes.into_values().filter(|g| g.len() > 1).collect() }
}

impl Snapshot {
    /// Every difference between `self` (the mount's view) and `other` (the host's).
    fn diff(&self, other: &Snapshot) -> Vec<String> {
        let mut d = Vec::new();
        for (p, a) in &self.nodes {
            match other.nodes.get(p) {
                None => d.push(format!("/{}: seen through the mount, missing on the server", p.display())),
                Some(b) if a != b => d.push(format!("/{}: mount {a:?}, server {b:?}", p.display())),
                Some(_) => {}
            }
        }
        for p in other.nodes.keys().filter(|p| !self.nodes.contains_key(*p)) {
            d.push(format!("/{}: on the server, never seen through the mount", p.display()));
        }
        for g in self.links.difference(&other.links) {
            d.push(format!("hard links through the mount, not on the server: {g:?}"));
        }
        for g in other.links.difference(&self.links) {
            d.push(format!("hard links on the server, not through the mount: {g:?}"));
        }
        d
    }
}

/// The seed every image starts with (for the `seeded` body; the others work in their own
/// directories).
fn seed_tree(src: &Path) {
    let s = src.join("seed");
    fs::create_dir_all(s.join("sub")).unwrap();
    fs::write(s.join("small"), b"hello, seed\n").unwrap();
    fs::write(s.join("sub/blocks"), seed_bytes()).unwrap();
    symlink("sub/blocks", s.join("link")).unwrap();
    fs::hard_link(s.join("small"), s.join("small-again")).unwrap();
}

fn seed_bytes() -> Vec<u8> {
    let mut v = vec![0u8; 3 * 32768 + 4097];
    Rng::new(5).fill(&mut v);
    v
}

/// `ATF_TC_FSAPPLY`: make the image (or start the server and seed its export), mount it, run
/// the body, unmount, check.
fn apply(fs: Fs, body: fn(&mut Env)) {
    let dir = tempdir();
    let src = dir.path().join("src");
    seed_tree(&src);
    let (source, server) = match fs.store {
        Store::Image { make, .. } => {
            require_tools(&["mke2fs", "e2fsck", "makefs", "fusermount3"]);
            let img = dir.path().join(format!("{}.img", fs.name));
            make(&img, &src);
            (img, None)
        }
        Store::Nfs => {
            // Blocks until no other server (of this process, another test binary or the
            // benchmark) runs; held until `env` is dropped, after the checker.
            let srv = NfsServer::start();
            // cp -a keeps modes, owners, times, the symlink and the hard link.
            run_ok(tool("cp").arg("-a").arg(src.join("seed")).arg(srv.export_dir()));
            (PathBuf::from(srv.source()), Some(srv))
        }
    };
    let mut env = Env { fs, source, mounted: None, server, last_view: None, conn: Arc::new(AtomicU32::new(u32::MAX)), _dir: dir };
    env.check("as made");
    env.mount();
    // A hang is a failure, not a stuck run: past the limit the watchdog aborts the FUSE
    // connection of the current mount, so every pending request fails.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let conn = env.conn.clone();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(BODY_LIMIT) {
            let c = conn.load(Ordering::SeqCst);
            let _ = fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
            return true;
        }
        false
    });
    body(&mut env);
    // The last look through the mount (NFS) is part of the body's time.
    env.unmount();
    let _ = tx.send(());
    assert!(!watchdog.join().unwrap(), "{}: the body hung for {BODY_LIMIT:?}; aborted the FUSE connection", fs.name);
    env.check("after the body");
}

/// One module per body, one test per file system in it: `BODY::FS`.
macro_rules! fsapply {
    (fs: $fss:tt; bodies: [$($body:ident),* $(,)?]) => {
        $(fsapply!(@one $body $fss);)*
    };
    (@one $body:ident [$($name:ident => $fs:ident),* $(,)?]) => {
        mod $body {
            $(
                known_bug! { $body $name
                    #[test]
                    fn $name() {
                        super::apply(super::$fs, super::$body);
                    }
                }
            )*
        }
    };
}

/// `BODY FS`: a body that fails on one row because of a bug in our driver (not a capability
/// the row lacks) is ignored there, with the bug, until it is fixed; nothing else is.
macro_rules! known_bug {
    ($body:ident $fs:ident $($test:tt)*) => {
        $($test)*
    };
}

// The table's rows, and the bodies that run on every one of them.
fsapply! {
    fs: [
        ext2_1k => EXT2_1K,
        ext4 => EXT4,
        ffs_ufs1_le => FFS_UFS1_LE,
        ffs_ufs2_be => FFS_UFS2_BE,
        nfs3_ganesha => NFS3_GANESHA,
    ];
    bodies: [create_write_read, seeded, rename, links, symlinks, dirs, truncate, attrs, names, xattrs, random_mix]
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn errno<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// Panics unless `got == want`, saying where they part (never dumping the bytes).
fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let last = (0..got.len().min(want.len())).rev().find(|&i| got[i] != want[i]);
    let show = |v: &[u8]| format!("{:02x?}", &v[first.min(v.len())..(first + 16).min(v.len())]);
    panic!(
        "{what}: {} bytes, want {}; first difference at byte {first} (got {}, want {}); last differing byte in both: {last:?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: two valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = [libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 }, libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 }];
    // SAFETY: a valid path and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}: {}", p.display(), io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// The bodies

/// Create, write in several patterns (empty, inside one block, across blocks, at offsets,
/// appends), read back before and after a remount.
fn create_write_read(env: &mut Env) {
    fs::create_dir(env.p("cw")).unwrap();
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, len) in [0usize, 1, 511, 4096, 8193, 100_000, 1 << 20].into_iter().enumerate() {
        let name = format!("cw/f{len}");
        let data = pattern(i as u64, len);
        fs::write(env.p(&name), &data).unwrap();
        same_bytes(&fs::read(env.p(&name)).unwrap(), &data, &format!("{}: read back {name}", env.fs.name));
        want.insert(name, data);
    }
    // Writes at offsets (one crossing a block boundary, one far out) and an append.
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(env.p("cw/patched")).unwrap();
    let mut model = vec![0u8; 0];
    for (off, len, seed) in [(0u64, 5000usize, 10u64), (4090, 20, 11), (70_000, 3, 12), (1000, 9000, 13)] {
        let d = pattern(seed, len);
        f.write_all_at(&d, off).unwrap();
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&d);
    }
    drop(f);
    let mut a = OpenOptions::new().append(true).open(env.p("cw/patched")).unwrap();
    a.write_all(b"tail").unwrap();
    model.extend_from_slice(b"tail");
    drop(a);
    same_bytes(&fs::read(env.p("cw/patched")).unwrap(), &model, &format!("{}: patched file", env.fs.name));
    want.insert("cw/patched".into(), model);
    // O_EXCL on an existing file, open of a missing one.
    let r = OpenOptions::new().write(true).create_new(true).open(env.p("cw/f1"));
    assert_eq!(errno(&r), Some(libc::EEXIST), "{}: O_EXCL on an existing file", env.fs.name);
    assert_eq!(errno(&File::open(env.p("cw/missing"))), Some(libc::ENOENT));
    env.remount();
    for (name, data) in &want {
        let got = fs::read(env.p(name)).unwrap();
        assert!(got == *data, "{}: {name} after remount: {} bytes, want {}", env.fs.name, got.len(), data.len());
        assert_eq!(lstat(&env.p(name)).len(), data.len() as u64);
    }
}

/// The tree the image was made from reads back, then changes to it stick.
fn seeded(env: &mut Env) {
    assert_eq!(fs::read(env.p("seed/small")).unwrap(), b"hello, seed\n");
    same_bytes(&fs::read(env.p("seed/sub/blocks")).unwrap(), &seed_bytes(), &format!("{}: seed/sub/blocks", env.fs.name));
    same_bytes(&fs::read(env.p("seed/link")).unwrap(), &seed_bytes(), &format!("{}: through the symlink", env.fs.name));
    assert_eq!(fs::read_link(env.p("seed/link")).unwrap(), Path::new("sub/blocks"));
    assert_eq!(lstat(&env.p("seed/small")).nlink(), 2);
    assert_eq!(lstat(&env.p("seed/small")).ino(), lstat(&env.p("seed/small-again")).ino());
    let mut expect = seed_bytes();
    let patch = pattern(77, 40_000);
    let f = OpenOptions::new().write(true).open(env.p("seed/sub/blocks")).unwrap();
    f.write_all_at(&patch, 30_000).unwrap();
    expect[30_000..70_000].copy_from_slice(&patch);
    drop(f);
    fs::remove_file(env.p("seed/small-again")).unwrap();
    env.remount();
    same_bytes(&fs::read(env.p("seed/sub/blocks")).unwrap(), &expect, &format!("{}: patched seed/sub/blocks", env.fs.name));
    assert_eq!(lstat(&env.p("seed/small")).nlink(), 1);
}

/// rename: within a directory, over a file, across directories (files and directories, with
/// the parents' link counts and `..`), over an empty directory, and every refusal.
fn rename(env: &mut Env) {
    let n = env.fs.name;
    for d in ["r", "r/a", "r/b"] {
        fs::create_dir(env.p(d)).unwrap();
    }
    fs::write(env.p("r/a/x"), b"x").unwrap();
    fs::write(env.p("r/a/y"), b"yy").unwrap();
    // Same directory.
    fs::rename(env.p("r/a/x"), env.p("r/a/x2")).unwrap();
    assert_eq!(names_in(&env.p("r/a")), ["x2", "y"]);
    // Over an existing file: the target now is the source; the old target is gone.
    let ino = lstat(&env.p("r/a/x2")).ino();
    fs::rename(env.p("r/a/x2"), env.p("r/a/y")).unwrap();
    assert_eq!(fs::read(env.p("r/a/y")).unwrap(), b"x");
    assert_eq!(lstat(&env.p("r/a/y")).ino(), ino);
    assert_eq!(names_in(&env.p("r/a")), ["y"]);
    // Across directories.
    fs::rename(env.p("r/a/y"), env.p("r/b/y")).unwrap();
    assert!(names_in(&env.p("r/a")).is_empty());
    // A directory across directories: link counts of both parents and its `..`.
    fs::create_dir(env.p("r/a/sub")).unwrap();
    fs::write(env.p("r/a/sub/inner"), b"inner").unwrap();
    assert_eq!(lstat(&env.p("r/a")).nlink(), 3);
    fs::rename(env.p("r/a/sub"), env.p("r/b/sub")).unwrap();
    assert_eq!(lstat(&env.p("r/a")).nlink(), 2, "{n}: old parent's nlink");
    assert_eq!(lstat(&env.p("r/b")).nlink(), 3, "{n}: new parent's nlink");
    assert_eq!(lstat(&env.p("r/b/sub/..")).ino(), lstat(&env.p("r/b")).ino(), "{n}: `..` of the moved directory");
    // A directory into itself or below itself.
    expect_errno(fs::rename(env.p("r/b"), env.p("r/b/sub/b")), libc::EINVAL, &format!("{n}: rename into a subdirectory of itself"));
    expect_errno(fs::rename(env.p("r/b"), env.p("r/b/b")), libc::EINVAL, &format!("{n}: rename into itself"));
    // Over a non-empty directory, a directory over a file, a file over a directory.
    fs::create_dir(env.p("r/c")).unwrap();
    let r = fs::rename(env.p("r/c"), env.p("r/b"));
    assert!(matches!(errno(&r), Some(libc::ENOTEMPTY | libc::EEXIST)), "{n}: over a non-empty directory: {r:?}");
    expect_errno(fs::rename(env.p("r/c"), env.p("r/b/y")), libc::ENOTDIR, &format!("{n}: a directory over a file"));
    expect_errno(fs::rename(env.p("r/b/y"), env.p("r/c")), libc::EISDIR, &format!("{n}: a file over a directory"));
    // A directory over an empty directory.
    fs::create_dir(env.p("r/empty")).unwrap();
    fs::rename(env.p("r/c"), env.p("r/empty")).unwrap();
    assert_eq!(names_in(&env.p("r")), ["a", "b", "empty"]);
    assert_eq!(lstat(&env.p("r")).nlink(), 5);
    // RENAME_NOREPLACE refuses an existing target; onto itself is a no-op.
    fs::write(env.p("r/a/z"), b"z").unwrap();
    expect_errno(renameat2(&env.p("r/a/z"), &env.p("r/b/y"), libc::RENAME_NOREPLACE), libc::EEXIST, &format!("{n}: RENAME_NOREPLACE"));
    renameat2(&env.p("r/a/z"), &env.p("r/a/z2"), libc::RENAME_NOREPLACE).unwrap();
    fs::rename(env.p("r/a/z2"), env.p("r/a/z2")).unwrap();
    expect_errno(fs::rename(env.p("r/a/missing"), env.p("r/a/q")), libc::ENOENT, &format!("{n}: a missing source"));
    // Over a target that is still open: the open file keeps its bytes until it is closed, and
    // nothing of it stays behind.
    fs::write(env.p("r/a/old"), pattern(7, 100_000)).unwrap();
    fs::write(env.p("r/a/new"), b"new").unwrap();
    {
        let mut held = File::open(env.p("r/a/old")).unwrap();
        fs::rename(env.p("r/a/new"), env.p("r/a/old")).unwrap();
        let mut got = Vec::new();
        held.read_to_end(&mut got).unwrap();
        assert!(got == pattern(7, 100_000), "{n}: reading a file replaced by rename while open");
    }
    assert_eq!(fs::read(env.p("r/a/old")).unwrap(), b"new");
    let t0 = std::time::Instant::now();
    while names_in(&env.p("r/a")) != ["old", "z2"] && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(names_in(&env.p("r/a")), ["old", "z2"], "{n}: names left after the replaced file was closed");
    fs::remove_file(env.p("r/a/old")).unwrap();
    env.remount();
    assert_eq!(names_in(&env.p("r/a")), ["z2"]);
    assert_eq!(names_in(&env.p("r/b")), ["sub", "y"]);
    assert_eq!(fs::read(env.p("r/b/sub/inner")).unwrap(), b"inner");
    assert_eq!(lstat(&env.p("r/b")).nlink(), 3);
    assert_eq!(lstat(&env.p("r/a")).nlink(), 2);
}

/// Hard links and link counts; unlink of an open file; directory link counts.
fn links(env: &mut Env) {
    let n = env.fs.name;
    fs::create_dir(env.p("l")).unwrap();
    fs::write(env.p("l/f"), b"linked").unwrap();
    fs::hard_link(env.p("l/f"), env.p("l/g")).unwrap();
    fs::create_dir(env.p("l/d")).unwrap();
    fs::hard_link(env.p("l/f"), env.p("l/d/h")).unwrap();
    assert_eq!(lstat(&env.p("l/f")).nlink(), 3, "{n}");
    assert_eq!(lstat(&env.p("l/g")).ino(), lstat(&env.p("l/f")).ino());
    expect_errno(fs::hard_link(env.p("l/f"), env.p("l/g")), libc::EEXIST, &format!("{n}: link over an existing name"));
    expect_errno(fs::hard_link(env.p("l/d"), env.p("l/dlink")), libc::EPERM, &format!("{n}: link to a directory"));
    fs::remove_file(env.p("l/f")).unwrap();
    assert_eq!(lstat(&env.p("l/g")).nlink(), 2);
    assert_eq!(fs::read(env.p("l/d/h")).unwrap(), b"linked");
    // An open file outlives its last name.
    let data = pattern(3, 200_000);
    fs::write(env.p("l/open"), &data).unwrap();
    let mut fh = File::open(env.p("l/open")).unwrap();
    fs::remove_file(env.p("l/open")).unwrap();
    let mut got = Vec::new();
    fh.read_to_end(&mut got).unwrap();
    assert!(got == data, "{n}: reading an unlinked open file");
    drop(fh);
    // Once closed, nothing of it stays behind (NFS keeps it under a hidden name while open).
    let t0 = std::time::Instant::now();
    while names_in(&env.p("l")) != ["d", "g"] && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(names_in(&env.p("l")), ["d", "g"], "{n}: names left after the unlinked file was closed");
    // Directories: 2 + subdirectories.
    assert_eq!(lstat(&env.p("l")).nlink(), 3);
    for i in 0..5 {
        fs::create_dir(env.p(&format!("l/d/s{i}"))).unwrap();
    }
    assert_eq!(lstat(&env.p("l/d")).nlink(), 7);
    fs::remove_dir(env.p("l/d/s0")).unwrap();
    assert_eq!(lstat(&env.p("l/d")).nlink(), 6);
    env.remount();
    assert_eq!(lstat(&env.p("l/g")).nlink(), 2);
    assert_eq!(lstat(&env.p("l/d")).nlink(), 6);
    assert_eq!(names_in(&env.p("l")), ["d", "g"]);
    fs::remove_file(env.p("l/g")).unwrap();
    fs::remove_file(env.p("l/d/h")).unwrap();
    assert_eq!(names_in(&env.p("l/d")), ["s1", "s2", "s3", "s4"]);
}

/// Symlinks around the inline limits (60 bytes in ext2 and UFS1 inodes, 120 in UFS2), long
/// ones, the longest the file system keeps and one byte more.
fn symlinks(env: &mut Env) {
    let n = env.fs.name;
    fs::create_dir(env.p("s")).unwrap();
    fs::write(env.p("s/target"), b"target").unwrap();
    let lens = [1usize, 59, 60, 61, 119, 120, 121, 1000, env.fs.symlink_max];
    let target = |len: usize| -> String { (0..len).map(|i| if i % 50 == 49 { '/' } else { (b'a' + (i % 26) as u8) as char }).collect() };
    for len in lens {
        symlink(target(len), env.p(&format!("s/l{len}"))).unwrap_or_else(|e| panic!("{n}: symlink of {len} bytes: {e}"));
    }
    let too_long = env.fs.symlink_max + 1;
    expect_errno(symlink(target(too_long), env.p("s/too-long")), libc::ENAMETOOLONG, &format!("{n}: symlink of {too_long} bytes"));
    symlink("target", env.p("s/short")).unwrap();
    symlink("nowhere", env.p("s/dangling")).unwrap();
    assert_eq!(fs::read(env.p("s/short")).unwrap(), b"target");
    assert_eq!(errno(&fs::read(env.p("s/dangling"))), Some(libc::ENOENT));
    let check = |env: &Env| {
        for len in lens {
            let p = env.p(&format!("s/l{len}"));
            let got = fs::read_link(&p).unwrap_or_else(|e| panic!("{n}: readlink of {len} bytes: {e}"));
            assert_eq!(got.as_os_str().as_bytes(), target(len).as_bytes(), "{n}: symlink of {len} bytes");
            let md = lstat(&p);
            assert!(md.file_type().is_symlink());
            assert_eq!(md.len(), len as u64, "{n}: lstat size of a {len}-byte symlink");
        }
        assert_eq!(fs::read_link(env.p("s/short")).unwrap(), Path::new("target"));
    };
    check(env);
    env.remount();
    check(env);
    fs::remove_file(env.p(&format!("s/l{}", env.fs.symlink_max))).unwrap();
    fs::remove_file(env.p("s/l1000")).unwrap();
}

/// mkdir, rmdir, ENOTEMPTY and friends; a directory of several blocks, thinned out.
fn dirs(env: &mut Env) {
    let n = env.fs.name;
    let mut root: Vec<&str> = vec!["seed"];
    if env.fs.lost_found {
        root.insert(0, "lost+found");
    }
    assert_eq!(names_in(env.root()), root, "{n}: the root as made");
    assert_eq!(lstat(env.root()).nlink(), 2 + root.len() as u64, "{n}: the root's nlink");
    fs::create_dir(env.p("d")).unwrap();
    expect_errno(fs::create_dir(env.p("d")), libc::EEXIST, &format!("{n}: mkdir of an existing name"));
    fs::create_dir(env.p("d/sub")).unwrap();
    fs::write(env.p("d/sub/f"), b"f").unwrap();
    expect_errno(fs::remove_dir(env.p("d/sub")), libc::ENOTEMPTY, &format!("{n}: rmdir of a non-empty directory"));
    expect_errno(fs::remove_dir(env.p("d/sub/f")), libc::ENOTDIR, &format!("{n}: rmdir of a file"));
    expect_errno(fs::remove_file(env.p("d/sub")), libc::EISDIR, &format!("{n}: unlink of a directory"));
    expect_errno(fs::create_dir(env.p("d/missing/x")), libc::ENOENT, &format!("{n}: mkdir under a missing directory"));
    expect_errno(fs::create_dir(env.p("d/sub/f/x")), libc::ENOTDIR, &format!("{n}: mkdir under a file"));
    fs::remove_file(env.p("d/sub/f")).unwrap();
    fs::remove_dir(env.p("d/sub")).unwrap();
    // Many entries of varying name lengths: several directory blocks.
    fs::create_dir(env.p("d/big")).unwrap();
    let name = |i: usize| format!("{i:04}-{}", "n".repeat(i % 60));
    let mut want: Vec<String> = Vec::new();
    for i in 0..600 {
        if i % 7 == 0 {
            fs::create_dir(env.p(&format!("d/big/{}", name(i)))).unwrap();
        } else {
            fs::write(env.p(&format!("d/big/{}", name(i))), i.to_string()).unwrap();
        }
        want.push(name(i));
    }
    want.sort();
    assert_eq!(names_in(&env.p("d/big")), want, "{n}: readdir of 600 entries");
    for i in (0..600).step_by(2) {
        let p = env.p(&format!("d/big/{}", name(i)));
        if i % 7 == 0 {
            fs::remove_dir(p).unwrap();
        } else {
            fs::remove_file(p).unwrap();
        }
    }
    let mut want: Vec<String> = (1..600).step_by(2).map(name).collect();
    want.sort();
    assert_eq!(names_in(&env.p("d/big")), want, "{n}: readdir after removing half");
    env.remount();
    assert_eq!(names_in(&env.p("d/big")), want, "{n}: readdir after remount");
    assert_eq!(fs::read_to_string(env.p(&format!("d/big/{}", name(599)))).unwrap(), "599");
    let subdirs = (1..600).step_by(2).filter(|i| i % 7 == 0).count() as u64;
    assert_eq!(lstat(&env.p("d/big")).nlink(), 2 + subdirs);
    // Refill the holes the removals left.
    for i in (0..600).step_by(2) {
        fs::write(env.p(&format!("d/big/{}", name(i))), b"again").unwrap();
    }
    assert_eq!(names_in(&env.p("d/big")).len(), 600);
}

/// truncate up and down: holes read as zeros, stale bytes past a shrink never come back.
fn truncate(env: &mut Env) {
    let n = env.fs.name;
    fs::create_dir(env.p("t")).unwrap();
    let mut model = pattern(21, 70_000);
    fs::write(env.p("t/f"), &model).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(env.p("t/f")).unwrap();
    let check = |f: &File, model: &[u8], what: &str| {
        let mut got = vec![0u8; model.len() + 10];
        let mut at = 0;
        loop {
            let k = f.read_at(&mut got[at..], at as u64).unwrap();
            if k == 0 {
                break;
            }
            at += k;
        }
        got.truncate(at);
        assert_eq!(got.len(), model.len(), "{n}: {what}: length");
        if let Some(i) = (0..model.len()).find(|&i| got[i] != model[i]) {
            panic!("{n}: {what}: byte {i} is {:#x}, want {:#x}", got[i], model[i]);
        }
        assert_eq!(f.metadata().unwrap().len(), model.len() as u64, "{n}: {what}: st_size");
    };
    // Up: a hole.
    f.set_len(5_000_000).unwrap();
    model.resize(5_000_000, 0);
    check(&f, &model, "after truncating up");
    // Down into the middle of a block, then up again: the tail must read as zeros.
    f.set_len(3000).unwrap();
    model.truncate(3000);
    check(&f, &model, "after truncating down");
    f.set_len(100_000).unwrap();
    model.resize(100_000, 0);
    check(&f, &model, "after truncating up again");
    // Data in the middle of a hole.
    let d = pattern(22, 5000);
    f.write_all_at(&d, 2_000_000).unwrap();
    model.resize(2_005_000, 0);
    model[2_000_000..].copy_from_slice(&d);
    check(&f, &model, "after writing into the hole");
    let blocks = f.metadata().unwrap().blocks();
    assert!(blocks * 512 < 1_000_000, "{n}: a sparse 2 MB file uses {} bytes", blocks * 512);
    drop(f);
    // Through truncate(2) on a path, to zero and back.
    fs::write(env.p("t/g"), pattern(23, 50_000)).unwrap();
    File::options().write(true).open(env.p("t/g")).unwrap().set_len(0).unwrap();
    assert_eq!(lstat(&env.p("t/g")).len(), 0);
    assert_eq!(lstat(&env.p("t/g")).blocks(), 0, "{n}: blocks of a file truncated to 0");
    File::options().write(true).open(env.p("t/g")).unwrap().set_len(40_000).unwrap();
    assert_eq!(fs::read(env.p("t/g")).unwrap(), vec![0u8; 40_000]);
    // O_TRUNC.
    fs::write(env.p("t/h"), pattern(24, 9000)).unwrap();
    OpenOptions::new().write(true).truncate(true).open(env.p("t/h")).unwrap().write_all(b"short").unwrap();
    assert_eq!(fs::read(env.p("t/h")).unwrap(), b"short");
    env.remount();
    let f = File::open(env.p("t/f")).unwrap();
    check(&f, &model, "after remount");
    assert_eq!(fs::read(env.p("t/g")).unwrap(), vec![0u8; 40_000]);
    assert_eq!(fs::read(env.p("t/h")).unwrap(), b"short");
}

/// chmod, chown, utimens (nanoseconds where the file system keeps them), ctime moves.
fn attrs(env: &mut Env) {
    let n = env.fs.name;
    fs::create_dir(env.p("a")).unwrap();
    fs::write(env.p("a/f"), b"attrs").unwrap();
    symlink("f", env.p("a/l")).unwrap();
    // A write moves mtime to now (done first: a write clears set-user-ID).
    set_mtime(&env.p("a/f"), 1_000_000_000, 0);
    OpenOptions::new().append(true).open(env.p("a/f")).unwrap().write_all(b"!").unwrap();
    assert!(lstat(&env.p("a/f")).mtime() > 1_000_000_000, "{n}: a write did not move mtime");
    let before = lstat(&env.p("a/f")).ctime();
    lchown(&env.p("a/f"), 1234, 5678);
    lchown(&env.p("a/l"), 4321, 8765);
    lchown(&env.p("a/f"), 1234, u32::MAX); // -1: leave the group
    chmod(&env.p("a/f"), 0o4751);
    chmod(&env.p("a"), 0o1777);
    let mode_of = |p: &Path| lstat(p).permissions().mode() & 0o7777;
    let ns_times = env.fs.ns_times;
    let ns = move |v: i64| if ns_times { v } else { 0 };
    utimens(&env.p("a/f"), (1_000_000_001, 999_999_999), (1_500_000_000, 123_456_789));
    let l_before = lstat(&env.p("a/l"));
    utimens(&env.p("a/l"), (1_100_000_000, 1), (1_200_000_000, 42));
    let l_mtime = if env.fs.symlink_times { (1_200_000_000, ns(42)) } else { (l_before.mtime(), l_before.mtime_nsec()) };
    let check = |env: &Env| {
        let f = lstat(&env.p("a/f"));
        assert_eq!((f.uid(), f.gid()), (1234, 5678), "{n}: owner");
        assert_eq!(mode_of(&env.p("a/f")), 0o4751, "{n}: mode");
        assert_eq!(mode_of(&env.p("a")), 0o1777, "{n}: directory mode");
        assert_eq!((f.mtime(), f.mtime_nsec()), (1_500_000_000, ns(123_456_789)), "{n}: mtime");
        assert_eq!((f.atime(), f.atime_nsec()), (1_000_000_001, ns(999_999_999)), "{n}: atime");
        assert!(f.ctime() >= before, "{n}: ctime went back");
        let l = lstat(&env.p("a/l"));
        assert_eq!((l.uid(), l.gid()), (4321, 8765), "{n}: symlink owner");
        assert_eq!((l.mtime(), l.mtime_nsec()), l_mtime, "{n}: symlink mtime");
    };
    check(env);
    fs::write(env.p("a/f2"), b"x").unwrap();
    fs::remove_file(env.p("a/f2")).unwrap();
    let dm = lstat(&env.p("a"));
    assert!(dm.mtime() >= before, "{n}: directory mtime after create/unlink");
    env.remount();
    check(env);
    // Read last: reading may move atime.
    assert_eq!(fs::read(env.p("a/l")).unwrap(), b"attrs!");
}

/// Names of 255 bytes work; 256 is ENAMETOOLONG everywhere a name is made; odd bytes survive.
fn names(env: &mut Env) {
    let n = env.fs.name;
    fs::create_dir(env.p("n")).unwrap();
    let max = "m".repeat(255);
    let over = "o".repeat(256);
    fs::write(env.p(&format!("n/{max}")), b"255").unwrap();
    fs::create_dir(env.p(&format!("n/d{}", &max[1..]))).unwrap();
    let what = |s: &str| format!("{n}: 256-byte name: {s}");
    expect_errno(File::create(env.p(&format!("n/{over}"))), libc::ENAMETOOLONG, &what("create"));
    expect_errno(fs::create_dir(env.p(&format!("n/{over}"))), libc::ENAMETOOLONG, &what("mkdir"));
    expect_errno(symlink("x", env.p(&format!("n/{over}"))), libc::ENAMETOOLONG, &what("symlink"));
    expect_errno(fs::hard_link(env.p(&format!("n/{max}")), env.p(&format!("n/{over}"))), libc::ENAMETOOLONG, &what("link"));
    expect_errno(fs::rename(env.p(&format!("n/{max}")), env.p(&format!("n/{over}"))), libc::ENAMETOOLONG, &what("rename"));
    let r = fs::symlink_metadata(env.p(&format!("n/{over}")));
    assert!(matches!(errno(&r), Some(libc::ENAMETOOLONG | libc::ENOENT)), "{}: {r:?}", what("lookup"));
    let odd = ["sp ace", "tab\there", "nl\nhere", "ütf-8 ✓", "-dash", ".hidden", "..dots", "\u{7f}del"];
    for o in odd {
        fs::write(env.p(&format!("n/{o}")), o.as_bytes()).unwrap();
    }
    // SAFETY: statvfs on a valid path into a zeroed struct.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(env.root()).as_ptr(), &mut sv) }, 0);
    assert_eq!(sv.f_namemax, 255, "{n}: statvfs f_namemax");
    env.remount();
    assert_eq!(fs::read(env.p(&format!("n/{max}"))).unwrap(), b"255");
    for o in odd {
        assert_eq!(fs::read(env.p(&format!("n/{o}"))).unwrap(), o.as_bytes(), "{n}: name {o:?}");
    }
    assert_eq!(names_in(&env.p("n")).len(), odd.len() + 2);
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let k = CString::new(name).unwrap();
    // SAFETY: valid path, name and buffer.
    let rc = unsafe { libc::lsetxattr(cpath(p).as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let k = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid path, name and buffer of buf.len() bytes.
    let rc = unsafe { libc::lgetxattr(cpath(p).as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let k = CString::new(name).unwrap();
    // SAFETY: valid path and name.
    let rc = unsafe { libc::lremovexattr(cpath(p).as_ptr(), k.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Extended attributes where the file system keeps them; EOPNOTSUPP where it does not.
fn xattrs(env: &mut Env) {
    let n = env.fs.name;
    fs::create_dir(env.p("x")).unwrap();
    fs::write(env.p("x/f"), b"x").unwrap();
    let f = env.p("x/f");
    if !env.fs.xattrs {
        expect_errno(setxattr(&f, "user.a", b"1", 0), libc::EOPNOTSUPP, &format!("{n}: setxattr where unsupported"));
        expect_errno(getxattr(&f, "user.a"), libc::ENODATA, &format!("{n}: getxattr where unsupported"));
        expect_errno(removexattr(&f, "user.a"), libc::EOPNOTSUPP, &format!("{n}: removexattr where unsupported"));
        assert!(rumpfs_tests::xattrs(&f).unwrap().is_empty(), "{n}: listxattr where unsupported");
        return;
    }
    setxattr(&f, "user.a", b"one", 0).unwrap();
    setxattr(&f, "user.big", &pattern(31, 600), 0).unwrap();
    setxattr(env.root().join("x").as_path(), "user.dir", b"d", 0).unwrap();
    expect_errno(setxattr(&f, "user.a", b"again", libc::XATTR_CREATE), libc::EEXIST, &format!("{n}: XATTR_CREATE"));
    expect_errno(setxattr(&f, "user.none", b"v", libc::XATTR_REPLACE), libc::ENODATA, &format!("{n}: XATTR_REPLACE"));
    setxattr(&f, "user.a", b"two", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&f, "user.a").unwrap(), b"two");
    expect_errno(getxattr(&f, "user.none"), libc::ENODATA, &format!("{n}: getxattr of a missing name"));
    env.remount();
    let f = env.p("x/f");
    let all = rumpfs_tests::xattrs(&f).unwrap();
    let want: BTreeMap<Vec<u8>, Vec<u8>> = [(b"user.a".to_vec(), b"two".to_vec()), (b"user.big".to_vec(), pattern(31, 600))].into_iter().collect();
    assert_eq!(all, want, "{n}: xattrs after remount");
    assert_eq!(getxattr(&env.p("x"), "user.dir").unwrap(), b"d");
    removexattr(&f, "user.a").unwrap();
    expect_errno(removexattr(&f, "user.a"), libc::ENODATA, &format!("{n}: removexattr twice"));
    assert_eq!(rumpfs_tests::xattrs(&f).unwrap().len(), 1);
}

/// One random operation, done on both trees; the outcomes must agree.
fn random_op(rng: &mut Rng, roots: [&Path; 2]) -> Result<(), String> {
    let f = |r: &mut Rng| format!("f{}", r.below(16));
    let dname = |r: &mut Rng| format!("d{}", r.below(4));
    let op = rng.below(100);
    let a = if rng.below(4) == 0 { format!("{}/{}", dname(rng), f(rng)) } else { f(rng) };
    let b = if rng.below(3) == 0 { format!("{}/g{}", dname(rng), rng.below(6)) } else { f(rng) };
    let off = rng.below(300_000);
    let big = rng.below(4) == 0;
    let len = 1 + rng.below(if big { 150_000 } else { 9000 }) as usize;
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    let size = rng.below(400_000);
    let target: String = (0..1 + rng.below(150)).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let (d1, d2) = (dname(rng), format!("{}/{}", dname(rng), dname(rng)));
    let mode = 0o600 + rng.below(0o200) as u32;
    let mut results = Vec::new();
    for root in roots {
        let p = |s: &str| root.join(s);
        let r: io::Result<()> = match op {
            0..=29 => OpenOptions::new().create(true).write(true).truncate(false).open(p(&a)).and_then(|fh| fh.write_all_at(&data, off)),
            30..=39 => OpenOptions::new().write(true).open(p(&a)).and_then(|fh| fh.set_len(size)),
            40..=49 => fs::rename(p(&a), p(&b)),
            50..=58 => fs::remove_file(p(&a)),
            59..=63 => fs::hard_link(p(&a), p(&b)),
            64..=68 => symlink(&target, p(&b)),
            69..=73 => OpenOptions::new().create(true).append(true).mode(0o644).open(p(&a)).and_then(|mut fh| fh.write_all(&data[..len.min(700)])),
            74..=79 => fs::create_dir(p(&d1)).or_else(|_| fs::create_dir(p(&d2))),
            80..=84 => fs::remove_dir(p(&d2)).or_else(|_| fs::remove_dir(p(&d1))),
            85..=89 => fs::rename(p(&d1), p(&d2)),
            90..=94 => fs::set_permissions(p(&a), fs::Permissions::from_mode(mode)),
            _ => fs::rename(p(&d2), p(&d1)),
        };
        results.push(r);
    }
    if errno(&results[0]) != errno(&results[1]) {
        return Err(format!("op {op} on {a} / {b} / {d1} / {d2}: mount {:?}, tmpfs {:?}", results[0], results[1]));
    }
    Ok(())
}

/// Sets atime and mtime of everything below `root` to fixed values (the random operations
/// ran at slightly different times on the two trees).
fn pin_times(root: &Path) {
    let md = lstat(root);
    if md.is_dir() {
        for e in fs::read_dir(root).unwrap() {
            pin_times(&e.unwrap().path());
        }
    }
    utimens(root, (1_000_000_000, 5), (1_234_567_890, 123_456_789));
}

/// Sets the times of every symlink below `to` to those of the symlink at the same path below
/// `from`.
fn copy_symlink_times(from: &Path, to: &Path) {
    let md = lstat(to);
    if md.is_dir() {
        for e in fs::read_dir(to).unwrap() {
            let e = e.unwrap();
            copy_symlink_times(&from.join(e.file_name()), &e.path());
        }
    } else if md.file_type().is_symlink() {
        if let Ok(f) = fs::symlink_metadata(from) {
            utimens(to, (f.atime(), f.atime_nsec()), (f.mtime(), f.mtime_nsec()));
        }
    }
}

/// A small seeded random mix, mirrored on tmpfs: every outcome (success or errno) agrees, and
/// after a remount the two trees compare equal (bytes, modes, owners, links, symlinks).
fn random_mix(env: &mut Env) {
    let reference = tempfile::Builder::new().prefix("rumpfs-generic-").tempdir_in("/dev/shm").unwrap();
    fs::create_dir(env.p("mix")).unwrap();
    let mine = env.p("mix");
    let mut rng = Rng::new(0x5eed ^ env.fs.name.len() as u64);
    let failures: Vec<String> = (0..600).filter_map(|_| random_op(&mut rng, [&mine, reference.path()]).err()).collect();
    assert!(failures.is_empty(), "{}: outcomes differ from tmpfs:\n  {}", env.fs.name, failures.join("\n  "));
    env.remount();
    pin_times(&env.p("mix"));
    pin_times(reference.path());
    if !env.fs.symlink_times {
        // The mount's symlinks kept their own times: give the reference the same.
        copy_symlink_times(&env.p("mix"), reference.path());
    }
    let opts = CompareOpts { xattrs: false, lost_found: false, sparse_threshold: u64::MAX, ns_times: env.fs.ns_times, ..CompareOpts::default() };
    let mix = env.p("mix");
    let diffs = compare_trees(reference.path(), &mix, &opts);
    assert!(diffs.is_empty(), "{}: after remount the tree differs from tmpfs:\n  {}", env.fs.name, diffs.join("\n  "));
}
