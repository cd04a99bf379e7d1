//! The ext2/ext3/ext4 checker: e2fsck's passes, run through the same kernel, buffer cache and
//! on-disk parsers as a mount.
//!
//! - [`Checker::check_super`]: superblock and group descriptors (locations, checksums, flags).
//! - [`pass1`]: every inode (mode, flags, dtime, block map or extent tree, size, i_blocks,
//!   extended attributes), blocks claimed twice (1b: by whom; 1d: cloned).
//! - [`pass2`]: directory blocks: records, `.` and `..`, names, file types, htree roots,
//!   entries naming unused or bad inodes, checksums.
//! - [`pass3`]: connectivity (every directory reachable from the root, `..` right,
//!   lost+found) and pass 4 (link counts, unattached inodes).
//! - [`pass5`]: block and inode bitmaps and every free count against what is really used.
//!
//! Memory: one bit per block (`used`), a few bytes per inode (type, link counts), and a list
//! of directory blocks, as e2fsck. Every walk is bounded; a corrupt value is a finding.
//!
//! Repairs go through the buffer cache and are synced at the end of every pass that wrote,
//! so the writes of one pass are on disk before the next pass writes anything that depends
//! on them; the superblock is marked "not clean" before the first repair and clean again
//! only after the last one: a checker killed half-way leaves a file system that the next
//! run checks and finishes.

mod bits;
mod pass1;
mod pass2;
mod pass3;
mod pass5;

use super::group::{self, Group, GroupDesc};
use super::inode::{self, field as ifield};
use super::superblock::{compat, incompat, ro_compat, SbError, Superblock, SB_OFFSET, SB_SIZE};
use super::update::{self, sbf};
use super::{le16, le32};
use bits::BitSet;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
pub(crate) use vfs_faction::fsck::{Level, Reporter, Tally};
use vfs_faction::{
    BlockDevice, CachedDev, Errno, FsckOptions, FsckSink, FsckSummary, KResult, MountContext, MountError,
    Repair,
};

pub(crate) const ROOT_INO: u32 = 2;
const RESIZE_INO: u32 = 7;
const JOURNAL_INO: u32 = 8;

/// Superblock fields only the checker reads.
mod sbx {
    pub const MNT_COUNT: usize = 0x34;
    pub const MAX_MNT_COUNT: usize = 0x36;
    pub const STATE: usize = 0x3A;
    pub const LASTCHECK: usize = 0x40;
    pub const CHECKINTERVAL: usize = 0x44;
    pub const PREALLOC_DIR_BLOCKS: usize = 0xCD;
    pub const JOURNAL_INUM: usize = 0xE0;
    pub const JOURNAL_DEV: usize = 0xE4;
    pub const LAST_ORPHAN: usize = 0xE8;
    pub const LASTCHECK_HI: usize = 0x277;
}

/// `s_state` bits.
const STATE_VALID: u16 = 1;
const STATE_ERROR: u16 = 2;

/// Where a directory is: its parent by entry, its `..`, and where its first block is.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DirInfo {
    /// The directory whose entry names this one (0: none found yet).
    pub parent: u32,
    /// What `..` says (0: missing).
    pub dotdot: u32,
    /// Where the `..` record is: (block, byte offset).
    pub dotdot_at: Option<(u64, usize)>,
}

/// `s_feature_compat`: htree directories.
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x20;

/// One directory block to check in pass 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DirBlock {
    pub ino: u32,
    pub lblk: u64,
    pub pblk: u64,
}

/// An extended attribute block: its stored reference count, references found, and whether
/// its contents were valid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EaBlock {
    pub refcount: u32,
    pub refs: u32,
    pub valid: bool,
}

/// Per-inode state: `kind` codes.
pub(crate) mod kind {
    /// Not in use.
    pub const FREE: u8 = 0;
    /// In use; the low bits are the dirent file type (1 regular .. 7 symlink).
    pub const TYPE_MASK: u8 = 0x0F;
    /// In use but invalid (bad mode, symlink, device...); kept unless cleared.
    pub const BAD: u8 = 0x80;
    /// Reserved inode in use (bitmap only).
    pub const RESERVED: u8 = 0x0F;
    pub const DIR: u8 = 2;
}

/// The checker's state for one file system.
pub(crate) struct Checker<'a> {
    pub sb: Superblock,
    pub sbraw: Vec<u8>,
    pub dev: CachedDev,
    pub repair: Repair,
    pub sink: &'a mut dyn FsckSink,
    pub now: u32,
    pub bs: u64,
    pub groups: Vec<GroupDesc>,
    /// Group descriptors whose locations are unusable (bitmaps, inode table).
    pub bad_group: Vec<bool>,
    pub gd_dirty: Vec<bool>,
    pub tally: Tally,
    /// Something was written since the last sync.
    pub wrote: bool,
    /// The superblock was marked "being repaired".
    pub marked_dirty: bool,
    pub sb_changed: bool,
    /// Blocks in use, as found.
    pub used: BitSet,
    /// Blocks claimed more than once.
    pub dups: HashSet<u64>,
    pub kind: Vec<u8>,
    pub links_disk: Vec<u16>,
    pub links: Vec<u16>,
    pub dirs: HashMap<u32, DirInfo>,
    pub dblist: Vec<DirBlock>,
    pub ea: HashMap<u64, EaBlock>,
    pub fragmented: u64,
    /// Why an inode is bad (kind has [`kind::BAD`]).
    pub bad_why: HashMap<u32, String>,
    pub lost_found: u32,
    /// Names of inodes, for paths in findings (built on demand).
    pub names: Option<HashMap<u32, (u32, Vec<u8>)>>,
    /// Orphan list inodes released (their blocks are not counted as in use).
    pub orphans: HashSet<u32>,
}

/// Checks (and repairs, as `opts` allow) the ext2/3/4 file system on `dev`.
pub(crate) fn check(
    ctx: &MountContext,
    dev: Arc<dyn BlockDevice>,
    opts: &FsckOptions,
    sink: &mut dyn FsckSink,
) -> Result<FsckSummary, MountError> {
    let op = |e: Errno, m: String| MountError::new(e, m);
    if dev.size() < SB_OFFSET + SB_SIZE as u64 {
        return Err(op(Errno::EINVAL, "too small to hold an ext2/ext3/ext4 file system".into()));
    }
    let mut sbraw = vec![0u8; SB_SIZE];
    dev.read_at(&mut sbraw, SB_OFFSET).map_err(|e| op(e, format!("cannot read the superblock: {e}")))?;
    let mut early: Vec<(Level, String)> = Vec::new();
    // A journal that needs recovery: check what is there (as e2fsck -n does), but say so.
    let recover = le32(&sbraw, 0x60) & incompat::RECOVER != 0 && le32(&sbraw, 0x4C) >= 1;
    let mut parse_raw = sbraw.clone();
    if recover {
        let v = le32(&parse_raw, 0x60) & !incompat::RECOVER;
        parse_raw[0x60..0x64].copy_from_slice(&v.to_le_bytes());
        early.push((
            Level::Never,
            "the journal needs recovery; the check does not replay it (a read-write mount or e2fsck replays it)"
                .into(),
        ));
    }
    let mut csum_bad = None;
    let sb = match Superblock::parse(&parse_raw) {
        Ok(sb) => sb,
        Err(SbError::Corrupt(m)) if m.contains("checksum mismatch") => {
            // Check the rest with the checksum set right; report the checksum itself.
            let c = super::csum::raw(!0, &parse_raw[..sbf::CHECKSUM]);
            parse_raw[sbf::CHECKSUM..sbf::CHECKSUM + 4].copy_from_slice(&c.to_le_bytes());
            csum_bad = Some(m);
            Superblock::parse(&parse_raw).map_err(|e| op(Errno::EUCLEAN, format!("corrupt superblock: {e:?}")))?
        }
        Err(SbError::NotExt) => return Err(op(Errno::EINVAL, "no ext2/ext3/ext4 superblock (bad magic)".into())),
        Err(SbError::Unsupported(m)) => return Err(op(Errno::EINVAL, m)),
        Err(SbError::Corrupt(m)) => {
            return Err(op(Errno::EUCLEAN, format!("corrupt superblock: {m}; cannot check (try a backup superblock with e2fsck -b)")))
        }
    };
    if sb.has_ro_compat(ro_compat::BIGALLOC) {
        return Err(op(Errno::EINVAL, "bigalloc file systems are not checked yet".into()));
    }
    let need = sb.blocks_count.saturating_mul(u64::from(sb.block_size));
    if need > dev.size() {
        return Err(op(
            Errno::EINVAL,
            format!(
                "the file system needs {} blocks of {} bytes but the device holds only {} bytes (truncated image?)",
                sb.blocks_count,
                sb.block_size,
                dev.size()
            ),
        ));
    }
    // Clean and not forced: like e2fsck, report and stop.
    let state = le16(&sbraw, sbx::STATE);
    let mnt = le16(&sbraw, sbx::MNT_COUNT) as i16;
    let max_mnt = le16(&sbraw, sbx::MAX_MNT_COUNT) as i16;
    let now_secs = ctx.hyper.clock_realtime().sec;
    let lastcheck = i64::from(le32(&sbraw, sbx::LASTCHECK)) | i64::from(sbraw[sbx::LASTCHECK_HI]) << 32;
    let interval = i64::from(le32(&sbraw, sbx::CHECKINTERVAL));
    let due_mounts = max_mnt > 0 && mnt >= max_mnt;
    let due_time = interval > 0 && now_secs >= lastcheck + interval;
    let clean = state & STATE_VALID != 0 && state & STATE_ERROR == 0 && !recover && csum_bad.is_none();
    if !opts.force && clean && !due_mounts && !due_time {
        let (fi, ti) = (sb.inodes_count - sb.free_inodes_count.min(sb.inodes_count), sb.inodes_count);
        let (fb, tb) = (sb.blocks_count - sb.free_blocks_count.min(sb.blocks_count), sb.blocks_count);
        return Ok(FsckSummary {
            skipped_clean: true,
            line: format!("clean, {fi}/{ti} files, {fb}/{tb} blocks"),
            ..FsckSummary::default()
        });
    }
    let cache = ctx.cache.as_ref().ok_or_else(|| op(Errno::ENODEV, "ext2fs needs the dev faction's buffer cache".into()))?;
    let cdev = cache.attach(dev.clone(), sb.block_size).map_err(|e| op(e, format!("cannot attach: {e}")))?;
    let ninodes = sb.inodes_count as usize + 1;
    let mut c = Checker {
        bs: u64::from(sb.block_size),
        used: BitSet::new(sb.blocks_count),
        sbraw,
        dev: cdev,
        repair: opts.repair,
        sink,
        now: now_secs.clamp(0, i64::from(u32::MAX)) as u32,
        groups: Vec::new(),
        bad_group: Vec::new(),
        gd_dirty: Vec::new(),
        tally: Tally::default(),
        wrote: false,
        marked_dirty: false,
        sb_changed: false,
        dups: HashSet::new(),
        kind: vec![0; ninodes],
        links_disk: vec![0; ninodes],
        links: vec![0; ninodes],
        dirs: HashMap::new(),
        dblist: Vec::new(),
        ea: HashMap::new(),
        fragmented: 0,
        bad_why: HashMap::new(),
        lost_found: 0,
        names: None,
        orphans: HashSet::new(),
        sb,
    };
    for (level, m) in early {
        let p = c.problem(level, "Superblock", "superblock".into(), m, None);
        c.unfixed(p);
    }
    if let Some(m) = csum_bad {
        let p = c.problem(Level::Preen, "Superblock", "superblock".into(), m, Some("rewrite the checksum"));
        if c.want(&p) {
            c.sb_changed = true;
            c.done(p, true);
        } else {
            c.unfixed(p);
        }
    }
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
        self.load_groups()?;
        self.mark_metadata();
        self.orphans()?;
        self.pass1()?;
        self.sync_pass()?;
        self.pass1_dups()?;
        self.sync_pass()?;
        self.journal()?;
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
    // ---------------------------------------------------------------------------------------

    /// Marks the file system "not clean" on disk before the first repair, so that an
    /// interrupted repair is checked again.
    fn mark_not_clean(&mut self) {
        if self.marked_dirty || self.repair == Repair::No {
            return;
        }
        self.marked_dirty = true;
        let mut raw = self.sbraw.clone();
        let st = le16(&raw, sbx::STATE) & !STATE_VALID;
        raw[sbx::STATE..sbx::STATE + 2].copy_from_slice(&st.to_le_bytes());
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

    // ---------------------------------------------------------------------------------------
    // Superblock and group descriptors
    // ---------------------------------------------------------------------------------------

    fn check_super(&mut self) -> KResult<()> {
        const PH: &str = "Superblock";
        let sb = self.sb.clone();
        let want_inodes = u64::from(sb.inodes_per_group) * u64::from(sb.group_count);
        if u64::from(sb.inodes_count) != want_inodes {
            let m = format!(
                "inode count {} does not match {} groups of {} inodes ({want_inodes})",
                sb.inodes_count, sb.group_count, sb.inodes_per_group
            );
            let p = self.problem(Level::Never, PH, "superblock".into(), m, None);
            self.unfixed(p);
        }
        if sb.r_blocks_count > sb.blocks_count / 2 {
            let m = format!("reserved block count {} is more than half of {} blocks", sb.r_blocks_count, sb.blocks_count);
            let p = self.problem(Level::Never, PH, "superblock".into(), m, None);
            self.unfixed(p);
        }
        if sb.has_compat(compat::HAS_JOURNAL) && le32(&self.sbraw, sbx::JOURNAL_DEV) == 0 {
            let j = le32(&self.sbraw, sbx::JOURNAL_INUM);
            if j == 0 || j > sb.inodes_count || (j >= sb.first_ino && j != JOURNAL_INO) {
                let m = format!("has_journal is set but the journal inode {j} is invalid");
                let p = self.problem(Level::Never, PH, "superblock".into(), m, None);
                self.unfixed(p);
            }
        }
        Ok(())
    }

    /// Reads every group descriptor, tolerating bad ones (reported; the group's bitmaps or
    /// inode table are then not used).
    fn load_groups(&mut self) -> KResult<()> {
        const PH: &str = "Group descriptors";
        let sb = self.sb.clone();
        let itb = sb.inode_table_blocks();
        let csums = sb.metadata_csum() || sb.has_ro_compat(ro_compat::GDT_CSUM);
        let flex = sb.has_incompat(incompat::FLEX_BG);
        let ng = sb.group_count as usize;
        self.groups.reserve(ng);
        self.bad_group = vec![false; ng];
        self.gd_dirty = vec![false; ng];
        let mut bad_csum = Vec::new();
        for g in 0..sb.group_count {
            let Some((blk, off)) = group::desc_location(&sb, g).filter(|(b, _)| *b < sb.blocks_count) else {
                return Err(Errno::EUCLEAN);
            };
            let buf = self.dev.bread(blk)?;
            let raw = buf.get(off..off + sb.desc_size as usize).ok_or(Errno::EIO)?.to_vec();
            let mut d = GroupDesc { group: Group { inode_table: 0, flags: 0, itable_unused: 0 }, raw, blk, off };
            let wide = sb.desc_size >= 64;
            let mut it = u64::from(le32(&d.raw, 0x8));
            let mut unused = u32::from(le16(&d.raw, 0x1C));
            if wide {
                it |= u64::from(le32(&d.raw, 0x28)) << 32;
                unused |= u32::from(le16(&d.raw, 0x32)) << 16;
            }
            d.group = Group { inode_table: it, flags: le16(&d.raw, 0x12), itable_unused: unused };
            if let Some(c) = group::desc_csum(&sb, g, &d.raw) {
                if c != le16(&d.raw, 0x1E) {
                    bad_csum.push((g, le16(&d.raw, 0x1E), c));
                }
            }
            self.groups.push(d);
            let first = super::alloc::group_first(&sb, g);
            let last = first + super::alloc::group_blocks(&sb, g);
            let inside = |b: u64, n: u64| {
                b >= u64::from(sb.first_data_block)
                    && b.checked_add(n).is_some_and(|e| e <= sb.blocks_count)
                    && (flex || (b >= first && b + n <= last))
            };
            let d = &self.groups[g as usize];
            let (bb, ib) = (d.block_bitmap(), d.inode_bitmap());
            for (what, b, n) in [("block bitmap", bb, 1), ("inode bitmap", ib, 1), ("inode table", it, itb)] {
                if !inside(b, n) {
                    self.bad_group[g as usize] = true;
                    let m = format!("{what} at block {b} (+{n}) is outside {}", if flex { "the file system" } else { "the group" });
                    let p = self.problem(Level::Never, PH, format!("group {g}"), m, None);
                    self.unfixed(p);
                }
            }
            let flags = self.groups[g as usize].flags();
            let uninit = group::BG_INODE_UNINIT | group::BG_BLOCK_UNINIT;
            if !csums && flags & uninit != 0 {
                let m = format!("marked uninitialized (flags 0x{flags:x}) without group checksums");
                let p = self.problem(Level::Preen, PH, format!("group {g}"), m, Some("clear the flags"));
                if self.want(&p) {
                    self.groups[g as usize].set_flags(flags & !uninit);
                    self.gd_dirty[g as usize] = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
            let unused = self.groups[g as usize].itable_unused();
            if csums && unused > sb.inodes_per_group {
                let m = format!("unused inode count {unused} is more than the {} inodes of the group", sb.inodes_per_group);
                let p = self.problem(Level::Preen, PH, format!("group {g}"), m, Some("set it to 0"));
                if self.want(&p) {
                    self.groups[g as usize].set_itable_unused(0);
                    self.gd_dirty[g as usize] = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
        }
        for (g, stored, want) in bad_csum {
            let m = format!("descriptor checksum is 0x{stored:04x}, should be 0x{want:04x}");
            let p = self.problem(Level::Minor, PH, format!("group {g}"), m, Some("rewrite the checksum"));
            if self.want(&p) {
                self.gd_dirty[g as usize] = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        Ok(())
    }

    /// Whether group checksums (and so uninit flags and itable_unused) are in use.
    pub fn group_csums(&self) -> bool {
        self.sb.metadata_csum() || self.sb.has_ro_compat(ro_compat::GDT_CSUM)
    }

    /// Calls `f(first, count)` for the metadata ranges of group `g`: superblock copy,
    /// descriptor blocks and reserved descriptor blocks (classic or meta_bg), bitmaps and
    /// inode table (wherever flex_bg put them).
    pub fn group_metadata(&self, g: u32, f: &mut dyn FnMut(u64, u64)) {
        let sb = &self.sb;
        let first = super::alloc::group_first(sb, g);
        let per_block = u64::from(sb.block_size / sb.desc_size);
        let gdt = u64::from(sb.group_count).div_ceil(per_block);
        let reserved = u64::from(le16(&self.sbraw, sbf::RESERVED_GDT_BLOCKS));
        let has_super = sb.group_has_super(g);
        if has_super {
            f(first, 1);
        }
        let meta_bg = sb.has_incompat(incompat::META_BG);
        let mbg = u64::from(g) / per_block;
        if !meta_bg || mbg < u64::from(sb.first_meta_bg) {
            if has_super {
                let old = if meta_bg { u64::from(sb.first_meta_bg) } else { gdt + reserved };
                f(first + 1, old);
            }
        } else {
            let r = u64::from(g) % per_block;
            if r == 0 || r == 1 || r == per_block - 1 {
                f(first + u64::from(has_super), 1);
            }
        }
        if !self.bad_group.get(g as usize).copied().unwrap_or(true) {
            let d = &self.groups[g as usize];
            f(d.block_bitmap(), 1);
            f(d.inode_bitmap(), 1);
            f(d.inode_table(), sb.inode_table_blocks());
        }
    }

    /// Marks every group's metadata as in use (claimed by "the file system metadata").
    fn mark_metadata(&mut self) {
        for g in 0..self.sb.group_count {
            let mut v = Vec::new();
            self.group_metadata(g, &mut |b, n| v.push((b, n)));
            for (b, n) in v {
                for x in b..b.saturating_add(n).min(self.sb.blocks_count) {
                    if self.used.set(x) {
                        self.dups.insert(x);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Inodes
    // ---------------------------------------------------------------------------------------

    /// Where inode `ino` lives, if its group's table is usable.
    pub fn inode_loc(&self, ino: u32) -> Option<(u64, usize)> {
        if ino == 0 || ino > self.sb.inodes_count {
            return None;
        }
        let g = ((ino - 1) / self.sb.inodes_per_group) as usize;
        if self.bad_group[g] {
            return None;
        }
        Some(update::inode_location(&self.sb, self.groups[g].inode_table(), ino))
    }

    pub fn read_inode_raw(&self, ino: u32) -> KResult<Vec<u8>> {
        let (blk, off) = self.inode_loc(ino).ok_or(Errno::EIO)?;
        let buf = self.dev.bread(blk)?;
        Ok(buf.get(off..off + self.sb.inode_size as usize).ok_or(Errno::EIO)?.to_vec())
    }

    /// Writes inode record `raw` of `ino` (checksum set).
    pub fn write_inode_raw(&mut self, ino: u32, raw: &mut [u8]) -> KResult<()> {
        let g = ((ino.max(1) - 1) / self.sb.inodes_per_group) as usize;
        if self.bad_group.get(g).copied().unwrap_or(true) {
            return Err(Errno::EIO);
        }
        update::set_inode_csum(&self.sb, ino, raw);
        update::write_inode_raw(&self.sb, &self.dev, self.groups[g].inode_table(), ino, raw)?;
        self.wrote = true;
        Ok(())
    }

    /// Read-modify-write of one inode.
    pub fn modify_inode(&mut self, ino: u32, f: impl FnOnce(&mut [u8])) -> KResult<()> {
        let mut raw = self.read_inode_raw(ino)?;
        f(&mut raw);
        self.write_inode_raw(ino, &mut raw)
    }

    /// The metadata_csum seed of inode `ino` (from its record).
    pub fn inode_seed(&self, ino: u32, raw: &[u8]) -> u32 {
        if self.sb.metadata_csum() {
            inode::csum_seed(&self.sb, ino, le32(raw, ifield::GENERATION))
        } else {
            0
        }
    }

    pub fn bwrite(&mut self, blk: u64, data: Vec<u8>) -> KResult<()> {
        self.dev.bwrite(blk, data)?;
        self.wrote = true;
        Ok(())
    }

    /// Clears inode `ino` (links 0, dtime now) and gives back its blocks.
    pub fn clear_inode(&mut self, ino: u32) -> KResult<()> {
        let raw = self.read_inode_raw(ino)?;
        let now = self.now;
        let mut raw2 = raw.clone();
        put16(&mut raw2, ifield::LINKS, 0);
        put32(&mut raw2, ifield::DTIME, now.max(1));
        self.write_inode_raw(ino, &mut raw2)?;
        if self.kind[ino as usize] & kind::TYPE_MASK != 0 && self.kind[ino as usize] & kind::BAD == 0 {
            self.release_blocks(ino, &raw);
        }
        self.kind[ino as usize] = kind::FREE;
        self.dirs.remove(&ino);
        self.dblist.retain(|d| d.ino != ino);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Allocation (from what pass 1 found in use)
    // ---------------------------------------------------------------------------------------

    /// A free run of up to `want` blocks (at least 1) near `goal`, marked in use.
    pub fn alloc_blocks(&mut self, goal: u64, want: u64) -> KResult<(u64, u64)> {
        let lo = u64::from(self.sb.first_data_block).max(1);
        let hi = self.sb.blocks_count;
        let goal = goal.clamp(lo, hi - 1);
        let start = self.used.first_clear(goal, hi).or_else(|| self.used.first_clear(lo, goal)).ok_or(Errno::ENOSPC)?;
        let mut n = 0;
        while n < want && start + n < hi && !self.used.get(start + n) {
            self.used.set(start + n);
            n += 1;
        }
        Ok((start, n))
    }

    /// `n` contiguous free blocks, marked in use.
    pub fn alloc_contig(&mut self, goal: u64, n: u64) -> KResult<u64> {
        let lo = u64::from(self.sb.first_data_block).max(1);
        let hi = self.sb.blocks_count;
        let mut b = goal.clamp(lo, hi - 1);
        let mut wrapped = false;
        loop {
            let Some(s) = self.used.first_clear(b, hi) else {
                if wrapped {
                    return Err(Errno::ENOSPC);
                }
                wrapped = true;
                b = lo;
                continue;
            };
            let mut k = 0;
            while k < n && s + k < hi && !self.used.get(s + k) {
                k += 1;
            }
            if k == n {
                for x in s..s + n {
                    self.used.set(x);
                }
                return Ok(s);
            }
            if s + k >= hi {
                if wrapped {
                    return Err(Errno::ENOSPC);
                }
                wrapped = true;
                b = lo;
            } else {
                b = s + k;
            }
            if wrapped && b >= goal {
                return Err(Errno::ENOSPC);
            }
        }
    }

    /// A free inode in an initialised part of an inode table.
    pub fn alloc_inode(&mut self, dir: bool) -> KResult<u32> {
        let ipg = self.sb.inodes_per_group;
        for g in 0..self.sb.group_count {
            if self.bad_group[g as usize] {
                continue;
            }
            let d = &self.groups[g as usize];
            let limit = if self.group_csums() {
                if d.flags() & group::BG_INODE_UNINIT != 0 {
                    continue;
                }
                ipg.saturating_sub(d.itable_unused())
            } else {
                ipg
            };
            for i in 0..limit {
                let ino = g * ipg + i + 1;
                if ino < self.sb.first_ino || self.kind[ino as usize] != kind::FREE {
                    continue;
                }
                self.kind[ino as usize] = if dir { kind::DIR } else { 1 };
                return Ok(ino);
            }
        }
        Err(Errno::ENOSPC)
    }

    // ---------------------------------------------------------------------------------------
    // Paths
    // ---------------------------------------------------------------------------------------

    /// The path of inode `ino` as far as the directory entries tell (built once, on demand,
    /// from every directory block).
    pub fn path_of(&mut self, ino: u32) -> Option<String> {
        if ino == ROOT_INO {
            return Some("/".into());
        }
        if self.names.is_none() {
            self.names = Some(pass2::name_map(self));
        }
        let names = self.names.as_ref()?;
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..64 {
            if cur == ROOT_INO {
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
    // Orphans and the journal
    // ---------------------------------------------------------------------------------------

    /// The orphan list: inodes deleted or truncated while open. Deleted ones are released
    /// (pass 1 then does not count them, pass 5 frees their blocks).
    fn orphans(&mut self) -> KResult<()> {
        let mut ino = le32(&self.sbraw, sbx::LAST_ORPHAN);
        if ino == 0 {
            return Ok(());
        }
        let mut list = Vec::new();
        let mut seen = HashSet::new();
        let mut bad = None;
        while ino != 0 {
            if ino < self.sb.first_ino || ino > self.sb.inodes_count || !seen.insert(ino) || list.len() > 1 << 20 {
                bad = Some(ino);
                break;
            }
            let raw = self.read_inode_raw(ino)?;
            list.push((ino, le16(&raw, ifield::LINKS)));
            ino = le32(&raw, ifield::DTIME);
        }
        let names: Vec<String> = list.iter().map(|(i, _)| i.to_string()).collect();
        let m = match bad {
            Some(b) => format!("orphan list [{}] ends in invalid inode {b}", names.join(", ")),
            None => format!("orphan list holds inode(s) {}", names.join(", ")),
        };
        let p = self.problem(Level::Preen, "Orphan list", "superblock".into(), m, Some("release the orphans"));
        if self.want(&p) {
            for &(i, links) in &list {
                if links == 0 {
                    self.orphans.insert(i);
                    let now = self.now.max(1);
                    self.modify_inode(i, |r| put32(r, ifield::DTIME, now))?;
                } else {
                    self.modify_inode(i, |r| put32(r, ifield::DTIME, 0))?;
                }
            }
            self.sbraw[sbx::LAST_ORPHAN..sbx::LAST_ORPHAN + 4].fill(0);
            self.sb_changed = true;
            self.done(p, true);
        } else {
            self.unfixed(p);
        }
        Ok(())
    }

    /// The journal superblock (internal journal only).
    fn journal(&mut self) -> KResult<()> {
        if !self.sb.has_compat(compat::HAS_JOURNAL) || le32(&self.sbraw, sbx::JOURNAL_DEV) != 0 {
            return Ok(());
        }
        let j = le32(&self.sbraw, sbx::JOURNAL_INUM);
        if j == 0 || j > self.sb.inodes_count || self.kind[j as usize] == kind::FREE {
            let p = self.problem(Level::Never, "Journal", format!("inode {j}"), "the journal inode is not in use".into(), None);
            self.unfixed(p);
            return Ok(());
        }
        let raw = self.read_inode_raw(j)?;
        let first = pass1::first_block(self, j, &raw)?;
        let blocks = pass1::count_blocks(self, j, &raw);
        let msg = match first {
            None => Some("the journal has no first block".to_string()),
            Some(b) => {
                let buf = self.dev.bread(b)?;
                let be = |o: usize| u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
                let (magic, btype, bsize, maxlen, first) = (be(0), be(4), be(12), be(16), be(20));
                if magic != 0xC03B_3998 {
                    Some(format!("journal superblock magic is 0x{magic:08x}, should be 0xc03b3998"))
                } else if btype != 3 && btype != 4 {
                    Some(format!("journal superblock has block type {btype} (should be 3 or 4)"))
                } else if u64::from(bsize) != self.bs {
                    Some(format!("journal block size {bsize} differs from the file system's {}", self.bs))
                } else if u64::from(maxlen) > blocks || maxlen < 1024 {
                    Some(format!("journal length {maxlen} does not fit the journal inode's {blocks} blocks"))
                } else if first == 0 || first >= maxlen {
                    Some(format!("journal first block {first} is outside 1..{maxlen}"))
                } else {
                    None
                }
            }
        };
        if let Some(m) = msg {
            let p = self.problem(Level::Never, "Journal", format!("inode {j}"), m, None);
            self.unfixed(p);
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // The end
    // ---------------------------------------------------------------------------------------

    /// Writes the superblock (clean again) when anything was repaired, and flushes.
    fn finish(&mut self) -> KResult<()> {
        if self.repair == Repair::No {
            return Ok(());
        }
        self.dev.sync()?;
        let state = le16(&self.sbraw, sbx::STATE);
        let unclean = state & STATE_VALID == 0 || state & STATE_ERROR != 0;
        if self.tally.problems == self.tally.fixed && unclean && self.tally.problems == 0 {
            // Checked whole and found nothing: clean now (e2fsck counts this as a change).
            let p = self.problem(
                Level::Minor,
                "Superblock",
                "superblock".into(),
                "was not cleanly unmounted".into(),
                Some("mark it clean"),
            );
            if self.want(&p) {
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        if !(self.marked_dirty || self.sb_changed) {
            return Ok(());
        }
        let mut raw = self.sbraw.clone();
        let mut st = le16(&raw, sbx::STATE);
        if self.tally.problems == self.tally.fixed {
            st = (st | STATE_VALID) & !STATE_ERROR;
            put16(&mut raw, sbx::MNT_COUNT, 0);
            put32(&mut raw, sbx::LASTCHECK, self.now);
        } else {
            st &= !STATE_VALID;
        }
        put16(&mut raw, sbx::STATE, st);
        update::write_superblock(&self.sb, &self.dev, &mut raw)?;
        self.dev.device().flush()?;
        self.sbraw = raw;
        Ok(())
    }

    fn summary(&self) -> FsckSummary {
        let used_inodes = self.kind.iter().skip(1).filter(|&&k| k != kind::FREE).count() as u64;
        let files = used_inodes.max(1);
        let frag = self.fragmented * 10000 / files;
        let used_blocks = self.used.count_range(0, self.sb.blocks_count) + u64::from(self.sb.first_data_block);
        FsckSummary {
            skipped_clean: false,
            problems: self.tally.problems,
            fixed: self.tally.fixed,
            line: format!(
                "{used_inodes}/{} files ({}.{}% non-contiguous), {used_blocks}/{} blocks",
                self.sb.inodes_count,
                frag / 100,
                frag % 100 / 10,
                self.sb.blocks_count
            ),
        }
    }
}

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// The prealloc_dir_blocks superblock field (directories may own this many blocks past
/// their size).
pub(crate) fn prealloc_dir_blocks(raw: &[u8]) -> u64 {
    u64::from(raw[sbx::PREALLOC_DIR_BLOCKS])
}
