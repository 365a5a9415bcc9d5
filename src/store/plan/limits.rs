//! Rate limits at claim time, decided alike by both backends: which of the
//! candidates a claim walks past may start now, and what each key's state
//! becomes once the claim has taken its jobs.
//!
//! The backends load what the limiter asks for — a limit's parameters, a
//! key's stored state — under whatever lock makes the read final (SQLite's
//! single writer; on PostgreSQL a transaction-level advisory lock per key,
//! taken in sorted order). The limiter then decides in two steps:
//!
//! 1. While the claim walks candidates, `admit` counts each admitted job
//!    against its key as if every candidate were taken. A claim that reads
//!    more candidates than it takes (fair rounds) may leave budget unused
//!    for a moment, never spend more than there is.
//! 2. Once the claim knows which jobs it took (those its UPDATE returned),
//!    `spent` gives each key's new state from those alone.

use std::collections::{HashMap, HashSet};

use crate::domain::{Gcra, Job, Timestamp, from_micros_ceil, micros};
pub use crate::domain::{KeyState, LimitKey};

/// One claim's view of the limits its candidates name.
#[derive(Debug)]
pub struct Limiter {
    now_us: i64,
    /// `None`: the limit was deleted, and its jobs start unlimited.
    limits: HashMap<String, Option<Gcra>>,
    keys: HashMap<LimitKey, KeyState>,
    /// Jobs admitted so far, per key, by id: a re-read of the same job
    /// (a fair claim's refill) is not counted twice.
    admitted: HashMap<LimitKey, HashSet<String>>,
    /// The earliest instant a key found without budget gets some back.
    next_eligible_us: Option<i64>,
}

impl Limiter {
    pub fn new(now: Timestamp) -> Self {
        Self {
            now_us: micros(now),
            limits: HashMap::new(),
            keys: HashMap::new(),
            admitted: HashMap::new(),
            next_eligible_us: None,
        }
    }

    /// Whether the limit `name` still has to be loaded.
    pub fn knows_limit(&self, name: &str) -> bool {
        self.limits.contains_key(name)
    }

    pub fn load_limit(&mut self, name: &str, gcra: Option<Gcra>) {
        self.limits.insert(name.to_owned(), gcra);
    }

    /// Whether the key still has to be loaded.
    pub fn knows_key(&self, key: &LimitKey) -> bool {
        self.keys.contains_key(key)
    }

    /// A key's stored state; `None` when it has no row (a fresh budget).
    pub fn load_key(&mut self, key: LimitKey, state: Option<KeyState>) {
        self.keys.insert(key, state.unwrap_or_default());
    }

    /// Whether job `id`, limited by `key`, may start now, counting the jobs
    /// admitted before it in this claim. Its limit and key must be loaded.
    pub fn admit(&mut self, id: &str, key: &LimitKey) -> bool {
        let Some(Some(gcra)) = self.limits.get(&key.0) else {
            return true;
        };
        let admitted = self.admitted.entry(key.clone()).or_default();
        if admitted.contains(id) {
            return true;
        }
        let state = self.keys.get(key).copied().unwrap_or_default();
        let taken = u32::try_from(admitted.len()).unwrap_or(u32::MAX);
        match gcra.fits(state.tat_us, state.held_until_us, taken, self.now_us) {
            Ok(()) => {
                admitted.insert(id.to_owned());
                true
            }
            Err(eligible_us) => {
                self.next_eligible_us = Some(
                    self.next_eligible_us
                        .map_or(eligible_us, |next| next.min(eligible_us)),
                );
                false
            }
        }
    }

    /// The new state of each key the `taken` jobs spent budget of.
    pub fn spent(&self, taken: &[Job]) -> Vec<(LimitKey, i64)> {
        let mut per_key: HashMap<LimitKey, u32> = HashMap::new();
        for job in taken {
            if let Some(limit) = &job.rate_limit {
                *per_key
                    .entry((limit.name.clone(), limit.stored_key().to_owned()))
                    .or_default() += 1;
            }
        }
        let mut spent: Vec<(LimitKey, i64)> = per_key
            .into_iter()
            .filter_map(|(key, n)| {
                let Some(Some(gcra)) = self.limits.get(&key.0) else {
                    return None;
                };
                let state = self.keys.get(&key).copied().unwrap_or_default();
                Some((key, gcra.advance(state.tat_us, n, self.now_us)))
            })
            .collect();
        // Written in one order by every claim.
        spent.sort();
        spent
    }

    /// When a key that turned a job away gets budget back: the instant the
    /// dispatcher must look again, whatever else happens.
    pub fn next_eligible_at(&self) -> Option<Timestamp> {
        self.next_eligible_us.map(from_micros_ceil)
    }
}

/// How a changed limit carries over what its keys spent: each key's debt
/// (how far its `tat` lies ahead) counts in the new interval instead of the
/// old (`ratio`), at most a whole emptied burst of the new limit (`cap_us`).
/// A raised limit frees waiting keys at once; a lowered one holds them to
/// the new pace from the next claim on, never overspending it.
pub fn rescale(before: Gcra, after: Gcra) -> (f64, i64) {
    let ratio = after.interval_us() as f64 / before.interval_us() as f64;
    let cap_us = after
        .interval_us()
        .saturating_mul(i64::from(after.burst.max(1)));
    (ratio, cap_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, key: &str) -> LimitKey {
        (name.to_owned(), key.to_owned())
    }

    fn limiter(burst: u32) -> Limiter {
        let mut limiter = Limiter::new(Timestamp::from_millis(10_000));
        limiter.load_limit(
            "api",
            Some(Gcra {
                rate: 10,
                per_ms: 1_000,
                burst,
            }),
        );
        limiter
    }

    #[test]
    fn a_key_admits_its_burst_then_turns_jobs_away_until_it_refills() {
        let mut limiter = limiter(2);
        limiter.load_key(key("api", "a"), None);
        assert!(limiter.admit("1", &key("api", "a")));
        assert!(limiter.admit("2", &key("api", "a")));
        assert!(!limiter.admit("3", &key("api", "a")));
        // 10/s from a full burst of 2 at t = 10 s: the third fits 100 ms on.
        assert_eq!(
            limiter.next_eligible_at(),
            Some(Timestamp::from_millis(10_100))
        );
    }

    #[test]
    fn another_key_keeps_its_own_budget() {
        let mut limiter = limiter(1);
        limiter.load_key(key("api", "a"), None);
        limiter.load_key(key("api", "b"), None);
        assert!(limiter.admit("1", &key("api", "a")));
        assert!(!limiter.admit("2", &key("api", "a")));
        assert!(limiter.admit("3", &key("api", "b")));
    }

    #[test]
    fn a_job_read_twice_is_counted_once() {
        let mut limiter = limiter(1);
        limiter.load_key(key("api", "a"), None);
        assert!(limiter.admit("1", &key("api", "a")));
        assert!(limiter.admit("1", &key("api", "a")));
        assert!(!limiter.admit("2", &key("api", "a")));
    }

    #[test]
    fn a_deleted_limit_holds_nothing_back() {
        let mut limiter = Limiter::new(Timestamp::from_millis(0));
        limiter.load_limit("gone", None);
        limiter.load_key(key("gone", ""), None);
        for id in ["1", "2", "3"] {
            assert!(limiter.admit(id, &key("gone", "")));
        }
        assert_eq!(limiter.next_eligible_at(), None);
    }

    #[test]
    fn a_stored_state_in_the_future_is_respected() {
        let mut limiter = limiter(1);
        limiter.load_key(
            key("api", "a"),
            Some(KeyState {
                tat_us: 10_050_000,
                held_until_us: 0,
            }),
        );
        assert!(!limiter.admit("1", &key("api", "a")));
        assert_eq!(
            limiter.next_eligible_at(),
            Some(Timestamp::from_millis(10_050))
        );
    }
}
