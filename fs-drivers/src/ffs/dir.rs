//! Directories: 512-byte chunks (`DIRBLKSIZ`) of `struct direct` records
//! (`d_ino` u32, `d_reclen` u16, then `d_type` u8 + `d_namlen` u8 in the 4.4BSD format, or a
//! u16 `d_namlen` in the old 4.2BSD format; the name, NUL-terminated, padded to 4 bytes).
//! A record never crosses a chunk; the records of a chunk cover it exactly.

use super::endian::ByteOrder;
use vfs_faction::FileType;

pub const DIRBLKSIZ: usize = 512;
pub const MAXNAMLEN: usize = 255;
/// Whiteout entries (`DT_WHT`, inode `WINO`) hide names of lower layers; we skip them.
pub const DT_WHT: u8 = 14;

/// Bytes a record with a name of `namlen` bytes needs (`DIRECTSIZ`).
pub fn direct_size(namlen: usize) -> usize {
    (8 + namlen + 1 + 3) & !3
}

/// One record of a chunk.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Offset within the chunk.
    pub pos: usize,
    /// 0: an empty record.
    pub ino: u32,
    pub reclen: usize,
    pub dtype: u8,
    pub name: &'a [u8],
}

/// The type a `d_type` names, if any.
pub fn dtype_kind(t: u8) -> Option<FileType> {
    Some(match t {
        1 => FileType::Fifo,
        2 => FileType::CharDevice,
        4 => FileType::Directory,
        6 => FileType::BlockDevice,
        8 => FileType::Regular,
        10 => FileType::Symlink,
        12 => FileType::Socket,
        _ => return None,
    })
}

/// The `d_type` of a file type.
pub fn kind_dtype(k: FileType) -> u8 {
    match k {
        FileType::Fifo => 1,
        FileType::CharDevice => 2,
        FileType::Directory => 4,
        FileType::BlockDevice => 6,
        FileType::Regular => 8,
        FileType::Symlink => 10,
        FileType::Socket => 12,
    }
}

/// Parses every record of one chunk, checking each: record length a multiple of 4, at least
/// the size its name needs and within the chunk; name length at most 255 with no NUL or '/'
/// in the name; inode number below `ninodes`. Calls `f` for each record (empty ones too)
/// until it returns `false`. Returns whether it ran to the end.
pub fn walk_chunk(
    chunk: &[u8],
    order: ByteOrder,
    fmt44: bool,
    ninodes: u32,
    f: &mut dyn FnMut(&Record<'_>) -> bool,
) -> Result<bool, String> {
    if chunk.len() != DIRBLKSIZ {
        return Err(format!("directory chunk of {} bytes", chunk.len()));
    }
    let mut pos = 0usize;
    while pos < DIRBLKSIZ {
        if DIRBLKSIZ - pos < 8 {
            return Err(format!("record at {pos} has no room for its header"));
        }
        let ino = order.u32(chunk, pos);
        let reclen = usize::from(order.u16(chunk, pos + 4));
        let (dtype, namlen) = if fmt44 {
            (chunk[pos + 6], usize::from(chunk[pos + 7]))
        } else {
            (0, usize::from(order.u16(chunk, pos + 6)))
        };
        if reclen == 0 || reclen % 4 != 0 || pos + reclen > DIRBLKSIZ {
            return Err(format!("record at {pos} has length {reclen}, which leaves its chunk or is not a multiple of 4"));
        }
        if namlen > MAXNAMLEN {
            return Err(format!("record at {pos} has a name of {namlen} bytes"));
        }
        if ino != 0 && direct_size(namlen) > reclen {
            return Err(format!("record at {pos} is {reclen} bytes, too short for a name of {namlen} bytes"));
        }
        if ino != 0 && ino >= ninodes {
            return Err(format!("record at {pos} names inode {ino}, beyond the last inode {}", ninodes - 1));
        }
        let name = if ino != 0 { &chunk[pos + 8..pos + 8 + namlen] } else { &chunk[pos + 8..pos + 8] };
        if ino != 0 && (namlen == 0 || name.iter().any(|&c| c == 0 || c == b'/')) {
            return Err(format!("record at {pos} has an invalid name {:?}", String::from_utf8_lossy(name)));
        }
        let rec = Record { pos, ino, reclen, dtype, name };
        if !f(&rec) {
            return Ok(false);
        }
        pos += reclen;
    }
    Ok(true)
}

/// Writes a record header and name at `pos` (the caller has checked the room).
pub fn put_record(chunk: &mut [u8], pos: usize, order: ByteOrder, fmt44: bool, ino: u32, reclen: usize, dtype: u8, name: &[u8]) {
    order.put_u32(chunk, pos, ino);
    order.put_u16(chunk, pos + 4, reclen as u16);
    if fmt44 {
        chunk[pos + 6] = dtype;
        chunk[pos + 7] = name.len() as u8;
    } else {
        order.put_u16(chunk, pos + 6, name.len() as u16);
    }
    let end = pos + direct_size(name.len());
    chunk[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
    chunk[pos + 8 + name.len()..end].fill(0);
}

/// Sets the record length of the record at `pos`.
pub fn set_reclen(chunk: &mut [u8], pos: usize, order: ByteOrder, reclen: usize) {
    order.put_u16(chunk, pos + 4, reclen as u16);
}

/// Sets the inode number (and type) of the record at `pos`.
pub fn set_ino(chunk: &mut [u8], pos: usize, order: ByteOrder, fmt44: bool, ino: u32, dtype: u8) {
    order.put_u32(chunk, pos, ino);
    if fmt44 {
        chunk[pos + 6] = dtype;
    }
}

/// An empty chunk: one record of inode 0 covering it.
pub fn empty_chunk(order: ByteOrder) -> [u8; DIRBLKSIZ] {
    let mut c = [0u8; DIRBLKSIZ];
    order.put_u16(&mut c, 4, DIRBLKSIZ as u16);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked() {
        let o = ByteOrder::Big;
        let mut c = empty_chunk(o);
        put_record(&mut c, 0, o, true, 2, 12, 4, b".");
        put_record(&mut c, 12, o, true, 2, 500, 4, b"..");
        let mut names = Vec::new();
        assert!(walk_chunk(&c, o, true, 100, &mut |r| {
            names.push(r.name.to_vec());
            true
        })
        .unwrap());
        assert_eq!(names, vec![b".".to_vec(), b"..".to_vec()]);
        // Record length past the chunk.
        set_reclen(&mut c, 12, o, 504);
        assert!(walk_chunk(&c, o, true, 100, &mut |_| true).is_err());
        set_reclen(&mut c, 12, o, 500);
        // Inode out of range.
        assert!(walk_chunk(&c, o, true, 2, &mut |_| true).is_err());
        // Too short for its name.
        set_reclen(&mut c, 0, o, 8);
        assert!(walk_chunk(&c, o, true, 100, &mut |_| true).is_err());
    }
}
