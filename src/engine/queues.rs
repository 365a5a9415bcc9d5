//! Queues as the engine sees them: settings cached from the store, changed
//! at runtime, and the slots each has running here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Engine, EngineError, QueueState};
use crate::domain::{FieldError, QueueConfig, QueueInfo, QueueSettings, Timestamp};
use crate::store::{QueueDeletion, ServiceGauges};

/// What `/metrics` shows of the queues: the store's service-wide figures
/// and this instance's running jobs.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    /// Every queue with its service-wide counts.
    pub queues: Vec<QueueInfo>,
    pub gauges: ServiceGauges,
    /// When the figures were read.
    pub read_at: Timestamp,
    /// Jobs of each queue running in this instance.
    pub running_here: Vec<(String, u32)>,
}

/// How long the figures of `/metrics` are reused: every instance may be
/// scraped by several Prometheus servers, and each read is a statement per
/// figure over all queues.
const GAUGES_TTL: Duration = Duration::from_secs(1);

impl Engine {
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, EngineError> {
        let mut queues = self.inner.store.list_queues().await?;
        self.add_oldest_ready(&mut queues).await?;
        Ok(queues)
    }

    /// Sets each queue's `current_concurrency`: this instance's limit now.
    fn add_current_concurrency(&self, queues: &mut [QueueInfo]) {
        let states = self.read_queues();
        for queue in queues {
            if let Some(state) = states.get(&queue.name) {
                queue.current_concurrency = state.limit();
            }
        }
    }

    /// Sets each queue's `oldest_ready_at` from the figures `/metrics` reads
    /// (at most once a second), and its `current_concurrency`; the counts
    /// stay as fresh as the store's.
    async fn add_oldest_ready(&self, queues: &mut [QueueInfo]) -> Result<(), EngineError> {
        self.add_current_concurrency(queues);
        let snapshot = self.metrics_snapshot().await?;
        for queue in queues {
            queue.oldest_ready_at = match queue.counts.queued {
                0 => None,
                _ => snapshot
                    .gauges
                    .oldest_ready
                    .iter()
                    .find(|(name, _)| *name == queue.name)
                    .map(|(_, at)| *at),
            };
        }
        Ok(())
    }

    /// The figures `/metrics` shows, read at most once a second; concurrent
    /// scrapes share one read.
    pub async fn metrics_snapshot(&self) -> Result<Arc<MetricsSnapshot>, EngineError> {
        let mut cached = self.inner.gauges.lock().await;
        if let Some((read, snapshot)) = cached.as_ref()
            && read.elapsed() < GAUGES_TTL
        {
            return Ok(snapshot.clone());
        }
        let mut queues = self.inner.store.list_queues().await?;
        self.add_current_concurrency(&mut queues);
        let gauges = self.inner.store.gauges().await?;
        let running_here = self
            .read_queues()
            .values()
            .map(|queue| (queue.config.name.clone(), queue.running))
            .collect();
        let snapshot = Arc::new(MetricsSnapshot {
            queues,
            gauges,
            read_at: Timestamp::now(),
            running_here,
        });
        *cached = Some((tokio::time::Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, EngineError> {
        let mut queue = self
            .inner
            .store
            .get_queue(name)
            .await?
            .ok_or(EngineError::NotFound("queue"))?;
        self.add_oldest_ready(std::slice::from_mut(&mut queue))
            .await?;
        Ok(queue)
    }

    /// Creates or changes a queue; effective at once. `true` when created.
    pub async fn put_queue(
        &self,
        name: &str,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool), EngineError> {
        if !QueueConfig::valid_name(name) {
            return Err(EngineError::Validation(vec![FieldError::new(
                "",
                "queue names are 1 to 64 of A-Z a-z 0-9 _ - .",
            )]));
        }
        // Changes apply to the stored settings, not to defaults.
        self.learn_queues(std::iter::once(name)).await;
        let mut config = self
            .queue_config(name)
            .unwrap_or_else(|| QueueConfig::new(name));
        let limit_before = config.defaults.rate_limit.clone();
        config.apply(settings).map_err(EngineError::Validation)?;
        if config.defaults.rate_limit != limit_before {
            self.check_default_limit(&config).await?;
        }
        let created = self.inner.store.upsert_queue(&config).await?;
        {
            let mut queues = self.write_queues();
            queues
                .entry(name.to_owned())
                .and_modify(|state| state.set_config(config.clone()))
                .or_insert_with(|| QueueState::new(config));
        }
        // More concurrency or an unpaused queue may start jobs now.
        self.inner.wake_dispatcher.notify_one();
        self.tell_queues_changed();
        Ok((self.get_queue(name).await?, created))
    }

    /// Deletes a queue with no unfinished jobs; its finished jobs stay. The
    /// default queue stays: submissions that name no queue need it.
    pub async fn delete_queue(&self, name: &str) -> Result<(), EngineError> {
        if name == QueueConfig::DEFAULT_NAME {
            return Err(EngineError::DefaultQueue(name.to_owned()));
        }
        match self.inner.store.delete_queue(name).await? {
            QueueDeletion::NotFound => Err(EngineError::NotFound("queue")),
            QueueDeletion::Unfinished(unfinished) => Err(EngineError::QueueNotEmpty {
                queue: name.to_owned(),
                unfinished,
            }),
            QueueDeletion::Deleted => {
                self.write_queues().remove(name);
                self.tell_queues_changed();
                tracing::info!(queue = name, "queue deleted");
                Ok(())
            }
        }
    }

    /// Takes the queues' settings as stored (changed or created through
    /// another instance), keeping this instance's running counts.
    pub(super) async fn refresh_queues(&self) {
        let stored = match self.inner.store.list_queues().await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "re-reading the queues failed");
                return;
            }
        };
        let mut changed = false;
        {
            let mut queues = self.write_queues();
            // Deleted through another instance: a deleted queue had no
            // running job, so none of this instance's is dropped.
            let before = queues.len();
            queues.retain(|name, state| {
                state.running > 0 || stored.iter().any(|info| &info.name == name)
            });
            changed |= queues.len() != before;
            for info in stored {
                let config = stored_config(info);
                match queues.get_mut(&config.name) {
                    Some(state) if state.config == config => {}
                    Some(state) => {
                        state.set_config(config);
                        changed = true;
                    }
                    None => {
                        queues.insert(config.name.clone(), QueueState::new(config));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.inner.wake_dispatcher.notify_one();
        }
    }

    /// Shared mode: re-reads the queues if one of `names` is not known here.
    /// Another instance may have just created it, and its news on the bus
    /// may still be on the way; its row is stored, so read it rather than
    /// refuse the queue (API test
    /// `the_capacity_bound_holds_when_all_three_instances_admit_at_once` got
    /// `unknown_queue` from instances that had not heard yet).
    pub(super) async fn learn_queues<'a>(&self, mut names: impl Iterator<Item = &'a str>) {
        if self.inner.shared.is_some() && names.any(|name| self.queue_config(name).is_none()) {
            self.refresh_queues().await;
        }
    }

    pub(super) fn queue_config(&self, name: &str) -> Option<QueueConfig> {
        self.read_queues().get(name).map(|q| q.config.clone())
    }

    pub fn queue_names(&self) -> Vec<String> {
        self.read_queues().keys().cloned().collect()
    }

    pub(super) fn read_queues(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, QueueState>> {
        // A panic while holding this lock cannot leave the map half-changed
        // (every write is a single insert or field store): keep going.
        self.inner
            .queues
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn write_queues(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, QueueState>> {
        self.inner
            .queues
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A queue's settings as the store lists them.
pub(super) fn stored_config(info: QueueInfo) -> QueueConfig {
    QueueConfig {
        name: info.name,
        concurrency: info.concurrency,
        capacity: info.capacity,
        paused: info.paused,
        defaults: info.defaults,
    }
}
