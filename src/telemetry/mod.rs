//! Structured logs with `tracing` (text for people, JSON for collectors),
//! the Prometheus metrics ([`metrics`]) and the spans ([`traces`]).

pub mod metrics;
pub mod traces;

use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written: plain text (coloured only on a terminal) or
/// one JSON object per line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        // Colour only for a person at a terminal: `docker logs` and files
        // would show the escape codes.
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
        LogFormat::Json => registry.with(TraceIds).with(json_layer()).try_init(),
    };
}

/// One JSON object a line: the event's fields at the top level, the
/// enclosing spans under `span` (innermost) and `spans` (outermost first),
/// and the `trace_id` of the request or attempt the line belongs to at the
/// top level too, where log collectors look for it to link a trace.
fn json_layer<S>() -> json_subscriber::JsonLayer<S>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    let mut layer = json_subscriber::JsonLayer::stdout();
    layer
        .with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime)
        .with_level("level")
        .with_target("target")
        .with_flattened_event()
        .with_current_span("span")
        .with_span_list("spans");
    layer.add_from_span("trace_id", |span| {
        span.scope().find_map(|span| {
            span.extensions()
                .get::<SpanTraceId>()
                .map(|id| id.0.clone())
        })
    });
    layer
}

/// A span's `trace_id` field, kept where the JSON layer can read it.
struct SpanTraceId(String);

/// Keeps the `trace_id` field of each span that has one (request and
/// attempt spans) in the span's extensions.
struct TraceIds;

impl<S> tracing_subscriber::Layer<S> for TraceIds
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut found = TraceIdVisitor(None);
        attrs.record(&mut found);
        if let (Some(trace_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(SpanTraceId(trace_id));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = TraceIdVisitor(None);
        values.record(&mut found);
        if let (Some(trace_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(SpanTraceId(trace_id));
        }
    }
}

struct TraceIdVisitor(Option<String>);

impl Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "trace_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "trace_id" {
            // `%value` arrives here as Display wrapped in Debug: no quotes.
            self.0 = Some(format!("{value:?}"));
        }
    }
}
