//! Outcomes stored at the same moment: a backend may store them together
//! (PostgreSQL does, in one transaction), but each keeps its own answer,
//! and each slot an outcome refills gets its own job.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{JobId, JobState, QueueConfig, TENANT_DEFAULT};
use spool::store::{AttemptOutcome, CompletionResult, JobStore, Refill, SubmitOutcome};

use crate::conformance::{OWNER, at, completion, error, job, submission, submit_one, with_queues};

async fn read(store: &Arc<dyn JobStore>, id: JobId) -> spool::domain::Job {
    store
        .get_job(TENANT_DEFAULT, id)
        .await
        .expect("read")
        .expect("the job exists")
}

/// Six jobs queued in `default`, in submission order.
async fn six_queued(store: &Arc<dyn JobStore>) -> Vec<JobId> {
    with_queues(store, &[("default", 100)]).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(submit_one(store, job("default", json!({"payload": {"n": n}}), at(n))).await);
    }
    ids
}

pub async fn outcomes_stored_at_the_same_moment_each_get_their_own_answer(
    store: Arc<dyn JobStore>,
) {
    let ids = six_queued(&store).await;
    let claimed = store
        .claim("default", 10, OWNER, at(60_000), at(10))
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 6);

    let failed = AttemptOutcome::Failed {
        error: error("boom", 1, at(50)),
        retry_at: None,
    };
    let completions = [
        completion(ids[0], 1, OWNER, AttemptOutcome::Succeeded(json!({"r": 0}))),
        completion(ids[1], 1, OWNER, failed),
        // Another attempt's and another owner's writes are fenced off,
        // whatever else is stored with them.
        completion(ids[2], 2, OWNER, AttemptOutcome::Succeeded(json!({"r": 2}))),
        completion(
            ids[3],
            1,
            "someone-else",
            AttemptOutcome::Succeeded(json!({"r": 3})),
        ),
        completion(ids[4], 1, OWNER, AttemptOutcome::Released),
        completion(ids[5], 1, OWNER, AttemptOutcome::Succeeded(json!({"r": 5}))),
    ];
    let answers = futures::future::join_all(
        completions
            .iter()
            .map(|completion| store.complete(completion.clone())),
    )
    .await;
    let answered: Vec<Option<(JobId, JobState)>> = answers
        .into_iter()
        .map(|answer| match answer.expect("stored") {
            CompletionResult::Applied { job, .. } => Some((job.id, job.status)),
            CompletionResult::Fenced => None,
        })
        .collect();
    assert_eq!(
        answered,
        [
            Some((ids[0], JobState::Succeeded)),
            Some((ids[1], JobState::Failed)),
            None,
            None,
            Some((ids[4], JobState::Queued)),
            Some((ids[5], JobState::Succeeded)),
        ]
    );

    assert_eq!(read(&store, ids[0]).await.result, Some(json!({"r": 0})));
    assert_eq!(read(&store, ids[5]).await.result, Some(json!({"r": 5})));
    assert_eq!(read(&store, ids[1]).await.status, JobState::Failed);
    for fenced in [ids[2], ids[3]] {
        let job = read(&store, fenced).await;
        assert_eq!((job.status, job.result), (JobState::Running, None));
    }
    let released = read(&store, ids[4]).await;
    assert_eq!((released.status, released.attempt), (JobState::Queued, 0));
}

/// What a refill asks for: a claim of one job of `default` for `OWNER`.
fn refill(now_ms: i64) -> Refill {
    Refill {
        queue: "default".into(),
        lease_until: at(60_000),
        now: at(now_ms),
    }
}

pub async fn outcomes_that_refill_their_slots_hand_each_waiting_job_to_one_of_them(
    store: Arc<dyn JobStore>,
) {
    let ids = six_queued(&store).await;
    let claimed = store
        .claim("default", 3, OWNER, at(60_000), at(10))
        .await
        .expect("claimed");
    assert_eq!(
        claimed.iter().map(|job| job.id).collect::<Vec<_>>(),
        ids[..3]
    );

    let success = |id| completion(id, 1, OWNER, AttemptOutcome::Succeeded(json!({"ok": true})));
    // A stale write (another attempt's, to a job that ends in the same
    // group) and three ends at the same moment: four requests for the three
    // jobs still waiting.
    let completions = [
        completion(ids[0], 2, OWNER, AttemptOutcome::Succeeded(json!({}))),
        success(ids[0]),
        success(ids[1]),
        success(ids[2]),
    ];
    let answers = futures::future::join_all(
        completions
            .iter()
            .map(|completion| store.complete_and_refill(completion.clone(), refill(20))),
    )
    .await;
    let mut handed = Vec::new();
    for (n, answer) in answers.into_iter().enumerate() {
        let (result, claimed) = answer.expect("stored");
        match result {
            CompletionResult::Applied { job, .. } => {
                assert_eq!((job.id, job.status), (ids[n - 1], JobState::Succeeded));
            }
            CompletionResult::Fenced => assert_eq!(n, 0, "only the stale write is fenced"),
        }
        assert!(claimed.jobs.len() <= 1, "one slot, one job: {claimed:?}");
        handed.extend(claimed.jobs.into_iter().map(|job| job.id));
    }
    handed.sort();
    assert_eq!(handed, ids[3..], "each waiting job went to one slot");
    for id in &ids[3..] {
        let job = read(&store, *id).await;
        assert_eq!((job.status, job.attempt), (JobState::Running, 1));
    }

    // Nothing waits now: a refill takes nothing, and its end still stands.
    let (result, claimed) = store
        .complete_and_refill(success(ids[3]), refill(30))
        .await
        .expect("stored");
    assert!(matches!(result, CompletionResult::Applied { .. }));
    assert!(claimed.jobs.is_empty(), "{claimed:?}");
    assert_eq!(read(&store, ids[3]).await.status, JobState::Succeeded);
}

pub async fn a_refill_takes_nothing_from_a_queue_paused_in_the_store(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let first = submit_one(&store, job("default", json!({}), at(1))).await;
    let waiting = submit_one(&store, job("default", json!({}), at(2))).await;
    let claimed = store
        .claim("default", 1, OWNER, at(60_000), at(10))
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 1);
    let mut paused = QueueConfig::new("default");
    paused.capacity = 100;
    paused.paused = true;
    store.upsert_queue(&paused).await.expect("paused");

    let end = completion(first, 1, OWNER, AttemptOutcome::Succeeded(json!({})));
    let (result, claimed) = store
        .complete_and_refill(end, refill(20))
        .await
        .expect("stored");
    assert!(matches!(result, CompletionResult::Applied { .. }));
    assert!(claimed.jobs.is_empty(), "{claimed:?}");
    assert_eq!(read(&store, waiting).await.status, JobState::Queued);
}

/// `submit_and_claim` with `job`, as `OWNER` for a slot of its queue.
async fn submit_claiming(
    store: &Arc<dyn JobStore>,
    job: spool::domain::NewJob,
) -> (JobId, Vec<spool::domain::Job>) {
    let id = job.id;
    let slot = Refill {
        queue: job.queue.clone(),
        ..refill(10)
    };
    let (outcome, claimed) = store
        .submit_and_claim(submission(TENANT_DEFAULT, vec![job]), slot, OWNER)
        .await
        .expect("storage works");
    assert!(
        matches!(outcome, Ok(SubmitOutcome::Created { .. })),
        "{outcome:?}"
    );
    (id, claimed.jobs)
}

/// A submission's own claim takes its job only when nothing else in its
/// queue waits (the job any claim would take): never a job that another
/// waits behind, never one with a concurrency key. A backend may claim
/// nothing at all (then the dispatcher does); SQLite claims, which
/// `a_submission_to_an_idle_queue_is_claimed_by_its_own_write` holds to.
pub async fn a_submission_claims_its_own_job_only_when_nothing_else_in_its_queue_waits(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let (first, claimed) = submit_claiming(&store, job("default", json!({}), at(1))).await;
    let claimed_first = !claimed.is_empty();
    if claimed_first {
        let ids: Vec<JobId> = claimed.iter().map(|job| job.id).collect();
        assert_eq!(ids, [first]);
        let running = read(&store, first).await;
        assert_eq!((running.status, running.attempt), (JobState::Running, 1));
        assert_eq!(running.started_at, Some(at(10)));
        // Leased to OWNER: another's outcome is fenced off, OWNER's stands.
        let theirs = completion(
            first,
            1,
            "someone-else",
            AttemptOutcome::Succeeded(json!({})),
        );
        let fenced = store.complete(theirs).await.expect("stored");
        assert!(matches!(fenced, CompletionResult::Fenced), "{fenced:?}");
        let ours = completion(first, 1, OWNER, AttemptOutcome::Succeeded(json!({})));
        let applied = store.complete(ours).await.expect("stored");
        assert!(matches!(applied, CompletionResult::Applied { .. }));
    }
    // A job already waits: the next submission's claim takes nothing (the
    // dispatcher serves a backlog in claim order).
    let waiting = submit_one(&store, job("default", json!({}), at(2))).await;
    let (behind, claimed) = submit_claiming(&store, job("default", json!({}), at(3))).await;
    assert!(claimed.is_empty(), "{claimed:?}");
    assert_eq!(read(&store, waiting).await.status, JobState::Queued);
    assert_eq!(read(&store, behind).await.status, JobState::Queued);
    let queue = store
        .get_queue("default")
        .await
        .expect("read")
        .expect("the queue exists");
    // The first job ended above when it was claimed, else it waits too.
    let queued = 2 + u64::from(!claimed_first);
    assert_eq!(
        (queue.counts.queued, queue.counts.running),
        (queued, 0),
        "{queue:?}"
    );
    // A keyed job is never claimed this way, even alone in its queue.
    with_queues(&store, &[("keyed", 100)]).await;
    let (_, claimed) = submit_claiming(
        &store,
        job(
            "keyed",
            json!({"concurrency_key": "k", "concurrency_limit": 1}),
            at(4),
        ),
    )
    .await;
    assert!(claimed.is_empty(), "{claimed:?}");
}

/// For a backend that claims on submission (SQLite): an idle queue's job
/// is claimed by its own write.
pub async fn assert_an_idle_queues_submission_is_claimed(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let (id, claimed) = submit_claiming(&store, job("default", json!({}), at(1))).await;
    let ids: Vec<JobId> = claimed.iter().map(|job| job.id).collect();
    assert_eq!(ids, [id]);
    assert_eq!(read(&store, id).await.status, JobState::Running);
}
