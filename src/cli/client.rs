//! Talking to the service: one reqwest client, the API key, and every
//! failure turned into a [`CliError`] that knows its exit code.

use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{ClientArgs, Exit};

/// The longest long-poll the service holds (`wait` is 0..=60 seconds).
pub const MAX_WAIT_S: u64 = 60;

/// Time an answer may take: above the longest long-poll plus the service's
/// own request timeout margin, so a slow answer is the service's to cut.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(MAX_WAIT_S + 30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Problem details as the service sends them; every field optional, since
/// a proxy in front of it may answer something else.
#[derive(Debug, Default, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
    #[serde(default)]
    pub known: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct FieldError {
    #[serde(default)]
    pub pointer: String,
    #[serde(default)]
    pub parameter: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// Why a command did not do what was asked.
#[derive(Debug)]
pub enum CliError {
    /// Bad input found before any request.
    Usage(String),
    /// The service answered with an error status. (Boxed: the problem is
    /// large, and every `Result` of the client carries this type.)
    Api {
        status: StatusCode,
        problem: Box<Problem>,
        retry_after: Option<String>,
    },
    /// No answer: refused connection, DNS, timeout, a cut stream.
    Unreachable(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::Api { status, .. } => match status.as_u16() {
                429 | 503 => Exit::Busy,
                400..=499 => Exit::Refused,
                _ => Exit::Unreachable,
            },
            CliError::Unreachable(_) => Exit::Unreachable,
        }
    }
}

/// What stderr shows: `spool: <title>: <detail>`, then one line per field.
impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) => writeln!(f, "spool: {message}"),
            CliError::Unreachable(message) => writeln!(f, "spool: {message}"),
            CliError::Api {
                status,
                problem,
                retry_after,
            } => {
                let title = if problem.title.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    problem.title.clone()
                };
                match problem.detail.as_str() {
                    "" => writeln!(f, "spool: {title}")?,
                    detail => writeln!(f, "spool: {title}: {detail}")?,
                }
                for error in &problem.errors {
                    let place = match (&error.parameter, error.pointer.as_str()) {
                        (Some(parameter), _) => parameter.as_str(),
                        (None, "") => "(body)",
                        (None, pointer) => pointer,
                    };
                    let line = format!("{place}: {}", error.message);
                    // The service's detail often is its one field's line.
                    if line != problem.detail {
                        writeln!(f, "  {line}")?;
                    }
                }
                if !problem.known.is_empty() {
                    writeln!(f, "  known: {}", problem.known.join(", "))?;
                }
                if let Some(seconds) = retry_after {
                    writeln!(f, "  retry after {seconds} s")?;
                }
                Ok(())
            }
        }
    }
}

/// Text to show of a reqwest failure: its deepest cause (reqwest's own
/// message says only "error sending request for url (…)").
fn describe(error: &reqwest::Error) -> String {
    let mut deepest: &dyn std::error::Error = error;
    while let Some(cause) = deepest.source() {
        deepest = cause;
    }
    deepest.to_string()
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<HeaderValue>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, CliError> {
        let base = args.url.trim_end_matches('/').to_owned();
        match url::Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "--url / SPOOL_URL `{base}` is not an http(s) URL"
                )));
            }
        }
        let key = match &args.api_key {
            None => None,
            Some(key) if key.is_empty() => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    CliError::Usage("the API key has characters a header cannot carry".into())
                })?;
                // Kept out of reqwest's debug output.
                value.set_sensitive(true);
                Some(value)
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("spool-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Unreachable(describe(&e)))?;
        Ok(Self { http, base, key })
    }

    /// A request to `path` (from `/v1/…`), authorized.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_with(method, path, &[])
    }

    /// A request to `path` with a query string, authorized. (reqwest's own
    /// `query` needs a feature the service does not build it with.)
    pub fn request_with(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
    ) -> RequestBuilder {
        let url = format!("{}{path}", self.base);
        let url = match url::Url::parse(&url) {
            Ok(mut url) if !query.is_empty() => {
                url.query_pairs_mut().extend_pairs(query);
                url.to_string()
            }
            // Unparseable: reqwest says so when the request is sent.
            _ => url,
        };
        let mut request = self.http.request(method, url);
        if let Some(key) = &self.key {
            request = request.header(AUTHORIZATION, key.clone());
        }
        request
    }

    /// Sends `request` and reads a 2xx answer's JSON.
    pub async fn call(&self, request: RequestBuilder) -> Result<Value, CliError> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        response
            .json()
            .await
            .map_err(|e| CliError::Unreachable(format!("unreadable answer: {}", describe(&e))))
    }

    /// Sends `request`; a non-2xx answer becomes [`CliError::Api`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| {
            CliError::Unreachable(format!("cannot reach {}: {}", self.base, describe(&e)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.unwrap_or_default();
        let problem = serde_json::from_slice::<Problem>(&body).unwrap_or_else(|_| {
            // Not problem+json (a proxy's page, say): show its start.
            let text = String::from_utf8_lossy(&body);
            Problem {
                detail: text.trim().chars().take(200).collect(),
                ..Problem::default()
            }
        });
        Err(CliError::Api {
            status,
            problem: Box::new(problem),
            retry_after,
        })
    }

    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, CliError> {
        self.call(self.request_with(Method::GET, path, query)).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let mut request = self.request(Method::POST, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.call(request).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(self.request(Method::PUT, path).json(body)).await
    }

    /// Long-polls `path` (`?wait=`, the longest the service holds) until
    /// `done` says the answer is final or `timeout` seconds passed, and
    /// returns the last answer.
    pub async fn long_poll(
        &self,
        path: &str,
        timeout: Option<u64>,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, CliError> {
        let deadline = timeout.map(|s| std::time::Instant::now() + Duration::from_secs(s));
        loop {
            let wait = poll_seconds(deadline);
            let answer = self.get(path, &[("wait".into(), wait.to_string())]).await?;
            if done(&answer) || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(answer);
            }
        }
    }

    /// A `DELETE`, whose success has no body.
    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        let request = self.request(Method::DELETE, path).timeout(REQUEST_TIMEOUT);
        self.send(request).await.map(drop)
    }
}

/// The `wait` of the next long-poll: the longest the service holds, or
/// what is left before the deadline (rounded up, so that the last poll
/// does not end early and spin).
fn poll_seconds(deadline: Option<std::time::Instant>) -> u64 {
    match deadline {
        None => MAX_WAIT_S,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            seconds.min(MAX_WAIT_S)
        }
    }
}

/// `id` as one path segment: an id typed with a slash or `?` must not
/// reach another route.
pub fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Reads JSON from a file, or standard input for `-`.
pub fn read_json(path: &std::path::Path, what: &str) -> Result<Value, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Usage(format!("cannot read {what} from stdin: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read {what} from {}: {e}", path.display()))
        })?
    };
    parse_json(&text, what)
}

pub fn parse_json(text: &str, what: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("{what} is not JSON: {e}")))
}
