//! The ext2fs component: ext2, ext3 and ext4, read-only for now.
//!
//! Layout of the driver:
//! - [`superblock`]: parse and validate the superblock; feature sets; probe.
//! - [`group`]: block group descriptors (32/64-byte, meta_bg) and their checksums.
//! - [`inode`]: on-disk inodes (128 bytes and larger, nanosecond times, Hurd fields).
//! - [`bmap`]: logical to physical mapping (block map and extent trees), in runs.
//! - [`dir`]: directory blocks, dirent tails, htree blocks read linearly.
//! - [`xattr`]: in-inode and block extended attributes.
//! - [`csum`]: crc32c (metadata_csum) and crc16 (gdt_csum).
//!
//! Nothing read from the disk is trusted: a bad value is `EIO` for the object it belongs to,
//! with a log line naming the inode or block; a bad superblock or group descriptor refuses
//! the mount with a message.

pub mod bmap;
pub mod csum;
pub mod dir;
pub mod group;
pub mod inode;
pub mod superblock;
pub mod xattr;

use bmap::{MapCache, Run};
use group::Group;
use inode::{flags, Inode, InodeError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use superblock::{incompat, SbError, Superblock, OS_HURD, SB_OFFSET, SB_SIZE};
use vfs_faction::bufcache::Buf;
use vfs_faction::{
    Attr, BlockDevice, CachedDev, Component, DirEntry, Errno, Faction, FileSystem, FileType, Ino, KResult,
    MountContext, MountError, MountOptions, MountSource, Mounted, NodeData, StatFs, Vnode,
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
const ROOT_INO: u32 = 2;
/// Directories with more blocks than this get a name → inode map for lookups.
const NAME_MAP_MIN_BLOCKS: u64 = 4;
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
        "ext2, ext3 and ext4 (read-only: block maps, extents, htree, xattrs, metadata_csum)"
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
        let name = dev.describe();
        if opts.explicit_rw {
            return Err(MountError::new(
                Errno::EROFS,
                "read-write is not supported yet for ext2/ext3/ext4 (mount with -o ro)",
            ));
        }
        let mut raw = vec![0u8; SB_SIZE];
        if dev.size() < SB_OFFSET + SB_SIZE as u64 {
            return Err(MountError::new(Errno::EINVAL, format!("{name}: too small to hold an ext2/ext3/ext4 file system")));
        }
        dev.read_at(&mut raw, SB_OFFSET)
            .map_err(|e| MountError::new(e, format!("{name}: cannot read the superblock: {e}")))?;
        let sb = Superblock::parse(&raw).map_err(|e| match e {
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
        let cdev = cache.attach(dev.clone(), sb.block_size)?;
        let groups = group::load(&sb, &cdev).map_err(|m| {
            log::error!("{name}: {m}");
            MountError::new(Errno::EUCLEAN, format!("{name}: {m}"))
        })?;
        let mut warnings = Vec::new();
        if sb.creator_os == OS_HURD {
            warnings.push(
                "created by GNU Hurd: Hurd-specific inode fields (translators, authors) are ignored; directory file types are taken from the inodes"
                    .to_string(),
            );
        }
        if sb.state & 1 == 0 {
            warnings.push("the file system was not cleanly unmounted (run e2fsck)".to_string());
        }
        log::info!(
            "{name}: ext rev {} with {} blocks of {} bytes, {} groups, {} inodes; mounted read-only",
            sb.rev_level,
            sb.blocks_count,
            sb.block_size,
            sb.group_count,
            sb.inodes_count
        );
        let fs = Ext2Fs { sb, dev: cdev, groups, name };
        Ok(Mounted { fs: Arc::new(fs), read_only: true, warnings })
    }
}

/// A mounted ext2/ext3/ext4 file system.
pub struct Ext2Fs {
    sb: Superblock,
    dev: CachedDev,
    groups: Vec<Group>,
    name: String,
}

type NameMap = HashMap<Box<[u8]>, u32>;

/// The in-memory inode kept in a vnode.
struct Node {
    ino: u32,
    inode: Inode,
    /// metadata_csum seed of this inode.
    seed: u32,
    map: Mutex<MapCache>,
    /// Name → inode map of a large directory, built on the first lookup.
    names: Mutex<Option<Arc<NameMap>>>,
}

impl Node {
    fn map_cache(&self) -> MutexGuard<'_, MapCache> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ext2Fs {
    /// Logs a corruption of inode `ino`.
    fn corrupt(&self, ino: u32, msg: String) {
        log::error!("{}: inode {ino}: {msg}", self.name);
    }

    /// True if blocks `start..start+len` are inside the file system (and not block 0).
    fn blocks_in_range(&self, start: u64, len: u64) -> bool {
        start >= 1
            && start >= u64::from(self.sb.first_data_block)
            && start.checked_add(len).is_some_and(|end| end <= self.sb.blocks_count)
    }

    fn bread(&self, blk: u64) -> KResult<Arc<Buf>> {
        self.dev.bread(blk)
    }

    fn bs(&self) -> u64 {
        u64::from(self.sb.block_size)
    }

    fn read_inode(&self, ino: u32) -> KResult<Inode> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(Errno::ESTALE);
        }
        let ipg = self.sb.inodes_per_group;
        let g = ((ino - 1) / ipg) as usize;
        let index = (ino - 1) % ipg;
        let grp = self.groups.get(g).ok_or(Errno::ESTALE)?;
        let group_csums = self.sb.has_ro_compat(superblock::ro_compat::GDT_CSUM) || self.sb.metadata_csum();
        if group_csums
            && (grp.flags & group::BG_INODE_UNINIT != 0 || index >= ipg.saturating_sub(grp.itable_unused))
        {
            return Err(Errno::ENOENT);
        }
        let isz = u64::from(self.sb.inode_size);
        let off = u64::from(index) * isz;
        let blk = grp.inode_table + off / self.bs();
        let boff = (off % self.bs()) as usize;
        let buf = self.bread(blk)?;
        let raw = buf.get(boff..boff + isz as usize).ok_or(Errno::EIO)?;
        Inode::parse(&self.sb, ino, raw).map_err(|e| match e {
            InodeError::Free => Errno::ENOENT,
            InodeError::Corrupt(m) => {
                self.corrupt(ino, format!("{m} (inode table block {blk})"));
                Errno::EIO
            }
        })
    }

    fn map(&self, node: &Node, cache: &mut MapCache, lblk: u64, max: u64) -> KResult<Run> {
        bmap::map(self, node.ino, node.seed, &node.inode, cache, lblk, max)
    }

    /// Directory block `lblk`, checksum verified; `None` for a hole.
    fn dir_block(&self, node: &Node, lblk: u64) -> KResult<Option<Arc<Buf>>> {
        let run = self.map(node, &mut node.map_cache(), lblk, 1)?;
        let Some(p) = run.phys else { return Ok(None) };
        let buf = self.bread(p)?;
        if self.sb.metadata_csum() {
            let indexed = node.inode.flags & flags::INDEX != 0;
            if let Err(m) = dir::verify(&buf, lblk, node.seed, indexed) {
                self.corrupt(node.ino, format!("directory block {lblk} (block {p}): {m}"));
                return Err(Errno::EIO);
            }
        }
        Ok(Some(buf))
    }

    fn dir_blocks(&self, node: &Node) -> u64 {
        node.inode.size.div_ceil(self.bs())
    }

    /// Calls `f(lblk, record)` for every live record from byte `cookie` on, until it returns
    /// `false`.
    fn scan_dir(
        &self,
        node: &Node,
        cookie: u64,
        f: &mut dyn FnMut(u64, &dir::Record<'_>) -> bool,
    ) -> KResult<()> {
        if node.inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let bs = self.bs();
        let mut lblk = cookie / bs;
        let mut start = (cookie % bs) as usize;
        let filetype = self.sb.dirent_filetype();
        while lblk < self.dir_blocks(node) {
            let Some(block) = self.dir_block(node, lblk)? else {
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
                self.corrupt(node.ino, format!("directory block {lblk}: {m}"));
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

    fn name_map(&self, node: &Node) -> KResult<Option<Arc<NameMap>>> {
        let mut slot = node.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = &*slot {
            return Ok(Some(m.clone()));
        }
        let mut map = NameMap::new();
        let mut too_big = false;
        self.scan_dir(node, 0, &mut |_, r| {
            if map.len() >= NAME_MAP_MAX_ENTRIES {
                too_big = true;
                return false;
            }
            map.entry(r.name.into()).or_insert(r.inode);
            true
        })?;
        if too_big {
            return Ok(None);
        }
        let map = Arc::new(map);
        *slot = Some(map.clone());
        Ok(Some(map))
    }

    /// Extended attributes of an inode: in-inode first, then the EA block.
    fn xattrs(&self, node: &Node) -> KResult<Vec<xattr::Xattr>> {
        let ino = node.ino;
        let mut out = Vec::new();
        let extra_end = inode::GOOD_OLD_SIZE + usize::from(node.inode.extra_isize);
        if node.inode.raw.len() > extra_end {
            out = xattr::parse_inode(&node.inode.raw[extra_end..]).map_err(|m| {
                self.corrupt(ino, format!("in-inode extended attributes: {m}"));
                Errno::EIO
            })?;
        }
        let blk = node.inode.file_acl;
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

    fn read_file(&self, node: &Node, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let size = node.inode.size;
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
            let run = self.map(node, &mut node.map_cache(), lblk, req_blocks + ra_blocks)?;
            let n = run.len.min(req_blocks).max(1);
            let bytes = ((n as usize) * bsu - boff).min(left);
            let dst = &mut buf[done..done + bytes];
            match run.phys {
                None => dst.fill(0),
                Some(p) => {
                    let last = done + bytes == len;
                    let ahead = if last { run.len.saturating_sub(n) } else { 0 };
                    if boff == 0 && bytes & (bsu - 1) == 0 {
                        self.dev.read_blocks(p, n, dst, ahead)?;
                    } else if boff == 0 && bytes > bsu {
                        // Whole blocks first; the partial tail on the next round.
                        let whole = bytes / bsu;
                        self.dev.read_blocks(p, whole as u64, &mut dst[..whole * bsu], 0)?;
                        done += whole * bsu;
                        continue;
                    } else {
                        let mut tmp = vec![0u8; bsu];
                        let ahead = if boff + bytes >= bsu || last { run.len.saturating_sub(1) } else { 0 };
                        self.dev.read_blocks(p, 1, &mut tmp, ahead.min(ra_blocks + n))?;
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
}

impl FileSystem for Ext2Fs {
    fn root(&self) -> Ino {
        Ino(u64::from(ROOT_INO))
    }

    fn vget(&self, ino: Ino) -> KResult<NodeData> {
        let n = u32::try_from(ino.0).map_err(|_| Errno::ESTALE)?;
        let inode = self.read_inode(n)?;
        if inode.flags & flags::INLINE_DATA != 0 {
            self.corrupt(n, "inline data flag set without the inline_data feature".into());
            return Err(Errno::EIO);
        }
        let seed = if self.sb.metadata_csum() { inode::csum_seed(&self.sb, n, inode.generation) } else { 0 };
        Ok(Box::new(Node { ino: n, inode, seed, map: Mutex::new(MapCache::default()), names: Mutex::new(None) }))
    }

    fn getattr(&self, vn: &Vnode) -> KResult<Attr> {
        let n = vn.data::<Node>()?;
        let i = &n.inode;
        let rdev = if matches!(i.kind, FileType::CharDevice | FileType::BlockDevice) { i.rdev() } else { 0 };
        Ok(Attr {
            ino: vn.ino,
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
        })
    }

    fn lookup(&self, dir: &Vnode, name: &[u8]) -> KResult<Ino> {
        let node = dir.data::<Node>()?;
        if node.inode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if self.dir_blocks(node) > NAME_MAP_MIN_BLOCKS {
            if let Some(map) = self.name_map(node)? {
                return map.get(name).map(|&i| Ino(u64::from(i))).ok_or(Errno::ENOENT);
            }
        }
        let mut found = None;
        self.scan_dir(node, 0, &mut |_, r| {
            if r.name == name {
                found = Some(r.inode);
                false
            } else {
                true
            }
        })?;
        found.map(|i| Ino(u64::from(i))).ok_or(Errno::ENOENT)
    }

    fn readdir(&self, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        let node = dir.data::<Node>()?;
        let bs = self.bs();
        self.scan_dir(node, cookie, &mut |lblk, r| {
            let kind = match dir::dirent_type(r.file_type) {
                Some(k) => k,
                None => match self.read_inode(r.inode) {
                    Ok(i) => i.kind,
                    Err(e) => {
                        log::warn!(
                            "{}: directory inode {}: entry {:?} -> inode {}: {e:?}; skipped",
                            self.name,
                            node.ino,
                            String::from_utf8_lossy(r.name),
                            r.inode
                        );
                        return true;
                    }
                },
            };
            let next = lblk * bs + (r.pos + r.rec_len) as u64;
            sink(&DirEntry { ino: Ino(u64::from(r.inode)), kind, name: r.name, next })
        })
    }

    fn read(&self, vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let node = vn.data::<Node>()?;
        match node.inode.kind {
            FileType::Regular => self.read_file(node, off, buf, readahead),
            FileType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn readlink(&self, vn: &Vnode) -> KResult<Vec<u8>> {
        let node = vn.data::<Node>()?;
        let i = &node.inode;
        if i.kind != FileType::Symlink {
            return Err(Errno::EINVAL);
        }
        let ea_blocks = if i.file_acl != 0 { self.bs() / 512 } else { 0 };
        // The kernel's rule: a symlink that owns no data blocks keeps its target in i_block.
        let fast = i.blocks512.saturating_sub(ea_blocks) == 0;
        if fast {
            if i.size >= 60 {
                self.corrupt(node.ino, format!("fast symlink of {} bytes", i.size));
                return Err(Errno::EIO);
            }
            return Ok(i.block[..i.size as usize].to_vec());
        }
        if i.size == 0 || i.size > SYMLINK_MAX || i.size > self.bs() {
            self.corrupt(node.ino, format!("symlink of {} bytes", i.size));
            return Err(Errno::EIO);
        }
        let mut out = vec![0u8; i.size as usize];
        let n = self.read_file(node, 0, &mut out, 0)?;
        out.truncate(n);
        Ok(out)
    }

    fn getxattr(&self, vn: &Vnode, name: &[u8]) -> KResult<Vec<u8>> {
        let node = vn.data::<Node>()?;
        self.xattrs(node)?.into_iter().find(|x| x.name == name).map(|x| x.value).ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, vn: &Vnode) -> KResult<Vec<Vec<u8>>> {
        let node = vn.data::<Node>()?;
        Ok(self.xattrs(node)?.into_iter().map(|x| x.name).collect())
    }

    fn statfs(&self) -> KResult<StatFs> {
        let sb = &self.sb;
        let bfree = sb.free_blocks_count.min(sb.blocks_count);
        Ok(StatFs {
            bsize: sb.block_size,
            blocks: sb.blocks_count,
            bfree,
            bavail: bfree.saturating_sub(sb.r_blocks_count),
            files: u64::from(sb.inodes_count),
            ffree: u64::from(sb.free_inodes_count.min(sb.inodes_count)),
            namemax: 255,
        })
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Ext2Fs>();
    is::<Node>();
    let _ = incompat::FILETYPE;
}
