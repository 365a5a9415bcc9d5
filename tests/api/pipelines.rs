//! Pipelines: jobs that wait for other jobs (`depends_on`), get their
//! results, and are cancelled with them; inside one batch or across
//! requests; through retries and a SIGKILL.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use spool::app::AppBuilder;
use spool::kinds::{JobContext, JobFailure, JobKind};
use tokio::sync::watch;

use crate::helpers::{
    SOON, SpoolProcess, TestApp, db_path, fetch_json, id_of, job_ids, millis, noop, spawn_app,
    spawn_app_with_kinds,
};

// ---------------------------------------------------------------------------
// Kinds of the tests' own

/// What the tests steer `collect` jobs with, and what they saw.
struct Controls {
    /// `wait_gate` jobs wait until this is true.
    gate: watch::Sender<bool>,
    /// `switch` jobs fail permanently while this is true.
    failing: AtomicBool,
    /// The `name` of every attempt started, in order.
    runs: Mutex<Vec<String>>,
}

impl Controls {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            gate: watch::channel(false).0,
            failing: AtomicBool::new(false),
            runs: Mutex::new(Vec::new()),
        })
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn runs_of(&self, name: &str) -> usize {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|run| *run == name)
            .count()
    }
}

/// Returns `{"payload": …, "deps": [each dependency's result], "dep_ids": […]}`;
/// with `"wait_gate": true` first waits for the test to open the gate, with
/// `"switch": true` fails while the test says so.
struct Collect(Arc<Controls>);

#[async_trait]
impl JobKind for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    fn description(&self) -> &str {
        "Returns its payload and its dependencies' results."
    }
    fn payload_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "wait_gate": {"type": "boolean"},
                "switch": {"type": "boolean"}
            }
        })
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let name = ctx.payload["name"].as_str().unwrap_or_default().to_owned();
        self.0.runs.lock().unwrap().push(name);
        if ctx.payload["switch"] == true && self.0.failing.load(Ordering::SeqCst) {
            return Err(JobFailure::permanent("switched_off", "failing on request"));
        }
        if ctx.payload["wait_gate"] == true {
            let mut gate = self.0.gate.subscribe();
            tokio::select! {
                _ = gate.wait_for(|open| *open) => {}
                _ = ctx.cancel.cancelled() => {
                    return Err(JobFailure::permanent("cancelled", "stopped on request"));
                }
            }
        }
        let deps: Vec<Value> = ctx
            .dependencies
            .iter()
            .map(|dep| dep.result.clone().unwrap_or(Value::Null))
            .collect();
        let dep_ids: Vec<String> = ctx
            .dependencies
            .iter()
            .map(|dep| dep.job_id.to_string())
            .collect();
        Ok(json!({"payload": ctx.payload, "deps": deps, "dep_ids": dep_ids}))
    }
}

fn collect_kind(controls: &Arc<Controls>) -> Vec<Box<dyn FnOnce(AppBuilder) -> AppBuilder>> {
    let controls = controls.clone();
    vec![Box::new(move |builder: AppBuilder| {
        builder.kind(Collect(controls))
    })]
}

async fn spawn_with_collect() -> (TestApp, Arc<Controls>) {
    let controls = Controls::new();
    let app = spawn_app_with_kinds(|_| {}, collect_kind(&controls)).await;
    (app, controls)
}

// ---------------------------------------------------------------------------
// Helpers

async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Submits a batch to the service at `base`, asserting a 202.
async fn submit_batch_at(client: &reqwest::Client, base: &str, body: &Value) -> Value {
    let (status, batch) = post_json(client, &format!("{base}/v1/batches"), body).await;
    assert_eq!(status, 202, "the batch was answered {batch}");
    batch
}

async fn submit_batch(app: &TestApp, body: &Value) -> Value {
    submit_batch_at(&app.client, &app.url(""), body).await
}

/// Long-polls the batch (`?wait=60`, again and again) until it finished.
async fn finished_batch_at(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, batch) = fetch_json(client, &format!("{base}/v1/batches/{id}?wait=60")).await;
        assert_eq!(status, 200, "{batch}");
        if batch["finished_at"].is_string() {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "the batch did not finish in {within:?}: {batch}"
        );
    }
}

async fn finished_batch(app: &TestApp, id: &str, within: Duration) -> Value {
    finished_batch_at(&app.client, &app.url(""), id, within).await
}

/// Long-polls the job until it is terminal.
async fn finished_job(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + SOON;
    loop {
        let (status, job) =
            fetch_json(&app.client, &app.url(&format!("/v1/jobs/{id}?wait=10"))).await;
        assert_eq!(status, 200, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "the job never finished: {job}");
    }
}

/// Every job of the batch, through `GET /v1/jobs?batch_id=` page by page.
async fn jobs_of_batch_at(
    client: &reqwest::Client,
    base: &str,
    batch_id: &str,
) -> HashMap<String, Value> {
    let mut jobs = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?batch_id={batch_id}&limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = fetch_json(client, &url).await;
        assert_eq!(status, 200, "{page}");
        for job in page["items"].as_array().unwrap() {
            let id = job["id"].as_str().unwrap().to_owned();
            assert!(
                jobs.insert(id.clone(), job.clone()).is_none(),
                "job {id} listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return jobs,
        }
    }
}

/// Reads `/results` from `cursor` on until `next_cursor` is null.
async fn results_from(
    client: &reqwest::Client,
    base: &str,
    batch_id: &str,
    mut cursor: Option<String>,
) -> Vec<Value> {
    let mut items = Vec::new();
    let deadline = Instant::now() + SOON;
    loop {
        let mut url = format!("{base}/v1/batches/{batch_id}/results?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = fetch_json(client, &url).await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
        assert!(Instant::now() < deadline, "next_cursor never became null");
    }
}

fn counts(
    scheduled: u64,
    queued: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
) -> Value {
    json!({"scheduled": scheduled, "queued": queued, "running": running,
           "succeeded": succeeded, "failed": failed, "cancelled": cancelled})
}

fn assert_cancelled_by_dependency(job: &Value) {
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["error"]["code"], "dependency_failed", "{job}");
    assert_eq!(job["started_at"], Value::Null, "it never ran: {job}");
    assert_eq!(job["result"], Value::Null, "{job}");
}

/// Fails on dependents whose `started_at` lies before their dependency's
/// `finished_at`: `(started_at - finished_at, dependency, dependent)`.
fn assert_timeline(violations: &[(i64, Value, Value)]) {
    if let Some((gap, before, after)) = violations.iter().min_by_key(|v| v.0) {
        panic!(
            "{} dependents have a started_at before their dependency's finished_at \
             (worst by {} ms): dependency {before} dependent {after}",
            violations.len(),
            -gap
        );
    }
}

/// A job that fails at once, for good.
fn failing() -> Value {
    json!({"kind": "sleep", "payload": {"ms": 0, "fail": true}, "max_attempts": 1})
}

/// Samples the job a few times over `for_` and asserts it keeps `status`.
async fn stays(app: &TestApp, id: &str, status: &str, for_: Duration) {
    let until = Instant::now() + for_;
    while Instant::now() < until {
        let job = app.job(id).await;
        assert_eq!(job["status"], status, "{job}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Waiting for a dependency and receiving its result

#[tokio::test]
async fn a_dependent_job_stays_scheduled_until_its_dependency_succeeded_and_then_gets_its_result() {
    let (app, controls) = spawn_with_collect().await;
    let a = app
        .submit(json!({"kind": "collect", "payload": {"name": "a", "wait_gate": true}}))
        .await;
    let a_id = id_of(&a);
    let b = app
        .submit(json!({"kind": "collect", "payload": {"name": "b"}, "depends_on": [a_id]}))
        .await;
    let b_id = id_of(&b);
    assert_eq!(b["status"], "scheduled", "{b}");
    assert_eq!(b["depends_on"], json!([a_id]));
    assert_eq!(b["batch_id"], Value::Null);

    app.wait_for_status(&a_id, "running", SOON).await;
    stays(&app, &b_id, "scheduled", Duration::from_millis(300)).await;
    assert_eq!(controls.runs_of("b"), 0, "b ran before a finished");

    controls.open_gate();
    let b = finished_job(&app, &b_id).await;
    let a = app.job(&a_id).await;
    assert_eq!(a["status"], "succeeded", "{a}");
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(
        b["result"],
        json!({"payload": {"name": "b"}, "deps": [a["result"]], "dep_ids": [a_id]})
    );
    assert_eq!(a["result"]["payload"]["name"], "a");
    assert!(
        millis(&b["started_at"]) >= millis(&a["finished_at"]),
        "{a} {b}"
    );
    assert_eq!(controls.runs_of("b"), 1);
}

#[tokio::test]
async fn inside_one_batch_an_index_names_the_dependency_and_its_result_is_handed_over() {
    let (app, controls) = spawn_with_collect().await;
    let batch = submit_batch(
        &app,
        &json!({"jobs": [
            {"kind": "collect", "payload": {"name": "a", "wait_gate": true}},
            {"kind": "collect", "payload": {"name": "b"}, "depends_on": [0]},
            {"kind": "echo", "payload": {"unrelated": true}}
        ]}),
    )
    .await;
    let job_ids = job_ids(&batch);
    let b = app.job(&job_ids[1]).await;
    assert_eq!(b["depends_on"], json!([job_ids[0]]), "{b}");
    assert_eq!(b["batch_id"], batch["id"]);

    app.wait_for_status(&job_ids[0], "running", SOON).await;
    stays(&app, &job_ids[1], "scheduled", Duration::from_millis(300)).await;
    app.wait_for_status(&job_ids[2], "succeeded", SOON).await;
    let running = app
        .get(&format!("/v1/batches/{}", batch["id"].as_str().unwrap()))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(running["status"], "running");
    assert_eq!(running["counts"], counts(1, 0, 1, 1, 0, 0), "{running}");

    controls.open_gate();
    let done = finished_batch(&app, batch["id"].as_str().unwrap(), SOON).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"], counts(0, 0, 0, 3, 0, 0));
    let a = app.job(&job_ids[0]).await;
    let b = app.job(&job_ids[1]).await;
    assert_eq!(
        b["result"],
        json!({"payload": {"name": "b"}, "deps": [a["result"]], "dep_ids": [job_ids[0]]})
    );
    assert!(
        millis(&b["started_at"]) >= millis(&a["finished_at"]),
        "{a} {b}"
    );
}

#[tokio::test]
async fn a_job_depending_on_an_already_succeeded_job_runs_at_once_with_its_result() {
    let (app, _controls) = spawn_with_collect().await;
    let a = app
        .submit(json!({"kind": "echo", "payload": {"colour": "blue"}}))
        .await;
    let a_id = id_of(&a);
    app.wait_for_status(&a_id, "succeeded", SOON).await;
    let b = app
        .submit(json!({"kind": "collect", "payload": {"name": "b"}, "depends_on": [a_id]}))
        .await;
    let b = finished_job(&app, &id_of(&b)).await;
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(b["result"]["deps"], json!([{"colour": "blue"}]));
}

// ---------------------------------------------------------------------------
// 2. Cancellation along dependencies

#[tokio::test]
async fn a_failed_job_cancels_its_whole_chain_of_dependents_and_nothing_else() {
    let (app, controls) = spawn_with_collect().await;
    let batch = submit_batch(
        &app,
        &json!({"jobs": [
            failing(),
            {"kind": "collect", "payload": {"name": "b"}, "depends_on": [0]},
            {"kind": "collect", "payload": {"name": "c"}, "depends_on": [1]},
            {"kind": "collect", "payload": {"name": "d"}, "depends_on": [2]},
            {"kind": "collect", "payload": {"name": "e"}}
        ]}),
    )
    .await;
    let job_ids = job_ids(&batch);
    let done = finished_batch(&app, batch["id"].as_str().unwrap(), SOON).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["total"], 5);
    assert_eq!(done["counts"], counts(0, 0, 0, 1, 1, 3), "{done}");
    assert!(done["finished_at"].is_string());

    let a = app.job(&job_ids[0]).await;
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["error"]["code"], "requested_failure");
    for id in &job_ids[1..4] {
        assert_cancelled_by_dependency(&app.job(id).await);
    }
    let e = app.job(&job_ids[4]).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    for name in ["b", "c", "d"] {
        assert_eq!(controls.runs_of(name), 0, "{name} ran");
    }

    // The results stream agrees with the jobs.
    let results = results_from(
        &app.client,
        &app.url(""),
        done["id"].as_str().unwrap(),
        None,
    )
    .await;
    let by_index: BTreeMap<u64, &Value> = results
        .iter()
        .map(|item| (item["index"].as_u64().unwrap(), item))
        .collect();
    assert_eq!(results.len(), 5);
    assert_eq!(by_index.len(), 5);
    assert_eq!(by_index[&0]["status"], "failed");
    for index in 1..4 {
        assert_eq!(by_index[&index]["status"], "cancelled");
        assert_eq!(by_index[&index]["error"]["code"], "dependency_failed");
    }
    assert_eq!(by_index[&4]["status"], "succeeded");
}

#[tokio::test]
async fn cancelling_a_queued_scheduled_or_running_dependency_cancels_its_dependents() {
    let (app, controls) = spawn_with_collect().await;
    app.configure_queue("held", json!({"paused": true})).await;

    // A queued dependency (its queue is paused), with a chain behind it.
    let queued = app.submit(json!({"kind": "noop", "queue": "held"})).await;
    let queued_id = id_of(&queued);
    assert_eq!(queued["status"], "queued", "{queued}");
    let bystander = app.submit(json!({"kind": "noop", "queue": "held"})).await;
    let first = app
        .submit(json!({"kind": "noop", "depends_on": [queued_id]}))
        .await;
    let second = app
        .submit(json!({"kind": "noop", "depends_on": [id_of(&first)]}))
        .await;
    assert_eq!(first["status"], "scheduled");
    assert_eq!(second["status"], "scheduled");
    let response = app
        .post(&format!("/v1/jobs/{queued_id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.job(&queued_id).await["status"], "cancelled");
    assert_cancelled_by_dependency(&app.job(&id_of(&first)).await);
    assert_cancelled_by_dependency(&app.job(&id_of(&second)).await);
    assert_eq!(app.job(&id_of(&bystander)).await["status"], "queued");

    // A scheduled dependency (it waits for its run_at).
    let later = app
        .submit(json!({"kind": "noop", "delay_ms": 600_000}))
        .await;
    assert_eq!(later["status"], "scheduled");
    let behind_later = app
        .submit(json!({"kind": "noop", "depends_on": [id_of(&later)]}))
        .await;
    let response = app
        .post(&format!("/v1/jobs/{}/cancel", id_of(&later)), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    assert_cancelled_by_dependency(&app.job(&id_of(&behind_later)).await);

    // A running dependency: cancelled when it stops.
    let running = app
        .submit(json!({"kind": "collect", "payload": {"name": "r", "wait_gate": true}}))
        .await;
    let running_id = id_of(&running);
    let behind_running = app
        .submit(json!({"kind": "collect", "payload": {"name": "x"}, "depends_on": [running_id]}))
        .await;
    app.wait_for_status(&running_id, "running", SOON).await;
    let response = app
        .post(&format!("/v1/jobs/{running_id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let stopped = finished_job(&app, &running_id).await;
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    let dependent = finished_job(&app, &id_of(&behind_running)).await;
    assert_cancelled_by_dependency(&dependent);
    assert_eq!(controls.runs_of("x"), 0);
}

#[tokio::test]
async fn a_job_depending_on_an_already_failed_or_cancelled_job_is_created_cancelled() {
    let app = spawn_app().await;
    let failed = app.submit(failing()).await;
    let failed_id = id_of(&failed);
    app.wait_for_status(&failed_id, "failed", SOON).await;
    let dependent = app
        .submit(json!({"kind": "noop", "depends_on": [failed_id]}))
        .await;
    assert_cancelled_by_dependency(&dependent);
    assert!(dependent["finished_at"].is_string(), "{dependent}");
    assert_cancelled_by_dependency(&app.job(&id_of(&dependent)).await);

    let cancelled = app
        .submit(json!({"kind": "noop", "delay_ms": 600_000}))
        .await;
    let response = app
        .post(
            &format!("/v1/jobs/{}/cancel", id_of(&cancelled)),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let succeeded = app.submit(noop()).await;
    app.wait_for_status(&id_of(&succeeded), "succeeded", SOON)
        .await;
    // One good and one cancelled dependency are enough to be cancelled.
    let dependent = app
        .submit(json!({"kind": "noop", "depends_on": [id_of(&succeeded), id_of(&cancelled)]}))
        .await;
    assert_cancelled_by_dependency(&dependent);

    // Inside a batch too, and the batch counts it.
    let batch = submit_batch(
        &app,
        &json!({"jobs": [{"kind": "noop", "depends_on": [failed_id]}, noop()]}),
    )
    .await;
    let done = finished_batch(&app, batch["id"].as_str().unwrap(), SOON).await;
    assert_eq!(done["counts"], counts(0, 0, 0, 1, 0, 1), "{done}");
    assert_eq!(done["status"], "failed");
    assert_cancelled_by_dependency(&app.job(&job_ids(&batch)[0]).await);
}

#[tokio::test]
async fn an_unknown_dependency_is_refused_with_a_pointer_to_depends_on() {
    let app = spawn_app().await;
    let unknown = "01900000-0000-7000-8000-000000000000";
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "noop", "depends_on": [unknown]}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/depends_on", "{problem}");

    let response = app
        .post(
            "/v1/batches",
            &json!({"jobs": [noop(), {"kind": "noop", "depends_on": [0, unknown]}]}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    assert_eq!(
        problem["errors"][0]["pointer"], "/jobs/1/depends_on",
        "{problem}"
    );

    let listed: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn an_integer_dependency_outside_a_batch_is_refused() {
    let app = spawn_app().await;
    let earlier = app.submit(noop()).await;
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "noop", "depends_on": [id_of(&earlier), 0]}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    assert_eq!(
        problem["errors"][0]["pointer"], "/depends_on/1",
        "{problem}"
    );
    let listed: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}

// ---------------------------------------------------------------------------
// 3. A diamond

#[tokio::test]
async fn a_diamond_joins_after_both_branches_with_their_results_in_depends_on_order() {
    let (app, controls) = spawn_with_collect().await;
    let batch = submit_batch(
        &app,
        &json!({"jobs": [
            {"kind": "collect", "payload": {"name": "a"}},
            {"kind": "collect", "payload": {"name": "b", "wait_gate": true}, "depends_on": [0]},
            {"kind": "collect", "payload": {"name": "c"}, "depends_on": [0]},
            // Listed C first: the results follow depends_on, not the batch order.
            {"kind": "collect", "payload": {"name": "d"}, "depends_on": [2, 1]}
        ]}),
    )
    .await;
    let job_ids = job_ids(&batch);
    app.wait_for_status(&job_ids[2], "succeeded", SOON).await;
    app.wait_for_status(&job_ids[1], "running", SOON).await;
    // One branch done, the other still running: the join waits.
    stays(&app, &job_ids[3], "scheduled", Duration::from_millis(300)).await;
    assert_eq!(controls.runs_of("d"), 0);

    controls.open_gate();
    let done = finished_batch(&app, batch["id"].as_str().unwrap(), SOON).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"], counts(0, 0, 0, 4, 0, 0));
    let jobs: Vec<Value> = futures::future::join_all(job_ids.iter().map(|id| app.job(id))).await;
    let (a, b, c, d) = (&jobs[0], &jobs[1], &jobs[2], &jobs[3]);
    assert_eq!(d["depends_on"], json!([job_ids[2], job_ids[1]]));
    assert_eq!(
        d["result"],
        json!({"payload": {"name": "d"}, "deps": [c["result"], b["result"]],
               "dep_ids": [job_ids[2], job_ids[1]]})
    );
    assert_eq!(b["result"]["deps"], json!([a["result"]]));
    assert_eq!(c["result"]["deps"], json!([a["result"]]));
    assert!(millis(&d["started_at"]) >= millis(&b["finished_at"]));
    assert!(millis(&d["started_at"]) >= millis(&c["finished_at"]));
    assert!(millis(&b["started_at"]) >= millis(&a["finished_at"]));
    assert_eq!(controls.runs_of("d"), 1);
}

// ---------------------------------------------------------------------------
// 4. The issue's pipeline: 1 000 assets, copy -> rename -> delete

#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct PipelineLog {
    /// Handlers of queue `copy` (copy and delete) running at once.
    copy: InFlight,
    /// Handlers of queue `db` (rename) running at once.
    db: InFlight,
    /// Attempts started per (stage, asset).
    runs: Mutex<HashMap<(String, u64), u32>>,
    /// Dependencies a stage received that were not the previous stage of its asset.
    wrong_inputs: Mutex<Vec<String>>,
    /// (stage, asset) whose handler returned success.
    finished: Mutex<HashSet<(String, u64)>>,
    /// Stages whose handler started before the previous stage's handler returned.
    early_starts: Mutex<Vec<String>>,
}

/// One stage of the asset pipeline: `{stage, asset, ms, fail?}` →
/// `{stage, asset}`; checks it got the previous stage's result.
struct Stage(Arc<PipelineLog>);

#[async_trait]
impl JobKind for Stage {
    fn name(&self) -> &str {
        "stage"
    }
    fn description(&self) -> &str {
        "One stage of copy -> rename -> delete."
    }
    fn payload_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "stage": {"enum": ["copy", "rename", "delete"]},
                "asset": {"type": "integer", "minimum": 0},
                "ms": {"type": "integer", "minimum": 0},
                "fail": {"type": "boolean"}
            },
            "required": ["stage", "asset", "ms"],
            "additionalProperties": false
        })
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let stage = ctx.payload["stage"].as_str().unwrap().to_owned();
        let asset = ctx.payload["asset"].as_u64().unwrap();
        *self
            .0
            .runs
            .lock()
            .unwrap()
            .entry((stage.clone(), asset))
            .or_default() += 1;
        let previous = match stage.as_str() {
            "rename" => Some("copy"),
            "delete" => Some("rename"),
            _ => None,
        };
        let expected: Vec<Value> = previous
            .map(|previous| json!({"stage": previous, "asset": asset}))
            .into_iter()
            .collect();
        let got: Vec<Value> = ctx
            .dependencies
            .iter()
            .map(|dep| dep.result.clone().unwrap_or(Value::Null))
            .collect();
        if let Some(previous) = previous {
            let done = self
                .0
                .finished
                .lock()
                .unwrap()
                .contains(&(previous.to_owned(), asset));
            if !done {
                self.0
                    .early_starts
                    .lock()
                    .unwrap()
                    .push(format!("{stage} of asset {asset}"));
            }
        }
        if got != expected {
            self.0
                .wrong_inputs
                .lock()
                .unwrap()
                .push(format!("{stage} of asset {asset} got {got:?}"));
        }
        let queue = if stage == "rename" {
            &self.0.db
        } else {
            &self.0.copy
        };
        queue.enter();
        tokio::time::sleep(Duration::from_millis(ctx.payload["ms"].as_u64().unwrap())).await;
        queue.leave();
        if ctx.payload["fail"] == true {
            return Err(JobFailure::permanent("copy_failed", "the source is gone"));
        }
        self.0
            .finished
            .lock()
            .unwrap()
            .insert((stage.clone(), asset));
        Ok(json!({"stage": stage, "asset": asset}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_asset_pipeline_in_one_batch_runs_stage_after_stage_within_queue_limits() {
    const ASSETS: u64 = 1000;
    const FAILING: [u64; 5] = [0, 137, 500, 501, 999];
    let k = FAILING.len() as u64;
    let log = Arc::new(PipelineLog::default());
    let kind_log = log.clone();
    let app = spawn_app_with_kinds(
        |_| {},
        vec![Box::new(move |builder: AppBuilder| {
            builder.kind(Stage(kind_log))
        })],
    )
    .await;
    app.configure_queue("copy", json!({"concurrency": 100}))
        .await;
    app.configure_queue("db", json!({"concurrency": 10})).await;

    // jobs[3i] copies asset i, jobs[3i+1] renames it, jobs[3i+2] deletes it.
    let mut jobs = Vec::new();
    for asset in 0..ASSETS {
        let copy = 3 * asset;
        let mut copy_payload = json!({"stage": "copy", "asset": asset, "ms": 10});
        if FAILING.contains(&asset) {
            copy_payload["fail"] = json!(true);
        }
        jobs.push(json!({"kind": "stage", "queue": "copy", "payload": copy_payload}));
        jobs.push(json!({"kind": "stage", "queue": "db", "depends_on": [copy],
                         "payload": {"stage": "rename", "asset": asset, "ms": 5}}));
        jobs.push(
            json!({"kind": "stage", "queue": "copy", "depends_on": [copy + 1],
                         "payload": {"stage": "delete", "asset": asset, "ms": 2}}),
        );
    }
    let started = Instant::now();
    let batch = submit_batch(&app, &json!({"jobs": jobs})).await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let job_ids = job_ids(&batch);
    assert_eq!(batch["total"], 3 * ASSETS);
    assert_eq!(job_ids.len() as u64, 3 * ASSETS);

    let done = finished_batch(&app, &batch_id, Duration::from_secs(120)).await;
    let took = started.elapsed();
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["counts"],
        counts(0, 0, 0, 3 * (ASSETS - k), k, 2 * k),
        "{done}"
    );

    let listed = jobs_of_batch_at(&app.client, &app.url(""), &batch_id).await;
    assert_eq!(listed.len() as u64, 3 * ASSETS);
    // (started_at - dependency's finished_at, dependency, dependent) where < 0.
    let mut timeline_violations: Vec<(i64, Value, Value)> = Vec::new();
    let job = |index: u64| -> &Value {
        listed
            .get(&job_ids[index as usize])
            .unwrap_or_else(|| panic!("job {index} is not listed"))
    };
    for asset in 0..ASSETS {
        let (copy, rename, delete) = (job(3 * asset), job(3 * asset + 1), job(3 * asset + 2));
        assert_eq!(rename["depends_on"], json!([copy["id"]]));
        assert_eq!(delete["depends_on"], json!([rename["id"]]));
        if FAILING.contains(&asset) {
            assert_eq!(copy["status"], "failed", "{copy}");
            assert_eq!(copy["error"]["code"], "copy_failed", "{copy}");
            assert_cancelled_by_dependency(rename);
            assert_cancelled_by_dependency(delete);
        } else {
            for stage in [copy, rename, delete] {
                assert_eq!(stage["status"], "succeeded", "{stage}");
            }
            for (before, after) in [(copy, rename), (rename, delete)] {
                let gap = millis(&after["started_at"]) - millis(&before["finished_at"]);
                if gap < 0 {
                    timeline_violations.push((gap, before.clone(), after.clone()));
                }
            }
            assert_eq!(delete["result"], json!({"stage": "delete", "asset": asset}));
        }
    }

    let runs = log.runs.lock().unwrap().clone();
    for asset in 0..ASSETS {
        let ran = |stage: &str| runs.get(&(stage.to_owned(), asset)).copied().unwrap_or(0);
        assert_eq!(ran("copy"), 1, "copy of asset {asset}");
        let later = if FAILING.contains(&asset) { 0 } else { 1 };
        assert_eq!(ran("rename"), later, "rename of asset {asset}");
        assert_eq!(ran("delete"), later, "delete of asset {asset}");
    }
    let wrong = log.wrong_inputs.lock().unwrap().clone();
    assert!(wrong.is_empty(), "stages got wrong inputs: {wrong:?}");
    let early = log.early_starts.lock().unwrap().clone();
    assert!(
        early.is_empty(),
        "stages started before the previous one finished: {early:?}"
    );
    assert!(log.db.max() <= 10, "db ran {} at once", log.db.max());
    assert!(log.copy.max() <= 100, "copy ran {} at once", log.copy.max());
    // The limits were reached for, not avoided by running one at a time.
    assert!(log.db.max() >= 2, "db never ran two at once");
    assert!(
        log.copy.max() > 10,
        "copy never ran more than 10 at once ({}): its concurrency of 100 was not used",
        log.copy.max()
    );
    // The jobs' timestamps tell the same story as the handlers.
    assert_timeline(&timeline_violations);
    eprintln!(
        "pipeline of {} jobs took {took:?}; at most {} db and {} copy handlers at once",
        3 * ASSETS,
        log.db.max(),
        log.copy.max()
    );
}

// ---------------------------------------------------------------------------
// 5. A SIGKILL in the middle of a batch

#[tokio::test]
async fn a_batch_interrupted_by_a_sigkill_finishes_consistently_after_restart() {
    const TOTAL: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut spool = SpoolProcess::start(&db_path(&dir), &[]);
    let base = spool.url("");
    let response = client
        .put(spool.url("/v1/queues/default"))
        .json(&json!({"concurrency": 5}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    // Chains of three: i % 3 == 0 starts one, the next two follow it. Every
    // 20th chain starts with a job that fails for good.
    let mut jobs = Vec::new();
    for i in 0..TOTAL {
        let mut job = json!({"kind": "sleep", "payload": {"ms": 20 + (i % 31)}});
        if i % 3 != 0 {
            job["depends_on"] = json!([i - 1]);
        }
        if i % 60 == 0 {
            job["payload"]["fail"] = json!(true);
            job["max_attempts"] = json!(1);
        }
        jobs.push(job);
    }
    let failing_chains = TOTAL.div_ceil(60) as u64;
    let batch = submit_batch_at(&client, &base, &json!({"jobs": jobs})).await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let job_ids = job_ids(&batch);

    // Kill it once part of the batch is done; read the results so far first.
    let deadline = Instant::now() + SOON;
    let before = loop {
        let (_, batch) = fetch_json(&client, &format!("{base}/v1/batches/{batch_id}")).await;
        let c = &batch["counts"];
        let finished = c["succeeded"].as_u64().unwrap()
            + c["failed"].as_u64().unwrap()
            + c["cancelled"].as_u64().unwrap();
        if finished >= 60 {
            break batch;
        }
        assert!(
            Instant::now() < deadline,
            "the batch made no progress: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_, first_page) = fetch_json(
        &client,
        &format!("{base}/v1/batches/{batch_id}/results?limit=1000"),
    )
    .await;
    spool.kill_9();
    assert_eq!(before["status"], "running", "killed too late: {before}");
    let cursor = first_page["next_cursor"]
        .as_str()
        .expect("a cursor while the batch runs")
        .to_owned();
    let read_before: Vec<Value> = first_page["items"].as_array().unwrap().clone();
    assert!(
        !read_before.is_empty() && read_before.len() < TOTAL,
        "{} results before the kill",
        read_before.len()
    );

    let spool = SpoolProcess::start(&db_path(&dir), &[]);
    let base = spool.url("");
    let done = finished_batch_at(&client, &base, &batch_id, Duration::from_secs(60)).await;
    let c = &done["counts"];
    let n = |state: &str| c[state].as_u64().unwrap();
    assert_eq!(done["total"], TOTAL as u64);
    assert_eq!(
        [
            "scheduled",
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled"
        ]
        .iter()
        .map(|state| n(state))
        .sum::<u64>(),
        TOTAL as u64,
        "{done}"
    );
    assert_eq!(n("scheduled") + n("queued") + n("running"), 0, "{done}");
    assert_eq!(n("failed"), failing_chains, "{done}");
    assert_eq!(n("cancelled"), 2 * failing_chains, "{done}");
    assert_eq!(n("succeeded"), TOTAL as u64 - 3 * failing_chains, "{done}");
    // Threshold 1.0 and some failed.
    assert_eq!(done["status"], "failed", "{done}");

    // The jobs as listed agree with the counts, and with their dependencies.
    let listed = jobs_of_batch_at(&client, &base, &batch_id).await;
    assert_eq!(listed.len(), TOTAL);
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for job in listed.values() {
        *tally
            .entry(job["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert_eq!(job["batch_id"], done["id"]);
    }
    for (state, count) in &tally {
        assert_eq!(c[state.as_str()].as_u64(), Some(*count), "{state}: {done}");
    }
    // (started_at - dependency's finished_at, dependency, dependent) where < 0.
    let mut timeline_violations: Vec<(i64, Value, Value)> = Vec::new();
    let mut interrupted = 0;
    for (i, id) in job_ids.iter().enumerate() {
        let job = &listed[id];
        if job["errors"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e["code"] == "lease_expired"))
        {
            interrupted += 1;
        }
        if i % 3 != 0 && job["status"] == "succeeded" {
            let dependency = &listed[&job_ids[i - 1]];
            assert_eq!(dependency["status"], "succeeded");
            let gap = millis(&job["started_at"]) - millis(&dependency["finished_at"]);
            if gap < 0 {
                timeline_violations.push((gap, dependency.clone(), job.clone()));
            }
        }
        if (i - i % 3) % 60 == 0 {
            let expected = if i % 3 == 0 { "failed" } else { "cancelled" };
            assert_eq!(job["status"], expected, "{job}");
        } else {
            assert_eq!(job["status"], "succeeded", "{job}");
        }
    }
    assert!(interrupted > 0, "no job was running at the kill");

    // Results: from the start, each index exactly once, matching the jobs.
    let results = results_from(&client, &base, &batch_id, None).await;
    assert_eq!(results.len(), TOTAL);
    let mut seen = BTreeSet::new();
    for item in &results {
        let index = item["index"].as_u64().unwrap() as usize;
        assert!(seen.insert(index), "index {index} returned twice");
        assert_eq!(item["job_id"], json!(job_ids[index]));
        assert_eq!(item["status"], listed[&job_ids[index]]["status"], "{item}");
    }
    assert_eq!(seen.len(), TOTAL);

    // And the cursor taken before the kill carries on where it stopped.
    let rest = results_from(&client, &base, &batch_id, Some(cursor)).await;
    let mut seen = BTreeSet::new();
    for item in read_before.iter().chain(&rest) {
        let index = item["index"].as_u64().unwrap();
        assert!(
            seen.insert(index),
            "index {index} read twice across the restart"
        );
    }
    assert_eq!(seen.len(), TOTAL, "results lost across the restart");
    assert_timeline(&timeline_violations);
}

// ---------------------------------------------------------------------------
// 6. Retries

#[tokio::test]
async fn retrying_a_failed_job_of_a_finished_batch_is_refused_with_batch_finished() {
    let app = spawn_app().await;
    let batch = submit_batch(
        &app,
        &json!({"jobs": [failing(), noop(), {"kind": "noop", "depends_on": [0]}]}),
    )
    .await;
    let batch_id = batch["id"].as_str().unwrap();
    let done = finished_batch(&app, batch_id, SOON).await;
    assert_eq!(done["status"], "failed");
    let job_ids = job_ids(&batch);
    let response = app
        .post(&format!("/v1/jobs/{}/retry", job_ids[0]), &json!({}))
        .await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "batch_finished", "{problem}");
    assert_eq!(app.job(&job_ids[0]).await["status"], "failed");
    let after: Value = app
        .get(&format!("/v1/batches/{batch_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["counts"], done["counts"]);
    assert_eq!(after["status"], "failed");
    assert_eq!(after["finished_at"], done["finished_at"]);
}

#[tokio::test]
async fn a_standalone_chain_is_retried_dependency_first_and_the_dependent_waits_for_it() {
    let (app, controls) = spawn_with_collect().await;
    controls.failing.store(true, Ordering::SeqCst);
    let a = app
        .submit(json!({"kind": "collect", "max_attempts": 1,
                       "payload": {"name": "a", "switch": true, "wait_gate": true}}))
        .await;
    let a_id = id_of(&a);
    let b = app
        .submit(json!({"kind": "collect", "payload": {"name": "b"}, "depends_on": [a_id]}))
        .await;
    let b_id = id_of(&b);
    let c = app
        .submit(json!({"kind": "collect", "payload": {"name": "c"}, "depends_on": [a_id]}))
        .await;
    let c_id = id_of(&c);
    let a = finished_job(&app, &a_id).await;
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["error"]["code"], "switched_off");
    assert_cancelled_by_dependency(&finished_job(&app, &b_id).await);
    assert_cancelled_by_dependency(&finished_job(&app, &c_id).await);

    // The dependent first: its dependency is still failed.
    let response = app
        .post(&format!("/v1/jobs/{b_id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "dependency_failed", "{problem}");
    assert_eq!(app.job(&b_id).await["status"], "cancelled");

    // The dependency: a new attempt series, which now runs (held by the gate).
    controls.failing.store(false, Ordering::SeqCst);
    let response = app
        .post(&format!("/v1/jobs/{a_id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let retried: Value = response.json().await.unwrap();
    assert!(
        ["queued", "running"].contains(&retried["status"].as_str().unwrap()),
        "{retried}"
    );
    let a = app.wait_for_status(&a_id, "running", SOON).await;
    assert_eq!(a["attempt"], 1, "a new attempt series: {a}");

    // Now the dependent may be retried: it waits for the dependency again.
    let response = app
        .post(&format!("/v1/jobs/{b_id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let b: Value = response.json().await.unwrap();
    assert_eq!(b["status"], "scheduled", "{b}");
    stays(&app, &b_id, "scheduled", Duration::from_millis(300)).await;
    assert_eq!(controls.runs_of("b"), 0);

    controls.open_gate();
    let a = finished_job(&app, &a_id).await;
    assert_eq!(a["status"], "succeeded", "{a}");
    let b = finished_job(&app, &b_id).await;
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(b["result"]["deps"], json!([a["result"]]));
    assert!(millis(&b["started_at"]) >= millis(&a["finished_at"]));

    // A dependent retried after its dependency succeeded runs at once.
    assert_eq!(app.job(&c_id).await["status"], "cancelled");
    let response = app
        .post(&format!("/v1/jobs/{c_id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let c = finished_job(&app, &c_id).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    assert_eq!(c["result"]["deps"], json!([a["result"]]));
    assert_eq!(controls.runs_of("a"), 2);
    assert_eq!(controls.runs_of("b"), 1);
    assert_eq!(controls.runs_of("c"), 1);
}
