//! A binary upgrade's application side over real sockets, in one process: an
//! application serving clients on loopback TCP is frozen while messages flow, a second
//! application is restored from the snapshot and copies of the sockets, the first is
//! dropped (as the old process exits), and every client goes on with no close, no gap
//! and no duplicate. Also: the snapshot kept from an earlier build still reads, and
//! random or cut bytes are refused without a panic.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mioket::app::{App, ClientIo, Listener};
use mioket::config::{Config, Limits};
use mioket::upgrade::snapshot::{decode, decode_body, seal, SnapshotError, FORMAT_VERSION};
use proptest::prelude::*;
use test_support::frames::{masked, server_frames};
use test_support::fuzz_snapshot::check_snapshot;

/// The server side of one connection, as a runtime would hold it.
struct Io(TcpStream);

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {}", self.0.as_raw_fd())
    }
}

impl ClientIo for Io {
    fn socket_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

fn config() -> Config {
    Config {
        welcome: None,
        history: 1000,
        limits: Limits { max_backpressure: 4 << 20, ..Limits::default() },
        ..Config::default()
    }
}

/// One turn of a small runtime: read every client until it would block, then flush
/// every client with output. Returns whether anything moved.
fn pump(app: &mut App<Io>, now: Instant) -> bool {
    let mut moved = false;
    let mut buf = vec![0u8; 1 << 16];
    let ids: Vec<usize> = app.client_ids().collect();
    for id in ids {
        app.handle_writable(id);
        let held = app.start_turn(id, &mut buf);
        if held > 0 {
            app.handle_input(id, &mut buf[..held], now, write_now);
            moved = true;
        }
        while app.wants_input(id) {
            let Some(view) = app.client_io(id) else { break };
            match view.io.0.read(&mut buf) {
                Ok(0) => {
                    app.handle_eof(id);
                    break;
                }
                Ok(n) => {
                    moved = true;
                    if app.handle_input(id, &mut buf[..n], now, write_now) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    let mut dirty = Vec::new();
    app.drain_dirty_into(&mut dirty);
    for id in dirty {
        let written = app.flush(id, &mut |io: &mut Io, slices: &[IoSlice<'_>]| io.0.write_vectored(slices));
        moved |= written > 0;
    }
    moved
}

fn write_now(io: &mut Io, parts: [&[u8]; 2]) -> usize {
    io.0.write_vectored(&[IoSlice::new(parts[0]), IoSlice::new(parts[1])]).unwrap_or(0)
}

/// A client of the test: its socket, and what it read so far.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Client {
    fn read_available(&mut self) {
        let mut buf = [0u8; 1 << 16];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The frames after the 101's head.
    fn frames(&self) -> Vec<(u8, Vec<u8>)> {
        let end = self.read.windows(4).position(|w| w == b"\r\n\r\n").expect("a 101") + 4;
        assert!(self.read.starts_with(b"HTTP/1.1 101 "));
        server_frames(&self.read[end..])
    }
}

/// Accepts one client on `listener`, upgraded at `target`.
fn connect(app: &mut App<Io>, listener: &TcpListener, target: &str, headers: &str, now: Instant) -> Client {
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    // Small socket buffers: a client that does not read soon has a queue here.
    socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
    let mut client = Client { stream, read: Vec::new() };
    client.send(
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        )
        .as_bytes(),
    );
    client.stream.set_nonblocking(true).unwrap();
    app.connect(Io(server), Listener::Main, now).ok().unwrap();
    client
}

fn settle(app: &mut App<Io>, clients: &mut [&mut Client], now: Instant) {
    for _ in 0..10_000 {
        let moved = pump(app, now);
        clients.iter_mut().for_each(|c| c.read_available());
        if !moved {
            // Loopback delivers at once; one more look for what just arrived.
            std::thread::sleep(std::time::Duration::from_millis(2));
            if !pump(app, now) {
                return;
            }
        }
    }
    panic!("never settled");
}

/// A payload that compresses, numbered.
fn message(i: usize) -> String {
    format!("n{i:05} {}", "abcdefgh".repeat(60))
}

/// The numbers of the messages a plain client got, in order.
fn plain_numbers(frames: &[(u8, Vec<u8>)]) -> Vec<usize> {
    frames
        .iter()
        .map(|(first, p)| {
            assert_eq!(*first, 0x81, "a text frame, not {first:#x}");
            std::str::from_utf8(&p[1..6]).unwrap().parse().unwrap()
        })
        .collect()
}

/// (seq, number) of each message envelope a v1 client got, inflating compressed ones.
fn v1_messages(frames: &[(u8, Vec<u8>)]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    for (first, payload) in frames {
        assert_eq!(first & 0x0f, 1, "text frames only, not {first:#x}");
        let text = if first & 0x40 != 0 {
            let mut inflater = flate2::Decompress::new(false);
            let mut input = payload.clone();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut text = Vec::with_capacity(1 << 16);
            inflater.decompress_vec(&input, &mut text, flate2::FlushDecompress::Sync).unwrap();
            text
        } else {
            payload.clone()
        };
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        if v["type"] == "message" {
            let data = v["data"].as_str().unwrap();
            out.push((v["seq"].as_u64().unwrap(), data[1..6].parse().unwrap()));
        }
    }
    out
}

#[test]
fn clients_move_to_a_restored_application_on_copies_of_their_sockets_with_no_gap_no_duplicate_no_close() {
    let now = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut old: App<Io> = App::new(config());
    let mut publisher = connect(&mut old, &listener, "/r", "", now);
    let mut plain = connect(&mut old, &listener, "/r", "", now);
    let mut v1 = connect(&mut old, &listener, "/r", "Sec-WebSocket-Protocol: mioket.v1\r\n", now);
    let deflate = "Sec-WebSocket-Protocol: mioket.v1\r\nSec-WebSocket-Extensions: permessage-deflate\r\n";
    let mut compressed = connect(&mut old, &listener, "/r", deflate, now);
    let mut fragmenting = connect(&mut old, &listener, "/r", "", now);
    // A client that does not read yet: its socket fills, then its queue.
    let mut stalled = connect(&mut old, &listener, "/r", "", now);
    settle(&mut old, &mut [&mut publisher, &mut plain, &mut v1, &mut compressed, &mut fragmenting], now);
    for i in 0..300 {
        publisher.send(&masked(0x81, message(i).as_bytes()));
    }
    fragmenting.send(&masked(0x01, &message(300).as_bytes()[..100]));
    settle(&mut old, &mut [&mut publisher, &mut plain, &mut v1, &mut compressed, &mut fragmenting], now);

    // The handover: copies of the sockets (the new process's, through SCM_RIGHTS).
    let mut copies: HashMap<RawFd, OwnedFd> = HashMap::new();
    for id in old.client_ids().collect::<Vec<_>>() {
        let io = old.client_io(id).unwrap().io;
        copies.insert(io.0.as_raw_fd(), OwnedFd::from(io.0.try_clone().unwrap()));
    }
    let counted = |app: &App<Io>| {
        (app.metrics.messages_in, app.metrics.messages_out, app.metrics.upgrades, app.metrics.bytes_read)
    };
    let before = counted(&old);
    let frozen = old.freeze(now);
    let state = decode(&frozen.bytes).unwrap();
    assert_eq!(state.clients.len(), 6);
    assert!(state.clients.iter().any(|c| !c.conn.out.is_empty()), "some output waits in a queue");
    let fds = frozen.fds.iter().map(|fd| copies.remove(fd).unwrap()).collect();
    drop(old);
    let later = Instant::now();
    let mut new = App::restore(config(), &frozen.bytes, fds, later, |fd| {
        let stream = TcpStream::from(fd);
        stream.set_nonblocking(true).unwrap();
        Io(stream)
    })
    .unwrap();
    assert_eq!(counted(&new), before, "the counters go on from where they were");

    // Everything goes on: the fragmented message ends, more messages come, the stalled
    // client reads.
    fragmenting.send(&masked(0x80, &message(300).as_bytes()[100..]));
    for i in 301..400 {
        publisher.send(&masked(0x81, message(i).as_bytes()));
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while [&plain, &stalled, &v1, &compressed, &publisher, &fragmenting].iter().any(|c| c.frames().len() < 400) {
        assert!(Instant::now() < deadline, "every client gets every message");
        let clients = &mut [&mut publisher, &mut plain, &mut v1, &mut compressed, &mut fragmenting, &mut stalled];
        settle(&mut new, clients, later);
    }
    // The room's order: seqs 1..=400 without a gap, each message once.
    let order = v1_messages(&v1.frames());
    assert_eq!(order.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=400).collect::<Vec<u64>>());
    let mut numbers: Vec<usize> = order.iter().map(|m| m.1).collect();
    assert_eq!(v1_messages(&compressed.frames()), order, "deflate");
    let plain_ones =
        [("plain", &plain), ("stalled", &stalled), ("publisher", &publisher), ("fragmenting", &fragmenting)];
    for (name, client) in plain_ones {
        assert_eq!(plain_numbers(&client.frames()), numbers, "{name}: the room's order");
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (0..400).collect::<Vec<_>>());
    assert!(compressed.frames().iter().any(|(first, _)| first & 0x40 != 0), "compressed after the move too");
}

#[test]
fn the_snapshot_kept_from_format_1_still_reads() {
    // Written by `write_the_kept_snapshot` below (format 1). When the format changes,
    // keep this file and this test, add the new version's, and make `decode` read both.
    let bytes = include_bytes!("snapshots/format-1.bin");
    let state = decode(bytes).unwrap();
    let rooms: Vec<(&str, u64, usize)> =
        state.rooms.rooms.iter().map(|r| (r.name.as_str(), r.last_seq, r.history.len())).collect();
    assert_eq!(rooms, [("r", 3, 3), ("s", 1, 1)]);
    assert_eq!(state.clients.len(), 3);
    let fds = (0..3).map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap())).collect();
    let app = App::restore(Config { history: 10, ..Config::default() }, bytes, fds, Instant::now(), |fd| {
        Io(TcpStream::from(fd))
    });
    assert_eq!(app.unwrap().client_count(), 3);
}

/// Writes tests/snapshots/format-1.bin (`MIOKET_WRITE_SNAPSHOT=1 cargo test --test
/// snapshot write_the_kept_snapshot`): two rooms, a plain client, a v1 client in both
/// rooms (its publish with an id: a dedup record), and a client half way through its
/// upgrade request.
#[test]
fn write_the_kept_snapshot() {
    if std::env::var_os("MIOKET_WRITE_SNAPSHOT").is_none() || FORMAT_VERSION != 1 {
        return;
    }
    let now = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut app: App<Io> = App::new(Config { history: 10, ..Config::default() });
    let mut a = connect(&mut app, &listener, "/r", "", now);
    let mut b = connect(&mut app, &listener, "/r", "Sec-WebSocket-Protocol: mioket.v1\r\n", now);
    settle(&mut app, &mut [&mut a, &mut b], now);
    b.send(&masked(0x81, br#"{"op":"join","room":"s"}"#));
    b.send(&masked(0x81, br#"{"op":"publish","room":"s","id":"s1","data":"in s"}"#));
    for m in ["one", "two", "three"] {
        a.send(&masked(0x81, m.as_bytes()));
    }
    settle(&mut app, &mut [&mut a, &mut b], now);
    let half = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (&half).write_all(b"GET /r HTTP/1.1\r\nHost: x\r\n").unwrap();
    app.connect(Io(server), Listener::Main, now).ok().unwrap();
    settle(&mut app, &mut [&mut a, &mut b], now);
    let frozen = app.freeze(now);
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/format-1.bin"), &frozen.bytes).unwrap();
}

#[test]
fn an_unknown_version_or_a_cut_or_changed_byte_is_refused() {
    let bytes = include_bytes!("snapshots/format-1.bin").to_vec();
    let mut newer = bytes.clone();
    newer[8] = 2;
    assert_eq!(decode(&newer).err(), Some(SnapshotError::UnknownVersion(2)));
    assert_eq!(decode(b"HTTP/1.1 200 OK\r\n\r\n and more bytes").err(), Some(SnapshotError::NotASnapshot));
    for cut in [0, 10, 28, bytes.len() / 2, bytes.len() - 1] {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    for at in [30, bytes.len() / 2, bytes.len() - 1] {
        let mut changed = bytes.clone();
        changed[at] ^= 0x10;
        assert!(matches!(decode(&changed), Err(SnapshotError::Corrupt(_))), "byte {at}");
    }
}

proptest! {
    #[test]
    fn random_bytes_are_refused_or_read_without_a_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&body);
        // Past the header and the checksum, into the decoder itself.
        let _ = decode_body(&body);
        let _ = decode(&seal(&body));
    }

    #[test]
    fn every_cut_or_change_of_a_real_snapshot_is_refused_or_restores(
        cut in 0usize..4096,
        flips in proptest::collection::vec(any::<(u16, u8)>(), 1..8),
    ) {
        let bytes = include_bytes!("snapshots/format-1.bin");
        let body = &bytes[28..];
        check_snapshot(&body[..cut % body.len()]);
        let mut changed = body.to_vec();
        for (at, xor) in flips {
            let at = usize::from(at) % changed.len();
            changed[at] ^= xor;
        }
        // Refused, or restored and frozen again into a snapshot that reads.
        check_snapshot(&changed);
    }
}
