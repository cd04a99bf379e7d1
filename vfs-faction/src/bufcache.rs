//! The buffer cache: file system blocks of every block-device mount, bounded in bytes.
//!
//! One cache is shared by all mounts of a kernel (`-o cache=SIZE`). A mount attaches its
//! device with its block size and gets a [`CachedDev`]; blocks are keyed by (device, block
//! number). Least recently used blocks are dropped once the total passes the limit, so memory
//! does not grow with image or file size. Reads of several blocks go to the device as one
//! request per contiguous run of missing blocks, extended by the read-ahead the caller asks
//! for (sequential read-ahead: the following blocks arrive in the same I/O).

use crate::errno::{Errno, KResult};
use crate::hypercall::BlockDevice;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest single device request the cache issues, bytes.
pub const MAX_IO: usize = 2 << 20;

/// One cached block.
pub struct Buf {
    data: Box<[u8]>,
}

impl Buf {
    /// The block's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl core::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

type Key = (u32, u64);

struct Entry {
    buf: Arc<Buf>,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

impl Inner {
    fn touch(&mut self, key: Key) -> Option<Arc<Buf>> {
        let tick = self.tick + 1;
        let e = self.map.get_mut(&key)?;
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.tick = tick;
        self.lru.insert(tick, key);
        Some(e.buf.clone())
    }

    fn insert(&mut self, key: Key, buf: Arc<Buf>, limit: usize) -> Arc<Buf> {
        if let Some(b) = self.touch(key) {
            return b;
        }
        self.tick += 1;
        self.bytes += buf.data.len();
        self.lru.insert(self.tick, key);
        self.map.insert(key, Entry { buf: buf.clone(), tick: self.tick });
        while self.bytes > limit {
            let Some((_, old)) = self.lru.pop_first() else { break };
            if let Some(e) = self.map.remove(&old) {
                self.bytes -= e.buf.data.len();
            }
        }
        buf
    }
}

/// Counters, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Device read requests issued.
    pub reads: u64,
    /// Bytes held now.
    pub bytes: usize,
    /// Blocks held now.
    pub blocks: usize,
}

/// The kernel's buffer cache.
pub struct BufCache {
    limit: usize,
    inner: Mutex<Inner>,
    next_dev: AtomicU32,
    hits: AtomicU64,
    misses: AtomicU64,
    reads: AtomicU64,
}

impl BufCache {
    /// A cache that holds at most `limit_bytes` of blocks (at least one block is always kept
    /// while in use by a caller).
    pub fn new(limit_bytes: usize) -> Arc<BufCache> {
        Arc::new(BufCache {
            limit: limit_bytes,
            inner: Mutex::new(Inner::default()),
            next_dev: AtomicU32::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    /// The configured limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            bytes: inner.bytes,
            blocks: inner.map.len(),
        }
    }

    /// Attaches a device whose file system uses `block_size`-byte blocks. Fails with `EINVAL`
    /// for a block size that is zero or not a power of two.
    pub fn attach(
        self: &Arc<Self>,
        dev: Arc<dyn BlockDevice>,
        block_size: u32,
    ) -> KResult<CachedDev> {
        if block_size == 0 || !block_size.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        let id = self.next_dev.fetch_add(1, Ordering::Relaxed);
        let nblocks = dev.size() / u64::from(block_size);
        Ok(CachedDev { cache: self.clone(), id, dev, bsize: block_size, nblocks })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_dev(&self, id: u32) {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner.map.keys().filter(|k| k.0 == id).copied().collect();
        for k in keys {
            if let Some(e) = inner.map.remove(&k) {
                inner.lru.remove(&e.tick);
                inner.bytes -= e.buf.data.len();
            }
        }
    }
}

/// A device attached to the buffer cache, read in file system blocks.
pub struct CachedDev {
    cache: Arc<BufCache>,
    id: u32,
    dev: Arc<dyn BlockDevice>,
    bsize: u32,
    nblocks: u64,
}

impl CachedDev {
    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.bsize
    }

    /// Number of whole blocks on the device.
    pub fn nblocks(&self) -> u64 {
        self.nblocks
    }

    /// The device underneath (for the superblock and other unaligned reads).
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// The shared cache this device is attached to.
    pub fn cache(&self) -> &Arc<BufCache> {
        &self.cache
    }

    fn check(&self, blk: u64, count: u64) -> KResult<()> {
        if blk.checked_add(count).is_none_or(|end| end > self.nblocks) {
            log::error!(
                "{}: block {} (+{}) is beyond the end of the device ({} blocks)",
                self.dev.describe(),
                blk,
                count,
                self.nblocks
            );
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Block `blk`, from the cache or the device. Blocks on a miss.
    /// Fails: `EIO` (device error, or `blk` past the end of the device).
    pub fn bread(&self, blk: u64) -> KResult<Arc<Buf>> {
        self.check(blk, 1)?;
        if let Some(b) = self.cache.lock().touch((self.id, blk)) {
            self.cache.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        self.cache.misses.fetch_add(1, Ordering::Relaxed);
        let mut data = vec![0u8; self.bsize as usize].into_boxed_slice();
        self.cache.reads.fetch_add(1, Ordering::Relaxed);
        self.dev.read_at(&mut data, blk * u64::from(self.bsize))?;
        let buf = Arc::new(Buf { data });
        Ok(self.cache.lock().insert((self.id, blk), buf, self.cache.limit))
    }

    /// Copies `count` consecutive blocks starting at `blk` into `dst` (which must hold exactly
    /// `count` blocks). Missing blocks are read in runs, one request per run, and each run is
    /// extended by up to `ahead` further blocks that are cached for the next call.
    pub fn read_blocks(&self, blk: u64, count: u64, dst: &mut [u8], ahead: u64) -> KResult<()> {
        let bs = self.bsize as usize;
        if dst.len() as u64 != count * self.bsize as u64 {
            return Err(Errno::EINVAL);
        }
        self.check(blk, count)?;
        let ahead = ahead.min(self.nblocks - blk - count);
        let max_run = (MAX_IO / bs).max(1) as u64;
        let mut i = 0u64;
        while i < count {
            let hit = self.cache.lock().touch((self.id, blk + i));
            if let Some(b) = hit {
                self.cache.hits.fetch_add(1, Ordering::Relaxed);
                let o = i as usize * bs;
                dst[o..o + bs].copy_from_slice(&b);
                i += 1;
                continue;
            }
            // A run of missing blocks: up to the end of the request plus read-ahead.
            let limit = (count + ahead - i).min(max_run);
            let mut n = 1u64;
            {
                let inner = self.cache.lock();
                while n < limit && !inner.map.contains_key(&(self.id, blk + i + n)) {
                    n += 1;
                }
            }
            self.cache.misses.fetch_add(n.min(count - i), Ordering::Relaxed);
            self.cache.reads.fetch_add(1, Ordering::Relaxed);
            let mut tmp = vec![0u8; n as usize * bs];
            self.dev.read_at(&mut tmp, (blk + i) * u64::from(self.bsize))?;
            let mut inner = self.cache.lock();
            for j in 0..n {
                let chunk = &tmp[j as usize * bs..(j as usize + 1) * bs];
                if i + j < count {
                    let o = (i + j) as usize * bs;
                    dst[o..o + bs].copy_from_slice(chunk);
                }
                let buf = Arc::new(Buf { data: chunk.to_vec().into_boxed_slice() });
                inner.insert((self.id, blk + i + j), buf, self.cache.limit);
            }
            drop(inner);
            i += n.min(count - i);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte offset `off` straight from the device, bypassing the
    /// cache (superblocks, probes). Fails: `EIO`.
    pub fn read_raw(&self, buf: &mut [u8], off: u64) -> KResult<()> {
        self.dev.read_at(buf, off)
    }
}

impl Drop for CachedDev {
    fn drop(&mut self) {
        self.cache.drop_dev(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memdev::MemDisk;

    fn disk(blocks: usize, bs: usize) -> Arc<MemDisk> {
        let mut data = vec![0u8; blocks * bs];
        for (i, c) in data.chunks_mut(bs).enumerate() {
            c.fill(i as u8);
        }
        Arc::new(MemDisk::from_bytes(data))
    }

    #[test]
    fn bread_hits_after_miss_and_rejects_past_end() {
        let cache = BufCache::new(1 << 20);
        let d = cache.attach(disk(16, 1024), 1024).unwrap();
        assert_eq!(d.bread(3).unwrap()[0], 3);
        assert_eq!(d.bread(3).unwrap()[1023], 3);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.reads), (1, 1, 1));
        assert_eq!(d.bread(16).err(), Some(Errno::EIO));
        assert_eq!(d.bread(u64::MAX).err(), Some(Errno::EIO));
    }

    #[test]
    fn memory_stays_within_the_limit() {
        let cache = BufCache::new(8 * 4096);
        let d = cache.attach(disk(1000, 4096), 4096).unwrap();
        for b in 0..1000 {
            d.bread(b).unwrap();
        }
        let mut big = vec![0u8; 100 * 4096];
        d.read_blocks(500, 100, &mut big, 50).unwrap();
        assert!(big.chunks(4096).enumerate().all(|(i, c)| c[7] == (500 + i) as u8));
        let s = cache.stats();
        assert!(s.bytes <= 8 * 4096, "{s:?}");
    }

    #[test]
    fn read_blocks_uses_one_request_per_run_and_reads_ahead() {
        let cache = BufCache::new(16 << 20);
        let mem = disk(256, 4096);
        let d = cache.attach(mem.clone(), 4096).unwrap();
        d.bread(10).unwrap();
        let mut dst = vec![0u8; 20 * 4096];
        d.read_blocks(0, 20, &mut dst, 30).unwrap();
        assert!(dst.chunks(4096).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        // bread(10), then [0,10) and [11,50): three device reads in all.
        assert_eq!(cache.stats().reads, 3);
        // The read-ahead blocks are now hits.
        let mut dst2 = vec![0u8; 20 * 4096];
        d.read_blocks(20, 20, &mut dst2, 0).unwrap();
        assert_eq!(cache.stats().reads, 3);
        assert_eq!(dst2[0], 20);
        // Read-ahead stops at the end of the device.
        let mut last = vec![0u8; 4096];
        d.read_blocks(255, 1, &mut last, 100).unwrap();
        assert_eq!(last[0], 255);
    }

    #[test]
    fn detaching_a_device_frees_its_blocks() {
        let cache = BufCache::new(1 << 20);
        let d = cache.attach(disk(8, 1024), 1024).unwrap();
        d.bread(1).unwrap();
        drop(d);
        assert_eq!(cache.stats().blocks, 0);
    }

    #[test]
    fn bad_block_size_is_refused() {
        let cache = BufCache::new(1 << 20);
        assert_eq!(cache.attach(disk(8, 1024), 1000).err(), Some(Errno::EINVAL));
    }
}
