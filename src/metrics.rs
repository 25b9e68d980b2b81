//! Counters for `GET /metrics`, in the Prometheus text exposition format (0.0.4).
//! Plain integers bumped by the loop: no atomics, no locks, no hashing per message.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::error::HandshakeError;
use crate::frame::CloseCode;

/// Why a connection was refused or dropped before it became a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    BadHandshake,
    Origin,
    OverMaxConnections,
    HandshakeTimeout,
}

impl Rejection {
    pub fn of(err: HandshakeError) -> Rejection {
        match err {
            HandshakeError::OriginRefused => Rejection::Origin,
            _ => Rejection::BadHandshake,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Rejection::BadHandshake => "bad_handshake",
            Rejection::Origin => "origin",
            Rejection::OverMaxConnections => "over_max_connections",
            Rejection::HandshakeTimeout => "handshake_timeout",
        }
    }

    const ALL: [Rejection; 4] =
        [Rejection::BadHandshake, Rejection::Origin, Rejection::OverMaxConnections, Rejection::HandshakeTimeout];
}

/// Why a WebSocket ended, counted once where it is decided (`Metrics::closed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent the first close.
    Client,
    /// The stream ended (or failed) without a close frame.
    Dropped,
    /// The server is stopping (1001).
    Shutdown,
    /// Past --max-backpressure (1008).
    SlowConsumer,
    /// No pong within --ping-timeout (1011).
    HeartbeatTimeout,
    /// A message over --max-message (1009).
    TooBig,
    /// Any other fault of the peer's bytes (1002, 1007, ...).
    ProtocolError,
    /// Over --publish-rate (4429).
    RateLimited,
    /// A token that is invalid or missing for a v1 upgrade (44xx, after the 101).
    InvalidToken,
    /// A token that expired while connected (4001).
    TokenExpired,
    /// A room its grant does not allow, or a refused upgrade's user limit (1008, 4403, 4429).
    Forbidden,
    /// Too much unfinished input held across connections (1013).
    Busy,
    /// Redis unreachable, a room's state lost, or too many rooms (1013).
    Backplane,
    /// Disconnected through the API (4410).
    Disconnected,
}

/// The labels of `CloseReason`, in its order.
pub const CLOSE_REASONS: [&str; 14] = [
    "client",
    "dropped",
    "shutdown",
    "slow_consumer",
    "heartbeat_timeout",
    "too_big",
    "protocol_error",
    "rate_limited",
    "invalid_token",
    "token_expired",
    "forbidden",
    "busy",
    "backplane",
    "disconnected",
];

/// Upper bounds of the loop-iteration histogram, in microseconds.
const ITERATION_BUCKETS_US: [u64; 7] = [10, 50, 100, 500, 1_000, 10_000, 100_000];

/// Part of a binary upgrade's snapshot, so that counters never go back: as JSON by
/// field name (src/upgrade/snapshot.rs), so a counter added or removed is no format
/// change (a new one starts at 0); an array whose length changes is one.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Metrics {
    pub accepted: u64,
    rejected: [u64; 4],
    pub upgrades: u64,
    /// (close code, started by the peer) -> count; code 1006: ended without a close.
    #[serde(with = "crate::frozen::pairs")]
    closes: BTreeMap<(CloseCode, bool), u64>,
    /// Closes by reason (`CloseReason as usize`).
    closes_by_reason: [u64; CLOSE_REASONS.len()],
    pub messages_in: u64,
    pub message_bytes_in: u64,
    pub messages_out: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub fanout_deliveries: u64,
    pub slow_consumers: u64,
    pub heartbeat_timeouts: u64,
    pub http_requests: u64,
    /// mioket.v1 ops by kind (`Op::index`), refused ops by reason (`OpError as usize`),
    /// resumes by outcome (recovered, not).
    pub ops: [u64; 4],
    pub op_errors: [u64; OP_ERROR_KINDS],
    pub resumes: [u64; 2],
    pub presence_updates: u64,
    pub api_publishes: u64,
    /// Publishes answered with an earlier publish's seq (their id was published in
    /// the room within --dedup-window), not published again.
    pub publish_duplicates: u64,
    /// Tokens and permissions: refusals by reason (`AUTH_REFUSALS`), `refresh` ops
    /// that took, users disconnected and removed from rooms through the API.
    pub auth_refusals: [u64; AUTH_REFUSALS.len()],
    pub auth_refreshes: u64,
    pub api_disconnects: u64,
    pub api_removals: u64,
    /// Unfinished messages and request bodies refused over --max-unfinished-memory.
    pub unfinished_refused: u64,
    /// permessage-deflate: connections that negotiated it, and compressed frames made
    /// (one per message, however many recipients share it).
    pub deflate_connections: u64,
    pub compressed_frames: u64,
    iterations: u64,
    iteration_buckets: [u64; ITERATION_BUCKETS_US.len()],
    iteration_sum: Duration,
}

/// Values read at scrape time rather than counted.
pub struct Gauges {
    pub handshaking: usize,
    pub open: usize,
    pub closing: usize,
    pub history_len: usize,
    pub history_bytes: usize,
    pub rooms: usize,
    pub rooms_created: u64,
    pub rooms_expired: u64,
    /// What the clients' outgoing queues hold (bytes plus a 32-byte slot per chunk, as
    /// --max-backpressure counts them).
    pub output_queued_bytes: usize,
    /// The labels of `Metrics::op_errors`, given by the application (v1's refusal
    /// reasons): metrics know no protocol.
    pub op_error_reasons: [&'static str; OP_ERROR_KINDS],
}

/// How many reasons `Metrics::op_errors` counts by.
pub const OP_ERROR_KINDS: usize = 15;

/// The labels of `Metrics::auth_refusals`.
pub const AUTH_REFUSALS: [&str; 5] = ["invalid_token", "expired", "forbidden", "rate_limited", "too_many_connections"];

/// The labels of `Metrics::ops`.
pub const OP_KINDS: [&str; 4] = ["publish", "join", "leave", "ping"];

impl Metrics {
    pub fn reject(&mut self, why: Rejection) {
        self.rejected[why as usize] += 1;
    }

    /// Counts an authentication or permission refusal by its label (`AUTH_REFUSALS`).
    pub fn auth_refusal(&mut self, reason: &str) {
        if let Some(i) = AUTH_REFUSALS.iter().position(|&r| r == reason) {
            self.auth_refusals[i] += 1;
        }
    }

    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why as usize]
    }

    pub fn close(&mut self, code: CloseCode, by_peer: bool) {
        *self.closes.entry((code, by_peer)).or_default() += 1;
    }

    /// A WebSocket is closing for `why` (counted where the close is decided).
    pub fn closed(&mut self, why: CloseReason) {
        self.closes_by_reason[why as usize] += 1;
    }

    /// Closes by reason, labelled (`CLOSE_REASONS`).
    pub fn closes_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CLOSE_REASONS.into_iter().zip(self.closes_by_reason)
    }

    /// Refusals by reason, labelled: before the upgrade (`Rejection`), then by tokens
    /// and permissions (`AUTH_REFUSALS`), then unfinished input over its budget.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let rejected = Rejection::ALL.into_iter().map(|why| (why.label(), self.rejected(why)));
        let auth = AUTH_REFUSALS.into_iter().zip(self.auth_refusals);
        rejected.chain(auth).chain([("unfinished", self.unfinished_refused)])
    }

    /// Time the loop spent working in one iteration (not waiting in poll).
    pub fn iteration(&mut self, busy: Duration) {
        self.iterations += 1;
        self.iteration_sum += busy;
        let us = busy.as_micros() as u64;
        if let Some(i) = ITERATION_BUCKETS_US.iter().position(|&b| us <= b) {
            self.iteration_buckets[i] += 1;
        }
    }

    /// The whole exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        family(o, "mioket_connections", "gauge", "Connections now, by state.");
        for (state, n) in [("handshaking", g.handshaking), ("open", g.open), ("closing", g.closing)] {
            let _ = writeln!(o, "mioket_connections{{state=\"{state}\"}} {n}");
        }
        family(
            o,
            "mioket_output_queued_bytes",
            "gauge",
            "Bytes held in clients' outgoing queues, as --max-backpressure counts them (32 per chunk besides its bytes).",
        );
        let _ = writeln!(o, "mioket_output_queued_bytes {}", g.output_queued_bytes);
        counter(o, "mioket_accepted_total", "TCP connections accepted.", self.accepted);
        counter(o, "mioket_upgrades_total", "WebSocket upgrades accepted.", self.upgrades);
        family(o, "mioket_rejected_total", "counter", "Connections refused or dropped before the upgrade, by reason.");
        for why in Rejection::ALL {
            let _ = writeln!(o, "mioket_rejected_total{{reason=\"{}\"}} {}", why.label(), self.rejected(why));
        }
        family(
            o,
            "mioket_closes_total",
            "counter",
            "WebSocket connections ended, by the code of the first close and who sent it (1006: no close frame).",
        );
        for ((code, by_peer), n) in &self.closes {
            let by = if *code == CloseCode::ABNORMAL {
                "none"
            } else if *by_peer {
                "client"
            } else {
                "server"
            };
            let _ = writeln!(o, "mioket_closes_total{{code=\"{code}\",by=\"{by}\"}} {n}");
        }
        family(o, "mioket_closes_by_reason_total", "counter", "WebSocket connections ended, by why.");
        for (reason, n) in self.closes_by_reason() {
            let _ = writeln!(o, "mioket_closes_by_reason_total{{reason=\"{reason}\"}} {n}");
        }
        counter(o, "mioket_messages_received_total", "Data messages received.", self.messages_in);
        counter(
            o,
            "mioket_message_bytes_received_total",
            "Payload bytes of data messages received.",
            self.message_bytes_in,
        );
        counter(
            o,
            "mioket_messages_sent_total",
            "Data messages queued to clients (echoes, fan-out, welcome, history).",
            self.messages_out,
        );
        counter(o, "mioket_bytes_read_total", "Bytes read from client sockets.", self.bytes_read);
        counter(o, "mioket_bytes_written_total", "Bytes written to client sockets.", self.bytes_written);
        counter(o, "mioket_fanout_deliveries_total", "Broadcast frames queued to recipients.", self.fanout_deliveries);
        counter(
            o,
            "mioket_slow_consumers_total",
            "Clients closed (1008) for passing max-backpressure.",
            self.slow_consumers,
        );
        counter(
            o,
            "mioket_heartbeat_timeouts_total",
            "Clients closed (1011) for a late pong.",
            self.heartbeat_timeouts,
        );
        counter(o, "mioket_http_requests_total", "Plain HTTP requests answered.", self.http_requests);
        family(o, "mioket_history_messages", "gauge", "Messages kept in histories (all rooms).");
        let _ = writeln!(o, "mioket_history_messages {}", g.history_len);
        family(o, "mioket_history_bytes", "gauge", "Bytes kept in histories (all rooms).");
        let _ = writeln!(o, "mioket_history_bytes {}", g.history_bytes);
        family(o, "mioket_rooms", "gauge", "Rooms now (with members, or empty and kept for --room-ttl).");
        let _ = writeln!(o, "mioket_rooms {}", g.rooms);
        counter(o, "mioket_rooms_created_total", "Rooms created.", g.rooms_created);
        let freed = "Empty rooms freed: after --room-ttl, at once if they never had a message, or for a new room.";
        counter(o, "mioket_rooms_expired_total", freed, g.rooms_expired);
        family(o, "mioket_ops_total", "counter", "mioket.v1 ops received, by kind.");
        for (kind, n) in OP_KINDS.iter().zip(self.ops) {
            let _ = writeln!(o, "mioket_ops_total{{op=\"{kind}\"}} {n}");
        }
        family(o, "mioket_op_errors_total", "counter", "mioket.v1 ops refused with an error, by reason.");
        for (reason, n) in g.op_error_reasons.iter().zip(self.op_errors) {
            let _ = writeln!(o, "mioket_op_errors_total{{reason=\"{reason}\"}} {n}");
        }
        family(o, "mioket_resumes_total", "counter", "Resumes asked for, by outcome.");
        for (outcome, n) in ["recovered", "not_recovered"].iter().zip(self.resumes) {
            let _ = writeln!(o, "mioket_resumes_total{{outcome=\"{outcome}\"}} {n}");
        }
        counter(
            o,
            "mioket_presence_updates_total",
            "Presence envelopes sent (one per room update).",
            self.presence_updates,
        );
        counter(o, "mioket_api_publishes_total", "Messages published through the HTTP API.", self.api_publishes);
        counter(
            o,
            "mioket_publish_duplicates_total",
            "Publishes whose id was published in the room within --dedup-window: answered with its seq, not published again.",
            self.publish_duplicates,
        );
        family(
            o,
            "mioket_auth_refusals_total",
            "counter",
            "Upgrades, joins and publishes refused by tokens and permissions, by reason.",
        );
        for (reason, n) in AUTH_REFUSALS.iter().zip(self.auth_refusals) {
            let _ = writeln!(o, "mioket_auth_refusals_total{{reason=\"{reason}\"}} {n}");
        }
        counter(o, "mioket_auth_refreshes_total", "Tokens replaced by a refresh op.", self.auth_refreshes);
        counter(o, "mioket_api_disconnects_total", "Users disconnected through the API.", self.api_disconnects);
        counter(o, "mioket_api_removals_total", "Users removed from a room through the API.", self.api_removals);
        counter(
            o,
            "mioket_unfinished_refused_total",
            "Unfinished messages (1013) and request bodies (503) refused over --max-unfinished-memory.",
            self.unfinished_refused,
        );
        counter(
            o,
            "mioket_deflate_connections_total",
            "WebSockets that negotiated permessage-deflate.",
            self.deflate_connections,
        );
        counter(
            o,
            "mioket_compressed_frames_total",
            "Compressed frames made (one per message, shared by its recipients).",
            self.compressed_frames,
        );
        family(o, "mioket_loop_iteration_seconds", "histogram", "Time the event loop spent working per iteration.");
        let mut cumulative = 0;
        for (bound, n) in ITERATION_BUCKETS_US.iter().zip(self.iteration_buckets) {
            cumulative += n;
            let _ = writeln!(o, "mioket_loop_iteration_seconds_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        let _ = writeln!(o, "mioket_loop_iteration_seconds_bucket{{le=\"+Inf\"}} {}", self.iterations);
        let _ = writeln!(o, "mioket_loop_iteration_seconds_sum {}", self.iteration_sum.as_secs_f64());
        let _ = writeln!(o, "mioket_loop_iteration_seconds_count {}", self.iterations);
        out
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, value: u64) {
    family(o, name, "counter", help);
    let _ = writeln!(o, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            handshaking: 1,
            open: 2,
            closing: 0,
            history_len: 3,
            history_bytes: 40,
            rooms: 2,
            rooms_created: 3,
            rooms_expired: 1,
            output_queued_bytes: 0,
            op_error_reasons: ["x"; OP_ERROR_KINDS],
        }
    }

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let mut m = Metrics { accepted: 5, ..Metrics::default() };
        m.reject(Rejection::Origin);
        m.close(CloseCode::NORMAL, true);
        m.close(CloseCode::ABNORMAL, true);
        m.closed(CloseReason::SlowConsumer);
        m.iteration(Duration::from_micros(5));
        m.iteration(Duration::from_micros(700));
        let text = m.render(&gauges());
        for line in [
            "mioket_connections{state=\"open\"} 2",
            "mioket_accepted_total 5",
            "mioket_rejected_total{reason=\"origin\"} 1",
            "mioket_rejected_total{reason=\"bad_handshake\"} 0",
            "mioket_closes_total{code=\"1000\",by=\"client\"} 1",
            "mioket_closes_total{code=\"1006\",by=\"none\"} 1",
            "mioket_history_bytes 40",
            "mioket_closes_by_reason_total{reason=\"slow_consumer\"} 1",
            "mioket_closes_by_reason_total{reason=\"client\"} 0",
            "mioket_loop_iteration_seconds_bucket{le=\"0.00001\"} 1",
            "mioket_loop_iteration_seconds_bucket{le=\"0.001\"} 2",
            "mioket_loop_iteration_seconds_bucket{le=\"+Inf\"} 2",
            "mioket_loop_iteration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_sample_belongs_to_a_declared_family() {
        let text = Metrics::default().render(&gauges());
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(families.iter().any(|f| name.starts_with(f.as_str())), "{name} undeclared");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
