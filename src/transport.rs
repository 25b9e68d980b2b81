//! A client's byte stream: the one place where the loop reads, writes and shuts a
//! client's socket. Plain TCP today; TLS becomes a second variant here, and nothing
//! above the loop changes.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

pub enum Transport {
    Plain(TcpStream),
}

impl Transport {
    /// Registers for both readiness kinds once, edge-triggered: no re-registration
    /// per write.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Transport::Plain(s) => registry.register(s, token, Interest::READABLE | Interest::WRITABLE),
        }
    }

    /// Small frames go out at once rather than waiting for an ACK (Nagle).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.set_nodelay(true),
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
        }
    }

    pub fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(slices),
        }
    }

    /// One non-blocking write of `parts`; returns how many bytes the socket took (0
    /// on any error: the next flush meets the error again and ends the client).
    pub fn write_now(&mut self, parts: [&[u8]; 2]) -> usize {
        let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
        loop {
            match self.write_vectored(&slices) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return result.unwrap_or(0),
            }
        }
    }

    /// Ends our side of the stream (a FIN after the last bytes).
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain(s) => s.peer_addr(),
        }
    }
}
