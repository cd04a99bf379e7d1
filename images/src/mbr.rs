//! DOS/MBR partition tables.
//!
//! Sector 0 holds four 16-byte entries at byte 446 and the signature 0x55 0xAA at byte 510.
//! Entry: boot indicator (0x00 or 0x80) at 0, type at 4, first LBA (u32 LE) at 8, number of
//! sectors (u32 LE) at 12. An extended partition holds a chain of extended boot records
//! (EBRs), each laid out like an MBR: its data entries start relative to the EBR itself, its
//! link entry (an extended type) relative to the start of the outermost extended partition.
//! Sectors are 512 bytes.

use crate::error::ImageError;
use crate::table::{le32, read_bytes, Partition, Scheme};
use vfs_faction::BlockDevice;

/// MBR sector size.
const SECTOR: u64 = 512;
/// Type of the single entry of a GPT's protective MBR.
pub(crate) const GPT_PROTECTIVE: u8 = 0xEE;
/// Most logical partitions (and EBRs) followed along a chain: Linux's limit of partitions
/// per disk. Together with the loop check this bounds the walk.
const MAX_EBRS: usize = 256;

/// One raw entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub boot: u8,
    pub kind: u8,
    pub start: u32,
    pub sectors: u32,
}

impl Entry {
    /// Type 0 or no sectors: an unused slot.
    fn is_unused(&self) -> bool {
        self.kind == 0 || self.sectors == 0
    }
}

/// Extended partition types: DOS (0x05), Windows LBA (0x0F), Linux (0x85).
pub(crate) fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// The four entries of a sector holding the 0x55AA signature.
fn entries(sector: &[u8]) -> Option<[Entry; 4]> {
    if sector.len() < 512 || sector[510] != 0x55 || sector[511] != 0xAA {
        return None;
    }
    Some(std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        Entry { boot: e[0], kind: e[4], start: le32(e, 8), sectors: le32(e, 12) }
    }))
}

/// The boot sector of a whole-volume FAT, exFAT or NTFS file system (they carry 0x55AA too).
fn is_volume_boot_record(s: &[u8]) -> bool {
    let jump = s[0] == 0xEB || s[0] == 0xE9;
    jump && (&s[3..11] == b"NTFS    "
        || &s[3..11] == b"EXFAT   "
        || s[54..62].starts_with(b"FAT")
        || s[82..90].starts_with(b"FAT"))
}

/// The primary entries of sector 0, if it is an MBR.
///
/// Not an MBR: no 0x55AA signature (a bare ext2 or FFS image has zeros there); a boot
/// indicator other than 0x00/0x80; the boot sector of a whole-volume FAT/NTFS file system;
/// a used entry starting at LBA 0 (it would overlap the MBR itself).
pub(crate) fn parse_mbr(sector0: &[u8]) -> Option<[Entry; 4]> {
    let e = entries(sector0)?;
    if e.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return None;
    }
    if is_volume_boot_record(sector0) {
        return None;
    }
    if e.iter().any(|e| !e.is_unused() && e.start == 0) {
        return None;
    }
    Some(e)
}

/// The partitions of an MBR whose primary entries are `primaries`: used primaries as 1–4,
/// then the logical partitions of each extended partition as 5, 6, ...
pub(crate) fn read(
    dev: &dyn BlockDevice,
    primaries: &[Entry; 4],
    warnings: &mut Vec<String>,
) -> Result<Vec<Partition>, ImageError> {
    let mut parts = Vec::new();
    for (slot, e) in primaries.iter().enumerate() {
        if e.kind != 0 && e.sectors == 0 {
            warnings.push(format!(
                "MBR entry {} has type 0x{:02x} but no sectors; ignored",
                slot + 1,
                e.kind
            ));
        }
        if e.is_unused() {
            continue;
        }
        parts.push(partition(slot as u32 + 1, u64::from(e.start), e));
    }
    let mut next_index = 5u32;
    for e in primaries.iter().filter(|e| !e.is_unused() && is_extended(e.kind)) {
        walk_chain(dev, e, &mut next_index, &mut parts, warnings)?;
    }
    Ok(parts)
}

/// An MBR partition from an entry whose first sector is `start_lba`.
fn partition(index: u32, start_lba: u64, e: &Entry) -> Partition {
    Partition {
        index,
        scheme: Scheme::Mbr,
        start: start_lba * SECTOR,
        size: u64::from(e.sectors) * SECTOR,
        kind: format!("{} (0x{:02x})", type_name(e.kind), e.kind),
        name: None,
        letter: None,
        slice: None,
    }
}

/// Follows the EBR chain of the extended partition `ext`, adding its logical partitions.
/// The walk stops (with a warning) at a loop, a link leaving the extended partition, an EBR
/// without signature, or after [`MAX_EBRS`] records.
fn walk_chain(
    dev: &dyn BlockDevice,
    ext: &Entry,
    next_index: &mut u32,
    parts: &mut Vec<Partition>,
    warnings: &mut Vec<String>,
) -> Result<(), ImageError> {
    let ext_start = u64::from(ext.start);
    let ext_end = ext_start + u64::from(ext.sectors);
    let mut visited = Vec::new();
    let mut ebr = ext_start;
    loop {
        if visited.len() >= MAX_EBRS {
            warnings.push(format!(
                "the chain of extended boot records is longer than {MAX_EBRS}; stopped there"
            ));
            return Ok(());
        }
        if visited.contains(&ebr) {
            warnings.push(format!(
                "the chain of extended boot records loops back to LBA {ebr}; stopped there"
            ));
            return Ok(());
        }
        visited.push(ebr);
        let Some(sector) = read_bytes(dev, ebr * SECTOR, SECTOR)? else {
            warnings.push(format!(
                "the extended boot record at LBA {ebr} lies past the end of the image; \
                 logical partitions from there on are missing"
            ));
            return Ok(());
        };
        let Some(entries) = entries(&sector) else {
            warnings.push(format!(
                "no extended boot record at LBA {ebr} (no 0x55AA signature); \
                 logical partitions from there on are missing"
            ));
            return Ok(());
        };
        let mut link = None;
        for e in entries.iter().filter(|e| !e.is_unused()) {
            if is_extended(e.kind) {
                link.get_or_insert(ext_start + u64::from(e.start));
            } else {
                parts.push(partition(*next_index, ebr + u64::from(e.start), e));
                *next_index += 1;
            }
        }
        match link {
            None => return Ok(()),
            Some(next) if next < ext_start || next >= ext_end => {
                warnings.push(format!(
                    "the extended boot record at LBA {ebr} links to LBA {next}, outside its \
                     extended partition (LBA {ext_start}..{ext_end}); stopped there"
                ));
                return Ok(());
            }
            Some(next) => ebr = next,
        }
    }
}

/// Names of common MBR partition types (as fdisk names them).
pub(crate) fn type_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0B => "W95 FAT32",
        0x0C => "W95 FAT32 (LBA)",
        0x0E => "W95 FAT16 (LBA)",
        0x0F => "W95 Ext'd (LBA)",
        0x11 => "Hidden FAT12",
        0x14 => "Hidden FAT16 <32M",
        0x16 => "Hidden FAT16",
        0x17 => "Hidden HPFS/NTFS",
        0x1B => "Hidden W95 FAT32",
        0x1C => "Hidden W95 FAT32 (LBA)",
        0x1E => "Hidden W95 FAT16 (LBA)",
        0x27 => "Hidden NTFS WinRE",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xA6 => "OpenBSD",
        0xA8 => "Darwin UFS",
        0xA9 => "NetBSD",
        0xAF => "HFS / HFS+",
        0xDA => "Non-FS data",
        0xEE => "GPT",
        0xEF => "EFI (FAT-12/16/32)",
        0xFD => "Linux raid autodetect",
        _ => "unknown",
    }
}
