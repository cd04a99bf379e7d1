//! The error of this crate: an errno for the kernel plus one line for the user.

use std::fmt;
use vfs_faction::Errno;

/// An error opening an image or finding a partition in it.
///
/// `errno` is what a hypercall returns to the kernel; `message` is one complete line for the
/// user, naming the image (`disk.img: No such file or directory`). `Display` prints the
/// message alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageError {
    /// The errno this error maps to.
    pub errno: Errno,
    /// One clear line for the user.
    pub message: String,
}

impl ImageError {
    /// An error with `errno` and `message`.
    pub fn new(errno: Errno, message: impl Into<String>) -> ImageError {
        ImageError { errno, message: message.into() }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ImageError {}

impl From<ImageError> for Errno {
    fn from(e: ImageError) -> Errno {
        e.errno
    }
}
