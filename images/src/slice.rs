//! A window of a block device: one partition.

use crate::error::ImageError;
use crate::human_size;
use std::sync::Arc;
use vfs_faction::{BlockDevice, Errno, KResult};

/// The bytes `start..start + len` of a parent device, as a device of its own.
///
/// The window is checked against the parent when it is made; every request is checked
/// against the window (a request reaching past its end fails with `EIO` and transfers
/// nothing), so a driver can never read or write outside its partition.
pub struct Slice {
    parent: Arc<dyn BlockDevice>,
    start: u64,
    len: u64,
    label: Option<String>,
}

impl std::fmt::Debug for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slice")
            .field("parent", &self.parent.describe())
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

impl Slice {
    /// The window `start..start + len` (bytes) of `parent`.
    ///
    /// Fails with `ENXIO` when the window does not lie within the parent.
    pub fn new(parent: Arc<dyn BlockDevice>, start: u64, len: u64) -> Result<Slice, ImageError> {
        let fits = start.checked_add(len).is_some_and(|end| end <= parent.size());
        if !fits {
            return Err(ImageError::new(
                Errno::ENXIO,
                format!(
                    "{}: bytes {start}..{} reach past the end of the device ({})",
                    parent.describe(),
                    start.saturating_add(len),
                    human_size(parent.size())
                ),
            ));
        }
        Ok(Slice { parent, start, len, label: None })
    }

    /// The same window, described as `PARENT LABEL` (e.g. `disk.img partition 2`).
    pub fn with_label(mut self, label: impl Into<String>) -> Slice {
        self.label = Some(label.into());
        self
    }

    /// Offset of the window in the parent, in bytes.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The device the window is cut from.
    pub fn parent(&self) -> &Arc<dyn BlockDevice> {
        &self.parent
    }

    /// Offset in the parent of `off..off+len`, or `EIO` if it leaves the window.
    fn map(&self, off: u64, len: usize) -> KResult<u64> {
        let end = u64::try_from(len).ok().and_then(|len| off.checked_add(len));
        match end {
            Some(end) if end <= self.len => Ok(self.start + off),
            _ => {
                log::debug!(
                    "{}: request of {len} bytes at {off} reaches past the end ({} bytes)",
                    self.describe(),
                    self.len
                );
                Err(Errno::EIO)
            }
        }
    }
}

impl BlockDevice for Slice {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.parent.read_only()
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> KResult<()> {
        let at = self.map(off, buf.len())?;
        self.parent.read_at(buf, at)
    }

    fn write_at(&self, buf: &[u8], off: u64) -> KResult<()> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        let at = self.map(off, buf.len())?;
        self.parent.write_at(buf, at)
    }

    fn flush(&self) -> KResult<()> {
        self.parent.flush()
    }

    fn will_need(&self, off: u64, len: u64) {
        let len = len.min(self.len.saturating_sub(off));
        if let Ok(at) = self.map(off, usize::try_from(len).unwrap_or(0)) {
            self.parent.will_need(at, len);
        }
    }

    fn describe(&self) -> String {
        match &self.label {
            Some(label) => format!("{} {label}", self.parent.describe()),
            None => format!(
                "{} bytes {}..{}",
                self.parent.describe(),
                self.start,
                self.start + self.len
            ),
        }
    }
}
