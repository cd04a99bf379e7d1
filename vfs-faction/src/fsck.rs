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

/// How far a repair may go without asking (e2fsck's PR_PREEN_OK and friends, what fsck_ffs
/// fixes when preening).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    /// Safe: counts, bitmaps, summaries, link counts, checksums, reconnection.
    Preen,
    /// Destroys something (clears an inode or an entry, clones blocks): `-y` or asked.
    Yes,
    /// A count the checker does not hold against the file system when left alone (ext2's
    /// superblock free counts): fixed like `Preen`, not a problem when not fixed.
    Minor,
    /// Reported; the checker cannot repair it.
    Never,
}

/// A problem being reported: decided with [`Reporter::want`], closed with
/// [`Reporter::done`].
pub struct Problem {
    pub level: Level,
    pub finding: Finding,
}

/// What a check has counted so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub problems: u64,
    pub fixed: u64,
}

/// The reporting every checker shares: a driver's checker says where its sink, repair mode
/// and counts are, and how it marks the file system "not clean" before the first repair.
pub trait Reporter {
    fn repair_mode(&self) -> Repair;
    fn sink(&mut self) -> &mut dyn FsckSink;
    fn tally(&mut self) -> &mut Tally;
    /// Called before each repair is made (once is enough: it may remember that it ran).
    fn begin_repair(&mut self);

    /// A problem of `level` in `phase` with `object`; `repair` says what fixing it does.
    fn problem(&self, level: Level, phase: &str, object: String, message: String, repair: Option<&str>) -> Problem {
        let finding = Finding { phase: phase.to_string(), object, path: None, message, repair: repair.map(str::to_string), fixed: false };
        Problem { level, finding }
    }

    /// May the repair of `p` be made?
    fn want(&mut self, p: &Problem) -> bool {
        if p.finding.repair.is_none() {
            return false;
        }
        let ok = match (self.repair_mode(), p.level) {
            (_, Level::Never) | (Repair::No, _) => false,
            (Repair::Preen, l) => l != Level::Yes,
            (Repair::Yes, _) => true,
            (Repair::Ask, _) => self.sink().ask(&p.finding),
        };
        if ok {
            self.begin_repair();
        }
        ok
    }

    /// Closes a problem: reports it, repaired or not.
    fn done(&mut self, mut p: Problem, fixed: bool) {
        p.finding.fixed = fixed;
        let t = self.tally();
        if p.level != Level::Minor || fixed {
            t.problems += 1;
        }
        if fixed {
            t.fixed += 1;
        }
        if p.level == Level::Minor && !fixed {
            p.finding.message.push_str(" (not counted as an error)");
        }
        self.sink().finding(&p.finding);
    }

    fn unfixed(&mut self, p: Problem) {
        self.done(p, false)
    }

    /// Reports `p` and runs `fix` if allowed; `fix` failing leaves it unfixed.
    fn fix_with(&mut self, p: Problem, fix: impl FnOnce(&mut Self) -> crate::KResult<()>) -> bool
    where
        Self: Sized,
    {
        if !self.want(&p) {
            self.done(p, false);
            return false;
        }
        match fix(self) {
            Ok(()) => {
                self.done(p, true);
                true
            }
            Err(e) => {
                let mut p = p;
                p.finding.message.push_str(&format!(" (repair failed: {e})"));
                self.done(p, false);
                false
            }
        }
    }
}
