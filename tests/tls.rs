//! TLS on the main port (--tls-cert/--tls-key), over real sockets: the real binary with a
//! certificate made at test time (rcgen), rustls as the client and tungstenite for
//! WebSocket over it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::{Message, WebSocket};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;
type Wss = WebSocket<TlsStream>;

/// A self-signed certificate for localhost and its key, as PEM files in a fresh folder.
struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("mioket-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
        let der = write_pair(&cert, &key);
        Certs { dir, cert, key, der }
    }

    fn args(&self) -> Vec<String> {
        vec!["--tls-cert".into(), path(&self.cert), "--tls-key".into(), path(&self.key)]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Writes a new certificate and key; returns the certificate.
fn write_pair(cert: &Path, key: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(cert, made.cert.pem()).unwrap();
    std::fs::write(key, made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// The real binary with TLS, on 127.0.0.1 port 0; waits for `listening on wss://`.
fn start(certs: &Certs, args: &[&str]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mioket"));
    command.args(["--host", "127.0.0.1", "--port", "0"]).args(certs.args()).args(args);
    let mut child =
        command.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start mioket");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        // Keep the pipe open (and drained) while the server runs.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("listening line");
    let addr = line.strip_prefix("listening on wss://").unwrap_or_else(|| panic!("bad line {line:?}"));
    Server { child, addr: addr.parse().unwrap() }
}

fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for der in roots {
        store.add((*der).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A finished TLS connection to the server, trusting `roots`.
fn tls_connect_with(server: &Server, config: ClientConfig) -> TlsStream {
    let socket = TcpStream::connect(server.addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
    }
    stream
}

fn tls_connect(server: &Server, certs: &Certs) -> TlsStream {
    tls_connect_with(server, client_config(&[&certs.der], rustls::DEFAULT_VERSIONS))
}

fn wss(server: &Server, certs: &Certs) -> Wss {
    let stream = tls_connect(server, certs);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let (ws, response) = tungstenite::client(url, stream).expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    ws
}

fn next_text(ws: &mut Wss) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// An HTTP/1.1 GET over TLS; the whole answer (the server closes after it).
fn https_get(server: &Server, certs: &Certs, target: &str) -> String {
    let mut stream = tls_connect(server, certs);
    write!(stream, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream.flush().unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server ends `socket` within `limit` (EOF or reset), reading what comes.
fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + limit;
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
        if Instant::now() > end {
            return false;
        }
    }
}

#[test]
fn wss_clients_chat_in_the_broadcast_room() {
    let certs = Certs::new("broadcast");
    let server = start(&certs, &[]);
    let mut alice = wss(&server, &certs);
    let mut bob = wss(&server, &certs);
    assert_eq!(next_text(&mut alice), WELCOME);
    assert_eq!(next_text(&mut bob), WELCOME);
    for i in 0..50 {
        alice.send(Message::text(format!("hello {i}"))).unwrap();
    }
    for i in 0..50 {
        assert_eq!(next_text(&mut alice), format!("hello {i}"));
        assert_eq!(next_text(&mut bob), format!("hello {i}"));
    }
    // A late joiner gets the history, decrypted from the same shared frames.
    let mut carol = wss(&server, &certs);
    assert_eq!(next_text(&mut carol), WELCOME);
    assert_eq!(next_text(&mut carol), "hello 0");
    alice.close(None).unwrap();
}

#[test]
fn wss_echo_of_small_and_large_messages_arrives_whole() {
    let certs = Certs::new("echo");
    let server = start(&certs, &["--mode", "echo", "--max-message", "8388608"]);
    let mut ws = wss(&server, &certs);
    // Many small ones in one go (they share records), then large ones (many records,
    // more than the socket takes at once: the rest waits as ciphertext).
    for i in 0..200 {
        ws.write(Message::text(format!("small {i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..200 {
        assert_eq!(next_text(&mut ws), format!("small {i}"));
    }
    for size in [16 * 1024 - 1, 16 * 1024, 100_000, 3 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(payload.clone())).unwrap();
        match ws.read().unwrap() {
            Message::Binary(got) => assert!(got[..] == payload[..], "echo of {size} bytes differs"),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    ws.close(None).unwrap();
    // The closing handshake completes over TLS: our close, then the end of the stream.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
}

#[test]
fn https_serves_the_pages_and_health_and_negotiates_http_1_1() {
    let certs = Certs::new("https");
    let server = start(&certs, &[]);
    let page = https_get(&server, &certs, "/");
    assert!(page.starts_with("HTTP/1.1 200 "), "{page:.200}");
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"), "{page:.300}");
    let health = https_get(&server, &certs, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 ") && health.ends_with("ok\n"), "{health}");
    let metrics = https_get(&server, &certs, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 "), "{metrics:.200}");
    let stream = tls_connect(&server, &certs);
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn tls_1_2_and_1_3_both_work() {
    let certs = Certs::new("versions");
    let server = start(&certs, &["--mode", "echo"]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let stream = tls_connect_with(&server, client_config(&[&certs.der], &[version]));
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        let url = format!("wss://localhost:{}/", server.addr.port());
        let (mut ws, _) = tungstenite::client(url, stream).unwrap();
        ws.send(Message::text("over tls")).unwrap();
        assert_eq!(next_text(&mut ws), "over tls");
    }
}

#[test]
fn plain_http_and_garbage_on_the_tls_port_are_dropped_and_the_server_goes_on() {
    let certs = Certs::new("garbage");
    let server = start(&certs, &[]);
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.write_all(UPGRADE.as_bytes()).unwrap();
    assert!(closed_within(&mut plain, Duration::from_secs(5)), "plain HTTP not dropped");
    let mut garbage = TcpStream::connect(server.addr).unwrap();
    let bytes: Vec<u8> = (0..2000u32).map(|i| (i * 131 % 256) as u8).collect();
    let _ = garbage.write_all(&bytes);
    assert!(closed_within(&mut garbage, Duration::from_secs(5)), "garbage not dropped");
    // A record header that announces more than TLS allows.
    let mut huge = TcpStream::connect(server.addr).unwrap();
    huge.write_all(&[22, 3, 1, 0xff, 0xff]).unwrap();
    assert!(closed_within(&mut huge, Duration::from_secs(5)), "oversized record not dropped");
    let mut ws = wss(&server, &certs);
    assert_eq!(next_text(&mut ws), WELCOME);
}

/// The first bytes a TLS client sends (its ClientHello).
fn client_hello(certs: &Certs) -> Vec<u8> {
    let config = Arc::new(client_config(&[&certs.der], rustls::DEFAULT_VERSIONS));
    let mut conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn a_stalled_tls_handshake_is_dropped_at_the_handshake_timeout() {
    let certs = Certs::new("slowloris");
    let server = start(&certs, &["--handshake-timeout", "0.5"]);
    let hello = client_hello(&certs);
    let started = Instant::now();
    // One that says nothing, one that stops mid-ClientHello, one that drips it.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial.write_all(&hello[..hello.len() / 2]).unwrap();
    let mut drip = TcpStream::connect(server.addr).unwrap();
    for byte in &hello[..hello.len() - 1] {
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
        if drip.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, socket) in [("silent", &mut silent), ("partial", &mut partial), ("drip", &mut drip)] {
        assert!(closed_within(socket, Duration::from_secs(5)), "{name} not dropped");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // A finished TLS handshake without an HTTP request is a stall too.
    let mut idle = tls_connect(&server, &certs);
    let mut buf = [0u8; 16];
    let t = Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "no answer expected");
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn sighup(server: &Server) {
    let status = Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The certificate the server presents to a new connection.
fn served_cert(server: &Server, roots: &[&CertificateDer<'static>]) -> CertificateDer<'static> {
    let stream = tls_connect_with(server, client_config(roots, rustls::DEFAULT_VERSIONS));
    stream.conn.peer_certificates().unwrap()[0].clone()
}

#[test]
fn sighup_reloads_the_certificate_and_open_connections_go_on() {
    let certs = Certs::new("reload");
    let mut server = start(&certs, &["--mode", "echo"]);
    let old = certs.der.clone();
    let mut ws = wss(&server, &certs);
    ws.send(Message::text("before")).unwrap();
    assert_eq!(next_text(&mut ws), "before");

    // A renewal: new files at the same paths, then SIGHUP.
    let new = write_pair(&certs.cert, &certs.key);
    sighup(&server);
    let served = wait_until(Duration::from_secs(5), || {
        let served = served_cert(&server, &[&old, &new]);
        (served == new).then_some(served)
    });
    assert!(served.is_some(), "new connections should get the new certificate");
    ws.send(Message::text("after")).unwrap();
    assert_eq!(next_text(&mut ws), "after", "the open connection goes on with its session");

    // A broken renewal keeps the pair in use.
    std::fs::write(&certs.cert, "not a certificate\n").unwrap();
    sighup(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.child.try_wait().unwrap().is_none(), "a failed reload must not stop the server");
    assert_eq!(served_cert(&server, &[&old, &new]), new);
    // A key that does not match the certificate is refused too.
    let other = Certs::new("reload-other");
    std::fs::copy(&other.cert, &certs.cert).unwrap();
    sighup(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_cert(&server, &[&old, &new]), new);
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut ws), "still here");
    // Gone before the stop, so the server need not wait out its close timeout (10 s,
    // as long as the wait below) for a close reply this test would never send.
    drop(ws);
    assert!(server.signal_and_wait("-TERM", Duration::from_secs(10)).is_some());
}

#[test]
fn bad_certificate_or_key_files_exit_2_with_one_line() {
    let certs = Certs::new("bad");
    let other = Certs::new("bad-other");
    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").unwrap();
    let empty = certs.dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = certs.dir.join("missing.pem");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("missing cert", vec!["--tls-cert".into(), path(&missing), "--tls-key".into(), path(&certs.key)]),
        ("missing key", vec!["--tls-cert".into(), path(&certs.cert), "--tls-key".into(), path(&missing)]),
        ("garbage cert", vec!["--tls-cert".into(), path(&garbage), "--tls-key".into(), path(&certs.key)]),
        ("empty cert", vec!["--tls-cert".into(), path(&empty), "--tls-key".into(), path(&certs.key)]),
        ("key as cert", vec!["--tls-cert".into(), path(&certs.key), "--tls-key".into(), path(&certs.key)]),
        ("cert as key", vec!["--tls-cert".into(), path(&certs.cert), "--tls-key".into(), path(&certs.cert)]),
        ("mismatched key", vec!["--tls-cert".into(), path(&certs.cert), "--tls-key".into(), path(&other.key)]),
        ("cert without key", vec!["--tls-cert".into(), path(&certs.cert)]),
        ("key without cert", vec!["--tls-key".into(), path(&certs.key)]),
    ];
    for (name, args) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_mioket"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mioket:")).collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: no listening line");
    }
}

/// A v1 client over TLS on `path`.
fn wss_v1(server: &Server, certs: &Certs, path: &str) -> Wss {
    use tungstenite::client::IntoClientRequest;
    let stream = tls_connect(server, certs);
    let mut request = format!("wss://localhost:{}{path}", server.addr.port()).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mioket.v1".parse().unwrap());
    let (ws, response) = tungstenite::client(request, stream).expect("WebSocket handshake over TLS");
    assert_eq!(response.headers().get("Sec-WebSocket-Protocol").unwrap(), "mioket.v1");
    ws
}

/// The next envelope that is not presence.
fn next_envelope(ws: &mut Wss) -> serde_json::Value {
    loop {
        let v: serde_json::Value = serde_json::from_str(&next_text(ws)).unwrap();
        if v["type"] != "presence" {
            return v;
        }
    }
}

/// The close code the server ends `ws` with (what came before it is skipped).
fn close_code(ws: &mut Wss) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map_or(1005, |f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// A binary upgrade cannot move a TLS connection (its keys stay in the old process;
/// no kernel TLS): it is closed with 1012 (Service Restart) after what was queued for
/// it, and a mioket.v1 client resumes on the new process with recovered:true, since
/// the rooms moved.
#[test]
fn an_upgrade_closes_wss_clients_with_1012_and_v1_clients_resume_recovered() {
    let certs = Certs::new("upgrade");
    let mut server = start(&certs, &[]);
    let mut v1 = wss_v1(&server, &certs, "/lobby");
    let welcome = next_envelope(&mut v1);
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let mut plain = wss(&server, &certs);
    assert_eq!(next_text(&mut plain), WELCOME);
    v1.send(Message::text(r#"{"op":"publish","data":"before the upgrade"}"#)).unwrap();
    assert_eq!(next_envelope(&mut v1)["seq"], 1);
    let upgrade = Command::new(env!("CARGO_BIN_EXE_mioket"))
        .args(["upgrade", "--pid", &server.child.id().to_string()])
        .output()
        .unwrap();
    assert!(upgrade.status.success(), "{upgrade:?}");
    let stdout = String::from_utf8_lossy(&upgrade.stdout);
    let new_pid = stdout.trim().rsplit(' ').next().unwrap().to_string();
    let successor = Successor(new_pid);
    assert_eq!(close_code(&mut v1), 1012);
    assert_eq!(close_code(&mut plain), 1012);
    drop((v1, plain));
    assert!(server.child.wait().unwrap().success(), "the old process exits once they are closed");
    let mut resumed = wss_v1(&server, &certs, &format!("/lobby?since=0&epoch={epoch}"));
    let welcome = next_envelope(&mut resumed);
    assert_eq!((&welcome["recovered"], &welcome["seq"]), (&serde_json::json!(true), &serde_json::json!(1)));
    assert_eq!(next_envelope(&mut resumed)["data"], "before the upgrade");
    drop(successor);
}

/// Kills the process that took over at the end of the test (it is no child of ours).
struct Successor(String);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.0]).status();
    }
}
