//! `/v1/kinds`: the registered job kinds and their payload schemas.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::ReadAccess;
use crate::kinds::KindInfo;

#[derive(Serialize, ToSchema)]
pub struct KindList {
    pub items: Vec<KindInfo>,
}

/// List the registered job kinds.
#[utoipa::path(
    get, path = "/v1/kinds", tag = "kinds",
    security(("bearer" = ["read"])),
    responses((status = 200, description = "Every kind, with the JSON Schema of its payload.", body = KindList))
)]
pub async fn list_kinds(
    ReadAccess(_caller): ReadAccess,
    State(state): State<AppState>,
) -> Json<KindList> {
    Json(KindList {
        items: state.engine.kinds().list(),
    })
}
