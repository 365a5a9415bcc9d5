//! `spool bench`: starts the service on a fresh database and measures it over
//! loopback HTTP, next to a bare axum handler doing the same parsing.

mod claims;
mod drain;
mod lists;
mod memory;
mod preload;
mod shared;
mod soak;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::StatusCode;
use clap::Args;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::domain::{JobSpec, QueueDefaultsPatch, QueueSettings};
use crate::notify::EventKind;
use crate::telemetry::metrics;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent HTTP connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Length of each submission round.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Rounds per throughput figure; the median is reported. Five, because
    /// on a shared 2-core machine single rounds swing by a fifth.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Jobs per end-to-end round.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Worker slots of the benchmark queue.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Jobs submitted one by one to measure enqueue-to-start latency.
    #[arg(long, default_value_t = 1_000)]
    pub latency_samples: usize,
    /// Jobs per batch in the batch-submission figure.
    #[arg(long, default_value_t = 1_000)]
    pub batch_size: usize,
    /// Concurrent connections submitting batches.
    #[arg(long, default_value_t = 8)]
    pub batch_connections: usize,
    /// Long-polls held open at once to measure what waiting costs (each
    /// takes two file descriptors, client and server: mind `ulimit -n`).
    #[arg(long, default_value_t = 400)]
    pub long_polls: usize,
    /// Long-polls timed from a job's end to the answer.
    #[arg(long, default_value_t = 200)]
    pub long_poll_samples: usize,
    /// Measure batch submission and long-polls only (skips the single-job figures).
    #[arg(long)]
    pub batches_only: bool,
    /// Measure the drain alone: queued jobs claimed, run and completed
    /// (with `--postgres`, by one and then two instances).
    #[arg(long, conflicts_with_all = ["batches_only", "lists", "claims", "soak"])]
    pub drain: bool,
    /// Measure memory instead: the resident memory a `spool serve` process
    /// of its own grows by per queued job (`--memory-jobs` of them), per
    /// open event stream and per waiting long-poll (`--streams` of each).
    #[arg(long, conflicts_with_all = ["drain", "batches_only", "lists", "claims", "soak", "postgres"])]
    pub memory: bool,
    /// Queued jobs admitted before memory is read.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_jobs: usize,
    /// Event streams, then long-polls, held open while memory is read.
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// Before measuring, fill the database as a long-lived service's is:
    /// `--preload-finished` succeeded jobs and `--preload-queued` jobs
    /// waiting in a paused queue of their own (`preload-waiting`). Compare
    /// with the same figures without it, in one sitting.
    #[arg(long, conflicts_with_all = ["memory", "lists", "claims", "soak"])]
    pub preload: bool,
    /// Succeeded jobs stored by `--preload`.
    #[arg(long, default_value_t = 10_000_000)]
    pub preload_finished: usize,
    /// Queued jobs stored by `--preload`.
    #[arg(long, default_value_t = 1_000_000)]
    pub preload_queued: usize,
    /// Measure shared mode instead: one, then two instances on this
    /// PostgreSQL database (each run in a fresh schema, dropped afterwards),
    /// e.g. `postgres://postgres@127.0.0.1:5432/test`.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Soak instead of measuring: run mixed traffic against a `spool`
    /// process for this long while injecting faults (SIGKILL and restart,
    /// slow and idle connections, malformed requests; with `--postgres`,
    /// database outages), then report accepted, lost and stuck jobs and 5xx
    /// answers. Fails unless nothing was lost or stuck.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub soak: Option<Duration>,
    /// With `--soak`: time between two SIGKILLs of the process.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub kill_every: Duration,
    /// Measure lists instead: `GET /v1/jobs` with metadata filters over
    /// `--list-jobs` stored jobs, and point reads and `/readyz` while
    /// `--list-parallel` lists run at once (on PostgreSQL with `--postgres`).
    #[arg(long)]
    pub lists: bool,
    /// Measure what a rate limit costs claims instead: queued jobs drained
    /// with and without an unreached limit, alternating rounds, and the
    /// memory of 100 000 keys in use.
    #[arg(long)]
    pub claims: bool,
    /// Jobs stored before lists are measured.
    #[arg(long, default_value_t = 100_000)]
    pub list_jobs: usize,
    /// Lists running at once while point reads are measured.
    #[arg(long, default_value_t = 32)]
    pub list_parallel: usize,
}

const NOOP_JOB: &str = r#"{"kind":"noop","queue":"bench","payload":{"n":1}}"#;

/// The admin key the benchmark's service requires: every figure is measured
/// as clients call, with a key (the open-mode service of the comparison
/// ignores it).
const BENCH_KEY: &str = "spool-bench-admin-key-0123456789";

/// A client that sends the benchmark's key with every request.
fn keyed_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_KEY}"))?,
    );
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .default_headers(headers)
        .build()?)
}

/// A started service: its address, engine and serving task.
type Started = (
    SocketAddr,
    crate::engine::Engine,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// A fresh service on its own SQLite file, serving until `stop`.
async fn start_service(
    dir: &std::path::Path,
    name: &str,
    keyed: bool,
    stop: &CancellationToken,
) -> anyhow::Result<Started> {
    let api_keys = keyed
        .then(|| crate::access::parse_api_keys(&format!("bench:admin:{BENCH_KEY}")))
        .transpose()?
        .map(crate::config::ApiKeysSetting);
    let url = format!("sqlite://{}", dir.join(name).display());
    start_with(
        Config {
            api_keys,
            ..config_on(&url)
        },
        stop,
    )
    .await
}

/// A service in open mode on `database_url`, serving until `stop`.
async fn start_on(database_url: &str, stop: &CancellationToken) -> anyhow::Result<Started> {
    start_with(config_on(database_url), stop).await
}

/// The defaults, on a port of its own and `database_url`.
fn config_on(database_url: &str) -> Config {
    Config {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: database_url.to_owned(),
        ..Config::default()
    }
}

async fn start_with(config: Config, stop: &CancellationToken) -> anyhow::Result<Started> {
    let app = App::builder(config).build().await?;
    let addr = app.local_addr()?;
    let engine = app.engine().clone();
    let server = tokio::spawn(app.run_until(stop.clone().cancelled_owned()));
    Ok((addr, engine, server))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(duration) = args.soak {
        return soak::run(&args, duration).await;
    }
    if args.lists {
        return lists::run(&args).await;
    }
    if args.claims {
        return claims::run(&args).await;
    }
    if args.memory {
        return memory::run(&args).await;
    }
    if let Some(url) = &args.postgres {
        return shared::run(&args, url).await;
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    if args.preload {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        preload::preload(&args, &url).await?;
    }
    let stop = CancellationToken::new();
    let (spool_addr, engine, server) = start_service(dir.path(), "bench.db", true, &stop).await?;
    let bare_addr = start_bare_server().await?;
    let client = keyed_client(args.connections)?;

    let queue = |paused: bool| bench_queue(&args, paused);
    engine.put_queue("bench", &queue(true)).await?;
    // Batches go to a queue of their own, paused: the figure is admission
    // (what BullMQ's `addBulk` measures), and nothing else runs meanwhile.
    engine.put_queue("bench-batch", &queue(true)).await?;

    println!(
        "spool bench: {} connections, {} rounds of {:?}, {} worker slots, {} cores",
        args.connections,
        args.rounds,
        args.duration,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if args.drain {
        drains(&args, &client, &engine, spool_addr).await?;
        stop.cancel();
        server.await??;
        return Ok(());
    }
    if !args.batches_only {
        single_jobs(&args, &client, &engine, spool_addr, bare_addr, dir.path()).await?;
        drains(&args, &client, &engine, spool_addr).await?;
    }

    // 4. Accepted jobs/s through batches.
    let mut batched = Vec::new();
    for _ in 0..args.rounds {
        batched.push(batch_load(&client, spool_addr, &args).await?);
    }
    println!(
        "spool POST /v1/batches ({} noop jobs each, {} connections): {:>10.0} jobs/s accepted (median)",
        args.batch_size,
        args.batch_connections,
        median(&mut batched)
    );

    // 5. Long-poll wake-up: from a job's stored end to its waiting
    // `GET ?wait=` answer arriving.
    engine.put_queue("bench-wait", &queue(false)).await?;
    let mut wakes = Vec::with_capacity(args.long_poll_samples);
    for _ in 0..args.long_poll_samples {
        wakes.push(long_poll_wake_ms(&client, spool_addr).await?);
    }
    wakes.sort_by(f64::total_cmp);
    println!(
        "long-poll answer after the job's end:       p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        percentile(&wakes, 0.50),
        percentile(&wakes, 0.99),
        wakes.len()
    );

    // 6. What waiting costs: many long-polls held open on a job that does
    // not finish, and the process's CPU time meanwhile.
    engine.put_queue("bench-held", &queue(true)).await?;
    let held: serde_json::Value = client
        .post(format!("http://{spool_addr}/v1/jobs"))
        .json(&serde_json::json!({"kind": "noop", "queue": "bench-held"}))
        .send()
        .await?
        .json()
        .await?;
    let held_url = format!(
        "http://{spool_addr}/v1/jobs/{}?wait=6",
        held["id"].as_str().context("a job id")?
    );
    let waiting: Vec<_> = (0..args.long_polls)
        .map(|_| {
            let (client, url) = (client.clone(), held_url.clone());
            tokio::spawn(async move { client.get(url).send().await?.bytes().await })
        })
        .collect();
    // Let every request reach its wait, then measure a quiet window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_before, wall_before) = (process_cpu_ms(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_ms = process_cpu_ms()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let wall_ms = wall_before.elapsed().as_secs_f64() * 1000.0;
    for request in waiting {
        request.await??;
    }
    match cpu_ms {
        Some(cpu_ms) => println!(
            "CPU while {} long-polls wait:             {:>10.1} % of one core",
            args.long_polls,
            cpu_ms / wall_ms * 100.0
        ),
        None => println!("CPU while long-polls wait: not measured (no /proc/self/stat)"),
    }

    stop.cancel();
    server.await??;
    Ok(())
}

/// The drain figures: queued jobs admitted one by one, then in batches,
/// alternating which goes first.
async fn drains(
    args: &BenchArgs,
    client: &reqwest::Client,
    engine: &crate::engine::Engine,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    use drain::Fill;
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Fill::OneByOne, Fill::Batches]
        } else {
            [Fill::Batches, Fill::OneByOne]
        };
        for fill in order {
            let rate = drain::drain(client, &[addr], engine, args, fill, |_| String::new()).await?;
            match fill {
                Fill::OneByOne => single.push(rate),
                Fill::Batches => batched.push(rate),
            }
        }
    }
    println!(
        "drain of {} queued noop jobs, admitted one by one: {:>8.0} jobs/s (median)",
        args.jobs,
        median(&mut single)
    );
    println!(
        "drain of {} queued noop jobs, admitted in batches: {:>8.0} jobs/s (median)",
        args.jobs,
        median(&mut batched)
    );
    Ok(())
}

/// CPU time (user + system) of this process so far, in ms, from
/// `/proc/self/stat` (Linux).
fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ")".
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux Spool targets.
    Some(ticks * 10.0)
}

/// Submits a 20 ms sleep job, long-polls it, and returns how long after its
/// `finished_at` the answer arrived (ms; clock resolution 1 ms).
async fn long_poll_wake_ms(client: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<f64> {
    let job: serde_json::Value = client
        .post(format!("http://{addr}/v1/jobs"))
        .json(&serde_json::json!({"kind": "sleep", "queue": "bench-wait", "payload": {"ms": 20}}))
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().context("a job id")?;
    let done: serde_json::Value = client
        .get(format!("http://{addr}/v1/jobs/{id}?wait=10"))
        .send()
        .await?
        .json()
        .await?;
    let arrived = crate::domain::Timestamp::now();
    let finished = done["finished_at"]
        .as_str()
        .and_then(crate::domain::Timestamp::parse_rfc3339)
        .context("the long-poll answered before the job finished")?;
    Ok((arrived.as_millis() - finished.as_millis()) as f64)
}

/// The single-job figures: submissions against a bare handler, end to end,
/// and enqueue-to-start latency.
async fn single_jobs(
    args: &BenchArgs,
    client: &reqwest::Client,
    engine: &crate::engine::Engine,
    spool_addr: SocketAddr,
    bare_addr: SocketAddr,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let queue = |paused: bool| bench_queue(args, paused);
    // 1. Accepted submissions/s, against the bare handler and a service in
    // open mode (no key checked), alternating rounds.
    let stop_open = CancellationToken::new();
    let (open_addr, open_engine, open_server) =
        start_service(dir, "open.db", false, &stop_open).await?;
    open_engine.put_queue("bench", &queue(true)).await?;
    let (mut bare, mut open, mut durable) = (Vec::new(), Vec::new(), Vec::new());
    // The keyed service once more with metrics recording switched off, to
    // show what recording costs the submission path.
    let mut unrecorded = Vec::new();
    for round in 0..args.rounds {
        bare.push(post_load(client, &[bare_addr], "/bare", args).await?);
        // Each goes first every other round: neither gets the warmer start.
        if round % 2 == 0 {
            open.push(post_load(client, &[open_addr], "/v1/jobs", args).await?);
            durable.push(post_load(client, &[spool_addr], "/v1/jobs", args).await?);
            metrics::set_recording(false);
            unrecorded.push(post_load(client, &[spool_addr], "/v1/jobs", args).await?);
            metrics::set_recording(true);
        } else {
            metrics::set_recording(false);
            unrecorded.push(post_load(client, &[spool_addr], "/v1/jobs", args).await?);
            metrics::set_recording(true);
            durable.push(post_load(client, &[spool_addr], "/v1/jobs", args).await?);
            open.push(post_load(client, &[open_addr], "/v1/jobs", args).await?);
        }
    }
    stop_open.cancel();
    open_server.await??;
    let (bare, open, durable) = (median(&mut bare), median(&mut open), median(&mut durable));
    let unrecorded = median(&mut unrecorded);
    println!("bare axum POST (parse the same JSON, 202):  {bare:>10.0} req/s (median)");
    println!("spool POST /v1/jobs, open mode (no key):    {open:>10.0} req/s (median)");
    println!("spool POST /v1/jobs (durable noop, key):    {durable:>10.0} req/s (median)");
    println!("the same, metrics recording switched off:   {unrecorded:>10.0} req/s (median)");
    println!(
        "ratio durable / bare:                       {:>10.2}",
        durable / bare
    );
    println!(
        "ratio with a key / open mode:               {:>10.2}",
        durable / open
    );
    println!(
        "ratio metrics recorded / not recorded:      {:>10.2}",
        durable / unrecorded
    );

    // Drain what the submission rounds left, so later figures start idle.
    engine.put_queue("bench", &queue(false)).await?;
    wait_until_idle(engine).await?;

    // 2. End-to-end: submit `jobs` noop jobs as fast as possible, until all succeeded.
    let mut e2e = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        submit_count(client, &[spool_addr], args.jobs, args.connections).await?;
        wait_until_idle(engine).await?;
        e2e.push(args.jobs as f64 / started.elapsed().as_secs_f64());
    }
    let e2e = median(&mut e2e);
    println!(
        "end-to-end noop (submitted → succeeded):    {e2e:>10.0} jobs/s (median of {} rounds of {} jobs)",
        args.rounds, args.jobs
    );
    println!(
        "ratio end-to-end / durable POST:            {:>10.2}",
        e2e / durable
    );

    // 3. Enqueue-to-start latency with idle workers: from sending the POST
    // to the worker starting the job (an upper bound of the true figure).
    let started_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut events = engine.events().subscribe();
    let recorder = {
        let started_at = started_at.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if event.kind == EventKind::Started {
                    started_at.lock().await.insert(
                        event.job_id().map(|id| id.to_string()).unwrap_or_default(),
                        Instant::now(),
                    );
                }
            }
        })
    };
    let jobs_url = reqwest::Url::parse(&format!("http://{spool_addr}/v1/jobs"))?;
    let mut latencies = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let sent = Instant::now();
        let response = post_noop(client, &jobs_url).await?;
        let body: serde_json::Value = response.json().await?;
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = started_at.lock().await.get(&id) {
                latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("job {id} did not start within 5 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Let the worker finish so every probe meets idle workers.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    recorder.abort();
    latencies.sort_by(f64::total_cmp);
    println!(
        "enqueue-to-start latency, idle workers:     p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.len()
    );
    Ok(())
}

/// POSTs batches of `batch_size` noop jobs from `batch_connections` tasks
/// for `duration`; returns accepted jobs/s.
async fn batch_load(
    client: &reqwest::Client,
    addr: SocketAddr,
    args: &BenchArgs,
) -> anyhow::Result<f64> {
    let url = reqwest::Url::parse(&format!("http://{addr}/v1/batches"))?;
    let job = r#"{"kind":"noop","queue":"bench-batch","payload":{"n":1}}"#;
    let body = Bytes::from(format!(
        r#"{{"jobs":[{}]}}"#,
        vec![job; args.batch_size].join(",")
    ));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for _ in 0..args.batch_connections {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let size = args.batch_size as u64;
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            while Instant::now() < deadline {
                post_batch(&client, &url, body.clone()).await?;
                accepted += size;
            }
            anyhow::Ok(accepted)
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await??;
    }
    Ok(accepted as f64 / started.elapsed().as_secs_f64())
}

/// POSTs one batch; an error unless it was accepted.
async fn post_batch(
    client: &reqwest::Client,
    url: &reqwest::Url,
    body: Bytes,
) -> anyhow::Result<()> {
    let response = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    response.bytes().await?;
    if status != StatusCode::ACCEPTED {
        bail!("a batch got {status}");
    }
    Ok(())
}

/// A bare axum server that parses the job spec exactly as the API does.
async fn start_bare_server() -> anyhow::Result<SocketAddr> {
    async fn bare(body: Bytes) -> (StatusCode, &'static str) {
        match crate::http::parse_json::<JobSpec>(&body) {
            Ok(_) => (StatusCode::ACCEPTED, r#"{"status":"queued"}"#),
            Err(_) => (StatusCode::UNPROCESSABLE_ENTITY, "{}"),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route("/bare", axum::routing::post(bare));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// Each address's URL of `path`.
fn urls(addrs: &[SocketAddr], path: &str) -> anyhow::Result<Vec<reqwest::Url>> {
    let urls = addrs
        .iter()
        .map(|addr| reqwest::Url::parse(&format!("http://{addr}{path}")))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        bail!("no address to send to");
    }
    Ok(urls)
}

/// POSTs noop jobs from `connections` tasks (spread over `addrs`) for
/// `duration`; returns accepted/s.
async fn post_load(
    client: &reqwest::Client,
    addrs: &[SocketAddr],
    path: &str,
    args: &BenchArgs,
) -> anyhow::Result<f64> {
    let urls = urls(addrs, path)?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for task in 0..args.connections {
        let (client, url) = (client.clone(), urls[task % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            while Instant::now() < deadline {
                let response = send_noop(&client, &url).await?;
                if response.status() == StatusCode::ACCEPTED {
                    accepted += 1;
                }
                response.bytes().await?;
            }
            anyhow::Ok(accepted)
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await??;
    }
    Ok(accepted as f64 / started.elapsed().as_secs_f64())
}

/// POSTs one noop job.
async fn send_noop(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(NOOP_JOB)
        .send()
        .await
}

/// POSTs one noop job; an error unless it was accepted.
async fn post_noop(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> anyhow::Result<reqwest::Response> {
    let response = send_noop(client, url).await?;
    if response.status() != StatusCode::ACCEPTED {
        bail!("submission got {}", response.status());
    }
    Ok(response)
}

/// Submits exactly `count` noop jobs over `connections` tasks (spread over
/// `addrs`).
async fn submit_count(
    client: &reqwest::Client,
    addrs: &[SocketAddr],
    count: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let urls = urls(addrs, "/v1/jobs")?;
    let per_task = count.div_ceil(connections);
    let mut tasks = Vec::new();
    for task in 0..connections {
        let n = per_task.min(count.saturating_sub(task * per_task));
        let (client, url) = (client.clone(), urls[task % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                post_noop(&client, &url).await?.bytes().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Submits exactly `count` noop jobs to the `bench` queue in batches of at
/// most `batch_size`, from `connections` tasks (spread over `addrs`).
async fn submit_count_in_batches(
    client: &reqwest::Client,
    addrs: &[SocketAddr],
    count: usize,
    batch_size: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let urls = urls(addrs, "/v1/batches")?;
    let batch_size = batch_size.max(1);
    let batches = count.div_ceil(batch_size);
    let body = |size: usize| {
        Bytes::from(format!(
            r#"{{"jobs":[{}]}}"#,
            vec![NOOP_JOB; size].join(",")
        ))
    };
    let (full, last) = (body(batch_size), body(count - (batches - 1) * batch_size));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..connections.max(1) {
        let (client, url, next) = (
            client.clone(),
            urls[task % urls.len()].clone(),
            next.clone(),
        );
        let (full, last) = (full.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let body = if batch + 1 == batches {
                    last.clone()
                } else {
                    full.clone()
                };
                post_batch(&client, &url, body).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn wait_until_idle(engine: &crate::engine::Engine) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = engine.get_queue("bench").await?.counts;
        if counts.scheduled + counts.queued + counts.running == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bench queue did not drain within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The settings of the benchmark's queues: `--concurrency` slots, room
/// for everything a round submits.
fn bench_queue(args: &BenchArgs, paused: bool) -> QueueSettings {
    QueueSettings {
        concurrency: Some(crate::domain::Concurrency::Fixed(args.concurrency)),
        capacity: Some(100_000_000),
        paused: Some(paused),
        defaults: Some(QueueDefaultsPatch::default()),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}
