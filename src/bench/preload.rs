//! `spool bench --preload`: the database a long-lived service has, before
//! anything is measured: `--preload-finished` succeeded jobs (kept for
//! their retention) and `--preload-queued` jobs waiting in a paused queue of
//! their own, so the figures show what a big table costs the paths that
//! must not grow with it.
//!
//! Rows are copied from two template jobs that went through the service
//! (one run to success, one left queued), so every column holds what the
//! service writes; only the id differs. The counters the service keeps
//! (`queue_counts`, and the tenant's) are raised by the copies, as the
//! service would have raised them.

use std::time::Instant;

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Connection};
use tokio_util::sync::CancellationToken;

use super::BenchArgs;
use crate::domain::{QueueDefaultsPatch, QueueSettings};

/// Rows copied per transaction: a few seconds of work each, so neither
/// backend's log (SQLite's WAL, PostgreSQL's) grows with the whole preload.
const CHUNK: u64 = 500_000;
/// The paused queue that holds the preloaded queued jobs.
pub const WAITING_QUEUE: &str = "preload-waiting";
/// The queue the preloaded finished jobs ran in.
const DONE_QUEUE: &str = "preload-done";

/// The two templates' ids, made by a service on `database_url` that is
/// stopped again before this returns.
struct Templates {
    finished: String,
    queued: String,
}

/// Fills the database at `database_url` (migrated by a service started
/// here) with `args.preload_finished` succeeded and `args.preload_queued`
/// queued jobs.
pub async fn preload(args: &BenchArgs, database_url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let templates = templates(database_url).await?;
    if database_url.starts_with("postgres") {
        postgres(args, database_url, &templates).await?;
    } else {
        sqlite(args, database_url, &templates).await?;
    }
    println!(
        "preloaded {} finished and {} queued jobs in {:.0} s",
        args.preload_finished,
        args.preload_queued,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts a service on the database, makes the two templates through its
/// API and stops it (so the copies are written behind no running writer).
async fn templates(database_url: &str) -> anyhow::Result<Templates> {
    let stop = CancellationToken::new();
    let (addr, engine, server) = super::start_on(database_url, &stop).await?;
    let queue = |paused| QueueSettings {
        concurrency: None,
        capacity: Some(100_000_000),
        paused: Some(paused),
        defaults: Some(QueueDefaultsPatch::default()),
    };
    engine.put_queue(WAITING_QUEUE, &queue(true)).await?;
    engine.put_queue(DONE_QUEUE, &queue(false)).await?;
    let client = reqwest::Client::new();
    let submit = |queue: &'static str| {
        let client = client.clone();
        async move {
            let job: serde_json::Value = client
                .post(format!("http://{addr}/v1/jobs"))
                .json(&serde_json::json!({"kind": "noop", "queue": queue, "payload": {"n": 1}}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(job["id"].as_str().context("a job id")?.to_owned())
        }
    };
    let finished = submit(DONE_QUEUE).await?;
    let queued = submit(WAITING_QUEUE).await?;
    let done: serde_json::Value = client
        .get(format!("http://{addr}/v1/jobs/{finished}?wait=10"))
        .send()
        .await?
        .json()
        .await?;
    if done["status"] != "succeeded" {
        bail!("the finished template did not succeed: {done}");
    }
    stop.cancel();
    server.await??;
    Ok(Templates { finished, queued })
}

/// The jobs table's columns, with `id` replaced by `id_expr` in the
/// SELECT list that copies a template.
fn copy_list(columns: &[String], id_expr: &str) -> (String, String) {
    let names = columns.join(", ");
    let values = columns
        .iter()
        .map(|column| match column.as_str() {
            "id" => id_expr.to_owned(),
            other => format!("t.{other}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    (names, values)
}

/// Copies each template its number of times, a chunk per statement, by
/// `sql` (`$1`/`?1` first index, `$2` end, `$3` which template, `$4` its
/// id). A macro: the two backends' connections share no trait to write
/// this once as a function.
macro_rules! copy_templates {
    ($conn:ident, $sql:ident, $args:ident, $templates:ident) => {
        for (count, kind, template) in [
            ($args.preload_finished, 0, &$templates.finished),
            ($args.preload_queued, 1, &$templates.queued),
        ] {
            for (from, to) in chunks(count) {
                sqlx::query(AssertSqlSafe($sql.as_str()))
                    .bind(from)
                    .bind(to)
                    .bind(kind)
                    .bind(template)
                    .execute(&mut $conn)
                    .await?;
            }
        }
    };
}

/// An error unless the waiting queue holds the preloaded jobs and the
/// template, and its counter says so, as `sql` reads them (rows, counter).
macro_rules! check_counted {
    ($conn:ident, $args:ident, $sql:literal) => {
        let (rows, counted): (i64, i64) = sqlx::query_as($sql)
            .bind(WAITING_QUEUE)
            .fetch_one(&mut $conn)
            .await?;
        let expected = $args.preload_queued as i64 + 1;
        if rows != expected || counted != expected {
            bail!("preloaded {rows} queued jobs counted as {counted}, expected {expected}");
        }
    };
}

/// `0..count` in chunks of [`CHUNK`], as `(from, to)`.
fn chunks(count: usize) -> impl Iterator<Item = (i64, i64)> {
    let count = count as u64;
    (0..count.div_ceil(CHUNK)).map(move |n| {
        let (from, to) = (n * CHUNK, ((n + 1) * CHUNK).min(count));
        (from as i64, to as i64)
    })
}

async fn sqlite(args: &BenchArgs, url: &str, templates: &Templates) -> anyhow::Result<()> {
    let mut conn = sqlx::SqliteConnection::connect(url).await?;
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut conn)
        .await?;
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('jobs') ORDER BY cid")
            .fetch_all(&mut conn)
            .await?;
    // Ids sort before any the service makes (UUIDv7 starts with the time),
    // as old jobs' do; the first group tells the two kinds apart.
    let (names, values) = copy_list(&columns, "printf('%08x-0000-7000-8000-%012x', ?3, i)");
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2) \
         INSERT INTO jobs ({names}) SELECT {values} FROM n, jobs AS t WHERE t.id = ?4"
    );
    copy_templates!(conn, sql, args, templates);
    let queued = args.preload_queued as i64;
    sqlx::query("UPDATE queue_counts SET n = n + ?1 WHERE queue = ?2 AND state = 'queued'")
        .bind(queued)
        .bind(WAITING_QUEUE)
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "UPDATE tenant_pending SET n = n + ?1 WHERE tenant = (SELECT tenant FROM jobs WHERE id = ?2)",
    )
    .bind(queued)
    .bind(&templates.queued)
    .execute(&mut conn)
    .await?;
    check_counted!(
        conn,
        args,
        "SELECT (SELECT count(*) FROM jobs WHERE queue = ?1 AND state = 'queued'), \
         (SELECT n FROM queue_counts WHERE queue = ?1 AND state = 'queued')"
    );
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

async fn postgres(args: &BenchArgs, url: &str, templates: &Templates) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'jobs' ORDER BY ordinal_position",
    )
    .fetch_all(&mut conn)
    .await?;
    let (names, values) = copy_list(
        &columns,
        "lpad(to_hex($3::int), 8, '0') || '-0000-7000-8000-' || lpad(to_hex(i), 12, '0')",
    );
    let sql = format!(
        "INSERT INTO jobs ({names}) SELECT {values} \
         FROM generate_series($1::bigint, $2::bigint - 1) AS i, jobs AS t WHERE t.id = $4"
    );
    copy_templates!(conn, sql, args, templates);
    let queued = args.preload_queued as i64;
    sqlx::query(
        "INSERT INTO queue_counts (queue, state, shard, n) VALUES ($2, 'queued', 0, $1) \
         ON CONFLICT (queue, state, shard) DO UPDATE SET n = queue_counts.n + excluded.n",
    )
    .bind(queued)
    .bind(WAITING_QUEUE)
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "INSERT INTO tenant_counts (tenant, shard, n) \
         SELECT tenant, 0, $1 FROM jobs WHERE id = $2 \
         ON CONFLICT (tenant, shard) DO UPDATE SET n = tenant_counts.n + excluded.n",
    )
    .bind(queued)
    .bind(&templates.queued)
    .execute(&mut conn)
    .await?;
    check_counted!(
        conn,
        args,
        "SELECT (SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'queued'), \
         (SELECT sum(n)::bigint FROM queue_counts WHERE queue = $1 AND state = 'queued')"
    );
    // What autovacuum would have done long since on a table this size:
    // the figures are of a database in its steady state, not of one whose
    // statistics still describe it empty.
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}
