//! File system checking: the interface between a driver's checker and the front ends
//! (rumpfs-fsck). Each driver owns the checks of its format and runs them through the same
//! kernel, buffer cache and block-device hypercalls as a mount; there is no second parser.

use core::fmt;

/// What the checker may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// `-n`: change nothing (the device is opened read-only).
    No,
    /// `-p`: fix what is safe to fix without asking (counts, bitmaps, summaries, link
    /// counts, orphans, reconnection).
    Preen,
    /// `-y`: fix everything, including clearing bad inodes and entries.
    Yes,
    /// Ask the sink before each repair.
    Ask,
}

/// Options of one check.
#[derive(Clone, Copy, Debug)]
pub struct FsckOptions {
    pub repair: Repair,
    /// `-f`: check even a file system marked clean.
    pub force: bool,
}

/// One problem found (and perhaps fixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Phase or pass, e.g. "Pass 1: inodes, blocks and sizes".
    pub phase: String,
    /// The object: "inode 12", "block 1234", "group 3", "superblock".
    pub object: String,
    /// Path of the file, where known.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What the repair does (or would do), e.g. "clear the entry".
    pub repair: Option<String>,
    /// The repair was made.
    pub fixed: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.phase, self.object)?;
        if let Some(p) = &self.path {
            write!(f, " ({p})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(r) = &self.repair {
            write!(f, "; {}{}", r, if self.fixed { ": fixed" } else { ": not fixed" })?;
        }
        Ok(())
    }
}

/// Where a checker reports to.
pub trait FsckSink {
    /// A finding, after any repair was decided (see [`Finding::fixed`]).
    fn finding(&mut self, f: &Finding);
    /// In [`Repair::Ask`] mode: may this repair be made? (`f.fixed` is false.)
    fn ask(&mut self, _f: &Finding) -> bool {
        false
    }
    /// Progress within a phase (for a progress bar).
    fn progress(&mut self, _phase: &str, _done: u64, _total: u64) {}
}

/// The outcome of one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckSummary {
    /// Marked clean and not forced: not checked.
    pub skipped_clean: bool,
    /// Problems found.
    pub problems: u64,
    /// Of those, fixed.
    pub fixed: u64,
    /// One line such as e2fsck's "12/2048 files, 345/8192 blocks".
    pub line: String,
}

impl FsckSummary {
    /// Problems found and not fixed.
    pub fn left(&self) -> u64 {
        self.problems - self.fixed.min(self.problems)
    }

    /// The fsck(8) exit bits of this outcome: 0 clean, 1 corrected, 4 left uncorrected.
    pub fn exit_bits(&self) -> i32 {
        let mut e = 0;
        if self.fixed > 0 {
            e |= 1;
        }
        if self.left() > 0 {
            e |= 4;
        }
        e
    }
}
