//! Block group descriptors (32- and 64-byte, classic layout and meta_bg), with their
//! checksums (crc16 for gdt_csum, crc32c for metadata_csum). Only what reading needs is kept.

use super::csum;
use super::superblock::{incompat, ro_compat, Superblock};
use super::{le16, le32};
use vfs_faction::CachedDev;

/// `bg_flags`: the group's inode table is not initialised.
pub const BG_INODE_UNINIT: u16 = 0x1;

mod field {
    pub const INODE_TABLE_LO: usize = 0x8;
    pub const FLAGS: usize = 0x12;
    pub const ITABLE_UNUSED_LO: usize = 0x1C;
    pub const CHECKSUM: usize = 0x1E;
    pub const INODE_TABLE_HI: usize = 0x28;
    pub const ITABLE_UNUSED_HI: usize = 0x32;
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
fn desc_location(sb: &Superblock, g: u32) -> Option<(u64, usize)> {
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

/// Checks a descriptor's checksum; `Err` describes the mismatch.
fn verify(sb: &Superblock, g: u32, d: &[u8]) -> Result<(), String> {
    let stored = le16(d, field::CHECKSUM);
    let computed = if sb.metadata_csum() {
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
        return Ok(());
    };
    if stored == computed {
        Ok(())
    } else {
        Err(format!("group {g} descriptor checksum mismatch (stored 0x{stored:04x}, computed 0x{computed:04x})"))
    }
}

/// Reads, checks and validates every group descriptor. `Err` is a message for the user.
pub fn load(sb: &Superblock, dev: &CachedDev) -> Result<Vec<Group>, String> {
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
        groups.push(Group { inode_table, flags: le16(d, field::FLAGS), itable_unused });
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
