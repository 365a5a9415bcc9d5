//! Tenants' quotas: how many jobs a tenant may have waiting, and how fast
//! each of its keys may submit.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, Timestamp};

/// Largest `max_pending` (the largest queue capacity).
pub const MAX_PENDING_LIMIT: u64 = super::QueueConfig::MAX_CAPACITY;
/// Largest `submit_rate` (jobs per second) and `submit_burst`.
pub const MAX_SUBMIT_RATE: f64 = 1_000_000.0;
pub const MAX_SUBMIT_BURST: u32 = 1_000_000;

/// A tenant's quotas: the body of `PUT /v1/tenants/{tenant}` and of a
/// `[tenants.NAME]` table of the config file. Every field left out or
/// `null` is no limit; a `PUT` replaces all three.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Most jobs the tenant may have `scheduled` or `queued` at once, over
    /// all queues. A submission that would go over it is refused whole
    /// (429 `tenant_quota`). `0` refuses every submission.
    #[serde(default)]
    pub max_pending: Option<u64>,
    /// Jobs per second each API key of the tenant may submit, on average
    /// (a batch counts as its number of jobs); more is refused (429
    /// `rate_limited`). Enforced by each instance for the requests it
    /// receives.
    #[serde(default)]
    pub submit_rate: Option<f64>,
    /// Jobs a key may submit at once beyond the average, after a pause.
    /// Needs `submit_rate`; default: `submit_rate` rounded up (one second's
    /// worth), at least 1.
    #[serde(default)]
    pub submit_burst: Option<u32>,
}

impl TenantSettings {
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.max_pending.is_some_and(|n| n > MAX_PENDING_LIMIT) {
            errors.push(FieldError::new(
                "/max_pending",
                format!("must be between 0 and {MAX_PENDING_LIMIT}"),
            ));
        }
        if let Some(rate) = self.submit_rate
            && !(rate.is_finite() && rate > 0.0 && rate <= MAX_SUBMIT_RATE)
        {
            errors.push(FieldError::new(
                "/submit_rate",
                format!("must be more than 0 and at most {MAX_SUBMIT_RATE} (jobs per second)"),
            ));
        }
        if let Some(burst) = self.submit_burst {
            if !(1..=MAX_SUBMIT_BURST).contains(&burst) {
                errors.push(FieldError::new(
                    "/submit_burst",
                    format!("must be between 1 and {MAX_SUBMIT_BURST}"),
                ));
            } else if self.submit_rate.is_none() {
                errors.push(FieldError::new(
                    "/submit_burst",
                    "needs `submit_rate`: a burst is a number of jobs beyond a rate",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The rate limit of each key, when there is one: (jobs per second, burst).
    pub fn rate(&self) -> Option<(f64, u32)> {
        let rate = self.submit_rate?;
        let burst = self
            .submit_burst
            .unwrap_or_else(|| (rate.ceil() as u32).clamp(1, MAX_SUBMIT_BURST));
        Some((rate, burst))
    }

    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.max_pending.is_none() && self.submit_rate.is_none()
    }
}

/// A tenant's settings as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    pub settings: TenantSettings,
    pub updated_at: Timestamp,
}

/// A tenant as `GET /v1/tenants/{tenant}` shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TenantInfo {
    pub name: String,
    /// The settings, as `PUT` takes them (a field of its own: flattened,
    /// their schema's `additionalProperties: false` would forbid the rest).
    pub settings: TenantSettings,
    /// The tenant's `scheduled` plus `queued` jobs now, over all queues:
    /// what `max_pending` bounds.
    pub pending: u64,
    /// When the settings were last changed; `null`: never set (no limits).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_needs_a_rate_and_defaults_to_a_second_of_it() {
        let burst_alone = TenantSettings {
            submit_burst: Some(5),
            ..TenantSettings::default()
        };
        assert!(burst_alone.validate().is_err());
        let rate = TenantSettings {
            submit_rate: Some(2.5),
            ..TenantSettings::default()
        };
        assert!(rate.validate().is_ok());
        assert_eq!(rate.rate(), Some((2.5, 3)));
        let slow = TenantSettings {
            submit_rate: Some(0.1),
            ..TenantSettings::default()
        };
        assert_eq!(slow.rate(), Some((0.1, 1)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            let settings = TenantSettings {
                submit_rate: Some(bad),
                ..TenantSettings::default()
            };
            assert!(settings.validate().is_err(), "{bad} accepted");
        }
    }
}
