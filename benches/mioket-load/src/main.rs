//! mioket-load: a WebSocket load generator on one mio loop. Its WebSocket client is its
//! own (std, mio and socket2; nothing from mioket), so that the server is never tested
//! against its own protocol code.
//!
//! Workloads (each bounded by --duration, each printing one JSON line and a summary):
//!   echo       C connections each send an S-byte binary message and wait for its echo
//!   broadcast  N subscribers and P publishers; a publisher sends its next message when
//!              its previous one came back to it; delivery latency from a timestamp
//!              embedded in the payload
//!   rooms      R rooms of M members, each member connected with its room's path
//!              (`/room-<i>`); P publishers publish into their rooms in turn, each
//!              through its own member of the room; delivery latency as in broadcast,
//!              and any message that reaches a member of another room is a misroute
//!   connect    open, upgrade, close (the full closing handshake), K in flight
//!   idle       hold N upgraded connections; the server's RSS per connection
//!   empty-rooms  the server's RSS per empty room: N open-upgrade-close cycles each to
//!              a room of its own, after N to one room to warm the allocator up
//!
//! Client frames are masked once, when the workload starts; per message only the
//! timestamp bytes of a broadcast are re-masked. Payload bytes are never copied or
//! unmasked on receipt: only the first few bytes of each message are looked at.
//! Unexpected text frames (a welcome, history replay) are skipped and pings answered.
//! Only loopback (127.0.0.0/8) targets are accepted. A `wss://` URL runs every workload
//! over TLS (rustls, see `tls.rs`).

use std::io;
use std::time::{Duration, Instant};

use args::{parse_args, Args, Workload, USAGE};
use client::{Client, CONNS_PER_SOURCE};
use empty_rooms::empty_rooms;
use frame::{masked_frame, upgrade_request, OP_BINARY, OP_CLOSE};
use histogram::Histogram;
use mio::{Events, Poll};
use parser::{Ev, Inflate};
use procfs::rss_bytes;
use report::cpu_seconds;
use stamp::{run_nonce, BCAST_HEAD};
use workloads::RoomPub;

mod args;
mod client;
mod corpus;
mod deflate;
mod empty_rooms;
mod frame;
mod histogram;
mod parser;
mod procfs;
mod report;
mod stamp;
mod tls;
mod workloads;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Setup,
    Settle(Instant),
    Run(Instant),
    /// --messages reached: nothing more is sent, what is in flight still counts, so
    /// that the count is exactly what the server did (for callgrind and strace).
    Drain(Instant),
    Done,
}

#[derive(Default)]
struct Counters {
    opened: u64,
    failed: u64,
    errors: u64,
    messages: u64,
    deliveries: u64,
    handshakes: u64,
    cycles: u64,
    skipped_text: u64,
    pings: u64,
    bytes_in: u64,
    /// Rooms: messages of a room that reached a member of another room.
    misroutes: u64,
    /// Rooms: room sequence numbers a member never got (a later one came first).
    gaps: u64,
    /// Rooms: messages that came after a later one of the same room, or twice.
    reordered: u64,
    /// Counted messages (deliveries, echoes): bytes on the wire (frame headers and
    /// payloads as received), inflated payload bytes, how many came compressed.
    wire_bytes: u64,
    payload_bytes: u64,
    compressed: u64,
    /// Connections whose 101 agreed to permessage-deflate.
    deflate_conns: u64,
    /// Corpus runs: messages whose inflated bytes or length are not what was sent.
    bad_payloads: u64,
    /// Messages we sent compressed.
    sent_compressed: u64,
}

struct Gen {
    a: Args,
    poll: Poll,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    scratch: Vec<u8>,
    evs: Vec<Ev>,
    templates: Vec<Vec<u8>>,
    request: &'static [u8],
    close_frame: &'static [u8],
    epoch: Instant,
    nonce: u32,
    stage: Stage,
    window_start: Instant,
    window_end: Option<Instant>,
    setup_deadline: Instant,
    /// Connections wanted in total (setup) and currently connecting or handshaking.
    target: usize,
    started: usize,
    connecting: usize,
    /// Clients that exist (any phase).
    live: usize,
    last_rx: Instant,
    /// Connect workload: cycles past their upgrade, closing.
    closing: usize,
    c: Counters,
    hist: Histogram,
    publishers: Vec<usize>,
    room_pubs: Vec<RoomPub>,
    cpu_start: Option<f64>,
    self_cpu_start: Option<f64>,
    rss_start: Option<u64>,
    rss_open: Option<u64>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N that connections take in turn.
    source_addrs: u8,
    inflate: Inflate,
    corpus: Option<corpus::Corpus>,
    /// The first agreement a 101 gave (--deflate).
    agreement: Option<deflate::Agreement>,
    /// Bytes read from the sockets when the window opened and when it closed.
    bytes_in_start: u64,
    bytes_in_end: Option<u64>,
    /// --warmup: when the measured window opens (its CPU and byte counts start then).
    window_opens: Option<Instant>,
}

impl Gen {
    fn new(a: Args) -> io::Result<Gen> {
        let now = Instant::now();
        let nonce = run_nonce();
        let mut templates = Vec::new();
        let mut publishers = 0;
        match a.workload {
            Workload::Echo => {
                let payload: Vec<u8> = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
                templates.push(masked_frame(OP_BINARY, &payload));
            }
            Workload::Broadcast => {
                publishers = a.publishers;
                for id in 0..a.publishers as u32 {
                    let mut payload: Vec<u8> = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
                    payload[8..12].copy_from_slice(&id.to_le_bytes());
                    payload[12..16].copy_from_slice(&nonce.to_le_bytes());
                    templates.push(masked_frame(OP_BINARY, &payload));
                }
            }
            Workload::Rooms => {
                // One frame per room: its publisher and its room are fixed; the send time
                // and the room's sequence number are masked in per message.
                for room in 0..a.rooms.unwrap_or(1) as u32 {
                    let id = room % a.publishers as u32;
                    let mut payload: Vec<u8> = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
                    payload[8..12].copy_from_slice(&id.to_le_bytes());
                    payload[12..16].copy_from_slice(&nonce.to_le_bytes());
                    payload[24..28].copy_from_slice(&room.to_le_bytes());
                    templates.push(masked_frame(OP_BINARY, &payload));
                }
            }
            Workload::Connect | Workload::Idle | Workload::EmptyRooms => {}
        }
        let request = upgrade_request(&a.path, &a.host, a.deflate);
        let close_frame = masked_frame(OP_CLOSE, &1000u16.to_be_bytes());
        let target = match a.workload {
            Workload::Echo | Workload::Idle => a.conns,
            Workload::Broadcast => a.subscribers + publishers,
            Workload::Rooms => a.rooms.unwrap_or(1) * a.members,
            Workload::Connect | Workload::EmptyRooms => 0,
        };
        let room_pubs = match a.workload {
            Workload::Rooms => (0..a.publishers).map(|_| RoomPub { conns: Vec::new(), next: 0 }).collect(),
            _ => Vec::new(),
        };
        let setup_deadline = now + a.setup_timeout;
        let source_addrs = a.source_addrs.unwrap_or(target.div_ceil(CONNS_PER_SOURCE).clamp(1, 254) as u8);
        let pid = a.server_pid;
        let corpus = a.corpus.map(corpus::Corpus::new);
        Ok(Gen {
            poll: Poll::new()?,
            clients: Vec::new(),
            free: Vec::new(),
            scratch: vec![0; 256 * 1024],
            evs: Vec::new(),
            templates,
            request: Box::leak(request.into_boxed_slice()),
            close_frame: Box::leak(close_frame.into_boxed_slice()),
            epoch: now,
            nonce,
            stage: Stage::Setup,
            window_start: now,
            window_end: None,
            setup_deadline,
            target,
            started: 0,
            connecting: 0,
            live: 0,
            last_rx: now,
            closing: 0,
            c: Counters::default(),
            hist: Histogram::new(),
            publishers: Vec::new(),
            room_pubs,
            cpu_start: None,
            self_cpu_start: None,
            rss_start: pid.and_then(rss_bytes),
            rss_open: None,
            source_addrs,
            inflate: Inflate::new(corpus.as_ref().map(|_| BCAST_HEAD), !a.inflate_every),
            corpus,
            agreement: None,
            bytes_in_start: 0,
            bytes_in_end: None,
            window_opens: None,
            a,
        })
    }

    fn ns_since_epoch(&self, t: Instant) -> u64 {
        t.duration_since(self.epoch).as_nanos() as u64
    }

    /// New messages and connections are started.
    fn running(&self) -> bool {
        matches!(self.stage, Stage::Run(_))
    }

    /// What arrives is counted.
    fn counting(&self) -> bool {
        matches!(self.stage, Stage::Run(_) | Stage::Drain(_))
    }

    fn reached_limit(&mut self, now: Instant) {
        self.window_end = Some(now);
        self.stage = Stage::Drain(now + Duration::from_secs(10));
    }

    /// Drained: nothing in flight, and quiet for a moment (broadcast deliveries).
    fn drained(&self, now: Instant) -> bool {
        let quiet = now.duration_since(self.last_rx) > Duration::from_millis(200);
        match self.a.workload {
            Workload::Connect => self.connecting + self.closing == 0,
            _ => quiet && self.clients.iter().flatten().all(|c| !c.waiting),
        }
    }

    /// Starts the window's CPU and byte counts once it is open.
    fn open_window(&mut self, now: Instant) {
        if self.window_opens.is_some_and(|t| now >= t) {
            self.window_opens = None;
            self.bytes_in_start = self.c.bytes_in;
            self.cpu_start = self.a.server_pid.and_then(cpu_seconds);
            self.self_cpu_start = cpu_seconds(std::process::id());
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(4096);
        if self.a.workload == Workload::Connect {
            self.start_window(Instant::now());
        }
        loop {
            let now = Instant::now();
            self.open_window(now);
            if self.window_end.is_some() && self.bytes_in_end.is_none() {
                self.bytes_in_end = Some(self.c.bytes_in);
            }
            match self.stage {
                Stage::Setup => {
                    let settled =
                        self.c.opened as usize + self.c.failed as usize >= self.target && self.connecting == 0;
                    if settled || now >= self.setup_deadline {
                        if !settled {
                            eprintln!(
                                "mioket-load: setup timed out: {} of {} connections open",
                                self.c.opened, self.target
                            );
                        }
                        self.stage = Stage::Settle(now + self.a.settle);
                    }
                }
                Stage::Settle(until) if now >= until => {
                    self.rss_open = self.a.server_pid.and_then(rss_bytes);
                    self.start_window(now);
                }
                Stage::Run(until) if now >= until => {
                    self.window_end = Some(now);
                    self.stage = Stage::Done;
                }
                // Nobody left to load the server with (it went away): stop.
                Stage::Run(_) if self.a.workload != Workload::Connect && self.live == 0 => {
                    eprintln!("mioket-load: every connection is gone");
                    self.window_end = Some(now);
                    self.stage = Stage::Done;
                }
                Stage::Run(_)
                    if self.a.workload == Workload::Connect
                        && self.c.failed > 1000
                        && self.c.failed > 10 * self.c.handshakes =>
                {
                    eprintln!("mioket-load: connections keep failing");
                    self.window_end = Some(now);
                    self.stage = Stage::Done;
                }
                Stage::Drain(until) if now >= until || self.drained(now) => self.stage = Stage::Done,
                Stage::Done => return Ok(()),
                _ => {}
            }
            self.connect_more(now);
            let timeout = match self.stage {
                Stage::Settle(t) | Stage::Run(t) => t.saturating_duration_since(now).min(Duration::from_millis(50)),
                Stage::Drain(_) => Duration::from_millis(10),
                _ => Duration::from_millis(50),
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                self.on_event(event.token().0, now, event.is_read_closed() || event.is_error());
            }
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mioket-load: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if args.workload == Workload::EmptyRooms {
        if let Err(e) = empty_rooms(args) {
            eprintln!("mioket-load: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut gen = match Gen::new(args) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("mioket-load: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = gen.run() {
        eprintln!("mioket-load: {e}");
        std::process::exit(1);
    }
    gen.report();
    std::thread::sleep(gen.a.hold);
}
