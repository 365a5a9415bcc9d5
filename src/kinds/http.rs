//! The `http` kind: one outbound HTTP request through the guarded client.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use url::Url;

use super::{JobContext, JobFailure, JobKind, MASK};
use crate::domain::{FieldError, Timestamp, TraceContext};
use crate::outbound::{MAX_REDIRECTS, Outbound};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The engine's cap on a stored result (`EngineSettings::max_result_bytes`):
/// a result over it fails the job, so whatever the target answers, the
/// result is built to fit under it.
const RESULT_CAP: usize = 256 * 1024;
/// Most bytes the `headers` object takes in the result, JSON-encoded.
const HEADERS_JSON_BUDGET: usize = 32 * 1024;
/// Most bytes one header value takes, JSON-encoded: one huge header must not
/// crowd out all the others.
const HEADER_VALUE_JSON_BUDGET: usize = 8 * 1024;
/// Room for the status, the keys and the flags around body and headers.
const ENVELOPE_BYTES: usize = 1024;
/// Most bytes the `body` string takes in the result, JSON-encoded: escaping
/// makes a control byte six (`\u0001`), so a raw cap alone cannot bound it.
const BODY_JSON_BUDGET: usize = RESULT_CAP - HEADERS_JSON_BUDGET - ENVELOPE_BYTES;

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

/// Headers whose payload values are always secret.
const ALWAYS_SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Header names whose values in a payload are secret besides
/// [`ALWAYS_SECRET_HEADERS`] (`SPOOL_HTTP_SECRET_HEADERS`): a comma-separated
/// list, matched without regard to case. Default: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretHeaders(BTreeSet<String>);

impl SecretHeaders {
    /// Whether the value of header `name` is secret (these or the built-in ones).
    pub fn contains(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        ALWAYS_SECRET_HEADERS.contains(&name.as_str()) || self.0.contains(&name)
    }
}

impl FromStr for SecretHeaders {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut names = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("`{name}` is not a header name"));
            }
            names.insert(name.to_ascii_lowercase());
        }
        Ok(Self(names))
    }
}

impl fmt::Display for SecretHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(String::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// Makes one HTTP request per attempt and returns the response.
pub struct HttpKind {
    outbound: Outbound,
    max_response_bytes: usize,
    secret_headers: SecretHeaders,
}

impl HttpKind {
    pub fn new(outbound: Outbound, max_response_bytes: usize) -> Self {
        Self {
            outbound,
            max_response_bytes,
            secret_headers: SecretHeaders::default(),
        }
    }

    /// Makes the values of `headers` secret too, besides Authorization,
    /// Cookie and Proxy-Authorization: sent, but shown as `***`.
    pub fn with_secret_headers(mut self, headers: SecretHeaders) -> Self {
        self.secret_headers = headers;
        self
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
        "Makes one HTTP request and returns {status, headers, body, body_truncated, \
         headers_truncated}; \
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
                    "additionalProperties": {"type": "string", "maxLength": 8192},
                    "description": "Sent with the request. The values of Authorization, \
                                    Cookie, Proxy-Authorization and of the names in \
                                    SPOOL_HTTP_SECRET_HEADERS are secret: the job is \
                                    shown with \"***\" in their place."
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

    fn redact(&self, payload: &mut Value) {
        let Some(headers) = payload.get_mut("headers").and_then(Value::as_object_mut) else {
            return;
        };
        for (name, value) in headers {
            if self.secret_headers.contains(name) {
                *value = Value::String(MASK.to_owned());
            }
        }
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let payload: HttpPayload = serde_json::from_value(ctx.payload)
            .map_err(|e| JobFailure::permanent("invalid_payload", e.to_string()))?;
        let timeout = Duration::from_millis(payload.timeout_ms);
        let exchange = tokio::time::timeout(timeout, self.exchange(&payload, ctx.trace.as_ref()));
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
        Ok(answer.into_result())
    }
}

impl Answer {
    /// The job's result, within [`RESULT_CAP`] whatever the answer held.
    fn into_result(self) -> Value {
        let body = String::from_utf8_lossy(&self.body);
        let (body, body_cut) = cut_to_json_len(&body, BODY_JSON_BUDGET);
        let (headers, headers_truncated) = bounded_headers(self.headers);
        json!({
            "status": self.status.as_u16(),
            "headers": headers,
            "body": body,
            "body_truncated": self.truncated || body_cut,
            "headers_truncated": headers_truncated,
        })
    }
}

impl HttpKind {
    /// Sends the request and reads the answer; a status that is not expected
    /// is a failure, and its body is not read.
    async fn exchange(
        &self,
        payload: &HttpPayload,
        trace: Option<&TraceContext>,
    ) -> Result<Answer, JobFailure> {
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
        // The attempt's trace context, unless the payload sets its own.
        if let Some(trace) = trace
            && !headers.contains_key("traceparent")
        {
            for (name, value) in [
                ("traceparent", Some(&trace.traceparent)),
                ("tracestate", trace.tracestate.as_ref()),
            ] {
                if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                    headers.insert(name, value);
                }
            }
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
        classify(status, payload.expect_status.as_deref()).map_err(|failure| match retry_after(
            response.headers(),
            Timestamp::now(),
        ) {
            Some(wait) if is_throttling(status) => failure.after(wait),
            _ => failure,
        })?;
        let headers = joined_headers(response.headers());
        // A byte never takes less than one once decoded and escaped, so more
        // than the JSON budget would be cut anyway: no need to hold it.
        let max_bytes = self.max_response_bytes.min(BODY_JSON_BUDGET + 1);
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            let room = max_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if truncated {
            // A character cut in two would show as a replacement character.
            body.truncate(body.len() - partial_char_tail(&body));
        }
        Ok(Answer {
            status,
            headers,
            body,
            truncated,
        })
    }
}

/// Longest `Retry-After` honoured: a server asking for more gets this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// Statuses whose `Retry-After` says the server throttles us.
fn is_throttling(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP
/// date (RFC 9110), at most `MAX_RETRY_AFTER`; `None` when absent or
/// unreadable.
fn retry_after(headers: &reqwest::header::HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at =
                time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822)
                    .ok()?;
            let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
            Duration::from_millis(at_ms.saturating_sub(now.as_millis()).max(0) as u64)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
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

/// Header values cut to [`HEADER_VALUE_JSON_BUDGET`], then as many headers
/// as fit [`HEADERS_JSON_BUDGET`], the smallest first (so ordinary headers
/// survive a few huge ones); `true` if anything was cut or left out.
fn bounded_headers(headers: BTreeMap<String, String>) -> (BTreeMap<String, String>, bool) {
    let mut truncated = false;
    let mut entries: Vec<(usize, String, String)> = headers
        .into_iter()
        .map(|(name, value)| {
            let (kept, cut) = cut_to_json_len(&value, HEADER_VALUE_JSON_BUDGET);
            truncated |= cut;
            let value = if cut { kept.to_owned() } else { value };
            // `"name":"value",`
            let size = json_len(&name) + json_len(&value) + 6;
            (size, name, value)
        })
        .collect();
    entries.sort();
    // `{` and `}`.
    let mut used = 2;
    let mut kept = BTreeMap::new();
    for (size, name, value) in entries {
        if used + size > HEADERS_JSON_BUDGET {
            truncated = true;
            break;
        }
        used += size;
        kept.insert(name, value);
    }
    (kept, truncated)
}

/// The longest prefix of `text` whose JSON string encoding (quotes aside)
/// takes at most `budget` bytes, and whether anything was cut.
fn cut_to_json_len(text: &str, budget: usize) -> (&str, bool) {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += json_char_len(c);
        if used > budget {
            return (&text[..at], true);
        }
    }
    (text, false)
}

/// Bytes `text` takes inside a JSON string.
fn json_len(text: &str) -> usize {
    text.chars().map(json_char_len).sum()
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        '\0'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// Bytes at the end of `bytes` that begin a UTF-8 character without
/// finishing it.
fn partial_char_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(4) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xc0 == 0x80 {
            continue;
        }
        let needed = match byte {
            0xf0.. => 4,
            0xe0.. => 3,
            0xc0.. => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
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
    fn secret_headers_are_masked_in_any_case_and_others_kept() {
        let configured = kind().with_secret_headers("X-Api-Key".parse().unwrap());
        let mut payload = json!({"method": "GET", "url": "https://example.com/", "headers": {
            "AUTHORIZATION": "Bearer t", "cookie": "a=b", "Proxy-Authorization": "Basic x",
            "x-api-key": "k", "x-other": "seen"
        }});
        configured.redact(&mut payload);
        assert_eq!(
            payload["headers"],
            json!({"AUTHORIZATION": "***", "cookie": "***", "Proxy-Authorization": "***",
                   "x-api-key": "***", "x-other": "seen"})
        );
        // Without configured names only the three built-in ones are secret.
        let mut payload = json!({"headers": {"x-api-key": "k", "Cookie": "c"}});
        kind().redact(&mut payload);
        assert_eq!(
            payload["headers"],
            json!({"x-api-key": "k", "Cookie": "***"})
        );
        // Any JSON, no panic.
        for mut odd in [json!(null), json!({"headers": "x"}), json!([1])] {
            configured.redact(&mut odd);
        }
        assert_eq!(
            "".parse::<SecretHeaders>().unwrap(),
            SecretHeaders::default()
        );
        assert!("x-ok, bad name".parse::<SecretHeaders>().is_err());
    }

    #[test]
    fn the_result_cap_is_the_engines() {
        assert_eq!(
            RESULT_CAP,
            crate::engine::EngineSettings::default().max_result_bytes
        );
    }

    #[test]
    fn escaped_lengths_match_what_serde_json_writes() {
        let chars = (0..=0x7f_u32).filter_map(char::from_u32).chain([
            '\u{80}',
            '\u{2028}',
            '\u{fffd}',
            '\u{10ffff}',
            'é',
        ]);
        for c in chars {
            let encoded = serde_json::to_string(&c.to_string()).unwrap();
            assert_eq!(json_char_len(c), encoded.len() - 2, "{c:?}");
        }
    }

    #[test]
    fn a_worst_case_answer_still_fits_the_result_cap() {
        let huge: String = "\u{1}\"\\".repeat(200_000);
        let headers = (0..100)
            .map(|i| (format!("x-header-{i:03}"), huge.clone()))
            .collect();
        let answer = Answer {
            status: StatusCode::OK,
            headers,
            body: huge.into_bytes(),
            truncated: true,
        };
        let result = answer.into_result();
        let size = serde_json::to_vec(&result).unwrap().len();
        assert!(size <= RESULT_CAP, "{size} bytes");
        assert_eq!(result["body_truncated"], true);
        assert_eq!(result["headers_truncated"], true);
        assert!(!result["body"].as_str().unwrap().is_empty());
        assert!(!result["headers"].as_object().unwrap().is_empty());
    }

    #[test]
    fn small_headers_are_kept_whole_and_huge_ones_cut_or_left_out() {
        let mut headers: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("x-huge-{i}"), "v".repeat(100_000)))
            .collect();
        headers.insert("content-type".into(), "text/plain".into());
        headers.insert("a-small".into(), "1".into());
        let (kept, truncated) = bounded_headers(headers);
        assert!(truncated);
        assert_eq!(kept["content-type"], "text/plain");
        assert_eq!(kept["a-small"], "1");
        let huge: Vec<_> = kept.keys().filter(|k| k.starts_with("x-huge")).collect();
        assert!(!huge.is_empty() && huge.len() < 10, "{huge:?}");
        assert!(
            kept.values()
                .all(|value| json_len(value) <= HEADER_VALUE_JSON_BUDGET)
        );
        let size = serde_json::to_vec(&kept).unwrap().len();
        assert!(size <= HEADERS_JSON_BUDGET, "{size} bytes");

        let ordinary = BTreeMap::from([("x".to_owned(), "y".to_owned())]);
        assert_eq!(bounded_headers(ordinary.clone()), (ordinary, false));
    }

    #[test]
    fn a_character_cut_in_two_at_the_end_is_found() {
        assert_eq!(partial_char_tail(b""), 0);
        assert_eq!(partial_char_tail(b"abc"), 0);
        assert_eq!(partial_char_tail("é".as_bytes()), 0);
        assert_eq!(partial_char_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(partial_char_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(partial_char_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(partial_char_tail("a😀".as_bytes()), 0);
    }

    proptest::proptest! {
        #[test]
        fn a_cut_keeps_the_longest_prefix_within_the_budget(text in "\\PC*|[\\x00-\\x20\"\\\\é]*", budget in 0usize..64) {
            let (kept, cut) = cut_to_json_len(&text, budget);
            proptest::prop_assert!(text.starts_with(kept));
            let encoded = serde_json::to_string(kept).unwrap().len() - 2;
            proptest::prop_assert!(encoded <= budget);
            proptest::prop_assert_eq!(cut, kept.len() < text.len());
            if let Some(next) = text[kept.len()..].chars().next() {
                proptest::prop_assert!(encoded + json_char_len(next) > budget);
            }
        }
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

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_capped() {
        let now = Timestamp::parse_rfc3339("2026-12-07T10:00:00Z").unwrap();
        let after = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::RETRY_AFTER,
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
            retry_after(&headers, now)
        };
        assert_eq!(after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            after("Mon, 07 Dec 2026 10:00:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(after("soon"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }
}
