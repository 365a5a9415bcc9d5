//! The rule of expiry, written once for both backends: jobs not started by
//! their `expires_at` end `cancelled` with `error.code: expired`, without an
//! attempt, and what their end sets in motion follows as for any cancel.

use super::settle::{Ended, settle};
use super::transaction::Transaction;
use crate::domain::{ErrorInfo, Job, Timestamp};
use crate::store::{Effects, StoreError};

/// Most jobs one transaction expires; the caller goes on while it gets this many.
pub const EXPIRE_CHUNK: u32 = 500;

/// The error an expired job ends with.
pub fn expired(at: Timestamp) -> ErrorInfo {
    ErrorInfo {
        code: "expired".into(),
        message: "not started before its expires_at".into(),
        attempt: None,
        at,
    }
}

/// Cancels up to `EXPIRE_CHUNK` jobs whose `expires_at` has passed by `now`
/// and that never started. A job started before its expiry is not touched:
/// it runs to its end, retries included.
pub async fn expire_due<T: Transaction>(
    tx: &mut T,
    now: Timestamp,
) -> Result<(Vec<Job>, Effects), StoreError> {
    let ids = tx.expiring(now, EXPIRE_CHUNK).await?;
    let error = expired(now);
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(job) = tx.cancel_now(id, &error, now).await? {
            jobs.push(job);
        }
    }
    let mut effects = Effects::default();
    let ended: Vec<Ended> = jobs.iter().map(Ended::of).collect();
    if !ended.is_empty() {
        settle(tx, &ended, now, &mut effects).await?;
    }
    Ok((jobs, effects))
}
