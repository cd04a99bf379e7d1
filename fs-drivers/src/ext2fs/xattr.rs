//! Extended attributes: in the inode (after `i_extra_isize`) and in one EA block
//! (`i_file_acl`). POSIX ACLs are stored in ext4's compact form and handed out in the
//! `system.posix_acl_*` xattr form.

use super::csum;
use super::le16;
use super::le32;

/// Magic of both the in-inode header and the EA block header.
pub const MAGIC: u32 = 0xEA02_0000;
/// Size of the EA block header.
pub const BLOCK_HEADER: usize = 32;

/// One attribute: full name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

fn prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        1 => b"user.",
        2 => b"system.posix_acl_access",
        3 => b"system.posix_acl_default",
        4 => b"trusted.",
        6 => b"security.",
        7 => b"system.",
        8 => b"system.richacl",
        _ => return None,
    })
}

/// One attribute as stored: name index, name suffix and the stored value (ACLs in ext4's
/// compact form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawXattr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl RawXattr {
    /// Bytes this entry takes in an attribute area: the entry (padded) and its value (padded).
    pub fn space(&self) -> usize {
        (16 + self.name.len()).next_multiple_of(4) + self.value.len().next_multiple_of(4)
    }
}

/// Parses the entries of one attribute area. `entries` is where the first entry starts in
/// `area`; value offsets count from `value_base`. Entries end at a zero word.
pub fn parse(area: &[u8], entries: usize, value_base: usize) -> Result<Vec<Xattr>, String> {
    let mut out = Vec::new();
    for r in parse_raw(area, entries, value_base)? {
        let full = match prefix(r.index) {
            Some(p) => {
                let mut n = p.to_vec();
                // The ACL names are whole names; their suffix is empty.
                if !matches!(r.index, 2 | 3 | 8) {
                    n.extend_from_slice(&r.name);
                }
                n
            }
            None => {
                log::warn!("xattr with unknown name index {} ignored", r.index);
                continue;
            }
        };
        let value = if matches!(r.index, 2 | 3) { acl_to_xattr(&r.value)? } else { r.value };
        out.push(Xattr { name: full, value });
    }
    Ok(out)
}

/// [`parse`] without the name and ACL translation: the entries as stored.
pub fn parse_raw(area: &[u8], entries: usize, value_base: usize) -> Result<Vec<RawXattr>, String> {
    let mut out = Vec::new();
    let mut pos = entries;
    loop {
        if pos + 4 > area.len() {
            return Err(format!("entry at offset {pos} runs past the end"));
        }
        if le32(area, pos) == 0 {
            return Ok(out);
        }
        if pos + 16 > area.len() {
            return Err(format!("entry at offset {pos} runs past the end"));
        }
        let name_len = usize::from(area[pos]);
        let index = area[pos + 1];
        let value_offs = usize::from(le16(area, pos + 2));
        let value_inum = le32(area, pos + 4);
        let value_size = le32(area, pos + 8) as usize;
        let name_end = pos + 16 + name_len;
        // The ACL entries (indexes 2 and 3) have empty names.
        if name_end > area.len() || (name_len == 0 && !matches!(index, 2 | 3 | 8)) {
            return Err(format!("entry at offset {pos}: name of {name_len} bytes does not fit"));
        }
        let name = &area[pos + 16..name_end];
        if value_inum != 0 {
            return Err(format!("entry at offset {pos} keeps its value in inode {value_inum} (ea_inode is not supported)"));
        }
        let vstart = value_base.checked_add(value_offs).ok_or("value offset overflows")?;
        let vend = vstart.checked_add(value_size).ok_or("value size overflows")?;
        if value_size > 0 && vend > area.len() {
            return Err(format!(
                "entry at offset {pos}: value at {vstart} of {value_size} bytes is outside the area"
            ));
        }
        let value = if value_size == 0 { Vec::new() } else { area[vstart..vend].to_vec() };
        out.push(RawXattr { index, name: name.to_vec(), value });
        pos = name_end.next_multiple_of(4);
    }
}

/// Splits a full attribute name into (name index, stored suffix); `None` for a namespace ext4
/// cannot store.
pub fn split_name(full: &[u8]) -> Option<(u8, &[u8])> {
    for (idx, whole) in [(2u8, &b"system.posix_acl_access"[..]), (3, b"system.posix_acl_default"), (8, b"system.richacl")] {
        if full == whole {
            return Some((idx, &[]));
        }
    }
    for (idx, p) in [(1u8, &b"user."[..]), (4, b"trusted."), (6, b"security."), (7, b"system.")] {
        if let Some(rest) = full.strip_prefix(p) {
            if !rest.is_empty() && rest.len() <= 255 {
                return Some((idx, rest));
            }
        }
    }
    None
}

/// Writes entries into an area: entries from `entries_at`, values packed down from the end
/// of the area, value offsets counted from `value_base`. Returns the entry hashes, or `None`
/// if they do not fit.
pub fn encode(area: &mut [u8], entries_at: usize, value_base: usize, xs: &[RawXattr]) -> Option<Vec<u32>> {
    let mut hashes = Vec::with_capacity(xs.len());
    let mut pos = entries_at;
    let mut vend = area.len();
    for x in xs {
        let elen = (16 + x.name.len()).next_multiple_of(4);
        let vlen = x.value.len().next_multiple_of(4);
        if pos + elen + 4 > vend.checked_sub(vlen)? {
            return None;
        }
        let voff = if x.value.is_empty() { 0 } else { vend - vlen };
        if !x.value.is_empty() {
            area[voff..voff + vlen].fill(0);
            area[voff..voff + x.value.len()].copy_from_slice(&x.value);
            vend = voff;
        }
        let h = super::update::xattr_entry_hash(&x.name, &x.value);
        area[pos] = x.name.len() as u8;
        area[pos + 1] = x.index;
        let rel = if x.value.is_empty() { 0 } else { voff - value_base };
        area[pos + 2..pos + 4].copy_from_slice(&(rel as u16).to_le_bytes());
        area[pos + 4..pos + 8].copy_from_slice(&0u32.to_le_bytes());
        area[pos + 8..pos + 12].copy_from_slice(&(x.value.len() as u32).to_le_bytes());
        area[pos + 12..pos + 16].copy_from_slice(&h.to_le_bytes());
        area[pos + 16..pos + elen].fill(0);
        area[pos + 16..pos + 16 + x.name.len()].copy_from_slice(&x.name);
        hashes.push(h);
        pos += elen;
    }
    if pos + 4 > vend {
        return None;
    }
    area[pos..vend].fill(0);
    Some(hashes)
}

/// The xattr form of a POSIX ACL (version 2, 8-byte entries) to ext4's compact form.
pub fn xattr_to_acl(v: &[u8]) -> Result<Vec<u8>, String> {
    if v.len() < 4 || le32(v, 0) != 2 || (v.len() - 4) % 8 != 0 {
        return Err("ACL with a bad header".into());
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks(8) {
        let tag = le16(e, 0);
        let perm = le16(e, 2);
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        match tag {
            1 | 4 | 0x10 | 0x20 => {}
            2 | 8 => out.extend_from_slice(&le32(e, 4).to_le_bytes()),
            _ => return Err(format!("ACL entry with unknown tag {tag}")),
        }
    }
    Ok(out)
}

/// In-inode attributes: `area` is the inode's bytes after `128 + i_extra_isize`.
pub fn parse_inode(area: &[u8]) -> Result<Vec<Xattr>, String> {
    if area.len() < 4 || le32(area, 0) != MAGIC {
        return Ok(Vec::new());
    }
    parse(&area[4..], 0, 0)
}

/// In-inode attributes as stored.
pub fn parse_inode_raw(area: &[u8]) -> Result<Vec<RawXattr>, String> {
    if area.len() < 4 || le32(area, 0) != MAGIC {
        return Ok(Vec::new());
    }
    parse_raw(&area[4..], 0, 0)
}

/// An EA block: checks the header (and the checksum when `csum_seed` is given, with the
/// block number), then parses it.
pub fn parse_block(block: &[u8], blk: u64, csum_seed: Option<u32>) -> Result<Vec<Xattr>, String> {
    if block.len() < BLOCK_HEADER + 4 {
        return Err("EA block too small".into());
    }
    let magic = le32(block, 0);
    let nblocks = le32(block, 8);
    if magic != MAGIC || nblocks != 1 {
        return Err(format!("EA block header: magic 0x{magic:08x}, h_blocks {nblocks}"));
    }
    if let Some(seed) = csum_seed {
        let stored = le32(block, 16);
        let c = csum::raw(seed, &blk.to_le_bytes());
        let c = csum::raw(c, &block[..16]);
        let c = csum::raw(c, &[0; 4]);
        let computed = csum::raw(c, &block[20..]);
        if stored != computed {
            return Err(format!("EA block checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"));
        }
    }
    parse(block, BLOCK_HEADER, 0)
}

/// An EA block's entries as stored (header and checksum checked as [`parse_block`] does).
pub fn parse_block_raw(block: &[u8], blk: u64, csum_seed: Option<u32>) -> Result<Vec<RawXattr>, String> {
    parse_block(block, blk, csum_seed)?;
    parse_raw(block, BLOCK_HEADER, 0)
}

/// ext4's compact ACL (version 1: 4-byte entries for the owner/group/mask/other, 8-byte with
/// an id for named users and groups) to the xattr form (version 2, 8-byte entries).
fn acl_to_xattr(v: &[u8]) -> Result<Vec<u8>, String> {
    const UNDEFINED_ID: u32 = u32::MAX;
    if v.len() < 4 || le32(v, 0) != 1 {
        return Err("ACL with a bad header".into());
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < v.len() {
        if pos + 4 > v.len() {
            return Err("truncated ACL entry".into());
        }
        let tag = le16(v, pos);
        let perm = le16(v, pos + 2);
        let id = match tag {
            1 | 4 | 0x10 | 0x20 => {
                pos += 4;
                UNDEFINED_ID
            }
            2 | 8 => {
                if pos + 8 > v.len() {
                    return Err("truncated ACL entry".into());
                }
                let id = le32(v, pos + 4);
                pos += 8;
                id
            }
            _ => return Err(format!("ACL entry with unknown tag {tag}")),
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(area: &mut Vec<u8>, index: u8, name: &[u8], voff: u16, vsize: u32) {
        area.push(name.len() as u8);
        area.push(index);
        area.extend_from_slice(&voff.to_le_bytes());
        area.extend_from_slice(&0u32.to_le_bytes());
        area.extend_from_slice(&vsize.to_le_bytes());
        area.extend_from_slice(&0u32.to_le_bytes());
        area.extend_from_slice(name);
        while area.len() & 3 != 0 {
            area.push(0);
        }
    }

    #[test]
    fn in_inode_entries() {
        let mut a = MAGIC.to_le_bytes().to_vec();
        entry(&mut a, 1, b"comment", 60, 5);
        a.extend_from_slice(&[0; 4]);
        a.resize(64 + 4, 0);
        a[64..].copy_from_slice(b"hell");
        a.push(b'o');
        let x = parse_inode(&a).unwrap();
        assert_eq!(x, vec![Xattr { name: b"user.comment".to_vec(), value: b"hello".to_vec() }]);
    }

    #[test]
    fn values_past_the_end_are_errors() {
        let mut a = MAGIC.to_le_bytes().to_vec();
        entry(&mut a, 1, b"x", 60000, 5);
        a.extend_from_slice(&[0; 4]);
        assert!(parse_inode(&a).is_err());
        let mut a = MAGIC.to_le_bytes().to_vec();
        entry(&mut a, 1, b"x", 4, u32::MAX);
        a.extend_from_slice(&[0; 4]);
        assert!(parse_inode(&a).is_err());
        // No terminator.
        let mut a = MAGIC.to_le_bytes().to_vec();
        entry(&mut a, 1, b"x", 0, 0);
        assert!(parse_inode(&a).is_err());
    }

    #[test]
    fn acl_conversion() {
        let mut v = 1u32.to_le_bytes().to_vec();
        v.extend_from_slice(&[1, 0, 6, 0]);
        v.extend_from_slice(&[2, 0, 4, 0, 0xe8, 3, 0, 0]);
        v.extend_from_slice(&[0x20, 0, 0, 0]);
        let x = acl_to_xattr(&v).unwrap();
        assert_eq!(x.len(), 4 + 3 * 8);
        assert_eq!(&x[0..4], &2u32.to_le_bytes());
        assert_eq!(&x[4..12], &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&x[12..20], &[2, 0, 4, 0, 0xe8, 3, 0, 0]);
    }
}
