//! Fair share: a claim serves the tenants with ready jobs in a queue
//! round-robin, each tenant's jobs by priority then FIFO.

use std::sync::Arc;

use serde_json::json;
use spool::domain::JobId;
use spool::store::{JobStore, Submission, SubmitOutcome};

use crate::conformance::{OWNER, at, job, with_queues};

/// Submits one job per spec for `tenant` to `default`, the n-th at `start + n` ms.
async fn submit_for(
    store: &Arc<dyn JobStore>,
    tenant: &str,
    start: i64,
    specs: &[serde_json::Value],
) -> Vec<JobId> {
    let jobs: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(n, spec)| {
            let mut new = job("default", spec.clone(), at(start + n as i64));
            new.tenant = tenant.to_owned();
            new
        })
        .collect();
    let ids = jobs.iter().map(|job| job.id).collect();
    let submitted = store
        .submit(Submission {
            tenant: tenant.to_owned(),
            jobs,
            batch: None,
            idempotency: None,
            redactor: Default::default(),
            limit_pending: false,
        })
        .await
        .expect("storage works");
    assert!(
        matches!(submitted, Ok(SubmitOutcome::Created { .. })),
        "not created: {submitted:?}"
    );
    ids
}

async fn claim(store: &Arc<dyn JobStore>, limit: u32) -> Vec<JobId> {
    store
        .claim("default", limit, OWNER, at(600_000), at(100_000))
        .await
        .expect("claimed")
        .into_iter()
        .map(|job| job.id)
        .collect()
}

pub async fn claims_serve_tenants_round_robin_then_priority_then_fifo(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let a = submit_for(
        &store,
        "a",
        0,
        &[json!({}), json!({}), json!({"priority": 5})],
    )
    .await;
    let b = submit_for(&store, "b", 10, &[json!({}), json!({})]).await;
    let c = submit_for(&store, "c", 20, &[json!({})]).await;
    assert_eq!(pending(&store).await, [3, 2, 1]);
    // One claim of every job: a round takes each tenant's best job.
    assert_eq!(
        claim(&store, 10).await,
        [a[2], b[0], c[0], a[0], b[1], a[1]]
    );
    // Each tenant's count of waiting jobs lost its own claimed jobs.
    assert_eq!(pending(&store).await, [0, 0, 0]);

    // Claims of one job each: the turn passes from tenant to tenant, even
    // though `a`'s jobs are older and one has a better priority.
    let a = submit_for(
        &store,
        "a",
        30,
        &[json!({"priority": 9}), json!({}), json!({})],
    )
    .await;
    let b = submit_for(&store, "b", 40, &[json!({}), json!({})]).await;
    assert_eq!(pending(&store).await, [3, 2, 0]);
    let mut claimed = Vec::new();
    for _ in 0..5 {
        claimed.extend(claim(&store, 1).await);
    }
    // The last claim above served `a`, so `b` comes first now.
    assert_eq!(claimed, [b[0], a[0], b[1], a[1], a[2]]);
    assert_eq!(claim(&store, 1).await, []);
    assert_eq!(pending(&store).await, [0, 0, 0]);
}

/// Tenants `a`, `b` and `c`'s counts of waiting jobs.
async fn pending(store: &Arc<dyn JobStore>) -> Vec<u64> {
    let mut counts = Vec::new();
    for tenant in ["a", "b", "c"] {
        counts.push(store.tenant_pending(tenant).await.expect("counted"));
    }
    counts
}

pub async fn a_tenant_behind_10_000_jobs_of_another_starts_within_20_claims(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 20_000)]).await;
    let backlog = vec![json!({}); 10_000];
    submit_for(&store, "a", 0, &backlog).await;
    let first = claim(&store, 4).await;
    assert_eq!(first.len(), 4);
    let b: Vec<JobId> = submit_for(&store, "b", 20_000, &vec![json!({}); 10]).await;
    let mut started_b = Vec::new();
    for _ in 0..20 {
        started_b.extend(
            claim(&store, 1)
                .await
                .into_iter()
                .filter(|id| b.contains(id)),
        );
    }
    assert_eq!(
        started_b, b,
        "all of b's jobs start, in order, within 20 claims"
    );
}

pub async fn a_tenants_full_key_passes_the_turn_without_holding_up_another_tenant(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let keyed = json!({"concurrency_key": "k", "concurrency_limit": 1});
    let a = submit_for(&store, "a", 0, &[keyed.clone(), keyed.clone(), keyed]).await;
    let b = submit_for(&store, "b", 10, &[json!({}), json!({}), json!({})]).await;
    // `a`'s key has room for one: after its one job, `b` takes every slot.
    assert_eq!(claim(&store, 4).await, [a[0], b[0], b[1], b[2]]);
    assert_eq!(claim(&store, 4).await, []);
}

pub async fn a_queued_jobs_position_counts_the_rounds_before_it(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let a = submit_for(&store, "a", 0, &vec![json!({}); 5]).await;
    let b = submit_for(&store, "b", 10, &[json!({}), json!({})]).await;
    let position = |tenant: &'static str, id: JobId| {
        let store = store.clone();
        async move {
            let job = store.get_job(tenant, id).await.unwrap().expect("exists");
            store.queue_position(&job).await.expect("position")
        }
    };
    // `b`'s second job waits for one round: `b`'s first and one of `a`'s.
    assert_eq!(position("b", b[1]).await, 2);
    // `a`'s fourth waits for three rounds, in which `b` has only two jobs.
    assert_eq!(position("a", a[3]).await, 5);
    assert_eq!(position("a", a[0]).await, 0);
}
