//! Configuration: plain data with the documented defaults, and the command line parser.

use std::time::Duration;

/// What the server does with a message it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every message goes to every open client, the sender included.
    Broadcast,
    /// Every message goes back to its sender only.
    Echo,
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
}

impl Config {
    /// The effective configuration on one line, for the start-up log.
    pub fn summary(&self) -> String {
        let secs = |d: Option<Duration>| d.map_or("off".to_string(), |d| format!("{}s", d.as_secs_f64()));
        let l = &self.limits;
        format!(
            "mode={} history={} welcome={:?} ping-interval={} ping-timeout={} max-message={} max-connections={} \
             max-backpressure={} handshake-timeout={} close-timeout={} allowed-origins={:?} metrics-listen={}",
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
        )
    }
}

pub const DEFAULT_WELCOME: &str = "Welcome! You're now in the broadcast room.";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

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
        }
    }
}

pub const USAGE: &str = "\
mioket: a WebSocket server (RFC 6455) on one mio event loop

Usage: mioket [OPTIONS]

Options:
  --host HOST               address to listen on [default: 127.0.0.1]
  --port PORT               port to listen on; 0 picks a free one [default: 8765]
  --mode broadcast|echo     broadcast: every message to every client;
                            echo: every message back to its sender [default: broadcast]
  --welcome TEXT            text message sent to each new client; '' sends none
                            [default: \"Welcome! You're now in the broadcast room.\" in
                            broadcast mode, none in echo mode]
  --history N               recent messages replayed to new clients, after the welcome
                            [default: 100 in broadcast mode, 0 in echo mode]
  --ping-interval SECS      ping every open client this often; 0 turns pings off [default: 10]
  --ping-timeout SECS       close (1011) a client whose pong is this late; 0 waits forever
                            [default: 5]
  --max-message BYTES       largest message, over all its fragments (close 1009)
                            [default: 1048576]
  --max-connections N       open WebSockets beyond which upgrades get 503 [default: 10000]
  --max-backpressure BYTES  queued outgoing bytes beyond which a client is a slow consumer
                            and is closed (1008) [default: 4194304]
  --handshake-timeout SECS  drop a connection that has not finished its HTTP upgrade
                            in this time; 0 turns it off [default: 10]
  --close-timeout SECS      wait this long for the peer's close reply and end of stream;
                            0 waits forever [default: 10]
  --allowed-origin ORIGIN   accept only this Origin (repeatable); unset accepts any Origin
  --metrics-listen ADDR     serve GET /metrics and /healthz on ADDR (host:port) instead
                            of the main port [default: on the main port]
  -h, --help                print this help
  -V, --version             print the version

SECS may be fractional (0.5). Logs go to stderr; RUST_LOG sets the level [default: info].
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// Parses the arguments after the program name. The error is a one-line reason.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut config = Config::default();
    let mut welcome: Option<String> = None;
    let mut history: Option<usize> = None;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (flag.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        let limits = &mut config.limits;
        match name.as_str() {
            "--host" => config.host = value()?,
            "--port" => config.port = number(&name, &value()?)?,
            "--mode" => {
                config.mode = match value()?.as_str() {
                    "broadcast" => Mode::Broadcast,
                    "echo" => Mode::Echo,
                    other => return Err(format!("--mode must be broadcast or echo, not {other:?}")),
                }
            }
            "--welcome" => welcome = Some(value()?),
            "--history" => history = Some(number(&name, &value()?)?),
            "--ping-interval" => limits.ping_interval = seconds(&name, &value()?)?,
            "--ping-timeout" => limits.ping_timeout = seconds(&name, &value()?)?,
            "--handshake-timeout" => limits.handshake_timeout = seconds(&name, &value()?)?,
            "--close-timeout" => limits.close_timeout = seconds(&name, &value()?)?,
            "--max-message" => {
                limits.max_message = positive(&name, number(&name, &value()?)?)?;
                limits.max_fragments = Limits::fragments_for(limits.max_message);
            }
            "--max-backpressure" => limits.max_backpressure = positive(&name, number(&name, &value()?)?)?,
            "--max-connections" => config.max_connections = positive(&name, number(&name, &value()?)?)?,
            "--allowed-origin" => limits.allowed_origins.push(value()?),
            "--metrics-listen" => config.metrics_listen = Some(value()?),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    let broadcast = config.mode == Mode::Broadcast;
    config.welcome = match welcome {
        Some(text) if text.is_empty() => None,
        Some(text) => Some(text),
        None if broadcast => Some(DEFAULT_WELCOME.into()),
        None => None,
    };
    config.history = history.unwrap_or(if broadcast { 100 } else { 0 });
    Ok(Command::Run(config))
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{name} takes a whole number, not {value:?}"))
}

fn positive(name: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        Err(format!("{name} must be at least 1"))
    } else {
        Ok(n)
    }
}

/// Fractional seconds; 0 means "off".
fn seconds(name: &str, value: &str) -> Result<Option<Duration>, String> {
    let secs: f64 = value
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .ok_or_else(|| format!("{name} takes seconds (e.g. 0.5), not {value:?}"))?;
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args.iter().map(|s| s.to_string()))? {
            Command::Run(c) => Ok(c),
            other => panic!("expected a config, got {other:?}"),
        }
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
        ] {
            let err = run(args).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{args:?}: {err}");
        }
    }
}
