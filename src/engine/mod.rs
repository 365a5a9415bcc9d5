//! The engine: admission, dispatch to the worker pool, leases, retries,
//! cancellation and shutdown. It owns no state the store cannot rebuild.
//!
//! Each file owns a use case of the one `impl Engine`: `lifecycle` (start,
//! readiness, shutdown), `jobs`, `batches`, `waiting` (long-polls), `queues`,
//! `tenants`, `schedules` (with its firing loop); `validation` is the one check of a job spec, `effects` acts on
//! what a write set in motion, `error` says why a request was refused. Loops:
//! `worker` (dispatch, attempts), `maintenance`, `shared` (the bus); `slots`
//! (which writes fill a slot). Helpers:
//! `drain`, `ready_clock`, `waiters`, `limiter` (an adaptive queue's limit).

mod batches;
mod drain;
mod effects;
mod error;
mod jobs;
mod lifecycle;
mod limiter;
mod limits;
mod maintenance;
mod queues;
mod ready_clock;
mod schedules;
mod shared;
mod slots;
mod tenants;
mod validation;
mod waiters;
mod waiting;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{JobId, QueueConfig};
use crate::kinds::KindRegistry;
use crate::notify::{EventHub, Webhooks};
use crate::store::JobStore;
use crate::telemetry::metrics::AttemptEnd;
use crate::telemetry::traces::Tracer;

pub use batches::BatchSubmitted;
use drain::DrainMeter;
pub use error::EngineError;
pub use jobs::{Cancelled, Submitted};
pub use queues::MetricsSnapshot;
pub use schedules::{FirePass, ScheduleChange};
use shared::Shared;
pub use tenants::TENANT_QUOTA_RETRY_AFTER_S;
use waiters::Waiters;

/// Timing of the engine. Every default is documented in `docs/operations.md`.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Time running jobs get to finish at shutdown. Default 30 s.
    pub shutdown_grace: Duration,
    /// Time a cancelled (or timed-out) handler gets to return before its task
    /// is aborted. Default 5 s.
    pub cancel_grace: Duration,
    /// Lease of a running job; renewed every third of it. Default 30 s.
    pub lease_ttl: Duration,
    /// How long terminal jobs are kept. Default 7 days.
    pub retention: Duration,
    /// How long idempotency keys are remembered. Default 24 h.
    pub idempotency_ttl: Duration,
    /// Fallback re-check of queues and schedules when no wake-up came. Default 1 s.
    pub poll_interval: Duration,
    /// Largest serialized result a job may return. Default 256 KiB.
    pub max_result_bytes: usize,
    /// Most jobs in one batch. Default 10 000.
    pub max_batch_size: usize,
    /// Events kept for resuming event streams. Default 10 000.
    pub event_replay: usize,
    /// Where attempts' spans go. Default: nowhere (their ids are still
    /// made, for the log lines' `trace_id`).
    pub tracer: Tracer,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            max_result_bytes: 256 * 1024,
            max_batch_size: 10_000,
            event_replay: 10_000,
            tracer: Tracer::disabled(),
        }
    }
}

/// Why a running job's token fired.
const STOP_NONE: u8 = 0;
const STOP_CANCEL: u8 = 1;
const STOP_SHUTDOWN: u8 = 2;

struct RunningJob {
    token: CancellationToken,
    stop: Arc<AtomicU8>,
}

struct QueueState {
    config: QueueConfig,
    /// Jobs of this queue running in this process.
    running: u32,
    drain: DrainMeter,
    /// An adaptive queue's limit on this instance (`None`: fixed).
    limiter: Option<limiter::Limiter>,
    /// The last claim for the queue took all it asked for: every slot was
    /// taken and jobs may still wait. What lets an adaptive limit grow.
    saturated: bool,
}

impl QueueState {
    fn new(config: QueueConfig) -> Self {
        let limiter = config
            .concurrency
            .range()
            .map(|range| limiter::Limiter::new(range.min, range.max, std::time::Instant::now()));
        Self {
            config,
            running: 0,
            drain: DrainMeter::default(),
            limiter,
            saturated: false,
        }
    }

    /// New settings; an adaptive limit keeps its place within a new range.
    fn set_config(&mut self, config: QueueConfig) {
        match (config.concurrency.range(), &mut self.limiter) {
            (Some(range), Some(limiter)) => limiter.set_range(range.min, range.max),
            (Some(range), None) => {
                self.limiter = Some(limiter::Limiter::new(
                    range.min,
                    range.max,
                    std::time::Instant::now(),
                ));
            }
            (None, _) => self.limiter = None,
        }
        self.config = config;
    }

    /// Feeds an attempt of an adaptive queue (begun at `began`, ended
    /// `end`) to its limiter: a failure or a slow run shrinks the limit, a
    /// healthy run while jobs wait grows it. Cancelled and handed-back
    /// attempts say nothing. True when the limit grew.
    fn adapt(&mut self, name: &str, began: std::time::Instant, end: AttemptEnd) -> bool {
        let failed = match end {
            AttemptEnd::Succeeded => false,
            AttemptEnd::Retried | AttemptEnd::Failed => true,
            AttemptEnd::Cancelled | AttemptEnd::Released => {
                if let Some(limiter) = self.limiter.as_mut() {
                    limiter.forget(began);
                }
                return false;
            }
        };
        let saturated = self.saturated;
        let Some(limiter) = self.limiter.as_mut() else {
            return false;
        };
        let before = limiter.limit();
        limiter.observe(began, failed, saturated, std::time::Instant::now());
        let after = limiter.limit();
        if after != before {
            tracing::debug!(queue = %name, from = before, to = after, "adaptive concurrency changed");
        }
        after > before
    }

    /// Jobs of the queue that may run at once here now.
    fn limit(&self) -> u32 {
        self.limiter
            .as_ref()
            .map_or(self.config.concurrency.max(), limiter::Limiter::limit)
    }
}

pub(crate) struct Inner {
    store: Arc<dyn JobStore>,
    kinds: KindRegistry,
    settings: EngineSettings,
    /// Owner name of this process's leases.
    instance_id: String,
    queues: RwLock<BTreeMap<String, QueueState>>,
    running: Mutex<HashMap<JobId, RunningJob>>,
    wake_dispatcher: Notify,
    wake_promoter: Notify,
    /// Wakes the firing loop: a schedule changed here (`schedules.rs`).
    wake_schedules: Notify,
    /// Earliest known `run_at` of a scheduled job (ms; `i64::MAX` for none),
    /// so the promoter can sleep until exactly then.
    next_due_ms: AtomicI64,
    /// When the first job a claim passed over for its rate limit may start
    /// (ms; `i64::MAX` for none): the dispatcher wakes then, not a poll later.
    next_eligible_ms: AtomicI64,
    /// Earliest known `expires_at` of a job that has not started (ms;
    /// `i64::MAX` for none), so the expirer can sleep until exactly then.
    next_expiry_ms: AtomicI64,
    wake_expirer: Notify,
    admitting: AtomicBool,
    /// Stops claiming and the maintenance loops (but not the heartbeat).
    stopping: CancellationToken,
    /// Stops the heartbeat, last.
    stopped: CancellationToken,
    jobs: TaskTracker,
    loops: TaskTracker,
    events: EventHub,
    waiters: Waiters,
    /// `None`: webhooks are off and `callback_url` is refused.
    webhooks: Option<Webhooks>,
    /// Wakes the webhook deliverer when something with a callback ended.
    wake_webhooks: Arc<Notify>,
    /// The bus to the other instances (shared mode only).
    shared: Option<Shared>,
    /// Another instance changed the API keys (or bus messages were lost):
    /// the keyring re-reads them.
    keys_heard: Notify,
    /// Tenants with quotas, as stored (see `tenants.rs`).
    tenants: RwLock<tenants::TenantCache>,
    /// Another instance changed a tenant's quotas (or bus messages were
    /// lost): the tenants are re-read.
    tenants_heard: Notify,
    /// The last readiness probe: when it ran and what it found. Behind an
    /// async lock so that concurrent `/readyz` calls share one probe.
    readiness: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
    /// The last figures read for `/metrics`, reused for a second (see
    /// `queues.rs`).
    gauges: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<MetricsSnapshot>)>>,
    /// When jobs admitted here became ready, for the queue-wait histogram.
    ready_clock: ready_clock::ReadyClock,
}

/// A handle on the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn kinds(&self) -> &KindRegistry {
        &self.inner.kinds
    }

    pub fn events(&self) -> &EventHub {
        &self.inner.events
    }

    /// The store, for what the engine does not mediate (API keys).
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    /// Fires once shutdown has drained the running jobs (their last events
    /// are published by then): event streams end then.
    pub fn drained(&self) -> CancellationToken {
        self.inner.stopped.clone()
    }

    /// Where spans go (the request spans use it too).
    pub fn tracer(&self) -> &Tracer {
        &self.inner.settings.tracer
    }

    /// Fires when shutdown begins: long-polls end then.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// False once shutdown began.
    pub fn is_admitting(&self) -> bool {
        self.inner.admitting.load(Ordering::Acquire)
    }
}
