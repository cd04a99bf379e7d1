//! On-disk inodes: the 128-byte UFS1 `ufs1_dinode` (32-bit block pointers, 32-bit times) and
//! the 256-byte UFS2 `ufs2_dinode` (64-bit pointers, 64-bit times, birth time, extended
//! attribute blocks, check hash).

use super::endian::ByteOrder;
use super::superblock::{ck, Superblock, NDADDR, NIADDR};
use vfs_faction::{FileType, Timespec};

/// UFS1 field offsets.
mod u1 {
    /// 4.2BSD 16-bit owner and group.
    pub const OUID: usize = 4;
    pub const OGID: usize = 6;
    pub const SIZE: usize = 8;
    pub const ATIME: usize = 16;
    pub const ATIMENSEC: usize = 20;
    pub const MTIME: usize = 24;
    pub const MTIMENSEC: usize = 28;
    pub const CTIME: usize = 32;
    pub const CTIMENSEC: usize = 36;
    pub const DB: usize = 40;
    pub const IB: usize = 88;
    pub const FLAGS: usize = 100;
    pub const BLOCKS: usize = 104;
    pub const GEN: usize = 108;
    pub const UID: usize = 112;
    pub const GID: usize = 116;
}

/// UFS2 field offsets (mode and link count are at the same place in UFS1).
mod u2 {
    pub const MODE: usize = 0;
    pub const NLINK: usize = 2;
    pub const UID: usize = 4;
    pub const GID: usize = 8;
    pub const BLKSIZE: usize = 12;
    pub const SIZE: usize = 16;
    pub const BLOCKS: usize = 24;
    pub const ATIME: usize = 32;
    pub const MTIME: usize = 40;
    pub const CTIME: usize = 48;
    pub const BIRTHTIME: usize = 56;
    pub const MTIMENSEC: usize = 64;
    pub const ATIMENSEC: usize = 68;
    pub const CTIMENSEC: usize = 72;
    pub const BIRTHNSEC: usize = 76;
    pub const GEN: usize = 80;
    pub const FLAGS: usize = 88;
    pub const EXTSIZE: usize = 92;
    pub const EXTB: usize = 96;
    pub const DB: usize = 112;
    pub const IB: usize = 208;
    pub const CKHASH: usize = 244;
}

/// Where a short symlink's target starts in the inode (the block pointer area).
pub fn shortlink_offset(ufs2: bool) -> usize {
    if ufs2 {
        u2::DB
    } else {
        u1::DB
    }
}

/// Why an inode could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InodeError {
    /// Mode 0: not allocated.
    Free,
    Corrupt(String),
}

/// An inode, decoded. `raw` keeps the on-disk bytes, so fields this driver does not know
/// survive a rewrite.
#[derive(Clone, Debug)]
pub struct Inode {
    pub mode: u16,
    pub kind: FileType,
    pub nlink: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Space held, 512-byte units.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub birthtime: Option<Timespec>,
    pub flags: u32,
    pub gen: u32,
    /// Direct and indirect block pointers (fragment addresses; 0 = hole).
    pub db: [u64; NDADDR],
    pub ib: [u64; NIADDR],
    /// UFS2 extended attribute area: bytes and its two blocks.
    pub extsize: u32,
    pub extb: [u64; 2],
    pub raw: Vec<u8>,
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec { sec, nsec: if (0..1_000_000_000).contains(&nsec) { nsec as u32 } else { 0 } }
}

impl Inode {
    /// Decodes inode `raw` (`sb.inode_size` bytes).
    pub fn parse(sb: &Superblock, raw: &[u8]) -> Result<Inode, InodeError> {
        let o = sb.order;
        if raw.len() != sb.isize() {
            return Err(InodeError::Corrupt(format!("inode record of {} bytes", raw.len())));
        }
        let mode = o.u16(raw, u2::MODE);
        if mode == 0 {
            return Err(InodeError::Free);
        }
        let kind = FileType::from_mode(u32::from(mode))
            .ok_or_else(|| InodeError::Corrupt(format!("mode {mode:#o} has no valid file type")))?;
        let nlink = o.u16(raw, u2::NLINK);
        if nlink > i16::MAX as u16 {
            return Err(InodeError::Corrupt(format!("negative link count {}", nlink as i16)));
        }
        if sb.ufs2 && sb.metackhash & ck::INODE != 0 {
            let want = o.u32(raw, u2::CKHASH);
            let got = dinode_hash(raw);
            if want != got {
                return Err(InodeError::Corrupt(format!("check hash {want:#010x}, computed {got:#010x}")));
            }
        }
        let mut db = [0u64; NDADDR];
        let mut ib = [0u64; NIADDR];
        let mut ino = if sb.ufs2 {
            for (i, p) in db.iter_mut().enumerate() {
                *p = o.u64(raw, u2::DB + 8 * i);
            }
            for (i, p) in ib.iter_mut().enumerate() {
                *p = o.u64(raw, u2::IB + 8 * i);
            }
            Inode {
                mode,
                kind,
                nlink,
                uid: o.u32(raw, u2::UID),
                gid: o.u32(raw, u2::GID),
                size: o.u64(raw, u2::SIZE),
                blocks: o.u64(raw, u2::BLOCKS),
                atime: ts(o.i64(raw, u2::ATIME), i64::from(o.i32(raw, u2::ATIMENSEC))),
                mtime: ts(o.i64(raw, u2::MTIME), i64::from(o.i32(raw, u2::MTIMENSEC))),
                ctime: ts(o.i64(raw, u2::CTIME), i64::from(o.i32(raw, u2::CTIMENSEC))),
                birthtime: Some(ts(o.i64(raw, u2::BIRTHTIME), i64::from(o.i32(raw, u2::BIRTHNSEC)))),
                flags: o.u32(raw, u2::FLAGS),
                gen: o.u32(raw, u2::GEN),
                db,
                ib,
                extsize: o.u32(raw, u2::EXTSIZE),
                extb: [o.u64(raw, u2::EXTB), o.u64(raw, u2::EXTB + 8)],
                raw: raw.to_vec(),
            }
        } else {
            for (i, p) in db.iter_mut().enumerate() {
                *p = u64::from(o.u32(raw, u1::DB + 4 * i));
            }
            for (i, p) in ib.iter_mut().enumerate() {
                *p = u64::from(o.u32(raw, u1::IB + 4 * i));
            }
            let (uid, gid) = if sb.fmt44 {
                (o.u32(raw, u1::UID), o.u32(raw, u1::GID))
            } else {
                (u32::from(o.u16(raw, u1::OUID)), u32::from(o.u16(raw, u1::OGID)))
            };
            Inode {
                mode,
                kind,
                nlink,
                uid,
                gid,
                size: o.u64(raw, u1::SIZE),
                blocks: u64::from(o.u32(raw, u1::BLOCKS)),
                atime: ts(i64::from(o.i32(raw, u1::ATIME)), i64::from(o.i32(raw, u1::ATIMENSEC))),
                mtime: ts(i64::from(o.i32(raw, u1::MTIME)), i64::from(o.i32(raw, u1::MTIMENSEC))),
                ctime: ts(i64::from(o.i32(raw, u1::CTIME)), i64::from(o.i32(raw, u1::CTIMENSEC))),
                birthtime: None,
                flags: o.u32(raw, u1::FLAGS),
                gen: o.u32(raw, u1::GEN),
                db,
                ib,
                extsize: 0,
                extb: [0; 2],
                raw: raw.to_vec(),
            }
        };
        if ino.size > sb.max_file_size() || ino.size > i64::MAX as u64 {
            return Err(InodeError::Corrupt(format!("size {} is beyond what the block map can hold", ino.size)));
        }
        if kind == FileType::Directory && ino.size % super::dir::DIRBLKSIZ as u64 != 0 {
            return Err(InodeError::Corrupt(format!("directory size {} is not a multiple of {}", ino.size, super::dir::DIRBLKSIZ)));
        }
        if ino.extsize > 0 && u64::from(ino.extsize) > 2 * u64::from(sb.bsize) {
            return Err(InodeError::Corrupt(format!("extended attribute area of {} bytes", ino.extsize)));
        }
        if matches!(kind, FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket) {
            // Devices keep their number in db[0]; nothing else is mapped.
            ino.size = if matches!(kind, FileType::Fifo | FileType::Socket) { ino.size } else { 0 };
        }
        Ok(ino)
    }

    /// True if a symlink keeps its target inside the inode (NetBSD's rule: shorter than
    /// `fs_maxsymlinklen`, or no blocks at all when that is 0).
    pub fn is_short_symlink(&self, sb: &Superblock) -> bool {
        let len = self.size;
        len < u64::from(sb.maxsymlinklen) || (sb.maxsymlinklen == 0 && self.blocks == 0)
    }

    /// The device number of a device inode, in the Linux `dev_t` encoding (32 bits).
    ///
    /// The on-disk value is the creating system's `dev_t`: NetBSD's 32-bit encoding (which is
    /// Linux's) or, from Debian's makefs, the GNU C library's 64-bit one; both decode the same way.
    pub fn rdev_linux(&self) -> u32 {
        let d = self.db[0];
        let major = ((d >> 8) & 0xfff) | ((d >> 32) & !0xfff);
        let minor = (d & 0xff) | ((d >> 12) & !0xff);
        linux_dev(major, minor)
    }

    /// Writes the decoded fields back into `raw` (UFS1 or UFS2 layout) and, when the file
    /// system keeps inode check hashes, updates the hash. Returns the bytes.
    pub fn encode(&mut self, sb: &Superblock) -> &[u8] {
        let o: ByteOrder = sb.order;
        let inline = self.keeps_target_inline(sb);
        let r = &mut self.raw;
        o.put_u16(r, u2::MODE, self.mode);
        o.put_u16(r, u2::NLINK, self.nlink);
        if sb.ufs2 {
            o.put_u32(r, u2::UID, self.uid);
            o.put_u32(r, u2::GID, self.gid);
            o.put_u32(r, u2::BLKSIZE, sb.bsize);
            o.put_u64(r, u2::SIZE, self.size);
            o.put_u64(r, u2::BLOCKS, self.blocks);
            o.put_i64(r, u2::ATIME, self.atime.sec);
            o.put_i64(r, u2::MTIME, self.mtime.sec);
            o.put_i64(r, u2::CTIME, self.ctime.sec);
            o.put_u32(r, u2::ATIMENSEC, self.atime.nsec);
            o.put_u32(r, u2::MTIMENSEC, self.mtime.nsec);
            o.put_u32(r, u2::CTIMENSEC, self.ctime.nsec);
            if let Some(b) = self.birthtime {
                o.put_i64(r, u2::BIRTHTIME, b.sec);
                o.put_u32(r, u2::BIRTHNSEC, b.nsec);
            }
            o.put_u32(r, u2::GEN, self.gen);
            o.put_u32(r, u2::FLAGS, self.flags);
            o.put_u32(r, u2::EXTSIZE, self.extsize);
            o.put_u64(r, u2::EXTB, self.extb[0]);
            o.put_u64(r, u2::EXTB + 8, self.extb[1]);
            if !inline {
                for (i, p) in self.db.iter().enumerate() {
                    o.put_u64(r, u2::DB + 8 * i, *p);
                }
                for (i, p) in self.ib.iter().enumerate() {
                    o.put_u64(r, u2::IB + 8 * i, *p);
                }
            }
            if sb.metackhash & ck::INODE != 0 {
                o.put_u32(r, u2::CKHASH, 0);
                let h = dinode_hash(r);
                o.put_u32(r, u2::CKHASH, h);
            }
        } else {
            if sb.fmt44 {
                o.put_u32(r, u1::UID, self.uid);
                o.put_u32(r, u1::GID, self.gid);
            } else {
                o.put_u16(r, u1::OUID, self.uid.min(0xffff) as u16);
                o.put_u16(r, u1::OGID, self.gid.min(0xffff) as u16);
            }
            o.put_u64(r, u1::SIZE, self.size);
            o.put_u32(r, u1::BLOCKS, self.blocks.min(u64::from(u32::MAX)) as u32);
            o.put_i32(r, u1::ATIME, self.atime.sec as i32);
            o.put_i32(r, u1::MTIME, self.mtime.sec as i32);
            o.put_i32(r, u1::CTIME, self.ctime.sec as i32);
            o.put_u32(r, u1::ATIMENSEC, self.atime.nsec);
            o.put_u32(r, u1::MTIMENSEC, self.mtime.nsec);
            o.put_u32(r, u1::CTIMENSEC, self.ctime.nsec);
            o.put_u32(r, u1::FLAGS, self.flags);
            o.put_u32(r, u1::GEN, self.gen);
            if !inline {
                for (i, p) in self.db.iter().enumerate() {
                    o.put_u32(r, u1::DB + 4 * i, *p as u32);
                }
                for (i, p) in self.ib.iter().enumerate() {
                    o.put_u32(r, u1::IB + 4 * i, *p as u32);
                }
            }
        }
        &self.raw
    }

    fn keeps_target_inline(&self, sb: &Superblock) -> bool {
        self.kind == FileType::Symlink && self.is_short_symlink(sb)
    }
}

/// A Linux `dev_t` (32-bit, `new_encode_dev`) from major and minor.
pub fn linux_dev(major: u64, minor: u64) -> u32 {
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

/// The on-disk device number for a Linux `dev_t` (the same encoding, widened).
pub fn disk_dev(rdev: u32) -> u64 {
    u64::from(rdev)
}

/// The UFS2 inode check hash: raw CRC-32C of the 256-byte dinode with `di_ckhash` zeroed.
pub fn dinode_hash(raw: &[u8]) -> u32 {
    let mut copy = raw.to_vec();
    if let Some(s) = copy.get_mut(u2::CKHASH..u2::CKHASH + 4) {
        s.fill(0);
    }
    super::ckhash(&copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_through_the_linux_encoding() {
        // GNU C library makedev(300, 70000) as Debian's makefs stores it.
        let (maj, min) = (300u64, 70_000u64);
        let gnu = (min & 0xff) | ((maj & 0xfff) << 8) | ((min & !0xff) << 12) | ((maj & !0xfff) << 32);
        let mut db = [0u64; NDADDR];
        db[0] = gnu;
        let i = Inode {
            mode: 0o20600,
            kind: FileType::CharDevice,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            birthtime: None,
            flags: 0,
            gen: 0,
            db,
            ib: [0; NIADDR],
            extsize: 0,
            extb: [0; 2],
            raw: vec![0; 128],
        };
        assert_eq!(i.rdev_linux(), linux_dev(300, 70_000));
        assert_eq!(linux_dev(8, 1), 0x801);
    }
}
