//! What generated clients need from the document beyond the annotations:
//! fields the service always sends marked `required`, media types those
//! generators can read, links from what creates a resource to its reads,
//! and the examples.
//!
//! These are cross-cutting edits (every schema, every operation) that the
//! annotations have no place for, made on utoipa's types after the
//! annotations are read.

use serde_json::Value;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{Content, ObjectBuilder, OpenApi, RefOr, Type};

use super::examples;

/// Response-only schemas whose every property is in every answer (`null`
/// when empty). Marked required, a generated client types them `X | None`
/// instead of `X | None | Unset`. Schemas that skip absent fields (events,
/// problems, `ErrorInfo.attempt`) and request bodies are not listed.
const ALWAYS_SENT: [&str; 14] = [
    "ApiKey",
    "Batch",
    "BatchResult",
    "BatchSummary",
    "Job",
    "JobPage",
    "Progress",
    "QueueInfo",
    "RateLimit",
    "RateLimitKeyState",
    "RateLimitList",
    "ResultPage",
    "TenantInfo",
    "WebhookDelivery",
];

/// Each link: from an operation's success answer to an operation that reads
/// or acts on what it returned, with the answer's field that names it.
const LINKS: [(&str, &str, &str, &str, &str); 18] = [
    // (from operation, link name, to operation, parameter, value)
    (
        "create_job",
        "GetJob",
        "get_job",
        "id",
        "$response.body#/id",
    ),
    (
        "create_job",
        "CancelJob",
        "cancel_job",
        "id",
        "$response.body#/id",
    ),
    (
        "create_job",
        "RetryJob",
        "retry_job",
        "id",
        "$response.body#/id",
    ),
    (
        "create_job",
        "JobEvents",
        "stream_events",
        "job_id",
        "$response.body#/id",
    ),
    ("retry_job", "GetJob", "get_job", "id", "$response.body#/id"),
    (
        "create_batch",
        "GetBatch",
        "get_batch",
        "id",
        "$response.body#/id",
    ),
    (
        "create_batch",
        "BatchResults",
        "batch_results",
        "id",
        "$response.body#/id",
    ),
    (
        "create_batch",
        "CancelBatch",
        "cancel_batch",
        "id",
        "$response.body#/id",
    ),
    (
        "create_batch",
        "BatchJobs",
        "list_jobs",
        "batch_id",
        "$response.body#/id",
    ),
    (
        "create_batch",
        "BatchEvents",
        "stream_events",
        "batch_id",
        "$response.body#/id",
    ),
    (
        "create_key",
        "RevokeKey",
        "revoke_key",
        "id",
        "$response.body#/id",
    ),
    (
        "put_queue",
        "GetQueue",
        "get_queue",
        "name",
        "$response.body#/name",
    ),
    (
        "put_queue",
        "QueueJobs",
        "list_jobs",
        "queue",
        "$response.body#/name",
    ),
    (
        "put_schedule",
        "GetSchedule",
        "get_schedule",
        "id",
        "$response.body#/id",
    ),
    (
        "put_schedule",
        "ScheduleFires",
        "schedule_fires",
        "id",
        "$response.body#/id",
    ),
    (
        "put_schedule",
        "TriggerSchedule",
        "trigger_schedule",
        "id",
        "$response.body#/id",
    ),
    (
        "put_schedule",
        "DeleteSchedule",
        "delete_schedule",
        "id",
        "$response.body#/id",
    ),
    (
        "put_tenant",
        "GetTenant",
        "get_tenant",
        "tenant",
        "$response.body#/name",
    ),
];

/// Applies every edit to `api`.
pub fn shape(api: &mut OpenApi) {
    if let Some(components) = api.components.as_mut() {
        for (name, schema) in components.schemas.iter_mut() {
            let RefOr::T(schema) = schema else { continue };
            if ALWAYS_SENT.contains(&name.as_str())
                && let Schema::Object(object) = schema
            {
                object.required = object.properties.keys().cloned().collect();
            }
            if let Some(example) = examples::schema(name) {
                set_schema_example(schema, example);
            }
        }
    }
    for operation in super::operations_mut(api) {
        shape_operation(operation);
    }
}

fn set_schema_example(schema: &mut Schema, example: Value) {
    match schema {
        Schema::Object(object) => object.examples = vec![example],
        Schema::Array(array) => array.examples = vec![example],
        Schema::OneOf(one_of) => one_of.examples = vec![example],
        Schema::AllOf(all_of) => all_of.examples = vec![example],
        Schema::AnyOf(any_of) => any_of.examples = vec![example],
        _ => {}
    }
}

fn shape_operation(operation: &mut Operation) {
    let id = operation.operation_id.clone().unwrap_or_default();
    for parameter in operation.parameters.iter_mut().flatten() {
        let RefOr::T(parameter) = parameter else {
            continue;
        };
        if parameter.parameter_in != ParameterIn::Path {
            continue;
        }
        if let Some(example) = examples::path_parameter(&id, &parameter.name) {
            *parameter = ParameterBuilder::from(parameter.clone())
                .example(Some(example))
                .build();
        }
    }
    if let Some(RefOr::T(body)) = operation.request_body.as_mut() {
        for media in body.content.values_mut() {
            if let RefOr::T(media) = media {
                // A body that may be left out (`Option<T>`, not required) is
                // its schema when sent: a JSON `null` is no way to leave it out.
                if let Some(RefOr::T(Schema::OneOf(one_of))) = &media.schema
                    && let [RefOr::Ref(reference), RefOr::T(_)] = one_of.items.as_slice()
                {
                    media.schema = Some(RefOr::Ref(reference.clone()));
                }
                add_example(&id, media);
            }
        }
    }
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if !status.starts_with('2') {
            continue;
        }
        if let Some((media_type, media)) = readable_media_type(&id) {
            response.content.insert(media_type.to_owned(), media);
        }
        for media in response.content.values_mut() {
            if let RefOr::T(media) = media {
                add_example(&id, media);
            }
        }
        for (_, name, to, parameter, value) in LINKS.iter().filter(|(from, ..)| *from == id) {
            let link = LinkBuilder::new()
                .operation_id(*to)
                .parameter(*parameter, *value)
                .build();
            response.links.insert((*name).to_owned(), RefOr::T(link));
        }
    }
}

/// Media types generators can read. `application/yaml` gains a
/// `text/plain` alternative (served on `Accept: text/plain`), which
/// generators read as a string; the event stream is a string whose events'
/// `data:` are `Event`s, not one JSON document.
fn readable_media_type(operation_id: &str) -> Option<(&'static str, RefOr<Content>)> {
    let text = |description: Option<&str>| {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(description)
            .build();
        RefOr::T(Content::new(Some(RefOr::T(Schema::Object(schema)))))
    };
    match operation_id {
        "openapi_yaml" => Some(("text/plain", text(None))),
        "stream_events" => Some((
            "text/event-stream",
            text(Some(
                "Server-Sent Events, not one JSON document: read it with an SSE \
                     client, not a generated JSON call (which waits for the end of a \
                     stream that does not end). Each message has `id:`, `event:` (the \
                     type) and `data:`, one `Event` (#/components/schemas/Event) as \
                     JSON; lines starting with `:` are keep-alives.",
            )),
        )),
        _ => None,
    }
}

/// The example of a media type: its schema's, or for a text body, the
/// operation's.
fn add_example(operation_id: &str, media: &mut Content) {
    let example = match &media.schema {
        Some(RefOr::Ref(reference)) => reference
            .ref_location
            .rsplit('/')
            .next()
            .and_then(examples::schema),
        _ => examples::text_response(operation_id),
    };
    if example.is_some() {
        media.example = example;
    }
}
