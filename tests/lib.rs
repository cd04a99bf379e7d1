//! Shared helpers for the end-to-end tests.
//!
//! These are host helpers (std and libc): they build source trees and images with the real
//! tools (mke2fs -d, debugfs, e2fsck, sfdisk, sgdisk, dd), run `rumpfs-mount`, keep its mounts
//! in guards that always unmount, and compare what the mount shows with an oracle (the source
//! tree the image was made from, a manifest, or debugfs).
//!
//! The tests run as root in CI. Every fixture lives in a temporary directory; the ones shared by
//! all tests of one test binary are built once (`OnceLock`) and removed when the process exits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
pub use tempfile::TempDir;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// Exit status of `rumpfs-mount` for usage errors (bad option or arguments).
pub const EXIT_USAGE: i32 = 1;
/// Exit status of `rumpfs-mount` for mount failures.
pub const EXIT_MOUNT: i32 = 32;

// ---------------------------------------------------------------------------------------------
// The binary and the tools
// ---------------------------------------------------------------------------------------------

const BUILD_HINT: &str = "build it first: cargo build --release -p rumpfs-mount";

/// The `rumpfs-mount` binary: `$RUMPFS_MOUNT_BIN`, else the one in the target profile directory
/// this test binary was built into.
pub fn mount_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RUMPFS_MOUNT_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "RUMPFS_MOUNT_BIN={} does not exist; {BUILD_HINT}", p.display());
            return p;
        }
        let exe = std::env::current_exe().expect("current_exe");
        for dir in exe.ancestors().skip(1) {
            if matches!(dir.file_name().and_then(OsStr::to_str), Some("release" | "debug")) {
                let cand = dir.join("rumpfs-mount");
                assert!(cand.is_file(), "{} is missing; {BUILD_HINT}", cand.display());
                return cand;
            }
        }
        panic!("no target/release or target/debug above {}; {BUILD_HINT}", exe.display())
    })
    .clone()
}

/// Where a tool is: `$PATH`, then the sbin directories (cargo may run us without them).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The test command installs every tool the tests use, so a missing one is a failure.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| find_tool(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "required tools not installed: {missing:?} (Debian: apt-get install fuse3 e2fsprogs fdisk gdisk \
         fuse2fs attr zstd util-linux coreutils findutils)"
    );
}

/// A `Command` for a tool found with [`find_tool`]; RUST_LOG is removed so that our binary's
/// stderr holds only what the contract says.
pub fn tool(name: &str) -> Command {
    let path = find_tool(name).unwrap_or_else(|| panic!("required tool not installed: {name}"));
    let mut c = Command::new(path);
    c.env_remove("RUST_LOG");
    c
}

/// The folder of shared real images, or None (and a message) when it is absent.
pub fn test_images_dir() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cands = [here.join("../../shared/test-images"), here.join("../shared/test-images"), PathBuf::from("/work/shared/test-images")];
    for c in cands {
        if c.join("README.md").is_file() {
            return Some(c);
        }
    }
    eprintln!("SKIP: ../shared/test-images is absent; the shared real-image tests do nothing");
    None
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// The result of a command that ran to its end.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    /// Panics unless the command succeeded.
    pub fn check(self) -> Out {
        assert!(self.ok(), "{} failed: {}\nstdout: {}\nstderr: {}", self.what, self.status, self.stdout, self.stderr);
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to its end with a time limit; its output goes to files rather than pipes, so a
/// background server that keeps our stdout or stderr open cannot make us wait forever.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Out {
    let what = describe(cmd);
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(err.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > limit {
            // We started this process: kill it by its pid.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut File| {
        let mut s = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    };
    Out { status, stdout: read(&mut out), stderr: read(&mut err), what }
}

/// [`run_timeout`] with two minutes.
pub fn run(cmd: &mut Command) -> Out {
    run_timeout(cmd, Duration::from_secs(120))
}

/// Runs a tool and panics unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Out {
    run(cmd).check()
}

/// Runs `rumpfs-mount` with these arguments, optionally as another user (through setpriv).
pub fn run_cli<S: AsRef<OsStr>>(args: &[S], user: Option<(u32, u32)>) -> Out {
    let mut c = cli_command(user);
    c.args(args);
    run_timeout(&mut c, Duration::from_secs(60))
}

/// The command that starts `rumpfs-mount`, directly or through `setpriv` as uid:gid.
pub fn cli_command(user: Option<(u32, u32)>) -> Command {
    let mut c = match user {
        None => Command::new(mount_bin()),
        Some((uid, gid)) => {
            let mut c = tool("setpriv");
            c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg(mount_bin());
            c
        }
    };
    c.env_remove("RUST_LOG");
    c
}

/// Runs a tool as uid:gid (setpriv, no supplementary groups).
pub fn as_user(uid: u32, gid: u32, program: &str, args: &[&OsStr]) -> Out {
    let mut c = tool("setpriv");
    c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups");
    c.arg(find_tool(program).unwrap_or_else(|| panic!("required tool not installed: {program}")));
    c.args(args);
    run(&mut c)
}

/// Checks the contract for errors: exit status `code` and exactly one line on stderr that
/// starts with "rumpfs-mount: " and contains every one of `needles` (case-insensitive).
pub fn assert_cli_error(out: &Out, code: i32, needles: &[&str]) {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut problems = Vec::new();
    if out.code() != Some(code) {
        problems.push(format!("exit status {:?}, want {code}", out.code()));
    }
    if lines.len() != 1 {
        problems.push(format!("{} lines on stderr, want exactly one", lines.len()));
    }
    if !lines.first().is_some_and(|l| l.starts_with("rumpfs-mount: ")) {
        problems.push("stderr does not start with \"rumpfs-mount: \"".into());
    }
    let lower = out.stderr.to_lowercase();
    for n in needles {
        if !lower.contains(&n.to_lowercase()) {
            problems.push(format!("stderr does not mention {n:?}"));
        }
    }
    assert!(problems.is_empty(), "{}:\n  {}\nstdout: {:?}\nstderr: {:?}", out.what, problems.join("\n  "), out.stdout, out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A fresh temporary directory (mode 0755, so an ordinary user can reach what is inside when
/// a test wants that).
pub fn tempdir() -> TempDir {
    let d = tempfile::Builder::new().prefix("rumpfs-e2e-").tempdir().expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

static SHARED: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_shared() {
    if let Some(p) = SHARED.get() {
        let _ = fs::remove_dir_all(p);
    }
}

/// A directory that lives as long as this test process (shared fixtures go here); removed at
/// exit.
pub fn shared_dir() -> &'static Path {
    SHARED.get_or_init(|| {
        let d = tempdir().keep();
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(remove_shared) };
        d
    })
}

/// A new subdirectory of [`shared_dir`].
pub fn shared_subdir(name: &str) -> PathBuf {
    let p = shared_dir().join(name);
    fs::create_dir_all(&p).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// A seeded generator
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Source trees
// ---------------------------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL")
}

fn check_rc(rc: libc::c_int, what: &str, p: &Path) {
    if rc != 0 {
        panic!("{what} {}: {}", p.display(), io::Error::last_os_error());
    }
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    // SAFETY: valid NUL-terminated path.
    check_rc(unsafe { libc::lchown(cpath(p).as_ptr(), uid, gid) }, "lchown", p);
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

pub fn mknod(p: &Path, mode: u32, dev: libc::dev_t) {
    // SAFETY: valid NUL-terminated path.
    check_rc(unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev) }, "mknod", p);
}

/// Sets mtime (seconds, nanoseconds) without following symlinks; atime is left alone.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ },
    ];
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    check_rc(rc, "utimensat", p);
}

pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid path, name and buffer.
    let rc = unsafe { libc::lsetxattr(cpath(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    check_rc(rc, &format!("lsetxattr {name}"), p);
}

/// All extended attributes of a path (not following symlinks), name -> value.
pub fn xattrs(p: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let cp = cpath(p);
    let mut names = vec![0u8; 256];
    loop {
        // SAFETY: valid path and buffer of names.len() bytes.
        let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            names.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || names.len() > (1 << 20) {
            return Err(e);
        }
        names.resize(names.len() * 4, 0);
    }
    let mut map = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 256];
        loop {
            // SAFETY: valid path, name and buffer of val.len() bytes.
            let n = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
            if n >= 0 {
                val.truncate(n as usize);
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ERANGE) || val.len() > (1 << 20) {
                return Err(io::Error::new(e.kind(), format!("getxattr {}: {e}", String::from_utf8_lossy(name))));
            }
            val.resize(val.len() * 4, 0);
        }
        map.insert(name.to_vec(), val);
    }
    Ok(map)
}

/// What to put in a generated source tree.
#[derive(Clone, Copy, Debug)]
pub struct TreeSpec {
    pub seed: u64,
    /// The full tree (every kind of file, deep nesting, odd names); false: a small tree.
    pub full: bool,
    /// Entries in `bigdir` (0: none).
    pub big_dir_entries: usize,
    /// A 5 GiB sparse file with data at a few offsets, some past 4 GiB.
    pub sparse_5g: bool,
    /// Inodes of 256 bytes: times before 1902 or after 2038 and nanoseconds can be stored.
    pub wide_times: bool,
}

impl TreeSpec {
    /// Everything, for 256-byte inodes.
    pub const FULL: TreeSpec = TreeSpec { seed: 0x5eed_e2e, full: true, big_dir_entries: 10_000, sparse_5g: true, wide_times: true };
    /// Everything that 128-byte inodes can hold.
    pub const FULL_128: TreeSpec = TreeSpec { wide_times: false, ..TreeSpec::FULL };
    /// A few files of each common kind (for partition, user, signal and corruption tests).
    pub const SMALL: TreeSpec = TreeSpec { seed: 7, full: false, big_dir_entries: 0, sparse_5g: false, wide_times: true };
}

/// A generated source tree, and the times that `mke2fs -d` cannot copy (it drops nanoseconds
/// and wraps times after 2038): the image builders set those with debugfs, so the tree and its
/// images agree.
pub struct SourceTree {
    pub root: PathBuf,
    pub spec: TreeSpec,
    /// (path relative to root, seconds, nanoseconds) of entries whose mtime needs debugfs.
    pub wide_mtimes: Vec<(PathBuf, i64, i64)>,
}

/// Sizes that hit the block-map boundaries for 1k, 2k and 4k blocks: 12 direct blocks, then
/// single-indirect (256, 512 or 1024 pointers per block), then double-indirect.
pub const BOUNDARY_SIZES: &[(&str, u64)] = &[
    ("empty", 0),
    ("one-byte", 1),
    ("b1k-12blocks", 12 * KIB),
    ("b1k-12blocks-plus1", 12 * KIB + 1),
    ("b2k-12blocks-plus1", 24 * KIB + 1),
    ("b4k-12blocks", 48 * KIB),
    ("b4k-12blocks-plus1", 48 * KIB + 1),
    ("b1k-indirect", 200 * KIB + 7),
    ("b1k-268blocks", 268 * KIB),
    ("b1k-double-indirect", 268 * KIB + 1),
    ("b1k-double-indirect-big", 1 * MIB + 3 * KIB + 5),
    ("b2k-double-indirect", (12 + 512) * 2 * KIB + 1),
    ("b4k-double-indirect", (12 + 1024) * 4 * KIB + 4097),
];

/// Offsets (and lengths) of the data regions in the 5 GiB sparse file.
pub const SPARSE_SIZE: u64 = 5 * GIB;
pub const SPARSE_REGIONS: &[(u64, u64)] = &[
    (0, 5000),
    (MIB + 5, 70_000),
    (4 * GIB - 3000, 8192),        // crosses 4 GiB
    (4 * GIB + 12_345, 4096),      // past 4 GiB
    (4 * GIB + 8 * MIB, 3 * 4096), // triple-indirect for 4k blocks
    (SPARSE_SIZE - 100, 96),       // near the end; the last 4 bytes are a hole
];

fn write_random(p: &Path, size: u64, rng: &mut Rng) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn mkdirs(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// Builds a seeded source tree under `root` (which must not exist). Must run as root (device
/// nodes, chown, trusted.* xattrs). `label` goes into `/marker`, so trees made for different
/// partitions can be told apart.
pub fn make_tree(root: &Path, spec: TreeSpec, label: &str) -> SourceTree {
    assert!(!root.exists(), "{} exists", root.display());
    let mut rng = Rng::new(spec.seed);
    let mut wide: Vec<(PathBuf, i64, i64)> = Vec::new();
    mkdirs(root);
    let r = |p: &str| root.join(p);
    write_file(&r("marker"), format!("tree {label}\n").as_bytes());

    // Regular files at the block-map boundaries, and some random sizes.
    mkdirs(&r("files"));
    let sizes: Vec<(String, u64)> = if spec.full {
        let mut v: Vec<(String, u64)> = BOUNDARY_SIZES.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        for i in 0..6 {
            let s = rng.below(300 * KIB);
            v.push((format!("random-{i}"), s));
        }
        v
    } else {
        vec![("empty".into(), 0), ("one-byte".into(), 1), ("b1k-indirect".into(), 200 * KIB + 7), ("random".into(), 5000 + rng.below(50_000))]
    };
    for (name, size) in &sizes {
        write_random(&r(&format!("files/{name}")), *size, &mut rng);
    }
    write_file(&r("files/hello.txt"), b"hello, world\n");

    // Permission fixtures (the user and allow_other tests rely on these names).
    mkdirs(&r("perm/dir0700"));
    write_file(&r("perm/secret"), b"root only\n");
    write_file(&r("perm/public"), b"everyone may read this\n");
    write_file(&r("perm/group-only"), b"group 1000 may read\n");
    write_file(&r("perm/other-not-group"), b"others yes, group 1000 no\n");
    write_file(&r("perm/owner-none"), b"owner 1000 has no bits\n");
    write_file(&r("perm/own"), b"owned by 1000\n");
    write_file(&r("perm/dir0700/inner"), b"inside a 0700 dir\n");
    for (p, uid, gid, mode) in [
        ("perm/secret", 0, 0, 0o600),
        ("perm/public", 0, 0, 0o644),
        ("perm/group-only", 0, 1000, 0o640),
        ("perm/other-not-group", 0, 1000, 0o604),
        ("perm/owner-none", 1000, 1000, 0o064),
        ("perm/own", 1000, 1000, 0o600),
        ("perm/dir0700", 0, 0, 0o700),
        ("perm/dir0700/inner", 0, 0, 0o644),
        ("perm", 0, 0, 0o755),
    ] {
        lchown(&r(p), uid, gid);
        chmod(&r(p), mode);
    }

    // Symlinks: fast (< 60 bytes, kept in the inode) and slow (in a block).
    mkdirs(&r("links"));
    let mut targets: Vec<(String, String)> = vec![
        ("to-hello".into(), "../files/hello.txt".into()),
        ("dangling".into(), "does/not/exist".into()),
        ("absolute".into(), "/etc/hostname".into()),
        ("len59".into(), "a".repeat(59)),
        ("len60".into(), "b".repeat(60)),
        ("len61".into(), "c".repeat(61)),
    ];
    if spec.full {
        targets.push(("len100".into(), format!("../{}", "d/".repeat(48)) + "x"));
        targets.push(("len300".into(), "./".repeat(147) + "target"));
        targets.push(("to-dir".into(), "../deep/d1/d2".into()));
        targets.push(("one".into(), "x".into()));
    }
    for (name, target) in &targets {
        symlink(target, r(&format!("links/{name}"))).unwrap();
    }

    // Hard links.
    mkdirs(&r("hard/sub"));
    write_random(&r("hard/a"), 3000, &mut rng);
    fs::hard_link(r("hard/a"), r("hard/b")).unwrap();
    fs::hard_link(r("hard/a"), r("hard/sub/c")).unwrap();

    // Extended attributes: small ones (in the inode when it has room), many, a big one (in a
    // block), binary values, trusted.*, on a directory and on a symlink.
    mkdirs(&r("xattr/dir"));
    write_file(&r("xattr/small"), b"x\n");
    lsetxattr(&r("xattr/small"), "user.a", b"1");
    lsetxattr(&r("xattr/small"), "user.empty", b"");
    lsetxattr(&r("xattr/small"), "trusted.t", b"trusted value");
    lsetxattr(&r("xattr/dir"), "user.dir", b"on a directory");
    if spec.full {
        write_file(&r("xattr/many"), b"many\n");
        for i in 0..16 {
            lsetxattr(&r("xattr/many"), &format!("user.k{i:02}"), format!("value number {i}").as_bytes());
        }
        write_file(&r("xattr/big"), b"big\n");
        let mut big = vec![0u8; 700];
        rng.fill(&mut big);
        lsetxattr(&r("xattr/big"), "user.big", &big);
        lsetxattr(&r("xattr/big"), "user.binary", b"\0\x01\x02\xff\0");
        symlink("small", r("xattr/link")).unwrap();
        lsetxattr(&r("xattr/link"), "trusted.on-symlink", b"yes");
    }

    if spec.full {
        // Nested directories.
        let mut d = r("deep");
        for i in 1..=8 {
            d = d.join(format!("d{i}"));
        }
        mkdirs(&d);
        write_file(&d.join("leaf.txt"), b"deep leaf\n");
        write_file(&r("deep/d1/mid.txt"), b"middle\n");

        // Special files.
        mkdirs(&r("special"));
        let c = cpath(&r("special/fifo"));
        // SAFETY: valid path.
        check_rc(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, "mkfifo", &r("special/fifo"));
        mknod(&r("special/null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));
        mknod(&r("special/sda1"), libc::S_IFBLK | 0o660, libc::makedev(8, 1));
        mknod(&r("special/bigdev"), libc::S_IFCHR | 0o600, libc::makedev(300, 70_000));
        mknod(&r("special/bigblk"), libc::S_IFBLK | 0o640, libc::makedev(259, 5));
        drop(std::os::unix::net::UnixListener::bind(r("special/socket")).unwrap());
        lchown(&r("special/sda1"), 0, 6);

        // Modes and owners.
        mkdirs(&r("modes"));
        for (name, mode, uid, gid) in [
            ("setuid", 0o4755, 0, 0),
            ("setgid", 0o2755, 0, 50),
            ("setuid-setgid", 0o6711, 1000, 1000),
            ("none", 0o000, 4242, 77),
            ("readonly", 0o444, 1000, 1000),
            ("all", 0o777, 65534, 65534),
            ("big-ids", 0o640, 100_000, 200_000),
            ("sticky-file", 0o1644, 0, 0),
        ] {
            write_file(&r(&format!("modes/{name}")), name.as_bytes());
            lchown(&r(&format!("modes/{name}")), uid, gid);
            chmod(&r(&format!("modes/{name}")), mode);
        }
        for (name, mode, uid, gid) in [("sticky-dir", 0o1777, 0, 0), ("setgid-dir", 0o2775, 1000, 1000), ("dir-4242", 0o750, 4242, 77)] {
            mkdirs(&r(&format!("modes/{name}")));
            lchown(&r(&format!("modes/{name}")), uid, gid);
            chmod(&r(&format!("modes/{name}")), mode);
        }
        lchown(&r("links/one"), 4242, 77);

        // Names.
        mkdirs(&r("names"));
        for name in ["with space", "ünïcödé-名前", ".hidden", "-dash", "a=b,c;d", "x"] {
            write_file(&r(&format!("names/{name}")), name.as_bytes());
        }
        write_file(&r(&format!("names/{}", "L".repeat(255))), b"255-byte name\n");

        // A 10,000-entry directory (htree after e2fsck -D), empty files and a few with content.
        if spec.big_dir_entries > 0 {
            mkdirs(&r("bigdir"));
            for i in 0..spec.big_dir_entries {
                let mut name = format!("entry-{i:05}");
                if i % 97 == 0 {
                    let extra = 1 + rng.below(240) as usize;
                    name.push('-');
                    name.push_str(&"n".repeat(extra));
                }
                let p = r("bigdir").join(&name);
                if i % 1000 == 0 {
                    write_file(&p, name.as_bytes());
                } else {
                    File::create(&p).unwrap();
                }
            }
        }

        if spec.sparse_5g {
            mkdirs(&r("sparse"));
            let p = r("sparse/5g");
            let f = File::create(&p).unwrap();
            f.set_len(SPARSE_SIZE).unwrap();
            for &(off, len) in SPARSE_REGIONS {
                let mut buf = vec![0u8; len as usize];
                rng.fill(&mut buf);
                f.write_all_at(&buf, off).unwrap();
            }
        }
    }

    // Times, children before parents (creating entries changes a directory's mtime). Whole
    // seconds everywhere (mke2fs -d copies no nanoseconds); the entries in `wide_paths` get
    // nanoseconds and, in times/, dates before 1970 and after 2038, which the image builders set
    // with debugfs on images whose inodes have room for them.
    mkdirs(&r("times"));
    let mut times: Vec<(&str, i64, i64)> = vec![("epoch", 0, 0), ("pre-1970", -31_536_000, 0), ("y2038-edge", i32::MAX as i64, 0)];
    if spec.wide_times {
        times.push(("ns", 1_234_567_890, 123_456_789));
        times.push(("ns-max", 1_600_000_000, 999_999_999));
        times.push(("y2106", (1i64 << 32) + 5, 500_000_000));
        times.push(("y2200", 7_258_118_400, 1));
        times.push(("pre-1970-ns", -2, 999_999_999)); // debugfs cannot parse @-1 (its error value)
    }
    for (name, _, _) in &times {
        write_file(&r(&format!("times/{name}")), name.as_bytes());
    }
    let mut all = Vec::new();
    walk_paths(root, Path::new(""), &mut all);
    all.reverse(); // children before parents
    for rel in &all {
        let sec = 631_152_000 + rng.below(1_262_304_000) as i64; // 1990 .. 2030
        let p = root.join(rel);
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let wide_ok = spec.wide_times && matches!(top.as_str(), "files" | "links" | "special" | "modes" | "xattr" | "hard" | "deep");
        if wide_ok {
            let ns = 1 + rng.below(999_999_999) as i64;
            set_mtime(&p, sec, ns);
            wide.push((rel.clone(), sec, ns));
        } else {
            set_mtime(&p, sec, 0);
        }
    }
    for (name, sec, ns) in &times {
        let rel = PathBuf::from(format!("times/{name}"));
        set_mtime(&root.join(&rel), *sec, *ns);
        if spec.wide_times {
            wide.push((rel, *sec, *ns));
        }
    }
    set_mtime(&r("times"), 1_000_000_000, 0);
    set_mtime(root, 1_100_000_000, 0);
    SourceTree { root: root.to_path_buf(), spec, wide_mtimes: wide }
}

fn walk_paths(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<OsString> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for n in names {
        let child = rel.join(&n);
        out.push(child.clone());
        if fs::symlink_metadata(root.join(&child)).unwrap().is_dir() {
            walk_paths(root, &child, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// The file system images the tests make with the real mke2fs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// ext2 rev 1, 1 KiB blocks, 256-byte inodes; directories indexed by `e2fsck -D`.
    Ext2_1k,
    /// ext2 rev 1, 4 KiB blocks, 256-byte inodes; the big directory stays linear.
    Ext2_4k,
    /// ext3 (journal), 2 KiB blocks, htree.
    Ext3,
    /// ext4 with bookworm's defaults (extents, 64bit, flex_bg, metadata_csum, huge_file,
    /// dir_nlink, extra_isize), 4 KiB blocks, htree.
    Ext4,
    /// ext2, 1 KiB blocks, 128-byte inodes (no extra fields: whole-second times, xattrs only in
    /// blocks).
    Ext2Inode128,
}

impl FsKind {
    pub const ALL: [FsKind; 5] = [FsKind::Ext2_1k, FsKind::Ext2_4k, FsKind::Ext3, FsKind::Ext4, FsKind::Ext2Inode128];

    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext2_1k => "ext2-1k",
            FsKind::Ext2_4k => "ext2-4k",
            FsKind::Ext3 => "ext3-2k",
            FsKind::Ext4 => "ext4",
            FsKind::Ext2Inode128 => "ext2-inode128",
        }
    }

    pub fn mkfs_args(self) -> &'static [&'static str] {
        match self {
            FsKind::Ext2_1k => &["-t", "ext2", "-b", "1024", "-I", "256"],
            FsKind::Ext2_4k => &["-t", "ext2", "-b", "4096", "-I", "256"],
            FsKind::Ext3 => &["-t", "ext3", "-b", "2048", "-I", "256"],
            FsKind::Ext4 => &["-t", "ext4"],
            FsKind::Ext2Inode128 => &["-t", "ext2", "-b", "1024", "-I", "128"],
        }
    }

    /// Image size for the full tree (sparse files: costs only what is written).
    pub fn size(self) -> &'static str {
        match self {
            FsKind::Ext4 => "2G", // big enough for mke2fs's "default" type: 4 KiB blocks
            FsKind::Ext2_4k | FsKind::Ext3 => "512M",
            _ => "256M",
        }
    }

    /// Whether the image's directories are indexed (htree) by `e2fsck -fyD`.
    pub fn htree(self) -> bool {
        !matches!(self, FsKind::Ext2_4k)
    }

    /// 256-byte inodes: nanosecond times and dates past 2038.
    pub fn wide_inodes(self) -> bool {
        !matches!(self, FsKind::Ext2Inode128)
    }

    pub fn tree_spec(self) -> TreeSpec {
        if self.wide_inodes() {
            TreeSpec::FULL
        } else {
            TreeSpec::FULL_128
        }
    }
}

/// `mke2fs -q -F ARGS [-d SRC] IMG SIZE`.
pub fn mke2fs(img: &Path, args: &[&str], src: Option<&Path>, size: &str) {
    let mut c = tool("mke2fs");
    c.args(["-q", "-F"]).args(args);
    if let Some(s) = src {
        c.arg("-d").arg(s);
    }
    c.arg(img).arg(size);
    run_ok(&mut c);
}

/// Runs debugfs commands (one per line) on an image; `write` opens it read-write.
pub fn debugfs(img: &Path, write: bool, cmds: &str) -> Out {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), cmds).unwrap();
    let mut c = tool("debugfs");
    if write {
        c.arg("-w");
    }
    c.arg("-f").arg(f.path()).arg(img);
    let out = run_ok(&mut c);
    for l in out.stderr.lines() {
        let l = l.trim();
        // debugfs reports command errors on stderr but exits 0.
        if !l.is_empty() && !l.starts_with("debugfs ") && !l.starts_with("debugfs:") {
            panic!("debugfs on {}: {l}\ncommands:\n{cmds}", img.display());
        }
    }
    out
}

/// One debugfs request, its stdout.
pub fn debugfs_req(img: &Path, req: &str) -> String {
    let mut c = tool("debugfs");
    c.arg("-R").arg(req).arg(img);
    run_ok(&mut c).stdout
}

fn debugfs_quote(rel: &Path) -> String {
    let s = format!("/{}", rel.display());
    assert!(!s.contains('"') && !s.contains('\n'), "cannot quote {s} for debugfs");
    format!("\"{s}\"")
}

/// ext4's encoding of a time's high bits and nanoseconds in the `*_extra` field.
pub fn time_extra(sec: i64, nsec: i64) -> u32 {
    let lo = sec as i32 as i64;
    let epoch = (((sec - lo) >> 32) & 3) as u32;
    ((nsec as u32) << 2) | epoch
}

/// Sets mtimes with debugfs (seconds, and nanoseconds + epoch bits where the inode has room).
pub fn set_image_mtimes(img: &Path, wide: bool, times: &[(PathBuf, i64, i64)]) {
    let mut cmds = String::new();
    for (rel, sec, nsec) in times {
        let q = debugfs_quote(rel);
        cmds.push_str(&format!("set_inode_field {q} mtime @{sec}\n"));
        if wide {
            cmds.push_str(&format!("set_inode_field {q} mtime_extra {}\n", time_extra(*sec, *nsec)));
        }
    }
    if !cmds.is_empty() {
        debugfs(img, true, &cmds);
    }
}

/// `dumpe2fs -h` as a map ("Free blocks" -> "1234").
pub fn dumpe2fs_h(img: &Path) -> HashMap<String, String> {
    let out = run_ok(tool("dumpe2fs").arg("-h").arg(img)).stdout;
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Builds an image of `kind` from `src` (a tree from [`make_tree`]): mke2fs -d, then the
/// times mke2fs cannot copy (debugfs), then directory indexing (e2fsck -fyD) where the kind
/// wants htree, then a check that it is what it claims to be.
pub fn make_image(kind: FsKind, src: &SourceTree, img: &Path, size: &str) {
    mke2fs(img, kind.mkfs_args(), Some(&src.root), size);
    set_image_mtimes(img, kind.wide_inodes(), &src.wide_mtimes);
    if kind.htree() {
        let out = run(tool("e2fsck").arg("-fyD").arg(img));
        assert!(matches!(out.code(), Some(0 | 1)), "e2fsck -fyD {}: {}\n{}", img.display(), out.stdout, out.stderr);
    }
    let fsck = run(tool("e2fsck").arg("-fn").arg(img));
    assert!(fsck.ok(), "e2fsck -fn {} after building: {}\n{}", img.display(), fsck.stdout, fsck.stderr);
    let h = dumpe2fs_h(img);
    let want_inode = if kind.wide_inodes() { "256" } else { "128" };
    assert_eq!(h.get("Inode size").map(String::as_str), Some(want_inode), "{}: inode size", kind.name());
    if kind == FsKind::Ext4 {
        let feats = h.get("Filesystem features").cloned().unwrap_or_default();
        for f in ["extent", "64bit", "flex_bg", "metadata_csum", "huge_file", "dir_nlink", "extra_isize"] {
            assert!(feats.split_whitespace().any(|x| x == f), "ext4 image lacks {f}: {feats}");
        }
    }
    if src.spec.big_dir_entries > 0 {
        let dump = run(tool("debugfs").arg("-R").arg("htree_dump /bigdir").arg(img));
        let indexed = dump.stdout.contains("Root node dump");
        assert_eq!(indexed, kind.htree(), "{}: /bigdir htree: {indexed}\n{}", kind.name(), dump.stderr);
    }
}

/// A file system image in its own directory.
pub struct Image {
    pub path: PathBuf,
    pub kind: FsKind,
    _dir: Option<TempDir>,
}

/// A small image of `kind` made from a small tree labelled `label`; the tree is returned too.
pub fn small_image(kind: FsKind, label: &str) -> (TempDir, SourceTree, PathBuf) {
    let d = tempdir();
    let tree = make_tree(&d.path().join("src"), TreeSpec::SMALL, label);
    let img = d.path().join(format!("{}.img", kind.name()));
    let size = if kind == FsKind::Ext4 { "64M" } else { "16M" };
    make_image(kind, &tree, &img, size);
    fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).unwrap();
    (d, tree, img)
}

/// The full source tree for this kind of inode, built once per test process.
pub fn shared_tree(wide: bool) -> &'static SourceTree {
    static WIDE: OnceLock<SourceTree> = OnceLock::new();
    static NARROW: OnceLock<SourceTree> = OnceLock::new();
    let (cell, spec, name) = if wide { (&WIDE, TreeSpec::FULL, "src-wide") } else { (&NARROW, TreeSpec::FULL_128, "src-128") };
    cell.get_or_init(|| make_tree(&shared_dir().join(name), spec, name))
}

/// The full image of this kind, built once per test process.
pub fn shared_image(kind: FsKind) -> &'static Image {
    static IMAGES: [OnceLock<Image>; 5] = [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = FsKind::ALL.iter().position(|k| *k == kind).unwrap();
    IMAGES[i].get_or_init(|| {
        let tree = shared_tree(kind.wide_inodes());
        let dir = shared_subdir("images");
        let path = dir.join(format!("{}.img", kind.name()));
        let t = Instant::now();
        make_image(kind, tree, &path, kind.size());
        if kind == FsKind::Ext4 {
            assert_eq!(dumpe2fs_h(&path).get("Block size").map(String::as_str), Some("4096"), "ext4 defaults: 4 KiB blocks");
        }
        eprintln!("built {} in {:?}", path.display(), t.elapsed());
        Image { path, kind, _dir: None }
    })
}

// ---------------------------------------------------------------------------------------------
// Partitioned images
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Mbr,
    Gpt,
}

/// What goes into a partition.
pub enum PartData<'a> {
    /// A file system image, copied in with dd.
    Image(&'a Path),
    /// This many bytes of seeded random data (not a file system).
    Random(u64),
}

/// One partition; `logical` (MBR only) puts it inside the extended partition.
pub struct Part<'a> {
    pub data: PartData<'a>,
    pub logical: bool,
}

/// Where a partition landed: its number (as sfdisk/the kernel count) and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub number: u32,
    pub start: u64,
    pub size: u64,
}

/// Builds a partitioned disk image: MBR with sfdisk (primaries first; logical partitions go in
/// an extended partition after them) or GPT with sgdisk, then dd's each partition's data at its
/// offset (read back from the table with `sfdisk --json`).
pub fn make_disk(disk: &Path, table: Table, parts: &[Part]) -> Vec<Placed> {
    const SECT: u64 = 512;
    const ALIGN: u64 = 2048; // sectors (1 MiB)
    let size_of = |p: &Part| -> u64 {
        let bytes = match p.data {
            PartData::Image(path) => fs::metadata(path).unwrap().len(),
            PartData::Random(n) => n,
        };
        bytes.div_ceil(MIB) * MIB / SECT
    };
    let mut plan: Vec<(u64, u64)> = Vec::new(); // (start, size) in sectors, in `parts` order
    let mut next = ALIGN;
    let mut script = String::new();
    let mut sgdisk_args: Vec<String> = vec!["-o".into()];
    match table {
        Table::Mbr => {
            script.push_str("label: dos\nunit: sectors\n\n");
            let primaries: Vec<&Part> = parts.iter().filter(|p| !p.logical).collect();
            let logicals: Vec<&Part> = parts.iter().filter(|p| p.logical).collect();
            assert!(parts.iter().skip_while(|p| !p.logical).all(|p| p.logical), "list primaries before logicals");
            assert!(primaries.len() <= if logicals.is_empty() { 4 } else { 3 });
            for p in &primaries {
                let s = size_of(p);
                script.push_str(&format!("start={next}, size={s}, type=83\n"));
                plan.push((next, s));
                next += s;
            }
            if !logicals.is_empty() {
                let ext_start = next;
                let total: u64 = logicals.iter().map(|p| size_of(p) + ALIGN).sum();
                script.push_str(&format!("start={ext_start}, size={total}, type=5\n"));
                let mut l = ext_start + ALIGN;
                for p in &logicals {
                    let s = size_of(p);
                    script.push_str(&format!("start={l}, size={s}, type=83\n"));
                    plan.push((l, s));
                    l += s + ALIGN;
                }
                next = ext_start + total;
            }
        }
        Table::Gpt => {
            for (i, p) in parts.iter().enumerate() {
                assert!(!p.logical, "GPT has no logical partitions");
                let s = size_of(p);
                sgdisk_args.push(format!("--new={}:{}:{}", i + 1, next, next + s - 1));
                sgdisk_args.push(format!("--typecode={}:8300", i + 1));
                plan.push((next, s));
                next += s;
            }
        }
    }
    let total_bytes = (next + ALIGN) * SECT;
    File::create(disk).unwrap().set_len(total_bytes).unwrap();
    match table {
        Table::Mbr => {
            let sf = tempfile::NamedTempFile::new().unwrap();
            fs::write(sf.path(), &script).unwrap();
            let mut c = tool("sh");
            c.arg("-c").arg(format!("sfdisk --no-reread --no-tell-kernel -q '{}' < '{}'", disk.display(), sf.path().display()));
            c.env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin");
            run_ok(&mut c);
        }
        Table::Gpt => {
            run_ok(tool("sgdisk").args(&sgdisk_args).arg(disk));
        }
    }
    // Read the table back and check it holds what we asked for.
    let json = run_ok(tool("sfdisk").arg("--json").arg(disk)).stdout;
    let mut placed = Vec::new();
    for (start, size) in &plan {
        let number = sfdisk_number_at(&json, *start, disk).unwrap_or_else(|| panic!("no partition at sector {start} in {json}"));
        placed.push(Placed { number, start: start * SECT, size: size * SECT });
    }
    for (p, pl) in parts.iter().zip(&placed) {
        match p.data {
            PartData::Image(img) => {
                run_ok(tool("dd").arg(format!("if={}", img.display())).arg(format!("of={}", disk.display())).args([
                    "bs=1M",
                    "conv=notrunc,sparse",
                    "oflag=seek_bytes",
                    "status=none",
                ])
                .arg(format!("seek={}", pl.start)));
            }
            PartData::Random(n) => {
                let mut rng = Rng::new(pl.start);
                let mut buf = vec![0u8; n as usize];
                rng.fill(&mut buf);
                fs::OpenOptions::new().write(true).open(disk).unwrap().write_all_at(&buf, pl.start).unwrap();
            }
        }
    }
    placed
}

/// In `sfdisk --json` output, the number of the partition that starts at `start` (sectors).
fn sfdisk_number_at(json: &str, start: u64, disk: &Path) -> Option<u32> {
    // "node": "/tmp/x/disk.img5",  then  "start": 6144,
    let prefix = disk.display().to_string();
    let mut number: Option<u32> = None;
    for line in json.lines() {
        let l = line.trim().trim_end_matches(',');
        if let Some(v) = l.strip_prefix("\"node\":") {
            let v = v.trim().trim_matches('"');
            number = v.strip_prefix(&prefix).and_then(|n| n.parse().ok());
        } else if let Some(v) = l.strip_prefix("\"start\":") {
            if v.trim().parse::<u64>().ok() == Some(start) {
                return number;
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// A line of /proc/mounts.
#[derive(Clone, Debug)]
pub struct MountEntry {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub options: String,
}

fn unescape_mounts(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount at `target` in /proc/mounts (the last one, if stacked).
pub fn mount_entry(target: &Path) -> Option<MountEntry> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() >= 4).then(|| MountEntry {
                source: unescape_mounts(f[0]),
                target: PathBuf::from(unescape_mounts(f[1])),
                fstype: f[2].to_string(),
                options: f[3].to_string(),
            })
        })
        .filter(|m| m.target == target)
        .last()
}

pub fn is_mounted(target: &Path) -> bool {
    mount_entry(target).is_some()
}

/// Waits until `target` is (or is not) a mount point, up to `limit`.
pub fn wait_mounted(target: &Path, want: bool, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if is_mounted(target) == want {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` still runs (a zombie counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("X");
            !matches!(state, "Z" | "X")
        }
    }
}

pub fn wait_pid_gone(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while pid_alive(pid) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The rumpfs-mount processes whose arguments name this mount point (our mount points are
/// unique temporary paths, so this finds exactly the server we started).
pub fn server_pids(mnt: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let bin_name = mount_bin().file_name().unwrap().to_os_string();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        // The name first (no lock of the process's memory): reading the arguments of an
        // unrelated process blocks while one of its threads faults on a hung FUSE mount.
        let Ok(comm) = fs::read(format!("/proc/{pid}/comm")) else { continue };
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        let bin = bin_name.as_bytes();
        if comm != &bin[..bin.len().min(15)] {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let names_mnt = args.iter().any(|a| *a == mnt.as_os_str().as_bytes());
        let is_ours = args.first().is_some_and(|a| Path::new(OsStr::from_bytes(a)).file_name() == Some(&bin_name))
            || fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.file_name() == Some(&bin_name));
        if names_mnt && is_ours && pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A kernel mount of an image on a loop device (`mount ARGS img dir`, e.g. `-o loop,ro`),
/// unmounted when dropped; `None` (with a SKIP message) where the machine does not allow it.
pub struct LoopMount(pub PathBuf, #[allow(dead_code)] TempDir);

impl LoopMount {
    pub fn new(img: &Path, args: &[&str]) -> Option<LoopMount> {
        let d = tempdir();
        let mnt = d.path().join("k");
        fs::create_dir(&mnt).unwrap();
        let out = run(tool("mount").args(args).arg(img).arg(&mnt));
        if !out.ok() {
            eprintln!("SKIP kernel cross-check: mount {} failed: {}", args.join(" "), out.stderr.trim());
            return None;
        }
        Some(LoopMount(mnt, d))
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let out = run(tool("umount").arg(&self.0));
        if !out.ok() {
            let _ = run(tool("umount").arg("-l").arg(&self.0));
        }
    }
}

/// Makes sure the fuse control file system is mounted (for aborting hung connections).
fn ensure_fusectl() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if !Path::new("/sys/fs/fuse/connections").exists() || is_mounted(Path::new("/sys/fs/fuse/connections")) {
            return;
        }
        let _ = run(tool("mount").args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"]));
    });
}

/// A running `rumpfs-mount`: unmounted (fusermount3 -u, else umount -l) when dropped, also when
/// the test panics, and then the server must exit.
pub struct Mounted {
    pub mnt: PathBuf,
    pub image: PathBuf,
    pub pids: Vec<i32>,
    /// The FUSE connection number (for /sys/fs/fuse/connections/N/abort).
    pub conn: Option<u32>,
    /// The user who mounted (None: root).
    pub user: Option<(u32, u32)>,
    pub out: Out,
    _dir: Option<TempDir>,
}

/// How to start a mount.
#[derive(Default)]
pub struct MountSpec {
    /// Arguments before the positional ones, e.g. ["-o", "partition=2"].
    pub args: Vec<String>,
    /// Arguments after the positional ones (fstab style).
    pub trailing: Vec<String>,
    /// Run as uid:gid through setpriv; the mount point is then made theirs.
    pub user: Option<(u32, u32)>,
}

impl MountSpec {
    /// `-o O` exactly.
    pub fn opts(o: &str) -> MountSpec {
        MountSpec { args: vec!["-o".into(), o.into()], ..Default::default() }
    }
    /// `-o ro[,O]`.
    pub fn ro(o: &str) -> MountSpec {
        Self::opts(&if o.is_empty() { "ro".to_string() } else { format!("ro,{o}") })
    }
}

impl Mounted {
    /// Mounts `image` read-only (`-o ro`) in the background on a fresh mount point; panics if
    /// that fails. Read-only mounts share the image lock, so tests may mount one image often.
    pub fn new(image: &Path) -> Mounted {
        Self::with(image, MountSpec::ro(""))
    }

    pub fn with(image: &Path, spec: MountSpec) -> Mounted {
        match Self::try_with(image, spec) {
            Ok(m) => m,
            Err(out) => panic!("{} failed: {:?}\nstdout: {}\nstderr: {}", out.what, out.status, out.stdout, out.stderr),
        }
    }

    /// Runs rumpfs-mount; on exit 0, checks that the mount is there *now* (the contract: the
    /// parent exits only once the mount is ready); otherwise gives back the command's output.
    pub fn try_with(image: &Path, spec: MountSpec) -> Result<Mounted, Out> {
        ensure_fusectl();
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        if let Some((uid, gid)) = spec.user {
            std::os::unix::fs::chown(&mnt, Some(uid), Some(gid)).unwrap();
        }
        let mut args: Vec<OsString> = spec.args.iter().map(OsString::from).collect();
        args.push(image.into());
        args.push(mnt.clone().into());
        args.extend(spec.trailing.iter().map(OsString::from));
        let out = run_cli(&args, spec.user);
        let mounted = is_mounted(&mnt);
        if !out.ok() {
            if mounted {
                let _ = run(tool("umount").arg("-l").arg(&mnt));
                panic!("{} failed ({:?}) but left a mount on {}; stderr: {}", out.what, out.status, mnt.display(), out.stderr);
            }
            return Err(out);
        }
        assert!(mounted, "{} exited 0 but {} is not mounted yet (not ready on return)\nstderr: {}", out.what, mnt.display(), out.stderr);
        let pids = server_pids(&mnt);
        let conn = fs::metadata(&mnt).ok().map(|m| libc::minor(m.dev()));
        Ok(Mounted { mnt, image: image.to_path_buf(), pids, conn, user: spec.user, out, _dir: Some(dir) })
    }

    /// A guard for a mount made some other way: unmounts it on drop.
    pub fn adopt_for_cleanup(mnt: &Path) -> Mounted {
        use std::os::unix::process::ExitStatusExt;
        let out = Out { status: ExitStatus::from_raw(0), stdout: String::new(), stderr: String::new(), what: "adopted".into() };
        Mounted { mnt: mnt.to_path_buf(), image: PathBuf::new(), pids: server_pids(mnt), conn: None, user: None, out, _dir: None }
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn entry(&self) -> Option<MountEntry> {
        mount_entry(&self.mnt)
    }

    /// Runs `f`; if it takes longer than `limit`, aborts the FUSE connection (so every pending
    /// request fails) and panics: a hang is a failure, not a stuck test run.
    pub fn deadline<T>(&self, limit: Duration, f: impl FnOnce() -> T) -> T {
        let hung = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let res = std::thread::scope(|s| {
            let hung = &hung;
            s.spawn(move || {
                // Disconnected (f panicked and dropped tx) is not a hang.
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    hung.store(true, Ordering::SeqCst);
                    if let Some(c) = self.conn {
                        let _ = fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
                    }
                }
            });
            let tx = tx; // dropped here if f panics, which ends the watchdog
            let r = f();
            let _ = tx.send(());
            r
        });
        assert!(!hung.load(Ordering::SeqCst), "the mount of {} hung for {limit:?}; aborted the FUSE connection", self.image.display());
        res
    }

    /// Whether the server still answers (stat of the root works).
    pub fn alive(&self) -> bool {
        self.pids.iter().all(|p| pid_alive(*p)) && fs::metadata(&self.mnt).is_ok() && is_mounted(&self.mnt)
    }

    /// Unmounts with fusermount3 -u (as the mounting user) and checks that it worked and the
    /// server exited.
    pub fn unmount(mut self) {
        let problems = self.teardown();
        assert!(problems.is_empty(), "unmount of {}: {}", self.mnt.display(), problems.join("; "));
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if is_mounted(&self.mnt) {
            let try_unmount = || match self.user {
                Some((uid, gid)) => as_user(uid, gid, "fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()]),
                None => run(tool("fusermount3").arg("-u").arg(&self.mnt)),
            };
            let mut out = try_unmount();
            // EBUSY can be transient: a child that another test thread forks inherits our open
            // files until it execs.
            for _ in 0..20 {
                if out.ok() || !out.stderr.contains("busy") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                out = try_unmount();
            }
            if !out.ok() {
                problems.push(format!("fusermount3 -u: {}", out.stderr.trim()));
                // Only this path, lazily.
                let _ = run(tool("umount").arg("-l").arg(&self.mnt));
            }
        }
        for &pid in &self.pids {
            if !wait_pid_gone(pid, Duration::from_secs(15)) {
                problems.push(format!("server pid {pid} still runs 15 s after unmount; killing it"));
                // SAFETY: a pid of a server we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        self.pids.clear();
        problems
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            if std::thread::panicking() {
                eprintln!("cleanup of {}: {}", self.mnt.display(), problems.join("; "));
            } else {
                panic!("cleanup of {}: {}", self.mnt.display(), problems.join("; "));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing trees
// ---------------------------------------------------------------------------------------------

/// What [`compare_trees`] compares.
#[derive(Clone, Debug)]
pub struct CompareOpts {
    /// Compare mtimes to the nanosecond (256-byte inodes); else to the second, and the mount
    /// must show 0 ns.
    pub ns_times: bool,
    /// Paths (relative) whose attributes and content are not compared (only their names).
    pub skip: Vec<PathBuf>,
    /// Compare extended attributes.
    pub xattrs: bool,
    /// Files of at least this size are compared region by region (data regions of the source
    /// found with SEEK_DATA/SEEK_HOLE, plus samples of the holes) instead of byte by byte.
    pub sparse_threshold: u64,
    /// The mount's root has a lost+found the source lacks.
    pub lost_found: bool,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts { ns_times: true, skip: Vec::new(), xattrs: true, sparse_threshold: 256 * MIB, lost_found: true }
    }
}

impl CompareOpts {
    pub fn for_kind(kind: FsKind) -> CompareOpts {
        CompareOpts { ns_times: kind.wide_inodes(), ..Default::default() }
    }
}

fn errno_str(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{e} (errno {n})"),
        None => e.to_string(),
    }
}

fn kind_of(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(p: &Path) -> io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The data regions of a file, by SEEK_DATA / SEEK_HOLE.
pub fn data_regions(f: &File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: a valid open fd.
        let d = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { size as i64 } else { h };
        regions.push((d as u64, h as u64));
        pos = h;
    }
    regions
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn compare_sparse(src: &Path, mnt: &Path, size: u64, rel: &Path, diffs: &mut Vec<String>) {
    let (s, m) = match (File::open(src), File::open(mnt)) {
        (Ok(s), Ok(m)) => (s, m),
        (_, Err(e)) => return diffs.push(format!("{}: open on the mount: {}", rel.display(), errno_str(&e))),
        (Err(e), _) => panic!("open {}: {e}", src.display()),
    };
    let regions = data_regions(&s, size);
    let mut a = vec![0u8; MIB as usize];
    let mut b = vec![0u8; MIB as usize];
    for &(start, end) in &regions {
        let mut off = start;
        while off < end {
            let n = ((end - off).min(MIB)) as usize;
            let ra = read_full_at(&s, &mut a[..n], off).unwrap();
            match read_full_at(&m, &mut b[..n], off) {
                Err(e) => return diffs.push(format!("{}: read at {off}: {}", rel.display(), errno_str(&e))),
                Ok(rb) if rb != ra => return diffs.push(format!("{}: short read at {off}: {rb} of {ra} bytes", rel.display())),
                Ok(_) if a[..n] != b[..n] => {
                    let first = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y).unwrap();
                    return diffs.push(format!("{}: data differs at byte {}", rel.display(), off + first as u64));
                }
                Ok(_) => {}
            }
            off += n as u64;
        }
    }
    // Holes read as zeros: samples spread over the file, plus the bytes next to each region.
    let mut samples: Vec<u64> = (0..64).map(|i| size / 64 * i + 4096 * (i % 7)).collect();
    for &(start, end) in &regions {
        samples.push(start.saturating_sub(4096));
        samples.push(end);
    }
    for off in samples {
        if off >= size {
            continue;
        }
        let n = (size - off).min(4096) as usize;
        let ra = read_full_at(&s, &mut a[..n], off).unwrap();
        match read_full_at(&m, &mut b[..n], off) {
            Err(e) => return diffs.push(format!("{}: read at {off}: {}", rel.display(), errno_str(&e))),
            Ok(rb) if rb != ra || a[..n] != b[..n] => return diffs.push(format!("{}: {n} bytes at {off} differ (hole or edge)", rel.display())),
            Ok(_) => {}
        }
    }
    match m.read_at(&mut b[..16], size) {
        Ok(0) => {}
        Ok(n) => diffs.push(format!("{}: read at end of file returned {n} bytes", rel.display())),
        Err(e) => diffs.push(format!("{}: read at end of file: {}", rel.display(), errno_str(&e))),
    }
}

struct Walk<'a> {
    src: &'a Path,
    mnt: &'a Path,
    opts: &'a CompareOpts,
    diffs: Vec<String>,
    // inode -> paths, for entries that are not directories (hard links share an inode)
    src_inodes: BTreeMap<u64, BTreeSet<PathBuf>>,
    mnt_inodes: BTreeMap<u64, BTreeSet<PathBuf>>,
}

impl Walk<'_> {
    fn d(&mut self, rel: &Path, msg: String) {
        self.diffs.push(format!("/{}: {msg}", rel.display()));
    }

    fn dir(&mut self, rel: &Path) {
        let list = |p: &Path| -> io::Result<BTreeSet<OsString>> { fs::read_dir(p)?.map(|e| e.map(|e| e.file_name())).collect() };
        let src_names = list(&self.src.join(rel)).unwrap_or_else(|e| panic!("readdir {}: {e}", self.src.join(rel).display()));
        let mut mnt_names = match list(&self.mnt.join(rel)) {
            Ok(n) => n,
            Err(e) => return self.d(rel, format!("readdir on the mount: {}", errno_str(&e))),
        };
        if rel.as_os_str().is_empty() && self.opts.lost_found && !mnt_names.remove(OsStr::new("lost+found")) {
            self.d(rel, "no lost+found in the image's root".into());
        }
        for n in src_names.difference(&mnt_names) {
            self.d(&rel.join(n), "missing on the mount".into());
        }
        for n in mnt_names.difference(&src_names) {
            self.d(&rel.join(n), "on the mount but not in the source".into());
        }
        for n in src_names.intersection(&mnt_names) {
            self.entry(&rel.join(n));
        }
    }

    fn entry(&mut self, rel: &Path) {
        let sp = self.src.join(rel);
        let mp = self.mnt.join(rel);
        let s = fs::symlink_metadata(&sp).unwrap();
        if self.opts.skip.iter().any(|x| x == rel) {
            return;
        }
        let m = match fs::symlink_metadata(&mp) {
            Ok(m) => m,
            Err(e) => return self.d(rel, format!("lstat on the mount: {}", errno_str(&e))),
        };
        let (sk, mk) = (kind_of(&s), kind_of(&m));
        if sk != mk {
            return self.d(rel, format!("type {mk}, want {sk}"));
        }
        if s.mode() & 0o7777 != m.mode() & 0o7777 {
            self.d(rel, format!("mode {:o}, want {:o}", m.mode() & 0o7777, s.mode() & 0o7777));
        }
        if (s.uid(), s.gid()) != (m.uid(), m.gid()) {
            self.d(rel, format!("owner {}:{}, want {}:{}", m.uid(), m.gid(), s.uid(), s.gid()));
        }
        if sk != "dir" && s.size() != m.size() {
            self.d(rel, format!("size {}, want {}", m.size(), s.size()));
        }
        if self.opts.ns_times {
            if (s.mtime(), s.mtime_nsec()) != (m.mtime(), m.mtime_nsec()) {
                self.d(rel, format!("mtime {}.{:09}, want {}.{:09}", m.mtime(), m.mtime_nsec(), s.mtime(), s.mtime_nsec()));
            }
        } else if s.mtime() != m.mtime() || m.mtime_nsec() != 0 {
            self.d(rel, format!("mtime {}.{:09}, want {}.000000000", m.mtime(), m.mtime_nsec(), s.mtime()));
        }
        if s.nlink() != m.nlink() {
            self.d(rel, format!("nlink {}, want {}", m.nlink(), s.nlink()));
        }
        if matches!(sk, "chardev" | "blockdev") && s.rdev() != m.rdev() {
            let (a, b) = (s.rdev(), m.rdev());
            self.d(rel, format!("rdev {}:{}, want {}:{}", libc::major(b), libc::minor(b), libc::major(a), libc::minor(a)));
        }
        if sk != "dir" {
            self.src_inodes.entry(s.ino()).or_default().insert(rel.to_path_buf());
            self.mnt_inodes.entry(m.ino()).or_default().insert(rel.to_path_buf());
        }
        match sk {
            "symlink" => match fs::read_link(&mp) {
                Ok(t) if t == fs::read_link(&sp).unwrap() => {}
                Ok(t) => self.d(rel, format!("symlink target {:?}, want {:?}", t, fs::read_link(&sp).unwrap())),
                Err(e) => self.d(rel, format!("readlink on the mount: {}", errno_str(&e))),
            },
            "file" => {
                if s.size() >= self.opts.sparse_threshold {
                    let mut d = Vec::new();
                    compare_sparse(&sp, &mp, s.size(), rel, &mut d);
                    self.diffs.extend(d.into_iter().map(|x| format!("/{x}")));
                } else {
                    match sha256_file(&mp) {
                        Ok(h) if h == sha256_file(&sp).unwrap() => {}
                        Ok(_) => self.d(rel, "content differs (sha256)".into()),
                        Err(e) => self.d(rel, format!("read on the mount: {}", errno_str(&e))),
                    }
                }
            }
            _ => {}
        }
        if self.opts.xattrs {
            let sx = xattrs(&sp).unwrap();
            match xattrs(&mp) {
                Ok(mx) if mx == sx => {}
                Ok(mx) => {
                    let show = |x: &BTreeMap<Vec<u8>, Vec<u8>>| {
                        x.iter().map(|(k, v)| format!("{}={:?}", String::from_utf8_lossy(k), String::from_utf8_lossy(v))).collect::<Vec<_>>().join(", ")
                    };
                    self.d(rel, format!("xattrs {{{}}}, want {{{}}}", show(&mx), show(&sx)));
                }
                Err(e) => self.d(rel, format!("xattrs on the mount: {}", errno_str(&e))),
            }
        }
        if sk == "dir" {
            self.dir(rel);
        }
    }
}

/// Walks `src` and `mnt` (lstat, never following symlinks) and lists every difference: names,
/// type, mode bits, owner, size, mtime, nlink, rdev, symlink targets, content, xattrs, and which
/// paths are hard links of each other. The root's own attributes are not compared (mke2fs -d
/// makes its own root); `lost+found` exists only on the mount.
pub fn compare_trees(src: &Path, mnt: &Path, opts: &CompareOpts) -> Vec<String> {
    let mut w = Walk { src, mnt, opts, diffs: Vec::new(), src_inodes: BTreeMap::new(), mnt_inodes: BTreeMap::new() };
    w.dir(Path::new(""));
    let groups = |m: &BTreeMap<u64, BTreeSet<PathBuf>>| -> BTreeSet<BTreeSet<PathBuf>> { m.values().cloned().collect() };
    let (sg, mg) = (groups(&w.src_inodes), groups(&w.mnt_inodes));
    for g in mg.difference(&sg) {
        w.diffs.push(format!("on the mount these paths share one inode number: {g:?}"));
    }
    for g in sg.difference(&mg) {
        w.diffs.push(format!("in the source these paths are one inode: {g:?}"));
    }
    w.diffs
}

/// Panics, listing every difference, unless the trees compare equal.
pub fn assert_trees_equal(src: &Path, mnt: &Path, opts: &CompareOpts) {
    let diffs = compare_trees(src, mnt, opts);
    if !diffs.is_empty() {
        let shown: Vec<&String> = diffs.iter().take(300).collect();
        panic!(
            "{} differences between {} and the mount {}:\n  {}{}",
            diffs.len(),
            src.display(),
            mnt.display(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
            if diffs.len() > 300 { "\n  ..." } else { "" }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Other oracles
// ---------------------------------------------------------------------------------------------

/// Lines in the format of ../shared/test-images/manifests/*.txt, made from a walk of a mount:
/// `d 0o755 /dir/`, `f 0o644 /file size=N sha256=H nlink=N`, `l 0o777 /link -> target`.
pub fn manifest_of(mnt: &Path) -> Result<Vec<String>, String> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
        let dir = root.join(rel.trim_start_matches('/'));
        let mut names: Vec<OsString> = fs::read_dir(&dir)
            .map_err(|e| format!("readdir {rel}/: {e}"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("readdir {rel}/: {e}"))?;
        names.sort();
        for n in names {
            let path = format!("{rel}/{}", n.to_string_lossy());
            let p = root.join(path.trim_start_matches('/'));
            let m = fs::symlink_metadata(&p).map_err(|e| format!("lstat {path}: {e}"))?;
            let mode = m.mode() & 0o7777;
            if m.is_dir() {
                out.push(format!("d 0o{mode:o} {path}/"));
                walk(root, &path, out)?;
            } else if m.file_type().is_symlink() {
                let t = fs::read_link(&p).map_err(|e| format!("readlink {path}: {e}"))?;
                out.push(format!("l 0o{mode:o} {path} -> {}", t.display()));
            } else if m.is_file() {
                let h = sha256_file(&p).map_err(|e| format!("read {path}: {e}"))?;
                out.push(format!("f 0o{mode:o} {path} size={} sha256={h} nlink={}", m.size(), m.nlink()));
            } else {
                out.push(format!("{} 0o{mode:o} {path}", kind_of(&m)));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(mnt, "", &mut out)?;
    Ok(out)
}

/// The differences between a manifest and what a mount shows (as sorted sets of lines).
pub fn manifest_diff(expected: &str, actual: &[String]) -> Vec<String> {
    let want: BTreeSet<&str> = expected.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let have: BTreeSet<&str> = actual.iter().map(String::as_str).collect();
    let mut d: Vec<String> = want.difference(&have).map(|l| format!("missing: {l}")).collect();
    d.extend(have.difference(&want).map(|l| format!("unexpected: {l}")));
    d
}

/// An inode as debugfs lists it (`ls -p`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugfsEntry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `ls -p` gives sizes of regular files only.
    pub size: Option<u64>,
}

/// The whole tree of an image as debugfs sees it: "/path" -> entry (the root is "/").
pub fn debugfs_tree(img: &Path) -> BTreeMap<String, DebugfsEntry> {
    fn parse(line: &str) -> Option<(String, DebugfsEntry)> {
        // /ino/mode/uid/gid/name/size/
        let l = line.trim();
        let l = l.strip_prefix('/')?.strip_suffix('/')?;
        let mut it = l.splitn(5, '/');
        let _ino = it.next()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let rest = it.next()?;
        let (name, size) = rest.rsplit_once('/')?;
        Some((name.to_string(), DebugfsEntry { mode, uid, gid, size: size.parse().ok() }))
    }
    let mut out = BTreeMap::new();
    let mut todo = vec!["/".to_string()];
    while let Some(dir) = todo.pop() {
        let listing = debugfs_req(img, &format!("ls -p \"{dir}\""));
        for line in listing.lines() {
            let Some((name, e)) = parse(line) else { continue };
            if name == "." || name == ".." || name.is_empty() {
                if name == "." && dir == "/" {
                    out.insert("/".to_string(), e);
                }
                continue;
            }
            let path = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
            if e.mode & 0o170000 == 0o040000 {
                todo.push(path.clone());
            }
            out.insert(path, e);
        }
    }
    out
}

/// Compares a mount with debugfs's view of the image it serves: names, mode (type and bits),
/// owner, size.
pub fn compare_with_debugfs(img: &Path, mnt: &Path) -> Vec<String> {
    let want = debugfs_tree(img);
    let mut have = BTreeMap::new();
    let mut diffs = Vec::new();
    let mut todo = vec![String::from("/")];
    match fs::symlink_metadata(mnt) {
        Ok(m) => {
            have.insert("/".to_string(), DebugfsEntry { mode: m.mode(), uid: m.uid(), gid: m.gid(), size: Some(m.size()) });
        }
        Err(e) => diffs.push(format!("/: lstat: {e}")),
    }
    while let Some(dir) = todo.pop() {
        let rd = match fs::read_dir(mnt.join(dir.trim_start_matches('/'))) {
            Ok(r) => r,
            Err(e) => {
                diffs.push(format!("{dir}: readdir: {}", errno_str(&e)));
                continue;
            }
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    diffs.push(format!("{dir}: readdir: {}", errno_str(&err)));
                    break;
                }
            };
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
            match fs::symlink_metadata(e.path()) {
                Ok(m) => {
                    if m.is_dir() {
                        todo.push(path.clone());
                    }
                    have.insert(path, DebugfsEntry { mode: m.mode(), uid: m.uid(), gid: m.gid(), size: Some(m.size()) });
                }
                Err(err) => diffs.push(format!("{path}: lstat: {}", errno_str(&err))),
            }
        }
    }
    for (p, w) in &want {
        match have.get(p) {
            None => diffs.push(format!("{p}: missing on the mount")),
            Some(h) if (h.mode, h.uid, h.gid) != (w.mode, w.uid, w.gid) || (w.size.is_some() && h.size != w.size) => {
                diffs.push(format!("{p}: mount has {h:?}, debugfs {w:?}"))
            }
            Some(_) => {}
        }
    }
    for p in have.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{p}: on the mount, not in debugfs's listing"));
    }
    diffs
}

/// Link counts of these paths ("/a/b") as debugfs reads them (one debugfs run).
pub fn debugfs_links(img: &Path, paths: &[String]) -> BTreeMap<String, u64> {
    let cmds: String = paths.iter().map(|p| format!("stat \"{p}\"\n")).collect();
    let out = debugfs(img, false, &cmds).stdout;
    let mut links = BTreeMap::new();
    for chunk in out.split("debugfs: stat \"").skip(1) {
        let Some((path, rest)) = chunk.split_once('"') else { continue };
        if let Some(n) = rest.split("Links: ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()) {
            links.insert(path.to_string(), n);
        }
    }
    links
}

/// Expects an io::Result to be the error `errno`.
pub fn expect_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        other => panic!("{what}: got {other:?}, want errno {errno} ({})", io::Error::from_raw_os_error(errno)),
    }
}

/// Serialises tests that change global state (e.g. /dev/fuse permissions).
pub fn global_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unpacks `NAME.zst` into `dir` with zstd.
pub fn unzstd(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap().to_string_lossy().trim_end_matches(".zst").to_string();
    let out = dir.join(name);
    run_ok(tool("zstd").args(["-q", "-d", "-f", "-o"]).arg(&out).arg(src));
    out
}

/// Bytes of a path as an OsStr (for building arguments).
pub fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// Reads a whole file into a Vec, as a helper that keeps errors as values.
pub fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    fs::read(p)
}

// ---------------------------------------------------------------------------------------
// FFS images (makefs) and the checker binary

/// The `rumpfs-fsck` binary: `$RUMPFS_FSCK_BIN`, else next to `rumpfs-mount`.
pub fn fsck_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RUMPFS_FSCK_BIN") {
        return PathBuf::from(p);
    }
    let p = mount_bin().with_file_name("rumpfs-fsck");
    assert!(p.is_file(), "{} is missing; build it: cargo build --release -p rumpfs-mount --bins", p.display());
    p
}

/// A source tree for makefs: every kind of file, boundary sizes, a big directory (built once
/// per test process, in the shared directory).
pub fn ffs_tree() -> &'static SourceTree {
    static TREE: OnceLock<SourceTree> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = shared_subdir("ffs-src").join("tree");
        let spec = TreeSpec { seed: 0xff5, full: true, big_dir_entries: 3000, sparse_5g: false, wide_times: true };
        let tree = make_tree(&root, spec, "ffs");
        // Sizes at the FFS block-map boundaries for 4k..64k blocks (direct, single, double).
        let mut rng = Rng::new(99);
        let ffs = root.join("ffs-sizes");
        fs::create_dir(&ffs).unwrap();
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
            fs::write(ffs.join(name), data).unwrap();
        }
        set_mtime(&ffs, 1_200_000_000, 0);
        tree
    })
}

/// `makefs -t ffs -B order -o opts -s 64m -f 20% img src` (Debian's NetBSD makefs).
pub fn makefs(img: &Path, src: &Path, opts: &str, order: &str) {
    makefs_sized(img, src, opts, order, "64m", "20%");
}

/// `makefs -t ffs -B order -o opts -s size -f free_files img src`: `free_files` is how many
/// inodes stay free beyond the source's (a count, or a percentage of the source's), so an
/// image made to be written to wants a count.
pub fn makefs_sized(img: &Path, src: &Path, opts: &str, order: &str, size: &str, free_files: &str) {
    let out = run(tool("makefs").args(["-t", "ffs", "-B", order, "-o", opts, "-s", size, "-f", free_files]).arg(img).arg(src));
    assert!(out.ok(), "makefs -o {opts}: {}\n{}", out.stdout, out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Reading through an in-process kernel (the driver tests, no FUSE)
// ---------------------------------------------------------------------------------------------

/// The whole content of file `ino` of a mount, read `chunk` bytes at a time.
pub fn vfs_read_all(m: &vfs_faction::Mount, ino: vfs_faction::Ino, chunk: usize) -> vfs_faction::KResult<Vec<u8>> {
    let vn = m.open(&vfs_faction::Cred::root(), ino, vfs_faction::OpenFlags { read: true, ..Default::default() })?;
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

/// All entries of directory `ino` of a mount (name, inode, type), read seven at a time
/// through cookies, so that resuming mid-directory is exercised.
pub fn vfs_list_dir(m: &vfs_faction::Mount, ino: vfs_faction::Ino) -> vfs_faction::KResult<Vec<(Vec<u8>, vfs_faction::Ino, vfs_faction::FileType)>> {
    let vn = m.opendir(&vfs_faction::Cred::root(), ino)?;
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

/// One random operation done on both trees (a mount and a reference directory), by a thread
/// that owns directory `own` and shares `shared` with the others: `Err` says how the two
/// outcomes differed.
pub type MirroredOp = fn(&mut Rng, [&Path; 2], &str, &str) -> Result<(), String>;

/// `threads` threads, each doing `ops` seeded random operations `op` on both `roots` at once,
/// each in its own directory `t{n}` and in the `shared` one (all made here): the outcomes
/// that differed between the two trees.
pub fn mirrored_random_ops(roots: [&Path; 2], threads: u64, ops: u64, seed: u64, op: MirroredOp) -> Vec<String> {
    for root in roots {
        fs::create_dir(root.join("shared")).unwrap();
        for t in 0..threads {
            fs::create_dir(root.join(format!("t{t}"))).unwrap();
        }
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed * 1000 + t);
                    let own = format!("t{t}");
                    (0..ops).filter_map(|_| op(&mut rng, roots, &own, "shared").err()).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}
