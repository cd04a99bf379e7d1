//! Write primitives shared by the write path and the checker's repairs: each one turns a
//! value into its on-disk bytes with every checksum the file system keeps set, and puts it
//! in the buffer cache (dirty until sync) or, for the superblock, on the device.
//!
//! They take the validated [`Superblock`] and the [`CachedDev`], never the mounted file
//! system, so `fsck` can call them on a device it opened itself. None of them checks that
//! the object is in use or consistent with the rest of the file system: callers decide what
//! to write; these make sure it is written whole and checksummed.

use super::csum;
use super::dir::TAIL_LEN;
use super::group::{self, GroupDesc};
use super::inode::{self, field as ifield, Inode, GOOD_OLD_SIZE};
use super::superblock::{ro_compat, Superblock, SB_OFFSET, SB_SIZE};
use super::{le16, le32};
use vfs_faction::{CachedDev, Errno, KResult, Timespec};

/// Superblock field offsets the write path (and the checker's repairs) change.
#[allow(dead_code)]
pub(crate) mod sbf {
    pub const FREE_BLOCKS_LO: usize = 0xC;
    pub const FREE_INODES: usize = 0x10;
    pub const MTIME: usize = 0x2C;
    pub const WTIME: usize = 0x30;
    pub const MNT_COUNT: usize = 0x34;
    pub const STATE: usize = 0x3A;
    pub const FEATURE_COMPAT: usize = 0x5C;
    pub const FEATURE_INCOMPAT: usize = 0x60;
    pub const FEATURE_RO_COMPAT: usize = 0x64;
    pub const RESERVED_GDT_BLOCKS: usize = 0xCE;
    pub const LAST_ORPHAN: usize = 0xE8;
    pub const FREE_BLOCKS_HI: usize = 0x158;
    pub const KBYTES_WRITTEN: usize = 0x178;
    pub const WTIME_HI: usize = 0x274;
    pub const MTIME_HI: usize = 0x275;
    pub const CHECKSUM: usize = 0x3FC;
}

/// `s_state`: cleanly unmounted.
pub const STATE_VALID: u16 = 0x1;

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Sets the free block and inode counts of a raw superblock (the high half of the block
/// count only with 64bit).
pub fn sb_set_counts(sb: &Superblock, raw: &mut [u8], free_blocks: u64, free_inodes: u32) {
    put32(raw, sbf::FREE_BLOCKS_LO, free_blocks as u32);
    if sb.has_incompat(super::superblock::incompat::BIT64) {
        put32(raw, sbf::FREE_BLOCKS_HI, (free_blocks >> 32) as u32);
    }
    put32(raw, sbf::FREE_INODES, free_inodes);
}

/// Sets a superblock time field (`s_mtime`, `s_wtime`) with its high byte.
pub fn sb_set_time(raw: &mut [u8], lo: usize, hi: usize, t: Timespec) {
    put32(raw, lo, t.sec as u32);
    raw[hi] = ((t.sec >> 32) & 0xFF) as u8;
}

/// Writes the primary superblock (1024 bytes at byte 1024) straight to the device, with its
/// checksum when the file system has metadata_csum. Any cached copy of the block that holds
/// it is dropped. Not flushed: call the device flush (or [`CachedDev::sync`]) after.
pub fn write_superblock(sb: &Superblock, dev: &CachedDev, raw: &mut [u8]) -> KResult<()> {
    if raw.len() != SB_SIZE {
        return Err(Errno::EINVAL);
    }
    if sb.metadata_csum() || le32(raw, sbf::FEATURE_RO_COMPAT) & ro_compat::METADATA_CSUM != 0 {
        let c = csum::raw(!0, &raw[..sbf::CHECKSUM]);
        put32(raw, sbf::CHECKSUM, c);
    }
    dev.forget_block(SB_OFFSET / u64::from(sb.block_size));
    dev.write_raw(raw, SB_OFFSET)
}

/// Writes group descriptor `g` into its descriptor block in the cache, with its checksum
/// (crc16 for gdt_csum/uninit_bg, crc32c for metadata_csum).
pub fn write_group(sb: &Superblock, dev: &CachedDev, g: u32, d: &mut GroupDesc) -> KResult<()> {
    if let Some(c) = group::desc_csum(sb, g, &d.raw) {
        put16(&mut d.raw, group::field::CHECKSUM, c);
    }
    let buf = dev.bread(d.blk)?;
    let mut b = buf.to_vec();
    let end = d.off + d.raw.len();
    if end > b.len() {
        return Err(Errno::EIO);
    }
    b[d.off..end].copy_from_slice(&d.raw);
    dev.bwrite(d.blk, b)
}

/// The metadata_csum checksum of a bitmap: the first `nbits / 8` bytes.
pub fn bitmap_csum(sb: &Superblock, bitmap: &[u8], nbits: u32) -> u32 {
    let n = (nbits as usize / 8).min(bitmap.len());
    csum::raw(sb.csum_seed, &bitmap[..n])
}

/// Writes a block bitmap of group `g` and records its checksum in the descriptor (which the
/// caller then writes with [`write_group`]).
pub fn write_block_bitmap(sb: &Superblock, dev: &CachedDev, d: &mut GroupDesc, bitmap: Vec<u8>) -> KResult<()> {
    if sb.metadata_csum() {
        d.set_block_bitmap_csum(bitmap_csum(sb, &bitmap, sb.blocks_per_group));
    }
    dev.bwrite(d.block_bitmap(), bitmap)
}

/// Writes an inode bitmap of a group and records its checksum in the descriptor.
pub fn write_inode_bitmap(sb: &Superblock, dev: &CachedDev, d: &mut GroupDesc, bitmap: Vec<u8>) -> KResult<()> {
    if sb.metadata_csum() {
        d.set_inode_bitmap_csum(bitmap_csum(sb, &bitmap, sb.inodes_per_group));
    }
    dev.bwrite(d.inode_bitmap(), bitmap)
}

/// Stores a time in a base field and, where the inode has room, its extra field (epoch bits
/// and nanoseconds).
fn put_time(raw: &mut [u8], secs: usize, extra: usize, extra_end: usize, t: Timespec) {
    put32(raw, secs, t.sec as u32);
    if extra + 4 <= extra_end {
        let epoch = ((t.sec - i64::from(t.sec as i32)) >> 32) as u32 & 3;
        let nsec = t.nsec.min(999_999_999);
        put32(raw, extra, epoch | (nsec << 2));
    }
}

/// The on-disk record of `i` (inode number `ino`): its `raw` bytes with every field of the
/// struct stored and the checksum set.
pub fn encode_inode(sb: &Superblock, ino: u32, i: &Inode) -> Vec<u8> {
    let mut raw = i.raw.clone();
    raw.resize(sb.inode_size as usize, 0);
    let extra_isize = if raw.len() > GOOD_OLD_SIZE { usize::from(i.extra_isize) } else { 0 };
    let extra_end = GOOD_OLD_SIZE + extra_isize;
    if raw.len() > GOOD_OLD_SIZE {
        put16(&mut raw, ifield::EXTRA_ISIZE, extra_isize as u16);
    }
    put16(&mut raw, ifield::MODE, i.mode);
    put16(&mut raw, ifield::UID, i.uid as u16);
    put16(&mut raw, ifield::UID_HI, (i.uid >> 16) as u16);
    put16(&mut raw, ifield::GID, i.gid as u16);
    put16(&mut raw, ifield::GID_HI, (i.gid >> 16) as u16);
    put32(&mut raw, ifield::SIZE_LO, i.size as u32);
    put32(&mut raw, ifield::SIZE_HI, (i.size >> 32) as u32);
    put_time(&mut raw, ifield::ATIME, ifield::ATIME_EXTRA, extra_end, i.atime);
    put_time(&mut raw, ifield::CTIME, ifield::CTIME_EXTRA, extra_end, i.ctime);
    put_time(&mut raw, ifield::MTIME, ifield::MTIME_EXTRA, extra_end, i.mtime);
    if let Some(t) = i.crtime {
        if ifield::CRTIME + 4 <= extra_end {
            put_time(&mut raw, ifield::CRTIME, ifield::CRTIME_EXTRA, extra_end, t);
        }
    }
    put32(&mut raw, ifield::DTIME, i.dtime);
    put16(&mut raw, ifield::LINKS, i.links);
    let mut flags = i.flags;
    let huge = sb.has_ro_compat(ro_compat::HUGE_FILE);
    if huge && i.blocks512 >= 1 << 48 {
        let fsb = i.blocks512 / u64::from(sb.block_size / 512);
        flags |= inode::flags::HUGE_FILE;
        put32(&mut raw, ifield::BLOCKS_LO, fsb as u32);
        put16(&mut raw, ifield::BLOCKS_HI, (fsb >> 32) as u16);
    } else {
        flags &= !inode::flags::HUGE_FILE;
        put32(&mut raw, ifield::BLOCKS_LO, i.blocks512 as u32);
        if huge {
            put16(&mut raw, ifield::BLOCKS_HI, (i.blocks512 >> 32) as u16);
        }
    }
    put32(&mut raw, ifield::FLAGS, flags);
    raw[ifield::BLOCK..ifield::BLOCK + 60].copy_from_slice(&i.block);
    put32(&mut raw, ifield::GENERATION, i.generation);
    put32(&mut raw, ifield::FILE_ACL_LO, i.file_acl as u32);
    put16(&mut raw, ifield::FILE_ACL_HI, (i.file_acl >> 32) as u16);
    set_inode_csum(sb, ino, &mut raw);
    raw
}

/// Sets the metadata_csum checksum of inode record `raw` (no-op without metadata_csum).
pub fn set_inode_csum(sb: &Superblock, ino: u32, raw: &mut [u8]) {
    if !sb.metadata_csum() {
        return;
    }
    let (c, has_hi) = inode::checksum(sb, ino, raw);
    put16(raw, ifield::CHECKSUM_LO, c as u16);
    if has_hi {
        put16(raw, ifield::CHECKSUM_HI, (c >> 16) as u16);
    }
}

/// Where inode `ino` lives: (inode table block, byte offset in it).
pub fn inode_location(sb: &Superblock, inode_table: u64, ino: u32) -> (u64, usize) {
    let index = u64::from((ino - 1) % sb.inodes_per_group);
    let off = index * u64::from(sb.inode_size);
    let bs = u64::from(sb.block_size);
    (inode_table + off / bs, (off % bs) as usize)
}

/// Writes an encoded inode record into its inode table block (in the cache). The caller
/// serialises writers of one inode table block (a read-modify-write).
pub fn write_inode_raw(sb: &Superblock, dev: &CachedDev, inode_table: u64, ino: u32, raw: &[u8]) -> KResult<()> {
    if ino == 0 || ino > sb.inodes_count || raw.len() != sb.inode_size as usize {
        return Err(Errno::EINVAL);
    }
    let (blk, off) = inode_location(sb, inode_table, ino);
    let buf = dev.bread(blk)?;
    let mut b = buf.to_vec();
    b[off..off + raw.len()].copy_from_slice(raw);
    dev.bwrite(blk, b)
}

/// Puts the metadata_csum dirent tail at the end of a directory block (the last 12 bytes,
/// which the caller left free) and sets its checksum (`seed`: the directory inode's seed).
pub fn set_dir_tail(block: &mut [u8], seed: u32) {
    let t = block.len() - TAIL_LEN;
    put32(block, t, 0);
    put16(block, t + 4, TAIL_LEN as u16);
    block[t + 6] = 0;
    block[t + 7] = 0xDE;
    let c = csum::raw(seed, &block[..t]);
    put32(block, t + 8, c);
}

/// Sets the checksum of an extent tree block (after the `eh_max` slots; `seed`: the inode's).
pub fn set_extent_csum(block: &mut [u8], seed: u32) {
    let max = usize::from(le16(block, 4));
    let tail = 12 + 12 * max;
    if tail + 4 <= block.len() {
        let c = csum::raw(seed, &block[..tail]);
        put32(block, tail, c);
    }
}

/// Sets the checksum of extended attribute block `blk` (fs seed, block number, block with the
/// checksum field zero).
pub fn set_xattr_block_csum(sb: &Superblock, block: &mut [u8], blk: u64) {
    put32(block, 16, 0);
    let c = csum::raw(sb.csum_seed, &blk.to_le_bytes());
    let c = csum::raw(c, block);
    put32(block, 16, c);
}

/// The hash of one xattr entry (name bytes, then the value's 32-bit little-endian words), as
/// e2fsprogs and the kernel compute it (names taken as unsigned bytes).
pub fn xattr_entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    if !value.is_empty() {
        let mut padded = value.to_vec();
        padded.resize(value.len().next_multiple_of(4), 0);
        for w in padded.chunks(4) {
            h = (h << 16) ^ (h >> 16) ^ le32(w, 0);
        }
    }
    h
}

/// The block hash of an xattr block from its entries' hashes (0 if any entry hash is 0).
pub fn xattr_block_hash(entry_hashes: &[u32]) -> u32 {
    let mut h: u32 = 0;
    for &e in entry_hashes {
        if e == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_roundtrip_through_extra() {
        let mut raw = vec![0u8; 256];
        let t = Timespec { sec: (1i64 << 32) + 5, nsec: 987_654_321 };
        put_time(&mut raw, ifield::MTIME, ifield::MTIME_EXTRA, 160, t);
        assert_eq!(inode::time(&raw, ifield::MTIME, ifield::MTIME_EXTRA, 160), t);
        let t = Timespec { sec: -5, nsec: 1 };
        put_time(&mut raw, ifield::MTIME, ifield::MTIME_EXTRA, 160, t);
        assert_eq!(inode::time(&raw, ifield::MTIME, ifield::MTIME_EXTRA, 160), t);
    }

    #[test]
    fn dir_tail_verifies() {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(&2u32.to_le_bytes());
        b[4..6].copy_from_slice(&1012u16.to_le_bytes());
        b[6] = 1;
        b[7] = 2;
        b[8] = b'.';
        set_dir_tail(&mut b, 99);
        assert!(super::super::dir::verify(&b, 3, 99, false).is_ok());
    }
}
