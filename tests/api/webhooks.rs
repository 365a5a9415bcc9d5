//! Webhooks against a small receiver of the test's own: signatures checked
//! by an independent implementation, retries with backoff, delivery across
//! a SIGKILL, giving up, batch and job events, refused destinations and
//! redirects that are not followed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use spool::app::AppBuilder;
use spool::config::Config;
use spool::outbound::StaticLookup;
use tokio::sync::Notify;

use crate::helpers::{
    SOON, SpoolProcess, TEST_WEBHOOK_SECRET, TestApp, db_path, fetch_json, id_of, job_ids,
    spawn_app_with, spawn_app_with_kinds,
};

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Status(u16),
    /// 302 with this `location`.
    Redirect(String),
    /// 200 after this long.
    Slow(Duration),
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) path: String,
    headers: HeaderMap,
    pub(crate) body: Bytes,
    at: Instant,
    /// What the receiver answered.
    answered: u16,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("an ASCII header")
    }

    pub(crate) fn id(&self) -> &str {
        self.header("webhook-id")
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Script {
    /// Answers for the next requests, in order; then `default`.
    queue: VecDeque<Reply>,
    default: Option<Reply>,
    received: Vec<Received>,
}

/// An HTTP server on 127.0.0.1 recording every request and answering from
/// a script (200 once the script runs out, unless told otherwise).
#[derive(Clone)]
pub(crate) struct Receiver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    pub(crate) async fn start(replies: impl IntoIterator<Item = Reply>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener, replies)
    }

    /// A receiver on a socket a test bound earlier without listening (so
    /// that connections to its port were refused until now).
    fn start_on(
        socket: tokio::net::TcpSocket,
        replies: impl IntoIterator<Item = Reply>,
    ) -> Receiver {
        Receiver::serve(socket.listen(128).expect("listening"), replies)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        replies: impl IntoIterator<Item = Reply>,
    ) -> Receiver {
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(Script {
                queue: replies.into_iter().collect(),
                ..Script::default()
            })),
            arrived: Arc::new(Notify::new()),
        };
        let router = Router::new().fallback(record).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        receiver
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The answer once the scripted ones are used up.
    pub(crate) fn answer_by_default(&self, reply: Reply) {
        self.script.lock().unwrap().default = Some(reply);
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// Waits until at least `count` requests arrived; returns them all.
    pub(crate) async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let received = self.received();
                assert!(
                    received.len() >= count,
                    "the receiver got {} requests within {within:?}, not {count}: {:#?}",
                    received.len(),
                    received.iter().map(summary).collect::<Vec<_>>()
                );
                return received;
            }
        }
    }
}

async fn record(
    State(receiver): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut script = receiver.script.lock().unwrap();
        let reply = script
            .queue
            .pop_front()
            .or_else(|| script.default.clone())
            .unwrap_or(Reply::Status(200));
        let answered = match &reply {
            Reply::Status(status) => *status,
            Reply::Redirect(_) => 302,
            Reply::Slow(_) => 200,
        };
        script.received.push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
            answered,
        });
        reply
    };
    receiver.arrived.notify_waiters();
    match reply {
        Reply::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap();
            (status, format!("receiver says {}", status.as_u16())).into_response()
        }
        Reply::Redirect(location) => {
            (StatusCode::FOUND, [(header::LOCATION, location)], "").into_response()
        }
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
    }
}

pub(crate) fn summary(received: &Received) -> String {
    format!(
        "{} {} → {} ({} bytes)",
        received.path,
        received
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        received.answered,
        received.body.len()
    )
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// An app whose webhooks may reach 127.0.0.1, retried after `retry_base`.
async fn hooks_app(retry_base: Duration, adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        config.outbound_allow = "127.0.0.1".parse().unwrap();
        config.webhook_retry_base = retry_base;
        adjust(config);
    })
    .await
}

/// Standard Webhooks verification, written here without Spool's code: the
/// key is the base64 after `whsec_`, the signed content
/// `"{id}.{timestamp}.{body}"`, and any `v1,` entry of the header may match.
pub(crate) fn verifies(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("a base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    signature_header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .any(|signature| signature == expected)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The 422 `validation_failed` pointers of a refused submission, sorted.
async fn refused_pointers(response: reqwest::Response) -> Vec<String> {
    let status = response.status();
    let problem: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "validation_failed", "{problem}");
    let mut pointers: Vec<String> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {problem}"))
        .iter()
        .map(|error| error["pointer"].as_str().unwrap().to_owned())
        .collect();
    pointers.sort();
    pointers
}

/// Polls a job until its webhook is no longer pending.
async fn wait_for_webhook(app: &TestApp, id: &str, status: &str) -> Value {
    app.wait_for(id, SOON, |job| job["webhook"]["status"] == status)
        .await
}

async fn batch(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn wait_for_batch_webhook(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + SOON;
    loop {
        let batch = batch(app, id).await;
        if batch["webhook"]["status"] == status {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "the batch's webhook never became {status}: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port with nothing listening on it (bound, then let go).
fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// 1. Signatures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_succeeded_job_posts_a_signed_job_succeeded_webhook_that_verifies_independently() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(200), |_| {}).await;
    let job = app
        .submit(json!({"kind": "echo", "payload": {"hello": "world"},
                       "callback_url": receiver.url("/hooks/spool")}))
        .await;
    let id = id_of(&job);

    let received = receiver.wait_for(1, SOON).await;
    let hook = &received[0];
    assert_eq!(hook.path, "/hooks/spool");
    assert_eq!(hook.header("content-type"), "application/json");
    let webhook_id = hook.id();
    assert!(
        webhook_id.len() == 36
            && webhook_id.starts_with("msg_")
            && webhook_id[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "webhook-id {webhook_id}"
    );
    let timestamp = hook.header("webhook-timestamp");
    let seconds: i64 = timestamp.parse().expect("unix seconds");
    assert!(
        (seconds - unix_now()).abs() <= 60,
        "webhook-timestamp {seconds} is not within a minute of {}",
        unix_now()
    );
    let signature = hook.header("webhook-signature");
    assert!(signature.starts_with("v1,"), "{signature}");
    assert!(
        verifies(
            TEST_WEBHOOK_SECRET,
            webhook_id,
            timestamp,
            &hook.body,
            signature
        ),
        "the signature {signature} does not verify"
    );

    // The check can fail: a changed byte, id, timestamp or key breaks it.
    let mut tampered = hook.body.to_vec();
    let at = tampered.iter().position(|&b| b == b'w').expect("a `w`");
    tampered[at] = b'W';
    assert!(!verifies(
        TEST_WEBHOOK_SECRET,
        webhook_id,
        timestamp,
        &tampered,
        signature
    ));
    assert!(!verifies(
        TEST_WEBHOOK_SECRET,
        "msg_other",
        timestamp,
        &hook.body,
        signature
    ));
    let later = (seconds + 1).to_string();
    assert!(!verifies(
        TEST_WEBHOOK_SECRET,
        webhook_id,
        &later,
        &hook.body,
        signature
    ));
    let other_key = format!("whsec_{}", STANDARD.encode([7u8; 24]));
    assert!(!verifies(
        &other_key, webhook_id, timestamp, &hook.body, signature
    ));

    let body = hook.json();
    assert_eq!(body["type"], "job.succeeded", "{body}");
    assert!(body["timestamp"].is_string(), "{body}");
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["status"], "succeeded", "{body}");
    assert_eq!(body["data"]["result"], json!({"hello": "world"}), "{body}");

    let job = wait_for_webhook(&app, &id, "delivered").await;
    // `data` is the job as GET shows it, but for the delivery state of the
    // webhook that carries it.
    let mut shown = job.clone();
    shown["webhook"] = Value::Null;
    assert_eq!(body["data"], shown);
    assert_eq!(job["webhook"]["id"], webhook_id, "{job}");
    assert_eq!(job["webhook"]["event"], "job.succeeded", "{job}");
    assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    assert!(job["webhook"]["delivered_at"].is_string(), "{job}");
    assert_eq!(job["webhook"]["next_attempt_at"], Value::Null, "{job}");
}

#[tokio::test]
async fn a_job_without_a_callback_url_has_no_webhook_and_sends_nothing() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app.submit(json!({"kind": "noop"})).await;
    let id = id_of(&job);
    let job = app.wait_for_status(&id, "succeeded", SOON).await;
    assert_eq!(job["webhook"], Value::Null, "{job}");
    assert_eq!(job["callback_url"], Value::Null, "{job}");

    // A job with one has no webhook either until it ends.
    let waiting = app
        .submit(json!({"kind": "noop", "delay_ms": 60_000, "callback_url": receiver.url("/")}))
        .await;
    let waiting = app.job(&id_of(&waiting)).await;
    assert_eq!(waiting["status"], "scheduled", "{waiting}");
    assert_eq!(waiting["webhook"], Value::Null, "{waiting}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty());
}

// ---------------------------------------------------------------------------
// 2. Retries
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_same_id_and_body_three_times_with_growing_gaps() {
    let receiver = Receiver::start([Reply::Status(500), Reply::Status(503)]).await;
    let app = hooks_app(Duration::from_millis(250), |_| {}).await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);

    let received = receiver.wait_for(3, SOON).await;
    let answered: Vec<u16> = received.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 503, 200]);
    for hook in &received[1..] {
        assert_eq!(hook.id(), received[0].id(), "one webhook, one id");
        assert_eq!(hook.body, received[0].body, "the body is rendered once");
    }
    for hook in &received {
        assert!(verifies(
            TEST_WEBHOOK_SECRET,
            hook.id(),
            hook.header("webhook-timestamp"),
            &hook.body,
            hook.header("webhook-signature")
        ));
    }
    // Base 250 ms: ≈250 ms then ≈1 s (±10 % each), so the second gap is
    // longer even if the first one was stretched by a busy machine.
    let first_gap = received[1].at - received[0].at;
    let second_gap = received[2].at - received[1].at;
    // (Measured at the receiver, so a slow first request shortens it a bit.)
    assert!(
        first_gap >= Duration::from_millis(100),
        "retried after {first_gap:?}"
    );
    assert!(
        second_gap > first_gap,
        "gaps {first_gap:?} then {second_gap:?}"
    );

    let job = wait_for_webhook(&app, &id, "delivered").await;
    let webhook = &job["webhook"];
    assert_eq!(webhook["id"], received[0].id(), "{job}");
    assert_eq!(webhook["attempts"], 3, "{job}");
    let last_error = webhook["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("503"), "{job}");
    assert!(webhook["delivered_at"].is_string(), "{job}");
    assert!(webhook["last_attempt_at"].is_string(), "{job}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3, "nothing after the 200");
}

#[tokio::test]
async fn a_pending_retry_shows_its_error_and_next_attempt_on_the_job() {
    let receiver = Receiver::start([Reply::Status(500)]).await;
    let app = hooks_app(Duration::from_secs(3), |_| {}).await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let job = app
        .wait_for(&id, SOON, |job| job["webhook"]["attempts"] == 1)
        .await;
    let webhook = &job["webhook"];
    assert_eq!(webhook["status"], "pending", "{job}");
    assert!(
        webhook["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{job}"
    );
    assert!(webhook["next_attempt_at"].is_string(), "{job}");
    assert_eq!(webhook["delivered_at"], Value::Null, "{job}");
    let wait = crate::helpers::millis(&webhook["next_attempt_at"])
        - crate::helpers::millis(&webhook["last_attempt_at"]);
    assert!(
        (2500..=3500).contains(&wait),
        "next attempt {wait} ms later"
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retried_with_the_same_id() {
    let receiver = Receiver::start([Reply::Slow(Duration::from_secs(5))]).await;
    let app = hooks_app(Duration::from_millis(100), |config| {
        config.webhook_timeout = Duration::from_millis(300);
    })
    .await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let job = wait_for_webhook(&app, &id, "delivered").await;
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    let last_error = job["webhook"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("timed out"), "{job}");
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].id(), received[1].id());
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_deliveries_to_others() {
    let hanging = Receiver::start([Reply::Slow(Duration::from_secs(8))]).await;
    let prompt = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |config| {
        config.webhook_timeout = Duration::from_secs(10);
    })
    .await;
    app.submit(json!({"kind": "noop", "callback_url": hanging.url("/")}))
        .await;
    hanging.wait_for(1, SOON).await;
    // The hanging attempt has 8 s to go; the other receiver's webhook goes
    // out meanwhile, not after it.
    let submitted = Instant::now();
    let job = app
        .submit(json!({"kind": "noop", "callback_url": prompt.url("/")}))
        .await;
    prompt.wait_for(1, Duration::from_secs(5)).await;
    assert!(submitted.elapsed() < Duration::from_secs(5));
    wait_for_webhook(&app, &id_of(&job), "delivered").await;
    assert_eq!(hanging.received().len(), 1);
}

#[tokio::test]
async fn a_retried_job_that_ends_again_posts_a_new_webhook_with_a_new_id() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 1, "fail": true},
                       "max_attempts": 1, "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let first = wait_for_webhook(&app, &id, "delivered").await;
    let response = app.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert!(response.status().is_success(), "{}", response.status());
    let second = app
        .wait_for(&id, SOON, |job| {
            job["status"] == "failed"
                && job["webhook"]["status"] == "delivered"
                && job["webhook"]["id"] != first["webhook"]["id"]
        })
        .await;
    let received = receiver.wait_for(2, SOON).await;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].id(), first["webhook"]["id"]);
    assert_eq!(received[1].id(), second["webhook"]["id"]);
    for hook in &received {
        assert_eq!(hook.json()["type"], "job.failed");
        assert_eq!(hook.json()["data"]["id"], id.as_str());
    }
}

#[tokio::test]
async fn many_jobs_ending_together_each_get_exactly_one_delivery() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let job = app
            .submit(json!({"kind": "noop", "callback_url": receiver.url(&format!("/{n}"))}))
            .await;
        ids.push(id_of(&job));
    }
    for id in &ids {
        wait_for_webhook(&app, id, "delivered").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = receiver.received();
    assert_eq!(
        received.len(),
        40,
        "{:#?}",
        received.iter().map(summary).collect::<Vec<_>>()
    );
    let mut webhook_ids: Vec<&str> = received.iter().map(Received::id).collect();
    webhook_ids.sort();
    webhook_ids.dedup();
    assert_eq!(webhook_ids.len(), 40);
    for (n, id) in ids.iter().enumerate() {
        let hooks: Vec<&Received> = received
            .iter()
            .filter(|r| r.path == format!("/{n}"))
            .collect();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].json()["data"]["id"], id.as_str());
    }
}

// ---------------------------------------------------------------------------
// 3. Crashes
// ---------------------------------------------------------------------------

async fn wait_on_process(
    client: &reqwest::Client,
    spool: &SpoolProcess,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, job) = fetch_json(client, spool.url(&format!("/v1/jobs/{id}"))).await;
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never reached the expected state: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit_to(client: &reqwest::Client, spool: &SpoolProcess, spec: Value) -> String {
    let response = client
        .post(spool.url("/v1/jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    id_of(&response.json::<Value>().await.unwrap())
}

/// Env of the real binary for these tests. The attempt timeout is short so
/// that a claim held at the kill lapses soon (claims last timeout + 5 s).
const PROCESS_ENV: [(&str, &str); 3] = [
    ("SPOOL_OUTBOUND_ALLOW", "127.0.0.1"),
    ("SPOOL_WEBHOOK_RETRY_BASE", "1s"),
    ("SPOOL_WEBHOOK_TIMEOUT", "2s"),
];

#[tokio::test]
async fn a_sigkill_between_a_failed_attempt_and_the_next_one_still_delivers_with_the_same_id() {
    let receiver = Receiver::start([]).await;
    receiver.answer_by_default(Reply::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut spool = SpoolProcess::start(&db_path(&dir), &PROCESS_ENV);
    let id = submit_to(
        &client,
        &spool,
        json!({"kind": "noop", "callback_url": receiver.url("/")}),
    )
    .await;
    let first = receiver.wait_for(1, SOON).await;
    let webhook_id = first[0].id().to_owned();
    spool.kill_9();

    receiver.answer_by_default(Reply::Status(200));
    let spool = SpoolProcess::start(&db_path(&dir), &PROCESS_ENV);
    let job = wait_on_process(&client, &spool, &id, Duration::from_secs(40), |job| {
        job["webhook"]["status"] == "delivered"
    })
    .await;
    assert_eq!(job["webhook"]["id"], webhook_id.as_str(), "{job}");

    let received = receiver.received();
    assert!(received.len() >= 2, "{received:#?}");
    for hook in &received {
        assert_eq!(hook.id(), webhook_id, "same webhook across the crash");
        assert_eq!(hook.body, received[0].body, "same body across the crash");
    }
    assert_eq!(received.last().unwrap().answered, 200);
    assert_eq!(
        received.iter().filter(|r| r.answered == 200).count(),
        1,
        "delivered once: {:#?}",
        received.iter().map(summary).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_sigkill_before_any_attempt_reached_the_receiver_still_delivers_the_rows_webhook() {
    // The port is bound but nothing listens on it at first: the first
    // attempt is refused at the TCP level (retried), and the process dies
    // before the second one. (Bound, so no other test can take the port.)
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = socket.local_addr().unwrap().port();
    let callback_url = format!("http://127.0.0.1:{port}/late");
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let env = [
        ("SPOOL_OUTBOUND_ALLOW", "127.0.0.1"),
        ("SPOOL_WEBHOOK_RETRY_BASE", "2s"),
        ("SPOOL_WEBHOOK_TIMEOUT", "2s"),
    ];
    let mut spool = SpoolProcess::start(&db_path(&dir), &env);
    let id = submit_to(
        &client,
        &spool,
        json!({"kind": "noop", "callback_url": callback_url}),
    )
    .await;
    let job = wait_on_process(&client, &spool, &id, SOON, |job| {
        job["webhook"]["attempts"] == 1
    })
    .await;
    spool.kill_9();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["webhook"]["status"], "pending", "{job}");
    let last_error = job["webhook"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("request failed"), "{job}");
    let webhook_id = job["webhook"]["id"].as_str().unwrap().to_owned();

    let receiver = Receiver::start_on(socket, []);
    let spool = SpoolProcess::start(&db_path(&dir), &env);
    let received = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(received[0].id(), webhook_id);
    assert_eq!(received[0].path, "/late");
    assert_eq!(received[0].json()["type"], "job.succeeded");
    assert_eq!(received[0].json()["data"]["id"], id.as_str());
    let job = wait_on_process(&client, &spool, &id, SOON, |job| {
        job["webhook"]["status"] == "delivered"
    })
    .await;
    assert_eq!(job["webhook"]["id"], webhook_id.as_str(), "{job}");
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_job_running_at_a_sigkill_and_failed_by_the_rescue_posts_job_failed_after_restart() {
    let receiver = Receiver::start([]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut spool = SpoolProcess::start(&db_path(&dir), &PROCESS_ENV);
    let id = submit_to(
        &client,
        &spool,
        json!({"kind": "sleep", "payload": {"ms": 60_000}, "max_attempts": 1,
               "callback_url": receiver.url("/")}),
    )
    .await;
    wait_on_process(&client, &spool, &id, SOON, |job| job["status"] == "running").await;
    spool.kill_9();
    assert!(receiver.received().is_empty());

    let spool = SpoolProcess::start(&db_path(&dir), &PROCESS_ENV);
    let received = receiver.wait_for(1, Duration::from_secs(30)).await;
    let body = received[0].json();
    assert_eq!(body["type"], "job.failed", "{body}");
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["error"]["code"], "lease_expired", "{body}");
    let job = wait_on_process(&client, &spool, &id, SOON, |job| {
        job["webhook"]["status"] == "delivered"
    })
    .await;
    assert_eq!(job["webhook"]["id"], received[0].id(), "{job}");
}

// ---------------------------------------------------------------------------
// 4. Giving up
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_receiver_always_failing_gets_max_attempts_then_nothing_more() {
    let receiver = Receiver::start([]).await;
    receiver.answer_by_default(Reply::Status(500));
    let app = hooks_app(Duration::from_millis(100), |config| {
        config.webhook_max_attempts = 3;
    })
    .await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let job = wait_for_webhook(&app, &id, "failed").await;
    let webhook = &job["webhook"];
    assert_eq!(webhook["attempts"], 3, "{job}");
    let last_error = webhook["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("500"), "{job}");
    assert_eq!(webhook["next_attempt_at"], Value::Null, "{job}");
    assert_eq!(webhook["delivered_at"], Value::Null, "{job}");

    // Delays would be 100 ms, 400 ms, 1.6 s: wait past the next one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let received = receiver.received();
    assert_eq!(
        received.len(),
        3,
        "{:#?}",
        received.iter().map(summary).collect::<Vec<_>>()
    );
    assert!(received.iter().all(|r| r.id() == received[0].id()));
    assert_eq!(app.job(&id).await["webhook"]["attempts"], 3);
}

#[tokio::test]
async fn a_410_fails_the_delivery_at_once() {
    let receiver = Receiver::start([Reply::Status(410)]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let job = wait_for_webhook(&app, &id, "failed").await;
    assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    let last_error = job["webhook"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("410"), "{job}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), 1);
}

// ---------------------------------------------------------------------------
// 5. Batches
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_batch_posts_one_batch_finished_and_its_jobs_with_their_own_url_post_their_own() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let mut jobs: Vec<Value> = (0..20).map(|_| json!({"kind": "noop"})).collect();
    for index in [3, 11] {
        jobs[index]["callback_url"] = json!(receiver.url(&format!("/job/{index}")));
    }
    let response = app
        .post(
            "/v1/batches",
            &json!({"jobs": jobs, "callback_url": receiver.url("/batch")}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let submitted: Value = response.json().await.unwrap();
    let batch_id = id_of(&submitted);
    let ids = job_ids(&submitted);

    let batch = wait_for_batch_webhook(&app, &batch_id, "delivered").await;
    assert_eq!(batch["status"], "succeeded", "{batch}");
    assert_eq!(batch["webhook"]["event"], "batch.finished", "{batch}");
    assert_eq!(batch["webhook"]["attempts"], 1, "{batch}");
    for index in [3, 11] {
        wait_for_webhook(&app, &ids[index], "delivered").await;
    }
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let received = receiver.received();
    let summaries: Vec<String> = received.iter().map(summary).collect();

    let batch_hooks: Vec<&Received> = received.iter().filter(|r| r.path == "/batch").collect();
    assert_eq!(batch_hooks.len(), 1, "{summaries:#?}");
    let body = batch_hooks[0].json();
    assert_eq!(body["type"], "batch.finished", "{body}");
    assert_eq!(body["data"]["id"], batch_id.as_str(), "{body}");
    assert_eq!(body["data"]["status"], "succeeded", "{body}");
    assert_eq!(body["data"]["counts"]["succeeded"], 20, "{body}");
    assert_eq!(batch_hooks[0].id(), batch["webhook"]["id"]);

    let job_hooks: Vec<&Received> = received.iter().filter(|r| r.path != "/batch").collect();
    assert_eq!(job_hooks.len(), 2, "{summaries:#?}");
    let mut seen = vec![batch_hooks[0].id().to_owned()];
    for hook in job_hooks {
        let body = hook.json();
        assert_eq!(body["type"], "job.succeeded", "{body}");
        let index: usize = hook.path.trim_start_matches("/job/").parse().unwrap();
        assert_eq!(body["data"]["id"], ids[index].as_str(), "{body}");
        assert!(
            !seen.contains(&hook.id().to_owned()),
            "ids differ: {summaries:#?}"
        );
        seen.push(hook.id().to_owned());
    }
    // Jobs without a callback_url of their own have no webhook.
    assert_eq!(app.job(&ids[0]).await["webhook"], Value::Null);
}

/// A GET never shows the webhook of an end beside a state before it.
#[tokio::test]
async fn a_batch_or_job_never_shows_its_end_webhook_while_still_running() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    for _ in 0..10 {
        let jobs: Vec<Value> = (0..10)
            .map(|_| json!({"kind": "noop", "callback_url": receiver.url("/job")}))
            .collect();
        let response = app
            .post(
                "/v1/batches",
                &json!({"jobs": jobs, "callback_url": receiver.url("/batch")}),
            )
            .await;
        assert_eq!(response.status(), 202);
        let submitted: Value = response.json().await.unwrap();
        let batch_id = id_of(&submitted);
        let last_job = job_ids(&submitted).pop().unwrap();
        let deadline = Instant::now() + SOON;
        loop {
            let (batch, job) = tokio::join!(batch(&app, &batch_id), app.job(&last_job));
            if !batch["webhook"].is_null() {
                assert!(batch["finished_at"].is_string(), "{batch}");
                assert_ne!(batch["status"], "running", "{batch}");
            }
            if !job["webhook"].is_null() {
                assert_eq!(job["status"], "succeeded", "{job}");
            }
            if batch["webhook"]["status"] == "delivered" && job["webhook"]["status"] == "delivered"
            {
                break;
            }
            assert!(Instant::now() < deadline, "{batch}\n{job}");
        }
    }
}

#[tokio::test]
async fn a_cancelled_batch_posts_batch_finished_with_status_cancelled() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let jobs: Vec<Value> = (0..3)
        .map(|_| json!({"kind": "noop", "delay_ms": 60_000}))
        .collect();
    let response = app
        .post(
            "/v1/batches",
            &json!({"jobs": jobs, "callback_url": receiver.url("/batch")}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let batch_id = id_of(&response.json::<Value>().await.unwrap());
    let response = app
        .post(&format!("/v1/batches/{batch_id}/cancel"), &json!({}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let received = receiver.wait_for(1, SOON).await;
    let body = received[0].json();
    assert_eq!(body["type"], "batch.finished", "{body}");
    assert_eq!(body["data"]["status"], "cancelled", "{body}");
    assert_eq!(body["data"]["counts"]["cancelled"], 3, "{body}");
    wait_for_batch_webhook(&app, &batch_id, "delivered").await;
}

// ---------------------------------------------------------------------------
// 6. Every terminal kind
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_failed_job_posts_job_failed_with_its_error() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 1, "fail": true},
                       "max_attempts": 1, "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let received = receiver.wait_for(1, SOON).await;
    let body = received[0].json();
    assert_eq!(body["type"], "job.failed", "{body}");
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["status"], "failed", "{body}");
    assert!(body["data"]["error"]["code"].is_string(), "{body}");
    let job = wait_for_webhook(&app, &id, "delivered").await;
    assert_eq!(job["webhook"]["event"], "job.failed", "{job}");
}

#[tokio::test]
async fn a_cancelled_job_posts_job_cancelled() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app
        .submit(json!({"kind": "noop", "delay_ms": 60_000, "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), 200);
    let received = receiver.wait_for(1, SOON).await;
    let body = received[0].json();
    assert_eq!(body["type"], "job.cancelled", "{body}");
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    assert_eq!(body["data"]["status"], "cancelled", "{body}");
    wait_for_webhook(&app, &id, "delivered").await;
}

#[tokio::test]
async fn a_running_job_cancelled_posts_job_cancelled_once_it_stops() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app
        .submit(
            json!({"kind": "sleep", "payload": {"ms": 30_000}, "callback_url": receiver.url("/")}),
        )
        .await;
    let id = id_of(&job);
    app.wait_for_status(&id, "running", SOON).await;
    let response = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(response.status().is_success(), "{}", response.status());
    let received = receiver.wait_for(1, SOON).await;
    assert_eq!(received[0].json()["type"], "job.cancelled");
    assert_eq!(received[0].json()["data"]["status"], "cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn dependents_cancelled_by_a_failed_dependency_post_job_cancelled_with_dependency_failed() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let failing = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 300, "fail": true}, "max_attempts": 1}))
        .await;
    let failing_id = id_of(&failing);
    // Waiting when its dependency fails: cancelled by the cascade.
    let waiting = app
        .submit(json!({"kind": "noop", "depends_on": [failing_id],
                       "callback_url": receiver.url("/waiting")}))
        .await;
    let waiting_id = id_of(&waiting);
    app.wait_for_status(&failing_id, "failed", SOON).await;
    // Submitted after it failed: stored already cancelled.
    let late = app
        .submit(json!({"kind": "noop", "depends_on": [failing_id],
                       "callback_url": receiver.url("/late")}))
        .await;
    let late_id = id_of(&late);

    let received = receiver.wait_for(2, SOON).await;
    for (path, id) in [("/waiting", &waiting_id), ("/late", &late_id)] {
        let hooks: Vec<&Received> = received.iter().filter(|r| r.path == path).collect();
        assert_eq!(
            hooks.len(),
            1,
            "{path}: {:#?}",
            received.iter().map(summary).collect::<Vec<_>>()
        );
        let body = hooks[0].json();
        assert_eq!(body["type"], "job.cancelled", "{path}: {body}");
        assert_eq!(body["data"]["id"], id.as_str(), "{path}: {body}");
        assert_eq!(
            body["data"]["error"]["code"], "dependency_failed",
            "{path}: {body}"
        );
        let job = wait_for_webhook(&app, id, "delivered").await;
        assert_eq!(job["webhook"]["id"], hooks[0].id(), "{job}");
    }
}

// ---------------------------------------------------------------------------
// 7. Refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn without_a_webhook_secret_a_callback_url_is_refused() {
    let app = spawn_app_with(|config| config.webhook_secret = None).await;
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "noop", "callback_url": "https://hooks.example.com/spool"}),
        )
        .await;
    assert_eq!(refused_pointers(response).await, ["/callback_url"]);
    let response = app
        .post(
            "/v1/batches",
            &json!({"jobs": [{"kind": "noop", "callback_url": "https://hooks.example.com/a"}],
                    "callback_url": "https://hooks.example.com/b"}),
        )
        .await;
    assert_eq!(
        refused_pointers(response).await,
        ["/callback_url", "/jobs/0/callback_url"]
    );
    // Without a callback_url all is as usual.
    app.submit(json!({"kind": "noop"})).await;
}

#[tokio::test]
async fn callback_urls_to_loopback_private_or_metadata_addresses_are_refused_at_submission() {
    let app = spawn_app_with(|_| {}).await;
    let port = unused_port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://10.1.2.3:{port}/"),
        "http://169.254.169.254/".to_owned(),
        "http://2130706433/".to_owned(),
        "ftp://hooks.example.com/".to_owned(),
        "not a url".to_owned(),
    ] {
        let response = app
            .post("/v1/jobs", &json!({"kind": "noop", "callback_url": url}))
            .await;
        assert_eq!(refused_pointers(response).await, ["/callback_url"], "{url}");
        let response = app
            .post(
                "/v1/batches",
                &json!({"jobs": [{"kind": "noop", "callback_url": url}], "callback_url": url}),
            )
            .await;
        assert_eq!(
            refused_pointers(response).await,
            ["/callback_url", "/jobs/0/callback_url"],
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_accepted_but_its_delivery_fails_at_the_first_attempt() {
    // Listens on the port the name would lead to, counting connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let lookup: Box<dyn FnOnce(AppBuilder) -> AppBuilder> = Box::new(|builder| {
        builder.outbound_lookup(StaticLookup::new([(
            "rebind.example".to_string(),
            vec!["127.0.0.1".parse().unwrap()],
        )]))
    });
    let app = spawn_app_with_kinds(
        |config| config.webhook_retry_base = Duration::from_millis(100),
        vec![lookup],
    )
    .await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": format!("http://rebind.example:{port}/")}))
        .await;
    let id = id_of(&job);
    let job = wait_for_webhook(&app, &id, "failed").await;
    assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    let last_error = job["webhook"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("127.0.0.1") && last_error.contains("loopback"),
        "{job}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the refused address was never connected to"
    );
    assert_eq!(app.job(&id).await["webhook"]["attempts"], 1);
}

// ---------------------------------------------------------------------------
// 8. Redirects
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_redirect_is_not_followed_but_counted_as_a_failed_attempt() {
    let target = Receiver::start([]).await;
    let receiver = Receiver::start([Reply::Redirect(target.url("/elsewhere"))]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let job = app
        .submit(json!({"kind": "noop", "callback_url": receiver.url("/")}))
        .await;
    let id = id_of(&job);
    let job = wait_for_webhook(&app, &id, "delivered").await;
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    let last_error = job["webhook"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("302"), "{job}");
    let answered: Vec<u16> = receiver.received().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [302, 200]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(target.received().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_traced_jobs_webhook_carries_its_trace_and_an_untraced_ones_none() {
    let receiver = Receiver::start([]).await;
    let app = hooks_app(Duration::from_millis(100), |_| {}).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let submitted = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let job = json!({"kind": "noop", "callback_url": receiver.url("/traced")});
    let response = app
        .post_traced("/v1/jobs", &job, &submitted, Some("congo=t61rcWkgMzE"))
        .await;
    assert_eq!(response.status(), 202);
    let received = receiver.wait_for(1, SOON).await;
    let traceparent = received[0].header("traceparent");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    assert!(
        traceparent.ends_with("-01") && traceparent != submitted,
        "{traceparent}"
    );
    assert_eq!(received[0].header("tracestate"), "congo=t61rcWkgMzE");

    app.submit(json!({"kind": "noop", "callback_url": receiver.url("/untraced")}))
        .await;
    let received = receiver.wait_for(2, SOON).await;
    let untraced = received
        .iter()
        .find(|hook| hook.path == "/untraced")
        .expect("delivered");
    assert!(untraced.headers.get("traceparent").is_none());
}
