//! The Unix socket between the old process and the new one: length-prefixed messages,
//! each with up to `MAX_FDS` file descriptors beside it (`SCM_RIGHTS`). Blocking,
//! with the timeouts the socket is given; no process is started here, so the tests
//! drive both ends of a `UnixStream::pair` in one process.
//!
//! A message is a 6-byte header (kind, fd count, body length as u32 little-endian)
//! and its body. The descriptors are sent with the message's first byte; the kernel
//! hands them to the `recvmsg` that reads that byte, so the reader keeps what arrives
//! in a queue and takes each message's count from it, in order.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Descriptors in one message: the kernel takes at most 253 (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 250;
/// Bytes in one message's body: a longer snapshot travels in several.
pub const MAX_BODY: usize = 1 << 20;
const HEADER_LEN: usize = 6;
/// Descriptors received but not yet claimed by a message: more is a peer's garbage.
const MAX_QUEUED_FDS: usize = 2 * MAX_FDS;

/// What a message is (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// New to old: the snapshot format it reads, and its pid.
    Hello = 1,
    /// Old to new: the snapshot's format version, its length and how many connections.
    Begin = 2,
    /// Old to new: the listening sockets (body: one role byte per descriptor).
    Listeners = 3,
    /// Old to new: a piece of the snapshot's bytes.
    Snapshot = 4,
    /// Old to new: connections' sockets, in the snapshot's order (no body).
    Connections = 5,
    /// Old to new: all sent.
    Done = 6,
    /// New to old: serving; the old one may go.
    Confirm = 7,
    /// Either way: giving up (body: why, UTF-8).
    Abort = 8,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Begin,
            3 => Kind::Listeners,
            4 => Kind::Snapshot,
            5 => Kind::Connections,
            6 => Kind::Done,
            7 => Kind::Confirm,
            8 => Kind::Abort,
            _ => return None,
        })
    }
}

/// One message as received.
#[derive(Debug)]
pub struct Message {
    pub kind: Kind,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Why the exchange failed.
#[derive(Debug)]
pub enum ChannelError {
    /// The peer closed its end (it exited, or gave up).
    Closed,
    /// No message within the socket's timeout.
    Timeout,
    /// The peer broke the format.
    Garbage(String),
    Io(io::Error),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Closed => f.write_str("the other process closed the channel"),
            ChannelError::Timeout => f.write_str("timed out"),
            ChannelError::Garbage(why) => write!(f, "bad message: {why}"),
            ChannelError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> ChannelError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ChannelError::Timeout,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                ChannelError::Closed
            }
            _ => ChannelError::Io(e),
        }
    }
}

pub struct Channel {
    stream: UnixStream,
    /// Descriptors received, not yet claimed by a message.
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Channel {
        Channel { stream, fds: VecDeque::new() }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one message. The caller keeps the descriptors: the kernel duplicates them.
    pub fn send(&mut self, kind: Kind, body: &[u8], fds: &[RawFd]) -> Result<(), ChannelError> {
        if body.len() > MAX_BODY || fds.len() > MAX_FDS {
            return Err(ChannelError::Garbage(format!("{kind:?} too large to send")));
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.push(kind as u8);
        bytes.push(fds.len() as u8);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body);
        let mut sent = send_with_fds(&self.stream, &bytes, fds)?;
        // The descriptors went with the first bytes; the rest is plain.
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one message; the socket's read timeout bounds each wait.
    pub fn recv(&mut self) -> Result<Message, ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(&mut header)?;
        let kind = Kind::from_byte(header[0]).ok_or_else(|| garbage(format!("unknown kind {}", header[0])))?;
        let count = usize::from(header[1]);
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if count > MAX_FDS {
            return Err(garbage(format!("{count} descriptors in one message")));
        }
        // Limits before allocation.
        if len > MAX_BODY {
            return Err(garbage(format!("a body of {len} bytes")));
        }
        let mut body = vec![0; len];
        self.read_exact(&mut body)?;
        if self.fds.len() < count {
            return Err(garbage(format!("{count} descriptors announced, {} arrived", self.fds.len())));
        }
        let fds = self.fds.drain(..count).collect();
        Ok(Message { kind, body, fds })
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ChannelError> {
        while !buf.is_empty() {
            match recv_with_fds(&self.stream, buf, &mut self.fds) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            if self.fds.len() > MAX_QUEUED_FDS {
                return Err(garbage(format!("{} descriptors not announced", self.fds.len())));
            }
        }
        Ok(())
    }
}

fn garbage(why: String) -> ChannelError {
    ChannelError::Garbage(why)
}

/// Room for `MAX_FDS + 3` descriptors' control message (a few more than we send, so
/// a peer that sends up to the kernel's 253 is seen, not cut short), 8-aligned.
const CMSG_SPACE: usize = 1024;

#[repr(C, align(8))]
struct ControlBuf([u8; CMSG_SPACE]);

/// One `sendmsg` of `bytes` with `fds` as `SCM_RIGHTS`; returns the bytes sent.
#[allow(unsafe_code)]
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = ControlBuf([0; CMSG_SPACE]);
    // SAFETY: msghdr is plain data; every pointer set below points into locals that
    // outlive the sendmsg call, and the control message is written within
    // `control` (CMSG_SPACE of MAX_FDS descriptors is far below its 1024 bytes, and
    // `send` refuses more than MAX_FDS).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg) as *mut RawFd, fds.len());
        }
        loop {
            let n = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// One `recvmsg` into `buf`; descriptors that came with the bytes join `fds` (close
/// on exec). Control data cut short (more descriptors than room) is an error: a
/// descriptor would be lost.
#[allow(unsafe_code)]
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut control = ControlBuf([0; CMSG_SPACE]);
    // SAFETY: as in `send_with_fds`; the kernel writes at most msg_controllen bytes of
    // control data into `control`, and the CMSG_* walk stays within what it wrote.
    // Each descriptor in an SCM_RIGHTS message is new in this process and ours to own.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = CMSG_SPACE as _;
        let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let header = data as usize - cmsg as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push_back(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("descriptors cut short (MSG_CTRUNC)"));
        }
        Ok(n as usize)
    }
}

/// A test's hostile peer: a message that claims none of the descriptors sent with it.
#[cfg(test)]
pub(crate) fn send_unannounced(chan: &mut Channel, fds: &[RawFd]) {
    let sent = send_with_fds(&chan.stream, &[Kind::Done as u8, 0, 0, 0, 0, 0], fds).unwrap();
    assert_eq!(sent, HEADER_LEN);
}
