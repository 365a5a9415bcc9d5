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
pub const TEST_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
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
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until(stop.clone().cancelled_owned()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        stop,
        server: Some(server),
        _dir: dir,
    }
}

impl TestApp {
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
        command
            .env("SPOOL_BIND", addr.to_string())
            .env("SPOOL_DATABASE_URL", database_url)
            .env("SPOOL_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        configure(&mut command);
        let child = command.spawn().expect("the spool binary starts");
        let process = SpoolProcess { child, addr };
        process.wait_ready();
        process
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
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
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
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

/// A fresh schema on the test PostgreSQL (`SPOOL_TEST_DATABASE_URL`, by
/// default the local server's `test` database), dropped afterwards.
pub struct PgSchema {
    /// Connects into the schema.
    pub url: String,
    name: String,
    base: String,
}

impl PgSchema {
    /// `None` when PostgreSQL cannot be reached and this is not CI (where
    /// that fails the test instead): `cargo test` works without it.
    pub async fn create() -> Option<PgSchema> {
        let base = std::env::var("SPOOL_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let connecting = tokio::time::timeout(
            Duration::from_secs(5),
            <sqlx::PgConnection as sqlx::Connection>::connect(&base),
        )
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        let mut admin = match connecting {
            Ok(connection) => connection,
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED (PostgreSQL unreachable at {base}: {error})");
                return None;
            }
            Err(error) => panic!("PostgreSQL is unreachable at {base} under CI=true: {error}"),
        };
        let name = format!("spool_api_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut admin)
            .await
            .expect("a fresh schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
        Some(PgSchema { url, name, base })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // A thread and runtime of its own: the test's runtime may be the
        // current thread, blocked right here.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&base).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {name} CASCADE"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}
