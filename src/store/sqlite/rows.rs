//! Reading the shared rows (`crate::store::rows`) on the writer's rusqlite
//! connection.

pub use crate::store::rows::{
    BATCH_COLUMNS, BatchRow, JOB_COLUMNS, JobRow, QUEUE_COLUMNS, QueueRow, RESULT_COLUMNS,
    ResultRow, jobs_from_rows, parse_ids, to_json,
};

impl JobRow {
    /// Reads a row of `SELECT {JOB_COLUMNS}` (or `RETURNING {JOB_COLUMNS}`)
    /// on the writer's connection.
    pub fn from_writer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            tenant: row.get(1)?,
            queue: row.get(2)?,
            kind: row.get(3)?,
            payload: row.get(4)?,
            state: row.get(5)?,
            priority: row.get(6)?,
            attempt: row.get(7)?,
            max_attempts: row.get(8)?,
            timeout_ms: row.get(9)?,
            backoff_base_ms: row.get(10)?,
            backoff_max_ms: row.get(11)?,
            key: row.get(12)?,
            metadata: row.get(13)?,
            progress: row.get(14)?,
            result: row.get(15)?,
            error: row.get(16)?,
            errors: row.get(17)?,
            cancel_requested: row.get(18)?,
            created_at: row.get(19)?,
            run_at: row.get(20)?,
            started_at: row.get(21)?,
            finished_at: row.get(22)?,
            batch_id: row.get(23)?,
            depends_on: row.get(24)?,
            callback_url: row.get(25)?,
            concurrency_key: row.get(26)?,
            concurrency_limit: row.get(27)?,
            traceparent: row.get(28)?,
            tracestate: row.get(29)?,
            rate_limit: row.get(30)?,
            rate_limit_key: row.get(31)?,
            expires_at: row.get(32)?,
        })
    }
}

impl BatchRow {
    pub fn from_writer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            tenant: row.get(1)?,
            total: row.get(2)?,
            success_threshold: row.get(3)?,
            metadata: row.get(4)?,
            callback_url: row.get(5)?,
            status: row.get(6)?,
            cancel_requested: row.get(7)?,
            scheduled: row.get(8)?,
            queued: row.get(9)?,
            running: row.get(10)?,
            succeeded: row.get(11)?,
            failed: row.get(12)?,
            cancelled: row.get(13)?,
            created_at: row.get(14)?,
            finished_at: row.get(15)?,
            retries: row.get(16)?,
            retry_when_failed_ratio: row.get(17)?,
            retry_max_times: row.get(18)?,
            retry_scope: row.get(19)?,
            max_in_flight: row.get(20)?,
        })
    }
}
