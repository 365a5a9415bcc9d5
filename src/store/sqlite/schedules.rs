//! Schedules in the SQLite store: reads on the read pool, changes and fires as commands of the single writer (which serialises them, so a schedule is never busy).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use sqlx::AssertSqlSafe;

use super::SqliteStore;
use super::writer::{WriteTx, run_now};
use crate::domain::{FIRES_KEPT, Schedule, ScheduleFire, Timestamp};
use crate::store::plan::{self, ScheduleTx};
use crate::store::schedules::{
    FIRE_COLUMNS, FireRequest, FireResult, FireRow, HELD_COLUMNS, HeldRow, HeldSchedule,
    PutOutcome, SCHEDULE_COLUMNS, ScheduleLock, SchedulePut, ScheduleRow, ScheduleStore,
    config_json, held,
};
use crate::store::{StoreError, Submission, SubmitOutcome, SubmitRejection};

impl ScheduleTx for WriteTx<'_> {
    async fn lock_schedule(
        &mut self,
        id: &str,
        _skip_locked: bool,
    ) -> Result<ScheduleLock, StoreError> {
        let sql = format!("SELECT {HELD_COLUMNS} FROM schedules WHERE id = ?");
        let row: Option<HeldRow> = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .optional()?;
        Ok(match row {
            Some(row) => ScheduleLock::Held(held(id, row)?),
            None => ScheduleLock::Missing,
        })
    }

    async fn admit_alone(
        &mut self,
        submission: Submission,
    ) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
        // A fire's job carries a key: `submit` undoes a refused admission
        // in a savepoint of its own.
        super::admit::submit(self, submission)
    }

    async fn record_fires(&mut self, id: &str, fires: &[ScheduleFire]) -> Result<(), StoreError> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO schedule_fires (schedule_id, seq, fire_at, outcome, reason, job_id, \
             recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )?;
        for fire in fires {
            insert.execute(params![
                id,
                fire.seq,
                fire.fire_at.as_millis(),
                fire.outcome.as_str(),
                fire.reason,
                fire.job_id.map(|id| id.to_string()),
                fire.recorded_at.as_millis(),
            ])?;
        }
        if let Some(last) = fires.last() {
            self.conn
                .prepare_cached("DELETE FROM schedule_fires WHERE schedule_id = ? AND seq <= ?")?
                .execute(params![id, last.seq - FIRES_KEPT])?;
        }
        Ok(())
    }

    async fn advance(&mut self, id: &str, state: &HeldSchedule) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE schedules SET next_fire_at = ?, last_fire_at = ?, last_job_id = ?, \
                 fires_recorded = ? WHERE id = ?",
            )?
            .execute(params![
                state.next_fire_at.map(Timestamp::as_millis),
                state.last_fire_at.map(Timestamp::as_millis),
                state.last_job_id.map(|id| id.to_string()),
                state.fires_recorded,
                id,
            ])?;
        Ok(())
    }
}

/// Runs `work` in a savepoint: a command that fails half-way leaves
/// nothing behind in the group's transaction, which the other commands
/// of the group commit.
fn all_or_nothing<T>(
    tx: &mut WriteTx<'_>,
    work: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.conn.prepare_cached("SAVEPOINT schedule")?.execute([])?;
    let outcome = work(tx);
    if outcome.is_err() {
        tx.conn
            .prepare_cached("ROLLBACK TO schedule")?
            .execute([])?;
    }
    tx.conn.prepare_cached("RELEASE schedule")?.execute([])?;
    outcome
}

fn put(tx: &mut WriteTx<'_>, put: &SchedulePut) -> Result<PutOutcome, StoreError> {
    let config = config_json(&put.config);
    let next = put.next_fire_at.map(Timestamp::as_millis);
    let at = put.at.as_millis();
    let written = match put.expected_revision {
        None => tx
            .conn
            .prepare_cached(
                "INSERT INTO schedules (id, tenant, config, revision, next_fire_at, created_at, \
                 updated_at) VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                put.config.id,
                put.config.tenant,
                config,
                next,
                at,
                at
            ])?,
        Some(revision) => tx
            .conn
            .prepare_cached(
                "UPDATE schedules SET tenant = ?, config = ?, revision = revision + 1, \
                 next_fire_at = ?, updated_at = ? WHERE id = ? AND revision = ?",
            )?
            .execute(params![
                put.config.tenant,
                config,
                next,
                at,
                put.config.id,
                revision
            ])?,
    };
    Ok(match (written, put.expected_revision) {
        (0, _) => PutOutcome::Conflict,
        (_, None) => PutOutcome::Created,
        (_, Some(_)) => PutOutcome::Changed,
    })
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?");
        let row: Option<ScheduleRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reads)
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
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE (?1 IS NULL OR tenant = ?1) \
             AND id > ?2 ORDER BY id LIMIT CAST(?3 AS INTEGER)"
        );
        let rows: Vec<ScheduleRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(tenant)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    async fn put_schedule(&self, change: SchedulePut) -> Result<PutOutcome, StoreError> {
        self.write(move |tx| put(tx, &change)).await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            // The writer does not enforce foreign keys: the history goes by hand.
            tx.conn
                .prepare_cached("DELETE FROM schedule_fires WHERE schedule_id = ?")?
                .execute(params![id])?;
            let deleted = tx
                .conn
                .prepare_cached("DELETE FROM schedules WHERE id = ?")?
                .execute(params![id])?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn schedule_fires(
        &self,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ScheduleFire>, StoreError> {
        let sql = format!(
            "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE schedule_id = ? AND seq < ? \
             ORDER BY seq DESC LIMIT CAST(? AS INTEGER)"
        );
        let rows: Vec<FireRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await?;
        rows.into_iter().map(|row| row.into_fire(id)).collect()
    }

    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<Schedule>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_at IS NOT NULL \
             AND next_fire_at <= ? ORDER BY next_fire_at LIMIT CAST(? AS INTEGER)"
        );
        let rows: Vec<ScheduleRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    async fn next_schedule_fire(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(next_fire_at) FROM schedules WHERE next_fire_at IS NOT NULL",
        )
        .fetch_one(&self.reads)
        .await?;
        Ok(next.map(Timestamp::from_millis))
    }

    async fn fire_schedule(&self, request: FireRequest) -> Result<FireResult, StoreError> {
        self.write(move |tx| all_or_nothing(tx, |tx| run_now(plan::fire_schedule(tx, request))))
            .await
    }
}
