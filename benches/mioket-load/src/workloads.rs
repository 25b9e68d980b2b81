//! The workloads: how each starts, what it sends and what it does with what comes back.

use std::time::{Duration, Instant};

use crate::args::Workload;
use crate::conn::{Out, Phase, Role};
use crate::deflate;
use crate::frame::{masked_frame, masked_frame_with, payload_start, KEY, OP_BINARY, OP_PONG, OP_TEXT};
use crate::generator::{Gen, Stage};
use crate::parser::Ev;
use crate::stamp::{Stamp, BCAST_HEAD, ROOMS_HEAD};

impl Gen {
    pub(crate) fn on_open(&mut self, idx: usize, now: Instant) {
        self.c.opened += 1;
        let workload = self.a.workload;
        let close_frame = self.close_frame;
        let running = self.counting();
        let Some(client) = self.clients[idx].as_mut() else { return };
        client.phase = Phase::Open;
        match workload {
            Workload::Connect => {
                self.c.handshakes += 1;
                if running {
                    self.hist.record(now.duration_since(client.started).as_nanos() as u64);
                }
                client.out.push_back(Out::Static(close_frame));
                client.phase = Phase::Closing;
                self.closing += 1;
            }
            Workload::Echo if running => self.send_echo(idx, now),
            _ => {}
        }
    }

    fn send_echo(&mut self, idx: usize, now: Instant) {
        if let Some(client) = self.clients[idx].as_mut() {
            client.sent_at = now;
            client.waiting = true;
            client.out.push_back(Out::Template(0));
        }
    }

    fn publish(&mut self, idx: usize, now: Instant) {
        let Some(client) = self.clients[idx].as_ref() else { return };
        let Role::Publisher(id) = client.role else { return };
        self.send_stamped(idx, id as usize, now);
    }

    /// Queues the next message of a publisher's connection: template `template` with
    /// the send time and the connection's next sequence number masked in.
    fn send_stamped(&mut self, idx: usize, template: usize, now: Instant) {
        let ts = self.ns_since_epoch(now);
        let Some(client) = self.clients[idx].as_mut() else { return };
        client.seq += 1;
        client.sent_at = now;
        client.waiting = true;
        if self.a.workload == Workload::Broadcast && (self.corpus.is_some() || client.deflater.is_some()) {
            // A payload of its own: the stamp, then the corpus document (or the filler),
            // compressed when agreed and smaller.
            let mut payload = Vec::with_capacity(self.a.size.max(BCAST_HEAD + 16 * 1024));
            payload.extend_from_slice(&ts.to_le_bytes());
            payload.extend_from_slice(&(template as u32).to_le_bytes());
            payload.extend_from_slice(&self.nonce.to_le_bytes());
            payload.extend_from_slice(&client.seq.to_le_bytes());
            match &self.corpus {
                Some(c) => payload.extend_from_slice(&c.docs[c.index(template as u32, client.seq)]),
                None => {
                    let t = &self.templates[template];
                    let p = payload_start(t);
                    let filler = t[p + BCAST_HEAD..].iter().enumerate().map(|(i, b)| b ^ KEY[(BCAST_HEAD + i) & 3]);
                    payload.extend(filler);
                }
            }
            let mut z = Vec::new();
            let shrank = client.deflater.as_mut().is_some_and(|d| d.compress(&payload, &mut z));
            let frame = if shrank {
                self.c.sent_compressed += 1;
                masked_frame_with(0x80 | deflate::RSV1 | OP_BINARY, &z)
            } else {
                masked_frame(OP_BINARY, &payload)
            };
            client.out.push_back(Out::Bytes(frame));
            self.c.messages += 1;
            return;
        }
        let t = &mut self.templates[template];
        let p = payload_start(t);
        // Payload offsets 0..8 and 16..24 are multiples of 4: the key starts at KEY[0].
        for (i, b) in ts.to_le_bytes().iter().enumerate() {
            t[p + i] = b ^ KEY[i & 3];
        }
        for (i, b) in client.seq.to_le_bytes().iter().enumerate() {
            t[p + 16 + i] = b ^ KEY[i & 3];
        }
        client.out.push_back(Out::Template(template));
        self.c.messages += 1;
    }

    /// Rooms: publisher `p` publishes into its next room (its rooms in turn) through its
    /// connection there, and writes it at once.
    pub(crate) fn publish_room(&mut self, p: usize, now: Instant) {
        let n = self.room_pubs[p].conns.len();
        for _ in 0..n {
            let k = self.room_pubs[p].next;
            self.room_pubs[p].next = (k + 1) % n;
            let (idx, room) = self.room_pubs[p].conns[k];
            // A connection that failed may have left its slot to another one.
            let usable = self.clients[idx]
                .as_ref()
                .is_some_and(|c| c.role == Role::Publisher(p as u32) && c.room == room && c.phase == Phase::Open);
            if usable {
                self.send_stamped(idx, room as usize, now);
                if let Some(c) = self.clients[idx].as_mut() {
                    c.in_flight += 1;
                }
                self.flush(idx);
                return;
            }
        }
    }

    fn limit_reached(&self, count: u64) -> bool {
        self.a.messages.is_some_and(|m| count >= m)
    }

    pub(crate) fn on_frame(&mut self, idx: usize, ev: Ev, now: Instant) {
        let size = self.a.size as u64;
        let running = self.counting();
        let sending = self.running();
        let window_start = self.ns_since_epoch(self.window_start);
        let warm = !self.a.warmup.is_zero();
        let now_ns = self.ns_since_epoch(now);
        let limit = self.a.messages;
        let Some(client) = self.clients[idx].as_mut() else { return };
        match ev {
            Ev::Ping { payload, len } => {
                self.c.pings += 1;
                client.out.push_back(Out::Bytes(masked_frame(OP_PONG, &payload[..len])));
            }
            Ev::Close => {
                client.got_close = true;
                if client.phase != Phase::Closing {
                    client.out.push_back(Out::Static(self.close_frame));
                    client.phase = Phase::Closing;
                    if self.a.workload == Workload::Connect {
                        self.closing += 1;
                    }
                }
                if self.a.raw {
                    // A TCP echo server echoed our close: the cycle is done.
                    self.on_end(idx, true);
                }
            }
            Ev::Message { opcode, len, head, head_len, compressed, wire, body_crc } => {
                // Corpus payloads vary in length: the stamp's nonce tells ours apart.
                let expected = self.corpus.is_some() || len == size;
                if opcode == OP_TEXT || !expected {
                    self.c.skipped_text += 1;
                    return;
                }
                let mut counted = false;
                match self.a.workload {
                    Workload::Echo => {
                        if !client.waiting {
                            return;
                        }
                        client.waiting = false;
                        if running {
                            counted = true;
                            self.hist.record(now.duration_since(client.sent_at).as_nanos() as u64);
                            self.c.messages += 1;
                            if limit.is_some_and(|m| self.c.messages >= m) {
                                if sending {
                                    self.reached_limit(now);
                                }
                            } else if sending {
                                self.send_echo(idx, now);
                            }
                        }
                    }
                    Workload::Broadcast if head_len >= BCAST_HEAD => {
                        let Stamp { ts, id, nonce, seq } = Stamp::read(&head);
                        if nonce != self.nonce {
                            self.c.skipped_text += 1;
                            return;
                        }
                        if let Some(corpus) = &self.corpus {
                            let doc = corpus.index(id, seq);
                            let ok = len == (BCAST_HEAD + corpus.docs[doc].len()) as u64
                                && body_crc.is_none_or(|crc| crc == corpus.crcs[doc]);
                            self.c.bad_payloads += u64::from(!ok);
                        }
                        // After a warm-up: what arrives within the window; else what was
                        // sent within it.
                        let in_window = if warm { now_ns >= window_start } else { ts >= window_start };
                        if running && in_window {
                            counted = true;
                            self.c.delivered(now_ns);
                            self.hist.record(now_ns.saturating_sub(ts));
                        }
                        if client.role == Role::Publisher(id) && client.waiting && seq == client.seq {
                            client.waiting = false;
                            if limit.is_some_and(|m| self.c.messages >= m) {
                                if sending {
                                    self.reached_limit(now);
                                }
                            } else if sending {
                                self.publish(idx, now);
                            }
                        }
                    }
                    Workload::Rooms if head_len >= ROOMS_HEAD => {
                        let Stamp { ts, id, nonce, seq } = Stamp::read(&head);
                        let room = u32::from_le_bytes(head[24..28].try_into().unwrap());
                        if nonce != self.nonce {
                            self.c.skipped_text += 1;
                            return;
                        }
                        if room != client.room {
                            // Counted whenever it happens: a misroute is never fine.
                            self.c.misroutes += 1;
                            return;
                        }
                        // Every member joined before the first message: it should see
                        // its room's messages 1, 2, 3, ... each once.
                        if seq > client.last_seq + 1 {
                            self.c.gaps += seq - client.last_seq - 1;
                        } else if seq <= client.last_seq {
                            self.c.reordered += 1;
                        }
                        client.last_seq = client.last_seq.max(seq);
                        if running && ts >= window_start {
                            counted = true;
                            self.c.delivered(now_ns);
                            self.hist.record(now_ns.saturating_sub(ts));
                        }
                        // Its own messages come back to a publishing connection in order.
                        if client.role == Role::Publisher(id) && client.in_flight > 0 {
                            client.in_flight -= 1;
                            client.waiting = client.in_flight > 0;
                            if limit.is_some_and(|m| self.c.messages >= m) {
                                if sending {
                                    self.reached_limit(now);
                                }
                            } else if sending {
                                self.publish_room(id as usize, now);
                            }
                        }
                    }
                    _ => {}
                }
                if counted {
                    self.c.wire_bytes += wire;
                    self.c.payload_bytes += len;
                    self.c.compressed += u64::from(compressed);
                }
            }
        }
    }

    /// End of stream or an error: a closed cycle counts for the connect workload.
    pub(crate) fn on_end(&mut self, idx: usize, clean: bool) {
        if self.a.workload == Workload::Connect && clean {
            self.c.cycles += 1;
            if self.limit_reached(self.c.cycles) && self.running() {
                self.reached_limit(Instant::now());
            }
        }
        self.drop_client(idx, !clean);
    }

    pub(crate) fn start_window(&mut self, now: Instant) {
        // A warm-up publishes from now on but counts only what is sent from `opens`.
        let warmup = if self.a.workload == Workload::Broadcast { self.a.warmup } else { Duration::ZERO };
        let opens = now + warmup;
        self.window_start = opens;
        self.stage = Stage::Run(opens + self.a.duration);
        self.window_opens = Some(opens);
        self.open_window(now);
        match self.a.workload {
            Workload::Echo => {
                for idx in 0..self.clients.len() {
                    if self.clients[idx].as_ref().is_some_and(|c| c.phase == Phase::Open) {
                        self.send_echo(idx, now);
                        self.flush(idx);
                    }
                }
            }
            Workload::Broadcast => {
                for idx in self.publishers.clone() {
                    self.publish(idx, now);
                    self.flush(idx);
                }
            }
            Workload::Rooms => {
                for p in 0..self.room_pubs.len() {
                    for _ in 0..self.a.window {
                        self.publish_room(p, now);
                    }
                }
            }
            Workload::Connect | Workload::Idle | Workload::EmptyRooms => {}
        }
    }
}
