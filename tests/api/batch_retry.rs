//! Re-running batches, by hand (`POST /v1/batches/{id}/retry`) and by their
//! `retry` policy, on both backends: counts and results across the re-run,
//! a cursor held across it, one webhook per end.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use spool::app::AppBuilder;
use spool::config::Config;
use spool::domain::JobId;
use spool::kinds::{JobContext, JobFailure, JobKind};

use crate::batches::submit_batch;
use crate::events::EventStream;
use crate::helpers::{PgSchema, SOON, TestApp, id_of, job_ids, spawn_app_with_kinds};
use crate::webhooks::Receiver;

/// Fails the first attempt series of each job (its first run), succeeds on
/// any later one: a failure that a re-run cures.
#[derive(Default)]
struct FailsFirstTime {
    seen: Mutex<HashSet<JobId>>,
}

#[async_trait]
impl JobKind for FailsFirstTime {
    fn name(&self) -> &str {
        "fails_first_time"
    }
    fn description(&self) -> &str {
        "Fails the first time it runs for a job, then succeeds."
    }
    fn payload_schema(&self) -> Value {
        json!({"type": "object"})
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let first = self
            .seen
            .lock()
            .map(|mut seen| seen.insert(ctx.job_id))
            .unwrap_or(false);
        if first {
            return Err(JobFailure::permanent("first_time", "the first run fails"));
        }
        Ok(json!({"ran": "again"}))
    }
}

/// The app under test, on SQLite or (with `database_url`) PostgreSQL, with
/// webhooks allowed to 127.0.0.1.
async fn app_on(database_url: Option<&str>) -> TestApp {
    let url = database_url.map(str::to_owned);
    spawn_app_with_kinds(
        move |config: &mut Config| {
            config.outbound_allow = "127.0.0.1".parse().unwrap();
            config.webhook_retry_base = Duration::from_millis(100);
            if let Some(url) = url {
                config.database_url = url;
            }
        },
        vec![Box::new(|builder: AppBuilder| {
            builder.kind(FailsFirstTime::default())
        })],
    )
    .await
}

fn fails() -> Value {
    json!({"kind": "sleep", "payload": {"ms": 1, "fail": true}, "max_attempts": 1})
}

fn succeeds() -> Value {
    json!({"kind": "noop"})
}

/// Ten jobs: the first six fail for good, the last four succeed.
fn six_of_ten_failing() -> Vec<Value> {
    (0..10)
        .map(|index| if index < 6 { fails() } else { succeeds() })
        .collect()
}

async fn get_batch(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The batch once it finished (for the `run`-th time: `retries` says which).
async fn finished(app: &TestApp, id: &str, retries: u64) -> Value {
    let deadline = Instant::now() + SOON;
    loop {
        let batch = get_batch(app, id).await;
        if batch["finished_at"].is_string() && batch["retries"] == retries {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "batch never finished its run {retries}: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn retry(app: &TestApp, id: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.client.post(app.url(&format!("/v1/batches/{id}/retry")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// A page of results after `cursor`.
async fn results_page(app: &TestApp, id: &str, cursor: &str, limit: u32) -> Value {
    let response = app
        .get(&format!(
            "/v1/batches/{id}/results?cursor={cursor}&limit={limit}"
        ))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Every result after `cursor`, following `next_cursor` until it is null;
/// with the page's `cursor` to hold for later.
async fn read_to_end(app: &TestApp, id: &str, cursor: &str) -> (Vec<Value>, String) {
    let mut items = Vec::new();
    let mut cursor = cursor.to_owned();
    loop {
        let page = results_page(app, id, &cursor, 3).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return (items, page["cursor"].as_str().unwrap().to_owned()),
        }
    }
}

/// (job id, status) of results, sorted.
fn outcomes(items: &[Value]) -> Vec<(String, String)> {
    let mut outcomes: Vec<(String, String)> = items
        .iter()
        .map(|item| {
            (
                item["job_id"].as_str().unwrap().to_owned(),
                item["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    outcomes.sort();
    outcomes
}

fn failed_and_ids(ids: &[String], range: std::ops::Range<usize>) -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> = ids[range]
        .iter()
        .map(|id| (id.clone(), "failed".to_owned()))
        .collect();
    expected.sort();
    expected
}

async fn a_batch_reruns_by_hand(app: &TestApp) {
    let receiver = Receiver::start([]).await;
    let submitted = submit_batch(
        app,
        &json!({"jobs": six_of_ten_failing(), "callback_url": receiver.url("/batch")}),
    )
    .await;
    let id = id_of(&submitted);
    let ids = job_ids(&submitted);
    assert_eq!(submitted["retries"], 0, "{submitted}");

    let first = finished(app, &id, 0).await;
    assert_eq!(first["status"], "failed", "{first}");
    assert_eq!(first["counts"]["failed"], 6, "{first}");
    assert_eq!(first["counts"]["succeeded"], 4, "{first}");
    // A reader part-way through the first run holds a cursor there.
    let part = results_page(app, &id, "0", 5).await;
    let held = part["next_cursor"].as_str().unwrap().to_owned();
    let seen_before_held: Vec<Value> = part["items"].as_array().unwrap().clone();
    let (all_first, end_cursor) = read_to_end(app, &id, "0").await;
    assert_eq!(all_first.len(), 10, "{all_first:?}");
    receiver.wait_for(1, SOON).await;

    // The failed jobs run again (and fail again).
    let mut stream = EventStream::open(app, &format!("batch_id={id}"), None).await;
    let response = retry(app, &id, None).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok()),
        Some(format!("/v1/batches/{id}").as_str())
    );
    let reopened: Value = response.json().await.unwrap();
    assert_eq!(reopened["status"], "running", "{reopened}");
    assert_eq!(reopened["retries"], 1, "{reopened}");
    assert!(reopened["finished_at"].is_null(), "{reopened}");
    assert!(reopened["webhook"].is_null(), "{reopened}");
    assert_eq!(reopened["counts"]["failed"], 0, "{reopened}");
    assert_eq!(reopened["counts"]["succeeded"], 4, "{reopened}");
    let waiting = reopened["counts"]["queued"].as_u64().unwrap()
        + reopened["counts"]["running"].as_u64().unwrap()
        + reopened["counts"]["scheduled"].as_u64().unwrap();
    assert_eq!(waiting, 6, "{reopened}");
    let again = retry(app, &id, None).await;
    assert_eq!(again.status(), 409, "a re-run batch is running");
    // The stream says so, before the re-run jobs' own events, then the new end.
    let seen = stream
        .until(|message| message.event == "batch.finished")
        .await;
    let events: Vec<&str> = seen.iter().map(|m| m.event.as_str()).collect();
    let retried = events.iter().position(|e| *e == "batch.retried");
    let first_queued = events.iter().position(|e| *e == "job.queued");
    assert!(
        retried.is_some() && retried < first_queued,
        "batch.retried first: {events:?}"
    );
    assert_eq!(seen[retried.unwrap()].json()["batch"]["id"], id.as_str());
    assert_eq!(
        events.iter().filter(|e| **e == "job.failed").count(),
        6,
        "{events:?}"
    );

    let second = finished(app, &id, 1).await;
    assert_eq!(second["status"], "failed", "{second}");
    assert_eq!(second["counts"]["failed"], 6, "{second}");
    assert_eq!(second["counts"]["succeeded"], 4, "{second}");
    // From the end of the first run: exactly the six re-run results.
    let (rerun, end_cursor) = read_to_end(app, &id, &end_cursor).await;
    assert_eq!(outcomes(&rerun), failed_and_ids(&ids, 0..6), "{rerun:?}");
    // From the cursor held part-way: what the reader had not read of the
    // first run that was not re-run, and the re-run results; nothing twice.
    let (from_held, _) = read_to_end(app, &id, &held).await;
    let mut read: Vec<(String, String)> = outcomes(&seen_before_held);
    read.extend(outcomes(&from_held));
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for (job, _) in &read {
        *per_job.entry(job.clone()).or_default() += 1;
    }
    for (index, job) in ids.iter().enumerate() {
        let read_first = seen_before_held
            .iter()
            .any(|item| item["job_id"] == job.as_str());
        // A re-run job read before the cursor comes once more; any other once.
        let expected = if index < 6 && read_first { 2 } else { 1 };
        assert_eq!(per_job.get(job), Some(&expected), "job {index}: {read:?}");
    }
    // The whole stream now: each job's latest result, once.
    let (now, _) = read_to_end(app, &id, "0").await;
    assert_eq!(now.len(), 10, "{now:?}");
    let distinct: BTreeSet<&str> = now.iter().map(|i| i["job_id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 10);

    // Every job, succeeded ones too.
    let response = retry(app, &id, Some(json!({"scope": "all"}))).await;
    assert_eq!(response.status(), 202);
    let reopened: Value = response.json().await.unwrap();
    assert_eq!(reopened["retries"], 2, "{reopened}");
    assert_eq!(reopened["counts"]["succeeded"], 0, "{reopened}");
    let third = finished(app, &id, 2).await;
    assert_eq!(third["counts"]["failed"], 6, "{third}");
    assert_eq!(third["counts"]["succeeded"], 4, "{third}");
    let (all_again, _) = read_to_end(app, &id, &end_cursor).await;
    assert_eq!(all_again.len(), 10, "{all_again:?}");

    // One webhook per end, each with its own id.
    let received = receiver.wait_for(3, SOON).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = if receiver.received().len() > received.len() {
        receiver.received()
    } else {
        received
    };
    assert_eq!(received.len(), 3, "one delivery per end");
    let webhook_ids: BTreeSet<&str> = received.iter().map(|r| r.id()).collect();
    assert_eq!(webhook_ids.len(), 3, "a new webhook-id per end");
    for delivery in &received {
        assert_eq!(delivery.json()["type"], "batch.finished");
    }
    let shown = get_batch(app, &id).await;
    assert_eq!(shown["webhook"]["event"], "batch.finished", "{shown}");
}

async fn refusals_and_replays(app: &TestApp) {
    // Nothing failed: the default scope has nothing to re-run.
    let submitted = submit_batch(app, &json!({"jobs": [succeeds(), succeeds()]})).await;
    let id = id_of(&submitted);
    finished(app, &id, 0).await;
    let response = retry(app, &id, None).await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "not_retryable", "{problem}");

    // An unknown scope or field is refused with a pointer.
    let response = retry(app, &id, Some(json!({"scope": "some"}))).await;
    assert_eq!(response.status(), 422);
    let response = retry(app, &id, Some(json!({"scop": "all"}))).await;
    assert_eq!(response.status(), 422);
    // Unknown and malformed ids.
    let response = retry(app, "0190a0b0-0000-7000-8000-000000000000", None).await;
    assert_eq!(response.status(), 404);
    let response = retry(app, "nope", None).await;
    assert_eq!(response.status(), 404);

    // A repeat with the same Idempotency-Key gets the first answer and
    // does not re-run the batch twice.
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url(&format!("/v1/batches/{id}/retry")))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("rerun-1", json!({"scope": "all"})).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["retries"], 1);
    let repeat = send("rerun-1", json!({"scope": "all"})).await.unwrap();
    assert_eq!(repeat.status(), 202);
    assert_eq!(
        repeat
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let repeat: Value = repeat.json().await.unwrap();
    assert_eq!(repeat["retries"], 1, "{repeat}");
    let other = send("rerun-1", json!({"scope": "failed"})).await.unwrap();
    assert_eq!(other.status(), 422, "the key with another body");
    let done = finished(app, &id, 1).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["retries"], 1, "{done}");

    // A batch that has not finished is not re-run.
    app.configure_queue("held", json!({"paused": true})).await;
    let held = submit_batch(app, &json!({"jobs": [{"kind": "noop", "queue": "held"}]})).await;
    let response = retry(app, &id_of(&held), None).await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "batch_running", "{problem}");

    // A queue without room for the re-run refuses it whole.
    let jobs: Vec<Value> = (0..2)
        .map(|_| {
            json!({"kind": "sleep", "queue": "tight", "payload": {"ms": 1, "fail": true}, "max_attempts": 1})
        })
        .collect();
    app.configure_queue("tight", json!({"capacity": 2})).await;
    let submitted = submit_batch(app, &json!({"jobs": jobs})).await;
    let tight = id_of(&submitted);
    finished(app, &tight, 0).await;
    app.configure_queue("tight", json!({"capacity": 1})).await;
    let response = retry(app, &tight, None).await;
    assert_eq!(response.status(), 429);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "queue_full", "{problem}");
    let unchanged = get_batch(app, &tight).await;
    assert_eq!(unchanged["status"], "failed", "{unchanged}");
    assert_eq!(unchanged["retries"], 0, "{unchanged}");
    assert_eq!(unchanged["counts"]["failed"], 2, "{unchanged}");
}

async fn a_policy_reruns_until_the_batch_is_healthy(app: &TestApp) {
    let receiver = Receiver::start([]).await;
    let jobs: Vec<Value> = (0..10)
        .map(|index| {
            if index < 6 {
                json!({"kind": "fails_first_time", "max_attempts": 1})
            } else {
                succeeds()
            }
        })
        .collect();
    let submitted = submit_batch(
        app,
        &json!({
            "jobs": jobs,
            "callback_url": receiver.url("/batch"),
            "retry": {"when_failed_ratio": 0.5, "max_times": 3}
        }),
    )
    .await;
    assert_eq!(submitted["retry"]["max_times"], 3, "{submitted}");
    assert_eq!(submitted["retry"]["scope"], "failed", "{submitted}");
    let id = id_of(&submitted);
    let ids = job_ids(&submitted);
    let done = finished(app, &id, 1).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"]["succeeded"], 10, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    // Every job's latest result, once: the six re-run ones succeeded.
    let (results, _) = read_to_end(app, &id, "0").await;
    assert_eq!(results.len(), 10, "{results:?}");
    assert!(
        results.iter().all(|item| item["status"] == "succeeded"),
        "{results:?}"
    );
    for job in &ids[..6] {
        let job = app.job(job).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // Only the batch's last end is delivered.
    let received = receiver.wait_for(1, SOON).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "{}", received.len());
    assert_eq!(received[0].json()["data"]["status"], "succeeded");
}

async fn a_policy_stops_after_max_times(app: &TestApp) {
    let receiver = Receiver::start([]).await;
    let submitted = submit_batch(
        app,
        &json!({
            "jobs": six_of_ten_failing(),
            "callback_url": receiver.url("/batch"),
            "retry": {"when_failed_ratio": 0.5, "max_times": 2}
        }),
    )
    .await;
    let id = id_of(&submitted);
    let done = finished(app, &id, 2).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["counts"]["failed"], 6, "{done}");
    let received = receiver.wait_for(1, SOON).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1, "{}", received.len());
    assert_eq!(received[0].json()["data"]["status"], "failed");
    // At or under the ratio, no re-run: 5 of 10 is not more than half.
    let jobs: Vec<Value> = (0..10)
        .map(|index| if index < 5 { fails() } else { succeeds() })
        .collect();
    let submitted = submit_batch(
        app,
        &json!({"jobs": jobs, "retry": {"when_failed_ratio": 0.5, "max_times": 2}}),
    )
    .await;
    let id = id_of(&submitted);
    let done = finished(app, &id, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = get_batch(app, &id).await;
    assert_eq!(later["retries"], 0, "{done}");
    assert_eq!(later["status"], "failed", "{later}");
}

async fn bad_policies_are_refused(app: &TestApp) {
    for (retry, pointer) in [
        (
            json!({"when_failed_ratio": 1.0, "max_times": 1}),
            "/retry/when_failed_ratio",
        ),
        (
            json!({"when_failed_ratio": -0.1, "max_times": 1}),
            "/retry/when_failed_ratio",
        ),
        (
            json!({"when_failed_ratio": 0.5, "max_times": 0}),
            "/retry/max_times",
        ),
        (
            json!({"when_failed_ratio": 0.5, "max_times": 101}),
            "/retry/max_times",
        ),
    ] {
        let response = app
            .post(
                "/v1/batches",
                &json!({"jobs": [succeeds()], "retry": retry}),
            )
            .await;
        assert_eq!(response.status(), 422, "{retry}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{problem}");
    }
}

#[tokio::test]
async fn a_finished_batch_reruns_its_failed_jobs_then_all_of_them_by_hand() {
    let app = app_on(None).await;
    a_batch_reruns_by_hand(&app).await;
}

#[tokio::test]
async fn a_finished_batch_reruns_by_hand_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = app_on(Some(&schema.url)).await;
    a_batch_reruns_by_hand(&app).await;
}

#[tokio::test]
async fn a_rerun_is_refused_when_there_is_nothing_to_run_or_no_room_and_replayed_by_its_key() {
    let app = app_on(None).await;
    refusals_and_replays(&app).await;
    bad_policies_are_refused(&app).await;
}

#[tokio::test]
async fn a_rerun_is_refused_or_replayed_alike_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = app_on(Some(&schema.url)).await;
    refusals_and_replays(&app).await;
}

#[tokio::test]
async fn a_retry_policy_turns_a_failed_batch_into_a_succeeded_one() {
    let app = app_on(None).await;
    a_policy_reruns_until_the_batch_is_healthy(&app).await;
}

#[tokio::test]
async fn a_retry_policy_turns_a_failed_batch_into_a_succeeded_one_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = app_on(Some(&schema.url)).await;
    a_policy_reruns_until_the_batch_is_healthy(&app).await;
}

#[tokio::test]
async fn a_retry_policy_stops_after_max_times() {
    let app = app_on(None).await;
    a_policy_stops_after_max_times(&app).await;
}

#[tokio::test]
async fn a_retry_policy_stops_after_max_times_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = app_on(Some(&schema.url)).await;
    a_policy_stops_after_max_times(&app).await;
}
