//! Byte order of an FFS image: a runtime value, found from the superblock magic (NetBSD's
//! `ffs_bswap.c` does the same: it detects the byte-swapped magic and swaps every field).
//!
//! Reads at an offset past the end of the slice give 0 and writes there do nothing: callers
//! check record lengths before they read fields, so this only keeps a bug from panicking.

/// The byte order of every multi-byte field of one file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
        let s = b.get(off..off.checked_add(N)?)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }

    pub fn u16(self, b: &[u8], off: usize) -> u16 {
        Self::get::<2>(b, off).map_or(0, |a| match self {
            ByteOrder::Little => u16::from_le_bytes(a),
            ByteOrder::Big => u16::from_be_bytes(a),
        })
    }

    pub fn u32(self, b: &[u8], off: usize) -> u32 {
        Self::get::<4>(b, off).map_or(0, |a| match self {
            ByteOrder::Little => u32::from_le_bytes(a),
            ByteOrder::Big => u32::from_be_bytes(a),
        })
    }

    pub fn u64(self, b: &[u8], off: usize) -> u64 {
        Self::get::<8>(b, off).map_or(0, |a| match self {
            ByteOrder::Little => u64::from_le_bytes(a),
            ByteOrder::Big => u64::from_be_bytes(a),
        })
    }

    pub fn i32(self, b: &[u8], off: usize) -> i32 {
        self.u32(b, off) as i32
    }

    pub fn i64(self, b: &[u8], off: usize) -> i64 {
        self.u64(b, off) as i64
    }

    fn put(b: &mut [u8], off: usize, bytes: &[u8]) {
        if let Some(s) = off.checked_add(bytes.len()).and_then(|end| b.get_mut(off..end)) {
            s.copy_from_slice(bytes);
        }
    }

    pub fn put_u16(self, b: &mut [u8], off: usize, v: u16) {
        match self {
            ByteOrder::Little => Self::put(b, off, &v.to_le_bytes()),
            ByteOrder::Big => Self::put(b, off, &v.to_be_bytes()),
        }
    }

    pub fn put_u32(self, b: &mut [u8], off: usize, v: u32) {
        match self {
            ByteOrder::Little => Self::put(b, off, &v.to_le_bytes()),
            ByteOrder::Big => Self::put(b, off, &v.to_be_bytes()),
        }
    }

    pub fn put_u64(self, b: &mut [u8], off: usize, v: u64) {
        match self {
            ByteOrder::Little => Self::put(b, off, &v.to_le_bytes()),
            ByteOrder::Big => Self::put(b, off, &v.to_be_bytes()),
        }
    }

    pub fn put_i32(self, b: &mut [u8], off: usize, v: i32) {
        self.put_u32(b, off, v as u32)
    }

    pub fn put_i64(self, b: &mut [u8], off: usize, v: i64) {
        self.put_u64(b, off, v as u64)
    }

    /// The name for log lines.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Little => "little-endian",
            ByteOrder::Big => "big-endian",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteOrder;

    #[test]
    fn reads_and_writes_both_orders() {
        let mut b = [0u8; 8];
        ByteOrder::Big.put_u32(&mut b, 0, 0x19540119);
        assert_eq!(b[..4], [0x19, 0x54, 0x01, 0x19]);
        assert_eq!(ByteOrder::Little.u32(&b, 0), 0x19015419);
        ByteOrder::Little.put_u64(&mut b, 0, 1);
        assert_eq!(ByteOrder::Little.u64(&b, 0), 1);
        assert_eq!(ByteOrder::Big.u64(&b, 0), 1 << 56);
        // Out of range: 0, no panic.
        assert_eq!(ByteOrder::Little.u32(&b, 6), 0);
        ByteOrder::Little.put_u32(&mut b, usize::MAX - 1, 7);
    }
}
