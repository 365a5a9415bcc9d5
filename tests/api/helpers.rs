//! Starting the service for a test: in process on port 0 (`spawn_app`), or
//! as the real binary (`SpoolProcess`) when a test needs to kill it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::app::{App, AppBuilder};
use spool::config::Config;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The webhook secret of test apps (`whsec_` + base64 of 24 bytes).
/// How long a test waits for what should happen at once on an idle
/// machine: generous, since CI machines are shared and slow.
pub const SOON: Duration = Duration::from_secs(20);

pub const TEST_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The running app's engine, for conditions the API does not show one
    /// by one (how many long-polls wait).
    engine: spool::engine::Engine,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: TempDir,
}

/// Configuration for a test: a fresh database in its own directory.
pub fn test_config(dir: &Path) -> Config {
    Config {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: format!("sqlite://{}", dir.join("spool.db").display()),
        shutdown_grace: Duration::from_secs(5),
        cancel_grace: Duration::from_millis(500),
        webhook_secret: Some(TEST_WEBHOOK_SECRET.parse().expect("a valid secret")),
        ..Config::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_kinds(adjust, Vec::new()).await
}

/// Starts the app with job kinds of the test's own besides the built-ins.
pub async fn spawn_app_with_kinds(
    adjust: impl FnOnce(&mut Config),
    kinds: Vec<Box<dyn FnOnce(AppBuilder) -> AppBuilder>>,
) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let mut builder = App::builder(config);
    for add in kinds {
        builder = add(builder);
    }
    let app = builder.build().await.expect("the app starts");
    let addr = app.local_addr().expect("a local address");
    let engine = app.engine().clone();
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until(stop.clone().cancelled_owned()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        engine,
        stop,
        server: Some(server),
        _dir: dir,
    }
}

impl TestApp {
    /// Waits until `n` long-polls of this app wait: each is registered for
    /// its wake-up, so what the test does next is what must wake it.
    pub async fn until_long_polls_wait(&self, n: usize) {
        let deadline = Instant::now() + SOON;
        while self.engine.long_polls_waiting() < n {
            assert!(
                Instant::now() < deadline,
                "{n} long-polls did not start waiting"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// A POST carrying W3C trace context headers.
    pub async fn post_traced(
        &self,
        path: &str,
        body: &Value,
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(path))
            .header("traceparent", traceparent);
        if let Some(state) = tracestate {
            request = request.header("tracestate", state);
        }
        request.json(body).send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Submits a job and returns its JSON, asserting a 202.
    pub async fn submit(&self, spec: Value) -> Value {
        let response = self.post("/v1/jobs", &spec).await;
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, 202, "submission of {spec} answered {body}");
        body
    }

    pub async fn job(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("a JSON body")
    }

    /// Polls the job until `done` holds for it, or panics after `within`.
    pub async fn wait_for(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job never reached the expected state: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_status(&self, id: &str, status: &str, within: Duration) -> Value {
        self.wait_for(id, within, |job| job["status"] == status)
            .await
    }

    pub async fn configure_queue(&self, name: &str, settings: Value) {
        let response = self.put(&format!("/v1/queues/{name}"), &settings).await;
        assert!(
            response.status().is_success(),
            "queue {name} not configured: {}",
            response.status()
        );
    }

    /// Stops the server as SIGTERM would.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn noop() -> Value {
    json!({"kind": "noop"})
}

pub fn sleep_ms(ms: u64) -> Value {
    json!({"kind": "sleep", "payload": {"ms": ms}})
}

/// The real `spool` binary, on a database file that outlives it.
pub struct SpoolProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where its output goes unless the test takes it: shown when the test
    /// fails, removed when the process is dropped.
    log: PathBuf,
}

impl SpoolProcess {
    pub fn start(db: &Path, extra_env: &[(&str, &str)]) -> SpoolProcess {
        Self::start_with_url(&format!("sqlite://{}", db.display()), extra_env)
    }

    /// The binary on any database, e.g. a [`PgSchema`]'s.
    pub fn start_with_url(database_url: &str, extra_env: &[(&str, &str)]) -> SpoolProcess {
        Self::start_configured(database_url, extra_env, |_| {})
    }

    /// As [`Self::start_with_url`], with the process's log (stderr) kept in
    /// `log`, for a test to show when it fails.
    pub fn start_logged(
        database_url: &str,
        extra_env: &[(&str, &str)],
        log: &Path,
    ) -> SpoolProcess {
        let file = std::fs::File::create(log).expect("a log file");
        Self::start_configured(database_url, extra_env, |command| {
            command.stderr(Stdio::from(file));
        })
    }

    /// The binary as [`SpoolProcess::start_with_url`] runs it, with
    /// `configure` applied to its command last (to pipe its output, set its
    /// limits).
    pub fn start_configured(
        database_url: &str,
        extra_env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> SpoolProcess {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log =
            std::env::temp_dir().join(format!("spool-test-{}-{port}.log", std::process::id()));
        let output = std::fs::File::create(&log).expect("a log file");
        let errors = output.try_clone().expect("a second handle on the log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
        command
            .env("SPOOL_BIND", addr.to_string())
            .env("SPOOL_DATABASE_URL", database_url)
            .env("SPOOL_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors));
        for (name, value) in extra_env {
            command.env(name, value);
        }
        configure(&mut command);
        let child = command.spawn().expect("the spool binary starts");
        let mut process = SpoolProcess { child, addr, log };
        process.wait_ready();
        process
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "spool on {} exited before listening ({status}):\n{}",
                    self.addr,
                    self.log_text()
                );
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("spool did not start listening on {}", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `POST path` with a JSON body, answered with JSON (any status).
    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        reqwest::Client::new()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// `GET path`, answered with JSON (any status).
    pub async fn get_json(&self, path: &str) -> Value {
        reqwest::get(self.url(path))
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// What the process has logged so far (when the test did not take its
    /// output).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The binary's log lines (JSON on a piped stdout), as they come.
    pub fn log_lines(&mut self) -> std::sync::mpsc::Receiver<Value> {
        let stdout = self.child.stdout.take().expect("piped stdout");
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let entry = serde_json::from_str(&line).unwrap_or(Value::Null);
                if lines.send(entry).is_err() {
                    return;
                }
            }
        });
        received
    }

    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("reaped");
    }

    pub fn sigterm(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM sent");
    }
}

impl Drop for SpoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the process said (the test harness
        // prints a failed test's stderr).
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- the last {} lines of spool on {} ---\n{}",
                tail.len(),
                self.addr,
                tail.join("\n")
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A port for a spool process, free when checked. Taken from below the
/// kernel's ephemeral range (32768 and up on Linux), and never the same
/// twice in this test binary: a `bind(0)` port released for the child to
/// take could be handed to another test's child in between, and that
/// child answered this test's requests (503s from a test that had just
/// stopped its database).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (start.wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `id` of a job or batch as the API answered it.
pub fn id_of(value: &Value) -> String {
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {value}"))
        .to_owned()
}

/// `GET url` with `client`: the status and the JSON body (`null` when
/// there is none), for tests that talk to a spawned process.
pub async fn fetch_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("spool.db")
}

/// The `job_ids` of a batch, in submission order.
pub fn job_ids(batch: &Value) -> Vec<String> {
    batch["job_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no job_ids in {batch}"))
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect()
}

/// A timestamp field of the API in milliseconds since the epoch.
pub fn millis(timestamp: &Value) -> i64 {
    spool::domain::Timestamp::parse_rfc3339(
        timestamp
            .as_str()
            .unwrap_or_else(|| panic!("no timestamp: {timestamp}")),
    )
    .expect("an RFC 3339 timestamp")
    .as_millis()
}

/// The test PostgreSQL (`SPOOL_TEST_DATABASE_URL`, by default the local
/// server's `test` database).
fn pg_base_url() -> String {
    std::env::var("SPOOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A connection to the test PostgreSQL; `None` when it cannot be reached
/// and this is not CI (where that fails the test instead): `cargo test`
/// works without it.
async fn pg_admin() -> Option<sqlx::PgConnection> {
    let base = pg_base_url();
    let connecting = tokio::time::timeout(
        Duration::from_secs(5),
        <sqlx::PgConnection as sqlx::Connection>::connect(&base),
    )
    .await
    .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
    match connecting {
        Ok(connection) => Some(connection),
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED (PostgreSQL unreachable at {base}: {error})");
            None
        }
        Err(error) => panic!("PostgreSQL is unreachable at {base} under CI=true: {error}"),
    }
}

/// Runs `sql` on the test PostgreSQL from a `Drop`: on a thread and runtime
/// of its own, as the test's runtime may be the current thread, blocked
/// right there. Failures are ignored (it is clean-up).
fn pg_admin_blocking(sql: String) {
    pg_admin_blocking_with(move |mut admin| async move {
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await;
    });
}

/// Runs `work` on an admin connection from a thread and runtime of its own,
/// and waits for it: usable from `Drop`, while the test's runtime is blocked.
fn pg_admin_blocking_with<Work, Done>(work: Work)
where
    Work: FnOnce(sqlx::PgConnection) -> Done + Send + 'static,
    Done: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(admin) = sqlx::PgConnection::connect(&pg_base_url()).await {
                    work(admin).await;
                }
            });
        }
    })
    .join();
}

/// One PostgreSQL test at a time in this binary. Each instance keeps up to
/// 17 connections, and two tests of three instances each (with the other
/// test binaries' connections) would take more than the 100 a default
/// PostgreSQL allows: the loser fails with `too many clients already`.
async fn pg_turn() -> tokio::sync::OwnedSemaphorePermit {
    static TURN: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    TURN.get_or_init(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1)))
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed")
}

/// A fresh schema on the test PostgreSQL, dropped afterwards.
pub struct PgSchema {
    /// Connects into the schema.
    pub url: String,
    name: String,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl PgSchema {
    /// `None` when PostgreSQL cannot be reached outside CI (see [`pg_admin`]).
    pub async fn create() -> Option<PgSchema> {
        let turn = pg_turn().await;
        let mut admin = pg_admin().await?;
        let name = format!("spool_api_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut admin)
            .await
            .expect("a fresh schema");
        let base = pg_base_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        // Named after the schema, so its connections can be ended with it.
        let url =
            format!("{base}{separator}options=-c%20search_path%3D{name}&application_name={name}");
        Some(PgSchema {
            url,
            name,
            _turn: turn,
        })
    }
}

impl Drop for PgSchema {
    /// Drops the schema from a thread of its own while this one blocks. An
    /// in-process app of the test may have a transaction open in it still
    /// (a maintenance task caught mid-statement when the test ended): that
    /// task runs on this thread's runtime, which is blocked here, so it can
    /// never commit. Whatever holds locks in the schema belongs to this
    /// finished test; it is ended, and the drop tried again.
    fn drop(&mut self) {
        let name = self.name.clone();
        pg_admin_blocking_with(move |mut admin| async move {
            let _ = sqlx::query("SET lock_timeout = '2s'")
                .execute(&mut admin)
                .await;
            // The connections of the test's in-process apps: their pools
            // outlive the test's runtime until the test binary exits, and
            // enough of them would exhaust the server's connection slots.
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .execute(&mut admin)
            .await;
            for _ in 0..5 {
                let drop = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                if sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut admin)
                    .await
                    .is_ok()
                {
                    return;
                }
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                     JOIN pg_class c ON c.oid = l.relation \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                )
                .bind(&name)
                .execute(&mut admin)
                .await;
            }
        });
    }
}

/// A fresh database of its own on the test PostgreSQL (not a schema), for a
/// test that takes it away: refusing its connections disturbs no other
/// test. Dropped afterwards.
pub struct PgDatabase {
    /// Connects into the database.
    pub url: String,
    name: String,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl PgDatabase {
    /// `None` when PostgreSQL cannot be reached outside CI (see [`pg_admin`]).
    pub async fn create() -> Option<PgDatabase> {
        let turn = pg_turn().await;
        let mut admin = pg_admin().await?;
        let name = format!("spool_outage_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("a fresh database");
        let base = pg_base_url();
        let (server, _) = base.rsplit_once('/').expect("a database URL");
        let url = format!("{server}/{name}");
        Some(PgDatabase {
            url,
            name,
            _turn: turn,
        })
    }

    async fn admin(&self, sql: String) {
        let mut admin = pg_admin().await.expect("the admin connection");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("an admin statement");
    }

    /// Refuses new connections and ends every open one.
    pub async fn go_down(&self) {
        let name = &self.name;
        self.admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .await;
        self.admin(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    }

    pub async fn come_back(&self) {
        let name = &self.name;
        self.admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .await;
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        pg_admin_blocking(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}
