//! Protocol-level tests of the RPC layer on recorded byte fixtures, including malformed ones
//! (in memory only: a socket that replays bytes).

use super::rpc::*;
use super::xdr::Enc;
use core::net::SocketAddr;
use core::time::Duration;
use std::sync::Mutex;
use vfs_faction::hypercall::Socket;
use vfs_faction::{Errno, KResult};

/// A socket that returns recorded bytes in small pieces, then end of stream.
struct Replay {
    data: Mutex<(Vec<u8>, usize)>,
    piece: usize,
}

impl Replay {
    fn new(data: Vec<u8>, piece: usize) -> Replay {
        Replay { data: Mutex::new((data, 0)), piece }
    }
}

impl Socket for Replay {
    fn send(&self, buf: &[u8]) -> KResult<usize> {
        Ok(buf.len())
    }
    fn recv(&self, buf: &mut [u8], _timeout: Option<Duration>) -> KResult<usize> {
        let mut g = self.data.lock().unwrap();
        let (d, pos) = &mut *g;
        let n = buf.len().min(self.piece).min(d.len() - *pos);
        buf[..n].copy_from_slice(&d[*pos..*pos + n]);
        *pos += n;
        Ok(n)
    }
    fn shutdown(&self) {}
    fn local_addr(&self) -> KResult<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 700)))
    }
}

/// A recorded GETPORT reply (xid 0x01020304, accepted, SUCCESS, port 2049).
const GETPORT_REPLY: &[u8] = &[
    0x80, 0, 0, 28, // record mark: last fragment, 28 bytes
    1, 2, 3, 4, 0, 0, 0, 1, // xid, REPLY
    0, 0, 0, 0, // MSG_ACCEPTED
    0, 0, 0, 0, 0, 0, 0, 0, // verifier AUTH_NONE, length 0
    0, 0, 0, 0, // SUCCESS
    0, 0, 8, 1, // port 2049
];

#[test]
fn recorded_reply_in_pieces() {
    for piece in [1, 3, 7, 64] {
        let s = Replay::new(GETPORT_REPLY.to_vec(), piece);
        let rec = read_record(&s, MAX_RECORD, None).unwrap().unwrap();
        assert_eq!(reply_xid(&rec), Some(0x01020304));
        let r = parse_reply(rec).unwrap();
        assert_eq!(r.body(), &[0, 0, 8, 1]);
        assert_eq!(read_record(&s, MAX_RECORD, None).unwrap(), None, "clean end of stream");
    }
}

#[test]
fn fragments_both_ways() {
    let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let rec = record_mark(&msg, 300);
    // 4 fragments: 300, 300, 300, 100; only the last flagged.
    assert_eq!(rec.len(), msg.len() + 16);
    assert_eq!(&rec[..4], &[0, 0, 1, 44]);
    assert_eq!(&rec[rec.len() - 104..rec.len() - 100], &[0x80, 0, 0, 100]);
    let s = Replay::new(rec, 13);
    assert_eq!(read_record(&s, 4096, None).unwrap().unwrap(), msg);
    assert_eq!(record_mark(&[], 10), vec![0x80, 0, 0, 0]);
}

#[test]
fn oversized_and_truncated_records_are_errors() {
    // A fragment claiming 2 GiB: refused before allocating.
    let s = Replay::new(vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], 64);
    assert_eq!(read_record(&s, MAX_RECORD, None), Err(Errno::EIO));
    // Fragments that add up past the limit.
    let mut many = Vec::new();
    for _ in 0..3 {
        many.extend_from_slice(&[0, 0, 0, 8]);
        many.extend_from_slice(&[0; 8]);
    }
    assert_eq!(read_record(&Replay::new(many, 64), 20, None), Err(Errno::EIO));
    // The stream ends inside a record.
    let cut = GETPORT_REPLY[..GETPORT_REPLY.len() - 3].to_vec();
    assert_eq!(read_record(&Replay::new(cut, 5), MAX_RECORD, None), Err(Errno::ECONNRESET));
}

#[test]
fn malformed_and_refused_replies() {
    let body = |words: &[u32]| {
        let mut e = Enc::new();
        for w in words {
            e.u32(*w);
        }
        e.buf
    };
    // A CALL where a reply belongs, unknown reply status, truncated header.
    assert_eq!(parse_reply(body(&[1, 0])).unwrap_err(), Errno::EIO);
    assert_eq!(parse_reply(body(&[1, 1, 7])).unwrap_err(), Errno::EIO);
    assert_eq!(parse_reply(body(&[1, 1, 0, 0])).unwrap_err(), Errno::EIO);
    // Verifier longer than 400 bytes.
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 401])).unwrap_err(), Errno::EIO);
    // PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS, SYSTEM_ERR, unknown.
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 0, 1])).unwrap_err(), Errno::EOPNOTSUPP);
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 0, 2, 2, 4])).unwrap_err(), Errno::EOPNOTSUPP);
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 0, 3])).unwrap_err(), Errno::EOPNOTSUPP);
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 0, 4])).unwrap_err(), Errno::EINVAL);
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 0, 5])).unwrap_err(), Errno::EIO);
    assert_eq!(parse_reply(body(&[1, 1, 0, 0, 0, 99])).unwrap_err(), Errno::EIO);
    // MSG_DENIED: RPC_MISMATCH, AUTH_ERROR (too weak).
    assert_eq!(parse_reply(body(&[1, 1, 1, 0, 2, 2])).unwrap_err(), Errno::EIO);
    assert_eq!(parse_reply(body(&[1, 1, 1, 1, 5])).unwrap_err(), Errno::EACCES);
}

#[test]
fn call_message_layout() {
    let auth = Auth::Sys { uid: 1000, gid: 100, gids: (0..20).collect() };
    let m = encode_call(7, 100003, 3, 1, &auth, &[0xaa; 4]);
    let w = |i: usize| u32::from_be_bytes([m[4 * i], m[4 * i + 1], m[4 * i + 2], m[4 * i + 3]]);
    assert_eq!((w(0), w(1), w(2), w(3), w(4), w(5)), (7, 0, 2, 100003, 3, 1));
    assert_eq!(w(6), 1, "AUTH_SYS");
    // stamp, "rumpfs" (6 bytes + 2 pad), uid, gid, 16 gids (capped): 4+4+8+4+4+4+64.
    assert_eq!(w(7), 92);
    assert_eq!((w(8 + 4), w(8 + 5), w(8 + 6)), (1000, 100, 16));
    assert_eq!(&m[m.len() - 4..], &[0xaa; 4]);
    let n = encode_call(8, 100005, 3, 5, &Auth::None, &[]);
    assert_eq!(n.len(), 40);
}
