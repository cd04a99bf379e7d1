//! The FFS superblock (`struct fs`): where it is, what it says, and a validated copy that
//! the rest of the driver trusts.
//!
//! Field offsets are those of the BSD `struct fs` (FreeBSD and NetBSD agree on every field
//! read here). UFS1 file systems written before FFSv2 keep their size, data size, summary
//! address, totals and flags in the `fs_old_*` fields; a UFS1 superblock with
//! `FS_FLAGS_UPDATED` in `fs_old_flags` has the new fields filled in as well.

use super::endian::ByteOrder;

/// Where superblocks are searched, in order (`SBLOCKSEARCH`): UFS2, UFS1, floppy, piggy.
pub const SBLOCK_SEARCH: [u64; 4] = [65536, 8192, 0, 262144];
/// Bytes read at each place (`SBLOCKSIZE`); `fs_sbsize` is at most this.
pub const SBLOCKSIZE: usize = 8192;
/// `sizeof(struct fs)`.
pub const SB_STRUCT_SIZE: usize = 1376;

pub const FS_UFS1_MAGIC: u32 = 0x011954;
pub const FS_UFS2_MAGIC: u32 = 0x19540119;

/// Smallest and largest block size (`MINBSIZE`, `MAXBSIZE`).
pub const MINBSIZE: u32 = 4096;
pub const MAXBSIZE: u32 = 65536;
/// Direct and indirect block pointers in an inode.
pub const NDADDR: usize = 12;
pub const NIADDR: usize = 3;
/// The root directory's inode.
pub const ROOTINO: u32 = 2;

/// Field offsets in `struct fs`.
pub mod off {
    pub const SBLKNO: usize = 8;
    pub const CBLKNO: usize = 12;
    pub const IBLKNO: usize = 16;
    pub const DBLKNO: usize = 20;
    pub const OLD_CGOFFSET: usize = 24;
    pub const OLD_CGMASK: usize = 28;
    pub const OLD_TIME: usize = 32;
    pub const OLD_SIZE: usize = 36;
    pub const OLD_DSIZE: usize = 40;
    pub const NCG: usize = 44;
    pub const BSIZE: usize = 48;
    pub const FSIZE: usize = 52;
    pub const FRAG: usize = 56;
    pub const MINFREE: usize = 60;
    pub const MAXCONTIG: usize = 88;
    pub const MAXBPG: usize = 92;
    pub const SBSIZE: usize = 104;
    pub const NINDIR: usize = 116;
    pub const INOPB: usize = 120;
    pub const ID: usize = 144;
    pub const OLD_CSADDR: usize = 152;
    pub const CSSIZE: usize = 156;
    pub const CGSIZE: usize = 160;
    pub const IPG: usize = 184;
    pub const FPG: usize = 188;
    /// `struct csum` of four int32: ndir, nbfree, nifree, nffree.
    pub const OLD_CSTOTAL: usize = 192;
    pub const FMOD: usize = 208;
    pub const CLEAN: usize = 209;
    pub const RONLY: usize = 210;
    pub const OLD_FLAGS: usize = 211;
    pub const FSMNT: usize = 212;
    pub const VOLNAME: usize = 680;
    pub const CGROTOR: usize = 724;
    pub const MAXBSIZE: usize = 860;
    pub const SBLOCKLOC: usize = 1000;
    /// `struct csum_total` of int64: ndir, nbfree, nifree, nffree, numclusters.
    pub const CSTOTAL: usize = 1008;
    pub const TIME: usize = 1072;
    pub const SIZE: usize = 1080;
    pub const DSIZE: usize = 1088;
    pub const CSADDR: usize = 1096;
    pub const PENDINGBLOCKS: usize = 1104;
    pub const PENDINGINODES: usize = 1112;
    pub const AVGFILESIZE: usize = 1196;
    pub const AVGFPDIR: usize = 1200;
    pub const MTIME: usize = 1208;
    pub const CKHASH: usize = 1304;
    pub const METACKHASH: usize = 1308;
    pub const FLAGS: usize = 1312;
    pub const CONTIGSUMSIZE: usize = 1316;
    pub const MAXSYMLINKLEN: usize = 1320;
    pub const OLD_INODEFMT: usize = 1324;
    pub const MAXFILESIZE: usize = 1328;
    pub const STATE: usize = 1352;
    pub const MAGIC: usize = 1372;
}

/// `fs_flags` bits.
pub mod flags {
    pub const FS_UNCLEAN: u32 = 0x01;
    pub const FS_DOSOFTDEP: u32 = 0x02;
    pub const FS_NEEDSFSCK: u32 = 0x04;
    /// FreeBSD: journaled soft updates (NetBSD: `FS_INDEXDIRS`).
    pub const FS_SUJ: u32 = 0x08;
    pub const FS_ACLS: u32 = 0x10;
    pub const FS_MULTILABEL: u32 = 0x20;
    pub const FS_GJOURNAL: u32 = 0x40;
    pub const FS_FLAGS_UPDATED: u32 = 0x80;
    /// NetBSD: WAPBL journal (FreeBSD: `FS_NFS4ACLS`).
    pub const FS_DOWAPBL: u32 = 0x100;
    /// FreeBSD: metadata check hashes (NetBSD: `FS_DOQUOTA2`).
    pub const FS_METACKHASH: u32 = 0x200;
    pub const FS_TRIM: u32 = 0x400;
}

/// `fs_metackhash` bits.
pub mod ck {
    pub const SUPERBLOCK: u32 = 0x01;
    pub const CYLGRP: u32 = 0x02;
    pub const INODE: u32 = 0x04;
}

/// `fs_old_inodefmt` of 4.4BSD inodes (32-bit uid/gid, d_type, short symlinks).
pub const FS_44INODEFMT: i32 = 2;

/// Why a superblock was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SbError {
    /// No FFS magic here.
    NotFfs,
    /// FFS, but a value is impossible.
    Corrupt(String),
    /// FFS, valid, but something this driver does not handle.
    Unsupported(String),
}

/// The totals of `struct csum` / `csum_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsTotal {
    pub ndir: i64,
    pub nbfree: i64,
    pub nifree: i64,
    pub nffree: i64,
}

/// A validated superblock. Every geometry value has been checked against the others and
/// against the device, so code that uses it needs no further range checks on these.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub order: ByteOrder,
    pub ufs2: bool,
    /// Byte offset of this superblock on the device.
    pub location: u64,
    /// The UFS1 summary fields live in `fs_old_*` (no `FS_FLAGS_UPDATED`).
    pub old_fields: bool,
    pub bsize: u32,
    pub fsize: u32,
    /// Fragments per block (1, 2, 4 or 8).
    pub frag: u32,
    pub bshift: u32,
    pub fshift: u32,
    /// log2(frag).
    pub fragshift: u32,
    pub ncg: u32,
    pub ipg: u32,
    /// Fragments per cylinder group.
    pub fpg: u32,
    pub sblkno: u32,
    pub cblkno: u32,
    pub iblkno: u32,
    pub dblkno: u32,
    pub old_cgoffset: i32,
    pub old_cgmask: i32,
    /// Fragments in the file system.
    pub size: u64,
    /// Data fragments.
    pub dsize: u64,
    /// Fragment address and byte size of the cylinder group summary area.
    pub csaddr: u64,
    pub cssize: u32,
    pub cgsize: u32,
    /// Inodes per block, block pointers per block.
    pub inopb: u32,
    pub nindir: u32,
    pub inode_size: u32,
    pub minfree: u32,
    pub maxbpg: u32,
    pub maxcontig: u32,
    pub contigsumsize: u32,
    pub maxsymlinklen: u32,
    /// 4.4BSD inode and directory format (`FS_44INODEFMT`); false: 4.2BSD (no d_type).
    pub fmt44: bool,
    pub flags: u32,
    pub metackhash: u32,
    pub cstotal: CsTotal,
    pub clean: u8,
    pub time: i64,
    pub avgfilesize: u32,
    pub avgfpdir: u32,
    /// `fs_sbsize` bytes of the superblock as read (written back, updated, on a rw mount).
    pub raw: Vec<u8>,
}

/// The magic at `raw`: (UFS2?, byte order).
pub fn magic(raw: &[u8]) -> Option<(bool, ByteOrder)> {
    for order in [ByteOrder::Little, ByteOrder::Big] {
        match order.u32(raw, off::MAGIC) {
            FS_UFS1_MAGIC => return Some((false, order)),
            FS_UFS2_MAGIC => return Some((true, order)),
            _ => {}
        }
    }
    None
}

fn corrupt<T>(m: impl Into<String>) -> Result<T, SbError> {
    Err(SbError::Corrupt(m.into()))
}

fn pos(v: i32, what: &str) -> Result<u32, SbError> {
    u32::try_from(v).map_err(|_| SbError::Corrupt(format!("{what} is negative ({v})")))
}

impl Superblock {
    /// Parses and validates the superblock read at byte `location` (`raw` holds at least
    /// [`SB_STRUCT_SIZE`] bytes) of a device of `dev_size` bytes.
    pub fn parse(raw: &[u8], location: u64, dev_size: u64) -> Result<Superblock, SbError> {
        if raw.len() < SB_STRUCT_SIZE {
            return Err(SbError::NotFfs);
        }
        let (ufs2, o) = magic(raw).ok_or(SbError::NotFfs)?;
        let i32at = |at: usize| o.i32(raw, at);
        let bsize = pos(i32at(off::BSIZE), "fs_bsize")?;
        let fsize = pos(i32at(off::FSIZE), "fs_fsize")?;
        let frag = pos(i32at(off::FRAG), "fs_frag")?;
        if !bsize.is_power_of_two() || !(MINBSIZE..=MAXBSIZE).contains(&bsize) {
            return corrupt(format!("block size {bsize} is not a power of two in 4096..65536"));
        }
        if !fsize.is_power_of_two() || fsize < 512 || fsize > bsize || bsize / fsize > 8 {
            return corrupt(format!("fragment size {fsize} does not fit block size {bsize} (bsize/1..bsize/8, at least 512)"));
        }
        if frag != bsize / fsize {
            return corrupt(format!("fs_frag {frag} is not bsize/fsize ({})", bsize / fsize));
        }
        let sbsize = pos(i32at(off::SBSIZE), "fs_sbsize")? as usize;
        if !(SB_STRUCT_SIZE..=SBLOCKSIZE).contains(&sbsize) || sbsize > raw.len() {
            return corrupt(format!("superblock size {sbsize} outside {SB_STRUCT_SIZE}..{SBLOCKSIZE}"));
        }
        let ncg = o.u32(raw, off::NCG);
        let ipg = o.u32(raw, off::IPG);
        let fpg = pos(i32at(off::FPG), "fs_fpg")?;
        let inode_size: u32 = if ufs2 { 256 } else { 128 };
        let inopb = o.u32(raw, off::INOPB);
        let nindir = pos(i32at(off::NINDIR), "fs_nindir")?;
        let ptr = if ufs2 { 8 } else { 4 };
        if inopb != bsize / inode_size {
            return corrupt(format!("fs_inopb {inopb} is not {} for {bsize}-byte blocks", bsize / inode_size));
        }
        if nindir != bsize / ptr {
            return corrupt(format!("fs_nindir {nindir} is not {} for {bsize}-byte blocks", bsize / ptr));
        }
        if ncg == 0 || ipg == 0 || ipg % inopb != 0 {
            return corrupt(format!("{ncg} cylinder groups of {ipg} inodes ({inopb} per block)"));
        }
        if u64::from(ncg) * u64::from(ipg) > u64::from(u32::MAX) {
            return corrupt(format!("{ncg} groups of {ipg} inodes overflow 32-bit inode numbers"));
        }
        if fpg < frag || fpg % frag != 0 {
            return corrupt(format!("fs_fpg {fpg} is not a multiple of fs_frag {frag}"));
        }
        let sblkno = pos(i32at(off::SBLKNO), "fs_sblkno")?;
        let cblkno = pos(i32at(off::CBLKNO), "fs_cblkno")?;
        let iblkno = pos(i32at(off::IBLKNO), "fs_iblkno")?;
        let dblkno = pos(i32at(off::DBLKNO), "fs_dblkno")?;
        let ino_frags = u64::from(ipg / inopb) * u64::from(frag);
        if !(sblkno < cblkno && cblkno < iblkno && u64::from(iblkno) + ino_frags <= u64::from(dblkno) && dblkno <= fpg) {
            return corrupt(format!(
                "cylinder group layout sblkno {sblkno}, cblkno {cblkno}, iblkno {iblkno} (+{ino_frags} inode fragments), dblkno {dblkno}, fpg {fpg} is out of order"
            ));
        }
        let cgsize = pos(i32at(off::CGSIZE), "fs_cgsize")?;
        if cgsize < 168 || cgsize > bsize || u64::from(cblkno) * u64::from(fsize) + u64::from(cgsize) > u64::from(iblkno) * u64::from(fsize) {
            return corrupt(format!("cylinder group size {cgsize} does not fit between cblkno and iblkno"));
        }
        let old_flags = u32::from(raw[off::OLD_FLAGS]);
        let old_fields = !ufs2 && old_flags & flags::FS_FLAGS_UPDATED == 0;
        let (size, dsize, csaddr, cstotal, fsflags, time) = if old_fields {
            let t = off::OLD_CSTOTAL;
            (
                pos(i32at(off::OLD_SIZE), "fs_old_size")? as u64,
                pos(i32at(off::OLD_DSIZE), "fs_old_dsize")? as u64,
                pos(i32at(off::OLD_CSADDR), "fs_old_csaddr")? as u64,
                CsTotal {
                    ndir: i64::from(i32at(t)),
                    nbfree: i64::from(i32at(t + 4)),
                    nifree: i64::from(i32at(t + 8)),
                    nffree: i64::from(i32at(t + 12)),
                },
                old_flags,
                i64::from(i32at(off::OLD_TIME)),
            )
        } else {
            let t = off::CSTOTAL;
            let flags = o.u32(raw, off::FLAGS) | if ufs2 { 0 } else { old_flags & !flags::FS_FLAGS_UPDATED };
            (
                o.u64(raw, off::SIZE),
                o.u64(raw, off::DSIZE),
                o.u64(raw, off::CSADDR),
                CsTotal {
                    ndir: o.i64(raw, t),
                    nbfree: o.i64(raw, t + 8),
                    nifree: o.i64(raw, t + 16),
                    nffree: o.i64(raw, t + 24),
                },
                flags,
                o.i64(raw, off::TIME),
            )
        };
        let max_frags = u64::from(ncg) * u64::from(fpg);
        if size == 0 || size > max_frags || size <= max_frags - u64::from(fpg) {
            return corrupt(format!("fs_size {size} does not match {ncg} groups of {fpg} fragments"));
        }
        if dsize > size {
            return corrupt(format!("fs_dsize {dsize} is larger than fs_size {size}"));
        }
        let bytes = size.checked_mul(u64::from(fsize)).unwrap_or(u64::MAX);
        if bytes > dev_size {
            return Err(SbError::Unsupported(format!(
                "the file system needs {size} fragments of {fsize} bytes ({bytes} bytes) but the device holds only {dev_size} bytes (truncated image?)"
            )));
        }
        let cssize = pos(i32at(off::CSSIZE), "fs_cssize")?;
        let cs_frags = u64::from(cssize.div_ceil(fsize));
        if u64::from(cssize) < u64::from(ncg) * 16 || csaddr == 0 || csaddr.checked_add(cs_frags).is_none_or(|e| e > size) {
            return corrupt(format!("summary area at fragment {csaddr} of {cssize} bytes does not fit ({ncg} groups)"));
        }
        let minfree = pos(i32at(off::MINFREE), "fs_minfree")?.min(99);
        let maxsymlinklen = i32at(off::MAXSYMLINKLEN);
        let inodefmt = i32at(off::OLD_INODEFMT);
        let fmt44 = ufs2 || inodefmt >= FS_44INODEFMT;
        let limit = if ufs2 { 120 } else { 60 };
        let maxsymlinklen = if !fmt44 {
            0
        } else if (0..=limit).contains(&maxsymlinklen) {
            maxsymlinklen as u32
        } else {
            return corrupt(format!("fs_maxsymlinklen {maxsymlinklen} is outside 0..{limit}"));
        };
        let contigsumsize = i32at(off::CONTIGSUMSIZE).clamp(0, 16) as u32;
        let maxcontig = i32at(off::MAXCONTIG).clamp(1, (MAXBSIZE * 16 / bsize) as i32) as u32;
        let metackhash = if ufs2 && fsflags & flags::FS_METACKHASH != 0 { o.u32(raw, off::METACKHASH) } else { 0 };
        let sb = Superblock {
            order: o,
            ufs2,
            location,
            old_fields,
            bsize,
            fsize,
            frag,
            bshift: bsize.trailing_zeros(),
            fshift: fsize.trailing_zeros(),
            fragshift: frag.trailing_zeros(),
            ncg,
            ipg,
            fpg,
            sblkno,
            cblkno,
            iblkno,
            dblkno,
            old_cgoffset: if ufs2 { 0 } else { i32at(off::OLD_CGOFFSET) },
            old_cgmask: if ufs2 { -1 } else { i32at(off::OLD_CGMASK) },
            size,
            dsize,
            csaddr,
            cssize,
            cgsize,
            inopb,
            nindir,
            inode_size,
            minfree,
            maxbpg: pos(i32at(off::MAXBPG), "fs_maxbpg").unwrap_or(0).max(1),
            maxcontig,
            contigsumsize,
            maxsymlinklen,
            fmt44,
            flags: fsflags,
            metackhash,
            cstotal,
            clean: raw[off::CLEAN],
            time,
            avgfilesize: o.u32(raw, off::AVGFILESIZE),
            avgfpdir: o.u32(raw, off::AVGFPDIR),
            raw: raw[..sbsize].to_vec(),
        };
        // Every cylinder group's metadata must lie inside the group and the file system.
        for c in 0..ncg {
            let end = sb.cgimin(c).saturating_add(ino_frags);
            let group_end = (sb.cgbase(c) + u64::from(fpg)).min(size);
            if end > group_end || sb.cgtod(c) + u64::from(cgsize.div_ceil(fsize)) > group_end {
                return corrupt(format!("cylinder group {c}: its metadata (up to fragment {end}) lies beyond the group or the file system"));
            }
        }
        if sb.metackhash & ck::SUPERBLOCK != 0 {
            let want = o.u32(raw, off::CKHASH);
            let got = sb.sb_hash();
            if want != got {
                return corrupt(format!("superblock check hash {want:#010x}, computed {got:#010x}"));
            }
        }
        Ok(sb)
    }

    /// Byte size of an inode (128 or 256).
    pub fn isize(&self) -> usize {
        self.inode_size as usize
    }

    /// First fragment of cylinder group `c` (`cgbase`).
    pub fn cgbase(&self, c: u32) -> u64 {
        u64::from(self.fpg) * u64::from(c)
    }

    /// Start of group `c`'s metadata (`cgstart`: UFS1 staggers it by `fs_old_cgoffset`).
    pub fn cgstart(&self, c: u32) -> u64 {
        let base = self.cgbase(c);
        if self.ufs2 || self.old_cgoffset <= 0 {
            return base;
        }
        let stagger = u64::from(self.old_cgoffset as u32) * u64::from(c & !(self.old_cgmask as u32));
        // A stagger that pushes metadata out of its group is refused by `parse`.
        base.saturating_add(stagger)
    }

    /// Fragment address of group `c`'s cylinder group block (`cgtod`).
    pub fn cgtod(&self, c: u32) -> u64 {
        self.cgstart(c) + u64::from(self.cblkno)
    }

    /// First inode fragment of group `c` (`cgimin`).
    pub fn cgimin(&self, c: u32) -> u64 {
        self.cgstart(c) + u64::from(self.iblkno)
    }

    /// First data fragment of group `c` (`cgdmin`).
    pub fn cgdmin(&self, c: u32) -> u64 {
        self.cgstart(c) + u64::from(self.dblkno)
    }

    /// Number of inodes in the file system.
    pub fn ninodes(&self) -> u32 {
        self.ncg * self.ipg
    }

    /// Largest file size the block map can address, bytes.
    pub fn max_file_size(&self) -> u64 {
        let n = u64::from(self.nindir);
        let blocks = (NDADDR as u64).saturating_add(n).saturating_add(n * n).saturating_add(n * n * n);
        blocks.saturating_mul(u64::from(self.bsize))
    }

    /// The superblock check hash (FreeBSD `ffs_calc_sbhash`): raw CRC-32C over `fs_sbsize`
    /// bytes with `fs_ckhash` zeroed.
    pub fn sb_hash(&self) -> u32 {
        let mut copy = self.raw.clone();
        copy[off::CKHASH..off::CKHASH + 4].fill(0);
        super::ckhash(&copy)
    }

    /// Free fragments according to the totals.
    pub fn free_frags(&self) -> u64 {
        let t = &self.cstotal;
        let f = t.nbfree.max(0).saturating_mul(i64::from(self.frag)).saturating_add(t.nffree.max(0));
        (f as u64).min(self.dsize)
    }

    /// Fragments reserved for root (`fs_minfree` percent of the data fragments).
    pub fn reserved_frags(&self) -> u64 {
        self.dsize * u64::from(self.minfree) / 100
    }
}
