//! Plain TCP on one mio loop, no WebSocket at all: the physical-limit proxy (what the
//! kernel and one core do with these sockets). Use it with `mioket-load --raw`: the
//! load generator's masked frames come back as they went.
//!
//! --mode echo: every byte goes back to its sender.
//! --mode broadcast: every complete frame (only its length is looked at) goes to every
//! connection, the sender included, each flushed once per loop iteration.
//! No --mode rooms: without an HTTP upgrade there is no path to name a room.

use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use mioket_peers::{announce, args, Mode};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
    /// Broadcast: the start of a frame not complete yet.
    partial: Vec<u8>,
    dirty: bool,
}

/// Length of the first frame in `buf` if it is complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let (len, mut n) = match b1 & 0x7F {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        l => (l as usize, 2),
    };
    if b1 & 0x80 != 0 {
        n += 4;
    }
    (buf.len() >= n + len).then_some(n + len)
}

fn flush(conn: &mut Conn) -> bool {
    conn.dirty = false;
    while !conn.out.is_empty() {
        match conn.stream.write(&conn.out) {
            Ok(0) => return false,
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn main() -> io::Result<()> {
    let args = args();
    if args.mode == Mode::Rooms {
        eprintln!("tcp-relay: no --mode rooms (plain TCP has no request path)");
        std::process::exit(2);
    }
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    announce(listener.local_addr()?);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut dirty: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let key = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(
                                &mut stream,
                                Token(key),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[key] = Some(Conn { stream, out: Vec::new(), partial: Vec::new(), dirty: false });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = event.token().0;
            let mut done = false;
            while let Some(conn) = conns.get_mut(key).and_then(Option::as_mut) {
                // Do not read more while the answers are not written.
                if conn.out.len() > 1 << 20 {
                    break;
                }
                let n = match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        done = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        done = true;
                        break;
                    }
                };
                match args.mode {
                    Mode::Echo => {
                        conn.out.extend_from_slice(&buf[..n]);
                        if !conn.dirty {
                            conn.dirty = true;
                            dirty.push(key);
                        }
                    }
                    Mode::Broadcast | Mode::Rooms => {
                        conn.partial.extend_from_slice(&buf[..n]);
                        let mut whole = 0;
                        while let Some(len) = frame_len(&conn.partial[whole..]) {
                            whole += len;
                        }
                        if whole > 0 {
                            let frames: Vec<u8> = conn.partial.drain(..whole).collect();
                            for (k, c) in conns.iter_mut().enumerate() {
                                if let Some(c) = c {
                                    c.out.extend_from_slice(&frames);
                                    if !c.dirty {
                                        c.dirty = true;
                                        dirty.push(k);
                                    }
                                }
                            }
                        }
                    }
                }
                if n < buf.len() {
                    break;
                }
            }
            if event.is_writable() {
                if let Some(conn) = conns.get_mut(key).and_then(Option::as_mut) {
                    if !conn.dirty && !conn.out.is_empty() {
                        conn.dirty = true;
                        dirty.push(key);
                    }
                }
            }
            if done {
                conns[key] = None;
                free.push(key);
            }
        }
        for key in dirty.drain(..) {
            if let Some(conn) = conns.get_mut(key).and_then(Option::as_mut) {
                if !flush(conn) {
                    conns[key] = None;
                    free.push(key);
                }
            }
        }
    }
}
