//! Pass 3: connectivity. Every directory must be reachable from the root by its parents;
//! one that is not (or sits in a loop) is reconnected to /lost+found (created if missing),
//! and every `..` must name the parent. Pass 4: link counts against the entries found, and
//! inodes no entry names (reconnected, or cleared when empty).

use super::pass2::{has_tail, rec_need, set_dx_csum};
use super::{kind, put16, put32, Checker, DirBlock, DirInfo, Level, Reporter, ROOT_INO};
use crate::ext2fs::inode::{field as ifield, flags};
use crate::ext2fs::superblock::incompat;
use crate::ext2fs::{dir, update};
use crate::ext2fs::{le16, le32};
use std::collections::HashSet;
use vfs_faction::{Errno, KResult};

const PH3: &str = "Pass 3: directory connectivity";
const PH4: &str = "Pass 4: reference counts";
/// e2fsck's EXT2_LINK_MAX: with dir_nlink, a directory with more links keeps a count of 1.
const LINK_MAX: u16 = 65000;

impl Checker<'_> {
    pub(super) fn pass3(&mut self) -> KResult<()> {
        if self.kind[ROOT_INO as usize] != kind::DIR {
            let p = self.problem(
                Level::Never,
                PH3,
                "inode 2".into(),
                "the root directory is missing or invalid; connectivity cannot be checked".into(),
                None,
            );
            self.unfixed(p);
            return Ok(());
        }
        if let Some(r) = self.dirs.get_mut(&ROOT_INO) {
            r.parent = ROOT_INO;
        }
        let mut all: Vec<u32> = self.dirs.keys().copied().collect();
        all.sort_unstable();
        let mut done: HashSet<u32> = HashSet::new();
        done.insert(ROOT_INO);
        let total = all.len() as u64;
        for (n, &d) in all.iter().enumerate() {
            if n % 1024 == 0 {
                self.progress(PH3, n as u64, total);
            }
            if done.contains(&d) {
                continue;
            }
            let mut chain = Vec::new();
            let mut inchain = HashSet::new();
            let mut cur = d;
            let mut lost = None;
            loop {
                if done.contains(&cur) {
                    break;
                }
                if !inchain.insert(cur) {
                    lost = Some(d);
                    break;
                }
                chain.push(cur);
                let p = self.dirs.get(&cur).map_or(0, |i| i.parent);
                if p == 0 || !self.dirs.contains_key(&p) {
                    lost = Some(cur);
                    break;
                }
                cur = p;
            }
            if let Some(u) = lost {
                let was = self.dirs.get(&u).map_or(0, |i| i.dotdot);
                let p = self.problem(
                    Level::Preen,
                    PH3,
                    format!("directory inode {u}"),
                    format!("is not connected to the root (its '..' names {was})"),
                    Some("connect it to /lost+found"),
                );
                if self.want(&p) {
                    let r = self.reconnect(u, true);
                    self.done(p, r.is_ok());
                } else {
                    self.unfixed(p);
                }
            }
            done.extend(chain);
        }
        // Every '..' names the parent.
        let mut all: Vec<u32> = self.dirs.keys().copied().collect();
        all.sort_unstable();
        for d in all {
            let Some(info) = self.dirs.get(&d).copied() else { continue };
            let want = info.parent;
            let have = info.dotdot;
            if want == 0 {
                if have != 0 && self.kind.get(have as usize) == Some(&kind::DIR) {
                    self.links[have as usize] = self.links[have as usize].saturating_add(1);
                }
                continue;
            }
            if have == want {
                self.links[want as usize] = self.links[want as usize].saturating_add(1);
                continue;
            }
            let mut p = self.problem(
                Level::Preen,
                PH3,
                format!("directory inode {d}"),
                format!("'..' is {have}, should be {want}"),
                Some("fix '..'"),
            );
            p.finding.path = self.path_of(d);
            let fixed = match info.dotdot_at {
                Some(at) if self.want(&p) => self.set_dotdot(d, at, want).is_ok(),
                _ => false,
            };
            self.done(p, fixed);
            let target = if fixed { want } else { have };
            if target != 0 && self.kind.get(target as usize) == Some(&kind::DIR) {
                self.links[target as usize] = self.links[target as usize].saturating_add(1);
            }
            if fixed {
                if let Some(i) = self.dirs.get_mut(&d) {
                    i.dotdot = want;
                }
            }
        }
        Ok(())
    }

    fn set_dotdot(&mut self, d: u32, (blk, pos): (u64, usize), parent: u32) -> KResult<()> {
        let raw = self.read_inode_raw(d)?;
        let seed = self.inode_seed(d, &raw);
        let indexed = le32(&raw, ifield::FLAGS) & flags::INDEX != 0;
        let mut b = self.dev.bread(blk)?.to_vec();
        put32(&mut b, pos, parent);
        if self.sb.has_incompat(incompat::FILETYPE) {
            b[pos + 7] = 2;
        }
        self.seal_dir_block(&mut b, 0, seed, indexed);
        self.bwrite(blk, b)
    }

    /// Sets the checksum of a directory block about to be written.
    fn seal_dir_block(&self, b: &mut [u8], lblk: u64, seed: u32, indexed: bool) {
        if !self.sb.metadata_csum() {
            return;
        }
        if has_tail(b) {
            update::set_dir_tail(b, seed);
        } else if indexed {
            set_dx_csum(b, lblk, seed);
        }
    }

    /// Gives inode `ino` an entry `#ino` in /lost+found (created if needed).
    fn reconnect(&mut self, ino: u32, is_dir: bool) -> KResult<()> {
        if self.lost_found == 0 {
            let p = self.problem(Level::Preen, PH3, "/lost+found".into(), "not found".into(), Some("create it"));
            if self.want(&p) {
                let r = self.make_lost_found();
                let ok = r.is_ok();
                self.done(p, ok);
                r?;
            } else {
                self.unfixed(p);
                return Err(Errno::ENOENT);
            }
        }
        let lf = self.lost_found;
        let name = format!("#{ino}");
        let ft = self.kind[ino as usize] & kind::TYPE_MASK;
        self.add_entry(lf, name.as_bytes(), ino, ft)?;
        self.links[ino as usize] = self.links[ino as usize].saturating_add(1);
        if is_dir {
            if let Some(i) = self.dirs.get_mut(&ino) {
                i.parent = lf;
            }
        }
        if let Some(names) = self.names.as_mut() {
            names.insert(ino, (lf, name.into_bytes()));
        }
        Ok(())
    }

    /// Creates /lost+found (one block; mode 0700).
    fn make_lost_found(&mut self) -> KResult<()> {
        let bs = self.bs as usize;
        let ino = self.alloc_inode(true)?;
        let goal = self.groups[((ino - 1) / self.sb.inodes_per_group) as usize].inode_table();
        let (blk, _) = self.alloc_blocks(goal, 1)?;
        let mut raw = vec![0u8; self.sb.inode_size as usize];
        put16(&mut raw, ifield::MODE, 0o40700);
        put16(&mut raw, ifield::LINKS, 2);
        put32(&mut raw, ifield::SIZE_LO, bs as u32);
        for off in [ifield::ATIME, ifield::CTIME, ifield::MTIME] {
            put32(&mut raw, off, self.now);
        }
        put32(&mut raw, ifield::BLOCKS_LO, (bs / 512) as u32);
        if raw.len() > 128 {
            let extra = 32.min(raw.len() as u16 - 128);
            put16(&mut raw, ifield::EXTRA_ISIZE, extra);
        }
        let node = &mut raw[ifield::BLOCK..ifield::BLOCK + 60];
        if self.sb.has_incompat(incompat::EXTENTS) {
            put16(node, 0, 0xF30A);
            put16(node, 2, 1);
            put16(node, 4, 4);
            put32(node, 12, 0);
            put16(node, 16, 1);
            put16(node, 18, (blk >> 32) as u16);
            put32(node, 20, blk as u32);
            put32(&mut raw, ifield::FLAGS, flags::EXTENTS);
        } else {
            put32(node, 0, blk as u32);
        }
        self.write_inode_raw(ino, &mut raw)?;
        let seed = self.inode_seed(ino, &raw);
        let csum = self.sb.metadata_csum();
        let limit = if csum { bs - dir::TAIL_LEN } else { bs };
        let ft = if self.sb.has_incompat(incompat::FILETYPE) { 2 } else { 0 };
        let mut b = vec![0u8; bs];
        put32(&mut b, 0, ino);
        put16(&mut b, 4, 12);
        b[6] = 1;
        b[7] = ft;
        b[8] = b'.';
        put32(&mut b, 12, ROOT_INO);
        put16(&mut b, 16, (limit - 12) as u16);
        b[18] = 2;
        b[19] = ft;
        b[20] = b'.';
        b[21] = b'.';
        if csum {
            update::set_dir_tail(&mut b, seed);
        }
        self.bwrite(blk, b)?;
        self.kind[ino as usize] = kind::DIR;
        self.links_disk[ino as usize] = 2;
        self.links[ino as usize] = 1;
        self.dirs.insert(ino, DirInfo { parent: ROOT_INO, dotdot: ROOT_INO, dotdot_at: Some((blk, 12)) });
        self.dblist.push(DirBlock { ino, lblk: 0, pblk: blk });
        self.add_entry(ROOT_INO, b"lost+found", ino, 2)?;
        self.links[ino as usize] += 1;
        self.lost_found = ino;
        Ok(())
    }

    /// Adds entry `name` -> `ino` to directory `dirino`: into a record with room, else into
    /// a new block appended to the directory.
    fn add_entry(&mut self, dirino: u32, name: &[u8], ino: u32, ft: u8) -> KResult<()> {
        let bs = self.bs as usize;
        let need = rec_need(name.len());
        let mut raw = self.read_inode_raw(dirino)?;
        if le32(&raw, ifield::FLAGS) & flags::INDEX != 0 {
            // An entry out of hash order would break the index.
            return Err(Errno::EOPNOTSUPP);
        }
        let seed = self.inode_seed(dirino, &raw);
        let csum = self.sb.metadata_csum();
        let limit = if csum { bs - dir::TAIL_LEN } else { bs };
        let ft = if self.sb.has_incompat(incompat::FILETYPE) { ft } else { 0 };
        let mut blocks: Vec<DirBlock> = self.dblist.iter().filter(|d| d.ino == dirino).copied().collect();
        blocks.sort_unstable();
        let put = |b: &mut [u8], pos: usize, rl: usize| {
            put32(b, pos, ino);
            put16(b, pos + 4, rl as u16);
            b[pos + 6] = name.len() as u8;
            b[pos + 7] = ft;
            b[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
        };
        for d in &blocks {
            let mut b = self.dev.bread(d.pblk)?.to_vec();
            if csum && !has_tail(&b) {
                continue;
            }
            let mut pos = 0;
            while pos + 8 <= limit {
                let rl = usize::from(le16(&b, pos + 4));
                if rl < 12 || pos + rl > limit {
                    break;
                }
                let live = le32(&b, pos) != 0;
                let used = if live { rec_need(usize::from(b[pos + 6])) } else { 0 };
                if rl >= used + need {
                    if used == 0 {
                        put(&mut b, pos, rl);
                    } else {
                        put16(&mut b, pos + 4, used as u16);
                        put(&mut b, pos + used, rl - used);
                    }
                    if csum {
                        update::set_dir_tail(&mut b, seed);
                    }
                    return self.bwrite(d.pblk, b);
                }
                pos += rl;
            }
        }
        // A new block at the end.
        let size = u64::from(le32(&raw, ifield::SIZE_LO));
        let lblk = size / self.bs;
        let goal = blocks.last().map_or(0, |d| d.pblk + 1);
        let (blk, _) = self.alloc_blocks(goal, 1)?;
        if le32(&raw, ifield::FLAGS) & flags::EXTENTS != 0 {
            let node = &mut raw[ifield::BLOCK..ifield::BLOCK + 60];
            let entries = usize::from(le16(node, 2));
            let max = usize::from(le16(node, 4));
            if le16(node, 6) != 0 || lblk >= 1 << 32 {
                self.used.clear(blk);
                return Err(Errno::ENOSPC);
            }
            let last = (entries > 0).then(|| 12 + 12 * (entries - 1));
            let extend = last.is_some_and(|e| {
                let l = u64::from(le32(node, e));
                let n = u64::from(le16(node, e + 4));
                let s = u64::from(le32(node, e + 8)) | u64::from(le16(node, e + 6)) << 32;
                l + n == lblk && s + n == blk && n < 32768
            });
            if let (true, Some(e)) = (extend, last) {
                put16(node, e + 4, le16(node, e + 4) + 1);
            } else if entries < max && 12 + 12 * (entries + 1) <= 60 {
                let e = 12 + 12 * entries;
                put32(node, e, lblk as u32);
                put16(node, e + 4, 1);
                put16(node, e + 6, (blk >> 32) as u16);
                put32(node, e + 8, blk as u32);
                put16(node, 2, (entries + 1) as u16);
            } else {
                self.used.clear(blk);
                return Err(Errno::ENOSPC);
            }
        } else if lblk < 12 {
            put32(&mut raw[ifield::BLOCK..ifield::BLOCK + 60], lblk as usize * 4, blk as u32);
        } else {
            self.used.clear(blk);
            return Err(Errno::ENOSPC);
        }
        let mut b = vec![0u8; bs];
        put(&mut b, 0, limit);
        if csum {
            update::set_dir_tail(&mut b, seed);
        }
        self.bwrite(blk, b)?;
        let new_size = size + self.bs;
        put32(&mut raw, ifield::SIZE_LO, new_size as u32);
        let b512 = le32(&raw, ifield::BLOCKS_LO) + (self.bs / 512) as u32;
        put32(&mut raw, ifield::BLOCKS_LO, b512);
        self.write_inode_raw(dirino, &mut raw)?;
        self.dblist.push(DirBlock { ino: dirino, lblk, pblk: blk });
        Ok(())
    }

    pub(super) fn pass4(&mut self) -> KResult<()> {
        let n = self.sb.inodes_count;
        for ino in 1..=n {
            if ino % 8192 == 0 {
                self.progress(PH4, u64::from(ino), u64::from(n));
            }
            if ino < self.sb.first_ino && ino != ROOT_INO {
                continue;
            }
            let k = self.kind[ino as usize];
            if k == kind::FREE || k & kind::BAD != 0 {
                continue;
            }
            let mut counted = self.links[ino as usize];
            if counted == 0 {
                if k == kind::DIR {
                    continue; // pass 3 reported it
                }
                let raw = self.read_inode_raw(ino)?;
                let size = u64::from(le32(&raw, ifield::SIZE_LO)) | u64::from(le32(&raw, ifield::SIZE_HI)) << 32;
                let empty = size == 0 && le32(&raw, ifield::BLOCKS_LO) == 0;
                if empty {
                    let p = self.problem(Level::Preen, PH4, format!("inode {ino}"), "is an unattached zero-length inode".into(), Some("clear it"));
                    self.fix_with(p, |c| c.clear_inode(ino));
                    continue;
                }
                let p = self.problem(
                    Level::Preen,
                    PH4,
                    format!("inode {ino}"),
                    format!("is not in any directory (size {size})"),
                    Some("connect it to /lost+found"),
                );
                if !self.fix_with(p, |c| c.reconnect(ino, false)) {
                    continue;
                }
                counted = self.links[ino as usize];
            }
            let disk = self.links_disk[ino as usize];
            let want = if k == kind::DIR && counted > LINK_MAX { 1 } else { counted };
            if disk != want {
                let mut p = self.problem(
                    Level::Preen,
                    PH4,
                    format!("inode {ino}"),
                    format!("link count is {disk}, should be {want}"),
                    Some("fix the link count"),
                );
                p.finding.path = self.path_of(ino);
                if self.fix_with(p, |c| c.modify_inode(ino, |r| put16(r, ifield::LINKS, want))) {
                    self.links_disk[ino as usize] = want;
                }
            }
        }
        Ok(())
    }
}
