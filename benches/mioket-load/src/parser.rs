//! Server frames: the incremental parser and the inflater of compressed messages.

use crate::deflate;
use crate::frame::{OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// Bytes of each message the parser keeps (unmasked): enough for a control payload
/// and for the broadcast stamp.
pub(crate) const HEAD: usize = 125;

pub(crate) enum Ev {
    /// A data message: its (inflated) length and first bytes; whether it came
    /// compressed, its bytes on the wire (frame headers included) and, for a compressed
    /// one when asked (`Inflate::crc_from`), the CRC-32 of its inflated bytes from there.
    Message {
        opcode: u8,
        len: u64,
        head: [u8; HEAD],
        head_len: usize,
        compressed: bool,
        wire: u64,
        body_crc: Option<u32>,
    },
    Ping {
        payload: [u8; HEAD],
        len: usize,
    },
    Close,
}

/// What every parser shares for compressed messages: the inflater of servers that
/// compress each message on its own, and the inflated bytes of the message at hand.
pub(crate) struct Inflate {
    shared: flate2::Decompress,
    out: Vec<u8>,
    /// Corpus runs: the CRC-32 of an inflated message from this offset (after the stamp).
    crc_from: Option<usize>,
    /// Messages compressed on their own (no context) that were inflated lately: a
    /// broadcast sends the same compressed bytes to every member, and the same bytes
    /// inflate to the same message, so a copy whose bytes equal one of these (compared
    /// whole) takes its result instead of inflating again. Without this the load
    /// generator, inflating every copy, is slower than the server it measures
    /// (`--inflate-every` turns it off).
    memo: Vec<Memo>,
    memo_next: usize,
    memo_on: bool,
    /// Inflate calls made, and copies answered from `memo`.
    pub(crate) inflated: u64,
    pub(crate) memo_hits: u64,
}

/// A compressed message (without the tail) and what it inflated to.
struct Memo {
    z: Vec<u8>,
    len: u64,
    head: [u8; HEAD],
    head_len: usize,
    crc: Option<u32>,
}

/// An inflated message: its length, first bytes (and how many) and CRC from `crc_from`.
type Inflated = (u64, [u8; HEAD], usize, Option<u32>);

/// Inflated messages remembered (more than the messages a broadcast run has in flight).
const MEMO: usize = 64;

impl Inflate {
    pub(crate) fn new(crc_from: Option<usize>, memo_on: bool) -> Inflate {
        Inflate {
            shared: flate2::Decompress::new(false),
            out: Vec::new(),
            crc_from,
            memo: Vec::new(),
            memo_next: 0,
            memo_on,
            inflated: 0,
            memo_hits: 0,
        }
    }

    /// Inflates a message (with `own`, the connection's inflater that keeps its window,
    /// else the shared one reset first): its length, first bytes and CRC.
    fn message(&mut self, own: Option<&mut flate2::Decompress>, z: &mut Vec<u8>) -> Result<Inflated, &'static str> {
        let memo = own.is_none() && self.memo_on;
        if memo {
            if let Some(m) = self.memo.iter().find(|m| m.z == *z) {
                self.memo_hits += 1;
                return Ok((m.len, m.head, m.head_len, m.crc));
            }
        }
        let compressed_len = z.len();
        match own {
            Some(d) => deflate::inflate(d, false, z, &mut self.out)?,
            None => deflate::inflate(&mut self.shared, true, z, &mut self.out)?,
        }
        self.inflated += 1;
        let mut head = [0u8; HEAD];
        let head_len = self.out.len().min(HEAD);
        head[..head_len].copy_from_slice(&self.out[..head_len]);
        let crc = self.crc_from.filter(|&f| self.out.len() >= f).map(|f| crc32fast::hash(&self.out[f..]));
        let len = self.out.len() as u64;
        if memo {
            let m = Memo { z: z[..compressed_len].to_vec(), len, head, head_len, crc };
            if self.memo.len() < MEMO {
                self.memo.push(m);
            } else {
                self.memo[self.memo_next] = m;
                self.memo_next = (self.memo_next + 1) % MEMO;
            }
        }
        Ok((len, head, head_len, crc))
    }
}

/// Incremental frame parser for server frames; in --raw mode frames may be masked.
#[derive(Default)]
pub(crate) struct Parser {
    /// permessage-deflate was agreed: RSV1 may start a data message.
    pub(crate) deflate: bool,
    /// The server keeps its window between messages: this connection's own inflater.
    pub(crate) own: Option<Box<flate2::Decompress>>,
    /// The message at hand came with RSV1: its payload is collected in `zbuf`.
    compressed: bool,
    zbuf: Vec<u8>,
    /// Bytes of the message at hand on the wire, frame headers included.
    msg_wire: u64,
    hdr: [u8; 14],
    hdr_len: usize,
    in_frame: bool,
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    remaining: u64,
    frame_off: u64,
    msg_opcode: u8,
    msg_len: u64,
    head: Vec<u8>,
    ctrl: Vec<u8>,
}

impl Parser {
    #[inline]
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut Vec<Ev>, inf: &mut Inflate) -> Result<(), &'static str> {
        while !data.is_empty() || (self.in_frame && self.remaining == 0) {
            if !self.in_frame {
                let need = |h: &[u8], have: usize| -> usize {
                    if have < 2 {
                        return 2;
                    }
                    2 + match h[1] & 0x7F {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    } + if h[1] & 0x80 != 0 { 4 } else { 0 }
                };
                loop {
                    let n = need(&self.hdr, self.hdr_len);
                    if self.hdr_len >= n {
                        break;
                    }
                    let take = (n - self.hdr_len).min(data.len());
                    if take == 0 {
                        return Ok(());
                    }
                    self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[..take]);
                    self.hdr_len += take;
                    data = &data[take..];
                }
                let h = &self.hdr;
                self.fin = h[0] & 0x80 != 0;
                self.opcode = h[0] & 0x0F;
                let rsv = h[0] & 0x70;
                let (len, mut at) = match h[1] & 0x7F {
                    126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
                    127 => (u64::from_be_bytes(h[2..10].try_into().unwrap()), 10),
                    n => (u64::from(n), 2),
                };
                self.mask = if h[1] & 0x80 != 0 {
                    let key = [h[at], h[at + 1], h[at + 2], h[at + 3]];
                    at += 4;
                    Some(key)
                } else {
                    None
                };
                debug_assert_eq!(at, self.hdr_len);
                self.hdr_len = 0;
                self.in_frame = true;
                self.remaining = len;
                self.frame_off = 0;
                // RSV1 only with permessage-deflate, on a message's first frame.
                if rsv != 0 && (rsv != deflate::RSV1 || !self.deflate || !matches!(self.opcode, OP_TEXT | OP_BINARY)) {
                    return Err("RSV bits that no agreed extension defines");
                }
                match self.opcode {
                    0 => {}
                    OP_TEXT | OP_BINARY => {
                        self.msg_opcode = self.opcode;
                        self.msg_len = 0;
                        self.msg_wire = 0;
                        self.head.clear();
                        self.compressed = rsv != 0;
                        self.zbuf.clear();
                    }
                    OP_CLOSE | OP_PING | OP_PONG => self.ctrl.clear(),
                    _ => return Err("unknown opcode"),
                }
                if self.opcode < 8 {
                    self.msg_wire += at as u64;
                }
            }
            let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(data.len());
            let (chunk, rest) = data.split_at(n);
            let control = self.opcode >= 8;
            if !control && self.compressed {
                self.zbuf.extend_from_slice(chunk);
            }
            let keep = if control { &mut self.ctrl } else { &mut self.head };
            let room = if !control && self.compressed { 0 } else { HEAD.saturating_sub(keep.len()).min(chunk.len()) };
            if room > 0 {
                let from = keep.len();
                keep.extend_from_slice(&chunk[..room]);
                if let Some(key) = self.mask {
                    for (i, b) in keep[from..].iter_mut().enumerate() {
                        *b ^= key[(self.frame_off as usize + i) & 3];
                    }
                }
            }
            self.remaining -= n as u64;
            self.frame_off += n as u64;
            if !control {
                self.msg_len += n as u64;
                self.msg_wire += n as u64;
            }
            data = rest;
            if self.remaining == 0 {
                self.in_frame = false;
                let mut buf = [0u8; HEAD];
                match self.opcode {
                    OP_PING => {
                        buf[..self.ctrl.len()].copy_from_slice(&self.ctrl);
                        out.push(Ev::Ping { payload: buf, len: self.ctrl.len() });
                    }
                    OP_CLOSE => out.push(Ev::Close),
                    OP_PONG => {}
                    _ if self.fin && self.compressed => {
                        let (len, head, head_len, body_crc) = inf.message(self.own.as_deref_mut(), &mut self.zbuf)?;
                        out.push(Ev::Message {
                            opcode: self.msg_opcode,
                            len,
                            head,
                            head_len,
                            compressed: true,
                            wire: self.msg_wire,
                            body_crc,
                        });
                    }
                    _ if self.fin => {
                        buf[..self.head.len()].copy_from_slice(&self.head);
                        out.push(Ev::Message {
                            opcode: self.msg_opcode,
                            len: self.msg_len,
                            head: buf,
                            head_len: self.head.len(),
                            compressed: false,
                            wire: self.msg_wire,
                            body_crc: None,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus;
    use crate::frame::{masked_frame, OP_BINARY, OP_CLOSE, OP_TEXT};
    use crate::stamp::BCAST_HEAD;

    fn inflate() -> Inflate {
        Inflate::new(None, true)
    }

    #[test]
    fn compressed_messages_inflate_in_any_pieces() {
        let mut msg = vec![7u8; BCAST_HEAD];
        msg.extend_from_slice(&corpus::Corpus::new(corpus::Kind::Json).docs[20]);
        let n = msg.len() as u64;
        let mut z = Vec::new();
        assert!(deflate::Deflater::new(&deflate::Agreement::default()).compress(&msg, &mut z));
        // Two fragments (RSV1 on the first only) with a ping between, then the same whole.
        let mut stream = vec![0x40 | OP_BINARY, 126];
        stream.extend_from_slice(&(100u16).to_be_bytes());
        stream.extend_from_slice(&z[..100]);
        stream.extend_from_slice(&[0x89, 1, 5]);
        stream.push(0x80);
        stream.push(126);
        stream.extend_from_slice(&((z.len() - 100) as u16).to_be_bytes());
        stream.extend_from_slice(&z[100..]);
        stream.extend_from_slice(&[0x80 | 0x40 | OP_BINARY, 126]);
        stream.extend_from_slice(&(z.len() as u16).to_be_bytes());
        stream.extend_from_slice(&z);
        for cut in [1, 7, 100, stream.len()] {
            let mut p = Parser { deflate: true, ..Parser::default() };
            let mut inf = inflate();
            inf.crc_from = Some(BCAST_HEAD);
            let mut evs = Vec::new();
            for piece in stream.chunks(cut) {
                p.feed(piece, &mut evs, &mut inf).unwrap();
            }
            assert_eq!(evs.len(), 3, "cut {cut}");
            let crc = crc32fast::hash(&msg[BCAST_HEAD..]);
            let wire = [8 + z.len() as u64, 4 + z.len() as u64];
            for (ev, wire) in [&evs[1], &evs[2]].into_iter().zip(wire) {
                assert!(
                    matches!(ev, Ev::Message { len, compressed: true, body_crc: Some(c), wire: w, head, .. } if *len == n && *c == crc && *w == wire && head[..HEAD] == msg[..HEAD])
                );
            }
        }
        // RSV1 without the agreement is an error.
        let mut p = Parser::default();
        assert!(p.feed(&stream[stream.len() - z.len() - 4..], &mut Vec::new(), &mut inflate()).is_err());
    }

    #[test]
    fn parser_reads_frames_in_any_pieces() {
        let mut stream = vec![0x81, 3, b'h', b'i', b'!', 0x89, 2, 7, 8];
        stream.extend_from_slice(&[0x82, 126, 1, 0]);
        stream.extend(std::iter::repeat_n(9, 256));
        stream.extend(masked_frame(OP_CLOSE, &[3, 232]));
        for cut in 1..stream.len() {
            let mut p = Parser::default();
            let mut evs = Vec::new();
            for piece in stream.chunks(cut) {
                p.feed(piece, &mut evs, &mut inflate()).unwrap();
            }
            assert_eq!(evs.len(), 4, "cut {cut}");
            assert!(matches!(evs[0], Ev::Message { opcode: OP_TEXT, len: 3, head_len: 3, .. }));
            assert!(matches!(evs[1], Ev::Ping { len: 2, payload, .. } if payload[..2] == [7, 8]));
            assert!(matches!(evs[2], Ev::Message { opcode: OP_BINARY, len: 256, head_len: HEAD, .. }));
            assert!(matches!(evs[3], Ev::Close));
        }
    }

    #[test]
    fn masked_frames_unmask_their_head() {
        let mut p = Parser::default();
        let mut evs = Vec::new();
        p.feed(&masked_frame(OP_BINARY, b"abcdef"), &mut evs, &mut inflate()).unwrap();
        assert!(matches!(evs[0], Ev::Message { head, head_len: 6, .. } if &head[..6] == b"abcdef"));
    }
}
