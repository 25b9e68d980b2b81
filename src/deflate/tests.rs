use super::*;

use flate2::write::DeflateEncoder;
use std::io::Write;

fn offer(lines: &[&str]) -> Option<Agreement> {
    negotiate(lines.iter().map(|l| l.as_bytes()))
}

/// A message compressed by flate2's writer, an independent path, ending the way
/// browsers do (sync flush, tail stripped).
fn deflated(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.flush().unwrap();
    let mut out = encoder.get_ref().clone();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

#[test]
fn every_valid_offer_is_accepted_with_the_shared_answer() {
    let shared = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    for line in [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=\"15\"",
        "permessage-deflate; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate;server_no_context_takeover;client_no_context_takeover;client_max_window_bits",
        "Permessage-Deflate ; client_max_window_bits ",
    ] {
        let agreement = offer(&[line]).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(agreement.response(), shared, "{line}");
        assert!(agreement.compress_to_peer());
    }
    for (bits, compress) in [(8, false), (9, false), (12, false), (15, true)] {
        let agreement = offer(&[&format!("permessage-deflate; server_max_window_bits={bits}")]).unwrap();
        assert_eq!(agreement.response(), format!("{shared}; server_max_window_bits={bits}"));
        assert_eq!(agreement.compress_to_peer(), compress, "{bits}");
    }
}

#[test]
fn invalid_offers_are_declined_and_the_next_one_taken() {
    for line in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=1 5",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=\"15",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mystery",
        "x-webkit-deflate-frame",
        "permessage-deflate-x",
        "",
    ] {
        assert_eq!(offer(&[line]), None, "{line:?}");
    }
    // The client's order of preference: the first acceptable offer wins.
    let agreement = offer(&["permessage-deflate; mystery, permessage-deflate; server_max_window_bits=10", "x"]);
    assert_eq!(agreement, Some(Agreement { server_max_window_bits: Some(10) }));
    let agreement = offer(&["foo, bar; baz=1", "permessage-deflate"]);
    assert_eq!(agreement, Some(Agreement { server_max_window_bits: None }));
}

#[test]
fn what_a_browser_compresses_inflates_back() {
    let mut out = Vec::new();
    for data in [&b""[..], b"a", b"Hello", &[7u8; 100_000], "héllo wörld ".repeat(300).as_bytes()] {
        inflate(&deflated(data), &mut out, 1 << 20).unwrap();
        assert_eq!(out, data);
    }
    // RFC 7692 7.2.3.1: "Hello" compressed.
    inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100).unwrap();
    assert_eq!(out, b"Hello");
    // 7.2.3.3: the same with a final block (BFINAL set): no tail needed.
    inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100).unwrap();
    assert_eq!(out, b"Hello");
    // 7.2.3.4: an uncompressed (stored) block.
    inflate(&[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00], &mut out, 100).unwrap();
    assert_eq!(out, b"Hello");
}

#[test]
fn a_bomb_stops_at_the_limit_without_allocating_past_it() {
    // 10 MiB of zeros in about 10 KiB: a 1,000x frame.
    let bomb = deflated(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 11 << 10, "{}", bomb.len());
    let mut out = Vec::new();
    assert_eq!(inflate(&bomb, &mut out, 1 << 20), Err(InflateError::TooBig));
    assert!(out.capacity() <= (1 << 20) + 1, "{} bytes held", out.capacity());
    // Exactly at the limit is fine; one byte more is not.
    inflate(&deflated(&[1u8; 1000]), &mut out, 1000).unwrap();
    assert_eq!(out.len(), 1000);
    assert_eq!(inflate(&deflated(&[1u8; 1001]), &mut out, 1000), Err(InflateError::TooBig));
    assert_eq!(inflate(&[], &mut out, 0), Ok(()));
}

#[test]
fn garbage_is_corrupt_and_the_inflater_recovers_for_the_next_message() {
    let mut out = Vec::new();
    assert_eq!(inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], &mut out, 100), Err(InflateError::Corrupt));
    inflate(&deflated(b"after"), &mut out, 100).unwrap();
    assert_eq!(out, b"after");
}

#[test]
fn compressed_frames_carry_rsv1_and_inflate_back_and_small_ones_are_refused() {
    let mut compressor = Compressor::default();
    let json =
        r#"{"type":"message","room":"lobby","seq":42,"data":"the same words again and again and again"}"#.repeat(20);
    let frame = compressor.frame(Opcode::Text, json.as_bytes()).expect("JSON shrinks").to_vec();
    assert_eq!(frame[0], 0x80 | RSV1 | 0x01, "FIN, RSV1, text");
    let (header, n) = crate::frame::parse_header(&frame).unwrap().unwrap();
    assert!(header.compressed);
    assert_eq!(header.len as usize, frame.len() - n);
    assert!(frame.len() < json.len() / 5, "{} of {}", frame.len(), json.len());
    let mut out = Vec::new();
    inflate(&frame[n..], &mut out, 1 << 20).unwrap();
    assert_eq!(out, json.as_bytes());
    // And by an independent inflater (flate2's reader), as a browser would.
    let mut body = frame[n..].to_vec();
    body.extend_from_slice(&TAIL);
    let mut reader = flate2::read::DeflateDecoder::new(&body[..]);
    let mut read = Vec::new();
    let _ = std::io::Read::read_to_end(&mut reader, &mut read);
    assert_eq!(read, json.as_bytes());
    // Each message on its own: the same input gives the same frame.
    assert_eq!(compressor.frame(Opcode::Text, json.as_bytes()).unwrap(), &frame[..]);
    // What does not shrink is not sent compressed.
    assert_eq!(compressor.frame(Opcode::Binary, b"hi"), None);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert_eq!(compressor.frame(Opcode::Binary, &noise), None);
}
