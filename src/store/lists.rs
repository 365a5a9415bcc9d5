//! `GET /v1/jobs` in the store: the list statement both backends run, and
//! the budget that keeps lists from taking every connection.
//!
//! A metadata filter walks `job_metadata` (one row per label,
//! `migrations/*/0007_job_metadata.sql`) newest first, so the list reads
//! about as many rows as it returns. A combination the first label cannot
//! narrow (a common label and a rare kind, say) can still read many rows:
//! the budget bounds how many connections such lists hold at once, so that
//! point reads and `/readyz` always find one.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::rows::JOB_COLUMNS;
use super::{JobFilter, StoreError};

/// How long a list waits for the budget before it is refused (503 `busy`,
/// `Retry-After: 1`). An indexed list takes milliseconds, so a wait this
/// long means lists heavy enough to fill the budget for seconds are ahead
/// of it: telling the client to come back beats holding it. The same bound
/// as a wait for a PostgreSQL connection.
pub const LIST_WAIT: Duration = Duration::from_secs(5);

/// The lists allowed to run at once; the others wait, up to a bound, for
/// one of them to end. Only lists enter it: point reads and `/readyz` take
/// their connection straight from the pool, which always has connections
/// the budget cannot hand out.
pub struct ListBudget {
    permits: Semaphore,
    wait: Duration,
}

impl ListBudget {
    pub fn new(permits: usize, wait: Duration) -> Self {
        Self {
            permits: Semaphore::new(permits),
            wait,
        }
    }

    /// A place among the running lists, held until the permit is dropped;
    /// `Busy` when none came free within the wait.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, StoreError> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(StoreError::Unavailable("the store is closed".into())),
            Err(_) => Err(StoreError::Busy(format!(
                "no list could start within {} ms",
                self.wait.as_millis()
            ))),
        }
    }
}

/// How a backend spells parameters and the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `?` parameters; `LIMIT CAST(? AS INTEGER)`, because a bare `LIMIT ?`
    /// makes SQLite plan the statement again at every execution (behind a
    /// CAST the plan is kept).
    Sqlite,
    /// `$1`, `$2`, … parameters.
    Postgres,
}

/// A value bound to a list statement, in parameter order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// A list statement and its parameters. The text depends only on which
/// filters are set (and how many labels), never on their values, so each
/// shape is prepared once per connection.
#[derive(Clone, Debug)]
pub struct ListQuery {
    pub sql: String,
    pub binds: Vec<Bind>,
}

/// `JOB_COLUMNS` as columns of `jobs`: `key` would be ambiguous beside
/// `job_metadata`.
static JOBS_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    JOB_COLUMNS
        .split(',')
        .map(|column| format!("jobs.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
});

struct Builder {
    dialect: Dialect,
    sql: String,
    binds: Vec<Bind>,
}

impl Builder {
    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        match self.dialect {
            Dialect::Sqlite => self.sql.push('?'),
            Dialect::Postgres => {
                self.sql.push('$');
                self.sql.push_str(&self.binds.len().to_string());
            }
        }
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Bind::Text(value.to_owned()))
    }
}

/// The statement of `GET /v1/jobs`: the tenant's jobs matching every filter,
/// newest (greatest id) first, before the cursor, at most `filter.limit`.
///
/// With labels, the first one's entries in `job_metadata` are walked newest
/// first and joined to their jobs (SQLite's CROSS JOIN keeps that order of
/// the loops; PostgreSQL's planner chooses by its statistics), further
/// labels being probes of the same primary key.
pub fn list_query(tenant: &str, filter: &JobFilter, dialect: Dialect) -> ListQuery {
    let mut q = Builder {
        dialect,
        sql: String::with_capacity(1_024),
        binds: Vec::new(),
    };
    let mut labels = filter.metadata.iter();
    // The column the order and the cursor are on.
    let order = match labels.next() {
        Some((name, value)) => {
            q.push("SELECT ")
                .push(&JOBS_COLUMNS)
                .push(" FROM job_metadata AS m CROSS JOIN jobs WHERE m.key = ")
                .text(name)
                .push(" AND m.value = ")
                .text(value)
                .push(" AND jobs.id = m.job_id");
            "m.job_id"
        }
        None => {
            q.push("SELECT ")
                .push(&JOBS_COLUMNS)
                .push(" FROM jobs WHERE true");
            "jobs.id"
        }
    };
    q.push(" AND jobs.tenant = ").text(tenant);
    if let Some(before) = filter.before {
        q.push(" AND ")
            .push(order)
            .push(" < ")
            .text(&before.to_string());
    }
    if let Some(queue) = &filter.queue {
        q.push(" AND jobs.queue = ").text(queue);
    }
    if let Some(status) = filter.status {
        q.push(" AND jobs.state = ").text(status.as_str());
    }
    if let Some(kind) = &filter.kind {
        q.push(" AND jobs.kind = ").text(kind);
    }
    if let Some(key) = &filter.key {
        q.push(" AND jobs.key = ").text(key);
    }
    if let Some(batch) = filter.batch_id {
        q.push(" AND jobs.batch_id = ").text(&batch.to_string());
    }
    for (n, (name, value)) in labels.enumerate() {
        let alias = format!("m{n}");
        q.push(" AND EXISTS (SELECT 1 FROM job_metadata AS ")
            .push(&alias)
            .push(" WHERE ")
            .push(&alias)
            .push(".key = ")
            .text(name)
            .push(" AND ")
            .push(&alias)
            .push(".value = ")
            .text(value)
            .push(" AND ")
            .push(&alias)
            .push(".job_id = ")
            .push(order)
            .push(")");
    }
    q.push(" ORDER BY ").push(order).push(" DESC LIMIT ");
    let limit = Bind::Int(i64::from(filter.limit));
    match dialect {
        Dialect::Sqlite => q.push("CAST(").bind(limit).push(" AS INTEGER)"),
        Dialect::Postgres => q.bind(limit),
    };
    ListQuery {
        sql: q.sql,
        binds: q.binds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(labels: &[(&str, &str)]) -> JobFilter {
        JobFilter {
            metadata: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            limit: 10,
            ..JobFilter::default()
        }
    }

    #[test]
    fn the_first_label_drives_the_walk_and_the_others_are_probes() {
        let query = list_query(
            "t",
            &filter(&[("team", "a"), ("env", "prod")]),
            Dialect::Postgres,
        );
        assert!(
            query.sql.contains(
                "FROM job_metadata AS m CROSS JOIN jobs WHERE m.key = $1 AND m.value = $2"
            ),
            "{}",
            query.sql
        );
        assert!(
            query.sql.contains(
                "EXISTS (SELECT 1 FROM job_metadata AS m0 WHERE m0.key = $4 AND m0.value = $5 \
                 AND m0.job_id = m.job_id)"
            ),
            "{}",
            query.sql
        );
        assert!(query.sql.ends_with("ORDER BY m.job_id DESC LIMIT $6"));
        assert_eq!(
            query.binds,
            [
                Bind::Text("team".into()),
                Bind::Text("a".into()),
                Bind::Text("t".into()),
                Bind::Text("env".into()),
                Bind::Text("prod".into()),
                Bind::Int(10),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_waits_for_the_budget_and_is_refused_as_busy_after_the_wait() {
        let budget = ListBudget::new(1, Duration::from_secs(5));
        let running = budget.enter().await.expect("a place");
        let started = tokio::time::Instant::now();
        assert!(matches!(budget.enter().await, Err(StoreError::Busy(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let (entered, ()) = tokio::join!(budget.enter(), async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(running);
        });
        assert!(entered.is_ok(), "the place came free within the wait");
    }

    #[test]
    fn values_are_bound_never_spliced_into_the_text() {
        let hostile = "x' OR '1'='1";
        let mut f = filter(&[("team", hostile)]);
        f.kind = Some(hostile.into());
        f.queue = Some(hostile.into());
        f.key = Some(hostile.into());
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let query = list_query(hostile, &f, dialect);
            assert!(!query.sql.contains(hostile), "{}", query.sql);
        }
    }
}
