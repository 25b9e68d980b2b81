//! `mioket.v1` ops from a client (docs/protocol.md): publish, join, leave, ping,
//! binary frames for the path's room, and an op's refusal as an error envelope.

use std::time::{Duration, Instant};

use log::debug;

use super::publish::{Publish, Source, Target};
use super::{App, ClientIo};
use crate::frame::Opcode;
use crate::rooms;
use crate::v1::{self, Op, OpError, Payload, Resume};

impl<T: ClientIo> App<T> {
    /// A text or binary message from a v1 client: an op, or binary bytes for its
    /// path's room.
    pub(super) fn handle_v1(&mut self, id: usize, opcode: Opcode, message: &[u8], now: Instant) {
        if opcode == Opcode::Binary {
            match self.session(id).and_then(|s| s.home_room()) {
                Some(room) => {
                    let source = Source::V1 { id, ack: None };
                    let p = Publish { source, room: Target::Id(room), payload: Payload::Binary(message), key: None };
                    let _ = self.publish(p, now);
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
                    let key = op_id.as_deref();
                    let _ = self
                        .publish(Publish { source, room: Target::Id(room), payload: payload.as_payload(), key }, now);
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
            Op::Refresh { token, id: op_id } => self.refresh(id, token, op_id.as_deref(), now),
            Op::Presence { room, id: op_id } => self.presence_op(id, room.as_deref(), op_id.as_deref(), now),
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
                Op::Publish { id, .. }
                | Op::Join { id, .. }
                | Op::Leave { id, .. }
                | Op::Ping { id }
                | Op::Refresh { id, .. }
                | Op::Presence { id, .. } => id.as_deref(),
            };
            self.refuse_op(id, err, op_id, now);
        }
    }

    fn join_op(&mut self, id: usize, name: &str, resume: Option<&Resume<'_>>, now: Instant) -> Result<(), OpError> {
        rooms::check_name(name).map_err(|_| OpError::InvalidRoomName)?;
        if !self.auth.may_read(self.grant_of(id), name) {
            self.metrics.auth_refusal("forbidden");
            return Err(OpError::Forbidden);
        }
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

    pub(super) fn refuse_op(&mut self, id: usize, err: OpError, op_id: Option<&str>, now: Instant) {
        self.metrics.op_errors[err as usize] += 1;
        let Some(client) = self.clients.get_mut(id) else { return };
        debug!("op refused for {}: {}", client.io, err.reason());
        let error = self.envelopes.error(op_id, err);
        if client.conn.send(error, now, &self.config.limits).is_ok() {
            self.metrics.messages_out += 1;
        }
    }
}
