//! Per-queue drain rate, for the `Retry-After` of a full queue.

// tokio's clock, so that tests can move time with a paused clock.
use tokio::time::Instant;

/// Seconds of history the rate is computed over.
const WINDOW_S: usize = 10;
/// `Retry-After` when the queue has not drained recently (or is paused and
/// can't): long enough not to hammer, short enough to notice recovery.
pub const FALLBACK_RETRY_AFTER_S: u64 = 5;
const MAX_RETRY_AFTER_S: u64 = 60;

/// Jobs that left the waiting states (were claimed) per second, over the
/// last `WINDOW_S` seconds, in one-second buckets.
pub struct DrainMeter {
    origin: Instant,
    buckets: [(u64, u64); WINDOW_S],
}

impl Default for DrainMeter {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            buckets: [(u64::MAX, 0); WINDOW_S],
        }
    }
}

impl DrainMeter {
    fn second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    pub fn record(&mut self, jobs: u64) {
        let second = self.second();
        let bucket = &mut self.buckets[(second % WINDOW_S as u64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += jobs;
    }

    /// Jobs per second over the window (the current second included).
    pub fn rate(&self) -> f64 {
        let now = self.second();
        let recent: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now - second < WINDOW_S as u64)
            .map(|(_, jobs)| jobs)
            .sum();
        recent as f64 / WINDOW_S as f64
    }

    /// Seconds until `overflow` jobs have drained at the recent rate, 1..=60.
    pub fn retry_after_s(&self, overflow: u64, paused: bool) -> u64 {
        let rate = self.rate();
        if paused || rate <= 0.0 {
            return FALLBACK_RETRY_AFTER_S;
        }
        ((overflow as f64 / rate).ceil() as u64).clamp(1, MAX_RETRY_AFTER_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_forgets_jobs_older_than_the_window() {
        let mut meter = DrainMeter::default();
        meter.record(50);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        meter.record(50);
        assert_eq!(meter.rate(), 10.0);
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        assert_eq!(meter.rate(), 5.0, "the first 50 left the window");
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert_eq!(meter.rate(), 0.0);
        assert_eq!(meter.retry_after_s(1, false), FALLBACK_RETRY_AFTER_S);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_follows_the_drain_rate_and_is_bounded() {
        let mut meter = DrainMeter::default();
        assert_eq!(meter.retry_after_s(10, false), FALLBACK_RETRY_AFTER_S);
        meter.record(100); // 100 jobs over a 10 s window: 10 jobs/s
        assert_eq!(meter.retry_after_s(1, false), 1);
        assert_eq!(meter.retry_after_s(50, false), 5);
        assert_eq!(meter.retry_after_s(100_000, false), MAX_RETRY_AFTER_S);
        assert_eq!(meter.retry_after_s(1, true), FALLBACK_RETRY_AFTER_S);
    }
}
