//! `/v1/tenants/{tenant}`: a tenant's quotas (set by admins; read by admins
//! and by the tenant's own keys).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::access::{AdminAccess, ReadAccess};
use super::error::{ApiError, Problem};
use super::extract::{JsonBody, NamePath};
use crate::domain::{Role, TenantInfo, TenantSettings};

/// Get a tenant's quotas.
///
/// Its settings (`null`: no limit) and its jobs waiting now (`pending`,
/// what `max_pending` bounds). An admin key reads any tenant; any other key
/// only its own.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The tenant's quotas.", body = TenantInfo),
        (status = 403, description = "`forbidden`: another tenant's, and not an admin key.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: not a tenant name.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_tenant(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    NamePath(tenant): NamePath,
) -> Result<Json<TenantInfo>, ApiError> {
    if caller.role != Role::Admin && caller.tenant != tenant {
        return Err(ApiError::forbidden(
            "a key reads its own tenant's quotas; only an admin key reads another's",
        ));
    }
    Ok(Json(state.engine.get_tenant(&tenant).await?))
}

/// Set a tenant's quotas.
///
/// Replaces all three: a field left out or `null` is no limit. Takes effect
/// at once here and within about a second on every instance. Tenants
/// declared in the config file are reset to the file's settings at
/// start-up.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name: 1 to 64 of A-Z a-z 0-9 _ - .")),
    request_body = TenantSettings,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Changed.", body = TenantInfo),
        (status = 201, description = "Set for the first time.", body = TenantInfo),
        (status = 400, description = "The body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`body_timeout`: the body did not arrive within `SPOOL_BODY_READ_TIMEOUT`.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body, or the length it declares, is over the limit.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_tenant(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
    NamePath(tenant): NamePath,
    body: JsonBody<TenantSettings>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    let (info, created) = state.engine.put_tenant(&tenant, body.value).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}
