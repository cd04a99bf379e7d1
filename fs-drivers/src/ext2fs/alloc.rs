//! Block and inode allocation from the group bitmaps.
//!
//! One lock ([`Alloc`], inside a mutex of the mounted file system) covers the group
//! descriptors, the bitmaps and the free counts, so the counts in the descriptors and the
//! superblock stay exact. Blocks are taken near a goal (the file's last block, or its inode's
//! group), in contiguous runs; inodes of files go near their directory, new directories are
//! spread over the groups with the most room (a simple Orlov). Groups with uninitialised
//! bitmaps (uninit_bg / metadata_csum) get real bitmaps the first time they are used.
//!
//! Nothing here trusts the bitmaps blindly: a block inside the file system's own metadata
//! (superblocks, descriptors, bitmaps, inode tables) is never handed out, a bitmap whose
//! checksum or free count does not match is not allocated from, and freeing a block that is
//! already free is logged and not counted twice.

use super::group::{GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use super::superblock::{ro_compat, Superblock};
use super::update;
use vfs_faction::{CachedDev, Errno, KResult};

/// The allocator's state, under the file system's allocation lock.
pub(crate) struct Alloc {
    pub groups: Vec<GroupDesc>,
    pub free_blocks: u64,
    pub free_inodes: u64,
    /// Groups we found inconsistent: never allocated from.
    pub bad: Vec<bool>,
}

/// Sorted, disjoint ranges of blocks that belong to the file system's own metadata.
pub(crate) struct Zones(Vec<(u64, u64)>);

impl Zones {
    /// No metadata known (read-only mounts of file systems we could not map).
    pub fn empty() -> Zones {
        Zones(Vec::new())
    }

    /// The metadata of every group: superblock copies with their descriptor and reserved
    /// descriptor blocks, bitmaps and inode tables. `Err`: a location outside the file system.
    pub fn build(sb: &Superblock, raw_sb: &[u8], groups: &[GroupDesc]) -> Result<Zones, String> {
        let mut z = Vec::new();
        let per_block = u64::from(sb.block_size / sb.desc_size);
        let gdt = u64::from(sb.group_count).div_ceil(per_block);
        let reserved = u64::from(super::le16(raw_sb, update::sbf::RESERVED_GDT_BLOCKS));
        let itb = sb.inode_table_blocks();
        for g in 0..sb.group_count {
            let first = group_first(sb, g);
            if sb.group_has_super(g) {
                z.push((first, 1 + gdt + reserved));
            }
            let d = &groups[g as usize];
            for (what, b, n) in [("block bitmap", d.block_bitmap(), 1), ("inode bitmap", d.inode_bitmap(), 1), ("inode table", d.inode_table(), itb)] {
                if b < u64::from(sb.first_data_block) || b.checked_add(n).is_none_or(|e| e > sb.blocks_count) {
                    return Err(format!("group {g}: {what} at block {b} is outside the file system"));
                }
                z.push((b, n));
            }
        }
        z.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(z.len());
        for (s, n) in z {
            let e = s + n;
            match merged.last_mut() {
                Some((ms, me)) if s <= *me => *me = (*me).max(e).max(*ms),
                _ => merged.push((s, e)),
            }
        }
        Ok(Zones(merged))
    }

    /// True if any of `start..start+len` is metadata.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0.get(i).is_some_and(|&(s, _)| s < end)
    }

    /// The first metadata block at or after `b`, if any.
    fn next_start(&self, b: u64) -> Option<u64> {
        let i = self.0.partition_point(|&(_, e)| e <= b);
        self.0.get(i).map(|&(s, _)| s.max(b))
    }
}

/// First block of group `g`.
pub(crate) fn group_first(sb: &Superblock, g: u32) -> u64 {
    u64::from(sb.first_data_block) + u64::from(g) * u64::from(sb.blocks_per_group)
}

/// Blocks in group `g` (the last group may be short).
pub(crate) fn group_blocks(sb: &Superblock, g: u32) -> u64 {
    (sb.blocks_count - group_first(sb, g)).min(u64::from(sb.blocks_per_group))
}

fn group_csums(sb: &Superblock) -> bool {
    sb.metadata_csum() || sb.has_ro_compat(ro_compat::GDT_CSUM)
}

fn bit(b: &[u8], i: usize) -> bool {
    b[i / 8] & (1 << (i % 8)) != 0
}
fn set_bit(b: &mut [u8], i: usize) {
    b[i / 8] |= 1 << (i % 8);
}
fn clear_bit(b: &mut [u8], i: usize) {
    b[i / 8] &= !(1 << (i % 8));
}

/// First clear bit in `from..to`.
fn find_clear(b: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut i = from;
    while i < to {
        if i % 8 == 0 && i + 8 <= to && b[i / 8] == 0xFF {
            i += 8;
            continue;
        }
        if !bit(b, i) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn count_clear(b: &[u8], n: usize) -> u64 {
    (0..n).filter(|&i| !bit(b, i)).count() as u64
}

/// What the allocator needs of the mounted file system.
pub(crate) struct Ctx<'a> {
    pub sb: &'a Superblock,
    pub dev: &'a CachedDev,
    pub zones: &'a Zones,
    pub name: &'a str,
}

impl Ctx<'_> {
    /// The block bitmap of group `g`, built if the group has none yet. `None`: the group is
    /// unusable (logged, marked bad).
    fn block_bitmap(&self, st: &mut Alloc, g: u32) -> KResult<Option<Vec<u8>>> {
        let sb = self.sb;
        let bs = sb.block_size as usize;
        let d = &st.groups[g as usize];
        let nblocks = group_blocks(sb, g) as usize;
        if group_csums(sb) && d.flags() & BG_BLOCK_UNINIT != 0 {
            let mut b = vec![0u8; bs];
            let first = group_first(sb, g);
            for (i, slot) in (0..nblocks).enumerate() {
                let _ = slot;
                if self.zones.overlaps(first + i as u64, 1) {
                    set_bit(&mut b, i);
                }
            }
            for i in nblocks..bs * 8 {
                set_bit(&mut b, i);
            }
            let free = count_clear(&b, nblocks);
            if free != u64::from(d.free_blocks()) {
                log::error!(
                    "{}: group {g}: uninitialised block bitmap would have {free} free blocks, the descriptor says {}; not allocating there",
                    self.name,
                    d.free_blocks()
                );
                st.bad[g as usize] = true;
                return Ok(None);
            }
            return Ok(Some(b));
        }
        let buf = self.dev.bread(d.block_bitmap())?;
        if sb.metadata_csum() {
            let c = update::bitmap_csum(sb, &buf, sb.blocks_per_group);
            let lo = u32::from(super::le16(&d.raw, super::group::field::BLOCK_BITMAP_CSUM_LO));
            let ok = if d.raw.len() >= 64 {
                c == lo | u32::from(super::le16(&d.raw, super::group::field::BLOCK_BITMAP_CSUM_HI)) << 16
            } else {
                c & 0xFFFF == lo
            };
            if !ok {
                log::error!("{}: group {g}: block bitmap checksum mismatch; not allocating there", self.name);
                st.bad[g as usize] = true;
                return Ok(None);
            }
        }
        Ok(Some(buf.to_vec()))
    }

    fn inode_bitmap(&self, st: &mut Alloc, g: u32) -> KResult<Option<Vec<u8>>> {
        let sb = self.sb;
        let bs = sb.block_size as usize;
        let d = &st.groups[g as usize];
        if group_csums(sb) && d.flags() & BG_INODE_UNINIT != 0 {
            let mut b = vec![0u8; bs];
            for i in sb.inodes_per_group as usize..bs * 8 {
                set_bit(&mut b, i);
            }
            return Ok(Some(b));
        }
        let buf = self.dev.bread(d.inode_bitmap())?;
        if sb.metadata_csum() {
            let c = update::bitmap_csum(sb, &buf, sb.inodes_per_group);
            let lo = u32::from(super::le16(&d.raw, super::group::field::INODE_BITMAP_CSUM_LO));
            let ok = if d.raw.len() >= 64 {
                c == lo | u32::from(super::le16(&d.raw, super::group::field::INODE_BITMAP_CSUM_HI)) << 16
            } else {
                c & 0xFFFF == lo
            };
            if !ok {
                log::error!("{}: group {g}: inode bitmap checksum mismatch; not allocating there", self.name);
                st.bad[g as usize] = true;
                return Ok(None);
            }
        }
        Ok(Some(buf.to_vec()))
    }

    /// Allocates up to `want` contiguous blocks, at `goal` if free, else as near after it as
    /// possible, below `limit` (exclusive; block-mapped files address 32 bits). Returns
    /// (first block, count ≥ 1). Fails: `ENOSPC`.
    pub fn alloc_blocks(&self, st: &mut Alloc, goal: u64, want: u64, limit: u64) -> KResult<(u64, u64)> {
        let sb = self.sb;
        let want = want.max(1);
        if st.free_blocks == 0 {
            return Err(Errno::ENOSPC);
        }
        let first_data = u64::from(sb.first_data_block);
        let goal = goal.clamp(first_data, sb.blocks_count - 1);
        let g0 = ((goal - first_data) / u64::from(sb.blocks_per_group)) as u32;
        let n = sb.group_count;
        // The goal group twice: from the goal on first, from its start at the end.
        for step in 0..=n {
            let g = (g0 + step) % n;
            let gi = g as usize;
            if st.bad[gi] || st.groups[gi].free_blocks() == 0 {
                continue;
            }
            let first = group_first(sb, g);
            if first >= limit {
                continue;
            }
            let nblocks = group_blocks(sb, g) as usize;
            let top = nblocks.min((limit - first).min(nblocks as u64) as usize);
            let from = if step == 0 { (goal - first) as usize } else { 0 };
            let to = if step == n { (goal - first) as usize } else { top };
            let Some(mut bm) = self.block_bitmap(st, g)? else { continue };
            let Some(i) = find_clear(&bm, from, to.min(top)) else { continue };
            let b = first + i as u64;
            if self.zones.overlaps(b, 1) {
                log::error!("{}: group {g}: block bitmap says metadata block {b} is free; not allocating from this group", self.name);
                st.bad[gi] = true;
                continue;
            }
            let mut len = 1usize;
            let stop = match self.zones.next_start(first + i as u64) {
                Some(z) => ((z - first) as usize).min(top),
                None => top,
            };
            while (len as u64) < want && i + len < stop && !bit(&bm, i + len) {
                len += 1;
            }
            for k in i..i + len {
                set_bit(&mut bm, k);
            }
            let d = &mut st.groups[gi];
            d.set_free_blocks(d.free_blocks().saturating_sub(len as u32));
            if d.flags() & BG_BLOCK_UNINIT != 0 {
                d.set_flags(d.flags() & !BG_BLOCK_UNINIT);
            }
            update::write_block_bitmap(sb, self.dev, d, bm)?;
            update::write_group(sb, self.dev, g, d)?;
            st.free_blocks = st.free_blocks.saturating_sub(len as u64);
            return Ok((first + i as u64, len as u64));
        }
        Err(Errno::ENOSPC)
    }

    /// Frees blocks `start..start+len`. Metadata blocks and blocks outside the file system
    /// are refused (`EIO`); blocks already free are logged and skipped.
    pub fn free_blocks(&self, st: &mut Alloc, start: u64, len: u64) -> KResult<()> {
        let sb = self.sb;
        if len == 0 {
            return Ok(());
        }
        if start < u64::from(sb.first_data_block) || start.checked_add(len).is_none_or(|e| e > sb.blocks_count) {
            log::error!("{}: refusing to free blocks {start}+{len}: outside the file system", self.name);
            return Err(Errno::EIO);
        }
        if self.zones.overlaps(start, len) {
            log::error!("{}: refusing to free blocks {start}+{len}: they hold file system metadata", self.name);
            return Err(Errno::EIO);
        }
        let mut b = start;
        let end = start + len;
        while b < end {
            let g = ((b - u64::from(sb.first_data_block)) / u64::from(sb.blocks_per_group)) as u32;
            let first = group_first(sb, g);
            let gend = (first + group_blocks(sb, g)).min(end);
            let Some(mut bm) = self.block_bitmap(st, g)? else {
                log::error!("{}: blocks {b}..{gend} not freed: group {g} is unusable", self.name);
                b = gend;
                continue;
            };
            let mut freed = 0u32;
            for k in b..gend {
                let i = (k - first) as usize;
                if bit(&bm, i) {
                    clear_bit(&mut bm, i);
                    freed += 1;
                } else {
                    log::error!("{}: block {k} freed twice (already free in the bitmap)", self.name);
                }
            }
            let d = &mut st.groups[g as usize];
            d.set_free_blocks(d.free_blocks() + freed);
            if d.flags() & BG_BLOCK_UNINIT != 0 {
                d.set_flags(d.flags() & !BG_BLOCK_UNINIT);
            }
            update::write_block_bitmap(sb, self.dev, d, bm)?;
            update::write_group(sb, self.dev, g, d)?;
            st.free_blocks += u64::from(freed);
            b = gend;
        }
        Ok(())
    }

    /// Picks a group for a new inode: files near their directory (`parent_group`), new
    /// directories spread over groups with more free inodes than average and the fewest
    /// directories (near the parent below the top level when it has room).
    fn pick_group(&self, st: &Alloc, parent_group: u32, dir: bool, top_level: bool) -> Vec<u32> {
        let n = self.sb.group_count;
        let mut order: Vec<u32> = (0..n).map(|i| (parent_group + i) % n).collect();
        if dir {
            let usable: Vec<u32> = (0..n).filter(|&g| !st.bad[g as usize] && st.groups[g as usize].free_inodes() > 0).collect();
            if usable.is_empty() {
                return order;
            }
            let avg_i = usable.iter().map(|&g| u64::from(st.groups[g as usize].free_inodes())).sum::<u64>() / usable.len() as u64;
            let avg_b = usable.iter().map(|&g| u64::from(st.groups[g as usize].free_blocks())).sum::<u64>() / usable.len() as u64;
            let pg = &st.groups[parent_group as usize];
            let parent_ok = !top_level
                && !st.bad[parent_group as usize]
                && u64::from(pg.free_inodes()) >= avg_i.max(1)
                && u64::from(pg.free_blocks()) >= avg_b / 2;
            if !parent_ok {
                let best = usable
                    .iter()
                    .copied()
                    .filter(|&g| u64::from(st.groups[g as usize].free_inodes()) >= avg_i)
                    .min_by_key(|&g| {
                        let d = &st.groups[g as usize];
                        (d.used_dirs(), u32::MAX - d.free_blocks(), (g + n - parent_group) % n)
                    });
                if let Some(b) = best {
                    order = (0..n).map(|i| (b + i) % n).collect();
                }
            }
        }
        order
    }

    /// Allocates an inode; returns its number. Fails: `ENOSPC` (no free inode).
    pub fn alloc_inode(&self, st: &mut Alloc, parent: u32, dir: bool, top_level: bool) -> KResult<u32> {
        let sb = self.sb;
        if st.free_inodes == 0 {
            return Err(Errno::ENOSPC);
        }
        let ipg = sb.inodes_per_group;
        let pgroup = (parent.saturating_sub(1) / ipg).min(sb.group_count - 1);
        for g in self.pick_group(st, pgroup, dir, top_level) {
            let gi = g as usize;
            if st.bad[gi] || st.groups[gi].free_inodes() == 0 {
                continue;
            }
            let Some(mut bm) = self.inode_bitmap(st, g)? else { continue };
            let base = g * ipg;
            // Reserved inodes (below s_first_ino) are never handed out.
            let from = sb.first_ino.saturating_sub(base + 1).min(ipg) as usize;
            let Some(i) = find_clear(&bm, from, ipg as usize) else {
                log::error!("{}: group {g}: the descriptor counts free inodes the bitmap does not have", self.name);
                st.bad[gi] = true;
                continue;
            };
            let ino = base + i as u32 + 1;
            if ino > sb.inodes_count {
                continue;
            }
            set_bit(&mut bm, i);
            let d = &mut st.groups[gi];
            d.set_free_inodes(d.free_inodes() - 1);
            if dir {
                d.set_used_dirs(d.used_dirs() + 1);
            }
            if group_csums(sb) {
                let mut fl = d.flags();
                fl &= !BG_INODE_UNINIT;
                d.set_flags(fl);
                let unused = d.itable_unused();
                if i as u32 >= ipg.saturating_sub(unused) {
                    d.set_itable_unused(ipg - i as u32 - 1);
                }
            }
            update::write_inode_bitmap(sb, self.dev, d, bm)?;
            update::write_group(sb, self.dev, g, d)?;
            st.free_inodes -= 1;
            return Ok(ino);
        }
        Err(Errno::ENOSPC)
    }

    /// Frees inode `ino` in its bitmap (the caller has cleared the inode itself).
    pub fn free_inode(&self, st: &mut Alloc, ino: u32, dir: bool) -> KResult<()> {
        let sb = self.sb;
        if ino < sb.first_ino || ino > sb.inodes_count {
            log::error!("{}: refusing to free reserved or invalid inode {ino}", self.name);
            return Err(Errno::EIO);
        }
        let g = (ino - 1) / sb.inodes_per_group;
        let i = ((ino - 1) % sb.inodes_per_group) as usize;
        let Some(mut bm) = self.inode_bitmap(st, g)? else {
            return Err(Errno::EIO);
        };
        if !bit(&bm, i) {
            log::error!("{}: inode {ino} freed twice (already free in the bitmap)", self.name);
            return Ok(());
        }
        clear_bit(&mut bm, i);
        let d = &mut st.groups[g as usize];
        d.set_free_inodes(d.free_inodes() + 1);
        if dir {
            d.set_used_dirs(d.used_dirs().saturating_sub(1));
        }
        update::write_inode_bitmap(sb, self.dev, d, bm)?;
        update::write_group(sb, self.dev, g, d)?;
        st.free_inodes += 1;
        Ok(())
    }
}
