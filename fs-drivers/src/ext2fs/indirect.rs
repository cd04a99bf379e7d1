//! The write side of the classic ext2/ext3 block map: setting pointers (allocating single,
//! double and triple indirect blocks on the way) and freeing ranges (truncate, punch), which
//! frees every indirect block left without pointers.

use super::inode::Inode;
use super::{le32, Ext2Fs};
use vfs_faction::{Errno, KResult};

const NDIR: u64 = 12;

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Where logical block `lblk` sits: (tree level 0 = direct, 1..=3; index path).
fn path(p: u64, lblk: u64) -> Option<(usize, [u64; 3])> {
    if lblk < NDIR {
        return Some((0, [lblk, 0, 0]));
    }
    let mut rel = lblk - NDIR;
    if rel < p {
        return Some((1, [rel, 0, 0]));
    }
    rel -= p;
    if rel < p * p {
        return Some((2, [rel / p, rel % p, 0]));
    }
    rel -= p * p;
    if rel < p * p * p {
        return Some((3, [rel / (p * p), (rel / p) % p, rel % p]));
    }
    None
}

/// Blocks addressable through the block map.
pub(crate) fn max_blocks(bs: u64) -> u64 {
    let p = bs / 4;
    NDIR + p + p * p + p * p * p
}

impl Ext2Fs {
    fn check_ptr(&self, ino: u32, ptr: u64) -> KResult<()> {
        if !self.blocks_in_range(ptr, 1) || self.zones_overlap(ptr, 1) {
            self.corrupt(ino, format!("block pointer {ptr} is outside the file system or inside its metadata"));
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Allocates one zeroed indirect block near `goal`.
    fn new_indirect(&self, goal: u64) -> KResult<u64> {
        let (b, _) = self.alloc_blocks(goal, 1, 1 << 32)?;
        self.dev.bwrite(b, vec![0u8; self.sb.block_size as usize])?;
        Ok(b)
    }

    /// Maps logical blocks `lblk..lblk+n` to physical `phys..phys+n` (all currently holes).
    /// Indirect blocks are allocated near `phys`. Returns how many indirect blocks were
    /// allocated; on `ENOSPC` nothing of this call stays mapped beyond what was set.
    pub(crate) fn ind_set(&self, ino: u32, inode: &mut Inode, lblk: u64, phys: u64, n: u64) -> KResult<u64> {
        let bs = u64::from(self.sb.block_size);
        let p = bs / 4;
        let mut meta = 0u64;
        let mut i = 0u64;
        while i < n {
            let l = lblk + i;
            let (level, idx) = path(p, l).ok_or(Errno::EFBIG)?;
            if level == 0 {
                put32(&mut inode.block, (l as usize) * 4, (phys + i) as u32);
                i += 1;
                continue;
            }
            // Walk down, allocating missing indirect blocks.
            let slot = 11 + level;
            let mut ptr = u64::from(inode.block_word(slot));
            if ptr == 0 {
                ptr = self.new_indirect(phys + i)?;
                meta += 1;
                put32(&mut inode.block, slot * 4, ptr as u32);
            } else {
                self.check_ptr(ino, ptr)?;
            }
            for d in 0..level - 1 {
                let buf = self.dev.bread(ptr)?;
                let k = idx[d] as usize;
                let mut child = u64::from(le32(&buf, k * 4));
                if child == 0 {
                    child = self.new_indirect(phys + i)?;
                    meta += 1;
                    let mut b = buf.to_vec();
                    put32(&mut b, k * 4, child as u32);
                    self.dev.bwrite(ptr, b)?;
                } else {
                    self.check_ptr(ino, child)?;
                }
                ptr = child;
            }
            // The leaf indirect block: set as many pointers as it holds.
            let k0 = idx[level - 1] as usize;
            let run = (p as usize - k0).min((n - i) as usize);
            let buf = self.dev.bread(ptr)?;
            let mut b = buf.to_vec();
            for k in 0..run {
                put32(&mut b, (k0 + k) * 4, (phys + i + k as u64) as u32);
            }
            self.dev.bwrite(ptr, b)?;
            i += run as u64;
        }
        Ok(meta)
    }

    /// Unmaps logical blocks `a..b`: data blocks are freed and indirect blocks left empty
    /// are freed too. Returns the number of blocks (data and indirect) freed.
    /// With `free_data` false the data blocks are only unmapped (they belong to the caller).
    pub(crate) fn ind_punch(&self, ino: u32, inode: &mut Inode, a: u64, b: u64, free_data: bool) -> KResult<u64> {
        let bs = u64::from(self.sb.block_size);
        let p = bs / 4;
        let mut freed: Vec<u64> = Vec::new();
        for l in a.min(NDIR)..b.min(NDIR) {
            let ptr = u64::from(inode.block_word(l as usize));
            if ptr != 0 {
                self.check_ptr(ino, ptr)?;
                if free_data {
                    freed.push(ptr);
                }
                put32(&mut inode.block, l as usize * 4, 0);
            }
        }
        let mut base = NDIR;
        let mut span = p;
        for level in 1..=3usize {
            let slot = 11 + level;
            let ptr = u64::from(inode.block_word(slot));
            if ptr != 0 && a < base + span && b > base {
                self.check_ptr(ino, ptr)?;
                if self.ind_punch_node(ino, ptr, level, base, a, b, &mut freed, free_data)? {
                    freed.push(ptr);
                    put32(&mut inode.block, slot * 4, 0);
                }
            }
            base += span;
            span = span.saturating_mul(p);
        }
        let count = freed.len() as u64;
        freed.sort_unstable();
        self.free_block_list(&freed)?;
        Ok(count)
    }

    /// Punches `a..b` below indirect block `ptr` of `level` (1: it holds data pointers)
    /// covering logical blocks from `base`. True if the block is now empty (caller frees it).
    #[allow(clippy::too_many_arguments)]
    fn ind_punch_node(
        &self,
        ino: u32,
        ptr: u64,
        level: usize,
        base: u64,
        a: u64,
        b: u64,
        freed: &mut Vec<u64>,
        free_data: bool,
    ) -> KResult<bool> {
        let bs = u64::from(self.sb.block_size);
        let p = bs / 4;
        let child_span = p.pow(level as u32 - 1);
        let buf = self.dev.bread(ptr)?;
        let mut blk = buf.to_vec();
        let mut changed = false;
        for k in 0..p as usize {
            let lo = base + k as u64 * child_span;
            let hi = lo + child_span;
            if hi <= a || lo >= b {
                continue;
            }
            let c = u64::from(le32(&blk, k * 4));
            if c == 0 {
                continue;
            }
            self.check_ptr(ino, c)?;
            let empty = if level == 1 { true } else { self.ind_punch_node(ino, c, level - 1, lo, a, b, freed, free_data)? };
            if empty {
                if level > 1 || free_data {
                    freed.push(c);
                }
                put32(&mut blk, k * 4, 0);
                changed = true;
            }
        }
        let empty = blk.iter().all(|&x| x == 0);
        if changed && !empty {
            self.dev.bwrite(ptr, blk)?;
        }
        Ok(empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path(256, 11), Some((0, [11, 0, 0])));
        assert_eq!(path(256, 12), Some((1, [0, 0, 0])));
        assert_eq!(path(256, 12 + 256), Some((2, [0, 0, 0])));
        assert_eq!(path(256, 12 + 256 + 257), Some((2, [1, 1, 0])));
        assert_eq!(path(256, 12 + 256 + 65536), Some((3, [0, 0, 0])));
        assert_eq!(path(256, max_blocks(1024)), None);
    }
}
