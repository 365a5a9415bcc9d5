-- Batches re-run: by hand (POST /v1/batches/{id}/retry), or by themselves
-- when more of their jobs failed than their `retry` policy allows. A batch
-- now reopens: `finished_at` goes back to NULL, so it can finish (and its
-- webhook trigger fire, with a new webhook id) once per run.

-- Runs after the first, by hand or automatic.
ALTER TABLE batches ADD COLUMN retries bigint NOT NULL DEFAULT 0;
-- The automatic policy as submitted (NULL: none), and as numbers: re-run
-- when more than `retry_above` jobs ended failed or cancelled (computed
-- once at submission, like `success_required`, so no float comparison
-- decides), at most `retry_max_times` times, the jobs of `retry_scope`.
ALTER TABLE batches ADD COLUMN retry_when_failed_ratio double precision;
ALTER TABLE batches ADD COLUMN retry_above bigint;
ALTER TABLE batches ADD COLUMN retry_max_times bigint NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN retry_scope text;
-- A batch's window, as submitted (NULL: none). Its jobs carry it as their
-- concurrency key `batch:<id>` and limit, which is what claims enforce.
ALTER TABLE batches ADD COLUMN max_in_flight bigint;

-- As in 0006, except that the last job's end does not finish a batch its
-- policy re-runs: the transaction that ended the job finds the batch with
-- every job ended and unfinished, and re-runs it
-- (src/store/plan/batch_retry.rs). The grouped successes of
-- src/store/postgres/complete.rs test the same condition.
CREATE OR REPLACE FUNCTION spool_jobs_batch_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended boolean := NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL;
    seq bigint;
BEGIN
    UPDATE batches SET
        succeeded = succeeded + (NEW.state = 'succeeded')::int - (OLD.state = 'succeeded')::int,
        failed    = failed    + (NEW.state = 'failed')::int    - (OLD.state = 'failed')::int,
        cancelled = cancelled + (NEW.state = 'cancelled')::int - (OLD.state = 'cancelled')::int,
        finish_seq = finish_seq + ended::int
    WHERE id = NEW.batch_id
    RETURNING finish_seq INTO seq;
    IF ended THEN
        NEW.batch_seq := seq;
        -- The last job to finish decides the batch's status, unless the
        -- batch runs again.
        UPDATE batches SET
            finished_at = NEW.finished_at,
            status = CASE WHEN cancel_requested THEN 'cancelled'
                          WHEN succeeded >= success_required THEN 'succeeded'
                          ELSE 'failed' END
        WHERE id = NEW.batch_id AND finished_at IS NULL
          AND succeeded + failed + cancelled = total
          AND NOT (NOT cancel_requested AND retries < retry_max_times
                   AND failed + cancelled > coalesce(retry_above, total));
    END IF;
    RETURN NEW;
END
$$;
