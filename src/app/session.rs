//! A client's rooms: what a connection turned out to be (`Role`), the rooms it is in
//! (its first room on its `Client`, more in an `Extra` beside it), joining a room
//! with its greeting (welcome and history), leaving, and the room an op names.

use std::rc::Rc;
use std::time::Instant;

use super::deliver::plain_of;
use super::housekeeping::presence_time;
use super::{App, ClientIo};
use crate::frame::server_payload;
use crate::outqueue::Chunk;
use crate::protocol::Conn;
use crate::pubsub::{Audience, MemberKey};
use crate::rooms::{self, RoomId};
use crate::v1::{OpError, Payload, Resume, Welcome};

/// What a connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Before its request is answered (or a plain HTTP request).
    Pending,
    /// An accepted WebSocket (counted in `App::open`) without a subprotocol.
    Plain,
    /// An accepted WebSocket speaking `mioket.v1`.
    V1,
}

pub(super) const NO_ROOM: RoomId = RoomId::MAX;

#[derive(Clone, Copy)]
pub(super) struct Joined {
    pub(super) room: RoomId,
    pub(super) key: MemberKey,
}

pub(super) const NOT_JOINED: Joined = Joined { room: NO_ROOM, key: MemberKey::NONE };

/// A v1 client's rooms beyond its first, and its path's room while it is out of it
/// (so that joining it again makes it the default again). Few clients have one: they
/// live beside the clients (`App::extras`), not in each.
#[derive(Default)]
pub(super) struct Extra {
    /// By name: a room freed and made again (one that never had a message goes when
    /// its last member leaves) is still the path's.
    pub(super) home: Option<Box<str>>,
    pub(super) more: Vec<Joined>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.home.is_none() && self.more.is_empty()
    }
}

/// An accepted WebSocket's rooms, read from its client and its extra.
#[derive(Clone, Copy)]
pub(super) struct Session<'a> {
    pub(super) v1: bool,
    pub(super) first: Joined,
    pub(super) first_is_home: bool,
    pub(super) extra: Option<&'a Extra>,
}

impl Session<'_> {
    pub(super) fn audience(&self) -> Audience {
        if self.v1 {
            Audience::Enveloped
        } else {
            Audience::Plain
        }
    }

    pub(super) fn rooms(&self) -> impl Iterator<Item = Joined> + '_ {
        let first = Some(self.first).filter(|j| j.room != NO_ROOM);
        first.into_iter().chain(self.extra.iter().flat_map(|e| e.more.iter().copied()))
    }

    pub(super) fn find(&self, room: RoomId) -> Option<Joined> {
        self.rooms().find(|j| j.room == room)
    }

    pub(super) fn count(&self) -> usize {
        self.rooms().count()
    }

    /// The first room it is in: a plain client's one room.
    pub(super) fn first_room(&self) -> Option<RoomId> {
        Some(self.first.room).filter(|&room| room != NO_ROOM)
    }

    /// The path's room while the client is in it (the default of v1 ops).
    pub(super) fn home_room(&self) -> Option<RoomId> {
        self.first_is_home.then_some(self.first.room).filter(|&room| room != NO_ROOM)
    }
}

impl<T: ClientIo> App<T> {
    /// Puts `id` in `room`, then greets it: a v1 client gets the welcome envelope and
    /// the replay its resume asks for, a plain one the welcome text and the history.
    /// All in this one step, so no live message slips between.
    pub(super) fn join(&mut self, id: usize, room_id: RoomId, resume: Option<&Resume<'_>>, now: Instant) {
        if self.defer_join(id, room_id, resume, now) {
            return;
        }
        let Some(v1) = self.session(id).map(|s| s.v1) else { return };
        let audience = if v1 { Audience::Enveloped } else { Audience::Plain };
        let Some(key) = self.rooms.join(room_id, id, audience) else { return };
        self.add_membership(id, Joined { room: room_id, key });
        let now_unix = self.unix_now(now);
        let App { clients, rooms, envelopes, config, metrics, welcome, grants, auth, .. } = self;
        let Some(client) = clients.get_mut(id) else { return };
        self.presence_at.get_or_insert(presence_time(self.last_presence, now));
        let Some(room) = rooms.get(room_id) else { return };
        let user = grants.get(id).and_then(|g| Some((g.sub()?, g.expires_in(now_unix)?)));
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
        let welcome = envelopes.welcome_user(
            &Welcome {
                room: room.json_name(),
                epoch: room.epoch(),
                seq: room.topic.last_seq(),
                online: room.online(),
                text: config.welcome.as_deref(),
                recovered,
                read_only: !auth.may_write(grants.get(id).map_or(auth.anonymous(), |g| &**g), room.name()),
            },
            user,
        );
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

    /// An accepted WebSocket's rooms.
    pub(super) fn session(&self, id: usize) -> Option<Session<'_>> {
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
    pub(super) fn joined_room(&self, id: usize, name: Option<&str>) -> Result<RoomId, OpError> {
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

    pub(super) fn leave(&mut self, id: usize, room: RoomId, now: Instant) {
        let Some(audience) = self.session(id).map(|s| s.audience()) else { return };
        if let Some(joined) = self.remove_membership(id, room) {
            self.rooms.leave(joined.room, joined.key, audience, now);
            self.presence_at.get_or_insert(presence_time(self.last_presence, now));
        }
    }
}
