//! `/v1/batches`: submit many jobs at once, follow them, read their results
//! as they finish, cancel them.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::error::{ApiError, Problem};
use super::extract::{
    BatchIdPath, IdempotencyHeader, JsonBody, MAX_WAIT_S, QueryPairs, fingerprint, parse_wait,
};
use super::idempotency::{idempotency_key, replayed};
use super::quotas::{RateGate, add_rate_headers, take_rate, with_rate_headers};
use super::traces::RequestTrace;
use crate::domain::{Batch, BatchResult, BatchRetryRequest, BatchSpec, BatchStatus, FieldError};
use crate::engine::BatchSubmitted;
use axum::Extension;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;

/// A page of a batch's finished jobs, in the order they finished.
#[derive(Serialize, ToSchema)]
pub struct ResultPage {
    pub items: Vec<BatchResult>,
    /// Pass as `cursor` to read the results that finish after these. Present
    /// while the batch runs, even when this page is empty (poll with it);
    /// `null` once the batch is finished and every result was returned.
    pub next_cursor: Option<String>,
    /// The position after this page's items, always present: keep it to
    /// read, later, only what finished since (the results of a re-run of
    /// the batch, after `next_cursor` went `null`).
    pub cursor: String,
    /// The batch's status when the page was read.
    pub batch_status: BatchStatus,
}

/// Submit a batch.
///
/// Every job is validated (errors point into the body, e.g.
/// `/jobs/17/payload/ms`) and then all are stored in one transaction, or none
/// are: a full queue (`429`) or an invalid job (`422`) leaves no trace.
/// Inside a batch `depends_on` may name earlier jobs by index, so a whole
/// pipeline is one request.
#[utoipa::path(
    post, path = "/v1/batches", tag = "batches",
    security(("bearer" = ["write"])),
    request_body = BatchSpec,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 hours."),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: kept with the jobs and returned on them as `traceparent` (a malformed one is ignored)."),
        ("tracestate" = Option<String>, Header, description = "W3C trace state, kept with a valid `traceparent`."),
    ),
    responses(
        (status = 202, description = "Accepted and stored.", body = Batch,
            headers(
                ("Location" = String, description = "The batch's URL"),
                ("RateLimit-Policy" = String, description = "When the tenant has a `submit_rate`: `\"submit\";q=<submit_burst>;w=<seconds>`"),
                ("RateLimit" = String, description = "When the tenant has a `submit_rate`: `\"submit\";r=<jobs the key may submit now>;t=<seconds until the burst is back>`"),
            )),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`body_timeout`: the body did not arrive within `SPOOL_BODY_READ_TIMEOUT`.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_conflict`: a job's key is held.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the length it declares, is over the limit, or the batch has more jobs than `SPOOL_MAX_BATCH_SIZE`, or than the key's `submit_burst` lets in at once.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (with pointers into the body) or `idempotency_mismatch`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`queue_full`: a queue the batch uses has no room for its share; `tenant_quota`: the tenant's `max_pending` has no room for all its jobs; `rate_limited`: the key's `submit_rate` has no tokens for all its jobs now (a batch counts as its number of jobs, and is refused whole). See `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds"),
                ("RateLimit-Policy" = String, description = "`tenant_quota` and `rate_limited`: the quotas in force (draft-ietf-httpapi-ratelimit-headers), `\"pending\";q=<max_pending>` and `\"submit\";q=<submit_burst>;w=<seconds>`"),
                ("RateLimit" = String, description = "`tenant_quota` and `rate_limited`: what is left of them, `\"pending\";r=<room>;t=<seconds>`, `\"submit\";r=<jobs>;t=<seconds>`"),
            )),
        (status = 503, description = "`shutting_down` or `storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_batch(
    WriteAccess(caller): WriteAccess,
    State(state): State<AppState>,
    IdempotencyHeader(header): IdempotencyHeader,
    trace: Option<Extension<RequestTrace>>,
    body: JsonBody<BatchSpec>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(header.as_ref(), || body.fingerprint("POST /v1/batches"))?;
    let jobs = body.value.jobs.len();
    let rate = match take_rate(&state, &caller, jobs, idempotency.as_ref(), "/v1/batches").await? {
        RateGate::Open(rate) => rate,
        RateGate::Replayed(response) => return Ok(response),
    };
    let submitted = state
        .engine
        .submit_batch(
            &caller.tenant,
            body.value,
            idempotency,
            trace.and_then(|Extension(trace)| trace.for_jobs),
        )
        .await
        .map_err(|error| with_rate_headers(error.into(), rate.as_ref()))?;
    let mut response = accepted(submitted);
    add_rate_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Get a batch.
///
/// Counts per state, and `status`: `running` until every job is terminal.
/// With `wait=N` the answer is held until the batch finished or N seconds
/// passed.
#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "batches",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, description = "Batch id"),
        ("wait" = Option<u64>, Query, description = "Long-poll: seconds (0..=60) to wait for the batch to finish", minimum = 0, maximum = 60),
    ),
    responses(
        (status = 200, description = "The batch.", body = Batch),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_batch(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    BatchIdPath(id): BatchIdPath,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<Batch>, ApiError> {
    let wait = parse_wait(pairs)?;
    Ok(Json(
        state.engine.get_batch(&caller.tenant, id, wait).await?,
    ))
}

/// Read a batch's results as its jobs finish.
///
/// Pages the finished jobs in the order they finished. Keep passing
/// `next_cursor` back to read every result exactly once while the rest
/// still run; it is `null` once the batch is finished and read to the end.
#[utoipa::path(
    get, path = "/v1/batches/{id}/results", tag = "batches",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, description = "Batch id"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("wait" = Option<u64>, Query, description = "Seconds (0..=60) to wait for a result after `cursor` when there is none yet; the page comes as soon as one is there or the batch finished. Default 0", minimum = 0, maximum = 60),
    ),
    responses(
        (status = 200, description = "A page of results.", body = ResultPage),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn batch_results(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    BatchIdPath(id): BatchIdPath,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<ResultPage>, ApiError> {
    let mut limit = DEFAULT_PAGE;
    let mut after = 0u64;
    let mut wait = Duration::ZERO;
    let mut errors = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => errors.push(FieldError::parameter(
                    name,
                    format!("must be an integer from 1 to {MAX_PAGE}"),
                )),
            },
            "cursor" => match value.parse::<u64>() {
                Ok(n) if n <= i64::MAX as u64 => after = n,
                _ => errors.push(FieldError::parameter(name, "not a cursor from this API")),
            },
            "wait" => match value.parse::<u64>() {
                Ok(seconds) if seconds <= MAX_WAIT_S => wait = Duration::from_secs(seconds),
                _ => errors.push(FieldError::parameter(
                    name,
                    format!("must be a whole number of seconds from 0 to {MAX_WAIT_S}"),
                )),
            },
            _ => errors.push(FieldError::parameter(name, "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let (batch, items) = state
        .engine
        .batch_results(&caller.tenant, id, after, limit, wait)
        .await?;
    // The batch was read first: seen finished, all its results were there.
    let exhausted = batch.finished_at.is_some() && items.len() < limit as usize;
    let cursor = items.last().map_or(after, |item| item.seq).to_string();
    let next_cursor = (!exhausted).then(|| cursor.clone());
    Ok(Json(ResultPage {
        items,
        next_cursor,
        cursor,
        batch_status: batch.status,
    }))
}

/// Re-run a finished batch.
///
/// Its failed and cancelled jobs (`{"scope": "all"}`: every job) run again
/// as new attempt series, the jobs waiting on them waiting again; the batch
/// reopens: `running`, its counts moved back, `finished_at` cleared,
/// `retries` counted. Their new results come after the old ones in the
/// results stream (a reader following `next_cursor` sees each once more),
/// `batch.retried` is published, and the webhook fires again, with a new
/// `webhook-id`, when the batch ends again. The jobs are admitted as a
/// submission is: queue room, the tenant's quota, unique keys.
#[utoipa::path(
    post, path = "/v1/batches/{id}/retry", tag = "batches",
    security(("bearer" = ["write"])),
    request_body(content = Option<BatchRetryRequest>, description = "May be left out: `failed` scope."),
    params(
        ("id" = String, Path, description = "Batch id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe for 24 hours: a repeat gets the first answer."),
    ),
    responses(
        (status = 202, description = "Reopened; its jobs are queued again.", body = Batch,
            headers(("Location" = String, description = "The batch's URL"))),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`batch_running` (it has not finished), `not_retryable` (no job failed or was cancelled: use `scope: all`), `key_conflict` or `dependency_failed` (a job waits on one outside the batch that failed: retry that first).", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` or `idempotency_mismatch`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`queue_full` or `tenant_quota`: no room for the jobs that would run again. See `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 503, description = "`shutting_down` or `storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_batch(
    WriteAccess(caller): WriteAccess,
    State(state): State<AppState>,
    BatchIdPath(id): BatchIdPath,
    IdempotencyHeader(header): IdempotencyHeader,
    body: Option<JsonBody<BatchRetryRequest>>,
) -> Result<Response, ApiError> {
    let route = format!("POST /v1/batches/{id}/retry");
    let idempotency = idempotency_key(header.as_ref(), || match &body {
        Some(body) => body.fingerprint(&route),
        // No body is the empty object: the same request.
        None => fingerprint(&route, b"{}"),
    })?;
    let scope = body.map(|body| body.value.scope).unwrap_or_default();
    let retried = state
        .engine
        .retry_batch(&caller.tenant, id, scope, idempotency)
        .await?;
    Ok(accepted(retried))
}

/// 202 with the batch and its `Location`, or the replay of a repeat.
fn accepted(submitted: BatchSubmitted) -> Response {
    match submitted {
        BatchSubmitted::Created(batch) => {
            let location = format!("/v1/batches/{}", batch.id);
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(batch),
            )
                .into_response()
        }
        BatchSubmitted::Replayed(stored) => replayed(&stored, "/v1/batches"),
    }
}

/// Cancel a batch.
///
/// Every scheduled or queued job of the batch is cancelled at once; running
/// ones are asked to stop (their handlers' tokens fire, then they are
/// aborted after a grace period). The batch ends `cancelled` once the last
/// one stopped. A finished batch answers `409 already_finished`.
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", tag = "batches",
    security(("bearer" = ["write"])),
    params(("id" = String, Path, description = "Batch id")),
    responses(
        (status = 200, description = "Cancelled (running jobs may still be stopping).", body = Batch),
        (status = 404, description = "No such batch.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_finished`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_batch(
    WriteAccess(caller): WriteAccess,
    State(state): State<AppState>,
    BatchIdPath(id): BatchIdPath,
) -> Result<Json<Batch>, ApiError> {
    Ok(Json(state.engine.cancel_batch(&caller.tenant, id).await?))
}
