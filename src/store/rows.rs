//! Rows of the schema, shared by both backends, and their conversion to
//! domain types: the columns have the same names and meanings on SQLite and
//! PostgreSQL, so one mapping reads both (and they cannot drift apart).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{
    Backoff, Batch, BatchCounts, BatchId, BatchResult, BatchRetryPolicy, Concurrency,
    ConcurrencyRange, DeliveryStatus, ErrorInfo, Gcra, Job, JobId, JobState, NewJob, Progress,
    QueueConfig, QueueDefaults, RateLimit, RateLimitRef, Timestamp, WebhookDelivery,
};
use crate::store::{
    ClaimedWebhook, Rescued, StoreError, WebhookAttempt, WebhookOutcome, WebhookOwner,
};

/// Every column of `jobs`, in `JobRow` order.
pub const JOB_COLUMNS: &str = "id, tenant, queue, kind, payload, state, priority, attempt, \
    max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, progress, result, \
    error, errors, cancel_requested, created_at, run_at, started_at, finished_at, batch_id, \
    depends_on, callback_url, concurrency_key, concurrency_limit, traceparent, tracestate, \
    rate_limit, rate_limit_key, expires_at";

#[derive(sqlx::FromRow)]
pub struct JobRow {
    pub(super) id: String,
    pub(super) tenant: String,
    pub(super) queue: String,
    pub(super) kind: String,
    pub(super) payload: String,
    pub(super) state: String,
    pub(super) priority: i64,
    pub(super) attempt: i64,
    pub(super) max_attempts: i64,
    pub(super) timeout_ms: i64,
    pub(super) backoff_base_ms: i64,
    pub(super) backoff_max_ms: i64,
    pub(super) key: Option<String>,
    pub(super) metadata: String,
    pub(super) progress: Option<String>,
    pub(super) result: Option<String>,
    pub(super) error: Option<String>,
    pub(super) errors: String,
    pub(super) cancel_requested: bool,
    pub(super) created_at: i64,
    pub(super) run_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
    pub(super) batch_id: Option<String>,
    pub(super) depends_on: String,
    pub(super) callback_url: Option<String>,
    pub(super) concurrency_key: Option<String>,
    pub(super) concurrency_limit: Option<i64>,
    pub(super) traceparent: Option<String>,
    pub(super) tracestate: Option<String>,
    pub(super) rate_limit: Option<String>,
    pub(super) rate_limit_key: Option<String>,
    pub(super) expires_at: Option<i64>,
}

fn corrupt(what: &str, id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("job {id}: {what}: {reason}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
    id: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, id, e))
}

fn parse_opt_json<T: serde::de::DeserializeOwned>(
    text: Option<&str>,
    what: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    text.map(|t| parse_json(t, what, id)).transpose()
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, StoreError> {
        let id = row.id.parse().map_err(|e| corrupt("id", &row.id, e))?;
        let status: JobState = row
            .state
            .parse()
            .map_err(|e| corrupt("state", &row.id, e))?;
        let payload: Value = parse_json(&row.payload, "payload", &row.id)?;
        let metadata: BTreeMap<String, String> = parse_json(&row.metadata, "metadata", &row.id)?;
        let progress: Option<Progress> =
            parse_opt_json(row.progress.as_deref(), "progress", &row.id)?;
        let result: Option<Value> = parse_opt_json(row.result.as_deref(), "result", &row.id)?;
        let error: Option<ErrorInfo> = parse_opt_json(row.error.as_deref(), "error", &row.id)?;
        let errors: Vec<ErrorInfo> = parse_json(&row.errors, "errors", &row.id)?;
        let depends_on: Vec<JobId> = parse_json(&row.depends_on, "depends_on", &row.id)?;
        let batch_id = row
            .batch_id
            .as_deref()
            .map(|text| text.parse().map_err(|e| corrupt("batch_id", &row.id, e)))
            .transpose()?;
        Ok(Job {
            id,
            tenant: row.tenant,
            queue: row.queue,
            kind: row.kind,
            payload,
            status,
            priority: row.priority as i32,
            attempt: row.attempt as u32,
            max_attempts: row.max_attempts as u32,
            timeout_ms: row.timeout_ms as u64,
            backoff: Backoff {
                base_ms: row.backoff_base_ms as u64,
                max_ms: row.backoff_max_ms as u64,
            },
            key: row.key,
            concurrency_key: row.concurrency_key,
            concurrency_limit: row
                .concurrency_limit
                .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            batch_id,
            depends_on,
            metadata,
            progress,
            result,
            error,
            errors,
            position: None,
            cancel_requested: row.cancel_requested,
            created_at: Timestamp::from_millis(row.created_at),
            run_at: Timestamp::from_millis(row.run_at),
            started_at: row.started_at.map(Timestamp::from_millis),
            finished_at: row.finished_at.map(Timestamp::from_millis),
            callback_url: row.callback_url,
            webhook: None,
            traceparent: row.traceparent,
            tracestate: row.tracestate,
            rate_limit: limit_ref(row.rate_limit, row.rate_limit_key),
            expires_at: row.expires_at.map(Timestamp::from_millis),
            waiting_reason: None,
            eligible_at: None,
        })
    }
}

pub fn jobs_from_rows(rows: Vec<JobRow>) -> Result<Vec<Job>, StoreError> {
    rows.into_iter().map(Job::try_from).collect()
}

/// Every column of `queues`, in `QueueRow` order.
pub const QUEUE_COLUMNS: &str = "name, concurrency, capacity, paused, max_attempts, timeout_ms, \
    backoff_base_ms, backoff_max_ms, rate_limit, rate_limit_key, expires_after_ms, concurrency_min";

#[derive(sqlx::FromRow)]
pub struct QueueRow {
    pub(super) name: String,
    pub(super) concurrency: i64,
    pub(super) capacity: i64,
    pub(super) paused: bool,
    pub(super) max_attempts: i64,
    pub(super) timeout_ms: i64,
    pub(super) backoff_base_ms: i64,
    pub(super) backoff_max_ms: i64,
    pub(super) rate_limit: Option<String>,
    pub(super) rate_limit_key: Option<String>,
    pub(super) expires_after_ms: Option<i64>,
    pub(super) concurrency_min: Option<i64>,
}

/// A stored limit reference: the name, and the key ('' or NULL for none).
pub fn limit_ref(name: Option<String>, key: Option<String>) -> Option<RateLimitRef> {
    name.map(|name| RateLimitRef {
        name,
        key: key.filter(|key| !key.is_empty()),
    })
}

impl From<QueueRow> for QueueConfig {
    fn from(row: QueueRow) -> Self {
        QueueConfig {
            name: row.name,
            concurrency: match row.concurrency_min {
                Some(min) => Concurrency::Adaptive(ConcurrencyRange {
                    min: min as u32,
                    max: row.concurrency as u32,
                }),
                None => Concurrency::Fixed(row.concurrency as u32),
            },
            capacity: row.capacity as u64,
            paused: row.paused,
            defaults: QueueDefaults {
                max_attempts: row.max_attempts as u32,
                timeout_ms: row.timeout_ms as u64,
                backoff: Backoff {
                    base_ms: row.backoff_base_ms as u64,
                    max_ms: row.backoff_max_ms as u64,
                },
                rate_limit: limit_ref(row.rate_limit, row.rate_limit_key),
                expires_after_ms: row.expires_after_ms.map(|ms| ms.max(1) as u64),
            },
        }
    }
}

/// Every column of `rate_limits`, in `LimitRow` order.
pub const LIMIT_COLUMNS: &str = "name, rate, per_ms, burst, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub struct LimitRow {
    pub(super) name: String,
    pub(super) rate: i64,
    pub(super) per_ms: i64,
    pub(super) burst: i64,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

/// A limit's parameters as stored, within the ranges the API admits.
pub fn stored_gcra(rate: i64, per_ms: i64, burst: i64) -> Gcra {
    Gcra {
        rate: rate.clamp(1, i64::from(u32::MAX)) as u32,
        per_ms: per_ms.max(1) as u64,
        burst: burst.clamp(1, i64::from(u32::MAX)) as u32,
    }
}

impl From<LimitRow> for RateLimit {
    fn from(row: LimitRow) -> Self {
        let Gcra {
            rate,
            per_ms,
            burst,
        } = stored_gcra(row.rate, row.per_ms, row.burst);
        RateLimit {
            name: row.name,
            rate,
            per_ms,
            burst,
            created_at: Timestamp::from_millis(row.created_at),
            updated_at: Timestamp::from_millis(row.updated_at),
        }
    }
}

pub fn to_json(value: &impl serde::Serialize) -> String {
    // Serializing plain domain values (maps with string keys, JSON values) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Every column of `batches` a `Batch` shows, in `BatchRow` order.
pub const BATCH_COLUMNS: &str = "id, tenant, total, success_threshold, metadata, callback_url, \
    status, cancel_requested, scheduled, queued, running, succeeded, failed, cancelled, \
    created_at, finished_at, retries, retry_when_failed_ratio, retry_max_times, retry_scope, \
    max_in_flight";

#[derive(sqlx::FromRow)]
pub struct BatchRow {
    pub(super) id: String,
    pub(super) tenant: String,
    pub(super) total: i64,
    pub(super) success_threshold: f64,
    pub(super) metadata: String,
    pub(super) callback_url: Option<String>,
    pub(super) status: String,
    pub(super) cancel_requested: bool,
    pub(super) scheduled: i64,
    pub(super) queued: i64,
    pub(super) running: i64,
    pub(super) succeeded: i64,
    pub(super) failed: i64,
    pub(super) cancelled: i64,
    pub(super) created_at: i64,
    pub(super) finished_at: Option<i64>,
    pub(super) retries: i64,
    pub(super) retry_when_failed_ratio: Option<f64>,
    pub(super) retry_max_times: i64,
    pub(super) retry_scope: Option<String>,
    pub(super) max_in_flight: Option<i64>,
}

impl BatchRow {
    /// The batch, with the ids of its jobs in submission order.
    pub fn into_batch(self, job_ids: Vec<JobId>) -> Result<Batch, StoreError> {
        let corrupt = |what: &str, reason: String| {
            StoreError::Corrupt(format!("batch {}: {what}: {reason}", self.id))
        };
        let count = |n: i64| n.max(0) as u64;
        let retry = match (self.retry_when_failed_ratio, &self.retry_scope) {
            (Some(when_failed_ratio), Some(scope)) => Some(BatchRetryPolicy {
                when_failed_ratio,
                max_times: u32::try_from(self.retry_max_times)
                    .map_err(|e| corrupt("retry_max_times", e.to_string()))?,
                scope: scope.parse().map_err(|e| corrupt("retry_scope", e))?,
            }),
            _ => None,
        };
        Ok(Batch {
            id: self
                .id
                .parse::<BatchId>()
                .map_err(|e| corrupt("id", e.to_string()))?,
            status: self.status.parse().map_err(|e| corrupt("status", e))?,
            total: count(self.total),
            counts: BatchCounts {
                scheduled: count(self.scheduled),
                queued: count(self.queued),
                running: count(self.running),
                succeeded: count(self.succeeded),
                failed: count(self.failed),
                cancelled: count(self.cancelled),
            },
            success_threshold: self.success_threshold,
            retry,
            retries: u32::try_from(self.retries).map_err(|e| corrupt("retries", e.to_string()))?,
            max_in_flight: self
                .max_in_flight
                .map(u32::try_from)
                .transpose()
                .map_err(|e| corrupt("max_in_flight", e.to_string()))?,
            in_flight: count(self.running),
            metadata: serde_json::from_str(&self.metadata)
                .map_err(|e| corrupt("metadata", e.to_string()))?,
            callback_url: self.callback_url.clone(),
            webhook: None,
            cancel_requested: self.cancel_requested,
            created_at: Timestamp::from_millis(self.created_at),
            finished_at: self.finished_at.map(Timestamp::from_millis),
            job_ids,
            tenant: self.tenant.clone(),
        })
    }
}

/// The columns of one partial result, in `ResultRow` order.
pub const RESULT_COLUMNS: &str = "batch_index, id, state, result, error, finished_at, batch_seq";

#[derive(sqlx::FromRow)]
pub struct ResultRow {
    pub(super) batch_index: i64,
    pub(super) id: String,
    pub(super) state: String,
    pub(super) result: Option<String>,
    pub(super) error: Option<String>,
    pub(super) finished_at: i64,
    pub(super) batch_seq: i64,
}

impl TryFrom<ResultRow> for BatchResult {
    type Error = StoreError;

    fn try_from(row: ResultRow) -> Result<Self, StoreError> {
        Ok(BatchResult {
            index: row.batch_index.max(0) as u32,
            job_id: row.id.parse().map_err(|e| corrupt("id", &row.id, e))?,
            status: row
                .state
                .parse()
                .map_err(|e| corrupt("state", &row.id, e))?,
            result: parse_opt_json(row.result.as_deref(), "result", &row.id)?,
            error: parse_opt_json(row.error.as_deref(), "error", &row.id)?,
            finished_at: Timestamp::from_millis(row.finished_at),
            seq: row.batch_seq.max(0) as u64,
        })
    }
}

/// Job ids as stored (text), parsed.
pub fn parse_ids(texts: &[String]) -> Result<Vec<JobId>, StoreError> {
    texts
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e| StoreError::Corrupt(format!("job id {text}: {e}")))
        })
        .collect()
}

/// A job as a submission stores it: nothing run, nothing finished.
pub fn job_from_new(job: NewJob) -> Job {
    Job {
        id: job.id,
        tenant: job.tenant,
        queue: job.queue,
        kind: job.kind,
        payload: job.payload,
        status: job.state,
        priority: job.priority,
        attempt: 0,
        max_attempts: job.max_attempts,
        timeout_ms: job.timeout_ms,
        backoff: job.backoff,
        key: job.key,
        concurrency_limit: job.concurrency.as_ref().map(|(_, limit)| *limit),
        concurrency_key: job.concurrency.map(|(key, _)| key),
        batch_id: job.batch_id,
        depends_on: job.depends_on,
        metadata: job.metadata,
        progress: None,
        result: None,
        error: None,
        errors: Vec::new(),
        position: None,
        cancel_requested: false,
        created_at: job.created_at,
        run_at: job.run_at,
        started_at: None,
        finished_at: None,
        callback_url: job.callback_url,
        webhook: None,
        traceparent: job.trace.as_ref().map(|trace| trace.traceparent.clone()),
        tracestate: job.trace.and_then(|trace| trace.tracestate),
        rate_limit: job.rate_limit,
        expires_at: job.expires_at,
        waiting_reason: None,
        eligible_at: None,
    }
}

#[derive(sqlx::FromRow)]
pub struct DeliveryRow {
    pub(super) id: String,
    pub(super) event: String,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) last_error: Option<String>,
    pub(super) last_attempt_at: Option<i64>,
    pub(super) next_attempt_at: i64,
    pub(super) delivered_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for WebhookDelivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let status = DeliveryStatus::parse(&row.status).ok_or_else(|| {
            StoreError::Corrupt(format!("webhook {}: status `{}`", row.id, row.status))
        })?;
        Ok(WebhookDelivery {
            id: row.id,
            event: row.event,
            status,
            attempts: row.attempts.max(0) as u32,
            last_error: row.last_error,
            last_attempt_at: row.last_attempt_at.map(Timestamp::from_millis),
            next_attempt_at: (status == DeliveryStatus::Pending)
                .then(|| Timestamp::from_millis(row.next_attempt_at)),
            delivered_at: row.delivered_at.map(Timestamp::from_millis),
        })
    }
}

/// A webhook row as a claim returns it.
#[derive(sqlx::FromRow)]
pub struct ClaimedRow {
    pub(super) id: String,
    pub(super) tenant: String,
    pub(super) job_id: Option<String>,
    pub(super) batch_id: Option<String>,
    pub(super) event: String,
    pub(super) url: String,
    pub(super) body: Option<String>,
    pub(super) attempts: i64,
    pub(super) created_at: i64,
}

impl TryFrom<ClaimedRow> for ClaimedWebhook {
    type Error = StoreError;

    fn try_from(row: ClaimedRow) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt(format!("webhook {}: {reason}", row.id));
        let owner = match (&row.job_id, &row.batch_id) {
            (Some(job), _) => WebhookOwner::Job(
                job.parse()
                    .map_err(|e: uuid::Error| corrupt(e.to_string()))?,
            ),
            (None, Some(batch)) => WebhookOwner::Batch(
                batch
                    .parse()
                    .map_err(|e: uuid::Error| corrupt(e.to_string()))?,
            ),
            (None, None) => return Err(corrupt("neither job nor batch".into())),
        };
        Ok(ClaimedWebhook {
            id: row.id,
            tenant: row.tenant,
            owner,
            event: row.event,
            url: row.url,
            body: row.body,
            attempts: row.attempts.max(0) as u32,
            created_at: Timestamp::from_millis(row.created_at),
        })
    }
}

/// What recording `attempt` writes: the delivery's status, the error (kept
/// from before when none), the next attempt (kept when none) and the time
/// of delivery.
pub fn attempt_columns(
    attempt: &WebhookAttempt,
) -> (DeliveryStatus, Option<&str>, Option<i64>, Option<i64>) {
    match &attempt.outcome {
        WebhookOutcome::Delivered => (
            DeliveryStatus::Delivered,
            None,
            None,
            Some(attempt.at.as_millis()),
        ),
        WebhookOutcome::Retry {
            error,
            next_attempt_at,
        } => (
            DeliveryStatus::Pending,
            Some(error.as_str()),
            Some(next_attempt_at.as_millis()),
            None,
        ),
        WebhookOutcome::Failed { error } => {
            (DeliveryStatus::Failed, Some(error.as_str()), None, None)
        }
    }
}

/// A job a rescue took back: `RETURNING id, queue, state, batch_id, tenant`.
#[derive(sqlx::FromRow)]
pub struct RescuedRow {
    pub(super) id: String,
    pub(super) queue: String,
    pub(super) state: String,
    pub(super) batch_id: Option<String>,
    pub(super) tenant: String,
}

impl RescuedRow {
    /// The rescued job and, when the rescue ended it, its batch (if any).
    pub fn into_rescued(self) -> Result<(Rescued, Option<BatchId>), StoreError> {
        let corrupt = |e: String| StoreError::Corrupt(format!("job {}: {e}", self.id));
        let job = Rescued {
            id: self
                .id
                .parse()
                .map_err(|e: uuid::Error| corrupt(e.to_string()))?,
            tenant: self.tenant.clone(),
            queue: self.queue.clone(),
            state: self.state.parse().map_err(corrupt)?,
        };
        let batch_id = match &self.batch_id {
            Some(batch) if job.state.is_terminal() => Some(
                batch
                    .parse::<BatchId>()
                    .map_err(|e| corrupt(e.to_string()))?,
            ),
            _ => None,
        };
        Ok((job, batch_id))
    }
}
