//! Partition tables, judged against sfdisk and sgdisk; damaged tables.

mod common;

use common::{blank_image, run, sfdisk, sfdisk_dump, Dumped, TempDir};
use images::{open_image, partitions, read_table, Partition, Scheme};
use std::path::Path;
use vfs_faction::memdev::MemDisk;
use vfs_faction::{Errno, OpenMode};

fn table_of(path: &Path) -> images::PartitionTable {
    let img = open_image(path, OpenMode::ReadOnly).unwrap();
    read_table(&*img).unwrap()
}

/// Our partitions in the oracle's terms.
fn as_dumped(parts: &[Partition]) -> Vec<Dumped> {
    parts
        .iter()
        .map(|p| Dumped {
            index: p.index,
            start: p.start,
            size: p.size,
            kind: match p.mbr_type() {
                Some(t) => format!("{t:x}"),
                None => p.kind.clone(),
            },
            name: p.name.clone(),
        })
        .collect()
}

fn sorted(mut v: Vec<Dumped>) -> Vec<Dumped> {
    v.sort_by_key(|d| d.index);
    v
}

#[test]
fn no_partition_table() {
    let dir = TempDir::new("none");
    let zero = blank_image(&dir, "zero.img", 4);
    let t = table_of(&zero);
    assert_eq!(t.scheme, None);
    assert!(t.partitions.is_empty());

    let ext = dir.join("ext.img");
    run("mke2fs", &["-q", "-F", "-t", "ext4", ext.to_str().unwrap(), "8M"], None);
    assert!(partitions(&*open_image(&ext, OpenMode::ReadOnly).unwrap()).unwrap().is_empty());

    // Too small to hold even a sector.
    assert!(partitions(&MemDisk::new(100)).unwrap().is_empty());
    assert!(partitions(&MemDisk::new(0)).unwrap().is_empty());
}

#[test]
fn mbr_primaries_match_sfdisk() {
    let dir = TempDir::new("mbr");
    let img = blank_image(&dir, "p.img", 40);
    sfdisk(&img, "label: dos\n,8M,83\n,4M,82\n,,c\n");
    let t = table_of(&img);
    assert_eq!(t.scheme, Some(Scheme::Mbr));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let oracle = sfdisk_dump(&img);
    assert_eq!(oracle.len(), 3);
    assert_eq!(as_dumped(&t.partitions), oracle);
    let p = &t.partitions[0];
    assert_eq!(p.kind, "Linux (0x83)");
    assert_eq!(p.to_string(), "1 (Linux, 1.0 MiB..9.0 MiB)");
    assert_eq!(t.partitions[1].kind, "Linux swap / Solaris (0x82)");
    assert_eq!(t.partitions[2].kind, "W95 FAT32 (LBA) (0x0c)");
    assert_eq!(t.partitions[2].short_kind(), "W95 FAT32 (LBA)");

    // A primary in slot 3 only: numbered 3, as Linux does.
    let img = blank_image(&dir, "slot3.img", 16);
    sfdisk(&img, "label: dos\n3 : start=2048, size=4096, type=83\n");
    let t = table_of(&img);
    assert_eq!(as_dumped(&t.partitions), sfdisk_dump(&img));
    assert_eq!(t.partitions[0].index, 3);
}

#[test]
fn mbr_logical_partitions_match_sfdisk() {
    let dir = TempDir::new("ext");
    for ext_type in ["5", "f", "85"] {
        let img = blank_image(&dir, &format!("e{ext_type}.img"), 64);
        sfdisk(&img, &format!("label: dos\n,8M,83\n,8M,83\n,,{ext_type}\n,4M,83\n,6M,83\n,,82\n"));
        let t = table_of(&img);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let ours = as_dumped(&t.partitions);
        let oracle = sorted(sfdisk_dump(&img));
        assert_eq!(oracle.iter().map(|d| d.index).collect::<Vec<_>>(), [1, 2, 3, 5, 6, 7]);
        assert_eq!(sorted(ours), oracle, "extended type {ext_type}");
        let ext = t.partitions.iter().find(|p| p.index == 3).unwrap();
        assert!(ext.is_container());
        assert!(!t.partitions[0].is_container());
    }
}

#[test]
fn gpt_matches_sfdisk_and_sgdisk() {
    let dir = TempDir::new("gpt");
    let img = blank_image(&dir, "g.img", 48);
    let s = img.to_str().unwrap();
    run(
        "sgdisk",
        &[
            "-n", "1:2048:+4M", "-t", "1:8300", "-c", "1:root",
            "-n", "2:0:+3M", "-t", "2:ef00", "-c", "2:EFI system",
            // Entry 3 left unused: numbering keeps the array index.
            "-n", "4:0:+5M", "-t", "4:0700", "-c", "4:dätä ✓",
            "-n", "5:0:+1M", "-t", "5:a503",
            "-n", "6:0:0", "-t", "6:a902", "-c", "6:netbsd",
            s,
        ],
        None,
    );
    let t = table_of(&img);
    assert_eq!(t.scheme, Some(Scheme::Gpt));
    assert_eq!(t.sector_size, 512);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    // Types are compared by name below.
    let untyped = |v: Vec<Dumped>| -> Vec<Dumped> {
        v.into_iter().map(|d| Dumped { kind: String::new(), ..d }).collect()
    };
    assert_eq!(untyped(as_dumped(&t.partitions)), untyped(sfdisk_dump(&img)));
    let kinds: Vec<&str> = t.partitions.iter().map(|p| p.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["Linux filesystem", "EFI System", "Microsoft basic data", "FreeBSD UFS", "NetBSD FFS"]
    );
    assert_eq!(t.partitions[2].name.as_deref(), Some("dätä ✓"));
    assert_eq!(t.partitions[3].name, None);
    assert_eq!(t.partitions[0].to_string(), "1 (\"root\", Linux filesystem, 1.0 MiB..5.0 MiB)");

    // sgdisk -p agrees on numbers, first and last sectors and names.
    let listing = run("sgdisk", &["-p", s], None);
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), t.partitions.len());
    for (row, p) in rows.iter().zip(&t.partitions) {
        assert_eq!(row[0].parse::<u32>().unwrap(), p.index);
        assert_eq!(row[1].parse::<u64>().unwrap() * 512, p.start);
        assert_eq!((row[2].parse::<u64>().unwrap() + 1) * 512, p.end());
        let name = row[6..].join(" ");
        assert_eq!(name, p.name.clone().unwrap_or_default());
    }
}

#[test]
fn gpt_type_names_match_sgdisk_codes() {
    // sgdisk knows the GUID of each short code; we must name what it writes.
    let codes = [
        ("ef00", "EFI System"), ("ef02", "BIOS boot"), ("8300", "Linux filesystem"),
        ("8200", "Linux swap"), ("8e00", "Linux LVM"), ("fd00", "Linux RAID"),
        ("8302", "Linux home"), ("8304", "Linux root (x86-64)"), ("8305", "Linux root (ARM-64)"),
        ("ea00", "Linux extended boot"), ("8309", "Linux LUKS"), ("0700", "Microsoft basic data"),
        ("0c01", "Microsoft reserved"), ("2700", "Windows recovery environment"),
        ("a500", "FreeBSD data"), ("a501", "FreeBSD boot"), ("a502", "FreeBSD swap"),
        ("a503", "FreeBSD UFS"), ("a504", "FreeBSD ZFS"), ("a901", "NetBSD swap"),
        ("a902", "NetBSD FFS"), ("a903", "NetBSD LFS"), ("a906", "NetBSD RAID"),
        ("a600", "OpenBSD data"), ("af00", "Apple HFS/HFS+"), ("af0a", "Apple APFS"),
    ];
    let dir = TempDir::new("gpt-types");
    let img = blank_image(&dir, "types.img", 8);
    let mut args: Vec<String> = Vec::new();
    for (i, (code, _)) in codes.iter().enumerate() {
        args.extend(["-n".into(), format!("{}:0:+64K", i + 1), "-t".into(), format!("{}:{code}", i + 1)]);
    }
    args.push(img.to_str().unwrap().into());
    run("sgdisk", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), None);
    let t = table_of(&img);
    let got: Vec<&str> = t.partitions.iter().map(|p| p.kind.as_str()).collect();
    let want: Vec<&str> = codes.iter().map(|(_, n)| *n).collect();
    assert_eq!(got, want);
}

/// A GPT image of three partitions; returns (image, partitions as first read).
fn gpt_image(dir: &TempDir, name: &str) -> (std::path::PathBuf, Vec<Partition>) {
    let img = blank_image(dir, name, 24);
    sfdisk(
        &img,
        "label: gpt\nsize=4M, type=L, name=\"one\"\nsize=4M, type=S, name=\"two\"\ntype=L, name=\"three\"\n",
    );
    let t = table_of(&img);
    assert_eq!(t.partitions.len(), 3);
    assert!(t.warnings.is_empty());
    (img, t.partitions)
}

#[test]
fn gpt_damaged_primary_falls_back_to_backup() {
    let dir = TempDir::new("gpt-backup");

    // A flipped byte in the primary header: header CRC mismatch.
    let (img, before) = gpt_image(&dir, "hdr.img");
    common::write_at(&img, 512 + 40, &[0x99]);
    let t = table_of(&img);
    assert_eq!(t.partitions, before);
    assert!(t.warnings.iter().any(|w| w.contains("header checksum mismatch")
        && w.contains("using the backup header at LBA 49151")), "{:?}", t.warnings);

    // The primary header wiped out entirely.
    let (img, before) = gpt_image(&dir, "gone.img");
    common::write_at(&img, 512, &[0; 512]);
    let t = table_of(&img);
    assert_eq!(t.partitions, before);
    assert!(t.warnings.iter().any(|w| w.contains("no primary header")), "{:?}", t.warnings);

    // A flipped byte in the primary entry array: array CRC mismatch.
    let (img, before) = gpt_image(&dir, "array.img");
    common::write_at(&img, 1024 + 56, b"X");
    let t = table_of(&img);
    assert_eq!(t.partitions, before);
    assert!(t.warnings.iter().any(|w| w.contains("entry array checksum mismatch")), "{:?}", t.warnings);

    // An absurd entry count with a correct header CRC.
    let (img, before) = gpt_image(&dir, "count.img");
    common::write_at(&img, 512 + 80, &(1u32 << 31).to_le_bytes());
    common::fix_gpt_header_crc(&img, 512);
    let t = table_of(&img);
    assert_eq!(t.partitions, before);
    assert!(t.warnings.iter().any(|w| w.contains("absurd")), "{:?}", t.warnings);

    // Both headers absurd: a clear error, no partitions made up.
    let last = std::fs::metadata(&img).unwrap().len() - 512;
    common::write_at(&img, last + 80, &(1u32 << 31).to_le_bytes());
    common::fix_gpt_header_crc(&img, last);
    let dev = open_image(&img, OpenMode::ReadOnly).unwrap();
    let e = partitions(&*dev).unwrap_err();
    assert_eq!(e.errno, Errno::EIO);
    assert!(e.message.starts_with(&format!("{}: the MBR is a GPT protective MBR, but no usable GPT", img.display())), "{e}");
    assert!(e.message.contains("2147483648 partition entries of 128 bytes is absurd"), "{e}");

    // Both headers gone behind a protective MBR.
    let (img, _) = gpt_image(&dir, "both.img");
    common::write_at(&img, 512, &[0; 512]);
    common::write_at(&img, last, &[0; 512]);
    let e = partitions(&*open_image(&img, OpenMode::ReadOnly).unwrap()).unwrap_err();
    assert_eq!(e.errno, Errno::EIO);
    assert!(e.message.contains("no primary header at LBA 1; no backup header at LBA 49151"), "{e}");
}

// ---- hand-made tables -------------------------------------------------------------------

/// Writes an MBR entry into `sector` slot `slot` (0-based).
fn mbr_entry(sector: &mut [u8], slot: usize, kind: u8, start: u32, sectors: u32) {
    let e = &mut sector[446 + 16 * slot..446 + 16 * (slot + 1)];
    e.fill(0);
    e[4] = kind;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
}

fn sign(sector: &mut [u8]) {
    sector[510] = 0x55;
    sector[511] = 0xAA;
}

const LINUX_FS: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];

/// A GPT (primary and backup) with `ss`-byte sectors, `count` entries of 128 bytes; `parts`
/// are (array slot, first LBA, last LBA, name).
fn build_gpt(disk: &mut [u8], ss: usize, count: u32, parts: &[(usize, u64, u64, &str)]) {
    let lbas = (disk.len() / ss) as u64;
    let array_bytes = count as usize * 128;
    let array_lbas = array_bytes.div_ceil(ss) as u64;
    let mut array = vec![0u8; array_bytes];
    for &(slot, first, last, name) in parts {
        let e = &mut array[slot * 128..(slot + 1) * 128];
        e[0..16].copy_from_slice(&LINUX_FS);
        e[16..32].copy_from_slice(&[slot as u8 + 1; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_crc = common::crc32(&array);
    let first_usable = 2 + array_lbas;
    let last_usable = lbas - 2 - array_lbas;
    let header = |my: u64, alt: u64, array_lba: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&[0x42; 16]);
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&count.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = common::crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let last = lbas - 1;
    let backup_array = last - array_lbas;
    let ssz = ss as u64;
    let put = |disk: &mut [u8], lba: u64, data: &[u8]| {
        let at = (lba * ssz) as usize;
        disk[at..at + data.len()].copy_from_slice(data);
    };
    put(disk, 1, &header(1, last, 2));
    put(disk, 2, &array);
    put(disk, backup_array, &array);
    put(disk, last, &header(last, 1, backup_array));
    let mut mbr = vec![0u8; 512];
    mbr_entry(&mut mbr, 0, 0xEE, 1, (lbas - 1).min(u32::MAX as u64) as u32);
    sign(&mut mbr);
    put(disk, 0, &mbr);
}

#[test]
fn gpt_with_4096_byte_sectors() {
    let mut disk = vec![0u8; 16 << 20];
    build_gpt(&mut disk, 4096, 128, &[(0, 256, 1279, "big"), (2, 1280, 3000, "")]);
    let t = read_table(&MemDisk::from_bytes(disk.clone())).unwrap();
    assert_eq!(t.scheme, Some(Scheme::Gpt));
    assert_eq!(t.sector_size, 4096);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let got: Vec<(u32, u64, u64, Option<String>)> =
        t.partitions.iter().map(|p| (p.index, p.start, p.size, p.name.clone())).collect();
    assert_eq!(
        got,
        [(1, 256 * 4096, 1024 * 4096, Some("big".into())), (3, 1280 * 4096, 1721 * 4096, None)]
    );

    // The 4K primary damaged: the 4K backup is found.
    disk[4096 + 30] ^= 1;
    let t = read_table(&MemDisk::from_bytes(disk)).unwrap();
    assert_eq!(t.sector_size, 4096);
    assert_eq!(t.partitions.len(), 2);
    assert!(t.warnings.iter().any(|w| w.contains("backup")), "{:?}", t.warnings);
}

#[test]
fn gpt_odd_entries_are_skipped_or_reported() {
    let mut disk = vec![0u8; 4 << 20];
    // Reversed, huge (overflows bytes), past the end, overlapping.
    build_gpt(
        &mut disk,
        512,
        4,
        &[(0, 100, 50, "reversed"), (1, u64::MAX / 2, u64::MAX / 2 + 1, "huge"), (2, 40, 9000, "past"), (3, 40, 60, "overlap")],
    );
    let t = read_table(&MemDisk::from_bytes(disk)).unwrap();
    let idx: Vec<u32> = t.partitions.iter().map(|p| p.index).collect();
    assert_eq!(idx, [3, 4]);
    let w = t.warnings.join("\n");
    assert!(w.contains("GPT entry 1: last LBA 50 lies before first LBA 100; ignored"), "{w}");
    assert!(w.contains("GPT entry 2: LBA"), "{w}");
    assert!(w.contains("partition 3 (\"past\", Linux filesystem, 20.0 KiB..4.4 MiB) reaches past the end of the image (4.0 MiB)"), "{w}");
    assert!(w.contains("overlap"), "{w}");
    assert!(w.contains("lies outside the usable area"), "{w}");
}

#[test]
fn ebr_loops_and_long_chains_end() {
    let dir = TempDir::new("ebr");
    let img = blank_image(&dir, "loop.img", 64);
    sfdisk(&img, "label: dos\n,8M,83\n,,5\n,4M,83\n,4M,83\n,,83\n");
    let good = table_of(&img).partitions;
    assert_eq!(good.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2, 5, 6, 7]);

    // Walk the chain as written and point the last EBR's link back to the first.
    let ext_start = good[1].start / 512;
    let mut ebr = ext_start;
    loop {
        let s = common::read_at(&img, ebr * 512, 512);
        let link = u32::from_le_bytes(s[446 + 16 + 8..446 + 16 + 12].try_into().unwrap());
        if s[446 + 16 + 4] == 0 {
            break;
        }
        ebr = ext_start + u64::from(link);
    }
    let mut s = common::read_at(&img, ebr * 512, 512);
    mbr_entry(&mut s, 1, 0x05, 0, 2048);
    common::write_at(&img, ebr * 512, &s);
    let t = table_of(&img);
    assert_eq!(t.partitions, good, "each logical once");
    assert!(t.warnings.iter().any(|w| w.contains(&format!("loops back to LBA {ext_start}"))), "{:?}", t.warnings);

    // An EBR linking to itself.
    let mut s = common::read_at(&img, ext_start * 512, 512);
    mbr_entry(&mut s, 1, 0x05, 0, 2048);
    common::write_at(&img, ext_start * 512, &s);
    let t = table_of(&img);
    assert_eq!(t.partitions.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2, 5]);
    assert!(t.warnings.iter().any(|w| w.contains("loops back")));

    // A chain of 400 EBRs, each holding a 1-sector logical: stops at 256.
    let n = 400u32;
    let mut disk = vec![0u8; (n as usize * 2 + 8) * 512];
    let mut mbr = vec![0u8; 512];
    mbr_entry(&mut mbr, 0, 0x05, 2, n * 2 + 2);
    sign(&mut mbr);
    disk[..512].copy_from_slice(&mbr);
    for i in 0..n {
        let lba = 2 + 2 * i as usize;
        let s = &mut disk[lba * 512..lba * 512 + 512];
        mbr_entry(s, 0, 0x83, 1, 1);
        mbr_entry(s, 1, 0x05, 2 * (i + 1), 2);
        sign(s);
    }
    let t = read_table(&MemDisk::from_bytes(disk)).unwrap();
    assert_eq!(t.partitions.len(), 1 + 256);
    assert_eq!(t.partitions.last().unwrap().index, 4 + 256);
    assert!(t.warnings.iter().any(|w| w.contains("longer than 256")), "{:?}", t.warnings);
}

#[test]
fn mbr_oddities() {
    // Overlapping primaries, a zero-size typed entry, one past the end, a logical chain whose
    // first EBR has no signature.
    let mut disk = vec![0u8; 1 << 20];
    let mut mbr = vec![0u8; 512];
    mbr_entry(&mut mbr, 0, 0x83, 64, 512);
    mbr_entry(&mut mbr, 1, 0x83, 128, 64);
    mbr_entry(&mut mbr, 2, 0x83, 1000, 0);
    mbr_entry(&mut mbr, 3, 0x05, 1800, 4000);
    sign(&mut mbr);
    disk[..512].copy_from_slice(&mbr);
    let t = read_table(&MemDisk::from_bytes(disk)).unwrap();
    assert_eq!(t.partitions.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2, 4]);
    let w = t.warnings.join("\n");
    assert!(w.contains("MBR entry 3 has type 0x83 but no sectors; ignored"), "{w}");
    assert!(w.contains("partitions 1 (Linux, 32.0 KiB..288.0 KiB) and 2 (Linux, 64.0 KiB..96.0 KiB) overlap"), "{w}");
    assert!(w.contains("no extended boot record at LBA 1800"), "{w}");
    assert!(w.contains("partition 4 (Extended, 900.0 KiB..2.8 MiB) reaches past the end"), "{w}");

    // Things that are not partition tables even with 0x55AA.
    let mut s = vec![0u8; 4096];
    mbr_entry(&mut s, 0, 0x83, 64, 512);
    sign(&mut s);
    s[446] = 0x12; // a boot indicator that is neither 0x00 nor 0x80
    assert!(partitions(&MemDisk::from_bytes(s.clone())).unwrap().is_empty());
    s[446] = 0;
    mbr_entry(&mut s, 1, 0x83, 0, 8); // starts in the MBR itself
    assert!(partitions(&MemDisk::from_bytes(s.clone())).unwrap().is_empty());
    mbr_entry(&mut s, 1, 0, 0, 0);
    assert_eq!(partitions(&MemDisk::from_bytes(s.clone())).unwrap().len(), 1);
    // A FAT volume boot record.
    s[0] = 0xEB;
    s[54..62].copy_from_slice(b"FAT16   ");
    assert!(partitions(&MemDisk::from_bytes(s)).unwrap().is_empty());
}

#[test]
fn truncated_image_reports_partitions_past_the_end() {
    let dir = TempDir::new("trunc");
    let img = blank_image(&dir, "t.img", 64);
    sfdisk(&img, "label: dos\n,8M,83\n,16M,83\n,,83\n");
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(20 << 20).unwrap();
    let t = table_of(&img);
    assert_eq!(t.partitions.len(), 3);
    let w = t.warnings.join("\n");
    assert!(w.contains("partition 2 (Linux, 9.0 MiB..25.0 MiB) reaches past the end of the image (20.0 MiB)"), "{w}");
    assert!(w.contains("partition 3 (Linux, 25.0 MiB..64.0 MiB) starts past the end"), "{w}");
}

#[test]
fn random_garbage_never_panics() {
    // Deterministic xorshift; sector 0 and the first GPT sectors random, with the signatures
    // that lead the parsers on, and sometimes valid CRCs over random contents.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let mut disk = vec![0u8; 64 * 1024];
        let n = (next() % 40_000) as usize;
        for b in disk[..n].iter_mut() {
            *b = next() as u8;
        }
        sign(&mut disk[..512]);
        if round % 2 == 0 {
            for i in 0..4 {
                disk[446 + 16 * i] = if next() % 2 == 0 { 0 } else { 0x80 };
                // Small numbers so that entries land inside the disk.
                let start = (next() % 140) as u32;
                let size = (next() % 140) as u32;
                let kind = [0x83u8, 0x05, 0x0F, 0x85, 0xEE, 0x00][(next() % 6) as usize];
                disk[446 + 16 * i + 4] = kind;
                disk[446 + 16 * i + 8..446 + 16 * i + 12].copy_from_slice(&start.to_le_bytes());
                disk[446 + 16 * i + 12..446 + 16 * i + 16].copy_from_slice(&size.to_le_bytes());
            }
            for lba in 1..128 {
                if next() % 3 == 0 {
                    sign(&mut disk[lba * 512..lba * 512 + 512]);
                }
            }
        } else {
            disk[512..520].copy_from_slice(b"EFI PART");
            disk[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
            disk[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
            if next() % 2 == 0 {
                disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
                disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
                let count = (next() % 200) as u32;
                disk[512 + 80..512 + 84].copy_from_slice(&count.to_le_bytes());
                let len = count as usize * 128;
                if 1024 + len <= disk.len() {
                    let crc = common::crc32(&disk[1024..1024 + len]);
                    disk[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
                }
            }
            let mut h = disk[512..604].to_vec();
            h[16..20].fill(0);
            let crc = common::crc32(&h);
            disk[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        }
        let dev = MemDisk::from_bytes(disk);
        if let Ok(t) = read_table(&dev) {
            for p in &t.partitions {
                assert!(p.size > 0);
                let _ = p.to_string();
            }
        }
    }
}
