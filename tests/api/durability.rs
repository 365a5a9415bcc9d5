//! Crashes lose nothing: the real binary, killed with SIGKILL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{SpoolProcess, db_path, fetch_json};

async fn wait_for_status(
    client: &reqwest::Client,
    spool: &SpoolProcess,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, job) = fetch_json(client, spool.url(&format!("/v1/jobs/{id}"))).await;
        if job["status"] == status {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never became {status}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_sigkill_after_a_stream_of_202s_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = SpoolProcess::start(&db_path(&dir), &[]);
    let client = reqwest::Client::new();

    // Submitters keep going until the kill: every 202 they saw must survive.
    let accepted = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for n in 0..8 {
        let (client, accepted, url) = (client.clone(), accepted.clone(), spool.url("/v1/jobs"));
        submitters.push(tokio::spawn(async move {
            loop {
                let spec = json!({"kind": "sleep", "payload": {"ms": 5}, "metadata": {"submitter": n.to_string()}});
                let Ok(response) = client.post(&url).json(&spec).send().await else { break };
                if response.status() != 202 {
                    break;
                }
                let Ok(job) = response.json::<Value>().await else { break };
                accepted.lock().await.push(job["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    spool.kill_9();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let accepted = accepted.lock().await.clone();
    assert!(
        accepted.len() > 100,
        "only {} submissions before the kill",
        accepted.len()
    );

    let spool = SpoolProcess::start(&db_path(&dir), &[]);
    for id in &accepted {
        wait_for_status(&client, &spool, id, "succeeded", Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn a_job_running_at_a_sigkill_is_finished_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = SpoolProcess::start(&db_path(&dir), &[]);
    let client = reqwest::Client::new();
    let response = client
        .post(spool.url("/v1/jobs"))
        .json(&json!({"kind": "sleep", "payload": {"ms": 1500}}))
        .send()
        .await
        .unwrap();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_status(&client, &spool, &id, "running", Duration::from_secs(10)).await;
    spool.kill_9();

    let spool = SpoolProcess::start(&db_path(&dir), &[]);
    let done = wait_for_status(&client, &spool, &id, "succeeded", Duration::from_secs(20)).await;
    assert_eq!(done["attempt"], 2, "the interrupted attempt counts");
    assert_eq!(done["errors"][0]["code"], "lease_expired");
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SpoolProcess::start(&db_path(&dir), &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .env("SPOOL_BIND", "127.0.0.1:0")
        .env(
            "SPOOL_DATABASE_URL",
            format!("sqlite://{}", db_path(&dir).display()),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another Spool process"), "{stderr}");
}
