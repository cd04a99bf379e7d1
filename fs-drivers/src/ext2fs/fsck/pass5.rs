//! Pass 5: the block and inode bitmaps, their checksums, and every count (free blocks, free
//! inodes, directories, unused inodes per group; free blocks and inodes in the superblock)
//! against what passes 1-4 found in use. Repairs rewrite the group's bitmap whole.

use super::bits::{disk_bit, put_disk_bit, ranges};
use super::{kind, Checker, Level, Reporter};
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

/// One group's bitmap (of blocks or of inodes) compared with what passes 1-4 found in use.
struct Bitmap {
    /// "block" or "inode".
    what: &'static str,
    /// Numbers (block or inode) in use but marked free, and free but marked in use.
    plus: Vec<u64>,
    minus: Vec<u64>,
    /// The bits past the group's last entry are not all set.
    bad_padding: bool,
    /// (stored, computed) checksum, where metadata_csum keeps one and the bitmap is on disk.
    csum: Option<(u32, u32)>,
}

impl Checker<'_> {
    /// Reports what is wrong with a bitmap; true if it is to be rewritten (the repair allowed).
    fn bitmap_verdict(&mut self, obj: &str, b: &Bitmap) -> bool {
        let mut rewrite = false;
        if b.bad_padding {
            let m = format!("padding at the end of the {} bitmap is not set", b.what);
            let p = self.problem(Level::Preen, PH, obj.to_string(), m, Some("set it"));
            rewrite |= self.fix_with(p, |_| Ok(()));
        }
        if !b.plus.is_empty() || !b.minus.is_empty() {
            let mut m = format!("{} bitmap differences:", b.what);
            if !b.plus.is_empty() {
                m.push_str(&format!(" +({}) in use but marked free", ranges(&b.plus)));
            }
            if !b.minus.is_empty() {
                m.push_str(&format!(" -({}) free but marked in use", ranges(&b.minus)));
            }
            let p = self.problem(Level::Preen, PH, obj.to_string(), m, Some(&format!("rewrite the {} bitmap", b.what)));
            rewrite |= self.fix_with(p, |_| Ok(()));
        } else if let Some((have, c)) = b.csum.filter(|(have, c)| have != c) {
            let m = format!("{} bitmap checksum is 0x{have:x}, should be 0x{c:x}", b.what);
            let p = self.problem(Level::Preen, PH, obj.to_string(), m, Some("rewrite the checksum"));
            rewrite |= self.fix_with(p, |_| Ok(()));
        }
        rewrite
    }

    /// Reports a group count that differs from the one counted, and sets it if allowed.
    fn count_verdict(&mut self, obj: &str, what: &str, have: u64, counted: u64, gi: usize, set: impl FnOnce(&mut GroupDesc)) {
        if have == counted {
            return;
        }
        let m = format!("{what} count is {have}, counted {counted}");
        let p = self.problem(Level::Preen, PH, obj.to_string(), m, Some("fix the count"));
        self.fix_with(p, |c| {
            set(&mut c.groups[gi]);
            c.gd_dirty[gi] = true;
            Ok(())
        });
    }

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
            let mut b = Bitmap { what: "block", plus: Vec::new(), minus: Vec::new(), bad_padding: false, csum: None };
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
                    b.plus.push(first + i);
                } else if !used && on {
                    b.minus.push(first + i);
                }
            }
            // Bits past the group's blocks are set, as mke2fs leaves them.
            for i in nb as usize..bs * 8 {
                put_disk_bit(&mut want, i, true);
            }
            total_free_blocks += free;
            let last = g + 1 == sb.group_count;
            b.bad_padding = last && !block_uninit && (nb as usize..(sb.blocks_per_group as usize).min(bs * 8)).any(|i| !disk_bit(&disk, i));
            if sb.metadata_csum() && !block_uninit {
                b.csum = Some((stored_csum(&self.groups[gi], 0x18, 0x38), mask(update::bitmap_csum(&sb, &disk, sb.blocks_per_group))));
            }
            if self.bitmap_verdict(&obj, &b) {
                let d = &mut self.groups[gi];
                update::write_block_bitmap(&sb, &self.dev, d, want)?;
                if csums {
                    d.set_flags(d.flags() & !group::BG_BLOCK_UNINIT);
                }
                self.gd_dirty[gi] = true;
                self.wrote = true;
            }
            let have_free = u64::from(self.groups[gi].free_blocks());
            self.count_verdict(&obj, "free blocks", have_free, free, gi, |d| d.set_free_blocks(free as u32));
            // Inodes.
            let inode_uninit = csums && flags & group::BG_INODE_UNINIT != 0;
            let disk: Vec<u8> =
                if inode_uninit { vec![0u8; bs] } else { self.dev.bread(self.groups[gi].inode_bitmap())?.to_vec() };
            let mut b = Bitmap { what: "inode", plus: Vec::new(), minus: Vec::new(), bad_padding: false, csum: None };
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
                    b.plus.push(u64::from(ino));
                } else if !used && on {
                    b.minus.push(u64::from(ino));
                }
            }
            for i in ipg as usize..bs * 8 {
                put_disk_bit(&mut want, i, true);
            }
            total_free_inodes += u64::from(free);
            b.bad_padding = !inode_uninit && (ipg as usize..bs * 8).any(|i| !disk_bit(&disk, i));
            if sb.metadata_csum() && !inode_uninit {
                b.csum = Some((stored_csum(&self.groups[gi], 0x1A, 0x3A), mask(update::bitmap_csum(&sb, &disk, ipg))));
            }
            if self.bitmap_verdict(&obj, &b) {
                let d = &mut self.groups[gi];
                update::write_inode_bitmap(&sb, &self.dev, d, want)?;
                if csums {
                    d.set_flags(d.flags() & !group::BG_INODE_UNINIT);
                }
                self.gd_dirty[gi] = true;
                self.wrote = true;
            }
            let have_free = self.groups[gi].free_inodes();
            self.count_verdict(&obj, "free inodes", u64::from(have_free), u64::from(free), gi, |d| d.set_free_inodes(free));
            let have_dirs = self.groups[gi].used_dirs();
            self.count_verdict(&obj, "directories", u64::from(have_dirs), u64::from(dirs), gi, |d| d.set_used_dirs(dirs));
            if csums {
                let unused = self.groups[gi].itable_unused();
                let max = ipg - last_used;
                if unused > max || unused > free {
                    let m = format!("unused inodes count is {unused}, at most {}", max.min(free));
                    let p = self.problem(Level::Preen, PH, obj.clone(), m, Some("fix the count"));
                    self.fix_with(p, |c| {
                        c.groups[gi].set_itable_unused(max.min(free));
                        c.gd_dirty[gi] = true;
                        Ok(())
                    });
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
            self.fix_with(p, |c| {
                update::sb_set_counts(&sb, &mut c.sbraw, total_free_blocks, total_free_inodes as u32);
                c.sb_changed = true;
                Ok(())
            });
        }
        Ok(())
    }
}
