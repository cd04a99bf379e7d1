//! Pass 1: every inode: mode, flags, dtime, its block map or extent tree (pointers in range,
//! tree structure, checksums), size against blocks, i_blocks, extended attributes. Blocks in
//! use are marked; a block marked twice is a duplicate, sorted out in passes 1b-1d (who
//! claims it; cloning).

use super::{kind, put16, put32, Checker, DirBlock, DirInfo, EaBlock, Level, Reporter, JOURNAL_INO, RESIZE_INO, ROOT_INO};
use crate::ext2fs::inode::{self, field as ifield, flags, Inode, InodeError};
use crate::ext2fs::superblock::{incompat, ro_compat, Superblock};
use crate::ext2fs::{csum, update, xattr};
use crate::ext2fs::{le16, le32};
use std::collections::{BTreeMap, HashMap};
use vfs_faction::{CachedDev, FileType, KResult};

const PH: &str = "Pass 1: inodes, blocks and sizes";
const PH1B: &str = "Pass 1B: blocks claimed more than once";
const EXT_MAGIC: u16 = 0xF30A;
const EXT_INIT_MAX_LEN: u32 = 32768;
/// e2fsck gives up on an inode after this many illegal block pointers.
const MAX_BAD_POINTERS: usize = 12;

/// Where a block pointer lives: in the inode's `i_block` or in a block, at slot `idx` (a
/// 32-bit word for block maps, a 12-byte entry for extent nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum At {
    Inode(usize),
    Block(u64, usize),
}

/// What a walk of an inode's blocks meets.
#[derive(Clone, Debug)]
pub(super) enum Ev {
    /// `len` data blocks from logical `lblk` at physical `pblk`.
    Data { lblk: u64, pblk: u64, len: u64, init: bool },
    /// An indirect block or extent tree node.
    Meta { pblk: u64 },
    /// A pointer that cannot be right (not followed).
    Bad { msg: String },
    /// An extent block whose checksum does not match (followed).
    Csum { pblk: u64 },
}

pub(super) struct Walker<'w> {
    pub dev: &'w CachedDev,
    pub sb: &'w Superblock,
    pub seed: u32,
    /// Blocks visited so far; a walk never visits more than the file system has.
    budget: u64,
    bad: usize,
}

/// Why a walk stopped early: the whole mapping is unusable.
type Fatal = String;

impl<'w> Walker<'w> {
    pub fn new(dev: &'w CachedDev, sb: &'w Superblock, seed: u32) -> Walker<'w> {
        Walker { dev, sb, seed, budget: sb.blocks_count, bad: 0 }
    }

    fn in_range(&self, b: u64, n: u64) -> bool {
        b >= u64::from(self.sb.first_data_block).max(1) && b.checked_add(n).is_some_and(|e| e <= self.sb.blocks_count)
    }

    fn spend(&mut self, n: u64) -> Result<(), Fatal> {
        if n > self.budget {
            return Err("maps more blocks than the file system has (a loop?)".into());
        }
        self.budget -= n;
        Ok(())
    }

    fn bad(&mut self, f: &mut dyn FnMut(Ev, At), at: At, msg: String) -> Result<(), Fatal> {
        self.bad += 1;
        f(Ev::Bad { msg }, at);
        if self.bad > MAX_BAD_POINTERS {
            return Err(format!("more than {MAX_BAD_POINTERS} illegal block pointers"));
        }
        Ok(())
    }

    /// Walks the mapping in `i_block` (extents when `extents`).
    pub fn walk(&mut self, block: &[u8], extents: bool, f: &mut dyn FnMut(Ev, At)) -> Result<(), Fatal> {
        if extents {
            let h = ext_header(block).map_err(|m| format!("extent header in the inode: {m}"))?;
            self.ext_node(block, None, h, 0, 1 << 32, f)
        } else {
            let p = u64::from(self.sb.block_size / 4);
            for i in 0..12 {
                let b = u64::from(le32(block, i * 4));
                if b != 0 {
                    self.data(b, i as u64, At::Inode(i), f)?;
                }
            }
            let mut base = 12u64;
            let mut span = p;
            for (k, level) in [(12usize, 1u32), (13, 2), (14, 3)] {
                let b = u64::from(le32(block, k * 4));
                if b != 0 {
                    self.ind(b, base, level, At::Inode(k), f)?;
                }
                base += span;
                span = span.saturating_mul(p);
            }
            Ok(())
        }
    }

    fn data(&mut self, b: u64, lblk: u64, at: At, f: &mut dyn FnMut(Ev, At)) -> Result<(), Fatal> {
        if !self.in_range(b, 1) {
            return self.bad(f, at, format!("block #{lblk} is {b}, outside the file system"));
        }
        self.spend(1)?;
        f(Ev::Data { lblk, pblk: b, len: 1, init: true }, at);
        Ok(())
    }

    fn ind(&mut self, b: u64, base: u64, level: u32, at: At, f: &mut dyn FnMut(Ev, At)) -> Result<(), Fatal> {
        if !self.in_range(b, 1) {
            return self.bad(f, at, format!("indirect block (level {level}) for block #{base} is {b}, outside the file system"));
        }
        self.spend(1)?;
        f(Ev::Meta { pblk: b }, at);
        let buf = self.dev.bread(b).map_err(|e| format!("cannot read indirect block {b}: {e}"))?;
        let p = u64::from(self.sb.block_size / 4);
        let span = p.pow(level - 1);
        for j in 0..p as usize {
            let q = u64::from(le32(&buf, j * 4));
            if q == 0 {
                continue;
            }
            let lblk = base + j as u64 * span;
            if level == 1 {
                self.data(q, lblk, At::Block(b, j), f)?;
            } else {
                self.ind(q, lblk, level - 1, At::Block(b, j), f)?;
            }
        }
        Ok(())
    }

    fn ext_node(
        &mut self,
        node: &[u8],
        blk: Option<u64>,
        (entries, _max, depth): (usize, usize, u16),
        lo: u64,
        hi: u64,
        f: &mut dyn FnMut(Ev, At),
    ) -> Result<(), Fatal> {
        let at = |i: usize| match blk {
            None => At::Inode(i),
            Some(b) => At::Block(b, i),
        };
        let mut prev_end = lo;
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let lblk = u64::from(le32(e, 0));
            if depth == 0 {
                let raw_len = u32::from(le16(e, 4));
                let (len, init) =
                    if raw_len > EXT_INIT_MAX_LEN { (raw_len - EXT_INIT_MAX_LEN, false) } else { (raw_len, true) };
                let len = u64::from(len);
                let start = u64::from(le32(e, 8)) | u64::from(le16(e, 6)) << 32;
                let why = if len == 0 {
                    Some("has length 0".to_string())
                } else if lblk < prev_end {
                    Some(format!("overlaps or is out of order (previous ends at {prev_end})"))
                } else if lblk + len > hi {
                    Some(format!("ends past its index range (which ends at {hi})"))
                } else if !self.in_range(start, len) {
                    Some("is outside the file system".to_string())
                } else {
                    None
                };
                if let Some(w) = why {
                    self.bad(f, at(i), format!("extent (logical {lblk}, physical {start}, length {len}) {w}"))?;
                    continue;
                }
                self.spend(len)?;
                prev_end = lblk + len;
                f(Ev::Data { lblk, pblk: start, len, init }, at(i));
            } else {
                let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                let next = if i + 1 < entries { u64::from(le32(node, 12 + 12 * (i + 1))).min(hi) } else { hi };
                if lblk < prev_end || (i > 0 && lblk >= next && i + 1 < entries) {
                    self.bad(f, at(i), format!("extent index for logical {lblk} is out of order"))?;
                    continue;
                }
                if !self.in_range(child, 1) {
                    self.bad(f, at(i), format!("extent index for logical {lblk} points to block {child}, outside the file system"))?;
                    continue;
                }
                let buf = self.dev.bread(child).map_err(|e| format!("cannot read extent block {child}: {e}"))?;
                let h = match ext_header(&buf) {
                    Ok(h) if h.2 + 1 == depth => h,
                    Ok(h) => {
                        self.bad(f, at(i), format!("extent block {child} has depth {}, expected {}", h.2, depth - 1))?;
                        continue;
                    }
                    Err(m) => {
                        self.bad(f, at(i), format!("extent block {child}: {m}"))?;
                        continue;
                    }
                };
                self.spend(1)?;
                f(Ev::Meta { pblk: child }, at(i));
                if self.sb.metadata_csum() {
                    let tail = 12 + 12 * h.1;
                    let ok = tail + 4 <= buf.len() && le32(&buf, tail) == csum::raw(self.seed, &buf[..tail]);
                    if !ok {
                        f(Ev::Csum { pblk: child }, at(i));
                    }
                }
                prev_end = lblk;
                self.ext_node(&buf, Some(child), h, lblk.max(lo), next, f)?;
                prev_end = next.min(hi).max(prev_end);
            }
        }
        Ok(())
    }
}

/// Checks an extent node header: (entries, max, depth).
fn ext_header(node: &[u8]) -> Result<(usize, usize, u16), String> {
    let magic = le16(node, 0);
    let entries = usize::from(le16(node, 2));
    let max = usize::from(le16(node, 4));
    let depth = le16(node, 6);
    let cap = node.len().saturating_sub(12) / 12;
    if magic != EXT_MAGIC {
        return Err(format!("bad magic 0x{magic:04x}"));
    }
    if entries > max || max > cap || max == 0 || depth > 5 {
        return Err(format!("entries {entries}, max {max} (room for {cap}), depth {depth} are invalid"));
    }
    Ok((entries, max, depth))
}

/// What a walk of one inode found.
#[derive(Default)]
struct Found {
    blocks: u64,
    last: Option<u64>,
    last_init: Option<u64>,
    bad: Vec<(At, String)>,
    csum: Vec<u64>,
    dir_blocks: Vec<(u64, u64)>,
    fragmented: bool,
    prev: u64,
}

/// The type code of a file type (dirent numbering).
pub(super) fn type_code(k: FileType) -> u8 {
    match k {
        FileType::Regular => 1,
        FileType::Directory => 2,
        FileType::CharDevice => 3,
        FileType::BlockDevice => 4,
        FileType::Fifo => 5,
        FileType::Socket => 6,
        FileType::Symlink => 7,
    }
}

fn uses_extents(raw: &[u8]) -> bool {
    le32(raw, ifield::FLAGS) & flags::EXTENTS != 0
}

fn i_block(raw: &[u8]) -> &[u8] {
    &raw[ifield::BLOCK..ifield::BLOCK + 60]
}

/// The first physical block of inode `ino` (for the journal superblock).
pub(super) fn first_block(c: &Checker, ino: u32, raw: &[u8]) -> KResult<Option<u64>> {
    let mut first = None;
    let seed = c.inode_seed(ino, raw);
    let mut w = Walker::new(&c.dev, &c.sb, seed);
    let _ = w.walk(i_block(raw), uses_extents(raw), &mut |ev, _| {
        if let Ev::Data { lblk: 0, pblk, .. } = ev {
            first.get_or_insert(pblk);
        }
    });
    Ok(first)
}

/// Data blocks mapped by inode `ino`.
pub(super) fn count_blocks(c: &Checker, ino: u32, raw: &[u8]) -> u64 {
    let mut n = 0;
    let seed = c.inode_seed(ino, raw);
    let mut w = Walker::new(&c.dev, &c.sb, seed);
    let _ = w.walk(i_block(raw), uses_extents(raw), &mut |ev, _| {
        if let Ev::Data { len, .. } = ev {
            n += len;
        }
    });
    n
}

/// The record of a symlink target in `i_block` (fast symlink) is valid: NUL-free for exactly
/// `size` bytes.
fn strnlen(b: &[u8]) -> usize {
    b.iter().position(|&x| x == 0).unwrap_or(b.len())
}

impl Checker<'_> {
    pub(super) fn pass1(&mut self) -> KResult<()> {
        let sb = self.sb.clone();
        let ipg = sb.inodes_per_group;
        let isz = sb.inode_size as usize;
        let per_block = (self.bs as usize / isz) as u64;
        let chunk_blocks = (256 * 1024 / self.bs).max(1);
        let csums = self.group_csums();
        // The part of group g's inode table in use: (first block, inodes).
        let table = |c: &Self, g: u32| {
            let d = &c.groups[g as usize];
            let limit = if csums {
                if d.flags() & crate::ext2fs::group::BG_INODE_UNINIT != 0 {
                    0
                } else {
                    ipg.saturating_sub(d.itable_unused().min(ipg))
                }
            } else {
                ipg
            };
            (d.inode_table(), limit)
        };
        let nblocks_total = sb.blocks_count;
        for g in 0..sb.group_count {
            self.progress(PH, u64::from(g), u64::from(sb.group_count));
            if self.bad_group[g as usize] {
                continue;
            }
            // Read-ahead: the host starts on the next group's table while this one is checked
            // (a cold check waits on these reads more than on anything else).
            if let Some(n) = (g + 1..sb.group_count).find(|&n| !self.bad_group[n as usize]) {
                let (nit, nlimit) = table(self, n);
                let nb = u64::from(nlimit).div_ceil(per_block);
                if nb > 0 && nit.saturating_add(nb) <= nblocks_total {
                    self.dev.device().will_need(nit * self.bs, nb * self.bs);
                }
            }
            let (it, limit) = table(self, g);
            // Reserved inodes always count as in use (the bitmap marks them).
            if g == 0 {
                for ino in 1..sb.first_ino.min(ipg + 1) {
                    self.kind[ino as usize] = kind::RESERVED;
                }
            }
            let nblocks = u64::from(limit).div_ceil(per_block);
            let mut b = 0;
            while b < nblocks {
                let n = chunk_blocks.min(nblocks - b);
                let mut buf = vec![0u8; (n * self.bs) as usize];
                self.dev.read_blocks(it + b, n, &mut buf, 0)?;
                for k in 0..(n * per_block) as usize {
                    let index = (b * per_block) as u32 + k as u32;
                    if index >= limit {
                        break;
                    }
                    let ino = g * ipg + index + 1;
                    let raw = &buf[k * isz..(k + 1) * isz];
                    self.inode1(ino, raw)?;
                }
                b += n;
            }
        }
        self.ea_refcounts()?;
        Ok(())
    }

    /// Pass 1 for one inode record.
    fn inode1(&mut self, ino: u32, raw: &[u8]) -> KResult<()> {
        let links = le16(raw, ifield::LINKS);
        let mode = le16(raw, ifield::MODE);
        if ino < self.sb.first_ino && ino != ROOT_INO {
            return self.reserved_inode(ino, raw);
        }
        let obj = format!("inode {ino}");
        let mut raw = raw.to_vec();
        let mut dirty = false;
        let dtime = le32(&raw, ifield::DTIME);
        if dtime != 0 && dtime < self.sb.inodes_count {
            let p = self.problem(Level::Preen, PH, obj.clone(), format!("was on the orphan list (dtime {dtime})"), Some("fix dtime"));
            if self.want(&p) {
                put32(&mut raw, ifield::DTIME, if links > 0 { 0 } else { self.now.max(1) });
                dirty = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        } else if links == 0 && dtime == 0 && mode != 0 {
            let p = self.problem(Level::Preen, PH, obj.clone(), "is deleted but has no dtime".into(), Some("set dtime"));
            if self.want(&p) {
                put32(&mut raw, ifield::DTIME, self.now.max(1));
                dirty = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        if links == 0 {
            if dirty {
                self.write_inode_raw(ino, &mut raw)?;
            }
            return Ok(());
        }
        let mut csum_bad = false;
        let parsed = match Inode::parse(&self.sb, ino, &raw) {
            Err(InodeError::Corrupt(m)) if m.contains("checksum mismatch") => {
                csum_bad = true;
                let mut nosum = self.sb.clone();
                nosum.feature_ro_compat &= !ro_compat::METADATA_CSUM;
                Inode::parse(&nosum, ino, &raw)
            }
            r => r,
        };
        let ind = match parsed {
            Ok(i) => i,
            Err(InodeError::Free) => return self.bad_inode(ino, &raw, format!("has invalid mode 0o{mode:o}")),
            Err(InodeError::Corrupt(m)) => return self.bad_inode(ino, &raw, m),
        };
        self.links_disk[ino as usize] = links;
        if ino == ROOT_INO && ind.kind != FileType::Directory {
            return self.bad_inode(ino, &raw, "the root inode is not a directory".into());
        }
        // dtime on a live inode.
        let dtime = le32(&raw, ifield::DTIME);
        if dtime != 0 {
            let p = self.problem(Level::Preen, PH, obj.clone(), format!("is in use but has dtime {dtime} set"), Some("clear dtime"));
            if self.want(&p) {
                put32(&mut raw, ifield::DTIME, 0);
                dirty = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        let fl = ind.flags;
        if fl & flags::INLINE_DATA != 0 {
            return self.bad_inode(ino, &raw, "has the inline data flag set (inline_data is not supported)".into());
        }
        if fl & flags::EXTENTS != 0 && !self.sb.has_incompat(incompat::EXTENTS) {
            return self.bad_inode(ino, &raw, "has the extents flag set on a file system without extents".into());
        }
        if fl & flags::INDEX != 0
            && (ind.kind != FileType::Directory || !self.sb.has_compat(super::COMPAT_DIR_INDEX))
        {
            let why = if ind.kind != FileType::Directory { "is not a directory" } else { "the file system has no dir_index" };
            let p = self.problem(Level::Preen, PH, obj.clone(), format!("has the htree index flag set but {why}"), Some("clear the flag"));
            if self.want(&p) {
                let f = le32(&raw, ifield::FLAGS) & !flags::INDEX;
                put32(&mut raw, ifield::FLAGS, f);
                dirty = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        let code = type_code(ind.kind);
        let ea_blocks = if ind.file_acl != 0 { 1 } else { 0 };
        let extents = fl & flags::EXTENTS != 0;
        // Device nodes, fifos and sockets keep nothing in i_block but a device number.
        if matches!(ind.kind, FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket) {
            if fl & (flags::EXTENTS | flags::INDEX) != 0 || (4..15).any(|w| ind.block_word(w) != 0) {
                return self.bad_inode(ino, &raw, format!("is a {:?} with block pointers", ind.kind));
            }
        }
        let _ = ea_blocks;
        // e2fsck's rule: a symlink of 1..59 bytes keeps its target in i_block.
        let fast_symlink = ind.kind == FileType::Symlink && ind.size > 0 && ind.size < 60;
        if ind.kind == FileType::Symlink {
            if ind.size == 0 || ind.size >= self.bs || fl & flags::INDEX != 0 {
                return self.bad_inode(ino, &raw, format!("is a symlink of size {}", ind.size));
            }
            if fast_symlink {
                let len = strnlen(&ind.block);
                if extents || len as u64 != ind.size {
                    return self.bad_inode(ino, &raw, format!("is a fast symlink of size {} holding {len} bytes", ind.size));
                }
            } else if extents {
                let ok = le16(&ind.block, 2) == 1 && le16(&ind.block, 6) == 0 && le32(&ind.block, 12) == 0 && le16(&ind.block, 16) == 1;
                if !ok {
                    return self.bad_inode(ino, &raw, "is a symlink whose extent tree is not one block".into());
                }
            } else if (1..15).any(|w| ind.block_word(w) != 0) {
                return self.bad_inode(ino, &raw, "is a symlink with more than one block pointer".into());
            }
        }
        let walk = matches!(ind.kind, FileType::Regular | FileType::Directory)
            || (ind.kind == FileType::Symlink && !fast_symlink);
        let mut found = Found::default();
        if walk {
            let seed = self.inode_seed(ino, &raw);
            let dir = ind.kind == FileType::Directory;
            let r = {
                let used = &mut self.used;
                let dups = &mut self.dups;
                let mut w = Walker::new(&self.dev, &self.sb, seed);
                let fo = &mut found;
                w.walk(&ind.block, extents, &mut |ev, at| match ev {
                    Ev::Data { lblk, pblk, len, init } => {
                        for x in pblk..pblk + len {
                            if used.set(x) {
                                dups.insert(x);
                            }
                        }
                        if fo.prev != 0 && pblk != fo.prev + 1 {
                            fo.fragmented = true;
                        }
                        fo.prev = pblk + len - 1;
                        fo.blocks += len;
                        let end = lblk + len - 1;
                        fo.last = Some(fo.last.map_or(end, |l| l.max(end)));
                        if init {
                            fo.last_init = Some(fo.last_init.map_or(end, |l| l.max(end)));
                        }
                        if dir {
                            for k in 0..len.min(1 << 20) {
                                fo.dir_blocks.push((lblk + k, pblk + k));
                            }
                        }
                    }
                    Ev::Meta { pblk } => {
                        if used.set(pblk) {
                            dups.insert(pblk);
                        }
                        fo.blocks += 1;
                    }
                    Ev::Bad { msg } => fo.bad.push((at, msg)),
                    Ev::Csum { pblk } => fo.csum.push(pblk),
                })
            };
            if let Err(m) = r {
                // Give back what this walk marked (dups stay).
                self.release_found(ino, &ind.block, extents, seed);
                return self.bad_inode(ino, &raw, m);
            }
            if found.fragmented {
                self.fragmented += 1;
            }
            // Illegal pointers: cleared one by one (e2fsck's "Illegal block #N ... CLEARED").
            if !found.bad.is_empty() {
                let mut fixes = Vec::new();
                for (at, msg) in std::mem::take(&mut found.bad) {
                    let p = self.problem(Level::Yes, PH, obj.clone(), msg, Some("clear the pointer"));
                    if self.want(&p) {
                        fixes.push((at, p));
                    } else {
                        self.unfixed(p);
                    }
                }
                // Highest slot first, so removing an extent does not move the next one.
                fixes.sort_by(|a, b| b.0.cmp(&a.0));
                for (at, p) in fixes {
                    let r = self.clear_pointer(&mut raw, at, extents, seed);
                    if matches!(at, At::Inode(_)) && r.is_ok() {
                        dirty = true;
                    }
                    self.done(p, r.is_ok());
                }
            }
            for blk in std::mem::take(&mut found.csum) {
                let p = self.problem(Level::Preen, PH, obj.clone(), format!("extent block {blk} fails its checksum"), Some("rewrite the checksum"));
                let ok = self.want(&p) && {
                    let r = self.dev.bread(blk).and_then(|b| {
                        let mut v = b.to_vec();
                        update::set_extent_csum(&mut v, seed);
                        self.bwrite(blk, v)
                    });
                    r.is_ok()
                };
                self.done(p, ok);
            }
            if ind.kind == FileType::Symlink {
                let ok = found.blocks == 1 && found.last == Some(0) && {
                    let first = found.prev;
                    match self.dev.bread(first) {
                        Ok(b) => strnlen(&b[..self.bs as usize]) as u64 == ind.size,
                        Err(_) => false,
                    }
                };
                if !ok {
                    self.release_found(ino, &ind.block, extents, seed);
                    return self.bad_inode(ino, &raw, format!("is an invalid symlink of size {}", ind.size));
                }
            }
        }
        // Extended attributes.
        let mut ea_count = 0u64;
        if ind.file_acl != 0 {
            match self.ea_block(ino, ind.file_acl) {
                Ok(true) => ea_count = 1,
                Ok(false) => {
                    let p = self.problem(
                        Level::Yes,
                        PH,
                        obj.clone(),
                        format!("extended attribute block {} is invalid", ind.file_acl),
                        Some("clear i_file_acl"),
                    );
                    if self.want(&p) {
                        put32(&mut raw, ifield::FILE_ACL_LO, 0);
                        put16(&mut raw, ifield::FILE_ACL_HI, 0);
                        dirty = true;
                        self.done(p, true);
                    } else {
                        ea_count = 1;
                        self.unfixed(p);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let extra_end = inode::GOOD_OLD_SIZE + usize::from(ind.extra_isize);
        if raw.len() > extra_end + 4 {
            if let Err(m) = xattr::parse_inode(&raw[extra_end..]) {
                let p = self.problem(Level::Yes, PH, obj.clone(), format!("in-inode extended attributes: {m}"), Some("clear them"));
                if self.want(&p) {
                    raw[extra_end..].fill(0);
                    dirty = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
        }
        // Size against the blocks.
        let size = ind.size;
        let bs = self.bs;
        let last = found.last;
        if walk && ind.kind != FileType::Symlink {
            let want = last.map_or(0, |l| (l + 1) * bs);
            let bad = if ind.kind == FileType::Directory {
                let nblock = size / bs;
                let have = last.map_or(0, |l| l + 1);
                if size % bs != 0 {
                    Some(want)
                } else if nblock > have {
                    Some(want)
                } else if have - nblock > super::prealloc_dir_blocks(&self.sbraw) {
                    Some(want)
                } else {
                    None
                }
            } else {
                let max = if extents {
                    (1u64 << (32 + bs.trailing_zeros())) - 1
                } else {
                    let p = bs / 4;
                    (12 + p + p * p + p * p * p).saturating_mul(bs)
                };
                match found.last_init {
                    Some(li) if size < li * bs => Some(want),
                    _ if size > max => Some(want),
                    _ => None,
                }
            };
            if let Some(want) = bad {
                let p = self.problem(Level::Preen, PH, obj.clone(), format!("i_size is {size}, should be {want}"), Some("fix i_size"));
                if self.want(&p) {
                    put32(&mut raw, ifield::SIZE_LO, want as u32);
                    put32(&mut raw, ifield::SIZE_HI, (want >> 32) as u32);
                    dirty = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
        }
        // i_blocks.
        let want512 = (found.blocks + ea_count) * (bs / 512);
        if ind.blocks512 != want512 {
            let p = self.problem(
                Level::Preen,
                PH,
                obj.clone(),
                format!("i_blocks is {}, should be {want512}", ind.blocks512),
                Some("fix i_blocks"),
            );
            if self.want(&p) {
                put32(&mut raw, ifield::BLOCKS_LO, want512 as u32);
                if self.sb.has_ro_compat(ro_compat::HUGE_FILE) {
                    put16(&mut raw, ifield::BLOCKS_HI, (want512 >> 32) as u16);
                }
                let f = le32(&raw, ifield::FLAGS) & !flags::HUGE_FILE;
                put32(&mut raw, ifield::FLAGS, f);
                dirty = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        if csum_bad && !dirty {
            let p = self.problem(Level::Preen, PH, obj.clone(), "passes checks but fails its checksum".into(), Some("rewrite the checksum"));
            if self.want(&p) {
                dirty = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        if dirty {
            self.write_inode_raw(ino, &mut raw)?;
        }
        self.kind[ino as usize] = code;
        if ind.kind == FileType::Directory {
            self.dirs.insert(ino, DirInfo::default());
            let nblocks = size.div_ceil(bs);
            let mut have: Vec<u64> = found.dir_blocks.iter().map(|d| d.0).collect();
            have.sort_unstable();
            for (lblk, pblk) in found.dir_blocks {
                if lblk < nblocks.max(1) {
                    self.dblist.push(DirBlock { ino, lblk, pblk });
                }
            }
            let mut holes = Vec::new();
            for l in 0..nblocks.min(1 << 20) {
                if have.binary_search(&l).is_err() {
                    holes.push(l);
                }
            }
            if !holes.is_empty() || have.is_empty() {
                let m = if have.is_empty() {
                    "directory has no blocks".to_string()
                } else {
                    format!("directory has holes at block(s) {}", super::bits::ranges(&holes))
                };
                let p = self.problem(Level::Never, PH, obj, m, None);
                self.unfixed(p);
            }
        }
        Ok(())
    }

    /// Reserved inodes (below `s_first_ino`): in use for the bitmap; their blocks are marked.
    fn reserved_inode(&mut self, ino: u32, raw: &[u8]) -> KResult<()> {
        self.kind[ino as usize] = kind::RESERVED;
        if ino == RESIZE_INO {
            // The resize inode: its double indirect block; the rest are reserved GDT blocks.
            let d = u64::from(le32(raw, ifield::BLOCK + 13 * 4));
            if d != 0 && d < self.sb.blocks_count && self.used.set(d) {
                self.dups.insert(d);
            }
            return Ok(());
        }
        if le16(raw, ifield::MODE) == 0 && i_block(raw).iter().all(|&b| b == 0) {
            return Ok(());
        }
        let seed = self.inode_seed(ino, raw);
        let mut bad = Vec::new();
        let r = {
            let used = &mut self.used;
            let dups = &mut self.dups;
            let mut w = Walker::new(&self.dev, &self.sb, seed);
            w.walk(i_block(raw), uses_extents(raw), &mut |ev, _| match ev {
                Ev::Data { pblk, len, .. } => {
                    for x in pblk..pblk + len {
                        if used.set(x) {
                            dups.insert(x);
                        }
                    }
                }
                Ev::Meta { pblk } => {
                    if used.set(pblk) {
                        dups.insert(pblk);
                    }
                }
                Ev::Bad { msg } => bad.push(msg),
                Ev::Csum { .. } => {}
            })
        };
        if let Err(m) = r {
            bad.push(m);
        }
        let what = if ino == JOURNAL_INO { "journal inode" } else { "reserved inode" };
        for m in bad {
            let p = self.problem(Level::Never, PH, format!("{what} {ino}"), m, None);
            self.unfixed(p);
        }
        Ok(())
    }

    /// An inode that cannot be kept as it is: cleared with `-y`, else left marked bad.
    fn bad_inode(&mut self, ino: u32, raw: &[u8], why: String) -> KResult<()> {
        self.links_disk[ino as usize] = le16(raw, ifield::LINKS);
        let p = self.problem(Level::Yes, PH, format!("inode {ino}"), why.clone(), Some("clear the inode"));
        if self.want(&p) {
            self.kind[ino as usize] = kind::BAD;
            let mut r = raw.to_vec();
            put16(&mut r, ifield::LINKS, 0);
            put32(&mut r, ifield::DTIME, self.now.max(1));
            let res = self.write_inode_raw(ino, &mut r);
            self.kind[ino as usize] = kind::FREE;
            self.done(p, res.is_ok());
            res
        } else {
            let mode = le16(raw, ifield::MODE);
            let code = FileType::from_mode(u32::from(mode)).map(type_code).unwrap_or(0);
            self.kind[ino as usize] = kind::BAD | code;
            self.bad_why.insert(ino, why);
            self.unfixed(p);
            Ok(())
        }
    }

    /// Gives back the blocks a walk of this mapping marks (blocks claimed twice stay).
    fn release_found(&mut self, _ino: u32, block: &[u8], extents: bool, seed: u32) {
        let mut v = Vec::new();
        let mut w = Walker::new(&self.dev, &self.sb, seed);
        let _ = w.walk(block, extents, &mut |ev, _| match ev {
            Ev::Data { pblk, len, .. } => v.push((pblk, len)),
            Ev::Meta { pblk } => v.push((pblk, 1)),
            _ => {}
        });
        for (b, n) in v {
            for x in b..b + n {
                if !self.dups.contains(&x) {
                    self.used.clear(x);
                }
            }
        }
    }

    /// Gives back every block of inode record `raw` (and its EA block reference).
    pub(super) fn release_blocks(&mut self, ino: u32, raw: &[u8]) {
        let seed = self.inode_seed(ino, raw);
        let ft = FileType::from_mode(u32::from(le16(raw, ifield::MODE)));
        let fast = ft == Some(FileType::Symlink) && le32(raw, ifield::BLOCKS_LO) == 0;
        if matches!(ft, Some(FileType::Regular | FileType::Directory | FileType::Symlink)) && !fast {
            let b = i_block(raw).to_vec();
            self.release_found(ino, &b, uses_extents(raw), seed);
        }
        let acl = u64::from(le32(raw, ifield::FILE_ACL_LO)) | u64::from(le16(raw, ifield::FILE_ACL_HI)) << 32;
        if let Some(e) = self.ea.get_mut(&acl) {
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 && !self.dups.contains(&acl) {
                self.used.clear(acl);
            }
        }
    }

    /// Clears an illegal pointer: a block map word set to 0, or an extent (index) entry
    /// removed from its node.
    fn clear_pointer(&mut self, raw: &mut [u8], at: At, extents: bool, seed: u32) -> KResult<()> {
        match at {
            At::Inode(i) => {
                let node = &mut raw[ifield::BLOCK..ifield::BLOCK + 60];
                if extents {
                    remove_entry(node, i);
                } else {
                    put32(node, i * 4, 0);
                }
                Ok(())
            }
            At::Block(b, i) => {
                let mut v = self.dev.bread(b)?.to_vec();
                if extents {
                    remove_entry(&mut v, i);
                    if self.sb.metadata_csum() {
                        update::set_extent_csum(&mut v, seed);
                    }
                } else {
                    put32(&mut v, i * 4, 0);
                }
                self.bwrite(b, v)
            }
        }
    }

    /// An inode's EA block: `Ok(true)` if valid (counted), `Ok(false)` if not.
    fn ea_block(&mut self, _ino: u32, blk: u64) -> KResult<bool> {
        if let Some(e) = self.ea.get_mut(&blk) {
            e.refs += 1;
            return Ok(e.valid);
        }
        let in_range = blk >= u64::from(self.sb.first_data_block).max(1) && blk < self.sb.blocks_count;
        let (valid, refcount) = if !in_range {
            (false, 0)
        } else {
            let buf = self.dev.bread(blk)?;
            let seed = self.sb.metadata_csum().then_some(self.sb.csum_seed);
            let ok = xattr::parse_block(&buf, blk, seed).is_ok();
            (ok, le32(&buf, 4))
        };
        if valid && self.used.set(blk) {
            self.dups.insert(blk);
        }
        if in_range {
            self.ea.insert(blk, EaBlock { refcount, refs: 1, valid });
        }
        Ok(valid)
    }

    /// Each valid EA block's reference count against the inodes that name it.
    fn ea_refcounts(&mut self) -> KResult<()> {
        let mut list: Vec<(u64, EaBlock)> = self.ea.iter().map(|(b, e)| (*b, *e)).filter(|(_, e)| e.valid).collect();
        list.sort_by_key(|x| x.0);
        for (blk, e) in list {
            if e.refcount == e.refs {
                continue;
            }
            let p = self.problem(
                Level::Preen,
                PH,
                format!("block {blk}"),
                format!("extended attribute block has reference count {}, should be {}", e.refcount, e.refs),
                Some("fix the count"),
            );
            self.fix_with(p, |c| {
                let mut v = c.dev.bread(blk)?.to_vec();
                put32(&mut v, 4, e.refs);
                if c.sb.metadata_csum() {
                    update::set_xattr_block_csum(&c.sb, &mut v, blk);
                }
                c.bwrite(blk, v)
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Passes 1B-1D: blocks claimed twice
    // ---------------------------------------------------------------------------------------

    pub(super) fn pass1_dups(&mut self) -> KResult<()> {
        if self.dups.is_empty() {
            return Ok(());
        }
        // 0 stands for the file system's own metadata.
        let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
        for g in 0..self.sb.group_count {
            let mut v = Vec::new();
            self.group_metadata(g, &mut |b, n| v.push((b, n)));
            for (b, n) in v {
                for x in b..b.saturating_add(n).min(self.sb.blocks_count) {
                    if self.dups.contains(&x) {
                        owners.entry(x).or_default().push(0);
                    }
                }
            }
        }
        // Who claims what, and where each claim's pointer is.
        let mut hits: BTreeMap<u32, Vec<(Ev, At)>> = BTreeMap::new();
        for ino in 1..=self.sb.inodes_count {
            let k = self.kind[ino as usize];
            if k == kind::FREE || k & kind::BAD != 0 || ino == RESIZE_INO {
                continue;
            }
            if ino < self.sb.first_ino && ino != ROOT_INO && k == kind::RESERVED {
                // Reserved inodes are walked too (the journal).
            }
            let raw = self.read_inode_raw(ino)?;
            let ft = FileType::from_mode(u32::from(le16(&raw, ifield::MODE)));
            let is_fast = ft == Some(FileType::Symlink) && le32(&raw, ifield::BLOCKS_LO) == 0;
            let walkable = ino < self.sb.first_ino || matches!(ft, Some(FileType::Regular | FileType::Directory | FileType::Symlink));
            if !walkable || is_fast {
                continue;
            }
            if ino < self.sb.first_ino && le16(&raw, ifield::MODE) == 0 && i_block(&raw).iter().all(|&b| b == 0) {
                continue;
            }
            let seed = self.inode_seed(ino, &raw);
            let mut mine = Vec::new();
            {
                let dups = &self.dups;
                let mut w = Walker::new(&self.dev, &self.sb, seed);
                let _ = w.walk(i_block(&raw), uses_extents(&raw), &mut |ev, at| {
                    let hit = match &ev {
                        Ev::Data { pblk, len, .. } => (*pblk..pblk + len).any(|x| dups.contains(&x)),
                        Ev::Meta { pblk } => dups.contains(pblk),
                        _ => false,
                    };
                    if hit {
                        mine.push((ev, at));
                    }
                });
            }
            for (ev, _) in &mine {
                let (b, n) = match ev {
                    Ev::Data { pblk, len, .. } => (*pblk, *len),
                    Ev::Meta { pblk } => (*pblk, 1),
                    _ => continue,
                };
                for x in b..b + n {
                    if self.dups.contains(&x) {
                        let o = owners.entry(x).or_default();
                        if o.last() != Some(&ino) {
                            o.push(ino);
                        }
                    }
                }
            }
            if !mine.is_empty() {
                hits.insert(ino, mine);
            }
        }
        // Report per inode, then clone (every claimant but the last keeps a copy).
        let inos: Vec<u32> = hits.keys().copied().collect();
        for ino in inos {
            let mine = hits.remove(&ino).unwrap_or_default();
            let mut shared: Vec<u32> = Vec::new();
            let mut nblocks = 0u64;
            for (ev, _) in &mine {
                let (b, n) = match ev {
                    Ev::Data { pblk, len, .. } => (*pblk, *len),
                    Ev::Meta { pblk } => (*pblk, 1),
                    _ => continue,
                };
                for x in b..b + n {
                    if let Some(o) = owners.get(&x) {
                        if o.len() > 1 {
                            nblocks += 1;
                            for &i in o {
                                if i != ino && !shared.contains(&i) {
                                    shared.push(i);
                                }
                            }
                        }
                    }
                }
            }
            if nblocks == 0 {
                continue;
            }
            shared.sort_unstable();
            let names: Vec<String> =
                shared.iter().map(|&i| if i == 0 { "the file system metadata".to_string() } else { format!("inode {i}") }).collect();
            let mut p = self.problem(
                Level::Yes,
                PH1B,
                format!("inode {ino}"),
                format!("has {nblocks} block(s) claimed by other files too, shared with {}", names.join(", ")),
                Some("clone the shared blocks"),
            );
            p.finding.path = self.path_of(ino);
            if self.want(&p) {
                let r = self.clone_blocks(ino, &mine, &mut owners);
                self.done(p, r.is_ok());
            } else {
                self.unfixed(p);
            }
        }
        Ok(())
    }

    /// Gives inode `ino` its own copies of the blocks it shares (`mine`: its claims on
    /// shared blocks, parents before children).
    fn clone_blocks(&mut self, ino: u32, mine: &[(Ev, At)], owners: &mut HashMap<u64, Vec<u32>>) -> KResult<()> {
        let mut raw = self.read_inode_raw(ino)?;
        let extents = uses_extents(&raw);
        let seed = self.inode_seed(ino, &raw);
        let mut remap: HashMap<u64, u64> = HashMap::new();
        let mut inode_dirty = false;
        for (ev, at) in mine {
            let (b, n, is_meta) = match ev {
                Ev::Data { pblk, len, .. } => (*pblk, *len, false),
                Ev::Meta { pblk } => (*pblk, 1, true),
                _ => continue,
            };
            let still_shared = (b..b + n).any(|x| owners.get(&x).is_some_and(|o| o.len() > 1));
            if !still_shared {
                continue;
            }
            let new = if n == 1 { self.alloc_blocks(b, 1)?.0 } else { self.alloc_contig(b, n)? };
            for k in 0..n {
                let mut v = self.dev.bread(b + k)?.to_vec();
                if is_meta && extents {
                    update::set_extent_csum(&mut v, seed);
                }
                self.bwrite(new + k, v)?;
            }
            for x in b..b + n {
                if let Some(o) = owners.get_mut(&x) {
                    o.retain(|&i| i != ino);
                }
            }
            if is_meta {
                remap.insert(b, new);
            }
            // Point the claim at the copy.
            let at = match *at {
                At::Block(c, i) => At::Block(remap.get(&c).copied().unwrap_or(c), i),
                a => a,
            };
            let is_index = is_meta && extents;
            match at {
                At::Inode(i) => {
                    set_pointer(&mut raw[ifield::BLOCK..ifield::BLOCK + 60], i, extents, is_index, new);
                    inode_dirty = true;
                }
                At::Block(c, i) => {
                    let mut v = self.dev.bread(c)?.to_vec();
                    set_pointer(&mut v, i, extents, is_index, new);
                    if extents && self.sb.metadata_csum() {
                        update::set_extent_csum(&mut v, seed);
                    }
                    self.bwrite(c, v)?;
                }
            }
        }
        if inode_dirty {
            self.write_inode_raw(ino, &mut raw)?;
        }
        if self.kind[ino as usize] == kind::DIR {
            // Its directory blocks moved: list them again.
            self.dblist.retain(|d| d.ino != ino);
            let size = u64::from(le32(&raw, ifield::SIZE_LO));
            let nblocks = size.div_ceil(self.bs);
            let mut v = Vec::new();
            let mut w = Walker::new(&self.dev, &self.sb, seed);
            let _ = w.walk(i_block(&raw), extents, &mut |ev, _| {
                if let Ev::Data { lblk, pblk, len, .. } = ev {
                    for k in 0..len.min(1 << 20) {
                        if lblk + k < nblocks {
                            v.push(DirBlock { ino, lblk: lblk + k, pblk: pblk + k });
                        }
                    }
                }
            });
            self.dblist.extend(v);
        }
        Ok(())
    }
}

/// Removes entry `i` of an extent node (the inode's `i_block` or a tree block).
fn remove_entry(node: &mut [u8], i: usize) {
    let entries = usize::from(le16(node, 2));
    if i >= entries {
        return;
    }
    let start = 12 + 12 * i;
    let end = 12 + 12 * entries;
    if end > node.len() {
        return;
    }
    node.copy_within(start + 12..end, start);
    node[end - 12..end].fill(0);
    put16(node, 2, (entries - 1) as u16);
}

/// Points slot `i` at block `new`: a block map word, an extent's start or an index's child.
fn set_pointer(node: &mut [u8], i: usize, extents: bool, is_index: bool, new: u64) {
    if !extents {
        put32(node, i * 4, new as u32);
        return;
    }
    let e = 12 + 12 * i;
    if is_index {
        put32(node, e + 4, new as u32);
        put16(node, e + 8, (new >> 32) as u16);
    } else {
        put16(node, e + 6, (new >> 32) as u16);
        put32(node, e + 8, new as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_entry_removal_and_pointer() {
        let mut node = vec![0u8; 60];
        put16(&mut node, 0, EXT_MAGIC);
        put16(&mut node, 2, 3);
        put16(&mut node, 4, 4);
        for i in 0..3 {
            put32(&mut node, 12 + 12 * i, i as u32 * 10);
        }
        remove_entry(&mut node, 1);
        assert_eq!(le16(&node, 2), 2);
        assert_eq!(le32(&node, 24), 20);
        assert_eq!(le32(&node, 36), 0);
        set_pointer(&mut node, 0, true, false, 0x1_0000_0005);
        assert_eq!(le32(&node, 20), 5);
        assert_eq!(le16(&node, 18), 1);
        assert_eq!(ext_header(&node), Ok((2, 4, 0)));
    }
}
