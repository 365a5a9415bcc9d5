//! Storage outages against the real binary: a full disk under SQLite, a
//! database that refuses connections under two PostgreSQL instances. Jobs
//! that end while their outcome cannot be stored must end properly once the
//! store is back, not stay `running` for as long as the process lives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::answer;
use crate::helpers::{PgDatabase, SpoolProcess};

/// Longer than the ~11 s of outcome retries after which earlier builds gave
/// up on a job (and then renewed its lease for ever).
const OUTAGE: Duration = Duration::from_secs(14);

/// `bulky` ends with 64 KiB of output: its result needs new pages, which a
/// full disk refuses (small updates can still land in WAL space written
/// before, so a sleep's result would not show the outage).
const CONFIG: &str = r#"
[exec.bulky]
argv = ["/bin/sh", "-c", "sleep 2.5; head -c 60000 /dev/urandom | base64"]
env = { PATH = "/usr/bin:/bin" }

[queues.outage]
concurrency = 5
capacity = 1000
"#;

/// A small tmpfs the test mounts, so that its disk can be filled for real.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after a loud note) when this process may not mount, outside
    /// CI; under `CI=true` that fails the test instead.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match mounted {
            Ok(status) if status.success() => Some(Tmpfs { dir }),
            outcome if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIPPED (cannot mount a tmpfs here: {outcome:?})");
                None
            }
            outcome => panic!("cannot mount a tmpfs under CI=true: {outcome:?}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes zeros into `filler` until the disk refuses them.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("a filler file");
        let block = vec![0u8; 64 * 1024];
        loop {
            if file
                .write_all(&block)
                .and_then(|()| file.sync_all())
                .is_err()
            {
                break;
            }
        }
        // Whatever the last block left: byte by byte.
        while file.write_all(&[0]).and_then(|()| file.sync_all()).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn config_file(dir: &Path) -> String {
    let file = dir.join("spool.toml");
    std::fs::write(&file, CONFIG).expect("a config file");
    file.display().to_string()
}

async fn get(client: &reqwest::Client, process: &SpoolProcess, path: &str) -> (u16, Value) {
    answer(client.get(process.url(path))).await
}

/// Polls until `check` holds, or fails with `what` and the process's log.
async fn wait_until<F, Fut>(within: Duration, what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} (within {within:?})\n--- spool's log ---\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn statuses(jobs: &[Value]) -> Vec<&str> {
    jobs.iter()
        .map(|job| job["status"].as_str().unwrap_or("?"))
        .collect()
}

async fn jobs(client: &reqwest::Client, process: &SpoolProcess, ids: &[String]) -> Vec<Value> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(get(client, process, &format!("/v1/jobs/{id}")).await.1);
    }
    jobs
}

async fn running_in(client: &reqwest::Client, process: &SpoolProcess, queue: &str) -> u64 {
    let (_, queue) = get(client, process, &format!("/v1/queues/{queue}")).await;
    queue["counts"]["running"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn jobs_that_end_while_the_sqlite_disk_is_full_end_properly_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount("16m") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("spool.log");
    let config = config_file(scratch.path());
    let url = format!("sqlite://{}", disk.path().join("spool.db").display());
    let spool = SpoolProcess::start_logged(
        &url,
        &[
            ("SPOOL_CONFIG", config.as_str()),
            ("SPOOL_LEASE_TTL", "3s"),
            ("RUST_LOG", "info"),
        ],
        &log,
    );
    let client = reqwest::Client::new();

    // Five jobs that run through the outage, each holding a concurrency
    // key, and one waiting for the first one's key.
    let mut ids = Vec::new();
    for n in 0..5 {
        let spec = json!({"kind": "exec", "queue": "outage", "payload": {"command": "bulky"},
            "concurrency_key": format!("customer-{n}"), "concurrency_limit": 1});
        let (status, job) = answer(client.post(spool.url("/v1/jobs")).json(&spec)).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let follower = json!({"kind": "noop", "queue": "outage",
        "concurrency_key": "customer-0", "concurrency_limit": 1});
    let (status, job) = answer(client.post(spool.url("/v1/jobs")).json(&follower)).await;
    assert_eq!(status, 202, "{job}");
    let follower = job["id"].as_str().unwrap().to_owned();
    wait_until(
        Duration::from_secs(10),
        "five jobs running",
        &log,
        || async { running_in(&client, &spool, "outage").await == 5 },
    )
    .await;

    let filler = disk.fill();
    wait_until(
        Duration::from_secs(5),
        "/readyz answers 503 on a full disk",
        &log,
        || async { get(&client, &spool, "/readyz").await.0 == 503 },
    )
    .await;
    tokio::time::sleep(OUTAGE).await;
    let during = jobs(&client, &spool, &ids).await;
    // Long after they ended: those still `running` are the outcomes the
    // full disk refused. Some may fit in WAL pages written before the disk
    // filled (how many depends on the schema's indexes), but not all.
    let refused = during
        .iter()
        .filter(|job| job["status"] == "running")
        .count();
    assert!(
        refused >= 1,
        "the disk was full, so outcomes could not be stored: {:?}",
        statuses(&during)
    );

    std::fs::remove_file(&filler).unwrap();
    let mut all = ids.clone();
    all.push(follower.clone());
    wait_until(
        Duration::from_secs(10),
        "every job ended once space was freed",
        &log,
        || async {
            jobs(&client, &spool, &all)
                .await
                .iter()
                .all(|job| job["status"] == "succeeded")
        },
    )
    .await;
    // Each stored as what really happened, in its first attempt: nothing
    // was rescued and run again.
    for job in jobs(&client, &spool, &ids).await {
        assert_eq!(job["attempt"], 1, "run again: {}", job["errors"]);
    }
    assert_eq!(running_in(&client, &spool, "outage").await, 0);
    wait_until(
        Duration::from_secs(5),
        "/readyz answers 200 again",
        &log,
        || async { get(&client, &spool, "/readyz").await.0 == 200 },
    )
    .await;
}

#[tokio::test]
async fn jobs_that_end_during_a_postgres_outage_end_properly_on_two_instances_once_it_is_back() {
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let config = config_file(scratch.path());
    let env = [
        ("SPOOL_CONFIG", config.as_str()),
        ("SPOOL_LEASE_TTL", "3s"),
        ("RUST_LOG", "info"),
    ];
    let logs = [scratch.path().join("a.log"), scratch.path().join("b.log")];
    let instances = [
        SpoolProcess::start_logged(&database.url, &env, &logs[0]),
        SpoolProcess::start_logged(&database.url, &env, &logs[1]),
    ];
    let client = reqwest::Client::new();

    // Ten jobs per instance, each running 2 s: all of them end during the
    // outage (five slots per instance, so two rounds on each).
    let mut ids = Vec::new();
    for n in 0..20 {
        let spec = json!({"kind": "sleep", "queue": "outage", "payload": {"ms": 2000}});
        let instance = &instances[n % 2];
        let (status, job) = answer(client.post(instance.url("/v1/jobs")).json(&spec)).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    wait_until(
        Duration::from_secs(10),
        "ten jobs running",
        &logs[0],
        || async { running_in(&client, &instances[0], "outage").await == 10 },
    )
    .await;

    database.go_down().await;
    wait_until(
        Duration::from_secs(5),
        "/readyz answers 503 while the database is down",
        &logs[0],
        || async { get(&client, &instances[0], "/readyz").await.0 == 503 },
    )
    .await;
    tokio::time::sleep(OUTAGE).await;
    database.come_back().await;

    let instance = &instances[1];
    wait_until(
        Duration::from_secs(30),
        "every job succeeded once the database was back",
        &logs[1],
        || async {
            jobs(&client, instance, &ids)
                .await
                .iter()
                .all(|job| job["status"] == "succeeded")
        },
    )
    .await;
    assert_eq!(running_in(&client, instance, "outage").await, 0);
    for (n, process) in instances.iter().enumerate() {
        wait_until(
            Duration::from_secs(10),
            "/readyz answers 200 again",
            &logs[n],
            || async { get(&client, process, "/readyz").await.0 == 200 },
        )
        .await;
    }
}
