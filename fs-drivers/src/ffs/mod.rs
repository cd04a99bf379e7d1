//! The ffs component: the BSD Fast File System, UFS1 and UFS2, in either byte order.
//!
//! Layout of the driver:
//! - [`endian`]: the byte order of an image, a runtime value.
//! - [`superblock`]: superblock search, parse and validation.
//! - [`inode`]: UFS1 and UFS2 dinodes.
//! - [`bmap`]: direct and indirect block maps, in runs.
//! - [`dir`]: directory chunks.
//! - [`update`]: write primitives (superblock, summary area, cylinder groups, inodes, each
//!   with its check hash), shared with the checker.
//! - [`alloc`]: blocks, fragments and inodes from the cylinder-group maps; [`write`]: block
//!   maps, fragments and every write operation.
//!
//! Read-write: the file system is marked not clean (`fs_clean` 0) while mounted and clean
//! again at unmount, with the summary area and the totals written back. Soft updates are not
//! done: an image with `FS_DOSOFTDEP` (or FreeBSD's `FS_SUJ`, NetBSD's `FS_DOWAPBL`) that is
//! clean mounts read-write with those flags cleared while mounted, so that after a crash the
//! BSD fsck runs a full check (never a journal replay or a soft-updates background check
//! that trusts orderings we did not keep); a clean unmount puts them back. Unclean
//! journaled images, unknown flags or check-hash kinds, old (pre-FFSv2 or 4.2BSD-format)
//! UFS1 superblocks and images not cleanly unmounted are mounted read-only with a warning
//! (an explicit `-o rw` is refused).
//!
//! Locks, outermost first: the namespace lock (shared by directory operations, exclusive for
//! rename), per-inode locks (parents before children; rename orders by inode number), the
//! allocation lock, the inode-block lock.
//!
//! Nothing read from the disk is trusted: a bad value is `EIO` for the object it belongs to,
//! with a log line naming the inode; a bad superblock refuses the mount with a message.

pub mod bmap;
pub mod dir;
pub mod endian;
pub mod inode;
pub mod superblock;
pub(crate) mod alloc;
#[allow(dead_code)] // some are for the checker
pub(crate) mod update;
pub(crate) mod write;
mod fsck;

use inode::{Inode, InodeError};
use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use superblock::{flags, SbError, Superblock, ROOTINO, SBLOCKSIZE, SBLOCK_SEARCH};
use vfs_faction::{
    Attr, BlockDevice, CachedDev, Component, DirEntry, Errno, Faction, FileSystem, FileType, Hypercalls, Ino,
    KResult, MountContext, MountError, MountOptions, MountSource, Mounted, NewNode, NodeData, RenameMode, SetAttr,
    StatFs, Vnode,
};

/// Directories of more chunks than this get a name → inode map for lookups.
const NAME_MAP_MIN_CHUNKS: u64 = 8;
/// Largest directory (entries) whose name map is kept; bigger ones are scanned.
const NAME_MAP_MAX_ENTRIES: usize = 1 << 18;
/// Longest symlink target read (PATH_MAX without the NUL).
pub(crate) const SYMLINK_MAX: u64 = 4095;

/// FFS check hashes: the raw CRC-32C register (FreeBSD `calculate_crc32c(~0, ..)`, no final
/// inversion).
pub fn ckhash(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

/// The ffs driver component.
pub struct FfsComponent;

/// Reads up to [`SBLOCKSIZE`] bytes at `loc` (fewer near the end of the device).
fn read_sb_area(dev: &dyn BlockDevice, loc: u64) -> Option<Vec<u8>> {
    let size = dev.size();
    if loc >= size {
        return None;
    }
    let n = (size - loc).min(SBLOCKSIZE as u64) as usize;
    if n < superblock::SB_STRUCT_SIZE {
        return None;
    }
    let mut raw = vec![0u8; n];
    dev.read_at(&mut raw, loc).ok()?;
    Some(raw)
}

/// Finds the superblock: the first valid one of [`SBLOCK_SEARCH`], skipping a UFS1 copy at
/// 65536 when 8192 holds the primary (a 64 KiB-block UFS1 keeps its first alternate there)
/// and a UFS2 superblock whose `fs_sblockloc` says it is an alternate.
pub fn find_superblock(dev: &dyn BlockDevice) -> Result<Superblock, SbError> {
    let mut first_err: Option<SbError> = None;
    let mut alternate: Option<u64> = None;
    for loc in SBLOCK_SEARCH {
        let Some(raw) = read_sb_area(dev, loc) else { continue };
        if superblock::magic(&raw).is_none() {
            continue;
        }
        match Superblock::parse(&raw, loc, dev.size()) {
            Ok(sb) => {
                if !sb.ufs2 && loc == 65536 {
                    if let Some(r) = read_sb_area(dev, 8192) {
                        if let Ok(p) = Superblock::parse(&r, 8192, dev.size()) {
                            return Ok(p);
                        }
                    }
                }
                let says = sb.order.u64(&sb.raw, superblock::off::SBLOCKLOC);
                if sb.ufs2 && says != loc && says != 0 && loc != 8192 {
                    alternate.get_or_insert(loc);
                    continue;
                }
                return Ok(sb);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (first_err, alternate) {
        (Some(SbError::Corrupt(m)), Some(a)) => Err(SbError::Corrupt(format!(
            "{m}; an alternate superblock exists at byte {a} (run fsck_ffs -b to restore the primary)"
        ))),
        (Some(e), _) => Err(e),
        (None, Some(a)) => Err(SbError::Corrupt(format!(
            "only an alternate superblock was found (at byte {a}); the primary is damaged (run fsck_ffs)"
        ))),
        (None, None) => Err(SbError::NotFfs),
    }
}

impl Component for FfsComponent {
    fn name(&self) -> &'static str {
        "ffs"
    }

    fn description(&self) -> &'static str {
        "BSD Fast File System: UFS1 and UFS2, little- and big-endian"
    }

    fn factions(&self) -> &'static [Faction] {
        &[Faction::Vfs, Faction::Dev]
    }

    fn fs_types(&self) -> &'static [&'static str] {
        &["ffs", "ufs"]
    }

    fn probe(&self, dev: &dyn BlockDevice) -> Option<&'static str> {
        SBLOCK_SEARCH
            .iter()
            .any(|&loc| read_sb_area(dev, loc).is_some_and(|raw| superblock::magic(&raw).is_some()))
            .then_some("ffs")
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
            return Err(MountError::new(Errno::EINVAL, "ffs mounts block devices only"));
        };
        let name = dev.describe();
        let sb = find_superblock(dev.as_ref()).map_err(|e| match e {
            SbError::NotFfs => MountError::new(Errno::EINVAL, format!("{name}: no FFS superblock found")),
            SbError::Unsupported(m) => MountError::new(Errno::EINVAL, format!("{name}: {m}")),
            SbError::Corrupt(m) => {
                log::error!("{name}: corrupt FFS superblock: {m}");
                MountError::new(Errno::EUCLEAN, format!("{name}: corrupt FFS superblock: {m}"))
            }
        })?;
        let mut warnings = Vec::new();
        if sb.clean == 0 || sb.flags & flags::FS_UNCLEAN != 0 {
            warnings.push("the file system was not cleanly unmounted (run fsck_ffs)".to_string());
        }
        if sb.flags & flags::FS_NEEDSFSCK != 0 {
            warnings.push("the file system is marked as needing fsck_ffs".to_string());
        }
        let cache = ctx
            .cache
            .as_ref()
            .ok_or_else(|| MountError::new(Errno::ENODEV, "ffs needs the dev faction's buffer cache"))?;
        let cdev = cache.attach(dev.clone(), sb.fsize)?;
        let mut read_only = opts.read_only || dev.read_only();
        if !read_only {
            let why = unwritable(&sb);
            if !why.is_empty() {
                let why = why.join("; ");
                if opts.explicit_rw {
                    return Err(MountError::new(Errno::EROFS, format!("{name}: cannot mount read-write: {why}")));
                }
                warnings.push(format!("mounted read-only: {why}"));
                read_only = true;
            }
        }
        let mut cs = Vec::new();
        if !read_only {
            cs = update::read_csum_area(&sb, &cdev)
                .map_err(|e| MountError::new(e, format!("{name}: cannot read the cylinder group summary area: {e}")))?;
            if cs.iter().any(|c| c.ndir < 0 || c.nbfree < 0 || c.nifree < 0 || c.nffree < 0) {
                let m = "the cylinder group summary area holds negative counts (run fsck_ffs)";
                if opts.explicit_rw {
                    return Err(MountError::new(Errno::EROFS, format!("{name}: cannot mount read-write: {m}")));
                }
                warnings.push(format!("mounted read-only: {m}"));
                read_only = true;
            }
        }
        log::info!(
            "{name}: UFS{} {} superblock at {}: {} fragments of {} bytes ({}-byte blocks), {} groups of {} inodes; mounted {}",
            if sb.ufs2 { 2 } else { 1 },
            sb.order.name(),
            sb.location,
            sb.size,
            sb.fsize,
            sb.bsize,
            sb.ncg,
            sb.ipg,
            if read_only { "read-only" } else { "read-write" }
        );
        let cg_state = Mutex::new(vec![CgState::Unchecked; sb.ncg as usize]);
        let orig_flags = update::sb_flags(&sb, &sb.raw);
        let fs = FfsFs {
            raw_sb: Mutex::new(sb.raw.clone()),
            orig_clean: sb.raw[superblock::off::CLEAN],
            orig_flags,
            alloc: Mutex::new(alloc::Alloc::new(if read_only { vec![update::Csum::default(); sb.ncg as usize] } else { cs })),
            sb,
            dev: cdev,
            name: name.clone(),
            cg_state,
            hyper: ctx.hyper.clone(),
            read_only,
            itable: Mutex::new(()),
            ns: RwLock::new(()),
            live: Mutex::new(HashMap::new()),
            gen: AtomicU32::new(0),
        };
        if !read_only {
            fs.mark_mounted().map_err(|e| MountError::new(e, format!("{name}: cannot write the superblock: {e}")))?;
        }
        Ok(Mounted { fs: Arc::new(fs), read_only, warnings })
    }
}

/// `fs_flags` bits this driver knows (FreeBSD and NetBSD meanings).
const KNOWN_FLAGS: u32 = 0x7ff;
/// `fs_metackhash` kinds this driver keeps.
const KNOWN_CKHASH: u32 = superblock::ck::SUPERBLOCK | superblock::ck::CYLGRP | superblock::ck::INODE;

/// Why the write path cannot write this file system (empty: it can).
fn unwritable(sb: &Superblock) -> Vec<String> {
    let mut why = Vec::new();
    let f = sb.flags;
    if sb.old_fields {
        why.push("a UFS1 superblock from before FFSv2 (no FS_FLAGS_UPDATED) cannot be written".into());
    }
    if !sb.fmt44 {
        why.push("4.2BSD-format inodes and directories cannot be written".into());
    }
    if sb.clean == 0 || f & flags::FS_UNCLEAN != 0 {
        let journal = if f & flags::FS_SUJ != 0 {
            "; its soft-updates journal (FS_SUJ) may not be empty"
        } else if f & flags::FS_DOWAPBL != 0 {
            "; its WAPBL log (FS_DOWAPBL) may not be empty"
        } else {
            ""
        };
        why.push(format!("the file system is not clean (run fsck_ffs){journal}"));
    }
    if f & flags::FS_NEEDSFSCK != 0 {
        why.push("the file system is marked as needing fsck_ffs".into());
    }
    if f & !KNOWN_FLAGS != 0 {
        why.push(format!("unknown flags {:#x}", f & !KNOWN_FLAGS));
    }
    if f & flags::FS_METACKHASH != 0 {
        if !sb.ufs2 {
            why.push("flag 0x200 on UFS1 (NetBSD quota2) cannot be kept up to date".into());
        } else {
            let m = sb.order.u32(&sb.raw, superblock::off::METACKHASH);
            if m & !KNOWN_CKHASH != 0 {
                why.push(format!("unknown check-hash kinds {:#x} in fs_metackhash", m & !KNOWN_CKHASH));
            } else if m == 0 {
                why.push("flag 0x200 without check hashes (NetBSD quota2) cannot be kept up to date".into());
            }
        }
    }
    if sb.maxbpg == 0 || sb.contigsumsize > 0 && sb.maxcontig == 0 {
        why.push("impossible allocation parameters (fs_maxbpg, fs_maxcontig)".into());
    }
    why
}

/// What is known of a cylinder group's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CgState {
    Unchecked,
    Good,
    Bad,
}

/// Offsets in `struct cg`.
pub mod cg {
    pub const MAGIC: usize = 4;
    pub const CGX: usize = 12;
    pub const NIBLK: usize = 116;
    pub const CKHASH: usize = 132;
    pub const CG_MAGIC: u32 = 0x090255;
}

/// A mounted FFS.
pub struct FfsFs {
    pub(crate) sb: Superblock,
    pub(crate) dev: CachedDev,
    pub(crate) name: String,
    cg_state: Mutex<Vec<CgState>>,
    hyper: Arc<dyn Hypercalls>,
    pub(crate) read_only: bool,
    /// The superblock as read, patched and written back.
    raw_sb: Mutex<Vec<u8>>,
    /// `fs_clean` and `fs_flags` at mount, restored at unmount.
    orig_clean: u8,
    orig_flags: u32,
    /// Cylinder groups, the summary area and the totals (the allocation lock).
    pub(crate) alloc: Mutex<alloc::Alloc>,
    /// Serialises read-modify-writes of inode fragments.
    itable: Mutex<()>,
    /// Directory operations share it; rename takes it alone.
    pub(crate) ns: RwLock<()>,
    /// In-memory inodes in use, so every vnode of one inode shares one state.
    pub(crate) live: Mutex<HashMap<u32, Weak<NodeInner>>>,
    gen: AtomicU32,
}

/// Name → (inode, byte offset of its chunk) of a large directory.
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
    pub st: RwLock<State>,
    /// Name → inode map of a large directory, built on the first lookup.
    pub names: Mutex<Names>,
}

/// The mutable part of an in-memory inode.
pub(crate) struct State {
    pub inode: Inode,
    /// Byte offset of the first directory chunk that may have room for a new entry.
    pub hint: u64,
    /// The inode was freed; the vnode is stale.
    pub freed: bool,
}

impl NodeInner {
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

/// The vnode data.
struct Node(Arc<NodeInner>);

fn node(vn: &Vnode) -> KResult<&Arc<NodeInner>> {
    Ok(&vn.data::<Node>()?.0)
}

impl FfsFs {
    /// Logs a corruption of inode `ino`.
    pub(crate) fn corrupt(&self, ino: u32, msg: String) {
        log::error!("{}: inode {ino}: {msg}", self.name);
    }

    /// Fragment address and byte offset of inode `ino` within that fragment.
    fn inode_location(&self, ino: u32) -> (u64, usize) {
        update::inode_location(&self.sb, ino)
    }

    /// Reads `fs_cgsize` bytes of group `c`'s header.
    pub(crate) fn read_cg(&self, c: u32) -> KResult<Vec<u8>> {
        let fs = u64::from(self.sb.fsize);
        let n = u64::from(self.sb.cgsize).div_ceil(fs);
        let mut buf = vec![0u8; (n * fs) as usize];
        self.dev.read_blocks(self.sb.cgtod(c), n, &mut buf, 0)?;
        buf.truncate(self.sb.cgsize as usize);
        Ok(buf)
    }

    /// Checks group `c`'s header once (magic, index, check hash); a bad group makes its
    /// inodes `EIO`, the rest of the file system stays readable.
    fn check_cg(&self, c: u32) -> KResult<()> {
        let state = self.cg_state.lock().unwrap_or_else(|e| e.into_inner()).get(c as usize).copied();
        match state {
            Some(CgState::Good) => return Ok(()),
            Some(CgState::Bad) | None => return Err(Errno::EIO),
            Some(CgState::Unchecked) => {}
        }
        let raw = self.read_cg(c)?;
        let o = self.sb.order;
        let problem = if o.u32(&raw, cg::MAGIC) != cg::CG_MAGIC {
            Some(format!("bad magic {:#x}", o.u32(&raw, cg::MAGIC)))
        } else if o.u32(&raw, cg::CGX) != c {
            Some(format!("claims to be group {}", o.u32(&raw, cg::CGX)))
        } else if self.sb.metackhash & superblock::ck::CYLGRP != 0 {
            let want = o.u32(&raw, cg::CKHASH);
            let mut copy = raw.clone();
            o.put_u32(&mut copy, cg::CKHASH, 0);
            let got = ckhash(&copy);
            (want != got).then(|| format!("check hash {want:#010x}, computed {got:#010x}"))
        } else {
            None
        };
        if let Some(p) = &problem {
            log::error!("{}: cylinder group {c} (fragment {}): {p}; its inodes are unreadable", self.name, self.sb.cgtod(c));
        }
        let mut st = self.cg_state.lock().unwrap_or_else(|e| e.into_inner());
        st[c as usize] = if problem.is_some() { CgState::Bad } else { CgState::Good };
        if problem.is_some() {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    pub(crate) fn read_inode(&self, ino: u32) -> KResult<Inode> {
        if ino < ROOTINO || ino >= self.sb.ninodes() {
            return Err(Errno::ESTALE);
        }
        self.check_cg(ino / self.sb.ipg)?;
        let (frag, at) = self.inode_location(ino);
        let buf = self.dev.bread(frag)?;
        let raw = buf.get(at..at + self.sb.isize()).ok_or(Errno::EIO)?;
        Inode::parse(&self.sb, raw).map_err(|e| match e {
            InodeError::Free => Errno::ENOENT,
            InodeError::Corrupt(m) => {
                self.corrupt(ino, format!("{m} (inode fragment {frag})"));
                Errno::EIO
            }
        })
    }

    fn bs(&self) -> u64 {
        u64::from(self.sb.bsize)
    }

    /// Calls `f(offset, record)` for every live record (not empty, not a whiteout) of
    /// directory `node` from byte `cookie` on, until it returns `false`.
    fn scan_dir(&self, ino: u32, inode: &Inode, cookie: u64, f: &mut dyn FnMut(u64, &dir::Record<'_>) -> bool) -> KResult<()> {
        if inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let bs = self.bs();
        let fs = u64::from(self.sb.fsize);
        let chunk = dir::DIRBLKSIZ as u64;
        let mut off = cookie - cookie % chunk;
        let mut run: Option<(u64, bmap::Run)> = None; // (first lblk, run)
        while off < inode.size {
            let lblk = off / bs;
            let cur = match run {
                Some((start, r)) if lblk >= start && lblk < start + r.len => (start, r),
                _ => {
                    let r = self.bmap(ino, inode, lblk, (inode.size.div_ceil(bs) - lblk).max(1))?;
                    (lblk, r)
                }
            };
            run = Some(cur);
            let Some(phys) = cur.1.phys else {
                self.corrupt(ino, format!("directory has a hole at block {lblk}"));
                return Err(Errno::EIO);
            };
            let in_run = off - cur.0 * bs;
            let frag = phys + in_run / fs;
            let buf = self.dev.bread(frag)?;
            // Every chunk of this fragment.
            let mut at = (in_run % fs) as usize;
            let mut stopped = false;
            while at < fs as usize && off < inode.size {
                let base = off;
                let c = &buf[at..at + dir::DIRBLKSIZ];
                dir::walk_chunk(c, self.sb.order, self.sb.fmt44, self.sb.ninodes(), &mut |r| {
                    if r.ino == 0 || r.dtype == dir::DT_WHT || base + (r.pos as u64) < cookie {
                        return true;
                    }
                    if !f(base + r.pos as u64, r) {
                        stopped = true;
                        return false;
                    }
                    true
                })
                .map_err(|m| {
                    self.corrupt(ino, format!("directory chunk at byte {base}: {m}"));
                    Errno::EIO
                })?;
                if stopped {
                    return Ok(());
                }
                at += dir::DIRBLKSIZ;
                off += chunk;
            }
        }
        Ok(())
    }

    /// Looks `name` up in directory `n` (whose state the caller holds): (inode, byte offset of
    /// the chunk holding the entry).
    pub(crate) fn dir_lookup(&self, n: &NodeInner, inode: &Inode, name: &[u8]) -> KResult<Option<(u32, u64)>> {
        if inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let chunk = dir::DIRBLKSIZ as u64;
        if inode.size / chunk > NAME_MAP_MIN_CHUNKS {
            let mut slot = n.names();
            if matches!(*slot, Names::Unbuilt) {
                let mut map = NameMap::new();
                let mut too_big = false;
                self.scan_dir(n.ino, inode, 0, &mut |off, r| {
                    if map.len() >= NAME_MAP_MAX_ENTRIES {
                        too_big = true;
                        return false;
                    }
                    map.entry(r.name.into()).or_insert((r.ino, off - off % chunk));
                    true
                })?;
                *slot = if too_big { Names::TooBig } else { Names::Built(map) };
            }
            if let Names::Built(map) = &*slot {
                return Ok(map.get(name).copied());
            }
        }
        let mut found = None;
        self.scan_dir(n.ino, inode, 0, &mut |off, r| {
            if r.name == name {
                found = Some((r.ino, off - off % chunk));
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    fn read_file(&self, ino: u32, inode: &Inode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let size = inode.size;
        if off >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = usize::try_from((size - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let bs = self.bs();
        let fs = u64::from(self.sb.fsize);
        let fsu = fs as usize;
        let frag = u64::from(self.sb.frag);
        let ra_blocks = readahead / bs;
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let lblk = pos / bs;
            let boff = pos % bs;
            let left = (len - done) as u64;
            let req_blocks = (boff + left).div_ceil(bs);
            let run = self.bmap(ino, inode, lblk, req_blocks + ra_blocks)?;
            let run_bytes = run.len * bs - boff;
            let bytes = run_bytes.min(left) as usize;
            let dst = &mut buf[done..done + bytes];
            match run.phys {
                None => dst.fill(0),
                Some(p) => {
                    let first = p + boff / fs;
                    let skip = (boff % fs) as usize;
                    let nfr = (skip + bytes).div_ceil(fsu) as u64;
                    // Read ahead within the run only (its fragments are this file's).
                    let run_frags = run.len * frag;
                    let used = boff / fs + nfr;
                    let ahead = if lblk + run.len >= size.div_ceil(bs) {
                        0
                    } else {
                        run_frags.saturating_sub(used).min(ra_blocks * frag)
                    };
                    if skip == 0 && bytes % fsu == 0 {
                        self.dev.read_blocks(first, nfr, dst, ahead)?;
                    } else {
                        let mut tmp = vec![0u8; nfr as usize * fsu];
                        self.dev.read_blocks(first, nfr, &mut tmp, ahead)?;
                        dst.copy_from_slice(&tmp[skip..skip + bytes]);
                    }
                }
            }
            done += bytes;
        }
        Ok(len)
    }
}

impl FileSystem for FfsFs {
    fn root(&self) -> Ino {
        Ino(u64::from(ROOTINO))
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
        self.dir_lookup(n, &st.inode, name)?.map(|(i, _)| Ino(u64::from(i))).ok_or(Errno::ENOENT)
    }

    fn readdir(&self, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        let node = node(dir)?;
        let st = node.read();
        let inode = &st.inode;
        self.scan_dir(node.ino, inode, cookie, &mut |off, r| {
            let kind = match dir::dtype_kind(r.dtype) {
                Some(k) => k,
                None => match self.read_inode(r.ino) {
                    Ok(i) => i.kind,
                    Err(e) => {
                        log::warn!(
                            "{}: directory inode {}: entry {:?} -> inode {}: {e:?}; skipped",
                            self.name,
                            node.ino,
                            String::from_utf8_lossy(r.name),
                            r.ino
                        );
                        return true;
                    }
                },
            };
            let next = off + r.reclen as u64;
            sink(&DirEntry { ino: Ino(u64::from(r.ino)), kind, name: r.name, next, attr: None })
        })
    }

    fn read(&self, vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let node = node(vn)?;
        let st = node.read();
        let inode = &st.inode;
        match inode.kind {
            FileType::Regular => self.read_file(node.ino, inode, off, buf, readahead),
            FileType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn readlink(&self, vn: &Vnode) -> KResult<Vec<u8>> {
        let node = node(vn)?;
        let st = node.read();
        self.read_symlink(node.ino, &st.inode)
    }

    fn statfs(&self) -> KResult<StatFs> {
        let sb = &self.sb;
        let t = if self.read_only { sb.cstotal } else { self.lock_alloc().total };
        let bfree = (t.nbfree.max(0).saturating_mul(i64::from(sb.frag)).saturating_add(t.nffree.max(0)) as u64).min(sb.dsize);
        Ok(StatFs {
            bsize: sb.fsize,
            blocks: sb.dsize,
            bfree,
            bavail: bfree.saturating_sub(sb.reserved_frags()),
            files: u64::from(sb.ninodes() - ROOTINO),
            ffree: (t.nifree.max(0) as u64).min(u64::from(sb.ninodes())),
            namemax: dir::MAXNAMLEN as u32,
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

    fn setxattr(&self, _vn: &Vnode, _name: &[u8], _value: &[u8], _flags: vfs_faction::XattrFlags) -> KResult<()> {
        // UFS2 extended attribute areas are not written (yet): callers such as cp fall back
        // to plain permissions on EOPNOTSUPP.
        self.ro()?;
        Err(Errno::EOPNOTSUPP)
    }

    fn removexattr(&self, _vn: &Vnode, _name: &[u8]) -> KResult<()> {
        self.ro()?;
        Err(Errno::EOPNOTSUPP)
    }

    fn fsync(&self, _vn: &Vnode, _datasync: bool) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_alloc()?;
        self.dev.sync()
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
        self.flush_alloc()?;
        self.dev.write_back()?;
        self.write_sb(None)?;
        self.dev.device().flush()
    }

    fn unmount(&self) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_alloc()?;
        self.dev.sync()?;
        self.write_sb(Some((self.orig_clean, self.orig_flags)))?;
        self.dev.device().flush()
    }
}

impl FfsFs {
    fn attr(&self, ino: Ino, i: &Inode) -> Attr {
        let rdev = if matches!(i.kind, FileType::CharDevice | FileType::BlockDevice) { i.rdev_linux() } else { 0 };
        Attr {
            ino,
            kind: i.kind,
            perm: u32::from(i.mode) & 0o7777,
            nlink: u32::from(i.nlink),
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: i.blocks,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.birthtime,
            rdev,
            blksize: self.sb.bsize,
            flags: i.flags,
        }
    }

    pub(crate) fn read_symlink(&self, ino: u32, i: &Inode) -> KResult<Vec<u8>> {
        if i.kind != FileType::Symlink {
            return Err(Errno::EINVAL);
        }
        if i.is_short_symlink(&self.sb) {
            let at = inode::shortlink_offset(self.sb.ufs2);
            let room = if self.sb.ufs2 { 120 } else { 60 };
            if i.size > room {
                self.corrupt(ino, format!("short symlink of {} bytes", i.size));
                return Err(Errno::EIO);
            }
            return Ok(i.raw[at..at + i.size as usize].to_vec());
        }
        if i.size == 0 || i.size > SYMLINK_MAX {
            self.corrupt(ino, format!("symlink of {} bytes", i.size));
            return Err(Errno::EIO);
        }
        let mut out = vec![0u8; i.size as usize];
        let n = self.read_file(ino, i, 0, &mut out, 0)?;
        out.truncate(n);
        Ok(out)
    }

}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<FfsFs>();
    is::<Node>();
    is::<NodeInner>();
}
