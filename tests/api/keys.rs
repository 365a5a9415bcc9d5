//! Unique keys with `on_conflict`, and the `Idempotency-Key` header.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{SOON, spawn_app};

#[tokio::test]
async fn a_taken_key_is_rejected_with_the_holders_id() {
    let app = spawn_app().await;
    let holder = app
        .submit(json!({"kind": "noop", "key": "report-7", "delay_ms": 60000}))
        .await;
    let response = app
        .post("/v1/jobs", &json!({"kind": "noop", "key": "report-7"}))
        .await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "key_conflict");
    assert_eq!(problem["job_id"], holder["id"]);
}

#[tokio::test]
async fn on_conflict_existing_returns_the_holder_and_stores_nothing() {
    let app = spawn_app().await;
    let holder = app
        .submit(json!({"kind": "noop", "key": "k", "delay_ms": 60000}))
        .await;
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "echo", "key": "k", "on_conflict": "existing"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["id"], holder["id"]);
    let listed: Value = app.get("/v1/jobs?key=k").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_is_free_again_once_its_holder_finished() {
    let app = spawn_app().await;
    let first = app.submit(json!({"kind": "noop", "key": "once"})).await;
    app.wait_for_status(first["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    app.submit(json!({"kind": "noop", "key": "once"})).await;
}

#[tokio::test]
async fn on_conflict_replace_cancels_a_waiting_holder() {
    let app = spawn_app().await;
    let holder = app
        .submit(json!({"kind": "noop", "key": "colour", "delay_ms": 60000}))
        .await;
    let replacement = app
        .submit(
            json!({"kind": "echo", "payload": "blue", "key": "colour", "on_conflict": "replace"}),
        )
        .await;
    let old = app.job(holder["id"].as_str().unwrap()).await;
    assert_eq!(old["status"], "cancelled");
    assert_eq!(old["error"]["code"], "replaced");
    let done = app
        .wait_for_status(replacement["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_eq!(done["result"], "blue");
}

#[tokio::test]
async fn on_conflict_replace_cancels_a_running_holder() {
    let app = spawn_app().await;
    let purple = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 30000}, "key": "paint"}))
        .await;
    let purple_id = purple["id"].as_str().unwrap();
    app.wait_for_status(purple_id, "running", SOON).await;

    let blue = app
        .submit(
            json!({"kind": "echo", "payload": "blue", "key": "paint", "on_conflict": "replace"}),
        )
        .await;
    let stopped = app
        .wait_for_status(purple_id, "cancelled", Duration::from_secs(3))
        .await;
    assert_eq!(stopped["cancel_requested"], true);
    let done = app
        .wait_for_status(blue["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_eq!(done["result"], "blue");
}

#[tokio::test]
async fn an_idempotent_repeat_returns_the_original_response() {
    let app = spawn_app().await;
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/v1/jobs"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("order-1", json!({"kind": "noop", "metadata": {"a": "1"}}))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let original: Value = first.json().await.unwrap();

    // Same body, other formatting and key order: a replay.
    let repeat = app
        .client
        .post(app.url("/v1/jobs"))
        .header("idempotency-key", "order-1")
        .header("content-type", "application/json")
        .body(r#"{ "metadata": {"a": "1"},   "kind": "noop" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(repeat.status(), 202);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    let replayed: Value = repeat.json().await.unwrap();
    assert_eq!(replayed["id"], original["id"]);

    let other_body = send("order-1", json!({"kind": "echo"})).await.unwrap();
    assert_eq!(other_body.status(), 422);
    let problem: Value = other_body.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_mismatch");

    let other_key = send("order-2", json!({"kind": "noop", "metadata": {"a": "1"}}))
        .await
        .unwrap();
    let fresh: Value = other_key.json().await.unwrap();
    assert_ne!(fresh["id"], original["id"]);

    let listed: Value = app.get("/v1/jobs?metadata.a=1").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_submission_does_not_burn_its_idempotency_key() {
    let app = spawn_app().await;
    app.configure_queue("tiny", json!({"capacity": 1, "paused": true}))
        .await;
    app.submit(json!({"kind": "noop", "queue": "tiny"})).await;
    let send = || {
        app.client
            .post(app.url("/v1/jobs"))
            .header("idempotency-key", "retry-me")
            .json(&json!({"kind": "noop", "queue": "tiny"}))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 429);
    app.configure_queue("tiny", json!({"capacity": 2})).await;
    assert_eq!(send().await.unwrap().status(), 202);
}
