//! `Idempotency-Key`: the header read for shape, and the original response
//! a repeated request gets back.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::domain::{FieldError, IdempotencyKey, StoredResponse};

/// The `Idempotency-Key` header, if any, checked for shape.
pub(super) fn idempotency_key(
    header: Option<&HeaderValue>,
    fingerprint: impl FnOnce() -> String,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = header else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= 255)
        .ok_or_else(|| {
            ApiError::validation(vec![FieldError::new(
                "",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )])
        })?;
    Ok(Some(IdempotencyKey {
        key: key.to_owned(),
        request_hash: fingerprint(),
    }))
}

/// The original response to a repeated request, marked as a replay.
pub(super) fn replayed(stored: &StoredResponse, collection: &str) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (status, Json(&stored.body)).into_response();
    if let Some(id) = stored.body.get("id").and_then(|id| id.as_str())
        && let Ok(value) = HeaderValue::from_str(&format!("{collection}/{id}"))
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
