//! Queues: named, bounded, each with its own concurrency and job defaults.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, RateLimitRef, Timestamp};

/// Retry delay: exponential from `base_ms`, capped at `max_ms`, full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry, before jitter. Default 1 000.
    pub base_ms: u64,
    /// Cap of the delay. Default 600 000 (10 minutes).
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            max_ms: 600_000,
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry number `failed_attempts`
    /// (1 after the first failure): `min(max_ms, base_ms * 2^(n-1))`.
    /// Full jitter picks uniformly in `0..=ceiling`.
    pub fn ceiling_ms(&self, failed_attempts: u32) -> u64 {
        let exponent = failed_attempts.saturating_sub(1).min(63);
        let grown = self.base_ms.saturating_mul(1u64 << exponent);
        grown.min(self.max_ms)
    }
}

/// Defaults a queue gives the jobs submitted to it that don't say otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDefaults {
    /// Default 3.
    pub max_attempts: u32,
    /// Default 60 000.
    pub timeout_ms: u64,
    pub backoff: Backoff,
    /// The rate limit of jobs that name none. Default none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitRef>,
    /// Jobs that give no expiry expire this many ms after submission if
    /// not started. Default none (they wait as long as it takes).
    #[serde(default)]
    pub expires_after_ms: Option<u64>,
}

impl Default for QueueDefaults {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            timeout_ms: 60_000,
            backoff: Backoff::default(),
            rate_limit: None,
            expires_after_ms: None,
        }
    }
}

/// How many jobs of a queue run at once on each instance: a fixed number,
/// or a range the service moves within as the jobs show it may
/// (`{"min": 2, "max": 64}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Concurrency {
    /// Exactly this many, 1 to 10 000.
    Fixed(u32),
    /// Adaptive: starts at `min`, grows toward `max` while jobs wait and
    /// run as fast as before, shrinks when they slow down or fail, and back
    /// toward `min` when the queue is idle.
    Adaptive(ConcurrencyRange),
}

/// The range of an adaptive queue's concurrency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyRange {
    /// 1 to `max`.
    #[schema(minimum = 1, maximum = 10_000)]
    pub min: u32,
    /// `min` to 10 000.
    #[schema(minimum = 1, maximum = 10_000)]
    pub max: u32,
}

impl Concurrency {
    /// The most jobs that may ever run at once.
    pub fn max(self) -> u32 {
        match self {
            Concurrency::Fixed(n) => n,
            Concurrency::Adaptive(range) => range.max,
        }
    }

    /// The adaptive range, if the concurrency is adaptive.
    pub fn range(self) -> Option<ConcurrencyRange> {
        match self {
            Concurrency::Fixed(_) => None,
            Concurrency::Adaptive(range) => Some(range),
        }
    }

    fn check(self, errors: &mut Vec<FieldError>) {
        let max = QueueConfig::MAX_CONCURRENCY;
        match self {
            Concurrency::Fixed(n) if !(1..=max).contains(&n) => errors.push(FieldError::new(
                "/concurrency",
                format!("must be between 1 and {max}"),
            )),
            Concurrency::Adaptive(range) if !(1..=max).contains(&range.min) => {
                errors.push(FieldError::new(
                    "/concurrency/min",
                    format!("must be between 1 and {max}"),
                ));
            }
            Concurrency::Adaptive(range) if !(range.min..=max).contains(&range.max) => {
                errors.push(FieldError::new(
                    "/concurrency/max",
                    format!("must be between min ({}) and {max}", range.min),
                ));
            }
            _ => {}
        }
    }
}

/// A queue's settings, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub name: String,
    /// Jobs of this queue running at once on each instance. Default 10.
    pub concurrency: Concurrency,
    /// Bound on `scheduled + queued` jobs. Default 10 000.
    pub capacity: u64,
    /// A paused queue admits jobs but starts none.
    pub paused: bool,
    pub defaults: QueueDefaults,
}

impl QueueConfig {
    pub const DEFAULT_NAME: &'static str = "default";
    pub const DEFAULT_CONCURRENCY: u32 = 10;
    pub const DEFAULT_CAPACITY: u64 = 10_000;
    pub const MAX_CONCURRENCY: u32 = 10_000;
    pub const MAX_CAPACITY: u64 = 100_000_000;

    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: Concurrency::Fixed(Self::DEFAULT_CONCURRENCY),
            capacity: Self::DEFAULT_CAPACITY,
            paused: false,
            defaults: QueueDefaults::default(),
        }
    }

    /// Queue names appear in URLs and metrics labels: keep them plain.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }

    /// Applies a partial change; fields left out keep their value.
    pub fn apply(&mut self, settings: &QueueSettings) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(concurrency) = settings.concurrency {
            let before = errors.len();
            concurrency.check(&mut errors);
            if errors.len() == before {
                self.concurrency = concurrency;
            }
        }
        if let Some(capacity) = settings.capacity {
            if (1..=Self::MAX_CAPACITY).contains(&capacity) {
                self.capacity = capacity;
            } else {
                errors.push(FieldError::new(
                    "/capacity",
                    format!("must be between 1 and {}", Self::MAX_CAPACITY),
                ));
            }
        }
        if let Some(paused) = settings.paused {
            self.paused = paused;
        }
        if let Some(defaults) = &settings.defaults {
            if let Some(max_attempts) = defaults.max_attempts {
                if (1..=100).contains(&max_attempts) {
                    self.defaults.max_attempts = max_attempts;
                } else {
                    errors.push(FieldError::new(
                        "/defaults/max_attempts",
                        "must be between 1 and 100",
                    ));
                }
            }
            if let Some(timeout_ms) = defaults.timeout_ms {
                if (1..=super::spec::MAX_TIMEOUT_MS).contains(&timeout_ms) {
                    self.defaults.timeout_ms = timeout_ms;
                } else {
                    errors.push(FieldError::new(
                        "/defaults/timeout_ms",
                        format!("must be between 1 and {}", super::spec::MAX_TIMEOUT_MS),
                    ));
                }
            }
            if let Some(backoff) = defaults.backoff {
                match super::spec::check_backoff(backoff, "/defaults/backoff") {
                    Ok(backoff) => self.defaults.backoff = backoff,
                    Err(mut more) => errors.append(&mut more),
                }
            }
            match &defaults.rate_limit {
                Some(Some(reference)) => {
                    let mut more = reference.check("/defaults/rate_limit");
                    if more.is_empty() {
                        self.defaults.rate_limit = Some(reference.clone());
                    }
                    errors.append(&mut more);
                }
                Some(None) => self.defaults.rate_limit = None,
                None => {}
            }
            match defaults.expires_after_ms {
                Some(Some(ms)) if (1..=super::spec::MAX_DELAY_MS).contains(&ms) => {
                    self.defaults.expires_after_ms = Some(ms);
                }
                Some(Some(_)) => errors.push(FieldError::new(
                    "/defaults/expires_after_ms",
                    format!("must be between 1 and {}", super::spec::MAX_DELAY_MS),
                )),
                Some(None) => self.defaults.expires_after_ms = None,
                None => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The body of `PUT /v1/queues/{name}`: every field optional; what is left
/// out keeps its current value (or its default, for a new queue).
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Jobs running at once on each instance: a number (1 to 10 000), or
    /// `{"min": 2, "max": 64}` to let the service adapt it.
    pub concurrency: Option<Concurrency>,
    pub capacity: Option<u64>,
    pub paused: Option<bool>,
    pub defaults: Option<QueueDefaultsPatch>,
}

/// Partial queue defaults, for `PUT /v1/queues/{name}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDefaultsPatch {
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub backoff: Option<Backoff>,
    /// A limit for jobs that name none; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimitRef>)]
    pub rate_limit: Option<Option<RateLimitRef>>,
    /// 1..=31 622 400 000; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 31_622_400_000_u64)]
    pub expires_after_ms: Option<Option<u64>>,
}

/// A field given, even as `null` (`Some(None)`), apart from one left out
/// (`None`, by `#[serde(default)]`): `null` clears a default.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Jobs of one queue per non-terminal state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueCounts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
}

/// A queue as `GET /v1/queues` shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct QueueInfo {
    pub name: String,
    pub concurrency: Concurrency,
    /// Jobs that may run at once on the instance that answered: the fixed
    /// number, or where an adaptive queue's limit is now.
    pub current_concurrency: u32,
    pub capacity: u64,
    pub paused: bool,
    pub defaults: QueueDefaults,
    pub counts: QueueCounts,
    /// Since when the queue's oldest ready job has waited for a slot
    /// (service-wide; read at most once a second, so up to a second old);
    /// `null` when no job is ready.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_ready_at: Option<Timestamp>,
}

impl QueueInfo {
    pub fn new(config: QueueConfig, counts: QueueCounts) -> Self {
        Self {
            name: config.name,
            concurrency: config.concurrency,
            current_concurrency: config
                .concurrency
                .range()
                .map_or(config.concurrency.max(), |range| range.min),
            capacity: config.capacity,
            paused: config.paused,
            defaults: config.defaults,
            counts,
            oldest_ready_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_stops_at_the_cap() {
        let backoff = Backoff {
            base_ms: 100,
            max_ms: 1_000,
        };
        assert_eq!(backoff.ceiling_ms(1), 100);
        assert_eq!(backoff.ceiling_ms(2), 200);
        assert_eq!(backoff.ceiling_ms(4), 800);
        assert_eq!(backoff.ceiling_ms(5), 1_000);
        assert_eq!(backoff.ceiling_ms(99), 1_000);
    }
}
