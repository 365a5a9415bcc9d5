//! `spool bench --lists`: `GET /v1/jobs` with metadata filters over many
//! stored jobs, and point reads and `/readyz` while lists run in parallel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use tokio_util::sync::CancellationToken;

use super::{BenchArgs, bench_queue, percentile, post_batch};

/// Distinct values of the `customer` label: each is on 1 job in this many.
const CUSTOMERS: usize = 1_000;
/// Jobs per `POST /v1/batches` while filling.
const FILL_BATCH: usize = 1_000;
/// Sequential requests per quiet figure.
const QUIET_SAMPLES: usize = 20;
/// Length of each parallel phase.
const PHASE: Duration = Duration::from_secs(10);

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (database_url, _dir, schema) = match &args.postgres {
        Some(base) => {
            let schema = super::shared::Schema::create(base).await?;
            (schema.url.clone(), None, Some(schema))
        }
        None => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (url, Some(dir), None)
        }
    };
    let measured = measure(args, &database_url).await;
    if let Some(schema) = schema {
        schema.drop().await;
    }
    measured
}

async fn measure(args: &BenchArgs, database_url: &str) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let (addr, engine, server) = super::start_on(database_url, &stop).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.list_parallel + 4)
        .build()?;
    // Paused: the jobs stay queued, and nothing but the requests measured
    // runs meanwhile.
    engine
        .put_queue("bench-lists", &bench_queue(args, true))
        .await?;

    println!(
        "spool bench --lists on {}: {} jobs, labels customer (1 of {CUSTOMERS} values) and env=prod on each, {} cores",
        if args.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.list_jobs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let filling = Instant::now();
    fill(&client, addr, args.list_jobs).await?;
    println!("filled in {:.1} s", filling.elapsed().as_secs_f64());
    // The job read is of a job alone in its queue: a queued job's read
    // counts the jobs ahead of it (`position`), which would be 100 000 in
    // `bench-lists`, and the figure is of the read, not of that count.
    engine
        .put_queue("bench-probe", &bench_queue(args, true))
        .await?;
    let probe: serde_json::Value = client
        .post(format!("http://{addr}/v1/jobs"))
        .json(&serde_json::json!({"kind": "noop", "queue": "bench-probe"}))
        .send()
        .await?
        .json()
        .await?;
    let job_url = format!(
        "http://{addr}/v1/jobs/{}",
        probe["id"].as_str().context("a job id")?
    );
    let ready_url = format!("http://{addr}/readyz");

    let lists = [
        ("no job has the label", "metadata.customer=none"),
        ("1 job in 1 000 has it", "metadata.customer=c7"),
        ("two labels", "metadata.env=prod&metadata.customer=c7"),
        (
            "every job has the label, none the kind",
            "metadata.env=prod&kind=none",
        ),
    ];
    for (what, query) in lists {
        let url = format!("http://{addr}/v1/jobs?{query}");
        let mut times = Vec::with_capacity(QUIET_SAMPLES);
        for _ in 0..QUIET_SAMPLES {
            let (ms, status) = timed_get(&client, &url).await?;
            if status != 200 {
                bail!("{url} answered {status}");
            }
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "GET /v1/jobs?{query:<42} p50 {:>8.2} ms, max {:>8.2} ms  ({what})",
            percentile(&times, 0.5),
            percentile(&times, 1.0),
        );
    }
    let idle = probe_reads(&client, &job_url, &ready_url, Duration::from_secs(2)).await?;
    println!(
        "idle:       GET /v1/jobs/{{id}} {}; /readyz {}; {} failed",
        idle.job, idle.ready, idle.failed
    );

    for (what, query) in [
        ("a label no job has", "metadata.customer=none"),
        (
            "every job's label, no job's kind",
            "metadata.env=prod&kind=none",
        ),
    ] {
        let url = format!("http://{addr}/v1/jobs?{query}");
        let running = Arc::new(AtomicBool::new(true));
        let (answered, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..args.list_parallel {
            let (client, url, running) = (client.clone(), url.clone(), running.clone());
            let (answered, refused) = (answered.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let (_, status) = timed_get(&client, &url).await?;
                    match status {
                        200 => answered.fetch_add(1, Ordering::Relaxed),
                        503 => refused.fetch_add(1, Ordering::Relaxed),
                        other => bail!("a list answered {other}"),
                    };
                }
                anyhow::Ok(())
            }));
        }
        let reads = probe_reads(&client, &job_url, &ready_url, PHASE).await;
        running.store(false, Ordering::Relaxed);
        for task in tasks {
            task.await??;
        }
        let reads = reads?;
        println!(
            "{} lists in parallel, {what} (?{query}), {} s: {} lists answered, {} refused (503)",
            args.list_parallel,
            PHASE.as_secs(),
            answered.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        println!(
            "  meanwhile: GET /v1/jobs/{{id}} {}; /readyz {}; {} failed",
            reads.job, reads.ready, reads.failed
        );
    }

    stop.cancel();
    server.await??;
    Ok(())
}

/// Submits `count` noop jobs to `bench-lists`, each labelled with one of
/// `CUSTOMERS` customers in turn and `env=prod`, in batches from 8
/// connections.
async fn fill(client: &reqwest::Client, addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(&format!("http://{addr}/v1/batches"))?;
    let batches = count.div_ceil(FILL_BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed) as usize;
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let first = batch * FILL_BATCH;
                let jobs: Vec<String> = (first..count.min(first + FILL_BATCH))
                    .map(|n| {
                        format!(
                            r#"{{"kind":"noop","queue":"bench-lists","metadata":{{"customer":"c{}","env":"prod"}}}}"#,
                            n % CUSTOMERS
                        )
                    })
                    .collect();
                let body = Bytes::from(format!(r#"{{"jobs":[{}]}}"#, jobs.join(",")));
                post_batch(&client, &url, body).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Milliseconds from sending a GET to its whole answer, and its status.
async fn timed_get(client: &reqwest::Client, url: &str) -> anyhow::Result<(f64, u16)> {
    let sent = Instant::now();
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    response.bytes().await?;
    Ok((sent.elapsed().as_secs_f64() * 1000.0, status))
}

/// Latencies of one kind of request.
struct Latencies(Vec<f64>);

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
            percentile(&self.0, 0.5),
            percentile(&self.0, 0.99),
            percentile(&self.0, 1.0),
            self.0.len()
        )
    }
}

struct PointReads {
    job: Latencies,
    ready: Latencies,
    /// Answers other than 200 (a 503 when no connection was free in time).
    failed: usize,
}

/// A job read and a readiness check after each other, again and again for
/// `during`. Failed answers are counted, and timed like the others.
async fn probe_reads(
    client: &reqwest::Client,
    job_url: &str,
    ready_url: &str,
    during: Duration,
) -> anyhow::Result<PointReads> {
    let (mut job, mut ready, mut failed) = (Vec::new(), Vec::new(), 0);
    let deadline = Instant::now() + during;
    while Instant::now() < deadline {
        for (url, times) in [(job_url, &mut job), (ready_url, &mut ready)] {
            let (ms, status) = timed_get(client, url).await?;
            failed += usize::from(status != 200);
            times.push(ms);
        }
    }
    job.sort_by(f64::total_cmp);
    ready.sort_by(f64::total_cmp);
    Ok(PointReads {
        job: Latencies(job),
        ready: Latencies(ready),
        failed,
    })
}
