//! What access control adds to the OpenAPI document: the bearer scheme, and
//! on every operation that names a role, its 401 and 403 answers and (for
//! the tenant's own objects) the `tenant` parameter.

use utoipa::Modify;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder, Type,
};

/// Declares the `bearer` scheme the operations' `security` names.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key: `Authorization: Bearer <key>`. The scopes an operation \
                         lists are the roles that may call it, least first; each role \
                         includes the ones below it (read < write < admin).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Tags of the operations on a tenant's own objects.
const TENANT_TAGS: [&str; 3] = ["jobs", "batches", "events"];

/// Adds to every keyed operation what access control answers and takes.
pub fn document_access(openapi: &mut OpenApi) {
    for operation in super::operations_mut(openapi) {
        if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
            document_operation(operation);
        }
    }
}

fn document_operation(operation: &mut Operation) {
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    let responses = &mut operation.responses.responses;
    responses.entry("401".into()).or_insert_with(|| {
        problem("`unauthorized`: no API key, or one that is unknown, revoked or expired.")
    });
    responses.entry("403".into()).or_insert_with(|| {
        problem("`forbidden`: the key's role may not do this, or names another tenant.")
    });
    let on_tenant_objects = operation
        .tags
        .iter()
        .flatten()
        .any(|tag| TENANT_TAGS.contains(&tag.as_str()));
    if on_tenant_objects {
        responses
            .entry("422".into())
            .or_insert_with(|| problem("`validation_failed`: `tenant` is not a tenant name."));
        operation
            .parameters
            .get_or_insert_with(Vec::new)
            .push(RefOr::T(
                ParameterBuilder::new()
                    .name("tenant")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(
                        "Act in this tenant instead of the key's own: admin keys only.",
                    ))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            ));
    }
}
