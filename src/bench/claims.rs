//! `spool bench --claims`: what a rate limit costs the claim path. Queued
//! noop jobs are drained by the worker pool, alternately jobs without a
//! limit and jobs held to a limit set far above what the pool can reach,
//! so the difference is the limit's bookkeeping alone. Then the memory of
//! a limit with 100 000 keys in use.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{
    BenchArgs, bench_queue, keyed_client, median, post_batch, start_service, urls, wait_until_idle,
};
use crate::domain::RateLimitSettings;

/// Jobs per batch while filling the queue.
const BATCH: usize = 1_000;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let stop = CancellationToken::new();
    let (addr, engine, server) = start_service(dir.path(), "claims.db", true, &stop).await?;
    let client = keyed_client(args.connections)?;
    let url = urls(&[addr], "/v1/batches")?.remove(0);
    // A limit the pool cannot reach: a million starts a second, a million at once.
    let unreachable = RateLimitSettings {
        rate: 1_000_000,
        per_ms: Some(1_000),
        burst: Some(1_000_000),
    };
    engine.put_limit("bench", &unreachable).await?;
    println!(
        "spool bench --claims: {} worker slots, {} rounds of {} queued jobs each, {} cores",
        args.concurrency,
        args.rounds,
        args.jobs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let (mut plain, mut limited) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Each goes first every other round: neither gets the warmer start.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_limit in order {
            let rate = drain(&client, &url, &engine, args, |_| {
                if with_limit {
                    r#","rate_limit":{"name":"bench"}"#.to_owned()
                } else {
                    String::new()
                }
            })
            .await?;
            if with_limit {
                limited.push(rate);
            } else {
                plain.push(rate);
            }
        }
    }
    let (plain, limited) = (median(&mut plain), median(&mut limited));
    println!("drain of queued noop jobs, no rate limit:   {plain:>10.0} jobs/s (median)");
    println!("the same, each held to an unreached limit:  {limited:>10.0} jobs/s (median)");
    println!(
        "ratio limited / not limited:                {:>10.2}",
        limited / plain
    );

    // Memory: 100 000 jobs without a limit, then 100 000 jobs with a key
    // each of one limit. Limits keep nothing in memory per key (a claim
    // reads the keys it meets); what the second drain adds beyond the
    // first is what the keys cost.
    let keys = 100_000;
    let many = BenchArgs {
        jobs: keys,
        ..args.clone()
    };
    let start = rss_kib();
    drain(&client, &url, &engine, &many, |_| String::new()).await?;
    let plain_done = rss_kib();
    drain(&client, &url, &engine, &many, |n| {
        format!(r#","rate_limit":{{"name":"bench","key":"customer-{n}"}}"#)
    })
    .await?;
    let keyed_done = rss_kib();
    let stored = count_key_rows(&dir.path().join("claims.db"))?;
    println!("rate-limit key rows after {keys} keyed jobs:  {stored:>10}");
    match (start, plain_done, keyed_done) {
        (Some(start), Some(plain), Some(keyed)) => {
            println!(
                "RSS growth, {keys} jobs without a limit:   {:>+10} KiB",
                plain as i64 - start as i64
            );
            println!(
                "RSS growth, {keys} jobs with {keys} keys:  {:>+10} KiB",
                keyed as i64 - plain as i64
            );
        }
        _ => println!("process RSS: not measured (no /proc/self/status)"),
    }

    stop.cancel();
    server.await??;
    Ok(())
}

/// Fills the paused queue with `args.jobs` noop jobs (`extra(n)` added to
/// job n's spec), then unpauses it and times the drain: jobs/s claimed,
/// run and completed.
async fn drain(
    client: &reqwest::Client,
    url: &reqwest::Url,
    engine: &crate::engine::Engine,
    args: &BenchArgs,
    extra: impl Fn(usize) -> String,
) -> anyhow::Result<f64> {
    engine.put_queue("bench", &bench_queue(args, true)).await?;
    let mut n = 0;
    while n < args.jobs {
        let size = BATCH.min(args.jobs - n);
        let jobs: Vec<String> = (n..n + size)
            .map(|i| format!(r#"{{"kind":"noop","queue":"bench"{}}}"#, extra(i)))
            .collect();
        post_batch(
            client,
            url,
            Bytes::from(format!(r#"{{"jobs":[{}]}}"#, jobs.join(","))),
        )
        .await?;
        n += size;
    }
    let started = Instant::now();
    engine.put_queue("bench", &bench_queue(args, false)).await?;
    wait_until_idle(engine).await?;
    let took = started.elapsed().max(Duration::from_micros(1));
    Ok(args.jobs as f64 / took.as_secs_f64())
}

/// The rows of `rate_limit_keys`, read from the database file directly.
fn count_key_rows(db: &std::path::Path) -> anyhow::Result<i64> {
    let connection = rusqlite::Connection::open(db)?;
    Ok(connection.query_row("SELECT count(*) FROM rate_limit_keys", [], |row| row.get(0))?)
}

/// Resident memory of this process in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
