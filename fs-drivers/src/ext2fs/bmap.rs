//! Logical to physical block mapping: the classic direct/indirect block map and ext4 extent
//! trees. A lookup answers with a whole run (contiguous physical blocks, or a hole), so reads
//! issue one device request per run; the last leaf (extent leaf or indirect block) is cached
//! per vnode so a sequential read does not walk the tree again for every request.

use super::csum;
use super::inode::{flags, Inode};
use super::{le16, le32, Ext2Fs};
use std::sync::Arc;
use vfs_faction::bufcache::Buf;
use vfs_faction::{Errno, KResult};

/// A run of logical blocks: `len` blocks starting at physical `phys`, or a hole (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub len: u64,
    pub phys: Option<u64>,
}

/// Extent tree header magic.
const EXT_MAGIC: u16 = 0xF30A;
/// Deepest extent tree the kernel builds (and we accept).
const EXT_MAX_DEPTH: u16 = 5;
/// Longest initialised extent; longer lengths mark unwritten extents.
const EXT_INIT_MAX_LEN: u32 = 32768;

#[derive(Clone, Copy, Debug)]
struct Extent {
    lblk: u64,
    len: u64,
    start: u64,
    unwritten: bool,
}

/// A cached extent leaf: the extents that cover logical blocks `lo..hi`.
#[derive(Clone, Debug)]
struct ExtLeaf {
    lo: u64,
    hi: u64,
    extents: Vec<Extent>,
}

/// A cached leaf indirect block covering logical blocks `first..first + ptrs per block`.
struct IndLeaf {
    first: u64,
    buf: Arc<Buf>,
}

/// Per-vnode mapping cache.
#[derive(Default)]
pub struct MapCache {
    ext: Option<ExtLeaf>,
    ind: Option<IndLeaf>,
}

struct Header {
    entries: usize,
    max: usize,
    depth: u16,
}

fn header(fs: &Ext2Fs, ino: u32, node: &[u8], what: &str) -> KResult<Header> {
    let magic = le16(node, 0);
    let entries = usize::from(le16(node, 2));
    let max = usize::from(le16(node, 4));
    let depth = le16(node, 6);
    let cap = node.len().saturating_sub(12) / 12;
    if magic != EXT_MAGIC || entries > max || max > cap || max == 0 || depth > EXT_MAX_DEPTH {
        fs.corrupt(ino, format!(
            "bad extent header in {what}: magic 0x{magic:04x}, entries {entries}, max {max} (room for {cap}), depth {depth}"
        ));
        return Err(Errno::EIO);
    }
    Ok(Header { entries, max, depth })
}

fn ext_lookup(fs: &Ext2Fs, ino: u32, seed: u32, inode: &Inode, lblk: u64) -> KResult<ExtLeaf> {
    let root = header(fs, ino, &inode.block, "the inode")?;
    let mut lo = 0u64;
    let mut hi = 1u64 << 32;
    let mut owned: Option<Arc<Buf>> = None;
    let mut want_depth = root.depth;
    let mut where_ = String::from("the inode");
    loop {
        let node: &[u8] = match &owned {
            Some(b) => b,
            None => &inode.block,
        };
        let h = header(fs, ino, node, &where_)?;
        if h.depth != want_depth {
            fs.corrupt(ino, format!(
                "extent node {where_} has depth {}, expected {want_depth} (a loop or misplaced node)",
                h.depth
            ));
            return Err(Errno::EIO);
        }
        if h.depth == 0 {
            let mut extents = Vec::with_capacity(h.entries);
            let mut prev_end = lo;
            for i in 0..h.entries {
                let e = &node[12 + 12 * i..24 + 12 * i];
                let eb = u64::from(le32(e, 0));
                let raw_len = u32::from(le16(e, 4));
                let (len, unwritten) = if raw_len > EXT_INIT_MAX_LEN {
                    (raw_len - EXT_INIT_MAX_LEN, true)
                } else {
                    (raw_len, false)
                };
                let start = u64::from(le32(e, 8)) | u64::from(le16(e, 6)) << 32;
                let len = u64::from(len);
                if len == 0
                    || eb < prev_end
                    || eb + len > hi
                    || !fs.blocks_in_range(start, len)
                {
                    fs.corrupt(ino, format!(
                        "extent {i} in {where_}: logical {eb} +{len} -> physical {start} is invalid (overlap, out of order or outside the file system)"
                    ));
                    return Err(Errno::EIO);
                }
                prev_end = eb + len;
                extents.push(Extent { lblk: eb, len, start, unwritten });
            }
            return Ok(ExtLeaf { lo, hi, extents });
        }
        if h.entries == 0 {
            return Ok(ExtLeaf { lo, hi, extents: Vec::new() });
        }
        // Index node: the last entry starting at or before lblk.
        let idx = |i: usize| &node[12 + 12 * i..24 + 12 * i];
        let mut chosen = None;
        let mut prev = None;
        for i in 0..h.entries {
            let b = u64::from(le32(idx(i), 0));
            if prev.is_some_and(|p| b <= p) {
                fs.corrupt(ino, format!("extent index {i} in {where_} is out of order"));
                return Err(Errno::EIO);
            }
            prev = Some(b);
            if b <= lblk {
                chosen = Some(i);
            }
        }
        let Some(i) = chosen else {
            // Before the first index entry: a hole.
            let first = u64::from(le32(idx(0), 0));
            return Ok(ExtLeaf { lo, hi: first.min(hi), extents: Vec::new() });
        };
        let e = idx(i);
        lo = lo.max(u64::from(le32(e, 0)));
        if i + 1 < h.entries {
            hi = hi.min(u64::from(le32(idx(i + 1), 0)));
        }
        let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
        if !fs.blocks_in_range(child, 1) {
            fs.corrupt(ino, format!("extent index in {where_} points to block {child}, outside the file system"));
            return Err(Errno::EIO);
        }
        let buf = fs.bread(child)?;
        where_ = format!("block {child}");
        if fs.sb.metadata_csum() {
            let ch = header(fs, ino, &buf, &where_)?;
            let tail = 12 + 12 * ch.max;
            if tail + 4 > buf.len() {
                fs.corrupt(ino, format!("extent block {child} has no room for its checksum"));
                return Err(Errno::EIO);
            }
            let stored = le32(&buf, tail);
            let computed = csum::raw(seed, &buf[..tail]);
            if stored != computed {
                fs.corrupt(ino, format!(
                    "extent block {child} checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
                ));
                return Err(Errno::EIO);
            }
        }
        want_depth = h.depth - 1;
        owned = Some(buf);
    }
}

fn ext_run(leaf: &ExtLeaf, lblk: u64, max: u64) -> Run {
    // Extents are sorted and disjoint (checked when the leaf was read).
    let pos = leaf.extents.partition_point(|e| e.lblk + e.len <= lblk);
    match leaf.extents.get(pos) {
        Some(e) if e.lblk <= lblk => {
            let off = lblk - e.lblk;
            let len = (e.len - off).min(max);
            Run { len, phys: (!e.unwritten).then_some(e.start + off) }
        }
        Some(e) => Run { len: (e.lblk - lblk).min(max), phys: None },
        None => Run { len: leaf.hi.saturating_sub(lblk).clamp(1, max.max(1)).min(max), phys: None },
    }
}

/// Maps logical block `lblk` of inode `ino`, answering with a run of at most `max` (≥ 1)
/// blocks.
pub fn map(fs: &Ext2Fs, ino: u32, seed: u32, inode: &Inode, cache: &mut MapCache, lblk: u64, max: u64) -> KResult<Run> {
    let max = max.max(1);
    if inode.flags & flags::EXTENTS != 0 {
        if lblk >= 1 << 32 {
            return Ok(Run { len: max, phys: None });
        }
        if let Some(leaf) = &cache.ext {
            if leaf.lo <= lblk && lblk < leaf.hi {
                return Ok(ext_run(leaf, lblk, max));
            }
        }
        let leaf = ext_lookup(fs, ino, seed, inode, lblk)?;
        let r = ext_run(&leaf, lblk, max);
        cache.ext = Some(leaf);
        return Ok(r);
    }
    ind_map(fs, ino, inode, cache, lblk, max)
}

/// A run inside a table of 32-bit block pointers starting at `idx`.
fn ptr_run(fs: &Ext2Fs, ino: u32, table: &[u8], idx: usize, count: usize, max: u64, what: &str) -> KResult<Run> {
    let first = le32(table, idx * 4);
    let limit = (count - idx).min(usize::try_from(max).unwrap_or(usize::MAX));
    if first == 0 {
        let mut n = 1;
        while n < limit && le32(table, (idx + n) * 4) == 0 {
            n += 1;
        }
        return Ok(Run { len: n as u64, phys: None });
    }
    let first = u64::from(first);
    if !fs.blocks_in_range(first, 1) {
        fs.corrupt(ino, format!("block pointer {idx} in {what} is {first}, outside the file system"));
        return Err(Errno::EIO);
    }
    let mut n = 1;
    while n < limit && u64::from(le32(table, (idx + n) * 4)) == first + n as u64 {
        n += 1;
    }
    Ok(Run { len: n as u64, phys: Some(first) })
}

fn ind_map(fs: &Ext2Fs, ino: u32, inode: &Inode, cache: &mut MapCache, lblk: u64, max: u64) -> KResult<Run> {
    const NDIR: u64 = 12;
    let p = u64::from(fs.sb.block_size / 4);
    if lblk < NDIR {
        return ptr_run(fs, ino, &inode.block, lblk as usize, NDIR as usize, max, "the inode");
    }
    if let Some(leaf) = &cache.ind {
        if leaf.first <= lblk && lblk < leaf.first + p {
            return ptr_run(fs, ino, &leaf.buf, (lblk - leaf.first) as usize, p as usize, max, "an indirect block");
        }
    }
    // Which tree (single, double, triple) and the index within it.
    let mut rel = lblk - NDIR;
    let mut span = p; // blocks covered by the tree at this level
    let mut level = 1u32;
    while rel >= span {
        rel -= span;
        level += 1;
        if level > 3 {
            // Past what the block map can address: nothing is there.
            return Ok(Run { len: max, phys: None });
        }
        span = span.saturating_mul(p);
    }
    let mut ptr = u64::from(inode.block_word(11 + level as usize));
    let mut what = String::from("the inode");
    let mut sub = span; // blocks under `ptr`
    loop {
        if ptr == 0 {
            // A hole as large as the rest of this subtree.
            let left = sub - rel % sub.max(1);
            return Ok(Run { len: left.min(max), phys: None });
        }
        if !fs.blocks_in_range(ptr, 1) {
            fs.corrupt(ino, format!("indirect pointer in {what} is {ptr}, outside the file system"));
            return Err(Errno::EIO);
        }
        let buf = fs.bread(ptr)?;
        sub /= p;
        let i = (rel / sub) as usize;
        if sub == 1 {
            let r = ptr_run(fs, ino, &buf, i, p as usize, max, &format!("indirect block {ptr}"))?;
            cache.ind = Some(IndLeaf { first: lblk - i as u64, buf });
            return Ok(r);
        }
        rel %= sub;
        what = format!("indirect block {ptr}");
        ptr = u64::from(le32(&buf, i * 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_run_holes_and_unwritten() {
        let leaf = ExtLeaf {
            lo: 0,
            hi: 100,
            extents: vec![
                Extent { lblk: 2, len: 3, start: 50, unwritten: false },
                Extent { lblk: 10, len: 5, start: 70, unwritten: true },
            ],
        };
        assert_eq!(ext_run(&leaf, 0, 10), Run { len: 2, phys: None });
        assert_eq!(ext_run(&leaf, 3, 10), Run { len: 2, phys: Some(51) });
        assert_eq!(ext_run(&leaf, 3, 1), Run { len: 1, phys: Some(51) });
        assert_eq!(ext_run(&leaf, 5, 100), Run { len: 5, phys: None });
        assert_eq!(ext_run(&leaf, 11, 100), Run { len: 4, phys: None });
        assert_eq!(ext_run(&leaf, 20, 1000), Run { len: 80, phys: None });
    }
}
