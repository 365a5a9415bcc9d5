//! The drain figure: noop jobs admitted into a paused queue, then the queue
//! opened and timed until it is empty. What the peers call their work
//! throughput (BullMQ's worker over jobs already added): the claim, run and
//! complete path alone, with no HTTP traffic meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{BenchArgs, bench_queue, post_batch, submit_count, urls, wait_until_idle};
use crate::engine::Engine;

/// Jobs per batch when the queue is filled in batches.
const BATCH: usize = 1_000;

/// How the paused queue is filled before a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// One `POST /v1/jobs` per job: jobs outside any batch, as the peers
    /// add theirs one by one.
    OneByOne,
    /// `POST /v1/batches` of [`BATCH`] jobs: each job's end also counts
    /// toward its batch.
    Batches,
}

/// Fills the paused `bench` queue with `args.jobs` noop jobs through the
/// instances at `addrs` (`extra(n)` is added to job n's spec when filling
/// in batches), then opens the queue and times the drain: jobs/s claimed,
/// run and stored as succeeded, by every instance's workers together.
pub async fn drain(
    client: &reqwest::Client,
    addrs: &[SocketAddr],
    engine: &Engine,
    args: &BenchArgs,
    fill: Fill,
    extra: impl Fn(usize) -> String,
) -> anyhow::Result<f64> {
    engine.put_queue("bench", &bench_queue(args, true)).await?;
    match fill {
        Fill::OneByOne => submit_count(client, addrs, args.jobs, args.connections).await?,
        Fill::Batches => {
            let url = urls(addrs, "/v1/batches")?.remove(0);
            let mut n = 0;
            while n < args.jobs {
                let size = BATCH.min(args.jobs - n);
                let jobs: Vec<String> = (n..n + size)
                    .map(|i| format!(r#"{{"kind":"noop","queue":"bench"{}}}"#, extra(i)))
                    .collect();
                let body = Bytes::from(format!(r#"{{"jobs":[{}]}}"#, jobs.join(",")));
                post_batch(client, &url, body).await?;
                n += size;
            }
        }
    }
    let started = Instant::now();
    engine.put_queue("bench", &bench_queue(args, false)).await?;
    wait_until_idle(engine).await?;
    let took = started.elapsed().max(Duration::from_micros(1));
    Ok(args.jobs as f64 / took.as_secs_f64())
}
