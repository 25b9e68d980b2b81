//! Configuration: plain data and the command line that fills it. Each flag is written
//! once, as a field of `Config` or `Limits` (clap derive): its doc comment is its
//! `--help` text, its attribute its default and parser; `Config::default()` is the
//! configuration of the empty command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

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

/// `--redis redis://HOST:PORT[/DB]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let rest = url.strip_prefix("redis://").ok_or("must start with redis://")?;
        let (authority, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, db)) => (a, db.parse().map_err(|_| "the database must be a number")?),
            None => (rest, 0),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| "the port must be a number")?)
            }
            _ => (authority, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(RedisUrl { host: host.into(), port, db })
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

/// The limits and timers every connection obeys. Passed by reference to the
/// protocol core so that no connection carries its own copy.
//
// Each flag is written once, here and in `Config`: its doc comment is its `--help`
// text, its attribute its default and parser. `--help` lists `--max-connections`
// (a `Config` flag) between `--max-message` and `--max-backpressure`, so the flags
// after it carry their place in the help by hand (clap numbers the flags from 0 in
// the order they are declared, `Config`'s first); `tests/help.txt` guards the text.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct Limits {
    // Here and below, `std::option::Option` stops clap from reading `Option` as "the flag
    // is optional": the value parser itself yields `None`, for 0 ("off").
    /// Ping every open client this often; 0 turns pings off
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    pub ping_interval: std::option::Option<Duration>,
    /// Close (1011) a client whose pong is this late; 0 waits forever
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    pub ping_timeout: std::option::Option<Duration>,
    /// Largest message, over all its fragments (close 1009)
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = positive)]
    pub max_message: usize,
    /// Most fragments in one message (close 1009 beyond it): floods of tiny or empty
    /// fragments cost CPU even when they cost no memory. Not a flag: it follows
    /// `--max-message` (`Limits::fragments_for`, set by `Config::completed`).
    #[arg(skip)]
    pub max_fragments: u32,
    /// Queued outgoing bytes beyond which a client is a slow consumer and is closed (1008)
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, value_parser = positive, display_order = 16)]
    pub max_backpressure: usize,
    /// Drop a connection that has not finished its HTTP upgrade in this time; 0 turns it off
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds, display_order = 17)]
    pub handshake_timeout: std::option::Option<Duration>,
    /// Wait this long for the peer's close reply and end of stream; 0 waits forever
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds, display_order = 18)]
    pub close_timeout: std::option::Option<Duration>,
    /// Accept only this Origin (repeatable); unset accepts any Origin
    #[arg(long = "allowed-origin", value_name = "ORIGIN", display_order = 19)]
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
    /// The limits of the empty command line.
    fn default() -> Self {
        Config::default().limits
    }
}

/// The whole configuration: the command line as clap parses it (`parse_args`), and with
/// no flag at all its defaults (`Config::default()`).
#[derive(Clone, Debug, PartialEq, Parser)]
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
pub struct Config {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
    /// What to do with a message: broadcast it to every client, or echo it back to its sender
    #[arg(long, value_name = "broadcast|echo", default_value = "broadcast", hide_possible_values = true)]
    pub mode: Mode,
    // The defaults of --welcome and --history depend on --mode (clap's
    // `default_value_if`); their help says them. `None` sends nothing.
    #[arg(
        long,
        value_name = "TEXT",
        help = format!(
            "Text message sent to each new client; '' sends none \
             [default: {DEFAULT_WELCOME:?} in broadcast mode, none in echo mode]"
        ),
        default_value = DEFAULT_WELCOME,
        default_value_if("mode", "echo", ""),
        hide_default_value = true,
        value_parser = text_or_none
    )]
    pub welcome: std::option::Option<String>,
    /// Recent messages each room keeps and replays to new clients, after the welcome [default: 100 in broadcast mode, 0 in echo mode]
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        default_value_if("mode", "echo", "0"),
        hide_default_value = true
    )]
    pub history: usize,
    /// Bytes all rooms' histories keep together; beyond it the oldest messages of the least recently used rooms go first
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub history_memory: usize,
    /// Bytes all connections may hold in unfinished messages and request bodies together; beyond it the largest holder is refused (1013 or 503)
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, value_parser = positive)]
    pub max_unfinished_memory: usize,
    /// Keep a room without members this long (so clients can resume), then free it
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = seconds_or_zero)]
    pub room_ttl: Duration,
    /// Rooms at most; when full, a new room frees the empty room emptied longest ago, and with none an upgrade that would create one more gets 503
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = positive)]
    pub max_rooms: usize,
    /// Rooms one mioket.v1 connection may be in, its path's room included
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive)]
    pub max_rooms_per_connection: usize,
    /// New rooms one mioket.v1 connection may make by join in a second (`too many new rooms` beyond)
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = positive)]
    pub rooms_per_second: usize,
    // `None` (unset or '') turns the API off.
    /// Turn the HTTP API on with this bearer token (docs/protocol.md) [default: off]
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MIOKET_API_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        value_parser = text_or_none
    )]
    pub api_token: std::option::Option<String>,
    #[command(flatten)]
    pub limits: Limits,
    // Its place in --help: between --max-message and --max-backpressure (see `Limits`).
    /// Open WebSockets beyond which upgrades get 503
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive, display_order = 15)]
    pub max_connections: usize,
    /// Serve GET /metrics and /healthz on ADDR (host:port) instead of the main port [default: on the main port]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// permessage-deflate: shared (each message compressed once for every recipient) or off
    #[arg(long, value_name = "shared|off", default_value = "shared", hide_possible_values = true)]
    pub deflate: DeflateMode,
    // 256 chosen by measurement (benches/micro.rs, deflate group): below it a message
    // alone saves too few bytes for its CPU.
    /// Messages shorter than this are sent uncompressed
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub deflate_min_size: usize,
    // 128 KiB, which Linux doubles: 256 KiB of kernel send queue per connection at most,
    // where autotuning let a client that does not read pin up to tcp_wmem's 4 MiB.
    // Chosen by measurement (README, Limits): no echo or broadcast figure gets worse.
    /// Kernel send buffer (SO_SNDBUF) of each connection on the main port, which Linux doubles: bounds the kernel memory a client that does not read can pin; 0 leaves it to the kernel's autotuning
    #[arg(long, value_name = "BYTES", default_value_t = 128 << 10)]
    pub send_buffer: usize,
    // TLS (wss:// and https:// on the main port): both or neither.
    /// Serve wss:// and https:// with this PEM certificate chain (e.g. Let's Encrypt's fullchain.pem); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC; e.g. privkey.pem); SIGHUP reloads both
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    // Retries (src/dedup.rs; with --redis, the room's record in Redis).
    /// Publish each id (a mioket.v1 publish's id, an API publish's Idempotency-Key) at most once per room within this window: a retry gets the first publish's seq; 0 turns it off
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = seconds_or_zero)]
    pub dedup_window: Duration,
    // The Redis backplane: rooms shared with other mioket processes (src/backplane.rs).
    /// Share rooms with other mioket processes through this Redis (redis://HOST:PORT[/DB]) [default: off]
    #[arg(long, value_name = "URL", value_parser = RedisUrl::parse)]
    pub redis: Option<RedisUrl>,
    /// Messages at most waiting for Redis on this node; beyond it publishes are refused
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = positive)]
    pub redis_outbox: usize,
    /// Payload bytes at most waiting for Redis on this node; beyond it publishes are refused
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, value_parser = positive)]
    pub redis_outbox_bytes: usize,
    /// Set SO_REUSEPORT on the main port, so that several processes can listen on it
    #[arg(long)]
    pub reuse_port: bool,
    // Binary upgrades (src/upgrade/, README "Upgrades"): SIGUSR2 or `mioket upgrade --pid`.
    /// On SIGUSR2, start this binary to take over every connection [default: the binary running now, at its path]
    #[arg(long, value_name = "PATH")]
    pub upgrade_binary: Option<PathBuf>,
    /// Give up an upgrade (and serve on) when the new process has not answered in this time
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = positive_seconds)]
    pub upgrade_timeout: Duration,
    // Tokens, permissions and limits (src/auth/; docs/protocol.md, "Tokens and permissions").
    /// Check HS256 tokens with the secret in this file (its bytes without a trailing newline; or the secret itself in MIOKET_JWT_SECRET) [default: none]
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// `MIOKET_JWT_SECRET`: the HS256 secret itself, when there is no `--jwt-secret-file`
    /// (read by `parse_args`, not by `Config::default()`).
    #[arg(skip)]
    pub jwt_secret: Option<Secret>,
    /// Check tokens with this PEM public key (repeatable): RSA for RS256, P-256 for ES256, Ed25519 for EdDSA; a token's kid names a key by its file name without extension
    #[arg(long = "jwt-key", value_name = "FILE")]
    pub jwt_keys: Vec<PathBuf>,
    /// Accept only tokens whose aud names this audience [default: aud not checked]
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Accept only tokens whose iss is this issuer [default: iss not checked]
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on a token's exp and nbf, at most 300
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = leeway)]
    pub jwt_leeway: Duration,
    /// Rooms a client without a token may read (repeatable): a room name, a final * for any rest [default: * with no key configured, none with one]
    #[arg(long, value_name = "PATTERN")]
    pub anonymous_read: Vec<String>,
    /// Rooms a client without a token may publish in (repeatable) [default: * with no key configured, none with one]
    #[arg(long, value_name = "PATTERN")]
    pub anonymous_write: Vec<String>,
    /// Open WebSockets from one address beyond which upgrades get 429 [default: off]
    #[arg(long, value_name = "N", default_value = "0", hide_default_value = true, value_parser = count_or_off)]
    pub max_connections_per_ip: std::option::Option<u32>,
    /// Open WebSockets of one user (a token's sub) beyond which upgrades are refused (429, or close 4429) [default: off]
    #[arg(long, value_name = "N", default_value = "0", hide_default_value = true, value_parser = count_or_off)]
    pub max_connections_per_user: std::option::Option<u32>,
    /// Messages one connection may publish per second (a token bucket that starts full); beyond it error `rate limited`, then close 4429 [default: off]
    #[arg(long, value_name = "N", default_value_t = 0.0, hide_default_value = true, value_parser = rate)]
    pub publish_rate: f64,
    /// Messages one connection may publish at once within --publish-rate [default: the rate, at least 1]
    #[arg(long, value_name = "N", value_parser = rate)]
    pub publish_burst: Option<f64>,
    /// Payload bytes one connection may publish per second (a bucket of one second's worth) [default: off]
    #[arg(long, value_name = "BYTES", default_value_t = 0.0, hide_default_value = true, value_parser = rate)]
    pub publish_bytes_rate: f64,
    /// Every flag as `name=value` (given or default), for the start-up log.
    #[arg(skip)]
    pub summary: String,
}

/// A secret that `Debug` does not print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub const DEFAULT_WELCOME: &str = "Welcome! You're now in the broadcast room.";

impl Config {
    /// The effective configuration on one line, for the start-up log (made from the
    /// command line as clap parsed it: see `summarize`).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// What clap leaves to us: the limits that follow from others.
    fn completed(mut self) -> Config {
        self.limits.max_fragments = Limits::fragments_for(self.limits.max_message);
        self
    }
}

impl Default for Config {
    /// The configuration of the empty command line, whatever the environment says
    /// (`MIOKET_API_TOKEN` is the command line's, not the default's). Parsed once.
    fn default() -> Self {
        static DEFAULT: OnceLock<Config> = OnceLock::new();
        let parse = || {
            let command = Config::command().mut_args(|arg| arg.env(None));
            let matches = command.clone().try_get_matches_from(["mioket"]).expect("the empty command line parses");
            let mut config = Config::from_arg_matches(&matches).expect("the defaults are valid").completed();
            config.summary = summarize(&command, &matches);
            config
        };
        DEFAULT.get_or_init(parse).clone()
    }
}

/// Parses the whole command line, program name first. `--help` and `--version` also
/// come back as errors (`use_stderr()` is false for them): print them and exit 0.
pub fn parse_args<I, T>(args: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = Config::command();
    let matches = command.clone().try_get_matches_from(args)?;
    let mut config = Config::from_arg_matches(&matches)?.completed();
    config.summary = summarize(&command, &matches);
    if config.jwt_secret_file.is_none() {
        config.jwt_secret = std::env::var("MIOKET_JWT_SECRET").ok().filter(|s| !s.is_empty()).map(Secret);
    }
    Ok(config)
}

/// `name=value` for every flag, in --help order, from what clap parsed (a given value or
/// the default): so a new flag is in the start-up log without being written again. A
/// value clap hides (`hide_env_values`: the API token) shows as `set`; a flag without
/// value or default as `off`.
fn summarize(command: &clap::Command, matches: &clap::ArgMatches) -> String {
    let mut line = String::new();
    for arg in command.get_arguments() {
        let (Some(name), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if matches!(arg.get_action(), clap::ArgAction::Help | clap::ArgAction::Version) {
            continue;
        }
        let values: Vec<String> =
            matches.get_raw(id).map(|v| v.map(|v| v.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let value = match values.as_slice() {
            [] => "off".to_string(),
            [one] if one.is_empty() => "off".to_string(),
            _ if arg.is_hide_env_values_set() => "set".to_string(),
            [one] if one.contains(' ') || one.contains('"') => format!("{one:?}"),
            _ => values.join(","),
        };
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(name);
        line.push('=');
        line.push_str(&value);
    }
    line
}

/// `mioket token ...`: the arguments of the token maker (`auth::mint`), parsed apart from
/// the server's command line (which stays as it is: no subcommand in its `--help`).
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(
    name = "mioket token",
    bin_name = "mioket token",
    about = "Print a signed HS256 token, for trying tokens out (docs/protocol.md)",
    max_term_width = 100
)]
pub struct TokenArgs {
    /// The secret file, read as the server reads --jwt-secret-file
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// The user id (sub), 1 to 128 bytes
    #[arg(long, value_name = "USER")]
    pub sub: String,
    /// A room pattern the token may read (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub read: Vec<String>,
    /// A room pattern the token may publish in (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub write: Vec<String>,
    /// Lifetime: 90, 90s, 15m, 1h or 7d
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration)]
    pub ttl: Duration,
    /// The info object shown to others in presence (JSON)
    #[arg(long, value_name = "JSON")]
    pub info: Option<String>,
    /// The aud claim
    #[arg(long, value_name = "AUD")]
    pub aud: Option<String>,
    /// The iss claim
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,
    /// The kid header (the secret file's name without extension, when the server has several keys)
    #[arg(long, value_name = "NAME")]
    pub kid: Option<String>,
}

/// `mioket upgrade ...`: asks a running server for a binary upgrade and waits for its
/// outcome (src/upgrade/command.rs), parsed apart from the server's command line.
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(
    name = "mioket upgrade",
    bin_name = "mioket upgrade",
    about = "Upgrade a running mioket without dropping a connection: send it SIGUSR2, wait for the outcome (README, Upgrades)",
    max_term_width = 100
)]
pub struct UpgradeArgs {
    /// The running server's process id
    #[arg(long, value_name = "PID")]
    pub pid: u32,
    /// Give up waiting for the outcome after this long: 90, 90s, 15m
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub timeout: Duration,
}

/// A duration as `90`, `90s`, `15m`, `1h` or `7d`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("bad duration {text:?} (e.g. 90s, 15m, 1h, 7d)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration unit in {text:?} (s, m, h or d)")),
    };
    n.checked_mul(unit).map(Duration::from_secs).ok_or_else(|| format!("duration {text:?} too long"))
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

/// A count; 0 means "off".
fn count_or_off(value: &str) -> Result<Option<u32>, String> {
    let n: u32 = value.parse().map_err(|_| "takes a whole number")?;
    Ok((n > 0).then_some(n))
}

/// A rate (per second, may be fractional); 0 means "off".
fn rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|_| "takes a number (e.g. 0.5)")?;
    match rate.is_finite() && (0.0..1e12).contains(&rate) {
        true => Ok(rate),
        false => Err("must be between 0 and 1e12".into()),
    }
}

/// The leeway on a token's times: whole seconds up to 5 minutes.
fn leeway(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(secs) if secs <= 300 => Ok(Duration::from_secs(secs)),
        _ => Err("takes whole seconds from 0 to 300".into()),
    }
}

/// Text; '' means none.
fn text_or_none(value: &str) -> Result<Option<String>, String> {
    Ok((!value.is_empty()).then(|| value.into()))
}

/// Fractional seconds; 0 means zero.
fn seconds_or_zero(value: &str) -> Result<Duration, String> {
    seconds(value).map(Option::unwrap_or_default)
}

/// Fractional seconds, more than 0.
fn positive_seconds(value: &str) -> Result<Duration, String> {
    seconds(value)?.ok_or_else(|| "must be more than 0".into())
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
        Config::command().debug_assert();
    }

    #[test]
    fn the_flag_defaults_are_the_documented_defaults() {
        assert_eq!(run(&[]).unwrap(), Config::default());
        // The values each flag has had since it was made, written out once more here to
        // hold them still.
        let limits = Limits {
            max_message: 1 << 20,
            max_fragments: Limits::fragments_for(1 << 20),
            max_backpressure: 4 << 20,
            ping_interval: Some(Duration::from_secs(10)),
            ping_timeout: Some(Duration::from_secs(5)),
            handshake_timeout: Some(Duration::from_secs(10)),
            close_timeout: Some(Duration::from_secs(10)),
            allowed_origins: Vec::new(),
        };
        let documented = Config {
            host: "127.0.0.1".into(),
            port: 8765,
            mode: Mode::Broadcast,
            welcome: Some(DEFAULT_WELCOME.into()),
            history: 100,
            max_connections: 10_000,
            metrics_listen: None,
            limits: limits.clone(),
            history_memory: 64 << 20,
            max_unfinished_memory: 64 << 20,
            room_ttl: Duration::from_secs(300),
            dedup_window: Duration::from_secs(120),
            max_rooms: 100_000,
            max_rooms_per_connection: 64,
            rooms_per_second: 100,
            api_token: None,
            deflate: DeflateMode::Shared,
            deflate_min_size: 256,
            send_buffer: 128 << 10,
            tls_cert: None,
            tls_key: None,
            redis: None,
            redis_outbox: 4096,
            redis_outbox_bytes: 64 << 20,
            reuse_port: false,
            upgrade_binary: None,
            upgrade_timeout: Duration::from_secs(5),
            jwt_secret_file: None,
            jwt_secret: None,
            jwt_keys: Vec::new(),
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::from_secs(60),
            anonymous_read: Vec::new(),
            anonymous_write: Vec::new(),
            max_connections_per_ip: None,
            max_connections_per_user: None,
            publish_rate: 0.0,
            publish_burst: None,
            publish_bytes_rate: 0.0,
            // The start-up line, made from the flags themselves.
            summary: Config::default().summary().to_string(),
        };
        assert_eq!(Config::default(), documented);
        assert_eq!(Limits::default(), limits);
    }

    #[test]
    fn the_help_is_the_documented_help() {
        // `mioket --help` through a pipe, byte for byte: the flags' order, texts and defaults.
        let help = Config::command().term_width(100).render_help().to_string();
        assert_eq!(help, include_str!("../tests/help.txt"));
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
        let config = run(&["--ping-timeout", "0"]).unwrap();
        let line = config.summary();
        assert!(!line.contains('\n'));
        for part in [
            "mode=broadcast",
            "history=100",
            "ping-interval=10",
            "ping-timeout=0",
            "max-message=1048576",
            "api-token=off",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        // Every flag is there (so none is written twice), and a secret never.
        for arg in Config::command().get_arguments().filter_map(|a| a.get_long()) {
            if !["help", "version"].contains(&arg) {
                assert!(line.contains(&format!("{arg}=")), "{arg} in {line}");
            }
        }
        let line = run(&["--api-token", "s3cret"]).unwrap().summary().to_string();
        assert!(line.contains("api-token=set") && !line.contains("s3cret"), "{line}");
    }

    #[test]
    fn echo_mode_alone_is_a_pure_echo_server() {
        let c = run(&["--mode", "echo"]).unwrap();
        assert_eq!(c.welcome, None);
        assert_eq!(c.history, 0);
        for args in [
            &["--mode", "echo", "--welcome", "hi", "--history", "3"][..],
            &["--history", "3", "--welcome=hi", "--mode=echo"],
        ] {
            let c = run(args).unwrap();
            assert_eq!((c.welcome.as_deref(), c.history), (Some("hi"), 3), "{args:?}");
        }
        let c = run(&["--mode", "echo", "--mode", "broadcast"]).unwrap();
        assert_eq!((c.welcome.as_deref(), c.history), (Some(DEFAULT_WELCOME), 100));
    }

    #[test]
    fn an_empty_token_turns_the_api_off_and_zero_room_ttl_is_zero() {
        let c = run(&["--api-token", "", "--room-ttl", "0"]).unwrap();
        assert_eq!((c.api_token, c.room_ttl), (None, Duration::ZERO));
        let c = run(&["--api-token", "t", "--room-ttl", "1.5"]).unwrap();
        assert_eq!((c.api_token.as_deref(), c.room_ttl), (Some("t"), Duration::from_millis(1500)));
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
            &["--tls-cert", "a"],
            &["--redis", "http://x"],
            &["--room-ttl", "x"],
            &["--max-connections", "0"],
        ] {
            let err = run(args).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{args:?}: {err}");
        }
        assert!(run(&["--prot", "1"]).unwrap_err().contains("--port"), "suggests the similar flag");
        assert!(run(&["--mode", "chat"]).unwrap_err().contains("broadcast, echo"), "names the valid values");
        assert!(run(&["--tls-cert", "a"]).unwrap_err().contains("--tls-key"), "names the missing flag");
        assert!(run(&["--redis", "http://x"]).unwrap_err().contains("must start with redis://"), "gives the reason");
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

    #[test]
    fn redis_urls_parse() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(u, RedisUrl { host: "127.0.0.1".into(), port: 6380, db: 2 });
        assert_eq!(RedisUrl::parse("redis://h").unwrap(), RedisUrl { host: "h".into(), port: 6379, db: 0 });
        assert_eq!(RedisUrl::parse("redis://[::1]:7000/").unwrap().host, "::1");
        for bad in ["http://h", "redis://", "redis://h:x", "redis://h/x", "redis://u:p@h"] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
