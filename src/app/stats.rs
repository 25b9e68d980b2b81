//! `GET /api/stats`: the operator console's one JSON document, built when asked and
//! never in between. It holds counters (monotonic since start), not rates: the
//! dashboard computes rates from two documents and the time between them.
//!
//! The one thing kept between calls is the baseline of "busiest rooms by messages":
//! each room's seq at the previous call (keyed by its generation, so a new room in an
//! old slot starts afresh). A room's messages in the interval are the difference.
//! The baseline lives only while someone asks: housekeeping drops it `BASELINE_TTL`
//! after the last call.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bus::Node;
use super::session::Role;
use super::{App, ClientIo, Listener};
use crate::backplane::Snapshot;
use crate::config::Mode;
use crate::memory;
use crate::pubsub::Seq;
use crate::rooms::Room;

/// Rooms listed in each busiest table.
pub(super) const BUSIEST: usize = 10;

/// Unasked for this long, the baseline of the busiest-by-messages table is dropped.
pub(super) const BASELINE_TTL: Duration = Duration::from_secs(30);

/// Each room's seq at the previous stats call, by room generation.
pub(super) struct Baseline {
    at: Instant,
    seqs: HashMap<u32, Seq>,
}

impl Baseline {
    /// When housekeeping drops it.
    pub(super) fn expires(&self) -> Instant {
        self.at + BASELINE_TTL
    }
}

#[derive(Serialize)]
struct Stats<'a> {
    version: &'static str,
    uptime_s: u64,
    /// Milliseconds since the previous call (the interval of `busiest_by_messages`),
    /// none on the first.
    interval_ms: Option<u64>,
    connections: Connections,
    rooms: usize,
    messages_in: u64,
    /// Data messages queued to clients: fan-out deliveries, echoes, welcomes, history.
    deliveries_out: u64,
    api_publishes: u64,
    bytes_in: u64,
    bytes_out: u64,
    refusals: BTreeMap<&'static str, u64>,
    closes: BTreeMap<&'static str, u64>,
    busiest_by_members: Vec<Busy<'a>>,
    busiest_by_messages: Vec<Busy<'a>>,
    memory: Memory,
    /// `null` without `--redis`.
    backplane: Option<Snapshot>,
    nodes: Vec<Node>,
}

/// Connections now, by kind (one WebSocket may count in several: TLS and deflate).
#[derive(Default, Serialize)]
struct Connections {
    /// Open WebSockets (closing ones included until they are gone).
    websockets: usize,
    plain: usize,
    v1: usize,
    tls: usize,
    deflate: usize,
    /// Connections not yet upgraded (handshakes, HTTP requests).
    http: usize,
}

#[derive(Serialize)]
struct Busy<'a> {
    room: &'a str,
    members: usize,
    seq: Seq,
    /// Messages since the previous call (0 on the first).
    messages: Seq,
}

#[derive(Serialize)]
struct Memory {
    /// Resident set size, none where /proc is not there.
    rss_bytes: Option<u64>,
    history_bytes: usize,
    history_messages: usize,
    /// What the clients' outgoing queues hold (/metrics' `mioket_output_queued_bytes`).
    output_queued_bytes: usize,
}

impl<T: ClientIo> App<T> {
    /// The stats document, as JSON.
    pub(super) fn stats_json(&mut self, now: Instant) -> Vec<u8> {
        let uptime_s = now.saturating_duration_since(self.started).as_secs();
        let connections = self.connections();
        let previous = self.baseline.take();
        let interval_ms = previous.as_ref().map(|b| now.saturating_duration_since(b.at).as_millis() as u64);
        let messages_since = |room: &Room| match &previous {
            None => 0,
            // A room made since the previous call counts from its start.
            Some(b) => room.topic.last_seq().saturating_sub(b.seqs.get(&room.generation()).copied().unwrap_or(0)),
        };
        let by_members = top(self.rooms.iter(), |r| r.topic.member_count() as u64);
        let by_messages = top(self.rooms.iter().filter(|r| messages_since(r) > 0), messages_since);
        let (history_messages, history_bytes) = match self.config.mode {
            Mode::Broadcast => self.rooms.history_totals(),
            Mode::Echo => (self.echo_history.len(), self.echo_history.bytes()),
        };
        let m = &self.metrics;
        let stats = Stats {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s,
            interval_ms,
            rooms: self.rooms.len(),
            messages_in: m.messages_in,
            deliveries_out: m.messages_out,
            api_publishes: m.api_publishes,
            bytes_in: m.bytes_read,
            bytes_out: m.bytes_written,
            refusals: m.refusals().collect(),
            closes: m.closes_by_reason().collect(),
            busiest_by_members: by_members.into_iter().map(|r| busy(r, messages_since(r))).collect(),
            busiest_by_messages: by_messages.into_iter().map(|r| busy(r, messages_since(r))).collect(),
            memory: Memory {
                rss_bytes: memory::rss_bytes(),
                history_bytes,
                history_messages,
                output_queued_bytes: self.queued,
            },
            backplane: self.bus.mirror().map(|mirror| mirror.snapshot(now)),
            nodes: self.bus.nodes(uptime_s, connections.websockets),
            connections,
        };
        let json = serde_json::to_vec(&stats).unwrap_or_default();
        let seqs = self.rooms.iter().map(|r| (r.generation(), r.topic.last_seq())).collect();
        self.baseline = Some(Baseline { at: now, seqs });
        json
    }

    fn connections(&self) -> Connections {
        // Only WebSockets on the main port exist, and with a certificate they all speak TLS.
        let tls = self.config.tls_cert.is_some();
        let mut c = Connections::default();
        for (_, client) in &self.clients {
            match client.role {
                Role::Pending => c.http += 1,
                Role::Plain => c.plain += 1,
                Role::V1 => c.v1 += 1,
            }
            if client.role != Role::Pending {
                c.websockets += 1;
                c.tls += usize::from(tls && client.listener == Listener::Main);
                c.deflate += usize::from(client.conn.takes_compressed());
            }
        }
        c
    }
}

fn busy(room: &Room, messages: Seq) -> Busy<'_> {
    Busy { room: room.name(), members: room.topic.member_count(), seq: room.topic.last_seq(), messages }
}

/// The `BUSIEST` rooms with the highest `key`, highest first (ties by name).
fn top<'a>(rooms: impl Iterator<Item = &'a Room>, key: impl Fn(&Room) -> u64) -> Vec<&'a Room> {
    let mut all: Vec<(u64, &Room)> = rooms.map(|r| (key(r), r)).collect();
    let order = |a: &(u64, &Room), b: &(u64, &Room)| b.0.cmp(&a.0).then_with(|| a.1.name().cmp(b.1.name()));
    if all.len() > BUSIEST {
        all.select_nth_unstable_by(BUSIEST - 1, order);
        all.truncate(BUSIEST);
    }
    all.sort_unstable_by(order);
    all.into_iter().map(|(_, r)| r).collect()
}
