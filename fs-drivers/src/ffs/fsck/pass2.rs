//! Pass 2: directory chunks (`DIRBLKSIZ`): records and names (a bad record truncates its
//! chunk, as fsck_ffs does), `.` and `..`, entries naming inodes out of range, unallocated
//! or bad, extra links to directories, `d_type`. Counts references for pass 4.

use super::pass1::Ev;
use super::{is_dot, st, state_dtype, Checker, Level, Reporter, CHUNK};
use crate::ffs::dir::{self, DT_WHT};
use crate::ffs::inode::Inode;
use crate::ffs::superblock::ROOTINO;
use std::collections::HashMap;
use vfs_faction::{Errno, KResult};

const PH: &str = "Pass 2: directories";

/// One record of a chunk, copied out.
struct Rec {
    pos: usize,
    ino: u32,
    reclen: usize,
    dtype: u8,
    name: Vec<u8>,
}

/// Parses a chunk: its good records, and where the first bad one starts (with why).
fn parse_chunk(c: &Checker<'_>, chunk: &[u8]) -> (Vec<Rec>, Option<(usize, String)>) {
    let mut recs = Vec::new();
    let r = dir::walk_chunk(chunk, c.sb.order, c.sb.fmt44, u32::MAX, &mut |r| {
        recs.push(Rec { pos: r.pos, ino: r.ino, reclen: r.reclen, dtype: r.dtype, name: r.name.to_vec() });
        true
    });
    match r {
        Ok(_) => (recs, None),
        Err(m) => {
            let at = recs.last().map_or(0, |r| r.pos + r.reclen);
            (recs, Some((at, m)))
        }
    }
}

impl<'a> Checker<'a> {
    /// The allocated blocks of directory `i` within its size: (logical block, fragment,
    /// fragments), in logical order.
    pub(super) fn dir_blocks(&self, i: &Inode) -> Vec<(u64, u64, u64)> {
        let mut v = Vec::new();
        let _ = self.walk(i, &mut |ev| {
            if let Ev::Frags { frag, n, lblk, meta: false, past: false } = ev {
                if lblk < u64::MAX - 1 {
                    v.push((lblk, frag, n));
                }
            }
            v.len() < 1 << 22
        });
        v.sort_unstable();
        v
    }

    pub(super) fn pass2(&mut self) -> KResult<()> {
        let mut dirs: Vec<u32> = self.dirs.keys().copied().collect();
        dirs.sort_unstable();
        let total = dirs.len() as u64;
        for (k, d) in dirs.into_iter().enumerate() {
            if k % 256 == 0 {
                self.progress(PH, k as u64, total);
            }
            if self.state[d as usize] & (st::BAD | st::CLEAR) != 0 {
                continue;
            }
            let Ok(inode) = self.read_inode(d) else { continue };
            self.check_dir(d, &inode)?;
        }
        Ok(())
    }

    fn check_dir(&mut self, d: u32, inode: &Inode) -> KResult<()> {
        let bs = u64::from(self.sb.bsize);
        let fs = u64::from(self.sb.fsize);
        let size = inode.size;
        let blocks = self.dir_blocks(inode);
        let mut covered = 0u64;
        let mut hole_reported = false;
        let mut seen_dot = false;
        for (lblk, frag, n) in blocks {
            let start = lblk * bs;
            if start > covered && !hole_reported {
                hole_reported = true;
                let m = format!("directory has a hole at byte {covered} (size {size})");
                let p = self.problem_ino(Level::Never, PH, d, m, None);
                self.done(p, false);
            }
            for k in 0..n {
                let off = start + k * fs;
                if off >= size {
                    break;
                }
                let f = frag + k;
                let mut buf = self.dev.bread(f)?.to_vec();
                let mut changed = false;
                for ci in 0..(fs as usize / CHUNK) {
                    let coff = off + (ci * CHUNK) as u64;
                    if coff >= size {
                        break;
                    }
                    let chunk = &mut buf[ci * CHUNK..(ci + 1) * CHUNK];
                    if coff == 0 {
                        seen_dot = true;
                    }
                    changed |= self.check_chunk(d, coff, f, ci * CHUNK, chunk)?;
                }
                if changed {
                    self.bwrite(f, buf)?;
                }
            }
            covered = covered.max(start + n * fs);
        }
        if !seen_dot {
            let m = format!("directory has no first chunk ('.' and '..' are missing; size {size})");
            let p = self.problem_ino(Level::Never, PH, d, m, None);
            self.done(p, false);
        }
        Ok(())
    }

    /// Checks one chunk of directory `d` at byte `coff` (in fragment `frag` at `base`);
    /// returns whether it changed.
    fn check_chunk(&mut self, d: u32, coff: u64, frag: u64, base: usize, chunk: &mut [u8]) -> KResult<bool> {
        let o = self.sb.order;
        let fmt44 = self.sb.fmt44;
        let mut changed = false;
        let (recs, bad) = parse_chunk(self, chunk);
        if let Some((at, why)) = bad {
            let m = format!("chunk at byte {coff} is corrupted: {why}");
            let p = self.problem_ino(Level::Yes, PH, d, m, Some("end the chunk at the bad record (the entries after it are lost)"));
            if self.want(&p) {
                match recs.last() {
                    Some(last) => dir::set_reclen(chunk, last.pos, o, CHUNK - last.pos),
                    None => chunk.copy_from_slice(&dir::empty_chunk(o)),
                }
                changed = true;
                self.done(p, true);
            } else {
                self.done(p, false);
                let _ = at;
            }
        }
        let recs = if changed { parse_chunk(self, chunk).0 } else { recs };
        let recs = if coff == 0 { self.dots(d, chunk, recs, &mut changed) } else { recs };
        let mut prev_live: Option<usize> = None;
        let ninodes = self.sb.ninodes();
        for (idx, r) in recs.iter().enumerate() {
            let mut remove: Option<(String, Level)> = None;
            if r.ino == 0 || (fmt44 && r.dtype == DT_WHT) {
                prev_live = Some(r.pos);
                continue;
            }
            let first = coff == 0 && idx == 0;
            let second = coff == 0 && idx == 1;
            if first && r.name == b"." {
                if r.ino != d {
                    let m = format!("'.' names inode {}, not itself", r.ino);
                    let p = self.problem_ino(Level::Preen, PH, d, m, Some("fix it"));
                    if self.want(&p) {
                        dir::set_ino(chunk, r.pos, o, fmt44, d, dir::kind_dtype(vfs_faction::FileType::Directory));
                        changed = true;
                        self.done(p, true);
                    } else {
                        self.done(p, false);
                    }
                }
                self.found[d as usize] = self.found[d as usize].saturating_add(1);
                prev_live = Some(r.pos);
                continue;
            }
            if first {
                let m = format!("first entry is {:?}, not '.'", String::from_utf8_lossy(&r.name));
                let p = self.problem_ino(Level::Never, PH, d, m, None);
                self.done(p, false);
            }
            if second && r.name == b".." {
                let counted = r.ino < ninodes && r.ino >= ROOTINO && self.state[r.ino as usize] & st::TYPE == st::DIR;
                if counted {
                    self.found[r.ino as usize] = self.found[r.ino as usize].saturating_add(1);
                }
                if let Some(di) = self.dirs.get_mut(&d) {
                    di.dotdot = r.ino;
                    di.dotdot_at = Some((frag, base + r.pos));
                    di.dotdot_counted = counted;
                }
                prev_live = Some(r.pos);
                continue;
            }
            if second {
                let m = format!("second entry is {:?}, not '..'", String::from_utf8_lossy(&r.name));
                let p = self.problem_ino(Level::Never, PH, d, m, None);
                self.done(p, false);
            }
            let name = String::from_utf8_lossy(&r.name).into_owned();
            let s = if r.ino < ninodes { self.state[r.ino as usize] } else { st::FREE };
            if is_dot(&r.name) {
                remove = Some((format!("extra {name:?} entry"), Level::Yes));
            } else if r.ino < ROOTINO || r.ino >= ninodes {
                remove = Some((format!("entry {name:?} names inode {}, out of range", r.ino), Level::Yes));
            } else if s == st::FREE {
                remove = Some((format!("entry {name:?} names unallocated inode {}", r.ino), Level::Yes));
            } else if s & st::CLEAR != 0 {
                let why = self.bad_why.get(&r.ino).cloned().unwrap_or_default();
                remove = Some((format!("entry {name:?} names bad inode {} ({why})", r.ino), Level::Yes));
            } else if s & st::TYPE == st::DIR && s & st::BAD == 0 {
                let parent = self.dirs.get(&r.ino).map_or(0, |i| i.parent);
                if parent != 0 || r.ino == ROOTINO {
                    remove = Some((format!("entry {name:?} is an extra hard link to directory {}", r.ino), Level::Yes));
                }
            }
            if let Some((m, level)) = remove {
                let p = self.problem_ino(level, PH, d, m, Some("remove the entry"));
                if self.want(&p) {
                    match prev_live {
                        Some(pp) if pp != r.pos => {
                            let prev_len = usize::from(o.u16(chunk, pp + 4));
                            dir::set_reclen(chunk, pp, o, prev_len + r.reclen);
                        }
                        _ => {
                            dir::set_ino(chunk, r.pos, o, fmt44, 0, 0);
                            prev_live = Some(r.pos);
                        }
                    }
                    changed = true;
                    self.names = None;
                    self.done(p, true);
                    continue;
                }
                self.done(p, false);
                if r.ino < ROOTINO || r.ino >= ninodes || s == st::FREE {
                    prev_live = Some(r.pos);
                    continue;
                }
            }
            // A kept entry.
            prev_live = Some(r.pos);
            let want_t = state_dtype(s);
            if fmt44 && want_t != 0 && r.dtype != want_t {
                let m = format!("entry {name:?} has d_type {}, inode {} is of type {want_t}", r.dtype, r.ino);
                let p = self.problem_ino(Level::Preen, PH, d, m, Some("fix it"));
                if self.want(&p) {
                    chunk[r.pos + 6] = want_t;
                    changed = true;
                    self.done(p, true);
                } else {
                    self.done(p, false);
                }
            }
            if s & st::TYPE == st::DIR {
                if let Some(di) = self.dirs.get_mut(&r.ino) {
                    if di.parent == 0 {
                        di.parent = d;
                    }
                }
            }
            self.found[r.ino as usize] = self.found[r.ino as usize].saturating_add(1);
        }
        Ok(changed)
    }

    /// A first chunk without `.` or `..` where there is room for them: they are written
    /// (`..` naming the root; pass 3 points it at the parent). Returns the records now.
    fn dots(&mut self, d: u32, chunk: &mut [u8], recs: Vec<Rec>, changed: &mut bool) -> Vec<Rec> {
        let o = self.sb.order;
        let fmt44 = self.sb.fmt44;
        let dt = dir::kind_dtype(vfs_faction::FileType::Directory);
        let Some(r0) = recs.first() else { return recs };
        let (what, at, room) = if r0.ino == 0 && r0.reclen >= 24 {
            ("'.' and '..' are", 0, r0.reclen)
        } else if r0.ino != 0 && r0.name == b"." && r0.reclen >= 24 {
            ("'..' is", 12, r0.reclen - 12)
        } else if r0.name == b"." && recs.get(1).is_some_and(|r| r.ino == 0 && r.reclen >= 12) {
            ("'..' is", recs[1].pos, recs[1].reclen)
        } else {
            return recs;
        };
        let p = self.problem_ino(Level::Yes, PH, d, format!("{what} missing"), Some("add them"));
        if !self.want(&p) {
            self.done(p, false);
            return recs;
        }
        if at == 0 {
            dir::put_record(chunk, 0, o, fmt44, d, 12, dt, b".");
            dir::put_record(chunk, 12, o, fmt44, ROOTINO, room - 12, dt, b"..");
        } else {
            if at == 12 {
                dir::set_reclen(chunk, 0, o, 12);
            }
            dir::put_record(chunk, at, o, fmt44, ROOTINO, room, dt, b"..");
        }
        *changed = true;
        self.done(p, true);
        parse_chunk(self, chunk).0
    }

    /// Adds entry `name` → `ino` to directory `d` (in a record with room; lost+found grows
    /// by a block when full).
    pub(super) fn dir_add(&mut self, d: u32, name: &[u8], ino: u32, dtype: u8) -> KResult<()> {
        let o = self.sb.order;
        let fmt44 = self.sb.fmt44;
        let need = dir::direct_size(name.len());
        let inode = self.read_inode(d)?;
        let fs = u64::from(self.sb.fsize);
        let bs = u64::from(self.sb.bsize);
        for (lblk, frag, n) in self.dir_blocks(&inode) {
            for k in 0..n {
                let off = lblk * bs + k * fs;
                if off >= inode.size {
                    break;
                }
                let f = frag + k;
                let mut buf = self.dev.bread(f)?.to_vec();
                for ci in 0..(fs as usize / CHUNK) {
                    if off + (ci * CHUNK) as u64 >= inode.size {
                        break;
                    }
                    let chunk = &mut buf[ci * CHUNK..(ci + 1) * CHUNK];
                    let (recs, bad) = parse_chunk(self, chunk);
                    if bad.is_some() {
                        continue;
                    }
                    for r in recs {
                        if r.ino == 0 && r.reclen >= need {
                            dir::put_record(chunk, r.pos, o, fmt44, ino, r.reclen, dtype, name);
                        } else if r.ino != 0 && r.reclen >= dir::direct_size(r.name.len()) + need {
                            let keep = dir::direct_size(r.name.len());
                            dir::set_reclen(chunk, r.pos, o, keep);
                            dir::put_record(chunk, r.pos + keep, o, fmt44, ino, r.reclen - keep, dtype, name);
                        } else {
                            continue;
                        }
                        self.bwrite(f, buf)?;
                        self.names = None;
                        return Ok(());
                    }
                }
            }
        }
        // No room: grow by a block (only a directory of whole blocks with a free direct slot).
        let nb = inode.size / bs;
        if d != self.lost_found || inode.size % bs != 0 || nb >= crate::ffs::superblock::NDADDR as u64 {
            return Err(Errno::ENOSPC);
        }
        let blk = self.alloc_block()?;
        let mut data = Vec::with_capacity(bs as usize);
        for _ in 0..bs as usize / CHUNK {
            data.extend_from_slice(&dir::empty_chunk(o));
        }
        dir::put_record(&mut data[..CHUNK], 0, o, fmt44, ino, CHUNK, dtype, name);
        for (k, c) in data.chunks(fs as usize).enumerate() {
            self.bwrite(blk + k as u64, c.to_vec())?;
        }
        let add = bs / 512;
        self.modify_inode(d, |i| {
            i.db[nb as usize] = blk;
            i.size += bs;
            i.blocks += add;
        })?;
        self.names = None;
        Ok(())
    }

    /// Looks `name` up in directory `d`.
    pub(super) fn dir_lookup(&mut self, d: u32, name: &[u8]) -> KResult<Option<u32>> {
        let inode = self.read_inode(d)?;
        let mut hit = None;
        self.scan_entries(d, &inode, &mut |n, ino| {
            if n == name {
                hit = Some(ino);
                return false;
            }
            true
        })?;
        Ok(hit)
    }

    /// Calls `f(name, ino)` for every live entry of directory `d` (bad chunks skipped).
    fn scan_entries(&self, _d: u32, inode: &Inode, f: &mut dyn FnMut(&[u8], u32) -> bool) -> KResult<()> {
        let fs = u64::from(self.sb.fsize);
        let bs = u64::from(self.sb.bsize);
        for (lblk, frag, n) in self.dir_blocks(inode) {
            for k in 0..n {
                let off = lblk * bs + k * fs;
                if off >= inode.size {
                    break;
                }
                let buf = self.dev.bread(frag + k)?;
                for ci in 0..(fs as usize / CHUNK) {
                    if off + (ci * CHUNK) as u64 >= inode.size {
                        break;
                    }
                    let (recs, _) = parse_chunk(self, &buf[ci * CHUNK..(ci + 1) * CHUNK]);
                    for r in recs {
                        if r.ino != 0 && !(self.sb.fmt44 && r.dtype == DT_WHT) && !f(&r.name, r.ino) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// inode → (parent directory, name), from every directory's entries.
pub(super) fn name_map(c: &Checker<'_>) -> HashMap<u32, (u32, Vec<u8>)> {
    let mut map = HashMap::new();
    let mut dirs: Vec<u32> = c.dirs.keys().copied().collect();
    dirs.sort_unstable();
    for d in dirs {
        let Ok(inode) = c.read_inode(d) else { continue };
        let _ = c.scan_entries(d, &inode, &mut |name, ino| {
            if !is_dot(name) {
                map.entry(ino).or_insert_with(|| (d, name.to_vec()));
            }
            map.len() < 1 << 24
        });
    }
    map
}
