//! Oversized request heads and declared bodies get problems, the bodies
//! before they are read.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;

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

/// A client that never reuses a connection: the tests below make the
/// server close idle ones quickly.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
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

    // Just under the limits, it is an ordinary request.
    let response = client
        .get(app.url(&format!("/healthz?pad={}", "p".repeat(7 * 1024))))
        .header("x-big", "b".repeat(30 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
