//! `-o` option parsing, as mount(8) and fstab pass them.

use std::fmt;

/// Options after parsing every `-o` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub read_only: bool,
    /// `rw` was given explicitly.
    pub explicit_rw: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub auto_unmount: bool,
    pub vcpus: usize,
    /// How long a FUSE worker polls for the next request after one (zero: never); `None`:
    /// the default for the kind of mount, see [`Options::spin_for`].
    pub spin: Option<std::time::Duration>,
    cores: usize,
    pub cache_bytes: usize,
    pub partition: Option<String>,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    pub debug: bool,
    /// Options handed to the driver unchanged (the NFS client's).
    pub driver: Vec<(String, Option<String>)>,
}

/// A bad `-o` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Generic mount(8)/fstab options that mean nothing to a FUSE server; accepted and ignored.
const IGNORED: &[&str] = &[
    "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail", "_netdev",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime", "diratime",
    "nodiratime", "sync", "async", "dirsync", "loud", "silent", "nosymfollow",
];

/// NFS client options with a value, handed to the nfs driver.
const NFS_VALUED: &[&str] = &[
    "port", "mountport", "uid", "gid", "timeo", "retrans", "actimeo", "acregmin", "acregmax", "acdirmin",
    "acdirmax", "rsize", "wsize", "nfsvers", "vers", "proto",
];
/// NFS client flags, handed to the nfs driver.
const NFS_FLAGS: &[&str] = &["soft", "hard", "resvport", "noresvport", "noac"];

/// How long a worker polls /dev/fuse after a request by default (see poll.rs): longer than
/// the gap between the requests of one busy program, short enough that an idle mount stops
/// at once.
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(300);

/// Parses a size such as `64M`, `1G`, `512K`, `1048576` or `2MiB` into bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..digits].parse().ok()?;
    let mult: usize = match s[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Options {
    /// Defaults: read-write (drivers that cannot write mount read-only with a warning),
    /// `vcpus` = `cores`, 64 MiB of buffer cache.
    pub fn new(cores: usize) -> Options {
        Options {
            read_only: false,
            explicit_rw: false,
            allow_other: false,
            allow_root: false,
            auto_unmount: false,
            vcpus: cores.max(1),
            spin: None,
            cores,
            cache_bytes: vfs_faction::kernel::DEFAULT_CACHE_BYTES,
            partition: None,
            fsname: None,
            subtype: None,
            debug: false,
            driver: Vec::new(),
        }
    }

    /// How long to poll after a request: as given, else [`DEFAULT_SPIN`] for a disk image on
    /// a machine with more than one core. Never by default for a network mount: there the
    /// round trip to the server dwarfs the wakeup, and a poller would only take CPU (from
    /// the server itself when it runs on the same machine).
    pub fn spin_for(&self, network: bool) -> std::time::Duration {
        self.spin.unwrap_or(if self.cores > 1 && !network { DEFAULT_SPIN } else { std::time::Duration::ZERO })
    }

    /// Applies one comma-separated `-o` list.
    pub fn apply(&mut self, list: &str) -> Result<(), OptionError> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, OptionError> {
                v.filter(|v| !v.is_empty())
                    .ok_or_else(|| OptionError(format!("option '{key}' needs a value ({key}=...)")))
            }
            let flag = |v: Option<&str>| match v {
                None => Ok(()),
                Some(_) => Err(OptionError(format!("option '{key}' takes no value"))),
            };
            match key {
                "ro" => {
                    flag(val)?;
                    self.read_only = true;
                    self.explicit_rw = false;
                }
                "rw" => {
                    flag(val)?;
                    self.read_only = false;
                    self.explicit_rw = true;
                }
                "allow_other" => {
                    flag(val)?;
                    self.allow_other = true;
                }
                "allow_root" => {
                    flag(val)?;
                    self.allow_root = true;
                }
                "auto_unmount" => {
                    flag(val)?;
                    self.auto_unmount = true;
                }
                "debug" => {
                    flag(val)?;
                    self.debug = true;
                }
                "default_permissions" => {
                    // Permission checks are always done, in the kernel.
                    flag(val)?;
                }
                "vcpus" => {
                    let v = need(key, val)?;
                    self.vcpus = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| OptionError(format!("vcpus={v}: need a number from 1 to 256")))?;
                }
                "spin" => {
                    let v = need(key, val)?;
                    let us: u64 = v
                        .parse()
                        .ok()
                        .filter(|n| *n <= 1_000_000)
                        .ok_or_else(|| OptionError(format!("spin={v}: need microseconds from 0 (never) to 1000000")))?;
                    self.spin = Some(std::time::Duration::from_micros(us));
                }
                "cache" => {
                    let v = need(key, val)?;
                    self.cache_bytes = parse_size(v)
                        .filter(|&n| n >= 64 << 10)
                        .ok_or_else(|| OptionError(format!("cache={v}: need a size of at least 64K (e.g. 64M, 1G)")))?;
                }
                "partition" => self.partition = Some(need(key, val)?.to_string()),
                "fsname" => self.fsname = Some(need(key, val)?.to_string()),
                "subtype" => self.subtype = Some(need(key, val)?.to_string()),
                "comment" => {}
                k if k.starts_with("x-") => {}
                k if IGNORED.contains(&k) => {}
                k if NFS_VALUED.contains(&k) => self.driver.push((k.to_string(), Some(need(key, val)?.to_string()))),
                k if NFS_FLAGS.contains(&k) => {
                    flag(val)?;
                    self.driver.push((k.to_string(), None));
                }
                _ => return Err(OptionError(format!("unknown option '{opt}'"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
    }

    #[test]
    fn fstab_style_lists() {
        let mut o = Options::new(2);
        assert!(!o.read_only && !o.explicit_rw, "read-write by default, not explicitly");
        o.apply("ro,nosuid,nodev,noauto,x-systemd.automount,partition=2,allow_other,cache=128M,vcpus=1").unwrap();
        assert!(o.read_only && o.allow_other && !o.explicit_rw);
        assert_eq!(o.partition.as_deref(), Some("2"));
        assert_eq!((o.cache_bytes, o.vcpus), (128 << 20, 1));
        o.apply("rw").unwrap();
        assert!(!o.read_only && o.explicit_rw);
        assert_eq!(o.spin_for(false), DEFAULT_SPIN, "polls by default for an image on two cores");
        assert!(o.spin_for(true).is_zero(), "not for a network mount");
        assert!(Options::new(1).spin_for(false).is_zero(), "never on one core");
        o.apply("spin=0").unwrap();
        assert!(o.spin_for(false).is_zero());
        o.apply("spin=1500").unwrap();
        assert_eq!(o.spin_for(true), std::time::Duration::from_micros(1500), "given, it holds for any mount");
    }

    #[test]
    fn nfs_options_reach_the_driver() {
        let mut o = Options::new(2);
        o.apply("rw,port=2049,mountport=20048,soft,timeo=10,retrans=2,uid=1000,gid=100,actimeo=0,rsize=65536,nfsvers=3,proto=tcp,resvport").unwrap();
        let keys: Vec<&str> = o.driver.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["port", "mountport", "soft", "timeo", "retrans", "uid", "gid", "actimeo", "rsize", "nfsvers", "proto", "resvport"]);
        assert_eq!(o.driver[0].1.as_deref(), Some("2049"));
        assert!(o.apply("soft=1").is_err());
        assert!(o.apply("port=").is_err());
    }

    #[test]
    fn bad_options_are_named() {
        let mut o = Options::new(2);
        assert_eq!(o.apply("frobnicate").unwrap_err().0, "unknown option 'frobnicate'");
        assert!(o.apply("vcpus=0").is_err());
        assert!(o.apply("vcpus=x").is_err());
        assert!(o.apply("spin=-1").is_err() && o.apply("spin=2000000").is_err() && o.apply("spin").is_err());
        assert!(o.apply("cache=1K").is_err());
        o.apply("cache=512K").unwrap();
        assert_eq!(o.cache_bytes, 512 << 10);
        assert!(o.apply("partition=").is_err());
        assert!(o.apply("ro=1").is_err());
    }
}
