//! Queues: runtime changes, capacity and 429s.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{SOON, TestApp, millis, spawn_app};

#[tokio::test]
async fn a_queue_is_created_changed_and_read_back() {
    let app = spawn_app().await;
    let created = app
        .put(
            "/v1/queues/mail",
            &json!({"concurrency": 4, "capacity": 50, "defaults": {"max_attempts": 7}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let changed = app.put("/v1/queues/mail", &json!({"paused": true})).await;
    assert_eq!(changed.status(), 200);
    let queue: Value = app.get("/v1/queues/mail").await.json().await.unwrap();
    assert_eq!(queue["concurrency"], 4);
    assert_eq!(queue["capacity"], 50);
    assert_eq!(queue["paused"], true);
    assert_eq!(queue["defaults"]["max_attempts"], 7);
    assert_eq!(queue["defaults"]["timeout_ms"], 60000);

    let job = app.submit(json!({"kind": "noop", "queue": "mail"})).await;
    assert_eq!(job["max_attempts"], 7);
    let queue: Value = app.get("/v1/queues/mail").await.json().await.unwrap();
    assert_eq!(queue["counts"]["queued"], 1);

    let all: Value = app.get("/v1/queues").await.json().await.unwrap();
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "mail"]);
}

#[tokio::test]
async fn bad_queue_settings_and_names_are_refused() {
    let app = spawn_app().await;
    let response = app
        .put(
            "/v1/queues/mail",
            &json!({"concurrency": 0, "capacity": -1}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let response = app.put("/v1/queues/mail", &json!({"concurrency": 0})).await;
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/concurrency");
    let response = app.put("/v1/queues/bad%20name", &json!({})).await;
    assert_eq!(response.status(), 422);
    assert_eq!(app.get("/v1/queues/nope").await.status(), 404);

    let unknown = app
        .post("/v1/jobs", &json!({"kind": "noop", "queue": "nope"}))
        .await;
    assert_eq!(unknown.status(), 422);
    let problem: Value = unknown.json().await.unwrap();
    assert_eq!(problem["code"], "unknown_queue");
    assert_eq!(problem["known"], json!(["default"]));
}

#[tokio::test]
async fn more_concurrency_starts_waiting_jobs_at_once() {
    let app = spawn_app().await;
    let ids = three_sleeping_in_one_slot(&app, "slow", 3000).await;
    app.wait_for_status(&ids[0], "running", SOON).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queue: Value = app.get("/v1/queues/slow").await.json().await.unwrap();
    assert_eq!(
        queue["counts"],
        json!({"scheduled": 0, "queued": 2, "running": 1})
    );

    app.configure_queue("slow", json!({"concurrency": 3})).await;
    for id in &ids {
        app.wait_for_status(id, "running", Duration::from_secs(1))
            .await;
    }
}

#[tokio::test]
async fn a_full_queue_answers_429_loses_nothing_and_reopens_as_it_drains() {
    let app = spawn_app().await;
    app.configure_queue(
        "bounded",
        json!({"capacity": 3, "concurrency": 1, "paused": true}),
    )
    .await;
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let job = app
            .submit(json!({"kind": "sleep", "queue": "bounded", "payload": {"ms": 50}}))
            .await;
        accepted.push(job["id"].as_str().unwrap().to_owned());
    }
    let refused = app
        .post("/v1/jobs", &json!({"kind": "noop", "queue": "bounded"}))
        .await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "queue_full");

    // Delayed jobs count against capacity too.
    let delayed = app
        .post(
            "/v1/jobs",
            &json!({"kind": "noop", "queue": "bounded", "delay_ms": 1000}),
        )
        .await;
    assert_eq!(delayed.status(), 429);

    app.configure_queue("bounded", json!({"paused": false}))
        .await;
    for id in &accepted {
        app.wait_for_status(id, "succeeded", SOON).await;
    }
    let reopened = app
        .submit(json!({"kind": "noop", "queue": "bounded"}))
        .await;
    app.wait_for_status(reopened["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    let listed: Value = app
        .get("/v1/jobs?queue=bounded")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        4,
        "only accepted jobs exist"
    );
}

#[tokio::test]
async fn a_queue_shows_since_when_its_oldest_ready_job_waits_and_null_when_none_does() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let first = app.submit(json!({"kind": "noop", "queue": "held"})).await;
    app.submit(json!({"kind": "noop", "queue": "held"})).await;
    // A delayed job is not ready: it does not count.
    app.submit(json!({"kind": "noop", "queue": "held", "delay_ms": 60_000}))
        .await;
    let read = |path: &'static str| {
        let app = &app;
        async move { app.get(path).await.json::<Value>().await.expect("a queue") }
    };
    // Read at most once a second: wait for the figure to include the jobs.
    let deadline = std::time::Instant::now() + SOON;
    let queue = loop {
        let queue = read("/v1/queues/held").await;
        if !queue["oldest_ready_at"].is_null() {
            break queue;
        }
        assert!(std::time::Instant::now() < deadline, "{queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(queue["oldest_ready_at"], first["run_at"], "{queue}");
    let listed = read("/v1/queues").await;
    let held = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|queue| queue["name"] == "held")
        .expect("listed")
        .clone();
    assert_eq!(held["oldest_ready_at"], first["run_at"]);

    app.configure_queue("held", json!({"paused": false})).await;
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let queue = read("/v1/queues/held").await;
        if queue["counts"]["queued"] == 0 {
            assert!(queue["oldest_ready_at"].is_null(), "{queue}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queue_is_deleted_once_its_jobs_finished_and_its_finished_jobs_stay_readable() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let delete = |name: &str| client.delete(app.url(&format!("/v1/queues/{name}"))).send();

    let missing = delete("ghost").await.unwrap();
    assert_eq!(missing.status(), 404);
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");

    app.configure_queue("brief", json!({"concurrency": 2}))
        .await;
    let done = app.submit(json!({"kind": "noop", "queue": "brief"})).await;
    let done_id = done["id"].as_str().unwrap();
    app.wait_for_status(done_id, "succeeded", SOON).await;
    let later = app
        .submit(json!({"kind": "noop", "queue": "brief", "delay_ms": 600_000}))
        .await;

    let refused = delete("brief").await.unwrap();
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "queue_not_empty");
    assert!(
        problem["detail"].as_str().unwrap().contains("1 unfinished"),
        "{problem}"
    );

    let cancel = app
        .post(
            &format!("/v1/jobs/{}/cancel", later["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), 200);
    let deleted = delete("brief").await.unwrap();
    assert_eq!(deleted.status(), 204);

    assert_eq!(app.get("/v1/queues/brief").await.status(), 404);
    let queues: Value = app.get("/v1/queues").await.json().await.unwrap();
    assert!(
        queues["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|queue| queue["name"] != "brief"),
        "{queues}"
    );
    let kept = app.job(done_id).await;
    assert_eq!(
        (kept["queue"].as_str(), kept["status"].as_str()),
        (Some("brief"), Some("succeeded"))
    );
    let submitted = app
        .post("/v1/jobs", &json!({"kind": "noop", "queue": "brief"}))
        .await;
    assert_eq!(submitted.status(), 422);
    let problem: Value = submitted.json().await.unwrap();
    assert_eq!(problem["code"], "unknown_queue");

    // The default queue stays: jobs that name no queue go there.
    let default = delete("default").await.unwrap();
    assert_eq!(default.status(), 409);
    let problem: Value = default.json().await.unwrap();
    assert_eq!(problem["code"], "default_queue");

    // Created again, it runs jobs.
    app.configure_queue("brief", json!({})).await;
    let again = app.submit(json!({"kind": "noop", "queue": "brief"})).await;
    app.wait_for_status(again["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
}

#[tokio::test]
async fn pausing_a_queue_lets_its_running_job_finish_and_starts_nothing_after_it() {
    let app = spawn_app().await;
    let ids = three_sleeping_in_one_slot(&app, "line", 300).await;
    app.wait_for_status(&ids[0], "running", SOON).await;
    app.configure_queue("line", json!({"paused": true})).await;
    let first = app.wait_for_status(&ids[0], "succeeded", SOON).await;

    // The slot its end freed is not handed on while the queue is paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids[1..] {
        let job = app.job(id).await;
        assert_eq!(job["status"], "queued", "{job}");
    }

    app.configure_queue("line", json!({"paused": false})).await;
    let second = app.wait_for_status(&ids[1], "succeeded", SOON).await;
    let third = app.wait_for_status(&ids[2], "succeeded", SOON).await;
    // One slot: each starts after the one before it ended.
    assert!(millis(&second["started_at"]) >= millis(&first["finished_at"]));
    assert!(millis(&third["started_at"]) >= millis(&second["finished_at"]));
}

/// A queue of one slot, and the ids of three jobs of `ms` each in it.
async fn three_sleeping_in_one_slot(app: &TestApp, queue: &str, ms: u64) -> Vec<String> {
    app.configure_queue(queue, json!({"concurrency": 1})).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = app
            .submit(json!({"kind": "sleep", "queue": queue, "payload": {"ms": ms}}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    ids
}
