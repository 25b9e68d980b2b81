//! The subscription thread: SUBSCRIBEs to the nodes' channels (messages, and
//! moderation acts) and hands back every message it gets. Its connection speaks RESP3:
//! messages and subscription confirmations come as pushes, so a read that times out
//! (every `POLL`, to take changes of the channel set) loses nothing. When nothing came
//! for `PING_EVERY` it asks for a confirmation (SUBSCRIBE again to a channel it has):
//! a link that went silent is noticed within `REPLY_TIMEOUT`.

use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use log::warn;
use redis::{PushKind, RedisResult, Value};

use super::{connect, control_channel, poke, Wake, BACKOFF_MAX, BACKOFF_MIN, PING_EVERY, REPLY_TIMEOUT};
use crate::backplane::{Command, Control, Event, Message, Settings};

/// How often a blocked read gives way to changes of the channel set.
const POLL: Duration = Duration::from_millis(10);
/// After a message, the read waits this long for more before the loop is woken for
/// what came (one wake for a burst: the loop then delivers it in one turn)...
const BATCH: Duration = Duration::from_micros(50);
/// ...and a steady stream wakes it at least this often.
const BATCH_MAX: Duration = Duration::from_micros(200);

/// A message of the channel: `ROOM\nEPOCH\nSEQ\nORIGIN\nKIND PAYLOAD` (a room name
/// holds no control character, so no newline). The origin line of a message whose
/// publisher had a token ends with its `sub` in hex after a space, `NODE:REQ HEX`
/// (a node that knows no `from` takes it as another node's origin).
pub fn parse_live(bytes: &[u8]) -> Option<(String, String, Message)> {
    let mut parts = bytes.splitn(5, |&b| b == b'\n');
    let room = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let epoch = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let origin = std::str::from_utf8(parts.next()?).ok()?;
    let (origin, from) = match origin.split_once(' ') {
        Some((origin, hex)) => (origin, Some(from_hex(hex)?)),
        None => (origin, None),
    };
    let rest = parts.next()?;
    let (&kind, payload) = rest.split_first()?;
    let message = Message { seq, binary: kind == b'b', payload: payload.to_vec(), origin: origin.into(), from };
    Some((room, epoch, message))
}

/// A node's part of a room's presence on the channel: `ROOM\nNODE\npresence\nPART`
/// (the presence script's line; `parse_live` rejects it: its third line is no seq).
/// Gives the room, the node and the part (JSON; empty: the node has none).
pub fn parse_presence(bytes: &[u8]) -> Option<(String, String, String)> {
    let mut parts = bytes.splitn(4, |&b| b == b'\n');
    let room = std::str::from_utf8(parts.next()?).ok()?;
    let node = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next()? != b"presence" {
        return None;
    }
    let part = std::str::from_utf8(parts.next()?).ok()?;
    Some((room.into(), node.into(), part.into()))
}

/// A live line: a message or a presence part.
fn parse_line(bytes: &[u8]) -> Option<Event> {
    match parse_live(bytes) {
        Some((room, epoch, message)) => Some(Event::Live { room, epoch, message }),
        None => parse_presence(bytes).map(|(room, node, part)| Event::Presence { room, node, part }),
    }
}

/// A `sub` from its hex digits (at most `auth::MAX_SUB` bytes, UTF-8).
fn from_hex(hex: &str) -> Option<Box<str>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * crate::auth::MAX_SUB {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok().map(Into::into)
}

/// Rooms' channels to listen to from now on (then their fetches, once Redis confirmed
/// it), or no more. Each is one command.
pub(super) enum Change {
    Subscribe { channels: Vec<String>, then: Vec<Command> },
    Unsubscribe(Vec<String>),
}

/// The channels of the subscription, and the fetches that wait for theirs.
struct Channels {
    control: String,
    rooms: BTreeSet<String>,
    /// Fetches sent once these channels are confirmed.
    waiting: Vec<(BTreeSet<String>, Vec<Command>)>,
    /// This connection's Redis has sharded pub/sub: rooms' channels by SSUBSCRIBE.
    sharded: bool,
}

impl Channels {
    fn verbs(&self) -> (&'static str, &'static str) {
        if self.sharded {
            ("SSUBSCRIBE", "SUNSUBSCRIBE")
        } else {
            ("SUBSCRIBE", "UNSUBSCRIBE")
        }
    }

    /// A channel confirmed: the fetches whose channels all are go.
    fn confirmed(&mut self, channel: &[u8], fetches: &Sender<Vec<Command>>) {
        let channel = String::from_utf8_lossy(channel);
        for (channels, _) in &mut self.waiting {
            channels.remove(&*channel);
        }
        self.release(|channels| channels.is_empty(), fetches);
    }

    fn release(&mut self, go: impl Fn(&BTreeSet<String>) -> bool, fetches: &Sender<Vec<Command>>) {
        let (ready, waiting) = std::mem::take(&mut self.waiting).into_iter().partition(|(c, _)| go(c));
        self.waiting = waiting;
        for (_, then) in ready {
            let _ = fetches.send(then);
        }
    }

    /// Takes the changes asked for since the last time, and sends them (when
    /// connected) as one SUBSCRIBE and one UNSUBSCRIBE.
    fn take(
        &mut self,
        changes: &Receiver<Change>,
        fetches: &Sender<Vec<Command>>,
        con: Option<&mut redis::Connection>,
    ) -> RedisResult<()> {
        let (mut added, mut removed) = (BTreeSet::new(), Vec::new());
        loop {
            match changes.try_recv() {
                Ok(Change::Subscribe { channels, then }) => {
                    let fresh: BTreeSet<String> =
                        channels.into_iter().filter(|c| self.rooms.insert(c.clone())).collect();
                    added.extend(fresh.iter().cloned());
                    self.waiting.push((fresh, then));
                }
                Ok(Change::Unsubscribe(channels)) => {
                    for c in channels {
                        if self.rooms.remove(&c) {
                            added.remove(&c);
                            removed.push(c);
                        }
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let Some(con) = con else {
            // Down: the fetches go now (the rooms are fetched again once it is up).
            self.release(|_| true, fetches);
            return Ok(());
        };
        let (subscribe, unsubscribe) = self.verbs();
        if !added.is_empty() {
            send(con, subscribe, added.iter())?;
        }
        if !removed.is_empty() {
            send(con, unsubscribe, removed.iter())?;
        }
        // Fetches of rooms already listened to go at once.
        self.release(|channels| channels.is_empty(), fetches);
        Ok(())
    }
}

pub(super) fn subscription_thread(
    settings: &Settings,
    changes: &Receiver<Change>,
    fetches: &Sender<Vec<Command>>,
    events: &Sender<Event>,
    wake: &Wake,
    pokes: &[Sender<Vec<Command>>],
) {
    let control = control_channel(settings);
    let mut channels =
        Channels { control: control.clone(), rooms: BTreeSet::new(), waiting: Vec::new(), sharded: false };
    let mut backoff = BACKOFF_MIN;
    let mut was_up = None;
    loop {
        let result = (|| -> RedisResult<bool> {
            let mut con = connect(settings, true)?;
            con.send_packed_command(&redis::cmd("COMMAND").arg("INFO").arg("SSUBSCRIBE").get_packed_command())?;
            channels.sharded = super::has_command(&con.recv_response()?);
            // Whatever changed while it was down is in `channels`.
            channels.take(changes, fetches, None)?;
            let (subscribe, _) = channels.verbs();
            send(&mut con, "SUBSCRIBE", std::iter::once(&channels.control))?;
            if !channels.rooms.is_empty() {
                send(&mut con, subscribe, channels.rooms.iter())?;
            }
            let deadline = Instant::now() + REPLY_TIMEOUT;
            let mut unconfirmed = channels.rooms.clone();
            unconfirmed.insert(control.clone());
            while !unconfirmed.is_empty() {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no SUBSCRIBE confirmation").into());
                }
                match con.recv_response()? {
                    Value::Push { kind: PushKind::Subscribe | PushKind::SSubscribe, data } => {
                        if let Some(name) = data.first().and_then(super::bytes) {
                            unconfirmed.remove(&*String::from_utf8_lossy(name));
                        }
                    }
                    other => {
                        if !handle(other, &control, events) {
                            return Ok(false);
                        }
                    }
                }
            }
            con.set_read_timeout(Some(POLL))?;
            backoff = BACKOFF_MIN;
            was_up = Some(true);
            if events.send(Event::Subscribed(true)).is_err() || !wake.wake() {
                return Ok(false);
            }
            let mut heard = Instant::now();
            let mut asked = Instant::now();
            let heartbeat = redis::cmd("SUBSCRIBE").arg(&control).get_packed_command();
            // The first message handed on since the last wake.
            let mut unwoken: Option<Instant> = None;
            loop {
                match con.recv_response() {
                    Ok(Value::Push { kind: PushKind::Subscribe | PushKind::SSubscribe, data }) => {
                        heard = Instant::now();
                        if let Some(name) = data.first().and_then(super::bytes) {
                            channels.confirmed(name, fetches);
                        }
                        continue;
                    }
                    Ok(value) => {
                        heard = Instant::now();
                        if !handle(value, &control, events) {
                            return Ok(false);
                        }
                        // Whether more messages are buffered is not known: reading on
                        // with a short timeout tells, and one wake goes for them all.
                        match unwoken {
                            None => {
                                unwoken = Some(heard);
                                con.set_read_timeout(Some(BATCH))?;
                            }
                            Some(first) if heard - first >= BATCH_MAX => {
                                if !wake.wake() {
                                    return Ok(false);
                                }
                                unwoken = Some(heard);
                            }
                            Some(_) => {}
                        }
                        continue;
                    }
                    Err(e) if e.is_timeout() => {
                        if unwoken.take().is_some() {
                            con.set_read_timeout(Some(POLL))?;
                            if !wake.wake() {
                                return Ok(false);
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
                if heard.elapsed() >= REPLY_TIMEOUT {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from Redis").into());
                }
                if heard.elapsed() >= PING_EVERY && asked.elapsed() >= PING_EVERY {
                    con.send_packed_command(&heartbeat)?;
                    asked = Instant::now();
                }
                channels.take(changes, fetches, Some(&mut con))?;
            }
        })();
        match result {
            Ok(_) => return,
            Err(e) => {
                // The fetches that waited go (the rooms are fetched again once it is up).
                channels.release(|_| true, fetches);
                if was_up != Some(false) {
                    warn!("backplane: subscription lost: {e}");
                    poke(pokes);
                    was_up = Some(false);
                    if events.send(Event::Subscribed(false)).is_err() || !wake.wake() {
                        return;
                    }
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn send<'a>(con: &mut redis::Connection, verb: &str, channels: impl Iterator<Item = &'a String>) -> RedisResult<()> {
    let mut command = redis::cmd(verb);
    for c in channels {
        command.arg(c.as_str());
    }
    con.send_packed_command(&command.get_packed_command())
}

/// Hands a message on; false when the loop is gone.
fn handle(value: Value, control: &str, events: &Sender<Event>) -> bool {
    let Value::Push { kind: PushKind::Message | PushKind::SMessage, data } = value else { return true };
    let [from, payload] = &data[..] else { return true };
    let (Some(from), Some(payload)) = (super::bytes(from), super::bytes(payload)) else { return true };
    let event = if from == control.as_bytes() {
        let Ok(act) = serde_json::from_slice::<Control>(payload) else {
            warn!("backplane: a message on {control} that is not ours");
            return true;
        };
        Event::Moderated(act)
    } else {
        let Some(event) = parse_line(payload) else {
            warn!("backplane: a message on {} that is not ours", String::from_utf8_lossy(from));
            return true;
        };
        event
    };
    events.send(event).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_parse() {
        let (room, epoch, m) = parse_live(b"lobby\n0123456789abcdef\n42\nnode:7\nthi\nthere").unwrap();
        assert_eq!((room.as_str(), epoch.as_str()), ("lobby", "0123456789abcdef"));
        let hi =
            Message { seq: 42, binary: false, payload: b"hi\nthere".to_vec(), origin: "node:7".into(), from: None };
        assert_eq!(m, hi);
        assert!(parse_live(b"lobby\ne\nx\no\nt").is_none());
        // With the publisher's sub ("a\nb" in hex): the origin stays the node's.
        let (_, _, m) = parse_live(b"lobby\n0123456789abcdef\n42\nnode:7 610a62\nthi\nthere").unwrap();
        assert_eq!(m, Message { from: Some("a\nb".into()), ..hi });
        assert!(parse_live(b"lobby\ne\n1\nnode:7 6\nthi").is_none(), "odd hex");
        assert!(parse_live(b"lobby\ne\n1\nnode:7 zz\nthi").is_none(), "not hex");
        assert!(parse_live(b"lobby\ne\n1\nnode:7 ff\nthi").is_none(), "not UTF-8");
    }

    #[test]
    fn presence_lines_parse_and_are_no_messages() {
        let line = b"lobby\n0123456789abcdef\npresence\n{\"online\":2}";
        assert!(parse_live(line).is_none(), "older nodes reject it");
        let (room, node, part) = parse_presence(line).unwrap();
        assert_eq!((room.as_str(), node.as_str(), part.as_str()), ("lobby", "0123456789abcdef", "{\"online\":2}"));
        assert_eq!(parse_presence(b"lobby\nn\npresence\n").unwrap().2, "");
        assert!(parse_presence(b"lobby\ne\n42\nnode:7\nthi").is_none());
        assert!(matches!(parse_line(b"lobby\ne\n42\nnode:7\nthi"), Some(Event::Live { .. })));
        assert!(matches!(parse_line(line), Some(Event::Presence { .. })));
    }
}
