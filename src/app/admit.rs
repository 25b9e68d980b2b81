//! The upgrade decision: a valid WebSocket request accepted (its role, its
//! subprotocol, its room from the path, its resume from the query) or refused
//! (full, stopping, a bad path or query).

use std::rc::Rc;
use std::time::Instant;

use log::info;

use super::session::Role;
use super::{App, ClientIo, Lifecycle, Listener, Refusal};
use crate::config::{DeflateMode, Mode};
use crate::http;
use crate::outqueue::Chunk;
use crate::protocol::UpgradeRequest;
use crate::rooms::{self, RoomId, Rooms};
use crate::v1::{self, Resume};

impl<T: ClientIo> App<T> {
    /// A valid upgrade: accept it (101, its room, welcome, history) unless full,
    /// stopping, or its path or query is refused.
    pub(super) fn admit(&mut self, id: usize, request: &UpgradeRequest, now: Instant) {
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
