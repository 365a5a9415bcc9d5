//! Elastic concurrency: a queue with `{"min", "max"}` in front of a target
//! that slows down sharply beyond 8 calls at once settles near 8, finishes
//! sooner than a fixed 64, and shrinks back to its `min` when idle.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::batches::submit_batch;
use crate::helpers::{PgSchema, SOON, TestApp, id_of, spawn_app_with};

const KNEE: usize = 8;
const FAST: Duration = Duration::from_millis(50);

/// Answers in 50 ms up to `KNEE` calls at once, then three times longer
/// for each call beyond, at most two seconds. The calls in flight are
/// those whose answer is still to come.
#[derive(Default)]
struct SlowsPastTheKnee {
    answers_due: Mutex<Vec<Instant>>,
}

impl Respond for SlowsPastTheKnee {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let now = Instant::now();
        let mut due = self.answers_due.lock().unwrap();
        due.retain(|at| *at > now);
        let beyond = (due.len() + 1).saturating_sub(KNEE);
        let delay = if beyond == 0 {
            FAST
        } else {
            (FAST * 3u32.pow(beyond.min(4) as u32)).min(Duration::from_secs(2))
        };
        due.push(now + delay);
        ResponseTemplate::new(200).set_delay(delay)
    }
}

async fn queue(app: &TestApp, name: &str) -> Value {
    let response = app.get(&format!("/v1/queues/{name}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn calls(target: &MockServer, queue: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            json!({"kind": "http", "queue": queue, "max_attempts": 1,
                   "payload": {"method": "GET", "url": format!("{}/work", target.uri())}})
        })
        .collect()
}

/// Runs `n` calls through `queue`; returns how long they took and the
/// queue's `current_concurrency` sampled meanwhile.
async fn run(app: &TestApp, target: &MockServer, name: &str, n: usize) -> (Duration, Vec<u64>) {
    let started = Instant::now();
    let batch = submit_batch(app, &json!({"jobs": calls(target, name, n)})).await;
    let id = id_of(&batch);
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let batch: Value = app
            .get(&format!("/v1/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if batch["finished_at"].is_string() {
            assert_eq!(batch["status"], "succeeded", "{batch}");
            return (started.elapsed(), samples);
        }
        assert!(Instant::now() < deadline, "{batch}");
        samples.push(
            queue(app, name).await["current_concurrency"]
                .as_u64()
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn app_on(database_url: Option<&str>) -> TestApp {
    let url = database_url.map(str::to_owned);
    spawn_app_with(move |config| {
        config.outbound_allow = "127.0.0.1".parse().unwrap();
        if let Some(url) = url {
            config.database_url = url;
        }
    })
    .await
}

#[tokio::test]
async fn an_adaptive_queue_settles_near_the_targets_knee_beats_a_fixed_64_and_shrinks_when_idle() {
    settles_beats_a_fixed_64_and_shrinks(&app_on(None).await).await;
}

#[tokio::test]
async fn an_adaptive_queue_adapts_alike_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    settles_beats_a_fixed_64_and_shrinks(&app_on(Some(&schema.url)).await).await;
}

async fn settles_beats_a_fixed_64_and_shrinks(app: &TestApp) {
    let target = MockServer::start().await;
    Mock::given(wiremock::matchers::path("/work"))
        .respond_with(SlowsPastTheKnee::default())
        .mount(&target)
        .await;
    app.configure_queue("adaptive", json!({"concurrency": {"min": 2, "max": 64}}))
        .await;
    app.configure_queue("fixed", json!({"concurrency": 64}))
        .await;
    let shown = queue(app, "adaptive").await;
    assert_eq!(
        shown["concurrency"],
        json!({"min": 2, "max": 64}),
        "{shown}"
    );
    assert_eq!(shown["current_concurrency"], 2, "{shown}");
    assert_eq!(queue(app, "fixed").await["current_concurrency"], 64);

    let (adaptive, samples) = run(app, &target, "adaptive", 400).await;
    // Where it settled: the second half of the run, past the climb.
    let mut late = samples[samples.len() / 2..].to_vec();
    late.sort_unstable();
    let median = late[late.len() / 2];
    assert!(
        (6..=12).contains(&median),
        "median {median} of {late:?} (all: {samples:?})"
    );
    assert!(
        late.iter().all(|limit| *limit <= 16),
        "it stays near the knee: {late:?}"
    );
    let (fixed, _) = run(app, &target, "fixed", 400).await;
    eprintln!("adaptive {adaptive:?} (settled at {median}), fixed 64 {fixed:?}");
    assert!(
        adaptive < fixed,
        "adaptive took {adaptive:?}, a fixed 64 {fixed:?}"
    );

    // The metric shows the limit too.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("spool_queue_concurrency{queue=\"adaptive\"}"),
        "{metrics}"
    );
    // Idle, it goes back to its min.
    let deadline = Instant::now() + SOON;
    loop {
        let now = queue(app, "adaptive").await["current_concurrency"]
            .as_u64()
            .unwrap();
        if now == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "still {now} after {SOON:?} idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_adaptive_range_is_checked_and_a_queue_goes_back_to_a_fixed_number() {
    let app = spawn_app_with(|_| {}).await;
    for (settings, pointer) in [
        (
            json!({"concurrency": {"min": 0, "max": 4}}),
            "/concurrency/min",
        ),
        (
            json!({"concurrency": {"min": 8, "max": 4}}),
            "/concurrency/max",
        ),
        (
            json!({"concurrency": {"min": 1, "max": 10_001}}),
            "/concurrency/max",
        ),
        (json!({"concurrency": 0}), "/concurrency"),
    ] {
        let response = app.put("/v1/queues/elastic", &settings).await;
        assert_eq!(response.status(), 422, "{settings}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{problem}");
    }
    let response = app
        .put("/v1/queues/elastic", &json!({"concurrency": {"min": 3}}))
        .await;
    assert_eq!(response.status(), 422, "max is required");
    app.configure_queue("elastic", json!({"concurrency": {"min": 3, "max": 9}}))
        .await;
    assert_eq!(queue(&app, "elastic").await["current_concurrency"], 3);
    app.configure_queue("elastic", json!({"concurrency": 5}))
        .await;
    let shown = queue(&app, "elastic").await;
    assert_eq!(shown["concurrency"], 5, "{shown}");
    assert_eq!(shown["current_concurrency"], 5, "{shown}");
}
