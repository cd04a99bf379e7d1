//! The rumpfs kernel (the vfs faction and the parts of the dev and net factions that are not
//! drivers): the hypercall interface, boot with components and factions, the VFS (mount table,
//! vnode cache, path lookup, credentials and permission checks), the buffer cache, and a RAM
//! disk implementation of the block-device hypercalls for tests.
//!
//! This crate touches the platform only through [`hypercall::Hypercalls`] and
//! [`hypercall::BlockDevice`]; it never uses `std::fs`, `std::net`, `libc` or `nix`.

#![forbid(unsafe_code)]

pub mod bufcache;
pub mod component;
pub mod cred;
pub mod errno;
pub mod fs;
pub mod fsck;
pub mod hypercall;
pub mod kernel;
pub mod memdev;
pub mod mount;

pub use bufcache::{BufCache, CachedDev};
pub use component::{Component, Faction, MountContext, MountError, MountOptions, MountSource, Mounted};
pub use cred::Cred;
pub use errno::{Errno, KResult};
pub use fs::{Attr, DirEntry, FileSystem, FileType, Ino, NewNode, NodeData, RenameMode, SetAttr, StatFs, Vnode, XattrFlags};
pub use fsck::{Finding, FsckOptions, FsckSink, FsckSummary, Repair};
pub use hypercall::{BlockDevice, Hypercalls, OpenMode, Timespec};
pub use kernel::{BootConfig, BootError, Kernel};
pub use mount::{Mount, OpenFlags};

#[cfg(test)]
mod tests;
