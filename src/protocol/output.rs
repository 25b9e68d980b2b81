//! Bytes out: the queue `poll_transmit` gives and `handle_written` advances, data
//! frames under the backpressure limit, write-through, and the frames a connection
//! sends of its own (pings, pongs, closes).

use std::io::IoSlice;
use std::time::Instant;

use super::{Conn, Fault, FirstClose, State};
use crate::config::Limits;
use crate::frame::{CloseCode, Opcode};
use crate::outqueue::{Chunk, OverLimit};

impl Conn {
    /// The socket took `n` bytes of what `poll_transmit` gave.
    pub fn handle_written(&mut self, n: usize) {
        self.out.advance(n);
    }

    /// Queues a data frame for an open connection. Over the backpressure limit the
    /// connection is a slow consumer: its queue is freed and it is closed with 1008.
    pub fn send(&mut self, chunk: Chunk, now: Instant, limits: &Limits) -> Result<(), OverLimit> {
        if !self.is_open() {
            return Ok(());
        }
        let result = self.out.push_limited(chunk, limits.max_backpressure);
        if result.is_err() {
            self.out.drop_unsent();
            self.fault = Some(Fault::SlowConsumer);
            self.close(CloseCode::POLICY, "slow consumer: too much data queued", now, limits);
        }
        result
    }

    /// Write-through, step 1: whether a frame may go straight to the socket now,
    /// ahead of the queue (open, and no byte of output waits). Ask before the
    /// `handle_input` call that yields the message: the message borrows the `Conn`,
    /// and a call that queues output (a pong) returns before yielding a message.
    pub fn can_write_through(&self) -> bool {
        self.is_open() && self.out.is_empty()
    }

    /// Write-through, step 2: the loop wrote a frame itself; what the socket did not
    /// take (`Chunk::rest_of`) is queued. Like the 101 it must go out whatever
    /// follows, or the stream would lose its framing.
    pub fn finish_write_through(&mut self, rest: Option<Chunk>) {
        if let Some(rest) = rest {
            self.out.push_committed(rest);
        }
    }

    /// Fills `slices` with the bytes waiting to be written, front first; returns how
    /// many it filled. Tell `handle_written` how many bytes the socket took.
    pub fn poll_transmit<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        self.out.io_slices(slices)
    }

    /// How many chunks wait in the queue (each a slice of a vectored write).
    pub fn queued_chunks(&self) -> usize {
        self.out.len()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.out.queued_bytes()
    }

    /// What the outgoing queue holds as the backpressure limit counts it (bytes plus
    /// a slot per chunk).
    pub fn queue_memory(&self) -> usize {
        self.out.memory()
    }

    /// `queue_memory` as last reported (`report_queue_memory`): the application's share
    /// of its gauge of every queue (`mioket_output_queued_bytes`).
    #[inline]
    pub fn queue_reported(&self) -> usize {
        self.out.reported()
    }

    /// Reports `queue_memory` now (up to 4 GiB); returns (before, now).
    pub fn report_queue_memory(&mut self) -> (usize, usize) {
        let before = self.out.report_memory();
        (before, self.out.reported())
    }

    /// All our output is queued and written: time to shut our write side.
    pub fn poll_write_shutdown(&self) -> bool {
        matches!(self.state, State::Draining { write_shut: false, .. }) && self.out.is_empty()
    }

    /// The loop shut our write side: a finished close handshake ends here.
    pub fn handle_write_shutdown(&mut self) {
        match &mut self.state {
            State::Draining { linger: false, .. } => self.state = State::Closed,
            State::Draining { write_shut, .. } => *write_shut = true,
            _ => {}
        }
    }

    /// Sends a close frame (if open) and drains: our write side is shut once it is
    /// written; `linger` then waits for the peer's end of stream, otherwise ends.
    pub(super) fn fail_with(&mut self, code: CloseCode, reason: &str, linger: bool, now: Instant, limits: &Limits) {
        if self.is_open() {
            self.out.push(Chunk::close(code, reason));
            self.first_close.get_or_insert(FirstClose { code, by_peer: false });
        }
        self.state = State::Draining { deadline: limits.close_timeout.map(|t| now + t), write_shut: false, linger };
    }

    pub(super) fn send_control(&mut self, opcode: Opcode, payload: &[u8]) {
        self.out.push(Chunk::frame(opcode, payload));
    }
}
