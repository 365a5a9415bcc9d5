//! Schedules in the PostgreSQL store. A fire locks its schedule's row with `FOR UPDATE SKIP LOCKED` (an instance that finds another firing it moves on) and checks the revision and next fire time it planned from, so two instances that saw the same due fire time make one job between them.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::tx::{PgTx, decide};
use super::{MAX_RUNS, PgStore};
use crate::domain::{FIRES_KEPT, Schedule, ScheduleFire, Timestamp};
use crate::store::plan::{self, ScheduleTx};
use crate::store::schedules::{
    FIRE_COLUMNS, FireRequest, FireResult, FireRow, HELD_COLUMNS, HeldRow, HeldSchedule,
    PutOutcome, SCHEDULE_COLUMNS, ScheduleLock, SchedulePut, ScheduleRow, ScheduleStore,
    config_json, held,
};
use crate::store::{StoreError, Submission, SubmitOutcome, SubmitRejection};

impl ScheduleTx for PgTx<'_> {
    async fn lock_schedule(
        &mut self,
        id: &str,
        skip_locked: bool,
    ) -> Result<ScheduleLock, StoreError> {
        let lock = if skip_locked {
            "FOR UPDATE SKIP LOCKED"
        } else {
            "FOR UPDATE"
        };
        let sql = format!("SELECT {HELD_COLUMNS} FROM schedules WHERE id = $1 {lock}");
        let row: Option<HeldRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        if let Some(row) = row {
            return Ok(ScheduleLock::Held(held(id, row)?));
        }
        if !skip_locked {
            return Ok(ScheduleLock::Missing);
        }
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM schedules WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(match exists {
            Some(_) => ScheduleLock::Busy,
            None => ScheduleLock::Missing,
        })
    }

    async fn admit_alone(
        &mut self,
        submission: Submission,
    ) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
        // The admission's own counts, kept only with its writes.
        let outer = std::mem::take(&mut *self.counts);
        sqlx::query("SAVEPOINT fire")
            .execute(&mut *self.conn)
            .await?;
        let outcome = plan::admit(self, submission).await;
        let own = std::mem::replace(&mut *self.counts, outer);
        match &outcome {
            Ok(Ok(SubmitOutcome::Created { .. })) => {
                self.counts.absorb(own);
                sqlx::query("RELEASE SAVEPOINT fire")
                    .execute(&mut *self.conn)
                    .await?;
            }
            // An error fails the whole transaction, which is run again.
            Err(_) => {}
            Ok(_) => {
                sqlx::query("ROLLBACK TO SAVEPOINT fire")
                    .execute(&mut *self.conn)
                    .await?;
            }
        }
        outcome
    }

    async fn record_fires(&mut self, id: &str, fires: &[ScheduleFire]) -> Result<(), StoreError> {
        let seqs: Vec<i64> = fires.iter().map(|fire| fire.seq).collect();
        let fire_ats: Vec<i64> = fires.iter().map(|fire| fire.fire_at.as_millis()).collect();
        let outcomes: Vec<&str> = fires.iter().map(|fire| fire.outcome.as_str()).collect();
        let reasons: Vec<Option<String>> = fires.iter().map(|fire| fire.reason.clone()).collect();
        let job_ids: Vec<Option<String>> = fires
            .iter()
            .map(|fire| fire.job_id.map(|id| id.to_string()))
            .collect();
        let recorded: Vec<i64> = fires
            .iter()
            .map(|fire| fire.recorded_at.as_millis())
            .collect();
        sqlx::query(
            "INSERT INTO schedule_fires (schedule_id, seq, fire_at, outcome, reason, job_id, \
             recorded_at) SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], \
             $5::text[], $6::text[], $7::bigint[])",
        )
        .bind(id)
        .bind(seqs)
        .bind(fire_ats)
        .bind(outcomes)
        .bind(reasons)
        .bind(job_ids)
        .bind(recorded)
        .execute(&mut *self.conn)
        .await?;
        if let Some(last) = fires.last() {
            sqlx::query("DELETE FROM schedule_fires WHERE schedule_id = $1 AND seq <= $2")
                .bind(id)
                .bind(last.seq - FIRES_KEPT)
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }

    async fn advance(&mut self, id: &str, state: &HeldSchedule) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE schedules SET next_fire_at = $2, last_fire_at = $3, last_job_id = $4, \
             fires_recorded = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(state.next_fire_at.map(Timestamp::as_millis))
        .bind(state.last_fire_at.map(Timestamp::as_millis))
        .bind(state.last_job_id.map(|id| id.to_string()))
        .bind(state.fires_recorded)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1");
        let row: Option<ScheduleRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Schedule::try_from).transpose()
    }

    async fn list_schedules(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE ($1::text IS NULL OR tenant = $1) \
             AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows: Vec<ScheduleRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(tenant)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    async fn put_schedule(&self, put: SchedulePut) -> Result<PutOutcome, StoreError> {
        let config = config_json(&put.config);
        let next = put.next_fire_at.map(Timestamp::as_millis);
        let at = put.at.as_millis();
        let written = match put.expected_revision {
            None => sqlx::query(
                "INSERT INTO schedules (id, tenant, config, revision, next_fire_at, created_at, \
                 updated_at) VALUES ($1, $2, $3, 1, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&put.config.id)
            .bind(&put.config.tenant)
            .bind(config)
            .bind(next)
            .bind(at)
            .execute(&self.pool)
            .await?
            .rows_affected(),
            Some(revision) => sqlx::query(
                "UPDATE schedules SET tenant = $2, config = $3, revision = revision + 1, \
                 next_fire_at = $4, updated_at = $5 WHERE id = $1 AND revision = $6",
            )
            .bind(&put.config.id)
            .bind(&put.config.tenant)
            .bind(config)
            .bind(next)
            .bind(at)
            .bind(revision)
            .execute(&self.pool)
            .await?
            .rows_affected(),
        };
        Ok(match (written, put.expected_revision) {
            (0, _) => PutOutcome::Conflict,
            (_, None) => PutOutcome::Created,
            (_, Some(_)) => PutOutcome::Changed,
        })
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        // The history goes with it (ON DELETE CASCADE).
        let deleted = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn schedule_fires(
        &self,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ScheduleFire>, StoreError> {
        let sql = format!(
            "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE schedule_id = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3"
        );
        let rows: Vec<FireRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|row| row.into_fire(id)).collect()
    }

    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<Schedule>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_at IS NOT NULL \
             AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2"
        );
        let rows: Vec<ScheduleRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    async fn next_schedule_fire(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(next_fire_at) FROM schedules WHERE next_fire_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(Timestamp::from_millis))
    }

    async fn fire_schedule(&self, request: FireRequest) -> Result<FireResult, StoreError> {
        transaction!(
            self.pool,
            |tx| decide!(tx, |decision| plan::fire_schedule(
                decision,
                request.clone()
            )),
            |outcome| matches!(outcome, FireResult::Done(_))
        )
    }
}
