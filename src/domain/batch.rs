//! Batches: many jobs submitted, counted and cancelled together, with their
//! results readable as they finish.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::spec::check_metadata;
use super::{ErrorInfo, FieldError, JobId, JobSpec, JobState, Timestamp};

/// A batch's id: a UUIDv7, like job ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(Uuid);

impl BatchId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for BatchId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for BatchId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(Self)
    }
}

/// Where a batch is.
///
/// `running` until every job is terminal; then `succeeded` when
/// `succeeded / total ≥ success_threshold`, else `failed`; `cancelled` when
/// the batch was cancelled (whatever its jobs did). The last three never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Running => "running",
            BatchStatus::Succeeded => "succeeded",
            BatchStatus::Failed => "failed",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != BatchStatus::Running
    }
}

impl FromStr for BatchStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            BatchStatus::Running,
            BatchStatus::Succeeded,
            BatchStatus::Failed,
            BatchStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
        .ok_or_else(|| format!("unknown batch status `{text}`"))
    }
}

/// How many of a batch's jobs are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchCounts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl BatchCounts {
    pub fn add(&mut self, state: JobState) {
        match state {
            JobState::Scheduled => self.scheduled += 1,
            JobState::Queued => self.queued += 1,
            JobState::Running => self.running += 1,
            JobState::Succeeded => self.succeeded += 1,
            JobState::Failed => self.failed += 1,
            JobState::Cancelled => self.cancelled += 1,
        }
    }
}

/// A batch as the service returns it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Batch {
    #[schema(value_type = String, format = Uuid)]
    pub id: BatchId,
    pub status: BatchStatus,
    pub total: u64,
    pub counts: BatchCounts,
    pub success_threshold: f64,
    /// The automatic re-run policy as submitted (`null`: none).
    pub retry: Option<BatchRetryPolicy>,
    /// Times the batch was re-run, by hand or by its `retry` policy.
    pub retries: u32,
    /// At most this many of its jobs run at once, service-wide (`null`: no
    /// window of its own).
    pub max_in_flight: Option<u32>,
    /// Its jobs running now (`counts.running`): what `max_in_flight` bounds.
    pub in_flight: u64,
    pub metadata: BTreeMap<String, String>,
    pub callback_url: Option<String>,
    /// The delivery of the `batch.finished` webhook of the batch's latest
    /// end (`null` while the batch runs, or without `callback_url`).
    pub webhook: Option<super::WebhookDelivery>,
    /// The batch was cancelled; it becomes `cancelled` once its running jobs stop.
    pub cancel_requested: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When the last job finished; `null` while any runs (again, after a
    /// re-run).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// The jobs' ids, in the order they were submitted.
    #[schema(value_type = Vec<String>)]
    pub job_ids: Vec<JobId>,
    #[serde(skip)]
    pub tenant: String,
}

/// One finished job of a batch, as `GET /v1/batches/{id}/results` pages them.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// The job's position in the submitted `jobs` array.
    pub index: u32,
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    pub status: JobState,
    pub result: Option<Value>,
    pub error: Option<ErrorInfo>,
    #[schema(value_type = String, format = DateTime)]
    pub finished_at: Timestamp,
    /// Order of finishing within the batch (1 = first); the cursor is built on it.
    #[serde(skip)]
    pub seq: u64,
}

/// A batch submission. Unknown fields are rejected.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// The jobs, admitted together or not at all. Inside a batch,
    /// `depends_on` may name earlier jobs of the batch by their index.
    pub jobs: Vec<JobSpec>,
    /// Webhook for the batch's terminal event.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Labels of the batch, returned as given.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Share of jobs that must succeed for the batch to succeed, 0..=1. Default 1.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub success_threshold: Option<f64>,
    /// Re-run the batch by itself when it ends with too many jobs failed
    /// or cancelled. Default: never.
    #[serde(default)]
    pub retry: Option<BatchRetryPolicy>,
    /// At most this many of the batch's jobs run at once, service-wide
    /// (1 to 10 000); the others wait `queued` without holding up other work
    /// of their queues. Its jobs hold the concurrency key `batch:<id>` and
    /// may not have one of their own. Default: no window.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    pub max_in_flight: Option<u32>,
}

/// Which of a finished batch's jobs a re-run runs again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchRetryScope {
    /// The failed and cancelled jobs (with the jobs waiting on them).
    #[default]
    Failed,
    /// Every job, succeeded ones too.
    All,
}

impl BatchRetryScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchRetryScope::Failed => "failed",
            BatchRetryScope::All => "all",
        }
    }
}

impl FromStr for BatchRetryScope {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [BatchRetryScope::Failed, BatchRetryScope::All]
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("unknown retry scope `{text}`"))
    }
}

/// A batch's automatic re-run: when it ends with more than
/// `when_failed_ratio` of its jobs failed or cancelled, the jobs of `scope`
/// run again, up to `max_times` times; the batch's status is decided by
/// its last run. A batch cancelled by request is never re-run by itself.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRetryPolicy {
    /// Share of the batch's jobs, 0 ≤ ratio < 1, that may end failed or
    /// cancelled without a re-run.
    #[schema(minimum = 0, exclusive_maximum = 1)]
    pub when_failed_ratio: f64,
    /// Automatic re-runs at most, 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    pub max_times: u32,
    /// Which jobs run again. Default `failed`.
    #[serde(default)]
    pub scope: BatchRetryScope,
}

/// Most automatic re-runs a policy may ask for.
pub const MAX_BATCH_RETRIES: u32 = 100;

impl BatchRetryPolicy {
    fn check(&self, errors: &mut Vec<FieldError>) {
        if !(0.0..1.0).contains(&self.when_failed_ratio) {
            errors.push(FieldError::new(
                "/retry/when_failed_ratio",
                "must be at least 0 and less than 1",
            ));
        }
        if !(1..=MAX_BATCH_RETRIES).contains(&self.max_times) {
            errors.push(FieldError::new(
                "/retry/max_times",
                format!("must be between 1 and {MAX_BATCH_RETRIES}"),
            ));
        }
    }

    /// Failed or cancelled jobs out of `total` the policy lets pass: the
    /// largest n with n / total ≤ ratio (with the tolerance of
    /// `success_required`); one more re-runs the batch.
    pub fn failures_allowed(&self, total: u64) -> u64 {
        let exact = self.when_failed_ratio * total as f64;
        ((exact + 1e-9).floor().max(0.0) as u64).min(total)
    }
}

/// `POST /v1/batches/{id}/retry`. The body may be left out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRetryRequest {
    /// Which jobs run again. Default `failed`.
    #[serde(default)]
    pub scope: BatchRetryScope,
}

/// A validated batch, ready to be stored with its jobs.
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub id: BatchId,
    pub tenant: String,
    pub success_threshold: f64,
    /// Succeeded jobs it takes for the batch to succeed.
    pub success_required: u64,
    pub retry: Option<BatchRetryPolicy>,
    pub max_in_flight: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    pub callback_url: Option<String>,
    pub created_at: Timestamp,
}

impl NewBatch {
    /// The concurrency key its jobs hold under `max_in_flight`.
    pub fn window_key(&self) -> String {
        format!("batch:{}", self.id)
    }
}

/// Longest `callback_url`.
const MAX_URL_LEN: usize = 2_048;

/// Checks an outbound URL's shape: absolute `http` or `https` with a host.
pub fn check_callback_url(url: &str, pointer: &str) -> Option<FieldError> {
    let parsed = url::Url::parse(url).ok();
    let ok = url.len() <= MAX_URL_LEN
        && parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    (!ok).then(|| {
        FieldError::new(
            pointer,
            format!("must be an absolute http or https URL of at most {MAX_URL_LEN} bytes"),
        )
    })
}

impl BatchSpec {
    /// Checks the batch's own fields (its jobs are checked one by one by the
    /// engine, which knows the kinds and queues).
    pub fn validate_envelope(
        &self,
        tenant: &str,
        now: Timestamp,
    ) -> Result<NewBatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.jobs.is_empty() {
            errors.push(FieldError::new("/jobs", "a batch needs at least one job"));
        }
        let threshold = self.success_threshold.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&threshold) {
            errors.push(FieldError::new(
                "/success_threshold",
                "must be between 0 and 1",
            ));
        }
        if let Some(url) = &self.callback_url
            && let Some(error) = check_callback_url(url, "/callback_url")
        {
            errors.push(error);
        }
        if let Some(retry) = &self.retry {
            retry.check(&mut errors);
        }
        if let Some(window) = self.max_in_flight
            && !(1..=super::spec::MAX_CONCURRENCY_LIMIT).contains(&window)
        {
            errors.push(FieldError::new(
                "/max_in_flight",
                format!(
                    "must be between 1 and {}",
                    super::spec::MAX_CONCURRENCY_LIMIT
                ),
            ));
        }
        let metadata = self.metadata.clone().unwrap_or_default();
        errors.extend(check_metadata(&metadata, "/metadata"));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NewBatch {
            id: BatchId::new(),
            tenant: tenant.to_owned(),
            success_threshold: threshold,
            success_required: success_required(threshold, self.jobs.len() as u64),
            retry: self.retry,
            max_in_flight: self.max_in_flight,
            metadata,
            callback_url: self.callback_url.clone(),
            created_at: now,
        })
    }
}

/// Succeeded jobs out of `total` that meet `threshold`: the smallest n with
/// n / total ≥ threshold. The tolerance absorbs binary fractions (0.7 × 10
/// is 7.000000000000001 in floating point, and 7 of 10 meets 0.7).
pub fn success_required(threshold: f64, total: u64) -> u64 {
    let exact = threshold * total as f64;
    ((exact - 1e-9).ceil().max(0.0) as u64).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_count_jobs_without_floating_point_surprises() {
        assert_eq!(success_required(1.0, 10), 10);
        assert_eq!(success_required(0.7, 10), 7);
        assert_eq!(success_required(0.9, 10), 9);
        assert_eq!(success_required(0.5, 3), 2);
        assert_eq!(success_required(0.0, 3), 0);
        assert_eq!(success_required(0.333, 1000), 333);
    }

    #[test]
    fn a_retry_policy_lets_pass_at_most_its_share_of_failures() {
        let policy = |ratio| BatchRetryPolicy {
            when_failed_ratio: ratio,
            max_times: 1,
            scope: BatchRetryScope::Failed,
        };
        assert_eq!(policy(0.5).failures_allowed(10), 5);
        assert_eq!(policy(0.0).failures_allowed(10), 0);
        assert_eq!(policy(0.7).failures_allowed(10), 7);
        assert_eq!(policy(0.33).failures_allowed(3), 0);
        assert_eq!(policy(0.34).failures_allowed(3), 1);
        assert_eq!(policy(0.999).failures_allowed(10), 9);
    }
}
