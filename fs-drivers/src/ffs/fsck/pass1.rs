//! Pass 1: every inode: mode, size against its pointers, block and fragment pointers in
//! range, indirect blocks (a bounded walk), `di_blocks`, check hashes. Fragments in use are
//! marked; a fragment marked twice is a finding against its later claimant: with `-y` (as
//! e2fsck does) the claimant gets its own copy of every fragment run it shares, so both
//! files keep their content; pass 1b names the other claimants and makes the copies.

use super::{st, Checker, DirInfo, Level, Reporter, MAX_DUPS};
use crate::ffs::dir::{kind_dtype, DIRBLKSIZ};
use crate::ffs::inode::{self, Inode, InodeError};
use crate::ffs::superblock::{ck, Superblock, NDADDR, NIADDR, ROOTINO};
use crate::ffs::update;
use vfs_faction::{CachedDev, FileType, KResult};

const PH: &str = "Pass 1: inodes, blocks and sizes";
const PH1B: &str = "Pass 1B: fragments claimed more than once";
/// fsck_ffs gives up on an inode after this many bad pointers (`MAXBAD`).
const MAXBAD: usize = 10;

/// Where a pointer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ptr {
    Db(usize),
    Ib(usize),
    Ext(usize),
    /// Slot `idx` of the indirect block at fragment `blk`.
    Ind { blk: u64, idx: usize },
}

/// What a walk of an inode's pointers meets.
#[derive(Clone, Debug)]
pub(super) enum Ev {
    /// `n` fragments from `frag`: data (logical block `lblk`), or an indirect block.
    /// `past`: under a pointer beyond the end of the file.
    Frags { frag: u64, n: u64, lblk: u64, meta: bool, past: bool },
    /// A pointer that cannot be right (not followed).
    Bad { msg: String },
    /// A pointer beyond the end of the file (followed, with `past` set).
    Past { lblk: u64, at: Ptr },
}

/// A bounded walk of one inode's block tree.
pub(super) struct Walker<'w> {
    pub sb: &'w Superblock,
    pub dev: &'w CachedDev,
    pub chk: &'w dyn Fn(u64, u64) -> Option<&'static str>,
    budget: u64,
    bad: usize,
}

impl<'w> Walker<'w> {
    pub fn new(sb: &'w Superblock, dev: &'w CachedDev, chk: &'w dyn Fn(u64, u64) -> Option<&'static str>) -> Walker<'w> {
        Walker { sb, dev, chk, budget: sb.size.saturating_add(u64::from(sb.frag)), bad: 0 }
    }

    /// Walks the pointers of `i`; `f` returns `false` to stop. `Err`: the walk stopped (why).
    pub fn walk(&mut self, i: &Inode, f: &mut dyn FnMut(Ev) -> bool) -> Result<(), String> {
        let sb = self.sb;
        let bs = u64::from(sb.bsize);
        let frag = u64::from(sb.frag);
        let fs = u64::from(sb.fsize);
        let nblocks = i.size.div_ceil(bs);
        for (k, &p) in i.db.iter().enumerate() {
            if p == 0 {
                continue;
            }
            let lblk = k as u64;
            let past = lblk >= nblocks;
            let n = if past || i.size >= (lblk + 1) * bs { frag } else { (i.size - lblk * bs).div_ceil(fs).clamp(1, frag) };
            if past && !f(Ev::Past { lblk, at: Ptr::Db(k) }) {
                return Err("stopped".into());
            }
            self.data(p, n, lblk, past, f)?;
        }
        let nindir = u64::from(sb.nindir);
        let mut base = NDADDR as u64;
        let mut span = nindir;
        for level in 0..NIADDR {
            let p = i.ib[level];
            if p != 0 {
                let past = base >= nblocks;
                if past && !f(Ev::Past { lblk: base, at: Ptr::Ib(level) }) {
                    return Err("stopped".into());
                }
                self.ind(p, level as u32 + 1, base, nblocks, past, f)?;
            }
            base = base.saturating_add(span);
            span = span.saturating_mul(nindir);
        }
        if sb.ufs2 {
            let ext = u64::from(i.extsize);
            for (k, &p) in i.extb.iter().enumerate() {
                if p == 0 {
                    continue;
                }
                let start = k as u64 * bs;
                let past = start >= ext;
                if past && !f(Ev::Past { lblk: k as u64, at: Ptr::Ext(k) }) {
                    return Err("stopped".into());
                }
                let n = if past { frag } else { (ext - start).min(bs).div_ceil(fs).clamp(1, frag) };
                self.data(p, n, u64::MAX - k as u64, past, f)?;
            }
        }
        Ok(())
    }

    fn bad(&mut self, f: &mut dyn FnMut(Ev) -> bool, msg: String) -> Result<(), String> {
        self.bad += 1;
        if !f(Ev::Bad { msg }) {
            return Err("stopped".into());
        }
        if self.bad > MAXBAD {
            return Err(format!("more than {MAXBAD} bad block pointers"));
        }
        Ok(())
    }

    fn spend(&mut self, n: u64) -> Result<(), String> {
        if n > self.budget {
            return Err("maps more fragments than the file system has (a loop?)".into());
        }
        self.budget -= n;
        Ok(())
    }

    fn data(&mut self, p: u64, n: u64, lblk: u64, past: bool, f: &mut dyn FnMut(Ev) -> bool) -> Result<(), String> {
        let what = if lblk >= u64::MAX - 1 { "extended attribute block".to_string() } else { format!("block {lblk}") };
        if let Some(why) = (self.chk)(p, n) {
            return self.bad(f, format!("{what} at fragment {p} (+{n}): {why}"));
        }
        self.spend(n)?;
        if !f(Ev::Frags { frag: p, n, lblk, meta: false, past }) {
            return Err("stopped".into());
        }
        Ok(())
    }

    fn ind(&mut self, p: u64, level: u32, base: u64, nblocks: u64, past: bool, f: &mut dyn FnMut(Ev) -> bool) -> Result<(), String> {
        let frag = u64::from(self.sb.frag);
        let why = if !p.is_multiple_of(frag) { Some("not at a block boundary") } else { (self.chk)(p, frag) };
        if let Some(why) = why {
            return self.bad(f, format!("indirect block (level {level}) for block {base} at fragment {p}: {why}"));
        }
        self.spend(frag)?;
        if !f(Ev::Frags { frag: p, n: frag, lblk: base, meta: true, past }) {
            return Err("stopped".into());
        }
        let mut buf = vec![0u8; self.sb.bsize as usize];
        self.dev.read_blocks(p, frag, &mut buf, 0).map_err(|e| format!("cannot read indirect block {p}: {e}"))?;
        let nindir = u64::from(self.sb.nindir);
        let span = nindir.saturating_pow(level - 1);
        let o = self.sb.order;
        for j in 0..nindir as usize {
            let q = if self.sb.ufs2 { o.u64(&buf, j * 8) } else { u64::from(o.u32(&buf, j * 4)) };
            if q == 0 {
                continue;
            }
            let lblk = base.saturating_add((j as u64).saturating_mul(span));
            let q_past = past || lblk >= nblocks;
            if q_past && !past && !f(Ev::Past { lblk, at: Ptr::Ind { blk: p, idx: j } }) {
                return Err("stopped".into());
            }
            if level == 1 {
                self.data(q, frag, lblk, q_past, f)?;
            } else {
                self.ind(q, level - 1, lblk, nblocks, q_past, f)?;
            }
        }
        Ok(())
    }
}

/// Is inode `i` one whose pointers map blocks (not a device, fifo, socket or short
/// symlink)?
pub(super) fn has_blocks(sb: &Superblock, i: &Inode) -> bool {
    match i.kind {
        FileType::Regular | FileType::Directory => true,
        FileType::Symlink => !i.is_short_symlink(sb),
        _ => false,
    }
}

impl<'a> Checker<'a> {
    /// Walks `i`'s pointers with the checker's range rules.
    pub(super) fn walk(&self, i: &Inode, f: &mut dyn FnMut(Ev) -> bool) -> Result<(), String> {
        let chk = |p: u64, n: u64| self.addr_problem(p, n);
        let mut w = Walker::new(&self.sb, &self.dev, &chk);
        w.walk(i, f)
    }

    pub(super) fn pass1(&mut self) -> KResult<()> {
        let sb = self.sb.clone();
        let fs = u64::from(sb.fsize);
        let frag = u64::from(sb.frag);
        let inopb = sb.inopb;
        let isz = sb.isize();
        for c in 0..sb.ncg {
            self.progress(PH, u64::from(c), u64::from(sb.ncg));
            let ninit = self.cg_init[c as usize];
            let nblk = ninit.div_ceil(inopb);
            // Inode blocks, a few at a time.
            let per_read = 16u32;
            let mut b = 0u32;
            while b < nblk {
                let k = per_read.min(nblk - b);
                let first = sb.cgimin(c) + u64::from(b) * frag;
                let mut buf = vec![0u8; (u64::from(k) * frag * fs) as usize];
                self.dev.read_blocks(first, u64::from(k) * frag, &mut buf, 0)?;
                for j in 0..k * inopb {
                    let idx = b * inopb + j;
                    if idx >= ninit {
                        break;
                    }
                    let ino = c * sb.ipg + idx;
                    if ino < ROOTINO {
                        continue;
                    }
                    let raw = &buf[j as usize * isz..(j as usize + 1) * isz];
                    self.inode1(ino, raw)?;
                }
                b += k;
            }
        }
        Ok(())
    }

    fn inode1(&mut self, ino: u32, raw: &[u8]) -> KResult<()> {
        let sb = self.sb.clone();
        let o = sb.order;
        let mode = o.u16(raw, 0);
        if mode == 0 {
            // A free inode must be all free: no size, no pointers.
            let mut probe = raw.to_vec();
            o.put_u16(&mut probe, 0, 0o100000);
            if let Ok(i) = Inode::parse(&self.psb, &probe) {
                if i.size != 0 || i.db.iter().chain(i.ib.iter()).any(|&p| p != 0) {
                    let m = format!("partially allocated: mode 0 with size {} or block pointers", i.size);
                    let p = self.problem(Level::Yes, PH, format!("inode {ino}"), m, Some("clear it"));
                    self.fix_with(p, |c| {
                        let rec = update::free_inode_record(&c.sb, i.gen);
                        update::write_inode_raw(&c.sb, &c.dev, ino, &rec)?;
                        c.wrote = true;
                        Ok(())
                    });
                }
            }
            return Ok(());
        }
        self.nlink[ino as usize] = o.u16(raw, 2);
        if sb.ufs2 && sb.metackhash & ck::INODE != 0 {
            let want = o.u32(raw, 244);
            let got = inode::dinode_hash(raw);
            if want != got {
                let m = format!("check hash {want:#010x}, computed {got:#010x}");
                let p = self.problem_ino(Level::Preen, PH, ino, m, Some("rewrite it"));
                self.fix_with(p, |c| {
                    let mut r = raw.to_vec();
                    o.put_u32(&mut r, 244, got);
                    update::write_inode_raw(&c.sb, &c.dev, ino, &r)?;
                    c.wrote = true;
                    Ok(())
                });
            }
        }
        let mut raw = raw.to_vec();
        // A directory whose size is not a multiple of DIRBLKSIZ: rounded up (fsck_ffs).
        if mode & 0o170000 == 0o040000 {
            let mut probe = raw.clone();
            o.put_u16(&mut probe, 0, 0o100000);
            if let Ok(i) = Inode::parse(&self.psb, &probe) {
                if i.size % DIRBLKSIZ as u64 != 0 {
                    let want = i.size.next_multiple_of(DIRBLKSIZ as u64);
                    let m = format!("directory size {} is not a multiple of {DIRBLKSIZ}", i.size);
                    let p = self.problem_ino(Level::Preen, PH, ino, m, Some("round it up"));
                    let mut fixed = i.clone();
                    fixed.mode = mode;
                    fixed.size = want;
                    let enc = fixed.encode(&sb).to_vec();
                    self.fix_with(p, |c| {
                        update::write_inode_raw(&c.sb, &c.dev, ino, &enc)?;
                        c.wrote = true;
                        Ok(())
                    });
                    raw = enc;
                }
            }
        }
        let i = match Inode::parse(&self.psb, &raw) {
            Ok(i) => i,
            Err(InodeError::Free) => return Ok(()),
            Err(InodeError::Corrupt(m)) => {
                self.bad_inode(ino, 0, m);
                return Ok(());
            }
        };
        let dtype = kind_dtype(i.kind);
        self.state[ino as usize] = dtype;
        if !has_blocks(&sb, &i) {
            // Devices keep their number in db[0]; nothing else may be set.
            let from = usize::from(matches!(i.kind, FileType::CharDevice | FileType::BlockDevice));
            let stray = if i.kind == FileType::Symlink {
                false
            } else {
                i.db[from..].iter().chain(i.ib.iter()).any(|&p| p != 0)
            };
            if stray {
                self.bad_inode(ino, dtype, format!("{:?} inode with block pointers", i.kind));
                return Ok(());
            }
            if i.blocks != 0 {
                self.fix_blocks(ino, i.blocks, 0)?;
            }
            return Ok(());
        }
        let mut frags = 0u64;
        let mut frags_past = 0u64;
        let mut past: Vec<(u64, super::pass1::Ptr)> = Vec::new();
        let mut past_frags: Vec<(u64, u64)> = Vec::new();
        let mut bad: Vec<String> = Vec::new();
        let mut dup: Vec<u64> = Vec::new();
        let mut ndup = 0usize;
        let mut new_dups: Vec<u64> = Vec::new();
        let r = {
            let used = &mut self.used;
            let chk = |p: u64, n: u64| addr_problem(&sb, p, n);
            let mut w = Walker::new(&sb, &self.dev, &chk);
            w.walk(&i, &mut |ev| {
                match ev {
                    Ev::Frags { frag, n, past: is_past, .. } => {
                        let mut hit = false;
                        for f in frag..frag + n {
                            if used.set(f) {
                                hit = true;
                                new_dups.push(f);
                                if dup.len() < 8 {
                                    dup.push(f);
                                }
                            }
                        }
                        if hit {
                            ndup += 1;
                        }
                        if is_past {
                            frags_past += n;
                            past_frags.push((frag, n));
                        } else {
                            frags += n;
                        }
                        // Not stopped at duplicates: the walk is bounded by its budget, and
                        // every fragment of a claimant to be cloned must be marked.
                        true
                    }
                    Ev::Bad { msg } => {
                        if bad.len() < 4 {
                            bad.push(msg);
                        }
                        true
                    }
                    Ev::Past { lblk, at } => {
                        past.push((lblk, at));
                        past.len() < 1 << 16
                    }
                }
            })
        };
        for f in new_dups {
            if self.dups.len() < MAX_DUPS {
                self.dups.insert(f);
            }
        }
        if i.kind == FileType::Directory {
            self.dirs.insert(ino, DirInfo::default());
        }
        let mut why = Vec::new();
        if !bad.is_empty() {
            why.push(format!("bad block pointers: {}", bad.join("; ")));
        }
        let dup_why = (ndup > 0).then(|| {
            let list: Vec<String> = dup.iter().map(u64::to_string).collect();
            format!("claims fragments already in use ({}{})", list.join(" "), if ndup > dup.len() { " ..." } else { "" })
        });
        let walked = match r {
            Ok(()) => true,
            Err(m) => {
                if m != "stopped" {
                    why.push(m);
                }
                false
            }
        };
        if why.is_empty() && walked {
            if let Some(m) = dup_why {
                // Only shared fragments wrong: cloned in pass 1b (as e2fsck does); refused,
                // the inode is kept as bad.
                let p = self.problem_ino(Level::Yes, PH, ino, m.clone(), Some("give it its own copy of them (clone)"));
                if self.want(&p) {
                    self.clones.push((ino, p));
                } else {
                    self.state[ino as usize] = dtype | st::BAD;
                    self.dirs.remove(&ino);
                    self.bad_why.insert(ino, m);
                    self.done(p, false);
                    return Ok(());
                }
            }
        } else {
            why.extend(dup_why);
        }
        if !why.is_empty() {
            self.bad_inode(ino, dtype, why.join("; "));
            return Ok(());
        }
        let mut blocks_want = (frags + frags_past) * (u64::from(sb.fsize) / 512);
        if !past.is_empty() {
            let m = format!(
                "{} block pointer(s) beyond the end of the file (size {}, first at logical block {})",
                past.len(),
                i.size,
                past[0].0
            );
            let p = self.problem_ino(Level::Yes, PH, ino, m, Some("clear them"));
            let ptrs: Vec<Ptr> = past.iter().map(|x| x.1).collect();
            if self.fix_with(p, |c| c.zero_pointers(ino, &ptrs)) {
                for (f, n) in past_frags {
                    for x in f..f + n {
                        if !self.dups.contains(&x) {
                            self.used.clear(x);
                        }
                    }
                }
                blocks_want = frags * (u64::from(sb.fsize) / 512);
            }
        }
        if i.blocks != blocks_want {
            self.fix_blocks(ino, i.blocks, blocks_want)?;
        }
        Ok(())
    }

    /// Records inode `ino` as bad (type `dtype`, 0 unknown) and reports it.
    fn bad_inode(&mut self, ino: u32, dtype: u8, why: String) {
        let p = self.problem_ino(Level::Yes, PH, ino, format!("bad inode: {why}"), Some("clear it"));
        let clear = self.want(&p);
        self.state[ino as usize] = dtype | if clear { st::CLEAR } else { st::BAD };
        self.dirs.remove(&ino);
        self.bad_why.insert(ino, why);
        self.done(p, clear);
    }

    fn fix_blocks(&mut self, ino: u32, have: u64, want: u64) -> KResult<()> {
        let m = format!("di_blocks is {have}, should be {want}");
        let p = self.problem_ino(Level::Preen, PH, ino, m, Some("correct it"));
        self.fix_with(p, |c| c.modify_inode(ino, |i| i.blocks = want));
        Ok(())
    }

    /// Zeroes pointers (in the inode or in indirect blocks).
    pub(super) fn zero_pointers(&mut self, ino: u32, ptrs: &[Ptr]) -> KResult<()> {
        let mut in_inode = Vec::new();
        for &p in ptrs {
            match p {
                Ptr::Ind { blk, idx } => {
                    let ps = if self.sb.ufs2 { 8 } else { 4 };
                    let byte = idx as u64 * ps;
                    let fs = u64::from(self.sb.fsize);
                    let f = blk + byte / fs;
                    let mut b = self.dev.bread(f)?.to_vec();
                    let at = (byte % fs) as usize;
                    b[at..at + ps as usize].fill(0);
                    self.bwrite(f, b)?;
                }
                other => in_inode.push(other),
            }
        }
        if !in_inode.is_empty() {
            self.modify_inode(ino, |i| {
                for p in in_inode {
                    match p {
                        Ptr::Db(k) => i.db[k] = 0,
                        Ptr::Ib(k) => i.ib[k] = 0,
                        Ptr::Ext(k) => i.extb[k] = 0,
                        Ptr::Ind { .. } => {}
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Gives back the fragments of `i` that no other inode claims too. The walk is pass
    /// 1's (same rules, same budget), so nothing it did not mark is released.
    pub(super) fn release_blocks(&mut self, _ino: u32, i: &Inode) {
        if !has_blocks(&self.sb, i) {
            return;
        }
        let mut frags = Vec::new();
        let _ = self.walk(i, &mut |ev| {
            if let Ev::Frags { frag, n, .. } = ev {
                for f in frag..frag + n {
                    if !self.dups.contains(&f) {
                        frags.push(f);
                    }
                }
            }
            true
        });
        for f in frags {
            self.used.clear(f);
        }
    }

    /// Pass 1b: every other claimant of a fragment claimed twice; then the later claimants
    /// whose clone was accepted in pass 1 get their own copies.
    pub(super) fn pass1b(&mut self) -> KResult<()> {
        if self.dups.is_empty() {
            return Ok(());
        }
        let sb = self.sb.clone();
        for ino in ROOTINO..sb.ninodes() {
            let s = self.state[ino as usize];
            if s == st::FREE {
                continue;
            }
            let Ok(i) = self.read_inode(ino) else { continue };
            if !has_blocks(&sb, &i) {
                continue;
            }
            let mut hits = Vec::new();
            let mut n = 0usize;
            let _ = self.walk(&i, &mut |ev| {
                if let Ev::Frags { frag, n: k, .. } = ev {
                    for f in frag..frag + k {
                        if self.dups.contains(&f) {
                            n += 1;
                            if hits.len() < 8 {
                                hits.push(f);
                            }
                        }
                    }
                }
                n < 1 << 16
            });
            if n == 0 {
                continue;
            }
            let list: Vec<String> = hits.iter().map(u64::to_string).collect();
            let fate = if s & st::CLEAR != 0 {
                "; it is cleared"
            } else if self.clones.iter().any(|(i, _)| *i == ino) {
                "; it gets its own copy"
            } else if s & st::BAD != 0 {
                "; it is kept (not repaired)"
            } else {
                "; it keeps them"
            };
            let m = format!("claims {n} fragment(s) also claimed elsewhere ({}){fate}", list.join(" "));
            let p = self.problem_ino(Level::Never, PH1B, ino, m, None);
            self.note(p);
        }
        for (ino, mut p) in std::mem::take(&mut self.clones) {
            match self.clone_dups(ino) {
                Ok(()) => self.done(p, true),
                Err(e) => {
                    p.finding.message.push_str(&format!(" (repair failed: {e})"));
                    let s = self.state[ino as usize];
                    self.state[ino as usize] = s | st::BAD;
                    self.dirs.remove(&ino);
                    self.bad_why.insert(ino, p.finding.message.clone());
                    self.done(p, false);
                }
            }
        }
        Ok(())
    }

    /// Gives inode `ino` its own copy of every fragment run (data, extended attribute or
    /// indirect block) that holds a fragment claimed twice: new fragments from what pass 1
    /// found free, the bytes copied, the pointer moved. The copies are written (and synced)
    /// before any pointer to them, so a crash leaves the old sharing, found again next run.
    /// The maps and summaries follow in pass 5, from `used`.
    fn clone_dups(&mut self, ino: u32) -> KResult<()> {
        let mut i = self.read_inode(ino)?;
        let sb = self.sb.clone();
        let bs = u64::from(sb.bsize);
        let frag = u64::from(sb.frag);
        let fs = u64::from(sb.fsize);
        let nblocks = i.size.div_ceil(bs);
        let mut later: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut changed = false;
        for k in 0..NDADDR {
            let p = i.db[k];
            if p == 0 {
                continue;
            }
            let lblk = k as u64;
            let n = if lblk >= nblocks || i.size >= (lblk + 1) * bs { frag } else { (i.size - lblk * bs).div_ceil(fs).clamp(1, frag) };
            if let Some(q) = self.clone_run(p, n)? {
                i.db[k] = q;
                changed = true;
            }
        }
        for level in 0..NIADDR {
            let p = i.ib[level];
            if p != 0 {
                if let Some(q) = self.clone_ind(p, level as u32 + 1, &mut later)? {
                    i.ib[level] = q;
                    changed = true;
                }
            }
        }
        if sb.ufs2 {
            let ext = u64::from(i.extsize);
            for k in 0..i.extb.len() {
                let p = i.extb[k];
                if p == 0 {
                    continue;
                }
                let start = k as u64 * bs;
                let n = if start >= ext { frag } else { (ext - start).min(bs).div_ceil(fs).clamp(1, frag) };
                if let Some(q) = self.clone_run(p, n)? {
                    i.extb[k] = q;
                    changed = true;
                }
            }
        }
        self.dev.sync()?;
        for (f, b) in later {
            self.bwrite(f, b)?;
        }
        if changed {
            self.write_inode(ino, &mut i)?;
        }
        Ok(())
    }

    /// A copy of the run `p..p+n` if it holds a fragment claimed twice (`None`: not shared).
    /// Its fragments no one else claims are given back.
    fn clone_run(&mut self, p: u64, n: u64) -> KResult<Option<u64>> {
        if !(p..p + n).any(|f| self.dups.contains(&f)) {
            return Ok(None);
        }
        let mut buf = vec![0u8; (n * u64::from(self.sb.fsize)) as usize];
        self.dev.read_blocks(p, n, &mut buf, 0)?;
        let q = self.alloc_frags(n)?;
        self.write_run(q, &buf)?;
        for f in p..p + n {
            if !self.dups.contains(&f) {
                self.used.clear(f);
            }
        }
        Ok(Some(q))
    }

    /// The indirect block at `p` (level `level`) with its shared children cloned; a copy of
    /// it if it is shared itself (`Some`), else rewritten in place (queued in `later`, to be
    /// written after the copies) when a child moved.
    fn clone_ind(&mut self, p: u64, level: u32, later: &mut Vec<(u64, Vec<u8>)>) -> KResult<Option<u64>> {
        let frag = u64::from(self.sb.frag);
        let mut buf = vec![0u8; self.sb.bsize as usize];
        self.dev.read_blocks(p, frag, &mut buf, 0)?;
        let o = self.sb.order;
        let ufs2 = self.sb.ufs2;
        let mut changed = false;
        for j in 0..self.sb.nindir as usize {
            let q = if ufs2 { o.u64(&buf, j * 8) } else { u64::from(o.u32(&buf, j * 4)) };
            if q == 0 {
                continue;
            }
            let moved = if level == 1 { self.clone_run(q, frag)? } else { self.clone_ind(q, level - 1, later)? };
            if let Some(nq) = moved {
                if ufs2 {
                    o.put_u64(&mut buf, j * 8, nq);
                } else {
                    o.put_u32(&mut buf, j * 4, nq as u32);
                }
                changed = true;
            }
        }
        if (p..p + frag).any(|f| self.dups.contains(&f)) {
            let q = self.alloc_frags(frag)?;
            self.write_run(q, &buf)?;
            for f in p..p + frag {
                if !self.dups.contains(&f) {
                    self.used.clear(f);
                }
            }
            return Ok(Some(q));
        }
        if changed {
            let fs = self.sb.fsize as usize;
            for (k, chunk) in buf.chunks(fs).enumerate() {
                later.push((p + k as u64, chunk.to_vec()));
            }
        }
        Ok(None)
    }

    /// Writes `data` (whole fragments) from fragment `q` on.
    fn write_run(&mut self, q: u64, data: &[u8]) -> KResult<()> {
        let fs = self.sb.fsize as usize;
        for (k, chunk) in data.chunks(fs).enumerate() {
            self.bwrite(q + k as u64, chunk.to_vec())?;
        }
        Ok(())
    }
}

/// [`Checker::addr_problem`] without the checker (for walks that borrow its bitmaps).
fn addr_problem(sb: &Superblock, p: u64, n: u64) -> Option<&'static str> {
    let frag = u64::from(sb.frag);
    if p.checked_add(n).is_none_or(|e| e > sb.size) {
        return Some("beyond the end of the file system");
    }
    if p % frag + n > frag {
        return Some("crosses a block boundary");
    }
    let c = (p / u64::from(sb.fpg)) as u32;
    let meta_start = if c == 0 { 0 } else { sb.cgstart(c) + u64::from(sb.sblkno) };
    if p < sb.cgdmin(c) && p + n > meta_start {
        return Some("inside cylinder group metadata");
    }
    None
}

/// The rule shared with [`Checker::addr_problem`].
pub(super) fn addr_rule(sb: &Superblock, p: u64, n: u64) -> Option<&'static str> {
    addr_problem(sb, p, n)
}
