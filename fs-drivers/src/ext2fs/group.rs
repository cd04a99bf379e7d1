//! Block group descriptors (32- and 64-byte, classic layout and meta_bg), with their
//! checksums (crc16 for gdt_csum, crc32c for metadata_csum). Only what reading needs is kept.

use super::csum;
use super::superblock::{incompat, ro_compat, Superblock};
use super::{le16, le32};
use vfs_faction::CachedDev;

/// `bg_flags`: the group's inode table is not initialised.
pub const BG_INODE_UNINIT: u16 = 0x1;
/// `bg_flags`: the group's block bitmap is not initialised.
pub const BG_BLOCK_UNINIT: u16 = 0x2;
/// `bg_flags`: the group's inode table is zeroed.
pub const BG_ITABLE_ZEROED: u16 = 0x4;

pub(crate) mod field {
    pub const BLOCK_BITMAP_LO: usize = 0x0;
    pub const INODE_BITMAP_LO: usize = 0x4;
    pub const INODE_TABLE_LO: usize = 0x8;
    pub const FREE_BLOCKS_LO: usize = 0xC;
    pub const FREE_INODES_LO: usize = 0xE;
    pub const USED_DIRS_LO: usize = 0x10;
    pub const FLAGS: usize = 0x12;
    pub const BLOCK_BITMAP_CSUM_LO: usize = 0x18;
    pub const INODE_BITMAP_CSUM_LO: usize = 0x1A;
    pub const ITABLE_UNUSED_LO: usize = 0x1C;
    pub const CHECKSUM: usize = 0x1E;
    pub const BLOCK_BITMAP_HI: usize = 0x20;
    pub const INODE_BITMAP_HI: usize = 0x24;
    pub const INODE_TABLE_HI: usize = 0x28;
    pub const FREE_BLOCKS_HI: usize = 0x2C;
    pub const FREE_INODES_HI: usize = 0x2E;
    pub const USED_DIRS_HI: usize = 0x30;
    pub const ITABLE_UNUSED_HI: usize = 0x32;
    pub const BLOCK_BITMAP_CSUM_HI: usize = 0x38;
    pub const INODE_BITMAP_CSUM_HI: usize = 0x3A;
}

/// One validated group descriptor.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    /// First block of the inode table; the whole table lies inside the file system.
    pub inode_table: u64,
    pub flags: u16,
    /// Inodes at the end of the table never used (only meaningful with group checksums).
    pub itable_unused: u32,
}

/// Where group `g`'s descriptor lives: (block, byte offset in it).
pub(crate) fn desc_location(sb: &Superblock, g: u32) -> Option<(u64, usize)> {
    let per_block = sb.block_size / sb.desc_size;
    let block_index = g / per_block;
    let offset = ((g % per_block) * sb.desc_size) as usize;
    let first = u64::from(sb.first_data_block);
    if sb.has_incompat(incompat::META_BG) && block_index >= sb.first_meta_bg {
        // Meta group `block_index` keeps its one descriptor block in its first group (after
        // that group's superblock backup, if any).
        let mg_first_group = block_index.checked_mul(per_block)?;
        let blk = first
            .checked_add(u64::from(mg_first_group).checked_mul(u64::from(sb.blocks_per_group))?)?
            .checked_add(u64::from(sb.group_has_super(mg_first_group)))?;
        Some((blk, offset))
    } else {
        Some((first.checked_add(1)?.checked_add(u64::from(block_index))?, offset))
    }
}

/// The checksum descriptor `d` of group `g` should carry (`None`: the file system keeps no
/// group descriptor checksums).
pub(crate) fn desc_csum(sb: &Superblock, g: u32, d: &[u8]) -> Option<u16> {
    Some(if sb.metadata_csum() {
        let c = csum::raw(sb.csum_seed, &g.to_le_bytes());
        let c = csum::raw(c, &d[..field::CHECKSUM]);
        let c = csum::raw(c, &[0, 0]);
        let c = csum::raw(c, &d[field::CHECKSUM + 2..]);
        (c & 0xFFFF) as u16
    } else if sb.has_ro_compat(ro_compat::GDT_CSUM) {
        let c = csum::crc16(!0, &sb.uuid);
        let c = csum::crc16(c, &g.to_le_bytes());
        let c = csum::crc16(c, &d[..field::CHECKSUM]);
        csum::crc16(c, &d[field::CHECKSUM + 2..])
    } else {
        return None;
    })
}

/// Checks a descriptor's checksum; `Err` describes the mismatch.
fn verify(sb: &Superblock, g: u32, d: &[u8]) -> Result<(), String> {
    let stored = le16(d, field::CHECKSUM);
    let Some(computed) = desc_csum(sb, g, d) else { return Ok(()) };
    if stored == computed {
        Ok(())
    } else {
        Err(format!("group {g} descriptor checksum mismatch (stored 0x{stored:04x}, computed 0x{computed:04x})"))
    }
}

/// Reads, checks and validates every group descriptor. `Err` is a message for the user.
pub fn load(sb: &Superblock, dev: &CachedDev) -> Result<Vec<Group>, String> {
    Ok(load_full(sb, dev)?.into_iter().map(|d| d.group).collect())
}

/// One group descriptor as the write path keeps it: the raw record (patched in place and
/// written back with [`super::update::write_group`]) and where it lives.
#[derive(Clone, Debug)]
pub struct GroupDesc {
    /// The validated read-side view (inode table, flags, unused inodes).
    pub group: Group,
    /// The `desc_size` bytes of the record.
    pub raw: Vec<u8>,
    /// Block holding the descriptor and byte offset in it.
    pub blk: u64,
    pub off: usize,
}

impl GroupDesc {
    fn wide(&self) -> bool {
        self.raw.len() >= 64
    }
    fn get32(&self, lo: usize, hi: usize) -> u64 {
        let mut v = u64::from(le32(&self.raw, lo));
        if self.wide() {
            v |= u64::from(le32(&self.raw, hi)) << 32;
        }
        v
    }
    fn get16(&self, lo: usize, hi: usize) -> u32 {
        let mut v = u32::from(le16(&self.raw, lo));
        if self.wide() {
            v |= u32::from(le16(&self.raw, hi)) << 16;
        }
        v
    }
    fn put16(&mut self, lo: usize, hi: usize, v: u32) {
        self.raw[lo..lo + 2].copy_from_slice(&(v as u16).to_le_bytes());
        if self.wide() {
            self.raw[hi..hi + 2].copy_from_slice(&((v >> 16) as u16).to_le_bytes());
        }
    }
    pub fn block_bitmap(&self) -> u64 {
        self.get32(field::BLOCK_BITMAP_LO, field::BLOCK_BITMAP_HI)
    }
    pub fn inode_bitmap(&self) -> u64 {
        self.get32(field::INODE_BITMAP_LO, field::INODE_BITMAP_HI)
    }
    pub fn inode_table(&self) -> u64 {
        self.group.inode_table
    }
    pub fn free_blocks(&self) -> u32 {
        self.get16(field::FREE_BLOCKS_LO, field::FREE_BLOCKS_HI)
    }
    pub fn set_free_blocks(&mut self, v: u32) {
        self.put16(field::FREE_BLOCKS_LO, field::FREE_BLOCKS_HI, v)
    }
    pub fn free_inodes(&self) -> u32 {
        self.get16(field::FREE_INODES_LO, field::FREE_INODES_HI)
    }
    pub fn set_free_inodes(&mut self, v: u32) {
        self.put16(field::FREE_INODES_LO, field::FREE_INODES_HI, v)
    }
    pub fn used_dirs(&self) -> u32 {
        self.get16(field::USED_DIRS_LO, field::USED_DIRS_HI)
    }
    pub fn set_used_dirs(&mut self, v: u32) {
        self.put16(field::USED_DIRS_LO, field::USED_DIRS_HI, v)
    }
    pub fn flags(&self) -> u16 {
        le16(&self.raw, field::FLAGS)
    }
    pub fn set_flags(&mut self, v: u16) {
        self.raw[field::FLAGS..field::FLAGS + 2].copy_from_slice(&v.to_le_bytes());
        self.group.flags = v;
    }
    pub fn itable_unused(&self) -> u32 {
        self.group.itable_unused
    }
    pub fn set_itable_unused(&mut self, v: u32) {
        self.put16(field::ITABLE_UNUSED_LO, field::ITABLE_UNUSED_HI, v);
        self.group.itable_unused = v;
    }
    /// Stores a block bitmap checksum (metadata_csum; the high half only in 64-byte records).
    pub fn set_block_bitmap_csum(&mut self, c: u32) {
        self.put16(field::BLOCK_BITMAP_CSUM_LO, field::BLOCK_BITMAP_CSUM_HI, c)
    }
    /// Stores an inode bitmap checksum.
    pub fn set_inode_bitmap_csum(&mut self, c: u32) {
        self.put16(field::INODE_BITMAP_CSUM_LO, field::INODE_BITMAP_CSUM_HI, c)
    }
}

/// Reads, checks and validates every group descriptor, keeping the raw records for writing.
pub fn load_full(sb: &Superblock, dev: &CachedDev) -> Result<Vec<GroupDesc>, String> {
    let mut groups = Vec::with_capacity(sb.group_count as usize);
    let itb = sb.inode_table_blocks();
    let mut cached: Option<(u64, std::sync::Arc<vfs_faction::bufcache::Buf>)> = None;
    for g in 0..sb.group_count {
        let (blk, off) = desc_location(sb, g).ok_or_else(|| format!("group {g} descriptor location overflows"))?;
        if blk >= sb.blocks_count {
            return Err(format!("group {g} descriptor block {blk} is beyond the file system"));
        }
        let buf = match &cached {
            Some((b, buf)) if *b == blk => buf.clone(),
            _ => {
                let buf = dev
                    .bread(blk)
                    .map_err(|e| format!("cannot read group descriptor block {blk}: {e}"))?;
                cached = Some((blk, buf.clone()));
                buf
            }
        };
        let d = buf
            .get(off..off + sb.desc_size as usize)
            .ok_or_else(|| format!("group {g} descriptor outside its block"))?;
        verify(sb, g, d)?;
        let wide = sb.desc_size >= 64;
        let mut inode_table = u64::from(le32(d, field::INODE_TABLE_LO));
        let mut itable_unused = u32::from(le16(d, field::ITABLE_UNUSED_LO));
        if wide {
            inode_table |= u64::from(le32(d, field::INODE_TABLE_HI)) << 32;
            itable_unused |= u32::from(le16(d, field::ITABLE_UNUSED_HI)) << 16;
        }
        if inode_table < u64::from(sb.first_data_block)
            || inode_table.checked_add(itb).is_none_or(|end| end > sb.blocks_count)
        {
            return Err(format!(
                "group {g}: inode table at block {inode_table} (+{itb}) is outside the file system"
            ));
        }
        let group = Group { inode_table, flags: le16(d, field::FLAGS), itable_unused };
        groups.push(GroupDesc { group, raw: d.to_vec(), blk, off });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_layout_descriptor_blocks() {
        let mut raw = vec![0u8; 1024];
        raw[0..4].copy_from_slice(&(8192u32 * 40).to_le_bytes()); // inodes
        raw[4..8].copy_from_slice(&(8192u32 * 40).to_le_bytes()); // blocks
        raw[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        raw[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        raw[0x28..0x2C].copy_from_slice(&8192u32.to_le_bytes());
        raw[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        let sb = Superblock::parse(&raw).unwrap();
        assert_eq!(desc_location(&sb, 0), Some((2, 0)));
        assert_eq!(desc_location(&sb, 31), Some((2, 992)));
        assert_eq!(desc_location(&sb, 32), Some((3, 0)));
    }
}
