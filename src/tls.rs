//! TLS for the transport: the certificate and key (loaded from PEM files, reloaded on
//! SIGHUP), and one client's TLS stream over its TCP socket.
//!
//! The stream drives rustls' unbuffered API, so a connection owns no TLS buffers of its
//! own while idle: records are read into and decrypted from the loop's shared read
//! buffer, and encrypted into one buffer shared by every connection (`CIPHER`). A
//! connection keeps bytes only while they are in flight (a record split across reads,
//! ciphertext the socket did not take), and frees them once they are gone. Nothing
//! above the transport sees TLS: reads give plaintext, writes take plaintext, and a
//! write counts the plaintext bytes that were encrypted.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Plaintext encrypted per write call at most (four full records): ciphertext that the
/// socket does not take waits in the connection, so this bounds what one can hold.
const MAX_PLAIN_PER_WRITE: usize = 64 * 1024;
/// The largest TLS record payload: small slices are gathered up to this before they
/// are encrypted, so a writev of many small frames makes one record, not one each.
const MAX_RECORD: usize = 16 * 1024;

/// Loads a PEM certificate chain and its private key (PKCS#8, PKCS#1 RSA or SEC1 EC)
/// into a server configuration: TLS 1.2 and 1.3, ALPN `http/1.1`. The error is one
/// line naming the file and the reason.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate file {}: {}", cert.display(), pem_reason(e)))?;
    if chain.is_empty() {
        return Err(format!("certificate file {}: no certificate in it", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key file {}: {}", key.display(), pem_reason(e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of that kind in it".into(),
        e => format!("not valid PEM ({e})"),
    }
}

thread_local! {
    /// Ciphertext being made by a write: one buffer for every connection of the loop.
    static CIPHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One client's TLS stream.
pub struct TlsStream {
    socket: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read but not yet processed (a record split across reads, or handshake
    /// records rustls keeps in place until the message is whole). Empty: no allocation.
    incoming: Vec<u8>,
    /// Ciphertext made but not yet taken by the socket, from `sent` on. Empty: no allocation.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer ended the stream (close_notify or TCP end) after plaintext still to give.
    eof: bool,
    /// The last read stopped while the socket may hold more.
    read_again: bool,
    /// Our close_notify is queued.
    closing: bool,
}

impl TlsStream {
    pub fn new(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsStream {
            socket,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            eof: false,
            read_again: false,
            closing: false,
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.socket, token, Interest::READABLE | Interest::WRITABLE)
    }

    pub fn set_nodelay(&self) -> io::Result<()> {
        self.socket.set_nodelay(true)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket.peer_addr()
    }

    /// Whether a read stopped early: more may wait without a new readiness edge.
    pub fn read_again(&self) -> bool {
        self.read_again
    }

    /// Reads ciphertext into the back half of `buf` and gives the plaintext in its
    /// front half (plaintext is never longer than its records). `Ok(0)` is the end of
    /// the stream; `WouldBlock` when no plaintext came (a handshake in progress).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_again = false;
        if self.eof {
            return Ok(0);
        }
        let (out, inp) = buf.split_at_mut(buf.len() / 2);
        // A record never exceeds 18 KiB on the wire; the loop's buffer is far larger.
        let mut filled = self.incoming.len();
        if filled >= inp.len() {
            return Err(io::Error::other("TLS input larger than the read buffer"));
        }
        inp[..filled].copy_from_slice(&self.incoming);
        self.incoming = Vec::new();
        let mut plain = 0;
        loop {
            let mut drained = false;
            // (`filled` is below `inp.len()` here: see the check at the end of the loop.)
            match self.socket.read(&mut inp[filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    filled += n;
                    drained = filled < inp.len();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let used = self.process(&mut inp[..filled], out, &mut plain)?;
            inp.copy_within(used..filled, 0);
            filled -= used;
            if plain > 0 || self.eof || drained {
                self.read_again = !drained || (self.eof && plain > 0);
                break;
            }
            if filled == inp.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS record larger than the read buffer"));
            }
        }
        if filled > 0 {
            self.incoming = inp[..filled].to_vec();
        }
        // Handshake flights (and alerts) go out now; what the socket does not take
        // waits for the next writable event.
        self.flush_pending()?;
        match plain {
            0 if self.eof => Ok(0),
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    /// Runs rustls over the ciphertext at the front of `incoming`: decrypted records go
    /// to `out[*plain..]`, handshake records to `outgoing`. Returns how many bytes of
    /// `incoming` are done with.
    fn process(&mut self, incoming: &mut [u8], out: &mut [u8], plain: &mut usize) -> io::Result<usize> {
        let mut start = 0;
        loop {
            let status = self.conn.process_tls_records(&mut incoming[start..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    self.queue_alert();
                    let _ = self.flush_pending();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let payload = record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?.payload;
                        let end = *plain + payload.len();
                        let dest =
                            out.get_mut(*plain..end).ok_or_else(|| io::Error::other("TLS plaintext overflow"))?;
                        dest.copy_from_slice(payload);
                        *plain = end;
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut self.outgoing, |buf| data.encode(buf).map_err(encode_room))?;
                    true
                }
                // Queued in `outgoing`, sent in order after this.
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.eof = true;
                    false
                }
                // More bytes needed, or all of them processed.
                _ => false,
            };
            start += discard;
            if !more {
                return Ok(start);
            }
        }
    }

    /// After a TLS error rustls queues the fatal alert: encode it for a best-effort send.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode(&mut self.outgoing, |buf| data.encode(buf).map_err(encode_room)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                _ => return,
            }
        }
    }

    /// Writes queued ciphertext; `Ok(true)` once none is left.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        while self.sent < self.outgoing.len() {
            match self.socket.write(&self.outgoing[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Ok(true)
    }

    /// Encrypts from `slices` (up to `MAX_PLAIN_PER_WRITE`) and writes the records.
    /// Returns how many plaintext bytes were taken: all of them are on their way, in
    /// the socket or in `outgoing`, which a later write or flush sends first.
    /// `WouldBlock` while older ciphertext waits or the handshake is not done.
    pub fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.flush_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        CIPHER.with_borrow_mut(|cipher| {
            let (taken, made) = self.encrypt(slices, cipher)?;
            if !self.outgoing.is_empty() {
                // rustls' own records go first (rare: see `encrypt`).
                self.outgoing.extend_from_slice(&cipher[..made]);
                let _ = self.flush_pending();
                return Ok(taken);
            }
            let mut written = 0;
            while written < made {
                match self.socket.write(&cipher[written..made]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if taken == 0 => return Err(e),
                    // The plaintext is encrypted already: the next write meets the error.
                    Err(_) => break,
                }
            }
            self.outgoing.extend_from_slice(&cipher[written..made]);
            Ok(taken)
        })
    }

    /// Encrypts from `slices` into `cipher`; returns (plaintext taken, ciphertext made).
    fn encrypt(&mut self, slices: &[IoSlice<'_>], cipher: &mut Vec<u8>) -> io::Result<(usize, usize)> {
        // Whole records are processed on read, so only a partial one is left here; but
        // rustls may have a handshake message of its own to send first (a KeyUpdate once
        // a key has encrypted enough records): it goes to `outgoing`, ahead of these.
        let (mut traffic, discard) = loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            match status.state {
                Ok(ConnectionState::WriteTraffic(traffic)) => break (traffic, discard),
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut self.outgoing, |buf| data.encode(buf).map_err(encode_room))?
                }
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                // The handshake is not done (or we closed): nothing may be sent yet.
                Ok(_) => return Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            self.incoming.drain(..discard);
        };
        let mut gather = [0u8; MAX_RECORD];
        let (mut taken, mut made) = (0, 0);
        let mut parts = slices.iter().map(|s| &s[..]).filter(|s| !s.is_empty());
        let mut current: &[u8] = parts.next().unwrap_or_default();
        while !current.is_empty() && taken < MAX_PLAIN_PER_WRITE {
            let room = MAX_PLAIN_PER_WRITE - taken;
            let plaintext = if current.len() >= MAX_RECORD || current.len() >= room {
                // Large slices are encrypted where they are (rustls splits records).
                let (now, rest) = current.split_at(current.len().min(room));
                current = rest;
                now
            } else {
                // Small ones are gathered into one record.
                let mut len = 0;
                while !current.is_empty() && len < MAX_RECORD.min(room) {
                    let n = current.len().min(MAX_RECORD.min(room) - len);
                    gather[len..len + n].copy_from_slice(&current[..n]);
                    len += n;
                    current = &current[n..];
                    if current.is_empty() {
                        current = parts.next().unwrap_or_default();
                    }
                }
                &gather[..len]
            };
            let n = append_with(cipher, made, |buf| traffic.encrypt(plaintext, buf).map_err(encrypt_room))?;
            made += n;
            taken += plaintext.len();
            if current.is_empty() {
                current = parts.next().unwrap_or_default();
            }
        }
        self.incoming.drain(..discard);
        Ok((taken, made))
    }

    /// Queues our close_notify (once) and sends what is queued; then ends the TCP
    /// write side. `false` while ciphertext still waits for the socket.
    pub fn shutdown_write(&mut self) -> bool {
        if !self.closing {
            self.closing = true;
            if let Ok(ConnectionState::WriteTraffic(mut traffic)) =
                self.conn.process_tls_records(&mut self.incoming).state
            {
                let _ = encode(&mut self.outgoing, |buf| traffic.queue_close_notify(buf).map_err(encrypt_room));
            }
        }
        match self.flush_pending() {
            Ok(false) => false,
            _ => {
                let _ = self.socket.shutdown(Shutdown::Write);
                true
            }
        }
    }
}

/// A connection dropped with ciphertext still queued (the peer went away, or a
/// timeout): one last try, so that what it was sent is not cut short needlessly.
impl Drop for TlsStream {
    fn drop(&mut self) {
        let _ = self.flush_pending();
    }
}

/// Runs `make` on `buf[at..]`, growing `buf` to the room rustls asks for (`Err(Some(n))`);
/// returns the length of what it made.
fn append_with(
    buf: &mut Vec<u8>,
    at: usize,
    mut make: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<usize> {
    loop {
        match make(&mut buf[at..]) {
            Ok(n) => return Ok(n),
            Err(Some(required)) if buf.len() < at + required => buf.resize(at + required, 0),
            Err(_) => return Err(io::Error::other("TLS record could not be made")),
        }
    }
}

/// Appends a record to `outgoing`.
fn encode(outgoing: &mut Vec<u8>, make: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>) -> io::Result<()> {
    let at = outgoing.len();
    let made = append_with(outgoing, at, make);
    outgoing.truncate(at + *made.as_ref().unwrap_or(&0));
    made.map(drop)
}

fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        _ => None,
    }
}

fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        _ => None,
    }
}
