//! `spool bench --postgres URL`: shared mode, one and then two instances on
//! one PostgreSQL database, each run in a schema of its own.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::{
    BenchArgs, bench_queue, median, post_load, submit_count, submit_count_in_batches,
    wait_until_idle,
};
use crate::app::App;
use crate::config::Config;
use crate::engine::Engine;

pub async fn run(args: &BenchArgs, url: &str) -> anyhow::Result<()> {
    println!(
        "spool bench, shared mode on PostgreSQL: {} connections, {} rounds of {:?}, {} worker slots per instance, {} cores",
        args.connections,
        args.rounds,
        args.duration,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for instances in [1, 2] {
        let schema = Schema::create(url).await?;
        let preloaded = match args.preload {
            true => super::preload::preload(args, &schema.url).await,
            false => Ok(()),
        };
        let measured = match preloaded {
            Ok(()) => measure(args, &schema.url, instances).await,
            Err(error) => Err(error),
        };
        schema.drop().await;
        let figures = measured?;
        // `--drain` measures the drain alone.
        if !args.drain {
            println!(
                "{instances} instance(s): POST /v1/jobs (durable noop) {:>8.0} req/s (median)",
                figures.posts
            );
            println!(
                "{instances} instance(s): end-to-end noop, jobs POSTed one by one {:>8.0} jobs/s \
                 (median of {} rounds of {} jobs)",
                figures.e2e_single, args.rounds, args.jobs
            );
            println!(
                "{instances} instance(s): end-to-end noop, jobs POSTed in batches of {} {:>8.0} jobs/s \
                 (median of {} rounds of {} jobs)",
                args.batch_size, figures.e2e_batched, args.rounds, args.jobs
            );
        }
        println!(
            "{instances} instance(s): drain of {} queued noop jobs {:>8.0} jobs/s (median)",
            args.jobs, figures.drain
        );
    }
    Ok(())
}

/// Medians of one configuration.
struct Figures {
    /// Accepted single-job submissions per second.
    posts: f64,
    /// Jobs per second from submission to success, submitted one per request.
    e2e_single: f64,
    /// The same, submitted in batches: what the worker pools and the
    /// database sustain when HTTP requests are not the limit.
    e2e_batched: f64,
    /// Jobs per second drained from a queue filled beforehand (one by
    /// one), by every instance's workers.
    drain: f64,
}

/// Submissions/s and end-to-end jobs/s of `instances` instances on the
/// database at `url`, the load spread evenly over them.
async fn measure(args: &BenchArgs, url: &str, instances: usize) -> anyhow::Result<Figures> {
    let stop = CancellationToken::new();
    let mut engines: Vec<Engine> = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..instances {
        let config = Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: url.to_owned(),
            ..Config::default()
        };
        let app = App::builder(config).build().await?;
        addrs.push(app.local_addr()?);
        engines.push(app.engine().clone());
        servers.push(tokio::spawn(app.run_until(stop.clone().cancelled_owned())));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let queue = |paused: bool| bench_queue(args, paused);
    let first = engines.first().context("no instance started")?;

    // Submissions alone, with the queue paused (as in embedded mode).
    // `--batches-only` skips the one-by-one figures (reported as 0).
    let single_rounds = if args.batches_only || args.drain {
        0
    } else {
        args.rounds
    };
    first.put_queue("bench", &queue(true)).await?;
    let mut posts = Vec::new();
    for _ in 0..single_rounds {
        posts.push(post_load(&client, &addrs, "/v1/jobs", args).await?);
    }
    first.put_queue("bench", &queue(false)).await?;
    wait_until_idle(first).await?;

    // End to end: every job submitted, claimed, run and stored as succeeded.
    let mut e2e = Vec::new();
    for _ in 0..single_rounds {
        let started = Instant::now();
        submit_count(&client, &addrs, args.jobs, args.connections).await?;
        wait_until_idle(first).await?;
        e2e.push(args.jobs as f64 / started.elapsed().as_secs_f64());
    }
    let mut batched = Vec::new();
    for _ in 0..if args.drain { 0 } else { args.rounds } {
        let started = Instant::now();
        submit_count_in_batches(
            &client,
            &addrs,
            args.jobs,
            args.batch_size,
            args.batch_connections,
        )
        .await?;
        wait_until_idle(first).await?;
        batched.push(args.jobs as f64 / started.elapsed().as_secs_f64());
    }

    let mut drained = Vec::new();
    for _ in 0..args.rounds {
        let rate = super::drain::drain(
            &client,
            &addrs,
            first,
            args,
            super::drain::Fill::OneByOne,
            |_| String::new(),
        )
        .await?;
        drained.push(rate);
    }

    stop.cancel();
    for server in servers {
        server.await??;
    }
    Ok(Figures {
        posts: median(&mut posts),
        e2e_single: median(&mut e2e),
        e2e_batched: median(&mut batched),
        drain: median(&mut drained),
    })
}

/// A schema of its own for one measurement.
pub(super) struct Schema {
    base: String,
    name: String,
    pub(super) url: String,
}

impl Schema {
    pub(super) async fn create(base: &str) -> anyhow::Result<Schema> {
        let name = format!("spool_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(base)
            .await
            .with_context(|| format!("connecting to {base}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut admin)
            .await?;
        let separator = if base.contains('?') { '&' } else { '?' };
        Ok(Schema {
            url: format!("{base}{separator}options=-c%20search_path%3D{name}"),
            base: base.to_owned(),
            name,
        })
    }

    pub(super) async fn drop(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.base).await {
            let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.name
            )))
            .execute(&mut admin)
            .await;
            if let Err(error) = dropped {
                eprintln!("could not drop schema {}: {error}", self.name);
            }
        }
    }
}
