//! A batch's window (`max_in_flight`): at most N of its jobs run at once,
//! service-wide, while other work of the same queue runs freely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use spool::app::AppBuilder;
use spool::config::Config;
use spool::kinds::{JobContext, JobFailure, JobKind};

use crate::batches::submit_batch;
use crate::helpers::{PgSchema, SOON, TestApp, id_of, spawn_app_with_kinds};

/// How many jobs of each group run at once, and the most that ever did.
#[derive(Default)]
struct Running {
    now: HashMap<String, u32>,
    most: HashMap<String, u32>,
}

/// Counts itself in its `group` while it sleeps `ms`: shared by every
/// instance of the test (they run in this process), so the count is
/// service-wide and exact, not sampled.
#[derive(Clone, Default)]
struct Probe {
    running: Arc<Mutex<Running>>,
}

impl Probe {
    fn most(&self, group: &str) -> u32 {
        let running = self.running.lock().unwrap();
        running.most.get(group).copied().unwrap_or(0)
    }

    fn change(&self, group: &str, up: bool) {
        let mut running = self.running.lock().unwrap();
        let now = running.now.entry(group.to_owned()).or_default();
        if up {
            *now += 1;
        } else {
            *now -= 1;
        }
        let now = *now;
        let most = running.most.entry(group.to_owned()).or_default();
        *most = (*most).max(now);
    }
}

#[async_trait]
impl JobKind for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn description(&self) -> &str {
        "Sleeps, counting how many of its group run at once."
    }
    fn payload_schema(&self) -> Value {
        json!({"type": "object", "required": ["group", "ms"]})
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let group = ctx.payload["group"].as_str().unwrap_or_default().to_owned();
        let ms = ctx.payload["ms"].as_u64().unwrap_or(10);
        self.change(&group, true);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.change(&group, false);
        Ok(json!(null))
    }
}

async fn app_with(probe: &Probe, database_url: Option<&str>) -> TestApp {
    let url = database_url.map(str::to_owned);
    let probe = probe.clone();
    spawn_app_with_kinds(
        move |config: &mut Config| {
            if let Some(url) = url {
                config.database_url = url;
            }
        },
        vec![Box::new(move |builder: AppBuilder| builder.kind(probe))],
    )
    .await
}

fn probes(group: &str, n: usize, ms: u64) -> Vec<Value> {
    (0..n)
        .map(|_| json!({"kind": "probe", "queue": "work", "payload": {"group": group, "ms": ms}}))
        .collect()
}

async fn finished(app: &TestApp, id: &str) -> Value {
    let response = app
        .get(&format!("/v1/batches/{id}?wait={}", SOON.as_secs()))
        .await;
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    assert!(batch["finished_at"].is_string(), "{batch}");
    batch
}

/// A windowed batch and a free one share a queue of 16 slots per instance.
async fn a_window_holds_while_the_queue_runs_other_work(apps: &[TestApp], probe: &Probe) {
    for app in apps {
        app.configure_queue("work", json!({"concurrency": 16}))
            .await;
    }
    let windowed = submit_batch(
        &apps[0],
        &json!({"jobs": probes("windowed", 50, 40), "max_in_flight": 3}),
    )
    .await;
    assert_eq!(windowed["max_in_flight"], 3, "{windowed}");
    let free = submit_batch(
        &apps[apps.len() - 1],
        &json!({"jobs": probes("free", 50, 40)}),
    )
    .await;
    let free = finished(&apps[0], &id_of(&free)).await;
    assert_eq!(free["status"], "succeeded", "{free}");
    // The free batch was not held up behind the window: it finished while
    // the windowed one (50 × 40 ms, 3 at a time: over 600 ms) still ran.
    let meanwhile = apps[0]
        .get(&format!("/v1/batches/{}", id_of(&windowed)))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert!(meanwhile["finished_at"].is_null(), "{meanwhile}");
    assert!(
        meanwhile["in_flight"].as_u64().unwrap() <= 3,
        "the page shows at most the window in flight: {meanwhile}"
    );
    assert_eq!(meanwhile["in_flight"], meanwhile["counts"]["running"]);
    let windowed = finished(&apps[0], &id_of(&windowed)).await;
    assert_eq!(windowed["status"], "succeeded", "{windowed}");
    assert_eq!(windowed["in_flight"], 0, "{windowed}");
    assert!(probe.most("windowed") <= 3, "{}", probe.most("windowed"));
    assert_eq!(probe.most("windowed"), 3, "the window was used whole");
    assert!(probe.most("free") > 3, "{}", probe.most("free"));
}

#[tokio::test]
async fn at_most_max_in_flight_jobs_of_a_batch_run_while_another_batch_runs_freely() {
    let probe = Probe::default();
    let app = app_with(&probe, None).await;
    a_window_holds_while_the_queue_runs_other_work(&[app], &probe).await;
}

#[tokio::test]
async fn a_batchs_window_holds_across_two_instances_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let probe = Probe::default();
    let apps = vec![
        app_with(&probe, Some(&schema.url)).await,
        app_with(&probe, Some(&schema.url)).await,
    ];
    a_window_holds_while_the_queue_runs_other_work(&apps, &probe).await;
}

#[tokio::test]
async fn a_window_with_a_job_keyed_on_its_own_or_out_of_range_is_refused() {
    let probe = Probe::default();
    let app = app_with(&probe, None).await;
    let response = app
        .post(
            "/v1/batches",
            &json!({"jobs": [
                {"kind": "noop"},
                {"kind": "noop", "concurrency_key": "mine", "concurrency_limit": 1}
            ], "max_in_flight": 2}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["pointer"], "/jobs/1/concurrency_key",
        "{problem}"
    );
    for window in [0, 10_001] {
        let response = app
            .post(
                "/v1/batches",
                &json!({"jobs": [{"kind": "noop"}], "max_in_flight": window}),
            )
            .await;
        assert_eq!(response.status(), 422, "{window}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["pointer"], "/max_in_flight",
            "{problem}"
        );
    }
    // Its jobs show the window as their concurrency key.
    let batch = submit_batch(
        &app,
        &json!({"jobs": [{"kind": "noop"}], "max_in_flight": 2}),
    )
    .await;
    let job = app.job(batch["job_ids"][0].as_str().unwrap()).await;
    assert_eq!(
        job["concurrency_key"],
        format!("batch:{}", id_of(&batch)),
        "{job}"
    );
    assert_eq!(job["concurrency_limit"], 2, "{job}");
}
