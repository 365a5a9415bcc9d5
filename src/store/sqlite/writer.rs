//! The single writer: every change goes through one connection, and the
//! commands that arrive together commit together (group commit).
//!
//! SQLite admits one writer at a time; serialising writes here instead of
//! letting connections contend for the lock avoids `SQLITE_BUSY`, and one
//! `BEGIN IMMEDIATE … COMMIT` for a batch of commands amortises the commit
//! (WAL append) over all of them. A command's reply is sent only after its
//! transaction committed, so a `202` always means "on disk".

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::ops::{self, Done};
use super::{admit, complete};
use crate::domain::{JobId, Progress, QueueConfig, Timestamp};
use crate::store::{Completion, StoreError, Submission};

/// Most commands applied in one transaction: bounds the latency one batch
/// adds to the commands queued behind it.
const MAX_BATCH: usize = 256;

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
        until: Timestamp,
    },
    Rescue {
        now: Timestamp,
        not_owner: Option<String>,
    },
    Promote {
        now: Timestamp,
    },
    Prune {
        finished_before: Timestamp,
        keys_before: Timestamp,
    },
    UpsertQueue(QueueConfig),
}

pub struct Command {
    pub op: Op,
    pub reply: Reply,
}

/// Runs until every sender is dropped.
pub async fn run(mut conn: SqliteConnection, mut commands: mpsc::Receiver<Command>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
        apply_batch(&mut conn, &mut batch).await;
        batch.clear();
    }
    if let Err(error) = conn.close().await {
        tracing::warn!(%error, "closing the SQLite writer connection failed");
    }
}

type Reply = oneshot::Sender<Result<Done, StoreError>>;

async fn apply_batch(conn: &mut SqliteConnection, batch: &mut Vec<Command>) {
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(error) => {
            let message = error.to_string();
            for command in batch.drain(..) {
                let _ = command
                    .reply
                    .send(Err(StoreError::Unavailable(message.clone())));
            }
            return;
        }
    };
    // Every command of a batch was in flight at the same time, so any order
    // of applying them is a valid one. Grouping them by kind lets each group
    // share statements: the statements, not SQLite's work, are what cost
    // here (each is a round trip to the connection's worker thread).
    let mut replies = Vec::with_capacity(batch.len());
    let (mut completions, mut submissions, mut claims) = (Vec::new(), Vec::new(), Vec::new());
    for command in batch.drain(..) {
        match command.op {
            Op::Complete(completion) => completions.push((completion, command.reply)),
            Op::Submit(submission) => submissions.push((submission, command.reply)),
            claim @ Op::Claim { .. } => claims.push((claim, command.reply)),
            op => {
                let result = ops::apply(&mut tx, op).await;
                replies.push((command.reply, result));
            }
        }
    }
    // Outcomes first (they free slots), then new jobs, then claims, which
    // can start jobs submitted in this very batch.
    if !completions.is_empty() {
        let (completions, senders): (Vec<_>, Vec<_>) = completions.into_iter().unzip();
        let results = complete::complete_many(&mut tx, &completions).await;
        for (reply, result) in senders.into_iter().zip(results) {
            replies.push((reply, result.map(Done::Completion)));
        }
    }
    if !submissions.is_empty() {
        let (submissions, senders): (Vec<_>, Vec<_>) = submissions.into_iter().unzip();
        let results = admit::submit_many(&mut tx, submissions).await;
        for (reply, result) in senders.into_iter().zip(results) {
            replies.push((reply, result.map(Done::Submit)));
        }
    }
    for (claim, reply) in claims {
        let result = ops::apply(&mut tx, claim).await;
        replies.push((reply, result));
    }
    match tx.commit().await {
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
