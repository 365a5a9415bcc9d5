//! Jobs per queue and state (`queue_counts`) and each tenant's waiting jobs
//! (`tenant_pending`): the changes of one group commit, gathered by the
//! statements that make them and applied once at its end.
//!
//! Every statement of the writer that inserts a job or changes its state
//! tells these counts. A trigger did it for state changes before: it cost
//! each changed row two more updates and a trigger program (about a tenth
//! of a claim and an outcome, measured over a drain), where the writer
//! applies one UPDATE per queue and state per group. Deletes (prune) still
//! count by trigger: they are few and come in chunks, and only of finished
//! jobs, which no tenant counts. A tenant's waiting jobs were counted from
//! an index, whose entry every job paid for on admission and on its claim.

use rusqlite::{Connection, params};

use crate::domain::{JobState, NewJob};
use crate::store::StoreError;

#[derive(Default)]
pub struct Counts {
    /// ((queue, state), change): a group touches few, so a scan finds one
    /// without allocating a key.
    deltas: Vec<((String, JobState), i64)>,
    /// (tenant, change) of scheduled and queued jobs.
    waiting: Vec<(String, i64)>,
}

/// Adds `n` to the entry `is` finds, or to a new one `key` makes.
fn bump<K>(entries: &mut Vec<(K, i64)>, is: impl Fn(&K) -> bool, key: impl FnOnce() -> K, n: i64) {
    match entries.iter_mut().find(|(k, _)| is(k)) {
        Some((_, total)) => *total += n,
        None => entries.push((key(), n)),
    }
}

/// What a tenant's `max_pending` counts.
fn is_waiting(state: JobState) -> bool {
    matches!(state, JobState::Scheduled | JobState::Queued)
}

impl Counts {
    /// Jobs inserted.
    pub fn add(&mut self, jobs: &[NewJob]) {
        for job in jobs {
            self.change(&job.queue, job.state, 1);
            if is_waiting(job.state) {
                self.wait(&job.tenant, 1);
            }
        }
    }

    /// One job of `queue` and `tenant` moved from `from` to `to`.
    pub fn moved(&mut self, queue: &str, tenant: &str, from: JobState, to: JobState) {
        if from == to {
            return;
        }
        self.change(queue, from, -1);
        self.change(queue, to, 1);
        match (is_waiting(from), is_waiting(to)) {
            (true, false) => self.wait(tenant, -1),
            (false, true) => self.wait(tenant, 1),
            _ => {}
        }
    }

    fn wait(&mut self, tenant: &str, n: i64) {
        bump(&mut self.waiting, |t| t == tenant, || tenant.to_owned(), n);
    }

    /// The change to `tenant`'s waiting jobs made in this group, not yet in
    /// the table.
    pub fn pending_of(&self, tenant: &str) -> i64 {
        self.waiting
            .iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, n)| n)
            .sum()
    }

    fn change(&mut self, queue: &str, state: JobState, n: i64) {
        bump(
            &mut self.deltas,
            |(q, s)| *s == state && q == queue,
            || (queue.to_owned(), state),
            n,
        );
    }

    /// The change to jobs of `queue` in `state` made in this group, not yet
    /// in the table.
    pub fn pending(&self, queue: &str, state: JobState) -> i64 {
        self.deltas
            .iter()
            .filter(|((q, s), _)| *s == state && q == queue)
            .map(|(_, n)| n)
            .sum()
    }

    /// Jobs of `queue` in `state` as this group sees them: committed, plus
    /// the group's changes not yet written.
    pub fn seen(&self, conn: &Connection, queue: &str, state: JobState) -> Result<i64, StoreError> {
        let committed: i64 = conn
            .prepare_cached(
                "SELECT coalesce((SELECT n FROM queue_counts WHERE queue = ? AND state = ?), 0)",
            )?
            .query_row(params![queue, state.as_str()], |row| row.get(0))?;
        Ok(committed + self.pending(queue, state))
    }

    /// Applies the changes; part of the group's transaction.
    pub fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let mut update =
            conn.prepare_cached("UPDATE queue_counts SET n = n + ? WHERE queue = ? AND state = ?")?;
        for ((queue, state), n) in self.deltas.drain(..) {
            if n != 0 {
                update.execute(params![n, queue, state.as_str()])?;
            }
        }
        let mut wait = conn.prepare_cached(
            "INSERT INTO tenant_pending (tenant, n) VALUES (?, ?) \
             ON CONFLICT (tenant) DO UPDATE SET n = n + excluded.n",
        )?;
        for (tenant, n) in self.waiting.drain(..) {
            if n != 0 {
                wait.execute(params![tenant, n])?;
            }
        }
        Ok(())
    }
}
