//! `spool bench --claims`: what a rate limit costs the claim path. Queued
//! noop jobs are drained by the worker pool, alternately jobs without a
//! limit and jobs held to a limit set far above what the pool can reach,
//! so the difference is the limit's bookkeeping alone. Then the memory of
//! a limit with 100 000 keys in use.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::drain::{Fill, drain};
use super::{BenchArgs, keyed_client, median, start_service};
use crate::domain::RateLimitSettings;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let stop = CancellationToken::new();
    let (addr, engine, server) = start_service(dir.path(), "claims.db", true, &stop).await?;
    let client = keyed_client(args.connections)?;
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
            let rate = drain(&client, &[addr], &engine, args, Fill::Batches, |_| {
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
    drain(&client, &[addr], &engine, &many, Fill::Batches, |_| {
        String::new()
    })
    .await?;
    let plain_done = rss_kib();
    drain(&client, &[addr], &engine, &many, Fill::Batches, |n| {
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
