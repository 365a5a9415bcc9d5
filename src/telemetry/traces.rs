//! Spans of requests, attempts and webhook deliveries: exported over
//! OTLP/HTTP when an endpoint is configured, and in every case the source of
//! the `trace_id` each log line of a request or an attempt carries.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::domain::TraceContext;

/// Where spans go: nowhere (the default, at no cost beyond making ids) or
/// to an OTLP/HTTP collector.
#[derive(Clone, Default)]
pub struct Tracer {
    exporting: Option<Arc<Exporting>>,
}

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("exporting", &self.is_exporting())
            .finish()
    }
}

/// The exporter could not be built (a bad endpoint).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TraceExportError(String);

impl Tracer {
    /// A tracer that exports nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A tracer that sends spans in batches to `{endpoint}/v1/traces`
    /// (OTLP/HTTP, protobuf), as service `service_name`. The batching is the
    /// SDK's: at most every 5 s, 512 spans a request, 2 048 queued before
    /// new ones are dropped (`OTEL_BSP_*` change these); the exporter's
    /// `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TIMEOUT` apply,
    /// and so does `OTEL_TRACES_SAMPLER` (default: follow the caller's
    /// sampled flag, sample new traces). Must be called within the runtime
    /// that will send the batches.
    pub fn otlp(endpoint: &str, service_name: &str) -> Result<Self, TraceExportError> {
        let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url)
            .build()
            .map_err(|error| TraceExportError(error.to_string()))?;
        // The async-runtime processor: the exporter's HTTP client needs the
        // tokio runtime, which the SDK's default thread-based one lacks.
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("spool");
        Ok(Self {
            exporting: Some(Arc::new(Exporting { provider, tracer })),
        })
    }

    pub fn is_exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// Starts a span under `parent` (a context received or stored), or as
    /// the root of a new trace. Without an exporter only the ids are made:
    /// `describe` (the span's name and attributes) is called only when
    /// exporting, so that describing costs nothing otherwise.
    pub fn start<Name: Into<Cow<'static, str>>>(
        &self,
        kind: SpanKind,
        parent: Option<&TraceContext>,
        describe: impl FnOnce() -> (Name, Vec<KeyValue>),
    ) -> Span {
        let Some(exporting) = &self.exporting else {
            let context = parent.map_or_else(TraceContext::root, TraceContext::child);
            return Span {
                context,
                exported: None,
            };
        };
        let parent_context = parent
            .and_then(remote_context)
            .map_or_else(Context::new, |remote| {
                Context::new().with_remote_span_context(remote)
            });
        let (name, attributes) = describe();
        let span = exporting
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&exporting.tracer, &parent_context);
        let own = span.span_context();
        let context = TraceContext::from_ids(
            u128::from_be_bytes(own.trace_id().to_bytes()),
            u64::from_be_bytes(own.span_id().to_bytes()),
            own.is_sampled(),
            parent.and_then(|parent| parent.tracestate.clone()),
        )
        // The SDK never makes a zero id; were it to, the trace still gets one.
        .unwrap_or_else(TraceContext::root);
        Span {
            context,
            exported: Some(span),
        }
    }

    /// Sends what is batched and stops exporting; waits at most a few
    /// seconds for the collector.
    pub async fn shutdown(&self) {
        let Some(exporting) = self.exporting.clone() else {
            return;
        };
        // The SDK blocks this thread until its batch task has sent, and that
        // task runs on this runtime: not on a worker thread, then.
        let flushed = tokio::task::spawn_blocking(move || {
            exporting
                .provider
                .shutdown_with_timeout(std::time::Duration::from_secs(5))
        })
        .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "exporting the last spans failed"),
            Err(error) => tracing::warn!(%error, "exporting the last spans failed"),
        }
    }
}

/// A span in progress; ends when dropped.
pub struct Span {
    context: TraceContext,
    exported: Option<opentelemetry_sdk::trace::Span>,
}

impl Span {
    /// This span's own context: what it sends onward as `traceparent`, and
    /// whose trace id its log lines carry.
    pub fn context(&self) -> &TraceContext {
        &self.context
    }

    pub fn trace_id(&self) -> &str {
        self.context.trace_id()
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.exported {
            span.set_attribute(attribute);
        }
    }

    /// Marks the span failed, with a short description (an error code and
    /// message, never a payload).
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.exported {
            span.set_status(Status::error(description));
        }
    }
}

/// The remote parent a stored or received context names.
fn remote_context(context: &TraceContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(context.trace_id()).ok()?;
    let span_id = SpanId::from_hex(context.span_id()).ok()?;
    let flags = if context.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = context
        .tracestate
        .as_deref()
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}
