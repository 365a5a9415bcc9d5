//! `/v1/whoami`: the tenant and role of the caller's key.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::access::ReadAccess;
use crate::domain::Role;

/// Who a request acts as.
#[derive(Serialize, ToSchema)]
pub struct Whoami {
    /// The tenant the request acts in (`?tenant=` for an admin key).
    pub tenant: String,
    pub role: Role,
}

/// Who am I.
///
/// The tenant and role of the key the request carries (in open mode, the
/// admin of `default`), so a client such as the dashboard can offer only
/// what the key may do. Any valid key may ask.
#[utoipa::path(
    get, path = "/v1/whoami", tag = "keys",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The caller.", body = Whoami),
    )
)]
pub async fn whoami(ReadAccess(caller): ReadAccess) -> Json<Whoami> {
    Json(Whoami {
        tenant: caller.tenant,
        role: caller.role,
    })
}
