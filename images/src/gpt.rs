//! GUID partition tables (UEFI specification, "GUID Partition Table Disk Layout").
//!
//! Header (little-endian) at LBA 1, backup at the last LBA: "EFI PART" at 0, header size at
//! 12, header CRC32 at 16 (computed with itself zeroed), my LBA at 24, alternate LBA at 32,
//! first/last usable LBA at 40/48, disk GUID at 56, entry array LBA at 72, number of entries
//! at 80, entry size at 84, entry array CRC32 at 88. Entry: type GUID at 0, unique GUID at
//! 16, first and last LBA (inclusive) at 32/40, attributes at 48, name (36 UTF-16LE code
//! units) at 56.

use crate::error::ImageError;
use crate::table::{le32, le64, read_bytes, Partition, Scheme};
use vfs_faction::{BlockDevice, Errno};

/// Sector sizes tried, in order.
const SECTOR_SIZES: [u64; 2] = [512, 4096];
/// Largest entry array accepted (the usual one is 16 KiB: 128 entries of 128 bytes).
const MAX_ARRAY_BYTES: u64 = 16 << 20;

/// Why a header was not used.
enum HeaderError {
    /// No "EFI PART" there (or the device is too small to hold it).
    Missing,
    /// A header, but a damaged or nonsensical one.
    Bad(String),
    /// The device could not be read.
    Io(ImageError),
}

/// A header that passed every check, with its (checksummed) entry array.
struct Header {
    first_usable: u64,
    last_usable: u64,
    entry_size: usize,
    array: Vec<u8>,
}

/// Reads the GPT of `dev`, if it has one: `Ok(None)` when there is no GPT signature and the
/// MBR is not `protective`. Fails with `EIO` when a GPT is there but neither header is usable.
pub(crate) fn read(
    dev: &dyn BlockDevice,
    protective: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<(Vec<Partition>, u32)>, ImageError> {
    let mut failures = Vec::new();
    for ss in SECTOR_SIZES {
        match read_header(dev, ss, 1) {
            Ok(h) => return Ok(Some((entries(&h, ss, warnings), ss as u32))),
            Err(HeaderError::Missing) => {}
            Err(HeaderError::Bad(why)) => {
                failures.push(format!("primary header (LBA 1, {ss}-byte sectors): {why}"))
            }
            Err(HeaderError::Io(e)) => return Err(e),
        }
    }
    if failures.is_empty() {
        if !protective {
            return Ok(None);
        }
        failures.push("no primary header at LBA 1".to_string());
    }
    for ss in SECTOR_SIZES {
        let lbas = dev.size() / ss;
        if lbas < 3 {
            continue;
        }
        let last = lbas - 1;
        match read_header(dev, ss, last) {
            Ok(h) => {
                warnings.push(format!(
                    "the primary GPT is damaged ({}); using the backup header at LBA {last}",
                    failures.join("; ")
                ));
                return Ok(Some((entries(&h, ss, warnings), ss as u32)));
            }
            Err(HeaderError::Missing) => {
                if ss == 512 {
                    failures.push(format!("no backup header at LBA {last}"));
                }
            }
            Err(HeaderError::Bad(why)) => {
                failures.push(format!("backup header (LBA {last}, {ss}-byte sectors): {why}"))
            }
            Err(HeaderError::Io(e)) => return Err(e),
        }
    }
    let what = if protective { "the MBR is a GPT protective MBR, but " } else { "" };
    Err(ImageError::new(
        Errno::EIO,
        format!("{}: {what}no usable GPT: {}", dev.describe(), failures.join("; ")),
    ))
}

/// Reads and checks the header at `lba` and its entry array.
fn read_header(dev: &dyn BlockDevice, ss: u64, lba: u64) -> Result<Header, HeaderError> {
    let Some(off) = lba.checked_mul(ss) else {
        return Err(HeaderError::Missing);
    };
    let buf = match read_bytes(dev, off, ss) {
        Ok(Some(buf)) => buf,
        Ok(None) => return Err(HeaderError::Missing),
        Err(e) => return Err(HeaderError::Io(e)),
    };
    if &buf[0..8] != b"EFI PART" {
        return Err(HeaderError::Missing);
    }
    let bad = |why: String| Err(HeaderError::Bad(why));

    let header_size = u64::from(le32(&buf, 12));
    if !(92..=ss).contains(&header_size) {
        return bad(format!("header size {header_size} is invalid"));
    }
    let mut copy = buf[..header_size as usize].to_vec();
    copy[16..20].fill(0);
    let stored = le32(&buf, 16);
    let computed = crc32fast::hash(&copy);
    if stored != computed {
        return bad(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let my_lba = le64(&buf, 24);
    if my_lba != lba {
        return bad(format!("the header says it is at LBA {my_lba}"));
    }
    let first_usable = le64(&buf, 40);
    let last_usable = le64(&buf, 48);
    if first_usable > last_usable {
        return bad(format!("usable area LBA {first_usable}..{last_usable} is reversed"));
    }
    let array_lba = le64(&buf, 72);
    let count = le32(&buf, 80);
    let entry_size = le32(&buf, 84);
    if entry_size < 128 || !entry_size.is_power_of_two() || u64::from(entry_size) > ss {
        return bad(format!("partition entry size {entry_size} is invalid"));
    }
    let array_bytes = u64::from(count) * u64::from(entry_size);
    if array_bytes > MAX_ARRAY_BYTES {
        return bad(format!(
            "{count} partition entries of {entry_size} bytes is absurd (at most {} bytes \
             of entries accepted)",
            MAX_ARRAY_BYTES
        ));
    }
    let array = match array_lba.checked_mul(ss).map(|off| read_bytes(dev, off, array_bytes)) {
        Some(Ok(Some(array))) => array,
        Some(Err(e)) => return Err(HeaderError::Io(e)),
        _ => {
            return bad(format!(
                "the partition entry array (LBA {array_lba}, {array_bytes} bytes) lies past \
                 the end of the image"
            ))
        }
    };
    let stored = le32(&buf, 88);
    let computed = crc32fast::hash(&array);
    if stored != computed {
        return bad(format!(
            "partition entry array checksum mismatch (stored {stored:#010x}, computed \
             {computed:#010x})"
        ));
    }
    Ok(Header { first_usable, last_usable, entry_size: entry_size as usize, array })
}

/// The used entries of a checked header, numbered 1..n by array index.
fn entries(h: &Header, ss: u64, warnings: &mut Vec<String>) -> Vec<Partition> {
    let mut parts = Vec::new();
    for (i, e) in h.array.chunks_exact(h.entry_size).enumerate() {
        let index = i as u32 + 1; // at most MAX_ARRAY_BYTES / 128 entries
        let type_guid: [u8; 16] = e[0..16].try_into().expect("16 bytes");
        if type_guid == [0; 16] {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            warnings.push(format!(
                "GPT entry {index}: last LBA {last} lies before first LBA {first}; ignored"
            ));
            continue;
        }
        let start = first.checked_mul(ss);
        let size = (last - first).checked_add(1).and_then(|n| n.checked_mul(ss));
        let (Some(start), Some(size)) = (start, size) else {
            warnings.push(format!("GPT entry {index}: LBA {first}..{last} is absurd; ignored"));
            continue;
        };
        if start.checked_add(size).is_none() {
            warnings.push(format!("GPT entry {index}: LBA {first}..{last} is absurd; ignored"));
            continue;
        }
        if first < h.first_usable || last > h.last_usable {
            warnings.push(format!(
                "GPT entry {index} (LBA {first}..{last}) lies outside the usable area \
                 (LBA {}..{})",
                h.first_usable, h.last_usable
            ));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name: String =
            char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        parts.push(Partition {
            index,
            scheme: Scheme::Gpt,
            start,
            size,
            kind: type_name(&type_guid),
            name: if name.is_empty() { None } else { Some(name) },
            letter: None,
            slice: None,
        });
    }
    parts
}

/// A GUID in its usual text form: the first three fields are stored little-endian.
pub(crate) fn format_guid(g: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

/// Common partition type GUIDs and their names.
const TYPES: &[(&str, &str)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("024DEE41-33E7-11D3-9D69-0008C781F39F", "MBR partition scheme"),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM-64)"),
    ("BC13C2FF-59E6-4262-A352-B275FD6F7172", "Linux extended boot"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("8DA63339-0007-60C0-C436-083AC8230908", "Linux reserved"),
    ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery environment"),
    ("83BD6B9D-7F41-11DC-BE0B-001560B84F0F", "FreeBSD boot"),
    ("516E7CB4-6ECF-11D6-8FF8-00022D09712B", "FreeBSD data"),
    ("516E7CB6-6ECF-11D6-8FF8-00022D09712B", "FreeBSD UFS"),
    ("516E7CB5-6ECF-11D6-8FF8-00022D09712B", "FreeBSD swap"),
    ("516E7CB8-6ECF-11D6-8FF8-00022D09712B", "FreeBSD Vinum"),
    ("516E7CBA-6ECF-11D6-8FF8-00022D09712B", "FreeBSD ZFS"),
    ("49F48D5A-B10E-11DC-B99B-0019D1879648", "NetBSD FFS"),
    ("49F48D32-B10E-11DC-B99B-0019D1879648", "NetBSD swap"),
    ("49F48D82-B10E-11DC-B99B-0019D1879648", "NetBSD LFS"),
    ("49F48DAA-B10E-11DC-B99B-0019D1879648", "NetBSD RAID"),
    ("2DB519C4-B10F-11DC-B99B-0019D1879648", "NetBSD concatenated"),
    ("2DB519EC-B10F-11DC-B99B-0019D1879648", "NetBSD encrypted"),
    ("824CC7A0-36A8-11E3-890A-952519AD3F61", "OpenBSD data"),
    ("48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS/HFS+"),
    ("7C3457EF-0000-11AA-AA11-00306543ECAC", "Apple APFS"),
    ("6A898CC3-1DD2-11B2-99A6-080020736631", "Solaris /usr & Apple ZFS"),
];

/// The name of a type GUID, or the GUID itself.
fn type_name(g: &[u8; 16]) -> String {
    let text = format_guid(g);
    match TYPES.iter().find(|(guid, _)| *guid == text) {
        Some((_, name)) => (*name).to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_is_mixed_endian() {
        // Linux filesystem, as stored on disk.
        let g = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        assert_eq!(format_guid(&g), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(type_name(&g), "Linux filesystem");
        assert_eq!(type_name(&[1; 16]), "01010101-0101-0101-0101-010101010101");
    }
}
