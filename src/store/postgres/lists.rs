//! `GET /v1/jobs` on PostgreSQL: the shared list statement on the pool,
//! within the list budget.

use sqlx::{AssertSqlSafe, Connection, PgPool};

use crate::domain::Job;
use crate::store::lists::{Dialect, ListBudget, bind_all, list_query, list_rows};
use crate::store::rows::jobs_from_rows;
use crate::store::{JobFilter, StoreError};

/// Lists running at once out of a pool of `connections`: a quarter, at
/// least one, never all. The pool also carries this instance's writes
/// (admissions, outcomes, maintenance) and point reads; they keep the rest
/// however many lists wait.
pub(super) fn list_permits(connections: u32) -> usize {
    let connections = connections.max(2) as usize;
    (connections / 4).clamp(1, connections - 1)
}

pub(super) async fn list_jobs(
    pool: &PgPool,
    budget: &ListBudget,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<Job>, StoreError> {
    let running = budget.enter().await?;
    let mut conn = pool.acquire().await?;
    let rows = list_rows!(&mut *conn, tenant, filter, Dialect::Postgres)?;
    drop(conn);
    drop(running);
    jobs_from_rows(rows)
}

/// PostgreSQL's plan of the list statement for `filter` (labels in the
/// order given), as `EXPLAIN (COSTS OFF)` prints it, with sequential scans
/// ruled out: on a small table reading every row is the cheapest plan
/// whatever the indexes, and the question here is which index serves the
/// filter.
pub(super) async fn explain(
    pool: &PgPool,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<String>, StoreError> {
    let query = list_query(tenant, filter, Dialect::Postgres);
    let sql = format!("EXPLAIN (COSTS OFF) {}", query.sql);
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let plan: Vec<String> = bind_all!(sqlx::query_scalar(AssertSqlSafe(sql)), query.binds)
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::list_permits;

    #[test]
    fn lists_never_get_every_connection_of_the_pool() {
        assert_eq!(list_permits(16), 4);
        assert_eq!(list_permits(4), 1);
        assert_eq!(list_permits(1), 1);
        for connections in 2..100 {
            assert!(list_permits(connections) < connections as usize);
        }
    }
}
