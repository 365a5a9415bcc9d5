//! Graceful shutdown: stop admitting, drain, hand back, exit 0.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{SpoolProcess, db_path, sleep_ms, spawn_app};

fn wait_exit(spool: &mut SpoolProcess, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = spool.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "spool did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn submit(client: &reqwest::Client, spool: &SpoolProcess, spec: Value) -> String {
    let response = client
        .post(spool.url("/v1/jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

async fn status_of(client: &reqwest::Client, spool: &SpoolProcess, id: &str) -> Value {
    client
        .get(spool.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = SpoolProcess::start(&db_path(&dir), &[("SPOOL_SHUTDOWN_GRACE", "10s")]);
    let client = reqwest::Client::new();
    let id = submit(
        &client,
        &spool,
        json!({"kind": "sleep", "payload": {"ms": 800}}),
    )
    .await;
    while status_of(&client, &spool, &id).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spool.sigterm();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While draining: no new work, reads still answered, not ready.
    let refused = client
        .post(spool.url("/v1/jobs"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "shutting_down");
    assert_eq!(
        client
            .get(spool.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    let status = wait_exit(&mut spool, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");

    let spool = SpoolProcess::start(&db_path(&dir), &[]);
    let job = status_of(&client, &spool, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1);
}

#[tokio::test]
async fn sigterm_hands_back_jobs_that_outlive_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = SpoolProcess::start(
        &db_path(&dir),
        &[
            ("SPOOL_SHUTDOWN_GRACE", "1s"),
            ("SPOOL_CANCEL_GRACE", "200ms"),
        ],
    );
    let client = reqwest::Client::new();
    let id = submit(
        &client,
        &spool,
        json!({"kind": "sleep", "payload": {"ms": 60000}}),
    )
    .await;
    while status_of(&client, &spool, &id).await["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    spool.sigterm();
    let status = wait_exit(&mut spool, Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(4));

    // Handed back: queued again, the interrupted attempt not counted. Paused
    // on restart so the test sees it before it runs again.
    let config = dir.path().join("spool.toml");
    std::fs::write(&config, "[queues.default]\npaused = true\n").unwrap();
    let spool = SpoolProcess::start(
        &db_path(&dir),
        &[("SPOOL_CONFIG", config.to_str().unwrap())],
    );
    let job = status_of(&client, &spool, &id).await;
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["attempt"], 0);
}

#[tokio::test]
async fn the_service_is_ready_until_shutdown() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    let job = app.submit(sleep_ms(10)).await;
    app.wait_for_status(
        job["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(5),
    )
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_waiting_long_polls_at_once_with_the_current_state() {
    let app = spawn_app().await;
    let job = app.submit(sleep_ms(3_000)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "running", Duration::from_secs(10))
        .await;
    let poll = {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/v1/jobs/{id}?wait=60")),
        );
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body, Instant::now())
        })
    };
    // The long-poll waits before shutdown begins.
    app.until_long_polls_wait(1).await;
    let shutdown_began = Instant::now();
    let shutdown = tokio::spawn(app.shutdown());
    let (status, body, answered) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "running", "answered with the state of then");
    assert!(
        answered.duration_since(shutdown_began) < Duration::from_secs(2),
        "the long-poll held shutdown up for {:?}",
        answered.duration_since(shutdown_began)
    );
    shutdown.await.unwrap();
}
