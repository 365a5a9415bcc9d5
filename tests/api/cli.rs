//! The command-line client: the real `spool` binary as a client, against
//! the real binary as the service, judged by stdout, stderr and exit codes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{SOON, SpoolProcess, db_path, id_of};

const KEY: &str = "cli-test-secret-long-enough-0123456789";

/// The service, on a database of its own.
struct Service {
    process: SpoolProcess,
    _dir: TempDir,
}

impl Service {
    fn start(env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().expect("temporary directory");
        let process = SpoolProcess::start(&db_path(&dir), env);
        Service { process, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.process.addr)
    }

    /// `spool ARGS` as a client of this service, without a key.
    fn spool(&self, args: &[&str]) -> Ran {
        run(client(&self.url(), None, args), None)
    }
}

/// The client's command: only the environment the test gives it, so that
/// a developer's own `SPOOL_*` variables cannot change the outcome.
fn client(url: &str, key: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spool"));
    command.env_clear().env("SPOOL_URL", url).args(args);
    if let Some(key) = key {
        command.env("SPOOL_API_KEY", key);
    }
    command
}

/// A finished client run.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{self}");
        self
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(mut command: Command, stdin: Option<&str>) -> Ran {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the spool client starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).expect("stdin written");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("the client ends");
    Ran {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

const FAILING: &str = r#"{"ms": 0, "fail": true, "permanent": true}"#;

#[test]
fn a_job_submitted_with_wait_that_succeeds_is_printed_and_exits_zero() {
    let service = Service::start(&[]);
    let ran = service.spool(&[
        "job",
        "submit",
        "echo",
        "--payload",
        r#"{"hi": 1}"#,
        "--wait",
        "--json",
    ]);
    let job = ran.assert_code(0).json();
    assert_eq!(job["status"], "succeeded", "{ran}");
    assert_eq!(job["result"]["hi"], 1, "{ran}");
    assert!(ran.stderr.is_empty(), "{ran}");

    // For people: `key: value` lines.
    let ran = service.spool(&["job", "get", &id_of(&job)]);
    ran.assert_code(0);
    assert!(ran.stdout.contains("status:"), "{ran}");
    assert!(ran.stdout.contains("succeeded"), "{ran}");
}

#[test]
fn a_job_submitted_with_wait_that_fails_exits_with_the_failed_code() {
    let service = Service::start(&[]);
    let ran = service.spool(&[
        "job",
        "submit",
        "sleep",
        "--payload",
        FAILING,
        "--max-attempts",
        "1",
        "--wait",
        "--json",
    ]);
    let job = ran.assert_code(1).json();
    assert_eq!(job["status"], "failed", "{ran}");
    assert!(ran.stderr.contains("requested_failure"), "{ran}");

    // Waiting again says the same; `job get` only reads, so it succeeds.
    service.spool(&["job", "wait", &id_of(&job)]).assert_code(1);
    service.spool(&["job", "get", &id_of(&job)]).assert_code(0);
}

#[test]
fn a_cancelled_job_exits_its_waiter_with_the_cancelled_code_and_can_be_retried() {
    let service = Service::start(&[]);
    let ran = service.spool(&[
        "job",
        "submit",
        "sleep",
        "--payload",
        r#"{"ms": 0}"#,
        "--delay-ms",
        "600000",
        "--json",
    ]);
    let job = ran.assert_code(0).json();
    assert_eq!(job["status"], "scheduled", "{ran}");
    let id = id_of(&job);

    let ran = service.spool(&["job", "cancel", &id, "--json"]);
    assert_eq!(ran.assert_code(0).json()["status"], "cancelled", "{ran}");
    let ran = service.spool(&["job", "wait", &id, "--json"]);
    assert_eq!(ran.assert_code(3).json()["status"], "cancelled", "{ran}");
    // Cancelling it again is refused: a 409 is the refused code.
    let ran = service.spool(&["job", "cancel", &id]);
    ran.assert_code(4);
    assert!(ran.stderr.starts_with("spool: "), "{ran}");

    service
        .spool(&["job", "retry", &id, "--json"])
        .assert_code(0);
    let ran = service.spool(&["job", "wait", &id, "--json", "--timeout", "20"]);
    assert_eq!(ran.assert_code(0).json()["status"], "succeeded", "{ran}");
}

#[test]
fn a_wait_that_outlasts_its_timeout_exits_with_the_timeout_code() {
    let service = Service::start(&[]);
    let started = Instant::now();
    let ran = service.spool(&[
        "job",
        "submit",
        "noop",
        "--delay-ms",
        "600000",
        "--wait",
        "--timeout",
        "1",
        "--json",
    ]);
    assert_eq!(ran.assert_code(7).json()["status"], "scheduled", "{ran}");
    assert!(started.elapsed() < SOON, "the wait overran its timeout");
}

#[test]
fn jobs_are_listed_by_metadata_as_a_table_and_as_json_across_pages() {
    let service = Service::start(&[]);
    for team in ["red", "red", "blue"] {
        service
            .spool(&["job", "submit", "noop", "--meta", &format!("team={team}")])
            .assert_code(0);
    }
    let ran = service.spool(&["job", "list", "--meta", "team=red", "--json"]);
    let page = ran.assert_code(0).json();
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{ran}");
    assert!(
        items.iter().all(|job| job["metadata"]["team"] == "red"),
        "{ran}"
    );

    let ran = service.spool(&[
        "job", "list", "--meta", "team=red", "--limit", "1", "--all", "--json",
    ]);
    assert_eq!(
        ran.assert_code(0).json()["items"].as_array().map(Vec::len),
        Some(2),
        "{ran}"
    );

    let ran = service.spool(&["job", "list", "--meta", "team=blue"]);
    let lines: Vec<&str> = ran.assert_code(0).stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one job: {ran}");
    for column in ["ID", "STATUS", "KIND", "QUEUE", "ATTEMPT", "CREATED"] {
        assert!(lines[0].contains(column), "{ran}");
    }
    assert!(lines[1].contains("noop"), "{ran}");
}

#[test]
fn a_batch_from_stdin_is_waited_for_and_its_results_read() {
    let service = Service::start(&[]);
    let jobs = r#"[{"kind": "noop"}, {"kind": "echo", "payload": {"n": 2}}]"#;
    let ran = run(
        client(
            &service.url(),
            None,
            &["batch", "submit", "--file", "-", "--wait", "--json"],
        ),
        Some(jobs),
    );
    let batch = ran.assert_code(0).json();
    assert_eq!(batch["status"], "succeeded", "{ran}");

    let ran = service.spool(&["batch", "results", &id_of(&batch), "--all", "--json"]);
    let page = ran.assert_code(0).json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{ran}");
    assert!(page["next_cursor"].is_null(), "{ran}");

    // A batch whose job fails fails: the failed code.
    let failing =
        format!(r#"{{"jobs": [{{"kind": "sleep", "payload": {FAILING}, "max_attempts": 1}}]}}"#);
    let ran = run(
        client(
            &service.url(),
            None,
            &["batch", "submit", "--file", "-", "--wait", "--json"],
        ),
        Some(&failing),
    );
    assert_eq!(ran.assert_code(1).json()["status"], "failed", "{ran}");
}

#[test]
fn a_cancelled_batch_exits_its_waiter_with_the_cancelled_code() {
    let service = Service::start(&[]);
    let jobs = r#"{"jobs": [{"kind": "noop", "delay_ms": 600000}], "metadata": {"run": "7"}}"#;
    let ran = run(
        client(
            &service.url(),
            None,
            &["batch", "submit", "--file", "-", "--json"],
        ),
        Some(jobs),
    );
    let id = id_of(&ran.assert_code(0).json());

    let ran = service.spool(&["batch", "get", &id]);
    assert!(ran.assert_code(0).stdout.contains("run=7"), "{ran}");
    service
        .spool(&["batch", "cancel", &id, "--json"])
        .assert_code(0);
    let ran = service.spool(&["batch", "wait", &id, "--timeout", "20", "--json"]);
    assert_eq!(ran.assert_code(3).json()["status"], "cancelled", "{ran}");

    // Followed to the end: the one result, and no cursor left.
    let ran = service.spool(&["batch", "results", &id, "--follow", "--json"]);
    let page = ran.assert_code(0).json();
    assert_eq!(page["items"][0]["status"], "cancelled", "{ran}");
    assert!(page["next_cursor"].is_null(), "{ran}");

    // Re-run: the cancelled job runs now (its delay was its first run's),
    // and the waiter exits with the new end's code.
    let ran = service.spool(&["batch", "retry", &id, "--wait", "--timeout", "20", "--json"]);
    let batch = ran.assert_code(0).json();
    assert_eq!(batch["status"], "succeeded", "{ran}");
    assert_eq!(batch["retries"], 1, "{ran}");
    // Nothing failed now: refused (409), the refusal's code.
    service.spool(&["batch", "retry", &id]).assert_code(4);
}

#[test]
fn queues_are_set_paused_and_resumed_and_a_full_one_is_the_busy_code() {
    let service = Service::start(&[]);
    let ran = service.spool(&[
        "queue",
        "set",
        "mail",
        "--concurrency",
        "3",
        "--capacity",
        "1",
        "--json",
    ]);
    let queue = ran.assert_code(0).json();
    assert_eq!(
        (queue["concurrency"].as_u64(), queue["capacity"].as_u64()),
        (Some(3), Some(1)),
        "{ran}"
    );
    let ran = service.spool(&["queue", "pause", "mail", "--json"]);
    assert_eq!(ran.assert_code(0).json()["paused"], true, "{ran}");

    // Paused: the job stays queued, and the wait gives up.
    let ran = service.spool(&[
        "job",
        "submit",
        "noop",
        "--queue",
        "mail",
        "--wait",
        "--timeout",
        "1",
        "--json",
    ]);
    let job = ran.assert_code(7).json();
    assert_eq!(job["status"], "queued", "{ran}");
    // Its one place is taken: 429 queue_full, said with when to retry.
    let ran = service.spool(&["job", "submit", "noop", "--queue", "mail"]);
    ran.assert_code(5);
    assert!(ran.stderr.contains("retry after"), "{ran}");

    let ran = service.spool(&["queue", "list"]);
    assert!(
        ran.assert_code(0)
            .stdout
            .lines()
            .any(|l| l.starts_with("mail")),
        "{ran}"
    );
    // Deleting it is refused while it holds a job, then done.
    let ran = service.spool(&["queue", "delete", "mail"]);
    ran.assert_code(4);
    assert!(ran.stderr.contains("unfinished"), "{ran}");
    service.spool(&["queue", "resume", "mail"]).assert_code(0);
    service
        .spool(&["job", "wait", &id_of(&job), "--timeout", "20"])
        .assert_code(0);
    service.spool(&["queue", "delete", "mail"]).assert_code(0);
    service.spool(&["queue", "get", "mail"]).assert_code(4);
}

/// Kills the follower when the test ends, whatever happened.
struct Follower(Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn events_are_followed_one_json_line_each_until_the_client_is_killed() {
    let service = Service::start(&[]);
    let mut follower = Follower(
        client(
            &service.url(),
            None,
            &["events", "--types", "job.succeeded", "--json"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the follower starts"),
    );
    let stdout = follower.0.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The follower's subscription starts at some moment we cannot see:
    // submit until a job's end shows up (each one's wait is the long-poll).
    let deadline = Instant::now() + SOON;
    let mut submitted = Vec::new();
    let event: Value = loop {
        assert!(Instant::now() < deadline, "no event for {submitted:?}");
        let ran = service.spool(&["job", "submit", "noop", "--wait", "--json"]);
        submitted.push(id_of(&ran.assert_code(0).json()));
        if let Ok(line) = received.recv_timeout(std::time::Duration::from_millis(500)) {
            break serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    };
    assert_eq!(event["type"], "job.succeeded", "{event}");
    let job_id = event["job"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        submitted.contains(&job_id),
        "{event} is none of {submitted:?}"
    );
    assert!(
        follower.0.try_wait().expect("status").is_none(),
        "it keeps following"
    );
}

#[test]
fn an_invalid_payload_is_refused_with_the_problem_on_stderr_and_the_refused_code() {
    let service = Service::start(&[]);
    let ran = service.spool(&["job", "submit", "sleep", "--payload", r#"{"ms": "soon"}"#]);
    ran.assert_code(4);
    assert!(ran.stdout.is_empty(), "{ran}");
    let first = ran.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("spool: "), "{ran}");
    assert!(ran.stderr.contains("/payload/ms"), "{ran}");
    assert_eq!(ran.stderr.matches("spool: ").count(), 1, "said once: {ran}");

    // Bad JSON never leaves the client: the usage code.
    let ran = service.spool(&["job", "submit", "sleep", "--payload", "{ms:"]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("--payload"), "{ran}");
}

#[test]
fn an_unreachable_service_exits_with_the_connection_code() {
    // A port nobody listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port");
    let ran = run(
        client(
            &format!("http://127.0.0.1:{port}"),
            None,
            &["job", "get", "0193a1b2-0000-7000-8000-000000000000"],
        ),
        None,
    );
    ran.assert_code(6);
    assert!(ran.stderr.contains("cannot reach"), "{ran}");
}

#[test]
fn with_keys_required_the_key_comes_from_spool_api_key_and_is_never_printed() {
    let keys = format!("default:write:{KEY}");
    let service = Service::start(&[("SPOOL_API_KEYS", keys.as_str())]);
    let submit = ["job", "submit", "noop", "--wait", "--json"];

    let ran = service.spool(&submit);
    ran.assert_code(4);
    assert!(ran.stderr.to_lowercase().contains("unauthorized"), "{ran}");

    let wrong = "cli-test-wrong-secret-long-enough-0123";
    let ran = run(client(&service.url(), Some(wrong), &submit), None);
    ran.assert_code(4);
    assert!(
        !ran.stderr.contains(wrong) && !ran.stdout.contains(wrong),
        "{ran}"
    );

    let ran = run(client(&service.url(), Some(KEY), &submit), None);
    assert_eq!(ran.assert_code(0).json()["status"], "succeeded", "{ran}");
    assert!(
        !ran.stdout.contains(KEY) && !ran.stderr.contains(KEY),
        "{ran}"
    );
}

#[test]
fn client_help_lists_the_exit_codes_and_hides_the_key() {
    let ran = run(
        client(
            "http://127.0.0.1:1",
            Some(KEY),
            &["job", "submit", "--help"],
        ),
        None,
    );
    ran.assert_code(0);
    for text in [
        "Exit codes:",
        "SPOOL_URL",
        "SPOOL_API_KEY",
        "--wait",
        "--json",
    ] {
        assert!(ran.stdout.contains(text), "{text}: {ran}");
    }
    assert!(!ran.stdout.contains(KEY), "{ran}");
}
