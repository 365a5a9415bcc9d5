//! Authentication of `/v1` requests, and the role each operation needs.
//!
//! The middleware finds the caller (its key's tenant and role, or open
//! mode's implicit admin) and takes `?tenant=` off the query, so handlers
//! see only their own parameters. Each handler then names the role it
//! needs by taking [`ReadAccess`], [`WriteAccess`] or [`AdminAccess`]; the
//! OpenAPI document says the same per operation (`security`), and the
//! authorization matrix test holds the two together.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::access::{Keyring, may_act_in};
use crate::domain::{Caller, FieldError, Role, valid_tenant};

/// Lets the request in with its [`Caller`], or answers 401/403/422.
pub async fn authenticate(
    State(keyring): State<Arc<Keyring>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    let mut caller = match keyring.authenticate(authorization) {
        Ok(caller) => caller,
        Err(error) => return ApiError::unauthorized(error.to_string()).into_response(),
    };
    match take_tenant(request.uri()) {
        Ok(None) => {}
        Ok(Some((tenant, uri))) => {
            if !valid_tenant(&tenant) {
                return ApiError::validation(vec![FieldError::parameter(
                    "tenant",
                    "tenant names are 1 to 64 of A-Z a-z 0-9 _ - .",
                )])
                .into_response();
            }
            if !may_act_in(&caller, &tenant) {
                return ApiError::forbidden("only an admin key may name another tenant")
                    .into_response();
            }
            caller.tenant = tenant;
            *request.uri_mut() = uri;
        }
        Err(error) => return error.into_response(),
    }
    // The request's log line says whose it was.
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// `?tenant=` and the URI without it, when the query names one.
fn take_tenant(uri: &Uri) -> Result<Option<(String, Uri)>, ApiError> {
    let Some(query) = uri.query().filter(|query| query.contains("tenant=")) else {
        return Ok(None);
    };
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        // Left to the handler, which says what is malformed.
        return Ok(None);
    };
    let (tenants, rest): (Vec<_>, Vec<_>) =
        pairs.into_iter().partition(|(name, _)| name == "tenant");
    let Some((_, tenant)) = tenants.into_iter().last() else {
        return Ok(None);
    };
    let rest = serde_urlencoded::to_string(&rest).unwrap_or_default();
    let path_and_query = if rest.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{rest}", uri.path())
    };
    let uri = path_and_query
        .parse::<Uri>()
        .map_err(|e| ApiError::internal(format!("rebuilding the URI without tenant: {e}")))?;
    Ok(Some((tenant, uri)))
}

fn caller_needing(parts: &Parts, needed: Role) -> Result<Caller, ApiError> {
    let Some(caller) = parts.extensions.get::<Caller>() else {
        // A route outside the authenticating middleware: a bug, never let in.
        return Err(ApiError::internal(
            "an operation needing a key is routed without authentication",
        ));
    };
    if caller.role.allows(needed) {
        Ok(caller.clone())
    } else {
        Err(ApiError::forbidden(format!(
            "this operation needs a key with the `{needed}` role; this key has `{}`",
            caller.role
        )))
    }
}

macro_rules! access_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        pub struct $name(pub Caller);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
                caller_needing(parts, $role).map($name)
            }
        }
    };
}

access_extractor!(
    /// Any valid key: reads of its own tenant.
    ReadAccess,
    Role::Read
);
access_extractor!(
    /// A `write` or `admin` key: submit, cancel, retry.
    WriteAccess,
    Role::Write
);
access_extractor!(
    /// An `admin` key: queues, keys, tenants.
    AdminAccess,
    Role::Admin
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_parameter_is_taken_off_the_query() {
        let uri: Uri = "/v1/jobs?limit=5&tenant=acme&status=queued"
            .parse()
            .unwrap();
        let (tenant, rest) = take_tenant(&uri).unwrap().unwrap();
        assert_eq!(tenant, "acme");
        assert_eq!(rest.to_string(), "/v1/jobs?limit=5&status=queued");
        let only: Uri = "/v1/jobs/x?tenant=acme".parse().unwrap();
        assert_eq!(
            take_tenant(&only).unwrap().unwrap().1.to_string(),
            "/v1/jobs/x"
        );
        let none: Uri = "/v1/jobs?limit=5".parse().unwrap();
        assert!(take_tenant(&none).unwrap().is_none());
    }
}
