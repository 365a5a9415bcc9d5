//! Batches: admitted whole or not at all, followed, read as they finish,
//! judged by their success threshold, cancelled; and long-polls on jobs and
//! batches.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::domain::Timestamp;

use crate::helpers::{SOON, TestApp, job_ids, millis, noop, sleep_ms, spawn_app, spawn_app_with};

/// Submits a batch, asserting a 202 with its Location; returns the batch.
pub(crate) async fn submit_batch(app: &TestApp, body: &Value) -> Value {
    let response = app.post("/v1/batches", body).await;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let batch: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 202, "batch {body} answered {batch}");
    assert_eq!(
        location,
        Some(format!("/v1/batches/{}", batch["id"].as_str().unwrap()))
    );
    batch
}

async fn batch(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON body")
}

/// The batch once more, a moment later.
async fn batch_after_a_while(app: &TestApp, id: &str) -> Value {
    tokio::time::sleep(Duration::from_millis(100)).await;
    batch(app, id).await
}

async fn submit_batch_with_key(app: &TestApp, key: &str, body: &Value) -> Value {
    let response = app
        .client
        .post(app.url("/v1/batches"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

/// Polls the batch until `done` holds for it, or panics after `within`.
async fn wait_for_batch(
    app: &TestApp,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let batch = batch(app, id).await;
        if done(&batch) {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "batch never reached the expected state: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until_finished(app: &TestApp, id: &str) -> Value {
    wait_for_batch(app, id, SOON, |batch| batch["finished_at"].is_string()).await
}

/// The sorted pointers of a 422 `validation_failed` answer.
async fn refused_pointers(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    let mut pointers: Vec<String> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {problem}"))
        .iter()
        .map(|error| error["pointer"].as_str().unwrap().to_owned())
        .collect();
    pointers.sort();
    pointers
}

/// The `parameter`s of a 422 answer to a query.
async fn refused_parameters(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["parameter"].as_str().unwrap().to_owned())
        .collect()
}

/// Every job the service holds, of any queue or batch.
async fn all_job_ids(app: &TestApp) -> BTreeSet<String> {
    let page: Value = app.get("/v1/jobs?limit=1000").await.json().await.unwrap();
    assert_eq!(page["next_cursor"], Value::Null);
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn queue_counts(app: &TestApp) -> Vec<(String, Value)> {
    let queues: Value = app.get("/v1/queues").await.json().await.unwrap();
    queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_owned(), q["counts"].clone()))
        .collect()
}

/// Follows a batch's results from the start with pages of `limit` until
/// `next_cursor` is null, calling `on_page` with each page; returns every
/// item read, in order.
async fn follow_results(
    app: &TestApp,
    id: &str,
    limit: u32,
    mut on_page: impl FnMut(&Value),
) -> Vec<Value> {
    let mut read = Vec::new();
    let mut cursor = String::from("0");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let path = format!("/v1/batches/{id}/results?limit={limit}&cursor={cursor}");
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.expect("a JSON page");
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() <= limit as usize, "{page}");
        on_page(&page);
        read.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return read,
        }
        assert!(Instant::now() < deadline, "results never ended: {read:?}");
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Indexes of `0..total` not read exactly once, with how often they were.
fn not_read_once(items: &[Value], total: usize) -> Vec<(usize, u32)> {
    let mut seen = vec![0u32; total];
    for item in items {
        let index = item["index"].as_u64().expect("an index") as usize;
        assert!(index < total, "{item}");
        seen[index] += 1;
    }
    seen.into_iter()
        .enumerate()
        .filter(|(_, n)| *n != 1)
        .collect()
}

fn failing_sleep(ms: u64) -> Value {
    json!({"kind": "sleep", "payload": {"ms": ms, "fail": true}, "max_attempts": 1})
}

#[tokio::test]
async fn a_batch_is_accepted_whole_and_its_jobs_are_listed_under_it() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let outsider = app.submit(json!({"kind": "noop", "queue": "held"})).await;
    let other = submit_batch(&app, &json!({"jobs": [{"kind": "noop", "queue": "held"}]})).await;

    let jobs: Vec<Value> = (0..5)
        .map(|n| json!({"kind": "echo", "queue": "held", "payload": {"n": n}}))
        .collect();
    let submitted = submit_batch(
        &app,
        &json!({"jobs": jobs, "metadata": {"order": "42"}, "success_threshold": 0.5}),
    )
    .await;
    let id = submitted["id"].as_str().unwrap();
    assert_eq!(submitted["status"], "running");
    assert_eq!(submitted["total"], 5);
    assert_eq!(
        submitted["counts"],
        json!({"scheduled": 0, "queued": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0})
    );
    assert_eq!(submitted["success_threshold"], 0.5);
    assert_eq!(submitted["metadata"], json!({"order": "42"}));
    assert_eq!(submitted["cancel_requested"], false);
    assert_eq!(submitted["callback_url"], Value::Null);
    assert_eq!(submitted["finished_at"], Value::Null);
    assert!(submitted["created_at"].is_string());
    let submitted_ids = job_ids(&submitted);
    assert_eq!(submitted_ids.len(), 5);
    assert_eq!(
        submitted_ids.iter().collect::<BTreeSet<_>>().len(),
        5,
        "distinct job ids"
    );

    // The job ids are in submission order: each one carries its own payload.
    for (n, job_id) in submitted_ids.iter().enumerate() {
        let job = app.job(job_id).await;
        assert_eq!(job["payload"], json!({"n": n}));
        assert_eq!(job["batch_id"], id);
        assert_eq!(job["status"], "queued");
    }

    let read = batch(&app, id).await;
    assert_eq!(read, submitted, "GET reflects the batch as submitted");

    let listed: Value = app
        .get(&format!("/v1/jobs?batch_id={id}"))
        .await
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    for job in items {
        assert_eq!(job["batch_id"], id);
    }
    let listed_ids: BTreeSet<&str> = items.iter().map(|j| j["id"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = submitted_ids.iter().map(String::as_str).collect();
    assert_eq!(listed_ids, expected, "exactly the batch's jobs");
    assert_eq!(items.len(), 5);
    assert_eq!(listed["next_cursor"], Value::Null);
    assert!(!listed_ids.contains(outsider["id"].as_str().unwrap()));
    assert!(!listed_ids.contains(other["job_ids"][0].as_str().unwrap()));
    assert_eq!(
        app.job(outsider["id"].as_str().unwrap()).await["batch_id"],
        Value::Null
    );

    let bad = app.get("/v1/jobs?batch_id=not-a-batch").await;
    assert_eq!(refused_parameters(bad).await, ["batch_id"]);

    app.configure_queue("held", json!({"paused": false})).await;
    let done = wait_until_finished(&app, id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        done["counts"],
        json!({"scheduled": 0, "queued": 0, "running": 0, "succeeded": 5, "failed": 0, "cancelled": 0})
    );
    assert_eq!(job_ids(&done), submitted_ids, "job_ids keep their order");
}

#[tokio::test]
async fn a_batch_is_stored_whole_or_not_at_all_when_a_queue_is_full() {
    let app = spawn_app().await;
    app.configure_queue("alpha", json!({"capacity": 100, "paused": true}))
        .await;
    app.configure_queue("tight", json!({"capacity": 5, "paused": true}))
        .await;
    for _ in 0..3 {
        app.submit(json!({"kind": "noop", "queue": "tight"})).await;
    }
    let jobs_before = all_job_ids(&app).await;
    let counts_before = queue_counts(&app).await;

    // Four jobs fit in `alpha`, but three more don't fit in `tight` (3 + 3 > 5).
    let mut jobs: Vec<Value> = (0..4)
        .map(|_| json!({"kind": "noop", "queue": "alpha"}))
        .collect();
    jobs.extend((0..3).map(|_| json!({"kind": "noop", "queue": "tight"})));
    jobs.push(json!({"kind": "noop", "queue": "alpha"}));
    let refused = app.post("/v1/batches", &json!({"jobs": jobs})).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "queue_full", "{problem}");

    assert_eq!(
        all_job_ids(&app).await,
        jobs_before,
        "no job of the batch exists"
    );
    assert_eq!(queue_counts(&app).await, counts_before);
    let alpha: Value = app.get("/v1/jobs?queue=alpha").await.json().await.unwrap();
    assert_eq!(alpha["items"], json!([]));

    // Exactly the room that is left is accepted: 3 + 2 = 5.
    let mut fitting: Vec<Value> = (0..4)
        .map(|_| json!({"kind": "noop", "queue": "alpha"}))
        .collect();
    fitting.extend((0..2).map(|_| json!({"kind": "noop", "queue": "tight"})));
    let accepted = submit_batch(&app, &json!({"jobs": fitting})).await;
    let tight: Value = app.get("/v1/queues/tight").await.json().await.unwrap();
    assert_eq!(tight["counts"]["queued"], 5);

    // Now one more is one too many, even a delayed one.
    let one_more = app
        .post(
            "/v1/batches",
            &json!({"jobs": [{"kind": "noop", "queue": "alpha"}, {"kind": "noop", "queue": "tight", "delay_ms": 60000}]}),
        )
        .await;
    assert_eq!(one_more.status(), 429);
    let listed: Value = app
        .get("/v1/jobs?queue=alpha&limit=1000")
        .await
        .json()
        .await
        .unwrap();
    let alpha_jobs: BTreeSet<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let accepted_ids = job_ids(&accepted);
    let accepted_alpha: BTreeSet<&str> = accepted_ids[..4].iter().map(String::as_str).collect();
    assert_eq!(alpha_jobs, accepted_alpha, "only the accepted batch's jobs");
}

#[tokio::test]
async fn concurrent_batches_never_overfill_a_queue_and_refused_ones_leave_nothing() {
    let app = spawn_app().await;
    app.configure_queue("alpha", json!({"capacity": 1000, "paused": true}))
        .await;
    app.configure_queue("tight", json!({"capacity": 20, "paused": true}))
        .await;
    let body = json!({"jobs": [
        {"kind": "noop", "queue": "alpha"},
        {"kind": "noop", "queue": "tight"},
        {"kind": "noop", "queue": "tight"},
        {"kind": "noop", "queue": "alpha"},
        {"kind": "noop", "queue": "tight"},
    ]});
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = app.client.clone();
        let url = app.url("/v1/batches");
        let body = body.clone();
        requests.spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        });
    }
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    while let Some(outcome) = requests.join_next().await {
        let (status, body) = outcome.unwrap();
        match status {
            202 => accepted.extend(job_ids(&body)),
            429 => {
                assert_eq!(body["code"], "queue_full");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Three jobs per batch on `tight` (capacity 20): six batches fit, four don't.
    assert_eq!(accepted.len(), 6 * 5, "six whole batches");
    assert_eq!(refused, 4);
    assert_eq!(
        all_job_ids(&app).await,
        accepted,
        "nothing of a refused batch"
    );
    let tight: Value = app.get("/v1/queues/tight").await.json().await.unwrap();
    assert_eq!(tight["counts"]["queued"], 18);
    let alpha: Value = app.get("/v1/queues/alpha").await.json().await.unwrap();
    assert_eq!(alpha["counts"]["queued"], 12);
}

#[tokio::test]
async fn a_batch_with_one_invalid_job_is_refused_with_its_pointer_and_nothing_is_stored() {
    let app = spawn_app().await;
    let counts_before = queue_counts(&app).await;
    let refused = app
        .post(
            "/v1/batches",
            &json!({"jobs": [
                noop(),
                sleep_ms(10),
                {"kind": "sleep", "payload": {"ms": "ten"}},
                noop(),
            ]}),
        )
        .await;
    assert_eq!(refused_pointers(refused).await, ["/jobs/2/payload/ms"]);
    assert_eq!(all_job_ids(&app).await, BTreeSet::new());
    assert_eq!(queue_counts(&app).await, counts_before);
}

#[tokio::test]
async fn a_batch_whose_key_is_held_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let holder = app
        .submit(json!({"kind": "noop", "queue": "held", "key": "invoice-7"}))
        .await;
    let refused = app
        .post(
            "/v1/batches",
            &json!({"jobs": [
                {"kind": "noop", "queue": "held", "key": "invoice-6"},
                {"kind": "noop", "queue": "held", "key": "invoice-7"},
            ]}),
        )
        .await;
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "key_conflict", "{problem}");
    let only_holder: BTreeSet<String> = [holder["id"].as_str().unwrap().to_owned()].into();
    assert_eq!(all_job_ids(&app).await, only_holder);
}

#[tokio::test]
async fn invalid_batches_are_refused_with_pointers_into_the_body() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/batches",
            &json!({
                "success_threshold": 1.5,
                "jobs": [
                    noop(),
                    {"kind": "nope"},
                    {"kind": "noop", "queue": "nowhere"},
                    {"kind": "noop", "key": "k1"},
                    {"kind": "noop", "key": "k1"},
                    {"kind": "noop", "depends_on": [6]},
                    {"kind": "noop", "depends_on": [0, 6]},
                    {"kind": "noop", "key": "k2", "on_conflict": "existing"},
                ],
            }),
        )
        .await;
    assert_eq!(
        refused_pointers(response).await,
        [
            "/jobs/1/kind",
            "/jobs/2/queue",
            "/jobs/4/key",
            "/jobs/5/depends_on/0",
            "/jobs/6/depends_on/1",
            "/jobs/7/on_conflict",
            "/success_threshold",
        ]
    );

    // A body of the wrong shape is refused before anything else is checked.
    let negative = app
        .post(
            "/v1/batches",
            &json!({"jobs": [noop(), {"kind": "noop", "depends_on": [-1]}]}),
        )
        .await;
    assert_eq!(refused_pointers(negative).await, ["/jobs/1/depends_on/0"]);

    let empty = app.post("/v1/batches", &json!({"jobs": []})).await;
    assert_eq!(refused_pointers(empty).await, ["/jobs"]);

    for threshold in [json!(-0.1), json!(1.01)] {
        let response = app
            .post(
                "/v1/batches",
                &json!({"jobs": [noop()], "success_threshold": threshold}),
            )
            .await;
        assert_eq!(refused_pointers(response).await, ["/success_threshold"]);
    }

    let callback = app
        .post(
            "/v1/batches",
            &json!({"jobs": [noop()], "callback_url": "ftp://example.com/done"}),
        )
        .await;
    assert_eq!(refused_pointers(callback).await, ["/callback_url"]);

    // A job id that names nothing.
    let unknown = app
        .post(
            "/v1/batches",
            &json!({"jobs": [noop(), {"kind": "noop", "depends_on": ["01a21126-b81d-72f8-b1e2-31ceef3e87b7"]}]}),
        )
        .await;
    assert_eq!(refused_pointers(unknown).await, ["/jobs/1/depends_on"]);

    assert_eq!(all_job_ids(&app).await, BTreeSet::new(), "nothing stored");
}

#[tokio::test]
async fn a_batch_larger_than_the_maximum_is_refused_as_too_large() {
    let app = spawn_app_with(|config| config.max_batch_size = 10).await;
    let eleven: Vec<Value> = (0..11).map(|_| noop()).collect();
    let refused = app.post("/v1/batches", &json!({"jobs": eleven})).await;
    assert_eq!(refused.status(), 413);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "payload_too_large");
    assert_eq!(all_job_ids(&app).await, BTreeSet::new());

    let ten: Vec<Value> = (0..10).map(|_| noop()).collect();
    let accepted = submit_batch(&app, &json!({"jobs": ten})).await;
    assert_eq!(accepted["total"], 10);
}

#[tokio::test]
async fn results_are_read_exactly_once_while_the_batch_runs() {
    let app = spawn_app().await;
    app.configure_queue("results", json!({"concurrency": 4}))
        .await;
    let ms: Vec<u64> = (0..60u64).map(|i| 5 + (i * 53) % 296).collect();
    let jobs: Vec<Value> = ms
        .iter()
        .map(|ms| json!({"kind": "sleep", "queue": "results", "payload": {"ms": ms}}))
        .collect();
    let submitted = submit_batch(&app, &json!({"jobs": jobs})).await;
    let id = submitted["id"].as_str().unwrap();
    let submitted_ids = job_ids(&submitted);

    let mut read_while_running = 0;
    let mut finished_seen = false;
    let items = follow_results(&app, id, 7, |page| {
        let status = page["batch_status"].as_str().unwrap();
        if status == "running" {
            assert!(!finished_seen, "a finished batch ran again: {page}");
            if !page["items"].as_array().unwrap().is_empty() {
                read_while_running += 1;
            }
        } else {
            assert_eq!(status, "succeeded", "{page}");
            finished_seen = true;
        }
        if page["next_cursor"].is_null() {
            assert!(finished_seen, "the end came while running: {page}");
        }
    })
    .await;
    for item in &items {
        let index = item["index"].as_u64().unwrap() as usize;
        assert_eq!(item["job_id"], submitted_ids[index].as_str());
        assert_eq!(item["status"], "succeeded");
        assert_eq!(item["result"], json!({"slept_ms": ms[index], "attempt": 1}));
        assert_eq!(item["error"], Value::Null);
        assert!(item["finished_at"].is_string());
    }
    assert_eq!(not_read_once(&items, 60), [], "(index, times read)");
    assert!(
        read_while_running > 0,
        "no result was read while the batch ran"
    );

    // Read again from the start: everything, in one page, then the end.
    let all: Value = app
        .get(&format!("/v1/batches/{id}/results?limit=1000"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 60);
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(all["batch_status"], "succeeded");
    let default_page: Value = app
        .get(&format!("/v1/batches/{id}/results"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(default_page["items"], all["items"]);

    for bad in ["limit=0", "limit=1001", "cursor=abc", "colour=blue"] {
        let response = app.get(&format!("/v1/batches/{id}/results?{bad}")).await;
        let parameter = bad.split('=').next().unwrap();
        assert_eq!(refused_parameters(response).await, [parameter], "{bad}");
    }
    let unknown = app
        .get("/v1/batches/01a21126-b81d-72f8-b1e2-31ceef3e87b7/results")
        .await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_batch_succeeds_or_fails_by_its_success_threshold() {
    let app = spawn_app().await;
    // (failing jobs of 10, threshold, expected status)
    let cases: [(&[usize], Option<f64>, &str); 5] = [
        (&[1, 4, 9], Some(0.7), "succeeded"),
        (&[0, 3, 5, 8], Some(0.7), "failed"),
        (&[6], None, "failed"),
        (&[], None, "succeeded"),
        (&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], Some(0.0), "succeeded"),
    ];
    let mut submitted = Vec::new();
    for (failing, threshold, _) in &cases {
        let jobs: Vec<Value> = (0..10)
            .map(|n| {
                if failing.contains(&n) {
                    failing_sleep(20 + n as u64 * 5)
                } else {
                    sleep_ms(20 + n as u64 * 5)
                }
            })
            .collect();
        let mut body = json!({"jobs": jobs});
        if let Some(threshold) = threshold {
            body["success_threshold"] = json!(threshold);
        }
        let batch = submit_batch(&app, &body).await;
        assert_eq!(batch["status"], "running");
        assert_eq!(batch["finished_at"], Value::Null);
        assert_eq!(batch["success_threshold"], threshold.unwrap_or(1.0));
        submitted.push(batch);
    }
    for ((failing, threshold, expected), batch) in cases.iter().zip(&submitted) {
        let id = batch["id"].as_str().unwrap();
        let done = wait_until_finished(&app, id).await;
        assert_eq!(
            done["status"],
            *expected,
            "{} failing of 10 with threshold {threshold:?}: {done}",
            failing.len()
        );
        assert_eq!(
            done["counts"],
            json!({
                "scheduled": 0, "queued": 0, "running": 0,
                "succeeded": 10 - failing.len(), "failed": failing.len(), "cancelled": 0
            })
        );
        let finished_at = millis(&done["finished_at"]);
        assert!(finished_at >= millis(&done["created_at"]));
        let results: Value = app
            .get(&format!("/v1/batches/{id}/results"))
            .await
            .json()
            .await
            .unwrap();
        let items = results["items"].as_array().unwrap();
        assert_eq!(items.len(), 10);
        for item in items {
            let index = item["index"].as_u64().unwrap() as usize;
            let expected = if failing.contains(&index) {
                "failed"
            } else {
                "succeeded"
            };
            assert_eq!(item["status"], expected, "{item}");
            if expected == "failed" {
                assert_eq!(item["error"]["code"], "requested_failure");
                assert_eq!(item["result"], Value::Null);
            }
            assert!(
                millis(&item["finished_at"]) <= finished_at,
                "the batch finished before its job {item}"
            );
        }
        let latest = items.iter().map(|item| millis(&item["finished_at"])).max();
        assert_eq!(
            Some(finished_at),
            latest,
            "the batch finished when its last job did"
        );
        // Finished means final.
        assert_eq!(batch_after_a_while(&app, id).await, done);
    }
}

#[tokio::test]
async fn cancelling_a_batch_stops_its_running_jobs_and_cancels_the_rest() {
    let app = spawn_app().await;
    app.configure_queue("cancelling", json!({"concurrency": 2}))
        .await;
    let jobs: Vec<Value> = (0..20)
        .map(|_| json!({"kind": "sleep", "queue": "cancelling", "payload": {"ms": 5000}}))
        .collect();
    let submitted = submit_batch(&app, &json!({"jobs": jobs})).await;
    let id = submitted["id"].as_str().unwrap();
    wait_for_batch(&app, id, SOON, |batch| batch["counts"]["running"] == 2).await;

    let asked = Instant::now();
    let response = app
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let cancelling: Value = response.json().await.unwrap();
    assert_eq!(cancelling["id"], id);
    assert_eq!(cancelling["cancel_requested"], true);
    assert_eq!(cancelling["counts"]["queued"], 0);
    assert_eq!(cancelling["counts"]["scheduled"], 0);
    assert_eq!(cancelling["counts"]["succeeded"], 0);
    let stopping = cancelling["counts"]["running"].as_u64().unwrap();
    assert_eq!(
        cancelling["counts"]["cancelled"].as_u64().unwrap() + stopping,
        20,
        "{cancelling}"
    );

    let done = wait_for_batch(&app, id, Duration::from_secs(3), |batch| {
        batch["finished_at"].is_string()
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["cancel_requested"], true);
    assert_eq!(
        done["counts"],
        json!({"scheduled": 0, "queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 20})
    );

    let mut started = 0;
    for job_id in job_ids(&done) {
        let job = app.job(&job_id).await;
        assert_eq!(job["status"], "cancelled", "{job}");
        assert_eq!(job["error"]["code"], "cancelled", "{job}");
        if job["started_at"].is_string() {
            started += 1;
        }
    }
    assert_eq!(started, 2, "nothing started after the cancel");

    let results: Value = app
        .get(&format!("/v1/batches/{id}/results?limit=1000"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(results["items"].as_array().unwrap().len(), 20);
    assert_eq!(results["batch_status"], "cancelled");
    assert_eq!(results["next_cursor"], Value::Null);

    let again = app
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), 409);
    let problem: Value = again.json().await.unwrap();
    assert_eq!(problem["code"], "already_finished");
    assert_eq!(
        batch(&app, id).await,
        done,
        "a second cancel changes nothing"
    );
}

#[tokio::test]
async fn unknown_and_malformed_batch_ids_are_not_found() {
    let app = spawn_app().await;
    for id in ["01a21126-b81d-72f8-b1e2-31ceef3e87b7", "not-an-id"] {
        for response in [
            app.get(&format!("/v1/batches/{id}")).await,
            app.get(&format!("/v1/batches/{id}?wait=1")).await,
            app.get(&format!("/v1/batches/{id}/results")).await,
            app.post(&format!("/v1/batches/{id}/cancel"), &json!({}))
                .await,
        ] {
            assert_eq!(response.status(), 404, "{id}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "not_found");
        }
    }
    // A job's id is not a batch's.
    let job = app.submit(noop()).await;
    let as_batch = app
        .get(&format!("/v1/batches/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(as_batch.status(), 404);
}

#[tokio::test]
async fn a_long_poll_on_a_job_returns_as_soon_as_it_ends() {
    let app = spawn_app().await;
    let job = app.submit(sleep_ms(500)).await;
    let id = job["id"].as_str().unwrap();
    let asked = Instant::now();
    let response = app.get(&format!("/v1/jobs/{id}?wait=10")).await;
    let arrived = Timestamp::now().as_millis();
    let elapsed = asked.elapsed();
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    let lag = arrived - millis(&done["finished_at"]);
    assert!(lag < 300, "answered {lag} ms after the job finished");
    assert!(
        elapsed > Duration::from_millis(400),
        "answered after {elapsed:?}: it did not wait"
    );
    let start_delay = (millis(&done["started_at"]) - millis(&done["created_at"])).max(0) as u64;
    assert!(
        elapsed < Duration::from_millis(800 + start_delay),
        "answered after {elapsed:?} (start delay {start_delay} ms)"
    );
}

#[tokio::test]
async fn a_long_poll_on_a_batch_returns_as_soon_as_it_finishes() {
    let app = spawn_app().await;
    let submitted = submit_batch(
        &app,
        &json!({"jobs": [sleep_ms(200), sleep_ms(500), sleep_ms(100)]}),
    )
    .await;
    let id = submitted["id"].as_str().unwrap();
    let asked = Instant::now();
    let response = app.get(&format!("/v1/batches/{id}?wait=10")).await;
    let arrived = Timestamp::now().as_millis();
    let elapsed = asked.elapsed();
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"]["succeeded"], 3);
    let lag = arrived - millis(&done["finished_at"]);
    assert!(lag < 300, "answered {lag} ms after the batch finished");
    assert!(
        elapsed > Duration::from_millis(400),
        "answered after {elapsed:?}: it did not wait"
    );
    let slowest = app.job(submitted["job_ids"][1].as_str().unwrap()).await;
    let start_delay =
        (millis(&slowest["started_at"]) - millis(&slowest["created_at"])).max(0) as u64;
    assert!(
        elapsed < Duration::from_millis(800 + start_delay),
        "answered after {elapsed:?} (start delay {start_delay} ms)"
    );
}

#[tokio::test]
async fn a_long_poll_on_results_returns_as_soon_as_a_new_result_exists() {
    let app = spawn_app().await;
    // One quick job and one that outlasts the test (cancelled at its end).
    let submitted = submit_batch(&app, &json!({"jobs": [sleep_ms(200), sleep_ms(60_000)]})).await;
    let id = submitted["id"].as_str().unwrap();
    let response = app
        .get(&format!("/v1/batches/{id}/results?cursor=0&wait=30"))
        .await;
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "came with the first result: {page}");
    assert_eq!(items[0]["job_id"], submitted["job_ids"][0]);
    assert_eq!(page["batch_status"], "running", "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();

    // Nothing new: it waits its whole wait, then answers an empty page.
    let response = app
        .get(&format!("/v1/batches/{id}/results?cursor={cursor}&wait=1"))
        .await;
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    assert_eq!(page["next_cursor"], cursor.as_str());

    // The batch's end answers a waiting reader too, with the last result.
    let reader = {
        let app_url = app.url(&format!("/v1/batches/{id}/results?cursor={cursor}&wait=30"));
        let client = app.client.clone();
        tokio::spawn(async move {
            client
                .get(app_url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
        })
    };
    app.until_long_polls_wait(1).await;
    let cancelled = app
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert!(cancelled.status().is_success(), "{}", cancelled.status());
    let page = reader.await.unwrap().unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["job_id"], submitted["job_ids"][1]);

    let bad = app.get(&format!("/v1/batches/{id}/results?wait=61")).await;
    assert_eq!(refused_parameters(bad).await, ["wait"]);
}

#[tokio::test]
async fn a_long_poll_on_something_unfinished_ends_after_its_wait() {
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "noop", "delay_ms": 60000})).await;
    let job_id = job["id"].as_str().unwrap();
    let submitted = submit_batch(
        &app,
        &json!({"jobs": [noop(), {"kind": "noop", "delay_ms": 60000}]}),
    )
    .await;
    let batch_id = submitted["id"].as_str().unwrap();

    let asked = Instant::now();
    let response = app.get(&format!("/v1/jobs/{job_id}?wait=0")).await;
    assert!(asked.elapsed() < Duration::from_millis(300), "wait=0 held");
    assert_eq!(response.status(), 200);
    let asked = Instant::now();
    let response = app.get(&format!("/v1/batches/{batch_id}?wait=0")).await;
    assert!(asked.elapsed() < Duration::from_millis(300), "wait=0 held");
    assert_eq!(response.status(), 200);

    let asked = Instant::now();
    let response = app.get(&format!("/v1/jobs/{job_id}?wait=1")).await;
    let elapsed = asked.elapsed();
    assert_eq!(response.status(), 200);
    let still: Value = response.json().await.unwrap();
    assert_eq!(still["status"], "scheduled");
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(2500),
        "wait=1 answered after {elapsed:?}"
    );

    let asked = Instant::now();
    let response = app.get(&format!("/v1/batches/{batch_id}?wait=1")).await;
    let elapsed = asked.elapsed();
    assert_eq!(response.status(), 200);
    let still: Value = response.json().await.unwrap();
    assert_eq!(still["status"], "running");
    assert_eq!(still["finished_at"], Value::Null);
    assert_eq!(still["counts"]["scheduled"], 1);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(2500),
        "wait=1 answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn bad_wait_parameters_are_refused() {
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "noop", "delay_ms": 60000})).await;
    let batch = submit_batch(&app, &json!({"jobs": [noop()]})).await;
    for resource in [
        format!("/v1/jobs/{}", job["id"].as_str().unwrap()),
        format!("/v1/batches/{}", batch["id"].as_str().unwrap()),
    ] {
        for query in ["wait=61", "wait=abc", "wait=-1", "wait=1.5", "wait="] {
            let response = app.get(&format!("{resource}?{query}")).await;
            assert_eq!(
                refused_parameters(response).await,
                ["wait"],
                "{resource}?{query}"
            );
        }
        let unknown = app.get(&format!("{resource}?timeout=3")).await;
        assert_eq!(refused_parameters(unknown).await, ["timeout"]);
        let both = app.get(&format!("{resource}?wait=99&timeout=3")).await;
        assert_eq!(refused_parameters(both).await, ["wait", "timeout"]);
        let fine = app.get(&format!("{resource}?wait=0")).await;
        assert_eq!(fine.status(), 200);
    }
}

#[tokio::test]
async fn many_long_polls_on_one_batch_all_return_when_it_finishes() {
    let app = spawn_app().await;
    let submitted = submit_batch(&app, &json!({"jobs": [sleep_ms(1500), noop()]})).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/batches/{id}?wait=30"));
        polls.spawn(async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body, Timestamp::now().as_millis())
        });
    }
    let mut answers = 0;
    let mut latest_arrival = 0;
    let mut finished_at = None;
    while let Some(answer) = polls.join_next().await {
        let (status, body, arrived) = answer.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "succeeded", "{body}");
        let finished = millis(&body["finished_at"]);
        assert_eq!(*finished_at.get_or_insert(finished), finished);
        latest_arrival = latest_arrival.max(arrived);
        answers += 1;
    }
    assert_eq!(answers, 200);
    let lag = latest_arrival - finished_at.unwrap();
    assert!(lag < 2000, "the last answer came {lag} ms after the end");
}

#[tokio::test]
async fn an_idempotent_batch_repeat_returns_the_same_batch() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/v1/batches"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = json!({"jobs": [
        {"kind": "echo", "queue": "held", "payload": {"a": 1}},
        {"kind": "noop", "queue": "held"},
    ], "metadata": {"run": "7"}});
    let first = send("batch-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let original: Value = first.json().await.unwrap();
    let id = original["id"].as_str().unwrap();

    // Same body, other formatting and key order: a replay.
    let repeat = app
        .client
        .post(app.url("/v1/batches"))
        .header("idempotency-key", "batch-1")
        .header("content-type", "application/json")
        .body(
            r#"{"metadata": {"run": "7"},
                "jobs": [{"payload": {"a": 1}, "queue": "held", "kind": "echo"}, {"queue": "held", "kind": "noop"}]}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(repeat.status(), 202);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    assert_eq!(
        repeat.headers()["location"],
        format!("/v1/batches/{id}").as_str()
    );
    let replayed: Value = repeat.json().await.unwrap();
    assert_eq!(replayed["id"], id);
    assert_eq!(replayed["job_ids"], original["job_ids"]);

    let other_body = send(
        "batch-1",
        json!({"jobs": [{"kind": "noop", "queue": "held"}]}),
    )
    .await
    .unwrap();
    assert_eq!(other_body.status(), 422);
    let problem: Value = other_body.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_mismatch");

    let stored: BTreeSet<String> = job_ids(&original).into_iter().collect();
    assert_eq!(all_job_ids(&app).await, stored, "one batch's jobs, once");

    let other_key = submit_batch_with_key(&app, "batch-2", &body).await;
    assert_ne!(other_key["id"], original["id"]);
}

#[tokio::test]
async fn the_jobs_of_a_batch_are_paged_by_cursor_without_repeats() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let jobs: Vec<Value> = (0..9)
        .map(|_| json!({"kind": "noop", "queue": "held"}))
        .collect();
    let submitted = submit_batch(&app, &json!({"jobs": jobs})).await;
    let id = submitted["id"].as_str().unwrap();
    submit_batch(&app, &json!({"jobs": [{"kind": "noop", "queue": "held"}]})).await;

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/jobs?batch_id={id}&limit=2&cursor={cursor}"),
            None => format!("/v1/jobs?batch_id={id}&limit=2"),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        for job in page["items"].as_array().unwrap() {
            assert_eq!(job["batch_id"], id);
            listed.push(job["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected = job_ids(&submitted);
    expected.reverse();
    assert_eq!(listed, expected, "newest first, each once");
}

#[tokio::test]
async fn results_of_a_batch_of_quick_jobs_are_read_exactly_once() {
    let app = spawn_app().await;
    app.configure_queue("quick", json!({"concurrency": 8}))
        .await;
    let jobs: Vec<Value> = (0..500)
        .map(|n| {
            let queue = if n % 2 == 0 { "quick" } else { "default" };
            json!({"kind": "echo", "queue": queue, "payload": n})
        })
        .collect();
    let submitted = submit_batch(&app, &json!({"jobs": jobs})).await;
    let id = submitted["id"].as_str().unwrap();
    let items = follow_results(&app, id, 13, |_| {}).await;
    for item in &items {
        assert_eq!(item["result"], item["index"], "{item}");
    }
    assert_eq!(not_read_once(&items, 500), [], "(index, times read)");
}

#[tokio::test]
async fn cancelling_a_batch_of_waiting_jobs_finishes_it_at_once_and_wakes_its_long_polls() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let submitted = submit_batch(
        &app,
        &json!({"jobs": [
            {"kind": "noop", "queue": "held"},
            {"kind": "noop", "queue": "held"},
            {"kind": "noop", "delay_ms": 60000},
        ]}),
    )
    .await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let job_id = submitted["job_ids"][0].as_str().unwrap().to_owned();
    let batch_poll = {
        let request = app
            .client
            .get(app.url(&format!("/v1/batches/{id}?wait=30")));
        tokio::spawn(async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            (body, Timestamp::now().as_millis())
        })
    };
    let job_poll = {
        let request = app
            .client
            .get(app.url(&format!("/v1/jobs/{job_id}?wait=30")));
        tokio::spawn(async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            (body, Timestamp::now().as_millis())
        })
    };
    app.until_long_polls_wait(2).await;
    assert!(!batch_poll.is_finished() && !job_poll.is_finished());

    let response = app
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["finished_at"].is_string());
    assert_eq!(cancelled["counts"]["cancelled"], 3);
    let finished_at = millis(&cancelled["finished_at"]);

    let (batch, arrived) = tokio::time::timeout(Duration::from_secs(5), batch_poll)
        .await
        .expect("the batch long-poll was not woken")
        .unwrap();
    assert_eq!(batch["status"], "cancelled");
    assert!(
        arrived - finished_at < 300,
        "{} ms late",
        arrived - finished_at
    );
    let (job, arrived) = tokio::time::timeout(Duration::from_secs(5), job_poll)
        .await
        .expect("the job long-poll was not woken")
        .unwrap();
    assert_eq!(job["status"], "cancelled");
    assert!(
        arrived - finished_at < 300,
        "{} ms late",
        arrived - finished_at
    );
}

#[tokio::test]
async fn a_batch_finished_by_other_means_wakes_its_long_polls() {
    let app = spawn_app().await;
    // The last job ends by a dependency failing: its dependent is cancelled.
    let cascade = submit_batch(
        &app,
        &json!({"jobs": [
            failing_sleep(400),
            {"kind": "noop", "depends_on": [0]},
        ]}),
    )
    .await;
    let id = cascade["id"].as_str().unwrap();
    let response = app.get(&format!("/v1/batches/{id}?wait=20")).await;
    let arrived = Timestamp::now().as_millis();
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["counts"]["failed"], 1);
    assert_eq!(done["counts"]["cancelled"], 1);
    let lag = arrived - millis(&done["finished_at"]);
    assert!(lag < 300, "answered {lag} ms after the batch finished");

    // The last job is cancelled on its own: the batch was not cancelled, so
    // it fails its threshold.
    let single = submit_batch(
        &app,
        &json!({"jobs": [noop(), {"kind": "noop", "delay_ms": 60000}]}),
    )
    .await;
    let id = single["id"].as_str().unwrap().to_owned();
    let waiting = single["job_ids"][1].as_str().unwrap().to_owned();
    app.wait_for_status(single["job_ids"][0].as_str().unwrap(), "succeeded", SOON)
        .await;
    let poll = {
        let request = app
            .client
            .get(app.url(&format!("/v1/batches/{id}?wait=30")));
        tokio::spawn(async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            (body, Timestamp::now().as_millis())
        })
    };
    app.until_long_polls_wait(1).await;
    assert!(!poll.is_finished(), "the long-poll did not wait");
    let cancel = app
        .post(&format!("/v1/jobs/{waiting}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status(), 200);
    let (done, arrived) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the batch long-poll was not woken")
        .unwrap();
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["cancel_requested"], false);
    assert_eq!(done["counts"]["succeeded"], 1);
    assert_eq!(done["counts"]["cancelled"], 1);
    let lag = arrived - millis(&done["finished_at"]);
    assert!(lag < 300, "answered {lag} ms after the batch finished");
}

#[tokio::test]
async fn a_running_batch_keeps_its_finished_jobs_past_the_retention_period() {
    let app = spawn_app_with(|config| config.retention = Duration::from_millis(600)).await;
    let submitted = submit_batch(
        &app,
        &json!({"jobs": [noop(), {"kind": "noop", "delay_ms": 60000}]}),
    )
    .await;
    let id = submitted["id"].as_str().unwrap();
    let first = submitted["job_ids"][0].as_str().unwrap();
    app.wait_for_status(first, "succeeded", SOON).await;

    // A job finished after the batch's first one; once it is pruned, the
    // batch's would have been too.
    let later = app.submit(noop()).await;
    let later = later["id"].as_str().unwrap();
    app.wait_for_status(later, "succeeded", SOON).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get(&format!("/v1/jobs/{later}")).await.status() != 404 {
        assert!(Instant::now() < deadline, "nothing was ever pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let running = batch(&app, id).await;
    assert_eq!(running["status"], "running");
    assert_eq!(
        job_ids(&running),
        job_ids(&submitted),
        "job_ids of a running batch lost a job: {running}"
    );
    let results: Value = app
        .get(&format!("/v1/batches/{id}/results"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        results["items"].as_array().unwrap().len(),
        1,
        "the finished job's result is gone before the batch finished: {results}"
    );
    assert_eq!(app.get(&format!("/v1/jobs/{first}")).await.status(), 200);
}
