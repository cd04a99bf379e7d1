//! ONC RPC v2 over TCP (RFC 5531): call messages, AUTH_NONE and AUTH_SYS, record marking,
//! reply parsing, a one-shot synchronous connection (portmapper, MOUNT, the mount-time NFS
//! calls) and [`Client`], which keeps many calls in flight on one connection.
//!
//! [`Client`] matches replies to calls by XID in a receiver thread (one per connection,
//! started through the thread hypercall), retransmits a call that gets no answer in time,
//! reconnects when the server closes the connection or restarts and resends every call that
//! was outstanding, and gives up only on a `soft` mount (then `EIO`, like Linux).

use super::xdr::{malformed, Dec, Enc};
use core::net::SocketAddr;
use core::time::Duration;
use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use vfs_faction::hypercall::{ConnectOptions, Socket, ThreadHandle};
use vfs_faction::{Errno, Hypercalls, KResult};

pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;
/// RPC protocol version.
const RPC_VERS: u32 = 2;
const CALL: u32 = 0;
const REPLY: u32 = 1;
/// Last-fragment bit of a record mark.
const LAST_FRAG: u32 = 0x8000_0000;
/// Largest fragment we send.
pub const DEFAULT_MAX_FRAG: usize = (1 << 20) + (4 << 10);
/// Largest AUTH_SYS group list (RFC 5531).
const MAX_GIDS: usize = 16;

/// Credentials sent with a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Sys { uid: u32, gid: u32, gids: Vec<u32> },
}

impl Auth {
    fn encode(&self, e: &mut Enc, stamp: u32) {
        match self {
            Auth::None => {
                e.u32(AUTH_NONE).u32(0);
            }
            Auth::Sys { uid, gid, gids } => {
                let mut b = Enc::new();
                b.u32(stamp).opaque(b"rumpfs").u32(*uid).u32(*gid);
                let gids = &gids[..gids.len().min(MAX_GIDS)];
                b.u32(gids.len() as u32);
                for g in gids {
                    b.u32(*g);
                }
                e.u32(AUTH_SYS).opaque(&b.buf);
            }
        }
    }
}

/// Encodes a call message (without record marking).
pub fn encode_call(xid: u32, prog: u32, vers: u32, proc_: u32, auth: &Auth, args: &[u8]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(xid).u32(CALL).u32(RPC_VERS).u32(prog).u32(vers).u32(proc_);
    auth.encode(&mut e, xid);
    e.u32(AUTH_NONE).u32(0); // verifier
    e.buf.extend_from_slice(args);
    e.buf
}

/// Record marking: `msg` as fragments of at most `max_frag` bytes, the last one flagged.
pub fn record_mark(msg: &[u8], max_frag: usize) -> Vec<u8> {
    let max_frag = max_frag.clamp(1, 0x7fff_ffff);
    let mut out = Vec::with_capacity(msg.len() + 4 * (msg.len() / max_frag + 1));
    let mut chunks = msg.chunks(max_frag).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&LAST_FRAG.to_be_bytes());
    }
    while let Some(c) = chunks.next() {
        let last = if chunks.peek().is_none() { LAST_FRAG } else { 0 };
        out.extend_from_slice(&(last | c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

fn recv_exact(sock: &dyn Socket, buf: &mut [u8], timeout: Option<Duration>) -> KResult<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = sock.recv(&mut buf[got..], timeout)?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            log::warn!("nfs: connection closed in the middle of a record");
            return Err(Errno::ECONNRESET);
        }
        got += n;
    }
    Ok(true)
}

/// Reads one record (all its fragments) of at most `max` bytes. `None` at a clean end of the
/// stream. An oversized record is `EIO` before anything of its size is allocated.
pub fn read_record(sock: &dyn Socket, max: usize, timeout: Option<Duration>) -> KResult<Option<Vec<u8>>> {
    let mut rec = Vec::new();
    let mut first = true;
    loop {
        let mut hdr = [0u8; 4];
        if !recv_exact(sock, &mut hdr, timeout)? {
            if first {
                return Ok(None);
            }
            return Err(Errno::ECONNRESET);
        }
        first = false;
        let mark = u32::from_be_bytes(hdr);
        let len = (mark & !LAST_FRAG) as usize;
        let total = rec.len().checked_add(len).ok_or_else(|| malformed("record length overflow"))?;
        if total > max {
            return Err(malformed(&format!("record of {total} bytes over the limit {max}")));
        }
        rec.reserve_exact(len);
        while rec.len() < total {
            let want = total - rec.len();
            if sock.recv_append(&mut rec, want, timeout)? == 0 {
                log::warn!("nfs: connection closed in the middle of a record");
                return Err(Errno::ECONNRESET);
            }
        }
        if mark & LAST_FRAG != 0 {
            return Ok(Some(rec));
        }
    }
}

fn send_all(sock: &dyn Socket, mut buf: &[u8]) -> KResult<()> {
    while !buf.is_empty() {
        let n = sock.send(buf)?;
        if n == 0 {
            return Err(Errno::ECONNRESET);
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// A reply whose header has been checked: the results start at `off`.
#[derive(Debug)]
pub struct Reply {
    pub msg: Vec<u8>,
    off: usize,
}

impl Reply {
    /// The procedure's results.
    pub fn body(&self) -> &[u8] {
        &self.msg[self.off..]
    }
}

/// The XID of a reply record (its first word).
pub fn reply_xid(msg: &[u8]) -> Option<u32> {
    msg.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks a reply message: a REPLY, accepted, SUCCESS. Other outcomes become errnos: an
/// authentication error `EACCES`, an unknown program, version or procedure `EOPNOTSUPP`,
/// garbage arguments `EINVAL`, anything else `EIO`.
pub fn parse_reply(msg: Vec<u8>) -> KResult<Reply> {
    let mut d = Dec::new(&msg);
    let _xid = d.u32()?;
    if d.u32()? != REPLY {
        return Err(malformed("a call where a reply was expected"));
    }
    match d.u32()? {
        0 => {
            let _flavor = d.u32()?;
            d.opaque(400)?;
            match d.u32()? {
                0 => {
                    let off = msg.len() - d.remaining();
                    Ok(Reply { msg, off })
                }
                1 => {
                    log::warn!("nfs: server: program unavailable");
                    Err(Errno::EOPNOTSUPP)
                }
                2 => {
                    let (lo, hi) = (d.u32()?, d.u32()?);
                    log::warn!("nfs: server: program version mismatch (it has {lo}..{hi})");
                    Err(Errno::EOPNOTSUPP)
                }
                3 => {
                    log::warn!("nfs: server: procedure unavailable");
                    Err(Errno::EOPNOTSUPP)
                }
                4 => Err(Errno::EINVAL),
                5 => Err(Errno::EIO),
                s => Err(malformed(&format!("accept status {s}"))),
            }
        }
        1 => match d.u32()? {
            0 => {
                log::warn!("nfs: server: RPC version mismatch");
                Err(Errno::EIO)
            }
            1 => {
                let why = d.u32().unwrap_or(0);
                log::warn!("nfs: server refused our credentials (auth_stat {why})");
                Err(Errno::EACCES)
            }
            s => Err(malformed(&format!("reject status {s}"))),
        },
        s => Err(malformed(&format!("reply status {s}"))),
    }
}

/// Largest reply record we accept: the largest READ (1 MiB) or READDIRPLUS plus headers.
pub const MAX_RECORD: usize = (1 << 20) + (64 << 10);

/// A synchronous connection for the few calls made while mounting (no threads: the mount
/// may fork into the background afterwards).
pub struct SyncConn {
    sock: Box<dyn Socket>,
    xid: u32,
    timeout: Duration,
}

impl SyncConn {
    pub fn connect(hyper: &dyn Hypercalls, addr: SocketAddr, resvport: bool, timeout: Duration) -> KResult<SyncConn> {
        let sock = hyper.connect(addr, ConnectOptions { reserved_port: resvport, timeout: Some(timeout), send_timeout: Some(timeout) })?;
        let mut x = [0u8; 4];
        hyper.random(&mut x);
        Ok(SyncConn { sock, xid: u32::from_ne_bytes(x), timeout })
    }

    /// One call; waits at most the connection's timeout for the reply.
    pub fn call(&mut self, prog: u32, vers: u32, proc_: u32, auth: &Auth, args: &[u8]) -> KResult<Reply> {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        send_all(self.sock.as_ref(), &record_mark(&encode_call(xid, prog, vers, proc_, auth, args), DEFAULT_MAX_FRAG))?;
        loop {
            let rec = read_record(self.sock.as_ref(), MAX_RECORD, Some(self.timeout))?.ok_or(Errno::ECONNRESET)?;
            if reply_xid(&rec) == Some(xid) {
                return parse_reply(rec);
            }
        }
    }
}

impl Drop for SyncConn {
    fn drop(&mut self) {
        self.sock.shutdown();
    }
}

/// Retransmission and failure policy (`timeo=`, `retrans=`, `soft`/`hard`).
#[derive(Clone, Debug)]
pub struct RpcOpts {
    /// Time to wait for a reply before retransmitting; grows linearly with each retry.
    pub timeo: Duration,
    /// Retransmissions before a soft mount gives up.
    pub retrans: u32,
    /// Give up (EIO) after `retrans` retransmissions instead of retrying forever.
    pub soft: bool,
    /// Bind a reserved source port.
    pub resvport: bool,
    /// Largest fragment we send.
    pub max_frag: usize,
}

impl Default for RpcOpts {
    fn default() -> RpcOpts {
        RpcOpts { timeo: Duration::from_secs(60), retrans: 2, soft: false, resvport: false, max_frag: DEFAULT_MAX_FRAG }
    }
}

struct Conn {
    sock: Box<dyn Socket>,
    gen: u64,
    send_lock: Mutex<()>,
    dead: AtomicBool,
    /// Monotonic time (ms) of the last record received, or of the connect.
    last_rx_ms: AtomicU64,
}

impl Conn {
    fn kill(&self) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.sock.shutdown();
        }
    }
}

struct Call {
    /// The record (or, with `data`, its beginning).
    msg: Arc<Vec<u8>>,
    /// Bytes that follow `msg` in the record, sent from where they are (a WRITE's data,
    /// then XDR padding to a multiple of 4).
    data: Option<Arc<Vec<u8>>>,
    /// Zero bytes after `data`.
    pad: usize,
    /// Connection generation it was last sent on (0: not sent yet).
    sent_gen: u64,
    reply: Option<Vec<u8>>,
}

#[derive(Default)]
struct St {
    conn: Option<Arc<Conn>>,
    gen: u64,
    connecting: bool,
    closed: bool,
    next_xid: u32,
    calls: HashMap<u32, Call>,
    threads: Vec<Box<dyn ThreadHandle>>,
    warned: bool,
    /// No connect attempt before this (monotonic): the backoff after a failed connect is
    /// shared by every waiter, so a dead server sees one attempt per period, not one per call.
    next_connect: Duration,
    /// The current backoff (doubles per failed connect, up to [`MAX_BACKOFF`]).
    backoff: Duration,
}

/// Longest pause between two connect attempts to a server that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// First pause after a failed connect.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

struct Shared {
    st: Mutex<St>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call started with [`Client::start`], to be collected with [`Client::wait`] (or dropped
/// with [`Client::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending(u32);

/// An RPC client for one program on one server address, many calls in flight.
pub struct Client {
    hyper: Arc<dyn Hypercalls>,
    addr: SocketAddr,
    prog: u32,
    vers: u32,
    opts: RpcOpts,
    sh: Arc<Shared>,
    /// Name for log lines (`127.0.0.1:/export`).
    name: String,
}

impl Client {
    /// A client; it connects on first use.
    pub fn new(hyper: Arc<dyn Hypercalls>, addr: SocketAddr, prog: u32, vers: u32, opts: RpcOpts, name: String) -> Client {
        let mut x = [0u8; 4];
        hyper.random(&mut x);
        let st = St { next_xid: u32::from_ne_bytes(x), ..Default::default() };
        Client { hyper, addr, prog, vers, opts, sh: Arc::new(Shared { st: Mutex::new(st), cv: Condvar::new() }), name }
    }

    pub fn opts(&self) -> &RpcOpts {
        &self.opts
    }

    /// A call and its reply.
    pub fn call(&self, proc_: u32, auth: &Auth, args: &[u8]) -> KResult<Reply> {
        let p = self.start(proc_, auth, args);
        self.wait(p)
    }

    /// Sends a call without waiting for its reply.
    pub fn start(&self, proc_: u32, auth: &Auth, args: &[u8]) -> Pending {
        self.start_parts(proc_, auth, &[args])
    }

    /// [`Client::start`] with the arguments in pieces (a WRITE's header and its data), put
    /// straight into the record: the data is copied once.
    pub fn start_parts(&self, proc_: u32, auth: &Auth, parts: &[&[u8]]) -> Pending {
        let (xid, mut e) = self.call_header(proc_, auth, parts.iter().map(|p| p.len()).sum());
        for p in parts {
            e.buf.extend_from_slice(p);
        }
        let mut msg = e.buf;
        let body = msg.len() - 4;
        if body <= self.opts.max_frag.clamp(1, 0x7fff_ffff) {
            msg[..4].copy_from_slice(&(LAST_FRAG | body as u32).to_be_bytes());
        } else {
            msg = record_mark(&msg[4..], self.opts.max_frag);
        }
        self.launch(xid, Call { msg: Arc::new(msg), data: None, pad: 0, sent_gen: 0, reply: None })
    }

    /// A fresh XID and the record of a call to `proc_` up to its arguments (which take about
    /// `args_len` bytes): a placeholder for the record mark, the call header, the credentials
    /// and a null verifier.
    fn call_header(&self, proc_: u32, auth: &Auth, args_len: usize) -> (u32, Enc) {
        let xid = {
            let mut st = self.sh.lock();
            let mut xid = st.next_xid;
            while xid == 0 || st.calls.contains_key(&xid) {
                xid = xid.wrapping_add(1);
            }
            st.next_xid = xid.wrapping_add(1);
            xid
        };
        let mut e = Enc { buf: Vec::with_capacity(4 + 512 + args_len) };
        e.u32(0); // the record mark, filled in by the caller
        e.u32(xid).u32(CALL).u32(RPC_VERS).u32(self.prog).u32(self.vers).u32(proc_);
        auth.encode(&mut e, xid);
        e.u32(AUTH_NONE).u32(0); // verifier
        (xid, e)
    }

    /// Registers `call` and sends it if a connection is up. Best effort now; `wait` retries
    /// whatever did not go out. A server known to be down is not connected to here (that is
    /// the waiters' job, with backoff): a call is started with per-file state locked and must
    /// not block for long.
    fn launch(&self, xid: u32, call: Call) -> Pending {
        self.sh.lock().calls.insert(xid, call);
        if let Ok(conn) = self.try_conn(false, false) {
            self.transmit(xid, &conn);
        }
        Pending(xid)
    }

    /// The reply of `p` if it has come (the call is then done with), without waiting. A call
    /// only polled is not retransmitted: collect it with [`Client::wait`] in the end.
    pub fn poll(&self, p: Pending) -> Option<KResult<Reply>> {
        let mut st = self.sh.lock();
        let Some(call) = st.calls.get_mut(&p.0) else { return Some(Err(Errno::EIO)) };
        let msg = call.reply.take()?;
        st.calls.remove(&p.0);
        Some(parse_reply(msg))
    }

    /// [`Client::start`] for a call whose arguments end with opaque `data`: `head` holds the
    /// arguments before it, its length word included. The data is sent from where it is.
    pub fn start_data(&self, proc_: u32, auth: &Auth, head: &[u8], data: Arc<Vec<u8>>) -> Pending {
        let pad = (4 - data.len() % 4) % 4;
        let (xid, mut e) = self.call_header(proc_, auth, head.len());
        e.buf.extend_from_slice(head);
        let body = e.buf.len() - 4 + data.len() + pad;
        let call = if body <= self.opts.max_frag.clamp(1, 0x7fff_ffff) {
            e.buf[..4].copy_from_slice(&(LAST_FRAG | body as u32).to_be_bytes());
            Call { msg: Arc::new(e.buf), data: Some(data), pad, sent_gen: 0, reply: None }
        } else {
            let mut whole = e.buf.split_off(4);
            whole.extend_from_slice(&data);
            whole.resize(whole.len() + pad, 0);
            Call { msg: Arc::new(record_mark(&whole, self.opts.max_frag)), data: None, pad: 0, sent_gen: 0, reply: None }
        };
        self.launch(xid, call)
    }

    /// Forgets a call whose reply nobody will collect.
    pub fn cancel(&self, p: Pending) {
        self.sh.lock().calls.remove(&p.0);
    }

    /// The current connection, or a new one (may block connecting). `wait_for_others`: wait
    /// for another thread's connect instead of failing; `now_or_backoff`: connect even while
    /// backing off (a call's first attempt: a server that is back answers it at once).
    fn try_conn(&self, wait_for_others: bool, now_or_backoff: bool) -> KResult<Arc<Conn>> {
        let mut st = self.sh.lock();
        loop {
            if st.closed {
                return Err(Errno::EIO);
            }
            if let Some(c) = &st.conn {
                if !c.dead.load(Ordering::Acquire) {
                    return Ok(c.clone());
                }
                st.conn = None;
            }
            if !wait_for_others && (st.connecting || st.warned) {
                return Err(Errno::ENOTCONN);
            }
            if !st.connecting {
                let now = self.hyper.clock_monotonic();
                if now < st.next_connect && !now_or_backoff {
                    // Backing off after a failed attempt: the caller waits and comes back.
                    return Err(Errno::ENOTCONN);
                }
                break;
            }
            st = self.sh.cv.wait_timeout(st, self.opts.timeo).unwrap_or_else(|e| e.into_inner()).0;
        }
        st.connecting = true;
        drop(st);
        // A send that stalls for a whole timeout fails: the connection is then dropped and the
        // calls resent on a new one (or, on a soft mount, given up), as for a silent server. A
        // server that stopped reading would otherwise hold the sending thread for ever.
        let opts = ConnectOptions {
            reserved_port: self.opts.resvport,
            timeout: Some(self.opts.timeo.min(Duration::from_secs(30))),
            send_timeout: Some(self.opts.timeo.max(Duration::from_millis(100))),
        };
        let r = self.hyper.connect(self.addr, opts);
        let mut st = self.sh.lock();
        st.connecting = false;
        self.sh.cv.notify_all();
        let now = self.hyper.clock_monotonic();
        let sock = match r {
            Ok(s) => {
                st.backoff = Duration::ZERO;
                st.next_connect = Duration::ZERO;
                s
            }
            Err(e) => {
                st.backoff = (st.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                st.next_connect = now + st.backoff;
                log::debug!("nfs: connect to {}: {e:?}; next attempt in {:?}", self.addr, st.backoff);
                return Err(e);
            }
        };
        st.gen += 1;
        let conn = Arc::new(Conn {
            sock,
            gen: st.gen,
            send_lock: Mutex::new(()),
            dead: AtomicBool::new(false),
            last_rx_ms: AtomicU64::new(now.as_millis() as u64),
        });
        if st.closed {
            conn.kill();
            return Err(Errno::EIO);
        }
        let (sh, c2) = (self.sh.clone(), conn.clone());
        let name = self.name.clone();
        let hyper = self.hyper.clone();
        match self.hyper.spawn_thread("nfs-rpc-rx", Box::new(move || receiver(sh, c2, name, hyper))) {
            Ok(h) => {
                st.threads.push(h);
            }
            Err(e) => {
                conn.kill();
                return Err(e);
            }
        }
        if st.warned {
            log::warn!("nfs: server {} is back", self.name);
            st.warned = false;
        }
        log::debug!("nfs: connected to {} (connection {})", self.addr, conn.gen);
        st.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Sends call `xid` on `conn`; on failure the connection is dropped (the waiter resends).
    fn transmit(&self, xid: u32, conn: &Arc<Conn>) {
        let msg = {
            let mut st = self.sh.lock();
            match st.calls.get_mut(&xid) {
                Some(c) if c.reply.is_none() => {
                    c.sent_gen = conn.gen;
                    (c.msg.clone(), c.data.clone(), c.pad)
                }
                _ => return,
            }
        };
        let (msg, data, pad) = msg;
        let _g = conn.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = send_all(conn.sock.as_ref(), &msg)
            .and_then(|()| data.map_or(Ok(()), |d| send_all(conn.sock.as_ref(), &d)))
            .and_then(|()| send_all(conn.sock.as_ref(), &[0u8; 3][..pad.min(3)]));
        if let Err(e) = r {
            log::debug!("nfs: send to {}: {e:?}", self.addr);
            conn.kill();
        }
    }

    /// Waits for the reply of `p`, retransmitting and reconnecting as needed.
    pub fn wait(&self, p: Pending) -> KResult<Reply> {
        self.wait_limited(p, None)
    }

    /// [`Client::wait`], but never longer than `limit` in all (then `EIO`), whatever the mount
    /// policy: used at unmount so that a dead server cannot hang it.
    pub fn wait_limited(&self, p: Pending, limit: Option<Duration>) -> KResult<Reply> {
        let xid = p.0;
        let start = self.hyper.clock_monotonic();
        let timeo = self.opts.timeo.max(Duration::from_millis(1));
        // Timeouts so far; each waits one `timeo` longer than the one before (as Linux).
        let mut tries: u32 = 0;
        let mut sent_at = start;
        let mut connect_tried = false;
        // A soft mount gives up once the call has gone unanswered as long as `retrans`
        // retransmissions with growing timeouts take, whether the server is unreachable or
        // just silent.
        let soft_limit = self.opts.soft.then(|| {
            let r = self.opts.retrans.min(1000);
            timeo.saturating_mul((r + 1) * (r + 2) / 2)
        });
        loop {
            let mut st = self.sh.lock();
            let Some(call) = st.calls.get_mut(&xid) else { return Err(Errno::EIO) };
            if let Some(msg) = call.reply.take() {
                st.calls.remove(&xid);
                return parse_reply(msg);
            }
            let sent_gen = call.sent_gen;
            if st.closed {
                st.calls.remove(&xid);
                return Err(Errno::EIO);
            }
            let now = self.hyper.clock_monotonic();
            let waited = now.saturating_sub(start);
            if limit.is_some_and(|l| waited >= l) {
                st.calls.remove(&xid);
                return Err(Errno::EIO);
            }
            if soft_limit.is_some_and(|l| waited >= l) {
                st.calls.remove(&xid);
                log::warn!("nfs: server {} not responding: giving up (soft mount)", self.name);
                return Err(Errno::EIO);
            }
            // How long this wait may last at most, whatever happens.
            let cap = |d: Duration| -> Duration {
                let d = limit.map_or(d, |l| d.min(l.saturating_sub(waited)));
                soft_limit.map_or(d, |l| d.min(l.saturating_sub(waited))).max(Duration::from_millis(1))
            };
            let this_timeo = timeo.saturating_mul(tries + 1).min(Duration::from_secs(120));
            let live = st.conn.as_ref().filter(|c| !c.dead.load(Ordering::Acquire)).map(|c| c.gen);
            if live.is_none() || live != Some(sent_gen) {
                // Not sent on the current connection: (re)connect and resend.
                drop(st);
                let first = !connect_tried;
                connect_tried = true;
                match self.try_conn(true, first) {
                    Ok(conn) => {
                        self.transmit(xid, &conn);
                        sent_at = self.hyper.clock_monotonic();
                    }
                    Err(e) => {
                        let mut st = self.sh.lock();
                        if st.closed {
                            continue;
                        }
                        if !st.warned && e != Errno::ENOTCONN {
                            log::warn!("nfs: server {} not responding ({}), still trying", self.name, e.name());
                            st.warned = true;
                        }
                        // Until the next connect attempt is due (the backoff is shared by all
                        // waiters); a new connection or a reply wakes us earlier.
                        let now = self.hyper.clock_monotonic();
                        let pause = st.next_connect.saturating_sub(now).max(Duration::from_millis(10)).min(this_timeo);
                        let _ = self.sh.cv.wait_timeout(st, cap(pause));
                    }
                }
                continue;
            }
            let elapsed = now.saturating_sub(sent_at);
            if elapsed >= this_timeo {
                tries = tries.saturating_add(1);
                if !st.warned {
                    log::warn!("nfs: server {} not responding, still trying", self.name);
                    st.warned = true;
                }
                let conn = st.conn.clone();
                drop(st);
                if let Some(c) = conn {
                    let idle_ms = (now.as_millis() as u64).saturating_sub(c.last_rx_ms.load(Ordering::Acquire));
                    if u128::from(idle_ms) >= timeo.as_millis() {
                        // Nothing at all has come back for a whole timeout: the connection is
                        // as good as dead (a server that hung or restarted without a reset, a
                        // lost peer). Drop it; every outstanding call is resent on the next one.
                        log::debug!("nfs: {}: connection {} silent for {idle_ms} ms: reconnecting", self.name, c.gen);
                        c.kill();
                        self.sh.cv.notify_all();
                    } else {
                        // The server answers other calls: resend this one on the same connection.
                        self.transmit(xid, &c);
                    }
                }
                sent_at = self.hyper.clock_monotonic();
                continue;
            }
            let _ = self.sh.cv.wait_timeout(st, cap(this_timeo - elapsed));
        }
    }

    /// Drops the connection (as if the server had closed it): outstanding calls are resent on
    /// the next one. For tests and for recovering from a confused server.
    pub fn disconnect(&self) {
        let c = self.sh.lock().conn.take();
        if let Some(c) = c {
            c.kill();
        }
        self.sh.cv.notify_all();
    }

    /// Closes the client: outstanding and later calls fail with `EIO`; receiver threads end.
    pub fn shutdown(&self) {
        let (conn, threads) = {
            let mut st = self.sh.lock();
            st.closed = true;
            (st.conn.take(), std::mem::take(&mut st.threads))
        };
        self.sh.cv.notify_all();
        if let Some(c) = conn {
            c.kill();
        }
        for t in threads {
            t.join();
        }
    }

    /// Calls currently outstanding (for tests).
    pub fn outstanding(&self) -> usize {
        self.sh.lock().calls.len()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The receiver thread of one connection: hands each reply to its call until the stream ends.
fn receiver(sh: Arc<Shared>, conn: Arc<Conn>, name: String, hyper: Arc<dyn Hypercalls>) {
    loop {
        match read_record(conn.sock.as_ref(), MAX_RECORD, None) {
            Ok(Some(rec)) => {
                conn.last_rx_ms.store(hyper.clock_monotonic().as_millis() as u64, Ordering::Release);
                let Some(xid) = reply_xid(&rec) else {
                    log::warn!("nfs: {name}: record too short for an XID; dropping the connection");
                    break;
                };
                let mut st = sh.lock();
                match st.calls.get_mut(&xid) {
                    Some(c) => {
                        c.reply = Some(rec);
                        drop(st);
                        sh.cv.notify_all();
                    }
                    None => log::debug!("nfs: {name}: reply to unknown xid {xid:#x}"),
                }
            }
            Ok(None) => {
                log::debug!("nfs: {name}: server closed connection {}", conn.gen);
                break;
            }
            Err(e) => {
                if !conn.dead.load(Ordering::Acquire) {
                    log::debug!("nfs: {name}: connection {}: {e:?}", conn.gen);
                }
                break;
            }
        }
    }
    conn.kill();
    let mut st = sh.lock();
    if st.conn.as_ref().is_some_and(|c| c.gen == conn.gen) {
        st.conn = None;
    }
    drop(st);
    sh.cv.notify_all();
}
