//! Submitting, running, retrying, timing out and cancelling jobs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{SOON, noop, sleep_ms, spawn_app};

#[tokio::test]
async fn a_submitted_job_runs_and_its_result_is_kept() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "echo", "payload": {"hello": "world"}, "metadata": {"team": "a"}}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(job["queue"], "default");
    assert_eq!(job["max_attempts"], 3);

    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_eq!(done["result"], json!({"hello": "world"}));
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["metadata"], json!({"team": "a"}));
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert_eq!(done["position"], Value::Null);
}

#[tokio::test]
async fn a_running_job_reports_progress() {
    let app = spawn_app().await;
    let job = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 1500, "steps": 10}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let seen = app
        .wait_for(id, SOON, |job| {
            job["progress"]["current"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    assert_eq!(seen["status"], "running");
    assert_eq!(seen["progress"]["total"], 10);
    let done = app.wait_for_status(id, "succeeded", SOON).await;
    assert_eq!(done["progress"]["current"], 10);
}

#[tokio::test]
async fn queued_jobs_are_ordered_by_priority_then_submission() {
    let app = spawn_app().await;
    app.configure_queue("ordered", json!({"concurrency": 1, "paused": true}))
        .await;
    let spec = |priority: i64| json!({"kind": "sleep", "queue": "ordered", "priority": priority, "payload": {"ms": 20}});
    let low = app.submit(spec(-5)).await;
    let high = app.submit(spec(10)).await;
    let middle = app.submit(spec(0)).await;
    let high_later = app.submit(spec(10)).await;

    let expected = [&high, &high_later, &middle, &low];
    // Lists leave it out: counting scans the queue (see `Job::position`).
    let listed: Value = app
        .get("/v1/jobs?queue=ordered")
        .await
        .json()
        .await
        .unwrap();
    for (position, job) in expected.iter().enumerate() {
        let seen = app.job(job["id"].as_str().unwrap()).await;
        assert_eq!(seen["status"], "queued");
        assert_eq!(
            seen["position"], position,
            "position of {}",
            seen["priority"]
        );
        let in_list = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["id"] == job["id"])
            .expect("the job is listed");
        assert_eq!(in_list["position"], Value::Null, "listed position");
    }

    app.configure_queue("ordered", json!({"paused": false}))
        .await;
    let mut started = Vec::new();
    for job in expected {
        let done = app
            .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
            .await;
        started.push(done["started_at"].as_str().unwrap().to_owned());
    }
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(
        started, sorted,
        "jobs started in priority, then FIFO, order"
    );
}

#[tokio::test]
async fn a_delayed_job_waits_for_its_time() {
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "noop", "delay_ms": 600})).await;
    assert_eq!(job["status"], "scheduled");
    let id = job["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.job(id).await["status"], "scheduled");
    let done = app.wait_for_status(id, "succeeded", SOON).await;
    assert!(done["started_at"].as_str().unwrap() >= job["run_at"].as_str().unwrap());

    let in_a_month = spool::domain::Timestamp::now().plus_ms(30 * 24 * 3_600_000);
    let at = app
        .submit(json!({"kind": "noop", "run_at": in_a_month.to_rfc3339()}))
        .await;
    assert_eq!(at["status"], "scheduled");
}

#[tokio::test]
async fn a_failing_job_is_retried_with_backoff_until_it_succeeds_its_failures_kept_as_history() {
    let app = spawn_app().await;
    let job = app
        .submit(json!({
            "kind": "sleep", "payload": {"ms": 0, "fail_attempts": 2},
            "max_attempts": 3, "backoff": {"base_ms": 50, "max_ms": 100}
        }))
        .await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert_eq!(done["attempt"], 3);
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["attempt"], 1);
    assert_eq!(errors[1]["code"], "requested_failure");
    assert!(
        done["error"].is_null(),
        "a succeeded job shows no error: {done}"
    );
}

#[tokio::test]
async fn a_job_that_keeps_failing_is_failed_after_its_last_attempt() {
    let app = spawn_app().await;
    let job = app
        .submit(json!({
            "kind": "sleep", "payload": {"ms": 0, "fail": true},
            "max_attempts": 2, "backoff": {"base_ms": 10, "max_ms": 20}
        }))
        .await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["errors"].as_array().unwrap().len(), 2);
    assert_eq!(done["error"]["code"], "requested_failure");
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let app = spawn_app().await;
    let job = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 0, "fail": true, "permanent": true}, "max_attempts": 5}))
        .await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert_eq!(done["attempt"], 1);
}

#[tokio::test]
async fn an_attempt_over_its_timeout_is_stopped_and_counts_as_failed() {
    let app = spawn_app().await;
    let job = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 30000}, "timeout_ms": 100, "max_attempts": 1}))
        .await;
    let done = app
        .wait_for_status(job["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert_eq!(done["error"]["code"], "timeout");
}

#[tokio::test]
async fn cancelling_a_waiting_job_is_immediate_and_final() {
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "noop", "delay_ms": 60000})).await;
    let id = job["id"].as_str().unwrap();
    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");

    let again = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(again.status(), 409);
    let problem: Value = again.json().await.unwrap();
    assert_eq!(problem["code"], "already_finished");
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it_promptly() {
    let app = spawn_app().await;
    let job = app.submit(sleep_ms(30_000)).await;
    let id = job["id"].as_str().unwrap();
    app.wait_for_status(id, "running", SOON).await;
    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 202);
    let requested: Value = response.json().await.unwrap();
    assert_eq!(requested["cancel_requested"], true);
    let done = app
        .wait_for_status(id, "cancelled", Duration::from_secs(2))
        .await;
    assert_eq!(done["error"]["code"], "cancelled");
}

#[tokio::test]
async fn failed_and_cancelled_jobs_can_be_retried_as_a_new_attempt_series() {
    let app = spawn_app().await;
    let cancelled = app
        .submit(json!({"kind": "echo", "payload": 1, "delay_ms": 60000}))
        .await;
    let id = cancelled["id"].as_str().unwrap();
    app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    let response = app.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert_eq!(response.status(), 202);
    let done = app.wait_for_status(id, "succeeded", SOON).await;
    assert_eq!(done["result"], 1);
    assert_eq!(done["attempt"], 1);

    let retry_again = app.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert_eq!(retry_again.status(), 409);
    let problem: Value = retry_again.json().await.unwrap();
    assert_eq!(problem["code"], "not_retryable");

    let failing = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 0, "fail": true}, "max_attempts": 2, "backoff": {"base_ms": 1, "max_ms": 1}}))
        .await;
    let id = failing["id"].as_str().unwrap();
    app.wait_for_status(id, "failed", SOON).await;
    let response = app.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert_eq!(response.status(), 202);
    let retried: Value = response.json().await.unwrap();
    assert_eq!(retried["attempt"], 0);
    let failed_again = app.wait_for_status(id, "failed", SOON).await;
    assert_eq!(failed_again["attempt"], 2, "a fresh series of max_attempts");
    assert_eq!(failed_again["errors"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_not_found_in_the_same_words() {
    let app = spawn_app().await;
    for (path, what) in [
        ("/v1/jobs/01a21126-b81d-72f8-b1e2-31ceef3e87b7", "job"),
        ("/v1/jobs/not-an-id", "job"),
        ("/v1/jobs/%FF%FE", "job"),
        (
            "/v1/jobs/01a21126-b81d-72f8-b1e2-31ceef3e87b7?wait=1",
            "job",
        ),
        ("/v1/batches/01a21126-b81d-72f8-b1e2-31ceef3e87b7", "batch"),
        ("/v1/batches/not-an-id", "batch"),
        ("/v1/queues/nope", "queue"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "not_found", "{path}");
        assert_eq!(problem["detail"], format!("no such {what}"), "{path}");
    }
    let cancel = app
        .post(
            "/v1/jobs/01a21126-b81d-72f8-b1e2-31ceef3e87b7/cancel",
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status(), 404);
    let problem: Value = cancel.json().await.unwrap();
    assert_eq!(problem["detail"], "no such job");
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_filters_and_a_cursor() {
    let app = spawn_app().await;
    app.configure_queue("listing", json!({"paused": true}))
        .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let colour = if n % 2 == 0 { "blue" } else { "purple" };
        let job = app
            .submit(json!({"kind": "noop", "queue": "listing", "metadata": {"colour": colour}}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    app.submit(noop()).await;

    let page: Value = app
        .get("/v1/jobs?queue=listing&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let first: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[4].as_str(), ids[3].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value = app
        .get(&format!("/v1/jobs?queue=listing&limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    let second: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(second, [ids[2].as_str(), ids[1].as_str()]);

    let blue: Value = app
        .get("/v1/jobs?metadata.colour=blue&status=queued")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(blue["items"].as_array().unwrap().len(), 3);
    assert_eq!(blue["next_cursor"], Value::Null);

    let bad = app
        .get("/v1/jobs?status=sleeping&colour=blue&limit=0")
        .await;
    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    let parameters: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["parameter"].as_str().unwrap())
        .collect();
    assert_eq!(parameters, ["status", "colour", "limit"]);
}

#[tokio::test]
async fn kinds_are_listed_with_their_payload_schemas() {
    let app = spawn_app().await;
    let kinds: Value = app.get("/v1/kinds").await.json().await.unwrap();
    let names: Vec<&str> = kinds["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "http", "noop", "sleep"]);
    let sleep = &kinds["items"][3];
    assert_eq!(sleep["schema"]["required"], json!(["ms"]));
}

#[tokio::test]
async fn finished_jobs_are_deleted_after_the_retention_period() {
    let app =
        crate::helpers::spawn_app_with(|config| config.retention = Duration::from_millis(600))
            .await;
    let job = app.submit(noop()).await;
    let id = job["id"].as_str().unwrap();
    app.wait_for_status(id, "succeeded", SOON).await;
    let waiting = app.submit(json!({"kind": "noop", "delay_ms": 60000})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.get(&format!("/v1/jobs/{id}")).await.status() != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the finished job was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Jobs that have not finished are never pruned.
    assert_eq!(
        app.job(waiting["id"].as_str().unwrap()).await["status"],
        "scheduled"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app.get("/v1/queues").await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let echoed = app
        .client
        .get(app.url("/v1/nothing"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 404);
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn a_submissions_trace_context_is_kept_with_its_jobs_and_a_malformed_one_ignored() {
    let app = crate::helpers::spawn_app().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let send = |path: &'static str, body: serde_json::Value, parent: &'static str| {
        let app = &app;
        async move {
            let response = app
                .post_traced(path, &body, parent, Some("rojo=00f067aa0ba902b7"))
                .await;
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<serde_json::Value>().await.expect("a body")
        }
    };
    let job = send("/v1/jobs", serde_json::json!({"kind": "noop"}), traceparent).await;
    assert_eq!(job["traceparent"], traceparent);
    assert_eq!(job["tracestate"], "rojo=00f067aa0ba902b7");
    let read = app.job(job["id"].as_str().expect("an id")).await;
    assert_eq!(read["traceparent"], traceparent);

    let batch = send(
        "/v1/batches",
        serde_json::json!({"jobs": [{"kind": "noop"}, {"kind": "noop"}]}),
        traceparent,
    )
    .await;
    for id in crate::helpers::job_ids(&batch) {
        assert_eq!(app.job(&id).await["traceparent"], traceparent);
    }

    let untraced = send(
        "/v1/jobs",
        serde_json::json!({"kind": "noop"}),
        "00-not-a-trace-01",
    )
    .await;
    assert!(untraced["traceparent"].is_null(), "{untraced}");
    assert!(untraced["tracestate"].is_null(), "{untraced}");
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_refused_in_json_words_with_its_pointer() {
    let app = spawn_app().await;
    for (body, pointer, message) in [
        (
            json!({"kind": "noop", "priority": "high"}),
            "/priority",
            "must be an integer, not a string",
        ),
        (
            json!({"kind": "noop", "metadata": ["a"]}),
            "/metadata",
            "must be an object, not an array",
        ),
        (json!({"payload": {}}), "/kind", "is required"),
    ] {
        let response = app.post("/v1/jobs", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed", "{problem}");
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{problem}");
        assert_eq!(problem["errors"][0]["message"], message, "{problem}");
    }
}
