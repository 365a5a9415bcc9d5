//! `spool bench --soak DURATION`: mixed traffic against a real `spool`
//! process while faults are injected (SIGKILL and restart, slow and idle
//! connections, malformed requests, failing, timing-out and cancelled jobs,
//! and with `--postgres` database outages), then a count of what was
//! accepted, lost and stuck. Exits non-zero unless nothing was lost or stuck.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::BenchArgs;

/// Concurrent clients of the mixed traffic, each pausing between requests:
/// about 300 jobs/s submitted, well under what the queue's 256 slots run,
/// so that a job still waiting at the end is stuck, not merely queued.
const CLIENTS: usize = 8;
const PAUSE: Duration = Duration::from_millis(20);
/// Slow-header connections opened per round, and their rounds' interval.
const SLOW_CONNECTIONS: usize = 50;
const SLOW_EVERY: Duration = Duration::from_secs(2);
/// Idle connections held open for the whole run.
const IDLE_CONNECTIONS: usize = 200;
/// A database outage (`--postgres`): how long, and how often.
const OUTAGE_FOR: Duration = Duration::from_secs(8);
const OUTAGE_EVERY: Duration = Duration::from_secs(30);
/// Lease of the soaked process: short, so a killed process's jobs come back
/// within seconds.
const LEASE_TTL: &str = "3s";
/// Time every accepted job gets to end once the faults stop.
const SETTLE: Duration = Duration::from_secs(90);

const CONFIG: &str = r#"
[queues.soak]
concurrency = 256
capacity = 100000
"#;

/// What the traffic saw.
#[derive(Default)]
struct Tally {
    accepted: Mutex<Vec<String>>,
    requests: AtomicU64,
    server_errors: AtomicU64,
    /// 503 while the store was down or the process starting: expected.
    unavailable: AtomicU64,
    client_errors: AtomicU64,
    /// No answer: the process was killed or restarting.
    unanswered: AtomicU64,
}

pub async fn run(args: &BenchArgs, duration: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config = dir.path().join("spool.toml");
    std::fs::write(&config, CONFIG)?;
    let database = match &args.postgres {
        Some(base) => Some(Database::create(base).await?),
        None => None,
    };
    let url = match &database {
        Some(database) => database.url.clone(),
        None => format!("sqlite://{}", dir.path().join("soak.db").display()),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut process = Process {
        addr,
        url,
        config: config.clone(),
        log: dir.path().join("spool.log"),
        child: None,
    };
    println!(
        "spool bench --soak {duration:?}: {} store, kill -9 every {:?}, {} clients, \
         {SLOW_CONNECTIONS} slow connections every {SLOW_EVERY:?}, {IDLE_CONNECTIONS} idle ones{}; log {}",
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.kill_every,
        CLIENTS,
        if database.is_some() {
            format!(", database down for {OUTAGE_FOR:?} every {OUTAGE_EVERY:?}")
        } else {
            String::new()
        },
        process.log.display()
    );
    process.start().await?;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = format!("http://{addr}");
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut traffic = Vec::new();
    for _ in 0..CLIENTS {
        traffic.push(tokio::spawn(clients(
            client.clone(),
            base.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }
    let attackers = vec![
        tokio::spawn(slow_headers(addr, stop.clone())),
        tokio::spawn(idle_connections(addr, stop.clone())),
    ];
    let outages = database
        .as_ref()
        .map(|database| tokio::spawn(outages(database.clone(), stop.clone())));

    let started = Instant::now();
    let mut kills = 0u32;
    while started.elapsed() < duration {
        let left = duration.saturating_sub(started.elapsed());
        tokio::time::sleep(args.kill_every.min(left)).await;
        if started.elapsed() < duration {
            process.kill_9();
            kills += 1;
            process.start().await?;
        }
    }
    stop.cancel();
    for task in traffic {
        task.await?;
    }
    for task in attackers {
        task.await?;
    }
    if let Some(task) = outages {
        task.await??;
    }

    let accepted: Vec<String> = tally.accepted.lock().await.clone();
    println!(
        "faults stopped after {:?} ({kills} kills); waiting up to {SETTLE:?} for {} accepted jobs to end",
        started.elapsed(),
        accepted.len()
    );
    let (lost, stuck) = settle(&client, &base, &accepted).await;
    process.kill_9();
    if let Some(database) = database {
        database.drop().await;
    }
    let requests = tally.requests.load(Ordering::Relaxed);
    println!("requests        {requests}");
    println!(
        "  4xx           {}",
        tally.client_errors.load(Ordering::Relaxed)
    );
    println!(
        "  503           {} (store down or process starting)",
        tally.unavailable.load(Ordering::Relaxed)
    );
    println!(
        "  other 5xx     {}",
        tally.server_errors.load(Ordering::Relaxed)
    );
    println!(
        "  unanswered    {} (process killed)",
        tally.unanswered.load(Ordering::Relaxed)
    );
    println!("accepted        {}", accepted.len());
    println!("lost            {}", lost.len());
    println!("stuck           {}", stuck.len());
    for id in lost.iter().take(10) {
        println!("  lost  {id}");
    }
    for id in stuck.iter().take(10) {
        println!("  stuck {id}");
    }
    if !lost.is_empty() || !stuck.is_empty() || tally.server_errors.load(Ordering::Relaxed) > 0 {
        bail!("the soak found lost or stuck jobs or unexpected 5xx answers");
    }
    Ok(())
}

/// The soaked `spool` process, restarted on the same address and database.
struct Process {
    addr: SocketAddr,
    url: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .env("SPOOL_BIND", self.addr.to_string())
            .env("SPOOL_DATABASE_URL", &self.url)
            .env("SPOOL_CONFIG", &self.config)
            .env("SPOOL_LEASE_TTL", LEASE_TTL)
            .env("SPOOL_SHUTDOWN_GRACE", "2s")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting spool")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // A PostgreSQL outage may be under way: start-up waits for it.
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "spool did not listen within 30 s; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// One client's mixed traffic until `stop`.
async fn clients(
    client: reqwest::Client,
    base: String,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let pick: u32 = rand::rng().random_range(0..100);
        let known = {
            let accepted = tally.accepted.lock().await;
            (!accepted.is_empty())
                .then(|| accepted[rand::rng().random_range(0..accepted.len())].clone())
        };
        let request = match (pick, known) {
            (0..45, _) => client.post(format!("{base}/v1/jobs")).json(&random_job()),
            (45..52, _) => {
                let jobs: Vec<Value> = (0..5).map(|_| random_job()).collect();
                client
                    .post(format!("{base}/v1/batches"))
                    .json(&json!({ "jobs": jobs }))
            }
            (52..70, Some(id)) => client.get(format!("{base}/v1/jobs/{id}")),
            (70..76, Some(id)) => client.post(format!("{base}/v1/jobs/{id}/cancel")),
            (76..82, _) => client.get(format!("{base}/v1/jobs?metadata.soak=yes&limit=20")),
            (82..90, _) => client
                .post(format!("{base}/v1/jobs"))
                .header("content-type", "application/json")
                .body(malformed()),
            _ => client.get(format!("{base}/readyz")),
        };
        let is_submission = pick < 52;
        match request.send().await {
            Ok(response) => {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                match status {
                    202 if is_submission => record_accepted(&tally, &body).await,
                    503 => {
                        tally.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    500.. => {
                        tally.server_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("unexpected {status}: {body}");
                    }
                    400..=499 => {
                        tally.client_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            Err(_) => {
                tally.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

async fn record_accepted(tally: &Tally, body: &Value) {
    let mut accepted = tally.accepted.lock().await;
    if let Some(id) = body["id"].as_str() {
        if body["job_ids"].is_array() {
            // A batch: its jobs.
            for id in body["job_ids"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str() {
                    accepted.push(id.to_owned());
                }
            }
        } else {
            accepted.push(id.to_owned());
        }
    }
}

/// A job that succeeds, fails and is retried, times out, or runs a while.
fn random_job() -> Value {
    let mut rng = rand::rng();
    let metadata = json!({"soak": if rng.random_bool(0.5) { "yes" } else { "no" }});
    match rng.random_range(0..6) {
        0 => json!({"kind": "noop", "queue": "soak", "metadata": metadata}),
        1 => json!({"kind": "echo", "queue": "soak", "payload": {"n": rng.random_range(0..1000)}}),
        2 => json!({"kind": "sleep", "queue": "soak", "payload": {"ms": rng.random_range(0..300)}}),
        3 => json!({"kind": "sleep", "queue": "soak", "max_attempts": 3,
            "backoff": {"base_ms": 50, "max_ms": 200},
            "payload": {"ms": 20, "fail_attempts": 1}}),
        4 => json!({"kind": "sleep", "queue": "soak", "max_attempts": 1, "timeout_ms": 200,
            "payload": {"ms": 5000}}),
        _ => json!({"kind": "sleep", "queue": "soak", "payload": {"ms": 1500, "steps": 3}}),
    }
}

fn malformed() -> &'static str {
    match rand::rng().random_range(0..4) {
        0 => "{\"kind\": ",
        1 => "{\"kind\": \"noop\", \"priority\": \"high\"}",
        2 => "[1, 2, 3]",
        _ => "{\"kind\": \"no-such-kind\"}",
    }
}

/// Connections that send half a request head and then nothing.
async fn slow_headers(addr: SocketAddr, stop: CancellationToken) {
    let mut held = Vec::new();
    while !stop.is_cancelled() {
        for _ in 0..SLOW_CONNECTIONS {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
                let _ = stream
                    .write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
                    .await;
                held.push(stream);
            }
        }
        // The oldest go: at most ten rounds are held.
        let excess = held.len().saturating_sub(10 * SLOW_CONNECTIONS);
        held.drain(..excess);
        tokio::select! {
            _ = tokio::time::sleep(SLOW_EVERY) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Connections opened and never used; reopened when the server closes them.
async fn idle_connections(addr: SocketAddr, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let mut held = Vec::new();
        for _ in 0..IDLE_CONNECTIONS {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                held.push(stream);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Takes the database away for [`OUTAGE_FOR`] every [`OUTAGE_EVERY`].
async fn outages(database: Database, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OUTAGE_EVERY) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        database.go_down().await?;
        tokio::time::sleep(OUTAGE_FOR).await;
        database.come_back().await?;
    }
}

/// Reads every job of the soak's queue until each accepted one is there
/// and terminal, or [`SETTLE`] passed: returns the accepted ids not found
/// (lost) and those still not terminal (stuck).
async fn settle(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let statuses = match all_statuses(client, base).await {
            Ok(statuses) => statuses,
            Err(error) => {
                eprintln!("listing jobs failed: {error:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut lost = Vec::new();
        let mut stuck = Vec::new();
        for id in ids {
            match statuses.get(id).map(String::as_str) {
                None => lost.push(id.clone()),
                Some("succeeded" | "failed" | "cancelled") => {}
                Some(_) => stuck.push(id.clone()),
            }
        }
        if (lost.is_empty() && stuck.is_empty()) || Instant::now() > deadline {
            return (lost, stuck);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every job of the `soak` queue and its status, a page of 1 000 at a time.
async fn all_statuses(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let mut statuses = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?queue=soak&limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for job in page["items"].as_array().into_iter().flatten() {
            if let (Some(id), Some(status)) = (job["id"].as_str(), job["status"].as_str()) {
                statuses.insert(id.to_owned(), status.to_owned());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(statuses),
        }
    }
}

/// A PostgreSQL database of the soak's own, so that taking it away
/// disturbs nothing else on the server.
#[derive(Clone)]
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str) -> anyhow::Result<Database> {
        let name = format!("spool_soak_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        let url = replace_database(admin_url, &name)?;
        Ok(Database {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    async fn admin(&self, sql: String) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
        Ok(())
    }

    async fn go_down(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .await?;
        self.admin(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
    }

    async fn come_back(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .await
    }

    async fn drop(self) {
        let dropped = self
            .admin(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
        if let Err(error) = dropped {
            eprintln!("could not drop database {}: {error}", self.name);
        }
    }
}

/// `postgres://host/db?query` with `db` replaced by `name`.
fn replace_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}
