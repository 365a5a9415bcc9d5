//! Conformance cases for batches and dependencies: counts, finishing order,
//! status, release and transitive cancellation, batch cancel.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{
    BatchId, BatchSpec, BatchStatus, JobId, JobSpec, JobState, NewJob, QueueConfig, SpecContext,
    TENANT_DEFAULT, Timestamp,
};
use spool::store::{
    AttemptOutcome, BatchCancelOutcome, CancelOutcome, CompletionResult, Effects, JobFilter,
    JobStore, RetryOutcome, Submission, SubmitOutcome, SubmitRejection,
};

use crate::conformance::{OWNER, at, completion, error, state_of, with_queues};

/// Validates `specs` as one batch (integer `depends_on` name earlier jobs).
fn batch_jobs(batch: BatchId, specs: &[serde_json::Value], now: Timestamp) -> Vec<NewJob> {
    let ids: Vec<JobId> = specs.iter().map(|_| JobId::new()).collect();
    let mut config = QueueConfig::new("default");
    config.defaults.max_attempts = 1;
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let mut spec = spec.clone();
            spec["kind"] = json!("noop");
            let spec: JobSpec = serde_json::from_value(spec).expect("a valid spec");
            let ctx = SpecContext {
                id: ids[index],
                batch: Some((batch, index, &ids)),
            };
            spec.validate(TENANT_DEFAULT, &config, now, ctx)
                .expect("valid")
        })
        .collect()
}

/// Stores a batch of `specs` with `threshold`; returns its id and job ids.
pub async fn submit_batch(
    store: &Arc<dyn JobStore>,
    specs: &[serde_json::Value],
    threshold: f64,
) -> (BatchId, Vec<JobId>) {
    let with_kind: Vec<serde_json::Value> = specs
        .iter()
        .map(|spec| {
            let mut spec = spec.clone();
            spec["kind"] = json!("noop");
            spec
        })
        .collect();
    let spec: BatchSpec = serde_json::from_value(json!({
        "jobs": with_kind, "success_threshold": threshold
    }))
    .expect("a batch spec");
    let batch = spec
        .validate_envelope(TENANT_DEFAULT, at(0))
        .expect("valid");
    let jobs = batch_jobs(batch.id, specs, at(0));
    let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
    let outcome = store
        .submit(Submission {
            tenant: TENANT_DEFAULT.into(),
            jobs,
            batch: Some(batch.clone()),
            idempotency: None,
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .expect("storage works");
    match outcome {
        Ok(SubmitOutcome::Created {
            batch: Some(stored),
            ..
        }) => {
            assert_eq!(stored.id, batch.id);
            assert_eq!(stored.job_ids, ids);
        }
        other => panic!("batch not created: {other:?}"),
    }
    (batch.id, ids)
}

/// Claims every queued job of `default`.
async fn claim_all(store: &Arc<dyn JobStore>) -> Vec<JobId> {
    store
        .claim("default", 1_000, OWNER, at(60_000), at(1))
        .await
        .expect("claimed")
        .into_iter()
        .map(|job| job.id)
        .collect()
}

async fn finish(
    store: &Arc<dyn JobStore>,
    id: JobId,
    outcome: AttemptOutcome,
) -> (JobState, Effects) {
    match store
        .complete(completion(id, 1, OWNER, outcome))
        .await
        .expect("stored")
    {
        CompletionResult::Applied { job, effects } => (job.status, effects),
        CompletionResult::Fenced => panic!("fenced"),
    }
}

fn succeed(n: i64) -> AttemptOutcome {
    AttemptOutcome::Succeeded(json!({"n": n}))
}

fn fail() -> AttemptOutcome {
    AttemptOutcome::Failed {
        error: error("boom", 1, at(50)),
        retry_at: None,
    }
}

async fn batch(store: &Arc<dyn JobStore>, id: BatchId) -> spool::domain::Batch {
    store
        .get_batch(TENANT_DEFAULT, id)
        .await
        .expect("read")
        .expect("exists")
}

pub async fn batch_counts_follow_every_transition_and_the_last_job_decides_the_status(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let specs = vec![json!({}); 4];
    let (id, jobs) = submit_batch(&store, &specs, 0.75).await;
    let stored = batch(&store, id).await;
    assert_eq!((stored.total, stored.counts.queued), (4, 4));
    assert_eq!(stored.status, BatchStatus::Running);

    assert_eq!(claim_all(&store).await.len(), 4);
    assert_eq!(batch(&store, id).await.counts.running, 4);
    for (n, job) in jobs.iter().take(3).enumerate() {
        let (_, effects) = finish(&store, *job, succeed(n as i64)).await;
        assert!(effects.finished_batches.is_empty(), "not finished yet");
    }
    let (_, effects) = finish(&store, jobs[3], fail()).await;
    assert_eq!(
        effects.finished_batches,
        [id],
        "the last job finishes the batch"
    );
    let done = batch(&store, id).await;
    assert_eq!((done.counts.succeeded, done.counts.failed), (3, 1));
    assert_eq!(done.counts.running, 0);
    assert_eq!(done.status, BatchStatus::Succeeded, "3 of 4 meets 0.75");
    assert_eq!(done.finished_at, Some(at(100)));

    let (strict, strict_jobs) = submit_batch(&store, &[json!({}), json!({})], 1.0).await;
    claim_all(&store).await;
    finish(&store, strict_jobs[0], succeed(0)).await;
    finish(&store, strict_jobs[1], fail()).await;
    assert_eq!(batch(&store, strict).await.status, BatchStatus::Failed);
}

pub async fn a_batch_whose_jobs_succeed_together_finishes_once_with_each_result_numbered_once(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let (id, jobs) = submit_batch(&store, &vec![json!({}); 40], 0.5).await;
    assert_eq!(claim_all(&store).await.len(), 40);
    // All at once: a backend may store them in one group or a few.
    let finished = futures::future::join_all(
        jobs.iter()
            .enumerate()
            .map(|(n, job)| finish(&store, *job, succeed(n as i64))),
    )
    .await;
    let reports: Vec<BatchId> = finished
        .into_iter()
        .flat_map(|(state, effects)| {
            assert_eq!(state, JobState::Succeeded);
            effects.finished_batches.into_iter().map(|batch| batch.id)
        })
        .collect();
    assert_eq!(reports, [id], "the batch's end is reported once");
    let done = batch(&store, id).await;
    assert_eq!(done.status, BatchStatus::Succeeded);
    assert_eq!((done.counts.succeeded, done.counts.running), (40, 0));
    let results = store.batch_results(id, 0, 100).await.expect("results");
    let mut seqs: Vec<u64> = results.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<u64>>(),
        "numbered 1..=40, each once"
    );
    let mut indexes: Vec<u32> = results.iter().map(|r| r.index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..40).collect::<Vec<u32>>());
}

pub async fn results_come_in_finishing_order_after_a_cursor(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let (id, jobs) = submit_batch(&store, &vec![json!({}); 3], 1.0).await;
    claim_all(&store).await;
    finish(&store, jobs[2], succeed(2)).await;
    finish(&store, jobs[0], fail()).await;

    let first = store.batch_results(id, 0, 10).await.unwrap();
    let order: Vec<u32> = first.iter().map(|r| r.index).collect();
    assert_eq!(order, [2, 0], "finishing order, not submission order");
    assert_eq!(first[0].result, Some(json!({"n": 2})));
    assert_eq!(first[1].status, JobState::Failed);
    assert_eq!(
        first[1].error.as_ref().map(|e| e.code.as_str()),
        Some("boom")
    );

    let cursor = first[1].seq;
    assert!(
        store
            .batch_results(id, cursor, 10)
            .await
            .unwrap()
            .is_empty()
    );
    finish(&store, jobs[1], succeed(1)).await;
    let rest = store.batch_results(id, cursor, 10).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
    let limited = store.batch_results(id, 0, 1).await.unwrap();
    assert_eq!(limited.len(), 1);
}

pub async fn a_dependent_waits_until_its_dependencies_succeed_and_gets_their_results(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let specs = [json!({}), json!({}), json!({"depends_on": [0, 1]})];
    let (_, jobs) = submit_batch(&store, &specs, 1.0).await;
    assert_eq!(state_of(&store, jobs[2]).await, JobState::Scheduled);
    let claimed = claim_all(&store).await;
    assert_eq!(claimed.len(), 2, "the dependent is not claimable");
    assert!(!claimed.contains(&jobs[2]));
    assert!(
        store
            .promote_due(at(10_000))
            .await
            .unwrap()
            .queues
            .is_empty(),
        "run_at alone does not release a dependent"
    );

    let (_, effects) = finish(&store, jobs[0], succeed(0)).await;
    assert!(effects.ready_queues.is_empty(), "one dependency is left");
    assert_eq!(state_of(&store, jobs[2]).await, JobState::Scheduled);
    let (_, effects) = finish(&store, jobs[1], succeed(1)).await;
    assert_eq!(effects.ready_queues, ["default"]);
    assert_eq!(state_of(&store, jobs[2]).await, JobState::Queued);
    // Claimed with a clock read before the release was stored: it still
    // doesn't look started before its dependency finished (at 100).
    let claimed = store
        .claim("default", 10, OWNER, at(60_000), at(1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].started_at, Some(at(100)));
    assert_eq!(
        claimed[0].run_at,
        at(100),
        "ready when the dependency finished"
    );

    let results = store.dependency_results(&[jobs[1], jobs[0]]).await.unwrap();
    assert_eq!(
        results,
        [
            (jobs[1], Some(json!({"n": 1}))),
            (jobs[0], Some(json!({"n": 0})))
        ]
    );
    let dependent = store
        .get_job(TENANT_DEFAULT, jobs[2])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dependent.depends_on, [jobs[0], jobs[1]]);
}

pub async fn a_failed_dependency_cancels_its_dependents_transitively(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let specs = [
        json!({}),
        json!({"depends_on": [0]}),
        json!({"depends_on": [1]}),
        json!({}),
    ];
    let (id, jobs) = submit_batch(&store, &specs, 1.0).await;
    let claimed = claim_all(&store).await;
    assert_eq!(claimed.len(), 2);
    let (_, effects) = finish(&store, jobs[0], fail()).await;
    let mut cancelled: Vec<JobId> = effects.cancelled.iter().map(|job| job.id).collect();
    cancelled.sort();
    assert_eq!(cancelled, [jobs[1], jobs[2]]);
    for job in &effects.cancelled {
        assert_eq!(job.status, JobState::Cancelled);
        assert_eq!(job.error.as_ref().unwrap().code, "dependency_failed");
    }
    assert!(effects.finished_batches.is_empty(), "jobs[3] still runs");
    let (_, effects) = finish(&store, jobs[3], succeed(3)).await;
    assert_eq!(effects.finished_batches, [id]);
    let done = batch(&store, id).await;
    assert_eq!(
        (
            done.counts.failed,
            done.counts.cancelled,
            done.counts.succeeded
        ),
        (1, 2, 1)
    );
    assert_eq!(store.batch_results(id, 0, 10).await.unwrap().len(), 4);

    // A new job on the failed one is cancelled at once.
    let mut late = crate::conformance::job("default", json!({}), at(200));
    late.depends_on = vec![jobs[0]];
    let outcome = store
        .submit(Submission {
            tenant: TENANT_DEFAULT.into(),
            jobs: vec![late],
            batch: None,
            idempotency: None,
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .unwrap();
    let Ok(SubmitOutcome::Created { jobs: created, .. }) = outcome else {
        panic!("not created: {outcome:?}");
    };
    assert_eq!(created[0].status, JobState::Cancelled);
}

pub async fn cancelling_a_waiting_dependency_cancels_its_dependents(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let (_, jobs) = submit_batch(&store, &[json!({}), json!({"depends_on": [0]})], 1.0).await;
    match store
        .cancel_job(TENANT_DEFAULT, jobs[0], at(5))
        .await
        .unwrap()
    {
        CancelOutcome::Cancelled(_, effects) => {
            assert_eq!(
                effects.cancelled.iter().map(|j| j.id).collect::<Vec<_>>(),
                [jobs[1]]
            );
            assert_eq!(effects.finished_batches.len(), 1);
        }
        other => panic!("not cancelled: {other:?}"),
    }
}

pub async fn unknown_dependencies_are_refused_and_nothing_is_stored(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let missing = JobId::new();
    let mut orphan = crate::conformance::job("default", json!({}), at(0));
    orphan.depends_on = vec![missing];
    let fine = crate::conformance::job("default", json!({}), at(0));
    let outcome = store
        .submit(Submission {
            tenant: TENANT_DEFAULT.into(),
            jobs: vec![fine, orphan],
            batch: None,
            idempotency: None,
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .unwrap();
    assert_eq!(
        outcome.err(),
        Some(SubmitRejection::UnknownDependency {
            job: 1,
            dependency: missing
        })
    );
    let filter = JobFilter {
        limit: 10,
        ..Default::default()
    };
    assert!(
        store
            .list_jobs(TENANT_DEFAULT, &filter)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn cancelling_a_batch_cancels_waiting_jobs_and_stops_running_ones(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let specs = [
        json!({}),
        json!({"delay_ms": 60_000}),
        json!({"depends_on": [0]}),
    ];
    let (id, jobs) = submit_batch(&store, &specs, 1.0).await;
    assert_eq!(claim_all(&store).await, [jobs[0]]);

    let BatchCancelOutcome::Cancelled(cancelled, effects) = store
        .cancel_batch(TENANT_DEFAULT, id, at(10))
        .await
        .unwrap()
    else {
        panic!("not cancelled");
    };
    assert!(cancelled.cancel_requested);
    assert_eq!(cancelled.status, BatchStatus::Running, "a job still runs");
    assert_eq!(cancelled.counts.cancelled, 2);
    assert_eq!(effects.stop, [jobs[0]]);

    let outcome = AttemptOutcome::Cancelled(error("cancelled", 1, at(20)));
    let (_, effects) = finish(&store, jobs[0], outcome).await;
    assert_eq!(effects.finished_batches, [id]);
    assert_eq!(batch(&store, id).await.status, BatchStatus::Cancelled);
    assert!(matches!(
        store
            .cancel_batch(TENANT_DEFAULT, id, at(30))
            .await
            .unwrap(),
        BatchCancelOutcome::AlreadyFinished(_)
    ));
    assert!(matches!(
        store
            .cancel_batch(TENANT_DEFAULT, BatchId::new(), at(30))
            .await
            .unwrap(),
        BatchCancelOutcome::NotFound
    ));
}

pub async fn retries_respect_finished_batches_and_failed_dependencies(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let (_, jobs) = submit_batch(&store, &[json!({})], 1.0).await;
    claim_all(&store).await;
    finish(&store, jobs[0], fail()).await;
    assert!(matches!(
        store
            .retry_job(TENANT_DEFAULT, jobs[0], at(300))
            .await
            .unwrap(),
        RetryOutcome::BatchFinished(_)
    ));

    // Outside batches: a -> b. a fails, b is cancelled.
    let a = crate::conformance::job("default", json!({}), at(400));
    let mut b = crate::conformance::job("default", json!({}), at(400));
    b.depends_on = vec![a.id];
    let (a_id, b_id) = (a.id, b.id);
    crate::conformance::submit(&store, vec![a, b])
        .await
        .expect("stored");
    claim_all(&store).await;
    finish(&store, a_id, fail()).await;
    assert_eq!(state_of(&store, b_id).await, JobState::Cancelled);
    assert!(matches!(
        store.retry_job(TENANT_DEFAULT, b_id, at(500)).await.unwrap(),
        RetryOutcome::DependencyFailed { dependency, .. } if dependency == a_id
    ));
    assert!(matches!(
        store
            .retry_job(TENANT_DEFAULT, a_id, at(500))
            .await
            .unwrap(),
        RetryOutcome::Retried(_)
    ));
    let RetryOutcome::Retried(b) = store
        .retry_job(TENANT_DEFAULT, b_id, at(500))
        .await
        .unwrap()
    else {
        panic!("b was not retried");
    };
    assert_eq!(b.status, JobState::Scheduled, "b waits for a again");
    claim_all(&store).await;
    let mut success = completion(a_id, 1, OWNER, succeed(1));
    success.at = at(600);
    let CompletionResult::Applied { effects, .. } = store.complete(success).await.unwrap() else {
        panic!("fenced");
    };
    assert_eq!(effects.ready_queues, ["default"]);
    assert_eq!(state_of(&store, b_id).await, JobState::Queued);
}

pub async fn prune_keeps_the_jobs_of_a_batch_as_long_as_the_batch(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let (finished, jobs) = submit_batch(&store, &[json!({})], 1.0).await;
    let specs = [json!({}), json!({"delay_ms": 60_000})];
    let (running, running_jobs) = submit_batch(&store, &specs, 1.0).await;
    let claimed = claim_all(&store).await;
    assert_eq!(claimed.len(), 2);
    finish(&store, jobs[0], succeed(0)).await;
    finish(&store, running_jobs[0], succeed(1)).await;

    store.prune(at(1_000), at(0)).await.unwrap();
    assert!(
        store
            .get_batch(TENANT_DEFAULT, finished)
            .await
            .unwrap()
            .is_none()
    );
    assert!(state_of_opt(&store, jobs[0]).await.is_none());
    let kept = batch(&store, running).await;
    assert_eq!(
        kept.job_ids, running_jobs,
        "a running batch keeps its finished jobs"
    );
    assert_eq!(store.batch_results(running, 0, 10).await.unwrap().len(), 1);
}

async fn state_of_opt(store: &Arc<dyn JobStore>, id: JobId) -> Option<JobState> {
    store
        .get_job(TENANT_DEFAULT, id)
        .await
        .unwrap()
        .map(|job| job.status)
}

/// More jobs than one multi-row INSERT holds (SQLite writes them 64 at a
/// time, the rest one by one): every job comes back with what it was
/// submitted with, in its own row, none swapped with a neighbour's.
pub async fn a_batch_larger_than_one_insert_stores_each_job_as_submitted(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 1_000)]).await;
    let specs: Vec<serde_json::Value> = (0..130)
        .map(|n: i64| {
            let mut spec = json!({
                "payload": {"n": n},
                "priority": n % 7,
                "timeout_ms": 1_000 + n,
                "metadata": {"n": n.to_string()},
            });
            if n % 10 == 9 {
                spec["depends_on"] = json!([n - 1]);
            }
            if n % 4 == 0 {
                spec["concurrency_key"] = json!(format!("k{n}"));
                spec["concurrency_limit"] = json!(n + 1);
            }
            spec
        })
        .collect();
    let (batch, ids) = submit_batch(&store, &specs, 1.0).await;
    for (n, id) in ids.iter().enumerate() {
        let job = store
            .get_job(TENANT_DEFAULT, *id)
            .await
            .expect("storage works")
            .expect("the job is stored");
        let n = n as i64;
        assert_eq!(job.payload, json!({"n": n}), "job {n}");
        assert_eq!(i64::from(job.priority), n % 7, "job {n}");
        assert_eq!(job.timeout_ms as i64, 1_000 + n, "job {n}");
        assert_eq!(job.metadata.get("n"), Some(&n.to_string()), "job {n}");
        assert_eq!(job.batch_id, Some(batch), "job {n}");
        let (depends_on, state) = if n % 10 == 9 {
            (vec![ids[n as usize - 1]], JobState::Scheduled)
        } else {
            (Vec::new(), JobState::Queued)
        };
        assert_eq!(job.depends_on, depends_on, "job {n}");
        assert_eq!(job.status, state, "job {n}");
        let key = (n % 4 == 0).then(|| (format!("k{n}"), n as u32 + 1));
        assert_eq!(
            job.concurrency_key.clone().zip(job.concurrency_limit),
            key,
            "job {n}"
        );
    }
}
