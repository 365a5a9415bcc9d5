//! The storage of schedules, which every backend implements beside [`JobStore`](super::JobStore): settings, the due index the firing loop reads, and the fire that inserts a job in the transaction that advances its schedule.

use async_trait::async_trait;

use super::{Effects, StoreError, SubmitRejection};
use crate::domain::{
    FireOutcome, Job, JobId, NewJob, Overlap, Redactor, Schedule, ScheduleConfig, ScheduleFire,
    Timestamp,
};

/// A change of a schedule's settings, made only if nobody changed it since
/// the caller read it.
#[derive(Clone, Debug)]
pub struct SchedulePut {
    pub config: ScheduleConfig,
    /// The revision read; `None`: the schedule must not exist yet.
    pub expected_revision: Option<i64>,
    /// Computed from the new settings (`None`: paused or already ended).
    pub next_fire_at: Option<Timestamp>,
    pub at: Timestamp,
}

/// What `put_schedule` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Changed,
    /// Someone created, changed or deleted it since it was read: read again.
    Conflict,
}

/// What one fire time (or a trigger) does, as the engine planned it.
#[derive(Clone, Debug)]
pub enum FireAction {
    /// Submit this job (`Fired` or `Triggered`), the overlap policy allowing.
    Submit {
        job: Box<NewJob>,
        outcome: FireOutcome,
    },
    /// Make no job; record `outcome` (`Missed`, `Refused`) with `reason`.
    Record {
        outcome: FireOutcome,
        reason: String,
    },
}

#[derive(Clone, Debug)]
pub struct PlannedFire {
    pub fire_at: Timestamp,
    pub action: FireAction,
}

/// One pass over a schedule: its due fire times in one transaction.
#[derive(Clone, Debug)]
pub struct FireRequest {
    pub id: String,
    pub tenant: String,
    /// The revision and next fire time the plan was made from: the fire is
    /// refused (`Stale`) if either moved, so each fire time is handled
    /// once service-wide. `None` (a trigger): fire whatever they are.
    pub expected: Option<(i64, Timestamp)>,
    pub fires: Vec<PlannedFire>,
    /// The next fire time to store; `None` leaves it (a trigger).
    pub advance: Option<Option<Timestamp>>,
    pub overlap: Overlap,
    pub now: Timestamp,
    /// As for a submission: the tenant has a `max_pending`.
    pub limit_pending: bool,
    pub redactor: Redactor,
}

impl FireRequest {
    /// One pass of the firing loop over `schedule` at `now`: its due fire
    /// times (at most `limit`) planned by its catch-up rule, a missed one
    /// recorded as such, each other one as `fire` makes its job (or records
    /// why it could not). `None` when the schedule has no next fire time.
    pub fn pass(
        schedule: &Schedule,
        now: Timestamp,
        limit: usize,
        mut fire: impl FnMut(Timestamp) -> FireAction,
    ) -> Result<Option<Self>, String> {
        let Some(next_fire_at) = schedule.next_fire_at else {
            return Ok(None);
        };
        let config = &schedule.config;
        let plan = schedule.timing()?.plan(
            next_fire_at,
            now,
            config.catch_up,
            config.catch_up_window_ms,
            limit,
        );
        let fires = plan
            .due
            .into_iter()
            .map(|due| PlannedFire {
                fire_at: due.fire_at,
                action: match due.missed {
                    Some(reason) => FireAction::Record {
                        outcome: FireOutcome::Missed,
                        reason,
                    },
                    None => fire(due.fire_at),
                },
            })
            .collect();
        Ok(Some(Self {
            id: config.id.clone(),
            tenant: config.tenant.clone(),
            expected: Some((schedule.revision, next_fire_at)),
            fires,
            advance: Some(plan.next_fire_at),
            overlap: config.overlap,
            now,
            limit_pending: false,
            redactor: Redactor::default(),
        }))
    }

    /// More fire times are due at `now` than this pass handles.
    pub fn leaves_more(&self) -> bool {
        matches!(self.advance, Some(Some(next)) if next <= self.now)
    }
}

/// What a fire did.
#[derive(Clone, Debug, Default)]
pub struct Fired {
    /// The entries recorded in the schedule's history, in order.
    pub fires: Vec<ScheduleFire>,
    /// The jobs made.
    pub jobs: Vec<Job>,
    /// What the admissions and cancellations set in motion.
    pub effects: Effects,
    /// The admissions refused, in order (for a trigger's answer).
    pub refusals: Vec<SubmitRejection>,
}

#[derive(Clone, Debug)]
pub enum FireResult {
    /// No such schedule, or it changed or fired since the plan was made.
    Stale,
    /// Another instance is firing it right now (PostgreSQL).
    Busy,
    Done(Box<Fired>),
}

/// A schedule's row as a fire finds it, locked.
#[derive(Clone, Debug)]
pub struct HeldSchedule {
    pub revision: i64,
    pub next_fire_at: Option<Timestamp>,
    pub last_fire_at: Option<Timestamp>,
    pub last_job_id: Option<JobId>,
    pub fires_recorded: i64,
}

/// What locking a schedule found.
pub enum ScheduleLock {
    Missing,
    /// Another transaction holds it (only when asked not to wait).
    Busy,
    Held(HeldSchedule),
}

/// Schedules in the store.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError>;
    /// By id, after `after`, at most `limit`; only `tenant`'s when given.
    async fn list_schedules(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError>;
    async fn put_schedule(&self, put: SchedulePut) -> Result<PutOutcome, StoreError>;
    /// Deletes a schedule and its history; `false` when there was none.
    /// Its jobs stay.
    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError>;
    /// A schedule's history, newest first, before the entry `before` (its
    /// `seq`), at most `limit`.
    async fn schedule_fires(
        &self,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ScheduleFire>, StoreError>;
    /// Schedules whose next fire time is at or before `now`, earliest
    /// first, at most `limit` (an index range, never a scan).
    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<Schedule>, StoreError>;
    /// The earliest next fire time of any schedule.
    async fn next_schedule_fire(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Carries out `request` in one transaction (see `plan::fire_schedule`).
    async fn fire_schedule(&self, request: FireRequest) -> Result<FireResult, StoreError>;
}

/// The columns of `schedules`, in `ScheduleRow` order.
pub(super) const SCHEDULE_COLUMNS: &str = "id, tenant, config, revision, next_fire_at, \
    last_fire_at, last_job_id, fires_recorded, created_at, updated_at";

/// The columns of `schedule_fires` a history shows, in `FireRow` order.
pub(super) const FIRE_COLUMNS: &str = "seq, fire_at, outcome, reason, job_id, recorded_at";

#[derive(sqlx::FromRow)]
pub(super) struct ScheduleRow {
    id: String,
    tenant: String,
    config: String,
    revision: i64,
    next_fire_at: Option<i64>,
    last_fire_at: Option<i64>,
    last_job_id: Option<String>,
    fires_recorded: i64,
    created_at: i64,
    updated_at: i64,
}

fn corrupt(id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("schedule {id}: {reason}"))
}

fn parse_job_id(id: &str, text: Option<String>) -> Result<Option<JobId>, StoreError> {
    text.map(|text| text.parse::<JobId>().map_err(|e| corrupt(id, e)))
        .transpose()
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        let mut config: ScheduleConfig =
            serde_json::from_str(&row.config).map_err(|e| corrupt(&row.id, e))?;
        // The columns are the truth for what they repeat.
        config.id = row.id.clone();
        config.tenant = row.tenant;
        Ok(Schedule {
            config,
            next_fire_at: row.next_fire_at.map(Timestamp::from_millis),
            next_fire_times: Vec::new(),
            last_fire_at: row.last_fire_at.map(Timestamp::from_millis),
            last_job_id: parse_job_id(&row.id, row.last_job_id)?,
            created_at: Timestamp::from_millis(row.created_at),
            updated_at: Timestamp::from_millis(row.updated_at),
            revision: row.revision,
            fires_recorded: row.fires_recorded,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct FireRow {
    seq: i64,
    fire_at: i64,
    outcome: String,
    reason: Option<String>,
    job_id: Option<String>,
    recorded_at: i64,
}

impl FireRow {
    pub(super) fn into_fire(self, schedule: &str) -> Result<ScheduleFire, StoreError> {
        Ok(ScheduleFire {
            fire_at: Timestamp::from_millis(self.fire_at),
            outcome: self
                .outcome
                .parse()
                .map_err(|e: String| corrupt(schedule, e))?,
            reason: self.reason,
            job_id: parse_job_id(schedule, self.job_id)?,
            recorded_at: Timestamp::from_millis(self.recorded_at),
            seq: self.seq,
        })
    }
}

/// `revision, next_fire_at, last_fire_at, last_job_id, fires_recorded` of
/// a schedule's row, as a fire locks it.
pub(super) type HeldRow = (i64, Option<i64>, Option<i64>, Option<String>, i64);

/// The columns of a [`HeldRow`].
pub(super) const HELD_COLUMNS: &str =
    "revision, next_fire_at, last_fire_at, last_job_id, fires_recorded";

pub(super) fn held(id: &str, row: HeldRow) -> Result<HeldSchedule, StoreError> {
    let (revision, next_fire_at, last_fire_at, last_job_id, fires_recorded) = row;
    Ok(HeldSchedule {
        revision,
        next_fire_at: next_fire_at.map(Timestamp::from_millis),
        last_fire_at: last_fire_at.map(Timestamp::from_millis),
        last_job_id: parse_job_id(id, last_job_id)?,
        fires_recorded,
    })
}

/// The settings as the `config` column keeps them.
pub(super) fn config_json(config: &ScheduleConfig) -> String {
    super::rows::to_json(config)
}
