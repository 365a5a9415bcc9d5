//! `/v1/schedules` through HTTP: settings, history, triggers, validation, catch-up after downtime, overlap, and one job per fire time across three instances.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::helpers::{SOON, TestApp, millis, spawn_app, spawn_app_with};

async fn body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn put(app: &TestApp, id: &str, spec: &Value) -> (u16, Value) {
    body(app.put(&format!("/v1/schedules/{id}"), spec).await).await
}

async fn get(app: &TestApp, path: &str) -> Value {
    let (status, value) = body(app.get(path).await).await;
    assert_eq!(status, 200, "GET {path}: {value}");
    value
}

/// A schedule's whole history, oldest first.
async fn fires(app: &TestApp, id: &str) -> Vec<Value> {
    let page = get(app, &format!("/v1/schedules/{id}/fires?limit=1000")).await;
    let mut items = page["items"].as_array().cloned().unwrap_or_default();
    items.reverse();
    items
}

fn outcomes(fires: &[Value]) -> Vec<String> {
    fires
        .iter()
        .map(|fire| fire["outcome"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls until `done` holds for the schedule's history, or panics after `within`.
async fn until_fires(
    app: &TestApp,
    id: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let history = fires(app, id).await;
        if done(&history) {
            return history;
        }
        assert!(
            Instant::now() < deadline,
            "the history of {id} never got there: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["pointer"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_schedule_is_created_read_listed_triggered_paused_and_deleted() {
    let app = spawn_app().await;
    let spec =
        json!({"cron": "0 9 * * MON-FRI", "timezone": "Europe/Berlin", "job": {"kind": "noop"}});
    let (status, created) = put(&app, "weekday-mornings", &spec).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["overlap"], "allow");
    assert_eq!(created["catch_up"], "skip");
    assert_eq!(created["catch_up_window_ms"], 3_600_000);
    assert_eq!(created["tenant"], "default");
    let next = created["next_fire_times"].as_array().expect("fire times");
    assert_eq!(next.len(), 5);
    assert_eq!(next[0], created["next_fire_at"]);
    // 09:00 in Berlin is 07:00 or 08:00 UTC.
    for at in next {
        let hour = at.as_str().unwrap_or_default()[11..13].to_owned();
        assert!(hour == "07" || hour == "08", "{at}");
    }

    let one = get(&app, "/v1/schedules/weekday-mornings").await;
    assert_eq!(one, created);
    let list = get(&app, "/v1/schedules").await;
    assert_eq!(list["items"], json!([created]));

    let (status, job) = body(
        app.post("/v1/schedules/weekday-mornings/trigger", &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert!(
        job["key"]
            .as_str()
            .unwrap_or_default()
            .starts_with("schedule:weekday-mornings:")
    );
    app.wait_for_status(job["id"].as_str().unwrap_or_default(), "succeeded", SOON)
        .await;
    let history = fires(&app, "weekday-mornings").await;
    assert_eq!(outcomes(&history), ["triggered"]);
    assert_eq!(history[0]["job_id"], job["id"]);
    // A trigger leaves the cadence as it was.
    let after = get(&app, "/v1/schedules/weekday-mornings").await;
    assert_eq!(after["next_fire_at"], created["next_fire_at"]);
    assert_eq!(after["last_job_id"], job["id"]);

    let mut paused = spec.clone();
    paused["paused"] = json!(true);
    let (status, stopped) = put(&app, "weekday-mornings", &paused).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["next_fire_at"], Value::Null);
    assert_eq!(stopped["next_fire_times"], json!([]));
    let (status, resumed) = put(&app, "weekday-mornings", &spec).await;
    assert_eq!(status, 200);
    assert_eq!(resumed["next_fire_at"], created["next_fire_at"]);

    let deleted = app
        .client
        .delete(app.url("/v1/schedules/weekday-mornings"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(deleted.status(), 204);
    let (status, problem) = body(app.get("/v1/schedules/weekday-mornings").await).await;
    assert_eq!(status, 404);
    assert_eq!(problem["code"], "not_found");
    // The job it made stays.
    app.job(job["id"].as_str().unwrap_or_default()).await;
}

#[tokio::test]
async fn the_same_put_twice_changes_nothing() {
    let app = spawn_app().await;
    let spec = json!({"every_ms": 3_600_000, "job": {"kind": "noop"}, "catch_up": "all"});
    let (status, first) = put(&app, "hourly", &spec).await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, second) = put(&app, "hourly", &spec).await;
    assert_eq!(status, 200);
    assert_eq!(second, first, "no new fire time, the same updated_at");
    assert!(fires(&app, "hourly").await.is_empty());
    // A change is one.
    let mut changed = spec.clone();
    changed["overlap"] = json!("skip");
    let (status, third) = put(&app, "hourly", &changed).await;
    assert_eq!(status, 200);
    assert_ne!(third["updated_at"], first["updated_at"]);
}

#[tokio::test]
async fn invalid_schedules_are_refused_with_pointers_and_never_a_500() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"cron": "61 * * * *", "job": {"kind": "noop"}}),
            "/cron",
        ),
        (json!({"cron": "* * *", "job": {"kind": "noop"}}), "/cron"),
        (json!({"job": {"kind": "noop"}}), "/cron"),
        (
            json!({"cron": "* * * * *", "every_ms": 1000, "job": {"kind": "noop"}}),
            "/every_ms",
        ),
        (
            json!({"every_ms": 999, "job": {"kind": "noop"}}),
            "/every_ms",
        ),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Olympus", "job": {"kind": "noop"}}),
            "/timezone",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "noop", "queue": "nowhere"}}),
            "/job/queue",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "nope"}}),
            "/job/kind",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "sleep", "payload": {"ms": "soon"}}}),
            "/job/payload/ms",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "noop", "key": "mine"}}),
            "/job/key",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "noop", "priority": 500}}),
            "/job/priority",
        ),
        (
            json!({"cron": "* * * * *", "catch_up_window_ms": -1, "job": {"kind": "noop"}}),
            "/catch_up_window_ms",
        ),
        (json!({"cron": "* * * * *"}), ""),
        (
            json!({"cron": "* * * * *", "job": {"kind": "noop"}, "colour": "blue"}),
            "",
        ),
    ];
    for (spec, pointer) in cases {
        let (status, problem) = put(&app, "bad", &spec).await;
        assert_eq!(status, 422, "{spec} answered {problem}");
        assert_eq!(problem["code"], "validation_failed", "{problem}");
        if !pointer.is_empty() {
            assert!(
                pointers(&problem).contains(&pointer.to_owned()),
                "{spec}: {problem}"
            );
        }
    }
    let (status, problem) = put(
        &app,
        "bad id!",
        &json!({"cron": "* * * * *", "job": {"kind": "noop"}}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = body(app.get("/v1/schedules/bad").await).await;
    assert_eq!(status, 404, "nothing was stored");
}

#[tokio::test]
async fn a_per_second_schedule_makes_one_job_a_second_with_its_fire_time_in_the_key() {
    let app = spawn_app().await;
    let spec = json!({"cron": "* * * * * *", "job": {"kind": "noop"}});
    assert_eq!(put(&app, "ticking", &spec).await.0, 201);
    let history = until_fires(&app, "ticking", SOON, |fires| fires.len() >= 3).await;
    for pair in history.windows(2) {
        assert_eq!(
            millis(&pair[1]["fire_at"]) - millis(&pair[0]["fire_at"]),
            1_000
        );
    }
    for fire in &history {
        assert_eq!(fire["outcome"], "fired", "{fire}");
        let job = app.job(fire["job_id"].as_str().unwrap_or_default()).await;
        let key = format!(
            "schedule:ticking:{}",
            fire["fire_at"].as_str().unwrap_or_default()
        );
        assert_eq!(job["key"], json!(key));
    }
}

#[tokio::test]
async fn overlap_skip_records_a_skipped_fire_while_the_previous_run_still_runs() {
    let app = spawn_app().await;
    let spec = json!({
        "every_ms": 1_000,
        "overlap": "skip",
        "job": {"kind": "sleep", "payload": {"ms": 2_500}},
    });
    assert_eq!(put(&app, "slow", &spec).await.0, 201);
    let history = until_fires(&app, "slow", SOON, |fires| {
        fires.iter().filter(|f| f["outcome"] == "fired").count() >= 2
    })
    .await;
    let skipped: Vec<&Value> = history
        .iter()
        .filter(|f| f["outcome"] == "skipped")
        .collect();
    assert!(!skipped.is_empty(), "{history:?}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is still")
    );
    assert_eq!(skipped[0]["job_id"], Value::Null);
}

/// Waits for a moment from 7 s to 40 s into a minute: a stop and restart
/// made then stay inside that minute, and the fire time of the minute just
/// past is more than `LATE_AFTER_MS` old (missed, not on time).
async fn early_in_a_minute() {
    let into_minute = spool::domain::Timestamp::now().as_millis() % 60_000;
    if !(7_000..=40_000).contains(&into_minute) {
        let wait = (67_000 - into_minute) % 60_000;
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

#[tokio::test]
async fn after_ten_minutes_stopped_skip_makes_no_job_latest_one_and_all_one_per_missed_fire() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("spool.db").display());
    early_in_a_minute().await;
    let app = spawn_app_with(|config| config.database_url = url.clone()).await;
    for policy in ["skip", "latest", "all"] {
        let spec = json!({"cron": "* * * * *", "catch_up": policy, "job": {"kind": "noop"}});
        assert_eq!(put(&app, policy, &spec).await.0, 201);
    }
    app.shutdown().await;
    // Downtime: each schedule's next fire time ten minutes back, as if
    // every instance had been stopped since then.
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("the database");
        sqlx::query("UPDATE schedules SET next_fire_at = next_fire_at - 600000")
            .execute(&mut db)
            .await
            .expect("moved back");
        db.close().await.expect("closed");
    }
    let app = spawn_app_with(|config| config.database_url = url.clone()).await;
    let mut made = Vec::new();
    for policy in ["skip", "latest", "all"] {
        let history = until_fires(&app, policy, SOON, |fires| fires.len() >= 10).await;
        assert_eq!(history.len(), 10, "{history:?}");
        assert!(
            history
                .iter()
                .all(|f| f["outcome"] == "missed" || f["outcome"] == "fired"),
            "{history:?}"
        );
        made.push(history.iter().filter(|f| f["outcome"] == "fired").count());
    }
    assert_eq!(made, [0, 1, 10]);
    let latest = fires(&app, "latest").await;
    assert_eq!(latest[9]["outcome"], "fired", "the most recent one");
    // Each goes on from its next fire time after now.
    let skip = get(&app, "/v1/schedules/skip").await;
    assert!(millis(&skip["next_fire_at"]) > spool::domain::Timestamp::now().as_millis() - 5_000);
}

/// Every job key of the schedule `id`, listed through instance 0.
async fn keys_of(cluster: &Cluster, id: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/jobs?limit=1000&cursor={cursor}"),
            None => "/v1/jobs?limit=1000".to_owned(),
        };
        let (status, page) = cluster.get(0, &path).await;
        assert_eq!(status, 200, "{page}");
        for job in page["items"].as_array().cloned().unwrap_or_default() {
            let key = job["key"].as_str().unwrap_or_default().to_owned();
            if key.starts_with(&format!("schedule:{id}:")) {
                keys.push(key);
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return keys,
        }
    }
}

/// How long the three instances run a per-second schedule: a minute, sixty
/// fire times, each raced by three firing loops.
const CLUSTER_RUN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn three_instances_on_one_database_make_exactly_one_job_per_fire_time() {
    // Real processes: each its own firing loop, connections and clock.
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let spec = json!({"cron": "* * * * * *", "job": {"kind": "noop"}});
    let (status, created) = cluster.put(0, "/v1/schedules/every-second", &spec).await;
    assert_eq!(status, 201, "{created}");
    tokio::time::sleep(CLUSTER_RUN).await;
    let mut paused = spec.clone();
    paused["paused"] = json!(true);
    let (status, stopped) = cluster.put(1, "/v1/schedules/every-second", &paused).await;
    assert_eq!(status, 200, "{stopped}");
    // A pass that read the schedule before the pause ends as stale.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let keys = keys_of(&cluster, "every-second").await;
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a fire time made two jobs");
    assert!(
        keys.len() >= 50,
        "only {} fire times in {CLUSTER_RUN:?}",
        keys.len()
    );
    // One job for every second from the first fire time to the last.
    let instants: Vec<i64> = unique
        .iter()
        .map(|key| millis(&json!(key.trim_start_matches("schedule:every-second:"))))
        .collect();
    for pair in instants.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "a fire time was lost");
    }
    let (status, page) = cluster
        .get(2, "/v1/schedules/every-second/fires?limit=1000")
        .await;
    assert_eq!(status, 200, "{page}");
    let history = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), keys.len(), "one history entry per fire time");
    assert!(
        history.iter().all(|fire| fire["outcome"] == "fired"),
        "{history:?}"
    );
}
