//! A binary upgrade, the application's side: everything it holds as plain data
//! (`AppState`), the clients that move parked meanwhile, and an application made
//! again from that data in the new process. The format (a magic, a version, the
//! encoding) and the public `freeze`/`thaw`/`restore` are src/upgrade/snapshot.rs's.
//!
//! What moves: every client whose socket can (`ClientIo::socket_fd`: plain TCP, not
//! TLS) and which stands between two events (`Conn::freeze`), with its rooms, token,
//! rate-limit buckets and bytes in and out; every room with its epoch, numbering,
//! history, expiry and generation; the echo history; the counters; the local bus's
//! publish ids (src/dedup.rs: its hash key and records). Client ids are new in the new
//! process (the clients' order is kept); rooms' member keys are new too.

use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bus::Bus;
use super::clients::{count_queued, Client};
use super::deliver::queue_flush;
use super::housekeeping::presence_time;
use super::session::{Extra, Joined, Role, NOT_JOINED};
use super::{App, ClientIo, Listener};
use crate::auth::limits::{Limiter, LimiterState};
use crate::auth::{Auth, Grant};
use crate::config::Config;
use crate::dedup::DedupState;
use crate::frame::CloseCode;
use crate::frozen::{self, Bytes};
use crate::metrics::Metrics;
use crate::protocol::frozen::{ConnState, Invalid};
use crate::protocol::Conn;
use crate::pubsub::{Audience, Seq};
use crate::rooms::{RoomId, RoomsState};

/// The application as plain data (see the module's doc).
#[derive(Serialize, Deserialize)]
pub struct AppState {
    /// As JSON by field name: counters come and go between releases.
    #[serde(with = "frozen::json")]
    pub(crate) metrics: Metrics,
    pub rooms: RoomsState,
    /// When presence may next be told (time left), and when it last was (time since):
    /// presence is told at most every `PRESENCE_EVERY`.
    pub(crate) presence_at: Option<Duration>,
    pub(crate) last_presence: Option<Duration>,
    pub(crate) echo_last_seq: Seq,
    #[serde(deserialize_with = "frozen::seq")]
    pub(crate) echo_history: Vec<Bytes>,
    /// The distinct grants of the clients with a token.
    #[serde(deserialize_with = "frozen::seq")]
    pub(crate) grants: Vec<Grant>,
    /// In the order of the sockets handed over with it.
    #[serde(deserialize_with = "frozen::seq")]
    pub clients: Vec<ClientState>,
    /// The publish ids remembered here (the local bus; with Redis, Redis keeps them).
    pub(crate) dedup: Option<DedupState>,
    /// With Redis: the node's name and its next request number, so that the new process
    /// goes on as the same node (its presence parts and registry entry, not a second
    /// node counted until the first one is taken as dead; no request number reused).
    pub(crate) node: Option<(String, u64)>,
}

/// One client: its connection, and what the application keeps for it.
#[derive(Serialize, Deserialize)]
pub struct ClientState {
    pub conn: ConnState,
    /// 0: the WebSocket port; 1: the operator port (`--metrics-listen`).
    pub(crate) listener: u8,
    /// 0: no answer yet (or plain HTTP); 1: a plain WebSocket; 2: `mioket.v1`.
    pub role: u8,
    /// Its first room (an index in `AppState::rooms`), and whether it is the path's.
    pub(crate) first: Option<u32>,
    pub(crate) first_is_home: bool,
    /// Its path's room by name while it is out of it, and its other rooms.
    pub(crate) home: Option<String>,
    #[serde(deserialize_with = "frozen::seq")]
    pub(crate) more: Vec<u32>,
    /// Rooms it made by `join`: how long ago its window began, and how many.
    pub(crate) new_rooms: Option<(Duration, u64)>,
    pub(crate) limiter: Option<LimiterState>,
    /// Its grant (an index in `AppState::grants`).
    pub(crate) grant: Option<u32>,
}

impl<T: ClientIo> App<T> {
    /// Captures the application and parks every client out of the table: nothing
    /// reaches one now (its events are stale, no input is read, nothing is numbered
    /// that the snapshot does not hold, nothing is written). The clients that move are
    /// those whose socket can (`ClientIo::socket_fd`) and which stand between two
    /// events; their sockets come back in the snapshot's order.
    pub(crate) fn freeze_state(&mut self, now: Instant) -> (AppState, Vec<RawFd>) {
        // Frozen twice (a second attempt after a failed one): from everything again.
        self.thaw_parked(now);
        let (rooms, room_ids) = self.rooms.freeze(now);
        let index_of: HashMap<RoomId, u32> = room_ids.iter().enumerate().map(|(i, &id)| (id, i as u32)).collect();
        let room = |id| Some((*index_of.get(&id)?, self.rooms.get(id)?.generation()));
        let dedup = self.bus.dedup().map(|d| d.freeze(now, room));
        let node = self.bus.mirror().map(|m| (m.node().to_string(), m.next_request()));
        let mut grant_index: HashMap<*const Grant, u32> = HashMap::new();
        let mut grants = Vec::new();
        let mut clients = Vec::new();
        let mut fds = Vec::new();
        let mut parked = Vec::with_capacity(self.clients.len());
        // Flushes are queued again when the clients are back (`unpark`).
        self.dirty.clear();
        for (id, mut client) in std::mem::take(&mut self.clients) {
            client.flush_queued = false;
            let (Some(fd), Some(conn)) = (client.io.socket_fd(), client.conn.freeze(now)) else {
                parked.push((id, client, false));
                continue;
            };
            let extra = self.extras.get(&id);
            let grant = self.grants.get(id).map(|g| {
                *grant_index.entry(Rc::as_ptr(g)).or_insert_with(|| {
                    grants.push(Grant::clone(g));
                    grants.len() as u32 - 1
                })
            });
            let room = |j: &Joined| index_of.get(&j.room).copied();
            clients.push(ClientState {
                conn,
                listener: u8::from(client.listener == Listener::Operator),
                role: match client.role {
                    Role::Pending => 0,
                    Role::Plain => 1,
                    Role::V1 => 2,
                },
                first: room(&client.first),
                first_is_home: client.first_is_home,
                home: extra.and_then(|e| e.home.as_deref()).map(str::to_string),
                more: extra.map(|e| e.more.iter().filter_map(room).collect()).unwrap_or_default(),
                new_rooms: self.new_rooms.get(&id).map(|&(start, n)| (frozen::ago(start, now), n as u64)),
                limiter: self.limiters.get(&id).map(|l| l.freeze(now)),
                grant,
            });
            fds.push(fd);
            parked.push((id, client, true));
        }
        self.parked = Some(parked);
        let echo_history = self.echo_history.iter().map(|(_, f)| Bytes(f.to_vec())).collect();
        let state = AppState {
            dedup,
            node,
            metrics: self.metrics.clone(),
            rooms,
            presence_at: frozen::left(self.presence_at, now),
            last_presence: self.last_presence.map(|t| frozen::ago(t, now)),
            echo_last_seq: self.echo_history.last_seq(),
            echo_history,
            grants,
            clients,
        };
        (state, fds)
    }

    /// The handover failed: every client is back, as it was, under the same id. Their
    /// sockets' readiness may have been missed meanwhile: the runtime reads every
    /// client once.
    pub(crate) fn thaw_parked(&mut self, now: Instant) {
        self.now = now;
        let Some(parked) = self.parked.take() else { return };
        self.unpark(parked.into_iter().map(|(id, client, _)| (id, client)));
    }

    fn unpark(&mut self, parked: impl Iterator<Item = (usize, Client<T>)>) {
        let mut ids = Vec::new();
        let back = parked.inspect(|(id, _)| ids.push(*id));
        self.clients = std::mem::take(&mut self.clients).into_iter().chain(back).collect();
        for id in ids {
            self.after_activity(id);
        }
    }

    /// Whether the clients are parked for a handover (`freeze`, until `thaw` or
    /// `close_unmoved`).
    pub fn is_frozen(&self) -> bool {
        self.parked.is_some()
    }

    /// After the new process confirmed: the clients that moved are let go (their
    /// sockets closed here, without a shutdown: the new process holds its own), and
    /// the others (TLS) are back only to be closed with 1012 (Service Restart) once
    /// what is queued for them is written (a closing connection publishes nothing); a
    /// `mioket.v1` client resumes on the new process. Their ids are back in
    /// `drain_retimed_into` for their close deadline.
    pub fn close_unmoved(&mut self, now: Instant) {
        self.now = now;
        let Some(parked) = self.parked.take() else { return };
        let (moved, stay): (Vec<_>, Vec<_>) = parked.into_iter().partition(|(_, _, moved)| *moved);
        self.queued -= moved.iter().map(|(_, client, _)| client.conn.queue_reported()).sum::<usize>();
        let stay: Vec<(usize, Client<T>)> = stay.into_iter().map(|(id, client, _)| (id, client)).collect();
        let ids: Vec<usize> = stay.iter().map(|(id, _)| *id).collect();
        self.unpark(stay.into_iter());
        for id in ids {
            if let Some(client) = self.clients.get_mut(id) {
                client.conn.close(CloseCode(1012), "service restart", now, &self.config.limits);
                self.retimed.push(id);
            }
            self.after_activity(id);
        }
    }

    /// The application `state` describes, its clients on the sockets `fds` (the
    /// same order), each made the runtime's by `io`: the i-th is client i (the runtime
    /// registers the sockets under those ids as they arrive). Clients with output are
    /// queued for a flush; the runtime reads every client once.
    pub(crate) fn restore_state(
        config: Config,
        auth: Auth,
        state: AppState,
        fds: Vec<OwnedFd>,
        now: Instant,
        mut io: impl FnMut(OwnedFd) -> T,
    ) -> Result<App<T>, Invalid> {
        if fds.len() != state.clients.len() {
            return Err(Invalid("as many sockets as clients"));
        }
        let mut app = App::with_auth(config, auth);
        app.now = now;
        app.metrics = state.metrics;
        let room_ids = app.rooms.thaw(&state.rooms, now).map_err(|e| Invalid(e.0))?;
        if let (Some(saved), Some(dedup)) = (&state.dedup, app.bus.dedup_mut()) {
            let rooms = &app.rooms;
            let room = |i: u32| room_ids.get(i as usize).and_then(|&id| Some((id, rooms.get(id)?.generation())));
            dedup.thaw(saved, now, room);
        }
        if let (Some((node, next_req)), Bus::Redis(mirror)) = (state.node, &mut app.bus) {
            mirror.go_on_as(node, next_req).map_err(|()| Invalid("node name"))?;
        }
        app.echo_history.restart(state.echo_last_seq.saturating_sub(state.echo_history.len() as Seq));
        for frame in state.echo_history {
            app.echo_history.push(&Rc::from(frame.0));
        }
        let grants: Vec<Rc<Grant>> = state.grants.into_iter().map(Rc::new).collect();
        let room = |i: u32| room_ids.get(i as usize).copied().ok_or(Invalid("room index"));
        for (saved, fd) in state.clients.into_iter().zip(fds) {
            let conn = Conn::thaw(saved.conn, now, &app.config.limits)?;
            let role = match saved.role {
                0 => Role::Pending,
                1 => Role::Plain,
                2 => Role::V1,
                _ => return Err(Invalid("role")),
            };
            let listener = if saved.listener == 1 { Listener::Operator } else { Listener::Main };
            let client = Client {
                conn,
                io: io(fd),
                first: NOT_JOINED,
                role,
                first_is_home: saved.first_is_home,
                listener,
                flush_queued: false,
            };
            let id = app.clients.insert(client);
            count_queued(&mut app.queued, &mut app.clients[id].conn);
            app.unfinished += app.clients[id].conn.unfinished_memory();
            if role != Role::Pending {
                app.open += 1;
                let audience = if role == Role::V1 { Audience::Enveloped } else { Audience::Plain };
                let join = |app: &mut App<T>, i: u32| -> Result<Joined, Invalid> {
                    let room = room(i)?;
                    let key = app.rooms.join(room, id, audience).ok_or(Invalid("room"))?;
                    Ok(Joined { room, key })
                };
                if let Some(i) = saved.first {
                    app.clients[id].first = join(&mut app, i)?;
                }
                let mut more = Vec::new();
                for i in saved.more {
                    more.push(join(&mut app, i)?);
                }
                let home = saved.home.map(String::into_boxed_str);
                if home.is_some() || !more.is_empty() {
                    app.extras.insert(id, Extra { home, more });
                }
                let grant = saved.grant.map(|i| grants.get(i as usize).cloned().ok_or(Invalid("grant"))).transpose()?;
                let ip = app.counted_ip(id);
                app.count_in(id, ip, grant);
            }
            if let Some((ago, n)) = saved.new_rooms {
                app.new_rooms.insert(id, (frozen::since(ago, now), usize::try_from(n).unwrap_or(usize::MAX)));
            }
            if let Some(limiter) = saved.limiter {
                app.limiters.insert(id, Limiter::thaw(&limiter, now));
            }
            let client = &mut app.clients[id];
            if client.conn.has_output() || client.conn.poll_write_shutdown() {
                queue_flush(&mut app.dirty, id, client);
            }
        }
        app.last_presence = state.last_presence.map(|ago| frozen::since(ago, now));
        app.presence_at = frozen::deadline(state.presence_at, now);
        if app.rooms.thaw_presence(&state.rooms, &room_ids) {
            app.presence_at.get_or_insert(presence_time(app.last_presence, now));
        }
        Ok(app)
    }
}
