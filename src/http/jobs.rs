//! `/v1/jobs`: submit, read, list, cancel and retry jobs.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::error::{ApiError, Problem};
use super::extract::{IdempotencyHeader, JobIdPath, JsonBody, QueryPairs, parse_wait};
use super::idempotency::{idempotency_key, replayed};
use super::quotas::{RateGate, add_rate_headers, take_rate, with_rate_headers};
use super::traces::RequestTrace;
use crate::domain::JobFilter;
use crate::domain::{FieldError, Job, JobSpec, JobState, valid_metadata_key};
use crate::engine::{Cancelled, Submitted};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1_000;

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<Job>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn location(id: impl std::fmt::Display) -> (header::HeaderName, String) {
    (header::LOCATION, format!("/v1/jobs/{id}"))
}

/// Submit a job.
///
/// Validated against its kind's payload schema and its queue, then durably
/// stored before the answer: a `202` survives a crash. A full queue answers
/// `429` with `Retry-After`. With `key`, `on_conflict` decides what happens
/// when an active job holds the key. With an `Idempotency-Key` header, a
/// repeat of the same request returns the original response.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    security(("bearer" = ["write"])),
    request_body = JobSpec,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 hours."),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: kept with the jobs and returned on them as `traceparent` (a malformed one is ignored)."),
        ("tracestate" = Option<String>, Header, description = "W3C trace state, kept with a valid `traceparent`."),
    ),
    responses(
        (status = 202, description = "Accepted and stored.", body = Job,
            headers(
                ("Location" = String, description = "The job's URL"),
                ("RateLimit-Policy" = String, description = "When the tenant has a `submit_rate`: `\"submit\";q=<submit_burst>;w=<seconds>`"),
                ("RateLimit" = String, description = "When the tenant has a `submit_rate`: `\"submit\";r=<jobs the key may submit now>;t=<seconds until the burst is back>`"),
            )),
        (status = 200, description = "`on_conflict: existing`: the job that holds the key.", body = Job),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`body_timeout`: the body did not arrive within `SPOOL_BODY_READ_TIMEOUT`.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_conflict`: the key is held.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the length it declares, is over the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid: `validation_failed`, `unknown_kind`, `unknown_queue`, `idempotency_mismatch`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`queue_full`: the queue has no room; `tenant_quota`: the tenant has `max_pending` jobs waiting; `rate_limited`: the key submits faster than its tenant's `submit_rate`. See `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds"),
                ("RateLimit-Policy" = String, description = "`tenant_quota` and `rate_limited`: the quotas in force (draft-ietf-httpapi-ratelimit-headers), `\"pending\";q=<max_pending>` and `\"submit\";q=<submit_burst>;w=<seconds>`"),
                ("RateLimit" = String, description = "`tenant_quota` and `rate_limited`: what is left of them, `\"pending\";r=<room>;t=<seconds>`, `\"submit\";r=<jobs>;t=<seconds>`"),
            )),
        (status = 503, description = "`shutting_down` or `storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_job(
    WriteAccess(caller): WriteAccess,
    State(state): State<AppState>,
    IdempotencyHeader(header): IdempotencyHeader,
    trace: Option<Extension<RequestTrace>>,
    body: JsonBody<JobSpec>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(header.as_ref(), || body.fingerprint("POST /v1/jobs"))?;
    let rate = match take_rate(&state, &caller, 1, idempotency.as_ref(), "/v1/jobs").await? {
        RateGate::Open(rate) => rate,
        RateGate::Replayed(response) => return Ok(response),
    };
    let submitted = state
        .engine
        .submit_job(
            &caller.tenant,
            body.value,
            idempotency,
            trace.and_then(|Extension(trace)| trace.for_jobs),
        )
        .await
        .map_err(|error| with_rate_headers(error.into(), rate.as_ref()))?;
    let mut response = match submitted {
        Submitted::Created(job) => {
            (StatusCode::ACCEPTED, [location(job.id)], Json(job)).into_response()
        }
        Submitted::Existing(job) => (StatusCode::OK, [location(job.id)], Json(job)).into_response(),
        Submitted::Replayed(stored) => replayed(&stored, "/v1/jobs"),
    };
    add_rate_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Get a job.
///
/// `position` is the job's place among its queue's queued jobs (0 = next).
/// With `wait=N` the answer is held until the job is terminal (it comes
/// within milliseconds of the end) or N seconds passed; either way it is
/// the job as it is then.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, description = "Job id"),
        ("wait" = Option<u64>, Query, description = "Long-poll: seconds (0..=60) to wait for the job to be terminal", minimum = 0, maximum = 60),
    ),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_job(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    JobIdPath(id): JobIdPath,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<Job>, ApiError> {
    let wait = parse_wait(pairs)?;
    Ok(Json(
        state.engine.wait_for_job(&caller.tenant, id, wait).await?,
    ))
}

/// List jobs, newest first.
///
/// Filters combine with AND; `metadata=K=V` (repeatable) or `metadata.K=V`
/// matches a metadata label. Each
/// filter is served by an index, so a page costs about what it returns.
/// Lists run a few at a time: when too many are running for
/// seconds, a list is refused with 503 `busy` and `Retry-After`, while
/// reads of single jobs and `/readyz` are still served.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    security(("bearer" = ["read"])),
    params(
        ("queue" = Option<String>, Query, description = "Only this queue"),
        ("status" = Option<JobState>, Query, description = "Only this status"),
        ("kind" = Option<String>, Query, description = "Only this kind"),
        ("key" = Option<String>, Query, description = "Only jobs with this key"),
        ("batch_id" = Option<String>, Query, description = "Only the jobs of this batch"),
        ("metadata" = Option<Vec<String>>, Query, style = Form, explode, example = json!(["user=42"]),
            description = "Only jobs with this metadata label, as `K=V`; repeat it for several (all must match). `metadata.K=V` is the same filter for hand-written URLs"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000, default 50", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of jobs.", body = JobPage),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`busy` (too many lists at once) or `storage_unavailable`; see `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
pub async fn list_jobs(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<JobPage>, ApiError> {
    let filter = parse_filter(pairs)?;
    let limit = filter.limit;
    let mut probe = filter;
    probe.limit = limit + 1;
    let mut items = state.engine.list_jobs(&caller.tenant, &probe).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|job| job.id.to_string())
    } else {
        None
    };
    Ok(Json(JobPage { items, next_cursor }))
}

fn parse_filter(pairs: Vec<(String, String)>) -> Result<JobFilter, ApiError> {
    let mut filter = JobFilter {
        limit: DEFAULT_PAGE,
        ..JobFilter::default()
    };
    let mut errors = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "queue" => filter.queue = Some(value),
            "kind" => filter.kind = Some(value),
            "key" => filter.key = Some(value),
            "batch_id" => match value.parse() {
                Ok(id) => filter.batch_id = Some(id),
                Err(_) => errors.push(FieldError::parameter(name, "not a batch id")),
            },
            "status" => match value.parse::<JobState>() {
                Ok(status) => filter.status = Some(status),
                Err(message) => errors.push(FieldError::parameter(name, message)),
            },
            "limit" => match value.parse::<u32>() {
                Ok(limit) if (1..=MAX_PAGE).contains(&limit) => filter.limit = limit,
                _ => errors.push(FieldError::parameter(
                    name,
                    format!("must be an integer from 1 to {MAX_PAGE}"),
                )),
            },
            "cursor" => match value.parse() {
                Ok(id) => filter.before = Some(id),
                Err(_) => errors.push(FieldError::parameter(name, "not a cursor from this API")),
            },
            "metadata" => match value.split_once('=') {
                Some((label, value)) if valid_metadata_key(label) => {
                    filter.metadata.push((label.to_owned(), value.to_owned()))
                }
                _ => errors.push(FieldError::parameter(
                    name,
                    "must be K=V, with K a valid metadata key",
                )),
            },
            _ => match name.strip_prefix("metadata.") {
                Some(label) if valid_metadata_key(label) => {
                    filter.metadata.push((label.to_owned(), value))
                }
                Some(_) => errors.push(FieldError::parameter(name, "not a valid metadata key")),
                None => errors.push(FieldError::parameter(name, "unknown parameter")),
            },
        }
    }
    if errors.is_empty() {
        Ok(filter)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Cancel a job.
///
/// A scheduled or queued job is cancelled at once (200). A running job is
/// asked to stop (202): its handler's token fires, and after a grace period
/// its task is aborted; it becomes `cancelled` when it stops.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    security(("bearer" = ["write"])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled.", body = Job),
        (status = 202, description = "Cancellation requested; the job is stopping.", body = Job),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_finished`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_job(
    WriteAccess(caller): WriteAccess,
    State(state): State<AppState>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    Ok(match state.engine.cancel_job(&caller.tenant, id).await? {
        Cancelled::Now(job) => (StatusCode::OK, Json(job)).into_response(),
        Cancelled::Requested(job) => (StatusCode::ACCEPTED, Json(job)).into_response(),
    })
}

/// Retry a failed or cancelled job.
///
/// Re-enqueues it as a new attempt series (`attempt` starts again at 0).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    security(("bearer" = ["write"])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 202, description = "Queued again.", body = Job),
        (status = 404, description = "No such job.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_retryable` (not failed or cancelled), `key_conflict`, `batch_finished` (its batch is over) or `dependency_failed` (retry the dependency first).", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`queue_full`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`shutting_down` or `storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_job(
    WriteAccess(caller): WriteAccess,
    State(state): State<AppState>,
    JobIdPath(id): JobIdPath,
) -> Result<Response, ApiError> {
    let job = state.engine.retry_job(&caller.tenant, id).await?;
    Ok((StatusCode::ACCEPTED, [location(job.id)], Json(job)).into_response())
}
