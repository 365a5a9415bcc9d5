//! The engine's life: start (queues, rescue, loops), readiness and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queues::stored_config;
use super::shared::Shared;
use super::waiters::Waiters;
use super::{
    Engine, EngineError, EngineSettings, Inner, QueueState, STOP_SHUTDOWN, ready_clock, tenants,
};
use crate::domain::{JobId, QueueConfig, Timestamp};
use crate::kinds::KindRegistry;
use crate::notify::{EventHub, Webhooks};
use crate::store::{JobStore, StoreError};

/// How long a readiness probe's answer is reused: load balancers may ask
/// many times a second, and each probe is a durable write.
const READINESS_TTL: Duration = Duration::from_secs(1);
/// A store that takes longer than this to commit a probe is not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

impl Engine {
    /// Prepares the queues (`default` always exists; `declared` ones are
    /// created or updated), rescues jobs orphaned by a previous process and
    /// starts the dispatcher and maintenance loops.
    pub async fn start(
        store: Arc<dyn JobStore>,
        kinds: KindRegistry,
        settings: EngineSettings,
        declared: Vec<QueueConfig>,
        webhooks: Option<Webhooks>,
    ) -> Result<Self, StoreError> {
        let existing: Vec<String> = store
            .list_queues()
            .await?
            .into_iter()
            .map(|q| q.name)
            .collect();
        if !existing
            .iter()
            .any(|name| name == QueueConfig::DEFAULT_NAME)
            && !declared.iter().any(|q| q.name == QueueConfig::DEFAULT_NAME)
        {
            store
                .upsert_queue(&QueueConfig::new(QueueConfig::DEFAULT_NAME))
                .await?;
        }
        for queue in &declared {
            store.upsert_queue(queue).await?;
        }
        let queues = store
            .list_queues()
            .await?
            .into_iter()
            .map(|info| {
                let config = stored_config(info);
                (config.name.clone(), QueueState::new(config))
            })
            .collect();

        let instance_id = format!("spool-{}", uuid::Uuid::now_v7());
        let now = Timestamp::now();
        let exclusive_owner = store.exclusive().then_some(instance_id.as_str());
        // The effects need no action yet: the dispatcher and the promoter
        // look at every queue and schedule when they start.
        let (rescued, _effects) = store.rescue(now, exclusive_owner).await?;
        if !rescued.is_empty() {
            tracing::warn!(
                jobs = rescued.len(),
                "took back jobs left running by a previous process"
            );
        }

        let events = EventHub::new(settings.event_replay);
        let shared = store.bus().map(Shared::new);
        if shared.is_some() {
            events.dedupe_queued();
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                kinds,
                settings,
                instance_id,
                queues: RwLock::new(queues),
                running: Mutex::new(HashMap::new()),
                wake_dispatcher: Notify::new(),
                wake_promoter: Notify::new(),
                wake_schedules: Notify::new(),
                next_due_ms: AtomicI64::new(i64::MAX),
                next_eligible_ms: AtomicI64::new(i64::MAX),
                next_expiry_ms: AtomicI64::new(i64::MAX),
                wake_expirer: Notify::new(),
                admitting: AtomicBool::new(true),
                stopping: CancellationToken::new(),
                stopped: CancellationToken::new(),
                jobs: TaskTracker::new(),
                loops: TaskTracker::new(),
                events,
                waiters: Waiters::default(),
                webhooks,
                wake_webhooks: Arc::new(Notify::new()),
                shared,
                keys_heard: Notify::new(),
                tenants: RwLock::new(tenants::TenantCache::new()),
                tenants_heard: Notify::new(),
                readiness: tokio::sync::Mutex::new(None),
                gauges: tokio::sync::Mutex::new(None),
                ready_clock: ready_clock::ReadyClock::default(),
            }),
        };
        engine.refresh_tenants().await?;
        engine.spawn_loops();
        engine.spawn_shared_loops();
        tracing::info!(instance_id = %engine.inner.instance_id, "engine started");
        Ok(engine)
    }

    /// Ready to accept work: admitting, and the store takes writes (probed
    /// at most once per [`READINESS_TTL`], so readiness comes back by itself
    /// within a second of the store's return).
    pub async fn ready(&self) -> Result<(), EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        let mut last = self.inner.readiness.lock().await;
        let fresh = last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < READINESS_TTL)
            .map(|(_, result)| result.clone());
        let result = match fresh {
            Some(result) => result,
            None => {
                let probe =
                    tokio::time::timeout(READINESS_TIMEOUT, self.inner.store.probe_writes()).await;
                let result = match probe {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!(
                        "the store did not commit a write within {} s",
                        READINESS_TIMEOUT.as_secs()
                    )),
                };
                *last = Some((tokio::time::Instant::now(), result.clone()));
                result
            }
        };
        result.map_err(|message| EngineError::Storage(StoreError::Unavailable(message)))
    }

    /// Stops admitting, lets running jobs finish within the shutdown grace,
    /// interrupts and hands back the rest, then stops every loop.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.admitting.store(false, Ordering::Release);
        inner.stopping.cancel();
        inner.jobs.close();
        let grace = inner.settings.shutdown_grace;
        // Interrupting leaves the handlers `cancel_grace` to return, so start
        // it early enough for the whole shutdown to fit in the grace period.
        let patience = grace.saturating_sub(inner.settings.cancel_grace.min(grace / 2));
        let running = inner.running.lock().map(|r| r.len()).unwrap_or(0);
        tracing::info!(
            running_jobs = running,
            grace_ms = grace.as_millis() as u64,
            "shutting down"
        );
        let mut handed_back = 0;
        if tokio::time::timeout(patience, inner.jobs.wait())
            .await
            .is_err()
        {
            let ids: Vec<JobId> = inner
                .running
                .lock()
                .map(|r| r.keys().copied().collect())
                .unwrap_or_default();
            handed_back = ids.len();
            tracing::warn!(
                jobs = ids.len(),
                "grace period over: handing running jobs back to their queues"
            );
            for id in ids {
                self.stop_running(id, STOP_SHUTDOWN);
            }
            let bound = inner.settings.cancel_grace + Duration::from_secs(2);
            if tokio::time::timeout(bound, inner.jobs.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    "some jobs did not stop; their leases will expire and they will be rescued"
                );
            }
        }
        inner.loops.close();
        inner.stopped.cancel();
        inner.loops.wait().await;
        tracing::info!(
            jobs_finished = running.saturating_sub(handed_back),
            jobs_handed_back = handed_back,
            "engine stopped"
        );
    }

    pub(super) fn spawn_loops(&self) {
        let loops = &self.inner.loops;
        loops.spawn(self.clone().dispatch_loop());
        loops.spawn(self.clone().promote_loop());
        loops.spawn(self.clone().expire_loop());
        loops.spawn(self.clone().heartbeat_loop());
        loops.spawn(self.clone().rescue_loop());
        loops.spawn(self.clone().prune_loop());
        loops.spawn(self.clone().schedule_loop());
        if let Some(webhooks) = self.inner.webhooks.clone() {
            let deliverer = crate::notify::Deliverer {
                store: self.inner.store.clone(),
                webhooks,
                wake: self.inner.wake_webhooks.clone(),
                redactor: self.inner.kinds.redactor(),
            };
            loops.spawn(deliverer.run(self.inner.stopping.clone()));
        }
    }
}
