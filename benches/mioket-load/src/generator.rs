//! The generator: its state, its counters and its loop through the stages of a run.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::args::{Args, Workload};
use crate::conn::{Client, CONNS_PER_SOURCE};
use crate::frame::{masked_frame, upgrade_request, OP_BINARY, OP_CLOSE};
use crate::histogram::Histogram;
use crate::parser::{Ev, Inflate};
use crate::procfs::{cpu_seconds, rss_bytes};
use crate::stamp::{run_nonce, BCAST_HEAD};
use crate::{corpus, deflate};

/// A rooms publisher: its publishing connections (client index and room), one per room
/// it owns (rooms p, p + P, p + 2P, ...), which it publishes through in turn, and the
/// next one.
pub(crate) struct RoomPub {
    pub(crate) conns: Vec<(usize, u32)>,
    pub(crate) next: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stage {
    Setup,
    Settle(Instant),
    Run(Instant),
    /// --messages reached: nothing more is sent, what is in flight still counts, so
    /// that the count is exactly what the server did (for callgrind and strace).
    Drain(Instant),
    Done,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) opened: u64,
    pub(crate) failed: u64,
    pub(crate) errors: u64,
    pub(crate) messages: u64,
    pub(crate) deliveries: u64,
    pub(crate) handshakes: u64,
    pub(crate) cycles: u64,
    pub(crate) skipped_text: u64,
    pub(crate) pings: u64,
    pub(crate) bytes_in: u64,
    /// Rooms: messages of a room that reached a member of another room.
    pub(crate) misroutes: u64,
    /// Rooms: room sequence numbers a member never got (a later one came first).
    pub(crate) gaps: u64,
    /// Rooms: messages that came after a later one of the same room, or twice.
    pub(crate) reordered: u64,
    /// Counted messages (deliveries, echoes): bytes on the wire (frame headers and
    /// payloads as received), inflated payload bytes, how many came compressed.
    pub(crate) wire_bytes: u64,
    pub(crate) payload_bytes: u64,
    pub(crate) compressed: u64,
    /// Connections whose 101 agreed to permessage-deflate.
    pub(crate) deflate_conns: u64,
    /// Corpus runs: messages whose inflated bytes or length are not what was sent.
    pub(crate) bad_payloads: u64,
    /// Messages we sent compressed.
    pub(crate) sent_compressed: u64,
    /// Broadcast and rooms: when the last counted message arrived, and the longest
    /// time between two (a server's pause, as during a binary upgrade).
    pub(crate) last_delivery_ns: u64,
    pub(crate) max_gap_ns: u64,
}

impl Counters {
    /// A counted delivery at `now_ns`.
    pub(crate) fn delivered(&mut self, now_ns: u64) {
        self.deliveries += 1;
        if self.last_delivery_ns != 0 {
            self.max_gap_ns = self.max_gap_ns.max(now_ns.saturating_sub(self.last_delivery_ns));
        }
        self.last_delivery_ns = now_ns;
    }
}

pub(crate) struct Gen {
    pub(crate) a: Args,
    pub(crate) poll: Poll,
    pub(crate) clients: Vec<Option<Client>>,
    pub(crate) free: Vec<usize>,
    pub(crate) scratch: Vec<u8>,
    pub(crate) evs: Vec<Ev>,
    pub(crate) templates: Vec<Vec<u8>>,
    pub(crate) request: &'static [u8],
    pub(crate) close_frame: &'static [u8],
    pub(crate) epoch: Instant,
    pub(crate) nonce: u32,
    pub(crate) stage: Stage,
    pub(crate) window_start: Instant,
    pub(crate) window_end: Option<Instant>,
    pub(crate) setup_deadline: Instant,
    /// Connections wanted in total (setup) and currently connecting or handshaking.
    pub(crate) target: usize,
    pub(crate) started: usize,
    pub(crate) connecting: usize,
    /// Clients that exist (any phase).
    pub(crate) live: usize,
    pub(crate) last_rx: Instant,
    /// Connect workload: cycles past their upgrade, closing.
    pub(crate) closing: usize,
    pub(crate) c: Counters,
    pub(crate) hist: Histogram,
    pub(crate) publishers: Vec<usize>,
    pub(crate) room_pubs: Vec<RoomPub>,
    pub(crate) cpu_start: Option<f64>,
    pub(crate) self_cpu_start: Option<f64>,
    pub(crate) rss_start: Option<u64>,
    pub(crate) rss_open: Option<u64>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N that connections take in turn.
    pub(crate) source_addrs: u8,
    pub(crate) inflate: Inflate,
    pub(crate) corpus: Option<corpus::Corpus>,
    /// The first agreement a 101 gave (--deflate).
    pub(crate) agreement: Option<deflate::Agreement>,
    /// Bytes read from the sockets when the window opened and when it closed.
    pub(crate) bytes_in_start: u64,
    pub(crate) bytes_in_end: Option<u64>,
    /// --warmup: when the measured window opens (its CPU and byte counts start then).
    pub(crate) window_opens: Option<Instant>,
}

impl Gen {
    pub(crate) fn new(a: Args) -> io::Result<Gen> {
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

    pub(crate) fn ns_since_epoch(&self, t: Instant) -> u64 {
        t.duration_since(self.epoch).as_nanos() as u64
    }

    /// New messages and connections are started.
    pub(crate) fn running(&self) -> bool {
        matches!(self.stage, Stage::Run(_))
    }

    /// What arrives is counted.
    pub(crate) fn counting(&self) -> bool {
        matches!(self.stage, Stage::Run(_) | Stage::Drain(_))
    }

    pub(crate) fn reached_limit(&mut self, now: Instant) {
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
    pub(crate) fn open_window(&mut self, now: Instant) {
        if self.window_opens.is_some_and(|t| now >= t) {
            self.window_opens = None;
            self.bytes_in_start = self.c.bytes_in;
            self.cpu_start = self.a.server_pid.and_then(cpu_seconds);
            self.self_cpu_start = cpu_seconds(std::process::id());
        }
    }

    pub(crate) fn run(&mut self) -> io::Result<()> {
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
