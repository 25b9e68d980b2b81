//! The subscription thread: SUBSCRIBEs to the nodes' channels (messages, and
//! moderation acts) and hands back every message it gets, PINGing when nothing came for `PING_EVERY` (a link that went silent
//! is noticed within `REPLY_TIMEOUT`).

use std::io::{self, Write};
use std::sync::mpsc::Sender;
use std::time::Instant;

use log::warn;
use mio::Waker;

use super::{
    channel, command, connect, control_channel, expect_ok, poke, Replies, BACKOFF_MAX, BACKOFF_MIN, PING_EVERY,
    REPLY_TIMEOUT,
};
use crate::backplane::{Command, Control, Event, Message, Settings};

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

pub(super) fn subscription_thread(
    settings: &Settings,
    events: &Sender<Event>,
    waker: &Waker,
    pokes: &[Sender<Vec<Command>>],
) {
    let channel = channel(settings);
    let control = control_channel(settings);
    let mut backoff = BACKOFF_MIN;
    let mut was_up = None;
    loop {
        let result = (|| -> io::Result<()> {
            let stream = connect(settings)?;
            // Quiet rooms send nothing for long: a PING after `PING_EVERY` of silence
            // (a subscribed connection answers it too), and dead after `REPLY_TIMEOUT`.
            stream.set_read_timeout(Some(PING_EVERY))?;
            let mut replies = Replies::new(stream.try_clone()?);
            let mut out = Vec::new();
            command(&mut out, &[b"SUBSCRIBE", channel.as_bytes(), control.as_bytes()]);
            (&stream).write_all(&out)?;
            // One confirmation per channel.
            expect_ok(replies.next()?)?;
            expect_ok(replies.next()?)?;
            backoff = BACKOFF_MIN;
            was_up = Some(true);
            if events.send(Event::Subscribed(true)).is_err() || waker.wake().is_err() {
                return Ok(());
            }
            let mut batch = Vec::new();
            let mut heard = Instant::now();
            let mut ping = Vec::new();
            command(&mut ping, &[b"PING"]);
            loop {
                batch.clear();
                match replies.batch(&mut batch) {
                    Ok(()) => heard = Instant::now(),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        if heard.elapsed() >= REPLY_TIMEOUT {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer to PING"));
                        }
                        (&stream).write_all(&ping)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                for reply in &batch {
                    let Some([kind, from, payload]) = reply.as_array() else { continue };
                    if kind.as_bytes() != Some(b"message") {
                        continue;
                    }
                    let event = if from.as_bytes() == Some(control.as_bytes()) {
                        let Some(control) = payload.as_bytes().and_then(|p| serde_json::from_slice::<Control>(p).ok())
                        else {
                            warn!("backplane: a message on {control} that is not ours");
                            continue;
                        };
                        Event::Moderated(control)
                    } else {
                        let Some(event) = payload.as_bytes().and_then(parse_line) else {
                            warn!("backplane: a message on {channel} that is not ours");
                            continue;
                        };
                        event
                    };
                    if events.send(event).is_err() {
                        return Ok(());
                    }
                }
                // One wake per read's worth of messages.
                if waker.wake().is_err() {
                    return Ok(());
                }
            }
        })();
        match result {
            Ok(()) => return,
            Err(e) => {
                if was_up != Some(false) {
                    warn!("backplane: subscription lost: {e}");
                    poke(pokes);
                    was_up = Some(false);
                    if events.send(Event::Subscribed(false)).is_err() || waker.wake().is_err() {
                        return;
                    }
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
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
