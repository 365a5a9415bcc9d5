//! Secret payload values (`http` headers such as Authorization, `exec`
//! arguments marked `secret_args`, a custom kind's own): used for the work,
//! shown as `***` in every read, list, replay, event, webhook and log line,
//! and masked wherever the job's output repeats them.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::any;
use serde_json::{Value, json};
use spool::app::AppBuilder;
use spool::config::Config;
use spool::kinds::{JobContext, JobFailure, JobKind, MASK};

use crate::events::EventStream;
use crate::helpers::{SOON, SpoolProcess, TestApp, job_ids, spawn_app_with, spawn_app_with_kinds};
use crate::webhooks::Receiver;

const AUTHORIZATION: &str = "Bearer sk-live-AUTH-7f3a9c";
const COOKIE: &str = "session=COOKIE-51d2e8";
const PROXY: &str = "Basic PROXY-aa01b2c3";
/// Of `X-Api-Key`, secret because the operator says so.
const API_KEY: &str = "KEY-c0ffee-9b41";
/// Of a header nobody marked secret: shown as sent.
const VISIBLE: &str = "trace-visible-1234";
const SECRETS: [&str; 4] = [AUTHORIZATION, COOKIE, PROXY, API_KEY];

/// Fails the test if `text` holds any of the secret values.
#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows `{secret}`: {text}");
    }
}

/// The headers of a shown `http` payload: secret ones masked, others kept.
#[track_caller]
fn assert_masked_headers(payload: &Value) {
    let headers = &payload["headers"];
    assert_eq!(headers["Authorization"], MASK, "{payload}");
    assert_eq!(headers["cookie"], MASK, "{payload}");
    assert_eq!(headers["Proxy-Authorization"], MASK, "{payload}");
    assert_eq!(headers["X-API-KEY"], MASK, "{payload}");
    assert_eq!(headers["x-trace"], VISIBLE, "{payload}");
}

/// A target recording the headers it gets and echoing the secret ones back,
/// in its body and in a header, as careless servers do.
#[derive(Clone, Default)]
struct Target {
    received: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Target {
    async fn start() -> (Target, String) {
        let target = Target::default();
        let seen = target.clone();
        let router = Router::new().fallback(any(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let value = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let body = format!(
                    "you sent authorization={} cookie={} key={}",
                    value("authorization"),
                    value("cookie"),
                    value("x-api-key")
                );
                let echo = value("x-api-key");
                seen.received.lock().unwrap().push(headers);
                ([("x-echo-key", echo)], body)
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (target, format!("http://{addr}/echo"))
    }

    fn received(&self) -> Vec<HeaderMap> {
        self.received.lock().unwrap().clone()
    }
}

fn configure(config: &mut Config) {
    config.outbound_allow = "127.0.0.1".parse().unwrap();
    config.http_secret_headers = "X-Api-Key".parse().unwrap();
}

fn http_job(url: &str) -> Value {
    json!({"kind": "http", "payload": {"method": "POST", "url": url, "headers": {
        "Authorization": AUTHORIZATION,
        "cookie": COOKIE,
        "Proxy-Authorization": PROXY,
        "X-API-KEY": API_KEY,
        "x-trace": VISIBLE,
    }, "body": {"order": 1}}})
}

async fn submit_keyed(app: &TestApp, spec: &Value, key: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/jobs"))
        .header("idempotency-key", key)
        .json(spec)
        .send()
        .await
        .unwrap()
}

/// The bodies of `column` in `table` of the SQLite file, as text.
fn stored(db: &Path, table: &str, column: &str) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut statement = conn
        .prepare(&format!("SELECT {column} FROM {table}"))
        .unwrap();
    statement
        .query_map([], |row| row.get::<_, Option<String>>(0))
        .unwrap()
        .map(|row| row.unwrap().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn secret_headers_reach_the_target_and_every_read_replay_event_and_webhook_masks_them() {
    let (target, url) = Target::start().await;
    let hooks = Receiver::start([]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secrets.db");
    let database_url = format!("sqlite://{}", db.display());
    let app = spawn_app_with(|config| {
        configure(config);
        config.database_url = database_url;
    })
    .await;
    let stream = app.client.get(app.url("/v1/events")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut events = EventStream::new(stream);

    let mut spec = http_job(&url);
    spec["callback_url"] = json!(hooks.url("/hook"));
    let response = submit_keyed(&app, &spec, "secret-1").await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    assert_no_secret("the 202 body", &created.to_string());
    assert_masked_headers(&created["payload"]);
    let id = created["id"].as_str().unwrap().to_owned();

    let replay = submit_keyed(&app, &spec, "secret-1").await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["id"], created["id"]);
    assert_no_secret("the replayed body", &replayed.to_string());
    assert_masked_headers(&replayed["payload"]);

    let job = app.wait_for_status(&id, "succeeded", SOON).await;
    // The call was made with the real values.
    let received = target.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["authorization"], AUTHORIZATION);
    assert_eq!(received[0]["cookie"], COOKIE);
    assert_eq!(received[0]["proxy-authorization"], PROXY);
    assert_eq!(received[0]["x-api-key"], API_KEY);
    assert_eq!(received[0]["x-trace"], VISIBLE);

    // The read: payload masked, and the target's echo of them too.
    assert_no_secret("GET /v1/jobs/{id}", &job.to_string());
    assert_masked_headers(&job["payload"]);
    assert_eq!(
        job["result"]["body"],
        "you sent authorization=*** cookie=*** key=***"
    );
    assert_eq!(job["result"]["headers"]["x-echo-key"], MASK);

    let list: Value = app.get("/v1/jobs?kind=http").await.json().await.unwrap();
    assert_no_secret("GET /v1/jobs", &list.to_string());
    assert_masked_headers(&list["items"][0]["payload"]);

    let seen = events.until_job_event(&id, "job.succeeded").await;
    for message in &seen {
        assert_no_secret("an event", &message.data);
    }
    let succeeded = seen.last().unwrap().json();
    assert_eq!(
        succeeded["job"]["result"]["body"],
        "you sent authorization=*** cookie=*** key=***"
    );

    let delivered = hooks.wait_for(1, SOON).await;
    let body = String::from_utf8(delivered[0].body.to_vec()).unwrap();
    assert_no_secret("the webhook body", &body);
    let hook = delivered[0].json();
    assert_eq!(hook["data"]["id"], id.as_str());
    assert_masked_headers(&hook["data"]["payload"]);

    // What is kept for replays and webhook retries holds no secret either;
    // the job's own row keeps them, for its next attempt.
    for body in stored(&db, "idempotency_keys", "body") {
        assert_no_secret("the remembered replay", &body);
    }
    let webhook_bodies = stored(&db, "webhooks", "body");
    assert!(!webhook_bodies.is_empty());
    for body in webhook_bodies {
        assert_no_secret("the kept webhook body", &body);
    }
    let payloads = stored(&db, "jobs", "payload");
    assert!(
        payloads
            .iter()
            .any(|payload| payload.contains(AUTHORIZATION))
    );
}

#[tokio::test]
async fn batch_pages_and_results_show_no_secret_header() {
    let (target, url) = Target::start().await;
    let app = spawn_app_with(configure).await;
    let response = app
        .post("/v1/batches", &json!({"jobs": [http_job(&url)]}))
        .await;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_no_secret("the batch's 202 body", &batch.to_string());
    let ids = job_ids(&batch);
    let job = app.wait_for_status(&ids[0], "succeeded", SOON).await;
    assert_masked_headers(&job["payload"]);
    assert_eq!(target.received()[0]["authorization"], AUTHORIZATION);

    let id = batch["id"].as_str().unwrap();
    let read: Value = app
        .get(&format!("/v1/batches/{id}?wait=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "succeeded", "{read}");
    assert_no_secret("GET /v1/batches/{id}", &read.to_string());
    let results: Value = app
        .get(&format!("/v1/batches/{id}/results"))
        .await
        .json()
        .await
        .unwrap();
    assert_no_secret("GET /v1/batches/{id}/results", &results.to_string());
    assert_eq!(
        results["items"][0]["result"]["body"], "you sent authorization=*** cookie=*** key=***",
        "{results}"
    );
}

#[tokio::test]
async fn a_refused_submission_does_not_quote_a_secret_header() {
    let app = spawn_app_with(configure).await;
    // Too long for the schema, whose message quotes the value.
    let long_secret = format!("Bearer {}", "S3cret".repeat(2_000));
    let response = app
        .post(
            "/v1/jobs",
            &json!({"kind": "http", "payload": {"method": "GET", "url": "http://127.0.0.1:9/",
                "headers": {"Authorization": long_secret}}}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let problem = response.text().await.unwrap();
    assert!(
        problem.contains("/payload/headers/Authorization"),
        "{problem}"
    );
    assert!(!problem.contains("S3cretS3cret"), "{problem}");
}

/// Reports its `token` in progress, its result and its error, as careless
/// handlers do; `redact` marks it secret.
struct Leaky;

#[async_trait]
impl JobKind for Leaky {
    fn name(&self) -> &str {
        "leaky"
    }
    fn description(&self) -> &str {
        "Repeats its token everywhere."
    }
    fn payload_schema(&self) -> Value {
        json!({"type": "object", "properties": {"token": {"type": "string"}, "fail": {"type": "boolean"}}})
    }
    fn redact(&self, payload: &mut Value) {
        if let Some(token) = payload.get_mut("token") {
            *token = json!(MASK);
        }
    }
    async fn run(&self, ctx: JobContext) -> Result<Value, JobFailure> {
        let token = ctx.payload["token"].as_str().unwrap_or_default().to_owned();
        ctx.progress(1, Some(2), Some(format!("logged in with {token}")))
            .await;
        if ctx.payload["fail"] == true {
            return Err(JobFailure::permanent(
                "refused",
                format!("the server refused {token}"),
            ));
        }
        Ok(json!({"token": token, "note": format!("used {token}"), "n": 1}))
    }
}

#[tokio::test]
async fn a_kinds_own_secret_is_masked_in_its_payload_result_error_and_progress() {
    const TOKEN: &str = "tok-LEAKY-4242";
    let app = spawn_app_with_kinds(
        |_| {},
        vec![Box::new(|builder: AppBuilder| builder.kind(Leaky))],
    )
    .await;
    let ok = app
        .submit(json!({"kind": "leaky", "payload": {"token": TOKEN}}))
        .await;
    assert_eq!(ok["payload"]["token"], MASK);
    let ok = app
        .wait_for_status(ok["id"].as_str().unwrap(), "succeeded", SOON)
        .await;
    assert!(!ok.to_string().contains(TOKEN), "{ok}");
    assert_eq!(
        ok["result"],
        json!({"token": "***", "note": "used ***", "n": 1})
    );
    assert_eq!(ok["progress"]["message"], "logged in with ***");

    let failed = app
        .submit(
            json!({"kind": "leaky", "payload": {"token": TOKEN, "fail": true}, "max_attempts": 1}),
        )
        .await;
    let failed = app
        .wait_for_status(failed["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert!(!failed.to_string().contains(TOKEN), "{failed}");
    assert_eq!(failed["error"]["message"], "the server refused ***");
}

#[tokio::test]
async fn the_log_of_a_run_with_secret_headers_holds_none_of_them() {
    let (target, url) = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("spool.log");
    let database_url = format!("sqlite://{}", dir.path().join("spool.db").display());
    let file = std::fs::File::create(&log).unwrap();
    let spool = SpoolProcess::start_configured(
        &database_url,
        &[
            ("SPOOL_OUTBOUND_ALLOW", "127.0.0.1"),
            ("SPOOL_HTTP_SECRET_HEADERS", "x-api-key"),
            // Everything Spool and its libraries log.
            ("RUST_LOG", "trace"),
        ],
        // The log goes to stdout; stderr too, for anything else printed.
        |command| {
            command
                .stdout(Stdio::from(file.try_clone().unwrap()))
                .stderr(Stdio::from(file));
        },
    );
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    // One that succeeds, one that fails (its target is gone).
    for url in [url.clone(), "http://127.0.0.1:9/".to_owned()] {
        let mut spec = http_job(&url);
        spec["max_attempts"] = json!(1);
        let response = client
            .post(spool.url("/v1/jobs"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let job: Value = client
            .get(spool.url(&format!("/v1/jobs/{id}?wait=10")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            job["status"] == "succeeded" || job["status"] == "failed",
            "{job}"
        );
        assert_no_secret("a job read", &job.to_string());
    }
    assert_eq!(target.received()[0]["authorization"], AUTHORIZATION);
    spool.sigterm();
    let mut spool = spool;
    let _ = spool.child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("TRACE") || text.contains("DEBUG"), "{text}");
    assert_no_secret("the log", &text);
}

#[tokio::test]
async fn a_secret_exec_argument_reaches_the_command_and_is_shown_masked() {
    const TOKEN: &str = "exec-TOKEN-8d7e6f";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(
        &file,
        r#"
[exec.login]
argv = ["sh", "-c", 'printf %s "$1" > "$2"; echo "token=$1 user=$3"; echo "stderr $1" >&2; exit "$4"', "sh", "{token}", "{out}", "{user}", "{code}"]
secret_args = ["token"]
"#,
    )
    .unwrap();
    let app = spawn_app_with(|config| config.config_file = Some(file)).await;
    let got = dir.path().join("got");
    let login = |code: u8| {
        json!({"kind": "exec", "max_attempts": 1, "payload": {"command": "login", "args": {
            "token": TOKEN, "out": got.to_str().unwrap(), "user": "ann", "code": code
        }}})
    };

    let created = app.submit(login(0)).await;
    assert_eq!(created["payload"]["args"]["token"], MASK);
    assert_eq!(created["payload"]["args"]["user"], "ann");
    let id = created["id"].as_str().unwrap();
    let job = app.wait_for_status(id, "succeeded", SOON).await;
    // The command got the real value.
    assert_eq!(std::fs::read_to_string(&got).unwrap(), TOKEN);
    assert!(!job.to_string().contains(TOKEN), "{job}");
    assert_eq!(job["payload"]["args"]["token"], MASK);
    assert_eq!(job["result"]["stdout"], "token=*** user=ann\n");
    assert_eq!(job["result"]["stderr"], "stderr ***\n");
    let list: Value = app.get("/v1/jobs?kind=exec").await.json().await.unwrap();
    assert!(!list.to_string().contains(TOKEN), "{list}");
    assert_eq!(list["items"][0]["payload"]["args"]["token"], MASK);

    let failed = app.submit(login(3)).await;
    let failed = app
        .wait_for_status(failed["id"].as_str().unwrap(), "failed", SOON)
        .await;
    assert!(!failed.to_string().contains(TOKEN), "{failed}");
    assert_eq!(
        failed["error"]["message"],
        "`login` exited with status 3; stderr: stderr ***"
    );

    // A refused submission's errors quote the payload: masked there too.
    let mut extra = login(0);
    extra["payload"]["args"]["extra"] = json!(1);
    let refused = app.post("/v1/jobs", &extra).await;
    assert_eq!(refused.status(), 422);
    let problem = refused.text().await.unwrap();
    assert!(!problem.contains(TOKEN), "{problem}");
}
