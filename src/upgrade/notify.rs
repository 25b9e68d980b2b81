//! systemd's notification protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines
//! to the socket named in `NOTIFY_SOCKET`. No crate: it is a `sendto`.

use std::io;
use std::os::unix::net::UnixDatagram;

use log::debug;

/// Tells systemd `state` (e.g. "READY=1", "MAINPID=1234\nREADY=1"); nothing without
/// `NOTIFY_SOCKET`. Failures are logged, never fatal: the server serves either way.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&path.to_string_lossy(), state) {
        debug!("systemd notify ({state:?}) failed: {e}");
    }
}

fn send(path: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    // '@': a Linux abstract socket name.
    match path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_arrives_as_one_datagram() {
        let dir = std::env::temp_dir().join(format!("mioket-notify-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "MAINPID=42\nREADY=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
