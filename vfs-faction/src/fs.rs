//! What a file system driver implements: the vnode operations, in inode numbers.
//!
//! A driver is a [`crate::Component`] that, once mounted, hands the kernel an
//! `Arc<dyn FileSystem>`. The kernel owns the vnode cache, credentials, permission checks and
//! the buffer cache; the driver owns the on-disk format. A driver trusts nothing on disk: every
//! value is checked, and a bad one is `EIO` with a log line naming the inode or block.

use crate::cred::Cred;
use crate::errno::{Errno, KResult};
use crate::hypercall::Timespec;
use core::any::Any;
use core::fmt;

/// An inode number, as the file system numbers its files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl fmt::Debug for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino {}", self.0)
    }
}
impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The type of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileType {
    /// The `S_IFMT` bits of this type.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Fifo => 0o010000,
            FileType::CharDevice => 0o020000,
            FileType::Directory => 0o040000,
            FileType::BlockDevice => 0o060000,
            FileType::Regular => 0o100000,
            FileType::Symlink => 0o120000,
            FileType::Socket => 0o140000,
        }
    }

    /// The type named by the `S_IFMT` bits of `mode`, if they name one.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o010000 => FileType::Fifo,
            0o020000 => FileType::CharDevice,
            0o040000 => FileType::Directory,
            0o060000 => FileType::BlockDevice,
            0o100000 => FileType::Regular,
            0o120000 => FileType::Symlink,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }
}

/// Attributes of a file, as stat(2) shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileType,
    /// Permission bits and setuid/setgid/sticky (`0o7777`), without the type.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Space used, in 512-byte units.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Birth time, where the format keeps one.
    pub crtime: Option<Timespec>,
    /// Device number for character and block devices (Linux `dev_t` encoding).
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
    /// File flags (BSD `st_flags` or ext2 `i_flags`), informational.
    pub flags: u32,
}

/// One directory entry handed to a readdir sink.
#[derive(Clone, Debug)]
pub struct DirEntry<'a> {
    pub ino: Ino,
    pub kind: FileType,
    pub name: &'a [u8],
    /// Cookie that resumes reading *after* this entry.
    pub next: u64,
    /// Its attributes, where the listing brought them (an NFS READDIRPLUS reply does);
    /// otherwise a readdirplus asks [`FileSystem::getattr`].
    pub attr: Option<&'a Attr>,
}

/// File system statistics (statvfs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Fundamental block size, bytes.
    pub bsize: u32,
    /// Total blocks (in `bsize` units).
    pub blocks: u64,
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u32,
}

/// Attribute changes (chmod, chown, truncate, utimens). The kernel has checked permissions
/// and computed the result (e.g. setuid bits cleared by a chown); the driver stores it and
/// sets ctime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`0o7777`).
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// New size: truncate or extend (holes).
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
}

/// What a new file is made of. The kernel has decided owner and mode (umask, setgid
/// directories); the driver allocates and links it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub kind: FileType,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number for character and block devices (Linux `dev_t` encoding).
    pub rdev: u32,
}

/// How a rename treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target if there is one (rename(2)).
    Replace,
    /// Fail with `EEXIST` if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and target, which must both exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// setxattr(2) flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrFlags {
    /// `XATTR_CREATE`: fail with `EEXIST` if the attribute exists.
    pub create: bool,
    /// `XATTR_REPLACE`: fail with `ENODATA` if it does not.
    pub replace: bool,
}

/// A driver's in-memory inode, kept in the vnode (NetBSD's `v_data`).
pub type NodeData = Box<dyn Any + Send + Sync>;

/// Maximum length of one name component, bytes.
pub const NAME_MAX: usize = 255;

/// The vnode operations a mounted file system provides.
///
/// Operations take the vnode whose `data` the driver produced in [`FileSystem::vget`]; the
/// kernel has already checked permissions. Operations a driver does not implement default to
/// `EOPNOTSUPP` (writes: `EROFS`), so a driver grows one operation at a time.
pub trait FileSystem: Send + Sync {
    /// Inode number of the root directory.
    fn root(&self) -> Ino;

    /// Reads and validates inode `ino`. Fails: `EIO` (corrupt), `ENOENT` (free inode),
    /// `ESTALE` (out of range).
    fn vget(&self, ino: Ino) -> KResult<NodeData>;

    /// Attributes of the file.
    fn getattr(&self, vn: &Vnode) -> KResult<Attr>;

    /// Finds `name` (one component, never `.`/`..` handling beyond what the directory holds)
    /// in directory `dir`. Fails: `ENOENT`, `ENOTDIR`, `EIO`.
    fn lookup(&self, dir: &Vnode, name: &[u8]) -> KResult<Ino>;

    /// Lists directory entries starting at `cookie` (0: the start). Calls `sink` for each entry
    /// in order until it returns `false` (reply full) or the directory ends.
    fn readdir(
        &self,
        dir: &Vnode,
        cookie: u64,
        sink: &mut dyn FnMut(&DirEntry<'_>) -> bool,
    ) -> KResult<()>;

    /// Reads up to `buf.len()` bytes at `off`; returns the count (0 at or past EOF).
    /// `readahead` is how many bytes past this request the kernel expects to be read next
    /// (0 when access is not sequential); the driver may prefetch them.
    fn read(&self, vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize>;

    /// [`FileSystem::read`] of up to `len` bytes that lends them to `out` from where the
    /// driver holds them (a network reply, say) instead of copying them into a buffer.
    /// `None` when the driver cannot for this request (then `out` was not called and the
    /// caller reads into a buffer); otherwise `out` was called once, unless with an error.
    fn read_lent(&self, _vn: &Vnode, _off: u64, _len: usize, _readahead: u64, _out: &mut dyn FnMut(&[u8])) -> Option<KResult<()>> {
        None
    }

    /// Target of a symbolic link.
    fn readlink(&self, vn: &Vnode) -> KResult<Vec<u8>>;

    /// Value of extended attribute `name` (full name, e.g. `user.comment`). Fails: `ENODATA`.
    fn getxattr(&self, _vn: &Vnode, _name: &[u8]) -> KResult<Vec<u8>> {
        Err(Errno::ENODATA)
    }

    /// Names of all extended attributes (full names).
    fn listxattr(&self, _vn: &Vnode) -> KResult<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// File system statistics.
    fn statfs(&self) -> KResult<StatFs>;

    // Write operations. The kernel has checked permissions, name length and the POSIX rules
    // that do not depend on the format (sticky directories, a directory moved into itself,
    // types of rename source and target); the driver checks what needs the disk
    // (`EEXIST`, `ENOTEMPTY`, `ENOSPC`, `EMLINK`) and keeps times (mtime/ctime) current.

    /// Creates `name` in `dir`: a regular file, directory, device, fifo or socket (not a
    /// symlink). Returns its inode number.
    fn create(&self, _dir: &Vnode, _name: &[u8], _node: &NewNode) -> KResult<Ino> {
        Err(Errno::EROFS)
    }

    /// Creates a symbolic link `name` in `dir` pointing at `target`.
    fn symlink(&self, _dir: &Vnode, _name: &[u8], _target: &[u8], _node: &NewNode) -> KResult<Ino> {
        Err(Errno::EROFS)
    }

    /// Adds a hard link `name` in `dir` to the (non-directory) file `vn`.
    fn link(&self, _vn: &Vnode, _dir: &Vnode, _name: &[u8]) -> KResult<()> {
        Err(Errno::EROFS)
    }

    /// Removes the entry `name` (the non-directory `vn`) from `dir` and drops one link. The
    /// file itself goes when its last link is gone and the kernel calls
    /// [`FileSystem::inactive`].
    fn unlink(&self, _dir: &Vnode, _name: &[u8], _vn: &Vnode) -> KResult<()> {
        Err(Errno::EROFS)
    }

    /// Removes the empty directory `vn`, entry `name` of `dir`. Fails: `ENOTEMPTY`.
    fn rmdir(&self, _dir: &Vnode, _name: &[u8], _vn: &Vnode) -> KResult<()> {
        Err(Errno::EROFS)
    }

    /// Renames `sdir/sname` (the file `svn`) to `ddir/dname` (the file `dvn`, if present).
    /// For a directory moved to another parent the driver fixes its `..`.
    #[allow(clippy::too_many_arguments)]
    fn rename(
        &self,
        _sdir: &Vnode,
        _sname: &[u8],
        _svn: &Vnode,
        _ddir: &Vnode,
        _dname: &[u8],
        _dvn: Option<&Vnode>,
        _mode: RenameMode,
    ) -> KResult<()> {
        Err(Errno::EROFS)
    }

    /// Writes `data` at `off`, extending the file as needed; returns the count written.
    fn write(&self, _vn: &Vnode, _off: u64, _data: &[u8]) -> KResult<usize> {
        Err(Errno::EROFS)
    }

    /// Changes attributes; returns the new ones.
    fn setattr(&self, _vn: &Vnode, _set: &SetAttr) -> KResult<Attr> {
        Err(Errno::EROFS)
    }

    /// Sets extended attribute `name` (full name) to `value`. The default: a file system
    /// that keeps none (`EOPNOTSUPP`; a read-only mount has answered `EROFS` before this).
    fn setxattr(&self, _vn: &Vnode, _name: &[u8], _value: &[u8], _flags: XattrFlags) -> KResult<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Removes extended attribute `name`. Fails: `ENODATA`. The default: as for `setxattr`.
    fn removexattr(&self, _vn: &Vnode, _name: &[u8]) -> KResult<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Returns once the file's data (and with `!datasync` its metadata) is on stable
    /// storage. Blocks.
    fn fsync(&self, _vn: &Vnode, _datasync: bool) -> KResult<()> {
        self.sync()
    }

    /// fallocate(2) with Linux `mode` bits. Default: `EOPNOTSUPP`.
    fn fallocate(&self, _vn: &Vnode, _mode: u32, _off: u64, _len: u64) -> KResult<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// The vnode has left the cache: no lookup, handle or walk refers to it. A driver frees
    /// a file whose last link is gone here (NetBSD's `VOP_INACTIVE`).
    fn inactive(&self, _vn: &Vnode) -> KResult<()> {
        Ok(())
    }

    /// Writes every dirty buffer and the superblock. Blocks.
    fn sync(&self) -> KResult<()> {
        Ok(())
    }

    /// Called once when the mount goes away, after the last operation: flush, mark clean.
    fn unmount(&self) -> KResult<()> {
        self.sync()
    }

    // Network file systems. Their server enforces permissions per user and other clients may
    // change the files; these default methods let such a driver act for the caller and tell
    // front ends how long to cache. Block-device drivers keep the defaults.

    /// A view of this file system whose operations act for `cred` (the NFS client sends it as
    /// AUTH_SYS with every call), or `None` when the driver does not care who asks. The kernel
    /// calls it for each operation that carries credentials and then calls the operation on
    /// the view; the view shares everything (vnode data, caches) with `self`.
    fn for_cred(&self, _cred: &Cred) -> Option<Box<dyn FileSystem + '_>> {
        None
    }

    /// access(2) as the file system decides it (NFS: the ACCESS call, which also revalidates
    /// the attributes, for close-to-open consistency), or `None` to let the kernel check the
    /// mode bits. Called on the view of [`FileSystem::for_cred`]. `mask`: R_OK, W_OK, X_OK.
    fn access(&self, _vn: &Vnode, _mask: u32) -> Option<KResult<()>> {
        None
    }

    /// A file descriptor on the file is being closed (FUSE flush). NFS writes back and commits
    /// here, so that a write error reaches close(2) and others see the data after it.
    /// `Err(ENOSYS)` (the default): closing needs nothing from this file system, now or later,
    /// so a front end may stop asking (FUSE then sends no more FLUSH requests: one round trip
    /// less per close(2)).
    fn flush(&self, _vn: &Vnode) -> KResult<()> {
        Err(Errno::ENOSYS)
    }

    /// How long a front end may cache names and attributes (and whether file contents may be
    /// kept across opens: only with `None`). `None`: as long as the front end likes, because
    /// this mount is the only writer. Network file systems return a short time.
    fn cache_ttl(&self) -> Option<core::time::Duration> {
        None
    }
}

/// A vnode: one file of one mount, cached by the kernel while FUSE (or an open file, or a
/// path walk) refers to it.
pub struct Vnode {
    /// Inode number within its file system.
    pub ino: Ino,
    /// The driver's in-memory inode.
    pub data: NodeData,
    pub(crate) nlookup: std::sync::atomic::AtomicU64,
    pub(crate) last_read_end: std::sync::atomic::AtomicU64,
    pub(crate) ra_window: std::sync::atomic::AtomicU64,
    pub(crate) opens: std::sync::atomic::AtomicU32,
}

impl Vnode {
    /// Wraps driver data in a fresh vnode (lookup count 0).
    pub fn new(ino: Ino, data: NodeData) -> Vnode {
        Vnode {
            ino,
            data,
            nlookup: Default::default(),
            last_read_end: Default::default(),
            ra_window: Default::default(),
            opens: Default::default(),
        }
    }

    /// How many open file descriptions (FUSE file handles) refer to this vnode: a network
    /// file system keeps an unlinked file that is still open (NFS's "silly rename").
    pub fn open_count(&self) -> u32 {
        self.opens.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The driver's data, as the type the driver stored. A mismatch (a bug) is `EIO`.
    pub fn data<T: 'static>(&self) -> KResult<&T> {
        self.data.downcast_ref::<T>().ok_or_else(|| {
            log::error!("vnode {}: driver data of unexpected type", self.ino);
            Errno::EIO
        })
    }

    /// How many FUSE lookups currently refer to this vnode.
    pub fn lookup_count(&self) -> u64 {
        self.nlookup.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl fmt::Debug for Vnode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vnode").field("ino", &self.ino).field("nlookup", &self.lookup_count()).finish()
    }
}
