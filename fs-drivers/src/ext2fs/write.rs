//! The write operations: file data (block maps and extents), truncate and fallocate,
//! directories (entries added in the first block with room, removed by merging with the
//! previous record; an htree directory that changes loses its index and is kept linear),
//! creation and removal of files, rename, links, attributes and extended attributes.
//!
//! Every change is written to the buffer cache as it is made (inode records included), so a
//! vnode dropped from the cache and read again sees it. An error part way (ENOSPC, a corrupt
//! block) undoes what this operation allocated, so the file system stays consistent.

use super::extent::{self, Ext, ExtTree, Slot};
use super::inode::{flags, Inode};
use super::superblock::{incompat, ro_compat};
use super::update::{self, sbf};
use super::{alloc, dir, le16, le32, xattr, Ext2Fs, Names, NodeInner, State, ROOT_INO};
use std::sync::{Arc, Mutex, RwLock};
use vfs_faction::{Errno, FileType, KResult, NewNode, RenameMode, SetAttr, XattrFlags};

/// Most links a file (or, without dir_nlink, a directory) may have.
const LINK_MAX: u16 = 65000;
/// fallocate(2) mode bits.
const FALLOC_KEEP_SIZE: u32 = 0x1;
const FALLOC_PUNCH_HOLE: u32 = 0x2;

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The dirent file type byte of a file type.
fn dirent_ft(k: FileType) -> u8 {
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

/// Space a record with a name of `len` bytes needs.
fn rec_need(len: usize) -> usize {
    (8 + len + 3) & !3
}

fn put_rec(b: &mut [u8], pos: usize, ino: u32, rec_len: usize, name: &[u8], ft: u8) {
    put32(b, pos, ino);
    put16(b, pos + 4, rec_len as u16);
    b[pos + 6] = name.len() as u8;
    b[pos + 7] = ft;
    b[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
}

/// The records of a directory block below `limit`: (pos, rec_len, inode, name_len).
fn records(b: &[u8], limit: usize) -> Result<Vec<(usize, usize, u32, usize)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < limit {
        if pos + 8 > limit {
            return Err(format!("record at {pos} runs past the block"));
        }
        let ino = le32(b, pos);
        let rl = usize::from(le16(b, pos + 4));
        let nl = usize::from(b[pos + 6]);
        if rl < 8 || rl % 4 != 0 || pos + rl > limit || (ino != 0 && rl < rec_need(nl)) {
            return Err(format!("record at {pos}: rec_len {rl}, name_len {nl} invalid"));
        }
        out.push((pos, rl, ino, nl));
        pos += rl;
    }
    Ok(out)
}

/// The permission bits a POSIX access ACL (xattr form) implies, and whether the ACL is
/// minimal (owner, group and other only). `None`: malformed.
fn acl_mode(v: &[u8]) -> Option<(u16, bool)> {
    if v.len() < 4 || le32(v, 0) != 2 || (v.len() - 4) % 8 != 0 {
        return None;
    }
    let (mut user, mut group, mut other, mut mask) = (None, None, None, None);
    let mut minimal = true;
    for e in v[4..].chunks(8) {
        let perm = le16(e, 2) & 7;
        match le16(e, 0) {
            1 => user = Some(perm),
            4 => group = Some(perm),
            0x10 => {
                mask = Some(perm);
                minimal = false;
            }
            0x20 => other = Some(perm),
            2 | 8 => minimal = false,
            _ => return None,
        }
    }
    let g = mask.or(group)?;
    Some((user? << 6 | g << 3 | other?, minimal))
}

impl Ext2Fs {
    pub(crate) fn ro(&self) -> KResult<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn spb(&self) -> u64 {
        self.bs() / 512
    }

    fn csum_tail(&self) -> usize {
        if self.sb.metadata_csum() {
            dir::TAIL_LEN
        } else {
            0
        }
    }

    fn is_ext(inode: &Inode) -> bool {
        inode.flags & flags::EXTENTS != 0
    }

    /// Largest number of logical blocks a file may have.
    fn max_lblocks(&self, inode: &Inode) -> u64 {
        if Self::is_ext(inode) {
            1 << 32
        } else {
            super::indirect::max_blocks(self.bs())
        }
    }

    fn ext_tree<'a>(&self, n: &NodeInner, st: &'a mut State) -> KResult<&'a mut ExtTree> {
        if st.ext.is_none() {
            let t = self.ext_load(n.ino, n.seed, &st.inode.block)?;
            st.ext = Some(t);
        }
        st.ext.as_mut().ok_or(Errno::EIO)
    }

    fn invalidate_map(n: &NodeInner) {
        *n.map_cache() = Default::default();
    }

    /// What logical block `lblk` is, for up to `max` blocks.
    fn wslot(&self, n: &NodeInner, st: &mut State, lblk: u64, max: u64) -> KResult<(Slot, u64)> {
        if Self::is_ext(&st.inode) {
            return Ok(self.ext_tree(n, st)?.lookup(lblk, max));
        }
        let run = super::bmap::map(self, n.ino, n.seed, &st.inode, &mut n.map_cache(), lblk, max)?;
        Ok((run.phys.map_or(Slot::Hole, Slot::Mapped), run.len.max(1)))
    }

    /// Allocation goal for logical block `lblk`.
    fn goal(&self, n: &NodeInner, st: &mut State, lblk: u64) -> KResult<u64> {
        if Self::is_ext(&st.inode) {
            if let Some(g) = self.ext_tree(n, st)?.goal_before(lblk) {
                return Ok(g);
            }
        } else if lblk > 0 {
            if let (Slot::Mapped(p), _) = self.wslot(n, st, lblk - 1, 1)? {
                return Ok(p + 1);
            }
        }
        let g = (n.ino - 1) / self.sb.inodes_per_group;
        Ok(alloc::group_first(&self.sb, g))
    }

    /// Maps `lblk..lblk+len` (a hole) to `phys..`; counts the blocks in `i_blocks`. On error
    /// nothing stays mapped (the caller frees the data blocks).
    fn map_new(&self, n: &NodeInner, st: &mut State, lblk: u64, phys: u64, len: u64, unwritten: bool) -> KResult<()> {
        Self::invalidate_map(n);
        if Self::is_ext(&st.inode) {
            let goal = phys + len;
            self.ext_tree(n, st)?;
            let mut t = st.ext.take().ok_or(Errno::EIO)?;
            t.insert(Ext { lblk, len, start: phys, unwritten });
            let mut root = st.inode.block;
            match self.ext_store(n.ino, n.seed, &mut root, &mut t, goal) {
                Ok(delta) => {
                    st.inode.block = root;
                    st.inode.blocks512 = (st.inode.blocks512 as i64 + (len as i64 + delta) * self.spb() as i64).max(0) as u64;
                    st.ext = Some(t);
                    Ok(())
                }
                Err(e) => {
                    t.remove(lblk, lblk + len);
                    st.ext = Some(t);
                    Err(e)
                }
            }
        } else {
            if phys.checked_add(len).is_none_or(|e| e > 1 << 32) {
                return Err(Errno::ENOSPC);
            }
            match self.ind_set(n.ino, &mut st.inode, lblk, phys, len) {
                Ok(meta) => {
                    st.inode.blocks512 += (len + meta) * self.spb();
                    Ok(())
                }
                Err(e) => {
                    // Undo the pointers set (not the data blocks: the caller frees them).
                    let freed = self.ind_unmap(n.ino, &mut st.inode, lblk, lblk + len).unwrap_or(0);
                    let _ = freed;
                    Err(e)
                }
            }
        }
    }

    /// Clears block pointers `a..b` of a block-mapped inode without freeing the data blocks
    /// (they were never handed to the file); frees indirect blocks left empty.
    fn ind_unmap(&self, ino: u32, inode: &mut Inode, a: u64, b: u64) -> KResult<u64> {
        let before = inode.blocks512;
        let r = self.ind_punch(ino, inode, a, b, false);
        inode.blocks512 = before;
        r
    }

    /// Unmaps and frees logical blocks `a..b`.
    fn punch(&self, n: &NodeInner, st: &mut State, a: u64, b: u64) -> KResult<()> {
        if a >= b {
            return Ok(());
        }
        Self::invalidate_map(n);
        if Self::is_ext(&st.inode) {
            self.ext_tree(n, st)?;
            let mut t = st.ext.take().ok_or(Errno::EIO)?;
            let saved = t.clone();
            let freed = t.remove(a, b);
            if freed.is_empty() {
                st.ext = Some(t);
                return Ok(());
            }
            let mut root = st.inode.block;
            let goal = freed[0].0;
            match self.ext_store(n.ino, n.seed, &mut root, &mut t, goal) {
                Ok(delta) => {
                    st.inode.block = root;
                    let data: u64 = freed.iter().map(|f| f.1).sum();
                    st.inode.blocks512 =
                        (st.inode.blocks512 as i64 + (delta - data as i64) * self.spb() as i64).max(0) as u64;
                    st.ext = Some(t);
                    self.free_runs(&freed)
                }
                Err(e) => {
                    st.ext = Some(saved);
                    Err(e)
                }
            }
        } else {
            let cnt = self.ind_punch(n.ino, &mut st.inode, a, b, true)?;
            st.inode.blocks512 = st.inode.blocks512.saturating_sub(cnt * self.spb());
            Ok(())
        }
    }

    /// Writes file bytes into blocks `phys..phys+count` (logical `lblk..`), taking only the
    /// part of `data` (at file offset `off`) inside `pos..end`. `fresh`: the blocks hold
    /// nothing yet (partial blocks are zero-filled, not read).
    #[allow(clippy::too_many_arguments)]
    fn store_blocks(&self, phys: u64, count: u64, lblk: u64, pos: u64, end: u64, data: &[u8], off: u64, fresh: bool) -> KResult<()> {
        let bs = self.bs();
        for k in 0..count {
            let bstart = (lblk + k) * bs;
            let lo = bstart.max(pos);
            let hi = (bstart + bs).min(end);
            if lo >= hi {
                continue;
            }
            let src = &data[(lo - off) as usize..(hi - off) as usize];
            let b = if lo == bstart && hi == bstart + bs {
                src.to_vec()
            } else {
                let mut b = if fresh { vec![0u8; bs as usize] } else { self.dev.bread(phys + k)?.to_vec() };
                b[(lo - bstart) as usize..(hi - bstart) as usize].copy_from_slice(src);
                b
            };
            self.dev.bwrite(phys + k, b)?;
        }
        Ok(())
    }

    /// Writes `data` at `off` into the file's blocks, allocating holes. Returns the bytes
    /// written (fewer than asked only with an error after some were written).
    fn write_data(&self, n: &NodeInner, st: &mut State, off: u64, data: &[u8]) -> (u64, KResult<()>) {
        let bs = self.bs();
        let end = off + data.len() as u64;
        let mut pos = off;
        let ext = Self::is_ext(&st.inode);
        while pos < end {
            let lblk = pos / bs;
            let last = (end - 1) / bs;
            let r = (|| -> KResult<u64> {
                let (slot, cnt) = self.wslot(n, st, lblk, last - lblk + 1)?;
                let cnt = cnt.min(last - lblk + 1).max(1);
                match slot {
                    Slot::Mapped(p) => {
                        self.store_blocks(p, cnt, lblk, pos, end, data, off, false)?;
                        Ok(cnt)
                    }
                    Slot::Unwritten(p) => {
                        self.store_blocks(p, cnt, lblk, pos, end, data, off, true)?;
                        Self::invalidate_map(n);
                        let mut t = st.ext.take().ok_or(Errno::EIO)?;
                        let saved = t.clone();
                        t.mark_written(lblk, lblk + cnt);
                        let mut root = st.inode.block;
                        match self.ext_store(n.ino, n.seed, &mut root, &mut t, p) {
                            Ok(delta) => {
                                st.inode.block = root;
                                st.inode.blocks512 = (st.inode.blocks512 as i64 + delta * self.spb() as i64) as u64;
                                st.ext = Some(t);
                                Ok(cnt)
                            }
                            Err(e) => {
                                st.ext = Some(saved);
                                Err(e)
                            }
                        }
                    }
                    Slot::Hole => {
                        let goal = self.goal(n, st, lblk)?;
                        let limit = if ext { u64::MAX } else { 1 << 32 };
                        let (p, got) = self.alloc_blocks(goal, cnt, limit)?;
                        if let Err(e) = self.store_blocks(p, got, lblk, pos, end, data, off, true) {
                            let _ = self.free_runs(&[(p, got)]);
                            return Err(e);
                        }
                        if let Err(e) = self.map_new(n, st, lblk, p, got, false) {
                            let _ = self.free_runs(&[(p, got)]);
                            return Err(e);
                        }
                        Ok(got)
                    }
                }
            })();
            match r {
                Ok(cnt) => pos = ((lblk + cnt) * bs).min(end),
                Err(e) => return (pos - off, Err(e)),
            }
        }
        (pos - off, Ok(()))
    }

    /// Zeroes the bytes of the block holding byte `from` after it (before a file grows past
    /// `from`, or after it shrank to `from`).
    fn zero_tail(&self, n: &NodeInner, st: &mut State, from: u64) -> KResult<()> {
        let bs = self.bs();
        if from % bs == 0 {
            return Ok(());
        }
        if let (Slot::Mapped(p), _) = self.wslot(n, st, from / bs, 1)? {
            let mut b = self.dev.bread(p)?.to_vec();
            let k = (from % bs) as usize;
            if b[k..].iter().any(|&x| x != 0) {
                b[k..].fill(0);
                self.dev.bwrite(p, b)?;
            }
        }
        Ok(())
    }

    fn note_size(&self, inode: &Inode) {
        if inode.size > i32::MAX as u64 && !self.has_feature_now(sbf::FEATURE_RO_COMPAT, ro_compat::LARGE_FILE) {
            self.set_feature(sbf::FEATURE_RO_COMPAT, ro_compat::LARGE_FILE);
        }
    }

    /// Sets the size of a regular file, freeing blocks past it or leaving a hole.
    fn truncate(&self, n: &NodeInner, st: &mut State, size: u64) -> KResult<()> {
        let bs = self.bs();
        if size > self.max_lblocks(&st.inode).saturating_mul(bs) {
            return Err(Errno::EFBIG);
        }
        let old = st.inode.size;
        if size < old || Self::is_ext(&st.inode) && size < old.max(1) {
            let first = size.div_ceil(bs);
            self.punch(n, st, first, self.max_lblocks(&st.inode))?;
            self.zero_tail(n, st, size)?;
        } else if size > old {
            self.zero_tail(n, st, old)?;
        }
        st.inode.size = size;
        self.note_size(&st.inode);
        Ok(())
    }

    // ----- directories -----

    /// Rewrites directory block `lblk` (at `phys`) with `b`, setting its checksum tail.
    fn put_dir_block(&self, n: &NodeInner, phys: u64, mut b: Vec<u8>) -> KResult<()> {
        if self.sb.metadata_csum() {
            update::set_dir_tail(&mut b, n.seed);
        }
        self.dev.bwrite(phys, b)
    }

    /// Turns an htree directory into a linear one: the index blocks become empty records
    /// and the index flag goes. Every entry stays where it is.
    fn dir_clear_index(&self, n: &NodeInner, st: &mut State) -> KResult<()> {
        if st.inode.flags & flags::INDEX == 0 {
            return Ok(());
        }
        let bs = self.bs() as usize;
        let limit = bs - self.csum_tail();
        let nb = self.dir_blocks(&st.inode);
        let mut rewrite = Vec::new();
        for lblk in 0..nb {
            let Some((p, buf)) = self.dir_block(n, &st.inode, lblk)? else { continue };
            if lblk == 0 {
                // ".", then ".." spanning the rest (over the index root).
                let dot = le32(&buf, 0);
                let dotdot = le32(&buf, 12);
                if le16(&buf, 4) != 12 || buf[6] != 1 || buf[8] != b'.' || buf[18] != 2 {
                    self.corrupt(n.ino, "htree root block does not start with . and ..".into());
                    return Err(Errno::EIO);
                }
                let mut b = vec![0u8; bs];
                put_rec(&mut b, 0, dot, 12, b".", buf[7]);
                put_rec(&mut b, 12, dotdot, limit - 12, b"..", buf[19]);
                rewrite.push((p, b));
            } else if le32(&buf, 0) == 0 && usize::from(le16(&buf, 4)) == bs {
                let mut b = vec![0u8; bs];
                put_rec(&mut b, 0, 0, limit, b"", 0);
                rewrite.push((p, b));
            }
        }
        for (p, b) in rewrite {
            self.put_dir_block(n, p, b)?;
        }
        st.inode.flags &= !flags::INDEX;
        st.hint = 0;
        self.write_inode(n.ino, &mut st.inode)?;
        Ok(())
    }

    /// Where `name` is in directory `n`: (logical block, inode).
    fn dir_locate(&self, n: &NodeInner, st: &State, name: &[u8]) -> KResult<Option<(u64, u32)>> {
        if self.dir_blocks(&st.inode) > super::NAME_MAP_MIN_BLOCKS {
            // Builds the map (with block numbers) if it is not there.
            self.dir_lookup(n, &st.inode, name)?;
            if let Names::Built(m) = &*n.names() {
                return Ok(m.get(name).map(|&(ino, lblk)| (lblk, ino)));
            }
        }
        let mut found = None;
        self.scan_dir(n, &st.inode, 0, &mut |lblk, r| {
            if r.name == name {
                found = Some((lblk, r.inode));
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    fn names_add(n: &NodeInner, name: &[u8], ino: u32, lblk: u64) {
        if let Names::Built(m) = &mut *n.names() {
            m.insert(name.into(), (ino, lblk));
        }
    }

    fn names_remove(n: &NodeInner, name: &[u8]) {
        if let Names::Built(m) = &mut *n.names() {
            m.remove(name);
        }
    }

    /// Adds entry `name` → `ino` to directory `n`, in the first block with room (from the
    /// hint), or in a new block at the end.
    fn dir_add(&self, n: &NodeInner, st: &mut State, name: &[u8], ino: u32, kind: FileType) -> KResult<()> {
        self.dir_clear_index(n, st)?;
        let bs = self.bs() as usize;
        let limit = bs - self.csum_tail();
        let need = rec_need(name.len());
        let ft = if self.sb.has_incompat(incompat::FILETYPE) { dirent_ft(kind) } else { 0 };
        let nb = self.dir_blocks(&st.inode);
        let mut lblk = st.hint.min(nb);
        while lblk < nb {
            let Some((p, buf)) = self.dir_block(n, &st.inode, lblk)? else {
                lblk += 1;
                continue;
            };
            let recs = records(&buf, limit).map_err(|m| {
                self.corrupt(n.ino, format!("directory block {lblk}: {m}"));
                Errno::EIO
            })?;
            for (pos, rl, rino, nl) in recs {
                let used = if rino != 0 { rec_need(nl) } else { 0 };
                if rl - used >= need {
                    let mut b = buf.to_vec();
                    if rino != 0 {
                        put16(&mut b, pos + 4, used as u16);
                        put_rec(&mut b, pos + used, ino, rl - used, name, ft);
                    } else {
                        put_rec(&mut b, pos, ino, rl, name, ft);
                    }
                    self.put_dir_block(n, p, b)?;
                    st.hint = lblk;
                    Self::names_add(n, name, ino, lblk);
                    return Ok(());
                }
            }
            lblk += 1;
        }
        // A new block at the end.
        let lblk = nb;
        if (lblk + 1) * bs as u64 > u64::from(u32::MAX) {
            return Err(Errno::ENOSPC);
        }
        let goal = self.goal(n, st, lblk)?;
        let limit_blk = if Self::is_ext(&st.inode) { u64::MAX } else { 1 << 32 };
        let (p, _) = self.alloc_blocks(goal, 1, limit_blk)?;
        let mut b = vec![0u8; bs];
        put_rec(&mut b, 0, ino, limit, name, ft);
        if let Err(e) = self.put_dir_block(n, p, b) {
            let _ = self.free_runs(&[(p, 1)]);
            return Err(e);
        }
        if let Err(e) = self.map_new(n, st, lblk, p, 1, false) {
            let _ = self.free_runs(&[(p, 1)]);
            return Err(e);
        }
        st.inode.size = (lblk + 1) * bs as u64;
        st.hint = lblk;
        Self::names_add(n, name, ino, lblk);
        Ok(())
    }

    /// Changes the record of `name` in block `lblk` with `f(block, pos, prev_pos)`.
    fn dir_edit(
        &self,
        n: &NodeInner,
        st: &mut State,
        name: &[u8],
        f: &mut dyn FnMut(&mut Vec<u8>, usize, Option<usize>),
    ) -> KResult<u32> {
        self.dir_clear_index(n, st)?;
        let Some((lblk, ino)) = self.dir_locate(n, st, name)? else { return Err(Errno::ENOENT) };
        let limit = self.bs() as usize - self.csum_tail();
        let (p, buf) = self.dir_block(n, &st.inode, lblk)?.ok_or(Errno::EIO)?;
        let recs = records(&buf, limit).map_err(|m| {
            self.corrupt(n.ino, format!("directory block {lblk}: {m}"));
            Errno::EIO
        })?;
        let mut prev = None;
        for (pos, _rl, rino, nl) in recs {
            if rino != 0 && &buf[pos + 8..pos + 8 + nl] == name {
                let mut b = buf.to_vec();
                f(&mut b, pos, prev);
                self.put_dir_block(n, p, b)?;
                if lblk < st.hint {
                    st.hint = lblk;
                }
                return Ok(ino);
            }
            prev = Some(pos);
        }
        Err(Errno::ENOENT)
    }

    /// Removes entry `name`; returns the inode it named.
    fn dir_remove(&self, n: &NodeInner, st: &mut State, name: &[u8]) -> KResult<u32> {
        let ino = self.dir_edit(n, st, name, &mut |b, pos, prev| {
            let rl = le16(b, pos + 4);
            match prev {
                Some(pp) => {
                    let prl = le16(b, pp + 4);
                    put16(b, pp + 4, prl + rl);
                    b[pos..pos + usize::from(rl)].fill(0);
                }
                None => {
                    put32(b, pos, 0);
                    let nl = usize::from(b[pos + 6]);
                    b[pos + 6] = 0;
                    b[pos + 7] = 0;
                    b[pos + 8..pos + 8 + nl].fill(0);
                }
            }
        })?;
        Self::names_remove(n, name);
        Ok(ino)
    }

    /// Points entry `name` at `ino` (type `kind`); returns the inode it named before.
    fn dir_set(&self, n: &NodeInner, st: &mut State, name: &[u8], ino: u32, kind: FileType) -> KResult<u32> {
        let ft = if self.sb.has_incompat(incompat::FILETYPE) { dirent_ft(kind) } else { 0 };
        let old = self.dir_edit(n, st, name, &mut |b, pos, _| {
            put32(b, pos, ino);
            b[pos + 7] = ft;
        })?;
        if let Names::Built(m) = &mut *n.names() {
            if let Some(e) = m.get_mut(name) {
                e.0 = ino;
            }
        }
        Ok(old)
    }

    fn dir_is_empty(&self, n: &NodeInner, st: &State) -> KResult<bool> {
        let mut empty = true;
        self.scan_dir(n, &st.inode, 0, &mut |_, r| {
            if r.name != b"." && r.name != b".." {
                empty = false;
                return false;
            }
            true
        })?;
        Ok(empty)
    }

    fn count_subdirs(&self, n: &NodeInner, st: &State) -> KResult<u64> {
        let mut c = 0u64;
        let ft = self.sb.dirent_filetype();
        self.scan_dir(n, &st.inode, 0, &mut |_, r| {
            if r.name != b"." && r.name != b".." {
                let is_dir = if ft {
                    r.file_type == 2
                } else {
                    self.read_inode(r.inode).map(|i| i.kind == FileType::Directory).unwrap_or(false)
                };
                c += u64::from(is_dir);
            }
            true
        })?;
        Ok(c)
    }

    /// One more subdirectory: the link count grows, or stays 1 past 65,000 (dir_nlink).
    fn inc_dir_links(&self, st: &mut State) {
        let l = st.inode.links;
        if l == 1 {
            return;
        }
        if l >= LINK_MAX {
            st.inode.links = 1;
            if !self.has_feature_now(sbf::FEATURE_RO_COMPAT, ro_compat::DIR_NLINK) {
                self.set_feature(sbf::FEATURE_RO_COMPAT, ro_compat::DIR_NLINK);
            }
        } else {
            st.inode.links = l + 1;
        }
    }

    /// One subdirectory fewer (already removed from the directory).
    fn dec_dir_links(&self, n: &NodeInner, st: &mut State) -> KResult<()> {
        let l = st.inode.links;
        if l == 1 {
            let c = self.count_subdirs(n, st)?;
            if c + 2 <= u64::from(LINK_MAX) {
                st.inode.links = (c + 2) as u16;
            }
        } else if l > 2 {
            st.inode.links = l - 1;
        }
        Ok(())
    }

    // ----- inodes -----

    /// Frees an inode's blocks and extended attribute block (not the inode).
    fn free_contents(&self, n: &NodeInner, st: &mut State) -> KResult<()> {
        let i = &st.inode;
        let has_blocks = match i.kind {
            FileType::Regular | FileType::Directory => true,
            FileType::Symlink => {
                let ea = if i.file_acl != 0 { self.spb() } else { 0 };
                i.blocks512.saturating_sub(ea) > 0
            }
            _ => false,
        };
        if has_blocks {
            let max = self.max_lblocks(&st.inode);
            self.punch(n, st, 0, max)?;
        }
        if st.inode.file_acl != 0 {
            let _x = self.xattr_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.release_xattr_block(n.ino, st.inode.file_acl)?;
            st.inode.file_acl = 0;
            st.inode.blocks512 = st.inode.blocks512.saturating_sub(self.spb());
        }
        Ok(())
    }

    /// Frees inode `n` for good: contents, record (links 0, dtime set), bitmap bit.
    fn destroy(&self, n: &NodeInner, st: &mut State) -> KResult<()> {
        self.free_contents(n, st)?;
        let dir = st.inode.kind == FileType::Directory;
        st.inode.links = 0;
        st.inode.size = 0;
        st.inode.dtime = self.now().sec as u32;
        self.write_inode(n.ino, &mut st.inode)?;
        st.freed = true;
        {
            let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
            let ctx = alloc::Ctx { sb: &self.sb, dev: &self.dev, zones: &self.zones, name: &self.name };
            ctx.free_inode(&mut a, n.ino, dir)?;
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&n.ino);
        Ok(())
    }

    pub(crate) fn do_inactive(&self, n: &Arc<NodeInner>) -> KResult<()> {
        let mut st = n.write();
        if st.freed || st.inode.links > 0 {
            return Ok(());
        }
        self.destroy(n, &mut st)
    }

    /// A fresh in-memory inode for a new file.
    fn new_inode(&self, ino: u32, parent: &Inode, nn: &NewNode, extents: bool) -> (Inode, u32) {
        let isz = self.sb.inode_size as usize;
        let now = self.now();
        let extra = if isz > 128 { 32.min(isz - 128) as u16 } else { 0 };
        let generation = self.next_generation();
        let mut block = [0u8; 60];
        if extents {
            block = extent::empty_root();
        }
        if matches!(nn.kind, FileType::CharDevice | FileType::BlockDevice) {
            let major = (nn.rdev >> 8) & 0xfff;
            let minor = (nn.rdev & 0xff) | ((nn.rdev >> 12) & 0xfff00);
            if major < 256 && minor < 256 {
                put32(&mut block, 0, (major << 8) | minor);
            } else {
                put32(&mut block, 4, (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12));
            }
        }
        let inode = Inode {
            mode: (nn.kind.mode_bits() | (nn.perm & 0o7777)) as u16,
            kind: nn.kind,
            uid: nn.uid,
            gid: nn.gid,
            size: 0,
            atime: now,
            ctime: now,
            mtime: now,
            crtime: (extra >= 24).then_some(now),
            links: if nn.kind == FileType::Directory { 2 } else { 1 },
            blocks512: 0,
            flags: (parent.flags & flags::INHERITED) | if extents { flags::EXTENTS } else { 0 },
            block,
            generation,
            file_acl: 0,
            dtime: 0,
            extra_isize: extra,
            raw: vec![0u8; isz],
        };
        let seed = if self.sb.metadata_csum() { super::inode::csum_seed(&self.sb, ino, generation) } else { 0 };
        (inode, seed)
    }

    /// create, mknod, mkdir and symlink.
    pub(crate) fn do_create(&self, dir: &Arc<NodeInner>, name: &[u8], nn: &NewNode, target: Option<&[u8]>) -> KResult<u32> {
        let _ns = self.ns.read().unwrap_or_else(|e| e.into_inner());
        let mut ds = dir.write();
        if ds.freed || ds.inode.links == 0 {
            return Err(Errno::ENOENT);
        }
        if ds.inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir_lookup(dir, &ds.inode, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let is_dir = nn.kind == FileType::Directory;
        if target.is_some_and(|t| t.len() as u64 >= self.bs()) {
            return Err(Errno::ENAMETOOLONG);
        }
        let fast_link = target.is_some_and(|t| t.len() < 60);
        let extents = self.sb.has_incompat(incompat::EXTENTS)
            && matches!(nn.kind, FileType::Regular | FileType::Directory | FileType::Symlink)
            && !fast_link;
        let ino = {
            let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
            let ctx = alloc::Ctx { sb: &self.sb, dev: &self.dev, zones: &self.zones, name: &self.name };
            ctx.alloc_inode(&mut a, dir.ino, is_dir, dir.ino == ROOT_INO)?
        };
        let (inode, seed) = self.new_inode(ino, &ds.inode, nn, extents);
        let child = Arc::new(NodeInner {
            ino,
            seed,
            st: RwLock::new(State { inode, hint: 0, ext: None, freed: false }),
            map: Mutex::new(Default::default()),
            names: Mutex::new(Names::Unbuilt),
        });
        let r = (|| -> KResult<()> {
            let mut cs = child.write();
            if is_dir {
                let bs = self.bs() as usize;
                let limit = bs - self.csum_tail();
                let goal = alloc::group_first(&self.sb, (ino - 1) / self.sb.inodes_per_group);
                let lim = if extents { u64::MAX } else { 1 << 32 };
                let (p, _) = self.alloc_blocks(goal, 1, lim)?;
                let ft = self.sb.has_incompat(incompat::FILETYPE);
                let mut b = vec![0u8; bs];
                put_rec(&mut b, 0, ino, 12, b".", if ft { 2 } else { 0 });
                put_rec(&mut b, 12, dir.ino, limit - 12, b"..", if ft { 2 } else { 0 });
                if let Err(e) = self.put_dir_block(&child, p, b).and_then(|()| self.map_new(&child, &mut cs, 0, p, 1, false)) {
                    let _ = self.free_runs(&[(p, 1)]);
                    return Err(e);
                }
                cs.inode.size = bs as u64;
            }
            if let Some(t) = target {
                if fast_link {
                    cs.inode.block[..t.len()].copy_from_slice(t);
                } else {
                    let (_, r) = self.write_data(&child, &mut cs, 0, t);
                    r?;
                }
                cs.inode.size = t.len() as u64;
            }
            self.write_inode(ino, &mut cs.inode)?;
            self.dir_add(dir, &mut ds, name, ino, nn.kind)?;
            Ok(())
        })();
        if let Err(e) = r {
            let mut cs = child.write();
            cs.inode.links = 0;
            if let Err(e2) = self.destroy(&child, &mut cs) {
                log::error!("{}: inode {ino}: cannot undo a failed create: {e2}", self.name);
            }
            return Err(e);
        }
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(ino, Arc::downgrade(&child));
        if is_dir {
            self.inc_dir_links(&mut ds);
        }
        let now = self.now();
        ds.inode.mtime = now;
        ds.inode.ctime = now;
        self.write_inode(dir.ino, &mut ds.inode)?;
        // Keep the new node alive in the live map until a vnode takes it.
        drop(ds);
        let _keep = child;
        Ok(ino)
    }

    pub(crate) fn do_link(&self, n: &Arc<NodeInner>, dir: &Arc<NodeInner>, name: &[u8]) -> KResult<()> {
        let _ns = self.ns.read().unwrap_or_else(|e| e.into_inner());
        let mut ds = dir.write();
        let mut st = n.write();
        if ds.freed || ds.inode.links == 0 || st.freed || st.inode.links == 0 {
            return Err(Errno::ENOENT);
        }
        if st.inode.kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        if st.inode.links >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        if self.dir_lookup(dir, &ds.inode, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.dir_add(dir, &mut ds, name, n.ino, st.inode.kind)?;
        let now = self.now();
        st.inode.links += 1;
        st.inode.ctime = now;
        self.write_inode(n.ino, &mut st.inode)?;
        ds.inode.mtime = now;
        ds.inode.ctime = now;
        self.write_inode(dir.ino, &mut ds.inode)
    }

    /// unlink and rmdir.
    pub(crate) fn do_remove(&self, dir: &Arc<NodeInner>, name: &[u8], n: &Arc<NodeInner>, is_dir: bool) -> KResult<()> {
        let _ns = self.ns.read().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(dir, n) {
            return Err(Errno::EINVAL);
        }
        let mut ds = dir.write();
        let mut st = n.write();
        if ds.freed || st.freed {
            return Err(Errno::ENOENT);
        }
        match self.dir_locate(dir, &ds, name)? {
            Some((_, ino)) if ino == n.ino => {}
            _ => return Err(Errno::ENOENT),
        }
        if is_dir != (st.inode.kind == FileType::Directory) {
            return Err(if is_dir { Errno::ENOTDIR } else { Errno::EISDIR });
        }
        if is_dir && !self.dir_is_empty(n, &st)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_remove(dir, &mut ds, name)?;
        let now = self.now();
        if is_dir {
            st.inode.links = 0;
            self.dec_dir_links(dir, &mut ds)?;
        } else {
            st.inode.links = st.inode.links.saturating_sub(1);
        }
        st.inode.ctime = now;
        self.write_inode(n.ino, &mut st.inode)?;
        ds.inode.mtime = now;
        ds.inode.ctime = now;
        self.write_inode(dir.ino, &mut ds.inode)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_rename(
        &self,
        sdir: &Arc<NodeInner>,
        sname: &[u8],
        svn: &Arc<NodeInner>,
        ddir: &Arc<NodeInner>,
        dname: &[u8],
        dvn: Option<&Arc<NodeInner>>,
        mode: RenameMode,
    ) -> KResult<()> {
        let _ns = self.ns.write().unwrap_or_else(|e| e.into_inner());
        let mut nodes: Vec<&Arc<NodeInner>> = vec![sdir, ddir, svn];
        nodes.extend(dvn);
        nodes.sort_by_key(|n| n.ino);
        nodes.dedup_by_key(|n| n.ino);
        let mut guards: Vec<(u32, std::sync::RwLockWriteGuard<'_, State>)> = nodes.iter().map(|n| (n.ino, n.write())).collect();
        macro_rules! st {
            ($ino:expr) => {
                &mut *guards.iter_mut().find(|(i, _)| *i == $ino).ok_or(Errno::EIO)?.1
            };
        }
        for (_, g) in &guards {
            if g.freed {
                return Err(Errno::ENOENT);
            }
        }
        let same = sdir.ino == ddir.ino;
        match self.dir_locate(sdir, st!(sdir.ino), sname)? {
            Some((_, i)) if i == svn.ino => {}
            _ => return Err(Errno::ENOENT),
        }
        let found = self.dir_locate(ddir, st!(ddir.ino), dname)?.map(|(_, i)| i);
        match (found, dvn) {
            (None, None) => {}
            (Some(i), Some(d)) if i == d.ino => {}
            (Some(_), None) => return Err(Errno::EEXIST),
            _ => return Err(Errno::ENOENT),
        }
        let skind = st!(svn.ino).inode.kind;
        let sdir_is = skind == FileType::Directory;
        let now = self.now();
        if mode == RenameMode::Exchange {
            let d = dvn.ok_or(Errno::ENOENT)?;
            let dkind = st!(d.ino).inode.kind;
            let ddir_is = dkind == FileType::Directory;
            self.dir_set(sdir, st!(sdir.ino), sname, d.ino, dkind)?;
            self.dir_set(ddir, st!(ddir.ino), dname, svn.ino, skind)?;
            if !same {
                if sdir_is {
                    self.dir_set(svn, st!(svn.ino), b"..", ddir.ino, FileType::Directory)?;
                }
                if ddir_is {
                    self.dir_set(d, st!(d.ino), b"..", sdir.ino, FileType::Directory)?;
                }
                if sdir_is && !ddir_is {
                    self.dec_dir_links(sdir, st!(sdir.ino))?;
                    self.inc_dir_links(st!(ddir.ino));
                } else if ddir_is && !sdir_is {
                    self.dec_dir_links(ddir, st!(ddir.ino))?;
                    self.inc_dir_links(st!(sdir.ino));
                }
            }
            for n in [svn, d] {
                let s = st!(n.ino);
                s.inode.ctime = now;
            }
        } else {
            if let Some(d) = dvn {
                let ds = st!(d.ino);
                if ds.inode.kind == FileType::Directory && !self.dir_is_empty(d, ds)? {
                    return Err(Errno::ENOTEMPTY);
                }
                self.dir_set(ddir, st!(ddir.ino), dname, svn.ino, skind)?;
            } else {
                self.dir_add(ddir, st!(ddir.ino), dname, svn.ino, skind)?;
            }
            self.dir_remove(sdir, st!(sdir.ino), sname)?;
            if sdir_is && !same {
                self.dir_set(svn, st!(svn.ino), b"..", ddir.ino, FileType::Directory)?;
                self.dec_dir_links(sdir, st!(sdir.ino))?;
                self.inc_dir_links(st!(ddir.ino));
            }
            if let Some(d) = dvn {
                let dis = st!(d.ino).inode.kind == FileType::Directory;
                {
                    let ds = st!(d.ino);
                    if dis {
                        ds.inode.links = 0;
                    } else {
                        ds.inode.links = ds.inode.links.saturating_sub(1);
                    }
                    ds.inode.ctime = now;
                }
                if dis {
                    self.dec_dir_links(ddir, st!(ddir.ino))?;
                }
            }
            st!(svn.ino).inode.ctime = now;
        }
        for n in [sdir, ddir] {
            let s = st!(n.ino);
            s.inode.mtime = now;
            s.inode.ctime = now;
        }
        for (ino, g) in guards.iter_mut() {
            self.write_inode(*ino, &mut g.inode)?;
        }
        Ok(())
    }

    pub(crate) fn do_write(&self, n: &Arc<NodeInner>, off: u64, data: &[u8]) -> KResult<usize> {
        let mut st = n.write();
        if st.freed {
            return Err(Errno::ESTALE);
        }
        match st.inode.kind {
            FileType::Regular => {}
            FileType::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let end = off.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > self.max_lblocks(&st.inode).saturating_mul(self.bs()) {
            return Err(Errno::EFBIG);
        }
        let old = st.inode.size;
        if off > old {
            self.zero_tail(n, &mut st, old)?;
        }
        let (done, r) = self.write_data(n, &mut st, off, data);
        if done > 0 {
            let now = self.now();
            st.inode.size = st.inode.size.max(off + done);
            st.inode.mtime = now;
            st.inode.ctime = now;
            self.note_size(&st.inode);
        }
        self.write_inode(n.ino, &mut st.inode)?;
        match r {
            Ok(()) => Ok(done as usize),
            Err(e) if done == 0 => Err(e),
            Err(_) => Ok(done as usize),
        }
    }

    pub(crate) fn do_setattr(&self, n: &Arc<NodeInner>, set: &SetAttr) -> KResult<()> {
        let mut st = n.write();
        if st.freed {
            return Err(Errno::ESTALE);
        }
        let now = self.now();
        if let Some(sz) = set.size {
            if st.inode.kind != FileType::Regular {
                return Err(if st.inode.kind == FileType::Directory { Errno::EISDIR } else { Errno::EINVAL });
            }
            if sz != st.inode.size {
                let r = self.truncate(n, &mut st, sz);
                if let Err(e) = r {
                    self.write_inode(n.ino, &mut st.inode)?;
                    return Err(e);
                }
                st.inode.mtime = now;
            }
        }
        if let Some(p) = set.perm {
            st.inode.mode = (st.inode.mode & 0o170000) | (p & 0o7777) as u16;
        }
        if let Some(u) = set.uid {
            st.inode.uid = u;
        }
        if let Some(g) = set.gid {
            st.inode.gid = g;
        }
        if let Some(t) = set.atime {
            st.inode.atime = t;
        }
        if let Some(t) = set.mtime {
            st.inode.mtime = t;
        }
        st.inode.ctime = now;
        self.write_inode(n.ino, &mut st.inode)
    }

    pub(crate) fn do_fallocate(&self, n: &Arc<NodeInner>, mode: u32, off: u64, len: u64) -> KResult<()> {
        let mut st = n.write();
        if st.freed {
            return Err(Errno::ESTALE);
        }
        match st.inode.kind {
            FileType::Regular => {}
            FileType::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::ENODEV),
        }
        let bs = self.bs();
        let end = off.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > self.max_lblocks(&st.inode).saturating_mul(bs) {
            return Err(Errno::EFBIG);
        }
        let now = self.now();
        match mode {
            0 | FALLOC_KEEP_SIZE => {
                let ext = Self::is_ext(&st.inode);
                if !ext && mode == FALLOC_KEEP_SIZE && end > st.inode.size.next_multiple_of(bs) {
                    // Block-mapped files cannot keep blocks past their size.
                    return Err(Errno::EOPNOTSUPP);
                }
                if mode == 0 && end > st.inode.size {
                    let old = st.inode.size;
                    self.zero_tail(n, &mut st, old)?;
                }
                let mut l = off / bs;
                let last = end.div_ceil(bs);
                let mut r = Ok(());
                while l < last {
                    let (slot, cnt) = self.wslot(n, &mut st, l, last - l)?;
                    let cnt = cnt.min(last - l).max(1);
                    if slot != Slot::Hole {
                        l += cnt;
                        continue;
                    }
                    let goal = self.goal(n, &mut st, l)?;
                    let lim = if ext { u64::MAX } else { 1 << 32 };
                    let (p, got) = match self.alloc_blocks(goal, cnt.min(if ext { extent::MAX_UNWRITTEN } else { cnt }), lim) {
                        Ok(x) => x,
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    };
                    if !ext {
                        for k in 0..got {
                            self.dev.bwrite(p + k, vec![0u8; bs as usize])?;
                        }
                    }
                    if let Err(e) = self.map_new(n, &mut st, l, p, got, ext) {
                        let _ = self.free_runs(&[(p, got)]);
                        r = Err(e);
                        break;
                    }
                    l += got;
                }
                if r.is_ok() && mode == 0 && end > st.inode.size {
                    st.inode.size = end;
                    self.note_size(&st.inode);
                }
                st.inode.ctime = now;
                self.write_inode(n.ino, &mut st.inode)?;
                r
            }
            m if m == FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE => {
                let size = st.inode.size;
                let end = end.min(size.max(end));
                // Partial blocks at the edges are zeroed in place.
                let first_full = off.div_ceil(bs);
                let last_full = end / bs;
                let zero = |st: &mut State, a: u64, b: u64| -> KResult<()> {
                    if a >= b {
                        return Ok(());
                    }
                    if let (Slot::Mapped(p), _) = self.wslot(n, st, a / bs, 1)? {
                        let mut blk = self.dev.bread(p)?.to_vec();
                        blk[(a % bs) as usize..(a % bs + (b - a)) as usize].fill(0);
                        self.dev.bwrite(p, blk)?;
                    }
                    Ok(())
                };
                if first_full > last_full {
                    zero(&mut st, off, end)?;
                } else {
                    zero(&mut st, off, (first_full * bs).min(end))?;
                    if last_full * bs < end {
                        zero(&mut st, last_full * bs, end)?;
                    }
                    self.punch(n, &mut st, first_full, last_full)?;
                }
                st.inode.mtime = now;
                st.inode.ctime = now;
                self.write_inode(n.ino, &mut st.inode)
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    // ----- extended attributes -----

    /// Drops one reference to xattr block `blk` (freeing it with the last). Caller holds the
    /// xattr lock.
    fn release_xattr_block(&self, ino: u32, blk: u64) -> KResult<()> {
        if !self.blocks_in_range(blk, 1) || self.zones_overlap(blk, 1) {
            self.corrupt(ino, format!("extended attribute block {blk} is outside the file system"));
            return Err(Errno::EIO);
        }
        let buf = self.dev.bread(blk)?;
        if le32(&buf, 0) != xattr::MAGIC {
            self.corrupt(ino, format!("extended attribute block {blk} has a bad header"));
            return Err(Errno::EIO);
        }
        let refs = le32(&buf, 4);
        if refs <= 1 {
            self.free_runs(&[(blk, 1)])
        } else {
            let mut b = buf.to_vec();
            put32(&mut b, 4, refs - 1);
            if self.sb.metadata_csum() {
                update::set_xattr_block_csum(&self.sb, &mut b, blk);
            }
            self.dev.bwrite(blk, b)
        }
    }

    /// setxattr (`value` given) and removexattr (`None`).
    pub(crate) fn do_setxattr(&self, n: &Arc<NodeInner>, name: &[u8], value: Option<&[u8]>, fl: XattrFlags) -> KResult<()> {
        let mut st = n.write();
        if st.freed {
            return Err(Errno::ESTALE);
        }
        let (index, suffix) = xattr::split_name(name).ok_or(Errno::EOPNOTSUPP)?;
        // An access ACL sets the permission bits (as Linux's posix_acl_update_mode does); one
        // that says no more than the mode is not stored at all.
        let mut acl_is_mode = false;
        if let (2, Some(v)) = (index, value) {
            let (perm, minimal) = acl_mode(v).ok_or(Errno::EINVAL)?;
            st.inode.mode = (st.inode.mode & !0o777) | perm;
            acl_is_mode = minimal;
        }
        let value = if acl_is_mode { None } else { value };
        let stored = match value {
            Some(v) if matches!(index, 2 | 3) => Some(xattr::xattr_to_acl(v).map_err(|_| Errno::EINVAL)?),
            Some(v) => Some(v.to_vec()),
            None => None,
        };
        let _x = self.xattr_lock.lock().unwrap_or_else(|e| e.into_inner());
        let inode = &st.inode;
        let extra_end = super::inode::GOOD_OLD_SIZE + usize::from(inode.extra_isize);
        let mut all = if inode.raw.len() > extra_end {
            xattr::parse_inode_raw(&inode.raw[extra_end..]).map_err(|m| {
                self.corrupt(n.ino, format!("in-inode extended attributes: {m}"));
                Errno::EIO
            })?
        } else {
            Vec::new()
        };
        let old_blk = inode.file_acl;
        let mut old_refs = 0;
        if old_blk != 0 {
            if !self.blocks_in_range(old_blk, 1) || self.zones_overlap(old_blk, 1) {
                self.corrupt(n.ino, format!("extended attribute block {old_blk} is outside the file system"));
                return Err(Errno::EIO);
            }
            let buf = self.dev.bread(old_blk)?;
            let seed = self.sb.metadata_csum().then_some(self.sb.csum_seed);
            let more = xattr::parse_block_raw(&buf, old_blk, seed).map_err(|m| {
                self.corrupt(n.ino, format!("extended attribute block {old_blk}: {m}"));
                Errno::EIO
            })?;
            old_refs = le32(&buf, 4);
            all.extend(more);
        }
        let pos = all.iter().position(|x| x.index == index && x.name == suffix);
        match (&stored, pos) {
            (None, None) if acl_is_mode => {
                st.inode.ctime = self.now();
                return self.write_inode(n.ino, &mut st.inode);
            }
            (None, None) => return Err(Errno::ENODATA),
            (None, Some(i)) => {
                all.remove(i);
            }
            (Some(_), Some(_)) if fl.create => return Err(Errno::EEXIST),
            (Some(_), None) if fl.replace => return Err(Errno::ENODATA),
            (Some(v), Some(i)) => all[i].value = v.clone(),
            (Some(v), None) => all.push(xattr::RawXattr { index, name: suffix.to_vec(), value: v.clone() }),
        }
        // Place: in the inode while it fits, the rest in one block.
        let area = st.inode.raw.len().saturating_sub(extra_end);
        let mut in_inode = Vec::new();
        let mut in_block = Vec::new();
        let mut used = 8; // magic and terminator
        for x in all {
            if area >= 8 && used + x.space() <= area && x.value.len() < area {
                used += x.space();
                in_inode.push(x);
            } else {
                in_block.push(x);
            }
        }
        let bs = self.bs() as usize;
        let mut block = vec![0u8; bs];
        let hashes = if in_block.is_empty() {
            Vec::new()
        } else {
            in_block.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
            xattr::encode(&mut block, xattr::BLOCK_HEADER, 0, &in_block).ok_or(Errno::ENOSPC)?
        };
        // The in-inode area.
        let mut raw = st.inode.raw.clone();
        if area >= 8 {
            let a = &mut raw[extra_end..];
            a.fill(0);
            if !in_inode.is_empty() {
                a[0..4].copy_from_slice(&xattr::MAGIC.to_le_bytes());
                xattr::encode(&mut a[4..], 0, 0, &in_inode).ok_or(Errno::ENOSPC)?;
            }
        }
        // The block: rewritten in place if it is ours alone, else a new one.
        let spb = self.spb();
        let mut new_acl = old_blk;
        let mut blocks512 = st.inode.blocks512;
        if in_block.is_empty() {
            if old_blk != 0 {
                self.release_xattr_block(n.ino, old_blk)?;
                new_acl = 0;
                blocks512 = blocks512.saturating_sub(spb);
            }
        } else {
            put32(&mut block, 0, xattr::MAGIC);
            put32(&mut block, 4, 1);
            put32(&mut block, 8, 1);
            put32(&mut block, 12, update::xattr_block_hash(&hashes));
            let target = if old_blk != 0 && old_refs <= 1 {
                old_blk
            } else {
                let goal = alloc::group_first(&self.sb, (n.ino - 1) / self.sb.inodes_per_group);
                let (b, _) = self.alloc_blocks(goal, 1, u64::MAX)?;
                if old_blk != 0 {
                    if let Err(e) = self.release_xattr_block(n.ino, old_blk) {
                        let _ = self.free_runs(&[(b, 1)]);
                        return Err(e);
                    }
                } else {
                    blocks512 += spb;
                }
                b
            };
            if self.sb.metadata_csum() {
                update::set_xattr_block_csum(&self.sb, &mut block, target);
            }
            self.dev.bwrite(target, block)?;
            new_acl = target;
        }
        st.inode.raw = raw;
        st.inode.file_acl = new_acl;
        st.inode.blocks512 = blocks512;
        st.inode.ctime = self.now();
        self.write_inode(n.ino, &mut st.inode)
    }
}

