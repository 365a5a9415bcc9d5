//! Tenants kept apart: lists, streams, long-polls, unique keys, idempotency
//! keys and concurrency keys never reach across tenants.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::access::{ADMIN, READ_A, WRITE_A, WRITE_B, call, with_keys};
use crate::events::EventStream;
use crate::helpers::spawn_app_with;

async fn submitted(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert!(status.is_success(), "submission answered {status}");
    body
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn lists_show_a_tenant_only_its_own_jobs_and_an_admin_any_tenants_it_names() {
    let app = spawn_app_with(with_keys).await;
    let spec = json!({"kind": "noop"});
    let a = id(
        &submitted(call(&app, Method::POST, "/v1/jobs", Some(WRITE_A), Some(&spec)).await).await,
    );
    let b = id(
        &submitted(call(&app, Method::POST, "/v1/jobs", Some(WRITE_B), Some(&spec)).await).await,
    );
    let ids = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(id)
            .collect()
    };
    let page = |key: &'static str, path: &'static str| {
        let app = &app;
        async move {
            call(app, Method::GET, path, Some(key), None)
                .await
                .json::<Value>()
                .await
                .expect("a page")
        }
    };
    assert_eq!(
        ids(page(READ_A, "/v1/jobs").await),
        std::slice::from_ref(&a)
    );
    assert_eq!(
        ids(page(WRITE_B, "/v1/jobs").await),
        std::slice::from_ref(&b)
    );
    assert_eq!(ids(page(ADMIN, "/v1/jobs").await), Vec::<String>::new());
    assert_eq!(ids(page(ADMIN, "/v1/jobs?tenant=bolt").await), [b]);
    assert_eq!(ids(page(ADMIN, "/v1/jobs?limit=5&tenant=acme").await), [a]);
}

#[tokio::test]
async fn two_tenants_may_use_the_same_unique_key_and_idempotency_key() {
    let app = spawn_app_with(with_keys).await;
    let spec = json!({"kind": "noop", "key": "report-7", "delay_ms": 60000});
    let post = |key: &'static str| {
        let app = &app;
        let spec = spec.clone();
        async move {
            app.client
                .post(app.url("/v1/jobs"))
                .bearer_auth(key)
                .header("idempotency-key", "same-key")
                .json(&spec)
                .send()
                .await
                .expect("request sent")
        }
    };
    let a = post(WRITE_A).await;
    assert_eq!(a.status(), 202);
    let b = post(WRITE_B).await;
    assert_eq!(b.status(), 202, "bolt's submission was taken for acme's");
    assert!(b.headers().get("idempotent-replayed").is_none());
    let (a, b) = (
        a.json::<Value>().await.unwrap(),
        b.json::<Value>().await.unwrap(),
    );
    assert_ne!(a["id"], b["id"]);
    // Within one tenant the key is still held.
    let again = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(WRITE_A),
        Some(&json!({"kind": "noop", "key": "report-7"})),
    )
    .await;
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn another_tenants_concurrency_key_does_not_hold_back_a_tenants_jobs() {
    let app = spawn_app_with(with_keys).await;
    let keyed = |ms: u64| json!({"kind": "sleep", "payload": {"ms": ms}, "concurrency_key": "api", "concurrency_limit": 1});
    let a = submitted(
        call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&keyed(60_000)),
        )
        .await,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = |key: &'static str, id: String| {
        let app = &app;
        async move {
            call(app, Method::GET, &format!("/v1/jobs/{id}"), Some(key), None)
                .await
                .json::<Value>()
                .await
                .expect("a job")
        }
    };
    while job(WRITE_A, id(&a)).await["status"] != "running" {
        assert!(
            Instant::now() < deadline,
            "acme's keyed job never started: {}",
            job(WRITE_A, id(&a)).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = submitted(
        call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_B),
            Some(&keyed(0)),
        )
        .await,
    )
    .await;
    let response = call(
        &app,
        Method::GET,
        &format!("/v1/jobs/{}?wait=20", id(&b)),
        Some(WRITE_B),
        None,
    )
    .await;
    let done: Value = response.json().await.unwrap();
    assert_eq!(
        done["status"], "succeeded",
        "bolt's job waited for acme's key"
    );
}

#[tokio::test]
async fn long_polls_on_another_tenants_job_or_batch_answer_404_at_once() {
    let app = spawn_app_with(with_keys).await;
    let job = submitted(
        call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(WRITE_A),
            Some(&json!({"kind": "noop", "delay_ms": 60000})),
        )
        .await,
    )
    .await;
    let batch = submitted(
        call(
            &app,
            Method::POST,
            "/v1/batches",
            Some(WRITE_A),
            Some(&json!({"jobs": [{"kind": "noop", "delay_ms": 60000}]})),
        )
        .await,
    )
    .await;
    for path in [
        format!("/v1/jobs/{}?wait=30", id(&job)),
        format!("/v1/batches/{}?wait=30", id(&batch)),
        format!("/v1/batches/{}/results", id(&batch)),
    ] {
        let started = Instant::now();
        let response = call(&app, Method::GET, &path, Some(WRITE_B), None).await;
        assert_eq!(response.status(), 404, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} waited {:?} before its 404",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_event_stream_shows_a_tenant_only_its_own_jobs_and_batches() {
    let app = spawn_app_with(with_keys).await;
    let open = |key: &'static str, query: &'static str| {
        let app = &app;
        async move {
            let response = call(
                app,
                Method::GET,
                &format!("/v1/events{query}"),
                Some(key),
                None,
            )
            .await;
            assert_eq!(response.status(), 200);
            EventStream::new(response)
        }
    };
    let mut bolt = open(WRITE_B, "").await;
    let mut admin_on_bolt = open(ADMIN, "?tenant=bolt").await;
    let spec = json!({"kind": "noop"});
    let acme_job = id(&submitted(
        call(&app, Method::POST, "/v1/jobs", Some(WRITE_A), Some(&spec)).await,
    )
    .await);
    let acme_batch = id(&submitted(
        call(
            &app,
            Method::POST,
            "/v1/batches",
            Some(WRITE_A),
            Some(&json!({"jobs": [spec.clone()]})),
        )
        .await,
    )
    .await);
    // Acme's job and batch end before bolt's job is even submitted.
    let acme_done = call(
        &app,
        Method::GET,
        &format!("/v1/batches/{acme_batch}?wait=20"),
        Some(WRITE_A),
        None,
    )
    .await;
    assert_eq!(
        acme_done.json::<Value>().await.unwrap()["status"],
        "succeeded"
    );
    let bolt_job = id(&submitted(
        call(&app, Method::POST, "/v1/jobs", Some(WRITE_B), Some(&spec)).await,
    )
    .await);
    for stream in [&mut bolt, &mut admin_on_bolt] {
        let seen = stream.until_job_event(&bolt_job, "job.succeeded").await;
        for message in &seen {
            let data = message.json();
            assert_ne!(
                data["job"]["id"],
                acme_job.as_str(),
                "acme's job on bolt's stream"
            );
            assert_ne!(
                data["batch"]["id"],
                acme_batch.as_str(),
                "acme's batch on bolt's stream"
            );
            assert_eq!(data["job"]["id"], bolt_job.as_str(), "{message:?}");
        }
    }
}

/// Every job of `tenant` in `status`, paged through as an admin.
async fn jobs_of(app: &crate::helpers::TestApp, tenant: &str, status: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/jobs?tenant={tenant}&status={status}&limit=100");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = call(app, Method::GET, &path, Some(ADMIN), None)
            .await
            .json()
            .await
            .expect("a page");
        jobs.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return jobs,
        }
    }
}

#[tokio::test]
async fn a_tenants_ten_jobs_behind_another_tenants_10_000_start_within_the_first_20_claims() {
    let app = spawn_app_with(with_keys).await;
    let queue = json!({"concurrency": 4, "capacity": 20_000});
    let configured = call(
        &app,
        Method::PUT,
        "/v1/queues/fair",
        Some(ADMIN),
        Some(&queue),
    )
    .await;
    assert!(configured.status().is_success(), "{}", configured.status());
    let job = json!({"kind": "sleep", "queue": "fair", "payload": {"ms": 10}});
    for _ in 0..10 {
        let batch = json!({"jobs": vec![job.clone(); 1_000]});
        submitted(
            call(
                &app,
                Method::POST,
                "/v1/batches",
                Some(WRITE_A),
                Some(&batch),
            )
            .await,
        )
        .await;
    }
    let b = submitted(
        call(
            &app,
            Method::POST,
            "/v1/batches",
            Some(WRITE_B),
            Some(&json!({"jobs": vec![job; 10]})),
        )
        .await,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let b_jobs = loop {
        let done = jobs_of(&app, "bolt", "succeeded").await;
        if done.len() == 10 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "bolt's jobs did not all finish: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let millis = |job: &Value, field: &str| crate::helpers::millis(&job[field]);
    let arrived = millis(&b_jobs[0], "created_at");
    let last_start = b_jobs
        .iter()
        .map(|job| millis(job, "started_at"))
        .max()
        .expect("ten jobs");
    // Claims since bolt's jobs arrived: acme's jobs that started strictly
    // between their arrival and the last of them to start, and bolt's ten.
    let mut acme = jobs_of(&app, "acme", "succeeded").await;
    acme.extend(jobs_of(&app, "acme", "running").await);
    let acme_between = acme
        .iter()
        .filter(|job| (arrived + 1..last_start).contains(&millis(job, "started_at")))
        .count();
    assert!(
        acme_between + 10 <= 20,
        "{acme_between} of acme's jobs started between bolt's arrival and its last start"
    );
    // And acme's backlog was still there to compete: fair share, not an empty queue.
    let tenant: Value = call(&app, Method::GET, "/v1/tenants/acme", Some(ADMIN), None)
        .await
        .json()
        .await
        .expect("a tenant");
    let pending = tenant["pending"].as_u64().expect("a count");
    assert!(pending > 1_000, "acme had only {pending} jobs left");
}
