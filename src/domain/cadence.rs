//! When a schedule fires: its cron expression or period read in its time zone, and the rule of which due fire times fire and which were missed by downtime.
//!
//! Cron expressions are parsed and walked by `croner` over `jiff` zoned
//! times, which carry the daylight-saving rules: a local time in a gap
//! (spring forward) fires once, at the first valid instant after it; a
//! local time repeated (fall back) fires once, at its first occurrence;
//! an expression with a wildcard or step in the hours (hourly, every
//! minute) fires at every instant it matches, so twice in a repeated hour,
//! each a distinct instant. Time zones come from the host's time zone
//! database, or from the copy built into the binary (jiff's
//! `tzdb-bundle-always`) where the host has none (a slim container).

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Zoned;
use jiff::tz::TimeZone;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Timestamp;

/// How late a fire time may be handled and still count as on time rather
/// than missed by downtime: a few of the firing loop's polls (1 s), so a
/// busy instance or a slow transaction never turns a fire into a miss,
/// while an instance that was down for longer than this catches up by the
/// schedule's policy.
pub const LATE_AFTER_MS: i64 = 5_000;

/// Most fire times one pass over a schedule handles (one transaction);
/// more due fire times are handled by the next passes.
pub const MAX_FIRES_PER_PASS: usize = 1_000;

/// A cron expression of 5 fields (minute precision) or 6 (seconds first).
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    if !(fields == 5 || fields == 6) {
        return Err(format!(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week) \
             or 6 (seconds first); this one has {fields}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|e| format!("not a valid cron expression: {e}"))
}

/// An IANA time zone: from the host's database, else the built-in copy.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::db()
        .get(name)
        .map_err(|_| format!("`{name}` is not an IANA time zone (e.g. Europe/Berlin, UTC)"))
}

/// Which fire times missed by downtime (all instances stopped) still fire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// None: each is recorded as `missed`.
    #[default]
    Skip,
    /// Only the most recent one inside the window.
    Latest,
    /// Every one inside the window, oldest first.
    All,
}

#[derive(Clone, Debug)]
enum Cadence {
    Cron(Box<Cron>),
    Every(i64),
}

/// A schedule's cadence, compiled: the fire times it gives.
#[derive(Clone, Debug)]
pub struct Timing {
    cadence: Cadence,
    zone: TimeZone,
    /// Where an `every_ms` cadence counts from.
    anchor: Timestamp,
    start_at: Option<Timestamp>,
    end_at: Option<Timestamp>,
}

/// A due fire time and what the catch-up rule made of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub fire_at: Timestamp,
    /// `None`: it fires. `Some(reason)`: it was missed by downtime.
    pub missed: Option<String>,
}

/// What one pass over a due schedule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Oldest first.
    pub due: Vec<Due>,
    /// The schedule's next fire time after the pass; at or before `now`
    /// when more were due than one pass handles. `None`: past `end_at`.
    pub next_fire_at: Option<Timestamp>,
}

impl Timing {
    /// The cadence of a `cron` expression or an `every_ms` period counted
    /// from `anchor`, in `timezone`, between `start_at` and `end_at`.
    pub fn new(
        cron: Option<&str>,
        every_ms: Option<i64>,
        timezone: &str,
        anchor: Timestamp,
        (start_at, end_at): (Option<Timestamp>, Option<Timestamp>),
    ) -> Result<Self, String> {
        let cadence = match (cron, every_ms) {
            (Some(cron), _) => Cadence::Cron(Box::new(parse_cron(cron)?)),
            (None, Some(ms)) if ms > 0 => Cadence::Every(ms),
            _ => return Err("a schedule needs cron or every_ms".into()),
        };
        Ok(Self {
            cadence,
            zone: time_zone(timezone)?,
            anchor,
            start_at,
            end_at,
        })
    }

    /// The first fire time strictly after `after`, not before `start_at`;
    /// `None` past `end_at` (or past what a calendar can name).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let after = match self.start_at {
            // The first fire time may be `start_at` itself.
            Some(start) if start.as_millis() - 1 > after.as_millis() => start.plus_ms(-1),
            _ => after,
        };
        let next = match &self.cadence {
            Cadence::Every(period) => {
                let since = after.as_millis() - self.anchor.as_millis();
                let periods = if since < 0 { 0 } else { since / period + 1 };
                Timestamp::from_millis(self.anchor.as_millis() + periods * period)
            }
            Cadence::Cron(cron) => {
                // croner walks whole seconds: start from the second that
                // holds `after`, exclusive, so fractions are never fire times.
                let second = after.as_millis().div_euclid(1_000);
                let start = jiff::Timestamp::from_second(second).ok()?;
                let zoned = Zoned::new(start, self.zone.clone());
                let next = cron.find_next_occurrence(&zoned, false).ok()?;
                Timestamp::from_millis(next.timestamp().as_millisecond())
            }
        };
        match self.end_at {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// The next `count` fire times after `after`.
    pub fn next_times(&self, after: Timestamp, count: usize) -> Vec<Timestamp> {
        let mut times = Vec::with_capacity(count);
        let mut at = after;
        while times.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }

    /// Which of the fire times from `next_fire_at` to `now` fire, by the
    /// catch-up rule: a fire time handled within [`LATE_AFTER_MS`] of it is
    /// on time and fires; an older one was missed by downtime, and fires
    /// only as `catch_up` says and only inside `window_ms` before `now`.
    /// Fire times before the window are passed over with one `missed`
    /// entry for them all. At most `limit` fire times are handled.
    pub fn plan(
        &self,
        next_fire_at: Timestamp,
        now: Timestamp,
        catch_up: CatchUp,
        window_ms: i64,
        limit: usize,
    ) -> Plan {
        let mut due = Vec::new();
        let mut at = Some(next_fire_at);
        let window_start = now.plus_ms(-window_ms);
        if next_fire_at < window_start {
            due.push(Due {
                fire_at: next_fire_at,
                missed: Some(format!(
                    "missed by downtime, before the catch-up window; later fire times before \
                     {window_start} are not recorded"
                )),
            });
            at = self.next_after(window_start.plus_ms(-1));
        }
        let late_before = now.plus_ms(-LATE_AFTER_MS);
        let mut late = Vec::new();
        let mut on_time = Vec::new();
        while let Some(fire_at) = at.filter(|at| *at <= now) {
            if due.len() + late.len() + on_time.len() >= limit.max(1) {
                break;
            }
            if fire_at < late_before {
                late.push(fire_at);
            } else {
                on_time.push(fire_at);
            }
            at = self.next_after(fire_at);
        }
        // More due than one pass takes: the latest is in a later pass.
        let more = at.is_some_and(|at| at <= now);
        let fires_latest = catch_up == CatchUp::Latest && on_time.is_empty() && !more;
        let last_late = late.len().checked_sub(1);
        for (index, fire_at) in late.into_iter().enumerate() {
            let fires = catch_up == CatchUp::All || (fires_latest && Some(index) == last_late);
            due.push(Due {
                fire_at,
                missed: (!fires).then(|| {
                    match catch_up {
                        CatchUp::Skip => "missed by downtime (catch_up: skip)",
                        _ => "missed by downtime; a later fire time was caught up instead",
                    }
                    .to_owned()
                }),
            });
        }
        due.extend(on_time.into_iter().map(|fire_at| Due {
            fire_at,
            missed: None,
        }));
        Plan {
            due,
            next_fire_at: at,
        }
    }
}

#[cfg(test)]
#[path = "cadence_tests.rs"]
mod tests;
