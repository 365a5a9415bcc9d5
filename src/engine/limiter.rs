//! Elastic concurrency: an additive-increase / multiplicative-decrease
//! limiter that sets how many jobs of an adaptive queue run at once on this
//! instance, between the queue's `min` and `max`.
//!
//! - It grows by one job per round trip (`1 / limit` per healthy attempt)
//!   while the queue is saturated (every slot taken, jobs still waiting)
//!   and no attempt still running is already slow: a slow answer is known
//!   only when it comes, and growing until then would overshoot by as many
//!   round trips as the slow answer takes.
//! - It shrinks by [`BACKOFF`] when an attempt comes back unhealthy: failed,
//!   or slower than [`SLOW_FACTOR`] times the fastest recent run, the sign
//!   that what the jobs call is overloaded. At most once per round trip,
//!   so one burst of slow answers counts as one signal, as in TCP.
//! - It halves toward `min` each [`IDLE_SHRINK`] the queue spends idle
//!   (nothing running, nothing claimed), so a burst after a quiet spell
//!   starts gently again.
//!
//! The "fastest recent run" is the minimum over two windows of
//! [`BASELINE_WINDOW`], so a target that got slower for good becomes the new
//! normal within two windows instead of shrinking the queue forever.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Multiplicative decrease on an unhealthy attempt.
pub const BACKOFF: f64 = 0.9;
/// An attempt slower than this many times the baseline is unhealthy.
pub const SLOW_FACTOR: f64 = 2.0;
/// How often an idle queue's limit halves toward `min`.
pub const IDLE_SHRINK: Duration = Duration::from_secs(1);
/// Length of each of the two windows the baseline is the minimum over.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(30);

/// One adaptive queue's limit on this instance.
#[derive(Clone, Debug)]
pub struct Limiter {
    min: u32,
    max: u32,
    limit: f64,
    /// Fastest run of the current window and of the one before.
    best: Option<Duration>,
    best_before: Option<Duration>,
    window_started: Instant,
    last_decrease: Option<Instant>,
    last_shrink: Option<Instant>,
    /// When each running attempt began (how many began at that instant).
    running: BTreeMap<Instant, u32>,
}

impl Limiter {
    /// Starts at `min`: it grows as fast as the jobs show it may.
    pub fn new(min: u32, max: u32, now: Instant) -> Self {
        let (min, max) = (min.max(1), max.max(min.max(1)));
        Self {
            min,
            max,
            limit: f64::from(min),
            best: None,
            best_before: None,
            window_started: now,
            last_decrease: None,
            last_shrink: None,
            running: BTreeMap::new(),
        }
    }

    /// An attempt began at `at`.
    pub fn started(&mut self, at: Instant) {
        *self.running.entry(at).or_default() += 1;
    }

    /// The attempt begun at `began` ended saying nothing of the limit
    /// (cancelled, handed back).
    pub fn forget(&mut self, began: Instant) {
        if let Some(count) = self.running.get_mut(&began) {
            *count -= 1;
            if *count == 0 {
                self.running.remove(&began);
            }
        }
    }

    /// Some running attempt has run longer than a healthy one takes.
    fn overdue(&self, now: Instant) -> bool {
        let (Some(best), Some((oldest, _))) = (self.baseline(), self.running.first_key_value())
        else {
            return false;
        };
        now.duration_since(*oldest).as_secs_f64() > SLOW_FACTOR * best.as_secs_f64()
    }

    /// Jobs that may run at once now.
    pub fn limit(&self) -> u32 {
        (self.limit.floor() as u32).clamp(self.min, self.max)
    }

    /// A new range (the queue was changed): the limit is kept within it.
    pub fn set_range(&mut self, min: u32, max: u32) {
        self.min = min.max(1);
        self.max = max.max(self.min);
        self.limit = self.limit.clamp(f64::from(self.min), f64::from(self.max));
    }

    /// The fastest recent run, if any was seen.
    pub fn baseline(&self) -> Option<Duration> {
        match (self.best, self.best_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The attempt begun at `began` ended at `now`; `failed` when it failed
    /// (not when it was cancelled or handed back: see `forget`).
    /// `saturated`: every slot was taken and jobs were still waiting.
    pub fn observe(&mut self, began: Instant, failed: bool, saturated: bool, now: Instant) {
        self.forget(began);
        let ran = now.duration_since(began);
        self.roll_window(now);
        let slow = self
            .baseline()
            .is_some_and(|best| ran.as_secs_f64() > SLOW_FACTOR * best.as_secs_f64());
        if !failed {
            self.best = Some(self.best.map_or(ran, |best| best.min(ran)));
        }
        if failed || slow {
            // Once per round trip: the attempts that started before the
            // last decrease say nothing about the limit it set.
            let recent = self
                .last_decrease
                .is_some_and(|at| now.duration_since(at) < ran);
            if !recent {
                self.limit = (self.limit * BACKOFF).max(f64::from(self.min));
                self.last_decrease = Some(now);
            }
            return;
        }
        if saturated && !self.overdue(now) {
            self.limit = (self.limit + 1.0 / self.limit.max(1.0)).min(f64::from(self.max));
        }
    }

    /// The queue had nothing running and nothing to claim: halves toward
    /// `min`, at most once per [`IDLE_SHRINK`].
    pub fn idle(&mut self, now: Instant) {
        if self
            .last_shrink
            .is_some_and(|at| now.duration_since(at) < IDLE_SHRINK)
        {
            return;
        }
        self.last_shrink = Some(now);
        self.limit = (self.limit / 2.0).max(f64::from(self.min));
    }

    fn roll_window(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.window_started);
        if elapsed >= BASELINE_WINDOW * 2 {
            // Quiet for two windows: nothing seen is recent.
            self.best_before = None;
            self.best = None;
            self.window_started = now;
        } else if elapsed >= BASELINE_WINDOW {
            self.best_before = self.best.take();
            self.window_started = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(50);

    /// How long the test target takes for a call that starts with `others`
    /// calls in flight: 50 ms up to `knee` at once, then three times longer
    /// for each call beyond, at most two seconds (the API test's target).
    fn answer_time(others: usize, knee: usize) -> Duration {
        match (others + 1).checked_sub(knee) {
            None | Some(0) => FAST,
            Some(beyond) => (FAST * 3u32.pow(beyond.min(4) as u32)).min(Duration::from_secs(2)),
        }
    }

    /// Runs `jobs` jobs (all waiting from the start) through a limiter of
    /// `min..=max` against the target of `answer_time`. Returns the limit
    /// after each end, and how long all took.
    fn simulate(min: u32, max: u32, knee: usize, jobs: usize) -> (Vec<u32>, Duration) {
        let start = Instant::now();
        let mut limiter = Limiter::new(min, max, start);
        let mut now = start;
        // (end, began) of each call in flight.
        let mut in_flight: Vec<(Instant, Instant)> = Vec::new();
        let (mut started, mut seen) = (0, Vec::new());
        loop {
            while started < jobs && in_flight.len() < limiter.limit() as usize {
                let ran = answer_time(in_flight.len(), knee);
                limiter.started(now);
                in_flight.push((now + ran, now));
                started += 1;
            }
            let Some(next) = (0..in_flight.len()).min_by_key(|&i| in_flight[i].0) else {
                break;
            };
            let (end, began) = in_flight.swap_remove(next);
            now = end;
            limiter.observe(began, false, started < jobs, now);
            seen.push(limiter.limit());
        }
        (seen, now.duration_since(start))
    }

    #[test]
    fn a_saturated_queue_grows_one_job_per_round_trip_up_to_its_max() {
        let (seen, _) = simulate(2, 5, usize::MAX, 200);
        assert!(seen.windows(2).all(|w| w[1] <= w[0] + 1), "{seen:?}");
        assert_eq!(seen.iter().max(), Some(&5), "{seen:?}");
        // One job per round trip: 2 to 5 within a handful of them.
        let reached = seen.iter().position(|limit| *limit == 5).unwrap();
        assert!(reached < 25, "{seen:?}");
    }

    #[test]
    fn a_queue_that_is_not_saturated_does_not_grow() {
        let start = Instant::now();
        let mut limiter = Limiter::new(2, 64, start);
        let mut now = start;
        for _ in 0..100 {
            limiter.started(now);
            now += FAST;
            limiter.observe(now - FAST, false, false, now);
        }
        assert_eq!(limiter.limit(), 2);
    }

    #[test]
    fn the_limit_settles_where_the_target_slows_down_and_beats_a_fixed_maximum() {
        let (seen, adaptive) = simulate(2, 64, 8, 3_000);
        let late = &seen[seen.len() / 2..];
        assert!(
            late.iter().all(|limit| (6..=12).contains(limit)),
            "{late:?}"
        );
        let (_, fixed) = simulate(64, 64, 8, 3_000);
        assert!(adaptive * 2 < fixed, "{adaptive:?} vs {fixed:?}");
    }

    #[test]
    fn failures_shrink_the_limit_once_per_round_trip_down_to_min() {
        let start = Instant::now();
        let mut limiter = Limiter::new(2, 64, start);
        limiter.limit = 20.0;
        let ran = Duration::from_millis(100);
        let now = start + ran;
        // A burst of failures within one round trip: one decrease.
        for _ in 0..10 {
            limiter.started(start);
            limiter.observe(start, true, true, now);
        }
        assert_eq!(limiter.limit(), 18);
        let mut now = now;
        for _ in 0..100 {
            limiter.started(now);
            now += ran;
            limiter.observe(now - ran, true, true, now);
        }
        assert_eq!(limiter.limit(), 2);
    }

    #[test]
    fn an_idle_queue_halves_toward_min_once_a_second() {
        let start = Instant::now();
        let mut limiter = Limiter::new(2, 64, start);
        limiter.limit = 12.0;
        limiter.idle(start);
        limiter.idle(start + Duration::from_millis(10));
        assert_eq!(limiter.limit(), 6);
        limiter.idle(start + Duration::from_secs(1));
        limiter.idle(start + Duration::from_secs(2));
        assert_eq!(limiter.limit(), 2);
    }

    #[test]
    fn a_target_slower_for_good_becomes_the_new_baseline_within_two_windows() {
        let start = Instant::now();
        let mut limiter = Limiter::new(2, 64, start);
        let ten = Duration::from_millis(10);
        let hundred = Duration::from_millis(100);
        limiter.observe(start, false, true, start + ten);
        let later = start + BASELINE_WINDOW + Duration::from_secs(1);
        limiter.observe(later, false, true, later + hundred);
        assert_eq!(limiter.baseline(), Some(ten));
        let latest = later + BASELINE_WINDOW + Duration::from_secs(1);
        limiter.observe(latest, false, true, latest + hundred);
        assert_eq!(limiter.baseline(), Some(hundred));
    }
}
