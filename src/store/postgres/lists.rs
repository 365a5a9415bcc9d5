//! `GET /v1/jobs` on PostgreSQL: the shared list statement on the pool.

use sqlx::{AssertSqlSafe, Connection, PgPool};

use crate::domain::Job;
use crate::store::lists::{Bind, Dialect, list_query};
use crate::store::rows::{JobRow, jobs_from_rows};
use crate::store::{JobFilter, StoreError};

pub(super) async fn list_jobs(
    pool: &PgPool,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<Job>, StoreError> {
    let query = list_query(tenant, filter, Dialect::Postgres);
    let mut statement = sqlx::query_as::<_, JobRow>(AssertSqlSafe(query.sql));
    for value in query.binds {
        statement = match value {
            Bind::Text(text) => statement.bind(text),
            Bind::Int(n) => statement.bind(n),
        };
    }
    let rows = statement.fetch_all(pool).await?;
    jobs_from_rows(rows)
}

/// PostgreSQL's plan of the list statement for `filter`, as `EXPLAIN
/// (COSTS OFF)` prints it, with sequential scans ruled out: on a small
/// table reading every row is the cheapest plan whatever the indexes, and
/// the question here is which index serves the filter.
pub(super) async fn explain(
    pool: &PgPool,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<String>, StoreError> {
    let query = list_query(tenant, filter, Dialect::Postgres);
    let sql = format!("EXPLAIN (COSTS OFF) {}", query.sql);
    let mut statement = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
    for value in query.binds {
        statement = match value {
            Bind::Text(text) => statement.bind(text),
            Bind::Int(n) => statement.bind(n),
        };
    }
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let plan = statement.fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    Ok(plan)
}
