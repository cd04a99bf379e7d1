//! The hypercall interface: the kernel's only door to the platform.
//!
//! Modelled on NetBSD's `rumpuser(3)`. Every call that can fail returns an [`Errno`]; calls
//! that return no `Result` never fail. A call marked *blocks* may sleep in the host (disk or
//! network I/O); the kernel holds no kernel-wide lock across such a call.
//!
//! Version: [`HYPERCALL_VERSION`]. A host implementation states the version it implements and
//! [`crate::Kernel::boot`] refuses a mismatch.
//!
//! Logging: the kernel logs through the `log` facade; the host installs the sink (env_logger
//! in `rumpfs-mount`). That facade is the log hypercall; kernel code never prints.

use crate::errno::{Errno, KResult};
use core::net::SocketAddr;
use core::time::Duration;
use std::sync::Arc;

/// Version of the hypercall interface described in this module.
pub const HYPERCALL_VERSION: u32 = 1;

/// How a block device is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Reads only; the host opens the backing object read-only (so a read-only image file,
    /// or one on read-only media, works).
    ReadOnly,
    /// Reads and writes; the host takes an exclusive lock so that no second writer shares it.
    ReadWrite,
}

/// A block device: a disk image, a partition of one, or a RAM disk.
///
/// Offsets and lengths are in bytes. Requests may have any alignment; the buffer cache always
/// issues whole, block-aligned requests. A request that reaches past [`BlockDevice::size`]
/// fails with `EIO` and transfers nothing (rumpblk does the same: invalid file systems may ask
/// for blocks beyond the end).
pub trait BlockDevice: Send + Sync {
    /// Size in bytes. Never fails, never blocks.
    fn size(&self) -> u64;

    /// True if the device was opened [`OpenMode::ReadOnly`]; writes then fail with `EROFS`.
    fn read_only(&self) -> bool;

    /// Reads exactly `buf.len()` bytes at byte offset `off`. Blocks.
    /// Fails: `EIO` (media error, short read, past the end).
    fn read_at(&self, buf: &mut [u8], off: u64) -> KResult<()>;

    /// Writes exactly `buf.len()` bytes at `off`. Blocks. The data may sit in a host cache
    /// until [`BlockDevice::flush`]. Fails: `EROFS`, `EIO`, `ENOSPC`.
    fn write_at(&self, buf: &[u8], off: u64) -> KResult<()>;

    /// Barrier: returns once every completed write is on stable storage. Blocks.
    /// Fails: `EIO`.
    fn flush(&self) -> KResult<()>;

    /// A short human name for log lines (`disk.img`, `disk.img partition 2`).
    fn describe(&self) -> String;

    /// Hint: `len` bytes at `off` will be read soon. The host may start reading them in the
    /// background (posix_fadvise WILLNEED); the kernel's sequential read-ahead uses this, so
    /// the next blocks arrive while the current ones travel up through FUSE. Never fails,
    /// never blocks for the I/O. Default: nothing.
    fn will_need(&self, _off: u64, _len: u64) {}
}

/// A connected stream socket (TCP). Used by the net faction.
pub trait Socket: Send + Sync {
    /// Sends some of `buf`; returns how many bytes went. Blocks, for at most the connection's
    /// send timeout. Fails: `ETIMEDOUT`, `ECONNRESET`, `EPIPE`-like errors as `ECONNRESET`,
    /// `ENOTCONN`.
    fn send(&self, buf: &[u8]) -> KResult<usize>;

    /// Receives up to `buf.len()` bytes, waiting at most `timeout` (`None`: forever).
    /// Returns 0 at end of stream. Blocks. Fails: `ETIMEDOUT`, `ECONNRESET`, `EINTR`.
    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> KResult<usize>;

    /// [`Socket::recv`] of up to `max` bytes appended to `buf` (which grows by what came).
    /// A host can receive straight into the vector's spare capacity, saving the zeroing of a
    /// buffer that is about to be overwritten (a megabyte per NFS READ reply).
    fn recv_append(&self, buf: &mut Vec<u8>, max: usize, timeout: Option<Duration>) -> KResult<usize> {
        let start = buf.len();
        buf.resize(start + max, 0);
        let r = self.recv(&mut buf[start..], timeout);
        buf.truncate(start + *r.as_ref().unwrap_or(&0));
        r
    }

    /// Shuts both directions down, waking any thread blocked in `recv`. Never fails.
    fn shutdown(&self);

    /// The local address (to tell a reserved port from another). Never blocks.
    fn local_addr(&self) -> KResult<SocketAddr>;
}

/// Options for [`Hypercalls::connect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions {
    /// Bind a source port below 1024 first (needs privilege on the host).
    pub reserved_port: bool,
    /// Give up connecting after this long.
    pub timeout: Option<Duration>,
    /// A send the peer takes nothing of for this long fails with `ETIMEDOUT` (what part of it
    /// went is unknown: the stream is then good only for closing). `None`: blocks forever,
    /// and a peer that stops reading (a stopped server) blocks the sender with it.
    pub send_timeout: Option<Duration>,
}

/// Wall-clock time: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// A kernel thread started by [`Hypercalls::spawn_thread`].
pub trait ThreadHandle: Send {
    /// Waits for the thread to return. Blocks.
    fn join(self: Box<Self>);
}

/// The platform, as the kernel sees it.
pub trait Hypercalls: Send + Sync {
    /// The [`HYPERCALL_VERSION`] this host implements.
    fn version(&self) -> u32 {
        HYPERCALL_VERSION
    }

    /// Opens the block device named `path` (an image file). Blocks.
    /// Fails: `ENOENT`, `EACCES`, `EBUSY` (locked by another writer), `EIO`.
    fn open_block(&self, path: &str, mode: OpenMode) -> KResult<Arc<dyn BlockDevice>>;

    /// Resolves `host` to addresses (only those the host allows). Blocks.
    /// Fails: `EHOSTUNREACH` when the name does not resolve.
    fn resolve(&self, host: &str, port: u16) -> KResult<Vec<SocketAddr>>;

    /// Connects a stream socket to `addr`. Blocks. Fails: `ECONNREFUSED`, `ETIMEDOUT`,
    /// `EACCES` (reserved port without privilege), `EHOSTUNREACH`.
    fn connect(&self, addr: SocketAddr, opts: ConnectOptions) -> KResult<Box<dyn Socket>>;

    /// Wall-clock time. Never fails, never blocks.
    fn clock_realtime(&self) -> Timespec;

    /// Monotonic time since an arbitrary start. Never fails, never blocks.
    fn clock_monotonic(&self) -> Duration;

    /// Fills `buf` with random bytes (not for keys). Never fails, never blocks.
    fn random(&self, buf: &mut [u8]);

    /// Starts a kernel thread running `f`. Fails: `EAGAIN`.
    fn spawn_thread(
        &self,
        name: &str,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> KResult<Box<dyn ThreadHandle>>;
}

/// Hypercalls that only know time, randomness and threads; block devices and sockets are
/// refused. Used by unit tests together with RAM disks handed to the kernel directly.
pub struct NoPlatform;

impl Hypercalls for NoPlatform {
    fn open_block(&self, _path: &str, _mode: OpenMode) -> KResult<Arc<dyn BlockDevice>> {
        Err(Errno::ENODEV)
    }
    fn resolve(&self, _host: &str, _port: u16) -> KResult<Vec<SocketAddr>> {
        Err(Errno::EHOSTUNREACH)
    }
    fn connect(&self, _addr: SocketAddr, _opts: ConnectOptions) -> KResult<Box<dyn Socket>> {
        Err(Errno::ECONNREFUSED)
    }
    fn clock_realtime(&self) -> Timespec {
        Timespec { sec: 0, nsec: 0 }
    }
    fn clock_monotonic(&self) -> Duration {
        Duration::ZERO
    }
    fn random(&self, buf: &mut [u8]) {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    fn spawn_thread(
        &self,
        _name: &str,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> KResult<Box<dyn ThreadHandle>> {
        // Unit tests run kernel threads inline.
        f();
        struct Done;
        impl ThreadHandle for Done {
            fn join(self: Box<Self>) {}
        }
        Ok(Box::new(Done))
    }
}
