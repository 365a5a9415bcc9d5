//! What a client submits (`JobSpec`), its validation, and the validated `NewJob`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Backoff, BatchId, JobId, JobState, QueueConfig, RateLimitRef, Timestamp};

/// The pointer of a job inside a batch body.
pub fn job_pointer(index: usize) -> String {
    format!("/jobs/{index}")
}

pub(crate) const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;
/// How far ahead `run_at`/`delay_ms` may point: one year.
pub(crate) const MAX_DELAY_MS: u64 = 366 * 24 * 3_600_000;
const MAX_KEY_LEN: usize = 255;
/// Largest `concurrency_limit`: the most slots a queue can have.
pub const MAX_CONCURRENCY_LIMIT: u32 = super::QueueConfig::MAX_CONCURRENCY;
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_VALUE_LEN: usize = 1_024;
/// Most dependencies one job may have.
pub const MAX_DEPENDENCIES: usize = 100;

/// One offending field: a JSON Pointer into the request body (or, for a
/// query parameter, its name in `parameter`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub pointer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            parameter: None,
            message: message.into(),
        }
    }

    /// An error in a query parameter; `pointer` is empty (there is no body).
    pub fn parameter(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: String::new(),
            parameter: Some(name.into()),
            message: message.into(),
        }
    }
}

/// What to do when a job's `key` is already held by an active job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// 409 `key_conflict` naming the holder.
    #[default]
    Reject,
    /// 200 with the holder; nothing is enqueued.
    Existing,
    /// Cancel the holder (running or not) and enqueue this job.
    Replace,
}

impl OnConflict {
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Reject => "reject",
            OnConflict::Existing => "existing",
            OnConflict::Replace => "replace",
        }
    }
}

/// A dependency: a job id, or — inside a batch — the index of an earlier
/// job of the same batch, so that a whole pipeline is one request.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DependencyRef {
    /// Index of an earlier job in the same batch's `jobs` array.
    Index(u64),
    /// The id of an existing job.
    Id(String),
}

/// Where a job is being validated: alone, or at `index` of a batch whose
/// jobs will get `ids`.
#[derive(Clone, Copy, Debug)]
pub struct SpecContext<'a> {
    pub id: JobId,
    pub batch: Option<(BatchId, usize, &'a [JobId])>,
}

/// A job submission. Unknown fields are rejected.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A registered kind (`GET /v1/kinds`).
    pub kind: String,
    /// The kind's input, validated against its schema. Default `{}`.
    #[serde(default)]
    pub payload: Option<Value>,
    /// A configured queue. Default `default`.
    #[serde(default)]
    pub queue: Option<String>,
    /// −100..=100; higher runs first, FIFO among equals. Default 0. Among
    /// several tenants' ready jobs, claims take turns by tenant first.
    #[serde(default)]
    #[schema(minimum = -100, maximum = 100)]
    pub priority: Option<i64>,
    /// Run no earlier than this (RFC 3339). Exclusive with `delay_ms`.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Run no earlier than this many ms from now. Exclusive with `run_at`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31_622_400_000_i64)]
    pub delay_ms: Option<i64>,
    /// 1..=100. Default: the queue's (3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
    /// Deadline of one attempt. Default: the queue's (60 000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604_800_000_i64)]
    pub timeout_ms: Option<i64>,
    /// Default: the queue's (base 1 000, cap 600 000).
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Unique among the tenant's active (scheduled, queued, running) jobs.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub key: Option<String>,
    /// When `key` is held. Default `reject`.
    #[serde(default)]
    pub on_conflict: Option<OnConflict>,
    /// With `concurrency_limit`: at most that many running jobs of the
    /// tenant share this key, across every queue (per-customer fairness).
    /// Both or neither.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub concurrency_key: Option<String>,
    /// 1..=10 000: running jobs allowed to share `concurrency_key`. When jobs
    /// of one key carry different limits, each job's own limit decides
    /// whether it may start.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    pub concurrency_limit: Option<i64>,
    /// Labels, returned as given and filterable with `metadata.K=V`.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Jobs that must succeed before this one starts; their results are
    /// handed to it. If one fails or is cancelled, this job is cancelled.
    /// Inside a batch an integer names an earlier job of the batch.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub depends_on: Option<Vec<DependencyRef>>,
    /// Receives a signed POST (Standard Webhooks) when the job ends:
    /// `job.succeeded`, `job.failed` or `job.cancelled`.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub callback_url: Option<String>,
    /// Hold the job's starts to a rate limit (`PUT /v1/limits/{name}`),
    /// optionally per `key`. Default: the queue's, if it names one.
    #[serde(default)]
    pub rate_limit: Option<RateLimitRef>,
    /// If the job has not started by then (RFC 3339), it ends `cancelled`
    /// with `error.code: expired`, without an attempt. Exclusive with
    /// `expires_after_ms`. Must come after `run_at`.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// As `expires_at`, this many ms after submission. Default: the
    /// queue's `expires_after_ms`, if set.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400_000_i64)]
    pub expires_after_ms: Option<i64>,
}

/// A validated job, ready to be stored.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: String,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub state: JobState,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff: Backoff,
    pub key: Option<String>,
    pub on_conflict: OnConflict,
    /// `(concurrency_key, concurrency_limit)`: both or neither.
    pub concurrency: Option<(String, u32)>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub run_at: Timestamp,
    pub batch_id: Option<BatchId>,
    pub batch_index: Option<u32>,
    /// Resolved dependency ids, in the order given, without repeats.
    pub depends_on: Vec<JobId>,
    pub callback_url: Option<String>,
    /// The submission's W3C trace context, if it carried one.
    pub trace: Option<super::TraceContext>,
    pub rate_limit: Option<RateLimitRef>,
    /// Not started by then: cancelled as `expired`.
    pub expires_at: Option<Timestamp>,
}

/// Metadata keys become filter parameters (`metadata.K=V`) and JSON paths:
/// keep them to a plain alphabet.
pub fn valid_metadata_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

pub(crate) fn check_backoff(backoff: Backoff, pointer: &str) -> Result<Backoff, Vec<FieldError>> {
    let mut errors = Vec::new();
    if !(1..=86_400_000).contains(&backoff.base_ms) {
        errors.push(FieldError::new(
            format!("{pointer}/base_ms"),
            "must be between 1 and 86400000",
        ));
    }
    if !(1..=86_400_000).contains(&backoff.max_ms) {
        errors.push(FieldError::new(
            format!("{pointer}/max_ms"),
            "must be between 1 and 86400000",
        ));
    } else if backoff.max_ms < backoff.base_ms {
        errors.push(FieldError::new(
            format!("{pointer}/max_ms"),
            "must not be less than base_ms",
        ));
    }
    if errors.is_empty() {
        Ok(backoff)
    } else {
        Err(errors)
    }
}

impl JobSpec {
    /// Checks every field against its rules and fills defaults from `queue`.
    /// Pointers are relative to the request body (`/jobs/3/...` inside a
    /// batch). The kind and payload schema are checked elsewhere.
    pub fn validate(
        self,
        tenant: &str,
        queue: &QueueConfig,
        now: Timestamp,
        ctx: SpecContext<'_>,
    ) -> Result<NewJob, Vec<FieldError>> {
        let at = match ctx.batch {
            Some((_, index, _)) => job_pointer(index),
            None => String::new(),
        };
        let mut errors = Vec::new();
        let pointer = |field: &str| format!("{at}/{field}");

        let priority = match self.priority {
            None => 0,
            Some(p) if (-100..=100).contains(&p) => p as i32,
            Some(_) => {
                errors.push(FieldError::new(
                    pointer("priority"),
                    "must be between -100 and 100",
                ));
                0
            }
        };

        let run_at = match (&self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    pointer("delay_ms"),
                    "give either run_at or delay_ms, not both",
                ));
                now
            }
            (Some(text), None) => match Timestamp::parse_rfc3339(text) {
                Some(at) if at.as_millis() <= now.as_millis() + MAX_DELAY_MS as i64 => at.max(now),
                Some(_) => {
                    errors.push(FieldError::new(
                        pointer("run_at"),
                        "must be at most one year ahead",
                    ));
                    now
                }
                None => {
                    errors.push(FieldError::new(
                        pointer("run_at"),
                        "must be an RFC 3339 timestamp, e.g. 2026-11-23T10:00:00Z",
                    ));
                    now
                }
            },
            (None, Some(delay)) if (0..=MAX_DELAY_MS as i64).contains(&delay) => now.plus_ms(delay),
            (None, Some(_)) => {
                errors.push(FieldError::new(
                    pointer("delay_ms"),
                    format!("must be between 0 and {MAX_DELAY_MS}"),
                ));
                now
            }
            (None, None) => now,
        };

        let max_attempts = match self.max_attempts {
            None => queue.defaults.max_attempts,
            Some(n) if (1..=100).contains(&n) => n as u32,
            Some(_) => {
                errors.push(FieldError::new(
                    pointer("max_attempts"),
                    "must be between 1 and 100",
                ));
                1
            }
        };

        let timeout_ms = match self.timeout_ms {
            None => queue.defaults.timeout_ms,
            Some(ms) if (1..=MAX_TIMEOUT_MS as i64).contains(&ms) => ms as u64,
            Some(_) => {
                errors.push(FieldError::new(
                    pointer("timeout_ms"),
                    format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                ));
                1
            }
        };

        let backoff = match self.backoff {
            None => queue.defaults.backoff,
            Some(backoff) => match check_backoff(backoff, &pointer("backoff")) {
                Ok(backoff) => backoff,
                Err(mut more) => {
                    errors.append(&mut more);
                    Backoff::default()
                }
            },
        };

        errors.extend(check_key(self.key.as_deref(), pointer("key")));
        if self.on_conflict.is_some() && self.key.is_none() {
            errors.push(FieldError::new(
                pointer("on_conflict"),
                "only applies together with key",
            ));
        }

        let concurrency = check_concurrency(
            self.concurrency_key,
            self.concurrency_limit,
            &pointer,
            &mut errors,
        );

        let metadata = self.metadata.unwrap_or_default();
        errors.extend(check_metadata(&metadata, &pointer("metadata")));
        let depends_on = resolve_dependencies(
            self.depends_on.as_deref().unwrap_or_default(),
            ctx,
            &pointer("depends_on"),
            &mut errors,
        );

        if let Some(url) = &self.callback_url
            && let Some(error) = super::check_callback_url(url, &pointer("callback_url"))
        {
            errors.push(error);
        }

        let rate_limit = match self.rate_limit {
            Some(reference) => {
                let mut more = reference.check(&pointer("rate_limit"));
                let valid = more.is_empty();
                errors.append(&mut more);
                valid.then_some(reference)
            }
            None => queue.defaults.rate_limit.clone(),
        };
        let expires_at = check_expiry(
            self.expires_at.as_deref(),
            self.expires_after_ms,
            queue.defaults.expires_after_ms,
            (now, run_at),
            &pointer,
            &mut errors,
        );

        if !errors.is_empty() {
            return Err(errors);
        }
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        Ok(NewJob {
            id: ctx.id,
            tenant: tenant.to_owned(),
            queue: queue.name.clone(),
            kind: self.kind,
            payload: self
                .payload
                .unwrap_or_else(|| Value::Object(Default::default())),
            state,
            priority,
            max_attempts,
            timeout_ms,
            backoff,
            key: self.key,
            on_conflict: self.on_conflict.unwrap_or_default(),
            concurrency,
            metadata,
            created_at: now,
            run_at,
            batch_id: ctx.batch.map(|(batch, _, _)| batch),
            batch_index: ctx.batch.map(|(_, index, _)| index as u32),
            depends_on,
            callback_url: self.callback_url,
            trace: None,
            rate_limit,
            expires_at,
        })
    }
}

/// The instant a job not started by then expires: `expires_at`, or
/// `expires_after_ms` from `now`, or the queue's default from `now`; it
/// must come after `run_at`, or the job could never start.
fn check_expiry(
    expires_at: Option<&str>,
    expires_after_ms: Option<i64>,
    queue_default_ms: Option<u64>,
    (now, run_at): (Timestamp, Timestamp),
    pointer: &impl Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<Timestamp> {
    let (field, at) = match (expires_at, expires_after_ms) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                pointer("expires_after_ms"),
                "give either expires_at or expires_after_ms, not both",
            ));
            return None;
        }
        (Some(text), None) => match Timestamp::parse_rfc3339(text) {
            Some(at) => ("expires_at", at),
            None => {
                errors.push(FieldError::new(
                    pointer("expires_at"),
                    "must be an RFC 3339 timestamp, e.g. 2026-11-23T10:00:00Z",
                ));
                return None;
            }
        },
        (None, Some(ms)) if (1..=MAX_DELAY_MS as i64).contains(&ms) => {
            ("expires_after_ms", now.plus_ms(ms))
        }
        (None, Some(_)) => {
            errors.push(FieldError::new(
                pointer("expires_after_ms"),
                format!("must be between 1 and {MAX_DELAY_MS}"),
            ));
            return None;
        }
        // A queue's default counts from submission too; a job delayed past
        // it gets none rather than a refusal it did not ask for.
        (None, None) => {
            let at = now.plus_ms(queue_default_ms? as i64);
            return (at > run_at).then_some(at);
        }
    };
    if at <= run_at {
        errors.push(FieldError::new(
            pointer(field),
            "must come after the job's run_at (and after now)",
        ));
        return None;
    }
    Some(at)
}

/// A `key` or `concurrency_key`: 1 to 255 bytes, any characters.
fn check_key(key: Option<&str>, pointer: String) -> Option<FieldError> {
    key.filter(|key| key.is_empty() || key.len() > MAX_KEY_LEN)
        .map(|_| FieldError::new(pointer, format!("must be 1 to {MAX_KEY_LEN} bytes")))
}

/// Checks `concurrency_key` and `concurrency_limit`: both or neither (the
/// missing one is reported), a key of 1 to 255 bytes, a limit of 1 to
/// `MAX_CONCURRENCY_LIMIT`.
fn check_concurrency(
    key: Option<String>,
    limit: Option<i64>,
    pointer: &impl Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<(String, u32)> {
    let before = errors.len();
    errors.extend(check_key(key.as_deref(), pointer("concurrency_key")));
    if let Some(limit) = limit
        && !(1..=i64::from(MAX_CONCURRENCY_LIMIT)).contains(&limit)
    {
        errors.push(FieldError::new(
            pointer("concurrency_limit"),
            format!("must be between 1 and {MAX_CONCURRENCY_LIMIT}"),
        ));
    }
    match (key, limit) {
        (Some(key), Some(limit)) if errors.len() == before => Some((key, limit as u32)),
        (Some(_), None) => {
            errors.push(FieldError::new(
                pointer("concurrency_limit"),
                "required together with concurrency_key",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(FieldError::new(
                pointer("concurrency_key"),
                "required together with concurrency_limit",
            ));
            None
        }
        _ => None,
    }
}

/// Checks labels: few, short, keys of a plain alphabet.
pub(crate) fn check_metadata(metadata: &BTreeMap<String, String>, at: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if metadata.len() > MAX_METADATA_ENTRIES {
        errors.push(FieldError::new(
            at,
            format!("at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    for (key, value) in metadata {
        let field = format!("{at}/{}", escape_pointer(key));
        if !valid_metadata_key(key) {
            errors.push(FieldError::new(
                field,
                "keys are 1 to 64 of A-Z a-z 0-9 _ - . : /",
            ));
        } else if value.len() > MAX_METADATA_VALUE_LEN {
            errors.push(FieldError::new(
                field,
                format!("values are at most {MAX_METADATA_VALUE_LEN} bytes"),
            ));
        }
    }
    errors
}

/// Turns references into ids: indexes must name an earlier job of the same
/// batch (which also rules out cycles), ids must parse. Whether an id names
/// an existing job is checked by the store, atomically with the insert.
fn resolve_dependencies(
    refs: &[DependencyRef],
    ctx: SpecContext<'_>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<JobId> {
    if refs.len() > MAX_DEPENDENCIES {
        errors.push(FieldError::new(
            at,
            format!("at most {MAX_DEPENDENCIES} dependencies"),
        ));
        return Vec::new();
    }
    let mut ids: Vec<JobId> = Vec::with_capacity(refs.len());
    for (position, reference) in refs.iter().enumerate() {
        let pointer = format!("{at}/{position}");
        let id = match (reference, ctx.batch) {
            (DependencyRef::Id(text), _) => match text.parse::<JobId>() {
                Ok(id) => id,
                Err(_) => {
                    errors.push(FieldError::new(pointer, "not a job id"));
                    continue;
                }
            },
            (DependencyRef::Index(n), Some((_, index, batch_ids))) => {
                match usize::try_from(*n).ok().filter(|n| *n < index) {
                    Some(n) => batch_ids[n],
                    None => {
                        errors.push(FieldError::new(
                            pointer,
                            format!(
                                "an index must name an earlier job of this batch (0 to {})",
                                index as i64 - 1
                            ),
                        ));
                        continue;
                    }
                }
            }
            (DependencyRef::Index(_), None) => {
                errors.push(FieldError::new(
                    pointer,
                    "indexes name jobs of the same batch; outside a batch give job ids",
                ));
                continue;
            }
        };
        if id == ctx.id {
            errors.push(FieldError::new(pointer, "a job cannot depend on itself"));
        } else if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Escapes a key for use inside a JSON Pointer (RFC 6901).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alone() -> SpecContext<'static> {
        SpecContext {
            id: JobId::new(),
            batch: None,
        }
    }

    fn spec(json: Value) -> JobSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_invalid_field_is_reported_with_its_pointer() {
        let queue = QueueConfig::new("default");
        let errors = spec(serde_json::json!({
            "kind": "noop", "priority": 101, "max_attempts": 0, "timeout_ms": -1,
            "run_at": "soon", "metadata": {"bad key": "v"}
        }))
        .validate("default", &queue, Timestamp::now(), alone())
        .unwrap_err();
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/priority",
                "/run_at",
                "/max_attempts",
                "/timeout_ms",
                "/metadata/bad key"
            ]
        );
    }

    #[test]
    fn a_concurrency_key_and_its_limit_come_together_or_not_at_all() {
        let queue = QueueConfig::new("default");
        let pointers_of = |json: Value| {
            spec(json)
                .validate("default", &queue, Timestamp::now(), alone())
                .map(|job| job.concurrency)
                .map_err(|errors| errors.into_iter().map(|e| e.pointer).collect::<Vec<_>>())
        };
        assert_eq!(
            pointers_of(serde_json::json!({"kind": "noop", "concurrency_key": "a"})),
            Err(vec!["/concurrency_limit".to_owned()])
        );
        assert_eq!(
            pointers_of(serde_json::json!({"kind": "noop", "concurrency_limit": 1})),
            Err(vec!["/concurrency_key".to_owned()])
        );
        assert_eq!(
            pointers_of(
                serde_json::json!({"kind": "noop", "concurrency_key": "", "concurrency_limit": 0})
            ),
            Err(vec![
                "/concurrency_key".to_owned(),
                "/concurrency_limit".to_owned()
            ])
        );
        assert_eq!(
            pointers_of(
                serde_json::json!({"kind": "noop", "concurrency_key": "a", "concurrency_limit": 10_000})
            ),
            Ok(Some(("a".to_owned(), 10_000)))
        );
        assert_eq!(pointers_of(serde_json::json!({"kind": "noop"})), Ok(None));
    }

    #[test]
    fn defaults_come_from_the_queue_and_delays_schedule_the_job() {
        let mut queue = QueueConfig::new("mail");
        queue.defaults.max_attempts = 7;
        let now = Timestamp::from_millis(1_000);
        let job = spec(serde_json::json!({"kind": "noop", "delay_ms": 500}))
            .validate("default", &queue, now, alone())
            .unwrap();
        assert_eq!(job.max_attempts, 7);
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.run_at, Timestamp::from_millis(1_500));
        assert_eq!(job.payload, serde_json::json!({}));
    }
}
