//! The application: what mioket does with its connections, without I/O.
//!
//! It admits or refuses (max connections, handshake slack, shutdown), puts each
//! WebSocket in its room (the path's) and greets it with the room's history, speaks
//! `mioket.v1` with the clients that asked for it (docs/protocol.md), dispatches each
//! message (echo, or a publish to a room's members), decides when an echo is written
//! straight to the socket, tells rooms' members who is online, and answers plain HTTP
//! (the pages, `/metrics`, `/healthz`, the API). The runtime feeds it bytes, time and
//! signals and carries out what it asks: flush these clients (`drain_dirty_into`),
//! wake this client at this time (`poll_timeout`), wake me then (`poll_housekeeping`),
//! stop now (`poll_stop`). It never sees a socket: each client carries the runtime's
//! own data as an opaque `T`; a flush writes through the runtime's `Transmit`
//! (`app/output.rs`, the one way out), and a write-through through a closure the
//! runtime gives. The runtime never touches a `Conn`.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use slab::Slab;

use crate::api;
use crate::config::{Config, DeflateMode, Mode};
use crate::deflate::Compressor;
use crate::frame::{encode_header, server_header, server_payload, CloseCode, Opcode, MAX_HEADER_LEN};
use crate::handshake::{BodyLength, Method};
use crate::http;
use crate::metrics::{Gauges, Metrics, Rejection};
use crate::outqueue::{shared_message, Chunk};
use crate::protocol::{Conn, Event, Fault, HttpRequest, Phase, UpgradeRequest};
use crate::pubsub::{Audience, History, MemberKey, Seq};
use crate::rooms::{self, RoomId, RoomLimits, Rooms, Stored};
use crate::v1::{self, Envelopes, Op, OpError, Payload, Resume, Welcome};

use publish::{Outcome, Publish, Source, Target};

/// Connections still in their handshake allowed beyond max-connections.
pub const HANDSHAKE_SLACK: usize = 1024;
/// An echo at least this large is written at once rather than copied into the queue:
/// its copy costs more than a syscall of its own, and large messages rarely batch.
const WRITE_THROUGH_MIN: usize = 16 * 1024;
/// A queue this large, once drained or freed, counts toward giving memory back.
const LARGE_QUEUE: usize = 256 * 1024;
/// Memory freed by large queues after which the allocator is asked to give pages
/// back, at most once per `TRIM_EVERY`: a trim walks the heap, so not on every free.
const TRIM_AFTER: usize = 1 << 20;
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// A room tells its members who is online at most this often.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// The listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The WebSocket port: upgrades, pages, the API, and /metrics and /healthz unless
    /// they have a port of their own.
    Main,
    /// `--metrics-listen`: only /metrics and /healthz.
    Operator,
}

/// What a connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Before its request is answered (or a plain HTTP request).
    Pending,
    /// An accepted WebSocket (counted in `App::open`) without a subprotocol.
    Plain,
    /// An accepted WebSocket speaking `mioket.v1`.
    V1,
}

const NO_ROOM: RoomId = RoomId::MAX;

#[derive(Clone, Copy)]
struct Joined {
    room: RoomId,
    key: MemberKey,
}

const NOT_JOINED: Joined = Joined { room: NO_ROOM, key: MemberKey::NONE };

/// A v1 client's rooms beyond its first, and its path's room while it is out of it
/// (so that joining it again makes it the default again). Few clients have one: they
/// live beside the clients (`App::extras`), not in each.
#[derive(Default)]
struct Extra {
    /// By name: a room freed and made again (one that never had a message goes when
    /// its last member leaves) is still the path's.
    home: Option<Box<str>>,
    more: Vec<Joined>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.home.is_none() && self.more.is_empty()
    }
}

/// An accepted WebSocket's rooms, read from its client and its extra.
#[derive(Clone, Copy)]
struct Session<'a> {
    v1: bool,
    first: Joined,
    first_is_home: bool,
    extra: Option<&'a Extra>,
}

impl Session<'_> {
    fn audience(&self) -> Audience {
        if self.v1 {
            Audience::Enveloped
        } else {
            Audience::Plain
        }
    }

    fn rooms(&self) -> impl Iterator<Item = Joined> + '_ {
        let first = Some(self.first).filter(|j| j.room != NO_ROOM);
        first.into_iter().chain(self.extra.iter().flat_map(|e| e.more.iter().copied()))
    }

    fn find(&self, room: RoomId) -> Option<Joined> {
        self.rooms().find(|j| j.room == room)
    }

    fn count(&self) -> usize {
        self.rooms().count()
    }

    /// The first room it is in: a plain client's one room.
    fn first_room(&self) -> Option<RoomId> {
        Some(self.first.room).filter(|&room| room != NO_ROOM)
    }

    /// The path's room while the client is in it (the default of v1 ops).
    fn home_room(&self) -> Option<RoomId> {
        self.first_is_home.then_some(self.first.room).filter(|&room| room != NO_ROOM)
    }
}

/// A plain HTTP request's answer: now, or not yet.
pub(super) enum Answer {
    /// These bytes, and the connection ends.
    Now(Vec<u8>),
    /// The head passed: read the body, then judge the whole request again.
    ReadBody,
    /// Given later by `respond_later` (an API publish waiting for Redis to number it).
    Later,
}

/// The runtime's own data for one client (its socket), as the application may ask
/// of it: how the log names it, and the peer's address for an admission policy
/// (asked only when a policy wants it: holding it on every connection would cost 32
/// bytes of the idle budget, and the socket knows it anyway).
pub trait ClientIo: fmt::Display {
    /// The address the connection came from (not `X-Forwarded-For`); `None` where
    /// there is no socket.
    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// One connection as the application sees it. Every connection holds one, so its
/// own fields take 16 bytes: an idle client is the Conn, the runtime's data and these.
pub struct Client<T> {
    conn: Conn,
    /// The runtime's own data for this client (its socket, its timer).
    io: T,
    /// An accepted WebSocket's first room (`NOT_JOINED`: none): a plain client's one
    /// room, a v1 client's path's room; more rooms are in its `Extra`.
    first: Joined,
    role: Role,
    /// `first` is the path's room; before the upgrade's join: the next join is.
    first_is_home: bool,
    listener: Listener,
    /// Queued in `App::dirty` for a flush.
    flush_queued: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    Serving,
    /// A signal asked us to stop: clients are closing (1001); give up at `until`.
    Stopping {
        until: Option<Instant>,
    },
}

/// What a stop signal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The first: stop accepting; every client is closing with 1001.
    Closing,
    /// A second signal: stop now.
    Now,
}

pub struct App<T> {
    config: Config,
    clients: Slab<Client<T>>,
    /// Accepted WebSockets not yet removed.
    open: usize,
    /// Broadcast mode: the rooms, their members and histories.
    rooms: Rooms,
    /// Echo mode: the history replayed to new clients (no rooms).
    echo_history: History<Rc<[u8]>>,
    /// The welcome as a plain frame.
    welcome: Option<Rc<[u8]>>,
    envelopes: Envelopes,
    /// v1 clients' rooms beyond their first, by client id.
    extras: HashMap<usize, Extra>,
    /// v1 clients that made rooms by `join`: when their window began, rooms made in it.
    new_rooms: HashMap<usize, (Instant, usize)>,
    /// permessage-deflate's one compressor: a message is compressed once, whoever gets it.
    compressor: Compressor,
    /// A v1 message's bytes, copied out of its connection to be parsed while the
    /// application writes to that same connection. Reused.
    scratch: Vec<u8>,
    /// When rooms may next tell their presence (set while some room owes one).
    presence_at: Option<Instant>,
    last_presence: Option<Instant>,
    /// The time of the latest event, for the few steps that are not given one.
    now: Instant,
    lifecycle: Lifecycle,
    /// Clients with output to flush, in the order they got it (a broadcast's sender first).
    dirty: Vec<usize>,
    /// What every client's `Conn::unfinished_memory` adds up to (see `track_unfinished`).
    unfinished: usize,
    /// Memory freed by large queues since the last trim, and when that was.
    released: usize,
    last_trim: Option<Instant>,
    pub metrics: Metrics,
    /// Where publishes are numbered: here, or by Redis (`--redis`, app/bus.rs).
    bus: bus::Bus,
}

/// `T` is the runtime's per-client data; its `Display` names the client in the log
/// (its peer address).
impl<T: ClientIo> App<T> {
    pub fn new(config: Config) -> App<T> {
        let bus = bus::Bus::new(&config);
        let welcome = config.welcome.as_ref().map(|text| shared_message(Opcode::Text, text.as_bytes()));
        // A history replay must fit a new client's queue beside live traffic.
        let history_room_bytes = (config.limits.max_backpressure / 2).min(config.history_memory);
        let rooms = Rooms::new(RoomLimits {
            max_rooms: config.max_rooms,
            ttl: config.room_ttl,
            history_messages: config.history,
            history_room_bytes,
            history_memory: config.history_memory,
        });
        App {
            echo_history: History::new(config.history, history_room_bytes),
            config,
            clients: Slab::new(),
            open: 0,
            rooms,
            welcome,
            envelopes: Envelopes::default(),
            extras: HashMap::new(),
            new_rooms: HashMap::new(),
            compressor: Compressor::default(),
            scratch: Vec::new(),
            presence_at: None,
            last_presence: None,
            now: Instant::now(),
            lifecycle: Lifecycle::Serving,
            dirty: Vec::new(),
            unfinished: 0,
            released: 0,
            last_trim: None,
            metrics: Metrics::default(),
            bus,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new TCP connection. Beyond max-connections plus the handshake slack it is
    /// refused at once: the runtime writes the answer (best effort) and drops it.
    pub fn connect(&mut self, io: T, listener: Listener, now: Instant) -> Result<usize, (T, Vec<u8>)> {
        self.metrics.accepted += 1;
        if self.clients.len() >= self.config.max_connections + HANDSHAKE_SLACK {
            self.metrics.reject(Rejection::OverMaxConnections);
            info!("rejected {io}: too many connections (503)");
            return Err((io, Refusal::ServerFull.response()));
        }
        let conn = Conn::new(now, &self.config.limits);
        let client = Client {
            conn,
            io,
            first: NOT_JOINED,
            role: Role::Pending,
            first_is_home: false,
            listener,
            flush_queued: false,
        };
        Ok(self.clients.insert(client))
    }

    /// Whether to read on from `id`: an echo client that does not read its answers,
    /// or a ping flood, stops being read while its queue holds over half the limit.
    #[inline]
    pub fn wants_input(&self, id: usize) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| !c.conn.is_closed() && c.conn.queue_memory() <= self.config.limits.max_backpressure / 2)
            // --redis: a client whose join waits for Redis is not read meanwhile.
            && !self.bus.is_held(id)
    }

    /// A new turn of the loop for `id` (`Conn::start_turn`): the input it held back
    /// last turn is copied into `buf`, for `handle_input` first. Returns how many bytes.
    #[inline]
    pub fn start_turn(&mut self, id: usize, buf: &mut [u8]) -> usize {
        let Some(client) = self.clients.get_mut(id) else { return 0 };
        if !client.conn.holds_input() {
            // Only the inflate budget to renew: nothing held, nothing counted.
            return client.conn.start_turn(buf);
        }
        let held = client.conn.unfinished_memory();
        let n = client.conn.start_turn(buf);
        // Held input counts in the unfinished budget until it is handed back.
        self.unfinished -= held.saturating_sub(client.conn.unfinished_memory()).min(self.unfinished);
        n
    }

    /// Bytes read from `id`: hands them to its `Conn` and acts on what it yields.
    /// `write_now` is the runtime's non-blocking write for write-through; it returns
    /// how many bytes the socket took.
    pub fn handle_input(
        &mut self,
        id: usize,
        input: &mut [u8],
        now: Instant,
        mut write_now: impl FnMut(&mut T, [&[u8]; 2]) -> usize,
    ) {
        let total = input.len();
        self.now = now;
        self.metrics.bytes_read += total as u64;
        let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        let mut pos = 0;
        while pos < total {
            let App { clients, config, echo_history, rooms, envelopes, compressor, scratch, metrics, .. } = self;
            let limits = &config.limits;
            let Some(client) = clients.get_mut(id) else { break };
            // Asked before the input: the message it yields borrows the Conn.
            let can_write_through = client.conn.can_write_through();
            let takes_compressed = client.conn.takes_compressed();
            let (used, event) = client.conn.handle_input(&mut input[pos..], now, limits);
            pos += used;
            let Some(event) = event else {
                if used == 0 {
                    break;
                }
                continue;
            };
            let (opcode, payload) = match event {
                Event::UpgradeRequest(request) => {
                    self.admit(id, &request, now);
                    continue;
                }
                Event::HttpRequest(request) => {
                    self.answer_http(id, request, now);
                    continue;
                }
                Event::Message { opcode, payload } => (opcode, payload),
            };
            metrics.messages_in += 1;
            metrics.message_bytes_in += payload.len() as u64;
            let role = client.role;
            if role == Role::Pending {
                continue;
            }
            // --redis: a client whose join waits for Redis has its input held until its welcome.
            if self.bus.hold(id, opcode, payload) {
                continue;
            }
            // permessage-deflate: an echo that shrinks goes back compressed.
            let compressed =
                (config.mode == Mode::Echo && takes_compressed && payload.len() >= config.deflate_min_size)
                    .then(|| compressor.frame(opcode, payload))
                    .flatten();
            if let Some(frame) = compressed {
                metrics.compressed_frames += 1;
                if config.history > 0 {
                    echo_history.push(&shared_message(opcode, payload));
                }
                if client.conn.send(Chunk::Owned(frame.to_vec()), now, limits).is_ok() {
                    metrics.messages_out += 1;
                }
                continue;
            }
            match config.mode {
                Mode::Echo if config.history == 0 && can_write_through && payload.len() >= WRITE_THROUGH_MIN => {
                    // Straight from the read buffer to the socket: no copy, no
                    // allocation. Only what the socket does not take is queued.
                    let mut header = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&server_header(opcode, payload.len()), &mut header);
                    let rest = write_through(&mut client.io, [&header[..n], payload], &mut write_now, metrics);
                    client.conn.finish_write_through(rest);
                }
                Mode::Echo => {
                    let echo = if config.history == 0 {
                        Chunk::frame(opcode, payload)
                    } else {
                        let frame = shared_message(opcode, payload);
                        echo_history.push(&frame);
                        Chunk::Shared(frame)
                    };
                    // A small echo, the last message of this read, with nothing waiting
                    // ahead of it (pongs included): written now, the one writev a flush
                    // would make, without a trip through the queue. Messages before it
                    // in the same read queue up and share a writev.
                    if pos == total && matches!(echo, Chunk::Inline(_)) && client.conn.can_write_through() {
                        let rest = write_through(&mut client.io, [echo.bytes(), &[]], &mut write_now, metrics);
                        client.conn.finish_write_through(rest);
                    } else if client.conn.send(echo, now, limits).is_ok() {
                        metrics.messages_out += 1;
                    }
                }
                Mode::Broadcast if role == Role::V1 => {
                    // Copied out: the op is parsed and acted on while this client's
                    // Conn (which the payload borrows) gets answers.
                    scratch.clear();
                    scratch.extend_from_slice(payload);
                    let message = std::mem::take(scratch);
                    self.handle_v1(id, opcode, &message, now);
                    self.scratch = message;
                }
                Mode::Broadcast => {
                    // A plain client is always in its one room.
                    let room = client.first.room;
                    if room == NO_ROOM {
                        continue;
                    }
                    // The one way in, in two halves: the payload borrows this
                    // client's Conn until `admit` is done with it.
                    let source = Source::Plain(id);
                    let p = Publish { source, room: Target::Id(room), payload: Payload::of(opcode, payload) };
                    let admitted = publish::admit(config, rooms, envelopes, &mut self.bus, &p, now);
                    let _ = self.conclude(source, admitted, now);
                }
            }
        }
        if let Some(client) = self.clients.get_mut(id) {
            // A large message buffer (an inflated message) goes back now, not when idle.
            self.released += client.conn.end_input();
            let after = client.conn.unfinished_memory();
            if after != held {
                self.unfinished_changed(id, held, after, now);
            }
        }
        self.after_activity(id);
    }

    /// A valid upgrade: accept it (101, its room, welcome, history) unless full,
    /// stopping, or its path or query is refused.
    fn admit(&mut self, id: usize, request: &UpgradeRequest, now: Instant) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if client.listener == Listener::Operator {
            client.conn.respond(Chunk::Owned(http::not_found()), now);
            return;
        }
        if self.open >= self.config.max_connections || self.lifecycle != Lifecycle::Serving {
            return self.refuse(id, Refusal::ServerFull, now);
        }
        let deflate = request.deflate.filter(|_| self.config.deflate == DeflateMode::Shared);
        if deflate.is_some() {
            self.metrics.deflate_connections += 1;
        }
        if self.config.mode == Mode::Echo {
            client.conn.accept(None, deflate, now, &self.config.limits);
            client.role = Role::Plain;
            self.open += 1;
            self.metrics.upgrades += 1;
            let history = self.echo_history.iter().map(|(_, frame)| frame);
            for frame in self.welcome.iter().chain(history) {
                if client.conn.send(Chunk::Shared(Rc::clone(frame)), now, &self.config.limits).is_ok() {
                    self.metrics.messages_out += 1;
                }
            }
            return;
        }
        let v1 = request.offers(v1::SUBPROTOCOL);
        let (room, resume) = match room_of_upgrade(&mut self.rooms, request, v1, now) {
            Ok(joining) => joining,
            Err(refusal) => return self.refuse(id, refusal, now),
        };
        client.conn.accept(v1.then_some(v1::SUBPROTOCOL), deflate, now, &self.config.limits);
        client.role = if v1 { Role::V1 } else { Role::Plain };
        // The join that follows (now, or once a backplane has the room) is the path's.
        client.first_is_home = true;
        self.open += 1;
        self.metrics.upgrades += 1;
        self.join(id, room, resume.as_ref(), now);
    }

    /// Refuses a valid upgrade: the answer, the log line and the count (the wire
    /// layer's refusals are counted when their fault is polled).
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, id: usize, refusal: Refusal, now: Instant) {
        let Some(client) = self.clients.get_mut(id) else { return };
        info!("rejected {}: {refusal}", client.io);
        self.metrics.reject(refusal.rejection());
        client.conn.respond(Chunk::Owned(refusal.response()), now);
    }

    /// Puts `id` in `room`, then greets it: a v1 client gets the welcome envelope and
    /// the replay its resume asks for, a plain one the welcome text and the history.
    /// All in this one step, so no live message slips between.
    fn join(&mut self, id: usize, room_id: RoomId, resume: Option<&Resume<'_>>, now: Instant) {
        if self.defer_join(id, room_id, resume, now) {
            return;
        }
        let Some(v1) = self.session(id).map(|s| s.v1) else { return };
        let audience = if v1 { Audience::Enveloped } else { Audience::Plain };
        let Some(key) = self.rooms.join(room_id, id, audience) else { return };
        self.add_membership(id, Joined { room: room_id, key });
        let App { clients, rooms, envelopes, config, metrics, welcome, .. } = self;
        let Some(client) = clients.get_mut(id) else { return };
        self.presence_at.get_or_insert(presence_time(self.last_presence, now));
        let Some(room) = rooms.get(room_id) else { return };
        let history = room.topic.history();
        let limits = &config.limits;
        let mut send = |conn: &mut Conn, frame: Rc<[u8]>| {
            if conn.send(Chunk::Shared(frame), now, limits).is_ok() {
                metrics.messages_out += 1;
            }
        };
        if !v1 {
            if let Some(frame) = welcome {
                send(&mut client.conn, Rc::clone(frame));
            }
            for (_, stored) in history.iter() {
                if let Some(frame) = stored.plain.clone().or_else(|| plain_of(stored)) {
                    send(&mut client.conn, frame);
                }
            }
            return;
        }
        let (recovered, replay) = match resume {
            None => (None, history.replay_after(0)),
            Some(resume) => {
                let replay = history.replay_after(resume.since);
                let same_epoch = resume.epoch.as_deref() == Some(room.epoch());
                if same_epoch && replay.complete {
                    (Some(true), replay)
                } else {
                    (Some(false), history.replay_after(0))
                }
            }
        };
        let welcome = envelopes.welcome(&Welcome {
            room: room.json_name(),
            epoch: room.epoch(),
            seq: room.topic.last_seq(),
            online: room.topic.member_count(),
            text: config.welcome.as_deref(),
            recovered,
        });
        let mut sent = u64::from(client.conn.send(welcome, now, limits).is_ok());
        for (seq, stored) in replay {
            let frame = match &stored.v1 {
                Some(frame) => Rc::clone(frame),
                None => match stored.plain.as_deref().and_then(server_payload) {
                    Some((opcode, payload)) => envelopes.message(room.json_name(), seq, Payload::of(opcode, payload)),
                    None => continue,
                },
            };
            sent += u64::from(client.conn.send(Chunk::Shared(frame), now, limits).is_ok());
        }
        metrics.messages_out += sent;
        if let Some(recovered) = recovered {
            metrics.resumes[usize::from(!recovered)] += 1;
        }
    }

    /// A text or binary message from a v1 client: an op, or binary bytes for its
    /// path's room.
    fn handle_v1(&mut self, id: usize, opcode: Opcode, message: &[u8], now: Instant) {
        if opcode == Opcode::Binary {
            match self.session(id).and_then(|s| s.home_room()) {
                Some(room) => {
                    let source = Source::V1 { id, ack: None };
                    let _ = self
                        .publish(Publish { source, room: Target::Id(room), payload: Payload::Binary(message) }, now);
                }
                None => self.refuse_op(id, OpError::NotJoined, None, now),
            }
            return;
        }
        // A text message is valid UTF-8 (the Conn checked).
        let text = std::str::from_utf8(message).unwrap_or_default();
        let op = match v1::parse_op(text) {
            Ok(op) => op,
            Err((err, op_id)) => return self.refuse_op(id, err, op_id.as_deref(), now),
        };
        let result = match &op {
            Op::Publish { room, payload, id: op_id } => {
                self.metrics.ops[0] += 1;
                self.joined_room(id, room.as_deref()).map(|room| {
                    let source = Source::V1 { id, ack: op_id.as_deref() };
                    // A refusal is told there (an error envelope with the op's id).
                    let _ =
                        self.publish(Publish { source, room: Target::Id(room), payload: payload.as_payload() }, now);
                })
            }
            Op::Join { room, resume, .. } => {
                self.metrics.ops[1] += 1;
                self.join_op(id, room, resume.as_ref(), now)
            }
            Op::Leave { room, .. } => {
                self.metrics.ops[2] += 1;
                self.joined_room(id, room.as_deref()).map(|room| self.leave(id, room, now))
            }
            Op::Ping { id: op_id } => {
                self.metrics.ops[3] += 1;
                let pong = self.envelopes.pong(op_id.as_deref());
                if let Some(client) = self.clients.get_mut(id) {
                    if client.conn.send(pong, now, &self.config.limits).is_ok() {
                        self.metrics.messages_out += 1;
                    }
                }
                Ok(())
            }
        };
        if let Err(err) = result {
            let op_id = match &op {
                Op::Publish { id, .. } | Op::Join { id, .. } | Op::Leave { id, .. } | Op::Ping { id } => id.as_deref(),
            };
            self.refuse_op(id, err, op_id, now);
        }
    }

    /// An accepted WebSocket's rooms.
    fn session(&self, id: usize) -> Option<Session<'_>> {
        let client = self.clients.get(id)?;
        (client.role != Role::Pending).then(|| Session {
            v1: client.role == Role::V1,
            first: client.first,
            first_is_home: client.first_is_home,
            extra: self.extras.get(&id),
        })
    }

    /// Records that `id` is in a room now (it joined). Its path's room is its first;
    /// the path's room joined again after a leave becomes its first again.
    fn add_membership(&mut self, id: usize, joined: Joined) {
        let Some(client) = self.clients.get_mut(id) else { return };
        let name = self.rooms.get(joined.room).map(|r| r.name());
        let extra = self.extras.entry(id).or_default();
        let back_home = extra.home.is_some() && extra.home.as_deref() == name;
        if back_home {
            extra.home = None;
            if client.first.room != NO_ROOM {
                extra.more.push(client.first);
            }
            client.first = joined;
            client.first_is_home = true;
        } else if client.first.room == NO_ROOM {
            // The upgrade's join keeps `first_is_home` as admit set it.
            client.first = joined;
        } else {
            extra.more.push(joined);
        }
        if extra.is_empty() {
            self.extras.remove(&id);
        }
    }

    /// Records that `id` left `room`; returns its membership, if it was in it.
    fn remove_membership(&mut self, id: usize, room: RoomId) -> Option<Joined> {
        let client = self.clients.get_mut(id)?;
        if client.first.room == room && room != NO_ROOM {
            let joined = client.first;
            if client.first_is_home {
                let name = self.rooms.get(room).map_or("", |r| r.name());
                self.extras.entry(id).or_default().home = Some(name.into());
            }
            client.first = NOT_JOINED;
            client.first_is_home = false;
            return Some(joined);
        }
        let extra = self.extras.get_mut(&id)?;
        let i = extra.more.iter().position(|j| j.room == room)?;
        let joined = extra.more.swap_remove(i);
        if extra.is_empty() {
            self.extras.remove(&id);
        }
        Some(joined)
    }

    /// The room an op names (or the path's room), if the client is in it.
    fn joined_room(&self, id: usize, name: Option<&str>) -> Result<RoomId, OpError> {
        let session = self.session(id).ok_or(OpError::NotJoined)?;
        match name {
            None => session.home_room().ok_or(OpError::NotJoined),
            Some(name) => {
                rooms::check_name(name).map_err(|_| OpError::InvalidRoomName)?;
                let room = self.rooms.find(name).ok_or(OpError::NotJoined)?;
                session.find(room).map(|j| j.room).ok_or(OpError::NotJoined)
            }
        }
    }

    fn join_op(&mut self, id: usize, name: &str, resume: Option<&Resume<'_>>, now: Instant) -> Result<(), OpError> {
        rooms::check_name(name).map_err(|_| OpError::InvalidRoomName)?;
        let session = self.session(id).ok_or(OpError::NotJoined)?;
        if self.rooms.find(name).is_some_and(|room| session.find(room).is_some()) {
            return Err(OpError::AlreadyJoined);
        }
        if session.count() >= self.config.max_rooms_per_connection {
            return Err(OpError::TooManyRooms);
        }
        if self.rooms.find(name).is_none() && !self.take_new_room(id, now) {
            return Err(OpError::TooManyNewRooms);
        }
        let room = self.rooms.find_or_create(name, now).map_err(|_| OpError::RoomLimit)?;
        self.join(id, room, resume, now);
        Ok(())
    }

    /// Counts a room `id` makes by `join`: at most `--rooms-per-second` in a second
    /// (a window from the first of them), so that one connection cannot churn the
    /// room table. False when this one is over.
    fn take_new_room(&mut self, id: usize, now: Instant) -> bool {
        let window = self.new_rooms.entry(id).or_insert((now, 0));
        if now >= window.0 + Duration::from_secs(1) {
            *window = (now, 0);
        }
        if window.1 >= self.config.rooms_per_second {
            return false;
        }
        window.1 += 1;
        true
    }

    fn leave(&mut self, id: usize, room: RoomId, now: Instant) {
        let Some(audience) = self.session(id).map(|s| s.audience()) else { return };
        if let Some(joined) = self.remove_membership(id, room) {
            self.rooms.leave(joined.room, joined.key, audience, now);
            self.presence_at.get_or_insert(presence_time(self.last_presence, now));
        }
    }

    fn refuse_op(&mut self, id: usize, err: OpError, op_id: Option<&str>, now: Instant) {
        self.metrics.op_errors[err as usize] += 1;
        let Some(client) = self.clients.get_mut(id) else { return };
        debug!("op refused for {}: {}", client.io, err.reason());
        let error = self.envelopes.error(op_id, err);
        if client.conn.send(error, now, &self.config.limits).is_ok() {
            self.metrics.messages_out += 1;
        }
    }

    /// Keeps a message encoded by `encode` in its room's history and queues it to
    /// every member. The publisher first: its ack (before its own copy), and its flush
    /// early, so that it can send its next message while the others are written.
    fn fan_out(&mut self, room_id: RoomId, stored: Stored, origin: Option<(usize, Option<&str>)>, now: Instant) -> Seq {
        let App { clients, rooms, envelopes, compressor, config, dirty, metrics, .. } = self;
        let limits = &config.limits;
        let seq = rooms.publish(room_id, &stored);
        let Some(room) = rooms.get(room_id) else { return seq };
        if let Some((publisher, ack)) = origin {
            if let Some(client) = clients.get_mut(publisher) {
                if let Some(ack) = ack {
                    let _ = client.conn.send(envelopes.ack(ack, room.json_name(), seq), now, limits);
                }
                queue_flush(dirty, publisher, client);
            }
        }
        for (audience, frame) in [(Audience::Plain, &stored.plain), (Audience::Enveloped, &stored.v1)] {
            let Some(frame) = frame else { continue };
            // permessage-deflate: compressed once, for the first member that takes it.
            let compressed = OnceCell::new();
            for member in room.topic.members(audience) {
                // Members closing (slow consumers, stop) get nothing more.
                let Some(recipient) = clients.get_mut(member).filter(|c| c.conn.is_open()) else { continue };
                let frame = match recipient.conn.takes_compressed() {
                    true => compressed
                        .get_or_init(|| compress(compressor, frame, config.deflate_min_size, metrics))
                        .as_ref()
                        .unwrap_or(frame),
                    false => frame,
                };
                if recipient.conn.send(Chunk::Shared(Rc::clone(frame)), now, limits).is_ok() {
                    metrics.fanout_deliveries += 1;
                    metrics.messages_out += 1;
                }
                queue_flush(dirty, member, recipient);
            }
        }
        seq
    }

    /// A plain HTTP request: the pages, /metrics and /healthz where they are served,
    /// and the API. Judged from the head alone (route, method, token, declared length)
    /// before any body byte is read; a publish's body is read only then, and the
    /// request comes back with it.
    #[inline(never)]
    fn answer_http(&mut self, id: usize, request: Box<HttpRequest>, now: Instant) {
        // Counted once: a request whose body was read comes back with it.
        if request.body.is_empty() {
            self.metrics.http_requests += 1;
        }
        let Some(listener) = self.clients.get(id).map(|c| c.listener) else { return };
        let operator = listener == Listener::Operator;
        let operator_here = operator || self.config.metrics_listen.is_none();
        let path = request.target.split('?').next().unwrap_or_default();
        let get = request.method == Method::Get;
        let answer = match path {
            _ if operator && !matches!(path, "/metrics" | "/healthz") => Answer::Now(http::not_found()),
            "/metrics" | "/healthz" if operator_here && !get => Answer::Now(api::method_not_allowed("GET")),
            "/metrics" if operator_here => {
                let mut body = self.metrics.render(&self.gauges());
                self.render_backplane(&mut body);
                Answer::Now(http::response(200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes()))
            }
            "/healthz" if operator_here && self.lifecycle != Lifecycle::Serving => {
                Answer::Now(http::response(503, http::TEXT, b"shutting down\n"))
            }
            "/healthz" if operator_here => {
                Answer::Now(http::response(200, http::TEXT, format!("ok\n{}", self.backplane_health()).as_bytes()))
            }
            _ => match api::route(path) {
                Some(route) => self.answer_api(id, route, &request, now),
                None if get => Answer::Now(http::answer(path)),
                None => Answer::Now(api::method_not_allowed("GET")),
            },
        };
        let Some(client) = self.clients.get_mut(id) else { return };
        match answer {
            Answer::Now(answer) => client.conn.respond(Chunk::Owned(answer), now),
            Answer::ReadBody => client.conn.read_body(request, &self.config.limits),
            Answer::Later => {}
        }
    }

    /// The HTTP API (docs/protocol.md): off (404) without a token and in echo mode.
    fn answer_api(&mut self, id: usize, route: api::Route<'_>, request: &HttpRequest, now: Instant) -> Answer {
        let Some(token) = self.config.api_token.as_deref().filter(|_| self.config.mode == Mode::Broadcast) else {
            return Answer::Now(http::not_found());
        };
        if !api::authorized(request.authorization.as_deref(), token) {
            return Answer::Now(api::unauthorized());
        }
        match (route, request.method) {
            (api::Route::Rooms, Method::Get) => {
                let list: Vec<api::RoomInfo<'_>> = self
                    .rooms
                    .iter()
                    .map(|room| api::RoomInfo {
                        room: room.name(),
                        epoch: room.epoch(),
                        online: room.topic.member_count(),
                        seq: room.topic.last_seq(),
                        history: room.topic.history().len(),
                    })
                    .collect();
                Answer::Now(api::rooms(&list))
            }
            (api::Route::Rooms, _) => Answer::Now(api::method_not_allowed("GET")),
            (api::Route::Messages(room), Method::Post) => self.api_publish(id, room, request, now),
            (api::Route::Messages(_), _) => Answer::Now(api::method_not_allowed("POST")),
            (api::Route::Unknown, _) => Answer::Now(http::not_found()),
        }
    }

    fn api_publish(&mut self, id: usize, encoded_room: &str, request: &HttpRequest, now: Instant) -> Answer {
        let length = match request.body_length {
            BodyLength::None | BodyLength::Unknown => return Answer::Now(api::error(411, "Content-Length required")),
            BodyLength::Length(n) if n > self.config.limits.max_message as u64 => {
                return Answer::Now(api::error(413, "body over --max-message"))
            }
            BodyLength::Length(n) => n,
        };
        let name = match rooms::decode_name(encoded_room) {
            Ok(name) => name,
            Err(why) => return Answer::Now(api::error(400, why.reason())),
        };
        // The head passed: the body is read next (`answer_http`), then this again.
        if (request.body.len() as u64) < length {
            return Answer::ReadBody;
        }
        let payload = if api::is_binary(request.content_type.as_deref()) {
            Payload::Binary(&request.body)
        } else {
            match std::str::from_utf8(&request.body) {
                Ok(text) => Payload::Text(text),
                Err(_) => return Answer::Now(api::error(400, "a text body must be UTF-8")),
            }
        };
        match self.publish(Publish { source: Source::Api(id), room: Target::Named(&name), payload }, now) {
            Ok(Outcome::Numbered(seq)) => Answer::Now(api::published(&name, seq)),
            // Answered when Redis has numbered it (`app/redis.rs`).
            Ok(Outcome::Sent) => Answer::Later,
            // Answered already (`refuse_publish`).
            Err(_) => Answer::Later,
        }
    }

    fn gauges(&self) -> Gauges {
        let (history_len, history_bytes) = match self.config.mode {
            Mode::Broadcast => self.rooms.history_totals(),
            Mode::Echo => (self.echo_history.len(), self.echo_history.bytes()),
        };
        let mut g = Gauges {
            handshaking: 0,
            open: 0,
            closing: 0,
            history_len,
            history_bytes,
            rooms: self.rooms.len(),
            rooms_created: self.rooms.created,
            rooms_expired: self.rooms.expired,
            op_error_reasons: OpError::ALL.map(OpError::reason),
        };
        for (_, client) in &self.clients {
            match client.conn.phase() {
                Phase::Handshaking => g.handshaking += 1,
                Phase::Open => g.open += 1,
                Phase::Closing => g.closing += 1,
            }
        }
        g
    }

    /// The peer ended its side of the stream (or the socket failed).
    pub fn handle_eof(&mut self, id: usize) {
        let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.handle_eof();
        }
        self.track_unfinished(id, held, self.now);
        self.after_activity(id);
    }

    /// `id`'s deadline (from `poll_timeout`) has come.
    pub fn handle_timeout(&mut self, id: usize, now: Instant) {
        self.now = now;
        let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.handle_timeout(now, &self.config.limits);
        }
        self.track_unfinished(id, held, now);
        self.after_activity(id);
    }

    /// When `id` next wants `handle_timeout`.
    pub fn poll_timeout(&self, id: usize) -> Option<Instant> {
        self.clients.get(id).and_then(|c| c.conn.poll_timeout())
    }

    /// A stop signal (SIGINT, SIGTERM): the first closes every client with 1001 and
    /// waits close-timeout at most; a second stops now.
    pub fn handle_stop_signal(&mut self, now: Instant) -> Stop {
        self.now = now;
        if self.lifecycle != Lifecycle::Serving {
            self.lifecycle = Lifecycle::Stopping { until: Some(now) };
            return Stop::Now;
        }
        self.lifecycle = Lifecycle::Stopping { until: self.config.limits.close_timeout.map(|t| now + t) };
        let ids: Vec<usize> = self.clients.iter().map(|(id, _)| id).collect();
        for id in ids {
            let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
            if let Some(client) = self.clients.get_mut(id) {
                client.conn.close(CloseCode::GOING_AWAY, "server shutting down", now, &self.config.limits);
            }
            self.track_unfinished(id, held, now);
            self.after_activity(id);
        }
        Stop::Closing
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
            Lifecycle::Stopping { until } => self.clients.is_empty() || until.is_some_and(|t| t <= now),
            Lifecycle::Serving => false,
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn client_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.clients.iter().map(|(id, _)| id)
    }

    /// When enough memory was freed by large queues to be worth giving back to the
    /// system (see `memory::give_back`).
    pub fn poll_trim(&self, now: Instant) -> Option<Instant> {
        (self.released >= TRIM_AFTER).then(|| self.last_trim.map_or(now, |t| t + TRIM_EVERY))
    }

    /// The runtime gave memory back at `now`.
    pub fn handle_trimmed(&mut self, now: Instant) {
        self.released = 0;
        self.last_trim = Some(now);
    }

    /// When rooms next need `handle_housekeeping`: a presence update is owed, or an
    /// empty room's time is up.
    pub fn poll_housekeeping(&self) -> Option<Instant> {
        [self.presence_at, self.rooms.poll_expiry(), self.poll_touch()].into_iter().flatten().min()
    }

    /// Tells rooms' v1 members who is online (one shared envelope per room whose count
    /// changed), and frees rooms that have been empty for --room-ttl.
    pub fn handle_housekeeping(&mut self, now: Instant) {
        self.now = now;
        self.touch(now);
        if self.presence_at.is_some_and(|t| t <= now) {
            self.presence_at = None;
            self.last_presence = Some(now);
            let App { clients, rooms, envelopes, config, dirty, metrics, .. } = self;
            rooms.take_presence(|room| {
                let frame = envelopes.presence(room.json_name(), room.topic.member_count());
                metrics.presence_updates += 1;
                for member in room.topic.members(Audience::Enveloped) {
                    let Some(client) = clients.get_mut(member).filter(|c| c.conn.is_open()) else { continue };
                    if client.conn.send(Chunk::Shared(Rc::clone(&frame)), now, &config.limits).is_ok() {
                        metrics.messages_out += 1;
                    }
                    queue_flush(dirty, member, client);
                }
            });
            // A send that cut a slow consumer is settled when its flush is done.
        }
        if self.rooms.poll_expiry().is_some_and(|t| t <= now) {
            let freed = self.rooms.expire(now);
            debug!("freed {freed} empty rooms");
        }
    }

    /// Keeps `unfinished` the sum of every client's `Conn::unfinished_memory` after
    /// something that may have changed `id`'s, which held `held` before. Over
    /// `--max-unfinished-memory` the largest holder gives its buffers back (an
    /// unfinished message is refused with 1013, a body with 503) until it is under:
    /// with many connections each holding part of a large message, memory stays
    /// within the budget instead of `--max-connections` x `--max-message`.
    #[inline]
    fn track_unfinished(&mut self, id: usize, held: usize, now: Instant) {
        let after = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        if after != held {
            self.unfinished_changed(id, held, after, now);
        }
    }

    /// `id`'s unfinished input went from `held` to `after` bytes.
    fn unfinished_changed(&mut self, id: usize, held: usize, after: usize, now: Instant) {
        self.unfinished = (self.unfinished + after).saturating_sub(held);
        if self.unfinished > self.config.max_unfinished_memory {
            self.shed_unfinished(id, now);
        }
    }

    /// Over `--max-unfinished-memory`: the largest holders give their bytes back until
    /// the total is under it again.
    #[cold]
    fn shed_unfinished(&mut self, id: usize, now: Instant) {
        while self.unfinished > self.config.max_unfinished_memory {
            // A scan, only while over the budget: every turn frees a holder's bytes.
            let largest = self.clients.iter().map(|(i, c)| (c.conn.unfinished_memory(), i)).max();
            let Some((held, largest)) = largest.filter(|&(held, _)| held > 0) else { break };
            let client = &mut self.clients[largest];
            if client.conn.shed_unfinished(now, &self.config.limits) {
                self.metrics.unfinished_refused += 1;
                warn!("refusing {}: its unfinished input is the largest over --max-unfinished-memory", client.io);
            }
            let freed = held - client.conn.unfinished_memory();
            if freed == 0 {
                break;
            }
            self.unfinished -= freed;
            if largest != id {
                self.after_activity(largest);
            }
        }
    }

    /// After anything happened to a client: settle it, and schedule a flush if it
    /// has something to write. Inlined: it ends every read (out of line, it cost the
    /// echo path about 10 instructions per message).
    #[inline]
    fn after_activity(&mut self, id: usize) {
        self.settle(id);
        if let Some(client) = self.clients.get_mut(id) {
            if client.conn.has_output() || client.conn.poll_write_shutdown() {
                queue_flush(&mut self.dirty, id, client);
            }
        }
    }

    /// Logs and counts why a client is ending, and removes it once closed.
    fn settle(&mut self, id: usize) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if let Some(fault) = client.conn.poll_fault() {
            count_fault(&mut self.metrics, &mut self.released, &self.config, &client.io, fault);
        }
        if client.conn.is_closed() {
            self.remove(id);
        }
    }

    /// Forgets a closed client; dropping its `T` closes its socket.
    fn remove(&mut self, id: usize) {
        let Some(client) = self.clients.try_remove(id) else { return };
        self.unfinished = self.unfinished.saturating_sub(client.conn.unfinished_memory());
        self.forget_in_backplane(id);
        let memory = client.conn.queue_memory();
        if memory >= LARGE_QUEUE {
            self.released += memory;
        }
        let extra = self.extras.remove(&id);
        self.new_rooms.remove(&id);
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
        }
    }
}

/// Writes a frame (header and payload) straight to a client's socket; returns what
/// the socket did not take, for `Conn::finish_write_through`. (The payload may borrow
/// the `Conn`: the caller hands the rest over once it is copied out.)
#[inline(always)]
fn write_through<T>(
    io: &mut T,
    parts: [&[u8]; 2],
    write_now: &mut impl FnMut(&mut T, [&[u8]; 2]) -> usize,
    metrics: &mut Metrics,
) -> Option<Chunk> {
    let written = write_now(io, parts);
    metrics.bytes_written += written as u64;
    metrics.messages_out += 1;
    Chunk::rest_of(parts, written)
}

/// Logs and counts why a client is ending (`App::settle`).
#[cold]
#[inline(never)]
fn count_fault<T: fmt::Display>(metrics: &mut Metrics, released: &mut usize, config: &Config, io: &T, fault: Fault) {
    log_fault(io, fault);
    match fault {
        Fault::Handshake(err) => metrics.reject(Rejection::of(err)),
        Fault::HandshakeTimeout => metrics.reject(Rejection::HandshakeTimeout),
        Fault::PongTimeout => metrics.heartbeat_timeouts += 1,
        Fault::SlowConsumer => {
            metrics.slow_consumers += 1;
            // Its queue, about the limit, was just freed.
            *released += config.limits.max_backpressure;
        }
        Fault::Peer(_) | Fault::CloseTimeout => {}
    }
}

/// Queues a client for this iteration's flush, once.
fn queue_flush<T>(dirty: &mut Vec<usize>, id: usize, client: &mut Client<T>) {
    if !client.flush_queued {
        client.flush_queued = true;
        dirty.push(id);
    }
}

/// The room an upgrade's path names (made if there is none yet) and the resume its
/// query asks for.
fn room_of_upgrade(
    rooms: &mut Rooms,
    request: &UpgradeRequest,
    v1: bool,
    now: Instant,
) -> Result<(RoomId, Option<Resume<'static>>), Refusal> {
    let name = rooms::room_from_path(request.path()).map_err(Refusal::BadRoomName)?;
    // Plain clients know no seqs: they get the whole history, as always.
    let resume = match v1 {
        true => Resume::from_query(request.query()).map_err(|_| Refusal::BadResume)?,
        false => None,
    };
    let room = rooms.find_or_create(&name, now).map_err(|_| Refusal::RoomLimit)?;
    Ok((room, resume))
}

/// When rooms may next tell their presence: now, or a second after they last did.
fn presence_time(last: Option<Instant>, now: Instant) -> Instant {
    last.map_or(now, |t| (t + PRESENCE_EVERY).max(now))
}

/// The 1009 close reason, and the API's 413 body, of a message whose envelope is too big.
const TOO_BIG_FOR_ENVELOPE: &str = "message too big: its mioket.v1 envelope would pass --max-message";

/// Whether a message's mioket.v1 envelope stays within --max-message (plus
/// `v1::ENVELOPE_OVERHEAD`). Checked on every publish, whoever is in the room: the
/// history replays it to v1 members who join later.
fn fits_envelope(config: &Config, payload: Payload<'_>) -> bool {
    let max = config.limits.max_message;
    // Escaping grows text 6x at most (base64 4/3): a message that fits even so is not
    // counted byte by byte (the usual small message).
    payload.bytes().len().saturating_mul(6) <= max || v1::envelope_payload_len(payload) <= max
}

/// A message in the encodings its room needs now: plain for plain members, a v1
/// envelope for v1 members, and for the history at least one of them (plain when the
/// room has no v1 member). None at all when nobody listens and nothing is kept. One
/// allocation per encoding made, whatever the room's size.
fn encode(rooms: &Rooms, envelopes: &mut Envelopes, room_id: RoomId, payload: Payload<'_>, keep: bool) -> Stored {
    let Some(room) = rooms.get(room_id) else { return Stored { plain: None, v1: None } };
    let has_v1 = room.topic.audience_count(Audience::Enveloped) > 0;
    let plain = room.topic.audience_count(Audience::Plain) > 0 || (keep && !has_v1);
    let seq = room.topic.last_seq() + 1;
    Stored {
        plain: plain.then(|| shared_message(payload.opcode(), payload.bytes())),
        v1: has_v1.then(|| envelopes.message(room.json_name(), seq, payload)),
    }
}

/// A whole frame of ours, compressed (RSV1) into one shared allocation, if it is long
/// enough to be worth it and shrinks.
fn compress(compressor: &mut Compressor, frame: &[u8], min_size: usize, metrics: &mut Metrics) -> Option<Rc<[u8]>> {
    let (opcode, payload) = server_payload(frame)?;
    if payload.len() < min_size {
        return None;
    }
    let compressed = Rc::from(compressor.frame(opcode, payload)?);
    metrics.compressed_frames += 1;
    Some(compressed)
}

/// The plain frame of a message kept only as a v1 envelope.
fn plain_of(stored: &Stored) -> Option<Rc<[u8]>> {
    let (opcode, payload) = v1::payload_of_envelope(stored.v1.as_deref()?)?;
    Some(shared_message(opcode, &payload))
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

mod bus;
mod output;
mod publish;
mod redis;
mod refusal;

pub use output::{ClientView, Transmit};
pub use refusal::Refusal;
#[cfg(test)]
mod tests;
