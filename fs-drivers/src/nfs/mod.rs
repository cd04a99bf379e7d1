//! nfs: an NFSv3 client component (factions vfs + net).
//!
//! Every byte goes through the socket hypercalls. Mounting asks the portmapper for the MOUNT
//! and NFS ports (unless `port=`/`mountport=` are given), calls MNT for the root file handle,
//! and FSINFO/PATHCONF/GETATTR over a short synchronous connection; the NFS connection proper
//! (many calls in flight, a receiver thread) is opened on first use, so no thread exists when
//! the mount command forks into the background.
//!
//! Inode numbers are the server's fileids; the driver keeps a fileid → file handle table.
//! Each operation carries the caller's credentials as AUTH_SYS ([`FileSystem::for_cred`]),
//! so the server enforces its own permissions per user; `uid=`/`gid=` send a fixed identity
//! instead. Attributes are cached for `acregmin..acregmax` (`acdirmin..acdirmax` for
//! directories), and revalidated at every open (ACCESS returns them: close-to-open).
//! Sequential reads keep several READs of `rsize` in flight; writes are gathered into `wsize`
//! UNSTABLE WRITEs sent behind the writer and COMMITted at close, fsync and unmount; data whose
//! write verifier changed (the server restarted) is sent again.

pub mod proto;
pub mod rpc;
pub mod xdr;

use core::net::SocketAddr;
use core::time::Duration;
use proto::*;
use rpc::{Auth, Client, Pending, RpcOpts, SyncConn, AUTH_NONE, AUTH_SYS};
use foldhash::{HashMap, HashMapExt};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use vfs_faction::component::{MountContext, MountError, MountOptions, MountSource, Mounted};
use vfs_faction::fs::{DirEntry, NodeData, RenameMode, SetAttr};
use vfs_faction::{
    Attr, Component, Cred, Errno, Faction, FileSystem, FileType, Hypercalls, Ino, KResult, NewNode, StatFs, Timespec, Vnode,
};
use xdr::{Dec, Enc};

/// The NFS client component.
pub struct NfsComponent;

/// The driver option naming the user who mounts (`uid:gid[:group...]`), set by the front end;
/// calls that carry no credentials of their own are made as this user.
pub const CALLER_OPTION: &str = "x-rumpfs-caller";

/// READs in flight ahead of a sequential reader, at most.
const RA_CHUNKS: u64 = 12;
/// The kernel's largest read-ahead window: a reader that has it is plainly sequential, and
/// gets [`RA_CHUNKS`] READs ahead (more than the window, so that the data is there before the
/// next FUSE read asks for it).
const RA_SEQUENTIAL: u64 = 4 << 20;
/// WRITEs in flight per file before the writer waits for the oldest.
const WRITES_IN_FLIGHT: usize = 8;
/// Write buffers kept for reuse, at most (see [`NfsFs::spare_bufs`]).
const SPARE_BUFS: usize = 24;
/// Uncommitted bytes per file before a COMMIT in the middle of a long write.
const UNCOMMITTED_MAX: usize = 16 << 20;
/// READDIRPLUS reply size: bounded, not megabytes.
const READDIR_MAX: u32 = 64 << 10;
const READDIR_DIRCOUNT: u32 = 16 << 10;
/// Files with read-ahead state kept at once.
const RA_FILES: usize = 16;
/// Names from listings kept at once.
const NAMES_MAX: usize = 100_000;

impl Component for NfsComponent {
    fn name(&self) -> &'static str {
        "nfs"
    }
    fn description(&self) -> &'static str {
        "NFS version 3 client over TCP (portmapper, MOUNT v3, AUTH_SYS)"
    }
    fn factions(&self) -> &'static [Faction] {
        &[Faction::Vfs, Faction::Net]
    }
    fn fs_types(&self) -> &'static [&'static str] {
        &["nfs"]
    }

    fn mount(&self, ctx: &MountContext, _fstype: &str, source: MountSource, opts: &MountOptions) -> Result<Mounted, MountError> {
        let MountSource::Network { host, path } = source else {
            return Err(MountError::new(Errno::EINVAL, "nfs mounts a network share (host:/path), not a block device"));
        };
        let cfg = Config::parse(opts)?;
        let fs = NfsFs::mount(ctx.hyper.clone(), &host, &path, cfg, opts.read_only)?;
        Ok(Mounted { fs: Arc::new(fs), read_only: opts.read_only, warnings: Vec::new() })
    }
}

/// Mount options the driver understands.
#[derive(Clone, Debug)]
pub struct Config {
    pub port: Option<u16>,
    pub mountport: Option<u16>,
    pub fixed: Option<(u32, u32)>,
    pub caller: Cred,
    pub rpc: RpcOpts,
    pub acregmin: Duration,
    pub acregmax: Duration,
    pub acdirmin: Duration,
    pub acdirmax: Duration,
    pub rsize: Option<u32>,
    pub wsize: Option<u32>,
}

fn bad(msg: String) -> MountError {
    MountError::new(Errno::EINVAL, msg)
}

impl Config {
    pub fn parse(opts: &MountOptions) -> Result<Config, MountError> {
        let mut c = Config {
            port: None,
            mountport: None,
            fixed: None,
            caller: Cred::root(),
            rpc: RpcOpts::default(),
            acregmin: Duration::from_secs(3),
            acregmax: Duration::from_secs(60),
            acdirmin: Duration::from_secs(30),
            acdirmax: Duration::from_secs(60),
            rsize: None,
            wsize: None,
        };
        let (mut uid, mut gid) = (None, None);
        for (k, v) in &opts.extra {
            let num = |max: u64| -> Result<u64, MountError> {
                let v = v.as_deref().ok_or_else(|| bad(format!("nfs option '{k}' needs a value")))?;
                v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| bad(format!("nfs option {k}={v}: need a number up to {max}")))
            };
            let secs = |n: u64| Duration::from_secs(n);
            match k.as_str() {
                "port" => c.port = Some(num(65535)? as u16).filter(|p| *p != 0),
                "mountport" => c.mountport = Some(num(65535)? as u16).filter(|p| *p != 0),
                "uid" => uid = Some(num(u32::MAX.into())? as u32),
                "gid" => gid = Some(num(u32::MAX.into())? as u32),
                "soft" => c.rpc.soft = true,
                "hard" => c.rpc.soft = false,
                "timeo" => c.rpc.timeo = Duration::from_millis(num(36000)?.max(1) * 100),
                "retrans" => c.rpc.retrans = num(1000)? as u32,
                "resvport" => c.rpc.resvport = true,
                "noresvport" => c.rpc.resvport = false,
                "actimeo" => {
                    let t = secs(num(86400)?);
                    (c.acregmin, c.acregmax, c.acdirmin, c.acdirmax) = (t, t, t, t);
                }
                "noac" => (c.acregmin, c.acregmax, c.acdirmin, c.acdirmax) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO),
                "acregmin" => c.acregmin = secs(num(86400)?),
                "acregmax" => c.acregmax = secs(num(86400)?),
                "acdirmin" => c.acdirmin = secs(num(86400)?),
                "acdirmax" => c.acdirmax = secs(num(86400)?),
                "rsize" => c.rsize = Some((num(1 << 30)? as u32).clamp(4096, 1 << 20)),
                "wsize" => c.wsize = Some((num(1 << 30)? as u32).clamp(4096, 1 << 20)),
                "nfsvers" | "vers" => {
                    if v.as_deref() != Some("3") {
                        return Err(bad(format!("{k}={}: only NFS version 3 is supported", v.as_deref().unwrap_or(""))));
                    }
                }
                "proto" => {
                    if v.as_deref() != Some("tcp") && v.as_deref() != Some("tcp6") {
                        return Err(bad(format!("proto={}: only tcp is supported", v.as_deref().unwrap_or(""))));
                    }
                }
                CALLER_OPTION => {
                    let mut it = v.as_deref().unwrap_or("").split(':').map(|n| n.parse::<u32>());
                    match (it.next(), it.next()) {
                        (Some(Ok(u)), Some(Ok(g))) => c.caller = Cred { uid: u, gid: g, groups: it.filter_map(Result::ok).collect() },
                        _ => return Err(bad(format!("{CALLER_OPTION}: expected uid:gid"))),
                    }
                }
                _ => return Err(bad(format!("unknown nfs option '{k}'"))),
            }
        }
        c.acregmax = c.acregmax.max(c.acregmin);
        c.acdirmax = c.acdirmax.max(c.acdirmin);
        match (uid, gid) {
            (None, None) => {}
            (u, g) => c.fixed = Some((u.unwrap_or(c.caller.uid), g.unwrap_or(c.caller.gid))),
        }
        Ok(c)
    }
}

/// Resolves `host` and asks its portmapper for the TCP port of `prog`/`vers`.
pub fn getport(hyper: &dyn Hypercalls, addr: SocketAddr, prog: u32, vers: u32, timeout: Duration) -> KResult<u16> {
    let mut pm = SocketAddr::new(addr.ip(), PMAP_PORT);
    pm.set_port(PMAP_PORT);
    let mut c = SyncConn::connect(hyper, pm, false, timeout)?;
    let mut e = Enc::new();
    e.u32(prog).u32(vers).u32(IPPROTO_TCP).u32(0);
    let r = c.call(PMAP_PROG, PMAP_VERS, PMAPPROC_GETPORT, &Auth::None, &e.buf)?;
    let port = Dec::new(r.body()).u32()?;
    u16::try_from(port).map_err(|_| xdr::malformed("port over 65535"))
}

fn resolve(hyper: &dyn Hypercalls, host: &str) -> Result<Vec<SocketAddr>, MountError> {
    let addrs = hyper.resolve(host, PMAP_PORT).map_err(|e| MountError::new(e, format!("{host}: cannot resolve the server name")))?;
    if addrs.is_empty() {
        return Err(MountError::new(Errno::EHOSTUNREACH, format!("{host}: no address")));
    }
    Ok(addrs)
}

/// The exports of `host` (EXPORT of MOUNT v3), for `--list-exports`.
pub fn list_exports(hyper: &dyn Hypercalls, host: &str, mountport: Option<u16>) -> Result<Vec<Export>, MountError> {
    let t = Duration::from_secs(10);
    let mut last = MountError::new(Errno::EHOSTUNREACH, format!("{host}: unreachable"));
    for a in resolve(hyper, host)? {
        let port = match mountport {
            Some(p) => p,
            None => match getport(hyper, a, MOUNT_PROG, MOUNT_VERS, t) {
                Ok(0) => return Err(MountError::new(Errno::EOPNOTSUPP, format!("{host}: no MOUNT v3 service over TCP registered with the portmapper"))),
                Ok(p) => p,
                Err(e) => {
                    last = MountError::new(e, format!("{host}: portmapper: {}", e.description()));
                    continue;
                }
            },
        };
        let r = SyncConn::connect(hyper, SocketAddr::new(a.ip(), port), false, t)
            .and_then(|mut c| c.call(MOUNT_PROG, MOUNT_VERS, MOUNTPROC_EXPORT, &Auth::None, &[]));
        match r {
            Ok(r) => return decode_exports(&mut Dec::new(r.body())).map_err(|e| MountError::new(e, format!("{host}: malformed EXPORT reply"))),
            Err(e) => last = MountError::new(e, format!("{host}: MOUNT service: {}", e.description())),
        }
    }
    Err(last)
}

/// The driver's per-vnode data: the file handle.
struct Node {
    fh: Fh,
}

struct CachedAttr {
    fa: Fattr,
    until: Duration,
}

/// Names from listings: (directory, name) -> (file id, valid until).
type NameCache = HashMap<(u64, Vec<u8>), (u64, Duration)>;

/// The arguments of a READDIRPLUS of the directory `fh` from `cookie`: bounded replies.
fn readdirplus_args(fh: &Fh, cookie: u64, verf: &[u8; 8]) -> Enc {
    let mut e = Enc::new();
    fh.encode(&mut e);
    e.u64(cookie).fixed(verf).u32(READDIR_DIRCOUNT).u32(READDIR_MAX);
    e
}

/// Keeps the name cache below [`NAMES_MAX`]: what has expired goes, or else everything.
fn make_room(names: &mut NameCache, now: Duration) {
    if names.len() >= NAMES_MAX {
        names.retain(|_, (_, u)| *u > now);
        if names.len() >= NAMES_MAX {
            names.clear();
        }
    }
}

/// Caches `fa` until `until`; whether it shows the file changed since the attributes cached
/// before (size, mtime or ctime).
fn store_attr(cache: &mut HashMap<u64, CachedAttr>, fa: Fattr, until: Duration) -> bool {
    let (id, size, mtime, ctime) = (fa.fileid, fa.size, fa.mtime, fa.ctime);
    cache.insert(id, CachedAttr { fa, until }).is_some_and(|o| o.fa.mtime != mtime || o.fa.size != size || o.fa.ctime != ctime)
}

/// Entries of a directory listing not handed out yet: they continue at `cookie`; `last` is
/// the cookie after them, `eof` whether they end the directory.
struct DirPage {
    cookie: u64,
    entries: Vec<Listed>,
    eof: bool,
    last: u64,
    until: Duration,
}

/// One entry of a listing. `attr`: what the listing said of it, for READDIRPLUS (fresh from
/// the server, so the attribute cache need not be asked per entry).
#[derive(Clone)]
struct Listed {
    ino: Ino,
    kind: FileType,
    name: Vec<u8>,
    next: u64,
    attr: Option<Attr>,
}

/// Directory read-ahead state (see [`NfsFs::prefetch`]).
#[derive(Default)]
struct Prefetch {
    /// Subdirectories to list soon, in the order a depth-first walk reaches them.
    queue: VecDeque<(u64, Fh)>,
    /// READDIRPLUS calls sent ahead, by directory.
    inflight: HashMap<u64, Ahead>,
    /// How many may be in flight: from [`PREFETCH_MIN`], doubled each time one is used, up to
    /// [`PREFETCH_MAX`]; back to the minimum when one goes unused. A walk soon keeps the
    /// server busy while its client is elsewhere (running stat, say); an `ls -l` of a
    /// directory of many subdirectories costs the server only a few listings nobody reads.
    window: usize,
}

impl Prefetch {
    fn window(&self) -> usize {
        self.window.clamp(PREFETCH_MIN, PREFETCH_MAX)
    }

    /// A listing sent ahead was used.
    fn hit(&mut self) {
        self.window = (self.window() * 2).min(PREFETCH_MAX);
    }
}

/// A listing sent ahead: the call, or its reply once someone waited for it (the permission
/// check of an opendir does, see [`NfsFs::listing_allows`]).
struct Ahead {
    call: AheadCall,
    sent: Duration,
    /// Whose credentials it went with.
    auth: Auth,
    /// Where it starts: 0 for a whole directory, or the cookie where the reply before it
    /// stopped (the rest of a long listing, asked for while the first part is handed out).
    cookie: u64,
}

enum AheadCall {
    Sent(Pending),
    Got(rpc::Reply),
}

/// Directory listings sent ahead at once: at first, and at most (see [`Prefetch::window`]).
const PREFETCH_MIN: usize = 4;
const PREFETCH_MAX: usize = 32;
/// Subdirectories remembered for read-ahead.
const PREFETCH_QUEUE: usize = 4096;

enum Delivered {
    All,
    Stopped,
}

/// The data of a READ reply, in place in the reply record.
struct ReadData {
    msg: Vec<u8>,
    start: usize,
    len: usize,
}

impl core::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.msg.get(self.start..self.start.saturating_add(self.len)).unwrap_or(&[])
    }
}

/// One read-ahead chunk: a READ in flight or its data.
enum ChunkState {
    Pending(Pending),
    Ready(Arc<ReadData>, bool),
    Failed(Errno),
}

type Chunk = Arc<Mutex<ChunkState>>;

/// Write-behind state of one file. The lock is never held while waiting for a reply: a
/// thread that waits for a WRITE takes it off `inflight` into `reaping` and waits unlocked, a
/// COMMIT runs with `committing` set; others wait on [`WFile::cv`] for those to finish.
#[derive(Default)]
struct WState {
    fh: Option<Fh>,
    auth: Option<Auth>,
    dirty_off: u64,
    dirty: Vec<u8>,
    inflight: VecDeque<(Pending, u64, Arc<Vec<u8>>)>,
    /// Byte ranges of WRITEs whose replies some thread is waiting for without the lock.
    reaping: Vec<(u64, u64)>,
    /// A COMMIT (and the resending after a verifier change) is under way without the lock.
    committing: bool,
    /// A COMMIT sent in the middle of a long write, not waited for, and what it covers.
    commit_inflight: Option<(Pending, Vec<Uncommitted>)>,
    /// Sent UNSTABLE and acknowledged, with the verifier of the reply, until COMMIT.
    uncommitted: Vec<Uncommitted>,
    uncommitted_bytes: usize,
    /// End of the data written through us (the file is at least this long).
    max_end: u64,
    err: Option<Errno>,
}

impl WState {
    fn busy(&self) -> bool {
        !self.dirty.is_empty() || !self.inflight.is_empty() || !self.reaping.is_empty() || self.committing || self.commit_inflight.is_some()
    }

    /// Whether a WRITE of `off..end` would overlap one still in flight.
    fn overlaps_inflight(&self, off: u64, end: u64) -> bool {
        self.inflight.iter().any(|(_, o, d)| *o < end && off < o.saturating_add(d.len() as u64))
            || self.reaping.iter().any(|(o, e)| *o < end && off < *e)
    }
}

#[derive(Default)]
struct WFile {
    st: Mutex<WState>,
    cv: Condvar,
}

type WGuard<'a> = MutexGuard<'a, WState>;

/// Data sent UNSTABLE and acknowledged: offset, bytes, the write verifier of the reply.
type Uncommitted = (u64, Arc<Vec<u8>>, [u8; 8]);

/// A mounted NFS export.
pub struct NfsFs {
    hyper: Arc<dyn Hypercalls>,
    client: Client,
    name: String,
    mount_addr: SocketAddr,
    path: String,
    auth_flavor: u32,
    cfg: Config,
    root: Ino,
    rsize: u32,
    wsize: u32,
    namemax: u32,
    handles: Mutex<HashMap<u64, Fh>>,
    attrs: Mutex<HashMap<u64, CachedAttr>>,
    /// The root's attributes from mount time serve the kernel's first look at the root.
    primed: AtomicBool,
    ra: Mutex<HashMap<u64, BTreeMap<u64, Chunk>>>,
    writes: Mutex<HashMap<u64, Arc<WFile>>>,
    verfs: Mutex<HashMap<u64, [u8; 8]>>,
    /// Names seen in READDIRPLUS replies (directory, name) → (fileid, valid until), so that
    /// the lookups of a walk right after the listing need no LOOKUP each. Kept no longer
    /// than the entry TTL the kernel gets ([`FileSystem::cache_ttl`]).
    names: Mutex<NameCache>,
    /// The rest of a READDIRPLUS reply that one FUSE request could not take, per directory.
    dirpages: Mutex<HashMap<u64, DirPage>>,
    /// Directory read-ahead: the subdirectories a walk will list next get their first
    /// READDIRPLUS sent early, a few at a time, so the server works on them in parallel.
    prefetch: Mutex<Prefetch>,
    read_only: bool,
    gone: AtomicBool,
    /// Files unlinked while open, renamed to a hidden name instead (the "silly rename" of
    /// NFS clients): inode -> (directory handle, hidden name), removed at the last close.
    silly: Mutex<HashMap<u64, (Fh, Vec<u8>)>>,
    silly_seq: std::sync::atomic::AtomicU32,
    /// Write buffers given back once their data was committed, for the next ones: a fresh
    /// megabyte costs 256 page faults and zeroing before the first byte is copied in.
    spare_bufs: Mutex<Vec<Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NfsFs {
    fn mount(hyper: Arc<dyn Hypercalls>, host: &str, path: &str, cfg: Config, read_only: bool) -> Result<NfsFs, MountError> {
        let name = format!("{host}:{path}");
        let t = cfg.rpc.timeo.min(Duration::from_secs(15));
        let caller_auth = match cfg.fixed {
            Some((u, g)) => Auth::Sys { uid: u, gid: g, gids: vec![] },
            None => Auth::Sys { uid: cfg.caller.uid, gid: cfg.caller.gid, gids: cfg.caller.groups.clone() },
        };
        let mut last = MountError::new(Errno::EHOSTUNREACH, format!("{host}: unreachable"));
        for a in resolve(hyper.as_ref(), host)? {
            let ip = a.ip();
            let port_of = |prog, fixed: Option<u16>, what: &str| -> Result<u16, MountError> {
                if let Some(p) = fixed {
                    return Ok(p);
                }
                match getport(hyper.as_ref(), a, prog, 3, t) {
                    Ok(0) => Err(MountError::new(Errno::EOPNOTSUPP, format!("{host}: the server offers no {what} version 3 over TCP"))),
                    Ok(p) => Ok(p),
                    Err(e) => Err(MountError::new(e, format!("{host}: portmapper (port 111): {}", e.description()))),
                }
            };
            let (mport, nport) = match port_of(MOUNT_PROG, cfg.mountport, "MOUNT").and_then(|m| Ok((m, port_of(NFS_PROG, cfg.port, "NFS")?))) {
                Ok(p) => p,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mount_addr = SocketAddr::new(ip, mport);
            let mnt = SyncConn::connect(hyper.as_ref(), mount_addr, cfg.rpc.resvport, t).and_then(|mut c| {
                let mut e = Enc::new();
                e.opaque(path.as_bytes());
                c.call(MOUNT_PROG, MOUNT_VERS, MOUNTPROC_MNT, &caller_auth, &e.buf)
            });
            let reply = match mnt {
                Ok(r) => r,
                Err(e) => {
                    last = MountError::new(e, format!("{name}: MOUNT service at port {mport}: {}", e.description()));
                    continue;
                }
            };
            let (root_fh, flavors) = match decode_mnt(&mut Dec::new(reply.body())) {
                Ok(Ok(x)) => x,
                Ok(Err(stat)) => return Err(MountError::new(nfs_errno(stat), format!("{name}: {}", mount_stat_text(stat)))),
                Err(e) => return Err(MountError::new(e, format!("{name}: malformed MNT reply"))),
            };
            let auth_flavor = if flavors.is_empty() || flavors.contains(&AUTH_SYS) {
                AUTH_SYS
            } else if flavors.contains(&AUTH_NONE) {
                AUTH_NONE
            } else {
                return Err(MountError::new(
                    Errno::EACCES,
                    format!("{name}: the server offers only authentication flavours {flavors:?}; supported are AUTH_SYS (1) and AUTH_NONE (0)"),
                ));
            };
            let auth = if auth_flavor == AUTH_NONE { Auth::None } else { caller_auth.clone() };
            let nfs_addr = SocketAddr::new(ip, nport);
            let info = (|| -> KResult<(FsInfo, u32, Fattr)> {
                let mut c = SyncConn::connect(hyper.as_ref(), nfs_addr, cfg.rpc.resvport, t)?;
                let mut e = Enc::new();
                root_fh.encode(&mut e);
                let r = c.call(NFS_PROG, NFS_VERS, procs::FSINFO, &auth, &e.buf)?;
                let mut d = Dec::new(r.body());
                let st = status(&mut d)?;
                post_op_attr(&mut d)?;
                if st != 0 {
                    return Err(nfs_errno(st));
                }
                let info = FsInfo::decode(&mut d)?;
                let r = c.call(NFS_PROG, NFS_VERS, procs::PATHCONF, &auth, &e.buf)?;
                let mut d = Dec::new(r.body());
                let st = status(&mut d)?;
                post_op_attr(&mut d)?;
                let namemax = if st == 0 {
                    d.u32()?;
                    d.u32()?.clamp(1, 255)
                } else {
                    255
                };
                let r = c.call(NFS_PROG, NFS_VERS, procs::GETATTR, &auth, &e.buf)?;
                let mut d = Dec::new(r.body());
                let st = status(&mut d)?;
                if st != 0 {
                    return Err(nfs_errno(st));
                }
                Ok((info, namemax, Fattr::decode(&mut d)?))
            })();
            let (info, namemax, root_attr) = match info {
                Ok(x) => x,
                Err(e) => {
                    last = MountError::new(e, format!("{name}: NFS service at port {nport}: {}", e.description()));
                    continue;
                }
            };
            if root_attr.ftype != 2 {
                return Err(MountError::new(Errno::ENOTDIR, format!("{name}: the exported root is not a directory")));
            }
            let clampsz = |pref: u32, max: u32, want: Option<u32>| -> u32 {
                let max = if max == 0 { 1 << 20 } else { max.min(1 << 20) };
                want.unwrap_or(max.max(pref.min(1 << 20))).min(max).max(4096.min(max))
            };
            let rsize = clampsz(info.rtpref, info.rtmax, cfg.rsize);
            let wsize = clampsz(info.wtpref, info.wtmax, cfg.wsize);
            log::info!("{name}: mounted (rsize {rsize}, wsize {wsize}, auth {})", if auth_flavor == AUTH_SYS { "sys" } else { "none" });
            let client = Client::new(hyper.clone(), nfs_addr, NFS_PROG, NFS_VERS, cfg.rpc.clone(), name.clone());
            let root = Ino(root_attr.fileid);
            let fs = NfsFs {
                hyper: hyper.clone(),
                client,
                name,
                mount_addr,
                path: path.to_string(),
                auth_flavor,
                cfg,
                root,
                rsize,
                wsize,
                namemax,
                handles: Mutex::new(HashMap::from_iter([(root.0, root_fh)])),
                attrs: Mutex::new(HashMap::new()),
                primed: AtomicBool::new(true),
                ra: Mutex::new(HashMap::new()),
                writes: Mutex::new(HashMap::new()),
                verfs: Mutex::new(HashMap::new()),
                names: Mutex::new(HashMap::new()),
                dirpages: Mutex::new(HashMap::new()),
                prefetch: Mutex::new(Prefetch::default()),
                read_only,
                gone: AtomicBool::new(false),
                silly: Mutex::new(HashMap::new()),
                spare_bufs: Mutex::new(Vec::new()),
                silly_seq: std::sync::atomic::AtomicU32::new(0),
            };
            fs.learn_attr(&root_attr);
            return Ok(fs);
        }
        Err(last)
    }

    fn auth(&self, cred: &Cred) -> Auth {
        if self.auth_flavor == AUTH_NONE {
            return Auth::None;
        }
        match self.cfg.fixed {
            Some((u, g)) => Auth::Sys { uid: u, gid: g, gids: vec![] },
            None => Auth::Sys { uid: cred.uid, gid: cred.gid, gids: cred.groups.clone() },
        }
    }

    /// One NFS call; NFS3ERR_JUKEBOX (server busy) is retried a few times.
    fn call(&self, cred: &Cred, proc_: u32, args: &Enc) -> KResult<rpc::Reply> {
        let auth = self.auth(cred);
        for i in 0..10u64 {
            let r = self.client.call(proc_, &auth, &args.buf)?;
            if Dec::new(r.body()).u32().ok() != Some(NFS3ERR_JUKEBOX) {
                return Ok(r);
            }
            std::thread::sleep(Duration::from_millis(100 * (i + 1)));
        }
        Err(Errno::EAGAIN)
    }

    fn fh_of(&self, vn: &Vnode) -> KResult<Fh> {
        Ok(vn.data::<Node>()?.fh.clone())
    }

    fn ttl(&self, fa: &Fattr) -> Duration {
        self.ttl_at(fa, self.hyper.clock_realtime().sec)
    }

    /// [`NfsFs::ttl`], the wall clock read already (`now`, seconds).
    fn ttl_at(&self, fa: &Fattr, now: i64) -> Duration {
        let (lo, hi) = if fa.ftype == 2 { (self.cfg.acdirmin, self.cfg.acdirmax) } else { (self.cfg.acregmin, self.cfg.acregmax) };
        // As Linux: files changed long ago are cached longer.
        let age = Duration::from_secs(now.saturating_sub(fa.mtime.sec).max(0) as u64);
        (age / 10).clamp(lo, hi)
    }

    /// Records attributes that come back from our own READ, WRITE or COMMIT: the change they
    /// show is ours, so cached file data stays (unlike [`NfsFs::learn_attr`]).
    fn keep_attr(&self, fa: Fattr) {
        let until = self.hyper.clock_monotonic() + self.ttl(&fa);
        lock(&self.attrs).insert(fa.fileid, CachedAttr { fa, until });
    }

    /// Records fresh attributes; cached file data goes when the file changed.
    fn learn_attr(&self, fa: &Fattr) {
        let until = self.hyper.clock_monotonic() + self.ttl(fa);
        let changed = store_attr(&mut lock(&self.attrs), fa.clone(), until);
        if changed {
            self.file_changed(fa.fileid);
        }
    }

    /// A file's attributes show a change that is not ours: its cached data and listings go.
    fn file_changed(&self, fileid: u64) {
        lock(&self.ra).remove(&fileid);
        self.forget_listing(fileid);
    }

    /// A directory changed: listings of it read ahead or left over are no longer good.
    fn forget_listing(&self, dir: u64) {
        lock(&self.dirpages).remove(&dir);
        if let Some(a) = lock(&self.prefetch).inflight.remove(&dir) {
            self.drop_ahead(a);
        }
    }

    fn drop_ahead(&self, a: Ahead) {
        if let AheadCall::Sent(p) = a.call {
            self.client.cancel(p);
        }
    }

    fn learn(&self, fh: Option<Fh>, fa: Option<&Fattr>) {
        if let Some(fa) = fa {
            if let Some(fh) = fh {
                lock(&self.handles).insert(fa.fileid, fh);
            }
            self.learn_attr(fa);
        }
    }

    fn forget_attr(&self, fileid: u64) {
        lock(&self.attrs).remove(&fileid);
        self.forget_listing(fileid);
    }

    fn to_attr(&self, fa: &Fattr) -> Attr {
        let mut a = fa.to_attr();
        if let Some((u, g)) = self.cfg.fixed {
            if a.uid == u {
                a.uid = self.cfg.caller.uid;
            }
            if a.gid == g {
                a.gid = self.cfg.caller.gid;
            }
        }
        let ws = lock(&self.writes).get(&fa.fileid).cloned();
        if let Some(w) = ws {
            a.size = a.size.max(lock(&w.st).max_end);
        }
        a
    }

    fn getattr_rpc(&self, cred: &Cred, fh: &Fh) -> KResult<Fattr> {
        let mut e = Enc::new();
        fh.encode(&mut e);
        let r = self.call(cred, procs::GETATTR, &e)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if st != 0 {
            return Err(nfs_errno(st));
        }
        let fa = Fattr::decode(&mut d)?;
        self.learn_attr(&fa);
        Ok(fa)
    }

    fn do_getattr(&self, cred: &Cred, vn: &Vnode) -> KResult<Attr> {
        let now = self.hyper.clock_monotonic();
        {
            let a = lock(&self.attrs);
            if let Some(c) = a.get(&vn.ino.0) {
                let primed = vn.ino == self.root && self.primed.swap(false, Ordering::AcqRel);
                if c.until > now || primed {
                    let fa = c.fa.clone();
                    drop(a);
                    return Ok(self.to_attr(&fa));
                }
            }
        }
        let fa = self.getattr_rpc(cred, &self.fh_of(vn)?)?;
        Ok(self.to_attr(&fa))
    }

    fn do_lookup(&self, cred: &Cred, dir: &Vnode, name: &[u8]) -> KResult<Ino> {
        if name == b"." {
            return Ok(dir.ino);
        }
        if name == b".." && dir.ino == self.root {
            return Ok(self.root);
        }
        if let Some(ino) = self.cached_name(dir.ino.0, name) {
            return Ok(ino);
        }
        let dfh = self.fh_of(dir)?;
        let mut e = Enc::new();
        diropargs(&mut e, &dfh, name);
        let r = self.call(cred, procs::LOOKUP, &e)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if st != 0 {
            if let Some(fa) = post_op_attr(&mut d)? {
                self.learn_attr(&fa);
            }
            return Err(nfs_errno(st));
        }
        let fh = Fh::decode(&mut d)?;
        let obj = post_op_attr(&mut d)?;
        if let Some(fa) = post_op_attr(&mut d)? {
            self.learn_attr(&fa);
        }
        let fa = match obj {
            Some(fa) => fa,
            None => self.getattr_rpc(cred, &fh)?,
        };
        self.learn(Some(fh), Some(&fa));
        Ok(Ino(fa.fileid))
    }

    fn name_ttl(&self) -> Duration {
        self.cfg.acregmin.min(self.cfg.acdirmin).min(Duration::from_secs(1))
    }

    /// Records the handles, attributes and names that one READDIRPLUS reply brought (each
    /// `learned` item: a handle, its attributes and the index of its entry), under one lock of
    /// each table and one reading of the clocks: a reply holds hundreds. The entries get
    /// their attributes as the mount shows them.
    fn learn_listing(&self, dir: u64, learned: Vec<(Fh, Fattr, usize)>, entries: &mut [Listed]) {
        if learned.is_empty() {
            return;
        }
        let now = self.hyper.clock_monotonic();
        let real = self.hyper.clock_realtime().sec;
        let mut attrs = Vec::with_capacity(learned.len());
        {
            let mut h = lock(&self.handles);
            for (fh, fa, i) in learned {
                h.insert(fa.fileid, fh);
                attrs.push((fa, i));
            }
        }
        let mut changed = Vec::new();
        {
            let mut cache = lock(&self.attrs);
            for (fa, _) in &attrs {
                let until = now + self.ttl_at(fa, real);
                if store_attr(&mut cache, fa.clone(), until) {
                    changed.push(fa.fileid);
                }
            }
        }
        for id in changed {
            self.file_changed(id);
        }
        let ttl = self.name_ttl();
        if !ttl.is_zero() {
            let mut n = lock(&self.names);
            make_room(&mut n, now);
            for (fa, i) in &attrs {
                n.insert((dir, entries[*i].name.clone()), (fa.fileid, now + ttl));
            }
        }
        for (fa, i) in attrs {
            entries[i].attr = Some(self.to_attr(&fa));
        }
    }

    /// A name from a recent listing whose handle and attributes are still known.
    fn cached_name(&self, dir: u64, name: &[u8]) -> Option<Ino> {
        let now = self.hyper.clock_monotonic();
        let fileid = {
            let mut n = lock(&self.names);
            let key = (dir, name.to_vec());
            match n.get(&key) {
                Some((id, until)) if *until > now => *id,
                Some(_) => {
                    n.remove(&key);
                    return None;
                }
                None => return None,
            }
        };
        let known = lock(&self.handles).contains_key(&fileid) && lock(&self.attrs).get(&fileid).is_some_and(|c| c.until > now);
        known.then_some(Ino(fileid))
    }

    /// Forgets what listings said about `name` in `dir` (it was removed or renamed).
    fn forget_name(&self, dir: u64, name: &[u8]) {
        lock(&self.names).remove(&(dir, name.to_vec()));
    }

    fn do_access(&self, cred: &Cred, vn: &Vnode, mask: u32) -> KResult<()> {
        let fh = self.fh_of(vn)?;
        let is_dir = lock(&self.attrs).get(&vn.ino.0).is_some_and(|c| c.fa.ftype == 2);
        if is_dir && mask & 7 == 4 {
            // Opening a directory to list it: a walk has usually sent that listing already.
            if let Some(r) = self.listing_allows(vn.ino.0, &self.auth(cred)) {
                return r;
            }
        }
        let mut want = 0;
        if mask & 4 != 0 {
            want |= ACCESS3_READ;
        }
        if mask & 2 != 0 {
            want |= ACCESS3_MODIFY | ACCESS3_EXTEND | if is_dir { ACCESS3_DELETE } else { 0 };
        }
        if mask & 1 != 0 {
            want |= if is_dir { ACCESS3_LOOKUP } else { ACCESS3_EXECUTE };
        }
        let mut e = Enc::new();
        fh.encode(&mut e);
        e.u32(want);
        let r = self.call(cred, procs::ACCESS, &e)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if let Some(fa) = post_op_attr(&mut d)? {
            self.learn_attr(&fa);
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        let got = d.u32()?;
        // Write access to a directory needs only modify and extend to be useful.
        let need = if is_dir && mask & 2 != 0 { want & !ACCESS3_DELETE } else { want };
        if got & need == need {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    fn do_readlink(&self, cred: &Cred, vn: &Vnode) -> KResult<Vec<u8>> {
        let mut e = Enc::new();
        self.fh_of(vn)?.encode(&mut e);
        let r = self.call(cred, procs::READLINK, &e)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if let Some(fa) = post_op_attr(&mut d)? {
            self.learn_attr(&fa);
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        Ok(d.opaque(MAXPATH)?.to_vec())
    }

    /// Lists `dir` from `cookie`. A READDIRPLUS reply holds more entries than one FUSE
    /// request takes (a page): what the sink did not take is kept for a moment, so the next
    /// request, which continues at that cookie, is served without asking the server again.
    fn do_readdir(&self, cred: &Cred, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        let mut cookie = cookie;
        let now = self.hyper.clock_monotonic();
        let cached = {
            let mut pages = lock(&self.dirpages);
            match pages.remove(&dir.ino.0) {
                Some(p) if p.cookie == cookie && p.until > now && cookie != 0 => Some(p),
                _ => None,
            }
        };
        if let Some(page) = cached {
            match self.deliver(dir, page.entries, page.eof, sink) {
                Delivered::All => {
                    if page.eof {
                        return Ok(());
                    }
                    cookie = page.last;
                }
                Delivered::Stopped => return Ok(()),
            }
        }
        let dfh = self.fh_of(dir)?;
        let mut verf = if cookie == 0 { [0u8; 8] } else { lock(&self.verfs).get(&dir.ino.0).copied().unwrap_or([0; 8]) };
        loop {
            let e = readdirplus_args(&dfh, cookie, &verf);
            let ahead = self.take_prefetched(dir.ino.0, cookie);
            let r = match ahead {
                Some(r) => r,
                None => self.call(cred, procs::READDIRPLUS, &e)?,
            };
            let mut subdirs: Vec<(u64, Fh)> = Vec::new();
            let mut d = Dec::new(r.body());
            let st = status(&mut d)?;
            if let Some(fa) = post_op_attr(&mut d)? {
                self.learn_attr(&fa);
            }
            if st != 0 {
                return Err(nfs_errno(st));
            }
            verf = d.verf()?;
            lock(&self.verfs).insert(dir.ino.0, verf);
            let mut entries: Vec<Listed> = Vec::new();
            let mut learned: Vec<(Fh, Fattr, usize)> = Vec::new();
            let mut n = 0usize;
            let mut last = cookie;
            while d.bool()? {
                n += 1;
                let fileid = d.u64()?;
                let name = d.opaque(MAXPATH)?;
                let next = d.u64()?;
                let fa = post_op_attr(&mut d)?;
                let fh = post_op_fh(&mut d)?;
                last = next;
                if name.is_empty() || name.len() > 255 || name.contains(&b'/') || name.contains(&0) {
                    log::warn!("{}: skipping a directory entry with a bad name", self.name);
                    continue;
                }
                let (ino, kind) = if name == b"." {
                    (dir.ino, FileType::Directory)
                } else if name == b".." {
                    let ino = if dir.ino == self.root {
                        self.root
                    } else if let (Some(fh), Some(fa)) = (fh, fa.as_ref()) {
                        self.learn(Some(fh), Some(fa));
                        Ino(fa.fileid)
                    } else {
                        self.do_lookup(cred, dir, b"..")?
                    };
                    (ino, FileType::Directory)
                } else {
                    match (fh, fa) {
                        (Some(fh), Some(fa)) if fa.fileid == fileid || fileid == 0 => {
                            if fa.ftype == 2 {
                                subdirs.push((fa.fileid, fh.clone()));
                            }
                            let r = (Ino(fa.fileid), ftype_kind(fa.ftype)?);
                            learned.push((fh, fa, entries.len()));
                            r
                        }
                        _ => {
                            // No handle or attributes in the reply: look the name up.
                            let ino = self.do_lookup(cred, dir, name)?;
                            let kind = lock(&self.attrs).get(&ino.0).map(|c| ftype_kind(c.fa.ftype)).transpose()?.unwrap_or(FileType::Regular);
                            (ino, kind)
                        }
                    }
                };
                entries.push(Listed { ino, kind, name: name.to_vec(), next, attr: None });
            }
            let eof = d.bool()?;
            if !eof && n > 0 {
                self.send_rest_ahead(cred, dir.ino.0, &dfh, last, verf);
            }
            self.learn_listing(dir.ino.0, learned, &mut entries);
            self.prefetch_dirs(cred, subdirs);
            if !eof && n == 0 {
                log::warn!("{}: READDIRPLUS returned no entries and no end of directory", self.name);
                return Err(Errno::EIO);
            }
            match self.deliver(dir, entries, eof, sink) {
                Delivered::All => {
                    if eof {
                        return Ok(());
                    }
                    cookie = last;
                }
                Delivered::Stopped => return Ok(()),
            }
        }
    }

    /// The READDIRPLUS reply sent ahead for `dir`, if there is a good one.
    fn take_prefetched(&self, dir: u64, cookie: u64) -> Option<rpc::Reply> {
        let a = {
            let mut pf = lock(&self.prefetch);
            if pf.inflight.get(&dir)?.cookie != cookie {
                return None;
            }
            pf.inflight.remove(&dir)?
        };
        let r = self.ahead_reply(a)?.0;
        // An error (even "busy") is left to the ordinary call.
        let good = Dec::new(r.body()).u32().ok() == Some(0);
        if good {
            lock(&self.prefetch).hit();
        }
        good.then_some(r)
    }

    /// The reply of a listing sent ahead, waited for if need be (not for long: on a server
    /// that is slow to answer, the ordinary call takes over); `None` if it is too old.
    fn ahead_reply(&self, a: Ahead) -> Option<(rpc::Reply, Duration, Auth)> {
        if self.hyper.clock_monotonic().saturating_sub(a.sent) > self.name_ttl() {
            // Older than what the kernel may cache: list afresh.
            self.drop_ahead(a);
            return None;
        }
        let r = match a.call {
            AheadCall::Got(r) => r,
            AheadCall::Sent(p) => {
                let limit = self.cfg.rpc.timeo.min(Duration::from_secs(5));
                self.client.wait_limited(p, Some(limit)).ok()?
            }
        };
        Some((r, a.sent, a.auth))
    }

    /// Whether the listing of `dir` sent ahead with the same credentials answers a read
    /// permission check: the server lists a directory only for those who may read it, so a
    /// listing that came back is a yes, and NFS3ERR_ACCES a no. The reply is kept for the
    /// READDIRPLUS that follows the opendir. `None`: no such listing, ask with ACCESS.
    fn listing_allows(&self, dir: u64, auth: &Auth) -> Option<KResult<()>> {
        let a = {
            let mut pf = lock(&self.prefetch);
            if pf.inflight.get(&dir).is_none_or(|a| a.auth != *auth || a.cookie != 0) {
                return None;
            }
            pf.inflight.remove(&dir)?
        };
        let (r, sent, auth) = self.ahead_reply(a)?;
        match Dec::new(r.body()).u32().ok()? {
            0 => {
                // Kept for the READDIRPLUS to come, unless a listing was sent again meanwhile.
                lock(&self.prefetch).inflight.entry(dir).or_insert(Ahead { call: AheadCall::Got(r), sent, auth, cookie: 0 });
                Some(Ok(()))
            }
            NFS3ERR_ACCES => Some(Err(Errno::EACCES)),
            _ => None,
        }
    }

    /// Sends the READDIRPLUS for the rest of a long listing of `dir`, from `cookie`, while the
    /// part before it is handed out: the next read of the directory finds it under way.
    fn send_rest_ahead(&self, cred: &Cred, dir: u64, dfh: &Fh, cookie: u64, verf: [u8; 8]) {
        if self.name_ttl().is_zero() {
            return;
        }
        let mut pf = lock(&self.prefetch);
        if !pf.inflight.contains_key(&dir) {
            self.send_ahead(&mut pf, dir, dfh, cookie, &verf, self.auth(cred), self.hyper.clock_monotonic());
        }
    }

    /// Sends the READDIRPLUS of `dir` from `cookie` ahead and keeps it in `pf`.
    #[allow(clippy::too_many_arguments)]
    fn send_ahead(&self, pf: &mut Prefetch, dir: u64, fh: &Fh, cookie: u64, verf: &[u8; 8], auth: Auth, now: Duration) {
        let p = self.client.start(procs::READDIRPLUS, &auth, &readdirplus_args(fh, cookie, verf).buf);
        pf.inflight.insert(dir, Ahead { call: AheadCall::Sent(p), sent: now, auth, cookie });
    }

    /// Queues `subdirs` for read-ahead (before what was queued: a walk goes depth first) and
    /// keeps up to [`Prefetch::window`] listings in flight.
    fn prefetch_dirs(&self, cred: &Cred, subdirs: Vec<(u64, Fh)>) {
        if self.name_ttl().is_zero() {
            return;
        }
        let auth = self.auth(cred);
        let now = self.hyper.clock_monotonic();
        let mut pf = lock(&self.prefetch);
        // Listings nobody came for are dropped.
        let stale: Vec<u64> = pf.inflight.iter().filter(|(_, a)| now.saturating_sub(a.sent) > Duration::from_secs(2)).map(|(k, _)| *k).collect();
        for k in stale {
            if let Some(a) = pf.inflight.remove(&k) {
                self.drop_ahead(a);
                pf.window = PREFETCH_MIN;
            }
        }
        for sd in subdirs.into_iter().rev() {
            pf.queue.push_front(sd);
        }
        pf.queue.truncate(PREFETCH_QUEUE);
        while pf.inflight.len() < pf.window() {
            let Some((ino, fh)) = pf.queue.pop_front() else { break };
            if !pf.inflight.contains_key(&ino) {
                self.send_ahead(&mut pf, ino, &fh, 0, &[0; 8], auth.clone(), now);
            }
        }
    }

    /// Hands `entries` to the sink; what it refuses is kept in `dirpages` for the next call.
    fn deliver(&self, dir: &Vnode, mut entries: Vec<Listed>, eof: bool, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> Delivered {
        let last = entries.last().map(|e| e.next);
        for i in 0..entries.len() {
            let e = &entries[i];
            if !sink(&DirEntry { ino: e.ino, kind: e.kind, name: &e.name, next: e.next, attr: e.attr.as_ref() }) {
                let cookie = if i == 0 { None } else { Some(entries[i - 1].next) };
                let ttl = self.name_ttl();
                if let (Some(cookie), Some(last), false) = (cookie, last, ttl.is_zero()) {
                    let until = self.hyper.clock_monotonic() + ttl;
                    let mut rest = entries.split_off(i);
                    // Handed out later, they show the attributes cached by then.
                    for e in &mut rest {
                        e.attr = None;
                    }
                    let mut pages = lock(&self.dirpages);
                    if pages.len() >= RA_FILES * 4 {
                        pages.clear();
                    }
                    pages.insert(dir.ino.0, DirPage { cookie, entries: rest, eof, last, until });
                }
                return Delivered::Stopped;
            }
        }
        // The kernel asks once more, from the last cookie, before it believes the end: that
        // answer is known too.
        if let (true, Some(last), false) = (eof, last, self.name_ttl().is_zero()) {
            let until = self.hyper.clock_monotonic() + self.name_ttl();
            let mut pages = lock(&self.dirpages);
            if pages.len() >= RA_FILES * 4 {
                pages.clear();
            }
            pages.insert(dir.ino.0, DirPage { cookie: last, entries: Vec::new(), eof, last, until });
        }
        Delivered::All
    }

    fn parse_read(&self, r: rpc::Reply) -> KResult<(ReadData, bool)> {
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if let Some(fa) = post_op_attr(&mut d)? {
            // Our own READ must not throw away the chunk it fills: update quietly.
            self.keep_attr(fa);
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        let count = d.u32()? as usize;
        let eof = d.bool()?;
        let body_len = r.body().len();
        let at = body_len - d.remaining();
        let len = d.opaque(self.rsize as usize)?.len();
        if len != count {
            return Err(xdr::malformed("READ count differs from the data length"));
        }
        // The data stays where it arrived, in the reply record (no copy).
        let start = r.msg.len() - body_len + at + 4;
        Ok((ReadData { msg: r.msg, start, len }, eof))
    }

    fn start_read(&self, auth: &Auth, fh: &Fh, off: u64, len: u32) -> Pending {
        let mut e = Enc::new();
        fh.encode(&mut e);
        e.u64(off).u32(len);
        self.client.start(procs::READ, auth, &e.buf)
    }

    fn read_direct(&self, cred: &Cred, fh: &Fh, off: u64, buf: &mut [u8]) -> KResult<usize> {
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(self.rsize as usize);
            let p = self.start_read(&self.auth(cred), fh, off + done as u64, len as u32);
            let (data, eof) = self.parse_read(self.client.wait(p)?)?;
            let n = data.len().min(len);
            buf[done..done + n].copy_from_slice(&data[..n]);
            done += n;
            if eof || n == 0 {
                break;
            }
        }
        Ok(done)
    }

    fn chunk_data(&self, ch: &Chunk) -> KResult<(Arc<ReadData>, bool)> {
        let mut g = lock(ch);
        if let ChunkState::Pending(p) = &*g {
            let p = *p;
            *g = match self.client.wait(p).and_then(|r| self.parse_read(r)) {
                Ok((d, eof)) => ChunkState::Ready(Arc::new(d), eof),
                Err(e) => ChunkState::Failed(e),
            };
        }
        match &*g {
            ChunkState::Ready(d, eof) => Ok((d.clone(), *eof)),
            ChunkState::Failed(e) => Err(*e),
            ChunkState::Pending(..) => Err(Errno::EIO),
        }
    }

    fn do_read(&self, cred: &Cred, vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        let fileid = vn.ino.0;
        self.write_back(fileid, false)?;
        let fh = self.fh_of(vn)?;
        if readahead == 0 {
            return self.read_direct(cred, &fh, off, buf);
        }
        let cs = u64::from(self.rsize);
        let end = off.saturating_add(buf.len() as u64);
        let chunks = self.ra_chunks(cred, &fh, fileid, off, end, readahead);
        let mut done = 0usize;
        for (start, ch) in chunks {
            let pos = off + done as u64;
            if pos >= end {
                break;
            }
            let (data, eof) = self.chunk_data_of(fileid, start, &ch)?;
            let in_chunk = (pos - start) as usize;
            if in_chunk < data.len() {
                let n = (data.len() - in_chunk).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&data[in_chunk..in_chunk + n]);
                done += n;
            }
            if done < buf.len() && (off + done as u64) < start + cs {
                // The chunk ended short of the request.
                if eof {
                    return Ok(done);
                }
                let stop = ((start + cs - off) as usize).min(buf.len());
                let n = self.read_direct(cred, &fh, off + done as u64, &mut buf[done..stop])?;
                done += n;
                if n == 0 {
                    return Ok(done);
                }
            }
        }
        Ok(done)
    }

    /// A sequential read that falls within one read-ahead chunk is lent from the READ reply
    /// it arrived in; others are left to [`NfsFs::do_read`] (the chunks stay for it).
    fn read_lent(&self, cred: &Cred, vn: &Vnode, off: u64, len: usize, readahead: u64, out: &mut dyn FnMut(&[u8])) -> Option<KResult<()>> {
        if readahead == 0 {
            return None;
        }
        let fileid = vn.ino.0;
        if let Err(e) = self.write_back(fileid, false) {
            return Some(Err(e));
        }
        let fh = match self.fh_of(vn) {
            Ok(fh) => fh,
            Err(e) => return Some(Err(e)),
        };
        let end = off.saturating_add(len as u64);
        let chunks = self.ra_chunks(cred, &fh, fileid, off, end, readahead);
        let [(start, ch)] = &chunks[..] else { return None };
        let (data, eof) = match self.chunk_data_of(fileid, *start, ch) {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let from = ((off - start) as usize).min(data.len());
        if from + len <= data.len() {
            out(&data[from..from + len]);
        } else if eof {
            out(&data[from..]);
        } else {
            return None;
        }
        Some(Ok(()))
    }

    /// The data of read-ahead chunk `ch` (at `start` of `fileid`); a failed one is dropped.
    fn chunk_data_of(&self, fileid: u64, start: u64, ch: &Chunk) -> KResult<(Arc<ReadData>, bool)> {
        self.chunk_data(ch).inspect_err(|_| {
            if let Some(m) = lock(&self.ra).get_mut(&fileid) {
                m.remove(&start);
            }
        })
    }

    /// The read-ahead chunks that hold `off..end` of `fileid`, READs sent for them and for
    /// `readahead` bytes past them; chunks before `off` are done with.
    fn ra_chunks(&self, cred: &Cred, fh: &Fh, fileid: u64, off: u64, end: u64, readahead: u64) -> Vec<(u64, Chunk)> {
        let cs = u64::from(self.rsize);
        let ahead = if readahead >= RA_SEQUENTIAL { cs * RA_CHUNKS } else { readahead.min(cs * RA_CHUNKS) };
        let ra_end = end.saturating_add(ahead);
        let auth = self.auth(cred);
        let mut ra = lock(&self.ra);
        if ra.len() > RA_FILES && !ra.contains_key(&fileid) {
            if let Some(k) = ra.keys().next().copied() {
                ra.remove(&k);
            }
        }
        let m = ra.entry(fileid).or_default();
        // Chunks wholly before this read are done with: their READs are called off, unless
        // another FUSE read still waits for one (a reader a little behind this one: parallel
        // read-ahead requests arrive in any order).
        let first = off - off % cs;
        let old: Vec<u64> = m.range(..first).map(|(k, _)| *k).collect();
        for k in old {
            if let Some(c) = m.remove(&k) {
                if Arc::strong_count(&c) == 1 {
                    if let ChunkState::Pending(p) = &*lock(&c) {
                        self.client.cancel(*p);
                    }
                }
            }
        }
        let mut want = Vec::new();
        let mut c = first;
        while c < ra_end {
            let ch = m
                .entry(c)
                .or_insert_with(|| Arc::new(Mutex::new(ChunkState::Pending(self.start_read(&auth, fh, c, self.rsize)))))
                .clone();
            if c < end {
                want.push((c, ch));
            }
            c += cs;
        }
        want
    }

    // ----- write-behind -----

    fn wstate(&self, fileid: u64) -> Arc<WFile> {
        lock(&self.writes).entry(fileid).or_default().clone()
    }

    /// Sends the gathered bytes as one UNSTABLE WRITE; waits (unlocked) for the oldest WRITE
    /// when too many are in flight, and COMMITs when too much is uncommitted.
    fn send_dirty<'a>(&self, wf: &'a WFile, mut w: WGuard<'a>) -> (WGuard<'a>, KResult<()>) {
        if w.dirty.is_empty() {
            return (w, Ok(()));
        }
        let (Some(fh), Some(auth)) = (w.fh.clone(), w.auth.clone()) else { return (w, Err(Errno::EIO)) };
        let off = w.dirty_off;
        let end = off.saturating_add(w.dirty.len() as u64);
        if w.overlaps_inflight(off, end) {
            // The server may carry out WRITEs in flight in any order: an overwrite waits for
            // the WRITE it overwrites.
            let r;
            (w, r) = self.drain(wf, w);
            if let Err(e) = r {
                return (w, Err(e));
            }
            if w.dirty.is_empty() {
                return (w, Ok(()));
            }
        }
        let off = w.dirty_off;
        let data = Arc::new(std::mem::replace(&mut w.dirty, self.write_buf()));
        let mut e = Enc::new();
        fh.encode(&mut e);
        e.u64(off).u32(data.len() as u32).u32(UNSTABLE).u32(data.len() as u32);
        let p = self.client.start_data(procs::WRITE, &auth, &e.buf, data.clone());
        w.inflight.push_back((p, off, data));
        while w.inflight.len() > WRITES_IN_FLIGHT {
            let r;
            (w, r) = self.reap_one(wf, w);
            if let Err(e) = r {
                return (w, Err(e));
            }
        }
        // Long writes COMMIT as they go, so that what must be kept for resending after a
        // server restart stays bounded; the COMMIT is not waited for (the server flushes
        // while more data comes), unless the one before it has not been answered yet.
        if let Some(r) = w.commit_inflight.as_ref().and_then(|(p, _)| self.client.poll(*p)) {
            if let Some((_, batch)) = w.commit_inflight.take() {
                self.absorb_commit(&mut w, batch, r);
            }
        }
        if w.uncommitted_bytes > UNCOMMITTED_MAX {
            if w.commit_inflight.is_some() {
                w = self.finish_commit_inflight(wf, w);
            }
            let batch = std::mem::take(&mut w.uncommitted);
            w.uncommitted_bytes = 0;
            let mut e = Enc::new();
            fh.encode(&mut e);
            e.u64(0).u32(0);
            let p = self.client.start(procs::COMMIT, &auth, &e.buf);
            w.commit_inflight = Some((p, batch));
        }
        (w, Ok(()))
    }

    /// Takes in the answer to a COMMIT sent for `batch`: what it did not make stable (an error,
    /// a server that restarted since) goes back to `uncommitted`, for the next COMMIT to deal
    /// with (resending it).
    fn absorb_commit(&self, w: &mut WState, batch: Vec<Uncommitted>, r: KResult<rpc::Reply>) {
        let verf = r.and_then(|r| {
            let mut d = Dec::new(r.body());
            let st = status(&mut d)?;
            if let Some(fa) = wcc_data(&mut d)? {
                self.keep_attr(fa);
            }
            if st != 0 {
                return Err(nfs_errno(st));
            }
            d.verf()
        });
        let back: Vec<Uncommitted> = match verf {
            Ok(v) => {
                let (stale, done): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, _, bv)| *bv != v);
                done.into_iter().for_each(|(_, d, _)| self.recycle(d));
                stale
            }
            Err(_) => batch,
        };
        w.uncommitted_bytes += back.iter().map(|(_, d, _)| d.len()).sum::<usize>();
        w.uncommitted.extend(back);
    }

    /// Waits (unlocked) for the COMMIT sent in the middle of the write, if any.
    fn finish_commit_inflight<'a>(&self, wf: &'a WFile, mut w: WGuard<'a>) -> WGuard<'a> {
        while w.committing {
            w = wf.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        let Some((p, batch)) = w.commit_inflight.take() else { return w };
        w.committing = true;
        drop(w);
        let r = self.client.wait(p);
        let mut w = lock(&wf.st);
        w.committing = false;
        self.absorb_commit(&mut w, batch, r);
        wf.cv.notify_all();
        w
    }

    fn parse_write(&self, r: rpc::Reply) -> KResult<(usize, u32, [u8; 8])> {
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if let Some(fa) = wcc_data(&mut d)? {
            self.keep_attr(fa);
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        Ok((d.u32()? as usize, d.u32()?, d.verf()?))
    }

    /// A synchronous FILE_SYNC write of all of `data` (short writes continue).
    fn write_sync(&self, fh: &Fh, auth: &Auth, mut off: u64, mut data: &[u8]) -> KResult<()> {
        while !data.is_empty() {
            let n = data.len().min(self.wsize as usize);
            let mut e = Enc::new();
            fh.encode(&mut e);
            e.u64(off).u32(n as u32).u32(FILE_SYNC).opaque(&data[..n]);
            let (count, _, _) = self.parse_write(self.client.call(procs::WRITE, auth, &e.buf)?)?;
            if count == 0 || count > n {
                return Err(Errno::EIO);
            }
            off += count as u64;
            data = &data[count..];
        }
        Ok(())
    }

    /// Waits for the oldest WRITE in flight, with the file's lock released meanwhile.
    fn reap_one<'a>(&self, wf: &'a WFile, mut w: WGuard<'a>) -> (WGuard<'a>, KResult<()>) {
        let Some((p, off, data)) = w.inflight.pop_front() else { return (w, Ok(())) };
        let range = (off, off.saturating_add(data.len() as u64));
        w.reaping.push(range);
        let (fh, auth) = (w.fh.clone(), w.auth.clone());
        drop(w);
        let r = self.client.wait(p).and_then(|r| self.parse_write(r)).and_then(|(count, committed, verf)| {
            if count < data.len() {
                let (Some(fh), Some(auth)) = (fh, auth) else { return Err(Errno::EIO) };
                self.write_sync(&fh, &auth, off + count as u64, &data[count..])?;
            }
            Ok((committed, verf))
        });
        let mut w = lock(&wf.st);
        if let Some(i) = w.reaping.iter().position(|x| *x == range) {
            w.reaping.swap_remove(i);
        }
        let r = match r {
            Ok((committed, verf)) => {
                if committed != FILE_SYNC {
                    w.uncommitted_bytes += data.len();
                    w.uncommitted.push((off, data, verf));
                } else {
                    self.recycle(data);
                }
                Ok(())
            }
            Err(e) => {
                w.err.get_or_insert(e);
                Err(e)
            }
        };
        wf.cv.notify_all();
        (w, r)
    }

    /// Waits until no WRITE is in flight, by this thread or by others.
    fn drain<'a>(&self, wf: &'a WFile, mut w: WGuard<'a>) -> (WGuard<'a>, KResult<()>) {
        loop {
            if !w.inflight.is_empty() {
                let r;
                (w, r) = self.reap_one(wf, w);
                if let Err(e) = r {
                    return (w, Err(e));
                }
                continue;
            }
            if w.reaping.is_empty() {
                return (w, Ok(()));
            }
            w = wf.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Makes everything acknowledged so far stable: COMMIT, and what the server may have
    /// lost (the verifier changed: it restarted) sent again, FILE_SYNC. Unlocked meanwhile.
    fn commit<'a>(&self, wf: &'a WFile, mut w: WGuard<'a>) -> (WGuard<'a>, KResult<()>) {
        loop {
            let r;
            (w, r) = self.drain(wf, w);
            if let Err(e) = r {
                return (w, Err(e));
            }
            if w.committing {
                // Another thread's COMMIT covers part of what we wait for: let it finish.
                w = wf.cv.wait(w).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if w.commit_inflight.is_some() {
                w = self.finish_commit_inflight(wf, w);
                continue;
            }
            break;
        }
        if w.uncommitted.is_empty() {
            return (w, Ok(()));
        }
        let (Some(fh), Some(auth)) = (w.fh.clone(), w.auth.clone()) else { return (w, Err(Errno::EIO)) };
        let batch = std::mem::take(&mut w.uncommitted);
        w.uncommitted_bytes = 0;
        w.committing = true;
        drop(w);
        let r = self.commit_batch(&fh, &auth, &batch);
        let mut w = lock(&wf.st);
        w.committing = false;
        if r.is_err() {
            // Kept for the next attempt (fsync, close, unmount).
            w.uncommitted_bytes += batch.iter().map(|(_, d, _)| d.len()).sum::<usize>();
            w.uncommitted.extend(batch);
        } else {
            batch.into_iter().for_each(|(_, d, _)| self.recycle(d));
        }
        wf.cv.notify_all();
        (w, r)
    }

    /// An empty buffer for the data of one WRITE.
    fn write_buf(&self) -> Vec<u8> {
        lock(&self.spare_bufs).pop().unwrap_or_else(|| Vec::with_capacity(self.wsize as usize))
    }

    /// Takes back the buffer of a WRITE whose data is stable, unless someone still holds it.
    fn recycle(&self, data: Arc<Vec<u8>>) {
        if let Ok(mut v) = Arc::try_unwrap(data) {
            let mut spare = lock(&self.spare_bufs);
            if spare.len() < SPARE_BUFS && v.capacity() >= self.wsize as usize {
                v.clear();
                spare.push(v);
            }
        }
    }

    fn commit_batch(&self, fh: &Fh, auth: &Auth, batch: &[Uncommitted]) -> KResult<()> {
        let mut e = Enc::new();
        fh.encode(&mut e);
        e.u64(0).u32(0);
        let r = self.client.call(procs::COMMIT, auth, &e.buf)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if let Some(fa) = wcc_data(&mut d)? {
            self.keep_attr(fa);
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        let verf = d.verf()?;
        let stale: Vec<_> = batch.iter().filter(|(_, _, v)| *v != verf).collect();
        if stale.is_empty() {
            return Ok(());
        }
        // The server restarted since it took these and may have lost them: send them again,
        // stably (FILE_SYNC needs no COMMIT).
        log::warn!("{}: write verifier changed (server restart?): resending {} writes", self.name, stale.len());
        for (off, data, _) in stale {
            self.write_sync(fh, auth, *off, data)?;
        }
        Ok(())
    }

    /// Sends what is buffered for `fileid` and waits for it; with `commit`, also COMMITs.
    /// A write error seen since the last check is returned (once).
    fn write_back(&self, fileid: u64, commit: bool) -> KResult<()> {
        let Some(wf) = lock(&self.writes).get(&fileid).cloned() else { return Ok(()) };
        let mut w = lock(&wf.st);
        if w.busy() || (commit && !w.uncommitted.is_empty()) {
            let mut r;
            (w, r) = self.send_dirty(&wf, w);
            if r.is_ok() {
                (w, r) = self.drain(&wf, w);
            }
            if r.is_ok() && commit {
                (w, r) = self.commit(&wf, w);
            }
            if let Err(e) = r {
                w.err = None;
                return Err(e);
            }
        }
        if let Some(e) = w.err.take() {
            return Err(e);
        }
        if commit && w.uncommitted.is_empty() && !w.busy() {
            // Nothing pending: the size is the server's again.
            w.max_end = 0;
        }
        Ok(())
    }

    fn do_write(&self, cred: &Cred, vn: &Vnode, off: u64, data: &[u8]) -> KResult<usize> {
        let fileid = vn.ino.0;
        lock(&self.ra).remove(&fileid);
        let wf = self.wstate(fileid);
        let mut w = lock(&wf.st);
        if let Some(e) = w.err.take() {
            return Err(e);
        }
        if w.fh.is_none() {
            w.fh = Some(self.fh_of(vn)?);
        }
        w.auth = Some(self.auth(cred));
        let wsize = self.wsize as usize;
        let mut rest = data;
        let mut pos = off;
        while !rest.is_empty() {
            // Checked again on every round: sending may have let other threads in.
            if !w.dirty.is_empty() && (pos != w.dirty_off + w.dirty.len() as u64 || w.dirty.len() >= wsize) {
                let r;
                (w, r) = self.send_dirty(&wf, w);
                r?;
                continue;
            }
            if w.dirty.is_empty() {
                w.dirty_off = pos;
            }
            let n = rest.len().min(wsize - w.dirty.len());
            w.dirty.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            pos += n as u64;
            w.max_end = w.max_end.max(pos);
            if w.dirty.len() >= wsize {
                let r;
                (w, r) = self.send_dirty(&wf, w);
                r?;
            }
        }
        Ok(data.len())
    }

    fn sync_all(&self, limit: bool) -> KResult<()> {
        let ids: Vec<u64> = lock(&self.writes).keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            let r = if limit && self.gone.load(Ordering::Acquire) { Err(Errno::EIO) } else { self.write_back(id, true) };
            if let Err(e) = r {
                log::error!("{}: writing back inode {id}: {e}", self.name);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    // ----- namespace changes -----

    /// Decodes the common reply of CREATE, MKDIR, SYMLINK and MKNOD.
    fn parse_create(&self, cred: &Cred, dir: &Vnode, name: &[u8], r: rpc::Reply) -> KResult<Ino> {
        self.forget_listing(dir.ino.0);
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        if st != 0 {
            if let Some(fa) = wcc_data(&mut d)? {
                self.learn_attr(&fa);
            }
            return Err(nfs_errno(st));
        }
        let fh = post_op_fh(&mut d)?;
        let fa = post_op_attr(&mut d)?;
        match wcc_data(&mut d)? {
            Some(da) => self.learn_attr(&da),
            None => self.forget_attr(dir.ino.0),
        }
        match (fh, fa) {
            (Some(fh), Some(fa)) => {
                self.learn(Some(fh), Some(&fa));
                Ok(Ino(fa.fileid))
            }
            (Some(fh), None) => {
                let fa = self.getattr_rpc(cred, &fh)?;
                self.learn(Some(fh), Some(&fa));
                Ok(Ino(fa.fileid))
            }
            _ => self.do_lookup(cred, dir, name),
        }
    }

    fn do_create(&self, cred: &Cred, dir: &Vnode, name: &[u8], node: &NewNode) -> KResult<Ino> {
        let dfh = self.fh_of(dir)?;
        let mut e = Enc::new();
        diropargs(&mut e, &dfh, name);
        let sattr = Sattr { mode: Some(node.perm), ..Default::default() };
        let proc_ = match node.kind {
            FileType::Regular => {
                e.u32(1); // GUARDED: the name must not exist
                sattr.encode(&mut e);
                procs::CREATE
            }
            FileType::Directory => {
                sattr.encode(&mut e);
                procs::MKDIR
            }
            FileType::Symlink => return Err(Errno::EINVAL),
            k => {
                e.u32(kind_ftype(k));
                sattr.encode(&mut e);
                if matches!(k, FileType::CharDevice | FileType::BlockDevice) {
                    e.u32(major(node.rdev)).u32(minor(node.rdev));
                }
                procs::MKNOD
            }
        };
        let r = self.call(cred, proc_, &e)?;
        self.parse_create(cred, dir, name, r)
    }

    /// CREATE with the EXCLUSIVE method and a verifier, then the mode set with SETATTR.
    pub fn create_exclusive(&self, cred: &Cred, dir: &Vnode, name: &[u8], perm: u32) -> KResult<Ino> {
        let dfh = self.fh_of(dir)?;
        let mut verf = [0u8; 8];
        self.hyper.random(&mut verf);
        let mut e = Enc::new();
        diropargs(&mut e, &dfh, name);
        e.u32(2).fixed(&verf);
        let r = self.call(cred, procs::CREATE, &e)?;
        let ino = self.parse_create(cred, dir, name, r)?;
        let fh = lock(&self.handles).get(&ino.0).cloned().ok_or(Errno::ESTALE)?;
        let now = self.hyper.clock_realtime();
        self.setattr_rpc(cred, &fh, &Sattr { mode: Some(perm), atime: Some(now), mtime: Some(now), ..Default::default() }, None)?;
        Ok(ino)
    }

    fn setattr_rpc(&self, cred: &Cred, fh: &Fh, s: &Sattr, guard: Option<Timespec>) -> KResult<Option<Fattr>> {
        let mut e = Enc::new();
        fh.encode(&mut e);
        s.encode(&mut e);
        match guard {
            Some(t) => {
                e.u32(1).u32(t.sec.clamp(0, u32::MAX.into()) as u32).u32(t.nsec);
            }
            None => {
                e.u32(0);
            }
        }
        let r = self.call(cred, procs::SETATTR, &e)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        let fa = wcc_data(&mut d)?;
        if let Some(fa) = &fa {
            self.learn_attr(fa);
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        Ok(fa)
    }

    fn do_setattr(&self, cred: &Cred, vn: &Vnode, set: &SetAttr) -> KResult<Attr> {
        let fileid = vn.ino.0;
        if set.size.is_some() {
            self.write_back(fileid, false)?;
            if let Some(w) = lock(&self.writes).get(&fileid) {
                lock(&w.st).max_end = 0;
            }
            lock(&self.ra).remove(&fileid);
        }
        let map_u = |u: u32| match self.cfg.fixed {
            Some((fu, _)) if u == self.cfg.caller.uid => fu,
            _ => u,
        };
        let map_g = |g: u32| match self.cfg.fixed {
            Some((_, fg)) if g == self.cfg.caller.gid => fg,
            _ => g,
        };
        let s = Sattr {
            mode: set.perm,
            uid: set.uid.map(map_u),
            gid: set.gid.map(map_g),
            size: set.size,
            atime: set.atime,
            mtime: set.mtime,
        };
        let fh = self.fh_of(vn)?;
        let fa = match self.setattr_rpc(cred, &fh, &s, None)? {
            Some(fa) => fa,
            None => self.getattr_rpc(cred, &fh)?,
        };
        Ok(self.to_attr(&fa))
    }

    fn wcc_reply(&self, r: &rpc::Reply, dirs: &[&Vnode]) -> KResult<()> {
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        for dir in dirs {
            match wcc_data(&mut d)? {
                Some(fa) => self.learn_attr(&fa),
                None => self.forget_attr(dir.ino.0),
            }
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        Ok(())
    }

    fn do_remove(&self, cred: &Cred, dir: &Vnode, name: &[u8], vn: &Vnode, proc_: u32) -> KResult<()> {
        self.forget_name(dir.ino.0, name);
        self.forget_listing(dir.ino.0);
        if proc_ == procs::REMOVE && vn.open_count() > 0 && !lock(&self.silly).contains_key(&vn.ino.0) {
            return self.silly_rename(cred, dir, name, vn);
        }
        let mut e = Enc::new();
        diropargs(&mut e, &self.fh_of(dir)?, name);
        let r = self.call(cred, proc_, &e)?;
        self.wcc_reply(&r, &[dir])?;
        // Its link count changed.
        self.forget_attr(vn.ino.0);
        Ok(())
    }

    /// Unlink of a file that is still open: the server would forget it at once (and the open
    /// descriptor would read ESTALE), so it is renamed to `.nfs<inode><seq>` in the same
    /// directory and removed when the last user lets go ([`NfsFs::silly_remove`]), as the
    /// Linux client does.
    fn silly_rename(&self, cred: &Cred, dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()> {
        let dfh = self.fh_of(dir)?;
        let seq = self.silly_seq.fetch_add(1, Ordering::Relaxed);
        let hidden = format!(".nfs{:016x}{:08x}", vn.ino.0, seq).into_bytes();
        let mut e = Enc::new();
        diropargs(&mut e, &dfh, name);
        diropargs(&mut e, &dfh, &hidden);
        let r = self.call(cred, procs::RENAME, &e)?;
        self.wcc_reply(&r, &[dir, dir])?;
        self.forget_attr(vn.ino.0);
        log::debug!("{}: {} is open: renamed to {} until closed", self.name, String::from_utf8_lossy(name), String::from_utf8_lossy(&hidden));
        lock(&self.silly).insert(vn.ino.0, (dfh, hidden));
        Ok(())
    }

    /// Removes the hidden name of a file unlinked while open (its last user is gone). The wait
    /// is bounded, so that an unmount with the server gone does not hang; a name left behind
    /// is logged.
    fn silly_remove(&self, ino: u64) {
        let Some((dfh, hidden)) = lock(&self.silly).remove(&ino) else { return };
        let mut e = Enc::new();
        diropargs(&mut e, &dfh, &hidden);
        let limit = (self.cfg.rpc.timeo * 3).min(Duration::from_secs(60));
        let p = self.client.start(procs::REMOVE, &self.auth(&self.cfg.caller), &e.buf);
        let r = self.client.wait_limited(p, Some(limit)).and_then(|r| {
            let mut d = Dec::new(r.body());
            match status(&mut d)? {
                0 => Ok(()),
                st => Err(nfs_errno(st)),
            }
        });
        match r {
            Ok(()) => self.forget_attr(ino),
            Err(e) => log::error!("{}: cannot remove {} (a file unlinked while open): {e}", self.name, String::from_utf8_lossy(&hidden)),
        }
    }

    fn do_statfs(&self, cred: &Cred) -> KResult<StatFs> {
        let fh = lock(&self.handles).get(&self.root.0).cloned().ok_or(Errno::ESTALE)?;
        let mut e = Enc::new();
        fh.encode(&mut e);
        let r = self.call(cred, procs::FSSTAT, &e)?;
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        post_op_attr(&mut d)?;
        if st != 0 {
            return Err(nfs_errno(st));
        }
        let (tb, fb, ab, tf, ff, af) = (d.u64()?, d.u64()?, d.u64()?, d.u64()?, d.u64()?, d.u64()?);
        let _ = af;
        let bsize = 4096u64;
        Ok(StatFs { bsize: bsize as u32, blocks: tb / bsize, bfree: fb / bsize, bavail: ab / bsize, files: tf, ffree: ff, namemax: self.namemax })
    }

    /// The view of this mount acting for `cred`.
    fn view<'a>(&'a self, cred: &Cred) -> AsCred<'a> {
        AsCred { fs: self, cred: cred.clone() }
    }

    /// The RPC client (for tests).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// [`NfsFs`] acting for one caller: every call carries `cred`.
pub struct AsCred<'a> {
    fs: &'a NfsFs,
    cred: Cred,
}

impl FileSystem for AsCred<'_> {
    fn root(&self) -> Ino {
        self.fs.root
    }
    fn vget(&self, ino: Ino) -> KResult<NodeData> {
        let fh = lock(&self.fs.handles).get(&ino.0).cloned().ok_or(Errno::ESTALE)?;
        Ok(Box::new(Node { fh }))
    }
    fn getattr(&self, vn: &Vnode) -> KResult<Attr> {
        self.fs.do_getattr(&self.cred, vn)
    }
    fn lookup(&self, dir: &Vnode, name: &[u8]) -> KResult<Ino> {
        self.fs.do_lookup(&self.cred, dir, name)
    }
    fn readdir(&self, dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()> {
        self.fs.do_readdir(&self.cred, dir, cookie, sink)
    }
    fn read(&self, vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize> {
        self.fs.do_read(&self.cred, vn, off, buf, readahead)
    }
    fn read_lent(&self, vn: &Vnode, off: u64, len: usize, readahead: u64, out: &mut dyn FnMut(&[u8])) -> Option<KResult<()>> {
        self.fs.read_lent(&self.cred, vn, off, len, readahead, out)
    }
    fn readlink(&self, vn: &Vnode) -> KResult<Vec<u8>> {
        self.fs.do_readlink(&self.cred, vn)
    }
    fn statfs(&self) -> KResult<StatFs> {
        self.fs.do_statfs(&self.cred)
    }
    fn create(&self, dir: &Vnode, name: &[u8], node: &NewNode) -> KResult<Ino> {
        self.fs.do_create(&self.cred, dir, name, node)
    }
    fn symlink(&self, dir: &Vnode, name: &[u8], target: &[u8], node: &NewNode) -> KResult<Ino> {
        let mut e = Enc::new();
        diropargs(&mut e, &self.fs.fh_of(dir)?, name);
        Sattr { mode: Some(node.perm), ..Default::default() }.encode(&mut e);
        e.opaque(target);
        let r = self.fs.call(&self.cred, procs::SYMLINK, &e)?;
        self.fs.parse_create(&self.cred, dir, name, r)
    }
    fn link(&self, vn: &Vnode, dir: &Vnode, name: &[u8]) -> KResult<()> {
        let mut e = Enc::new();
        self.fs.fh_of(vn)?.encode(&mut e);
        diropargs(&mut e, &self.fs.fh_of(dir)?, name);
        let r = self.fs.call(&self.cred, procs::LINK, &e)?;
        self.fs.forget_listing(dir.ino.0);
        let mut d = Dec::new(r.body());
        let st = status(&mut d)?;
        match post_op_attr(&mut d)? {
            Some(fa) => self.fs.learn_attr(&fa),
            None => self.fs.forget_attr(vn.ino.0),
        }
        match wcc_data(&mut d)? {
            Some(fa) => self.fs.learn_attr(&fa),
            None => self.fs.forget_attr(dir.ino.0),
        }
        if st != 0 {
            return Err(nfs_errno(st));
        }
        Ok(())
    }
    fn unlink(&self, dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()> {
        self.fs.do_remove(&self.cred, dir, name, vn, procs::REMOVE)
    }
    fn rmdir(&self, dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()> {
        self.fs.do_remove(&self.cred, dir, name, vn, procs::RMDIR)
    }
    fn rename(&self, sdir: &Vnode, sname: &[u8], svn: &Vnode, ddir: &Vnode, dname: &[u8], dvn: Option<&Vnode>, mode: RenameMode) -> KResult<()> {
        if mode == RenameMode::Exchange {
            return Err(Errno::EINVAL);
        }
        self.fs.forget_name(sdir.ino.0, sname);
        self.fs.forget_name(ddir.ino.0, dname);
        self.fs.forget_listing(sdir.ino.0);
        self.fs.forget_listing(ddir.ino.0);
        // A target that is still open is moved aside first, as unlink would (the server would
        // forget it as the rename replaces it).
        if let Some(d) = dvn.filter(|d| d.open_count() > 0 && d.ino != svn.ino) {
            if !lock(&self.fs.silly).contains_key(&d.ino.0) && self.getattr(d)?.kind != FileType::Directory {
                self.fs.silly_rename(&self.cred, ddir, dname, d)?;
            }
        }
        let mut e = Enc::new();
        diropargs(&mut e, &self.fs.fh_of(sdir)?, sname);
        diropargs(&mut e, &self.fs.fh_of(ddir)?, dname);
        let r = self.fs.call(&self.cred, procs::RENAME, &e)?;
        self.fs.wcc_reply(&r, &[sdir, ddir])?;
        self.fs.forget_attr(svn.ino.0);
        if let Some(d) = dvn {
            self.fs.forget_attr(d.ino.0);
        }
        Ok(())
    }
    fn write(&self, vn: &Vnode, off: u64, data: &[u8]) -> KResult<usize> {
        self.fs.do_write(&self.cred, vn, off, data)
    }
    fn setattr(&self, vn: &Vnode, set: &SetAttr) -> KResult<Attr> {
        self.fs.do_setattr(&self.cred, vn, set)
    }
    fn fsync(&self, vn: &Vnode, _datasync: bool) -> KResult<()> {
        self.fs.write_back(vn.ino.0, true)
    }
    fn inactive(&self, vn: &Vnode) -> KResult<()> {
        let r = self.fs.write_back(vn.ino.0, true);
        let idle = lock(&self.fs.writes).get(&vn.ino.0).is_some_and(|w| {
            let w = lock(&w.st);
            !w.busy() && w.uncommitted.is_empty()
        });
        if idle {
            lock(&self.fs.writes).remove(&vn.ino.0);
        }
        lock(&self.fs.ra).remove(&vn.ino.0);
        self.fs.silly_remove(vn.ino.0);
        r
    }
    fn sync(&self) -> KResult<()> {
        self.fs.sync_all(false)
    }
    fn unmount(&self) -> KResult<()> {
        self.fs.do_unmount()
    }
    fn for_cred(&self, cred: &Cred) -> Option<Box<dyn FileSystem + '_>> {
        Some(Box::new(self.fs.view(cred)))
    }
    fn access(&self, vn: &Vnode, mask: u32) -> Option<KResult<()>> {
        if mask & 7 == 0 {
            return None;
        }
        Some(self.fs.do_access(&self.cred, vn, mask))
    }
    fn flush(&self, vn: &Vnode) -> KResult<()> {
        self.fs.write_back(vn.ino.0, true)
    }
    fn cache_ttl(&self) -> Option<Duration> {
        Some(self.fs.cfg.acregmin.min(self.fs.cfg.acdirmin).min(Duration::from_secs(1)))
    }
}

impl NfsFs {
    fn do_unmount(&self) -> KResult<()> {
        if self.gone.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Write back what we can, but never hang here: a dead server gets a bounded wait.
        let r = if self.read_only { Ok(()) } else { self.sync_all_bounded() };
        let t = self.cfg.rpc.timeo.min(Duration::from_secs(5));
        let auth = self.auth(&self.cfg.caller);
        let um = SyncConn::connect(self.hyper.as_ref(), self.mount_addr, self.cfg.rpc.resvport, t).and_then(|mut c| {
            let mut e = Enc::new();
            e.opaque(self.path.as_bytes());
            c.call(MOUNT_PROG, MOUNT_VERS, MOUNTPROC_UMNT, &auth, &e.buf)
        });
        if let Err(e) = um {
            log::debug!("{}: UMNT: {e:?}", self.name);
        }
        self.client.shutdown();
        r
    }

    fn sync_all_bounded(&self) -> KResult<()> {
        // A hard mount retries forever; at unmount we give the server a few timeouts' worth.
        let ids: Vec<u64> = lock(&self.writes).keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let limit = (self.cfg.rpc.timeo * 3).min(Duration::from_secs(60));
        let probe = {
            let fh = lock(&self.handles).get(&self.root.0).cloned();
            fh.map(|fh| {
                let mut e = Enc::new();
                fh.encode(&mut e);
                self.client.start(procs::GETATTR, &self.auth(&self.cfg.caller), &e.buf)
            })
        };
        if let Some(p) = probe {
            if let Err(e) = self.client.wait_limited(p, Some(limit)) {
                log::error!("{}: server not answering at unmount: unwritten data is lost", self.name);
                return Err(e);
            }
        }
        self.sync_all(false)
    }
}

macro_rules! delegate {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.view(&self.cfg.caller).$name($($arg),*) })*
    };
}

/// Without a caller (front ends that carry no credentials), the mounting user acts.
impl FileSystem for NfsFs {
    delegate! {
        vget(ino: Ino) -> KResult<NodeData>;
        getattr(vn: &Vnode) -> KResult<Attr>;
        lookup(dir: &Vnode, name: &[u8]) -> KResult<Ino>;
        readdir(dir: &Vnode, cookie: u64, sink: &mut dyn FnMut(&DirEntry<'_>) -> bool) -> KResult<()>;
        read(vn: &Vnode, off: u64, buf: &mut [u8], readahead: u64) -> KResult<usize>;
        readlink(vn: &Vnode) -> KResult<Vec<u8>>;
        statfs() -> KResult<StatFs>;
        create(dir: &Vnode, name: &[u8], node: &NewNode) -> KResult<Ino>;
        symlink(dir: &Vnode, name: &[u8], target: &[u8], node: &NewNode) -> KResult<Ino>;
        link(vn: &Vnode, dir: &Vnode, name: &[u8]) -> KResult<()>;
        unlink(dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()>;
        rmdir(dir: &Vnode, name: &[u8], vn: &Vnode) -> KResult<()>;
        rename(sdir: &Vnode, sname: &[u8], svn: &Vnode, ddir: &Vnode, dname: &[u8], dvn: Option<&Vnode>, mode: RenameMode) -> KResult<()>;
        write(vn: &Vnode, off: u64, data: &[u8]) -> KResult<usize>;
        setattr(vn: &Vnode, set: &SetAttr) -> KResult<Attr>;
        fsync(vn: &Vnode, datasync: bool) -> KResult<()>;
        inactive(vn: &Vnode) -> KResult<()>;
        sync() -> KResult<()>;
        unmount() -> KResult<()>;
        access(vn: &Vnode, mask: u32) -> Option<KResult<()>>;
        flush(vn: &Vnode) -> KResult<()>;
        cache_ttl() -> Option<Duration>;
    }
    fn root(&self) -> Ino {
        self.root
    }
    fn for_cred(&self, cred: &Cred) -> Option<Box<dyn FileSystem + '_>> {
        Some(Box::new(self.view(cred)))
    }
}

impl Drop for NfsFs {
    fn drop(&mut self) {
        self.client.shutdown();
    }
}

#[cfg(test)]
mod tests;
