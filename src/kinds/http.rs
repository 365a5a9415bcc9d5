//! The `http` kind: one outbound HTTP request through the guarded client.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use url::Url;

use super::{JobContext, JobFailure, JobKind};
use crate::domain::FieldError;
use crate::outbound::{MAX_REDIRECTS, Outbound};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Headers that frame the message or the connection: the client sets them
/// from the body it sends, and a payload's own value would disagree with it.
const RESERVED_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Makes one HTTP request per attempt and returns the response.
pub struct HttpKind {
    outbound: Outbound,
    max_response_bytes: usize,
}

impl HttpKind {
    pub fn new(outbound: Outbound, max_response_bytes: usize) -> Self {
        Self {
            outbound,
            max_response_bytes,
        }
    }
}

#[derive(Deserialize)]
struct HttpPayload {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// `Some(Value::Null)` for `"body": null` (sent as JSON), `None` if absent.
    #[serde(default, deserialize_with = "present")]
    body: Option<Value>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    expect_status: Option<Vec<u16>>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// A response read within the size cap.
struct Answer {
    status: StatusCode,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    truncated: bool,
}

#[async_trait]
impl JobKind for HttpKind {
    fn name(&self) -> &str {
        "http"
    }

    fn description(&self) -> &str {
        "Makes one HTTP request and returns {status, headers, body, body_truncated}; \
         5xx, 429, timeouts and network errors are retried, other unexpected statuses \
         fail at once. Non-public destinations are refused unless SPOOL_OUTBOUND_ALLOW \
         opens them."
    }

    fn payload_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "method": {"enum": METHODS},
                "url": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 8192,
                    "description": "An absolute http or https URL."
                },
                "headers": {
                    "type": "object",
                    "maxProperties": 100,
                    "additionalProperties": {"type": "string", "maxLength": 8192}
                },
                "body": {
                    "description": "A string is sent as is; any other JSON is sent as JSON \
                                    (content-type application/json unless a content-type \
                                    header is given)."
                },
                "timeout_ms": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_TIMEOUT_MS,
                    "default": DEFAULT_TIMEOUT_MS
                },
                "expect_status": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 100,
                    "items": {"type": "integer", "minimum": 100, "maximum": 599},
                    "description": "Statuses that count as success. Default: any 2xx."
                }
            },
            "required": ["method", "url"],
            "additionalProperties": false
        })
    }

    fn check_payload(&self, payload: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(url) = payload.get("url").and_then(Value::as_str) {
            match Url::parse(url) {
                Ok(url) => {
                    if let Err(refused) = self.outbound.check_url(&url) {
                        errors.push(FieldError::new("/url", refused.to_string()));
                    }
                }
                Err(error) => errors.push(FieldError::new(
                    "/url",
                    format!("not an absolute URL: {error}"),
                )),
            }
        }
        if let Some(headers) = payload.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                if let Err(message) = header(name, value.as_str().unwrap_or_default()) {
                    errors.push(FieldError::new(
                        format!("/headers/{}", escape_pointer(name)),
                        message,
                    ));
                }
            }
        }
        errors
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let payload: HttpPayload = serde_json::from_value(ctx.payload)
            .map_err(|e| JobFailure::permanent("invalid_payload", e.to_string()))?;
        let timeout = Duration::from_millis(payload.timeout_ms);
        let exchange = tokio::time::timeout(timeout, self.exchange(&payload));
        let answer = tokio::select! {
            outcome = exchange => outcome.map_err(|_| {
                JobFailure::retryable(
                    "timeout",
                    format!("no complete response within timeout_ms ({} ms)", payload.timeout_ms),
                )
            })??,
            () = ctx.cancel.cancelled() => {
                return Err(JobFailure::permanent("cancelled", "stopped on request"));
            }
        };
        Ok(json!({
            "status": answer.status.as_u16(),
            "headers": answer.headers,
            "body": String::from_utf8_lossy(&answer.body),
            "body_truncated": answer.truncated,
        }))
    }
}

impl HttpKind {
    /// Sends the request and reads the answer; a status that is not expected
    /// is a failure, and its body is not read.
    async fn exchange(&self, payload: &HttpPayload) -> Result<Answer, JobFailure> {
        let url = Url::parse(&payload.url)
            .map_err(|e| JobFailure::permanent("invalid_payload", format!("url: {e}")))?;
        // Checked again at run time: the allow list may have changed since
        // submission, and IP literals never reach the resolver's check.
        self.outbound
            .check_url(&url)
            .map_err(|refused| JobFailure::permanent("destination_refused", refused.to_string()))?;
        let method = Method::from_bytes(payload.method.as_bytes())
            .map_err(|e| JobFailure::permanent("invalid_payload", format!("method: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &payload.headers {
            let (name, value) = header(name, value).map_err(|message| {
                JobFailure::permanent("invalid_payload", format!("header {name}: {message}"))
            })?;
            headers.append(name, value);
        }
        let mut request = self
            .outbound
            .http_client()
            .request(method, url)
            .headers(headers);
        request = match &payload.body {
            None => request,
            Some(Value::String(text)) => request.body(text.clone()),
            // `json` keeps a content-type the payload gave.
            Some(other) => request.json(other),
        };
        let mut response = request.send().await.map_err(failure)?;
        let status = response.status();
        classify(status, payload.expect_status.as_deref())?;
        let headers = joined_headers(response.headers());
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            let room = self.max_response_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body,
            truncated,
        })
    }
}

/// Whether `status` is a success, a passing failure or a final one.
fn classify(status: StatusCode, expected: Option<&[u16]>) -> Result<(), JobFailure> {
    let success = match expected {
        Some(expected) => expected.contains(&status.as_u16()),
        None => status.is_success(),
    };
    if success {
        Ok(())
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(JobFailure::retryable(
            "http_status",
            format!("the server answered status {status}"),
        ))
    } else {
        Err(JobFailure::permanent(
            "unexpected_status",
            format!("the server answered status {status}, which was not expected"),
        ))
    }
}

fn failure(error: reqwest::Error) -> JobFailure {
    if let Some(refused) = Outbound::refused(&error) {
        return JobFailure::permanent("destination_refused", refused);
    }
    // Refused redirects were caught above; the policy's only other error is the limit.
    if error.is_redirect() {
        return JobFailure::permanent(
            "too_many_redirects",
            format!("more than {MAX_REDIRECTS} redirects"),
        );
    }
    if error.is_builder() {
        return JobFailure::permanent("invalid_payload", describe(error));
    }
    let code = if error.is_timeout() {
        "timeout"
    } else {
        "network_error"
    };
    JobFailure::retryable(code, describe(error))
}

/// The error and its causes on one line, without the URL (which may carry
/// credentials or tokens the job's error would then show).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A payload header as sent, or why it cannot be.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| "not a valid header name".to_owned())?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "{name} is set by the client from the body and connection"
        ));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| "not a valid header value (visible ASCII and spaces)".to_owned())?;
    Ok((name, value))
}

/// Lowercase names (as `HeaderName` keeps them); repeated headers joined.
fn joined_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .keys()
        .map(|name| {
            let values: Vec<_> = headers
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()))
                .collect();
            (name.as_str().to_owned(), values.join(", "))
        })
        .collect()
}

/// One JSON Pointer reference token (RFC 6901).
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbound::StaticLookup;

    fn kind() -> HttpKind {
        let outbound =
            Outbound::new(Default::default(), Arc::new(StaticLookup::default())).unwrap();
        HttpKind::new(outbound, 1024)
    }

    fn pointers(payload: Value) -> Vec<String> {
        kind()
            .check_payload(&payload)
            .into_iter()
            .map(|error| error.pointer)
            .collect()
    }

    #[test]
    fn refused_literals_loopback_names_and_bad_schemes_are_caught_at_submission() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert_eq!(
                pointers(json!({"method": "GET", "url": url})),
                ["/url"],
                "{url}"
            );
        }
    }

    #[test]
    fn public_addresses_and_names_wait_for_run_time() {
        for url in [
            "https://example.com/x",
            "http://8.8.8.8/",
            "http://rebind.example/",
        ] {
            assert!(
                pointers(json!({"method": "GET", "url": url})).is_empty(),
                "{url}"
            );
        }
    }

    #[test]
    fn invalid_and_framing_headers_point_at_their_name() {
        let payload = json!({"method": "GET", "url": "https://example.com/", "headers": {
            "x-ok": "fine", "bad name": "x", "x-bad-value": "a\nb", "Content-Length": "3", "a/b": "x"
        }});
        let mut found = pointers(payload);
        found.sort();
        assert_eq!(
            found,
            [
                "/headers/Content-Length",
                "/headers/a~1b",
                "/headers/bad name",
                "/headers/x-bad-value"
            ]
        );
    }

    #[test]
    fn statuses_are_classified_by_expectation_then_retryability() {
        let code = |status: u16, expected: Option<&[u16]>| {
            classify(StatusCode::from_u16(status).unwrap(), expected)
                .err()
                .map(|failure| (failure.code().to_owned(), failure.is_retryable()))
        };
        assert_eq!(code(204, None), None);
        assert_eq!(code(503, None), Some(("http_status".into(), true)));
        assert_eq!(code(429, None), Some(("http_status".into(), true)));
        assert_eq!(code(404, None), Some(("unexpected_status".into(), false)));
        assert_eq!(code(302, None), Some(("unexpected_status".into(), false)));
        assert_eq!(code(404, Some(&[404])), None);
        assert_eq!(
            code(200, Some(&[404])),
            Some(("unexpected_status".into(), false))
        );
        assert_eq!(code(503, Some(&[503])), None);
    }
}
