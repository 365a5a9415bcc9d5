//! Outcomes stored at the same moment: a backend may store them together
//! (PostgreSQL does, in one transaction), but each keeps its own answer.

use std::sync::Arc;

use serde_json::json;
use spool::domain::{JobId, JobState, TENANT_DEFAULT};
use spool::store::{AttemptOutcome, CompletionResult, JobStore};

use crate::conformance::{OWNER, at, completion, error, job, submit_one, with_queues};

async fn read(store: &Arc<dyn JobStore>, id: JobId) -> spool::domain::Job {
    store
        .get_job(TENANT_DEFAULT, id)
        .await
        .expect("read")
        .expect("the job exists")
}

pub async fn outcomes_stored_at_the_same_moment_each_get_their_own_answer(
    store: Arc<dyn JobStore>,
) {
    with_queues(&store, &[("default", 100)]).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(submit_one(&store, job("default", json!({"payload": {"n": n}}), at(n))).await);
    }
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
