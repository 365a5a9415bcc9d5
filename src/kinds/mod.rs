//! Job kinds: the handler trait library users implement, the registry, and the built-ins.

mod builtin;
mod exec;
mod http;
mod secrets;
mod words;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::domain::{FieldError, Job, JobId, Progress, Redactor, TraceContext};

pub use builtin::{EchoKind, NoopKind, SleepKind};
pub use exec::{ExecCommand, ExecConfigError, ExecKind};
pub use http::{HttpKind, SecretHeaders};
pub use secrets::{MASK, MIN_MASKED_IN_OUTPUT, Secrets};

/// How an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobFailure {
    /// A passing fault: the attempt is retried with backoff while attempts
    /// remain, and no sooner than `retry_after` when the fault said when
    /// (a `Retry-After`); that also closes the job's rate-limit key until
    /// then.
    #[error("{code}: {message}")]
    Retryable {
        code: String,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Trying again cannot help: the job fails at once.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
}

impl JobFailure {
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Retryable {
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// A retryable failure that says how long to wait (a permanent one is
    /// left as it is).
    pub fn after(self, wait: std::time::Duration) -> Self {
        match self {
            Self::Retryable { code, message, .. } => Self::Retryable {
                code,
                message,
                retry_after: Some(wait),
            },
            permanent => permanent,
        }
    }

    /// How long the failure asked to wait before trying again.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    pub fn code(&self) -> &str {
        match self {
            Self::Retryable { code, .. } | Self::Permanent { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Retryable { message, .. } | Self::Permanent { message, .. } => message,
        }
    }
}

/// Lets a running job report progress; reports are stored and shown on the job.
#[async_trait]
pub trait ProgressSink: Send + Sync {
    async fn report(&self, progress: Progress);
}

/// The outcome of a job this one depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct DependencyResult {
    pub job_id: JobId,
    /// Its result (`None` if it returned none or was pruned meanwhile).
    pub result: Option<Value>,
}

/// Everything a handler gets for one attempt.
pub struct JobContext {
    pub job_id: JobId,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub payload: Value,
    /// The results of the jobs in `depends_on`, in that order (all succeeded).
    pub dependencies: Vec<DependencyResult>,
    /// Fires when the job is cancelled, times out, or the service shuts down.
    /// Handlers should stop promptly; after a grace period the task is aborted.
    pub cancel: CancellationToken,
    /// This attempt's W3C trace context: a child of the submission's, when
    /// it carried one. The `http` kind sends it on as `traceparent`, `exec`
    /// commands get it as `TRACEPARENT`.
    pub trace: Option<TraceContext>,
    progress: Arc<dyn ProgressSink>,
}

impl JobContext {
    pub fn new(
        job_id: JobId,
        attempt: u32,
        payload: Value,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressSink>,
    ) -> Self {
        Self {
            job_id,
            attempt,
            payload,
            dependencies: Vec::new(),
            cancel,
            trace: None,
            progress,
        }
    }

    /// Runs the attempt within `trace`.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// Hands the job its dependencies' results.
    pub fn with_dependencies(mut self, dependencies: Vec<DependencyResult>) -> Self {
        self.dependencies = dependencies;
        self
    }

    /// Records progress on the job (`GET /v1/jobs/{id}` shows the latest).
    pub async fn progress(&self, current: u64, total: Option<u64>, message: Option<String>) {
        self.progress
            .report(Progress {
                current,
                total,
                message,
            })
            .await;
    }
}

/// A kind of job: a name, a payload schema and the code that runs it.
#[async_trait]
pub trait JobKind: Send + Sync + 'static {
    /// The `kind` clients submit; unique in a registry.
    fn name(&self) -> &str;
    /// One line for `GET /v1/kinds`.
    fn description(&self) -> &str;
    /// JSON Schema (2020-12) of the payload; submissions are checked against it.
    fn payload_schema(&self) -> Value;
    /// Checks a schema-valid payload further, for what a schema cannot say
    /// (e.g. a URL that may not be reached). Pointers are relative to the
    /// payload (`/url`); an error refuses the submission with 422.
    fn check_payload(&self, _payload: &Value) -> Vec<FieldError> {
        Vec::new()
    }
    /// Replaces the secret values of a payload (credentials, tokens) with
    /// [`MASK`], in place. The stored payload keeps them and `run` gets them;
    /// every read, list, webhook body and replayed response shows this form
    /// instead, and the values it replaced are masked too wherever the job's
    /// result, error or progress message repeats them (those of at least
    /// [`MIN_MASKED_IN_OUTPUT`] characters). It may get any JSON, also a
    /// payload the schema refuses, and must not panic. Default: nothing is
    /// secret.
    fn redact(&self, _payload: &mut Value) {}
    /// Runs one attempt. The returned value becomes the job's `result`.
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure>;
}

/// A kind as `GET /v1/kinds` lists it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct KindInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the payload.
    pub schema: Value,
}

struct RegisteredKind {
    handler: Arc<dyn JobKind>,
    validator: jsonschema::Validator,
}

/// Errors registering a kind: found at start-up, never at request time.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("job kind `{0}` is registered twice")]
    Duplicate(String),
    #[error("job kind `{name}` has an invalid payload schema: {reason}")]
    InvalidSchema { name: String, reason: String },
}

/// The kinds this service runs, by name, with compiled payload validators.
#[derive(Clone, Default)]
pub struct KindRegistry {
    kinds: Arc<BTreeMap<String, RegisteredKind>>,
}

impl KindRegistry {
    /// The built-in kinds: `noop`, `echo`, `sleep`.
    pub fn builtin() -> Vec<Arc<dyn JobKind>> {
        vec![Arc::new(NoopKind), Arc::new(EchoKind), Arc::new(SleepKind)]
    }

    pub fn new(kinds: Vec<Arc<dyn JobKind>>) -> Result<Self, RegistryError> {
        let mut map = BTreeMap::new();
        for handler in kinds {
            let name = handler.name().to_owned();
            let validator = jsonschema::validator_for(&handler.payload_schema()).map_err(|e| {
                RegistryError::InvalidSchema {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            if map
                .insert(name.clone(), RegisteredKind { handler, validator })
                .is_some()
            {
                return Err(RegistryError::Duplicate(name));
            }
        }
        Ok(Self {
            kinds: Arc::new(map),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn JobKind>> {
        self.kinds.get(name).map(|kind| kind.handler.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    pub fn list(&self) -> Vec<KindInfo> {
        self.kinds
            .values()
            .map(|kind| KindInfo {
                name: kind.handler.name().to_owned(),
                description: kind.handler.description().to_owned(),
                schema: kind.handler.payload_schema(),
            })
            .collect()
    }

    /// Checks `payload` against the kind's schema; each error points into the
    /// request body below `at` (e.g. `/payload`). Messages that quote a
    /// secret value (schema errors quote the instance) show it masked.
    pub fn validate_payload(&self, kind_name: &str, payload: &Value, at: &str) -> Vec<FieldError> {
        let Some(kind) = self.kinds.get(kind_name) else {
            return Vec::new();
        };
        // The common case, a valid payload, without collecting anything.
        let errors: Vec<FieldError> = if kind.validator.is_valid(payload) {
            kind.handler
                .check_payload(payload)
                .into_iter()
                .map(|error| FieldError {
                    pointer: format!("{at}{}", error.pointer),
                    ..error
                })
                .collect()
        } else {
            words::field_errors(kind.validator.iter_errors(payload), at)
        };
        if errors.is_empty() {
            return errors;
        }
        let secrets = self.secrets(kind_name, payload);
        errors
            .into_iter()
            .map(|error| FieldError {
                message: secrets.mask_text(&error.message).into_owned(),
                ..error
            })
            .collect()
    }

    /// Masks the secret values of a payload of `kind` (see [`JobKind::redact`]).
    pub fn redact(&self, kind: &str, payload: &mut Value) {
        if let Some(kind) = self.kinds.get(kind) {
            kind.handler.redact(payload);
        }
    }

    /// The secret values of a payload of `kind`: those its redaction masks.
    pub fn secrets(&self, kind: &str, payload: &Value) -> Secrets {
        let mut shown = payload.clone();
        self.redact(kind, &mut shown);
        Secrets::between(payload, &shown)
    }

    /// Masks a job's secret payload values, for showing it.
    pub fn redact_job(&self, job: &mut Job) {
        self.redact(&job.kind, &mut job.payload);
    }

    /// [`Self::redact_job`] for the store and the webhook deliverer.
    pub fn redactor(&self) -> Redactor {
        let kinds = self.clone();
        Redactor::new(move |job| kinds.redact_job(job))
    }
}
