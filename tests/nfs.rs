//! The NFSv3 client through FUSE, against a real nfs-ganesha on 127.0.0.1.

#[path = "nfs_server.rs"]
mod nfs_server;

use nfs_server::NfsServer;
use rumpfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// Longer than the attribute TTL the NFS mount gives the kernel (1 s).
const TTL: Duration = Duration::from_millis(1500);

fn mount_nfs(srv: &NfsServer, opts: &str) -> Mounted {
    Mounted::with(Path::new(&srv.source()), MountSpec::opts(opts))
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill(&mut v);
    v
}

#[test]
fn tree_read_matches_export() {
    let srv = NfsServer::start();
    let tree = make_tree(&srv.path("tree"), TreeSpec { wide_times: false, ..TreeSpec::SMALL }, "nfs");
    let m = mount_nfs(&srv, "ro");
    // NFSv3 times are unsigned 32-bit seconds: a time before 1970 cannot cross the wire.
    let opts = CompareOpts { xattrs: false, lost_found: false, skip: vec!["times/pre-1970".into()], ..Default::default() };
    m.deadline(Duration::from_secs(120), || assert_trees_equal(&tree.root, &m.path("tree"), &opts));
    let st = nix_statvfs(&m.mnt);
    assert!(st > 0, "statfs shows no blocks");
    m.unmount();
}

fn nix_statvfs(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs filled by the call; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
        s.f_blocks as u64
    }
}

#[test]
fn writes_appear_in_the_export_and_back() {
    let srv = NfsServer::start();
    let m = mount_nfs(&srv, "rw");
    m.deadline(Duration::from_secs(120), || {
        // Sizes around rsize/wsize and odd ones.
        for (i, n) in [0usize, 1, 4095, 65536, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 12345].iter().enumerate() {
            let data = random_bytes(i as u64, *n);
            fs::write(m.path(&format!("f{i}")), &data).unwrap();
            assert_eq!(fs::read(srv.path(&format!("f{i}"))).unwrap(), data, "f{i} ({n} bytes) in the export");
            assert_eq!(fs::read(m.path(&format!("f{i}"))).unwrap(), data, "f{i} read back");
        }
        // Overwrite in the middle, append, truncate.
        let mut expect = random_bytes(99, 2 << 20);
        fs::write(m.path("g"), &expect).unwrap();
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(m.path("g")).unwrap();
            f.write_all_at(b"MIDDLE", 1_000_000).unwrap();
            expect[1_000_000..1_000_006].copy_from_slice(b"MIDDLE");
            f.sync_all().unwrap();
        }
        fs::OpenOptions::new().append(true).open(m.path("g")).unwrap().write_all(b"tail").unwrap();
        expect.extend_from_slice(b"tail");
        assert_eq!(fs::read(srv.path("g")).unwrap(), expect);
        fs::OpenOptions::new().write(true).open(m.path("g")).unwrap().set_len(100).unwrap();
        assert_eq!(fs::read(srv.path("g")).unwrap(), &expect[..100]);
        // Namespace operations.
        fs::create_dir(m.path("d")).unwrap();
        fs::write(m.path("d/x"), b"x").unwrap();
        std::os::unix::fs::symlink("d/x", m.path("s")).unwrap();
        fs::hard_link(m.path("d/x"), m.path("hl")).unwrap();
        fs::rename(m.path("f1"), m.path("d/renamed")).unwrap();
        fs::set_permissions(m.path("d/x"), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(srv.path("d").is_dir());
        assert_eq!(fs::read_link(srv.path("s")).unwrap(), Path::new("d/x"));
        assert_eq!(fs::metadata(srv.path("d/x")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(srv.path("d/x")).unwrap().mode() & 0o7777, 0o640);
        assert!(srv.path("d/renamed").exists() && !srv.path("f1").exists());
        fs::remove_file(m.path("hl")).unwrap();
        fs::remove_file(m.path("d/x")).unwrap();
        fs::remove_file(m.path("d/renamed")).unwrap();
        fs::remove_dir(m.path("d")).unwrap();
        assert!(!srv.path("d").exists());
        expect_errno(fs::create_dir(m.path("f0")), libc::EEXIST, "mkdir over a file");
        fs::create_dir(m.path("full")).unwrap();
        fs::write(m.path("full/a"), b"a").unwrap();
        expect_errno(fs::remove_dir(m.path("full")), libc::ENOTEMPTY, "rmdir of a non-empty directory");

        // The other way: written in the export, read through the mount (close-to-open).
        let data = random_bytes(7, 5 << 20);
        fs::write(srv.path("from-server"), &data).unwrap();
        assert_eq!(fs::read(m.path("from-server")).unwrap(), data);
        let data2 = random_bytes(8, (5 << 20) + 77);
        fs::write(srv.path("from-server"), &data2).unwrap();
        std::thread::sleep(TTL);
        assert_eq!(fs::read(m.path("from-server")).unwrap(), data2, "a file changed on the server");
        fs::remove_file(srv.path("from-server")).unwrap();
        std::thread::sleep(TTL);
        assert!(!m.path("from-server").exists(), "a file removed on the server is gone");
    });
    m.unmount();
}

#[test]
fn the_server_enforces_permissions_per_user() {
    let srv = NfsServer::start();
    fs::write(srv.path("secret"), b"root only\n").unwrap();
    chmod(&srv.path("secret"), 0o600);
    fs::write(srv.path("public"), b"everyone\n").unwrap();
    chmod(&srv.path("public"), 0o644);
    fs::create_dir(srv.path("rootdir")).unwrap();
    chmod(&srv.path("rootdir"), 0o755);
    let m = mount_nfs(&srv, "rw,allow_other");
    let secret = m.path("secret");
    let out = as_user(1000, 1000, "cat", &[secret.as_os_str()]);
    assert!(!out.ok() && out.stderr.contains("Permission denied"), "uid 1000 read a root-only file: {out:?}");
    let out = as_user(1000, 1000, "cat", &[m.path("public").as_os_str()]);
    assert_eq!(out.stdout, "everyone\n", "{out:?}");
    let out = as_user(1000, 1000, "touch", &[m.path("rootdir/new").as_os_str()]);
    assert!(!out.ok() && out.stderr.contains("Permission denied"), "uid 1000 created in a root directory: {out:?}");
    // Files uid 1000 creates are theirs on the server (AUTH_SYS carries the caller).
    let out = as_user(1000, 1000, "touch", &[m.path("mine").as_os_str()]);
    assert!(out.ok(), "{out:?}");
    let md = fs::metadata(srv.path("mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    assert_eq!(fs::read(m.path("secret")).unwrap(), b"root only\n", "root reads it");
    m.unmount();
}

/// A walk sends the listings of subdirectories ahead, with the credentials of whoever listed
/// the parent, and an opendir takes a listing that came back as its permission check: one
/// the server refused must close the directory to that user, and to no one else.
#[test]
fn listings_sent_ahead_keep_unreadable_directories_closed() {
    let srv = NfsServer::start();
    for (d, mode) in [("private", 0o700), ("shared", 0o755)] {
        fs::create_dir(srv.path(d)).unwrap();
        fs::write(srv.path(&format!("{d}/inside-{d}")), b"x").unwrap();
        chmod(&srv.path(d), mode);
    }
    let m = mount_nfs(&srv, "rw,allow_other");
    let top = m.path("");
    let out = as_user(1000, 1000, "ls", &["-R".as_ref(), top.as_os_str()]);
    assert!(out.stdout.contains("inside-shared"), "uid 1000 lists the readable directory: {out:?}");
    assert!(!out.stdout.contains("inside-private"), "uid 1000 listed a root-only directory: {out:?}");
    // Refused at opendir, as the kernel's client refuses it ("reading directory" would mean
    // the open went through and only the listing failed).
    assert!(out.stderr.contains("cannot open directory") && out.stderr.contains("private"), "{out:?}");
    // The same directory as its owner, right after: the refusal was uid 1000's alone.
    let names: Vec<_> = fs::read_dir(m.path("private")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["inside-private"], "root lists it");
    m.unmount();
}

/// Owner and size of `name` as a listing of `dir` shows them: `ls -l` style, the attributes
/// the kernel took from the READDIRPLUS reply (asked within their time to live).
fn listed(dir: &Path, name: &str) -> (u32, u32, u64) {
    let e = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).find(|e| e.file_name() == name).unwrap_or_else(|| panic!("{name} not listed"));
    let md = e.metadata().unwrap();
    (md.uid(), md.gid(), md.len())
}

/// `-o uid=,gid=` sends a fixed identity and shows what it owns as the mounting user's (the
/// fuse-nfs complaint): the same in a listing as in a stat, and for nothing else.
#[test]
fn a_fixed_identity_shows_as_the_mounting_user() {
    let srv = NfsServer::start();
    for (f, owner) in [("mapped", 1000), ("other", 2000)] {
        fs::write(srv.path(f), b"12345").unwrap();
        std::os::unix::fs::chown(srv.path(f), Some(owner), Some(owner)).unwrap();
    }
    let m = mount_nfs(&srv, "rw,uid=1000,gid=1000");
    let me = (unsafe { libc::getuid() }, unsafe { libc::getgid() });
    assert_eq!(listed(&m.mnt, "mapped"), (me.0, me.1, 5), "listing of the fixed identity's file");
    assert_eq!(listed(&m.mnt, "other"), (2000, 2000, 5), "listing of someone else's file");
    std::thread::sleep(TTL);
    let md = fs::metadata(m.path("mapped")).unwrap();
    assert_eq!((md.uid(), md.gid()), me, "stat of the fixed identity's file");
    // What the mount creates belongs to the fixed identity on the server.
    fs::write(m.path("new"), b"x").unwrap();
    let md = fs::metadata(srv.path("new")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "owner on the server of a file made through the mount");
    assert_eq!(listed(&m.mnt, "new").0, me.0);
    m.unmount();
}

/// `ls -l` while a copy is under way: the listing must show the size written so far, not the
/// smaller one on the server while the rest waits to be sent.
#[test]
fn a_listing_during_a_write_shows_what_was_written() {
    let srv = NfsServer::start();
    let m = mount_nfs(&srv, "rw");
    m.deadline(Duration::from_secs(60), || {
        let data = random_bytes(5, (3 << 20) + 4321);
        let mut f = fs::File::create(m.path("growing")).unwrap();
        f.write_all(&data).unwrap();
        assert_eq!(listed(&m.mnt, "growing").2, data.len() as u64, "size listed while the file is open");
        assert_eq!(fs::metadata(m.path("growing")).unwrap().len(), data.len() as u64, "stat after the listing");
        drop(f);
        assert_eq!(fs::read(srv.path("growing")).unwrap(), data, "in the export after close");
    });
    m.unmount();
}

/// A 1 MiB buffer aligned for O_DIRECT.
struct Aligned(*mut u8);

impl Aligned {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(1 << 20, 4096) {
        Ok(l) => l,
        Err(_) => panic!("bad layout"),
    };
    fn new() -> Aligned {
        // SAFETY: a non-zero size; freed in drop with the same layout.
        let p = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        assert!(!p.is_null());
        Aligned(p)
    }
    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds LAYOUT.size() initialised bytes and is ours alone.
        unsafe { std::slice::from_raw_parts_mut(self.0, Self::LAYOUT.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout.
        unsafe { std::alloc::dealloc(self.0, Self::LAYOUT) }
    }
}

/// Two readers taking turns through one file (O_DIRECT, so that every read is a FUSE READ
/// and an error reaches them): each one's read-ahead must leave alone the READ the other is
/// waiting for.
#[test]
fn readers_taking_turns_through_a_file_get_no_errors() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const MIB: usize = 1 << 20;
    let srv = NfsServer::start();
    let data = random_bytes(11, 48 * MIB);
    fs::write(srv.path("shared"), &data).unwrap();
    let m = mount_nfs(&srv, "ro");
    m.deadline(Duration::from_secs(120), || {
        for round in 0..3 {
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (m, data, next) = (&m, &data, &next);
                    s.spawn(move || {
                        let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(m.path("shared")).unwrap();
                        let mut b = Aligned::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                            if i * MIB >= data.len() {
                                break;
                            }
                            let n = f.read_at(b.buf(), (i * MIB) as u64).unwrap_or_else(|e| panic!("round {round}, reader {t}, MiB {i}: {e}"));
                            assert_eq!(n, MIB, "round {round}, MiB {i}: short read");
                            assert!(b.buf() == &data[i * MIB..(i + 1) * MIB], "round {round}, MiB {i}: wrong bytes");
                        }
                    });
                }
            });
        }
    });
    m.unmount();
}

/// A file opened only for writing skips the page cache; a reader that has the file open
/// (and its pages cached) must still see every write at once, as with a local file.
#[test]
fn a_reader_sees_what_a_write_only_opener_writes() {
    use std::os::unix::fs::FileExt;
    let srv = NfsServer::start();
    let old = random_bytes(21, 3 << 20);
    fs::write(srv.path("f"), &old).unwrap();
    let m = mount_nfs(&srv, "rw");
    m.deadline(Duration::from_secs(60), || {
        let r = fs::File::open(m.path("f")).unwrap();
        assert_eq!(fs::read(m.path("f")).unwrap(), old);
        let mut got = vec![0u8; 4096];
        r.read_exact_at(&mut got, 1 << 20).unwrap();
        let w = fs::OpenOptions::new().write(true).open(m.path("f")).unwrap();
        w.write_all_at(b"written while cached", (1 << 20) + 100).unwrap();
        r.read_exact_at(&mut got, 1 << 20).unwrap();
        assert_eq!(&got[100..120], b"written while cached", "the reader's cached page");
        drop(w);
        let mut a = fs::OpenOptions::new().append(true).open(m.path("f")).unwrap();
        a.write_all(b"appended").unwrap();
        assert_eq!(r.metadata().unwrap().len(), old.len() as u64 + 8, "size after an append");
        let mut tail = [0u8; 8];
        r.read_exact_at(&mut tail, old.len() as u64).unwrap();
        assert_eq!(&tail, b"appended");
    });
    let mut expect = old.clone();
    expect[(1 << 20) + 100..(1 << 20) + 120].copy_from_slice(b"written while cached");
    expect.extend_from_slice(b"appended");
    assert_eq!(fs::read(srv.path("f")).unwrap(), expect, "in the export");
    m.unmount();
}

/// A directory whose listing takes many READDIRPLUS replies (the rest of it is asked for
/// while the first part is handed out): every name once, in two listings at once, and the
/// changes made on the server in the next listing.
#[test]
fn long_listings_are_whole_and_follow_changes() {
    use std::collections::BTreeSet;
    let srv = NfsServer::start();
    fs::create_dir(srv.path("many")).unwrap();
    let name = |i: usize| format!("an-entry-with-a-rather-long-name-{i:05}");
    for i in 0..3000 {
        fs::write(srv.path(&format!("many/{}", name(i))), i.to_string()).unwrap();
    }
    let m = mount_nfs(&srv, "rw");
    let list = |m: &Mounted| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for e in fs::read_dir(m.path("many")).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().into_string().unwrap();
            assert!(e.metadata().unwrap().len() > 0, "{n}: no size");
            assert!(seen.insert(n.clone()), "{n} listed twice");
        }
        seen
    };
    m.deadline(Duration::from_secs(120), || {
        let want: BTreeSet<String> = (0..3000).map(name).collect();
        std::thread::scope(|s| {
            let a = s.spawn(|| list(&m));
            let b = s.spawn(|| list(&m));
            assert_eq!(a.join().unwrap(), want, "first of two listings at once");
            assert_eq!(b.join().unwrap(), want, "second of two listings at once");
        });
        for i in (0..3000).step_by(30) {
            fs::remove_file(srv.path(&format!("many/{}", name(i)))).unwrap();
        }
        for i in 3000..3100 {
            fs::write(srv.path(&format!("many/{}", name(i))), b"new").unwrap();
        }
        std::thread::sleep(TTL);
        let want: BTreeSet<String> = (0..3100).filter(|i| *i >= 3000 || i % 30 != 0).map(name).collect();
        assert_eq!(list(&m), want, "after changes on the server");
    });
    m.unmount();
}

/// Log writers: several appenders at once on one file opened write-only (direct I/O): every
/// line lands whole, none over another.
#[test]
fn appenders_at_once_lose_nothing() {
    let srv = NfsServer::start();
    fs::write(srv.path("log"), b"").unwrap();
    let m = mount_nfs(&srv, "rw");
    m.deadline(Duration::from_secs(60), || {
        std::thread::scope(|s| {
            for t in 0..3u8 {
                let m = &m;
                s.spawn(move || {
                    let mut f = fs::OpenOptions::new().append(true).open(m.path("log")).unwrap();
                    for i in 0..1000 {
                        f.write_all(format!("{} {i:05}\n", (b'A' + t) as char).as_bytes()).unwrap();
                    }
                });
            }
        });
    });
    let text = fs::read_to_string(srv.path("log")).unwrap();
    let lines: std::collections::BTreeSet<&str> = text.lines().collect();
    assert_eq!(text.lines().count(), 3000, "lines in the export");
    assert_eq!(lines.len(), 3000, "every line once");
    assert!(lines.iter().all(|l| l.len() == 7), "a line was cut or mixed with another");
    m.unmount();
}

#[test]
fn many_threads_read_and_write_different_files() {
    let srv = NfsServer::start();
    for i in 0..8 {
        fs::write(srv.path(&format!("in{i}")), random_bytes(100 + i, (3 << 20) + i as usize * 1000)).unwrap();
    }
    let m = mount_nfs(&srv, "rw");
    m.deadline(Duration::from_secs(180), || {
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let m = &m;
                s.spawn(move || {
                    let data = random_bytes(200 + i, (2 << 20) + i as usize * 333);
                    fs::write(m.path(&format!("out{i}")), &data).unwrap();
                    let got = fs::read(m.path(&format!("in{i}"))).unwrap();
                    assert_eq!(got, random_bytes(100 + i, (3 << 20) + i as usize * 1000), "in{i}");
                });
            }
        });
    });
    for i in 0..8u64 {
        assert_eq!(fs::read(srv.path(&format!("out{i}"))).unwrap(), random_bytes(200 + i, (2 << 20) + i as usize * 333), "out{i}");
    }
    m.unmount();
}

/// `dd` copying `from` to `to` (fsync at the end), as a child process.
fn dd(from: &Path, to: &Path) -> std::process::Child {
    let mut c = tool("dd");
    c.arg(format!("if={}", from.display())).arg(format!("of={}", to.display())).args(["bs=256K", "conv=fsync", "status=none"]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    c.spawn().expect("cannot start dd")
}

fn finish(what: &str, c: std::process::Child) {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hard_mount_survives_a_server_restart_mid_copy() {
    let mut srv = NfsServer::start();
    let local = tempdir();
    let data = random_bytes(5, 96 << 20);
    fs::write(local.path().join("big"), &data).unwrap();
    fs::write(srv.path("remote-big"), &data).unwrap();
    let m = mount_nfs(&srv, "rw,hard,timeo=10");
    m.deadline(Duration::from_secs(240), || {
        // The copies run in child processes, not in threads of this one: this process starts
        // the server again, and a fork + exec closes every descriptor it inherited, a file open
        // for writing on the mount included. That close flushes the file (close-to-open, as
        // the kernel's NFS client does), which on a hard mount waits for the server: the new
        // server's exec would wait for the server.
        let w = dd(&local.path().join("big"), &m.path("copy"));
        let r = dd(&m.path("remote-big"), &local.path().join("back"));
        // The server goes while both copies are surely under way, however fast the machine.
        let size = |p: &Path| fs::metadata(p).map(|md| md.len()).unwrap_or(0);
        let (written, read) = (srv.path("copy"), local.path().join("back"));
        let t0 = std::time::Instant::now();
        while (size(&written) < 4 << 20 || size(&read) < 4 << 20) && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        srv.kill();
        let at_kill = (size(&written), size(&read));
        assert!(at_kill.0 < data.len() as u64 && at_kill.1 < data.len() as u64, "a copy ended before the server went: {at_kill:?}");
        std::thread::sleep(Duration::from_secs(2));
        srv.restart();
        finish("copy to the mount across a server restart", w);
        finish("copy from the mount across a server restart", r);
    });
    assert!(fs::read(srv.path("copy")).unwrap() == data, "the copy written through the mount differs");
    assert!(fs::read(local.path().join("back")).unwrap() == data, "the copy read through the mount differs");
    m.unmount();
}

#[test]
fn soft_mount_gives_eio_when_the_server_is_gone() {
    let mut srv = NfsServer::start();
    fs::write(srv.path("f"), b"hello").unwrap();
    let m = mount_nfs(&srv, "rw,soft,timeo=5,retrans=1");
    m.deadline(Duration::from_secs(60), || {
        std::thread::scope(|s| {
            // A writer that goes on until it fails (at most 8 GiB), so the server is always
            // killed in the middle of it, however fast the machine.
            let dst = m.path("copy");
            let w = s.spawn(move || -> std::io::Result<()> {
                let mut f = fs::File::create(&dst)?;
                let chunk = random_bytes(6, 1 << 20);
                for _ in 0..8192 {
                    f.write_all(&chunk)?;
                }
                f.sync_all()
            });
            let seen = srv.path("copy");
            let t0 = std::time::Instant::now();
            while fs::metadata(&seen).map(|md| md.len()).unwrap_or(0) < 4 << 20 && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
            srv.kill();
            let r = w.join().unwrap();
            let e = r.expect_err("a copy to a dead server on a soft mount succeeded");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        });
        std::thread::sleep(TTL);
        expect_errno(fs::read(m.path("f")), libc::EIO, "read from a dead server, soft mount");
    });
    // Back again: the mount works again and unmounts cleanly.
    srv.restart();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"hello");
    m.unmount();
}

/// A server that stops reading (frozen, not gone: its connection stays open) fills the socket
/// buffers; the writer's send must then time out like an unanswered call, not block for ever.
#[test]
fn soft_mount_gives_eio_when_the_server_stops_reading() {
    let mut srv = NfsServer::start();
    let m = mount_nfs(&srv, "rw,soft,timeo=5,retrans=1");
    fs::write(m.path("before"), b"written while the server ran").unwrap();
    let mut f = fs::File::create(m.path("big")).unwrap();
    srv.pause();
    m.deadline(Duration::from_secs(60), || {
        let chunk = random_bytes(7, 1 << 20);
        // 256 MiB: far more than the socket buffers on both sides hold.
        let r = (0..256).try_for_each(|_| f.write_all(&chunk)).and_then(|()| f.sync_all());
        let e = r.expect_err("writing to a frozen server on a soft mount succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    });
    drop(f);
    srv.resume();
    // Running again, the server answers on a new connection.
    assert_eq!(fs::read(m.path("before")).unwrap(), b"written while the server ran");
    m.unmount();
}

#[test]
fn unmount_never_hangs_on_a_dead_server() {
    let mut srv = NfsServer::start();
    let m = mount_nfs(&srv, "rw,hard,timeo=5");
    fs::write(m.path("x"), b"data").unwrap();
    srv.kill();
    let start = std::time::Instant::now();
    m.unmount();
    assert!(start.elapsed() < Duration::from_secs(30), "unmount took {:?}", start.elapsed());
}

#[test]
fn libnfs_tools_agree_with_the_mount() {
    let srv = NfsServer::start();
    let m = mount_nfs(&srv, "rw");
    let data: String = (0..30_000).map(|i| format!("line {i}\n")).collect();
    fs::write(m.path("via-mount"), &data).unwrap();
    fs::create_dir(m.path("sub")).unwrap();
    fs::write(m.path("sub/t.txt"), b"text\n").unwrap();
    let out = run_ok(tool("nfs-cat").arg(srv.url("via-mount")));
    assert!(out.stdout == data, "nfs-cat shows {} bytes, want {}", out.stdout.len(), data.len());
    let out = run_ok(tool("nfs-cat").arg(srv.url("sub/t.txt")));
    assert_eq!(out.stdout, "text\n");
    let out = run_ok(tool("nfs-ls").arg(srv.url("")));
    let mut names: Vec<String> =
        out.stdout.lines().filter_map(|l| l.split_whitespace().last().map(str::to_string)).filter(|n| n != "." && n != "..").collect();
    names.sort();
    let mut ours: Vec<String> = fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    ours.sort();
    assert_eq!(names, ours, "nfs-ls and the mount list different names\n{}", out.stdout);
    m.unmount();
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3() {
    let srv = NfsServer::start();
    fs::write(srv.path("hello"), b"hi\n").unwrap();
    chmod(Path::new("/dev/fuse"), 0o666);
    let spec = MountSpec { args: vec!["-o".into(), "rw".into()], user: Some((1000, 1000)), ..Default::default() };
    let m = Mounted::with(Path::new(&srv.source()), spec);
    let out = as_user(1000, 1000, "cat", &[m.path("hello").as_os_str()]);
    assert_eq!(out.stdout, "hi\n", "{out:?}");
    let out = as_user(1000, 1000, "cp", &[m.path("hello").as_os_str(), m.path("copied").as_os_str()]);
    assert!(out.ok(), "{out:?}");
    let md = fs::metadata(srv.path("copied")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "created as the mounting user");
    m.unmount();
}

#[test]
fn list_exports_url_sources_and_errors() {
    let srv = NfsServer::start();
    let out = run_cli(&["--list-exports", "127.0.0.1"], None);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains(&*srv.export.to_string_lossy()), "{}", out.stdout);
    fs::write(srv.path("u"), b"url\n").unwrap();
    let url = format!("nfs://127.0.0.1:2049{}", srv.export.display());
    let m = Mounted::with(Path::new(&url), MountSpec::opts("ro,mountport=20048"));
    assert_eq!(fs::read(m.path("u")).unwrap(), b"url\n");
    m.unmount();
    let m = Mounted::with(Path::new(&srv.source()), MountSpec::opts("ro,uid=1000,gid=1000,actimeo=0"));
    assert_eq!(fs::read(m.path("u")).unwrap(), b"url\n");
    m.unmount();
    // A directory the server does not export.
    let dir = tempdir();
    let mnt = dir.path();
    let out = run_cli(&[OsStr::new("127.0.0.1:/no/such/export"), mnt.as_os_str()], None);
    assert_cli_error(&out, EXIT_MOUNT, &["127.0.0.1:/no/such/export"]);
    // No server on that port.
    let out = run_cli(&[OsStr::new("-o"), OsStr::new("port=2,mountport=3"), OsStr::new(&srv.source()), mnt.as_os_str()], None);
    assert_cli_error(&out, EXIT_MOUNT, &["refused"]);
    let out = run_cli(&[OsStr::new("-o"), OsStr::new("nfsvers=4"), OsStr::new(&srv.source()), mnt.as_os_str()], None);
    assert_cli_error(&out, EXIT_MOUNT, &["version 3"]);
}
