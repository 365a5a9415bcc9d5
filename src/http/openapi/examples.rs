//! One example per schema and per operation, for readers of the document,
//! generated clients' docstrings, and schemathesis' examples phase.
//!
//! They are written as JSON rather than built from the Rust types because
//! several of those types only serialize; a test validates every example
//! against its schema, so an example that drifts from the code fails it.

use serde_json::{Value, json};

const JOB_ID: &str = "0193a5f2-7c1e-7b3a-9d4e-2f6a8b1c3d5e";
const DEPENDENCY_ID: &str = "0193a5f2-7a00-7c11-8e21-5b7d9c0e1f23";
const BATCH_ID: &str = "0193a5f2-6b10-7d4f-a1b2-c3d4e5f60718";
const KEY_ID: &str = "0193a5f0-1111-7222-8333-944455566677";
const SCHEDULE_ID: &str = "nightly-report";
const CREATED_AT: &str = "2026-12-06T09:30:00.000Z";
const STARTED_AT: &str = "2026-12-06T09:30:00.012Z";
const FINISHED_AT: &str = "2026-12-06T09:30:01.250Z";

/// The example of the component schema `name`, if it has one.
pub fn schema(name: &str) -> Option<Value> {
    Some(match name {
        "ApiKey" => api_key(),
        "Backoff" => backoff(),
        "Batch" => batch(),
        "BatchCounts" => batch_counts(),
        "BatchResult" => batch_result(),
        "BatchRetryPolicy" => batch_retry_policy(),
        "BatchRetryRequest" => json!({"scope": "failed"}),
        "BatchRetryScope" => json!("failed"),
        "BatchSpec" => batch_spec(),
        "BatchStatus" => json!("running"),
        "BatchSummary" => json!({
            "id": BATCH_ID,
            "status": "succeeded",
            "counts": {"scheduled": 0, "queued": 0, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 0},
            "finished_at": FINISHED_AT,
        }),
        "CreatedKey" => {
            let mut key = api_key();
            key["secret"] = json!("spool_3q5Yb2c9ZkR1xV8wNf4Tq7LmHs0PdJaE");
            key
        }
        "DeliveryStatus" => json!("delivered"),
        "DependencyRef" => json!(0),
        "ErrorInfo" => error_info(),
        "Event" => event(),
        "EventKind" => json!("job.succeeded"),
        "FieldError" => {
            json!({"pointer": "/priority", "message": "must be an integer, not a string"})
        }
        "Job" => job(),
        "JobPage" => json!({"items": [job()], "next_cursor": JOB_ID}),
        "JobSpec" => job_spec(),
        "JobState" => json!("queued"),
        "JobSummary" => job_summary(),
        "KeyList" => json!({"items": [api_key()]}),
        "KeySource" => json!("api"),
        "KeySpec" => json!({"name": "billing-worker", "tenant": "acme", "role": "write"}),
        "KindInfo" => kind_info(),
        "KindList" => json!({"items": [kind_info()]}),
        "OnConflict" => json!("existing"),
        "Problem" => problem(),
        "Progress" => progress(),
        "QueueCounts" => json!({"scheduled": 0, "queued": 12, "running": 4}),
        "QueueDefaults" => queue_defaults(),
        "QueueDefaultsPatch" => json!({"max_attempts": 5}),
        "QueueInfo" => queue_info(),
        "QueueList" => json!({"items": [queue_info()]}),
        "QueueSettings" => json!({"concurrency": {"min": 2, "max": 64}, "capacity": 50000}),
        "Concurrency" => json!({"min": 2, "max": 64}),
        "ConcurrencyRange" => json!({"min": 2, "max": 64}),
        "RateLimit" => rate_limit(),
        "RateLimitKeyState" => json!({
            "limit": "partner-api",
            "key": "customer-42",
            "remaining": 0,
            "eligible_at": STARTED_AT,
            "held_until": null,
        }),
        "RateLimitList" => json!({"items": [rate_limit()]}),
        "RateLimitRef" => json!({"name": "partner-api", "key": "customer-42"}),
        "RateLimitSettings" => json!({"rate": 10, "per_ms": 1000, "burst": 5}),
        "WaitingReason" => json!("rate_limited"),
        "ResultPage" => {
            json!({"items": [batch_result()], "next_cursor": null, "cursor": "1", "batch_status": "succeeded"})
        }
        "Role" => json!("write"),
        "CatchUp" => json!("latest"),
        "Overlap" => json!("skip"),
        "FireOutcome" => json!("fired"),
        "ScheduleSpec" => json!({
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "job": schedule_job(),
            "overlap": "skip",
            "catch_up": "latest",
        }),
        "ScheduleConfig" => schedule_config(),
        "Schedule" => schedule(),
        "ScheduleList" => json!({"items": [schedule()], "next_cursor": null}),
        "ScheduleFire" => schedule_fire(),
        "FirePage" => json!({"items": [schedule_fire()], "next_cursor": "41"}),
        "TenantInfo" => json!({
            "name": "acme",
            "settings": tenant_settings(),
            "pending": 42,
            "updated_at": CREATED_AT,
        }),
        "TenantSettings" => tenant_settings(),
        "WebhookDelivery" => webhook_delivery(),
        "Whoami" => json!({"tenant": "acme", "role": "write"}),
        _ => return None,
    })
}

/// The example of a path parameter, by name.
pub fn path_parameter(operation_id: &str, name: &str) -> Option<Value> {
    Some(match (operation_id, name) {
        (operation, "id") if operation.contains("batch") => json!(BATCH_ID),
        ("revoke_key", "id") => json!(KEY_ID),
        (operation, "id") if operation.contains("schedule") => json!(SCHEDULE_ID),
        (_, "id") => json!(JOB_ID),
        (operation, "name") if operation.contains("limit") => json!("partner-api"),
        (_, "name") => json!("emails"),
        ("get_limit_key", "key") => json!("customer-42"),
        (_, "tenant") => json!("acme"),
        _ => return None,
    })
}

/// The example body of a response that is not JSON, by operation.
pub fn text_response(operation_id: &str) -> Option<Value> {
    Some(match operation_id {
        "healthz" => json!("ok"),
        "readyz" => json!("ready"),
        "openapi_yaml" => json!("openapi: 3.1.0\ninfo:\n  title: Spool\n"),
        "scrape" => json!(
            "# HELP spool_jobs_submitted_total Jobs admitted.\n\
             # TYPE spool_jobs_submitted_total counter\n\
             spool_jobs_submitted_total{queue=\"default\",kind=\"noop\"} 42\n"
        ),
        "stream_events" => json!(format!(
            "id: 7\nevent: job.succeeded\ndata: {}\n\n: keep-alive\n\n",
            event()
        )),
        _ => return None,
    })
}

fn job_spec() -> Value {
    json!({
        "kind": "sleep",
        "payload": {"ms": 250},
        "queue": "default",
        "priority": 5,
        "key": "report-2026-12",
        "max_attempts": 5,
        "timeout_ms": 30000,
        "metadata": {"user": "42", "report": "monthly"},
    })
}

fn job() -> Value {
    json!({
        "id": JOB_ID,
        "queue": "default",
        "kind": "sleep",
        "payload": {"ms": 250},
        "status": "succeeded",
        "priority": 5,
        "attempt": 2,
        "max_attempts": 5,
        "timeout_ms": 30000,
        "key": "report-2026-12",
        "concurrency_key": null,
        "concurrency_limit": null,
        "batch_id": null,
        "depends_on": [],
        "metadata": {"user": "42", "report": "monthly"},
        "progress": {"current": 100, "total": 100, "message": null},
        "result": null,
        "error": null,
        "errors": [error_info()],
        "position": null,
        "created_at": CREATED_AT,
        "run_at": CREATED_AT,
        "started_at": STARTED_AT,
        "finished_at": FINISHED_AT,
        "cancel_requested": false,
        "callback_url": "https://example.com/spool-hooks",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": null,
        "webhook": webhook_delivery(),
        "rate_limit": {"name": "partner-api", "key": "customer-42"},
        "expires_at": null,
        "waiting_reason": null,
        "eligible_at": null,
    })
}

fn rate_limit() -> Value {
    json!({
        "name": "partner-api",
        "rate": 10,
        "per_ms": 1000,
        "burst": 5,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
    })
}

fn error_info() -> Value {
    json!({
        "code": "timeout",
        "message": "the attempt ran longer than timeout_ms (30000)",
        "attempt": 1,
        "at": STARTED_AT,
    })
}

fn progress() -> Value {
    json!({"current": 40, "total": 100, "message": "resizing images"})
}

fn webhook_delivery() -> Value {
    json!({
        "id": "0193a5f2-7c1e-7b3a-9d4e-2f6a8b1c3d5e-1",
        "event": "job.succeeded",
        "status": "delivered",
        "attempts": 1,
        "last_attempt_at": FINISHED_AT,
        "next_attempt_at": null,
        "delivered_at": FINISHED_AT,
        "last_error": null,
    })
}

fn batch_spec() -> Value {
    json!({
        "jobs": [
            {"kind": "noop", "payload": {"step": "fetch"}},
            {"kind": "noop", "payload": {"step": "render"}, "depends_on": [0]},
        ],
        "success_threshold": 1.0,
        "retry": batch_retry_policy(),
        "max_in_flight": 10,
        "metadata": {"report": "2026-12"},
    })
}

fn batch_retry_policy() -> Value {
    json!({"when_failed_ratio": 0.5, "max_times": 2, "scope": "failed"})
}

fn batch() -> Value {
    json!({
        "id": BATCH_ID,
        "status": "running",
        "total": 2,
        "counts": batch_counts(),
        "success_threshold": 1.0,
        "retry": batch_retry_policy(),
        "retries": 0,
        "max_in_flight": 10,
        "in_flight": 0,
        "metadata": {"report": "2026-12"},
        "callback_url": null,
        "cancel_requested": false,
        "created_at": CREATED_AT,
        "finished_at": null,
        "job_ids": [DEPENDENCY_ID, JOB_ID],
        "webhook": null,
    })
}

fn batch_counts() -> Value {
    json!({"scheduled": 1, "queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0})
}

fn batch_result() -> Value {
    json!({
        "index": 0,
        "job_id": DEPENDENCY_ID,
        "status": "succeeded",
        "result": {"rows": 1200},
        "error": null,
        "finished_at": FINISHED_AT,
    })
}

fn job_summary() -> Value {
    json!({
        "id": JOB_ID,
        "queue": "default",
        "kind": "sleep",
        "status": "succeeded",
        "attempt": 2,
        "max_attempts": 5,
        "batch_id": null,
    })
}

fn event() -> Value {
    json!({
        "id": "7",
        "type": "job.succeeded",
        "at": FINISHED_AT,
        "job": job_summary(),
    })
}

fn api_key() -> Value {
    json!({
        "id": KEY_ID,
        "name": "billing-worker",
        "tenant": "acme",
        "role": "write",
        "source": "api",
        "created_at": CREATED_AT,
        "expires_at": null,
        "last_used_at": FINISHED_AT,
    })
}

fn kind_info() -> Value {
    json!({
        "name": "sleep",
        "description": "Waits `ms` milliseconds, then succeeds.",
        "schema": {"type": "object", "properties": {"ms": {"type": "integer", "minimum": 0}}},
    })
}

fn problem() -> Value {
    json!({
        "type": "urn:spool:problem:validation_failed",
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "2 fields are invalid",
        "code": "validation_failed",
        "errors": [
            {"pointer": "/priority", "message": "must be an integer, not a string"},
            {"pointer": "/kind", "message": "is required"},
        ],
    })
}

fn backoff() -> Value {
    json!({"base_ms": 1000, "max_ms": 300000})
}

fn queue_defaults() -> Value {
    json!({
        "max_attempts": 3,
        "timeout_ms": 60000,
        "backoff": backoff(),
        "rate_limit": null,
        "expires_after_ms": null,
    })
}

fn queue_info() -> Value {
    json!({
        "name": "emails",
        "concurrency": {"min": 2, "max": 64},
        "current_concurrency": 8,
        "capacity": 50000,
        "paused": false,
        "defaults": queue_defaults(),
        "counts": {"scheduled": 0, "queued": 12, "running": 4},
        "oldest_ready_at": CREATED_AT,
    })
}

fn tenant_settings() -> Value {
    json!({"max_pending": 100000, "submit_rate": 50.0, "submit_burst": 100})
}

fn schedule_job() -> Value {
    json!({"kind": "echo", "queue": "default", "payload": {"report": "nightly"}})
}

fn schedule_config() -> Value {
    json!({
        "id": SCHEDULE_ID,
        "tenant": "acme",
        "cron": "30 2 * * *",
        "every_ms": null,
        "timezone": "Europe/Berlin",
        "job": schedule_job(),
        "overlap": "skip",
        "catch_up": "latest",
        "catch_up_window_ms": 3_600_000,
        "start_at": null,
        "end_at": null,
        "paused": false,
    })
}

fn schedule() -> Value {
    let mut schedule = schedule_config();
    let fields = json!({
        "next_fire_at": "2026-12-07T01:30:00.000Z",
        "next_fire_times": [
            "2026-12-07T01:30:00.000Z",
            "2026-12-08T01:30:00.000Z",
            "2026-12-09T01:30:00.000Z",
            "2026-12-10T01:30:00.000Z",
            "2026-12-11T01:30:00.000Z",
        ],
        "last_fire_at": "2026-12-06T01:30:00.000Z",
        "last_job_id": JOB_ID,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
    });
    if let (Some(schedule), Some(fields)) = (schedule.as_object_mut(), fields.as_object()) {
        schedule.extend(fields.clone());
    }
    schedule
}

fn schedule_fire() -> Value {
    json!({
        "fire_at": "2026-12-06T01:30:00.000Z",
        "outcome": "fired",
        "reason": null,
        "job_id": JOB_ID,
        "recorded_at": "2026-12-06T01:30:00.004Z",
    })
}
