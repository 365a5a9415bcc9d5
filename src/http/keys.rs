//! `/v1/keys`: make, list and revoke API keys (admin).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::AdminAccess;
use super::error::{ApiError, Problem};
use super::extract::{JsonBody, KeyIdPath};
use crate::access::KeyError;
use crate::domain::{ApiKey, KeySpec};

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Declared (configuration) and stored keys, never their secrets.
    pub items: Vec<ApiKey>,
}

/// A key just made: the only answer that holds its secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// `Authorization: Bearer <secret>`. Shown this once: keep it now.
    pub secret: String,
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Invalid(errors) => ApiError::validation(errors),
            KeyError::NotFound => ApiError::not_found("key"),
            KeyError::Declared => ApiError::new(
                StatusCode::CONFLICT,
                "key_declared",
                "this key is declared in the configuration (SPOOL_API_KEYS or the config \
                 file); remove it there",
            ),
            KeyError::Store(store) => store.into(),
        }
    }
}

/// Make an API key.
///
/// The answer holds the key's secret, which is shown this once and stored
/// only as a hash. The key works on every instance at once.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = KeySpec,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Made; `secret` is shown only here.", body = CreatedKey),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_key(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    body: JsonBody<KeySpec>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let (key, secret) = state.keyring.create(body.value).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, secret })))
}

/// List API keys.
///
/// Every key of every tenant, declared and stored, with when it was last
/// used (to within half a minute); never a secret.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Every key.", body = KeyList),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin key.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_keys(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
) -> Json<KeyList> {
    Json(KeyList {
        items: state.keyring.list(),
    })
}

/// Revoke an API key.
///
/// Refused from then on, on every instance within a second or two. Keys
/// declared in the configuration are removed there instead (409
/// `key_declared`).
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    security(("bearer" = ["admin"])),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, description = "`unauthorized`: no key, or not a valid one.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (or already revoked).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_declared`: declared in the configuration.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_key(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    KeyIdPath(id): KeyIdPath,
) -> Result<StatusCode, ApiError> {
    state.keyring.revoke(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
