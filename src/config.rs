//! Configuration: plain data with the documented defaults, and the command line parser.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// What the server does with a message it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every message goes to every open client, the sender included.
    Broadcast,
    /// Every message goes back to its sender only.
    Echo,
}

/// permessage-deflate (RFC 7692).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeflateMode {
    /// Accept offers; each message compressed once, the same frame to every
    /// recipient (no context takeover, no compressor per connection).
    Shared,
    /// Decline every offer.
    Off,
}

/// The limits and timers every connection obeys. Passed by reference to the
/// protocol core so that no connection carries its own copy.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Largest message, counted over all its fragments (close 1009 beyond it).
    pub max_message: usize,
    /// Most fragments in one message (close 1009 beyond it): floods of tiny or
    /// empty fragments cost CPU even when they cost no memory.
    pub max_fragments: u32,
    /// Queued outgoing bytes beyond which a client is a slow consumer (close 1008).
    pub max_backpressure: usize,
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Option<Duration>,
    pub handshake_timeout: Option<Duration>,
    pub close_timeout: Option<Duration>,
    /// Accepted `Origin` values; empty accepts any Origin.
    pub allowed_origins: Vec<String>,
}

impl Limits {
    /// The fragment limit that goes with a message limit: one fragment per 16 bytes
    /// of the limit, plus some slack for small limits.
    pub fn fragments_for(max_message: usize) -> u32 {
        u32::try_from(max_message / 16 + 1024).unwrap_or(u32::MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 1 << 20,
            max_fragments: Limits::fragments_for(1 << 20),
            max_backpressure: 4 << 20,
            ping_interval: Some(Duration::from_secs(10)),
            ping_timeout: Some(Duration::from_secs(5)),
            handshake_timeout: Some(Duration::from_secs(10)),
            close_timeout: Some(Duration::from_secs(10)),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub mode: Mode,
    /// Text sent to every new client first; `None` sends nothing.
    pub welcome: Option<String>,
    /// How many recent messages are replayed to a new client.
    pub history: usize,
    /// Open WebSocket connections beyond which new upgrades get 503.
    pub max_connections: usize,
    /// Serve /metrics and /healthz on this address instead of the main port.
    pub metrics_listen: Option<String>,
    pub limits: Limits,
    /// Bytes all rooms' histories keep together.
    pub history_memory: usize,
    /// Bytes all connections may hold in unfinished messages and request bodies
    /// together; beyond it the largest holder is refused.
    pub max_unfinished_memory: usize,
    /// How long a room without members is kept.
    pub room_ttl: Duration,
    pub max_rooms: usize,
    pub max_rooms_per_connection: usize,
    /// New rooms one mioket.v1 connection may make by `join` in a second.
    pub rooms_per_second: usize,
    /// The bearer token of the HTTP API; `None` turns the API off.
    pub api_token: Option<String>,
    pub deflate: DeflateMode,
    /// Messages shorter than this go uncompressed (they barely shrink alone).
    pub deflate_min_size: usize,
    /// SO_SNDBUF of the main port's connections: bounds the kernel memory a client
    /// that does not read can pin (Linux doubles it); 0 leaves the kernel's autotuning.
    pub send_buffer: usize,
    /// TLS (wss:// and https:// on the main port): a PEM certificate chain and its key,
    /// both or neither; SIGHUP reloads them.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The Redis backplane: rooms shared with other mioket processes (src/backplane.rs).
    pub redis: Option<crate::backplane::RedisUrl>,
    /// Messages at most waiting for Redis on this node; beyond it publishes are refused.
    pub redis_outbox: usize,
    /// Payload bytes at most waiting for Redis on this node; beyond it publishes are refused.
    pub redis_outbox_bytes: usize,
    /// SO_REUSEPORT on the main port: several processes listen on one port.
    pub reuse_port: bool,
}

impl Config {
    /// The effective configuration on one line, for the start-up log.
    pub fn summary(&self) -> String {
        let secs = |d: Option<Duration>| d.map_or("off".to_string(), |d| format!("{}s", d.as_secs_f64()));
        let l = &self.limits;
        format!(
            "mode={} history={} welcome={:?} ping-interval={} ping-timeout={} max-message={} max-connections={} \
             max-backpressure={} handshake-timeout={} close-timeout={} allowed-origins={:?} metrics-listen={} \
             history-memory={} max-unfinished-memory={} room-ttl={} max-rooms={} max-rooms-per-connection={} \
             rooms-per-second={} api={} deflate={} deflate-min-size={} send-buffer={} redis={} redis-outbox={} \
             redis-outbox-bytes={} reuse-port={}",
            if self.mode == Mode::Broadcast { "broadcast" } else { "echo" },
            self.history,
            self.welcome.as_deref().unwrap_or(""),
            secs(l.ping_interval),
            secs(l.ping_timeout),
            l.max_message,
            self.max_connections,
            l.max_backpressure,
            secs(l.handshake_timeout),
            secs(l.close_timeout),
            l.allowed_origins,
            self.metrics_listen.as_deref().unwrap_or("main port"),
            self.history_memory,
            self.max_unfinished_memory,
            secs(Some(self.room_ttl)),
            self.max_rooms,
            self.max_rooms_per_connection,
            self.rooms_per_second,
            if self.api_token.is_some() { "on" } else { "off" },
            if self.deflate == DeflateMode::Shared { "shared" } else { "off" },
            self.deflate_min_size,
            self.send_buffer,
            self.redis.as_ref().map_or("off".to_string(), |r| r.to_string()),
            self.redis_outbox,
            self.redis_outbox_bytes,
            self.reuse_port,
        )
    }
}

pub const DEFAULT_WELCOME: &str = "Welcome! You're now in the broadcast room.";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HISTORY_MEMORY: usize = 64 << 20;
pub const DEFAULT_MAX_UNFINISHED_MEMORY: usize = 64 << 20;
pub const DEFAULT_MAX_ROOMS: usize = 100_000;
pub const DEFAULT_ROOMS_PER_SECOND: usize = 100;
pub const DEFAULT_REDIS_OUTBOX: usize = 4096;
pub const DEFAULT_REDIS_OUTBOX_BYTES: usize = 64 << 20;
/// Chosen by measurement (benches/micro.rs, deflate group): below this a message alone
/// saves too few bytes for its CPU.
pub const DEFAULT_DEFLATE_MIN_SIZE: usize = 256;
/// Linux doubles it: 256 KiB of kernel send queue per connection at most, where
/// autotuning let a client that does not read pin up to tcp_wmem's 4 MiB. Chosen by
/// measurement (README, Limits): no echo or broadcast figure gets worse.
pub const DEFAULT_SEND_BUFFER: usize = 128 << 10;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8765,
            mode: Mode::Broadcast,
            welcome: Some(DEFAULT_WELCOME.into()),
            history: 100,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            metrics_listen: None,
            limits: Limits::default(),
            history_memory: DEFAULT_HISTORY_MEMORY,
            max_unfinished_memory: DEFAULT_MAX_UNFINISHED_MEMORY,
            room_ttl: Duration::from_secs(300),
            max_rooms: DEFAULT_MAX_ROOMS,
            max_rooms_per_connection: 64,
            rooms_per_second: DEFAULT_ROOMS_PER_SECOND,
            api_token: None,
            deflate: DeflateMode::Shared,
            deflate_min_size: DEFAULT_DEFLATE_MIN_SIZE,
            send_buffer: DEFAULT_SEND_BUFFER,
            tls_cert: None,
            tls_key: None,
            redis: None,
            redis_outbox: DEFAULT_REDIS_OUTBOX,
            redis_outbox_bytes: DEFAULT_REDIS_OUTBOX_BYTES,
            reuse_port: false,
        }
    }
}

/// The command line as clap sees it; `parse_args` turns it into a `Config`.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "mioket: a WebSocket server (RFC 6455) on one mio event loop",
    after_help = "SECS may be fractional (0.5). Logs go to stderr; RUST_LOG sets the level [default: info].",
    // As before clap: a repeated flag's last value wins (clap 4 would refuse the repeat),
    // and a value may start with '-' (a welcome text such as "-- hi --").
    args_override_self = true,
    allow_hyphen_values = true,
    // Wrap to the terminal, and to 100 columns when there is none (a pipe).
    max_term_width = 100
)]
struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one
    #[arg(long, default_value_t = 8765)]
    port: u16,
    /// What to do with a message: broadcast it to every client, or echo it back to its sender
    #[arg(long, value_name = "broadcast|echo", default_value = "broadcast", hide_possible_values = true)]
    mode: Mode,
    // No clap default: the defaults of --welcome and --history depend on --mode.
    #[arg(long, value_name = "TEXT", help = format!(
        "Text message sent to each new client; '' sends none \
         [default: {DEFAULT_WELCOME:?} in broadcast mode, none in echo mode]"
    ))]
    welcome: Option<String>,
    /// Recent messages each room keeps and replays to new clients, after the welcome [default: 100 in broadcast mode, 0 in echo mode]
    #[arg(long, value_name = "N")]
    history: Option<usize>,
    /// Bytes all rooms' histories keep together; beyond it the oldest messages of the least recently used rooms go first
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_HISTORY_MEMORY)]
    history_memory: usize,
    /// Bytes all connections may hold in unfinished messages and request bodies together; beyond it the largest holder is refused (1013 or 503)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_UNFINISHED_MEMORY, value_parser = positive)]
    max_unfinished_memory: usize,
    /// Keep a room without members this long (so clients can resume), then free it
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds)]
    room_ttl: std::option::Option<Duration>,
    /// Rooms at most; when full, a new room frees the empty room emptied longest ago, and with none an upgrade that would create one more gets 503
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ROOMS, value_parser = positive)]
    max_rooms: usize,
    /// Rooms one mioket.v1 connection may be in, its path's room included
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive)]
    max_rooms_per_connection: usize,
    /// New rooms one mioket.v1 connection may make by join in a second (`too many new rooms` beyond)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ROOMS_PER_SECOND, value_parser = positive)]
    rooms_per_second: usize,
    /// Turn the HTTP API on with this bearer token (docs/protocol.md) [default: off]
    #[arg(long, value_name = "TOKEN", env = "MIOKET_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    // Here and below, `std::option::Option` stops clap from reading `Option` as "the flag
    // is optional": the value parser itself yields `None`, for 0 ("off").
    /// Ping every open client this often; 0 turns pings off
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    ping_interval: std::option::Option<Duration>,
    /// Close (1011) a client whose pong is this late; 0 waits forever
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    ping_timeout: std::option::Option<Duration>,
    /// Largest message, over all its fragments (close 1009)
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_message, value_parser = positive)]
    max_message: usize,
    /// Open WebSockets beyond which upgrades get 503
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = positive)]
    max_connections: usize,
    /// Queued outgoing bytes beyond which a client is a slow consumer and is closed (1008)
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_backpressure, value_parser = positive)]
    max_backpressure: usize,
    /// Drop a connection that has not finished its HTTP upgrade in this time; 0 turns it off
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    handshake_timeout: std::option::Option<Duration>,
    /// Wait this long for the peer's close reply and end of stream; 0 waits forever
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    close_timeout: std::option::Option<Duration>,
    /// Accept only this Origin (repeatable); unset accepts any Origin
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Serve GET /metrics and /healthz on ADDR (host:port) instead of the main port [default: on the main port]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// permessage-deflate: shared (each message compressed once for every recipient) or off
    #[arg(long, value_name = "shared|off", default_value = "shared", hide_possible_values = true)]
    deflate: DeflateMode,
    /// Messages shorter than this are sent uncompressed
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_DEFLATE_MIN_SIZE)]
    deflate_min_size: usize,
    /// Kernel send buffer (SO_SNDBUF) of each connection on the main port, which Linux doubles: bounds the kernel memory a client that does not read can pin; 0 leaves it to the kernel's autotuning
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SEND_BUFFER)]
    send_buffer: usize,
    /// Serve wss:// and https:// with this PEM certificate chain (e.g. Let's Encrypt's fullchain.pem); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC; e.g. privkey.pem); SIGHUP reloads both
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Share rooms with other mioket processes through this Redis (redis://HOST:PORT[/DB]) [default: off]
    #[arg(long, value_name = "URL", value_parser = crate::backplane::RedisUrl::parse)]
    redis: Option<crate::backplane::RedisUrl>,
    /// Messages at most waiting for Redis on this node; beyond it publishes are refused
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REDIS_OUTBOX, value_parser = positive)]
    redis_outbox: usize,
    /// Payload bytes at most waiting for Redis on this node; beyond it publishes are refused
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_REDIS_OUTBOX_BYTES, value_parser = positive)]
    redis_outbox_bytes: usize,
    /// Set SO_REUSEPORT on the main port, so that several processes can listen on it
    #[arg(long)]
    reuse_port: bool,
}

/// Parses the whole command line, program name first. `--help` and `--version` also
/// come back as errors (`use_stderr()` is false for them): print them and exit 0.
pub fn parse_args<I, T>(args: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    let broadcast = args.mode == Mode::Broadcast;
    Ok(Config {
        host: args.host,
        port: args.port,
        mode: args.mode,
        welcome: match args.welcome {
            Some(text) if text.is_empty() => None,
            Some(text) => Some(text),
            None => broadcast.then(|| DEFAULT_WELCOME.into()),
        },
        history: args.history.unwrap_or(if broadcast { 100 } else { 0 }),
        max_connections: args.max_connections,
        metrics_listen: args.metrics_listen,
        limits: Limits {
            max_message: args.max_message,
            max_fragments: Limits::fragments_for(args.max_message),
            max_backpressure: args.max_backpressure,
            ping_interval: args.ping_interval,
            ping_timeout: args.ping_timeout,
            handshake_timeout: args.handshake_timeout,
            close_timeout: args.close_timeout,
            allowed_origins: args.allowed_origins,
        },
        history_memory: args.history_memory,
        max_unfinished_memory: args.max_unfinished_memory,
        room_ttl: args.room_ttl.unwrap_or_default(),
        max_rooms: args.max_rooms,
        max_rooms_per_connection: args.max_rooms_per_connection,
        rooms_per_second: args.rooms_per_second,
        api_token: args.api_token.filter(|t| !t.is_empty()),
        deflate: args.deflate,
        deflate_min_size: args.deflate_min_size,
        send_buffer: args.send_buffer,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        redis: args.redis,
        redis_outbox: args.redis_outbox,
        redis_outbox_bytes: args.redis_outbox_bytes,
        reuse_port: args.reuse_port,
    })
}

/// A usage error as one line for stderr: clap's message and its tip (valid values,
/// a similar flag), without the usage block that clap prints after them.
pub fn one_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let lines = lines.filter(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"));
    let line = lines.collect::<Vec<_>>().join("; ");
    format!("{} (see --help)", line.strip_prefix("error: ").unwrap_or(&line))
}

fn positive(value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("takes a whole number".into()),
    }
}

/// Fractional seconds; 0 means "off".
fn seconds(value: &str) -> Result<Option<Duration>, String> {
    let secs: f64 = value
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .ok_or("takes seconds (e.g. 0.5)")?;
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        parse_args(std::iter::once("mioket").chain(args.iter().copied())).map_err(|e| one_line(&e))
    }

    #[test]
    fn clap_accepts_the_definition() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn the_flag_defaults_are_the_documented_defaults() {
        assert_eq!(run(&[]).unwrap(), Config::default());
    }

    #[test]
    fn no_arguments_give_the_tutorial_broadcast_room() {
        let c = run(&[]).unwrap();
        assert_eq!(c.mode, Mode::Broadcast);
        assert_eq!(c.welcome.as_deref(), Some(DEFAULT_WELCOME));
        assert_eq!(c.history, 100);
        assert_eq!(c.limits.ping_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.limits.ping_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.port, 8765);
    }

    #[test]
    fn the_summary_names_every_setting_on_one_line() {
        let line = run(&["--ping-timeout", "0"]).unwrap().summary();
        assert!(!line.contains('\n'));
        for part in ["mode=broadcast", "history=100", "ping-interval=10s", "ping-timeout=off", "max-message=1048576"] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }

    #[test]
    fn echo_mode_alone_is_a_pure_echo_server() {
        let c = run(&["--mode", "echo"]).unwrap();
        assert_eq!(c.welcome, None);
        assert_eq!(c.history, 0);
    }

    #[test]
    fn empty_welcome_sends_none_and_fractional_seconds_parse() {
        let c = run(&["--welcome", "", "--ping-interval=0.5", "--close-timeout", "0"]).unwrap();
        assert_eq!(c.welcome, None);
        assert_eq!(c.limits.ping_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.limits.close_timeout, None);
    }

    #[test]
    fn origins_repeat_and_max_message_sets_the_fragment_limit() {
        let c =
            run(&["--allowed-origin", "http://a", "--allowed-origin", "http://b", "--max-message", "1600"]).unwrap();
        assert_eq!(c.limits.allowed_origins, vec!["http://a", "http://b"]);
        assert_eq!(c.limits.max_fragments, 100 + 1024);
    }

    #[test]
    fn bad_flags_and_values_give_one_line_reasons() {
        for args in [
            &["--bogus"][..],
            &["--port", "x"],
            &["--mode", "chat"],
            &["--ping-interval", "-1"],
            &["--history"],
            &["--max-message", "0"],
            &["--prot", "1"],
            &["extra"],
        ] {
            let err = run(args).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{args:?}: {err}");
        }
        assert!(run(&["--prot", "1"]).unwrap_err().contains("--port"), "suggests the similar flag");
        assert!(run(&["--mode", "chat"]).unwrap_err().contains("broadcast, echo"), "names the valid values");
    }

    #[test]
    fn the_last_of_a_repeated_flag_wins_and_values_may_start_with_a_dash() {
        let c = run(&["--port", "1", "--port", "2", "--welcome", "-- hi --"]).unwrap();
        assert_eq!(c.port, 2);
        assert_eq!(c.welcome.as_deref(), Some("-- hi --"));
    }

    #[test]
    fn help_and_version_are_not_usage_errors() {
        for flag in ["--help", "-h", "--version", "-V"] {
            let err = parse_args(["mioket", flag]).unwrap_err();
            assert!(!err.use_stderr(), "{flag}");
        }
    }
}
