//! Kinds of the library user's own, run through the real API.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use spool::app::AppBuilder;
use spool::kinds::{JobContext, JobFailure, JobKind};

use crate::helpers::spawn_app_with_kinds;

/// Ignores its cancellation token: only an abort stops it.
struct Stubborn;

#[async_trait]
impl JobKind for Stubborn {
    fn name(&self) -> &str {
        "stubborn"
    }
    fn description(&self) -> &str {
        "Sleeps a minute and ignores cancellation."
    }
    fn payload_schema(&self) -> Value {
        json!({"type": "object"})
    }
    async fn run(&self, _ctx: JobContext) -> Result<Value, JobFailure> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(json!("finished anyway"))
    }
}

/// Panics.
struct Panicky;

#[async_trait]
impl JobKind for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    fn description(&self) -> &str {
        "Panics."
    }
    fn payload_schema(&self) -> Value {
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        panic!("handler bug on {}", ctx.payload["n"]);
    }
}

fn with_kinds() -> Vec<Box<dyn FnOnce(AppBuilder) -> AppBuilder>> {
    vec![
        Box::new(|builder: AppBuilder| builder.kind(Stubborn)),
        Box::new(|builder: AppBuilder| builder.kind(Panicky)),
    ]
}

#[tokio::test]
async fn a_custom_kind_is_listed_and_its_schema_enforced() {
    let app = spawn_app_with_kinds(|_| {}, with_kinds()).await;
    let kinds: Value = app.get("/v1/kinds").await.json().await.unwrap();
    let names: Vec<&str> = kinds["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["echo", "http", "noop", "panicky", "sleep", "stubborn"]
    );
    let response = app
        .post("/v1/jobs", &json!({"kind": "panicky", "payload": {}}))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    // The missing field, named at its own pointer in plain words.
    assert_eq!(problem["errors"][0]["pointer"], "/payload/n");
    assert_eq!(problem["errors"][0]["message"], "is required");
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "panicky", "payload": {"n": "one"}}),
        )
        .await;
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/payload/n");
    assert_eq!(
        problem["errors"][0]["message"],
        "must be an integer, not a string"
    );
}

#[tokio::test]
async fn a_handler_that_ignores_cancellation_is_aborted_after_the_grace_period() {
    let app = spawn_app_with_kinds(|_| {}, with_kinds()).await;
    let job = app.submit(json!({"kind": "stubborn"})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_for_status(id, "running", Duration::from_secs(5))
        .await;
    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 202);
    // cancel grace is 500 ms in tests
    let done = app
        .wait_for_status(id, "cancelled", Duration::from_secs(3))
        .await;
    assert_eq!(done["result"], Value::Null);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_and_the_service_carries_on() {
    let app = spawn_app_with_kinds(|_| {}, with_kinds()).await;
    let job = app
        .submit(json!({"kind": "panicky", "payload": {"n": 1}, "max_attempts": 2, "backoff": {"base_ms": 1, "max_ms": 1}}))
        .await;
    let done = app
        .wait_for_status(
            job["id"].as_str().unwrap(),
            "failed",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["error"]["code"], "panicked");
    let other = app.submit(json!({"kind": "echo", "payload": 2})).await;
    app.wait_for_status(
        other["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(5),
    )
    .await;
}
