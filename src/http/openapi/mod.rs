//! The OpenAPI document: what the handlers' annotations say, plus what
//! access control adds to every keyed operation and what generated clients
//! need (required fields, readable media types, links, examples).

mod access;
mod clients;
mod examples;

pub use access::{BearerScheme, document_access};

pub use clients::shape as shape_for_clients;

/// Every operation of the document (the methods Spool serves).
fn operations_mut(
    api: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    api.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}
