//! The generator's side of a connection: opening it, its read and write loop, dropping it
//! (the connection's own state is in conn.rs).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::args::Workload;
use crate::conn::{Client, Out, Phase, Role};
use crate::frame::upgrade_request;
use crate::generator::{Gen, Stage};
use crate::parser::Parser;
use crate::{deflate, tls};

impl Gen {
    /// Starts connections while fewer than `inflight` are connecting or handshaking.
    pub(crate) fn connect_more(&mut self, now: Instant) {
        let wanted = match (self.a.workload, self.stage) {
            (Workload::Connect, Stage::Run(_)) => usize::MAX,
            (Workload::Connect, _) => 0,
            (_, Stage::Setup) => self.target,
            _ => 0,
        };
        while self.connecting + self.closing < self.a.inflight && self.started < wanted {
            let stream = match connect_from(self.a.addr, self.source_addrs, self.started) {
                Ok(s) => s,
                Err(e) => {
                    self.c.failed += 1;
                    self.started += 1;
                    if self.c.failed <= 3 {
                        eprintln!("mioket-load: connect failed: {e}");
                    }
                    continue;
                }
            };
            let idx = self.free.pop().unwrap_or_else(|| {
                self.clients.push(None);
                self.clients.len() - 1
            });
            // Connection n joins room n % R: the first R are the rooms' first members,
            // and the publishers' connections.
            let n = self.started;
            let room = self.a.rooms.map_or(0, |r| (n % r) as u32);
            let role = if self.a.workload == Workload::Broadcast && self.publishers.len() < self.a.publishers {
                self.publishers.push(idx);
                Role::Publisher(self.publishers.len() as u32 - 1)
            } else if self.a.workload == Workload::Rooms && n < self.a.rooms.unwrap_or(0) {
                let p = n % self.a.publishers;
                self.room_pubs[p].conns.push((idx, room));
                Role::Publisher(p as u32)
            } else {
                Role::Plain
            };
            let session = match &self.a.tls {
                Some(config) => {
                    let host = self.a.host.rsplit_once(':').map_or(self.a.host.as_str(), |(h, _)| h);
                    match tls::connect(config, host.trim_start_matches('[').trim_end_matches(']')) {
                        Ok(session) => Some(Box::new(session)),
                        Err(e) => {
                            self.c.failed += 1;
                            self.started += 1;
                            if self.c.failed <= 3 {
                                eprintln!("mioket-load: TLS: {e}");
                            }
                            continue;
                        }
                    }
                }
                None => None,
            };
            let mut client = Client {
                stream,
                tls: session,
                phase: Phase::Connecting,
                role,
                head: Vec::new(),
                parser: Parser::default(),
                out: VecDeque::new(),
                out_off: 0,
                started: now,
                sent_at: now,
                waiting: false,
                seq: 0,
                in_flight: 0,
                got_close: false,
                room,
                last_seq: 0,
                deflater: None,
            };
            if let Err(e) =
                self.poll.registry().register(&mut client.stream, Token(idx), Interest::READABLE | Interest::WRITABLE)
            {
                eprintln!("mioket-load: register failed: {e}");
                self.c.failed += 1;
                self.started += 1;
                self.free.push(idx);
                continue;
            }
            self.clients[idx] = Some(client);
            self.live += 1;
            self.started += 1;
            self.connecting += 1;
        }
    }

    pub(crate) fn drop_client(&mut self, idx: usize, error: bool) {
        if let Some(client) = self.clients[idx].take() {
            self.live -= 1;
            if client.phase == Phase::Closing && self.a.workload == Workload::Connect {
                self.closing -= 1;
            }
            if matches!(client.phase, Phase::Connecting | Phase::Handshaking) {
                self.connecting -= 1;
                self.c.failed += 1;
            } else if error {
                self.c.errors += 1;
            }
            if let Role::Publisher(id) = client.role {
                if error {
                    eprintln!("mioket-load: publisher {id} lost");
                }
            }
            self.free.push(idx);
            // A rooms publisher goes on through its connections in its other rooms.
            if let (Workload::Rooms, Role::Publisher(id)) = (self.a.workload, client.role) {
                if self.running() {
                    for _ in 0..client.in_flight {
                        self.publish_room(id as usize, Instant::now());
                    }
                }
            }
        }
    }

    pub(crate) fn on_event(&mut self, idx: usize, now: Instant, hup: bool) {
        let Some(client) = self.clients[idx].as_mut() else { return };
        if client.phase == Phase::Connecting {
            match client.stream.take_error() {
                Ok(None) => {}
                _ => return self.drop_client(idx, true),
            }
            match client.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return self.drop_client(idx, true),
            }
            let _ = client.stream.set_nodelay(true);
            if self.a.raw {
                self.connecting -= 1;
                self.on_open(idx, now);
            } else {
                client.phase = Phase::Handshaking;
                let request = match self.a.rooms {
                    Some(_) => Out::Bytes(upgrade_request(
                        &format!("{}{}", self.a.room_base, client.room),
                        &self.a.host,
                        self.a.deflate,
                    )),
                    None => Out::Static(self.request),
                };
                client.out.push_back(request);
            }
        }
        if !self.read(idx, now, hup) {
            return;
        }
        self.flush(idx);
    }

    /// Reads until the socket is drained; false if the client is gone. `hup`: the
    /// peer's end of stream is known to be there, so read until it (a short read
    /// then does not mean drained).
    fn read(&mut self, idx: usize, now: Instant, hup: bool) -> bool {
        loop {
            let Some(client) = self.clients[idx].as_mut() else { return false };
            let read = match &mut client.tls {
                Some(session) => tls::read(session, &mut client.stream, &mut self.scratch),
                None => client.stream.read(&mut self.scratch),
            };
            let n = match read {
                Ok(0) => {
                    let clean = client.got_close;
                    self.on_end(idx, clean);
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    let clean = client.got_close;
                    self.on_end(idx, clean);
                    return false;
                }
            };
            self.c.bytes_in += n as u64;
            self.last_rx = now;
            let mut data = 0..n;
            if client.phase == Phase::Handshaking {
                // Collect the response head; what follows it is frames.
                let before = client.head.len();
                client.head.extend_from_slice(&self.scratch[..n]);
                let from = before.saturating_sub(3);
                let Some(end) = client.head[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                    if client.head.len() > 8192 {
                        self.drop_client(idx, true);
                        return false;
                    }
                    continue;
                };
                let end = from + end + 4;
                if !client.head.starts_with(b"HTTP/1.1 101") {
                    if self.c.failed < 3 {
                        let line = String::from_utf8_lossy(&client.head[..client.head.len().min(60)]).into_owned();
                        eprintln!("mioket-load: upgrade refused: {}", line.lines().next().unwrap_or(""));
                    }
                    self.drop_client(idx, true);
                    return false;
                }
                data = (end - before)..n;
                if self.a.deflate {
                    match deflate::parse_answer(&client.head[..end]) {
                        Ok(Some(agreement)) => {
                            client.parser.deflate = true;
                            client.parser.own = deflate::own_inflater(&agreement);
                            let sends = self.a.workload == Workload::Broadcast && !self.a.send_plain;
                            if sends && matches!(client.role, Role::Publisher(_)) {
                                client.deflater = Some(Box::new(deflate::Deflater::new(&agreement)));
                            }
                            self.c.deflate_conns += 1;
                            self.agreement.get_or_insert(agreement);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if self.c.failed < 3 {
                                eprintln!("mioket-load: bad permessage-deflate answer: {e}");
                            }
                            self.drop_client(idx, true);
                            return false;
                        }
                    }
                }
                client.head = Vec::new();
                self.connecting -= 1;
                self.on_open(idx, now);
            }
            let Some(client) = self.clients[idx].as_mut() else { return false };
            let mut evs = std::mem::take(&mut self.evs);
            let parsed = client.parser.feed(&self.scratch[data], &mut evs, &mut self.inflate);
            for ev in evs.drain(..) {
                self.on_frame(idx, ev, now);
            }
            self.evs = evs;
            if let Err(e) = parsed {
                if self.c.errors < 3 {
                    eprintln!("mioket-load: bad frame from the server: {e}");
                }
                self.drop_client(idx, true);
                return false;
            }
            match &self.clients[idx] {
                None => return false,
                // A short read drained the socket (what mio's edge triggering needs),
                // unless end of stream came with the data: no new edge would announce it.
                Some(c) if n < self.scratch.len() && !hup && c.phase == Phase::Open => return true,
                Some(_) => {}
            }
        }
    }

    pub(crate) fn flush(&mut self, idx: usize) {
        let Some(client) = self.clients[idx].as_mut() else { return };
        if let Some(session) = &mut client.tls {
            // What rustls sends by itself (the handshake, alerts), even with nothing queued.
            match tls::send_pending(session, &mut client.stream) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.drop_client(idx, true),
            }
        }
        while let Some(front) = client.out.front() {
            let bytes: &[u8] = match front {
                Out::Template(i) => &self.templates[*i],
                Out::Static(s) => s,
                Out::Bytes(b) => b,
            };
            let written = match &mut client.tls {
                Some(session) => tls::write(session, &mut client.stream, &bytes[client.out_off..]),
                None => client.stream.write(&bytes[client.out_off..]),
            };
            match written {
                Ok(0) => return self.drop_client(idx, true),
                Ok(n) => {
                    client.out_off += n;
                    if client.out_off == bytes.len() {
                        client.out_off = 0;
                        client.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_client(idx, true),
            }
        }
    }
}

/// Connects the `n`th connection from source address 127.0.0.(1 + n % sources), so that
/// more connections than one address has ports can reach the server.
fn connect_from(server: SocketAddr, sources: u8, n: usize) -> io::Result<TcpStream> {
    if sources <= 1 {
        return TcpStream::connect(server);
    }
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(sources)) as u8);
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS: completes in the loop
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}
