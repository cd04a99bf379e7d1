//! The ext2fs component: ext2, ext3 and ext4, read-write.
//!
//! Layout of the driver:
//! - [`superblock`]: parse and validate the superblock; feature sets; probe.
//! - [`group`]: block group descriptors (32/64-byte, meta_bg) and their checksums.
//! - [`inode`]: on-disk inodes (128 bytes and larger, nanosecond times, Hurd fields).
//! - [`bmap`]: logical to physical mapping (block map and extent trees), in runs.
//! - [`dir`]: directory blocks, dirent tails, htree blocks read linearly.
//! - [`xattr`]: in-inode and block extended attributes.
//! - [`csum`]: crc32c (metadata_csum) and crc16 (gdt_csum).
//! - [`journal`]: JBD2 journal replay at mount (needs_recovery).
//! - [`update`]: write primitives (superblock, descriptors, bitmaps, inodes, directory,
//!   extent and xattr blocks, each with its checksum), shared with the checker.
//! - [`alloc`]: block and inode allocation; [`extent`] and [`indirect`]: the write side of
//!   extent trees and block maps; [`write`]: the write operations.
//!
//! Writes go to the buffer cache and reach the disk at fsync, sync, write-back or unmount.
//! The journal of ext3/ext4 is bypassed (as NetBSD's ext2fs does): a journalled file system
//! is written read-write only when its journal is clean, and is left clean. A journal that
//! needs recovery is replayed by [`journal`] at a read-write mount, before anything else.
//!
//! Locks, outermost first: the namespace lock (shared by directory operations, exclusive
//! for rename), per-inode locks (parents before children; rename orders by inode number),
//! the xattr-block lock, the allocation lock, the inode table lock.
//!
//! Nothing read from the disk is trusted: a bad value is `EIO` for the object it belongs to,
//! with a log line naming the inode or block; a bad superblock or group descriptor refuses
//! the mount with a message.

pub(crate) mod alloc;
pub mod bmap;
pub mod csum;
pub mod dir;
pub(crate) mod extent;
mod fsck;
pub mod group;
pub(crate) mod indirect;
pub mod inode;
pub mod journal;
pub mod superblock;
pub mod update;
pub(crate) mod write;
pub mod xattr;

use alloc::{Alloc, Zones};
use bmap::{MapCache, Run};
use inode::{flags, Inode, InodeError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use superblock::{incompat, ro_compat, SbError, Superblock, OS_HURD, SB_OFFSET, SB_SIZE};
use vfs_faction::bufcache::Buf;
use vfs_faction::{
    Attr, BlockDevice, CachedDev, Component, DirEntry, Errno, Faction, FileSystem, FileType, Hypercalls, Ino,
    KResult, MountContext, MountError, MountOptions, MountSource, Mounted, NewNode, NodeData, RenameMode, SetAttr,
    StatFs, Timespec, Vnode, XattrFlags,
};

/// Little-endian u16 at `off`; 0 if `off` is out of range (callers check lengths first).
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off.wrapping_add(2)) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// Little-endian u32 at `off`; 0 if out of range.
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off.wrapping_add(4)) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Root directory inode.
pub(crate) const ROOT_INO: u32 = 2;
/// Directories with more blocks than this get a name → inode map for lookups.
pub(crate) const NAME_MAP_MIN_BLOCKS: u64 = 4;
/// Largest directory (entries) whose name map is kept; bigger ones are scanned.
const NAME_MAP_MAX_ENTRIES: usize = 1 << 18;
/// Longest symlink target read (PATH_MAX without the NUL).
const SYMLINK_MAX: u64 = 4095;

/// The ext2/ext3/ext4 driver component.
pub struct Ext2Component;

impl Component for Ext2Component {
    fn name(&self) -> &'static str {
        "ext2fs"
    }

    fn description(&self) -> &'static str {
        "ext2, ext3 and ext4 (read-write: block maps, extents, htree, xattrs, metadata_csum, uninit_bg, flex_bg)"
    }

    fn factions(&self) -> &'static [Faction] {
        &[Faction::Vfs, Faction::Dev]
    }

    fn fs_types(&self) -> &'static [&'static str] {
        &["ext2", "ext3", "ext4"]
    }

    fn probe(&self, dev: &dyn BlockDevice) -> Option<&'static str> {
        if dev.size() < SB_OFFSET + SB_SIZE as u64 {
            return None;
        }
        let mut raw = vec![0u8; SB_SIZE];
        dev.read_at(&mut raw, SB_OFFSET).ok()?;
        superblock::fs_type(&raw)
    }

    fn fsck(
        &self,
        ctx: &MountContext,
        _fstype: &str,
        dev: Arc<dyn BlockDevice>,
        opts: &vfs_faction::FsckOptions,
        sink: &mut dyn vfs_faction::FsckSink,
    ) -> Result<vfs_faction::FsckSummary, MountError> {
        fsck::check(ctx, dev, opts, sink)
    }

    fn mount(
        &self,
        ctx: &MountContext,
        _fstype: &str,
        source: MountSource,
        opts: &MountOptions,
    ) -> Result<Mounted, MountError> {
        let MountSource::Block(dev) = source else {
            return Err(MountError::new(Errno::EINVAL, "ext2fs mounts block devices only"));
        };
        mount_block(ctx, dev, opts, None)
    }
}

/// Mounts an ext2/3/4 file system on `dev`. A file system whose journal needs recovery is
/// replayed first (read-write mounts only) and then mounted afresh; `replayed` says what the
/// replay did, on that second pass.
fn mount_block(
    ctx: &MountContext,
    dev: Arc<dyn BlockDevice>,
    opts: &MountOptions,
    replayed: Option<journal::Replayed>,
) -> Result<Mounted, MountError> {
    let name = dev.describe();
    let mut raw = vec![0u8; SB_SIZE];
    if dev.size() < SB_OFFSET + SB_SIZE as u64 {
        return Err(MountError::new(Errno::EINVAL, format!("{name}: too small to hold an ext2/ext3/ext4 file system")));
    }
    dev.read_at(&mut raw, SB_OFFSET)
        .map_err(|e| MountError::new(e, format!("{name}: cannot read the superblock: {e}")))?;
    let sb = Superblock::parse_recovering(&raw).map_err(|e| match e {
        SbError::NotExt => {
            MountError::new(Errno::EINVAL, format!("{name}: no ext2/ext3/ext4 superblock (bad magic)"))
        }
        SbError::Unsupported(m) => MountError::new(Errno::EINVAL, format!("{name}: {m}")),
        SbError::Corrupt(m) => {
            log::error!("{name}: corrupt superblock: {m}");
            MountError::new(Errno::EUCLEAN, format!("{name}: corrupt superblock: {m}"))
        }
    })?;
    let need = sb.blocks_count * u64::from(sb.block_size);
    if need > dev.size() {
        return Err(MountError::new(
            Errno::EINVAL,
            format!(
                "{name}: the file system needs {} blocks of {} bytes ({need} bytes) but the device holds only {} bytes (truncated image?)",
                sb.blocks_count,
                sb.block_size,
                dev.size()
            ),
        ));
    }
    let cache = ctx
        .cache
        .as_ref()
        .ok_or_else(|| MountError::new(Errno::ENODEV, "ext2fs needs the dev faction's buffer cache"))?;
    if sb.has_incompat(incompat::RECOVER) {
        if replayed.is_some() {
            return Err(MountError::new(Errno::EIO, format!("{name}: needs_recovery is still set after the journal replay")));
        }
        let r = recover(ctx, &dev, &name, &sb, &raw, opts.read_only || dev.read_only())?;
        return mount_block(ctx, dev, opts, Some(r));
    }
    let cdev = cache.attach(dev.clone(), sb.block_size)?;
    let groups = group::load_full(&sb, &cdev).map_err(|m| {
        log::error!("{name}: {m}");
        MountError::new(Errno::EUCLEAN, format!("{name}: {m}"))
    })?;
    let mut warnings = Vec::new();
    if let Some(r) = &replayed {
        warnings.push(format!(
            "journal replayed: {} committed transaction(s), {} block(s) written, {} revoked",
            r.transactions, r.blocks, r.revoked
        ));
    }
    if sb.creator_os == OS_HURD {
        warnings.push(
            "created by GNU Hurd: Hurd-specific inode fields (translators, authors) are ignored; directory file types are taken from the inodes"
                .to_string(),
        );
    }
    if sb.state & update::STATE_VALID == 0 {
        warnings.push("the file system was not cleanly unmounted (run e2fsck)".to_string());
    }
    let zones = Zones::build(&sb, &raw, &groups);
    let mut read_only = opts.read_only || dev.read_only();
    if !read_only {
        let mut why = unwritable(&sb);
        if let Err(m) = &zones {
            why.push(m.clone());
        }
        if !why.is_empty() {
            let why = why.join("; ");
            if opts.explicit_rw {
                return Err(MountError::new(Errno::EROFS, format!("{name}: cannot mount read-write: {why}")));
            }
            warnings.push(format!("mounted read-only: {why}"));
            read_only = true;
        }
    }
    let zones = zones.unwrap_or(Zones::empty());
    let free_blocks = groups.iter().map(|g| u64::from(g.free_blocks())).sum::<u64>();
    let free_inodes = groups.iter().map(|g| u64::from(g.free_inodes())).sum::<u64>();
    let tables = groups.iter().map(|g| g.inode_table()).collect();
    let ngroups = groups.len();
    let orig_state = sb.state;
    let fs = Ext2Fs {
        dev: cdev,
        name: name.clone(),
        hyper: ctx.hyper.clone(),
        read_only,
        raw_sb: Mutex::new(raw),
        orig_state,
        alloc: Mutex::new(Alloc { groups, free_blocks, free_inodes, bad: vec![false; ngroups] }),
        zones,
        tables,
        itable: Mutex::new(()),
        xattr_lock: Mutex::new(()),
        ns: RwLock::new(()),
        live: Mutex::new(HashMap::new()),
        gen: AtomicU32::new(0),
        df: std::sync::OnceLock::new(),
        sb,
    };
    if !read_only {
        fs.mark_mounted().map_err(|e| MountError::new(e, format!("{name}: cannot write the superblock: {e}")))?;
        fs.clean_orphans().map_err(|e| MountError::new(e, format!("{name}: cleaning up orphan inodes: {e}")))?;
    }
    log::info!(
        "{name}: ext rev {} with {} blocks of {} bytes, {} groups, {} inodes; mounted {}",
        fs.sb.rev_level,
        fs.sb.blocks_count,
        fs.sb.block_size,
        fs.sb.group_count,
        fs.sb.inodes_count,
        if read_only { "read-only" } else { "read-write" }
    );
    Ok(Mounted { fs: Arc::new(fs), read_only, warnings })
}

/// `s_journal_uuid`, `s_journal_inum`, `s_journal_dev`.
const SB_JOURNAL_UUID: usize = 0xD0;
const SB_JOURNAL_INUM: usize = 0xE0;
/// `s_reserved_gdt_blocks`: descriptor blocks kept for online growth.
const SB_RESERVED_GDT_BLOCKS: usize = 0xCE;
const SB_JOURNAL_DEV: usize = 0xE4;

/// Replays the internal journal of the file system on `dev` (superblock `sb`, raw `raw`),
/// then clears `needs_recovery`. Order: replayed blocks on stable storage, then the emptied
/// journal superblock, then the file system superblock, each step flushed.
fn recover(
    ctx: &MountContext,
    dev: &Arc<dyn BlockDevice>,
    name: &str,
    sb: &Superblock,
    raw: &[u8],
    read_only: bool,
) -> Result<journal::Replayed, MountError> {
    let jino = le32(raw, SB_JOURNAL_INUM);
    if jino == 0 || !sb.has_compat(superblock::compat::HAS_JOURNAL) {
        let external = raw[SB_JOURNAL_UUID..SB_JOURNAL_UUID + 16].iter().any(|&b| b != 0)
            || le32(raw, SB_JOURNAL_DEV) != 0;
        let m = if external {
            "journal needs recovery, but the journal is on an external device, which is not supported (run e2fsck with the journal device)"
        } else {
            "journal needs recovery, but the file system has no journal (run e2fsck)"
        };
        return Err(MountError::new(Errno::EINVAL, format!("{name}: {m}")));
    }
    if read_only {
        return Err(MountError::new(Errno::EROFS, format!("{name}: journal needs recovery; mount read-write to replay it")));
    }
    if jino > sb.inodes_count {
        return Err(MountError::new(Errno::EUCLEAN, format!("{name}: journal inode {jino} is out of range")));
    }
    let corrupt = |m: String| {
        log::error!("{name}: {m}");
        MountError::new(Errno::EUCLEAN, format!("{name}: {m}"))
    };
    let io = |what: &str, e: Errno| MountError::new(e, format!("{name}: journal replay: {what}: {e}"));
    let cache = ctx
        .cache
        .as_ref()
        .ok_or_else(|| MountError::new(Errno::ENODEV, "ext2fs needs the dev faction's buffer cache"))?;
    let cdev = cache.attach(dev.clone(), sb.block_size)?;
    let groups = group::load_full(sb, &cdev).map_err(&corrupt)?;
    let tables = groups.iter().map(|g| g.inode_table()).collect();
    let ngroups = groups.len();
    // A read-only view of the file system, enough to read and map the journal inode.
    let fs = Ext2Fs {
        dev: cdev,
        name: name.to_string(),
        hyper: ctx.hyper.clone(),
        read_only: true,
        raw_sb: Mutex::new(raw.to_vec()),
        orig_state: sb.state,
        alloc: Mutex::new(Alloc { groups, free_blocks: 0, free_inodes: 0, bad: vec![false; ngroups] }),
        zones: Zones::empty(),
        tables,
        itable: Mutex::new(()),
        xattr_lock: Mutex::new(()),
        ns: RwLock::new(()),
        live: Mutex::new(HashMap::new()),
        gen: AtomicU32::new(0),
        df: std::sync::OnceLock::new(),
        sb: sb.clone(),
    };
    let r = journal::replay(&fs, jino).map_err(|m| corrupt(format!("cannot replay the journal: {m}")))?;
    fs.dev.sync().map_err(|e| io("writing the replayed blocks", e))?;
    if let Some((blk, jsb)) = r.jsb.clone() {
        fs.dev.bwrite(blk, jsb).map_err(|e| io("writing the journal superblock", e))?;
        fs.dev.sync().map_err(|e| io("writing the journal superblock", e))?;
    }
    // The replay may have rewritten the superblock: clear needs_recovery in what is there now.
    let mut raw2 = vec![0u8; SB_SIZE];
    dev.read_at(&mut raw2, SB_OFFSET).map_err(|e| io("reading the superblock", e))?;
    let sb2 = Superblock::parse_recovering(&raw2)
        .map_err(|e| corrupt(format!("the superblock is bad after the journal replay: {e:?}")))?;
    let inc = le32(&raw2, update::sbf::FEATURE_INCOMPAT) & !incompat::RECOVER;
    raw2[update::sbf::FEATURE_INCOMPAT..update::sbf::FEATURE_INCOMPAT + 4].copy_from_slice(&inc.to_le_bytes());
    update::write_superblock(&sb2, &fs.dev, &mut raw2).map_err(|e| io("writing the superblock", e))?;
    dev.flush().map_err(|e| io("flushing", e))?;
    log::info!(
        "{name}: journal replayed: {} transaction(s), {} block(s) written, {} revoked",
        r.transactions,
        r.blocks,
        r.revoked
    );
    Ok(r)
}

/// Why the write path cannot write this file system (empty: it can). Each reason names the
/// feature.
fn unwritable(sb: &Superblock) -> Vec<String> {
    let mut why = Vec::new();
    for (bit, n) in [(incompat::MMP, "mmp"), (incompat::META_BG, "meta_bg")] {
        if sb.has_incompat(bit) {
            why.push(format!("feature {n} cannot be written"));
        }
    }
    let ro_ok = ro_compat::SPARSE_SUPER
        | ro_compat::LARGE_FILE
        | ro_compat::BTREE_DIR
        | ro_compat::HUGE_FILE
        | ro_compat::GDT_CSUM
        | ro_compat::DIR_NLINK
        | ro_compat::EXTRA_ISIZE
        | ro_compat::METADATA_CSUM;
    let names = [
        (0x80, "snapshot"),
        (0x100, "quota"),
        (0x200, "bigalloc"),
        (0x800, "replica"),
        (0x1000, "read-only"),
        (0x2000, "project"),
        (0x4000, "shared_blocks"),
        (0x8000, "verity"),
        (0x10000, "orphan_present"),
    ];
    let bad = sb.feature_ro_compat & !ro_ok;
    for i in 0..32 {
        let b = 1u32 << i;
        if bad & b != 0 {
            let n = names.iter().find(|(x, _)| *x == b).map_or(format!("unknown(0x{b:x})"), |(_, n)| (*n).to_string());
            why.push(format!("feature {n} cannot be written"));
        }
    }
    if sb.creator_os == OS_HURD {
        why.push("GNU Hurd inodes cannot be written".into());
    }
    if sb.block_size >= 65536 {
        why.push("64 KiB blocks cannot be written".into());
    }
    why
}

/// A mounted ext2/ext3/ext4 file system.
pub struct Ext2Fs {
    pub(crate) sb: Superblock,
    pub(crate) dev: CachedDev,
    pub(crate) name: String,
    hyper: Arc<dyn Hypercalls>,
    read_only: bool,
    /// The primary superblock as read, patched and written back.
    raw_sb: Mutex<Vec<u8>>,
    /// `s_state` at mount, restored at unmount.
    orig_state: u16,
    /// Descriptors, bitmaps and free counts (the allocation lock).
    pub(crate) alloc: Mutex<Alloc>,
    zones: Zones,
    /// First block of each group's inode table.
    tables: Vec<u64>,
    /// Serialises read-modify-writes of inode table blocks.
    itable: Mutex<()>,
    /// Serialises changes of (possibly shared) xattr blocks.
    xattr_lock: Mutex<()>,
    /// Directory operations share it; rename takes it alone.
    ns: RwLock<()>,
    /// In-memory inodes in use, so every vnode of one inode shares one state.
    live: Mutex<HashMap<u32, Weak<NodeInner>>>,
    gen: AtomicU32,
    /// (metadata blocks, blocks kept back from ordinary users beyond `s_r_blocks_count`) as
    /// the Linux drivers count them for statfs; computed at the first statfs.
    df: std::sync::OnceLock<(u64, u64)>,
}

/// Name → (inode, directory block) of a large directory.
pub(crate) type NameMap = HashMap<Box<[u8]>, (u32, u64)>;

/// The name map of a large directory.
pub(crate) enum Names {
    Unbuilt,
    Built(NameMap),
    TooBig,
}

/// An in-memory inode, shared by every vnode of the inode.
pub(crate) struct NodeInner {
    pub ino: u32,
    /// metadata_csum seed of this inode.
    pub seed: u32,
    /// The inode and write-side caches: read-locked by readers, write-locked by writers.
    pub st: RwLock<State>,
    pub map: Mutex<MapCache>,
    /// Name → inode map of a large directory, built on the first lookup.
    pub names: Mutex<Names>,
}

/// The mutable part of an in-memory inode.
pub(crate) struct State {
    pub inode: Inode,
    /// First directory block that may have room for a new entry.
    pub hint: u64,
    /// Extent list, loaded on the first change of an extent-mapped file.
    pub ext: Option<extent::ExtTree>,
    /// The inode was freed; the vnode is stale.
    pub freed: bool,
}

/// The vnode data.
struct Node(Arc<NodeInner>);

impl NodeInner {
    fn map_cache(&self) -> MutexGuard<'_, MapCache> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.st.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.st.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn node(vn: &Vnode) -> KResult<&Arc<NodeInner>> {
    Ok(&vn.data::<Node>()?.0)
}

impl Ext2Fs {
    /// Logs a corruption of inode `ino`.
    pub(crate) fn corrupt(&self, ino: u32, msg: String) {
        log::error!("{}: inode {ino}: {msg}", self.name);
    }

    /// True if blocks `start..start+len` are inside the file system (and not block 0).
    pub(crate) fn blocks_in_range(&self, start: u64, len: u64) -> bool {
        start >= 1
            && start >= u64::from(self.sb.first_data_block)
            && start.checked_add(len).is_some_and(|end| end <= self.sb.blocks_count)
    }

    /// True if any of `start..start+len` is file system metadata (superblocks, descriptors,
    /// bitmaps, inode tables).
    pub(crate) fn zones_overlap(&self, start: u64, len: u64) -> bool {
        self.zones.overlaps(start, len)
    }

    fn bread(&self, blk: u64) -> KResult<Arc<Buf>> {
        self.dev.bread(blk)
    }

    pub(crate) fn bs(&self) -> u64 {
        u64::from(self.sb.block_size)
    }

    pub(crate) fn now(&self) -> Timespec {
        self.hyper.clock_realtime()
    }

    fn lock_alloc(&self) -> MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn actx(&self) -> alloc::Ctx<'_> {
        alloc::Ctx { sb: &self.sb, dev: &self.dev, zones: &self.zones, name: &self.name }
    }

    /// Allocates up to `want` contiguous blocks near `goal`, below `limit`.
    pub(crate) fn alloc_blocks(&self, goal: u64, want: u64, limit: u64) -> KResult<(u64, u64)> {
        let mut st = self.lock_alloc();
        self.actx().alloc_blocks(&mut st, goal, want, limit)
    }

    /// Frees a sorted or unsorted list of single blocks (coalesced into runs).
    pub(crate) fn free_block_list(&self, blocks: &[u64]) -> KResult<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut v = blocks.to_vec();
        v.sort_unstable();
        let mut runs = Vec::new();
        for b in v {
            match runs.last_mut() {
                Some((s, l)) if *s + *l == b => *l += 1,
                _ => runs.push((b, 1u64)),
            }
        }
        self.free_runs(&runs)
    }

    /// Frees runs of blocks (start, len) and drops them from the cache.
    pub(crate) fn free_runs(&self, runs: &[(u64, u64)]) -> KResult<()> {
        let mut st = self.lock_alloc();
        let ctx = self.actx();
        let mut r = Ok(());
        for &(s, l) in runs {
            if let Err(e) = ctx.free_blocks(&mut st, s, l) {
                r = Err(e);
                continue;
            }
            for b in s..s + l {
                self.dev.forget_block(b);
            }
        }
        r
    }

    /// (inode table, flags, unused inodes) of group `g`.
    fn group_info(&self, g: usize) -> Option<(u64, u16, u32)> {
        let st = self.lock_alloc();
        st.groups.get(g).map(|d| (d.inode_table(), d.flags(), d.itable_unused()))
    }

    /// What `df` subtracts, the way the kernel's ext2/ext4 drivers count it, so `df` on our
    /// mount shows what it shows on theirs: (metadata blocks, reserved blocks beyond
    /// `s_r_blocks_count`). Metadata: the blocks before `s_first_data_block`; in each group
    /// with a superblock backup the superblock, its descriptor blocks and the reserved
    /// descriptor blocks (with meta_bg, the descriptor block of the first, second and last
    /// group of each meta group); two bitmaps and an inode table per group; the internal
    /// journal. Kept back: ext4's reservation for extent-mapped file systems, 2% of the
    /// blocks and at most 4096.
    fn df_overhead(&self) -> (u64, u64) {
        let sb = &self.sb;
        let raw = self.raw_sb.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let reserved_gdt = u64::from(le16(&raw, SB_RESERVED_GDT_BLOCKS));
        let per_block = (sb.block_size / sb.desc_size.max(1)).max(1);
        let meta_bg = sb.has_incompat(superblock::incompat::META_BG);
        let classic_gdb = if meta_bg { u64::from(sb.first_meta_bg) } else { u64::from(sb.group_count.div_ceil(per_block)) };
        let itb = sb.inode_table_blocks();
        let mut o = u64::from(sb.first_data_block);
        for g in 0..sb.group_count {
            let sup = sb.group_has_super(g);
            o += u64::from(sup);
            let mg = g / per_block;
            if meta_bg && mg >= sb.first_meta_bg {
                let first = mg * per_block;
                o += u64::from(g == first || g == first + 1 || g == first + per_block - 1);
            } else if sup {
                o += classic_gdb + reserved_gdt;
            }
            o += 2 + itb;
        }
        let jino = le32(&raw, SB_JOURNAL_INUM);
        let jdev = le32(&raw, SB_JOURNAL_DEV);
        if sb.has_compat(superblock::compat::HAS_JOURNAL) && jino != 0 && jdev == 0 {
            match self.read_inode(jino) {
                Ok(j) => o += j.size / u64::from(sb.block_size),
                Err(e) => log::warn!("{}: statfs: cannot read journal inode {jino}: {e}", self.name),
            }
        }
        let kept = if sb.has_incompat(superblock::incompat::EXTENTS) { (sb.blocks_count / 50).min(4096) } else { 0 };
        (o.min(sb.blocks_count), kept)
    }

    fn read_inode(&self, ino: u32) -> KResult<Inode> {
        self.read_inode_as(ino, false)
    }

    /// [`Ext2Fs::read_inode`]; `unlinked` as in [`Inode::parse_as`].
    fn read_inode_as(&self, ino: u32, unlinked: bool) -> KResult<Inode> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(Errno::ESTALE);
        }
        let ipg = self.sb.inodes_per_group;
        let g = ((ino - 1) / ipg) as usize;
        let index = (ino - 1) % ipg;
        let (table, gflags, unused) = self.group_info(g).ok_or(Errno::ESTALE)?;
        let group_csums = self.sb.has_ro_compat(superblock::ro_compat::GDT_CSUM) || self.sb.metadata_csum();
        if group_csums && (gflags & group::BG_INODE_UNINIT != 0 || index >= ipg.saturating_sub(unused)) {
            return Err(Errno::ENOENT);
        }
        let (blk, boff) = update::inode_location(&self.sb, table, ino);
        let isz = self.sb.inode_size as usize;
        let buf = self.bread(blk)?;
        let raw = buf.get(boff..boff + isz).ok_or(Errno::EIO)?;
        Inode::parse_as(&self.sb, ino, raw, unlinked).map_err(|e| match e {
            InodeError::Free => Errno::ENOENT,
            InodeError::Corrupt(m) => {
                self.corrupt(ino, format!("{m} (inode table block {blk})"));
                Errno::EIO
            }
        })
    }

    /// Writes the in-memory inode of `n` to its inode table block (in the cache).
    pub(crate) fn write_inode(&self, ino: u32, inode: &mut Inode) -> KResult<()> {
        let raw = update::encode_inode(&self.sb, ino, inode);
        let g = ((ino - 1) / self.sb.inodes_per_group) as usize;
        let table = *self.tables.get(g).ok_or(Errno::EIO)?;
        let _l = self.itable.lock().unwrap_or_else(|e| e.into_inner());
        update::write_inode_raw(&self.sb, &self.dev, table, ino, &raw)?;
        inode.raw = raw;
        Ok(())
    }

    fn map(&self, n: &NodeInner, inode: &Inode, cache: &mut MapCache, lblk: u64, max: u64) -> KResult<Run> {
        bmap::map(self, n.ino, n.seed, inode, cache, lblk, max)
    }

    /// Directory block `lblk`, checksum verified; `None` for a hole.
    pub(crate) fn dir_block(&self, n: &NodeInner, inode: &Inode, lblk: u64) -> KResult<Option<(u64, Arc<Buf>)>> {
        let run = self.map(n, inode, &mut n.map_cache(), lblk, 1)?;
        let Some(p) = run.phys else { return Ok(None) };
        let buf = self.bread(p)?;
        if self.sb.metadata_csum() {
            let indexed = inode.flags & flags::INDEX != 0;
            if let Err(m) = dir::verify(&buf, lblk, n.seed, indexed) {
                self.corrupt(n.ino, format!("directory block {lblk} (block {p}): {m}"));
                return Err(Errno::EIO);
            }
        }
        Ok(Some((p, buf)))
    }

    pub(crate) fn dir_blocks(&self, inode: &Inode) -> u64 {
        inode.size.div_ceil(self.bs())
    }

    /// Calls `f(lblk, record)` for every live record from byte `cookie` on, until it returns
    /// `false`.
    pub(crate) fn scan_dir(
        &self,
        n: &NodeInner,
        inode: &Inode,
        cookie: u64,
        f: &mut dyn FnMut(u64, &dir::Record<'_>) -> bool,
    ) -> KResult<()> {
        if inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let bs = self.bs();
        let mut lblk = cookie / bs;
        let mut start = (cookie % bs) as usize;
        let filetype = self.sb.dirent_filetype();
        while lblk < self.dir_blocks(inode) {
            let Some((_, block)) = self.dir_block(n, inode, lblk)? else {
                lblk += 1;
                start = 0;
                continue;
            };
            let mut stopped = false;
            dir::walk(&block, filetype, self.sb.inodes_count, |r| {
                if r.pos < start {
                    return true;
                }
                if !f(lblk, &r) {
                    stopped = true;
                    return false;
                }
                true
            })
            .map_err(|m| {
                self.corrupt(n.ino, format!("directory block {lblk}: {m}"));
                Errno::EIO
            })?;
            if stopped {
                return Ok(());
            }
            lblk += 1;
            start = 0;
        }
        Ok(())
    }

    /// Looks `name` up in directory `n` (whose state the caller holds locked).
    pub(crate) fn dir_lookup(&self, n: &NodeInner, inode: &Inode, name: &[u8]) -> KResult<Option<u32>> {
        if inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if self.dir_blocks(inode) > NAME_MAP_MIN_BLOCKS {
            let mut slot = n.names();
            if matches!(*slot, Names::Unbuilt) {
                let mut map = NameMap::new();
                let mut too_big = false;
                self.scan_dir(n, inode, 0, &mut |lblk, r| {
                    if map.len() >= NAME_MAP_MAX_ENTRIES {
                        too_big = true;
                        return false;
                    }
                    map.entry(r.name.into()).or_insert((r.inode, lblk));
                    true
                })?;
                *slot = if too_big { Names::TooBig } else { Names::Built(map) };
            }
            if let Names::Built(map) = &*slot {
                return Ok(map.get(name).map(|e| e.0));
            }
        }
        let mut found = None;
        self.scan_dir(n, inode, 0, &mut |_, r| {
            if r.name == name {
                found = Some(r.inode);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// Extended attributes of an inode: in-inode first, then the EA block.
    fn xattrs(&self, n: &NodeInner, inode: &Inode) -> KResult<Vec<xattr::Xattr>> {
        let ino = n.ino;
        let mut out = Vec::new();
        let extra_end = inode::GOOD_OLD_SIZE + usize::from(inode.extra_isize);
        if inode.raw.len() > extra_end {
            out = xattr::parse_inode(&inode.raw[extra_end..]).map_err(|m| {
                self.corrupt(ino, format!("in-inode extended attributes: {m}"));
                Errno::EIO
            })?;
        }
        let blk = inode.file_acl;
        if blk != 0 {
            if !self.blocks_in_range(blk, 1) {
                self.corrupt(ino, format!("extended attribute block {blk} is outside the file system"));
                return Err(Errno::EIO);
            }
            let buf = self.bread(blk)?;
            let seed = self.sb.metadata_csum().then_some(self.sb.csum_seed);
            let more = xattr::parse_block(&buf, blk, seed).map_err(|m| {
                self.corrupt(ino, format!("extended attribute block {blk}: {m}"));
                Errno::EIO
            })?;
            out.extend(more);
        }
        Ok(out)
    }

    pub(crate) fn read_file(&self, n: &NodeInner, inode: &Inode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let size = inode.size;
        if off >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let bs = self.bs();
        let bsu = bs as usize;
        let ra_blocks = readahead / bs;
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let lblk = pos / bs;
            let boff = (pos % bs) as usize;
            let left = len - done;
            let req_blocks = (boff + left).div_ceil(bsu) as u64;
            let run = self.map(n, inode, &mut n.map_cache(), lblk, req_blocks + ra_blocks)?;
            let cnt = run.len.min(req_blocks).max(1);
            let bytes = ((cnt as usize) * bsu - boff).min(left);
            let dst = &mut buf[done..done + bytes];
            match run.phys {
                None => dst.fill(0),
                Some(p) => {
                    let last = done + bytes == len;
                    let ahead = if last { run.len.saturating_sub(cnt) } else { 0 };
                    if boff == 0 && bytes & (bsu - 1) == 0 {
                        self.dev.read_blocks(p, cnt, dst, ahead)?;
                    } else if boff == 0 && bytes > bsu {
                        // Whole blocks first; the partial tail on the next round.
                        let whole = bytes / bsu;
                        self.dev.read_blocks(p, whole as u64, &mut dst[..whole * bsu], 0)?;
                        done += whole * bsu;
                        continue;
                    } else {
                        let mut tmp = vec![0u8; bsu];
                        let ahead = if boff + bytes >= bsu || last { run.len.saturating_sub(1) } else { 0 };
                        self.dev.read_blocks(p, 1, &mut tmp, ahead.min(ra_blocks + cnt))?;
                        let k = bytes.min(bsu - boff);
                        dst[..k].copy_from_slice(&tmp[boff..boff + k]);
                        done += k;
                        continue;
                    }
                }
            }
            done += bytes;
        }
        Ok(len)
    }

    /// The in-memory inode of `ino`, shared with every vnode that has it.
    fn get_node(&self, ino: u32) -> KResult<Arc<NodeInner>> {
        self.get_node_as(ino, false)
    }

    /// [`Ext2Fs::get_node`]; `unlinked` as in [`Inode::parse_as`].
    fn get_node_as(&self, ino: u32, unlinked: bool) -> KResult<Arc<NodeInner>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // (Not looking at the node's state here: its lock may be held by a thread that is
        // waiting for this table. A freed node is refused by every operation.)
        if let Some(n) = live.get(&ino).and_then(Weak::upgrade) {
            return Ok(n);
        }
        let inode = self.read_inode_as(ino, unlinked)?;
        if inode.flags & flags::INLINE_DATA != 0 {
            self.corrupt(ino, "inline data flag set without the inline_data feature".into());
            return Err(Errno::EIO);
        }
        let seed = if self.sb.metadata_csum() { inode::csum_seed(&self.sb, ino, inode.generation) } else { 0 };
        let n = Arc::new(NodeInner {
            ino,
            seed,
            st: RwLock::new(State { inode, hint: 0, ext: None, freed: false }),
            map: Mutex::new(MapCache::default()),
            names: Mutex::new(Names::Unbuilt),
        });
        if live.len() > 4096 && live.len().is_power_of_two() {
            live.retain(|_, w| w.strong_count() > 0);
        }
        live.insert(ino, Arc::downgrade(&n));
        Ok(n)
    }

    fn attr(&self, ino: Ino, i: &Inode) -> Attr {
        let rdev = if matches!(i.kind, FileType::CharDevice | FileType::BlockDevice) { i.rdev() } else { 0 };
        Attr {
            ino,
            kind: i.kind,
            perm: u32::from(i.mode) & 0o7777,
            nlink: u32::from(i.links),
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: i.blocks512,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            rdev,
            blksize: self.sb.block_size,
            flags: i.flags,
        }
    }

    /// Writes the superblock with the current free counts and `state`.
    fn write_sb(&self, state: Option<u16>, mount: bool) -> KResult<()> {
        let (fb, fi) = {
            let st = self.lock_alloc();
            (st.free_blocks, st.free_inodes)
        };
        let now = self.now();
        let mut raw = self.raw_sb.lock().unwrap_or_else(|e| e.into_inner());
        update::sb_set_counts(&self.sb, &mut raw, fb, u32::try_from(fi).unwrap_or(u32::MAX));
        if let Some(s) = state {
            raw[update::sbf::STATE..update::sbf::STATE + 2].copy_from_slice(&s.to_le_bytes());
        }
        if mount {
            let c = le16(&raw, update::sbf::MNT_COUNT).wrapping_add(1);
            raw[update::sbf::MNT_COUNT..update::sbf::MNT_COUNT + 2].copy_from_slice(&c.to_le_bytes());
            update::sb_set_time(&mut raw, update::sbf::MTIME, update::sbf::MTIME_HI, now);
        }
        update::sb_set_time(&mut raw, update::sbf::WTIME, update::sbf::WTIME_HI, now);
        update::write_superblock(&self.sb, &self.dev, &mut raw)
    }

    /// Frees the files a crash left on the orphan list (unlinked while still open, the list
    /// that the kernel's ext3/ext4 keep from the superblock through each inode's dtime), as
    /// the kernel does when it mounts: a file with no links left is freed, one with links
    /// (a truncate cut short) only leaves the list. A list that leaves the inode range or
    /// loops is left where it stops, for e2fsck, with a warning.
    fn clean_orphans(&self) -> KResult<()> {
        let head = le32(&self.raw_sb.lock().unwrap_or_else(|e| e.into_inner()), update::sbf::LAST_ORPHAN);
        let (mut ino, mut freed, mut kept) = (head, 0u32, 0u32);
        let mut seen = std::collections::HashSet::new();
        while ino != 0 {
            if ino < self.sb.first_ino || ino > self.sb.inodes_count || !seen.insert(ino) {
                log::warn!("{}: the orphan list is corrupt at inode {ino}; the rest is left to e2fsck", self.name);
                break;
            }
            let n = match self.get_node_as(ino, true) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("{}: orphan inode {ino} cannot be read ({e}); the rest of the list is left to e2fsck", self.name);
                    break;
                }
            };
            let next = {
                let mut st = n.write();
                let next = st.inode.dtime;
                if st.inode.links > 0 && !st.freed {
                    st.inode.dtime = 0;
                    self.write_inode(ino, &mut st.inode)?;
                    kept += 1;
                }
                next
            };
            if n.read().inode.links == 0 {
                self.do_inactive(&n)?;
                freed += 1;
            }
            ino = next;
        }
        if head == 0 {
            return Ok(());
        }
        // Emptied even when it broke off: what is left is e2fsck's to find, and an inode
        // freed above must not stay on a list.
        self.raw_sb.lock().unwrap_or_else(|e| e.into_inner())[update::sbf::LAST_ORPHAN..update::sbf::LAST_ORPHAN + 4].fill(0);
        self.write_sb(None, false)?;
        self.dev.sync()?;
        log::info!("{}: orphan list: {freed} inode(s) freed, {kept} kept (still linked)", self.name);
        Ok(())
    }

    /// Marks the file system in use ("not clean"), counts the mount, and flushes.
    fn mark_mounted(&self) -> KResult<()> {
        self.write_sb(Some(self.orig_state & !update::STATE_VALID), true)?;
        self.dev.device().flush()
    }

    /// Sets a feature bit in the superblock (e.g. large_file when a file passes 2 GiB).
    pub(crate) fn set_feature(&self, off: usize, bit: u32) {
        let mut raw = self.raw_sb.lock().unwrap_or_else(|e| e.into_inner());
        let v = le32(&raw, off);
        if v & bit == 0 {
            raw[off..off + 4].copy_from_slice(&(v | bit).to_le_bytes());
        }
    }

    /// True if the superblock (as it will be written) has `bit` at `off`.
    pub(crate) fn has_feature_now(&self, off: usize, bit: u32) -> bool {
        le32(&self.raw_sb.lock().unwrap_or_else(|e| e.into_inner()), off) & bit != 0
    }

    /// A new inode generation number.
    pub(crate) fn next_generation(&self) -> u32 {
        let mut r = [0u8; 4];
        self.hyper.random(&mut r);
        u32::from_le_bytes(r) ^ self.gen.fetch_add(0x9E37_79B9, Ordering::Relaxed) ^ self.now().nsec
    }
}

impl FileSystem for Ext2Fs {
    fn root(&self) -> Ino {
        Ino(u64::from(ROOT_INO))
    }

    fn vget(&self, ino: Ino) -> KResult<NodeData> {
        let n = u32::try_from(ino.0).map_err(|_| Errno::ESTALE)?;
        Ok(Box::new(Node(self.get_node(n)?)))
    }

    fn getattr(&self, vn: &Vnode) -> KResult<Attr> {
        let n = node(vn)?;
        let st = n.read();
        Ok(self.attr(vn.ino, &st.inode))
    }

    fn lookup(&self, dir: &Vnode, name: &[u8]) -> KResult<Ino> {
        let n = node(dir)?;
        let st = n.read();
        if st.inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        self.dir_lookup(n, &st.inode, name)?.map(|i| Ino(u64::from(i))).ok_or(Errno::ENOENT)
    }

    fn readdir(&self, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        let n = node(dir)?;
        let st = n.read();
        let bs = self.bs();
        self.scan_dir(n, &st.inode, cookie, &mut |lblk, r| {
            let kind = match dir::dirent_type(r.file_type) {
                Some(k) => k,
                None => match self.read_inode(r.inode) {
                    Ok(i) => i.kind,
                    Err(e) => {
                        log::warn!(
                            "{}: directory inode {}: entry {:?} -> inode {}: {e:?}; skipped",
                            self.name,
                            n.ino,
                            String::from_utf8_lossy(r.name),
                            r.inode
                        );
                        return true;
                    }
                },
            };
            let next = lblk * bs + (r.pos + r.rec_len) as u64;
            sink(&DirEntry { ino: Ino(u64::from(r.inode)), kind, name: r.name, next, attr: None })
        })
    }

    fn read(&self, vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let n = node(vn)?;
        let st = n.read();
        match st.inode.kind {
            FileType::Regular => self.read_file(n, &st.inode, off, buf, readahead),
            FileType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn readlink(&self, vn: &Vnode) -> KResult<Vec<u8>> {
        let n = node(vn)?;
        let st = n.read();
        let i = &st.inode;
        if i.kind != FileType::Symlink {
            return Err(Errno::EINVAL);
        }
        let ea_blocks = if i.file_acl != 0 { self.bs() / 512 } else { 0 };
        // The kernel's rule: a symlink that owns no data blocks keeps its target in i_block.
        let fast = i.blocks512.saturating_sub(ea_blocks) == 0;
        if fast {
            if i.size >= 60 {
                self.corrupt(n.ino, format!("fast symlink of {} bytes", i.size));
                return Err(Errno::EIO);
            }
            return Ok(i.block[..i.size as usize].to_vec());
        }
        if i.size == 0 || i.size > SYMLINK_MAX || i.size > self.bs() {
            self.corrupt(n.ino, format!("symlink of {} bytes", i.size));
            return Err(Errno::EIO);
        }
        let mut out = vec![0u8; i.size as usize];
        let len = self.read_file(n, i, 0, &mut out, 0)?;
        out.truncate(len);
        Ok(out)
    }

    fn getxattr(&self, vn: &Vnode, name: &[u8]) -> KResult<Vec<u8>> {
        let n = node(vn)?;
        let st = n.read();
        self.xattrs(n, &st.inode)?.into_iter().find(|x| x.name == name).map(|x| x.value).ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, vn: &Vnode) -> KResult<Vec<Vec<u8>>> {
        let n = node(vn)?;
        let st = n.read();
        Ok(self.xattrs(n, &st.inode)?.into_iter().map(|x| x.name).collect())
    }

    fn statfs(&self) -> KResult<StatFs> {
        let sb = &self.sb;
        let (fb, fi) = {
            let st = self.lock_alloc();
            (st.free_blocks, st.free_inodes)
        };
        let bfree = fb.min(sb.blocks_count);
        let (overhead, kept) = *self.df.get_or_init(|| self.df_overhead());
        Ok(StatFs {
            bsize: sb.block_size,
            blocks: sb.blocks_count.saturating_sub(overhead).max(bfree),
            bfree,
            bavail: bfree.saturating_sub(sb.r_blocks_count).saturating_sub(kept),
            files: u64::from(sb.inodes_count),
            ffree: fi.min(u64::from(sb.inodes_count)),
            namemax: 255,
        })
    }

    fn create(&self, dir: &Vnode, name: &[u8], nn: &NewNode) -> KResult<Ino> {
        self.ro()?;
        self.do_create(node(dir)?, name, nn, None).map(|i| Ino(u64::from(i)))
    }

    fn symlink(&self, dir: &Vnode, name: &[u8], target: &[u8], nn: &NewNode) -> KResult<Ino> {
        self.ro()?;
        self.do_create(node(dir)?, name, nn, Some(target)).map(|i| Ino(u64::from(i)))
    }

    fn link(&self, vn: &Vnode, dir: &Vnode, name: &[u8]) -> KResult<()> {
        self.ro()?;
        self.do_link(node(vn)?, node(dir)?, name)
    }

    fn unlink(&self, dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()> {
        self.ro()?;
        self.do_remove(node(dir)?, name, node(vn)?, false)
    }

    fn rmdir(&self, dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()> {
        self.ro()?;
        self.do_remove(node(dir)?, name, node(vn)?, true)
    }

    fn rename(
        &self,
        sdir: &Vnode,
        sname: &[u8],
        svn: &Vnode,
        ddir: &Vnode,
        dname: &[u8],
        dvn: Option<&Vnode>,
        mode: RenameMode,
    ) -> KResult<()> {
        self.ro()?;
        let dv = match dvn {
            Some(v) => Some(node(v)?),
            None => None,
        };
        self.do_rename(node(sdir)?, sname, node(svn)?, node(ddir)?, dname, dv, mode)
    }

    fn write(&self, vn: &Vnode, off: u64, data: &[u8]) -> KResult<usize> {
        self.ro()?;
        self.do_write(node(vn)?, off, data)
    }

    fn setattr(&self, vn: &Vnode, set: &SetAttr) -> KResult<Attr> {
        self.ro()?;
        let n = node(vn)?;
        self.do_setattr(n, set)?;
        let st = n.read();
        Ok(self.attr(vn.ino, &st.inode))
    }

    fn setxattr(&self, vn: &Vnode, name: &[u8], value: &[u8], fl: XattrFlags) -> KResult<()> {
        self.ro()?;
        self.do_setxattr(node(vn)?, name, Some(value), fl)
    }

    fn removexattr(&self, vn: &Vnode, name: &[u8]) -> KResult<()> {
        self.ro()?;
        self.do_setxattr(node(vn)?, name, None, XattrFlags::default())
    }

    fn fsync(&self, _vn: &Vnode, _datasync: bool) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.dev.sync()
    }

    fn fallocate(&self, vn: &Vnode, mode: u32, off: u64, len: u64) -> KResult<()> {
        self.ro()?;
        self.do_fallocate(node(vn)?, mode, off, len)
    }

    fn inactive(&self, vn: &Vnode) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        let n = node(vn)?;
        // Another vnode of the same inode still lives: it frees the inode when it goes.
        if Arc::strong_count(n) > 1 {
            return Ok(());
        }
        self.do_inactive(n)
    }

    fn sync(&self) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.dev.write_back()?;
        self.write_sb(None, false)?;
        self.dev.device().flush()
    }

    fn unmount(&self) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.dev.sync()?;
        self.write_sb(Some(self.orig_state), false)?;
        self.dev.device().flush()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Ext2Fs>();
    is::<Node>();
    let _ = incompat::FILETYPE;
}
