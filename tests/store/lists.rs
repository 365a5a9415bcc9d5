//! Lists (`GET /v1/jobs`): metadata filters through their index, with the
//! cursor and the other filters, on each backend; the index's backfill and
//! its upkeep when jobs are pruned.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{Job, JobId, JobState, TENANT_DEFAULT};
use spool::store::{AttemptOutcome, JobFilter, JobStore};

use crate::conformance::{OWNER, all_jobs, at, completion, error, job, submit_one, with_queues};

/// Every page of `filter` (pages of `page` jobs), stitched by the cursor.
pub(crate) async fn every_page(
    store: &Arc<dyn JobStore>,
    filter: &JobFilter,
    page: u32,
) -> Vec<Vec<JobId>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let request = JobFilter {
            before: cursor,
            limit: page,
            ..filter.clone()
        };
        let found: Vec<JobId> = store
            .list_jobs(TENANT_DEFAULT, &request)
            .await
            .expect("listed")
            .iter()
            .map(|job| job.id)
            .collect();
        cursor = found.last().copied();
        let last = found.len() < page as usize;
        pages.push(found);
        if last {
            return pages;
        }
        assert!(pages.len() < 100, "the cursor does not advance");
    }
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> JobFilter {
    JobFilter {
        metadata: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        limit: 50,
        ..JobFilter::default()
    }
}

pub async fn metadata_filters_list_newest_first_and_pages_stitch_by_cursor(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100), ("other", 100)]).await;
    // Job n: team a (even n) or b, env prod unless n is a multiple of 3,
    // every fourth in `other`, every fifth with no labels at all.
    let mut ids = Vec::new();
    for n in 0..16_i64 {
        let metadata = if n % 5 == 0 {
            json!({})
        } else {
            json!({
                "team": if n % 2 == 0 { "a" } else { "b" },
                "env": if n % 3 == 0 { "dev" } else { "prod" },
                "app.kubernetes.io/name": format!("svc-{}", n % 2),
            })
        };
        let queue = if n % 4 == 0 { "other" } else { "default" };
        let kind = if n % 2 == 0 { "noop" } else { "echo" };
        let spec = json!({"kind": kind, "metadata": metadata});
        ids.push(submit_one(&store, job(queue, spec, at(n))).await);
    }
    let expect = |keep: &dyn Fn(i64) -> bool| -> Vec<JobId> {
        (0..16_i64)
            .rev()
            .filter(|n| keep(*n))
            .map(|n| ids[n as usize])
            .collect()
    };
    let labelled = |n: i64| n % 5 != 0;

    let team_a = expect(&|n| labelled(n) && n % 2 == 0);
    assert_eq!(team_a, [ids[14], ids[12], ids[8], ids[6], ids[4], ids[2]]);
    assert_eq!(
        every_page(&store, &labels(&[("team", "a")]), 4).await,
        [team_a[..4].to_vec(), team_a[4..].to_vec()],
        "one label, newest first, two pages"
    );

    let team_a_prod = expect(&|n| labelled(n) && n % 2 == 0 && n % 3 != 0);
    assert_eq!(team_a_prod, [ids[14], ids[8], ids[4], ids[2]]);
    for page in [1, 2, 3, 4, 5] {
        let pages = every_page(&store, &labels(&[("team", "a"), ("env", "prod")]), page).await;
        assert_eq!(
            pages.concat(),
            team_a_prod,
            "two labels, pages of {page}: {pages:?}"
        );
    }
    // The same two labels the other way round: the same jobs.
    assert_eq!(
        every_page(&store, &labels(&[("env", "prod"), ("team", "a")]), 3)
            .await
            .concat(),
        team_a_prod
    );

    // Three labels, a key with dots and slashes, and the other filters.
    let three = labels(&[
        ("env", "prod"),
        ("app.kubernetes.io/name", "svc-1"),
        ("team", "b"),
    ]);
    assert_eq!(
        every_page(&store, &three, 2).await.concat(),
        expect(&|n| labelled(n) && n % 2 == 1 && n % 3 != 0)
    );
    let in_other = JobFilter {
        queue: Some("other".into()),
        ..labels(&[("team", "a")])
    };
    assert_eq!(
        every_page(&store, &in_other, 1).await.concat(),
        expect(&|n| labelled(n) && n % 2 == 0 && n % 4 == 0)
    );
    let echo_prod = JobFilter {
        kind: Some("echo".into()),
        ..labels(&[("env", "prod")])
    };
    assert_eq!(
        every_page(&store, &echo_prod, 2).await.concat(),
        expect(&|n| labelled(n) && n % 2 == 1 && n % 3 != 0)
    );

    // No match: a value of another key, a key with another key's value,
    // a label no job has, labels that never occur together.
    for no_match in [
        labels(&[("team", "prod")]),
        labels(&[("env", "a")]),
        labels(&[("owner", "x")]),
        labels(&[("team", "a"), ("app.kubernetes.io/name", "svc-1")]),
        JobFilter {
            kind: Some("echo".into()),
            ..labels(&[("team", "a")])
        },
    ] {
        assert_eq!(
            every_page(&store, &no_match, 3).await,
            [Vec::<JobId>::new()],
            "{:?}",
            no_match.metadata
        );
    }
    assert!(
        store
            .list_jobs("another-tenant", &labels(&[("team", "a")]))
            .await
            .unwrap()
            .is_empty(),
        "another tenant's jobs are not listed"
    );

    // Pruned jobs leave the lists; the rest keep their order.
    let claimed = store
        .claim("default", 100, OWNER, at(30_000), at(20))
        .await
        .unwrap();
    for claimed in claimed
        .iter()
        .filter(|job| job.id == ids[14] || job.id == ids[2])
    {
        store
            .complete(completion(
                claimed.id,
                1,
                OWNER,
                AttemptOutcome::Succeeded(json!(null)),
            ))
            .await
            .unwrap();
    }
    assert_eq!(store.prune(at(101), at(0)).await.unwrap(), 2);
    assert_eq!(
        every_page(&store, &labels(&[("team", "a"), ("env", "prod")]), 1)
            .await
            .concat(),
        [ids[8], ids[4]]
    );
}

pub async fn every_filter_lists_newest_first_across_states_and_pages_stitch_by_cursor(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100), ("other", 100)]).await;
    // A job that ends, then another with its key: two jobs share a key.
    let first_holder = submit_one(
        &store,
        job("default", json!({"kind": "echo", "key": "shared"}), at(0)),
    )
    .await;
    let claimed = store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, first_holder);
    store
        .complete(completion(
            first_holder,
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!(null)),
        ))
        .await
        .unwrap();
    submit_one(
        &store,
        job("other", json!({"kind": "echo", "key": "shared"}), at(2)),
    )
    .await;
    // Job n: queue default or other, kind noop or echo (in another
    // rhythm), a key of its own on every third, a delay on every fifth.
    let mut ids = Vec::new();
    for n in 0..30_i64 {
        let mut spec = json!({"kind": if n % 3 == 1 { "echo" } else { "noop" }});
        if n % 3 == 0 {
            spec["key"] = json!(format!("k{n}"));
        }
        if n % 5 == 4 {
            spec["delay_ms"] = json!(60_000);
        }
        let queue = if n % 2 == 0 { "default" } else { "other" };
        ids.push(submit_one(&store, job(queue, spec, at(10 + n))).await);
    }
    // Some run, some end each way, some are cancelled waiting.
    let running: Vec<JobId> = [
        store.claim("default", 6, OWNER, at(30_000), at(50)).await,
        store.claim("other", 6, OWNER, at(30_000), at(50)).await,
    ]
    .into_iter()
    .flat_map(|claimed| claimed.unwrap())
    .map(|job| job.id)
    .collect();
    assert_eq!(running.len(), 12);
    for (n, id) in running.iter().enumerate().filter(|(n, _)| n % 4 != 0) {
        let outcome = if n % 4 == 1 {
            AttemptOutcome::Succeeded(json!(n))
        } else {
            AttemptOutcome::Failed {
                error: error("boom", 1, at(60)),
                retry_at: None,
            }
        };
        store
            .complete(completion(*id, 1, OWNER, outcome))
            .await
            .unwrap();
    }
    store
        .cancel_job(TENANT_DEFAULT, ids[28], at(70))
        .await
        .unwrap();
    store
        .cancel_job(TENANT_DEFAULT, ids[29], at(70))
        .await
        .unwrap();

    let everything = all_jobs(&store).await;
    assert_eq!(everything.len(), 32);
    for state in JobState::ALL {
        assert!(
            everything.iter().any(|job| job.status == state),
            "no job is {state:?}"
        );
    }
    let by =
        |queue: Option<&str>, kind: Option<&str>, status: Option<JobState>, key: Option<&str>| {
            JobFilter {
                queue: queue.map(str::to_owned),
                kind: kind.map(str::to_owned),
                status,
                key: key.map(str::to_owned),
                limit: 50,
                ..JobFilter::default()
            }
        };
    let mut filters = vec![
        by(Some("default"), None, None, None),
        by(Some("other"), None, None, None),
        by(Some("none"), None, None, None),
        by(None, Some("echo"), None, None),
        by(None, Some("noop"), None, None),
        by(Some("other"), Some("echo"), None, None),
        by(None, None, None, Some("shared")),
        by(None, None, None, Some("k3")),
        by(Some("default"), None, None, Some("shared")),
    ];
    for state in JobState::ALL {
        filters.push(by(None, None, Some(state), None));
        filters.push(by(Some("other"), None, Some(state), None));
        filters.push(by(None, Some("noop"), Some(state), None));
    }
    let matches = |filter: &JobFilter, job: &Job| {
        filter.queue.as_ref().is_none_or(|q| *q == job.queue)
            && filter.kind.as_ref().is_none_or(|k| *k == job.kind)
            && filter.status.is_none_or(|s| s == job.status)
            && filter
                .key
                .as_ref()
                .is_none_or(|k| Some(k) == job.key.as_ref())
    };
    for filter in &filters {
        let expected: Vec<JobId> = everything
            .iter()
            .filter(|job| matches(filter, job))
            .map(|job| job.id)
            .collect();
        for page in [1, 2, 5, 50] {
            assert_eq!(
                every_page(&store, filter, page).await.concat(),
                expected,
                "{filter:?} in pages of {page}"
            );
        }
    }
}

/// The migrations of `backend` before the metadata index (0007), in a
/// directory of their own: a database as the previous release left it.
fn migrations_before_the_index(backend: &str) -> tempfile::TempDir {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let dir = tempfile::tempdir().expect("temporary directory");
    for entry in std::fs::read_dir(&source).expect("the migrations folder") {
        let path = entry.expect("a migration").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.as_bytes() < b"0007".as_slice() {
            std::fs::copy(&path, dir.path().join(name)).expect("copied");
        }
    }
    dir
}

/// A job row as the previous release wrote it (its columns with no
/// default), with `metadata`.
const OLD_JOB: &str = "INSERT INTO jobs (id, tenant, queue, kind, payload, state, priority, \
    max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, metadata, created_at, run_at) \
    VALUES ($1, 'default', 'default', 'noop', '{}', 'queued', 0, 3, 60000, 1000, 600000, $2, 0, 0)";
const OLD_QUEUE: &str = "INSERT INTO queues (name, concurrency, capacity, paused, max_attempts, \
    timeout_ms, backoff_base_ms, backoff_max_ms, created_at, updated_at) \
    VALUES ('default', 10, 100, false, 3, 60000, 1000, 600000, 0, 0)";

/// Jobs stored before the index existed and jobs admitted after it are
/// listed together; pruning takes the labels of the pruned jobs out of the
/// index. `labels_stored` counts the rows of `job_metadata`.
async fn labels_are_backfilled_and_follow_pruning(
    store: Arc<dyn JobStore>,
    old: [JobId; 3],
    labels_stored: impl AsyncFn() -> i64,
) {
    // Two old jobs with labels (three and one), one without.
    assert_eq!(labels_stored().await, 4, "the migration backfilled them");
    let new = submit_one(
        &store,
        job(
            "default",
            json!({"metadata": {"team": "a", "env": "prod"}}),
            at(10),
        ),
    )
    .await;
    assert_eq!(labels_stored().await, 6, "an admission adds its labels");
    assert_eq!(
        every_page(&store, &labels(&[("team", "a")]), 1)
            .await
            .concat(),
        [new, old[1], old[0]]
    );
    assert_eq!(
        every_page(&store, &labels(&[("env", "prod"), ("team", "a")]), 1)
            .await
            .concat(),
        [new, old[0]]
    );

    // The old job with three labels and the new one end and are pruned.
    let claimed = store
        .claim("default", 10, OWNER, at(30_000), at(20))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for id in [old[0], new] {
        store
            .complete(completion(
                id,
                1,
                OWNER,
                AttemptOutcome::Succeeded(json!(null)),
            ))
            .await
            .unwrap();
    }
    assert_eq!(store.prune(at(101), at(0)).await.unwrap(), 2);
    assert_eq!(labels_stored().await, 1, "only the remaining job's label");
    assert_eq!(
        every_page(&store, &labels(&[("team", "a")]), 1)
            .await
            .concat(),
        [old[1]]
    );
}

fn old_jobs() -> [(JobId, &'static str); 3] {
    [
        (
            JobId::new(),
            r#"{"team":"a","env":"prod","app.kubernetes.io/name":"x"}"#,
        ),
        (JobId::new(), r#"{"team":"a"}"#),
        (JobId::new(), "{}"),
    ]
}

/// Migrates `$conn` (either backend's connection) as the release before
/// the label index did, stores [`old_jobs`] in it and closes it; evaluates
/// to those jobs. A macro: each backend's connection binds through its own
/// sqlx types.
macro_rules! store_as_the_previous_release {
    ($conn:ident, $backend:literal) => {{
        let old_migrations = migrations_before_the_index($backend);
        sqlx::migrate::Migrator::new(old_migrations.path())
            .await
            .expect("the old migrations")
            .run(&mut $conn)
            .await
            .expect("migrated as the previous release");
        sqlx::query(OLD_QUEUE).execute(&mut $conn).await.unwrap();
        let old = old_jobs();
        for (id, metadata) in &old {
            sqlx::query(OLD_JOB)
                .bind(id.to_string())
                .bind(*metadata)
                .execute(&mut $conn)
                .await
                .unwrap();
        }
        $conn.close().await.unwrap();
        old
    }};
}

#[tokio::test]
async fn sqlite_backfills_the_labels_of_jobs_stored_before_the_index() {
    use sqlx::{Connection, SqliteConnection};

    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let mut conn = SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .expect("a new database");
    let old = store_as_the_previous_release!(conn, "sqlite");

    let store = spool::store::SqliteStore::open(&url)
        .await
        .expect("the store opens and migrates");
    let count = async || -> i64 {
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM job_metadata")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    labels_are_backfilled_and_follow_pruning(Arc::new(store), old.map(|(id, _)| id), count).await;
}

#[tokio::test]
async fn postgres_backfills_the_labels_of_jobs_stored_before_the_index() {
    use sqlx::{Connection, PgConnection};

    let Some(schema) = crate::pg::Schema::create().await else {
        return;
    };
    let mut conn = PgConnection::connect(&schema.url()).await.unwrap();
    let old = store_as_the_previous_release!(conn, "postgres");

    let store = schema.open().await;
    let url = schema.url();
    let count = async || -> i64 {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM job_metadata")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    labels_are_backfilled_and_follow_pruning(Arc::new(store), old.map(|(id, _)| id), count).await;
}

/// Filters and the index each must be served by (a name in its plan).
fn filters_and_their_indexes() -> Vec<(JobFilter, &'static [&'static str])> {
    let base = JobFilter {
        limit: 50,
        ..JobFilter::default()
    };
    let with = |change: &dyn Fn(&mut JobFilter)| {
        let mut filter = base.clone();
        change(&mut filter);
        filter
    };
    let status = |state: JobState| with(&|f| f.status = Some(state));
    vec![
        (labels(&[("team", "a")]), &["job_metadata"]),
        (labels(&[("team", "a"), ("env", "prod")]), &["job_metadata"]),
        (
            JobFilter {
                before: Some(JobId::new()),
                queue: Some("q".into()),
                status: Some(JobState::Failed),
                ..labels(&[("team", "a")])
            },
            &["job_metadata"],
        ),
        (with(&|f| f.key = Some("k".into())), &["jobs_key"]),
        (
            with(&|f| f.batch_id = Some(spool::domain::BatchId::new())),
            &["jobs_batch"],
        ),
        (status(JobState::Scheduled), &["jobs_at_rest_state"]),
        (status(JobState::Succeeded), &["jobs_at_rest_state"]),
        (status(JobState::Failed), &["jobs_at_rest_state"]),
        (status(JobState::Cancelled), &["jobs_at_rest_state"]),
        (status(JobState::Queued), &["jobs_ready"]),
        (
            with(&|f| f.queue = Some("q".into())),
            &["jobs_at_rest_queue", "jobs_ready"],
        ),
        (
            with(&|f| f.kind = Some("k".into())),
            &["jobs_at_rest_kind", "jobs_ready"],
        ),
        (
            with(&|f| {
                f.kind = Some("k".into());
                f.before = Some(JobId::new());
            }),
            &["jobs_at_rest_kind", "jobs_ready"],
        ),
    ]
}

#[tokio::test]
async fn sqlite_serves_every_list_filter_from_an_index() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let store = spool::store::SqliteStore::open(&url).await.unwrap();
    let mut cases = filters_and_their_indexes();
    cases.push((
        JobFilter {
            status: Some(JobState::Running),
            limit: 50,
            ..JobFilter::default()
        },
        &["jobs_leases"],
    ));
    for (filter, indexes) in cases {
        let plan = store.explain_list(TENANT_DEFAULT, &filter).await.unwrap();
        let text = plan.join("\n");
        // `SCAN jobs` reads the table (or walks its primary key) filtering
        // every row; scans of a partial index of active jobs are bounded.
        assert!(
            !plan
                .iter()
                .any(|step| step.trim_start().starts_with("SCAN jobs")
                    || step.trim_start().starts_with("SCAN m ")),
            "{filter:?} scans:\n{text}"
        );
        for index in indexes {
            let named = match *index {
                "job_metadata" => "SEARCH m USING PRIMARY KEY".to_owned(),
                other => format!("INDEX {other}"),
            };
            assert!(
                text.contains(&named),
                "{filter:?} is not served by {index}:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn postgres_serves_every_list_filter_from_an_index() {
    let Some(schema) = crate::pg::Schema::create().await else {
        return;
    };
    let store = schema.open().await;
    let mut cases = filters_and_their_indexes();
    cases.push((
        JobFilter {
            status: Some(JobState::Running),
            limit: 50,
            ..JobFilter::default()
        },
        &["jobs_running"],
    ));
    for (filter, indexes) in cases {
        let plan = store.explain_list(TENANT_DEFAULT, &filter).await.unwrap();
        let text = plan.join("\n");
        assert!(!text.contains("Seq Scan"), "{filter:?} scans:\n{text}");
        for index in indexes {
            let named = match *index {
                "job_metadata" => "job_metadata_pkey",
                other => other,
            };
            assert!(
                text.contains(named),
                "{filter:?} is not served by {index}:\n{text}"
            );
        }
    }
}
