//! The `http` kind against small local servers: results, retry
//! classification, cancellation, and the outbound policy (SSRF corpus).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{any, get};
use serde_json::{Value, json};
use spool::app::AppBuilder;
use spool::outbound::StaticLookup;

use crate::helpers::{SOON, TestApp, spawn_app_with, spawn_app_with_kinds};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Serves `router` on 127.0.0.1 on a port of its own.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A bare TCP listener that only counts the connections it accepts.
async fn counted_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted)
}

/// Counts requests, for servers whose answer depends on how many came before.
fn hits() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// An app whose `http` jobs may reach 127.0.0.1.
async fn loopback_app() -> TestApp {
    spawn_app_with(|config| config.outbound_allow = "127.0.0.1".parse().unwrap()).await
}

fn http_job(payload: Value) -> Value {
    json!({"kind": "http", "payload": payload, "backoff": {"base_ms": 10, "max_ms": 20}})
}

/// Submits an `http` job and waits until it reaches `status`.
async fn run(app: &TestApp, job: Value, status: &str) -> Value {
    let job = app.submit(job).await;
    app.wait_for_status(job["id"].as_str().unwrap(), status, SOON)
        .await
}

/// The `validation_failed` problem of a refused submission.
async fn refused(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    problem
}

#[derive(Debug, PartialEq)]
enum Refusal {
    AtSubmission,
    AtRun,
}

#[tokio::test]
async fn the_ssrf_corpus_is_refused_without_any_connection_reaching_the_target() {
    let (port, accepted) = counted_listener().await;
    let redirects = hits();
    let counter = redirects.clone();
    let redirector = serve(Router::new().route(
        "/to/{target}",
        get(
            move |axum::extract::Path(target): axum::extract::Path<String>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let host = match target.as_str() {
                        "literal" => "127.0.0.1",
                        "localhost" => "localhost",
                        _ => "rebind.example",
                    };
                    Redirect::to(&format!("http://{host}:{port}/"))
                }
            },
        ),
    ))
    .await;
    let app = spawn_app_with_kinds(
        |config| config.outbound_allow = "public.example".parse().unwrap(),
        vec![Box::new(|builder: AppBuilder| {
            builder.outbound_lookup(StaticLookup::new([
                ("rebind.example".to_owned(), vec![LOOPBACK]),
                ("public.example".to_owned(), vec![LOOPBACK]),
            ]))
        })],
    )
    .await;
    let public = format!("http://public.example:{}", redirector.port());
    let corpus = [
        (format!("http://localhost:{port}/"), Refusal::AtSubmission),
        (format!("http://127.0.0.1:{port}/"), Refusal::AtSubmission),
        (format!("http://[::1]:{port}/"), Refusal::AtSubmission),
        (format!("http://0.0.0.0:{port}/"), Refusal::AtSubmission),
        ("http://10.0.0.1/".to_owned(), Refusal::AtSubmission),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            Refusal::AtSubmission,
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            Refusal::AtSubmission,
        ),
        (format!("http://2130706433:{port}/"), Refusal::AtSubmission),
        (
            format!("http://[::ffff:0:7f00:1]:{port}/"),
            Refusal::AtSubmission,
        ),
        (
            format!("http://[64:ff9b:1::7f00:1]:{port}/"),
            Refusal::AtSubmission,
        ),
        (format!("http://[fec0::1]:{port}/"), Refusal::AtSubmission),
        (format!("http://0x7f000001:{port}/"), Refusal::AtSubmission),
        (format!("http://rebind.example:{port}/"), Refusal::AtRun),
        (format!("{public}/to/literal"), Refusal::AtRun),
        (format!("{public}/to/localhost"), Refusal::AtRun),
        (format!("{public}/to/rebind"), Refusal::AtRun),
    ];
    for (url, expected) in corpus {
        let mut job = http_job(json!({"method": "GET", "url": url}));
        job["max_attempts"] = json!(3);
        let response = app.post("/v1/jobs", &job).await;
        let outcome = if response.status() == 422 {
            let problem = refused(response).await;
            assert_eq!(problem["errors"][0]["pointer"], "/payload/url", "{url}");
            Refusal::AtSubmission
        } else {
            assert_eq!(response.status(), 202, "{url}");
            let id = response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let done = app.wait_for_status(&id, "failed", SOON).await;
            assert_eq!(
                done["error"]["code"], "destination_refused",
                "{url}: {done}"
            );
            assert_eq!(done["attempt"], 1, "{url}: refusals are final");
            let message = done["error"]["message"].as_str().unwrap();
            assert!(message.contains("SPOOL_OUTBOUND_ALLOW"), "{message}");
            Refusal::AtRun
        };
        assert_eq!(outcome, expected, "{url}");
    }
    assert_eq!(
        redirects.load(Ordering::SeqCst),
        3,
        "each redirect was served"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection reached the target"
    );
}

#[tokio::test]
async fn a_batch_with_refused_urls_is_refused_with_pointers_into_its_jobs() {
    let (port, accepted) = counted_listener().await;
    let app = spawn_app_with(|_| {}).await;
    let jobs = json!({"jobs": [
        http_job(json!({"method": "GET", "url": format!("http://127.0.0.1:{port}/")})),
        {"kind": "noop"},
        http_job(json!({"method": "POST", "url": format!("http://localhost:{port}/")})),
    ]});
    let problem = refused(app.post("/v1/batches", &jobs).await).await;
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/jobs/0/payload/url", "/jobs/2/payload/url"]);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// Answers with what it received: method, two headers and the raw body.
async fn echo(method: Method, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    axum::Json(json!({
        "method": method.as_str(),
        "content_type": header("content-type"),
        "x_token": header("x-token"),
        "body": String::from_utf8_lossy(&body),
    }))
}

#[tokio::test]
async fn a_get_returns_the_status_headers_and_body() {
    let target = serve(Router::new().route(
        "/hello",
        get(|| async {
            // A header array would overwrite the repeated name: append instead.
            let mut headers = HeaderMap::new();
            headers.append("x-multi", "a".parse().unwrap());
            headers.append("x-multi", "b".parse().unwrap());
            headers.append("X-Answer", "42".parse().unwrap());
            (StatusCode::CREATED, headers, "hello")
        }),
    ))
    .await;
    let app = loopback_app().await;
    let url = format!("http://{target}/hello");
    let done = run(
        &app,
        http_job(json!({"method": "GET", "url": url})),
        "succeeded",
    )
    .await;
    let result = &done["result"];
    assert_eq!(result["status"], 201);
    assert_eq!(result["body"], "hello");
    assert_eq!(result["body_truncated"], false);
    assert_eq!(result["headers_truncated"], false);
    assert_eq!(result["headers"]["x-multi"], "a, b");
    assert_eq!(result["headers"]["x-answer"], "42");
    assert_eq!(result["headers"]["content-length"], "5");
}

#[tokio::test]
async fn a_json_body_arrives_as_json() {
    let target = serve(Router::new().route("/echo", any(echo))).await;
    let app = loopback_app().await;
    let sent = json!({"order": 7, "items": ["a", "b"]});
    let payload = json!({"method": "POST", "url": format!("http://{target}/echo"), "body": sent});
    let done = run(&app, http_job(payload), "succeeded").await;
    let echoed: Value = serde_json::from_str(done["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["content_type"], "application/json");
    let body: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, sent);
}

#[tokio::test]
async fn a_string_body_is_sent_as_is_with_the_given_headers() {
    let target = serve(Router::new().route("/echo", any(echo))).await;
    let app = loopback_app().await;
    let payload = json!({
        "method": "PUT",
        "url": format!("http://{target}/echo"),
        "headers": {"Content-Type": "application/x-www-form-urlencoded", "x-token": "t0k"},
        "body": "a=1&b={\"not\":\"json\"}",
    });
    let done = run(&app, http_job(payload), "succeeded").await;
    let echoed: Value = serde_json::from_str(done["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        echoed,
        json!({
            "method": "PUT",
            "content_type": "application/x-www-form-urlencoded",
            "x_token": "t0k",
            "body": "a=1&b={\"not\":\"json\"}",
        })
    );
}

#[tokio::test]
async fn a_large_response_is_cut_at_the_configured_size() {
    let target = serve(
        Router::new()
            .route("/large", get(|| async { "x".repeat(200_000) }))
            .route("/exact", get(|| async { "y".repeat(1_000) })),
    )
    .await;
    let app = spawn_app_with(|config| {
        config.outbound_allow = "127.0.0.1".parse().unwrap();
        config.http_max_response_bytes = 1_000;
    })
    .await;
    let large = json!({"method": "GET", "url": format!("http://{target}/large")});
    let done = run(&app, http_job(large), "succeeded").await;
    assert_eq!(done["result"]["body"], "x".repeat(1_000));
    assert_eq!(done["result"]["body_truncated"], true);
    let exact = json!({"method": "GET", "url": format!("http://{target}/exact")});
    let done = run(&app, http_job(exact), "succeeded").await;
    assert_eq!(done["result"]["body"], "y".repeat(1_000));
    assert_eq!(done["result"]["body_truncated"], false);
}

/// The engine's cap on a stored result.
const RESULT_CAP: usize = 256 * 1024;

#[tokio::test]
async fn a_body_of_control_bytes_is_cut_by_its_escaped_size_and_the_job_succeeds() {
    // 64 KiB, the default response cap: six times that once JSON-escaped.
    let target = serve(Router::new().route(
        "/control",
        get(|| async { Bytes::from(vec![1_u8; 64 * 1024]) }),
    ))
    .await;
    let app = loopback_app().await;
    let payload = json!({"method": "GET", "url": format!("http://{target}/control")});
    let done = run(&app, http_job(payload), "succeeded").await;
    let result = &done["result"];
    let body = result["body"].as_str().unwrap();
    assert!(!body.is_empty());
    assert!(body.chars().all(|c| c == '\u{1}'), "only what was sent");
    assert!(body.len() < 64 * 1024);
    assert_eq!(result["body_truncated"], true);
    assert_eq!(result["headers_truncated"], false);
    assert!(serde_json::to_vec(result).unwrap().len() <= RESULT_CAP);
}

#[tokio::test]
async fn a_huge_response_header_is_cut_and_the_job_succeeds_with_the_other_headers() {
    let target = serve(Router::new().route(
        "/header",
        get(|| async {
            let mut headers = HeaderMap::new();
            headers.insert("x-huge", "h".repeat(300_000).parse().unwrap());
            headers.insert("x-small", "kept".parse().unwrap());
            (headers, "fine")
        }),
    ))
    .await;
    let app = loopback_app().await;
    let payload = json!({"method": "GET", "url": format!("http://{target}/header")});
    let done = run(&app, http_job(payload), "succeeded").await;
    let result = &done["result"];
    assert_eq!(result["headers_truncated"], true);
    assert_eq!(result["headers"]["x-small"], "kept");
    assert_eq!(result["headers"]["content-length"], "4");
    let huge = result["headers"]["x-huge"].as_str().unwrap_or_default();
    assert!(huge.len() < 300_000 && huge.bytes().all(|b| b == b'h'));
    assert_eq!(result["body"], "fine");
    assert_eq!(result["body_truncated"], false);
    assert!(serde_json::to_vec(result).unwrap().len() <= RESULT_CAP);
}

/// Answers `failures` times with `status`, then 200.
async fn failing_then_ok(status: StatusCode, failures: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = hits();
    let counter = count.clone();
    let addr = serve(Router::new().route(
        "/",
        get(move || {
            let seen = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if seen < failures {
                    (status, "not now").into_response()
                } else {
                    "ok".into_response()
                }
            }
        }),
    ))
    .await;
    (addr, count)
}

#[tokio::test]
async fn a_503_twice_then_200_succeeds_at_the_third_attempt() {
    let (target, count) = failing_then_ok(StatusCode::SERVICE_UNAVAILABLE, 2).await;
    let app = loopback_app().await;
    let mut job = http_job(json!({"method": "GET", "url": format!("http://{target}/")}));
    job["max_attempts"] = json!(3);
    let done = run(&app, job, "succeeded").await;
    assert_eq!(done["attempt"], 3);
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_404_fails_at_once() {
    let (target, count) = failing_then_ok(StatusCode::NOT_FOUND, usize::MAX).await;
    let app = loopback_app().await;
    let mut job = http_job(json!({"method": "GET", "url": format!("http://{target}/")}));
    job["max_attempts"] = json!(3);
    let done = run(&app, job, "failed").await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["error"]["code"], "unexpected_status");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn expect_status_makes_a_404_a_success() {
    let (target, _) = failing_then_ok(StatusCode::NOT_FOUND, usize::MAX).await;
    let app = loopback_app().await;
    let payload =
        json!({"method": "GET", "url": format!("http://{target}/"), "expect_status": [404]});
    let done = run(&app, http_job(payload), "succeeded").await;
    assert_eq!(done["result"]["status"], 404);
    assert_eq!(done["result"]["body"], "not now");
}

#[tokio::test]
async fn a_429_is_retried() {
    let (target, count) = failing_then_ok(StatusCode::TOO_MANY_REQUESTS, usize::MAX).await;
    let app = loopback_app().await;
    let mut job = http_job(json!({"method": "GET", "url": format!("http://{target}/")}));
    job["max_attempts"] = json!(2);
    let done = run(&app, job, "failed").await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["error"]["code"], "http_status");
    assert!(done["error"]["message"].as_str().unwrap().contains("429"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn endless_redirects_fail_at_once_with_too_many_redirects() {
    let target = serve(Router::new().route("/loop", get(|| async { Redirect::to("/loop") }))).await;
    let app = loopback_app().await;
    let mut job = http_job(json!({"method": "GET", "url": format!("http://{target}/loop")}));
    job["max_attempts"] = json!(3);
    let done = run(&app, job, "failed").await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["error"]["code"], "too_many_redirects");
}

/// Answers after `delay`, counting the requests that arrived.
async fn slow(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = hits();
    let counter = count.clone();
    let addr = serve(Router::new().route(
        "/",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                "late"
            }
        }),
    ))
    .await;
    (addr, count)
}

#[tokio::test]
async fn a_server_slower_than_timeout_ms_is_retried_then_fails_with_timeout() {
    let (target, count) = slow(Duration::from_secs(30)).await;
    let app = loopback_app().await;
    let payload = json!({"method": "GET", "url": format!("http://{target}/"), "timeout_ms": 200});
    let mut job = http_job(payload);
    job["max_attempts"] = json!(2);
    let done = run(&app, job, "failed").await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["error"]["code"], "timeout");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cancelling_a_job_waiting_on_a_slow_server_ends_it_promptly() {
    let (target, count) = slow(Duration::from_secs(60)).await;
    let app = loopback_app().await;
    let job = app
        .submit(http_job(
            json!({"method": "GET", "url": format!("http://{target}/")}),
        ))
        .await;
    let id = job["id"].as_str().unwrap();
    let deadline = Instant::now() + SOON;
    while count.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 202);
    let done = app
        .wait_for_status(id, "cancelled", Duration::from_secs(2))
        .await;
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert_eq!(done["error"]["code"], "cancelled");
}

#[tokio::test]
async fn the_http_kind_is_listed_with_its_schema_and_the_schema_is_enforced() {
    let app = spawn_app_with(|_| {}).await;
    let kinds: Value = app.get("/v1/kinds").await.json().await.unwrap();
    let http = kinds["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kind| kind["name"] == "http")
        .unwrap_or_else(|| panic!("no http kind in {kinds}"));
    assert_eq!(http["schema"]["required"], json!(["method", "url"]));
    assert_eq!(http["schema"]["additionalProperties"], false);
    assert_eq!(
        http["schema"]["properties"]["method"]["enum"],
        json!(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    );

    for (payload, pointer) in [
        // Missing and unknown fields are named at their own pointer.
        (json!({"url": "https://example.com/"}), "/payload/method"),
        (
            json!({"method": "TRACE", "url": "https://example.com/"}),
            "/payload/method",
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "timeout_ms": 0}),
            "/payload/timeout_ms",
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "expect_status": [600]}),
            "/payload/expect_status/0",
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "headers": {"x": 1}}),
            "/payload/headers/x",
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "follow": true}),
            "/payload/follow",
        ),
        (
            json!({"method": "GET", "url": "https://example.com/", "headers": {"content-length": "1"}}),
            "/payload/headers/content-length",
        ),
        (
            json!({"method": "GET", "url": "file:///etc/passwd"}),
            "/payload/url",
        ),
    ] {
        let problem = refused(app.post("/v1/jobs", &http_job(payload.clone())).await).await;
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{payload}: {problem}"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_retried_network_error_that_does_not_repeat_the_url() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let app = loopback_app().await;
    let url = format!("http://{closed}/secret-token");
    let mut job = http_job(json!({"method": "GET", "url": url}));
    job["max_attempts"] = json!(2);
    let done = run(&app, job, "failed").await;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["error"]["code"], "network_error");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("connect"), "{message}");
    assert!(!message.contains("secret-token"), "{message}");
}

#[tokio::test]
async fn each_attempt_of_an_http_job_sends_the_submissions_trace_on_as_its_child() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let target = MockServer::start().await;
    // The first attempt fails (503), the second succeeds: both carry it.
    Mock::given(method("GET"))
        .and(path("/traced"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&target)
        .await;
    Mock::given(method("GET"))
        .and(path("/traced"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&target)
        .await;
    let app = loopback_app().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let submitted_parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let job = http_job(json!({"method": "GET", "url": format!("{}/traced", target.uri())}));
    let response = app
        .post_traced(
            "/v1/jobs",
            &job,
            &submitted_parent,
            Some("congo=t61rcWkgMzE"),
        )
        .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.expect("a job");
    app.wait_for_status(job["id"].as_str().unwrap(), "succeeded", SOON)
        .await;

    let requests = target.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 2);
    let parents: Vec<String> = requests
        .iter()
        .map(|request| {
            let traceparent = request.headers["traceparent"].to_str().unwrap().to_owned();
            assert_eq!(request.headers["tracestate"], "congo=t61rcWkgMzE");
            traceparent
        })
        .collect();
    for parent in &parents {
        let fields: Vec<&str> = parent.split('-').collect();
        assert_eq!(fields.len(), 4, "{parent}");
        assert_eq!(
            (fields[0], fields[1], fields[3]),
            ("00", trace_id, "01"),
            "{parent}"
        );
        assert_eq!(fields[2].len(), 16);
        assert_ne!(parent, &submitted_parent, "each attempt is a child span");
    }
    assert_ne!(parents[0], parents[1], "each attempt has its own span");
}
