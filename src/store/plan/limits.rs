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

/// One claim's view of the limits its candidates name. Looked up by
/// borrowed names: a claim walks one candidate after another, and nothing
/// is allocated for a key met again.
#[derive(Debug)]
pub struct Limiter {
    now_us: i64,
    limits: HashMap<String, LimitEntry>,
    /// The earliest instant a key found without budget gets some back.
    next_eligible_us: Option<i64>,
}

#[derive(Debug)]
struct LimitEntry {
    /// `None`: the limit was deleted, and its jobs start unlimited.
    gcra: Option<Gcra>,
    keys: HashMap<String, KeyEntry>,
}

#[derive(Debug, Default)]
struct KeyEntry {
    state: KeyState,
    /// Jobs admitted so far, by a hash of their id: a re-read of the same
    /// job (a fair claim's refill) is not counted twice. (Two ids with one
    /// hash would count as one: a start not made, never one too many.)
    admitted: HashSet<u64>,
}

impl Limiter {
    pub fn new(now: Timestamp) -> Self {
        Self {
            now_us: micros(now),
            limits: HashMap::new(),
            next_eligible_us: None,
        }
    }

    /// Whether the limit `name` still has to be loaded.
    pub fn knows_limit(&self, name: &str) -> bool {
        self.limits.contains_key(name)
    }

    pub fn load_limit(&mut self, name: &str, gcra: Option<Gcra>) {
        self.limits.insert(
            name.to_owned(),
            LimitEntry {
                gcra,
                keys: HashMap::new(),
            },
        );
    }

    /// Whether the key still has to be loaded (its limit first).
    pub fn knows_key(&self, name: &str, key: &str) -> bool {
        self.limits
            .get(name)
            .is_some_and(|limit| limit.keys.contains_key(key))
    }

    /// A key's stored state (`None` when it has no row: a fresh budget),
    /// after its limit's.
    pub fn load_key(&mut self, name: &str, key: &str, state: Option<KeyState>) {
        if let Some(limit) = self.limits.get_mut(name) {
            limit.keys.insert(
                key.to_owned(),
                KeyEntry {
                    state: state.unwrap_or_default(),
                    admitted: HashSet::new(),
                },
            );
        }
    }

    /// Whether job `id`, limited by `key` of limit `name`, may start now,
    /// counting the jobs admitted before it in this claim. Its limit and
    /// key must be loaded.
    pub fn admit(&mut self, id: &str, name: &str, key: &str) -> bool {
        let Some(limit) = self.limits.get_mut(name) else {
            return true;
        };
        let Some(gcra) = limit.gcra else {
            return true;
        };
        let Some(entry) = limit.keys.get_mut(key) else {
            return true;
        };
        let id_hash = hash_of(id);
        if entry.admitted.contains(&id_hash) {
            return true;
        }
        let taken = u32::try_from(entry.admitted.len()).unwrap_or(u32::MAX);
        match gcra.fits(
            entry.state.tat_us,
            entry.state.held_until_us,
            taken,
            self.now_us,
        ) {
            Ok(()) => {
                entry.admitted.insert(id_hash);
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

    /// The new state of each key the `taken` jobs spent budget of, in one
    /// order for every claim.
    pub fn spent(&self, taken: &[Job]) -> Vec<(LimitKey, i64)> {
        let mut per_key: HashMap<(&str, &str), u32> = HashMap::new();
        for job in taken {
            if let Some(limit) = &job.rate_limit {
                *per_key
                    .entry((limit.name.as_str(), limit.stored_key()))
                    .or_default() += 1;
            }
        }
        let mut spent: Vec<(LimitKey, i64)> = per_key
            .into_iter()
            .filter_map(|((name, key), n)| {
                let limit = self.limits.get(name)?;
                let gcra = limit.gcra?;
                let state = limit
                    .keys
                    .get(key)
                    .map(|entry| entry.state)
                    .unwrap_or_default();
                let tat_us = gcra.advance(state.tat_us, n, self.now_us);
                Some(((name.to_owned(), key.to_owned()), tat_us))
            })
            .collect();
        spent.sort();
        spent
    }

    /// When a key that turned a job away gets budget back: the instant the
    /// dispatcher must look again, whatever else happens.
    pub fn next_eligible_at(&self) -> Option<Timestamp> {
        self.next_eligible_us.map(from_micros_ceil)
    }
}

fn hash_of(id: &str) -> u64 {
    use std::hash::Hasher;
    // Fixed keys: the same id must hash alike across the claim's reads.
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(id.as_bytes());
    hasher.finish()
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
        limiter.load_key("api", "a", None);
        assert!(limiter.admit("1", "api", "a"));
        assert!(limiter.admit("2", "api", "a"));
        assert!(!limiter.admit("3", "api", "a"));
        // 10/s from a full burst of 2 at t = 10 s: the third fits 100 ms on.
        assert_eq!(
            limiter.next_eligible_at(),
            Some(Timestamp::from_millis(10_100))
        );
    }

    #[test]
    fn another_key_keeps_its_own_budget() {
        let mut limiter = limiter(1);
        limiter.load_key("api", "a", None);
        limiter.load_key("api", "b", None);
        assert!(limiter.admit("1", "api", "a"));
        assert!(!limiter.admit("2", "api", "a"));
        assert!(limiter.admit("3", "api", "b"));
    }

    #[test]
    fn a_job_read_twice_is_counted_once() {
        let mut limiter = limiter(1);
        limiter.load_key("api", "a", None);
        assert!(limiter.admit("1", "api", "a"));
        assert!(limiter.admit("1", "api", "a"));
        assert!(!limiter.admit("2", "api", "a"));
    }

    #[test]
    fn a_deleted_limit_holds_nothing_back() {
        let mut limiter = Limiter::new(Timestamp::from_millis(0));
        limiter.load_limit("gone", None);
        limiter.load_key("gone", "", None);
        for id in ["1", "2", "3"] {
            assert!(limiter.admit(id, "gone", ""));
        }
        assert_eq!(limiter.next_eligible_at(), None);
    }

    #[test]
    fn a_stored_state_in_the_future_is_respected() {
        let mut limiter = limiter(1);
        limiter.load_key(
            "api",
            "a",
            Some(KeyState {
                tat_us: 10_050_000,
                held_until_us: 0,
            }),
        );
        assert!(!limiter.admit("1", "api", "a"));
        assert_eq!(
            limiter.next_eligible_at(),
            Some(Timestamp::from_millis(10_050))
        );
    }
}
