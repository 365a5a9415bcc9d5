//! Fire times on an injected clock: cron fields, periods, daylight saving, catch-up.

use super::*;

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("a timestamp")
}

/// A cadence that starts at once and never ends.
fn cadence(cron: Option<&str>, every_ms: Option<i64>, timezone: &str, anchor: Timestamp) -> Timing {
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
