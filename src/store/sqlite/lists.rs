//! `GET /v1/jobs` on SQLite: the shared list statement on the read pool,
//! within the list budget.

use sqlx::{AssertSqlSafe, SqlitePool};

use super::rows::jobs_from_rows;
use crate::domain::Job;
use crate::store::lists::{Dialect, ListBudget, bind_all, list_query, list_rows};
use crate::store::{JobFilter, StoreError};

pub(super) async fn list_jobs(
    reads: &SqlitePool,
    budget: &ListBudget,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<Job>, StoreError> {
    let running = budget.enter().await?;
    let mut conn = reads.acquire().await?;
    let rows = list_rows!(&mut *conn, tenant, filter, Dialect::Sqlite)?;
    drop(conn);
    drop(running);
    jobs_from_rows(rows)
}

/// SQLite's plan of the list statement for `filter` (labels in the order
/// given): one line per step (`SEARCH … USING INDEX …`, `SCAN …`),
/// children indented.
pub(super) async fn explain(
    reads: &SqlitePool,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<String>, StoreError> {
    let query = list_query(tenant, filter, Dialect::Sqlite);
    let sql = format!("EXPLAIN QUERY PLAN {}", query.sql);
    let steps: Vec<(i64, i64, i64, String)> =
        bind_all!(sqlx::query_as(AssertSqlSafe(sql)), query.binds)
            .fetch_all(reads)
            .await?;
    // Each step names its parent; depth is the length of that chain.
    let depth = |mut parent: i64| {
        let mut depth = 0;
        while depth < steps.len()
            && let Some(step) = steps.iter().find(|step| step.0 == parent)
        {
            depth += 1;
            parent = step.1;
        }
        depth
    };
    Ok(steps
        .iter()
        .map(|(_, parent, _, detail)| format!("{}{detail}", "  ".repeat(depth(*parent))))
        .collect())
}
