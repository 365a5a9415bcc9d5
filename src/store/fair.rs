//! Fair share between tenants, decided alike by both backends: which tenant
//! a claim serves first, and how the ready jobs of several tenants are
//! interleaved, round-robin by tenant and by priority then FIFO within one.
//!
//! The backends do the reading: the tenants with ready jobs in a queue (a
//! skip-scan of `jobs_ready_tenant`) and each tenant's next claimable jobs
//! (its own walk of that index, concurrency keys counted, which are per
//! tenant and so never couple two tenants' picks).

use std::collections::HashMap;
use std::sync::Mutex;

/// Most tenants one claim looks at. A queue with more tenants with ready
/// jobs is still served round-robin: the turn moves on past the tenants a
/// claim looked at, so the next claims reach the others.
pub const MAX_TENANTS: usize = 1_000;

/// The tenant each queue served last, in this process. Round-robin needs
/// only this: the next claim starts with the tenant after it (by name,
/// wrapping). Kept in memory, not in the store: writing it would put a
/// write on a row every claim of every instance contends for. With several
/// instances each rotates on its own, which keeps every tenant's share of
/// each instance's claims fair; after a restart the rotation starts again
/// from the first tenant by name, costing a tenant at most one turn.
#[derive(Default)]
pub struct Turns {
    last_served: Mutex<HashMap<String, String>>,
}

impl Turns {
    /// The tenant `queue` served last, if any.
    pub fn last_served(&self, queue: &str) -> Option<String> {
        self.lock().get(queue).cloned()
    }

    /// Records that a claim of `queue` served `tenant` last.
    pub fn served(&self, queue: &str, tenant: &str) {
        let mut last_served = self.lock();
        match last_served.get_mut(queue) {
            Some(last) => tenant.clone_into(last),
            None => {
                last_served.insert(queue.to_owned(), tenant.to_owned());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // The map is consistent after every statement: a panic elsewhere
        // while it was held leaves nothing half-written.
        self.last_served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The order a claim visits tenants in, from two reads of the queue's
/// tenants in the database's order: `after`, those after the tenant served
/// last, and `from_start`, those from the first. The second read is cut
/// where the first began, so the tenant served last comes last; comparing
/// names here could disagree with the database's collation.
pub fn rotation(mut after: Vec<String>, from_start: Vec<String>) -> Vec<String> {
    let wrapped: Vec<String> = match after.first() {
        Some(first) => from_start
            .into_iter()
            .take_while(|tenant| tenant != first)
            .collect(),
        None => from_start,
    };
    after.extend(wrapped);
    after
}

/// How many jobs to read for each of `tenants` tenants, so that together
/// they can fill `limit` slots in one round-robin pass. A tenant with fewer
/// jobs leaves its share to the others, read in a second pass (`refill`).
pub fn share(limit: u32, tenants: usize) -> u32 {
    let tenants = u32::try_from(tenants.max(1)).unwrap_or(u32::MAX);
    limit.div_ceil(tenants).max(1)
}

/// Whether a second, full read of each tenant's jobs could fill more slots:
/// the interleaving came short of `limit` while some tenant gave all it was
/// asked for (`share`), and so may have more.
pub fn refill<T>(picks: &[(String, Vec<T>)], share: u32, limit: u32) -> bool {
    let taken: usize = picks.iter().map(|(_, jobs)| jobs.len()).sum();
    taken < limit as usize
        && share < limit
        && picks.iter().any(|(_, jobs)| jobs.len() >= share as usize)
}

/// The claim's jobs from each tenant's candidates (in rotation order, each
/// in its own claim order): one job of each tenant per round until `limit`,
/// with the tenant served last.
pub fn interleave<T>(picks: Vec<(String, Vec<T>)>, limit: u32) -> (Vec<T>, Option<String>) {
    let limit = limit as usize;
    let mut taken = Vec::with_capacity(limit);
    let mut last = None;
    let mut queues: Vec<(String, std::vec::IntoIter<T>)> = picks
        .into_iter()
        .map(|(tenant, jobs)| (tenant, jobs.into_iter()))
        .collect();
    while taken.len() < limit {
        let before = taken.len();
        for (tenant, jobs) in &mut queues {
            if taken.len() >= limit {
                break;
            }
            if let Some(job) = jobs.next() {
                taken.push(job);
                last = Some(tenant.clone());
            }
        }
        if taken.len() == before {
            break;
        }
    }
    (taken, last)
}

/// One fair claim's reads and its decision, for both backends: they read
/// what `next_read` asks (a tenant's next claimable jobs, at most a
/// number) and hand the ids to `found`, until there is nothing more to
/// read; `finish` then interleaves them and records the turn.
pub struct Rounds {
    limit: u32,
    share: u32,
    tenants: std::vec::IntoIter<String>,
    picks: Vec<(String, Vec<String>)>,
    /// The read in flight: a new tenant's, or a refill of `picks[n]`.
    reading: Option<Read>,
    /// Second pass: the picks still to read again in full.
    refills: Option<std::vec::IntoIter<usize>>,
}

enum Read {
    Tenant(String),
    Refill(usize),
}

impl Rounds {
    /// The tenants in the order the claim visits them (`rotation`).
    pub fn new(tenants: Vec<String>, limit: u32) -> Self {
        let share = share(limit, tenants.len().min(limit as usize));
        Self {
            limit,
            share,
            tenants: tenants.into_iter(),
            picks: Vec::new(),
            reading: None,
            refills: None,
        }
    }

    /// The next read: whose jobs, and at most how many.
    pub fn next_read(&mut self) -> Option<(String, u32)> {
        if self.refills.is_none() {
            if self.picks.len() < self.limit as usize
                && let Some(tenant) = self.tenants.next()
            {
                self.reading = Some(Read::Tenant(tenant.clone()));
                return Some((tenant, self.share));
            }
            let full: Vec<usize> = if refill(&self.picks, self.share, self.limit) {
                (0..self.picks.len())
                    .filter(|n| self.picks[*n].1.len() >= self.share as usize)
                    .collect()
            } else {
                Vec::new()
            };
            self.refills = Some(full.into_iter());
        }
        let n = self.refills.as_mut()?.next()?;
        self.reading = Some(Read::Refill(n));
        Some((self.picks[n].0.clone(), self.limit))
    }

    /// What the last read found, in claim order.
    pub fn found(&mut self, ids: Vec<String>) {
        match self.reading.take() {
            Some(Read::Tenant(tenant)) if !ids.is_empty() => self.picks.push((tenant, ids)),
            Some(Read::Refill(n)) => self.picks[n].1 = ids,
            _ => {}
        }
    }

    /// The jobs to take, round-robin; records the tenant served last.
    pub fn finish(self, turns: &Turns, queue: &str) -> Vec<String> {
        let (ids, last_served) = interleave(self.picks, self.limit);
        if let Some(tenant) = last_served {
            turns.served(queue, &tenant);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn the_rotation_starts_after_the_tenant_served_last() {
        assert_eq!(
            rotation(names(&["c", "d"]), names(&["a", "b", "c", "d"])),
            names(&["c", "d", "a", "b"])
        );
        assert_eq!(
            rotation(Vec::new(), names(&["a", "b", "c", "d"])),
            names(&["a", "b", "c", "d"])
        );
        // A tenant served last that has no ready job left still places the turn.
        assert_eq!(
            rotation(names(&["c"]), names(&["a", "c"])),
            names(&["c", "a"])
        );
    }

    #[test]
    fn interleaving_takes_one_job_per_tenant_per_round() {
        let picks = vec![
            ("b".to_owned(), vec![1, 2, 3]),
            ("a".to_owned(), vec![10]),
            ("c".to_owned(), vec![20, 21]),
        ];
        assert_eq!(
            interleave(picks.clone(), 5),
            (vec![1, 10, 20, 2, 21], Some("c".to_owned()))
        );
        assert_eq!(
            interleave(picks.clone(), 2),
            (vec![1, 10], Some("a".to_owned()))
        );
        assert_eq!(
            interleave(picks, 9),
            (vec![1, 10, 20, 2, 21, 3], Some("b".to_owned()))
        );
        assert_eq!(
            interleave(Vec::<(String, Vec<u8>)>::new(), 3),
            (vec![], None)
        );
    }

    #[test]
    fn rounds_read_each_tenants_share_then_refill_those_that_may_have_more() {
        let mut rounds = Rounds::new(names(&["a", "b"]), 4);
        let mut reads = Vec::new();
        let have: std::collections::HashMap<&str, Vec<String>> =
            [("a", names(&["a1"])), ("b", names(&["b1", "b2", "b3"]))]
                .into_iter()
                .collect();
        while let Some((tenant, at_most)) = rounds.next_read() {
            reads.push((tenant.clone(), at_most));
            let ids: Vec<String> = have
                .get(tenant.as_str())
                .map(|ids| ids.iter().take(at_most as usize).cloned().collect())
                .unwrap_or_default();
            rounds.found(ids);
        }
        assert_eq!(
            reads,
            [
                ("a".to_owned(), 2),
                ("b".to_owned(), 2),
                ("b".to_owned(), 4)
            ]
        );
        let turns = Turns::default();
        assert_eq!(rounds.finish(&turns, "q"), names(&["a1", "b1", "b2", "b3"]));
        assert_eq!(turns.last_served("q").as_deref(), Some("b"));
    }

    #[test]
    fn shares_cover_the_limit_and_a_short_pass_is_read_again() {
        assert_eq!(share(4, 3), 2);
        assert_eq!(share(64, 1), 64);
        assert_eq!(share(1, 5), 1);
        let picks = vec![("a".to_owned(), vec![1, 2]), ("b".to_owned(), vec![3])];
        assert!(refill(&picks, 2, 4));
        assert!(!refill(&picks, 2, 3));
        assert!(!refill(&[("a".to_owned(), vec![1])], 2, 4));
    }
}
