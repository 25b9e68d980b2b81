//! A client's life: what the application holds for each connection (`Client`),
//! settling it after every activity (its fault logged and counted, its flush
//! queued), removing it once closed, and the server's own stop (`Lifecycle`).

use std::fmt;
use std::time::Instant;

use log::{debug, info, warn};

use super::budget::LARGE_QUEUE;
use super::deliver::queue_flush;
use super::housekeeping::presence_time;
use super::session::{Joined, Role, Session};
use super::{App, ClientIo, Listener, Stop};
use crate::config::Config;
use crate::frame::CloseCode;
use crate::metrics::{CloseReason, Metrics, Rejection};
use crate::protocol::{Conn, Fault};

/// One connection as the application sees it. Every connection holds one, so its
/// own fields take 16 bytes: an idle client is the Conn, the runtime's data and these.
pub(crate) struct Client<T> {
    pub(super) conn: Conn,
    /// The runtime's own data for this client (its socket, its timer).
    pub(super) io: T,
    /// An accepted WebSocket's first room (`NOT_JOINED`: none): a plain client's one
    /// room, a v1 client's path's room; more rooms are in its `Extra`.
    pub(super) first: Joined,
    pub(super) role: Role,
    /// `first` is the path's room; before the upgrade's join: the next join is.
    pub(super) first_is_home: bool,
    pub(super) listener: Listener,
    /// Queued in `App::dirty` for a flush.
    pub(super) flush_queued: bool,
}

/// Brings `total` (`App::queued`) up to date with `conn`'s queue. Called after a
/// flush that left bytes queued or had some counted (a queue drains only in a flush,
/// and every queue that grew is flushed in the same loop iteration), so the gauge is
/// right at the end of each iteration and the usual flush, which leaves nothing
/// queued where nothing was counted, costs two compares. A removed client takes its
/// count with it (`App::remove`).
#[cold]
#[inline(never)]
pub(super) fn count_queued(total: &mut usize, conn: &mut Conn) {
    let (before, now) = conn.report_queue_memory();
    *total = *total + now - before;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifecycle {
    Serving,
    /// A signal asked us to stop: clients are closing (1001); give up at `until`.
    Stopping {
        until: Option<Instant>,
    },
}

impl<T: ClientIo> App<T> {
    /// A stop signal (SIGINT, SIGTERM): the first closes every client with 1001 and
    /// waits close-timeout at most; a second stops now.
    pub fn handle_stop_signal(&mut self, now: Instant) -> Stop {
        self.now = now;
        if self.lifecycle != Lifecycle::Serving {
            self.lifecycle = Lifecycle::Stopping { until: Some(now) };
            return Stop::Now;
        }
        self.lifecycle = Lifecycle::Stopping { until: self.config.limits.close_timeout.map(|t| now + t) };
        self.leave_cluster();
        let ids: Vec<usize> = self.clients.iter().map(|(id, _)| id).collect();
        for id in ids {
            let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
            if let Some(client) = self.clients.get_mut(id) {
                if client.conn.is_open() {
                    self.metrics.closed(CloseReason::Shutdown);
                }
                client.conn.close(CloseCode::GOING_AWAY, "server shutting down", now, &self.config.limits);
            }
            self.track_unfinished(id, held, now);
            self.after_activity(id);
        }
        Stop::Closing
    }

    /// A binary upgrade handed the clients over (they left with `freeze`): those that
    /// could not move (TLS) close with 1012 (`close_unmoved`), and the runtime stops
    /// once they are gone or close-timeout has passed.
    pub fn handle_upgraded(&mut self, now: Instant) {
        self.lifecycle = Lifecycle::Stopping { until: self.config.limits.close_timeout.map(|t| now + t) };
        self.close_unmoved(now);
    }

    /// When stopping: the time we give up waiting for clients.
    pub fn stop_deadline(&self) -> Option<Instant> {
        match self.lifecycle {
            Lifecycle::Stopping { until } => until,
            Lifecycle::Serving => None,
        }
    }

    /// Whether the runtime should stop: stopping, and every client gone or time up.
    pub fn poll_stop(&self, now: Instant) -> bool {
        match self.lifecycle {
            Lifecycle::Stopping { until } => {
                (self.clients.is_empty() && self.has_left_cluster()) || until.is_some_and(|t| t <= now)
            }
            Lifecycle::Serving => false,
        }
    }

    /// After anything happened to a client: settle it (a client ending has why logged
    /// and counted, and is removed once closed), or schedule a flush if it has
    /// something to write.
    pub(super) fn after_activity(&mut self, id: usize) {
        let App { clients, metrics, released, config, dirty, .. } = self;
        let Some(client) = clients.get_mut(id) else { return };
        if settle(metrics, released, config, dirty, id, client) {
            self.remove(id);
        }
    }

    /// Forgets a closed client; dropping its `T` closes its socket.
    pub(super) fn remove(&mut self, id: usize) {
        let Some(client) = self.clients.try_remove(id) else { return };
        self.queued -= client.conn.queue_reported();
        self.unfinished = self.unfinished.saturating_sub(client.conn.unfinished_memory());
        self.forget_in_backplane(id);
        let memory = client.conn.queue_memory();
        if memory >= LARGE_QUEUE {
            self.released += memory;
        }
        // Empty maps (every plain client's case, and every client's on an open
        // server) are not hashed into.
        let extra = if self.extras.is_empty() { None } else { self.extras.remove(&id) };
        if !self.new_rooms.is_empty() {
            self.new_rooms.remove(&id);
        }
        if !self.limiters.is_empty() {
            self.limiters.remove(&id);
        }
        if !self.grants.is_empty() || self.per_ip.is_on() {
            self.forget_grant(id, &client);
        }
        if client.role != Role::Pending {
            let session = Session {
                v1: client.role == Role::V1,
                first: client.first,
                first_is_home: false,
                extra: extra.as_ref(),
            };
            // The time of the last event is close enough for a room's TTL.
            let now = self.now;
            for joined in session.rooms() {
                self.rooms.leave(joined.room, joined.key, session.audience(), now);
            }
            if session.count() > 0 {
                self.presence_at.get_or_insert(presence_time(self.last_presence, now));
            }
            self.open -= 1;
            let first = client.conn.first_close();
            self.metrics.close(first.map_or(CloseCode::ABNORMAL, |c| c.code), first.is_some_and(|c| c.by_peer));
            // The server's own closes were counted where it decided them.
            match first {
                None => self.metrics.closed(CloseReason::Dropped),
                Some(c) if c.by_peer => self.metrics.closed(CloseReason::Client),
                Some(_) => {}
            }
        }
    }
}

/// `App::after_activity` for a client at hand: its fault logged and counted, its flush
/// queued if it has something to write, or its stream bytes of its own (TLS) or its
/// paused reading want one (what a writable event would do: the runtime skips that
/// after a read). Returns whether it is closed: then the caller removes it.
#[inline]
pub(super) fn settle<T: ClientIo>(
    metrics: &mut Metrics,
    released: &mut usize,
    config: &Config,
    dirty: &mut Vec<usize>,
    id: usize,
    client: &mut Client<T>,
) -> bool {
    if let Some(fault) = client.conn.poll_fault() {
        count_fault(metrics, released, config, &client.io, fault);
    }
    if client.conn.is_closed() {
        return true;
    }
    if client.conn.has_output() || client.conn.poll_write_shutdown() || client.io.wants_flush() {
        queue_flush(dirty, id, client);
    }
    false
}

/// Logs and counts why a client is ending (`App::after_activity`, `App::flush`).
#[cold]
#[inline(never)]
pub(super) fn count_fault<T: fmt::Display>(
    metrics: &mut Metrics,
    released: &mut usize,
    config: &Config,
    io: &T,
    fault: Fault,
) {
    log_fault(io, fault);
    match fault {
        Fault::Handshake(err) => metrics.reject(Rejection::of(err)),
        Fault::HandshakeTimeout => metrics.reject(Rejection::HandshakeTimeout),
        Fault::PongTimeout => {
            metrics.heartbeat_timeouts += 1;
            metrics.closed(CloseReason::HeartbeatTimeout);
        }
        Fault::SlowConsumer => {
            metrics.slow_consumers += 1;
            metrics.closed(CloseReason::SlowConsumer);
            // Its queue, about the limit, was just freed.
            *released += config.limits.max_backpressure;
        }
        Fault::Peer(err) if err.close_code() == CloseCode::TOO_BIG => metrics.closed(CloseReason::TooBig),
        Fault::Peer(_) => metrics.closed(CloseReason::ProtocolError),
        Fault::CloseTimeout => {}
    }
}

fn log_fault(peer: &impl fmt::Display, fault: Fault) {
    match fault {
        Fault::Handshake(err) => info!("rejected {peer}: {err}"),
        Fault::HandshakeTimeout => info!("dropped {peer}: handshake timeout"),
        Fault::Peer(err) => info!("closed {peer}: {err}"),
        Fault::PongTimeout => info!("closing {peer}: no pong within ping-timeout (1011)"),
        Fault::CloseTimeout => debug!("dropped {peer}: close timeout"),
        Fault::SlowConsumer => warn!("closing {peer}: slow consumer (1008)"),
    }
}
