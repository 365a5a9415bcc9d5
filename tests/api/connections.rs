//! Connections: slow heads and bodies, idle and surplus connections and
//! oversized heads meet deadlines, a cap and problems, and the service keeps
//! answering meanwhile; event streams and long-polls outlive the deadlines.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::events::EventStream;
use crate::helpers::{SpoolProcess, TestApp, db_path, sleep_ms, spawn_app_with};

/// An answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The problem this answer carries, asserting its status and code.
    fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let problem: Value = serde_json::from_slice(&self.body).expect("a JSON problem");
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status, "{problem}");
        problem
    }
}

/// Reads one answer (its head, then `Content-Length` bytes), failing the
/// test if it does not arrive within `within`.
async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Answer {
    let reading = async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let read = stream.read(&mut chunk).await.expect("the socket reads");
            assert!(
                read > 0,
                "closed without an answer after {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, value)| value.parse().expect("a length"));
        while received.len() < head_end + length {
            let read = stream.read(&mut chunk).await.expect("the socket reads");
            assert!(read > 0, "closed in the middle of the body");
            received.extend_from_slice(&chunk[..read]);
        }
        Answer {
            status,
            headers,
            body: received[head_end..head_end + length].to_vec(),
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .unwrap_or_else(|_| panic!("no answer within {within:?}"))
}

/// Waits until the server closes the connection and returns how long that
/// took and what it sent meanwhile; fails the test after `within`.
async fn closed_within(
    stream: &mut (impl AsyncReadExt + Unpin),
    within: Duration,
) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + within).into(), stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "still open after {within:?}, having sent {:?}",
                String::from_utf8_lossy(&received)
            ),
            // A reset is a close too.
            Ok(Ok(0)) | Ok(Err(_)) => return (start.elapsed(), received),
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
        }
    }
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connected")
}

/// `GET /healthz` on a connection of its own, closed afterwards.
async fn health_on_its_own_connection(addr: std::net::SocketAddr) -> Answer {
    let mut stream = connect(addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: spool\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(10)).await;
    closed_within(&mut stream, Duration::from_secs(10)).await;
    answer
}

/// A client that never reuses a connection: the tests below make the
/// server close idle ones quickly.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Sends `bytes` one at a time, `every` apart, until the server closes.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: &'static [u8], every: Duration) {
    tokio::spawn(async move {
        for byte in bytes.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_has_its_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolProcess::start(&db_path(&dir), &[("SPOOL_HEADER_READ_TIMEOUT", "1s")]);

    let mut partial = connect(spool.addr).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: spool\r\n")
        .await
        .unwrap();
    let (after, sent) = closed_within(&mut partial, Duration::from_secs(5)).await;
    assert!(
        sent.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&sent)
    );
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert!(after < Duration::from_secs(3), "closed after {after:?}");

    // The deadline counts from the first byte: trickling does not extend it.
    let (reader, mut writer) = connect(spool.addr).await.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    trickle(writer, b"X-Slow: 1\r\n", Duration::from_millis(100));
    let mut reader: OwnedReadHalf = reader;
    let (after, sent) = closed_within(&mut reader, Duration::from_secs(5)).await;
    assert!(
        sent.is_empty(),
        "answered {:?}",
        String::from_utf8_lossy(&sent)
    );
    assert!(after < Duration::from_secs(3), "closed after {after:?}");

    // A connection that sends nothing at all gets the same deadline.
    let mut silent = connect(spool.addr).await;
    let (after, _) = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(after < Duration::from_secs(3), "closed after {after:?}");

    assert_eq!(health_on_its_own_connection(spool.addr).await.status, 200);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_problem() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolProcess::start(&db_path(&dir), &[("SPOOL_BODY_READ_TIMEOUT", "1s")]);

    // Declared, then one byte of it.
    let mut stalled = connect(spool.addr).await;
    let sent_at = Instant::now();
    stalled
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: spool\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut stalled, Duration::from_secs(5)).await;
    let problem = answer.problem(408, "body_timeout");
    assert!(
        sent_at.elapsed() >= Duration::from_millis(900),
        "answered after {:?}: {problem}",
        sent_at.elapsed()
    );
    assert_eq!(answer.header("connection"), Some("close"));
    closed_within(&mut stalled, Duration::from_secs(2)).await;

    // A chunked body that never ends, though bytes keep coming.
    let (mut reader, mut writer) = connect(spool.addr).await.into_split();
    writer
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: spool\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    trickle(writer, b"1\r\n \r\n", Duration::from_millis(50));
    read_answer(&mut reader, Duration::from_secs(5))
        .await
        .problem(408, "body_timeout");

    let response = fresh_connections()
        .post(spool.url("/v1/jobs"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_problem_before_the_body_is_sent() {
    let app = spawn_app_with(|config| config.body_read_timeout = Duration::from_millis(500)).await;

    let mut stream = connect(app.addr).await;
    stream
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: spool\r\nContent-Type: application/json\r\n\
              Content-Length: 2000000000\r\n\r\n{",
        )
        .await
        .unwrap();
    // Well before the body deadline: nothing was waited for.
    let answer = read_answer(&mut stream, Duration::from_millis(400)).await;
    let problem = answer.problem(413, "payload_too_large");
    assert!(
        problem["detail"].as_str().unwrap().contains("1048576"),
        "{problem}"
    );
    assert_eq!(answer.header("connection"), Some("close"));
    closed_within(&mut stream, Duration::from_secs(2)).await;

    // Batches have a larger limit of their own.
    let mut stream = connect(app.addr).await;
    stream
        .write_all(
            b"POST /v1/batches HTTP/1.1\r\nHost: spool\r\nContent-Type: application/json\r\n\
              Content-Length: 20000000\r\n\r\n{",
        )
        .await
        .unwrap();
    let problem = read_answer(&mut stream, Duration::from_millis(400))
        .await
        .problem(413, "payload_too_large");
    assert!(
        problem["detail"].as_str().unwrap().contains("16777216"),
        "{problem}"
    );
    // Under it, the body is waited for (and here never comes).
    let mut stream = connect(app.addr).await;
    stream
        .write_all(
            b"POST /v1/batches HTTP/1.1\r\nHost: spool\r\nContent-Type: application/json\r\n\
              Content-Length: 2000000\r\n\r\n{",
        )
        .await
        .unwrap();
    read_answer(&mut stream, Duration::from_secs(5))
        .await
        .problem(408, "body_timeout");
}

#[tokio::test]
async fn a_connection_over_the_cap_gets_503_problem_and_requests_succeed_again_once_idle_ones_time_out()
 {
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolProcess::start(
        &db_path(&dir),
        &[
            ("SPOOL_MAX_CONNECTIONS", "3"),
            ("SPOOL_HEADER_READ_TIMEOUT", "2s"),
        ],
    );
    // The readiness probe's connection is gone once this one is answered.
    assert_eq!(health_on_its_own_connection(spool.addr).await.status, 200);

    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(spool.addr).await);
    }
    let mut over = connect(spool.addr).await;
    over.write_all(b"GET /healthz HTTP/1.1\r\nHost: spool\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut over, Duration::from_secs(5)).await;
    let problem = answer.problem(503, "too_many_connections");
    assert!(
        problem["detail"].as_str().unwrap().contains('3'),
        "{problem}"
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.header("connection"), Some("close"));
    closed_within(&mut over, Duration::from_secs(2)).await;

    for stream in &mut idle {
        let (_, sent) = closed_within(stream, Duration::from_secs(6)).await;
        assert!(
            sent.is_empty(),
            "an idle connection was answered: {:?}",
            String::from_utf8_lossy(&sent)
        );
    }
    assert_eq!(health_on_its_own_connection(spool.addr).await.status, 200);
}

/// Sets this process's soft descriptor limit to its hard one (the test
/// opens more connections than the usual 1 024) and returns the hard one.
fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only access the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_max
}

/// Starts the binary with these descriptor limits (1 024 is the usual soft
/// default).
fn start_with_fd_limits(
    dir: &tempfile::TempDir,
    (soft, hard): (u64, u64),
    env: &[(&str, &str)],
    configure: impl FnOnce(&mut std::process::Command),
) -> SpoolProcess {
    let url = format!("sqlite://{}", db_path(dir).display());
    SpoolProcess::start_configured(&url, env, |command| {
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        configure(command);
    })
}

#[tokio::test]
async fn health_checks_and_submissions_are_answered_while_twelve_hundred_slow_connections_are_open()
{
    let own_hard = raise_own_fd_limit();
    if own_hard < 2_048 {
        eprintln!("SKIPPED (the hard descriptor limit {own_hard} is too low for this test)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = start_with_fd_limits(
        &dir,
        (1_024, own_hard.min(4_096)),
        &[
            ("SPOOL_HEADER_READ_TIMEOUT", "30s"),
            ("SPOOL_BODY_READ_TIMEOUT", "30s"),
        ],
        |_| {},
    );

    // More than the 1 024 descriptors the process was started with: a
    // third silent, a third stuck in their head, a third in their body.
    let mut attackers = Vec::new();
    for n in 0..1_200 {
        // Bounded: a server that stopped accepting leaves the backlog full.
        let mut stream = tokio::time::timeout(Duration::from_secs(10), connect(spool.addr))
            .await
            .unwrap_or_else(|_| panic!("connection {n} not established within 10 s"));
        match n % 3 {
            0 => {}
            1 => stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: spool\r\n")
                .await
                .unwrap(),
            _ => stream
                .write_all(
                    b"POST /v1/jobs HTTP/1.1\r\nHost: spool\r\nContent-Type: application/json\r\n\
                      Content-Length: 100\r\n\r\n{",
                )
                .await
                .unwrap(),
        }
        attackers.push(stream);
    }

    // Connections are accepted in order: answered, these prove the ones
    // before them were accepted too.
    let client = fresh_connections();
    let get = |path: &str| {
        let request = client.get(spool.url(path)).send();
        async move {
            tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .expect("answered within 10 s")
                .expect("answered")
                .status()
        }
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 200);
    let submitted = tokio::time::timeout(
        Duration::from_secs(10),
        client
            .post(spool.url("/v1/jobs"))
            .json(&json!({"kind": "noop"}))
            .send(),
    )
    .await
    .expect("answered within 10 s")
    .expect("answered");
    assert_eq!(submitted.status(), 202);

    // And the attackers are all still connected, unanswered.
    let mut buffer = [0u8; 64];
    let open = attackers
        .iter()
        .filter(|stream| {
            matches!(stream.try_read(&mut buffer), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert_eq!(open, attackers.len());
}

#[tokio::test]
async fn the_start_up_log_reports_the_descriptor_limit_raised_to_the_hard_one_and_the_connection_cap()
 {
    let own_hard = raise_own_fd_limit();
    let hard = own_hard.min(4_096);
    if hard <= 1_024 {
        eprintln!("SKIPPED (the hard descriptor limit {own_hard} leaves nothing to raise)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spool = start_with_fd_limits(
        &dir,
        (1_024, hard),
        &[("SPOOL_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
        |command| {
            command.stdout(Stdio::piped());
        },
    );
    let log = spool.log_lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = loop {
        let entry = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a `listening` line within 20 s");
        if entry["message"] == "listening" {
            break entry;
        }
    };
    assert_eq!(listening["fd_limit_at_start"], 1_024, "{listening}");
    assert_eq!(listening["fd_limit"], hard, "{listening}");
    assert_eq!(listening["max_connections"], hard - hard / 4, "{listening}");
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_backs_off_logs_rarely_and_recovers() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    // A cap above what 256 descriptors allow: accepting runs out first.
    let mut spool = start_with_fd_limits(
        &dir,
        (256, 256),
        &[
            ("SPOOL_MAX_CONNECTIONS", "1000"),
            // Long enough that all 400 connect before the first accepted
            // ones are closed, even on a loaded machine (with 1 s, a slow
            // run freed descriptors as fast as it took them).
            ("SPOOL_HEADER_READ_TIMEOUT", "5s"),
            ("SPOOL_LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ],
        |command| {
            command.stdout(Stdio::piped());
        },
    );
    let log = spool.log_lines();
    let mut silent = Vec::new();
    for n in 0..400 {
        let stream = tokio::time::timeout(Duration::from_secs(10), connect(spool.addr))
            .await
            .unwrap_or_else(|_| panic!("connection {n} not established within 10 s"));
        silent.push(stream);
    }
    // Each is closed by the header deadline once accepted, which frees the
    // descriptors the ones waiting in the backlog need.
    for stream in &mut silent {
        closed_within(stream, Duration::from_secs(20)).await;
    }
    assert_eq!(health_on_its_own_connection(spool.addr).await.status, 200);

    // Everything it logged, up to its exit.
    spool.sigterm();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut messages = Vec::new();
    while let Ok(entry) = log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        messages.push(entry["message"].as_str().unwrap_or_default().to_owned());
    }
    let failures = messages
        .iter()
        .filter(|message| *message == "cannot accept connections")
        .count();
    assert!(
        (1..=2).contains(&failures),
        "{failures} accept failures logged: {messages:?}"
    );
}

/// Sends one request on `stream`, keeping the connection, and reads its answer.
async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> Answer {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: spool\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_answer(stream, Duration::from_secs(5)).await
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_one() {
    let app = spawn_app_with(|config| {
        config.header_read_timeout = Duration::from_millis(500);
        config.idle_timeout = Duration::from_millis(2_500);
    })
    .await;
    let mut stream = connect(app.addr).await;
    assert_eq!(keep_alive_get(&mut stream, "/healthz").await.status, 200);
    // Reused within the idle timeout, it serves again.
    assert_eq!(keep_alive_get(&mut stream, "/readyz").await.status, 200);
    let (after, sent) = closed_within(&mut stream, Duration::from_secs(8)).await;
    assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
    assert!(
        after >= Duration::from_millis(2_300),
        "closed after {after:?}"
    );
    assert!(after < Duration::from_secs(5), "closed after {after:?}");
}

#[tokio::test]
async fn a_client_that_reads_none_of_its_answers_has_its_connection_closed_after_the_idle_timeout()
{
    let app = spawn_app_with(|config| config.idle_timeout = Duration::from_millis(500)).await;
    let document = app.get("/openapi.yaml").await.bytes().await.unwrap().len();
    // Far more than the socket buffers between the two hold (4 MiB at most
    // on the server's side, little on ours).
    let answers = 10 * 1024 * 1024 / document + 1;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request = "GET /openapi.yaml HTTP/1.1\r\nHost: spool\r\n\r\n".repeat(answers);
    stream.write_all(request.as_bytes()).await.unwrap();
    // Reading nothing for several idle timeouts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, received) = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(
        received.len() < answers * document,
        "all {answers} answers were written to a client that read none"
    );
}

#[tokio::test]
async fn an_overlong_uri_gets_414_problem_and_an_oversized_header_section_431_problem() {
    let app = spawn_app_with(|_| {}).await;
    let client = fresh_connections();
    let answer = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        (
            status,
            problem["code"].as_str().unwrap_or_default().to_owned(),
        )
    };

    let long = app.url(&format!("/v1/jobs?cursor={}", "c".repeat(10 * 1024)));
    let response = client.get(long).send().await.unwrap();
    assert_eq!(answer(response).await, (414, "uri_too_long".into()));

    let response = client
        .get(app.url("/healthz"))
        .header("x-big", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await, (431, "headers_too_large".into()));

    let mut many = client.get(app.url("/healthz"));
    for n in 0..110 {
        many = many.header(format!("x-field-{n}"), "1");
    }
    let response = many.send().await.unwrap();
    assert_eq!(answer(response).await, (431, "headers_too_large".into()));

    // Just under the limits, it is an ordinary request.
    let response = client
        .get(app.url(&format!("/healthz?pad={}", "p".repeat(7 * 1024))))
        .header("x-big", "b".repeat(30 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn event_streams_and_long_polls_outlive_the_connection_deadlines() {
    let app = spawn_app_with(|config| {
        config.header_read_timeout = Duration::from_millis(300);
        config.body_read_timeout = Duration::from_millis(300);
        config.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let client = fresh_connections();
    let stream = client.get(app.url("/v1/events")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut stream = EventStream::new(stream);

    let job = submit(&app, &client, sleep_ms(2_000)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let polled_at = Instant::now();
    let response = client
        .get(app.url(&format!("/v1/jobs/{id}?wait=10")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        polled_at.elapsed() >= Duration::from_millis(1_500),
        "the long-poll waited only {:?}",
        polled_at.elapsed()
    );
    // Silent for seconds (keep-alive comments come every 15 s), the stream
    // still delivers.
    stream.until_job_event(&id, "job.succeeded").await;
}

async fn submit(app: &TestApp, client: &reqwest::Client, spec: Value) -> Value {
    let response = client
        .post(app.url("/v1/jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}
