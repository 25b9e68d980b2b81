//! A TCP relay for fault tests: listens on 127.0.0.1 port 0 and relays each connection
//! to a target. It can be told to stall the connections open at that moment (both
//! sockets stay open, nothing is forwarded: a network fault that sends no reset),
//! to resume them, or to cut them; connections made after a stall are relayed as usual.
//! Stopped (every connection closed) when dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Connections are numbered as they come.
    next: AtomicU64,
    /// Connections numbered below this are stalled.
    stalled_below: AtomicU64,
    /// Connections numbered below this are cut.
    cut_below: AtomicU64,
    done: AtomicBool,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            while !s.done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(target) else { continue };
                        let n = s.next.fetch_add(1, Ordering::SeqCst);
                        client.set_nonblocking(false).unwrap();
                        for (from, to) in [(&client, &server), (&server, &client)] {
                            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                            let s = Arc::clone(&s);
                            std::thread::spawn(move || pump(n, from, to, &s));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            }
        });
        Proxy { addr, shared }
    }

    /// The URL of a Redis behind this proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Stops forwarding on every connection open now; both sockets stay open.
    pub fn stall(&self) {
        let next = self.shared.next.load(Ordering::SeqCst);
        self.shared.stalled_below.store(next, Ordering::SeqCst);
    }

    /// Forwards again on every connection.
    pub fn resume(&self) {
        self.shared.stalled_below.store(0, Ordering::SeqCst);
    }

    /// Closes every connection open now (both sides see the end).
    pub fn cut(&self) {
        let next = self.shared.next.load(Ordering::SeqCst);
        self.shared.cut_below.store(next, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pump(n: u64, mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if n < shared.cut_below.load(Ordering::SeqCst) || shared.done.load(Ordering::SeqCst) {
            break;
        }
        if n < shared.stalled_below.load(Ordering::SeqCst) {
            // Nothing read: what is sent piles up in the kernel's buffers.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(len) => {
                // A read that was under way when the stall began is held too.
                while n < shared.stalled_below.load(Ordering::SeqCst) && n >= shared.cut_below.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if n < shared.cut_below.load(Ordering::SeqCst) || to.write_all(&buf[..len]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
