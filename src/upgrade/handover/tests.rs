//! The channel and the exchange without processes: both ends in one process, the
//! old side in a thread.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use super::super::channel::{Channel, ChannelError, Kind, MAX_BODY, MAX_FDS};
use super::*;

/// Everything received, no batch looked at on its way.
fn receive(chan: &mut Channel, reads: impl Fn(u32) -> bool) -> Result<Received, Failed> {
    receive_with(chan, reads, |_, _| {})
}

fn pair() -> (Channel, Channel) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    (Channel::new(a), Channel::new(b))
}

/// `n` socket pairs: the first ends travel, the second stay to check them by.
fn sockets(n: usize) -> (Vec<UnixStream>, Vec<UnixStream>) {
    (0..n).map(|_| UnixStream::pair().unwrap()).unzip()
}

/// Each received descriptor is the very socket sent: what is written to it arrives
/// at the end that stayed.
fn assert_same_sockets(received: Vec<OwnedFd>, stayed: &mut [UnixStream]) {
    assert_eq!(received.len(), stayed.len());
    for (i, (fd, other)) in received.into_iter().zip(stayed.iter_mut()).enumerate() {
        let mut sent = UnixStream::from(fd);
        sent.write_all(&(i as u32).to_le_bytes()).unwrap();
        let mut got = [0; 4];
        other.read_exact(&mut got).unwrap();
        assert_eq!(u32::from_le_bytes(got), i as u32, "descriptor {i} out of order");
    }
}

#[test]
fn descriptors_arrive_with_their_message_in_order() {
    let (mut old, mut new) = pair();
    let (ends, mut stayed) = sockets(3);
    let fds: Vec<RawFd> = ends.iter().map(|s| s.as_raw_fd()).collect();
    old.send(Kind::Connections, &[], &fds).unwrap();
    old.send(Kind::Snapshot, b"after", &[]).unwrap();
    let first = new.recv().unwrap();
    assert_eq!((first.kind, first.body.len()), (Kind::Connections, 0));
    let second = new.recv().unwrap();
    assert_eq!((second.kind, &second.body[..], second.fds.len()), (Kind::Snapshot, &b"after"[..], 0));
    assert_same_sockets(first.fds, &mut stayed);
}

#[test]
fn a_whole_exchange_moves_listeners_snapshot_and_connections() {
    let (mut old, mut new) = pair();
    let (ends, mut stayed) = sockets(2 * MAX_FDS + 17);
    let (listener_end, mut listener_stayed) = sockets(1);
    // Over three pieces of snapshot.
    let snapshot: Vec<u8> = (0..2 * MAX_BODY + 5).map(|i| (i % 251) as u8).collect();
    let expected = snapshot.clone();
    let old_side = thread::spawn(move || {
        let hello = read_hello(&mut old).unwrap();
        assert_eq!(hello, Hello { format: 3, pid: std::process::id() });
        let fds: Vec<RawFd> = ends.iter().map(|s| s.as_raw_fd()).collect();
        let listeners = [(Role::Main, listener_end[0].as_raw_fd())];
        hand_over(&mut old, &listeners, 3, &snapshot, &fds)
    });
    say_hello(&mut new, 3).unwrap();
    let received = receive(&mut new, |format| format <= 3).unwrap();
    confirm(&mut new).unwrap();
    old_side.join().unwrap().unwrap();
    assert_eq!(received.format, 3);
    assert!(received.snapshot == expected, "the snapshot arrived whole");
    let (roles, listeners): (Vec<Role>, Vec<OwnedFd>) = received.listeners.into_iter().unzip();
    assert_eq!(roles, [Role::Main]);
    assert_same_sockets(listeners, &mut listener_stayed);
    assert_same_sockets(received.connections, &mut stayed);
}

#[test]
fn an_unknown_format_is_refused_and_the_old_side_hears_why() {
    let (mut old, mut new) = pair();
    let old_side = thread::spawn(move || hand_over(&mut old, &[], 99, &[1, 2, 3], &[]));
    let refused = receive(&mut new, |format| format <= 3).unwrap_err();
    assert!(refused.0.contains("unknown snapshot format 99"), "{refused}");
    drop(new);
    let failed = old_side.join().unwrap().unwrap_err();
    assert!(failed.0.contains("refused: unknown snapshot format 99"), "{failed}");
}

#[test]
fn an_old_side_that_stops_mid_snapshot_fails_the_new_one() {
    let (mut old, mut new) = pair();
    let mut begin = 1u32.to_le_bytes().to_vec();
    begin.extend_from_slice(&100u64.to_le_bytes());
    begin.extend_from_slice(&0u32.to_le_bytes());
    old.send(Kind::Begin, &begin, &[]).unwrap();
    old.send(Kind::Listeners, &[], &[]).unwrap();
    old.send(Kind::Snapshot, &[0; 10], &[]).unwrap();
    drop(old);
    let failed = receive(&mut new, |_| true).unwrap_err();
    assert!(failed.0.contains("closed"), "{failed}");
}

#[test]
fn more_than_announced_is_refused() {
    let (mut old, mut new) = pair();
    let mut begin = 1u32.to_le_bytes().to_vec();
    begin.extend_from_slice(&4u64.to_le_bytes());
    begin.extend_from_slice(&0u32.to_le_bytes());
    old.send(Kind::Begin, &begin, &[]).unwrap();
    old.send(Kind::Listeners, &[], &[]).unwrap();
    old.send(Kind::Snapshot, &[0; 5], &[]).unwrap();
    let failed = receive(&mut new, |_| true).unwrap_err();
    assert!(failed.0.contains("more snapshot than announced"), "{failed}");
    // The old side is told.
    assert_eq!(old.recv().unwrap().kind, Kind::Abort);
}

/// A peer that writes raw bytes: each rule is a clean error, never a panic or an
/// allocation of what the header claims.
#[test]
fn a_peer_that_sends_garbage_gets_an_error() {
    let cases: [(&[u8], &str); 4] = [
        (&[0xFF, 0, 0, 0, 0, 0], "unknown kind 255"),
        (&[4, 0, 0xFF, 0xFF, 0xFF, 0xFF], "a body of 4294967295 bytes"),
        (&[5, 251, 0, 0, 0, 0], "251 descriptors in one message"),
        (&[5, 3, 0, 0, 0, 0], "3 descriptors announced, 0 arrived"),
    ];
    for (bytes, expected) in cases {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(bytes).unwrap();
        match Channel::new(b).recv() {
            Err(ChannelError::Garbage(why)) => assert!(why.contains(expected), "{why} for {bytes:?}"),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
}

#[test]
fn a_short_hello_and_a_silent_or_gone_peer_are_failures() {
    let (mut old, mut new) = pair();
    new.send(Kind::Hello, &[1, 0], &[]).unwrap();
    assert!(read_hello(&mut old).unwrap_err().0.contains("short hello"));
    old.stream().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(matches!(old.recv(), Err(ChannelError::Timeout)));
    drop(new);
    assert!(matches!(old.recv(), Err(ChannelError::Closed)));
}

#[test]
fn a_peer_cannot_pile_up_descriptors_it_never_announces() {
    let (mut old, mut new) = pair();
    let (ends, _stayed) = sockets(MAX_FDS);
    let fds: Vec<RawFd> = ends.iter().map(|s| s.as_raw_fd()).collect();
    // Each message claims none of the descriptors it carries.
    let result = (0..4).try_for_each(|_| {
        send_raw(&mut old, &fds);
        new.recv().map(drop)
    });
    assert!(matches!(result, Err(ChannelError::Garbage(ref why)) if why.contains("not announced")), "{result:?}");
}

/// A Done header that claims no descriptors, sent with some.
fn send_raw(chan: &mut Channel, fds: &[RawFd]) {
    super::super::channel::send_unannounced(chan, fds);
}
