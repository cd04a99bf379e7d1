//! Credentials and POSIX permission checks, done in the kernel so that a mount is safe with
//! `allow_other`: the FUSE bridge passes each request's uid, gid and groups, and every vnode
//! operation checks them against the file's owner and mode.

use crate::errno::{Errno, KResult};
use crate::fs::{Attr, FileType};

/// Read permission (`R_OK`).
pub const R_OK: u32 = 4;
/// Write permission (`W_OK`).
pub const W_OK: u32 = 2;
/// Execute or search permission (`X_OK`).
pub const X_OK: u32 = 1;

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Cred {
    /// The superuser.
    pub fn root() -> Cred {
        Cred { uid: 0, gid: 0, groups: Vec::new() }
    }

    /// A user with a primary group and no supplementary groups.
    pub fn user(uid: u32, gid: u32) -> Cred {
        Cred { uid, gid, groups: Vec::new() }
    }

    /// True for uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// True if `gid` is the primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Checks `mask` (a combination of [`R_OK`], [`W_OK`], [`X_OK`]) against a file's attributes,
/// as the kernel's `generic_permission` does: owner, then group, then other bits; root passes
/// read and write always, and execute when any execute bit is set or the file is a directory.
/// Fails: `EACCES`.
pub fn check_access(attr: &Attr, cred: &Cred, mask: u32) -> KResult<()> {
    let mask = mask & 7;
    if cred.is_root() {
        if mask & X_OK != 0 && attr.kind != FileType::Directory && attr.perm & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        return Ok(());
    }
    let bits = if cred.uid == attr.uid {
        attr.perm >> 6
    } else if cred.in_group(attr.gid) {
        attr.perm >> 3
    } else {
        attr.perm
    } & 7;
    if bits & mask == mask {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Ino;
    use crate::hypercall::Timespec;

    fn attr(kind: FileType, perm: u32, uid: u32, gid: u32) -> Attr {
        let t = Timespec::default();
        Attr {
            ino: Ino(5),
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: None,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn owner_group_other() {
        let a = attr(FileType::Regular, 0o640, 1000, 100);
        assert!(check_access(&a, &Cred::user(1000, 1), R_OK | W_OK).is_ok());
        assert_eq!(check_access(&a, &Cred::user(1000, 1), X_OK), Err(Errno::EACCES));
        assert!(check_access(&a, &Cred::user(2000, 100), R_OK).is_ok());
        assert_eq!(check_access(&a, &Cred::user(2000, 100), W_OK), Err(Errno::EACCES));
        let mut c = Cred::user(2000, 5);
        assert_eq!(check_access(&a, &c, R_OK), Err(Errno::EACCES));
        c.groups.push(100);
        assert!(check_access(&a, &c, R_OK).is_ok());
        // The owner class decides even when "other" would allow more.
        let b = attr(FileType::Regular, 0o044, 1000, 100);
        assert_eq!(check_access(&b, &Cred::user(1000, 1), R_OK), Err(Errno::EACCES));
    }

    #[test]
    fn root_needs_an_x_bit_to_execute_files() {
        let f = attr(FileType::Regular, 0o600, 1000, 100);
        assert!(check_access(&f, &Cred::root(), R_OK | W_OK).is_ok());
        assert_eq!(check_access(&f, &Cred::root(), X_OK), Err(Errno::EACCES));
        let d = attr(FileType::Directory, 0o000, 1000, 100);
        assert!(check_access(&d, &Cred::root(), X_OK | R_OK).is_ok());
    }
}
