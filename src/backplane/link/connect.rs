//! Connecting to Redis through the `redis` crate: TCP or TLS (`rediss://`: rustls, the
//! system's roots or `--redis-ca`), AUTH (a password, or an ACL user and its password),
//! SELECT of the URL's database, TCP_NODELAY (a pipelined round trip must not wait for
//! Nagle), and our timeouts.

use std::io;

use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo, RedisError, RedisResult};

use super::{CONNECT_TIMEOUT, REPLY_TIMEOUT};
use crate::backplane::Settings;

/// A connection, set up. `resp3`: the subscription's (its messages come as pushes,
/// which the crate never takes for a late reply).
pub(super) fn connect(settings: &Settings, resp3: bool) -> RedisResult<redis::Connection> {
    let url = settings.url();
    let protocol = if resp3 { ProtocolVersion::RESP3 } else { ProtocolVersion::RESP2 };
    let mut redis =
        RedisConnectionInfo::default().set_db(i64::from(url.db)).set_protocol(protocol).set_skip_set_lib_name();
    if let Some(password) = &url.password {
        redis = redis.set_password(&password.0);
    }
    if let Some(user) = &url.user {
        redis = redis.set_username(user);
    }
    let addr = match url.tls {
        false => ConnectionAddr::Tcp(url.host.clone(), url.port),
        true => ConnectionAddr::TcpTls { host: url.host.clone(), port: url.port, insecure: false, tls_params: None },
    };
    let info = addr
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true))
        .set_redis_settings(redis);
    let client = match (&settings.ca, url.tls) {
        (Some(ca), true) => {
            let root_cert = std::fs::read(ca)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot read --redis-ca {}: {e}", ca.display())))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
            )?
        }
        _ => redis::Client::open(info)?,
    };
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(con)
}

/// Whether a failed connect means Redis is down or unreachable (start anyway, refuse
/// publishes, reconnect) rather than a Redis that answered and refused us or a
/// configuration that cannot work (a wrong password, a TLS failure: the process ends).
pub(super) fn merely_down(e: &RedisError, tls: bool) -> bool {
    if e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return true;
    }
    // Other I/O errors: unreachable hosts, names that do not resolve (yet), but with
    // TLS also a handshake that failed (rustls's errors come as I/O errors).
    e.kind() == redis::ErrorKind::Io && !tls
}
