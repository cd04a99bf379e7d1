//! Test harness: a real NFS server (nfs-ganesha with the VFS FSAL) on 127.0.0.1 exporting a
//! temporary directory, with rpcbind as its portmapper.
//!
//! One server per portmapper: tests that use it hold [`NfsServer::start`]'s lock for their whole
//! run — an in-process mutex and an exclusive `flock` on [`SERVER_LOCK_FILE`], which
//! `bench/nfs.sh` takes too, so test binaries and the benchmark never share port 2049. rpcbind is started only when none runs, and then stopped (by its pid) when the test
//! process exits; ganesha is stopped by its pid on every path (a Drop guard).

use rumpfs_tests::*;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const NFS_PORT: u16 = 2049;
pub const MNT_PORT: u16 = 20048;

/// The rpcbind this process started, if any (stopped at exit).
static RPCBIND_PID: Mutex<Option<i32>> = Mutex::new(None);

extern "C" fn stop_rpcbind() {
    let pid = RPCBIND_PID.lock().map(|p| *p).unwrap_or(None);
    if let Some(pid) = pid {
        // Wait for whoever (another test binary, the benchmark) is using a server registered
        // with our rpcbind to finish before taking it away.
        if let Ok(f) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(SERVER_LOCK_FILE) {
            // SAFETY: flock on a descriptor we own; released when `f` closes.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            // SAFETY: a process we started ourselves, by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // Gone before the lock is released: else the next holder still finds port 111
            // open, starts no rpcbind of its own, and ganesha cannot register with the dying one.
            // SAFETY: our own child (its Child was forgotten, never reaped).
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            return;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

fn wait_port(port: u16, open: bool, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if port_open(port) == open {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// rpcbind on 127.0.0.1:111: the one already running, or one we start (and stop at exit).
/// Called with the server lock held, so no other user of the port races it.
fn ensure_rpcbind() {
    if port_open(111) {
        return;
    }
    let mut ours = RPCBIND_PID.lock().unwrap_or_else(|e| e.into_inner());
    let child = tool("rpcbind").arg("-f").arg("-w").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    let child = child.unwrap_or_else(|e| panic!("cannot start rpcbind: {e}"));
    let pid = child.id() as i32;
    std::mem::forget(child);
    if ours.replace(pid).is_none() {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(stop_rpcbind) };
    }
    assert!(wait_port(111, true, Duration::from_secs(10)), "rpcbind did not start listening on port 111");
}

/// A running nfs-ganesha exporting `export` read-write to 127.0.0.1.
pub struct NfsServer {
    pub dir: TempDir,
    pub export: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Stopped with SIGSTOP (see [`NfsServer::pause`]).
    paused: bool,
    _lock: ServerLock,
}

/// The file every user of port 2049 here (test binaries, `bench/nfs.sh`) locks exclusively
/// while its server runs: one server per portmapper, across processes.
pub const SERVER_LOCK_FILE: &str = "/tmp/rumpfs-nfs-server.lock";

/// Held for a server's whole life: the in-process mutex (tests of one binary run in threads)
/// and an exclusive `flock` on [`SERVER_LOCK_FILE`] (other test binaries, the benchmark).
struct ServerLock {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

impl ServerLock {
    fn take() -> ServerLock {
        static LOCK: Mutex<()> = Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(SERVER_LOCK_FILE)
            .unwrap_or_else(|e| panic!("cannot open {SERVER_LOCK_FILE}: {e}"));
        // The lock file is shared by every user of the machine's NFS port.
        let _ = std::fs::set_permissions(SERVER_LOCK_FILE, std::os::unix::fs::PermissionsExt::from_mode(0o666));
        // SAFETY: flock on a descriptor we own; blocks until the other holder is done.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {SERVER_LOCK_FILE}: {}", std::io::Error::last_os_error());
        ServerLock { _file: file, _guard: guard }
    }
}

impl NfsServer {
    /// Starts a server exporting a fresh, empty, world-writable directory.
    pub fn start() -> NfsServer {
        let lock = ServerLock::take();
        require_tools(&["ganesha.nfsd", "rpcbind", "nfs-ls", "nfs-cat", "fusermount3", "setpriv"]);
        ensure_rpcbind();
        let dir = tempdir();
        let export = dir.path().join("export");
        std::fs::create_dir(&export).unwrap();
        chmod(&export, 0o777);
        let conf = dir.path().join("ganesha.conf");
        let text = format!(
            "NFS_CORE_PARAM {{ Bind_addr = 127.0.0.1; NFS_Port = {NFS_PORT}; MNT_Port = {MNT_PORT}; Protocols = 3; \
             Enable_UDP = false; Enable_NLM = false; Enable_RQUOTA = false; }}\n\
             NFSV4 {{ Graceless = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = {p}; Pseudo = {p}; Protocols = 3; Transports = TCP; Access_Type = RW; \
             Squash = No_Root_Squash; SecType = sys; PrivilegedPort = false; Attr_Expiration_Time = 0; \
             FSAL {{ Name = VFS; }} }}\n",
            p = export.display()
        );
        std::fs::write(&conf, text).unwrap();
        let log = dir.path().join("ganesha.log");
        let mut s = NfsServer { dir, export, conf, log, child: None, paused: false, _lock: lock };
        assert!(wait_port(NFS_PORT, false, Duration::from_secs(10)), "port {NFS_PORT} is taken by another server");
        s.launch();
        s
    }

    /// `127.0.0.1:/export/path`.
    pub fn source(&self) -> String {
        format!("127.0.0.1:{}", self.export.display())
    }

    /// `nfs://127.0.0.1/export/path` for libnfs tools.
    pub fn url(&self, rel: &str) -> String {
        format!("nfs://127.0.0.1{}/{rel}", self.export.display())
    }

    fn spawn(&self) -> Child {
        let pidfile = self.dir.path().join("ganesha.pid");
        Command::new(find_tool("ganesha.nfsd").expect("ganesha.nfsd"))
            .arg("-F")
            .arg("-f")
            .arg(&self.conf)
            .arg("-L")
            .arg(&self.log)
            .arg("-p")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ganesha.nfsd: {e}"))
    }

    /// Starts ganesha and waits until it listens; a start that does not come up (it happens
    /// now and then right after rpcbind started) is stopped and tried again.
    fn launch(&mut self) {
        let mut why = String::new();
        for _attempt in 0..3 {
            // A failed start is most often an rpcbind that went away: start one again.
            ensure_rpcbind();
            let mut child = self.spawn();
            let start = Instant::now();
            let up = loop {
                if port_open(NFS_PORT) && port_open(MNT_PORT) {
                    break true;
                }
                if let Ok(Some(st)) = child.try_wait() {
                    why = format!("ganesha exited: {st}");
                    break false;
                }
                if start.elapsed() > Duration::from_secs(8) {
                    why = "ganesha did not listen within 8 s".into();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                self.child = Some(child);
                return;
            }
            // Ours, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            wait_port(NFS_PORT, false, Duration::from_secs(5));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        panic!("{why}; end of its log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }

    /// Kills the server (SIGKILL: as a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        self.paused = false;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(NFS_PORT, false, Duration::from_secs(10));
    }

    /// Starts the server again after [`NfsServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Freezes the server (SIGSTOP): its connections stay open and the kernel keeps
    /// accepting bytes for it until the socket buffers fill, but it reads and answers nothing.
    /// Stopping or dropping the server resumes it first.
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            // SAFETY: the pid of a child we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
            self.paused = true;
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&mut self) {
        if let (Some(c), true) = (&self.child, self.paused) {
            // SAFETY: as in `pause`.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.paused = false;
    }

    /// Stops the server by its pid: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            // SAFETY: the pid of a child we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Path of `rel` in the export directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.export.join(rel)
    }

    /// The server's log (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn export_dir(&self) -> &Path {
        &self.export
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
