-- Batches re-run: by hand (POST /v1/batches/{id}/retry), or by themselves
-- when more of their jobs failed than their `retry` policy allows. A batch
-- now reopens: `finished_at` goes back to NULL, so it can finish (and its
-- `batches_webhook_on_finish` fire, with a new webhook id) once per run.

-- Runs after the first, by hand or automatic.
ALTER TABLE batches ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
-- The automatic policy as submitted (NULL: none), and as numbers: re-run
-- when more than `retry_above` jobs ended failed or cancelled (computed
-- once at submission, like `success_required`, so no float comparison
-- decides), at most `retry_max_times` times, the jobs of `retry_scope`.
ALTER TABLE batches ADD COLUMN retry_when_failed_ratio REAL;
ALTER TABLE batches ADD COLUMN retry_above INTEGER;
ALTER TABLE batches ADD COLUMN retry_max_times INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN retry_scope TEXT;
-- A batch's window, as submitted (NULL: none). Its jobs carry it as their
-- concurrency key `batch:<id>` and limit, which is what claims enforce.
ALTER TABLE batches ADD COLUMN max_in_flight INTEGER;

-- As in 0002, except that the last job's end does not finish a batch its
-- policy re-runs: the write that ended the job finds the batch with every
-- job ended and unfinished, and re-runs it (src/store/plan/batch_retry.rs).
DROP TRIGGER jobs_batch_counts;
CREATE TRIGGER jobs_batch_counts AFTER UPDATE OF state ON jobs
WHEN OLD.state <> NEW.state AND NEW.batch_id IS NOT NULL BEGIN
    UPDATE batches SET
        scheduled = scheduled + (NEW.state = 'scheduled') - (OLD.state = 'scheduled'),
        queued    = queued    + (NEW.state = 'queued')    - (OLD.state = 'queued'),
        running   = running   + (NEW.state = 'running')   - (OLD.state = 'running'),
        succeeded = succeeded + (NEW.state = 'succeeded') - (OLD.state = 'succeeded'),
        failed    = failed    + (NEW.state = 'failed')    - (OLD.state = 'failed'),
        cancelled = cancelled + (NEW.state = 'cancelled') - (OLD.state = 'cancelled'),
        finish_seq = finish_seq + (NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL)
    WHERE id = NEW.batch_id;
    UPDATE jobs SET batch_seq = (SELECT finish_seq FROM batches WHERE id = NEW.batch_id)
    WHERE id = NEW.id AND NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL;
    -- The last job to finish decides the batch's status, unless the batch
    -- runs again.
    UPDATE batches SET
        finished_at = NEW.finished_at,
        status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                      WHEN succeeded >= success_required THEN 'succeeded'
                      ELSE 'failed' END
    WHERE id = NEW.batch_id AND finished_at IS NULL
      AND succeeded + failed + cancelled = total
      AND NOT (cancel_requested = 0 AND retries < retry_max_times
               AND failed + cancelled > coalesce(retry_above, total));
END;
