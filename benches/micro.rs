//! Micro benchmarks of the hot paths: `cargo bench` (add `-- mask` to run one group).
//!
//! Kept quick on purpose (1 s of measurement per bench): the machine is small and
//! shared, so read the numbers as ratios within one run, not as absolutes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use mioket::config::{Config, Limits};
use mioket::frame::{encode_header, parse_header, server_header, Header, Opcode, MAX_HEADER_LEN};
use mioket::mask::apply_mask;
use mioket::protocol::Event;
use mioket::utf8::Utf8Validator;
use test_support::conn::{flush_app, masked_frame, open_app, open_conn};

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .without_plots()
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for len in [20usize, 64, 1024, 64 * 1024] {
        let mut buf = vec![0x5au8; len + 1];
        let src = vec![0xa5u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("apply_mask", len), &len, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf[..len]), black_box([1, 2, 3, 4]), 0))
        });
        // Unaligned start and a non-zero offset: the path of a payload read in pieces.
        g.bench_with_input(BenchmarkId::new("apply_mask_unaligned", len), &len, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf[1..len + 1]), black_box([1, 2, 3, 4]), 3))
        });
        // The limit: a plain copy of the same bytes reads and writes as much memory.
        g.bench_with_input(BenchmarkId::new("memcpy", len), &len, |b, _| {
            b.iter(|| buf[..len].copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

fn header(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    let cases: [(&str, Header); 3] = [
        (
            "small_masked",
            Header { fin: true, compressed: false, opcode: Opcode::Binary, mask: Some([1, 2, 3, 4]), len: 20 },
        ),
        (
            "16bit_masked",
            Header { fin: true, compressed: false, opcode: Opcode::Binary, mask: Some([1, 2, 3, 4]), len: 1024 },
        ),
        (
            "64bit_masked",
            Header { fin: true, compressed: false, opcode: Opcode::Binary, mask: Some([1, 2, 3, 4]), len: 1 << 20 },
        ),
    ];
    for (name, h) in cases {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&h, &mut bytes);
        g.bench_function(BenchmarkId::new("parse", name), |b| b.iter(|| parse_header(black_box(&bytes[..n]))));
    }
    for len in [20usize, 1024, 1 << 20] {
        let h = server_header(Opcode::Binary, len);
        let mut out = [0u8; MAX_HEADER_LEN];
        g.bench_function(BenchmarkId::new("encode_server", len), |b| b.iter(|| encode_header(black_box(&h), &mut out)));
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii = "hello, websocket world! ".repeat(2731).into_bytes(); // ~64 KiB
    let mixed = "añb€c𝄞 déjà vu, 日本語のテキスト ".repeat(1400).into_bytes();
    for (name, text) in [("ascii_64k", &ascii), ("mixed_64k", &mixed)] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(BenchmarkId::new("validator_whole", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::default();
                v.feed(black_box(text)).unwrap();
                v.finish().unwrap();
            })
        });
        // Pieces of 1460 bytes (one TCP segment) cut characters in the middle.
        g.bench_function(BenchmarkId::new("validator_1460_pieces", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::default();
                for piece in black_box(text).chunks(1460) {
                    v.feed(piece).unwrap();
                }
                v.finish().unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("std_from_utf8", name), |b| {
            b.iter(|| std::str::from_utf8(black_box(text)).is_ok())
        });
    }
    g.finish();
}

/// `Conn::read` of one whole masked binary message on an open connection. The
/// message is unmasked in place, so the buffer alternates between masked and plain;
/// binary payloads are not validated, so every pass does the same work.
fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive");
    let limits = Limits::default();
    let now = Instant::now();
    for len in [20usize, 64 * 1024] {
        let mut conn = open_conn(now, &limits);
        let mut frame = masked_frame(Opcode::Binary, &vec![7u8; len], [0x11, 0x22, 0x33, 0x44]);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("conn_read_binary", len), |b| {
            b.iter(|| {
                let (used, event) = conn.handle_input(black_box(&mut frame), now, &limits);
                match event {
                    Some(Event::Message { payload, .. }) => black_box(payload.len() + used),
                    other => panic!("expected a message, got {other:?}"),
                }
            })
        });
        // The same message in 1460-byte pieces: the assembled (copying) path.
        if len > 1460 {
            let mut conn = open_conn(now, &limits);
            let template = frame.clone();
            g.bench_function(BenchmarkId::new("conn_read_binary_1460_pieces", len), |b| {
                b.iter_batched_ref(
                    || template.clone(),
                    |frame| {
                        let mut got = 0;
                        for piece in frame.chunks_mut(1460) {
                            let mut pos = 0;
                            while pos < piece.len() {
                                let (used, event) = conn.handle_input(&mut piece[pos..], now, &limits);
                                pos += used;
                                if let Some(Event::Message { payload, .. }) = event {
                                    got += payload.len();
                                }
                                if used == 0 {
                                    break;
                                }
                            }
                        }
                        assert_eq!(got, len);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// One broadcast through the application: read a client's frame, share it, number it
/// and fan it out to 10,000 room members (a reference each). Only that is timed; the
/// queues are flushed between iterations.
fn broadcast(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut g = c.benchmark_group("fan_out");
    let now = Instant::now();
    let config = Config { welcome: None, history: 0, ..Config::default() };
    let (mut app, ids) = open_app(config, N, now);
    let mut input = Vec::with_capacity(2048);
    let mut dirty = Vec::new();
    g.throughput(Throughput::Elements(N as u64));
    for len in [20usize, 1024] {
        let frame = masked_frame(Opcode::Binary, &vec![b'x'; len], [1, 2, 3, 4]);
        g.bench_function(BenchmarkId::new("10000_recipients", len), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    input.clear();
                    input.extend_from_slice(&frame);
                    let deliveries = app.metrics.fanout_deliveries;
                    let start = Instant::now();
                    app.handle_input(ids[0], black_box(&mut input), now, |_, _| 0);
                    total += start.elapsed();
                    assert_eq!(app.metrics.fanout_deliveries - deliveries, N as u64);
                    flush_app(&mut app, &mut dirty);
                }
                total
            })
        });
    }
    // The flush half alone (what the flush loop does per recipient, minus the writev).
    let frame = masked_frame(Opcode::Binary, &[b'x'; 20], [1, 2, 3, 4]);
    g.bench_function("10000_drains", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                input.clear();
                input.extend_from_slice(&frame);
                app.handle_input(ids[0], &mut input, now, |_, _| 0);
                let start = Instant::now();
                flush_app(&mut app, &mut dirty);
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// permessage-deflate: the extra CPU of one message compressed (once per broadcast, in
/// shared mode) and inflated, against copying it (what a plain frame costs), for a chat
/// line at the default --deflate-min-size and a JSON document.
fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    let line = r#"{"type":"message","room":"lobby","seq":4242,"data":"see you at the meeting tomorrow morning, and thanks for the update on the release: we should ship it on thursday if the tests pass"}"#;
    let mut document = String::from("[");
    for i in 0..60 {
        document.push_str(&format!(
            r#"{{"id":{i},"user":"user{}","score":{},"tags":["news","chat"],"active":true}},"#,
            i * 7,
            i * 13
        ));
    }
    document.push(']');
    let mut compressor = mioket::deflate::Compressor::default();
    for (name, payload) in [("chat_256B", &line.repeat(2)[..256]), ("json_4KiB", &document[..4096])] {
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_function(BenchmarkId::new("copy", name), |b| b.iter(|| black_box(payload.as_bytes().to_vec())));
        g.bench_function(BenchmarkId::new("compress", name), |b| {
            b.iter(|| black_box(compressor.frame(Opcode::Text, black_box(payload.as_bytes())).map(|f| f.len())))
        });
        let frame = compressor.frame(Opcode::Text, payload.as_bytes()).expect("it shrinks").to_vec();
        let body = &frame[if frame[1] & 0x7F == 126 { 4 } else { 2 }..];
        let mut out = Vec::new();
        g.bench_function(BenchmarkId::new("inflate", name), |b| {
            b.iter(|| mioket::deflate::inflate(black_box(body), &mut out, 1 << 20).map(|()| out.len()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = mask, header, utf8, receive, broadcast, deflate
}
criterion_main!(benches);
