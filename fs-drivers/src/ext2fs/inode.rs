//! On-disk inodes (128-byte rev 0 / rev 1 base, plus the extra fields of larger inodes),
//! parsed at named offsets into [`Inode`].

use super::csum;
use super::superblock::{ro_compat, Superblock, OS_HURD};
use super::{le16, le32};
use vfs_faction::{FileType, Timespec};

pub(crate) mod field {
    pub const MODE: usize = 0x0;
    pub const UID: usize = 0x2;
    pub const SIZE_LO: usize = 0x4;
    pub const ATIME: usize = 0x8;
    pub const CTIME: usize = 0xC;
    pub const MTIME: usize = 0x10;
    pub const DTIME: usize = 0x14;
    pub const GID: usize = 0x18;
    pub const LINKS: usize = 0x1A;
    pub const BLOCKS_LO: usize = 0x1C;
    pub const FLAGS: usize = 0x20;
    pub const BLOCK: usize = 0x28;
    pub const GENERATION: usize = 0x64;
    pub const FILE_ACL_LO: usize = 0x68;
    pub const SIZE_HI: usize = 0x6C;
    pub const BLOCKS_HI: usize = 0x74;
    pub const FILE_ACL_HI: usize = 0x76;
    pub const UID_HI: usize = 0x78;
    pub const GID_HI: usize = 0x7A;
    pub const CHECKSUM_LO: usize = 0x7C;
    pub const EXTRA_ISIZE: usize = 0x80;
    pub const CHECKSUM_HI: usize = 0x82;
    pub const CTIME_EXTRA: usize = 0x84;
    pub const MTIME_EXTRA: usize = 0x88;
    pub const ATIME_EXTRA: usize = 0x8C;
    pub const CRTIME: usize = 0x90;
    pub const CRTIME_EXTRA: usize = 0x94;
}

/// `i_flags` bits.
pub mod flags {
    pub const INDEX: u32 = 0x1000;
    /// Flags a new inode inherits from its directory (ext4's `EXT4_FL_INHERITED` subset we
    /// keep: sync, nodump, noatime, dirsync, ... but not compression or immutable).
    pub const INHERITED: u32 = 0x8 | 0x40 | 0x80 | 0x4000 | 0x1_0000 | 0x2_0000;
    pub const HUGE_FILE: u32 = 0x4_0000;
    pub const EXTENTS: u32 = 0x8_0000;
    pub const INLINE_DATA: u32 = 0x1000_0000;
}

/// Size of the base inode.
pub const GOOD_OLD_SIZE: usize = 128;

/// A parsed inode. `raw` is the whole on-disk record (for in-inode xattrs).
#[derive(Clone, Debug)]
pub struct Inode {
    pub mode: u16,
    pub kind: FileType,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub mtime: Timespec,
    pub crtime: Option<Timespec>,
    pub links: u16,
    /// Space used in 512-byte units.
    pub blocks512: u64,
    pub flags: u32,
    /// `i_block`: 60 bytes of block pointers, extent root, fast symlink or device number.
    pub block: [u8; 60],
    pub generation: u32,
    pub file_acl: u64,
    /// `i_dtime`: deletion time, or the next inode of the orphan list.
    pub dtime: u32,
    /// `i_extra_isize` (0 for 128-byte inodes), already checked to fit the record.
    pub extra_isize: u16,
    pub raw: Vec<u8>,
}

/// Why an inode record was refused.
#[derive(Debug)]
pub enum InodeError {
    /// Not in use (mode 0 or deleted).
    Free,
    Corrupt(String),
}

pub(crate) fn time(raw: &[u8], secs_off: usize, extra_off: usize, extra_end: usize) -> Timespec {
    let sec = i64::from(le32(raw, secs_off) as i32);
    if extra_off + 4 <= extra_end {
        let extra = le32(raw, extra_off);
        // Low two bits extend the seconds past 2038; the rest are nanoseconds.
        let sec = sec + (i64::from(extra & 3) << 32);
        let nsec = (extra >> 2).min(999_999_999);
        Timespec { sec, nsec }
    } else {
        Timespec { sec, nsec: 0 }
    }
}

/// The inode checksum seed: `crc(fs seed, ino, generation)`.
pub fn csum_seed(sb: &Superblock, ino: u32, generation: u32) -> u32 {
    csum::raw(csum::raw(sb.csum_seed, &ino.to_le_bytes()), &generation.to_le_bytes())
}

/// The metadata_csum checksum of inode record `raw` (checksum fields counted as zero) and
/// whether the record has room for its high half.
pub(crate) fn checksum(sb: &Superblock, ino: u32, raw: &[u8]) -> (u32, bool) {
    let extra_isize = if raw.len() > GOOD_OLD_SIZE { usize::from(le16(raw, field::EXTRA_ISIZE)) } else { 0 };
    let seed = csum_seed(sb, ino, le32(raw, field::GENERATION));
    let has_hi = raw.len() > GOOD_OLD_SIZE && extra_isize >= 4;
    let mut c = csum::raw(seed, &raw[..field::CHECKSUM_LO]);
    c = csum::raw(c, &[0, 0]);
    if has_hi {
        c = csum::raw(c, &raw[field::CHECKSUM_LO + 2..field::CHECKSUM_HI]);
        c = csum::raw(c, &[0, 0]);
        c = csum::raw(c, &raw[field::CHECKSUM_HI + 2..]);
    } else {
        c = csum::raw(c, &raw[field::CHECKSUM_LO + 2..]);
        c &= 0xFFFF;
    }
    (c, has_hi)
}

/// Checks the metadata_csum checksum of inode record `raw` of inode `ino`.
fn verify(sb: &Superblock, ino: u32, raw: &[u8], extra_isize: usize) -> Result<(), String> {
    let seed = csum_seed(sb, ino, le32(raw, field::GENERATION));
    let has_hi = raw.len() > GOOD_OLD_SIZE && extra_isize >= 4;
    let mut c = csum::raw(seed, &raw[..field::CHECKSUM_LO]);
    c = csum::raw(c, &[0, 0]);
    if has_hi {
        c = csum::raw(c, &raw[field::CHECKSUM_LO + 2..field::CHECKSUM_HI]);
        c = csum::raw(c, &[0, 0]);
        c = csum::raw(c, &raw[field::CHECKSUM_HI + 2..]);
    } else {
        c = csum::raw(c, &raw[field::CHECKSUM_LO + 2..]);
    }
    let mut stored = u32::from(le16(raw, field::CHECKSUM_LO));
    if has_hi {
        stored |= u32::from(le16(raw, field::CHECKSUM_HI)) << 16;
    } else {
        c &= 0xFFFF;
    }
    if stored == c {
        Ok(())
    } else {
        Err(format!("inode checksum mismatch (stored 0x{stored:08x}, computed 0x{c:08x})"))
    }
}

impl Inode {
    /// Parses inode `ino` from its on-disk record (`sb.inode_size` bytes).
    pub fn parse(sb: &Superblock, ino: u32, raw: &[u8]) -> Result<Inode, InodeError> {
        Self::parse_as(sb, ino, raw, false)
    }

    /// [`Inode::parse`]; with `unlinked`, an inode whose link count is 0 but whose mode is
    /// set (a file on the orphan list) is parsed too instead of taken for free.
    pub fn parse_as(sb: &Superblock, ino: u32, raw: &[u8], unlinked: bool) -> Result<Inode, InodeError> {
        let corrupt = |m: String| InodeError::Corrupt(m);
        if raw.len() != sb.inode_size as usize || raw.len() < GOOD_OLD_SIZE {
            return Err(corrupt(format!("record of {} bytes", raw.len())));
        }
        let extra_isize = if raw.len() > GOOD_OLD_SIZE { usize::from(le16(raw, field::EXTRA_ISIZE)) } else { 0 };
        let mode = le16(raw, field::MODE);
        let links = le16(raw, field::LINKS);
        if mode == 0 && links == 0 && raw.iter().all(|&b| b == 0) {
            // Never used (e.g. an uninitialised table): no checksum to check.
            return Err(InodeError::Free);
        }
        if GOOD_OLD_SIZE + extra_isize > raw.len() || extra_isize % 4 != 0 {
            return Err(corrupt(format!("i_extra_isize {extra_isize} does not fit a {}-byte inode", raw.len())));
        }
        if sb.metadata_csum() {
            verify(sb, ino, raw, extra_isize).map_err(corrupt)?;
        }
        if mode == 0 || (links == 0 && !unlinked) {
            return Err(InodeError::Free);
        }
        let kind = FileType::from_mode(u32::from(mode))
            .ok_or_else(|| corrupt(format!("mode 0o{mode:o} names no file type")))?;
        let hurd = sb.creator_os == OS_HURD;
        let flags = le32(raw, field::FLAGS);
        let extra_end = GOOD_OLD_SIZE + extra_isize;
        let uid = u32::from(le16(raw, field::UID)) | u32::from(le16(raw, field::UID_HI)) << 16;
        let gid = u32::from(le16(raw, field::GID)) | u32::from(le16(raw, field::GID_HI)) << 16;
        let size_hi = if kind == FileType::Directory
            && !sb.has_incompat(super::superblock::incompat::LARGEDIR)
        {
            0
        } else {
            u64::from(le32(raw, field::SIZE_HI))
        };
        let size = u64::from(le32(raw, field::SIZE_LO)) | size_hi << 32;
        let blocks_lo = u64::from(le32(raw, field::BLOCKS_LO));
        let blocks512 = if !hurd && sb.has_ro_compat(ro_compat::HUGE_FILE) {
            let b = blocks_lo | u64::from(le16(raw, field::BLOCKS_HI)) << 32;
            if flags & flags::HUGE_FILE != 0 {
                b.saturating_mul(u64::from(sb.block_size / 512))
            } else {
                b
            }
        } else {
            blocks_lo
        };
        let mut file_acl = u64::from(le32(raw, field::FILE_ACL_LO));
        if !hurd {
            file_acl |= u64::from(le16(raw, field::FILE_ACL_HI)) << 32;
        }
        let crtime = (field::CRTIME + 4 <= extra_end).then(|| time(raw, field::CRTIME, field::CRTIME_EXTRA, extra_end));
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[field::BLOCK..field::BLOCK + 60]);
        Ok(Inode {
            mode,
            kind,
            uid,
            gid,
            size,
            atime: time(raw, field::ATIME, field::ATIME_EXTRA, extra_end),
            ctime: time(raw, field::CTIME, field::CTIME_EXTRA, extra_end),
            mtime: time(raw, field::MTIME, field::MTIME_EXTRA, extra_end),
            crtime,
            links,
            blocks512,
            flags,
            block,
            generation: le32(raw, field::GENERATION),
            file_acl,
            dtime: le32(raw, field::DTIME),
            extra_isize: extra_isize as u16,
            raw: raw.to_vec(),
        })
    }

    /// `i_block[i]` as a 32-bit word.
    pub fn block_word(&self, i: usize) -> u32 {
        le32(&self.block, i * 4)
    }

    /// Linux `dev_t` of a device node: old encoding in `i_block[0]`, new in `i_block[1]`.
    pub fn rdev(&self) -> u32 {
        let old = self.block_word(0);
        let (major, minor) = if old != 0 {
            ((old >> 8) & 0xff, old & 0xff)
        } else {
            let new = self.block_word(1);
            ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
        };
        (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_extra_epoch_and_nsec() {
        let mut raw = vec![0u8; 256];
        raw[field::MTIME..field::MTIME + 4].copy_from_slice(&(-1i32).to_le_bytes());
        let extra: u32 = (123_456_789 << 2) | 1;
        raw[field::MTIME_EXTRA..field::MTIME_EXTRA + 4].copy_from_slice(&extra.to_le_bytes());
        let t = time(&raw, field::MTIME, field::MTIME_EXTRA, 256);
        assert_eq!(t, Timespec { sec: (1i64 << 32) - 1, nsec: 123_456_789 });
        let t = time(&raw, field::MTIME, field::MTIME_EXTRA, 128);
        assert_eq!(t, Timespec { sec: -1, nsec: 0 });
    }
}
