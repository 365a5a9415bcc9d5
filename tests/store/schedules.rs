//! Schedules in the store: each fire time makes one job, in the transaction that advances its schedule, whoever fires it and however often.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{
    FireOutcome, JobState, Schedule, ScheduleSpec, TENANT_DEFAULT, Timestamp, fire_key,
};
use spool::store::{FireAction, FireRequest, FireResult, JobStore, PutOutcome, SchedulePut};

use super::conformance::{all_jobs, at, job, with_queues};

/// Stores a schedule of `body` (a PUT's body) as of `now`.
async fn put(store: &Arc<dyn JobStore>, id: &str, body: serde_json::Value, now: Timestamp) {
    if store.get_queue("default").await.expect("read").is_none() {
        with_queues(store, &[("default", 1_000)]).await;
    }
    let spec: ScheduleSpec = serde_json::from_value(body).expect("a schedule spec");
    let config = spec.validate(id, TENANT_DEFAULT).expect("valid");
    let timing = config
        .timing(config.start_at.unwrap_or(now))
        .expect("a cadence");
    let outcome = store
        .put_schedule(SchedulePut {
            next_fire_at: timing.next_after(now),
            config,
            expected_revision: None,
            at: now,
        })
        .await
        .expect("storage works");
    assert_eq!(outcome, PutOutcome::Created);
}

/// The pass the engine's firing loop makes over `schedule` at `now`.
fn request(schedule: &Schedule, now: Timestamp) -> FireRequest {
    let id = schedule.config.id.clone();
    FireRequest::pass(schedule, now, 1_000, |fire_at| FireAction::Submit {
        job: Box::new(job("default", json!({"key": fire_key(&id, fire_at)}), now)),
        outcome: FireOutcome::Fired,
    })
    .expect("a cadence")
    .expect("a due schedule")
}

/// Fires every schedule due at `now`; the jobs made.
async fn fire_due(store: &Arc<dyn JobStore>, now: Timestamp) -> usize {
    let mut made = 0;
    for schedule in store.due_schedules(now, 100).await.expect("due") {
        if let FireResult::Done(fired) = store
            .fire_schedule(request(&schedule, now))
            .await
            .expect("storage works")
        {
            made += fired.jobs.len();
        }
    }
    made
}

async fn outcomes(store: &Arc<dyn JobStore>, id: &str) -> Vec<FireOutcome> {
    let mut fires = store
        .schedule_fires(id, None, 1_000)
        .await
        .expect("history");
    fires.reverse();
    fires.into_iter().map(|fire| fire.outcome).collect()
}

pub async fn firing_at_an_injected_now_advances_and_makes_one_job_per_fire_time(
    store: Arc<dyn JobStore>,
) {
    put(
        &store,
        "every-minute",
        json!({"every_ms": 60_000, "job": {"kind": "noop"}}),
        at(0),
    )
    .await;
    assert_eq!(fire_due(&store, at(59_999)).await, 0, "nothing due yet");
    assert_eq!(fire_due(&store, at(60_000)).await, 1);
    // The same instant again: the fire time was handled, nothing is due.
    assert_eq!(fire_due(&store, at(60_000)).await, 0);
    assert_eq!(fire_due(&store, at(120_500)).await, 1);
    let schedule = store
        .get_schedule("every-minute")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(schedule.next_fire_at, Some(at(180_000)));
    let jobs = all_jobs(&store).await;
    assert_eq!(jobs.len(), 2);
    assert_eq!(schedule.last_job_id, Some(jobs[0].id));
    let keys: Vec<String> = jobs.iter().filter_map(|job| job.key.clone()).collect();
    assert_eq!(
        keys,
        [
            fire_key("every-minute", at(120_000)),
            fire_key("every-minute", at(60_000))
        ]
    );
    assert_eq!(
        outcomes(&store, "every-minute").await,
        [FireOutcome::Fired, FireOutcome::Fired]
    );
}

pub async fn two_firings_of_one_due_schedule_make_one_job(store: Arc<dyn JobStore>) {
    put(
        &store,
        "raced",
        json!({"every_ms": 1_000, "job": {"kind": "noop"}}),
        at(0),
    )
    .await;
    for second in 1..=5 {
        let now = at(second * 1_000);
        let due = store.due_schedules(now, 10).await.expect("due");
        assert_eq!(due.len(), 1);
        // Two instances that read the same due fire time fire it at once.
        let (a, b) = tokio::join!(
            store.fire_schedule(request(&due[0], now)),
            store.fire_schedule(request(&due[0], now)),
        );
        let made: usize = [a, b]
            .into_iter()
            .map(|result| match result.expect("storage works") {
                FireResult::Done(fired) => fired.jobs.len(),
                FireResult::Stale | FireResult::Busy => 0,
            })
            .sum();
        assert_eq!(made, 1, "fire time {second}");
    }
    assert_eq!(all_jobs(&store).await.len(), 5);
    assert_eq!(outcomes(&store, "raced").await.len(), 5);
}

pub async fn after_ten_minutes_of_downtime_skip_latest_and_all_catch_up_0_1_and_every_missed_fire(
    store: Arc<dyn JobStore>,
) {
    for policy in ["skip", "latest", "all"] {
        let body = json!({"every_ms": 60_000, "catch_up": policy, "job": {"kind": "noop"}});
        put(&store, policy, body, at(0)).await;
    }
    // Down from just after 0 to 10 min 30 s: ten fire times were missed.
    let made = fire_due(&store, at(630_000)).await;
    let jobs = all_jobs(&store).await;
    assert_eq!(made, jobs.len());
    let count = |policy: &str| {
        jobs.iter()
            .filter(|job| {
                job.key
                    .as_deref()
                    .is_some_and(|key| key.starts_with(&format!("schedule:{policy}:")))
            })
            .count()
    };
    assert_eq!(count("skip"), 0);
    assert_eq!(count("latest"), 1);
    assert_eq!(count("all"), 10);
    assert_eq!(outcomes(&store, "skip").await, [FireOutcome::Missed; 10]);
    let latest = outcomes(&store, "latest").await;
    assert_eq!(latest[..9], [FireOutcome::Missed; 9]);
    assert_eq!(latest[9], FireOutcome::Fired);
    assert_eq!(outcomes(&store, "all").await, [FireOutcome::Fired; 10]);
    // Each goes on with its next fire time after now.
    for policy in ["skip", "latest", "all"] {
        let schedule = store
            .get_schedule(policy)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(schedule.next_fire_at, Some(at(660_000)));
    }
}

pub async fn overlap_skip_records_a_skipped_fire_while_the_previous_job_is_active(
    store: Arc<dyn JobStore>,
) {
    let body = json!({"every_ms": 60_000, "overlap": "skip", "job": {"kind": "noop"}});
    put(&store, "skipping", body, at(0)).await;
    assert_eq!(fire_due(&store, at(60_000)).await, 1);
    // The first job is still queued at the next fire time.
    assert_eq!(fire_due(&store, at(120_000)).await, 0);
    let fires = store
        .schedule_fires("skipping", None, 10)
        .await
        .expect("history");
    assert_eq!(fires[0].outcome, FireOutcome::Skipped);
    assert!(
        fires[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("still queued"))
    );
    // Once it ended, the next fire time fires again.
    let first = all_jobs(&store).await[0].id;
    store
        .cancel_job(TENANT_DEFAULT, first, at(130_000))
        .await
        .expect("cancelled");
    assert_eq!(fire_due(&store, at(180_000)).await, 1);
    assert_eq!(
        outcomes(&store, "skipping").await,
        [FireOutcome::Fired, FireOutcome::Skipped, FireOutcome::Fired]
    );
}

pub async fn overlap_cancel_previous_cancels_the_active_job_then_fires(store: Arc<dyn JobStore>) {
    let body = json!({"every_ms": 60_000, "overlap": "cancel_previous", "job": {"kind": "noop"}});
    put(&store, "replacing", body, at(0)).await;
    assert_eq!(fire_due(&store, at(60_000)).await, 1);
    assert_eq!(fire_due(&store, at(120_000)).await, 1);
    let jobs = all_jobs(&store).await;
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1].status, JobState::Cancelled, "the first one");
    assert_eq!(jobs[0].status, JobState::Queued);
}

pub async fn a_refused_admission_is_recorded_and_the_schedule_advances(store: Arc<dyn JobStore>) {
    let mut tiny = spool::domain::QueueConfig::new("default");
    tiny.capacity = 1;
    store.upsert_queue(&tiny).await.expect("queue stored");
    put(
        &store,
        "crowded",
        json!({"every_ms": 60_000, "job": {"kind": "noop"}}),
        at(0),
    )
    .await;
    assert_eq!(fire_due(&store, at(60_000)).await, 1);
    assert_eq!(fire_due(&store, at(120_000)).await, 0);
    let fires = store
        .schedule_fires("crowded", None, 10)
        .await
        .expect("history");
    assert_eq!(fires[0].outcome, FireOutcome::Refused);
    assert!(
        fires[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("queue_full"))
    );
    let schedule = store
        .get_schedule("crowded")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(schedule.next_fire_at, Some(at(180_000)));
    assert_eq!(all_jobs(&store).await.len(), 1);
}
