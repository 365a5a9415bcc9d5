//! Quotas through the API: `max_pending` per tenant (429 `tenant_quota`),
//! `submit_rate`/`submit_burst` per key (429 `rate_limited`), their
//! headers, and the bound under concurrent submitters on both backends.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::{ADMIN, READ_A, WRITE_A, WRITE_B, call, with_keys};
use crate::helpers::{PgSchema, TestApp, spawn_app, spawn_app_with};

async fn put_tenant(app: &TestApp, tenant: &str, settings: Value) -> Value {
    let response = call(
        app,
        Method::PUT,
        &format!("/v1/tenants/{tenant}"),
        Some(ADMIN),
        Some(&settings),
    )
    .await;
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert!(
        status.is_success(),
        "PUT /v1/tenants/{tenant}: {status} {body}"
    );
    body
}

async fn tenant(app: &TestApp, tenant: &str) -> Value {
    let response = call(
        app,
        Method::GET,
        &format!("/v1/tenants/{tenant}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON body")
}

/// A paused queue `held`: what is admitted there stays pending.
async fn held_queue(app: &TestApp, paused: bool) {
    let response = call(
        app,
        Method::PUT,
        "/v1/queues/held",
        Some(ADMIN),
        Some(&json!({"paused": paused, "concurrency": 50})),
    )
    .await;
    assert!(response.status().is_success());
}

fn held_job() -> Value {
    json!({"kind": "noop", "queue": "held"})
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|value| value.to_str().expect("a visible header"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    let got = response.status();
    let body: Value = response.json().await.expect("a problem");
    assert_eq!(got.as_u16(), status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    body
}

#[tokio::test]
async fn max_pending_refuses_with_tenant_quota_and_headers_and_a_batch_whole() {
    let app = spawn_app_with(with_keys).await;
    held_queue(&app, true).await;
    let set = put_tenant(&app, "acme", json!({"max_pending": 3})).await;
    assert_eq!(set["settings"]["max_pending"], 3);
    assert_eq!(set["pending"], 0);

    for _ in 0..2 {
        let response = call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&held_job()),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    // Room for one: a batch of two is refused whole.
    let batch = json!({"jobs": [held_job(), held_job()]});
    let response = call(
        &app,
        Method::POST,
        "/v1/batches",
        Some(WRITE_A),
        Some(&batch),
    )
    .await;
    assert_eq!(header(&response, "retry-after"), "2");
    assert_eq!(header(&response, "ratelimit-policy"), "\"pending\";q=3");
    assert_eq!(header(&response, "ratelimit"), "\"pending\";r=1;t=2");
    let body = problem(response, 429, "tenant_quota").await;
    assert!(body["detail"].as_str().unwrap().contains("acme"), "{body}");
    assert_eq!(
        tenant(&app, "acme").await["pending"],
        2,
        "nothing of the batch stayed"
    );

    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    assert_eq!(response.status(), 202);
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    assert_eq!(header(&response, "ratelimit"), "\"pending\";r=0;t=2");
    problem(response, 429, "tenant_quota").await;
    // Another queue is no way around it: the bound is over all queues.
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&json!({"kind": "noop", "delay_ms": 60000})),
    )
    .await;
    problem(response, 429, "tenant_quota").await;

    // Another tenant is not affected.
    for _ in 0..5 {
        let response = call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_B),
            Some(&held_job()),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    assert_eq!(tenant(&app, "acme").await["pending"], 3);
    assert_eq!(tenant(&app, "bolt").await["pending"], 5);
}

#[tokio::test]
async fn room_comes_back_as_the_tenants_jobs_leave_the_waiting_states() {
    let app = spawn_app_with(with_keys).await;
    held_queue(&app, true).await;
    put_tenant(&app, "acme", json!({"max_pending": 2})).await;
    for _ in 0..2 {
        let response = call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&held_job()),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    problem(response, 429, "tenant_quota").await;

    held_queue(&app, false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tenant(&app, "acme").await["pending"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the jobs never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held_queue(&app, true).await;
    for _ in 0..2 {
        let response = call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&held_job()),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    problem(response, 429, "tenant_quota").await;
}

#[tokio::test]
async fn put_tenants_takes_effect_at_once_and_null_lifts_the_limit() {
    let app = spawn_app_with(with_keys).await;
    held_queue(&app, true).await;
    let before = tenant(&app, "acme").await;
    assert_eq!(before["settings"]["max_pending"], Value::Null);
    assert_eq!(before["updated_at"], Value::Null);
    for _ in 0..3 {
        let response = call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&held_job()),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    // Already over the new limit: the next submission is refused at once.
    let response = call(
        &app,
        Method::PUT,
        "/v1/tenants/acme",
        Some(ADMIN),
        Some(&json!({"max_pending": 2})),
    )
    .await;
    assert_eq!(response.status(), 201);
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    let body = problem(response, 429, "tenant_quota").await;
    assert!(body["detail"].as_str().unwrap().contains('3'), "{body}");
    // A job that waits for its time counts as a queued one does.
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&json!({"kind": "noop", "queue": "held", "delay_ms": 60000})),
    )
    .await;
    problem(response, 429, "tenant_quota").await;

    let lifted = put_tenant(&app, "acme", json!({"max_pending": null})).await;
    assert_eq!(lifted["settings"]["max_pending"], Value::Null);
    assert_eq!(lifted["pending"], 3);
    assert!(lifted["updated_at"].is_string());
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    assert_eq!(response.status(), 202);

    // Reading: a key of the tenant reads its own, not another's; writing
    // is for admins.
    let own = call(&app, Method::GET, "/v1/tenants/acme", Some(READ_A), None).await;
    assert_eq!(own.status(), 200);
    let other = call(&app, Method::GET, "/v1/tenants/bolt", Some(READ_A), None).await;
    assert_eq!(other.status(), 403);
    let put = call(
        &app,
        Method::PUT,
        "/v1/tenants/acme",
        Some(WRITE_A),
        Some(&json!({})),
    )
    .await;
    assert_eq!(put.status(), 403);
    let invalid = call(
        &app,
        Method::PUT,
        "/v1/tenants/acme",
        Some(ADMIN),
        Some(&json!({"submit_burst": 5})),
    )
    .await;
    problem(invalid, 422, "validation_failed").await;
}

#[tokio::test]
async fn a_retry_counts_against_max_pending() {
    let app = spawn_app_with(with_keys).await;
    held_queue(&app, true).await;
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    let cancel = call(
        &app,
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        Some(WRITE_A),
        None,
    )
    .await;
    assert!(cancel.status().is_success());
    put_tenant(&app, "acme", json!({"max_pending": 1})).await;
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    assert_eq!(response.status(), 202);
    let retry = call(
        &app,
        Method::POST,
        &format!("/v1/jobs/{id}/retry"),
        Some(WRITE_A),
        None,
    )
    .await;
    problem(retry, 429, "tenant_quota").await;
}

#[tokio::test]
async fn an_accepted_request_is_replayed_even_when_the_quota_is_full() {
    let app = spawn_app_with(with_keys).await;
    held_queue(&app, true).await;
    put_tenant(
        &app,
        "acme",
        json!({"max_pending": 1, "submit_rate": 0.01, "submit_burst": 1}),
    )
    .await;
    let send = || {
        app.client
            .post(app.url("/v1/jobs"))
            .bearer_auth(WRITE_A)
            .header("idempotency-key", "once")
            .json(&held_job())
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The quota and the key's rate are both spent now; the same request
    // is still answered as it was.
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    // Without the rate in the way, the store replays it before the quota.
    put_tenant(&app, "acme", json!({"max_pending": 1})).await;
    let third = send().await.unwrap();
    assert_eq!(third.status(), 202);
    assert_eq!(header(&third, "idempotent-replayed"), "true");
}

#[tokio::test]
async fn a_keys_rate_refuses_with_rate_limited_and_headers_then_recovers() {
    let app = spawn_app_with(with_keys).await;
    put_tenant(&app, "acme", json!({"submit_rate": 4, "submit_burst": 3})).await;
    let job = json!({"kind": "noop"});
    let first = call(&app, Method::POST, "/v1/jobs", Some(WRITE_A), Some(&job)).await;
    assert_eq!(first.status(), 202);
    assert_eq!(header(&first, "ratelimit-policy"), "\"submit\";q=3;w=1");
    assert_eq!(header(&first, "ratelimit"), "\"submit\";r=2;t=1");
    // A batch takes its jobs' tokens: two left, a batch of three is refused
    // whole and takes none.
    let batch = json!({"jobs": [job, job, job]});
    let refused = call(
        &app,
        Method::POST,
        "/v1/batches",
        Some(WRITE_A),
        Some(&batch),
    )
    .await;
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "ratelimit-policy"), "\"submit\";q=3;w=1");
    assert!(header(&refused, "ratelimit").starts_with("\"submit\";r=2;"));
    problem(refused, 429, "rate_limited").await;
    let pair = json!({"jobs": [job, job]});
    let admitted = call(
        &app,
        Method::POST,
        "/v1/batches",
        Some(WRITE_A),
        Some(&pair),
    )
    .await;
    assert_eq!(admitted.status(), 202);
    let refused = call(&app, Method::POST, "/v1/jobs", Some(WRITE_A), Some(&job)).await;
    assert_eq!(header(&refused, "ratelimit"), "\"submit\";r=0;t=1");
    problem(refused, 429, "rate_limited").await;
    // Larger than the burst: no wait helps.
    let huge = json!({"jobs": [job, job, job, job]});
    let refused = call(
        &app,
        Method::POST,
        "/v1/batches",
        Some(WRITE_A),
        Some(&huge),
    )
    .await;
    problem(refused, 413, "payload_too_large").await;
    // Other keys have buckets of their own.
    let other = call(&app, Method::POST, "/v1/jobs", Some(WRITE_B), Some(&job)).await;
    assert_eq!(other.status(), 202);
    assert!(
        other.headers().get("ratelimit").is_none(),
        "bolt has no rate"
    );

    // At 4 a second, a token is back within 250 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = call(&app, Method::POST, "/v1/jobs", Some(WRITE_A), Some(&job)).await;
    assert_eq!(again.status(), 202);
    // Lifted at once.
    put_tenant(&app, "acme", json!({})).await;
    for _ in 0..10 {
        let response = call(&app, Method::POST, "/v1/jobs", Some(WRITE_A), Some(&job)).await;
        assert_eq!(response.status(), 202);
        assert!(response.headers().get("ratelimit").is_none());
    }
}

#[tokio::test]
async fn open_mode_has_no_rate_per_key() {
    let app = spawn_app().await;
    let response = app
        .put(
            "/v1/tenants/default",
            &json!({"submit_rate": 1, "submit_burst": 1}),
        )
        .await;
    assert_eq!(response.status(), 201);
    for _ in 0..5 {
        app.submit(json!({"kind": "noop"})).await;
    }
}

#[tokio::test]
async fn tenants_declared_in_the_config_file_apply_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(
        &file,
        "[queues.held]\npaused = true\n\n[tenants.acme]\nmax_pending = 1\nsubmit_rate = 100\n",
    )
    .unwrap();
    let app = spawn_app_with(|config| {
        with_keys(config);
        config.config_file = Some(file.clone());
    })
    .await;
    let acme = tenant(&app, "acme").await;
    assert_eq!(acme["settings"]["max_pending"], 1);
    assert_eq!(acme["settings"]["submit_rate"], 100.0);
    assert_eq!(acme["settings"]["submit_burst"], Value::Null);
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    assert_eq!(response.status(), 202);
    let response = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&held_job()),
    )
    .await;
    problem(response, 429, "tenant_quota").await;
}

/// 16 submitters, 20 requests each, some batches of three, against
/// `max_pending` 50 on a paused queue, spread over `apps`: never more than
/// 50 admitted, and every 202 is a job that is there.
async fn concurrent_submitters_stay_under_max_pending(apps: &[Arc<TestApp>]) {
    put_tenant(&apps[0], "acme", json!({"max_pending": 50})).await;
    held_queue(&apps[0], true).await;
    // Every instance knows the limit (shared mode: within a second).
    for app in apps {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let response = call(app, Method::GET, "/v1/queues/held", Some(ADMIN), None).await;
            let queue: Value = response.json().await.unwrap();
            if queue["paused"] == true {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue never paused"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut tasks = Vec::new();
    for submitter in 0..16 {
        let app = Arc::clone(&apps[submitter % apps.len()]);
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut refused) = (0u64, 0u64);
            for _ in 0..20 {
                let response = if submitter % 4 == 3 {
                    let batch = json!({"jobs": [held_job(), held_job(), held_job()]});
                    call(
                        &app,
                        Method::POST,
                        "/v1/batches",
                        Some(WRITE_A),
                        Some(&batch),
                    )
                    .await
                } else {
                    call(
                        &app,
                        Method::POST,
                        "/v1/jobs",
                        Some(WRITE_A),
                        Some(&held_job()),
                    )
                    .await
                };
                let jobs = if submitter % 4 == 3 { 3 } else { 1 };
                match response.status() {
                    StatusCode::ACCEPTED => admitted += jobs,
                    StatusCode::TOO_MANY_REQUESTS => {
                        let body: Value = response.json().await.unwrap();
                        assert_eq!(body["code"], "tenant_quota", "{body}");
                        refused += 1;
                    }
                    other => panic!("{other}: {}", response.text().await.unwrap_or_default()),
                }
            }
            (admitted, refused)
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        let (a, r) = task.await.expect("a submitter");
        admitted += a;
        refused += r;
    }
    let pending = tenant(&apps[0], "acme").await["pending"].as_u64().unwrap();
    assert!(
        admitted <= 50,
        "{admitted} jobs admitted under max_pending 50"
    );
    assert_eq!(
        pending, admitted,
        "every 202 is a waiting job, and no other"
    );
    // Single jobs fill what batches leave: 48 at the least.
    assert!(
        admitted >= 48,
        "only {admitted} admitted ({refused} refused)"
    );
    assert!(refused > 0);
}

#[tokio::test]
async fn concurrent_submitters_never_exceed_max_pending() {
    let app = spawn_app_with(with_keys).await;
    concurrent_submitters_stay_under_max_pending(&[Arc::new(app)]).await;
}

#[tokio::test]
async fn concurrent_submitters_never_exceed_max_pending_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = spawn_app_with(|config| {
        with_keys(config);
        config.database_url = schema.url.clone();
    })
    .await;
    concurrent_submitters_stay_under_max_pending(&[Arc::new(app)]).await;
}

#[tokio::test]
async fn two_instances_sharing_postgres_never_exceed_max_pending_together() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut apps = Vec::new();
    for _ in 0..2 {
        let app = spawn_app_with(|config| {
            with_keys(config);
            config.database_url = schema.url.clone();
        })
        .await;
        apps.push(Arc::new(app));
    }
    concurrent_submitters_stay_under_max_pending(&apps).await;
}

#[tokio::test]
async fn a_change_through_one_instance_applies_on_the_other_within_a_second_or_two() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut apps = Vec::new();
    for _ in 0..2 {
        let app = spawn_app_with(|config| {
            with_keys(config);
            config.database_url = schema.url.clone();
        })
        .await;
        apps.push(app);
    }
    held_queue(&apps[0], true).await;
    put_tenant(&apps[0], "acme", json!({"max_pending": 0})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let response = call(
            &apps[1],
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&held_job()),
        )
        .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            problem(response, 429, "tenant_quota").await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other instance still admits after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
