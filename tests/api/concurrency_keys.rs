//! `concurrency_key` + `concurrency_limit`: at most N running jobs of a
//! tenant share a key, across every queue.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::batches::submit_batch;
use crate::helpers::{SOON, TestApp, job_ids, spawn_app};

fn keyed_sleep(ms: u64, key: &str, limit: u32) -> Value {
    json!({"kind": "sleep", "payload": {"ms": ms}, "concurrency_key": key, "concurrency_limit": limit})
}

/// The ids of the running jobs that hold `key`, as one list read sees them.
async fn running_with_key(app: &TestApp, key: &str) -> Vec<String> {
    let page: Value = app
        .get("/v1/jobs?status=running&limit=100")
        .await
        .json()
        .await
        .expect("a JSON body");
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|job| job["concurrency_key"] == key)
        .map(|job| job["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn problem(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app.post(path, &body).await;
    assert_eq!(response.status(), 422, "{body} was accepted");
    response.json().await.expect("a JSON body")
}

fn pointers(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {problem}"))
        .iter()
        .map(|error| error["pointer"].as_str().expect("a pointer"))
        .collect()
}

#[tokio::test]
async fn at_most_the_limit_of_jobs_sharing_a_key_run_at_once_and_all_of_them_succeed() {
    let app = spawn_app().await;
    app.configure_queue("other", json!({"concurrency": 10}))
        .await;
    // Over two queues with room for all: only the key holds them back.
    let mut ids = Vec::new();
    for n in 0..6 {
        let mut spec = keyed_sleep(300, "acme", 2);
        if n % 2 == 1 {
            spec["queue"] = json!("other");
        }
        let job = app.submit(spec).await;
        assert_eq!(job["concurrency_key"], "acme");
        assert_eq!(job["concurrency_limit"], 2);
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + SOON;
    let mut most = 0;
    loop {
        most = most.max(running_with_key(&app, "acme").await.len());
        let mut finished = 0;
        for id in &ids {
            let job = app.job(id).await;
            if job["status"] == "succeeded" {
                finished += 1;
            } else {
                assert!(
                    !job["status"]
                        .as_str()
                        .is_some_and(|status| { ["failed", "cancelled"].contains(&status) }),
                    "a job ended badly: {job}"
                );
            }
        }
        if finished == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs did not all finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most <= 2, "{most} jobs with a limit of 2 ran at once");
    assert_eq!(most, 2, "the key's two slots were never both used");
}

#[tokio::test]
async fn a_job_waiting_for_its_key_does_not_hold_up_the_jobs_behind_it() {
    let app = spawn_app().await;
    let holder = app.submit(keyed_sleep(30_000, "acme", 1)).await;
    let holder = holder["id"].as_str().unwrap();
    app.wait_for_status(holder, "running", SOON).await;
    let waiting = app.submit(keyed_sleep(10, "acme", 1)).await;
    let waiting = waiting["id"].as_str().unwrap();
    let plain = app.submit(json!({"kind": "noop"})).await;
    let other_key = app.submit(keyed_sleep(10, "globex", 1)).await;
    app.wait_for_status(plain["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    app.wait_for_status(other_key["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_eq!(app.job(waiting).await["status"], "queued");
    // Cancelling the holder ends it, and the waiting job starts at once.
    let response = app
        .post(&format!("/v1/jobs/{holder}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    app.wait_for_status(waiting, "succeeded", SOON).await;
}

#[tokio::test]
async fn batches_take_a_key_per_job_and_jobs_without_one_show_null() {
    let app = spawn_app().await;
    let body = json!({"jobs": [
        {"kind": "noop", "concurrency_key": "acme", "concurrency_limit": 3},
        {"kind": "noop"},
    ]});
    let batch = submit_batch(&app, &body).await;
    let ids = job_ids(&batch);
    let keyed = app.wait_for_status(&ids[0], "succeeded", SOON).await;
    assert_eq!(keyed["concurrency_key"], "acme");
    assert_eq!(keyed["concurrency_limit"], 3);
    let plain = app.wait_for_status(&ids[1], "succeeded", SOON).await;
    assert_eq!(plain["concurrency_key"], Value::Null);
    assert_eq!(plain["concurrency_limit"], Value::Null);
}

#[tokio::test]
async fn a_key_without_a_limit_or_a_limit_without_a_key_is_refused() {
    let app = spawn_app().await;
    let cases = [
        (
            "/v1/jobs",
            json!({"kind": "noop", "concurrency_key": "acme"}),
            "/concurrency_limit",
        ),
        (
            "/v1/jobs",
            json!({"kind": "noop", "concurrency_limit": 2}),
            "/concurrency_key",
        ),
        (
            "/v1/batches",
            json!({"jobs": [{"kind": "noop"}, {"kind": "noop", "concurrency_key": "acme"}]}),
            "/jobs/1/concurrency_limit",
        ),
    ];
    for (path, body, pointer) in cases {
        let refused = problem(&app, path, body).await;
        assert_eq!(refused["code"], "validation_failed");
        assert_eq!(pointers(&refused), [pointer]);
    }
    // Nothing of the refused batch was stored.
    let page: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn limits_out_of_range_and_keys_too_long_or_empty_are_refused() {
    let app = spawn_app().await;
    for limit in [json!(0), json!(-1), json!(10_001)] {
        let body = json!({"kind": "noop", "concurrency_key": "acme", "concurrency_limit": limit});
        let refused = problem(&app, "/v1/jobs", body).await;
        assert_eq!(refused["code"], "validation_failed");
        assert_eq!(pointers(&refused), ["/concurrency_limit"], "limit {limit}");
    }
    for key in ["k".repeat(256), String::new()] {
        let body = json!({"kind": "noop", "concurrency_key": key, "concurrency_limit": 1});
        let refused = problem(&app, "/v1/jobs", body).await;
        assert_eq!(refused["code"], "validation_failed");
        assert_eq!(pointers(&refused), ["/concurrency_key"]);
    }
    // The bounds themselves are fine.
    let body =
        json!({"kind": "noop", "concurrency_key": "k".repeat(255), "concurrency_limit": 10_000});
    app.submit(body).await;
}
