//! The write side of the vnode operations: POSIX rules that do not depend on the on-disk
//! format are enforced here, once, for every driver.

use super::Mount;
use crate::fs::FileSystem;
use crate::cred::{check_access, Cred, W_OK, X_OK};
use crate::errno::{Errno, KResult};
use crate::fs::{Attr, FileType, Ino, NewNode, RenameMode, SetAttr, Vnode, XattrFlags, NAME_MAX};
use crate::hypercall::Timespec;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

/// The mode a regular file keeps after a write or truncate by `cred` who is not root (Linux's
/// `setattr_should_drop_suidgid`): setuid goes; setgid goes when the group may execute, or
/// when the writer is not in the file's group. Only the caller's primary group is known here,
/// so a member through a supplementary group loses setgid too (the safe side).
fn dropped_by_write(a: &Attr, cred: &Cred) -> u32 {
    if a.kind != FileType::Regular || cred.is_root() {
        return a.perm;
    }
    let mut perm = a.perm & !S_ISUID;
    if perm & S_ISGID != 0 && (perm & 0o010 != 0 || !cred.in_group(a.gid)) {
        perm &= !S_ISGID;
    }
    perm
}
const S_ISVTX: u32 = 0o1000;

/// A time argument of utimensat(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// `UTIME_NOW`.
    Now,
    /// An explicit time.
    At(Timespec),
}

fn check_name(name: &[u8]) -> KResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn is_dots(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

impl Mount {
    fn writable(&self) -> KResult<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Runs `f` with the vnode of `ino`, releasing it afterwards.
    fn with_vnode<T>(&self, ino: Ino, f: impl FnOnce(&Arc<Vnode>) -> KResult<T>) -> KResult<T> {
        let vn = self.vnode(ino)?;
        let r = f(&vn);
        self.release(vn);
        r
    }

    /// The directory `dir`, checked writable and searchable by `cred`.
    fn dir_for_change(&self, cred: &Cred, dir: &Vnode) -> KResult<Attr> {
        let a = self.fs_as(cred).getattr(dir)?;
        if a.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        check_access(&a, cred, W_OK | X_OK)?;
        Ok(a)
    }

    /// Sticky directories: only the owner of the entry or of the directory (or root) may
    /// remove or rename it.
    fn sticky_ok(cred: &Cred, dir: &Attr, target: &Attr) -> KResult<()> {
        if dir.perm & S_ISVTX != 0 && !cred.is_root() && cred.uid != target.uid && cred.uid != dir.uid {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Looks `name` up without the search check (already done) and without counting.
    fn child(&self, fs: &dyn FileSystem, dir: &Vnode, name: &[u8]) -> KResult<Option<Arc<Vnode>>> {
        match fs.lookup(dir, name) {
            Ok(ino) => self.vnode(ino).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn counted(&self, ino: Ino) -> KResult<Attr> {
        let vn = self.vnode(ino)?;
        match self.fs.getattr(&vn) {
            Ok(a) => {
                vn.nlookup.fetch_add(1, Ordering::AcqRel);
                Ok(a)
            }
            Err(e) => {
                self.release(vn);
                Err(e)
            }
        }
    }

    /// Creates a file, directory, device, fifo or socket `name` in `dir`, owned by the caller
    /// (group from a setgid directory), and counts one lookup on it as FUSE expects.
    /// `perm` is already masked by the caller's umask.
    pub fn mknod(&self, cred: &Cred, dir: Ino, name: &[u8], kind: FileType, perm: u32, rdev: u32) -> KResult<Attr> {
        let fs = self.fs_as(cred);
        self.writable()?;
        check_name(name)?;
        if kind == FileType::Symlink {
            return Err(Errno::EINVAL);
        }
        if matches!(kind, FileType::CharDevice | FileType::BlockDevice) && !cred.is_root() {
            return Err(Errno::EPERM);
        }
        let ino = self.with_vnode(dir, |d| {
            let da = self.dir_for_change(cred, d)?;
            if is_dots(name) || self.child(&*fs, d, name)?.map(|v| self.release(v)).is_some() {
                return Err(Errno::EEXIST);
            }
            let node = self.new_node(cred, &da, kind, perm, rdev);
            fs.create(d, name, &node)
        })?;
        self.counted(ino)
    }

    fn new_node(&self, cred: &Cred, dir: &Attr, kind: FileType, perm: u32, rdev: u32) -> NewNode {
        let mut perm = perm & 0o7777;
        let gid = if dir.perm & S_ISGID != 0 {
            if kind == FileType::Directory {
                perm |= S_ISGID;
            }
            dir.gid
        } else {
            cred.gid
        };
        if kind != FileType::Directory && perm & S_ISGID != 0 && !cred.is_root() && !cred.in_group(gid) {
            perm &= !S_ISGID;
        }
        NewNode { kind, perm, uid: cred.uid, gid, rdev }
    }

    /// Creates a symbolic link.
    pub fn symlink(&self, cred: &Cred, dir: Ino, name: &[u8], target: &[u8]) -> KResult<Attr> {
        let fs = self.fs_as(cred);
        self.writable()?;
        check_name(name)?;
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= 4096 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self.with_vnode(dir, |d| {
            let da = self.dir_for_change(cred, d)?;
            if is_dots(name) || self.child(&*fs, d, name)?.map(|v| self.release(v)).is_some() {
                return Err(Errno::EEXIST);
            }
            let node = self.new_node(cred, &da, FileType::Symlink, 0o777, 0);
            fs.symlink(d, name, target, &node)
        })?;
        self.counted(ino)
    }

    /// Makes `newdir/newname` another link to `ino`.
    pub fn link(&self, cred: &Cred, ino: Ino, newdir: Ino, newname: &[u8]) -> KResult<Attr> {
        let fs = self.fs_as(cred);
        self.writable()?;
        check_name(newname)?;
        self.with_vnode(ino, |vn| {
            if fs.getattr(vn)?.kind == FileType::Directory {
                return Err(Errno::EPERM);
            }
            self.with_vnode(newdir, |d| {
                self.dir_for_change(cred, d)?;
                if is_dots(newname) || self.child(&*fs, d, newname)?.map(|v| self.release(v)).is_some() {
                    return Err(Errno::EEXIST);
                }
                fs.link(vn, d, newname)
            })
        })?;
        self.counted(ino)
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, cred: &Cred, dir: Ino, name: &[u8]) -> KResult<()> {
        let fs = self.fs_as(cred);
        self.writable()?;
        check_name(name)?;
        if is_dots(name) {
            return Err(Errno::EISDIR);
        }
        self.with_vnode(dir, |d| {
            let da = self.dir_for_change(cred, d)?;
            let vn = self.child(&*fs, d, name)?.ok_or(Errno::ENOENT)?;
            let r = fs.getattr(&vn).and_then(|a| {
                if a.kind == FileType::Directory {
                    return Err(Errno::EISDIR);
                }
                Self::sticky_ok(cred, &da, &a)?;
                fs.unlink(d, name, &vn)
            });
            self.release(vn);
            r
        })
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, cred: &Cred, dir: Ino, name: &[u8]) -> KResult<()> {
        let fs = self.fs_as(cred);
        self.writable()?;
        check_name(name)?;
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        self.with_vnode(dir, |d| {
            let da = self.dir_for_change(cred, d)?;
            let vn = self.child(&*fs, d, name)?.ok_or(Errno::ENOENT)?;
            let r = fs.getattr(&vn).and_then(|a| {
                if a.kind != FileType::Directory {
                    return Err(Errno::ENOTDIR);
                }
                if vn.ino == self.root.ino {
                    return Err(Errno::EBUSY);
                }
                Self::sticky_ok(cred, &da, &a)?;
                fs.rmdir(d, name, &vn)
            });
            self.release(vn);
            r
        })
    }

    /// True if directory `dir` is `anc` or lies below it (walking `..` to the root).
    fn is_under(&self, dir: &Arc<Vnode>, anc: Ino) -> KResult<bool> {
        let mut cur = dir.clone();
        let mut seen = Vec::new();
        for _ in 0..4096 {
            if cur.ino == anc {
                return Ok(true);
            }
            if cur.ino == self.root.ino {
                return Ok(false);
            }
            let up = self.fs.lookup(&cur, b"..")?;
            seen.push(cur.ino);
            cur = self.vnode(up)?;
        }
        drop(cur);
        for ino in seen {
            self.maybe_evict(ino);
        }
        log::error!("{}: directory {} has no way up to the root", self.source, dir.ino);
        Err(Errno::EIO)
    }

    /// rename(2), with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        cred: &Cred,
        sdir: Ino,
        sname: &[u8],
        ddir: Ino,
        dname: &[u8],
        mode: RenameMode,
    ) -> KResult<()> {
        let fs = self.fs_as(cred);
        self.writable()?;
        check_name(sname)?;
        check_name(dname)?;
        if is_dots(sname) || is_dots(dname) {
            return Err(if mode == RenameMode::Exchange { Errno::EINVAL } else { Errno::EBUSY });
        }
        let sd = self.vnode(sdir)?;
        let dd = match self.vnode(ddir) {
            Ok(v) => v,
            Err(e) => {
                self.release(sd);
                return Err(e);
            }
        };
        let mut held = Vec::new();
        let r = (|| {
            let sda = self.dir_for_change(cred, &sd)?;
            let dda = self.dir_for_change(cred, &dd)?;
            let sv = self.child(&*fs, &sd, sname)?.ok_or(Errno::ENOENT)?;
            held.push(sv.clone());
            let dv = self.child(&*fs, &dd, dname)?;
            if let Some(v) = &dv {
                held.push(v.clone());
            }
            let sa = fs.getattr(&sv)?;
            Self::sticky_ok(cred, &sda, &sa)?;
            let da = match &dv {
                Some(v) => Some(fs.getattr(v)?),
                None => None,
            };
            match (mode, &da) {
                (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST),
                (RenameMode::Exchange, None) => return Err(Errno::ENOENT),
                _ => {}
            }
            if let Some(da) = &da {
                if da.ino == sa.ino {
                    // Two links to one file: nothing to do (POSIX).
                    return Ok(());
                }
                Self::sticky_ok(cred, &dda, da)?;
                if mode != RenameMode::Exchange {
                    match (sa.kind == FileType::Directory, da.kind == FileType::Directory) {
                        (true, false) => return Err(Errno::ENOTDIR),
                        (false, true) => return Err(Errno::EISDIR),
                        _ => {}
                    }
                }
            }
            // A directory moving to another parent rewrites its "..": it must be writable, and
            // it may not move below itself.
            let moves = |a: &Attr, from: Ino, to: &Arc<Vnode>| -> KResult<()> {
                if a.kind == FileType::Directory && from != to.ino {
                    check_access(a, cred, W_OK)?;
                    if self.is_under(to, a.ino)? {
                        return Err(Errno::EINVAL);
                    }
                }
                Ok(())
            };
            moves(&sa, sd.ino, &dd)?;
            if mode == RenameMode::Exchange {
                if let Some(da) = &da {
                    moves(da, dd.ino, &sd)?;
                }
            }
            fs.rename(&sd, sname, &sv, &dd, dname, dv.as_deref(), mode)
        })();
        for v in held {
            self.release(v);
        }
        self.release(sd);
        self.release(dd);
        r
    }

    /// Writes to an open file. A write by anyone but root drops privileges as Linux does
    /// ([`dropped_by_write`]).
    pub fn write(&self, cred: &Cred, vn: &Vnode, off: u64, data: &[u8]) -> KResult<usize> {
        let fs = self.fs_as(cred);
        self.writable()?;
        let n = fs.write(vn, off, data)?;
        if !cred.is_root() {
            let a = fs.getattr(vn)?;
            let perm = dropped_by_write(&a, cred);
            if perm != a.perm {
                fs.setattr(vn, &SetAttr { perm: Some(perm), ..Default::default() })?;
            }
        }
        Ok(n)
    }

    /// chmod, chown, truncate and utimens in one call, with the rules of chmod(2), chown(2),
    /// truncate(2) and utimensat(2). `via_handle`: the change comes through an open file
    /// (ftruncate), whose open already checked write permission.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        cred: &Cred,
        ino: Ino,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
        via_handle: bool,
    ) -> KResult<Attr> {
        let fs = self.fs_as(cred);
        self.with_vnode(ino, |vn| {
            let a = fs.getattr(vn)?;
            let nothing = perm.is_none() && uid.is_none() && gid.is_none() && size.is_none() && atime.is_none() && mtime.is_none();
            if nothing {
                return Ok(a);
            }
            self.writable()?;
            let owner = cred.is_root() || cred.uid == a.uid;
            let mut set = SetAttr::default();
            let mut new_perm = a.perm;
            if let Some(p) = perm {
                if !owner {
                    return Err(Errno::EPERM);
                }
                new_perm = p & 0o7777;
                let g = gid.unwrap_or(a.gid);
                if !cred.is_root() && !cred.in_group(g) && a.kind != FileType::Directory {
                    new_perm &= !S_ISGID;
                }
            }
            if uid.is_some_and(|u| u != a.uid) && !cred.is_root() {
                return Err(Errno::EPERM);
            }
            if let Some(g) = gid {
                if g != a.gid && !cred.is_root() && !(cred.uid == a.uid && cred.in_group(g)) {
                    return Err(Errno::EPERM);
                }
            }
            let owner_change = uid.is_some_and(|u| u != a.uid) || gid.is_some_and(|g| g != a.gid);
            if owner_change && a.kind != FileType::Directory {
                // chown clears setuid, and setgid when the group may execute (Linux).
                new_perm &= !S_ISUID;
                if new_perm & 0o010 != 0 {
                    new_perm &= !S_ISGID;
                }
            }
            if new_perm != a.perm || perm.is_some() {
                set.perm = Some(new_perm);
            }
            set.uid = uid;
            set.gid = gid;
            if let Some(sz) = size {
                match a.kind {
                    FileType::Directory => return Err(Errno::EISDIR),
                    FileType::Regular => {}
                    _ => return Err(Errno::EINVAL),
                }
                if !via_handle {
                    check_access(&a, cred, W_OK)?;
                }
                set.size = Some(sz);
                // truncate(2) by anyone but root drops privileges as a write does (the FUSE
                // front end leaves this to us).
                if !cred.is_root() {
                    let kept = dropped_by_write(&Attr { perm: new_perm, ..a.clone() }, cred);
                    if kept != new_perm {
                        new_perm = kept;
                        set.perm = Some(new_perm);
                    }
                }
            }
            let now = self.hyper.clock_realtime();
            let explicit = matches!(atime, Some(TimeSet::At(_))) || matches!(mtime, Some(TimeSet::At(_)));
            if atime.is_some() || mtime.is_some() {
                if explicit {
                    if !owner {
                        return Err(Errno::EPERM);
                    }
                } else if !owner {
                    check_access(&a, cred, W_OK)?;
                }
                let t = |s: TimeSet| match s {
                    TimeSet::Now => now,
                    TimeSet::At(t) => t,
                };
                set.atime = atime.map(t);
                set.mtime = mtime.map(t);
            }
            fs.setattr(vn, &set)
        })
    }

    fn xattr_write_check(&self, cred: &Cred, a: &Attr, name: &[u8]) -> KResult<()> {
        self.writable()?;
        if name.is_empty() || name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        let known = [&b"user."[..], b"trusted.", b"security.", b"system."];
        if !known.iter().any(|p| name.starts_with(p) && name.len() > p.len()) {
            return Err(Errno::EOPNOTSUPP);
        }
        if name.starts_with(b"trusted.") && !cred.is_root() {
            return Err(Errno::EPERM);
        }
        if name.starts_with(b"user.") {
            if !matches!(a.kind, FileType::Regular | FileType::Directory) {
                return Err(Errno::EPERM);
            }
            check_access(a, cred, W_OK)?;
        }
        if (name.starts_with(b"system.") || name.starts_with(b"security.")) && !cred.is_root() && cred.uid != a.uid {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// setxattr(2).
    pub fn setxattr(&self, cred: &Cred, ino: Ino, name: &[u8], value: &[u8], flags: XattrFlags) -> KResult<()> {
        let fs = self.fs_as(cred);
        if value.len() > 65536 {
            return Err(Errno::E2BIG);
        }
        self.with_vnode(ino, |vn| {
            let a = fs.getattr(vn)?;
            self.xattr_write_check(cred, &a, name)?;
            fs.setxattr(vn, name, value, flags)
        })
    }

    /// removexattr(2).
    pub fn removexattr(&self, cred: &Cred, ino: Ino, name: &[u8]) -> KResult<()> {
        let fs = self.fs_as(cred);
        self.with_vnode(ino, |vn| {
            let a = fs.getattr(vn)?;
            self.xattr_write_check(cred, &a, name)?;
            fs.removexattr(vn, name)
        })
    }

    /// fsync(2)/fdatasync(2) of an open file or directory.
    pub fn fsync(&self, vn: &Vnode, datasync: bool) -> KResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.fs.fsync(vn, datasync)
    }

    /// fallocate(2) on an open file.
    pub fn fallocate(&self, vn: &Vnode, mode: u32, off: u64, len: u64) -> KResult<()> {
        self.writable()?;
        if len == 0 || off.checked_add(len).is_none() {
            return Err(Errno::EINVAL);
        }
        self.fs.fallocate(vn, mode, off, len)
    }
}
