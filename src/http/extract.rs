//! Extractors that turn every malformed request into a problem, never into
//! axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower_http::timeout::TimeoutError;

use super::error::ApiError;
use super::guards::BodyReadTimeout;
use crate::domain::{BatchId, FieldError, JobId};

/// A JSON request body: `Content-Type: application/json` (or `+json`), at
/// most the configured size, well-formed, and of the expected shape.
pub struct JsonBody<T> {
    pub value: T,
    raw: Bytes,
}

impl<T> JsonBody<T> {
    /// SHA-256 of the body's canonical form (keys sorted, no whitespace), so
    /// a retried request that only differs in formatting matches its original.
    pub fn fingerprint(&self, route: &str) -> String {
        fingerprint(route, &self.raw)
    }
}

/// SHA-256 of `route` and the canonical form of the JSON `body`.
pub fn fingerprint(route: &str, body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<Value>(body)
        .map(|value| value.to_string())
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(canonical.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body limit of the route a request reached, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !is_json(content_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let limit = request.extensions().get::<BodyLimit>().map(|limit| limit.0);
        // Refused before a byte of it is read: a declared length over the
        // limit would only be read to be thrown away, or never arrive.
        if let (Some(limit), Some(declared)) = (limit, declared_length(&request))
            && declared > limit as u64
        {
            return Err(too_large(limit, Some(declared)).closing());
        }
        let body_read_timeout = request
            .extensions()
            .get::<BodyReadTimeout>()
            .map(|timeout| timeout.0);
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    return match limit {
                        Some(limit) => too_large(limit, None),
                        None => ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            "the request body is larger than the service accepts",
                        ),
                    };
                }
                if caused_by::<TimeoutError>(&rejection) {
                    let within = body_read_timeout
                        .map(|timeout| format!(" within {} s", timeout.as_secs_f64()))
                        .unwrap_or_default();
                    return ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!("the request body did not arrive{within}"),
                    )
                    .closing();
                }
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("the request body could not be read: {rejection}"),
                )
            })?;
        let value = parse_json(&raw)?;
        Ok(Self { value, raw })
    }
}

/// A body that may be left out (`Option<JsonBody<T>>`): none when the
/// request has neither a `Content-Type` nor a body; otherwise read as
/// `JsonBody` is.
impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let empty = !request.headers().contains_key(header::CONTENT_TYPE)
            && declared_length(&request).is_none_or(|length| length == 0)
            && !request.headers().contains_key(header::TRANSFER_ENCODING);
        if empty {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(request, state)
            .await
            .map(Some)
    }
}

/// The `Content-Length` the client declared (hyper has checked that there
/// is at most one and that it is a number).
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: usize, declared: Option<u64>) -> ApiError {
    let detail = match declared {
        Some(declared) => {
            format!("the request body is {declared} bytes; this endpoint accepts at most {limit}")
        }
        None => format!("the request body is larger than the {limit} bytes this endpoint accepts"),
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
}

/// Whether `E` is anywhere in the chain of `error`'s sources (axum wraps
/// a body's error in several layers).
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<E>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// Parses `bytes` as a `T`: 400 when it is not JSON, 422 with a pointer to
/// the offending field when it is JSON of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let error = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => {
            return match deserializer.end() {
                Ok(()) => Ok(value),
                Err(trailing) => Err(malformed(&trailing)),
            };
        }
        Err(error) => error,
    };
    let inner = error.inner();
    if inner.classify() != serde_json::error::Category::Data {
        return Err(malformed(inner));
    }
    // serde stops at the first bad field; the others are found on the
    // parsed document, so a client fixes them all in one round.
    // Each further error costs a parse of the document: bodies up to
    // `SHAPE_ERRORS_MAX_BYTES` get them all, larger ones the first only.
    let errors = if bytes.len() <= SHAPE_ERRORS_MAX_BYTES {
        serde_json::from_slice::<Value>(bytes)
            .map(shape_errors::<T>)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let errors = if errors.is_empty() {
        vec![field_error(error.path(), inner)]
    } else {
        errors
    };
    Err(ApiError::validation(errors))
}

/// The largest body whose every shape error is looked for (a single job's
/// limit): a 16 MiB batch is not parsed twenty times over for its errors.
const SHAPE_ERRORS_MAX_BYTES: usize = 1024 * 1024;

/// At most this many shape errors are reported in one answer.
const MAX_SHAPE_ERRORS: usize = 20;

/// Every shape error of `document` as a `T`: each bad field is reported,
/// set aside, and the rest tried again.
fn shape_errors<T: DeserializeOwned>(mut document: Value) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = Vec::new();
    while errors.len() < MAX_SHAPE_ERRORS {
        let error = match serde_path_to_error::deserialize::<_, T>(document.clone()) {
            Ok(_) => break,
            Err(error) => error,
        };
        let found = field_error(error.path(), error.inner());
        // A field set aside may then be missing: it was reported already.
        if errors.iter().any(|known| known.pointer == found.pointer) {
            break;
        }
        let set_aside = found.message != "is required" && remove_at(&mut document, &found.pointer);
        errors.push(found);
        if !set_aside {
            break;
        }
    }
    errors
}

/// Removes the object member at `pointer`; false when it is not one (an
/// array element: removing it would shift the pointers after it).
fn remove_at(document: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match document.pointer_mut(parent) {
        Some(Value::Object(members)) => members.remove(&key).is_some(),
        _ => false,
    }
}

/// A shape error as a field error: the pointer to the field, the message
/// in JSON's words.
fn field_error(path: &serde_path_to_error::Path, error: &serde_json::Error) -> FieldError {
    let serde_message = strip_position(&error.to_string());
    let message = plain_words(&serde_message);
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            serde_path_to_error::Segment::Seq { index } => pointer.push_str(&index.to_string()),
            serde_path_to_error::Segment::Map { key } => {
                pointer.push_str(&crate::domain::escape_pointer(key))
            }
            serde_path_to_error::Segment::Enum { variant } => pointer.push_str(variant),
            serde_path_to_error::Segment::Unknown => pointer.push('?'),
        }
    }
    // A missing field is named in the message; the path stops at its parent.
    if let Some(rest) = serde_message.strip_prefix("missing field `")
        && let Some(field) = rest.split('`').next()
    {
        pointer.push('/');
        pointer.push_str(&crate::domain::escape_pointer(field));
    }
    FieldError::new(pointer, message)
}

/// serde's message about a value of the wrong shape, in the words of the
/// API (JSON's types, not Rust's); one it does not know is kept as is.
fn plain_words(message: &str) -> String {
    if message.starts_with("missing field `") {
        return "is required".to_owned();
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once("`, expected ")
    {
        return format!("`{field}` is not a field here; expected {expected}");
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once("`, expected ")
    {
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("`{value}` is not allowed; use {expected}");
    }
    let (got, expected) = if let Some(rest) = message.strip_prefix("invalid type: ") {
        match rest.split_once(", expected ") {
            Some((got, expected)) => (json_kind(got), expected),
            None => return message.to_owned(),
        }
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        match rest.split_once(", expected ") {
            Some((got, expected)) => (got.replace('`', ""), expected),
            None => return message.to_owned(),
        }
    } else if message.starts_with("number out of range") {
        return "is a number out of range".to_owned();
    } else {
        return message.to_owned();
    };
    format!("must be {}, not {got}", expected_kind(expected))
}

/// What serde says it found, as a JSON type.
fn json_kind(found: &str) -> String {
    let kind = found.split([' ', '`']).next().unwrap_or(found);
    match kind {
        "string" => "a string",
        "integer" | "floating" => "a number",
        "boolean" => "a boolean",
        "map" => "an object",
        "sequence" => "an array",
        "null" | "unit" => "null",
        _ => return found.to_owned(),
    }
    .to_owned()
}

/// What serde expected, as a JSON type (Rust's integer names become a
/// range, since JSON has one number type).
fn expected_kind(expected: &str) -> String {
    match expected {
        "i64" | "i32" | "isize" => "an integer".to_owned(),
        "u64" | "u32" | "usize" => "a whole number (0 or more)".to_owned(),
        "u16" => "a whole number from 0 to 65535".to_owned(),
        "u8" => "a whole number from 0 to 255".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        "a string" | "string" | "a borrowed string" => "a string".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        other if other.starts_with("struct ") || other.starts_with("a JSON object") => {
            "an object".to_owned()
        }
        other => other.to_owned(),
    }
}

fn malformed(error: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!("the request body is not valid JSON: {error}"),
    )
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// An id from the path; anything that is not one is simply not found (a
/// malformed id and an unknown one answer alike).
macro_rules! id_path {
    ($(#[$doc:meta])* $name:ident, $id:ty, $what:literal) => {
        $(#[$doc])*
        pub struct $name(pub $id);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                let axum::extract::Path(raw) =
                    axum::extract::Path::<String>::from_request_parts(parts, state)
                        .await
                        .map_err(|_| ApiError::not_found($what))?;
                raw.parse()
                    .map($name)
                    .map_err(|_| ApiError::not_found($what))
            }
        }
    };
}

id_path!(
    /// A job id from the path.
    JobIdPath,
    JobId,
    "job"
);
id_path!(
    /// A batch id from the path.
    BatchIdPath,
    BatchId,
    "batch"
);
id_path!(
    /// An API key id from the path.
    KeyIdPath,
    crate::domain::KeyId,
    "key"
);

/// Longest long-poll, in seconds.
pub const MAX_WAIT_S: u64 = 60;

/// `?wait=N` (seconds, 0..=60), the only parameter of a single-resource
/// read; anything else is refused so a typo doesn't go unnoticed.
pub fn parse_wait(pairs: Vec<(String, String)>) -> Result<std::time::Duration, ApiError> {
    let mut wait = std::time::Duration::ZERO;
    let mut errors = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "wait" => match value.parse::<u64>() {
                Ok(seconds) if seconds <= MAX_WAIT_S => {
                    wait = std::time::Duration::from_secs(seconds)
                }
                _ => errors.push(FieldError::parameter(
                    name,
                    format!("must be a whole number of seconds from 0 to {MAX_WAIT_S}"),
                )),
            },
            _ => errors.push(FieldError::parameter(name, "unknown parameter")),
        }
    }
    if errors.is_empty() {
        Ok(wait)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// The `Idempotency-Key` header, without copying the others.
pub struct IdempotencyHeader(pub Option<axum::http::HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(IdempotencyHeader(
            parts.headers.get("idempotency-key").cloned(),
        ))
    }
}

/// The path's parameters as `T`; `what` names the resource a path that
/// cannot be read as `T` (invalid percent-encoding) is answered 404 for.
pub async fn path_of<T, S>(parts: &mut Parts, state: &S, what: &'static str) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    axum::extract::Path::<T>::from_request_parts(parts, state)
        .await
        .map(|axum::extract::Path(value)| value)
        .map_err(|_| ApiError::not_found(what))
}

/// A name from the path (queues, tenants).
pub struct NamePath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for NamePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_of(parts, state, "queue").await.map(NamePath)
    }
}

/// The query string as ordered pairs, for endpoints that validate their own
/// parameters (and reject unknown ones).
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map(QueryPairs)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_query",
                    format!("the query string could not be parsed: {e}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobSpec;

    #[test]
    fn shape_errors_point_at_the_field_and_syntax_errors_are_malformed() {
        let error = parse_json::<JobSpec>(br#"{"kind": "noop", "priority": "high"}"#).unwrap_err();
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let error = parse_json::<JobSpec>(br#"{"kind": "noop", "prority": 1}"#).unwrap_err();
        assert_eq!(error.code(), "validation_failed");
        let error = parse_json::<JobSpec>(br#"{"kind": "noop""#).unwrap_err();
        assert_eq!(error.code(), "malformed_json");
        let error = parse_json::<JobSpec>(br#"{"kind": "noop"} trailing"#).unwrap_err();
        assert_eq!(error.code(), "malformed_json");
    }

    /// serde's message for `body`, in the API's words.
    fn said(body: &str) -> String {
        let error = serde_json::from_str::<JobSpec>(body).unwrap_err();
        plain_words(&strip_position(&error.to_string()))
    }

    #[test]
    fn shape_errors_are_said_in_json_words_not_rusts() {
        assert_eq!(
            said(r#"{"kind": "noop", "priority": "high"}"#),
            "must be an integer, not a string"
        );
        assert_eq!(
            said(r#"{"kind": "noop", "metadata": []}"#),
            "must be an object, not an array"
        );
        assert_eq!(
            plain_words("invalid value: integer `-1`, expected u32"),
            "must be a whole number (0 or more), not integer -1"
        );
        assert_eq!(said(r#"{"kind": 7}"#), "must be a string, not a number");
        assert_eq!(said(r#"{"payload": {}}"#), "is required");
        assert!(
            said(r#"{"kind": "noop", "prority": 1}"#)
                .starts_with("`prority` is not a field here; expected one of"),
            "{}",
            said(r#"{"kind": "noop", "prority": 1}"#)
        );
        assert_eq!(plain_words("something else"), "something else");
    }

    #[test]
    fn every_shape_error_is_reported_at_once_with_its_pointer() {
        let error = parse_json::<JobSpec>(
            br#"{"kind": 7, "priority": "high", "prority": 1, "metadata": [], "delay_ms": true}"#,
        )
        .unwrap_err();
        let problem = error.field_errors().expect("field errors");
        let mut pointers: Vec<&str> = problem.iter().map(|e| e.pointer.as_str()).collect();
        pointers.sort();
        assert_eq!(
            pointers,
            ["/delay_ms", "/kind", "/metadata", "/priority", "/prority"],
            "{problem:?}"
        );
        // A missing field after bad ones is reported too, once.
        let error = parse_json::<JobSpec>(br#"{"priority": "high"}"#).unwrap_err();
        let problem = error.field_errors().expect("field errors");
        let messages: Vec<(&str, &str)> = problem
            .iter()
            .map(|e| (e.pointer.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [
                ("/priority", "must be an integer, not a string"),
                ("/kind", "is required")
            ]
        );
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
