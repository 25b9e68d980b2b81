//! A connection's outgoing bytes: shared broadcast frames (a reference each), small
//! frames inline (no allocation), static pages, with byte accounting for backpressure.
//!
//! Memory matters here more than anywhere: every connection has a queue. A chunk is
//! 32 bytes, and the first queued chunk lives in the queue itself, so a connection
//! that sends one frame at a time (an echo, a fan-out, an idle client) never
//! allocates queue storage.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use crate::frame::{encode_header, server_header, CloseCode, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};

/// Header and payload in one `Rc<[u8]>`: exactly one allocation, filled by memset
/// and memcpy (collecting a chain of bytes instead costs ~14 instructions a byte).
pub fn shared_frame(header: &[u8], payload: &[u8]) -> Rc<[u8]> {
    let mut frame: Rc<[u8]> = std::iter::repeat_n(0u8, header.len() + payload.len()).collect();
    // A fresh Rc has no other owner, so get_mut always succeeds.
    if let Some(bytes) = Rc::get_mut(&mut frame) {
        let (h, p) = bytes.split_at_mut(header.len());
        h.copy_from_slice(header);
        p.copy_from_slice(payload);
    }
    frame
}

/// A whole server frame as one shared allocation, for fan-out and history.
pub fn shared_message(opcode: Opcode, payload: &[u8]) -> Rc<[u8]> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&server_header(opcode, payload.len()), &mut header);
    shared_frame(&header[..n], payload)
}

/// Bytes that fit in a chunk without a heap allocation: a ping, a small pong or close,
/// a 20-byte message with its 2-byte header. Keeps `Chunk` at 32 bytes.
pub const INLINE_CAP: usize = 30;

#[derive(Clone)]
pub struct Inline {
    len: u8,
    bytes: [u8; INLINE_CAP],
}

impl Inline {
    /// Builds from pieces; `None` if they do not fit.
    pub fn from_parts(parts: &[&[u8]]) -> Option<Inline> {
        let mut inline = Inline { len: 0, bytes: [0; INLINE_CAP] };
        let mut n = 0usize;
        for part in parts {
            inline.bytes.get_mut(n..n + part.len())?.copy_from_slice(part);
            n += part.len();
        }
        inline.len = n as u8;
        Some(inline)
    }
}

/// One queued piece of output.
#[derive(Clone)]
pub enum Chunk {
    /// A frame encoded once and shared by every recipient.
    Shared(Rc<[u8]>),
    Inline(Inline),
    Static(&'static [u8]),
    Owned(Vec<u8>),
    /// Small frames copied together once a queue is long (see `BATCH_AFTER`).
    Batch(Vec<u8>),
}

impl Chunk {
    /// A final, unmasked server frame for one recipient: inline when small,
    /// otherwise one `Vec` holding header and payload together.
    pub fn frame(opcode: Opcode, payload: &[u8]) -> Chunk {
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&server_header(opcode, payload.len()), &mut header);
        Chunk::from_parts(&[&header[..n], payload])
    }

    /// Small bytes inline, larger ones in a `Vec`.
    pub fn from_parts(parts: &[&[u8]]) -> Chunk {
        match Inline::from_parts(parts) {
            Some(inline) => Chunk::Inline(inline),
            None => Chunk::Owned(parts.concat()),
        }
    }

    /// What is left of `parts` once their first `written` bytes are sent; `None` if nothing.
    #[inline]
    pub fn rest_of(parts: [&[u8]; 2], written: usize) -> Option<Chunk> {
        let [a, b] = parts;
        let rest_a = a.get(written..).unwrap_or_default();
        let rest_b = b.get(written.saturating_sub(a.len())..).unwrap_or_default();
        (!rest_a.is_empty() || !rest_b.is_empty()).then(|| Chunk::from_parts(&[rest_a, rest_b]))
    }

    /// A close frame; the reason is cut to fit the 125-byte control payload.
    pub fn close(code: CloseCode, reason: &str) -> Chunk {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&server_header(Opcode::Close, 2 + end), &mut header);
        Chunk::from_parts(&[&header[..n], &code.0.to_be_bytes(), &reason.as_bytes()[..end]])
    }

    /// A close frame with no body (the answer to an empty close).
    pub fn close_empty() -> Chunk {
        Chunk::frame(Opcode::Close, &[])
    }

    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Inline(i) => &i.bytes[..usize::from(i.len)],
            Chunk::Static(b) => b,
            Chunk::Owned(b) | Chunk::Batch(b) => b,
        }
    }
}

/// Queue slots an emptied queue may keep for the next burst (4 x 32 bytes).
const KEEP_SLOTS: usize = 4;
/// What one queue slot costs: the chunk itself, counted against the limit with
/// every chunk's bytes.
const SLOT: usize = std::mem::size_of::<Chunk>();
/// Once this many chunks wait, frames of at most `SMALL_FRAME` bytes are copied into
/// a shared batch buffer instead of taking a slot each: a flood of tiny frames (empty
/// pongs, empty echoes) then costs its bytes, not 32 bytes of slot per 2-byte frame.
/// Below it (every ordinary queue) nothing changes: a writev takes 64 slices.
const BATCH_AFTER: usize = 64;
const SMALL_FRAME: usize = 128;
/// Capacity of one batch buffer.
const BATCH_CAP: usize = 4096;

/// The queue would pass its byte limit.
#[derive(Debug, PartialEq, Eq)]
pub struct OverLimit;

/// Bytes queued for one connection, in order: `first`, then `rest`.
///
/// The backpressure limit counts what a client holds, not wire bytes: each chunk's
/// bytes plus its 32-byte slot (a shared frame counts whole for every holder: its
/// size is what a slow reader keeps alive). Small frames batch on long queues, so a
/// flood of tiny frames cannot hide behind their slots. Not counted: the allocator's
/// rounding and headers and the deque's spare slots, at most about a third more
/// (a 129-byte frame, the smallest with a slot of its own on a long queue).
#[derive(Default)]
pub struct OutQueue {
    /// The front chunk; `None` only when the queue is empty.
    first: Option<Chunk>,
    rest: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    /// The queued chunks' whole bytes (written or not) plus a `SLOT` each.
    held: usize,
    /// Chunks at the front that must go out whatever happens (the 101 answer, the
    /// rest of a frame begun on the wire): never dropped, and not counted against
    /// the backpressure limit. (u32: every connection has a queue.)
    committed: u32,
    /// `held` when last reported (`report_memory`), up to 4 GiB: the application sums
    /// the reports into a gauge of what every queue holds, without a walk. (In the
    /// padding after `committed`: no connection grows for it.)
    reported: u32,
}

impl OutQueue {
    #[inline]
    pub fn push(&mut self, chunk: Chunk) {
        let len = chunk.bytes().len();
        self.push_len(chunk, len);
    }

    /// `push` of a chunk whose length the caller knows.
    #[inline]
    fn push_len(&mut self, chunk: Chunk, len: usize) {
        if self.rest.len() >= BATCH_AFTER && len <= SMALL_FRAME {
            return self.push_small_on_long_queue(chunk);
        }
        self.held += len + SLOT;
        match self.first {
            None => self.first = Some(chunk),
            Some(_) => self.rest.push_back(chunk),
        }
    }

    /// Copies a small frame into the batch at the back, or a new one.
    #[cold]
    fn push_small_on_long_queue(&mut self, chunk: Chunk) {
        let bytes = chunk.bytes();
        if let Some(Chunk::Batch(batch)) = self.rest.back_mut() {
            if batch.capacity() - batch.len() >= bytes.len() {
                batch.extend_from_slice(bytes);
                self.held += bytes.len();
                return;
            }
        }
        let mut batch = Vec::with_capacity(BATCH_CAP);
        batch.extend_from_slice(bytes);
        self.held += bytes.len() + SLOT;
        self.rest.push_back(Chunk::Batch(batch));
    }

    /// Pushes bytes that must be sent even if everything after them is dropped.
    /// Only valid while everything queued is committed (at the start of a connection,
    /// or on an empty queue).
    pub fn push_committed(&mut self, chunk: Chunk) {
        debug_assert_eq!(self.committed as usize, self.len());
        self.push(chunk);
        self.committed += 1;
    }

    /// Pushes unless the queue already holds data and would pass `limit`: a single
    /// message larger than the limit still goes through an empty queue, so the queue
    /// never holds more than `max(limit, one message)` besides committed bytes.
    #[inline]
    pub fn push_limited(&mut self, chunk: Chunk, limit: usize) -> Result<(), OverLimit> {
        let len = chunk.bytes().len();
        if self.len() > self.committed as usize && !self.fits_len(len, limit) {
            return Err(OverLimit);
        }
        self.push_len(chunk, len);
        Ok(())
    }

    /// Whether `chunk` can be queued without the data (all but committed chunks)
    /// passing `limit`. (A chunk that would batch is counted with a slot: close
    /// enough, and cheaper than asking where it would go.)
    #[inline]
    pub fn fits(&self, chunk: &Chunk, limit: usize) -> bool {
        self.fits_len(chunk.bytes().len(), limit)
    }

    #[inline]
    fn fits_len(&self, len: usize, limit: usize) -> bool {
        self.data_memory() + len + SLOT <= limit
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.first.iter().chain(self.rest.iter())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.held - SLOT * self.len() - self.front_written
    }

    /// What the queue holds, as the backpressure limit counts it.
    pub fn memory(&self) -> usize {
        self.held
    }

    /// `memory` as last reported (0 before the first report).
    #[inline]
    pub fn reported(&self) -> usize {
        self.reported as usize
    }

    /// Reports `memory` now (up to 4 GiB); returns what was reported before.
    pub fn report_memory(&mut self) -> usize {
        let before = self.reported as usize;
        self.reported = self.held.min(u32::MAX as usize) as u32;
        before
    }

    /// What counts against the backpressure limit: all but committed chunks.
    #[inline]
    pub fn data_memory(&self) -> usize {
        if self.committed == 0 {
            return self.held;
        }
        let committed: usize = self.chunks().take(self.committed as usize).map(|c| c.bytes().len() + SLOT).sum();
        self.held - committed
    }

    /// Fills `slices` with the unwritten bytes, front first; returns how many it filled.
    pub fn io_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks().enumerate() {
            let Some(slot) = slices.get_mut(n) else { break };
            let bytes = chunk.bytes();
            *slot = IoSlice::new(if i == 0 { &bytes[self.front_written..] } else { bytes });
            n += 1;
        }
        n
    }

    /// Marks `written` bytes as sent, dropping finished chunks.
    pub fn advance(&mut self, mut written: usize) {
        while let Some(front) = &self.first {
            let len = front.bytes().len();
            let left = len - self.front_written;
            if written < left {
                self.front_written += written;
                // Storage left by a burst (history replay, a flood) goes as it drains.
                let capacity = self.rest.capacity();
                if capacity > BATCH_AFTER && self.rest.len() < capacity / 4 {
                    self.rest.shrink_to((self.rest.len() * 2).max(BATCH_AFTER));
                }
                return;
            }
            written -= left;
            self.front_written = 0;
            self.held -= len + SLOT;
            self.committed = self.committed.saturating_sub(1);
            self.first = self.rest.pop_front();
        }
        if self.rest.capacity() > KEEP_SLOTS {
            self.rest = VecDeque::new();
        }
    }

    /// Drops everything not yet started. A partly written front chunk stays, so
    /// the stream remains well framed for what comes after (a close frame).
    /// Committed chunks stay too.
    pub fn drop_unsent(&mut self) {
        let keep = (self.committed as usize).max(usize::from(self.front_written > 0));
        if keep == 0 {
            self.first = None;
        }
        self.rest.truncate(keep.saturating_sub(1));
        if self.rest.is_empty() {
            self.rest = VecDeque::new();
        }
        self.held = self.chunks().map(|c| c.bytes().len() + SLOT).sum();
    }

    /// The unwritten bytes, for a binary upgrade's snapshot: first those that must go
    /// out whatever follows (committed chunks, the rest of a chunk begun on the wire),
    /// then every other chunk whole (a frame never spans two of them). `restore` makes
    /// a queue that writes the same bytes and drops the same ones.
    pub fn unsent(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let keep = (self.committed as usize).max(usize::from(self.front_written > 0));
        let (mut committed, mut rest) = (Vec::new(), Vec::new());
        for (i, chunk) in self.chunks().enumerate() {
            let bytes = if i == 0 { &chunk.bytes()[self.front_written..] } else { chunk.bytes() };
            if i < keep {
                committed.extend_from_slice(bytes);
            } else {
                rest.push(bytes.to_vec());
            }
        }
        (committed, rest)
    }

    /// A queue from what `unsent` gave (each chunk owned: sharing does not cross processes).
    pub fn restore(committed: Vec<u8>, rest: Vec<Vec<u8>>) -> OutQueue {
        let mut queue = OutQueue::default();
        if !committed.is_empty() {
            queue.push_committed(Chunk::Owned(committed));
        }
        for chunk in rest.into_iter().filter(|c| !c.is_empty()) {
            queue.push(Chunk::Owned(chunk));
        }
        queue
    }

    /// Frees the queue's storage while it is empty (an idle connection holds nothing).
    pub fn shrink_if_empty(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &OutQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        q.push(Chunk::Static(b"abc"));
        q.push(Chunk::Shared(Rc::from(&b"defg"[..])));
        q.push(Chunk::Inline(Inline::from_parts(&[b"h", b"ij"]).unwrap()));
        assert_eq!(q.queued_bytes(), 10);
        q.advance(2);
        assert_eq!(drain(&q), b"cdefghij");
        q.advance(4);
        assert_eq!(drain(&q), b"ghij");
        assert_eq!(q.queued_bytes(), 4);
        q.advance(4);
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn the_limit_refuses_only_when_bytes_are_already_queued() {
        let mut q = OutQueue::default();
        assert_eq!(q.push_limited(Chunk::Owned(vec![0; 10]), 4), Ok(()), "one big message through an empty queue");
        assert_eq!(q.push_limited(Chunk::Static(b"x"), 4), Err(OverLimit));
        q.advance(10);
        assert_eq!(q.push_limited(Chunk::Static(b"xy"), 4), Ok(()));
    }

    #[test]
    fn dropping_unsent_keeps_a_partly_written_front() {
        let mut q = OutQueue::default();
        q.push(Chunk::Static(b"abcd"));
        q.push(Chunk::Static(b"efgh"));
        q.advance(1);
        q.drop_unsent();
        assert_eq!(drain(&q), b"bcd");
        assert_eq!(q.queued_bytes(), 3);
        q.advance(3);
        q.push(Chunk::Static(b"x"));
        q.drop_unsent();
        assert!(q.is_empty());
    }

    #[test]
    fn committed_bytes_are_never_dropped_nor_counted_against_the_limit() {
        let mut q = OutQueue::default();
        q.push_committed(Chunk::Static(b"HTTP/1.1 101"));
        assert_eq!(q.push_limited(Chunk::Static(b"abc"), 4), Ok(()), "the 101 does not count");
        assert_eq!(q.push_limited(Chunk::Static(b"de"), 4), Err(OverLimit));
        q.drop_unsent();
        assert_eq!(drain(&q), b"HTTP/1.1 101");
        q.advance(5);
        q.push(Chunk::Static(b"x"));
        q.drop_unsent();
        assert_eq!(drain(&q), b"1.1 101", "partly written and committed");
        q.advance(7);
        assert!(q.is_empty());
        assert_eq!(q.push_limited(Chunk::Static(b"abcd"), 4), Ok(()));
    }

    #[test]
    fn small_frames_are_inline_and_large_ones_owned() {
        let small = Chunk::frame(Opcode::Text, b"hi");
        assert!(matches!(small, Chunk::Inline(_)));
        assert_eq!(small.bytes(), b"\x81\x02hi");
        assert!(matches!(Chunk::frame(Opcode::Binary, &[7; 28]), Chunk::Inline(_)));
        assert!(matches!(Chunk::frame(Opcode::Binary, &[7; 29]), Chunk::Owned(_)));
        let large = Chunk::frame(Opcode::Binary, &[7; 300]);
        assert!(matches!(large, Chunk::Owned(_)));
        assert_eq!(&shared_message(Opcode::Binary, &[7; 300])[..], large.bytes());
        assert_eq!(&large.bytes()[..4], &[0x82, 126, 1, 44]);
        assert_eq!(large.bytes().len(), 304);
    }

    #[test]
    fn the_rest_of_a_partly_written_frame() {
        let rest = |written| Chunk::rest_of([b"head", b"payload"], written).map(|c| c.bytes().to_vec());
        assert_eq!(rest(0).as_deref(), Some(&b"headpayload"[..]));
        assert_eq!(rest(2).as_deref(), Some(&b"adpayload"[..]));
        assert_eq!(rest(4).as_deref(), Some(&b"payload"[..]));
        assert_eq!(rest(10).as_deref(), Some(&b"d"[..]));
        assert_eq!(rest(11), None);
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let chunk = Chunk::close(CloseCode::GOING_AWAY, &"é".repeat(100));
        let bytes = chunk.bytes();
        assert_eq!(&bytes[..4], &[0x88, 124, 0x03, 0xE9]);
        assert!(std::str::from_utf8(&bytes[4..]).is_ok());
        assert_eq!(bytes.len(), 2 + 124);
    }

    #[test]
    fn a_chunk_is_32_bytes_and_one_queued_chunk_needs_no_storage() {
        assert_eq!(std::mem::size_of::<Chunk>(), 32);
        let mut q = OutQueue::default();
        q.push(Chunk::frame(Opcode::Text, &[b'x'; 20]));
        assert_eq!(q.rest.capacity(), 0);
        q.push(Chunk::Static(b"y"));
        assert!(q.rest.capacity() > 0);
    }

    /// A flood of empty pongs (2 bytes each) must cost about its bytes, not a
    /// 32-byte slot each: past `BATCH_AFTER` slots they share batch buffers.
    #[test]
    fn a_flood_of_tiny_frames_costs_its_bytes_not_a_slot_each() {
        let mut q = OutQueue::default();
        let pong = Chunk::frame(Opcode::Pong, b"");
        for _ in 0..100_000 {
            q.push(pong.clone());
        }
        assert_eq!(q.queued_bytes(), 200_000);
        assert!(q.rest.len() < BATCH_AFTER + 100, "{} slots", q.rest.len());
        assert!(q.memory() < 200_000 + 200_000 / 4, "{} bytes of memory for 200,000 queued", q.memory());
        let mut slices = [IoSlice::new(&[]); 128];
        let n = q.io_slices(&mut slices);
        let one_writev: usize = slices[..n].iter().map(|s| s.len()).sum();
        assert!(one_writev > 100_000, "one writev of 128 slices carries {one_writev} bytes");
    }

    #[test]
    fn batching_keeps_every_byte_in_order() {
        let mut q = OutQueue::default();
        let mut expected = Vec::new();
        for i in 0..5_000u32 {
            let payload = i.to_be_bytes().repeat((i % 40) as usize);
            let chunk = match i % 3 {
                0 => Chunk::frame(Opcode::Binary, &payload),
                1 => Chunk::Shared(shared_message(Opcode::Binary, &payload)),
                _ => Chunk::Static(b"static"),
            };
            expected.extend_from_slice(chunk.bytes());
            q.push(chunk);
        }
        let mut written = Vec::new();
        while !q.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = q.io_slices(&mut slices);
            // Partial writes, cutting chunks anywhere.
            let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).take(1000).collect();
            q.advance(bytes.len());
            written.extend(bytes);
        }
        assert_eq!(written, expected);
        assert_eq!(q.memory(), 0, "an emptied queue holds nothing");
    }

    #[test]
    fn the_limit_counts_slots_not_just_wire_bytes() {
        let limit = 64 * 1024;
        let mut q = OutQueue::default();
        q.push(Chunk::frame(Opcode::Text, b"first"));
        let mut pushed = 0;
        while q.push_limited(Chunk::Shared(shared_message(Opcode::Text, b"")), limit).is_ok() {
            pushed += 1;
        }
        assert!(q.memory() <= limit, "{} bytes held over a {limit} limit", q.memory());
        assert!(q.memory() > limit / 2, "the limit refused early: {} bytes held", q.memory());
        assert!(pushed > 1000, "only {pushed} empty frames fit");
    }

    #[test]
    fn memory_is_every_queued_chunk_with_its_slot_and_fits_says_what_a_push_adds() {
        let mut q = OutQueue::default();
        for i in 0..3_000usize {
            let chunk = match i % 4 {
                0 => Chunk::frame(Opcode::Pong, b""),
                1 => Chunk::frame(Opcode::Binary, &vec![1; i % 300]),
                2 => Chunk::Shared(shared_message(Opcode::Text, &vec![2; i % 200])),
                _ => Chunk::Static(b"xyz"),
            };
            let len = chunk.bytes().len();
            let before = q.memory();
            assert!(q.fits(&chunk, before + len + SLOT) && !q.fits(&chunk, before + len + SLOT - 1));
            q.push(chunk);
            assert!(q.memory() <= before + len + SLOT, "push {i}");
            let walked: usize = q.chunks().map(|c| c.bytes().len() + SLOT).sum();
            assert_eq!(q.memory(), walked, "push {i}");
            assert_eq!(q.queued_bytes(), walked - SLOT * q.len() - q.front_written);
            if i % 7 == 0 {
                q.advance(i % 500);
            }
        }
    }

    #[test]
    fn a_drained_queue_gives_its_slot_storage_back() {
        let mut q = OutQueue::default();
        for _ in 0..10_000 {
            q.push(Chunk::frame(Opcode::Binary, &[0; 200]));
        }
        let full = q.rest.capacity();
        q.advance(q.queued_bytes() - 10 * 204);
        assert_eq!(q.memory(), 10 * (204 + SLOT));
        assert!(q.rest.capacity() <= BATCH_AFTER, "{} of {full} slots kept with 10 frames left", q.rest.capacity());
    }

    #[test]
    fn inline_refuses_what_does_not_fit() {
        assert!(Inline::from_parts(&[&[0; INLINE_CAP]]).is_some());
        assert!(Inline::from_parts(&[&[0; INLINE_CAP], b"x"]).is_none());
    }
}
