//! The single writer: every change goes through one connection on one
//! thread, and the commands that arrive together commit together (group
//! commit).
//!
//! SQLite admits one writer at a time; serialising writes here instead of
//! letting connections contend for the lock avoids `SQLITE_BUSY`, and one
//! `BEGIN IMMEDIATE … COMMIT` for a batch of commands amortises the commit
//! (WAL append) over all of them. A command's reply is sent only after its
//! transaction committed, so a `202` always means "on disk".
//!
//! The writer calls SQLite directly (rusqlite) on its own thread. Through
//! sqlx every statement is a round trip to the connection's worker thread,
//! about 50 µs here against a few µs of SQLite's own work, which capped the
//! whole service at the writer's statement rate.

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::counts::NewCounts;
use super::ops::{self, Done};
use crate::domain::{BatchId, JobId, Progress, QueueConfig, Timestamp};
use crate::store::fair::Turns;
use crate::store::{Completion, StoreError, Submission, WebhookAttempt};

/// Most commands applied in one transaction: bounds the latency one batch
/// adds to the commands queued behind it.
const MAX_BATCH: usize = 256;
/// Yields of the writer thread before it parks waiting for commands.
const SPINS_BEFORE_PARKING: u32 = 16;

pub enum Op {
    Submit(Submission),
    Claim {
        queue: String,
        limit: u32,
        owner: String,
        lease_until: Timestamp,
        now: Timestamp,
    },
    Complete(Completion),
    Progress {
        id: JobId,
        attempt: u32,
        progress: Progress,
    },
    Cancel {
        tenant: String,
        id: JobId,
        at: Timestamp,
    },
    Retry {
        tenant: String,
        id: JobId,
        at: Timestamp,
    },
    Renew {
        owner: String,
        ids: Vec<JobId>,
        until: Timestamp,
    },
    Rescue {
        now: Timestamp,
        not_owner: Option<String>,
    },
    Promote {
        now: Timestamp,
    },
    CancelBatch {
        tenant: String,
        id: BatchId,
        at: Timestamp,
    },
    Prune {
        finished_before: Timestamp,
        keys_before: Timestamp,
    },
    UpsertQueue(QueueConfig),
    DeleteQueue(String),
    UpsertTenant(crate::domain::TenantConfig),
    ClaimWebhooks {
        now: Timestamp,
        limit: u32,
        lease_until: Timestamp,
    },
    RecordWebhook(WebhookAttempt),
    Keys(super::keys::KeyWrite),
    /// A write that changes nothing a reader sees, committed like any other:
    /// whether the database takes writes (`/readyz`).
    Probe,
}

pub struct Command {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// Runs until every sender is dropped. Blocking: this is the writer
/// thread's whole life.
pub fn run(mut conn: Connection, mut commands: mpsc::Receiver<Command>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer is the only claimant of this database: its turns are
    // the service's.
    let turns = Turns::default();
    while let Some(first) = next_command(&mut commands) {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        apply_batch(&mut conn, &turns, &mut batch);
    }
}

/// Under load the next command is usually microseconds away: yield a few
/// times before parking the thread, as each park and wake-up costs more
/// (two context switches) than the SQLite work of a small batch.
fn next_command(commands: &mut mpsc::Receiver<Command>) -> Option<Command> {
    for _ in 0..SPINS_BEFORE_PARKING {
        match commands.try_recv() {
            Ok(command) => return Some(command),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    commands.blocking_recv()
}

fn apply_batch(conn: &mut Connection, turns: &Turns, batch: &mut Vec<Command>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            let message = error.to_string();
            tracing::error!(error = %message, "cannot begin a write transaction");
            for command in batch.drain(..) {
                let _ = command
                    .reply
                    .send(Err(StoreError::Unavailable(message.clone())));
            }
            return;
        }
    };
    let mut counts = NewCounts::default();
    let replies: Vec<_> = batch
        .drain(..)
        .map(|command| {
            (
                command.reply,
                ops::apply(&tx, &mut counts, turns, command.op),
            )
        })
        .collect();
    let committing = std::time::Instant::now();
    let committed = counts.flush(&tx).and_then(|()| Ok(tx.commit()?));
    crate::telemetry::metrics::store_commit(committing.elapsed());
    match committed {
        Ok(()) => {
            for (reply, result) in replies {
                // The caller may have given up waiting (request cancelled):
                // the change stands all the same.
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            let message = error.to_string();
            tracing::error!(error = %message, commands = replies.len(), "group commit failed");
            for (reply, _) in replies {
                let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
            }
        }
    }
}
