//! One way to the members: a message encoded once per encoding its room needs
//! (`encode`), kept in the room's history and queued to every member (`fan_out`),
//! compressed once per audience for those that take it, and each recipient queued
//! for this iteration's flush (`queue_flush`).

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Instant;

use super::{App, Client, ClientIo};
use crate::config::Config;
use crate::deflate::Compressor;
use crate::frame::server_payload;
use crate::metrics::Metrics;
use crate::outqueue::{shared_message, Chunk};
use crate::pubsub::{Audience, Seq};
use crate::rooms::{RoomId, Rooms, Stored};
use crate::v1::{self, Envelopes, Payload};

impl<T: ClientIo> App<T> {
    /// Keeps a message encoded by `encode` in its room's history and queues it to
    /// every member. The publisher first: its ack (before its own copy), and its flush
    /// early, so that it can send its next message while the others are written.
    pub(super) fn fan_out(
        &mut self,
        room_id: RoomId,
        stored: Stored,
        origin: Option<(usize, Option<&str>)>,
        now: Instant,
    ) -> Seq {
        let App { clients, rooms, envelopes, compressor, config, dirty, retimed, metrics, .. } = self;
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
                } else {
                    // A slow consumer, closed: its close deadline goes on the timer heap.
                    retimed.push(member);
                }
                queue_flush(dirty, member, recipient);
            }
        }
        seq
    }
}

/// Queues a client for this iteration's flush, once.
pub(super) fn queue_flush<T>(dirty: &mut Vec<usize>, id: usize, client: &mut Client<T>) {
    if !client.flush_queued {
        client.flush_queued = true;
        dirty.push(id);
    }
}

/// The 1009 close reason, and the API's 413 body, of a message whose envelope is too big.
pub(super) const TOO_BIG_FOR_ENVELOPE: &str = "message too big: its mioket.v1 envelope would pass --max-message";

/// Whether a message's mioket.v1 envelope stays within --max-message (plus
/// `v1::ENVELOPE_OVERHEAD`). Checked on every publish, whoever is in the room: the
/// history replays it to v1 members who join later.
/// With a `from` (its publisher's `sub`), which the envelope carries too, the sub
/// as JSON counts against --max-message.
pub(super) fn fits_envelope_from(config: &Config, payload: Payload<'_>, from: Option<&str>) -> bool {
    let max =
        config.limits.max_message.saturating_sub(from.map_or(0, |f| v1::envelope_payload_len(Payload::Text(f)) + 10));
    // Escaping grows text 6x at most (base64 4/3): a message that fits even so is not
    // counted byte by byte (the usual small message).
    payload.bytes().len().saturating_mul(6) <= max || v1::envelope_payload_len(payload) <= max
}

/// A message in the encodings its room needs now: plain for plain members, a v1
/// envelope for v1 members, and for the history at least one of them (plain when the
/// room has no v1 member). None at all when nobody listens and nothing is kept. One
/// allocation per encoding made, whatever the room's size.
/// For a message of a user (`from`) the envelope carries the sender, so the history
/// keeps the envelope (the plain frame is made from it when needed).
pub(super) fn encode_from(
    rooms: &Rooms,
    envelopes: &mut Envelopes,
    room_id: RoomId,
    payload: Payload<'_>,
    keep: bool,
    from: Option<&str>,
) -> Stored {
    let Some(room) = rooms.get(room_id) else { return Stored { plain: None, v1: None } };
    let has_v1 = room.topic.audience_count(Audience::Enveloped) > 0;
    let plain = room.topic.audience_count(Audience::Plain) > 0 || (keep && !has_v1 && from.is_none());
    let envelope = has_v1 || (keep && from.is_some());
    let seq = room.topic.last_seq() + 1;
    Stored {
        plain: plain.then(|| shared_message(payload.opcode(), payload.bytes())),
        v1: envelope.then(|| envelopes.message_from(room.json_name(), seq, payload, from)),
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
pub(super) fn plain_of(stored: &Stored) -> Option<Rc<[u8]>> {
    let (opcode, payload) = v1::payload_of_envelope(stored.v1.as_deref()?)?;
    Some(shared_message(opcode, &payload))
}
