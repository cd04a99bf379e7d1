//! BSD disklabels: NetBSD, FreeBSD and OpenBSD partitions named by letter.
//!
//! A label (`struct disklabel`, magic 0x82564557 at its start and again at byte 132, in the
//! byte order of the machine that wrote it) sits in sector 1 of the disk or of an MBR slice of
//! type 0xA9 (NetBSD), 0xA5 (FreeBSD) or 0xA6 (OpenBSD); some ports put it at byte 64 or 128
//! of sector 0. The 16-bit XOR of the whole label, partitions included, is 0. Partition `i`
//! is letter `a + i`: size and offset in sectors (u32) at 148 + 16 i, its file system type
//! (`p_fstype`) at byte 12 of the entry.
//!
//! Offsets are absolute (NetBSD, OpenBSD, and FreeBSD labels whose raw partition starts where
//! the slice does) or relative to the slice (FreeBSD labels whose raw partition starts at 0);
//! a label whose partitions all fit in its slice when read as absolute is taken as absolute.
//! Unused entries (`FS_UNUSED`, which includes the raw whole-disk partitions) are not listed.

use crate::error::ImageError;
use crate::table::{read_bytes, Partition, Scheme};
use vfs_faction::BlockDevice;

/// `DISKMAGIC`.
pub(crate) const DISKMAGIC: u32 = 0x8256_4557;
/// Header bytes before the partition array.
const HEADER: usize = 148;
/// Most partitions a label may hold (letters a..z).
const MAX_PARTITIONS: usize = 26;
/// Where a label is looked for, bytes from the start of its disk or slice: sector 1, then
/// byte 64 and 128 of sector 0 (and byte 0, for labels written at the very start).
const PLACES: [usize; 4] = [512, 64, 128, 0];
/// Bytes read to look for a label.
const WINDOW: usize = 1024 + HEADER + 16 * MAX_PARTITIONS;

/// MBR slice types that hold a BSD label.
pub(crate) fn is_bsd_slice(kind: u8) -> bool {
    matches!(kind, 0xA5 | 0xA6 | 0xA9)
}

/// One entry of a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub letter: char,
    pub offset: u64,
    pub sectors: u64,
    pub fstype: u8,
}

/// A label found at `at` bytes from the start of its disk or slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Label {
    pub at: usize,
    pub big_endian: bool,
    pub secsize: u64,
    pub entries: Vec<Entry>,
}

fn u16_at(b: &[u8], at: usize, be: bool) -> u16 {
    let a = [b[at], b[at + 1]];
    if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

fn u32_at(b: &[u8], at: usize, be: bool) -> u32 {
    let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

/// Parses a label at `at` in `buf`, if a valid one is there.
pub(crate) fn parse_at(buf: &[u8], at: usize) -> Option<Label> {
    if buf.len() < at + HEADER {
        return None;
    }
    let be = [false, true].into_iter().find(|&be| u32_at(buf, at, be) == DISKMAGIC)?;
    if u32_at(buf, at + 132, be) != DISKMAGIC {
        return None;
    }
    let n = usize::from(u16_at(buf, at + 138, be));
    if n == 0 || n > MAX_PARTITIONS || buf.len() < at + HEADER + 16 * n {
        return None;
    }
    let end = at + HEADER + 16 * n;
    let xor = buf[at..end].chunks_exact(2).fold(0u16, |x, c| x ^ u16_at(c, 0, be));
    if xor != 0 {
        return None;
    }
    let secsize = u64::from(u32_at(buf, at + 40, be));
    let secsize = if secsize.is_power_of_two() && (512..=4096).contains(&secsize) { secsize } else { 512 };
    let entries = (0..n)
        .map(|i| {
            let e = at + HEADER + 16 * i;
            Entry {
                letter: char::from(b'a' + i as u8),
                sectors: u64::from(u32_at(buf, e, be)),
                offset: u64::from(u32_at(buf, e + 4, be)),
                fstype: buf[e + 12],
            }
        })
        .collect();
    Some(Label { at, big_endian: be, secsize, entries })
}

/// Looks for a label at the start of the region `base..base+len` of `dev`.
pub(crate) fn find(dev: &dyn BlockDevice, base: u64, len: u64) -> Result<Option<Label>, ImageError> {
    let want = (WINDOW as u64).min(len);
    let Some(buf) = read_bytes(dev, base, want)? else { return Ok(None) };
    Ok(PLACES.iter().find_map(|&at| parse_at(&buf, at)))
}

/// Names of the common `p_fstype` values.
fn fstype_name(t: u8) -> String {
    match t {
        1 => "swap".into(),
        7 => "4.2BSD".into(),
        8 => "MSDOS".into(),
        9 => "4.4LFS".into(),
        10 => "unknown".into(),
        11 => "HPFS".into(),
        12 => "ISO9660".into(),
        13 => "boot".into(),
        17 => "ext2fs".into(),
        t => format!("type {t}"),
    }
}

/// The partitions of `label`, found in the slice `slice` (start and length in bytes; the whole
/// disk for a whole-disk label), numbered from `next_index` on.
pub(crate) fn partitions(
    label: &Label,
    slice: (u64, u64),
    slice_no: Option<u32>,
    next_index: &mut u32,
    warnings: &mut Vec<String>,
) -> Vec<Partition> {
    let ss = label.secsize;
    let (sstart, slen) = slice;
    let used: Vec<&Entry> = label.entries.iter().filter(|e| e.fstype != 0 && e.sectors != 0).collect();
    let fits_absolute = used.iter().all(|e| {
        let s = e.offset.saturating_mul(ss);
        s >= sstart && s.saturating_add(e.sectors.saturating_mul(ss)) <= sstart.saturating_add(slen)
    });
    let mut out = Vec::new();
    for e in used {
        let rel = if fits_absolute { e.offset.saturating_mul(ss) - sstart } else { e.offset.saturating_mul(ss) };
        let size = e.sectors.saturating_mul(ss);
        if rel.saturating_add(size) > slen {
            warnings.push(format!(
                "disklabel partition {} ({} sectors at {}) does not fit in its {}; ignored",
                e.letter,
                e.sectors,
                e.offset,
                if slice_no.is_some() { "slice" } else { "disk" }
            ));
            continue;
        }
        out.push(Partition {
            index: *next_index,
            scheme: Scheme::BsdLabel,
            start: sstart + rel,
            size,
            kind: format!("{} ({})", fstype_name(e.fstype), e.fstype),
            name: None,
            letter: Some(e.letter),
            slice: slice_no,
        });
        *next_index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(be: bool, parts: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut b = vec![0u8; 1024 + HEADER + 16 * parts.len()];
        let put32 = |b: &mut [u8], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
        };
        let at = 512;
        put32(&mut b, at, DISKMAGIC);
        put32(&mut b, at + 132, DISKMAGIC);
        put32(&mut b, at + 40, 512);
        let n = (parts.len() as u16).to_le_bytes();
        b[at + 138..at + 140].copy_from_slice(&if be { (parts.len() as u16).to_be_bytes() } else { n });
        for (i, &(size, off, t)) in parts.iter().enumerate() {
            let e = at + HEADER + 16 * i;
            put32(&mut b, e, size);
            put32(&mut b, e + 4, off);
            b[e + 12] = t;
        }
        let end = at + HEADER + 16 * parts.len();
        let x = b[at..end].chunks_exact(2).fold(0u16, |x, c| x ^ u16_at(c, 0, be));
        let c = if be { x.to_be_bytes() } else { x.to_le_bytes() };
        b[at + 136..at + 138].copy_from_slice(&c);
        b
    }

    #[test]
    fn labels_in_both_byte_orders_with_checksums() {
        for be in [false, true] {
            let b = label(be, &[(100, 16, 7), (0, 0, 0), (200, 0, 0), (50, 116, 1)]);
            let l = parse_at(&b, 512).unwrap();
            assert_eq!(l.big_endian, be);
            let mut w = Vec::new();
            let mut next = 5;
            let p = partitions(&l, (0, 200 * 512), None, &mut next, &mut w);
            assert_eq!(p.len(), 2);
            assert_eq!((p[0].letter, p[0].start, p[0].size), (Some('a'), 16 * 512, 100 * 512));
            assert_eq!((p[1].letter, p[1].index), (Some('d'), 6));
            let mut bad = b.clone();
            bad[512 + HEADER] ^= 1;
            assert!(parse_at(&bad, 512).is_none(), "checksum");
        }
    }

    #[test]
    fn relative_and_absolute_offsets_in_a_slice() {
        let b = label(false, &[(100, 2048 + 16, 7)]);
        let l = parse_at(&b, 512).unwrap();
        let mut w = Vec::new();
        let p = partitions(&l, (2048 * 512, 1000 * 512), Some(1), &mut 5, &mut w);
        assert_eq!(p[0].start, (2048 + 16) * 512, "absolute");
        let b = label(false, &[(100, 16, 7)]);
        let l = parse_at(&b, 512).unwrap();
        let p = partitions(&l, (2048 * 512, 1000 * 512), Some(1), &mut 5, &mut w);
        assert_eq!(p[0].start, (2048 + 16) * 512, "relative");
        let b = label(false, &[(5000, 16, 7)]);
        let l = parse_at(&b, 512).unwrap();
        assert!(partitions(&l, (2048 * 512, 1000 * 512), Some(1), &mut 5, &mut w).is_empty());
        assert_eq!(w.len(), 1);
    }
}
