//! The span of each request: the trace context it brought, the `trace_id`
//! of its log lines, and the span exported when an exporter is configured.

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::domain::TraceContext;
use crate::telemetry::traces::{Span, Tracer};

/// What a request's handlers and log lines know of its trace.
#[derive(Clone, Debug)]
pub struct RequestTrace {
    /// The trace id of this request's log lines: the one it brought, or
    /// a new one.
    pub trace_id: String,
    /// The context a submission stores with its jobs (see [`record`]).
    pub for_jobs: Option<TraceContext>,
}

/// Starts the request's span (a child of the `traceparent` it brought, or
/// the root of a new trace) and ends it with the response's status.
///
/// A submission's jobs keep the context the request brought, unchanged, so
/// that it is returned as sent and each attempt is a child of the caller's
/// span. A request that brought none gives its jobs its own span's context
/// when spans are exported, so the request and the work it caused make one
/// trace; otherwise its jobs have none, and nothing is sent downstream in
/// a trace nobody records.
pub async fn record(State(tracer): State<Tracer>, mut request: Request, next: Next) -> Response {
    let received = received_context(request.headers());
    let (mut span, exporting) = start_span(&tracer, &request, received.as_ref());
    let for_jobs = received.or_else(|| exporting.then(|| span.context().clone()));
    request.extensions_mut().insert(RequestTrace {
        trace_id: span.trace_id().to_owned(),
        for_jobs,
    });
    let response = next.run(request).await;
    let status = response.status();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.fail(status.to_string());
    }
    response
}

/// The request's span, and whether it is exported. Probes and scrapes come
/// every few seconds and tell nothing a trace would: their lines still get
/// a trace id, but no span is exported.
fn start_span(tracer: &Tracer, request: &Request, received: Option<&TraceContext>) -> (Span, bool) {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str());
    if matches!(route, Some("/healthz" | "/readyz" | "/metrics")) {
        return (
            Tracer::disabled().start(SpanKind::Server, received, || ("", Vec::new())),
            false,
        );
    }
    let span = tracer.start(SpanKind::Server, received, || {
        let method = request.method().as_str().to_owned();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", request.uri().path().to_owned()),
        ];
        let name = match route {
            Some(route) => {
                let name = format!("{method} {route}");
                attributes.push(KeyValue::new("http.route", route.to_owned()));
                name
            }
            None => method,
        };
        (name, attributes)
    });
    (span, tracer.is_exporting())
}

/// The context the request brought (a malformed `traceparent` is ignored,
/// as the W3C recommendation asks).
fn received_context(headers: &HeaderMap) -> Option<TraceContext> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    TraceContext::from_headers(header("traceparent"), header("tracestate"))
}
