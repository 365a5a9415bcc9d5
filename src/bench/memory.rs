//! `spool bench --memory`: what a queued job, an open event stream and a
//! waiting long-poll cost in resident memory, read off a `spool serve`
//! process of its own (so the load generator's memory is not counted).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use super::{BenchArgs, post_batch};

/// Jobs per batch while the queue is filled.
const BATCH: usize = 1_000;
/// Connections filling the queue at once.
const FILLERS: usize = 8;
/// How long memory is left to settle before each reading.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.path().join("spool.log");
    let server = Server::start(addr, &dir.path().join("memory.db"), &log).await?;
    println!(
        "spool bench --memory: {} queued noop jobs, {} event streams, {} long-polls; \
         SQLite in {}; log {}",
        args.memory_jobs,
        args.streams,
        args.streams,
        dir.path().display(),
        log.display()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(FILLERS)
        .build()?;
    let base = format!("http://{addr}");
    let created = client
        .put(format!("{base}/v1/queues/memory"))
        .json(&serde_json::json!({"paused": true, "capacity": 100_000_000}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("creating the paused queue got {}", created.status());
    }

    // Warm-up: one batch, so what every reading shares (connections,
    // prepared statements, the writer's buffers) is in each baseline.
    fill(&client, &base, BATCH).await?;
    // Streams and long-polls follow a job that never finishes (its queue
    // stays paused), so each stays open for the whole reading. They come
    // before the million queued jobs: admitting those leaves the heap
    // larger, and what it freed would hold the streams unseen.
    let held: serde_json::Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&serde_json::json!({"kind": "noop", "queue": "memory"}))
        .send()
        .await?
        .json()
        .await?;
    let held = held["id"].as_str().context("a job id")?.to_owned();
    let streams_client = reqwest::Client::builder().build()?;
    let before_streams = server.rss_kib()?;
    let mut streams = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let response = streams_client
            .get(format!("{base}/v1/events?job_id={held}"))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("an event stream got {}", response.status());
        }
        streams.push(response);
    }
    tokio::time::sleep(SETTLE).await;
    let with_streams = server.rss_kib()?;
    println!(
        "per open event stream (GET /v1/events):      {:>10.0} bytes",
        per_item_bytes(before_streams, with_streams, args.streams)
    );
    drop(streams);
    tokio::time::sleep(SETTLE).await;

    let before_polls = server.rss_kib()?;
    let polls: Vec<_> = (0..args.streams)
        .map(|_| {
            let (client, url) = (
                streams_client.clone(),
                format!("{base}/v1/jobs/{held}?wait=60"),
            );
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    tokio::time::sleep(SETTLE * 2).await;
    let with_polls = server.rss_kib()?;
    println!(
        "per waiting long-poll (GET ?wait=60):        {:>10.0} bytes",
        per_item_bytes(before_polls, with_polls, args.streams)
    );
    for poll in &polls {
        if poll.is_finished() {
            bail!("a long-poll ended before its reading");
        }
    }
    for poll in polls {
        poll.abort();
    }

    tokio::time::sleep(SETTLE).await;
    let empty = server.rss_kib()?;
    fill(&client, &base, args.memory_jobs).await?;
    tokio::time::sleep(SETTLE).await;
    let queued = server.rss_kib()?;
    println!(
        "resident memory, {} queued jobs:             {empty:>10} KiB",
        BATCH + 1
    );
    println!(
        "resident memory, {} queued jobs:        {queued:>10} KiB",
        args.memory_jobs + BATCH + 1
    );
    println!(
        "per queued job:                              {:>10.0} bytes",
        per_item_bytes(empty, queued, args.memory_jobs)
    );

    Ok(())
}

/// Bytes per item of a growth from `before` to `after` KiB over `items`.
fn per_item_bytes(before: u64, after: u64, items: usize) -> f64 {
    (after.saturating_sub(before) * 1024) as f64 / items.max(1) as f64
}

/// Admits `count` noop jobs into the paused `memory` queue in batches.
async fn fill(client: &reqwest::Client, base: &str, count: usize) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(&format!("{base}/v1/batches"))?;
    let job = r#"{"kind":"noop","queue":"memory","payload":{"n":1}}"#;
    let body = Bytes::from(format!(r#"{{"jobs":[{}]}}"#, vec![job; BATCH].join(",")));
    let batches = count.div_ceil(BATCH);
    let mut tasks = Vec::with_capacity(FILLERS);
    for filler in 0..FILLERS {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let mine = batches / FILLERS + usize::from(filler < batches % FILLERS);
        tasks.push(tokio::spawn(async move {
            for _ in 0..mine {
                post_batch(&client, &url, body.clone()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The measured `spool serve`, killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    async fn start(
        addr: SocketAddr,
        database: &std::path::Path,
        log: &std::path::Path,
    ) -> anyhow::Result<Server> {
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .env("SPOOL_BIND", addr.to_string())
            .env(
                "SPOOL_DATABASE_URL",
                format!("sqlite://{}", database.display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()
            .context("starting spool")?;
        let server = Server { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("spool did not listen within 30 s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// The process's resident memory in KiB (Linux).
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the server's /proc status (Linux only)")?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in the server's /proc status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
