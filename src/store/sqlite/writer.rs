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

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::counts::Counts;
use crate::store::fair::Turns;
use crate::store::{Claimed, Completion, CompletionResult, Refill, StoreError};

/// Most commands applied in one transaction: bounds the latency one batch
/// adds to the commands queued behind it.
const MAX_BATCH: usize = 256;
/// Yields of the writer thread before it parks waiting for commands.
const SPINS_BEFORE_PARKING: u32 = 16;

/// What a command works with: the writer's open transaction, and what the
/// commands of one group share.
pub struct WriteTx<'a> {
    pub conn: &'a Connection,
    /// The group's changes to the counts, not yet written.
    pub counts: &'a mut Counts,
    /// The claims' round-robin over tenants.
    pub turns: &'a Turns,
}

/// Drives `decision` to its end on the writer's thread. Its steps are this
/// module's methods, which never wait; a step that did would be a bug,
/// reported as such rather than blocking the writer.
pub fn run_now<T>(decision: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut decision = pin!(decision);
    match decision
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => Err(StoreError::Corrupt(
            "a SQLite write waited for something other than SQLite".into(),
        )),
    }
}

/// One write, whose typed result reaches its caller once the group
/// committed.
pub enum Command {
    /// A closure run in the group's transaction.
    Work(Box<dyn Work>),
    /// An attempt's outcome, and the claim that refills its slot if any.
    /// The completions of a group are applied together (by the writer's
    /// [`CompleteAll`]): the successes by one statement, whose statement
    /// journal, `RETURNING` table and reset are paid once per group instead
    /// of once per job; the refills of a queue by one claim.
    Complete(Completion, Option<Refill>, CompletionReply),
}

/// What a completion's command answers: its result, and what its refill
/// claimed (nothing without one).
pub type Completed = Result<(CompletionResult, Claimed), StoreError>;

/// Where a completion's result goes.
pub type CompletionReply = oneshot::Sender<Completed>;

impl Command {
    /// The command that runs `work`, and where its result will arrive.
    pub fn new<T, F>(work: F) -> (Self, oneshot::Receiver<Result<T, StoreError>>)
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (to, from) = oneshot::channel();
        (Self::Work(Box::new(Typed { work, to })), from)
    }

    /// The command that stores `completion` and makes `refill`'s claim, and
    /// where their results will arrive.
    pub fn complete(
        completion: Completion,
        refill: Option<Refill>,
    ) -> (Self, oneshot::Receiver<Completed>) {
        let (to, from) = oneshot::channel();
        (Self::Complete(completion, refill, to), from)
    }

    fn refuse(self, message: &str) {
        match self {
            Self::Work(work) => work.refuse(message),
            Self::Complete(_, _, to) => {
                let _ = to.send(Err(StoreError::Unavailable(message.to_owned())));
            }
        }
    }
}

/// A command not yet run: run it, or refuse it when no transaction opens.
pub trait Work: Send {
    fn run(self: Box<Self>, tx: &mut WriteTx<'_>) -> Box<dyn Reply>;
    fn refuse(self: Box<Self>, message: &str);
}

/// A command's result, held until its group committed or failed to.
pub trait Reply: Send {
    fn send(self: Box<Self>, committed: Result<(), &str>);
}

struct Typed<F, T> {
    work: F,
    to: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Work for Typed<F, T>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send,
{
    fn run(self: Box<Self>, tx: &mut WriteTx<'_>) -> Box<dyn Reply> {
        let Typed { work, to } = *self;
        Box::new(Held {
            result: work(tx),
            to,
        })
    }

    fn refuse(self: Box<Self>, message: &str) {
        let _ = self
            .to
            .send(Err(StoreError::Unavailable(message.to_owned())));
    }
}

struct Held<T> {
    result: Result<T, StoreError>,
    to: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Reply for Held<T> {
    fn send(self: Box<Self>, committed: Result<(), &str>) {
        let result = match committed {
            Ok(()) => self.result,
            Err(message) => Err(StoreError::Unavailable(message.to_owned())),
        };
        // The caller may have given up waiting (request cancelled): the
        // change stands all the same.
        let _ = self.to.send(result);
    }
}

/// How a group's completions are stored together and their slots refilled
/// (`refill::complete_all`): their results in their order.
pub type CompleteAll = fn(&mut WriteTx<'_>, &[Completion], &[Option<Refill>]) -> Vec<Completed>;

/// Runs until every sender is dropped. Blocking: this is the writer
/// thread's whole life.
pub fn run(mut conn: Connection, mut commands: mpsc::Receiver<Command>, complete_all: CompleteAll) {
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
        apply_batch(&mut conn, &turns, &mut batch, complete_all);
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

fn apply_batch(
    conn: &mut Connection,
    turns: &Turns,
    batch: &mut Vec<Command>,
    complete_all: CompleteAll,
) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            let message = error.to_string();
            tracing::error!(error = %message, "cannot begin a write transaction");
            for command in batch.drain(..) {
                command.refuse(&message);
            }
            return;
        }
    };
    let mut counts = Counts::default();
    let mut write = WriteTx {
        conn: &tx,
        counts: &mut counts,
        turns,
    };
    let mut replies: Vec<Box<dyn Reply>> = Vec::with_capacity(batch.len());
    let (mut completions, mut refills, mut tos) = (Vec::new(), Vec::new(), Vec::new());
    for command in batch.drain(..) {
        match command {
            Command::Work(work) => replies.push(work.run(&mut write)),
            Command::Complete(completion, refill, to) => {
                completions.push(completion);
                refills.push(refill);
                tos.push(to);
            }
        }
    }
    // After the group's other commands: a completion arriving with them
    // raced them anyway, and a `Retry-After` hold always comes first (its
    // attempt awaits it before sending the outcome).
    if !completions.is_empty() {
        let results = complete_all(&mut write, &completions, &refills);
        for (result, to) in results.into_iter().zip(tos) {
            replies.push(Box::new(Held { result, to }));
        }
    }
    let committing = std::time::Instant::now();
    let committed = counts.flush(&tx).and_then(|()| Ok(tx.commit()?));
    crate::telemetry::metrics::store_commit(committing.elapsed());
    match committed {
        Ok(()) => {
            for reply in replies {
                reply.send(Ok(()));
            }
        }
        Err(error) => {
            let message = error.to_string();
            tracing::error!(error = %message, commands = replies.len(), "group commit failed");
            for reply in replies {
                reply.send(Err(&message));
            }
        }
    }
}
