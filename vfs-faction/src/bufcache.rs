//! The buffer cache: file system blocks of every block-device mount, bounded in bytes.
//!
//! One cache is shared by all mounts of a kernel (`-o cache=SIZE`). A mount attaches its
//! device with its block size and gets a [`CachedDev`]; blocks are keyed by (device, block
//! number). Least recently used blocks are dropped once the total passes the limit, so memory
//! does not grow with image or file size. Reads of several blocks go to the device as one
//! request per contiguous run of missing blocks, extended by the read-ahead the caller asks
//! for (sequential read-ahead: the following blocks arrive in the same I/O).
//!
//! Writes are copy-on-write: [`CachedDev::bwrite`] puts a new version of a block in the cache,
//! marked dirty; readers that still hold the old version keep a consistent copy. Dirty blocks
//! are never dropped: they go to the device at [`CachedDev::sync`] (in block order, contiguous
//! runs coalesced), and a writer that finds more than half the cache dirty writes its device's
//! dirty blocks back before going on, so dirty data stays bounded too.

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
    dirty: bool,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    dirty_bytes: usize,
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

    /// Inserts a clean block read from the device; a version already cached wins (it may be
    /// newer: dirty).
    fn insert(&mut self, key: Key, buf: Arc<Buf>, limit: usize) -> Arc<Buf> {
        if let Some(b) = self.touch(key) {
            return b;
        }
        self.put(key, buf.clone(), false, limit);
        buf
    }

    /// Stores `buf` as the current version of `key`.
    fn put(&mut self, key: Key, buf: Arc<Buf>, dirty: bool, limit: usize) {
        if let Some(old) = self.map.remove(&key) {
            self.lru.remove(&old.tick);
            self.bytes -= old.buf.data.len();
            if old.dirty {
                self.dirty_bytes -= old.buf.data.len();
            }
        }
        self.tick += 1;
        self.bytes += buf.data.len();
        if dirty {
            self.dirty_bytes += buf.data.len();
        }
        self.lru.insert(self.tick, key);
        self.map.insert(key, Entry { buf, tick: self.tick, dirty });
        self.evict(limit);
    }

    /// Drops least recently used clean blocks until the cache fits its limit.
    fn evict(&mut self, limit: usize) {
        if self.bytes <= limit {
            return;
        }
        let mut victims = Vec::new();
        let mut freed = 0usize;
        for (&tick, key) in &self.lru {
            if self.bytes - freed <= limit {
                break;
            }
            if let Some(e) = self.map.get(key) {
                if !e.dirty {
                    freed += e.buf.data.len();
                    victims.push((tick, *key));
                }
            }
        }
        for (tick, key) in victims {
            self.lru.remove(&tick);
            if let Some(e) = self.map.remove(&key) {
                self.bytes -= e.buf.data.len();
            }
        }
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
    /// Of those, bytes not yet written to their device.
    pub dirty_bytes: usize,
    /// Device write requests issued.
    pub writes: u64,
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
    writes: AtomicU64,
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
            writes: AtomicU64::new(0),
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
            dirty_bytes: inner.dirty_bytes,
            writes: self.writes.load(Ordering::Relaxed),
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
                if e.dirty {
                    log::error!("buffer cache: dirty block {} of a detached device dropped", k.1);
                    inner.dirty_bytes -= e.buf.data.len();
                }
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
    /// `count` blocks): file data. Cached versions (dirty ones above all) are copied; each run
    /// of missing blocks is read straight into `dst` with one device request and is not kept
    /// (the front end's page cache holds file data; this cache keeps metadata). The `ahead`
    /// blocks that follow are announced to the device ([`BlockDevice::will_need`]), so the
    /// host reads them in the background while this request is answered.
    pub fn read_blocks(&self, blk: u64, count: u64, dst: &mut [u8], ahead: u64) -> KResult<()> {
        let bs = self.bsize as usize;
        if dst.len() as u64 != count * self.bsize as u64 {
            return Err(Errno::EINVAL);
        }
        self.check(blk, count)?;
        let max_run = (MAX_IO / bs).max(1) as u64;
        let mut i = 0u64;
        let mut hits = 0u64;
        while i < count {
            // Copy what is cached; find the run of missing blocks that follows.
            let mut n = 0u64;
            {
                let mut inner = self.cache.lock();
                while i < count && n == 0 {
                    match inner.touch((self.id, blk + i)) {
                        Some(b) => {
                            let o = i as usize * bs;
                            dst[o..o + bs].copy_from_slice(&b);
                            i += 1;
                            hits += 1;
                        }
                        None => {
                            n = 1;
                            while i + n < count && n < max_run && !inner.map.contains_key(&(self.id, blk + i + n)) {
                                n += 1;
                            }
                        }
                    }
                }
            }
            if n == 0 {
                break;
            }
            self.cache.misses.fetch_add(n, Ordering::Relaxed);
            self.cache.reads.fetch_add(1, Ordering::Relaxed);
            let o = i as usize * bs;
            self.dev.read_at(&mut dst[o..o + n as usize * bs], (blk + i) * u64::from(self.bsize))?;
            i += n;
        }
        self.cache.hits.fetch_add(hits, Ordering::Relaxed);
        let ahead = ahead.min(self.nblocks - blk - count);
        if ahead > 0 {
            let bsz = u64::from(self.bsize);
            self.dev.will_need((blk + count) * bsz, ahead * bsz);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte offset `off` straight from the device, bypassing the
    /// cache (superblocks, probes). Fails: `EIO`.
    pub fn read_raw(&self, buf: &mut [u8], off: u64) -> KResult<()> {
        self.dev.read_at(buf, off)
    }

    /// Writes `buf.len()` bytes at byte offset `off` straight to the device (superblock
    /// copies). The caller keeps cached blocks consistent. Fails: `EROFS`, `EIO`.
    pub fn write_raw(&self, buf: &[u8], off: u64) -> KResult<()> {
        self.cache.writes.fetch_add(1, Ordering::Relaxed);
        self.dev.write_at(buf, off)
    }

    /// Makes `data` (exactly one block) the new contents of block `blk`, dirty in the cache
    /// until [`CachedDev::sync`] or write-back. Never blocks on I/O unless more than half the
    /// cache is dirty. Fails: `EROFS` (read-only device), `EIO` (past the end), `EINVAL`.
    pub fn bwrite(&self, blk: u64, data: Vec<u8>) -> KResult<()> {
        if self.dev.read_only() {
            return Err(Errno::EROFS);
        }
        if data.len() != self.bsize as usize {
            return Err(Errno::EINVAL);
        }
        self.check(blk, 1)?;
        let over = {
            let mut inner = self.cache.lock();
            inner.put((self.id, blk), Arc::new(Buf { data: data.into_boxed_slice() }), true, self.cache.limit);
            inner.dirty_bytes > self.cache.limit / 2
        };
        if over {
            self.write_back()?;
        }
        Ok(())
    }

    /// True if block `blk` has a version not yet written to the device.
    pub fn is_dirty(&self, blk: u64) -> bool {
        self.cache.lock().map.get(&(self.id, blk)).is_some_and(|e| e.dirty)
    }

    /// Drops block `blk` from the cache, dirty or not (the block was freed: its contents no
    /// longer matter).
    pub fn forget_block(&self, blk: u64) {
        let mut inner = self.cache.lock();
        if let Some(e) = inner.map.remove(&(self.id, blk)) {
            inner.lru.remove(&e.tick);
            inner.bytes -= e.buf.data.len();
            if e.dirty {
                inner.dirty_bytes -= e.buf.data.len();
            }
        }
    }

    /// Writes every dirty block of this device, in block order with contiguous runs coalesced
    /// into one request each, without the flush barrier. Blocks.
    pub fn write_back(&self) -> KResult<()> {
        let mut dirty: Vec<(u64, Arc<Buf>)> = {
            let inner = self.cache.lock();
            inner.map.iter().filter(|(k, e)| k.0 == self.id && e.dirty).map(|(k, e)| (k.1, e.buf.clone())).collect()
        };
        dirty.sort_unstable_by_key(|(b, _)| *b);
        let bs = self.bsize as usize;
        let max_run = (MAX_IO / bs).max(1);
        let mut i = 0;
        while i < dirty.len() {
            let mut j = i + 1;
            while j < dirty.len() && j - i < max_run && dirty[j].0 == dirty[j - 1].0 + 1 {
                j += 1;
            }
            let run = &dirty[i..j];
            let mut tmp = Vec::with_capacity(run.len() * bs);
            for (_, b) in run {
                tmp.extend_from_slice(&b.data);
            }
            self.cache.writes.fetch_add(1, Ordering::Relaxed);
            self.dev.write_at(&tmp, run[0].0 * u64::from(self.bsize))?;
            // Clean only the versions written: a block rewritten meanwhile stays dirty.
            let mut inner = self.cache.lock();
            for (blk, b) in run {
                let len = b.data.len();
                if let Some(e) = inner.map.get_mut(&(self.id, *blk)) {
                    if e.dirty && Arc::ptr_eq(&e.buf, b) {
                        e.dirty = false;
                        inner.dirty_bytes -= len;
                    }
                }
            }
            drop(inner);
            i = j;
        }
        self.cache.lock().evict(self.cache.limit);
        Ok(())
    }

    /// Writes every dirty block and then issues the device's flush barrier: when this returns
    /// `Ok`, everything written before is on stable storage. Blocks.
    pub fn sync(&self) -> KResult<()> {
        self.write_back()?;
        self.dev.flush()
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
        for b in 0..1000 {
            d.bwrite(b, vec![1; 4096]).unwrap();
        }
        let s = cache.stats();
        assert!(s.bytes <= 8 * 4096, "{s:?}");
    }

    #[test]
    fn read_blocks_uses_one_request_per_run_and_announces_read_ahead() {
        let cache = BufCache::new(16 << 20);
        let mem = disk(256, 4096);
        let d = cache.attach(mem.clone(), 4096).unwrap();
        d.bread(10).unwrap();
        let mut dst = vec![0u8; 20 * 4096];
        d.read_blocks(0, 20, &mut dst, 30).unwrap();
        assert!(dst.chunks(4096).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        // bread(10), then [0,10) and [11,20): three device reads in all.
        assert_eq!(cache.stats().reads, 3);
        // File data is not kept; the next 30 blocks were announced to the device.
        assert_eq!(cache.stats().blocks, 1);
        assert_eq!(mem.hints(), vec![(20 * 4096, 30 * 4096)]);
        // A dirty block in the range wins over the device.
        d.bwrite(5, vec![0xEE; 4096]).unwrap();
        d.read_blocks(0, 20, &mut dst, 0).unwrap();
        assert_eq!(dst[5 * 4096], 0xEE);
        assert_eq!(dst[6 * 4096], 6);
        // Read-ahead stops at the end of the device.
        let mut last = vec![0u8; 4096];
        d.read_blocks(255, 1, &mut last, 100).unwrap();
        assert_eq!(last[0], 255);
        assert_eq!(mem.hints().len(), 1);
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
    fn writes_stay_dirty_until_sync_and_are_coalesced() {
        let cache = BufCache::new(64 * 1024);
        let mem = disk(64, 1024);
        let d = cache.attach(mem.clone(), 1024).unwrap();
        for b in [5u64, 6, 7, 20] {
            d.bwrite(b, vec![0xAB; 1024]).unwrap();
        }
        assert_eq!(d.bread(6).unwrap()[0], 0xAB);
        assert_eq!(mem.contents()[6 * 1024], 6, "not written before sync");
        assert!(d.is_dirty(7));
        let writes_before = mem.counts().1;
        d.sync().unwrap();
        assert_eq!(mem.counts().1 - writes_before, 2, "runs 5..=7 and 20");
        assert_eq!(mem.counts().2, 1, "one flush barrier");
        assert_eq!(mem.contents()[7 * 1024 + 1023], 0xAB);
        assert!(!d.is_dirty(7));
        assert_eq!(cache.stats().dirty_bytes, 0);
        assert_eq!(d.bwrite(64, vec![0; 1024]), Err(Errno::EIO));
        assert_eq!(d.bwrite(1, vec![0; 10]), Err(Errno::EINVAL));
    }

    #[test]
    fn dirty_blocks_are_never_evicted_and_write_back_bounds_them() {
        let cache = BufCache::new(16 * 1024);
        let mem = disk(256, 1024);
        let d = cache.attach(mem.clone(), 1024).unwrap();
        for b in 0..200u64 {
            d.bwrite(b, vec![b as u8 ^ 0xFF; 1024]).unwrap();
            assert!(cache.stats().dirty_bytes <= 8 * 1024 + 1024);
        }
        d.sync().unwrap();
        let c = mem.contents();
        assert!((0..200usize).all(|b| c[b * 1024] == b as u8 ^ 0xFF));
        assert!(cache.stats().bytes <= 16 * 1024);
    }

    #[test]
    fn writes_to_a_read_only_device_are_refused() {
        let cache = BufCache::new(1 << 20);
        let d = cache.attach(Arc::new(MemDisk::new(4096).read_only()), 1024).unwrap();
        assert_eq!(d.bwrite(0, vec![0; 1024]), Err(Errno::EROFS));
    }

    #[test]
    fn bad_block_size_is_refused() {
        let cache = BufCache::new(1 << 20);
        assert_eq!(cache.attach(disk(8, 1024), 1000).err(), Some(Errno::EINVAL));
    }
}
