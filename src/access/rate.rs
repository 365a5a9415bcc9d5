//! `submit_rate` and `submit_burst`: how fast each API key may submit jobs.
//!
//! GCRA (the generic cell rate algorithm, a token bucket kept as one
//! number): each key has a theoretical arrival time `tat`; a job costs one
//! emission interval `1 / rate`; a request for `n` jobs is let in when
//! `max(tat, now) + n / rate` stays within `burst / rate` of now, and then
//! moves `tat` there. A batch takes all its jobs' tokens or none.
//!
//! In memory, per instance: each instance enforces the rate on the requests
//! it receives (with several instances behind a balancer, a key may submit
//! up to the rate times the number of instances it reaches). Changing the
//! rate keeps each key's `tat`, so a new rate applies from the next request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::domain::KeyId;

/// Buckets kept before the idle ones (full again) are dropped.
const PRUNE_ABOVE: usize = 10_000;
/// Rounding slack of the float arithmetic, in seconds.
const EPSILON: f64 = 1e-9;

/// A rate limit as configured: jobs per second and burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    fn interval(&self) -> f64 {
        1.0 / self.per_second
    }

    /// The window `RateLimit-Policy` states: the seconds in which the whole
    /// burst comes back, at least 1.
    pub fn window_s(&self) -> u64 {
        (f64::from(self.burst) / self.per_second).ceil().max(1.0) as u64
    }
}

/// What one request was told.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateDecision {
    pub rate: Rate,
    /// Whether the request's jobs were let in (their tokens taken).
    pub allowed: bool,
    /// Jobs the key may submit now, after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again (allowed), or until the
    /// request's jobs would fit (refused).
    pub reset_s: u64,
    /// The request holds more jobs than the burst: it can never be let in.
    pub too_large: bool,
}

/// Every key's bucket, keyed by key and tenant acted in (an admin key
/// acting in several tenants has a bucket in each).
pub struct RateLimiter {
    origin: Instant,
    buckets: Mutex<HashMap<(KeyId, String), f64>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl RateLimiter {
    /// Takes `jobs` tokens from the bucket of `key` in `tenant`, or none.
    pub fn take(&self, key: KeyId, tenant: &str, rate: Rate, jobs: u64) -> RateDecision {
        let now = self.origin.elapsed().as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, tat| *tat > now);
        }
        let tat = buckets.get(&(key, tenant.to_owned())).copied();
        let (decision, tat) = decide(tat.unwrap_or(now), now, rate, jobs);
        if decision.allowed {
            buckets.insert((key, tenant.to_owned()), tat);
        }
        decision
    }
}

/// GCRA on one bucket: the decision and the bucket's new `tat`.
fn decide(tat: f64, now: f64, rate: Rate, jobs: u64) -> (RateDecision, f64) {
    let interval = rate.interval();
    let limit = f64::from(rate.burst) * interval;
    let start = tat.max(now);
    let after = start + jobs as f64 * interval;
    let remaining = |tat: f64| {
        ((limit - (tat - now)) / interval + EPSILON)
            .floor()
            .max(0.0) as u64
    };
    if after - now <= limit + EPSILON {
        let decision = RateDecision {
            rate,
            allowed: true,
            remaining: remaining(after),
            reset_s: seconds(after - now),
            too_large: false,
        };
        (decision, after)
    } else {
        let decision = RateDecision {
            rate,
            allowed: false,
            remaining: remaining(start),
            reset_s: seconds(after - now - limit).max(1),
            too_large: jobs > u64::from(rate.burst),
        };
        (decision, tat)
    }
}

fn seconds(span: f64) -> u64 {
    (span - EPSILON).ceil().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_BURST_FIVE: Rate = Rate {
        per_second: 10.0,
        burst: 5,
    };

    #[test]
    fn a_full_bucket_lets_the_burst_in_then_the_rate() {
        let mut tat = 0.0;
        for i in 0..5 {
            let (decision, next) = decide(tat, 0.0, TEN_BURST_FIVE, 1);
            assert!(decision.allowed, "job {i}");
            assert_eq!(decision.remaining, 4 - i);
            tat = next;
        }
        let (refused, same) = decide(tat, 0.0, TEN_BURST_FIVE, 1);
        assert!(!refused.allowed);
        assert_eq!(same, tat);
        assert_eq!(refused.reset_s, 1);
        // A tenth of a second later one token is back.
        let (decision, _) = decide(tat, 0.1, TEN_BURST_FIVE, 1);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 0);
    }

    #[test]
    fn a_batch_takes_all_its_tokens_or_none() {
        let (decision, tat) = decide(0.0, 0.0, TEN_BURST_FIVE, 3);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 2);
        let (refused, kept) = decide(tat, 0.0, TEN_BURST_FIVE, 3);
        assert!(!refused.allowed && !refused.too_large);
        assert_eq!(refused.remaining, 2);
        assert_eq!(kept, tat);
        let (huge, _) = decide(0.0, 0.0, TEN_BURST_FIVE, 6);
        assert!(!huge.allowed && huge.too_large);
    }

    #[test]
    fn the_policy_window_is_the_time_the_burst_takes_to_come_back() {
        assert_eq!(TEN_BURST_FIVE.window_s(), 1);
        let slow = Rate {
            per_second: 0.5,
            burst: 3,
        };
        assert_eq!(slow.window_s(), 6);
    }
}
