//! Schedules: a job spec fired on a cron or fixed cadence, its settings as a client gives and the store keeps them, and its history of fires.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::cadence::{CatchUp, Timing};
use super::{FieldError, JobId, JobSpec, QueueConfig, Timestamp, valid_tenant};

/// Shortest `every_ms`: one fire a second, the finest a cron expression gives.
pub const MIN_EVERY_MS: i64 = 1_000;
/// Longest `every_ms`: a year.
pub const MAX_EVERY_MS: i64 = 366 * 24 * 3_600_000;
/// How far back fire times missed by downtime are caught up, by default.
pub const DEFAULT_CATCH_UP_WINDOW_MS: i64 = 3_600_000;
/// Longest catch-up window: a day. Bounds the fire times one pass walks.
pub const MAX_CATCH_UP_WINDOW_MS: i64 = 24 * 3_600_000;
/// Fires kept in a schedule's history; older ones are pruned as new ones come.
pub const FIRES_KEPT: i64 = 1_000;
/// How many coming fire times a schedule shows.
pub const NEXT_FIRE_TIMES: usize = 5;

/// What to do when a fire time comes while the previous fire's job is
/// still scheduled, queued or running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Fire anyway: runs may overlap (what cron does).
    #[default]
    Allow,
    /// Record a `skipped` fire and make no job.
    Skip,
    /// Cancel the previous job, then fire.
    CancelPrevious,
}

/// What became of one fire time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// A job was made.
    Fired,
    /// No job: the previous one was still active (`overlap: skip`).
    Skipped,
    /// No job: the fire time passed while no instance ran (catch-up policy).
    Missed,
    /// A job was made by `POST /v1/schedules/{id}/trigger`, outside the cadence.
    Triggered,
    /// No job: its admission was refused (a full queue, the tenant's quota,
    /// a queue deleted since), not retried.
    Refused,
}

impl FireOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Fired => "fired",
            FireOutcome::Skipped => "skipped",
            FireOutcome::Missed => "missed",
            FireOutcome::Triggered => "triggered",
            FireOutcome::Refused => "refused",
        }
    }
}

impl fmt::Display for FireOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FireOutcome {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "fired" => FireOutcome::Fired,
            "skipped" => FireOutcome::Skipped,
            "missed" => FireOutcome::Missed,
            "triggered" => FireOutcome::Triggered,
            "refused" => FireOutcome::Refused,
            other => return Err(format!("unknown fire outcome `{other}`")),
        })
    }
}

/// The body of `PUT /v1/schedules/{id}`. Unknown fields are rejected.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression of 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 (seconds first), read in `timezone`. Exclusive
    /// with `every_ms`.
    #[serde(default)]
    pub cron: Option<String>,
    /// A fixed period, counted from `start_at` (or from when the cadence
    /// was set). At least 1 000. Exclusive with `cron`.
    #[serde(default)]
    #[schema(minimum = 1_000)]
    pub every_ms: Option<i64>,
    /// An IANA time zone (`Europe/Berlin`). Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The job each fire makes, as `POST /v1/jobs` takes it; without `key`,
    /// `on_conflict`, `run_at`, `depends_on` or `expires_at`, which the
    /// schedule sets or which name one moment.
    pub job: JobSpec,
    /// Default `allow`.
    #[serde(default)]
    pub overlap: Option<Overlap>,
    /// Default `skip`.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// How far back missed fire times are caught up. Default 3 600 000 (an
    /// hour), at most 86 400 000.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub catch_up_window_ms: Option<i64>,
    /// No fire before this (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub start_at: Option<String>,
    /// No fire after this (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub end_at: Option<String>,
    /// A paused schedule fires nothing; resumed, it goes on from the next
    /// fire time after the resume (fire times while paused are not caught up).
    #[serde(default)]
    pub paused: Option<bool>,
    /// The tenant whose jobs these are. Default: the caller's.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A schedule's settings as stored: checked, with the defaults filled in.
/// Two PUTs that give the same settings compare equal (the second changes nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleConfig {
    pub id: String,
    pub tenant: String,
    pub cron: Option<String>,
    pub every_ms: Option<i64>,
    pub timezone: String,
    /// The job spec, as given.
    #[schema(value_type = JobSpec)]
    pub job: Value,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_window_ms: i64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_at: Option<Timestamp>,
    pub paused: bool,
}

/// A schedule as the service returns it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Schedule {
    #[serde(flatten)]
    pub config: ScheduleConfig,
    /// The next fire time; null when paused or past `end_at`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_fire_at: Option<Timestamp>,
    /// The next five fire times (empty when paused or ended).
    #[schema(value_type = Vec<String>)]
    pub next_fire_times: Vec<Timestamp>,
    /// The latest fire time handled (fired, skipped, missed or refused).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_fire_at: Option<Timestamp>,
    /// The job of the latest fire or trigger.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub last_job_id: Option<JobId>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When the settings last changed (an identical PUT leaves it).
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Bumped by every change of the settings: a fire decided on older
    /// settings is refused by the store.
    #[serde(skip)]
    pub revision: i64,
    /// Fires recorded so far (the next one's sequence number).
    #[serde(skip)]
    pub fires_recorded: i64,
}

impl Schedule {
    /// The instant the cadence counts from: `start_at`, else when it was set.
    pub fn anchor_at(&self) -> Timestamp {
        self.config.start_at.unwrap_or(self.updated_at)
    }

    /// The schedule's cadence, compiled; `None` when its stored settings no
    /// longer parse (they were checked when stored).
    pub fn timing(&self) -> Result<Timing, String> {
        self.config.timing(self.anchor_at())
    }
}

/// One entry of a schedule's history.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ScheduleFire {
    /// The fire time (for a trigger, when it was asked).
    #[schema(value_type = String, format = DateTime)]
    pub fire_at: Timestamp,
    pub outcome: FireOutcome,
    pub reason: Option<String>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub job_id: Option<JobId>,
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: Timestamp,
    /// Its place in the schedule's history (the page cursor).
    #[serde(skip)]
    pub seq: i64,
}

/// The job spec fields a schedule sets itself or that name one moment.
const FIXED_JOB_FIELDS: [(&str, &str); 5] = [
    (
        "key",
        "a schedule's jobs carry the key schedule:<id>:<fire time>",
    ),
    ("on_conflict", "a schedule's jobs carry a key of their own"),
    (
        "run_at",
        "a schedule's job runs at its fire time; use delay_ms to run it later",
    ),
    (
        "depends_on",
        "a schedule's jobs cannot depend on one job: each fire makes a new one",
    ),
    // Not a field of every build's job spec: where it is one, an instant
    // would expire every fire after it; a duration counts from each fire.
    (
        "expires_at",
        "a schedule's jobs are made at each fire time; use expires_after_ms",
    ),
];

impl ScheduleSpec {
    /// Checks every field but the job's kind, queue and payload (the
    /// engine's job check does those) and fills in the defaults. `tenant` is
    /// the caller's, the default owner.
    pub fn validate(self, id: &str, tenant: &str) -> Result<ScheduleConfig, Vec<FieldError>> {
        let mut errors = Vec::new();
        let tenant = match self.tenant {
            Some(tenant) if !valid_tenant(&tenant) => {
                errors.push(FieldError::new(
                    "/tenant",
                    "tenant names are 1 to 64 of A-Z a-z 0-9 _ - .",
                ));
                tenant
            }
            Some(tenant) => tenant,
            None => tenant.to_owned(),
        };
        match (&self.cron, self.every_ms) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                "/every_ms",
                "give either cron or every_ms, not both",
            )),
            (None, None) => errors.push(FieldError::new("/cron", "give cron or every_ms")),
            (None, Some(ms)) if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&ms) => {
                errors.push(FieldError::new(
                    "/every_ms",
                    format!("must be between {MIN_EVERY_MS} and {MAX_EVERY_MS}"),
                ))
            }
            (Some(cron), None) => {
                if let Err(problem) = super::cadence::parse_cron(cron) {
                    errors.push(FieldError::new("/cron", problem));
                }
            }
            (None, Some(_)) => {}
        }
        let timezone = self.timezone.unwrap_or_else(|| "UTC".to_owned());
        if let Err(problem) = super::cadence::time_zone(&timezone) {
            errors.push(FieldError::new("/timezone", problem));
        }
        let window = self
            .catch_up_window_ms
            .unwrap_or(DEFAULT_CATCH_UP_WINDOW_MS);
        if !(0..=MAX_CATCH_UP_WINDOW_MS).contains(&window) {
            errors.push(FieldError::new(
                "/catch_up_window_ms",
                format!("must be between 0 and {MAX_CATCH_UP_WINDOW_MS}"),
            ));
        }
        let mut instant = |field: &str, text: Option<String>| {
            let text = text?;
            let parsed = Timestamp::parse_rfc3339(&text);
            if parsed.is_none() {
                errors.push(FieldError::new(
                    format!("/{field}"),
                    "must be an RFC 3339 timestamp, e.g. 2026-11-23T10:00:00Z",
                ));
            }
            parsed
        };
        let start_at = instant("start_at", self.start_at);
        let end_at = instant("end_at", self.end_at);
        if let (Some(start), Some(end)) = (start_at, end_at)
            && end <= start
        {
            errors.push(FieldError::new("/end_at", "must be after start_at"));
        }
        let job = match serde_json::to_value(&self.job) {
            Ok(job) => job,
            Err(e) => {
                errors.push(FieldError::new("/job", e.to_string()));
                Value::Null
            }
        };
        for (field, why) in FIXED_JOB_FIELDS {
            if job.get(field).is_some_and(|value| !value.is_null()) {
                errors.push(FieldError::new(format!("/job/{field}"), why));
            }
        }
        if !QueueConfig::valid_name(id) {
            errors.push(FieldError::parameter(
                "id",
                "schedule ids are 1 to 64 of A-Z a-z 0-9 _ - .",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ScheduleConfig {
            id: id.to_owned(),
            tenant,
            cron: self.cron.map(|cron| cron.trim().to_owned()),
            every_ms: self.every_ms,
            timezone,
            job,
            overlap: self.overlap.unwrap_or_default(),
            catch_up: self.catch_up.unwrap_or_default(),
            catch_up_window_ms: window,
            start_at,
            end_at,
            paused: self.paused.unwrap_or(false),
        })
    }
}

impl ScheduleConfig {
    /// The cadence, counting an `every_ms` period from `anchor`.
    pub fn timing(&self, anchor: Timestamp) -> Result<Timing, String> {
        Timing::new(
            self.cron.as_deref(),
            self.every_ms,
            &self.timezone,
            anchor,
            (self.start_at, self.end_at),
        )
    }

    /// The job spec each fire submits.
    pub fn job_spec(&self) -> Result<JobSpec, String> {
        serde_json::from_value(self.job.clone()).map_err(|e| format!("stored job spec: {e}"))
    }
}

/// The key of the job a fire makes: unique per schedule and fire time.
pub fn fire_key(id: &str, fire_at: Timestamp) -> String {
    format!("schedule:{id}:{}", fire_at.to_rfc3339())
}
