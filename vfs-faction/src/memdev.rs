//! The in-memory hypercall implementation of block devices: RAM disks with seeded fault
//! injection (after NetBSD's rumpblk): fail, short (torn) or lost I/O, n out of 10,000.

use crate::errno::{Errno, KResult};
use crate::hypercall::BlockDevice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Which faults a [`MemDisk`] injects, each as a rate out of 10,000 requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Seed of the deterministic generator.
    pub seed: u64,
    /// Reads that fail with `EIO`.
    pub fail_reads: u32,
    /// Writes that fail with `EIO` and change nothing.
    pub fail_writes: u32,
    /// Writes that store only a prefix (torn), then report `EIO`.
    pub torn_writes: u32,
    /// Writes that report success but store nothing (lost).
    pub lost_writes: u32,
}

/// A RAM disk.
pub struct MemDisk {
    data: RwLock<Vec<u8>>,
    read_only: bool,
    faults: Faults,
    rng: Mutex<u64>,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    hints: Mutex<Vec<(u64, u64)>>,
}

impl MemDisk {
    /// A zero-filled disk of `size` bytes.
    pub fn new(size: usize) -> MemDisk {
        MemDisk::from_bytes(vec![0; size])
    }

    /// A disk holding `data`.
    pub fn from_bytes(data: Vec<u8>) -> MemDisk {
        MemDisk {
            data: RwLock::new(data),
            read_only: false,
            faults: Faults::default(),
            rng: Mutex::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            hints: Mutex::new(Vec::new()),
        }
    }

    /// The read-ahead hints received so far, as (offset, length).
    pub fn hints(&self) -> Vec<(u64, u64)> {
        self.hints.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The same disk, read-only.
    pub fn read_only(mut self) -> MemDisk {
        self.read_only = true;
        self
    }

    /// The same disk, injecting `faults`.
    pub fn with_faults(mut self, faults: Faults) -> MemDisk {
        *self.rng.get_mut().unwrap_or_else(|e| e.into_inner()) = faults.seed | 1;
        self.faults = faults;
        self
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests served so far: (reads, writes, flushes).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
        )
    }

    fn roll(&self, rate: u32) -> bool {
        if rate == 0 {
            return false;
        }
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % 10_000) < u64::from(rate)
    }

    fn range(&self, len: usize, off: u64) -> KResult<core::ops::Range<usize>> {
        let size = self.size();
        let end = off.checked_add(len as u64).ok_or(Errno::EIO)?;
        if end > size {
            return Err(Errno::EIO);
        }
        Ok(off as usize..end as usize)
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> KResult<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.range(buf.len(), off)?;
        if self.roll(self.faults.fail_reads) {
            return Err(Errno::EIO);
        }
        buf.copy_from_slice(&self.data.read().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64) -> KResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let r = self.range(buf.len(), off)?;
        if self.roll(self.faults.fail_writes) {
            return Err(Errno::EIO);
        }
        if self.roll(self.faults.lost_writes) {
            return Ok(());
        }
        let torn = self.roll(self.faults.torn_writes);
        let n = if torn { buf.len() / 2 } else { buf.len() };
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        d[r.start..r.start + n].copy_from_slice(&buf[..n]);
        if torn {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn flush(&self) -> KResult<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn describe(&self) -> String {
        "ramdisk".into()
    }

    fn will_need(&self, off: u64, len: u64) {
        self.hints.lock().unwrap_or_else(|e| e.into_inner()).push((off, len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_bounds() {
        let d = MemDisk::new(4096);
        d.write_at(b"hello", 100).unwrap();
        let mut b = [0u8; 5];
        d.read_at(&mut b, 100).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(d.read_at(&mut b, 4094), Err(Errno::EIO));
        assert_eq!(d.read_at(&mut b, u64::MAX), Err(Errno::EIO));
        let ro = MemDisk::new(512).read_only();
        assert_eq!(ro.write_at(b"x", 0), Err(Errno::EROFS));
    }

    #[test]
    fn faults_are_seeded_and_roughly_at_rate() {
        let run = |seed| {
            let d = MemDisk::new(4096).with_faults(Faults { seed, fail_reads: 1000, ..Default::default() });
            let mut b = [0u8; 512];
            (0..10_000).map(|_| d.read_at(&mut b, 0).is_err()).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        let n = a.iter().filter(|&&x| x).count();
        assert!((700..1300).contains(&n), "{n}");
    }

    #[test]
    fn torn_and_lost_writes() {
        let d = MemDisk::new(1024).with_faults(Faults { seed: 1, torn_writes: 10_000, ..Default::default() });
        assert_eq!(d.write_at(&[9u8; 8], 0), Err(Errno::EIO));
        assert_eq!(&d.contents()[..8], &[9, 9, 9, 9, 0, 0, 0, 0]);
        let d = MemDisk::new(1024).with_faults(Faults { seed: 1, lost_writes: 10_000, ..Default::default() });
        assert_eq!(d.write_at(&[9u8; 8], 0), Ok(()));
        assert_eq!(&d.contents()[..8], &[0u8; 8]);
    }
}
