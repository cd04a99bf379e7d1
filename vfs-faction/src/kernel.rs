//! Boot, the component registry and the mount table.

use crate::bufcache::BufCache;
use crate::component::{Component, Faction, MountContext, MountError, MountOptions, MountSource};
use crate::errno::Errno;
use crate::hypercall::{Hypercalls, HYPERCALL_VERSION};
use crate::mount::Mount;
use core::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Default buffer cache size, bytes (`-o cache=64M`).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// What to boot.
pub struct BootConfig {
    pub hyper: Arc<dyn Hypercalls>,
    pub factions: Vec<Faction>,
    pub components: Vec<Arc<dyn Component>>,
    /// Buffer cache limit, bytes (used when the dev faction is booted).
    pub cache_bytes: usize,
}

/// Why a kernel did not boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootError {
    /// A component needs a faction the kernel was not booted with.
    MissingFaction { component: &'static str, faction: Faction },
    /// Two components claim the same file system type.
    DuplicateType { fstype: &'static str, first: &'static str, second: &'static str },
    /// The host implements another version of the hypercall interface.
    HypercallVersion { host: u32, kernel: u32 },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::MissingFaction { component, faction } => write!(
                f,
                "component {component} needs the {faction} faction, which this kernel was not booted with"
            ),
            BootError::DuplicateType { fstype, first, second } => {
                write!(f, "file system type {fstype} is claimed by both {first} and {second}")
            }
            BootError::HypercallVersion { host, kernel } => write!(
                f,
                "the host implements hypercall interface version {host}, the kernel needs {kernel}"
            ),
        }
    }
}

impl std::error::Error for BootError {}

/// A booted rump kernel.
pub struct Kernel {
    hyper: Arc<dyn Hypercalls>,
    factions: Vec<Faction>,
    components: Vec<Arc<dyn Component>>,
    cache: Option<Arc<BufCache>>,
    mounts: Mutex<Vec<Weak<Mount>>>,
    next_mount: AtomicU32,
}

impl Kernel {
    /// Boots a kernel with the given factions and components.
    pub fn boot(cfg: BootConfig) -> Result<Arc<Kernel>, BootError> {
        let host = cfg.hyper.version();
        if host != HYPERCALL_VERSION {
            return Err(BootError::HypercallVersion { host, kernel: HYPERCALL_VERSION });
        }
        for c in &cfg.components {
            for f in c.factions() {
                if !cfg.factions.contains(f) {
                    return Err(BootError::MissingFaction { component: c.name(), faction: *f });
                }
            }
        }
        for (i, a) in cfg.components.iter().enumerate() {
            for b in &cfg.components[i + 1..] {
                if let Some(t) = a.fs_types().iter().find(|t| b.fs_types().contains(t)) {
                    return Err(BootError::DuplicateType { fstype: t, first: a.name(), second: b.name() });
                }
            }
        }
        let cache = cfg.factions.contains(&Faction::Dev).then(|| BufCache::new(cfg.cache_bytes));
        log::debug!(
            "kernel booted: factions [{}], components [{}]",
            cfg.factions.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
            cfg.components.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
        );
        Ok(Arc::new(Kernel {
            hyper: cfg.hyper,
            factions: cfg.factions,
            components: cfg.components,
            cache,
            mounts: Mutex::new(Vec::new()),
            next_mount: AtomicU32::new(1),
        }))
    }

    /// The hypercalls this kernel runs on.
    pub fn hypercalls(&self) -> &Arc<dyn Hypercalls> {
        &self.hyper
    }

    /// The factions booted.
    pub fn factions(&self) -> &[Faction] {
        &self.factions
    }

    /// The components loaded.
    pub fn components(&self) -> &[Arc<dyn Component>] {
        &self.components
    }

    /// The buffer cache (when the dev faction is booted).
    pub fn buffer_cache(&self) -> Option<&Arc<BufCache>> {
        self.cache.as_ref()
    }

    /// Which loaded component, and which of its types, recognises the block device.
    pub fn probe(&self, dev: &dyn crate::hypercall::BlockDevice) -> Option<(&Arc<dyn Component>, &'static str)> {
        self.components.iter().find_map(|c| c.probe(dev).map(|t| (c, t)))
    }

    fn known_types(&self) -> String {
        self.components.iter().flat_map(|c| c.fs_types().iter().copied()).collect::<Vec<_>>().join(", ")
    }

    /// The component serving `fstype`, or, without one, the component that recognises `dev`.
    fn resolve(
        &self,
        fstype: Option<&str>,
        dev: Option<&dyn crate::hypercall::BlockDevice>,
    ) -> Result<(Arc<dyn Component>, String), MountError> {
        match (fstype, dev) {
            (Some(t), _) => {
                let c = self.components.iter().find(|c| c.fs_types().contains(&t)).ok_or_else(|| {
                    MountError::new(
                        Errno::ENODEV,
                        format!("unknown file system type '{t}' (this kernel knows: {})", self.known_types()),
                    )
                })?;
                Ok((c.clone(), t.to_string()))
            }
            (None, Some(dev)) => {
                let (c, t) = self.probe(dev).ok_or_else(|| {
                    MountError::new(Errno::EINVAL, format!("no file system this kernel knows ({})", self.known_types()))
                })?;
                Ok((c.clone(), t.to_string()))
            }
            (None, None) => Err(MountError::new(Errno::EINVAL, "a network mount needs a file system type (-t)")),
        }
    }

    /// Mounts `source`. With `fstype` `None`, a block device's type is detected by probing.
    pub fn mount(
        self: &Arc<Self>,
        fstype: Option<&str>,
        source: MountSource,
        source_name: &str,
        opts: &MountOptions,
    ) -> Result<Arc<Mount>, MountError> {
        let dev = match &source {
            MountSource::Block(d) => Some(d.as_ref()),
            MountSource::Network { .. } => None,
        };
        let (component, fstype) = self.resolve(fstype, dev)?;
        if matches!(source, MountSource::Block(_)) && !self.factions.contains(&Faction::Dev) {
            return Err(MountError::new(Errno::ENODEV, "block devices need the dev faction"));
        }
        let ctx = MountContext { hyper: self.hyper.clone(), cache: self.cache.clone() };
        let mounted = component.mount(&ctx, &fstype, source, opts)?;
        let id = self.next_mount.fetch_add(1, Ordering::Relaxed);
        let mnt = Mount::new(id, fstype, source_name.to_string(), mounted, self.hyper.clone())?;
        let mut table = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|m| m.strong_count() > 0);
        table.push(Arc::downgrade(&mnt));
        Ok(mnt)
    }

    /// Checks the file system on `dev` (type detected when `fstype` is `None`) with the
    /// component that serves it.
    pub fn fsck(
        &self,
        fstype: Option<&str>,
        dev: Arc<dyn crate::hypercall::BlockDevice>,
        opts: &crate::fsck::FsckOptions,
        sink: &mut dyn crate::fsck::FsckSink,
    ) -> Result<(String, crate::fsck::FsckSummary), MountError> {
        let (component, fstype) = self.resolve(fstype, Some(dev.as_ref()))?;
        let ctx = MountContext { hyper: self.hyper.clone(), cache: self.cache.clone() };
        let summary = component.fsck(&ctx, &fstype, dev, opts, sink)?;
        Ok((fstype, summary))
    }

    /// Mounts still alive.
    pub fn mounts(&self) -> Vec<Arc<Mount>> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect()
    }
}
