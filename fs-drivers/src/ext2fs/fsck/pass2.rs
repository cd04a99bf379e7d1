//! Pass 2: directory structure. Every directory block: record lengths and name lengths,
//! `.` and `..`, entries naming bad, unused or reserved inodes, second links to directories,
//! names with `/` or NUL, file types against the inodes, htree roots and nodes, and the
//! metadata_csum checksums. Entries are counted here for pass 4.

use super::{kind, put16, put32, Checker, DirBlock, Level, Reporter, ROOT_INO};
use crate::ext2fs::inode::{field as ifield, flags};
use crate::ext2fs::superblock::incompat;
use crate::ext2fs::{csum, dir, update};
use crate::ext2fs::{le16, le32};
use std::collections::HashMap;
use vfs_faction::KResult;

const PH: &str = "Pass 2: directory structure";
/// Smallest record: 8 bytes of header and a name of up to 4 bytes.
const MIN_REC: usize = 12;

/// Bytes a record with a name of `n` bytes needs.
pub(super) fn rec_need(n: usize) -> usize {
    (8 + n + 3) & !3
}

/// Offset of the htree count/limit header in an interior block (root: lblk 0).
fn dx_count_off(lblk: u64) -> usize {
    if lblk == 0 {
        0x20
    } else {
        8
    }
}

/// Sets the checksum of an htree root or node block.
pub(super) fn set_dx_csum(b: &mut [u8], lblk: u64, seed: u32) {
    let co = dx_count_off(lblk);
    let limit = usize::from(le16(b, co));
    let count = usize::from(le16(b, co + 2));
    let tail = co + limit * 8;
    if count > limit || tail + 8 > b.len() {
        return;
    }
    let c = csum::raw(seed, &b[..co + count * 8]);
    let c = csum::raw(c, &b[tail..tail + 4]);
    let c = csum::raw(c, &[0; 4]);
    put32(b, tail + 4, c);
}

/// True if the block ends in a metadata_csum dirent tail.
pub(super) fn has_tail(b: &[u8]) -> bool {
    let t = b.len() - dir::TAIL_LEN;
    le32(b, t) == 0 && le16(b, t + 4) == 12 && b[t + 6] == 0 && b[t + 7] == 0xDE
}

/// An htree interior node: one empty record spanning the block.
fn is_dx_node(b: &[u8]) -> bool {
    le32(b, 0) == 0 && usize::from(le16(b, 4)) == b.len() && b[6] == 0
}

/// inode -> (directory, name) of the first entry naming it, from every directory block
/// (records read as far as they are valid). For paths in findings.
pub(super) fn name_map(c: &Checker) -> HashMap<u32, (u32, Vec<u8>)> {
    let mut m = HashMap::new();
    let ft = c.sb.dirent_filetype();
    for d in &c.dblist {
        let Ok(b) = c.dev.bread(d.pblk) else { continue };
        let _ = dir::walk(&b, ft, c.sb.inodes_count, |r| {
            if r.name != b"." && r.name != b".." {
                m.entry(r.inode).or_insert((d.ino, r.name.to_vec()));
            }
            true
        });
    }
    m
}

impl Checker<'_> {
    pub(super) fn pass2(&mut self) -> KResult<()> {
        self.dblist.sort_unstable();
        self.dblist.dedup();
        let list = std::mem::take(&mut self.dblist);
        let total = list.len() as u64;
        let mut i = 0;
        // Read-ahead: the blocks of the next directories are announced to the host a window
        // at a time (runs of adjacent blocks as one request), so a cold check does not wait
        // on each directory block in turn.
        const RA: usize = 256;
        let mut ra_upto = 0usize;
        let bs = self.bs;
        while i < list.len() {
            if i + RA / 2 >= ra_upto && ra_upto < list.len() {
                let end = (ra_upto.max(i) + RA).min(list.len());
                let mut blks: Vec<u64> = list[ra_upto.max(i)..end].iter().map(|d| d.pblk).collect();
                blks.sort_unstable();
                let mut k = 0;
                while k < blks.len() {
                    let mut n = 1;
                    while k + n < blks.len() && blks[k + n] <= blks[k].saturating_add(n as u64) && n < 64 {
                        n += 1;
                    }
                    let last = blks[k + n - 1];
                    self.dev.device().will_need(blks[k].saturating_mul(bs), (last - blks[k] + 1).saturating_mul(bs));
                    k += n;
                }
                ra_upto = end;
            }
            let ino = list[i].ino;
            let mut j = i;
            while j < list.len() && list[j].ino == ino {
                j += 1;
            }
            if self.kind[ino as usize] == kind::DIR {
                self.progress(PH, i as u64, total);
                self.dir2(ino, &list[i..j])?;
            }
            i = j;
        }
        // Blocks of directories cleared meanwhile are gone from the list.
        self.dblist = list.into_iter().filter(|d| self.kind[d.ino as usize] == kind::DIR).collect();
        Ok(())
    }

    /// One directory's blocks.
    fn dir2(&mut self, ino: u32, blocks: &[DirBlock]) -> KResult<()> {
        let raw = self.read_inode_raw(ino)?;
        let seed = self.inode_seed(ino, &raw);
        let mut indexed = le32(&raw, ifield::FLAGS) & flags::INDEX != 0;
        let mut convert = false;
        if indexed {
            if let Some(why) = self.dx_invalid(ino, blocks) {
                let mut p = self.problem(
                    Level::Preen,
                    PH,
                    format!("directory inode {ino}"),
                    format!("htree index is invalid: {why}"),
                    Some("clear the htree index"),
                );
                p.finding.path = self.path_of(ino);
                let ok = self.want(&p)
                    && self.modify_inode(ino, |r| put32(r, ifield::FLAGS, le32(r, ifield::FLAGS) & !flags::INDEX)).is_ok();
                self.done(p, ok);
                if ok {
                    indexed = false;
                    convert = self.sb.metadata_csum();
                }
            }
        }
        for d in blocks {
            self.block2(ino, d, seed, indexed, convert)?;
        }
        Ok(())
    }

    /// Why an htree root (and its nodes) cannot be right, if so.
    fn dx_invalid(&mut self, _ino: u32, blocks: &[DirBlock]) -> Option<String> {
        let bs = self.bs as usize;
        let csum = self.sb.metadata_csum();
        let tail = if csum { 8 } else { 0 };
        let map: HashMap<u64, u64> = blocks.iter().map(|d| (d.lblk, d.pblk)).collect();
        let nblocks = blocks.iter().map(|d| d.lblk + 1).max().unwrap_or(0);
        let root = map.get(&0)?;
        let b = self.dev.bread(*root).ok()?;
        if le16(&b, 4) != 12 || usize::from(le16(&b, 16)) != bs - 12 || b[8] != b'.' || &b[20..22] != b".." {
            return Some("the root block does not start with '.' and '..' records".into());
        }
        let (hash, info_len, levels, fl) = (b[0x1C], b[0x1D], b[0x1E], b[0x1F]);
        let max_levels = if self.sb.has_incompat(incompat::LARGEDIR) { 3 } else { 2 };
        if le32(&b, 0x18) != 0 {
            return Some("reserved field of the root is not zero".into());
        }
        if hash > 5 {
            return Some(format!("unsupported hash version {hash}"));
        }
        if info_len != 8 {
            return Some(format!("root info length {info_len} (should be 8)"));
        }
        if levels >= max_levels {
            return Some(format!("{} levels (at most {max_levels})", levels + 1));
        }
        if fl != 0 {
            return Some(format!("unknown root flags 0x{fl:x}"));
        }
        let mut frontier = vec![(0u64, 0x20usize, bs - 0x20 - tail)];
        for level in 0..=levels {
            let mut next = Vec::new();
            for (lblk, co, room) in frontier {
                let blk = if lblk == 0 { *root } else { *map.get(&lblk)? };
                let nb = self.dev.bread(blk).ok()?;
                if lblk != 0 && !is_dx_node(&nb) {
                    return Some(format!("index node at block {lblk} is not an index node"));
                }
                let limit = usize::from(le16(&nb, co));
                let count = usize::from(le16(&nb, co + 2));
                if limit != room / 8 {
                    return Some(format!("block {lblk}: limit {limit}, should be {}", room / 8));
                }
                if count == 0 || count > limit {
                    return Some(format!("block {lblk}: count {count} with limit {limit}"));
                }
                let mut prev_hash = 0u32;
                for e in 0..count {
                    let off = co + 8 * e;
                    let h = if e == 0 { 0 } else { le32(&nb, off) };
                    let child = u64::from(le32(&nb, off + 4));
                    if e > 0 && h < prev_hash {
                        return Some(format!("block {lblk}: hashes out of order"));
                    }
                    prev_hash = h;
                    if child >= nblocks || child == 0 {
                        return Some(format!("block {lblk} points to block {child}, outside the directory"));
                    }
                    if level < levels {
                        next.push((child, 8, bs - 8 - tail));
                    }
                }
            }
            if next.len() > 1 << 16 {
                return Some("too many index nodes".into());
            }
            frontier = next;
        }
        None
    }

    /// One directory block.
    fn block2(&mut self, dirino: u32, d: &DirBlock, seed: u32, indexed: bool, convert: bool) -> KResult<()> {
        let bs = self.bs as usize;
        let csum = self.sb.metadata_csum();
        let filetype = self.sb.has_incompat(incompat::FILETYPE);
        let obj = format!("directory inode {dirino}, block {}", d.lblk);
        let mut b = self.dev.bread(d.pblk)?.to_vec();
        let mut changed = false;
        let dx_root = indexed && d.lblk == 0;
        let dx_node = indexed && d.lblk != 0 && is_dx_node(&b);
        // Former index blocks become ordinary blocks with a tail.
        if convert && (d.lblk == 0 || is_dx_node(&b)) && !has_tail(&b) {
            if d.lblk == 0 {
                if le16(&b, 4) == 12 && usize::from(le16(&b, 16)) == bs - 12 {
                    put16(&mut b, 16, (bs - 12 - dir::TAIL_LEN) as u16);
                    b[24..bs - dir::TAIL_LEN].fill(0);
                    update::set_dir_tail(&mut b, seed);
                    changed = true;
                }
            } else {
                b.fill(0);
                put16(&mut b, 4, (bs - dir::TAIL_LEN) as u16);
                update::set_dir_tail(&mut b, seed);
                changed = true;
            }
        }
        if dx_node {
            if csum {
                if let Err(m) = dir::verify(&b, d.lblk, seed, true) {
                    let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the checksum"));
                    if self.want(&p) {
                        set_dx_csum(&mut b, d.lblk, seed);
                        let r = self.bwrite(d.pblk, b);
                        self.done(p, r.is_ok());
                    } else {
                        self.unfixed(p);
                    }
                }
            }
            return Ok(());
        }
        let mut tail = false;
        if csum && !dx_root {
            if has_tail(&b) {
                tail = true;
                if let Err(m) = dir::verify(&b, d.lblk, seed, false) {
                    let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the checksum"));
                    if self.want(&p) {
                        changed = true;
                        self.done(p, true);
                    } else {
                        self.unfixed(p);
                    }
                }
            } else {
                let p = self.problem(Level::Preen, PH, obj.clone(), "directory block has no checksum tail".into(), Some("add the tail"));
                let room = last_slack(&b, bs);
                if room.is_some() && self.want(&p) {
                    if let Some((pos, _)) = room {
                        let rl = usize::from(le16(&b, pos + 4));
                        put16(&mut b, pos + 4, (rl - dir::TAIL_LEN) as u16);
                        tail = true;
                        changed = true;
                    }
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
        }
        if csum && dx_root {
            if let Err(m) = dir::verify(&b, 0, seed, true) {
                let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the checksum"));
                if self.want(&p) {
                    changed = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
        }
        let limit = if tail { bs - dir::TAIL_LEN } else { bs };
        let mut pos = 0usize;
        let mut prev: Option<usize> = None;
        let mut index = 0usize;
        let mut rounds = 0usize;
        while pos < limit && rounds <= bs / 4 {
            rounds += 1;
            let left = limit - pos;
            let ino = le32(&b, pos);
            let rl = usize::from(le16(&b, pos + 4));
            let nl = if filetype { usize::from(b[pos + 6]) } else { usize::from(le16(&b, pos + 6)) };
            let ok_len = left >= 8 && rl >= MIN_REC && rl % 4 == 0 && rl <= left && 8 + nl <= rl;
            if !ok_len {
                let m = format!("entry at offset {pos}: rec_len {rl}, name_len {nl} is invalid");
                let p = self.problem(Level::Yes, PH, obj.clone(), m, Some("salvage the block"));
                if self.want(&p) {
                    if left >= MIN_REC && (ino == 0 || 8 + nl <= left) {
                        // This record takes the rest of the block.
                        put16(&mut b, pos + 4, left as u16);
                        if 8 + nl > left || nl == 0 {
                            put32(&mut b, pos, 0);
                            b[pos + 6] = 0;
                            b[pos + 7] = 0;
                        }
                    } else if let Some(pp) = prev {
                        put16(&mut b, pp + 4, (limit - pp) as u16);
                        changed = true;
                        self.done(p, true);
                        break;
                    } else {
                        put32(&mut b, pos, 0);
                        put16(&mut b, pos + 4, left as u16);
                        b[pos + 6] = 0;
                        b[pos + 7] = 0;
                    }
                    changed = true;
                    self.done(p, true);
                    continue;
                }
                self.unfixed(p);
                break;
            }
            let first = d.lblk == 0 && index == 0;
            let second = d.lblk == 0 && index == 1;
            if first {
                changed |= self.dot(dirino, &mut b, pos, rl, &obj)?;
            } else if second {
                changed |= self.dotdot(dirino, d.pblk, &mut b, pos, &obj)?;
            } else if ino != 0 {
                changed |= self.entry2(dirino, &mut b, pos, nl, filetype, &obj)?;
            }
            index += 1;
            prev = Some(pos);
            pos += usize::from(le16(&b, pos + 4)).max(MIN_REC);
        }
        if changed {
            if dx_root {
                set_dx_csum(&mut b, 0, seed);
            } else if tail {
                update::set_dir_tail(&mut b, seed);
            }
            self.bwrite(d.pblk, b)?;
        }
        Ok(())
    }

    /// The first record must be `.` naming the directory itself.
    fn dot(&mut self, dirino: u32, b: &mut [u8], pos: usize, rl: usize, obj: &str) -> KResult<bool> {
        let ino = le32(b, pos);
        let nl = usize::from(b[pos + 6]);
        let mut changed = false;
        if ino == 0 || nl != 1 || b[pos + 8] != b'.' {
            let p = self.problem(Level::Preen, PH, obj.into(), "first entry is not '.'".into(), Some("make it '.'"));
            if self.want(&p) {
                put32(b, pos, dirino);
                b[pos + 6] = 1;
                b[pos + 7] = if self.sb.has_incompat(incompat::FILETYPE) { 2 } else { 0 };
                b[pos + 8] = b'.';
                b[pos + 9..pos + 12].fill(0);
                if rl >= 2 * MIN_REC {
                    put16(b, pos + 4, MIN_REC as u16);
                    let n = pos + MIN_REC;
                    put32(b, n, 0);
                    put16(b, n + 4, (rl - MIN_REC) as u16);
                    b[n + 6] = 0;
                    b[n + 7] = 0;
                }
                changed = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
                return Ok(false);
            }
        } else if ino != dirino {
            let p = self.problem(Level::Preen, PH, obj.into(), format!("'.' names inode {ino}"), Some(&format!("point it at {dirino}")));
            if self.want(&p) {
                put32(b, pos, dirino);
                changed = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
                return Ok(false);
            }
        }
        self.count_link(dirino);
        Ok(changed)
    }

    /// The second record must be `..` (its target is checked in pass 3).
    fn dotdot(&mut self, dirino: u32, pblk: u64, b: &mut [u8], pos: usize, obj: &str) -> KResult<bool> {
        let ino = le32(b, pos);
        let nl = usize::from(b[pos + 6]);
        let mut changed = false;
        let mut target = ino;
        if nl != 2 || &b[pos + 8..pos + 10] != b".." {
            let p = self.problem(Level::Preen, PH, obj.into(), "second entry is not '..'".into(), Some("make it '..'"));
            if self.want(&p) {
                put32(b, pos, 0);
                b[pos + 6] = 2;
                b[pos + 7] = if self.sb.has_incompat(incompat::FILETYPE) { 2 } else { 0 };
                b[pos + 8] = b'.';
                b[pos + 9] = b'.';
                b[pos + 10..pos + 12].fill(0);
                target = 0;
                changed = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
                return Ok(false);
            }
        }
        if let Some(di) = self.dirs.get_mut(&dirino) {
            di.dotdot = target;
            di.dotdot_at = Some((pblk, pos));
        }
        Ok(changed)
    }

    fn count_link(&mut self, ino: u32) {
        let l = &mut self.links[ino as usize];
        *l = l.saturating_add(1);
    }

    /// Any other live entry.
    fn entry2(&mut self, dirino: u32, b: &mut [u8], pos: usize, nl: usize, filetype: bool, obj: &str) -> KResult<bool> {
        let ino = le32(b, pos);
        let name = b[pos + 8..pos + 8 + nl].to_vec();
        let shown = String::from_utf8_lossy(&name).into_owned();
        let k = if ino as usize >= self.kind.len() { kind::FREE } else { self.kind[ino as usize] };
        let (level, why) = if nl == 0 {
            (Level::Yes, Some("has an empty name".to_string()))
        } else if name == b"." || name == b".." {
            (Level::Yes, Some(format!("is a second '{shown}' entry")))
        } else if ino > self.sb.inodes_count || (ino < self.sb.first_ino && ino != ROOT_INO) {
            (Level::Yes, Some(format!("names bad inode number {ino}")))
        } else if ino == ROOT_INO {
            (Level::Yes, Some("is a link to the root directory".into()))
        } else if k == kind::FREE {
            (Level::Preen, Some(format!("names deleted or unused inode {ino}")))
        } else if k == kind::DIR && self.dirs.get(&ino).is_some_and(|d| d.parent != 0) {
            let first = self.dirs.get(&ino).map_or(0, |d| d.parent);
            (Level::Yes, Some(format!("is a second link to directory {ino} (first in directory {first})")))
        } else {
            (Level::Never, None)
        };
        if let Some(why) = why {
            let mut p = self.problem(level, PH, obj.into(), format!("entry '{shown}' {why}"), Some("clear the entry"));
            p.finding.path = self.path_of(dirino).map(|d| format!("{}/{shown}", d.trim_end_matches('/')));
            if self.want(&p) {
                put32(b, pos, 0);
                self.done(p, true);
                return Ok(true);
            }
            self.unfixed(p);
            if k == kind::FREE || ino > self.sb.inodes_count {
                return Ok(false);
            }
        }
        let mut changed = false;
        if name.iter().any(|&c| c == b'/' || c == 0) {
            let p = self.problem(Level::Yes, PH, obj.into(), format!("entry '{shown}' has '/' or NUL in its name"), Some("replace them with '.'"));
            if self.want(&p) {
                for c in &mut b[pos + 8..pos + 8 + nl] {
                    if *c == b'/' || *c == 0 {
                        *c = b'.';
                    }
                }
                changed = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        if filetype {
            let want = k & kind::TYPE_MASK;
            let want = if want == kind::RESERVED { 0 } else { want };
            let have = b[pos + 7];
            if have != want {
                let p = self.problem(
                    Level::Preen,
                    PH,
                    obj.into(),
                    format!("entry '{shown}' (inode {ino}) has file type {have}, should be {want}"),
                    Some("set the file type"),
                );
                if self.want(&p) {
                    b[pos + 7] = want;
                    changed = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
        }
        self.count_link(ino);
        if k == kind::DIR {
            if let Some(di) = self.dirs.get_mut(&ino) {
                if di.parent == 0 {
                    di.parent = dirino;
                }
            }
            if dirino == ROOT_INO && name == b"lost+found" && self.lost_found == 0 {
                self.lost_found = ino;
            }
        }
        Ok(changed)
    }
}

/// The last record of a block if it has 12 spare bytes for a tail: (offset, rec_len).
fn last_slack(b: &[u8], bs: usize) -> Option<(usize, usize)> {
    let mut pos = 0;
    let mut last = None;
    for _ in 0..bs / 8 {
        if pos + 8 > bs {
            return None;
        }
        let rl = usize::from(le16(b, pos + 4));
        if rl < 8 || pos + rl > bs {
            return None;
        }
        last = Some((pos, rl));
        pos += rl;
        if pos == bs {
            break;
        }
    }
    let (p, rl) = last?;
    let used = if le32(b, p) == 0 { 8 } else { rec_need(usize::from(b[p + 6])) };
    (pos == bs && rl >= used + dir::TAIL_LEN && rl - dir::TAIL_LEN >= MIN_REC).then_some((p, rl))
}
