//! The in-process stream of job and batch events, with a bounded replay
//! buffer for clients that reconnect with `Last-Event-ID`.
//!
//! Publishing never waits for a listener: events go into a ring buffer and a
//! broadcast channel under one short lock. A listener that falls behind the
//! channel is told how many events it missed (see `GET /v1/events`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use super::recent::Recent;
use crate::domain::{
    BatchCounts, BatchId, BatchStatus, ErrorInfo, Job, JobId, JobState, Progress, Timestamp,
};

/// Live events a listener may fall behind by before it is told it lagged.
const LIVE_BUFFER: usize = 4_096;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EventKind {
    /// Stored (or retried by request) to run later: at its `run_at`, or
    /// when its dependencies succeed.
    #[serde(rename = "job.scheduled")]
    Scheduled,
    #[serde(rename = "job.queued")]
    Queued,
    #[serde(rename = "job.started")]
    Started,
    #[serde(rename = "job.progress")]
    Progress,
    /// A failed attempt that will be tried again (`scheduled`).
    #[serde(rename = "job.retrying")]
    Retrying,
    #[serde(rename = "job.succeeded")]
    Succeeded,
    #[serde(rename = "job.failed")]
    Failed,
    #[serde(rename = "job.cancelled")]
    Cancelled,
    #[serde(rename = "batch.finished")]
    BatchFinished,
    /// A finished batch (or one its retry policy held open) runs again.
    #[serde(rename = "batch.retried")]
    BatchRetried,
}

impl EventKind {
    /// The event that entering `state` produces (`scheduled` after a failed
    /// attempt is a retry).
    pub fn for_state(state: JobState) -> Self {
        match state {
            JobState::Scheduled => EventKind::Retrying,
            JobState::Queued => EventKind::Queued,
            JobState::Running => EventKind::Started,
            JobState::Succeeded => EventKind::Succeeded,
            JobState::Failed => EventKind::Failed,
            JobState::Cancelled => EventKind::Cancelled,
        }
    }

    /// The event of a job just stored in `state` (by a submission or a
    /// retry request): `scheduled` there means waiting, not retrying.
    pub fn for_stored(state: JobState) -> Self {
        match state {
            JobState::Scheduled => EventKind::Scheduled,
            other => EventKind::for_state(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Scheduled => "job.scheduled",
            EventKind::Queued => "job.queued",
            EventKind::Started => "job.started",
            EventKind::Progress => "job.progress",
            EventKind::Retrying => "job.retrying",
            EventKind::Succeeded => "job.succeeded",
            EventKind::Failed => "job.failed",
            EventKind::Cancelled => "job.cancelled",
            EventKind::BatchFinished => "batch.finished",
            EventKind::BatchRetried => "batch.retried",
        }
    }
}

/// A job as events show it: enough to act on without a second request
/// (the result on success, the error on failure), never the payload.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub status: JobState,
    pub attempt: u32,
    pub max_attempts: u32,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub batch_id: Option<BatchId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The result is larger than events carry (8 KiB of JSON): read the job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub result_omitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Whose job it is: streams show a tenant only its own. Not shown to
    /// clients; the bus carries it beside the event.
    #[serde(skip)]
    pub tenant: String,
}

/// Largest result an event carries. Events are kept in memory for resuming
/// streams (`SPOOL_EVENT_REPLAY` of them), so their size must stay small
/// whatever results jobs return (up to 256 KiB each).
const MAX_EVENT_RESULT_BYTES: u64 = 8 * 1024;

/// Counts serialized bytes without keeping them.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        if self.0 > MAX_EVENT_RESULT_BYTES {
            // Stop serializing as soon as it is too large.
            return Err(std::io::Error::other("too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn small_enough(value: &Value) -> bool {
    serde_json::to_writer(&mut ByteCount(0), value).is_ok()
}

/// The result an event about a job in `status` carries, and whether one was
/// left out for its size (only `job.succeeded` carries one).
fn event_result(status: JobState, result: Option<&Value>) -> (Option<Value>, bool) {
    match result {
        Some(result) if status == JobState::Succeeded => {
            if small_enough(result) {
                (Some(result.clone()), false)
            } else {
                (None, true)
            }
        }
        _ => (None, false),
    }
}

/// The summary of `job` as its events show it.
pub fn job_summary(job: &Job) -> JobSummary {
    let (result, result_omitted) = event_result(job.status, job.result.as_ref());
    JobSummary {
        id: job.id,
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        status: job.status,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        batch_id: job.batch_id,
        progress: job.progress.clone(),
        result,
        result_omitted,
        error: match job.status {
            JobState::Failed | JobState::Cancelled | JobState::Scheduled => job.error.clone(),
            _ => None,
        },
        tenant: job.tenant.clone(),
    }
}

/// A finished batch as `batch.finished` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchSummary {
    #[schema(value_type = String, format = Uuid)]
    pub id: BatchId,
    pub status: BatchStatus,
    pub counts: BatchCounts,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Whose batch it is (see `JobSummary::tenant`).
    #[serde(skip)]
    pub tenant: String,
}

/// One event: the `data:` of an SSE message (its `id:` and `event:` lines
/// carry the id and the type again).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Opaque; send it back as `Last-Event-ID` to resume after it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSummary>,
    #[serde(skip)]
    pub seq: u64,
    /// The `job.queued` of a job's admission, which two instances may both
    /// publish in shared mode (see `EventHub::dedupe_queued`). Not part of
    /// the event as clients see it; the bus carries it beside the event.
    #[serde(skip)]
    pub admission: bool,
}

impl Event {
    /// The tenant whose job or batch this event is about.
    pub fn tenant(&self) -> &str {
        match (&self.job, &self.batch) {
            (Some(job), _) => &job.tenant,
            (None, Some(batch)) => &batch.tenant,
            (None, None) => "",
        }
    }

    /// Restores the tenant of an event that came over the bus (which
    /// carries it beside the event's JSON).
    pub fn set_tenant(&mut self, tenant: &str) {
        if let Some(job) = &mut self.job {
            job.tenant = tenant.to_owned();
        }
        if let Some(batch) = &mut self.batch {
            batch.tenant = tenant.to_owned();
        }
    }

    pub fn job_id(&self) -> Option<JobId> {
        self.job.as_ref().map(|job| job.id)
    }

    pub fn batch_id(&self) -> Option<BatchId> {
        match (&self.job, &self.batch) {
            (Some(job), _) => job.batch_id,
            (None, Some(batch)) => Some(batch.id),
            (None, None) => None,
        }
    }

    pub fn queue(&self) -> Option<&str> {
        self.job.as_ref().map(|job| job.queue.as_str())
    }
}

/// What an event is about, before the hub numbers it.
pub enum Subject {
    Job(JobSummary),
    Batch(BatchSummary),
}

/// Where a resuming listener stands against what the hub still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Everything after the given id is replayed.
    Complete,
    /// Some events after the given id are no longer kept (or were never
    /// seen by this process, e.g. it restarted): the client must re-read
    /// the state it cares about.
    Gap {
        reason: &'static str,
        /// The oldest event still kept, replayed next (if any).
        oldest_kept: Option<String>,
    },
}

/// The kept events to replay, how complete they are, and the live events
/// that follow them.
pub type Resumption = (Vec<Arc<Event>>, Resume, broadcast::Receiver<Arc<Event>>);

struct Ring {
    next_seq: u64,
    kept: VecDeque<Arc<Event>>,
    /// Shared mode: the `job.queued` events recorded lately, by job and
    /// attempt, so one reaching this hub twice is recorded once.
    queued: Option<Recent<(JobId, u32)>>,
}

/// How long a `job.queued` is remembered for de-duplication: far longer
/// than the bus takes to carry it.
const QUEUED_MEMORY: Duration = Duration::from_secs(30);
/// Most `job.queued` events remembered per generation (two are kept, about
/// 30 bytes each: under 20 MiB), half a minute's worth at 10 000 jobs/s.
const QUEUED_MEMORY_MAX: usize = 300_000;

/// Passes events published here on to other instances (shared mode).
pub type Relay = Box<dyn Fn(&Event) + Send + Sync>;

/// Numbers events, keeps the last `replay` of them and fans them out.
#[derive(Clone)]
pub struct EventHub {
    /// Tells ids of this process from those of an earlier one.
    epoch: Arc<str>,
    replay: usize,
    ring: Arc<Mutex<Ring>>,
    sender: broadcast::Sender<Arc<Event>>,
    relay: Arc<OnceLock<Relay>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl EventHub {
    /// A hub keeping the last `replay` events for resuming clients.
    pub fn new(replay: usize) -> Self {
        Self {
            epoch: Timestamp::now().as_millis().to_string().into(),
            replay,
            ring: Arc::new(Mutex::new(Ring {
                next_seq: 1,
                kept: VecDeque::with_capacity(replay.min(1024)),
                queued: None,
            })),
            sender: broadcast::channel(LIVE_BUFFER).0,
            relay: Arc::new(OnceLock::new()),
        }
    }

    /// Sets where events published here are also passed on (once).
    pub fn set_relay(&self, relay: Relay) {
        let _ = self.relay.set(relay);
    }

    /// Shared mode: records the `job.queued` of each job's admission once,
    /// however many times it arrives. The instance that admits a job
    /// publishes it, but another may claim the job before that event
    /// reaches it over the bus; the claimant then publishes it first (see
    /// `Engine::start_attempt`), so its streams never show `job.started`
    /// before `job.queued`, and the copy that arrives later is dropped here.
    /// Only admissions are de-duplicated: the `job.queued` of a manual retry
    /// or of a job handed back carries the same attempt number and is
    /// always another event.
    pub fn dedupe_queued(&self) {
        if let Ok(mut ring) = self.ring.lock() {
            ring.queued = Some(Recent::new(QUEUED_MEMORY, QUEUED_MEMORY_MAX));
        }
    }

    /// Streams listening here now.
    pub fn listeners(&self) -> usize {
        self.sender.receiver_count()
    }

    /// How many events are kept for resuming.
    pub fn replay_capacity(&self) -> usize {
        self.replay
    }

    pub fn publish(&self, kind: EventKind, subject: Subject) {
        let (job, batch) = match subject {
            Subject::Job(job) => (Some(job), None),
            Subject::Batch(batch) => (None, Some(batch)),
        };
        self.publish_marked(kind, job, batch, false);
    }

    /// Publishes the `job.queued` of a job's admission (see `dedupe_queued`).
    pub fn publish_admission(&self, job: JobSummary) {
        self.publish_marked(EventKind::Queued, Some(job), None, true);
    }

    fn publish_marked(
        &self,
        kind: EventKind,
        job: Option<JobSummary>,
        batch: Option<BatchSummary>,
        admission: bool,
    ) {
        let event = self.record(kind, Timestamp::now(), job, batch, admission);
        if let (Some(event), Some(relay)) = (event, self.relay.get()) {
            relay(&event);
        }
    }

    /// Publishes an event another instance relayed: numbered here (ids are
    /// per instance), with its own time, and not relayed again.
    pub fn publish_relayed(&self, event: Event) {
        self.record(
            event.kind,
            event.at,
            event.job,
            event.batch,
            event.admission,
        );
    }

    fn record(
        &self,
        kind: EventKind,
        at: Timestamp,
        job: Option<JobSummary>,
        batch: Option<BatchSummary>,
        admission: bool,
    ) -> Option<Arc<Event>> {
        let Ok(mut ring) = self.ring.lock() else {
            return None;
        };
        if kind == EventKind::Queued
            && admission
            && let (Some(queued), Some(job)) = (&mut ring.queued, &job)
            && !queued.insert((job.id, job.attempt), Instant::now())
        {
            return None;
        }
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let event = Arc::new(Event {
            id: format!("{}-{seq}", self.epoch),
            kind,
            at,
            job,
            batch,
            seq,
            admission,
        });
        if self.replay > 0 {
            if ring.kept.len() >= self.replay {
                ring.kept.pop_front();
            }
            ring.kept.push_back(event.clone());
        }
        // Sent under the lock so the channel's order is the numbering's,
        // which `subscribe_after` relies on. No listener is not an error.
        let _ = self.sender.send(event.clone());
        Some(event)
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// Live events, preceded by the kept events after `last_event_id` (as
    /// sent back by a reconnecting client), with no gap or repeat between
    /// the two. `Err` for an id this hub could never have given out.
    pub fn subscribe_after(&self, last_event_id: &str) -> Result<Resumption, String> {
        let (epoch, seq) = last_event_id
            .rsplit_once('-')
            // Epochs are numbers too: `abc-1` was never given out by any
            // process and is refused rather than taken for a restart.
            .filter(|(epoch, _)| !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(epoch, seq)| Some((epoch, seq.parse::<u64>().ok()?)))
            .ok_or_else(|| format!("`{last_event_id}` is not an event id of this service"))?;
        let ring = self
            .ring
            .lock()
            .map_err(|_| "the event buffer is unavailable".to_owned())?;
        // Subscribing under the lock: every event numbered after this
        // snapshot reaches the receiver, none before it does.
        let receiver = self.sender.subscribe();
        let oldest_kept = ring.kept.front().map(|event| event.id.clone());
        if epoch != &*self.epoch || seq >= ring.next_seq {
            let replay = ring.kept.iter().cloned().collect();
            let resume = Resume::Gap {
                reason: "restarted",
                oldest_kept,
            };
            return Ok((replay, resume, receiver));
        }
        let first_kept = ring.kept.front().map_or(ring.next_seq, |event| event.seq);
        let replay = ring
            .kept
            .iter()
            .filter(|event| event.seq > seq)
            .cloned()
            .collect();
        let resume = if seq + 1 < first_kept {
            Resume::Gap {
                reason: "too_old",
                oldest_kept,
            }
        } else {
            Resume::Complete
        };
        Ok((replay, resume, receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TENANT_DEFAULT;

    fn batch_event(hub: &EventHub) {
        hub.publish(
            EventKind::BatchFinished,
            Subject::Batch(BatchSummary {
                id: BatchId::new(),
                status: BatchStatus::Succeeded,
                counts: BatchCounts::default(),
                finished_at: None,
                tenant: TENANT_DEFAULT.to_owned(),
            }),
        );
    }

    fn job(id: JobId, status: JobState, attempt: u32) -> JobSummary {
        JobSummary {
            id,
            queue: "default".to_owned(),
            kind: "noop".to_owned(),
            status,
            attempt,
            max_attempts: 3,
            batch_id: None,
            progress: None,
            result: None,
            result_omitted: false,
            error: None,
            tenant: TENANT_DEFAULT.to_owned(),
        }
    }

    fn kinds(live: &mut broadcast::Receiver<Arc<Event>>) -> Vec<&'static str> {
        std::iter::from_fn(|| live.try_recv().ok())
            .map(|event| event.kind.as_str())
            .collect()
    }

    #[test]
    fn a_shared_mode_hub_records_a_jobs_queued_once_whichever_copy_comes_first() {
        let hub = EventHub::new(100);
        hub.dedupe_queued();
        let mut live = hub.subscribe();
        let id = JobId::new();
        // The claimant's own copy first, then the admitting instance's.
        hub.publish_admission(job(id, JobState::Queued, 0));
        hub.publish(
            EventKind::Started,
            Subject::Job(job(id, JobState::Running, 1)),
        );
        let relayed = Event {
            id: "1-1".to_owned(),
            kind: EventKind::Queued,
            at: Timestamp::now(),
            job: Some(job(id, JobState::Queued, 0)),
            batch: None,
            seq: 1,
            admission: true,
        };
        hub.publish_relayed(relayed.clone());
        // A later attempt's `job.queued` is another event.
        hub.publish(
            EventKind::Queued,
            Subject::Job(job(id, JobState::Queued, 1)),
        );
        // So is a manual retry's, although it starts again at attempt 0.
        hub.publish(
            EventKind::Failed,
            Subject::Job(job(id, JobState::Failed, 2)),
        );
        hub.publish(
            EventKind::Queued,
            Subject::Job(job(id, JobState::Queued, 0)),
        );
        assert_eq!(
            kinds(&mut live),
            [
                "job.queued",
                "job.started",
                "job.queued",
                "job.failed",
                "job.queued"
            ]
        );

        // Without de-duplication (one instance) every publication counts.
        let single = EventHub::new(100);
        let mut live = single.subscribe();
        single.publish_admission(job(id, JobState::Queued, 0));
        single.publish_relayed(relayed);
        assert_eq!(kinds(&mut live), ["job.queued", "job.queued"]);
    }

    #[test]
    fn events_carry_small_results_and_say_when_one_was_left_out() {
        let small = serde_json::json!({"n": 1});
        assert_eq!(
            event_result(JobState::Succeeded, Some(&small)),
            (Some(small.clone()), false)
        );
        assert_eq!(event_result(JobState::Failed, Some(&small)), (None, false));
        let large = Value::String("x".repeat(9 * 1024));
        assert_eq!(
            event_result(JobState::Succeeded, Some(&large)),
            (None, true)
        );
    }

    #[test]
    fn a_resume_replays_what_followed_and_says_when_some_is_gone() {
        let hub = EventHub::new(3);
        let mut live = hub.subscribe();
        for _ in 0..5 {
            batch_event(&hub);
        }
        let ids: Vec<String> = (0..5)
            .map(|_| live.try_recv().unwrap().id.clone())
            .collect();

        let (replay, resume, _) = hub.subscribe_after(&ids[2]).unwrap();
        assert_eq!(resume, Resume::Complete);
        assert_eq!(
            replay.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            ids[3..]
        );

        // Only the last three are kept: after the first, the second is gone.
        let (replay, resume, _) = hub.subscribe_after(&ids[0]).unwrap();
        assert_eq!(
            resume,
            Resume::Gap {
                reason: "too_old",
                oldest_kept: Some(ids[2].clone())
            }
        );
        assert_eq!(replay.len(), 3);
        // After the second, nothing is missing.
        let (_, resume, _) = hub.subscribe_after(&ids[1]).unwrap();
        assert_eq!(resume, Resume::Complete);

        let (replay, resume, mut after) = hub.subscribe_after("1-3").unwrap();
        assert!(matches!(
            resume,
            Resume::Gap {
                reason: "restarted",
                ..
            }
        ));
        assert_eq!(replay.len(), 3);
        batch_event(&hub);
        assert!(after.try_recv().is_ok(), "live events follow the replay");
        assert!(hub.subscribe_after("nonsense").is_err());
        assert!(hub.subscribe_after("abc-1").is_err());
        assert!(hub.subscribe_after("-1").is_err());
    }
}
