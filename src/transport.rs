//! A client's byte stream: the one place where the loop reads, writes and shuts a
//! client's socket. Plain TCP, or TLS (`tls::TlsStream`, rustls): nothing above the
//! loop knows which. Both keep one contract: `read` gives plaintext (`Ok(0)` at the
//! end of the stream), a write returns the plaintext bytes taken, and a stream that
//! holds bytes of its own says so (`read_again`, `flush_pending`, `shutdown_write`).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::tls::TlsStream;

/// The stream, and beside it the loop's two words about the client (its timer and
/// whether its reading is paused). They sit flat in each variant for size: so the
/// TLS box fits beside a plain socket's fields and a plain `Transport` stays 16 bytes,
/// where a separate field next to the enum would cost 16 more on every connection.
pub enum Transport {
    Plain {
        socket: TcpStream,
        timer_at: u64,
        read_paused: bool,
    },
    /// Boxed: a TLS session is large (about 1.2 KiB), plain connections do not pay for it.
    Tls(Box<Tls>),
}

/// A plain socket's readiness: both kinds, edge-triggered.
const PLAIN_INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

pub struct Tls {
    stream: TlsStream,
    timer_at: u64,
    read_paused: bool,
}

impl Transport {
    pub fn plain(socket: TcpStream) -> Transport {
        Transport::Plain { socket, timer_at: 0, read_paused: false }
    }

    /// A TLS server stream over `socket`; its handshake runs as the client is read.
    pub fn tls(socket: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Transport> {
        Ok(Transport::Tls(Box::new(Tls { stream: TlsStream::new(socket, config)?, timer_at: 0, read_paused: false })))
    }

    /// The loop's deadline for this client, as `Server::millis` (0: none).
    pub fn timer_at(&self) -> u64 {
        match self {
            Transport::Plain { timer_at, .. } => *timer_at,
            Transport::Tls(t) => t.timer_at,
        }
    }

    pub fn set_timer_at(&mut self, at: u64) {
        match self {
            Transport::Plain { timer_at, .. } => *timer_at = at,
            Transport::Tls(t) => t.timer_at = at,
        }
    }

    /// Reading stopped because the client's outgoing queue is long.
    pub fn read_paused(&self) -> bool {
        match self {
            Transport::Plain { read_paused, .. } => *read_paused,
            Transport::Tls(t) => t.read_paused,
        }
    }

    pub fn set_read_paused(&mut self, paused: bool) {
        match self {
            Transport::Plain { read_paused, .. } => *read_paused = paused,
            Transport::Tls(t) => t.read_paused = paused,
        }
    }

    /// Registers for both readiness kinds once, edge-triggered: no re-registration
    /// per write.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Transport::Plain { socket, .. } => registry.register(socket, token, PLAIN_INTEREST),
            Transport::Tls(t) => t.stream.register(registry, token),
        }
    }

    /// `register` for a plain socket not yet made a `Transport` (a binary upgrade
    /// registers the sockets it takes over as they arrive, before the application
    /// that will own them is restored).
    pub fn register_plain_fd(registry: &Registry, fd: RawFd, token: Token) -> io::Result<()> {
        registry.register(&mut SourceFd(&fd), token, PLAIN_INTEREST)
    }

    /// Small frames go out at once rather than waiting for an ACK (Nagle).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Transport::Plain { socket, .. } => socket.set_nodelay(true),
            Transport::Tls(t) => t.stream.set_nodelay(),
        }
    }

    /// Plaintext into `buf`. TLS needs a `buf` of at least 64 KiB (the loop's is 256).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain { socket, .. } => socket.read(buf),
            Transport::Tls(t) => t.stream.read(buf),
        }
    }

    /// Whether the last read stopped with input possibly left (in the socket or in the
    /// stream): then a short read does not mean "drained", and no new edge will come.
    pub fn read_again(&self) -> bool {
        match self {
            Transport::Plain { .. } => false,
            Transport::Tls(t) => t.stream.read_again(),
        }
    }

    /// Returns how many plaintext bytes were taken (for TLS: encrypted, and sent or
    /// queued in the stream, which sends them before anything else).
    #[inline]
    pub fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain { socket, .. } => socket.write_vectored(slices),
            Transport::Tls(t) => t.stream.write_vectored(slices),
        }
    }

    /// Sends bytes the stream holds of its own (TLS records the socket did not take);
    /// a no-op for plain TCP. Errors are left for the next write or read to meet.
    pub fn flush_pending(&mut self) {
        if let Transport::Tls(t) = self {
            let _ = t.stream.flush_pending();
        }
    }

    /// One non-blocking write of `parts`; returns how many bytes the socket took (0
    /// on any error: the next flush meets the error again and ends the client).
    #[inline]
    pub fn write_now(&mut self, parts: [&[u8]; 2]) -> usize {
        let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
        loop {
            match self.write_vectored(&slices) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return result.unwrap_or(0),
            }
        }
    }

    /// Ends our side of the stream (a FIN after the last bytes; TLS sends its
    /// close_notify first). `false`: bytes of the stream's own still wait for the
    /// socket; call again when it is writable.
    pub fn shutdown_write(&mut self) -> bool {
        match self {
            Transport::Plain { socket, .. } => {
                let _ = socket.shutdown(Shutdown::Write);
                true
            }
            Transport::Tls(t) => t.stream.shutdown_write(),
        }
    }

    /// A plain connection's socket (a binary upgrade moves it); TLS has none to give.
    pub fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Transport::Plain { socket, .. } => Some(socket.as_raw_fd()),
            Transport::Tls(_) => None,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain { socket, .. } => socket.peer_addr(),
            Transport::Tls(t) => t.stream.peer_addr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain connection pays nothing for TLS: the box fits beside its fields (16
    /// bytes in a release build; mio's debug builds add 8 to a socket).
    #[test]
    fn the_tls_variant_costs_a_plain_connection_nothing() {
        let plain_fields = std::mem::size_of::<TcpStream>() + 8 + 1;
        assert_eq!(std::mem::size_of::<Transport>(), plain_fields.next_multiple_of(8));
    }
}
