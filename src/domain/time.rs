//! Millisecond timestamps, stored as integers and shown as RFC 3339 UTC.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch, UTC.
///
/// Integers sort and compare cheaply in both databases; the RFC 3339 form
/// (`2026-11-23T10:00:00.123Z`) is only produced at the API boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Self((nanos / 1_000_000) as i64)
    }

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub fn plus_ms(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Parses an RFC 3339 timestamp with any offset; `None` when it is not one
    /// or lies outside the years 1970..=9999.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        let ms = parsed.unix_timestamp_nanos() / 1_000_000;
        if !(0..=253_402_300_799_999).contains(&ms) {
            return None;
        }
        Some(Self(ms as i64))
    }

    /// `2026-11-23T10:00:00.123Z`. Hand-rolled (days to civil date, after
    /// Howard Hinnant) because it runs for every timestamp of every response.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0.rem_euclid(1_000);
        let secs = self.0.div_euclid(1_000);
        let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            day_secs / 3_600,
            day_secs % 3_600 / 60,
            day_secs % 60
        )
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_rfc3339_utc_with_milliseconds() {
        let at = Timestamp::parse_rfc3339("2026-11-23T10:00:00.123Z").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-11-23T10:00:00.123Z");
        let offset = Timestamp::parse_rfc3339("2026-11-23T11:00:00.123+01:00").unwrap();
        assert_eq!(offset, at);
    }

    proptest::proptest! {
        #[test]
        fn formatting_agrees_with_the_time_crate(ms in 0i64..253_402_300_799_999) {
            let at = Timestamp::from_millis(ms);
            let expected = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap()
                .format(&Rfc3339)
                .unwrap();
            let ours = at.to_rfc3339();
            // time prints no trailing zeros in the fraction; compare instants.
            proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&ours), Some(at));
            proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&expected), Some(at));
            proptest::prop_assert_eq!(&ours[..19], &expected[..19]);
        }
    }

    #[test]
    fn out_of_range_or_malformed_timestamps_are_refused() {
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").is_none());
    }
}
