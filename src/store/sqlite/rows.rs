//! Rows of the SQLite schema and their conversion to domain types.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{
    Backoff, ErrorInfo, Job, JobState, Progress, QueueConfig, QueueDefaults, Timestamp,
};
use crate::store::StoreError;

/// Every column of `jobs`, in `JobRow` order.
pub const JOB_COLUMNS: &str = "id, tenant, queue, kind, payload, state, priority, attempt, \
    max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, progress, result, \
    error, errors, cancel_requested, created_at, run_at, started_at, finished_at";

#[derive(sqlx::FromRow)]
pub struct JobRow {
    id: String,
    tenant: String,
    queue: String,
    kind: String,
    payload: String,
    state: String,
    priority: i64,
    attempt: i64,
    max_attempts: i64,
    timeout_ms: i64,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
    key: Option<String>,
    metadata: String,
    progress: Option<String>,
    result: Option<String>,
    error: Option<String>,
    errors: String,
    cancel_requested: i64,
    created_at: i64,
    run_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
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

impl JobRow {
    /// Reads a row of `SELECT {JOB_COLUMNS}` (or `RETURNING {JOB_COLUMNS}`)
    /// on the writer's connection.
    pub fn from_writer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            tenant: row.get(1)?,
            queue: row.get(2)?,
            kind: row.get(3)?,
            payload: row.get(4)?,
            state: row.get(5)?,
            priority: row.get(6)?,
            attempt: row.get(7)?,
            max_attempts: row.get(8)?,
            timeout_ms: row.get(9)?,
            backoff_base_ms: row.get(10)?,
            backoff_max_ms: row.get(11)?,
            key: row.get(12)?,
            metadata: row.get(13)?,
            progress: row.get(14)?,
            result: row.get(15)?,
            error: row.get(16)?,
            errors: row.get(17)?,
            cancel_requested: row.get(18)?,
            created_at: row.get(19)?,
            run_at: row.get(20)?,
            started_at: row.get(21)?,
            finished_at: row.get(22)?,
        })
    }
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
            metadata,
            progress,
            result,
            error,
            errors,
            position: None,
            cancel_requested: row.cancel_requested != 0,
            created_at: Timestamp::from_millis(row.created_at),
            run_at: Timestamp::from_millis(row.run_at),
            started_at: row.started_at.map(Timestamp::from_millis),
            finished_at: row.finished_at.map(Timestamp::from_millis),
        })
    }
}

pub fn jobs_from_rows(rows: Vec<JobRow>) -> Result<Vec<Job>, StoreError> {
    rows.into_iter().map(Job::try_from).collect()
}

/// Every column of `queues`, in `QueueRow` order.
pub const QUEUE_COLUMNS: &str = "name, concurrency, capacity, paused, max_attempts, timeout_ms, \
    backoff_base_ms, backoff_max_ms";

#[derive(sqlx::FromRow)]
pub struct QueueRow {
    name: String,
    concurrency: i64,
    capacity: i64,
    paused: i64,
    max_attempts: i64,
    timeout_ms: i64,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
}

impl From<QueueRow> for QueueConfig {
    fn from(row: QueueRow) -> Self {
        QueueConfig {
            name: row.name,
            concurrency: row.concurrency as u32,
            capacity: row.capacity as u64,
            paused: row.paused != 0,
            defaults: QueueDefaults {
                max_attempts: row.max_attempts as u32,
                timeout_ms: row.timeout_ms as u64,
                backoff: Backoff {
                    base_ms: row.backoff_base_ms as u64,
                    max_ms: row.backoff_max_ms as u64,
                },
            },
        }
    }
}

pub fn to_json(value: &impl serde::Serialize) -> String {
    // Serializing plain domain values (maps with string keys, JSON values) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}
