//! rumpfs-mount: boots a rump kernel with the driver components a source needs and mounts the
//! source (a disk image, or one of its partitions) through FUSE.

mod bridge;
mod host;
mod nfs_cli;
mod options;
mod poll;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, ForkResult};
use options::Options;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfs_faction::{BootConfig, Faction, Kernel, MountOptions, MountSource, OpenMode};

/// Exit status: bad arguments or options.
const EXIT_USAGE: i32 = 1;
/// Exit status: the mount failed.
const EXIT_MOUNT: i32 = 32;

#[derive(Parser, Debug)]
#[command(
    name = "rumpfs-mount",
    version,
    about = "Mount ext2/ext3/ext4 disk images through FUSE, with the file system driver in a user-space rump kernel",
    after_help = "Options (-o): ro, rw, allow_other, allow_root, auto_unmount, vcpus=N, spin=USEC, cache=SIZE, partition=N, fsname=NAME, subtype=NAME, debug.\nSee rumpfs-mount(8)."
)]
struct Cli {
    /// File system type (ext2, ext3, ext4); detected from the superblock when omitted
    #[arg(short = 't', value_name = "TYPE")]
    fstype: Option<String>,
    /// Mount options, comma separated (may be repeated)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug log on stderr (implies -f)
    #[arg(short = 'd')]
    debug: bool,
    /// Accepted for mount.fuse compatibility (single-threaded); same as -o vcpus=1
    #[arg(short = 's', hide = true)]
    single: bool,
    /// List the driver components this build can boot, with their factions, and exit
    #[arg(long)]
    list_components: bool,
    /// List the exports of an NFS server (like showmount -e) and exit
    #[arg(long, value_name = "HOST")]
    list_exports: Option<String>,
    /// Disk image (or block device) to mount
    source: Option<String>,
    /// Directory to mount it on
    mountpoint: Option<PathBuf>,
}

/// A failure with its exit status and one line for the user.
struct Fail(i32, String);

fn fail<T>(code: i32, msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(code, msg.into()))
}

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(Fail(code, msg)) => {
            eprintln!("rumpfs-mount: {msg}");
            code
        }
    };
    std::process::exit(code);
}

fn init_log(debug: bool) {
    let default = if debug { "debug,fuser=info" } else { "warn" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .try_init();
}

fn list_components() {
    let kernel = boot(vec![Faction::Vfs, Faction::Dev, Faction::Net], 1 << 20);
    match kernel {
        Ok(k) => {
            println!("{:<10} {:<14} {:<18} DESCRIPTION", "COMPONENT", "FACTIONS", "TYPES");
            for c in k.components() {
                let f: Vec<_> = c.factions().iter().map(|f| f.name()).collect();
                println!("{:<10} {:<14} {:<18} {}", c.name(), f.join(","), c.fs_types().join(","), c.description());
            }
        }
        Err(e) => eprintln!("rumpfs-mount: {e}"),
    }
}

/// Boots a kernel with `factions` and every component whose factions are all present.
fn boot(factions: Vec<Faction>, cache_bytes: usize) -> Result<Arc<Kernel>, vfs_faction::BootError> {
    let components =
        fs_drivers::all_components().into_iter().filter(|c| c.factions().iter().all(|f| factions.contains(f))).collect();
    Kernel::boot(BootConfig { hyper: Arc::new(host::HostPlatform::new()), factions, components, cache_bytes })
}

fn looks_like_network(source: &str, fstype: Option<&str>) -> bool {
    fstype == Some("nfs") || source.starts_with("nfs://") || (source.contains(":/") && !Path::new(source).exists())
}

fn run() -> Result<(), Fail> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Ok(());
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ");
            return fail(EXIT_USAGE, format!("{first} (try --help)"));
        }
    };
    if cli.list_components {
        list_components();
        return Ok(());
    }
    if let Some(host) = &cli.list_exports {
        init_log(cli.debug);
        return nfs_cli::list_exports(host, &cli.options);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut opts = Options::new(cores);
    for o in &cli.options {
        opts.apply(o).map_err(|e| Fail(EXIT_USAGE, e.0))?;
    }
    if cli.single {
        opts.vcpus = 1;
    }
    let debug = cli.debug || opts.debug;
    let foreground = cli.foreground || debug;
    init_log(debug);
    let (Some(source), Some(mountpoint)) = (cli.source.clone(), cli.mountpoint.clone()) else {
        return fail(EXIT_USAGE, "need a SOURCE and a MOUNTPOINT (try --help)");
    };

    match std::fs::metadata(&mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return fail(EXIT_MOUNT, format!("mountpoint {}: Not a directory", mountpoint.display())),
        Err(e) => return fail(EXIT_MOUNT, format!("mountpoint {}: {}", mountpoint.display(), io_text(&e))),
    }
    let network = looks_like_network(&source, cli.fstype.as_deref());
    poll::configure(opts.spin_for(network));
    if network {
        let mnt = nfs_cli::mount(&source, cli.fstype.as_deref(), &opts)?;
        return serve_mount(mnt, &opts, &source, &mountpoint, foreground);
    }

    let kernel = boot(vec![Faction::Vfs, Faction::Dev], opts.cache_bytes).map_err(|e| Fail(EXIT_MOUNT, e.to_string()))?;
    if let Some(t) = cli.fstype.as_deref() {
        if !kernel.components().iter().any(|c| c.fs_types().contains(&t)) {
            let known: Vec<_> = kernel.components().iter().flat_map(|c| c.fs_types().iter().copied()).collect();
            return fail(EXIT_USAGE, format!("unknown file system type '{t}' (known: {})", known.join(", ")));
        }
    }
    if let Some((k, _)) = opts.driver.first() {
        return fail(EXIT_USAGE, format!("option '{k}' is for NFS mounts, not disk images"));
    }
    let mode = if opts.read_only { OpenMode::ReadOnly } else { OpenMode::ReadWrite };
    let image = match images::open_image(Path::new(&source), mode) {
        // Like mount(8): an image we may not write is mounted read-only, unless rw was asked.
        Err(e) if mode == OpenMode::ReadWrite
            && !opts.explicit_rw
            && (e.errno == vfs_faction::Errno::EACCES || e.errno == vfs_faction::Errno::EROFS) =>
        {
            eprintln!("rumpfs-mount: warning: {source} is write-protected, mounting read-only");
            opts.read_only = true;
            images::open_image(Path::new(&source), OpenMode::ReadOnly)
        }
        r => r,
    }
    .map_err(|e| Fail(EXIT_MOUNT, e.to_string()))?;
    let probe = |d: &dyn vfs_faction::BlockDevice| kernel.probe(d).map(|(_, t)| t);
    let (dev, part) =
        images::select(image, opts.partition.as_deref(), &probe).map_err(|e| Fail(EXIT_MOUNT, e.to_string()))?;
    let source_name = match &part {
        Some(p) => format!("{source} partition {}", p.index),
        None => source.clone(),
    };
    let mopts = MountOptions { read_only: opts.read_only, explicit_rw: opts.explicit_rw, extra: opts.driver.clone() };
    let mnt = kernel
        .mount(cli.fstype.as_deref(), MountSource::Block(dev), &source_name, &mopts)
        .map_err(|e| Fail(EXIT_MOUNT, format!("{source_name}: {e}")))?;
    for w in mnt.warnings() {
        eprintln!("rumpfs-mount: warning: {w}");
    }
    log::info!("{source_name}: {} mounted{}", mnt.fstype(), if mnt.read_only() { " read-only" } else { "" });
    serve_mount(mnt, &opts, &source, &mountpoint, foreground)
}

/// Serves a mounted file system through FUSE (in the background unless `foreground`).
fn serve_mount(
    mnt: Arc<vfs_faction::Mount>,
    opts: &Options,
    source: &str,
    mountpoint: &Path,
    foreground: bool,
) -> Result<(), Fail> {
    let (opts, source) = (opts.clone(), source.to_string());
    let config = fuse_config(&opts, &source, mnt.read_only());
    let bridge = bridge::Bridge::new(mnt.clone());

    let how = MountHow { fsname: fsname(&opts, &source), opts: opts.clone(), read_only: mnt.read_only() };
    if foreground {
        let session = open_session(bridge, &mountpoint, &config, &how)
            .map_err(|e| Fail(EXIT_MOUNT, mount_error(&mountpoint, &e)))?;
        serve(session, mnt)
    } else {
        daemonize_and_serve(bridge, &mountpoint, &config, &how, mnt)
    }
}

fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => vfs_faction::Errno::from_code(code).description().to_string(),
        None => e.to_string(),
    }
}

fn mount_error(mountpoint: &Path, e: &std::io::Error) -> String {
    if !Path::new("/dev/fuse").exists() {
        return "/dev/fuse is not available (is the fuse kernel module loaded?)".into();
    }
    format!("cannot mount on {}: {}", mountpoint.display(), e)
}

fn fsname(opts: &Options, source: &str) -> String {
    opts.fsname.clone().unwrap_or_else(|| {
        std::fs::canonicalize(source).map(|p| p.display().to_string()).unwrap_or_else(|_| source.to_string())
    })
}

fn subtype(opts: &Options) -> String {
    opts.subtype.clone().unwrap_or_else(|| "rumpfs-mount".into())
}

/// What the FUSE mount itself needs to know.
struct MountHow {
    fsname: String,
    opts: Options,
    read_only: bool,
}

/// How to end the FUSE mount on a signal.
enum Unmounter {
    /// Through fuser (fusermount3 for ordinary users).
    Fuser(fuser::SessionUnmounter),
    /// Our own mount(2) as root: umount2 with MNT_DETACH, as `umount -l` does.
    Direct(PathBuf),
}

impl Unmounter {
    fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Fuser(u) => u.unmount(),
            Unmounter::Direct(p) => {
                nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
            }
        }
    }
}

/// Mounts the FUSE file system. As root we call mount(2) ourselves so that the type shows as
/// `fuse.SUBTYPE` in /proc/mounts, as mount.fuse3 and fstab expect; otherwise (and for
/// `auto_unmount`) fuser goes through fusermount3, which does the same.
fn open_session(
    bridge: bridge::Bridge,
    mountpoint: &Path,
    config: &fuser::Config,
    how: &MountHow,
) -> std::io::Result<(fuser::Session<bridge::Bridge>, Unmounter)> {
    if nix::unistd::geteuid().is_root() && !how.opts.auto_unmount {
        use nix::fcntl::OFlag;
        use nix::mount::MsFlags;
        let fd = nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut data = format!("fd={},rootmode=40000,user_id=0,group_id=0", fd.as_raw_fd());
        if how.opts.allow_other || how.opts.allow_root {
            data.push_str(",allow_other");
        }
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if how.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let fstype = format!("fuse.{}", subtype(&how.opts));
        nix::mount::mount(Some(how.fsname.as_str()), mountpoint, Some(fstype.as_str()), flags, Some(data.as_str()))
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        let target = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
        return match fuser::Session::from_fd(bridge, fd, config.acl, config.clone()) {
            Ok(s) => {
                // After the INIT exchange (done by now), which would lower it again.
                raise_readahead(&target);
                Ok((s, Unmounter::Direct(target)))
            }
            Err(e) => {
                let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
                Err(e)
            }
        };
    }
    let mut s = fuser::Session::new(bridge, mountpoint, config)?;
    let u = s.unmount_callable();
    Ok((s, Unmounter::Fuser(u)))
}

/// The kernel gives a FUSE mount 128 KiB of read-ahead whatever the server asks for (its
/// `max_readahead` only lowers it), so a sequential read reaches us as 128 KiB requests, each
/// a round trip. Root may raise it to what we told the kernel we take (1 MiB requests) for
/// this mount alone, through its backing device in /sys/class/bdi; an ordinary user cannot,
/// and then nothing changes. Best effort: a failure is logged, never fatal.
fn raise_readahead(target: &Path) {
    // From /proc/self/mountinfo, not stat(2): the mount cannot answer before its session runs.
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let want = target.as_os_str().as_encoded_bytes();
    let dev = info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && unescape_mountinfo(f[4]) == want).then(|| f[2].to_string())
    });
    let Some(dev) = dev else { return };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, format!("{}\n", bridge::MAX_READ / 1024)) {
        log::info!("{path}: {e}; read-ahead stays at the kernel's default");
    }
}

/// A mountinfo path field: space, tab, newline and backslash come as `\ooo` octal escapes.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn fuse_config(opts: &Options, source: &str, read_only: bool) -> fuser::Config {
    use fuser::MountOption as M;
    let mut mo = vec![M::FSName(fsname(opts, source)), M::Subtype(subtype(opts))];
    mo.push(if read_only { M::RO } else { M::RW });
    if opts.auto_unmount {
        mo.push(M::AutoUnmount);
    }
    let mut c = fuser::Config::default();
    c.mount_options = mo;
    c.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    c.n_threads = Some(opts.vcpus);
    c.clone_fd = true;
    c
}

/// Serves until unmounted (umount, fusermount3 -u) or SIGINT/SIGTERM/SIGHUP, which unmount.
fn serve(
    (session, mut unmounter): (fuser::Session<bridge::Bridge>, Unmounter),
    mnt: Arc<vfs_faction::Mount>,
) -> Result<(), Fail> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    // Blocked here, so the FUSE worker threads inherit the mask and only sigwait sees them.
    let _ = signals.thread_block();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                log::info!("{sig}: unmounting");
                if let Err(e) = unmounter.unmount() {
                    log::error!("unmount after {sig}: {e}");
                }
            }
        })
        .map_err(|e| Fail(EXIT_MOUNT, format!("cannot start the signal thread: {e}")))?;
    let r = session.run();
    // `destroy` has flushed and unmounted the file system in the kernel; make sure even when
    // the FUSE connection ended abnormally.
    let _ = mnt.unmount();
    r.map_err(|e| Fail(EXIT_MOUNT, format!("FUSE session ended: {e}")))
}

fn daemonize_and_serve(
    bridge: bridge::Bridge,
    mountpoint: &Path,
    config: &fuser::Config,
    how: &MountHow,
    mnt: Arc<vfs_faction::Mount>,
) -> Result<(), Fail> {
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(|e| Fail(EXIT_MOUNT, format!("pipe: {e}")))?;
    // SAFETY: no other thread exists yet in this process (the kernel starts none at mount
    // and the FUSE workers start after the fork), so the child may run arbitrary code.
    match unsafe { fork() } {
        Err(e) => fail(EXIT_MOUNT, format!("fork: {e}")),
        Ok(ForkResult::Parent { .. }) => {
            // The child serves the mount; this copy of it must not be unmounted here (dropping
            // it would write the superblock back as cleanly unmounted under the child).
            std::mem::forget(bridge);
            std::mem::forget(mnt);
            drop(wr);
            let mut msg = Vec::new();
            let _ = std::fs::File::from(rd).read_to_end(&mut msg);
            match msg.split_first() {
                Some((0, _)) => Ok(()),
                Some((_, text)) => fail(EXIT_MOUNT, String::from_utf8_lossy(text).into_owned()),
                None => fail(EXIT_MOUNT, "the file system server exited before the mount was ready"),
            }
        }
        Ok(ForkResult::Child) => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let mut status = std::fs::File::from(wr);
            let session = match open_session(bridge, mountpoint, config, how) {
                Ok(s) => s,
                Err(e) => {
                    let _ = status.write_all(&[1]);
                    let _ = status.write_all(mount_error(mountpoint, &e).as_bytes());
                    std::process::exit(EXIT_MOUNT);
                }
            };
            let _ = status.write_all(&[0]);
            drop(status);
            detach_stdio();
            match serve(session, mnt) {
                Ok(()) => std::process::exit(0),
                Err(Fail(code, msg)) => {
                    log::error!("{msg}");
                    std::process::exit(code)
                }
            }
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null, as a daemon does, so that whoever started
/// us is not kept waiting on our output.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/mnt/plain"), b"/mnt/plain");
        assert_eq!(unescape_mountinfo("/mnt/with\\040space\\011tab\\134"), b"/mnt/with space\ttab\\");
        // Not an escape: left as it is.
        assert_eq!(unescape_mountinfo("/a\\9x\\04"), b"/a\\9x\\04");
    }
}
