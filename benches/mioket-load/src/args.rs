//! The command line: its usage text, its workloads, its options and their defaults.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::stamp::{BCAST_HEAD, ROOMS_HEAD};
use crate::{corpus, tls};

pub(crate) const USAGE: &str = "\
mioket-load: WebSocket load generator (one mio loop)

Usage: mioket-load WORKLOAD [OPTIONS]
  WORKLOAD is echo, broadcast, rooms, connect, idle or empty-rooms.

Options:
  --url ws://127.0.0.1:PORT/PATH  server to load; loopback addresses only; wss:// for TLS
                         [default: ws://127.0.0.1:8765/]
  --tls-ca FILE          wss://: check the server's certificate against this PEM file
                         [default: no check of the certificate]
  --duration SECS        measured time [default: 5]
  --conns C              echo: connections [default: 100]; idle: connections to hold [default: 10000]
  --size S               message size in bytes [default: 20 for echo, 32 for broadcast (at
                         least 24) and rooms (at least 28)]
  --subscribers N        broadcast: subscribers that only listen [default: 100]
  --publishers P         broadcast: publishers (they also receive everything) [default: 1];
                         rooms: publishers, each owning every P-th room [default: 10]
  --rooms R              rooms: rooms [default: 1000]; idle and connect: connection n goes
                         to path /room-<n % R> (after the --url path); empty-rooms: rooms
                         to create [default: 10000]
  --members M            rooms: members per room, its publisher's connection included
                         [default: 10]
  --window W             rooms: messages each publisher keeps in flight, into its rooms in
                         turn (more than one per room only beyond R / P) [default: 10]
  --inflight K           connect, and connection setup: handshakes in flight [default: 64]
  --messages M           stop early after M echoes, M published messages or M handshakes
  --server-pid PID       read the server's CPU time and RSS from /proc/PID
  --settle SECS          pause after setup before measuring [default: 0.3; idle: 1]
  --warmup SECS          broadcast: publish this long before the measured window, which
                         then counts what arrives within it (steady state: servers that set
                         up per-connection state on the first messages, such as compressors,
                         have it by then, and latencies of seconds do not cut the count)
                         [default: 0: the window counts messages sent within it]
  --setup-timeout SECS   give up opening connections after this long [default: 60]
  --raw                  plain TCP: no HTTP upgrade, and masked frames may come back (for a
                         TCP echo server: the load generator's own limit)
  --source-addrs K       spread connections over source addresses 127.0.0.1 .. 127.0.0.K
                         [default: one per 25,000 connections; each address has about
                         28,000 ephemeral ports]
  --hold SECS            after the report, keep the connections open this long (so a
                         tracer can stop before teardown) [default: 0]
  --deflate              offer permessage-deflate (client_no_context_takeover;
                         client_max_window_bits), check the 101's answer, inflate what
                         comes compressed, compress what we send (broadcast) when it shrinks;
                         report bytes on the wire against inflated bytes
  --send-plain           with --deflate: send every message uncompressed
  --inflate-every        with --deflate: inflate every copy of a message compressed without
                         context, even bytes inflated just before [default: a copy whose
                         bytes equal one of the last 64 inflated takes its result]
  --corpus chat|json     broadcast: payloads are the stamp and then a document of the corpus
                         (chat lines of 60-200 B, JSON documents of 1-16 KiB) instead of
                         --size bytes of filler
  --label NAME           name of the server, copied into the output
  --quiet                only the JSON line
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Workload {
    Echo,
    Broadcast,
    Connect,
    Idle,
    Rooms,
    EmptyRooms,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Broadcast => "broadcast",
            Workload::Connect => "connect",
            Workload::Idle => "idle",
            Workload::Rooms => "rooms",
            Workload::EmptyRooms => "empty-rooms",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Args {
    pub(crate) workload: Workload,
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) duration: Duration,
    pub(crate) conns: usize,
    pub(crate) size: usize,
    pub(crate) subscribers: usize,
    pub(crate) publishers: usize,
    /// Rooms by path: connection n opens `{room_base}{n % rooms}`.
    pub(crate) rooms: Option<usize>,
    pub(crate) room_base: String,
    pub(crate) members: usize,
    /// Rooms: messages each publisher keeps in flight.
    pub(crate) window: usize,
    pub(crate) inflight: usize,
    pub(crate) messages: Option<u64>,
    pub(crate) server_pid: Option<u32>,
    pub(crate) settle: Duration,
    pub(crate) setup_timeout: Duration,
    pub(crate) raw: bool,
    pub(crate) source_addrs: Option<u8>,
    pub(crate) hold: Duration,
    pub(crate) label: String,
    pub(crate) quiet: bool,
    /// wss://: the TLS client configuration.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// Offer permessage-deflate.
    pub(crate) deflate: bool,
    /// With `deflate`: send uncompressed.
    pub(crate) send_plain: bool,
    /// With `deflate`: inflate every copy of a broadcast, even bytes seen before.
    pub(crate) inflate_every: bool,
    /// Broadcast: publishing before the measured window.
    pub(crate) warmup: Duration,
    /// Broadcast payloads from a corpus.
    pub(crate) corpus: Option<corpus::Kind>,
}

pub(crate) fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let workload = match it.next().as_deref() {
        Some("echo") => Workload::Echo,
        Some("broadcast") => Workload::Broadcast,
        Some("connect") => Workload::Connect,
        Some("idle") => Workload::Idle,
        Some("rooms") => Workload::Rooms,
        Some("empty-rooms") => Workload::EmptyRooms,
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown workload {other:?}")),
    };
    let mut url = "ws://127.0.0.1:8765/".to_string();
    let mut a = Args {
        workload,
        addr: "127.0.0.1:8765".parse().unwrap(),
        host: String::new(),
        path: String::new(),
        duration: Duration::from_secs(5),
        conns: if workload == Workload::Idle { 10_000 } else { 100 },
        size: if matches!(workload, Workload::Broadcast | Workload::Rooms) { 32 } else { 20 },
        subscribers: 100,
        publishers: if workload == Workload::Rooms { 10 } else { 1 },
        rooms: match workload {
            Workload::Rooms => Some(1000),
            Workload::EmptyRooms => Some(10_000),
            _ => None,
        },
        room_base: String::new(),
        members: 10,
        window: 10,
        inflight: 64,
        messages: None,
        server_pid: None,
        settle: Duration::from_millis(if matches!(workload, Workload::Idle | Workload::EmptyRooms) {
            1000
        } else {
            300
        }),
        setup_timeout: Duration::from_secs(60),
        raw: false,
        source_addrs: None,
        hold: Duration::ZERO,
        label: "server".into(),
        quiet: false,
        tls: None,
        deflate: false,
        send_plain: false,
        inflate_every: false,
        warmup: Duration::ZERO,
        corpus: None,
    };
    let mut tls_ca = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let secs = |v: String| -> Result<Duration, String> {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("bad seconds {v:?}"))
        };
        let num = |v: String| -> Result<u64, String> { v.parse().map_err(|_| format!("bad number {v:?}")) };
        match flag.as_str() {
            "--url" => url = value()?,
            "--duration" => a.duration = secs(value()?)?,
            "--conns" => a.conns = num(value()?)? as usize,
            "--size" => a.size = num(value()?)? as usize,
            "--subscribers" => a.subscribers = num(value()?)? as usize,
            "--publishers" => a.publishers = num(value()?)? as usize,
            "--rooms" => a.rooms = Some((num(value()?)? as usize).max(1)),
            "--members" => a.members = (num(value()?)? as usize).max(1),
            "--window" => a.window = (num(value()?)? as usize).max(1),
            "--inflight" => a.inflight = (num(value()?)? as usize).max(1),
            "--messages" => a.messages = Some(num(value()?)?),
            "--server-pid" => a.server_pid = Some(num(value()?)? as u32),
            "--settle" => a.settle = secs(value()?)?,
            "--warmup" => a.warmup = secs(value()?)?,
            "--setup-timeout" => a.setup_timeout = secs(value()?)?,
            "--raw" => a.raw = true,
            "--source-addrs" => {
                a.source_addrs = Some(num(value()?)?.clamp(1, 254) as u8);
            }
            "--hold" => a.hold = secs(value()?)?,
            "--label" => a.label = value()?,
            "--quiet" => a.quiet = true,
            "--tls-ca" => tls_ca = Some(value()?),
            "--deflate" => a.deflate = true,
            "--send-plain" => a.send_plain = true,
            "--inflate-every" => a.inflate_every = true,
            "--corpus" => {
                let v = value()?;
                a.corpus = Some(corpus::Kind::parse(&v).ok_or_else(|| format!("unknown corpus {v:?} (chat or json)"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let rest = match url.strip_prefix("wss://") {
        Some(rest) => {
            a.tls = Some(tls::config(tls_ca.as_deref())?);
            rest
        }
        None => url.strip_prefix("ws://").ok_or("--url must start with ws:// or wss://")?,
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    a.addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("bad address {hostport:?}: {e}"))?
        .find(|s| s.is_ipv4())
        .ok_or("no IPv4 address")?;
    // This tool sends floods: never anywhere but this machine.
    match a.addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {}
        ip => return Err(format!("refusing {ip}: only 127.0.0.0/8 targets are allowed")),
    }
    a.host = hostport.to_string();
    a.path = path.to_string();
    if a.workload == Workload::Broadcast && a.size < BCAST_HEAD {
        a.size = BCAST_HEAD;
    }
    if a.workload == Workload::Rooms {
        a.size = a.size.max(ROOMS_HEAD);
        a.publishers = a.publishers.clamp(1, a.rooms.unwrap_or(1));
    }
    if a.rooms.is_some() && a.raw {
        return Err("--raw has no request path: rooms need the HTTP upgrade".into());
    }
    if a.deflate && a.raw {
        return Err("--deflate needs the HTTP upgrade: not with --raw".into());
    }
    if a.corpus.is_some() && a.workload != Workload::Broadcast {
        return Err("--corpus is for the broadcast workload".into());
    }
    if a.tls.is_some() && (a.raw || a.workload == Workload::EmptyRooms) {
        return Err("wss:// is for the WebSocket workloads but empty-rooms, without --raw".into());
    }
    // The rooms' paths go under the --url path (its query, if any, is not kept).
    let base = a.path.split('?').next().unwrap_or("");
    a.room_base = format!("{}/room-", base.trim_end_matches('/'));
    Ok(a)
}
