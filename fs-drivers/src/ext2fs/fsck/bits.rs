//! Bit sets over block and inode numbers: one bit each, so memory stays at
//! `blocks / 8` bytes however the image is used.

/// A fixed-size set of `u64` indices below `len`.
#[derive(Clone, Debug)]
pub struct BitSet {
    words: Vec<u64>,
    len: u64,
}

impl BitSet {
    pub fn new(len: u64) -> BitSet {
        let n = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        BitSet { words: vec![0; n], len }
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] >> (i % 64) & 1 != 0
    }

    /// Sets bit `i`; returns whether it was already set. Out of range: `true` (never stored).
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return true;
        }
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let was = *w & m != 0;
        *w |= m;
        was
    }

    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / 64) as usize] &= !(1u64 << (i % 64));
        }
    }

    /// Set bits in `lo..hi`.
    pub fn count_range(&self, lo: u64, hi: u64) -> u64 {
        let hi = hi.min(self.len);
        let mut n = 0u64;
        let mut i = lo;
        while i < hi {
            if i % 64 == 0 && i + 64 <= hi {
                n += u64::from(self.words[(i / 64) as usize].count_ones());
                i += 64;
            } else {
                n += u64::from(self.get(i));
                i += 1;
            }
        }
        n
    }

    /// The first clear bit in `lo..hi`.
    pub fn first_clear(&self, lo: u64, hi: u64) -> Option<u64> {
        let hi = hi.min(self.len);
        let mut i = lo;
        while i < hi {
            if i % 64 == 0 && i + 64 <= hi && self.words[(i / 64) as usize] == u64::MAX {
                i += 64;
                continue;
            }
            if !self.get(i) {
                return Some(i);
            }
            i += 1;
        }
        None
    }
}

/// Bit `i` of an on-disk bitmap (little-endian bit order, as ext2 stores them).
pub fn disk_bit(bm: &[u8], i: usize) -> bool {
    bm.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 != 0)
}

/// Sets or clears bit `i` of an on-disk bitmap.
pub fn put_disk_bit(bm: &mut [u8], i: usize, v: bool) {
    if let Some(b) = bm.get_mut(i / 8) {
        if v {
            *b |= 1 << (i % 8);
        } else {
            *b &= !(1 << (i % 8));
        }
    }
}

/// `a-b` ranges of a sorted list, as e2fsck prints bitmap differences.
pub fn ranges(v: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() && out.len() < 20 {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}--{}", v[i], v[j]) });
        i = j + 1;
    }
    if i < v.len() {
        out.push("...".into());
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_count_and_first_clear() {
        let mut b = BitSet::new(200);
        assert!(!b.set(3));
        assert!(b.set(3));
        for i in 64..128 {
            b.set(i);
        }
        assert_eq!(b.count_range(0, 200), 65);
        assert_eq!(b.first_clear(64, 200), Some(128));
        assert_eq!(b.first_clear(3, 4), None);
        assert!(b.set(500));
        assert!(!b.get(500));
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1--3 7 9--10");
    }
}
