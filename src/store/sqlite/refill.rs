//! A group's completions stored together, and the slots they free refilled
//! in the same transaction: one claim per queue for all of them.
//!
//! Without it a freed slot went back to the dispatcher: the completion's
//! reply woke it, it sent a claim, and the claim waited for the next group.
//! Each job then cost the writer two visits and the dispatcher a probe;
//! refilled here, a job's end and its successor's start share one commit,
//! and twice as many of the slots' jobs meet in each group.

use super::claim;
use super::ops;
use super::writer::{Completed, WriteTx};
use crate::store::{Claimed, Completion, Refill};

/// Stores `completions` (as `ops::complete_all`), then claims for each
/// stored one whose `refills` entry asks: the requests of a queue and owner
/// by one claim, its jobs handed out in claim order. A completion that
/// failed claims nothing: its caller tries it again, refill included.
pub fn complete_all(
    tx: &mut WriteTx<'_>,
    completions: &[Completion],
    refills: &[Option<Refill>],
) -> Vec<Completed> {
    let stored = ops::complete_all(tx, completions);
    let mut claimed: Vec<Claimed> = (0..completions.len()).map(|_| Claimed::default()).collect();
    // Requests grouped by (queue, owner), in completion order, each group
    // claiming with its requests' freshest clock and lease.
    let mut groups: Vec<(&str, &str, Refill, Vec<usize>)> = Vec::new();
    for (n, (refill, result)) in refills.iter().zip(&stored).enumerate() {
        let Some(refill) = refill else { continue };
        if result.is_err() {
            continue;
        }
        let owner = completions[n].lease_owner.as_str();
        match groups
            .iter_mut()
            .find(|(queue, by, _, _)| *queue == refill.queue && *by == owner)
        {
            Some((_, _, latest, members)) => {
                latest.now = latest.now.max(refill.now);
                latest.lease_until = latest.lease_until.max(refill.lease_until);
                members.push(n);
            }
            None => groups.push((&refill.queue, owner, refill.clone(), vec![n])),
        }
    }
    for (
        queue,
        owner,
        Refill {
            now, lease_until, ..
        },
        members,
    ) in groups
    {
        let limit = u32::try_from(members.len()).unwrap_or(u32::MAX);
        match claim::claim(tx, queue, limit, owner, lease_until, now) {
            Ok(taken) => {
                let mut jobs = taken.jobs.into_iter();
                for &n in &members {
                    claimed[n].next_eligible_at = taken.next_eligible_at;
                    claimed[n].jobs.extend(jobs.next());
                }
            }
            Err(error) => {
                tracing::error!(%error, queue = %queue, "claiming jobs for freed slots failed");
            }
        }
    }
    stored
        .into_iter()
        .zip(claimed)
        .map(|(result, claimed)| result.map(|result| (result, claimed)))
        .collect()
}
