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
/// Least time between two prunes of a full map.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct ReadyClock {
    ready_since: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    since: HashMap<JobId, Instant>,
    /// When the map was last pruned: at most once a second, since a prune
    /// walks every entry (a paused queue fills the map with jobs that stay).
    pruned_at: Option<Instant>,
}

impl ReadyClock {
    /// Notes that `id` became ready now.
    pub fn ready(&self, ids: impl IntoIterator<Item = JobId>) {
        let Ok(mut remembered) = self.ready_since.lock() else {
            return;
        };
        let now = Instant::now();
        for id in ids {
            if remembered.since.len() >= MAX_REMEMBERED {
                let due = remembered
                    .pruned_at
                    .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY);
                if !due {
                    return;
                }
                remembered.pruned_at = Some(now);
                remembered
                    .since
                    .retain(|_, since| now.duration_since(*since) < FORGET_AFTER);
                if remembered.since.len() >= MAX_REMEMBERED {
                    return;
                }
            }
            remembered.since.insert(id, now);
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
            .and_then(|mut remembered| remembered.since.remove(&job.id));
        match noted {
            Some(since) if job.attempt == 1 => since.elapsed(),
            _ => {
                let waited_ms = Timestamp::now().as_millis() - job.run_at.as_millis();
                Duration::from_millis(waited_ms.max(0) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_clock_stops_noting_instead_of_walking_itself_at_every_job() {
        let clock = ReadyClock::default();
        clock.ready((0..MAX_REMEMBERED).map(|_| JobId::new()));
        let started = Instant::now();
        // Each would walk 100 000 entries if the prune were not rate-limited.
        clock.ready((0..10_000).map(|_| JobId::new()));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let remembered = clock.ready_since.lock().map(|r| r.since.len()).unwrap_or(0);
        assert_eq!(remembered, MAX_REMEMBERED);
    }
}
