use std::io::Write;
use std::process::ExitCode;

use mioket::config::{one_line, parse_args, TokenArgs};
use mioket::runtime::{Server, StartError};

fn main() -> ExitCode {
    // `mioket token ...` makes a token; everything else is the server's command line.
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return token(std::env::args_os().skip(1));
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
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("mioket: {e}");
            // Bad --tls-cert/--tls-key or JWT key files, or a Redis that refuses us (a
            // wrong password): a usage error, like a bad flag.
            let usage = matches!(e, StartError::Tls(_) | StartError::Auth(_) | StartError::Redis(_));
            return ExitCode::from(if usage { 2 } else { 1 });
        }
    };
    let scheme = if server.is_tls() { "wss" } else { "ws" };
    println!("listening on {scheme}://{}", server.local_addr());
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
