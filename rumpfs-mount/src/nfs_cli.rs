//! The NFS front end of the CLI: NFS source syntax (`host:/export/path`,
//! `nfs://host[:port]/path`, `[::1]:/path`), booting a kernel with the vfs and net factions,
//! mounting `MountSource::Network`, and `--list-exports HOST` (like showmount -e).

use crate::options::Options;
use crate::{fail, Fail, EXIT_MOUNT, EXIT_USAGE};
use std::sync::Arc;
use vfs_faction::{Faction, Mount, MountOptions, MountSource};

/// An NFS source, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsSource {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// NFS port from an `nfs://host:port/` URL.
    pub port: Option<u16>,
    /// Exported path on the server (absolute).
    pub path: String,
}

/// Parses `host:/path`, `[v6addr]:/path` or `nfs://host[:port]/path` (`nfs://[v6]:port/path`).
pub fn parse_source(s: &str) -> Result<NfsSource, String> {
    let bad = |why: &str| Err(format!("{s}: {why} (expected host:/export/path or nfs://host[:port]/path)"));
    if let Some(rest) = s.strip_prefix("nfs://") {
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let Some(end) = h.find(']') else { return bad("unclosed '['") };
            let after = &h[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return bad("junk after ']'"),
            };
            (&h[..end], port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s}: bad port '{p}'"))?),
            None => None,
        };
        if host.is_empty() {
            return bad("no host");
        }
        return Ok(NfsSource { host: host.to_string(), port, path: percent_decode(path) });
    }
    let (host, path) = if let Some(h) = s.strip_prefix('[') {
        let Some(end) = h.find("]:") else { return bad("an IPv6 address needs the form [addr]:/path") };
        (&h[..end], &h[end + 2..])
    } else {
        match s.find(":/") {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => return bad("no ':/'"),
        }
    };
    if host.is_empty() {
        return bad("no host");
    }
    if !path.starts_with('/') {
        return bad("the export path must be absolute");
    }
    Ok(NfsSource { host: host.to_string(), port: None, path: path.to_string() })
}

fn percent_decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user running us, as the driver's default identity (`uid:gid:groups`).
fn caller() -> String {
    let mut s = format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid());
    if let Ok(groups) = nix::unistd::getgroups() {
        for g in groups.iter().take(16) {
            s.push_str(&format!(":{g}"));
        }
    }
    s
}

/// Mounts an NFS source in a kernel booted with the vfs and net factions.
pub fn mount(source: &str, fstype: Option<&str>, opts: &Options) -> Result<Arc<Mount>, Fail> {
    if let Some(t) = fstype {
        if t != "nfs" && t != "nfs3" {
            return fail(EXIT_USAGE, format!("{source}: looks like an NFS share, but -t {t} was given"));
        }
    }
    let src = parse_source(source).map_err(|e| Fail(EXIT_USAGE, e))?;
    let kernel = crate::boot(vec![Faction::Vfs, Faction::Net], opts.cache_bytes).map_err(|e| Fail(EXIT_MOUNT, e.to_string()))?;
    let mut extra = opts.driver.clone();
    if let Some(p) = src.port {
        extra.insert(0, ("port".into(), Some(p.to_string())));
    }
    extra.push((fs_drivers::nfs::CALLER_OPTION.into(), Some(caller())));
    let mopts = MountOptions { read_only: opts.read_only, explicit_rw: opts.explicit_rw, extra };
    let name = format!("{}:{}", if src.host.contains(':') { format!("[{}]", src.host) } else { src.host.clone() }, src.path);
    let mnt = kernel
        .mount(Some("nfs"), MountSource::Network { host: src.host.clone(), path: src.path.clone() }, &name, &mopts)
        .map_err(|e| Fail(EXIT_MOUNT, if e.message.starts_with(&src.host) || e.message.starts_with(&name) { e.message.clone() } else { format!("{name}: {e}") }))?;
    log::info!("{name}: nfs mounted{}", if mnt.read_only() { " read-only" } else { "" });
    Ok(mnt)
}

/// `--list-exports HOST`: prints the server's exports like `showmount -e`.
pub fn list_exports(host: &str, options: &[String]) -> Result<(), Fail> {
    let cores = 1;
    let mut opts = Options::new(cores);
    for o in options {
        opts.apply(o).map_err(|e| Fail(EXIT_USAGE, e.0))?;
    }
    let mountport = opts.driver.iter().rev().find(|(k, _)| k == "mountport").and_then(|(_, v)| v.as_deref()?.parse().ok());
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let hyper = crate::host::HostPlatform::new();
    let exports = fs_drivers::nfs::list_exports(&hyper, host, mountport).map_err(|e| Fail(EXIT_MOUNT, e.message))?;
    println!("Export list for {host}:");
    let width = exports.iter().map(|e| e.dir.len()).max().unwrap_or(0);
    for e in exports {
        let groups = if e.groups.is_empty() { "(everyone)".to_string() } else { e.groups.join(",") };
        println!("{:<width$} {groups}", e.dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(host: &str, port: Option<u16>, path: &str) -> NfsSource {
        NfsSource { host: host.into(), port, path: path.into() }
    }

    #[test]
    fn source_forms() {
        assert_eq!(parse_source("fileserver:/export/home").unwrap(), src("fileserver", None, "/export/home"));
        assert_eq!(parse_source("127.0.0.1:/").unwrap(), src("127.0.0.1", None, "/"));
        assert_eq!(parse_source("[::1]:/srv/x").unwrap(), src("::1", None, "/srv/x"));
        assert_eq!(parse_source("nfs://fileserver/export/home").unwrap(), src("fileserver", None, "/export/home"));
        assert_eq!(parse_source("nfs://h:2050/e").unwrap(), src("h", Some(2050), "/e"));
        assert_eq!(parse_source("nfs://[::1]:2049/a%20b").unwrap(), src("::1", Some(2049), "/a b"));
        assert_eq!(parse_source("nfs://[::1]/a").unwrap(), src("::1", None, "/a"));
        assert_eq!(parse_source("nfs://h").unwrap(), src("h", None, "/"));
        for bad in ["nfs://", "nfs://h:0/x", "nfs://h:x/y", ":/x", "[::1/x", "host/x", "nfs://[::1/x"] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }
}
