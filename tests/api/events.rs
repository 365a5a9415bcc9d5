//! `GET /v1/events`: job and batch events as Server-Sent Events, read
//! through a small client that parses the stream as the SSE spec says;
//! in order, resumed, filtered, kept alive and ended at shutdown.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, noop, sleep_ms, spawn_app, spawn_app_with};

/// How long any single read of a stream may take before the test fails
/// (generous: a loaded machine must not make a test flaky).
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// A minimal SSE client over `reqwest::Response::chunk()`

/// One dispatched SSE message.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub(crate) id: Option<String>,
    pub(crate) event: String,
    pub(crate) data: String,
}

impl Message {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|error| panic!("data is not JSON ({error}): {self:?}"))
    }

    pub(crate) fn job_id(&self) -> Option<String> {
        self.json()["job"]["id"].as_str().map(str::to_owned)
    }
}

/// What the stream yields: messages, and comment lines (keep-alives).
#[derive(Debug)]
enum Item {
    Message(Message),
    Comment,
}

pub(crate) struct EventStream {
    response: reqwest::Response,
    /// Bytes received but not yet split into lines.
    buffer: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it belongs to it.
    after_cr: bool,
    /// The message being assembled.
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    ready: std::collections::VecDeque<Item>,
    ended: bool,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
            after_cr: false,
            id: None,
            event: None,
            data: None,
            ready: Default::default(),
            ended: false,
        }
    }

    /// Opens `/v1/events?{query}`, asserting a 200 SSE response.
    pub(crate) async fn open(app: &TestApp, query: &str, last_event_id: Option<&str>) -> Self {
        let response = request(app, query, last_event_id).await;
        let status = response.status();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            panic!("GET /v1/events?{query} answered {status}: {body}");
        }
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type {content_type}"
        );
        Self::new(response)
    }

    /// The next message or comment; `None` once the body ended. Fails the
    /// test if nothing arrives within `WAIT`.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("nothing arrived on the stream within {WAIT:?}"))
                .expect("the stream broke");
            match chunk {
                Some(bytes) => self.feed(&bytes),
                // A message not ended by a blank line is dropped (per spec).
                None => self.ended = true,
            }
        }
    }

    /// The next message, skipping comments; panics if the stream ended.
    pub(crate) async fn next(&mut self) -> Message {
        self.next_or_end()
            .await
            .expect("the stream ended where a message was expected")
    }

    /// The next message, or `None` if the stream ended.
    async fn next_or_end(&mut self) -> Option<Message> {
        loop {
            match self.next_item().await? {
                Item::Message(message) => return Some(message),
                Item::Comment => {}
            }
        }
    }

    /// Messages up to and including the first for which `last` holds.
    pub(crate) async fn until(&mut self, last: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            let message = self.next().await;
            let done = last(&message);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    /// Messages up to and including the given event of the given job.
    pub(crate) async fn until_job_event(&mut self, job_id: &str, event: &str) -> Vec<Message> {
        self.until(|m| m.event == event && m.job_id().as_deref() == Some(job_id))
            .await
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = String::from_utf8(std::mem::take(&mut self.buffer))
                        .expect("the stream is UTF-8");
                    self.line(&line);
                }
                _ => {
                    self.after_cr = false;
                    self.buffer.push(byte);
                }
            }
        }
    }

    /// One line, as the SSE spec interprets it.
    fn line(&mut self, line: &str) {
        if line.is_empty() {
            // Dispatch; a message without data is not dispatched.
            let (id, event, data) = (self.id.take(), self.event.take(), self.data.take());
            if let Some(data) = data {
                self.ready.push_back(Item::Message(Message {
                    id,
                    event: event.unwrap_or_else(|| "message".to_owned()),
                    data,
                }));
            }
            return;
        }
        if line.starts_with(':') {
            self.ready.push_back(Item::Comment);
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            // `retry` and unknown fields are ignored.
            _ => {}
        }
    }
}

async fn request(app: &TestApp, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(&format!("/v1/events?{query}")));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the stream opened in time")
        .expect("request sent")
}

/// The sequence number of an event id `<epoch>-<seq>`.
fn seq(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("`{id}` is not `<epoch>-<seq>`"))
}

fn id_of(message: &Message) -> &str {
    message
        .id
        .as_deref()
        .unwrap_or_else(|| panic!("a message without id: {message:?}"))
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| id_of(m).to_owned()).collect()
}

fn events(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.event.as_str()).collect()
}

/// Every message is a well-formed event: `event:` is `data.type`, `id:` is
/// `data.id`, and ids strictly increase.
fn assert_well_formed(messages: &[Message]) {
    let mut previous: Option<u64> = None;
    for message in messages {
        let data = message.json();
        assert_eq!(data["type"], message.event.as_str(), "{message:?}");
        assert_eq!(data["id"], id_of(message), "{message:?}");
        assert!(data["at"].is_string(), "{message:?}");
        let seq = seq(id_of(message));
        if let Some(previous) = previous {
            assert!(seq > previous, "ids do not increase: {messages:#?}");
        }
        previous = Some(seq);
    }
}

fn id_str(value: &Value) -> String {
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {value}"))
        .to_owned()
}

async fn assert_problem(app: &TestApp, query: &str, last_event_id: Option<&str>, what: &str) {
    let response = request(app, query, last_event_id).await;
    assert_eq!(response.status(), 422, "{what}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json", "{what}");
    let problem: Value = tokio::time::timeout(WAIT, response.json())
        .await
        .expect("the problem arrived in time")
        .expect("a JSON problem");
    assert_eq!(problem["code"], "validation_failed", "{what}: {problem}");
}

// ---------------------------------------------------------------------------
// Order and content

#[tokio::test]
async fn a_jobs_events_arrive_in_order_with_its_progress_and_result() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "", None).await;
    let job = app
        .submit(json!({"kind": "sleep", "payload": {"ms": 300, "steps": 3}}))
        .await;
    let id = id_str(&job);

    let seen = stream.until_job_event(&id, "job.succeeded").await;
    assert_well_formed(&seen);
    let mine: Vec<Message> = seen
        .into_iter()
        .filter(|m| m.job_id().as_deref() == Some(&id))
        .collect();
    assert_eq!(
        events(&mine),
        [
            "job.queued",
            "job.started",
            "job.progress",
            "job.progress",
            "job.progress",
            "job.succeeded"
        ],
        "{mine:#?}"
    );
    let statuses: Vec<Value> = mine
        .iter()
        .map(|m| m.json()["job"]["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            "queued",
            "running",
            "running",
            "running",
            "running",
            "succeeded"
        ]
    );
    let progress: Vec<Value> = mine[2..5]
        .iter()
        .map(|m| m.json()["job"]["progress"].clone())
        .collect();
    for (step, progress) in progress.iter().enumerate() {
        assert_eq!(progress["current"], step as u64 + 1, "{progress}");
        assert_eq!(progress["total"], 3, "{progress}");
    }
    let done = mine[5].json();
    assert_eq!(done["job"]["kind"], "sleep");
    assert_eq!(done["job"]["queue"], "default");
    assert_eq!(done["job"]["attempt"], 1);
    assert_eq!(
        done["job"]["result"],
        json!({"slept_ms": 300, "attempt": 1})
    );
    assert!(done["job"].get("error").is_none(), "{done}");
    // The result belongs to the end only.
    assert!(
        mine[..5]
            .iter()
            .all(|m| m.json()["job"].get("result").is_none())
    );
}

// ---------------------------------------------------------------------------
// Resuming

#[tokio::test]
async fn a_client_resuming_with_last_event_id_gets_exactly_what_it_missed_then_live_events() {
    let app = spawn_app().await;
    // Sees everything, to know what the resumed stream must show.
    let mut observer = EventStream::open(&app, "", None).await;

    let mut client = EventStream::open(&app, "", None).await;
    let first = id_str(&app.submit(noop()).await);
    let read = vec![client.next().await, client.next().await];
    assert_eq!(events(&read), ["job.queued", "job.started"], "{read:#?}");
    let last_id = id_of(&read[1]).to_owned();
    drop(client);

    // While it is away: the rest of the first job, and a second job.
    let second = id_str(&app.submit(noop()).await);
    let mut all = observer.until_job_event(&first, "job.succeeded").await;
    if !all
        .iter()
        .any(|m| m.job_id().as_deref() == Some(&second) && m.event == "job.succeeded")
    {
        all.extend(observer.until_job_event(&second, "job.succeeded").await);
    }
    assert_well_formed(&all);
    let position = all
        .iter()
        .position(|m| id_of(m) == last_id)
        .expect("the observer saw the last event the client read");
    let missed = ids(&all[position + 1..]);
    assert!(missed.len() >= 4, "{all:#?}");

    let mut resumed = EventStream::open(&app, "", Some(&last_id)).await;
    let mut replayed = Vec::new();
    for _ in 0..missed.len() {
        replayed.push(resumed.next().await);
    }
    assert_eq!(ids(&replayed), missed);
    assert_well_formed(&replayed);

    // Then live events, with nothing repeated or left out in between.
    let third = id_str(&app.submit(noop()).await);
    let live = resumed.next().await;
    assert_eq!(live.event, "job.queued", "{live:?}");
    assert_eq!(live.job_id().as_deref(), Some(third.as_str()));
    assert_eq!(
        seq(id_of(&live)),
        seq(missed.last().unwrap()) + 1,
        "the first live event follows the last replayed one"
    );

    // Clients that cannot set headers resume with the query parameter.
    let mut by_query = EventStream::open(&app, &format!("last_event_id={last_id}"), None).await;
    let mut replayed = Vec::new();
    for _ in 0..missed.len() {
        replayed.push(by_query.next().await);
    }
    assert_eq!(ids(&replayed), missed);
}

#[tokio::test]
async fn a_resume_from_an_event_no_longer_kept_starts_with_a_too_old_gap() {
    let app = spawn_app_with(|config| config.event_replay = 5).await;
    let mut observer = EventStream::open(&app, "", None).await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let id = id_str(&app.submit(noop()).await);
        app.wait_for_status(&id, "succeeded", WAIT).await;
        jobs.push(id);
    }
    let all = observer.until_job_event(&jobs[2], "job.succeeded").await;
    assert_well_formed(&all);
    assert_eq!(all.len(), 9, "{all:#?}");
    let all = ids(&all);
    let kept = &all[4..];

    let mut resumed = EventStream::open(&app, "", Some(&all[0])).await;
    let gap = resumed.next().await;
    assert_eq!(gap.event, "stream.gap", "{gap:?}");
    assert_eq!(gap.id, None, "a notice has no id: {gap:?}");
    assert_eq!(
        gap.json(),
        json!({"reason": "too_old", "oldest_kept_id": kept[0]})
    );
    let mut replayed = Vec::new();
    for _ in 0..kept.len() {
        replayed.push(resumed.next().await);
    }
    assert_eq!(ids(&replayed), kept);

    // From the event just before the oldest kept one nothing is missing.
    let mut resumed = EventStream::open(&app, "", Some(&all[3])).await;
    let first = resumed.next().await;
    assert_eq!(first.id.as_deref(), Some(kept[0].as_str()), "{first:?}");
}

#[tokio::test]
async fn a_resume_from_another_process_or_a_future_id_starts_with_a_restarted_gap() {
    let app = spawn_app_with(|config| config.event_replay = 5).await;
    let mut observer = EventStream::open(&app, "", None).await;
    let id = id_str(&app.submit(noop()).await);
    let all = ids(&observer.until_job_event(&id, "job.succeeded").await);
    let epoch = all[0].rsplit_once('-').unwrap().0.to_owned();

    for last in ["1-1".to_owned(), format!("{epoch}-999999")] {
        let mut resumed = EventStream::open(&app, "", Some(&last)).await;
        let gap = resumed.next().await;
        assert_eq!(gap.event, "stream.gap", "{last}: {gap:?}");
        assert_eq!(gap.id, None);
        assert_eq!(gap.json()["reason"], "restarted", "{last}: {gap:?}");
        assert_eq!(gap.json()["oldest_kept_id"], all[0].as_str());
        let mut replayed = Vec::new();
        for _ in 0..all.len() {
            replayed.push(resumed.next().await);
        }
        assert_eq!(ids(&replayed), all, "{last}: all that is kept follows");
    }
}

// ---------------------------------------------------------------------------
// Filters

#[tokio::test]
async fn a_stream_filtered_by_job_id_shows_only_that_job() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let held = id_str(&app.submit(json!({"kind": "noop", "queue": "held"})).await);
    let mut stream = EventStream::open(&app, &format!("job_id={held}"), None).await;

    // Another job runs start to end before the held one moves.
    let other = id_str(&app.submit(noop()).await);
    app.wait_for_status(&other, "succeeded", WAIT).await;
    app.configure_queue("held", json!({"paused": false})).await;

    let seen = stream.until_job_event(&held, "job.succeeded").await;
    assert_eq!(events(&seen), ["job.started", "job.succeeded"], "{seen:#?}");
    assert!(seen.iter().all(|m| m.job_id().as_deref() == Some(&held)));
}

#[tokio::test]
async fn a_stream_filtered_by_batch_id_shows_its_jobs_and_its_end() {
    let app = spawn_app().await;
    app.configure_queue("held", json!({"paused": true})).await;
    let response = app
        .post(
            "/v1/batches",
            &json!({"jobs": [
                {"kind": "noop", "queue": "held"},
                {"kind": "sleep", "queue": "held", "payload": {"ms": 10, "fail": true}, "max_attempts": 1}
            ], "success_threshold": 0.5}),
        )
        .await;
    let status = response.status();
    let batch: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{batch}");
    let batch_id = id_str(&batch);
    let mut stream = EventStream::open(&app, &format!("batch_id={batch_id}"), None).await;

    let other = id_str(&app.submit(noop()).await);
    app.wait_for_status(&other, "succeeded", WAIT).await;
    app.configure_queue("held", json!({"paused": false})).await;

    let seen = stream.until(|m| m.event == "batch.finished").await;
    assert_well_formed(&seen);
    for message in &seen[..seen.len() - 1] {
        assert_eq!(
            message.json()["job"]["batch_id"],
            batch_id.as_str(),
            "{message:?}"
        );
    }
    let mut ends: Vec<&str> = seen
        .iter()
        .filter(|m| m.event != "job.started")
        .map(|m| m.event.as_str())
        .collect();
    ends.sort();
    assert_eq!(
        ends,
        ["batch.finished", "job.failed", "job.succeeded"],
        "{seen:#?}"
    );
    let finished = seen.last().unwrap().json();
    assert!(finished.get("job").is_none(), "{finished}");
    assert_eq!(finished["batch"]["id"], batch_id.as_str());
    assert_eq!(finished["batch"]["status"], "succeeded", "{finished}");
    assert_eq!(finished["batch"]["counts"]["succeeded"], 1, "{finished}");
    assert_eq!(finished["batch"]["counts"]["failed"], 1, "{finished}");
    assert!(finished["batch"]["finished_at"].is_string(), "{finished}");
}

#[tokio::test]
async fn a_stream_filtered_by_queue_shows_only_that_queues_jobs() {
    let app = spawn_app().await;
    app.configure_queue("mail", json!({})).await;
    let mut stream = EventStream::open(&app, "queue=mail", None).await;
    let other = id_str(&app.submit(noop()).await);
    app.wait_for_status(&other, "succeeded", WAIT).await;
    let mail = id_str(&app.submit(json!({"kind": "noop", "queue": "mail"})).await);

    let seen = stream.until_job_event(&mail, "job.succeeded").await;
    assert_eq!(
        events(&seen),
        ["job.queued", "job.started", "job.succeeded"],
        "{seen:#?}"
    );
    assert!(seen.iter().all(|m| m.json()["job"]["queue"] == "mail"));
}

#[tokio::test]
async fn a_stream_filtered_by_types_shows_only_those_types() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "types=job.failed,job.cancelled", None).await;
    let fine = id_str(&app.submit(noop()).await);
    app.wait_for_status(&fine, "succeeded", WAIT).await;
    let failing = id_str(
        &app.submit(
            json!({"kind": "sleep", "payload": {"ms": 10, "fail": true}, "max_attempts": 1}),
        )
        .await,
    );
    app.wait_for_status(&failing, "failed", WAIT).await;
    let long = id_str(
        &app.submit(json!({"kind": "sleep", "payload": {"ms": 60000}}))
            .await,
    );
    app.wait_for_status(&long, "running", WAIT).await;
    let cancel = app
        .post(&format!("/v1/jobs/{long}/cancel"), &json!({}))
        .await;
    assert!(cancel.status().is_success(), "{}", cancel.status());

    let first = stream.next().await;
    let second = stream.next().await;
    assert_eq!(first.event, "job.failed", "{first:?}");
    assert_eq!(first.job_id().as_deref(), Some(failing.as_str()));
    assert_eq!(second.event, "job.cancelled", "{second:?}");
    assert_eq!(second.job_id().as_deref(), Some(long.as_str()));
}

#[tokio::test]
async fn bad_filters_and_event_ids_are_refused_as_validation_failures() {
    let app = spawn_app().await;
    for (query, what) in [
        ("job_id=nope", "a job id that is not a UUID"),
        ("batch_id=42", "a batch id that is not a UUID"),
        ("types=job.queued,job.exploded", "an unknown event type"),
        ("types=", "an empty type list"),
        ("color=blue", "an unknown parameter"),
        ("last_event_id=nonsense", "a malformed last_event_id"),
    ] {
        assert_problem(&app, query, None, what).await;
    }
    for id in ["nonsense", "12-x", "abc-1", "-5"] {
        assert_problem(&app, "", Some(id), &format!("Last-Event-ID `{id}`")).await;
    }
    // The filters that were refused above are accepted when well formed.
    let job = id_str(&app.submit(noop()).await);
    let response = request(&app, &format!("job_id={job}&types=job.succeeded"), None).await;
    assert_eq!(response.status(), 200);
}

// ---------------------------------------------------------------------------
// Failures, retries and cancellation

#[tokio::test]
async fn a_failing_job_shows_its_retry_then_its_failure_with_the_error() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "", None).await;
    let id = id_str(
        &app.submit(json!({
            "kind": "sleep", "payload": {"ms": 10, "fail": true},
            "max_attempts": 2, "backoff": {"base_ms": 10, "max_ms": 20}
        }))
        .await,
    );
    let seen = stream.until_job_event(&id, "job.failed").await;
    assert_well_formed(&seen);
    assert_eq!(
        events(&seen),
        [
            "job.queued",
            "job.started",
            "job.retrying",
            "job.started",
            "job.failed"
        ],
        "{seen:#?}"
    );
    let retrying = seen[2].json();
    assert_eq!(retrying["job"]["status"], "scheduled", "{retrying}");
    assert_eq!(retrying["job"]["attempt"], 1);
    assert_eq!(retrying["job"]["max_attempts"], 2);
    assert_eq!(
        retrying["job"]["error"]["code"], "requested_failure",
        "{retrying}"
    );
    let failed = seen[4].json();
    assert_eq!(failed["job"]["status"], "failed");
    assert_eq!(failed["job"]["attempt"], 2);
    assert_eq!(
        failed["job"]["error"]["code"], "requested_failure",
        "{failed}"
    );
    assert!(failed["job"]["error"]["message"].is_string(), "{failed}");
    assert!(failed["job"].get("result").is_none(), "{failed}");
}

#[tokio::test]
async fn a_cancelled_running_job_shows_job_cancelled() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "", None).await;
    let id = id_str(
        &app.submit(json!({"kind": "sleep", "payload": {"ms": 60000}}))
            .await,
    );
    let started = stream.until_job_event(&id, "job.started").await;
    assert_eq!(events(&started), ["job.queued", "job.started"]);
    let cancel = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let next = stream.next().await;
    assert_eq!(next.event, "job.cancelled", "{next:?}");
    assert_eq!(next.job_id().as_deref(), Some(id.as_str()));
    assert_eq!(next.json()["job"]["status"], "cancelled");
}

#[tokio::test]
async fn a_dependent_of_a_failed_job_shows_job_cancelled_with_dependency_failed() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "", None).await;
    let parent = id_str(
        &app.submit(
            json!({"kind": "sleep", "payload": {"ms": 200, "fail": true}, "max_attempts": 1}),
        )
        .await,
    );
    let child = id_str(
        &app.submit(json!({"kind": "noop", "depends_on": [parent]}))
            .await,
    );

    let seen = stream.until_job_event(&child, "job.cancelled").await;
    assert_well_formed(&seen);
    let of_child: Vec<&Message> = seen
        .iter()
        .filter(|m| m.job_id().as_deref() == Some(&child))
        .collect();
    // It never ran: it was stored to wait, then cancelled, never "retrying".
    let kinds: Vec<&str> = of_child.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(kinds, ["job.scheduled", "job.cancelled"], "{seen:#?}");
    let accepted = of_child[0].json();
    assert_eq!(
        accepted["job"]["status"], "scheduled",
        "waiting: {accepted}"
    );
    assert_eq!(accepted["job"]["attempt"], 0);
    let cancelled = of_child[1].json();
    assert_eq!(cancelled["job"]["status"], "cancelled");
    assert_eq!(
        cancelled["job"]["error"]["code"], "dependency_failed",
        "{cancelled}"
    );
    // The parent failed before its dependent was cancelled.
    let parent_failed = seen
        .iter()
        .position(|m| m.event == "job.failed" && m.job_id().as_deref() == Some(&parent))
        .expect("the parent's failure came first");
    assert!(parent_failed < seen.len() - 1);
}

// ---------------------------------------------------------------------------
// Keep-alive, shutdown and headers

#[tokio::test]
async fn an_idle_stream_receives_keep_alive_comments() {
    let app = spawn_app_with(|config| config.sse_keep_alive = Duration::from_millis(200)).await;
    let mut stream = EventStream::open(&app, "", None).await;
    let mut comments = 0;
    while comments < 3 {
        match stream.next_item().await {
            Some(Item::Comment) => comments += 1,
            Some(Item::Message(message)) => panic!("an idle stream sent {message:?}"),
            None => panic!("the stream ended"),
        }
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_stream_end_and_is_not_held_up_by_them() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "", None).await;
    // The stream is live: it carries an event.
    let id = id_str(&app.submit(noop()).await);
    stream.until_job_event(&id, "job.succeeded").await;

    let began = Instant::now();
    let shutdown = tokio::spawn(app.shutdown());
    let end = stream.next().await;
    assert_eq!(end.event, "stream.end", "{end:?}");
    assert_eq!(end.id, None);
    assert_eq!(end.json(), json!({"reason": "shutting_down"}));
    assert!(
        stream.next_or_end().await.is_none(),
        "the body ends after stream.end"
    );
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finished")
        .expect("shutdown did not panic");
    // Shutdown waits up to 5 s for open requests: a stream that held it up
    // would take at least that long.
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_job_that_finishes_while_the_service_drains_is_on_the_stream_before_its_end() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, "", None).await;
    let id = id_str(&app.submit(sleep_ms(700)).await);
    stream.until_job_event(&id, "job.started").await;

    let shutdown = tokio::spawn(app.shutdown());
    let mut seen = Vec::new();
    loop {
        let message = stream.next().await;
        let end = message.event == "stream.end";
        seen.push(message);
        if end {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(kinds, ["job.succeeded", "stream.end"], "{seen:#?}");
    assert_eq!(seen[0].job_id().as_deref(), Some(id.as_str()));
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finished")
        .expect("shutdown did not panic");
}

#[tokio::test]
async fn the_stream_is_event_stream_and_never_compressed() {
    let app = spawn_app().await;
    let response = tokio::time::timeout(
        WAIT,
        app.client
            .get(app.url("/v1/events"))
            .header("accept-encoding", "gzip")
            .send(),
    )
    .await
    .expect("the stream opened in time")
    .expect("request sent");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(
        headers.get("content-encoding").is_none(),
        "compressed: {headers:?}"
    );
    assert_eq!(headers["cache-control"], "no-cache");
    // Events come through as they happen, readable as plain text.
    let mut stream = EventStream::new(response);
    let id = id_str(&app.submit(noop()).await);
    let first = stream.next().await;
    assert_eq!(first.event, "job.queued");
    assert_eq!(first.job_id().as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn a_stream_cannot_be_opened_once_shutdown_began() {
    // A long job keeps the app draining (and answering) for a while.
    let app = spawn_app().await;
    let id = id_str(
        &app.submit(json!({"kind": "sleep", "payload": {"ms": 2000}}))
            .await,
    );
    app.wait_for_status(&id, "running", WAIT).await;
    let (client, url) = (app.client.clone(), app.url("/v1/events"));
    let shutdown = tokio::spawn(app.shutdown());
    let deadline = Instant::now() + WAIT;
    loop {
        let response = tokio::time::timeout(WAIT, client.get(&url).send())
            .await
            .expect("answered in time")
            .expect("request sent");
        if response.status() == 503 {
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "shutting_down", "{problem}");
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(Instant::now() < deadline, "streams were still opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finished")
        .unwrap();
}
