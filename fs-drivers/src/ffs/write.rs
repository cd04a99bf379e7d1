//! The write operations: file data through the block map (fragments at the end of small
//! files, grown in place when the fragments after them are free and moved to a larger run
//! otherwise; indirect blocks as needed; holes stay holes), truncation both ways, directory
//! entries in 512-byte chunks (records split, chunks compacted, new chunks appended),
//! creation and removal of files, links, rename, attributes, and the superblock state of a
//! read-write mount.
//!
//! Every change goes to the buffer cache as it is made (inode records included); cylinder
//! groups and the summary area are written into the cache at sync. An error part way
//! (ENOSPC, a damaged block) leaves the file system consistent: what was allocated is either
//! attached to the file (and counted) or freed again.

use super::alloc::{self, Alloc};
use super::dir::{self, DIRBLKSIZ};
use super::inode::{self, Inode};
use super::superblock::{flags, NDADDR, NIADDR};
use super::update;
use super::{FfsFs, Names, NodeInner, State};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use vfs_faction::{Errno, FileType, KResult, NewNode, RenameMode, SetAttr, Timespec};

/// Most links a file may have (`UFS_LINK_MAX`).
const LINK_MAX: u16 = 32767;
/// Flags cleared while we hold the file system read-write (we keep no soft-updates order and
/// write no journal), put back at a clean unmount.
const CLEARED_WHILE_MOUNTED: u32 = flags::FS_DOSOFTDEP | flags::FS_SUJ | flags::FS_DOWAPBL;

/// A live record of a directory chunk: (position, inode, record length, type, name).
type Rec = (usize, u32, usize, u8, Vec<u8>);

impl FfsFs {
    pub(crate) fn ro(&self) -> KResult<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    pub(crate) fn now(&self) -> Timespec {
        self.hyper.clock_realtime()
    }

    pub(crate) fn lock_alloc(&self) -> MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn actx(&self) -> alloc::Ctx<'_> {
        alloc::Ctx { sb: &self.sb, dev: &self.dev, name: &self.name, now: self.now() }
    }

    /// Writes the dirty cylinder groups and the summary area into the buffer cache.
    pub(crate) fn flush_alloc(&self) -> KResult<()> {
        let ctx = self.actx();
        self.lock_alloc().flush(&ctx)
    }

    /// Writes the superblock with the current totals and time; `state`: `fs_clean` and
    /// `fs_flags` to store (at unmount), else the mounted state (not clean, flags cleared).
    pub(crate) fn write_sb(&self, state: Option<(u8, u32)>) -> KResult<()> {
        let total = self.lock_alloc().total;
        let now = self.now();
        let mut raw = self.raw_sb.lock().unwrap_or_else(|e| e.into_inner());
        update::sb_set_totals(&self.sb, &mut raw, &total);
        update::sb_set_time(&self.sb, &mut raw, now);
        let (clean, fl) = state.unwrap_or((0, self.orig_flags & !CLEARED_WHILE_MOUNTED));
        update::sb_set_clean(&mut raw, clean);
        update::sb_set_flags(&self.sb, &mut raw, fl);
        // No soft updates: nothing is pending.
        self.sb.order.put_i64(&mut raw, super::superblock::off::PENDINGBLOCKS, 0);
        self.sb.order.put_i64(&mut raw, super::superblock::off::PENDINGINODES, 0);
        update::write_superblock(&self.sb, &self.dev, &mut raw)
    }

    /// Marks the file system in use (not clean, mount time) and flushes.
    pub(crate) fn mark_mounted(&self) -> KResult<()> {
        {
            let mut raw = self.raw_sb.lock().unwrap_or_else(|e| e.into_inner());
            update::sb_set_mtime(&self.sb, &mut raw, self.now());
        }
        self.write_sb(None)?;
        self.dev.device().flush()
    }

    /// A new inode generation number (never 0).
    fn next_generation(&self) -> u32 {
        let mut r = [0u8; 4];
        self.hyper.random(&mut r);
        let g = u32::from_le_bytes(r) ^ self.gen.fetch_add(0x9E37_79B9, Ordering::Relaxed) ^ self.now().nsec;
        g.max(1)
    }

    /// The in-memory inode of `ino`, shared with every vnode that has it.
    pub(crate) fn get_node(&self, ino: u32) -> KResult<Arc<NodeInner>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get(&ino).and_then(Weak::upgrade) {
            return Ok(n);
        }
        let inode = self.read_inode(ino)?;
        let n = Arc::new(NodeInner { ino, st: RwLock::new(State { inode, hint: 0, freed: false }), names: Mutex::new(Names::Unbuilt) });
        if live.len() > 4096 && live.len().is_power_of_two() {
            live.retain(|_, w| w.strong_count() > 0);
        }
        live.insert(ino, Arc::downgrade(&n));
        Ok(n)
    }

    /// Writes an in-memory inode to its fragment (in the cache).
    pub(crate) fn write_inode(&self, ino: u32, inode: &mut Inode) -> KResult<()> {
        let raw = inode.encode(&self.sb).to_vec();
        let _l = self.itable.lock().unwrap_or_else(|e| e.into_inner());
        update::write_inode_raw(&self.sb, &self.dev, ino, &raw)
    }

    // ----- block map -----

    fn fsz(&self) -> u64 {
        u64::from(self.sb.fsize)
    }

    /// Fragments block `lbn` holds in a file of `size` bytes (FFS `blksize`): a whole block
    /// but for the last block of a small file.
    fn frags_for(&self, size: u64, lbn: u64) -> u32 {
        let bs = self.bs();
        if lbn >= NDADDR as u64 || size >= (lbn + 1) * bs {
            return self.sb.frag;
        }
        (size.saturating_sub(lbn * bs).div_ceil(self.fsz()) as u32).clamp(1, self.sb.frag)
    }

    /// 512-byte units of `n` fragments.
    fn units(&self, n: u32) -> u64 {
        u64::from(n) * self.fsz() / 512
    }

    /// The fragment address of logical block `lbn` (0: a hole).
    fn ptr(&self, ino: u32, inode: &Inode, lbn: u64) -> KResult<u64> {
        Ok(self.bmap(ino, inode, lbn, 1)?.phys.unwrap_or(0))
    }

    /// Writes pointer `i` of the indirect block at `blk`.
    fn put_indir_ptr(&self, blk: u64, i: u64, v: u64) -> KResult<()> {
        let ps: u64 = if self.sb.ufs2 { 8 } else { 4 };
        let byte = i * ps;
        let fs = self.fsz();
        let f = blk + byte / fs;
        let mut b = self.dev.bread(f)?.to_vec();
        let at = (byte % fs) as usize;
        if self.sb.ufs2 {
            self.sb.order.put_u64(&mut b, at, v);
        } else {
            self.sb.order.put_u32(&mut b, at, v as u32);
        }
        self.dev.bwrite(f, b)
    }

    /// Where to put logical block `lbn` of a file (FFS `ffs_blkpref`): after the previous
    /// block, a new group with average free space every `fs_maxbpg` blocks past the first
    /// indirect block, else the file's own group.
    fn blkpref(&self, ino: u32, inode: &Inode, lbn: u64) -> KResult<(u64, u32)> {
        let sb = &self.sb;
        let icg = ino / sb.ipg;
        if lbn > 0 && lbn % u64::from(sb.maxbpg) != 0 {
            let prev = self.ptr(ino, inode, lbn - 1)?;
            if prev != 0 {
                return Ok((prev + u64::from(sb.frag), (prev / u64::from(sb.fpg)) as u32));
            }
        }
        if lbn < NDADDR as u64 + u64::from(sb.nindir) {
            return Ok((sb.cgdmin(icg), icg));
        }
        let start = (u64::from(icg) + lbn / u64::from(sb.maxbpg)) % u64::from(sb.ncg);
        let c = self.lock_alloc().group_with_space(sb, start as u32);
        Ok((sb.cgdmin(c), c))
    }

    fn alloc_frags(&self, pref: (u64, u32), n: u32) -> KResult<u64> {
        let ctx = self.actx();
        self.lock_alloc().alloc(&ctx, pref.0, pref.1, n)
    }

    fn free_list(&self, list: &[(u64, u32)]) -> KResult<()> {
        if list.is_empty() {
            return Ok(());
        }
        let ctx = self.actx();
        let mut a = self.lock_alloc();
        let mut r = Ok(());
        for &(addr, n) in list {
            if let Err(e) = a.free_frags(&ctx, addr, n) {
                r = Err(e);
            }
        }
        r
    }

    /// A new zeroed indirect block for the file, counted in its blocks.
    fn alloc_indir(&self, ino: u32, inode: &mut Inode, lbn: u64) -> KResult<u64> {
        let pref = self.blkpref(ino, inode, lbn)?;
        let b = self.alloc_frags(pref, self.sb.frag)?;
        let fs = self.sb.fsize as usize;
        for k in 0..u64::from(self.sb.frag) {
            if let Err(e) = self.dev.bwrite(b + k, vec![0u8; fs]) {
                let _ = self.free_list(&[(b, self.sb.frag)]);
                return Err(e);
            }
        }
        inode.blocks += self.units(self.sb.frag);
        Ok(b)
    }

    /// Sets the pointer of logical block `lbn` to `addr`, allocating indirect blocks on the
    /// way (they stay, empty, if a later step fails).
    fn set_ptr(&self, ino: u32, inode: &mut Inode, lbn: u64, addr: u64) -> KResult<()> {
        if lbn < NDADDR as u64 {
            inode.db[lbn as usize] = addr;
            return Ok(());
        }
        let nindir = u64::from(self.sb.nindir);
        let (level, idx) = super::bmap::path(nindir, lbn).ok_or(Errno::EFBIG)?;
        let frag = u64::from(self.sb.frag);
        let mut blk = inode.ib[level];
        if blk == 0 {
            blk = self.alloc_indir(ino, inode, lbn)?;
            inode.ib[level] = blk;
        } else {
            self.check_data_addr(ino, blk, frag, "indirect block")?;
        }
        for &i in idx.iter().take(level) {
            let p = self.indir_ptr(blk, i)?;
            let next = if p == 0 {
                let nb = self.alloc_indir(ino, inode, lbn)?;
                self.put_indir_ptr(blk, i, nb)?;
                nb
            } else {
                self.check_data_addr(ino, p, frag, "indirect block")?;
                p
            };
            blk = next;
        }
        self.put_indir_ptr(blk, idx[level], addr)
    }

    /// Grows block `lbn` (at `cur`, `have` fragments) to `need` fragments: in place when the
    /// following fragments are free, else moved (data copied, old run freed). Returns the
    /// new address.
    fn resize_frags(&self, ino: u32, inode: &mut Inode, lbn: u64, cur: u64, have: u32, need: u32) -> KResult<u64> {
        self.check_data_addr(ino, cur, u64::from(have), "data block")?;
        let ctx = self.actx();
        if self.lock_alloc().extend_in_place(&ctx, cur, have, need)? {
            inode.blocks += self.units(need - have);
            return Ok(cur);
        }
        let new = self.alloc_frags((cur, (cur / u64::from(self.sb.fpg)) as u32), need)?;
        let copy = (|| -> KResult<()> {
            for k in 0..u64::from(have) {
                let b = self.dev.bread(cur + k)?.to_vec();
                self.dev.bwrite(new + k, b)?;
            }
            Ok(())
        })();
        if let Err(e) = copy {
            let _ = self.free_list(&[(new, need)]);
            return Err(e);
        }
        self.set_ptr(ino, inode, lbn, new)?;
        inode.blocks += self.units(need - have);
        self.free_list(&[(cur, have)])?;
        Ok(new)
    }

    /// Before the file grows into block `lbn`: a last block that is a fragment run becomes a
    /// whole block (only the last block of a file may be partial). Returns what was grown
    /// (block, its address now, fragments it had), so a failure after it can undo it.
    fn grow_last(&self, ino: u32, inode: &mut Inode, lbn: u64) -> KResult<Option<(u64, u64, u32)>> {
        let size = inode.size;
        if size == 0 {
            return Ok(None);
        }
        let nb = (size - 1) / self.bs();
        if nb >= NDADDR as u64 || nb >= lbn {
            return Ok(None);
        }
        let have = self.frags_for(size, nb);
        let cur = inode.db[nb as usize];
        if cur == 0 || have == self.sb.frag {
            return Ok(None);
        }
        // The new fragments must read as zeros.
        let new = self.resize_frags(ino, inode, nb, cur, have, self.sb.frag)?;
        let fs = self.sb.fsize as usize;
        for k in have..self.sb.frag {
            self.dev.bwrite(new + u64::from(k), vec![0u8; fs])?;
        }
        Ok(Some((nb, new, have)))
    }

    /// Undoes a [`FfsFs::grow_last`] whose file did not grow past the block after all: the
    /// block keeps only the fragments its size needs.
    fn ungrow_last(&self, inode: &mut Inode, grown: Option<(u64, u64, u32)>) {
        let Some((nb, addr, have)) = grown else { return };
        if inode.size > (nb + 1) * self.bs() || have >= self.sb.frag {
            return;
        }
        let extra = self.sb.frag - have;
        if self.free_list(&[(addr + u64::from(have), extra)]).is_ok() {
            inode.blocks = inode.blocks.saturating_sub(self.units(extra));
        }
    }

    /// Zeroes the bytes after `from` in the block that holds byte `from`, up to the end of
    /// the fragments the block holds (data past the end of file must read as zeros when the
    /// file grows again). `inode.size` is the size the file has now.
    fn zero_after(&self, ino: u32, inode: &Inode, from: u64) -> KResult<()> {
        let fs = self.fsz();
        let bs = self.bs();
        if from % bs == 0 {
            return Ok(());
        }
        let lbn = from / bs;
        let p = self.ptr(ino, inode, lbn)?;
        if p == 0 {
            return Ok(());
        }
        let nfr = u64::from(self.frags_for(inode.size.max(from), lbn));
        for k in (from % bs) / fs..nfr {
            let f = p + k;
            let start = (from % bs).saturating_sub(k * fs).min(fs) as usize;
            let buf = self.dev.bread(f)?;
            if buf[start..].iter().any(|&x| x != 0) {
                let mut b = buf.to_vec();
                b[start..].fill(0);
                self.dev.bwrite(f, b)?;
            }
        }
        Ok(())
    }

    /// Writes the part of `data` (file offset `off`) that falls in block `lbn` into its
    /// `nfr` fragments at `addr`; fragments from `fresh` on hold nothing yet (zero-filled
    /// where the data does not cover them).
    #[allow(clippy::too_many_arguments)]
    fn store(&self, addr: u64, nfr: u32, fresh: u32, lbn: u64, data: &[u8], off: u64) -> KResult<()> {
        let fs = self.fsz();
        let end = off + data.len() as u64;
        for k in 0..nfr {
            let fstart = lbn * self.bs() + u64::from(k) * fs;
            let lo = fstart.max(off);
            let hi = (fstart + fs).min(end);
            let is_fresh = k >= fresh;
            if lo >= hi {
                if is_fresh {
                    self.dev.bwrite(addr + u64::from(k), vec![0u8; fs as usize])?;
                }
                continue;
            }
            let src = &data[(lo - off) as usize..(hi - off) as usize];
            let b = if lo == fstart && hi == fstart + fs {
                src.to_vec()
            } else {
                let mut b = if is_fresh { vec![0u8; fs as usize] } else { self.dev.bread(addr + u64::from(k))?.to_vec() };
                b[(lo - fstart) as usize..(hi - fstart) as usize].copy_from_slice(src);
                b
            };
            self.dev.bwrite(addr + u64::from(k), b)?;
        }
        Ok(())
    }

    /// Writes `data` at `off`, allocating what it needs, and moves the size along block by
    /// block. Returns the bytes written (fewer only with the error that stopped it).
    pub(crate) fn write_range(&self, ino: u32, st: &mut State, off: u64, data: &[u8]) -> (u64, KResult<()>) {
        let bs = self.bs();
        let end = off + data.len() as u64;
        if data.is_empty() {
            return (0, Ok(()));
        }
        if st.inode.size < off {
            if let Err(e) = self.zero_after(ino, &st.inode, st.inode.size) {
                return (0, Err(e));
            }
        }
        let mut lbn = off / bs;
        let last = (end - 1) / bs;
        while lbn <= last {
            let mut grown = None;
            let r = (|| -> KResult<()> {
                let inode = &mut st.inode;
                grown = self.grow_last(ino, inode, lbn)?;
                let size_now = inode.size;
                let block_end = (lbn + 1) * bs;
                let size_after = size_now.max(end.min(block_end));
                let need = self.frags_for(size_after, lbn);
                let cur = self.ptr(ino, inode, lbn)?;
                let (addr, fresh) = if cur == 0 {
                    let pref = self.blkpref(ino, inode, lbn)?;
                    let a = self.alloc_frags(pref, need)?;
                    if let Err(e) = self.set_ptr(ino, inode, lbn, a) {
                        let _ = self.free_list(&[(a, need)]);
                        return Err(e);
                    }
                    inode.blocks += self.units(need);
                    (a, 0)
                } else {
                    let have = self.frags_for(size_now, lbn);
                    if have < need {
                        (self.resize_frags(ino, inode, lbn, cur, have, need)?, have)
                    } else {
                        (cur, need)
                    }
                };
                self.store(addr, need, fresh, lbn, data, off)?;
                inode.size = size_after;
                Ok(())
            })();
            if let Err(e) = r {
                self.ungrow_last(&mut st.inode, grown);
                let done = st.inode.size.clamp(off, end) - off;
                return (done, Err(e));
            }
            lbn += 1;
        }
        (end - off, Ok(()))
    }

    /// Frees what the indirect block `blk` (at `level`: 0 points at data) maps from logical
    /// block `keep` on; its first logical block is `base`. Returns whether it is now empty.
    #[allow(clippy::too_many_arguments)]
    fn trunc_indir(&self, ino: u32, blk: u64, level: usize, base: u64, keep: u64, freed: &mut Vec<(u64, u32)>, depth: u32) -> KResult<bool> {
        let frag = u64::from(self.sb.frag);
        self.check_data_addr(ino, blk, frag, "indirect block")?;
        if depth > NIADDR as u32 {
            self.corrupt(ino, "indirect blocks nested too deep".into());
            return Err(Errno::EIO);
        }
        let nindir = u64::from(self.sb.nindir);
        let span = nindir.pow(level as u32);
        let ps: usize = if self.sb.ufs2 { 8 } else { 4 };
        let fs = self.sb.fsize as usize;
        let mut empty = true;
        for f in 0..frag {
            let buf = self.dev.bread(blk + f)?;
            let mut b = buf.to_vec();
            let mut changed = false;
            for slot in 0..fs / ps {
                let i = f * (fs / ps) as u64 + slot as u64;
                let at = slot * ps;
                let p = if self.sb.ufs2 { self.sb.order.u64(&b, at) } else { u64::from(self.sb.order.u32(&b, at)) };
                if p == 0 {
                    continue;
                }
                let first = base + i * span;
                if first + span <= keep {
                    empty = false;
                    continue;
                }
                let gone = if level == 0 {
                    self.check_data_addr(ino, p, frag, "data block")?;
                    freed.push((p, self.sb.frag));
                    true
                } else if self.trunc_indir(ino, p, level - 1, first, keep, freed, depth + 1)? {
                    freed.push((p, self.sb.frag));
                    true
                } else {
                    false
                };
                if gone {
                    if self.sb.ufs2 {
                        self.sb.order.put_u64(&mut b, at, 0);
                    } else {
                        self.sb.order.put_u32(&mut b, at, 0);
                    }
                    changed = true;
                } else {
                    empty = false;
                }
            }
            if changed {
                self.dev.bwrite(blk + f, b)?;
            }
        }
        Ok(empty)
    }

    /// Sets the size of a regular file (or symlink/directory contents), freeing blocks past
    /// it or growing it with a hole.
    pub(crate) fn truncate(&self, ino: u32, st: &mut State, size: u64) -> KResult<()> {
        if size > self.sb.max_file_size() {
            return Err(Errno::EFBIG);
        }
        let bs = self.bs();
        let old = st.inode.size;
        if size == old {
            return Ok(());
        }
        let inode = &mut st.inode;
        if size > old {
            self.zero_after(ino, inode, old)?;
            let lbn = (size - 1) / bs;
            self.grow_last(ino, inode, lbn)?;
            // The last block stays the same and holds more fragments now.
            if lbn < NDADDR as u64 && old > 0 && (old - 1) / bs == lbn {
                let cur = inode.db[lbn as usize];
                let have = self.frags_for(old, lbn);
                let need = self.frags_for(size, lbn);
                if cur != 0 && have < need {
                    let new = self.resize_frags(ino, inode, lbn, cur, have, need)?;
                    for k in have..need {
                        self.dev.bwrite(new + u64::from(k), vec![0u8; self.sb.fsize as usize])?;
                    }
                }
            }
            inode.size = size;
            return Ok(());
        }
        let keep = size.div_ceil(bs);
        let mut freed: Vec<(u64, u32)> = Vec::new();
        for lbn in keep..NDADDR as u64 {
            let p = inode.db[lbn as usize];
            if p != 0 {
                let n = self.frags_for(old, lbn);
                self.check_data_addr(ino, p, u64::from(n), "data block")?;
                freed.push((p, n));
                inode.db[lbn as usize] = 0;
            }
        }
        let nindir = u64::from(self.sb.nindir);
        let mut base = NDADDR as u64;
        for level in 0..NIADDR {
            let span = nindir.pow(level as u32 + 1);
            let blk = inode.ib[level];
            if blk != 0 && base + span > keep && self.trunc_indir(ino, blk, level, base, keep, &mut freed, 0)? {
                freed.push((blk, self.sb.frag));
                inode.ib[level] = 0;
            }
            base += span;
        }
        // The new last block, if direct, keeps only the fragments it needs.
        if size > 0 {
            let lbn = (size - 1) / bs;
            if lbn < NDADDR as u64 {
                let p = inode.db[lbn as usize];
                let have = self.frags_for(old, lbn);
                let need = self.frags_for(size, lbn);
                if p != 0 && need < have {
                    freed.push((p + u64::from(need), have - need));
                }
            }
        }
        let units: u64 = freed.iter().map(|&(_, n)| self.units(n)).sum();
        inode.blocks = inode.blocks.saturating_sub(units);
        inode.size = size;
        self.zero_after(ino, inode, size)?;
        self.free_list(&freed)
    }

    // ----- directories -----

    /// The fragment holding directory chunk `coff` and the chunk's offset in it.
    fn chunk_at(&self, ino: u32, inode: &Inode, coff: u64) -> KResult<(u64, usize)> {
        let bs = self.bs();
        let p = self.ptr(ino, inode, coff / bs)?;
        if p == 0 {
            self.corrupt(ino, format!("directory has a hole at byte {coff}"));
            return Err(Errno::EIO);
        }
        let within = coff % bs;
        Ok((p + within / self.fsz(), (within % self.fsz()) as usize))
    }

    /// The records of chunk `c` (checked).
    fn records(&self, ino: u32, c: &[u8], coff: u64) -> KResult<Vec<Rec>> {
        let mut out = Vec::new();
        dir::walk_chunk(c, self.sb.order, self.sb.fmt44, self.sb.ninodes(), &mut |r| {
            out.push((r.pos, r.ino, r.reclen, r.dtype, r.name.to_vec()));
            true
        })
        .map_err(|m| {
            self.corrupt(ino, format!("directory chunk at byte {coff}: {m}"));
            Errno::EIO
        })?;
        Ok(out)
    }

    fn names_add(n: &NodeInner, name: &[u8], ino: u32, coff: u64) {
        if let Names::Built(m) = &mut *n.names() {
            m.insert(name.into(), (ino, coff));
        }
    }

    /// Adds entry `name` → `ino` to directory `n`: in the first chunk with room (a record's
    /// slack, or the chunk compacted), else in a new chunk at the end.
    fn dir_add(&self, n: &NodeInner, st: &mut State, name: &[u8], ino: u32, kind: FileType) -> KResult<()> {
        let o = self.sb.order;
        let need = dir::direct_size(name.len());
        let dt = dir::kind_dtype(kind);
        let chunk = DIRBLKSIZ as u64;
        let mut coff = st.hint.min(st.inode.size) / chunk * chunk;
        while coff < st.inode.size {
            let (f, at) = self.chunk_at(n.ino, &st.inode, coff)?;
            let buf = self.dev.bread(f)?;
            let c = &buf[at..at + DIRBLKSIZ];
            let recs = self.records(n.ino, c, coff)?;
            let mut new_chunk: Option<Vec<u8>> = None;
            for (pos, rino, rl, _, rname) in &recs {
                let used = if *rino != 0 { dir::direct_size(rname.len()) } else { 0 };
                if rl - used >= need {
                    let mut cb = c.to_vec();
                    if *rino != 0 {
                        dir::set_reclen(&mut cb, *pos, o, used);
                        dir::put_record(&mut cb, pos + used, o, true, ino, rl - used, dt, name);
                    } else {
                        dir::put_record(&mut cb, *pos, o, true, ino, *rl, dt, name);
                    }
                    new_chunk = Some(cb);
                    break;
                }
            }
            if new_chunk.is_none() {
                let used: usize = recs.iter().filter(|r| r.1 != 0).map(|r| dir::direct_size(r.4.len())).sum();
                if DIRBLKSIZ - used >= need {
                    // Compact: live records first, then the new one taking the rest.
                    let mut cb = vec![0u8; DIRBLKSIZ];
                    let mut p = 0;
                    for (_, rino, _, rdt, rname) in recs.iter().filter(|r| r.1 != 0) {
                        let sz = dir::direct_size(rname.len());
                        dir::put_record(&mut cb, p, o, true, *rino, sz, *rdt, rname);
                        p += sz;
                    }
                    dir::put_record(&mut cb, p, o, true, ino, DIRBLKSIZ - p, dt, name);
                    new_chunk = Some(cb);
                    // Entries moved within the chunk: the name map keeps chunk offsets only.
                }
            }
            if let Some(cb) = new_chunk {
                let mut b = buf.to_vec();
                b[at..at + DIRBLKSIZ].copy_from_slice(&cb);
                self.dev.bwrite(f, b)?;
                st.hint = coff;
                Self::names_add(n, name, ino, coff);
                return Ok(());
            }
            coff += chunk;
        }
        // A new chunk at the end.
        let coff = st.inode.size;
        let mut cb = vec![0u8; DIRBLKSIZ];
        dir::put_record(&mut cb, 0, o, true, ino, DIRBLKSIZ, dt, name);
        let (_, r) = self.write_range(n.ino, st, coff, &cb);
        if let Err(e) = r {
            // A partial chunk cannot be: keep the size at a chunk boundary.
            st.inode.size = coff;
            return Err(e);
        }
        st.hint = coff;
        Self::names_add(n, name, ino, coff);
        Ok(())
    }

    /// Changes the record of `name` with `f(chunk, pos, prev_pos)`; returns the inode it
    /// named.
    fn dir_edit(&self, n: &NodeInner, st: &mut State, name: &[u8], f: &mut dyn FnMut(&mut [u8], usize, Option<usize>)) -> KResult<u32> {
        let Some((ino, coff)) = self.dir_lookup(n, &st.inode, name)? else { return Err(Errno::ENOENT) };
        let (fr, at) = self.chunk_at(n.ino, &st.inode, coff)?;
        let buf = self.dev.bread(fr)?;
        let recs = self.records(n.ino, &buf[at..at + DIRBLKSIZ], coff)?;
        let mut prev = None;
        for (pos, rino, _, _, rname) in recs {
            if rino != 0 && rname == name {
                let mut b = buf.to_vec();
                f(&mut b[at..at + DIRBLKSIZ], pos, prev);
                self.dev.bwrite(fr, b)?;
                if coff < st.hint {
                    st.hint = coff;
                }
                return Ok(ino);
            }
            prev = Some(pos);
        }
        self.corrupt(n.ino, format!("entry {:?} is not where the name map says", String::from_utf8_lossy(name)));
        *n.names() = Names::Unbuilt;
        Err(Errno::EIO)
    }

    /// Removes entry `name` (its space goes to the previous record of the chunk); returns
    /// the inode it named.
    fn dir_remove(&self, n: &NodeInner, st: &mut State, name: &[u8]) -> KResult<u32> {
        let o = self.sb.order;
        let ino = self.dir_edit(n, st, name, &mut |c, pos, prev| {
            let rl = usize::from(o.u16(c, pos + 4));
            match prev {
                Some(pp) => {
                    let prl = usize::from(o.u16(c, pp + 4));
                    dir::set_reclen(c, pp, o, prl + rl);
                    c[pos..pos + rl].fill(0);
                }
                None => {
                    o.put_u32(c, pos, 0);
                    let end = pos + dir::direct_size(usize::from(c[pos + 7]));
                    c[pos + 6..end.min(pos + rl)].fill(0);
                }
            }
        })?;
        if let Names::Built(m) = &mut *n.names() {
            m.remove(name);
        }
        Ok(ino)
    }

    /// Points entry `name` at `ino` (type `kind`); returns the inode it named before.
    fn dir_set(&self, n: &NodeInner, st: &mut State, name: &[u8], ino: u32, kind: FileType) -> KResult<u32> {
        let o = self.sb.order;
        let dt = dir::kind_dtype(kind);
        let old = self.dir_edit(n, st, name, &mut |c, pos, _| dir::set_ino(c, pos, o, true, ino, dt))?;
        if let Names::Built(m) = &mut *n.names() {
            if let Some(e) = m.get_mut(name) {
                e.0 = ino;
            }
        }
        Ok(old)
    }

    fn dir_is_empty(&self, n: &NodeInner, st: &State) -> KResult<bool> {
        let mut empty = true;
        self.scan_dir(n.ino, &st.inode, 0, &mut |_, r| {
            if r.name != b"." && r.name != b".." {
                empty = false;
                return false;
            }
            true
        })?;
        Ok(empty)
    }

    // ----- inodes -----

    /// Frees an inode's blocks (not the inode). Devices keep their number in `di_db[0]` and
    /// short symlinks their target in the pointers: nothing to free there.
    fn free_contents(&self, ino: u32, st: &mut State) -> KResult<()> {
        let has_blocks = match st.inode.kind {
            FileType::Regular | FileType::Directory => true,
            FileType::Symlink => !st.inode.is_short_symlink(&self.sb),
            _ => false,
        };
        if has_blocks {
            self.truncate(ino, st, 0)?;
        }
        Ok(())
    }

    /// Frees inode `n` for good: contents, record (mode 0, generation kept), map bit.
    fn destroy(&self, n: &NodeInner, st: &mut State) -> KResult<()> {
        self.free_contents(n.ino, st)?;
        let dir = st.inode.kind == FileType::Directory;
        let rec = update::free_inode_record(&self.sb, st.inode.gen);
        {
            let _l = self.itable.lock().unwrap_or_else(|e| e.into_inner());
            update::write_inode_raw(&self.sb, &self.dev, n.ino, &rec)?;
        }
        st.freed = true;
        st.inode.nlink = 0;
        {
            let ctx = self.actx();
            self.lock_alloc().free_inode(&ctx, n.ino, dir)?;
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(&n.ino).is_some_and(|w| std::ptr::eq(w.as_ptr(), n)) {
            live.remove(&n.ino);
        }
        Ok(())
    }

    pub(crate) fn do_inactive(&self, n: &Arc<NodeInner>) -> KResult<()> {
        let mut st = n.write();
        if st.freed || st.inode.nlink > 0 {
            return Ok(());
        }
        self.destroy(n, &mut st)
    }

    /// A fresh in-memory inode for a new file.
    fn new_inode(&self, nn: &NewNode) -> Inode {
        let now = self.now();
        let mut db = [0u64; NDADDR];
        if matches!(nn.kind, FileType::CharDevice | FileType::BlockDevice) {
            db[0] = inode::disk_dev(nn.rdev);
        }
        Inode {
            mode: (nn.kind.mode_bits() | (nn.perm & 0o7777)) as u16,
            kind: nn.kind,
            nlink: if nn.kind == FileType::Directory { 2 } else { 1 },
            uid: nn.uid,
            gid: nn.gid,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            birthtime: self.sb.ufs2.then_some(now),
            flags: 0,
            gen: self.next_generation(),
            db,
            ib: [0; NIADDR],
            extsize: 0,
            extb: [0; 2],
            raw: vec![0u8; self.sb.isize()],
        }
    }

    /// create, mknod, mkdir and symlink.
    pub(crate) fn do_create(&self, dir: &Arc<NodeInner>, name: &[u8], nn: &NewNode, target: Option<&[u8]>) -> KResult<u32> {
        let _ns = self.ns.read().unwrap_or_else(|e| e.into_inner());
        let mut ds = dir.write();
        if ds.freed || ds.inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if ds.inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > dir::MAXNAMLEN {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir_lookup(dir, &ds.inode, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let is_dir = nn.kind == FileType::Directory;
        if is_dir && ds.inode.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        if target.is_some_and(|t| t.len() as u64 > super::SYMLINK_MAX) {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = {
            let ctx = self.actx();
            let mut a = self.lock_alloc();
            let cg = if is_dir {
                let mut r = [0u8; 4];
                self.hyper.random(&mut r);
                a.dirpref(&self.sb, dir.ino, u32::from_le_bytes(r))
            } else {
                dir.ino / self.sb.ipg
            };
            a.alloc_inode(&ctx, cg, is_dir, &mut || self.next_generation())?
        };
        let child = Arc::new(NodeInner {
            ino,
            st: RwLock::new(State { inode: self.new_inode(nn), hint: 0, freed: false }),
            names: Mutex::new(Names::Unbuilt),
        });
        let r = (|| -> KResult<()> {
            let mut cs = child.write();
            if is_dir {
                let o = self.sb.order;
                let mut c = vec![0u8; DIRBLKSIZ];
                dir::put_record(&mut c, 0, o, true, ino, 12, dir::kind_dtype(FileType::Directory), b".");
                dir::put_record(&mut c, 12, o, true, dir.ino, DIRBLKSIZ - 12, dir::kind_dtype(FileType::Directory), b"..");
                let (_, r) = self.write_range(ino, &mut cs, 0, &c);
                r?;
            }
            if let Some(t) = target {
                if (t.len() as u64) < u64::from(self.sb.maxsymlinklen) {
                    let at = inode::shortlink_offset(self.sb.ufs2);
                    cs.inode.raw[at..at + t.len()].copy_from_slice(t);
                    cs.inode.size = t.len() as u64;
                } else {
                    let (_, r) = self.write_range(ino, &mut cs, 0, t);
                    r?;
                }
            }
            self.write_inode(ino, &mut cs.inode)?;
            self.dir_add(dir, &mut ds, name, ino, nn.kind)?;
            Ok(())
        })();
        if let Err(e) = r {
            let mut cs = child.write();
            cs.inode.nlink = 0;
            if let Err(e2) = self.destroy(&child, &mut cs) {
                log::error!("{}: inode {ino}: cannot undo a failed create: {e2}", self.name);
            }
            // The parent's size may have moved; its inode is written below either way.
            let _ = self.write_inode(dir.ino, &mut ds.inode);
            return Err(e);
        }
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(ino, Arc::downgrade(&child));
        if is_dir {
            ds.inode.nlink += 1;
        }
        let now = self.now();
        ds.inode.mtime = now;
        ds.inode.ctime = now;
        self.write_inode(dir.ino, &mut ds.inode)?;
        Ok(ino)
    }

    pub(crate) fn do_link(&self, n: &Arc<NodeInner>, dir: &Arc<NodeInner>, name: &[u8]) -> KResult<()> {
        let _ns = self.ns.read().unwrap_or_else(|e| e.into_inner());
        let mut ds = dir.write();
        let mut st = n.write();
        if ds.freed || ds.inode.nlink == 0 || st.freed || st.inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if st.inode.kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        if st.inode.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        if self.dir_lookup(dir, &ds.inode, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let kind = st.inode.kind;
        self.dir_add(dir, &mut ds, name, n.ino, kind)?;
        let now = self.now();
        st.inode.nlink += 1;
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
        match self.dir_lookup(dir, &ds.inode, name)? {
            Some((ino, _)) if ino == n.ino => {}
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
            st.inode.nlink = 0;
            ds.inode.nlink = ds.inode.nlink.saturating_sub(1).max(2);
        } else {
            st.inode.nlink = st.inode.nlink.saturating_sub(1);
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
        if guards.iter().any(|(_, g)| g.freed) {
            return Err(Errno::ENOENT);
        }
        let same = sdir.ino == ddir.ino;
        match self.dir_lookup(sdir, &st!(sdir.ino).inode, sname)? {
            Some((i, _)) if i == svn.ino => {}
            _ => return Err(Errno::ENOENT),
        }
        let found = self.dir_lookup(ddir, &st!(ddir.ino).inode, dname)?.map(|(i, _)| i);
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
                    let s = st!(sdir.ino);
                    s.inode.nlink = s.inode.nlink.saturating_sub(1);
                    st!(ddir.ino).inode.nlink += 1;
                } else if ddir_is && !sdir_is {
                    let s = st!(ddir.ino);
                    s.inode.nlink = s.inode.nlink.saturating_sub(1);
                    st!(sdir.ino).inode.nlink += 1;
                }
            }
            st!(svn.ino).inode.ctime = now;
            st!(d.ino).inode.ctime = now;
        } else {
            if sdir_is && !same && dvn.is_none() && st!(ddir.ino).inode.nlink >= LINK_MAX {
                return Err(Errno::EMLINK);
            }
            if let Some(d) = dvn {
                let dn = d.clone();
                let ds = st!(d.ino);
                if ds.inode.kind == FileType::Directory && !self.dir_is_empty(&dn, ds)? {
                    return Err(Errno::ENOTEMPTY);
                }
                self.dir_set(ddir, st!(ddir.ino), dname, svn.ino, skind)?;
            } else {
                self.dir_add(ddir, st!(ddir.ino), dname, svn.ino, skind)?;
            }
            self.dir_remove(sdir, st!(sdir.ino), sname)?;
            if sdir_is && !same {
                self.dir_set(svn, st!(svn.ino), b"..", ddir.ino, FileType::Directory)?;
                let s = st!(sdir.ino);
                s.inode.nlink = s.inode.nlink.saturating_sub(1);
                st!(ddir.ino).inode.nlink += 1;
            }
            if let Some(d) = dvn {
                let dis = st!(d.ino).inode.kind == FileType::Directory;
                {
                    let ds = st!(d.ino);
                    ds.inode.nlink = if dis { 0 } else { ds.inode.nlink.saturating_sub(1) };
                    ds.inode.ctime = now;
                }
                if dis {
                    let s = st!(ddir.ino);
                    s.inode.nlink = s.inode.nlink.saturating_sub(1);
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
        if end > self.sb.max_file_size() {
            return Err(Errno::EFBIG);
        }
        let (done, r) = self.write_range(n.ino, &mut st, off, data);
        if done > 0 {
            let now = self.now();
            st.inode.mtime = now;
            st.inode.ctime = now;
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
                if let Err(e) = self.truncate(n.ino, &mut st, sz) {
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
}
