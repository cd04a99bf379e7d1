//! Pass 3: connectivity: every directory reachable from the root (unreachable ones are
//! reconnected to lost+found, created when missing), `..` naming the parent. Pass 4: link
//! counts; unreferenced files reconnected (or cleared when empty or already unlinked);
//! bad inodes whose entries are gone cleared.

use super::{st, Checker, DirInfo, Level, Reporter, CHUNK};
use crate::ffs::dir::{self, kind_dtype};
use crate::ffs::inode::Inode;
use crate::ffs::superblock::{NDADDR, NIADDR, ROOTINO};
use std::collections::HashMap;
use vfs_faction::{Errno, FileType, KResult};

const PH3: &str = "Pass 3: connectivity";
const PH4: &str = "Pass 4: reference counts";
const LOST_FOUND: &[u8] = b"lost+found";

impl<'a> Checker<'a> {
    pub(super) fn pass3(&mut self) -> KResult<()> {
        let root_ok = self.dirs.contains_key(&ROOTINO);
        if !root_ok {
            let m = "the root inode is not a usable directory".to_string();
            let p = self.problem(Level::Never, PH3, format!("inode {ROOTINO}"), m, None);
            self.done(p, false);
            return Ok(());
        }
        if let Some(r) = self.dirs.get_mut(&ROOTINO) {
            r.parent = ROOTINO;
        }
        // 1: reachable, 2: dealt with (reported).
        let mut status: HashMap<u32, u8> = HashMap::new();
        status.insert(ROOTINO, 1);
        let mut dirs: Vec<u32> = self.dirs.keys().copied().collect();
        dirs.sort_unstable();
        for &d in &dirs {
            let mut path = Vec::new();
            let mut cur = d;
            let outcome = loop {
                if let Some(&s) = status.get(&cur) {
                    break s;
                }
                if path.contains(&cur) || path.len() > dirs.len() {
                    break 0;
                }
                path.push(cur);
                let parent = self.dirs.get(&cur).map_or(0, |i| i.parent);
                if parent == 0 {
                    break 0;
                }
                cur = parent;
            };
            if outcome == 0 {
                // The top of the unreachable chain is reconnected.
                let top = *path.last().unwrap_or(&d);
                let m = "directory is not reachable from the root".to_string();
                let p = self.problem_ino(Level::Preen, PH3, top, m, Some("reconnect it to /lost+found"));
                let ok = self.fix_with(p, |c| c.linkup(top, true));
                for x in path {
                    status.insert(x, if ok { 1 } else { 2 });
                }
            } else {
                for x in path {
                    status.insert(x, outcome);
                }
            }
        }
        // `..` of every directory.
        for d in dirs {
            let Some(info) = self.dirs.get(&d).copied() else { continue };
            if info.parent == 0 || info.dotdot == info.parent {
                continue;
            }
            let m = format!("'..' names inode {}, the parent is {}", info.dotdot, info.parent);
            match info.dotdot_at {
                Some(at) => {
                    let p = self.problem_ino(Level::Preen, PH3, d, m, Some("fix it"));
                    self.fix_with(p, |c| c.set_dotdot(d, at, info, info.parent));
                }
                None => {
                    let p = self.problem_ino(Level::Never, PH3, d, format!("{m}; there is no '..' record"), None);
                    self.done(p, false);
                }
            }
        }
        Ok(())
    }

    /// Points `..` of directory `d` (record at `at`) at `to`.
    fn set_dotdot(&mut self, d: u32, at: (u64, usize), info: DirInfo, to: u32) -> KResult<()> {
        let mut b = self.dev.bread(at.0)?.to_vec();
        dir::set_ino(&mut b, at.1, self.sb.order, self.sb.fmt44, to, kind_dtype(FileType::Directory));
        self.bwrite(at.0, b)?;
        if info.dotdot_counted && info.dotdot != 0 {
            let o = &mut self.found[info.dotdot as usize];
            *o = o.saturating_sub(1);
        }
        self.found[to as usize] = self.found[to as usize].saturating_add(1);
        if let Some(i) = self.dirs.get_mut(&d) {
            i.dotdot = to;
            i.dotdot_counted = true;
        }
        Ok(())
    }

    /// Enters `ino` in lost+found as `#ino` (a directory's `..` then names lost+found).
    fn linkup(&mut self, ino: u32, is_dir: bool) -> KResult<()> {
        let lf = self.lost_found()?;
        if lf == ino {
            return Err(Errno::EINVAL);
        }
        let dtype = if is_dir { kind_dtype(FileType::Directory) } else { self.state[ino as usize] & st::TYPE };
        self.dir_add(lf, format!("#{ino}").as_bytes(), ino, dtype)?;
        self.found[ino as usize] = self.found[ino as usize].saturating_add(1);
        if is_dir {
            if let Some(info) = self.dirs.get(&ino).copied() {
                if let Some(at) = info.dotdot_at {
                    if info.dotdot != lf {
                        self.set_dotdot(ino, at, info, lf)?;
                    }
                }
            }
            if let Some(i) = self.dirs.get_mut(&ino) {
                i.parent = lf;
            }
        }
        Ok(())
    }

    /// lost+found in the root: found, or made.
    fn lost_found(&mut self) -> KResult<u32> {
        if self.lost_found != 0 {
            return Ok(self.lost_found);
        }
        if let Some(i) = self.dir_lookup(ROOTINO, LOST_FOUND)? {
            let s = self.state.get(i as usize).copied().unwrap_or(0);
            if s & st::TYPE == st::DIR && s & (st::BAD | st::CLEAR) == 0 {
                self.lost_found = i;
                return Ok(i);
            }
            return Err(Errno::ENOTDIR);
        }
        // Make it: one block of empty chunks with `.` and `..`.
        let ino = self.alloc_inode()?;
        let blk = self.alloc_block()?;
        let o = self.sb.order;
        let fmt44 = self.sb.fmt44;
        let bs = self.sb.bsize as usize;
        let fs = self.sb.fsize as usize;
        let dt = kind_dtype(FileType::Directory);
        let mut data = Vec::with_capacity(bs);
        for _ in 0..bs / CHUNK {
            data.extend_from_slice(&dir::empty_chunk(o));
        }
        dir::put_record(&mut data, 0, o, fmt44, ino, 12, dt, b".");
        dir::put_record(&mut data, 12, o, fmt44, ROOTINO, CHUNK - 12, dt, b"..");
        for (k, c) in data.chunks(fs).enumerate() {
            self.bwrite(blk + k as u64, c.to_vec())?;
        }
        let old = self.read_inode_raw(ino)?;
        let gen_at = if self.sb.ufs2 { 80 } else { 108 };
        let mut raw = vec![0u8; self.sb.isize()];
        o.put_u32(&mut raw, gen_at, o.u32(&old, gen_at).wrapping_add(1));
        let mut db = [0u64; NDADDR];
        db[0] = blk;
        let mut inode = Inode {
            mode: 0o040700,
            kind: FileType::Directory,
            nlink: 2,
            uid: 0,
            gid: 0,
            size: bs as u64,
            blocks: bs as u64 / 512,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            birthtime: self.sb.ufs2.then_some(self.now),
            flags: 0,
            gen: o.u32(&old, gen_at).wrapping_add(1),
            db,
            ib: [0; NIADDR],
            extsize: 0,
            extb: [0; 2],
            raw,
        };
        self.write_inode(ino, &mut inode)?;
        self.state[ino as usize] = dt;
        self.nlink[ino as usize] = 2;
        self.found[ino as usize] = 1; // its `.`
        self.found[ROOTINO as usize] = self.found[ROOTINO as usize].saturating_add(1);
        self.dirs.insert(ino, DirInfo { parent: ROOTINO, dotdot: ROOTINO, dotdot_at: Some((blk, 12)), dotdot_counted: true });
        self.lost_found = ino;
        self.dir_add(ROOTINO, LOST_FOUND, ino, dt)?;
        self.found[ino as usize] = self.found[ino as usize].saturating_add(1);
        Ok(ino)
    }

    pub(super) fn pass4(&mut self) -> KResult<()> {
        let n = self.sb.ninodes();
        for ino in ROOTINO..n {
            if ino % 4096 == 0 {
                self.progress(PH4, u64::from(ino), u64::from(n));
            }
            let s = self.state[ino as usize];
            if s == st::FREE {
                continue;
            }
            let found = self.found[ino as usize];
            if s & st::CLEAR != 0 {
                if found == 0 {
                    // Reported (and decided) in pass 1.
                    self.clear_inode(ino)?;
                } else {
                    self.state[ino as usize] = (s & st::TYPE) | st::BAD;
                }
                continue;
            }
            if s & st::BAD != 0 {
                continue;
            }
            let nlink = self.nlink[ino as usize];
            if found == 0 {
                if s & st::TYPE == st::DIR {
                    continue; // pass 3 reported it
                }
                let Ok(i) = self.read_inode(ino) else { continue };
                // fsck_ffs clears empty ones when preening, reconnects them otherwise.
                if nlink == 0 || (i.size == 0 && self.repair == vfs_faction::Repair::Preen) {
                    let m = if nlink == 0 {
                        "unreferenced inode with link count 0 (removed while open)".to_string()
                    } else {
                        "unreferenced empty file".to_string()
                    };
                    let p = self.problem_ino(Level::Preen, PH4, ino, m, Some("clear it"));
                    self.fix_with(p, |c| c.clear_inode(ino));
                    continue;
                }
                let p = self.problem_ino(Level::Preen, PH4, ino, format!("unreferenced file of {} bytes", i.size), Some("reconnect it to /lost+found"));
                if !self.fix_with(p, |c| c.linkup(ino, false)) {
                    continue;
                }
            }
            self.check_nlink(ino);
        }
        // lost+found made during this pass: it and the root were counted before.
        if self.lost_found != 0 {
            self.check_nlink(ROOTINO);
            self.check_nlink(self.lost_found);
        }
        Ok(())
    }

    fn check_nlink(&mut self, ino: u32) {
        let (found, nlink) = (self.found[ino as usize], self.nlink[ino as usize]);
        if found != nlink {
            let m = format!("link count {nlink}, should be {found}");
            let p = self.problem_ino(Level::Preen, PH4, ino, m, Some("adjust it"));
            if self.fix_with(p, |c| c.modify_inode(ino, |i| i.nlink = found)) {
                self.nlink[ino as usize] = found;
            }
        }
    }
}
