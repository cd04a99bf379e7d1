//! A mounted file system: the vnode cache and the vnode operations as front ends call them
//! (credentials in, permission checks done here, then the driver).

use crate::component::Mounted;
use crate::cred::{check_access, Cred, R_OK, W_OK, X_OK};
use crate::errno::{Errno, KResult};
use crate::fs::{Attr, DirEntry, FileSystem, FileType, Ino, StatFs, Vnode, NAME_MAX};
use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod write;
pub use write::TimeSet;

/// Symbolic links followed in one path walk before `ELOOP` (Linux: 40).
pub const MAXSYMLINKS: u32 = 40;

/// Smallest and largest sequential read-ahead window, bytes.
const RA_MIN: u64 = 128 << 10;
const RA_MAX: u64 = 4 << 20;

/// How a file is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub truncate: bool,
}

impl OpenFlags {
    /// From open(2) flags (`O_ACCMODE`, `O_TRUNC`).
    pub fn from_raw(flags: i32) -> OpenFlags {
        let acc = flags & 3;
        OpenFlags { read: acc == 0 || acc == 2, write: acc == 1 || acc == 2, truncate: flags & 0o1000 != 0 }
    }
}

/// The driver, acting for one caller ([`FileSystem::for_cred`]) or as itself.
pub(crate) enum FsRef<'a> {
    Shared(&'a dyn FileSystem),
    Bound(Box<dyn FileSystem + 'a>),
}

impl<'a> core::ops::Deref for FsRef<'a> {
    type Target = dyn FileSystem + 'a;
    fn deref(&self) -> &Self::Target {
        match self {
            FsRef::Shared(f) => *f,
            FsRef::Bound(b) => b.as_ref(),
        }
    }
}

/// A mounted file system.
pub struct Mount {
    id: u32,
    fstype: String,
    source: String,
    fs: Arc<dyn FileSystem>,
    read_only: bool,
    warnings: Vec<String>,
    root: Arc<Vnode>,
    vnodes: Mutex<HashMap<Ino, Arc<Vnode>>>,
    unmounted: AtomicBool,
    hyper: Arc<dyn crate::Hypercalls>,
}

impl Mount {
    pub(crate) fn new(
        id: u32,
        fstype: String,
        source: String,
        m: Mounted,
        hyper: Arc<dyn crate::Hypercalls>,
    ) -> KResult<Arc<Mount>> {
        let root_ino = m.fs.root();
        let root = Arc::new(Vnode::new(root_ino, m.fs.vget(root_ino)?));
        let attr = m.fs.getattr(&root)?;
        if attr.kind != FileType::Directory {
            log::error!("{source}: root inode {root_ino} is not a directory");
            return Err(Errno::EIO);
        }
        let mut vnodes = HashMap::new();
        vnodes.insert(root_ino, root.clone());
        Ok(Arc::new(Mount {
            id,
            fstype,
            source,
            fs: m.fs,
            read_only: m.read_only,
            warnings: m.warnings,
            root,
            vnodes: Mutex::new(vnodes),
            unmounted: AtomicBool::new(false),
            hyper,
        }))
    }

    /// Mount number within its kernel.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// File system type (`ext4`).
    pub fn fstype(&self) -> &str {
        &self.fstype
    }
    /// What was mounted (image path, `host:/path`).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Mounted read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    /// Warnings the driver gave at mount time.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
    /// Root inode number.
    pub fn root(&self) -> Ino {
        self.root.ino
    }
    /// The driver (for front ends that need driver-specific calls, e.g. fsck).
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    /// The driver acting for `cred` (drivers that do not care get the shared instance).
    pub(crate) fn fs_as(&self, cred: &Cred) -> FsRef<'_> {
        match self.fs.for_cred(cred) {
            Some(b) => FsRef::Bound(b),
            None => FsRef::Shared(self.fs.as_ref()),
        }
    }

    /// How long front ends may cache names and attributes; `None`: as long as they like (see
    /// [`FileSystem::cache_ttl`]).
    pub fn cache_ttl(&self) -> Option<std::time::Duration> {
        self.fs.cache_ttl()
    }

    /// Permission check: the driver's own (network file systems) or the mode bits.
    fn permission(&self, fs: &dyn FileSystem, vn: &Vnode, a: &Attr, cred: &Cred, mask: u32) -> KResult<()> {
        match fs.access(vn, mask) {
            Some(r) => r,
            None => check_access(a, cred, mask),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Arc<Vnode>>> {
        self.vnodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of vnodes cached (for leak tests).
    pub fn vnode_count(&self) -> usize {
        self.table().len()
    }

    /// The cached vnode of `ino`, or a freshly read one (cached until released).
    pub fn vnode(&self, ino: Ino) -> KResult<Arc<Vnode>> {
        if let Some(v) = self.table().get(&ino) {
            return Ok(v.clone());
        }
        // Read the inode outside the table lock: it may block on I/O.
        let vn = Arc::new(Vnode::new(ino, self.fs.vget(ino)?));
        Ok(self.table().entry(ino).or_insert(vn).clone())
    }

    /// Drops a vnode reference taken by [`Mount::vnode`]; the vnode leaves the cache when no
    /// FUSE lookup and no other holder refers to it any more.
    /// Closes an open file or directory that [`Mount::open`] or [`Mount::opendir`] returned
    /// (its open count goes down), then releases it.
    pub fn close(&self, vn: Arc<Vnode>) {
        let _ = vn.opens.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.release(vn);
    }

    pub fn release(&self, vn: Arc<Vnode>) {
        let ino = vn.ino;
        drop(vn);
        self.maybe_evict(ino);
    }

    fn maybe_evict(&self, ino: Ino) {
        if ino == self.root.ino {
            return;
        }
        let mut t = self.table();
        let gone = match t.get(&ino) {
            Some(v) if v.lookup_count() == 0 && Arc::strong_count(v) == 1 => t.remove(&ino),
            _ => None,
        };
        drop(t);
        if let Some(vn) = gone {
            if !self.read_only {
                if let Err(e) = self.fs.inactive(&vn) {
                    log::error!("{}: releasing inode {ino}: {e}", self.source);
                }
            }
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> KResult<Attr> {
        let vn = self.vnode(ino)?;
        let r = self.fs.getattr(&vn);
        self.release(vn);
        r
    }

    fn dir_search(&self, cred: &Cred, dir: &Vnode) -> KResult<Attr> {
        let a = self.fs_as(cred).getattr(dir)?;
        if a.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        check_access(&a, cred, X_OK)?;
        Ok(a)
    }

    fn lookup_vnode(&self, cred: &Cred, dir: &Vnode, name: &[u8]) -> KResult<Arc<Vnode>> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(Errno::EINVAL);
        }
        self.dir_search(cred, dir)?;
        if name == b"." {
            return self.vnode(dir.ino);
        }
        if name == b".." && dir.ino == self.root.ino {
            return Ok(self.root.clone());
        }
        let ino = self.fs_as(cred).lookup(dir, name)?;
        self.vnode(ino)
    }

    /// FUSE lookup: finds `name` in `dir` (search permission needed) and counts one lookup
    /// reference on the result, to be dropped by [`Mount::forget`].
    pub fn lookup(&self, cred: &Cred, dir: Ino, name: &[u8]) -> KResult<Attr> {
        let d = self.vnode(dir)?;
        let r = self.lookup_vnode(cred, &d, name);
        self.release(d);
        let vn = r?;
        match self.fs_as(cred).getattr(&vn) {
            Ok(a) => {
                vn.nlookup.fetch_add(1, Ordering::AcqRel);
                Ok(a)
            }
            Err(e) => {
                self.release(vn);
                Err(e)
            }
        }
    }

    /// FUSE forget: drops `n` lookup references.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == self.root.ino {
            return;
        }
        let t = self.table();
        if let Some(v) = t.get(&ino) {
            let prev = v.nlookup.load(Ordering::Acquire);
            if n > prev {
                log::warn!("forget of {ino}: {n} references dropped, only {prev} held");
            }
            v.nlookup.store(prev.saturating_sub(n), Ordering::Release);
        } else {
            // An entry listed without attributes (its inode could not be read) was never
            // cached; FUSE still forgets it.
            log::debug!("forget of {ino}, which is not cached");
        }
        drop(t);
        self.maybe_evict(ino);
    }

    /// access(2): checks `mask` (R_OK, W_OK, X_OK; 0 for existence) on `ino`.
    pub fn access(&self, cred: &Cred, ino: Ino, mask: u32) -> KResult<()> {
        let vn = self.vnode(ino)?;
        let fs = self.fs_as(cred);
        let r = fs.getattr(&vn).and_then(|a| {
            if mask & W_OK != 0 && self.read_only && !matches!(a.kind, FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket) {
                return Err(Errno::EROFS);
            }
            if mask & 7 == 0 {
                return Ok(());
            }
            self.permission(&*fs, &vn, &a, cred, mask)
        });
        drop(fs);
        self.release(vn);
        r
    }

    /// Opens a file: checks read/write permission and returns the vnode the handle holds
    /// (give it back with [`Mount::release`]).
    pub fn open(&self, cred: &Cred, ino: Ino, flags: OpenFlags) -> KResult<Arc<Vnode>> {
        let vn = self.vnode(ino)?;
        let fs = self.fs_as(cred);
        let r = (|| {
            let a = fs.getattr(&vn)?;
            if a.kind == FileType::Directory && (flags.write || flags.truncate) {
                return Err(Errno::EISDIR);
            }
            if (flags.write || flags.truncate) && self.read_only {
                return Err(Errno::EROFS);
            }
            let mut mask = 0;
            if flags.read {
                mask |= R_OK;
            }
            if flags.write || flags.truncate {
                mask |= W_OK;
            }
            self.permission(&*fs, &vn, &a, cred, mask)
        })();
        drop(fs);
        match r {
            Ok(()) => {
                vn.opens.fetch_add(1, Ordering::AcqRel);
                Ok(vn)
            }
            Err(e) => {
                self.release(vn);
                Err(e)
            }
        }
    }

    /// Opens a directory for reading (read permission needed).
    pub fn opendir(&self, cred: &Cred, ino: Ino) -> KResult<Arc<Vnode>> {
        let vn = self.vnode(ino)?;
        let fs = self.fs_as(cred);
        let r = fs.getattr(&vn).and_then(|a| {
            if a.kind != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            self.permission(&*fs, &vn, &a, cred, R_OK)
        });
        drop(fs);
        match r {
            Ok(()) => {
                vn.opens.fetch_add(1, Ordering::AcqRel);
                Ok(vn)
            }
            Err(e) => {
                self.release(vn);
                Err(e)
            }
        }
    }

    /// Reads from an open file, tracking sequential access for read-ahead.
    pub fn read(&self, vn: &Vnode, off: u64, buf: &mut [u8]) -> KResult<usize> {
        self.read_with(&FsRef::Shared(self.fs.as_ref()), vn, off, buf)
    }

    /// [`Mount::read`] for `cred`: a network file system reads as the caller.
    pub fn read_as(&self, cred: &Cred, vn: &Vnode, off: u64, buf: &mut [u8]) -> KResult<usize> {
        self.read_with(&self.fs_as(cred), vn, off, buf)
    }

    /// [`Mount::read_as`] that hands the bytes to `out` (called once when it succeeds): from
    /// where the driver holds them when it can lend them, else through `buf`, whose length is
    /// how much to read.
    pub fn read_to(&self, cred: &Cred, vn: &Vnode, off: u64, buf: &mut [u8], out: &mut dyn FnMut(&[u8])) -> KResult<()> {
        let fs = self.fs_as(cred);
        let window = Self::readahead(vn, off, buf.len());
        if let Some(r) = fs.read_lent(vn, off, buf.len(), window, out) {
            return r;
        }
        let n = fs.read(vn, off, buf, window)?;
        out(&buf[..n]);
        Ok(())
    }

    fn read_with(&self, fs: &FsRef<'_>, vn: &Vnode, off: u64, buf: &mut [u8]) -> KResult<usize> {
        fs.read(vn, off, buf, Self::readahead(vn, off, buf.len()))
    }

    /// How far past a read of `len` bytes at `off` the reader is expected to go next: a
    /// window that doubles while reads are sequential (0 when they are not).
    fn readahead(vn: &Vnode, off: u64, len: usize) -> u64 {
        let end = off.saturating_add(len as u64);
        let last = vn.last_read_end.swap(end, Ordering::AcqRel);
        // Concurrent FUSE readers may deliver a sequential stream slightly out of order.
        let sequential = off == 0 && last == 0 || off.abs_diff(last) <= RA_MAX;
        if sequential {
            let w = vn.ra_window.load(Ordering::Acquire);
            let w = if w == 0 { RA_MIN } else { (w * 2).min(RA_MAX) };
            vn.ra_window.store(w, Ordering::Release);
            w
        } else {
            vn.ra_window.store(0, Ordering::Release);
            0
        }
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> KResult<Vec<u8>> {
        let vn = self.vnode(ino)?;
        let r = self.fs.getattr(&vn).and_then(|a| {
            if a.kind != FileType::Symlink {
                return Err(Errno::EINVAL);
            }
            self.fs.readlink(&vn)
        });
        self.release(vn);
        r
    }

    /// Lists an open directory from `cookie`.
    pub fn readdir(&self, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        self.fs.readdir(dir, cookie, sink)
    }

    /// [`Mount::readdir`] for `cred`: a network file system lists as the caller.
    pub fn readdir_as(&self, cred: &Cred, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        self.fs_as(cred).readdir(dir, cookie, sink)
    }

    /// READDIRPLUS: lists entries with their attributes. Each entry the sink accepts (returns
    /// `true`), other than `.` and `..`, counts one lookup reference, as FUSE expects.
    pub fn readdirplus(
        &self,
        dir: &Vnode,
        cookie: u64,
        sink: &mut dyn FnMut(&DirEntry<'_>, Option<&Attr>) -> bool,
    ) -> KResult<()> {
        self.readdirplus_with(&FsRef::Shared(self.fs.as_ref()), dir, cookie, sink)
    }

    /// [`Mount::readdirplus`] for `cred`: a network file system lists as the caller.
    pub fn readdirplus_as(
        &self,
        cred: &Cred,
        dir: &Vnode,
        cookie: u64,
        sink: &mut dyn FnMut(&DirEntry<'_>, Option<&Attr>) -> bool,
    ) -> KResult<()> {
        self.readdirplus_with(&self.fs_as(cred), dir, cookie, sink)
    }

    fn readdirplus_with(
        &self,
        fs: &FsRef<'_>,
        dir: &Vnode,
        cookie: u64,
        sink: &mut dyn FnMut(&DirEntry<'_>, Option<&Attr>) -> bool,
    ) -> KResult<()> {
        fs.readdir(dir, cookie, &mut |e| {
            let dots = e.name == b"." || e.name == b"..";
            // An entry whose inode cannot be read is still listed, without attributes (and
            // without a lookup reference), as a kernel file system lists it: the name shows,
            // and stat(2) of it gives the error. One bad inode does not hide its directory.
            let vn = match self.vnode(e.ino) {
                Ok(v) => v,
                Err(er) => {
                    log::warn!("readdirplus: entry {:?} -> {}: {er:?}", String::from_utf8_lossy(e.name), e.ino);
                    return sink(e, None);
                }
            };
            let asked;
            let got = match e.attr {
                Some(a) => Ok(a),
                None => {
                    asked = fs.getattr(&vn);
                    asked.as_ref().map_err(|er| *er)
                }
            };
            let accepted = match got {
                Ok(attr) => {
                    let accepted = sink(e, Some(attr));
                    if accepted && !dots {
                        vn.nlookup.fetch_add(1, Ordering::AcqRel);
                    }
                    accepted
                }
                Err(er) => {
                    log::warn!("readdirplus: entry {:?} -> {}: {er:?}", String::from_utf8_lossy(e.name), e.ino);
                    sink(e, None)
                }
            };
            self.release(vn);
            accepted
        })
    }

    /// File system statistics.
    pub fn statfs(&self) -> KResult<StatFs> {
        self.fs.statfs()
    }

    fn xattr_read_check(&self, cred: &Cred, a: &Attr, name: &[u8]) -> KResult<()> {
        if name.starts_with(b"trusted.") && !cred.is_root() {
            return Err(Errno::EPERM);
        }
        if name.starts_with(b"user.") {
            if !matches!(a.kind, FileType::Regular | FileType::Directory) {
                return Err(Errno::ENODATA);
            }
            check_access(a, cred, R_OK)?;
        }
        Ok(())
    }

    /// getxattr(2), with the checks Linux makes (`trusted.` for root only; `user.` needs
    /// read permission and exists only on files and directories).
    pub fn getxattr(&self, cred: &Cred, ino: Ino, name: &[u8]) -> KResult<Vec<u8>> {
        if name.is_empty() || name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        let vn = self.vnode(ino)?;
        let fs = self.fs_as(cred);
        let r = fs
            .getattr(&vn)
            .and_then(|a| self.xattr_read_check(cred, &a, name))
            .and_then(|()| fs.getxattr(&vn, name));
        drop(fs);
        self.release(vn);
        r
    }

    /// listxattr(2): the names the caller may see (`trusted.` only for root).
    pub fn listxattr(&self, cred: &Cred, ino: Ino) -> KResult<Vec<Vec<u8>>> {
        let vn = self.vnode(ino)?;
        let r = self.fs_as(cred).listxattr(&vn);
        self.release(vn);
        let mut names = r?;
        if !cred.is_root() {
            names.retain(|n| !n.starts_with(b"trusted."));
        }
        Ok(names)
    }

    /// Walks `path` from the root (absolute or relative to the root) as `cred`, following
    /// symbolic links in the middle always and at the end when `follow`. Fails: `ENOENT`,
    /// `ENOTDIR`, `EACCES`, `ELOOP` (more than [`MAXSYMLINKS`] links), `ENAMETOOLONG`.
    pub fn namei(&self, cred: &Cred, path: &[u8], follow: bool) -> KResult<Attr> {
        let mut seen = Vec::new();
        let r = self.namei_vnode(cred, path, follow, &mut seen).and_then(|vn| self.fs_as(cred).getattr(&vn));
        // Every vnode the walk touched is unreferenced now; let the cache drop them.
        for ino in seen {
            self.maybe_evict(ino);
        }
        r
    }

    fn namei_vnode(&self, cred: &Cred, path: &[u8], follow: bool, seen: &mut Vec<Ino>) -> KResult<Arc<Vnode>> {
        if path.len() > 4096 {
            return Err(Errno::ENAMETOOLONG);
        }
        let mut links = 0u32;
        // Remaining components, last first, so a symlink's target can be pushed in front.
        let mut todo: Vec<Vec<u8>> = Vec::new();
        let push = |todo: &mut Vec<Vec<u8>>, p: &[u8]| {
            let trailing_slash = p.len() > 1 && p.ends_with(b"/");
            let mut comps: Vec<Vec<u8>> =
                p.split(|&c| c == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect();
            if trailing_slash {
                comps.push(b".".to_vec());
            }
            comps.reverse();
            todo.extend(comps);
        };
        push(&mut todo, path);
        let fs = self.fs_as(cred);
        let mut cur = self.root.clone();
        let mut parents: Vec<Arc<Vnode>> = Vec::new();
        while let Some(name) = todo.pop() {
            let next = if name == b".." {
                if cur.ino == self.root.ino {
                    cur.clone()
                } else {
                    self.dir_search(cred, &cur)?;
                    parents.pop().map(Ok).unwrap_or_else(|| self.lookup_vnode(cred, &cur, b".."))?
                }
            } else {
                self.lookup_vnode(cred, &cur, &name)?
            };
            seen.push(next.ino);
            let a = fs.getattr(&next)?;
            let last = todo.is_empty();
            if a.kind == FileType::Symlink && (!last || follow) {
                links += 1;
                if links > MAXSYMLINKS {
                    return Err(Errno::ELOOP);
                }
                let target = fs.readlink(&next)?;
                if target.is_empty() {
                    return Err(Errno::ENOENT);
                }
                if target.starts_with(b"/") {
                    cur = self.root.clone();
                    parents.clear();
                }
                push(&mut todo, &target);
                continue;
            }
            if !last && a.kind != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            if name != b"." && name != b".." {
                parents.push(cur);
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Flushes everything the driver holds.
    pub fn sync(&self) -> KResult<()> {
        self.fs.sync()
    }

    /// A file descriptor on the open file `vn` is being closed (see [`FileSystem::flush`]):
    /// `Err(ENOSYS)` when closing needs nothing from this mount (read-only, or a local file
    /// system), so the front end can stop asking.
    pub fn flush(&self, cred: &Cred, vn: &Vnode) -> KResult<()> {
        if self.read_only {
            return Err(Errno::ENOSYS);
        }
        self.fs_as(cred).flush(vn)
    }

    /// Unmounts: flushes and lets the driver mark the file system clean. Idempotent.
    pub fn unmount(&self) -> KResult<()> {
        if self.unmounted.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let rest: Vec<Arc<Vnode>> = {
            let mut t = self.table();
            let rest = t.iter().filter(|(ino, _)| **ino != self.root.ino).map(|(_, v)| v.clone()).collect();
            t.retain(|ino, _| *ino == self.root.ino);
            rest
        };
        if !self.read_only {
            // Files unlinked while still in use go now, before the final sync.
            for vn in &rest {
                if let Err(e) = self.fs.inactive(vn) {
                    log::error!("{}: releasing inode {}: {e}", self.source, vn.ino);
                }
            }
        }
        drop(rest);
        self.fs.unmount()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.unmounted.load(Ordering::Acquire) {
            if let Err(e) = self.fs.unmount() {
                log::error!("{}: unmount failed: {e}", self.source);
            }
        }
    }
}
