//! The FUSE bridge: translates FUSE requests into kernel vnode operations and replies. It
//! decides nothing about on-disk formats; inode numbers, credentials and errors are mapped
//! here and nowhere else.

use fuser::{
    AccessFlags, BsdFileFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags as FuseOpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use std::path::Path;
use vfs_faction::mount::TimeSet;
use vfs_faction::{RenameMode, XattrFlags};
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
pub(crate) const MAX_READ: u32 = 1 << 20;

thread_local! {
    /// The read buffer of this FUSE worker thread.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The FUSE side of one mount.
pub struct Bridge {
    mnt: Arc<Mount>,
    root: u64,
    /// How long the kernel may cache entries and attributes. While mounted we are the only
    /// writer of the image, so this can be long.
    ttl: Duration,
    /// File contents may stay in the kernel's page cache across opens (we are the only
    /// writer); not for network file systems, which others change.
    keep_cache: bool,
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

fn timeset(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => TimeSet::At(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(e) => {
                // fuser (0.18, time.rs) turns the kernel's (sec < 0, nsec) into
                // UNIX_EPOCH - (|sec| s + nsec ns); undo exactly that.
                let d = e.duration();
                Timespec { sec: -(d.as_secs() as i64), nsec: d.subsec_nanos() }
            }
        }),
    }
}

/// Attributes of a directory entry whose inode could not be read: only its number and type.
fn nameless_attr(ino: INodeNo, k: FileType) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: kind(k),
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 512,
        flags: 0,
    }
}

/// The file type named by the `S_IFMT` bits of a mode FUSE sends.
fn mode_kind(mode: u32) -> KResult<FileType> {
    FileType::from_mode(mode).ok_or(Errno::EINVAL)
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
        let (ttl, keep_cache) = match mnt.cache_ttl() {
            Some(t) => (t, false),
            None => (if mnt.read_only() { Duration::from_secs(3600) } else { Duration::from_secs(60) }, true),
        };
        Bridge { mnt, root, ttl, keep_cache, handles: Mutex::new(HashMap::new()), next_fh: AtomicU64::new(1) }
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
            self.mnt.close(vn);
        }
    }

    /// How FUSE is to treat a file opened with `flags`. An image mount keeps the kernel's page
    /// cache across opens: every change goes through it. A network mount does not (others
    /// change the files), and there a file opened only for writing bypasses the page cache
    /// (direct I/O): nothing reads or maps it through that descriptor, the kernel drops the
    /// cached pages such a write overlaps, and the data goes from the writer's buffer to the
    /// driver without first being copied into pages nobody will read.
    fn open_flags(&self, flags: i32) -> FopenFlags {
        if self.keep_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else if flags & libc::O_ACCMODE == libc::O_WRONLY {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    fn entry(&self, reply: ReplyEntry, r: KResult<Attr>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn empty(reply: ReplyEmpty, r: KResult<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
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
        // READDIRPLUS_AUTO: the kernel asks for attributes with a listing only when it saw
        // lookups follow the last one (a `find` that stats nothing gets plain listings, cheap
        // on a local image). A network mount always takes them: every stat it saves is a
        // round trip to the server, and the driver gets them in the same READDIRPLUS anyway.
        let auto = if self.keep_cache { InitFlags::FUSE_READDIRPLUS_AUTO } else { InitFlags::empty() };
        let want = InitFlags::FUSE_DO_READDIRPLUS
            | auto
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_READ
            // We clear setuid/setgid on write, truncate and chown ourselves (vfs-faction's
            // write and setattr do, by the kernel's rules), so the kernel need not refresh the
            // attributes (a GETATTR) before each chown, nor ask for security.capability
            // before every write: the inode is marked "no privileges" after the first.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let _ = config.add_capabilities(want & config.capabilities());
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        let handles: Vec<_> = self.handles.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, v)| v).collect();
        for vn in handles {
            self.mnt.close(vn);
        }
        if let Err(e) = self.mnt.unmount() {
            log::error!("{}: unmount: {e}", self.mnt.source());
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        crate::poll::note_request();
        match self.as_caller(req, |c| self.mnt.lookup(c, self.ino(parent), name.as_bytes())) {
            Ok(a) => reply.entry(&self.ttl, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        crate::poll::note_request();
        self.mnt.forget(self.ino(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        crate::poll::note_request();
        match self.mnt.getattr(self.ino(ino)) {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        crate::poll::note_request();
        match self.mnt.readlink(self.ino(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        crate::poll::note_request();
        let f = OpenFlags::from_raw(flags.0);
        match self.as_caller(req, |c| self.mnt.open(c, self.ino(ino), f)) {
            // Every change goes through this mount, and FUSE keeps its page cache in step with
            // the writes it sends us: keep the cache across opens.
            Ok(vn) => reply.opened(self.new_handle(vn), self.open_flags(flags.0)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        crate::poll::note_request();
        let vn = match self.handle(fh) {
            Ok(vn) => vn,
            Err(e) => return reply.error(to_errno(e)),
        };
        // Each worker thread keeps its read buffer: no allocation and no zeroing of up to a
        // megabyte per request.
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let want = size.min(MAX_READ * 4) as usize;
            if buf.len() < want {
                buf.resize(want, 0);
            }
            // A driver that can lends the bytes from where they arrived (an NFS reply).
            let mut reply = Some(reply);
            let r = self.mnt.read_to(&Cred::user(req.uid(), req.gid()), &vn, offset, &mut buf[..want], &mut |d| {
                if let Some(reply) = reply.take() {
                    reply.data(d);
                }
            });
            match (r, reply) {
                (Err(e), Some(reply)) => reply.error(to_errno(e)),
                (Ok(()), Some(reply)) => reply.data(&[]),
                (_, None) => {}
            }
        });
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
        crate::poll::note_request();
        self.close_handle(fh);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        crate::poll::note_request();
        match self.as_caller(req, |c| self.mnt.opendir(c, self.ino(ino))) {
            Ok(vn) => {
                let fl = if self.mnt.read_only() && self.keep_cache { FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(self.new_handle(vn), fl)
            }
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readdir(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        crate::poll::note_request();
        let r = self.handle(fh).and_then(|vn| {
            self.mnt.readdir_as(&Cred::user(req.uid(), req.gid()), &vn, offset, &mut |e| {
                !reply.add(INodeNo(self.map(e.ino.0)), e.next, kind(e.kind), OsStr::from_bytes(e.name))
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readdirplus(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        crate::poll::note_request();
        let r = self.handle(fh).and_then(|vn| {
            self.mnt.readdirplus_as(&Cred::user(req.uid(), req.gid()), &vn, offset, &mut |e, a| match a {
                Some(a) => !reply.add(
                    INodeNo(self.map(e.ino.0)),
                    e.next,
                    OsStr::from_bytes(e.name),
                    &self.ttl,
                    &self.attr(a),
                    Generation(0),
                ),
                // Listed with nothing but its type, valid for no time at all: the name shows,
                // and any stat of it asks us again and gets the error.
                None => !reply.add(
                    INodeNo(self.map(e.ino.0)),
                    e.next,
                    OsStr::from_bytes(e.name),
                    &Duration::ZERO,
                    &nameless_attr(INodeNo(self.map(e.ino.0)), e.kind),
                    Generation(0),
                ),
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: FuseOpenFlags, reply: ReplyEmpty) {
        crate::poll::note_request();
        self.close_handle(fh);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        crate::poll::note_request();
        match self.mnt.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.bsize),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::poll::note_request();
        let r = self.as_caller(req, |c| self.mnt.getxattr(c, self.ino(ino), name.as_bytes()));
        Self::reply_xattr(reply, size, r);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::poll::note_request();
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

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, rdev: u32, reply: ReplyEntry) {
        crate::poll::note_request();
        let r = mode_kind(mode)
            .and_then(|k| self.as_caller(req, |c| self.mnt.mknod(c, self.ino(parent), name.as_bytes(), k, mode, rdev)));
        self.entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        crate::poll::note_request();
        let r = self.as_caller(req, |c| {
            self.mnt.mknod(c, self.ino(parent), name.as_bytes(), FileType::Directory, mode, 0)
        });
        self.entry(reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        crate::poll::note_request();
        let kind = mode_kind(mode).unwrap_or(FileType::Regular);
        let r = self.as_caller(req, |c| {
            let a = self.mnt.mknod(c, self.ino(parent), name.as_bytes(), kind, mode, 0)?;
            // The creator may write a file its new mode does not let it open (open(2)).
            match self.mnt.open(&Cred::root(), a.ino, OpenFlags::from_raw(flags)) {
                Ok(vn) => Ok((a, vn)),
                Err(e) => {
                    self.mnt.forget(a.ino, 1);
                    Err(e)
                }
            }
        });
        match r {
            Ok((a, vn)) => {
                let fh = self.new_handle(vn);
                reply.created(&self.ttl, &self.attr(&a), Generation(0), fh, self.open_flags(flags))
            }
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        crate::poll::note_request();
        let r = self.as_caller(req, |c| {
            self.mnt.symlink(c, self.ino(parent), link_name.as_bytes(), target.as_os_str().as_bytes())
        });
        self.entry(reply, r);
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        crate::poll::note_request();
        let r = self.as_caller(req, |c| self.mnt.link(c, self.ino(ino), self.ino(newparent), newname.as_bytes()));
        self.entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        crate::poll::note_request();
        Self::empty(reply, self.as_caller(req, |c| self.mnt.unlink(c, self.ino(parent), name.as_bytes())));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        crate::poll::note_request();
        Self::empty(reply, self.as_caller(req, |c| self.mnt.rmdir(c, self.ino(parent), name.as_bytes())));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        crate::poll::note_request();
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(fuser::Errno::EINVAL);
        }
        let r = self.as_caller(req, |c| {
            self.mnt.rename(c, self.ino(parent), name.as_bytes(), self.ino(newparent), newname.as_bytes(), mode)
        });
        Self::empty(reply, r);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        crate::poll::note_request();
        let r = self.as_caller(req, |c| {
            self.mnt.setattr(
                c,
                self.ino(ino),
                mode.map(|m| m & 0o7777),
                uid,
                gid,
                size,
                atime.map(timeset),
                mtime.map(timeset),
                fh.is_some(),
            )
        });
        match r {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        crate::poll::note_request();
        let cred = Cred::user(req.uid(), req.gid());
        match self.handle(fh).and_then(|vn| self.mnt.write(&cred, &vn, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        crate::poll::note_request();
        // close(2): a network file system writes back here (close-to-open consistency).
        let cred = Cred::user(req.uid(), req.gid());
        Self::empty(reply, self.handle(fh).and_then(|vn| self.mnt.flush(&cred, &vn)));
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        crate::poll::note_request();
        Self::empty(reply, self.handle(fh).and_then(|vn| self.mnt.fsync(&vn, datasync)));
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        crate::poll::note_request();
        Self::empty(reply, self.handle(fh).and_then(|vn| self.mnt.fsync(&vn, datasync)));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        crate::poll::note_request();
        Self::empty(reply, self.handle(fh).and_then(|vn| self.mnt.fallocate(&vn, mode as u32, offset, length)));
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        crate::poll::note_request();
        if position != 0 {
            return reply.error(fuser::Errno::EINVAL);
        }
        let xf = XattrFlags { create: flags & 1 != 0, replace: flags & 2 != 0 };
        let r = self.as_caller(req, |c| self.mnt.setxattr(c, self.ino(ino), name.as_bytes(), value, xf));
        Self::empty(reply, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        crate::poll::note_request();
        Self::empty(reply, self.as_caller(req, |c| self.mnt.removexattr(c, self.ino(ino), name.as_bytes())));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        crate::poll::note_request();
        match self.as_caller(req, |c| self.mnt.access(c, self.ino(ino), mask.bits() as u32)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }
}
