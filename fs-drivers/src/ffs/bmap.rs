//! Logical block → fragment address: 12 direct pointers, then single, double and triple
//! indirect blocks (32-bit pointers in UFS1, 64-bit in UFS2). Answers in runs of contiguous
//! blocks (or holes), so reads become few large device requests.

use super::inode::Inode;
use super::superblock::{NDADDR, NIADDR};
use super::FfsFs;
use vfs_faction::{Errno, KResult};

/// A run of logical blocks: `len` blocks starting at fragment `phys` (contiguous), or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub phys: Option<u64>,
    pub len: u64,
}

/// Where logical block `lblk` hangs: which indirect tree (0..3) and the index at each level.
pub fn path(nindir: u64, lblk: u64) -> Option<(usize, [u64; NIADDR])> {
    let mut lb = lblk.checked_sub(NDADDR as u64)?;
    let mut span = 1u64;
    for level in 0..NIADDR {
        span = span.checked_mul(nindir)?;
        if lb < span {
            let mut idx = [0u64; NIADDR];
            let mut s = span;
            for i in idx.iter_mut().take(level + 1) {
                s /= nindir;
                *i = (lb / s) % nindir;
            }
            return Some((level, idx));
        }
        lb -= span;
    }
    None
}

impl FfsFs {
    /// Reads pointer `i` of the indirect block at fragment `blk`.
    pub(crate) fn indir_ptr(&self, blk: u64, i: u64) -> KResult<u64> {
        let ps: u64 = if self.sb.ufs2 { 8 } else { 4 };
        let byte = i * ps;
        let fs = u64::from(self.sb.fsize);
        let buf = self.dev.bread(blk + byte / fs)?;
        let at = (byte % fs) as usize;
        Ok(if self.sb.ufs2 { self.sb.order.u64(&buf, at) } else { u64::from(self.sb.order.u32(&buf, at)) })
    }

    /// Checks that `p` may be the address of `nfrags` fragments of file data (or an
    /// indirect block): inside the file system, not crossing a block, not in a cylinder
    /// group's metadata.
    pub(crate) fn check_data_addr(&self, ino: u32, p: u64, nfrags: u64, what: &str) -> KResult<()> {
        let sb = &self.sb;
        let frag = u64::from(sb.frag);
        let bad = |why: &str| {
            self.corrupt(ino, format!("{what} at fragment {p}: {why}"));
            Err(Errno::EIO)
        };
        if p.checked_add(nfrags).is_none_or(|e| e > sb.size) {
            return bad("beyond the end of the file system");
        }
        if p % frag + nfrags > frag {
            return bad("crosses a block boundary");
        }
        let c = (p / u64::from(sb.fpg)) as u32;
        let meta_start = if c == 0 { 0 } else { sb.cgstart(c) + u64::from(sb.sblkno) };
        if p < sb.cgdmin(c) && p + nfrags > meta_start {
            return bad("inside cylinder group metadata");
        }
        Ok(())
    }

    /// Maps logical block `lblk` of `inode` to a run of at most `max` (≥ 1) blocks.
    pub(crate) fn bmap(&self, ino: u32, inode: &Inode, lblk: u64, max: u64) -> KResult<Run> {
        let frag = u64::from(self.sb.frag);
        let max = max.max(1);
        if lblk < NDADDR as u64 {
            let l = lblk as usize;
            let p = inode.db[l];
            if p != 0 {
                self.check_data_addr(ino, p, self.frags_of(inode, lblk), "data block")?;
            }
            let mut len = 1u64;
            while l + (len as usize) < NDADDR && len < max {
                let q = inode.db[l + len as usize];
                let next_ok = if p == 0 { q == 0 } else { q == p + len * frag };
                if !next_ok {
                    break;
                }
                if q != 0 {
                    self.check_data_addr(ino, q, self.frags_of(inode, lblk + len), "data block")?;
                }
                len += 1;
            }
            return Ok(Run { phys: (p != 0).then_some(p), len });
        }
        let nindir = u64::from(self.sb.nindir);
        let Some((level, idx)) = path(nindir, lblk) else {
            self.corrupt(ino, format!("logical block {lblk} is beyond the triple indirect block"));
            return Err(Errno::EIO);
        };
        let mut ptr = inode.ib[level];
        let mut chain: [u64; NIADDR + 1] = [0; NIADDR + 1];
        for depth in 0..=level {
            if ptr == 0 {
                // A hole covering the rest of this subtree.
                let mut span = 1u64;
                for _ in depth..=level {
                    span = span.saturating_mul(nindir);
                }
                let mut pos_in = 0u64;
                let mut s = span;
                for &i in &idx[depth..=level] {
                    s /= nindir;
                    pos_in += i * s;
                }
                return Ok(Run { phys: None, len: (span - pos_in).min(max) });
            }
            self.check_data_addr(ino, ptr, frag, "indirect block")?;
            if chain[..depth].contains(&ptr) {
                self.corrupt(ino, format!("indirect block {ptr} refers to itself (a loop)"));
                return Err(Errno::EIO);
            }
            chain[depth] = ptr;
            if depth < level {
                ptr = self.indir_ptr(ptr, idx[depth])?;
            }
        }
        // `ptr` is the last-level indirect block: scan pointers from idx[level].
        let blk = ptr;
        let first = idx[level];
        let p = self.indir_ptr(blk, first)?;
        if p != 0 {
            self.check_data_addr(ino, p, frag, "data block")?;
            if chain[..=level].contains(&p) {
                self.corrupt(ino, format!("indirect block {p} is also a data block of the same tree"));
                return Err(Errno::EIO);
            }
        }
        let mut len = 1u64;
        while first + len < nindir && len < max {
            let q = self.indir_ptr(blk, first + len)?;
            let next_ok = if p == 0 { q == 0 } else { q == p + len * frag };
            if !next_ok {
                break;
            }
            if q != 0 {
                self.check_data_addr(ino, q, frag, "data block")?;
            }
            len += 1;
        }
        Ok(Run { phys: (p != 0).then_some(p), len })
    }

    /// Fragments held by logical block `lblk` of a file (`blksize`): a whole block, except the
    /// last direct block of a small file, which may be a run of fragments.
    pub(crate) fn frags_of(&self, inode: &Inode, lblk: u64) -> u64 {
        let bs = u64::from(self.sb.bsize);
        let frag = u64::from(self.sb.frag);
        if lblk >= NDADDR as u64 || inode.size >= (lblk + 1) * bs {
            return frag;
        }
        let tail = inode.size.saturating_sub(lblk * bs);
        tail.div_ceil(u64::from(self.sb.fsize)).clamp(1, frag)
    }
}

#[cfg(test)]
mod tests {
    use super::path;

    #[test]
    fn paths_of_the_indirect_trees() {
        assert_eq!(path(1024, 5), None);
        assert_eq!(path(1024, 12), Some((0, [0, 0, 0])));
        assert_eq!(path(1024, 12 + 1023), Some((0, [1023, 0, 0])));
        assert_eq!(path(1024, 12 + 1024), Some((1, [0, 0, 0])));
        assert_eq!(path(1024, 12 + 1024 + 1025), Some((1, [1, 1, 0])));
        let t = 12 + 1024 + 1024 * 1024;
        assert_eq!(path(1024, t), Some((2, [0, 0, 0])));
        assert_eq!(path(1024, t + 1024 * 1024 + 2), Some((2, [1, 0, 2])));
        assert_eq!(path(4, 12 + 4 + 16 + 64), None);
    }
}
