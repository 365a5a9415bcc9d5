//! Scheduled and queued jobs per queue (`queue_counts`) and per tenant
//! (`tenant_counts`): the changes of one transaction, gathered as it goes
//! and written once before it commits.
//!
//! Each transaction writes to the shard of its connection
//! (`pg_backend_pid() % 16`): two instances claiming from one queue, or a
//! claim beside a submission, seldom touch the same counter row, so neither
//! waits for the other's commit. Counters are written last in a transaction,
//! in one statement, queues' rows before tenants' and each in sorted order,
//! so they never take part in a deadlock. Running and terminal jobs are not
//! counted here (see `migrations/postgres/0001_init.sql`).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgConnection};

use crate::domain::JobState;
use crate::store::StoreError;

/// The start of a statement adding to the counts (`COUNT_INTO SELECT queue,
/// state, SHARD, n … COUNT_CONFLICT`), whether from `Counts` or from a
/// statement that counts what it changed itself (a plain claim).
pub const COUNT_INTO: &str = "INSERT INTO queue_counts (queue, state, shard, n)";
/// This connection's shard, one of 16: more than the connections that write
/// to one queue at once in most deployments, few enough that a count sums a
/// handful of rows.
pub const SHARD: &str = "pg_backend_pid() % 16";
pub const COUNT_CONFLICT: &str =
    "ON CONFLICT (queue, state, shard) DO UPDATE SET n = queue_counts.n + excluded.n";
/// The same for the tenants' counters (`TENANT_COUNT_INTO SELECT tenant,
/// SHARD, n … TENANT_COUNT_CONFLICT`).
pub const TENANT_COUNT_INTO: &str = "INSERT INTO tenant_counts (tenant, shard, n)";
pub const TENANT_COUNT_CONFLICT: &str =
    "ON CONFLICT (tenant, shard) DO UPDATE SET n = tenant_counts.n + excluded.n";

/// Adds `$1` queues, `$2` states and `$3` amounts, then `$4` tenants and
/// `$5` amounts, to this connection's shard. The tenants' insert reads the
/// queues' to its end first (the subquery in its WHERE), so every
/// transaction locks queues' counters before tenants'.
static ADD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH queued AS ({COUNT_INTO} SELECT q, s, {SHARD}, d \
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(q, s, d) {COUNT_CONFLICT} \
             RETURNING 1) \
         {TENANT_COUNT_INTO} SELECT t, {SHARD}, d FROM unnest($4::text[], $5::bigint[]) AS y(t, d) \
         WHERE (SELECT count(*) FROM queued) >= 0 {TENANT_COUNT_CONFLICT}"
    )
});

#[derive(Default)]
pub struct Counts {
    deltas: BTreeMap<(String, &'static str), i64>,
    tenants: BTreeMap<String, i64>,
}

/// Whether jobs in `state` are counted (they wait: scheduled or queued).
fn counted(state: JobState) -> bool {
    matches!(state, JobState::Scheduled | JobState::Queued)
}

impl Counts {
    /// `n` jobs of `queue` and `tenant` entered `state` (left it, for a
    /// negative `n`).
    pub fn add(&mut self, queue: &str, tenant: &str, state: JobState, n: i64) {
        if !counted(state) || n == 0 {
            return;
        }
        *self
            .deltas
            .entry((queue.to_owned(), state.as_str()))
            .or_default() += n;
        *self.tenants.entry(tenant.to_owned()).or_default() += n;
    }

    /// One job of `queue` moved from one waiting state to the other
    /// (a promotion, a release): its tenant's count stays.
    pub fn moved(&mut self, queue: &str, from: JobState, to: JobState) {
        debug_assert!(counted(from) && counted(to));
        for (state, n) in [(from, -1), (to, 1)] {
            *self
                .deltas
                .entry((queue.to_owned(), state.as_str()))
                .or_default() += n;
        }
    }

    /// Adds the changes of `other` (a part of the transaction that was kept).
    pub fn absorb(&mut self, other: Counts) {
        for (key, n) in other.deltas {
            *self.deltas.entry(key).or_default() += n;
        }
        for (tenant, n) in other.tenants {
            *self.tenants.entry(tenant).or_default() += n;
        }
    }

    /// Writes the changes; part of the caller's transaction.
    pub async fn flush(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let mut queues = Vec::with_capacity(self.deltas.len());
        let mut states = Vec::with_capacity(self.deltas.len());
        let mut amounts = Vec::with_capacity(self.deltas.len());
        for ((queue, state), n) in self.deltas {
            if n != 0 {
                queues.push(queue);
                states.push(state);
                amounts.push(n);
            }
        }
        let (tenants, tenant_amounts): (Vec<String>, Vec<i64>) =
            self.tenants.into_iter().filter(|(_, n)| *n != 0).unzip();
        if queues.is_empty() && tenants.is_empty() {
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(ADD.as_str()))
            .bind(queues)
            .bind(states)
            .bind(amounts)
            .bind(tenants)
            .bind(tenant_amounts)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The tenant's scheduled and queued jobs, as committed when the statement
/// starts.
pub const TENANT_PENDING: &str =
    "SELECT coalesce(sum(n), 0)::bigint FROM tenant_counts WHERE tenant = $1";

/// SQL for the scheduled plus queued jobs of the queue named by the SQL
/// expression `queue`, as committed when the statement starts.
pub fn pending_of(queue: &str) -> String {
    format!(
        "coalesce((SELECT sum(queue_counts.n) FROM queue_counts \
         WHERE queue_counts.queue = {queue}), 0)::bigint"
    )
}

/// Scheduled plus queued jobs of each of `queues`, as committed when the
/// statement starts (READ COMMITTED): the caller holds the queues' row locks,
/// so every earlier admission to them has committed and is counted.
pub async fn pending(
    conn: &mut PgConnection,
    queues: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT queue, sum(n)::bigint FROM queue_counts WHERE queue = ANY($1) GROUP BY queue",
    )
    .bind(queues)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Scheduled, queued and running jobs per queue (of one queue with `only`).
pub async fn by_state(
    conn: impl sqlx::PgExecutor<'_>,
    only: Option<&str>,
) -> Result<HashMap<(String, String), i64>, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, state, sum(n)::bigint FROM queue_counts \
         WHERE $1::text IS NULL OR queue = $1 GROUP BY queue, state \
         UNION ALL \
         SELECT queue, 'running', count(*) FROM jobs \
         WHERE state = 'running' AND ($1::text IS NULL OR queue = $1) GROUP BY queue",
    )
    .bind(only)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(queue, state, n)| ((queue, state), n))
        .collect())
}
