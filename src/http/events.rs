//! `GET /v1/events`: job and batch events as Server-Sent Events.

use crate::telemetry::metrics;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::access::ReadAccess;
use super::error::{ApiError, Problem};
use super::extract::QueryPairs;
use crate::domain::{BatchId, FieldError, JobId};
use crate::engine::EngineError;
use crate::notify::{Event, EventHub, EventKind, Resume};

/// Which events a stream carries; every given filter must match.
#[derive(Default)]
struct Filter {
    /// The caller's tenant: a stream never shows another tenant's events.
    tenant: Option<String>,
    job_id: Option<JobId>,
    batch_id: Option<BatchId>,
    queue: Option<String>,
    types: Option<Vec<EventKind>>,
}

impl Filter {
    fn matches(&self, event: &Event) -> bool {
        self.tenant
            .as_deref()
            .is_none_or(|tenant| event.tenant() == tenant)
            && self.job_id.is_none_or(|id| event.job_id() == Some(id))
            && self.batch_id.is_none_or(|id| event.batch_id() == Some(id))
            && self
                .queue
                .as_deref()
                .is_none_or(|queue| event.queue() == Some(queue))
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.contains(&event.kind))
    }
}

const EVENT_TYPES: [EventKind; 10] = [
    EventKind::Scheduled,
    EventKind::Queued,
    EventKind::Started,
    EventKind::Progress,
    EventKind::Retrying,
    EventKind::Succeeded,
    EventKind::Failed,
    EventKind::Cancelled,
    EventKind::BatchFinished,
    EventKind::BatchRetried,
];

fn parse_filter(
    tenant: &str,
    pairs: Vec<(String, String)>,
) -> Result<(Filter, Option<String>), ApiError> {
    let mut filter = Filter {
        tenant: Some(tenant.to_owned()),
        ..Filter::default()
    };
    let mut last_event_id = None;
    let mut errors = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "job_id" => match value.parse() {
                Ok(id) => filter.job_id = Some(id),
                Err(_) => errors.push(FieldError::parameter(name, "not a job id")),
            },
            "batch_id" => match value.parse() {
                Ok(id) => filter.batch_id = Some(id),
                Err(_) => errors.push(FieldError::parameter(name, "not a batch id")),
            },
            "queue" => filter.queue = Some(value),
            "types" => {
                let mut types = Vec::new();
                for text in value.split(',').map(str::trim) {
                    match EVENT_TYPES.iter().find(|kind| kind.as_str() == text) {
                        Some(kind) => types.push(*kind),
                        None => errors.push(FieldError::parameter(
                            name.clone(),
                            format!("`{text}` is not an event type"),
                        )),
                    }
                }
                filter.types = Some(types);
            }
            // For clients that cannot set headers (the header wins).
            "last_event_id" => last_event_id = Some(value),
            _ => errors.push(FieldError::parameter(name, "unknown parameter")),
        }
    }
    if errors.is_empty() {
        Ok((filter, last_event_id))
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Follow job and batch events.
///
/// A Server-Sent Events stream of `job.scheduled`, `job.queued`, `job.started`,
/// `job.progress`, `job.retrying`, `job.succeeded`, `job.failed`,
/// `job.cancelled` and `batch.finished`, each with an `id:`, narrowed by
/// `job_id`, `batch_id`, `queue` and `types` (comma-separated). Idle streams
/// get a keep-alive comment every 15 s (`SPOOL_SSE_KEEP_ALIVE`).
///
/// Reconnecting with `Last-Event-ID` replays what followed that event from
/// the last `SPOOL_EVENT_REPLAY` (10 000) events this instance kept. When
/// some of what followed is no longer kept (or the instance restarted), the
/// stream first sends a `stream.gap` event (no id) with `reason` `too_old` or
/// `restarted`: re-read the state you care about. A client too slow for the
/// live stream is caught up from the same buffer, or gets `stream.gap` with
/// `reason: lagged`. At shutdown the stream ends with `stream.end` once the
/// running jobs have drained (so their last events are on it).
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    security(("bearer" = ["read"])),
    params(
        ("job_id" = Option<String>, Query, description = "Only this job's events.", format = Uuid),
        ("batch_id" = Option<String>, Query, description = "Only events of this batch and its jobs.", format = Uuid),
        ("queue" = Option<String>, Query, description = "Only job events of this queue."),
        ("types" = Option<String>, Query, description = "Comma-separated event types, e.g. `job.succeeded,job.failed`."),
        ("last_event_id" = Option<String>, Query, description = "Like the `Last-Event-ID` header, for clients that cannot set it."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event."),
    ),
    responses(
        (status = 200, description = "The event stream; each `data:` is one event.", body = Event, content_type = "text/event-stream"),
        (status = 422, description = "`validation_failed`: a bad filter or event id.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`shutting_down`.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream_events(
    ReadAccess(caller): ReadAccess,
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryPairs(pairs): QueryPairs,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let (filter, query_last_id) = parse_filter(&caller.tenant, pairs)?;
    if state.engine.stopping().is_cancelled() {
        return Err(EngineError::ShuttingDown.into());
    }
    // Streams stay open while running jobs drain, so clients see how they
    // ended, and close before the HTTP server waits for its connections.
    let stopping = state.engine.drained();
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().map(str::to_owned).map_err(|_| {
            ApiError::validation(vec![FieldError::new("", "Last-Event-ID is not text")])
        })?),
        None => query_last_id,
    };
    // Shared mode: the other instances relay their events here from now on.
    state.engine.announce_listening().await;
    let hub = state.engine.events().clone();
    let mut pending = VecDeque::new();
    let last_event_id = last_event_id.filter(|id| !id.is_empty());
    let (replay, receiver) = match last_event_id.clone() {
        None => (Vec::new(), hub.subscribe()),
        Some(id) => {
            let (replay, resume, receiver) = hub.subscribe_after(&id).map_err(|message| {
                ApiError::validation(vec![FieldError::new(
                    "",
                    format!("Last-Event-ID: {message}"),
                )])
            })?;
            if let Resume::Gap {
                reason,
                oldest_kept,
            } = resume
            {
                pending.push_back(gap(reason, json!({ "oldest_kept_id": oldest_kept })));
            }
            (replay, receiver)
        }
    };
    let stream = EventStream {
        hub,
        filter,
        pending,
        replay: replay.into(),
        receiver,
        last_seen: last_event_id,
        stopping,
        ended: false,
        _counted: metrics::EventStreamClient::open(),
    };
    Ok(Sse::new(stream.into_stream()).keep_alive(KeepAlive::new().interval(state.sse_keep_alive)))
}

/// What a stream sends: an event, or a notice about the stream itself
/// (no id, so a client's `Last-Event-ID` stays on the last event).
#[derive(Debug)]
enum Item {
    Event(Arc<Event>),
    Notice {
        name: &'static str,
        data: serde_json::Value,
    },
}

impl Item {
    fn into_sse(self) -> SseEvent {
        match self {
            Item::Event(event) => SseEvent::default()
                .id(event.id.clone())
                .event(event.kind.as_str())
                .data(serde_json::to_string(&*event).unwrap_or_default()),
            Item::Notice { name, data } => SseEvent::default().event(name).data(data.to_string()),
        }
    }
}

fn gap(reason: &str, details: serde_json::Value) -> Item {
    let mut data = json!({ "reason": reason });
    if let (Some(data), Some(details)) = (data.as_object_mut(), details.as_object()) {
        data.extend(details.clone());
    }
    Item::Notice {
        name: "stream.gap",
        data,
    }
}

struct EventStream {
    /// Counts the stream in `spool_event_stream_clients` while it lives.
    _counted: metrics::EventStreamClient,
    hub: EventHub,
    filter: Filter,
    /// Notices to send before anything else.
    pending: VecDeque<Item>,
    replay: VecDeque<Arc<Event>>,
    receiver: broadcast::Receiver<Arc<Event>>,
    /// The last event taken from the replay or the channel, sent or
    /// filtered out: where a catch-up resumes.
    last_seen: Option<String>,
    stopping: CancellationToken,
    ended: bool,
}

impl EventStream {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures::stream::unfold(self, |mut stream| async move {
            let item = stream.next().await?;
            Some((Ok(item.into_sse()), stream))
        })
    }

    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(notice) = self.pending.pop_front() {
                return Some(notice);
            }
            if self.ended {
                return None;
            }
            let event = match self.replay.pop_front() {
                Some(event) => event,
                None => {
                    let received = tokio::select! {
                        biased;
                        () = self.stopping.cancelled() => {
                            self.ended = true;
                            return Some(Item::Notice {
                                name: "stream.end",
                                data: json!({"reason": "shutting_down"}),
                            });
                        }
                        received = self.receiver.recv() => received,
                    };
                    match received {
                        Ok(event) => event,
                        Err(RecvError::Closed) => return None,
                        Err(RecvError::Lagged(missed)) => {
                            self.catch_up(missed);
                            continue;
                        }
                    }
                }
            };
            self.last_seen = Some(event.id.clone());
            if !self.filter.matches(&event) {
                continue;
            }
            return Some(Item::Event(event));
        }
    }

    /// The client read slower than events came: take what it missed from
    /// the replay buffer if it is still there, else tell it.
    fn catch_up(&mut self, missed: u64) {
        let resumed = self
            .last_seen
            .as_deref()
            .and_then(|id| self.hub.subscribe_after(id).ok());
        match resumed {
            Some((replay, resume, receiver)) => {
                if let Resume::Gap { oldest_kept, .. } = resume {
                    self.pending
                        .push_back(gap("lagged", json!({ "oldest_kept_id": oldest_kept })));
                }
                self.replay = replay.into();
                self.receiver = receiver;
            }
            None => {
                self.pending
                    .push_back(gap("lagged", json!({ "missed": missed })));
                self.receiver = self.receiver.resubscribe();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BatchCounts, BatchId, BatchStatus};
    use crate::notify::{BatchSummary, Subject};

    fn publish(hub: &EventHub, n: usize) {
        for _ in 0..n {
            hub.publish(
                EventKind::BatchFinished,
                Subject::Batch(BatchSummary {
                    id: BatchId::new(),
                    status: BatchStatus::Succeeded,
                    counts: BatchCounts::default(),
                    finished_at: None,
                    tenant: crate::domain::TENANT_DEFAULT.to_owned(),
                }),
            );
        }
    }

    fn stream(hub: &EventHub) -> EventStream {
        EventStream {
            hub: hub.clone(),
            filter: Filter::default(),
            pending: VecDeque::new(),
            replay: VecDeque::new(),
            receiver: hub.subscribe(),
            last_seen: None,
            stopping: CancellationToken::new(),
            ended: false,
            _counted: metrics::EventStreamClient::open(),
        }
    }

    fn seq(item: Option<Item>) -> u64 {
        match item {
            Some(Item::Event(event)) => event.seq,
            other => panic!("not an event: {other:?}"),
        }
    }

    /// 5 000 events published while the client reads nothing: more than the
    /// live channel holds (4 096), fewer than the replay buffer keeps.
    #[tokio::test]
    async fn a_client_slower_than_the_live_stream_is_caught_up_from_the_buffer() {
        let hub = EventHub::new(10_000);
        let mut stream = stream(&hub);
        publish(&hub, 1);
        assert_eq!(seq(stream.next().await), 1);
        publish(&hub, 5_000);
        for expected in 2..=5_001 {
            assert_eq!(seq(stream.next().await), expected, "in order, none lost");
        }
    }

    #[tokio::test]
    async fn a_client_slower_than_the_buffer_is_told_what_it_missed() {
        let hub = EventHub::new(100);
        let mut stream = stream(&hub);
        publish(&hub, 1);
        assert_eq!(seq(stream.next().await), 1);
        publish(&hub, 5_000);
        match stream.next().await {
            Some(Item::Notice { name, data }) => {
                assert_eq!(name, "stream.gap");
                assert_eq!(data["reason"], "lagged");
                assert!(
                    data["oldest_kept_id"]
                        .as_str()
                        .is_some_and(|id| id.ends_with("-4902"))
                );
            }
            other => panic!("no notice: {other:?}"),
        }
        for expected in 4_902..=5_001 {
            assert_eq!(seq(stream.next().await), expected, "then what is kept");
        }
    }
}
