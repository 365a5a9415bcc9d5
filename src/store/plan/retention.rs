//! What the store keeps and for how long, written once for both backends:
//! the statements of a prune, in the order they run, and the read of a
//! job's or a batch's latest webhook delivery.
//!
//! The SQL is the dialect both databases share: `$1`, `$2` are positional
//! on PostgreSQL and, on SQLite, named parameters numbered in order of
//! first appearance, which is the same.

use crate::domain::Timestamp;
use crate::store::WebhookOwner;

/// Rows deleted per statement and prune, so one prune never holds the
/// writer (SQLite) or its locks (PostgreSQL) for long.
pub const PRUNE_CHUNK: i64 = 5_000;

/// Which retention a prune statement's `$1` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutoff {
    /// `SPOOL_RETENTION`: finished jobs and batches, webhook records.
    Finished,
    /// The `Idempotency-Key` window.
    Keys,
}

impl Cutoff {
    /// This cut-off's time, of a prune's two.
    pub fn of(self, finished_before: Timestamp, keys_before: Timestamp) -> Timestamp {
        match self {
            Cutoff::Finished => finished_before,
            Cutoff::Keys => keys_before,
        }
    }
}

/// One statement of a prune: `$1` the cut-off (ms), and `$2` the chunk when
/// `chunked`.
pub struct PruneStep {
    pub sql: &'static str,
    pub cutoff: Cutoff,
    pub chunked: bool,
}

/// A prune, in order; the first statement's row count is the number of jobs
/// pruned. A batch's jobs are kept as long as the batch: a batch still
/// running (or finished recently) must keep every result it counts, even of
/// jobs that finished long ago. Terminal jobs are in no queue count, so
/// deleting them touches no counter. `LIMIT CAST(… AS BIGINT)`: with a bare
/// parameter SQLite prepares the statement again at every run.
pub const PRUNE: [PruneStep; 5] = [
    PruneStep {
        sql: "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
              WHERE finished_at IS NOT NULL AND finished_at < $1 \
              AND (batch_id IS NULL OR EXISTS (SELECT 1 FROM batches b \
                   WHERE b.id = jobs.batch_id \
                   AND b.finished_at IS NOT NULL AND b.finished_at < $1)) \
              LIMIT CAST($2 AS BIGINT))",
        cutoff: Cutoff::Finished,
        chunked: true,
    },
    PruneStep {
        sql: "DELETE FROM idempotency_keys WHERE created_at < $1",
        cutoff: Cutoff::Keys,
        chunked: false,
    },
    // Deliveries end within hours; their records go with the retention.
    PruneStep {
        sql: "DELETE FROM webhooks WHERE created_at < $1",
        cutoff: Cutoff::Finished,
        chunked: false,
    },
    // A rate-limit key whose budget has been full again (and no hold in
    // force) since the cut-off is the same as no row: its row goes, so
    // keys used once cost nothing after a day.
    PruneStep {
        sql: "DELETE FROM rate_limit_keys WHERE tat_us < $1 * 1000 AND held_until_us < $1 * 1000",
        cutoff: Cutoff::Keys,
        chunked: false,
    },
    // Then the batches whose jobs are all gone.
    PruneStep {
        sql: "DELETE FROM batches WHERE id IN (SELECT id FROM batches b \
              WHERE finished_at IS NOT NULL AND finished_at < $1 \
              AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.batch_id = b.id) \
              LIMIT CAST($2 AS BIGINT))",
        cutoff: Cutoff::Finished,
        chunked: true,
    },
];

/// The read of the latest webhook delivery of `owner` (`$1` its id, `$2`
/// the tenant), and the id to bind. `insertion_order` is the column that
/// orders rows inserted in the same millisecond.
pub fn latest_delivery(owner: WebhookOwner, insertion_order: &str) -> (String, String) {
    let (column, id) = match owner {
        WebhookOwner::Job(id) => ("job_id", id.to_string()),
        WebhookOwner::Batch(id) => ("batch_id", id.to_string()),
    };
    let sql = format!(
        "SELECT id, event, status, attempts, last_error, last_attempt_at, next_attempt_at, \
         delivered_at FROM webhooks WHERE {column} = $1 AND tenant = $2 \
         ORDER BY created_at DESC, {insertion_order} DESC LIMIT 1"
    );
    (sql, id)
}
