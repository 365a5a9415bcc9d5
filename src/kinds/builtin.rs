//! The built-in kinds: `noop` and `echo` for tests and benchmarks, `sleep` for
//! exercising progress, failures, timeouts and cancellation.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JobContext, JobFailure, JobKind};

/// Returns `{}`.
pub struct NoopKind;

#[async_trait]
impl JobKind for NoopKind {
    fn name(&self) -> &str {
        "noop"
    }
    fn description(&self) -> &str {
        "Does nothing and returns {}; for tests and benchmarks."
    }
    fn payload_schema(&self) -> Value {
        json!({"type": "object"})
    }
    async fn run(&self, _ctx: JobContext) -> Result<Value, JobFailure> {
        Ok(json!({}))
    }
}

/// Returns its payload.
pub struct EchoKind;

#[async_trait]
impl JobKind for EchoKind {
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "Returns its payload as the result."
    }
    fn payload_schema(&self) -> Value {
        json!({})
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        Ok(ctx.payload)
    }
}

/// Sleeps, reporting progress; fails on demand; stops promptly when cancelled.
pub struct SleepKind;

#[derive(Deserialize)]
struct SleepPayload {
    ms: u64,
    #[serde(default)]
    steps: Option<u64>,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    fail_attempts: Option<u32>,
    #[serde(default)]
    permanent: bool,
}

#[async_trait]
impl JobKind for SleepKind {
    fn name(&self) -> &str {
        "sleep"
    }
    fn description(&self) -> &str {
        "Sleeps `ms` milliseconds in `steps` progress steps; fails on demand \
         (`fail`, or only the first `fail_attempts` attempts; `permanent` makes \
         the failure final); stops promptly when cancelled."
    }
    fn payload_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000},
                "steps": {"type": "integer", "minimum": 1, "maximum": 10_000},
                "fail": {"type": "boolean"},
                "fail_attempts": {"type": "integer", "minimum": 0, "maximum": 100},
                "permanent": {"type": "boolean"}
            },
            "required": ["ms"],
            "additionalProperties": false
        })
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let payload: SleepPayload = serde_json::from_value(ctx.payload.clone())
            .map_err(|e| JobFailure::permanent("invalid_payload", e.to_string()))?;
        let steps = payload.steps.unwrap_or(1).max(1);
        let step = Duration::from_millis(payload.ms / steps);
        for done in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = ctx.cancel.cancelled() => {
                    return Err(JobFailure::permanent("cancelled", "stopped on request"));
                }
            }
            if payload.steps.is_some() {
                ctx.progress(done, Some(steps), Some(format!("step {done} of {steps}")))
                    .await;
            }
        }
        let failing = payload.fail || payload.fail_attempts.is_some_and(|n| ctx.attempt <= n);
        if failing {
            let message = format!("failed on request (attempt {})", ctx.attempt);
            return Err(if payload.permanent {
                JobFailure::permanent("requested_failure", message)
            } else {
                JobFailure::retryable("requested_failure", message)
            });
        }
        Ok(json!({"slept_ms": payload.ms, "attempt": ctx.attempt}))
    }
}
