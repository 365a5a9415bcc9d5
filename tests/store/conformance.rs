//! The cases of the conformance suite, each taking a fresh store.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{
    Concurrency, ConcurrencyRange, ErrorInfo, JobId, JobSpec, JobState, NewJob, OnConflict,
    Progress, QueueConfig, SpecContext, TENANT_DEFAULT, Timestamp,
};
use spool::store::{
    AttemptOutcome, CancelOutcome, Completion, CompletionResult, IdempotencyKey, JobFilter,
    JobStore, QueueDeletion, RetryOutcome, Submission, SubmitOutcome, SubmitRejection,
};

pub(crate) const OWNER: &str = "owner-a";
const OTHER: &str = "owner-b";

pub(crate) fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + ms)
}

pub(crate) fn job(queue: &str, spec: serde_json::Value, now: Timestamp) -> NewJob {
    let mut spec = spec;
    if spec.get("kind").is_none() {
        spec["kind"] = json!("noop");
    }
    let spec: JobSpec = serde_json::from_value(spec).expect("a valid spec");
    let mut config = QueueConfig::new(queue);
    config.defaults.max_attempts = 2;
    let ctx = SpecContext {
        id: JobId::new(),
        batch: None,
    };
    spec.validate(TENANT_DEFAULT, &config, now, ctx)
        .expect("valid")
}

pub(crate) async fn with_queues(store: &Arc<dyn JobStore>, queues: &[(&str, u64)]) {
    for (name, capacity) in queues {
        let mut queue = QueueConfig::new(*name);
        queue.capacity = *capacity;
        store.upsert_queue(&queue).await.expect("queue stored");
    }
}

pub(crate) async fn submit(
    store: &Arc<dyn JobStore>,
    jobs: Vec<NewJob>,
) -> Result<SubmitOutcome, SubmitRejection> {
    submit_as(store, TENANT_DEFAULT, jobs).await
}

/// `jobs` submitted as `tenant`'s (each job made `tenant`'s first).
pub(crate) async fn submit_as(
    store: &Arc<dyn JobStore>,
    tenant: &str,
    mut jobs: Vec<NewJob>,
) -> Result<SubmitOutcome, SubmitRejection> {
    for job in &mut jobs {
        job.tenant = tenant.to_owned();
    }
    store
        .submit(submission(tenant, jobs))
        .await
        .expect("storage works")
}

/// A plain submission of `jobs` by `tenant`: no batch, no idempotency key.
pub(crate) fn submission(tenant: &str, jobs: Vec<NewJob>) -> Submission {
    Submission {
        batch: None,
        tenant: tenant.into(),
        jobs,
        idempotency: None,
        redactor: Default::default(),
        limit_pending: false,
    }
}

pub(crate) async fn submit_one(store: &Arc<dyn JobStore>, new: NewJob) -> JobId {
    let id = new.id;
    match submit(store, vec![new]).await {
        Ok(SubmitOutcome::Created { jobs, .. }) => assert_eq!(jobs[0].id, id),
        other => panic!("not created: {other:?}"),
    }
    id
}

pub(crate) async fn all_jobs(store: &Arc<dyn JobStore>) -> Vec<spool::domain::Job> {
    let filter = JobFilter {
        limit: 100,
        ..Default::default()
    };
    store
        .list_jobs(TENANT_DEFAULT, &filter)
        .await
        .expect("listed")
}

/// A job of `default`, submitted at 0 and claimed by OWNER at 1 (attempt 1).
async fn running_job(store: &Arc<dyn JobStore>) -> JobId {
    let id = submit_one(store, job("default", json!({}), at(0))).await;
    let claimed = store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .expect("claimed");
    assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), [id]);
    id
}

pub(crate) async fn state_of(store: &Arc<dyn JobStore>, id: JobId) -> JobState {
    store
        .get_job(TENANT_DEFAULT, id)
        .await
        .unwrap()
        .expect("exists")
        .status
}

pub(crate) fn error(code: &str, attempt: u32, now: Timestamp) -> ErrorInfo {
    ErrorInfo {
        code: code.into(),
        message: format!("{code} happened"),
        attempt: Some(attempt),
        at: now,
    }
}

pub(crate) fn completion(
    id: JobId,
    attempt: u32,
    owner: &str,
    outcome: AttemptOutcome,
) -> Completion {
    Completion {
        id,
        attempt,
        lease_owner: owner.into(),
        outcome,
        at: at(100),
    }
}

pub async fn submitted_jobs_can_be_read_back_and_listed(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100), ("other", 100)]).await;
    let first = submit_one(
        &store,
        job(
            "default",
            json!({"kind": "echo", "payload": {"a": [1, 2]}, "metadata": {"team": "x"}}),
            at(0),
        ),
    )
    .await;
    let second = submit_one(&store, job("other", json!({"delay_ms": 1000}), at(0))).await;
    let read = store.get_job(TENANT_DEFAULT, first).await.unwrap().unwrap();
    assert_eq!(read.payload, json!({"a": [1, 2]}));
    assert_eq!(read.status, JobState::Queued);
    assert_eq!(read.metadata["team"], "x");
    assert_eq!(read.created_at, at(0));
    assert_eq!(state_of(&store, second).await, JobState::Scheduled);
    assert!(
        store
            .get_job("another-tenant", first)
            .await
            .unwrap()
            .is_none()
    );

    let all = all_jobs(&store).await;
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        [second, first],
        "newest first"
    );
    let filtered = JobFilter {
        metadata: vec![("team".into(), "x".into())],
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store
            .list_jobs(TENANT_DEFAULT, &filtered)
            .await
            .unwrap()
            .len(),
        1
    );
    let page = JobFilter {
        before: Some(second),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store.list_jobs(TENANT_DEFAULT, &page).await.unwrap()[0].id,
        first
    );
}

pub async fn claims_take_the_best_priority_first_then_fifo_and_count_an_attempt(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let low = submit_one(&store, job("default", json!({"priority": -1}), at(0))).await;
    let first = submit_one(&store, job("default", json!({}), at(1))).await;
    let high = submit_one(&store, job("default", json!({"priority": 5}), at(2))).await;
    let second = submit_one(&store, job("default", json!({}), at(3))).await;
    let queued = store
        .get_job(TENANT_DEFAULT, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.queue_position(&queued).await.unwrap(), 2);

    let claimed = store
        .claim("default", 10, OWNER, at(30_000), at(10))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        [high, first, second, low]
    );
    for job in &claimed {
        assert_eq!(job.status, JobState::Running);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.started_at, Some(at(10)));
    }
    assert!(
        store
            .claim("default", 10, OWNER, at(30_000), at(10))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn claims_never_take_more_than_asked_or_jobs_of_other_queues(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100), ("other", 100)]).await;
    for n in 0..5 {
        submit_one(&store, job("default", json!({}), at(n))).await;
    }
    submit_one(&store, job("other", json!({}), at(9))).await;
    submit_one(&store, job("default", json!({"delay_ms": 5000}), at(9))).await;
    assert_eq!(
        store
            .claim("default", 3, OWNER, at(30_000), at(10))
            .await
            .unwrap()
            .len(),
        3
    );
    let rest = store
        .claim("default", 10, OWNER, at(30_000), at(10))
        .await
        .unwrap();
    assert_eq!(
        rest.len(),
        2,
        "scheduled and other queues' jobs are not claimed"
    );
    assert!(rest.iter().all(|j| j.queue == "default"));
}

pub async fn an_attempts_outcome_is_fenced_by_attempt_and_owner(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let id = running_job(&store).await;

    let wrong_owner = completion(id, 1, OTHER, AttemptOutcome::Succeeded(json!(1)));
    assert!(matches!(
        store.complete(wrong_owner).await.unwrap(),
        CompletionResult::Fenced
    ));
    let wrong_attempt = completion(id, 2, OWNER, AttemptOutcome::Succeeded(json!(1)));
    assert!(matches!(
        store.complete(wrong_attempt).await.unwrap(),
        CompletionResult::Fenced
    ));

    let right = completion(id, 1, OWNER, AttemptOutcome::Succeeded(json!({"ok": true})));
    match store.complete(right.clone()).await.unwrap() {
        CompletionResult::Applied { job, .. } => {
            assert_eq!(job.status, JobState::Succeeded);
            assert_eq!(job.result, Some(json!({"ok": true})));
            assert_eq!(job.finished_at, Some(at(100)));
        }
        CompletionResult::Fenced => panic!("the owner's write was fenced"),
    }
    assert!(
        matches!(
            store.complete(right).await.unwrap(),
            CompletionResult::Fenced
        ),
        "terminal jobs never change"
    );
}

pub async fn a_failed_attempt_with_a_retry_goes_back_to_scheduled_with_its_error(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let id = running_job(&store).await;
    let failed = AttemptOutcome::Failed {
        error: error("boom", 1, at(2)),
        retry_at: Some(at(500)),
    };
    let CompletionResult::Applied { job, .. } = store
        .complete(completion(id, 1, OWNER, failed))
        .await
        .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(job.status, JobState::Scheduled);
    assert_eq!(job.run_at, at(500));
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.error.as_ref().unwrap().code, "boom");

    store.promote_due(at(500)).await.unwrap();
    let claimed = store
        .claim("default", 1, OWNER, at(30_000), at(501))
        .await
        .unwrap();
    assert_eq!(claimed[0].attempt, 2);
    let last = AttemptOutcome::Failed {
        error: error("boom", 2, at(502)),
        retry_at: None,
    };
    let CompletionResult::Applied { job, .. } = store
        .complete(completion(id, 2, OWNER, last))
        .await
        .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(job.status, JobState::Failed);
    assert_eq!(
        job.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
}

pub async fn a_job_that_succeeds_after_a_failure_shows_no_error_and_keeps_its_history(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let id = running_job(&store).await;
    let failed = AttemptOutcome::Failed {
        error: error("boom", 1, at(2)),
        retry_at: Some(at(500)),
    };
    store
        .complete(completion(id, 1, OWNER, failed))
        .await
        .unwrap();
    store.promote_due(at(500)).await.unwrap();
    store
        .claim("default", 1, OWNER, at(30_000), at(501))
        .await
        .unwrap();
    let CompletionResult::Applied { job, .. } = store
        .complete(completion(
            id,
            2,
            OWNER,
            AttemptOutcome::Succeeded(json!({"ok": true})),
        ))
        .await
        .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(job.status, JobState::Succeeded);
    assert!(job.error.is_none(), "{:?}", job.error);
    assert_eq!(job.errors.len(), 1);
    let stored = store.get_job(TENANT_DEFAULT, id).await.unwrap().unwrap();
    assert!(stored.error.is_none(), "{:?}", stored.error);
}

pub async fn a_queue_paused_in_the_store_gives_no_claims_until_resumed(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    submit_one(&store, job("default", json!({}), at(1))).await;
    let mut paused = QueueConfig::new("default");
    paused.capacity = 100;
    paused.paused = true;
    store.upsert_queue(&paused).await.unwrap();
    let claimed = store
        .claim("default", 10, OWNER, at(30_000), at(2))
        .await
        .unwrap();
    assert!(claimed.is_empty(), "{claimed:?}");
    paused.paused = false;
    store.upsert_queue(&paused).await.unwrap();
    let claimed = store
        .claim("default", 10, OWNER, at(30_000), at(3))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

pub async fn released_jobs_go_back_to_the_queue_without_counting_the_attempt(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let id = running_job(&store).await;
    let CompletionResult::Applied { job, .. } = store
        .complete(completion(id, 1, OWNER, AttemptOutcome::Released))
        .await
        .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(job.status, JobState::Queued);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.started_at, None);
}

pub async fn due_jobs_are_promoted_and_the_next_due_time_is_reported(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100), ("other", 100)]).await;
    let soon = submit_one(&store, job("default", json!({"delay_ms": 100}), at(0))).await;
    let later = submit_one(&store, job("other", json!({"delay_ms": 900}), at(0))).await;
    let promoted = store.promote_due(at(50)).await.unwrap();
    assert!(promoted.queues.is_empty());
    assert_eq!(promoted.next_due, Some(at(100)));
    let promoted = store.promote_due(at(100)).await.unwrap();
    assert_eq!(promoted.queues, ["default"]);
    assert_eq!(promoted.next_due, Some(at(900)));
    assert_eq!(state_of(&store, soon).await, JobState::Queued);
    assert_eq!(state_of(&store, later).await, JobState::Scheduled);
}

pub async fn capacity_counts_scheduled_and_queued_jobs_only(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("small", 2)]).await;
    submit_one(&store, job("small", json!({}), at(0))).await;
    submit_one(&store, job("small", json!({"delay_ms": 1000}), at(0))).await;
    let refused = submit(&store, vec![job("small", json!({}), at(1))]).await;
    assert_eq!(
        refused.unwrap_err(),
        SubmitRejection::QueueFull {
            queue: "small".into(),
            capacity: 2,
            pending: 2,
            requested: 1
        }
    );
    // A running job no longer counts.
    store
        .claim("small", 1, OWNER, at(30_000), at(2))
        .await
        .unwrap();
    submit_one(&store, job("small", json!({}), at(3))).await;
    let info = store.get_queue("small").await.unwrap().unwrap();
    assert_eq!(
        (
            info.counts.scheduled,
            info.counts.queued,
            info.counts.running
        ),
        (1, 1, 1)
    );
}

pub async fn a_submission_is_all_or_nothing(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("a", 10), ("b", 1)]).await;
    let jobs = vec![
        job("a", json!({}), at(0)),
        job("b", json!({}), at(0)),
        job("b", json!({}), at(0)),
    ];
    assert!(matches!(
        submit(&store, jobs).await,
        Err(SubmitRejection::QueueFull { .. })
    ));
    let all = all_jobs(&store).await;
    assert!(all.is_empty(), "nothing of a refused submission is stored");
    let a = store.get_queue("a").await.unwrap().unwrap();
    assert_eq!(a.counts.queued, 0);
}

pub async fn unknown_queues_are_refused(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let refused = submit(&store, vec![job("ghost", json!({}), at(0))]).await;
    assert_eq!(
        refused.unwrap_err(),
        SubmitRejection::UnknownQueue("ghost".into())
    );
}

pub async fn keys_are_unique_among_active_jobs(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let holder = submit_one(&store, job("default", json!({"key": "k"}), at(0))).await;
    let conflict = submit(&store, vec![job("default", json!({"key": "k"}), at(1))]).await;
    assert_eq!(
        conflict.unwrap_err(),
        SubmitRejection::KeyConflict {
            key: "k".into(),
            holder
        }
    );

    let existing = job(
        "default",
        json!({"key": "k", "on_conflict": "existing"}),
        at(1),
    );
    assert_eq!(existing.on_conflict, OnConflict::Existing);
    match submit(&store, vec![existing]).await {
        Ok(SubmitOutcome::Existing(job)) => assert_eq!(job.id, holder),
        other => panic!("{other:?}"),
    }

    // Replace a running holder: it is asked to cancel and frees the key.
    store
        .claim("default", 1, OWNER, at(30_000), at(2))
        .await
        .unwrap();
    let replacement = job(
        "default",
        json!({"key": "k", "on_conflict": "replace"}),
        at(3),
    );
    match submit(&store, vec![replacement]).await {
        Ok(SubmitOutcome::Created { effects, .. }) => assert_eq!(effects.stop, [holder]),
        other => panic!("{other:?}"),
    }
    let old = store
        .get_job(TENANT_DEFAULT, holder)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.status, JobState::Running);
    assert!(old.cancel_requested);

    // Replace a waiting holder: cancelled at once.
    let waiting = submit_one(
        &store,
        job("default", json!({"key": "w", "delay_ms": 1000}), at(4)),
    )
    .await;
    submit(
        &store,
        vec![job(
            "default",
            json!({"key": "w", "on_conflict": "replace"}),
            at(5),
        )],
    )
    .await
    .unwrap();
    assert_eq!(state_of(&store, waiting).await, JobState::Cancelled);

    // Keys of other tenants and of finished jobs don't conflict.
    let other_tenant = job("default", json!({"key": "w"}), at(6));
    submit_as(&store, "someone-else", vec![other_tenant])
        .await
        .expect("another tenant's key space");
}

pub async fn idempotency_keys_replay_or_refuse(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let key = |hash: &str| {
        Some(IdempotencyKey {
            key: "req-1".into(),
            request_hash: hash.into(),
        })
    };
    let first = job("default", json!({}), at(0));
    let id = first.id;
    let outcome = store
        .submit(Submission {
            batch: None,
            tenant: TENANT_DEFAULT.into(),
            jobs: vec![first],
            idempotency: key("h1"),
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, SubmitOutcome::Created { .. }));
    let again = store
        .submit(Submission {
            batch: None,
            tenant: TENANT_DEFAULT.into(),
            jobs: vec![job("default", json!({}), at(1))],
            idempotency: key("h1"),
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .unwrap()
        .unwrap();
    match again {
        SubmitOutcome::Replayed(response) => {
            assert_eq!(response.status, 202);
            assert_eq!(response.body["id"], id.to_string());
        }
        other => panic!("{other:?}"),
    }
    let mismatch = store
        .submit(Submission {
            batch: None,
            tenant: TENANT_DEFAULT.into(),
            jobs: vec![job("default", json!({}), at(1))],
            idempotency: key("h2"),
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .unwrap();
    assert_eq!(mismatch.unwrap_err(), SubmitRejection::IdempotencyMismatch);
    let all = all_jobs(&store).await;
    assert_eq!(all.len(), 1);
}

pub async fn cancelling_waiting_running_and_finished_jobs(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let waiting = submit_one(&store, job("default", json!({"delay_ms": 1000}), at(0))).await;
    let running = submit_one(&store, job("default", json!({}), at(0))).await;
    store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .unwrap();

    assert!(
        matches!(store.cancel_job(TENANT_DEFAULT, waiting, at(2)).await.unwrap(), CancelOutcome::Cancelled(j, _) if j.status == JobState::Cancelled)
    );
    assert!(
        matches!(store.cancel_job(TENANT_DEFAULT, running, at(2)).await.unwrap(), CancelOutcome::Requested(j) if j.cancel_requested && j.status == JobState::Running)
    );
    assert!(matches!(
        store
            .cancel_job(TENANT_DEFAULT, waiting, at(3))
            .await
            .unwrap(),
        CancelOutcome::AlreadyFinished(_)
    ));
    assert!(matches!(
        store
            .cancel_job("someone-else", running, at(3))
            .await
            .unwrap(),
        CancelOutcome::NotFound
    ));
    assert!(matches!(
        store
            .cancel_job(TENANT_DEFAULT, JobId::new(), at(3))
            .await
            .unwrap(),
        CancelOutcome::NotFound
    ));

    let cancelled = AttemptOutcome::Cancelled(error("cancelled", 1, at(4)));
    let CompletionResult::Applied { job, .. } = store
        .complete(completion(running, 1, OWNER, cancelled))
        .await
        .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(job.status, JobState::Cancelled);
}

pub async fn retry_starts_a_new_series_for_failed_or_cancelled_jobs_only(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let id = submit_one(&store, job("default", json!({"key": "r"}), at(0))).await;
    assert!(matches!(
        store.retry_job(TENANT_DEFAULT, id, at(1)).await.unwrap(),
        RetryOutcome::NotRetryable(_)
    ));
    store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    let failed = AttemptOutcome::Failed {
        error: error("boom", 1, at(2)),
        retry_at: None,
    };
    store
        .complete(completion(id, 1, OWNER, failed))
        .await
        .unwrap();

    // While another job holds the key, the retry would break uniqueness.
    let holder = submit_one(&store, job("default", json!({"key": "r"}), at(3))).await;
    assert!(matches!(
        store.retry_job(TENANT_DEFAULT, id, at(4)).await.unwrap(),
        RetryOutcome::Rejected(SubmitRejection::KeyConflict { holder: h, .. }) if h == holder
    ));
    store
        .cancel_job(TENANT_DEFAULT, holder, at(5))
        .await
        .unwrap();
    match store.retry_job(TENANT_DEFAULT, id, at(6)).await.unwrap() {
        RetryOutcome::Retried(job) => {
            assert_eq!(job.status, JobState::Queued);
            assert_eq!(job.attempt, 0);
            assert!(job.errors.is_empty() && job.error.is_none() && job.finished_at.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .retry_job(TENANT_DEFAULT, JobId::new(), at(7))
            .await
            .unwrap(),
        RetryOutcome::NotFound
    ));
}

pub async fn expired_leases_are_rescued_and_the_old_owner_is_fenced(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let again = submit_one(&store, job("default", json!({"max_attempts": 3}), at(0))).await;
    let last = submit_one(&store, job("default", json!({"max_attempts": 1}), at(0))).await;
    store
        .claim("default", 2, OWNER, at(1_000), at(1))
        .await
        .unwrap();
    assert!(
        store.rescue(at(999), None).await.unwrap().0.is_empty(),
        "leases not yet expired"
    );

    let (rescued, _) = store.rescue(at(1_001), None).await.unwrap();
    assert_eq!(rescued.len(), 2);
    let again_job = store.get_job(TENANT_DEFAULT, again).await.unwrap().unwrap();
    assert_eq!(again_job.status, JobState::Queued);
    assert_eq!(again_job.errors[0].code, "lease_expired");
    assert_eq!(state_of(&store, last).await, JobState::Failed);

    // The new attempt belongs to OTHER; the old owner's late write is fenced.
    store
        .claim("default", 1, OTHER, at(30_000), at(1_002))
        .await
        .unwrap();
    let late = completion(again, 1, OWNER, AttemptOutcome::Succeeded(json!("late")));
    assert!(matches!(
        store.complete(late).await.unwrap(),
        CompletionResult::Fenced
    ));
    let current = completion(again, 2, OTHER, AttemptOutcome::Succeeded(json!("current")));
    assert!(matches!(
        store.complete(current).await.unwrap(),
        CompletionResult::Applied { job: _, .. }
    ));
}

pub async fn an_exclusive_start_rescues_every_job_of_other_owners(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let id = submit_one(&store, job("default", json!({}), at(0))).await;
    store
        .claim("default", 1, OTHER, at(1_000_000), at(1))
        .await
        .unwrap();
    let (rescued, _) = store.rescue(at(2), Some(OWNER)).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].id, id);
    assert_eq!(state_of(&store, id).await, JobState::Queued);
}

pub async fn renewing_leases_reports_jobs_asked_to_cancel(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let calm = submit_one(&store, job("default", json!({}), at(0))).await;
    let doomed = submit_one(&store, job("default", json!({}), at(1))).await;
    store
        .claim("default", 2, OWNER, at(1_000), at(2))
        .await
        .unwrap();
    store
        .cancel_job(TENANT_DEFAULT, doomed, at(3))
        .await
        .unwrap();
    let asked = store
        .renew_leases(OWNER, &[calm, doomed], at(50_000))
        .await
        .unwrap();
    assert_eq!(asked, [doomed]);
    assert!(
        store.rescue(at(1_500), None).await.unwrap().0.is_empty(),
        "renewed leases hold"
    );
    assert_eq!(state_of(&store, calm).await, JobState::Running);
    assert!(
        store
            .renew_leases(OTHER, &[calm, doomed], at(50_000))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The heartbeat names the jobs its process runs: a job the owner holds but
/// no longer runs (its outcome could not be stored, or its claim's answer was
/// lost) must lapse and be rescued, not be renewed for ever.
pub async fn renewing_leases_lets_a_job_its_owner_does_not_name_lapse_into_rescue(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 10)]).await;
    let kept = submit_one(&store, job("default", json!({}), at(0))).await;
    let forgotten = submit_one(&store, job("default", json!({}), at(1))).await;
    store
        .claim("default", 2, OWNER, at(1_000), at(2))
        .await
        .unwrap();
    store
        .renew_leases(OWNER, &[kept], at(50_000))
        .await
        .unwrap();
    let (rescued, _) = store.rescue(at(1_500), None).await.unwrap();
    let rescued: Vec<JobId> = rescued.iter().map(|r| r.id).collect();
    assert_eq!(rescued, [forgotten]);
    assert_eq!(state_of(&store, kept).await, JobState::Running);
    assert_eq!(state_of(&store, forgotten).await, JobState::Queued);
}

pub async fn progress_is_stored_for_the_current_attempt_only(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let id = running_job(&store).await;
    let progress = Progress {
        current: 3,
        total: Some(10),
        message: Some("three".into()),
    };
    store
        .report_progress(id, 1, progress.clone())
        .await
        .unwrap();
    store
        .report_progress(
            id,
            7,
            Progress {
                current: 9,
                total: None,
                message: None,
            },
        )
        .await
        .unwrap();
    let read = store.get_job(TENANT_DEFAULT, id).await.unwrap().unwrap();
    assert_eq!(read.progress, Some(progress));
}

pub async fn prune_deletes_only_old_terminal_jobs(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 10)]).await;
    let old = submit_one(&store, job("default", json!({}), at(0))).await;
    let waiting = submit_one(&store, job("default", json!({}), at(0))).await;
    store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    store
        .complete(completion(
            old,
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!(null)),
        ))
        .await
        .unwrap();
    assert_eq!(
        store.prune(at(100), at(0)).await.unwrap(),
        0,
        "finished at 100, not before"
    );
    assert_eq!(store.prune(at(101), at(0)).await.unwrap(), 1);
    assert!(store.get_job(TENANT_DEFAULT, old).await.unwrap().is_none());
    assert_eq!(state_of(&store, waiting).await, JobState::Queued);
}

pub async fn queues_are_created_updated_and_counted(store: Arc<dyn JobStore>) {
    let mut queue = QueueConfig::new("mail");
    assert!(store.upsert_queue(&queue).await.unwrap(), "created");
    queue.concurrency = Concurrency::Fixed(3);
    queue.paused = true;
    queue.defaults.max_attempts = 9;
    assert!(!store.upsert_queue(&queue).await.unwrap(), "updated");
    let read = store.get_queue("mail").await.unwrap().unwrap();
    assert_eq!(
        (read.concurrency, read.paused, read.defaults.max_attempts),
        (Concurrency::Fixed(3), true, 9)
    );
    // An adaptive range is kept whole, and back to a fixed number again.
    let range = Concurrency::Adaptive(ConcurrencyRange { min: 2, max: 64 });
    queue.concurrency = range;
    store.upsert_queue(&queue).await.unwrap();
    let read = store.get_queue("mail").await.unwrap().unwrap();
    assert_eq!(read.concurrency, range);
    queue.concurrency = Concurrency::Fixed(5);
    store.upsert_queue(&queue).await.unwrap();
    let read = store.get_queue("mail").await.unwrap().unwrap();
    assert_eq!(read.concurrency, Concurrency::Fixed(5));
    assert!(store.get_queue("nope").await.unwrap().is_none());
    assert_eq!(store.list_queues().await.unwrap().len(), 1);
}

pub async fn queue_counts_match_the_jobs_after_concurrent_writes(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 1_000)]).await;
    // Submissions, claims and completions in flight together land in the
    // same group commits; the counts must still match the rows.
    let submissions = (0..60).map(|n| {
        let spec = if n % 3 == 0 {
            json!({"delay_ms": 60_000})
        } else {
            json!({})
        };
        submit(&store, vec![job("default", spec, at(n))])
    });
    let claims = (0..5).map(|_| store.claim("default", 4, OWNER, at(30_000), at(100)));
    let (submitted, claimed) = futures::join!(
        futures::future::join_all(submissions),
        futures::future::join_all(claims)
    );
    assert!(submitted.iter().all(|outcome| outcome.is_ok()));
    let claimed: Vec<_> = claimed.into_iter().flat_map(|jobs| jobs.unwrap()).collect();
    let finishing = claimed.iter().take(3).map(|job| {
        store.complete(completion(
            job.id,
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!(null)),
        ))
    });
    futures::future::join_all(finishing).await;

    let jobs = all_jobs(&store).await;
    let count = |state| jobs.iter().filter(|job| job.status == state).count() as u64;
    let queue = store.get_queue("default").await.unwrap().unwrap();
    assert_eq!(jobs.len(), 60);
    assert_eq!(queue.counts.scheduled, count(JobState::Scheduled));
    assert_eq!(queue.counts.queued, count(JobState::Queued));
    assert_eq!(queue.counts.running, count(JobState::Running));
    assert_eq!(count(JobState::Scheduled), 20);
}

pub async fn the_oldest_ready_job_of_each_queue_is_found_across_its_priorities(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("mixed", 100), ("shared", 100), ("idle", 100)]).await;
    // The oldest waits behind better priorities, and each priority's jobs
    // are not in age order across priorities.
    submit_one(&store, job("mixed", json!({"priority": 5}), at(30))).await;
    submit_one(&store, job("mixed", json!({"priority": 5}), at(40))).await;
    submit_one(&store, job("mixed", json!({"priority": 0}), at(20))).await;
    submit_one(&store, job("mixed", json!({"priority": -3}), at(10))).await;
    submit_one(&store, job("mixed", json!({"priority": -3}), at(15))).await;
    // Not ready, so no part of the figure, however early it came.
    submit_one(&store, job("mixed", json!({"delay_ms": 60_000}), at(0))).await;
    // Two tenants in one queue: the oldest is the second tenant's, behind
    // its own better priority.
    submit_one(&store, job("shared", json!({"priority": 2}), at(50))).await;
    for (priority, ms) in [(9, 60), (1, 45)] {
        let other = job("shared", json!({"priority": priority}), at(ms));
        let submitted = submit_as(&store, "other", vec![other]).await;
        assert!(submitted.is_ok(), "{submitted:?}");
    }
    let mut oldest = store.gauges().await.expect("gauges read").oldest_ready;
    oldest.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        oldest,
        [("mixed".to_owned(), at(10)), ("shared".to_owned(), at(45))]
    );
}

/// The queue's counts against its rows, after `step`.
async fn assert_counts_match(store: &Arc<dyn JobStore>, queue: &str, step: &str) {
    let jobs: Vec<_> = all_jobs(store)
        .await
        .into_iter()
        .filter(|job| job.queue == queue)
        .collect();
    let count = |state| jobs.iter().filter(|job| job.status == state).count() as u64;
    let info = store.get_queue(queue).await.unwrap().unwrap();
    assert_eq!(
        (
            info.counts.scheduled,
            info.counts.queued,
            info.counts.running
        ),
        (
            count(JobState::Scheduled),
            count(JobState::Queued),
            count(JobState::Running)
        ),
        "counts of {queue} after {step}"
    );
    // Every job of these tests is the default tenant's, in this queue.
    assert_eq!(
        store.tenant_pending(TENANT_DEFAULT).await.unwrap(),
        count(JobState::Scheduled) + count(JobState::Queued),
        "the tenant's waiting jobs after {step}"
    );
}

pub async fn queue_counts_match_the_jobs_after_every_kind_of_transition(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let q = "default";
    let first = submit_one(&store, job(q, json!({"max_attempts": 3}), at(0))).await;
    let second = submit_one(&store, job(q, json!({"max_attempts": 3}), at(1))).await;
    let delayed = submit_one(&store, job(q, json!({"delay_ms": 50}), at(2))).await;
    let dependent = submit_one(
        &store,
        job(q, json!({"depends_on": [first.to_string()]}), at(3)),
    )
    .await;
    let chained = submit_one(
        &store,
        job(q, json!({"depends_on": [second.to_string()]}), at(3)),
    )
    .await;
    let keyed = submit_one(&store, job(q, json!({"key": "k", "delay_ms": 1000}), at(4))).await;
    assert_counts_match(&store, q, "submissions").await;

    store.claim(q, 2, OWNER, at(1_000), at(5)).await.unwrap();
    assert_counts_match(&store, q, "a claim").await;
    let retry_later = AttemptOutcome::Failed {
        error: error("boom", 1, at(6)),
        retry_at: Some(at(60)),
    };
    store
        .complete(completion(first, 1, OWNER, retry_later))
        .await
        .unwrap();
    store
        .complete(completion(second, 1, OWNER, AttemptOutcome::Released))
        .await
        .unwrap();
    assert_counts_match(&store, q, "a retry and a release").await;

    store.promote_due(at(100)).await.unwrap();
    assert_counts_match(&store, q, "promotion").await;
    submit(
        &store,
        vec![job(q, json!({"key": "k", "on_conflict": "replace"}), at(7))],
    )
    .await
    .unwrap();
    assert_eq!(state_of(&store, keyed).await, JobState::Cancelled);
    store
        .cancel_job(TENANT_DEFAULT, delayed, at(8))
        .await
        .unwrap();
    assert_counts_match(&store, q, "cancels").await;

    // Both dependencies run; one's lease lapses, then it fails for good
    // (its dependent is cancelled), the other succeeds (its dependent is
    // released).
    let claimed = store.claim(q, 10, OWNER, at(200), at(101)).await.unwrap();
    assert!(claimed.iter().any(|job| job.id == first));
    store.rescue(at(201), None).await.unwrap();
    assert_counts_match(&store, q, "a rescue").await;
    let claimed = store
        .claim(q, 10, OTHER, at(30_000), at(202))
        .await
        .unwrap();
    for job in claimed {
        let outcome = if job.id == first {
            AttemptOutcome::Failed {
                error: error("boom", job.attempt, at(203)),
                retry_at: None,
            }
        } else {
            AttemptOutcome::Succeeded(json!(null))
        };
        store
            .complete(completion(job.id, job.attempt, OTHER, outcome))
            .await
            .unwrap();
    }
    assert_eq!(state_of(&store, dependent).await, JobState::Cancelled);
    assert_eq!(state_of(&store, chained).await, JobState::Queued);
    assert_counts_match(&store, q, "a release and a cascade").await;

    store
        .retry_job(TENANT_DEFAULT, first, at(300))
        .await
        .unwrap();
    assert_counts_match(&store, q, "a retried job").await;

    // A batch's waiting jobs, queued and scheduled, cancelled together.
    let (batch, _) =
        crate::batches::submit_batch(&store, &[json!({}), json!({"delay_ms": 60_000})], 1.0).await;
    assert_counts_match(&store, q, "a batch").await;
    store
        .cancel_batch(TENANT_DEFAULT, batch, at(400))
        .await
        .unwrap();
    assert_counts_match(&store, q, "a batch cancelled").await;

    // A job that waited past its expiry.
    submit_one(&store, job(q, json!({"expires_after_ms": 100}), at(500))).await;
    let (expired, _) = store.expire_due(at(10_000)).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_counts_match(&store, q, "an expiry").await;
}

pub async fn a_jobs_trace_context_is_stored_and_read_back(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = job("default", json!({}), at(0));
    traced.trace = spool::domain::TraceContext::from_headers(Some(traceparent), Some("congo=t61"));
    assert!(traced.trace.is_some());
    let traced_id = submit_one(&store, traced).await;
    let plain_id = submit_one(&store, job("default", json!({}), at(1))).await;
    let read = store
        .get_job(TENANT_DEFAULT, traced_id)
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(read.traceparent.as_deref(), Some(traceparent));
    assert_eq!(read.tracestate.as_deref(), Some("congo=t61"));
    let plain = store
        .get_job(TENANT_DEFAULT, plain_id)
        .await
        .unwrap()
        .expect("exists");
    assert_eq!((plain.traceparent, plain.tracestate), (None, None));
    // Claims return it too: the worker hands it on.
    let claimed = store
        .claim("default", 10, OWNER, at(60_000), at(10))
        .await
        .expect("claimed");
    let traced = claimed
        .iter()
        .find(|job| job.id == traced_id)
        .expect("claimed");
    assert_eq!(traced.traceparent.as_deref(), Some(traceparent));
}

pub async fn a_queue_is_deleted_only_without_unfinished_jobs_and_keeps_its_finished_ones(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100), ("brief", 100)]).await;
    assert_eq!(
        store.delete_queue("ghost").await.unwrap(),
        QueueDeletion::NotFound
    );
    // Queued, then running: unfinished either way.
    let id = submit_one(&store, job("brief", json!({}), at(0))).await;
    let waiting = submit_one(&store, job("brief", json!({"delay_ms": 60_000}), at(0))).await;
    assert_eq!(
        store.delete_queue("brief").await.unwrap(),
        QueueDeletion::Unfinished(2)
    );
    let claimed = store
        .claim("brief", 1, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.delete_queue("brief").await.unwrap(),
        QueueDeletion::Unfinished(2)
    );
    store
        .complete(completion(
            id,
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!(1)),
        ))
        .await
        .unwrap();
    assert!(matches!(
        store
            .cancel_job(TENANT_DEFAULT, waiting, at(2))
            .await
            .unwrap(),
        CancelOutcome::Cancelled(..)
    ));

    assert_eq!(
        store.delete_queue("brief").await.unwrap(),
        QueueDeletion::Deleted
    );
    assert!(store.get_queue("brief").await.unwrap().is_none());
    assert!(
        store
            .list_queues()
            .await
            .unwrap()
            .iter()
            .all(|queue| queue.name != "brief")
    );
    // Its finished jobs stay, naming it; new ones are refused.
    let kept = store
        .get_job(TENANT_DEFAULT, id)
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(
        (kept.queue.as_str(), kept.status),
        ("brief", JobState::Succeeded)
    );
    let refused = submit(&store, vec![job("brief", json!({}), at(3))]).await;
    assert_eq!(
        refused.unwrap_err(),
        SubmitRejection::UnknownQueue("brief".into())
    );
    // Created again, it starts empty.
    with_queues(&store, &[("brief", 100)]).await;
    let again = store
        .get_queue("brief")
        .await
        .unwrap()
        .expect("created again");
    assert_eq!(
        (
            again.counts.scheduled,
            again.counts.queued,
            again.counts.running
        ),
        (0, 0, 0)
    );
}
