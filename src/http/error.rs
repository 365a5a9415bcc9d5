//! The one HTTP error type: every failure becomes RFC 9457 problem details
//! with a stable `code`.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FieldError;
use crate::engine::EngineError;
use crate::store::StoreError;

/// The quota headers of draft-ietf-httpapi-ratelimit-headers.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";

/// Problem details (RFC 9457), as every error response carries them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:spool:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable: branch on this.
    pub code: String,
    /// Each offending field of the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// The job involved (`key_conflict`: the holder of the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// What would have been accepted (`unknown_kind`, `unknown_queue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known: Option<Vec<String>>,
}

/// An error response. 5xx causes are kept out of the body and logged once
/// by the `log_server_errors` middleware.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorInner>);

#[derive(Debug)]
struct ApiErrorInner {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Option<Vec<FieldError>>,
    job_id: Option<String>,
    known: Option<Vec<String>>,
    retry_after_s: Option<u64>,
    cause: Option<String>,
    /// Answered with `Connection: close`: the rest of the request (an
    /// unread body) is not worth reading.
    close: bool,
    /// Further headers (`WWW-Authenticate`, `RateLimit`, …).
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The `code` of a problem answer, carried to the metrics middleware in the
/// response's extensions (a refused submission is counted by it).
#[derive(Clone, Copy, Debug)]
pub struct ProblemCode(pub &'static str);

/// The cause of a 5xx, carried to the logging middleware in the response's
/// extensions (never in its body).
#[derive(Clone, Debug)]
pub struct ServerErrorCause(pub String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(ApiErrorInner {
            status,
            code,
            detail: detail.into(),
            errors: None,
            job_id: None,
            known: None,
            retry_after_s: None,
            cause: None,
            close: false,
            headers: Vec::new(),
        }))
    }

    /// No key, or one that is unknown, revoked or expired. Which of those it
    /// was is not said: a caller probing keys learns nothing.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// A valid key whose role may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    /// Adds a quota policy and its state (`RateLimit-Policy` and `RateLimit`,
    /// draft-ietf-httpapi-ratelimit-headers): one list member each, beside
    /// any added before.
    pub fn with_rate_limit(self, policy: String, state: String) -> Self {
        let mut error = self;
        for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, state)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                error = error.with_header(HeaderName::from_static(name), value);
            }
        }
        error
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] if one.pointer.is_empty() => one.message.clone(),
            [one] => format!("{}: {}", one.pointer, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        );
        error.0.errors = Some(errors);
        error
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle this request; it has been logged",
        );
        error.0.cause = Some(cause.to_string());
        error
    }

    pub fn storage_unavailable(cause: impl std::fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "storage is unavailable; try again shortly",
        );
        error.0.cause = Some(cause.to_string());
        error.0.retry_after_s = Some(2);
        error
    }

    /// A request that took longer than the request timeout. The server's
    /// failure, hence a 5xx with its cause logged.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request took longer than {} s; try again shortly",
                limit.as_secs_f64()
            ),
        );
        error.0.cause = Some(format!(
            "the request timed out after {} ms",
            limit.as_millis()
        ));
        error
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after_s = Some(seconds);
        self
    }

    /// Ends the connection after this answer.
    pub fn closing(mut self) -> Self {
        self.0.close = true;
        self
    }

    /// Refused for now: too many lists are running. Point reads and
    /// `/readyz` are still served.
    pub fn busy(cause: impl std::fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many lists are running at once; try again shortly",
        );
        error.0.cause = Some(cause.to_string());
        error.0.retry_after_s = Some(1);
        error
    }

    pub fn with_job(mut self, job_id: impl ToString) -> Self {
        self.0.job_id = Some(job_id.to_string());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    /// The offending fields of a `validation_failed`.
    pub fn field_errors(&self) -> Option<&[FieldError]> {
        self.0.errors.as_deref()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Database { .. } => {
                Self::storage_unavailable(error)
            }
            StoreError::Busy(_) => Self::busy(error),
            StoreError::Migrate(_) | StoreError::Corrupt(_) => Self::internal(error),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let detail = error.to_string();
        match error {
            EngineError::Validation(errors) => Self::validation(errors),
            EngineError::UnknownKind { known, .. } => {
                let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_kind", detail);
                e.0.errors = Some(vec![FieldError::new("/kind", "not a registered kind")]);
                e.0.known = Some(known);
                e
            }
            EngineError::UnknownQueue { known, .. } => {
                let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_queue", detail);
                e.0.errors = Some(vec![FieldError::new("/queue", "not a configured queue")]);
                e.0.known = Some(known);
                e
            }
            EngineError::QueueFull { retry_after_s, .. } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", detail);
                e.0.retry_after_s = Some(retry_after_s);
                e
            }
            EngineError::TenantQuota {
                max_pending,
                pending,
                retry_after_s,
                ..
            } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "tenant_quota", detail);
                e.0.retry_after_s = Some(retry_after_s);
                let room = max_pending.saturating_sub(pending);
                e.with_rate_limit(
                    format!("\"pending\";q={max_pending}"),
                    format!("\"pending\";r={room};t={retry_after_s}"),
                )
            }
            EngineError::KeyConflict { holder, .. } => {
                Self::new(StatusCode::CONFLICT, "key_conflict", detail).with_job(holder)
            }
            EngineError::IdempotencyMismatch => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                detail,
            ),
            EngineError::AlreadyFinished(job) => {
                Self::new(StatusCode::CONFLICT, "already_finished", detail).with_job(job.id)
            }
            EngineError::NotRetryable(job) => {
                Self::new(StatusCode::CONFLICT, "not_retryable", detail).with_job(job.id)
            }
            EngineError::BatchTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
            }
            EngineError::BatchFinished(job) => {
                Self::new(StatusCode::CONFLICT, "batch_finished", detail).with_job(job.id)
            }
            EngineError::DependencyFailed { job, .. } => {
                Self::new(StatusCode::CONFLICT, "dependency_failed", detail).with_job(job.id)
            }
            EngineError::BatchRunning(_) => {
                Self::new(StatusCode::CONFLICT, "batch_running", detail)
            }
            EngineError::BatchNothingToRetry(_) => {
                Self::new(StatusCode::CONFLICT, "not_retryable", detail)
            }
            EngineError::BatchAlreadyFinished(_) => {
                Self::new(StatusCode::CONFLICT, "already_finished", detail)
            }
            EngineError::NotFound(what) => Self::not_found(what),
            EngineError::QueueNotEmpty { .. } => {
                Self::new(StatusCode::CONFLICT, "queue_not_empty", detail)
            }
            EngineError::DefaultQueue(_) => {
                Self::new(StatusCode::CONFLICT, "default_queue", detail)
            }
            EngineError::ShuttingDown => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", detail);
                e.0.retry_after_s = Some(5);
                e
            }
            EngineError::Storage(store) => Self::from(store),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = *self.0;
        let title = error
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_owned();
        let problem = Problem {
            type_: format!("urn:spool:problem:{}", error.code),
            title,
            status: error.status.as_u16(),
            detail: error.detail,
            code: error.code.to_owned(),
            errors: error.errors,
            job_id: error.job_id,
            known: error.known,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (error.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = error.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if error.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Appended: a header given twice (two quota policies) is a list.
        for (name, value) in error.headers {
            headers.append(name, value);
        }
        if let Some(cause) = error.cause {
            response.extensions_mut().insert(ServerErrorCause(cause));
        }
        response.extensions_mut().insert(ProblemCode(error.code));
        response
    }
}
