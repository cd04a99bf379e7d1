//! The FFS checker: fsck_ffs's phases, run through the same kernel, buffer cache, on-disk
//! parsers ([`Superblock`], [`Inode`], [`dir::walk_chunk`]) and write primitives
//! ([`update`]) as a mount.
//!
//! - setup ([`Checker::check_super`]): the superblock against its first alternate (group
//!   1's copy), every cylinder group header (magic, index, counts, map offsets, check hash).
//! - [`pass1`]: every inode: mode, size against its pointers, block and fragment pointers in
//!   range, indirect blocks (a bounded walk), `di_blocks`, check hashes; fragments claimed
//!   twice (1b: who else claims them; with `-y` the later claimant gets its own copy of
//!   each shared run, as e2fsck does, so both files keep their content).
//! - [`pass2`]: directory chunks (`DIRBLKSIZ`): records, names, `.` and `..`, entries naming
//!   unallocated or bad inodes, `d_type`.
//! - [`pass3`]: connectivity (every directory reachable, `..` right, lost+found) and pass 4
//!   (link counts, unreferenced inodes).
//! - [`pass5`]: cylinder group maps (inodes, fragments, clusters), `cg_cs`, `cg_frsum`,
//!   cluster summaries, rotors, the summary area and `fs_cstotal`.
//!
//! Memory: one bit per fragment (`used`), four bytes per inode (state and two link counts),
//! a little per directory. Every walk is bounded; a corrupt value is a finding, never a panic.
//!
//! Repairs go through the buffer cache and are synced at the end of every pass that wrote.
//! The superblock is marked not clean before the first repair and clean again only when
//! every problem found was fixed, so a checker stopped half-way leaves a file system that
//! the next run checks and finishes.

mod pass1;
mod pass2;
mod pass3;
mod pass5;

use super::inode::{Inode, InodeError};
use super::superblock::{ck, flags, off, SbError, Superblock, ROOTINO};
use super::update::{self, Cg};
use super::{dir, find_superblock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
pub(crate) use vfs_faction::fsck::{Level, Problem, Reporter, Tally};
use vfs_faction::{
    BlockDevice, CachedDev, Errno, FsckOptions, FsckSink, FsckSummary, KResult, MountContext, MountError,
    Repair, Timespec,
};

/// Per-inode state codes (`state`).
pub(crate) mod st {
    /// Not in use.
    pub const FREE: u8 = 0;
    /// In use; the low bits are the `d_type` of its file type.
    pub const TYPE: u8 = 0x0F;
    /// In use, but invalid (bad mode, bad or duplicate pointers): kept.
    pub const BAD: u8 = 0x80;
    /// In use and invalid, and the repair (clear it) was accepted: entries naming it are
    /// removed in pass 2, it is cleared in pass 4.
    pub const CLEAR: u8 = 0x40;
    pub const DIR: u8 = 4;
}

/// What pass 2 learns of a directory.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DirInfo {
    /// The directory whose entry names this one (0: none found).
    pub parent: u32,
    /// What `..` says (0: missing).
    pub dotdot: u32,
    /// Where the `..` record is: (fragment, byte offset in it).
    pub dotdot_at: Option<(u64, usize)>,
    /// The `..` reference was counted in `found`.
    pub dotdot_counted: bool,
}

/// One bit per index.
pub(crate) struct Bits {
    words: Vec<u64>,
    len: u64,
}

impl Bits {
    pub fn new(len: u64) -> Bits {
        Bits { words: vec![0; usize::try_from(len.div_ceil(64)).unwrap_or(0)], len }
    }
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] >> (i % 64) & 1 != 0
    }
    /// Sets bit `i`; returns whether it was set before (out of range: `true`).
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return true;
        }
        let w = &mut self.words[(i / 64) as usize];
        let was = *w >> (i % 64) & 1 != 0;
        *w |= 1 << (i % 64);
        was
    }
    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }
}

/// Most fragments remembered as claimed twice; beyond that the claimants are still found,
/// but their other claimants are not listed (and such fragments are not cloned).
const MAX_DUPS: usize = 1 << 20;

/// The checker's state for one file system.
pub(crate) struct Checker<'a> {
    pub sb: Superblock,
    /// The superblock the inode parser sees: without `CK_INODE`, so that a bad inode check
    /// hash is a finding of its own, not an unreadable inode.
    pub psb: Superblock,
    pub sbraw: Vec<u8>,
    pub dev: CachedDev,
    pub repair: Repair,
    pub sink: &'a mut dyn FsckSink,
    pub now: Timespec,
    pub tally: Tally,
    pub wrote: bool,
    pub marked_dirty: bool,
    pub sb_changed: bool,
    /// Fragments in use, as found.
    pub used: Bits,
    /// Fragments claimed more than once.
    pub dups: HashSet<u64>,
    /// Later claimants of shared fragments whose clone was accepted (done in pass 1b).
    pub clones: Vec<(u32, Problem)>,
    pub state: Vec<u8>,
    /// Link counts on disk, and references found.
    pub nlink: Vec<u16>,
    pub found: Vec<u16>,
    pub dirs: HashMap<u32, DirInfo>,
    pub bad_why: HashMap<u32, String>,
    /// Why a group's header is unusable (`None`: good).
    pub cg_bad: Vec<Option<String>>,
    /// Inodes of each group that are initialised (UFS2 `cg_initediblk`).
    pub cg_init: Vec<u32>,
    /// A damaged group header is to be rewritten or rebuilt (the repair was accepted).
    pub cg_fix: Vec<bool>,
    /// A good group header: the layout a damaged one is rebuilt from.
    pub template: Option<Vec<u8>>,
    pub lost_found: u32,
    pub names: Option<HashMap<u32, (u32, Vec<u8>)>>,
    /// Every directory is known (after pass 1): paths can be built.
    pub paths_ready: bool,
    /// Computed per-group summaries (pass 5).
    pub totals: update::Csum,
}

/// Checks (and repairs, as `opts` allow) the FFS on `dev`.
pub(crate) fn check(
    ctx: &MountContext,
    dev: Arc<dyn BlockDevice>,
    opts: &FsckOptions,
    sink: &mut dyn FsckSink,
) -> Result<FsckSummary, MountError> {
    let op = |e: Errno, m: String| MountError::new(e, m);
    let sb = find_superblock(dev.as_ref()).map_err(|e| match e {
        SbError::NotFfs => op(Errno::EINVAL, "no FFS superblock found".into()),
        SbError::Unsupported(m) => op(Errno::EINVAL, m),
        SbError::Corrupt(m) => op(Errno::EUCLEAN, format!("corrupt superblock: {m}; cannot check")),
    })?;
    let unclean_flags = flags::FS_UNCLEAN | flags::FS_NEEDSFSCK;
    let clean = sb.clean != 0 && sb.flags & unclean_flags == 0;
    if !opts.force && clean {
        let t = sb.cstotal;
        let free = sb.free_frags();
        return Ok(FsckSummary {
            skipped_clean: true,
            line: format!(
                "{} files, {} used, {free} free ({} frags, {} blocks)",
                i64::from(sb.ninodes()) - t.nifree.clamp(0, i64::from(sb.ninodes())) - i64::from(ROOTINO),
                sb.dsize.saturating_sub(free),
                t.nffree,
                t.nbfree
            ),
            ..FsckSummary::default()
        });
    }
    let cache = ctx.cache.as_ref().ok_or_else(|| op(Errno::ENODEV, "ffs needs the dev faction's buffer cache".into()))?;
    let cdev = cache.attach(dev.clone(), sb.fsize).map_err(|e| op(e, format!("cannot attach: {e}")))?;
    let ninodes = sb.ninodes() as usize;
    let mut psb = sb.clone();
    psb.metackhash &= !ck::INODE;
    let mut c = Checker {
        psb,
        sbraw: sb.raw.clone(),
        dev: cdev,
        repair: opts.repair,
        sink,
        now: ctx.hyper.clock_realtime(),
        tally: Tally::default(),
        wrote: false,
        marked_dirty: false,
        sb_changed: false,
        used: Bits::new(sb.size),
        dups: HashSet::new(),
        clones: Vec::new(),
        state: vec![st::FREE; ninodes],
        nlink: vec![0; ninodes],
        found: vec![0; ninodes],
        dirs: HashMap::new(),
        bad_why: HashMap::new(),
        cg_bad: vec![None; sb.ncg as usize],
        cg_init: vec![sb.ipg; sb.ncg as usize],
        cg_fix: vec![false; sb.ncg as usize],
        template: None,
        lost_found: 0,
        names: None,
        paths_ready: false,
        totals: update::Csum::default(),
        sb,
    };
    let r = c.run();
    let flush = c.finish();
    r.and(flush).map_err(|e| op(e, format!("I/O error while checking: {e}")))?;
    Ok(c.summary())
}

/// The shared reporting ([`Reporter`]): where findings go, and the repair mode.
impl Reporter for Checker<'_> {
    fn repair_mode(&self) -> Repair {
        self.repair
    }
    fn sink(&mut self) -> &mut dyn FsckSink {
        self.sink
    }
    fn tally(&mut self) -> &mut Tally {
        &mut self.tally
    }
    fn begin_repair(&mut self) {
        self.mark_not_clean()
    }
}

impl<'a> Checker<'a> {
    fn run(&mut self) -> KResult<()> {
        self.check_super()?;
        self.check_cgs()?;
        self.mark_metadata();
        self.pass1()?;
        self.sync_pass()?;
        self.paths_ready = true;
        self.pass1b()?;
        self.pass2()?;
        self.sync_pass()?;
        self.pass3()?;
        self.sync_pass()?;
        self.pass4()?;
        self.sync_pass()?;
        self.pass5()?;
        self.sync_pass()?;
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Reporting

    /// The same, naming the path of inode `ino` where it is known.
    pub fn problem_ino(&mut self, level: Level, phase: &str, ino: u32, message: String, repair: Option<&str>) -> Problem {
        let mut p = self.problem(level, phase, format!("inode {ino}"), message, repair);
        p.finding.path = self.path_of(ino);
        p
    }

    /// Reports something that is not a problem of its own (who else claims a fragment).
    pub fn note(&mut self, p: Problem) {
        self.sink.finding(&p.finding);
    }

    /// Marks the file system not clean on disk before the first repair.
    fn mark_not_clean(&mut self) {
        if self.marked_dirty || self.repair == Repair::No {
            return;
        }
        self.marked_dirty = true;
        let mut raw = self.sbraw.clone();
        update::sb_set_clean(&mut raw, 0);
        if update::write_superblock(&self.sb, &self.dev, &mut raw).is_ok() {
            let _ = self.dev.device().flush();
        }
    }

    fn sync_pass(&mut self) -> KResult<()> {
        if self.wrote {
            self.dev.sync()?;
            self.wrote = false;
        }
        Ok(())
    }

    pub fn progress(&mut self, phase: &str, done: u64, total: u64) {
        self.sink.progress(phase, done, total);
    }

    pub fn bwrite(&mut self, frag: u64, data: Vec<u8>) -> KResult<()> {
        self.dev.bwrite(frag, data)?;
        self.wrote = true;
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Setup: superblock and cylinder group headers

    /// The superblock against the first alternate (the copy in group 1).
    fn check_super(&mut self) -> KResult<()> {
        const PH: &str = "Superblock";
        let sb = self.sb.clone();
        if sb.ncg < 2 {
            return Ok(());
        }
        let frag_at = sb.cgstart(1) + u64::from(sb.sblkno);
        let at = frag_at * u64::from(sb.fsize);
        let n = sb.raw.len();
        if at + n as u64 > sb.size * u64::from(sb.fsize) {
            return Ok(());
        }
        let mut alt = vec![0u8; n];
        self.dev.read_raw(&mut alt, at)?;
        let o = sb.order;
        const FIELDS: [(usize, &str); 16] = [
            (off::SBLKNO, "fs_sblkno"),
            (off::CBLKNO, "fs_cblkno"),
            (off::IBLKNO, "fs_iblkno"),
            (off::DBLKNO, "fs_dblkno"),
            (off::NCG, "fs_ncg"),
            (off::BSIZE, "fs_bsize"),
            (off::FSIZE, "fs_fsize"),
            (off::FRAG, "fs_frag"),
            (off::SBSIZE, "fs_sbsize"),
            (off::NINDIR, "fs_nindir"),
            (off::INOPB, "fs_inopb"),
            (off::CSSIZE, "fs_cssize"),
            (off::CGSIZE, "fs_cgsize"),
            (off::IPG, "fs_ipg"),
            (off::FPG, "fs_fpg"),
            (off::MAGIC, "fs_magic"),
        ];
        let diffs: Vec<String> = FIELDS
            .iter()
            .filter(|(f, _)| o.u32(&sb.raw, *f) != o.u32(&alt, *f))
            .map(|(f, name)| format!("{name} {} (alternate {})", o.u32(&sb.raw, *f), o.u32(&alt, *f)))
            .take(6)
            .collect();
        if !diffs.is_empty() {
            let m = format!("disagrees with the first alternate superblock (fragment {frag_at}): {}", diffs.join(", "));
            let p = self.problem(Level::Yes, PH, "superblock".into(), m, Some("rewrite the alternate from the primary"));
            let raw = sb.raw.clone();
            self.fix_with(p, |c| {
                let fs = u64::from(c.sb.fsize) as usize;
                for k in 0..raw.len().div_ceil(fs) {
                    let mut b = c.dev.bread(frag_at + k as u64)?.to_vec();
                    let part = &raw[k * fs..raw.len().min((k + 1) * fs)];
                    b[..part.len()].copy_from_slice(part);
                    c.bwrite(frag_at + k as u64, b)?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Every cylinder group header: magic, index, counts, map offsets, check hash. A bad one
    /// is rebuilt in pass 5 (its inodes are still read: their place does not depend on it).
    fn check_cgs(&mut self) -> KResult<()> {
        const PH: &str = "Cylinder groups";
        for c in 0..self.sb.ncg {
            let raw = update::read_cg_raw(&self.sb, &self.dev, c)?;
            match Cg::parse(&self.sb, c, raw) {
                Ok(cg) => {
                    if self.template.is_none() {
                        self.template = Some(cg.raw.clone());
                    }
                    self.cg_init[c as usize] = cg.initediblk().min(self.sb.ipg);
                }
                Err(m) => {
                    let hash_only = m.starts_with("check hash");
                    let (level, repair) =
                        if hash_only { (Level::Preen, "rewrite the group") } else { (Level::Yes, "rebuild the group") };
                    let p = self.problem(level, PH, format!("group {c}"), format!("header at fragment {}: {m}", self.sb.cgtod(c)), Some(repair));
                    // Decided now, done in pass 5 (which rewrites every group that differs).
                    let ok = self.want(&p) && (hash_only || self.template.is_some() || c + 1 < self.sb.ncg);
                    self.cg_fix[c as usize] = ok;
                    self.done(p, ok);
                    self.cg_bad[c as usize] = Some(m);
                }
            }
        }
        Ok(())
    }

    /// Marks what is not file data as in use: the boot area and superblock copies, group
    /// headers and inode blocks, the summary area.
    fn mark_metadata(&mut self) {
        let sb = self.sb.clone();
        for c in 0..sb.ncg {
            let start = if c == 0 { 0 } else { sb.cgstart(c) + u64::from(sb.sblkno) };
            for f in start..sb.cgdmin(c).min(sb.size) {
                self.used.set(f);
            }
        }
        let cs = u64::from(sb.cssize.div_ceil(sb.fsize));
        for f in sb.csaddr..(sb.csaddr + cs).min(sb.size) {
            if self.used.set(f) && self.dups.len() < MAX_DUPS {
                self.dups.insert(f);
            }
        }
    }

    /// Whether fragments `p..p+n` may hold file data or an indirect block: inside the file
    /// system, within one block, not in a group's metadata. `None`: fine.
    pub fn addr_problem(&self, p: u64, n: u64) -> Option<&'static str> {
        pass1::addr_rule(&self.sb, p, n)
    }

    // ---------------------------------------------------------------------------------------
    // Inodes

    pub fn read_inode_raw(&self, ino: u32) -> KResult<Vec<u8>> {
        if ino >= self.sb.ninodes() {
            return Err(Errno::EIO);
        }
        let (frag, at) = update::inode_location(&self.sb, ino);
        let buf = self.dev.bread(frag)?;
        Ok(buf.get(at..at + self.sb.isize()).ok_or(Errno::EIO)?.to_vec())
    }

    /// Inode `ino`, decoded (its check hash is not held against it).
    pub fn read_inode(&self, ino: u32) -> KResult<Inode> {
        let raw = self.read_inode_raw(ino)?;
        Inode::parse(&self.psb, &raw).map_err(|e| match e {
            InodeError::Free => Errno::ENOENT,
            InodeError::Corrupt(_) => Errno::EIO,
        })
    }

    pub fn write_inode(&mut self, ino: u32, inode: &mut Inode) -> KResult<()> {
        update::write_inode(&self.sb, &self.dev, ino, inode)?;
        self.wrote = true;
        Ok(())
    }

    pub fn modify_inode(&mut self, ino: u32, f: impl FnOnce(&mut Inode)) -> KResult<()> {
        let mut i = self.read_inode(ino)?;
        f(&mut i);
        self.write_inode(ino, &mut i)
    }

    /// Zeroes inode `ino` (keeping its generation) and gives back its fragments (those no
    /// other inode claims too).
    pub fn clear_inode(&mut self, ino: u32) -> KResult<()> {
        let raw = self.read_inode_raw(ino)?;
        let gen_at = if self.sb.ufs2 { 80 } else { 108 };
        let gen = self.sb.order.u32(&raw, gen_at);
        if let Ok(inode) = Inode::parse(&self.psb, &raw) {
            self.release_blocks(ino, &inode);
        }
        let rec = update::free_inode_record(&self.sb, gen.wrapping_add(1));
        update::write_inode_raw(&self.sb, &self.dev, ino, &rec)?;
        self.wrote = true;
        self.state[ino as usize] = st::FREE;
        self.dirs.remove(&ino);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Allocation (from what pass 1 found in use)

    /// A whole free block in a group with a usable header, marked in use.
    pub fn alloc_block(&mut self) -> KResult<u64> {
        let sb = self.sb.clone();
        let frag = u64::from(sb.frag);
        for c in 0..sb.ncg {
            if self.cg_bad[c as usize].is_some() && self.template.is_none() {
                continue;
            }
            let end = (sb.cgbase(c) + u64::from(sb.fpg)).min(sb.size);
            let mut b = sb.cgdmin(c).next_multiple_of(frag);
            while b + frag <= end {
                if (b..b + frag).all(|f| !self.used.get(f)) {
                    for f in b..b + frag {
                        self.used.set(f);
                    }
                    return Ok(b);
                }
                b += frag;
            }
        }
        Err(Errno::ENOSPC)
    }

    /// `n` free fragments in one block (a whole block when `n` is `fs_frag`), marked in use.
    pub fn alloc_frags(&mut self, n: u64) -> KResult<u64> {
        let sb = self.sb.clone();
        let frag = u64::from(sb.frag);
        if n >= frag {
            return self.alloc_block();
        }
        for c in 0..sb.ncg {
            if self.cg_bad[c as usize].is_some() && self.template.is_none() {
                continue;
            }
            let end = (sb.cgbase(c) + u64::from(sb.fpg)).min(sb.size);
            let mut b = sb.cgdmin(c).next_multiple_of(frag);
            while b + frag <= end {
                let mut run = 0;
                for f in b..b + frag {
                    if self.used.get(f) {
                        run = 0;
                        continue;
                    }
                    run += 1;
                    if run == n {
                        let start = f + 1 - n;
                        for x in start..=f {
                            self.used.set(x);
                        }
                        return Ok(start);
                    }
                }
                b += frag;
            }
        }
        Err(Errno::ENOSPC)
    }

    /// A free, initialised inode (the caller sets its state).
    pub fn alloc_inode(&mut self) -> KResult<u32> {
        let ipg = self.sb.ipg;
        for c in 0..self.sb.ncg {
            if self.cg_bad[c as usize].is_some() {
                continue;
            }
            for i in 0..self.cg_init[c as usize] {
                let ino = c * ipg + i;
                if ino >= ROOTINO && self.state[ino as usize] == st::FREE {
                    return Ok(ino);
                }
            }
        }
        Err(Errno::ENOSPC)
    }

    // ---------------------------------------------------------------------------------------
    // Paths

    /// The path of `ino` as far as the directory entries tell (built once, on demand).
    pub fn path_of(&mut self, ino: u32) -> Option<String> {
        if ino == ROOTINO {
            return Some("/".into());
        }
        if !self.paths_ready {
            return None;
        }
        if self.names.is_none() {
            self.names = Some(pass2::name_map(self));
        }
        let names = self.names.as_ref()?;
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..64 {
            if cur == ROOTINO {
                parts.reverse();
                return Some(format!("/{}", parts.join("/")));
            }
            let (parent, name) = names.get(&cur)?;
            parts.push(String::from_utf8_lossy(name).into_owned());
            cur = *parent;
        }
        None
    }

    // ---------------------------------------------------------------------------------------
    // The end

    /// Writes the superblock (clean again when everything found was fixed) and flushes.
    fn finish(&mut self) -> KResult<()> {
        if self.repair == Repair::No {
            return Ok(());
        }
        self.dev.sync()?;
        let unclean = self.sb.clean == 0 || self.sb.flags & (flags::FS_UNCLEAN | flags::FS_NEEDSFSCK) != 0;
        if !(self.marked_dirty || self.sb_changed || (unclean && self.tally.problems == 0)) {
            return Ok(());
        }
        let mut raw = self.sbraw.clone();
        let all_fixed = self.tally.problems == self.tally.fixed;
        let f = update::sb_flags(&self.sb, &raw);
        if all_fixed {
            update::sb_set_clean(&mut raw, update::FS_ISCLEAN);
            update::sb_set_flags(&self.sb, &mut raw, f & !(flags::FS_UNCLEAN | flags::FS_NEEDSFSCK));
        } else {
            update::sb_set_clean(&mut raw, 0);
            update::sb_set_flags(&self.sb, &mut raw, f | flags::FS_NEEDSFSCK);
        }
        if self.sb.ufs2 {
            self.sb.order.put_i64(&mut raw, off::PENDINGBLOCKS, 0);
            self.sb.order.put_u32(&mut raw, off::PENDINGINODES, 0);
        }
        update::sb_set_time(&self.sb, &mut raw, self.now);
        update::write_superblock(&self.sb, &self.dev, &mut raw)?;
        self.dev.device().flush()?;
        self.sbraw = raw;
        Ok(())
    }

    fn summary(&self) -> FsckSummary {
        let files = self.state.iter().filter(|&&s| s != st::FREE).count();
        let t = self.totals;
        let free = i64::from(t.nbfree) * i64::from(self.sb.frag) + i64::from(t.nffree);
        let used = (self.sb.dsize as i64).saturating_sub(free).max(0);
        FsckSummary {
            skipped_clean: false,
            problems: self.tally.problems,
            fixed: self.tally.fixed,
            line: format!("{files} files, {used} used, {free} free ({} frags, {} blocks)", t.nffree, t.nbfree),
        }
    }
}

/// `d_type` of an inode state.
pub(crate) fn state_dtype(s: u8) -> u8 {
    s & st::TYPE
}

/// Whether a name is `.` or `..`.
pub(crate) fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// `DIRBLKSIZ`.
pub(crate) const CHUNK: usize = dir::DIRBLKSIZ;
