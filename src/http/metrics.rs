//! `GET /metrics`: the Prometheus text format — the recorder's counters and
//! histograms, and the queues' gauges read from the store at scrape time.

use std::fmt::Write;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::access::AdminAccess;
use super::error::{ApiError, Problem, ProblemCode};
use crate::engine::MetricsSnapshot;
use crate::telemetry::metrics;

/// The content type of the Prometheus text format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metrics in the Prometheus text format. Needs an admin key, unless the
/// service runs with `SPOOL_METRICS_PUBLIC=true` (then no key at all).
/// Labels are queue, kind, outcome, reason, route, method and status only:
/// never an id, a key or a tenant.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "text/plain"),
        (status = 503, description = "`storage_unavailable`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn scrape(
    AdminAccess(_caller): AdminAccess,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    scrape_public(State(state)).await
}

/// `GET /metrics` with `SPOOL_METRICS_PUBLIC=true`: the same, without a key.
pub async fn scrape_public(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let snapshot = state.engine.metrics_snapshot().await?;
    let mut body = metrics::handle().map(|h| h.render()).unwrap_or_default();
    render_queues(&mut body, &snapshot);
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], body))
}

/// The gauges that describe the queues, written by hand rather than kept in
/// the recorder: they are read from the store per scrape (service-wide in
/// shared mode), and a queue that disappears leaves no stale series behind.
fn render_queues(out: &mut String, snapshot: &MetricsSnapshot) {
    family(
        out,
        "spool_queue_jobs",
        "Jobs per queue and state (scheduled, queued, running), service-wide.",
    );
    for queue in &snapshot.queues {
        let counts = &queue.counts;
        for (state, n) in [
            ("scheduled", counts.scheduled),
            ("queued", counts.queued),
            ("running", counts.running),
        ] {
            sample(
                out,
                "spool_queue_jobs",
                &[("queue", &queue.name), ("state", state)],
                n as f64,
            );
        }
    }
    family(
        out,
        "spool_queue_oldest_ready_age_seconds",
        "Age of each queue's oldest ready job: how long it has waited for a slot (0 with none).",
    );
    for queue in &snapshot.queues {
        let age_ms = snapshot
            .gauges
            .oldest_ready
            .iter()
            .find(|(name, _)| *name == queue.name)
            .map_or(0, |(_, ready_at)| {
                (snapshot.read_at.as_millis() - ready_at.as_millis()).max(0)
            });
        sample(
            out,
            "spool_queue_oldest_ready_age_seconds",
            &[("queue", &queue.name)],
            age_ms as f64 / 1000.0,
        );
    }
    family(
        out,
        "spool_queue_concurrency",
        "Worker slots of each queue on this instance (an adaptive queue's: where its limit is now).",
    );
    for queue in &snapshot.queues {
        sample(
            out,
            "spool_queue_concurrency",
            &[("queue", &queue.name)],
            f64::from(queue.current_concurrency),
        );
    }
    family(
        out,
        "spool_queue_capacity",
        "Most jobs each queue holds waiting (scheduled and queued).",
    );
    for queue in &snapshot.queues {
        sample(
            out,
            "spool_queue_capacity",
            &[("queue", &queue.name)],
            queue.capacity as f64,
        );
    }
    family(out, "spool_queue_paused", "1 while a queue is paused.");
    for queue in &snapshot.queues {
        sample(
            out,
            "spool_queue_paused",
            &[("queue", &queue.name)],
            f64::from(u8::from(queue.paused)),
        );
    }
    family(
        out,
        "spool_instance_running_jobs",
        "Jobs of each queue running in this instance.",
    );
    for (queue, running) in &snapshot.running_here {
        sample(
            out,
            "spool_instance_running_jobs",
            &[("queue", queue)],
            f64::from(*running),
        );
    }
    family(
        out,
        "spool_webhook_outbox_pending",
        "Webhooks waiting to be delivered (first attempts and retries), service-wide.",
    );
    sample(
        out,
        "spool_webhook_outbox_pending",
        &[],
        snapshot.gauges.webhooks_pending as f64,
    );
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (n, (label, value)) in labels.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format wants it: backslash, quote and newline
/// escaped. (Queue names allow none of them today; this keeps it so.)
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts and times every answered request by its route template (never its
/// path), and counts refused submissions by their problem `code`.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    metrics::http_request(route, method, status, started.elapsed());
    if method == "POST"
        && matches!(route, "/v1/jobs" | "/v1/batches")
        && let Some(ProblemCode(code)) = response.extensions().get::<ProblemCode>()
    {
        metrics::admission_refused(code);
    }
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
