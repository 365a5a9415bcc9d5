//! `GET /metrics`: the Prometheus text format, its families and labels, a
//! series count that does not grow with the traffic, and who may read it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::access::{ADMIN, READ_A, WRITE_A, call, with_keys};
use crate::helpers::{PgSchema, SpoolProcess, db_path, spawn_app, spawn_app_with};

/// One sample line: family (the name without a histogram's suffix), label
/// names, and the whole series (name and labels).
struct Sample {
    family: String,
    labels: BTreeSet<String>,
    series: String,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name)
                .to_owned();
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| pair.split_once('=').expect("label=value").0.to_owned())
                .filter(|label| label != "le")
                .collect();
            Sample {
                family,
                labels,
                series: series.to_owned(),
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// Every family and the label names its series carry.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in samples(text) {
        families
            .entry(sample.family)
            .or_default()
            .extend(sample.labels);
    }
    families
}

fn value(text: &str, series: &str) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|sample| sample.series == series)
        .map(|sample| sample.value)
}

async fn scrape(client: &reqwest::Client, url: &str, key: Option<&str>) -> String {
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("scraped");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("a body")
}

/// `promtool check metrics` (Debian's `prometheus` package) on `text`.
fn promtool_check(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "SKIPPED promtool check: promtool is not installed ({error}); CI installs it"
            );
            return;
        }
        Err(error) => panic!("promtool is needed in CI: {error}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("written");
    let output = child.wait_with_output().expect("promtool ran");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the metrics ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn wait_until_succeeded(app_get: impl AsyncFn() -> Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let job = app_get().await;
        if job["status"] == "succeeded" {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not succeed: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_name_every_family_with_bounded_labels_and_pass_promtool() {
    let app = spawn_app().await;
    app.configure_queue("metrics-families", json!({"concurrency": 2}))
        .await;
    let job = app
        .submit(json!({"kind": "noop", "queue": "metrics-families"}))
        .await;
    let id = job["id"].as_str().expect("an id").to_owned();
    wait_until_succeeded(async || app.job(&id).await).await;
    // A refused submission, counted by its code.
    let refused = app
        .post(
            "/v1/jobs",
            &json!({"kind": "noop", "queue": "no-such-queue"}),
        )
        .await;
    assert!(refused.status().is_client_error());
    let text = scrape(&app.client, &app.url("/metrics"), None).await;
    promtool_check(&text);

    let families = families(&text);
    let labels = |names: &[&str]| -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    };
    let expected: BTreeMap<&str, BTreeSet<String>> = [
        ("spool_build_info", labels(&["version"])),
        ("spool_jobs_submitted_total", labels(&["queue", "kind"])),
        (
            "spool_jobs_finished_total",
            labels(&["queue", "kind", "outcome"]),
        ),
        (
            "spool_job_attempts_total",
            labels(&["queue", "kind", "outcome"]),
        ),
        ("spool_job_run_seconds", labels(&["queue", "kind"])),
        ("spool_job_queue_wait_seconds", labels(&["queue", "kind"])),
        ("spool_admission_refused_total", labels(&["reason"])),
        (
            "spool_http_requests_total",
            labels(&["route", "method", "status"]),
        ),
        (
            "spool_http_request_duration_seconds",
            labels(&["route", "method"]),
        ),
        ("spool_store_commit_seconds", labels(&[])),
        ("spool_queue_jobs", labels(&["queue", "state"])),
        ("spool_queue_oldest_ready_age_seconds", labels(&["queue"])),
        ("spool_queue_concurrency", labels(&["queue"])),
        ("spool_queue_capacity", labels(&["queue"])),
        ("spool_queue_paused", labels(&["queue"])),
        ("spool_instance_running_jobs", labels(&["queue"])),
        ("spool_webhook_outbox_pending", labels(&[])),
    ]
    .into_iter()
    .collect();
    for (family, names) in &expected {
        assert_eq!(
            families.get(*family),
            Some(names),
            "family {family}: label names differ or it is missing"
        );
    }
    // Families other tests of this process may have recorded, with theirs.
    let optional: BTreeMap<&str, BTreeSet<String>> = [
        ("spool_webhook_deliveries_total", labels(&["outcome"])),
        ("spool_event_stream_clients", labels(&[])),
        ("spool_long_polls_waiting", labels(&[])),
        ("spool_jobs_rescued_total", labels(&[])),
        ("spool_jobs_expired_total", labels(&[])),
        ("spool_rate_limit_holds_total", labels(&[])),
        ("spool_schedule_fires_total", labels(&["outcome"])),
    ]
    .into_iter()
    .collect();
    for (family, names) in &families {
        let pinned = expected
            .get(family.as_str())
            .or_else(|| optional.get(family.as_str()));
        assert_eq!(
            pinned,
            Some(names),
            "unpinned family or labels: {family} {names:?}"
        );
    }
    // Routes are templates, never paths with ids.
    assert!(text.contains(r#"route="/v1/jobs/{id}""#), "{text}");
    assert!(!text.contains(&id));
    assert!(
        value(
            &text,
            r#"spool_jobs_submitted_total{queue="metrics-families",kind="noop"}"#
        ) == Some(1.0),
        "{text}"
    );
    assert!(
        text.contains(r#"spool_admission_refused_total{reason="unknown_queue"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_series_count_does_not_grow_with_distinct_payloads_keys_and_metadata() {
    // A process of its own: the recorder is per process.
    let dir = TempDir::new().expect("a directory");
    let spool = SpoolProcess::start(&db_path(&dir), &[]);
    let client = reqwest::Client::new();
    let put = client
        .put(spool.url("/v1/queues/cardinality"))
        .json(&json!({"concurrency": 16, "capacity": 20_000}))
        .send()
        .await
        .expect("queue configured");
    assert!(put.status().is_success());
    let submit_batch = |from: usize, count: usize| {
        let jobs: Vec<Value> = (from..from + count)
            .map(|n| {
                json!({
                    "kind": "noop",
                    "queue": "cardinality",
                    "payload": {"n": n, "text": format!("payload-{n}")},
                    "key": format!("key-{n}"),
                    "metadata": {"customer": format!("customer-{n}"), "order": n.to_string()},
                })
            })
            .collect();
        let client = client.clone();
        let url = spool.url("/v1/batches");
        async move {
            let response = client
                .post(url)
                .json(&json!({ "jobs": jobs }))
                .send()
                .await
                .expect("submitted");
            assert!(response.status().is_success(), "{}", response.status());
            let batch: Value = response.json().await.expect("a batch");
            batch["id"].as_str().expect("an id").to_owned()
        }
    };
    let wait_batch = |id: String| {
        let client = client.clone();
        let url = spool.url(&format!("/v1/batches/{id}"));
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let batch: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                if batch["status"] != "running" {
                    assert_eq!(batch["status"], "succeeded", "{batch}");
                    return;
                }
                assert!(Instant::now() < deadline, "batch did not finish: {batch}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Warm-up: every family and route this test touches has its series.
    wait_batch(submit_batch(0, 10).await).await;
    // The first scrape makes the series of `/metrics` itself.
    scrape(&client, &spool.url("/metrics"), None).await;
    let before = scrape(&client, &spool.url("/metrics"), None).await;
    for round in 0..10 {
        wait_batch(submit_batch(100 + round * 1_000, 1_000).await).await;
    }
    let after = scrape(&client, &spool.url("/metrics"), None).await;
    let series = |text: &str| -> BTreeSet<String> {
        samples(text)
            .into_iter()
            .map(|sample| sample.series)
            .collect()
    };
    let (before_series, after_series) = (series(&before), series(&after));
    let appeared: Vec<_> = after_series.difference(&before_series).collect();
    let went: Vec<_> = before_series.difference(&after_series).collect();
    assert!(
        appeared.is_empty() && went.is_empty(),
        "with 10 000 distinct jobs, series appeared: {appeared:?}, went: {went:?}"
    );
    assert!(before_series.len() > 100, "{} series", before_series.len());
    assert_eq!(
        value(
            &after,
            r#"spool_jobs_submitted_total{queue="cardinality",kind="noop"}"#
        ),
        Some(10_010.0)
    );
    promtool_check(&after);
}

#[tokio::test]
async fn metrics_need_an_admin_key_unless_made_public() {
    let app = spawn_app_with(with_keys).await;
    for (key, status) in [
        (None, 401),
        (Some(READ_A), 403),
        (Some(WRITE_A), 403),
        (Some(ADMIN), 200),
    ] {
        let response = call(&app, Method::GET, "/metrics", key, None).await;
        assert_eq!(response.status(), status, "key {key:?}");
    }
    let public = spawn_app_with(|config| {
        with_keys(config);
        config.metrics_public = true;
    })
    .await;
    let response = call(&public, Method::GET, "/metrics", None, None).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn queue_gauges_are_service_wide_in_shared_mode() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let a = SpoolProcess::start_with_url(&schema.url, &[]);
    let b = SpoolProcess::start_with_url(&schema.url, &[]);
    let client = reqwest::Client::new();
    let put = client
        .put(a.url("/v1/queues/gauged"))
        .json(&json!({"paused": true}))
        .send()
        .await
        .expect("queue configured");
    assert!(put.status().is_success());
    for _ in 0..3 {
        let response = client
            .post(a.url("/v1/jobs"))
            .json(&json!({"kind": "noop", "queue": "gauged"}))
            .send()
            .await
            .expect("submitted");
        assert!(response.status().is_success());
    }
    // Read from the store by the other instance, within its cache's second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(&client, &b.url("/metrics"), None).await;
        let queued = value(&text, r#"spool_queue_jobs{queue="gauged",state="queued"}"#);
        let age = value(
            &text,
            r#"spool_queue_oldest_ready_age_seconds{queue="gauged"}"#,
        );
        if queued == Some(3.0) && age.is_some_and(|age| age >= 0.0) {
            assert_eq!(
                value(&text, r#"spool_queue_paused{queue="gauged"}"#),
                Some(1.0)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance b does not see a's jobs:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_alerts_in_the_operations_guide_pass_promtool_check_rules() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let after = guide
        .split_once("Alerts worth having")
        .expect("the alerts paragraph")
        .1;
    let rules = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a yaml block")
        .0;
    let dir = TempDir::new().expect("a directory");
    let path = dir.path().join("alerts.yml");
    std::fs::write(&path, rules).expect("written");
    let output = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED promtool check rules: promtool is not installed ({error})");
            return;
        }
        Err(error) => panic!("promtool is needed in CI: {error}"),
    };
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("7 rules found"));
}
