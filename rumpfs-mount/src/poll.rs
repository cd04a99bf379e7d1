//! Polling /dev/fuse while the mount is busy.
//!
//! Every FUSE request is a round trip: the caller sleeps until our reply. A worker blocked in
//! read(2) on /dev/fuse sleeps too, so each round trip wakes two sleeping threads, usually on
//! two CPUs; on a virtual machine an idle vCPU has halted and each such wakeup is an exit to
//! the host. Creating a file takes five round trips, and waking our worker was about a third
//! of their time.
//!
//! So while requests keep coming, one worker does not sleep: its /dev/fuse descriptor is made
//! non-blocking, and fuser's read loop, which retries on EAGAIN, polls. The request is then
//! taken as soon as it is queued. `spin=` microseconds after the last request, a controller
//! thread makes the descriptor blocking again and the worker sleeps in its next read. An idle
//! mount costs nothing; a busy one costs up to one CPU, which is why this is off on a machine
//! with one CPU, where the poller would take the CPU from the very process it serves.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long to poll after a request (0: never); set once, before the session runs.
static IDLE_US: AtomicU64 = AtomicU64::new(0);

struct Poller {
    /// The /dev/fuse descriptor one worker reads.
    fd: RawFd,
    start: Instant,
    /// Time of the last request, in nanoseconds since `start`.
    last: AtomicU64,
    idle: Duration,
    /// Whether the descriptor is non-blocking now (read without the lock on the fast path).
    polling_now: AtomicBool,
    polling: Mutex<bool>,
    cv: Condvar,
}

static POLLER: OnceLock<Option<&'static Poller>> = OnceLock::new();

/// Polls for `idle` after each request (zero: never).
pub fn configure(idle: Duration) {
    IDLE_US.store(idle.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// Called by the bridge for every request it serves.
pub fn note_request() {
    let Some(p) = POLLER.get_or_init(start) else { return };
    p.last.store(p.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if p.polling_now.load(Ordering::Acquire) {
        return;
    }
    let mut polling = lock(&p.polling);
    if !*polling {
        set_nonblocking(p.fd, true);
        *polling = true;
        p.polling_now.store(true, Ordering::Release);
        p.cv.notify_one();
    }
}

/// Found at the first request: by then fuser has opened the clones of the FUSE descriptor
/// its workers read (the newest, one worker's own, is taken).
fn start() -> Option<&'static Poller> {
    let idle = Duration::from_micros(IDLE_US.load(Ordering::Relaxed));
    if idle.is_zero() {
        return None;
    }
    let fd = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "/dev/fuse"))
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .max()?;
    let p: &'static Poller = Box::leak(Box::new(Poller {
        fd,
        start: Instant::now(),
        last: AtomicU64::new(0),
        idle,
        polling_now: AtomicBool::new(false),
        polling: Mutex::new(false),
        cv: Condvar::new(),
    }));
    match std::thread::Builder::new().name("fuse-poll".into()).spawn(move || controller(p)) {
        Ok(_) => Some(p),
        Err(e) => {
            log::warn!("no polling of /dev/fuse: {e}");
            None
        }
    }
}

/// Stops the polling once no request came for `idle`.
fn controller(p: &'static Poller) {
    let tick = (p.idle / 3).max(Duration::from_micros(50));
    loop {
        let mut polling = lock(&p.polling);
        while !*polling {
            polling = p.cv.wait(polling).unwrap_or_else(|e| e.into_inner());
        }
        drop(polling);
        std::thread::sleep(tick);
        let since = (p.start.elapsed().as_nanos() as u64).saturating_sub(p.last.load(Ordering::Relaxed));
        let mut polling = lock(&p.polling);
        if since >= p.idle.as_nanos() as u64 {
            // Cleared first: a request noted from here on sets the flag again.
            p.polling_now.store(false, Ordering::Release);
            set_nonblocking(p.fd, false);
            *polling = false;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_nonblocking(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor that stays open while the session runs (the workers'
    // own); F_GETFL/F_SETFL touch only the file status flags.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            let new = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
            if new != fl {
                libc::fcntl(fd, libc::F_SETFL, new);
            }
        }
    }
}
