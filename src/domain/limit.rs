//! Rate limits: named, service-wide budgets of job starts (`PUT
//! /v1/limits/{name}`), the reference a job or a queue makes to one, and the
//! generic cell rate algorithm that decides, at claim time, whether a start
//! fits.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, QueueConfig, Timestamp};

/// Longest `key` of a `rate_limit` reference.
const MAX_KEY_LEN: usize = 255;
/// Largest `rate` and `burst`.
pub const MAX_RATE: u32 = 1_000_000;
/// Longest `per_ms`: one day.
pub const MAX_PER_MS: u64 = 86_400_000;

/// What a job names to be held to a limit: the limit, and optionally a key
/// that gives each value its own budget (per customer, per API token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRef {
    /// A limit created with `PUT /v1/limits/{name}`.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// Scopes the limit: each key has its own budget. Jobs without a key
    /// share the limit's unkeyed budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 255)]
    pub key: Option<String>,
}

impl RateLimitRef {
    /// The stored key: the empty string stands for "no key".
    pub fn stored_key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// Checks the reference's shape (not that the limit exists).
    pub fn check(&self, pointer: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !QueueConfig::valid_name(&self.name) {
            errors.push(FieldError::new(
                format!("{pointer}/name"),
                "must be 1 to 64 letters, digits, `_`, `-` or `.`",
            ));
        }
        if let Some(key) = &self.key
            && (key.is_empty() || key.len() > MAX_KEY_LEN)
        {
            errors.push(FieldError::new(
                format!("{pointer}/key"),
                format!("must be 1 to {MAX_KEY_LEN} bytes"),
            ));
        }
        errors
    }
}

/// The body of `PUT /v1/limits/{name}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Job starts allowed per `per_ms`, evenly spaced: one every
    /// `per_ms / rate` ms.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate: u32,
    /// The period of `rate`, in ms. Default 1 000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub per_ms: Option<u64>,
    /// Starts allowed at once after a quiet spell. Default 1: starts are
    /// spaced evenly and no window of `per_ms` ever holds more than
    /// `rate + 1`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<u32>,
}

/// A rate limit as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RateLimit {
    pub name: String,
    pub rate: u32,
    pub per_ms: u64,
    pub burst: u32,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl RateLimitSettings {
    /// The limit these settings describe, or the offending fields.
    pub fn validate(&self) -> Result<Gcra, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(1..=MAX_RATE).contains(&self.rate) {
            errors.push(FieldError::new(
                "/rate",
                format!("must be between 1 and {MAX_RATE}"),
            ));
        }
        let per_ms = self.per_ms.unwrap_or(1_000);
        if !(1..=MAX_PER_MS).contains(&per_ms) {
            errors.push(FieldError::new(
                "/per_ms",
                format!("must be between 1 and {MAX_PER_MS}"),
            ));
        }
        let burst = self.burst.unwrap_or(1);
        if !(1..=MAX_RATE).contains(&burst) {
            errors.push(FieldError::new(
                "/burst",
                format!("must be between 1 and {MAX_RATE}"),
            ));
        }
        if errors.is_empty() {
            Ok(Gcra {
                rate: self.rate,
                per_ms,
                burst,
            })
        } else {
            Err(errors)
        }
    }
}

/// A limit's parameters, for the generic cell rate algorithm (GCRA).
///
/// A key's whole state is one number, its theoretical arrival time (`tat`,
/// microseconds): the instant its budget would be back to full if nothing
/// more started. A start at `now` fits when `max(tat, now) - now` is at most
/// the burst tolerance `(burst - 1) × interval`; it moves `tat` on by one
/// interval. So 100 000 keys in use cost 100 000 small rows and nothing in
/// memory, and a key whose `tat` has passed is the same as no row at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    pub rate: u32,
    pub per_ms: u64,
    pub burst: u32,
}

/// A key's budget at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Starts that would fit now.
    pub remaining: u32,
    /// When the next start fits (now, when `remaining > 0`).
    pub eligible_at_us: i64,
}

impl Gcra {
    /// Time between two starts at the steady rate, in microseconds.
    pub fn interval_us(&self) -> i64 {
        ((self.per_ms as i64).saturating_mul(1_000) / i64::from(self.rate.max(1))).max(1)
    }

    fn tolerance_us(&self) -> i64 {
        self.interval_us()
            .saturating_mul(i64::from(self.burst.max(1) - 1))
    }

    /// Whether `taken` more starts fit at `now_us` on top of a key at `tat_us`
    /// held until `held_until_us`; `Err(when)` gives the instant the next
    /// one would fit.
    pub fn fits(
        &self,
        tat_us: i64,
        held_until_us: i64,
        taken: u32,
        now_us: i64,
    ) -> Result<(), i64> {
        if held_until_us > now_us {
            return Err(held_until_us);
        }
        let next_tat = tat_us
            .max(now_us)
            .saturating_add(self.interval_us().saturating_mul(i64::from(taken)));
        let eligible_at = next_tat.saturating_sub(self.tolerance_us());
        if eligible_at <= now_us {
            Ok(())
        } else {
            Err(eligible_at)
        }
    }

    /// The key's `tat` after `taken` starts at `now_us`.
    pub fn advance(&self, tat_us: i64, taken: u32, now_us: i64) -> i64 {
        tat_us
            .max(now_us)
            .saturating_add(self.interval_us().saturating_mul(i64::from(taken)))
    }

    /// What a key at `tat_us`, held until `held_until_us`, has left at `now_us`.
    pub fn budget(&self, tat_us: i64, held_until_us: i64, now_us: i64) -> Budget {
        if held_until_us > now_us {
            return Budget {
                remaining: 0,
                eligible_at_us: held_until_us,
            };
        }
        let used = tat_us.max(now_us) - now_us;
        let room = self.tolerance_us() - used;
        if room < 0 {
            return Budget {
                remaining: 0,
                eligible_at_us: now_us - room,
            };
        }
        let remaining = (room / self.interval_us() + 1).min(i64::from(self.burst)) as u32;
        Budget {
            remaining,
            eligible_at_us: now_us,
        }
    }
}

/// A limit's key: the limit's name and the key ('' for none).
pub type LimitKey = (String, String);

/// A key's stored state; both times in microseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    pub tat_us: i64,
    pub held_until_us: i64,
}

/// A key's state as `GET /v1/limits/{name}/keys/{key}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct RateLimitKeyState {
    pub limit: String,
    /// The key, or `null` for the limit's unkeyed budget.
    pub key: Option<String>,
    /// Starts that would fit now.
    pub remaining: u32,
    /// When the next start fits: now when `remaining > 0`.
    #[schema(value_type = String, format = DateTime)]
    pub eligible_at: Timestamp,
    /// Until when a `429`/`503` answer's `Retry-After` holds the key
    /// (`null` when no hold is in force).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub held_until: Option<Timestamp>,
}

/// Microseconds of a millisecond timestamp.
pub fn micros(at: Timestamp) -> i64 {
    at.as_millis().saturating_mul(1_000)
}

/// The millisecond timestamp at or after `us` microseconds.
pub fn from_micros_ceil(us: i64) -> Timestamp {
    Timestamp::from_millis(us.saturating_add(999).div_euclid(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    #[test]
    fn a_smooth_limit_spaces_starts_one_interval_apart() {
        let gcra = Gcra {
            rate: 10,
            per_ms: 1_000,
            burst: 1,
        };
        assert_eq!(gcra.fits(0, 0, 0, SECOND), Ok(()));
        let tat = gcra.advance(0, 1, SECOND);
        assert_eq!(tat, SECOND + 100_000);
        // A second start must wait for the interval.
        assert_eq!(gcra.fits(tat, 0, 0, SECOND), Err(SECOND + 100_000));
        assert_eq!(gcra.fits(tat, 0, 0, SECOND + 100_000), Ok(()));
        assert_eq!(
            gcra.budget(tat, 0, SECOND),
            Budget {
                remaining: 0,
                eligible_at_us: SECOND + 100_000
            }
        );
    }

    #[test]
    fn a_burst_lets_that_many_start_at_once_then_refills_at_the_rate() {
        let gcra = Gcra {
            rate: 5,
            per_ms: 1_000,
            burst: 3,
        };
        let now = 10 * SECOND;
        assert_eq!(gcra.budget(0, 0, now).remaining, 3);
        for taken in 0..3 {
            assert_eq!(gcra.fits(0, 0, taken, now), Ok(()), "start {taken}");
        }
        assert_eq!(gcra.fits(0, 0, 3, now), Err(now + 200_000));
        let tat = gcra.advance(0, 3, now);
        assert_eq!(gcra.budget(tat, 0, now).remaining, 0);
        assert_eq!(gcra.budget(tat, 0, now + 200_000).remaining, 1);
        assert_eq!(gcra.budget(tat, 0, now + 10 * SECOND).remaining, 3);
    }

    #[test]
    fn a_hold_keeps_the_key_closed_until_it_ends() {
        let gcra = Gcra {
            rate: 100,
            per_ms: 1_000,
            burst: 10,
        };
        assert_eq!(gcra.fits(0, 5 * SECOND, 0, SECOND), Err(5 * SECOND));
        assert_eq!(gcra.fits(0, 5 * SECOND, 0, 5 * SECOND), Ok(()));
        assert_eq!(gcra.budget(0, 5 * SECOND, SECOND).remaining, 0);
    }

    #[test]
    fn a_fractional_interval_never_lets_more_than_the_rate_through() {
        // 3 per second: 333 333 µs apart, so never 4 in a second.
        let gcra = Gcra {
            rate: 3,
            per_ms: 1_000,
            burst: 1,
        };
        let mut tat = 0;
        let mut starts = Vec::new();
        let mut now = 0;
        while now < 10 * SECOND {
            if gcra.fits(tat, 0, 0, now).is_ok() {
                tat = gcra.advance(tat, 1, now);
                starts.push(now);
            }
            now += 1_000;
        }
        for (n, start) in starts.iter().enumerate() {
            let within = starts[n..].iter().take_while(|s| **s < start + SECOND);
            assert!(within.count() <= 3);
        }
    }

    #[test]
    fn settings_out_of_range_name_each_field() {
        let settings = RateLimitSettings {
            rate: 0,
            per_ms: Some(0),
            burst: Some(0),
        };
        let errors = settings.validate().unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/rate", "/per_ms", "/burst"]);
    }
}
