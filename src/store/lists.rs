//! `GET /v1/jobs` in the store: the list statement both backends run, and
//! the budget that keeps lists from taking every connection.
//!
//! Every filter is served by an index walked newest first (see
//! [`list_query`]), so a list reads about as many rows as it returns. A
//! combination the walked index cannot narrow (a common label and a rare
//! kind, say) can still read many rows: the budget bounds how many
//! connections such lists hold at once, so that point reads and `/readyz`
//! always find one.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::rows::JOB_COLUMNS;
use super::{JobFilter, StoreError};
use crate::domain::JobState;

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

/// `$statement` (a `sqlx::query…` of a [`ListQuery`]'s text) with `$binds`
/// bound in order.
macro_rules! bind_all {
    ($statement:expr, $binds:expr) => {{
        let mut statement = $statement;
        for value in $binds {
            statement = match value {
                $crate::store::lists::Bind::Text(text) => statement.bind(text),
                $crate::store::lists::Bind::Int(n) => statement.bind(n),
            };
        }
        statement
    }};
}
pub(crate) use bind_all;

/// Runs the list of `$filter` on `$conn` (a connection of either backend,
/// in `$dialect`): counts the labels first when there are several, so the
/// rarest is walked, then reads the page. Evaluates to
/// `Result<Vec<JobRow>, StoreError>`. A macro, as `bind_all!` is: the same
/// statements bind through sqlx's per-database types.
macro_rules! list_rows {
    ($conn:expr, $tenant:expr, $filter:expr, $dialect:expr) => {{
        async {
            use sqlx::Row as _;
            let conn = $conn;
            let filter: &$crate::store::JobFilter = $filter;
            let rarest_first;
            let filter = match $crate::store::lists::label_counts_query(filter, $dialect) {
                Some(probe) => {
                    let row = $crate::store::lists::bind_all!(
                        sqlx::query(sqlx::AssertSqlSafe(probe.sql)),
                        probe.binds
                    )
                    .fetch_one(&mut *conn)
                    .await?;
                    let counts = (0..filter.metadata.len())
                        .map(|n| row.try_get::<i64, _>(n))
                        .collect::<Result<Vec<_>, _>>()?;
                    rarest_first = $crate::store::lists::rarest_label_first(filter, &counts);
                    &rarest_first
                }
                None => filter,
            };
            let query = $crate::store::lists::list_query($tenant, filter, $dialect);
            let rows: Vec<$crate::store::rows::JobRow> = $crate::store::lists::bind_all!(
                sqlx::query_as(sqlx::AssertSqlSafe(query.sql)),
                query.binds
            )
            .fetch_all(&mut *conn)
            .await?;
            Ok::<_, $crate::store::StoreError>(rows)
        }
        .await
    }};
}
pub(crate) use list_rows;

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

/// Entries of one label counted, at most, to choose the label a list walks.
pub const LABEL_PROBE: u32 = 1_000;

/// With two labels or more: one row, the number of entries of each label
/// (in filter order) in `job_metadata`, counted up to [`LABEL_PROBE`]. Each
/// count reads at most that many entries of the primary key, index only.
pub fn label_counts_query(filter: &JobFilter, dialect: Dialect) -> Option<ListQuery> {
    if filter.metadata.len() < 2 {
        return None;
    }
    let mut q = Builder {
        dialect,
        sql: String::from("SELECT "),
        binds: Vec::new(),
    };
    for (n, (name, value)) in filter.metadata.iter().enumerate() {
        if n > 0 {
            q.push(", ");
        }
        q.push("(SELECT count(*) FROM (SELECT 1 FROM job_metadata WHERE key = ")
            .text(name)
            .push(" AND value = ")
            .text(value)
            .push(&format!(" LIMIT {LABEL_PROBE}) AS p{n})"));
    }
    Some(ListQuery {
        sql: q.sql,
        binds: q.binds,
    })
}

/// `filter` with its labels rarest first (by `counts`, in filter order),
/// so that the list walks the fewest entries: `env=prod&customer=c7` over
/// 100 000 jobs, all in `prod`, took 69 ms walking `env` first and 1.3 ms
/// walking `customer` (`spool bench --lists`). Ties keep the given order.
pub fn rarest_label_first(filter: &JobFilter, counts: &[i64]) -> JobFilter {
    let mut labelled: Vec<_> = filter.metadata.iter().cloned().zip(counts).collect();
    labelled.sort_by_key(|(_, count)| **count);
    JobFilter {
        metadata: labelled.into_iter().map(|(label, _)| label).collect(),
        ..filter.clone()
    }
}

/// Which jobs one part of a list statement reaches, and so which index
/// serves it.
#[derive(Clone, Copy)]
enum Reach {
    /// Any state: the primary key, `jobs_key`, `jobs_batch` or labels.
    All,
    /// Jobs neither queued nor running: the partial indexes `jobs_at_rest_*`
    /// (`migrations/*/0008_list_indexes.sql`), which leave out the two
    /// states every job passes through, so claims never touch them.
    AtRest,
    /// Queued or running jobs: their ids from `jobs_ready` and the running
    /// index, a set bounded by the queues' capacities and concurrency.
    Active(&'static [JobState]),
}

/// The partial-index condition of `Reach::AtRest`, word for word: SQLite
/// uses a partial index only when the query states its condition.
const AT_REST: &str = " AND jobs.state <> 'queued' AND jobs.state <> 'running'";

/// The statement of `GET /v1/jobs`: the tenant's jobs matching every filter,
/// newest (greatest id) first, before the cursor, at most `filter.limit`.
///
/// Every filter is served by an index walked newest first, the other
/// filters being checked on the rows it reaches:
/// - labels: the first one's entries in `job_metadata`, joined to their
///   jobs (SQLite's CROSS JOIN keeps that order of the loops; PostgreSQL's
///   planner chooses by its statistics), further labels being probes of the
///   same primary key;
/// - `key`, `batch_id`: `jobs_key`, `jobs_batch` (the batch's jobs sorted);
/// - `status`: `jobs_at_rest_state`, or for `queued` and `running` the ids
///   of the jobs in that state;
/// - `queue`, `kind`: the jobs at rest through `jobs_at_rest_queue` or
///   `jobs_at_rest_kind`, merged with the matching active jobs;
/// - nothing: the primary key.
pub fn list_query(tenant: &str, filter: &JobFilter, dialect: Dialect) -> ListQuery {
    let mut q = Builder {
        dialect,
        sql: String::with_capacity(1_024),
        binds: Vec::new(),
    };
    let reach = if !filter.metadata.is_empty() || filter.key.is_some() || filter.batch_id.is_some()
    {
        Some(Reach::All)
    } else if let Some(status) = filter.status {
        Some(match status {
            JobState::Queued => Reach::Active(&[JobState::Queued]),
            JobState::Running => Reach::Active(&[JobState::Running]),
            _ => Reach::AtRest,
        })
    } else if filter.queue.is_some() || filter.kind.is_some() {
        None
    } else {
        Some(Reach::All)
    };
    match reach {
        Some(reach) => part(&mut q, tenant, filter, reach),
        None => {
            // The jobs at rest and the active ones, each part newest first
            // and limited, merged.
            q.push("SELECT * FROM (");
            part(&mut q, tenant, filter, Reach::AtRest);
            q.push(") AS at_rest UNION ALL SELECT * FROM (");
            part(
                &mut q,
                tenant,
                filter,
                Reach::Active(&[JobState::Queued, JobState::Running]),
            );
            q.push(") AS active ORDER BY id DESC");
            limit(&mut q, filter);
        }
    }
    ListQuery {
        sql: q.sql,
        binds: q.binds,
    }
}

/// ` LIMIT <filter.limit>`.
fn limit(q: &mut Builder, filter: &JobFilter) {
    let limit = Bind::Int(i64::from(filter.limit));
    match q.dialect {
        Dialect::Sqlite => q.push(" LIMIT CAST(").bind(limit).push(" AS INTEGER)"),
        Dialect::Postgres => q.push(" LIMIT ").bind(limit),
    };
}

/// One `SELECT` of the jobs `reach` names that match `filter`, newest first.
fn part(q: &mut Builder, tenant: &str, filter: &JobFilter, reach: Reach) {
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
    match reach {
        Reach::All => {}
        Reach::AtRest => {
            q.push(AT_REST);
        }
        Reach::Active(states) => {
            // The states are the code's constants, written as literals:
            // each partial index of a state is used only for its literal.
            q.push(" AND jobs.id IN (");
            for (n, state) in states.iter().enumerate() {
                if n > 0 {
                    q.push(" UNION ALL ");
                }
                q.push(&format!(
                    "SELECT s{n}.id FROM jobs AS s{n} WHERE s{n}.state = '{}'",
                    state.as_str()
                ));
            }
            q.push(")");
        }
    }
    q.push(" ORDER BY ").push(order).push(" DESC");
    limit(q, filter);
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
    fn the_rarest_label_is_walked_and_ties_keep_their_order() {
        let given = filter(&[
            ("env", "prod"),
            ("team", "a"),
            ("customer", "c7"),
            ("x", "y"),
        ]);
        let counts = [1_000, 40, 3, 40];
        let chosen = rarest_label_first(&given, &counts);
        let names: Vec<&str> = chosen.metadata.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["customer", "team", "x", "env"]);
        assert_eq!(chosen.limit, given.limit);
        assert!(label_counts_query(&filter(&[("env", "prod")]), Dialect::Sqlite).is_none());
        let probe = label_counts_query(&given, Dialect::Postgres).unwrap();
        assert_eq!(probe.binds.len(), 8);
        assert!(
            probe.sql.contains("value = $8 LIMIT 1000) AS p3)"),
            "{}",
            probe.sql
        );
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
