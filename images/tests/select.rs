//! Partition selection: `-o partition=N`, or probing each partition for a file system.

mod common;

use common::{blank_image, ext_probe, put_ext4, run, sfdisk, TempDir};
use images::{open_image, select, Scheme};
use std::path::Path;
use std::sync::Arc;
use vfs_faction::{BlockDevice, Errno, OpenMode};

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    open_image(path, OpenMode::ReadOnly).unwrap()
}

const MIB: u64 = 1 << 20;

/// The error of a selection that must fail (the device has no `Debug`).
fn err<T>(r: Result<T, images::ImageError>) -> images::ImageError {
    match r {
        Ok(_) => panic!("selection succeeded"),
        Err(e) => e,
    }
}

/// 40 MiB, MBR: 1 Linux 1..9 MiB, 2 extended 9..40 MiB holding 5 (10..18 MiB) and 6.
fn mbr_image(dir: &TempDir) -> std::path::PathBuf {
    let img = blank_image(dir, "mbr.img", 40);
    sfdisk(&img, "label: dos\n,8M,83\n,,5\n,8M,83\n,,83\n");
    img
}

#[test]
fn probing_finds_the_one_file_system() {
    let dir = TempDir::new("sel-one");
    let img = mbr_image(&dir);
    put_ext4(&dir, &img, 10 * MIB, 8 * 1024);
    let (dev, part) = select(open(&img), None, &ext_probe).unwrap();
    let part = part.unwrap();
    assert_eq!((part.index, part.scheme, part.start, part.size), (5, Scheme::Mbr, 10 * MIB, 8 * MIB));
    assert_eq!(dev.size(), 8 * MIB);
    assert_eq!(ext_probe(&*dev), Some("ext2fs"));
    assert_eq!(dev.describe(), format!("{} partition 5", img.display()));
    // The chosen device is the partition: the ext superblock is at its byte 1024.
    let mut magic = [0u8; 2];
    dev.read_at(&mut magic, 1024 + 56).unwrap();
    assert_eq!(magic, [0x53, 0xEF]);
    // And bounded by it.
    assert_eq!(dev.read_at(&mut magic, 8 * MIB - 1), Err(Errno::EIO));

    // The same by number; the file system is also checkable by e2fsck through the offset.
    let (dev, part) = select(open(&img), Some("5"), &ext_probe).unwrap();
    assert_eq!(part.unwrap().index, 5);
    assert_eq!(dev.size(), 8 * MIB);
    let (dev, part) = select(open(&img), Some(" 1 "), &ext_probe).unwrap();
    assert_eq!(part.unwrap().start, MIB);
    assert_eq!(ext_probe(&*dev), None);
}

#[test]
fn gpt_selection_by_probe_and_by_number() {
    let dir = TempDir::new("sel-gpt");
    let img = blank_image(&dir, "gpt.img", 32);
    run(
        "sgdisk",
        &["-n", "1:2048:+4M", "-t", "1:ef00", "-c", "1:esp", "-n", "2:0:+12M", "-t", "2:8300",
          "-c", "2:root", "-n", "3:0:0", "-t", "3:8200", img.to_str().unwrap()],
        None,
    );
    put_ext4(&dir, &img, 5 * MIB, 12 * 1024);
    let (dev, part) = select(open(&img), None, &ext_probe).unwrap();
    let part = part.unwrap();
    assert_eq!(part.index, 2);
    assert_eq!(part.name.as_deref(), Some("root"));
    assert_eq!(part.kind, "Linux filesystem");
    assert_eq!(dev.size(), 12 * MIB);
    // e2fsck agrees that the bytes we serve are a clean file system.
    let mut fs = vec![0u8; dev.size() as usize];
    dev.read_at(&mut fs, 0).unwrap();
    let copy = dir.join("copy.ext4");
    std::fs::write(&copy, fs).unwrap();
    run("e2fsck", &["-fn", copy.to_str().unwrap()], None);
}

#[test]
fn no_file_system_anywhere() {
    let dir = TempDir::new("sel-none");
    let img = mbr_image(&dir);
    let e = err(select(open(&img), None, &ext_probe));
    assert_eq!(e.errno, Errno::ENODEV);
    assert_eq!(
        e.message,
        format!(
            "{}: no partition holds a file system this kernel knows; partitions: \
             1 (Linux, 1.0 MiB..9.0 MiB), 2 (Extended, 9.0 MiB..40.0 MiB), \
             5 (Linux, 10.0 MiB..18.0 MiB), 6 (Linux, 19.0 MiB..40.0 MiB)",
            img.display()
        )
    );
}

#[test]
fn several_file_systems_need_a_choice() {
    let dir = TempDir::new("sel-many");
    let img = mbr_image(&dir);
    put_ext4(&dir, &img, MIB, 8 * 1024);
    put_ext4(&dir, &img, 19 * MIB, 8 * 1024);
    let e = err(select(open(&img), None, &ext_probe));
    assert_eq!(e.errno, Errno::EINVAL);
    assert_eq!(
        e.message,
        format!(
            "{}: several partitions hold a file system: ext2fs in 1 (Linux, 1.0 MiB..9.0 MiB), \
             ext2fs in 6 (Linux, 19.0 MiB..40.0 MiB); choose one with -o partition=N",
            img.display()
        )
    );
    let (dev, part) = select(open(&img), Some("6"), &ext_probe).unwrap();
    assert_eq!(part.unwrap().index, 6);
    assert_eq!(ext_probe(&*dev), Some("ext2fs"));
}

#[test]
fn bad_requests() {
    let dir = TempDir::new("sel-bad");
    let img = mbr_image(&dir);
    let list = "1 (Linux, 1.0 MiB..9.0 MiB), 2 (Extended, 9.0 MiB..40.0 MiB), \
                5 (Linux, 10.0 MiB..18.0 MiB), 6 (Linux, 19.0 MiB..40.0 MiB)";

    let e = err(select(open(&img), Some("3"), &ext_probe));
    assert_eq!(e.errno, Errno::ENXIO);
    assert_eq!(e.message, format!("{} has no partition 3; partitions: {list}", img.display()));

    for bad in ["x", "0", "-1", "", "1.5"] {
        let e = err(select(open(&img), Some(bad), &ext_probe));
        assert_eq!(e.errno, Errno::EINVAL, "{bad}");
        assert!(e.message.contains(&format!("partition={bad} is not a partition number")), "{e}");
    }

    let e = err(select(open(&img), Some("2"), &ext_probe));
    assert_eq!(e.errno, Errno::EINVAL);
    assert!(e.message.contains("partition 2 is an extended partition"), "{e}");
    assert!(e.message.contains("5 (Linux, 10.0 MiB..18.0 MiB), 6 (Linux"), "{e}");

    // A partition reaching past the end of a truncated image.
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(30 * MIB).unwrap();
    let e = err(select(open(&img), Some("6"), &ext_probe));
    assert_eq!(e.errno, Errno::ENXIO);
    assert!(e.message.contains("partition 6 (Linux, 19.0 MiB..40.0 MiB) reaches past the end of the image (30.0 MiB)"), "{e}");
    let e = err(select(open(&img), None, &ext_probe));
    assert!(e.message.contains("6 (Linux, 19.0 MiB..40.0 MiB) [past the end of the image]"), "{e}");
}

#[test]
fn whole_device() {
    let dir = TempDir::new("sel-whole");
    // No partition table: the whole image, whatever is (or is not) on it.
    let ext = dir.join("bare.ext4");
    run("mke2fs", &["-q", "-F", "-t", "ext4", ext.to_str().unwrap(), "8M"], None);
    let dev = open(&ext);
    let (got, part) = select(Arc::clone(&dev), None, &ext_probe).unwrap();
    assert!(part.is_none());
    assert!(Arc::ptr_eq(&got, &dev));
    let zero = blank_image(&dir, "zero.img", 2);
    let (_, part) = select(open(&zero), None, &ext_probe).unwrap();
    assert!(part.is_none());
    let e = err(select(open(&zero), Some("1"), &ext_probe));
    assert_eq!(e.errno, Errno::ENXIO);
    assert!(e.message.contains("has no partition table"), "{e}");

    // A whole-disk file system whose unused first sector carries an MBR: the file system
    // wins over the table.
    let mbr = blank_image(&dir, "m.img", 8);
    sfdisk(&mbr, "label: dos\n,4M,83\n");
    common::write_at(&ext, 0, &common::read_at(&mbr, 0, 512));
    assert_eq!(images::partitions(&*open(&ext)).unwrap().len(), 1);
    let (got, part) = select(open(&ext), None, &ext_probe).unwrap();
    assert!(part.is_none());
    assert_eq!(got.size(), 8 * MIB);
    // Asked for explicitly, the partition is still served.
    let (got, part) = select(open(&ext), Some("1"), &ext_probe).unwrap();
    assert_eq!(part.unwrap().index, 1);
    assert_eq!(got.size(), 4 * MIB);
}

#[test]
fn selected_partition_is_writable_only_within_itself() {
    let dir = TempDir::new("sel-rw");
    let img = mbr_image(&dir);
    let dev: Arc<dyn BlockDevice> = open_image(&img, OpenMode::ReadWrite).unwrap();
    let (p1, _) = select(Arc::clone(&dev), Some("1"), &ext_probe).unwrap();
    p1.write_at(&[0x77; 512], 8 * MIB - 512).unwrap();
    assert_eq!(p1.write_at(&[0x77; 512], 8 * MIB), Err(Errno::EIO));
    p1.flush().unwrap();
    drop((p1, dev));
    assert_eq!(common::read_at(&img, 9 * MIB - 512, 513)[..512], [0x77; 512]);
    assert_eq!(common::read_at(&img, 9 * MIB, 1)[0], 0);
    // Read-only image: the partition refuses writes.
    let (p1, _) = select(open(&img), Some("1"), &ext_probe).unwrap();
    assert!(p1.read_only());
    assert_eq!(p1.write_at(&[0; 512], 0), Err(Errno::EROFS));
}
