//! Schedules: the use cases of `/v1/schedules` and the firing loop every instance runs (no leader: the store lets one transaction handle each fire time).

use std::time::Duration;

use super::validation::SpecCheck;
use super::{Engine, EngineError};
use crate::domain::{
    FieldError, FireOutcome, Job, JobId, MAX_FIRES_PER_PASS, NEXT_FIRE_TIMES, NewJob, QueueConfig,
    Schedule, ScheduleConfig, ScheduleFire, ScheduleSpec, SpecContext, Timestamp, fire_key,
};
use crate::store::{
    FireAction, FireRequest, FireResult, Fired, PlannedFire, PutOutcome, SchedulePut, StoreError,
};
use crate::telemetry::metrics;

/// Due schedules one pass of the firing loop reads at once.
const DUE_PER_PASS: u32 = 100;
/// Shortest sleep of the firing loop between passes with nothing more due.
const MIN_WAIT: Duration = Duration::from_millis(10);
/// Runs of a `PUT` that meets a concurrent change before it gives up.
const PUT_RUNS: u32 = 3;

/// What a `PUT /v1/schedules/{id}` did.
#[derive(Debug)]
pub struct ScheduleChange {
    pub schedule: Schedule,
    /// Created (201) rather than changed or left as it was (200).
    pub created: bool,
}

/// What one pass of the firing loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirePass {
    /// Fire times handled (fired, skipped, missed, refused).
    pub handled: usize,
    /// Jobs made.
    pub fired: usize,
    /// Some schedules have more due fire times than one pass takes.
    pub more: bool,
    /// Schedules whose fire failed (the store, or settings that no longer
    /// parse): tried again after the poll interval, not at once.
    pub failed: usize,
}

/// The tenant a caller may see schedules of: `None` for an admin (all).
pub type Visible<'a> = Option<&'a str>;

impl Engine {
    /// Creates or changes a schedule. The same settings again change
    /// nothing (no new fire time, no history, the same `updated_at`).
    pub async fn put_schedule(
        &self,
        caller_tenant: &str,
        id: &str,
        spec: ScheduleSpec,
    ) -> Result<ScheduleChange, EngineError> {
        let config = spec
            .validate(id, caller_tenant)
            .map_err(EngineError::Validation)?;
        let now = Timestamp::now();
        self.check_schedule_job(&config, now).await?;
        for _ in 0..PUT_RUNS {
            let existing = self.inner.store.get_schedule(id).await?;
            if let Some(existing) = &existing
                && existing.config == config
            {
                return Ok(ScheduleChange {
                    schedule: self.with_next_times(existing.clone()),
                    created: false,
                });
            }
            let timing = config
                .timing(config.start_at.unwrap_or(now))
                .map_err(|problem| {
                    EngineError::Validation(vec![FieldError::new("/cron", problem)])
                })?;
            let next_fire_at = if config.paused {
                None
            } else {
                timing.next_after(now)
            };
            let put = SchedulePut {
                config: config.clone(),
                expected_revision: existing.as_ref().map(|s| s.revision),
                next_fire_at,
                at: now,
            };
            let created = match self.inner.store.put_schedule(put).await? {
                PutOutcome::Conflict => continue,
                PutOutcome::Created => true,
                PutOutcome::Changed => false,
            };
            tracing::info!(schedule = id, tenant = %config.tenant, created, next_fire_at = ?next_fire_at, "schedule stored");
            self.inner.wake_schedules.notify_one();
            let schedule = self
                .inner
                .store
                .get_schedule(id)
                .await?
                .ok_or(EngineError::NotFound("schedule"))?;
            return Ok(ScheduleChange {
                schedule: self.with_next_times(schedule),
                created,
            });
        }
        Err(EngineError::Storage(StoreError::Busy(format!(
            "schedule {id} kept changing while this change was made; try again"
        ))))
    }

    /// A schedule, if `visible` may see it.
    pub async fn get_schedule(
        &self,
        visible: Visible<'_>,
        id: &str,
    ) -> Result<Schedule, EngineError> {
        let schedule = self
            .inner
            .store
            .get_schedule(id)
            .await?
            .filter(|s| visible.is_none_or(|tenant| s.config.tenant == tenant))
            .ok_or(EngineError::NotFound("schedule"))?;
        Ok(self.with_next_times(schedule))
    }

    /// Schedules by id, after `after`, at most `limit`.
    pub async fn list_schedules(
        &self,
        visible: Visible<'_>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Schedule>, EngineError> {
        let schedules = self
            .inner
            .store
            .list_schedules(visible, after, limit)
            .await?;
        Ok(schedules
            .into_iter()
            .map(|s| self.with_next_times(s))
            .collect())
    }

    /// A schedule's history, newest first.
    pub async fn schedule_fires(
        &self,
        visible: Visible<'_>,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ScheduleFire>, EngineError> {
        self.get_schedule(visible, id).await?;
        Ok(self.inner.store.schedule_fires(id, before, limit).await?)
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<(), EngineError> {
        if !self.inner.store.delete_schedule(id).await? {
            return Err(EngineError::NotFound("schedule"));
        }
        tracing::info!(schedule = id, "schedule deleted");
        Ok(())
    }

    /// Fires a schedule once now, outside its cadence and its overlap
    /// policy; the job is refused as a submission would be.
    pub async fn trigger_schedule(&self, id: &str) -> Result<Job, EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        let schedule = self.get_schedule(None, id).await?;
        let now = Timestamp::now();
        let config = &schedule.config;
        self.learn_job_queue(config).await;
        let job = self
            .fire_job(config, now, now)
            .map_err(|problems| self.refusal(problems))?;
        let request = self.fire_request(
            config,
            None,
            None,
            now,
            vec![PlannedFire {
                fire_at: now,
                action: FireAction::Submit {
                    job: Box::new(job),
                    outcome: FireOutcome::Triggered,
                },
            }],
        );
        match self.inner.store.fire_schedule(request).await? {
            FireResult::Done(mut fired) => {
                if let Some(rejection) = fired.refusals.pop() {
                    self.after_fire(id, *fired);
                    return Err(self.rejection_error(rejection, ""));
                }
                let job = fired.jobs.first().cloned();
                self.after_fire(id, *fired);
                job.map(|job| self.shown(job)).ok_or_else(|| {
                    EngineError::Storage(StoreError::Corrupt("a trigger stored no job".into()))
                })
            }
            FireResult::Stale | FireResult::Busy => Err(EngineError::NotFound("schedule")),
        }
    }

    /// One pass of the firing loop at `now`: every due schedule's due fire
    /// times, each schedule in a transaction of its own.
    pub async fn fire_due_schedules(&self, now: Timestamp) -> Result<FirePass, EngineError> {
        let mut pass = FirePass::default();
        let due = self.inner.store.due_schedules(now, DUE_PER_PASS).await?;
        pass.more = due.len() as u32 == DUE_PER_PASS;
        for schedule in due {
            let id = schedule.config.id.clone();
            match self.fire_one(schedule, now).await {
                Ok((handled, fired, more)) => {
                    pass.handled += handled;
                    pass.fired += fired;
                    pass.more |= more;
                }
                // One schedule's trouble does not hold up the others.
                Err(error) => {
                    pass.failed += 1;
                    tracing::error!(schedule = %id, %error, "firing a schedule failed");
                }
            }
        }
        Ok(pass)
    }

    /// Plans and fires one due schedule: (fire times handled, jobs made, more due).
    async fn fire_one(
        &self,
        schedule: Schedule,
        now: Timestamp,
    ) -> Result<(usize, usize, bool), EngineError> {
        let config = &schedule.config;
        self.learn_job_queue(config).await;
        let request = FireRequest::pass(&schedule, now, MAX_FIRES_PER_PASS, |fire_at| {
            match self.fire_job(config, fire_at, now) {
                Ok(job) => FireAction::Submit {
                    job: Box::new(job),
                    outcome: FireOutcome::Fired,
                },
                Err(problems) => FireAction::Record {
                    outcome: FireOutcome::Refused,
                    reason: self.refusal(problems).to_string(),
                },
            }
        })
        .map_err(|e| EngineError::Storage(StoreError::Corrupt(e)))?;
        let Some(mut request) = request else {
            return Ok((0, 0, false));
        };
        request.limit_pending = self.limits_pending(&config.tenant);
        request.redactor = self.inner.kinds.redactor();
        let more = request.leaves_more();
        match self.inner.store.fire_schedule(request).await? {
            FireResult::Done(fired) => {
                let (handled, jobs) = (fired.fires.len(), fired.jobs.len());
                self.after_fire(&config.id, *fired);
                Ok((handled, jobs, more))
            }
            // Another instance handled these fire times, or is doing so, or
            // the settings changed: the next pass reads the schedule again.
            FireResult::Stale | FireResult::Busy => Ok((0, 0, false)),
        }
    }

    fn fire_request(
        &self,
        config: &ScheduleConfig,
        expected: Option<(i64, Timestamp)>,
        advance: Option<Option<Timestamp>>,
        now: Timestamp,
        fires: Vec<PlannedFire>,
    ) -> FireRequest {
        FireRequest {
            id: config.id.clone(),
            tenant: config.tenant.clone(),
            expected,
            fires,
            advance,
            overlap: config.overlap,
            now,
            limit_pending: self.limits_pending(&config.tenant),
            redactor: self.inner.kinds.redactor(),
        }
    }

    /// What a fire's jobs and history ask of this instance: events,
    /// wake-ups, metrics, log lines.
    fn after_fire(&self, id: &str, fired: Fired) {
        for fire in &fired.fires {
            metrics::schedule_fire(fire.outcome.as_str());
            tracing::info!(
                schedule = id,
                fire_at = %fire.fire_at,
                outcome = fire.outcome.as_str(),
                job_id = ?fire.job_id,
                reason = fire.reason.as_deref(),
                "schedule fire"
            );
        }
        self.apply(fired.effects);
        for job in fired.jobs {
            let paused = self.queue_config(&job.queue).is_some_and(|q| q.paused);
            self.admitted(&job, paused);
        }
    }

    /// The job a fire at `fire_at` makes, checked as a submission is.
    fn fire_job(
        &self,
        config: &ScheduleConfig,
        fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<NewJob, Vec<super::validation::Problem>> {
        let mut spec = config.job_spec().map_err(|e| {
            vec![super::validation::Problem::Field(FieldError::new(
                "/job", e,
            ))]
        })?;
        spec.key = Some(fire_key(&config.id, fire_at));
        let ctx = SpecContext {
            id: JobId::new(),
            batch: None,
        };
        SpecCheck::new(self, &config.tenant, now, None)
            .check(spec, ctx)
            .map(|(job, _queue)| job)
    }

    /// In shared mode, a queue created on another instance is learnt first.
    async fn learn_job_queue(&self, config: &ScheduleConfig) {
        let queue = config
            .job
            .get("queue")
            .and_then(|queue| queue.as_str())
            .unwrap_or(QueueConfig::DEFAULT_NAME)
            .to_owned();
        self.learn_queues(std::iter::once(queue.as_str())).await;
    }

    /// The job spec of a schedule being stored, checked as `POST /v1/jobs`
    /// checks one, with every pointer under `/job`.
    async fn check_schedule_job(
        &self,
        config: &ScheduleConfig,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        self.learn_job_queue(config).await;
        match self.fire_job(config, now, now) {
            Ok(_) => Ok(()),
            Err(problems) => Err(EngineError::Validation(
                problems
                    .into_iter()
                    .map(|problem| {
                        let mut field = problem.into_field(self);
                        field.pointer = format!("/job{}", field.pointer);
                        field
                    })
                    .collect(),
            )),
        }
    }

    /// Fills in the coming fire times.
    fn with_next_times(&self, mut schedule: Schedule) -> Schedule {
        if let (Some(next), Ok(timing)) = (schedule.next_fire_at, schedule.timing()) {
            schedule.next_fire_times = timing.next_times(next.plus_ms(-1), NEXT_FIRE_TIMES);
        }
        schedule
    }

    /// Fires due schedules until shutdown: sleeps until the earliest fire
    /// time any schedule has (or the poll interval, whichever is sooner:
    /// another instance may have stored an earlier one), or until a
    /// schedule changes here.
    pub(super) async fn schedule_loop(self) {
        let stopping = self.inner.stopping.clone();
        let poll = self.inner.settings.poll_interval;
        loop {
            let now = Timestamp::now();
            let wait = match self.fire_due_schedules(now).await {
                Ok(pass) if pass.failed > 0 => poll,
                Ok(pass) if pass.more => Duration::ZERO,
                Ok(_) => match self.inner.store.next_schedule_fire().await {
                    Ok(Some(next)) => Duration::from_millis(
                        next.as_millis()
                            .saturating_sub(Timestamp::now().as_millis())
                            .max(0) as u64,
                    )
                    // Never a busy loop on a fire time another instance
                    // is handling right now.
                    .clamp(MIN_WAIT, poll),
                    Ok(None) => poll,
                    Err(error) => {
                        tracing::warn!(%error, "reading the next schedule fire failed");
                        poll
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "firing due schedules failed");
                    poll
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.wake_schedules.notified() => {}
                _ = stopping.cancelled() => break,
            }
        }
    }
}
