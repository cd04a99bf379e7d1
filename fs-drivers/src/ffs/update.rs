//! FFS write primitives, shared by the write path and the checker (`ffs/fsck`): each turns a
//! value into its on-disk bytes with the check hash the file system keeps (`fs_metackhash`:
//! `CK_SUPERBLOCK`, `CK_CYLGRP`, `CK_INODE`) and puts it in the buffer cache (dirty until
//! sync) or, for the superblock, on the device.
//!
//! They take the validated [`Superblock`] and the [`CachedDev`], never the mounted file
//! system, so a checker can call them on a device it opened itself. None of them decides
//! whether a change is right: callers decide what to write; these write it whole, in the
//! image's byte order, with its hash. The bitmap helpers ([`frag_acct`], [`cluster_acct`],
//! [`is_block_free`] ...) are the FFS rules for the cylinder-group maps and summaries.

use super::endian::ByteOrder;
use super::inode::Inode;
use super::superblock::{ck, off, CsTotal, Superblock};
use super::{cg as cgoff, ckhash};
use vfs_faction::{CachedDev, Errno, KResult, Timespec};

/// `fs_clean` of a cleanly unmounted file system (NetBSD's `FS_ISCLEAN`).
pub(crate) const FS_ISCLEAN: u8 = 1;

/// `struct csum`: one cylinder group's counts (in `cg_cs` and in the summary area).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Csum {
    pub ndir: i32,
    pub nbfree: i32,
    pub nifree: i32,
    pub nffree: i32,
}

impl Csum {
    pub(crate) fn read(o: ByteOrder, b: &[u8], at: usize) -> Csum {
        Csum { ndir: o.i32(b, at), nbfree: o.i32(b, at + 4), nifree: o.i32(b, at + 8), nffree: o.i32(b, at + 12) }
    }
    pub(crate) fn write(&self, o: ByteOrder, b: &mut [u8], at: usize) {
        o.put_i32(b, at, self.ndir);
        o.put_i32(b, at + 4, self.nbfree);
        o.put_i32(b, at + 8, self.nifree);
        o.put_i32(b, at + 12, self.nffree);
    }
}

// ---------------------------------------------------------------------------------------
// The superblock

/// Sets the summary totals of a raw superblock: `fs_cstotal` and, for UFS1, the old
/// `fs_old_cstotal` too (as NetBSD's `ffs_oldfscompat_write` does).
pub(crate) fn sb_set_totals(sb: &Superblock, raw: &mut [u8], t: &CsTotal) {
    let o = sb.order;
    let at = off::CSTOTAL;
    o.put_i64(raw, at, t.ndir);
    o.put_i64(raw, at + 8, t.nbfree);
    o.put_i64(raw, at + 16, t.nifree);
    o.put_i64(raw, at + 24, t.nffree);
    if !sb.ufs2 {
        let at = off::OLD_CSTOTAL;
        let c = |v: i64| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        o.put_i32(raw, at, c(t.ndir));
        o.put_i32(raw, at + 4, c(t.nbfree));
        o.put_i32(raw, at + 8, c(t.nifree));
        o.put_i32(raw, at + 12, c(t.nffree));
    }
}

/// The totals a raw superblock holds (new fields).
pub(crate) fn sb_totals(sb: &Superblock, raw: &[u8]) -> CsTotal {
    let o = sb.order;
    let at = off::CSTOTAL;
    CsTotal { ndir: o.i64(raw, at), nbfree: o.i64(raw, at + 8), nifree: o.i64(raw, at + 16), nffree: o.i64(raw, at + 24) }
}

/// Sets `fs_time` (and UFS1's `fs_old_time`).
pub(crate) fn sb_set_time(sb: &Superblock, raw: &mut [u8], t: Timespec) {
    sb.order.put_i64(raw, off::TIME, t.sec);
    if !sb.ufs2 {
        sb.order.put_i32(raw, off::OLD_TIME, t.sec as i32);
    }
}

/// Sets `fs_mtime` (last mount or check).
pub(crate) fn sb_set_mtime(sb: &Superblock, raw: &mut [u8], t: Timespec) {
    sb.order.put_i64(raw, off::MTIME, t.sec);
}

/// Sets `fs_clean`, clears the in-core `fs_fmod` and `fs_ronly` (BSD writes them as 0).
pub(crate) fn sb_set_clean(raw: &mut [u8], clean: u8) {
    raw[off::CLEAN] = clean;
    raw[off::FMOD] = 0;
    raw[off::RONLY] = 0;
}

/// The flags of a raw superblock (UFS1: `fs_flags` with the low bits of `fs_old_flags`).
pub(crate) fn sb_flags(sb: &Superblock, raw: &[u8]) -> u32 {
    let f = sb.order.u32(raw, off::FLAGS);
    if sb.ufs2 {
        f
    } else {
        f | u32::from(raw[off::OLD_FLAGS]) & !super::superblock::flags::FS_FLAGS_UPDATED
    }
}

/// Sets `fs_flags` (UFS1: and the low seven bits of `fs_old_flags`, which keeps
/// `FS_FLAGS_UPDATED`).
pub(crate) fn sb_set_flags(sb: &Superblock, raw: &mut [u8], flags: u32) {
    sb.order.put_u32(raw, off::FLAGS, flags);
    if !sb.ufs2 {
        let upd = super::superblock::flags::FS_FLAGS_UPDATED;
        raw[off::OLD_FLAGS] = ((flags & 0x7f) | (u32::from(raw[off::OLD_FLAGS]) & upd)) as u8;
    }
}

/// Writes the superblock `raw` (`fs_sbsize` bytes) at `sb.location` straight to the device,
/// with its check hash when `CK_SUPERBLOCK` is on. The bytes around it in the same 512-byte
/// sectors are read and kept; cached fragments that overlap are dropped. Not flushed.
pub(crate) fn write_superblock(sb: &Superblock, dev: &CachedDev, raw: &mut [u8]) -> KResult<()> {
    if raw.len() != sb.raw.len() {
        return Err(Errno::EINVAL);
    }
    if sb.metackhash & ck::SUPERBLOCK != 0 {
        raw[off::CKHASH..off::CKHASH + 4].fill(0);
        let h = ckhash(raw);
        sb.order.put_u32(raw, off::CKHASH, h);
    }
    let start = sb.location & !511;
    let end = (sb.location + raw.len() as u64).next_multiple_of(512);
    let mut buf = vec![0u8; (end - start) as usize];
    dev.read_raw(&mut buf, start)?;
    let at = (sb.location - start) as usize;
    buf[at..at + raw.len()].copy_from_slice(raw);
    let fs = u64::from(sb.fsize);
    for f in start / fs..end.div_ceil(fs) {
        dev.forget_block(f);
    }
    dev.write_raw(&buf, start)
}

// ---------------------------------------------------------------------------------------
// The summary area (fs_csp)

/// Reads the per-group summaries (`fs_cssize` bytes at `fs_csaddr`).
pub(crate) fn read_csum_area(sb: &Superblock, dev: &CachedDev) -> KResult<Vec<Csum>> {
    let fs = sb.fsize as usize;
    let nfrags = (sb.cssize as usize).div_ceil(fs);
    let mut buf = vec![0u8; nfrags * fs];
    dev.read_blocks(sb.csaddr, nfrags as u64, &mut buf, 0)?;
    Ok((0..sb.ncg as usize).map(|c| Csum::read(sb.order, &buf, c * 16)).collect())
}

/// Writes the per-group summaries into the summary area (in the cache). Bytes of the area
/// past the last group are kept.
pub(crate) fn write_csum_area(sb: &Superblock, dev: &CachedDev, cs: &[Csum]) -> KResult<()> {
    if cs.len() != sb.ncg as usize {
        return Err(Errno::EINVAL);
    }
    let fs = sb.fsize as usize;
    let nfrags = (sb.cssize as usize).div_ceil(fs);
    for f in 0..nfrags {
        let buf = dev.bread(sb.csaddr + f as u64)?;
        let mut b = buf.to_vec();
        for (c, s) in cs.iter().enumerate() {
            let at = c * 16;
            if at >= (f + 1) * fs || at + 16 <= f * fs {
                continue;
            }
            let mut rec = [0u8; 16];
            s.write(sb.order, &mut rec, 0);
            for (k, byte) in rec.iter().enumerate() {
                let pos = at + k;
                if pos >= f * fs && pos < (f + 1) * fs {
                    b[pos - f * fs] = *byte;
                }
            }
        }
        if b[..] != buf[..] {
            dev.bwrite(sb.csaddr + f as u64, b)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cylinder groups

/// Further offsets in `struct cg` (see also [`super::cg`]).
pub(crate) mod cgf {
    pub const OLD_TIME: usize = 8;
    pub const OLD_NIBLK: usize = 18;
    pub const NDBLK: usize = 20;
    pub const CS: usize = 24;
    pub const ROTOR: usize = 40;
    pub const FROTOR: usize = 44;
    pub const IROTOR: usize = 48;
    pub const FRSUM: usize = 52;
    pub const IUSEDOFF: usize = 92;
    pub const FREEOFF: usize = 96;
    pub const CLUSTERSUMOFF: usize = 104;
    pub const CLUSTEROFF: usize = 108;
    pub const NCLUSTERBLKS: usize = 112;
    pub const INITEDIBLK: usize = 120;
    pub const TIME: usize = 136;
    /// `sizeof(struct cg)` without its variable part.
    pub const HEADER: usize = 168;
}

/// A cylinder group block, checked: every map and table it names lies inside it, so the
/// accessors below never reach outside `raw`. Group-relative numbers: fragment `f` of the
/// group is file system fragment `cgbase(cgx) + f`.
#[derive(Clone, Debug)]
pub(crate) struct Cg {
    pub cgx: u32,
    pub raw: Vec<u8>,
    pub order: ByteOrder,
    /// Fragments in this group (`cg_ndblk`).
    pub ndblk: u32,
    pub iusedoff: usize,
    pub freeoff: usize,
    /// Cluster summary and map (when `fs_contigsumsize > 0`).
    pub clustersumoff: usize,
    pub clusteroff: usize,
    pub nclusterblks: u32,
    pub contigsumsize: u32,
    pub frag: u32,
    pub ipg: u32,
    pub ufs2: bool,
}

impl Cg {
    /// Checks group `c`'s block `raw` (`fs_cgsize` bytes) against the superblock.
    pub(crate) fn parse(sb: &Superblock, c: u32, raw: Vec<u8>) -> Result<Cg, String> {
        let o = sb.order;
        if raw.len() != sb.cgsize as usize || raw.len() < cgf::HEADER {
            return Err(format!("cylinder group block of {} bytes", raw.len()));
        }
        if o.u32(&raw, cgoff::MAGIC) != cgoff::CG_MAGIC {
            return Err(format!("bad magic {:#x}", o.u32(&raw, cgoff::MAGIC)));
        }
        if o.u32(&raw, cgoff::CGX) != c {
            return Err(format!("claims to be group {}", o.u32(&raw, cgoff::CGX)));
        }
        if sb.metackhash & ck::CYLGRP != 0 {
            let want = o.u32(&raw, cgoff::CKHASH);
            let got = cg_hash(&raw);
            if want != got {
                return Err(format!("check hash {want:#010x}, computed {got:#010x}"));
            }
        }
        let expect = (sb.size - sb.cgbase(c)).min(u64::from(sb.fpg)) as u32;
        let ndblk = o.u32(&raw, cgf::NDBLK);
        if ndblk != expect {
            return Err(format!("cg_ndblk {ndblk}, the group has {expect} fragments"));
        }
        let len = raw.len();
        let fits = |at: u32, bytes: usize| (at as usize) >= cgf::HEADER && (at as usize).checked_add(bytes).is_some_and(|e| e <= len);
        let iusedoff = o.u32(&raw, cgf::IUSEDOFF);
        let freeoff = o.u32(&raw, cgf::FREEOFF);
        if !fits(iusedoff, (sb.ipg as usize).div_ceil(8)) {
            return Err(format!("inode map at {iusedoff} leaves the group block"));
        }
        if !fits(freeoff, (sb.fpg as usize).div_ceil(8)) {
            return Err(format!("fragment map at {freeoff} leaves the group block"));
        }
        let niblk = if sb.ufs2 { o.u32(&raw, cgoff::NIBLK) } else { u32::from(o.u16(&raw, cgf::OLD_NIBLK)) };
        if niblk != sb.ipg {
            return Err(format!("{niblk} inodes, the superblock says {}", sb.ipg));
        }
        let (mut clustersumoff, mut clusteroff, mut nclusterblks) = (0, 0, 0);
        if sb.contigsumsize > 0 {
            clustersumoff = o.u32(&raw, cgf::CLUSTERSUMOFF);
            clusteroff = o.u32(&raw, cgf::CLUSTEROFF);
            nclusterblks = o.u32(&raw, cgf::NCLUSTERBLKS);
            if nclusterblks != ndblk / sb.frag {
                return Err(format!("{nclusterblks} cluster blocks, the group has {}", ndblk / sb.frag));
            }
            // The unused first summary slot may overlap the fragment map (FreeBSD's layout).
            if (clustersumoff as usize) < cgf::HEADER || clustersumoff as usize + 4 * (sb.contigsumsize as usize + 1) > len {
                return Err(format!("cluster summary at {clustersumoff} leaves the group block"));
            }
            if !fits(clusteroff, (nclusterblks as usize).div_ceil(8)) {
                return Err(format!("cluster map at {clusteroff} leaves the group block"));
            }
        }
        if sb.ufs2 && o.u32(&raw, cgf::INITEDIBLK) > sb.ipg {
            return Err(format!("cg_initediblk {} is beyond {} inodes", o.u32(&raw, cgf::INITEDIBLK), sb.ipg));
        }
        Ok(Cg {
            cgx: c,
            order: o,
            ndblk,
            iusedoff: iusedoff as usize,
            freeoff: freeoff as usize,
            clustersumoff: clustersumoff as usize,
            clusteroff: clusteroff as usize,
            nclusterblks,
            contigsumsize: sb.contigsumsize,
            frag: sb.frag,
            ipg: sb.ipg,
            ufs2: sb.ufs2,
            raw,
        })
    }

    pub(crate) fn cs(&self) -> Csum {
        Csum::read(self.order, &self.raw, cgf::CS)
    }
    pub(crate) fn set_cs(&mut self, cs: Csum) {
        cs.write(self.order, &mut self.raw, cgf::CS);
    }
    pub(crate) fn get(&self, at: usize) -> u32 {
        self.order.u32(&self.raw, at)
    }
    pub(crate) fn set(&mut self, at: usize, v: u32) {
        self.order.put_u32(&mut self.raw, at, v);
    }
    /// `cg_frsum[n]`: free runs of exactly `n` fragments (`n < frag`).
    pub(crate) fn frsum(&self, n: u32) -> i32 {
        self.order.i32(&self.raw, cgf::FRSUM + 4 * n as usize)
    }
    pub(crate) fn add_frsum(&mut self, n: u32, d: i32) {
        let at = cgf::FRSUM + 4 * n as usize;
        let v = self.order.i32(&self.raw, at);
        self.order.put_i32(&mut self.raw, at, v.wrapping_add(d));
    }
    /// `cg_initediblk` (UFS2); UFS1 groups have every inode initialised.
    pub(crate) fn initediblk(&self) -> u32 {
        if self.ufs2 {
            self.get(cgf::INITEDIBLK)
        } else {
            self.ipg
        }
    }
    /// Is fragment `f` (group-relative) free?
    pub(crate) fn frag_free(&self, f: u32) -> bool {
        bit(&self.raw[self.freeoff..], f as usize)
    }
    pub(crate) fn set_frag_free(&mut self, f: u32, free: bool) {
        set_bit(&mut self.raw[self.freeoff..], f as usize, free);
    }
    /// Is inode `i` (group index) in use?
    pub(crate) fn inode_used(&self, i: u32) -> bool {
        bit(&self.raw[self.iusedoff..], i as usize)
    }
    pub(crate) fn set_inode_used(&mut self, i: u32, used: bool) {
        set_bit(&mut self.raw[self.iusedoff..], i as usize, used);
    }
    /// The free bits of block `b` (group-relative block number), one per fragment.
    pub(crate) fn block_map(&self, b: u32) -> u32 {
        let mut m = 0;
        for k in 0..self.frag {
            if self.frag_free(b * self.frag + k) {
                m |= 1 << k;
            }
        }
        m
    }
    /// Is every fragment of block `b` free?
    pub(crate) fn is_block_free(&self, b: u32) -> bool {
        is_block_free(self.block_map(b), self.frag)
    }
    /// Marks block `b` in the cluster map and updates the cluster summary (`cnt` +1: freed,
    /// -1: allocated): FreeBSD's `ffs_clusteracct`.
    pub(crate) fn cluster_acct(&mut self, b: u32, cnt: i32) {
        if self.contigsumsize == 0 || b >= self.nclusterblks {
            return;
        }
        let map_at = self.clusteroff;
        set_bit(&mut self.raw[map_at..], b as usize, cnt > 0);
        let max = self.contigsumsize;
        let n = self.nclusterblks;
        let map = &self.raw[map_at..];
        let mut fwd = 0u32;
        while fwd < max && b + 1 + fwd < n && bit(map, (b + 1 + fwd) as usize) {
            fwd += 1;
        }
        let mut back = 0u32;
        while back < max && back < b && bit(map, (b - 1 - back) as usize) {
            back += 1;
        }
        let total = (back + fwd + 1).min(max);
        self.add_cluster_sum(total, cnt);
        if back > 0 {
            self.add_cluster_sum(back, -cnt);
        }
        if fwd > 0 {
            self.add_cluster_sum(fwd, -cnt);
        }
    }
    fn add_cluster_sum(&mut self, n: u32, d: i32) {
        // Slot 0 is never touched: it may overlap the fragment map.
        if n == 0 || n > self.contigsumsize {
            return;
        }
        let at = self.clustersumoff + 4 * n as usize;
        let v = self.order.i32(&self.raw, at);
        self.order.put_i32(&mut self.raw, at, v.wrapping_add(d));
    }
    /// Adds `cnt` (±1) for every maximal run of free fragments shorter than a block in the
    /// free map `map` of one block: FreeBSD's `ffs_fragacct`.
    pub(crate) fn frag_acct(&mut self, map: u32, cnt: i32) {
        let frag = self.frag;
        for (len, n) in frag_runs(map, frag) {
            self.add_frsum(len, cnt * n as i32);
        }
    }
}

/// The maximal runs of set bits shorter than `frag` in a block map: (run length, count).
pub(crate) fn frag_runs(map: u32, frag: u32) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut run = 0;
    for k in 0..=frag {
        if k < frag && map & (1 << k) != 0 {
            run += 1;
        } else {
            if run > 0 && run < frag {
                match out.iter_mut().find(|(l, _)| *l == run) {
                    Some(e) => e.1 += 1,
                    None => out.push((run, 1)),
                }
            }
            run = 0;
        }
    }
    out
}

/// Applies `frag_acct` semantics to a summary array (the checker rebuilds `cg_frsum` with it).
pub(crate) fn frag_acct(frsum: &mut [i32], map: u32, frag: u32, cnt: i32) {
    for (len, n) in frag_runs(map, frag) {
        if let Some(s) = frsum.get_mut(len as usize) {
            *s += cnt * n as i32;
        }
    }
}

/// Is a block whose fragment map is `map` wholly free?
pub(crate) fn is_block_free(map: u32, frag: u32) -> bool {
    map == (1u32 << frag) - 1
}

pub(crate) fn bit(b: &[u8], i: usize) -> bool {
    b.get(i / 8).is_some_and(|&x| x & (1 << (i % 8)) != 0)
}

pub(crate) fn set_bit(b: &mut [u8], i: usize, v: bool) {
    if let Some(x) = b.get_mut(i / 8) {
        if v {
            *x |= 1 << (i % 8);
        } else {
            *x &= !(1 << (i % 8));
        }
    }
}

/// The cylinder-group check hash: raw CRC-32C of `fs_cgsize` bytes with `cg_ckhash` zero.
pub(crate) fn cg_hash(raw: &[u8]) -> u32 {
    let mut copy = raw.to_vec();
    if let Some(s) = copy.get_mut(cgoff::CKHASH..cgoff::CKHASH + 4) {
        s.fill(0);
    }
    ckhash(&copy)
}

/// Reads group `c`'s block (`fs_cgsize` bytes) through the cache.
pub(crate) fn read_cg_raw(sb: &Superblock, dev: &CachedDev, c: u32) -> KResult<Vec<u8>> {
    let fs = sb.fsize as usize;
    let n = (sb.cgsize as usize).div_ceil(fs);
    let mut buf = Vec::with_capacity(n * fs);
    for k in 0..n {
        buf.extend_from_slice(&dev.bread(sb.cgtod(c) + k as u64)?);
    }
    buf.truncate(sb.cgsize as usize);
    Ok(buf)
}

/// Writes cylinder group `cg` into the cache with its time (`cg_time`, UFS1 `cg_old_time`)
/// set to `now` and, with `CK_CYLGRP`, its check hash. The bytes of the last fragment past
/// `fs_cgsize` are kept.
pub(crate) fn write_cg(sb: &Superblock, dev: &CachedDev, cg: &mut Cg, now: Timespec) -> KResult<()> {
    let o = sb.order;
    if sb.ufs2 {
        o.put_i64(&mut cg.raw, cgf::TIME, now.sec);
    } else {
        o.put_i32(&mut cg.raw, cgf::OLD_TIME, now.sec as i32);
    }
    if sb.metackhash & ck::CYLGRP != 0 {
        o.put_u32(&mut cg.raw, cgoff::CKHASH, 0);
        let h = cg_hash(&cg.raw);
        o.put_u32(&mut cg.raw, cgoff::CKHASH, h);
    }
    let fs = sb.fsize as usize;
    let first = sb.cgtod(cg.cgx);
    for (k, chunk) in cg.raw.chunks(fs).enumerate() {
        let blk = first + k as u64;
        let b = if chunk.len() == fs {
            chunk.to_vec()
        } else {
            let mut b = dev.bread(blk)?.to_vec();
            b[..chunk.len()].copy_from_slice(chunk);
            b
        };
        dev.bwrite(blk, b)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Inodes

/// Where inode `ino` lives: (fragment, byte offset in it).
pub(crate) fn inode_location(sb: &Superblock, ino: u32) -> (u64, usize) {
    let cg = ino / sb.ipg;
    let idx = ino % sb.ipg;
    let block = sb.cgimin(cg) + u64::from(idx / sb.inopb) * u64::from(sb.frag);
    let byte = (idx % sb.inopb) as usize * sb.isize();
    let fs = sb.fsize as usize;
    (block + (byte / fs) as u64, byte % fs)
}

/// Writes raw inode record `raw` (already encoded, hash set) of `ino` into its fragment in
/// the cache. The caller serialises writers of one inode fragment (a read-modify-write).
pub(crate) fn write_inode_raw(sb: &Superblock, dev: &CachedDev, ino: u32, raw: &[u8]) -> KResult<()> {
    if ino >= sb.ninodes() || raw.len() != sb.isize() {
        return Err(Errno::EINVAL);
    }
    let (frag, at) = inode_location(sb, ino);
    let buf = dev.bread(frag)?;
    if buf.get(at..at + raw.len()) == Some(raw) {
        return Ok(());
    }
    let mut b = buf.to_vec();
    b[at..at + raw.len()].copy_from_slice(raw);
    dev.bwrite(frag, b)
}

/// Encodes `inode` (its check hash set with `CK_INODE`) and writes it (see
/// [`write_inode_raw`]).
pub(crate) fn write_inode(sb: &Superblock, dev: &CachedDev, ino: u32, inode: &mut Inode) -> KResult<()> {
    let raw = inode.encode(sb).to_vec();
    write_inode_raw(sb, dev, ino, &raw)
}

/// A cleared inode record (mode 0) with generation `gen`, check hash set: what a freed inode
/// or a freshly initialised inode block holds.
pub(crate) fn free_inode_record(sb: &Superblock, gen: u32) -> Vec<u8> {
    let mut raw = vec![0u8; sb.isize()];
    let gen_at = if sb.ufs2 { 80 } else { 108 };
    sb.order.put_u32(&mut raw, gen_at, gen);
    if sb.ufs2 && sb.metackhash & ck::INODE != 0 {
        let h = super::inode::dinode_hash(&raw);
        sb.order.put_u32(&mut raw, 244, h);
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_runs_are_maximal_and_shorter_than_a_block() {
        assert_eq!(frag_runs(0b0000_0000, 8), vec![]);
        assert_eq!(frag_runs(0b1111_1111, 8), vec![]);
        assert_eq!(frag_runs(0b0111_1111, 8), vec![(7, 1)]);
        assert_eq!(frag_runs(0b1011_0101, 8), vec![(1, 3), (2, 1)]);
        let mut s = [0i32; 8];
        frag_acct(&mut s, 0b1100_0011, 8, 1);
        assert_eq!(s, [0, 0, 2, 0, 0, 0, 0, 0]);
        assert!(is_block_free(0b11, 2));
    }
}
