//! A service of several real `spool` processes on one fresh PostgreSQL
//! schema, for the multi-process tests (`shared.rs`, `shared_events.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{PgSchema, SpoolProcess};

/// `exec` commands the instances share: `pid` answers with the process id of
/// the `spool` running it (the shell's parent), after sleeping `{seconds}`,
/// so a result says which instance ran the job.
const CONFIG: &str = r#"
[exec.pid]
argv = ["/bin/sh", "-c", "sleep $0; echo $PPID", "{seconds}"]
env = { PATH = "/usr/bin:/bin" }

[queues.spread]
concurrency = 2
capacity = 10000

[queues.long]
concurrency = 1
capacity = 100

[queues.wide]
concurrency = 4
capacity = 100
"#;

pub(crate) struct Cluster {
    pub(crate) instances: Vec<SpoolProcess>,
    pub(crate) client: reqwest::Client,
    _config: tempfile::TempDir,
    _schema: PgSchema,
}

impl Cluster {
    /// `None` (after a loud note) when PostgreSQL is unreachable outside CI.
    pub(crate) async fn start(count: usize) -> Option<Cluster> {
        Self::start_with(count, &[]).await
    }

    /// With more environment for every instance (it wins over the defaults).
    pub(crate) async fn start_with(count: usize, extra_env: &[(&str, &str)]) -> Option<Cluster> {
        let schema = PgSchema::create().await?;
        let config = tempfile::tempdir().unwrap();
        let file = config.path().join("spool.toml");
        std::fs::write(&file, CONFIG).unwrap();
        let file = file.display().to_string();
        let mut env = vec![
            ("SPOOL_CONFIG", file.as_str()),
            // Short leases so a killed instance's jobs come back within seconds.
            ("SPOOL_LEASE_TTL", "2s"),
            ("SPOOL_SHUTDOWN_GRACE", "2s"),
        ];
        env.extend_from_slice(extra_env);
        let instances = (0..count)
            .map(|_| SpoolProcess::start_with_url(&schema.url, &env))
            .collect();
        Some(Cluster {
            instances,
            client: reqwest::Client::new(),
            _config: config,
            _schema: schema,
        })
    }

    pub(crate) async fn post(&self, instance: usize, path: &str, body: &Value) -> (u16, Value) {
        let request = self.client.post(self.instances[instance].url(path));
        answer(request.json(body)).await
    }

    pub(crate) async fn put(&self, instance: usize, path: &str, body: &Value) -> (u16, Value) {
        let request = self.client.put(self.instances[instance].url(path));
        answer(request.json(body)).await
    }

    pub(crate) async fn get(&self, instance: usize, path: &str) -> (u16, Value) {
        answer(self.client.get(self.instances[instance].url(path))).await
    }

    pub(crate) async fn submit(&self, instance: usize, spec: Value) -> String {
        let (status, job) = self.post(instance, "/v1/jobs", &spec).await;
        assert_eq!(status, 202, "{job}");
        job["id"].as_str().unwrap().to_owned()
    }

    /// Polls through `instance` until every job is terminal; returns them.
    pub(crate) async fn wait_all(
        &self,
        instance: usize,
        ids: &[String],
        within: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut done: BTreeMap<String, Value> = BTreeMap::new();
        while done.len() < ids.len() {
            let open: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
            for id in open {
                let (_, job) = self.get(instance, &format!("/v1/jobs/{id}")).await;
                if matches!(
                    job["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                ) {
                    done.insert(id.clone(), job);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} jobs ended in time",
                done.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.into_values().collect()
    }

    async fn running_count(&self, instance: usize, queue: &str) -> usize {
        let (_, page) = self
            .get(
                instance,
                &format!("/v1/jobs?queue={queue}&status=running&limit=100"),
            )
            .await;
        page["items"].as_array().map_or(0, Vec::len)
    }

    /// Waits until `count` jobs run in `queue`, as `instance` sees it.
    pub(crate) async fn wait_running(&self, instance: usize, queue: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.running_count(instance, queue).await < count {
            assert!(
                Instant::now() < deadline,
                "{count} jobs never ran at once in {queue}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn pid(&self, instance: usize) -> u32 {
        self.instances[instance].child.id()
    }

    pub(crate) async fn configure(&self, settings: Value) {
        let (status, queue) = self.put(0, "/v1/queues/spread", &settings).await;
        assert!((200..300).contains(&status), "{queue}");
    }
}

/// The status and JSON body (`null` if none) of a request that must get an answer.
pub(crate) async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(error) => panic!("the instance stopped answering: {error}"),
    }
}

pub(crate) fn pid_job(queue: &str, seconds: f64) -> Value {
    json!({
        "kind": "exec",
        "queue": queue,
        "payload": {"command": "pid", "args": {"seconds": seconds.to_string()}},
        "max_attempts": 3,
    })
}

pub(crate) fn pid_of(job: &Value) -> u32 {
    job["result"]["stdout"]
        .as_str()
        .and_then(|out| out.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {job}"))
}
