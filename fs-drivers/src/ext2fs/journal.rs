//! JBD2 journal replay (ext3/ext4 internal journals), run at mount when the superblock says
//! `needs_recovery`.
//!
//! The usual three passes over the log, from `s_start`/`s_sequence`:
//! 1. scan: walk descriptor, commit and revoke blocks while the sequence numbers follow on,
//!    stopping at the first block that is not the next expected one (no magic, wrong
//!    sequence, unknown type) or at a torn commit or descriptor (checksum mismatch with
//!    csum v2/v3). Only transactions with a commit block count.
//! 2. revoke: a block revoked in transaction T is not replayed from transactions up to T.
//! 3. replay: every tagged block of every committed transaction, in order, written home
//!    through the buffer cache (escaped blocks get their magic back).
//!
//! Everything is checked before anything is written: a corrupt journal (bad superblock,
//! a tag pointing outside the file system, a bad data or revoke checksum, a hole in the
//! journal inode) refuses the mount and leaves the image as it was.
//!
//! All journal fields are big-endian.

use super::bmap::{self, MapCache};
use super::csum;
use super::inode::{self, Inode};
use super::Ext2Fs;
use std::collections::HashMap;

/// `h_magic` of every journal metadata block.
pub const JBD2_MAGIC: u32 = 0xC03B_3998;

const BT_DESCRIPTOR: u32 = 1;
const BT_COMMIT: u32 = 2;
const BT_SB_V1: u32 = 3;
const BT_SB_V2: u32 = 4;
const BT_REVOKE: u32 = 5;

/// Journal superblock fields (byte offsets).
mod jsb {
    pub const BLOCKSIZE: usize = 0xC;
    pub const MAXLEN: usize = 0x10;
    pub const FIRST: usize = 0x14;
    pub const SEQUENCE: usize = 0x18;
    pub const START: usize = 0x1C;
    pub const FEATURE_COMPAT: usize = 0x24;
    pub const FEATURE_INCOMPAT: usize = 0x28;
    pub const UUID: usize = 0x30;
    pub const CHECKSUM_TYPE: usize = 0x50;
    pub const CHECKSUM: usize = 0xFC;
    /// Bytes covered by the superblock checksum (`sizeof(journal_superblock_t)`).
    pub const SIZE: usize = 1024;
}

/// Journal incompat features.
mod jfeat {
    pub const REVOKE: u32 = 0x1;
    pub const BIT64: u32 = 0x2;
    pub const ASYNC_COMMIT: u32 = 0x4;
    pub const CSUM_V2: u32 = 0x8;
    pub const CSUM_V3: u32 = 0x10;
    pub const FAST_COMMIT: u32 = 0x20;
    pub const KNOWN: u32 = REVOKE | BIT64 | ASYNC_COMMIT | CSUM_V2 | CSUM_V3 | FAST_COMMIT;
}

/// Tag flags.
const TAG_ESCAPE: u16 = 0x1;
const TAG_SAME_UUID: u16 = 0x2;
const TAG_LAST: u16 = 0x8;

fn be16(b: &[u8], off: usize) -> u16 {
    b.get(off..off.wrapping_add(2)).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], off: usize) -> u32 {
    b.get(off..off.wrapping_add(4)).map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn put_be32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// `a >= b` in the wrapping order of transaction ids.
fn tid_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Committed transactions found.
    pub transactions: u32,
    /// Blocks written home.
    pub blocks: u64,
    /// Blocks skipped because a later revoke record covers them.
    pub revoked: u64,
    /// The journal superblock block and its new contents (log empty), to write once the
    /// replayed blocks are on stable storage.
    pub jsb: Option<(u64, Vec<u8>)>,
}

/// One tagged block of a transaction.
struct Tag {
    /// Home block in the file system.
    target: u64,
    /// Position in the log (logical journal block).
    jblk: u64,
    escape: bool,
    /// Stored data checksum (csum v2: low 16 bits; v3: 32 bits), if checksums are on.
    csum: Option<u32>,
}

struct Txn {
    seq: u32,
    tags: Vec<Tag>,
}

/// What the scan found: the committed transactions, the revoke records (block → latest
/// revoking transaction), and the id of the first transaction not committed.
type Scan = (Vec<Txn>, HashMap<u64, u32>, u32);

/// The parsed journal superblock and the journal's block map.
struct Journal<'a> {
    fs: &'a Ext2Fs,
    /// Journal inode's logical → physical runs: (first logical, physical, length), sorted.
    runs: Vec<(u64, u64, u64)>,
    bs: usize,
    maxlen: u64,
    first: u64,
    incompat: u32,
    seed: u32,
}

impl Journal<'_> {
    fn csum_on(&self) -> bool {
        self.incompat & (jfeat::CSUM_V2 | jfeat::CSUM_V3) != 0
    }

    fn v3(&self) -> bool {
        self.incompat & jfeat::CSUM_V3 != 0
    }

    fn phys(&self, lblk: u64) -> Result<u64, String> {
        let i = self.runs.partition_point(|r| r.0 + r.2 <= lblk);
        match self.runs.get(i) {
            Some(&(l, p, n)) if l <= lblk && lblk < l + n => Ok(p + (lblk - l)),
            _ => Err(format!("journal block {lblk} is not mapped")),
        }
    }

    fn read(&self, lblk: u64) -> Result<Vec<u8>, String> {
        let p = self.phys(lblk)?;
        let b = self.fs.dev.bread(p).map_err(|e| format!("cannot read journal block {lblk} (block {p}): {e}"))?;
        Ok(b.to_vec())
    }

    /// The log block after `b`, wrapping within `[first, maxlen)`.
    fn next(&self, b: u64) -> u64 {
        let n = b + 1;
        if n >= self.maxlen {
            self.first
        } else {
            n
        }
    }

    /// Checksum of a descriptor or revoke block: the last 4 bytes, over the whole block
    /// with them zeroed.
    fn block_tail_ok(&self, blk: &[u8]) -> bool {
        let t = self.bs - 4;
        let stored = be32(blk, t);
        let c = csum::raw(self.seed, &blk[..t]);
        csum::raw(c, &[0; 4]) == stored
    }

    fn commit_ok(&self, blk: &[u8]) -> bool {
        let stored = be32(blk, 0x10);
        let c = csum::raw(self.seed, &blk[..0x10]);
        let c = csum::raw(c, &[0; 4]);
        csum::raw(c, &blk[0x14..]) == stored
    }

    fn tag_bytes(&self) -> usize {
        if self.v3() {
            return 16;
        }
        let mut sz = 12;
        if self.incompat & jfeat::CSUM_V2 != 0 {
            sz += 2;
        }
        if self.incompat & jfeat::BIT64 == 0 {
            sz -= 4;
        }
        sz
    }

    /// Pass 1: the committed transactions from `start`/`seq`, and the revoke records
    /// (block → latest revoking transaction). Returns also the next transaction id.
    fn scan(&self, start: u64, seq: u32) -> Result<Scan, String> {
        let mut txns = Vec::new();
        let mut revokes: HashMap<u64, u32> = HashMap::new();
        let mut cur = Txn { seq, tags: Vec::new() };
        let mut cur_revokes: Vec<u64> = Vec::new();
        let mut blk = start;
        let log_len = self.maxlen - self.first;
        let mut steps = 0u64;
        let tag_bytes = self.tag_bytes();
        let space = if self.csum_on() { self.bs - 4 } else { self.bs };
        loop {
            steps += 1;
            if steps > log_len + 1 {
                return Err("the log never ends (it covers the journal more than once)".into());
            }
            let b = self.read(blk)?;
            if be32(&b, 0) != JBD2_MAGIC || be32(&b, 8) != cur.seq {
                break;
            }
            match be32(&b, 4) {
                BT_DESCRIPTOR => {
                    if self.csum_on() && !self.block_tail_ok(&b) {
                        log::warn!(
                            "{}: journal descriptor block {blk} of transaction {} fails its checksum: end of the log",
                            self.fs.name,
                            cur.seq
                        );
                        break;
                    }
                    let mut off = 12usize;
                    let mut data = blk;
                    while off + tag_bytes <= space {
                        let lo = u64::from(be32(&b, off));
                        let fl = be16(&b, off + 6);
                        let hi = if self.incompat & jfeat::BIT64 != 0 { u64::from(be32(&b, off + 8)) } else { 0 };
                        let csum = if self.v3() {
                            Some(be32(&b, off + 12))
                        } else if self.incompat & jfeat::CSUM_V2 != 0 {
                            Some(u32::from(be16(&b, off + 4)))
                        } else {
                            None
                        };
                        data = self.next(data);
                        steps += 1;
                        if steps > log_len + 1 {
                            return Err("the log never ends (it covers the journal more than once)".into());
                        }
                        cur.tags.push(Tag { target: hi << 32 | lo, jblk: data, escape: fl & TAG_ESCAPE != 0, csum });
                        off += tag_bytes;
                        if fl & TAG_SAME_UUID == 0 {
                            off += 16;
                        }
                        if fl & TAG_LAST != 0 {
                            break;
                        }
                    }
                    blk = data;
                }
                BT_COMMIT => {
                    if self.csum_on() && !self.commit_ok(&b) {
                        log::warn!(
                            "{}: journal commit block {blk} of transaction {} fails its checksum: end of the log",
                            self.fs.name,
                            cur.seq
                        );
                        break;
                    }
                    for r in cur_revokes.drain(..) {
                        let e = revokes.entry(r).or_insert(cur.seq);
                        if tid_geq(cur.seq, *e) {
                            *e = cur.seq;
                        }
                    }
                    let next = cur.seq.wrapping_add(1);
                    txns.push(std::mem::replace(&mut cur, Txn { seq: next, tags: Vec::new() }));
                }
                BT_REVOKE => {
                    if self.csum_on() && !self.block_tail_ok(&b) {
                        return Err(format!("revoke block {blk} of transaction {} fails its checksum", cur.seq));
                    }
                    let count = be32(&b, 12) as usize;
                    if count < 16 || count > space {
                        return Err(format!("revoke block {blk} claims {count} bytes of records"));
                    }
                    let rec = if self.incompat & jfeat::BIT64 != 0 { 8 } else { 4 };
                    let mut off = 16;
                    while off + rec <= count {
                        let v = if rec == 8 {
                            u64::from(be32(&b, off)) << 32 | u64::from(be32(&b, off + 4))
                        } else {
                            u64::from(be32(&b, off))
                        };
                        cur_revokes.push(v);
                        off += rec;
                    }
                }
                BT_SB_V1 | BT_SB_V2 => break,
                _ => break,
            }
            blk = self.next(blk);
        }
        Ok((txns, revokes, cur.seq))
    }

    /// Checks the data checksum of a tagged block (as stored in the log).
    fn data_ok(&self, seq: u32, data: &[u8], want: u32) -> bool {
        let c = csum::raw(self.seed, &seq.to_be_bytes());
        let c = csum::raw(c, data);
        if self.v3() {
            c == want
        } else {
            c & 0xFFFF == want
        }
    }
}

/// Replays the internal journal of `fs` (inode `jino`) into the buffer cache of `fs.dev`.
/// The caller syncs, then writes the reset journal superblock (`s_start = 0`) returned in
/// [`Replayed::jsb`], syncs, and clears `needs_recovery`. `Err` is a message naming what is wrong; nothing was written then.
pub(crate) fn replay(fs: &Ext2Fs, jino: u32) -> Result<Replayed, String> {
    let ji: Inode = fs.read_inode(jino).map_err(|e| format!("cannot read the journal inode {jino}: {e}"))?;
    let bs = fs.bs();
    let iblocks = ji.size / bs;
    if iblocks < 2 {
        return Err(format!("journal inode {jino} holds only {} bytes", ji.size));
    }
    // Map the journal inode, in runs.
    let seed = inode::csum_seed(&fs.sb, jino, ji.generation);
    let mut cache = MapCache::default();
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    let mut l = 0u64;
    while l < iblocks {
        let r = bmap::map(fs, jino, seed, &ji, &mut cache, l, iblocks - l)
            .map_err(|e| format!("cannot map journal block {l}: {e}"))?;
        let len = r.len.clamp(1, iblocks - l);
        match r.phys {
            Some(p) if fs.blocks_in_range(p, len) => runs.push((l, p, len)),
            Some(p) => return Err(format!("journal block {l} maps to block {p}, outside the file system")),
            None => return Err(format!("the journal inode has a hole at block {l}")),
        }
        l += len;
    }
    let mut j =
        Journal { fs, runs, bs: bs as usize, maxlen: iblocks, first: 1, incompat: 0, seed: 0 };
    let mut sb = j.read(0)?;
    if be32(&sb, 0) != JBD2_MAGIC {
        return Err("no journal superblock (bad magic)".into());
    }
    let ver = be32(&sb, 4);
    if ver != BT_SB_V1 && ver != BT_SB_V2 {
        return Err(format!("journal superblock has block type {ver}"));
    }
    let (compat, incompat) =
        if ver == BT_SB_V2 { (be32(&sb, jsb::FEATURE_COMPAT), be32(&sb, jsb::FEATURE_INCOMPAT)) } else { (0, 0) };
    let unknown = incompat & !jfeat::KNOWN;
    if unknown != 0 {
        return Err(format!("unknown journal incompatible features 0x{unknown:x}"));
    }
    if incompat & jfeat::FAST_COMMIT != 0 {
        return Err("journals with fast commits are not replayed (run e2fsck)".into());
    }
    if incompat & jfeat::CSUM_V2 != 0 && incompat & jfeat::CSUM_V3 != 0 {
        return Err("journal claims both checksum v2 and v3".into());
    }
    let _ = compat; // v1 checksums (compat 0x1) are not verified.
    j.incompat = incompat;
    if j.csum_on() {
        let ty = sb[jsb::CHECKSUM_TYPE];
        if ty != 4 {
            return Err(format!("journal checksum type {ty} is not crc32c"));
        }
        let stored = be32(&sb, jsb::CHECKSUM);
        let c = csum::raw(!0, &sb[..jsb::CHECKSUM]);
        let c = csum::raw(c, &[0; 4]);
        let c = csum::raw(c, &sb[jsb::CHECKSUM + 4..jsb::SIZE]);
        if c != stored {
            return Err(format!("journal superblock checksum mismatch (stored 0x{stored:08x}, computed 0x{c:08x})"));
        }
        j.seed = csum::raw(!0, &sb[jsb::UUID..jsb::UUID + 16]);
    }
    let jbs = u64::from(be32(&sb, jsb::BLOCKSIZE));
    if jbs != bs {
        return Err(format!("journal block size {jbs} differs from the file system's {bs}"));
    }
    let maxlen = u64::from(be32(&sb, jsb::MAXLEN));
    let first = u64::from(be32(&sb, jsb::FIRST));
    if maxlen > iblocks || first == 0 || first >= maxlen {
        return Err(format!(
            "journal geometry is impossible: first {first}, length {maxlen}, journal inode {iblocks} blocks"
        ));
    }
    j.maxlen = maxlen;
    j.first = first;
    let start = u64::from(be32(&sb, jsb::START));
    let seq = be32(&sb, jsb::SEQUENCE);
    let mut out = Replayed::default();
    if start == 0 {
        // Clean journal: nothing to replay.
        return Ok(out);
    }
    if start < first || start >= maxlen {
        return Err(format!("journal start {start} is outside the log [{first}, {maxlen})"));
    }
    // Pass 1 and 2: scan, collect revokes.
    let (txns, revokes, next_seq) = j.scan(start, seq)?;
    // Check every tag before writing anything.
    for t in &txns {
        for tag in &t.tags {
            if tag.target >= fs.sb.blocks_count {
                return Err(format!(
                    "transaction {} logs block {}, outside the file system ({} blocks)",
                    t.seq, tag.target, fs.sb.blocks_count
                ));
            }
            j.phys(tag.jblk)?;
        }
    }
    // Pass 3: replay. Data checksums are checked before the first write of any block.
    let mut plan: Vec<(u64, u64, bool)> = Vec::new();
    for t in &txns {
        out.transactions += 1;
        for tag in &t.tags {
            if let Some(&r) = revokes.get(&tag.target) {
                if tid_geq(r, t.seq) {
                    out.revoked += 1;
                    continue;
                }
            }
            if let Some(want) = tag.csum {
                let data = j.read(tag.jblk)?;
                if !j.data_ok(t.seq, &data, want) {
                    return Err(format!(
                        "logged copy of block {} (journal block {}, transaction {}) fails its checksum",
                        tag.target, tag.jblk, t.seq
                    ));
                }
            }
            plan.push((tag.target, tag.jblk, tag.escape));
        }
    }
    for (target, jblk, escape) in plan {
        let mut data = j.read(jblk)?;
        if escape {
            put_be32(&mut data, 0, JBD2_MAGIC);
        }
        fs.dev.bwrite(target, data).map_err(|e| format!("cannot write block {target}: {e}"))?;
        out.blocks += 1;
    }
    // The journal is now empty: s_start = 0; the sequence goes on one past the first
    // transaction id not replayed, as jbd2 and e2fsck do (so a stale block of that
    // uncommitted transaction can never be taken for part of the next one).
    put_be32(&mut sb, jsb::START, 0);
    put_be32(&mut sb, jsb::SEQUENCE, next_seq.wrapping_add(1));
    if j.csum_on() {
        put_be32(&mut sb, jsb::CHECKSUM, 0);
        let c = csum::raw(!0, &sb[..jsb::SIZE]);
        put_be32(&mut sb, jsb::CHECKSUM, c);
    }
    out.jsb = Some((j.phys(0)?, sb));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_order_wraps() {
        assert!(tid_geq(5, 5));
        assert!(tid_geq(6, 5));
        assert!(!tid_geq(4, 5));
        assert!(tid_geq(1, u32::MAX));
        assert!(!tid_geq(u32::MAX, 1));
    }

    #[test]
    fn big_endian_reads_are_bounded() {
        let b = [0xC0, 0x3B, 0x39, 0x98, 0x00];
        assert_eq!(be32(&b, 0), JBD2_MAGIC);
        assert_eq!(be32(&b, 2), 0);
        assert_eq!(be16(&b, usize::MAX), 0);
    }
}
