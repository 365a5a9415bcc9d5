//! PostgreSQL for the suite: a schema per test, and the cases where the
//! backend's concurrency matters: two stores (two pools, as two instances
//! would have) on one schema, racing.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spool::domain::{JobId, JobState, TENANT_DEFAULT};
use spool::store::{
    AttemptOutcome, CompletionResult, IdempotencyKey, JobStore, PgStore, StoreError, Submission,
    SubmitOutcome, SubmitRejection,
};
use sqlx::{Connection, Executor, PgConnection};

use crate::conformance::{OWNER, all_jobs, at, completion, job, state_of, submit_one, with_queues};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Connections per test store: enough for the concurrent cases, few enough
/// for two test threads with two stores each.
const POOL: u32 = 4;

/// A schema of its own for one test, dropped when the test passed (kept for
/// a look when it failed).
pub struct Schema {
    name: String,
    base: String,
}

impl Schema {
    /// `None` (after a loud line on stderr) when PostgreSQL cannot be
    /// reached and this is not CI; under `CI=true` that is a failure.
    pub async fn create() -> Option<Self> {
        let base = std::env::var("SPOOL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let connected = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&base))
            .await
            .map_err(|_| "timed out after 10 s".to_owned())
            .and_then(|connected| connected.map_err(|e| e.to_string()));
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                    panic!(
                        "PostgreSQL unreachable at {base}: {error}. CI runs the PostgreSQL \
                         conformance cases: start PostgreSQL or set SPOOL_TEST_DATABASE_URL"
                    );
                }
                // Straight to stderr: the test harness captures `eprintln!`
                // of passing tests, and a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED (PostgreSQL unreachable at {base}): {error}"
                );
                return None;
            }
        };
        let name = format!("spool_test_{}", uuid::Uuid::now_v7().simple());
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .await
            .expect("a test schema is created");
        conn.close().await.ok();
        Some(Self { name, base })
    }

    /// The database URL with this schema first on the search path, so that
    /// migrations and every table land in it.
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.base).expect("a database URL");
        url.query_pairs_mut()
            .append_pair("options", &format!("-c search_path={}", self.name));
        url.to_string()
    }

    /// A store on this schema: another instance, when called again.
    pub async fn open(&self) -> PgStore {
        PgStore::open_with_pool_size(&self.url(), POOL)
            .await
            .expect("the store opens")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept schema {} of a failed test", self.name);
            return;
        }
        // Drop runs inside the test's runtime, which cannot block on a
        // future: a thread of its own with a runtime of its own does.
        let (name, base) = (self.name.clone(), self.base.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&base).await.ok()?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "SET lock_timeout = '10s'; DROP SCHEMA {name} CASCADE"
                )))
                .await
                .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test schema {}", self.name);
        }
    }
}

/// Two stores on one fresh schema: two instances sharing a database.
async fn two_instances() -> Option<(Arc<dyn JobStore>, Arc<dyn JobStore>, Schema)> {
    let schema = Schema::create().await?;
    let first: Arc<dyn JobStore> = Arc::new(schema.open().await);
    let second: Arc<dyn JobStore> = Arc::new(schema.open().await);
    Some((first, second, schema))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_claiming_at_once_never_take_the_same_job() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    with_queues(&a, &[("default", 1_000)]).await;
    for n in 0..120 {
        submit_one(&a, job("default", json!({}), at(n))).await;
    }
    let claims = (0..24).map(|n| {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let owner = format!("instance-{}", n % 2);
        async move {
            store
                .claim("default", 7, &owner, at(30_000), at(200))
                .await
                .expect("claimed")
        }
    });
    let claimed: Vec<_> = futures::future::join_all(claims)
        .await
        .into_iter()
        .flatten()
        .collect();
    let distinct: HashSet<JobId> = claimed.iter().map(|job| job.id).collect();
    assert_eq!(distinct.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(claimed.len(), 120, "every job is claimed once");
    let queue = a.get_queue("default").await.unwrap().unwrap();
    assert_eq!((queue.counts.queued, queue.counts.running), (0, 120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_from_two_instances_never_exceed_capacity() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    with_queues(&a, &[("small", 25), ("other", 25)]).await;
    // Single jobs to `small`, and two-queue submissions naming the queues in
    // both orders (their locks are taken sorted, so they cannot deadlock).
    let submissions = (0..60).map(|n| {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let jobs = match n % 3 {
            0 => vec![job("small", json!({}), at(n))],
            1 => vec![
                job("small", json!({}), at(n)),
                job("other", json!({}), at(n)),
            ],
            _ => vec![
                job("other", json!({}), at(n)),
                job("small", json!({}), at(n)),
            ],
        };
        async move {
            let outcome = store
                .submit(Submission {
                    tenant: TENANT_DEFAULT.into(),
                    jobs,
                    batch: None,
                    idempotency: None,
                    redactor: Default::default(),
                    limit_pending: false,
                })
                .await
                .expect("storage works");
            match outcome {
                Ok(SubmitOutcome::Created { jobs, .. }) => jobs.len(),
                Err(SubmitRejection::QueueFull { .. }) => 0,
                other => panic!("{other:?}"),
            }
        }
    });
    futures::future::join_all(submissions).await;
    let jobs = all_jobs(&a).await;
    let in_queue = |name: &str| jobs.iter().filter(|job| job.queue == name).count() as u64;
    assert_eq!(in_queue("small"), 25, "exactly the capacity is admitted");
    assert!(in_queue("other") <= 25);
    for name in ["small", "other"] {
        let queue = b.get_queue(name).await.unwrap().unwrap();
        assert_eq!(queue.counts.queued, in_queue(name), "counts match the rows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_jobs_racing_for_the_last_places_from_two_instances_leave_no_refused_job_behind() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    with_queues(&a, &[("small", 100)]).await;
    // 60 single jobs through each instance at once: each instance admits
    // them in groups, each of which fits on its own, so groups of both
    // glance at an (almost) empty queue, insert everything and only then
    // find, under the queue's lock, that the other took places; what no
    // longer fits must be taken out again.
    let submissions = (0..120).map(|n| {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let outcome = store
                .submit(Submission {
                    tenant: TENANT_DEFAULT.into(),
                    jobs: vec![job("small", json!({}), at(n))],
                    batch: None,
                    idempotency: None,
                    redactor: Default::default(),
                    limit_pending: false,
                })
                .await
                .expect("storage works");
            match outcome {
                Ok(SubmitOutcome::Created { jobs, .. }) => Some(jobs[0].id),
                Err(SubmitRejection::QueueFull { .. }) => None,
                other => panic!("{other:?}"),
            }
        }
    });
    let admitted: HashSet<JobId> = futures::future::join_all(submissions)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(admitted.len(), 100, "exactly the capacity is admitted");
    let queue = b.get_queue("small").await.unwrap().unwrap();
    assert_eq!(queue.counts.queued, 100, "counted as admitted");
    // Every queued row, whatever the counts say: a claim takes them all.
    let claimed = b
        .claim("small", 1_000, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    let stored: HashSet<JobId> = claimed.iter().map(|job| job.id).collect();
    assert_eq!(stored, admitted, "the stored jobs are the admitted ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_submitted_from_two_instances_at_once_has_one_holder_and_one_conflict() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    with_queues(&a, &[("default", 1_000), ("other", 1_000)]).await;
    for round in 0..16 {
        let key = format!("k-{round}");
        let on_conflict = if round % 2 == 0 { "reject" } else { "existing" };
        let spec = json!({"key": key, "on_conflict": on_conflict});
        // Keys span queues: in half the rounds no queue lock orders the two
        // submissions, and the unique index decides.
        let other = if round % 4 < 2 { "default" } else { "other" };
        let (first, second) = futures::join!(
            crate::conformance::submit(&a, vec![job("default", spec.clone(), at(round))]),
            crate::conformance::submit(&b, vec![job(other, spec.clone(), at(round))]),
        );
        let holders: Vec<JobId> = [&first, &second]
            .into_iter()
            .filter_map(|outcome| match outcome {
                Ok(SubmitOutcome::Created { jobs, .. }) => Some(jobs[0].id),
                _ => None,
            })
            .collect();
        assert_eq!(holders.len(), 1, "one holder: {first:?} / {second:?}");
        let loser = if matches!(first, Ok(SubmitOutcome::Created { .. })) {
            second
        } else {
            first
        };
        match loser {
            Err(SubmitRejection::KeyConflict { holder, .. }) => assert_eq!(holder, holders[0]),
            Ok(SubmitOutcome::Existing(job)) => assert_eq!(job.id, holders[0]),
            other => panic!("the second submission got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_idempotent_submissions_from_two_instances_replay_the_first() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    with_queues(&a, &[("default", 1_000), ("other", 1_000)]).await;
    for round in 0..15 {
        // Different queues in odd rounds: no queue lock orders them, only
        // the idempotency key's primary key.
        let queues = if round % 2 == 0 {
            ("default", "default")
        } else {
            ("default", "other")
        };
        let submission = |queue: &str| Submission {
            tenant: TENANT_DEFAULT.into(),
            jobs: vec![job(queue, json!({}), at(round))],
            batch: None,
            idempotency: Some(IdempotencyKey {
                key: format!("request-{round}"),
                request_hash: "same-body".into(),
            }),
            redactor: Default::default(),
            limit_pending: false,
        };
        let (first, second) = futures::join!(
            a.submit(submission(queues.0)),
            b.submit(submission(queues.1))
        );
        let outcomes = [
            first.expect("storage works"),
            second.expect("storage works"),
        ];
        let created: Vec<JobId> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Ok(SubmitOutcome::Created { jobs, .. }) => Some(jobs[0].id),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "one is stored: {outcomes:?}");
        let replayed = outcomes.iter().find_map(|outcome| match outcome {
            Ok(SubmitOutcome::Replayed(response)) => Some(response.body["id"].clone()),
            _ => None,
        });
        assert_eq!(replayed, Some(json!(created[0].to_string())));
    }
    assert_eq!(all_jobs(&a).await.len(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_ending_while_its_dependent_is_submitted_never_strands_the_dependent() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    with_queues(&a, &[("default", 1_000)]).await;
    for round in 0..15 {
        let dependency = submit_one(&a, job("default", json!({}), at(round))).await;
        let claimed = a
            .claim("default", 1, OWNER, at(30_000), at(round))
            .await
            .unwrap();
        assert_eq!(claimed[0].id, dependency);
        let outcome = if round % 2 == 0 {
            AttemptOutcome::Succeeded(json!(round))
        } else {
            AttemptOutcome::Failed {
                error: crate::conformance::error("boom", 1, at(round)),
                retry_at: None,
            }
        };
        let dependent = job(
            "default",
            json!({"depends_on": [dependency.to_string()]}),
            at(round),
        );
        let dependent_id = dependent.id;
        let (completed, submitted) = futures::join!(
            a.complete(completion(dependency, 1, OWNER, outcome)),
            crate::conformance::submit(&b, vec![dependent]),
        );
        assert!(matches!(
            completed.unwrap(),
            CompletionResult::Applied { .. }
        ));
        assert!(submitted.is_ok());
        let expected = if round % 2 == 0 {
            JobState::Queued
        } else {
            JobState::Cancelled
        };
        assert_eq!(
            state_of(&a, dependent_id).await,
            expected,
            "round {round}: the dependent follows its dependency's end"
        );
        // Leave the queue empty for the next round's claim.
        if expected == JobState::Queued {
            a.cancel_job(TENANT_DEFAULT, dependent_id, at(round))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_unavailable() {
    // Nothing listens on port 1.
    let opened = PgStore::open("postgres://postgres@127.0.0.1:1/test").await;
    assert!(
        matches!(opened, Err(StoreError::Unavailable(_))),
        "{:?}",
        opened.err()
    );
}

#[tokio::test]
async fn a_closed_pool_is_reported_as_unavailable() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.open().await;
    store.close().await;
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.claim("default", 1, OWNER, at(1), at(0)).await,
        Err(StoreError::Unavailable(_))
    ));
}
