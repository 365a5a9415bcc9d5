//! Liveness, readiness and the API description.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, Problem};

/// The checked-in `openapi.yaml`, served byte for byte (a test keeps it equal
/// to what the code generates).
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Alive: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = String, content_type = "text/plain"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready: storage answers and the service is not shutting down.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain"),
        (status = 503, description = "`shutting_down` or `storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.ready().await?;
    Ok("ready")
}

/// This API's OpenAPI 3.1 description.
///
/// As `application/yaml`, or as `text/plain` when `Accept` names
/// `text/plain` and not `application/yaml` (for clients that read only
/// text types as strings).
#[utoipa::path(
    get, path = "/openapi.yaml", tag = "operations",
    responses((status = 200, description = "The OpenAPI document.", body = String, content_type = "application/yaml"))
)]
pub async fn openapi_yaml(headers: HeaderMap) -> Response {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let media_type = if accept.contains("text/plain") && !accept.contains("application/yaml") {
        "text/plain; charset=utf-8"
    } else {
        "application/yaml"
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(media_type))],
        OPENAPI_YAML,
    )
        .into_response()
}
