//! Several Redis shards (`--redis` given several times): one `Link` (its three
//! threads) per shard, rooms routed by `shard_of`. A shard's up and down is its own:
//! its state events reach the mirror as `Event::Shard`, so a shard that is down
//! refuses only its rooms. Moderation goes through the first shard, whose control
//! channel every node listens to.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Waker;

use super::Link;
use crate::backplane::{shard_of, Command, Event, Settings};

/// The loop's end of every shard's link.
pub struct Links {
    links: Vec<Link>,
    shards: Vec<crate::config::RedisUrl>,
}

impl Links {
    /// Starts each shard's threads (and ends the start if one refuses us).
    pub fn start(settings: Settings, waker: Arc<Waker>) -> io::Result<Links> {
        let mut links = Vec::new();
        for url in &settings.shards {
            let shard = Settings { shards: vec![url.clone()], ..settings.clone() };
            links.push(Link::start(shard, Arc::clone(&waker))?);
        }
        Ok(Links { links, shards: settings.shards })
    }

    /// The events that wait, every shard's (the state events of all but the first
    /// marked with their shard; the node registry's answers of the first only).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.links.iter().enumerate().flat_map(|(shard, link)| {
            link.events().filter_map(move |event| match event {
                Event::Commands(_) | Event::Fetches(_) | Event::Subscribed(_) if shard > 0 => {
                    Some(Event::Shard { shard, event: Box::new(event) })
                }
                Event::Nodes { .. } | Event::Left if shard > 0 => None,
                other => Some(other),
            })
        })
    }

    /// Waits until every shard's three connections are up, or `until`, and gives
    /// what the links reported meanwhile, in order, for the mirror. The new process of
    /// an upgrade connects so before it takes over: the clients it takes never meet a
    /// link still coming up (their publishes would be refused).
    pub fn wait_up(&self, until: Instant) -> Vec<Event> {
        let mut early = Vec::new();
        let mut up = vec![[false; 3]; self.links.len()];
        while up.iter().flatten().any(|&u| !u) && Instant::now() < until {
            for event in self.events() {
                let (shard, state) = match &event {
                    Event::Shard { shard, event } => (*shard, &**event),
                    other => (0, other),
                };
                let (which, is_up) = match *state {
                    Event::Commands(u) => (0, u),
                    Event::Fetches(u) => (1, u),
                    Event::Subscribed(u) => (2, u),
                    _ => (usize::MAX, false),
                };
                if let Some(flag) = up.get_mut(shard).and_then(|c| c.get_mut(which)) {
                    *flag = is_up;
                }
                early.push(event);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        early
    }

    /// Hands each command to its room's shard (a touch or an unsubscribe split by
    /// shard; moderation to the first; heartbeats and leaving to every shard).
    pub fn send(&mut self, batch: Vec<Command>) {
        let mut per: Vec<Vec<Command>> = self.links.iter().map(|_| Vec::new()).collect();
        let shard = |room: &str| shard_of(&self.shards, room);
        for c in batch {
            match c {
                Command::Publish { ref room, .. }
                | Command::Fetch { ref room, .. }
                | Command::Presence { ref room, .. }
                | Command::Forget { ref room, .. }
                | Command::ReadPresence { ref room, .. } => per[shard(room)].push(c),
                Command::Moderate(_) => per[0].push(c),
                // Every shard keeps a node registry (a room's shard checks that a node is
                // dead before it deletes its part); the first one's answers count.
                Command::Heartbeat { .. } | Command::Leave { .. } => {
                    for batch in &mut per {
                        batch.push(c.clone());
                    }
                }
                Command::Touch { rooms } => split(&mut per, rooms, shard, |rooms| Command::Touch { rooms }),
                Command::Unsubscribe { rooms } => split(&mut per, rooms, shard, |rooms| Command::Unsubscribe { rooms }),
            }
        }
        for (link, batch) in self.links.iter_mut().zip(per) {
            if !batch.is_empty() {
                link.send(batch);
            }
        }
    }
}

/// Splits `rooms` by shard and adds to each shard's batch in `per` its part, as
/// `command(part)` (a touch or an unsubscribe); a shard with no part gets nothing.
fn split(
    per: &mut [Vec<Command>],
    rooms: Vec<Box<str>>,
    shard: impl Fn(&str) -> usize,
    command: fn(Vec<Box<str>>) -> Command,
) {
    let mut parts: Vec<Vec<Box<str>>> = per.iter().map(|_| Vec::new()).collect();
    for room in rooms {
        parts[shard(&room)].push(room);
    }
    for (batch, part) in per.iter_mut().zip(parts) {
        if !part.is_empty() {
            batch.push(command(part));
        }
    }
}
