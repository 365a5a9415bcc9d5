//! The in-process stream of job and batch events.
//! benchmarks, and later SSE and webhooks).

use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::{JobId, JobState, Timestamp};

/// Events a listener may fall behind by before it is told it lagged: the
/// engine never waits for listeners.
const EVENT_BUFFER: usize = 16_384;

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "job.queued")]
    Queued,
    #[serde(rename = "job.started")]
    Started,
    #[serde(rename = "job.retrying")]
    Retrying,
    #[serde(rename = "job.succeeded")]
    Succeeded,
    #[serde(rename = "job.failed")]
    Failed,
    #[serde(rename = "job.cancelled")]
    Cancelled,
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
}

#[derive(Clone, Debug, Serialize)]
pub struct JobEvent {
    pub kind: EventKind,
    pub job_id: JobId,
    pub queue: String,
    pub status: JobState,
    pub at: Timestamp,
}

/// A broadcast of job events. Sending never blocks: slow listeners lag.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<JobEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl EventHub {
    pub fn publish(&self, event: JobEvent) {
        // No listener is not an error.
        let _ = self.sender.send(event);
    }

    /// Whether anyone listens: spares building events nobody reads.
    pub fn has_listeners(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.sender.subscribe()
    }
}
