//! tt-server over TLS: the same tokio-tungstenite echo, broadcast and rooms servers on one
//! current-thread runtime, each connection a tokio-rustls stream (rustls 0.23 with the
//! ring provider, TLS 1.2 and 1.3, ALPN http/1.1, as mioket's --tls-cert/--tls-key).
//!
//!     tt-tls-server --mode echo|broadcast|rooms --port N --tls-cert FILE --tls-key FILE
//!
//! Binds 127.0.0.1 only and prints `listening on wss://127.0.0.1:PORT`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use mioket_peers::tt::{broadcast_client, echo, room_client};
use mioket_peers::{Mode, Rooms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    mode: Mode,
    addr: SocketAddr,
    cert: String,
    key: String,
}

fn args() -> Args {
    let (mut mode, mut port, mut cert, mut key) = (Mode::Echo, 0u16, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--mode", Some(m)) if m == "echo" => mode = Mode::Echo,
            ("--mode", Some(m)) if m == "broadcast" => mode = Mode::Broadcast,
            ("--mode", Some(m)) if m == "rooms" => mode = Mode::Rooms,
            ("--port", Some(p)) => port = p.parse().expect("--port N"),
            ("--tls-cert", Some(f)) => cert = Some(f),
            ("--tls-key", Some(f)) => key = Some(f),
            _ => usage(),
        }
    }
    let (Some(cert), Some(key)) = (cert, key) else { usage() };
    Args { mode, addr: SocketAddr::from(([127, 0, 0, 1], port)), cert, key }
}

fn usage() -> ! {
    eprintln!("usage: tt-tls-server [--mode echo|broadcast|rooms] [--port N] --tls-cert FILE --tls-key FILE");
    std::process::exit(2);
}

fn acceptor(cert: &str, key: &str) -> TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).and_then(|certs| certs.collect()).expect("--tls-cert: PEM certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("--tls-key: a PEM private key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

fn main() {
    let args = args();
    let acceptor = acceptor(&args.cert, &args.key);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await.unwrap();
        println!("listening on wss://{}", listener.local_addr().unwrap());
        let _ = std::io::stdout().flush();
        let (tx, _) = broadcast::channel::<Message>(4096);
        let rooms = Rooms::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx, rooms) = (acceptor.clone(), tx.clone(), rooms.clone());
            let mode = args.mode;
            tokio::spawn(async move {
                // The TLS handshake in the connection's own task, as tokio-rustls' examples do.
                let Ok(stream) = acceptor.accept::<TcpStream>(stream).await else { return };
                match mode {
                    Mode::Echo => echo(stream).await,
                    Mode::Broadcast => broadcast_client(stream, tx).await,
                    Mode::Rooms => room_client(stream, rooms).await,
                }
            });
        }
    });
}
