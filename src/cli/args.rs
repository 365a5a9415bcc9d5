//! The client commands' flags: what `spool job|batch|queue|events` accept.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::EXIT_CODES_HELP;

/// The service's own default bind (`SPOOL_BIND`), so that a client on the
/// same machine needs no setting.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where the service is and how to print: on every client command, before
/// or after its subcommand. Its `Debug` never shows the key.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The service's base URL.
    #[arg(long, env = "SPOOL_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// API key, sent as `Authorization: Bearer <key>`; never printed.
    #[arg(
        long,
        env = "SPOOL_API_KEY",
        hide_env_values = true,
        global = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Print the API's JSON (pretty for one object, one document per line
    /// for a stream) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("json", &self.json)
            .finish()
    }
}

/// `K=V`, as `--meta` takes it.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job (POST /v1/jobs); with --wait, wait until it ends.
    #[command(after_help = EXIT_CODES_HELP)]
    Submit(SubmitArgs),
    /// Show a job.
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// Job id.
        id: String,
    },
    /// Wait until a job ends; the exit code says how it ended.
    #[command(after_help = EXIT_CODES_HELP)]
    Wait {
        /// Job id.
        id: String,
        #[command(flatten)]
        timeout: TimeoutArg,
    },
    /// Cancel a job (a running one is asked to stop).
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel {
        /// Job id.
        id: String,
    },
    /// Run a failed or cancelled job again.
    #[command(after_help = EXIT_CODES_HELP)]
    Retry {
        /// Job id.
        id: String,
    },
    /// List jobs, newest first.
    #[command(after_help = EXIT_CODES_HELP)]
    List(ListArgs),
}

/// `--timeout` of the waiting commands.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct TimeoutArg {
    /// Give up waiting after this many seconds (exit code 7); default: wait
    /// as long as it takes.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job's kind, e.g. noop, echo, sleep, http, exec.
    pub kind: String,
    /// The payload, as JSON.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload (JSON) from a file; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
    /// Queue (default: `default`).
    #[arg(long)]
    pub queue: Option<String>,
    /// −100..=100; higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Unique key: at most one active job holds it.
    #[arg(long)]
    pub key: Option<String>,
    /// When an active job holds the key: reject, existing or replace.
    #[arg(long, value_name = "WHAT", requires = "key")]
    pub on_conflict: Option<String>,
    /// Run no sooner than this many milliseconds from now.
    #[arg(long, value_name = "MS", conflicts_with = "run_at")]
    pub delay_ms: Option<u64>,
    /// Run no sooner than this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub run_at: Option<String>,
    /// Attempts before the job fails for good (1..=100).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u64>,
    /// Time one attempt may take, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// A metadata label, KEY=VALUE; repeat for more.
    #[arg(long = "meta", value_name = "K=V", value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// A job that must succeed first; repeat for more.
    #[arg(long, value_name = "ID")]
    pub depends_on: Vec<String>,
    /// URL that gets a signed webhook when the job ends.
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// `Idempotency-Key` header: repeating the same submission with it
    /// (a script's retry) gives the original answer, not a second job.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Wait until the job ends; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit code 7).
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only jobs in this state: scheduled, queued, running, succeeded,
    /// failed, cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs with this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only the jobs of this batch.
    #[arg(long = "batch", value_name = "ID")]
    pub batch: Option<String>,
    /// Only jobs with this metadata label, KEY=VALUE; repeat to require more.
    #[arg(long = "meta", value_name = "K=V", value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// Page size (1..=1000; the service's default is 50).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start at this `next_cursor` of an earlier page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow `next_cursor` to the last page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct BatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: BatchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Submit a batch (POST /v1/batches): `{"jobs": [...]}` or a bare array
    /// of jobs; with --wait, wait until it finishes.
    #[command(after_help = EXIT_CODES_HELP)]
    Submit {
        /// The batch as JSON; `-` reads standard input.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Wait until the batch finishes; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit code 7).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
    },
    /// Show a batch and its counts.
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// Batch id.
        id: String,
    },
    /// Wait until a batch finishes; the exit code says how it ended.
    #[command(after_help = EXIT_CODES_HELP)]
    Wait {
        /// Batch id.
        id: String,
        #[command(flatten)]
        timeout: TimeoutArg,
    },
    /// Show a batch's results, in the order its jobs finished.
    #[command(after_help = EXIT_CODES_HELP)]
    Results {
        /// Batch id.
        id: String,
        /// Page size (1..=1000; the service's default is 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Start after this `next_cursor` of an earlier page.
        #[arg(long)]
        cursor: Option<String>,
        /// Every result there is now (follow `next_cursor` while pages come full).
        #[arg(long, conflicts_with = "follow")]
        all: bool,
        /// Every result, waiting for the rest until the batch finished.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a batch's unfinished jobs.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel {
        /// Batch id.
        id: String,
    },
    /// Re-run a finished batch's failed and cancelled jobs (POST
    /// /v1/batches/{id}/retry); with --wait, wait until it finishes again.
    #[command(after_help = EXIT_CODES_HELP)]
    Retry {
        /// Batch id.
        id: String,
        /// Re-run every job, succeeded ones too.
        #[arg(long)]
        all: bool,
        /// Wait until the batch finishes again; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit code 7).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
    },
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct QueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List queues with their settings and counts.
    #[command(after_help = EXIT_CODES_HELP)]
    List,
    /// Show a queue.
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// Queue name.
        name: String,
    },
    /// Create a queue or change its settings (what is left out is kept).
    #[command(after_help = EXIT_CODES_HELP)]
    Set {
        /// Queue name.
        name: String,
        /// Jobs of the queue running at once.
        #[arg(long, value_name = "N")]
        concurrency: Option<u64>,
        /// Most jobs waiting in the queue; more are refused with 429.
        #[arg(long, value_name = "N")]
        capacity: Option<u64>,
    },
    /// Start no new jobs of the queue (running ones finish).
    #[command(after_help = EXIT_CODES_HELP)]
    Pause {
        /// Queue name.
        name: String,
    },
    /// Start the queue's jobs again.
    #[command(after_help = EXIT_CODES_HELP)]
    Resume {
        /// Queue name.
        name: String,
    },
    /// Delete a queue none of whose jobs is unfinished (refused, exit 4,
    /// otherwise); its finished jobs stay readable.
    #[command(after_help = EXIT_CODES_HELP)]
    Delete {
        /// Queue name.
        name: String,
    },
}

/// `spool events`: one line per event until interrupted.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct EventsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this job's events.
    #[arg(long = "job", value_name = "ID")]
    pub job: Option<String>,
    /// Only events of this batch and its jobs.
    #[arg(long = "batch", value_name = "ID")]
    pub batch: Option<String>,
    /// Only job events of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Comma-separated event types, e.g. job.succeeded,job.failed.
    #[arg(long)]
    pub types: Option<String>,
    /// Resume after this event id (the `id` of the last event seen).
    #[arg(long, value_name = "ID")]
    pub last_event_id: Option<String>,
}
