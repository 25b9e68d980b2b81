//! The application in virtual time: bytes in, decisions and bytes out, no sockets.
