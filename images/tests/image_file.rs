//! Image files: opening, locking, positional I/O, bounds; slices.

mod common;

use common::TempDir;
use images::{open_image, Slice};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use vfs_faction::{BlockDevice, Errno, OpenMode};

fn image(dir: &TempDir, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("disk.img");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 256) as u8).collect()
}

#[test]
fn missing_directory_and_odd_files() {
    let dir = TempDir::new("open");
    let missing = dir.join("nope.img");
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        let e = open_image(&missing, mode).unwrap_err();
        assert_eq!(e.errno, Errno::ENOENT);
        assert_eq!(e.to_string(), format!("{}: No such file or directory", missing.display()));

        let e = open_image(dir.path(), mode).unwrap_err();
        assert_eq!(e.errno, Errno::EISDIR, "{e}");
        assert_eq!(e.to_string(), format!("{}: Is a directory", dir.path().display()));
    }
    let e = open_image(std::path::Path::new("/dev/null"), OpenMode::ReadOnly).unwrap_err();
    assert_eq!(e.errno, Errno::ENODEV);
    assert!(e.to_string().contains("not a regular file or block device"), "{e}");
    // It is an std error with the message as its text.
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().starts_with("/dev/null"));
}

#[test]
fn read_write_flush_and_bounds() {
    let dir = TempDir::new("io");
    let data = pattern(64 * 1024);
    let path = image(&dir, &data);
    let img = open_image(&path, OpenMode::ReadWrite).unwrap();
    assert_eq!(img.size(), data.len() as u64);
    assert!(!img.read_only());
    assert_eq!(img.describe(), path.display().to_string());

    let mut buf = vec![0u8; 4096];
    img.read_at(&mut buf, 8192).unwrap();
    assert_eq!(buf, &data[8192..8192 + 4096]);
    // Unaligned requests are fine.
    let mut odd = vec![0u8; 333];
    img.read_at(&mut odd, 1001).unwrap();
    assert_eq!(odd, &data[1001..1334]);

    img.write_at(&[0xAB; 512], 512).unwrap();
    img.flush().unwrap();
    assert_eq!(common::read_at(&path, 512, 512), vec![0xAB; 512]);

    // Past the end: EIO, nothing transferred, the file does not grow.
    let size = img.size();
    let mut tail = vec![0x55u8; 1024];
    assert_eq!(img.read_at(&mut tail, size - 512), Err(Errno::EIO));
    assert_eq!(tail, vec![0x55; 1024]);
    assert_eq!(img.read_at(&mut tail, size), Err(Errno::EIO));
    assert_eq!(img.read_at(&mut tail, u64::MAX - 10), Err(Errno::EIO));
    assert_eq!(img.write_at(&[1; 1024], size - 512), Err(Errno::EIO));
    assert_eq!(img.write_at(&[1; 1], u64::MAX), Err(Errno::EIO));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    // The last byte, and an empty request at the end, are inside.
    let mut last = [0u8; 1];
    img.read_at(&mut last, size - 1).unwrap();
    assert_eq!(last[0], data[data.len() - 1]);
    img.read_at(&mut [], size).unwrap();
}

#[test]
fn concurrent_positional_reads() {
    let dir = TempDir::new("threads");
    let data = pattern(1 << 20);
    let path = image(&dir, &data);
    let img = open_image(&path, OpenMode::ReadOnly).unwrap();
    let data = Arc::new(data);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let img = Arc::clone(&img);
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                for i in 0..200u64 {
                    let off = ((i * 37 + t * 101) % 255) * 4096;
                    img.read_at(&mut buf, off).unwrap();
                    assert_eq!(buf, &data[off as usize..off as usize + 4096]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn read_only_file_opens_read_only_and_refuses_writes() {
    let dir = TempDir::new("ro");
    let path = image(&dir, &pattern(8192));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let img = open_image(&path, OpenMode::ReadOnly).unwrap();
    assert!(img.read_only());
    let mut buf = [0u8; 16];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(img.write_at(&[1; 16], 0), Err(Errno::EROFS));
    img.flush().unwrap();
    assert_eq!(common::read_at(&path, 0, 16), &pattern(16)[..]);
    drop(img);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Root bypasses mode bits; everyone else is refused a read-write open.
        let e = open_image(&path, OpenMode::ReadWrite).unwrap_err();
        assert_eq!(e.errno, Errno::EACCES);
        assert_eq!(e.to_string(), format!("{}: Permission denied", path.display()));
    }
}

#[test]
fn locking() {
    let dir = TempDir::new("lock");
    let path = image(&dir, &pattern(4096));
    let busy = format!("{} is in use by another process (locked)", path.display());

    // Two writers: the second is refused.
    let w = open_image(&path, OpenMode::ReadWrite).unwrap();
    let e = open_image(&path, OpenMode::ReadWrite).unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY);
    assert_eq!(e.to_string(), busy);
    // A writer keeps readers out.
    let e = open_image(&path, OpenMode::ReadOnly).unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY);
    drop(w);

    // Readers share; they keep a writer out.
    let r1 = open_image(&path, OpenMode::ReadOnly).unwrap();
    let r2 = open_image(&path, OpenMode::ReadOnly).unwrap();
    let e = open_image(&path, OpenMode::ReadWrite).unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY);
    assert_eq!(e.message, busy);
    drop(r1);
    assert_eq!(open_image(&path, OpenMode::ReadWrite).unwrap_err().errno, Errno::EBUSY);
    drop(r2);

    // Everything closed: the lock went with the descriptors.
    let w = open_image(&path, OpenMode::ReadWrite).unwrap();
    drop(w);
}

#[test]
fn lock_conflicts_with_another_process() {
    // A child shell takes an exclusive lock with flock(1) on a descriptor it then hands to
    // `sleep` (exec, same process), so killing the child releases the lock.
    let dir = TempDir::new("lock-proc");
    let path = image(&dir, &pattern(4096));
    if std::process::Command::new("flock").arg("-V").output().is_err() {
        eprintln!("flock(1) not available; skipped");
        return;
    }
    let mut child = std::process::Command::new("sh")
        .args(["-c", "exec 9<\"$1\" && flock -x 9 && exec sleep 30", "sh", path.to_str().unwrap()])
        .spawn();
    let Ok(child) = child.as_mut() else {
        eprintln!("sh not available; skipped");
        return;
    };
    // Wait until the child holds the lock.
    let mut held = false;
    for _ in 0..100 {
        match open_image(&path, OpenMode::ReadOnly) {
            Err(e) if e.errno == Errno::EBUSY => {
                held = true;
                break;
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    assert!(held, "the other process's lock was never seen");
    assert_eq!(open_image(&path, OpenMode::ReadWrite).unwrap_err().errno, Errno::EBUSY);
    child.kill().unwrap();
    child.wait().unwrap();
    open_image(&path, OpenMode::ReadWrite).unwrap();
}

#[test]
fn slices_are_bounded_windows() {
    let dir = TempDir::new("slice");
    let data = pattern(64 * 1024);
    let path = image(&dir, &data);
    let img: Arc<dyn BlockDevice> = open_image(&path, OpenMode::ReadWrite).unwrap();

    let e = Slice::new(Arc::clone(&img), 60 * 1024, 8 * 1024).unwrap_err();
    assert_eq!(e.errno, Errno::ENXIO);
    assert!(e.to_string().contains("reach past the end"), "{e}");
    assert_eq!(Slice::new(Arc::clone(&img), u64::MAX, 2).unwrap_err().errno, Errno::ENXIO);

    let s = Slice::new(Arc::clone(&img), 16 * 1024, 8 * 1024).unwrap().with_label("partition 2");
    assert_eq!(s.size(), 8 * 1024);
    assert_eq!(s.start(), 16 * 1024);
    assert_eq!(s.describe(), format!("{} partition 2", path.display()));
    let mut buf = vec![0u8; 1024];
    s.read_at(&mut buf, 1024).unwrap();
    assert_eq!(buf, &data[17 * 1024..18 * 1024]);
    // Past the window's end, even though the parent goes on: EIO.
    assert_eq!(s.read_at(&mut buf, 7 * 1024 + 1), Err(Errno::EIO));
    assert_eq!(s.write_at(&buf, 8 * 1024), Err(Errno::EIO));
    assert_eq!(s.read_at(&mut buf, u64::MAX - 1), Err(Errno::EIO));

    s.write_at(&[0xCD; 100], 0).unwrap();
    s.flush().unwrap();
    assert_eq!(common::read_at(&path, 16 * 1024 - 1, 102)[..], {
        let mut v = vec![data[16 * 1024 - 1]];
        v.extend([0xCD; 100]);
        v.push(data[16 * 1024 + 100]);
        v
    }[..]);

    // A slice of a read-only device is read-only.
    drop(s);
    drop(img);
    let ro: Arc<dyn BlockDevice> = open_image(&path, OpenMode::ReadOnly).unwrap();
    let s = Slice::new(ro, 0, 4096).unwrap();
    assert!(s.read_only());
    assert_eq!(s.write_at(&[0; 8], 0), Err(Errno::EROFS));
    assert!(s.describe().contains("bytes 0..4096"), "{}", s.describe());
}
