//! Allocation from the cylinder-group maps: blocks, fragments and inodes, the way FFS does
//! it (`ffs_alloc.c`): a preferred group, then quadratic rehash, then every group; inside a
//! group the preferred place, else from the rotors. Every change keeps the fragment map, the
//! cluster map and summary, `cg_frsum`, the group's `cg_cs`, the summary area copy and
//! `fs_cstotal` exact together.
//!
//! Group blocks are kept here while in use (dirty ones are written to the buffer cache at
//! sync, or when many are held); the allocation lock guards all of it.

use super::superblock::{CsTotal, Superblock, ROOTINO};
use super::update::{self, Cg, Csum};
use std::collections::{BTreeMap, BTreeSet};
use vfs_faction::{CachedDev, Errno, KResult, Timespec};

/// Groups kept in memory before the clean ones are dropped.
const MAX_HELD: usize = 64;

/// What the allocator needs from the mount.
pub(crate) struct Ctx<'a> {
    pub sb: &'a Superblock,
    pub dev: &'a CachedDev,
    pub name: &'a str,
    pub now: Timespec,
}

/// The allocation state (under the allocation lock).
pub(crate) struct Alloc {
    /// Per-group summaries (the summary area), exact.
    pub cs: Vec<Csum>,
    pub total: CsTotal,
    cgs: BTreeMap<u32, Cg>,
    dirty: BTreeSet<u32>,
    /// Groups whose block is damaged: never allocated from, never written.
    bad: Vec<bool>,
    /// Summary area changed since the last flush.
    cs_dirty: bool,
}

fn add(c: &mut Csum, t: &mut CsTotal, d: Csum) {
    c.ndir += d.ndir;
    c.nbfree += d.nbfree;
    c.nifree += d.nifree;
    c.nffree += d.nffree;
    t.ndir += i64::from(d.ndir);
    t.nbfree += i64::from(d.nbfree);
    t.nifree += i64::from(d.nifree);
    t.nffree += i64::from(d.nffree);
}

impl Alloc {
    /// The state of a file system whose summary area says `cs`.
    pub(crate) fn new(cs: Vec<Csum>) -> Alloc {
        let mut total = CsTotal::default();
        for c in &cs {
            total.ndir += i64::from(c.ndir);
            total.nbfree += i64::from(c.nbfree);
            total.nifree += i64::from(c.nifree);
            total.nffree += i64::from(c.nffree);
        }
        let n = cs.len();
        Alloc { cs, total, cgs: BTreeMap::new(), dirty: BTreeSet::new(), bad: vec![false; n], cs_dirty: false }
    }

    /// Group `c`, read and checked on first use. A group whose summary disagrees with the
    /// summary area wins (it is what the maps say) and the totals follow it.
    fn load(&mut self, ctx: &Ctx<'_>, c: u32) -> KResult<&mut Cg> {
        let ci = c as usize;
        if self.bad.get(ci).copied().unwrap_or(true) {
            return Err(Errno::EIO);
        }
        if !self.cgs.contains_key(&c) {
            if self.cgs.len() >= MAX_HELD {
                self.write_groups(ctx)?;
                self.cgs.clear();
            }
            let raw = update::read_cg_raw(ctx.sb, ctx.dev, c)?;
            let cg = match Cg::parse(ctx.sb, c, raw) {
                Ok(g) => g,
                Err(m) => {
                    log::error!("{}: cylinder group {c} (fragment {}): {m}; nothing is allocated from it", ctx.name, ctx.sb.cgtod(c));
                    self.bad[ci] = true;
                    return Err(Errno::EIO);
                }
            };
            let have = cg.cs();
            if have != self.cs[ci] {
                log::warn!(
                    "{}: cylinder group {c}: summary area says {:?}, the group says {have:?}; using the group's",
                    ctx.name,
                    self.cs[ci]
                );
                let old = self.cs[ci];
                let d = Csum {
                    ndir: have.ndir - old.ndir,
                    nbfree: have.nbfree - old.nbfree,
                    nifree: have.nifree - old.nifree,
                    nffree: have.nffree - old.nffree,
                };
                add(&mut self.cs[ci], &mut self.total, d);
                self.cs_dirty = true;
            }
            self.cgs.insert(c, cg);
        }
        self.cgs.get_mut(&c).ok_or(Errno::EIO)
    }

    /// Writes dirty groups into the buffer cache.
    fn write_groups(&mut self, ctx: &Ctx<'_>) -> KResult<()> {
        for c in std::mem::take(&mut self.dirty) {
            if let Some(cg) = self.cgs.get_mut(&c) {
                update::write_cg(ctx.sb, ctx.dev, cg, ctx.now)?;
            }
        }
        Ok(())
    }

    /// Writes every dirty group and the summary area into the buffer cache.
    pub(crate) fn flush(&mut self, ctx: &Ctx<'_>) -> KResult<()> {
        self.write_groups(ctx)?;
        if self.cs_dirty {
            update::write_csum_area(ctx.sb, ctx.dev, &self.cs)?;
            self.cs_dirty = false;
        }
        Ok(())
    }

    /// Applies a change of group `c`'s counts to the group, the summary area and the totals.
    fn account(&mut self, c: u32, d: Csum) {
        let ci = c as usize;
        if let Some(cg) = self.cgs.get_mut(&c) {
            let mut s = cg.cs();
            s.ndir += d.ndir;
            s.nbfree += d.nbfree;
            s.nifree += d.nifree;
            s.nffree += d.nffree;
            cg.set_cs(s);
        }
        add(&mut self.cs[ci], &mut self.total, d);
        self.dirty.insert(c);
        self.cs_dirty = true;
    }

    /// Gives block `b` of group `c` the free map `new` (bit k: fragment k free), keeping the
    /// summaries exact. The caller checked that only the intended bits change.
    fn set_block_map(&mut self, ctx: &Ctx<'_>, c: u32, b: u32, new: u32) -> KResult<()> {
        let frag = ctx.sb.frag;
        let cg = self.load(ctx, c)?;
        let old = cg.block_map(b);
        let contrib = |m: u32| -> (i32, i32) {
            if update::is_block_free(m, frag) {
                (1, 0)
            } else {
                (0, m.count_ones() as i32)
            }
        };
        let (ob, of) = contrib(old);
        let (nb, nf) = contrib(new);
        cg.frag_acct(old, -1);
        for k in 0..frag {
            cg.set_frag_free(b * frag + k, new & (1 << k) != 0);
        }
        cg.frag_acct(new, 1);
        if ob != nb {
            cg.cluster_acct(b, nb - ob);
        }
        self.account(c, Csum { nbfree: nb - ob, nffree: nf - of, ..Default::default() });
        Ok(())
    }

    /// Where fragment address `a` is: (group, group-relative fragment).
    fn locate(sb: &Superblock, a: u64) -> (u32, u32) {
        ((a / u64::from(sb.fpg)) as u32, (a % u64::from(sb.fpg)) as u32)
    }

    /// Is `a..a+n` a place file data may be: inside one block of the file system, outside
    /// group metadata and the summary area?
    fn data_range_ok(sb: &Superblock, a: u64, n: u32) -> bool {
        let frag = u64::from(sb.frag);
        let n = u64::from(n);
        if n == 0 || a.checked_add(n).is_none_or(|e| e > sb.size) || a % frag + n > frag {
            return false;
        }
        let (c, _) = Self::locate(sb, a);
        let meta_start = if c == 0 { 0 } else { sb.cgstart(c) + u64::from(sb.sblkno) };
        if a < sb.cgdmin(c) && a + n > meta_start {
            return false;
        }
        let cs_end = sb.csaddr + u64::from(sb.cssize.div_ceil(sb.fsize));
        !(a < cs_end && a + n > sb.csaddr)
    }

    /// Frees fragments `a..a+n` (inside one block). Freeing a fragment that is already free
    /// means the image is damaged: nothing changes and the answer is `EIO`.
    pub(crate) fn free_frags(&mut self, ctx: &Ctx<'_>, a: u64, n: u32) -> KResult<()> {
        let sb = ctx.sb;
        if !Self::data_range_ok(sb, a, n) {
            log::error!("{}: freeing fragments {a}+{n}: not a place for file data (damaged block pointer)", ctx.name);
            return Err(Errno::EIO);
        }
        let (c, rel) = Self::locate(sb, a);
        let frag = sb.frag;
        let b = rel / frag;
        let cg = self.load(ctx, c)?;
        if rel + n > cg.ndblk {
            log::error!("{}: freeing fragments {a}+{n}: beyond group {c}", ctx.name);
            return Err(Errno::EIO);
        }
        let old = cg.block_map(b);
        let mut bits = 0u32;
        for k in 0..n {
            bits |= 1 << (rel % frag + k);
        }
        if old & bits != 0 {
            log::error!("{}: freeing fragments {a}+{n}: already free (a block claimed twice?); left alone", ctx.name);
            return Err(Errno::EIO);
        }
        self.set_block_map(ctx, c, b, old | bits)?;
        for k in 0..u64::from(n) {
            ctx.dev.forget_block(a + k);
        }
        Ok(())
    }

    /// Takes fragments `rel..rel+n` of group `c` (all free, inside one block).
    fn take(&mut self, ctx: &Ctx<'_>, c: u32, rel: u32, n: u32) -> KResult<u64> {
        let frag = ctx.sb.frag;
        let b = rel / frag;
        let old = self.load(ctx, c)?.block_map(b);
        let mut bits = 0u32;
        for k in 0..n {
            bits |= 1 << (rel % frag + k);
        }
        if old & bits != bits {
            return Err(Errno::EIO);
        }
        self.set_block_map(ctx, c, b, old & !bits)?;
        Ok(ctx.sb.cgbase(c) + u64::from(rel))
    }

    /// Extends the run `a..a+old` to `new` fragments in place, if the fragments after it (in
    /// the same block) are free. `Ok(false)`: they are not.
    pub(crate) fn extend_in_place(&mut self, ctx: &Ctx<'_>, a: u64, old: u32, new: u32) -> KResult<bool> {
        let sb = ctx.sb;
        if new <= old || !Self::data_range_ok(sb, a, new) {
            return Ok(false);
        }
        let (c, rel) = Self::locate(sb, a);
        let cg = self.load(ctx, c)?;
        if rel + new > cg.ndblk || !(old..new).all(|k| cg.frag_free(rel + k)) {
            return Ok(false);
        }
        self.take(ctx, c, rel + old, new - old)?;
        let cg = self.load(ctx, c)?;
        cg.set(update::cgf::FROTOR, rel);
        Ok(true)
    }

    /// Allocates `n` fragments (a whole block when `n == frag`) near fragment `pref` (0: in
    /// group `cg_pref`). Fails: `ENOSPC`.
    pub(crate) fn alloc(&mut self, ctx: &Ctx<'_>, pref: u64, cg_pref: u32, n: u32) -> KResult<u64> {
        let sb = ctx.sb;
        if n == 0 || n > sb.frag {
            return Err(Errno::EINVAL);
        }
        if self.total.nbfree <= 0 && (n == sb.frag || self.total.nffree < i64::from(n)) {
            return Err(Errno::ENOSPC);
        }
        let start = if pref != 0 && pref < sb.size { Self::locate(sb, pref).0 } else { cg_pref % sb.ncg };
        let pref = if pref != 0 && pref < sb.size { Some(pref) } else { None };
        let ncg = sb.ncg;
        // FFS's hashalloc: the preferred group, quadratic rehash, then all.
        let mut order = vec![start];
        let mut i = 1u32;
        let mut c = start;
        while i < ncg {
            c = (c + i) % ncg;
            order.push(c);
            i *= 2;
        }
        order.extend((0..ncg).map(|k| (start + 2 + k) % ncg));
        for c in order {
            let ci = c as usize;
            if self.bad[ci] {
                continue;
            }
            let s = self.cs[ci];
            if s.nbfree <= 0 && (n == sb.frag || s.nffree < n as i32) {
                continue;
            }
            match self.alloc_in(ctx, c, pref.filter(|&p| Self::locate(sb, p).0 == c), n) {
                Ok(Some(a)) => return Ok(a),
                Ok(None) => {}
                Err(Errno::EIO) => {} // a damaged group: try the others
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ENOSPC)
    }

    fn alloc_in(&mut self, ctx: &Ctx<'_>, c: u32, pref: Option<u64>, n: u32) -> KResult<Option<u64>> {
        let sb = ctx.sb;
        let frag = sb.frag;
        let base = sb.cgbase(c);
        let cg = self.load(ctx, c)?;
        let nblk = cg.ndblk / frag;
        let pref_rel = pref.map(|p| (p - base) as u32).filter(|&r| r < cg.ndblk);
        if n < frag {
            // The smallest run of free fragments that fits (cg_frsum), near pref first.
            if let Some(r) = pref_rel {
                if r % frag + n <= frag && (0..n).all(|k| cg.frag_free(r + k)) && !cg.is_block_free(r / frag) {
                    return self.take(ctx, c, r, n).map(Some);
                }
            }
            let fit = (n..frag).find(|&s| cg.frsum(s) > 0);
            if let Some(fit) = fit {
                let frotor = cg.get(update::cgf::FROTOR) / frag;
                let start = if frotor < nblk { frotor } else { 0 };
                // A run of exactly `fit`, else any run that fits in a partly used block.
                for want_exact in [true, false] {
                    for k in 0..nblk {
                        let b = (start + k) % nblk;
                        let m = cg.block_map(b);
                        if m == 0 || update::is_block_free(m, frag) {
                            continue;
                        }
                        let mut run = 0;
                        for bit in 0..=frag {
                            if bit < frag && m & (1 << bit) != 0 {
                                run += 1;
                                continue;
                            }
                            let ok = if want_exact { run == fit } else { run >= n };
                            if ok {
                                let rel = b * frag + bit - run;
                                let a = self.take(ctx, c, rel, n)?;
                                if let Some(cg) = self.cgs.get_mut(&c) {
                                    cg.set(update::cgf::FROTOR, b * frag);
                                }
                                return Ok(Some(a));
                            }
                            run = 0;
                        }
                    }
                }
            }
            // No run of fragments: break a whole block.
        }
        let cg = self.load(ctx, c)?;
        let mut found = None;
        if let Some(r) = pref_rel {
            if cg.is_block_free(r / frag) {
                found = Some(r / frag);
            }
        }
        if found.is_none() {
            let rotor = cg.get(update::cgf::ROTOR) / frag;
            let start = if rotor < nblk { rotor } else { 0 };
            found = (0..nblk).map(|k| (start + k) % nblk).find(|&b| cg.is_block_free(b));
        }
        let Some(b) = found else {
            if cg.cs().nbfree > 0 {
                log::warn!("{}: cylinder group {c} counts {} free blocks but has none", ctx.name, cg.cs().nbfree);
            }
            return Ok(None);
        };
        cg.set(update::cgf::ROTOR, b * frag);
        self.take(ctx, c, b * frag, n).map(Some)
    }

    // ----- inodes -----

    /// Allocates an inode in group `cg_pref` or the nearest with a free one. Returns the
    /// inode number and whether its block had to be initialised (UFS2 `cg_initediblk`).
    pub(crate) fn alloc_inode(&mut self, ctx: &Ctx<'_>, cg_pref: u32, dir: bool, gen: &mut dyn FnMut() -> u32) -> KResult<u32> {
        let sb = ctx.sb;
        if self.total.nifree <= 0 {
            return Err(Errno::ENOSPC);
        }
        let ncg = sb.ncg;
        let start = cg_pref % ncg;
        let mut order = vec![start];
        let mut i = 1u32;
        let mut c = start;
        while i < ncg {
            c = (c + i) % ncg;
            order.push(c);
            i *= 2;
        }
        order.extend((0..ncg).map(|k| (start + 2 + k) % ncg));
        for c in order {
            if self.bad[c as usize] || self.cs[c as usize].nifree <= 0 {
                continue;
            }
            match self.inode_in(ctx, c, dir, gen) {
                Ok(Some(ino)) => return Ok(ino),
                Ok(None) | Err(Errno::EIO) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ENOSPC)
    }

    fn inode_in(&mut self, ctx: &Ctx<'_>, c: u32, dir: bool, gen: &mut dyn FnMut() -> u32) -> KResult<Option<u32>> {
        let sb = ctx.sb;
        let ipg = sb.ipg;
        let cg = self.load(ctx, c)?;
        let irotor = cg.get(update::cgf::IROTOR);
        let start = if irotor < ipg { irotor } else { 0 };
        let Some(idx) = (0..ipg).map(|k| (start + k) % ipg).find(|&i| !cg.inode_used(i) && c * ipg + i >= ROOTINO) else {
            log::warn!("{}: cylinder group {c} counts {} free inodes but has none", ctx.name, cg.cs().nifree);
            return Ok(None);
        };
        // UFS2: inodes past cg_initediblk hold garbage; initialise their blocks first.
        if sb.ufs2 {
            let inopb = sb.inopb;
            while cg.initediblk() <= idx {
                let first = cg.initediblk();
                let frag = sb.frag as usize;
                let fsz = sb.fsize as usize;
                let mut block = vec![0u8; frag * fsz];
                for k in 0..inopb as usize {
                    let rec = update::free_inode_record(sb, gen());
                    block[k * sb.isize()..(k + 1) * sb.isize()].copy_from_slice(&rec);
                }
                let (frag0, _) = update::inode_location(sb, c * ipg + first);
                for (k, chunk) in block.chunks(fsz).enumerate() {
                    ctx.dev.bwrite(frag0 + k as u64, chunk.to_vec())?;
                }
                cg.set(update::cgf::INITEDIBLK, (first + inopb).min(ipg));
            }
        }
        cg.set_inode_used(idx, true);
        cg.set(update::cgf::IROTOR, idx);
        self.account(c, Csum { nifree: -1, ndir: i32::from(dir), ..Default::default() });
        Ok(Some(c * ipg + idx))
    }

    /// Frees inode `ino` in its group's map. An inode already free is damage: `EIO`.
    pub(crate) fn free_inode(&mut self, ctx: &Ctx<'_>, ino: u32, dir: bool) -> KResult<()> {
        let sb = ctx.sb;
        if ino < ROOTINO || ino >= sb.ninodes() {
            return Err(Errno::EIO);
        }
        let (c, idx) = (ino / sb.ipg, ino % sb.ipg);
        let cg = self.load(ctx, c)?;
        if !cg.inode_used(idx) {
            log::error!("{}: freeing inode {ino}: already free in its group's map; left alone", ctx.name);
            return Err(Errno::EIO);
        }
        cg.set_inode_used(idx, false);
        if idx < cg.get(update::cgf::IROTOR) {
            cg.set(update::cgf::IROTOR, idx);
        }
        self.account(c, Csum { nifree: 1, ndir: -i32::from(dir), ..Default::default() });
        Ok(())
    }

    // ----- where to allocate -----

    /// The group for a new directory under `parent` (FreeBSD's `ffs_dirpref`): directories
    /// of the root spread to the group with the fewest directories among those with at
    /// least average free space; others stay near their parent while its group is not
    /// crowded. `rand`: a random number for the root's search start.
    pub(crate) fn dirpref(&self, sb: &Superblock, parent: u32, rand: u32) -> u32 {
        let ncg = i64::from(sb.ncg);
        let avgifree = self.total.nifree.max(0) / ncg;
        let avgbfree = self.total.nbfree.max(0) / ncg;
        let avgndir = self.total.ndir.max(0) / ncg;
        let n = sb.ncg;
        if parent == ROOTINO {
            let pref = rand % n;
            let mut best = None;
            let mut minndir = i64::from(sb.ipg);
            for k in 0..n {
                let c = (pref + k) % n;
                let s = self.cs[c as usize];
                if i64::from(s.ndir) < minndir && i64::from(s.nifree) >= avgifree && i64::from(s.nbfree) >= avgbfree && !self.bad[c as usize] {
                    best = Some(c);
                    minndir = i64::from(s.ndir);
                }
            }
            if let Some(c) = best {
                return c;
            }
        } else {
            let maxndir = (avgndir + i64::from(sb.ipg) / 16).min(i64::from(sb.ipg));
            let minifree = (avgifree - avgifree / 4).max(1);
            let minbfree = (avgbfree - avgbfree / 4).max(1);
            let pref = (parent / sb.ipg) % n;
            for k in 0..n {
                let c = (pref + k) % n;
                let s = self.cs[c as usize];
                if i64::from(s.ndir) < maxndir && i64::from(s.nifree) >= minifree && i64::from(s.nbfree) >= minbfree && !self.bad[c as usize] {
                    return c;
                }
            }
        }
        let pref = (parent / sb.ipg) % n;
        (0..n).map(|k| (pref + k) % n).find(|&c| i64::from(self.cs[c as usize].nifree) >= avgifree.max(1)).unwrap_or(pref)
    }

    /// A group with at least the average number of free blocks, from `start` on (FreeBSD's
    /// `ffs_blkpref` for a new section of a big file).
    pub(crate) fn group_with_space(&self, sb: &Superblock, start: u32) -> u32 {
        let n = sb.ncg;
        let avg = self.total.nbfree.max(0) / i64::from(n);
        (0..n).map(|k| (start + k) % n).find(|&c| i64::from(self.cs[c as usize].nbfree) >= avg.max(1)).unwrap_or(start % n)
    }
}
