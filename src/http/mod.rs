//! The HTTP API: routes, middleware, and the OpenAPI document generated from them.

mod access;
mod batches;
pub mod cors;
mod dashboard;
mod error;
mod events;
mod extract;
mod guards;
mod health;
mod idempotency;
mod jobs;
mod keys;
mod kinds;
mod limits;
mod metrics;
mod openapi;
mod queues;
mod quotas;
mod schedules;
pub mod serve;
mod tenants;
mod traces;
mod whoami;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, Problem, ServerErrorCause};
pub use extract::parse_json;
pub use health::OPENAPI_YAML;

use self::openapi::BearerScheme;
use crate::access::{Keyring, RateLimiter};
use crate::engine::Engine;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// The API keys, and whether requests need one.
    pub keyring: Arc<Keyring>,
    /// Each key's submission rate (`submit_rate`, `submit_burst`).
    pub limiter: Arc<RateLimiter>,
    /// Interval of keep-alive comments on idle event streams.
    pub sse_keep_alive: Duration,
}

/// Limits of the HTTP layer.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Largest request body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest `POST /v1/batches` body. Default 16 MiB.
    pub max_batch_body_bytes: usize,
    /// Longest a request may take. Default 75 s (long-polls wait up to 60 s).
    pub request_timeout: Duration,
    /// Time a request's whole body may take to arrive. Default 30 s.
    pub body_read_timeout: Duration,
    /// Time a request's head may take to arrive. Default 10 s.
    pub header_read_timeout: Duration,
    /// Time a connection may sit between requests, or stall a response.
    /// Default 75 s.
    pub idle_timeout: Duration,
    /// Most connections open at once; `None`: derived from the file
    /// descriptor limit (see `serve::default_max_connections`).
    pub max_connections: Option<usize>,
    /// `GET /metrics` without a key (`SPOOL_METRICS_PUBLIC`). Default false:
    /// an admin key, as queue names and volumes are the operator's business.
    pub metrics_public: bool,
    /// Origins browsers may call the API from (`SPOOL_CORS_ORIGINS`).
    /// Default: none (no CORS headers; the dashboard is same-origin).
    pub cors_origins: Option<cors::CorsOrigins>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_body_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: None,
            metrics_public: false,
            cors_origins: None,
        }
    }
}

/// The body limit of a route: axum's, and the same figure for the up-front
/// `Content-Length` check and the 413's message. The innermost one wins.
fn body_limit(
    max_bytes: usize,
) -> ServiceBuilder<Stack<Extension<extract::BodyLimit>, Stack<DefaultBodyLimit, Identity>>> {
    ServiceBuilder::new()
        .layer(DefaultBodyLimit::max(max_bytes))
        .layer(Extension(extract::BodyLimit(max_bytes)))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spool",
        description = "Submit jobs and batches over HTTP, follow them, cancel them. \
            Errors are RFC 9457 problem details with a stable `code`. Any request may \
            also get 414 `uri_too_long`, 431 `headers_too_large`, or 503 \
            `too_many_connections` (see `Retry-After`) or `request_timeout`.\n\n\
            Every `/v1` operation takes an API key, `Authorization: Bearer <key>`, and \
            names the role it needs (`read`, `write` or `admin`) in its `security`. \
            A key acts in its own tenant; an admin key acts in another with `?tenant=`. \
            A service with no key at all, bound to a loopback address, lets every \
            request in as the admin of tenant `default`.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "jobs", description = "Submit, read, cancel and retry jobs"),
        (name = "batches", description = "Many jobs submitted, followed and cancelled together"),
        (name = "queues", description = "Named, bounded queues with their own concurrency"),
        (name = "limits", description = "Rate limits on job starts, service-wide, per key"),
        (name = "schedules", description = "Jobs made on a cron or fixed cadence, once per fire time service-wide"),
        (name = "kinds", description = "The job kinds this service runs"),
        (name = "events", description = "Job and batch events as Server-Sent Events"),
        (name = "keys", description = "API keys: who may call, in which tenant, with which role"),
        (name = "tenants", description = "Tenants' quotas: jobs waiting at once, and each key's submission rate"),
        (name = "operations", description = "Health and the API description"),
    )
)]
struct ApiDoc;

/// The operations that need a key, and those that do not.
fn api_routers(settings: &HttpSettings) -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    // Batches get a body limit of their own; the innermost limit wins.
    let batch_submission = OpenApiRouter::new()
        .routes(routes!(batches::create_batch))
        .layer(body_limit(settings.max_batch_body_bytes));
    let keyed = OpenApiRouter::new()
        .merge(batch_submission)
        .routes(routes!(batches::get_batch))
        .routes(routes!(batches::batch_results))
        .routes(routes!(batches::cancel_batch))
        .routes(routes!(batches::retry_batch))
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(queues::list_queues))
        .routes(routes!(
            queues::get_queue,
            queues::put_queue,
            queues::delete_queue
        ))
        .routes(routes!(limits::list_limits))
        .routes(routes!(
            limits::get_limit,
            limits::put_limit,
            limits::delete_limit
        ))
        .routes(routes!(limits::get_limit_key))
        .routes(routes!(schedules::list_schedules))
        .routes(routes!(
            schedules::get_schedule,
            schedules::put_schedule,
            schedules::delete_schedule
        ))
        .routes(routes!(schedules::schedule_fires))
        .routes(routes!(schedules::trigger_schedule))
        .routes(routes!(kinds::list_kinds))
        .routes(routes!(events::stream_events))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(tenants::get_tenant, tenants::put_tenant))
        .routes(routes!(whoami::whoami));
    let public = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::openapi_yaml));
    // The document describes the default, keyed scrape.
    if settings.metrics_public {
        let public = public.route("/metrics", axum::routing::get(metrics::scrape_public));
        (keyed, public)
    } else {
        (keyed.routes(routes!(metrics::scrape)), public)
    }
}

/// The OpenAPI description as the code makes it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (keyed, public) = api_routers(&HttpSettings::default());
    let (_, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(keyed)
        .merge(public)
        .split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    openapi::document_access(&mut api);
    openapi::shape_for_clients(&mut api);
    api
}

/// The OpenAPI document as the code describes it (what `openapi.yaml` must be).
pub fn openapi_document() -> String {
    openapi().to_yaml().unwrap_or_default()
}

/// The whole application: routes, fallbacks and middleware.
pub fn router(state: AppState, settings: &HttpSettings) -> axum::Router {
    let (keyed, public) = api_routers(settings);
    let keyed = keyed.route_layer(axum::middleware::from_fn_with_state(
        state.keyring.clone(),
        access::authenticate,
    ));
    let (router, _) = OpenApiRouter::<AppState>::new()
        .merge(keyed)
        .merge(public)
        .split_for_parts();
    let request_id = HeaderName::from_static("x-request-id");
    let tracer = state.engine.tracer().clone();
    router
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(body_limit(settings.max_body_bytes))
        // Around the routes, so before the key check (a route layer): a
        // browser's preflight carries no key.
        .layer(tower::util::option_layer(
            settings.cors_origins.as_ref().map(cors::layer),
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(axum::middleware::from_fn_with_state(tracer, traces::record))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(log_response)
                        // 5xx are logged once, with their cause, by `log_response`.
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(axum::middleware::from_fn(metrics::record))
                .layer(CatchPanicLayer::custom(|_panic| {
                    ApiError::internal("a handler panicked").into_response()
                }))
                .layer(CompressionLayer::new())
                .layer(guards::GuardsLayer {
                    request_timeout: settings.request_timeout,
                    body_read_timeout: settings.body_read_timeout,
                }),
        )
}

/// The span of a request: every line logged while it is served carries its
/// fields. `tenant` is filled in once the caller is known. Probes and
/// scrapes get a span of their own name, so that their lines stay at debug.
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let trace_id = request
        .extensions()
        .get::<traces::RequestTrace>()
        .map(|trace| trace.trace_id.as_str())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str());
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if matches!(route, Some("/healthz" | "/readyz" | "/metrics")) {
        return tracing::info_span!(
            "probe",
            method = %request.method(),
            route,
            request_id = %request_id,
            trace_id = %trace_id,
        );
    }
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = route.unwrap_or("(unmatched)"),
        path = %request.uri().path(),
        request_id = %request_id,
        trace_id = %trace_id,
        tenant = tracing::field::Empty,
        client = client.map(tracing::field::display),
    )
}

/// One line per request, when it is answered: at info (probes and scrapes
/// at debug, whatever their answer), with the problem's `code` when it is
/// an error. A 5xx other than 503 is an error: logged with its cause (the
/// body the client gets stays opaque). A 503 is the service declining for now (the store out of
/// reach or losing a race three times, a request over its time, shutting
/// down): a warning, with its cause when it has one, so that an operator
/// can tell a database that refuses from one that is merely slow.
fn log_response<B>(response: &axum::http::Response<B>, latency: Duration, span: &tracing::Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let code = response
        .extensions()
        .get::<error::ProblemCode>()
        .map(|code| code.0);
    let cause = response
        .extensions()
        .get::<ServerErrorCause>()
        .map(|cause| cause.0.as_str());
    if response.status().is_server_error() && status != 503 {
        let cause = cause.unwrap_or("no cause recorded");
        tracing::error!(status, latency_ms, code, cause, "request failed");
    } else if span.metadata().map(|meta| meta.name()) == Some("probe") {
        tracing::debug!(status, latency_ms, "probe answered");
    } else if status == 503
        && let Some(cause) = cause
    {
        tracing::warn!(status, latency_ms, code, cause, "request declined");
    } else {
        tracing::info!(status, latency_ms, code, "request");
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not support that method",
    )
}
