//! Malformed and hostile requests get a 4xx problem, never a 5xx.

use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn json_case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path: "/v1/jobs".into(),
        content_type: Some("application/json"),
        body: body.into(),
        status,
        code,
    }
}

async fn send(app: &TestApp, case: &Case) -> (u16, Option<String>, Value) {
    let mut request = app.client.request(case.method.clone(), app.url(&case.path));
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.body(case.body.clone()).send().await.expect("sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, content_type, body)
}

#[tokio::test]
async fn malformed_and_hostile_requests_get_a_4xx_problem() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_payload = format!(
        r#"{{"kind":"echo","payload":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let huge = format!(
        r#"{{"kind":"echo","payload":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let cases = vec![
        json_case("empty body", "", 400, "malformed_json"),
        json_case("not JSON", "kind=noop", 400, "malformed_json"),
        json_case("truncated", r#"{"kind": "noop""#, 400, "malformed_json"),
        json_case(
            "trailing garbage",
            r#"{"kind": "noop"} {}"#,
            400,
            "malformed_json",
        ),
        json_case(
            "invalid UTF-8",
            b"{\"kind\": \"no\xff\xfeop\"}".to_vec(),
            400,
            "malformed_json",
        ),
        json_case("deep nesting", deep, 422, "validation_failed"),
        json_case("deep payload", deep_payload, 400, "malformed_json"),
        json_case("over 1 MiB", huge, 413, "payload_too_large"),
        json_case("an array", "[]", 422, "validation_failed"),
        json_case("null", "null", 422, "validation_failed"),
        json_case("a string", r#""noop""#, 422, "validation_failed"),
        json_case("missing kind", "{}", 422, "validation_failed"),
        json_case(
            "kind of wrong type",
            r#"{"kind": 7}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "unknown kind",
            r#"{"kind": "rm -rf /"}"#,
            422,
            "unknown_kind",
        ),
        json_case(
            "unknown field",
            r#"{"kind": "noop", "prority": 1}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "huge integer",
            r#"{"kind": "noop", "priority": 99999999999999999999999}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "huge float",
            r#"{"kind": "noop", "priority": 1e400}"#,
            400,
            "malformed_json",
        ),
        json_case(
            "fractional priority",
            r#"{"kind": "noop", "priority": 1.5}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "negative delay",
            r#"{"kind": "noop", "delay_ms": -1}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "far future",
            r#"{"kind": "noop", "delay_ms": 9223372036854775807}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "both run_at and delay",
            r#"{"kind": "noop", "delay_ms": 1, "run_at": "2030-01-01T00:00:00Z"}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "bad timestamp",
            r#"{"kind": "noop", "run_at": "2030-13-45T99:00:00Z"}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "zero attempts",
            r#"{"kind": "noop", "max_attempts": 0}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "zero timeout",
            r#"{"kind": "noop", "timeout_ms": 0}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "backoff cap below base",
            r#"{"kind": "noop", "backoff": {"base_ms": 10, "max_ms": 1}}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "unknown backoff field",
            r#"{"kind": "noop", "backoff": {"base_ms": 10, "max_ms": 100, "factor": 3}}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "empty key",
            r#"{"kind": "noop", "key": ""}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "long key",
            format!(r#"{{"kind": "noop", "key": "{}"}}"#, "k".repeat(256)),
            422,
            "validation_failed",
        ),
        json_case(
            "on_conflict without key",
            r#"{"kind": "noop", "on_conflict": "replace"}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "bad on_conflict",
            r#"{"kind": "noop", "key": "a", "on_conflict": "merge"}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "metadata not strings",
            r#"{"kind": "noop", "metadata": {"a": 1}}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "metadata key with quote",
            r#"{"kind": "noop", "metadata": {"a\"b": "x"}}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "queue of wrong type",
            r#"{"kind": "noop", "queue": ["default"]}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "payload against schema",
            r#"{"kind": "sleep", "payload": {"ms": -5, "extra": true}}"#,
            422,
            "validation_failed",
        ),
        json_case(
            "NUL in kind",
            "{\"kind\": \"no\\u0000op\"}",
            422,
            "unknown_kind",
        ),
        Case {
            content_type: None,
            ..json_case(
                "no content type",
                r#"{"kind": "noop"}"#,
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: Some("text/plain"),
            ..json_case(
                "text/plain",
                r#"{"kind": "noop"}"#,
                415,
                "unsupported_media_type",
            )
        },
        Case {
            method: Method::DELETE,
            ..json_case("wrong method", "", 405, "method_not_allowed")
        },
        Case {
            method: Method::PATCH,
            path: "/v1/jobs/x".into(),
            ..json_case("wrong method on a job", "", 405, "method_not_allowed")
        },
        Case {
            method: Method::GET,
            path: "/v1/nothing".into(),
            ..json_case("unknown path", "", 404, "not_found")
        },
        Case {
            method: Method::GET,
            path: "/v1/jobs/..%2F..%2Fetc%2Fpasswd".into(),
            ..json_case("traversal id", "", 404, "not_found")
        },
        Case {
            method: Method::GET,
            path: format!("/v1/jobs/{}", "9".repeat(5000)),
            ..json_case("long id", "", 404, "not_found")
        },
        Case {
            method: Method::POST,
            path: "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel".into(),
            ..json_case("nil id", "", 404, "not_found")
        },
        Case {
            method: Method::GET,
            path: "/v1/jobs?limit=99999999999999999999".into(),
            ..json_case("huge limit", "", 422, "validation_failed")
        },
        Case {
            method: Method::GET,
            path: "/v1/jobs?cursor=%FF".into(),
            ..json_case("bad cursor", "", 422, "validation_failed")
        },
        Case {
            method: Method::GET,
            path: "/v1/jobs?metadata.a%22b=1".into(),
            ..json_case("bad metadata filter", "", 422, "validation_failed")
        },
        Case {
            method: Method::PUT,
            path: "/v1/queues/q".into(),
            body: br#"{"concurrency": 1e10}"#.to_vec(),
            ..json_case("queue huge float", "", 422, "validation_failed")
        },
        Case {
            method: Method::PUT,
            path: "/v1/queues/q".into(),
            body: br#"{"capacity": 99999999999999999999999}"#.to_vec(),
            ..json_case("queue huge capacity", "", 422, "validation_failed")
        },
        Case {
            method: Method::PUT,
            path: format!("/v1/queues/{}", "q".repeat(65)),
            body: b"{}".to_vec(),
            ..json_case("queue long name", "", 422, "validation_failed")
        },
    ];
    for case in &cases {
        let (status, content_type, body) = send(&app, case).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{}",
            case.name
        );
        assert_eq!(body["code"], case.code, "{}: {body}", case.name);
        assert_eq!(body["status"], case.status, "{}", case.name);
    }
    // The service is still fine afterwards.
    let job = app.submit(json!({"kind": "noop"})).await;
    assert_eq!(job["status"], "queued");
}

#[tokio::test]
async fn validation_errors_point_at_each_offending_field() {
    let app = spawn_app().await;
    let response = app
        .post("/v1/jobs", &json!({"kind": "sleep", "priority": 500, "max_attempts": 101, "payload": {"ms": "soon"}}))
        .await;
    let problem: Value = response.json().await.unwrap();
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/priority", "/max_attempts"]);

    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "sleep", "payload": {"ms": "soon"}}),
        )
        .await;
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/payload/ms");

    let response = app
        .post("/v1/jobs", &json!({"kind": "noop", "prority": 1}))
        .await;
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/prority");

    let response = app.post("/v1/jobs", &json!({"payload": {}})).await;
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/kind");
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        Just(Value::from("noop")),
        Just(Value::from("sleep")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("kind".to_owned()),
                    Just("payload".to_owned()),
                    Just("priority".to_owned()),
                    Just("queue".to_owned()),
                    Just("delay_ms".to_owned()),
                    Just("run_at".to_owned()),
                    Just("key".to_owned()),
                    Just("on_conflict".to_owned()),
                    Just("metadata".to_owned()),
                    Just("backoff".to_owned()),
                    Just("ms".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

#[test]
fn arbitrary_json_bodies_never_get_a_server_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in arbitrary_json(), path in prop_oneof![Just("/v1/jobs"), Just("/v1/queues/fuzz")])| {
        let status = runtime.block_on(async {
            let request = if path == "/v1/jobs" { app.client.post(app.url(path)) } else { app.client.put(app.url(path)) };
            request.json(&body).send().await.expect("sent").status().as_u16()
        });
        prop_assert!(status < 500, "{body} → {status}");
    });
    drop(app);
}

/// A job of a generated batch: plausible fields with hostile values, and
/// dependencies that may point anywhere (forward, itself, out of range,
/// at garbage).
fn batch_job() -> impl Strategy<Value = Value> {
    let dependency = prop_oneof![
        6 => (0i64..3).prop_map(Value::from),
        1 => prop_oneof![Just(-1i64), Just(12)].prop_map(Value::from),
        1 => Just(Value::from("01a21126-b81d-72f8-b1e2-31ceef3e87b7")),
        1 => "[a-z0-9-]{0,8}".prop_map(Value::from),
        1 => Just(Value::Null),
    ];
    (
        prop_oneof![6 => Just("noop"), 2 => Just("echo"), 1 => Just("sleep"), 1 => Just("nope")],
        prop_oneof![4 => Just(None), 4 => Just(Some("default")), 1 => Just(Some("elsewhere"))],
        prop::option::weighted(0.35, prop::collection::vec(dependency, 0..3)),
        prop::option::of(prop_oneof![Just("k1"), Just("k2")]),
        prop::option::of(prop_oneof![
            Just("reject"),
            Just("existing"),
            Just("replace")
        ]),
        prop::option::of(arbitrary_json()),
    )
        .prop_map(|(kind, queue, depends_on, key, on_conflict, payload)| {
            let mut job = json!({"kind": kind});
            if let Some(queue) = queue {
                job["queue"] = json!(queue);
            }
            if let Some(depends_on) = depends_on {
                job["depends_on"] = Value::from(depends_on);
            }
            if let Some(key) = &key {
                job["key"] = json!(key);
            }
            // Mostly where it applies (with a key); sometimes where it is an error.
            if let Some(on_conflict) = on_conflict.filter(|_| key.is_some() || kind == "echo") {
                job["on_conflict"] = json!(on_conflict);
            }
            if let Some(payload) = payload {
                job["payload"] = payload;
            }
            job
        })
}

#[test]
fn generated_batches_never_get_a_server_error_and_accepted_ones_are_whole() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let batch = (
        prop::collection::vec(batch_job(), 1..6),
        prop::option::weighted(0.3, -1.0f64..2.0),
    );
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    proptest!(config, |((jobs, threshold) in batch)| {
        let mut body = json!({"jobs": jobs});
        if let Some(threshold) = threshold {
            body["success_threshold"] = json!(threshold);
        }
        let (status, answer) = runtime.block_on(async {
            let response = app.post("/v1/batches", &body).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        });
        prop_assert!(status < 500, "{body} → {status} {answer}");
        if status == 202 {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = answer["id"].as_str().unwrap_or_default().to_owned();
            let stored: Value = runtime.block_on(async {
                app.get(&format!("/v1/batches/{id}")).await.json().await.unwrap()
            });
            prop_assert_eq!(stored["total"].as_u64(), Some(jobs.len() as u64));
            prop_assert_eq!(stored["job_ids"].as_array().map(Vec::len), Some(jobs.len()));
        } else {
            prop_assert!(answer["code"].is_string(), "{status} without a problem: {answer}");
        }
    });
    // The accepted path must have been exercised, not only refusals.
    let accepted = accepted.into_inner();
    assert!(
        accepted >= 10,
        "only {accepted} generated batches were accepted"
    );
    drop(app);
}
