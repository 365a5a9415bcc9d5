//! Shared mode, what reaches clients: events, long-polls and webhooks of
//! jobs another instance admitted or ran, and replace, concurrency keys and
//! queues that hold across the three instances of one service.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::cluster::{Cluster, answer, pid_job, pid_of};
use crate::events::EventStream;
use crate::helpers::{TEST_WEBHOOK_SECRET, job_ids, millis};
use crate::webhooks::{Receiver, Reply, summary, verifies};

/// How long after an end stored on another instance a long-poll may answer.
const PROMPT_MS: i64 = 1_500;

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

/// An event stream opened through `instance`.
async fn open_stream(cluster: &Cluster, instance: usize, path: &str) -> EventStream {
    let response = cluster
        .client
        .get(cluster.instances[instance].url(path))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    EventStream::new(response)
}

/// Reads `id`'s events into `seen` up to its `failures`-th `job.failed`.
async fn read_until(stream: &mut EventStream, id: &str, seen: &mut Vec<String>, failures: usize) {
    let reading = async {
        while seen.iter().filter(|event| *event == "job.failed").count() < failures {
            let message = stream.next().await;
            if message.job_id().as_deref() == Some(id) {
                seen.push(message.event);
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .is_err()
    {
        panic!("the job's end never reached the stream: {seen:?}");
    }
}

#[tokio::test]
async fn an_event_stream_on_one_instance_carries_queued_started_and_succeeded_of_jobs_submitted_to_another()
 {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let mut stream = open_stream(&cluster, 1, "/v1/events?queue=spread").await;
    // Six jobs through instance 0 while instance 1 has room for two: some run
    // on 0 or 2, so their events reach 1 only on the bus.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(cluster.submit(0, pid_job("spread", 0.3)).await);
    }
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Keep-alives reset a read's own timeout: a deadline for them all.
    let reading = async {
        let mut ended = 0;
        while ended < ids.len() {
            let message = stream.next().await;
            let Some(id) = message.job_id() else { continue };
            if ["job.succeeded", "job.failed", "job.cancelled"].contains(&message.event.as_str()) {
                ended += 1;
            }
            seen.entry(id).or_default().push(message.event);
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .is_err()
    {
        panic!("the jobs' ends never reached the stream: {seen:#?}");
    }
    for id in &ids {
        // In order although the job may run on an instance other than the
        // one that admitted it: the claimant publishes `job.queued` itself
        // when the admitting instance's copy has not reached it yet.
        assert_eq!(
            seen[id],
            ["job.queued", "job.started", "job.succeeded"],
            "job {id}: {seen:#?}"
        );
    }
    let jobs = cluster.wait_all(1, &ids, Duration::from_secs(10)).await;
    let elsewhere = jobs
        .iter()
        .filter(|job| pid_of(job) != cluster.pid(1))
        .count();
    assert!(elsewhere > 0, "every job ran on the listening instance");
}

#[tokio::test]
async fn a_manual_retry_soon_after_a_failure_shows_its_job_queued_on_another_instances_stream() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let mut stream = open_stream(&cluster, 1, "/v1/events?queue=default").await;
    let failing = json!({"kind": "sleep", "payload": {"ms": 10, "fail": true}, "max_attempts": 1});
    let id = cluster.submit(0, failing).await;
    let mut seen: Vec<String> = Vec::new();
    read_until(&mut stream, &id, &mut seen, 1).await;
    // Within the time a hub remembers the admission's `job.queued` (to drop
    // a second copy of it): the retry's starts at attempt 0 too, and is
    // another event all the same.
    let (status, body) = cluster
        .post(2, &format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    read_until(&mut stream, &id, &mut seen, 2).await;
    assert_eq!(
        seen,
        [
            "job.queued",
            "job.started",
            "job.failed",
            "job.queued",
            "job.started",
            "job.failed"
        ]
    );
}

/// The same long-poll through each instance at once: each answer and the
/// time it arrived (ms since the epoch).
async fn long_poll_everywhere(cluster: &Cluster, path: &str) -> Vec<(Value, i64)> {
    let polls = (0..cluster.instances.len()).map(|n| {
        let request = cluster.client.get(cluster.instances[n].url(path));
        async move {
            let (status, body) = answer(request).await;
            assert_eq!(status, 200, "{body}");
            (body, now_ms())
        }
    });
    futures::future::join_all(polls).await
}

fn assert_prompt(answers: &[(Value, i64)], done: &str) {
    for (n, (body, answered_at)) in answers.iter().enumerate() {
        assert_eq!(body["status"], done, "instance {n}: {body}");
        let late = answered_at - millis(&body["finished_at"]);
        assert!(
            late <= PROMPT_MS,
            "instance {n} answered {late} ms after the end: {body}"
        );
    }
}

#[tokio::test]
async fn long_polls_on_every_instance_answer_within_a_second_and_a_half_of_an_end_stored_by_another()
 {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    // One job ends on one instance: the long-polls on the two others hear of
    // it from the bus (or a re-read), not at their 20 s deadline.
    let id = cluster
        .submit(0, json!({"kind": "sleep", "payload": {"ms": 1000}}))
        .await;
    let answers = long_poll_everywhere(&cluster, &format!("/v1/jobs/{id}?wait=20")).await;
    assert_prompt(&answers, "succeeded");

    let jobs: Vec<Value> = (0..4)
        .map(|_| json!({"kind": "sleep", "payload": {"ms": 1000}}))
        .collect();
    let (status, batch) = cluster.post(0, "/v1/batches", &json!({"jobs": jobs})).await;
    assert_eq!(status, 202, "{batch}");
    let batch_id = batch["id"].as_str().unwrap();
    let answers = long_poll_everywhere(&cluster, &format!("/v1/batches/{batch_id}?wait=20")).await;
    assert_prompt(&answers, "succeeded");
}

#[tokio::test]
async fn webhooks_are_delivered_exactly_once_and_signed_though_every_instance_runs_a_deliverer() {
    let receiver = Receiver::start([]).await;
    // Slow answers keep deliveries in flight while the other deliverers look.
    receiver.answer_by_default(Reply::Slow(Duration::from_millis(500)));
    let Some(cluster) = Cluster::start_with(3, &[("SPOOL_OUTBOUND_ALLOW", "127.0.0.1")]).await
    else {
        return;
    };
    // Jobs through instance 0 that run on all three and end over three
    // seconds, and a batch whose last job may end anywhere.
    let mut ids = Vec::new();
    for n in 0..12 {
        let mut spec = pid_job("spread", 0.25 * f64::from(n));
        spec["callback_url"] = json!(receiver.url(&format!("/job/{n}")));
        ids.push(cluster.submit(0, spec).await);
    }
    let jobs: Vec<Value> = (0..4).map(|_| pid_job("spread", 0.5)).collect();
    let (status, batch) = cluster
        .post(
            0,
            "/v1/batches",
            &json!({"jobs": jobs, "callback_url": receiver.url("/batch")}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let batch_id = batch["id"].as_str().unwrap().to_owned();

    receiver.wait_for(13, Duration::from_secs(30)).await;
    // Longer than an idle deliverer's re-check (5 s): a second copy would
    // have been sent by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let received = receiver.received();
    let summaries: Vec<String> = received.iter().map(summary).collect();
    assert_eq!(received.len(), 13, "{summaries:#?}");
    let paths: HashSet<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths.len(), 13, "one delivery each: {summaries:#?}");
    let webhook_ids: HashSet<&str> = received.iter().map(|r| r.id()).collect();
    assert_eq!(webhook_ids.len(), 13, "{summaries:#?}");
    for hook in &received {
        assert!(
            verifies(
                TEST_WEBHOOK_SECRET,
                hook.id(),
                hook.header("webhook-timestamp"),
                &hook.body,
                hook.header("webhook-signature"),
            ),
            "{} does not verify",
            summary(hook)
        );
        let body = hook.json();
        if hook.path == "/batch" {
            assert_eq!(body["type"], "batch.finished", "{body}");
            assert_eq!(body["data"]["id"], batch_id.as_str(), "{body}");
        } else {
            let n: usize = hook.path.trim_start_matches("/job/").parse().unwrap();
            assert_eq!(body["type"], "job.succeeded", "{body}");
            assert_eq!(body["data"]["id"], ids[n].as_str(), "{body}");
        }
    }
    let jobs = cluster.wait_all(2, &ids, Duration::from_secs(5)).await;
    let ran_on: HashSet<u32> = jobs.iter().map(pid_of).collect();
    assert!(ran_on.len() > 1, "the jobs ended on one instance only");
    for job in &jobs {
        assert_eq!(job["webhook"]["status"], "delivered", "{job}");
        assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    }
    let (_, batch) = cluster.get(1, &format!("/v1/batches/{batch_id}")).await;
    assert_eq!(batch["webhook"]["status"], "delivered", "{batch}");
    assert_eq!(batch["webhook"]["attempts"], 1, "{batch}");
}

#[tokio::test]
async fn on_conflict_replace_through_one_instance_cancels_holders_running_on_the_others_within_two_seconds()
 {
    // Long leases, so heartbeats (which also bring cancel requests) come
    // every ten seconds: only the bus can stop a holder elsewhere in time.
    let Some(cluster) = Cluster::start_with(3, &[("SPOOL_LEASE_TTL", "30s")]).await else {
        return;
    };
    // One slot per instance and three long holders: each instance runs one,
    // so two of the three replaced through instance 1 run elsewhere.
    let mut holders = Vec::new();
    for n in 0..3 {
        let mut spec = pid_job("long", 60.0);
        spec["key"] = json!(format!("paint-{n}"));
        holders.push(cluster.submit(n, spec).await);
    }
    cluster.wait_running(1, "long", 3).await;
    for (n, holder) in holders.iter().enumerate() {
        let started = Instant::now();
        let replacement = cluster
            .submit(
                1,
                json!({"kind": "echo", "payload": "blue", "key": format!("paint-{n}"), "on_conflict": "replace"}),
            )
            .await;
        loop {
            let (_, job) = cluster.get(1, &format!("/v1/jobs/{holder}")).await;
            if job["status"] == "cancelled" {
                // A running holder is stopped through its runner, which
                // records the cancellation as `cancelled` (as on one instance).
                assert_eq!(job["cancel_requested"], true, "{job}");
                assert_eq!(job["error"]["code"], "cancelled", "{job}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "holder {holder} still {} two seconds after its replacement",
                job["status"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = cluster
            .wait_all(2, &[replacement], Duration::from_secs(10))
            .await;
        assert_eq!(done[0]["status"], "succeeded", "{}", done[0]);
        assert_eq!(done[0]["result"], "blue", "{}", done[0]);
    }
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_instances_and_every_keyed_job_succeeds() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    // Four slots per instance in `wide`: only the key holds the jobs back.
    let mut ids = Vec::new();
    for n in 0..9 {
        let spec = json!({
            "kind": "sleep",
            "queue": "wide",
            "payload": {"ms": 1000},
            "concurrency_key": "acme",
            "concurrency_limit": 2,
        });
        ids.push(cluster.submit(n % 3, spec).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut most = 0;
    for n in 0.. {
        let (_, page) = cluster
            .get(n % 3, "/v1/jobs?status=running&limit=100")
            .await;
        let running: Vec<&Value> = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items in {page}"))
            .iter()
            .filter(|job| job["concurrency_key"] == "acme")
            .collect();
        assert!(
            running.len() <= 2,
            "more than two ran at once: {running:#?}"
        );
        most = most.max(running.len());
        let (_, done) = cluster
            .get(n % 3, "/v1/jobs?queue=wide&status=succeeded&limit=100")
            .await;
        if done["items"].as_array().map_or(0, Vec::len) == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the keyed jobs never all ended");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(most, 2, "the limit was used, not just respected");
    let jobs = cluster.wait_all(0, &ids, Duration::from_secs(5)).await;
    assert!(jobs.iter().all(|job| job["status"] == "succeeded"));
}

#[tokio::test]
async fn a_queue_created_through_one_instance_takes_jobs_submitted_to_the_others_at_once() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let (status, queue) = cluster
        .put(0, "/v1/queues/new", &json!({"concurrency": 2}))
        .await;
    assert_eq!(status, 201, "{queue}");
    // Right away, through the two instances that did not create it; then
    // enough one-second jobs that every instance runs some.
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(cluster.submit(1 + n % 2, pid_job("new", 1.0)).await);
    }
    let (status, batch) = cluster
        .post(2, "/v1/batches", &json!({"jobs": [pid_job("new", 0.1)]}))
        .await;
    assert_eq!(status, 202, "{batch}");
    ids.extend(job_ids(&batch));
    let jobs = cluster.wait_all(0, &ids, Duration::from_secs(30)).await;
    let mut ran_on = HashSet::new();
    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
        ran_on.insert(pid_of(job));
    }
    let instances: HashSet<u32> = (0..3).map(|n| cluster.pid(n)).collect();
    assert_eq!(
        ran_on, instances,
        "every instance ran jobs of the new queue"
    );
}
