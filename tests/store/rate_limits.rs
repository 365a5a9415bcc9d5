//! Rate limits and expiry at claim time: a limited job starts only while its
//! key has budget, passed over (never blocking other keys) otherwise; an
//! expired job is never claimed and ends `cancelled` as `expired`.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{Gcra, JobId, JobState, TENANT_DEFAULT, Timestamp};
use spool::store::JobStore;

use crate::conformance::{OWNER, at, job, state_of, submit_one, with_queues};

fn per_second(rate: u32, burst: u32) -> Gcra {
    Gcra {
        rate,
        per_ms: 1_000,
        burst,
    }
}

/// Creates queue `default` and limit `api`, and submits `specs` at 0, 1, 2… ms.
async fn limited(store: &Arc<dyn JobStore>, gcra: Gcra, specs: &[serde_json::Value]) -> Vec<JobId> {
    with_queues(store, &[("default", 1_000)]).await;
    store
        .put_limit("api", gcra, at(0))
        .await
        .expect("limit stored");
    let mut ids = Vec::new();
    for (n, spec) in specs.iter().enumerate() {
        ids.push(submit_one(store, job("default", spec.clone(), at(n as i64))).await);
    }
    ids
}

fn key(key: &str) -> serde_json::Value {
    json!({"rate_limit": {"name": "api", "key": key}})
}

fn unkeyed() -> serde_json::Value {
    json!({"rate_limit": {"name": "api"}})
}

/// Claims up to `n` jobs at `now`: their ids and when to look again.
async fn claim_at(
    store: &Arc<dyn JobStore>,
    n: u32,
    now: Timestamp,
) -> (Vec<JobId>, Option<Timestamp>) {
    let claimed = store
        .claim_ready("default", n, OWNER, now.plus_ms(60_000), now)
        .await
        .expect("claimed");
    (
        claimed.jobs.iter().map(|job| job.id).collect(),
        claimed.next_eligible_at,
    )
}

pub async fn a_limit_admits_its_burst_then_one_job_per_interval_and_says_when(
    store: Arc<dyn JobStore>,
) {
    let ids = limited(&store, per_second(10, 2), &vec![unkeyed(); 5]).await;
    let (claimed, next) = claim_at(&store, 5, at(1_000)).await;
    assert_eq!(claimed, ids[..2], "the burst of 2, in FIFO order");
    // Two starts at 1 000 ms: the budget is back for one at 1 100 ms.
    assert_eq!(next, Some(at(1_100)));
    let (claimed, next) = claim_at(&store, 5, at(1_099)).await;
    assert!(claimed.is_empty(), "nothing fits before 1 100 ms");
    assert_eq!(next, Some(at(1_100)));
    let (claimed, _) = claim_at(&store, 5, at(1_100)).await;
    assert_eq!(claimed, ids[2..3]);
    // The jobs passed over stay queued, with no attempt spent.
    for id in &ids[3..] {
        let job = store.get_job(TENANT_DEFAULT, *id).await.unwrap().unwrap();
        assert_eq!((job.status, job.attempt), (JobState::Queued, 0));
    }
}

pub async fn a_saturated_key_does_not_hold_up_another_keys_jobs(store: Arc<dyn JobStore>) {
    let ids = limited(
        &store,
        per_second(1, 1),
        &[key("a"), key("a"), key("a"), key("b"), json!({})],
    )
    .await;
    let (claimed, next) = claim_at(&store, 5, at(1_000)).await;
    assert_eq!(claimed, [ids[0], ids[3], ids[4]]);
    assert_eq!(next, Some(at(2_000)));
    let (claimed, _) = claim_at(&store, 5, at(1_500)).await;
    assert!(claimed.is_empty());
    let (claimed, _) = claim_at(&store, 5, at(2_000)).await;
    assert_eq!(claimed, [ids[1]]);
}

pub async fn changing_a_limit_applies_to_the_next_claim(store: Arc<dyn JobStore>) {
    let ids = limited(&store, per_second(1, 5), &vec![unkeyed(); 9]).await;
    let (claimed, _) = claim_at(&store, 8, at(1_000)).await;
    assert_eq!(claimed.len(), 5, "the whole burst");
    // Five starts at 1 s at 1/s: under the old limit one more fits at 2 s.
    let slower = Gcra {
        rate: 1,
        per_ms: 10_000,
        burst: 1,
    };
    let (limit, created) = store.put_limit("api", slower, at(1_500)).await.unwrap();
    assert!(!created);
    assert_eq!((limit.rate, limit.per_ms, limit.burst), (1, 10_000, 1));
    // The keys' debt (5 s left at 1 s a start) counts at 10 s a start, at
    // most one emptied burst of the new limit: 10 s from the change.
    let (claimed, next) = claim_at(&store, 8, at(2_000)).await;
    assert!(claimed.is_empty(), "the lowered limit holds");
    assert_eq!(next, Some(at(11_500)));
    let (claimed, next) = claim_at(&store, 8, at(11_500)).await;
    assert_eq!(claimed, ids[5..6]);
    assert_eq!(next, Some(at(21_500)), "the next one fits 10 s later");
    let (claimed, next) = claim_at(&store, 8, at(12_500)).await;
    assert!(claimed.is_empty(), "10 s apart now, not 1 s");
    assert_eq!(next, Some(at(21_500)));
    // Raised again, the waiting key is free at once.
    store
        .put_limit("api", per_second(1, 5), at(13_000))
        .await
        .unwrap();
    let (claimed, _) = claim_at(&store, 8, at(13_000)).await;
    assert!(!claimed.is_empty(), "a raised limit frees the key now");
    let (limit, _) = store.put_limit("api", slower, at(13_000)).await.unwrap();
    // The same settings again change nothing, `updated_at` included.
    let (again, created) = store.put_limit("api", slower, at(9_000)).await.unwrap();
    assert!(!created);
    assert_eq!(again.updated_at, limit.updated_at);
}

pub async fn a_hold_closes_a_key_until_it_ends(store: Arc<dyn JobStore>) {
    let ids = limited(&store, per_second(100, 10), &[key("a"), key("b")]).await;
    let held = ("api".to_owned(), "a".to_owned());
    store.hold_limit_key(&held, at(5_000)).await.unwrap();
    // A shorter hold later does not cut the first one short.
    store.hold_limit_key(&held, at(3_000)).await.unwrap();
    let (claimed, next) = claim_at(&store, 2, at(1_000)).await;
    assert_eq!(claimed, [ids[1]], "key b is not held");
    assert_eq!(next, Some(at(5_000)));
    let (claimed, _) = claim_at(&store, 2, at(5_000)).await;
    assert_eq!(claimed, [ids[0]]);
    let states = store.limit_keys(std::slice::from_ref(&held)).await.unwrap();
    assert_eq!(states[0].1.held_until_us, at(5_000).as_millis() * 1_000);
}

pub async fn deleting_a_limit_lets_its_jobs_start_unlimited(store: Arc<dyn JobStore>) {
    let ids = limited(&store, per_second(1, 1), &vec![unkeyed(); 3]).await;
    let (claimed, _) = claim_at(&store, 3, at(1_000)).await;
    assert_eq!(claimed.len(), 1);
    assert!(store.delete_limit("api").await.unwrap());
    assert!(!store.delete_limit("api").await.unwrap());
    assert_eq!(store.get_limit("api").await.unwrap(), None);
    let (claimed, next) = claim_at(&store, 3, at(1_001)).await;
    assert_eq!(claimed, ids[1..]);
    assert_eq!(next, None);
}

pub async fn expired_jobs_are_never_claimed_and_end_cancelled_without_an_attempt(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let started = submit_one(
        &store,
        job("default", json!({"expires_after_ms": 1_000}), at(0)),
    )
    .await;
    let claimed = store
        .claim("default", 1, OWNER, at(60_000), at(500))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, started, "claimed before its expiry");
    let waiting = submit_one(
        &store,
        job("default", json!({"expires_after_ms": 1_000}), at(600)),
    )
    .await;
    let later = submit_one(
        &store,
        job("default", json!({"expires_after_ms": 9_000}), at(700)),
    )
    .await;
    assert_eq!(store.next_expiry().await.unwrap(), Some(at(1_600)));
    // Past its expiry, the waiting job is passed over by claims…
    let claimed = store
        .claim("default", 1, OWNER, at(60_000), at(1_600))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, later);
    // …and the expirer cancels it, and only it.
    let (expired, _) = store.expire_due(at(1_700)).await.unwrap();
    assert_eq!(
        expired.iter().map(|job| job.id).collect::<Vec<_>>(),
        [waiting]
    );
    let job = store
        .get_job(TENANT_DEFAULT, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.status, job.attempt), (JobState::Cancelled, 0));
    assert_eq!(
        job.error.map(|error| error.code).as_deref(),
        Some("expired")
    );
    assert_eq!(state_of(&store, started).await, JobState::Running);
    assert_eq!(state_of(&store, later).await, JobState::Running);
    assert_eq!(store.next_expiry().await.unwrap(), None);
    let (again, _) = store.expire_due(at(20_000)).await.unwrap();
    assert!(again.is_empty(), "started jobs never expire");
}
