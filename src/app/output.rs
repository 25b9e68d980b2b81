//! The one way out: how a client's queued bytes reach its stream. The application
//! says which clients have output (`drain_dirty_into`) and writes each one's queue
//! through a `Transmit` (`flush`): the runtime's sockets, or a test's sink. The flush
//! sequence (the stream's own bytes first, writevs of up to 64 chunks until the stream
//! stops taking them, the write shutdown, the accounting after) exists only here.
//! The runtime never touches a `Conn`: for reading, it sees its own data and two facts
//! of the connection (`client_io`).

use std::io::{self, IoSlice};

use log::debug;

use super::budget::LARGE_QUEUE;
use super::clients::{count_fault, count_queued};
use super::deliver::queue_flush;
use super::App;
use crate::protocol::Conn;

/// Chunks one writev takes at most.
const MAX_IOVECS: usize = 64;
/// A short queue (most flushes: a frame or two) is written from a small array of
/// slices: setting up all 64 costs ~180 instructions, more than the rest of the flush.
const FEW_IOVECS: usize = 4;

/// How a flush writes one client's bytes: the runtime's sockets, or a test's sink.
/// Any `FnMut(&mut T, &[IoSlice]) -> io::Result<usize>` is one, for a stream that
/// holds no bytes of its own and ends at once.
pub trait Transmit<T> {
    /// Before the queue's bytes: the stream sends what it holds of its own (TLS records
    /// the socket did not take).
    #[inline]
    fn start(&mut self, _io: &mut T) {}

    /// One vectored write; returns how many bytes the stream took. `Ok(0)` or an error
    /// other than `WouldBlock` and `Interrupted` ends the client; `WouldBlock` leaves
    /// the rest for the next writable event.
    fn write(&mut self, io: &mut T, slices: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Ends our side of the stream (after the last bytes). `false`: bytes of the
    /// stream's own still wait for the socket; asked again at the next flush.
    #[inline]
    fn shutdown(&mut self, _io: &mut T) -> bool {
        true
    }
}

impl<T, F: FnMut(&mut T, &[IoSlice<'_>]) -> io::Result<usize>> Transmit<T> for F {
    #[inline(always)]
    fn write(&mut self, io: &mut T, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self(io, slices)
    }
}

/// What the runtime may see of one client: its own data, and what it must know of the
/// connection to read it.
pub struct ClientView<'a, T> {
    /// The runtime's own data for this client (its socket, its timer).
    pub io: &'a mut T,
    conn: &'a Conn,
}

impl<T> ClientView<'_, T> {
    /// Input held back (its inflate budget spent): this client's turn is over.
    #[inline]
    pub fn holds_input(&self) -> bool {
        self.conn.holds_input()
    }

    #[inline]
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

/// What the runtime does at the top of each read in a client's turn (`App::read_turn`).
pub enum ReadTurn<'a, T> {
    /// Read the client's socket.
    Socket(&'a mut T),
    /// This many bytes of input held back last turn are in the buffer: hand them in first.
    Held(usize),
    /// Its input is held back (its inflate budget spent): its turn is over, read it
    /// again next iteration.
    Later,
    /// Read nothing: its queue is long (reading resumes after a flush), or it is closed.
    Pause { io: &'a mut T, closed: bool },
    /// No such client (a stale event).
    Gone,
}

impl<T: super::ClientIo> App<T> {
    /// `id`'s runtime data, for its socket and timer.
    #[inline]
    pub fn client_io(&mut self, id: usize) -> Option<ClientView<'_, T>> {
        let client = self.clients.get_mut(id)?;
        Some(ClientView { io: &mut client.io, conn: &client.conn })
    }

    /// Moves the clients to flush, in order, onto `out` (both vectors keep their
    /// capacity: no allocation per loop iteration).
    #[inline]
    pub fn drain_dirty_into(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.dirty);
    }

    /// Moves the clients whose deadline moved outside their own events (see
    /// `App::retimed`) onto `out`.
    #[inline]
    pub fn drain_retimed_into(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.retimed);
    }

    /// Whether clients wait for a flush (for a flush that looks for new input as it goes).
    #[inline]
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// `id`'s socket is writable again: its queue may move on. (Most read events say
    /// writable too: a client with nothing to write is not flushed for them.)
    pub fn handle_writable(&mut self, id: usize) {
        if let Some(client) = self.clients.get_mut(id) {
            if client.conn.has_output() || client.conn.poll_write_shutdown() || client.io.wants_flush() {
                queue_flush(&mut self.dirty, id, client);
            }
        }
    }

    /// Writes as much of `id`'s queue as `out` takes, in one write per up to 64
    /// chunks, and shuts its side of the stream once a close is sent; the rest waits
    /// for the next writable event. Then counts memory given back and settles the
    /// client (a fan-out may have closed it as a slow consumer without reading it, a
    /// write may have ended it). Returns the bytes written.
    #[inline]
    pub fn flush(&mut self, id: usize, out: &mut impl Transmit<T>) -> usize {
        let Some(client) = self.clients.get_mut(id) else { return 0 };
        client.flush_queued = false;
        let memory_before = client.conn.queue_memory();
        out.start(&mut client.io);
        let mut total = 0;
        while client.conn.has_output() {
            let result = if client.conn.queued_chunks() <= FEW_IOVECS {
                write_slices::<T, FEW_IOVECS>(&client.conn, &mut client.io, out)
            } else {
                write_slices::<T, MAX_IOVECS>(&client.conn, &mut client.io, out)
            };
            match result {
                Ok(0) => {
                    client.conn.handle_eof();
                    break;
                }
                Ok(written) => {
                    total += written;
                    client.conn.handle_written(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write error on client {id}: {e}");
                    client.conn.handle_eof();
                    break;
                }
            }
        }
        // With TLS, only once its records are all sent (else the next writable event).
        if client.conn.poll_write_shutdown() && out.shutdown(&mut client.io) {
            client.conn.handle_write_shutdown();
        }
        self.metrics.bytes_written += total as u64;
        if memory_before >= LARGE_QUEUE {
            self.released += memory_before.saturating_sub(client.conn.queue_memory());
        }
        // Settled here (as in `App::after_activity`) without looking the client up again.
        if let Some(fault) = client.conn.poll_fault() {
            count_fault(&mut self.metrics, &mut self.released, &self.config, &client.io, fault);
        }
        // The gauge: nothing to do for the usual flush, which leaves nothing queued
        // where nothing was counted.
        if client.conn.queue_reported() != 0 || client.conn.has_output() {
            count_queued(&mut self.queued, &mut client.conn);
        }
        if client.conn.is_closed() {
            self.remove(id);
        }
        total
    }
}

/// One write of up to `N` chunks of `conn`'s queue.
#[inline(always)]
fn write_slices<T, const N: usize>(conn: &Conn, io: &mut T, out: &mut impl Transmit<T>) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let count = conn.poll_transmit(&mut slices);
    out.write(io, &slices[..count])
}
