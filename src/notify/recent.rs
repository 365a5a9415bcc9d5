//! Keys seen lately, forgotten a while after: how a hub in shared mode
//! tells a `job.queued` it already has from one arriving a second time.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Two generations of keys: a key is remembered for at least `span` and at
/// most twice that, and memory stays bounded by `max` keys per generation
/// (a busier service forgets sooner rather than growing).
pub struct Recent<K> {
    current: HashSet<K>,
    previous: HashSet<K>,
    started_at: Instant,
    span: Duration,
    max: usize,
}

impl<K: Eq + Hash> Recent<K> {
    pub fn new(span: Duration, max: usize) -> Self {
        Self {
            current: HashSet::new(),
            previous: HashSet::new(),
            started_at: Instant::now(),
            span,
            max,
        }
    }

    /// Remembers `key`; false when it was remembered already.
    pub fn insert(&mut self, key: K, now: Instant) -> bool {
        if self.current.contains(&key) || self.previous.contains(&key) {
            return false;
        }
        if now.saturating_duration_since(self.started_at) >= self.span
            || self.current.len() >= self.max
        {
            self.previous = std::mem::take(&mut self.current);
            self.started_at = now;
        }
        self.current.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_new_once_and_forgotten_after_two_spans() {
        let start = Instant::now();
        let span = Duration::from_secs(10);
        let mut recent = Recent::new(span, 1_000);
        assert!(recent.insert(1, start));
        assert!(!recent.insert(1, start + Duration::from_secs(5)));
        // A new generation begins; 1 is still remembered in the previous one.
        assert!(recent.insert(2, start + Duration::from_secs(11)));
        assert!(!recent.insert(1, start + Duration::from_secs(12)));
        // Another generation: 1 is gone, 2 is remembered.
        assert!(recent.insert(3, start + Duration::from_secs(22)));
        assert!(!recent.insert(2, start + Duration::from_secs(22)));
        assert!(recent.insert(1, start + Duration::from_secs(23)));
    }

    #[test]
    fn a_full_generation_makes_room_by_forgetting_the_oldest() {
        let now = Instant::now();
        let mut recent = Recent::new(Duration::from_secs(60), 2);
        assert!(recent.insert(1, now));
        assert!(recent.insert(2, now));
        assert!(recent.insert(3, now)); // 1 and 2 become the previous generation
        assert!(!recent.insert(1, now));
        assert!(recent.insert(4, now));
        assert!(recent.insert(5, now)); // 3 and 4 previous: 1 and 2 are gone
        assert!(recent.insert(1, now));
    }
}
