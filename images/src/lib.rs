//! Disk images served as block devices on the host.
//!
//! This is host code: it implements the kernel's [`vfs_faction::BlockDevice`] hypercall on
//! top of `std::fs` and `libc`, the way NetBSD's `rumpblk` serves image files to a rump kernel.
//!
//! - [`open_image`] opens an image file (or a host block device) read-only or read-write and
//!   locks it with `flock(2)`, so that two writers never share an image: a read-write open
//!   takes an exclusive lock, a read-only open a shared one.
//! - [`Slice`] is a bounds-checked window of another block device (one partition).
//! - [`partitions`] / [`read_table`] parse an MBR (with extended partitions) or a GPT.
//!   Every on-disk value is checked; a damaged table becomes an error or a warning, never a
//!   panic or an endless loop.
//! - BSD disklabels (whole disk, or in an MBR slice of type 0xA9, 0xA5 or 0xA6) add
//!   partitions named by letter.
//! - [`select`] turns `-o partition=N` (or its absence, by probing) into the device a file
//!   system driver mounts.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod disklabel;
mod error;
mod gpt;
mod image;
mod mbr;
mod select;
mod slice;
mod table;

pub use error::ImageError;
pub use image::{open_image, ImageFile};
pub use select::select;
pub use slice::Slice;
pub use table::{partitions, problems, read_table, Partition, PartitionTable, Scheme};

/// Formats a byte count for people: `512 B`, `4.0 KiB`, `1.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision loss is fine for display.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(9 << 20), "9.0 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }
}
