//! Rate limits: creating, reading and deleting them, the state of a key,
//! and why a queued job waits (`waiting_reason`, `eligible_at`).

use std::collections::HashMap;

use super::{Engine, EngineError};
use crate::domain::{
    FieldError, Gcra, Job, JobState, KeyState, LimitKey, QueueConfig, RateLimit, RateLimitKeyState,
    RateLimitSettings, Timestamp, WaitingReason, from_micros_ceil, micros,
};

impl Engine {
    /// Creates or changes a limit; true when created. The next claim of
    /// every instance applies it: claims read it in their transaction.
    pub async fn put_limit(
        &self,
        name: &str,
        settings: &RateLimitSettings,
    ) -> Result<(RateLimit, bool), EngineError> {
        check_name(name)?;
        let gcra = settings.validate().map_err(EngineError::Validation)?;
        let (limit, created) = self
            .inner
            .store
            .put_limit(name, gcra, Timestamp::now())
            .await?;
        // A raised limit may let jobs start now.
        self.inner.wake_dispatcher.notify_one();
        Ok((limit, created))
    }

    pub async fn get_limit(&self, name: &str) -> Result<RateLimit, EngineError> {
        self.inner
            .store
            .get_limit(name)
            .await?
            .ok_or(EngineError::NotFound("rate limit"))
    }

    pub async fn list_limits(&self) -> Result<Vec<RateLimit>, EngineError> {
        Ok(self.inner.store.list_limits().await?)
    }

    /// Deletes a limit; jobs that name it start without one from then on.
    pub async fn delete_limit(&self, name: &str) -> Result<(), EngineError> {
        if self.inner.store.delete_limit(name).await? {
            self.inner.wake_dispatcher.notify_one();
            Ok(())
        } else {
            Err(EngineError::NotFound("rate limit"))
        }
    }

    /// What a key of a limit has left now (`key: None`: the unkeyed budget).
    pub async fn limit_key_state(
        &self,
        name: &str,
        key: Option<&str>,
    ) -> Result<RateLimitKeyState, EngineError> {
        let limit = self.get_limit(name).await?;
        let stored: LimitKey = (name.to_owned(), key.unwrap_or_default().to_owned());
        let state = self
            .inner
            .store
            .limit_keys(std::slice::from_ref(&stored))
            .await?
            .into_iter()
            .next()
            .map(|(_, state)| state)
            .unwrap_or_default();
        let now_us = micros(Timestamp::now());
        let budget = gcra_of(&limit).budget(state.tat_us, state.held_until_us, now_us);
        Ok(RateLimitKeyState {
            limit: limit.name,
            key: key.map(str::to_owned),
            remaining: budget.remaining,
            eligible_at: from_micros_ceil(budget.eligible_at_us),
            held_until: (state.held_until_us > now_us)
                .then(|| from_micros_ceil(state.held_until_us)),
        })
    }

    /// Checks that a queue's default limit exists when it is set.
    pub(super) async fn check_default_limit(
        &self,
        config: &QueueConfig,
    ) -> Result<(), EngineError> {
        let Some(limit) = &config.defaults.rate_limit else {
            return Ok(());
        };
        if self.inner.store.get_limit(&limit.name).await?.is_none() {
            return Err(EngineError::Validation(vec![FieldError::new(
                "/defaults/rate_limit/name",
                format!(
                    "no rate limit `{}`: create it with PUT /v1/limits/{}",
                    limit.name, limit.name
                ),
            )]));
        }
        Ok(())
    }

    /// Fills in `waiting_reason` and `eligible_at` of queued jobs held to a
    /// limit whose key has no budget now: one read of their keys and limits,
    /// none when no job shown waits on a limit.
    pub(super) async fn with_waiting_reasons(&self, jobs: &mut [Job]) -> Result<(), EngineError> {
        let limited: Vec<LimitKey> = jobs
            .iter()
            .filter(|job| job.status == JobState::Queued)
            .filter_map(|job| job.rate_limit.as_ref())
            .map(|limit| (limit.name.clone(), limit.stored_key().to_owned()))
            .collect();
        if limited.is_empty() {
            return Ok(());
        }
        let states: HashMap<LimitKey, KeyState> = self
            .inner
            .store
            .limit_keys(&limited)
            .await?
            .into_iter()
            .collect();
        let mut limits: HashMap<String, Option<Gcra>> = HashMap::new();
        let now_us = micros(Timestamp::now());
        for job in jobs.iter_mut().filter(|job| job.status == JobState::Queued) {
            let Some(limit) = &job.rate_limit else {
                continue;
            };
            let key = (limit.name.clone(), limit.stored_key().to_owned());
            let Some(state) = states.get(&key) else {
                continue;
            };
            let gcra = match limits.get(&limit.name) {
                Some(gcra) => *gcra,
                None => {
                    let gcra = self
                        .inner
                        .store
                        .get_limit(&limit.name)
                        .await?
                        .map(|limit| gcra_of(&limit));
                    limits.insert(limit.name.clone(), gcra);
                    gcra
                }
            };
            let Some(gcra) = gcra else {
                continue;
            };
            if let Err(eligible_us) = gcra.fits(state.tat_us, state.held_until_us, 0, now_us) {
                job.waiting_reason = Some(WaitingReason::RateLimited);
                job.eligible_at = Some(from_micros_ceil(eligible_us));
            }
        }
        Ok(())
    }
}

fn gcra_of(limit: &RateLimit) -> Gcra {
    Gcra {
        rate: limit.rate,
        per_ms: limit.per_ms,
        burst: limit.burst,
    }
}

fn check_name(name: &str) -> Result<(), EngineError> {
    if QueueConfig::valid_name(name) {
        Ok(())
    } else {
        Err(EngineError::Validation(vec![FieldError::new(
            "",
            "limit names are 1 to 64 of A-Z a-z 0-9 _ - .",
        )]))
    }
}
