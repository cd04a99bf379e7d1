//! The superblock: parsed at named offsets, then validated into [`Superblock`], a value that
//! cannot describe an impossible geometry. Code past mount trusts it.

use super::csum;
use super::{le16, le32};

/// Byte offset of the primary superblock.
pub const SB_OFFSET: u64 = 1024;
/// Size of the superblock record.
pub const SB_SIZE: usize = 1024;
/// `s_magic`.
pub const MAGIC: u16 = 0xEF53;

mod field {
    pub const INODES_COUNT: usize = 0x0;
    pub const BLOCKS_COUNT_LO: usize = 0x4;
    pub const R_BLOCKS_COUNT_LO: usize = 0x8;
    pub const FREE_BLOCKS_LO: usize = 0xC;
    pub const FREE_INODES: usize = 0x10;
    pub const FIRST_DATA_BLOCK: usize = 0x14;
    pub const LOG_BLOCK_SIZE: usize = 0x18;
    pub const LOG_CLUSTER_SIZE: usize = 0x1C;
    pub const BLOCKS_PER_GROUP: usize = 0x20;
    pub const INODES_PER_GROUP: usize = 0x28;
    pub const MAGIC: usize = 0x38;
    pub const STATE: usize = 0x3A;
    pub const CREATOR_OS: usize = 0x48;
    pub const REV_LEVEL: usize = 0x4C;
    pub const FIRST_INO: usize = 0x54;
    pub const INODE_SIZE: usize = 0x58;
    pub const FEATURE_COMPAT: usize = 0x5C;
    pub const FEATURE_INCOMPAT: usize = 0x60;
    pub const FEATURE_RO_COMPAT: usize = 0x64;
    pub const UUID: usize = 0x68;
    pub const DESC_SIZE: usize = 0xFE;
    pub const FIRST_META_BG: usize = 0x104;
    pub const BLOCKS_COUNT_HI: usize = 0x150;
    pub const R_BLOCKS_COUNT_HI: usize = 0x154;
    pub const FREE_BLOCKS_HI: usize = 0x158;
    pub const CHECKSUM_TYPE: usize = 0x175;
    pub const BACKUP_BGS: usize = 0x24C;
    pub const CHECKSUM_SEED: usize = 0x270;
    pub const CHECKSUM: usize = 0x3FC;
}

/// `s_feature_compat` bits.
pub mod compat {
    pub const HAS_JOURNAL: u32 = 0x4;
    pub const SPARSE_SUPER2: u32 = 0x200;
}

/// `s_feature_incompat` bits, with their names.
pub mod incompat {
    pub const COMPRESSION: u32 = 0x1;
    pub const FILETYPE: u32 = 0x2;
    pub const RECOVER: u32 = 0x4;
    pub const JOURNAL_DEV: u32 = 0x8;
    pub const META_BG: u32 = 0x10;
    pub const EXTENTS: u32 = 0x40;
    pub const BIT64: u32 = 0x80;
    pub const MMP: u32 = 0x100;
    pub const FLEX_BG: u32 = 0x200;
    pub const EA_INODE: u32 = 0x400;
    pub const DIRDATA: u32 = 0x1000;
    pub const CSUM_SEED: u32 = 0x2000;
    pub const LARGEDIR: u32 = 0x4000;
    pub const INLINE_DATA: u32 = 0x8000;
    pub const ENCRYPT: u32 = 0x10000;
    pub const CASEFOLD: u32 = 0x20000;

    /// Incompatible features this driver reads.
    pub const SUPPORTED: u32 =
        FILETYPE | RECOVER | META_BG | EXTENTS | BIT64 | MMP | FLEX_BG | CSUM_SEED | LARGEDIR;

    pub const NAMES: &[(u32, &str)] = &[
        (COMPRESSION, "compression"),
        (FILETYPE, "filetype"),
        (RECOVER, "needs_recovery"),
        (JOURNAL_DEV, "journal_dev"),
        (META_BG, "meta_bg"),
        (EXTENTS, "extents"),
        (BIT64, "64bit"),
        (MMP, "mmp"),
        (FLEX_BG, "flex_bg"),
        (EA_INODE, "ea_inode"),
        (DIRDATA, "dirdata"),
        (CSUM_SEED, "metadata_csum_seed"),
        (LARGEDIR, "large_dir"),
        (INLINE_DATA, "inline_data"),
        (ENCRYPT, "encrypt"),
        (CASEFOLD, "casefold"),
    ];
}

/// `s_feature_ro_compat` bits.
pub mod ro_compat {
    pub const SPARSE_SUPER: u32 = 0x1;
    pub const LARGE_FILE: u32 = 0x2;
    pub const BTREE_DIR: u32 = 0x4;
    pub const HUGE_FILE: u32 = 0x8;
    pub const GDT_CSUM: u32 = 0x10;
    pub const DIR_NLINK: u32 = 0x20;
    pub const EXTRA_ISIZE: u32 = 0x40;
    pub const BIGALLOC: u32 = 0x200;
    pub const METADATA_CSUM: u32 = 0x400;
}

/// `s_creator_os` of GNU Hurd, whose inodes use other fields in the OS-dependent areas.
pub const OS_HURD: u32 = 1;

/// Names of the set bits of `incompat` features (unknown bits as hex).
pub fn incompat_names(bits: u32) -> String {
    let mut out = Vec::new();
    for i in 0..32 {
        let bit = 1u32 << i;
        if bits & bit == 0 {
            continue;
        }
        match incompat::NAMES.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => out.push((*n).to_string()),
            None => out.push(format!("unknown(0x{bit:x})")),
        }
    }
    out.join(", ")
}

/// Which type a superblock describes: ext4 if any feature only ext4 knows is set, else ext3
/// with a journal, else ext2.
pub fn fs_type(raw: &[u8]) -> Option<&'static str> {
    if raw.len() < SB_SIZE || le16(raw, field::MAGIC) != MAGIC {
        return None;
    }
    let compat_bits = le32(raw, field::FEATURE_COMPAT);
    let inc = le32(raw, field::FEATURE_INCOMPAT);
    let ro = le32(raw, field::FEATURE_RO_COMPAT);
    let ext3_incompat = incompat::FILETYPE | incompat::RECOVER | incompat::META_BG | incompat::JOURNAL_DEV;
    let ext3_ro = ro_compat::SPARSE_SUPER | ro_compat::LARGE_FILE | ro_compat::BTREE_DIR;
    if inc & !ext3_incompat != 0 || ro & !ext3_ro != 0 {
        Some("ext4")
    } else if compat_bits & compat::HAS_JOURNAL != 0 {
        Some("ext3")
    } else {
        Some("ext2")
    }
}

/// Why a superblock was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SbError {
    /// Not an ext2/3/4 superblock at all.
    NotExt,
    /// An ext file system we cannot mount (unsupported feature, needs recovery).
    Unsupported(String),
    /// A value that cannot be right.
    Corrupt(String),
}

/// A validated superblock.
#[derive(Debug, Clone)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub r_blocks_count: u64,
    pub free_blocks_count: u64,
    pub free_inodes_count: u32,
    pub first_data_block: u32,
    /// Bytes, 1024..=65536, a power of two.
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub state: u16,
    pub creator_os: u32,
    pub rev_level: u32,
    pub first_ino: u32,
    /// On-disk inode record size: a power of two, 128..=block_size.
    pub inode_size: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    /// Group descriptor size: 32, or 64.. with 64bit.
    pub desc_size: u32,
    pub first_meta_bg: u32,
    /// Number of block groups, at least 1.
    pub group_count: u32,
    /// Seed of metadata checksums (meaningful with metadata_csum).
    pub csum_seed: u32,
    pub backup_bgs: [u32; 2],
}

fn corrupt(msg: impl Into<String>) -> SbError {
    SbError::Corrupt(msg.into())
}

impl Superblock {
    /// Parses and validates the 1024 bytes at [`SB_OFFSET`]. A superblock that needs
    /// journal recovery is refused (see [`Superblock::parse_recovering`]).
    pub fn parse(raw: &[u8]) -> Result<Superblock, SbError> {
        Self::parse_inner(raw, false)
    }

    /// As [`Superblock::parse`], but accepts `needs_recovery`: for the journal replay.
    pub fn parse_recovering(raw: &[u8]) -> Result<Superblock, SbError> {
        Self::parse_inner(raw, true)
    }

    fn parse_inner(raw: &[u8], recovering: bool) -> Result<Superblock, SbError> {
        use field as f;
        if raw.len() < SB_SIZE || le16(raw, f::MAGIC) != MAGIC {
            return Err(SbError::NotExt);
        }
        let rev_level = le32(raw, f::REV_LEVEL);
        if rev_level > 1 {
            return Err(SbError::Unsupported(format!("unsupported revision level {rev_level}")));
        }
        let (compat_bits, incompat_bits, ro_bits) = if rev_level == 0 {
            (0, 0, 0)
        } else {
            (le32(raw, f::FEATURE_COMPAT), le32(raw, f::FEATURE_INCOMPAT), le32(raw, f::FEATURE_RO_COMPAT))
        };
        let unknown = incompat_bits & !incompat::SUPPORTED;
        if unknown != 0 {
            return Err(SbError::Unsupported(format!(
                "unsupported incompatible feature(s): {}",
                incompat_names(unknown)
            )));
        }
        if incompat_bits & incompat::RECOVER != 0 && !recovering {
            return Err(SbError::Unsupported("journal needs recovery; mount read-write to replay it".into()));
        }
        if ro_bits & ro_compat::METADATA_CSUM != 0 {
            let ty = raw[f::CHECKSUM_TYPE];
            if ty != 1 {
                return Err(corrupt(format!("unknown metadata checksum type {ty}")));
            }
            let want = le32(raw, f::CHECKSUM);
            let got = csum::raw(!0, &raw[..f::CHECKSUM]);
            if want != got {
                return Err(corrupt(format!(
                    "superblock checksum mismatch (stored 0x{want:08x}, computed 0x{got:08x})"
                )));
            }
        }

        let log_bs = le32(raw, f::LOG_BLOCK_SIZE);
        if log_bs > 6 {
            return Err(corrupt(format!("block size 2^(10+{log_bs}) is out of range (1 KiB..64 KiB)")));
        }
        let block_size = 1024u32 << log_bs;
        let bit64 = incompat_bits & incompat::BIT64 != 0;
        let hi = |off: usize| if bit64 { u64::from(le32(raw, off)) << 32 } else { 0 };
        let blocks_count = u64::from(le32(raw, f::BLOCKS_COUNT_LO)) | hi(f::BLOCKS_COUNT_HI);
        let r_blocks_count = u64::from(le32(raw, f::R_BLOCKS_COUNT_LO)) | hi(f::R_BLOCKS_COUNT_HI);
        let free_blocks_count = u64::from(le32(raw, f::FREE_BLOCKS_LO)) | hi(f::FREE_BLOCKS_HI);
        let first_data_block = le32(raw, f::FIRST_DATA_BLOCK);
        if block_size == 1024 && first_data_block != 1 && ro_bits & ro_compat::BIGALLOC == 0
            || block_size > 1024 && first_data_block != 0
        {
            return Err(corrupt(format!(
                "first data block {first_data_block} is impossible with {block_size}-byte blocks"
            )));
        }
        if blocks_count <= u64::from(first_data_block) {
            return Err(corrupt(format!("block count {blocks_count} leaves no data blocks")));
        }
        // Block numbers must fit a byte offset.
        if blocks_count.checked_mul(u64::from(block_size)).is_none() {
            return Err(corrupt(format!("block count {blocks_count} overflows")));
        }
        let bits_per_block = block_size.saturating_mul(8);
        let blocks_per_group = le32(raw, f::BLOCKS_PER_GROUP);
        let cluster_ratio = if ro_bits & ro_compat::BIGALLOC != 0 {
            let lc = le32(raw, f::LOG_CLUSTER_SIZE);
            if lc < log_bs || lc > log_bs + 16 {
                return Err(corrupt(format!("cluster size 2^(10+{lc}) is out of range")));
            }
            1u32 << (lc - log_bs)
        } else {
            1
        };
        if blocks_per_group == 0
            || blocks_per_group & 7 != 0
            || blocks_per_group > bits_per_block.saturating_mul(cluster_ratio)
        {
            return Err(corrupt(format!("{blocks_per_group} blocks per group is out of range")));
        }
        let inodes_per_group = le32(raw, f::INODES_PER_GROUP);
        if inodes_per_group == 0 || inodes_per_group > bits_per_block {
            return Err(corrupt(format!("{inodes_per_group} inodes per group is out of range")));
        }
        let (inode_size, first_ino) = if rev_level == 0 {
            (128, 11)
        } else {
            (u32::from(le16(raw, f::INODE_SIZE)), le32(raw, f::FIRST_INO))
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(corrupt(format!("inode size {inode_size} is invalid")));
        }
        let groups = (blocks_count - u64::from(first_data_block)).div_ceil(u64::from(blocks_per_group));
        let group_count = u32::try_from(groups).map_err(|_| corrupt(format!("{groups} block groups")))?;
        let inodes_count = le32(raw, f::INODES_COUNT);
        let max_inodes = u64::from(inodes_per_group) * u64::from(group_count);
        if inodes_count < 11 || u64::from(inodes_count) > max_inodes {
            return Err(corrupt(format!(
                "inode count {inodes_count} does not match {group_count} groups of {inodes_per_group} inodes"
            )));
        }
        if first_ino < 3 || first_ino > inodes_count {
            return Err(corrupt(format!("first inode {first_ino} is out of range")));
        }
        let desc_size = if bit64 {
            let d = u32::from(le16(raw, f::DESC_SIZE));
            if !(64..=1024).contains(&d) || !d.is_power_of_two() || d > block_size {
                return Err(corrupt(format!("group descriptor size {d} is invalid with 64bit")));
            }
            d
        } else {
            32
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&raw[f::UUID..f::UUID + 16]);
        let csum_seed = if incompat_bits & incompat::CSUM_SEED != 0 {
            le32(raw, f::CHECKSUM_SEED)
        } else {
            csum::raw(!0, &uuid)
        };
        Ok(Superblock {
            inodes_count,
            blocks_count,
            r_blocks_count,
            free_blocks_count,
            free_inodes_count: le32(raw, f::FREE_INODES),
            first_data_block,
            block_size,
            blocks_per_group,
            inodes_per_group,
            state: le16(raw, f::STATE),
            creator_os: le32(raw, f::CREATOR_OS),
            rev_level,
            first_ino,
            inode_size,
            feature_compat: compat_bits,
            feature_incompat: incompat_bits,
            feature_ro_compat: ro_bits,
            uuid,
            desc_size,
            first_meta_bg: le32(raw, f::FIRST_META_BG),
            group_count,
            csum_seed,
            backup_bgs: [le32(raw, f::BACKUP_BGS), le32(raw, f::BACKUP_BGS + 4)],
        })
    }

    pub fn has_incompat(&self, bit: u32) -> bool {
        self.feature_incompat & bit != 0
    }
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.feature_ro_compat & bit != 0
    }
    pub fn has_compat(&self, bit: u32) -> bool {
        self.feature_compat & bit != 0
    }
    pub fn metadata_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::METADATA_CSUM)
    }
    /// Directory entries carry a file type byte (never trusted on Hurd, which does not use it).
    pub fn dirent_filetype(&self) -> bool {
        self.has_incompat(incompat::FILETYPE) && self.creator_os != OS_HURD
    }

    /// Whether group `g` holds a superblock backup (and, without meta_bg, descriptors).
    pub fn group_has_super(&self, g: u32) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(compat::SPARSE_SUPER2) {
            return g == self.backup_bgs[0] || g == self.backup_bgs[1];
        }
        if !self.has_ro_compat(ro_compat::SPARSE_SUPER) || g == 1 {
            return true;
        }
        [3u32, 5, 7].iter().any(|&b| {
            let mut p = b;
            while p < g {
                match p.checked_mul(b) {
                    Some(n) => p = n,
                    None => return false,
                }
            }
            p == g
        })
    }

    /// Blocks of one group's inode table.
    pub fn inode_table_blocks(&self) -> u64 {
        (u64::from(self.inodes_per_group) * u64::from(self.inode_size)).div_ceil(u64::from(self.block_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn minimal() -> Vec<u8> {
        let mut b = vec![0u8; SB_SIZE];
        put32(&mut b, field::INODES_COUNT, 16);
        put32(&mut b, field::BLOCKS_COUNT_LO, 100);
        put32(&mut b, field::FIRST_DATA_BLOCK, 1);
        put32(&mut b, field::BLOCKS_PER_GROUP, 8192);
        put32(&mut b, field::INODES_PER_GROUP, 16);
        b[field::MAGIC..field::MAGIC + 2].copy_from_slice(&MAGIC.to_le_bytes());
        b
    }

    #[test]
    fn rev0_minimal_is_accepted() {
        let sb = Superblock::parse(&minimal()).unwrap();
        assert_eq!((sb.inode_size, sb.first_ino, sb.group_count, sb.block_size), (128, 11, 1, 1024));
        assert_eq!(fs_type(&minimal()), Some("ext2"));
    }

    #[test]
    fn nonsense_is_refused() {
        let mut b = minimal();
        put32(&mut b, field::LOG_BLOCK_SIZE, 30);
        assert!(matches!(Superblock::parse(&b), Err(SbError::Corrupt(_))));
        let mut b = minimal();
        put32(&mut b, field::INODES_PER_GROUP, 0);
        assert!(matches!(Superblock::parse(&b), Err(SbError::Corrupt(_))));
        let mut b = minimal();
        put32(&mut b, field::REV_LEVEL, 1);
        b[field::INODE_SIZE..field::INODE_SIZE + 2].copy_from_slice(&200u16.to_le_bytes());
        assert!(matches!(Superblock::parse(&b), Err(SbError::Corrupt(_))));
        assert_eq!(Superblock::parse(&[0u8; 1024]).err(), Some(SbError::NotExt));
        assert_eq!(Superblock::parse(&[0u8; 10]).err(), Some(SbError::NotExt));
    }

    #[test]
    fn unknown_incompat_is_named() {
        let mut b = minimal();
        put32(&mut b, field::REV_LEVEL, 1);
        b[field::INODE_SIZE..field::INODE_SIZE + 2].copy_from_slice(&128u16.to_le_bytes());
        put32(&mut b, field::FIRST_INO, 11);
        put32(&mut b, field::FEATURE_INCOMPAT, incompat::FILETYPE | incompat::ENCRYPT | 0x8000_0000);
        match Superblock::parse(&b) {
            Err(SbError::Unsupported(m)) => {
                assert!(m.contains("encrypt") && m.contains("unknown(0x80000000)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sparse_super_groups() {
        let mut b = minimal();
        put32(&mut b, field::REV_LEVEL, 1);
        b[field::INODE_SIZE..field::INODE_SIZE + 2].copy_from_slice(&128u16.to_le_bytes());
        put32(&mut b, field::FIRST_INO, 11);
        put32(&mut b, field::FEATURE_RO_COMPAT, ro_compat::SPARSE_SUPER);
        let sb = Superblock::parse(&b).unwrap();
        let with: Vec<u32> = (0..100).filter(|&g| sb.group_has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }
}
