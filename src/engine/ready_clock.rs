//! When jobs admitted here became ready, to the microsecond: the queue-wait
//! histogram must resolve the sub-millisecond wait of an idle worker pool,
//! and stored times are in milliseconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{Job, JobId, Timestamp};

/// Most jobs remembered; beyond it, waits are measured from stored times.
const MAX_REMEMBERED: usize = 100_000;
/// A job not started here within this long (claimed by another instance,
/// cancelled, its queue paused) is forgotten when room is needed.
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct ReadyClock {
    ready_since: Mutex<HashMap<JobId, Instant>>,
}

impl ReadyClock {
    /// Notes that `id` became ready now.
    pub fn ready(&self, ids: impl IntoIterator<Item = JobId>) {
        let Ok(mut ready_since) = self.ready_since.lock() else {
            return;
        };
        let now = Instant::now();
        for id in ids {
            if ready_since.len() >= MAX_REMEMBERED {
                ready_since.retain(|_, since| now.duration_since(*since) < FORGET_AFTER);
                if ready_since.len() >= MAX_REMEMBERED {
                    return;
                }
            }
            ready_since.insert(id, now);
        }
    }

    /// How long `job` waited between becoming ready and now: from the noted
    /// instant when it was admitted here, else from its stored `run_at`
    /// (to the millisecond).
    pub fn waited(&self, job: &Job) -> Duration {
        let noted = self
            .ready_since
            .lock()
            .ok()
            .and_then(|mut ready_since| ready_since.remove(&job.id));
        match noted {
            Some(since) if job.attempt == 1 => since.elapsed(),
            _ => {
                let waited_ms = Timestamp::now().as_millis() - job.run_at.as_millis();
                Duration::from_millis(waited_ms.max(0) as u64)
            }
        }
    }
}
