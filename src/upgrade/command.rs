//! `mioket upgrade --pid PID`: sends the server SIGUSR2 and waits for the outcome,
//! which the server leaves in a small file (`outcome_path`): "ok NEWPID" or
//! "failed WHY". Exits 0 on success, 1 on failure or when no outcome comes in time.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::config::UpgradeArgs;

const POLL_EVERY: Duration = Duration::from_millis(20);

/// Where the process `pid` leaves the outcome of its upgrade (the temporary directory:
/// `TMPDIR` or /tmp; the server and this command must see the same one).
pub fn outcome_path(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("mioket-upgrade-{pid}.status"))
}

/// What an upgrade came to, as the old process saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new process confirmed: it serves.
    Done {
        new_pid: u32,
    },
    Failed(String),
}

impl Outcome {
    fn parse(text: &str) -> Option<Outcome> {
        let line = text.strip_suffix('\n')?;
        if let Some(pid) = line.strip_prefix("ok ") {
            return pid.parse().ok().map(|new_pid| Outcome::Done { new_pid });
        }
        line.strip_prefix("failed ").map(|why| Outcome::Failed(why.into()))
    }

    fn line(&self) -> String {
        match self {
            Outcome::Done { new_pid } => format!("ok {new_pid}\n"),
            Outcome::Failed(why) => format!("failed {}\n", why.replace('\n', " ")),
        }
    }
}

/// The old process: leaves `outcome` for `mioket upgrade` (written aside, then
/// renamed, so that the command never reads half a line; a rename replaces a link
/// instead of following it).
pub fn record(outcome: &Outcome) -> io::Result<()> {
    let path = outcome_path(std::process::id());
    let aside = path.with_extension("tmp");
    let _ = fs::remove_file(&aside);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&aside)?;
    file.write_all(outcome.line().as_bytes())?;
    drop(file);
    fs::rename(&aside, &path)
}

pub fn run(args: &UpgradeArgs) -> ExitCode {
    let pid = args.pid;
    let path = outcome_path(pid);
    // An outcome from an earlier upgrade is not this one's.
    let _ = fs::remove_file(&path);
    if let Err(e) = signal(pid, libc::SIGUSR2) {
        eprintln!("mioket upgrade: cannot signal pid {pid}: {e}");
        return ExitCode::from(1);
    }
    let until = Instant::now() + args.timeout;
    loop {
        if let Some(outcome) = fs::read_to_string(&path).ok().as_deref().and_then(Outcome::parse) {
            let _ = fs::remove_file(&path);
            return match outcome {
                Outcome::Done { new_pid } => {
                    println!("upgraded: pid {pid} handed over to pid {new_pid}");
                    ExitCode::SUCCESS
                }
                Outcome::Failed(why) => {
                    eprintln!("mioket upgrade: failed, pid {pid} serves on: {why}");
                    ExitCode::from(1)
                }
            };
        }
        if signal(pid, 0).is_err() {
            eprintln!("mioket upgrade: pid {pid} exited without an outcome");
            return ExitCode::from(1);
        }
        if Instant::now() >= until {
            eprintln!("mioket upgrade: no outcome from pid {pid} within {:?}", args.timeout);
            return ExitCode::from(1);
        }
        sleep(POLL_EVERY);
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("no such pid"))?;
    if pid <= 0 {
        return Err(io::Error::other("no such pid"));
    }
    // SAFETY: kill takes integers only.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_reads_back_as_written() {
        for outcome in [Outcome::Done { new_pid: 4321 }, Outcome::Failed("the new process exited".into())] {
            assert_eq!(Outcome::parse(&outcome.line()), Some(outcome));
        }
        assert_eq!(Outcome::parse("ok 12"), None, "half a line");
        assert_eq!(Outcome::parse("ok x\n"), None);
    }
}
