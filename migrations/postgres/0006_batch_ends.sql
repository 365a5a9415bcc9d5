-- A batch's row follows only its jobs' ends. Its scheduled, queued and
-- running jobs are counted when the batch is read (the read lists every job
-- of the batch anyway, for `job_ids`); the columns stay, unused.
--
-- Before, every state change of a batch job updated the batch's row: a claim
-- of 64 jobs of one batch wrote 64 versions of one row, and claims and
-- outcomes of one batch on every instance queued behind each other's commit
-- on that row's lock. Now a claim never touches it, and only the end of an
-- attempt (or a retry reopening a job) does, which is what the finishing
-- order, the terminal counts and the batch's status need.
--
-- A statement that ends many jobs at once can count them itself, one update
-- of each batch's row for all of them, and set their `batch_seq`: the
-- trigger leaves a row alone whose `batch_seq` the statement sets (the
-- grouped successes in src/store/postgres/complete.rs).
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
        -- The last job to finish decides the batch's status.
        UPDATE batches SET
            finished_at = NEW.finished_at,
            status = CASE WHEN cancel_requested THEN 'cancelled'
                          WHEN succeeded >= success_required THEN 'succeeded'
                          ELSE 'failed' END
        WHERE id = NEW.batch_id AND finished_at IS NULL
          AND succeeded + failed + cancelled = total;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER jobs_batch_counts ON jobs;
CREATE TRIGGER jobs_batch_counts BEFORE UPDATE OF state ON jobs
FOR EACH ROW WHEN (
    NEW.batch_id IS NOT NULL
    AND (OLD.state IN ('succeeded', 'failed', 'cancelled'))
        <> (NEW.state IN ('succeeded', 'failed', 'cancelled'))
    AND NEW.batch_seq IS NULL
)
EXECUTE FUNCTION spool_jobs_batch_counts();
