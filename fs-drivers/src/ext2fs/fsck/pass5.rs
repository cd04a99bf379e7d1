//! Pass 5: the block and inode bitmaps, their checksums, and every count (free blocks, free
//! inodes, directories, unused inodes per group; free blocks and inodes in the superblock)
//! against what passes 1-4 found in use. Repairs rewrite the group's bitmap whole.

use super::bits::{disk_bit, put_disk_bit, ranges};
use super::{kind, Checker, Level};
use crate::ext2fs::alloc::{group_blocks, group_first};
use crate::ext2fs::group::{self, GroupDesc};
use crate::ext2fs::update;
use crate::ext2fs::{le16, le32};
use vfs_faction::KResult;

const PH: &str = "Pass 5: group summary information";

fn stored_csum(d: &GroupDesc, lo: usize, hi: usize) -> u32 {
    let mut v = u32::from(le16(&d.raw, lo));
    if d.raw.len() >= 64 {
        v |= u32::from(le16(&d.raw, hi)) << 16;
    }
    v
}

impl Checker<'_> {
    pub(super) fn pass5(&mut self) -> KResult<()> {
        let sb = self.sb.clone();
        let bs = self.bs as usize;
        let ipg = sb.inodes_per_group;
        let csums = self.group_csums();
        let wide = sb.desc_size >= 64;
        let mask = |c: u32| if wide { c } else { c & 0xFFFF };
        let mut total_free_blocks = 0u64;
        let mut total_free_inodes = 0u64;
        for g in 0..sb.group_count {
            self.progress(PH, u64::from(g), u64::from(sb.group_count));
            let gi = g as usize;
            if self.bad_group[gi] {
                continue;
            }
            let obj = format!("group {g}");
            // Blocks.
            let first = group_first(&sb, g);
            let nb = group_blocks(&sb, g);
            let flags = self.groups[gi].flags();
            let block_uninit = csums && flags & group::BG_BLOCK_UNINIT != 0;
            let disk: Vec<u8> = if block_uninit {
                let mut v = vec![0u8; bs];
                let mut ranges_ = Vec::new();
                self.group_metadata(g, &mut |b, n| ranges_.push((b, n)));
                for (b, n) in ranges_ {
                    for x in b..b + n {
                        if x >= first && x < first + nb {
                            put_disk_bit(&mut v, (x - first) as usize, true);
                        }
                    }
                }
                v
            } else {
                self.dev.bread(self.groups[gi].block_bitmap())?.to_vec()
            };
            let mut plus = Vec::new();
            let mut minus = Vec::new();
            let mut want = vec![0u8; bs];
            let mut free = 0u64;
            for i in 0..nb {
                let used = self.used.get(first + i);
                put_disk_bit(&mut want, i as usize, used);
                if !used {
                    free += 1;
                }
                let on = disk_bit(&disk, i as usize);
                if used && !on {
                    plus.push(first + i);
                } else if !used && on {
                    minus.push(first + i);
                }
            }
            // Bits past the group's blocks are set, as mke2fs leaves them.
            for i in nb as usize..bs * 8 {
                put_disk_bit(&mut want, i, true);
            }
            total_free_blocks += free;
            let mut rewrite = false;
            let last = g + 1 == sb.group_count;
            if last && !block_uninit && (nb as usize..(sb.blocks_per_group as usize).min(bs * 8)).any(|i| !disk_bit(&disk, i)) {
                let p = self.problem(Level::Preen, PH, obj.clone(), "padding at the end of the block bitmap is not set".into(), Some("set it"));
                if self.want(&p) {
                    rewrite = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
            if !plus.is_empty() || !minus.is_empty() {
                let mut m = String::from("block bitmap differences:");
                if !plus.is_empty() {
                    m.push_str(&format!(" +({}) in use but marked free", ranges(&plus)));
                }
                if !minus.is_empty() {
                    m.push_str(&format!(" -({}) free but marked in use", ranges(&minus)));
                }
                let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the block bitmap"));
                if self.want(&p) {
                    rewrite = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            } else if sb.metadata_csum() && !block_uninit {
                let have = stored_csum(&self.groups[gi], 0x18, 0x38);
                let c = mask(update::bitmap_csum(&sb, &disk, sb.blocks_per_group));
                if have != c {
                    let m = format!("block bitmap checksum is 0x{have:x}, should be 0x{c:x}");
                    let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the checksum"));
                    if self.want(&p) {
                        rewrite = true;
                        self.done(p, true);
                    } else {
                        self.unfixed(p);
                    }
                }
            }
            if rewrite {
                let d = &mut self.groups[gi];
                update::write_block_bitmap(&sb, &self.dev, d, want)?;
                if csums {
                    d.set_flags(d.flags() & !group::BG_BLOCK_UNINIT);
                }
                self.gd_dirty[gi] = true;
                self.wrote = true;
            }
            let have_free = u64::from(self.groups[gi].free_blocks());
            if have_free != free {
                let m = format!("free blocks count is {have_free}, counted {free}");
                let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("fix the count"));
                if self.want(&p) {
                    self.groups[gi].set_free_blocks(free as u32);
                    self.gd_dirty[gi] = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
            // Inodes.
            let inode_uninit = csums && flags & group::BG_INODE_UNINIT != 0;
            let disk: Vec<u8> =
                if inode_uninit { vec![0u8; bs] } else { self.dev.bread(self.groups[gi].inode_bitmap())?.to_vec() };
            let mut plus = Vec::new();
            let mut minus = Vec::new();
            let mut want = vec![0u8; bs];
            let mut free = 0u32;
            let mut dirs = 0u32;
            let mut last_used = 0u32;
            for i in 0..ipg {
                let ino = g * ipg + i + 1;
                let k = self.kind[ino as usize];
                let used = k != kind::FREE;
                put_disk_bit(&mut want, i as usize, used);
                if used {
                    last_used = i + 1;
                    if k & kind::TYPE_MASK == kind::DIR {
                        dirs += 1;
                    }
                } else {
                    free += 1;
                }
                let on = disk_bit(&disk, i as usize);
                if used && !on {
                    plus.push(u64::from(ino));
                } else if !used && on {
                    minus.push(u64::from(ino));
                }
            }
            for i in ipg as usize..bs * 8 {
                put_disk_bit(&mut want, i, true);
            }
            total_free_inodes += u64::from(free);
            let mut rewrite = false;
            if !inode_uninit && (ipg as usize..bs * 8).any(|i| !disk_bit(&disk, i)) {
                let p = self.problem(Level::Preen, PH, obj.clone(), "padding at the end of the inode bitmap is not set".into(), Some("set it"));
                if self.want(&p) {
                    rewrite = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
            if !plus.is_empty() || !minus.is_empty() {
                let mut m = String::from("inode bitmap differences:");
                if !plus.is_empty() {
                    m.push_str(&format!(" +({}) in use but marked free", ranges(&plus)));
                }
                if !minus.is_empty() {
                    m.push_str(&format!(" -({}) free but marked in use", ranges(&minus)));
                }
                let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the inode bitmap"));
                if self.want(&p) {
                    rewrite = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            } else if sb.metadata_csum() && !inode_uninit {
                let have = stored_csum(&self.groups[gi], 0x1A, 0x3A);
                let c = mask(update::bitmap_csum(&sb, &disk, ipg));
                if have != c {
                    let m = format!("inode bitmap checksum is 0x{have:x}, should be 0x{c:x}");
                    let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("rewrite the checksum"));
                    if self.want(&p) {
                        rewrite = true;
                        self.done(p, true);
                    } else {
                        self.unfixed(p);
                    }
                }
            }
            if rewrite {
                let d = &mut self.groups[gi];
                update::write_inode_bitmap(&sb, &self.dev, d, want)?;
                if csums {
                    d.set_flags(d.flags() & !group::BG_INODE_UNINIT);
                }
                self.gd_dirty[gi] = true;
                self.wrote = true;
            }
            let have_free = self.groups[gi].free_inodes();
            if have_free != free {
                let m = format!("free inodes count is {have_free}, counted {free}");
                let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("fix the count"));
                if self.want(&p) {
                    self.groups[gi].set_free_inodes(free);
                    self.gd_dirty[gi] = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
            let have_dirs = self.groups[gi].used_dirs();
            if have_dirs != dirs {
                let m = format!("directories count is {have_dirs}, counted {dirs}");
                let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("fix the count"));
                if self.want(&p) {
                    self.groups[gi].set_used_dirs(dirs);
                    self.gd_dirty[gi] = true;
                    self.done(p, true);
                } else {
                    self.unfixed(p);
                }
            }
            if csums {
                let unused = self.groups[gi].itable_unused();
                let max = ipg - last_used;
                if unused > max || unused > free {
                    let m = format!("unused inodes count is {unused}, at most {}", max.min(free));
                    let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("fix the count"));
                    if self.want(&p) {
                        self.groups[gi].set_itable_unused(max.min(free));
                        self.gd_dirty[gi] = true;
                        self.done(p, true);
                    } else {
                        self.unfixed(p);
                    }
                }
            }
            if self.gd_dirty[gi] && self.repair != vfs_faction::Repair::No {
                update::write_group(&sb, &self.dev, g, &mut self.groups[gi])?;
                self.wrote = true;
            }
        }
        // The superblock's totals: e2fsck does not hold these against a file system (the
        // kernel keeps them only approximately), but fixes them.
        let sb_blocks = sb.free_blocks_count;
        let sb_inodes = u64::from(le32(&self.sbraw, 0x10));
        if sb_blocks != total_free_blocks || sb_inodes != total_free_inodes {
            let m = format!(
                "superblock free counts are {sb_blocks} blocks and {sb_inodes} inodes, counted {total_free_blocks} and {total_free_inodes}"
            );
            let p = self.problem(Level::Minor, PH, "superblock".into(), m, Some("fix the counts"));
            if self.want(&p) {
                update::sb_set_counts(&sb, &mut self.sbraw, total_free_blocks, total_free_inodes as u32);
                self.sb_changed = true;
                self.done(p, true);
            } else {
                self.unfixed(p);
            }
        }
        Ok(())
    }
}
