//! Choosing the partition to mount: `-o partition=N`, or probing.

use crate::error::ImageError;
use crate::slice::Slice;
use crate::table::{read_table, Partition};
use std::sync::Arc;
use vfs_faction::{BlockDevice, Errno};

/// Chooses the device a file system is mounted from.
///
/// `requested` is the `-o partition=` value: a partition number as [`crate::partitions`]
/// numbers them. With one, that partition is returned as a [`Slice`] (error `ENXIO` listing
/// the partitions when there is no such partition or it reaches past the end of the image;
/// `EINVAL` for an MBR extended partition or a value that is not a number).
///
/// Without one: a device with no partition table is returned whole. Otherwise the whole
/// device is tried with `probe` first (a whole-disk file system whose first sector happens to
/// look like an MBR wins); then each partition is probed: exactly one holding a known file
/// system is chosen; none is `ENODEV`, several are `EINVAL`, both with a message listing the
/// partitions.
///
/// `probe` returns the name of the file system on a device (`Some("ext2fs")`), `None` for
/// none it knows; it should read only the first blocks.
pub fn select(
    dev: Arc<dyn BlockDevice>,
    requested: Option<&str>,
    probe: &dyn Fn(&dyn BlockDevice) -> Option<&'static str>,
) -> Result<(Arc<dyn BlockDevice>, Option<Partition>), ImageError> {
    let name = dev.describe();
    let table = read_table(&*dev)?;
    let parts = &table.partitions;

    if let Some(requested) = requested {
        let req = requested.trim();
        let p = find_requested(&name, parts, req)?;
        let n = p.spec();
        if p.holds_label() {
            let inner: Vec<String> =
                parts.iter().filter(|l| l.letter.is_some() && l.slice == Some(p.index)).map(|l| l.to_string()).collect();
            return Err(ImageError::new(
                Errno::EINVAL,
                format!(
                    "{name}: partition {n} is a slice holding a BSD disklabel; choose one of its partitions: {}",
                    if inner.is_empty() { "none".to_string() } else { inner.join(", ") }
                ),
            ));
        }
        if p.is_container() {
            let logicals: Vec<String> = parts
                .iter()
                .filter(|l| !l.is_container() && l.index > 4 && p.start <= l.start && l.end() <= p.end())
                .map(|l| l.to_string())
                .collect();
            let hint = if logicals.is_empty() {
                "it holds no logical partitions".to_string()
            } else {
                format!("choose one of its logical partitions: {}", logicals.join(", "))
            };
            return Err(ImageError::new(
                Errno::EINVAL,
                format!(
                    "{name}: partition {n} is an extended partition (a container, not a file \
                     system); {hint}"
                ),
            ));
        }
        let slice = slice_of(&dev, p)?;
        log::info!("{name}: using partition {p}");
        return Ok((slice, Some(p.clone())));
    }

    if parts.is_empty() {
        return Ok((dev, None));
    }
    if let Some(fs) = probe(&*dev) {
        log::info!(
            "{name}: the whole image holds {fs}; not using its {} partition table",
            table.scheme.map_or_else(|| "(unknown)".to_string(), |s| s.to_string())
        );
        return Ok((dev, None));
    }

    let mut found: Vec<(&Partition, Arc<dyn BlockDevice>, &'static str)> = Vec::new();
    for p in parts.iter().filter(|p| !p.is_container()) {
        let Ok(slice) = slice_of(&dev, p) else {
            continue; // reaches past the end: listed as such below
        };
        if let Some(fs) = probe(&*slice) {
            found.push((p, slice, fs));
        }
    }
    match found.len() {
        1 => {
            let (p, slice, fs) = found.remove(0);
            log::info!("{name}: using partition {p}, which holds {fs}");
            Ok((slice, Some(p.clone())))
        }
        0 => Err(ImageError::new(
            Errno::ENODEV,
            format!(
                "{name}: no partition holds a file system this kernel knows; partitions: {}",
                list_with_bounds(parts, dev.size())
            ),
        )),
        _ => {
            let names: Vec<String> =
                found.iter().map(|(p, _, fs)| format!("{fs} in {p}")).collect();
            Err(ImageError::new(
                Errno::EINVAL,
                format!(
                    "{name}: several partitions hold a file system: {}; choose one with \
                     -o partition=N",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// The partition `-o partition=REQ` names: a number, a disklabel letter (`e`) or a slice
/// number and letter (`1e`).
fn find_requested<'a>(name: &str, parts: &'a [Partition], req: &str) -> Result<&'a Partition, ImageError> {
    // Letters name disklabel partitions, so they mean something only where a label is.
    let has_letters = parts.iter().any(|p| p.letter.is_some());
    let letter = req.chars().last().filter(|c| has_letters && c.is_ascii_lowercase());
    let number = req.parse::<u32>().ok().filter(|&n| n > 0);
    if number.is_none() && letter.is_none() {
        return Err(ImageError::new(
            Errno::EINVAL,
            format!("{name}: partition={req} is not a partition number or disklabel letter{}", listing(parts, "; partitions: ")),
        ));
    }
    if parts.is_empty() {
        return Err(ImageError::new(
            Errno::ENXIO,
            format!(
                "{name} has no partition table, so no partition {req}; \
                 leave out -o partition to use the whole image"
            ),
        ));
    }
    let found: Vec<&Partition> = match (number, letter) {
        (Some(n), _) => parts.iter().filter(|p| p.index == n).collect(),
        (None, Some(l)) => {
            let slice = &req[..req.len() - 1];
            if slice.is_empty() {
                parts.iter().filter(|p| p.letter == Some(l)).collect()
            } else {
                let s: Option<u32> = slice.parse().ok();
                parts.iter().filter(|p| p.letter == Some(l) && s.is_some() && p.slice == s).collect()
            }
        }
        (None, None) => Vec::new(),
    };
    match found.as_slice() {
        [p] => Ok(p),
        [] => Err(ImageError::new(Errno::ENXIO, format!("{name} has no partition {req}; partitions: {}", list(parts)))),
        several => Err(ImageError::new(
            Errno::EINVAL,
            format!(
                "{name}: partition={req} is ambiguous ({}); name the slice too, e.g. partition={}",
                several.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                several[0].spec()
            ),
        )),
    }
}

/// The partition as a slice of `dev`, labelled `partition N`.
fn slice_of(dev: &Arc<dyn BlockDevice>, p: &Partition) -> Result<Arc<dyn BlockDevice>, ImageError> {
    match Slice::new(Arc::clone(dev), p.start, p.size) {
        Ok(s) => Ok(Arc::new(s.with_label(format!("partition {}", p.spec())))),
        Err(e) => Err(ImageError::new(
            e.errno,
            format!(
                "{}: partition {p} reaches past the end of the image ({}); is the image \
                 truncated?",
                dev.describe(),
                crate::human_size(dev.size())
            ),
        )),
    }
}

/// `1 (Linux, 1.0 MiB..9.0 MiB), 2 (...)`, or `none`.
fn list(parts: &[Partition]) -> String {
    if parts.is_empty() {
        return "none".to_string();
    }
    parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// `prefix` and the list, or nothing when there are no partitions.
fn listing(parts: &[Partition], prefix: &str) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("{prefix}{}", list(parts))
    }
}

/// Like [`list`], marking partitions that do not fit in the device.
fn list_with_bounds(parts: &[Partition], size: u64) -> String {
    parts
        .iter()
        .map(|p| {
            if p.end() > size {
                format!("{p} [past the end of the image]")
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
