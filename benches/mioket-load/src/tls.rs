//! TLS for `--url wss://...`: a rustls client (ring provider, TLS 1.2 and 1.3) over the
//! same non-blocking mio sockets. Without `--tls-ca` the server's certificate is not
//! checked (the handshake signatures still are): a benchmark of our own servers on
//! loopback. With `--tls-ca FILE` it is checked against that PEM file, for the URL's host.
//!
//! `read` and `write` keep the plain socket's contract the loop relies on: a read shorter
//! than the buffer means the socket is drained (it returns once the socket would block or
//! ended, never after just one record), and a write is refused with `WouldBlock` while
//! earlier ciphertext is still waiting for the socket, so rustls never holds more than
//! one write's worth. What rustls sends by itself (the handshake, alerts) goes out with
//! the next read or write, or with `send_pending` on a writable event.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS errors so far: the first few are printed.
static TLS_ERRORS: AtomicU32 = AtomicU32::new(0);

/// A client configuration: checking against the CA in `ca` (PEM), or not checking the
/// certificate at all.
pub fn config(ca: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match ca {
        Some(file) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(file).map_err(|e| format!("--tls-ca {file}: {e}"))? {
                roots
                    .add(cert.map_err(|e| format!("--tls-ca {file}: {e}"))?)
                    .map_err(|e| format!("--tls-ca {file}: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A new client session for `host` (the URL's host: a name or an IP address).
pub fn connect(config: &Arc<ClientConfig>, host: &str) -> io::Result<ClientConnection> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)
}

/// Writes what rustls has to send; `WouldBlock` if the socket would not take all of it.
pub fn send_pending(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Like `sock.read(buf)`: plaintext, `Ok(0)` at the end, `WouldBlock` when there is none
/// yet; short only when the socket is drained or ended.
pub fn read(tls: &mut ClientConnection, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    loop {
        match tls.reader().read(&mut buf[filled..]) {
            // The peer's close_notify: the end, after what was read.
            Ok(0) => return Ok(filled),
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    return Ok(filled);
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if filled > 0 => {
                let _ = e; // the end without close_notify: reported by the next read
                return Ok(filled);
            }
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => {
                // The socket ended: what rustls still holds is read above, then its
                // error (no close_notify) or Ok(0) ends the stream.
                if filled > 0 {
                    return Ok(filled);
                }
                return match tls.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    let _ = send_pending(tls, sock); // the alert, if it can go
                    if TLS_ERRORS.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("mioket-load: TLS: {e}");
                    }
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                match send_pending(tls, sock) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
            Err(e) => return Err(e),
        }
    }
}

/// Like `sock.write(buf)`: `WouldBlock` while earlier ciphertext waits for the socket;
/// otherwise encrypts up to what rustls takes (all of it, once the handshake is done)
/// and sends as much as the socket takes.
pub fn write(tls: &mut ClientConnection, sock: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    send_pending(tls, sock)?;
    let n = tls.writer().write(buf)?;
    if n == 0 && !buf.is_empty() {
        // rustls holds plaintext until the handshake is done, up to its limit.
        return Err(io::ErrorKind::WouldBlock.into());
    }
    match send_pending(tls, sock) {
        Ok(()) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        Err(e) => Err(e),
    }
}

/// Accepts any certificate; checks the handshake's signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
