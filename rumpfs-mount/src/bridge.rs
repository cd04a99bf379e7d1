//! The FUSE bridge: translates FUSE requests into kernel vnode operations and replies. It
//! decides nothing about on-disk formats; inode numbers, credentials and errors are mapped
//! here and nowhere else.

use fuser::{
    AccessFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags as FuseOpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vfs_faction::{Attr, Cred, Errno, FileType, Ino, KResult, Mount, OpenFlags, Timespec, Vnode};

/// FUSE's inode number of the root directory.
const FUSE_ROOT: u64 = 1;

/// Largest read the kernel sends us and read-ahead it may do, bytes.
const MAX_READ: u32 = 1 << 20;

/// The FUSE side of one mount.
pub struct Bridge {
    mnt: Arc<Mount>,
    root: u64,
    /// How long the kernel may cache entries and attributes. While mounted we are the only
    /// writer of the image, so this can be long.
    ttl: Duration,
    handles: Mutex<HashMap<u64, Arc<Vnode>>>,
    next_fh: AtomicU64,
}

fn to_errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.code())
}

fn time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn kind(k: FileType) -> fuser::FileType {
    match k {
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
    }
}

/// Supplementary groups of process `pid`, from /proc (FUSE does not carry them).
fn proc_groups(pid: u32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

impl Bridge {
    pub fn new(mnt: Arc<Mount>) -> Bridge {
        let root = mnt.root().0;
        let ttl = if mnt.read_only() { Duration::from_secs(3600) } else { Duration::from_secs(60) };
        Bridge { mnt, root, ttl, handles: Mutex::new(HashMap::new()), next_fh: AtomicU64::new(1) }
    }

    /// FUSE and the file system number files the same way, except that FUSE's root is 1:
    /// swap the file system's root number with 1 (an involution, so it maps both ways).
    fn map(&self, ino: u64) -> u64 {
        if ino == self.root {
            FUSE_ROOT
        } else if ino == FUSE_ROOT {
            self.root
        } else {
            ino
        }
    }

    fn ino(&self, ino: INodeNo) -> Ino {
        Ino(self.map(ino.0))
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.map(a.ino.0)),
            size: a.size,
            blocks: a.blocks,
            atime: time(a.atime),
            mtime: time(a.mtime),
            ctime: time(a.ctime),
            crtime: a.crtime.map(time).unwrap_or(UNIX_EPOCH),
            kind: kind(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: a.blksize,
            flags: a.flags,
        }
    }

    /// Runs `op` with the caller's credentials. FUSE gives uid and gid but not the
    /// supplementary groups; they are read from /proc only when a check fails without them.
    fn as_caller<T>(&self, req: &Request, op: impl Fn(&Cred) -> KResult<T>) -> KResult<T> {
        let mut cred = Cred::user(req.uid(), req.gid());
        match op(&cred) {
            Err(e) if (e == Errno::EACCES || e == Errno::EPERM) && !cred.is_root() => {
                cred.groups = proc_groups(req.pid());
                if cred.groups.is_empty() {
                    Err(e)
                } else {
                    op(&cred)
                }
            }
            r => r,
        }
    }

    fn handle(&self, fh: FileHandle) -> KResult<Arc<Vnode>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_handle(&self, vn: Arc<Vnode>) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, vn);
        FileHandle(fh)
    }

    fn close_handle(&self, fh: FileHandle) {
        let vn = self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        if let Some(vn) = vn {
            self.mnt.release(vn);
        }
    }

    fn reply_xattr(reply: ReplyXattr, size: u32, data: KResult<Vec<u8>>) {
        match data {
            Err(e) => reply.error(to_errno(e)),
            Ok(d) if size == 0 => reply.size(d.len() as u32),
            Ok(d) if d.len() > size as usize => reply.error(fuser::Errno::ERANGE),
            Ok(d) => reply.data(&d),
        }
    }
}

impl Filesystem for Bridge {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_READ;
        let _ = config.add_capabilities(want & config.capabilities());
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        let handles: Vec<_> = self.handles.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, v)| v).collect();
        for vn in handles {
            self.mnt.release(vn);
        }
        if let Err(e) = self.mnt.unmount() {
            log::error!("{}: unmount: {e}", self.mnt.source());
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.as_caller(req, |c| self.mnt.lookup(c, self.ino(parent), name.as_bytes())) {
            Ok(a) => reply.entry(&self.ttl, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.mnt.forget(self.ino(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.mnt.getattr(self.ino(ino)) {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.mnt.readlink(self.ino(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let f = OpenFlags::from_raw(flags.0);
        match self.as_caller(req, |c| self.mnt.open(c, self.ino(ino), f)) {
            Ok(vn) => {
                // Unchanged while we are the only writer: keep the page cache across opens.
                let fl = if self.mnt.read_only() { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(self.new_handle(vn), fl)
            }
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.handle(fh).and_then(|vn| {
            let mut buf = vec![0u8; size.min(MAX_READ * 4) as usize];
            let n = self.mnt.read(&vn, offset, &mut buf)?;
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.close_handle(fh);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        match self.as_caller(req, |c| self.mnt.opendir(c, self.ino(ino))) {
            Ok(vn) => {
                let fl = if self.mnt.read_only() { FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(self.new_handle(vn), fl)
            }
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let r = self.handle(fh).and_then(|vn| {
            self.mnt.readdir(&vn, offset, &mut |e| {
                !reply.add(INodeNo(self.map(e.ino.0)), e.next, kind(e.kind), OsStr::from_bytes(e.name))
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let r = self.handle(fh).and_then(|vn| {
            self.mnt.readdirplus(&vn, offset, &mut |e, a| {
                !reply.add(
                    INodeNo(self.map(e.ino.0)),
                    e.next,
                    OsStr::from_bytes(e.name),
                    &self.ttl,
                    &self.attr(a),
                    Generation(0),
                )
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: FuseOpenFlags, reply: ReplyEmpty) {
        self.close_handle(fh);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.mnt.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.bsize),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.as_caller(req, |c| self.mnt.getxattr(c, self.ino(ino), name.as_bytes()));
        Self::reply_xattr(reply, size, r);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.as_caller(req, |c| self.mnt.listxattr(c, self.ino(ino))).map(|names| {
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(&n);
                out.push(0);
            }
            out
        });
        Self::reply_xattr(reply, size, r);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.as_caller(req, |c| self.mnt.access(c, self.ino(ino), mask.bits() as u32)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }
}
