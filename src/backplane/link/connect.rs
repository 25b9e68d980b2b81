//! Connecting to Redis through the `redis` crate: TCP, TCP_NODELAY (a pipelined
//! round trip must not wait for Nagle), SELECT of the URL's database, and our timeouts.

use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo, RedisResult};

use super::{CONNECT_TIMEOUT, REPLY_TIMEOUT};
use crate::backplane::Settings;

/// A connection, set up. `resp3`: the subscription's (its messages come as pushes,
/// which the crate never takes for a late reply).
pub(super) fn connect(settings: &Settings, resp3: bool) -> RedisResult<redis::Connection> {
    let url = &settings.url;
    let protocol = if resp3 { ProtocolVersion::RESP3 } else { ProtocolVersion::RESP2 };
    let redis = RedisConnectionInfo::default().set_db(i64::from(url.db)).set_protocol(protocol).set_skip_set_lib_name();
    let info = ConnectionAddr::Tcp(url.host.clone(), url.port)
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true))
        .set_redis_settings(redis);
    let con = redis::Client::open(info)?.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(con)
}
