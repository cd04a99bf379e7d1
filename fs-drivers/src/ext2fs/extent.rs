//! The write side of ext4 extent trees.
//!
//! A file's extents are loaded once into a sorted list ([`ExtTree`], kept in the vnode while
//! the file is written) and edited there: insert with merging of neighbours, removal of a
//! range (splitting an extent that straddles it), conversion of unwritten extents. The tree
//! is then stored back bottom-up: up to four extents live in the inode, more go to leaf
//! blocks of `(block size - 12) / 12` extents, and index levels are added until the root
//! fits in the inode again — the tree grows (and shrinks) in depth as needed. The blocks the
//! tree already had are reused in order, so a changed tree rewrites only the nodes whose
//! contents changed; missing ones are allocated near the file, surplus ones freed.

use super::update;
use super::{le16, le32, Ext2Fs};
use vfs_faction::{Errno, KResult};

/// Extent tree header magic.
pub(crate) const MAGIC: u16 = 0xF30A;
/// Longest initialised extent.
pub(crate) const MAX_INIT: u64 = 32768;
/// Longest unwritten extent.
pub(crate) const MAX_UNWRITTEN: u64 = 32767;
/// Deepest tree we read.
const MAX_DEPTH: u16 = 5;

/// One extent: `len` logical blocks from `lblk` at physical `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ext {
    pub lblk: u64,
    pub len: u64,
    pub start: u64,
    pub unwritten: bool,
}

impl Ext {
    fn end(&self) -> u64 {
        self.lblk + self.len
    }
    fn max_len(&self) -> u64 {
        if self.unwritten {
            MAX_UNWRITTEN
        } else {
            MAX_INIT
        }
    }
}

/// A file's extents and the tree blocks (below the inode) that hold them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExtTree {
    pub exts: Vec<Ext>,
    pub blocks: Vec<u64>,
}

/// What a logical block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Hole,
    Mapped(u64),
    Unwritten(u64),
}

/// An empty in-inode root (depth 0, room for four extents).
pub(crate) fn empty_root() -> [u8; 60] {
    let mut b = [0u8; 60];
    b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&4u16.to_le_bytes());
    b
}

impl ExtTree {
    /// What `lblk` is and for how many blocks (at most `max`) that stays so.
    pub fn lookup(&self, lblk: u64, max: u64) -> (Slot, u64) {
        let max = max.max(1);
        let i = self.exts.partition_point(|e| e.end() <= lblk);
        match self.exts.get(i) {
            Some(e) if e.lblk <= lblk => {
                let off = lblk - e.lblk;
                let n = (e.len - off).min(max);
                let p = e.start + off;
                (if e.unwritten { Slot::Unwritten(p) } else { Slot::Mapped(p) }, n)
            }
            Some(e) => (Slot::Hole, (e.lblk - lblk).min(max)),
            None => (Slot::Hole, max),
        }
    }

    /// The physical block just after the last mapped block before `lblk` (an allocation goal).
    pub fn goal_before(&self, lblk: u64) -> Option<u64> {
        let i = self.exts.partition_point(|e| e.end() <= lblk);
        let e = if i < self.exts.len() && self.exts[i].lblk <= lblk { Some(&self.exts[i]) } else { i.checked_sub(1).map(|j| &self.exts[j]) }?;
        Some(e.start + (lblk.min(e.end()) - e.lblk))
    }

    /// Inserts an extent over a range that is a hole, merging with neighbours.
    pub fn insert(&mut self, e: Ext) {
        let i = self.exts.partition_point(|x| x.lblk < e.lblk);
        self.exts.insert(i, e);
        self.merge_around(i);
    }

    fn mergeable(a: &Ext, b: &Ext) -> bool {
        a.end() == b.lblk && a.start + a.len == b.start && a.unwritten == b.unwritten && a.len + b.len <= a.max_len()
    }

    fn merge_around(&mut self, i: usize) {
        let mut i = i;
        if i > 0 && Self::mergeable(&self.exts[i - 1], &self.exts[i]) {
            self.exts[i - 1].len += self.exts[i].len;
            self.exts.remove(i);
            i -= 1;
        }
        if i + 1 < self.exts.len() && Self::mergeable(&self.exts[i], &self.exts[i + 1]) {
            self.exts[i].len += self.exts[i + 1].len;
            self.exts.remove(i + 1);
        }
    }

    /// Removes the mapping of `a..b`; returns the physical runs that were mapped there.
    pub fn remove(&mut self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut freed = Vec::new();
        let mut out = Vec::with_capacity(self.exts.len() + 1);
        for e in self.exts.drain(..) {
            if e.end() <= a || e.lblk >= b {
                out.push(e);
                continue;
            }
            if e.lblk < a {
                out.push(Ext { len: a - e.lblk, ..e });
            }
            let lo = e.lblk.max(a);
            let hi = e.end().min(b);
            freed.push((e.start + (lo - e.lblk), hi - lo));
            if e.end() > b {
                out.push(Ext { lblk: b, len: e.end() - b, start: e.start + (b - e.lblk), unwritten: e.unwritten });
            }
        }
        self.exts = out;
        freed
    }

    /// Marks `a..b` written where it is unwritten (after its data was stored).
    pub fn mark_written(&mut self, a: u64, b: u64) {
        let mut out = Vec::with_capacity(self.exts.len() + 2);
        for e in self.exts.drain(..) {
            if !e.unwritten || e.end() <= a || e.lblk >= b {
                out.push(e);
                continue;
            }
            let lo = e.lblk.max(a);
            let hi = e.end().min(b);
            if e.lblk < lo {
                out.push(Ext { len: lo - e.lblk, ..e });
            }
            out.push(Ext { lblk: lo, len: hi - lo, start: e.start + (lo - e.lblk), unwritten: false });
            if e.end() > hi {
                out.push(Ext { lblk: hi, len: e.end() - hi, start: e.start + (hi - e.lblk), unwritten: true });
            }
        }
        // Merge what became adjacent.
        let mut merged: Vec<Ext> = Vec::with_capacity(out.len());
        for e in out {
            match merged.last_mut() {
                Some(l) if Self::mergeable(l, &e) => l.len += e.len,
                _ => merged.push(e),
            }
        }
        self.exts = merged;
    }
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
    put32(b, 8, 0);
}

fn put_ext(b: &mut [u8], i: usize, e: &Ext) {
    let o = 12 + 12 * i;
    put32(b, o, e.lblk as u32);
    let len = if e.unwritten { e.len + MAX_INIT } else { e.len };
    put16(b, o + 4, len as u16);
    put16(b, o + 6, (e.start >> 32) as u16);
    put32(b, o + 8, e.start as u32);
}

fn put_idx(b: &mut [u8], i: usize, lblk: u64, child: u64) {
    let o = 12 + 12 * i;
    put32(b, o, lblk as u32);
    put32(b, o + 4, child as u32);
    put16(b, o + 8, (child >> 32) as u16);
    put16(b, o + 10, 0);
}

impl Ext2Fs {
    /// Loads the whole extent tree of inode `ino` (root in `root`), checking every node.
    pub(crate) fn ext_load(&self, ino: u32, seed: u32, root: &[u8; 60]) -> KResult<ExtTree> {
        let mut t = ExtTree::default();
        self.ext_walk(ino, seed, root, None, 0, 1 << 32, None, &mut t)?;
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn ext_walk(
        &self,
        ino: u32,
        seed: u32,
        node: &[u8],
        blk: Option<u64>,
        lo: u64,
        hi: u64,
        want_depth: Option<u16>,
        t: &mut ExtTree,
    ) -> KResult<()> {
        let what = || blk.map_or("the inode".to_string(), |b| format!("extent block {b}"));
        let magic = le16(node, 0);
        let entries = usize::from(le16(node, 2));
        let max = usize::from(le16(node, 4));
        let depth = le16(node, 6);
        let cap = node.len().saturating_sub(12) / 12;
        if magic != MAGIC || entries > max || max > cap || max == 0 || depth > MAX_DEPTH || want_depth.is_some_and(|d| d != depth) {
            self.corrupt(ino, format!("bad extent header in {}: magic 0x{magic:04x}, entries {entries}, max {max}, depth {depth}", what()));
            return Err(Errno::EIO);
        }
        if let Some(b) = blk {
            if self.sb.metadata_csum() {
                let tail = 12 + 12 * max;
                if tail + 4 > node.len() || le32(node, tail) != super::csum::raw(seed, &node[..tail]) {
                    self.corrupt(ino, format!("extent block {b}: checksum mismatch"));
                    return Err(Errno::EIO);
                }
            }
            if t.blocks.len() > 1 << 20 {
                self.corrupt(ino, "extent tree too large".into());
                return Err(Errno::EIO);
            }
            t.blocks.push(b);
        }
        let mut prev = lo;
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let l = u64::from(le32(e, 0));
            if depth == 0 {
                let raw_len = u64::from(le16(e, 4));
                let (len, unwritten) = if raw_len > MAX_INIT { (raw_len - MAX_INIT, true) } else { (raw_len, false) };
                let start = u64::from(le32(e, 8)) | u64::from(le16(e, 6)) << 32;
                if len == 0 || l < prev || l + len > hi || !self.blocks_in_range(start, len) || self.zones_overlap(start, len) {
                    self.corrupt(ino, format!("extent {i} in {}: {l}+{len} -> {start} is invalid", what()));
                    return Err(Errno::EIO);
                }
                prev = l + len;
                t.exts.push(Ext { lblk: l, len, start, unwritten });
            } else {
                let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                let next = if i + 1 < entries { u64::from(le32(&node[24 + 12 * i..], 0)) } else { hi };
                if l < prev || next <= l && i + 1 < entries || !self.blocks_in_range(child, 1) || self.zones_overlap(child, 1) {
                    self.corrupt(ino, format!("extent index {i} in {} is invalid", what()));
                    return Err(Errno::EIO);
                }
                let buf = self.dev.bread(child)?;
                self.ext_walk(ino, seed, &buf, Some(child), l.max(lo), next.min(hi), Some(depth - 1), t)?;
                prev = l;
                if let Some(last) = t.exts.last() {
                    prev = prev.max(last.end());
                }
            }
        }
        Ok(())
    }

    /// Stores `t` as the extent tree of inode `ino` (its root goes to `root`), reusing the
    /// tree's blocks. Returns the change in tree blocks (allocated minus freed).
    pub(crate) fn ext_store(&self, ino: u32, seed: u32, root: &mut [u8; 60], t: &mut ExtTree, goal: u64) -> KResult<i64> {
        let bs = self.sb.block_size as usize;
        let cap = (bs - 12) / 12;
        // Level 0: leaves (each: first logical block, extents).
        let n = t.exts.len();
        if n <= 4 {
            let mut r = [0u8; 60];
            header(&mut r, n, 4, 0);
            for (i, e) in t.exts.iter().enumerate() {
                put_ext(&mut r, i, e);
            }
            *root = r;
            let old = std::mem::take(&mut t.blocks);
            self.free_block_list(&old)?;
            return Ok(-(old.len() as i64));
        }
        // Plan the levels: counts of nodes per level from the leaves up.
        let mut levels: Vec<usize> = vec![n.div_ceil(cap)];
        while *levels.last().unwrap_or(&0) > 4 {
            let l = *levels.last().unwrap_or(&0);
            levels.push(l.div_ceil(cap));
        }
        let need: usize = levels.iter().sum();
        let mut blocks = t.blocks.clone();
        let mut delta: i64 = 0;
        while blocks.len() < need {
            let g = blocks.last().map_or(goal, |b| b + 1);
            match self.alloc_blocks(g, (need - blocks.len()) as u64, u64::MAX) {
                Ok((s, l)) => {
                    blocks.extend(s..s + l);
                    delta += l as i64;
                }
                Err(e) => {
                    let extra: Vec<u64> = blocks[t.blocks.len()..].to_vec();
                    let _ = self.free_block_list(&extra);
                    return Err(e);
                }
            }
        }
        let surplus = blocks.split_off(need);
        // Fill level by level; `keys` are the first logical blocks of the nodes below.
        let mut next = 0usize;
        let mut keys: Vec<(u64, u64)> = Vec::new(); // (first lblk, block)
        for (depth, &count) in levels.iter().enumerate() {
            let mut new_keys = Vec::with_capacity(count);
            let items = if depth == 0 { n } else { keys.len() };
            for k in 0..count {
                let lo = items * k / count;
                let hi = items * (k + 1) / count;
                let blk = blocks[next];
                next += 1;
                let mut b = vec![0u8; bs];
                header(&mut b, hi - lo, cap, depth as u16);
                for (i, j) in (lo..hi).enumerate() {
                    if depth == 0 {
                        put_ext(&mut b, i, &t.exts[j]);
                    } else {
                        put_idx(&mut b, i, keys[j].0, keys[j].1);
                    }
                }
                if self.sb.metadata_csum() {
                    update::set_extent_csum(&mut b, seed);
                }
                let first = if depth == 0 { t.exts[lo].lblk } else { keys[lo].0 };
                let same = self.dev.bread(blk).map(|old| old[..] == b[..]).unwrap_or(false);
                if !same {
                    self.dev.bwrite(blk, b)?;
                }
                new_keys.push((first, blk));
            }
            keys = new_keys;
        }
        let mut r = [0u8; 60];
        header(&mut r, keys.len(), 4, levels.len() as u16);
        for (i, (l, b)) in keys.iter().enumerate() {
            put_idx(&mut r, i, *l, *b);
        }
        *root = r;
        self.free_block_list(&surplus)?;
        delta -= surplus.len() as i64;
        t.blocks = blocks;
        let _ = ino;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(lblk: u64, len: u64, start: u64) -> Ext {
        Ext { lblk, len, start, unwritten: false }
    }

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut t = ExtTree::default();
        t.insert(e(0, 4, 100));
        t.insert(e(4, 4, 104));
        assert_eq!(t.exts, vec![e(0, 8, 100)]);
        t.insert(e(10, 2, 200));
        assert_eq!(t.lookup(9, 10), (Slot::Hole, 1));
        let freed = t.remove(2, 11);
        assert_eq!(freed, vec![(102, 6), (200, 1)]);
        assert_eq!(t.exts, vec![e(0, 2, 100), e(11, 1, 201)]);
        assert_eq!(t.goal_before(5), Some(102));
    }

    #[test]
    fn unwritten_conversion_splits_then_merges() {
        let mut t = ExtTree::default();
        t.insert(Ext { lblk: 0, len: 10, start: 50, unwritten: true });
        t.mark_written(3, 5);
        assert_eq!(t.exts.len(), 3);
        assert_eq!(t.lookup(3, 10), (Slot::Mapped(53), 2));
        assert_eq!(t.lookup(5, 10), (Slot::Unwritten(55), 5));
        t.mark_written(0, 10);
        assert_eq!(t.exts, vec![e(0, 10, 50)]);
    }
}
