//! File system driver components. Each knows the VFS interface and the hypercall interface of
//! `vfs-faction`, and nothing of FUSE or the host.

#![forbid(unsafe_code)]

pub mod ext2fs;
pub mod nfs;
pub mod ffs;

use std::sync::Arc;
use vfs_faction::Component;

/// Every driver component this crate provides.
pub fn all_components() -> Vec<Arc<dyn Component>> {
    vec![Arc::new(ext2fs::Ext2Component), Arc::new(ffs::FfsComponent), Arc::new(nfs::NfsComponent)]
}
