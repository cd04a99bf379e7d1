//! Partition tables: what [`partitions`] and [`read_table`] return, and the checks they share.

use crate::error::ImageError;
use crate::{disklabel, gpt, human_size, mbr};
use std::fmt;
use vfs_faction::BlockDevice;

/// The kind of partition table a partition comes from.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// A DOS/MBR partition table, with extended partitions (logical partitions 5, 6, ...).
    Mbr,
    /// A GUID partition table (UEFI).
    Gpt,
    /// A BSD disklabel (whole disk, or inside an MBR slice): partitions named by letter.
    BsdLabel,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Mbr => "MBR",
            Scheme::Gpt => "GPT",
            Scheme::BsdLabel => "BSD disklabel",
        })
    }
}

/// One partition, numbered as Linux numbers it (`sda1`...): MBR primaries 1–4 by slot,
/// logical partitions 5, 6, ... along the chain of extended boot records; GPT entries 1..n by
/// their index in the entry array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The partition number (`-o partition=N`).
    pub index: u32,
    /// The table it comes from.
    pub scheme: Scheme,
    /// Offset in the image, bytes.
    pub start: u64,
    /// Length, bytes (never 0).
    pub size: u64,
    /// The partition type for people: `Linux (0x83)`, `Linux filesystem`, or the type GUID.
    pub kind: String,
    /// The GPT partition name, if it has one.
    pub name: Option<String>,
    /// The letter of a BSD disklabel partition (`-o partition=e`).
    pub letter: Option<char>,
    /// For a disklabel partition, the MBR slice holding the label (`None`: a whole-disk
    /// label). For an MBR slice, `Some(index)` when it holds a BSD disklabel itself.
    pub slice: Option<u32>,
}

impl Partition {
    /// Offset just past the partition, bytes (saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// The MBR type byte, for MBR partitions.
    pub fn mbr_type(&self) -> Option<u8> {
        if self.scheme != Scheme::Mbr {
            return None;
        }
        let code = self.kind.rsplit_once("(0x")?.1.strip_suffix(')')?;
        u8::from_str_radix(code, 16).ok()
    }

    /// True for an MBR extended partition: a container of logical partitions, not a place
    /// for a file system.
    pub fn is_container(&self) -> bool {
        self.mbr_type().is_some_and(mbr::is_extended) || self.holds_label()
    }

    /// True for an MBR slice holding a BSD disklabel: its lettered partitions are the places
    /// for file systems.
    pub fn holds_label(&self) -> bool {
        self.scheme == Scheme::Mbr && self.slice == Some(self.index)
    }

    /// The name `-o partition=` takes for this partition: its number, or for a disklabel
    /// partition its letter (`e`), with the slice number before it when there is one (`1e`).
    pub fn spec(&self) -> String {
        match (self.letter, self.slice) {
            (Some(l), Some(s)) => format!("{s}{l}"),
            (Some(l), None) => l.to_string(),
            _ => self.index.to_string(),
        }
    }

    /// The kind without the MBR type code (`Linux`).
    pub fn short_kind(&self) -> &str {
        match self.mbr_type() {
            Some(_) => self.kind.rsplit_once(" (0x").map_or(&self.kind, |(name, _)| name),
            None => &self.kind,
        }
    }
}

/// `2 ("root", Linux filesystem, 1.0 MiB..9.0 MiB)`
impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.index)?;
        if self.letter.is_some() {
            write!(f, "{}, ", self.spec())?;
        }
        if let Some(name) = &self.name {
            write!(f, "{name:?}, ")?;
        }
        write!(
            f,
            "{}, {}..{})",
            self.short_kind(),
            human_size(self.start),
            human_size(self.end())
        )
    }
}

/// A partition table as read, with everything found wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    /// The kind of table; `None` when the image has none.
    pub scheme: Option<Scheme>,
    /// The sector size the table uses (512, or 4096 for a GPT made for 4K-sector disks).
    pub sector_size: u32,
    /// The partitions, in table order (primaries, then logicals; GPT by index).
    pub partitions: Vec<Partition>,
    /// Problems found: entries skipped and why, partitions past the end of the image,
    /// overlaps, a damaged primary GPT. Each is one line; they are also logged.
    pub warnings: Vec<String>,
}

/// Reads the partition table of `dev`: a GPT (primary header at LBA 1, else the backup at
/// the last LBA; 512- or 4096-byte sectors) or an MBR with its extended partitions.
///
/// A device without a partition table (a bare file system image) gives an empty table.
/// Fails with `EIO` when a table is clearly there but unusable (a protective MBR with no
/// valid GPT header), or when the device cannot be read.
pub fn read_table(dev: &dyn BlockDevice) -> Result<PartitionTable, ImageError> {
    let mut table =
        PartitionTable { scheme: None, sector_size: 512, partitions: Vec::new(), warnings: Vec::new() };
    let Some(sector0) = read_bytes(dev, 0, 512)? else {
        return Ok(table);
    };
    let primaries = mbr::parse_mbr(&sector0);
    let protective = primaries.as_ref().is_some_and(|e| e.iter().any(|e| e.kind == mbr::GPT_PROTECTIVE));
    if let Some((parts, sector_size)) = gpt::read(dev, protective, &mut table.warnings)? {
        table.scheme = Some(Scheme::Gpt);
        table.sector_size = sector_size;
        table.partitions = parts;
    } else if let Some(primaries) = primaries {
        table.scheme = Some(Scheme::Mbr);
        table.partitions = mbr::read(dev, &primaries, &mut table.warnings)?;
        // BSD disklabels inside NetBSD, FreeBSD and OpenBSD slices; their partitions are
        // numbered after the MBR's, as Linux numbers them.
        let mut next = table.partitions.iter().map(|p| p.index + 1).max().unwrap_or(1).max(5);
        let mut found = Vec::new();
        for p in table.partitions.iter_mut() {
            if !p.mbr_type().is_some_and(disklabel::is_bsd_slice) || p.end() > dev.size() {
                continue;
            }
            if let Some(label) = disklabel::find(dev, p.start, p.size)? {
                p.slice = Some(p.index);
                found.extend(disklabel::partitions(&label, (p.start, p.size), Some(p.index), &mut next, &mut table.warnings));
            }
        }
        table.partitions.extend(found);
    } else if let Some(label) = disklabel::find(dev, 0, dev.size())? {
        table.scheme = Some(Scheme::BsdLabel);
        let mut next = 1;
        table.partitions = disklabel::partitions(&label, (0, dev.size()), None, &mut next, &mut table.warnings);
    }
    let found = problems(&table.partitions, dev.size());
    table.warnings.extend(found);
    let name = dev.describe();
    for w in &table.warnings {
        log::warn!("{name}: {w}");
    }
    Ok(table)
}

/// The partitions of `dev` (see [`read_table`]); an empty list means no partition table.
pub fn partitions(dev: &dyn BlockDevice) -> Result<Vec<Partition>, ImageError> {
    Ok(read_table(dev)?.partitions)
}

/// Most overlap lines reported; a table of 100,000 overlapping entries is one problem.
const MAX_OVERLAP_LINES: usize = 16;

/// What is wrong with `parts` on a device of `dev_size` bytes: partitions reaching past the
/// end, overlapping partitions, logical partitions outside their extended partition.
pub fn problems(parts: &[Partition], dev_size: u64) -> Vec<String> {
    let mut out = Vec::new();
    for p in parts {
        if p.start >= dev_size {
            out.push(format!(
                "partition {p} starts past the end of the image ({})",
                human_size(dev_size)
            ));
        } else if p.end() > dev_size {
            out.push(format!(
                "partition {p} reaches past the end of the image ({}); is the image truncated?",
                human_size(dev_size)
            ));
        }
    }

    let containers: Vec<&Partition> = parts.iter().filter(|p| p.is_container()).collect();
    for l in parts.iter().filter(|p| p.scheme == Scheme::Mbr && p.index > 4) {
        if !containers.iter().any(|c| c.start <= l.start && l.end() <= c.end()) {
            out.push(format!("logical partition {l} lies outside its extended partition"));
        }
    }

    let mut by_start: Vec<&Partition> = parts.iter().filter(|p| !p.is_container()).collect();
    by_start.sort_by_key(|p| (p.start, p.index));
    let mut reach: Option<&Partition> = None; // the partition reaching furthest so far
    let mut overlaps = 0usize;
    for p in by_start {
        if let Some(q) = reach {
            if p.start < q.end() {
                overlaps += 1;
                if overlaps <= MAX_OVERLAP_LINES {
                    out.push(format!("partitions {q} and {p} overlap"));
                }
            }
            if p.end() > q.end() {
                reach = Some(p);
            }
        } else {
            reach = Some(p);
        }
    }
    if overlaps > MAX_OVERLAP_LINES {
        out.push(format!("{} more overlapping partitions", overlaps - MAX_OVERLAP_LINES));
    }
    out
}

/// Reads `len` bytes at `off`; `None` when they do not lie within the device.
pub(crate) fn read_bytes(
    dev: &dyn BlockDevice,
    off: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, ImageError> {
    match off.checked_add(len) {
        Some(end) if end <= dev.size() => {}
        _ => return Ok(None),
    }
    let Ok(n) = usize::try_from(len) else {
        return Ok(None);
    };
    let mut buf = vec![0; n];
    dev.read_at(&mut buf, off).map_err(|e| {
        ImageError::new(
            e,
            format!(
                "{}: cannot read the partition table ({len} bytes at {off}): {e}",
                dev.describe()
            ),
        )
    })?;
    Ok(Some(buf))
}

/// Little-endian u32 at `at` (the caller has checked the length).
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 at `at` (the caller has checked the length).
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

