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

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::PrivateKeyDer;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// A certificate for 127.0.0.1 made by openssl (as compare.sh makes it), in a fresh folder.
    fn certificate(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("mioket-load-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (needed to make the test certificate)");
        assert!(status.success(), "openssl req failed");
        (cert, key)
    }

    /// A blocking rustls server on 127.0.0.1 that echoes `total` bytes of one client, then
    /// sends close_notify and closes.
    fn echo_server(cert: &PathBuf, key: &PathBuf, total: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let chain = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let Ok((sock, _)) = listener.accept() else { return };
            sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let (mut buf, mut echoed) = (vec![0u8; 70_000], 0);
            while echoed < total {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tls.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        echoed += n;
                    }
                }
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (addr, thread)
    }

    /// Sends `total` bytes through `write` and reads their echo through `read` on an
    /// edge-triggered mio loop that stops reading at a short read, as mioket-load does:
    /// if a short read left data behind, the echo would stall and the deadline fail it.
    fn echo_through(config: &Arc<ClientConfig>, addr: std::net::SocketAddr, total: usize) -> io::Result<Vec<u8>> {
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut sock = TcpStream::connect(addr)?;
        let mut tls = connect(config, "127.0.0.1")?;
        let mut poll = Poll::new()?;
        poll.registry().register(&mut sock, Token(0), Interest::READABLE | Interest::WRITABLE)?;
        let mut events = Events::with_capacity(8);
        let (mut sent, mut got, mut ended) = (0, Vec::new(), false);
        let mut buf = vec![0u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ended {
            assert!(Instant::now() < deadline, "stalled: sent {sent}, got {} of {total}", got.len());
            poll.poll(&mut events, Some(Duration::from_millis(500)))?;
            if events.is_empty() {
                continue; // nothing happened: no read, no write (edge-triggered, as mioket-load)
            }
            // As mioket-load: the end of stream that came with the data brings no new
            // edge, so then a short read does not mean drained.
            let hup = events.iter().any(|e| e.is_read_closed() || e.is_error());
            // Reads until a short read (drained) or WouldBlock.
            loop {
                match read(&mut tls, &mut sock, &mut buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if n < buf.len() && !hup {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            // Writes in pieces of up to 50,000 bytes until WouldBlock, then what rustls holds.
            while sent < total {
                match write(&mut tls, &mut sock, &data[sent..total.min(sent + 50_000)]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            match send_pending(&mut tls, &mut sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        assert!(got == data, "the echo differs ({} of {total} bytes)", got.len());
        Ok(got)
    }

    #[test]
    fn echoes_arrive_whole_through_tls_on_an_edge_triggered_loop() {
        let (cert, key) = certificate("echo");
        let total = 3 * 1024 * 1024 + 17;
        for ca in [None, Some(cert.to_str().unwrap())] {
            let (addr, server) = echo_server(&cert, &key, total);
            echo_through(&config(ca).unwrap(), addr, total).unwrap();
            server.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(cert.parent().unwrap());
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (cert, key) = certificate("served");
        let (other, _) = certificate("other");
        let (addr, server) = echo_server(&cert, &key, 1);
        let err = echo_through(&config(Some(other.to_str().unwrap())).unwrap(), addr, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        server.join().unwrap();
        for dir in [cert.parent().unwrap(), other.parent().unwrap()] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
