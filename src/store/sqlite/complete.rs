//! Storing the outcomes of attempts, many per statement.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::domain::{Job, JobId, JobState};
use crate::store::{AttemptOutcome, Completion, CompletionResult, StoreError};

/// Completions per statement: 10 parameters each, far below SQLite's limit.
const CHUNK: usize = 200;

/// Applies the outcomes of attempts, each fenced by `(id, attempt,
/// lease_owner, state = running)`: a completion whose job moved on (its lease
/// was taken over) changes nothing and comes back `Fenced`.
pub async fn complete_many(
    conn: &mut SqliteConnection,
    completions: &[Completion],
) -> Vec<Result<CompletionResult, StoreError>> {
    let mut results = Vec::with_capacity(completions.len());
    for chunk in completions.chunks(CHUNK) {
        match complete_chunk(conn, chunk).await {
            Ok(mut applied) => results.extend(chunk.iter().map(|completion| {
                Ok(applied
                    .remove(&completion.id)
                    .map_or(CompletionResult::Fenced, |job| {
                        CompletionResult::Applied(Box::new(job))
                    }))
            })),
            Err(error) => {
                let message = error.to_string();
                results.extend(
                    chunk
                        .iter()
                        .map(|_| Err(StoreError::Unavailable(message.clone()))),
                );
            }
        }
    }
    results
}

/// The columns a completion sets, by outcome.
struct Change {
    state: JobState,
    result: Option<String>,
    error: Option<String>,
    append_error: bool,
    finished: bool,
    run_at: Option<i64>,
    released: bool,
}

fn change(outcome: &AttemptOutcome) -> Change {
    let plain = |state| Change {
        state,
        result: None,
        error: None,
        append_error: false,
        finished: true,
        run_at: None,
        released: false,
    };
    match outcome {
        AttemptOutcome::Succeeded(result) => Change {
            result: Some(to_json(result)),
            ..plain(JobState::Succeeded)
        },
        AttemptOutcome::Failed { error, retry_at } => Change {
            error: Some(to_json(error)),
            append_error: true,
            finished: retry_at.is_none(),
            run_at: retry_at.map(|at| at.as_millis()),
            ..plain(if retry_at.is_some() {
                JobState::Scheduled
            } else {
                JobState::Failed
            })
        },
        AttemptOutcome::Cancelled(error) => Change {
            error: Some(to_json(error)),
            ..plain(JobState::Cancelled)
        },
        AttemptOutcome::Released => Change {
            finished: false,
            released: true,
            ..plain(JobState::Queued)
        },
    }
}

async fn complete_chunk(
    conn: &mut SqliteConnection,
    chunk: &[Completion],
) -> Result<HashMap<JobId, Job>, StoreError> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
        "WITH v (id, attempt, owner, state, result, error, append_error, finished_at, run_at, released) AS (",
    );
    query.push_values(chunk, |mut row, completion| {
        let change = change(&completion.outcome);
        row.push_bind(completion.id.to_string())
            .push_bind(i64::from(completion.attempt))
            .push_bind(completion.lease_owner.clone())
            .push_bind(change.state.as_str())
            .push_bind(change.result)
            .push_bind(change.error)
            .push_bind(i64::from(change.append_error))
            .push_bind(change.finished.then_some(completion.at.as_millis()))
            .push_bind(change.run_at)
            .push_bind(i64::from(change.released));
    });
    query.push(format!(
        ") UPDATE jobs SET \
            state = v.state, \
            result = CASE WHEN v.state = 'succeeded' THEN v.result ELSE jobs.result END, \
            error = coalesce(v.error, jobs.error), \
            errors = CASE WHEN v.append_error = 1 \
                THEN json_insert(jobs.errors, '$[#]', json(v.error)) ELSE jobs.errors END, \
            finished_at = v.finished_at, \
            run_at = coalesce(v.run_at, jobs.run_at), \
            attempt = jobs.attempt - v.released, \
            started_at = CASE WHEN v.released = 1 THEN NULL ELSE jobs.started_at END, \
            lease_owner = NULL, lease_expires_at = NULL \
         FROM v WHERE jobs.id = v.id AND jobs.attempt = v.attempt \
            AND jobs.lease_owner = v.owner AND jobs.state = 'running' \
         RETURNING {JOB_COLUMNS}"
    ));
    let rows: Vec<JobRow> = query.build_query_as().fetch_all(&mut *conn).await?;
    rows.into_iter()
        .map(|row| Job::try_from(row).map(|job| (job.id, job)))
        .collect()
}
