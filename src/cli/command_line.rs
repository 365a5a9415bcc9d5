//! The binary's command line: serve (the default), the client's commands,
//! `openapi` and `bench`. Here rather than in `config`, so that the
//! service's settings depend on none of the commands.

use clap::{Parser, Subcommand};

use crate::config::Config;

/// `spool [SETTINGS]` or `spool serve [SETTINGS]` serves; the other
/// commands take only their own flags (the service's settings would be
/// ignored by them, so they are not offered). `job`, `batch`, `queue` and
/// `events` are the client of a running service ([`crate::cli`]).
#[derive(Parser, Debug)]
#[command(
    name = "spool",
    version = crate::VERSION,
    about = "An HTTP job-submission service.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API (the default).
    Serve(Box<Config>),
    /// Print the OpenAPI document the code describes.
    Openapi,
    /// Start the service on a fresh database and measure it over loopback HTTP.
    Bench(crate::bench::BenchArgs),
    /// Client: submit, show, wait for, cancel, retry and list jobs.
    Job(Box<super::JobArgs>),
    /// Client: submit a batch, wait for it, read its results, cancel it.
    Batch(Box<super::BatchArgs>),
    /// Client: list, show, change, pause and resume queues.
    Queue(Box<super::QueueArgs>),
    /// Client: follow the event stream, one line per event, until interrupted.
    Events(Box<super::EventsArgs>),
}
