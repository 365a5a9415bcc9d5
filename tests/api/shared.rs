//! Shared mode with real processes: three `spool` binaries on one
//! PostgreSQL schema form one service.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, answer, pid_job, pid_of};
use crate::helpers::SpoolProcess;

#[tokio::test]
async fn jobs_submitted_to_one_instance_run_on_all_three() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    // Two slots per instance; twelve half-second jobs through instance 0
    // only: the others must hear of them and take their share.
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(cluster.submit(0, pid_job("spread", 0.5)).await);
    }
    let jobs = cluster.wait_all(0, &ids, Duration::from_secs(30)).await;
    let mut ran_on = HashSet::new();
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
        ran_on.insert(pid_of(job));
    }
    let instances: HashSet<u32> = (0..3).map(|n| cluster.pid(n)).collect();
    assert_eq!(ran_on, instances, "every instance ran some of the jobs");
}

#[tokio::test]
async fn a_killed_instances_jobs_finish_on_the_others() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    // Two slots on each of three instances: with six running, instance 0
    // certainly runs two of them when it dies.
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(cluster.submit(n % 3, pid_job("spread", 2.0)).await);
    }
    cluster.wait_running(1, "spread", 6).await;
    let killed = cluster.pid(0);
    cluster.instances[0].kill_9();

    let jobs = cluster.wait_all(1, &ids, Duration::from_secs(60)).await;
    let mut rescued = 0;
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_ne!(pid_of(job), killed, "a dead instance finished nothing");
        let errors = job["errors"].as_array().unwrap();
        if errors.iter().any(|e| e["code"] == "lease_expired") {
            rescued += 1;
        }
    }
    assert!(
        rescued >= 2,
        "the killed instance's jobs were rescued: {rescued}"
    );
}

#[tokio::test]
async fn ten_thousand_jobs_over_three_instances_each_succeed_exactly_once() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let mut ids = Vec::new();
    for n in 0..10 {
        let jobs: Vec<Value> = (0..1_000)
            .map(|_| json!({"kind": "noop", "queue": "spread"}))
            .collect();
        let (status, batch) = cluster
            .post(n % 3, "/v1/batches", &json!({"jobs": jobs}))
            .await;
        assert_eq!(status, 202, "{batch}");
        ids.extend(crate::helpers::job_ids(&batch));
    }
    cluster
        .configure(json!({"concurrency": 32, "capacity": 20000}))
        .await;
    // Through lists, not 10 000 GETs: every job succeeded, on its first attempt.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, queue) = cluster.get(2, "/v1/queues/spread").await;
        let counts = &queue["counts"];
        if counts["scheduled"] == 0 && counts["queued"] == 0 && counts["running"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs never drained: {queue}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/jobs?queue=spread&limit=1000&cursor={cursor}"),
            None => "/v1/jobs?queue=spread&limit=1000".to_owned(),
        };
        let (status, page) = cluster.get(1, &path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        for job in items {
            assert_eq!(job["status"], "succeeded", "{job}");
            assert_eq!(job["attempt"], 1, "ran exactly once: {job}");
            assert!(seen.insert(job["id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: HashSet<String> = ids.into_iter().collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn cancelling_through_one_instance_stops_jobs_running_on_the_others_within_two_seconds() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    // One slot per instance and three long jobs: each instance runs one, so
    // two of the three cancelled through instance 1 run elsewhere.
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(cluster.submit(n, pid_job("long", 60.0)).await);
    }
    cluster.wait_running(1, "long", 3).await;
    for id in &ids {
        let started = Instant::now();
        let (status, body) = cluster
            .post(1, &format!("/v1/jobs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
        loop {
            let (_, job) = cluster.get(1, &format!("/v1/jobs/{id}")).await;
            if job["status"] == "cancelled" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "job {id} still {} two seconds after its cancel",
                job["status"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn the_capacity_bound_holds_when_all_three_instances_admit_at_once() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let response = cluster
        .client
        .put(cluster.instances[0].url("/v1/queues/bounded"))
        .json(&json!({"capacity": 50, "paused": true}))
        .send()
        .await
        .expect("sent");
    assert!(response.status().is_success());
    // Instances learn of the new queue from the bus; admission reads the
    // database either way.
    let mut submitters = Vec::new();
    for n in 0..30 {
        let client = cluster.client.clone();
        let url = cluster.instances[n % 3].url("/v1/jobs");
        submitters.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..5 {
                let request = client
                    .post(&url)
                    .json(&json!({"kind": "noop", "queue": "bounded"}));
                answers.push(answer(request).await);
            }
            answers
        }));
    }
    let mut accepted = 0;
    for submitter in submitters {
        for (status, body) in submitter.await.unwrap() {
            match status {
                202 => accepted += 1,
                429 => {}
                other => panic!("unexpected status {other}: {body}"),
            }
        }
    }
    assert_eq!(accepted, 50, "exactly the capacity was admitted");
    let (_, queue) = cluster.get(2, "/v1/queues/bounded").await;
    assert_eq!(queue["counts"]["queued"], 50, "{queue}");
}

#[tokio::test]
async fn a_queue_paused_through_one_instance_stops_claims_on_all() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let response = cluster
        .client
        .put(cluster.instances[0].url("/v1/queues/spread"))
        .json(&json!({"paused": true}))
        .send()
        .await
        .expect("sent");
    assert!(response.status().is_success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            cluster
                .submit(n % 3, json!({"kind": "noop", "queue": "spread"}))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        let (_, job) = cluster.get(1, &format!("/v1/jobs/{id}")).await;
        assert_eq!(
            job["status"], "queued",
            "no instance runs a paused queue: {job}"
        );
    }
    let response = cluster
        .client
        .put(cluster.instances[2].url("/v1/queues/spread"))
        .json(&json!({"paused": false}))
        .send()
        .await
        .expect("sent");
    assert!(response.status().is_success());
    let jobs = cluster.wait_all(0, &ids, Duration::from_secs(10)).await;
    assert!(jobs.iter().all(|job| job["status"] == "succeeded"));
}

/// A PostgreSQL server of the test's own (so it can be stopped without
/// disturbing anything else), run as the `postgres` user from the local
/// installation's binaries.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    data: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// `None` (after a loud note) where it cannot run and this is not CI.
    fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|version| version.path().join("bin"))
                    .find(|bin| bin.join("pg_ctl").exists())
            });
        let Some(bin) = bin else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no PostgreSQL installation under /usr/lib/postgresql"
            );
            eprintln!("SKIPPED (no PostgreSQL installation to start a private server)");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres"])
            .arg(data.path())
            .status()
            .expect("chown runs");
        assert!(chown.success(), "the data directory is given to postgres");
        let server = PrivatePostgres {
            bin,
            data,
            port: crate::helpers::free_port(),
        };
        let cluster = server.data.path().join("cluster");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                cluster.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
            ],
        );
        server.pg_ctl("start");
        Some(server)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let output = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .expect("runuser runs");
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl(&self, action: &str) {
        let cluster = self.data.path().join("cluster");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.path().display()
        );
        let log = self.data.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                cluster.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                action.as_ref(),
            ],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let cluster = self.data.path().join("cluster");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(cluster)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test]
async fn a_postgresql_restart_gives_503_storage_unavailable_then_recovers_without_a_restart() {
    let Some(postgres) = PrivatePostgres::start() else {
        return;
    };
    let url = postgres.url();
    let env = [("SPOOL_LEASE_TTL", "2s")];
    let instances = [
        SpoolProcess::start_with_url(&url, &env),
        SpoolProcess::start_with_url(&url, &env),
    ];
    let client = reqwest::Client::new();
    let submit = |n: usize| {
        client
            .post(instances[n].url("/v1/jobs"))
            .json(&json!({"kind": "noop"}))
    };
    let (status, job) = answer(submit(0)).await;
    assert_eq!(status, 202, "{job}");

    postgres.pg_ctl("stop");
    for (n, instance) in instances.iter().enumerate() {
        let (status, problem) = answer(submit(n)).await;
        assert_eq!(status, 503, "{problem}");
        assert_eq!(problem["code"], "storage_unavailable", "{problem}");
        let (status, _) = answer(client.get(instance.url("/readyz"))).await;
        assert_eq!(status, 503, "not ready without its database");
        // The operator learns why, once per declined request.
        let log = instance.log_text();
        let declined: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("request declined"))
            .collect();
        assert_eq!(declined.len(), 1, "{log}");
        assert!(declined[0].contains("storage_unavailable"), "{log}");
    }

    postgres.pg_ctl("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, instance) in instances.iter().enumerate() {
        loop {
            let (status, _) = answer(client.get(instance.url("/readyz"))).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "instance {n} never recovered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Both admit and run jobs again, without having been restarted.
    for n in 0..2 {
        let (status, job) = answer(submit(n)).await;
        assert_eq!(status, 202, "{job}");
        let id = job["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, job) =
                answer(client.get(instances[1 - n].url(&format!("/v1/jobs/{id}")))).await;
            if job["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} never ran: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
