//! Components and factions: what a kernel is booted with.
//!
//! As in rump kernels, a driver is a component that can be linked into any kernel; it
//! declares the factions it needs (block-device drivers: vfs + dev; the NFS client: vfs +
//! net). A kernel boots with a set of factions and components, and booting a component whose
//! faction is missing is an error that names both.

use crate::bufcache::BufCache;
use crate::errno::Errno;
use crate::fs::FileSystem;
use crate::hypercall::{BlockDevice, Hypercalls};
use core::fmt;
use std::sync::Arc;

/// A faction: a part of the kernel that components build on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Faction {
    /// File systems: mount table, vnodes, path lookup, credentials.
    Vfs,
    /// Block devices and the buffer cache.
    Dev,
    /// Sockets.
    Net,
}

impl Faction {
    /// Lower-case name (`vfs`, `dev`, `net`).
    pub fn name(self) -> &'static str {
        match self {
            Faction::Vfs => "vfs",
            Faction::Dev => "dev",
            Faction::Net => "net",
        }
    }
}

impl fmt::Display for Faction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a file system comes from.
#[derive(Clone)]
pub enum MountSource {
    /// A block device (an image or one of its partitions).
    Block(Arc<dyn BlockDevice>),
    /// A network file system: `host` and the exported `path`.
    Network { host: String, path: String },
}

/// Options a driver sees at mount time.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Mount read-only.
    pub read_only: bool,
    /// The user asked for read-write explicitly (`-o rw`): refuse rather than fall back.
    pub explicit_rw: bool,
    /// Driver-specific `key[=value]` options the kernel does not interpret.
    pub extra: Vec<(String, Option<String>)>,
}

impl MountOptions {
    /// The value of driver option `key`, if given (`Some(None)` for a flag).
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.extra.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_deref())
    }
}

/// A mount that failed: an errno and a one-line message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountError {
    pub errno: Errno,
    pub message: String,
}

impl MountError {
    /// A mount error with a message.
    pub fn new(errno: Errno, message: impl Into<String>) -> MountError {
        MountError { errno, message: message.into() }
    }
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MountError {}

impl From<Errno> for MountError {
    fn from(e: Errno) -> MountError {
        MountError { errno: e, message: e.description().to_string() }
    }
}

/// What a component gets from the kernel when it mounts.
pub struct MountContext {
    pub hyper: Arc<dyn Hypercalls>,
    /// The shared buffer cache (present when the dev faction is booted).
    pub cache: Option<Arc<BufCache>>,
}

/// The result of a successful mount.
pub struct Mounted {
    pub fs: Arc<dyn FileSystem>,
    /// The mount is read-only (asked for, or forced by the driver).
    pub read_only: bool,
    /// Warnings to show the user (e.g. "mounted read-only: feature X cannot be written").
    pub warnings: Vec<String>,
}

/// A file system driver component.
pub trait Component: Send + Sync {
    /// Component name (`ext2fs`, `ffs`, `nfs`).
    fn name(&self) -> &'static str;

    /// One line about it, for `--list-components`.
    fn description(&self) -> &'static str;

    /// Factions it needs.
    fn factions(&self) -> &'static [Faction];

    /// File system type names it serves (`-t` values), e.g. `["ext2", "ext3", "ext4"]`.
    fn fs_types(&self) -> &'static [&'static str];

    /// Looks at a block device: if it holds a file system of ours, which type. Reads a few
    /// sectors; never fails (a read error is "not ours").
    fn probe(&self, _dev: &dyn BlockDevice) -> Option<&'static str> {
        None
    }

    /// Checks (and with `opts.repair` repairs) the file system on `dev` without mounting it.
    /// Default: `EOPNOTSUPP`, "no checker for this file system".
    fn fsck(
        &self,
        _ctx: &MountContext,
        fstype: &str,
        _dev: Arc<dyn BlockDevice>,
        _opts: &crate::fsck::FsckOptions,
        _sink: &mut dyn crate::fsck::FsckSink,
    ) -> Result<crate::fsck::FsckSummary, MountError> {
        Err(MountError::new(Errno::EOPNOTSUPP, format!("there is no checker for {fstype} yet")))
    }

    /// Mounts `source` as `fstype` (one of [`Component::fs_types`]).
    fn mount(
        &self,
        ctx: &MountContext,
        fstype: &str,
        source: MountSource,
        opts: &MountOptions,
    ) -> Result<Mounted, MountError>;
}
