//! `/v1/queues`: read queues, create or change them at runtime.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::{AdminAccess, ReadAccess};
use super::error::{ApiError, Problem};
use super::extract::{JsonBody, NamePath};
use crate::domain::{QueueInfo, QueueSettings};

#[derive(Serialize, ToSchema)]
pub struct QueueList {
    pub items: Vec<QueueInfo>,
}

/// List queues with their settings and counts.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Every queue.", body = QueueList),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_queues(
    ReadAccess(_caller): ReadAccess,
    State(state): State<AppState>,
) -> Result<Json<QueueList>, ApiError> {
    Ok(Json(QueueList {
        items: state.engine.list_queues().await?,
    }))
}

/// Get a queue.
#[utoipa::path(
    get, path = "/v1/queues/{name}", tag = "queues",
    security(("bearer" = ["read"])),
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "The queue.", body = QueueInfo),
        (status = 404, description = "No such queue.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_queue(
    ReadAccess(_caller): ReadAccess,
    State(state): State<AppState>,
    NamePath(name): NamePath,
) -> Result<Json<QueueInfo>, ApiError> {
    state
        .engine
        .get_queue(&name)
        .await
        .map(Json)
        .map_err(|e| match e {
            crate::engine::EngineError::NotFound(what) => ApiError::not_found(what),
            other => other.into(),
        })
}

/// Create or change a queue.
///
/// Fields left out keep their current value (their default for a new
/// queue). Takes effect at once: more concurrency starts waiting jobs now,
/// `paused: true` starts no new ones. Queues declared in the config file are
/// reset to the file's settings at start-up.
#[utoipa::path(
    put, path = "/v1/queues/{name}", tag = "queues",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Queue name: 1 to 64 of A-Z a-z 0-9 _ - .")),
    request_body = QueueSettings,
    responses(
        (status = 200, description = "Changed.", body = QueueInfo),
        (status = 201, description = "Created.", body = QueueInfo),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`body_timeout`: the body did not arrive within `SPOOL_BODY_READ_TIMEOUT`.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the length it declares, is over the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_queue(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    NamePath(name): NamePath,
    body: JsonBody<QueueSettings>,
) -> Result<(StatusCode, Json<QueueInfo>), ApiError> {
    let (queue, created) = state.engine.put_queue(&name, &body.value).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(queue)))
}

/// Delete a queue.
///
/// Only a queue with no unfinished job (scheduled, queued or running): 409
/// `queue_not_empty` otherwise, saying how many. Its finished jobs stay,
/// readable as before and still naming it; submissions to it are refused
/// as `unknown_queue` until a `PUT` creates it again. The default queue
/// cannot be deleted (409 `default_queue`). A queue declared in the config
/// file comes back at the next start.
#[utoipa::path(
    delete, path = "/v1/queues/{name}", tag = "queues",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such queue.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`queue_not_empty` (it has unfinished jobs) or `default_queue`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_queue(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    NamePath(name): NamePath,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_queue(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
