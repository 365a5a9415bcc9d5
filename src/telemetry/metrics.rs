//! Prometheus metrics: the process's recorder, every family's name, help and
//! labels in one place, and the functions that record them.
//!
//! Labels are bounded by construction: each recording function takes only a
//! queue, a kind, a route template, a status or one of a fixed set of
//! outcomes and reasons — never an id, a key, a tenant or a URL — so the
//! number of series does not grow with the traffic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{
    SharedString, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS_SUBMITTED: &str = "spool_jobs_submitted_total";
pub const JOBS_FINISHED: &str = "spool_jobs_finished_total";
pub const JOB_ATTEMPTS: &str = "spool_job_attempts_total";
pub const JOB_RUN: &str = "spool_job_run_seconds";
pub const JOB_QUEUE_WAIT: &str = "spool_job_queue_wait_seconds";
pub const ADMISSION_REFUSED: &str = "spool_admission_refused_total";
pub const HTTP_REQUESTS: &str = "spool_http_requests_total";
pub const HTTP_DURATION: &str = "spool_http_request_duration_seconds";
pub const WEBHOOK_DELIVERIES: &str = "spool_webhook_deliveries_total";
pub const EVENT_STREAM_CLIENTS: &str = "spool_event_stream_clients";
pub const LONG_POLLS_WAITING: &str = "spool_long_polls_waiting";
pub const STORE_COMMIT: &str = "spool_store_commit_seconds";
pub const JOBS_RESCUED: &str = "spool_jobs_rescued_total";
pub const JOBS_EXPIRED: &str = "spool_jobs_expired_total";
pub const RATE_LIMIT_HOLDS: &str = "spool_rate_limit_holds_total";
pub const SCHEDULE_FIRES: &str = "spool_schedule_fires_total";
pub const BUILD_INFO: &str = "spool_build_info";

/// Histogram buckets in seconds, shared by every duration: from 50 µs (an
/// idle worker starts a job within a millisecond, so enqueue-to-start needs
/// sub-millisecond resolution) to two hours (long jobs), roughly ×2.5 apart.
pub const BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 300.0, 600.0, 1_800.0, 3_600.0, 7_200.0,
];

/// How often idle histogram buckets are drained (the exporter's upkeep).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Whether the recording functions record. Always on in a service; `spool
/// bench` switches it off for some rounds to measure what recording costs.
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Switches recording on or off, process-wide (for `spool bench`).
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Most distinct label values kept shared; more are allocated per use.
const MAX_INTERNED: usize = 10_000;

/// A queue, kind or route as a label value, shared rather than copied: the
/// recorder keeps label values as owned strings, and these few names recur
/// on every request and job.
fn label(value: &str) -> SharedString {
    static INTERNED: OnceLock<RwLock<HashMap<Box<str>, Arc<str>>>> = OnceLock::new();
    let interned = INTERNED.get_or_init(Default::default);
    if let Ok(known) = interned.read()
        && let Some(shared) = known.get(value)
    {
        return SharedString::from(shared.clone());
    }
    let shared: Arc<str> = Arc::from(value);
    if let Ok(mut known) = interned.write()
        && known.len() < MAX_INTERNED
    {
        known.insert(Box::from(value), shared.clone());
    }
    SharedString::from(shared)
}

/// The process's recorder, installed on first use. One per process: the
/// `metrics` facade has one global recorder, so several services in one
/// process (the tests) share it. `None` when another recorder was
/// installed first (an embedding application's own); nothing is then
/// rendered here.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_SECONDS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(JOBS_SUBMITTED, "Jobs admitted, by queue and kind.");
    describe_counter!(
        JOBS_FINISHED,
        "Jobs that reached a terminal state (outcome: succeeded, failed, cancelled), by queue and kind."
    );
    describe_counter!(
        JOB_ATTEMPTS,
        "Attempts that ended (outcome: succeeded, failed, retried, cancelled, released), by queue and kind."
    );
    describe_histogram!(
        JOB_RUN,
        Unit::Seconds,
        "Run time of each attempt, by queue and kind."
    );
    describe_histogram!(
        JOB_QUEUE_WAIT,
        Unit::Seconds,
        "From the moment a job was ready to its attempt's start, by queue and kind."
    );
    describe_counter!(
        ADMISSION_REFUSED,
        "Submissions refused (reason: queue_full, tenant_quota, rate_limited, queue_unknown, invalid, conflict)."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to its first byte; streams count until they start), by route and method."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts (outcome: delivered, retried, failed)."
    );
    describe_gauge!(
        EVENT_STREAM_CLIENTS,
        "Open `GET /v1/events` streams on this instance."
    );
    describe_gauge!(
        LONG_POLLS_WAITING,
        "Requests held by a long-poll (`?wait=N`) on this instance."
    );
    describe_histogram!(
        STORE_COMMIT,
        Unit::Seconds,
        "Time of each write transaction's commit on this instance (SQLite: one group commit)."
    );
    describe_counter!(
        JOBS_RESCUED,
        "Running jobs taken back after their lease lapsed (a crashed or stalled instance)."
    );
    describe_counter!(
        JOBS_EXPIRED,
        "Jobs cancelled as `expired`: not started by their `expires_at`."
    );
    describe_counter!(
        RATE_LIMIT_HOLDS,
        "Rate-limit keys closed by a `Retry-After` from a 429 or 503 answer to an `http` job."
    );
    describe_counter!(
        SCHEDULE_FIRES,
        "Schedule fire times handled and triggers (outcome: fired, skipped, missed, triggered, refused)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the label says which version runs.");
}

/// Drains idle buckets now and then, as the exporter asks of its user.
pub async fn upkeep(stop: tokio_util::sync::CancellationToken) {
    let Some(handle) = handle() else { return };
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// `n` jobs admitted to `queue`.
pub fn submitted(queue: &str, kind: &str, n: u64) {
    if !recording() {
        return;
    }
    counter!(JOBS_SUBMITTED, "queue" => label(queue), "kind" => label(kind)).increment(n);
}

/// An attempt started `waited` after its job became ready.
pub fn attempt_started(queue: &str, kind: &str, waited: Duration) {
    if !recording() {
        return;
    }
    histogram!(JOB_QUEUE_WAIT, "queue" => label(queue), "kind" => label(kind))
        .record(waited.as_secs_f64());
}

/// How an attempt ended, for `spool_job_attempts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    Succeeded,
    /// Failed, with a retry to come.
    Retried,
    /// Failed for good.
    Failed,
    Cancelled,
    /// Handed back to the queue unfinished (shutdown).
    Released,
}

impl AttemptEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Released => "released",
        }
    }
}

/// An attempt ended after running for `ran`.
pub fn attempt_finished(queue: &str, kind: &str, end: AttemptEnd, ran: Duration) {
    if !recording() {
        return;
    }
    let (queue, kind) = (label(queue), label(kind));
    counter!(JOB_ATTEMPTS, "queue" => queue.clone(), "kind" => kind.clone(), "outcome" => end.as_str())
        .increment(1);
    histogram!(JOB_RUN, "queue" => queue, "kind" => kind).record(ran.as_secs_f64());
}

/// A job reached `outcome` (`succeeded`, `failed` or `cancelled`).
pub fn job_finished(queue: &str, kind: &str, outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(JOBS_FINISHED, "queue" => label(queue), "kind" => label(kind), "outcome" => outcome)
        .increment(1);
}

/// A submission refused for `reason` (a stable problem `code`).
pub fn admission_refused(reason: &'static str) {
    if !recording() {
        return;
    }
    counter!(ADMISSION_REFUSED, "reason" => reason).increment(1);
}

/// An HTTP request answered. `route` is the matched template (or
/// `unmatched`), never the path itself.
pub fn http_request(route: &str, method: &'static str, status: u16, took: Duration) {
    if !recording() {
        return;
    }
    let route = label(route);
    counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status_label(status))
        .increment(1);
    histogram!(HTTP_DURATION, "route" => route, "method" => method).record(took.as_secs_f64());
}

/// Status codes as static labels: the set is small, and a label that needs
/// no allocation keeps the request path cheap.
fn status_label(status: u16) -> &'static str {
    const ANSWERED: [(u16, &str); 20] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (414, "414"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (503, "503"),
        (504, "504"),
    ];
    match ANSWERED.iter().find(|(code, _)| *code == status) {
        Some((_, label)) => label,
        None => match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
    }
}

/// A webhook delivery attempt ended: `delivered`, `retried` or `failed`.
pub fn webhook_delivery(outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// A schedule's fire time was handled (or a trigger made a job).
pub fn schedule_fire(outcome: &'static str) {
    if !recording() {
        return;
    }
    counter!(SCHEDULE_FIRES, "outcome" => outcome).increment(1);
}

/// Running jobs taken back by rescue.
pub fn rescued(n: u64) {
    if !recording() {
        return;
    }
    counter!(JOBS_RESCUED).increment(n);
}

/// `n` jobs expired before they started.
pub fn expired(n: u64) {
    if !recording() || n == 0 {
        return;
    }
    counter!(JOBS_EXPIRED).increment(n);
}

/// A `Retry-After` closed a rate-limit key.
pub fn rate_limit_held() {
    if !recording() {
        return;
    }
    counter!(RATE_LIMIT_HOLDS).increment(1);
}

/// A write transaction's commit took `took`.
pub fn store_commit(took: Duration) {
    if !recording() {
        return;
    }
    histogram!(STORE_COMMIT).record(took.as_secs_f64());
}

/// Counts an open event stream until dropped.
pub struct EventStreamClient(());

impl EventStreamClient {
    pub fn open() -> Self {
        gauge!(EVENT_STREAM_CLIENTS).increment(1.0);
        Self(())
    }
}

impl Drop for EventStreamClient {
    fn drop(&mut self) {
        gauge!(EVENT_STREAM_CLIENTS).decrement(1.0);
    }
}

/// A long-poll waits from its registration until it is dropped.
pub fn long_poll_waiting(waiting: bool) {
    if waiting {
        gauge!(LONG_POLLS_WAITING).increment(1.0);
    } else {
        gauge!(LONG_POLLS_WAITING).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_a_label_of_a_bounded_set() {
        let labels: std::collections::BTreeSet<&str> = (0..=999).map(status_label).collect();
        assert!(labels.len() <= 25, "{labels:?}");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(418), "4xx");
    }

    #[test]
    fn buckets_resolve_sub_millisecond_waits_and_hour_long_runs() {
        assert!(BUCKETS_SECONDS.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(BUCKETS_SECONDS.iter().filter(|b| **b < 0.001).count() >= 3);
        assert!(BUCKETS_SECONDS.last().is_some_and(|b| *b >= 3_600.0));
    }
}
