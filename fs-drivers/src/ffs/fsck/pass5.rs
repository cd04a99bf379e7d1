//! Pass 5: every cylinder group against what passes 1-4 found: the inode map, the free
//! fragment map, the cluster map and cluster summary, `cg_cs`, `cg_frsum`, the rotors; then
//! the summary area and the superblock's totals. A damaged group header is rebuilt from a
//! good group's layout (its maps are then written from scratch).

use super::{st, Checker, Level, Reporter};
use crate::ffs::superblock::ROOTINO;
use crate::ffs::update::{self, bit, cgf, set_bit, Cg, Csum};
use crate::ffs::{cg as cgoff, superblock::CsTotal};
use vfs_faction::KResult;

const PH: &str = "Pass 5: cylinder groups";

/// A short list of numbers.
fn list(v: &[u64]) -> String {
    let mut s: Vec<String> = v.iter().take(8).map(u64::to_string).collect();
    if v.len() > 8 {
        s.push(format!("... ({} in all)", v.len()));
    }
    s.join(" ")
}

impl<'a> Checker<'a> {
    /// Group `c`'s header rebuilt from the template (maps and counts empty).
    fn rebuild_cg(&self, c: u32) -> Option<Cg> {
        let sb = &self.sb;
        let mut r = self.template.clone()?;
        let o = sb.order;
        r[cgf::HEADER..].fill(0);
        for at in [cgf::CS, cgf::CS + 4, cgf::CS + 8, cgf::CS + 12, cgf::ROTOR, cgf::FROTOR, cgf::IROTOR] {
            o.put_u32(&mut r, at, 0);
        }
        for n in 0..8 {
            o.put_u32(&mut r, cgf::FRSUM + 4 * n, 0);
        }
        o.put_u32(&mut r, cgoff::MAGIC, cgoff::CG_MAGIC);
        o.put_u32(&mut r, cgoff::CGX, c);
        let ndblk = (sb.size - sb.cgbase(c)).min(u64::from(sb.fpg)) as u32;
        o.put_u32(&mut r, cgf::NDBLK, ndblk);
        if sb.contigsumsize > 0 {
            o.put_u32(&mut r, cgf::NCLUSTERBLKS, ndblk / sb.frag);
        }
        if sb.ufs2 {
            o.put_u32(&mut r, cgoff::NIBLK, sb.ipg);
            o.put_u32(&mut r, cgf::INITEDIBLK, self.cg_init[c as usize]);
        } else {
            o.put_u16(&mut r, cgf::OLD_NIBLK, sb.ipg as u16);
        }
        o.put_u32(&mut r, cgoff::CKHASH, 0);
        let h = update::cg_hash(&r);
        o.put_u32(&mut r, cgoff::CKHASH, h);
        Cg::parse(sb, c, r).ok()
    }

    pub(super) fn pass5(&mut self) -> KResult<()> {
        let sb = self.sb.clone();
        let o = sb.order;
        let frag = sb.frag;
        let mut sums = Vec::with_capacity(sb.ncg as usize);
        let mut total = Csum::default();
        let keep_used = self.state.iter().any(|&x| x & st::BAD != 0);
        for c in 0..sb.ncg {
            self.progress(PH, u64::from(c), u64::from(sb.ncg));
            // What it says.
            let raw = update::read_cg_raw(&sb, &self.dev, c)?;
            let base = sb.cgbase(c);
            let ndblk = (sb.size - base).min(u64::from(sb.fpg)) as u32;
            let fix_header = self.cg_fix[c as usize];
            let mut force = false;
            let cg_opt: Option<Cg> = match Cg::parse(&sb, c, raw.clone()) {
                Ok(cg) => Some(cg),
                Err(m) if m.starts_with("check hash") => {
                    let mut r = raw;
                    o.put_u32(&mut r, cgoff::CKHASH, 0);
                    let h = update::cg_hash(&r);
                    o.put_u32(&mut r, cgoff::CKHASH, h);
                    match Cg::parse(&sb, c, r) {
                        Ok(cg) => {
                            force = fix_header;
                            Some(cg)
                        }
                        Err(_) => None,
                    }
                }
                Err(_) => match self.rebuild_cg(c) {
                    Some(cg) if fix_header => {
                        force = true;
                        Some(cg)
                    }
                    _ => None,
                },
            };
            // What the group should say.
            let mut want = Csum::default();
            let first_ino = c * sb.ipg;
            let iused_v: Vec<bool> =
                (0..sb.ipg).map(|k| (c == 0 && k < ROOTINO) || self.state[(first_ino + k) as usize] != st::FREE).collect();
            let iused = |k: u32| iused_v[k as usize];
            for k in 0..sb.ipg {
                if iused(k) {
                    if k >= ROOTINO || c != 0 {
                        let s = self.state[(first_ino + k) as usize];
                        if s & st::TYPE == st::DIR {
                            want.ndir += 1;
                        }
                    }
                } else {
                    want.nifree += 1;
                }
            }
            // With bad inodes kept, what they map past a bad pointer is not known: nothing the
            // group marks in use is freed.
            let ffree_v: Vec<bool> = (0..ndblk)
                .map(|f| {
                    let disk_used = cg_opt.as_ref().is_some_and(|cg| !cg.frag_free(f));
                    !(self.used.get(base + u64::from(f)) || keep_used && disk_used)
                })
                .collect();
            let ffree = |f: u32| ffree_v.get(f as usize).copied().unwrap_or(false);
            let mut frsum = [0i32; 8];
            let nblk = ndblk.div_ceil(frag);
            let nclusterblks = if sb.contigsumsize > 0 { ndblk / frag } else { 0 };
            let mut cluster_free = Vec::new();
            for b in 0..nblk {
                let mut map = 0u32;
                for k in 0..frag {
                    if ffree(b * frag + k) {
                        map |= 1 << k;
                    }
                }
                if update::is_block_free(map, frag) {
                    want.nbfree += 1;
                    if b < nclusterblks {
                        cluster_free.push(b);
                    }
                } else {
                    want.nffree += map.count_ones() as i32;
                    update::frag_acct(&mut frsum, map, frag, 1);
                }
            }
            let mut csum = vec![0i32; sb.contigsumsize as usize + 1];
            {
                let mut run = 0u32;
                let mut prev: Option<u32> = None;
                for &b in &cluster_free {
                    if prev.is_some_and(|p| p + 1 == b) {
                        run += 1;
                    } else {
                        if run > 0 {
                            csum[run.min(sb.contigsumsize) as usize] += 1;
                        }
                        run = 1;
                    }
                    prev = Some(b);
                }
                if run > 0 && sb.contigsumsize > 0 {
                    csum[run.min(sb.contigsumsize) as usize] += 1;
                }
            }
            sums.push(want);
            total.ndir += want.ndir;
            total.nbfree += want.nbfree;
            total.nifree += want.nifree;
            total.nffree += want.nffree;
            let Some(mut cg) = cg_opt else { continue };

            let mut diffs = Vec::new();
            let have = cg.cs();
            if have != want {
                diffs.push(format!(
                    "counts (dirs, free blocks, free inodes, free fragments) are {}/{}/{}/{}, should be {}/{}/{}/{}",
                    have.ndir, have.nbfree, have.nifree, have.nffree, want.ndir, want.nbfree, want.nifree, want.nffree
                ));
            }
            let (mut i_extra, mut i_missing) = (Vec::new(), Vec::new());
            for k in 0..sb.ipg {
                match (cg.inode_used(k), iused(k)) {
                    (true, false) => i_extra.push(u64::from(first_ino + k)),
                    (false, true) => i_missing.push(u64::from(first_ino + k)),
                    _ => {}
                }
            }
            if !i_extra.is_empty() {
                diffs.push(format!("inodes marked in use but free: {}", list(&i_extra)));
            }
            if !i_missing.is_empty() {
                diffs.push(format!("inodes in use but marked free: {}", list(&i_missing)));
            }
            let (mut f_extra, mut f_missing) = (Vec::new(), Vec::new());
            for f in 0..ndblk {
                match (cg.frag_free(f), ffree(f)) {
                    (true, false) => f_missing.push(base + u64::from(f)),
                    (false, true) => f_extra.push(base + u64::from(f)),
                    _ => {}
                }
            }
            if !f_extra.is_empty() {
                diffs.push(format!("fragments marked in use but free: {}", list(&f_extra)));
            }
            if !f_missing.is_empty() {
                diffs.push(format!("fragments in use but marked free: {}", list(&f_missing)));
            }
            let bad_frsum: Vec<String> =
                (1..frag).filter(|&n| cg.frsum(n) != frsum[n as usize]).map(|n| format!("[{n}] {} should be {}", cg.frsum(n), frsum[n as usize])).collect();
            if !bad_frsum.is_empty() {
                diffs.push(format!("free fragment run counts (cg_frsum) {}", bad_frsum.join(", ")));
            }
            if sb.contigsumsize > 0 {
                let map = &cg.raw[cg.clusteroff..];
                let mut wrong = 0u64;
                let mut ci = 0usize;
                for b in 0..nclusterblks {
                    let w = ci < cluster_free.len() && cluster_free[ci] == b;
                    if w {
                        ci += 1;
                    }
                    if bit(map, b as usize) != w {
                        wrong += 1;
                    }
                }
                if wrong > 0 {
                    diffs.push(format!("cluster map: {wrong} block(s) wrong"));
                }
                let bad_cs: Vec<String> = (1..=sb.contigsumsize as usize)
                    .filter(|&n| o.i32(&cg.raw, cg.clustersumoff + 4 * n) != csum[n])
                    .map(|n| format!("[{n}] {} should be {}", o.i32(&cg.raw, cg.clustersumoff + 4 * n), csum[n]))
                    .collect();
                if !bad_cs.is_empty() {
                    diffs.push(format!("cluster summary {}", bad_cs.join(", ")));
                }
            }
            let rotors = [(cgf::ROTOR, "cg_rotor", ndblk), (cgf::FROTOR, "cg_frotor", ndblk), (cgf::IROTOR, "cg_irotor", sb.ipg)];
            for (at, name, lim) in rotors {
                if cg.get(at) >= lim.max(1) {
                    diffs.push(format!("{name} {} is out of range", cg.get(at)));
                }
            }
            if diffs.is_empty() {
                if force {
                    update::write_cg(&sb, &self.dev, &mut cg, self.now)?;
                    self.wrote = true;
                }
                continue;
            }
            let m = diffs.join("; ");
            let p = self.problem(Level::Preen, PH, format!("group {c}"), m, Some("rewrite its maps and counts"));
            self.fix_with(p, |ch| {
                cg.set_cs(want);
                for k in 0..sb.ipg {
                    cg.set_inode_used(k, iused(k));
                }
                for f in 0..ndblk {
                    cg.set_frag_free(f, ffree(f));
                }
                for n in 1..frag {
                    let d = frsum[n as usize] - cg.frsum(n);
                    cg.add_frsum(n, d);
                }
                if sb.contigsumsize > 0 {
                    let at = cg.clusteroff;
                    for b in 0..nclusterblks {
                        set_bit(&mut cg.raw[at..], b as usize, cluster_free.binary_search(&b).is_ok());
                    }
                    for (n, &v) in csum.iter().enumerate().skip(1) {
                        let at = cg.clustersumoff + 4 * n;
                        o.put_i32(&mut cg.raw, at, v);
                    }
                }
                for (at, _, lim) in rotors {
                    if cg.get(at) >= lim.max(1) {
                        cg.set(at, 0);
                    }
                }
                update::write_cg(&sb, &ch.dev, &mut cg, ch.now)?;
                ch.wrote = true;
                Ok(())
            });
        }
        self.totals = total;
        // The summary area.
        let area = update::read_csum_area(&sb, &self.dev)?;
        let wrong: Vec<u64> = (0..sb.ncg as usize).filter(|&c| area[c] != sums[c]).map(|c| c as u64).collect();
        if !wrong.is_empty() {
            let m = format!("the summary area (fragment {}) is wrong for group(s) {}", sb.csaddr, list(&wrong));
            let p = self.problem(Level::Preen, PH, "summary area".into(), m, Some("rewrite it"));
            self.fix_with(p, |c| {
                update::write_csum_area(&c.sb, &c.dev, &sums)?;
                c.wrote = true;
                Ok(())
            });
        }
        // The superblock's totals.
        let want = CsTotal {
            ndir: i64::from(total.ndir),
            nbfree: i64::from(total.nbfree),
            nifree: i64::from(total.nifree),
            nffree: i64::from(total.nffree),
        };
        let have = sb.cstotal;
        if have != want {
            let m = format!(
                "totals (dirs, free blocks, free inodes, free fragments) are {}/{}/{}/{}, should be {}/{}/{}/{}",
                have.ndir, have.nbfree, have.nifree, have.nffree, want.ndir, want.nbfree, want.nifree, want.nffree
            );
            let p = self.problem(Level::Preen, PH, "superblock".into(), m, Some("correct them"));
            self.fix_with(p, |c| {
                update::sb_set_totals(&c.sb, &mut c.sbraw, &want);
                c.sb_changed = true;
                Ok(())
            });
        }
        Ok(())
    }
}
