//! Concurrency keys: a claim takes a keyed job only while fewer running jobs
//! of its tenant hold the key than the job's `concurrency_limit`.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{JobId, TENANT_DEFAULT};
use spool::store::{AttemptOutcome, JobStore, Submission, SubmitOutcome};

use crate::conformance::{OWNER, at, completion, error, job, state_of, submit_one, with_queues};

fn keyed(key: &str, limit: u32) -> serde_json::Value {
    json!({"concurrency_key": key, "concurrency_limit": limit})
}

fn acme(limit: u32) -> serde_json::Value {
    keyed("acme", limit)
}

/// Submits one job per spec to `queue` at 0, 1, 2… ms: FIFO in that order.
async fn submit_all(
    store: &Arc<dyn JobStore>,
    queue: &str,
    specs: &[serde_json::Value],
) -> Vec<JobId> {
    let mut ids = Vec::new();
    for (n, spec) in specs.iter().enumerate() {
        ids.push(submit_one(store, job(queue, spec.clone(), at(n as i64))).await);
    }
    ids
}

/// Creates the queue `default` and submits `specs` to it.
async fn in_default(store: &Arc<dyn JobStore>, specs: &[serde_json::Value]) -> Vec<JobId> {
    with_queues(store, &[("default", 100)]).await;
    submit_all(store, "default", specs).await
}

async fn claim(store: &Arc<dyn JobStore>, queue: &str, limit: u32) -> Vec<JobId> {
    store
        .claim(queue, limit, OWNER, at(60_000), at(1_000))
        .await
        .expect("claimed")
        .into_iter()
        .map(|job| job.id)
        .collect()
}

async fn succeed(store: &Arc<dyn JobStore>, id: JobId) {
    store
        .complete(completion(
            id,
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!({})),
        ))
        .await
        .expect("completed");
}

pub async fn a_keys_limit_holds_within_one_claim_and_across_claims(store: Arc<dyn JobStore>) {
    let ids = in_default(&store, &[acme(2), acme(2), acme(2), acme(2)]).await;
    assert_eq!(claim(&store, "default", 10).await, ids[..2]);
    assert_eq!(claim(&store, "default", 10).await, []);
    assert_eq!(state_of(&store, ids[2]).await.as_str(), "queued");
    // A claim of one job, then another: the second still counts the first.
    succeed(&store, ids[0]).await;
    succeed(&store, ids[1]).await;
    assert_eq!(claim(&store, "default", 1).await, ids[2..3]);
    assert_eq!(claim(&store, "default", 1).await, ids[3..4]);
}

pub async fn a_job_whose_key_is_full_does_not_hold_up_the_jobs_behind_it(store: Arc<dyn JobStore>) {
    let ids = in_default(
        &store,
        &[acme(1), acme(1), json!({}), acme(1), keyed("globex", 1)],
    )
    .await;
    // The second `acme` job is passed over and the plain job behind it taken,
    // even though only two jobs were asked for.
    assert_eq!(claim(&store, "default", 2).await, [ids[0], ids[2]]);
    assert_eq!(claim(&store, "default", 10).await, [ids[4]]);
    assert_eq!(state_of(&store, ids[1]).await.as_str(), "queued");
    assert_eq!(state_of(&store, ids[3]).await.as_str(), "queued");
}

pub async fn an_ended_holder_frees_its_slot_for_the_next_claim(store: Arc<dyn JobStore>) {
    let ids = in_default(&store, &[acme(1), acme(1), acme(1)]).await;
    assert_eq!(claim(&store, "default", 10).await, [ids[0]]);
    assert_eq!(claim(&store, "default", 10).await, []);
    succeed(&store, ids[0]).await;
    assert_eq!(claim(&store, "default", 10).await, [ids[1]]);
    // A failed attempt waiting for its retry holds no slot either.
    let retry_at = Some(at(500_000));
    let failed = AttemptOutcome::Failed {
        error: error("boom", 1, at(100)),
        retry_at,
    };
    store
        .complete(completion(ids[1], 1, OWNER, failed))
        .await
        .expect("completed");
    assert_eq!(state_of(&store, ids[1]).await.as_str(), "scheduled");
    assert_eq!(claim(&store, "default", 10).await, [ids[2]]);
}

pub async fn different_keys_and_tenants_are_counted_apart_and_queues_together(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100), ("other", 100)]).await;
    let ids = submit_all(
        &store,
        "default",
        &[keyed("a", 1), keyed("a", 1), keyed("b", 1)],
    )
    .await;
    // The same key of another tenant is another key.
    let mut foreign = job("default", keyed("a", 1), at(10));
    foreign.tenant = "tenant-2".into();
    let foreign_id = foreign.id;
    let submitted = store
        .submit(Submission {
            tenant: "tenant-2".into(),
            jobs: vec![foreign],
            batch: None,
            idempotency: None,
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .expect("storage works");
    assert!(matches!(submitted, Ok(SubmitOutcome::Created { .. })));
    // Tenants take turns (fair share): the foreign job comes second.
    assert_eq!(
        claim(&store, "default", 10).await,
        [ids[0], foreign_id, ids[2]]
    );
    // The key is full whichever queue its holder runs in.
    let elsewhere = submit_all(&store, "other", &[keyed("a", 1), keyed("c", 1)]).await;
    assert_eq!(claim(&store, "other", 10).await, [elsewhere[1]]);
    succeed(&store, ids[0]).await;
    assert_eq!(claim(&store, "other", 10).await, [elsewhere[0]]);
    assert_eq!(claim(&store, "default", 10).await, []);
}

pub async fn jobs_without_a_key_are_claimed_as_before(store: Arc<dyn JobStore>) {
    let ids = in_default(
        &store,
        &[
            acme(1),
            json!({}),
            json!({"priority": 5}),
            acme(1),
            json!({}),
        ],
    )
    .await;
    // Best priority first, then FIFO; the full key's job is the only one left.
    assert_eq!(claim(&store, "default", 3).await, [ids[2], ids[0], ids[1]]);
    assert_eq!(claim(&store, "default", 3).await, [ids[4]]);
    let plain = store
        .get_job(TENANT_DEFAULT, ids[1])
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(plain.concurrency_key, None);
    assert_eq!(plain.concurrency_limit, None);
}

pub async fn each_job_is_held_to_its_own_limit(store: Arc<dyn JobStore>) {
    let ids = in_default(&store, &[acme(1), acme(1), acme(3), acme(3), acme(3)]).await;
    // One running: a limit-1 job must wait, a limit-3 job may start, and so
    // may one more, which makes three.
    assert_eq!(claim(&store, "default", 1).await, [ids[0]]);
    assert_eq!(claim(&store, "default", 10).await, [ids[2], ids[3]]);
    let read = store
        .get_job(TENANT_DEFAULT, ids[2])
        .await
        .unwrap()
        .expect("exists");
    assert_eq!(read.concurrency_key.as_deref(), Some("acme"));
    assert_eq!(read.concurrency_limit, Some(3));
}
