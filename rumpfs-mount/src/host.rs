//! The host implementation of the hypercall interface: image files through the `images`
//! crate, TCP sockets, the clocks, randomness and threads of the process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vfs_faction::hypercall::{ConnectOptions, Socket, ThreadHandle};
use vfs_faction::{BlockDevice, Errno, Hypercalls, KResult, OpenMode, Timespec};

/// The process's platform.
pub struct HostPlatform {
    start: Instant,
}

impl HostPlatform {
    pub fn new() -> HostPlatform {
        HostPlatform { start: Instant::now() }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Errno::ETIMEDOUT,
        _ => e.raw_os_error().map(Errno::from_code).unwrap_or(Errno::EIO),
    }
}

/// A TCP connection, and the receive timeout last set on it (set again only when it changes:
/// a setsockopt per receive was a fifth of the system calls of a large NFS read).
struct TcpSocket(TcpStream, Mutex<Option<Option<Duration>>>);

impl TcpSocket {
    fn new(s: TcpStream) -> TcpSocket {
        TcpSocket(s, Mutex::new(None))
    }

    fn set_timeout(&self, timeout: Option<Duration>) -> KResult<()> {
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        let mut cur = self.1.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != Some(timeout) {
            self.0.set_read_timeout(timeout).map_err(|e| io_errno(&e))?;
            *cur = Some(timeout);
        }
        Ok(())
    }
}

impl Socket for TcpSocket {
    fn send(&self, buf: &[u8]) -> KResult<usize> {
        (&self.0).write(buf).map_err(|e| io_errno(&e))
    }

    fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> KResult<usize> {
        self.set_timeout(timeout)?;
        (&self.0).read(buf).map_err(|e| io_errno(&e))
    }

    fn recv_append(&self, buf: &mut Vec<u8>, max: usize, timeout: Option<Duration>) -> KResult<usize> {
        self.set_timeout(timeout)?;
        buf.reserve(max);
        let spare = &mut buf.spare_capacity_mut()[..max];
        loop {
            // SAFETY: recv(2) writes at most `max` bytes into the spare capacity, which has
            // room for them; the length grows only by what it reports written.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), spare.as_mut_ptr().cast(), max, 0) };
            if n >= 0 {
                let n = n as usize;
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_errno(&e));
            }
        }
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }

    fn local_addr(&self) -> KResult<SocketAddr> {
        self.0.local_addr().map_err(|e| io_errno(&e))
    }
}

/// Connects from a source port below 1024 (NFS `resvport`; needs root or
/// CAP_NET_BIND_SERVICE), trying ports downwards from 1023 as bindresvport(3) does.
fn connect_reserved(addr: SocketAddr, timeout: Option<Duration>) -> KResult<TcpStream> {
    use nix::errno::Errno as NixErrno;
    use nix::sys::socket::{bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let unspecified: std::net::IpAddr =
        if addr.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    for port in (512..1024).rev() {
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|e| Errno::from_code(e as i32))?;
        if let Some(t) = timeout {
            // connect(2) honours the send timeout on Linux.
            let tv = nix::sys::time::TimeVal::new(t.as_secs() as i64, t.subsec_micros() as i64);
            let _ = setsockopt(&fd, sockopt::SendTimeout, &tv);
        }
        match bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(unspecified, port))) {
            Ok(()) => {}
            Err(NixErrno::EADDRINUSE) => continue,
            Err(e) => return Err(Errno::from_code(e as i32)),
        }
        match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
            Ok(()) => {
                return Ok(TcpStream::from(fd));
            }
            Err(NixErrno::EADDRINUSE | NixErrno::EADDRNOTAVAIL) => continue,
            Err(NixErrno::EAGAIN | NixErrno::EINPROGRESS) => return Err(Errno::ETIMEDOUT),
            Err(e) => return Err(Errno::from_code(e as i32)),
        }
    }
    Err(Errno::EADDRINUSE)
}

struct StdThread(std::thread::JoinHandle<()>);

impl ThreadHandle for StdThread {
    fn join(self: Box<Self>) {
        let _ = self.0.join();
    }
}

impl Hypercalls for HostPlatform {
    fn open_block(&self, path: &str, mode: OpenMode) -> KResult<Arc<dyn BlockDevice>> {
        match images::open_image(std::path::Path::new(path), mode) {
            Ok(img) => Ok(img),
            Err(e) => {
                log::error!("{e}");
                Err(e.errno)
            }
        }
    }

    fn resolve(&self, host: &str, port: u16) -> KResult<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host, port).to_socket_addrs().map(Iterator::collect).map_err(|_| Errno::EHOSTUNREACH)
    }

    fn connect(&self, addr: SocketAddr, opts: ConnectOptions) -> KResult<Box<dyn Socket>> {
        let s = if opts.reserved_port {
            connect_reserved(addr, opts.timeout)?
        } else {
            match opts.timeout {
                Some(t) => TcpStream::connect_timeout(&addr, t),
                None => TcpStream::connect(addr),
            }
            .map_err(|e| io_errno(&e))?
        };
        let _ = s.set_nodelay(true);
        // Also undoes the connect timeout that connect_reserved set as the send timeout.
        s.set_write_timeout(opts.send_timeout.map(|t| t.max(Duration::from_millis(1)))).map_err(|e| io_errno(&e))?;
        Ok(Box::new(TcpSocket::new(s)))
    }

    fn clock_realtime(&self) -> Timespec {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(_) => Timespec::default(),
        }
    }

    fn clock_monotonic(&self) -> Duration {
        self.start.elapsed()
    }

    fn random(&self, buf: &mut [u8]) {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n <= 0 {
                break;
            }
            filled += n as usize;
        }
        if filled == buf.len() {
            return;
        }
        // Fall back to a clock-seeded generator (randomness here is never used for keys).
        let mut x = self.start.elapsed().as_nanos() as u64 ^ std::process::id() as u64 | 1;
        for b in &mut buf[filled..] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }

    fn spawn_thread(&self, name: &str, f: Box<dyn FnOnce() + Send + 'static>) -> KResult<Box<dyn ThreadHandle>> {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map(|h| Box::new(StdThread(h)) as Box<dyn ThreadHandle>)
            .map_err(|_| Errno::EAGAIN)
    }
}
