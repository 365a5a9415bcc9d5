//! `/v1/schedules`: jobs made on a cron or fixed cadence. Admins create, change, trigger and delete them (service-wide objects); any key reads those of its own tenant, an admin key all.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::{AdminAccess, ReadAccess};
use super::error::{ApiError, Problem};
use super::extract::{JsonBody, QueryPairs, path_of};
use crate::domain::{Caller, FieldError, Job, Role, Schedule, ScheduleFire, ScheduleSpec};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;

/// A schedule's id from the path.
pub struct ScheduleIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ScheduleIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_of(parts, state, "schedule").await.map(ScheduleIdPath)
    }
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleList {
    pub items: Vec<Schedule>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FirePage {
    /// Newest first.
    pub items: Vec<ScheduleFire>,
    /// Pass as `cursor` for older entries; null on the last page.
    pub next_cursor: Option<String>,
}

/// The tenant whose schedules `caller` sees: an admin sees every one.
fn visible(caller: &Caller) -> Option<&str> {
    (caller.role != Role::Admin).then_some(caller.tenant.as_str())
}

/// `limit` and `cursor`, the only parameters of the lists here.
fn page(pairs: Vec<(String, String)>) -> Result<(u32, Option<String>), ApiError> {
    let mut limit = DEFAULT_PAGE;
    let mut cursor = None;
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
            "cursor" => cursor = Some(value),
            _ => errors.push(FieldError::parameter(name, "unknown parameter")),
        }
    }
    if errors.is_empty() {
        Ok((limit, cursor))
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Create or change a schedule.
///
/// Exactly one of `cron` and `every_ms`. The job is checked as `POST
/// /v1/jobs` checks one (pointers under `/job`). Each fire time makes one
/// job service-wide, with the key `schedule:<id>:<fire time>`, in the
/// schedule's tenant. The same settings again change nothing (200, no new
/// fire, the same `updated_at`); any change starts the cadence again from
/// now (no catch-up across it). Pause and resume with `paused`.
#[utoipa::path(
    put, path = "/v1/schedules/{id}", tag = "schedules",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Schedule id: 1 to 64 of A-Z a-z 0-9 _ - .")),
    request_body = ScheduleSpec,
    responses(
        (status = 200, description = "Changed, or the same settings again (then nothing changed).", body = Schedule),
        (status = 201, description = "Created.", body = Schedule),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`body_timeout`: the body did not arrive within `SPOOL_BODY_READ_TIMEOUT`.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the length it declares, is over the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad cron expression, time zone or id, both or neither of `cron` and `every_ms`, an invalid job (unknown kind or queue, bad fields or payload) under `/job`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`, or `store_busy` when the schedule kept changing meanwhile.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_schedule(
    AdminAccess(caller): AdminAccess,
    State(state): State<AppState>,
    ScheduleIdPath(id): ScheduleIdPath,
    body: JsonBody<ScheduleSpec>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let change = state
        .engine
        .put_schedule(&caller.tenant, &id, body.value)
        .await?;
    let status = if change.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(change.schedule)))
}

/// List schedules.
///
/// By id. An admin key sees every schedule; other keys those of their tenant.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    security(("bearer" = ["read"])),
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of schedules.", body = ScheduleList),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_schedules(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<ScheduleList>, ApiError> {
    let (limit, cursor) = page(pairs)?;
    let items = state
        .engine
        .list_schedules(visible(&caller), cursor.as_deref(), limit)
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|s| s.config.id.clone()))
        .flatten();
    Ok(Json(ScheduleList { items, next_cursor }))
}

/// Get a schedule, with its next five fire times.
#[utoipa::path(
    get, path = "/v1/schedules/{id}", tag = "schedules",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule.", body = Schedule),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule (or another tenant's).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_schedule(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    ScheduleIdPath(id): ScheduleIdPath,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(
        state.engine.get_schedule(visible(&caller), &id).await?,
    ))
}

/// Read a schedule's history.
///
/// Newest first: each fire time handled (`fired`, `skipped` by the overlap
/// policy, `missed` by downtime, `refused` by admission) and each trigger,
/// with the job made. The last 1 000 entries are kept.
#[utoipa::path(
    get, path = "/v1/schedules/{id}/fires", tag = "schedules",
    security(("bearer" = ["read"])),
    params(
        ("id" = String, Path, description = "Schedule id"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of the history.", body = FirePage),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule (or another tenant's).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid or unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn schedule_fires(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    ScheduleIdPath(id): ScheduleIdPath,
    QueryPairs(pairs): QueryPairs,
) -> Result<Json<FirePage>, ApiError> {
    let (limit, cursor) = page(pairs)?;
    let before = match cursor {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(seq) if seq >= 0 => Some(seq),
            _ => {
                return Err(ApiError::validation(vec![FieldError::parameter(
                    "cursor",
                    "not a cursor from this API",
                )]));
            }
        },
    };
    let items = state
        .engine
        .schedule_fires(visible(&caller), &id, before, limit)
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|fire| fire.seq.to_string()))
        .flatten();
    Ok(Json(FirePage { items, next_cursor }))
}

/// Fire a schedule now.
///
/// One job now, outside the cadence and the overlap policy (recorded as
/// `triggered`); the next fire time stays as it was. Refused as a
/// submission is (429 `queue_full`, `tenant_quota`; 422 when the queue is
/// gone), and then recorded as `refused`.
#[utoipa::path(
    post, path = "/v1/schedules/{id}/trigger", tag = "schedules",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 202, description = "The job made, stored.", body = Job),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_conflict`: a job of the same schedule and instant holds the key.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_queue`, `unknown_kind` or `validation_failed`: the stored job spec no longer fits the service (a queue deleted since).", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`queue_full` or `tenant_quota`. See `Retry-After`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`shutting_down` or `storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn trigger_schedule(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    ScheduleIdPath(id): ScheduleIdPath,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = state.engine.trigger_schedule(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Delete a schedule.
///
/// It fires no more, and its history goes with it. The jobs it made stay.
#[utoipa::path(
    delete, path = "/v1/schedules/{id}", tag = "schedules",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_schedule(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    ScheduleIdPath(id): ScheduleIdPath,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_schedule(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
