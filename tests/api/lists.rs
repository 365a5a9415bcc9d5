//! Lists beside point reads: however many heavy lists are waiting, reading
//! one job and `/readyz` are answered without waiting for them, and lists
//! past the budget are refused as `busy`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{PgSchema, spawn_app, spawn_app_with};

/// Jobs stored, all with the label the lists walk.
const JOBS: usize = 20_000;
/// Lists sent at once.
const LISTS: usize = 32;

/// A list every stored job's label matches and no job's kind does: each
/// reads every job, with the index of labels as without it.
const HEAVY_LIST: &str = "/v1/jobs?metadata.env=prod&kind=none";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_job_and_readiness_do_not_wait_behind_heavy_lists() {
    let app = spawn_app().await;
    app.configure_queue("lists", json!({"paused": true, "capacity": 100_000}))
        .await;
    let job = json!({"kind": "noop", "queue": "lists", "metadata": {"env": "prod"}});
    for _ in 0..JOBS / 1_000 {
        let response = app
            .post("/v1/batches", &json!({"jobs": vec![job.clone(); 1_000]}))
            .await;
        assert_eq!(response.status(), 202);
    }
    let probe = app.submit(json!({"kind": "noop", "queue": "lists"})).await;
    let probe_url = format!("/v1/jobs/{}", probe["id"].as_str().unwrap());

    let answered = Arc::new(AtomicUsize::new(0));
    let lists: Vec<_> = (0..LISTS)
        .map(|_| {
            let (client, url, answered) =
                (app.client.clone(), app.url(HEAVY_LIST), answered.clone());
            tokio::spawn(async move {
                let response = client.get(url).send().await.expect("list sent");
                let status = response.status();
                let body: Value = response.json().await.expect("a JSON body");
                answered.fetch_add(1, Ordering::SeqCst);
                (status, body)
            })
        })
        .collect();
    // Once one list has answered, the others sent with it are running or
    // waiting: the reads below come after all of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no list answered within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = answered.load(Ordering::SeqCst);
    let read = app.get(&probe_url).await;
    assert_eq!(read.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let meanwhile = answered.load(Ordering::SeqCst) - before;
    // Waiting behind the lists for a connection, the reads would be
    // answered only after most of them: the read pool serves waiters in
    // order, a few lists at a time.
    assert!(
        meanwhile < LISTS / 4,
        "{meanwhile} of the {} waiting lists were answered before a job read and /readyz",
        LISTS - before
    );

    for list in lists {
        let (status, body) = list.await.expect("list task");
        match status.as_u16() {
            200 => assert_eq!(body["items"], json!([]), "{body}"),
            503 => assert_eq!(body["code"], "busy", "{body}"),
            other => panic!("a list answered {other}: {body}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_past_the_budget_are_refused_as_busy_while_job_reads_and_readiness_answer() {
    use sqlx::{Connection, PgConnection};

    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let app = spawn_app_with(|config| config.database_url = schema.url.clone()).await;
    let job = app
        .submit(json!({"kind": "noop", "metadata": {"team": "a"}}))
        .await;
    let job_url = format!("/v1/jobs/{}", job["id"].as_str().unwrap());

    // Lists of a label wait for this lock: the lists that enter the budget
    // cannot end until it is released.
    let mut blocker = PgConnection::connect(&schema.url).await.unwrap();
    let mut locked = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_metadata IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locked)
        .await
        .unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let lists: Vec<_> = (0..LISTS)
        .map(|_| {
            let (client, url, answered) = (
                app.client.clone(),
                app.url("/v1/jobs?metadata.team=a"),
                answered.clone(),
            );
            tokio::spawn(async move {
                let response = client.get(url).send().await.expect("list sent");
                answered.fetch_add(1, Ordering::SeqCst);
                response
            })
        })
        .collect();

    // The lists of the budget are waiting for the lock, the others for the
    // budget: a job and readiness are read all the same.
    let mut observer = PgConnection::connect(&schema.url).await.unwrap();
    let waiting_for_the_lock = async |observer: &mut PgConnection| -> usize {
        let waiting: i64 = sqlx::query_scalar(
            // Lists only: the prune loop's DELETE (its trigger reaches
            // job_metadata) may wait on the lock too.
            "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid \
             WHERE l.relation = 'job_metadata'::regclass AND NOT l.granted \
             AND a.query ILIKE 'SELECT%'",
        )
        .fetch_one(observer)
        .await
        .unwrap();
        waiting as usize
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting_for_the_lock(&mut observer).await == 0 {
        assert!(Instant::now() < deadline, "no list reached the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..10 {
        assert_eq!(app.get(&job_url).await.status(), 200);
        assert_eq!(app.get("/readyz").await.status(), 200);
    }

    // Those waiting for the budget are refused once its wait has passed.
    let in_budget = loop {
        let blocked = waiting_for_the_lock(&mut observer).await;
        if blocked + answered.load(Ordering::SeqCst) == LISTS {
            break blocked;
        }
        assert!(
            Instant::now() < deadline,
            "{blocked} lists wait for the lock, {} answered",
            answered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        in_budget, 4,
        "a quarter of the pool's 16 connections run lists"
    );
    locked.rollback().await.unwrap();

    let (mut found, mut busy) = (0, 0);
    for list in lists {
        let response = list.await.expect("list task");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let content_type = response.headers().get("content-type").cloned();
        let body: Value = response.json().await.expect("a JSON body");
        match status {
            200 => {
                assert_eq!(body["items"][0]["id"], job["id"], "{body}");
                found += 1;
            }
            503 => {
                assert_eq!(body["code"], "busy", "{body}");
                assert_eq!(retry_after.unwrap(), "1");
                assert_eq!(content_type.unwrap(), "application/problem+json");
                busy += 1;
            }
            other => panic!("a list answered {other}: {body}"),
        }
    }
    assert_eq!((found, busy), (in_budget, LISTS - in_budget));
}
