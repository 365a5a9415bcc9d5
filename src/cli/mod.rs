//! The command-line client: `spool job|batch|queue|events` against a running service.
//!
//! Each command is one or a few REST calls: tables (or `key: value` lines)
//! for people, the API's JSON with `--json` for scripts, and an exit code a
//! script can branch on ([`Exit`]).

mod args;
mod batches;
mod client;
mod command_line;
mod events;
mod jobs;
mod output;
mod queues;

use std::process::ExitCode;

pub use args::{
    BatchArgs, BatchCommand, ClientArgs, EventsArgs, JobArgs, JobCommand, QueueArgs, QueueCommand,
};
pub use client::CliError;
pub use command_line::{Cli, Command};

/// What the client's exit status means. Stable: scripts branch on it, and
/// `docs/cli.md` and every client command's `--help` list it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done; a job or batch waited for succeeded.
    Success = 0,
    /// A job or batch waited for failed.
    Failed = 1,
    /// Bad flags or input, found before any request (clap's own code is 2 too).
    Usage = 2,
    /// A job or batch waited for was cancelled: apart from failed, since a
    /// script usually retries a failure but not a cancellation.
    Cancelled = 3,
    /// The service refused the request (4xx but 429): a bad payload, an
    /// unknown id, a missing key. Repeating it will not help.
    Refused = 4,
    /// The service is busy (429, 503): try again later, after `Retry-After`.
    Busy = 5,
    /// The service could not be reached, answered 5xx (but 503), or
    /// answered something that is not the API; an event stream ended.
    Unreachable = 6,
    /// `--timeout` passed before the job or batch finished (it still runs).
    TimedOut = 7,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// The exit codes, as `--help` shows them after each client command.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (and a job or batch waited for succeeded)
  1  the job or batch waited for failed
  2  usage error (bad flags, unreadable JSON or file)
  3  the job or batch waited for was cancelled
  4  the service refused the request (4xx: invalid, not found, unauthorized, conflict)
  5  the service is busy (429 or 503): retry after the time on stderr
  6  the service is unreachable, failed (5xx) or ended the event stream
  7  --timeout passed before the job or batch finished

Environment: SPOOL_URL (default http://127.0.0.1:8080), SPOOL_API_KEY.";

/// Runs a client command and tells the shell how it went. Errors are said
/// once, on stderr; what was asked for goes to stdout.
pub async fn run(command: Command) -> ExitCode {
    let outcome = match command {
        Command::Job(args) => jobs::run(*args).await,
        Command::Batch(args) => batches::run(*args).await,
        Command::Queue(args) => queues::run(*args).await,
        Command::Events(args) => events::run(*args).await,
        // main dispatches only the client commands here.
        Command::Serve(_) | Command::Openapi | Command::Bench(_) => {
            Err(CliError::Usage("not a client command".into()))
        }
    };
    match outcome {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprint!("{error}");
            error.exit().into()
        }
    }
}

/// The exit code a job's or batch's final `status` gives a waiting command.
fn exit_for_status(status: &str) -> Exit {
    match status {
        "succeeded" => Exit::Success,
        "cancelled" => Exit::Cancelled,
        "failed" => Exit::Failed,
        // Not finished: only a wait that gave up sees this.
        _ => Exit::TimedOut,
    }
}
