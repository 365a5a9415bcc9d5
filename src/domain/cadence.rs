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
mod tests {
    //! Fire times on an injected clock: cron fields, periods, daylight saving, catch-up.

    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("a timestamp")
    }

    /// A cadence that starts at once and never ends.
    fn cadence(
        cron: Option<&str>,
        every_ms: Option<i64>,
        timezone: &str,
        anchor: Timestamp,
    ) -> Timing {
        Timing::new(cron, every_ms, timezone, anchor, (None, None)).expect("a valid cadence")
    }

    fn cron(expression: &str, timezone: &str) -> Timing {
        cadence(Some(expression), None, timezone, at("2026-01-01T00:00:00Z"))
    }

    fn times(timing: &Timing, after: &str, count: usize) -> Vec<String> {
        timing
            .next_times(at(after), count)
            .into_iter()
            .map(Timestamp::to_rfc3339)
            .collect()
    }

    #[test]
    fn a_five_field_cron_fires_on_whole_minutes_and_a_six_field_one_on_its_seconds() {
        let minutely = cron("*/15 * * * *", "UTC");
        assert_eq!(
            times(&minutely, "2026-03-01T10:07:12.500Z", 3),
            [
                "2026-03-01T10:15:00.000Z",
                "2026-03-01T10:30:00.000Z",
                "2026-03-01T10:45:00.000Z"
            ]
        );
        let seconds = cron("*/20 * * * * *", "UTC");
        assert_eq!(
            times(&seconds, "2026-03-01T10:00:00.000Z", 3),
            [
                "2026-03-01T10:00:20.000Z",
                "2026-03-01T10:00:40.000Z",
                "2026-03-01T10:01:00.000Z"
            ]
        );
        // A fraction of a second past a fire time does not make it fire again.
        assert_eq!(
            times(&seconds, "2026-03-01T10:00:20.300Z", 1),
            ["2026-03-01T10:00:40.000Z"]
        );
    }

    #[test]
    fn cron_expressions_of_the_wrong_shape_are_refused_with_a_reason() {
        assert!(parse_cron("* * * *").unwrap_err().contains("5 fields"));
        assert!(
            parse_cron("* * * * * * *")
                .unwrap_err()
                .contains("this one has 7")
        );
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("0 9 * * MON-FRI").is_ok());
        assert!(time_zone("Mars/Olympus_Mons").is_err());
        assert!(time_zone("America/New_York").is_ok());
    }

    #[test]
    fn a_cron_reads_its_fields_in_its_time_zone() {
        let nine = cron("0 9 * * *", "Europe/Berlin");
        // Berlin is UTC+1 in January, UTC+2 in July.
        assert_eq!(
            times(&nine, "2026-01-10T00:00:00Z", 1),
            ["2026-01-10T08:00:00.000Z"]
        );
        assert_eq!(
            times(&nine, "2026-07-10T00:00:00Z", 1),
            ["2026-07-10T07:00:00.000Z"]
        );
    }

    #[test]
    fn on_the_spring_forward_day_a_time_in_the_gap_fires_once_at_the_next_valid_instant() {
        // New York: 2026-03-08 02:00 EST becomes 03:00 EDT (07:00Z).
        let new_york = cron("30 2 * * *", "America/New_York");
        assert_eq!(
            times(&new_york, "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00.000Z",
                "2026-03-09T06:30:00.000Z",
                "2026-03-10T06:30:00.000Z"
            ]
        );
        // Berlin: 2026-03-29 02:00 CET becomes 03:00 CEST (01:00Z).
        let berlin = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            times(&berlin, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]
        );
    }

    #[test]
    fn on_the_fall_back_day_a_repeated_time_fires_once() {
        // New York: 2026-11-01 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
        let new_york = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            times(&new_york, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"]
        );
        // Berlin: 2026-10-25 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let berlin = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            times(&berlin, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]
        );
    }

    #[test]
    fn an_hourly_cron_across_fall_back_fires_at_each_distinct_instant_once() {
        let hourly = cron("0 * * * *", "America/New_York");
        // 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST, 03:00 EST.
        assert_eq!(
            times(&hourly, "2026-11-01T03:30:00Z", 5),
            [
                "2026-11-01T04:00:00.000Z",
                "2026-11-01T05:00:00.000Z",
                "2026-11-01T06:00:00.000Z",
                "2026-11-01T07:00:00.000Z",
                "2026-11-01T08:00:00.000Z"
            ]
        );
        let berlin = cron("0 * * * *", "Europe/Berlin");
        assert_eq!(
            times(&berlin, "2026-10-24T23:30:00Z", 4),
            [
                "2026-10-25T00:00:00.000Z",
                "2026-10-25T01:00:00.000Z",
                "2026-10-25T02:00:00.000Z",
                "2026-10-25T03:00:00.000Z"
            ]
        );
    }

    #[test]
    fn a_period_counts_from_its_anchor_and_honours_start_and_end() {
        let anchor = at("2026-03-01T10:00:00.250Z");
        let timing = cadence(None, Some(60_000), "UTC", anchor);
        assert_eq!(
            times(&timing, "2026-03-01T10:00:00.250Z", 2),
            ["2026-03-01T10:01:00.250Z", "2026-03-01T10:02:00.250Z"]
        );
        let bounds = (
            Some(at("2026-03-01T12:00:00Z")),
            Some(at("2026-03-01T12:01:30Z")),
        );
        let timing = Timing::new(
            None,
            Some(60_000),
            "UTC",
            at("2026-03-01T12:00:00Z"),
            bounds,
        )
        .expect("a cadence");
        // `start_at` itself fires; nothing after `end_at`.
        assert_eq!(
            times(&timing, "2026-03-01T10:00:00Z", 5),
            ["2026-03-01T12:00:00.000Z", "2026-03-01T12:01:00.000Z"]
        );
    }

    fn fired(plan: &Plan) -> Vec<Timestamp> {
        plan.due
            .iter()
            .filter(|due| due.missed.is_none())
            .map(|due| due.fire_at)
            .collect()
    }

    #[test]
    fn after_ten_minutes_of_downtime_skip_fires_none_latest_one_and_all_each() {
        let timing = cadence(None, Some(60_000), "UTC", at("2026-03-01T10:00:00Z"));
        let next = at("2026-03-01T10:01:00Z");
        // Down from 10:00:30 to 10:11:30: ten fire times were missed.
        let now = at("2026-03-01T10:11:30Z");
        let skip = timing.plan(next, now, CatchUp::Skip, 3_600_000, 1_000);
        assert_eq!(skip.due.len(), 11);
        assert!(fired(&skip).is_empty());
        assert_eq!(skip.next_fire_at, Some(at("2026-03-01T10:12:00Z")));
        let latest = timing.plan(next, now, CatchUp::Latest, 3_600_000, 1_000);
        assert_eq!(fired(&latest), [at("2026-03-01T10:11:00Z")]);
        assert_eq!(latest.due.len(), 11);
        let all = timing.plan(next, now, CatchUp::All, 3_600_000, 1_000);
        assert_eq!(fired(&all).len(), 11);
        // A window of five minutes: what is older is one missed entry.
        let windowed = timing.plan(next, now, CatchUp::All, 300_000, 1_000);
        assert_eq!(fired(&windowed).first(), Some(&at("2026-03-01T10:07:00Z")));
        assert_eq!(fired(&windowed).len(), 5);
        assert_eq!(windowed.due.len(), 6);
    }

    #[test]
    fn a_fire_time_handled_a_little_late_is_on_time_and_fires_under_every_policy() {
        let timing = cadence(None, Some(60_000), "UTC", at("2026-03-01T10:00:00Z"));
        let next = at("2026-03-01T10:01:00Z");
        let now = next.plus_ms(LATE_AFTER_MS - 1);
        let plan = timing.plan(next, now, CatchUp::Skip, 3_600_000, 1_000);
        assert_eq!(fired(&plan), [next]);
        assert_eq!(plan.next_fire_at, Some(at("2026-03-01T10:02:00Z")));
    }

    #[test]
    fn a_pass_handles_at_most_its_limit_and_only_the_last_pass_fires_under_latest() {
        let timing = cadence(None, Some(1_000), "UTC", at("2026-03-01T10:00:00Z"));
        let mut next = at("2026-03-01T10:00:01Z");
        let now = at("2026-03-01T10:10:00Z");
        let mut fired_in_all = Vec::new();
        let mut passes = 0;
        while next <= now {
            let plan = timing.plan(next, now, CatchUp::Latest, 3_600_000, 100);
            assert!(plan.due.len() <= 100);
            fired_in_all.extend(fired(&plan));
            next = plan.next_fire_at.expect("no end");
            passes += 1;
        }
        assert_eq!(passes, 6);
        // Only the last pass fires: the fire times still on time (the last
        // five seconds); every older one was missed.
        let on_time: Vec<Timestamp> = (0..=5)
            .map(|s| at("2026-03-01T10:09:55Z").plus_ms(s * 1_000))
            .collect();
        assert_eq!(fired_in_all, on_time);
    }

    #[test]
    fn a_cron_that_never_matches_has_no_next_fire_time_and_answers_at_once() {
        let started = std::time::Instant::now();
        let never = cron("0 0 30 2 *", "UTC");
        assert_eq!(never.next_after(at("2026-03-01T00:00:00Z")), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
