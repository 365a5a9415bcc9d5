//! A job as the service stores and returns it, and the states it moves through.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{BatchId, Timestamp};

/// The tenant every job belongs to until API keys name others.
pub const TENANT_DEFAULT: &str = "default";

/// A job's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(Self)
    }
}

/// Where a job is in its life. See `docs/state-machine.md` for who moves it.
///
/// - `scheduled`: waiting for `run_at` (a delay or a retry's backoff) or for
///   its dependencies to succeed.
/// - `queued`: ready; the dispatcher claims it when its queue has a free slot.
/// - `running`: claimed by one instance under a lease.
/// - `succeeded`, `failed`, `cancelled`: terminal, never change again
///   (except through an explicit `retry`, which starts a new attempt series).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown status `{text}`"))
    }
}

/// Why a ready job waits (see `Job::waiting_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitingReason {
    /// Its rate limit's key has no budget left until `eligible_at`.
    RateLimited,
}

/// Progress reported by a running job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub current: u64,
    pub total: Option<u64>,
    pub message: Option<String>,
}

/// Why an attempt failed: a stable `code` and a human `message`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    /// The attempt this error ended (absent on errors not tied to one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// A job as the service returns it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Job {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// As submitted, except its secret values (an `http` job's
    /// `Authorization`, `Cookie`, `Proxy-Authorization` and configured
    /// secret headers, an `exec` command's `secret_args`), shown as `"***"`.
    pub payload: Value,
    pub status: JobState,
    pub priority: i32,
    /// Attempts started so far in the current attempt series.
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub key: Option<String>,
    /// At most `concurrency_limit` running jobs of the tenant share this key.
    pub concurrency_key: Option<String>,
    /// Running jobs allowed to share `concurrency_key`: this job starts only
    /// while fewer hold it.
    pub concurrency_limit: Option<u32>,
    /// The batch this job was submitted in.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub batch_id: Option<BatchId>,
    /// Jobs that must succeed before this one starts.
    #[schema(value_type = Vec<String>)]
    pub depends_on: Vec<JobId>,
    pub metadata: BTreeMap<String, String>,
    pub progress: Option<Progress>,
    pub result: Option<Value>,
    /// The last failure.
    pub error: Option<ErrorInfo>,
    /// One entry per failed attempt, oldest first.
    pub errors: Vec<ErrorInfo>,
    /// Place among the queued jobs of the queue (0 = next) on a read of the
    /// job (`GET /v1/jobs/{id}`); `null` unless `queued`, and in lists and
    /// the answer to a submission: counting the jobs ahead scans the queue,
    /// a cost that would grow with the backlog on every list and submission.
    pub position: Option<u64>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub run_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    pub cancel_requested: bool,
    /// Receives the job's terminal event as a signed webhook.
    pub callback_url: Option<String>,
    /// The W3C `traceparent` of the submission that created the job (its
    /// `traceparent` header), `null` when it carried none.
    pub traceparent: Option<String>,
    /// The submission's W3C `tracestate`, kept with its `traceparent`.
    pub tracestate: Option<String>,
    /// The delivery of the webhook of the job's latest end (`null` before
    /// it first ended, or without `callback_url`; a retried job shows its
    /// previous end's until it ends again).
    pub webhook: Option<super::WebhookDelivery>,
    /// The rate limit the job's starts are held to.
    pub rate_limit: Option<super::RateLimitRef>,
    /// If not started by then, the job ends `cancelled` with
    /// `error.code: expired`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Why a `queued` job is not running though its queue may have room:
    /// `rate_limited` (its limit's key has no budget left until
    /// `eligible_at`). `null` otherwise. Shown on a read of the job
    /// (`GET /v1/jobs/{id}`) and in lists.
    pub waiting_reason: Option<WaitingReason>,
    /// With `waiting_reason`: the earliest instant the job may start.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub eligible_at: Option<Timestamp>,
    #[serde(skip)]
    pub tenant: String,
    #[serde(skip)]
    pub backoff: super::Backoff,
}

impl Job {
    /// The trace context the job was submitted with, if any.
    pub fn trace_context(&self) -> Option<super::TraceContext> {
        super::TraceContext::from_headers(self.traceparent.as_deref(), self.tracestate.as_deref())
    }

    /// Whether the job has been ready since its creation: no delay and no
    /// dependency held it, and it was not retried by hand (a retry sets
    /// `run_at` to its own time). Its admission published its `job.queued`.
    pub fn ready_since_creation(&self) -> bool {
        self.run_at <= self.created_at
    }
}

/// Masks what may not leave the service of a job (its kind's secret payload
/// values) in a copy about to be shown. The engine's is driven by the job
/// kinds; the store and the webhook deliverer get it to shape the bodies
/// they keep (an idempotent replay's, a webhook's). The default masks nothing.
#[derive(Clone, Default)]
pub struct Redactor(Option<std::sync::Arc<RedactFn>>);

type RedactFn = dyn Fn(&mut Job) + Send + Sync;

impl Redactor {
    pub fn new(redact: impl Fn(&mut Job) + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(redact)))
    }

    /// Masks `job` in place.
    pub fn apply(&self, job: &mut Job) {
        if let Some(redact) = &self.0 {
            redact(job);
        }
    }

    /// `job` masked.
    pub fn shown(&self, mut job: Job) -> Job {
        self.apply(&mut job);
        job
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Redactor"
        } else {
            "Redactor(none)"
        })
    }
}
