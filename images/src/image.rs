//! Image files (and host block devices) as block devices, after NetBSD's `rumpblk`.

use crate::error::ImageError;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfs_faction::{BlockDevice, Errno, KResult, OpenMode};

/// An open disk image: a regular file or a host block device, locked with `flock(2)` for as
/// long as it is open (the lock goes with the descriptor when the last `Arc` is dropped).
///
/// I/O is positional (`pread`/`pwrite`), so any number of threads may use it at once. Every
/// request is checked against the size taken at open time: a request reaching past the end
/// fails with `EIO` and transfers nothing.
pub struct ImageFile {
    file: File,
    path: PathBuf,
    size: u64,
    mode: OpenMode,
    block_device: bool,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("mode", &self.mode)
            .field("block_device", &self.block_device)
            .finish()
    }
}

/// Errno of a host I/O error (`EIO` when the host gave none).
fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_code).unwrap_or(Errno::EIO)
}

/// `PATH: strerror` for a failed host call on the image.
fn host_error(path: &Path, e: &io::Error) -> ImageError {
    let errno = errno_of(e);
    let text = if errno.name() == "E?" {
        // A number the kernel's table does not know: let the host describe it.
        e.to_string()
    } else {
        errno.description().to_string()
    };
    ImageError::new(errno, format!("{}: {}", path.display(), text))
}

/// Opens the image at `path`.
///
/// [`OpenMode::ReadOnly`] opens it `O_RDONLY` (so a read-only file or medium works) and takes
/// a shared lock; [`OpenMode::ReadWrite`] opens it read-write and takes an exclusive lock (and
/// a host block device is also opened `O_EXCL`, which fails while the host has it mounted).
/// Locks are taken without waiting.
///
/// Fails: `ENOENT`, `EACCES`, `EISDIR` (a directory), `ENODEV` (neither a regular file nor a
/// block device), `EBUSY` (locked by another process, or in use by the host), `EIO`.
pub fn open_image(path: &Path, mode: OpenMode) -> Result<Arc<ImageFile>, ImageError> {
    let shown = path.display();
    let write = mode == OpenMode::ReadWrite;

    // Look first, so that a directory is EISDIR in both modes and a block device can be
    // opened exclusively.
    let meta = std::fs::metadata(path).map_err(|e| host_error(path, &e))?;
    check_type(path, &meta.file_type())?;
    let block_device = meta.file_type().is_block_device();

    let mut flags = libc::O_CLOEXEC;
    if write && block_device {
        // Linux: O_EXCL without O_CREAT on a block device is an exclusive open; it fails with
        // EBUSY while the device is mounted or claimed by another exclusive opener.
        flags |= libc::O_EXCL;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if block_device && errno_of(&e) == Errno::EBUSY {
                ImageError::new(
                    Errno::EBUSY,
                    format!("{shown} is in use (mounted, or opened exclusively by another program)"),
                )
            } else {
                host_error(path, &e)
            }
        })?;

    // The object may have been replaced between the look and the open: check what we opened.
    let meta = file.metadata().map_err(|e| host_error(path, &e))?;
    check_type(path, &meta.file_type())?;
    let block_device = meta.file_type().is_block_device();

    lock(&file, path, write)?;

    let size = if block_device {
        // The size of a block device is where its end is (same as BLKGETSIZE64). The file
        // position is never used for I/O, so moving it is harmless.
        (&file).seek(SeekFrom::End(0)).map_err(|e| host_error(path, &e))?
    } else {
        meta.len()
    };

    if !block_device {
        // Cold sequential reads (fsck, a first walk of the tree) benefit from a larger
        // read-ahead. Advice only: its result does not matter.
        // SAFETY: the descriptor is open and owned by `file` for the whole call; the call
        // only passes integers.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }

    log::debug!(
        "{shown}: opened {} ({} bytes{})",
        if write { "read-write" } else { "read-only" },
        size,
        if block_device { ", block device" } else { "" }
    );
    Ok(Arc::new(ImageFile { file, path: path.to_path_buf(), size, mode, block_device }))
}

/// Accepts regular files and block devices.
fn check_type(path: &Path, ft: &std::fs::FileType) -> Result<(), ImageError> {
    if ft.is_dir() {
        return Err(ImageError::new(
            Errno::EISDIR,
            format!("{}: {}", path.display(), Errno::EISDIR.description()),
        ));
    }
    if !ft.is_file() && !ft.is_block_device() {
        return Err(ImageError::new(
            Errno::ENODEV,
            format!("{}: not a regular file or block device", path.display()),
        ));
    }
    Ok(())
}

/// Takes the `flock(2)` lock for the mode, without waiting.
fn lock(file: &File, path: &Path, exclusive: bool) -> Result<(), ImageError> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    loop {
        // SAFETY: the descriptor is open and owned by `file` for the whole call; flock only
        // takes integers.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(ImageError::new(
                    Errno::EBUSY,
                    format!("{} is in use by another process (locked)", path.display()),
                ))
            }
            Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                // Some network file systems cannot lock. Refusing would make their images
                // unusable; say what is not guaranteed instead.
                log::warn!(
                    "{}: cannot lock the image ({e}); another writer would not be stopped",
                    path.display()
                );
                return Ok(());
            }
            _ => return Err(host_error(path, &e)),
        }
    }
}

impl ImageFile {
    /// The path the image was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mode it was opened in.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    /// True for a host block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// `EIO` unless `off..off+len` lies within the image.
    fn check_range(&self, what: &str, off: u64, len: usize) -> KResult<()> {
        let end = u64::try_from(len).ok().and_then(|len| off.checked_add(len));
        match end {
            Some(end) if end <= self.size => Ok(()),
            _ => {
                log::debug!(
                    "{}: {what} of {len} bytes at {off} reaches past the end ({} bytes)",
                    self.path.display(),
                    self.size
                );
                Err(Errno::EIO)
            }
        }
    }
}

impl BlockDevice for ImageFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.mode == OpenMode::ReadOnly
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> KResult<()> {
        self.check_range("read", off, buf.len())?;
        self.file.read_exact_at(buf, off).map_err(|e| {
            log::error!(
                "{}: read of {} bytes at {off} failed: {e}",
                self.path.display(),
                buf.len()
            );
            Errno::EIO
        })
    }

    fn write_at(&self, buf: &[u8], off: u64) -> KResult<()> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        self.check_range("write", off, buf.len())?;
        self.file.write_all_at(buf, off).map_err(|e| {
            log::error!(
                "{}: write of {} bytes at {off} failed: {e}",
                self.path.display(),
                buf.len()
            );
            match errno_of(&e) {
                // A sparse image on a full host file system.
                Errno::ENOSPC | Errno::EDQUOT => Errno::ENOSPC,
                _ => Errno::EIO,
            }
        })
    }

    fn flush(&self) -> KResult<()> {
        if self.read_only() {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            log::error!("{}: fdatasync failed: {e}", self.path.display());
            Errno::EIO
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn will_need(&self, off: u64, len: u64) {
        let len = len.min(self.size.saturating_sub(off));
        if len == 0 {
            return;
        }
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else { return };
        // SAFETY: posix_fadvise only reads its arguments; the descriptor is ours and open.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), o, l, libc::POSIX_FADV_WILLNEED);
        }
    }
}
