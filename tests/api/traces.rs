//! Spans over OTLP/HTTP: requests, attempts (retries too) and webhook
//! deliveries, linked to the trace a submission brought; `trace_id` on the
//! log lines of requests and attempts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{SOON, SpoolProcess, TestApp, spawn_app_with};

/// A span as the collector received it, ids in hex.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
    status: i32,
    service_name: String,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A small OTLP/HTTP collector: `POST /v1/traces` with protobuf bodies.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("an OTLP protobuf export request");
                    kept.lock().unwrap().extend(received(request));
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn received(request: ExportTraceServiceRequest) -> Vec<Received> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .and_then(|value| value.value.as_ref())
    {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|attribute| attribute.key == "service.name")
            })
            .map(|attribute| text(attribute.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|attribute| (attribute.key.clone(), text(attribute.value.as_ref())))
                        .collect(),
                    status: span.status.map_or(0, |status| status.code),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    spans
}

/// The span called `name`; the test fails showing them all when none is.
fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {spans:#?}"))
}

async fn exporting_app(collector: &Collector) -> TestApp {
    let endpoint = collector.url.clone();
    spawn_app_with(move |config| {
        config.otlp_endpoint = Some(endpoint);
        config.outbound_allow = "127.0.0.1".parse().unwrap();
    })
    .await
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn each_attempt_is_an_exported_span_under_the_submitted_trace_and_parents_its_http_call() {
    let target = MockServer::start().await;
    // The first attempt fails (503), the second succeeds.
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
    let collector = Collector::start().await;
    let app = exporting_app(&collector).await;
    let sent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let job = json!({
        "kind": "http",
        "payload": {"method": "GET", "url": format!("{}/traced", target.uri())},
        "backoff": {"base_ms": 10, "max_ms": 20},
    });
    let response = app.post_traced("/v1/jobs", &job, &sent, None).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["traceparent"], sent.as_str(), "kept as sent");
    app.wait_for_status(&id, "succeeded", SOON).await;
    // Stopping sends what is batched.
    app.shutdown().await;

    let spans = collector.spans();
    let request = named(&spans, "POST /v1/jobs");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        (request.trace_id.as_str(), request.parent_span_id.as_str()),
        (TRACE_ID, CALLER_SPAN)
    );
    assert_eq!(request.attribute("http.route"), Some("/v1/jobs"));
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    assert_eq!(request.service_name, "spool");

    let mut attempts: Vec<&Received> = spans
        .iter()
        .filter(|span| span.attribute("messaging.message.id") == Some(id.as_str()))
        .collect();
    attempts.sort_by_key(|span| span.attribute("spool.job.attempt").map(str::to_owned));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (number, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.name, "run http");
        assert_eq!(attempt.kind, SpanKind::Consumer as i32);
        assert_eq!(attempt.trace_id, TRACE_ID, "in the submitted trace");
        assert_eq!(
            attempt.parent_span_id, CALLER_SPAN,
            "a child of the caller's span"
        );
        let number = (number + 1).to_string();
        assert_eq!(
            attempt.attribute("spool.job.attempt"),
            Some(number.as_str())
        );
    }
    assert_eq!(attempts[0].attribute("spool.job.outcome"), Some("retried"));
    assert_eq!(attempts[0].status, StatusCode::Error as i32);
    assert_eq!(
        attempts[1].attribute("spool.job.outcome"),
        Some("succeeded")
    );
    assert_ne!(attempts[1].status, StatusCode::Error as i32);

    // What each attempt called names that attempt's span as its parent.
    let called: Vec<String> = target
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|request| request.headers["traceparent"].to_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = attempts
        .iter()
        .map(|attempt| format!("00-{TRACE_ID}-{}-01", attempt.span_id))
        .collect();
    assert_eq!(called, expected);
}

#[tokio::test]
async fn a_submission_without_a_trace_starts_one_its_jobs_and_webhooks_join() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let collector = Collector::start().await;
    let endpoint = collector.url.clone();
    let app = spawn_app_with(move |config| {
        config.otlp_endpoint = Some(endpoint);
        config.outbound_allow = "127.0.0.1".parse().unwrap();
    })
    .await;
    let job = app
        .submit(json!({
            "kind": "sleep",
            "payload": {"ms": 1},
            "callback_url": format!("{}/hook", receiver.uri()),
        }))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let traceparent = job["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the service's own context is kept: {job}"))
        .to_owned();
    app.wait_for_status(&id, "succeeded", SOON).await;
    let deadline = Instant::now() + SOON;
    while receiver.received_requests().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.shutdown().await;

    let spans = collector.spans();
    let request = named(&spans, "POST /v1/jobs");
    assert_eq!(request.parent_span_id, "", "a new trace");
    assert!(
        !spans.iter().any(|span| span.name.contains("/healthz")),
        "probes are not exported: {spans:#?}"
    );
    assert!(
        spans.iter().any(|span| span.name == "GET /v1/jobs/{id}"),
        "the test's polls are: {spans:#?}"
    );
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", request.trace_id, request.span_id),
        "the job keeps the request's span as its parent"
    );
    let attempt = spans
        .iter()
        .find(|span| span.attribute("messaging.message.id") == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no attempt span in {spans:#?}"));
    assert_eq!(
        (attempt.trace_id.as_str(), attempt.parent_span_id.as_str()),
        (request.trace_id.as_str(), request.span_id.as_str())
    );
    let delivery = named(&spans, "webhook job.succeeded");
    assert_eq!(delivery.kind, SpanKind::Client as i32);
    assert_eq!(
        (delivery.trace_id.as_str(), delivery.parent_span_id.as_str()),
        (request.trace_id.as_str(), request.span_id.as_str())
    );
    let hooks = receiver.received_requests().await.unwrap();
    assert_eq!(
        hooks[0].headers["traceparent"].to_str().unwrap(),
        format!("00-{}-{}-01", delivery.trace_id, delivery.span_id),
        "the receiver's parent is the delivery's span"
    );
}

#[tokio::test]
async fn every_log_line_of_a_request_or_an_attempt_carries_its_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = SpoolProcess::start_configured(
        &format!("sqlite://{}", dir.path().join("spool.db").display()),
        &[("SPOOL_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
        |command| {
            command.stdout(std::process::Stdio::piped());
        },
    );
    let lines = spool.log_lines();
    let client = reqwest::Client::new();
    let sent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    // Fails for good at its only attempt: the attempt logs its end.
    let job: Value = client
        .post(spool.url("/v1/jobs"))
        .header("traceparent", &sent)
        .json(&json!({"kind": "sleep", "payload": {"ms": 1, "fail": true}, "max_attempts": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let untraced = client.get(spool.url("/v1/queues")).send().await.unwrap();
    let untraced_request = untraced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + SOON;
    let (mut traced_request, mut attempt, mut other_request) = (0, 0, 0);
    while (traced_request == 0 || attempt == 0 || other_request == 0) && Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let spans: Vec<&Value> = line["spans"]
            .as_array()
            .map(|spans| spans.iter().collect())
            .unwrap_or_default();
        let within = |name: &str| spans.iter().find(|span| span["name"] == name).copied();
        let (request, run) = (within("request"), within("attempt"));
        if request.is_none() && run.is_none() {
            continue;
        }
        let trace_id = line["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no trace_id: {line}"));
        assert_eq!(trace_id.len(), 32, "{line}");
        if let Some(run) = run {
            if run["job_id"] == id.as_str() {
                assert_eq!(trace_id, TRACE_ID, "{line}");
                attempt += 1;
            }
        } else if let Some(request) = request {
            if request["path"] == "/v1/jobs" {
                assert_eq!(trace_id, TRACE_ID, "{line}");
                traced_request += 1;
            } else if request["request_id"] == untraced_request.as_str() {
                assert_ne!(trace_id, TRACE_ID, "{line}");
                other_request += 1;
            }
        }
    }
    assert!(
        traced_request > 0 && attempt > 0 && other_request > 0,
        "lines seen: traced request {traced_request}, attempt {attempt}, other request {other_request}"
    );
}
