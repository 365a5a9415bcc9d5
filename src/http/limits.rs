//! `/v1/limits`: rate limits on job starts, and the state of their keys.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::{AdminAccess, ReadAccess};
use super::error::{ApiError, Problem};
use super::extract::{JsonBody, path_of};
use crate::domain::{RateLimit, RateLimitKeyState, RateLimitSettings};

#[derive(Serialize, ToSchema)]
pub struct RateLimitList {
    pub items: Vec<RateLimit>,
}

/// A limit's name from the path.
pub struct LimitPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for LimitPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_of(parts, state, "rate limit").await.map(LimitPath)
    }
}

/// A limit's name and one of its keys from the path.
pub struct LimitKeyPath(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for LimitKeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (name, key) = path_of(parts, state, "rate limit").await?;
        Ok(LimitKeyPath(name, key))
    }
}

/// List rate limits.
#[utoipa::path(
    get, path = "/v1/limits", tag = "limits",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Every rate limit, by name.", body = RateLimitList),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_limits(
    ReadAccess(_caller): ReadAccess,
    State(state): State<AppState>,
) -> Result<Json<RateLimitList>, ApiError> {
    Ok(Json(RateLimitList {
        items: state.engine.list_limits().await?,
    }))
}

/// Get a rate limit.
#[utoipa::path(
    get, path = "/v1/limits/{name}", tag = "limits",
    security(("bearer" = ["read"])),
    params(("name" = String, Path, description = "Limit name")),
    responses(
        (status = 200, description = "The limit.", body = RateLimit),
        (status = 404, description = "No such limit.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_limit(
    ReadAccess(_caller): ReadAccess,
    State(state): State<AppState>,
    LimitPath(name): LimitPath,
) -> Result<Json<RateLimit>, ApiError> {
    Ok(Json(state.engine.get_limit(&name).await?))
}

/// Create or change a rate limit.
///
/// At most `rate` jobs naming the limit start per `per_ms`, spaced evenly,
/// `burst` at once after a quiet spell; each `key` a job names has a budget
/// of its own. Enforced when jobs are claimed, service-wide (every instance
/// shares each key's budget). A change applies to the next claim; keys keep
/// what they spent. The same `PUT` twice changes nothing (`updated_at`
/// stays).
#[utoipa::path(
    put, path = "/v1/limits/{name}", tag = "limits",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Limit name: 1 to 64 of A-Z a-z 0-9 _ - .")),
    request_body = RateLimitSettings,
    responses(
        (status = 200, description = "Changed (or already so).", body = RateLimit),
        (status = 201, description = "Created.", body = RateLimit),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`body_timeout`: the body did not arrive within `SPOOL_BODY_READ_TIMEOUT`.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the length it declares, is over the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_limit(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    LimitPath(name): LimitPath,
    body: JsonBody<RateLimitSettings>,
) -> Result<(StatusCode, Json<RateLimit>), ApiError> {
    let (limit, created) = state.engine.put_limit(&name, &body.value).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(limit)))
}

/// Delete a rate limit.
///
/// Jobs that name it start without a limit from then on; its keys' state
/// goes with it.
#[utoipa::path(
    delete, path = "/v1/limits/{name}", tag = "limits",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Limit name")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such limit.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_limit(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    LimitPath(name): LimitPath,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_limit(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The budget of one key of a rate limit.
///
/// How many starts fit now, and when the next one does; a key no job has
/// used has its full burst. `-` names the limit's unkeyed budget (jobs
/// that give no `key`).
#[utoipa::path(
    get, path = "/v1/limits/{name}/keys/{key}", tag = "limits",
    security(("bearer" = ["admin"])),
    params(
        ("name" = String, Path, description = "Limit name"),
        ("key" = String, Path, description = "The key, URL-encoded; `-` for the unkeyed budget"),
    ),
    responses(
        (status = 200, description = "The key's budget now.", body = RateLimitKeyState),
        (status = 404, description = "No such limit.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_limit_key(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    LimitKeyPath(name, key): LimitKeyPath,
) -> Result<Json<RateLimitKeyState>, ApiError> {
    let key = (key != UNKEYED).then_some(key.as_str());
    Ok(Json(state.engine.limit_key_state(&name, key).await?))
}

/// The path's name for a limit's unkeyed budget.
const UNKEYED: &str = "-";
