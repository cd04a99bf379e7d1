//! Directory blocks: linear records (`ext2_dir_entry_2`), the metadata_csum dirent tail, and
//! the htree interior blocks (which read linearly as empty records).

use super::csum;
use super::{le16, le32};
use vfs_faction::FileType;

/// One record of a directory block.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Byte offset of the record in its block.
    pub pos: usize,
    pub rec_len: usize,
    pub inode: u32,
    pub name: &'a [u8],
    /// Dirent file type (0 unknown, or when the file system has no filetype feature).
    pub file_type: u8,
}

/// The dirent tail's fake file type byte.
const TAIL_FT: u8 = 0xDE;
/// Size of the metadata_csum dirent tail.
pub const TAIL_LEN: usize = 12;

/// `rec_len` as stored: 64 KiB blocks encode their full length specially.
fn rec_len(raw: u16, bs: usize) -> usize {
    if bs < 65536 {
        usize::from(raw)
    } else if raw == 65535 || raw == 0 {
        65536
    } else {
        usize::from(raw & 65532) | (usize::from(raw & 3) << 16)
    }
}

/// Walks the records of one directory block, calling `f` for each (including those with
/// inode 0) until it returns `false`. Every record is checked first; `Err` says what is wrong.
pub fn walk<'a>(
    block: &'a [u8],
    filetype: bool,
    inodes_count: u32,
    mut f: impl FnMut(Record<'a>) -> bool,
) -> Result<(), String> {
    let bs = block.len();
    let mut pos = 0usize;
    while pos < bs {
        if pos + 8 > bs {
            return Err(format!("record at offset {pos} runs past the block"));
        }
        let inode = le32(block, pos);
        let rl = rec_len(le16(block, pos + 4), bs);
        let (name_len, file_type) = if filetype {
            (usize::from(block[pos + 6]), block[pos + 7])
        } else {
            (usize::from(le16(block, pos + 6)), 0)
        };
        let need = (8 + name_len + 3) & !3;
        if rl < 8 || rl & 3 != 0 || pos + rl > bs || (inode != 0 && (name_len > 255 || rl < need)) {
            return Err(format!(
                "record at offset {pos}: rec_len {rl}, name_len {name_len} is invalid in a {bs}-byte block"
            ));
        }
        if inode != 0 {
            if inode > inodes_count {
                return Err(format!("record at offset {pos} names inode {inode}, past the last inode {inodes_count}"));
            }
            if name_len == 0 {
                return Err(format!("record at offset {pos} has an empty name"));
            }
            let name = &block[pos + 8..pos + 8 + name_len];
            if !f(Record { pos, rec_len: rl, inode, name, file_type }) {
                return Ok(());
            }
        }
        pos += rl;
    }
    Ok(())
}

/// The type a dirent's file type byte names.
pub fn dirent_type(ft: u8) -> Option<FileType> {
    Some(match ft {
        1 => FileType::Regular,
        2 => FileType::Directory,
        3 => FileType::CharDevice,
        4 => FileType::BlockDevice,
        5 => FileType::Fifo,
        6 => FileType::Socket,
        7 => FileType::Symlink,
        _ => return None,
    })
}

/// True if the block ends in a metadata_csum dirent tail.
fn has_tail(block: &[u8]) -> bool {
    let t = block.len().saturating_sub(TAIL_LEN);
    block.len() >= TAIL_LEN
        && le32(block, t) == 0
        && le16(block, t + 4) == TAIL_LEN as u16
        && block[t + 6] == 0
        && block[t + 7] == TAIL_FT
}

/// Offset of the htree count/limit header if this block is an htree interior block:
/// the root (logical block 0 of an indexed directory) or a node (one empty record
/// spanning the block).
fn dx_count_offset(block: &[u8], lblk: u64) -> Option<usize> {
    let bs = block.len();
    if lblk == 0 {
        // "." (12 bytes), ".." spanning the block, then dx_root_info.
        let info_len = usize::from(*block.get(0x1D)?);
        let off = 0x18 + info_len;
        (rec_len(le16(block, 16), bs) == bs - 12 && info_len == 8).then_some(off)
    } else {
        (le32(block, 0) == 0 && rec_len(le16(block, 4), bs) == bs && block[6] == 0).then_some(8)
    }
}

/// Verifies the metadata_csum checksum of directory block `lblk` (`seed`: the inode's
/// checksum seed; `indexed`: the directory has the htree flag).
pub fn verify(block: &[u8], lblk: u64, seed: u32, indexed: bool) -> Result<(), String> {
    let bs = block.len();
    if has_tail(block) {
        let t = bs - TAIL_LEN;
        let stored = le32(block, t + 8);
        let computed = csum::raw(seed, &block[..t]);
        return if stored == computed {
            Ok(())
        } else {
            Err(format!("directory block checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"))
        };
    }
    if indexed {
        if let Some(co) = dx_count_offset(block, lblk) {
            let limit = usize::from(le16(block, co));
            let count = usize::from(le16(block, co + 2));
            let tail = co + limit * 8;
            if count > limit || tail + 8 > bs {
                return Err(format!("htree node: count {count}, limit {limit} do not fit the block"));
            }
            let c = csum::raw(seed, &block[..co + count * 8]);
            // The tail's reserved word, then its checksum field as zero.
            let c = csum::raw(c, &block[tail..tail + 4]);
            let computed = csum::raw(c, &[0; 4]);
            let stored = le32(block, tail + 4);
            return if stored == computed {
                Ok(())
            } else {
                Err(format!("htree block checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"))
            };
        }
    }
    Err("directory block has no checksum tail".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(b: &mut [u8], pos: usize, ino: u32, rl: u16, name: &[u8], ft: u8) {
        b[pos..pos + 4].copy_from_slice(&ino.to_le_bytes());
        b[pos + 4..pos + 6].copy_from_slice(&rl.to_le_bytes());
        b[pos + 6] = name.len() as u8;
        b[pos + 7] = ft;
        b[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
    }

    #[test]
    fn walks_and_skips_empty_records() {
        let mut b = vec![0u8; 1024];
        rec(&mut b, 0, 2, 12, b".", 2);
        rec(&mut b, 12, 0, 20, b"gone", 1);
        rec(&mut b, 32, 12, 1024 - 32, b"file", 1);
        let mut names = Vec::new();
        walk(&b, true, 100, |r| {
            names.push((r.pos, r.name.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(names, vec![(0, b".".to_vec()), (32, b"file".to_vec())]);
    }

    #[test]
    fn bad_records_are_errors() {
        let mut b = vec![0u8; 1024];
        rec(&mut b, 0, 2, 2000, b".", 2);
        assert!(walk(&b, true, 100, |_| true).is_err());
        rec(&mut b, 0, 2, 10, b".", 2);
        assert!(walk(&b, true, 100, |_| true).is_err());
        rec(&mut b, 0, 2, 0, b".", 2);
        assert!(walk(&b, true, 100, |_| true).is_err());
        rec(&mut b, 0, 200, 1024, b".", 2);
        assert!(walk(&b, true, 100, |_| true).is_err());
        rec(&mut b, 0, 5, 8, b"abcdef", 2);
        assert!(walk(&b, true, 100, |_| true).is_err());
    }

    #[test]
    fn tail_detected() {
        let mut b = vec![0u8; 1024];
        rec(&mut b, 0, 2, 1012, b".", 2);
        rec(&mut b, 1012, 0, 12, b"", 0xDE);
        assert!(has_tail(&b));
        let c = csum::raw(7, &b[..1012]);
        b[1020..1024].copy_from_slice(&c.to_le_bytes());
        assert!(verify(&b, 1, 7, false).is_ok());
        b[20] ^= 1;
        assert!(verify(&b, 1, 7, false).is_err());
    }
}
