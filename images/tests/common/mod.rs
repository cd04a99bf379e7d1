//! Helpers shared by the integration tests: temporary directories, running the real tools
//! (sfdisk, sgdisk, mke2fs, dd) that make and judge the images.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use vfs_faction::BlockDevice;

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("images-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd args`, feeding `stdin`, and returns its stdout; panics (with stderr) on failure.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A zero-filled (sparse) image of `mib` MiB.
pub fn blank_image(dir: &TempDir, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path
}

/// Partitions `img` with an sfdisk script.
pub fn sfdisk(img: &Path, script: &str) {
    run("sfdisk", &["-q", "--no-reread", "--no-tell-kernel", img.to_str().unwrap()], Some(script));
}

/// One line of `sfdisk --dump`, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    pub index: u32,
    pub start: u64,
    pub size: u64,
    pub kind: String,
    pub name: Option<String>,
}

/// What sfdisk (the oracle) says the partitions of `img` are.
pub fn sfdisk_dump(img: &Path) -> Vec<Dumped> {
    let text = run("sfdisk", &["--dump", img.to_str().unwrap()], None);
    let mut sector = 512u64;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("sector-size: ") {
            sector = v.trim().parse().unwrap();
        }
        let Some(idx_at) = line.find(" : ") else { continue };
        let node = &line[..idx_at];
        let img_str = img.to_str().unwrap();
        let Some(num) = node.strip_prefix(img_str) else { continue };
        let index: u32 = num.trim().parse().unwrap();
        let mut d = Dumped { index, start: 0, size: 0, kind: String::new(), name: None };
        for field in split_fields(&line[idx_at + 3..]) {
            let (k, v) = field.split_once('=').unwrap();
            let v = v.trim();
            match k.trim() {
                "start" => d.start = v.parse::<u64>().unwrap() * sector,
                "size" => d.size = v.parse::<u64>().unwrap() * sector,
                "type" => d.kind = v.to_string(),
                "name" => d.name = Some(unescape(v.trim_matches('"'))),
                _ => {}
            }
        }
        out.push(d);
    }
    out
}

/// Splits `a=1, b="x, y"` at commas outside quotes.
fn split_fields(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c)
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// sfdisk writes non-ASCII name bytes as `\xNN`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Makes an ext4 file system of `kib` KiB in a file of its own and copies it into `img` at
/// byte `offset`.
pub fn put_ext4(dir: &TempDir, img: &Path, offset: u64, kib: u64) {
    let fs = dir.join(&format!("fs-{offset}.ext4"));
    run(
        "mke2fs",
        &["-q", "-F", "-t", "ext4", fs.to_str().unwrap(), &format!("{kib}k")],
        None,
    );
    let data = std::fs::read(&fs).unwrap();
    write_at(img, offset, &data);
    std::fs::remove_file(&fs).unwrap();
}

/// Overwrites bytes of a file in place.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// Reads bytes of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The probe the tests use: ext2/3/4 magic 0xEF53 at byte 1024 + 56.
pub fn ext_probe(dev: &dyn BlockDevice) -> Option<&'static str> {
    let mut magic = [0u8; 2];
    dev.read_at(&mut magic, 1024 + 56).ok()?;
    (u16::from_le_bytes(magic) == 0xEF53).then_some("ext2fs")
}

/// CRC32 (the one GPT uses).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Recomputes the header CRC of the GPT header at byte `off` of `img`.
pub fn fix_gpt_header_crc(img: &Path, off: u64) {
    let mut hdr = read_at(img, off, 92);
    let size = u32::from_le_bytes(hdr[12..16].try_into().unwrap()) as usize;
    assert_eq!(size, 92);
    hdr[16..20].fill(0);
    let crc = crc32(&hdr);
    write_at(img, off + 16, &crc.to_le_bytes());
}
