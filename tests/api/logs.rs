//! The log at its default level, as an operator reads it: a start-up line
//! that says what runs, one line per request and per job that does not
//! succeed, no ERROR for what is expected, no colour codes in a file, each
//! problem said once.

use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{SOON, SpoolProcess};

/// The binary at `info` with JSON logs on a piped stdout.
fn start_json(dir: &tempfile::TempDir, extra: &[(&str, &str)]) -> (SpoolProcess, Receiver<Value>) {
    let mut env = vec![("SPOOL_LOG_FORMAT", "json"), ("RUST_LOG", "info")];
    env.extend_from_slice(extra);
    let mut spool = SpoolProcess::start_configured(
        &format!("sqlite://{}", dir.path().join("spool.db").display()),
        &env,
        |command| {
            command.stdout(Stdio::piped());
        },
    );
    let lines = spool.log_lines();
    (spool, lines)
}

/// Lines until `done` says so or `SOON` passes; all of them.
fn read_until(lines: &Receiver<Value>, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + SOON;
    let mut seen = Vec::new();
    while !done(&seen) && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            seen.push(line);
        }
    }
    seen
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| line["message"] == message)
        .collect()
}

#[tokio::test]
async fn at_info_the_log_says_what_started_each_request_once_and_each_job_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, lines) = start_json(&dir, &[]);
    let client = reqwest::Client::new();
    let job = spool
        .post_json(
            "/v1/jobs",
            &json!({"kind": "sleep", "payload": {"ms": 1, "fail": true}, "max_attempts": 1}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let probe = client.get(spool.url("/healthz")).send().await.unwrap();
    assert_eq!(probe.status(), 200);
    let missing = client
        .get(spool.url("/v1/jobs/not-a-job"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let seen = read_until(&lines, |seen| {
        !with_message(seen, "job failed").is_empty() && with_message(seen, "request").len() >= 2
    });

    let listening = with_message(&seen, "listening");
    assert_eq!(listening.len(), 1, "{seen:#?}");
    let listening = listening[0];
    let version = listening["version"].as_str().unwrap();
    assert!(
        version.starts_with(env!("CARGO_PKG_VERSION")) && version.contains('('),
        "the version and its commit: {listening}"
    );
    assert_eq!(listening["mode"], "embedded");
    assert!(
        listening["database"]
            .as_str()
            .unwrap()
            .starts_with("sqlite://"),
        "{listening}"
    );
    assert_eq!(listening["queues"], "default", "{listening}");

    let requests = with_message(&seen, "request");
    assert_eq!(
        requests.len(),
        2,
        "one line per request, probes aside: {seen:#?}"
    );
    let submitted = requests
        .iter()
        .find(|line| line["span"]["route"] == "/v1/jobs")
        .unwrap_or_else(|| panic!("no line for the submission: {seen:#?}"));
    assert_eq!(submitted["level"], "INFO");
    assert_eq!(submitted["status"], 202);
    assert_eq!(submitted["span"]["method"], "POST");
    assert_eq!(submitted["span"]["tenant"], "default");
    assert_eq!(submitted["span"]["client"], "127.0.0.1");
    assert!(submitted["span"]["request_id"].is_string(), "{submitted}");
    assert!(submitted["latency_ms"].is_number(), "{submitted}");
    let not_found = requests
        .iter()
        .find(|line| line["status"] == 404)
        .unwrap_or_else(|| panic!("no line for the 404: {seen:#?}"));
    assert_eq!(
        not_found["level"], "INFO",
        "a 4xx is not a problem of the service"
    );
    assert!(not_found["code"].is_string(), "{not_found}");

    let failed = with_message(&seen, "job failed");
    assert_eq!(failed.len(), 1, "{seen:#?}");
    let failed = failed[0];
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["job_id"], id.as_str());
    assert_eq!(failed["kind"], "sleep");
    assert_eq!(failed["queue"], "default");
    assert_eq!(failed["attempt"], 1);
    assert!(failed["error_code"].is_string(), "{failed}");
    assert!(
        !seen.iter().any(|line| line["level"] == "ERROR"),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn a_shutdown_refuses_submissions_without_an_error_and_says_what_it_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, lines) = start_json(&dir, &[("SPOOL_SHUTDOWN_GRACE", "10s")]);
    let client = reqwest::Client::new();
    let job = spool
        .post_json(
            "/v1/jobs",
            &json!({"kind": "sleep", "payload": {"ms": 1500}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    // Running before the signal, so the shutdown has it to drain.
    let deadline = Instant::now() + SOON;
    loop {
        let job = spool.get_json(&format!("/v1/jobs/{id}")).await;
        if job["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spool.sigterm();
    let refused = loop {
        let response = client
            .post(spool.url("/v1/jobs"))
            .json(&json!({"kind": "sleep", "payload": {"ms": 1}}))
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            break response;
        }
        assert!(Instant::now() < deadline, "submissions were never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "shutting_down");
    let status = spool.child.wait().expect("exits");
    assert!(status.success(), "{status}");
    let seen = read_until(&lines, |seen| {
        !with_message(seen, "engine stopped").is_empty()
    });

    let stopped = with_message(&seen, "engine stopped");
    assert_eq!(stopped.len(), 1, "{seen:#?}");
    assert_eq!(stopped[0]["jobs_finished"], 1, "{}", stopped[0]);
    assert_eq!(stopped[0]["jobs_handed_back"], 0, "{}", stopped[0]);
    let refusal = seen
        .iter()
        .find(|line| line["message"] == "request" && line["status"] == 503)
        .unwrap_or_else(|| panic!("no line for the refusal: {seen:#?}"));
    assert_eq!(refusal["code"], "shutting_down");
    assert!(
        !seen.iter().any(|line| line["level"] == "ERROR"),
        "an expected 503 is not an error: {seen:#?}"
    );
}

/// Runs the binary with `env` until it exits (or 5 s), returning its
/// stdout and stderr.
fn run_to_exit(env: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
    command
        .env(
            "SPOOL_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("spool.db").display()),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_setting_and_a_taken_port_are_each_said_once() {
    let (stdout, stderr) = run_to_exit(&[
        ("SPOOL_BIND", "127.0.0.1:0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ]);
    let all = format!("{stdout}{stderr}");
    assert_eq!(
        all.matches("OTEL_EXPORTER_OTLP_ENDPOINT").count(),
        1,
        "said once: {all}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (stdout, stderr) = run_to_exit(&[("SPOOL_BIND", addr.as_str())]);
    assert!(stderr.contains(&addr), "names the address: {stderr}");
    assert_eq!(stderr.matches(&addr).count(), 1, "said once: {stderr}");
    // Before anything started: no engine, no database opened for nothing.
    assert!(!stdout.contains("engine started"), "{stdout}");
}

#[test]
fn text_logs_carry_no_colour_codes_when_not_on_a_terminal() {
    let (stdout, _) = run_to_exit(&[("SPOOL_BIND", "127.0.0.1:0"), ("SPOOL_LOG_FORMAT", "text")]);
    assert!(stdout.contains("listening"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "escape codes: {stdout:?}");
}
