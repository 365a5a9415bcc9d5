//! Jobs added to each queue and state during one group commit, applied to
//! `queue_counts` once at its end.
//!
//! Updates and deletes keep `queue_counts` right through triggers. Inserts
//! are counted here instead: an insert trigger costs every submission a
//! second write and a statement journal, where one UPDATE per queue and
//! batch does the same.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::domain::{JobState, NewJob};
use crate::store::StoreError;

#[derive(Default)]
pub struct NewCounts {
    added: HashMap<(String, JobState), i64>,
}

impl NewCounts {
    pub fn add(&mut self, jobs: &[NewJob]) {
        for job in jobs {
            *self
                .added
                .entry((job.queue.clone(), job.state))
                .or_default() += 1;
        }
    }

    /// Jobs of `queue` in `state` inserted in this batch, not yet in the table.
    pub fn pending(&self, queue: &str, state: JobState) -> i64 {
        // Few entries per batch: a scan avoids allocating a key to look up.
        self.added
            .iter()
            .filter(|((q, s), _)| q == queue && *s == state)
            .map(|(_, n)| n)
            .sum()
    }

    /// Applies the counts; part of the batch's transaction.
    pub fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let mut update =
            conn.prepare_cached("UPDATE queue_counts SET n = n + ? WHERE queue = ? AND state = ?")?;
        for ((queue, state), n) in self.added.drain() {
            update.execute(params![n, queue, state.as_str()])?;
        }
        Ok(())
    }
}
