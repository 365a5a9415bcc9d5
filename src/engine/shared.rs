//! Shared mode: what the instances on one database tell each other.
//!
//! Each instance claims, runs and rescues jobs through the store, which is
//! enough for correctness. The bus only makes things prompt: wake-ups for
//! jobs another instance queued, cancellations of jobs running here, queue
//! changes, and events for streams and long-polls held here. Every message
//! may be lost, so each has a timed fallback: the dispatcher's poll, the
//! heartbeat (which carries cancel requests), the queue refresh below, and
//! long-polls re-reading every poll interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{Engine, STOP_CANCEL};
use crate::domain::{JobId, Timestamp};
use crate::notify::{Event, EventKind};
use crate::store::{Bus, Heard, MAX_BUS_MESSAGE};

/// How long an announcement that this instance has listeners lasts; it is
/// renewed every third of that while they stay.
const LISTENING_TTL_MS: i64 = 6_000;
/// Queue settings are re-read this often even when no change was heard.
const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// One message on the bus.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Signal {
    /// Jobs became ready in `queue`: claim them if there is room here.
    Ready { queue: String },
    /// Cancellation was requested for these jobs: stop them if they run here.
    Stop { jobs: Vec<JobId> },
    /// A queue's settings changed: re-read them.
    Queues,
    /// An API key was created or revoked: re-read the keys.
    Keys,
    /// A tenant's quotas changed: re-read the tenants.
    Tenants,
    /// The sender has event streams or long-polls open until `until_ms`:
    /// relay events to it until then.
    Listening { until_ms: i64 },
    /// An event published on another instance; `admission` is the event's
    /// own flag (see `EventHub::dedupe_queued`), which its JSON leaves out.
    Event {
        event: Box<Event>,
        #[serde(default)]
        admission: bool,
        /// The event's tenant, which its JSON leaves out.
        #[serde(default)]
        tenant: String,
    },
}

/// `Signal::Event` as sent, borrowing the event rather than copying it.
#[derive(Serialize)]
#[serde(tag = "t", rename = "event")]
struct RelayedEvent<'a> {
    event: &'a Event,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admission: bool,
    tenant: &'a str,
}

/// This instance's end of the bus.
pub(super) struct Shared {
    bus: Arc<dyn Bus>,
    /// Until when some other instance wants events relayed (ms).
    others_listen_until_ms: AtomicI64,
    /// When this instance's listening announcement runs out (ms).
    announced_until_ms: AtomicI64,
}

impl Shared {
    pub(super) fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            bus,
            others_listen_until_ms: AtomicI64::new(0),
            announced_until_ms: AtomicI64::new(0),
        }
    }

    fn send(&self, signal: &Signal) {
        match serde_json::to_string(signal) {
            Ok(message) => self.bus.send(message),
            Err(error) => tracing::warn!(%error, "a bus message could not be encoded"),
        }
    }

    /// Passes an event published here on, while some instance listens.
    fn relay(&self, event: &Event) {
        if Timestamp::now().as_millis() >= self.others_listen_until_ms.load(Ordering::Acquire) {
            return;
        }
        let mut message = serde_json::to_string(&RelayedEvent {
            event,
            admission: event.admission,
            tenant: event.tenant(),
        })
        .unwrap_or_default();
        if message.len() > MAX_BUS_MESSAGE && event.job.as_ref().is_some_and(|j| j.result.is_some())
        {
            // The bus carries less than an event may hold: the receiver's
            // listeners read the job for its result, as for any large one.
            let mut smaller = event.clone();
            if let Some(job) = &mut smaller.job {
                job.result = None;
                job.result_omitted = true;
            }
            message = serde_json::to_string(&RelayedEvent {
                event: &smaller,
                admission: event.admission,
                tenant: event.tenant(),
            })
            .unwrap_or_default();
        }
        if message.is_empty() || message.len() > MAX_BUS_MESSAGE {
            tracing::debug!(event_id = %event.id, "event too large for the bus; not relayed");
            return;
        }
        self.bus.send(message);
    }
}

impl Engine {
    fn shared(&self) -> Option<&Shared> {
        self.inner.shared.as_ref()
    }

    /// Tells the other instances that jobs are ready in `queue`.
    pub(super) fn tell_ready(&self, queue: &str) {
        if let Some(shared) = self.shared() {
            shared.send(&Signal::Ready {
                queue: queue.to_owned(),
            });
        }
    }

    /// Tells the other instances to stop these jobs if they run them.
    pub(super) fn tell_stop(&self, jobs: Vec<JobId>) {
        if let Some(shared) = self.shared()
            && !jobs.is_empty()
        {
            // Chunked so each message stays well under the bus's limit.
            for chunk in jobs.chunks(100) {
                shared.send(&Signal::Stop {
                    jobs: chunk.to_vec(),
                });
            }
        }
    }

    /// Tells the other instances that queue settings changed.
    /// Whether other instances may share the store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.shared().is_some()
    }

    /// Tells the other instances that the API keys changed.
    pub fn tell_keys_changed(&self) {
        if let Some(shared) = self.shared() {
            shared.send(&Signal::Keys);
        }
    }

    /// Notified when another instance changed the API keys, or when bus
    /// messages may have been lost.
    pub fn keys_heard(&self) -> &tokio::sync::Notify {
        &self.inner.keys_heard
    }

    /// Tells the other instances that a tenant's quotas changed.
    pub(super) fn tell_tenants_changed(&self) {
        if let Some(shared) = self.shared() {
            shared.send(&Signal::Tenants);
        }
    }

    pub(super) fn tell_queues_changed(&self) {
        if let Some(shared) = self.shared() {
            shared.send(&Signal::Queues);
        }
    }

    /// Before a stream or long-poll starts listening: makes sure the other
    /// instances relay their events here, and waits until they can have
    /// heard it (so an event they publish after the caller's next request
    /// reaches it). Cheap when announced recently.
    pub async fn announce_listening(&self) {
        let Some(shared) = self.shared() else { return };
        let now = Timestamp::now().as_millis();
        if shared.announced_until_ms.load(Ordering::Acquire) - now > LISTENING_TTL_MS / 2 {
            return;
        }
        self.announce(shared, now);
        shared.bus.flush().await;
    }

    fn announce(&self, shared: &Shared, now: i64) {
        let until_ms = now + LISTENING_TTL_MS;
        shared.announced_until_ms.store(until_ms, Ordering::Release);
        shared.send(&Signal::Listening { until_ms });
    }

    /// Starts relaying this instance's events and the loops that act on
    /// what the others say.
    pub(super) fn spawn_shared_loops(&self) {
        let Some(shared) = self.shared() else { return };
        let engine = self.clone();
        self.inner.events.set_relay(Box::new(move |event| {
            if let Some(shared) = engine.shared() {
                shared.relay(event);
            }
        }));
        let heard = shared.bus.subscribe();
        self.inner.loops.spawn(self.clone().hear_loop(heard));
        self.inner.loops.spawn(self.clone().refresh_loop());
        self.inner.loops.spawn(self.clone().tenants_loop());
    }

    async fn hear_loop(self, mut heard: tokio::sync::broadcast::Receiver<Heard>) {
        let stopped = self.inner.stopped.clone();
        loop {
            let message = tokio::select! {
                message = heard.recv() => message,
                _ = stopped.cancelled() => return,
            };
            match message {
                Ok(Heard::Message(message)) => match serde_json::from_str(&message) {
                    Ok(signal) => self.act_on(signal),
                    Err(error) => {
                        tracing::debug!(%error, "an unreadable bus message was ignored");
                    }
                },
                Ok(Heard::Resync) | Err(RecvError::Lagged(_)) => self.resync().await,
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn act_on(&self, signal: Signal) {
        match signal {
            Signal::Ready { queue } => {
                let has_room = self
                    .read_queues()
                    .get(&queue)
                    .is_some_and(|q| !q.config.paused && q.running < q.limit());
                if has_room {
                    self.inner.wake_dispatcher.notify_one();
                }
            }
            Signal::Stop { jobs } => {
                for id in jobs {
                    self.stop_running(id, STOP_CANCEL);
                }
            }
            Signal::Queues => {
                let engine = self.clone();
                tokio::spawn(async move { engine.refresh_queues().await });
            }
            Signal::Keys => self.inner.keys_heard.notify_one(),
            Signal::Tenants => self.inner.tenants_heard.notify_one(),
            Signal::Listening { until_ms } => {
                if let Some(shared) = self.shared() {
                    shared
                        .others_listen_until_ms
                        .fetch_max(until_ms, Ordering::AcqRel);
                }
            }
            Signal::Event {
                mut event,
                admission,
                tenant,
            } => {
                event.admission = admission;
                event.set_tenant(&tenant);
                // Long-polls held here wait on ends stored elsewhere too.
                match (event.kind, &event.job, &event.batch) {
                    (
                        EventKind::Succeeded | EventKind::Failed | EventKind::Cancelled,
                        Some(job),
                        _,
                    ) => {
                        self.inner.waiters.wake(job.id.as_uuid());
                        if let Some(batch_id) = job.batch_id {
                            self.inner
                                .waiters
                                .wake(super::waiting::results_waiter(batch_id));
                        }
                    }
                    (EventKind::BatchFinished, _, Some(batch)) => {
                        self.inner.waiters.wake(batch.id.as_uuid());
                    }
                    _ => {}
                }
                self.inner.events.publish_relayed(*event);
            }
        }
    }

    /// After messages may have been lost: look at everything they would
    /// have said. Cancel requests come with the next heartbeat.
    async fn resync(&self) {
        self.inner.wake_dispatcher.notify_one();
        self.inner.wake_promoter.notify_one();
        self.inner.wake_webhooks.notify_one();
        self.inner.keys_heard.notify_one();
        self.inner.tenants_heard.notify_one();
        self.refresh_queues().await;
        if let Some(shared) = self.shared()
            && shared.announced_until_ms.load(Ordering::Acquire) > Timestamp::now().as_millis()
        {
            self.announce(shared, Timestamp::now().as_millis());
        }
    }

    /// Re-reads the queues on a timer (a change heard on the bus is applied
    /// at once; this catches lost ones), and renews the listening
    /// announcement while streams or long-polls are open here.
    async fn refresh_loop(self) {
        let stopping = self.inner.stopping.clone();
        let mut refreshed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(LISTENING_TTL_MS as u64 / 3)) => {}
                _ = stopping.cancelled() => return,
            }
            if let Some(shared) = self.shared()
                && (self.inner.events.listeners() > 0 || !self.inner.waiters.is_empty())
            {
                self.announce(shared, Timestamp::now().as_millis());
            }
            if refreshed.elapsed() >= QUEUE_REFRESH {
                refreshed = tokio::time::Instant::now();
                self.refresh_queues().await;
            }
        }
    }
}
