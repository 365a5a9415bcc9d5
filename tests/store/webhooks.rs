//! Conformance cases for the webhook outbox: rows appear with the state
//! change that ends a job or batch, claims, attempts, give-ups, retention.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{BatchSpec, DeliveryStatus, JobId, TENANT_DEFAULT, Timestamp};
use spool::store::{
    AttemptOutcome, ClaimedWebhook, CompletionResult, JobStore, Submission, SubmitOutcome,
    WebhookAttempt, WebhookOutcome, WebhookOwner,
};

use crate::conformance::{OWNER, at, completion, error, job, submit_one, with_queues};

const HOOK: &str = "https://hooks.example/spool";

async fn claim(store: &Arc<dyn JobStore>, now: Timestamp) -> Vec<ClaimedWebhook> {
    store
        .claim_webhooks(now, 10, now.plus_ms(1_000))
        .await
        .expect("claimed")
}

async fn record(
    store: &Arc<dyn JobStore>,
    id: &str,
    body: &str,
    at: Timestamp,
    outcome: WebhookOutcome,
) {
    store
        .record_webhook(WebhookAttempt {
            id: id.to_owned(),
            body: body.to_owned(),
            at,
            outcome,
        })
        .await
        .expect("recorded");
}

async fn latest_of_job(
    store: &Arc<dyn JobStore>,
    id: JobId,
) -> Option<spool::domain::WebhookDelivery> {
    store
        .latest_webhook(TENANT_DEFAULT, WebhookOwner::Job(id))
        .await
        .expect("read")
}

/// A job with a callback, claimed by OWNER at 1 and ended at 100 with `outcome`.
async fn ended_job(store: &Arc<dyn JobStore>, outcome: AttemptOutcome) -> JobId {
    let id = submit_one(store, job("default", json!({"callback_url": HOOK}), at(0))).await;
    store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .expect("claimed");
    match store
        .complete(completion(id, 1, OWNER, outcome))
        .await
        .expect("stored")
    {
        CompletionResult::Applied { .. } => id,
        CompletionResult::Fenced => panic!("fenced"),
    }
}

pub async fn a_job_with_a_callback_gets_one_webhook_when_it_ends_and_none_before(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let quiet = submit_one(&store, job("default", json!({}), at(0))).await;
    let id = submit_one(&store, job("default", json!({"callback_url": HOOK}), at(0))).await;
    assert_eq!(
        store.next_webhook_due().await.unwrap(),
        None,
        "nothing ended yet"
    );
    assert!(claim(&store, at(10)).await.is_empty());
    assert_eq!(latest_of_job(&store, id).await, None);

    let claimed = store
        .claim("default", 2, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for job_id in [quiet, id] {
        store
            .complete(completion(
                job_id,
                1,
                OWNER,
                AttemptOutcome::Succeeded(json!(1)),
            ))
            .await
            .unwrap();
    }
    assert_eq!(store.next_webhook_due().await.unwrap(), Some(at(100)));
    let hooks = claim(&store, at(100)).await;
    assert_eq!(hooks.len(), 1, "only the job with a callback: {hooks:?}");
    let hook = &hooks[0];
    assert!(
        hook.id.starts_with("msg_") && hook.id.len() == 36,
        "{}",
        hook.id
    );
    assert_eq!(hook.owner, WebhookOwner::Job(id));
    assert_eq!(hook.event, "job.succeeded");
    assert_eq!(hook.url, HOOK);
    assert_eq!(hook.body, None);
    assert_eq!(hook.attempts, 0);
    assert_eq!(hook.created_at, at(100));
    assert!(claim(&store, at(101)).await.is_empty(), "held by the claim");

    let delivery = latest_of_job(&store, id).await.expect("a delivery");
    assert_eq!(delivery.id, hook.id);
    assert_eq!(delivery.event, "job.succeeded");
    assert_eq!(delivery.status, DeliveryStatus::Pending);
    assert_eq!(delivery.attempts, 0);
}

pub async fn attempts_are_recorded_and_the_first_body_is_kept(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let id = ended_job(
        &store,
        AttemptOutcome::Failed {
            error: error("boom", 1, at(100)),
            retry_at: None,
        },
    )
    .await;
    let hook = claim(&store, at(100)).await.remove(0);
    assert_eq!(hook.event, "job.failed");
    let retry = |ms: i64| WebhookOutcome::Retry {
        error: "HTTP 500".into(),
        next_attempt_at: at(ms),
    };
    record(&store, &hook.id, "first body", at(110), retry(200)).await;

    let delivery = latest_of_job(&store, id).await.unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Pending);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(delivery.last_attempt_at, Some(at(110)));
    assert_eq!(delivery.next_attempt_at, Some(at(200)));
    assert!(claim(&store, at(150)).await.is_empty(), "not due yet");
    assert_eq!(store.next_webhook_due().await.unwrap(), Some(at(200)));

    let again = claim(&store, at(200)).await.remove(0);
    assert_eq!(again.id, hook.id, "the same webhook-id on every attempt");
    assert_eq!(again.body.as_deref(), Some("first body"));
    assert_eq!(again.attempts, 1);
    record(&store, &hook.id, "second body", at(210), retry(300)).await;
    let third = claim(&store, at(300)).await.remove(0);
    assert_eq!(
        third.body.as_deref(),
        Some("first body"),
        "the body never changes"
    );

    record(
        &store,
        &hook.id,
        "third body",
        at(310),
        WebhookOutcome::Delivered,
    )
    .await;
    let delivery = latest_of_job(&store, id).await.unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Delivered);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(delivery.delivered_at, Some(at(310)));
    assert_eq!(delivery.next_attempt_at, None);
    assert_eq!(store.next_webhook_due().await.unwrap(), None);
    assert!(claim(&store, at(10_000)).await.is_empty());
}

pub async fn a_failed_delivery_is_never_claimed_again(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let id = ended_job(&store, AttemptOutcome::Succeeded(json!(null))).await;
    let hook = claim(&store, at(100)).await.remove(0);
    record(
        &store,
        &hook.id,
        "body",
        at(120),
        WebhookOutcome::Failed {
            error: "HTTP 410: gone".into(),
        },
    )
    .await;
    let delivery = latest_of_job(&store, id).await.unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Failed);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.last_error.as_deref(), Some("HTTP 410: gone"));
    assert!(claim(&store, at(1_000_000)).await.is_empty());
    assert_eq!(store.next_webhook_due().await.unwrap(), None);
}

pub async fn a_lapsed_claim_is_claimed_again_and_an_exclusive_start_releases_claims(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    ended_job(&store, AttemptOutcome::Succeeded(json!(null))).await;
    let hook = store
        .claim_webhooks(at(100), 10, at(150))
        .await
        .unwrap()
        .remove(0);
    assert!(
        store
            .claim_webhooks(at(140), 10, at(190))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_webhook_due().await.unwrap(),
        Some(at(150)),
        "due again when the claim lapses"
    );
    let again = store
        .claim_webhooks(at(151), 10, at(100_000))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, hook.id);

    // The claimer died; its successor, the store's only user, starts.
    store.rescue(at(200), Some("successor")).await.unwrap();
    let after_start = store
        .claim_webhooks(at(201), 10, at(100_000))
        .await
        .unwrap();
    assert_eq!(after_start.len(), 1, "released at an exclusive start");
    assert_eq!(after_start[0].id, hook.id);
}

pub async fn cancelled_and_cascaded_jobs_get_their_webhooks(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let waiting = submit_one(
        &store,
        job(
            "default",
            json!({"callback_url": HOOK, "delay_ms": 60_000}),
            at(0),
        ),
    )
    .await;
    store
        .cancel_job(TENANT_DEFAULT, waiting, at(5))
        .await
        .unwrap();

    let dependency = submit_one(&store, job("default", json!({}), at(0))).await;
    let dependent = submit_one(
        &store,
        job(
            "default",
            json!({"callback_url": HOOK, "depends_on": [dependency.to_string()]}),
            at(0),
        ),
    )
    .await;
    store
        .claim("default", 1, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    store
        .complete(completion(
            dependency,
            1,
            OWNER,
            AttemptOutcome::Failed {
                error: error("boom", 1, at(100)),
                retry_at: None,
            },
        ))
        .await
        .unwrap();

    let mut hooks = claim(&store, at(1_000)).await;
    hooks.sort_by_key(|hook| hook.created_at);
    let seen: Vec<(WebhookOwner, &str)> = hooks
        .iter()
        .map(|hook| (hook.owner, hook.event.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (WebhookOwner::Job(waiting), "job.cancelled"),
            (WebhookOwner::Job(dependent), "job.cancelled"),
        ]
    );
}

pub async fn a_batch_webhook_is_written_once_when_the_batch_finishes(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let spec: BatchSpec = serde_json::from_value(json!({
        "jobs": [{"kind": "noop"}, {"kind": "noop"}],
        "callback_url": HOOK,
    }))
    .unwrap();
    let batch = spec.validate_envelope(TENANT_DEFAULT, at(0)).unwrap();
    let jobs: Vec<_> = (0..2)
        .map(|index| {
            let mut new = job("default", json!({}), at(0));
            new.batch_id = Some(batch.id);
            new.batch_index = Some(index);
            new
        })
        .collect();
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
        .unwrap();
    assert!(matches!(outcome, Ok(SubmitOutcome::Created { .. })));
    store
        .claim("default", 2, OWNER, at(30_000), at(1))
        .await
        .unwrap();
    store
        .complete(completion(
            ids[0],
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!(0)),
        ))
        .await
        .unwrap();
    assert!(
        claim(&store, at(1_000)).await.is_empty(),
        "the batch still runs"
    );
    assert_eq!(
        store
            .latest_webhook(TENANT_DEFAULT, WebhookOwner::Batch(batch.id))
            .await
            .unwrap(),
        None
    );
    store
        .complete(completion(
            ids[1],
            1,
            OWNER,
            AttemptOutcome::Succeeded(json!(1)),
        ))
        .await
        .unwrap();
    let hooks = claim(&store, at(1_000)).await;
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].owner, WebhookOwner::Batch(batch.id));
    assert_eq!(hooks[0].event, "batch.finished");
    let delivery = store
        .latest_webhook(TENANT_DEFAULT, WebhookOwner::Batch(batch.id))
        .await
        .unwrap()
        .expect("the batch's delivery");
    assert_eq!(delivery.id, hooks[0].id);

    record(
        &store,
        &hooks[0].id,
        "body",
        at(1_010),
        WebhookOutcome::Delivered,
    )
    .await;
    assert!(
        claim(&store, at(100_000)).await.is_empty(),
        "delivered once"
    );
}

pub async fn prune_deletes_webhooks_past_the_retention(store: Arc<dyn JobStore>) {
    with_queues(&store, &[("default", 100)]).await;
    let id = ended_job(&store, AttemptOutcome::Succeeded(json!(null))).await;
    let hook = claim(&store, at(100)).await.remove(0);
    record(&store, &hook.id, "body", at(110), WebhookOutcome::Delivered).await;
    store.prune(at(100), at(0)).await.unwrap();
    assert!(
        latest_of_job(&store, id).await.is_some(),
        "not older than the retention"
    );
    store.prune(at(101), at(0)).await.unwrap();
    assert_eq!(latest_of_job(&store, id).await, None);
}
