use std::io::Write;
use std::process::ExitCode;

use mioket::config::{one_line, parse_args, TokenArgs, UpgradeArgs};
use mioket::runtime::{Server, StartError};
use mioket::upgrade::handover;

fn main() -> ExitCode {
    // `mioket token ...` makes a token; everything else is the server's command line.
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return token(std::env::args_os().skip(1));
    }
    // `mioket upgrade --pid PID` asks a running server to upgrade and waits.
    if std::env::args_os().nth(1).is_some_and(|a| a == "upgrade") {
        return upgrade(std::env::args_os().skip(1));
    }
    let config = match parse_args(std::env::args_os()) {
        Ok(config) => config,
        // --help and --version: clap's text on stdout, exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mioket: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    log::info!("starting mioket {}: {}", env!("CARGO_PKG_VERSION"), config.summary());
    raise_fd_limit(config.max_connections);
    // A binary upgrade started us: take over from the old process instead of binding.
    let server = match handover::inherited_channel(config.upgrade_timeout) {
        Ok(Some(channel)) => Server::take_over(config, channel),
        Ok(None) => Server::bind(config),
        Err(e) => Err(StartError::Upgrade(e.0)),
    };
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            eprintln!("mioket: {e}");
            // Bad --tls-cert/--tls-key or JWT key files: a usage error, like a bad flag.
            return ExitCode::from(if matches!(e, StartError::Tls(_) | StartError::Auth(_)) { 2 } else { 1 });
        }
    };
    let scheme = if server.is_tls() { "wss" } else { "ws" };
    // Not println!: a new process after an upgrade may find no one reading (a closed pipe).
    let _ = writeln!(std::io::stdout(), "listening on {scheme}://{}", server.local_addr());
    if let Some(addr) = server.metrics_addr() {
        log::info!("metrics on http://{addr}/metrics");
    }
    let _ = std::io::stdout().flush();
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mioket: {e}");
            ExitCode::from(1)
        }
    }
}

/// `mioket token --secret-file FILE --sub USER ...`: prints a signed HS256 token.
fn token(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    let args = match TokenArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mioket token: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    match mioket::auth::mint::token(&args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mioket token: {e}");
            ExitCode::from(2)
        }
    }
}

/// `mioket upgrade --pid PID`: SIGUSR2 to the server, then its outcome.
fn upgrade(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    match UpgradeArgs::try_parse_from(args) {
        Ok(args) => mioket::upgrade::command::run(&args),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mioket upgrade: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// Every connection is a file descriptor: use all the hard limit allows, and say so
/// when --max-connections cannot be reached.
fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + 64 => log::warn!(
            "file descriptors limited to {limit}, below --max-connections {max_connections}: raise `ulimit -n`"
        ),
        Ok(limit) => log::info!("file descriptors: up to {limit}"),
        Err(e) => log::warn!("cannot read the file-descriptor limit: {e}"),
    }
}
