//! `GET /v1/jobs` on SQLite: the shared list statement on the read pool,
//! within the list budget.

use sqlx::{AssertSqlSafe, Row, SqlitePool};

use super::rows::{JobRow, jobs_from_rows};
use crate::domain::Job;
use crate::store::lists::{
    Dialect, ListBudget, bind_all, label_counts_query, list_query, rarest_label_first,
};
use crate::store::{JobFilter, StoreError};

pub(super) async fn list_jobs(
    reads: &SqlitePool,
    budget: &ListBudget,
    tenant: &str,
    filter: &JobFilter,
) -> Result<Vec<Job>, StoreError> {
    let running = budget.enter().await?;
    let mut conn = reads.acquire().await?;
    let rarest_first;
    let filter = match label_counts_query(filter, Dialect::Sqlite) {
        Some(probe) => {
            let row = bind_all!(sqlx::query(AssertSqlSafe(probe.sql)), probe.binds)
                .fetch_one(&mut *conn)
                .await?;
            let counts = (0..filter.metadata.len())
                .map(|n| row.try_get::<i64, _>(n))
                .collect::<Result<Vec<_>, _>>()?;
            rarest_first = rarest_label_first(filter, &counts);
            &rarest_first
        }
        None => filter,
    };
    let query = list_query(tenant, filter, Dialect::Sqlite);
    let rows: Vec<JobRow> = bind_all!(sqlx::query_as(AssertSqlSafe(query.sql)), query.binds)
        .fetch_all(&mut *conn)
        .await?;
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
