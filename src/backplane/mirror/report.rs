//! The mirror's part of /healthz and /metrics.

use std::fmt::Write;
use std::time::Instant;

use serde::Serialize;

use super::Mirror;

/// The backplane as /api/stats shows it: whether each connection to Redis is up,
/// and how long the latest pipelined round trip took.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// `up`, `late` (replies late), `degraded` (a connection down) or `down`.
    pub state: &'static str,
    pub commands: bool,
    pub fetches: bool,
    pub subscription: bool,
    pub round_trip_ms: f64,
    pub round_trip_max_ms: f64,
    pub round_trips: u64,
    pub in_flight: usize,
    pub disconnects: u64,
}

impl Mirror {
    /// The /healthz lines: degraded while a connection is down or replies are late.
    pub fn health(&self, now: Instant) -> String {
        let down = |c: &super::Connections| !c.commands && !c.fetches && !c.subscribed;
        let state = match (self.is_up(), self.shards.iter().all(down)) {
            (true, _) if self.is_late(now) => "backplane: degraded (Redis replies late)\n",
            (true, _) => "backplane: up\n",
            (false, true) => "backplane: down\n",
            (false, false) => "backplane: degraded\n",
        };
        match &self.evicting {
            Some(policy) => format!("{state}redis: maxmemory-policy {policy} evicts keys (rooms may be lost)\n"),
            None => state.to_string(),
        }
    }

    /// This node's name (16 hex digits, its origins' prefix).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The backplane's part of /api/stats.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        // With several shards, a connection counts as up when it is up on every shard.
        let all = |up: fn(&super::Connections) -> bool| self.shards.iter().all(up);
        let (commands, fetches, subscription) = (all(|c| c.commands), all(|c| c.fetches), all(|c| c.subscribed));
        let state = match (commands, fetches, subscription) {
            (true, true, true) if self.is_late(now) => "late",
            (true, true, true) => "up",
            _ if self.shards.iter().all(|c| !c.commands && !c.fetches && !c.subscribed) => "down",
            _ => "degraded",
        };
        Snapshot {
            state,
            commands,
            fetches,
            subscription,
            round_trip_ms: self.stats.latency_last.as_secs_f64() * 1e3,
            round_trip_max_ms: self.stats.latency_max.as_secs_f64() * 1e3,
            round_trips: self.stats.round_trips,
            in_flight: self.sent.len(),
            disconnects: self.stats.disconnects,
        }
    }

    /// The backplane's part of /metrics.
    pub fn render(&self, out: &mut String, now: Instant) {
        let s = &self.stats;
        let mut family = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        family(
            "mioket_backplane_up",
            "gauge",
            "1 while Redis is reachable, subscribed and answering in time.",
            &one(f64::from(u8::from(self.is_up() && !self.is_late(now)))),
        );
        family(
            "mioket_backplane_connected",
            "gauge",
            "Redis connections up, by kind.",
            &[
                ("{conn=\"commands\"}".into(), self.shards.iter().filter(|c| c.commands).count() as f64),
                ("{conn=\"fetches\"}".into(), self.shards.iter().filter(|c| c.fetches).count() as f64),
                ("{conn=\"subscription\"}".into(), self.shards.iter().filter(|c| c.subscribed).count() as f64),
            ],
        );
        family(
            "mioket_redis_nodes",
            "gauge",
            "Live nodes in the node registry (as of this node's last heartbeat).",
            &one(self.nodes().map_or(0, |r| r.nodes.len()) as f64),
        );
        family(
            "mioket_backplane_in_flight",
            "gauge",
            "Publishes waiting for Redis (bounded by --redis-outbox).",
            &one(self.sent.len() as f64),
        );
        family(
            "mioket_backplane_in_flight_bytes",
            "gauge",
            "Payload bytes waiting for Redis (bounded by --redis-outbox-bytes).",
            &one(self.in_flight_bytes as f64),
        );
        family("mioket_backplane_publishes_total", "counter", "Messages sent to Redis.", &one(s.published as f64));
        family(
            "mioket_backplane_refusals_total",
            "counter",
            "Publishes refused, by reason.",
            &[
                ("{reason=\"unavailable\"}".into(), s.refused_unavailable as f64),
                ("{reason=\"outbox_full\"}".into(), s.refused_outbox as f64),
                ("{reason=\"failed\"}".into(), s.failed as f64),
            ],
        );
        family(
            "mioket_backplane_round_trips_total",
            "counter",
            "Pipelined round trips to Redis.",
            &one(s.round_trips as f64),
        );
        family(
            "mioket_backplane_commands_total",
            "counter",
            "Commands sent to Redis (one script call per message).",
            &one(s.commands as f64),
        );
        family(
            "mioket_backplane_round_trip_seconds",
            "summary",
            "Time of the pipelined round trips to Redis.",
            &[("_sum".into(), s.latency_sum.as_secs_f64()), ("_count".into(), s.round_trips as f64)],
        );
        family(
            "mioket_backplane_round_trip_max_seconds",
            "gauge",
            "Slowest round trip to Redis since start.",
            &one(s.latency_max.as_secs_f64()),
        );
        family(
            "mioket_backplane_live_messages_total",
            "counter",
            "Messages received from the subscription.",
            &one(s.live_messages as f64),
        );
        family(
            "mioket_redis_input_bytes_total",
            "counter",
            "Bytes of rooms' live lines received from the subscription (only rooms held here).",
            &one(s.live_bytes as f64),
        );
        family(
            "mioket_backplane_listening_rooms",
            "gauge",
            "Rooms whose channels the subscription listens to.",
            &one(self.rooms.values().filter(|r| r.listening).count() as f64),
        );
        family(
            "mioket_backplane_fetches_total",
            "counter",
            "Room states read from Redis (joins, gaps).",
            &one(s.fetches as f64),
        );
        family(
            "mioket_backplane_gaps_filled_total",
            "counter",
            "Messages delivered from a room's stream after a gap in the subscription.",
            &one(s.gaps_filled as f64),
        );
        family(
            "mioket_backplane_late_lookups_total",
            "counter",
            "Rooms' streams read for a publish whose live copy was late.",
            &one(s.late_lookups as f64),
        );
        family(
            "mioket_backplane_rooms_lost_total",
            "counter",
            "Rooms whose Redis state did not continue the mirror (members closed with 1013).",
            &one(s.rooms_lost as f64),
        );
        family("mioket_backplane_disconnects_total", "counter", "Redis connections lost.", &one(s.disconnects as f64));
    }
}
