//! Frame headers and opcodes: RFC 6455 section 5, nothing else. Close codes live
//! with the faults that name them (`error`), re-exported here.

pub use crate::error::CloseCode;
use crate::error::PeerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (permessage-deflate, RFC 7692).
    pub compressed: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

/// The opcode and payload of a whole unmasked frame of ours (a shared message or
/// envelope), e.g. to re-encode a kept message for another audience.
pub fn server_payload(frame: &[u8]) -> Option<(Opcode, &[u8])> {
    let (header, n) = parse_header(frame).ok()??;
    let len = usize::try_from(header.len).ok()?;
    Some((header.opcode, frame.get(n..n.checked_add(len)?)?))
}

/// The longest header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;
/// RFC 6455 5.5: control frames carry at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Parses a frame header from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed and nothing is consumed;
/// `Ok(Some((header, n)))` means the header took `n` bytes.
pub fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, PeerError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    // RFC 6455 5.2: RSV2 and RSV3 must be 0 (no extension we speak uses them); RSV1
    // is permessage-deflate's, which the connection judges (negotiated, first frame).
    if b0 & 0x30 != 0 {
        return Err(PeerError::ReservedBits);
    }
    let compressed = b0 & 0x40 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(PeerError::ReservedOpcode)?;
    // RFC 7692 6.1: control frames are never compressed.
    if compressed && opcode.is_control() {
        return Err(PeerError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut n) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
    if len >> 63 != 0 {
        return Err(PeerError::LengthTooLarge);
    }
    if opcode.is_control() {
        // RFC 6455 5.5: control frames are never fragmented and carry at most 125 bytes.
        if !fin {
            return Err(PeerError::FragmentedControl);
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(PeerError::ControlTooLong);
        }
    }
    let mask = if masked {
        match buf.get(n..n + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            Some(key) => {
                n += 4;
                Some(key)
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some((Header { fin, compressed, opcode, mask, len }, n)))
}

/// Writes `header` in its shortest form; returns how many bytes it took.
pub fn encode_header(header: &Header, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    out[0] = (u8::from(header.fin) << 7) | (u8::from(header.compressed) << 6) | header.opcode.bits();
    let mask_bit = if header.mask.is_some() { 0x80 } else { 0 };
    let mut n = match header.len {
        len @ 0..=125 => {
            out[1] = mask_bit | len as u8;
            2
        }
        len @ 126..=0xFFFF => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        len => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(key) = header.mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// The header of an unmasked, final server frame.
pub fn server_header(opcode: Opcode, len: usize) -> Header {
    Header { fin: true, compressed: false, opcode, mask: None, len: len as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_header() -> impl Strategy<Value = Header> {
        let opcodes = prop_oneof![
            Just(Opcode::Continuation),
            Just(Opcode::Text),
            Just(Opcode::Binary),
            Just(Opcode::Close),
            Just(Opcode::Ping),
            Just(Opcode::Pong),
        ];
        let lens = prop_oneof![0u64..=125, 126u64..=0xFFFF, 0x1_0000u64..(1 << 63)];
        (any::<bool>(), any::<bool>(), opcodes, any::<Option<[u8; 4]>>(), lens).prop_map(
            |(fin, compressed, opcode, mask, len)| {
                if opcode.is_control() {
                    // RFC 6455 5.5, RFC 7692 6.1: the only control headers that exist.
                    Header { fin: true, compressed: false, opcode, mask, len: len % 126 }
                } else {
                    Header { fin, compressed, opcode, mask, len }
                }
            },
        )
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_the_identity(header in any_header(), trailing in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&header, &mut buf);
            let mut bytes = buf[..n].to_vec();
            bytes.extend(trailing);
            prop_assert_eq!(parse_header(&bytes), Ok(Some((header, n))));
            for cut in 0..n {
                prop_assert_eq!(parse_header(&bytes[..cut]), Ok(None));
            }
        }

        #[test]
        fn parse_never_panics_and_never_claims_more_than_it_has(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some((h, n))) = parse_header(&bytes) {
                prop_assert!(n <= bytes.len() && n <= MAX_HEADER_LEN);
                prop_assert!(!h.opcode.is_control() || (h.fin && h.len <= 125));
            }
        }
    }

    // RFC 6455 5.7: examples.
    #[test]
    fn parses_the_rfc_single_frame_masked_text_example() {
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (h, n) = parse_header(&bytes).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            h,
            Header { fin: true, compressed: false, opcode: Opcode::Text, mask: Some([0x37, 0xfa, 0x21, 0x3d]), len: 5 }
        );
    }

    #[test]
    fn parses_the_rfc_256_byte_and_64_kib_binary_examples() {
        let (h, n) = parse_header(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.len, n, h.opcode), (256, 4, Opcode::Binary));
        let (h, n) = parse_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!((h.len, n), (65536, 10));
    }

    #[test]
    fn a_partial_header_consumes_nothing() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse_header(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_header(&full).unwrap().is_some());
    }

    // RFC 6455 5.2, RFC 7692 6.1
    #[test]
    fn reserved_bits_and_opcodes_are_protocol_errors() {
        assert_eq!(parse_header(&[0xA1, 0x80]), Err(PeerError::ReservedBits));
        assert_eq!(parse_header(&[0x91, 0x80]), Err(PeerError::ReservedBits));
        assert_eq!(parse_header(&[0xC9, 0x80]), Err(PeerError::ReservedBits), "a compressed ping");
        // RSV1 on a data frame is the connection's to judge.
        assert!(parse_header(&[0xC1, 0x00]).unwrap().unwrap().0.compressed);
        assert_eq!(parse_header(&[0x83, 0x80]), Err(PeerError::ReservedOpcode));
        assert_eq!(parse_header(&[0x8B, 0x80]), Err(PeerError::ReservedOpcode));
    }

    #[test]
    fn a_length_with_the_top_bit_set_is_refused_at_header_time() {
        let bytes = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_header(&bytes), Err(PeerError::LengthTooLarge));
    }

    // RFC 6455 5.5
    #[test]
    fn control_frames_must_be_final_and_short() {
        assert_eq!(parse_header(&[0x09, 0x80]), Err(PeerError::FragmentedControl));
        assert_eq!(parse_header(&[0x89, 0xFE, 0x00, 0x7E]), Err(PeerError::ControlTooLong));
        assert!(parse_header(&[0x89, 0xFD, 1, 2, 3, 4]).unwrap().is_some());
    }

    #[test]
    fn encode_uses_the_shortest_length_form() {
        let mut out = [0; MAX_HEADER_LEN];
        for (len, want) in [(0u64, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let n = encode_header(
                &Header { fin: true, compressed: false, opcode: Opcode::Binary, mask: None, len },
                &mut out,
            );
            assert_eq!(n, want, "len {len}");
        }
    }

    #[test]
    fn close_codes_follow_section_7_4() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
            assert!(CloseCode(ok).may_be_sent(), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(bad).may_be_sent(), "{bad}");
        }
    }
}
