//! XDR (RFC 4506): the encoding of every ONC RPC, MOUNT and NFS message.
//!
//! [`Enc`] appends to a buffer; [`Dec`] is a checked cursor over received bytes: every read is
//! bounds-checked, every variable length is compared with its limit *before* anything is
//! allocated, and a short or malformed message is [`Errno::EIO`] (with a log line), never a
//! panic.

use vfs_faction::{Errno, KResult};

/// Largest opaque or string we ever accept from a peer, whatever the field's own limit.
pub const MAX_OPAQUE: usize = 4 << 20;

/// Encoder: appends XDR items to a byte buffer.
#[derive(Default, Debug, Clone)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Enc {
        Enc { buf: Vec::with_capacity(256) }
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }

    fn pad(&mut self, len: usize) {
        let p = (4 - len % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..p]);
    }

    /// Fixed-length opaque (`opaque x[N]`): the bytes and padding, no length.
    pub fn fixed(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.pad(data.len());
        self
    }

    /// Variable-length opaque or string (`opaque x<>`): length, bytes, padding.
    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        // Callers bound their data (names, handles, at most wsize bytes of file data).
        self.u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        self.fixed(data)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Decoder: a checked cursor over an XDR message.
#[derive(Debug, Clone)]
pub struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
}

/// A malformed message: logged once here, `EIO` to the caller.
pub fn malformed(what: &str) -> Errno {
    log::warn!("nfs: malformed XDR: {what}");
    Errno::EIO
}

impl<'a> Dec<'a> {
    pub fn new(data: &'a [u8]) -> Dec<'a> {
        Dec { data, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The unread rest.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    fn take(&mut self, n: usize, what: &str) -> KResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| malformed(what))?;
        let s = self.data.get(self.pos..end).ok_or_else(|| malformed(what))?;
        self.pos = end;
        Ok(s)
    }

    pub fn u32(&mut self) -> KResult<u32> {
        let b = self.take(4, "truncated u32")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> KResult<u64> {
        let b = self.take(8, "truncated u64")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// An XDR bool: exactly 0 or 1.
    pub fn bool(&mut self) -> KResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(malformed(&format!("bool of value {v}"))),
        }
    }

    fn skip_pad(&mut self, len: usize) -> KResult<()> {
        let p = (4 - len % 4) % 4;
        self.take(p, "truncated padding").map(|_| ())
    }

    /// Fixed-length opaque of `n` bytes.
    pub fn fixed(&mut self, n: usize) -> KResult<&'a [u8]> {
        let s = self.take(n, "truncated fixed opaque")?;
        self.skip_pad(n)?;
        Ok(s)
    }

    /// An 8-byte fixed opaque (verifiers).
    pub fn verf(&mut self) -> KResult<[u8; 8]> {
        let s = self.fixed(8)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(s);
        Ok(v)
    }

    /// Variable-length opaque of at most `max` bytes (checked before anything is taken).
    pub fn opaque(&mut self, max: usize) -> KResult<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max.min(MAX_OPAQUE) {
            return Err(malformed(&format!("length {n} over the limit {max}")));
        }
        if n > self.remaining() {
            return Err(malformed(&format!("length {n} past the end of the message")));
        }
        self.fixed(n)
    }

    /// Everything must have been read (trailing garbage is tolerated but logged at debug).
    pub fn done(&self) {
        if self.remaining() != 0 {
            log::debug!("nfs: {} trailing bytes in a reply", self.remaining());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Enc::new();
        e.u32(7).u64(0x0102_0304_0506_0708).bool(true).opaque(b"abcde").fixed(&[9; 8]);
        assert_eq!(e.len(), 4 + 8 + 4 + 4 + 8 + 8);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u32().unwrap(), 7);
        assert_eq!(d.u64().unwrap(), 0x0102_0304_0506_0708);
        assert!(d.bool().unwrap());
        assert_eq!(d.opaque(16).unwrap(), b"abcde");
        assert_eq!(d.verf().unwrap(), [9; 8]);
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        // Truncated everywhere.
        let mut e = Enc::new();
        e.u32(1).opaque(b"hello world").u64(5);
        for cut in 0..e.buf.len() {
            let mut d = Dec::new(&e.buf[..cut]);
            let r = d.u32().and_then(|_| d.opaque(64).map(|_| ())).and_then(|_| d.u64().map(|_| ()));
            assert_eq!(r, Err(Errno::EIO), "cut at {cut}");
        }
        // A length over the field's limit, and one past the end, allocate nothing.
        let mut d = Dec::new(&[0, 0, 0, 9, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', 0, 0, 0]);
        assert_eq!(d.opaque(8), Err(Errno::EIO));
        let mut d = Dec::new(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(d.opaque(usize::MAX), Err(Errno::EIO));
        let mut d = Dec::new(&[0, 0, 0, 2]);
        assert_eq!(d.bool(), Err(Errno::EIO));
    }
}
