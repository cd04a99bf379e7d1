//! End to end through FUSE: the command line (options, exit status, errors), partitioned
//! images, ordinary users, signals, and corrupt images.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rumpfs_tests::*;

const TOOLS: &[&str] = &["mke2fs", "debugfs", "e2fsck", "dumpe2fs", "fusermount3", "sfdisk", "sgdisk", "dd", "setpriv", "umount", "cat", "ls"];

fn small(kind: FsKind, label: &str) -> (TempDir, SourceTree, PathBuf) {
    require_tools(TOOLS);
    small_image(kind, label)
}

fn assert_same(tree: &SourceTree, m: &Mounted, kind: FsKind) {
    m.deadline(Duration::from_secs(120), || assert_trees_equal(&tree.root, &m.mnt, &CompareOpts::for_kind(kind)));
}

fn marker(m: &Mounted) -> String {
    fs::read_to_string(m.path("marker")).unwrap_or_else(|e| format!("<{e}>"))
}

/// Runs the CLI on `img` and a fresh mount point, expecting failure; checks nothing is mounted.
fn mount_fails(img: &Path, spec: MountSpec) -> Out {
    match Mounted::try_with(img, spec) {
        Ok(m) => panic!("mounting {} succeeded, want failure; stderr: {}", img.display(), m.out.stderr),
        Err(out) => out,
    }
}

// ---------------------------------------------------------------------------------------------
// Options and exit status
// ---------------------------------------------------------------------------------------------

#[test]
fn list_components_names_ext2fs_and_factions() {
    let out = run_cli(&["--list-components"], None).check();
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("ext2fs"))
        .unwrap_or_else(|| panic!("--list-components does not list ext2fs:\n{}", out.stdout));
    let l = line.to_lowercase();
    assert!(l.contains("vfs") && l.contains("dev"), "ext2fs line does not name its factions vfs and dev: {line:?}");
}

/// Read-write mounts take the image for themselves: while one is mounted, no second mount
/// (read-only or read-write) gets the image; while read-only mounts hold it, read-write is
/// refused; several read-only mounts share it. Unmounting a read-write mount leaves a clean
/// file system (e2fsck -fn is the judge).
#[test]
fn read_write_mount_is_exclusive() {
    let (_d, _tree, img) = small(FsKind::Ext4, "rw-lock");
    let rw = Mounted::with(&img, MountSpec::opts("rw"));
    assert!(rw.entry().unwrap().options.split(',').any(|o| o == "rw"), "{:?}", rw.entry());
    for o in ["ro", "rw"] {
        let out = mount_fails(&img, MountSpec::opts(o));
        assert_cli_error(&out, EXIT_MOUNT, &[]);
    }
    fs::write(rw.path("written-by-e2e"), b"new content\n").unwrap();
    rw.unmount();
    let fsck = run(tool("e2fsck").arg("-fn").arg(&img));
    assert!(fsck.ok(), "e2fsck -fn after a read-write mount: {}{}", fsck.stdout, fsck.stderr);
    assert_eq!(debugfs_req(&img, "cat /written-by-e2e"), "new content\n");
    let a = Mounted::new(&img);
    let b = Mounted::new(&img);
    assert_eq!(fs::read(a.path("written-by-e2e")).unwrap(), b"new content\n");
    assert_eq!(fs::read(b.path("files/hello.txt")).unwrap(), b"hello, world\n");
    assert_cli_error(&mount_fails(&img, MountSpec::opts("rw")), EXIT_MOUNT, &[]);
}

#[test]
fn options_after_positionals_and_generic_options() {
    let (_d, tree, img) = small(FsKind::Ext4, "fstab");
    // mount.fuse3 style: options after the positional arguments, with fstab's generic ones.
    let spec = MountSpec {
        trailing: vec!["-o".into(), "ro,defaults,noatime,nodev,nosuid,noexec,auto,nofail,_netdev,x-systemd.automount,comment=e2e".into()],
        ..Default::default()
    };
    let m = Mounted::with(&img, spec);
    assert_same(&tree, &m, FsKind::Ext4);
}

#[test]
fn tiny_cache_and_one_vcpu() {
    let (_d, tree, img) = small(FsKind::Ext2_1k, "cache");
    let m = Mounted::with(&img, MountSpec::ro("vcpus=1,cache=512K"));
    assert_same(&tree, &m, FsKind::Ext2_1k);
    let m2 = Mounted::with(&img, MountSpec { args: vec!["-o".into(), "vcpus=3,ro".into(), "-o".into(), "cache=1M".into()], ..Default::default() });
    assert_same(&tree, &m2, FsKind::Ext2_1k);
}

/// The read-ahead of a mount's backing device, found through /proc/self/mountinfo (root
/// cannot stat another user's FUSE mount).
fn read_ahead_kb(m: &Mounted) -> u32 {
    fs::read_to_string(read_ahead_file(m)).unwrap().trim().parse().unwrap()
}

fn read_ahead_file(m: &Mounted) -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.mnt.to_str().unwrap();
    let dev = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mnt)).then(|| f[2].to_string())
    });
    let dev = dev.unwrap_or_else(|| panic!("{mnt} not in mountinfo"));
    PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb"))
}

/// Mounted by root, a sequential read comes to us in 1 MiB requests (the kernel's default
/// read-ahead for FUSE, 128 KiB, would cut it into eight round trips).
#[test]
fn root_mounts_read_ahead_a_megabyte() {
    let (_d, tree, img) = small(FsKind::Ext2_1k, "readahead");
    let m = Mounted::with(&img, MountSpec::ro(""));
    // Where /sys is read-only even to root (some containers), nothing can raise it.
    if let Err(e) = fs::OpenOptions::new().write(true).open(read_ahead_file(&m)) {
        eprintln!("SKIP: {}: {e}", read_ahead_file(&m).display());
        return;
    }
    assert_eq!(read_ahead_kb(&m), 1024);
    assert_same(&tree, &m, FsKind::Ext2_1k);
}

/// CPU time (user + system, in clock ticks) the server processes have used.
fn cpu_ticks(m: &Mounted) -> u64 {
    m.pids
        .iter()
        .map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3.
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        })
        .sum()
}

/// A worker polls /dev/fuse while requests keep coming (spin=, on by default with two or more
/// cores); once they stop, so must the polling: an idle mount takes no CPU.
#[test]
fn an_idle_mount_uses_no_cpu_after_a_burst() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "idle");
    for spin in ["spin=300", "spin=20000"] {
        let m = Mounted::with(&img, MountSpec::opts(&format!("rw,{spin}")));
        assert!(!m.pids.is_empty());
        for i in 0..300 {
            fs::write(m.path(&format!("f{i}")), b"burst").unwrap();
        }
        // Past the poll window (the longest tried is 20 ms), then a second of nothing.
        std::thread::sleep(Duration::from_millis(200));
        let before = cpu_ticks(&m);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_ticks(&m) - before;
        // Polling a whole CPU would be ~100 ticks; allow a few for timers and scheduling.
        assert!(used <= 5, "{spin}: the idle server used {used} ticks of CPU in a second");
        m.unmount();
    }
}

#[test]
fn fsname_and_subtype_show_in_proc_mounts() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "names");
    let m = Mounted::with(&img, MountSpec::ro("fsname=e2e-source,subtype=e2etype"));
    let e = m.entry().unwrap();
    assert_eq!(e.source, "e2e-source");
    assert_eq!(e.fstype, "fuse.e2etype");
}

#[test]
fn default_mount_shows_type_and_source() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "default");
    let m = Mounted::with(&img, MountSpec::default());
    let e = m.entry().unwrap();
    assert!(e.fstype == "fuse.rumpfs-mount" || e.fstype.starts_with("fuseblk"), "fstype {}", e.fstype);
    assert_eq!(Path::new(&e.source), img);
}

#[test]
fn unknown_option_is_a_usage_error() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "unknown");
    let out = mount_fails(&img, MountSpec::opts("frobnicate"));
    assert_cli_error(&out, EXIT_USAGE, &["unknown option 'frobnicate'"]);
    let out = mount_fails(&img, MountSpec { trailing: vec!["-o".into(), "ro,bogus=1".into()], ..Default::default() });
    assert_cli_error(&out, EXIT_USAGE, &["unknown option", "bogus"]);
}

#[test]
fn no_arguments_is_a_usage_error() {
    let out = run_cli::<&str>(&[], None);
    assert_eq!(out.code(), Some(EXIT_USAGE), "stderr: {}", out.stderr);
    let out = run_cli(&["only-one-argument"], None);
    assert_eq!(out.code(), Some(EXIT_USAGE), "stderr: {}", out.stderr);
}

#[test]
fn missing_image() {
    require_tools(TOOLS);
    let d = tempdir();
    let out = mount_fails(&d.path().join("no-such.img"), MountSpec::ro(""));
    assert_cli_error(&out, EXIT_MOUNT, &["no-such.img"]);
}

#[test]
fn missing_mountpoint() {
    let (d, _t, img) = small(FsKind::Ext2_1k, "nomnt");
    let mnt = d.path().join("no-such-dir");
    let out = run_cli(&[img.as_os_str(), mnt.as_os_str()], None);
    assert_cli_error(&out, EXIT_MOUNT, &["no-such-dir"]);
    let file = d.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let out = run_cli(&[img.as_os_str(), file.as_os_str()], None);
    assert_cli_error(&out, EXIT_MOUNT, &[]);
    assert!(!is_mounted(&file));
}

#[test]
fn random_bytes_are_not_a_file_system() {
    require_tools(TOOLS);
    let d = tempdir();
    let img = d.path().join("random.img");
    let mut buf = vec![0u8; 4 << 20];
    Rng::new(1).fill(&mut buf);
    fs::write(&img, &buf).unwrap();
    assert_cli_error(&mount_fails(&img, MountSpec::ro("")), EXIT_MOUNT, &[]);
    // An empty file, too.
    let empty = d.path().join("empty.img");
    File::create(&empty).unwrap();
    assert_cli_error(&mount_fails(&empty, MountSpec::ro("")), EXIT_MOUNT, &[]);
}

#[test]
fn zeroed_superblock() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "zeroed");
    fs::OpenOptions::new().write(true).open(&img).unwrap().write_all_at(&[0u8; 1024], 1024).unwrap();
    assert_cli_error(&mount_fails(&img, MountSpec::ro("")), EXIT_MOUNT, &[]);
}

#[test]
fn truncated_images() {
    let (_d, tree, img) = small(FsKind::Ext2_1k, "trunc");
    // Cut inside the superblock: a clean refusal.
    let tiny = img.with_extension("tiny");
    fs::copy(&img, &tiny).unwrap();
    File::options().write(true).open(&tiny).unwrap().set_len(1500).unwrap();
    assert_cli_error(&mount_fails(&tiny, MountSpec::ro("")), EXIT_MOUNT, &[]);
    // Cut in the middle of the data: either a clean refusal, or a mount where what lies past
    // the end reads as EIO, nothing else goes wrong, and the server survives.
    File::options().write(true).open(&img).unwrap().set_len(fs::metadata(&img).unwrap().len() / 2).unwrap();
    match Mounted::try_with(&img, MountSpec::ro("")) {
        Err(out) => assert_cli_error(&out, EXIT_MOUNT, &[]),
        Ok(m) => {
            let diffs = m.deadline(Duration::from_secs(60), || compare_trees(&tree.root, &m.mnt, &CompareOpts::default()));
            let not_eio: Vec<&String> = diffs.iter().filter(|d| !d.contains("(errno 5)")).collect();
            assert!(not_eio.is_empty(), "truncated image: differences other than EIO: {not_eio:#?}");
            assert!(m.alive(), "the server died reading a truncated image");
        }
    }
}

#[test]
fn unknown_incompatible_feature_is_refused() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "incompat");
    debugfs(&img, true, "feature FEATURE_I31\n");
    let out = mount_fails(&img, MountSpec::ro(""));
    assert_cli_error(&out, EXIT_MOUNT, &["feature"]);
}

#[test]
fn journal_needing_recovery_is_refused() {
    let (_d, _t, img) = small(FsKind::Ext3, "recovery");
    debugfs(&img, true, "feature needs_recovery\n");
    let out = mount_fails(&img, MountSpec::ro(""));
    assert_cli_error(&out, EXIT_MOUNT, &[]);
    let l = out.stderr.to_lowercase();
    assert!(l.contains("journal") || l.contains("recover"), "the message does not say the journal needs recovery: {}", out.stderr);
}

/// inline_data: either read correctly, or refused naming the feature.
#[test]
fn inline_data_is_read_or_refused_by_name() {
    require_tools(TOOLS);
    let d = tempdir();
    let tree = make_tree(&d.path().join("src"), TreeSpec::SMALL, "inline");
    let img = d.path().join("inline.img");
    mke2fs(&img, &["-t", "ext4", "-O", "inline_data"], Some(&tree.root), "64M");
    set_image_mtimes(&img, true, &tree.wide_mtimes);
    match Mounted::try_with(&img, MountSpec::ro("")) {
        Ok(m) => assert_same(&tree, &m, FsKind::Ext4),
        Err(out) => assert_cli_error(&out, EXIT_MOUNT, &["inline_data"]),
    }
}

// ---------------------------------------------------------------------------------------------
// Partitioned images
// ---------------------------------------------------------------------------------------------

fn assert_lists(out: &Out, numbers: &[u32]) {
    assert_cli_error(out, EXIT_MOUNT, &["partition"]);
    let tokens: Vec<&str> = out.stderr.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    for n in numbers {
        assert!(tokens.contains(&n.to_string().as_str()), "the message does not list partition {n}: {}", out.stderr);
    }
}

#[test]
fn mbr_primary_partition() {
    let (d, tree, fs_img) = small(FsKind::Ext4, "mbr-primary");
    let disk = d.path().join("mbr.img");
    let placed = make_disk(&disk, Table::Mbr, &[Part { data: PartData::Random(MIB), logical: false }, Part { data: PartData::Image(&fs_img), logical: false }]);
    assert_eq!(placed.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2]);
    let m = Mounted::new(&disk); // the one partition with a file system
    assert_same(&tree, &m, FsKind::Ext4);
    drop(m);
    let m = Mounted::with(&disk, MountSpec::ro("partition=2"));
    assert_same(&tree, &m, FsKind::Ext4);
    drop(m);
    assert_cli_error(&mount_fails(&disk, MountSpec::ro("partition=1")), EXIT_MOUNT, &[]);
    assert_lists(&mount_fails(&disk, MountSpec::ro("partition=3")), &[1, 2]);
}

#[test]
fn mbr_logical_partition() {
    let (d, tree, fs_img) = small(FsKind::Ext2_1k, "mbr-logical");
    let disk = d.path().join("mbr.img");
    let placed = make_disk(&disk, Table::Mbr, &[Part { data: PartData::Random(MIB), logical: false }, Part { data: PartData::Image(&fs_img), logical: true }]);
    assert_eq!(placed.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 5]);
    let m = Mounted::new(&disk);
    assert_same(&tree, &m, FsKind::Ext2_1k);
    drop(m);
    let m = Mounted::with(&disk, MountSpec::ro("partition=5"));
    assert_same(&tree, &m, FsKind::Ext2_1k);
    drop(m);
    // 2 is the extended partition (a container, not a file system).
    assert_cli_error(&mount_fails(&disk, MountSpec::ro("partition=2")), EXIT_MOUNT, &[]);
    assert_lists(&mount_fails(&disk, MountSpec::ro("partition=6")), &[1, 5]);
}

#[test]
fn mbr_two_file_systems_need_a_choice() {
    let (d, tree_a, img_a) = small(FsKind::Ext2_1k, "mbr-A");
    let (_d2, tree_b, img_b) = small(FsKind::Ext4, "mbr-B");
    let disk = d.path().join("mbr.img");
    let placed = make_disk(&disk, Table::Mbr, &[Part { data: PartData::Image(&img_a), logical: false }, Part { data: PartData::Image(&img_b), logical: true }]);
    assert_eq!(placed.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 5]);
    assert_lists(&mount_fails(&disk, MountSpec::ro("")), &[1, 5]);
    let a = Mounted::with(&disk, MountSpec::ro("partition=1"));
    let b = Mounted::with(&disk, MountSpec::ro("partition=5"));
    assert_eq!(marker(&a), "tree mbr-A\n");
    assert_eq!(marker(&b), "tree mbr-B\n");
    assert_same(&tree_a, &a, FsKind::Ext2_1k);
    assert_same(&tree_b, &b, FsKind::Ext4);
}

#[test]
fn gpt_partition() {
    let (d, tree, fs_img) = small(FsKind::Ext3, "gpt");
    let disk = d.path().join("gpt.img");
    let placed = make_disk(&disk, Table::Gpt, &[Part { data: PartData::Random(MIB), logical: false }, Part { data: PartData::Image(&fs_img), logical: false }]);
    assert_eq!(placed.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2]);
    let m = Mounted::new(&disk);
    assert_same(&tree, &m, FsKind::Ext3);
    drop(m);
    let m = Mounted::with(&disk, MountSpec::ro("partition=2"));
    assert_same(&tree, &m, FsKind::Ext3);
    drop(m);
    assert_cli_error(&mount_fails(&disk, MountSpec::ro("partition=1")), EXIT_MOUNT, &[]);
    assert_lists(&mount_fails(&disk, MountSpec::ro("partition=4")), &[1, 2]);
}

#[test]
fn gpt_two_file_systems_need_a_choice() {
    let (d, tree_a, img_a) = small(FsKind::Ext4, "gpt-A");
    let (_d2, tree_b, img_b) = small(FsKind::Ext2_1k, "gpt-B");
    let disk = d.path().join("gpt.img");
    make_disk(
        &disk,
        Table::Gpt,
        &[
            Part { data: PartData::Image(&img_a), logical: false },
            Part { data: PartData::Random(MIB), logical: false },
            Part { data: PartData::Image(&img_b), logical: false },
        ],
    );
    assert_lists(&mount_fails(&disk, MountSpec::ro("")), &[1, 3]);
    let a = Mounted::with(&disk, MountSpec::ro("partition=1"));
    let b = Mounted::with(&disk, MountSpec::ro("partition=3"));
    assert_same(&tree_a, &a, FsKind::Ext4);
    assert_same(&tree_b, &b, FsKind::Ext2_1k);
}

// ---------------------------------------------------------------------------------------------
// Ordinary users and permissions
// ---------------------------------------------------------------------------------------------

const USER: (u32, u32) = (1000, 1000);

/// Debian's udev rule makes /dev/fuse 0666; containers often leave it 0600. Make it what a
/// Debian machine has so that an ordinary user can mount through fusermount3.
fn debian_dev_fuse() {
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
}

fn user_cat(path: &Path) -> Out {
    as_user(USER.0, USER.1, "cat", &[path.as_os_str()])
}

/// What uid 1000 (gid 1000, no other groups) may read on a mount that lets them in.
fn check_user_permissions(m: &Mounted) {
    let ok = |rel: &str, want: &str| {
        let out = user_cat(&m.path(rel));
        assert!(out.ok(), "uid 1000 cannot read {rel}: {}", out.stderr);
        assert_eq!(out.stdout, want, "{rel}");
    };
    let denied = |rel: &str| {
        let out = user_cat(&m.path(rel));
        assert!(!out.ok() && out.stderr.contains("Permission denied"), "uid 1000 reading {rel}: {:?} {}", out.status, out.stderr);
    };
    ok("perm/public", "everyone may read this\n");
    ok("perm/own", "owned by 1000\n");
    ok("perm/group-only", "group 1000 may read\n");
    denied("perm/secret");
    denied("perm/other-not-group"); // group bits apply to the group, even if "other" may read
    denied("perm/owner-none"); // owner bits apply to the owner, even if the group may read
    denied("perm/dir0700/inner");
    let ls = as_user(USER.0, USER.1, "ls", &[m.path("perm/dir0700").as_os_str()]);
    assert!(!ls.ok() && ls.stderr.contains("Permission denied"), "ls of a 0700 dir as uid 1000: {}", ls.stderr);
}

#[test]
fn ordinary_user_mounts_through_fusermount3() {
    let _g = global_lock();
    debian_dev_fuse();
    let (_d, tree, img) = small(FsKind::Ext2_1k, "user");
    let m = Mounted::with(&img, MountSpec { user: Some(USER), ..MountSpec::ro("") });
    let e = m.entry().unwrap();
    assert!(e.options.split(',').any(|o| o == "user_id=1000"), "not mounted through fusermount3 as uid 1000: {}", e.options);
    assert!(!m.pids.is_empty(), "no server process found");
    for pid in &m.pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(uid_line.split_whitespace().skip(1).all(|u| u == "1000"), "server {pid} runs as {uid_line}");
    }
    check_user_permissions(&m);
    assert_eq!(read_ahead_kb(&m), 128, "an ordinary user's mount keeps the kernel's read-ahead");
    // The user sees the whole tree as it is.
    let out = as_user(USER.0, USER.1, "find", &[m.mnt.as_os_str(), OsStr::new("-name"), OsStr::new("hello.txt")]);
    assert_eq!(out.stdout.trim(), m.path("files/hello.txt").display().to_string(), "{}", out.stderr);
    // Without allow_other, even root is kept out of a user's FUSE mount.
    expect_errno(fs::symlink_metadata(m.path("files")), libc::EACCES, "root on uid 1000's mount");
    drop(tree);
    // The user unmounts with fusermount3 -u; the server exits.
    m.unmount();
}

#[test]
fn allow_other_mount_by_root_checks_permissions() {
    let (_d, tree, img) = small(FsKind::Ext4, "allow-other");
    // Without allow_other, uid 1000 cannot enter root's mount at all.
    let m = Mounted::new(&img);
    let out = user_cat(&m.path("perm/public"));
    assert!(!out.ok() && out.stderr.contains("Permission denied"), "uid 1000 on root's mount without allow_other: {}", out.stderr);
    drop(m);
    let m = Mounted::with(&img, MountSpec::ro("allow_other"));
    check_user_permissions(&m);
    // Root may read everything.
    assert_eq!(fs::read_to_string(m.path("perm/secret")).unwrap(), "root only\n");
    assert_same(&tree, &m, FsKind::Ext4);
}

// ---------------------------------------------------------------------------------------------
// Unmounting and signals
// ---------------------------------------------------------------------------------------------

/// A foreground server we started (-f); unmounts and ends it (by its pid) if a test fails.
struct Foreground {
    child: std::process::Child,
    mnt: PathBuf,
    _dir: TempDir,
}

impl Foreground {
    fn start(img: &Path) -> Foreground {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let child = cli_command(None)
            .arg("-f")
            .arg(img)
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let fg = Foreground { child, mnt, _dir: dir };
        assert!(wait_mounted(&fg.mnt, true, Duration::from_secs(20)), "rumpfs-mount -f did not mount within 20 s");
        fg
    }

    fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "rumpfs-mount -f still runs 20 s after signal {sig}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let out = run(tool("fusermount3").arg("-u").arg(&self.mnt));
            if !out.ok() {
                let _ = run(tool("umount").arg("-l").arg(&self.mnt));
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_secs(2));
            if self.child.try_wait().ok().flatten().is_none() {
                let _ = self.child.kill(); // by the pid we started
            }
            let _ = self.child.wait();
        }
    }
}

fn foreground_signal(sig: i32) {
    let (_d, tree, img) = small(FsKind::Ext2_1k, "signal");
    let mut fg = Foreground::start(&img);
    let diffs = compare_trees(&tree.root, &fg.mnt, &CompareOpts::default());
    assert!(diffs.is_empty(), "{diffs:#?}");
    let st = fg.signal_and_wait(sig);
    assert_eq!(st.code(), Some(0), "rumpfs-mount -f after signal {sig}: {st:?}");
    assert!(!is_mounted(&fg.mnt), "still mounted after signal {sig}");
}

#[test]
fn sigterm_unmounts_foreground_server() {
    foreground_signal(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_foreground_server() {
    foreground_signal(libc::SIGINT);
}

#[test]
fn umount_ends_background_server() {
    let (_d, _t, img) = small(FsKind::Ext2_1k, "umount");
    let m = Mounted::new(&img);
    assert!(!m.pids.is_empty(), "cannot find the background server of {}", m.mnt.display());
    run_ok(tool("umount").arg(&m.mnt));
    for &pid in &m.pids {
        assert!(wait_pid_gone(pid, Duration::from_secs(15)), "server {pid} still runs 15 s after umount");
    }
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn fusermount3_u_ends_background_server() {
    let (_d, _t, img) = small(FsKind::Ext4, "fusermount");
    let m = Mounted::new(&img);
    assert!(!m.pids.is_empty(), "cannot find the background server of {}", m.mnt.display());
    m.unmount();
}

#[test]
fn background_server_releases_our_stdio() {
    // `rumpfs-mount IMG MNT | cat` must end: the daemon may not keep the pipe open.
    let (_d, _t, img) = small(FsKind::Ext2_1k, "stdio");
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut child = cli_command(None).arg(&img).arg(&mnt).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let st = child.wait().unwrap();
    let guard_mounted = Mounted::adopt_for_cleanup(&mnt);
    assert!(st.success(), "mount failed: {st:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        let _ = se.read_to_end(&mut v);
        let _ = tx.send(());
    });
    let closed = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    drop(guard_mounted);
    assert!(closed, "the background server keeps the caller's stdout/stderr open");
}

#[test]
fn two_read_only_mounts_of_one_image() {
    let (_d, tree, img) = small(FsKind::Ext4, "twice");
    let a = Mounted::new(&img);
    let b = Mounted::new(&img);
    assert_same(&tree, &a, FsKind::Ext4);
    assert_same(&tree, &b, FsKind::Ext4);
    assert!(a.alive() && b.alive());
}

// ---------------------------------------------------------------------------------------------
// Corrupt images: the mount works, the bad file gives EIO, the rest reads fine, no crash
// ---------------------------------------------------------------------------------------------

fn read_whole(p: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(p)
}

/// Every access to `rel` that fails, fails with EIO; at least one fails.
fn assert_eio_somewhere(m: &Mounted, rel: &str) {
    let p = m.path(rel);
    let mut results = Vec::new();
    match fs::symlink_metadata(&p) {
        Err(e) => results.push(("lstat", e)),
        Ok(md) if md.is_dir() => {
            if let Err(e) = fs::read_dir(&p).and_then(|rd| rd.collect::<Result<Vec<_>, _>>()) {
                results.push(("readdir", e));
            }
        }
        Ok(_) => {
            if let Err(e) = read_whole(&p) {
                results.push(("read", e));
            }
        }
    }
    assert!(!results.is_empty(), "{rel}: read fine, want EIO");
    for (what, e) in &results {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{rel}: {what}: {e}, want EIO");
    }
}

fn rest_reads_fine(tree: &SourceTree, m: &Mounted, kind: FsKind, bad: &[&str]) {
    let opts = CompareOpts { skip: bad.iter().map(PathBuf::from).collect(), ..CompareOpts::for_kind(kind) };
    let diffs = m.deadline(Duration::from_secs(60), || compare_trees(&tree.root, &m.mnt, &opts));
    assert!(diffs.is_empty(), "the rest of the tree: {diffs:#?}");
    assert!(m.alive(), "the server died");
}

/// The block number and byte offset of an inode (`debugfs imap`).
fn inode_location(img: &Path, path: &str) -> (u64, u64) {
    let out = debugfs_req(img, &format!("imap {path}"));
    // "Inode 14 is part of block group 0\n\tlocated at block 1234, offset 0x0d00"
    let rest = out.split("located at block ").nth(1).unwrap_or_else(|| panic!("imap {path}: {out}"));
    let (blk, off) = rest.split_once(", offset ").unwrap();
    (blk.trim().parse().unwrap(), u64::from_str_radix(off.trim().trim_start_matches("0x"), 16).unwrap())
}

fn block_size(img: &Path) -> u64 {
    dumpe2fs_h(img)["Block size"].parse().unwrap()
}

fn blocks_of(img: &Path, path: &str) -> Vec<u64> {
    debugfs_req(img, &format!("blocks {path}")).split_whitespace().map(|b| b.parse().unwrap()).collect()
}

fn xor_byte(img: &Path, off: u64, mask: u8) {
    let f = fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, off).unwrap();
}

#[test]
fn corrupt_block_pointers_give_eio() {
    let (_d, tree, img) = small(FsKind::Ext2_1k, "badblock");
    // A direct pointer far past the end, and a single-indirect pointer past the end.
    debugfs(&img, true, "set_inode_field /files/random block[0] 999999999\nset_inode_field /files/b1k-indirect block[IND] 999999999\n");
    let m = Mounted::new(&img);
    m.deadline(Duration::from_secs(60), || {
        // The inodes are fine: their attributes read.
        assert_eq!(fs::symlink_metadata(m.path("files/b1k-indirect")).unwrap().len(), 200 * KIB + 7);
        assert_eio_somewhere(&m, "files/random");
        assert_eio_somewhere(&m, "files/b1k-indirect");
        // The first 12 blocks of b1k-indirect do not need the bad pointer.
        let f = File::open(m.path("files/b1k-indirect")).unwrap();
        let mut got = vec![0u8; 4096];
        let mut want = vec![0u8; 4096];
        File::open(tree.root.join("files/b1k-indirect")).unwrap().read_exact_at(&mut want, 0).unwrap();
        match f.read_exact_at(&mut got, 0) {
            Ok(()) => assert_eq!(got, want, "first block of b1k-indirect"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "first block: {e}"),
        }
    });
    rest_reads_fine(&tree, &m, FsKind::Ext2_1k, &["files/random", "files/b1k-indirect"]);
}

#[test]
fn inode_checksum_mismatch_gives_eio() {
    let (_d, tree, img) = small(FsKind::Ext4, "badcsum-inode");
    let bs = block_size(&img);
    let (blk, off) = inode_location(&img, "/files/hello.txt");
    xor_byte(&img, blk * bs + off + 0x7C, 0x5A); // l_i_checksum_lo
    let m = Mounted::new(&img);
    m.deadline(Duration::from_secs(60), || assert_eio_somewhere(&m, "files/hello.txt"));
    rest_reads_fine(&tree, &m, FsKind::Ext4, &["files/hello.txt"]);
}

#[test]
fn directory_block_checksum_mismatch_gives_eio() {
    let (_d, tree, img) = small(FsKind::Ext4, "badcsum-dir");
    let bs = block_size(&img);
    let blocks = blocks_of(&img, "/hard/sub");
    assert_eq!(blocks.len(), 1);
    xor_byte(&img, blocks[0] * bs + bs - 2, 0x5A); // in the checksum tail's det_checksum
    let m = Mounted::new(&img);
    m.deadline(Duration::from_secs(60), || assert_eio_somewhere(&m, "hard/sub"));
    rest_reads_fine(&tree, &m, FsKind::Ext4, &["hard/sub"]);
}

#[test]
fn directory_record_length_past_block_gives_eio() {
    let (_d, tree, img) = small(FsKind::Ext2_1k, "bad-reclen");
    let bs = block_size(&img);
    let blocks = blocks_of(&img, "/hard/sub");
    // ".." is the second record (at 12); its rec_len (at 12 + 4) now runs past the block.
    let off = blocks[0] * bs + 12 + 4;
    let f = fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    f.write_all_at(&((bs as u16) - 4).to_le_bytes(), off).unwrap();
    drop(f);
    let m = Mounted::new(&img);
    m.deadline(Duration::from_secs(60), || assert_eio_somewhere(&m, "hard/sub"));
    rest_reads_fine(&tree, &m, FsKind::Ext2_1k, &["hard/sub"]);
}

#[test]
fn extent_tree_loop_gives_eio_not_a_hang() {
    require_tools(TOOLS);
    let d = tempdir();
    let tree = make_tree(&d.path().join("src"), TreeSpec::SMALL, "extent-loop");
    // A file with more extents than fit in the inode: a one-level extent tree.
    let frag = tree.root.join("frag");
    let f = File::create(&frag).unwrap();
    f.set_len(16 * MIB).unwrap();
    for i in 0..8u64 {
        f.write_all_at(&[0xA5; 4096], i * 2 * MIB).unwrap();
    }
    drop(f);
    set_mtime(&frag, 1_000_000_000, 0);
    set_mtime(&tree.root, 1_100_000_000, 0);
    let img = d.path().join("ext4-nocsum.img");
    mke2fs(&img, &["-t", "ext4", "-O", "^metadata_csum"], Some(&tree.root), "64M");
    set_image_mtimes(&img, true, &tree.wide_mtimes);
    let stat = debugfs_req(&img, "stat /frag");
    let leaf: u64 = stat
        .split("(ETB0):")
        .nth(1)
        .unwrap_or_else(|| panic!("/frag has no extent tree block: {stat}"))
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Make the leaf an index node that points to itself.
    let bs = block_size(&img);
    let mut node = vec![0u8; 24];
    node[0..2].copy_from_slice(&0xF30Au16.to_le_bytes()); // magic
    node[2..4].copy_from_slice(&1u16.to_le_bytes()); // entries
    node[4..6].copy_from_slice(&(((bs - 12) / 12) as u16).to_le_bytes()); // max
    node[6..8].copy_from_slice(&1u16.to_le_bytes()); // depth
    node[12..16].copy_from_slice(&0u32.to_le_bytes()); // ei_block
    node[16..20].copy_from_slice(&(leaf as u32).to_le_bytes()); // ei_leaf_lo: itself
    fs::OpenOptions::new().write(true).open(&img).unwrap().write_all_at(&node, leaf * bs).unwrap();
    let m = Mounted::new(&img);
    m.deadline(Duration::from_secs(30), || assert_eio_somewhere(&m, "frag"));
    let mut opts = CompareOpts::for_kind(FsKind::Ext4);
    opts.skip.push(PathBuf::from("frag"));
    let diffs = m.deadline(Duration::from_secs(60), || compare_trees(&tree.root, &m.mnt, &opts));
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert!(m.alive());
}

/// The comparison can fail: two trees from the same seed differ only where we change them,
/// and every change is reported (not just the first).
#[test]
fn harness_reports_every_difference() {
    require_tools(TOOLS);
    let d = tempdir();
    let a = make_tree(&d.path().join("a"), TreeSpec::SMALL, "same");
    let b = make_tree(&d.path().join("b"), TreeSpec::SMALL, "same");
    let opts = CompareOpts { lost_found: false, ..Default::default() };
    let none = compare_trees(&a.root, &b.root, &opts);
    assert!(none.is_empty(), "identical trees differ: {none:#?}");
    let r = |p: &str| b.root.join(p);
    fs::write(r("marker"), b"tree other\n").unwrap();
    chmod(&r("files/hello.txt"), 0o640);
    lchown(&r("perm/public"), 4242, 77);
    set_mtime(&r("files/one-byte"), 1, 5);
    lsetxattr(&r("xattr/small"), "user.a", b"2");
    fs::remove_file(r("hard/b")).unwrap();
    fs::write(r("extra"), b"").unwrap();
    std::os::unix::fs::symlink("elsewhere", r("links/to-hello-2")).unwrap();
    fs::remove_file(r("links/dangling")).unwrap();
    std::os::unix::fs::symlink("changed", r("links/dangling")).unwrap();
    let diffs = compare_trees(&a.root, &b.root, &opts);
    let has = |path: &str, what: &str| diffs.iter().any(|d| d.starts_with(path) && d.contains(what));
    for (p, w) in [
        ("/marker", "content"),
        ("/files/hello.txt", "mode"),
        ("/perm/public", "owner"),
        ("/files/one-byte", "mtime"),
        ("/xattr/small", "xattrs"),
        ("/hard/b", "missing"),
        ("/hard/a", "nlink"),
        ("/extra", "not in the source"),
        ("/links/to-hello-2", "not in the source"),
        ("/links/dangling", "symlink target"),
    ] {
        assert!(has(p, w), "no {w:?} difference for {p} in {diffs:#?}");
    }
}
