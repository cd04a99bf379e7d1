//! The wire types of the portmapper (RFC 1833, version 2), MOUNT v3 and NFS v3 (RFC 1813):
//! encoders for arguments, checked decoders for results, and the NFS3ERR → errno mapping.

use super::xdr::{malformed, Dec, Enc};
use vfs_faction::{Attr, Errno, FileType, Ino, KResult, Timespec};

pub const PMAP_PROG: u32 = 100000;
pub const PMAP_VERS: u32 = 2;
pub const PMAP_PORT: u16 = 111;
pub const PMAPPROC_GETPORT: u32 = 3;
pub const IPPROTO_TCP: u32 = 6;

pub const MOUNT_PROG: u32 = 100005;
pub const MOUNT_VERS: u32 = 3;
pub const MOUNTPROC_MNT: u32 = 1;
pub const MOUNTPROC_UMNT: u32 = 3;
pub const MOUNTPROC_EXPORT: u32 = 5;

pub const NFS_PROG: u32 = 100003;
pub const NFS_VERS: u32 = 3;
pub const NFS_PORT: u16 = 2049;

/// NFSv3 procedure numbers.
pub mod procs {
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
}

/// Largest NFSv3 file handle.
pub const FHSIZE3: usize = 64;
/// Largest name or path we accept from the server.
pub const MAXPATH: usize = 4096;

/// ACCESS bits.
pub const ACCESS3_READ: u32 = 0x01;
pub const ACCESS3_LOOKUP: u32 = 0x02;
pub const ACCESS3_MODIFY: u32 = 0x04;
pub const ACCESS3_EXTEND: u32 = 0x08;
pub const ACCESS3_DELETE: u32 = 0x10;
pub const ACCESS3_EXECUTE: u32 = 0x20;

/// `stable_how` of WRITE.
pub const UNSTABLE: u32 = 0;
pub const FILE_SYNC: u32 = 2;

/// NFS3ERR_ACCES: permission denied.
pub const NFS3ERR_ACCES: u32 = 13;

/// NFS3ERR_JUKEBOX: the server is busy (e.g. recalling a file); try again later.
pub const NFS3ERR_JUKEBOX: u32 = 10008;

/// The errno an nfsstat3 (or mountstat3) stands for, as the Linux client maps them.
pub fn nfs_errno(stat: u32) -> Errno {
    match stat {
        1 => Errno::EPERM,
        2 => Errno::ENOENT,
        5 => Errno::EIO,
        6 => Errno::ENXIO,
        13 => Errno::EACCES,
        17 => Errno::EEXIST,
        18 => Errno::EXDEV,
        19 => Errno::ENODEV,
        20 => Errno::ENOTDIR,
        21 => Errno::EISDIR,
        22 => Errno::EINVAL,
        27 => Errno::EFBIG,
        28 => Errno::ENOSPC,
        30 => Errno::EROFS,
        31 => Errno::EMLINK,
        63 => Errno::ENAMETOOLONG,
        66 => Errno::ENOTEMPTY,
        69 => Errno::EDQUOT,
        70 => Errno::ESTALE,
        71 => Errno::EREMOTE,
        10001 => Errno::ESTALE,      // BADHANDLE
        10002 => Errno::EIO,         // NOT_SYNC
        10003 => Errno::EINVAL,      // BAD_COOKIE (readdir restarts on it)
        10004 => Errno::EOPNOTSUPP,  // NOTSUPP
        10005 => Errno::EINVAL,      // TOOSMALL
        10006 => Errno::EIO,         // SERVERFAULT
        10007 => Errno::EINVAL,      // BADTYPE
        10008 => Errno::EAGAIN,      // JUKEBOX (after our retries)
        s => {
            log::warn!("nfs: unknown status {s} from the server");
            Errno::EIO
        }
    }
}

/// A file handle (at most 64 bytes).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Fh(pub Vec<u8>);

impl Fh {
    pub fn decode(d: &mut Dec<'_>) -> KResult<Fh> {
        Ok(Fh(d.opaque(FHSIZE3)?.to_vec()))
    }
    pub fn encode(&self, e: &mut Enc) {
        e.opaque(&self.0);
    }
}

/// fattr3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fattr {
    pub ftype: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev: (u32, u32),
    pub fsid: u64,
    pub fileid: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

fn time(d: &mut Dec<'_>) -> KResult<Timespec> {
    let sec = d.u32()?;
    let nsec = d.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(malformed(&format!("nanoseconds {nsec}")));
    }
    Ok(Timespec { sec: i64::from(sec), nsec })
}

fn enc_time(e: &mut Enc, t: Timespec) {
    e.u32(t.sec.clamp(0, i64::from(u32::MAX)) as u32).u32(t.nsec);
}

pub fn ftype_kind(t: u32) -> KResult<FileType> {
    Ok(match t {
        1 => FileType::Regular,
        2 => FileType::Directory,
        3 => FileType::BlockDevice,
        4 => FileType::CharDevice,
        5 => FileType::Symlink,
        6 => FileType::Socket,
        7 => FileType::Fifo,
        t => return Err(malformed(&format!("file type {t}"))),
    })
}

pub fn kind_ftype(k: FileType) -> u32 {
    match k {
        FileType::Regular => 1,
        FileType::Directory => 2,
        FileType::BlockDevice => 3,
        FileType::CharDevice => 4,
        FileType::Symlink => 5,
        FileType::Socket => 6,
        FileType::Fifo => 7,
    }
}

/// Linux `dev_t` encoding of major and minor.
pub fn makedev(major: u32, minor: u32) -> u32 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

pub fn major(dev: u32) -> u32 {
    (dev >> 8) & 0xfff
}

pub fn minor(dev: u32) -> u32 {
    (dev & 0xff) | ((dev >> 12) & 0xfff00)
}

impl Fattr {
    pub fn decode(d: &mut Dec<'_>) -> KResult<Fattr> {
        let ftype = d.u32()?;
        ftype_kind(ftype)?;
        Ok(Fattr {
            ftype,
            mode: d.u32()?,
            nlink: d.u32()?,
            uid: d.u32()?,
            gid: d.u32()?,
            size: d.u64()?,
            used: d.u64()?,
            rdev: (d.u32()?, d.u32()?),
            fsid: d.u64()?,
            fileid: d.u64()?,
            atime: time(d)?,
            mtime: time(d)?,
            ctime: time(d)?,
        })
    }

    /// As the kernel's attributes (inode number = fileid).
    pub fn to_attr(&self) -> Attr {
        Attr {
            ino: Ino(self.fileid),
            kind: ftype_kind(self.ftype).unwrap_or(FileType::Regular),
            perm: self.mode & 0o7777,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            blocks: self.used.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: None,
            rdev: makedev(self.rdev.0, self.rdev.1),
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

/// post_op_attr.
pub fn post_op_attr(d: &mut Dec<'_>) -> KResult<Option<Fattr>> {
    if d.bool()? {
        Ok(Some(Fattr::decode(d)?))
    } else {
        Ok(None)
    }
}

/// wcc_data: the post-operation attributes (the pre-operation part is checked and skipped).
pub fn wcc_data(d: &mut Dec<'_>) -> KResult<Option<Fattr>> {
    if d.bool()? {
        d.u64()?;
        time(d)?;
        time(d)?;
    }
    post_op_attr(d)
}

/// post_op_fh3.
pub fn post_op_fh(d: &mut Dec<'_>) -> KResult<Option<Fh>> {
    if d.bool()? {
        Ok(Some(Fh::decode(d)?))
    } else {
        Ok(None)
    }
}

/// sattr3: what to change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sattr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
}

impl Sattr {
    pub fn encode(&self, e: &mut Enc) {
        for v in [self.mode, self.uid, self.gid] {
            match v {
                Some(x) => e.u32(1).u32(x),
                None => e.u32(0),
            };
        }
        match self.size {
            Some(s) => e.u32(1).u64(s),
            None => e.u32(0),
        };
        for t in [self.atime, self.mtime] {
            match t {
                // SET_TO_CLIENT_TIME
                Some(t) => {
                    e.u32(2);
                    enc_time(e, t);
                }
                None => {
                    e.u32(0);
                }
            }
        }
    }
}

/// diropargs3.
pub fn diropargs(e: &mut Enc, dir: &Fh, name: &[u8]) {
    dir.encode(e);
    e.opaque(name);
}

/// Reads the status word; a non-OK status is returned as `Err(stat)` for the caller, which
/// still has the failure arm of the result to decode if it wants the attributes.
pub fn status(d: &mut Dec<'_>) -> KResult<u32> {
    d.u32()
}

/// FSINFO results we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    pub rtmax: u32,
    pub rtpref: u32,
    pub wtmax: u32,
    pub wtpref: u32,
    pub dtpref: u32,
    pub maxfilesize: u64,
    pub properties: u32,
}

impl FsInfo {
    pub fn decode(d: &mut Dec<'_>) -> KResult<FsInfo> {
        let rtmax = d.u32()?;
        let rtpref = d.u32()?;
        let _rtmult = d.u32()?;
        let wtmax = d.u32()?;
        let wtpref = d.u32()?;
        let _wtmult = d.u32()?;
        let dtpref = d.u32()?;
        let maxfilesize = d.u64()?;
        time(d)?;
        let properties = d.u32()?;
        Ok(FsInfo { rtmax, rtpref, wtmax, wtpref, dtpref, maxfilesize, properties })
    }
}

/// One exported directory, as EXPORT lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    pub dir: String,
    pub groups: Vec<String>,
}

/// Decodes the EXPORT reply: a list of directories with the groups allowed to mount them.
pub fn decode_exports(d: &mut Dec<'_>) -> KResult<Vec<Export>> {
    let mut out = Vec::new();
    while d.bool()? {
        if out.len() > 100_000 {
            return Err(malformed("export list too long"));
        }
        let dir = String::from_utf8_lossy(d.opaque(1024)?).into_owned();
        let mut groups = Vec::new();
        while d.bool()? {
            if groups.len() > 10_000 {
                return Err(malformed("export group list too long"));
            }
            groups.push(String::from_utf8_lossy(d.opaque(255)?).into_owned());
        }
        out.push(Export { dir, groups });
    }
    Ok(out)
}

/// The MNT reply: the root handle and the auth flavours the server accepts.
pub fn decode_mnt(d: &mut Dec<'_>) -> KResult<Result<(Fh, Vec<u32>), u32>> {
    let stat = d.u32()?;
    if stat != 0 {
        return Ok(Err(stat));
    }
    let fh = Fh::decode(d)?;
    let n = d.u32()? as usize;
    if n > 64 || n * 4 > d.remaining() {
        return Err(malformed(&format!("{n} auth flavours")));
    }
    let mut fl = Vec::with_capacity(n);
    for _ in 0..n {
        fl.push(d.u32()?);
    }
    Ok(Ok((fh, fl)))
}

/// What a mountstat3 means, for the user.
pub fn mount_stat_text(stat: u32) -> &'static str {
    match stat {
        1 => "not owner (MNT3ERR_PERM)",
        2 => "no such directory on the server",
        5 => "I/O error on the server",
        13 => "permission denied by the server (is this client allowed by the export?)",
        20 => "not a directory",
        22 => "invalid argument",
        63 => "name too long",
        10004 => "operation not supported",
        10006 => "server fault",
        _ => "unknown MOUNT error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn fattr_bytes(fileid: u64, ftype: u32) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(ftype).u32(0o644).u32(1).u32(1000).u32(100).u64(5).u64(4096).u32(8).u32(1).u64(7).u64(fileid);
        for _ in 0..3 {
            e.u32(1_700_000_000).u32(5);
        }
        e.buf
    }

    #[test]
    fn fattr_decodes_and_rejects_nonsense() {
        let b = fattr_bytes(42, 1);
        let a = Fattr::decode(&mut Dec::new(&b)).unwrap();
        let k = a.to_attr();
        assert_eq!((k.ino, k.kind, k.perm, k.size, k.blocks, k.uid), (Ino(42), FileType::Regular, 0o644, 5, 8, 1000));
        assert_eq!(k.rdev, makedev(8, 1));
        assert_eq!((major(k.rdev), minor(k.rdev)), (8, 1));
        // Unknown file type, nanoseconds out of range, truncation.
        assert_eq!(Fattr::decode(&mut Dec::new(&fattr_bytes(1, 9))), Err(Errno::EIO));
        let mut bad = fattr_bytes(1, 1);
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&2_000_000_000u32.to_be_bytes());
        assert_eq!(Fattr::decode(&mut Dec::new(&bad)), Err(Errno::EIO));
        for cut in 0..b.len() {
            assert_eq!(Fattr::decode(&mut Dec::new(&b[..cut])), Err(Errno::EIO));
        }
    }

    #[test]
    fn every_nfs3err_has_an_errno() {
        let cases = [
            (1, Errno::EPERM), (2, Errno::ENOENT), (5, Errno::EIO), (6, Errno::ENXIO), (13, Errno::EACCES),
            (17, Errno::EEXIST), (18, Errno::EXDEV), (19, Errno::ENODEV), (20, Errno::ENOTDIR),
            (21, Errno::EISDIR), (22, Errno::EINVAL), (27, Errno::EFBIG), (28, Errno::ENOSPC),
            (30, Errno::EROFS), (31, Errno::EMLINK), (63, Errno::ENAMETOOLONG), (66, Errno::ENOTEMPTY),
            (69, Errno::EDQUOT), (70, Errno::ESTALE), (71, Errno::EREMOTE), (10001, Errno::ESTALE),
            (10002, Errno::EIO), (10003, Errno::EINVAL), (10004, Errno::EOPNOTSUPP), (10005, Errno::EINVAL),
            (10006, Errno::EIO), (10007, Errno::EINVAL), (10008, Errno::EAGAIN), (424242, Errno::EIO),
        ];
        for (s, e) in cases {
            assert_eq!(nfs_errno(s), e, "status {s}");
        }
    }

    #[test]
    fn exports_and_mnt() {
        let mut e = Enc::new();
        e.bool(true).opaque(b"/export").bool(true).opaque(b"*").bool(false).bool(true).opaque(b"/b").bool(false).bool(false);
        let x = decode_exports(&mut Dec::new(&e.buf)).unwrap();
        assert_eq!(x, vec![Export { dir: "/export".into(), groups: vec!["*".into()] }, Export { dir: "/b".into(), groups: vec![] }]);
        // Truncated list: an error.
        assert!(decode_exports(&mut Dec::new(&e.buf[..e.buf.len() - 4])).is_err());
        let mut m = Enc::new();
        m.u32(0).opaque(&[1, 2, 3]).u32(2).u32(1).u32(0);
        assert_eq!(decode_mnt(&mut Dec::new(&m.buf)).unwrap(), Ok((Fh(vec![1, 2, 3]), vec![1, 0])));
        let mut m = Enc::new();
        m.u32(0).opaque(&[0; 65]);
        assert!(decode_mnt(&mut Dec::new(&m.buf)).is_err(), "handle over 64 bytes");
        let mut m = Enc::new();
        m.u32(0).opaque(&[1]).u32(1_000_000);
        assert!(decode_mnt(&mut Dec::new(&m.buf)).is_err(), "absurd flavour count");
        let mut m = Enc::new();
        m.u32(13);
        assert_eq!(decode_mnt(&mut Dec::new(&m.buf)).unwrap(), Err(13));
    }
}
