//! Tokens and permissions as the application applies them (src/auth/ decides): the
//! grant of an upgrade and its refusals, the per-address and per-user counts, the
//! `refresh` op, expiry, presence with users, and the moderation API.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::session::Role;
use super::{App, Client, ClientIo};
use crate::auth::{self, Auth, Denied, Grant, TokenError};
use crate::backplane::{Asker, Moderation, Part, PartUser};
use crate::frame::CloseCode;
use crate::handshake;
use crate::metrics::CloseReason;
use crate::outqueue::Chunk;
use crate::protocol::UpgradeRequest;
use crate::pubsub::Audience;
use crate::rooms::{Room, RoomId};
use crate::v1::{self, OpError};

/// The wall clock now, as a duration since 1970 (the runtime's one look at it: the
/// application then counts from an `Instant`).
pub(super) fn unix_time() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Whether the path's room may be read (`grant` `None`: anonymous), told as the
/// table says: no token for a room that is not anonymous is `token required`, a
/// token that does not reach it `forbidden`.
pub(super) fn may_enter(auth: &Auth, grant: Option<&Grant>, room: &str) -> Result<(), Denied> {
    let grant = grant.unwrap_or(auth.anonymous());
    match (auth.may_read(grant, room), grant.user.is_some()) {
        (true, _) => Ok(()),
        (false, true) => Err(Denied::Forbidden),
        (false, false) => Err(Denied::Token(TokenError::Required)),
    }
}

/// A grant's expiry (seconds since 1970) in `App::expiries`, ordered soonest first
/// (the heap's greatest).
pub(super) struct Expiry {
    pub(super) at: u64,
    grant: std::rc::Weak<Grant>,
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Expiry {}

impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Expiry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

/// Most users a presence answer lists (`"truncated":true` beyond).
const MAX_PRESENCE_USERS: usize = 1000;

/// This node's members of a room with a token, by `sub`: their `info` (JSON text)
/// and connection count.
type LocalUsers<'a> = BTreeMap<&'a str, (Option<&'a str>, usize)>;

/// A user's `info`: a token's claim here (JSON text), or another node's.
enum Info<'a> {
    Text(Option<&'a str>),
    Value(Option<&'a serde_json::Value>),
}

impl Info<'_> {
    fn value(self) -> Option<serde_json::Value> {
        match self {
            Info::Text(text) => text.and_then(|i| serde_json::from_str(i).ok()),
            Info::Value(value) => value.cloned(),
        }
    }
}

/// One user in a presence answer.
#[derive(Serialize)]
struct PresenceUser<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<serde_json::Value>,
    connections: usize,
}

/// A presence answer (the op's, with `type` and `id`; the API's without).
#[derive(Serialize)]
struct Presence<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Option<&'a str>>,
    online: usize,
    users: Vec<PresenceUser<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl<T: ClientIo> App<T> {
    /// Seconds since 1970 at `now`.
    pub(super) fn unix_now(&self, now: Instant) -> u64 {
        (self.clock.1 + now.saturating_duration_since(self.clock.0)).as_secs()
    }

    /// The `Instant` of a time in seconds since 1970.
    pub(super) fn instant_of(&self, unix: u64) -> Instant {
        self.clock.0 + Duration::from_secs(unix).saturating_sub(self.clock.1)
    }

    /// What `id` may do: its token's grant, or the anonymous one.
    pub(super) fn grant_of(&self, id: usize) -> &Grant {
        match self.grants.get(id) {
            Some(grant) => grant,
            None => self.auth.anonymous(),
        }
    }

    /// The address to count an upgrade under, when `--max-connections-per-ip` is on.
    pub(super) fn counted_ip(&self, id: usize) -> Option<std::net::IpAddr> {
        if !self.per_ip.is_on() {
            return None;
        }
        self.clients.get(id).and_then(|c| c.io.peer_addr()).map(|a| a.ip())
    }

    /// The grant of an upgrade's token (anonymous without one), and whether its
    /// user has a connection to spare. Asked only when some key is configured.
    pub(super) fn grant_of_upgrade(&mut self, request: &UpgradeRequest, now: Instant) -> Result<Rc<Grant>, Denied> {
        let token = auth::token_of(request);
        let now_unix = self.unix_now(now);
        let grant = self.auth.grant(token.as_deref(), now_unix).map_err(Denied::Token)?;
        if let Some(sub) = grant.sub() {
            if self.per_user.is_on()
                && self.per_user.count(sub) >= self.config.max_connections_per_user.unwrap_or(u32::MAX)
            {
                return Err(Denied::TooManyConnections);
            }
        }
        Ok(grant)
    }

    /// An upgrade accepted with `grant`: counted under its address and its user.
    #[inline]
    pub(super) fn count_in(&mut self, id: usize, ip: Option<std::net::IpAddr>, grant: Option<Rc<Grant>>) {
        // The open server counts nothing.
        if ip.is_some() || grant.is_some() {
            self.count_in_slow(id, ip, grant);
        }
    }

    #[inline(never)]
    fn count_in_slow(&mut self, id: usize, ip: Option<std::net::IpAddr>, grant: Option<Rc<Grant>>) {
        if let Some(ip) = ip {
            self.per_ip.try_add(ip);
        }
        let Some(grant) = grant.filter(|g| g.user.is_some()) else { return };
        if let Some(sub) = grant.sub().filter(|_| self.per_user.is_on()) {
            self.per_user.try_add(sub.into());
        }
        self.attach(id, grant);
    }

    /// Gives `id` its grant; a grant new to the connections goes in the expiry heap
    /// (one entry per grant, however many connections share it).
    fn attach(&mut self, id: usize, grant: Rc<Grant>) {
        let expiry = grant.expires.map(|at| Expiry { at, grant: Rc::downgrade(&grant) });
        if !self.grants.attach(id, grant) {
            return;
        }
        self.expiries.extend(expiry);
        // The entries of grants gone before their expiry wait for it; with much churn, less.
        if self.expiries.len() > 2 * self.grants.distinct() + 1024 {
            self.expiries.retain(|e| e.grant.strong_count() > 0);
        }
    }

    /// Takes `id`'s grant away; the cache forgets it with its last connection.
    fn detach(&mut self, id: usize) -> Option<Rc<Grant>> {
        let (grant, last) = self.grants.detach(id)?;
        if last {
            self.auth.release(&grant);
        }
        Some(grant)
    }

    /// A removed client's counts and grant go (its socket is still there to ask).
    pub(super) fn forget_grant(&mut self, id: usize, client: &Client<T>) {
        if client.role == Role::Pending {
            return;
        }
        if self.per_ip.is_on() {
            if let Some(addr) = client.io.peer_addr() {
                self.per_ip.remove(&addr.ip());
            }
        }
        if let Some(grant) = self.detach(id) {
            if let Some(sub) = grant.sub() {
                self.per_user.remove(sub);
            }
        }
    }

    /// Refuses an upgrade for its token, its room or its user's count: a plain
    /// client gets the HTTP status, a v1 client the 101 and then the close code (a
    /// browser sees no status, but does see a close code and reason).
    #[cold]
    #[inline(never)]
    pub(super) fn deny(&mut self, id: usize, v1: bool, ip: Option<std::net::IpAddr>, denied: Denied, now: Instant) {
        let (status, code, reason, label) = match denied {
            Denied::Token(e) => (401, e.close_code(), e.reason(), e.metric()),
            Denied::Forbidden => (403, 4403, "forbidden", "forbidden"),
            Denied::TooManyConnections => (429, 4429, "too many connections", "too_many_connections"),
        };
        self.metrics.auth_refusal(label);
        let Some(client) = self.clients.get_mut(id) else { return };
        log::info!("rejected {}: {reason} ({status})", client.io);
        if !v1 {
            let extra = match denied {
                Denied::Token(TokenError::Required) => "WWW-Authenticate: Bearer\r\n".to_string(),
                Denied::Token(e) => {
                    format!(
                        "WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"{}\"\r\n",
                        e.reason()
                    )
                }
                Denied::TooManyConnections => "Retry-After: 10\r\n".to_string(),
                Denied::Forbidden => String::new(),
            };
            client.conn.respond(Chunk::Owned(handshake::refusal_response(status, reason, &extra)), now);
            return;
        }
        client.conn.accept(Some(v1::SUBPROTOCOL), None, now, &self.config.limits);
        client.role = Role::V1;
        client.conn.close(CloseCode(code), reason, now, &self.config.limits);
        self.metrics.closed(match denied {
            Denied::Token(_) => CloseReason::InvalidToken,
            Denied::Forbidden | Denied::TooManyConnections => CloseReason::Forbidden,
        });
        self.open += 1;
        self.metrics.upgrades += 1;
        self.count_in(id, ip, None);
    }

    /// Per-IP: an upgrade beyond `--max-connections-per-ip` gets 429, before any token work.
    #[cold]
    pub(super) fn refuse_address(&mut self, id: usize, now: Instant) {
        self.metrics.auth_refusal("too_many_connections");
        let Some(client) = self.clients.get_mut(id) else { return };
        log::info!("rejected {}: too many connections from its address (429)", client.io);
        let answer = handshake::refusal_response(429, "too many connections from this address", "Retry-After: 10\r\n");
        client.conn.respond(Chunk::Owned(answer), now);
    }

    /// Closes (4001) the connections whose token has expired by `now`: within a
    /// second of it, through the housekeeping timer (no cost per read).
    pub(super) fn expire_tokens(&mut self, now: Instant) {
        let now_unix = self.unix_now(now);
        while self.expiries.peek().is_some_and(|e| e.at <= now_unix) {
            let Some(expiry) = self.expiries.pop() else { break };
            // Its connections all gone (or refreshed) already.
            let Some(grant) = expiry.grant.upgrade() else { continue };
            let ids = self.grants.clients_where(|g| std::ptr::eq(g, &*grant));
            for id in ids {
                if let Some(client) = self.clients.get_mut(id).filter(|c| c.conn.is_open()) {
                    self.metrics.closed(CloseReason::TokenExpired);
                    client.conn.close(CloseCode(4001), TokenError::Expired.reason(), now, &self.config.limits);
                    self.retimed.push(id);
                    self.after_activity(id);
                }
            }
        }
    }

    /// `{"op":"refresh","token":JWT}`: the same user's new token; its permissions
    /// replace the old ones at once (rooms it may no longer read are left).
    pub(super) fn refresh(&mut self, id: usize, token: &str, op_id: Option<&str>, now: Instant) -> Result<(), OpError> {
        let now_unix = self.unix_now(now);
        let old = self.grants.get(id).cloned().ok_or(OpError::InvalidToken)?;
        let new = self.auth.grant(Some(token.as_bytes()), now_unix).map_err(|_| OpError::InvalidToken)?;
        if new.sub() != old.sub() {
            self.auth.release(&new);
            return Err(OpError::InvalidToken);
        }
        drop(old);
        self.detach(id);
        self.attach(id, Rc::clone(&new));
        self.metrics.auth_refreshes += 1;
        self.leave_unreadable(id, "forbidden", now);
        let answer = self.envelopes.refreshed(op_id, new.expires_in(now_unix).unwrap_or(0));
        self.send_to(id, answer, now);
        Ok(())
    }

    /// Takes `id` out of the rooms its grant no longer reads, telling it each.
    fn leave_unreadable(&mut self, id: usize, reason: &str, now: Instant) {
        let Some(session) = self.session(id) else { return };
        let grant = self.grant_of(id);
        let gone: Vec<RoomId> = session
            .rooms()
            .map(|j| j.room)
            .filter(|&room| self.rooms.get(room).is_some_and(|r| !self.auth.may_read(grant, r.name())))
            .collect();
        for room in gone {
            self.leave_told(id, room, reason, now);
        }
    }

    /// Takes `id` out of `room`: a v1 client is told `left` with `reason`, a plain
    /// one (in its one room) is closed 4403.
    fn leave_told(&mut self, id: usize, room: RoomId, reason: &str, now: Instant) {
        let Some(v1) = self.session(id).map(|s| s.v1) else { return };
        if !v1 {
            if let Some(client) = self.clients.get_mut(id) {
                if client.conn.is_open() {
                    self.metrics.closed(CloseReason::Forbidden);
                }
                client.conn.close(CloseCode(4403), reason, now, &self.config.limits);
                self.retimed.push(id);
            }
            return;
        }
        let name = self.rooms.get(room).map(|r| r.json_name().to_string()).unwrap_or_default();
        self.leave(id, room, now);
        let left = self.envelopes.left(&name, reason);
        self.send_to(id, left, now);
    }

    fn send_to(&mut self, id: usize, chunk: Chunk, now: Instant) {
        if let Some(client) = self.clients.get_mut(id) {
            if client.conn.send(chunk, now, &self.config.limits).is_ok() {
                self.metrics.messages_out += 1;
            }
        }
    }

    /// `{"op":"presence","room":R}` (read permission): who is in the room.
    pub(super) fn presence_op(
        &mut self,
        id: usize,
        room_name: Option<&str>,
        op_id: Option<&str>,
        now: Instant,
    ) -> Result<(), OpError> {
        let room = match room_name {
            Some(name) => {
                crate::rooms::check_name(name).map_err(|_| OpError::InvalidRoomName)?;
                if !self.auth.may_read(self.grant_of(id), name) {
                    return Err(OpError::Forbidden);
                }
                self.rooms.find(name)
            }
            None => Some(self.joined_room(id, None)?),
        };
        let name = match (room.and_then(|r| self.rooms.get(r)), room_name) {
            (Some(r), _) => r.name().to_string(),
            (None, name) => name.unwrap_or_default().to_string(),
        };
        // A room not held here, with Redis: its presence is read there (answered later).
        let asker = || Asker::Op { id, op_id: op_id.map(Into::into) };
        if room.is_none() && self.bus.mirror_mut().is_some_and(|m| m.read_presence(asker(), &name)) {
            return Ok(());
        }
        let json = self.presence_json(room, &name, Some(op_id));
        let chunk = self.envelopes.json(&json);
        self.send_to(id, chunk, now);
        Ok(())
    }

    /// This node's members of a room with a token, by `sub`: their `info` (JSON
    /// text) and connection count.
    fn local_users<'a>(&'a self, room: &'a Room) -> LocalUsers<'a> {
        let mut users: BTreeMap<&str, (Option<&str>, usize)> = BTreeMap::new();
        for audience in [Audience::Plain, Audience::Enveloped] {
            for member in room.topic.members(audience) {
                let Some(user) = self.grants.get(member).and_then(|g| g.user.as_ref()) else {
                    continue;
                };
                users.entry(&user.sub).or_insert((user.info.as_deref(), 0)).1 += 1;
            }
        }
        users
    }

    /// This node's part of a room's presence, as JSON for the other nodes (with
    /// Redis): its member count and users, at most `MAX_PRESENCE_USERS`.
    pub(super) fn presence_part(&self, room: &Room) -> String {
        let users = self.local_users(room);
        let part = Part {
            online: room.topic.member_count(),
            truncated: users.len() > MAX_PRESENCE_USERS,
            users: users
                .into_iter()
                .take(MAX_PRESENCE_USERS)
                .map(|(user, (info, connections))| PartUser {
                    user: user.into(),
                    info: info.and_then(|i| serde_json::from_str(i).ok()),
                    connections,
                })
                .collect(),
        };
        serde_json::to_string(&part).unwrap_or_default()
    }

    /// A room's presence as JSON: its member count, and its users with a token (by
    /// `sub`, with their `info` and connection count, at most `MAX_PRESENCE_USERS`),
    /// on every node (with Redis: this node's and the other nodes' parts).
    pub(super) fn presence_json(&self, room: Option<RoomId>, name: &str, op_id: Option<Option<&str>>) -> Vec<u8> {
        match room.and_then(|id| Some((id, self.rooms.get(id)?))) {
            Some((id, room)) => {
                let others = self.bus.mirror().into_iter().flat_map(|m| m.others(id));
                presence_answer(Some((room, self.local_users(room))), others, name, op_id)
            }
            None => presence_answer(None, std::iter::empty(), name, op_id),
        }
    }
}

/// A presence answer: this node's members of the room (if it holds it) and the other
/// nodes' parts, merged by user.
pub(super) fn presence_answer<'a>(
    local: Option<(&Room, LocalUsers<'a>)>,
    others: impl Iterator<Item = &'a Part>,
    name: &str,
    op_id: Option<Option<&str>>,
) -> Vec<u8> {
    let mut users: BTreeMap<&str, (Info<'_>, usize)> = BTreeMap::new();
    let mut online: usize = 0;
    let mut truncated = false;
    if let Some((room, local)) = local {
        online = room.topic.member_count();
        for (user, (info, connections)) in local {
            users.insert(user, (Info::Text(info), connections));
        }
    }
    for part in others {
        online = online.saturating_add(part.online);
        truncated |= part.truncated;
        for u in &part.users {
            let entry = users.entry(&u.user).or_insert((Info::Value(u.info.as_ref()), 0));
            entry.1 = entry.1.saturating_add(u.connections);
        }
    }
    let truncated = truncated || users.len() > MAX_PRESENCE_USERS;
    let users = users
        .into_iter()
        .take(MAX_PRESENCE_USERS)
        .map(|(user, (info, connections))| PresenceUser { user, info: info.value(), connections })
        .collect();
    let presence =
        Presence { kind: op_id.is_some().then_some("presence"), room: name, id: op_id, online, users, truncated };
    serde_json::to_vec(&presence).unwrap_or_default()
}

impl<T: ClientIo> App<T> {
    /// `POST /api/users/{user}/disconnect`: every connection of `user` closed 4410
    /// with `reason`, here and (with Redis) on every node; how many here.
    pub(super) fn disconnect_user(&mut self, user: &str, reason: &str, now: Instant) -> usize {
        let closed = self.close_user(user, reason, now);
        self.moderate_everywhere(Moderation::Disconnect { user: user.into(), reason: reason.into() });
        self.metrics.api_disconnects += 1;
        closed
    }

    /// Closes this node's connections of `user` 4410 with `reason`; how many.
    pub(super) fn close_user(&mut self, user: &str, reason: &str, now: Instant) -> usize {
        let ids: Vec<usize> = self.clients_of(user);
        for &id in &ids {
            if let Some(client) = self.clients.get_mut(id) {
                if client.conn.is_open() {
                    self.metrics.closed(CloseReason::Disconnected);
                }
                client.conn.close(CloseCode(4410), reason, now, &self.config.limits);
                self.retimed.push(id);
            }
            self.after_activity(id);
        }
        ids.len()
    }

    /// `DELETE /api/rooms/{room}/users/{user}`: the user's connections leave the
    /// room (`left`/`removed` for v1, close 4403 for plain), here and (with Redis) on
    /// every node; how many here.
    pub(super) fn remove_user(&mut self, room_name: &str, user: &str, now: Instant) -> usize {
        let removed = self.take_user_out(room_name, user, now);
        self.moderate_everywhere(Moderation::Remove { room: room_name.into(), user: user.into() });
        self.metrics.api_removals += 1;
        removed
    }

    /// Takes this node's connections of `user` out of `room_name`; how many.
    pub(super) fn take_user_out(&mut self, room_name: &str, user: &str, now: Instant) -> usize {
        let Some(room) = self.rooms.find(room_name) else { return 0 };
        let ids: Vec<usize> = self
            .clients_of(user)
            .into_iter()
            .filter(|&id| self.session(id).is_some_and(|s| s.find(room).is_some()))
            .collect();
        for &id in &ids {
            self.leave_told(id, room, "removed", now);
            self.after_activity(id);
        }
        ids.len()
    }

    /// The open connections of a user.
    fn clients_of(&self, user: &str) -> Vec<usize> {
        let open = |id: &usize| self.clients.get(*id).is_some_and(|c| c.conn.is_open());
        self.grants.clients_where(|g| g.sub() == Some(user)).into_iter().filter(open).collect()
    }
}
